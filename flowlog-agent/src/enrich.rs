//! Drained kernel counters + interface metadata → flow records.
//!
//! Pure logic: no syscalls, so the window rules (one record per flow per
//! interface, NODATA for idle interfaces, SKIPDATA where inserts failed) are
//! tested without root.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use flowlog_common::{direction, family, FlowKey, FlowStats, TCP_SYN_ACK_SEEN};

use crate::{
    drain::Drained,
    record::{Action, Direction, FlowRecord, LogStatus},
};

/// What the records need to know of an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceMeta {
    pub ifindex: u32,
    pub name: String,
    pub interface_id: Arc<str>,
}

/// Static metadata of this host, for now only the account id.
#[derive(Clone, Debug)]
pub struct HostMeta {
    pub account_id: Arc<str>,
}

/// AWS `tcp-flags`: FIN 1, SYN 2, RST 4, and 18 for a packet with SYN and ACK
/// together; other flags (ACK, PSH, URG, ECE, CWR) are not reported.
pub fn aws_tcp_flags(kernel_flags: u32) -> u8 {
    let mut v = (kernel_flags & 0x07) as u8;
    if kernel_flags & TCP_SYN_ACK_SEEN != 0 {
        v |= 0x12;
    }
    v
}

pub fn key_addrs(key: &FlowKey) -> (IpAddr, IpAddr) {
    fn addr(fam: u8, b: &[u8; 16]) -> IpAddr {
        if fam == family::IPV4 {
            IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
        } else {
            IpAddr::V6(Ipv6Addr::from(*b))
        }
    }
    (addr(key.family, &key.src_addr), addr(key.family, &key.dst_addr))
}

fn unix_secs(boot_ns: u64, boot_to_unix_ns: i128) -> u64 {
    let ns = boot_ns as i128 + boot_to_unix_ns;
    if ns <= 0 {
        0
    } else {
        (ns / 1_000_000_000) as u64
    }
}

/// Builds the records of one window.
///
/// `interfaces` are all interfaces that were attached during the window
/// (including ones that disappeared in it): each gets its flow records, or
/// one NODATA record, plus one SKIPDATA record if inserts failed for it.
/// Flows of an ifindex not in `interfaces` cannot happen unless the caller
/// forgot an interface; they are still written, under a derived id.
pub fn build_records(host: &HostMeta, interfaces: &[InterfaceMeta], drained: &Drained) -> Vec<FlowRecord> {
    let (w_start, w_end) = (drained.window_start_unix_ns / 1_000_000_000, drained.window_end_unix_ns / 1_000_000_000);
    let mut per_iface: BTreeMap<u32, Vec<(&FlowKey, &FlowStats)>> = BTreeMap::new();
    for (k, v) in &drained.flows {
        per_iface.entry(k.ifindex).or_default().push((k, v));
    }
    let failed: BTreeMap<u32, u64> = drained.fails.iter().map(|(i, f)| (*i, f.packets)).collect();

    let mut order: Vec<InterfaceMeta> = interfaces.to_vec();
    for idx in per_iface.keys().chain(failed.keys()) {
        if !order.iter().any(|m| m.ifindex == *idx) {
            order.push(InterfaceMeta {
                ifindex: *idx,
                name: format!("ifindex{idx}"),
                interface_id: format!("if-{idx}").into(),
            });
        }
    }

    let mut out = Vec::with_capacity(drained.flows.len() + order.len());
    for meta in &order {
        let mut flows = per_iface.remove(&meta.ifindex).unwrap_or_default();
        // Deterministic output: by first packet, then by key.
        flows.sort_by(|a, b| (a.1.first_seen_ns, a.0).cmp(&(b.1.first_seen_ns, b.0)));
        for (k, v) in &flows {
            let (src, dst) = key_addrs(k);
            let start = unix_secs(v.first_seen_ns, drained.boot_to_unix_ns).clamp(w_start, w_end);
            let end = unix_secs(v.last_seen_ns, drained.boot_to_unix_ns).clamp(start, w_end);
            out.push(FlowRecord {
                srcaddr: Some(src),
                dstaddr: Some(dst),
                pkt_srcaddr: Some(src),
                pkt_dstaddr: Some(dst),
                srcport: Some(k.src_port),
                dstport: Some(k.dst_port),
                protocol: Some(k.protocol),
                packets: Some(v.packets),
                bytes: Some(v.bytes),
                action: Some(Action::Accept),
                tcp_flags: Some(if k.protocol == 6 { aws_tcp_flags(v.tcp_flags) } else { 0 }),
                flow_direction: Some(if k.direction == direction::INGRESS {
                    Direction::Ingress
                } else {
                    Direction::Egress
                }),
                ..FlowRecord::status_only(host.account_id.clone(), meta.interface_id.clone(), start, end, LogStatus::Ok)
            });
        }
        let skipped = failed.contains_key(&meta.ifindex) || drained.unattributed_failures > 0;
        let status = if skipped {
            Some(LogStatus::SkipData)
        } else if flows.is_empty() {
            Some(LogStatus::NoData)
        } else {
            None
        };
        if let Some(status) = status {
            out.push(FlowRecord::status_only(host.account_id.clone(), meta.interface_id.clone(), w_start, w_end, status));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowlog_common::InsertFailures;

    fn key(ifindex: u32, sport: u16, proto: u8, dir: u8) -> FlowKey {
        let mut k = FlowKey {
            ifindex,
            src_addr: [0; 16],
            dst_addr: [0; 16],
            src_port: sport,
            dst_port: 80,
            protocol: proto,
            direction: dir,
            family: family::IPV4,
            _pad: 0,
        };
        k.src_addr[..4].copy_from_slice(&[10, 0, 0, 1]);
        k.dst_addr[..4].copy_from_slice(&[10, 0, 0, 2]);
        k
    }

    fn stats(packets: u64, bytes: u64, first_s: u64, last_s: u64, flags: u32) -> FlowStats {
        FlowStats {
            packets,
            bytes,
            first_seen_ns: first_s * 1_000_000_000 + 5,
            last_seen_ns: last_s * 1_000_000_000 + 7,
            tcp_flags: flags,
            _pad: 0,
        }
    }

    fn iface(ifindex: u32, id: &str) -> InterfaceMeta {
        InterfaceMeta { ifindex, name: format!("veth{ifindex}"), interface_id: id.into() }
    }

    fn drained(flows: Vec<(FlowKey, FlowStats)>, fails: Vec<(u32, InsertFailures)>, unattributed: u64) -> Drained {
        // boot clock 100 s == unix 1_700_000_100 s
        Drained::from_parts(
            flows,
            fails,
            unattributed,
            1_700_000_000 * 1_000_000_000,
            1_700_000_100 * 1_000_000_000 + 300,
            1_700_000_160 * 1_000_000_000 + 900,
        )
    }

    fn lines(records: &[FlowRecord]) -> Vec<String> {
        let f = crate::format::Format::default();
        records.iter().map(|r| f.line(r)).collect()
    }

    #[test]
    fn flows_nodata_and_skipdata_per_interface() {
        let host = HostMeta { account_id: "unknown".into() };
        let ifaces = [iface(2, "eni-a"), iface(3, "eni-b"), iface(4, "eni-c")];
        let d = drained(
            vec![
                (key(2, 4000, 17, direction::EGRESS), stats(3, 300, 101, 103, 0)),
                (key(2, 3000, 6, direction::INGRESS), stats(5, 500, 100, 110, 0x02)),
                (key(4, 5000, 1, direction::INGRESS), stats(1, 84, 120, 120, 0)),
            ],
            vec![(4, InsertFailures { packets: 9, bytes: 900 })],
            0,
        );
        assert_eq!(
            lines(&build_records(&host, &ifaces, &d)),
            [
                "2 unknown eni-a 10.0.0.1 10.0.0.2 3000 80 6 5 500 1700000100 1700000110 ACCEPT OK",
                "2 unknown eni-a 10.0.0.1 10.0.0.2 4000 80 17 3 300 1700000101 1700000103 ACCEPT OK",
                "2 unknown eni-b - - - - - - - 1700000100 1700000160 - NODATA",
                "2 unknown eni-c 10.0.0.1 10.0.0.2 5000 80 1 1 84 1700000120 1700000120 ACCEPT OK",
                "2 unknown eni-c - - - - - - - 1700000100 1700000160 - SKIPDATA",
            ]
        );
    }

    #[test]
    fn unattributed_failures_mark_every_interface() {
        let host = HostMeta { account_id: "1".into() };
        let d = drained(vec![(key(2, 1, 17, 0), stats(1, 28, 100, 100, 0))], vec![], 4);
        let l = lines(&build_records(&host, &[iface(2, "a"), iface(3, "b")], &d));
        assert_eq!(
            l,
            [
                "2 1 a 10.0.0.1 10.0.0.2 1 80 17 1 28 1700000100 1700000100 ACCEPT OK",
                "2 1 a - - - - - - - 1700000100 1700000160 - SKIPDATA",
                "2 1 b - - - - - - - 1700000100 1700000160 - SKIPDATA",
            ]
        );
    }

    #[test]
    fn times_are_clamped_into_the_window() {
        // A packet stamped just before the flip that opened the window.
        let host = HostMeta { account_id: "1".into() };
        let d = drained(vec![(key(2, 1, 17, 0), stats(1, 28, 99, 99, 0))], vec![], 0);
        let r = build_records(&host, &[iface(2, "a")], &d);
        assert_eq!((r[0].start, r[0].end), (1_700_000_100, 1_700_000_100));
    }

    #[test]
    fn tcp_flags_follow_aws_rules() {
        assert_eq!(aws_tcp_flags(0x10), 0); // ACK alone
        assert_eq!(aws_tcp_flags(0x18), 0); // PSH+ACK
        assert_eq!(aws_tcp_flags(0x02), 2); // SYN
        assert_eq!(aws_tcp_flags(0x12 | TCP_SYN_ACK_SEEN), 18); // SYN-ACK
        // SYN then a separate ACK: the OR has both bits but no SYN-ACK packet.
        assert_eq!(aws_tcp_flags(0x12), 2);
        assert_eq!(aws_tcp_flags(0x13 | TCP_SYN_ACK_SEEN), 19); // SYN-ACK + FIN
        assert_eq!(aws_tcp_flags(0x03), 3); // SYN + FIN
        assert_eq!(aws_tcp_flags(0x04 | 0x10), 4); // RST+ACK
        assert_eq!(aws_tcp_flags(0x42), 2); // SYN+ECE
    }

    #[test]
    fn ipv6_keys_become_ipv6_addresses() {
        let mut k = key(2, 1, 58, 0);
        k.family = family::IPV6;
        k.src_addr = "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets();
        k.dst_addr = "fe80::2".parse::<Ipv6Addr>().unwrap().octets();
        assert_eq!(key_addrs(&k), ("2001:db8::1".parse().unwrap(), "fe80::2".parse().unwrap()));
    }
}
