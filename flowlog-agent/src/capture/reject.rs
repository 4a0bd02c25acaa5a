//! ACCEPT/REJECT from the host's own drop decisions.
//!
//! The kernel side (`flowlog-ebpf/src/drops.rs`) watches `kfree_skb`; this
//! module decides what it watches for and turns its counts into records:
//!
//! - Which kernel drop reasons count as REJECT ([`RejectConfig::reasons`],
//!   `--reject-reasons`). Default: `NETFILTER_DROP`, i.e. a drop verdict of
//!   an nftables/iptables rule (including `reject`, which drops the packet
//!   after answering it). Others can be added by their `enum
//!   skb_drop_reason` name without the `SKB_DROP_REASON_` prefix, e.g.
//!   `NO_SOCKET` (nothing listens on the port), `IP_RPFILTER`,
//!   `TCP_INVALID_SEQUENCE`. Their numeric values are read from the running
//!   kernel's BTF, never hard-coded: they change between kernel versions.
//! - The `reject-reason` field: `-` (what AWS writes for every reject reason
//!   but its own `BPA`/`EC`), unless `--reject-reason-map NAME=TEXT` maps a
//!   drop reason to a text.
//! - The offsets into `struct sk_buff` and friends the program needs,
//!   from BTF ([`drop_config`]).

use std::{
    collections::{BTreeMap, HashMap},
    os::unix::fs::MetadataExt,
    sync::Arc,
};

use anyhow::{bail, Context, Result};
use flowlog_common::{DropConfig, FlowKey, FlowStats, RejectKey};

use crate::capture::btf::Btf;

/// The program, as named in the eBPF object.
pub const DROP_PROGRAM: &str = "flowlog_drop";
/// The tracepoint it attaches to.
pub const TRACEPOINT: &str = "kfree_skb";
const REASON_ENUM: &str = "skb_drop_reason";
const REASON_PREFIX: &str = "SKB_DROP_REASON_";
/// The drop reasons counted by default.
pub const DEFAULT_REASONS: &[&str] = &["NETFILTER_DROP"];

/// What counts as REJECT and how it is reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RejectConfig {
    /// Drop reason names (`NETFILTER_DROP`); empty: no REJECT at all (the
    /// drop program is not attached).
    pub reasons: Vec<String>,
    /// Drop reason name → `reject-reason` text. Reasons not listed: `-`.
    pub reason_map: BTreeMap<String, String>,
}

impl Default for RejectConfig {
    fn default() -> Self {
        RejectConfig { reasons: DEFAULT_REASONS.iter().map(|s| s.to_string()).collect(), reason_map: BTreeMap::new() }
    }
}

fn strip(name: &str) -> String {
    let n = name.trim();
    n.strip_prefix(REASON_PREFIX).unwrap_or(n).to_ascii_uppercase()
}

impl RejectConfig {
    /// From the command line: `reasons` as given to `--reject-reasons`
    /// (`none` for no REJECT), `map` as `NAME=TEXT` items.
    pub fn from_args(reasons: &[String], map: &[String]) -> Result<RejectConfig> {
        let mut cfg = RejectConfig::default();
        if !reasons.is_empty() {
            cfg.reasons = if reasons.len() == 1 && reasons[0].eq_ignore_ascii_case("none") {
                vec![]
            } else {
                reasons.iter().map(|r| strip(r)).collect()
            };
        }
        for item in map {
            let Some((name, text)) = item.split_once('=') else {
                bail!("--reject-reason-map {item:?}: expected DROP_REASON=TEXT, e.g. NETFILTER_DROP=FIREWALL");
            };
            let text = text.trim();
            if text.is_empty() || text.contains(char::is_whitespace) {
                bail!("--reject-reason-map {item:?}: the text must be non-empty and without spaces");
            }
            cfg.reason_map.insert(strip(name), text.to_string());
        }
        for name in cfg.reason_map.keys() {
            if !cfg.reasons.contains(name) {
                bail!("--reject-reason-map names {name}, which is not counted as REJECT: add it to --reject-reasons");
            }
        }
        Ok(cfg)
    }

    pub fn enabled(&self) -> bool {
        !self.reasons.is_empty()
    }

    /// The kernel values of the configured reasons, from `enum
    /// skb_drop_reason` in BTF, with their `reject-reason` text.
    pub fn resolve(&self, btf: &Btf) -> Result<RejectReasons> {
        let all = btf.enum_values(REASON_ENUM).context("this kernel's BTF has no enum skb_drop_reason (Linux ≥ 5.17 has it)")?;
        let mut by_value = HashMap::new();
        for name in &self.reasons {
            let full = format!("{REASON_PREFIX}{name}");
            let Some((_, v)) = all.iter().find(|(n, _)| *n == full) else {
                let valid: Vec<&str> = all.iter().filter_map(|(n, _)| n.strip_prefix(REASON_PREFIX)).filter(|n| *n != "MAX").collect();
                bail!("unknown drop reason {name} (--reject-reasons). This kernel knows: {}", valid.join(" "));
            };
            let text = self.reason_map.get(name).map(|t| Arc::<str>::from(t.as_str()));
            by_value.insert(*v as u32, (name.clone(), text));
        }
        Ok(RejectReasons { by_value })
    }
}

/// Configured drop reasons by kernel value: name and `reject-reason` text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RejectReasons {
    pub by_value: HashMap<u32, (String, Option<Arc<str>>)>,
}

impl RejectReasons {
    /// `reject-reason` of a kernel drop reason: `None` (`-`) unless mapped.
    pub fn text(&self, reason: u32) -> Option<Arc<str>> {
        self.by_value.get(&reason).and_then(|r| r.1.clone())
    }

    pub fn values(&self) -> impl Iterator<Item = u32> + '_ {
        self.by_value.keys().copied()
    }
}

/// The REJECT entries of a window as records want them: one per flow and
/// `reject-reason` (AWS writes one REJECT record per 5-tuple and window;
/// entries of different kernel reasons with the same text are added up).
pub fn merge(rejects: &[(RejectKey, FlowStats)], reasons: &RejectReasons) -> Vec<(FlowKey, FlowStats, Option<Arc<str>>)> {
    let mut m: BTreeMap<(FlowKey, Option<Arc<str>>), FlowStats> = BTreeMap::new();
    for (k, s) in rejects {
        if s.packets == 0 {
            continue;
        }
        m.entry((k.flow, reasons.text(k.reason))).and_modify(|e| e.absorb(s)).or_insert(*s);
    }
    m.into_iter().map(|((k, r), s)| (k, s, r)).collect()
}

/// Checks that the tracepoint passes what the program expects:
/// `(skb, location, reason, ...)`.
pub fn check_tracepoint(btf: &Btf) -> Result<()> {
    let params = btf.proto_params(&format!("btf_trace_{TRACEPOINT}")).context("the kfree_skb tracepoint is not in this kernel's BTF")?;
    // params[0] is the tracepoint's private data pointer.
    if params.get(1).map(String::as_str) != Some("sk_buff") || params.get(3).map(String::as_str) != Some(REASON_ENUM) {
        bail!("kfree_skb has arguments {:?} on this kernel; expected (sk_buff *, location, skb_drop_reason, ...)", &params[1..]);
    }
    Ok(())
}

/// The offsets the drop program reads, from BTF.
pub fn drop_config(btf: &Btf) -> Result<DropConfig> {
    let f = |s: &str, m: &str, size: u32| -> Result<u32> {
        let field = btf.field(s, m)?;
        if field.size != size {
            bail!("struct {s} member {m} is {} bytes on this kernel, expected {size}", field.size);
        }
        Ok(field.offset)
    };
    // Kernels without network namespaces have an empty possible_net_t.
    let (dev_net, net_inum) = match (btf.field("net_device", "nd_net.net"), btf.field("net", "ns.inum")) {
        (Ok(d), Ok(i)) if d.size == 8 && i.size == 4 => (d.offset, i.offset),
        _ => (u32::MAX, 0),
    };
    Ok(DropConfig {
        enabled: 1,
        skb_head: f("sk_buff", "head", 8)?,
        skb_data: f("sk_buff", "data", 8)?,
        skb_len: f("sk_buff", "len", 4)?,
        skb_network_header: f("sk_buff", "network_header", 2)?,
        // sk_buff_data_t is an offset (u32) on 64-bit kernels.
        skb_tail: f("sk_buff", "tail", 4)?,
        skb_end: f("sk_buff", "end", 4)?,
        skb_dev: f("sk_buff", "dev", 8)?,
        skb_iif: f("sk_buff", "skb_iif", 4)?,
        skb_refdst: f("sk_buff", "_skb_refdst", 8)?,
        dev_ifindex: f("net_device", "ifindex", 4)?,
        dev_net,
        net_inum,
        dst_dev: f("dst_entry", "dev", 8)?,
        shinfo_gso_size: f("skb_shared_info", "gso_size", 2)?,
        shinfo_gso_segs: f("skb_shared_info", "gso_segs", 2)?,
    })
}

/// Everything the loader needs for the drop program, prepared before load.
#[derive(Clone, Debug)]
pub struct DropSetup {
    pub config: DropConfig,
    pub reasons: RejectReasons,
    /// This process's network namespace (inode number), which its
    /// interface indexes belong to.
    pub netns: u32,
    /// REJECT was not asked for explicitly (the default reasons): a kernel
    /// that refuses the drop program (the arm64 JIT before 5.18 has no
    /// fetch-add) gets a warning and no REJECT records, not a failed start.
    pub optional: bool,
}

impl DropSetup {
    /// Reads BTF and resolves `cfg`; `Ok(None)` when REJECT is off.
    pub fn prepare(cfg: &RejectConfig) -> Result<Option<DropSetup>> {
        if !cfg.enabled() {
            return Ok(None);
        }
        let btf = Btf::from_sys_fs().context(
            "REJECT needs the kernel's BTF (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF); \
             run with --reject-reasons none to capture without REJECT",
        )?;
        check_tracepoint(&btf)?;
        let reasons = cfg.resolve(&btf)?;
        let config = drop_config(&btf).context("reading struct offsets from BTF for the drop program")?;
        Ok(Some(DropSetup { config, reasons, netns: current_netns()?, optional: false }))
    }
}

/// Inode number of this process's network namespace (`net.ns.inum`).
pub fn current_netns() -> Result<u32> {
    let md = std::fs::metadata("/proc/self/ns/net").context("reading /proc/self/ns/net")?;
    Ok(md.ino() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowlog_common::{direction, family};

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn reasons_from_args() {
        assert_eq!(RejectConfig::from_args(&[], &[]).unwrap(), RejectConfig::default());
        assert_eq!(RejectConfig::default().reasons, ["NETFILTER_DROP"]);
        assert!(!RejectConfig::from_args(&s(&["none"]), &[]).unwrap().enabled());
        let c = RejectConfig::from_args(&s(&["netfilter_drop", "SKB_DROP_REASON_NO_SOCKET"]), &s(&["NO_SOCKET=CLOSED"])).unwrap();
        assert_eq!(c.reasons, ["NETFILTER_DROP", "NO_SOCKET"]);
        assert_eq!(c.reason_map, BTreeMap::from([("NO_SOCKET".to_string(), "CLOSED".to_string())]));
        let e = RejectConfig::from_args(&[], &s(&["NO_SOCKET=X"])).unwrap_err().to_string();
        assert!(e.contains("not counted as REJECT"), "{e}");
        assert!(RejectConfig::from_args(&[], &s(&["NETFILTER_DROP"])).is_err());
        assert!(RejectConfig::from_args(&[], &s(&["NETFILTER_DROP=a b"])).is_err());
    }

    fn key(sport: u16) -> FlowKey {
        FlowKey {
            ifindex: 2,
            src_addr: [1; 16],
            dst_addr: [2; 16],
            src_port: sport,
            dst_port: 80,
            protocol: 6,
            direction: direction::INGRESS,
            family: family::IPV6,
            _pad: 0,
        }
    }

    fn st(p: u64, first: u64, last: u64, flags: u8) -> FlowStats {
        let tcp_flags = flowlog_common::TcpFlagsSeen::of_packet(flags);
        FlowStats { packets: p, bytes: p * 100, first_seen_ns: first, last_seen_ns: last, tcp_flags, _pad: 0 }
    }

    #[test]
    fn entries_merge_per_flow_and_reject_reason() {
        let reasons = RejectReasons {
            by_value: HashMap::from([(10, ("NETFILTER_DROP".into(), None)), (11, ("IP_RPFILTER".into(), None)), (12, ("NO_SOCKET".into(), Some("CLOSED".into())))]),
        };
        let rk = |sport, reason| RejectKey { flow: key(sport), reason };
        let got = merge(
            &[
                (rk(1, 10), st(2, 50, 60, 0x02)),
                (rk(1, 11), st(3, 40, 55, 0x11)),
                (rk(1, 12), st(1, 70, 70, 0)),
                (rk(2, 10), st(0, 1, 1, 0)), // emptied: no record
            ],
            &reasons,
        );
        assert_eq!(got, [(key(1), st(5, 40, 60, 0x03), None), (key(1), st(1, 70, 70, 0), Some("CLOSED".into()))]);
    }

    #[test]
    fn running_kernel_reasons_and_offsets() {
        let Ok(btf) = Btf::from_sys_fs() else {
            eprintln!("skipped: no BTF");
            return;
        };
        check_tracepoint(&btf).unwrap();
        let cfg = RejectConfig::from_args(&s(&["NETFILTER_DROP", "NO_SOCKET"]), &s(&["NETFILTER_DROP=FW"])).unwrap();
        let r = cfg.resolve(&btf).unwrap();
        let nf = btf.enum_value("skb_drop_reason", "SKB_DROP_REASON_NETFILTER_DROP").unwrap() as u32;
        assert_eq!(r.text(nf).as_deref(), Some("FW"));
        assert_eq!(r.by_value.len(), 2);
        let e = RejectConfig::from_args(&s(&["NO_SUCH_REASON"]), &[]).unwrap().resolve(&btf).unwrap_err().to_string();
        assert!(e.contains("unknown drop reason NO_SUCH_REASON") && e.contains("NETFILTER_DROP"), "{e}");
        let c = drop_config(&btf).unwrap();
        assert_eq!(c.enabled, 1);
        assert_ne!(c.skb_head, c.skb_data);
    }
}
