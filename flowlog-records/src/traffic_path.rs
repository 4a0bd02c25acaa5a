//! `traffic-path`: which kind of gateway egress traffic leaves through, from
//! a route table given in the configuration.
//!
//! A host cannot see the VPC's route table, so the user lists the routes of
//! the interface's subnet (destination CIDR → target kind). The destination
//! is matched against the packet's destination address, longest prefix
//! first, like the VPC router does. Ingress is always `-` (AWS defines the
//! field for egress only), and so is egress no route matches.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;

use crate::{prefix::PrefixMap, record::Direction};

/// The AWS `traffic-path` codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrafficPath {
    /// 1: another resource in the same VPC, including ones that have an
    /// interface in it (NAT gateway, transit gateway attachment, endpoint).
    SameVpc = 1,
    /// 2: internet gateway or gateway endpoint, on instances that are not
    /// Nitro-based.
    InternetOrGatewayEndpoint = 2,
    /// 3: virtual private gateway.
    VirtualPrivateGateway = 3,
    /// 4: VPC peering within the region.
    PeeringIntraRegion = 4,
    /// 5: VPC peering to another region.
    PeeringInterRegion = 5,
    /// 6: local gateway (Outposts).
    LocalGateway = 6,
    /// 7: gateway endpoint, Nitro-based instance.
    GatewayEndpointNitro = 7,
    /// 8: internet gateway, Nitro-based instance.
    InternetGatewayNitro = 8,
}

impl TrafficPath {
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// The kind of a route's target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Gateway {
    /// The VPC's own CIDR (`local` route).
    Local,
    #[serde(alias = "internet-gateway")]
    Igw,
    #[serde(alias = "virtual-private-gateway")]
    Vgw,
    PeeringIntraRegion,
    PeeringInterRegion,
    /// Transit gateways attach through interfaces inside the VPC, hence the
    /// same-VPC code: the AWS list has no code of its own for them.
    #[serde(alias = "transit-gateway")]
    Tgw,
    LocalGateway,
    GatewayEndpoint,
    /// Also has an interface in the VPC.
    NatGateway,
    /// A route to an interface (appliance, firewall) in the VPC.
    NetworkInterface,
}

impl Gateway {
    /// The code for traffic through this kind of target. Internet gateways
    /// and gateway endpoints have their own codes on Nitro instances.
    pub fn path(self, nitro: bool) -> TrafficPath {
        match self {
            Gateway::Local | Gateway::Tgw | Gateway::NatGateway | Gateway::NetworkInterface => TrafficPath::SameVpc,
            Gateway::Igw if nitro => TrafficPath::InternetGatewayNitro,
            Gateway::GatewayEndpoint if nitro => TrafficPath::GatewayEndpointNitro,
            Gateway::Igw | Gateway::GatewayEndpoint => TrafficPath::InternetOrGatewayEndpoint,
            Gateway::Vgw => TrafficPath::VirtualPrivateGateway,
            Gateway::PeeringIntraRegion => TrafficPath::PeeringIntraRegion,
            Gateway::PeeringInterRegion => TrafficPath::PeeringInterRegion,
            Gateway::LocalGateway => TrafficPath::LocalGateway,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Route {
    /// e.g. `10.0.0.0/16`, `0.0.0.0/0`, `::/0`.
    pub destination: IpNet,
    pub target: Gateway,
}

/// The route table section of the configuration.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct RouteTableConfig {
    /// Whether to report as a Nitro-based instance (codes 7 and 8). Every
    /// current instance type is Nitro-based, hence the default.
    pub nitro: bool,
    pub routes: Vec<Route>,
}

impl Default for RouteTableConfig {
    fn default() -> Self {
        RouteTableConfig { nitro: true, routes: Vec::new() }
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("route table: destination {0} is listed twice")]
    Duplicate(IpNet),
}

#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    map: PrefixMap<Gateway>,
    nitro: bool,
}

impl RouteTable {
    /// Rejects the same destination twice, as a VPC route table does.
    pub fn new(cfg: &RouteTableConfig) -> Result<RouteTable, RouteError> {
        let mut map = PrefixMap::new();
        for r in &cfg.routes {
            if map.insert(r.destination.trunc(), r.target).is_some() {
                return Err(RouteError::Duplicate(r.destination.trunc()));
            }
        }
        Ok(RouteTable { map, nitro: cfg.nitro })
    }

    /// The `traffic-path` of a flow with this direction and packet
    /// destination.
    pub fn path(&self, direction: Direction, pkt_dst: IpAddr) -> Option<TrafficPath> {
        match direction {
            Direction::Ingress => None,
            Direction::Egress => self.map.lookup(pkt_dst).map(|(g, _)| g.path(self.nitro)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn table(nitro: bool) -> RouteTable {
        let cfg: RouteTableConfig = serde_json::from_str(&format!(
            r#"{{"nitro": {nitro}, "routes": [
                {{"destination": "10.0.0.0/16", "target": "local"}},
                {{"destination": "0.0.0.0/0", "target": "igw"}},
                {{"destination": "52.95.128.0/21", "target": "gateway-endpoint"}},
                {{"destination": "172.16.0.0/12", "target": "vgw"}},
                {{"destination": "10.1.0.0/16", "target": "peering-intra-region"}},
                {{"destination": "10.2.0.0/16", "target": "peering-inter-region"}},
                {{"destination": "10.3.0.0/16", "target": "transit-gateway"}},
                {{"destination": "192.168.0.0/16", "target": "local-gateway"}},
                {{"destination": "10.0.200.0/24", "target": "network-interface"}},
                {{"destination": "2001:db8::/56", "target": "local"}},
                {{"destination": "::/0", "target": "internet-gateway"}}
            ]}}"#
        ))
        .unwrap();
        RouteTable::new(&cfg).unwrap()
    }

    #[test]
    fn egress_paths_by_longest_route() {
        let t = table(true);
        let p = |a: &str| t.path(Direction::Egress, ip(a)).map(TrafficPath::code);
        assert_eq!(p("10.0.133.8"), Some(1));
        assert_eq!(p("52.95.128.179"), Some(7));
        assert_eq!(p("52.95.136.1"), Some(8));
        assert_eq!(p("172.20.0.1"), Some(3));
        assert_eq!(p("10.1.0.9"), Some(4));
        assert_eq!(p("10.2.0.9"), Some(5));
        assert_eq!(p("10.3.0.9"), Some(1));
        assert_eq!(p("192.168.1.1"), Some(6));
        // The more specific appliance route inside the VPC CIDR.
        assert_eq!(p("10.0.200.1"), Some(1));
        assert_eq!(p("2001:db8:0:7::1"), Some(1));
        assert_eq!(p("2600::1"), Some(8));
        // Ingress never has a path.
        assert_eq!(t.path(Direction::Ingress, ip("52.95.128.179")), None);
    }

    #[test]
    fn non_nitro_codes_and_no_route() {
        let t = table(false);
        let p = |a: &str| t.path(Direction::Egress, ip(a)).map(TrafficPath::code);
        assert_eq!(p("52.95.128.179"), Some(2));
        assert_eq!(p("198.51.100.1"), Some(2));
        let empty = RouteTable::new(&RouteTableConfig::default()).unwrap();
        assert_eq!(empty.path(Direction::Egress, ip("198.51.100.1")), None);
    }

    #[test]
    fn config_errors() {
        let cfg: RouteTableConfig = serde_json::from_str(
            r#"{"routes": [{"destination": "10.0.0.0/16", "target": "local"}, {"destination": "10.0.5.0/16", "target": "igw"}]}"#,
        )
        .unwrap();
        assert!(cfg.nitro);
        assert_eq!(RouteTable::new(&cfg).unwrap_err().to_string(), "route table: destination 10.0.0.0/16 is listed twice");
        let bad = serde_json::from_str::<RouteTableConfig>(r#"{"routes": [{"destination": "10.0.0.0/16", "target": "wormhole"}]}"#);
        assert!(bad.unwrap_err().to_string().contains("unknown variant `wormhole`"));
        assert!(serde_json::from_str::<RouteTableConfig>(r#"{"routes": [{"destination": "10.0.0.0", "target": "igw"}]}"#).is_err());
    }
}
