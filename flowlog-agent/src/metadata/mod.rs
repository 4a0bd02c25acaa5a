//! Where the ids around an interface come from: account, region, AZ, VPC,
//! subnet, instance and the ENI id itself.
//!
//! Two sources sit behind [`MetadataProvider`]:
//! - [`ec2`]: the instance metadata service, spoken to as IMDSv2 by
//!   [`imds::ImdsClient`] (the AWS SDK's IMDS client); OS interfaces are matched to ENIs by MAC address.
//! - [`onprem`]: the `[metadata.onprem]` section of the config file.
//!
//! [`detect::select`] picks one from [`config::Mode`]. In `auto` mode it only
//! reads DMI/hypervisor files, so a host that is not on EC2 never sends a
//! packet towards the metadata address; the endpoint comes from config or the
//! standard `AWS_EC2_METADATA_SERVICE_ENDPOINT[_MODE]` variables.
//!
//! # How the agent uses it
//! ```ignore
//! let cfg = MetadataConfig::from_toml(&text)?;           // or ::default()
//! let (mut provider, selection) = MetadataProvider::new(&cfg, Path::new("/sys"), &links::machine_id())?;
//! info!(source = ?selection.kind, why = %selection.why, "metadata provider");
//! let links: Vec<LinkId> = names.iter().map(|n| LinkId::from_sysfs(Path::new("/sys"), n)).collect();
//! let snap = match provider.refresh(&links).await {
//!     Ok(s) => s,
//!     Err(e) => { warn!("metadata: {e}"); provider.cached(&links) }
//! };
//! // ... again every cfg.refresh_interval(), so hot-plugged ENIs get their ids:
//! // [`refresh::Refresher`] does both off the capture path.
//! ```
//! `refresh` may wait on the network (bounded by the EC2 retry settings), so
//! the agent should run it off the capture path; `cached` never does I/O.
//!
//! # Defaults where data is absent
//! | field | EC2 | on-prem |
//! |---|---|---|
//! | `account-id` | ENI `owner-id`, else identity document `accountId`, else `unknown` | interface `account-id`, else section `account-id`, else `unknown` |
//! | `interface-id` | ENI `interface-id`; interfaces that are no ENI (bridges, veths) get the derived id | interface `interface-id`, else derived: [`crate::capture::links::derived_interface_id`] |
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
pub mod kubernetes;
pub mod model;
pub mod onprem;
pub mod refresh;


use std::path::Path;

pub use config::{ConfigError, Ec2Config, InterfaceOverride, MetadataConfig, Mode, OnPremConfig};
pub use detect::{ProviderKind, Selection};
pub use model::{or_dash, read_mac, HostMetadata, InterfaceMetadata, LinkId, MacAddr, Origin, Snapshot, UNKNOWN_ACCOUNT};

#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Imds(#[from] imds::ImdsError),
}

/// The provider selected by config (and detection in `auto` mode).
pub enum MetadataProvider {
    Ec2(Box<ec2::Ec2Provider>),
    OnPrem(Box<onprem::OnPremProvider>),
}

impl MetadataProvider {
    /// Validates `cfg` and picks the provider; no network I/O happens here.
    /// `sysfs_root` is `/sys` outside tests; `machine_id` feeds derived
    /// interface ids ([`crate::capture::links::machine_id`]).
    pub fn new(cfg: &MetadataConfig, sysfs_root: &Path, machine_id: &str) -> Result<(Self, Selection), MetadataError> {
        cfg.validate()?;
        let sel = detect::select(cfg.mode, sysfs_root);
        let p = match sel.kind {
            ProviderKind::Ec2 => MetadataProvider::Ec2(Box::new(ec2::Ec2Provider::new(&cfg.ec2, machine_id)?)),
            ProviderKind::OnPrem => MetadataProvider::OnPrem(Box::new(onprem::OnPremProvider::new(&cfg.onprem, machine_id)?)),
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
        assert_eq!(&*m.interface_id, crate::capture::links::derived_interface_id("m1", "veth1"));
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
