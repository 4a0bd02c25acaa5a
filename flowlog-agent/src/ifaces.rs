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

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectError {
    #[error("no such interface: {name}. Interfaces here: {available}. (`ip link` lists them; inside a container, check that it runs with the host network.)")]
    NoSuchInterface { name: String, available: String },
    #[error("invalid interface pattern {pattern:?}: {reason}")]
    BadPattern { pattern: String, reason: String },
    #[error("no interface to capture on: {why}. Interfaces here: {available}. Name them with --iface.")]
    Nothing { why: String, available: String },
}

fn is_glob(p: &str) -> bool {
    p.contains(['*', '?', '['])
}

/// Interfaces matched by `patterns` (names or globs such as `veth*`); with no
/// pattern, every interface that is up and not a loopback. A plain name that
/// does not exist is an error, a glob that matches nothing is not (pods come
/// and go), but selecting nothing at all is.
pub fn select(patterns: &[String], links: &[LinkInfo]) -> Result<Vec<LinkInfo>, SelectError> {
    let available = || {
        let names: Vec<&str> = links.iter().map(|l| l.name.as_str()).collect();
        if names.is_empty() { "none".to_string() } else { names.join(", ") }
    };
    if patterns.is_empty() {
        let v: Vec<LinkInfo> = links.iter().filter(|l| l.up && !l.loopback).cloned().collect();
        if v.is_empty() {
            return Err(SelectError::Nothing { why: "no interface is up besides loopback".into(), available: available() });
        }
        return Ok(v);
    }
    let mut matchers: Vec<GlobMatcher> = Vec::new();
    for p in patterns {
        if is_glob(p) {
            let g = Glob::new(p).map_err(|e| SelectError::BadPattern { pattern: p.clone(), reason: e.kind().to_string() })?;
            matchers.push(g.compile_matcher());
        } else if !links.iter().any(|l| &l.name == p) {
            return Err(SelectError::NoSuchInterface { name: p.clone(), available: available() });
        }
    }
    let v: Vec<LinkInfo> = links
        .iter()
        .filter(|l| patterns.iter().any(|p| p == &l.name) || matchers.iter().any(|m| m.is_match(&l.name)))
        .cloned()
        .collect();
    if v.is_empty() {
        return Err(SelectError::Nothing { why: format!("no interface matches {}", patterns.join(", ")), available: available() });
    }
    Ok(v)
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
    fn glob_matching_nothing_is_an_error_only_when_nothing_is_selected() {
        assert!(matches!(select(&["wlan*".to_string()], &links()), Err(SelectError::Nothing { .. })));
        assert_eq!(names(&select(&["wlan*".to_string(), "eth0".to_string()], &links()).unwrap()), ["eth0"]);
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
