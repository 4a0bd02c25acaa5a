//! Types shared by the kernel programs (`flowlog-ebpf`) and the agent.
//!
//! Everything here is `#[repr(C)]` with explicit padding fields, so the byte
//! layout of a map key is the same on both sides and never contains
//! uninitialised padding: the kernel hashes every byte of a key, so a stray
//! byte would split one flow into several entries.
#![no_std]

/// Version of the map layout (names, key and value types, sizes). Pinned
/// maps of another version are not reused: an agent of a new layout starts
/// clean and says so. Bump on every incompatible change.
pub const MAP_LAYOUT_VERSION: u32 = 4;

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
}

/// Load-time settings of the programs (read-only globals: the verifier
/// drops the code of filters that are off).
pub mod globals {
    /// `u32`: count 1 packet in N (scaled by N); 0 or 1 counts every packet.
    pub const SAMPLE_RATE: &str = "SAMPLE_RATE";
    /// `u32`: bits of [`super::filters`] that are on.
    pub const FILTERS: &str = "FILTERS";
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

/// Extra bit in [`FlowStats::tcp_flags`], above the 8 raw TCP flag bits: set
/// when one packet carried SYN and ACK together. AWS reports SYN-ACK (18) only
/// for such packets, which an OR of raw flags over the window cannot tell apart
/// from a SYN followed by a plain ACK.
pub const TCP_SYN_ACK_SEEN: u32 = 1 << 8;

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

/// Counters of one flow in one aggregation window. 40 bytes.
///
/// `packets`, `bytes` and `tcp_flags` are updated with atomic instructions
/// because the map is shared by all CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// Wire packets: a GSO super-packet counts as its segments.
    pub packets: u64,
    /// Bytes at the IP layer (IP header included, link header excluded).
    pub bytes: u64,
    /// CLOCK_MONOTONIC (coarse) time of the first packet in the window.
    pub first_seen_ns: u64,
    /// CLOCK_MONOTONIC (coarse) time of the last packet in the window.
    pub last_seen_ns: u64,
    /// OR of the raw TCP flags byte, plus [`TCP_SYN_ACK_SEEN`].
    pub tcp_flags: u32,
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
        self.tcp_flags |= o.tcp_flags;
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

// The layout is part of the kernel/user contract: fail the build if it moves.
const _: () = assert!(core::mem::size_of::<FlowKey>() == 44);
const _: () = assert!(core::mem::size_of::<FlowStats>() == 40);
const _: () = assert!(core::mem::size_of::<InsertFailures>() == 16);
const _: () = assert!(core::mem::size_of::<RejectKey>() == 48);
const _: () = assert!(core::mem::size_of::<DropIface>() == 8);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] data without implicit padding (asserted above).
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowStats {}
    unsafe impl aya::Pod for super::InsertFailures {}
    unsafe impl aya::Pod for super::RejectKey {}
    unsafe impl aya::Pod for super::DropIface {}
    unsafe impl aya::Pod for super::DropConfig {}
}
