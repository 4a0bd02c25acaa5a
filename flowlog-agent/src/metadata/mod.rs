//! Where the ids around an interface come from: account, region, AZ, VPC,
//! subnet, instance and the ENI id itself.
//!
//! Two sources sit behind [`MetadataProvider`]:
//! - [`ec2`]: the instance metadata service, spoken to as IMDSv2 by
//!   [`imds::ImdsClient`]; OS interfaces are matched to ENIs by MAC address.
//! - [`onprem`]: the `[metadata.onprem]` section of the config file.
//!
//! [`detect::select`] picks one from [`config::Mode`]. In `auto` mode it only
//! reads DMI/hypervisor files, so a host that is not on EC2 never sends a
//! packet towards the metadata address; the endpoint itself always comes from
//! config.
//!
//! # How the agent uses it
//! ```ignore
//! let cfg = MetadataConfig::from_toml(&text)?;           // or ::default()
//! let (mut provider, selection) = MetadataProvider::new(&cfg, Path::new("/sys"), &ifaces::machine_id())?;
//! info!(source = ?selection.kind, why = %selection.why, "metadata provider");
//! let links: Vec<LinkId> = names.iter().map(|n| LinkId::from_sysfs(Path::new("/sys"), n)).collect();
//! let snap = match provider.refresh(&links).await {
//!     Ok(s) => s,
//!     Err(e) => { warn!("metadata: {e}"); provider.cached(&links) }
//! };
//! // ... again every cfg.refresh_interval(), so hot-plugged ENIs get their ids.
//! ```
//! `refresh` may wait on the network (bounded by the EC2 retry settings), so
//! the agent should run it off the capture path; `cached` never does I/O.
//!
//! # Defaults where data is absent
//! | field | EC2 | on-prem |
//! |---|---|---|
//! | `account-id` | ENI `owner-id`, else identity document `accountId`, else `unknown` | interface `account-id`, else section `account-id`, else `unknown` |
//! | `interface-id` | ENI `interface-id`; interfaces that are no ENI (bridges, veths) get the derived id | interface `interface-id`, else derived: [`crate::ifaces::derived_interface_id`] |
//! | `vpc-id`, `subnet-id` | ENI values; `-` for non-ENI interfaces | interface value, else section value, else `-` |
//! | `instance-id`, `region`, `az-id` | IMDS values, else `-` | section values, else `-` |
//! | addresses | ENI `local-ipv4s` (first = primary), `ipv6s` | interface `addresses` (first IPv4 = primary), else none |
//! | tags | instance tags when `instance-tags = true` and enabled on the instance; no ENI tags (IMDS has none) | `instance-tags`, interface `tags` |
//!
//! `-` is what the record writer prints for a `None` field ([`or_dash`]).

pub mod config;
pub mod detect;
pub mod ec2;
pub mod imds;
pub mod onprem;

#[cfg(test)]
mod fake_imds;

use std::{
    collections::BTreeMap,
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
    str::FromStr,
    sync::Arc,
};

pub use config::{ConfigError, Ec2Config, InterfaceOverride, MetadataConfig, Mode, OnPremConfig};
pub use detect::{ProviderKind, Selection};

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
    /// Nothing knew it: the id is [`crate::ifaces::derived_interface_id`].
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
            interface_id: crate::ifaces::derived_interface_id(machine_id, &link.name).into(),
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

#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Imds(#[from] imds::ImdsError),
}

/// The provider selected by config (and detection in `auto` mode).
pub enum MetadataProvider {
    Ec2(ec2::Ec2Provider),
    OnPrem(onprem::OnPremProvider),
}

impl MetadataProvider {
    /// Validates `cfg` and picks the provider; no network I/O happens here.
    /// `sysfs_root` is `/sys` outside tests; `machine_id` feeds derived
    /// interface ids ([`crate::ifaces::machine_id`]).
    pub fn new(cfg: &MetadataConfig, sysfs_root: &Path, machine_id: &str) -> Result<(Self, Selection), MetadataError> {
        cfg.validate()?;
        let sel = detect::select(cfg.mode, sysfs_root);
        let p = match sel.kind {
            ProviderKind::Ec2 => MetadataProvider::Ec2(ec2::Ec2Provider::new(&cfg.ec2, machine_id)?),
            ProviderKind::OnPrem => MetadataProvider::OnPrem(onprem::OnPremProvider::new(&cfg.onprem, machine_id)?),
        };
        Ok((p, sel))
    }

    pub fn kind(&self) -> ProviderKind {
        match self {
            MetadataProvider::Ec2(_) => ProviderKind::Ec2,
            MetadataProvider::OnPrem(_) => ProviderKind::OnPrem,
        }
    }

    /// Fetches what changed since the last call (EC2: new ENIs and current
    /// addresses; host values are read once) and returns metadata for every
    /// link. On error, what was fetched so far stays cached for [`Self::cached`].
    pub async fn refresh(&mut self, links: &[LinkId]) -> Result<Snapshot, MetadataError> {
        match self {
            MetadataProvider::Ec2(p) => Ok(p.refresh(links).await?),
            MetadataProvider::OnPrem(p) => Ok(p.snapshot(links)),
        }
    }

    /// Metadata from what is known already, without I/O; interfaces not
    /// known yet get derived ids. For when a refresh failed or is running.
    pub fn cached(&self, links: &[LinkId]) -> Snapshot {
        match self {
            MetadataProvider::Ec2(p) => p.cached(links),
            MetadataProvider::OnPrem(p) => p.snapshot(links),
        }
    }

    /// The metadata endpoint in use (EC2 only), for whoever must keep its
    /// traffic out of the flow logs.
    pub fn imds_endpoint(&self) -> Option<&str> {
        match self {
            MetadataProvider::Ec2(p) => Some(p.endpoint()),
            MetadataProvider::OnPrem(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parse_and_display() {
        let m: MacAddr = "02:29:96:8F:6a:2d".parse().unwrap();
        assert_eq!(m.to_string(), "02:29:96:8f:6a:2d");
        assert_eq!("02-29-96-8f-6a-2d".parse::<MacAddr>().unwrap(), m);
        for bad in ["", "02:29:96:8f:6a", "02:29:96:8f:6a:2d:00", "2:29:96:8f:6a:2d", "02:29:96:8f:6a:zz", "eth0"] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn read_mac_from_fake_sysfs() {
        let root = tempdir("readmac");
        let put = |n: &str, v: &str| {
            std::fs::create_dir_all(root.join("class/net").join(n)).unwrap();
            std::fs::write(root.join("class/net").join(n).join("address"), v).unwrap();
        };
        put("eth0", "0a:1b:2c:3d:4e:5f\n");
        put("lo", "00:00:00:00:00:00\n");
        put("tun0", "\n");
        assert_eq!(LinkId::from_sysfs(&root, "eth0").mac, Some(MacAddr([0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f])));
        assert_eq!(read_mac(&root, "lo"), None);
        assert_eq!(read_mac(&root, "tun0"), None);
        assert_eq!(read_mac(&root, "gone"), None);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn derived_interfaces_take_host_values() {
        let host = HostMetadata { account_id: "123456789012".into(), region: Some("eu-west-1".into()), ..Default::default() };
        let m = InterfaceMetadata::derived(&LinkId::new("veth1", None), &host, "m1");
        assert_eq!(&*m.interface_id, crate::ifaces::derived_interface_id("m1", "veth1"));
        assert_eq!((&*m.account_id, or_dash(&m.region), or_dash(&m.vpc_id)), ("123456789012", "eu-west-1", "-"));
        assert_eq!(m.origin, Origin::Derived);
        assert_eq!(&*HostMetadata::default().account_id, "unknown");
    }

    /// The agent may run refreshes in a spawned task.
    #[test]
    fn provider_and_its_refresh_are_send() {
        fn send<T: Send>(_: &T) {}
        let cfg = MetadataConfig { mode: Mode::Ec2, ..Default::default() };
        let (mut p, _) = MetadataProvider::new(&cfg, Path::new("/nonexistent"), "m").unwrap();
        send(&p);
        let fut = p.refresh(&[]); // never polled: no request is sent
        send(&fut);
    }

    /// A fresh directory under the system temp dir (no extra crate needed).
    pub(crate) fn tempdir(tag: &str) -> std::path::PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("flowlog-meta-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        p
    }
}
