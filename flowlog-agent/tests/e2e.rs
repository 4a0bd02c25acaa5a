//! End to end: two network namespaces joined by a veth pair, the agent
//! attached to one end (`a`), real traffic from sockets in both namespaces,
//! and the records the agent wrote compared with what was sent. Needs root.


use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::PathBuf,
    process::{Command, Stdio},
    sync::Arc,
    thread,
    time::Duration,
};

use aya::programs::{SchedClassifier, TcAttachType};
use flowlog_records::format::Format;
use flowlog_testkit::{
    agent::{http_get, Agent, AgentCmd, Rec, Tuple, FORMAT},
    netns::{in_netns, next_id, sh, spawn_in_netns, Capture, Topo},
    require_root,
};

/// The agent in namespace `a`, its records checked as they are read back.
fn agent(t: &Topo) -> AgentCmd {
    AgentCmd::new(env!("CARGO_BIN_EXE_flowlog-agent"), &t.a).check(accepted)
}

fn start(t: &Topo, ifaces: &[&str], extra: &[&str]) -> Agent {
    agent(t).ifaces(ifaces).args(extra).start()
}

/// Nothing here drops packets: every flow record is ACCEPT.
fn accepted(r: &Rec) {
    if r.status == "OK" {
        assert_eq!(r.action, "ACCEPT", "{r:?}");
    }
}

/// Namespaces a and b, 10.201.<n>.1/.2 (and fd00:c9:<n>::1/::2).
fn topo(ipv6: bool) -> Topo {
    Topo::new(201, ipv6)
}

/// Sums of the OK records per (5-tuple, direction): packets, bytes, OR of tcp-flags, records.
fn totals(recs: &[Rec]) -> BTreeMap<(Tuple, String), (u64, u64, u8, usize)> {
    let mut m = BTreeMap::new();
    for r in recs.iter().filter(|r| r.status == "OK") {
        let e = m.entry((r.tuple().unwrap(), r.direction.clone())).or_insert((0, 0, 0, 0));
        e.0 += r.packets;
        e.1 += r.bytes;
        e.2 |= r.tcp_flags.unwrap();
        e.3 += 1;
        assert!(r.start <= r.end, "{r:?}");
    }
    m
}

fn get(m: &BTreeMap<(Tuple, String), (u64, u64, u8, usize)>, t: Tuple, dir: &str) -> (u64, u64, u8) {
    let v = m.get(&(t, dir.to_string())).unwrap_or_else(|| panic!("no {dir} record for {t:?}; have {m:#?}"));
    (v.0, v.1, v.2)
}

fn udp_pair(t: &Topo, from_b: bool, v6: bool, port: u16) -> (UdpSocket, UdpSocket) {
    let (a, b): (IpAddr, IpAddr) = if v6 { (t.a6.into(), t.b6.into()) } else { (t.a4.into(), t.b4.into()) };
    let rx_addr = SocketAddr::new(if from_b { a } else { b }, port);
    let tx_addr = SocketAddr::new(if from_b { b } else { a }, 0);
    let (rx_ns, tx_ns) = if from_b { (t.a.to_string(), t.b.to_string()) } else { (t.b.to_string(), t.a.to_string()) };
    let rx = in_netns(&rx_ns, move || UdpSocket::bind(rx_addr).unwrap());
    let tx = in_netns(&tx_ns, move || UdpSocket::bind(tx_addr).unwrap());
    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    (tx, rx)
}

/// Packets and bytes of the OK records from port `sport` to `dport` in direction `dir`.
fn sum(recs: &[Rec], sport: u16, dport: u16, dir: &str) -> (u64, u64) {
    recs.iter()
        .filter(|r| r.status == "OK" && r.direction == dir && r.sport == Some(sport) && r.dport == Some(dport))
        .fold((0, 0), |(p, b), r| (p + r.packets, b + r.bytes))
}

/// A datagram of `size` bytes every 10 ms for `time`, each awaited, on a
/// thread of its own; the thread returns how many were sent.
fn send_steadily(tx: &UdpSocket, rx: &UdpSocket, size: usize, time: Duration) -> thread::JoinHandle<u64> {
    let (tx, rx) = (tx.try_clone().unwrap(), rx.try_clone().unwrap());
    thread::spawn(move || {
        let mut sent = 0u64;
        let until = std::time::Instant::now() + time;
        while std::time::Instant::now() < until {
            send_udp(&tx, &rx, 1, size);
            sent += 1;
            thread::sleep(Duration::from_millis(10));
        }
        sent
    })
}

/// Sends `n` datagrams of `size` bytes and waits until all arrived.
fn send_udp(tx: &UdpSocket, rx: &UdpSocket, n: usize, size: usize) {
    let to = rx.local_addr().unwrap();
    let mut buf = vec![0u8; 65536];
    for i in 0..n {
        tx.send_to(&vec![i as u8; size], to).unwrap();
        assert_eq!(rx.recv(&mut buf).expect("datagram lost"), size);
    }
}

/// ICMP echo: `n` requests with `data` bytes from namespace `ns`, replies awaited.
fn ping(ns: &str, dst: Ipv4Addr, n: u16, data: usize) {
    in_netns(ns, move || {
        // SAFETY: plain socket(2).
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
        assert!(fd >= 0);
        // SAFETY: fd is ours.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let tv = libc::timeval { tv_sec: 5, tv_usec: 0 };
        // SAFETY: valid option pointer and length.
        unsafe {
            libc::setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv as *const _ as *const _, std::mem::size_of_val(&tv) as u32)
        };
        let to = libc::sockaddr_in { sin_family: libc::AF_INET as u16, sin_port: 0, sin_addr: libc::in_addr { s_addr: u32::from(dst).to_be() }, sin_zero: [0; 8] };
        for seq in 0..n {
            let mut p = vec![8u8, 0, 0, 0, 0x12, 0x34];
            p.extend_from_slice(&seq.to_be_bytes());
            p.extend(std::iter::repeat_n(0x5a, data));
            let sum = checksum(&p);
            p[2..4].copy_from_slice(&sum.to_be_bytes());
            // SAFETY: valid buffer and address.
            let r = unsafe { libc::sendto(fd.as_raw_fd(), p.as_ptr() as *const _, p.len(), 0, &to as *const _ as *const _, std::mem::size_of_val(&to) as u32) };
            assert_eq!(r as usize, p.len());
            loop {
                let mut buf = [0u8; 2048];
                // SAFETY: valid buffer.
                let r = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr() as *mut _, buf.len(), 0) };
                assert!(r > 0, "no echo reply");
                let ihl = ((buf[0] & 0xf) * 4) as usize;
                if buf[ihl] == 0 && buf[ihl + 6..ihl + 8] == seq.to_be_bytes() {
                    break;
                }
            }
        }
    });
}

fn checksum(b: &[u8]) -> u16 {
    let mut s: u32 = b.chunks(2).map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32).sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// Default ingress hook: TC on these veths.
#[test]
fn udp_tcp_icmp_both_directions_are_exact() {
    both_directions_exact("auto", "tc");
}

/// XDP ingress on a live interface.
#[test]
fn udp_tcp_icmp_both_directions_are_exact_with_xdp_ingress() {
    both_directions_exact("xdp", "xdp");
}

fn both_directions_exact(hook: &str, expect_hook: &str) {
    if !require_root() {
        return;
    }
    let t = topo(true);
    let cap = Capture::open(&t.a, &t.a_if);
    let agent = start(&t, &[&t.a_if], &["--interval", "3600", "--log-format", FORMAT, "--ingress-hook", hook]);

    // UDP both ways, IPv4 and IPv6.
    let (tx_in, rx_in) = udp_pair(&t, true, false, 5000);
    send_udp(&tx_in, &rx_in, 10, 100);
    let (tx_out, rx_out) = udp_pair(&t, false, false, 6000);
    send_udp(&tx_out, &rx_out, 7, 200);
    let (tx6, rx6) = udp_pair(&t, true, true, 5006);
    send_udp(&tx6, &rx6, 5, 50);

    // ICMP echo both ways: 4 pings of 56 bytes from b, 3 of 100 from a.
    ping(&t.b, t.a4, 4, 56);
    ping(&t.a, t.b4, 3, 100);

    // TCP: b connects to a, sends 200 kB; a answers 10 kB; both close.
    let a_addr = SocketAddr::new(t.a4.into(), 5001);
    let listener = in_netns(&t.a, move || TcpListener::bind(a_addr).unwrap());
    let client = spawn_in_netns(&t.b, move || {
        let mut s = TcpStream::connect(a_addr).unwrap();
        s.write_all(&vec![7u8; 200_000]).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back).unwrap();
        assert_eq!(back.len(), 10_000);
    });
    let (mut srv, _) = listener.accept().unwrap();
    let mut got = Vec::new();
    srv.read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), 200_000);
    srv.write_all(&vec![9u8; 10_000]).unwrap();
    drop(srv);
    client.join().unwrap();
    thread::sleep(Duration::from_millis(300));

    let (recs, log) = agent.stop();
    assert!(log.contains(&format!("ingress=\"{expect_hook}\"")), "{log}");
    let m = totals(&recs);
    let (a4, b4, a6, b6): (IpAddr, IpAddr, IpAddr, IpAddr) = (t.a4.into(), t.b4.into(), t.a6.into(), t.b6.into());
    let port = |s: &UdpSocket| s.local_addr().unwrap().port();

    assert_eq!(get(&m, (b4, a4, port(&tx_in), 5000, 17), "ingress"), (10, 10 * 128, 0));
    assert_eq!(get(&m, (a4, b4, port(&tx_out), 6000, 17), "egress"), (7, 7 * 228, 0));
    assert_eq!(get(&m, (b6, a6, port(&tx6), 5006, 17), "ingress"), (5, 5 * 98, 0));
    // b's requests and a's replies to them; a's requests and b's replies.
    assert_eq!(get(&m, (b4, a4, 0, 0, 1), "ingress"), (4 + 3, 4 * 84 + 3 * 128, 0));
    assert_eq!(get(&m, (a4, b4, 0, 0, 1), "egress"), (4 + 3, 4 * 84 + 3 * 128, 0));

    // TCP against the packet capture of the same interface.
    let c = cap.tcp_totals();
    let tcp: Vec<_> = c.keys().filter(|(tu, _)| tu.3 == 5001 || tu.2 == 5001).cloned().collect();
    assert_eq!(tcp.len(), 2, "capture: {c:#?}");
    for key in tcp {
        let want = c[&key];
        assert_eq!(get(&m, key.0, &key.1), want, "{key:?}; log: {log}");
        // b opened and closed (SYN, FIN); a answered SYN-ACK and closed.
        // The flags themselves are checked against the capture above; here
        // the conversation's shape, where a RST may join: under emulation a
        // retransmitted FIN can reach a's socket after it closed (seen once
        // in the arm64 6.1 VM, agent and capture agreeing).
        const RST: u8 = 4;
        assert_eq!(want.2 & !RST, if key.1 == "ingress" { 3 } else { 19 });
        let payload = if key.1 == "ingress" { 200_000 } else { 10_000 };
        assert!(want.1 > payload, "{key:?} {want:?}");
    }
    // One window, one interface: no NODATA, no SKIPDATA.
    assert!(recs.iter().all(|r| r.status == "OK"), "{recs:#?}");
}

/// Every CPU sends the same new flows at the same moment through the veth
/// (each sender pinned to its CPU; a veth delivers on the sending CPU, so
/// the ingress program runs there): the flow table sees concurrent first
/// packets of one flow from several CPUs, round after round. With the slot
/// table two CPUs may claim two slots for one flow; the drain merges them.
/// Every flow must come out once with exactly what all CPUs sent.
#[test]
fn concurrent_senders_on_every_cpu_insert_the_same_new_flows_exactly() {
    if !require_root() {
        return;
    }
    const ROUNDS: u16 = 30;
    const FLOWS: u16 = 48;
    const PER_FLOW: u64 = 3;
    const PAYLOAD: usize = 30;
    let cpus = thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    if cpus < 2 {
        eprintln!("SKIP: concurrent_senders_on_every_cpu_insert_the_same_new_flows_exactly: one CPU, no contention possible");
    }
    let t = topo(false);
    // Neighbour entries first: packets waiting for ARP are queued, and
    // dropped past a small queue, before any hook sees them.
    ping(&t.b, t.a4, 1, 56);
    let agent = start(&t, &[&t.a_if], &["--interval", "3600", "--log-format", FORMAT]);
    let b4 = t.b4;
    let tx = Arc::new(in_netns(&t.b, move || UdpSocket::bind(SocketAddr::new(b4.into(), 0)).unwrap()));
    let sport = tx.local_addr().unwrap().port();
    let start = Arc::new(std::sync::Barrier::new(cpus));
    let senders: Vec<_> = (0..cpus)
        .map(|cpu| {
            let (tx, start, a4) = (tx.clone(), start.clone(), t.a4);
            thread::spawn(move || {
                // SAFETY: a cpu_set_t built with the libc macros, for this thread.
                unsafe {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    libc::CPU_SET(cpu, &mut set);
                    assert_eq!(libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set), 0, "pinning to CPU {cpu}");
                }
                for round in 0..ROUNDS {
                    // All CPUs start a round's new flows together.
                    start.wait();
                    for _ in 0..PER_FLOW {
                        for f in 0..FLOWS {
                            tx.send_to(&[cpu as u8; PAYLOAD], (a4, 20000 + round * FLOWS + f)).unwrap();
                        }
                    }
                }
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    thread::sleep(Duration::from_millis(300));
    let (recs, log) = agent.stop();
    let m = totals(&recs);
    let (a4, b4): (IpAddr, IpAddr) = (t.a4.into(), t.b4.into());
    let want = (cpus as u64 * PER_FLOW, cpus as u64 * PER_FLOW * (PAYLOAD as u64 + 28), 0);
    let mut wrong = Vec::new();
    for port in 20000..20000 + ROUNDS * FLOWS {
        let key = ((b4, a4, sport, port, 17), "ingress".to_string());
        match m.get(&key) {
            Some(&(p, b, f, n)) if (p, b, f) == want && n == 1 => {}
            got => wrong.push(format!("port {port}: {got:?}")),
        }
    }
    assert!(wrong.is_empty(), "{} of {} flows not exactly {want:?} in one record: {:?}\n{log}", wrong.len(), ROUNDS * FLOWS, &wrong[..wrong.len().min(10)]);
    let ours = m.keys().filter(|(k, d)| d == "ingress" && k.0 == b4 && k.2 == sport).count();
    assert_eq!(ours, (ROUNDS * FLOWS) as usize, "flows beyond those sent");
    assert!(recs.iter().all(|r| r.status == "OK"), "no SKIPDATA expected: {log}");
}

#[test]
fn traffic_across_windows_is_split_without_loss() {
    if !require_root() {
        return;
    }
    let t = topo(false);
    let agent = start(&t, &[&t.a_if], &["--interval", "1", "--log-format", FORMAT]);
    let (tx, rx) = udp_pair(&t, true, false, 7100);
    // 3.5 s of traffic in 1 s windows: at least three windows carry data.
    let mut sent = 0u64;
    let until = std::time::Instant::now() + Duration::from_millis(3500);
    while std::time::Instant::now() < until {
        send_udp(&tx, &rx, 1, 72);
        sent += 1;
        thread::sleep(Duration::from_millis(20));
    }
    let (recs, log) = agent.stop();
    let tuple = (IpAddr::from(t.b4), IpAddr::from(t.a4), tx.local_addr().unwrap().port(), 7100, 17);
    let mine: Vec<&Rec> = recs.iter().filter(|r| r.status == "OK" && (r.src, r.dst, r.sport, r.dport) == (Some(tuple.0), Some(tuple.1), Some(tuple.2), Some(tuple.3))).collect();
    let packets: u64 = mine.iter().map(|r| r.packets).sum();
    let bytes: u64 = mine.iter().map(|r| r.bytes).sum();
    assert_eq!((packets, bytes), (sent, sent * 100), "{mine:#?}\n{log}");
    assert!(mine.len() >= 3, "only {} windows: {mine:#?}", mine.len());
    // One record per window: windows follow each other without overlap.
    for w in mine.windows(2) {
        assert!(w[0].start < w[1].start && w[0].end <= w[1].start + 1, "{w:#?}");
    }
}

#[test]
fn full_flow_table_writes_skipdata_and_keeps_stored_flows_exact() {
    if !require_root() {
        return;
    }
    let t = topo(false);
    let agent = start(&t, &[&t.a_if], &["--interval", "3600", "--max-flows", "16", "--log-format", FORMAT]);
    let a = SocketAddr::new(t.a4.into(), 7200);
    let rx = in_netns(&t.a, move || UdpSocket::bind(a).unwrap());
    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // 40 flows: one datagram of 20 bytes from each of 40 source ports.
    let b4 = t.b4;
    let senders: Vec<UdpSocket> = in_netns(&t.b, move || (0..40).map(|_| UdpSocket::bind((b4, 0)).unwrap()).collect());
    let mut buf = [0u8; 64];
    for s in &senders {
        s.send_to(&[1u8; 20], a).unwrap();
        assert_eq!(rx.recv(&mut buf).unwrap(), 20);
    }
    let (recs, log) = agent.stop();
    let ok: Vec<&Rec> = recs.iter().filter(|r| r.status == "OK").collect();
    let skip: Vec<&Rec> = recs.iter().filter(|r| r.status == "SKIPDATA").collect();
    // The hash table holds --max-flows; the slot table (5.12+) its 32 slots
    // (twice --max-flows), all within the probe bound.
    let slots = flowlog_agent::bpf::probe::detect().unwrap().slot_atomics;
    let stored = if slots { 32 } else { 16 };
    assert_eq!(ok.len(), stored, "{recs:#?}");
    for r in &ok {
        assert_eq!((r.dst, r.dport, r.packets, r.bytes), (Some(IpAddr::from(t.a4)), Some(7200), 1, 48), "{r:?}");
    }
    assert_eq!(skip.len(), 1, "{recs:#?}");
    // The counter: packets of the flows that were not stored.
    assert!(log.contains("flow table full") && log.contains(&format!("packets={} ", 40 - stored)), "{log}");
}

#[test]
fn an_interface_that_disappears_is_reported_and_the_others_go_on() {
    if !require_root() {
        return;
    }
    let t = topo(false);
    // A second veth pair between the same namespaces, removed while attached.
    let (c_if, d_if) = (format!("{}c", t.a_if), format!("{}d", t.b_if));
    sh(&["ip", "link", "add", &c_if, "netns", &t.a, "type", "veth", "peer", "name", &d_if, "netns", &t.b]);
    sh(&["ip", "-n", &t.a, "link", "set", &c_if, "up"]);
    sh(&["ip", "-n", &t.b, "link", "set", &d_if, "up"]);
    let agent = start(&t, &[&t.a_if, &c_if], &["--interval", "1", "--log-format", FORMAT]);
    sh(&["ip", "-n", &t.a, "link", "del", &c_if]);
    thread::sleep(Duration::from_millis(2500));
    let (tx, rx) = udp_pair(&t, true, false, 7300);
    send_udp(&tx, &rx, 3, 10);
    let (recs, log) = agent.stop();
    assert!(log.contains("interface disappeared") && log.contains(&c_if), "{log}");
    let after = recs.iter().filter(|r| r.dport == Some(7300)).map(|r| (r.packets, r.bytes)).collect::<Vec<_>>();
    assert_eq!(after, [(3, 3 * 38)], "{recs:#?}");
}

#[test]
fn bad_interface_and_missing_privileges_fail_with_the_fix() {
    if !require_root() {
        return;
    }
    let bin = env!("CARGO_BIN_EXE_flowlog-agent");
    let out = Command::new(bin).args(["--iface", "no-such-if0"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no such interface: no-such-if0.") && err.contains("`ip link` lists them"), "{err}");

    // As nobody, without capabilities.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", bin, "--iface", "lo"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("missing capabilities CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON") && err.contains("setcap"), "{err}");

    let out = Command::new(bin).args(["--log-format", "${srcaddr} ${nope}"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.starts_with("error: invalid log-format = \"${srcaddr} ${nope}\": unknown field \"${nope}\" in log format. Valid fields: version account-id"),
        "{err}"
    );
}

#[test]
fn kill_9_and_restart_loses_nothing() {
    if !require_root() {
        return;
    }
    let t = topo(false);
    let pin = format!("{}/{}", flowlog_testkit::test_bpffs().display(), t.a);
    let args = ["--interval", "1", "--log-format", FORMAT, "--pin-dir", &pin];
    let first = start(&t, &[&t.a_if], &args);
    let (tx, rx) = udp_pair(&t, true, false, 7400);
    let sender = send_steadily(&tx, &rx, 80, Duration::from_millis(4500));
    thread::sleep(Duration::from_millis(1200));
    // Kill well inside a window, not while the agent ships one.
    mid_window();
    let (mut recs, _) = first.kill9();
    // Down for a while; the pinned programs go on counting.
    thread::sleep(Duration::from_millis(1500));
    let second = start(&t, &[&t.a_if], &args);
    let sent = sender.join().unwrap();
    thread::sleep(Duration::from_millis(200));
    let (more, log) = second.stop();
    recs.extend(more);
    let port = tx.local_addr().unwrap().port();
    let mine: Vec<&Rec> = recs.iter().filter(|r| r.status == "OK" && r.sport == Some(port) && r.dport == Some(7400)).collect();
    let packets: u64 = mine.iter().map(|r| r.packets).sum();
    let bytes: u64 = mine.iter().map(|r| r.bytes).sum();
    assert_eq!((packets, bytes), (sent, sent * 108), "{mine:#?}\n{log}");
    // A graceful stop detaches and removes the pins.
    for table in [flowlog_agent::bpf::TableKind::Hash, flowlog_agent::bpf::TableKind::Slots] {
        assert!(!std::path::Path::new(&pin).join(flowlog_agent::capture::pin_dir_name(65_536, table)).exists());
    }
    let _ = fs::remove_dir(&pin);
}

#[test]
fn hot_plugged_interfaces_are_attached_once_and_counted() {
    if !require_root() {
        return;
    }
    let t = topo(false);
    let hp = format!("hp{}", &t.a_if[3..]);
    let peer = format!("hq{}", &t.a_if[3..]);
    // Matches nothing at start: the agent waits for it.
    let agent = start(&t, &[&format!("{hp}*")], &["--interval", "3600", "--log-format", FORMAT]);
    let n = next_id() as u8;
    let (a, b) = (Ipv4Addr::new(10, 202, n, 1), Ipv4Addr::new(10, 202, n, 2));
    let mut plugged = 0;
    let mut plug = || {
        plugged += 1;
        sh(&["ip", "link", "add", &hp, "netns", &t.a, "type", "veth", "peer", "name", &peer, "netns", &t.b]);
        sh(&["ip", "-n", &t.a, "addr", "add", &format!("{a}/24"), "dev", &hp]);
        sh(&["ip", "-n", &t.b, "addr", "add", &format!("{b}/24"), "dev", &peer]);
        sh(&["ip", "-n", &t.a, "link", "set", &hp, "up"]);
        sh(&["ip", "-n", &t.b, "link", "set", &peer, "up"]);
        // Let the agent see the link and attach.
        let until = std::time::Instant::now() + Duration::from_secs(60);
        while agent_attach_count(&agent, &hp) < plugged {
            assert!(std::time::Instant::now() < until, "not attached: {}", agent.log());
            thread::sleep(Duration::from_millis(50));
        }
    };
    let send = |count: usize| {
        let rx = in_netns(&t.a, move || UdpSocket::bind((a, 7500)).unwrap());
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let tx = in_netns(&t.b, move || UdpSocket::bind((b, 7501)).unwrap());
        send_udp(&tx, &rx, count, 30);
    };
    plug();
    send(5);
    sh(&["ip", "-n", &t.a, "link", "del", &hp]);
    thread::sleep(Duration::from_millis(300));
    plug();
    send(3);
    let (recs, log) = agent.stop();
    assert_eq!(log.lines().filter(|l| l.contains(" attached ")).count(), 2, "{log}");
    // The default ingress hook on veths is TC (XDP slows veth's receive path).
    assert!(log.lines().filter(|l| l.contains(" attached ")).all(|l| l.contains("ingress=\"tc\"")), "{log}");
    assert!(log.contains("interface disappeared"), "{log}");
    let flows: Vec<(String, u64, u64)> = recs
        .iter()
        .filter(|r| r.dport == Some(7500))
        .map(|r| (r.interface_id.clone(), r.packets, r.bytes))
        .collect();
    // The same name gives the same interface-id; each incarnation is exact.
    assert_eq!(flows.len(), 2, "{recs:#?}");
    assert_eq!(flows[0].0, flows[1].0);
    let mut counts: Vec<(u64, u64)> = flows.iter().map(|f| (f.1, f.2)).collect();
    counts.sort();
    assert_eq!(counts, [(3, 3 * 58), (5, 5 * 58)]);
}

/// How many "attached" log lines name `iface` so far.
fn agent_attach_count(agent: &Agent, iface: &str) -> usize {
    agent_attach_count_in(&agent.log(), iface)
}

#[test]
fn metrics_match_the_records() {
    if !require_root() {
        return;
    }
    let t = topo(false);
    let agent = start(&t, &[&t.a_if], &["--interval", "1", "--log-format", FORMAT, "--metrics-listen", "127.0.0.1:9750"]);
    let addr: SocketAddr = "127.0.0.1:9750".parse().unwrap();
    assert_eq!(http_get(&t.a, addr, "/readyz").0, 200);
    assert_eq!(http_get(&t.a, addr, "/healthz").0, 200);
    assert_eq!(http_get(&t.a, addr, "/nope").0, 404);
    let (tx, rx) = udp_pair(&t, true, false, 7600);
    send_udp(&tx, &rx, 12, 40);
    // Two window ends later the traffic is in both the file and the metrics;
    // read both mid-window, while the agent is not shipping.
    thread::sleep(Duration::from_millis(2000));
    mid_window();
    let (status, body) = http_get(&t.a, addr, "/metrics");
    assert_eq!(status, 200);
    let recs: Vec<Rec> = agent.records();
    let metric = |name: &str| -> u64 {
        body.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .map_or(0, |v| v.parse::<f64>().unwrap() as u64)
    };
    let iface = &t.a_if;
    assert_eq!(metric(&format!("flowlog_packets_total{{interface=\"{iface}\",direction=\"ingress\"}}")), 12, "{body}");
    assert_eq!(metric(&format!("flowlog_bytes_total{{interface=\"{iface}\",direction=\"ingress\"}}")), 12 * 68);
    let ok = recs.iter().filter(|r| r.status == "OK").count() as u64;
    let nodata = recs.iter().filter(|r| r.status == "NODATA").count() as u64;
    assert_eq!(metric("flowlog_records_total{log_status=\"OK\"}"), ok, "{body}\n{recs:#?}");
    assert_eq!(metric("flowlog_records_total{log_status=\"NODATA\"}"), nodata);
    assert_eq!(metric(&format!("flowlog_records_shipped_total{{output=\"file:{}\"}}", agent.out().display())), ok + nodata);
    assert!(metric("flowlog_non_ip_frames_total") >= 2, "ARP: {body}");
    assert_eq!(metric("flowlog_attached_interfaces"), 1);
    agent.stop();
}

/// Link counters: the driver statistics `--ethtool-stats` names are
/// `flowlog_ethtool_<name>_total{interface}` with exactly the values
/// `ethtool -S` prints, read at scrape time; names the driver lacks (an ENA
/// one on a veth) and an interface without statistics (loopback) have no
/// series, and the latter one debug line. A veth counts the packets its XDP
/// program saw per queue: N datagrams move that counter by exactly N. An
/// interface hot-plugged mid-window has its series at once, and loses them
/// when it goes.
#[test]
fn link_counters_are_the_drivers_statistics() {
    if !require_root() {
        return;
    }
    let t = topo(false);
    // No ARP in the test: b knows a's address for good (and IPv6 is off).
    t.a.ip(&["link", "set", &t.a_if, "address", "02:fe:00:00:00:01"]);
    t.b.ip(&["neigh", "replace", &t.a4.to_string(), "lladdr", "02:fe:00:00:00:01", "dev", &t.b_if, "nud", "permanent"]);
    let present = ["peer_ifindex", "rx_queue_0_xdp_packets", "rx_queue_0_xdp_bytes", "rx_queue_0_drops"];
    let stats = [&present[..], &["bw_in_allowance_exceeded", "no_such_statistic"]].concat().join(",");
    let (hot, hot_peer) = (format!("flh{}{}", std::process::id() % 100_000, next_id()), format!("fli{}", next_id()));
    let agent = start(&t, &[&t.a_if, "lo", &format!("{hot}*")], &[
        "--interval", "3600", "--ingress-hook", "xdp", "--metrics-listen", "127.0.0.1:9752", "--ethtool-stats", &stats,
        "--log", "info,flowlog_agent::metrics=debug",
    ]);
    assert_eq!(flowlog_testkit::agent::attach_hook(&agent.log(), &t.a_if).as_deref(), Some("xdp"), "{}", agent.log());
    let addr: SocketAddr = "127.0.0.1:9752".parse().unwrap();
    // A scrape's figures against `ethtool -S` of each interface, run just
    // before it (no traffic in between): exactly these series.
    let check = |want: &[(&str, &BTreeMap<String, u64>)]| {
        let (status, body) = http_get(&t.a, addr, "/metrics");
        assert_eq!(status, 200);
        let lines: Vec<&str> = body.lines().filter(|l| l.starts_with("flowlog_ethtool_")).collect();
        for (iface, ethtool) in want {
            for stat in present {
                let v = ethtool.get(stat).unwrap_or_else(|| panic!("{iface} has no {stat}: {ethtool:?}"));
                let line = format!("flowlog_ethtool_{stat}_total{{interface=\"{iface}\"}} {v}");
                assert!(lines.contains(&line.as_str()), "{line:?} not in\n{body}");
                assert!(body.contains(&format!("# TYPE flowlog_ethtool_{stat} counter\n")), "{body}");
            }
        }
        assert_eq!(lines.len(), present.len() * want.len(), "{body}");
        assert!(!body.contains("bw_in_allowance_exceeded") && !body.contains("no_such_statistic"), "{body}");
    };
    // The agent takes an interface's link event, then updates what is read.
    let until = |what: &str, f: &dyn Fn(&str) -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !f(&http_get(&t.a, addr, "/metrics").1) {
            assert!(std::time::Instant::now() < deadline, "{what}: {}", http_get(&t.a, addr, "/metrics").1);
            thread::sleep(Duration::from_millis(20));
        }
    };
    let before = t.a.ethtool_stats(&t.a_if);
    assert_eq!(before["peer_ifindex"], u64::from(t.b.ifindex(&t.b_if)));
    check(&[(&t.a_if, &before)]);
    let (tx, rx) = udp_pair(&t, true, false, 7800);
    send_udp(&tx, &rx, 25, 100);
    let after = t.a.ethtool_stats(&t.a_if);
    check(&[(&t.a_if, &after)]);
    assert_eq!(after["rx_queue_0_xdp_packets"] - before["rx_queue_0_xdp_packets"], 25, "{before:?} {after:?}");
    // Counted after the Ethernet header is pulled: the IP length, 20 + 8 + 100.
    assert_eq!(after["rx_queue_0_xdp_bytes"] - before["rx_queue_0_xdp_bytes"], 25 * 128, "{before:?} {after:?}");
    // Hot-plugged (an hour before the window ends), then gone.
    t.a.ip(&["link", "add", &hot, "type", "veth", "peer", "name", &hot_peer, "netns", &t.b]);
    t.a.ip(&["link", "set", &hot, "up"]);
    agent.wait_log(Duration::from_secs(20), |l| l.contains(&format!("iface={hot} ")) && l.contains(" attached "));
    let hot_series = format!("flowlog_ethtool_peer_ifindex_total{{interface=\"{hot}\"}}");
    until("no series of the new interface", &|body| body.contains(&hot_series));
    let hot_stats = t.a.ethtool_stats(&hot);
    assert_eq!(hot_stats["peer_ifindex"], u64::from(t.b.ifindex(&hot_peer)));
    check(&[(&t.a_if, &after), (&hot, &hot_stats)]);
    t.a.ip(&["link", "del", &hot]);
    let gone = |l: &str| l.contains(&format!("iface={hot} ")) && l.contains("interface disappeared");
    agent.wait_log(Duration::from_secs(20), gone);
    until("series of a gone interface", &|body| !body.contains(&hot_series));
    check(&[(&t.a_if, &after)]);
    let (_, log) = agent.stop();
    let said: Vec<&str> = log.lines().filter(|l| l.contains("link counters") && l.contains("iface=lo")).collect();
    assert_eq!(said.len(), 1, "{log}");
    assert!(said[0].contains("DEBUG") && said[0].contains("the driver has none of these statistics"), "{log}");
    assert!(!log.lines().any(|l| l.contains("link counters") && !l.contains("iface=lo")), "{log}");
}

/// `net.core.bpf_jit_enable` set for one test, restored on drop (also when
/// the test fails). The sysctl is global: other tests meanwhile load their
/// programs interpreted, which changes no count.
struct JitSysctl(String);

const JIT_SYSCTL: &str = "/proc/sys/net/core/bpf_jit_enable";

impl Drop for JitSysctl {
    fn drop(&mut self) {
        fs::write(JIT_SYSCTL, &self.0).unwrap_or_else(|e| panic!("restoring {JIT_SYSCTL} to {}: {e}", self.0.trim()));
    }
}

/// With the JIT off every program loads into the interpreter (as a program
/// the arm64 JIT cannot translate does on 5.12-5.17 kernels): the agent
/// says so at startup and in `flowlog_build_info`, and counts exactly.
/// Kernels built with CONFIG_BPF_JIT_ALWAYS_ON refuse the 0: a skip.
#[test]
fn programs_the_kernel_interprets_are_reported_and_counted_exactly() {
    if !require_root() {
        return;
    }
    let before = fs::read_to_string(JIT_SYSCTL).expect("reading net.core.bpf_jit_enable");
    if let Err(e) = fs::write(JIT_SYSCTL, "0") {
        eprintln!("SKIP: programs_the_kernel_interprets_are_reported_and_counted_exactly: this kernel keeps its JIT on (CONFIG_BPF_JIT_ALWAYS_ON: net.core.bpf_jit_enable=0 refused: {e})");
        return;
    }
    let _restore = JitSysctl(before);
    let t = topo(false);
    let agent = start(&t, &[&t.a_if], &["--interval", "3600", "--log-format", FORMAT, "--metrics-listen", "127.0.0.1:9751"]);
    let (tx, rx) = udp_pair(&t, true, false, 7700);
    send_udp(&tx, &rx, 9, 100);
    ping(&t.a, t.b4, 3, 100);
    let (status, body) = http_get(&t.a, "127.0.0.1:9751".parse().unwrap(), "/metrics");
    assert_eq!(status, 200);
    let build = body.lines().find(|l| l.starts_with("flowlog_build_info{")).unwrap_or_else(|| panic!("no build_info: {body}"));
    assert!(build.contains(",jited=\"false\"}"), "{build}");
    let (recs, log) = agent.stop();
    let line = log.lines().find(|l| l.contains("eBPF programs run in the kernel's interpreter")).unwrap_or_else(|| panic!("no JIT line: {log}"));
    assert!(line.contains("net.core.bpf_jit_enable=0") && line.contains("flowlog_egress") && line.contains("flowlog_ingress_tc"), "{line}");
    let m = totals(&recs);
    let (a4, b4): (IpAddr, IpAddr) = (t.a4.into(), t.b4.into());
    assert_eq!(get(&m, (b4, a4, tx.local_addr().unwrap().port(), 7700, 17), "ingress"), (9, 9 * 128, 0));
    assert_eq!(get(&m, (a4, b4, 0, 0, 1), "egress"), (3, 3 * 128, 0));
    assert_eq!(get(&m, (b4, a4, 0, 0, 1), "ingress"), (3, 3 * 128, 0));
}

/// Waits until the middle of a 1-second window (windows end on whole seconds).
fn mid_window() {
    while !(300..600).contains(&std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_millis()) {
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn runs_as_nobody_with_only_bpf_net_admin_and_perfmon() {
    if !require_root() {
        return;
    }
    let t = topo(false);
    let caps = "+bpf,+net_admin,+perfmon";
    let only = |caps: &str| {
        vec![
            "setpriv".to_string(),
            "--reuid=65534".into(),
            "--regid=65534".into(),
            "--clear-groups".into(),
            format!("--inh-caps=-all,{caps}"),
            format!("--ambient-caps=-all,{caps}"),
            format!("--bounding-set=-all,{caps}"),
        ]
    };
    let wrapper = only(caps);
    let w: Vec<&str> = wrapper.iter().map(|s| s.as_str()).collect();
    let agent = agent(&t).wrapper(&w).ifaces(&[&t.a_if]).args(&["--interval", "3600", "--log-format", FORMAT, "--log-json"]).start();
    let status = fs::read_to_string(format!("/proc/{}/status", agent.pid())).unwrap();
    let eff = status.lines().find(|l| l.starts_with("CapEff:")).unwrap().split_whitespace().nth(1).unwrap().to_string();
    // CAP_NET_ADMIN (12), CAP_PERFMON (38), CAP_BPF (39) and nothing else.
    assert_eq!(u64::from_str_radix(&eff, 16).unwrap(), (1 << 12) | (1 << 38) | (1 << 39));
    let (tx, rx) = udp_pair(&t, true, false, 7700);
    send_udp(&tx, &rx, 6, 10);
    let (recs, log) = agent.stop();
    let got: Vec<(u64, u64)> = recs.iter().filter(|r| r.dport == Some(7700)).map(|r| (r.packets, r.bytes)).collect();
    assert_eq!(got, [(6, 6 * 38)], "{log}");
    // --log-json: every log line is a JSON object with a message.
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["fields"]["message"].is_string(), "{line}");
    }

    // Without CAP_BPF: a clear refusal.
    let wrapper = only("+net_admin,+perfmon");
    let out = Command::new("ip")
        .args(["netns", "exec", &t.a])
        .args(&wrapper)
        .args([env!("CARGO_BIN_EXE_flowlog-agent"), "--iface", &t.a_if, "--no-pin"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("missing capabilities CAP_BPF:") && err.contains("CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON"), "{err}");
}

#[test]
fn config_file_with_on_prem_metadata_fills_the_records() {
    if !require_root() {
        return;
    }
    let t = topo(false);
    let dir = std::env::temp_dir().join(format!("flowlog-cfg-{}", t.a));
    fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("flowlog.toml");
    let format = "${version} ${account-id} ${interface-id} ${vpc-id} ${subnet-id} ${instance-id} ${region} ${az-id} ${srcaddr} ${dstaddr} ${pkt-dstaddr} ${dstport} ${packets} ${log-status}";
    fs::write(
        &cfg,
        format!(
            r#"
interval = 3600
log-format = "{format}"
pin = false
metrics-listen = "off"

[metadata]
mode = "onprem"

[metadata.onprem]
account-id = "123456789012"
region = "eu-west-1"
az-id = "euw1-az2"
vpc-id = "vpc-0abc"
instance-id = "i-0123456789abcdef0"

[metadata.onprem.interfaces.{iface}]
interface-id = "eni-0fedcba9876543210"
subnet-id = "subnet-0aa"
addresses = ["{a4}", "10.201.250.9"]
"#,
            iface = t.a_if,
            a4 = t.a4
        ),
    )
    .unwrap();
    // The file says it all; only the interface and the output come from flags.
    let out = std::env::temp_dir().join(format!("flowlog-e2e-{}-cfg.log", t.a));
    let _ = fs::remove_file(&out);
    let check = Command::new(env!("CARGO_BIN_EXE_flowlog-agent"))
        .args(["check-config", "--config"])
        .arg(&cfg)
        .args(["--interval", "30"])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    assert!(shown.contains("interval = 30\n") && shown.contains("pin = false\n") && shown.contains("metrics-listen = \"off\"\n"), "{shown}");

    let mut child = Command::new("ip")
        .args(["netns", "exec", &t.a, env!("CARGO_BIN_EXE_flowlog-agent"), "--config"])
        .arg(&cfg)
        // No live socket: the host's /run/flowlog is not this test's.
        .args(["--iface", &t.a_if, "--output", &format!("file:{}", out.display()), "--live-socket", "off"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains(" ready ") {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "agent exited");
    }
    thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    // To the secondary address: srcaddr/dstaddr show the primary one.
    let secondary = Ipv4Addr::new(10, 201, 250, 9);
    sh(&["ip", "-n", &t.a, "addr", "add", &format!("{secondary}/32"), "dev", &t.a_if]);
    sh(&["ip", "-n", &t.b, "route", "add", &format!("{secondary}/32"), "dev", &t.b_if]);
    let rx = in_netns(&t.a, move || UdpSocket::bind((secondary, 7800)).unwrap());
    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let b4 = t.b4;
    let tx = in_netns(&t.b, move || UdpSocket::bind((b4, 7801)).unwrap());
    send_udp(&tx, &rx, 2, 5);
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    let text = fs::read_to_string(&out).unwrap();
    let line = text.lines().find(|l| l.ends_with(" 7800 2 OK")).unwrap_or_else(|| panic!("{text}"));
    assert_eq!(
        line,
        format!(
            "4 123456789012 eni-0fedcba9876543210 vpc-0abc subnet-0aa i-0123456789abcdef0 eu-west-1 euw1-az2 {} {} {secondary} 7800 2 OK",
            t.b4, t.a4
        )
    );
    let _ = fs::remove_dir_all(&dir);
    let _ = fs::remove_file(&out);
}

#[test]
fn jumbo_mtu_falls_back_to_tc_ingress_and_stays_exact() {
    if !require_root() {
        return;
    }
    let t = topo(false);
    // veth takes XDP (without multi-buffer) only up to about a page of MTU.
    sh(&["ip", "-n", &t.a, "link", "set", &t.a_if, "mtu", "9000"]);
    sh(&["ip", "-n", &t.b, "link", "set", &t.b_if, "mtu", "9000"]);
    // `xdp` tries XDP on veths too, and falls back where it is refused.
    let agent = start(&t, &[&t.a_if], &["--interval", "3600", "--log-format", FORMAT, "--ingress-hook", "xdp"]);
    let (tx_in, rx_in) = udp_pair(&t, true, false, 7900);
    send_udp(&tx_in, &rx_in, 9, 8000);
    let (tx_out, rx_out) = udp_pair(&t, false, false, 7901);
    send_udp(&tx_out, &rx_out, 4, 100);
    let (recs, log) = agent.stop();
    assert!(log.contains("XDP refused") && log.contains("ingress=\"tc\""), "{log}");
    let m = totals(&recs);
    let (a4, b4): (IpAddr, IpAddr) = (t.a4.into(), t.b4.into());
    let port = |s: &UdpSocket| s.local_addr().unwrap().port();
    assert_eq!(get(&m, (b4, a4, port(&tx_in), 7900, 17), "ingress"), (9, 9 * 8028, 0));
    assert_eq!(get(&m, (a4, b4, port(&tx_out), 7901, 17), "egress"), (4, 4 * 128, 0));
}

/// flowlog's programs on each TC hook (ingress, egress) of an interface in
/// `ns`: netlink filters (kernels before 6.6, `tc filter show`) plus TCX
/// links (6.6+). Kernel program names are cut to 15 bytes.
fn flowlog_tc_programs(ns: &str, ifname: &str) -> [usize; 2] {
    let mut n = [0; 2];
    for (i, hook) in ["ingress", "egress"].iter().enumerate() {
        let out = Command::new("ip").args(["netns", "exec", ns, "tc", "filter", "show", "dev", ifname, hook]).output().unwrap();
        n[i] += String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains(" flowlog_")).count();
    }
    let name = ifname.to_string();
    let tcx = in_netns(ns, move || {
        [TcAttachType::Ingress, TcAttachType::Egress].map(|k| match SchedClassifier::query_tcx(&name, k) {
            Ok((_, progs)) => progs.iter().filter(|p| p.name_as_str().is_some_and(|n| n.starts_with("flowlog_"))).count(),
            // No TCX on this kernel.
            Err(_) => 0,
        })
    });
    [n[0] + tcx[0], n[1] + tcx[1]]
}

#[test]
fn restart_with_keep_hands_over_exactly_with_one_program_per_hook() {
    if !require_root() {
        return;
    }
    let t = topo(false);
    let pin = format!("{}/{}", flowlog_testkit::test_bpffs().display(), t.a);
    let keep = ["--interval", "1", "--log-format", FORMAT, "--pin-dir", &pin, "--on-exit", "keep"];
    // Traffic starts once the first agent counts, and flows through both
    // handovers.
    let mut agent = start(&t, &[&t.a_if], &keep);
    let (tx, rx) = udp_pair(&t, true, false, 7600);
    let sender = send_steadily(&tx, &rx, 80, Duration::from_millis(6000));
    let mut recs = Vec::new();
    // Two restarts with `keep`: each hands over to the next agent.
    for round in 1..3 {
        assert_eq!(flowlog_tc_programs(&t.a, &t.a_if), [1, 1], "round {round}: one program per hook while running");
        thread::sleep(Duration::from_millis(1200));
        mid_window();
        let (r, log) = agent.stop();
        recs.extend(r);
        // Left counting for the next agent, still exactly once per hook.
        assert_eq!(flowlog_tc_programs(&t.a, &t.a_if), [1, 1], "round {round}, no agent running: {log}");
        thread::sleep(Duration::from_millis(300));
        // The last agent runs with the default `detach`.
        let args: &[&str] = if round < 2 { &keep } else { &keep[..6] };
        agent = start(&t, &[&t.a_if], args);
    }
    assert_eq!(flowlog_tc_programs(&t.a, &t.a_if), [1, 1]);
    let sent = sender.join().unwrap();
    thread::sleep(Duration::from_millis(200));
    let (more, log) = agent.stop();
    recs.extend(more);
    let port = tx.local_addr().unwrap().port();
    let got = sum(&recs, port, 7600, "ingress");
    // Three agents, two handovers: every datagram exactly once.
    assert_eq!(got, (sent, sent * 108), "{log}");
    // `detach` (the default) leaves nothing on the interface.
    assert_eq!(flowlog_tc_programs(&t.a, &t.a_if), [0, 0], "{log}");
    let _ = fs::remove_dir(&pin);
}

#[test]
fn kill_9_leaves_one_program_per_hook_and_detach_removes_it() {
    if !require_root() {
        return;
    }
    let t = topo(false);
    let pin = format!("{}/{}", flowlog_testkit::test_bpffs().display(), t.a);
    let args = ["--interval", "1", "--log-format", FORMAT, "--pin-dir", &pin];
    for round in 0..2 {
        let a = start(&t, &[&t.a_if], &args);
        assert_eq!(flowlog_tc_programs(&t.a, &t.a_if), [1, 1], "round {round}");
        a.kill9();
        assert_eq!(flowlog_tc_programs(&t.a, &t.a_if), [1, 1], "round {round}: after kill -9");
    }
    let a = start(&t, &[&t.a_if], &args);
    let (tx, rx) = udp_pair(&t, true, false, 7610);
    send_udp(&tx, &rx, 25, 80);
    let (recs, log) = a.stop();
    let port = tx.local_addr().unwrap().port();
    let got = sum(&recs, port, 7610, "ingress");
    assert_eq!(got, (25, 25 * 108), "{log}");
    assert_eq!(flowlog_tc_programs(&t.a, &t.a_if), [0, 0], "{log}");
    // Without pins (the other path), a graceful stop removes the programs too.
    let a = start(&t, &[&t.a_if], &["--interval", "1", "--log-format", FORMAT]);
    assert_eq!(flowlog_tc_programs(&t.a, &t.a_if), [1, 1]);
    a.stop();
    assert_eq!(flowlog_tc_programs(&t.a, &t.a_if), [0, 0]);
    let _ = fs::remove_dir(&pin);
}

/// The benchmark object holds foreign-looking programs: one that ends the TC
/// chain, one XDP pass program.
static BENCH_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/flowlog-bench.bpf.o"));

#[test]
fn programs_attached_before_the_agent_cannot_hide_traffic() {
    if !require_root() {
        return;
    }
    let t = topo(false);
    let ifname = t.a_if.clone();
    // Another loader's programs, attached first: a TC program that ends the
    // chain on both hooks, and an XDP program.
    let foreign = in_netns(&t.a, move || {
        let mut ebpf = aya::EbpfLoader::new().load(BENCH_OBJECT).expect("benchmark object (not built with FLOWLOG_EBPF_OBJECT?)");
        let stop: &mut SchedClassifier = ebpf.program_mut("bench_tc_stop").unwrap().try_into().unwrap();
        stop.load().unwrap();
        if !flowlog_agent::bpf::probe::tcx_available() {
            let _ = aya::programs::tc::qdisc_add_clsact(&ifname);
        }
        stop.attach(&ifname, TcAttachType::Ingress).unwrap();
        stop.attach(&ifname, TcAttachType::Egress).unwrap();
        let xdp: &mut aya::programs::Xdp = ebpf.program_mut("bench_xdp_pass").unwrap().try_into().unwrap();
        xdp.load().unwrap();
        xdp.attach(&ifname, aya::programs::XdpMode::default()).unwrap();
        ebpf
    });
    let agent = start(&t, &[&t.a_if], &["--interval", "3600", "--log-format", FORMAT, "--ingress-hook", "xdp"]);
    let (tx, rx) = udp_pair(&t, true, false, 7620);
    send_udp(&tx, &rx, 30, 80);
    let (rtx, rrx) = udp_pair(&t, false, false, 7621);
    send_udp(&rtx, &rrx, 20, 100);
    let (recs, log) = agent.stop();
    // XDP holds one program per interface: the agent says so and counts
    // ingress at TC, first in the chain.
    assert!(log.contains("XDP refused") && log.contains("counting ingress at TC instead"), "{log}");
    assert!(log.lines().any(|l| l.contains(" attached ") && l.contains("ingress=\"tc\"")), "{log}");
    assert_eq!(sum(&recs, tx.local_addr().unwrap().port(), 7620, "ingress"), (30, 30 * 108), "{log}");
    assert_eq!(sum(&recs, rtx.local_addr().unwrap().port(), 7621, "egress"), (20, 20 * 128), "{log}");
    // The other loader's programs are untouched.
    assert_eq!(flowlog_tc_programs(&t.a, &t.a_if), [0, 0]);
    drop(foreign);
}

#[test]
fn a_window_no_output_could_take_stays_in_the_kernel_and_is_reported_later() {
    if !require_root() {
        return;
    }
    let t = topo(false);
    // The only output is a file on a small tmpfs that is full.
    let dir = PathBuf::from(format!("/run/flowlog-full-{}", t.a));
    fs::create_dir_all(&dir).unwrap();
    sh(&["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", dir.to_str().unwrap()]);
    let filler = dir.join("filler");
    let _ = Command::new("dd").args(["if=/dev/zero", &format!("of={}", filler.display()), "bs=4k"]).stderr(Stdio::null()).status();
    let agent = agent(&t).ifaces(&[&t.a_if]).args(&["--interval", "1", "--log-format", FORMAT]).output(dir.join("records.log")).start();
    let (tx, rx) = udp_pair(&t, true, false, 7630);
    send_udp(&tx, &rx, 20, 80);
    // Two windows close while nothing can be written.
    agent.wait_log(Duration::from_secs(60), |log| log.matches("no output took this window's records").count() >= 2);
    fs::remove_file(&filler).unwrap();
    send_udp(&tx, &rx, 10, 80);
    thread::sleep(Duration::from_millis(2500));
    let (recs, log) = agent.stop();
    let _ = Command::new("umount").arg(&dir).status();
    let _ = fs::remove_dir(&dir);
    let port = tx.local_addr().unwrap().port();
    let got = sum(&recs, port, 7630, "ingress");
    assert_eq!(got, (30, 30 * 108), "{recs:#?}\n{log}");
}

#[test]
fn a_renamed_interface_stays_attached_and_counted() {
    if !require_root() {
        return;
    }
    let t = topo(false);
    let agent = start(&t, &[&t.a_if], &["--interval", "1", "--log-format", FORMAT]);
    let (tx, rx) = udp_pair(&t, true, false, 7640);
    send_udp(&tx, &rx, 10, 80);
    let renamed = format!("rn{}", &t.a_if[3..]);
    sh(&["ip", "-n", &t.a, "link", "set", &t.a_if, "down"]);
    sh(&["ip", "-n", &t.a, "link", "set", &t.a_if, "name", &renamed]);
    sh(&["ip", "-n", &t.a, "link", "set", &renamed, "up"]);
    // Windows close (and links are listed again) after the rename.
    thread::sleep(Duration::from_millis(2200));
    send_udp(&tx, &rx, 15, 80);
    let (recs, log) = agent.stop();
    assert!(!log.contains("interface disappeared"), "{log}");
    let port = tx.local_addr().unwrap().port();
    let got = sum(&recs, port, 7640, "ingress");
    assert_eq!(got, (25, 25 * 108), "{log}");
}

/// Three reloads (SIGHUP) under steady traffic, 2-second windows: another
/// format for every output, a `file:` output added, a `dir:` output (spooled)
/// removed; then three bad configurations refused. Every packet is in the
/// first file exactly once; each window is whole in one format; the added
/// output has exactly the windows from the one after its reload on, the
/// removed one exactly the windows up to its reload; the refused ones are
/// logged and counted, and the agent goes on as it was.
#[test]
fn reloads_under_traffic_lose_and_double_nothing() {
    if !require_root() {
        return;
    }
    let t = topo(false);
    let tmp = flowlog_testkit::ScratchDir::new("flowlog-reload");
    let conf = tmp.join("flowlog.toml");
    let (a_out, b_out, d_out) = (tmp.join("a.log"), tmp.join("b.log"), tmp.join("d"));
    let (a, b) = (format!("file:{}", a_out.display()), format!("file:{}", b_out.display()));
    let d = format!("dir:{}", d_out.display());
    let spool = tmp.join("spool").display().to_string();
    let f2 = FORMAT.replace(" ${tcp-flags}", "");
    let config = |format: &str, interval: u64, outputs: &[&str]| {
        let outputs: Vec<String> = outputs.iter().map(|o| format!("{o:?}")).collect();
        let text = format!(
            "interfaces = [{:?}]\ninterval = {interval}\nlog-format = {format:?}\noutputs = [{}]\n\
             spool-dir = {spool:?}\nfile-interval = 1\nmetrics-listen = \"127.0.0.1:9750\"\n",
            t.a_if,
            outputs.join(", ")
        );
        fs::write(&conf, text).unwrap();
    };
    config(FORMAT, 2, &[&a, &d]);
    // systemd's side of a reload: RELOADING=1, then READY=1.
    let sock = tmp.join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&sock).unwrap();
    // Read as systemd does, all along: a full queue would block the agent.
    notify.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let done = done.clone();
        thread::spawn(move || {
            let (mut buf, mut got) = ([0u8; 4096], Vec::new());
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(n) = notify.recv(&mut buf) {
                    got.push(String::from_utf8_lossy(&buf[..n]).to_string());
                }
            }
            got
        })
    };
    let env = format!("NOTIFY_SOCKET={}", sock.display());
    let agent = agent(&t).wrapper(&["env", &env]).config(&conf).output(&a_out).start();
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let (tx, rx) = udp_pair(&t, true, false, 7650);
    let traffic_end = now() + 26;
    let sender = send_steadily(&tx, &rx, 100, Duration::from_secs(26));
    thread::sleep(Duration::from_secs(3));
    config(&f2, 2, &[&a, &d]);
    let w1 = now() / 2;
    agent.reload().unwrap();
    agent.wait_reloaded(1);
    thread::sleep(Duration::from_secs(2));
    config(&f2, 2, &[&a, &d, &b]);
    let w2 = now() / 2;
    agent.reload().unwrap();
    agent.wait_reloaded(2);
    thread::sleep(Duration::from_secs(2));
    // The interval needs a restart: logged, and the windows stay 2 s.
    config(&f2, 4, &[&a, &b]);
    let w3 = now() / 2;
    agent.reload().unwrap();
    agent.wait_reloaded(3);
    thread::sleep(Duration::from_secs(1));
    fs::write(&conf, "interval = \n").unwrap();
    let e = agent.reload().unwrap_err();
    assert!(e.contains("configuration reload refused") && e.contains(&conf.display().to_string()), "{e}");
    config("${nope}", 2, &[&a, &b]);
    let e = agent.reload().unwrap_err();
    assert!(e.contains("invalid log-format = \"${nope}\""), "{e}");
    config(&f2, 2, &[&a, "s3"]);
    let e = agent.reload().unwrap_err();
    assert!(e.contains("invalid outputs = \"s3\""), "{e}");
    let refused_at = now();
    assert!(refused_at + 6 <= traffic_end, "the reloads took too long for the traffic: {}", agent.log());
    let sent = sender.join().unwrap();
    let (status, metrics) = http_get(&t.a, "127.0.0.1:9750".parse().unwrap(), "/metrics");
    let log = agent.stop_log();
    assert_eq!(status, 200);
    assert!(metrics.contains("flowlog_config_reloads_total{result=\"ok\"} 3\n"), "{metrics}");
    assert!(metrics.contains("flowlog_config_reloads_total{result=\"error\"} 3\n"), "{metrics}");
    assert!(log.contains("key=interval") && log.contains("only a restart changes it"), "{log}");
    assert_eq!(log.matches("configuration reloaded").count(), 3, "{log}");
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent_to_systemd = reader.join().unwrap();
    let reloads: Vec<&String> =
        sent_to_systemd.iter().filter(|m| m.contains("RELOADING=1") || m.contains("STATUS=reload ")).collect();
    assert_eq!(reloads.len(), 12, "{sent_to_systemd:#?}");
    for (i, m) in reloads.iter().enumerate() {
        let want: &[&str] = match i {
            _ if i % 2 == 0 => &["RELOADING=1\n", "MONOTONIC_USEC=", "STATUS=reloading the configuration"],
            1 | 3 | 5 => &["READY=1\n", "STATUS=reload accepted ("],
            _ => &["READY=1\n", "STATUS=reload refused"],
        };
        assert!(want.iter().all(|w| m.contains(w)), "message {i}: {m:?}, want {want:?}");
    }

    // Per window (start / 2): whether it is in the first format, its lines sorted.
    let (fa, fb) = (Format::parse(FORMAT).unwrap(), Format::parse(&f2).unwrap());
    let fields = FORMAT.split(' ').count();
    let parse = |l: &str| Rec::parse(if l.split(' ').count() == fields { &fa } else { &fb }, l);
    let windows = |lines: Vec<String>| {
        let mut m: BTreeMap<u64, (bool, Vec<String>)> = BTreeMap::new();
        for l in lines {
            let first = l.split(' ').count() == fields;
            let w = parse(&l).start / 2;
            let e = m.entry(w).or_insert((first, Vec::new()));
            assert_eq!(e.0, first, "window {w} in two formats: {l}\n{log}");
            e.1.push(l);
        }
        m.values_mut().for_each(|(_, v)| v.sort());
        m
    };
    let lines = |p: &std::path::Path| fs::read_to_string(p).unwrap().lines().map(str::to_string).collect::<Vec<_>>();
    let all_a = lines(&a_out);
    let (wa, wb, wd) = (windows(all_a.clone()), windows(lines(&b_out)), windows(flowlog_testkit::agent::dir_output_lines(&d_out)));

    // Every packet once, no line twice.
    let recs: Vec<Rec> = all_a.iter().map(|l| parse(l)).collect();
    let port = tx.local_addr().unwrap().port();
    assert_eq!(sum(&recs, port, 7650, "ingress"), (sent, sent * 128), "{log}");
    let mut unique = all_a.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), all_a.len(), "a line written twice: {all_a:#?}");
    // The format changed once, at the first window boundary after reload 1.
    let first_f2 = *wa.iter().find(|(_, (first, _))| !first).expect("no window in the new format").0;
    assert!(wa.range(..first_f2).all(|(_, (first, _))| *first), "{wa:#?}");
    assert!((w1 + 1..=w1 + 2).contains(&first_f2), "reload 1 in window {w1}, new format from {first_f2}");
    // The removed output: whole windows up to its reload's boundary, then none.
    let d_last = *wd.keys().last().unwrap();
    assert!((w3..=w3 + 1).contains(&d_last), "reload 3 in window {w3}, dir: output until {d_last}");
    assert_eq!(wd, wa.range(..=d_last).map(|(w, v)| (*w, v.clone())).collect::<BTreeMap<_, _>>());
    // The added output: whole windows from the boundary after its reload.
    let b_first = *wb.keys().next().unwrap();
    assert!((w2 + 1..=w2 + 2).contains(&b_first), "reload 2 in window {w2}, file b from {b_first}");
    assert_eq!(wb, wa.range(b_first..).map(|(w, v)| (*w, v.clone())).collect::<BTreeMap<_, _>>());
    // After the refused reloads the agent went on with the configuration it had.
    assert!(wb.range(refused_at / 2 + 1..).count() >= 2, "{wb:#?}");
}

/// A reload that moves the agent from one interface to another: before it,
/// only the first is counted (exactly), after its window boundary only the
/// second; the first's last window is reported.
#[test]
fn a_reload_changes_the_interfaces_at_the_window_boundary() {
    if !require_root() {
        return;
    }
    let t = topo(false);
    // A second veth pair between the same namespaces, 10.209.<n>.1/.2.
    let n = next_id();
    let pid = std::process::id() % 10_000;
    let (x_if, y_if) = (format!("flx{pid}{n}"), format!("fly{pid}{n}"));
    let (xa, yb) = (Ipv4Addr::new(10, 209, (n % 250) as u8, 1), Ipv4Addr::new(10, 209, (n % 250) as u8, 2));
    t.a.ip(&["link", "add", &x_if, "type", "veth", "peer", "name", &y_if, "netns", &t.b]);
    t.a.ip(&["addr", "add", &format!("{xa}/24"), "dev", &x_if]);
    t.b.ip(&["addr", "add", &format!("{yb}/24"), "dev", &y_if]);
    t.a.ip(&["link", "set", &x_if, "up"]);
    t.b.ip(&["link", "set", &y_if, "up"]);
    let tmp = flowlog_testkit::ScratchDir::new("flowlog-reload-ifaces");
    let (conf, out) = (tmp.join("flowlog.toml"), tmp.join("records.log"));
    let config = |iface: &str| {
        let file = format!("file:{}", out.display());
        let text = format!("interfaces = [{iface:?}]\ninterval = 1\noutputs = [{file:?}]\nmetrics-listen = \"off\"\n");
        fs::write(&conf, text).unwrap();
    };
    config(&t.a_if);
    // A flag stays over the file on reloads too.
    let agent = agent(&t).config(&conf).output(&out).args(&["--log-format", FORMAT]).start();
    let (tx1, rx1) = udp_pair(&t, true, false, 7660);
    let rx2 = in_netns(&t.a, move || UdpSocket::bind((xa, 7661)).unwrap());
    let tx2 = in_netns(&t.b, move || UdpSocket::bind((yb, 0)).unwrap());
    rx2.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    send_udp(&tx1, &rx1, 20, 60);
    send_udp(&tx2, &rx2, 20, 60);
    config(&x_if);
    agent.reload().unwrap();
    agent.wait_reloaded(1);
    send_udp(&tx1, &rx1, 30, 60);
    send_udp(&tx2, &rx2, 30, 60);
    thread::sleep(Duration::from_millis(1200));
    let (recs, log) = agent.stop();
    let (p1, p2) = (tx1.local_addr().unwrap().port(), tx2.local_addr().unwrap().port());
    assert_eq!(sum(&recs, p1, 7660, "ingress"), (20, 20 * 88), "{log}");
    assert_eq!(sum(&recs, p2, 7661, "ingress"), (30, 30 * 88), "{log}");
    let detached = "detached: the reloaded configuration no longer selects it; reporting its last window";
    assert!(log.contains(&format!("{detached} iface={}", t.a_if)), "{log}");
    assert_eq!(agent_attach_count_in(&log, &x_if), 1, "{log}");
}

/// A reload changes the kernel filters at the window boundary, values and
/// kinds: each phase's packets are counted exactly as that phase's filters
/// say (a value changed, one kind switched off and another on, protocols
/// only, no filters at all), none lost to a switch.
#[test]
fn a_reload_changes_the_kernel_filters_at_the_window_boundary() {
    if !require_root() {
        return;
    }
    let t = topo(false);
    let tmp = flowlog_testkit::ScratchDir::new("flowlog-reload-filters");
    let (conf, out) = (tmp.join("flowlog.toml"), tmp.join("records.log"));
    let config = |filters: &str| {
        let file = format!("file:{}", out.display());
        let text = format!(
            "interfaces = [{:?}]\ninterval = 1\noutputs = [{file:?}]\nmetrics-listen = \"off\"\n[filters]\n{filters}\n",
            t.a_if
        );
        fs::write(&conf, text).unwrap();
    };
    config("include-ports = [7670]");
    let agent = agent(&t).config(&conf).output(&out).args(&["--log-format", FORMAT]).start();
    let (tx1, rx1) = udp_pair(&t, true, false, 7670);
    let (tx2, rx2) = udp_pair(&t, true, false, 7671);
    let both = |n| {
        send_udp(&tx1, &rx1, n, 60);
        send_udp(&tx2, &rx2, n, 60);
    };
    both(20);
    // (filters, packets sent to each port while they run)
    let phases = [("include-ports = [7671]", 30), ("exclude-ports = [7671]", 12), ("protocols = [6]", 7), ("", 5)];
    for (n, (filters, packets)) in phases.into_iter().enumerate() {
        config(filters);
        agent.reload().unwrap();
        agent.wait_reloaded(n + 1);
        both(packets);
    }
    thread::sleep(Duration::from_millis(1200));
    let (recs, log) = agent.stop();
    let (p1, p2) = (tx1.local_addr().unwrap().port(), tx2.local_addr().unwrap().port());
    // 7670: phases 1, 3 and 5; 7671: phases 2 and 5; UDP in phase 4: none.
    assert_eq!(sum(&recs, p1, 7670, "ingress"), (20 + 12 + 5, (20 + 12 + 5) * 88), "{log}");
    assert_eq!(sum(&recs, p2, 7671, "ingress"), (30 + 5, (30 + 5) * 88), "{log}");
    let accepted = log.lines().filter(|l| l.contains("reload accepted") && l.contains("changes=[filters]")).count();
    assert_eq!(accepted, 4, "{log}");
    assert!(!log.contains("only a restart changes it"), "{log}");
}

/// How often the log says `iface` was attached.
fn agent_attach_count_in(log: &str, iface: &str) -> usize {
    log.lines().filter(|l| l.contains(" attached ") && l.contains(&format!("iface={iface} "))).count()
}
