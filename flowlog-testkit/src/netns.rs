//! Network namespaces for the agent's integration tests: namespaces that
//! remove themselves, the two-namespace topology most tests use ([`Topo`]),
//! and an AF_PACKET capture that counts wire segments. Everything here
//! touches only the namespaces and links a test creates, with iproute2 and
//! ethtool (also inside the kernel matrix's VMs).

use std::{
    collections::BTreeMap,
    fmt, fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    thread,
};

use crate::agent::{Totals, Tuple};

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
    spawn_in_netns_file(format!("/run/netns/{ns}"), f)
}

pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    spawn_in_netns(ns, f).join().unwrap()
}

/// [`spawn_in_netns`] for a namespace named by its file (a container
/// runtime's pod netns, `/proc/PID/ns/net`), not by an `ip netns` name.
pub fn spawn_in_netns_file<T: Send + 'static>(
    path: impl Into<std::path::PathBuf>,
    f: impl FnOnce() -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    let path = path.into();
    thread::spawn(move || {
        let fd = fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // SAFETY: valid netns fd; only this thread changes namespace.
        assert_eq!(unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns {}", path.display());
        f()
    })
}

pub fn in_netns_file<T: Send + 'static>(path: impl Into<std::path::PathBuf>, f: impl FnOnce() -> T + Send + 'static) -> T {
    spawn_in_netns_file(path, f).join().unwrap()
}

/// A named network namespace (`ip netns add`), deleted on drop with all its links.
pub struct Netns(pub String);

impl Netns {
    pub fn new(tag: &str) -> Netns {
        Netns::add(format!("fld-{}-{}-{tag}", std::process::id() % 100_000, next_id()))
    }

    fn add(name: String) -> Netns {
        sh(&["ip", "netns", "add", &name]);
        // Owned from here: a failure below still removes it.
        let ns = Netns(name);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
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

    /// What `ethtool -S` prints for an interface of the namespace: each
    /// driver statistic's name and value.
    pub fn ethtool_stats(&self, ifname: &str) -> BTreeMap<String, u64> {
        let text = self.try_exec(&["ethtool", "-S", ifname]).unwrap_or_else(|e| panic!("{e}"));
        text.lines()
            .skip_while(|l| !l.ends_with("statistics:"))
            .skip(1)
            .map(|l| {
                let (k, val) = l.trim().rsplit_once(": ").unwrap_or_else(|| panic!("ethtool -S line {l:?}"));
                (k.to_string(), val.parse().unwrap_or_else(|e| panic!("ethtool -S line {l:?}: {e}")))
            })
            .collect()
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

/// A namespace stands for its name wherever a name is wanted (`ip -n`,
/// [`in_netns`], format strings).
impl std::ops::Deref for Netns {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Netns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Two namespaces `a` and `b` joined by a veth `a_if` <-> `b_if`, with
/// 10.<net>.<n>.1/.2 and (with IPv6) fd00:<net>:<n>::1/::2, where `n` is
/// unique in the test process; offloads off: one skb = one wire packet, so
/// a packet capture is the exact reference for TCP (GSO accounting has
/// tests of its own). Removed on drop.
pub struct Topo {
    pub a: Netns,
    pub b: Netns,
    pub a_if: String,
    pub b_if: String,
    pub a4: Ipv4Addr,
    pub b4: Ipv4Addr,
    pub a6: Ipv6Addr,
    pub b6: Ipv6Addr,
}

impl Topo {
    /// Interfaces `fla<id>` and `flb<id>`.
    pub fn new(net: u8, ipv6: bool) -> Topo {
        Topo::with_a_if("fla", net, ipv6)
    }

    /// `a`'s interface named `<prefix><id>` (`ens` for a pattern that
    /// matches node NICs), at most 15 bytes with a 3-byte prefix.
    pub fn with_a_if(prefix: &str, net: u8, ipv6: bool) -> Topo {
        let n = next_id();
        let id = format!("{}{n}", std::process::id() % 100_000);
        let sub = (n % 250 + 1) as u8;
        let t = Topo {
            a: Netns::add(format!("flt-{id}-a")),
            b: Netns::add(format!("flt-{id}-b")),
            a_if: format!("{prefix}{id}"),
            b_if: format!("flb{id}"),
            a4: Ipv4Addr::new(10, net, sub, 1),
            b4: Ipv4Addr::new(10, net, sub, 2),
            a6: Ipv6Addr::new(0xfd00, net.into(), sub.into(), 0, 0, 0, 0, 1),
            b6: Ipv6Addr::new(0xfd00, net.into(), sub.into(), 0, 0, 0, 0, 2),
        };
        t.a.ip(&["link", "add", &t.a_if, "type", "veth", "peer", "name", &t.b_if, "netns", &t.b]);
        for (ns, ifname, v4, v6) in [(&t.a, &t.a_if, t.a4, t.a6), (&t.b, &t.b_if, t.b4, t.b6)] {
            let disable = if ipv6 { "0" } else { "1" };
            ns.exec(&["sysctl", "-qw", &format!("net.ipv6.conf.{ifname}.disable_ipv6={disable}")]);
            ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", ifname]);
            if ipv6 {
                ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", ifname, "nodad"]);
            }
            ns.exec(&["ethtool", "-K", ifname, "tso", "off", "gso", "off", "gro", "off"]);
            ns.ip(&["link", "set", ifname, "up"]);
        }
        t
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
        self.read(|key, packets, bytes, _| {
            let e = m.entry(key).or_insert((0, 0));
            e.0 += packets;
            e.1 += bytes;
        });
        m
    }

    /// TCP only, per (tuple, direction): wire packets, IP bytes, and the
    /// segments' flags OR-ed as AWS's `tcp-flags` has them (FIN 1, SYN 2,
    /// RST 4, SYN-ACK 18). Reads everything captured so far.
    pub fn tcp_totals(&self) -> BTreeMap<(Tuple, String), (u64, u64, u8)> {
        let mut m = BTreeMap::new();
        self.read(|key, packets, bytes, raw| {
            if key.0 .4 != 6 {
                return;
            }
            let aws = (raw & 0x07) | if raw & 0x12 == 0x12 { 0x12 } else { 0 };
            let e = m.entry(key).or_insert((0, 0, 0));
            e.0 += packets;
            e.1 += bytes;
            e.2 |= aws;
        });
        m
    }

    /// Calls `f` with (tuple, direction), wire packets, IP bytes and the
    /// raw TCP flags (0 for UDP) of every TCP or UDP frame captured so far.
    fn read(&self, mut f: impl FnMut((Tuple, String), u64, u64, u8)) {
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            // SAFETY: valid buffers.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of_val(&sll) as u32;
            let n = unsafe { libc::recvfrom(self.fd.as_raw_fd(), buf.as_mut_ptr() as *mut _, buf.len(), 0, &mut sll as *mut _ as *mut _, &mut len) };
            if n <= 0 {
                return;
            }
            let Some((t, tot, hdr, flags)) = parse_frame(&buf[VNET_HDR_LEN..n as usize], self.l3) else { continue };
            let gso_type = buf[1];
            let gso_size = u16::from_ne_bytes([buf[4], buf[5]]) as u64;
            let (packets, bytes) = if gso_type != 0 && gso_size > 0 {
                let segs = (tot - hdr).div_ceil(gso_size).max(1);
                (segs, tot + (segs - 1) * hdr)
            } else {
                (1, tot)
            };
            let dir = if sll.sll_pkttype == libc::PACKET_OUTGOING { "egress" } else { "ingress" };
            f((t, dir.to_string()), packets, bytes, flags);
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

/// (tuple, IP length, IP + L4 header length, TCP flags or 0) of a TCP or
/// UDP packet.
fn parse_frame(f: &[u8], l3: bool) -> Option<(Tuple, u64, u64, u8)> {
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
    let flags = if proto == 6 { l4h[13] } else { 0 };
    Some((t, tot, (l4 + hdr) as u64, flags))
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
