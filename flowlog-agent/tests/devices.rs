//! The agent on other kinds of devices than a plain veth: devices without an
//! Ethernet header (tun, wireguard), stacked devices (vlan, bond, bridge and
//! its port, macvlan, vxlan, dummy), and veths with real offloads (TSO, GSO,
//! GRO, UDP_SEGMENT). Each builds its devices in network namespaces, runs
//! real traffic, and checks exact packet and byte counts: UDP against what
//! was sent, TCP against an AF_PACKET capture of the peer's interface (the
//! wire side), which counts a super-packet as its wire segments. A kind
//! whose kernel module is missing prints `SKIP: <test>: no <module> module
//! in this kernel` and passes. Needs root.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    thread,
    time::Duration,
};

use flowlog_testkit::{
    agent::{attach_hook, mirrored, of_proto, totals, Agent, Totals, FORMAT},
    netns::{in_netns, link_add, next_id, open_tun, spawn_in_netns, Capture, Netns},
    require_root,
};

fn start(ns: &Netns, iface: &str, hook: &str) -> Agent {
    Agent::start(env!("CARGO_BIN_EXE_flowlog-agent"), ns.name(), &[iface], &["--interval", "3600", "--log-format", FORMAT, "--ingress-hook", hook])
}

/// Namespaces `a` and `b` joined by a veth (`va` in a, `vb` in b), offloads
/// off (unless a test turns them on), no addresses yet.
struct Pair {
    a: Netns,
    b: Netns,
    n: u32,
}

impl Pair {
    fn new(tag: &str) -> Pair {
        let (a, b) = (Netns::new(&format!("{tag}a")), Netns::new(&format!("{tag}b")));
        let b_name = b.name().to_string();
        a.ip(&["link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", &b_name]);
        for (ns, i) in [(&a, "va"), (&b, "vb")] {
            ns.exec(&["sysctl", "-qw", &format!("net.ipv6.conf.{i}.disable_ipv6=1")]);
            ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
            ns.offloads(i, false);
            ns.ip(&["link", "set", i, "up"]);
        }
        Pair { a, b, n: next_id() % 250 + 1 }
    }

    /// 10.77.<n>.<host>
    fn addr(&self, host: u8) -> IpAddr {
        IpAddr::from([10, 77, self.n as u8, host])
    }

    fn set_addr(ns: &Netns, ifname: &str, a: IpAddr) {
        ns.ip(&["addr", "add", &format!("{a}/24"), "dev", ifname]);
        ns.ip(&["link", "set", ifname, "up"]);
    }
}

/// `n` datagrams of `size` bytes from `from_ns`/`from` to `to_ns`/`to:port`, all received.
fn udp(from_ns: &Netns, from: IpAddr, to_ns: &Netns, to: IpAddr, port: u16, n: usize, size: usize) -> u16 {
    let rx = in_netns(to_ns.name(), move || UdpSocket::bind(SocketAddr::new(to, port)).unwrap());
    let tx = in_netns(from_ns.name(), move || UdpSocket::bind(SocketAddr::new(from, 0)).unwrap());
    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = vec![0u8; 65536];
    for i in 0..n {
        tx.send_to(&vec![i as u8; size], SocketAddr::new(to, port)).unwrap();
        assert_eq!(rx.recv(&mut buf).expect("datagram lost"), size);
    }
    tx.local_addr().unwrap().port()
}

/// Bulk TCP: `up` bytes from `from` to `to:port`, then `down` bytes back.
fn tcp(from_ns: &Netns, from: IpAddr, to_ns: &Netns, to: IpAddr, port: u16, up: usize, down: usize) {
    let listener = in_netns(to_ns.name(), move || TcpListener::bind(SocketAddr::new(to, port)).unwrap());
    let client = spawn_in_netns(from_ns.name(), move || {
        // The route picks `from`: the only address of the subnet here.
        let _ = from;
        let mut s = TcpStream::connect_timeout(&SocketAddr::new(to, port), Duration::from_secs(5)).unwrap();
        s.write_all(&vec![7u8; up]).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back).unwrap();
        assert_eq!(back.len(), down);
    });
    let (mut srv, _) = listener.accept().unwrap();
    let mut got = Vec::new();
    srv.read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), up);
    srv.write_all(&vec![9u8; down]).unwrap();
    drop(srv);
    client.join().unwrap();
}

/// TCP the agent counted equals what the capture on the peer saw, mirrored.
fn assert_tcp_matches(agent: &Totals, peer: &Capture, ctx: &str) {
    let want = mirrored(&of_proto(&peer.totals(), 6));
    assert!(want.len() >= 2, "{ctx}: capture: {want:#?}");
    assert_eq!(of_proto(agent, 6), want, "{ctx}");
}

/// The stacked-device test: `a_dev` in `a` (built by `build_a` on `va`) and
/// `b_dev` in `b`, addresses .1 and .2; the agent with `--ingress-hook xdp`
/// on `watch` (the upper device, or a bridge port).
fn stacked(test: &str, p: &Pair, a_dev: &str, b_dev: &str, watch: &str, want_hook: &str, with_tcp: bool) {
    let (a4, b4) = (p.addr(1), p.addr(2));
    let peer = Capture::open(p.b.name(), b_dev);
    let agent = start(&p.a, watch, "xdp");
    let out = udp(&p.a, a4, &p.b, b4, 7000, 20, 300);
    let inn = udp(&p.b, b4, &p.a, a4, 7001, 13, 500);
    if with_tcp {
        tcp(&p.a, a4, &p.b, b4, 7002, 2_000_000, 300_000);
        tcp(&p.b, b4, &p.a, a4, 7003, 1_000_000, 100_000);
    }
    thread::sleep(Duration::from_millis(300));
    let (recs, log) = agent.stop();
    assert_eq!(attach_hook(&log, watch).as_deref(), Some(want_hook), "{test}: {log}");
    let m = totals(&recs);
    let get = |t, d: &str| m.get(&(t, d.to_string())).copied();
    assert_eq!(get((a4, b4, out, 7000, 17), "egress"), Some((20, 20 * 328)), "{test}: {m:#?}");
    assert_eq!(get((b4, a4, inn, 7001, 17), "ingress"), Some((13, 13 * 528)), "{test}: {m:#?}");
    if with_tcp {
        assert_tcp_matches(&m, &peer, test);
    }
    let _ = a_dev;
    println!("{test}: exact on {watch} (ingress at {want_hook})");
}

#[test]
fn vlan_is_exact() {
    if !require_root() {
        return;
    }
    let p = Pair::new("vl");
    if let Err(skip) = link_add(&p.a, "vlan_is_exact", "8021q", &["link", "va", "name", "va.10", "type", "vlan", "id", "10"]) {
        println!("{skip}");
        return;
    }
    p.b.ip(&["link", "add", "link", "vb", "name", "vb.10", "type", "vlan", "id", "10"]);
    Pair::set_addr(&p.a, "va.10", p.addr(1));
    Pair::set_addr(&p.b, "vb.10", p.addr(2));
    stacked("vlan_is_exact", &p, "va.10", "vb.10", "va.10", "tc", true);
}

#[test]
fn bond_is_exact() {
    if !require_root() {
        return;
    }
    let p = Pair::new("bo");
    if let Err(skip) = link_add(&p.a, "bond_is_exact", "bonding", &["bond0", "type", "bond", "mode", "active-backup"]) {
        println!("{skip}");
        return;
    }
    p.a.ip(&["link", "set", "va", "down"]);
    p.a.ip(&["link", "set", "va", "master", "bond0"]);
    p.a.ip(&["link", "set", "va", "up"]);
    Pair::set_addr(&p.a, "bond0", p.addr(1));
    Pair::set_addr(&p.b, "vb", p.addr(2));
    // A bond has native XDP where its slaves do (veth does; bonding since
    // 5.15), but the program then runs on the slaves with their ifindex:
    // the agent counts a bond at TC.
    stacked("bond_is_exact", &p, "bond0", "vb", "bond0", "tc", true);
}

/// Like `stacked`, for a device that may or may not have native XDP: the
/// counts must be exact at whichever hook the agent chose.
fn stacked_any_hook(test: &str, p: &Pair, b_dev: &str, watch: &str) {
    let (a4, b4) = (p.addr(1), p.addr(2));
    let peer = Capture::open(p.b.name(), b_dev);
    let agent = start(&p.a, watch, "xdp");
    let out = udp(&p.a, a4, &p.b, b4, 7000, 20, 300);
    let inn = udp(&p.b, b4, &p.a, a4, 7001, 13, 500);
    tcp(&p.a, a4, &p.b, b4, 7002, 1_000_000, 100_000);
    thread::sleep(Duration::from_millis(300));
    let (recs, log) = agent.stop();
    let hook = attach_hook(&log, watch).unwrap_or_else(|| panic!("{test}: no attach line: {log}"));
    let m = totals(&recs);
    let get = |t, d: &str| m.get(&(t, d.to_string())).copied();
    assert_eq!(get((a4, b4, out, 7000, 17), "egress"), Some((20, 20 * 328)), "{test} ({hook}): {m:#?}");
    assert_eq!(get((b4, a4, inn, 7001, 17), "ingress"), Some((13, 13 * 528)), "{test} ({hook}): {m:#?}");
    assert_tcp_matches(&m, &peer, test);
    println!("{test}: exact on {watch} (ingress at {hook})");
}

#[test]
fn bridge_and_its_port_are_exact() {
    if !require_root() {
        return;
    }
    for watch in ["br0", "va"] {
        let p = Pair::new("br");
        if let Err(skip) = link_add(&p.a, "bridge_and_its_port_are_exact", "bridge", &["br0", "type", "bridge"]) {
            println!("{skip}");
            return;
        }
        p.a.ip(&["link", "set", "va", "master", "br0"]);
        Pair::set_addr(&p.a, "br0", p.addr(1));
        Pair::set_addr(&p.b, "vb", p.addr(2));
        // The port is a veth (native XDP): only the bridge lacks it.
        if watch == "br0" {
            stacked("bridge_and_its_port_are_exact", &p, "br0", "vb", "br0", "tc", true);
        } else {
            stacked_any_hook("bridge_and_its_port_are_exact", &p, "vb", "va");
        }
    }
}

#[test]
fn macvlan_is_exact() {
    if !require_root() {
        return;
    }
    let p = Pair::new("mv");
    if let Err(skip) = link_add(&p.a, "macvlan_is_exact", "macvlan", &["link", "va", "name", "mv0", "type", "macvlan", "mode", "bridge"]) {
        println!("{skip}");
        return;
    }
    Pair::set_addr(&p.a, "mv0", p.addr(1));
    Pair::set_addr(&p.b, "vb", p.addr(2));
    stacked("macvlan_is_exact", &p, "mv0", "vb", "mv0", "tc", true);
}

/// vxlan over the veth, TSO/GSO/GRO on everywhere: bulk TCP both ways is
/// counted on vx0 as the wire segments the peer's vx0 sees.
#[test]
fn vxlan_with_offloads_is_exact() {
    if !require_root() {
        return;
    }
    let p = Pair::new("vx");
    let (ua, ub) = (IpAddr::from([10, 78, p.n as u8, 1]), IpAddr::from([10, 78, p.n as u8, 2]));
    let add = |ns: &Netns, remote: IpAddr, local: IpAddr, lower: &str| {
        link_add(ns, "vxlan_with_offloads_is_exact", "vxlan", &[
            "vx0", "type", "vxlan", "id", "42", "remote", &remote.to_string(), "local", &local.to_string(), "dev", lower, "dstport", "4789",
        ])
    };
    Pair::set_addr(&p.a, "va", ua);
    Pair::set_addr(&p.b, "vb", ub);
    if let Err(skip) = add(&p.a, ub, ua, "va") {
        println!("{skip}");
        return;
    }
    add(&p.b, ua, ub, "vb").unwrap();
    for (ns, lower) in [(&p.a, "va"), (&p.b, "vb")] {
        ns.offloads(lower, true);
        ns.offloads("vx0", true);
    }
    Pair::set_addr(&p.a, "vx0", p.addr(1));
    Pair::set_addr(&p.b, "vx0", p.addr(2));
    stacked("vxlan_with_offloads_is_exact", &p, "vx0", "vx0", "vx0", "tc", true);
}

/// A dummy device drops what it sends: egress only, exact.
#[test]
fn dummy_egress_is_exact() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("dm");
    if let Err(skip) = link_add(&ns, "dummy_egress_is_exact", "dummy", &["dm0", "type", "dummy"]) {
        println!("{skip}");
        return;
    }
    let (a, b) = (IpAddr::from([10, 79, 0, 1]), IpAddr::from([10, 79, 0, 2]));
    Pair::set_addr(&ns, "dm0", a);
    ns.ip(&["neigh", "add", &b.to_string(), "lladdr", "02:00:00:00:00:02", "dev", "dm0"]);
    let agent = start(&ns, "dm0", "xdp");
    let tx = in_netns(ns.name(), move || UdpSocket::bind(SocketAddr::new(a, 0)).unwrap());
    for _ in 0..17 {
        tx.send_to(&[1u8; 400], SocketAddr::new(b, 9)).unwrap();
    }
    thread::sleep(Duration::from_millis(200));
    let (recs, log) = agent.stop();
    assert_eq!(attach_hook(&log, "dm0").as_deref(), Some("tc"), "{log}");
    let m = totals(&recs);
    let port = tx.local_addr().unwrap().port();
    assert_eq!(m.get(&((a, b, port, 9, 17), "egress".to_string())), Some(&(17, 17 * 428)), "{m:#?}");
}

/// tun: packets the test writes into /dev/net/tun are its ingress, packets
/// routed to it its egress (read back by the test); no Ethernet header, so
/// the IP-header programs, at TC even with `--ingress-hook xdp`.
#[test]
fn tun_is_exact() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("tun");
    let tun = in_netns(ns.name(), || open_tun("tun0"));
    let (a, b) = (IpAddr::from([10, 80, 0, 1]), IpAddr::from([10, 80, 0, 2]));
    ns.exec(&["sysctl", "-qw", "net.ipv6.conf.tun0.disable_ipv6=1"]);
    Pair::set_addr(&ns, "tun0", a);
    let agent = start(&ns, "tun0", "xdp");
    // Ingress: 11 UDP datagrams of 250 bytes from b to a:6000.
    let mut f = std::fs::File::from(tun);
    for _ in 0..11 {
        let p = flowlog_testkit::frames::V4::new([10, 80, 0, 2], [10, 80, 0, 1])
            .packet(17, &flowlog_testkit::frames::L4::Udp { sport: 5999, dport: 6000, payload: 250 }.bytes(false));
        assert_eq!(f.write(&p).unwrap(), p.len());
    }
    // Egress: 9 datagrams of 100 bytes from a to b, read back from the tun.
    let tx = in_netns(ns.name(), move || UdpSocket::bind(SocketAddr::new(a, 0)).unwrap());
    for _ in 0..9 {
        tx.send_to(&[3u8; 100], SocketAddr::new(b, 6001)).unwrap();
    }
    let mut buf = [0u8; 2048];
    let mut read = 0;
    // SAFETY: plain fcntl on our fd.
    unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    let until = std::time::Instant::now() + Duration::from_secs(3);
    while read < 9 && std::time::Instant::now() < until {
        match f.read(&mut buf) {
            Ok(n) if n == 128 && buf[9] == 17 => read += 1,
            Ok(_) => {}
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
    assert_eq!(read, 9);
    thread::sleep(Duration::from_millis(200));
    let (recs, log) = agent.stop();
    assert_eq!(attach_hook(&log, "tun0").as_deref(), Some("tc"), "{log}");
    let m = totals(&recs);
    let port = tx.local_addr().unwrap().port();
    assert_eq!(m.get(&((b, a, 5999, 6000, 17), "ingress".to_string())), Some(&(11, 11 * 278)), "{m:#?}");
    assert_eq!(m.get(&((a, b, port, 6001, 17), "egress".to_string())), Some(&(9, 9 * 128)), "{m:#?}");
}

/// wireguard between two namespaces (over a veth): the agent on wg0 counts
/// the inner packets, UDP exact and TCP as the peer's wg0 sees it.
#[test]
fn wireguard_is_exact() {
    if !require_root() {
        return;
    }
    let p = Pair::new("wg");
    if let Err(skip) = link_add(&p.a, "wireguard_is_exact", "wireguard", &["wg0", "type", "wireguard"]) {
        println!("{skip}");
        return;
    }
    p.b.ip(&["link", "add", "wg0", "type", "wireguard"]);
    if flowlog_testkit::netns::try_sh(&["wg", "--version"]).is_err() {
        println!("SKIP: wireguard_is_exact: no wg tool");
        return;
    }
    let (ua, ub) = (IpAddr::from([10, 78, p.n as u8, 1]), IpAddr::from([10, 78, p.n as u8, 2]));
    Pair::set_addr(&p.a, "va", ua);
    Pair::set_addr(&p.b, "vb", ub);
    let dir = std::env::temp_dir().join(format!("flowlog-wg-{}", next_id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = |name: &str| {
        let k = flowlog_testkit::netns::try_sh(&["wg", "genkey"]).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, k.trim()).unwrap();
        let out = std::process::Command::new("wg").arg("pubkey").stdin(std::fs::File::open(&path).unwrap()).output().unwrap();
        (path, String::from_utf8(out.stdout).unwrap().trim().to_string())
    };
    let (ka, pa) = key("a");
    let (kb, pb) = key("b");
    for (ns, k, peer, endpoint, port) in [(&p.a, &ka, &pb, ub, "51820"), (&p.b, &kb, &pa, ua, "51821")] {
        let other_port = if port == "51820" { "51821" } else { "51820" };
        ns.exec(&[
            "wg", "set", "wg0", "listen-port", port, "private-key", &k.display().to_string(), "peer", peer, "allowed-ips", "10.77.0.0/16",
            "endpoint", &format!("{endpoint}:{other_port}"),
        ]);
    }
    Pair::set_addr(&p.a, "wg0", p.addr(1));
    Pair::set_addr(&p.b, "wg0", p.addr(2));
    stacked("wireguard_is_exact", &p, "wg0", "wg0", "wg0", "tc", true);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Item 7: veths with TSO, GSO and GRO on, bulk TCP both ways: counted as
/// the wire segments the peer's interface sees, at TC and at XDP ingress.
#[test]
fn veth_offloads_on_bulk_tcp_is_exact() {
    if !require_root() {
        return;
    }
    for hook in ["tc", "xdp"] {
        let p = Pair::new("of");
        for (ns, i) in [(&p.a, "va"), (&p.b, "vb")] {
            ns.offloads(i, true);
        }
        Pair::set_addr(&p.a, "va", p.addr(1));
        Pair::set_addr(&p.b, "vb", p.addr(2));
        stacked_hook("veth_offloads_on_bulk_tcp_is_exact", &p, "vb", "va", hook);
    }
}

fn stacked_hook(test: &str, p: &Pair, b_dev: &str, watch: &str, hook: &str) {
    let (a4, b4) = (p.addr(1), p.addr(2));
    let peer = Capture::open(p.b.name(), b_dev);
    let agent = start(&p.a, watch, hook);
    tcp(&p.a, a4, &p.b, b4, 7002, 4_000_000, 1_000_000);
    tcp(&p.b, b4, &p.a, a4, 7003, 4_000_000, 1_000_000);
    thread::sleep(Duration::from_millis(300));
    let (recs, log) = agent.stop();
    assert_eq!(attach_hook(&log, watch).as_deref(), Some(hook), "{test}: {log}");
    assert_tcp_matches(&totals(&recs), &peer, &format!("{test} at {hook}"));
    println!("{test}: exact at {hook}");
}

/// UDP GSO (UDP_SEGMENT, Linux 4.18): one send of 20 segments of 1000 bytes
/// leaves as 20 datagrams, and is counted as 20.
#[test]
fn udp_gso_segments_are_counted_as_sent() {
    if !require_root() {
        return;
    }
    let p = Pair::new("ug");
    for (ns, i) in [(&p.a, "va"), (&p.b, "vb")] {
        ns.offloads(i, true);
    }
    let (a4, b4) = (p.addr(1), p.addr(2));
    Pair::set_addr(&p.a, "va", a4);
    Pair::set_addr(&p.b, "vb", b4);
    let peer = Capture::open(p.b.name(), "vb");
    let agent = start(&p.a, "va", "tc");
    let rx = in_netns(p.b.name(), move || UdpSocket::bind(SocketAddr::new(b4, 7100)).unwrap());
    let tx = in_netns(p.a.name(), move || UdpSocket::bind(SocketAddr::new(a4, 0)).unwrap());
    const UDP_SEGMENT: libc::c_int = 103;
    let seg: libc::c_int = 1000;
    // SAFETY: valid option pointer and length.
    let r = unsafe { libc::setsockopt(tx.as_raw_fd(), libc::SOL_UDP, UDP_SEGMENT, &seg as *const _ as *const _, 4) };
    if r != 0 {
        println!("SKIP: udp_gso_segments_are_counted_as_sent: no UDP_SEGMENT in this kernel");
        return;
    }
    for _ in 0..5 {
        tx.send_to(&vec![5u8; 20 * 1000 - 300], SocketAddr::new(b4, 7100)).unwrap();
    }
    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = vec![0u8; 65536];
    for _ in 0..5 * 20 {
        rx.recv(&mut buf).expect("segment lost");
    }
    thread::sleep(Duration::from_millis(200));
    let (recs, _log) = agent.stop();
    let m = totals(&recs);
    let port = tx.local_addr().unwrap().port();
    // 19 segments of 1000 and one of 700 per send.
    let want = (5 * 20, 5 * (19 * 1028 + 728));
    assert_eq!(m.get(&((a4, b4, port, 7100, 17), "egress".to_string())), Some(&want), "{m:#?}");
    let c = peer.totals();
    assert_eq!(c.get(&((a4, b4, port, 7100, 17), "ingress".to_string())), Some(&want), "capture: {c:#?}");
}
