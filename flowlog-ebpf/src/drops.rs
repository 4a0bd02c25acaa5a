//! REJECT: packets the host dropped, seen at the `kfree_skb` tracepoint
//! (`tp_btf`), whose drop reason tells a netfilter drop from the others.
//!
//! How counts move (see the README, "ACCEPT and REJECT on a host"):
//! - Ingress: the packet was already counted as ACCEPT by XDP on the
//!   receiving interface. The program takes those packets and bytes back out
//!   of the flow's ACCEPT entry (atomic add of the negated amounts; undone if
//!   the entry had fewer) and adds them to the REJECT entry of the same
//!   window. The ACCEPT entry is first looked for in the current generation;
//!   during a flip (`GENERATION[GENERATION_GRACE] = old + 1`) also in the
//!   generation being closed, so a packet counted just before a flip and
//!   dropped just after it still moves, inside the window that counted it
//!   (or the next one, if that one holds enough packets of the flow). Only
//!   when neither holds it is the packet REJECT without its ACCEPT being
//!   taken back, and it is counted in `COUNTERS[REJECT_NOT_MOVED]`.
//! - Egress: netfilter's hooks (OUTPUT, POSTROUTING, netdev egress) run
//!   before TC egress, so a dropped outgoing packet was never counted: it is
//!   only added to REJECT.
//!
//! Unlike the capture programs this one uses fetch-add (5.12 on x86-64, 5.18
//! in the arm64 JIT). It is only loaded where `kfree_skb` has drop reasons
//! (5.17, checked in the agent's BTF before load), so x86-64 always has it;
//! only an arm64 5.17 kernel would refuse it. The capture programs are
//! separate programs of the same object: their load never sees this code.
//!
//! The program reads `struct sk_buff` with `bpf_probe_read_kernel` at offsets
//! the agent found in the kernel's BTF (`DROP_CONFIG`); it never writes to
//! the packet and returns 0.

use core::intrinsics::{atomic_xadd, AtomicOrdering::{Relaxed, SeqCst}};

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{btf_tracepoint, map},
    maps::HashMap,
    programs::BtfTracePointContext,
    Global,
};
use flowlog_common::{
    counters, direction, family, DropConfig, DropIface, FlowKey, FlowStats, RejectKey, TcpFlagsSeen, GENERATION_GRACE,
};

use crate::{
    bump, parse::Packet, wire_counts, DEFAULT_MAX_FLOWS, FAILS_0, FAILS_1, FLOWS_0, FLOWS_1,
    GENERATION,
};

#[unsafe(no_mangle)]
static DROP_CONFIG: Global<DropConfig> = Global::new(DropConfig::DISABLED);

#[map]
static REJECTS_0: HashMap<RejectKey, FlowStats> = HashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);
#[map]
static REJECTS_1: HashMap<RejectKey, FlowStats> = HashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);
/// Interfaces the agent captures on (value unused).
#[map]
static DROP_IFACES: HashMap<DropIface, u32> = HashMap::with_max_entries(1024, 0);
/// Drop reasons that count as REJECT (value unused).
#[map]
static DROP_REASONS: HashMap<u32, u32> = HashMap::with_max_entries(256, 0);

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_DSTOPTS: u8 = 60;
const MAX_IPV6_EXT: usize = 6;

/// `trace_kfree_skb(skb, location, reason, rx_sk)`; the agent checks this
/// argument order in the kernel's BTF before it attaches.
#[btf_tracepoint(function = "kfree_skb")]
pub fn flowlog_drop(ctx: BtfTracePointContext) -> i32 {
    let reason: u64 = ctx.arg(2);
    let reason = reason as u32;
    if unsafe { DROP_REASONS.get(&reason) }.is_none() {
        return 0;
    }
    let skb: u64 = ctx.arg(0);
    on_drop(skb as usize, reason);
    0
}

#[inline(always)]
fn read<T>(base: usize, off: u32) -> Option<T> {
    unsafe { bpf_probe_read_kernel((base + off as usize) as *const T).ok() }
}

#[inline(always)]
fn on_drop(skb: usize, reason: u32) {
    let c = DROP_CONFIG.load();
    if c.enabled == 0 || skb == 0 {
        return;
    }
    let Some((dir, ifindex, dev)) = interface(&c, skb) else { return };
    let netns = if c.dev_net == u32::MAX {
        0
    } else {
        match read::<u64>(dev, c.dev_net).and_then(|net| read::<u32>(net as usize, c.net_inum)) {
            Some(n) => n,
            None => return,
        }
    };
    if unsafe { DROP_IFACES.get(&DropIface { ifindex, netns }) }.is_none() {
        return;
    }
    let Some(pkt) = packet(&c, skb) else {
        bump(counters::REJECT_UNPARSED, 1);
        return;
    };
    let (gso_size, gso_segs) = match shinfo(&c, skb) {
        Some(v) => v,
        None => (0, 0),
    };
    let (packets, bytes) = wire_counts(&pkt, gso_segs as u32, gso_size as u32);
    let key = RejectKey {
        flow: FlowKey {
            ifindex,
            src_addr: pkt.src_addr,
            dst_addr: pkt.dst_addr,
            src_port: pkt.src_port,
            dst_port: pkt.dst_port,
            protocol: pkt.protocol,
            direction: dir,
            family: pkt.family,
            _pad: 0,
        },
        reason,
    };
    let generation = match GENERATION.get(0) {
        Some(g) => *g & 1,
        None => 0,
    };
    let grace = match GENERATION.get(GENERATION_GRACE) {
        Some(g) => *g,
        None => 0,
    };
    let now = unsafe { bpf_ktime_get_ns() };
    let mut target = generation;
    if dir == direction::INGRESS {
        let other = 1 - generation;
        if take_back(generation, &key.flow, packets, bytes) {
        } else if grace == other + 1 && take_back(other, &key.flow, packets, bytes) {
            target = other;
        } else {
            bump(counters::REJECT_NOT_MOVED, packets);
        }
    }
    if target == 0 {
        crate::account(&REJECTS_0, &FAILS_0, counters::UNATTRIBUTED_FAILS_0, &key, key.flow.ifindex, packets, bytes, pkt.tcp_flags, now);
    } else {
        crate::account(&REJECTS_1, &FAILS_1, counters::UNATTRIBUTED_FAILS_1, &key, key.flow.ifindex, packets, bytes, pkt.tcp_flags, now);
    }
}

/// (direction, ifindex, net_device pointer) of a dropped packet.
///
/// A received packet has `skb_iif` set (the device it arrived on, also for
/// packets dropped while being forwarded): ingress there. A locally
/// generated one has `skb_iif == 0`: egress on `skb->dev`, or before
/// POSTROUTING (`skb->dev` not set yet) on its route's device.
#[inline(always)]
fn interface(c: &DropConfig, skb: usize) -> Option<(u8, u32, usize)> {
    let iif: u32 = read(skb, c.skb_iif)?;
    let dev = read::<u64>(skb, c.skb_dev)? as usize;
    if iif != 0 {
        if dev == 0 {
            return None;
        }
        return Some((direction::INGRESS, iif, dev));
    }
    let dev = if dev != 0 {
        dev
    } else {
        // `_skb_refdst`: dst pointer, bit 0 = SKB_DST_NOREF.
        let dst = (read::<u64>(skb, c.skb_refdst)? & !1u64) as usize;
        if dst == 0 {
            return None;
        }
        read::<u64>(dst, c.dst_dev)? as usize
    };
    if dev == 0 {
        return None;
    }
    let ifindex: u32 = read(dev, c.dev_ifindex)?;
    Some((direction::EGRESS, ifindex, dev))
}

#[inline(always)]
fn shinfo(c: &DropConfig, skb: usize) -> Option<(u16, u16)> {
    let head = read::<u64>(skb, c.skb_head)? as usize;
    let end: u32 = read(skb, c.skb_end)?;
    let sh = head + end as usize;
    Some((read(sh, c.shinfo_gso_size)?, read(sh, c.shinfo_gso_segs)?))
}

/// The packet's flow, from its IP header on: the same fields and lengths as
/// the XDP/TC parser (`parse.rs`) finds, read with `bpf_probe_read_kernel`
/// from the skb's linear area.
#[inline(always)]
fn packet(c: &DropConfig, skb: usize) -> Option<Packet> {
    let head = read::<u64>(skb, c.skb_head)?;
    let data = read::<u64>(skb, c.skb_data)?;
    let len: u32 = read(skb, c.skb_len)?;
    let nh: u16 = read(skb, c.skb_network_header)?;
    let tail: u32 = read(skb, c.skb_tail)?;
    let (nh, tail) = (nh as u64, tail as u64);
    // skb->len counts from skb->data; the IP packet starts at the network header.
    let l3_len = (len as u64 + (data.wrapping_sub(head))).checked_sub(nh)?;
    let linear = tail.checked_sub(nh)?;
    let base = (head + nh) as usize;
    let first: [u8; 1] = read(base, 0)?;
    match first[0] >> 4 {
        4 => ipv4(base, linear, l3_len),
        6 => ipv6(base, linear, l3_len),
        _ => None,
    }
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

#[inline(always)]
fn ipv4(base: usize, linear: u64, l3_len: u64) -> Option<Packet> {
    if linear < 20 {
        return None;
    }
    let ip: [u8; 20] = read(base, 0)?;
    let ihl = ((ip[0] & 0x0f) as u64) * 4;
    if ihl < 20 {
        return None;
    }
    let mut tot_len = be16([ip[2], ip[3]]) as u64;
    if tot_len == 0 {
        tot_len = l3_len;
    }
    if tot_len < ihl || tot_len > l3_len {
        return None;
    }
    let mut pkt = Packet {
        src_addr: [0; 16],
        dst_addr: [0; 16],
        src_port: 0,
        dst_port: 0,
        protocol: ip[9],
        family: family::IPV4,
        tcp_flags: TcpFlagsSeen::NONE,
        ip_len: tot_len as u32,
        hdr_len: ihl as u32,
    };
    pkt.src_addr[..4].copy_from_slice(&ip[12..16]);
    pkt.dst_addr[..4].copy_from_slice(&ip[16..20]);
    if be16([ip[6], ip[7]]) & 0x1fff != 0 {
        return Some(pkt);
    }
    l4(base, linear, ihl, tot_len - ihl, &mut pkt)?;
    Some(pkt)
}

#[inline(always)]
fn ipv6(base: usize, linear: u64, l3_len: u64) -> Option<Packet> {
    if linear < 40 {
        return None;
    }
    let ip: [u8; 40] = read(base, 0)?;
    let payload_len = be16([ip[4], ip[5]]) as u64;
    let ip_len = if payload_len == 0 { l3_len } else { 40 + payload_len };
    if ip_len > l3_len {
        return None;
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
    let mut off = 40u64;
    for _ in 0..MAX_IPV6_EXT {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                if off + 2 > linear {
                    return None;
                }
                let h: [u8; 2] = read(base + off as usize, 0)?;
                next = h[0];
                off += (h[1] as u64 + 1) * 8;
            }
            IPPROTO_FRAGMENT => {
                if off + 8 > linear {
                    return None;
                }
                let h: [u8; 8] = read(base + off as usize, 0)?;
                next = h[0];
                off += 8;
                if be16([h[2], h[3]]) & 0xfff8 != 0 {
                    if off > ip_len {
                        return None;
                    }
                    pkt.protocol = next;
                    pkt.hdr_len = off as u32;
                    return Some(pkt);
                }
            }
            _ => break,
        }
    }
    if off > ip_len {
        return None;
    }
    pkt.protocol = next;
    pkt.hdr_len = off as u32;
    l4(base, linear, off, ip_len - off, &mut pkt)?;
    Some(pkt)
}

#[inline(always)]
fn l4(base: usize, linear: u64, off: u64, l4_len: u64, pkt: &mut Packet) -> Option<()> {
    match pkt.protocol {
        IPPROTO_TCP => {
            if l4_len < 20 || off + 20 > linear {
                return None;
            }
            let t: [u8; 20] = read(base + off as usize, 0)?;
            pkt.src_port = be16([t[0], t[1]]);
            pkt.dst_port = be16([t[2], t[3]]);
            let doff = ((t[12] >> 4) as u64) * 4;
            if doff < 20 || doff > l4_len {
                return None;
            }
            pkt.tcp_flags = TcpFlagsSeen::of_packet(t[13]);
            pkt.hdr_len = (off + doff) as u32;
        }
        IPPROTO_UDP => {
            if l4_len < 8 || off + 8 > linear {
                return None;
            }
            let u: [u8; 8] = read(base + off as usize, 0)?;
            pkt.src_port = be16([u[0], u[1]]);
            pkt.dst_port = be16([u[2], u[3]]);
            pkt.hdr_len = (off + 8) as u32;
        }
        _ => {}
    }
    Some(())
}

/// Takes `packets`/`bytes` back out of the flow's ACCEPT entry in
/// generation `g`, if it holds at least that much.
#[inline(always)]
fn take_back(g: u32, key: &FlowKey, packets: u64, bytes: u64) -> bool {
    if crate::SLOTS {
        let k = crate::SlotKey(*key);
        let slot = if g == 0 { crate::slot_find(&crate::SLOTS_0, &k) } else { crate::slot_find(&crate::SLOTS_1, &k) };
        let Some(s) = slot else { return false };
        return unsafe { take(&raw mut (*s).packets, &raw mut (*s).bytes, packets, bytes) };
    }
    let entry = if g == 0 { FLOWS_0.get_ptr_mut(key) } else { FLOWS_1.get_ptr_mut(key) };
    let Some(v) = entry else { return false };
    unsafe { take(&raw mut (*v).packets, &raw mut (*v).bytes, packets, bytes) }
}

/// Subtracts from a flow's counters if they hold at least that much.
#[inline(always)]
unsafe fn take(p: *mut u64, b: *mut u64, packets: u64, bytes: u64) -> bool {
    unsafe {
        // No compare-and-swap on BPF: subtract, and undo if the entry held
        // less (signed: another CPU may be undoing the same right now).
        // SeqCst, not Relaxed: LLVM 22's BPF backend lowers a *relaxed*
        // fetch-add to the plain `lock +=`, which returns nothing, and then
        // uses the operand register as if it were the old value.
        let before = atomic_xadd::<u64, u64, { SeqCst }>(p, packets.wrapping_neg());
        if (before as i64) >= packets as i64 {
            let before_b = atomic_xadd::<u64, u64, { SeqCst }>(b, bytes.wrapping_neg());
            if (before_b as i64) >= bytes as i64 {
                return true;
            }
            atomic_xadd::<u64, u64, { Relaxed }>(b, bytes);
        }
        atomic_xadd::<u64, u64, { Relaxed }>(p, packets);
    }
    false
}

