//! Longest-prefix match for IPv4 and IPv6, used by the AWS service lookup,
//! the route table and the exclusions.
//!
//! One hash map per prefix length, tried from the longest length present
//! down. Real tables use few distinct lengths (ip-ranges.json: about 20 per
//! family), so a lookup is a handful of hash probes, with no tree to walk
//! and no per-node allocation. Networks are stored masked, so `10.0.0.1/8`
//! and `10.0.0.0/8` are the same key.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::IpNet;

#[derive(Clone, Debug)]
pub struct PrefixMap<V> {
    /// (prefix length, masked network → value), longest length first.
    v4: Vec<(u8, HashMap<u32, V>)>,
    v6: Vec<(u8, HashMap<u128, V>)>,
}

impl<V> Default for PrefixMap<V> {
    fn default() -> Self {
        PrefixMap { v4: Vec::new(), v6: Vec::new() }
    }
}

fn mask4(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

fn mask6(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    }
}

/// The map of one prefix length in a longest-first list, created if absent.
fn level<K, V>(levels: &mut Vec<(u8, HashMap<K, V>)>, len: u8) -> &mut HashMap<K, V> {
    let i = match levels.iter().position(|(l, _)| *l <= len) {
        Some(i) if levels[i].0 == len => i,
        Some(i) => {
            levels.insert(i, (len, HashMap::new()));
            i
        }
        None => {
            levels.push((len, HashMap::new()));
            levels.len() - 1
        }
    };
    &mut levels[i].1
}

impl<V> PrefixMap<V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the value of a prefix, returning the one it replaces.
    pub fn insert(&mut self, net: IpNet, value: V) -> Option<V> {
        match net {
            IpNet::V4(n) => {
                let len = n.prefix_len();
                level(&mut self.v4, len).insert(u32::from(n.addr()) & mask4(len), value)
            }
            IpNet::V6(n) => {
                let len = n.prefix_len();
                level(&mut self.v6, len).insert(u128::from(n.addr()) & mask6(len), value)
            }
        }
    }

    /// The value stored for exactly this prefix.
    pub fn get_exact_mut(&mut self, net: IpNet) -> Option<&mut V> {
        match net {
            IpNet::V4(n) => {
                let len = n.prefix_len();
                let m = self.v4.iter_mut().find(|(l, _)| *l == len)?;
                m.1.get_mut(&(u32::from(n.addr()) & mask4(len)))
            }
            IpNet::V6(n) => {
                let len = n.prefix_len();
                let m = self.v6.iter_mut().find(|(l, _)| *l == len)?;
                m.1.get_mut(&(u128::from(n.addr()) & mask6(len)))
            }
        }
    }

    /// The value of the longest prefix containing `addr`, with that prefix's
    /// length.
    pub fn lookup(&self, addr: IpAddr) -> Option<(&V, u8)> {
        match addr {
            IpAddr::V4(a) => self.lookup_v4(a),
            IpAddr::V6(a) => self.lookup_v6(a),
        }
    }

    pub fn lookup_v4(&self, addr: Ipv4Addr) -> Option<(&V, u8)> {
        let a = u32::from(addr);
        self.v4.iter().find_map(|(len, m)| m.get(&(a & mask4(*len))).map(|v| (v, *len)))
    }

    pub fn lookup_v6(&self, addr: Ipv6Addr) -> Option<(&V, u8)> {
        let a = u128::from(addr);
        self.v6.iter().find_map(|(len, m)| m.get(&(a & mask6(*len))).map(|v| (v, *len)))
    }

    /// Number of prefixes.
    pub fn len(&self) -> usize {
        self.v4.iter().map(|(_, m)| m.len()).sum::<usize>() + self.v6.iter().map(|(_, m)| m.len()).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn longest_prefix_wins() {
        let mut m = PrefixMap::new();
        for (n, v) in [("10.0.0.0/8", "a"), ("10.1.0.0/16", "b"), ("10.1.2.0/24", "c"), ("0.0.0.0/0", "default"), ("10.1.2.3/32", "host")] {
            assert_eq!(m.insert(net(n), v), None);
        }
        let at = |a: &str| m.lookup(ip(a)).map(|(v, l)| (*v, l));
        assert_eq!(at("10.1.2.3"), Some(("host", 32)));
        assert_eq!(at("10.1.2.4"), Some(("c", 24)));
        assert_eq!(at("10.1.3.4"), Some(("b", 16)));
        assert_eq!(at("10.200.0.1"), Some(("a", 8)));
        assert_eq!(at("192.0.2.1"), Some(("default", 0)));
        // Families do not mix.
        assert_eq!(at("::a01:203"), None);
        assert_eq!(m.len(), 5);
    }

    #[test]
    fn ipv6_and_host_bits() {
        let mut m = PrefixMap::new();
        m.insert(net("2001:db8::/32"), 1);
        m.insert(net("2001:db8:1:2::/64"), 2);
        m.insert(net("::/0"), 0);
        // Host bits are ignored: same key as 2001:db8:1::/48.
        m.insert(net("2001:db8:1::5/48"), 3);
        assert_eq!(m.lookup(ip("2001:db8:1:2::99")), Some((&2, 64)));
        assert_eq!(m.lookup(ip("2001:db8:1:3::99")), Some((&3, 48)));
        assert_eq!(m.lookup(ip("2001:db8:2::1")), Some((&1, 32)));
        assert_eq!(m.lookup(ip("fe80::1")), Some((&0, 0)));
        assert_eq!(m.lookup(ip("10.0.0.1")), None);
        assert_eq!(m.insert(net("2001:db8:1::/48"), 4), Some(3));
        *m.get_exact_mut(net("2001:db8::/32")).unwrap() = 7;
        assert_eq!(m.lookup(ip("2001:db8:2::1")), Some((&7, 32)));
        assert!(m.get_exact_mut(net("2001:db8::/33")).is_none());
    }

    #[test]
    fn levels_stay_sorted_whatever_the_insert_order() {
        let mut m = PrefixMap::new();
        for len in [16u8, 32, 0, 24, 8, 28, 12] {
            m.insert(net(&format!("10.0.0.0/{len}")), len);
        }
        let lens: Vec<u8> = m.v4.iter().map(|(l, _)| *l).collect();
        assert_eq!(lens, [32, 28, 24, 16, 12, 8, 0]);
        assert_eq!(m.lookup(ip("10.0.0.9")), Some((&28, 28)));
        assert_eq!(m.lookup(ip("10.0.1.9")), Some((&16, 16)));
    }
}
