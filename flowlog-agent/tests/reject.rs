//! REJECT end to end: two network namespaces joined by a veth pair, the
//! agent on one end (`a`), nftables rules in `a` that drop chosen ports, and
//! real traffic. Every dropped packet must be in a REJECT record and in no
//! ACCEPT record; packets and bytes exact. Needs root and `nft`.


use std::{
    collections::BTreeMap,
    fs,
    net::{IpAddr, SocketAddr, UdpSocket},
    process::Command,
    thread,
    time::Duration,
};

use flowlog_testkit::{
    agent::{Agent, Rec},
    netns::{in_netns, Topo},
    require_root,
};

/// Namespaces a and b (10.203.<n>.1/.2, fd00:cb:<n>::1/::2), `nft`: rules
/// for namespace `a`'s `inet flowlog` table.
fn topo(nft: &str) -> Topo {
    let t = Topo::new(203, true);
    let rules = format!("table inet flowlog {{\n{nft}\n}}\n");
    let file = std::env::temp_dir().join(format!("{}.nft", t.a));
    fs::write(&file, rules).unwrap();
    t.a.exec(&["nft", "-f", file.to_str().unwrap()]);
    let _ = fs::remove_file(file);
    t
}

const FORMAT: &str = "${interface-id} ${srcaddr} ${dstaddr} ${srcport} ${dstport} ${protocol} ${packets} ${bytes} ${action} ${log-status} ${flow-direction} ${reject-reason}";

fn start(t: &Topo, extra: &[&str]) -> Agent {
    let args = [&["--interval", "3600", "--metrics-listen", "off", "--log-format", FORMAT], extra].concat();
    Agent::start(env!("CARGO_BIN_EXE_flowlog-agent"), &t.a, &[&t.a_if], &args)
}

fn stop(agent: Agent) -> (Vec<Rec>, String) {
    // Let the last dropped packets reach the drop hook.
    thread::sleep(Duration::from_millis(300));
    agent.stop()
}

type Key = ((IpAddr, IpAddr, u16, u16, u8), String, String);

/// (tuple, direction, action) → (packets, bytes, records, reject-reasons).
fn totals(recs: &[Rec]) -> BTreeMap<Key, (u64, u64, usize, String)> {
    let mut m = BTreeMap::new();
    for r in recs.iter().filter(|r| r.status == "OK") {
        let e = m.entry((r.tuple().unwrap(), r.direction.clone(), r.action.clone())).or_insert((0, 0, 0, String::new()));
        e.0 += r.packets;
        e.1 += r.bytes;
        e.2 += 1;
        e.3 = r.reject_reason.clone();
    }
    m
}

/// A socket in `b` sending to `a`, and a receiver in `a` on `port`.
fn pair(t: &Topo, v6: bool, port: u16) -> (UdpSocket, UdpSocket) {
    let (a, b): (IpAddr, IpAddr) = if v6 { (t.a6.into(), t.b6.into()) } else { (t.a4.into(), t.b4.into()) };
    let rx = in_netns(&t.a, move || UdpSocket::bind(SocketAddr::new(a, port)).unwrap());
    let tx = in_netns(&t.b, move || UdpSocket::bind(SocketAddr::new(b, 0)).unwrap());
    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    (tx, rx)
}

/// Sends datagrams of the given payload sizes; those for which `delivered`
/// says so must arrive, the others must not.
fn send(tx: &UdpSocket, rx: &UdpSocket, sizes: &[usize], delivered: impl Fn(usize) -> bool) {
    let to = rx.local_addr().unwrap();
    let mut buf = vec![0u8; 65536];
    for &size in sizes {
        tx.send_to(&vec![7u8; size], to).unwrap();
        if delivered(size) {
            assert_eq!(rx.recv(&mut buf).expect("datagram lost"), size);
        }
    }
    rx.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    assert!(rx.recv(&mut buf).is_err(), "a datagram the firewall should drop arrived");
}

fn tuple(tx: &UdpSocket, rx: &UdpSocket) -> (IpAddr, IpAddr, u16, u16, u8) {
    let (s, d) = (tx.local_addr().unwrap(), rx.local_addr().unwrap());
    (s.ip(), d.ip(), s.port(), d.port(), 17)
}

const RULES: &str = "
chain input {
    type filter hook input priority 0;
    udp dport { 7601, 7611 } drop
    udp dport { 7603, 7613 } udp length > 300 drop
}
chain output {
    type filter hook output priority 0;
    udp dport { 7605, 7615 } drop
}";

/// REJECT needs drop reasons in `kfree_skb` (Linux 5.17) and kernel BTF;
/// on kernels without them the agent runs ACCEPT-only (tested in e2e), and
/// these tests say they were skipped.
fn drop_reasons_or_skip(test: &str) -> bool {
    let have = flowlog_agent::capture::btf::Btf::from_sys_fs()
        .is_ok_and(|b| b.enum_values("skb_drop_reason").is_ok() && flowlog_agent::capture::reject::check_tracepoint(&b).is_ok());
    if !have {
        println!("SKIP: {test}: this kernel's kfree_skb has no drop reasons (Linux 5.17 and later have them)");
    }
    have
}

#[test]
fn dropped_ports_are_reject_allowed_ports_accept_mixed_flows_split_exactly() {
    if !require_root() || !drop_reasons_or_skip("dropped_ports_are_reject_allowed_ports_accept_mixed_flows_split_exactly") {
        return;
    }
    let t = topo(RULES);
    let agent = start(&t, &[]);
    let mut want: BTreeMap<Key, (u64, u64)> = BTreeMap::new();
    let mut absent: Vec<Key> = Vec::new();
    for v6 in [false, true] {
        let off = if v6 { 10 } else { 0 };
        let ip_hdr = if v6 { 48 } else { 28 }; // IP + UDP headers
        let ing = "ingress".to_string();

        // N = 7 datagrams to a dropped port: REJECT 7, no ACCEPT.
        let (tx, rx) = pair(&t, v6, 7601 + off);
        send(&tx, &rx, &[100; 7], |_| false);
        want.insert((tuple(&tx, &rx), ing.clone(), "REJECT".into()), (7, 7 * (ip_hdr + 100)));
        absent.push((tuple(&tx, &rx), ing.clone(), "ACCEPT".into()));

        // Allowed port: ACCEPT only.
        let (tx, rx) = pair(&t, v6, 7602 + off);
        send(&tx, &rx, &[50; 5], |_| true);
        want.insert((tuple(&tx, &rx), ing.clone(), "ACCEPT".into()), (5, 5 * (ip_hdr + 50)));
        absent.push((tuple(&tx, &rx), ing.clone(), "REJECT".into()));

        // One 5-tuple, small datagrams allowed and large ones dropped.
        let (tx, rx) = pair(&t, v6, 7603 + off);
        let sizes = [40, 400, 60, 500, 80, 100, 600];
        send(&tx, &rx, &sizes, |s| s + 8 <= 300);
        want.insert((tuple(&tx, &rx), ing.clone(), "ACCEPT".into()), (4, 4 * ip_hdr + 40 + 60 + 80 + 100));
        want.insert((tuple(&tx, &rx), ing.clone(), "REJECT".into()), (3, 3 * ip_hdr + 400 + 500 + 600));

        // Egress: the output chain drops before TC egress ever sees the packet.
        let (a, b): (IpAddr, IpAddr) = if v6 { (t.a6.into(), t.b6.into()) } else { (t.a4.into(), t.b4.into()) };
        let out = in_netns(&t.a, move || UdpSocket::bind(SocketAddr::new(a, 0)).unwrap());
        let to = SocketAddr::new(b, 7605 + off);
        for _ in 0..4 {
            let e = out.send_to(&[1u8; 30], to).expect_err("the output chain drops it");
            assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
        }
        let tu = (a, b, out.local_addr().unwrap().port(), 7605 + off, 17);
        want.insert((tu, "egress".into(), "REJECT".into()), (4, 4 * (ip_hdr + 30)));
        absent.push((tu, "egress".into(), "ACCEPT".into()));
    }
    let (recs, log) = stop(agent);
    let m = totals(&recs);
    for (k, (packets, bytes)) in &want {
        let got = m.get(k).unwrap_or_else(|| panic!("no record for {k:?}: {m:#?}\n{log}"));
        assert_eq!((got.0, got.1, got.2), (*packets, *bytes, 1), "{k:?}: {m:#?}");
        assert_eq!(got.3, "-", "{k:?}");
    }
    for k in &absent {
        assert!(!m.contains_key(k), "unexpected {k:?}: {m:#?}");
    }
    assert!(!log.contains("earlier window"), "{log}");
}

#[test]
fn traffic_type_reasons_and_reject_reason_map() {
    if !require_root() || !drop_reasons_or_skip("traffic_type_reasons_and_reject_reason_map") {
        return;
    }
    let t = topo(RULES);
    let run = |extra: &[&str], closed_port_rejects: bool| -> BTreeMap<Key, (u64, u64, usize, String)> {
        let agent = start(&t, extra);
        let (tx, rx) = pair(&t, false, 7601);
        send(&tx, &rx, &[10; 3], |_| false);
        let (tx2, rx2) = pair(&t, true, 7602);
        send(&tx2, &rx2, &[10; 2], |_| true);
        // Nothing listens on 7609: the UDP layer drops it (NO_SOCKET).
        let closed = SocketAddr::new(t.a4.into(), 7609);
        tx.send_to(&[1u8; 20], closed).unwrap();
        let (recs, log) = stop(agent);
        let m = totals(&recs);
        let closed_key = ((IpAddr::from(t.b4), closed.ip(), tx.local_addr().unwrap().port(), 7609, 17), "ingress".to_string(), "REJECT".to_string());
        assert_eq!(m.get(&closed_key).map(|v| (v.0, v.1)), closed_port_rejects.then_some((1, 48)), "{m:#?}\n{log}");
        m
    };
    let actions = |m: &BTreeMap<Key, (u64, u64, usize, String)>| {
        let mut a: Vec<(u16, String, String)> = m.iter().filter(|(k, _)| k.0 .3 >= 7600).map(|(k, v)| (k.0 .3, k.2.clone(), v.3.clone())).collect();
        a.sort();
        a
    };
    let s = |v: &[(u16, &str, &str)]| -> Vec<(u16, String, String)> { v.iter().map(|x| (x.0, x.1.to_string(), x.2.to_string())).collect() };

    let m = run(&["--traffic-type", "REJECT", "--reject-reason-map", "NETFILTER_DROP=FW"], false);
    assert_eq!(actions(&m), s(&[(7601, "REJECT", "FW")]));
    let m = run(&["--traffic-type", "ACCEPT"], false);
    assert_eq!(actions(&m), s(&[(7602, "ACCEPT", "-"), (7609, "ACCEPT", "-")]));
    let m = run(&["--reject-reasons", "NETFILTER_DROP,NO_SOCKET", "--reject-reason-map", "NO_SOCKET=CLOSED"], true);
    assert_eq!(actions(&m), s(&[(7601, "REJECT", "-"), (7602, "ACCEPT", "-"), (7609, "REJECT", "CLOSED")]));
    // No drop hook: the firewall's drops stay ACCEPT (what XDP saw).
    let m = run(&["--reject-reasons", "none"], false);
    assert_eq!(actions(&m), s(&[(7601, "ACCEPT", "-"), (7602, "ACCEPT", "-"), (7609, "ACCEPT", "-")]));
}

#[test]
fn unknown_drop_reason_fails_with_the_list() {
    if !require_root() || !drop_reasons_or_skip("unknown_drop_reason_fails_with_the_list") {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_flowlog-agent")).args(["--iface", "lo", "--no-pin", "--metrics-listen", "off", "--reject-reasons", "NOPE"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("unknown drop reason NOPE") && err.contains("NETFILTER_DROP") && err.contains("NO_SOCKET"), "{err}");
}
