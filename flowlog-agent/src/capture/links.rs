//! Which interfaces to capture on, and their on-prem identifiers.

use std::{fs, io, path::Path};

use globset::{Glob, GlobMatcher};
use sha2::{Digest, Sha256};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub name: String,
    pub ifindex: u32,
    pub up: bool,
    pub loopback: bool,
}

const IFF_UP: u32 = 0x1;
const IFF_LOOPBACK: u32 = 0x8;

/// The links of the current network namespace, from /sys/class/net.
pub fn list_links() -> io::Result<Vec<LinkInfo>> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/sys/class/net")? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(l) = read_link(&name) {
            out.push(l);
        }
    }
    out.sort_by_key(|l| l.ifindex);
    Ok(out)
}

/// One link by name, or `None` if it does not exist (any more).
pub fn read_link(name: &str) -> Option<LinkInfo> {
    let dir = Path::new("/sys/class/net").join(name);
    let read = |f: &str| fs::read_to_string(dir.join(f)).ok().map(|s| s.trim().to_string());
    let ifindex = read("ifindex")?.parse().ok()?;
    let flags = u32::from_str_radix(read("flags")?.trim_start_matches("0x"), 16).ok()?;
    Some(LinkInfo { name: name.to_string(), ifindex, up: flags & IFF_UP != 0, loopback: flags & IFF_LOOPBACK != 0 })
}

/// What a device's packets start with at TC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Header {
    /// An Ethernet header (also loopback's, and any type not known below).
    Ethernet,
    /// The IP header: no link-layer header at all.
    Ip,
}

/// Device types (`/sys/class/net/<if>/type`, ARPHRD_* in linux/if_arp.h)
/// whose packets have no link-layer header at TC: tun and wireguard
/// (NONE), ipip (TUNNEL), ip6tnl (TUNNEL6), sit, gre (IPGRE), ip6gre,
/// rmnet/qmi (RAWIP) and ppp (whose header is added after TC and removed
/// before it). Ethernet is 1; gretap, vxlan, bridges, bonds, vlans,
/// macvlans and veths are all Ethernet.
pub const IP_HEADER_TYPES: [u16; 8] = [65534, 768, 769, 776, 778, 823, 519, 512];

pub fn header_of_type(ty: u16) -> Header {
    if IP_HEADER_TYPES.contains(&ty) {
        Header::Ip
    } else {
        Header::Ethernet
    }
}

/// What the packets of `name` start with; Ethernet if its type cannot be read.
pub fn link_header(name: &str) -> Header {
    device_type(name).map_or(Header::Ethernet, header_of_type)
}

/// The device type (`/sys/class/net/<if>/type`), asked of the kernel
/// (SIOCGIFHWADDR) rather than sysfs, which shows the namespace that
/// mounted it.
pub fn device_type(name: &str) -> Option<u16> {
    if name.len() >= libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: zeroed ifreq is valid; plain socket/ioctl, fd closed below.
    unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in name.bytes().enumerate() {
            req.ifr_name[i] = b as libc::c_char;
        }
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return None;
        }
        let r = libc::ioctl(fd, libc::SIOCGIFHWADDR as _, &mut req);
        libc::close(fd);
        (r == 0).then_some(req.ifr_ifru.ifru_hwaddr.sa_family)
    }
}

/// The interface's driver name as `ethtool -i` shows it (`veth`, `ena`,
/// `virtio_net`...), or `None` where the device does not say.
pub fn driver(name: &str) -> Option<String> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GDRVINFO: u32 = 0x3;
    /// `struct ethtool_drvinfo`.
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 160],
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut DrvInfo,
        _pad: [u8; 16],
    }
    if name.len() >= libc::IFNAMSIZ {
        return None;
    }
    let mut info = DrvInfo { cmd: ETHTOOL_GDRVINFO, driver: [0; 32], rest: [0; 160] };
    let mut req = IfReq { name: [0; libc::IFNAMSIZ], data: &mut info, _pad: [0; 16] };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: plain socket(2); the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: req points at a valid ifreq whose data points at a drvinfo
    // buffer of the size the kernel writes.
    let r = unsafe { libc::ioctl(fd, SIOCETHTOOL as _, &mut req) };
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    if r != 0 {
        return None;
    }
    let len = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    Some(String::from_utf8_lossy(&info.driver[..len]).into_owned()).filter(|d| !d.is_empty())
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectError {
    #[error("no such interface: {name}. Interfaces here: {available}. (`ip link` lists them; inside a container, check that it runs with the host network.)")]
    NoSuchInterface { name: String, available: String },
    #[error("invalid interface pattern {pattern:?}: {reason}")]
    BadPattern { pattern: String, reason: String },
}

fn is_glob(p: &str) -> bool {
    p.contains(['*', '?', '['])
}

/// Which interfaces the agent captures on, now and as links come and go.
#[derive(Clone, Debug)]
pub struct Selector {
    names: Vec<String>,
    globs: Vec<GlobMatcher>,
    excludes: Vec<GlobMatcher>,
}

impl Selector {
    /// `include`: names or globs (`veth*`); empty means every interface that
    /// is up, except loopback. `exclude`: globs that win over `include`.
    pub fn new(include: &[String], exclude: &[String]) -> Result<Selector, SelectError> {
        let glob = |p: &String| {
            Glob::new(p)
                .map(|g| g.compile_matcher())
                .map_err(|e| SelectError::BadPattern { pattern: p.clone(), reason: e.kind().to_string() })
        };
        Ok(Selector {
            names: include.iter().filter(|p| !is_glob(p)).cloned().collect(),
            globs: include.iter().filter(|p| is_glob(p)).map(glob).collect::<Result<_, _>>()?,
            excludes: exclude.iter().map(glob).collect::<Result<_, _>>()?,
        })
    }

    pub fn wants(&self, l: &LinkInfo) -> bool {
        if self.excludes.iter().any(|m| m.is_match(&l.name)) {
            return false;
        }
        if self.names.is_empty() && self.globs.is_empty() {
            return l.up && !l.loopback;
        }
        self.names.contains(&l.name) || self.globs.iter().any(|m| m.is_match(&l.name))
    }

    /// The interfaces to attach to at start. A plain name that does not
    /// exist is an error (a typo would otherwise go unnoticed); globs may
    /// match nothing yet: interfaces that appear later are attached then.
    pub fn select(&self, links: &[LinkInfo]) -> Result<Vec<LinkInfo>, SelectError> {
        if let Some(missing) = self.names.iter().find(|n| !links.iter().any(|l| &&l.name == n)) {
            let names: Vec<&str> = links.iter().map(|l| l.name.as_str()).collect();
            let available = if names.is_empty() { "none".to_string() } else { names.join(", ") };
            return Err(SelectError::NoSuchInterface { name: missing.clone(), available });
        }
        Ok(links.iter().filter(|l| self.wants(l)).cloned().collect())
    }
}

/// [`Selector::select`] without excludes.
pub fn select(patterns: &[String], links: &[LinkInfo]) -> Result<Vec<LinkInfo>, SelectError> {
    Selector::new(patterns, &[])?.select(links)
}

/// A stable on-prem `interface-id`: `eni-` and 17 hex digits (the shape of
/// an AWS ENI id) from SHA-256 of `<machine-id>:<interface name>`. Stable
/// across restarts and reboots of the same host, distinct between hosts.
pub fn derived_interface_id(machine_id: &str, name: &str) -> String {
    let digest = Sha256::digest(format!("{machine_id}:{name}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("eni-{}", &hex[..17])
}

/// /etc/machine-id, or the hostname where there is none.
pub fn machine_id() -> String {
    for p in ["/etc/machine-id", "/var/lib/dbus/machine-id", "/proc/sys/kernel/hostname"] {
        if let Ok(s) = fs::read_to_string(p) {
            let s = s.trim();
            if !s.is_empty() {
                return s.to_string();
            }
        }
    }
    "unknown-host".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links() -> Vec<LinkInfo> {
        let l = |name: &str, ifindex, up, loopback| LinkInfo { name: name.into(), ifindex, up, loopback };
        vec![l("lo", 1, true, true), l("eth0", 2, true, false), l("veth1", 5, true, false), l("veth2", 6, false, false), l("docker0", 7, false, false)]
    }
    fn names(v: &[LinkInfo]) -> Vec<&str> {
        v.iter().map(|l| l.name.as_str()).collect()
    }

    #[test]
    fn default_is_every_up_non_loopback_interface() {
        assert_eq!(names(&select(&[], &links()).unwrap()), ["eth0", "veth1"]);
    }

    #[test]
    fn names_and_globs() {
        let p = vec!["eth0".to_string(), "veth*".to_string()];
        assert_eq!(names(&select(&p, &links()).unwrap()), ["eth0", "veth1", "veth2"]);
    }

    #[test]
    fn unknown_name_is_an_error_naming_it() {
        let e = select(&["eth9".to_string()], &links()).unwrap_err();
        assert_eq!(e, SelectError::NoSuchInterface { name: "eth9".into(), available: "lo, eth0, veth1, veth2, docker0".into() });
        assert!(e.to_string().starts_with("no such interface: eth9."));
    }

    #[test]
    fn globs_may_match_nothing_yet() {
        assert_eq!(select(&["wlan*".to_string()], &links()).unwrap(), []);
        assert_eq!(names(&select(&["wlan*".to_string(), "eth0".to_string()], &links()).unwrap()), ["eth0"]);
    }

    #[test]
    fn excludes_win_and_hot_plugged_links_are_judged_alike() {
        let s = Selector::new(&["veth*".to_string(), "eth0".to_string()], &["veth2".to_string(), "eth*".to_string()]).unwrap();
        assert_eq!(names(&s.select(&links()).unwrap()), ["veth1"]);
        let new = |name: &str, up| LinkInfo { name: name.into(), ifindex: 99, up, loopback: false };
        assert!(s.wants(&new("veth9", false)));
        assert!(!s.wants(&new("docker1", true)));
        // Default: what is up and not loopback, minus excludes.
        let d = Selector::new(&[], &["docker*".to_string()]).unwrap();
        assert!(d.wants(&new("cali1", true)) && !d.wants(&new("cali2", false)) && !d.wants(&new("docker0", true)));
    }

    #[test]
    fn device_types_without_a_link_header() {
        // ARPHRD_ETHER, LOOPBACK, and an unknown type: Ethernet.
        for ty in [1, 772, 32] {
            assert_eq!(header_of_type(ty), Header::Ethernet, "{ty}");
        }
        // NONE (tun, wireguard), TUNNEL (ipip), SIT, IPGRE, TUNNEL6, IP6GRE.
        for ty in [65534, 768, 776, 778, 769, 823] {
            assert_eq!(header_of_type(ty), Header::Ip, "{ty}");
        }
    }

    #[test]
    fn bad_glob_is_reported() {
        assert!(matches!(select(&["veth[".to_string()], &links()), Err(SelectError::BadPattern { .. })));
    }

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        let a = derived_interface_id("m1", "eth0");
        assert_eq!(a, derived_interface_id("m1", "eth0"));
        assert_ne!(a, derived_interface_id("m1", "eth1"));
        assert_ne!(a, derived_interface_id("m2", "eth0"));
        assert_eq!(a.len(), 21);
        assert!(a.starts_with("eni-") && a[4..].chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }
}
