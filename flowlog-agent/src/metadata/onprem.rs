//! On-prem provider: everything from `[metadata.onprem]`, no I/O.
//!
//! Lookup order for an interface: an `interfaces` entry named like it, else
//! one keyed by its MAC, else none. Each field then falls back in turn:
//! entry → section → default (`-`, or `unknown` for the account; the
//! interface id is derived from machine id and name, as before this
//! provider existed, so ids stay stable across the upgrade).

use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use super::{config::{ConfigError, InterfaceKey, InterfaceOverride, OnPremConfig}};
use super::model::{HostMetadata, InterfaceMetadata, LinkId, MacAddr, Origin, Snapshot, UNKNOWN_ACCOUNT};

pub struct OnPremProvider {
    cfg: OnPremConfig,
    by_mac: BTreeMap<MacAddr, String>,
    host: HostMetadata,
    machine_id: String,
}

fn arc(v: &Option<String>) -> Option<Arc<str>> {
    v.as_deref().map(Into::into)
}

impl OnPremProvider {
    pub fn new(cfg: &OnPremConfig, machine_id: &str) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let by_mac = cfg
            .interfaces
            .keys()
            .filter_map(|k| match InterfaceKey::parse(k) {
                Ok(InterfaceKey::Mac(m)) => Some((m, k.clone())),
                _ => None,
            })
            .collect();
        let host = HostMetadata {
            account_id: cfg.account_id.as_deref().unwrap_or(UNKNOWN_ACCOUNT).into(),
            region: arc(&cfg.region),
            az_id: arc(&cfg.az_id),
            instance_id: arc(&cfg.instance_id),
            instance_tags: cfg.instance_tags.clone(),
        };
        Ok(OnPremProvider { cfg: cfg.clone(), by_mac, host, machine_id: machine_id.to_string() })
    }

    pub fn host(&self) -> &HostMetadata {
        &self.host
    }

    fn entry(&self, link: &LinkId) -> Option<&InterfaceOverride> {
        // Names cannot parse as MACs (validated), so a name lookup never
        // hits a MAC-keyed entry.
        self.cfg.interfaces.get(&link.name).or_else(|| link.mac.and_then(|m| self.by_mac.get(&m)).map(|k| &self.cfg.interfaces[k]))
    }

    pub fn interface(&self, link: &LinkId) -> InterfaceMetadata {
        let mut m = InterfaceMetadata::derived(link, &self.host, &self.machine_id);
        m.vpc_id = arc(&self.cfg.vpc_id);
        m.subnet_id = arc(&self.cfg.subnet_id);
        let Some(e) = self.entry(link) else { return m };
        if let Some(id) = &e.interface_id {
            m.interface_id = id.as_str().into();
            m.origin = Origin::Config;
        }
        if let Some(a) = &e.account_id {
            m.account_id = a.as_str().into();
        }
        if e.vpc_id.is_some() {
            m.vpc_id = arc(&e.vpc_id);
        }
        if e.subnet_id.is_some() {
            m.subnet_id = arc(&e.subnet_id);
        }
        for a in &e.addresses {
            match a {
                IpAddr::V4(v4) => m.ipv4s.push(*v4),
                IpAddr::V6(v6) => m.ipv6s.push(*v6),
            }
        }
        m.primary_ipv4 = m.ipv4s.first().copied();
        m.tags = e.tags.clone();
        m
    }

    pub fn snapshot(&self, links: &[LinkId]) -> Snapshot {
        Snapshot { host: self.host.clone(), interfaces: links.iter().map(|l| (l.name.clone(), self.interface(l))).collect() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::{or_dash, MetadataConfig};

    fn provider(toml: &str) -> OnPremProvider {
        OnPremProvider::new(&MetadataConfig::from_toml(toml).unwrap().onprem, "machine-1").unwrap()
    }

    fn link(name: &str, mac: Option<&str>) -> LinkId {
        LinkId::new(name, mac.map(|m| m.parse().unwrap()))
    }

    /// `account vpc subnet interface-id instance region az` as records print them.
    fn fields(m: &InterfaceMetadata) -> String {
        [&*m.account_id, or_dash(&m.vpc_id), or_dash(&m.subnet_id), &*m.interface_id, or_dash(&m.instance_id), or_dash(&m.region), or_dash(&m.az_id)].join(" ")
    }

    #[test]
    fn nothing_configured_gives_documented_defaults() {
        let p = provider("");
        let m = p.interface(&link("eth0", Some("02:00:00:00:00:01")));
        let derived = crate::capture::links::derived_interface_id("machine-1", "eth0");
        assert_eq!(fields(&m), format!("unknown - - {derived} - - -"));
        assert_eq!((m.origin, m.primary_ipv4, m.ipv4s.len(), m.tags.len()), (Origin::Derived, None, 0, 0));
        assert_eq!(p.host(), &HostMetadata::default());
    }

    #[test]
    fn lookup_and_fallback_table() {
        let p = provider(&format!(
            r#"
            [metadata.onprem]
            {}
            [metadata.onprem.interfaces.eth0]
            interface-id = "eni-by-name"
            subnet-id = "subnet-2"
            addresses = ["2001:db8::5", "10.0.0.5", "10.0.0.6"]
            tags = {{ role = "uplink" }}
            [metadata.onprem.interfaces."02:00:00:00:00:02"]
            interface-id = "eni-by-mac"
            account-id = "999999999999"
            vpc-id = "vpc-9"
            [metadata.onprem.interfaces."02-00-00-00-00-01"]
            interface-id = "eni-loses-to-name"
            [metadata.onprem.interfaces.eth3]
            subnet-id = "subnet-3"
            "#,
            crate::metadata::config::tests::ONPREM_HOST
        ));
        let d = |n: &str| crate::capture::links::derived_interface_id("machine-1", n);
        let cases = [
            // Name entry; its MAC also has an entry, but the name wins.
            (link("eth0", Some("02:00:00:00:00:01")), "123456789012 vpc-1 subnet-2 eni-by-name i-1 eu-west-1 euw1-az1".to_string(), Origin::Config),
            // MAC entry under any name; MAC keys are case/separator-insensitive.
            (link("enp1s0", Some("02:00:00:00:00:02")), "999999999999 vpc-9 subnet-1 eni-by-mac i-1 eu-west-1 euw1-az1".into(), Origin::Config),
            (link("eth1", Some("02:00:00:00:00:01")), "123456789012 vpc-1 subnet-1 eni-loses-to-name i-1 eu-west-1 euw1-az1".into(), Origin::Config),
            // Entry without interface-id: derived id, its subnet.
            (link("eth3", None), format!("123456789012 vpc-1 subnet-3 {} i-1 eu-west-1 euw1-az1", d("eth3")), Origin::Derived),
            // No entry: section values and a derived id.
            (link("veth9", Some("02:00:00:00:00:09")), format!("123456789012 vpc-1 subnet-1 {} i-1 eu-west-1 euw1-az1", d("veth9")), Origin::Derived),
        ];
        for (l, want, origin) in cases {
            let m = p.interface(&l);
            assert_eq!((fields(&m), m.origin), (want, origin), "{}", l.name);
        }
        let eth0 = p.interface(&link("eth0", None));
        assert_eq!(eth0.primary_ipv4, Some("10.0.0.5".parse().unwrap()));
        assert_eq!(eth0.ipv4s, ["10.0.0.5".parse::<std::net::Ipv4Addr>().unwrap(), "10.0.0.6".parse().unwrap()]);
        assert_eq!(eth0.ipv6s, ["2001:db8::5".parse::<std::net::Ipv6Addr>().unwrap()]);
        assert_eq!(eth0.tags.get("role").map(String::as_str), Some("uplink"));

        let s = p.snapshot(&[link("eth0", None), link("eth3", None)]);
        assert_eq!(s.interfaces.keys().collect::<Vec<_>>(), ["eth0", "eth3"]);
        assert_eq!(&*s.host.account_id, "123456789012");
    }

    #[test]
    fn invalid_config_is_refused() {
        let cfg = OnPremConfig { vpc_id: Some("vpc 1".into()), ..Default::default() };
        let e = OnPremProvider::new(&cfg, "m").err().unwrap();
        assert!(e.to_string().contains("metadata.onprem.vpc-id"), "{e}");
    }
}
