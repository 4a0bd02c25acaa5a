//! Record → text line, byte-exact with AWS VPC Flow Logs.
//!
//! Fields are joined by one space, `-` stands for a missing value, numbers
//! are plain decimal, IPv6 addresses are in RFC 5952 form (what `Ipv6Addr`'s
//! `Display` writes). No trailing space, no newline: the caller decides the
//! line terminator (S3/files use `\n`, CloudWatch events have none).

use std::io::Write as _;

use crate::record::FlowRecord;

/// A field of the default (version 2) format, in AWS order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    Version,
    AccountId,
    InterfaceId,
    SrcAddr,
    DstAddr,
    SrcPort,
    DstPort,
    Protocol,
    Packets,
    Bytes,
    Start,
    End,
    Action,
    LogStatus,
}

impl Field {
    pub fn name(self) -> &'static str {
        match self {
            Field::Version => "version",
            Field::AccountId => "account-id",
            Field::InterfaceId => "interface-id",
            Field::SrcAddr => "srcaddr",
            Field::DstAddr => "dstaddr",
            Field::SrcPort => "srcport",
            Field::DstPort => "dstport",
            Field::Protocol => "protocol",
            Field::Packets => "packets",
            Field::Bytes => "bytes",
            Field::Start => "start",
            Field::End => "end",
            Field::Action => "action",
            Field::LogStatus => "log-status",
        }
    }
}

/// The default format: `${version} ${account-id} ... ${log-status}`.
pub const DEFAULT_FIELDS: [Field; 14] = [
    Field::Version,
    Field::AccountId,
    Field::InterfaceId,
    Field::SrcAddr,
    Field::DstAddr,
    Field::SrcPort,
    Field::DstPort,
    Field::Protocol,
    Field::Packets,
    Field::Bytes,
    Field::Start,
    Field::End,
    Field::Action,
    Field::LogStatus,
];

#[derive(Clone, Debug)]
pub struct Format {
    fields: Vec<Field>,
    version: u8,
}

impl Default for Format {
    fn default() -> Self {
        Format { fields: DEFAULT_FIELDS.to_vec(), version: 2 }
    }
}

impl Format {
    /// The header line of S3 text files: the field names, space-separated.
    pub fn header(&self) -> String {
        self.fields.iter().map(|f| f.name()).collect::<Vec<_>>().join(" ")
    }

    /// Appends the record's line (without terminator) to `out`.
    pub fn write(&self, r: &FlowRecord, out: &mut Vec<u8>) {
        for (i, f) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(b' ');
            }
            self.write_field(*f, r, out);
        }
    }

    pub fn line(&self, r: &FlowRecord) -> String {
        let mut v = Vec::with_capacity(128);
        self.write(r, &mut v);
        String::from_utf8(v).expect("records are ASCII")
    }

    fn write_field(&self, f: Field, r: &FlowRecord, out: &mut Vec<u8>) {
        fn num<N: itoa::Integer>(out: &mut Vec<u8>, v: Option<N>) {
            match v {
                Some(n) => out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes()),
                None => out.push(b'-'),
            }
        }
        fn text(out: &mut Vec<u8>, s: &str) {
            if s.is_empty() {
                out.push(b'-');
            } else {
                out.extend_from_slice(s.as_bytes());
            }
        }
        match f {
            Field::Version => num(out, Some(self.version)),
            Field::AccountId => text(out, &r.account_id),
            Field::InterfaceId => text(out, &r.interface_id),
            Field::SrcAddr | Field::DstAddr => {
                match if f == Field::SrcAddr { r.srcaddr } else { r.dstaddr } {
                    Some(a) => write!(out, "{a}").expect("write to Vec"),
                    None => out.push(b'-'),
                }
            }
            Field::SrcPort => num(out, r.srcport),
            Field::DstPort => num(out, r.dstport),
            Field::Protocol => num(out, r.protocol),
            Field::Packets => num(out, r.packets),
            Field::Bytes => num(out, r.bytes),
            Field::Start => num(out, Some(r.start)),
            Field::End => num(out, Some(r.end)),
            Field::Action => text(out, r.action.map_or("", |a| a.as_str())),
            Field::LogStatus => text(out, r.log_status.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Action, LogStatus};
    use std::sync::Arc;

    fn ok(
        iface: &str,
        src: &str,
        dst: &str,
        ports: (u16, u16),
        proto: u8,
        packets: u64,
        bytes: u64,
        window: (u64, u64),
        action: Action,
    ) -> FlowRecord {
        FlowRecord {
            srcaddr: Some(src.parse().unwrap()),
            dstaddr: Some(dst.parse().unwrap()),
            srcport: Some(ports.0),
            dstport: Some(ports.1),
            protocol: Some(proto),
            packets: Some(packets),
            bytes: Some(bytes),
            action: Some(action),
            ..FlowRecord::status_only("123456789010".into(), iface.into(), window.0, window.1, LogStatus::Ok)
        }
    }

    /// The default-format examples of the AWS documentation
    /// (../shared/reference/vpc-flow-logs.md §8.1), byte for byte.
    #[test]
    fn default_format_matches_aws_examples() {
        let eni: Arc<str> = "eni-1235b8ca123456789".into();
        let f = Format::default();
        let cases = [
            (
                ok(&eni, "172.31.16.139", "172.31.16.21", (20641, 22), 6, 20, 4249, (1418530010, 1418530070), Action::Accept),
                "2 123456789010 eni-1235b8ca123456789 172.31.16.139 172.31.16.21 20641 22 6 20 4249 1418530010 1418530070 ACCEPT OK",
            ),
            (
                ok(&eni, "172.31.9.69", "172.31.9.12", (49761, 3389), 6, 20, 4249, (1418530010, 1418530070), Action::Reject),
                "2 123456789010 eni-1235b8ca123456789 172.31.9.69 172.31.9.12 49761 3389 6 20 4249 1418530010 1418530070 REJECT OK",
            ),
            (
                FlowRecord::status_only("123456789010".into(), eni.clone(), 1431280876, 1431280934, LogStatus::NoData),
                "2 123456789010 eni-1235b8ca123456789 - - - - - - - 1431280876 1431280934 - NODATA",
            ),
            (
                FlowRecord::status_only("123456789010".into(), "eni-11111111aaaaaaaaa".into(), 1431280876, 1431280934, LogStatus::SkipData),
                "2 123456789010 eni-11111111aaaaaaaaa - - - - - - - 1431280876 1431280934 - SKIPDATA",
            ),
            (
                ok(&eni, "203.0.113.12", "172.31.16.139", (0, 0), 1, 4, 336, (1432917027, 1432917142), Action::Accept),
                "2 123456789010 eni-1235b8ca123456789 203.0.113.12 172.31.16.139 0 0 1 4 336 1432917027 1432917142 ACCEPT OK",
            ),
            (
                ok(&eni, "172.31.16.139", "203.0.113.12", (0, 0), 1, 4, 336, (1432917094, 1432917142), Action::Reject),
                "2 123456789010 eni-1235b8ca123456789 172.31.16.139 203.0.113.12 0 0 1 4 336 1432917094 1432917142 REJECT OK",
            ),
            (
                ok(
                    &eni,
                    "2001:db8:1234:a100:8d6e:3477:df66:f105",
                    "2001:db8:1234:a102:3304:8879:34cf:4071",
                    (34892, 22),
                    6,
                    54,
                    8855,
                    (1477913708, 1477913820),
                    Action::Accept,
                ),
                "2 123456789010 eni-1235b8ca123456789 2001:db8:1234:a100:8d6e:3477:df66:f105 2001:db8:1234:a102:3304:8879:34cf:4071 34892 22 6 54 8855 1477913708 1477913820 ACCEPT OK",
            ),
        ];
        for (record, want) in cases {
            assert_eq!(f.line(&record), want);
        }
    }

    #[test]
    fn header_line_lists_field_names() {
        assert_eq!(
            Format::default().header(),
            "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status"
        );
    }

    #[test]
    fn ipv6_is_written_compressed_lowercase() {
        let mut r = ok("eni-1", "::1", "fe80::1", (1, 2), 17, 1, 48, (5, 6), Action::Accept);
        r.srcaddr = Some("2001:DB8:0:0:0:0:0:1".parse().unwrap());
        assert_eq!(Format::default().line(&r), "2 123456789010 eni-1 2001:db8::1 fe80::1 1 2 17 1 48 5 6 ACCEPT OK");
    }
}
