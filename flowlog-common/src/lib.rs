//! Types shared by the kernel programs (`flowlog-ebpf`) and the agent.
//!
//! Everything here is `#[repr(C)]` with explicit padding fields, so the byte
//! layout of a map key is the same on both sides and never contains
//! uninitialised padding: the kernel hashes every byte of a key, so a stray
//! byte would split one flow into several entries.
#![cfg_attr(not(test), no_std)]

/// Version of the map layout (names, key and value types, sizes). Pinned
/// maps of another version are not reused: an agent of a new layout starts
/// clean and says so. Bump on every incompatible change.
pub const MAP_LAYOUT_VERSION: u32 = 6;

/// Map names, as they appear in the eBPF object.
pub mod maps {
    /// Flow table of generation 0 (`HashMap<FlowKey, FlowStats>`).
    pub const FLOWS_0: &str = "FLOWS_0";
    /// Flow table of generation 1.
    pub const FLOWS_1: &str = "FLOWS_1";
    /// Failed flow inserts per interface, generation 0 (`HashMap<u32, InsertFailures>`).
    pub const FAILS_0: &str = "FAILS_0";
    /// Failed flow inserts per interface, generation 1.
    pub const FAILS_1: &str = "FAILS_1";
    /// `u32`s: [0] the generation the programs write to now (0 or 1),
    /// [1] the Unix second of the last flip (written by the agent only),
    /// [2] see [`super::GENERATION_GRACE`].
    pub const GENERATION: &str = "GENERATION";
    /// Per-CPU `u64` counters indexed by [`super::counters`].
    pub const COUNTERS: &str = "COUNTERS";
    /// Filters (configuration, not pinned): `LpmTrie<[u8; 16], u8>` of
    /// IPv6 or IPv4-mapped prefixes.
    pub const INCLUDE_CIDRS: &str = "INCLUDE_CIDRS";
    pub const EXCLUDE_CIDRS: &str = "EXCLUDE_CIDRS";
    /// `HashMap<u16, u8>`: port → [`super::filters::PORT_INCLUDE`] | [`super::filters::PORT_EXCLUDE`].
    pub const FILTER_PORTS: &str = "FILTER_PORTS";
    /// `Array<u32>` of 1: the bits of [`super::filters`] that are on.
    /// Written after a kind's values are in and before they go, so a reload
    /// switches kinds between packets.
    pub const FILTER_KINDS: &str = "FILTER_KINDS";
    /// `Array<u8>` of 256: 1 where the protocol is counted.
    pub const FILTER_PROTOCOLS: &str = "FILTER_PROTOCOLS";
    /// REJECT counts of generation 0 (`HashMap<RejectKey, FlowStats>`),
    /// written by the drop program.
    pub const REJECTS_0: &str = "REJECTS_0";
    /// REJECT counts of generation 1.
    pub const REJECTS_1: &str = "REJECTS_1";
    /// Interfaces the drop program reports (`HashMap<DropIface, u32>`).
    pub const DROP_IFACES: &str = "DROP_IFACES";
    /// Kernel drop reasons counted as REJECT (`HashMap<u32, u32>`).
    pub const DROP_REASONS: &str = "DROP_REASONS";
    /// Slot table of generation 0 (`BPF_F_MMAPABLE` `Array<FlowSlot>`),
    /// used instead of `FLOWS_0` by the programs of the slot-table object.
    pub const SLOTS_0: &str = "SLOTS_0";
    /// Slot table of generation 1.
    pub const SLOTS_1: &str = "SLOTS_1";
    /// `u64`s: [g] the CLOCK_MONOTONIC ns, on a Unix second boundary, at
    /// which generation g's window began: slot times count seconds from it.
    pub const SLOT_CLOCK: &str = "SLOT_CLOCK";
}


/// Load-time settings of the programs (read-only globals: the verifier
/// drops the code of the branches their values rule out).
pub mod globals {
    /// `u32`: count 1 packet in N (scaled by N); 0 or 1 counts every packet.
    pub const SAMPLE_RATE: &str = "SAMPLE_RATE";
    /// `u32`: one of [`super::bench_cut`]; 0 (none) outside benchmarks.
    pub const BENCH_CUT: &str = "BENCH_CUT";
    /// `u32`: 1 where the kernel has `bpf_ktime_get_coarse_ns` (5.11), else
    /// 0 and the programs read `bpf_ktime_get_ns`. Both are CLOCK_MONOTONIC.
    /// The verifier follows only the branch of the frozen value, and a
    /// privileged load removes the other before it resolves helpers, so an
    /// older kernel never sees the helper it lacks.
    pub const COARSE_CLOCK: &str = "COARSE_CLOCK";
    /// `u32`: slots per slot table minus one (a power of two minus one).
    pub const SLOT_MASK: &str = "SLOT_MASK";
}

/// Filter bits and map values.
pub mod filters {
    pub const INCLUDE_CIDRS: u32 = 1;
    pub const EXCLUDE_CIDRS: u32 = 2;
    pub const INCLUDE_PORTS: u32 = 4;
    pub const EXCLUDE_PORTS: u32 = 8;
    pub const PROTOCOLS: u32 = 16;
    /// `FILTER_PORTS` value bits.
    pub const PORT_INCLUDE: u8 = 1;
    pub const PORT_EXCLUDE: u8 = 2;
}

/// Where a benchmark build of the counting stops (`globals::BENCH_CUT`):
/// the cost of each part of a packet's counting is the difference between
/// two cuts (BENCHMARKS.md, issue #22). Outside benchmarks: `NONE`.
pub mod bench_cut {
    /// Count every packet completely.
    pub const NONE: u32 = 0;
    /// Return once the packet is parsed (and its wire segments known).
    pub const AFTER_PARSE: u32 = 1;
    /// ... once the filters and the sampling have admitted it.
    pub const AFTER_FILTERS: u32 = 2;
    /// ... once the generation and the clock are read: only the table's
    /// entry is not written.
    pub const BEFORE_TABLE: u32 = 3;
}

/// Index of `GENERATION` the agent sets, during a flip, to `old + 1`: the
/// drop program may still move counts out of the old generation's ACCEPT
/// table (a packet counted before the flip and dropped after it). 0: only
/// the current generation.
pub const GENERATION_GRACE: u32 = 2;

/// Indexes into the per-CPU `COUNTERS` array.
pub mod counters {
    /// IP frames that were shorter than their headers say (not counted as flows).
    pub const MALFORMED: u32 = 0;
    /// Frames that are not IPv4/IPv6 (ARP, LLDP, ...), ignored by design.
    pub const NON_IP: u32 = 1;
    /// Insert failures of generation 0 that could not even be attributed to
    /// an interface because the `FAILS_0` map was full.
    pub const UNATTRIBUTED_FAILS_0: u32 = 2;
    /// Same for generation 1.
    pub const UNATTRIBUTED_FAILS_1: u32 = 3;
    /// Packets the filters left out.
    pub const FILTERED: u32 = 4;
    /// Packets sampling skipped (the counted ones stand for them).
    pub const SAMPLED_OUT: u32 = 5;
    /// Ingress packets dropped (REJECT) whose ACCEPT count could not be taken
    /// back: no entry of the same flow with enough packets in the current
    /// window nor in the one being closed. They are in an ACCEPT record of
    /// an earlier window *and* in a REJECT record.
    pub const REJECT_NOT_MOVED: u32 = 6;
    /// Dropped packets of a watched interface whose headers could not be
    /// read (not in the linear area, or malformed): not counted as REJECT.
    pub const REJECT_UNPARSED: u32 = 7;
    /// Number of counters.
    pub const LEN: u32 = 8;
}

/// Capture direction, relative to the interface.
pub mod direction {
    pub const INGRESS: u8 = 0;
    pub const EGRESS: u8 = 1;
}

/// `FlowKey::family` values.
pub mod family {
    pub const IPV4: u8 = 4;
    pub const IPV6: u8 = 6;
}

/// One flow, per interface and direction. 44 bytes, no implicit padding.
///
/// IPv4 addresses occupy the first 4 bytes of the address arrays; the other
/// 12 bytes are zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub ifindex: u32,
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    /// Host byte order. 0 for protocols without ports and non-first fragments.
    pub src_port: u16,
    pub dst_port: u16,
    /// IANA protocol number of the upper layer (after IPv6 extension headers).
    pub protocol: u8,
    pub direction: u8,
    pub family: u8,
    pub _pad: u8,
}

/// The TCP flags AWS reports in `tcp-flags` (FIN 1, SYN 2, RST 4, SYN-ACK
/// 18), seen in a window: one byte each, 0 or 1.
///
/// Bytes, not bits of one word: several CPUs update the same entry, and
/// setting a bit without losing a concurrent one needs an atomic OR, which
/// kernels before 5.12 (x86-64) or 5.18 (arm64 JIT) refuse. A program sets a
/// byte with a plain one-byte store of 1 when it reads 0; racing stores all
/// write the same value, so no flag is ever lost.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpFlagsSeen {
    pub fin: u8,
    pub syn: u8,
    pub rst: u8,
    /// One packet carried SYN and ACK together. AWS reports SYN-ACK only for
    /// such packets, not for a SYN followed by a plain ACK.
    pub syn_ack: u8,
}

impl TcpFlagsSeen {
    pub const NONE: TcpFlagsSeen = TcpFlagsSeen { fin: 0, syn: 0, rst: 0, syn_ack: 0 };

    /// The flags of one packet, from the raw TCP flags byte.
    pub const fn of_packet(flags: u8) -> TcpFlagsSeen {
        TcpFlagsSeen {
            fin: flags & 0x01,
            syn: (flags >> 1) & 1,
            rst: (flags >> 2) & 1,
            syn_ack: (flags & 0x12 == 0x12) as u8,
        }
    }

    pub const fn any(&self) -> bool {
        self.fin | self.syn | self.rst | self.syn_ack != 0
    }

    pub fn absorb(&mut self, o: &TcpFlagsSeen) {
        self.fin |= o.fin;
        self.syn |= o.syn;
        self.rst |= o.rst;
        self.syn_ack |= o.syn_ack;
    }
}

/// Counters of one flow in one aggregation window. 40 bytes.
///
/// The map is shared by all CPUs. `packets` and `bytes` only ever get the
/// plain atomic add (BPF_ATOMIC | BPF_ADD without BPF_FETCH, once called
/// BPF_XADD): the only atomic instruction every supported kernel accepts
/// (atomic OR and every fetch variant arrived in 5.12 on x86-64 and 5.18 in
/// the arm64 JIT). The flags need no atomic at all (see [`TcpFlagsSeen`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// Wire packets: a GSO super-packet counts as its segments.
    pub packets: u64,
    /// Bytes at the IP layer (IP header included, link header excluded).
    pub bytes: u64,
    /// CLOCK_MONOTONIC time of the first packet in the window (the coarse
    /// clock where the kernel has it, see [`globals::COARSE_CLOCK`]).
    pub first_seen_ns: u64,
    /// CLOCK_MONOTONIC time of the last packet in the window.
    pub last_seen_ns: u64,
    pub tcp_flags: TcpFlagsSeen,
    /// Zero: keeps the size a multiple of 8 without implicit padding.
    pub _pad: u32,
}

impl FlowStats {
    /// Adds another entry of the same flow (userspace: two tables or two
    /// drop reasons that hold the same flow).
    pub fn absorb(&mut self, o: &FlowStats) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.first_seen_ns = self.first_seen_ns.min(o.first_seen_ns);
        self.last_seen_ns = self.last_seen_ns.max(o.last_seen_ns);
        self.tcp_flags.absorb(&o.tcp_flags);
    }
}

/// Packets whose flow could not be inserted (map full) in one window.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InsertFailures {
    pub packets: u64,
    pub bytes: u64,
}

/// Key of the REJECT tables: the flow and the kernel's drop reason
/// (`enum skb_drop_reason` value of the running kernel). 48 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RejectKey {
    pub flow: FlowKey,
    pub reason: u32,
}

/// Key of `DROP_IFACES`: an interface the agent captures on. Interface
/// indexes are per network namespace, and the drop tracepoint sees every
/// namespace, so the namespace's inode number is part of the key.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DropIface {
    pub ifindex: u32,
    pub netns: u32,
}

/// Byte offsets into kernel structures, read by the agent from the running
/// kernel's BTF and given to the drop program as a read-only global (aya-ebpf
/// has no CO-RE relocations). `enabled == 0`: the program does nothing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropConfig {
    pub enabled: u32,
    pub skb_head: u32,
    pub skb_data: u32,
    pub skb_len: u32,
    pub skb_network_header: u32,
    pub skb_tail: u32,
    pub skb_end: u32,
    pub skb_dev: u32,
    pub skb_iif: u32,
    pub skb_refdst: u32,
    pub dev_ifindex: u32,
    /// `net_device.nd_net.net`; `u32::MAX` on kernels without namespaces.
    pub dev_net: u32,
    /// `net.ns.inum`.
    pub net_inum: u32,
    pub dst_dev: u32,
    pub shinfo_gso_size: u32,
    pub shinfo_gso_segs: u32,
}

impl DropConfig {
    pub const DISABLED: DropConfig = DropConfig {
        enabled: 0,
        skb_head: 0,
        skb_data: 0,
        skb_len: 0,
        skb_network_header: 0,
        skb_tail: 0,
        skb_end: 0,
        skb_dev: 0,
        skb_iif: 0,
        skb_refdst: 0,
        dev_ifindex: 0,
        dev_net: 0,
        net_inum: 0,
        dst_dev: 0,
        shinfo_gso_size: 0,
        shinfo_gso_segs: 0,
    };
}

/// One flow of the slot table: a whole cache line (64 bytes, 64-aligned in
/// the array), so a packet of a known flow costs one cache miss.
///
/// Life of a slot within a window: empty (all zero) -> claimed (`state`
/// [`FlowSlot::CLAIMED`], set by compare-and-exchange of the word at offset
/// 40, so one CPU owns it) -> published (`state` = the family, 4 or 6, set by
/// a second compare-and-exchange after the owner wrote the key and its first
/// counts). Only published slots match a key. The agent zeroes slots after
/// the window's records are safe, never while programs may write them.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowSlot {
    pub ifindex: u32,
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    /// Offset 40: the claim word is (protocol, direction, state, flags).
    pub protocol: u8,
    pub direction: u8,
    /// 0 empty, [`FlowSlot::CLAIMED`], or the family (published).
    pub state: u8,
    /// Bits [`FlowSlot::FIN`].. (atomic OR on the claim word), and
    /// [`FlowSlot::MAYBE_DUP`].
    pub flags: u8,
    /// Seconds after the generation's `SLOT_CLOCK` (saturating at 65,535).
    pub first_sec: u16,
    pub last_sec: u16,
    pub packets: u64,
    pub bytes: u64,
}

impl FlowSlot {
    pub const CLAIMED: u8 = 0xff;
    pub const FIN: u8 = 1;
    pub const SYN: u8 = 2;
    pub const RST: u8 = 4;
    pub const SYN_ACK: u8 = 8;
    /// Set by a CPU that passed a claimed (not yet published) slot while
    /// inserting: that slot may hold the same flow. The drain merges such
    /// twins (the earlier one sits between the flow's home slot and this one).
    pub const MAYBE_DUP: u8 = 0x80;
    /// Byte offset of the claim word.
    pub const CLAIM_WORD: usize = 40;

    pub const fn flag_bits(f: &TcpFlagsSeen) -> u8 {
        f.fin | f.syn << 1 | f.rst << 2 | f.syn_ack << 3
    }

    pub const fn tcp_flags(&self) -> TcpFlagsSeen {
        TcpFlagsSeen { fin: self.flags & 1, syn: (self.flags >> 1) & 1, rst: (self.flags >> 2) & 1, syn_ack: (self.flags >> 3) & 1 }
    }

    /// The flow key of a published slot.
    pub const fn key(&self) -> FlowKey {
        FlowKey {
            ifindex: self.ifindex,
            src_addr: self.src_addr,
            dst_addr: self.dst_addr,
            src_port: self.src_port,
            dst_port: self.dst_port,
            protocol: self.protocol,
            direction: self.direction,
            family: self.state,
            _pad: 0,
        }
    }

    /// An unpublished slot holding `k` (for hashing and comparing keys).
    pub const fn of_key(k: &FlowKey) -> FlowSlot {
        FlowSlot {
            ifindex: k.ifindex,
            src_addr: k.src_addr,
            dst_addr: k.dst_addr,
            src_port: k.src_port,
            dst_port: k.dst_port,
            protocol: k.protocol,
            direction: k.direction,
            state: k.family,
            flags: 0,
            first_sec: 0,
            last_sec: 0,
            packets: 0,
            bytes: 0,
        }
    }

    /// The home slot of this slot's key in a table of `mask + 1` slots.
    pub fn home(&self, mask: u32) -> u32 {
        slot_hash(&self.key_words(), FlowSlot::tail(self.protocol, self.direction, self.state)) & mask
    }

    /// The first 40 bytes (interface, addresses, ports) as words.
    #[inline(always)]
    pub fn key_words(&self) -> [u64; 5] {
        // SAFETY: the first 40 bytes are plain integers; the slot is 8-aligned.
        unsafe { *(self as *const FlowSlot as *const [u64; 5]) }
    }

    /// The claim word's key part: protocol, direction, family.
    #[inline(always)]
    pub const fn tail(protocol: u8, direction: u8, family: u8) -> u32 {
        protocol as u32 | (direction as u32) << 8 | (family as u32) << 16
    }
}

/// Slots a program looks at, from a flow's home slot on (linear probing),
/// before it counts the packet as a failed insert (SKIPDATA). The agent sizes
/// the table at twice `--max-flows` (rounded up to a power of two): at that
/// load (up to 0.5) 1 M flows of the benchmark's mix needed up to 35-42
/// probes (a few per million past 32), so 64: a flow past it is rarer than
/// one in many millions. Only flows in long clusters pay the longer walk.
pub const SLOT_PROBES: u32 = 64;

/// Home slot hash of a key (the same code in the kernel and the drain, which
/// finds twins by it): a multiply-xorshift over the key words.
#[inline(always)]
pub fn slot_hash(w: &[u64; 5], tail: u32) -> u32 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h = (tail as u64) ^ K;
    let mut i = 0;
    while i < 5 {
        h = (h ^ w[i]).wrapping_mul(K);
        h ^= h >> 29;
        i += 1;
    }
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    (h ^ (h >> 32)) as u32
}

/// Slots for `max_flows` flows: twice as many, a power of two.
pub const fn slot_capacity(max_flows: u32) -> u32 {
    let want = if max_flows < 8 { 16 } else { max_flows as u64 * 2 };
    let mut c: u64 = 1;
    while c < want {
        c <<= 1;
    }
    if c > 1 << 31 { 1 << 31 } else { c as u32 }
}

// The layout is part of the kernel/user contract: fail the build if it moves.
const _: () = assert!(core::mem::size_of::<FlowKey>() == 44);
const _: () = assert!(core::mem::size_of::<TcpFlagsSeen>() == 4);
const _: () = assert!(core::mem::size_of::<FlowStats>() == 40);
const _: () = assert!(core::mem::size_of::<InsertFailures>() == 16);
const _: () = assert!(core::mem::size_of::<RejectKey>() == 48);
const _: () = assert!(core::mem::size_of::<DropIface>() == 8);
const _: () = assert!(core::mem::size_of::<FlowSlot>() == 64);
const _: () = assert!(core::mem::offset_of!(FlowSlot, protocol) == FlowSlot::CLAIM_WORD);
const _: () = assert!(core::mem::offset_of!(FlowSlot, packets) == 48);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] data without implicit padding (asserted above).
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowStats {}
    unsafe impl aya::Pod for super::TcpFlagsSeen {}
    unsafe impl aya::Pod for super::InsertFailures {}
    unsafe impl aya::Pod for super::RejectKey {}
    unsafe impl aya::Pod for super::DropIface {}
    unsafe impl aya::Pod for super::DropConfig {}
    unsafe impl aya::Pod for super::FlowSlot {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_of_a_packet() {
        let s = |fin, syn, rst, syn_ack| TcpFlagsSeen { fin, syn, rst, syn_ack };
        assert_eq!(TcpFlagsSeen::of_packet(0x10), TcpFlagsSeen::NONE); // ACK
        assert_eq!(TcpFlagsSeen::of_packet(0x02), s(0, 1, 0, 0));
        assert_eq!(TcpFlagsSeen::of_packet(0x12), s(0, 1, 0, 1));
        assert_eq!(TcpFlagsSeen::of_packet(0x11), s(1, 0, 0, 0));
        assert_eq!(TcpFlagsSeen::of_packet(0x14), s(0, 0, 1, 0));
        assert_eq!(TcpFlagsSeen::of_packet(0xff), s(1, 1, 1, 1));
        assert!(!TcpFlagsSeen::of_packet(0x18).any());
    }

    #[test]
    fn absorb_adds_counts_and_joins_flags() {
        let a = FlowStats { packets: 2, bytes: 100, first_seen_ns: 5, last_seen_ns: 9, tcp_flags: TcpFlagsSeen::of_packet(0x02), _pad: 0 };
        let b = FlowStats { packets: 3, bytes: 50, first_seen_ns: 3, last_seen_ns: 7, tcp_flags: TcpFlagsSeen::of_packet(0x11), _pad: 0 };
        let mut m = a;
        m.absorb(&b);
        assert_eq!((m.packets, m.bytes, m.first_seen_ns, m.last_seen_ns), (5, 150, 3, 9));
        assert_eq!(m.tcp_flags, TcpFlagsSeen { fin: 1, syn: 1, rst: 0, syn_ack: 0 });
        assert_eq!(m._pad, 0);
    }
}
