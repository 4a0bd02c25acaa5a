//! Network-namespace harness for the agent's integration tests (tests/devices.rs):
//! namespaces that remove themselves, a running agent with its records, and
//! an AF_PACKET capture that counts wire segments. Everything here touches
//! only the namespaces and links a test creates.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead, BufReader},
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc, Arc, Mutex,
    },
    thread,
    time::Duration,
};

static NEXT: AtomicU32 = AtomicU32::new(1);

/// A number unique in this test process (names, subnets).
pub fn next_id() -> u32 {
    NEXT.fetch_add(1, Ordering::SeqCst)
}

pub fn sh(args: &[&str]) {
    if let Err(e) = try_sh(args) {
        panic!("{e}");
    }
}

/// Runs a command; the error names it and carries its stderr.
pub fn try_sh(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0]).args(&args[1..]).output().map_err(|e| format!("{args:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{args:?}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Runs `f` on a new thread inside network namespace `ns`. Sockets it
/// creates belong to that namespace and can be used from any thread.
pub fn spawn_in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    thread::spawn(move || {
        let fd = fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: valid netns fd; only this thread changes namespace.
        assert_eq!(unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns {path}");
        f()
    })
}

pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    spawn_in_netns(ns, f).join().unwrap()
}

/// A named network namespace (`ip netns add`), deleted on drop with all its links.
pub struct Netns(pub String);

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!("fld-{}-{}-{tag}", std::process::id() % 100_000, next_id());
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Netns(name)
    }

    pub fn name(&self) -> &str {
        &self.0
    }

    /// `ip -n <ns> args...`
    pub fn ip(&self, args: &[&str]) {
        let mut v = vec!["ip", "-n", &self.0];
        v.extend_from_slice(args);
        sh(&v);
    }

    pub fn try_ip(&self, args: &[&str]) -> Result<String, String> {
        let mut v = vec!["ip", "-n", &self.0];
        v.extend_from_slice(args);
        try_sh(&v)
    }

    /// A command run inside the namespace (`ip netns exec`).
    pub fn exec(&self, args: &[&str]) {
        let mut v = vec!["ip", "netns", "exec", &self.0];
        v.extend_from_slice(args);
        sh(&v);
    }

    pub fn try_exec(&self, args: &[&str]) -> Result<String, String> {
        let mut v = vec!["ip", "netns", "exec", &self.0];
        v.extend_from_slice(args);
        try_sh(&v)
    }

    /// Sets offloads (`ethtool -K`); features a device lacks are ignored.
    pub fn offloads(&self, ifname: &str, on: bool) {
        let v = if on { "on" } else { "off" };
        for f in ["tso", "gso", "gro"] {
            let _ = self.try_exec(&["ethtool", "-K", ifname, f, v]);
        }
    }

    pub fn ifindex(&self, ifname: &str) -> u32 {
        let n = ifname.to_string();
        in_netns(&self.0, move || {
            let c = std::ffi::CString::new(n).unwrap();
            // SAFETY: valid C string.
            unsafe { libc::if_nametoindex(c.as_ptr()) }
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// `ip link add` of a kind whose module may be missing: `Err` is the line to
/// print (`SKIP: <test>: no <module> module in this kernel`) for a kernel
/// that does not know the kind; other failures panic.
pub fn link_add(ns: &Netns, test: &str, module: &str, args: &[&str]) -> Result<(), String> {
    let mut v = vec!["link", "add"];
    v.extend_from_slice(args);
    match ns.try_ip(&v) {
        Ok(_) => Ok(()),
        Err(e) if e.contains("Unknown device type") || e.contains("not supported") || e.contains("No such device") || e.contains("Operation not supported") => {
            Err(format!("SKIP: {test}: no {module} module in this kernel ({e})"))
        }
        Err(e) => panic!("{e}"),
    }
}

/// A running agent in one namespace.
pub struct Agent {
    child: Child,
    out: PathBuf,
    stderr: Arc<Mutex<String>>,
}

impl Agent {
    /// Starts `exe` (the agent binary) in `ns` on `ifaces`, `--no-pin`,
    /// records to a file; returns once it logged `ready`.
    pub fn start(exe: &Path, ns: &str, ifaces: &[&str], extra: &[&str]) -> Agent {
        let out = std::env::temp_dir().join(format!("flowlog-dev-{ns}-{}.log", next_id()));
        let _ = fs::remove_file(&out);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(exe);
        for i in ifaces {
            cmd.args(["--iface", i]);
        }
        cmd.args(["--output", &format!("file:{}", out.display())]).args(extra).arg("--no-pin");
        let mut child = cmd.stderr(Stdio::piped()).stdout(Stdio::null()).spawn().expect("start agent");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let pipe = child.stderr.take().unwrap();
        let log = stderr.clone();
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if line.contains(" ready ") || line.contains(r#""message":"ready""#) {
                    let _ = ready_tx.send(());
                }
                let mut l = log.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        if ready_rx.recv_timeout(Duration::from_secs(120)).is_err() {
            let _ = child.kill();
            panic!("agent not ready: {}", stderr.lock().unwrap());
        }
        Agent { child, out, stderr }
    }

    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// SIGTERM → final drain → exit 0; returns the records and the log.
    pub fn stop(mut self) -> (Vec<Rec>, String) {
        // SAFETY: plain kill(2) on our child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        thread::sleep(Duration::from_millis(50));
        let log = self.stderr.lock().unwrap().clone();
        assert!(status.success(), "agent exit {status}: {log}");
        let text = fs::read_to_string(&self.out).unwrap_or_default();
        let _ = fs::remove_file(&self.out);
        (text.lines().map(Rec::parse).collect(), log)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `ingress="..."` the agent logged when it attached to `iface`.
pub fn attach_hook(log: &str, iface: &str) -> Option<String> {
    log.lines().filter(|l| l.contains("attached") && l.contains(&format!("iface={iface}"))).find_map(|l| {
        let i = l.find("ingress=")? + "ingress=".len();
        Some(l[i..].trim_start_matches('"').split(['"', ' ']).next()?.to_string())
    })
}

/// A record of the agent's default (version 2-5) text format with these fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rec {
    pub interface_id: String,
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    pub proto: Option<u8>,
    pub packets: u64,
    pub bytes: u64,
    pub status: String,
    pub tcp_flags: Option<u8>,
    pub direction: String,
}

/// The `--format` the records are parsed with.
pub const FORMAT: &str = "${version} ${interface-id} ${srcaddr} ${dstaddr} ${srcport} ${dstport} ${protocol} ${packets} ${bytes} ${start} ${end} ${action} ${log-status} ${tcp-flags} ${flow-direction}";

impl Rec {
    pub fn parse(line: &str) -> Rec {
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!(f.len(), 15, "{line:?}");
        fn opt<T: std::str::FromStr>(s: &str) -> Option<T> {
            if s == "-" { None } else { Some(s.parse().ok().unwrap_or_else(|| panic!("bad field {s:?}"))) }
        }
        Rec {
            interface_id: f[1].into(),
            src: opt(f[2]),
            dst: opt(f[3]),
            sport: opt(f[4]),
            dport: opt(f[5]),
            proto: opt(f[6]),
            packets: opt(f[7]).unwrap_or(0),
            bytes: opt(f[8]).unwrap_or(0),
            status: f[12].into(),
            tcp_flags: opt(f[13]),
            direction: f[14].into(),
        }
    }
}

pub type Tuple = (IpAddr, IpAddr, u16, u16, u8);
/// Per (5-tuple, direction): packets, bytes.
pub type Totals = BTreeMap<(Tuple, String), (u64, u64)>;

/// Sums of the OK records per (5-tuple, direction).
pub fn totals(recs: &[Rec]) -> Totals {
    let mut m = BTreeMap::new();
    for r in recs.iter().filter(|r| r.status == "OK") {
        let key = ((r.src.unwrap(), r.dst.unwrap(), r.sport.unwrap(), r.dport.unwrap(), r.proto.unwrap()), r.direction.clone());
        let e = m.entry(key).or_insert((0, 0));
        e.0 += r.packets;
        e.1 += r.bytes;
    }
    m
}

/// Only the entries of one protocol.
pub fn of_proto(m: &Totals, proto: u8) -> Totals {
    m.iter().filter(|((t, _), _)| t.4 == proto).map(|(k, v)| (k.clone(), *v)).collect()
}

/// Swaps the direction of every entry: what one end sends, the other receives.
pub fn mirrored(m: &Totals) -> Totals {
    m.iter()
        .map(|((t, d), v)| ((*t, if d == "egress" { "ingress".to_string() } else { "egress".to_string() }), *v))
        .collect()
}

/// `struct virtio_net_hdr` (PACKET_VNET_HDR): how the kernel describes a
/// GSO super-packet to a packet socket.
const VNET_HDR_LEN: usize = 10;
const PACKET_VNET_HDR: libc::c_int = 15;

/// AF_PACKET capture of every frame on an interface, both directions, with
/// the GSO metadata of each (PACKET_VNET_HDR): a super-packet (TSO/GSO on,
/// or merged by GRO) is counted as the wire segments it stands for, each
/// with its own copy of the IP and L4 headers. With `l3`, frames start at
/// the IP header (tun, wireguard).
pub struct Capture {
    fd: OwnedFd,
    l3: bool,
}

impl Capture {
    pub fn open(ns: &str, ifname: &str) -> Capture {
        let ifname = ifname.to_string();
        let l3 = fs_type_in(ns, &ifname) != 1;
        in_netns(ns, move || {
            // SAFETY: plain socket/bind calls with valid arguments.
            unsafe {
                let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_NONBLOCK, (libc::ETH_P_ALL as u16).to_be() as i32);
                assert!(fd >= 0);
                let fd = OwnedFd::from_raw_fd(fd);
                let size: libc::c_int = 64 << 20;
                libc::setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &size as *const _ as *const _, 4);
                let one: libc::c_int = 1;
                assert_eq!(libc::setsockopt(fd.as_raw_fd(), libc::SOL_PACKET, PACKET_VNET_HDR, &one as *const _ as *const _, 4), 0);
                let name = std::ffi::CString::new(ifname).unwrap();
                let mut sll: libc::sockaddr_ll = std::mem::zeroed();
                sll.sll_family = libc::AF_PACKET as u16;
                sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
                sll.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
                assert_eq!(libc::bind(fd.as_raw_fd(), &sll as *const _ as *const _, std::mem::size_of_val(&sll) as u32), 0);
                Capture { fd, l3 }
            }
        })
    }

    /// Per (tuple, direction) of TCP and UDP over IPv4/IPv6: wire packets
    /// and IP bytes. Reads everything captured so far.
    pub fn totals(&self) -> Totals {
        let mut m = BTreeMap::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            // SAFETY: valid buffers.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of_val(&sll) as u32;
            let n = unsafe { libc::recvfrom(self.fd.as_raw_fd(), buf.as_mut_ptr() as *mut _, buf.len(), 0, &mut sll as *mut _ as *mut _, &mut len) };
            if n <= 0 {
                return m;
            }
            let Some((t, tot, hdr)) = parse_frame(&buf[VNET_HDR_LEN..n as usize], self.l3) else { continue };
            let gso_type = buf[1];
            let gso_size = u16::from_ne_bytes([buf[4], buf[5]]) as u64;
            let (packets, bytes) = if gso_type != 0 && gso_size > 0 {
                let segs = (tot - hdr).div_ceil(gso_size).max(1);
                (segs, tot + (segs - 1) * hdr)
            } else {
                (1, tot)
            };
            let dir = if sll.sll_pkttype == libc::PACKET_OUTGOING as u8 { "egress" } else { "ingress" };
            let e = m.entry((t, dir.to_string())).or_insert((0, 0));
            e.0 += packets;
            e.1 += bytes;
        }
    }
}

fn fs_type_in(ns: &str, ifname: &str) -> u16 {
    let n = ifname.to_string();
    in_netns(ns, move || {
        // /sys shows the namespace that mounted it: ask the kernel instead.
        let c = std::ffi::CString::new(n).unwrap();
        // SAFETY: plain socket/ioctl with a valid ifreq.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            let mut req: libc::ifreq = std::mem::zeroed();
            for (i, b) in c.as_bytes().iter().enumerate() {
                req.ifr_name[i] = *b as libc::c_char;
            }
            let r = libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut req);
            libc::close(fd);
            assert_eq!(r, 0, "SIOCGIFHWADDR");
            req.ifr_ifru.ifru_hwaddr.sa_family
        }
    })
}

/// (tuple, IP length, IP + L4 header length) of a TCP or UDP packet.
fn parse_frame(f: &[u8], l3: bool) -> Option<(Tuple, u64, u64)> {
    let ip = if l3 {
        f
    } else {
        if f.len() < 14 {
            return None;
        }
        match [f[12], f[13]] {
            [0x08, 0x00] | [0x86, 0xdd] => &f[14..],
            _ => return None,
        }
    };
    let (src, dst, proto, l4, tot): (IpAddr, IpAddr, u8, usize, u64) = match ip.first()? >> 4 {
        4 if ip.len() >= 20 => {
            let ihl = ((ip[0] & 0xf) * 4) as usize;
            let mut tot = u16::from_be_bytes([ip[2], ip[3]]) as u64;
            if tot == 0 {
                tot = ip.len() as u64;
            }
            (IpAddr::from([ip[12], ip[13], ip[14], ip[15]]), IpAddr::from([ip[16], ip[17], ip[18], ip[19]]), ip[9], ihl, tot)
        }
        6 if ip.len() >= 40 => {
            let s: [u8; 16] = ip[8..24].try_into().unwrap();
            let d: [u8; 16] = ip[24..40].try_into().unwrap();
            let pl = u16::from_be_bytes([ip[4], ip[5]]) as u64;
            let tot = if pl == 0 { ip.len() as u64 } else { 40 + pl };
            (IpAddr::from(s), IpAddr::from(d), ip[6], 40, tot)
        }
        _ => return None,
    };
    let l4h = ip.get(l4..)?;
    let hdr = match proto {
        6 if l4h.len() >= 20 => (l4h[12] >> 4) as usize * 4,
        17 if l4h.len() >= 8 => 8,
        _ => return None,
    };
    let t = (src, dst, u16::from_be_bytes([l4h[0], l4h[1]]), u16::from_be_bytes([l4h[2], l4h[3]]), proto);
    Some((t, tot, (l4 + hdr) as u64))
}

/// A tun device (IFF_TUN, no packet information) in the calling thread's
/// namespace; the fd reads what the stack sends to it and writes packets
/// the stack receives from it.
pub fn open_tun(name: &str) -> OwnedFd {
    const TUNSETIFF: libc::c_ulong = 0x400454ca;
    const IFF_TUN: libc::c_short = 0x0001;
    const IFF_NO_PI: libc::c_short = 0x1000;
    // SAFETY: open/ioctl with a valid path and ifreq.
    unsafe {
        let fd = libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        assert!(fd >= 0, "/dev/net/tun: {}", std::io::Error::last_os_error());
        let fd = OwnedFd::from_raw_fd(fd);
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in name.bytes().enumerate() {
            req.ifr_name[i] = b as libc::c_char;
        }
        req.ifr_ifru.ifru_flags = IFF_TUN | IFF_NO_PI;
        assert_eq!(libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, &mut req), 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
        fd
    }
}
