//! Loads the eBPF programs and attaches them: XDP for ingress (it has no
//! egress hook), TC for egress (TCX on kernels ≥ 6.6, a clsact qdisc before).

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use aya::{
    programs::{
        links::{FdLink, PinnedLink},
        tc::{self, SchedClassifierLink, SchedClassifierLinkId, TcAttachType},
        xdp::{XdpLink, XdpLinkId},
        BtfTracePoint, ProgramError, SchedClassifier, Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use flowlog_common::maps;

use crate::{
    drain::FlowTables,
    ifaces::LinkInfo,
    reject::{self, DropSetup},
};

/// The kernel programs, built from `flowlog-ebpf` by build.rs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/flowlog.bpf.o"));

pub const INGRESS_PROGRAM: &str = "flowlog_ingress";
pub const EGRESS_PROGRAM: &str = "flowlog_egress";

/// Flows drained per `bpf()` call.
const DRAIN_BATCH: usize = 8192;

const FIX_PRIVS: &str = "run flowlog-agent as root, or give it CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON \
(for example `setcap cap_bpf,cap_net_admin,cap_perfmon+ep flowlog-agent`, or `capabilities.add` in a pod spec)";

/// How an attachment is held. Pinned links outlive the agent: the programs
/// keep counting into the pinned maps while no agent runs.
enum Hold {
    Pinned(PinnedLink),
    Owned(FdLink),
    /// Kernels without BPF links for this hook: aya holds it.
    Xdp(XdpLinkId),
    Tc(SchedClassifierLinkId),
}

pub struct Attachment {
    pub link: LinkInfo,
    xdp: Hold,
    tc: Hold,
}

pub struct Capture {
    ebpf: Ebpf,
    attached: BTreeMap<u32, Attachment>,
    /// `<pin root>/v<layout>-<max flows>`, when pinning.
    pin_dir: Option<PathBuf>,
    /// The drop program (REJECT), when enabled: its link and namespace.
    drops: Option<(Hold, u32)>,
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
    ///
    /// With `pin_root`, maps and attachments are pinned under
    /// `<pin_root>/v<layout>-<max_flows>/` and re-used by the next agent, so
    /// packets counted while no agent runs are reported after a restart.
    pub fn load(max_flows: u32, pin_root: Option<&Path>) -> Result<(Capture, FlowTables)> {
        Capture::load_with(max_flows, pin_root, None)
    }

    /// [`Capture::load`], plus the drop program when `drops` is given: it
    /// is attached at once and reports drops on the interfaces attached
    /// later (see [`crate::reject`]).
    pub fn load_with(max_flows: u32, pin_root: Option<&Path>, drops: Option<&DropSetup>) -> Result<(Capture, FlowTables)> {
        check_privileges()?;
        // Kernels < 5.11 charge BPF memory to RLIMIT_MEMLOCK; later ones ignore it.
        let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
        // SAFETY: plain setrlimit with a valid struct.
        unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };

        let pin_dir = pin_root.map(|r| prepare_pin_dir(r, max_flows)).transpose()?;
        let mut loader = EbpfLoader::new();
        loader.map_max_entries(maps::FLOWS_0, max_flows).map_max_entries(maps::FLOWS_1, max_flows);
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
        let mut ebpf = loader.load(EBPF_OBJECT).map_err(explain_load)?;
        let tables = FlowTables::new(&mut ebpf, DRAIN_BATCH)?;
        let ingress: &mut Xdp = ebpf.program_mut(INGRESS_PROGRAM).context("no XDP program")?.try_into()?;
        ingress.load().map_err(verifier)?;
        let egress: &mut SchedClassifier = ebpf.program_mut(EGRESS_PROGRAM).context("no TC program")?.try_into()?;
        egress.load().map_err(verifier)?;
        let mut capture = Capture { ebpf, attached: BTreeMap::new(), pin_dir, drops: None };
        if let Some(d) = drops {
            capture.attach_drops(d)?;
        }
        Ok((capture, tables))
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

    /// The loaded object, for tests that run the programs with BPF_PROG_TEST_RUN.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    pub fn attached(&self) -> impl Iterator<Item = &LinkInfo> {
        self.attached.values().map(|a| &a.link)
    }

    /// Attaches both programs to `link`. Attaching twice is a no-op. Where a
    /// previous agent left pinned attachments for the same interface, their
    /// programs are replaced in place, without a gap in counting.
    pub fn attach(&mut self, link: &LinkInfo) -> Result<()> {
        if self.attached.contains_key(&link.ifindex) {
            return Ok(());
        }
        // bpffs refuses names with dots (reserved), and interface names may
        // have them (eth0.100): pins are named by ifindex only.
        let pins = self.pin_dir.as_ref().map(|d| {
            let links = d.join("links");
            (links.join(format!("{}-xdp", link.ifindex)), links.join(format!("{}-tc", link.ifindex)))
        });
        let ingress: &mut Xdp = self.ebpf.program_mut(INGRESS_PROGRAM).unwrap().try_into()?;
        let reused = pins.as_ref().and_then(|p| reuse(&p.0)).and_then(|fd| XdpLink::try_from(fd).ok());
        // A pinned link of an interface that was deleted is defunct: attach anew.
        let xdp_id = match reused.map(|old| ingress.attach_to_link(old)) {
            Some(Ok(id)) => id,
            _ => ingress.attach_to_if_index(link.ifindex, XdpMode::Default).map_err(|e| {
                anyhow::Error::new(e).context(format!(
                    "attaching XDP to {} (another XDP program there? `ip link show {}` shows it)",
                    link.name, link.name
                ))
            })?,
        };
        let xdp = match ingress.take_link(xdp_id).map(FdLink::try_from) {
            Ok(Ok(fd)) => hold(fd, pins.as_ref().map(|p| p.0.as_path()))?,
            // Netlink-attached (old kernel): leave it to aya, nothing to pin.
            _ => Hold::Xdp(ingress.attach_to_if_index(link.ifindex, XdpMode::Default)?),
        };

        let egress: &mut SchedClassifier = self.ebpf.program_mut(EGRESS_PROGRAM).unwrap().try_into()?;
        let tcx = aya::util::KernelVersion::current().is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0));
        if !tcx {
            // Before TCX, TC programs hang off a clsact qdisc.
            if let Err(e) = tc::qdisc_add_clsact(&link.name) {
                tracing::debug!(iface = %link.name, "clsact: {e}");
            }
        }
        let reused = pins.as_ref().and_then(|p| reuse(&p.1)).and_then(|fd| SchedClassifierLink::try_from(fd).ok());
        let attached = match reused.map(|old| egress.attach_to_link(old)) {
            Some(Ok(id)) => Ok(id),
            _ => egress
                .attach(&link.name, TcAttachType::Egress)
                .map_err(|e| anyhow::Error::new(e).context(format!("attaching TC egress to {}", link.name))),
        };
        let tc_id = match attached {
            Ok(id) => id,
            Err(e) => {
                release(xdp, &mut self.ebpf);
                return Err(e);
            }
        };
        let tc = match egress.take_link(tc_id) {
            Ok(l) => match FdLink::try_from(l) {
                Ok(fd) => hold(fd, pins.as_ref().map(|p| p.1.as_path()))?,
                Err(_) => Hold::Tc(egress.attach(&link.name, TcAttachType::Egress)?),
            },
            Err(e) => return Err(e.into()),
        };
        self.attached.insert(link.ifindex, Attachment { link: link.clone(), xdp, tc });
        if let Some(netns) = self.drops.as_ref().map(|d| d.1) {
            let key = flowlog_common::DropIface { ifindex: link.ifindex, netns };
            if let Some(mut m) = self.drop_ifaces() {
                if let Err(e) = m.insert(key, 1, 0) {
                    tracing::warn!(iface = %link.name, "REJECT will not be reported for this interface: {e}");
                }
            }
        }
        Ok(())
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
        release(a.xdp, &mut self.ebpf);
        release(a.tc, &mut self.ebpf);
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
        // Dropping pinned links closes our fds only.
        self.attached.clear();
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
        Hold::Xdp(id) => {
            if let Ok(p) = <&mut Xdp>::try_from(ebpf.program_mut(INGRESS_PROGRAM).unwrap()) {
                let _ = p.detach(id);
            }
        }
        Hold::Tc(id) => {
            if let Ok(p) = <&mut SchedClassifier>::try_from(ebpf.program_mut(EGRESS_PROGRAM).unwrap()) {
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

const ALL_MAPS: [&str; 10] = [
    maps::FLOWS_0,
    maps::FLOWS_1,
    maps::FAILS_0,
    maps::FAILS_1,
    maps::GENERATION,
    maps::COUNTERS,
    maps::REJECTS_0,
    maps::REJECTS_1,
    maps::DROP_IFACES,
    maps::DROP_REASONS,
];
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

fn is_bpffs(p: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else { return false };
    // SAFETY: valid path and out struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

/// Makes `<root>/v<layout>-<max_flows>` on a BPF filesystem (mounting
/// /sys/fs/bpf when it is not), and removes pinned state of any other layout.
fn prepare_pin_dir(root: &Path, max_flows: u32) -> Result<PathBuf> {
    let fs_root = Path::new("/sys/fs/bpf");
    if root.starts_with(fs_root) && !is_bpffs(fs_root) {
        let (src, dst, ty) = (c"bpf", c"/sys/fs/bpf", c"bpf");
        // SAFETY: constant C strings.
        if unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), ty.as_ptr(), 0, std::ptr::null()) } != 0 {
            anyhow::bail!(
                "/sys/fs/bpf is not a BPF filesystem and mounting one failed ({}): mount it \
                 (`mount -t bpf bpf /sys/fs/bpf`; in Kubernetes a hostPath volume), or run with --no-pin",
                std::io::Error::last_os_error()
            );
        }
        tracing::info!("mounted the BPF filesystem on /sys/fs/bpf");
    }
    fs::create_dir_all(root).with_context(|| format!("creating pin directory {}", root.display()))?;
    if !is_bpffs(root) {
        anyhow::bail!("{} is not on a BPF filesystem: choose a --pin-dir under a bpffs mount (/sys/fs/bpf)", root.display());
    }
    let name = format!("v{}-{}", flowlog_common::MAP_LAYOUT_VERSION, max_flows);
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
    Ok(dir)
}

/// Removes link pins of interfaces that are gone.
fn prune_link_pins(dir: &Path) {
    let alive: Vec<String> = crate::ifaces::list_links()
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

/// Does the interface still exist with the same index?
pub fn still_present(link: &LinkInfo) -> bool {
    crate::ifaces::read_link(&link.name).is_some_and(|l| l.ifindex == link.ifindex)
}
