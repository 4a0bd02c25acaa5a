//! Field values that follow from the packet and the capturing interface
//! alone (`type`, `srcaddr`/`dstaddr`, `action`), as AWS defines them.
//!
//! Pure functions; the agent's enrich stage applies them to every flow.

use std::net::{IpAddr, Ipv4Addr};

use crate::record::{Action, Direction, IpType};

/// `type`: the address family of the flow. (`EFA` needs the EFA device,
/// which a packet hook never sees.)
pub fn ip_type(addr: IpAddr) -> IpType {
    IpType::of(addr)
}

/// `action` of a flow the agent captured. The hooks count packets that
/// reached or left the interface, i.e. traffic that was let through; REJECT
/// records come from the drop hook (the agent's `capture::reject`).
pub const CAPTURED_ACTION: Action = Action::Accept;

/// The interface's primary private IPv4 address: by convention the first
/// IPv4 address of its address list.
pub fn primary_ipv4(iface_addrs: &[IpAddr]) -> Option<Ipv4Addr> {
    iface_addrs.iter().find_map(|a| match a {
        IpAddr::V4(v4) => Some(*v4),
        IpAddr::V6(_) => None,
    })
}

/// `srcaddr`/`dstaddr` from the packet's addresses (which stay in
/// `pkt-srcaddr`/`pkt-dstaddr`).
///
/// AWS reports the interface side of an IPv4 flow by the interface's primary
/// private address whenever the packet's own address would not identify the
/// interface: traffic arriving for a secondary address or for an address the
/// interface does not own at all (NAT gateways, transit gateway attachments,
/// routers), and traffic leaving with a source the interface does not own.
/// A secondary address as *source* is kept: it is the interface's own.
///
/// Only IPv4 is rewritten: AWS documents the rule for the primary private
/// IPv4 address, and putting an IPv4 address into an IPv6 record would
/// contradict its `type`. Without a primary IPv4 (empty list, IPv6-only
/// interface) the packet addresses are returned unchanged.
pub fn normalise_addrs(direction: Direction, pkt_src: IpAddr, pkt_dst: IpAddr, iface_addrs: &[IpAddr]) -> (IpAddr, IpAddr) {
    let Some(primary) = primary_ipv4(iface_addrs) else {
        return (pkt_src, pkt_dst);
    };
    let primary = IpAddr::V4(primary);
    match direction {
        Direction::Ingress if pkt_dst.is_ipv4() => (pkt_src, primary),
        Direction::Egress if pkt_src.is_ipv4() && !iface_addrs.contains(&pkt_src) => (primary, pkt_dst),
        _ => (pkt_src, pkt_dst),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn type_is_the_address_family() {
        assert_eq!(ip_type(ip("10.0.0.1")).as_str(), "IPv4");
        assert_eq!(ip_type(ip("2001:db8::1")).as_str(), "IPv6");
        assert_eq!(ip_type(ip("::ffff:10.0.0.1")).as_str(), "IPv6");
    }

    #[test]
    fn primary_is_the_first_ipv4() {
        assert_eq!(primary_ipv4(&[ip("2001:db8::5"), ip("10.0.0.5"), ip("10.0.0.6")]), Some("10.0.0.5".parse().unwrap()));
        assert_eq!(primary_ipv4(&[ip("2001:db8::5")]), None);
        assert_eq!(primary_ipv4(&[]), None);
    }

    #[test]
    fn addresses_are_normalised_where_aws_does() {
        let iface = [ip("10.0.0.5"), ip("10.0.0.6"), ip("2001:db8::5")];
        let remote = ip("198.51.100.7");
        let n = |d, s: &str, t: &str| normalise_addrs(d, ip(s), ip(t), &iface);
        use Direction::*;
        // Ingress to the primary: unchanged.
        assert_eq!(n(Ingress, "198.51.100.7", "10.0.0.5"), (remote, ip("10.0.0.5")));
        // Ingress to a secondary address: the primary.
        assert_eq!(n(Ingress, "198.51.100.7", "10.0.0.6"), (remote, ip("10.0.0.5")));
        // Ingress not addressed to the interface (forwarded): the primary.
        assert_eq!(n(Ingress, "198.51.100.7", "203.0.113.9"), (remote, ip("10.0.0.5")));
        // Egress from the primary or a secondary: unchanged.
        assert_eq!(n(Egress, "10.0.0.5", "198.51.100.7"), (ip("10.0.0.5"), remote));
        assert_eq!(n(Egress, "10.0.0.6", "198.51.100.7"), (ip("10.0.0.6"), remote));
        // Egress with a foreign source (NAT, routing): the primary.
        assert_eq!(n(Egress, "203.0.113.9", "198.51.100.7"), (ip("10.0.0.5"), remote));
        // The remote side is never touched, even if it is an interface address.
        assert_eq!(n(Ingress, "10.0.0.6", "10.0.0.5"), (ip("10.0.0.6"), ip("10.0.0.5")));
        // IPv6 stays as in the packet.
        assert_eq!(n(Ingress, "2001:db8::9", "2001:db8::77"), (ip("2001:db8::9"), ip("2001:db8::77")));
        assert_eq!(n(Egress, "2001:db8::77", "2001:db8::9"), (ip("2001:db8::77"), ip("2001:db8::9")));
        // No address list: nothing to normalise to.
        assert_eq!(normalise_addrs(Ingress, remote, ip("10.0.0.6"), &[]), (remote, ip("10.0.0.6")));
    }
}
