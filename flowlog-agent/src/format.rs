//! Record → text line, byte-exact with AWS VPC Flow Logs.
//!
//! Fields are joined by one space, `-` stands for a missing value, numbers
//! are plain decimal, IPv6 addresses are in RFC 5952 form (what `Ipv6Addr`'s
//! `Display` writes). No trailing space, no newline: the caller decides the
//! line terminator (S3/files use `\n`, CloudWatch events have none).

use std::io::Write as _;

use crate::record::FlowRecord;

/// A record field, named as in `${field}` format strings.
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
    TcpFlags,
    Type,
    PktSrcAddr,
    PktDstAddr,
    FlowDirection,
}

/// Every supported field, in AWS table order.
pub const ALL_FIELDS: [Field; 19] = [
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
    Field::TcpFlags,
    Field::Type,
    Field::PktSrcAddr,
    Field::PktDstAddr,
    Field::FlowDirection,
];

impl Field {
    /// The flow log version that introduced the field.
    pub fn version(self) -> u8 {
        match self {
            Field::TcpFlags | Field::Type | Field::PktSrcAddr | Field::PktDstAddr => 3,
            Field::FlowDirection => 5,
            _ => 2,
        }
    }

    pub fn from_name(name: &str) -> Option<Field> {
        ALL_FIELDS.iter().copied().find(|f| f.name() == name)
    }

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
            Field::TcpFlags => "tcp-flags",
            Field::Type => "type",
            Field::PktSrcAddr => "pkt-srcaddr",
            Field::PktDstAddr => "pkt-dstaddr",
            Field::FlowDirection => "flow-direction",
        }
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("empty log format: give at least one field, e.g. \"${{srcaddr}} ${{dstaddr}}\". Valid fields: {valid}")]
    Empty { valid: String },
    #[error("malformed token {token:?} in log format: fields are written as ${{field-name}} and separated by spaces. Valid fields: {valid}")]
    Malformed { token: String, valid: String },
    #[error("unknown field {token:?} in log format. Valid fields: {valid}")]
    Unknown { token: String, valid: String },
}

fn valid_fields() -> String {
    ALL_FIELDS.iter().map(|f| f.name()).collect::<Vec<_>>().join(" ")
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

#[derive(Clone, Debug, PartialEq, Eq)]
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
    /// Parses a format string as `CreateFlowLogs --log-format` takes it:
    /// `${field}` tokens separated by spaces.
    pub fn parse(spec: &str) -> Result<Format, FormatError> {
        let mut fields = Vec::new();
        for token in spec.split_ascii_whitespace() {
            let name = token
                .strip_prefix("${")
                .and_then(|t| t.strip_suffix('}'))
                .filter(|n| !n.is_empty() && !n.contains(['$', '{', '}']))
                .ok_or_else(|| FormatError::Malformed { token: token.to_string(), valid: valid_fields() })?;
            let f = Field::from_name(name).ok_or_else(|| FormatError::Unknown { token: token.to_string(), valid: valid_fields() })?;
            fields.push(f);
        }
        if fields.is_empty() {
            return Err(FormatError::Empty { valid: valid_fields() });
        }
        let version = fields.iter().map(|f| f.version()).max().unwrap_or(2);
        Ok(Format { fields, version })
    }

    pub fn fields(&self) -> &[Field] {
        &self.fields
    }

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
            Field::TcpFlags => num(out, r.tcp_flags),
            Field::Type => text(
                out,
                match r.srcaddr {
                    Some(std::net::IpAddr::V4(_)) => "IPv4",
                    Some(std::net::IpAddr::V6(_)) => "IPv6",
                    None => "",
                },
            ),
            Field::PktSrcAddr | Field::PktDstAddr => {
                match if f == Field::PktSrcAddr { r.pkt_srcaddr } else { r.pkt_dstaddr } {
                    Some(a) => write!(out, "{a}").expect("write to Vec"),
                    None => out.push(b'-'),
                }
            }
            Field::FlowDirection => text(out, r.flow_direction.map_or("", |d| d.as_str())),
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
    fn custom_formats_take_the_highest_version() {
        let f = Format::parse("${srcaddr}  ${dstaddr}").unwrap();
        assert_eq!((f.fields(), f.version), (&[Field::SrcAddr, Field::DstAddr][..], 2));
        assert_eq!(Format::parse("${version} ${tcp-flags}").unwrap().version, 3);
        assert_eq!(Format::parse("${flow-direction} ${version}").unwrap().version, 5);
        let all = ALL_FIELDS.iter().map(|f| format!("${{{}}}", f.name())).collect::<Vec<_>>().join(" ");
        assert_eq!(Format::parse(&all).unwrap().header(), valid_fields());
    }

    #[test]
    fn bad_formats_name_the_token() {
        let valid = valid_fields();
        assert_eq!(Format::parse("  "), Err(FormatError::Empty { valid: valid.clone() }));
        assert_eq!(Format::parse("${srcaddr} dstaddr"), Err(FormatError::Malformed { token: "dstaddr".into(), valid: valid.clone() }));
        assert_eq!(Format::parse("${srcaddr"), Err(FormatError::Malformed { token: "${srcaddr".into(), valid: valid.clone() }));
        assert_eq!(Format::parse("${}"), Err(FormatError::Malformed { token: "${}".into(), valid: valid.clone() }));
        assert_eq!(Format::parse("${srcaddr}${dstaddr}"), Err(FormatError::Malformed { token: "${srcaddr}${dstaddr}".into(), valid: valid.clone() }));
        assert_eq!(Format::parse("${src-addr}"), Err(FormatError::Unknown { token: "${src-addr}".into(), valid: valid.clone() }));
        assert_eq!(
            Format::parse("${bogus}").unwrap_err().to_string(),
            format!("unknown field \"${{bogus}}\" in log format. Valid fields: {valid}")
        );
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
