//! Benchmark 2: packet rate on a veth pair between two network namespaces,
//! without and with the programs attached.
//!
//! Method: namespaces `a` and `b` joined by a veth pair with one queue per
//! CPU. One sender thread per CPU, pinned, in `a`, sends 60-byte IPv4 TCP
//! frames (64 on a wire) over 1,000 flows through an AF_PACKET socket with
//! `sendmmsg` (64 frames per call). Each frame goes through `a`'s egress
//! (TCX) and the veth into `b` (XDP), whose stack drops it at once as
//! addressed to another host, so `b` sends nothing back. AF_PACKET keeps the
//! TC egress hook on the path (XDP live-frames redirection into a veth would
//! skip it). The rate is what `b` received (its rx_packets) per second while
//! both CPUs are saturated: the sender's and the receiver's work per packet
//! share the same two CPUs, as on a busy host.
//!
//! Configurations, interleaved round by round: no program; pass-only XDP on
//! `b` + pass-only TC on `a` (the price of having any program there); the
//! agent's programs with XDP ingress on `b`; the same with pass-only and
//! with the agent's TC ingress program on `b` (the default on veths). With the agent,
//! the packets its tables counted are checked against the interface
//! counters: every packet counted once at each hook.

use std::{
    fs,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc, Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context, Result};
use aya::{
    programs::{tc::SchedClassifierLinkId, xdp::XdpLinkId, SchedClassifier, TcAttachType, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use flowlog_agent::{
    bpf::TableKind,
    capture::{Capture, EGRESS_PROGRAM, INGRESS_PROGRAM, INGRESS_TC_PROGRAM},
    drain::FlowTables,
};
use flowlog_common::{bench_cut, direction};

use crate::{
    kernel::BENCH_OBJECT,
    util::{median, nproc, pin_to_cpu, sh, tcp_frame, Family, InNetns},
};

const FLOWS: usize = 1_000;
const BATCH: usize = 64;
const A_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0a, 0x01];
const B_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0b, 0x01];
/// Destination of the frames: not `b`'s address, so `b` drops them on entry.
const OTHER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0b, 0x99];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Config {
    None,
    PassXdp,
    FlowlogXdp,
    PassTc,
    FlowlogTc,
    /// The default attachment, with the hash flow table (kernels before 5.12).
    FlowlogTcHash,
    /// The default attachment with programs that stop part-way
    /// (`flowlog_common::bench_cut`): where the added cost goes.
    TcCut(u32),
}

impl Config {
    pub fn name(self) -> &'static str {
        match self {
            Config::None => "no programs",
            Config::PassXdp => "pass-only: XDP on b, TC egress on a",
            Config::FlowlogXdp => "flowlog with `--ingress-hook xdp`: XDP ingress on b, TC egress on a",
            Config::PassTc => "pass-only: TC ingress on b, TC egress on a",
            Config::FlowlogTc => "**flowlog as attached by default on veths: TC ingress on b, TC egress on a** (slot table)",
            Config::FlowlogTcHash => "the same with the hash table (the default before Linux 5.12)",
            Config::TcCut(bench_cut::AFTER_PARSE) => "the default hooks stopping after the parse",
            Config::TcCut(bench_cut::AFTER_FILTERS) => "the default hooks stopping after the filters and sampling",
            Config::TcCut(_) => "the default hooks stopping after the generation and clock (all but the table entry)",
        }
    }
    /// Runs the agent's programs (a cut or whole).
    fn agent(self) -> bool {
        matches!(self, Config::FlowlogXdp | Config::FlowlogTc | Config::FlowlogTcHash | Config::TcCut(_))
    }
    /// Counts every packet (checked against the interfaces' counters).
    fn counts(self) -> bool {
        self.agent() && !matches!(self, Config::TcCut(_))
    }
}

const CUTS: [u32; 3] = [bench_cut::AFTER_PARSE, bench_cut::AFTER_FILTERS, bench_cut::BEFORE_TABLE];

const CONFIGS: [Config; 9] = [
    Config::None,
    Config::PassXdp,
    Config::FlowlogXdp,
    Config::PassTc,
    Config::TcCut(CUTS[0]),
    Config::TcCut(CUTS[1]),
    Config::TcCut(CUTS[2]),
    Config::FlowlogTc,
    Config::FlowlogTcHash,
];

pub struct Row {
    pub config: Config,
    /// Median packets/s received by b.
    pub rate: f64,
    /// Median, min and max CPU ns per received packet.
    pub cpu_ns: f64,
    pub cpu_range: (f64, f64),
    /// All rate samples, sorted.
    pub rates: Vec<f64>,
}

pub struct Results {
    pub rows: Vec<Row>,
    pub senders: usize,
    pub secs: f64,
    /// Packets checked against the interface counters.
    pub checked: u64,
}

struct Topo {
    a: String,
    b: String,
    a_if: String,
    b_if: String,
}

impl Topo {
    /// `tag` tells apart the topologies of one run.
    fn new(queues: usize, tag: &str) -> Result<Topo> {
        let id = std::process::id() % 100_000;
        let t = Topo {
            a: format!("flbench-{id}{tag}-a"),
            b: format!("flbench-{id}{tag}-b"),
            a_if: format!("flbA{id}{tag}"),
            b_if: format!("flbB{id}{tag}"),
        };
        sh(&["ip", "netns", "add", &t.a])?;
        sh(&["ip", "netns", "add", &t.b])?;
        let q = queues.to_string();
        sh(&[
            "ip", "link", "add", &t.a_if, "netns", &t.a, "numtxqueues", &q, "numrxqueues", &q, "type", "veth", "peer",
            "name", &t.b_if, "netns", &t.b, "numtxqueues", &q, "numrxqueues", &q,
        ])?;
        for (ns, ifname, mac) in [(&t.a, &t.a_if, A_MAC), (&t.b, &t.b_if, B_MAC)] {
            // No IPv6: no router solicitations or DAD on the link, so every
            // packet on it is one of ours.
            sh(&["ip", "netns", "exec", ns, "sysctl", "-qw", &format!("net.ipv6.conf.{ifname}.disable_ipv6=1")])?;
            let mac = mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
            sh(&["ip", "-n", ns, "link", "set", ifname, "address", &mac])?;
            sh(&["ip", "-n", ns, "link", "set", ifname, "up"])?;
        }
        Ok(t)
    }
}

impl Drop for Topo {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = sh(&["ip", "netns", "del", ns]);
        }
    }
}

/// rx_packets, tx_packets, tx_dropped of an interface in a namespace.
fn if_counters(ns: &str, ifname: &str) -> Result<(u64, u64, u64)> {
    let _in = InNetns::enter(ns)?;
    // /proc/thread-self/net is this thread's namespace (/proc/net is the process's).
    let text = fs::read_to_string("/proc/thread-self/net/dev")?;
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{ifname}:")))
        .ok_or_else(|| anyhow!("{ifname} not in /proc/net/dev of {ns}"))?;
    let v: Vec<u64> = line.split(':').nth(1).unwrap().split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    Ok((v[1], v[9], v[11]))
}

fn ifindex(ns: &str, ifname: &str) -> Result<u32> {
    let _in = InNetns::enter(ns)?;
    let name = std::ffi::CString::new(ifname)?;
    // SAFETY: valid C string.
    let i = unsafe { libc::if_nametoindex(name.as_ptr()) };
    ensure!(i != 0, "no interface {ifname} in {ns}");
    Ok(i)
}

/// Sends its share of the frames round-robin until `stop`, `BATCH` per
/// sendmmsg call.
fn sender(
    ns: String,
    ifname: String,
    cpu: usize,
    senders: usize,
    frames: Arc<Vec<Vec<u8>>>,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) -> Result<()> {
    pin_to_cpu(cpu);
    let _in = InNetns::enter(&ns)?;
    let idx = {
        let name = std::ffi::CString::new(ifname)?;
        // SAFETY: valid C string.
        unsafe { libc::if_nametoindex(name.as_ptr()) }
    };
    // SAFETY: plain socket(2); the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    ensure!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
    // SAFETY: a zeroed sockaddr_ll is valid; we fill what bind needs.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = (libc::ETH_P_IP as u16).to_be();
    sll.sll_ifindex = idx as i32;
    // SAFETY: valid fd and address of the right size.
    let r = unsafe { libc::bind(fd, &sll as *const _ as *const libc::sockaddr, std::mem::size_of::<libc::sockaddr_ll>() as u32) };
    ensure!(r == 0, "bind AF_PACKET: {}", std::io::Error::last_os_error());

    // Each sender has its own share of the flows, as RSS or the sending
    // socket keeps a flow on one CPU: no two CPUs update one flow's counters.
    let share = frames.len() / senders;
    let mine = &frames[cpu * share..(cpu + 1) * share];
    // One iovec per frame; a batch is BATCH consecutive frames of the ring.
    let mut iov: Vec<libc::iovec> =
        mine.iter().map(|f| libc::iovec { iov_base: f.as_ptr() as *mut _, iov_len: f.len() }).collect();
    let n = iov.len();
    let mut next = 0;
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH)
        // SAFETY: zeroed mmsghdr is valid.
        .map(|_| unsafe { std::mem::zeroed() })
        .collect();
    let mut total = 0u64;
    while !stop.load(Ordering::Relaxed) {
        for m in msgs.iter_mut() {
            m.msg_hdr.msg_iov = &mut iov[next];
            m.msg_hdr.msg_iovlen = 1;
            next = (next + 1) % n;
        }
        // SAFETY: msgs point at live iovecs and frames.
        let r = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), BATCH as u32, 0) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOBUFS) || e.raw_os_error() == Some(libc::EAGAIN) {
                continue;
            }
            // SAFETY: our fd.
            unsafe { libc::close(fd) };
            bail!("sendmmsg: {e}");
        }
        total += r as u64;
    }
    sent.fetch_add(total, Ordering::Relaxed);
    // SAFETY: our fd.
    unsafe { libc::close(fd) };
    Ok(())
}

/// Program attachments of one configuration, undone by [`detach`].
struct Attached {
    xdp: Vec<(&'static str, XdpLinkId)>,
    tc: Vec<(&'static str, SchedClassifierLinkId)>,
}

fn attach_xdp(ebpf: &mut Ebpf, prog: &'static str, ns: &str, ifindex: u32, att: &mut Attached) -> Result<()> {
    let p: &mut Xdp = ebpf.program_mut(prog).context("xdp program")?.try_into()?;
    // Links are created in the calling thread's namespace.
    let _in = InNetns::enter(ns)?;
    att.xdp.push((prog, p.attach_to_if_index(ifindex, XdpMode::Default).context("attaching XDP to the veth")?));
    Ok(())
}

fn attach_tc(ebpf: &mut Ebpf, prog: &'static str, ns: &str, ifname: &str, hook: TcAttachType, att: &mut Attached) -> Result<()> {
    let p: &mut SchedClassifier = ebpf.program_mut(prog).context("tc program")?.try_into()?;
    let _in = InNetns::enter(ns)?;
    att.tc.push((prog, p.attach(ifname, hook).context("attaching TC to the veth")?));
    Ok(())
}

fn attach(c: Config, agent: &mut Ebpf, bench: &mut Ebpf, t: &Topo, b_idx: u32) -> Result<Attached> {
    let mut att = Attached { xdp: vec![], tc: vec![] };
    let (ebpf, xdp_prog, tc_in_prog, tc_prog) = if c.agent() {
        (agent, INGRESS_PROGRAM, INGRESS_TC_PROGRAM, EGRESS_PROGRAM)
    } else {
        (bench, "bench_xdp_pass", "bench_tc_pass", "bench_tc_pass")
    };
    match c {
        Config::None => {}
        Config::PassXdp | Config::FlowlogXdp => {
            attach_xdp(ebpf, xdp_prog, &t.b, b_idx, &mut att)?;
            attach_tc(ebpf, tc_prog, &t.a, &t.a_if, TcAttachType::Egress, &mut att)?;
        }
        Config::PassTc | Config::FlowlogTc | Config::FlowlogTcHash | Config::TcCut(_) => {
            attach_tc(ebpf, tc_in_prog, &t.b, &t.b_if, TcAttachType::Ingress, &mut att)?;
            attach_tc(ebpf, tc_prog, &t.a, &t.a_if, TcAttachType::Egress, &mut att)?;
        }
    }
    Ok(att)
}

fn detach(c: Config, agent: &mut Ebpf, bench: &mut Ebpf, att: Attached) -> Result<()> {
    let ebpf = if c.agent() { agent } else { bench };
    for (prog, id) in att.xdp {
        let p: &mut Xdp = ebpf.program_mut(prog).unwrap().try_into()?;
        p.detach(id)?;
    }
    for (prog, id) in att.tc {
        let p: &mut SchedClassifier = ebpf.program_mut(prog).unwrap().try_into()?;
        p.detach(id)?;
    }
    Ok(())
}

/// Nanoseconds a thread has run, from the scheduler (/proc/.../schedstat).
fn runtime_ns(path: &str) -> u64 {
    fs::read_to_string(path).ok().and_then(|s| s.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

/// The softirq threads: receive work the senders' CPUs defer to them is
/// part of the cost of a packet.
fn ksoftirqd_stats() -> Vec<String> {
    let mut v = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let p = e.path();
        if fs::read_to_string(p.join("comm")).is_ok_and(|c| c.starts_with("ksoftirqd/")) {
            v.push(p.join("schedstat").display().to_string());
        }
    }
    v
}

/// One sample: senders on every CPU for `secs`. Returns b's received
/// packets/s and the CPU time spent per received packet (senders, which
/// also run the receive path inline, plus ksoftirqd).
fn sample(t: &Topo, frames: &Arc<Vec<Vec<u8>>>, senders: usize, secs: f64) -> Result<(f64, f64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let (tid_tx, tid_rx) = mpsc::channel();
    let handles: Vec<_> = (0..senders)
        .map(|cpu| {
            let (ns, ifname, frames, stop, sent) = (t.a.clone(), t.a_if.clone(), frames.clone(), stop.clone(), sent.clone());
            let tid_tx = tid_tx.clone();
            thread::spawn(move || {
                // SAFETY: no preconditions.
                let _ = tid_tx.send(unsafe { libc::gettid() });
                sender(ns, ifname, cpu, senders, frames, stop, sent)
            })
        })
        .collect();
    let mut stats: Vec<String> = (0..senders)
        .map(|_| tid_rx.recv().map(|tid| format!("/proc/self/task/{tid}/schedstat")))
        .collect::<Result<_, _>>()?;
    stats.extend(ksoftirqd_stats());
    let cpu = || stats.iter().map(|p| runtime_ns(p)).sum::<u64>();
    thread::sleep(Duration::from_millis(500)); // ramp up
    let (rx0, _, _) = if_counters(&t.b, &t.b_if)?;
    let (cpu0, t0) = (cpu(), Instant::now());
    thread::sleep(Duration::from_secs_f64(secs));
    let (rx1, _, _) = if_counters(&t.b, &t.b_if)?;
    let (cpu1, elapsed) = (cpu(), t0.elapsed().as_secs_f64());
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().map_err(|_| anyhow!("sender panicked"))??;
    }
    let received = (rx1 - rx0).max(1) as f64;
    Ok((received / elapsed, (cpu1 - cpu0) as f64 / received))
}

pub fn run(rounds: usize, secs: f64) -> Result<Results> {
    let senders = nproc();
    let (mut capture, mut tables): (Capture, FlowTables) =
        Capture::loader(65_536).table(TableKind::Slots).load()?;
    let (mut capture_hash, mut tables_hash): (Capture, FlowTables) =
        Capture::loader(65_536).table(TableKind::Hash).load()?;
    ensure!(!BENCH_OBJECT.is_empty(), "the benchmark programs were not built (FLOWLOG_EBPF_OBJECT is set)");
    let mut cut_captures = Vec::new();
    for cut in CUTS {
        cut_captures.push((cut, Capture::loader(65_536).table(TableKind::Slots).bench_cut(cut).load()?));
    }
    // XDP is verified on first use (Capture::xdp_program).
    capture.xdp_program()?;
    capture_hash.xdp_program()?;
    let mut bench = EbpfLoader::new().load(BENCH_OBJECT)?;
    let p: &mut Xdp = bench.program_mut("bench_xdp_pass").unwrap().try_into()?;
    p.load()?;
    let p: &mut SchedClassifier = bench.program_mut("bench_tc_pass").unwrap().try_into()?;
    p.load()?;
    // TC ingress on kernels before TCX needs the clsact qdisc; TCX does not.

    let t = Topo::new(senders, "")?;
    let b_idx = ifindex(&t.b, &t.b_if)?;
    let a_idx = ifindex(&t.a, &t.a_if)?;
    let frames: Arc<Vec<Vec<u8>>> =
        Arc::new((0..FLOWS).map(|i| tcp_frame(Family::V4, OTHER_MAC, A_MAC, 10_000 + i as u16)).collect());

    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); CONFIGS.len()];
    let mut costs: Vec<Vec<f64>> = vec![Vec::new(); CONFIGS.len()];
    let mut checked = 0u64;
    // Start from empty tables.
    let d = tables.rotate()?;
    tables.release(&d)?;
    let d = tables_hash.rotate()?;
    tables_hash.release(&d)?;
    for round in 0..rounds {
        // Configurations interleave, so a change of machine load hits all alike.
        for (i, c) in CONFIGS.into_iter().enumerate() {
            eprintln!("    round {}/{rounds}: {}", round + 1, c.name());
            let before_b = if_counters(&t.b, &t.b_if)?;
            let before_a = if_counters(&t.a, &t.a_if)?;
            let (agent, tables) = match c {
                Config::FlowlogTcHash => (&mut capture_hash, &mut tables_hash),
                Config::TcCut(cut) => {
                    let (_, (c, t)) = cut_captures.iter_mut().find(|(x, _)| *x == cut).expect("loaded above");
                    (c, t)
                }
                _ => (&mut capture, &mut tables),
            };
            let att = attach(c, agent.ebpf_mut(), &mut bench, &t, b_idx)?;
            let res = sample(&t, &frames, senders, secs);
            // Let the last packets in flight through before detaching.
            thread::sleep(Duration::from_millis(100));
            detach(c, agent.ebpf_mut(), &mut bench, att)?;
            let (rate, cost) = res?;
            rates[i].push(rate);
            costs[i].push(cost);
            if c.counts() {
                // Every packet counted once at each hook: what b received
                // (XDP / TC ingress), and what a sent or the veth dropped
                // after the TC egress hook.
                let after_b = if_counters(&t.b, &t.b_if)?;
                let after_a = if_counters(&t.a, &t.a_if)?;
                let want_in = after_b.0 - before_b.0;
                let want_out = (after_a.1 + after_a.2) - (before_a.1 + before_a.2);
                let d = tables.rotate()?;
                tables.release(&d)?;
                ensure!(d.fails.is_empty() && d.unattributed_failures == 0, "flow table full during the veth test");
                let by_dir = |dir| d.flows.iter().filter(|(k, _)| k.direction == dir).map(|(_, s)| s.packets).sum::<u64>();
                let (ing, eg) = (by_dir(direction::INGRESS), by_dir(direction::EGRESS));
                ensure!((ing, eg) == (want_in, want_out), "counted {ing}/{eg}, interfaces say {want_in}/{want_out}");
                checked += ing + eg;
            }
        }
    }
    let rows = CONFIGS
        .into_iter()
        .zip(rates.into_iter().zip(costs))
        .map(|(c, (mut r, mut k))| Row {
            config: c,
            rate: median(&mut r),
            cpu_ns: median(&mut k),
            cpu_range: (k[0], k[k.len() - 1]),
            rates: r,
        })
        .collect();
    let _ = a_idx;
    Ok(Results { rows, senders, secs, checked })
}

/// Where the TCP stream runs: its own veth pair with addresses (the frame
/// test's pair carries only its own frames, for the exact count check).
const TCP_A: &str = "10.250.0.1";
const TCP_B: &str = "10.250.0.2";
const TCP_PORT: u16 = 5201;
const TCP_CONFIGS: [Config; 3] = [Config::None, Config::FlowlogTc, Config::FlowlogXdp];

pub struct TcpRow {
    pub config: Config,
    /// Median bytes/s received.
    pub rate: f64,
    pub rates: Vec<f64>,
}

/// One TCP connection from `a` to `b` for `secs`, the sender writing 256 KiB
/// at a time: bytes/s that `b` read. On a veth such a stream crosses as GSO
/// super-packets of up to 64 KiB, so the hooks run once per ~45 wire
/// segments: the common case of bulk pod traffic.
fn tcp_sample(t: &Topo, secs: f64) -> Result<f64> {
    use std::io::{Read, Write};
    let addr: std::net::SocketAddr = format!("{TCP_B}:{TCP_PORT}").parse()?;
    let listener = {
        let _in = InNetns::enter(&t.b)?;
        std::net::TcpListener::bind(addr)?
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (ns_a, stop_tx) = (t.a.clone(), stop.clone());
    let sender = thread::spawn(move || -> Result<()> {
        let mut s = {
            let _in = InNetns::enter(&ns_a)?;
            std::net::TcpStream::connect(addr)?
        };
        let buf = vec![0x5au8; 256 << 10];
        while !stop_tx.load(Ordering::Relaxed) {
            s.write_all(&buf)?;
        }
        Ok(())
    });
    let (mut conn, _) = listener.accept()?;
    let mut buf = vec![0u8; 256 << 10];
    let mut read_for = |d: Duration| -> Result<u64> {
        let (t0, mut n) = (Instant::now(), 0u64);
        while t0.elapsed() < d {
            let r = conn.read(&mut buf)?;
            ensure!(r > 0, "TCP sender closed early");
            n += r as u64;
        }
        Ok(n)
    };
    read_for(Duration::from_millis(500))?; // ramp up
    let t0 = Instant::now();
    let n = read_for(Duration::from_secs_f64(secs))?;
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    // Unblock a sender waiting on a full window, then reap it.
    drop(conn);
    let _ = sender.join();
    Ok(rate)
}

pub fn run_tcp(rounds: usize, secs: f64) -> Result<Vec<TcpRow>> {
    let (mut capture, mut tables): (Capture, FlowTables) = Capture::loader(65_536).load()?;
    capture.xdp_program()?;
    let mut bench = EbpfLoader::new().load(BENCH_OBJECT)?;
    let t = Topo::new(nproc(), "t")?;
    sh(&["ip", "-n", &t.a, "addr", "add", &format!("{TCP_A}/24"), "dev", &t.a_if])?;
    sh(&["ip", "-n", &t.b, "addr", "add", &format!("{TCP_B}/24"), "dev", &t.b_if])?;
    let b_idx = ifindex(&t.b, &t.b_if)?;
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); TCP_CONFIGS.len()];
    for round in 0..rounds {
        for (i, c) in TCP_CONFIGS.into_iter().enumerate() {
            eprintln!("    TCP round {}/{rounds}: {}", round + 1, c.name());
            let att = attach(c, capture.ebpf_mut(), &mut bench, &t, b_idx)?;
            let res = tcp_sample(&t, secs);
            detach(c, capture.ebpf_mut(), &mut bench, att)?;
            rates[i].push(res?);
            if c.counts() {
                // The stream went through the agent's hooks and was counted.
                let d = tables.rotate()?;
                tables.release(&d)?;
                let port = |(k, _): &&(flowlog_common::FlowKey, flowlog_common::FlowStats)| k.dst_port == TCP_PORT || k.src_port == TCP_PORT;
                let bytes: u64 = d.flows.iter().filter(port).map(|(_, s)| s.bytes).sum();
                ensure!(bytes > 0, "the TCP stream was not counted");
            }
        }
    }
    Ok(TCP_CONFIGS
        .into_iter()
        .zip(rates)
        .map(|(config, mut r)| TcpRow { config, rate: median(&mut r), rates: r })
        .collect())
}

pub fn print_tcp(rows: &[TcpRow], secs: f64) {
    println!("### TCP stream on a veth pair (median of {} samples of {secs:.0} s per configuration)\n", rows[0].rates.len());
    println!(
        "One TCP connection from a to b (its own veth pair, addresses 10.250.0.1 → .2), writes of 256 KiB, \
         bytes read by b per second. Bulk TCP crosses a veth as GSO super-packets, so the hooks run once per up \
         to 64 KiB; the agent still counts wire segments (gso_segs).\n"
    );
    println!("| configuration | Gbit/s | vs none | samples (Gbit/s) |");
    println!("|---|---:|---:|---|");
    let base = rows[0].rate;
    for r in rows {
        let all = r.rates.iter().map(|x| format!("{:.1}", x * 8.0 / 1e9)).collect::<Vec<_>>().join(", ");
        println!("| {} | {:.1} | {:.0}% | {all} |", r.config.name(), r.rate * 8.0 / 1e9, r.rate / base * 100.0);
    }
    println!();
}

pub fn print(r: &Results) {
    println!("## 2. veth packet rate (median of {} samples of {:.0} s per configuration)
", r.rows[0].rates.len(), r.secs);
    println!(
        "{} sender threads (one per CPU, each with its own flows) in namespace a, AF_PACKET + sendmmsg ({BATCH} \
         frames per call), 60-byte IPv4 TCP frames, {FLOWS} flows; b drops them on entry (other host). \
         \"CPU/packet\": run time of the senders (which run the receive path too) and ksoftirqd per received packet; \
         its ratio is the rate ratio on a machine nobody else uses.\n",
        r.senders
    );
    let (base_rate, base_cpu) = (r.rows[0].rate, r.rows[0].cpu_ns);
    println!("| configuration | packets/s | vs none | CPU/packet (min–max) | rate vs none, by CPU | rate samples (M/s) |");
    println!("|---|---:|---:|---:|---:|---|");
    for row in &r.rows {
        let all = row.rates.iter().map(|x| format!("{:.2}", x / 1e6)).collect::<Vec<_>>().join(", ");
        println!(
            "| {} | {:.2} M | {:.0}% | {:.0} ns ({:.0}–{:.0}) | {:.0}% | {all} |",
            row.config.name(),
            row.rate / 1e6,
            row.rate / base_rate * 100.0,
            row.cpu_ns,
            row.cpu_range.0,
            row.cpu_range.1,
            base_cpu / row.cpu_ns * 100.0
        );
    }
    println!("\nEvery one of the {} packets that passed the agent's hooks was counted exactly once per hook.\n", r.checked);
}
