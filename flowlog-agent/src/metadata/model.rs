//! What the providers answer: the host's and each interface's identity
//! (account, VPC, subnet, ENI ids, addresses), shared by the EC2 and on-prem
//! providers and read by the enrich stage.

use std::{
    collections::BTreeMap,
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
    str::FromStr,
    sync::Arc,
};

/// `account-id` when no source knows it (the agent's default before
/// metadata providers existed, kept so output does not change).
pub const UNKNOWN_ACCOUNT: &str = "unknown";

/// A MAC address; IMDS and the config key ENIs by it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// Interfaces without a hardware address (loopback, tun, wireguard)
    /// show all zeros in sysfs; they cannot match an ENI.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }
}

impl FromStr for MacAddr {
    type Err = String;
    /// Six two-digit hex groups separated by `:` or `-`, any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not a MAC address (want six hex pairs like 02:29:96:8f:6a:2d)");
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for b in &mut out {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 {
                return Err(bad());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    /// Lower case with colons: the form of sysfs and of IMDS paths.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// `<sysfs_root>/class/net/<name>/address`, or `None` where the interface
/// is gone or has no hardware address.
pub fn read_mac(sysfs_root: &Path, name: &str) -> Option<MacAddr> {
    let s = std::fs::read_to_string(sysfs_root.join("class/net").join(name).join("address")).ok()?;
    s.trim().parse::<MacAddr>().ok().filter(|m| !m.is_zero())
}

/// An OS interface as the providers see it: the name keys the on-prem
/// config and the derived id, the MAC finds the ENI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkId {
    pub name: String,
    pub mac: Option<MacAddr>,
}

impl LinkId {
    pub fn new(name: impl Into<String>, mac: Option<MacAddr>) -> Self {
        LinkId { name: name.into(), mac }
    }

    /// Reads the MAC from sysfs (`/sys` on a real host).
    pub fn from_sysfs(sysfs_root: &Path, name: &str) -> Self {
        LinkId { name: name.to_string(), mac: read_mac(sysfs_root, name) }
    }
}

/// Per-host values. Cheap to clone: records share the strings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostMetadata {
    /// Never empty: [`UNKNOWN_ACCOUNT`] when no source knows it.
    pub account_id: Arc<str>,
    pub region: Option<Arc<str>>,
    pub az_id: Option<Arc<str>>,
    pub instance_id: Option<Arc<str>>,
    /// Instance tags (EC2 only when enabled; on-prem from config).
    pub instance_tags: BTreeMap<String, String>,
}

impl Default for HostMetadata {
    fn default() -> Self {
        HostMetadata { account_id: UNKNOWN_ACCOUNT.into(), region: None, az_id: None, instance_id: None, instance_tags: BTreeMap::new() }
    }
}

/// Which source gave an interface its `interface-id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// An ENI found in IMDS by MAC.
    Imds,
    /// An entry of `[metadata.onprem.interfaces]`.
    Config,
    /// Nothing knew it: the id is [`crate::capture::links::derived_interface_id`].
    Derived,
}

/// Everything the record fields need to know of one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceMetadata {
    /// OS interface name.
    pub name: String,
    pub mac: Option<MacAddr>,
    pub origin: Origin,
    /// Never empty (see [`Origin`]).
    pub interface_id: Arc<str>,
    /// The ENI owner; never empty ([`UNKNOWN_ACCOUNT`] at worst).
    pub account_id: Arc<str>,
    pub vpc_id: Option<Arc<str>>,
    pub subnet_id: Option<Arc<str>>,
    pub instance_id: Option<Arc<str>>,
    pub region: Option<Arc<str>>,
    pub az_id: Option<Arc<str>>,
    /// The ENI's primary private IPv4 (IMDS lists it first).
    pub primary_ipv4: Option<Ipv4Addr>,
    pub ipv4s: Vec<Ipv4Addr>,
    pub ipv6s: Vec<Ipv6Addr>,
    /// EC2 `device-number` (0 is the primary ENI).
    pub device_number: Option<u32>,
    pub tags: BTreeMap<String, String>,
}

impl InterfaceMetadata {
    /// What an interface gets when no source knows it: a derived id and the
    /// host's values, no VPC or subnet.
    pub fn derived(link: &LinkId, host: &HostMetadata, machine_id: &str) -> Self {
        InterfaceMetadata {
            name: link.name.clone(),
            mac: link.mac,
            origin: Origin::Derived,
            interface_id: crate::capture::links::derived_interface_id(machine_id, &link.name).into(),
            account_id: host.account_id.clone(),
            vpc_id: None,
            subnet_id: None,
            instance_id: host.instance_id.clone(),
            region: host.region.clone(),
            az_id: host.az_id.clone(),
            primary_ipv4: None,
            ipv4s: Vec::new(),
            ipv6s: Vec::new(),
            device_number: None,
            tags: BTreeMap::new(),
        }
    }
}

/// The record text of an optional field.
pub fn or_dash(v: &Option<Arc<str>>) -> &str {
    v.as_deref().unwrap_or("-")
}

/// One refresh's result: the host and every interface asked for, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub host: HostMetadata,
    pub interfaces: BTreeMap<String, InterfaceMetadata>,
}

impl Snapshot {
    pub fn interface(&self, name: &str) -> Option<&InterfaceMetadata> {
        self.interfaces.get(name)
    }
}

