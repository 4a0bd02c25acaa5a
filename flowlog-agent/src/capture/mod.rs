//! The capture stage, the kernel side of the agent: loads the eBPF programs,
//! attaches them (XDP or TC for ingress, TC for egress: TCX on kernels ≥ 6.6,
//! a clsact qdisc before) and pins maps and links so a restart hands over
//! without a gap. REJECT comes from the kernel's own drop decisions
//! ([`reject`], offsets from [`btf`]); [`links`] and [`watch`] say which
//! interfaces to attach to as they come and go.
//!
//! Everything here needs root and a kernel; what can be decided without one
//! (which interfaces match, which hook an interface gets) is kept in pure
//! functions so it is tested without either.

pub mod btf;
pub mod jit;
pub mod links;
pub mod reject;
pub mod tc;
pub mod watch;

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use aya::{
    programs::{
        links::{FdLink, LinkOrder, PinnedLink},
        tc::{SchedClassifierLink, SchedClassifierLinkId, TcAttachOptions, TcAttachType},
        xdp::XdpLink,
        BtfTracePoint, ProgramError, SchedClassifier, Xdp, XdpMode,
    },
    maps::{lpm_trie::{Key, LpmTrie}, Array, HashMap as AyaHashMap, MapData},
    Ebpf, EbpfLoader,
};
use flowlog_common::{filters, globals, maps};
use ipnet::IpNet;

use crate::{
    bpf::{probe, sys, KernelFeatures, TableKind},
    drain::FlowTables,
};
use links::LinkInfo;
use reject::DropSetup;

/// The kernel programs, built from `flowlog-ebpf` by build.rs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/flowlog.bpf.o"));
/// The same programs with the slot flow table (Linux 5.12+); empty when the
/// build embedded a prebuilt object (`FLOWLOG_EBPF_OBJECT`): hash table only.
pub static EBPF_SLOTS_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/flowlog-slots.bpf.o"));

/// The object whose programs write `kind`'s table.
pub fn object_of(kind: TableKind) -> &'static [u8] {
    match kind {
        TableKind::Hash => EBPF_OBJECT,
        TableKind::Slots => EBPF_SLOTS_OBJECT,
    }
}

pub const INGRESS_PROGRAM: &str = "flowlog_ingress";
pub const EGRESS_PROGRAM: &str = "flowlog_egress";
pub const INGRESS_TC_PROGRAM: &str = "flowlog_ingress_tc";
/// The TC programs of devices without a link-layer header (wireguard, tun,
/// ipip, sit, gre...): they parse from the IP header. Names of at most 15
/// bytes, so the kernel's program names (cut to 15) are these too, and
/// distinct from the others.
pub const INGRESS_L3_PROGRAM: &str = "flowlog_ingr_l3";
pub const EGRESS_L3_PROGRAM: &str = "flowlog_egr_l3";
/// The programs that run as TC filters before TCX, by the names the kernel
/// shows for them: every TC program, so stale filters of any are found.
pub const TC_PROGRAMS: [&str; 4] = [EGRESS_PROGRAM, INGRESS_TC_PROGRAM, EGRESS_L3_PROGRAM, INGRESS_L3_PROGRAM];


/// Where ingress is counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IngressHook {
    /// TC on veth interfaces, XDP (TC where refused) on the others.
    ///
    /// XDP on a veth switches the veth to its XDP receive path (a NAPI poll
    /// per packet batch), which costs more than the program itself: in
    /// `cargo xtask bench` (BENCHMARKS.md, section 2) a pass-only XDP
    /// program alone takes a veth to 58% of its packet rate, and flowlog's
    /// XDP program takes a TCP stream to 23% of its throughput (no GSO
    /// across the veth). TC keeps veth's normal path.
    #[default]
    Auto,
    /// XDP wherever the driver has it natively (veths included): earliest,
    /// before GRO. TC where XDP is refused (e.g. an MTU above what the
    /// driver's XDP takes, such as 9001 on EC2 ENA interfaces) and on
    /// devices without native XDP (vlan, bond, bridge, macvlan, vxlan,
    /// dummy...): generic XDP would run after GRO and count a merged packet
    /// as one.
    Xdp,
    /// TC only.
    Tc,
}

impl IngressHook {
    /// Whether ingress on an interface with this driver is counted at XDP
    /// first (else at TC).
    pub fn tries_xdp(self, driver: Option<&str>) -> bool {
        match self {
            // A bond's XDP program runs on its slaves and sees their
            // ifindex: its packets would be counted under the slaves.
            _ if driver == Some("bonding") => false,
            IngressHook::Auto => driver != Some("veth"),
            IngressHook::Xdp => true,
            IngressHook::Tc => false,
        }
    }
}

impl IngressHook {
    pub fn as_str(self) -> &'static str {
        match self {
            IngressHook::Auto => "auto",
            IngressHook::Xdp => "xdp",
            IngressHook::Tc => "tc",
        }
    }
}

impl std::str::FromStr for IngressHook {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [IngressHook::Auto, IngressHook::Xdp, IngressHook::Tc].into_iter().find(|h| h.as_str() == s).ok_or_else(|| "auto, xdp or tc".into())
    }
}

/// Flows drained per `bpf()` call.
const DRAIN_BATCH: usize = 8192;

const FIX_PRIVS: &str = "run flowlog-agent as root, or give it CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON \
(for example `setcap cap_bpf,cap_net_admin,cap_perfmon+ep flowlog-agent`, or `capabilities.add` in a pod spec)";

/// Sampling and filters applied in the kernel, before a packet is counted.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct KernelFilters {
    /// Count only packets with an address (either end) in one of these.
    pub include_cidrs: Vec<IpNet>,
    /// Never count packets with an address (either end) in one of these.
    pub exclude_cidrs: Vec<IpNet>,
    /// Count only packets with a port (either end) in this list. ICMP and
    /// other protocols without ports have port 0.
    pub include_ports: Vec<u16>,
    pub exclude_ports: Vec<u16>,
    /// Count only these IP protocols (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6...).
    pub protocols: Vec<u8>,
}

/// Entries each kernel filter map holds.
pub const MAX_FILTER_ENTRIES: usize = 1024;

impl KernelFilters {
    pub fn bits(&self) -> u32 {
        let mut b = 0;
        for (on, bit) in [
            (!self.include_cidrs.is_empty(), filters::INCLUDE_CIDRS),
            (!self.exclude_cidrs.is_empty(), filters::EXCLUDE_CIDRS),
            (!self.include_ports.is_empty(), filters::INCLUDE_PORTS),
            (!self.exclude_ports.is_empty(), filters::EXCLUDE_PORTS),
            (!self.protocols.is_empty(), filters::PROTOCOLS),
        ] {
            if on {
                b |= bit;
            }
        }
        b
    }

    /// Whether a running agent can go from `old` to `new` ([`Capture::replace_filters`]):
    /// both sets must fit the maps at once (new entries go in before old
    /// ones leave).
    pub fn check_replace(old: &KernelFilters, new: &KernelFilters) -> Result<()> {
        let union = |a: &[IpNet], b: &[IpNet]| a.iter().chain(b.iter().filter(|n| !a.contains(n))).copied().collect();
        let ports = port_bits(old).into_keys().chain(port_bits(new).into_keys()).collect::<std::collections::BTreeSet<u16>>();
        let both = KernelFilters {
            include_cidrs: union(&old.include_cidrs, &new.include_cidrs),
            exclude_cidrs: union(&old.exclude_cidrs, &new.exclude_cidrs),
            include_ports: ports.into_iter().collect(),
            ..KernelFilters::default()
        };
        if let Err((key, n)) = both.validate() {
            anyhow::bail!("the running and the new {key} are {n} entries together, over the kernel map's {MAX_FILTER_ENTRIES}: restart to change them");
        }
        Ok(())
    }

    /// Checks the sizes against the kernel maps; returns the offending key.
    pub fn validate(&self) -> Result<(), (&'static str, usize)> {
        for (k, n) in [
            ("filters.include-cidrs", self.include_cidrs.len()),
            ("filters.exclude-cidrs", self.exclude_cidrs.len()),
            ("filters.include-ports", self.include_ports.len() + self.exclude_ports.len()),
        ] {
            if n > MAX_FILTER_ENTRIES {
                return Err((k, n));
            }
        }
        Ok(())
    }
}

/// IPv4 prefixes live in the IPv6 trie as IPv4-mapped (::ffff:0:0/96).
fn lpm_key(net: &IpNet) -> Key<[u8; 16]> {
    match net.trunc() {
        IpNet::V4(n) => {
            let mut d = [0u8; 16];
            d[10] = 0xff;
            d[11] = 0xff;
            d[12..].copy_from_slice(&n.addr().octets());
            Key::new(96 + u32::from(n.prefix_len()), d)
        }
        IpNet::V6(n) => Key::new(u32::from(n.prefix_len()), n.addr().octets()),
    }
}

/// Replaces the filters `old` set in the maps with `new` (at load: `old` is
/// empty): `new`'s values go in, then the kinds that run switch, then
/// `old`'s values leave. For the microseconds in between a packet may meet
/// both sets of values, never none, and a kind only runs once its values
/// are there.
fn refill_filters(ebpf: &mut Ebpf, old: &KernelFilters, new: &KernelFilters) -> Result<()> {
    for (name, was, now) in [(maps::INCLUDE_CIDRS, &old.include_cidrs, &new.include_cidrs), (maps::EXCLUDE_CIDRS, &old.exclude_cidrs, &new.exclude_cidrs)] {
        let mut trie: LpmTrie<&mut MapData, [u8; 16], u8> = LpmTrie::try_from(ebpf.map_mut(name).context("no filter map")?)?;
        for n in now.iter().filter(|n| !was.contains(n)) {
            trie.insert(&lpm_key(n), 1, 0).with_context(|| format!("loading filter {n}"))?;
        }
    }
    let (was, now) = (port_bits(old), port_bits(new));
    let mut ports: AyaHashMap<&mut MapData, u16, u8> = AyaHashMap::try_from(ebpf.map_mut(maps::FILTER_PORTS).context("no filter map")?)?;
    for (p, b) in &now {
        let both = b | was.get(p).copied().unwrap_or(0);
        if was.get(p) != Some(&both) {
            ports.insert(p, both, 0)?;
        }
    }
    let mut protos: Array<&mut MapData, u8> = Array::try_from(ebpf.map_mut(maps::FILTER_PROTOCOLS).context("no filter map")?)?;
    for p in new.protocols.iter().filter(|p| !old.protocols.contains(p)) {
        protos.set(u32::from(*p), 1, 0)?;
    }

    let mut kinds: Array<&mut MapData, u32> = Array::try_from(ebpf.map_mut(maps::FILTER_KINDS).context("no filter map")?)?;
    kinds.set(0, new.bits(), 0).context("switching the kinds of kernel filter")?;

    for (name, was, now) in [(maps::INCLUDE_CIDRS, &old.include_cidrs, &new.include_cidrs), (maps::EXCLUDE_CIDRS, &old.exclude_cidrs, &new.exclude_cidrs)] {
        let mut trie: LpmTrie<&mut MapData, [u8; 16], u8> = LpmTrie::try_from(ebpf.map_mut(name).context("no filter map")?)?;
        for n in was.iter().filter(|n| !now.contains(n)) {
            trie.remove(&lpm_key(n)).with_context(|| format!("removing filter {n}"))?;
        }
    }
    let mut ports: AyaHashMap<&mut MapData, u16, u8> = AyaHashMap::try_from(ebpf.map_mut(maps::FILTER_PORTS).context("no filter map")?)?;
    for (p, b) in &was {
        match now.get(p) {
            None => ports.remove(p)?,
            Some(n) if n | b != *n => ports.insert(p, n, 0)?,
            Some(_) => {}
        }
    }
    let mut protos: Array<&mut MapData, u8> = Array::try_from(ebpf.map_mut(maps::FILTER_PROTOCOLS).context("no filter map")?)?;
    for p in old.protocols.iter().filter(|p| !new.protocols.contains(p)) {
        protos.set(u32::from(*p), 0, 0)?;
    }
    Ok(())
}

/// The `FILTER_PORTS` entries: per port, its include/exclude bits.
fn port_bits(f: &KernelFilters) -> BTreeMap<u16, u8> {
    let mut bits: BTreeMap<u16, u8> = BTreeMap::new();
    for p in &f.include_ports {
        *bits.entry(*p).or_default() |= filters::PORT_INCLUDE;
    }
    for p in &f.exclude_ports {
        *bits.entry(*p).or_default() |= filters::PORT_EXCLUDE;
    }
    bits
}

/// How an attachment is held. Pinned links outlive the agent: the programs
/// keep counting into the pinned maps while no agent runs.
enum Hold {
    Pinned(PinnedLink),
    Owned(FdLink),
    /// A netlink TC filter (no TCX before 6.6): aya holds its place.
    Tc(&'static str, SchedClassifierLinkId),
}

pub struct Attachment {
    pub link: LinkInfo,
    ingress: Hold,
    egress: Hold,
    ingress_hook: &'static str,
}

pub struct Capture {
    ebpf: Ebpf,
    attached: BTreeMap<u32, Attachment>,
    /// `<pin root>/v<layout>-<max flows>`, when pinning.
    pin_dir: Option<PathBuf>,
    /// Held while the agent runs (see `lock_dir`).
    _pin_lock: Option<fs::File>,
    ingress_hook: IngressHook,
    /// The drop program (REJECT), when enabled: its link and namespace.
    drops: Option<(Hold, u32)>,
    features: KernelFeatures,
    table: TableKind,
    /// Which of the programs loaded at startup run interpreted.
    jit: jit::JitState,
}

/// Capabilities the agent needs, by bit number (linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Fails early, with the fix, when the process cannot load BPF programs.
pub fn check_privileges() -> Result<()> {
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .unwrap_or(0);
    let has = |c: u32| eff & (1u64 << c) != 0;
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if !has(CAP_PERFMON) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_PERFMON");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("missing capabilities {}: {FIX_PRIVS}", missing.join(", "))
    }
}

fn explain_load(e: aya::EbpfError) -> anyhow::Error {
    let text = format!("{e:#}");
    let lower = text.to_lowercase();
    if lower.contains("operation not permitted") {
        anyhow::anyhow!("loading the eBPF programs was refused ({text}): {FIX_PRIVS}")
    } else if lower.contains("function not implemented") || lower.contains("invalid argument") && lower.contains("map") {
        anyhow::anyhow!(
            "this kernel cannot create the eBPF maps ({text}). flowlog needs Linux ≥ 5.10 built with \
             CONFIG_BPF_SYSCALL and CONFIG_NET_CLS_BPF (BTF is not required); \
             check `zgrep BPF /proc/config.gz` or /boot/config-$(uname -r)"
        )
    } else {
        anyhow::Error::new(e).context("loading the eBPF programs")
    }
}

/// How [`Capture::loader`] loads the programs (aya's `EbpfLoader` style:
/// each setting has a default, callers name the ones they change).
pub struct Loader<'a> {
    max_flows: u32,
    pin_root: Option<&'a Path>,
    sample_rate: u32,
    filters: Option<&'a KernelFilters>,
    drops: Option<&'a DropSetup>,
    table: Option<TableKind>,
    bench_cut: u32,
}

impl<'a> Loader<'a> {
    /// With a pin root, maps and attachments are pinned under
    /// `<pin_root>/v<layout>-<max_flows>/` and re-used by the next agent, so
    /// packets counted while no agent runs are reported after a restart.
    pub fn pin_root(mut self, root: Option<&'a Path>) -> Self {
        self.pin_root = root;
        self
    }

    /// Count 1 packet in `n` (0 or 1: all; the default).
    pub fn sample_rate(mut self, n: u32) -> Self {
        self.sample_rate = n;
        self
    }

    /// The kernel filters (default: none).
    pub fn filters(mut self, f: &'a KernelFilters) -> Self {
        self.filters = Some(f);
        self
    }

    /// The REJECT program's setup (default: no REJECT records).
    pub fn drops(mut self, d: Option<&'a DropSetup>) -> Self {
        self.drops = d;
        self
    }

    /// The flow table chosen by the caller (tests and benchmarks run both on
    /// one kernel); by default the best this kernel takes ([`TableKind::choose`]).
    pub fn table(mut self, t: TableKind) -> Self {
        self.table = Some(t);
        self
    }

    /// Programs that stop part-way through counting
    /// (`flowlog_common::bench_cut`): for `cargo xtask bench` only.
    #[doc(hidden)]
    pub fn bench_cut(mut self, cut: u32) -> Self {
        self.bench_cut = cut;
        self
    }

    /// Loads the programs and creates the maps; attaches nothing yet.
    pub fn load(self) -> Result<(Capture, FlowTables)> {
        let Loader { max_flows, pin_root, sample_rate, filters, drops, table, bench_cut } = self;
        let no_filters = KernelFilters::default();
        let filters = filters.unwrap_or(&no_filters);
        check_privileges()?;
        sys::raise_memlock();

        let features = probe::detect()?;
        let kind = match table {
            Some(TableKind::Slots) if !features.slot_atomics => {
                anyhow::bail!("the slot flow table needs BPF compare-and-exchange (Linux 5.12; arm64 JIT 5.18)")
            }
            Some(TableKind::Slots) if EBPF_SLOTS_OBJECT.is_empty() => {
                anyhow::bail!("this build has no slot-table object (built with FLOWLOG_EBPF_OBJECT)")
            }
            Some(k) => k,
            None if EBPF_SLOTS_OBJECT.is_empty() => TableKind::Hash,
            None => TableKind::choose(&features)?,
        };
        probe::log(&features, kind, drops.is_some());
        let (pin_dir, pin_lock) = match pin_root.map(|r| prepare_pin_dir(r, max_flows, kind)).transpose()? {
            Some((d, l)) => (Some(d), Some(l)),
            None => (None, None),
        };
        let mut loader = EbpfLoader::new();
        let coarse_clock = u32::from(features.coarse_clock);
        // The table not used gets one entry (maps cannot be left out of a load).
        let slots = flowlog_common::slot_capacity(max_flows);
        let (hash_entries, slot_entries) = match kind {
            TableKind::Hash => (max_flows, 1),
            TableKind::Slots => (1, slots),
        };
        let slot_mask = slot_entries - 1;
        loader
            .map_max_entries(maps::FLOWS_0, hash_entries)
            .map_max_entries(maps::FLOWS_1, hash_entries)
            .map_max_entries(maps::SLOTS_0, slot_entries)
            .map_max_entries(maps::SLOTS_1, slot_entries)
            .override_global(globals::SLOT_MASK, &slot_mask, true)
            .override_global(globals::SAMPLE_RATE, &sample_rate, true)
            .override_global(globals::BENCH_CUT, &bench_cut, true)
            .override_global(globals::COARSE_CLOCK, &coarse_clock, true);
        loader.map_max_entries(maps::REJECTS_0, max_flows).map_max_entries(maps::REJECTS_1, max_flows);
        if let Some(d) = drops {
            loader.override_global("DROP_CONFIG", &d.config, true);
        }
        let pin_paths: Vec<(&str, PathBuf)> = match &pin_dir {
            Some(d) => ALL_MAPS.iter().map(|m| (*m, d.join(m))).collect(),
            None => vec![],
        };
        for (name, path) in &pin_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(object_of(kind)).map_err(explain_load)?;
        refill_filters(&mut ebpf, &KernelFilters::default(), filters)?;
        let tables = FlowTables::new(&mut ebpf, DRAIN_BATCH, kind, slot_entries)?;
        // The Ethernet TC programs go on every interface: verified now, so a
        // kernel that refuses them stops the agent at once. XDP and the
        // IP-header programs are verified when an interface first needs them
        // (each verification costs start-up time: much of it on small or
        // emulated machines).
        for name in [EGRESS_PROGRAM, INGRESS_TC_PROGRAM] {
            let tc: &mut SchedClassifier = ebpf.program_mut(name).context("no TC program")?.try_into()?;
            tc.load().map_err(verifier)?;
        }
        let mut capture =
            Capture { ebpf, attached: BTreeMap::new(), pin_dir, _pin_lock: pin_lock, ingress_hook: IngressHook::Auto, drops: None, features, table: kind, jit: jit::JitState::default() };
        if let Some(d) = drops {
            match capture.attach_drops(d) {
                Ok(()) => {}
                Err(e) if d.optional => {
                    tracing::warn!("REJECT records are off: the drop program cannot run on this kernel ({e:#}); --reject-reasons makes this an error");
                }
                Err(e) => return Err(e),
            }
        }
        capture.jit = jit::JitState::of(&capture.ebpf);
        capture.jit.log();
        Ok((capture, tables))
    }
}

impl Capture {
    /// A loader of the programs for `max_flows` flows per window
    /// ([`Loader::load`]).
    pub fn loader<'a>(max_flows: u32) -> Loader<'a> {
        Loader { max_flows, pin_root: None, sample_rate: 1, filters: None, drops: None, table: None, bench_cut: flowlog_common::bench_cut::NONE }
    }

    /// Loads and attaches the drop program; sets the drop reasons.
    fn attach_drops(&mut self, d: &DropSetup) -> Result<()> {
        let mut reasons: aya::maps::HashMap<_, u32, u32> =
            aya::maps::HashMap::try_from(self.ebpf.map_mut(maps::DROP_REASONS).context("no DROP_REASONS map")?)?;
        // Pinned maps keep the reasons of the previous agent: replace them.
        let old: Vec<u32> = reasons.keys().filter_map(|k| k.ok()).collect();
        for k in old {
            let _ = reasons.remove(&k);
        }
        for v in d.reasons.values() {
            reasons.insert(v, 1, 0).context("setting the drop reasons")?;
        }
        let btf = aya::Btf::from_sys_fs().context("reading the kernel's BTF")?;
        let prog: &mut BtfTracePoint = self.ebpf.program_mut(reject::DROP_PROGRAM).context("no drop program")?.try_into()?;
        prog.load(reject::TRACEPOINT, &btf).map_err(verifier)?;
        let pin = self.pin_dir.as_ref().map(|p| p.join("drop-link"));
        // A previous agent's drop program: detach it first, or both would
        // count every drop.
        if let Some(old) = pin.as_deref().and_then(reuse) {
            drop(old);
        }
        let id = prog.attach().context("attaching to the kfree_skb tracepoint")?;
        let fd = FdLink::from(prog.take_link(id)?);
        self.drops = Some((hold(fd, pin.as_deref())?, d.netns));
        Ok(())
    }

    fn drop_ifaces(&mut self) -> Option<aya::maps::HashMap<&mut aya::maps::MapData, flowlog_common::DropIface, u32>> {
        self.drops.as_ref()?;
        aya::maps::HashMap::try_from(self.ebpf.map_mut(maps::DROP_IFACES)?).ok()
    }

    /// What [`probe::detect`] found on this kernel.
    pub fn features(&self) -> KernelFeatures {
        self.features
    }

    /// The flow table the programs write.
    pub fn table(&self) -> TableKind {
        self.table
    }

    /// Whether the programs loaded at startup run JIT-compiled.
    pub fn jit(&self) -> &jit::JitState {
        &self.jit
    }

    pub fn set_ingress_hook(&mut self, hook: IngressHook) {
        self.ingress_hook = hook;
    }

    /// The loaded object, for tests that run the programs with BPF_PROG_TEST_RUN.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    pub fn attached(&self) -> impl Iterator<Item = &LinkInfo> {
        self.attached.values().map(|a| &a.link)
    }

    /// Attaches the ingress and egress programs to `link`. Attaching twice
    /// is a no-op. Where a previous agent left pinned attachments for the
    /// same interface, their programs are replaced in place, without a gap.
    /// Returns where ingress is counted (`"xdp"` or `"tc"`).
    pub fn attach(&mut self, link: &LinkInfo) -> Result<&'static str> {
        if let Some(a) = self.attached.get(&link.ifindex) {
            return Ok(a.ingress_hook);
        }
        // bpffs refuses names with dots (reserved), and interface names may
        // have them (eth0.100): pins are named by ifindex only.
        let pin = |kind: &str| self.pin_dir.as_ref().map(|d| d.join("links").join(format!("{}-{kind}", link.ifindex)));
        let (pin_xdp, pin_tcin, pin_tc) = (pin("xdp"), pin("tcin"), pin("tc"));
        let driver = crate::capture::links::driver(&link.name);
        let header = links::link_header(&link.name);
        let (in_tc, out_tc) = match header {
            links::Header::Ip => (INGRESS_L3_PROGRAM, EGRESS_L3_PROGRAM),
            links::Header::Ethernet => (INGRESS_TC_PROGRAM, EGRESS_PROGRAM),
        };
        // No XDP without an Ethernet header: the XDP program parses one.
        let (ingress, hook) = if header == links::Header::Ethernet && self.ingress_hook.tries_xdp(driver.as_deref()) {
            match self.attach_xdp(link, pin_xdp.as_deref()) {
                Ok(h) => (h, "xdp"),
                Err(e) => {
                    tracing::warn!(iface = %link.name, "XDP refused ({e:#}); counting ingress at TC instead");
                    (self.attach_tc(in_tc, link, TcAttachType::Ingress, pin_tcin.as_deref())?, "tc")
                }
            }
        } else {
            if header == links::Header::Ip {
                tracing::debug!(iface = %link.name, "no Ethernet header on this device: IP-header TC programs");
            }
            (self.attach_tc(in_tc, link, TcAttachType::Ingress, pin_tcin.as_deref())?, "tc")
        };
        // A previous agent may have counted ingress at the other hook (another
        // ingress-hook setting): its pinned link would go on counting into
        // the same maps. Unpinning the unused one detaches it.
        let stale = if hook == "xdp" { pin_tcin } else { pin_xdp };
        if let Some(p) = stale.filter(|p| p.exists()) {
            tracing::warn!(iface = %link.name, "ingress moved to {hook} from a previous agent's other hook: detaching that one (packets of this instant may be counted at both)");
            let _ = fs::remove_file(p);
        }
        let egress = match self.attach_tc(out_tc, link, TcAttachType::Egress, pin_tc.as_deref()) {
            Ok(h) => h,
            Err(e) => {
                release(ingress, &mut self.ebpf);
                return Err(e);
            }
        };
        self.attached.insert(link.ifindex, Attachment { link: link.clone(), ingress, egress, ingress_hook: hook });
        if let Some(netns) = self.drops.as_ref().map(|d| d.1) {
            let key = flowlog_common::DropIface { ifindex: link.ifindex, netns };
            if let Some(mut m) = self.drop_ifaces() {
                if let Err(e) = m.insert(key, 1, 0) {
                    tracing::warn!(iface = %link.name, "REJECT will not be reported for this interface: {e}");
                }
            }
        }
        Ok(hook)
    }

    /// The XDP program, verified on first use.
    pub fn xdp_program(&mut self) -> Result<&mut Xdp> {
        let ingress: &mut Xdp = self.ebpf.program_mut(INGRESS_PROGRAM).context("no XDP program")?.try_into()?;
        if ingress.fd().is_err() {
            ingress.load().map_err(verifier)?;
        }
        Ok(ingress)
    }

    fn attach_xdp(&mut self, link: &LinkInfo, pin: Option<&Path>) -> Result<Hold> {
        let ingress = self.xdp_program()?;
        let reused = pin.and_then(reuse).and_then(|fd| XdpLink::try_from(fd).ok());
        // A pinned link of an interface that was deleted is defunct: attach anew.
        let id = match reused.map(|old| ingress.attach_to_link(old)) {
            Some(Ok(id)) => id,
            // Native (driver) mode only, never the generic fallback.
            _ => ingress.attach_to_if_index(link.ifindex, XdpMode::Driver).map_err(|e| {
                anyhow::Error::new(e).context(format!(
                    "attaching XDP to {} (no native XDP in its driver, another XDP program there, or an MTU its XDP support \
                     refuses? `ip link show {}` shows the last two; --ingress-hook tc counts ingress at TC instead)",
                    link.name, link.name
                ))
            })?,
        };
        // XDP links exist since Linux 5.9, below the supported range; never
        // attach a second time (that is how kernels got two copies of a hook).
        let fd = FdLink::try_from(ingress.take_link(id)?)
            .map_err(|e| anyhow::anyhow!("XDP on {} is not a BPF link (Linux 5.9 and later have them): {e}", link.name))?;
        hold(fd, pin)
    }

    fn attach_tc(&mut self, program: &'static str, link: &LinkInfo, kind: TcAttachType, pin: Option<&Path>) -> Result<Hold> {
        let prog: &mut SchedClassifier = self.ebpf.program_mut(program).context("no TC program")?.try_into()?;
        if prog.fd().is_err() {
            prog.load().map_err(verifier)?;
        }
        if !self.features.tcx {
            // No BPF link to hold or pin: the filter's fixed place is how the
            // next agent finds it (see `tc`).
            return Ok(Hold::Tc(program, tc::attach(prog, &TC_PROGRAMS, &link.name, link.ifindex, kind)?));
        }
        let reused = pin.and_then(reuse).and_then(|fd| SchedClassifierLink::try_from(fd).ok());
        let id = match reused.map(|old| prog.attach_to_link(old)) {
            // The swap keeps the link's place in the chain.
            Some(Ok(id)) => id,
            // First in the TCX chain: a program attached earlier that ends the
            // chain (TC_ACT_OK, a redirect: CNIs do) would otherwise hide
            // packets from flowlog. Ours always continues (TCX_NEXT).
            _ => prog
                .attach_with_options(&link.name, kind, TcAttachOptions::TcxOrder(LinkOrder::first()))
                .map_err(|e| anyhow::Error::new(e).context(format!("attaching TCX {kind:?} to {}", link.name)))?,
        };
        let l = prog.take_link(id)?;
        let fd = FdLink::try_from(l).map_err(|e| anyhow::anyhow!("the TCX attachment on {} is not a BPF link: {e}", link.name))?;
        hold(fd, pin)
    }

    /// Detaches from one interface (and removes its pins). Errors are
    /// expected when the interface is already gone: the kernel dropped the
    /// attachments with it.
    pub fn detach(&mut self, ifindex: u32) -> Option<LinkInfo> {
        let a = self.attached.remove(&ifindex)?;
        if let Some(netns) = self.drops.as_ref().map(|d| d.1) {
            if let Some(mut m) = self.drop_ifaces() {
                let _ = m.remove(&flowlog_common::DropIface { ifindex, netns });
            }
        }
        release(a.ingress, &mut self.ebpf);
        release(a.egress, &mut self.ebpf);
        Some(a.link)
    }

    pub fn detach_all(&mut self) {
        let all: Vec<u32> = self.attached.keys().copied().collect();
        for i in all {
            self.detach(i);
        }
        if let Some((h, _)) = self.drops.take() {
            release(h, &mut self.ebpf);
        }
    }

    /// Leaves pinned attachments and maps in place for the next agent, and
    /// removes pins of interfaces that no longer exist.
    pub fn keep_pinned(mut self) {
        if let Some(dir) = &self.pin_dir {
            prune_link_pins(dir);
        }
        for a in std::mem::take(&mut self.attached).into_values() {
            for h in [a.ingress, a.egress] {
                // Dropping pinned links closes our fds only. A netlink filter
                // is detached by aya when its program or link is dropped:
                // taking the link out and forgetting it leaves the filter
                // counting (the next agent replaces it in place).
                if let Hold::Tc(program, id) = h {
                    if let Some(Ok(p)) = self.ebpf.program_mut(program).map(<&mut SchedClassifier>::try_from) {
                        if let Ok(link) = p.take_link(id) {
                            std::mem::forget(link);
                        }
                    }
                }
            }
        }
    }

    /// After a final drain: removes the pinned maps too, so the next start
    /// begins clean.
    pub fn remove_pins(&mut self) {
        if let Some(dir) = self.pin_dir.take() {
            if let Err(e) = fs::remove_dir_all(&dir) {
                tracing::warn!("cannot remove {}: {e}", dir.display());
            }
        }
    }

    pub fn pin_dir(&self) -> Option<&Path> {
        self.pin_dir.as_deref()
    }

    /// A reload's new filters: values and the kinds that run
    /// ([`KernelFilters::bits`], a map the programs read per packet).
    pub fn replace_filters(&mut self, old: &KernelFilters, new: &KernelFilters) -> Result<()> {
        KernelFilters::check_replace(old, new)?;
        refill_filters(&mut self.ebpf, old, new)
    }
}

fn hold(fd: FdLink, pin: Option<&Path>) -> Result<Hold> {
    Ok(match pin {
        Some(path) => {
            let _ = fs::remove_file(path);
            Hold::Pinned(fd.pin(path).with_context(|| format!("pinning {}", path.display()))?)
        }
        None => Hold::Owned(fd),
    })
}

fn release(h: Hold, ebpf: &mut Ebpf) {
    match h {
        // Dropping the last fd of an unpinned link detaches it.
        Hold::Pinned(p) => drop(p.unpin()),
        Hold::Owned(fd) => drop(fd),
        Hold::Tc(program, id) => {
            if let Some(Ok(p)) = ebpf.program_mut(program).map(<&mut SchedClassifier>::try_from) {
                let _ = p.detach(id);
            }
        }
    }
}

/// A link a previous agent pinned, if its file is there.
fn reuse(path: &Path) -> Option<FdLink> {
    if !path.exists() {
        return None;
    }
    match PinnedLink::from_pin(path) {
        Ok(p) => match p.unpin() {
            Ok(fd) => Some(fd),
            Err(e) => {
                tracing::warn!("cannot take over {}: {e}", path.display());
                None
            }
        },
        Err(e) => {
            tracing::warn!("ignoring unreadable pin {}: {e}", path.display());
            let _ = fs::remove_file(path);
            None
        }
    }
}

const ALL_MAPS: [&str; 13] = [
    maps::FLOWS_0,
    maps::FLOWS_1,
    maps::SLOTS_0,
    maps::SLOTS_1,
    maps::SLOT_CLOCK,
    maps::FAILS_0,
    maps::FAILS_1,
    maps::GENERATION,
    maps::COUNTERS,
    maps::REJECTS_0,
    maps::REJECTS_1,
    maps::DROP_IFACES,
    maps::DROP_REASONS,
];

/// Makes `<root>/v<layout>-<max_flows>[-slots]` on a BPF filesystem (mounting
/// /sys/fs/bpf when it is not), and removes pinned state of any other layout
/// (a kernel upgrade that brings the slot table is one: the next start is clean).
fn prepare_pin_dir(root: &Path, max_flows: u32, kind: TableKind) -> Result<(PathBuf, fs::File)> {
    let fs_root = Path::new("/sys/fs/bpf");
    if root.starts_with(fs_root) && !sys::is_bpffs(fs_root) {
        if let Err(e) = sys::mount_bpffs() {
            anyhow::bail!(
                "/sys/fs/bpf is not a BPF filesystem and mounting one failed ({e}): mount it \
                 (`mount -t bpf bpf /sys/fs/bpf`; in Kubernetes a hostPath volume), or run with --no-pin"
            );
        }
        tracing::info!("mounted the BPF filesystem on /sys/fs/bpf");
    }
    fs::create_dir_all(root).with_context(|| format!("creating pin directory {}", root.display()))?;
    if !sys::is_bpffs(root) {
        anyhow::bail!("{} is not on a BPF filesystem: choose a --pin-dir under a bpffs mount (/sys/fs/bpf)", root.display());
    }
    let lock = lock_dir(root)?;
    let name = pin_dir_name(max_flows, kind);
    for entry in fs::read_dir(root)?.flatten() {
        if entry.file_name() != name.as_str() {
            tracing::warn!(
                old = %entry.path().display(),
                new = %name,
                "pinned state of another map layout or --max-flows: removing it and starting clean \
                 (counts it held since the last drain are lost)"
            );
            fs::remove_dir_all(entry.path()).with_context(|| format!("removing {}", entry.path().display()))?;
        }
    }
    let dir = root.join(name);
    fs::create_dir_all(dir.join("links"))?;
    Ok((dir, lock))
}

/// The pin directory of a layout, `--max-flows` and flow table.
pub fn pin_dir_name(max_flows: u32, kind: TableKind) -> String {
    match kind {
        TableKind::Hash => format!("v{}-{}", flowlog_common::MAP_LAYOUT_VERSION, max_flows),
        TableKind::Slots => format!("v{}-{}-slots", flowlog_common::MAP_LAYOUT_VERSION, max_flows),
    }
}

/// Two agents on one pin directory would flip and empty each other's tables
/// (and the second would replace the first's programs): the directory is
/// locked for the agent's lifetime. bpffs holds no regular files, but
/// `flock` works on the directory itself; the kernel drops the lock when the
/// process ends, however it ends.
fn lock_dir(dir: &Path) -> Result<fs::File> {
    use std::os::fd::AsRawFd;
    let f = fs::File::open(dir).with_context(|| format!("opening pin directory {}", dir.display()))?;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            anyhow::bail!(
                "another flowlog agent is running with pin directory {}: stop it first, or give this one its own --pin-dir",
                dir.display()
            );
        }
        return Err(anyhow::Error::new(e).context(format!("locking pin directory {}", dir.display())));
    }
    Ok(f)
}

/// Removes link pins of interfaces that are gone.
fn prune_link_pins(dir: &Path) {
    let alive: Vec<String> = crate::capture::links::list_links()
        .map(|l| l.iter().map(|l| l.ifindex.to_string()).collect())
        .unwrap_or_default();
    let Ok(entries) = fs::read_dir(dir.join("links")) else { return };
    for e in entries.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        if !file.split_once('-').is_some_and(|(idx, _)| alive.iter().any(|a| a == idx)) {
            let _ = fs::remove_file(e.path());
        }
    }
}

fn verifier(e: ProgramError) -> anyhow::Error {
    // The verifier log is in the error's Display; keep all of it.
    anyhow::anyhow!("the kernel rejected flowlog's eBPF program: {e:#}")
}

#[cfg(test)]
mod tests {
    use super::IngressHook;

    #[test]
    fn ingress_hook_per_driver() {
        let cases = [
            (IngressHook::Auto, Some("veth"), false),
            (IngressHook::Auto, Some("ena"), true),
            (IngressHook::Auto, None, true),
            (IngressHook::Xdp, Some("veth"), true),
            (IngressHook::Tc, Some("ena"), false),
            (IngressHook::Xdp, Some("bonding"), false),
            (IngressHook::Auto, Some("bonding"), false),
        ];
        for (hook, driver, xdp) in cases {
            assert_eq!(hook.tries_xdp(driver), xdp, "{hook:?} {driver:?}");
        }
    }
}
