//! Frames for BPF_PROG_TEST_RUN: Ethernet with VLAN tags, IPv4 with options
//! and fragments, IPv6 with extension headers, TCP/UDP/ICMP.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;

/// An L4 header plus payload, or raw bytes for other protocols.
#[derive(Clone)]
pub enum L4 {
    Tcp { sport: u16, dport: u16, flags: u8, options: usize, payload: usize },
    Udp { sport: u16, dport: u16, payload: usize },
    /// Echo request with `payload` bytes of data.
    Icmp { payload: usize },
    Raw { proto: u8, bytes: Vec<u8> },
}

impl L4 {
    pub fn proto(&self, v6: bool) -> u8 {
        match self {
            L4::Tcp { .. } => TCP,
            L4::Udp { .. } => UDP,
            L4::Icmp { .. } => if v6 { ICMPV6 } else { ICMP },
            L4::Raw { proto, .. } => *proto,
        }
    }
    pub fn bytes(&self, v6: bool) -> Vec<u8> {
        match self {
            L4::Tcp { sport, dport, flags, options, payload } => {
                assert!(options % 4 == 0 && *options <= 40);
                let mut h = vec![0u8; 20 + options];
                h[0..2].copy_from_slice(&sport.to_be_bytes());
                h[2..4].copy_from_slice(&dport.to_be_bytes());
                h[12] = (((20 + options) / 4) as u8) << 4;
                h[13] = *flags;
                for b in &mut h[20..] {
                    *b = 1; // NOP options
                }
                h.extend(std::iter::repeat_n(0xAB, *payload));
                h
            }
            L4::Udp { sport, dport, payload } => {
                let mut h = vec![0u8; 8];
                h[0..2].copy_from_slice(&sport.to_be_bytes());
                h[2..4].copy_from_slice(&dport.to_be_bytes());
                h[4..6].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
                h.extend(std::iter::repeat_n(0xCD, *payload));
                h
            }
            L4::Icmp { payload } => {
                let mut h = vec![if v6 { 128 } else { 8 }, 0, 0, 0, 0, 1, 0, 1];
                h.extend(std::iter::repeat_n(0x11, *payload));
                h
            }
            L4::Raw { bytes, .. } => bytes.clone(),
        }
    }
}

/// Ethernet header with optional VLAN tags (TPIDs), then `ethertype`.
pub fn eth(vlans: &[u16], ethertype: u16) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
    for (i, tpid) in vlans.iter().enumerate() {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&(100 + i as u16).to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

pub struct V4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// Option bytes (multiple of 4, ≤ 40).
    pub options: usize,
    /// Fragment offset in 8-byte units, and the more-fragments flag.
    pub frag_offset: u16,
    pub more_fragments: bool,
}

impl V4 {
    pub fn new(src: [u8; 4], dst: [u8; 4]) -> Self {
        V4 { src: src.into(), dst: dst.into(), options: 0, frag_offset: 0, more_fragments: false }
    }
    /// The IP packet (header + `l4`), with the protocol of `proto`.
    pub fn packet(&self, proto: u8, l4: &[u8]) -> Vec<u8> {
        let ihl = 20 + self.options;
        let mut h = vec![0u8; ihl];
        h[0] = 0x40 | (ihl / 4) as u8;
        h[2..4].copy_from_slice(&((ihl + l4.len()) as u16).to_be_bytes());
        let frag = self.frag_offset | if self.more_fragments { 0x2000 } else { 0 };
        h[6..8].copy_from_slice(&frag.to_be_bytes());
        h[8] = 64;
        h[9] = proto;
        h[12..16].copy_from_slice(&self.src.octets());
        h[16..20].copy_from_slice(&self.dst.octets());
        for b in &mut h[20..] {
            *b = 1; // NOP options
        }
        h.extend_from_slice(l4);
        h
    }
}

pub struct V6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    /// Extension headers in order: (type, total length in bytes, multiple of 8).
    /// Type 44 (fragment) takes `frag_offset`/`more_fragments`.
    pub ext: Vec<(u8, usize)>,
    pub frag_offset: u16,
    pub more_fragments: bool,
}

impl V6 {
    pub fn new(src: &str, dst: &str) -> Self {
        V6 { src: src.parse().unwrap(), dst: dst.parse().unwrap(), ext: vec![], frag_offset: 0, more_fragments: false }
    }
    pub fn packet(&self, proto: u8, l4: &[u8]) -> Vec<u8> {
        let mut ext = Vec::new();
        for (i, (kind, len)) in self.ext.iter().enumerate() {
            let next = self.ext.get(i + 1).map_or(proto, |e| e.0);
            if *kind == 44 {
                let off = (self.frag_offset << 3) | u16::from(self.more_fragments);
                ext.extend_from_slice(&[next, 0]);
                ext.extend_from_slice(&off.to_be_bytes());
                ext.extend_from_slice(&[0, 0, 0, 7]);
            } else {
                assert!(len % 8 == 0 && *len >= 8);
                let mut h = vec![0u8; *len];
                h[0] = next;
                h[1] = (len / 8 - 1) as u8;
                h[2] = 1; // PadN option filling the rest
                h[3] = (len - 4) as u8;
                ext.extend(h);
            }
        }
        let first = self.ext.first().map_or(proto, |e| e.0);
        let mut h = vec![0u8; 40];
        h[0] = 0x60;
        h[4..6].copy_from_slice(&((ext.len() + l4.len()) as u16).to_be_bytes());
        h[6] = first;
        h[7] = 64;
        h[8..24].copy_from_slice(&self.src.octets());
        h[24..40].copy_from_slice(&self.dst.octets());
        h.extend(ext);
        h.extend_from_slice(l4);
        h
    }
}

pub fn frame_v4(vlans: &[u16], ip: &V4, l4: &L4) -> Vec<u8> {
    let mut f = eth(vlans, 0x0800);
    f.extend(ip.packet(l4.proto(false), &l4.bytes(false)));
    f
}

pub fn frame_v6(vlans: &[u16], ip: &V6, l4: &L4) -> Vec<u8> {
    let mut f = eth(vlans, 0x86DD);
    f.extend(ip.packet(l4.proto(true), &l4.bytes(true)));
    f
}
