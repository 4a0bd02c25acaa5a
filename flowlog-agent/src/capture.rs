//! Loads the eBPF programs and attaches them: XDP for ingress (it has no
//! egress hook), TC for egress (TCX on kernels ≥ 6.6, a clsact qdisc before).

use std::{collections::BTreeMap, fs};

use anyhow::{Context, Result};
use aya::{
    programs::{
        tc::{self, SchedClassifierLinkId, TcAttachType},
        xdp::XdpLinkId,
        ProgramError, SchedClassifier, Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use flowlog_common::maps;

use crate::{drain::FlowTables, ifaces::LinkInfo};

/// The kernel programs, built from `flowlog-ebpf` by build.rs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/flowlog.bpf.o"));

pub const INGRESS_PROGRAM: &str = "flowlog_ingress";
pub const EGRESS_PROGRAM: &str = "flowlog_egress";

/// Flows drained per `bpf()` call.
const DRAIN_BATCH: usize = 8192;

const FIX_PRIVS: &str = "run flowlog-agent as root, or give it CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON \
(for example `setcap cap_bpf,cap_net_admin,cap_perfmon+ep flowlog-agent`, or `capabilities.add` in a pod spec)";

#[derive(Debug)]
pub struct Attachment {
    pub link: LinkInfo,
    xdp: XdpLinkId,
    tc: SchedClassifierLinkId,
}

pub struct Capture {
    ebpf: Ebpf,
    attached: BTreeMap<u32, Attachment>,
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
            "this kernel cannot create the eBPF maps ({text}). flowlog needs Linux ≥ 5.12 built with \
             CONFIG_BPF_SYSCALL and CONFIG_NET_CLS_BPF (BTF is not required); \
             check `zgrep BPF /proc/config.gz` or /boot/config-$(uname -r)"
        )
    } else {
        anyhow::Error::new(e).context("loading the eBPF programs")
    }
}

impl Capture {
    /// Loads the programs and creates the maps; attaches nothing yet.
    pub fn load(max_flows: u32) -> Result<(Capture, FlowTables)> {
        check_privileges()?;
        // Kernels < 5.11 charge BPF memory to RLIMIT_MEMLOCK; later ones ignore it.
        let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
        // SAFETY: plain setrlimit with a valid struct.
        unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };

        let mut ebpf = EbpfLoader::new()
            .map_max_entries(maps::FLOWS_0, max_flows)
            .map_max_entries(maps::FLOWS_1, max_flows)
            .load(EBPF_OBJECT)
            .map_err(explain_load)?;
        let tables = FlowTables::new(&mut ebpf, DRAIN_BATCH)?;
        let ingress: &mut Xdp = ebpf.program_mut(INGRESS_PROGRAM).context("no XDP program")?.try_into()?;
        ingress.load().map_err(verifier)?;
        let egress: &mut SchedClassifier = ebpf.program_mut(EGRESS_PROGRAM).context("no TC program")?.try_into()?;
        egress.load().map_err(verifier)?;
        Ok((Capture { ebpf, attached: BTreeMap::new() }, tables))
    }

    /// The loaded object, for tests that run the programs with BPF_PROG_TEST_RUN.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    pub fn attached(&self) -> impl Iterator<Item = &LinkInfo> {
        self.attached.values().map(|a| &a.link)
    }

    /// Attaches both programs to `link`. Attaching twice is a no-op.
    pub fn attach(&mut self, link: &LinkInfo) -> Result<()> {
        if self.attached.contains_key(&link.ifindex) {
            return Ok(());
        }
        let ingress: &mut Xdp = self.ebpf.program_mut(INGRESS_PROGRAM).unwrap().try_into()?;
        let xdp = ingress.attach_to_if_index(link.ifindex, XdpMode::Default).map_err(|e| {
            anyhow::Error::new(e).context(format!(
                "attaching XDP to {} (another XDP program there? `ip link show {}` shows it)",
                link.name, link.name
            ))
        })?;
        let egress: &mut SchedClassifier = self.ebpf.program_mut(EGRESS_PROGRAM).unwrap().try_into()?;
        let tcx = aya::util::KernelVersion::current().is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0));
        if !tcx {
            // Before TCX, TC programs hang off a clsact qdisc.
            if let Err(e) = tc::qdisc_add_clsact(&link.name) {
                if !matches!(&e, tc::TcError::NetlinkError(n) if n.raw_os_error() == Some(libc::EEXIST)) {
                    tracing::debug!(iface = %link.name, "clsact: {e}");
                }
            }
        }
        let tc = match egress.attach(&link.name, TcAttachType::Egress) {
            Ok(id) => id,
            Err(e) => {
                let ingress: &mut Xdp = self.ebpf.program_mut(INGRESS_PROGRAM).unwrap().try_into()?;
                let _ = ingress.detach(xdp);
                return Err(anyhow::Error::new(e).context(format!("attaching TC egress to {}", link.name)));
            }
        };
        self.attached.insert(link.ifindex, Attachment { link: link.clone(), xdp, tc });
        Ok(())
    }

    /// Detaches from one interface. Errors are expected when the interface
    /// is already gone (the kernel dropped the attachments with it).
    pub fn detach(&mut self, ifindex: u32) -> Option<LinkInfo> {
        let a = self.attached.remove(&ifindex)?;
        if let Ok(p) = <&mut Xdp>::try_from(self.ebpf.program_mut(INGRESS_PROGRAM).unwrap()) {
            if let Err(e) = p.detach(a.xdp) {
                tracing::debug!(iface = %a.link.name, "XDP detach: {e}");
            }
        }
        if let Ok(p) = <&mut SchedClassifier>::try_from(self.ebpf.program_mut(EGRESS_PROGRAM).unwrap()) {
            if let Err(e) = p.detach(a.tc) {
                tracing::debug!(iface = %a.link.name, "TC detach: {e}");
            }
        }
        Some(a.link)
    }

    pub fn detach_all(&mut self) {
        let all: Vec<u32> = self.attached.keys().copied().collect();
        for i in all {
            self.detach(i);
        }
    }
}

fn verifier(e: ProgramError) -> anyhow::Error {
    // The verifier log is in the error's Display; keep all of it.
    anyhow::anyhow!("the kernel rejected flowlog's eBPF program: {e:#}")
}

/// Does the interface still exist with the same index?
pub fn still_present(link: &LinkInfo) -> bool {
    crate::ifaces::read_link(&link.name).is_some_and(|l| l.ifindex == link.ifindex)
}
