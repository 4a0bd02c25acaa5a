//! flowlog kernel programs: count every packet per interface, direction and
//! 5-tuple, at XDP (ingress) and TC/TCX (egress).
//!
//! Design, in short (details in the agent's `capture` and `drain` modules):
//! - One shared flow table per generation: the slot table (open addressing in
//!   an mmap-able array of 64-byte `FlowSlot`s, claimed by compare-and-
//!   exchange; Linux 5.12+; built with the `slots` feature) or, where the
//!   agent's probe found no compare-and-exchange, a `BPF_MAP_TYPE_HASH` (the
//!   object built without it). Packet and byte counts are updated with
//!   the plain atomic add, never a racy `+=`; TCP flags with atomic OR (slots)
//!   or one-byte stores that cannot lose a flag (hash, see `FlowStats`).
//! - The programs read the active generation from `GENERATION` once per packet.
//!   The agent flips it and then waits for an RCU grace period, after which no
//!   program can still be writing to the old generation; only then is the old
//!   table read and emptied. So every packet lands in exactly one window.
//! - A failed insert (table full) is counted per interface in `FAILS_<gen>`,
//!   and if that too is full, in a per-CPU counter: never silent.
//! - The programs only observe: XDP returns `XDP_PASS`, TC returns
//!   `TC_ACT_UNSPEC` (TCX "next"), so other programs still run.
#![no_std]
#![no_main]
// The BPF target has no compare-and-swap, so core's Atomic* types lack
// fetch_add; the intrinsic lowers to the BPF atomic add instruction.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod drops;
mod parse;

use core::{
    intrinsics::{atomic_cxchg, atomic_or, atomic_xadd, AtomicOrdering::{Relaxed, SeqCst}},
    ptr::{read_volatile, write_volatile},
};

use aya_ebpf::{
    bindings::{xdp_action, BPF_NOEXIST, TC_ACT_UNSPEC},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    macros::{classifier, map, xdp},
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use flowlog_common::{
    bench_cut, counters, direction, family, filters, slot_hash, FlowKey, FlowSlot, FlowStats, InsertFailures, TcpFlagsSeen,
    SLOT_PROBES,
};
use parse::{Packet, ParseError};

/// Overridden by the agent at load time (`--max-flows`).
const DEFAULT_MAX_FLOWS: u32 = 65_536;
/// Interfaces with failed inserts per window; beyond this they are counted
/// in `COUNTERS[UNATTRIBUTED_FAILS_*]`.
const MAX_FAIL_IFACES: u32 = 1024;
const EEXIST: i32 = 17;
/// linux/bpf.h: the array can be mmap()ed by the agent.
const BPF_F_MMAPABLE: u32 = 1 << 10;

#[map]
static FLOWS_0: HashMap<FlowKey, FlowStats> = HashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);
#[map]
static FLOWS_1: HashMap<FlowKey, FlowStats> = HashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);
/// The slot tables (see `FlowSlot`); sized by the agent, 1 entry when unused.
#[map]
static SLOTS_0: Array<FlowSlot> = Array::with_max_entries(1, BPF_F_MMAPABLE);
#[map]
static SLOTS_1: Array<FlowSlot> = Array::with_max_entries(1, BPF_F_MMAPABLE);
/// Per generation: CLOCK_MONOTONIC ns of its window's start (a Unix second
/// boundary), which slot times count from.
#[map]
static SLOT_CLOCK: Array<u64> = Array::with_max_entries(2, 0);
#[map]
static FAILS_0: HashMap<u32, InsertFailures> = HashMap::with_max_entries(MAX_FAIL_IFACES, 0);
#[map]
static FAILS_1: HashMap<u32, InsertFailures> = HashMap::with_max_entries(MAX_FAIL_IFACES, 0);
/// [0]: generation the programs write to; [1]: Unix second of the last
/// flip, kept by the agent so a restarted agent knows when its window began;
/// [2]: `GENERATION_GRACE` (drop program, see `drops`).
#[map]
static GENERATION: Array<u32> = Array::with_max_entries(3, 0);
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counters::LEN, 0);
#[map]
static INCLUDE_CIDRS: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(1024, 0);
#[map]
static EXCLUDE_CIDRS: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(1024, 0);
#[map]
static FILTER_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(1024, 0);
#[map]
static FILTER_PROTOCOLS: Array<u8> = Array::with_max_entries(256, 0);

/// Which kinds of filter run (bits of `flowlog_common::filters`), at index
/// 0. A map, not a load-time constant, so that a reload can switch a kind on
/// or off (issue #23); an array lookup the verifier inlines, then a load.
#[map]
static FILTER_KINDS: Array<u32> = Array::with_max_entries(1, 0);

// Set by the agent at load time (read-only data: the verifier knows the
// values and drops the code of what is off).
#[unsafe(no_mangle)]
static SAMPLE_RATE: u32 = 0;
/// Benchmarks only (`flowlog_common::bench_cut`): return part-way through
/// the counting of a packet, to measure what each part costs. 0 in the
/// agent, and then the verifier removes every cut. Each cut reads it afresh:
/// one value held across `count` pushed the TC programs past LLVM's
/// 512-byte stack.
#[unsafe(no_mangle)]
static BENCH_CUT: u32 = 0;
/// 1: the kernel has `bpf_ktime_get_coarse_ns` (5.11). 0, the default, works
/// everywhere. The verifier sees the frozen value and never walks the other
/// branch; a privileged load deletes it before resolving helper calls, so a
/// 5.10 kernel never meets the helper it does not know.
#[unsafe(no_mangle)]
static COARSE_CLOCK: u32 = 0;
/// Which flow table the programs write: the slot table in the object built
/// with the `slots` feature (flowlog-slots.bpf.o, loaded where the agent's
/// probe found compare-and-exchange), the hash table in the other
/// (flowlog.bpf.o). Two objects, not a frozen global: Linux 5.10 checks
/// every instruction's encoding before it walks any path, and refuses
/// compare-and-exchange even in code it would never run.
pub(crate) const SLOTS: bool = cfg!(feature = "slots");
/// Slots per table minus one.
#[unsafe(no_mangle)]
static SLOT_MASK: u32 = 0;

#[xdp]
pub fn flowlog_ingress(ctx: XdpContext) -> u32 {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    // XDP without frags sees the whole frame in one buffer.
    let len = data_end.saturating_sub(data);
    let ifindex = ctx.ingress_ifindex() as u32;
    match parse::parse(data, data_end, len) {
        Ok(_) if unsafe { read_volatile(&BENCH_CUT) } == bench_cut::AFTER_PARSE => {}
        Ok(pkt) => count(ifindex, direction::INGRESS, &pkt, 1, pkt.ip_len as u64),
        Err(e) => bump_error(e),
    }
    xdp_action::XDP_PASS
}

#[classifier]
pub fn flowlog_egress(ctx: TcContext) -> i32 {
    tc_count(&ctx, direction::EGRESS)
}

/// Ingress at TC, where XDP cannot attach (e.g. NICs whose MTU is above
/// what their XDP support takes). Sees packets after GRO: `wire_counts`
/// splits them back into wire segments.
#[classifier]
pub fn flowlog_ingress_tc(ctx: TcContext) -> i32 {
    tc_count(&ctx, direction::INGRESS)
}

/// Egress of a device without a link-layer header (wireguard, tun, ipip,
/// sit, gre, ppp...): the packet starts with its IP header. The agent
/// attaches these two to such devices, and never XDP; Ethernet devices keep
/// the programs above and pay nothing for this.
#[classifier]
pub fn flowlog_egr_l3(ctx: TcContext) -> i32 {
    tc_count_l3(&ctx, direction::EGRESS)
}

/// Ingress of a device without a link-layer header.
#[classifier]
pub fn flowlog_ingr_l3(ctx: TcContext) -> i32 {
    tc_count_l3(&ctx, direction::INGRESS)
}

#[inline(always)]
fn tc_count(ctx: &TcContext, dir: u8) -> i32 {
    tc_count_with::<false>(ctx, dir)
}

#[inline(always)]
fn tc_count_l3(ctx: &TcContext, dir: u8) -> i32 {
    tc_count_with::<true>(ctx, dir)
}

/// `L3`: the packet starts at the IP header (a constant: each program has
/// only its own parser).
#[inline(always)]
fn tc_count_with<const L3: bool>(ctx: &TcContext, dir: u8) -> i32 {
    let skb = ctx.skb.skb;
    let len = ctx.len() as usize;
    // skb->protocol is in network byte order.
    let proto = if L3 { u16::from_be(unsafe { (*skb).protocol } as u16) } else { 0 };
    let parse = |d: usize, e: usize, l: usize| if L3 { parse::parse_l3(d, e, l, proto) } else { parse::parse(d, e, l) };
    let mut res = parse(ctx.data(), ctx.data_end(), len);
    if let Err(ParseError::NotLinear) = res {
        // Headers beyond the linear area (rare on egress): make them linear
        // and parse once more. 256 bytes covers Ethernet + VLANs + IPv6 with
        // extension headers + TCP with options.
        let want = if len < 256 { len } else { 256 };
        if ctx.pull_data(want as u32).is_ok() {
            res = parse(ctx.data(), ctx.data_end(), len);
        }
    }
    match res {
        Ok(pkt) => {
            let (gso_segs, gso_size, ifindex) =
                unsafe { ((*skb).gso_segs, (*skb).gso_size, (*skb).ifindex) };
            let (packets, bytes) = wire_counts(&pkt, gso_segs, gso_size);
            if unsafe { read_volatile(&BENCH_CUT) } != bench_cut::AFTER_PARSE {
                count(ifindex, dir, &pkt, packets, bytes);
            }
        }
        Err(e) => bump_error(e),
    }
    TC_ACT_UNSPEC
}

/// A GSO super-packet leaves the host as several segments, each with its own
/// copy of the IP and L4 headers: count what goes on the wire.
#[inline(always)]
fn wire_counts(pkt: &Packet, gso_segs: u32, gso_size: u32) -> (u64, u64) {
    let ip_len = pkt.ip_len as u64;
    if gso_size == 0 {
        return (1, ip_len);
    }
    let hdr = pkt.hdr_len as u64;
    let segs = if gso_segs > 0 {
        gso_segs as u64
    } else {
        // gso_segs 0 means "not computed yet" (e.g. packets from a VM).
        let payload = ip_len.saturating_sub(hdr);
        payload.div_ceil(gso_size as u64)
    };
    if segs <= 1 {
        return (1, ip_len);
    }
    (segs, ip_len + (segs - 1) * hdr)
}

/// The address as an IPv6 or IPv4-mapped (::ffff:a.b.c.d) LPM key.
#[inline(always)]
fn lpm_key(fam: u8, a: &[u8; 16]) -> Key<[u8; 16]> {
    if fam == family::IPV4 {
        let mut m = [0u8; 16];
        m[10] = 0xff;
        m[11] = 0xff;
        m[12] = a[0];
        m[13] = a[1];
        m[14] = a[2];
        m[15] = a[3];
        Key::new(128, m)
    } else {
        Key::new(128, *a)
    }
}

/// The configured filters: protocols, ports (either end), CIDRs (either end).
#[inline(always)]
fn admitted(pkt: &Packet) -> bool {
    let f = match FILTER_KINDS.get(0) {
        Some(f) => *f,
        None => return true,
    };
    if f == 0 {
        return true;
    }
    if f & filters::PROTOCOLS != 0 && !matches!(FILTER_PROTOCOLS.get(pkt.protocol as u32), Some(v) if *v != 0) {
        return false;
    }
    if f & (filters::INCLUDE_PORTS | filters::EXCLUDE_PORTS) != 0 {
        let bits = unsafe { FILTER_PORTS.get(pkt.src_port).copied().unwrap_or(0) | FILTER_PORTS.get(pkt.dst_port).copied().unwrap_or(0) };
        if f & filters::INCLUDE_PORTS != 0 && bits & filters::PORT_INCLUDE == 0 {
            return false;
        }
        // Kinds switch on and off apart from their values (a reload): a
        // port's exclude bit counts only while its kind is on.
        if f & filters::EXCLUDE_PORTS != 0 && bits & filters::PORT_EXCLUDE != 0 {
            return false;
        }
    }
    if f & (filters::INCLUDE_CIDRS | filters::EXCLUDE_CIDRS) != 0 {
        let (s, d) = (lpm_key(pkt.family, &pkt.src_addr), lpm_key(pkt.family, &pkt.dst_addr));
        if f & filters::INCLUDE_CIDRS != 0 && INCLUDE_CIDRS.get(&s).is_none() && INCLUDE_CIDRS.get(&d).is_none() {
            return false;
        }
        if f & filters::EXCLUDE_CIDRS != 0 && (EXCLUDE_CIDRS.get(&s).is_some() || EXCLUDE_CIDRS.get(&d).is_some()) {
            return false;
        }
    }
    true
}

/// CLOCK_MONOTONIC, coarse where the kernel has it: records carry whole
/// seconds, and the precise boot clock cost ~30 ns per packet against ~4 ns
/// (BENCHMARKS.md). The coarse clock lags by at most one tick (1-4 ms), which
/// the agent absorbs by clamping record times into their window.
#[inline(always)]
fn now_ns() -> u64 {
    if unsafe { read_volatile(&COARSE_CLOCK) } != 0 {
        unsafe { bpf_ktime_get_coarse_ns() }
    } else {
        unsafe { bpf_ktime_get_ns() }
    }
}

#[inline(always)]
fn count(ifindex: u32, dir: u8, pkt: &Packet, packets: u64, bytes: u64) {
    if !admitted(pkt) {
        bump(counters::FILTERED, packets);
        return;
    }
    let rate = unsafe { core::ptr::read_volatile(&SAMPLE_RATE) } as u64;
    let (packets, bytes) = if rate > 1 {
        // One packet (or GSO super-packet) in `rate`, standing for `rate`.
        if unsafe { bpf_get_prandom_u32() } as u64 % rate != 0 {
            bump(counters::SAMPLED_OUT, packets);
            return;
        }
        (packets * rate, bytes * rate)
    } else {
        (packets, bytes)
    };
    if unsafe { read_volatile(&BENCH_CUT) } == bench_cut::AFTER_FILTERS {
        return;
    }
    let key = FlowKey {
        ifindex,
        src_addr: pkt.src_addr,
        dst_addr: pkt.dst_addr,
        src_port: pkt.src_port,
        dst_port: pkt.dst_port,
        protocol: pkt.protocol,
        direction: dir,
        family: pkt.family,
        _pad: 0,
    };
    let generation = match GENERATION.get(0) {
        Some(g) => *g,
        None => 0,
    };
    // Read the clock after the generation: the agent notes a window's start
    // before it flips.
    let now = now_ns();
    // Both values used, so that neither read is optimised away.
    if unsafe { read_volatile(&BENCH_CUT) } == bench_cut::BEFORE_TABLE && (generation as u64) < now {
        return;
    }
    if SLOTS {
        let key = SlotKey(key);
        let flags = FlowSlot::flag_bits(&pkt.tcp_flags);
        // Separate call sites per generation keep every map pointer a constant
        // for the verifier.
        let stored = if generation == 0 {
            slot_account(&SLOTS_0, &key, packets, bytes, flags, slot_sec(0, now))
        } else {
            slot_account(&SLOTS_1, &key, packets, bytes, flags, slot_sec(1, now))
        };
        if !stored {
            if generation == 0 {
                fail(&FAILS_0, counters::UNATTRIBUTED_FAILS_0, ifindex, packets, bytes);
            } else {
                fail(&FAILS_1, counters::UNATTRIBUTED_FAILS_1, ifindex, packets, bytes);
            }
        }
        return;
    }
    if generation == 0 {
        account(&FLOWS_0, &FAILS_0, counters::UNATTRIBUTED_FAILS_0, &key, ifindex, packets, bytes, pkt.tcp_flags, now);
    } else {
        account(&FLOWS_1, &FAILS_1, counters::UNATTRIBUTED_FAILS_1, &key, ifindex, packets, bytes, pkt.tcp_flags, now);
    }
}

/// Adds to `key`'s entry, creating it if needed; a failed insert is counted
/// against `ifindex` (SKIPDATA). Shared by the flow tables and the REJECT
/// tables of the drop program.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn account<K>(
    flows: &HashMap<K, FlowStats>,
    fails: &HashMap<u32, InsertFailures>,
    unattributed: u32,
    key: &K,
    ifindex: u32,
    packets: u64,
    bytes: u64,
    flags: TcpFlagsSeen,
    now: u64,
) {
    if let Some(v) = flows.get_ptr_mut(key) {
        unsafe { add(v, packets, bytes, flags, now) };
        return;
    }
    let init = FlowStats {
        packets,
        bytes,
        first_seen_ns: now,
        last_seen_ns: now,
        tcp_flags: flags,
        _pad: 0,
    };
    match flows.insert(key, &init, BPF_NOEXIST as u64) {
        Ok(()) => return,
        // Another CPU inserted the same flow between our lookup and insert.
        Err(e) if e == -EEXIST => {
            if let Some(v) = flows.get_ptr_mut(key) {
                unsafe { add(v, packets, bytes, flags, now) };
                return;
            }
        }
        Err(_) => {}
    }
    // The flow table is full (E2BIG) or the insert failed otherwise.
    fail(fails, unattributed, ifindex, packets, bytes);
}

/// Counts packets whose flow could not be stored (SKIPDATA), per interface,
/// or per CPU when the failure table is full too.
#[inline(always)]
fn fail(fails: &HashMap<u32, InsertFailures>, unattributed: u32, ifindex: u32, packets: u64, bytes: u64) {
    if let Some(f) = fails.get_ptr_mut(ifindex) {
        unsafe { add_failure(f, packets, bytes) };
        return;
    }
    let first = InsertFailures { packets, bytes };
    match fails.insert(ifindex, &first, BPF_NOEXIST as u64) {
        Ok(()) => return,
        Err(e) if e == -EEXIST => {
            if let Some(f) = fails.get_ptr_mut(ifindex) {
                unsafe { add_failure(f, packets, bytes) };
                return;
            }
        }
        Err(_) => {}
    }
    bump(unattributed, packets);
}

/// A flow key 8-aligned, so its first 40 bytes read as the words the slot
/// table compares (FlowKey and FlowSlot share those 40 bytes' layout, and
/// the key's next word is the claim word's key part: its `_pad` is 0).
#[repr(C, align(8))]
pub(crate) struct SlotKey(pub(crate) FlowKey);

impl SlotKey {
    #[inline(always)]
    fn words(&self) -> [u64; 5] {
        // SAFETY: 8-aligned, at least 40 bytes of plain integers.
        unsafe { *(self as *const SlotKey as *const [u64; 5]) }
    }
    #[inline(always)]
    fn tail(&self) -> u32 {
        FlowSlot::tail(self.0.protocol, self.0.direction, self.0.family)
    }
}

/// Seconds from generation `g`'s window start to `now`, saturating at
/// u16::MAX (a window longer than 18 h: an agent stopped that long). A
/// multiply and shifts instead of a division by 1e9: (ns >> 20) units of
/// 1.048576 ms times 1.048576e-3 * 2^32; off by at most ~1 ms at a second
/// boundary, less than the coarse clock's own lag.
#[inline(always)]
fn slot_sec(g: u32, now: u64) -> u16 {
    let base = match SLOT_CLOCK.get(g) {
        Some(b) => *b,
        None => 0,
    };
    if now <= base {
        return 0;
    }
    let s = ((now - base) >> 20).wrapping_mul(4_503_600) >> 32;
    if s > u16::MAX as u64 { u16::MAX } else { s as u16 }
}

/// The claim word (protocol, direction, state, flags) of a slot.
#[inline(always)]
fn claim_word(s: *mut FlowSlot) -> *mut u32 {
    unsafe { (&raw mut (*s).protocol) as *mut u32 }
}

/// The published slot of `key`, if any: linear probing from its home slot,
/// stopping at an empty slot (slots never empty during a window).
#[inline(always)]
pub(crate) fn slot_find(t: &Array<FlowSlot>, key: &SlotKey) -> Option<*mut FlowSlot> {
    let (w, tail) = (key.words(), key.tail());
    let mask = unsafe { read_volatile(&SLOT_MASK) };
    let mut i = slot_hash(&w, tail) & mask;
    for _ in 0..SLOT_PROBES {
        let s = t.get_ptr_mut(i)?;
        let cur = unsafe { read_volatile(claim_word(s)) };
        if cur == 0 {
            return None;
        }
        if cur & 0x00ff_ffff == tail && unsafe { slot_is(s, &w) } {
            return Some(s);
        }
        i = (i + 1) & mask;
    }
    None
}

/// Whether the slot's first 40 bytes are `w`: word by word (no array copy on
/// the 512-byte BPF stack).
#[inline(always)]
unsafe fn slot_is(s: *mut FlowSlot, w: &[u64; 5]) -> bool {
    let p = s as *const u64;
    unsafe {
        read_volatile(p) == w[0]
            && read_volatile(p.add(1)) == w[1]
            && read_volatile(p.add(2)) == w[2]
            && read_volatile(p.add(3)) == w[3]
            && read_volatile(p.add(4)) == w[4]
    }
}

/// Adds a packet to its flow's slot, claiming an empty one for a new flow.
/// false: no slot within `SLOT_PROBES` (the table is full: SKIPDATA).
///
/// Two CPUs inserting the same new flow at once: the one that loses the
/// claim of a slot (or sees it claimed, key not yet written) goes on probing
/// and may claim a second slot for the flow; it marks that one MAYBE_DUP and
/// the drain adds it to its twin. Nothing is lost or counted twice.
#[inline(always)]
fn slot_account(t: &Array<FlowSlot>, key: &SlotKey, packets: u64, bytes: u64, flags: u8, sec: u16) -> bool {
    let (w, tail) = (key.words(), key.tail());
    let mask = unsafe { read_volatile(&SLOT_MASK) };
    let mut i = slot_hash(&w, tail) & mask;
    let mut dup = 0u32;
    for _ in 0..SLOT_PROBES {
        let Some(s) = t.get_ptr_mut(i) else { return false };
        let word = claim_word(s);
        let mut cur = unsafe { read_volatile(word) };
        if cur == 0 {
            let claimed = tail & 0xffff | (FlowSlot::CLAIMED as u32) << 16;
            let (prev, won) = unsafe { atomic_cxchg::<u32, { SeqCst }, { SeqCst }>(word, 0, claimed) };
            if won {
                unsafe {
                    let p = s as *mut u64;
                    write_volatile(p, w[0]);
                    write_volatile(p.add(1), w[1]);
                    write_volatile(p.add(2), w[2]);
                    write_volatile(p.add(3), w[3]);
                    write_volatile(p.add(4), w[4]);
                    (*s).first_sec = sec;
                    (*s).last_sec = sec;
                    (*s).packets = packets;
                    (*s).bytes = bytes;
                    // Publishes the key and counts written above (a full
                    // barrier: other CPUs that match the key see them).
                    let flags = (flags as u32 | dup) << 24;
                    atomic_cxchg::<u32, { SeqCst }, { SeqCst }>(word, claimed, tail | flags);
                }
                return true;
            }
            cur = prev;
        }
        if (cur >> 16) as u8 == FlowSlot::CLAIMED {
            dup = FlowSlot::MAYBE_DUP as u32;
        } else if cur & 0x00ff_ffff == tail && unsafe { slot_is(s, &w) } {
            unsafe {
                atomic_xadd::<u64, u64, { Relaxed }>(&raw mut (*s).packets, packets);
                atomic_xadd::<u64, u64, { Relaxed }>(&raw mut (*s).bytes, bytes);
                if sec > read_volatile(&raw const (*s).last_sec) {
                    write_volatile(&raw mut (*s).last_sec, sec);
                }
                let missing = flags as u32 & !(cur >> 24);
                if missing != 0 {
                    atomic_or::<u32, u32, { Relaxed }>(word, missing << 24);
                }
            }
            return true;
        }
        i = (i + 1) & mask;
    }
    false
}

/// Adds to an entry other CPUs may update at the same time. Only the plain
/// atomic add (no BPF_FETCH: the result is unused and the ordering relaxed,
/// so LLVM emits `lock +=`): kernels before 5.12 on x86-64 take no other
/// atomic, and the arm64 JIT none before 5.18, so the same code covers arm64
/// kernels 5.10-5.17 (not run in CI: no arm64 machine). Flags: byte stores.
#[inline(always)]
unsafe fn add(v: *mut FlowStats, packets: u64, bytes: u64, flags: TcpFlagsSeen, now: u64) {
    unsafe {
        atomic_xadd::<u64, u64, { Relaxed }>(&raw mut (*v).packets, packets);
        atomic_xadd::<u64, u64, { Relaxed }>(&raw mut (*v).bytes, bytes);
        // Only moves forward; concurrent CPUs may race by nanoseconds, which
        // cannot change the record's `end` second by more than that.
        if now > (*v).last_seen_ns {
            (*v).last_seen_ns = now;
        }
        if flags.any() {
            let f = &raw mut (*v).tcp_flags;
            set_flag(&raw mut (*f).fin, flags.fin);
            set_flag(&raw mut (*f).syn, flags.syn);
            set_flag(&raw mut (*f).rst, flags.rst);
            set_flag(&raw mut (*f).syn_ack, flags.syn_ack);
        }
    }
}

/// Sets a flag byte to 1 when the packet has the flag and the byte is still
/// 0. Volatile, so the compiler keeps each a one-byte store and never merges
/// the four into a read-modify-write of the word, which could undo another
/// CPU's store; racing stores of the same 1 lose nothing.
#[inline(always)]
unsafe fn set_flag(byte: *mut u8, seen: u8) {
    unsafe {
        if seen != 0 && read_volatile(byte) == 0 {
            write_volatile(byte, 1);
        }
    }
}

#[inline(always)]
unsafe fn add_failure(f: *mut InsertFailures, packets: u64, bytes: u64) {
    unsafe {
        atomic_xadd::<u64, u64, { Relaxed }>(&raw mut (*f).packets, packets);
        atomic_xadd::<u64, u64, { Relaxed }>(&raw mut (*f).bytes, bytes);
    }
}

#[inline(always)]
fn bump_error(e: ParseError) {
    match e {
        ParseError::NonIp => bump(counters::NON_IP, 1),
        ParseError::Malformed | ParseError::NotLinear => bump(counters::MALFORMED, 1),
    }
}

/// Per-CPU counter: no other CPU writes this slot, so a plain add is exact.
#[inline(always)]
fn bump(index: u32, n: u64) {
    if let Some(c) = COUNTERS.get_ptr_mut(index) {
        unsafe { *c += n };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
