//! What the running kernel offers, checked once before the programs load:
//! a missing requirement stops the agent with the feature and the kernel
//! release that has it, instead of a verifier log; optional features pick
//! the best path the kernel takes.
//!
//! Requirements (x86-64 releases): XDP and TC programs; hash, array, per-CPU
//! array, LPM trie and array-of-maps maps (the last one is the drain's RCU
//! barrier); global data, `.rodata` (5.2); the hash map batch operations
//! the drain reads and empties the tables with (5.6); `__sk_buff.gso_size`
//! (5.7). The counters use only the plain atomic add, which every kernel
//! and JIT takes, so no atomics need probing: atomic OR and the fetch
//! variants (5.12 on x86-64, 5.18 in the arm64 JIT) are not used by the
//! capture programs. Only the REJECT drop program uses fetch-add, and it
//! needs `enum skb_drop_reason` (5.17) anyway, checked in
//! [`crate::capture::reject`].
//!
//! The flow table: the slot table ([`flowlog_common::FlowSlot`]) needs
//! BPF compare-and-exchange and atomic OR (5.12 on x86-64, 5.18 in the arm64
//! JIT), probed by loading a tiny program that uses both; without them the
//! hash table of every kernel. A probe that loads but is not JIT-compiled
//! while the JIT is on (arm64 5.12-5.17 without `CONFIG_BPF_JIT_ALWAYS_ON`,
//! see [`probe_jited`]) counts as without. `FLOWLOG_FLOW_TABLE=hash|slots` overrides the
//! choice (benchmarks, tests of both on one kernel).
//!
//! Optional: `bpf_ktime_get_coarse_ns` (5.11; else `bpf_ktime_get_ns`, the
//! same CLOCK_MONOTONIC at a higher cost per packet) and TCX (6.6; else a
//! clsact qdisc).

use anyhow::{bail, Result};
use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{is_helper_supported, is_map_supported, is_program_supported, BpfHelper},
    util::KernelVersion,
};

use super::sys;

const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;

/// r0 = *(u32 *)(r1 + offsetof(struct __sk_buff, gso_size)); exit
const GSO_SIZE_PROG: [u64; 2] = [0x0000_0000_00b0_1061, 0x95];

/// What the capture programs may use on this kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelFeatures {
    /// `bpf_ktime_get_coarse_ns` from XDP and TC programs.
    pub coarse_clock: bool,
    /// TC programs attach through TCX links rather than a clsact qdisc.
    pub tcx: bool,
    /// The kernel (and its JIT) takes BPF compare-and-exchange and atomic OR:
    /// the slot table can be used.
    pub slot_atomics: bool,
}

/// Which flow table the programs write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableKind {
    /// `BPF_MAP_TYPE_HASH` per generation (every kernel).
    Hash,
    /// Open addressing in an mmap-able array per generation (5.12+).
    Slots,
}

impl TableKind {
    pub fn name(self) -> &'static str {
        match self {
            TableKind::Hash => "hash",
            TableKind::Slots => "slots",
        }
    }

    /// The best table this kernel takes, unless `FLOWLOG_FLOW_TABLE` says.
    pub fn choose(f: &KernelFeatures) -> Result<TableKind> {
        match std::env::var("FLOWLOG_FLOW_TABLE").as_deref() {
            Ok("hash") => Ok(TableKind::Hash),
            Ok("slots") if f.slot_atomics => Ok(TableKind::Slots),
            Ok("slots") => bail!("FLOWLOG_FLOW_TABLE=slots: this kernel ({}) lacks BPF compare-and-exchange (Linux 5.12; arm64 JIT 5.18)", release()),
            Ok("auto") | Ok("") | Err(_) => Ok(if f.slot_atomics { TableKind::Slots } else { TableKind::Hash }),
            Ok(other) => bail!("FLOWLOG_FLOW_TABLE={other}: hash, slots or auto"),
        }
    }
}

/// TCX arrived in 6.6; aya attaches through it from there on.
pub fn tcx_available() -> bool {
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

/// The running kernel's release (`uname -r`).
pub fn release() -> String {
    // SAFETY: plain uname with a zeroed out struct.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return "unknown".into();
    }
    // SAFETY: uname NUL-terminates its fields.
    unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }.to_string_lossy().into_owned()
}

/// Checks every requirement; returns the optional features found. The error
/// names each missing feature and the Linux release that brought it.
pub fn detect() -> Result<KernelFeatures> {
    let mut missing: Vec<String> = Vec::new();
    let mut need = |ok: Result<bool, String>, what: &str, since: &str| match ok {
        Ok(true) => {}
        Ok(false) => missing.push(format!("{what} (Linux {since})")),
        Err(e) => missing.push(format!("{what} (Linux {since}; probing it failed: {e})")),
    };
    for (t, what, since) in [(ProgramType::Xdp, "XDP programs", "4.8"), (ProgramType::SchedClassifier, "TC (sched_cls) programs", "4.1")] {
        need(is_program_supported(t).map_err(|e| e.to_string()), what, since);
    }
    for (t, what, since) in [
        (MapType::Hash, "BPF_MAP_TYPE_HASH", "3.19"),
        (MapType::Array, "BPF_MAP_TYPE_ARRAY", "3.19"),
        (MapType::PerCpuArray, "BPF_MAP_TYPE_PERCPU_ARRAY", "4.6"),
        (MapType::LpmTrie, "BPF_MAP_TYPE_LPM_TRIE", "4.11"),
        (MapType::ArrayOfMaps, "BPF_MAP_TYPE_ARRAY_OF_MAPS", "4.12"),
    ] {
        need(is_map_supported(t).map_err(|e| e.to_string()), what, since);
    }
    need(Ok(aya::features().bpf_global_data()), "BPF global data (.rodata)", "5.2");
    need(sys::hash_batch_supported().map_err(|e| e.to_string()), "batch operations on BPF_MAP_TYPE_HASH", "5.6");
    need(sys::program_loads(BPF_PROG_TYPE_SCHED_CLS, &GSO_SIZE_PROG).map_err(|e| e.to_string()), "__sk_buff.gso_size in TC programs", "5.7");
    if !missing.is_empty() {
        bail!(
            "this kernel ({}) lacks what flowlog's eBPF programs need: {}. flowlog runs on Linux ≥ 5.10 \
             (Debian 11, Amazon Linux 2 and later) built with CONFIG_BPF_SYSCALL, CONFIG_NET_CLS_BPF and CONFIG_BPF_JIT",
            release(),
            missing.join("; ")
        );
    }
    // Either program type without it: both read the precise clock (one global).
    let coarse = |t| match is_helper_supported(t, BpfHelper::BPF_FUNC_ktime_get_coarse_ns) {
        Ok(v) => v,
        Err(e) => {
            tracing::debug!("probing bpf_ktime_get_coarse_ns: {e}; using bpf_ktime_get_ns");
            false
        }
    };
    let coarse_clock = coarse(ProgramType::Xdp) && coarse(ProgramType::SchedClassifier);
    // *(u64 *)(r10 - 8) = 0; r0 = 0; r1 = 1;
    // r0 = cmpxchg((u64 *)(r10 - 8), r0, r1); lock *(u64 *)(r10 - 8) |= r1; r0 = 0; exit
    let atomics = [
        0x0000_0000_0000_01b7u64,
        0x0000_0000_fff8_1a7b,
        0x0000_0000_0000_00b7,
        0x0000_0001_0000_01b7,
        0x0000_00f1_fff8_1adb,
        0x0000_0040_fff8_1adb,
        0x0000_0000_0000_00b7,
        0x95,
    ];
    let slot_atomics = match probe_jited(BPF_PROG_TYPE_SCHED_CLS, &atomics) {
        // Loaded but interpreted while the JIT is on: arm64 5.12-5.17, whose
        // JIT lacks these atomics. The hash table's programs are JIT-compiled
        // there. With the JIT off nothing is, and the slot table stays.
        Ok(Some(false)) if jit_enabled() => {
            tracing::info!("BPF compare-and-exchange loads but is not JIT-compiled on this kernel (arm64 JIT: 5.18): using the hash flow table, which is");
            false
        }
        Ok(v) => v.is_some(),
        Err(e) => {
            tracing::debug!("probing BPF compare-and-exchange: {e}; using the hash flow table");
            false
        }
    };
    Ok(KernelFeatures { coarse_clock, tcx: tcx_available(), slot_atomics })
}

/// Loads a tiny program: `None` if the kernel refuses it (EINVAL, EACCES,
/// ENOTSUPP), else whether it was JIT-compiled. A kernel without
/// `CONFIG_BPF_JIT_ALWAYS_ON` (Debian's arm64 kernels) runs what its JIT
/// cannot translate in the interpreter instead of refusing it: only
/// `jited_prog_len` tells (BPF compare-and-exchange and the fetch atomics on
/// arm64 5.12-5.17; every program with `net.core.bpf_jit_enable=0`).
pub fn probe_jited(prog_type: u32, insns: &[u64]) -> std::io::Result<Option<bool>> {
    match sys::load_program(prog_type, insns) {
        Ok(prog) => sys::prog_jited(std::os::fd::AsFd::as_fd(&prog)).map(Some),
        // ENOTSUPP (524): a JIT that cannot translate it on a JIT-always-on kernel.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EACCES | 524)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether the JIT compiles at all (`net.core.bpf_jit_enable` not 0): a
/// program every JIT translates (`r0 = 0; exit`) comes out JIT-compiled.
/// Asked of the kernel rather than read from /proc/sys, which a network
/// namespace other than the first does not show. The sysctl only if the
/// probe cannot load.
pub fn jit_enabled() -> bool {
    match probe_jited(BPF_PROG_TYPE_SCHED_CLS, &[0xb7, 0x95]) {
        Ok(Some(jited)) => jited,
        _ => std::fs::read_to_string("/proc/sys/net/core/bpf_jit_enable").map_or(true, |v| v.trim() != "0"),
    }
}

/// One line of what was found, logged once at startup.
pub fn log(f: &KernelFeatures, table: TableKind, reject: bool) {
    let yn = |b: bool| if b { "yes" } else { "no" };
    tracing::info!(
        kernel = %release(),
        coarse_clock = yn(f.coarse_clock),
        tcx = yn(f.tcx),
        flow_table = table.name(),
        reject = yn(reject),
        "kernel features (coarse clock: Linux 5.11, TCX: 6.6, slot flow table: 5.12 (arm64 5.18), REJECT: 5.17 with BTF)"
    );
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    /// The probe program is JIT-compiled exactly when the kernel's JIT is on.
    #[test]
    fn prog_jited_follows_bpf_jit_enable() {
        // SAFETY: plain geteuid.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: loading a program needs root");
            return;
        }
        let jit = std::fs::read_to_string("/proc/sys/net/core/bpf_jit_enable").expect("bpf_jit_enable");
        let want = jit.trim() != "0";
        let prog = sys::load_program(BPF_PROG_TYPE_SCHED_CLS, &GSO_SIZE_PROG).expect("loading the gso_size probe program");
        let sizes = sys::prog_sizes(prog.as_fd()).unwrap();
        // Two instructions, the context read rewritten by the verifier: the
        // info was really read.
        assert!(sizes.xlated >= 2 * 8, "{sizes:?}");
        assert_eq!(sizes.jited > 0, want, "bpf_jit_enable = {}: {sizes:?}", jit.trim());
        assert_eq!(sys::prog_jited(prog.as_fd()).unwrap(), want);
        // Not a program: the kernel says so instead of reporting sizes.
        let not_prog = std::fs::File::open("/proc/self/stat").unwrap();
        assert_eq!(sys::prog_jited(not_prog.as_fd()).unwrap_err().raw_os_error(), Some(libc::EINVAL));
    }
}
