//! Which flows become records: the flow log's traffic type, and the traffic
//! AWS flow logs never record.

use std::{
    collections::HashSet,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use ipnet::IpNet;
use serde::Deserialize;

use crate::record::Action;

/// The flow log's traffic type (`CreateFlowLogs --traffic-type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum TrafficType {
    Accept,
    Reject,
    #[default]
    All,
}

impl TrafficType {
    pub fn as_str(self) -> &'static str {
        match self {
            TrafficType::Accept => "ACCEPT",
            TrafficType::Reject => "REJECT",
            TrafficType::All => "ALL",
        }
    }

    /// Whether a record with this action belongs in the log. NODATA and
    /// SKIPDATA records (no action) describe the interface, not traffic, so
    /// every traffic type keeps them.
    pub fn admits(self, action: Option<Action>) -> bool {
        match (self, action) {
            (_, None) | (TrafficType::All, _) => true,
            (TrafficType::Accept, Some(a)) => a == Action::Accept,
            (TrafficType::Reject, Some(a)) => a == Action::Reject,
        }
    }
}

impl fmt::Display for TrafficType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid traffic type {0:?}: expected ACCEPT, REJECT or ALL")]
pub struct TrafficTypeError(pub String);

/// Exactly the API's values, upper case, as `CreateFlowLogs` takes them.
impl FromStr for TrafficType {
    type Err = TrafficTypeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [TrafficType::Accept, TrafficType::Reject, TrafficType::All]
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| TrafficTypeError(s.to_string()))
    }
}

/// Instance metadata service.
const IMDS: [IpAddr; 2] = [IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)), IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254))];
/// Amazon Time Sync Service.
const TIME_SYNC: [IpAddr; 2] = [IpAddr::V4(Ipv4Addr::new(169, 254, 169, 123)), IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x123))];
/// Amazon DNS at its fixed link-local addresses (the VPC base+2 address is
/// added per CIDR).
const DNS: [IpAddr; 2] = [IpAddr::V4(Ipv4Addr::new(169, 254, 169, 253)), IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x253))];
/// Amazon's KMS servers for Windows license activation.
const WINDOWS_ACTIVATION: [IpAddr; 2] = [IpAddr::V4(Ipv4Addr::new(169, 254, 169, 250)), IpAddr::V4(Ipv4Addr::new(169, 254, 169, 251))];

/// What to leave out, per kind. Everything is on by default; `enabled`
/// switches the whole filter (unset: the caller's mode decides, on in EC2
/// mode, off elsewhere).
///
/// The IPv6 addresses (`fd00:ec2::254`, `::123`, `::253`) and DHCPv6 are the
/// IPv6 counterparts of the documented IPv4 services; AWS's list names only
/// IPv4, so they are an inference.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct ExclusionConfig {
    pub enabled: Option<bool>,
    pub instance_metadata: bool,
    pub time_sync: bool,
    /// The Amazon DNS server (VPC base+2, 169.254.169.253).
    pub amazon_dns: bool,
    /// DHCP and DHCPv6 (UDP 67/68, 546/547).
    pub dhcp: bool,
    /// The VPC router (base+1 of each CIDR).
    pub vpc_router: bool,
    pub windows_activation: bool,
    /// More addresses to leave out (e.g. a resolver reached at another
    /// address).
    pub extra: Vec<IpAddr>,
}

impl Default for ExclusionConfig {
    fn default() -> Self {
        ExclusionConfig {
            enabled: None,
            instance_metadata: true,
            time_sync: true,
            amazon_dns: true,
            dhcp: true,
            vpc_router: true,
            windows_activation: true,
            extra: Vec::new(),
        }
    }
}

impl ExclusionConfig {
    /// Whether the filter applies, given the mode's default.
    pub fn enabled_or(&self, mode_default: bool) -> bool {
        self.enabled.unwrap_or(mode_default)
    }
}

/// Traffic that native flow logs do not record, as a filter on flows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Exclusions {
    addrs: HashSet<IpAddr>,
    dhcp: bool,
}

impl Exclusions {
    /// All kinds, for a VPC with these CIDR blocks. Subnet CIDRs may be
    /// passed too: AWS reserves base+1 (router) and base+2 (DNS) in every
    /// subnet as well.
    pub fn new(vpc_cidrs: &[IpNet]) -> Exclusions {
        Self::from_config(&ExclusionConfig::default(), vpc_cidrs)
    }

    pub fn from_config(cfg: &ExclusionConfig, vpc_cidrs: &[IpNet]) -> Exclusions {
        let mut addrs = HashSet::new();
        let mut add = |on: bool, list: &[IpAddr]| {
            if on {
                addrs.extend(list.iter().copied());
            }
        };
        add(cfg.instance_metadata, &IMDS);
        add(cfg.time_sync, &TIME_SYNC);
        add(cfg.amazon_dns, &DNS);
        add(cfg.windows_activation, &WINDOWS_ACTIVATION);
        add(true, &cfg.extra);
        for net in vpc_cidrs {
            // IPv6 VPC blocks have no base+1/base+2 convention; a block too
            // small to hold them is a configuration mistake, not a VPC.
            if let IpNet::V4(n) = net.trunc() {
                if n.prefix_len() <= 30 {
                    let base = u32::from(n.network());
                    add(cfg.vpc_router, &[IpAddr::V4(Ipv4Addr::from(base + 1))]);
                    add(cfg.amazon_dns, &[IpAddr::V4(Ipv4Addr::from(base + 2))]);
                }
            }
        }
        Exclusions { addrs, dhcp: cfg.dhcp }
    }

    /// Whether a flow (packet addresses, protocol, ports) is left out:
    /// traffic to or from an excluded address, or DHCP.
    pub fn excludes(&self, pkt_src: IpAddr, pkt_dst: IpAddr, protocol: u8, src_port: u16, dst_port: u16) -> bool {
        const UDP: u8 = 17;
        let dhcp_ports = |a: u16, b: u16| {
            let v4 = [67, 68];
            let v6 = [546, 547];
            (v4.contains(&a) && v4.contains(&b)) || (v6.contains(&a) && v6.contains(&b))
        };
        (self.dhcp && protocol == UDP && dhcp_ports(src_port, dst_port)) || self.addrs.contains(&pkt_src) || self.addrs.contains(&pkt_dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn traffic_type_parses_like_the_api() {
        assert_eq!("ACCEPT".parse(), Ok(TrafficType::Accept));
        assert_eq!("REJECT".parse(), Ok(TrafficType::Reject));
        assert_eq!("ALL".parse(), Ok(TrafficType::All));
        assert_eq!(
            "accept".parse::<TrafficType>().unwrap_err().to_string(),
            "invalid traffic type \"accept\": expected ACCEPT, REJECT or ALL"
        );
        assert!("".parse::<TrafficType>().is_err());
        assert_eq!(TrafficType::default(), TrafficType::All);
        assert_eq!(serde_json::from_str::<TrafficType>("\"REJECT\"").unwrap(), TrafficType::Reject);
        assert!(serde_json::from_str::<TrafficType>("\"Reject\"").is_err());
        assert_eq!(TrafficType::Accept.to_string(), "ACCEPT");
    }

    #[test]
    fn traffic_type_admits() {
        use Action::*;
        let t = |tt: TrafficType| [Some(Accept), Some(Reject), None].map(|a| tt.admits(a));
        assert_eq!(t(TrafficType::All), [true, true, true]);
        assert_eq!(t(TrafficType::Accept), [true, false, true]);
        assert_eq!(t(TrafficType::Reject), [false, true, true]);
    }

    #[test]
    fn aws_services_that_are_never_logged() {
        let ex = Exclusions::new(&["10.0.0.0/16".parse().unwrap(), "100.64.0.0/20".parse().unwrap(), "2001:db8::/56".parse().unwrap()]);
        let me = ip("10.0.1.5");
        let tcp = |peer: &str, port: u16| ex.excludes(me, ip(peer), 6, 40000, port) || ex.excludes(ip(peer), me, 6, port, 40000);
        let udp = |peer: &str, port: u16| ex.excludes(me, ip(peer), 17, 40000, port);
        assert!(tcp("169.254.169.254", 80));
        assert!(udp("169.254.169.123", 123));
        assert!(udp("10.0.0.2", 53)); // VPC base+2
        assert!(udp("100.64.0.2", 53)); // base+2 of a secondary block
        assert!(udp("169.254.169.253", 53));
        assert!(tcp("10.0.0.1", 443)); // VPC router
        assert!(tcp("169.254.169.250", 1688));
        assert!(tcp("fd00:ec2::254", 80));
        assert!(udp("fd00:ec2::123", 123));
        // Neighbours, other resolvers, the internet: logged.
        assert!(!udp("10.0.0.3", 53));
        assert!(!udp("10.0.1.2", 53));
        assert!(!udp("8.8.8.8", 53));
        assert!(!tcp("169.254.169.1", 80));
        assert!(!tcp("2001:db8::1", 80));
        assert!(!tcp("2001:db8::2", 80));
        // DHCP, both directions, and DHCPv6; not TCP, not other UDP ports.
        assert!(ex.excludes(ip("0.0.0.0"), ip("255.255.255.255"), 17, 68, 67));
        assert!(ex.excludes(ip("10.0.0.1"), me, 17, 67, 68));
        assert!(ex.excludes(ip("fe80::1"), ip("ff02::1:2"), 17, 546, 547));
        assert!(!ex.excludes(me, ip("10.0.5.5"), 6, 68, 67));
        assert!(!ex.excludes(me, ip("10.0.5.5"), 17, 68, 53));
    }

    #[test]
    fn kinds_can_be_switched_off() {
        let cfg: ExclusionConfig = serde_json::from_str(r#"{"amazon-dns": false, "dhcp": false, "extra": ["192.0.2.53"]}"#).unwrap();
        assert!(cfg.enabled_or(true));
        assert!(!cfg.enabled_or(false));
        let ex = Exclusions::from_config(&cfg, &["10.0.0.0/16".parse().unwrap()]);
        let me = ip("10.0.1.5");
        assert!(!ex.excludes(me, ip("10.0.0.2"), 17, 40000, 53));
        assert!(!ex.excludes(me, ip("169.254.169.253"), 17, 40000, 53));
        assert!(!ex.excludes(ip("0.0.0.0"), ip("255.255.255.255"), 17, 68, 67));
        assert!(ex.excludes(me, ip("10.0.0.1"), 6, 40000, 443));
        assert!(ex.excludes(me, ip("192.0.2.53"), 17, 40000, 53));
        assert!(ex.excludes(me, ip("169.254.169.254"), 6, 40000, 80));
        let off: ExclusionConfig = serde_json::from_str(r#"{"enabled": false}"#).unwrap();
        assert!(!off.enabled_or(true));
        assert!(serde_json::from_str::<ExclusionConfig>(r#"{"imds": false}"#).is_err());
        let no_imds = Exclusions::from_config(&ExclusionConfig { instance_metadata: false, ..Default::default() }, &[]);
        assert!(!no_imds.excludes(me, ip("169.254.169.254"), 6, 1, 80));
    }
}
