//! TC programs on kernels without TCX (before 6.6): `cls_bpf` filters on the
//! interface's `clsact` qdisc, attached over netlink.
//!
//! Netlink filters are not BPF links: nothing closes them when the agent
//! exits, and nothing can be pinned. So the agent puts its filter at one
//! fixed place per hook, [`PRIORITY`] and [`HANDLE`], and a restart replaces
//! the program of that filter in place (the kernel swaps it atomically, no
//! packet goes uncounted) instead of adding a second filter that would count
//! every packet again. Filters carrying flowlog's program names anywhere
//! else (left by an older version, or by a crash in the middle of an
//! attach) are removed after the swap.

use std::io;

use anyhow::{Context, Result};
use aya::programs::{
    links::Link,
    tc::{self, NlOptions, SchedClassifierLink, SchedClassifierLinkId, TcAttachOptions, TcHandle},
    SchedClassifier, TcAttachType,
};
use netlink_packet_route::{
    tc::{TcAttribute, TcFilterBpfOption, TcMessage, TcOption},
    RouteNetlinkMessage,
};

/// `tc filter show` prints it as `pref 1`: the lowest priority number runs
/// first, so no filter of another priority can end the chain before flowlog
/// has counted the packet.
pub const PRIORITY: u16 = 1;
/// `handle 0xf10c`, flowlog's by convention: a filter found here with one of
/// flowlog's program names is the previous agent's, and is replaced.
pub const HANDLE: u32 = 0xf10c;

/// A filter on one hook of an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    pub priority: u16,
    pub handle: u32,
    /// The BPF program's name for `bpf` filters; empty for other kinds.
    pub name: String,
}

/// The clsact parent of a hook (`ffff:fff2` ingress, `ffff:fff3` egress).
fn parent(kind: TcAttachType) -> u32 {
    match kind {
        TcAttachType::Ingress => 0xFFFF_FFF2,
        TcAttachType::Egress => 0xFFFF_FFF3,
        // Custom parents are never used by the agent.
        TcAttachType::Custom(p) => p,
    }
}

/// The filters on one hook of an interface (`tc filter show dev X ingress`).
pub fn filters(ifindex: u32, kind: TcAttachType) -> io::Result<Vec<Filter>> {
    let mut msg = TcMessage::default();
    msg.header.index = ifindex as i32;
    let p = parent(kind);
    msg.header.parent = netlink_packet_route::tc::TcHandle { major: (p >> 16) as u16, minor: p as u16 };
    let answers = super::watch::request(RouteNetlinkMessage::GetTrafficFilter(msg), true)?;
    Ok(answers
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewTrafficFilter(f) => Some(f),
            _ => None,
        })
        // A hook's own entry (the chain) has no priority.
        .filter(|f| (f.header.info >> 16) as u16 != 0)
        .map(|f| Filter {
            priority: (f.header.info >> 16) as u16,
            handle: (u32::from(f.header.handle.major) << 16) | u32::from(f.header.handle.minor),
            name: bpf_name(&f).unwrap_or_default(),
        })
        .collect())
}

fn bpf_name(f: &TcMessage) -> Option<String> {
    f.attributes.iter().find_map(|a| match a {
        TcAttribute::Options(opts) => opts.iter().find_map(|o| match o {
            TcOption::Bpf(TcFilterBpfOption::ProgName(n)) => Some(n.clone()),
            _ => None,
        }),
        _ => None,
    })
}

/// The kernel names a `bpf` filter after the program and its ELF section
/// (`flowlog_egress:[classifier]` from tc(8), the bare name from aya).
fn is_ours(name: &str, programs: &[&str]) -> bool {
    let base = name.split(':').next().unwrap_or(name);
    programs.contains(&base)
}

/// Attaches `prog` to one hook of `iface` at flowlog's place, replacing the
/// previous agent's program there, then removes flowlog's filters found
/// anywhere else on that hook.
pub fn attach(prog: &mut SchedClassifier, programs: &[&str], iface: &str, ifindex: u32, kind: TcAttachType) -> Result<SchedClassifierLinkId> {
    if let Err(e) = tc::qdisc_add_clsact(iface) {
        // EEXIST is the common case: the qdisc outlives every agent.
        tracing::debug!(%iface, "clsact: {e}");
    }
    let here = |f: &Filter| f.priority == PRIORITY && f.handle == HANDLE;
    let before = filters(ifindex, kind).with_context(|| format!("listing the TC {kind:?} filters of {iface}"))?;
    let id = if before.iter().any(|f| here(f) && is_ours(&f.name, programs)) {
        let link = SchedClassifierLink::attached(iface, kind, PRIORITY, TcHandle::from(HANDLE), None)
            .with_context(|| format!("interface {iface}"))?;
        prog.attach_to_link(link).with_context(|| format!("replacing the previous agent's TC {kind:?} program on {iface}"))?
    } else {
        let opts = NlOptions { priority: PRIORITY, handle: TcHandle::from(HANDLE), ..Default::default() };
        prog.attach_with_options(iface, kind, TcAttachOptions::Netlink(opts)).with_context(|| {
            format!(
                "adding flowlog's TC {kind:?} filter to {iface} at priority {PRIORITY} handle {HANDLE:#x} \
                 (`tc filter show dev {iface} {}` shows what is there; another filter kind at priority {PRIORITY} prevents it)",
                if kind == TcAttachType::Ingress { "ingress" } else { "egress" }
            )
        })?
    };
    for f in before.iter().filter(|f| !here(f) && is_ours(&f.name, programs)) {
        tracing::warn!(%iface, priority = f.priority, handle = format_args!("{:#x}", f.handle), "removing a flowlog TC filter left by an earlier agent");
        remove(iface, kind, f);
    }
    Ok(id)
}

fn remove(iface: &str, kind: TcAttachType, f: &Filter) {
    match SchedClassifierLink::attached(iface, kind, f.priority, TcHandle::from(f.handle), None) {
        Ok(l) => {
            if let Err(e) = l.detach() {
                tracing::warn!(%iface, "cannot remove TC filter pref {} handle {:#x}: {e}", f.priority, f.handle);
            }
        }
        Err(e) => tracing::debug!(%iface, "{e}"),
    }
}

/// Removes every filter with one of flowlog's program names from both hooks
/// of an interface the agent does not capture on (any more).
pub fn remove_all(iface: &str, ifindex: u32, programs: &[&str]) {
    for kind in [TcAttachType::Ingress, TcAttachType::Egress] {
        let Ok(found) = filters(ifindex, kind) else { continue };
        for f in found.iter().filter(|f| is_ours(&f.name, programs)) {
            tracing::info!(%iface, ?kind, "removing a flowlog TC filter left by an earlier agent");
            remove(iface, kind, f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_our_filters() {
        let ours = ["flowlog_egress", "flowlog_ingress_tc"];
        assert!(is_ours("flowlog_egress", &ours));
        assert!(is_ours("flowlog_ingress_tc:[classifier]", &ours));
        assert!(!is_ours("flowlog_egress2", &ours));
        assert!(!is_ours("cil_from_netdev", &ours));
        assert!(!is_ours("", &ours));
    }

    /// Root: the filters of a hook, read over rtnetlink, with their
    /// priority and handle (a classic-BPF filter: no program name).
    #[test]
    fn filters_of_a_hook() {
        use flowlog_testkit::netns::{in_netns, Netns};
        flowlog_testkit::require_root();
        let ns = Netns::new("tcf");
        ns.ip(&["link", "add", "tcf0", "type", "veth", "peer", "name", "tcf1"]);
        let tc = |args: &[&str]| {
            let mut v = vec!["tc", "-n", ns.name()];
            v.extend_from_slice(args);
            flowlog_testkit::netns::sh(&v);
        };
        tc(&["qdisc", "add", "dev", "tcf0", "clsact"]);
        tc(&["filter", "add", "dev", "tcf0", "ingress", "prio", "7", "handle", "3", "bpf", "bytecode", "1,6 0 0 4294967295,"]);
        let i = ns.ifindex("tcf0");
        let got = in_netns(ns.name(), move || {
            (filters(i, TcAttachType::Ingress).unwrap(), filters(i, TcAttachType::Egress).unwrap())
        });
        // The priority's own entry (handle 0), then the filter.
        let ingress: Vec<_> = got.0.iter().map(|f| (f.priority, f.handle, f.name.as_str())).collect();
        assert_eq!(ingress, [(7, 0, ""), (7, 3, "")]);
        assert!(got.1.is_empty());
    }

    #[test]
    fn clsact_parents() {
        assert_eq!(parent(TcAttachType::Ingress), 0xFFFF_FFF2);
        assert_eq!(parent(TcAttachType::Egress), 0xFFFF_FFF3);
    }
}
