//! Frame parser shared by the XDP and TC programs: Ethernet frames
//! ([`parse`]) and, for devices without a link-layer header, bare IP
//! packets ([`parse_l3`]), with the same IP and L4 code.
//!
//! Every read goes through [`at`], which checks the bounds against `data_end`
//! first: the verifier requires it, and it is what keeps truncated frames from
//! ever being read past their end.

use core::mem::size_of;

use flowlog_common::{family, TcpFlagsSeen};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_DSTOPTS: u8 = 60;

/// Extension headers followed before giving up and counting the packet with
/// the extension header as protocol (ports 0).
const MAX_IPV6_EXT: usize = 6;

pub enum ParseError {
    /// Not IPv4/IPv6: ARP, LLDP, ... Not a flow.
    NonIp,
    /// Shorter than its own headers say, or inconsistent headers.
    Malformed,
    /// The frame is long enough, but the headers are not in the linear
    /// area the program can read directly (TC only; XDP frames are linear).
    NotLinear,
}

/// What the programs need of one packet.
pub struct Packet {
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    pub protocol: u8,
    pub family: u8,
    /// The reported TCP flags of this packet; none for other protocols.
    pub tcp_flags: TcpFlagsSeen,
    /// IP-layer length of this packet (as the IP header says).
    pub ip_len: u32,
    /// IP + extension + L4 header bytes, repeated in every GSO segment.
    pub hdr_len: u32,
}

/// Pointer to a `T` at `off` in the packet, if the packet is long enough.
#[inline(always)]
fn at<T>(data: usize, data_end: usize, off: usize) -> Option<*const T> {
    let start = data + off;
    if start + size_of::<T>() > data_end {
        return None;
    }
    Some(start as *const T)
}

/// An IPv4 address in a 16-byte address slot, the other 12 bytes zero.
/// Built from 32-bit words: zeroing the tail of a byte array made LLVM call
/// a byte-by-byte `memset` loop, twice per packet (BENCHMARKS.md).
#[inline(always)]
pub fn v4_slot(a: [u8; 4]) -> [u8; 16] {
    let words = [u32::from_ne_bytes(a), 0, 0, 0];
    // SAFETY: [u32; 4] and [u8; 16] have the same size; any bytes are valid.
    unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(words) }
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

/// `len` is the full frame length; it exceeds `data_end - data` only for a
/// non-linear skb.
#[inline(always)]
pub fn parse(data: usize, data_end: usize, len: usize) -> Result<Packet, ParseError> {
    // A header missing from the readable area: truncated frame, or (TC) a
    // header in the skb's paged part.
    let missing = |needed_end: usize| {
        if needed_end <= len {
            ParseError::NotLinear
        } else {
            ParseError::Malformed
        }
    };

    let eth = at::<[u8; ETH_HLEN]>(data, data_end, 0).ok_or(ParseError::NonIp)?;
    let mut proto = be16(unsafe { [(*eth)[12], (*eth)[13]] });
    let mut l3 = ETH_HLEN;
    // Up to two VLAN tags (802.1Q, or QinQ 802.1ad + 802.1Q).
    for _ in 0..2 {
        if proto != ETH_P_8021Q && proto != ETH_P_8021AD {
            break;
        }
        let tag = at::<[u8; 4]>(data, data_end, l3).ok_or_else(|| missing(l3 + 4))?;
        proto = be16(unsafe { [(*tag)[2], (*tag)[3]] });
        l3 += 4;
    }

    parse_from(data, data_end, len, l3, proto)
}

/// A packet of a device without a link-layer header (wireguard, tun, ipip,
/// sit, gre...): at TC, `data` is the IP header itself and `proto` is
/// `skb->protocol` (host order), which says IPv4 or IPv6.
#[inline(always)]
pub fn parse_l3(data: usize, data_end: usize, len: usize, proto: u16) -> Result<Packet, ParseError> {
    parse_from(data, data_end, len, 0, proto)
}

#[inline(always)]
fn parse_from(data: usize, data_end: usize, len: usize, l3: usize, proto: u16) -> Result<Packet, ParseError> {
    match proto {
        ETH_P_IP => parse_ipv4(data, data_end, len, l3),
        ETH_P_IPV6 => parse_ipv6(data, data_end, len, l3),
        _ => Err(ParseError::NonIp),
    }
}

#[inline(always)]
fn parse_ipv4(data: usize, data_end: usize, len: usize, l3: usize) -> Result<Packet, ParseError> {
    let missing = |end: usize| if end <= len { ParseError::NotLinear } else { ParseError::Malformed };
    let ip = at::<[u8; 20]>(data, data_end, l3).ok_or_else(|| missing(l3 + 20))?;
    let ip = unsafe { *ip };
    if ip[0] >> 4 != 4 {
        return Err(ParseError::Malformed);
    }
    let ihl = ((ip[0] & 0x0f) as usize) * 4;
    if ihl < 20 {
        return Err(ParseError::Malformed);
    }
    let mut tot_len = be16([ip[2], ip[3]]) as usize;
    let avail = len - l3;
    if tot_len == 0 {
        // BIG TCP / TSO super-packets may leave tot_len 0: use the skb length.
        tot_len = avail;
    }
    if tot_len < ihl || tot_len > avail {
        return Err(ParseError::Malformed);
    }
    let frag = be16([ip[6], ip[7]]);
    let non_first_fragment = frag & 0x1fff != 0;
    let mut pkt = Packet {
        src_addr: v4_slot([ip[12], ip[13], ip[14], ip[15]]),
        dst_addr: v4_slot([ip[16], ip[17], ip[18], ip[19]]),
        src_port: 0,
        dst_port: 0,
        protocol: ip[9],
        family: family::IPV4,
        tcp_flags: TcpFlagsSeen::NONE,
        ip_len: tot_len as u32,
        hdr_len: ihl as u32,
    };
    if non_first_fragment {
        return Ok(pkt);
    }
    parse_l4(data, data_end, len, l3 + ihl, tot_len - ihl, ihl, &mut pkt)?;
    Ok(pkt)
}

#[inline(always)]
fn parse_ipv6(data: usize, data_end: usize, len: usize, l3: usize) -> Result<Packet, ParseError> {
    let missing = |end: usize| if end <= len { ParseError::NotLinear } else { ParseError::Malformed };
    let ip = at::<[u8; 40]>(data, data_end, l3).ok_or_else(|| missing(l3 + 40))?;
    let ip = unsafe { &*ip };
    if ip[0] >> 4 != 6 {
        return Err(ParseError::Malformed);
    }
    let avail = len - l3;
    let payload_len = be16([ip[4], ip[5]]) as usize;
    // payload_len 0: jumbogram / BIG TCP super-packet; use the skb length.
    let ip_len = if payload_len == 0 { avail } else { 40 + payload_len };
    if ip_len > avail {
        return Err(ParseError::Malformed);
    }
    let mut pkt = Packet {
        src_addr: [0; 16],
        dst_addr: [0; 16],
        src_port: 0,
        dst_port: 0,
        protocol: 0,
        family: family::IPV6,
        tcp_flags: TcpFlagsSeen::NONE,
        ip_len: ip_len as u32,
        hdr_len: 40,
    };
    pkt.src_addr.copy_from_slice(&ip[8..24]);
    pkt.dst_addr.copy_from_slice(&ip[24..40]);

    let mut next = ip[6];
    let mut off = 40usize; // from the start of the IPv6 header
    for _ in 0..MAX_IPV6_EXT {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let h = at::<[u8; 2]>(data, data_end, l3 + off).ok_or_else(|| missing(l3 + off + 2))?;
                let h = unsafe { *h };
                next = h[0];
                off += (h[1] as usize + 1) * 8;
            }
            IPPROTO_FRAGMENT => {
                let h = at::<[u8; 8]>(data, data_end, l3 + off).ok_or_else(|| missing(l3 + off + 8))?;
                let h = unsafe { *h };
                next = h[0];
                off += 8;
                if be16([h[2], h[3]]) & 0xfff8 != 0 {
                    // Non-first fragment: no L4 header here, ports stay 0.
                    if off > ip_len {
                        return Err(ParseError::Malformed);
                    }
                    pkt.protocol = next;
                    pkt.hdr_len = off as u32;
                    return Ok(pkt);
                }
            }
            _ => break,
        }
    }
    if off > ip_len {
        return Err(ParseError::Malformed);
    }
    pkt.protocol = next;
    pkt.hdr_len = off as u32;
    parse_l4(data, data_end, len, l3 + off, ip_len - off, off, &mut pkt)?;
    Ok(pkt)
}

/// Reads ports (TCP, UDP) and TCP flags. `l4_len` is what the IP header
/// leaves for L4; `l3_hdr` the bytes of IP headers before it.
#[inline(always)]
fn parse_l4(
    data: usize,
    data_end: usize,
    len: usize,
    l4: usize,
    l4_len: usize,
    l3_hdr: usize,
    pkt: &mut Packet,
) -> Result<(), ParseError> {
    let missing = |end: usize| if end <= len { ParseError::NotLinear } else { ParseError::Malformed };
    match pkt.protocol {
        IPPROTO_TCP => {
            if l4_len < 20 {
                return Err(ParseError::Malformed);
            }
            let t = at::<[u8; 20]>(data, data_end, l4).ok_or_else(|| missing(l4 + 20))?;
            let t = unsafe { *t };
            pkt.src_port = be16([t[0], t[1]]);
            pkt.dst_port = be16([t[2], t[3]]);
            let doff = ((t[12] >> 4) as usize) * 4;
            if doff < 20 || doff > l4_len {
                return Err(ParseError::Malformed);
            }
            pkt.tcp_flags = TcpFlagsSeen::of_packet(t[13]);
            pkt.hdr_len = (l3_hdr + doff) as u32;
        }
        IPPROTO_UDP => {
            if l4_len < 8 {
                return Err(ParseError::Malformed);
            }
            let u = at::<[u8; 8]>(data, data_end, l4).ok_or_else(|| missing(l4 + 8))?;
            let u = unsafe { *u };
            pkt.src_port = be16([u[0], u[1]]);
            pkt.dst_port = be16([u[2], u[3]]);
            pkt.hdr_len = (l3_hdr + 8) as u32;
        }
        // ICMP, ICMPv6 and everything else: ports 0, as AWS writes them.
        _ => {}
    }
    Ok(())
}
