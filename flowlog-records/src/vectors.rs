//! The test vectors of the reference (`../shared/reference/vpc-flow-logs.md`
//! §8): every line is written byte for byte from an equivalent record, and
//! read back to that same record. Public so that the agent's tests check
//! its enrich stage against the same lines.

// Most of this module is the checks, which exist only under `cfg(test)`;
// what the agent's tests share is the `pub` items.
#![cfg_attr(not(test), allow(dead_code, unused_imports))]

use std::{net::IpAddr, sync::Arc};

use crate::{
    format::{Field, Format},
    parse::{format_from_header, parse_record, parse_text},
    record::{Action, Direction, FlowRecord, IpType, LogStatus},
    semantics::normalise_addrs,
};

fn a(s: &str) -> Option<IpAddr> {
    Some(s.parse().unwrap())
}

fn t(s: &str) -> Option<Arc<str>> {
    Some(s.into())
}

#[cfg(test)]
/// Writes each record and parses each line back; `version` must read back
/// as the format's version wherever the format has the field.
fn check(format: &Format, cases: &[(FlowRecord, &str)]) {
    for (record, line) in cases {
        assert_eq!(format.line(record), *line);
        let parsed = parse_record(format, line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert_eq!(parsed.record, *record, "{line}");
        let want_version = format.fields().contains(&Field::Version).then(|| format.version());
        assert_eq!(parsed.version, want_version, "{line}");
    }
}

/// §8.1: the default format, including REJECT, NODATA, SKIPDATA, ICMP and
/// IPv6 lines.
#[test]
fn v2_default_format() {
    #[allow(clippy::too_many_arguments)]
    fn ok(src: &str, dst: &str, sport: u16, dport: u16, proto: u8, packets: u64, bytes: u64, start: u64, end: u64, action: Action) -> FlowRecord {
        FlowRecord {
            srcaddr: a(src),
            dstaddr: a(dst),
            srcport: Some(sport),
            dstport: Some(dport),
            protocol: Some(proto),
            packets: Some(packets),
            bytes: Some(bytes),
            action: Some(action),
            ..FlowRecord::status_only("123456789010".into(), "eni-1235b8ca123456789".into(), start, end, LogStatus::Ok)
        }
    }
    use Action::*;
    let cases = [
        (
            ok("172.31.16.139", "172.31.16.21", 20641, 22, 6, 20, 4249, 1418530010, 1418530070, Accept),
            "2 123456789010 eni-1235b8ca123456789 172.31.16.139 172.31.16.21 20641 22 6 20 4249 1418530010 1418530070 ACCEPT OK",
        ),
        (
            ok("172.31.9.69", "172.31.9.12", 49761, 3389, 6, 20, 4249, 1418530010, 1418530070, Reject),
            "2 123456789010 eni-1235b8ca123456789 172.31.9.69 172.31.9.12 49761 3389 6 20 4249 1418530010 1418530070 REJECT OK",
        ),
        (
            FlowRecord::status_only("123456789010".into(), "eni-1235b8ca123456789".into(), 1431280876, 1431280934, LogStatus::NoData),
            "2 123456789010 eni-1235b8ca123456789 - - - - - - - 1431280876 1431280934 - NODATA",
        ),
        (
            FlowRecord::status_only("123456789010".into(), "eni-11111111aaaaaaaaa".into(), 1431280876, 1431280934, LogStatus::SkipData),
            "2 123456789010 eni-11111111aaaaaaaaa - - - - - - - 1431280876 1431280934 - SKIPDATA",
        ),
        (
            ok("203.0.113.12", "172.31.16.139", 0, 0, 1, 4, 336, 1432917027, 1432917142, Accept),
            "2 123456789010 eni-1235b8ca123456789 203.0.113.12 172.31.16.139 0 0 1 4 336 1432917027 1432917142 ACCEPT OK",
        ),
        (
            ok("172.31.16.139", "203.0.113.12", 0, 0, 1, 4, 336, 1432917094, 1432917142, Reject),
            "2 123456789010 eni-1235b8ca123456789 172.31.16.139 203.0.113.12 0 0 1 4 336 1432917094 1432917142 REJECT OK",
        ),
        (
            ok(
                "2001:db8:1234:a100:8d6e:3477:df66:f105",
                "2001:db8:1234:a102:3304:8879:34cf:4071",
                34892,
                22,
                6,
                54,
                8855,
                1477913708,
                1477913820,
                Accept,
            ),
            "2 123456789010 eni-1235b8ca123456789 2001:db8:1234:a100:8d6e:3477:df66:f105 2001:db8:1234:a102:3304:8879:34cf:4071 34892 22 6 54 8855 1477913708 1477913820 ACCEPT OK",
        ),
    ];
    check(&Format::default(), &cases);
}

/// §8.2: an S3 text file (header line, NODATA record) read and rewritten.
#[test]
fn s3_text_file_with_header() {
    let text = "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status\n\
                2 12345678910 eni-0eb1e4178af74336c - - - - - - - 1742570089 1742570142 - NODATA\n";
    let (format, records) = parse_text(text).unwrap();
    assert_eq!(format, Format::default());
    let want = FlowRecord::status_only("12345678910".into(), "eni-0eb1e4178af74336c".into(), 1742570089, 1742570142, LogStatus::NoData);
    assert_eq!(records.iter().map(|p| (p.version, &p.record)).collect::<Vec<_>>(), [(Some(2), &want)]);
    assert_eq!(format!("{}\n{}\n", format.header(), format.line(&want)), text);
}

/// §8.3 verbatim, including the double space AWS's page has in the last line.
const V3_TCP_FLAGS: &str = "\
3 vpc-abcdefab012345678 subnet-aaaaaaaa012345678 i-01234567890123456 eni-1235b8ca123456789 123456789010 IPv4 52.213.180.42 10.0.0.62 43416 5001 52.213.180.42 10.0.0.62 6 568 8 1566848875 1566848933 ACCEPT 2 OK
3 vpc-abcdefab012345678 subnet-aaaaaaaa012345678 i-01234567890123456 eni-1235b8ca123456789 123456789010 IPv4 10.0.0.62 52.213.180.42 5001 43416 10.0.0.62 52.213.180.42 6 376 7 1566848875 1566848933 ACCEPT 18 OK
3 vpc-abcdefab012345678 subnet-aaaaaaaa012345678 i-01234567890123456 eni-1235b8ca123456789 123456789010 IPv4 52.213.180.42 10.0.0.62 43418 5001 52.213.180.42 10.0.0.62 6 100701 70 1566848875 1566848933 ACCEPT 2 OK
3 vpc-abcdefab012345678 subnet-aaaaaaaa012345678 i-01234567890123456 eni-1235b8ca123456789 123456789010 IPv4 10.0.0.62 52.213.180.42 5001 43418 10.0.0.62 52.213.180.42 6 632 12 1566848875 1566848933 ACCEPT 18 OK
3 vpc-abcdefab012345678 subnet-aaaaaaaa012345678 i-01234567890123456 eni-1235b8ca123456789 123456789010 IPv4 10.0.0.62 52.213.180.42 5001 43418 10.0.0.62 52.213.180.42 6 63388 1219 1566848933 1566849113 ACCEPT 1 OK
3 vpc-abcdefab012345678 subnet-aaaaaaaa012345678 i-01234567890123456 eni-1235b8ca123456789 123456789010 IPv4 52.213.180.42 10.0.0.62 43418 5001 52.213.180.42 10.0.0.62 6 23294588 15774 1566848933 1566849113 ACCEPT 1 OK
3 vpc-abcdefab012345678 subnet-aaaaaaaa012345678 i-01234567890123456 eni-1235b8ca123456789 123456789010 IPv4 52.213.180.42 10.0.0.62 43638 5001 52.213.180.42 10.0.0.62 6 1260 17 1566933133 1566933193 ACCEPT 3 OK
3 vpc-abcdefab012345678 subnet-aaaaaaaa012345678 i-01234567890123456 eni-1235b8ca123456789 123456789010 IPv4 10.0.0.62 52.213.180.42 5001 43638  10.0.0.62 52.213.180.42 6 967 14 1566933133 1566933193 ACCEPT 19 OK";

/// §8.3: the v3 TCP-flag sequence (note `bytes` before `packets`).
#[test]
fn v3_tcp_flag_sequence() {
    let header = "version vpc-id subnet-id instance-id interface-id account-id type srcaddr dstaddr srcport dstport pkt-srcaddr pkt-dstaddr protocol bytes packets start end action tcp-flags log-status";
    let format = format_from_header(header).unwrap();
    let spec = header.split(' ').map(|n| format!("${{{n}}}")).collect::<Vec<_>>().join(" ");
    assert_eq!(Format::parse(&spec).unwrap(), format);
    assert_eq!(format.version(), 3);

    let (remote, local) = ("52.213.180.42", "10.0.0.62");
    // (inbound?, remote port, bytes, packets, start, end, tcp-flags)
    let rows: [(bool, u16, u64, u64, u64, u64, u8); 8] = [
        (true, 43416, 568, 8, 1566848875, 1566848933, 2),
        (false, 43416, 376, 7, 1566848875, 1566848933, 18),
        (true, 43418, 100701, 70, 1566848875, 1566848933, 2),
        (false, 43418, 632, 12, 1566848875, 1566848933, 18),
        (false, 43418, 63388, 1219, 1566848933, 1566849113, 1),
        (true, 43418, 23294588, 15774, 1566848933, 1566849113, 1),
        (true, 43638, 1260, 17, 1566933133, 1566933193, 3),
        (false, 43638, 967, 14, 1566933133, 1566933193, 19),
    ];
    let records = rows.map(|(inbound, rport, bytes, packets, start, end, flags)| {
        let (src, dst, sport, dport) = if inbound { (remote, local, rport, 5001) } else { (local, remote, 5001, rport) };
        FlowRecord {
            vpc_id: t("vpc-abcdefab012345678"),
            subnet_id: t("subnet-aaaaaaaa012345678"),
            instance_id: t("i-01234567890123456"),
            ip_type: Some(IpType::V4),
            srcaddr: a(src),
            dstaddr: a(dst),
            srcport: Some(sport),
            dstport: Some(dport),
            pkt_srcaddr: a(src),
            pkt_dstaddr: a(dst),
            protocol: Some(6),
            bytes: Some(bytes),
            packets: Some(packets),
            action: Some(Action::Accept),
            tcp_flags: Some(flags),
            ..FlowRecord::status_only("123456789010".into(), "eni-1235b8ca123456789".into(), start, end, LogStatus::Ok)
        }
    });
    let verbatim: Vec<&str> = V3_TCP_FLAGS.lines().collect();
    assert_eq!(verbatim.iter().map(|l| l.contains("  ")).collect::<Vec<_>>(), [false, false, false, false, false, false, false, true]);
    for (record, aws_line) in records.iter().zip(&verbatim) {
        // The parser takes AWS's text as it is, double space included ...
        let parsed = parse_record(&format, aws_line).unwrap_or_else(|e| panic!("{aws_line}: {e}"));
        assert_eq!((parsed.version, &parsed.record), (Some(3), record), "{aws_line}");
    }
    // ... and the writer emits single spaces.
    let single: Vec<String> = verbatim.iter().map(|l| l.replace("  ", " ")).collect();
    let cases: Vec<(FlowRecord, &str)> = records.into_iter().zip(single.iter().map(String::as_str)).collect();
    check(&format, &cases);
}

/// §8.4: a NAT gateway's interface and an instance's, in a format without
/// `version`. Also checks that `srcaddr`/`dstaddr` follow from the packet
/// addresses by [`normalise_addrs`].
#[test]
fn nat_gateway() {
    let format = Format::parse("${instance-id} ${interface-id} ${srcaddr} ${dstaddr} ${pkt-srcaddr} ${pkt-dstaddr}").unwrap();
    let (nat_eni, nat_ip) = ("eni-1235b8ca123456789", "10.0.0.220");
    let (inst_eni, inst_ip) = ("eni-1111aaaa2222bbbb3", "10.0.1.5");
    // (instance, eni, interface address, direction, srcaddr, dstaddr, pkt-srcaddr, pkt-dstaddr, line)
    let rows = [
        (None, nat_eni, nat_ip, Direction::Ingress, "10.0.1.5", "10.0.0.220", "10.0.1.5", "203.0.113.5", "- eni-1235b8ca123456789 10.0.1.5 10.0.0.220 10.0.1.5 203.0.113.5"),
        (None, nat_eni, nat_ip, Direction::Egress, "10.0.0.220", "203.0.113.5", "10.0.0.220", "203.0.113.5", "- eni-1235b8ca123456789 10.0.0.220 203.0.113.5 10.0.0.220 203.0.113.5"),
        (None, nat_eni, nat_ip, Direction::Ingress, "203.0.113.5", "10.0.0.220", "203.0.113.5", "10.0.0.220", "- eni-1235b8ca123456789 203.0.113.5 10.0.0.220 203.0.113.5 10.0.0.220"),
        (None, nat_eni, nat_ip, Direction::Egress, "10.0.0.220", "10.0.1.5", "203.0.113.5", "10.0.1.5", "- eni-1235b8ca123456789 10.0.0.220 10.0.1.5 203.0.113.5 10.0.1.5"),
        (
            Some("i-01234567890123456"),
            inst_eni,
            inst_ip,
            Direction::Egress,
            "10.0.1.5",
            "203.0.113.5",
            "10.0.1.5",
            "203.0.113.5",
            "i-01234567890123456 eni-1111aaaa2222bbbb3 10.0.1.5 203.0.113.5 10.0.1.5 203.0.113.5",
        ),
        (
            Some("i-01234567890123456"),
            inst_eni,
            inst_ip,
            Direction::Ingress,
            "203.0.113.5",
            "10.0.1.5",
            "203.0.113.5",
            "10.0.1.5",
            "i-01234567890123456 eni-1111aaaa2222bbbb3 203.0.113.5 10.0.1.5 203.0.113.5 10.0.1.5",
        ),
    ];
    let mut cases = Vec::new();
    for (instance, eni, eni_ip, dir, src, dst, psrc, pdst, line) in rows {
        let iface_addrs = [eni_ip.parse().unwrap()];
        assert_eq!(normalise_addrs(dir, psrc.parse().unwrap(), pdst.parse().unwrap(), &iface_addrs), (src.parse().unwrap(), dst.parse().unwrap()), "{line}");
        let record = FlowRecord {
            instance_id: instance.map(Arc::from),
            interface_id: t(eni),
            srcaddr: a(src),
            dstaddr: a(dst),
            pkt_srcaddr: a(psrc),
            pkt_dstaddr: a(pdst),
            ..FlowRecord::default()
        };
        cases.push((record, line));
    }
    check(&format, &cases);
}

/// §8.5: traffic through a transit gateway, seen on the instance's
/// interface and on the transit gateway's interfaces in two subnets.
#[test]
fn transit_gateway() {
    let header = "version interface-id account-id vpc-id subnet-id instance-id srcaddr dstaddr srcport dstport protocol tcp-flags type pkt-srcaddr pkt-dstaddr action log-status";
    let format = format_from_header(header).unwrap();
    // (eni, its address, subnet, instance, direction, src, dst, sport, dport, flags, pkt-src, pkt-dst, line)
    let rows = [
        (
            "eni-33333333333333333", "10.20.33.164", "subnet-22222222bbbbbbbbb", Some("i-01234567890123456"), Direction::Egress,
            "10.20.33.164", "10.40.2.236", 39812, 80, 3, "10.20.33.164", "10.40.2.236",
            "3 eni-33333333333333333 123456789010 vpc-abcdefab012345678 subnet-22222222bbbbbbbbb i-01234567890123456 10.20.33.164 10.40.2.236 39812 80 6 3 IPv4 10.20.33.164 10.40.2.236 ACCEPT OK",
        ),
        (
            "eni-33333333333333333", "10.20.33.164", "subnet-22222222bbbbbbbbb", Some("i-01234567890123456"), Direction::Ingress,
            "10.40.2.236", "10.20.33.164", 80, 39812, 19, "10.40.2.236", "10.20.33.164",
            "3 eni-33333333333333333 123456789010 vpc-abcdefab012345678 subnet-22222222bbbbbbbbb i-01234567890123456 10.40.2.236 10.20.33.164 80 39812 6 19 IPv4 10.40.2.236 10.20.33.164 ACCEPT OK",
        ),
        (
            "eni-11111111111111111", "10.40.1.175", "subnet-11111111aaaaaaaaa", None, Direction::Egress,
            "10.40.1.175", "10.40.2.236", 39812, 80, 3, "10.20.33.164", "10.40.2.236",
            "3 eni-11111111111111111 123456789010 vpc-abcdefab012345678 subnet-11111111aaaaaaaaa - 10.40.1.175 10.40.2.236 39812 80 6 3 IPv4 10.20.33.164 10.40.2.236 ACCEPT OK",
        ),
        (
            "eni-22222222222222222", "10.40.2.31", "subnet-22222222bbbbbbbbb", None, Direction::Ingress,
            "10.40.2.236", "10.40.2.31", 80, 39812, 19, "10.40.2.236", "10.20.33.164",
            "3 eni-22222222222222222 123456789010 vpc-abcdefab012345678 subnet-22222222bbbbbbbbb - 10.40.2.236 10.40.2.31 80 39812 6 19 IPv4 10.40.2.236 10.20.33.164 ACCEPT OK",
        ),
    ];
    let mut cases = Vec::new();
    for (eni, eni_ip, subnet, instance, dir, src, dst, sport, dport, flags, psrc, pdst, line) in rows {
        let iface_addrs = [eni_ip.parse().unwrap()];
        assert_eq!(normalise_addrs(dir, psrc.parse().unwrap(), pdst.parse().unwrap(), &iface_addrs), (src.parse().unwrap(), dst.parse().unwrap()), "{line}");
        let record = FlowRecord {
            vpc_id: t("vpc-abcdefab012345678"),
            subnet_id: t(subnet),
            instance_id: instance.map(Arc::from),
            srcaddr: a(src),
            dstaddr: a(dst),
            srcport: Some(sport),
            dstport: Some(dport),
            protocol: Some(6),
            tcp_flags: Some(flags),
            ip_type: Some(IpType::V4),
            pkt_srcaddr: a(psrc),
            pkt_dstaddr: a(pdst),
            action: Some(Action::Accept),
            ..FlowRecord::status_only("123456789010".into(), eni.into(), 0, 0, LogStatus::Ok)
        };
        cases.push((record, line));
    }
    check(&format, &cases);
}

pub const V5_FORMAT: &str = "${version} ${srcaddr} ${dstaddr} ${srcport} ${dstport} ${protocol} ${start} ${end} ${type} ${packets} ${bytes} \
${account-id} ${vpc-id} ${subnet-id} ${instance-id} ${interface-id} ${region} ${az-id} ${sublocation-type} ${sublocation-id} \
${action} ${tcp-flags} ${pkt-srcaddr} ${pkt-dstaddr} ${pkt-src-aws-service} ${pkt-dst-aws-service} ${traffic-path} ${flow-direction} ${log-status}";

pub const V5_LINES: [&str; 2] = [
    "5 52.95.128.179 10.0.0.71 80 34210 6 1616729292 1616729349 IPv4 14 15044 123456789012 vpc-abcdefab012345678 subnet-aaaaaaaa012345678 i-0c50d5961bcb2d47b eni-1235b8ca123456789 ap-southeast-2 apse2-az3 - - ACCEPT 19 52.95.128.179 10.0.0.71 S3 - - ingress OK",
    "5 10.0.0.71 52.95.128.179 34210 80 6 1616729292 1616729349 IPv4 7 471 123456789012 vpc-abcdefab012345678 subnet-aaaaaaaa012345678 i-0c50d5961bcb2d47b eni-1235b8ca123456789 ap-southeast-2 apse2-az3 - - ACCEPT 3 10.0.0.71 52.95.128.179 - S3 8 egress OK",
];

/// Fills the interface metadata of the v5 example into a record (what the
/// metadata stage does; `enrich` tests build the rest from packets).
pub fn v5_interface_meta(r: FlowRecord) -> FlowRecord {
    FlowRecord {
        account_id: t("123456789012"),
        vpc_id: t("vpc-abcdefab012345678"),
        subnet_id: t("subnet-aaaaaaaa012345678"),
        instance_id: t("i-0c50d5961bcb2d47b"),
        interface_id: t("eni-1235b8ca123456789"),
        region: t("ap-southeast-2"),
        az_id: t("apse2-az3"),
        ..r
    }
}

/// §8.6: service names, traffic path and flow direction (29 fields).
#[test]
fn v5_service_path_direction() {
    let format = Format::parse(V5_FORMAT).unwrap();
    assert_eq!((format.fields().len(), format.version()), (29, 5));
    let base = |inbound: bool, packets, bytes, flags| {
        let (src, dst, sport, dport) = if inbound { ("52.95.128.179", "10.0.0.71", 80, 34210) } else { ("10.0.0.71", "52.95.128.179", 34210, 80) };
        v5_interface_meta(FlowRecord {
            srcaddr: a(src),
            dstaddr: a(dst),
            srcport: Some(sport),
            dstport: Some(dport),
            protocol: Some(6),
            start: 1616729292,
            end: 1616729349,
            ip_type: Some(IpType::V4),
            packets: Some(packets),
            bytes: Some(bytes),
            action: Some(Action::Accept),
            tcp_flags: Some(flags),
            pkt_srcaddr: a(src),
            pkt_dstaddr: a(dst),
            flow_direction: Some(if inbound { Direction::Ingress } else { Direction::Egress }),
            ..FlowRecord::default()
        })
    };
    let ingress = FlowRecord { pkt_src_aws_service: t("S3"), ..base(true, 14, 15044, 19) };
    let egress = FlowRecord { pkt_dst_aws_service: t("S3"), traffic_path: Some(8), ..base(false, 7, 471, 3) };
    check(&format, &[(ingress, V5_LINES[0]), (egress, V5_LINES[1])]);
}

pub const V10_TEXT: &str = "flow-direction traffic-path srcaddr dstaddr srcport dstport encryption-status
ingress - 10.0.133.8 10.0.128.55 43236 80 1
egress 1 10.0.128.55 10.0.133.8 80 43236 1
ingress - 10.0.133.8 10.0.128.55 36902 80 1
egress 1 10.0.128.55 10.0.133.8 80 36902 1
ingress - 10.0.130.104 10.0.128.55 55016 80 0
egress 1 10.0.128.55 10.0.130.104 80 55016 0
ingress - 10.0.130.104 10.0.128.55 60276 80 0
egress 1 10.0.128.55 10.0.130.104 80 60276 0
";

/// §8.7: encryption status, as an S3 text file with its header line.
#[test]
fn v10_encryption_status_with_header() {
    let format = Format::parse("${flow-direction} ${traffic-path} ${srcaddr} ${dstaddr} ${srcport} ${dstport} ${encryption-status}").unwrap();
    assert_eq!(format.version(), 10);
    let me = "10.0.128.55";
    // (peer, peer port, encryption-status); each conversation has an ingress and an egress line.
    let conversations = [("10.0.133.8", 43236, 1), ("10.0.133.8", 36902, 1), ("10.0.130.104", 55016, 0), ("10.0.130.104", 60276, 0)];
    let mut records = Vec::new();
    for (peer, port, enc) in conversations {
        records.push(FlowRecord {
            flow_direction: Some(Direction::Ingress),
            srcaddr: a(peer),
            dstaddr: a(me),
            srcport: Some(port),
            dstport: Some(80),
            encryption_status: Some(enc),
            ..FlowRecord::default()
        });
        records.push(FlowRecord {
            flow_direction: Some(Direction::Egress),
            traffic_path: Some(1),
            srcaddr: a(me),
            dstaddr: a(peer),
            srcport: Some(80),
            dstport: Some(port),
            encryption_status: Some(enc),
            ..FlowRecord::default()
        });
    }
    let (parsed_format, parsed) = parse_text(V10_TEXT).unwrap();
    assert_eq!(parsed_format, format);
    assert_eq!(parsed.into_iter().map(|p| p.record).collect::<Vec<_>>(), records);
    let mut written = format.header();
    written.push('\n');
    for r in &records {
        written.push_str(&format.line(r));
        written.push('\n');
    }
    assert_eq!(written, V10_TEXT);
    let lines: Vec<&str> = V10_TEXT.lines().skip(1).collect();
    check(&format, &records.into_iter().zip(lines).collect::<Vec<_>>());
}
