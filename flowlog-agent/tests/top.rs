//! The live endpoint and `flowlog-agent top` against a running agent: two
//! network namespaces joined by a veth pair, the agent on one end with
//! 10-minute windows (so every figure comes from the generation being
//! written), known UDP traffic, and
//! - the endpoint's numbers (`top --once --json`, `--format text`): exact
//!   packets and bytes of the window so far, for both flow tables; reading
//!   them changes nothing (the window's records, drained afterwards, hold
//!   the same exact totals);
//! - rates across window flips (2-second windows): never negative, never a
//!   spike;
//! - the terminal view in tmux: the flows with their figures, `p`/`b`
//!   reorder them, `/` filters, `q` quits;
//! - access: the socket is `0600` root, a non-root user (in this or another
//!   network namespace) cannot connect, and the agent listens on no TCP
//!   address another namespace can reach. Needs root.

use std::{
    fs,
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use flowlog_agent::{
    live::{Flow, Snapshot},
    top::{SortKey, View},
};
use flowlog_testkit::{
    agent::{http_get, Agent, AgentCmd, FORMAT},
    netns::{in_netns, Topo},
    require_root,
    tmux::Tmux,
    ScratchDir,
};

const EXE: &str = env!("CARGO_BIN_EXE_flowlog-agent");
const INTERVAL: u64 = 600;

/// Namespaces a and b, 10.207.<n>.1/.2, IPv4 only (no IPv6 neighbour
/// traffic in the counts).
fn topo() -> Topo {
    Topo::new(207, false)
}

/// The agent on `a`'s interface with its live socket in `dir` (0755, so
/// only the socket's own mode guards it).
fn start(t: &Topo, dir: &Path, table: &str) -> Agent {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    let sock = dir.join("live.sock");
    let env = format!("FLOWLOG_FLOW_TABLE={table}");
    AgentCmd::new(EXE, &t.a)
        .wrapper(&["env", &env])
        .ifaces(&[&t.a_if])
        .args(&[
            "--log-format",
            FORMAT,
            "--interval",
            &INTERVAL.to_string(),
            "--live-socket",
            sock.to_str().unwrap(),
            "--metrics-listen",
            "127.0.0.1:9750",
        ])
        .start()
}

/// Windows are multiples of the interval in Unix time: with less than a
/// minute of this one left, waits for the next, so the test's traffic and
/// its reads fall in one window.
fn away_from_a_flip() {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let left = INTERVAL - now % INTERVAL;
    if left < 60 {
        std::thread::sleep(Duration::from_secs(left + 2));
    }
}

/// `n` datagrams of `payload` bytes from `tx` to `rx`, each awaited: IP
/// bytes `n * (payload + 28)`.
fn send(tx: &UdpSocket, rx: &UdpSocket, n: usize, payload: usize) {
    let mut buf = vec![0u8; 65536];
    for _ in 0..n {
        tx.send_to(&vec![7u8; payload], rx.local_addr().unwrap()).unwrap();
        assert_eq!(rx.recv(&mut buf).expect("datagram lost"), payload);
    }
}

/// A socket bound in `ns` to `addr`, port chosen by the kernel.
fn udp(ns: &str, addr: IpAddr) -> UdpSocket {
    let s = in_netns(ns, move || UdpSocket::bind(SocketAddr::new(addr, 0)).unwrap());
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// `flowlog-agent top --once` with `args`: its stdout (it must succeed).
fn top_once(sock: &Path, args: &[&str]) -> String {
    let out = Command::new(flowlog_testkit::agent_bin(EXE))
        .arg("top")
        .arg("--once")
        .arg("--live-socket")
        .arg(sock)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "top --once {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn snapshot(sock: &Path) -> Snapshot {
    let text = top_once(sock, &["--json"]);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// (direction, action, packets, bytes) of the flows between these sockets.
fn flow_of(s: &Snapshot, src: &UdpSocket, dst: &UdpSocket) -> Vec<(String, String, u64, u64)> {
    let (src, dst) = (src.local_addr().unwrap(), dst.local_addr().unwrap());
    let hit = |f: &&Flow| {
        f.srcaddr == src.ip()
            && f.srcport == src.port()
            && f.dstaddr == dst.ip()
            && f.dstport == dst.port()
            && f.protocol == 17
    };
    s.flows.iter().filter(hit).map(|f| (f.direction.clone(), f.action.clone(), f.packets, f.bytes)).collect()
}

/// 7 datagrams of 100 bytes in, 3 of 300 bytes out: the endpoint shows
/// exactly these, for the interface and per flow, several reads in a row;
/// then the window's records, drained when the agent stops, hold exactly
/// the same (the reads took nothing away and added nothing).
fn live_counts_exact(table: &str) {
    if !require_root() {
        return;
    }
    let t = topo();
    let dir = ScratchDir::new("flowlog-top");
    away_from_a_flip();
    let agent = start(&t, &dir, table);
    let (_, metrics) = http_get(&t.a, "127.0.0.1:9750".parse().unwrap(), "/metrics");
    assert!(metrics.contains(&format!("flow_table=\"{table}\"")), "{metrics}");
    let sock = dir.join("live.sock");
    let (a_rx, b_tx) = (udp(&t.a, t.a4.into()), udp(&t.b, t.b4.into()));
    let (a_tx, b_rx) = (udp(&t.a, t.a4.into()), udp(&t.b, t.b4.into()));
    send(&b_tx, &a_rx, 7, 100);
    send(&a_tx, &b_rx, 3, 300);
    let first = snapshot(&sock);
    for _ in 0..5 {
        let s = snapshot(&sock);
        assert_eq!(s.window_start, first.window_start, "the window flipped during the test");
        assert_eq!(flow_of(&s, &b_tx, &a_rx), [("ingress".to_string(), "ACCEPT".to_string(), 7, 7 * 128)]);
        assert_eq!(flow_of(&s, &a_tx, &b_rx), [("egress".to_string(), "ACCEPT".to_string(), 3, 3 * 328)]);
        assert_eq!(s.flows.len(), 2, "{s:#?}");
        let i: Vec<_> = s
            .interfaces
            .iter()
            .map(|i| (i.name.as_str(), i.packets_in, i.bytes_in, i.packets_out, i.bytes_out))
            .collect();
        assert_eq!(i, [(t.a_if.as_str(), 7, 896, 3, 984)]);
        assert!(s.now_ms / 1000 >= s.window_start && s.now_ms / 1000 < s.window_start + INTERVAL, "{s:?}");
    }
    // The text form: the same figures, the bigger flow (by bytes) first.
    let text = top_once(&sock, &["--format", "text"]);
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .filter(|r: &Vec<&str>| r.len() >= 8 && r[1].ends_with("gress"))
        .collect();
    let port = |s: &UdpSocket| format!(":{}", s.local_addr().unwrap().port());
    assert!(rows[0][4].ends_with(&port(&a_tx)) && rows[0][6..8] == ["3", "984"], "{text}");
    assert!(rows[1][4].ends_with(&port(&b_tx)) && rows[1][6..8] == ["7", "896"], "{text}");
    let iface = text.lines().find(|l| l.starts_with(&t.a_if)).unwrap_or_else(|| panic!("{text}"));
    assert_eq!(iface.split_whitespace().skip(5).collect::<Vec<_>>(), ["7", "896", "3", "984"], "{text}");
    let (recs, log) = agent.stop();
    let sum = |src: &UdpSocket, dst: &UdpSocket, dir: &str| {
        let (s, d) = (src.local_addr().unwrap(), dst.local_addr().unwrap());
        recs.iter()
            .filter(|r| {
                r.status == "OK" && r.direction == dir && r.sport == Some(s.port()) && r.dport == Some(d.port())
            })
            .fold((0, 0, 0), |(n, p, b), r| (n + 1, p + r.packets, b + r.bytes))
    };
    assert_eq!(sum(&b_tx, &a_rx, "ingress"), (1, 7, 896), "{log}");
    assert_eq!(sum(&a_tx, &b_rx, "egress"), (1, 3, 984), "{log}");
    assert_eq!(recs.iter().filter(|r| r.status == "OK").count(), 2, "{recs:#?}");
    assert!(!sock.exists(), "the socket outlived the agent");
}

#[test]
fn live_counts_exact_slot_table() {
    live_counts_exact("slots");
}

#[test]
fn live_counts_exact_hash_table() {
    live_counts_exact("hash");
}

/// 2-second windows under a steady 100 packets/s at most (one datagram
/// every 10 ms or more, each awaited): polled every 300 ms across several
/// flips, the rates `top` computes stay between 0 and that rate (with
/// margin for the poll timing): no negative rate, no spike at a flip.
#[test]
fn rates_across_window_flips() {
    if !require_root() {
        return;
    }
    let t = topo();
    let dir = ScratchDir::new("flowlog-top");
    fs::set_permissions(&*dir, fs::Permissions::from_mode(0o755)).unwrap();
    let sock = dir.join("live.sock");
    let agent = AgentCmd::new(EXE, &t.a)
        .ifaces(&[&t.a_if])
        .args(&["--interval", "2", "--live-socket", sock.to_str().unwrap()])
        .start();
    let (rx, tx) = (udp(&t.a, t.a4.into()), udp(&t.b, t.b4.into()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                send(&tx, &rx, 1, 72);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let mut prev: Option<Snapshot> = None;
    let (mut windows, mut polls) = (std::collections::BTreeSet::new(), 0);
    let until = std::time::Instant::now() + Duration::from_secs(7);
    while std::time::Instant::now() < until {
        let cur = snapshot(&sock);
        windows.insert(cur.window_start);
        let v = View::new(prev.as_ref(), &cur, SortKey::Bytes, "");
        for i in &v.interfaces {
            // In: at most 100 packets/s of 100 IP bytes.
            assert!(
                (0.0..=150.0).contains(&i.rates[0]) && (0.0..=150.0 * 800.0).contains(&i.rates[1]),
                "{i:?} after {prev:?}, {cur:?}"
            );
        }
        for f in &v.flows {
            assert!((0.0..=150.0).contains(&f.pps) && (0.0..=150.0 * 800.0).contains(&f.bps), "{f:?}");
        }
        polls += 1;
        prev = Some(cur);
        std::thread::sleep(Duration::from_millis(300));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sender.join().unwrap();
    assert!(windows.len() >= 3, "{polls} polls saw windows {windows:?}");
    drop(agent);
}

/// The terminal view in a 200×50 tmux: the two flows with their exact
/// figures, by bytes then (`p`) by packets, a filter on a port, `q` quits.
#[test]
fn terminal_view_in_tmux() {
    if !require_root() {
        return;
    }
    let t = topo();
    let dir = ScratchDir::new("flowlog-top");
    away_from_a_flip();
    let agent = start(&t, &dir, "auto");
    let sock = dir.join("live.sock");
    // Many small datagrams against few big ones: the two orders differ.
    let (a_rx, b_small) = (udp(&t.a, t.a4.into()), udp(&t.b, t.b4.into()));
    let b_big = udp(&t.b, t.b4.into());
    send(&b_small, &a_rx, 20, 22);
    send(&b_big, &a_rx, 2, 972);
    let cmd = format!(
        "{} top --live-socket {}",
        flowlog_testkit::shell_quote(flowlog_testkit::agent_bin(EXE)),
        flowlog_testkit::shell_quote(&sock)
    );
    let tmux = Tmux::start(&cmd, 200, 50);
    let src = |s: &UdpSocket| format!("{}:{}", t.b4, s.local_addr().unwrap().port());
    let (small, big) = (src(&b_small), src(&b_big));
    // The flow rows (border characters removed): source → cells.
    let rows = |screen: &str| -> Vec<(String, Vec<String>)> {
        screen
            .lines()
            .map(|l| {
                l.trim_matches(|c: char| c == '│' || c.is_whitespace())
                    .split_whitespace()
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .filter(|c| c.len() >= 8 && (c[4] == small || c[4] == big))
            .map(|c| (c[4].clone(), c))
            .collect()
    };
    let order = |screen: &str| rows(screen).into_iter().map(|(s, _)| s).collect::<Vec<_>>();
    let screen = tmux.wait_for(Duration::from_secs(15), "both flows", |s| rows(s).len() == 2);
    for (s, c) in rows(&screen) {
        let want = if s == small { ["20", "1000"] } else { ["2", "2000"] };
        assert_eq!(c[..4], [t.a_if.as_str(), "ingress", "ACCEPT", "UDP"], "{screen}");
        assert_eq!(c[6..8], want, "{screen}");
    }
    assert_eq!(order(&screen), [big.as_str(), small.as_str()], "{screen}");
    assert!(screen.contains("flows by bytes"), "{screen}");
    // The interface: 22 packets, 3000 bytes in, nothing out.
    let iface = screen
        .lines()
        .map(|l| l.trim_matches(|c: char| c == '│' || c.is_whitespace()).split_whitespace().collect::<Vec<_>>())
        .find(|c| c.len() == 9 && c[0] == t.a_if)
        .unwrap_or_else(|| panic!("{screen}"));
    assert_eq!(iface[5..], ["22", "3000", "0", "0"], "{screen}");
    tmux.keys(&["p"]);
    let screen = tmux.wait_for(Duration::from_secs(5), "flows by packets", |s| s.contains("flows by packets"));
    assert_eq!(order(&screen), [small.as_str(), big.as_str()], "{screen}");
    tmux.keys(&["b"]);
    let screen = tmux.wait_for(Duration::from_secs(5), "flows by bytes", |s| s.contains("flows by bytes"));
    assert_eq!(order(&screen), [big.as_str(), small.as_str()], "{screen}");
    let port = b_small.local_addr().unwrap().port().to_string();
    tmux.keys(&["/"]);
    tmux.keys(&[&port, "Enter"]);
    let screen = tmux.wait_for(Duration::from_secs(5), "the filter", |s| s.contains(&format!("filter: {port}")));
    assert_eq!(order(&screen), [small.as_str()], "{screen}");
    tmux.keys(&["q"]);
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while tmux.alive() {
        assert!(std::time::Instant::now() < until, "q did not quit:\n{}", tmux.screen());
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(agent);
}

/// Connects to `sock` from namespace `ns` as uid and gid 65534 without
/// groups, on a thread of its own: the raw syscalls change that thread's
/// credentials only (glibc's wrappers would change every thread's).
fn nobody_connects(ns: &str, sock: PathBuf) -> std::io::Result<()> {
    in_netns(ns, move || {
        // SAFETY: plain credential syscalls on this thread, checked.
        let dropped = unsafe {
            libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) == 0
                && libc::syscall(libc::SYS_setresgid, 65534, 65534, 65534) == 0
                && libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534) == 0
        };
        assert!(dropped, "dropping to nobody: {}", std::io::Error::last_os_error());
        UnixStream::connect(&sock).map(drop)
    })
}

/// The socket is a `0600` socket of root's in a directory anyone may enter:
/// `nobody` cannot connect, from the agent's namespace or another one (a
/// path socket is reached through the filesystem, not the network, so its
/// mode is the guard); root can. `top` run as nobody says why it fails. The agent's only TCP listener is the
/// loopback metrics address, which the other namespace cannot reach.
#[test]
fn socket_is_root_only() {
    if !require_root() {
        return;
    }
    let t = topo();
    let dir = ScratchDir::new("flowlog-top");
    let agent = start(&t, &dir, "auto");
    let sock = dir.join("live.sock");
    let m = fs::symlink_metadata(&sock).unwrap();
    assert!(m.file_type().is_socket());
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o600, 0, 0));
    // No temporary name left beside it.
    let names: Vec<String> =
        fs::read_dir(&*dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["live.sock"]);
    for ns in [&t.a, &t.b] {
        let err = nobody_connects(ns, sock.clone()).expect_err("nobody connected to the live socket");
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "nobody in {ns}: {err}");
        let s = sock.clone();
        in_netns(ns, move || UnixStream::connect(&s)).unwrap_or_else(|e| panic!("root in {ns}: {e}"));
    }
    // `top` as nobody says why it cannot read (where nobody may run the binary).
    let bin = flowlog_testkit::agent_bin(EXE);
    let nobody = ["--reuid=65534", "--regid=65534", "--clear-groups"];
    if Command::new("setpriv").args(nobody).args(["test", "-x", &bin]).status().unwrap().success() {
        let out = Command::new("setpriv")
            .args(nobody)
            .arg(&bin)
            .args(["top", "--once", "--live-socket", sock.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("the live socket is for root only"), "{err}");
    }
    let listening = Command::new("ip").args(["netns", "exec", &t.a, "ss", "-Hltn"]).output().unwrap();
    let addrs: Vec<String> = String::from_utf8_lossy(&listening.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3).map(String::from))
        .collect();
    assert_eq!(addrs, ["127.0.0.1:9750"]);
    let a4 = t.a4;
    let reached = in_netns(&t.b, move || {
        TcpStream::connect_timeout(&SocketAddr::new(a4.into(), 9750), Duration::from_secs(2)).is_ok()
    });
    assert!(!reached, "namespace b reached the agent's listener");
    drop(agent);
}
