//! The eBPF programs on crafted frames, through BPF_PROG_TEST_RUN: every
//! case checks the exact flow-table entry the kernel wrote (read back by the
//! agent's own drain). Needs root.

use aya::{
    maps::{Array, Map, MapData},
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use flowlog_testkit::{frames::*, require_root};
use flowlog_agent::{
    bpf::TableKind,
    capture::{Capture, KernelFilters, EGRESS_PROGRAM, INGRESS_PROGRAM},
    drain::{Drained, FlowTables},
};
use flowlog_agent::enrich::aws_tcp_flags;
use flowlog_common::{direction, family, FlowKey, InsertFailures, TcpFlagsSeen};

const XDP_PASS: u32 = 2;
const TC_ACT_UNSPEC: u32 = u32::MAX; // -1: TCX "next"
/// test_run runs programs on the loopback device.
const LO: u32 = 1;

struct Kernel {
    capture: Capture,
    tables: FlowTables,
}

impl Kernel {
    fn load(max_flows: u32) -> Self {
        Self::load_with(max_flows, 1, &KernelFilters::default())
    }

    fn load_with(max_flows: u32, sample_rate: u32, filters: &KernelFilters) -> Self {
        let (capture, tables) = Capture::loader(max_flows).sample_rate(sample_rate).filters(filters).load().expect("load eBPF programs");
        Kernel { capture, tables }
    }

    /// With a given flow table.
    fn load_table(max_flows: u32, kind: TableKind) -> Self {
        let (capture, tables) = Capture::loader(max_flows).table(kind).load().expect("load eBPF programs");
        assert_eq!((capture.table(), tables.kind()), (kind, kind));
        Kernel { capture, tables }
    }

    fn xdp(&mut self, frame: &[u8]) -> u32 {
        let p: &mut Xdp = self.capture.xdp_program().unwrap();
        let opts = TestRunOptions { data_in: Some(frame), ..TestRunOptions::new() };
        p.test_run(opts).expect("XDP test_run").return_value
    }

    /// `gso`: (gso_segs, gso_size) written into the test skb.
    fn tc(&mut self, frame: &[u8], gso: Option<(u32, u32)>) -> u32 {
        let p: &mut SchedClassifier = self.capture.ebpf_mut().program_mut(EGRESS_PROGRAM).unwrap().try_into().unwrap();
        // struct __sk_buff (192 bytes): gso_segs at 164, gso_size at 176.
        let mut ctx = [0u8; 192];
        if let Some((segs, size)) = gso {
            ctx[164..168].copy_from_slice(&segs.to_ne_bytes());
            ctx[176..180].copy_from_slice(&size.to_ne_bytes());
        }
        let opts = TestRunOptions { data_in: Some(frame), ctx_in: Some(&ctx), ..TestRunOptions::new() };
        p.test_run(opts).expect("TC test_run").return_value
    }

    fn try_tc(&mut self, frame: &[u8]) -> Result<u32, String> {
        let p: &mut SchedClassifier = self.capture.ebpf_mut().program_mut(EGRESS_PROGRAM).unwrap().try_into().unwrap();
        let opts = TestRunOptions { data_in: Some(frame), ..TestRunOptions::new() };
        p.test_run(opts).map(|r| r.return_value).map_err(|e| format!("{e:?}"))
    }

    /// Runs the frame through both programs: one ingress and one egress entry.
    fn both(&mut self, frame: &[u8]) {
        assert_eq!(self.xdp(frame), XDP_PASS);
        assert_eq!(self.tc(frame, None), TC_ACT_UNSPEC);
    }

    fn drain(&mut self) -> Drained {
        let d = self.tables.rotate().expect("drain");
        self.tables.release(&d).expect("release");
        d
    }
}

fn v4key(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, proto: u8, dir: u8) -> FlowKey {
    let mut k = FlowKey {
        ifindex: LO,
        src_addr: [0; 16],
        dst_addr: [0; 16],
        src_port: sport,
        dst_port: dport,
        protocol: proto,
        direction: dir,
        family: family::IPV4,
        _pad: 0,
    };
    k.src_addr[..4].copy_from_slice(&src);
    k.dst_addr[..4].copy_from_slice(&dst);
    k
}

fn v6key(src: &str, dst: &str, sport: u16, dport: u16, proto: u8, dir: u8) -> FlowKey {
    FlowKey {
        ifindex: LO,
        src_addr: src.parse::<std::net::Ipv6Addr>().unwrap().octets(),
        dst_addr: dst.parse::<std::net::Ipv6Addr>().unwrap().octets(),
        src_port: sport,
        dst_port: dport,
        protocol: proto,
        direction: dir,
        family: family::IPV6,
        _pad: 0,
    }
}

/// (key, packets, bytes, AWS `tcp-flags` value) of every entry, sorted.
fn entries(d: &Drained) -> Vec<(FlowKey, u64, u64, u8)> {
    let mut v: Vec<_> = d.flows.iter().map(|(k, s)| (*k, s.packets, s.bytes, aws_tcp_flags(&s.tcp_flags))).collect();
    v.sort();
    v
}

/// The same packet seen once at ingress and once at egress.
fn expect_both(d: &Drained, k: FlowKey, packets: u64, bytes: u64, flags: u8) {
    let ing = FlowKey { direction: direction::INGRESS, ..k };
    let eg = FlowKey { direction: direction::EGRESS, ..k };
    let mut want = vec![(ing, packets, bytes, flags), (eg, packets, bytes, flags)];
    want.sort();
    assert_eq!(entries(d), want);
    assert!(d.fails.is_empty() && d.unattributed_failures == 0);
}

const A4: [u8; 4] = [10, 1, 0, 1];
const B4: [u8; 4] = [10, 1, 0, 2];
const A6: &str = "2001:db8::1";
const B6: &str = "2001:db8::2";

#[test]
fn ipv4_tcp_udp_icmp() {
    if !require_root() {
        return;
    }
    let mut k = Kernel::load(1024);
    let ip = V4::new(A4, B4);

    k.both(&frame_v4(&[], &ip, &L4::Tcp { sport: 40000, dport: 443, flags: 0x02, options: 20, payload: 0 }));
    expect_both(&k.drain(), v4key(A4, B4, 40000, 443, TCP, 0), 1, 60, 0x02);

    k.both(&frame_v4(&[], &ip, &L4::Udp { sport: 5353, dport: 53, payload: 100 }));
    expect_both(&k.drain(), v4key(A4, B4, 5353, 53, UDP, 0), 1, 128, 0);

    k.both(&frame_v4(&[], &ip, &L4::Icmp { payload: 56 }));
    expect_both(&k.drain(), v4key(A4, B4, 0, 0, ICMP, 0), 1, 84, 0);
}

#[test]
fn ipv6_tcp_udp_icmpv6() {
    if !require_root() {
        return;
    }
    let mut k = Kernel::load(1024);
    let ip = V6::new(A6, B6);

    k.both(&frame_v6(&[], &ip, &L4::Tcp { sport: 1234, dport: 22, flags: 0x12, options: 0, payload: 10 }));
    expect_both(&k.drain(), v6key(A6, B6, 1234, 22, TCP, 0), 1, 70, 18);

    k.both(&frame_v6(&[], &ip, &L4::Udp { sport: 7, dport: 9, payload: 0 }));
    expect_both(&k.drain(), v6key(A6, B6, 7, 9, UDP, 0), 1, 48, 0);

    k.both(&frame_v6(&[], &ip, &L4::Icmp { payload: 56 }));
    expect_both(&k.drain(), v6key(A6, B6, 0, 0, ICMPV6, 0), 1, 104, 0);
}

#[test]
fn vlan_tags_are_skipped() {
    if !require_root() {
        return;
    }
    let mut k = Kernel::load(1024);
    let udp = L4::Udp { sport: 1000, dport: 2000, payload: 12 };
    for tags in [&[0x8100][..], &[0x88a8, 0x8100], &[0x8100, 0x8100]] {
        k.both(&frame_v4(tags, &V4::new(A4, B4), &udp));
        expect_both(&k.drain(), v4key(A4, B4, 1000, 2000, UDP, 0), 1, 40, 0);
        k.both(&frame_v6(tags, &V6::new(A6, B6), &udp));
        expect_both(&k.drain(), v6key(A6, B6, 1000, 2000, UDP, 0), 1, 60, 0);
    }
}

#[test]
fn ipv4_options_move_the_l4_header() {
    if !require_root() {
        return;
    }
    let mut k = Kernel::load(1024);
    for options in [4, 12, 40] {
        let ip = V4 { options, ..V4::new(A4, B4) };
        k.both(&frame_v4(&[], &ip, &L4::Tcp { sport: 1, dport: 2, flags: 0x01, options: 0, payload: 5 }));
        expect_both(&k.drain(), v4key(A4, B4, 1, 2, TCP, 0), 1, 20 + options as u64 + 25, 0x01);
    }
}

#[test]
fn ipv6_extension_headers_are_skipped() {
    if !require_root() {
        return;
    }
    let mut k = Kernel::load(1024);
    let chains: [&[(u8, usize)]; 4] = [&[(0, 8)], &[(0, 8), (60, 16)], &[(0, 8), (43, 24), (60, 8)], &[(60, 8), (44, 8)]];
    for ext in chains {
        let ip = V6 { ext: ext.to_vec(), ..V6::new(A6, B6) };
        let ext_len: usize = ext.iter().map(|e| e.1).sum();
        k.both(&frame_v6(&[], &ip, &L4::Udp { sport: 33, dport: 44, payload: 3 }));
        expect_both(&k.drain(), v6key(A6, B6, 33, 44, UDP, 0), 1, (40 + ext_len + 11) as u64, 0);
    }
}

#[test]
fn fragments_only_the_first_has_ports() {
    if !require_root() {
        return;
    }
    let mut k = Kernel::load(1024);
    // First fragment: UDP header present.
    let first = V4 { more_fragments: true, ..V4::new(A4, B4) };
    k.both(&frame_v4(&[], &first, &L4::Udp { sport: 5000, dport: 6000, payload: 64 }));
    expect_both(&k.drain(), v4key(A4, B4, 5000, 6000, UDP, 0), 1, 92, 0);
    // Non-first fragment whose payload looks like a UDP header: ports stay 0.
    let later = V4 { frag_offset: 9, more_fragments: false, ..V4::new(A4, B4) };
    let looks_like_udp = L4::Raw { proto: UDP, bytes: vec![0x13, 0x88, 0x17, 0x70, 0, 8, 0, 0, 1, 2, 3, 4] };
    k.both(&frame_v4(&[], &later, &looks_like_udp));
    expect_both(&k.drain(), v4key(A4, B4, 0, 0, UDP, 0), 1, 32, 0);

    // IPv6: fragment header with offset 0, then a non-first one.
    let first6 = V6 { ext: vec![(44, 8)], more_fragments: true, ..V6::new(A6, B6) };
    k.both(&frame_v6(&[], &first6, &L4::Tcp { sport: 80, dport: 81, flags: 0x02, options: 0, payload: 8 }));
    expect_both(&k.drain(), v6key(A6, B6, 80, 81, TCP, 0), 1, 40 + 8 + 28, 0x02);
    let later6 = V6 { ext: vec![(44, 8)], frag_offset: 100, ..V6::new(A6, B6) };
    let looks_like_tcp = L4::Raw { proto: TCP, bytes: vec![0, 80, 0, 81, 0, 0, 0, 0, 0, 0, 0, 0, 0x50, 0x02, 0, 0, 0, 0, 0, 0] };
    k.both(&frame_v6(&[], &later6, &looks_like_tcp));
    expect_both(&k.drain(), v6key(A6, B6, 0, 0, TCP, 0), 1, 68, 0);
}

#[test]
fn ethernet_padding_is_not_counted() {
    if !require_root() {
        return;
    }
    let mut k = Kernel::load(1024);
    let mut f = frame_v4(&[], &V4::new(A4, B4), &L4::Udp { sport: 1, dport: 2, payload: 0 });
    f.resize(60, 0); // minimum Ethernet frame
    k.both(&f);
    expect_both(&k.drain(), v4key(A4, B4, 1, 2, UDP, 0), 1, 28, 0);
}

#[test]
fn truncated_frames_are_never_flows() {
    if !require_root() {
        return;
    }
    let mut k = Kernel::load(1024);
    let frames = [
        frame_v4(&[0x8100], &V4 { options: 8, ..V4::new(A4, B4) }, &L4::Tcp { sport: 1, dport: 2, flags: 2, options: 8, payload: 3 }),
        frame_v4(&[], &V4::new(A4, B4), &L4::Udp { sport: 1, dport: 2, payload: 4 }),
        frame_v4(&[], &V4::new(A4, B4), &L4::Icmp { payload: 4 }),
        frame_v6(&[0x88a8, 0x8100], &V6 { ext: vec![(0, 8), (44, 8)], ..V6::new(A6, B6) }, &L4::Udp { sport: 1, dport: 2, payload: 2 }),
        frame_v6(&[], &V6::new(A6, B6), &L4::Tcp { sport: 1, dport: 2, flags: 2, options: 4, payload: 1 }),
    ];
    let before = k.tables.counters().unwrap();
    let mut cut = 0u64;
    for f in &frames {
        // test_run refuses frames shorter than an Ethernet header.
        for len in 14..f.len() {
            assert_eq!(k.xdp(&f[..len]), XDP_PASS, "len {len}");
            cut += 1;
            // For an untagged IP frame, test_run itself refuses (EINVAL) to
            // build an skb without a complete IP header; the stack could not
            // send one either. Every other truncation reaches the program.
            match k.try_tc(&f[..len]) {
                Ok(ret) => {
                    assert_eq!(ret, TC_ACT_UNSPEC, "len {len}");
                    cut += 1;
                }
                Err(e) => assert!(len < 14 + 40 && e.contains("Invalid argument"), "len {len}: {e}"),
            }
        }
        let d = k.drain();
        assert!(d.flows.is_empty(), "a truncated frame became a flow: {:?}", entries(&d));
        // The whole frame still counts: the parser did not get stuck.
        k.both(f);
        assert_eq!(k.drain().flows.len(), 2);
    }
    let after = k.tables.counters().unwrap();
    assert_eq!((after.malformed - before.malformed, after.non_ip - before.non_ip), (cut, 0));
}

#[test]
fn non_ip_frames_are_not_flows() {
    if !require_root() {
        return;
    }
    let mut k = Kernel::load(1024);
    let before = k.tables.counters().unwrap();
    let mut arp = eth(&[], 0x0806);
    arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1, 10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 10, 0, 0, 2]);
    let mut lldp = eth(&[], 0x88cc);
    lldp.extend_from_slice(&[2, 7, 4, 0, 0, 0, 0, 0, 1, 0, 0]);
    let mut vlan_arp = eth(&[0x8100], 0x0806);
    vlan_arp.extend_from_slice(&arp[14..]);
    for f in [&arp, &lldp, &vlan_arp] {
        k.both(f);
    }
    assert!(k.drain().flows.is_empty());
    assert_eq!(k.tables.counters().unwrap().non_ip - before.non_ip, 6);
}

#[test]
fn packets_of_one_flow_aggregate_and_flags_or() {
    if !require_root() {
        return;
    }
    let mut k = Kernel::load(1024);
    let ip = V4::new(A4, B4);
    let seg = |flags, payload| frame_v4(&[], &ip, &L4::Tcp { sport: 999, dport: 80, flags, options: 0, payload });
    // SYN, ACK, PSH+ACK with 100 bytes, FIN+ACK: SYN and FIN, no SYN-ACK packet.
    for (flags, payload) in [(0x02, 0), (0x10, 0), (0x18, 100), (0x11, 0)] {
        assert_eq!(k.xdp(&seg(flags, payload)), XDP_PASS);
    }
    let d = k.drain();
    assert_eq!(entries(&d), [(v4key(A4, B4, 999, 80, TCP, direction::INGRESS), 4, 40 * 4 + 100, 0x03)]);
    let s = d.flows[0].1;
    assert!(s.first_seen_ns <= s.last_seen_ns && s.first_seen_ns > 0);

    // BPF_PROG_TEST_RUN with repeat: the same packet N times.
    let f = seg(0x10, 1000);
    let p: &mut Xdp = k.capture.xdp_program().unwrap();
    p.test_run(TestRunOptions { data_in: Some(&f), repeat: 1000, ..TestRunOptions::new() }).unwrap();
    assert_eq!(entries(&k.drain()), [(v4key(A4, B4, 999, 80, TCP, direction::INGRESS), 1000, 1040 * 1000, 0)]);
}

#[test]
fn gso_super_packets_count_as_wire_segments() {
    if !require_root() {
        return;
    }
    let mut k = Kernel::load(1024);
    // 3000 bytes of TCP payload with 12 bytes of options, MSS 1000: 3 segments,
    // each with its own 20-byte IP and 32-byte TCP header. (test_run takes
    // at most about one page of data.)
    let f = frame_v4(&[], &V4::new(A4, B4), &L4::Tcp { sport: 5, dport: 6, flags: 0x18, options: 12, payload: 3000 });
    assert_eq!(k.tc(&f, Some((3, 1000))), TC_ACT_UNSPEC);
    // gso_segs 0 (not computed yet): derived from gso_size.
    assert_eq!(k.tc(&f, Some((0, 1000))), TC_ACT_UNSPEC);
    let one = 3052u64 + 2 * 52;
    assert_eq!(entries(&k.drain()), [(v4key(A4, B4, 5, 6, TCP, direction::EGRESS), 6, 2 * one, 0)]);

    // UDP GSO over IPv6: 3 datagrams of up to 1400 bytes.
    let f = frame_v6(&[], &V6::new(A6, B6), &L4::Udp { sport: 7, dport: 8, payload: 3000 });
    assert_eq!(k.tc(&f, Some((3, 1400))), TC_ACT_UNSPEC);
    assert_eq!(entries(&k.drain()), [(v6key(A6, B6, 7, 8, UDP, direction::EGRESS), 3, 3048 + 2 * 48, 0)]);
}

/// The tables this kernel can run: the hash table everywhere, the slot
/// table where the probe found compare-and-exchange (5.12+).
fn table_kinds() -> Vec<TableKind> {
    let f = flowlog_agent::bpf::probe::detect().expect("probe");
    if f.slot_atomics {
        vec![TableKind::Hash, TableKind::Slots]
    } else {
        vec![TableKind::Hash]
    }
}

#[test]
fn full_table_counts_every_failed_insert() {
    if !require_root() {
        return;
    }
    for kind in table_kinds() {
        let mut k = Kernel::load_table(8, kind);
        // The hash table holds --max-flows; the slot table its slots (twice
        // as many, a power of two), every one reachable within the probe bound.
        let cap = k.tables.slot_capacity().unwrap_or(8) as u16;
        let udp = |sport: u16| frame_v4(&[], &V4::new(A4, B4), &L4::Udp { sport, dport: 53, payload: 20 });
        for sport in 0..cap + 4 {
            assert_eq!(k.xdp(&udp(1000 + sport)), XDP_PASS);
        }
        // Known flows still count when the table is full.
        assert_eq!(k.xdp(&udp(1000)), XDP_PASS);
        let d = k.drain();
        assert_eq!(d.flows.len(), cap as usize, "{kind:?}");
        let packets: u64 = d.flows.iter().map(|f| f.1.packets).sum();
        assert_eq!(packets, cap as u64 + 1, "{kind:?}");
        assert_eq!(d.fails, [(LO, InsertFailures { packets: 4, bytes: 4 * 48 })], "{kind:?}");
        // Every stored flow is exact.
        for (key, s) in &d.flows {
            assert_eq!(s.bytes, 48 * s.packets, "{key:?}");
        }
        // The next window starts empty in the other generation.
        assert_eq!(k.xdp(&udp(5)), XDP_PASS);
        let d = k.drain();
        assert_eq!((d.flows.len(), d.fails.len()), (1, 0), "{kind:?}");
        // And the first generation was emptied on release: it takes a full set again.
        for sport in 0..cap {
            assert_eq!(k.xdp(&udp(3000 + sport)), XDP_PASS);
        }
        let d = k.drain();
        assert_eq!((d.flows.len(), d.fails.len()), (cap as usize, 0), "{kind:?}");
    }
}

/// Slot table: flows whose home slot is the same fill the probe sequence;
/// past SLOT_PROBES slots a new flow is a failed insert (SKIPDATA) even
/// though the table has room elsewhere, and the stored ones stay exact.
#[test]
fn slot_probe_limit_is_skipdata() {
    if !require_root() || !table_kinds().contains(&TableKind::Slots) {
        return;
    }
    // 512 slots: ~128 of the 65,535 source ports share each home slot.
    let mut k = Kernel::load_table(256, TableKind::Slots);
    let mask = k.tables.slot_capacity().unwrap() - 1;
    let key = |sport: u16| v4key(A4, B4, sport, 53, UDP, direction::INGRESS);
    let home = |sport: u16| flowlog_common::FlowSlot::of_key(&key(sport)).home(mask);
    let target = home(1);
    let colliding: Vec<u16> = (1..u16::MAX).filter(|p| home(*p) == target).take(flowlog_common::SLOT_PROBES as usize + 5).collect();
    assert_eq!(colliding.len(), flowlog_common::SLOT_PROBES as usize + 5, "not enough colliding ports");
    let udp = |sport: u16| frame_v4(&[], &V4::new(A4, B4), &L4::Udp { sport, dport: 53, payload: 20 });
    for p in &colliding {
        assert_eq!(k.xdp(&udp(*p)), XDP_PASS);
        assert_eq!(k.xdp(&udp(*p)), XDP_PASS);
    }
    // A flow with another home slot still finds room.
    let other = (1..u16::MAX).find(|p| home(*p) == (target + 200) & mask).unwrap();
    assert_eq!(k.xdp(&udp(other)), XDP_PASS);
    let d = k.drain();
    let stored: Vec<u16> = {
        let mut v: Vec<u16> = d.flows.iter().map(|f| f.0.src_port).collect();
        v.sort();
        v
    };
    let mut want: Vec<u16> = colliding[..flowlog_common::SLOT_PROBES as usize].to_vec();
    want.push(other);
    want.sort();
    assert_eq!(stored, want);
    for (_, s) in &d.flows {
        assert_eq!((s.packets, s.bytes), if s.packets == 1 { (1, 48) } else { (2, 96) });
    }
    assert_eq!(d.fails, [(LO, InsertFailures { packets: 10, bytes: 10 * 48 })]);
}

#[test]
fn each_window_gets_its_own_packets() {
    if !require_root() {
        return;
    }
    let mut k = Kernel::load(64);
    let f = frame_v4(&[], &V4::new(A4, B4), &L4::Udp { sport: 1, dport: 2, payload: 0 });
    for round in 1..=5u64 {
        for _ in 0..round {
            k.xdp(&f);
        }
        let d = k.drain();
        assert_eq!(entries(&d), [(v4key(A4, B4, 1, 2, UDP, 0), round, 28 * round, 0)]);
        assert!(d.window_start_unix_ns <= d.window_end_unix_ns);
    }
}

/// The agent hands each shipped window back (`FlowTables::recycle`) and the
/// next one is read into its vectors: a smaller window after a larger one
/// holds only its own flows, and only its slots are zeroed on release.
#[test]
fn a_recycled_window_leaves_nothing_in_the_next() {
    if !require_root() {
        return;
    }
    for kind in table_kinds() {
        let mut k = Kernel::load_table(256, kind);
        for (round, flows) in [40u16, 3, 0, 17, 1].into_iter().enumerate() {
            let round = round as u64 + 1;
            for sport in 0..flows {
                let f = frame_v4(&[], &V4::new(A4, B4), &L4::Udp { sport: 1000 + sport, dport: 53, payload: 2 });
                for _ in 0..round {
                    k.xdp(&f);
                }
            }
            let d = k.tables.rotate().expect("drain");
            let want: Vec<_> = (0..flows).map(|sport| (v4key(A4, B4, 1000 + sport, 53, UDP, 0), round, 30 * round, 0)).collect();
            assert_eq!(entries(&d), want, "{kind:?}, window {round}");
            k.tables.release(&d).expect("release");
            k.tables.recycle(d);
        }
        // Released means emptied: one more window, without packets, is empty.
        assert!(k.tables.rotate().expect("drain").flows.is_empty(), "{kind:?}");
    }
}

#[test]
fn a_window_read_but_not_released_is_reported_by_the_next_agent() {
    if !require_root() {
        return;
    }
    let bpffs = flowlog_testkit::test_bpffs();
    let root = bpffs.join(format!("kernel-test-{}", std::process::id()));
    let f = frame_v4(&[], &V4::new(A4, B4), &L4::Udp { sport: 3, dport: 4, payload: 2 });

    // Agent 1 counts, closes the window, reads it... and dies before releasing.
    let (mut capture, mut tables) = Capture::loader(64).pin_root(Some(&root)).load().unwrap();
    let mut k = Kernel { capture, tables };
    k.xdp(&f);
    k.xdp(&f);
    let read = k.tables.rotate().unwrap();
    assert_eq!(read.flows.len(), 1);
    k.xdp(&f); // counted in the next window, which it never closes
    drop(k);

    // Agent 2 re-uses the pinned maps: the unreleased window, then the open one.
    (capture, tables) = Capture::loader(64).pin_root(Some(&root)).load().unwrap();
    k = Kernel { capture, tables };
    let left = k.tables.leftover().unwrap().expect("leftover window");
    assert_eq!(entries(&left), [(v4key(A4, B4, 3, 4, UDP, 0), 2, 60, 0)]);
    k.tables.release(&left).unwrap();
    assert!(k.tables.leftover().unwrap().is_none());
    assert_eq!(entries(&k.drain()), [(v4key(A4, B4, 3, 4, UDP, 0), 1, 30, 0)]);
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_second_agent_on_the_same_pins_is_refused_and_a_half_done_flip_is_finished() {
    if !require_root() {
        return;
    }
    let bpffs = flowlog_testkit::test_bpffs();
    let root = bpffs.join(format!("kernel-test-lock-{}", std::process::id()));
    let first = Capture::loader(64).pin_root(Some(&root)).load().unwrap();
    let err = match Capture::loader(64).pin_root(Some(&root)).load() {
        Ok(_) => panic!("a second agent on the same pin directory was let in"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("another flowlog agent is running with pin directory") && err.contains("--pin-dir"), "{err}");
    // The first agent dies between setting the drop program's grace and
    // clearing it (the middle of a flip).
    let path = root.join(flowlog_agent::capture::pin_dir_name(64, first.0.table())).join(flowlog_common::maps::GENERATION);
    let mut generation: Array<MapData, u32> = Array::try_from(Map::Array(MapData::from_pin(&path).unwrap())).unwrap();
    generation.set(flowlog_common::GENERATION_GRACE, 1, 0).unwrap();
    drop(first);
    let next = Capture::loader(64).pin_root(Some(&root)).load().unwrap();
    assert_eq!(generation.get(&flowlog_common::GENERATION_GRACE, 0).unwrap(), 0, "the next agent finishes the flip before it reads");
    drop(next);
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn kernel_filters_keep_exactly_what_they_say() {
    if !require_root() {
        return;
    }
    let mut k = Kernel::load_with(1024, 1, &filter_set());
    check_filter_set(&mut k);
}

/// Every kind of kernel filter at once (`check_filter_set` sends through them).
fn filter_set() -> KernelFilters {
    let net = |s: &str| s.parse().unwrap();
    KernelFilters {
        include_cidrs: vec![net("10.1.0.0/16"), net("2001:db8::/32")],
        exclude_cidrs: vec![net("10.1.9.0/24")],
        include_ports: vec![53, 443, 0],
        exclude_ports: vec![22],
        protocols: vec![6, 17, 1, 58],
    }
}

/// A drained entry as [`entries`] lists it: key, packets, bytes, flags.
type Entry = (FlowKey, u64, u64, u8);

/// Frames each kind of [`filter_set`] keeps or drops: (kept, their entries, dropped).
fn filter_frames() -> (Vec<Vec<u8>>, Vec<Entry>, Vec<Vec<u8>>) {
    let udp = |src: [u8; 4], dst: [u8; 4], sport, dport| frame_v4(&[], &V4::new(src, dst), &L4::Udp { sport, dport, payload: 0 });
    let (a, b, out1, out2, ex) = ([10, 1, 0, 1], [10, 1, 0, 2], [10, 2, 0, 1], [10, 3, 0, 2], [10, 1, 9, 5]);
    let kept = vec![
        udp(a, b, 5353, 53),
        udp(out1, b, 1000, 53), // one end inside is enough
        frame_v4(&[], &V4::new(a, b), &L4::Icmp { payload: 8 }), // port 0 is listed
        frame_v6(&[], &V6::new("2001:db8::1", "2001:db8::2"), &L4::Udp { sport: 9, dport: 443, payload: 0 }),
    ];
    let dropped = vec![
        udp(out1, out2, 1000, 53),                                                               // no end inside
        udp(ex, b, 1000, 53),                                                                    // excluded CIDR wins
        frame_v4(&[], &V4::new(a, b), &L4::Tcp { sport: 22, dport: 443, flags: 2, options: 0, payload: 0 }), // excluded port
        udp(a, b, 1000, 2000),                                                                   // no listed port
        frame_v4(&[], &V4::new(a, b), &L4::Raw { proto: 47, bytes: vec![0; 8] }),                // GRE: protocol not listed
        frame_v6(&[], &V6::new("2001:db9::1", "2001:db9::2"), &L4::Udp { sport: 9, dport: 443, payload: 0 }),
    ];
    let mut want = vec![
        (v4key(a, b, 5353, 53, UDP, 0), 1, 28, 0),
        (v4key(out1, b, 1000, 53, UDP, 0), 1, 28, 0),
        (v4key(a, b, 0, 0, ICMP, 0), 1, 36, 0),
        (v6key("2001:db8::1", "2001:db8::2", 9, 443, UDP, 0), 1, 48, 0),
    ];
    want.sort();
    (kept, want, dropped)
}

/// With [`filter_set`] in the kernel: exactly its kept frames counted, the
/// others counted as filtered.
fn check_filter_set(k: &mut Kernel) {
    let (kept, want, dropped) = filter_frames();
    let before = k.tables.counters().unwrap();
    for fr in kept.iter().chain(dropped.iter()) {
        assert_eq!(k.xdp(fr), XDP_PASS);
    }
    assert_eq!(entries(&k.drain()), want);
    assert_eq!(k.tables.counters().unwrap().filtered - before.filtered, dropped.len() as u64);
}

/// A reload switches kinds of filter on and off in the loaded programs
/// (`Capture::replace_filters`): none → all five kinds → one kind → none,
/// each step counting exactly what its filters say.
#[test]
fn kernel_filter_kinds_switch_on_and_off_in_the_loaded_programs() {
    if !require_root() {
        return;
    }
    let mut k = Kernel::load_with(1024, 1, &KernelFilters::default());
    let (kept, _, dropped) = filter_frames();
    let all = kept.len() + dropped.len();
    let send_all = |k: &mut Kernel| {
        let before = k.tables.counters().unwrap().filtered;
        for fr in kept.iter().chain(dropped.iter()) {
            assert_eq!(k.xdp(fr), XDP_PASS);
        }
        let counted: u64 = k.drain().flows.iter().map(|(_, s)| s.packets).sum();
        (counted, k.tables.counters().unwrap().filtered - before)
    };
    assert_eq!(send_all(&mut k), (all as u64, 0));
    k.capture.replace_filters(&KernelFilters::default(), &filter_set()).unwrap();
    check_filter_set(&mut k);
    let ssh_only = KernelFilters { exclude_ports: vec![22], ..KernelFilters::default() };
    k.capture.replace_filters(&filter_set(), &ssh_only).unwrap();
    // Only the frame from port 22 is left out now.
    assert_eq!(send_all(&mut k), (all as u64 - 1, 1));
    k.capture.replace_filters(&ssh_only, &KernelFilters::default()).unwrap();
    assert_eq!(send_all(&mut k), (all as u64, 0));
}

#[test]
fn sampling_counts_one_in_n_and_scales() {
    if !require_root() {
        return;
    }
    let mut k = Kernel::load_with(64, 4, &KernelFilters::default());
    let f = frame_v4(&[], &V4::new(A4, B4), &L4::Udp { sport: 1, dport: 2, payload: 12 });
    let p: &mut Xdp = k.capture.xdp_program().unwrap();
    p.test_run(TestRunOptions { data_in: Some(&f), repeat: 4000, ..TestRunOptions::new() }).unwrap();
    let d = k.drain();
    let (packets, bytes) = (d.flows[0].1.packets, d.flows[0].1.bytes);
    // Each counted packet stands for 4; the rest are counted as sampled out.
    assert_eq!((packets % 4, bytes), (0, packets * 40));
    assert_eq!(packets / 4 + k.tables.counters().unwrap().sampled_out, 4000);
    // 1000 samples expected (4000 packets, standard deviation about 110):
    // the bounds are 9 deviations away.
    assert!((3_000..=5_000).contains(&packets), "{packets}");
}

#[test]
fn tc_ingress_program_counts_ingress() {
    if !require_root() {
        return;
    }
    let mut k = Kernel::load(64);
    let p: &mut SchedClassifier = k.capture.ebpf_mut().program_mut(flowlog_agent::capture::INGRESS_TC_PROGRAM).unwrap().try_into().unwrap();
    let f = frame_v4(&[], &V4::new(A4, B4), &L4::Tcp { sport: 7, dport: 8, flags: 0x02, options: 0, payload: 0 });
    let r = p.test_run(TestRunOptions { data_in: Some(&f), ..TestRunOptions::new() }).unwrap();
    assert_eq!(r.return_value, TC_ACT_UNSPEC);
    assert_eq!(entries(&k.drain()), [(v4key(A4, B4, 7, 8, TCP, direction::INGRESS), 1, 40, 0x02)]);
}

/// Every raw TCP flags byte, as one packet through XDP and TC: the entry
/// holds exactly FIN, SYN, RST and SYN-ACK of that byte. Then every subset
/// of {FIN, SYN, RST, SYN-ACK} packets after a plain ACK (so each flag is
/// set on an existing entry, not by its insert): all of them, nothing more.
#[test]
fn every_tcp_flag_combination_survives() {
    if !require_root() {
        return;
    }
    let mut k = Kernel::load(1024);
    let ip = V4::new(A4, B4);
    let seg = |sport: u16, flags: u8| frame_v4(&[], &ip, &L4::Tcp { sport, dport: 80, flags, options: 0, payload: 0 });
    for raw in 0..=255u8 {
        k.both(&seg(1000 + u16::from(raw), raw));
    }
    let d = k.drain();
    assert_eq!(d.flows.len(), 512);
    for (key, s) in &d.flows {
        let raw = (key.src_port - 1000) as u8;
        let want = TcpFlagsSeen { fin: raw & 1, syn: (raw >> 1) & 1, rst: (raw >> 2) & 1, syn_ack: u8::from(raw & 0x12 == 0x12) };
        assert_eq!((s.packets, s.tcp_flags, s._pad), (1, want, 0), "flags {raw:#04x}, {key:?}");
    }

    const PACKETS: [(u8, u8); 4] = [(0x11, 0x01), (0x02, 0x02), (0x14, 0x04), (0x12, 0x12)]; // (raw, AWS value)
    for subset in 0..16u16 {
        k.both(&seg(2000 + subset, 0x10));
        for (i, (raw, _)) in PACKETS.iter().enumerate() {
            if subset & (1 << i) != 0 {
                k.both(&seg(2000 + subset, *raw));
            }
        }
    }
    let d = k.drain();
    assert_eq!(d.flows.len(), 32);
    for (key, s) in &d.flows {
        let subset = key.src_port - 2000;
        let want = PACKETS.iter().enumerate().filter(|(i, _)| subset & (1 << i) != 0).fold(0, |a, (_, (_, aws))| a | aws);
        assert_eq!(aws_tcp_flags(&s.tcp_flags), want, "subset {subset:#06b}, {key:?}");
        assert_eq!(s.packets, 1 + u64::from(subset.count_ones()));
    }
}

/// CPUs this process may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: zeroed cpu_set_t is valid; sched_getaffinity fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        return vec![0];
    }
    (0..libc::CPU_SETSIZE as usize).filter(|c| unsafe { libc::CPU_ISSET(*c, &set) }).collect()
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: as above, for one CPU of the allowed set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set), 0, "pinning to CPU {cpu}");
    }
}

/// Threads pinned to every CPU run the XDP and the TC ingress program at the
/// same time (BPF_PROG_TEST_RUN with repeat) on one flow, each thread with
/// another TCP flag: the entry is created by racing inserts, and its totals
/// are exact (plain atomic add) with every flag present (byte stores).
#[test]
fn concurrent_updates_are_exact() {
    if !require_root() {
        return;
    }
    let mut k = Kernel::load(1024);
    let cpus = allowed_cpus();
    let threads = (2 * cpus.len()).max(4);
    const REPEAT: u32 = 20_000;
    // FIN+ACK, SYN, RST+ACK, SYN+ACK; the same length, so the same bytes.
    let flags = [0x11u8, 0x02, 0x14, 0x12];
    let frames: Vec<Vec<u8>> = (0..threads)
        .map(|i| frame_v4(&[], &V4::new(A4, B4), &L4::Tcp { sport: 4000, dport: 80, flags: flags[i % 4], options: 0, payload: 10 }))
        .collect();
    k.capture.xdp_program().unwrap();
    let ebpf = k.capture.ebpf_mut();
    let xdp: &Xdp = ebpf.program(INGRESS_PROGRAM).unwrap().try_into().unwrap();
    let tc: &SchedClassifier = ebpf.program(flowlog_agent::capture::INGRESS_TC_PROGRAM).unwrap().try_into().unwrap();
    let start = std::sync::Barrier::new(threads);
    std::thread::scope(|s| {
        for (i, frame) in frames.iter().enumerate() {
            let (cpu, start) = (cpus[i % cpus.len()], &start);
            s.spawn(move || {
                pin_to_cpu(cpu);
                start.wait();
                let opts = TestRunOptions { data_in: Some(frame), repeat: REPEAT, ..TestRunOptions::new() };
                // Both programs count ingress on lo: the same entry.
                let r = if i % 2 == 0 { xdp.test_run(opts).map(|r| r.return_value) } else { tc.test_run(opts).map(|r| r.return_value) };
                assert_eq!(r.expect("test_run"), if i % 2 == 0 { XDP_PASS } else { TC_ACT_UNSPEC });
            });
        }
    });
    let d = k.drain();
    let total = threads as u64 * u64::from(REPEAT);
    assert_eq!(entries(&d), [(v4key(A4, B4, 4000, 80, TCP, direction::INGRESS), total, 50 * total, 0x17)], "{threads} threads on CPUs {cpus:?}");
    assert_eq!(d.flows[0].1.tcp_flags, TcpFlagsSeen { fin: 1, syn: 1, rst: 1, syn_ack: 1 });
    assert!(d.fails.is_empty() && d.unattributed_failures == 0);
}

/// New flows inserted by every CPU at once, both tables: in each round all
/// threads (pinned over every CPU, half through XDP, half through TC
/// ingress) start together on the same 64 fresh flows, one packet each, plus
/// 16 flows of their own. Racing inserts of one flow may claim two slots of
/// the slot table; the drain adds them up: every flow is one entry with
/// exactly one packet per thread, none lost, none counted twice.
#[test]
fn concurrent_inserts_of_new_flows_are_exact() {
    if !require_root() {
        return;
    }
    let cpus = allowed_cpus();
    let threads = (2 * cpus.len()).max(4);
    const ROUNDS: u16 = 40;
    const SHARED: u16 = 64;
    const OWN: u16 = 16;
    for kind in table_kinds() {
        let mut k = Kernel::load_table(8192, kind);
        k.capture.xdp_program().unwrap();
        for round in 0..ROUNDS {
            let shared: Vec<Vec<u8>> = (0..SHARED)
                .map(|i| frame_v4(&[], &V4::new(A4, B4), &L4::Udp { sport: round * 1000 + i, dport: 9, payload: 10 }))
                .collect();
            let own: Vec<Vec<Vec<u8>>> = (0..threads)
                .map(|t| {
                    (0..OWN).map(|i| frame_v4(&[], &V4::new(A4, B4), &L4::Udp { sport: 50_000 + t as u16 * 100 + i, dport: 1000 + round, payload: 10 })).collect()
                })
                .collect();
            let ebpf = k.capture.ebpf_mut();
            let xdp: &Xdp = ebpf.program(INGRESS_PROGRAM).unwrap().try_into().unwrap();
            let tc: &SchedClassifier = ebpf.program(flowlog_agent::capture::INGRESS_TC_PROGRAM).unwrap().try_into().unwrap();
            let start = std::sync::Barrier::new(threads);
            std::thread::scope(|s| {
                for t in 0..threads {
                    let (cpu, start, shared, own) = (cpus[t % cpus.len()], &start, &shared, &own[t]);
                    s.spawn(move || {
                        pin_to_cpu(cpu);
                        start.wait();
                        for f in shared.iter().chain(own.iter()) {
                            let opts = TestRunOptions { data_in: Some(f), ..TestRunOptions::new() };
                            if t % 2 == 0 { xdp.test_run(opts).unwrap() } else { tc.test_run(opts).unwrap() };
                        }
                    });
                }
            });
            let d = k.drain();
            assert!(d.fails.is_empty() && d.unattributed_failures == 0, "{kind:?}");
            let mut got = entries(&d);
            got.retain(|e| e.1 != 0);
            assert_eq!(got.len(), (SHARED as usize) + threads * OWN as usize, "{kind:?} round {round}: one entry per flow");
            for (key, packets, bytes, _) in &got {
                let want = if key.dst_port == 9 { threads as u64 } else { 1 };
                assert_eq!((*packets, *bytes), (want, want * 38), "{kind:?} round {round} {key:?}");
            }
        }
    }
}

/// Windows closed while every CPU keeps counting, both tables: each packet
/// is in exactly one window (the flip, the RCU barrier, and the slot table's
/// zeroing after release lose none and count none twice).
#[test]
fn flips_under_load_lose_nothing() {
    if !require_root() {
        return;
    }
    let cpus = allowed_cpus();
    let threads = cpus.len().max(2);
    const RUNS: u32 = 200;
    const REPEAT: u32 = 500;
    for kind in table_kinds() {
        let mut k = Kernel::load_table(4096, kind);
        k.capture.xdp_program().unwrap();
        let frames: Vec<Vec<Vec<u8>>> = (0..threads)
            .map(|t| (0..8u16).map(|i| frame_v4(&[], &V4::new(A4, B4), &L4::Udp { sport: 7000 + i, dport: t as u16, payload: 0 })).collect())
            .collect();
        let done = std::sync::atomic::AtomicUsize::new(0);
        let mut windows: Vec<Drained> = Vec::new();
        {
            let Kernel { capture, tables } = &mut k;
            let ebpf = capture.ebpf_mut();
            let xdp: &Xdp = ebpf.program(INGRESS_PROGRAM).unwrap().try_into().unwrap();
            std::thread::scope(|s| {
                for t in 0..threads {
                    let (cpu, frames, done) = (cpus[t % cpus.len()], &frames[t], &done);
                    s.spawn(move || {
                        pin_to_cpu(cpu);
                        for r in 0..RUNS {
                            let f = &frames[r as usize % frames.len()];
                            let opts = TestRunOptions { data_in: Some(f), repeat: REPEAT, ..TestRunOptions::new() };
                            xdp.test_run(opts).unwrap();
                        }
                        done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    });
                }
                while done.load(std::sync::atomic::Ordering::SeqCst) < threads {
                    let d = tables.rotate().expect("drain");
                    tables.release(&d).expect("release");
                    windows.push(d);
                }
            });
        }
        windows.push(k.drain());
        windows.push(k.drain());
        let mut total = std::collections::BTreeMap::new();
        for d in &windows {
            assert!(d.fails.is_empty() && d.unattributed_failures == 0, "{kind:?}");
            for (key, s) in &d.flows {
                let e = total.entry(*key).or_insert((0u64, 0u64));
                e.0 += s.packets;
                e.1 += s.bytes;
            }
        }
        let busy = windows.iter().filter(|d| !d.flows.is_empty()).count();
        assert_eq!(total.len(), threads * 8, "{kind:?}");
        for (key, (p, b)) in &total {
            assert_eq!((*p, *b), (RUNS as u64 / 8 * REPEAT as u64, RUNS as u64 / 8 * REPEAT as u64 * 28), "{kind:?} {key:?} over {busy} windows");
        }
    }
}

/// The startup probe finds what this kernel has, and the programs loaded
/// with it (the other tests) read a clock consistent with CLOCK_MONOTONIC.
#[test]
fn kernel_features_and_clock() {
    if !require_root() {
        return;
    }
    let f = flowlog_agent::bpf::probe::detect().expect("probe");
    let v = aya::util::KernelVersion::current().unwrap();
    assert_eq!(f.coarse_clock, v >= aya::util::KernelVersion::new(5, 11, 0), "{v:?}");
    // x86-64: compare-and-exchange from 5.12 (the matrix's 5.10 lacks it).
    assert_eq!(f.slot_atomics, v >= aya::util::KernelVersion::new(5, 12, 0), "{v:?}");
    assert_eq!(f.tcx, v >= aya::util::KernelVersion::new(6, 6, 0));
    let mut k = Kernel::load(64);
    assert_eq!(k.capture.features(), f);
    let mono = || {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: valid clock id and out pointer.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    };
    let before = mono();
    k.both(&frame_v4(&[], &V4::new(A4, B4), &L4::Udp { sport: 1, dport: 2, payload: 0 }));
    let after = mono();
    let d = k.drain();
    let slots = k.tables.kind() == TableKind::Slots;
    assert_eq!(k.tables.kind(), if f.slot_atomics { TableKind::Slots } else { TableKind::Hash });
    for (_, s) in &d.flows {
        if slots {
            // Whole seconds (from a Unix second boundary), reported half a
            // second into the second.
            assert!(s.first_seen_ns + 1_500_000_000 >= before && s.last_seen_ns <= after + 1_000_000_000, "{before} {s:?} {after}");
        } else {
            // The coarse clock lags by up to a tick (at most 10 ms at HZ=100).
            assert!(s.first_seen_ns + 10_000_000 >= before && s.last_seen_ns <= after, "{before} {s:?} {after}");
        }
    }
}

/// A device without a link-layer header (tun here; wireguard, ipip, sit and
/// gre alike): its packets start with the IP header, and the agent attaches
/// the L3 programs, which count them exactly. Through a real tun device in
/// a namespace of this thread, not BPF_PROG_TEST_RUN: for TC programs
/// test_run always pushes an Ethernet header's length back in front of the
/// data (net/bpf/test_run.c), whatever the device, so it cannot present a
/// bare IP packet.
#[test]
fn l3_programs_count_bare_ip_packets_exactly() {
    if !require_root() {
        return;
    }
    std::thread::spawn(|| {
        use std::{io::Write, os::fd::AsRawFd};
        // SAFETY: a new network namespace for this thread (and the commands it runs) only.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare");
        let tun = flowlog_testkit::netns::open_tun("fltun0");
        for cmd in [&["ip", "addr", "add", "10.1.0.1/24", "dev", "fltun0"][..], &["ip", "link", "set", "fltun0", "up"]] {
            flowlog_testkit::netns::sh(cmd);
        }
        let ifindex = unsafe { libc::if_nametoindex(c"fltun0".as_ptr()) };
        assert_eq!(flowlog_agent::capture::links::device_type("fltun0"), Some(65534));
        let mut k = Kernel::load(64);
        let link = flowlog_agent::capture::links::LinkInfo { name: "fltun0".into(), ifindex, up: true, loopback: false };
        k.capture.set_ingress_hook(flowlog_agent::capture::IngressHook::Xdp);
        // Never XDP without an Ethernet header, even when asked.
        assert_eq!(k.capture.attach(&link).unwrap(), "tc");
        let a: [u8; 4] = [10, 1, 0, 2];
        let b: [u8; 4] = [10, 1, 0, 1];
        // Ingress: bare IP packets written to the tun.
        let v4 = V4::new(a, b).packet(TCP, &L4::Tcp { sport: 7, dport: 8, flags: 0x02, options: 0, payload: 100 }.bytes(false));
        let v6 = V6::new(A6, B6).packet(UDP, &L4::Udp { sport: 53, dport: 5353, payload: 33 }.bytes(true));
        let mut f = std::fs::File::from(tun);
        for p in [&v4, &v6] {
            assert_eq!(f.write(p).unwrap(), p.len());
        }
        // Egress: UDP datagrams routed out of the tun.
        let sock = std::net::UdpSocket::bind("10.1.0.1:4000").unwrap();
        for _ in 0..3 {
            sock.send_to(&[7u8; 200], "10.1.0.2:4001").unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        let _ = f.as_raw_fd();
        k.capture.detach_all();
        let d = k.drain();
        let on = |key: FlowKey| FlowKey { ifindex, ..key };
        let mut want = vec![
            (on(v4key(a, b, 7, 8, TCP, direction::INGRESS)), 1, 140, 0x02),
            (on(v6key(A6, B6, 53, 5353, UDP, direction::INGRESS)), 1, 40 + 8 + 33, 0),
            (on(v4key(b, a, 4000, 4001, UDP, direction::EGRESS)), 3, 3 * (20 + 8 + 200), 0),
        ];
        want.sort();
        // Only these flows (the stack may send ICMPv6 of its own on the tun).
        let got: Vec<_> = entries(&d).into_iter().filter(|(key, ..)| key.protocol != 58).collect();
        assert_eq!(got, want);
    })
    .join()
    .unwrap();
}
