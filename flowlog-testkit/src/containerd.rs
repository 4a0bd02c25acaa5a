//! A private containerd (Debian's 1.6, with its CRI plugin) for the
//! Kubernetes tests: pods made through CRI get real CNI interfaces, as on a
//! node. Recipe and pitfalls: shared/reference/containerd.md.
//!
//! - Config, root, state, runc root, CNI configs, IPAM leases and the CRI
//!   socket live in one short scratch dir `/run/flowlog-ctrd-<pid>-<n>` (a unix
//!   socket path has at most 107 bytes; a checkout can be anywhere).
//! - containerd runs inside a network namespace of its own ([`Containerd::netns`]):
//!   the CNI plugins it runs make the bridge and the pod veths there, never in
//!   the host's namespace, and harnesses of parallel tests do not meet. Only its
//!   network namespace changes (nsenter), so its mounts (the pods' netns files
//!   under the scratch dir) are visible to the test and to the agent.
//! - Two networks, picked by the CRI runtime handler (per-handler
//!   `cni_conf_dir`): `""` → [`BRIDGE_NET`] (bridge [`BRIDGE`], 10.88.0.0/24,
//!   gateway on the bridge); [`PTP_HANDLER`] → [`PTP_NET`] (one veth per pod
//!   with 10.89.0.1/32 on the host side and a /32 route to the pod, the AWS VPC
//!   CNI's layout), both with host-local IPAM in the scratch dir.
//! - The sandbox ("pause") image is built here (static C binary, umoci) and
//!   imported: there is no registry.
//!
//! Dropping [`Containerd`] tears everything down even after a failed test:
//! containerd, shims and pause processes killed, every mount under the
//! scratch dir unmounted, the namespace (bridge, veths) deleted, libcni's
//! cache files, runc's cgroups (under [`Containerd::cgroup_parent`]) and shim
//! sockets of its pods removed, the
//! scratch dir deleted. [`Containerd::leftovers`] says what a teardown left.
//!
//! The tests speak CRI with the agent's own client (testkit does not depend
//! on the agent); needs: `apt-get install containerd runc
//! containernetworking-plugins umoci gcc libc6-dev util-linux iproute2`.

use std::{
    fs,
    net::Ipv4Addr,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::netns::{next_id, try_sh, Netns};

/// The runtime handler of the ptp network (RunPodSandbox `runtime_handler`).
pub const PTP_HANDLER: &str = "ptp";
/// CNI network names (libcni's cache files are named after them).
pub const BRIDGE_NET: &str = "flowlog-bridge";
pub const PTP_NET: &str = "flowlog-ptp";
/// The bridge of [`BRIDGE_NET`], in [`Containerd::netns`].
pub const BRIDGE: &str = "flbr0";
/// The gateways: on the bridge, and on every ptp host veth.
pub const BRIDGE_GW: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);
pub const PTP_GW: Ipv4Addr = Ipv4Addr::new(10, 89, 0, 1);
/// The sandbox image CRI is configured with (built and imported at start).
pub const PAUSE_IMAGE: &str = "localhost/flowlog/pause:3.9";

/// Where Debian's containernetworking-plugins put the plugins.
const CNI_BIN: &str = "/usr/lib/cni";
/// Paths containerd 1.6 and libcni use outside the scratch dir whatever the
/// config says (removed when empty; only this harness's entries are deleted).
const RUN_CONTAINERD: &str = "/run/containerd";
const CNI_RESULTS: &str = "/var/lib/cni/results";

const PAUSE_C: &str = r#"/* pod sandbox "pause": sleep until SIGINT/SIGTERM, reap children */
#include <signal.h>
#include <unistd.h>
#include <sys/wait.h>
static void die(int s) { (void)s; _exit(0); }
static void reap(int s) { (void)s; while (waitpid(-1, NULL, WNOHANG) > 0) {} }
int main(void) {
  struct sigaction a = {0}, r = {0};
  a.sa_handler = die; sigaction(SIGINT, &a, NULL); sigaction(SIGTERM, &a, NULL);
  r.sa_handler = reap; r.sa_flags = SA_NOCLDSTOP; sigaction(SIGCHLD, &r, NULL);
  for (;;) pause();
}
"#;

/// A running private containerd; everything it made goes when dropped.
pub struct Containerd {
    scratch: PathBuf,
    // Dropped by hand in teardown, after the processes and mounts.
    netns: Option<Netns>,
    child: Option<Child>,
}

impl Containerd {
    /// Starts containerd with the CRI plugin and both networks and imports
    /// the pause image; panics (after cleaning up) with containerd's log if
    /// it does not come up. About 0.5 s.
    pub fn start() -> Containerd {
        if let Some(missing) = missing_tools() {
            panic!("{missing}");
        }
        let scratch = PathBuf::from(format!("/run/flowlog-ctrd-{}-{}", std::process::id(), next_id()));
        let _ = fs::remove_dir_all(&scratch);
        fs::create_dir_all(&scratch).unwrap_or_else(|e| panic!("{}: {e}", scratch.display()));
        let mut c = Containerd { scratch, netns: Some(Netns::new("ctrd")), child: None };
        if let Err(e) = c.boot() {
            let log = fs::read_to_string(c.scratch.join("containerd.log")).unwrap_or_default();
            drop(c);
            panic!("private containerd: {e}\ncontainerd log:\n{log}");
        }
        c
    }

    /// For a test: `None` (the test returns) without root, or without the
    /// packages (`SKIP:` line), unless FLOWLOG_REQUIRE_ROOT_TESTS=1 (`cargo
    /// xtask test`, CI) makes either a failure; else [`Containerd::start`].
    pub fn start_or_skip() -> Option<Containerd> {
        if !crate::require_root() {
            return None;
        }
        if let Some(missing) = missing_tools() {
            if std::env::var("FLOWLOG_REQUIRE_ROOT_TESTS").as_deref() == Ok("1") {
                panic!("{missing}");
            }
            eprintln!("SKIP: {missing}");
            return None;
        }
        Some(Containerd::start())
    }

    fn boot(&mut self) -> Result<(), String> {
        let s = self.scratch.clone();
        for d in ["cni/bridge.d", "cni/ptp.d", "cni/ipam"] {
            fs::create_dir_all(s.join(d)).map_err(|e| format!("{d}: {e}"))?;
        }
        let write = |name: &str, text: String| fs::write(s.join(name), text).map_err(|e| format!("{name}: {e}"));
        write("config.toml", config_toml(&s))?;
        let ipam = |subnet: &str| {
            format!(
                r#""ipam": {{"type": "host-local", "dataDir": "{}", "ranges": [[{{"subnet": "{subnet}"}}]], "routes": [{{"dst": "0.0.0.0/0"}}]}}"#,
                s.join("cni/ipam").display()
            )
        };
        write(
            "cni/bridge.d/10-flowlog-bridge.conflist",
            format!(
                r#"{{"cniVersion": "1.0.0", "name": "{BRIDGE_NET}", "plugins": [{{"type": "bridge", "bridge": "{BRIDGE}", "isGateway": true, "ipMasq": false, {}}}]}}"#,
                ipam("10.88.0.0/24")
            ),
        )?;
        write(
            "cni/ptp.d/10-flowlog-ptp.conflist",
            format!(
                r#"{{"cniVersion": "1.0.0", "name": "{PTP_NET}", "plugins": [{{"type": "ptp", "ipMasq": false, "mtu": 1500, {}}}]}}"#,
                ipam("10.89.0.0/24")
            ),
        )?;
        let image = build_pause_image(&s)?;
        let log = fs::File::create(s.join("containerd.log")).map_err(|e| e.to_string())?;
        let netns = format!("--net=/run/netns/{}", self.netns().name());
        // nsenter execs containerd (no fork): the child is containerd. Its own
        // process group: a ^C of the test run does not reach it mid-teardown.
        let child = Command::new("nsenter")
            .arg(netns)
            .arg("containerd")
            .arg("--config")
            .arg(s.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("starting containerd: {e}"))?;
        self.child = Some(child);
        let until = Instant::now() + Duration::from_secs(20);
        while self.ctr(&["version"]).is_err() {
            if let Some(st) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                return Err(format!("containerd exited: {st}"));
            }
            if Instant::now() > until {
                return Err("containerd's socket did not answer within 20 s".into());
            }
            thread::sleep(Duration::from_millis(50));
        }
        let base = PAUSE_IMAGE.rsplit_once(':').unwrap().0;
        self.ctr(&["-n", "k8s.io", "images", "import", "--base-name", base, image.to_str().unwrap()])?;
        Ok(())
    }

    /// `ctr --address SOCKET args...`
    pub fn ctr(&self, args: &[&str]) -> Result<String, String> {
        let sock = self.socket();
        let mut v = vec!["ctr", "--address", sock.to_str().unwrap()];
        v.extend_from_slice(args);
        try_sh(&v)
    }

    /// The CRI (and containerd) socket.
    pub fn socket(&self) -> PathBuf {
        self.scratch.join("containerd.sock")
    }

    /// The scratch dir (config, root, state, CNI configs and leases, log).
    pub fn scratch(&self) -> &Path {
        &self.scratch
    }

    /// The network namespace containerd (and with it the CNI plugins) runs
    /// in: the bridge and the pods' host-side veths are here. Run the agent here.
    pub fn netns(&self) -> &Netns {
        self.netns.as_ref().unwrap()
    }

    /// What containerd logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.scratch.join("containerd.log")).unwrap_or_default()
    }

    /// The veths of [`Containerd::netns`]: (name, ifindex), by name.
    pub fn host_veths(&self) -> Vec<(String, u32)> {
        let out = try_sh(&["ip", "-j", "-n", self.netns().name(), "link", "show", "type", "veth"]).unwrap();
        let links: serde_json::Value = serde_json::from_str(&out).unwrap();
        let mut v: Vec<(String, u32)> = links
            .as_array()
            .unwrap()
            .iter()
            .map(|l| (l["ifname"].as_str().unwrap().to_string(), l["ifindex"].as_u64().unwrap() as u32))
            .collect();
        v.sort();
        v
    }

    /// The host-side veth of the pod whose network namespace file is
    /// `pod_netns`, found from inside the pod: its eth0's peer ifindex
    /// (IFLA_LINK) is that veth's ifindex in [`Containerd::netns`].
    pub fn pod_host_veth(&self, pod_netns: &Path) -> String {
        let out = pod_exec(pod_netns, &["ip", "-j", "link", "show", "eth0"]).unwrap();
        let eth0: serde_json::Value = serde_json::from_str(&out).unwrap();
        let peer = eth0[0]["link_index"].as_u64().unwrap_or_else(|| panic!("pod eth0 has no link_index: {out}"));
        let veths = self.host_veths();
        let found = veths.iter().find(|(_, i)| u64::from(*i) == peer);
        found.unwrap_or_else(|| panic!("no host veth with ifindex {peer} in {veths:?}")).0.clone()
    }

    /// Makes the host-local IPAM of network `net` hand out `ip` next (once
    /// it is free): its allocator goes on after the last address it reserved,
    /// so a freed address would come back only after the whole range.
    pub fn allocate_next(&self, net: &str, ip: Ipv4Addr) {
        let file = self.scratch.join("cni/ipam").join(net).join("last_reserved_ip.0");
        assert!(file.exists(), "{}: host-local keeps no such file (changed layout?)", file.display());
        fs::write(&file, Ipv4Addr::from(u32::from(ip) - 1).to_string()).unwrap();
    }

    /// The cgroup parent to give pods (PodSandboxConfig `linux.cgroup_parent`):
    /// runc's cgroups of this harness's pods under one directory of its own in
    /// every hierarchy, removed at teardown. Without it they go under the
    /// `/k8s.io` that other runtimes share (only this harness's pods' are removed).
    pub fn cgroup_parent(&self) -> String {
        format!("/{}", self.scratch.file_name().unwrap().to_string_lossy())
    }

    /// The ids of the pod sandboxes containerd knows (its CRI store on disk).
    fn sandbox_ids(&self) -> Vec<String> {
        let mut ids = Vec::new();
        for d in ["root/io.containerd.grpc.v1.cri/sandboxes", "state/io.containerd.runtime.v2.task/k8s.io"] {
            if let Ok(rd) = fs::read_dir(self.scratch.join(d)) {
                ids.extend(rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()));
            }
        }
        ids.sort();
        ids.dedup();
        ids
    }

    fn teardown(&mut self) {
        let s = self.scratch.clone();
        let sock = self.socket();
        let ids = self.sandbox_ids();
        let task_dirs: Vec<PathBuf> = ids.iter().map(|id| s.join("state/io.containerd.runtime.v2.task/k8s.io").join(id)).collect();
        // Shim sockets live in /run/containerd/s/ whatever the config (1.6).
        let shim_socks: Vec<String> = task_dirs
            .iter()
            .filter_map(|d| fs::read_to_string(d.join("address")).ok())
            .map(|a| a.trim().trim_start_matches("unix://").to_string())
            .collect();
        // containerd: no need for its graceful exit (2 s), everything it
        // made is removed below.
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Pause processes, then the shims (they ignore SIGTERM and 1.6 writes no
        // shim.pid: found by their exact `-address SOCKET` argument).
        for d in &task_dirs {
            if let Some(pid) = fs::read_to_string(d.join("init.pid")).ok().and_then(|p| p.trim().parse::<i32>().ok()) {
                // SAFETY: plain kill(2).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let shims = shim_pids(&sock);
        for pid in &shims {
            // SAFETY: plain kill(2).
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
        if !shims.is_empty() {
            thread::sleep(Duration::from_millis(300));
        }
        // Every mount under the scratch dir (rootfs overlays, shm, pod netns
        // files, the netns dir's own bind mount), deepest first.
        for m in mounts_under(&s).iter().rev() {
            if !Command::new("umount").arg(m).status().is_ok_and(|st| st.success()) {
                let _ = Command::new("umount").arg("-l").arg(m).status();
            }
        }
        // The bridge and the veths go with the namespace.
        self.netns.take();
        for id in &ids {
            for f in [format!("{BRIDGE_NET}-{id}-eth0"), format!("{PTP_NET}-{id}-eth0"), format!("cni-loopback-{id}-lo")] {
                let _ = fs::remove_file(Path::new(CNI_RESULTS).join(f));
            }
            // runc's cgroupfs cgroups of pods made without our cgroup parent: /k8s.io/<id>.
            for h in cgroup_hierarchies() {
                remove_cgroup(&h.join("k8s.io").join(id));
            }
        }
        for h in cgroup_hierarchies() {
            remove_cgroup(&h.join(self.cgroup_parent().trim_start_matches('/')));
        }
        for sk in &shim_socks {
            let _ = fs::remove_file(sk);
        }
        // Shared parents, only when no other harness (or real runtime) uses them.
        for h in cgroup_hierarchies() {
            let _ = fs::remove_dir(h.join("k8s.io"));
        }
        for d in ["s", "fifo", "runc/k8s.io", "runc", ""] {
            let _ = fs::remove_dir(Path::new(RUN_CONTAINERD).join(d));
        }
        let _ = fs::remove_dir(CNI_RESULTS);
        let _ = fs::remove_dir("/var/lib/cni");
        let _ = fs::remove_dir_all(&s);
    }

    /// Tears down now and returns what is left of this harness (empty when
    /// clean): mounts under the scratch dir, the scratch dir, the namespace,
    /// live shims, libcni cache files of its pods.
    pub fn stop(mut self) -> Vec<String> {
        let s = self.scratch.clone();
        let sock = self.socket();
        let ns = self.netns().name().to_string();
        let ids = self.sandbox_ids();
        let parent = self.cgroup_parent();
        self.teardown();
        let mut left = Vec::new();
        left.extend(mounts_under(&s).into_iter().map(|m| format!("mount {m}")));
        if s.exists() {
            left.push(format!("dir {}", s.display()));
        }
        if Path::new("/run/netns").join(&ns).exists() {
            left.push(format!("netns {ns}"));
        }
        left.extend(shim_pids(&sock).into_iter().filter(|p| !is_zombie(*p)).map(|p| format!("shim pid {p}")));
        for id in &ids {
            for net in [BRIDGE_NET, PTP_NET] {
                let f = Path::new(CNI_RESULTS).join(format!("{net}-{id}-eth0"));
                if f.exists() {
                    left.push(format!("file {}", f.display()));
                }
            }
            for h in cgroup_hierarchies().into_iter().filter(|h| h.join("k8s.io").join(id).exists()) {
                left.push(format!("cgroup {}/k8s.io/{id}", h.display()));
            }
        }
        for h in cgroup_hierarchies().into_iter().filter(|h| h.join(parent.trim_start_matches('/')).exists()) {
            left.push(format!("cgroup {}{parent}", h.display()));
        }
        left
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if self.netns.is_some() {
            self.teardown();
        }
    }
}

/// Runs a command inside a pod's network namespace (`nsenter --net=PATH`;
/// iproute2's `-n` and `ip netns exec` take names only). Note /sys stays the
/// host's there: read links with `ip -j link`, not sysfs.
pub fn pod_exec(pod_netns: &Path, args: &[&str]) -> Result<String, String> {
    let net = format!("--net={}", pod_netns.display());
    let mut v = vec!["nsenter", net.as_str()];
    v.extend_from_slice(args);
    try_sh(&v)
}

/// What CRI is configured with: root, state, sockets and runc's root in
/// the scratch dir; see shared/reference/containerd.md §2 for each setting.
fn config_toml(s: &Path) -> String {
    let s = s.display();
    let runtime = |name: &str, extra: &str| {
        format!(
            r#"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{name}]
      runtime_type = "io.containerd.runc.v2"{extra}
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{name}.options]
        SystemdCgroup = false
        Root = "{s}/runc""#
        )
    };
    let ptp_conf = format!("\n      cni_conf_dir = \"{s}/cni/ptp.d\"\n      cni_max_conf_num = 1");
    format!(
        r#"version = 2
root = "{s}/root"
state = "{s}/state"
# opt would create /var/lib/containerd/opt; the others are not used here
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{s}/containerd.sock"
[ttrpc]
  address = "{s}/containerd.sock.ttrpc"
[debug]
  address = "{s}/debug.sock"
  level = "info"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  disable_apparmor = true
  # no CAP_SYS_RESOURCE in the bounding set of some hosts: oom_score_adj -998 fails in runc
  restrict_oom_score_adj = true
  # pod netns files under the state dir, not /var/run/netns
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"{}{}
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{s}/cni/bridge.d"
    max_conf_num = 1
"#,
        runtime("runc", ""),
        runtime(PTP_HANDLER, &ptp_conf),
    )
}

/// The pause image as an OCI layout tar: static C binary, umoci.
fn build_pause_image(s: &Path) -> Result<PathBuf, String> {
    let w = s.join("pause-build");
    fs::create_dir_all(&w).map_err(|e| e.to_string())?;
    fs::write(w.join("pause.c"), PAUSE_C).map_err(|e| e.to_string())?;
    let run = |args: &[&str]| {
        let out = Command::new(args[0]).args(&args[1..]).current_dir(&w).output().map_err(|e| format!("{args:?}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("{args:?}: {}", String::from_utf8_lossy(&out.stderr).trim()))
        }
    };
    let tag = PAUSE_IMAGE.rsplit_once(':').unwrap().1;
    let image = format!("layout:{tag}");
    run(&["gcc", "-Os", "-static", "-s", "-o", "pause", "pause.c"])?;
    run(&["umoci", "init", "--layout", "layout"])?;
    run(&["umoci", "new", "--image", &image])?;
    run(&["umoci", "unpack", "--image", &image, "bundle"])?;
    run(&["install", "-m", "0755", "pause", "bundle/rootfs/pause"])?;
    run(&["umoci", "repack", "--image", &image, "bundle"])?;
    let arch = if cfg!(target_arch = "aarch64") { "arm64" } else { "amd64" };
    run(&[
        "umoci", "config", "--image", &image, "--config.entrypoint", "/pause", "--config.user", "65535:65535",
        "--architecture", arch, "--os", "linux",
    ])?;
    run(&["umoci", "gc", "--layout", "layout"])?;
    // index.json names only the tag; `ctr images import --base-name` adds the repository.
    run(&["tar", "-C", "layout", "-cf", "../pause-oci.tar", "."])?;
    let _ = fs::remove_dir_all(w.join("bundle"));
    Ok(s.join("pause-oci.tar"))
}

/// What the harness lacks (tools, CNI plugins), as the command that installs it.
pub fn missing_tools() -> Option<String> {
    let tools = [
        ("containerd", "containerd"),
        ("ctr", "containerd"),
        ("containerd-shim-runc-v2", "containerd"),
        ("runc", "runc"),
        ("umoci", "umoci"),
        ("gcc", "gcc libc6-dev"),
        ("nsenter", "util-linux"),
        ("ip", "iproute2"),
    ];
    let path = std::env::var("PATH").unwrap_or_default();
    let path = format!("{path}:/usr/sbin:/sbin");
    let missing: Vec<&str> =
        tools.iter().filter(|(t, _)| !path.split(':').any(|d| Path::new(d).join(t).is_file())).map(|(_, p)| *p).collect();
    let no_cni = ["bridge", "ptp", "host-local", "loopback"].iter().any(|p| !Path::new(CNI_BIN).join(p).is_file());
    if missing.is_empty() && !no_cni {
        return None;
    }
    let mut pkgs = missing;
    if no_cni {
        pkgs.push("containernetworking-plugins");
    }
    pkgs.dedup();
    Some(format!("the containerd harness needs `apt-get install {}` (`cargo xtask test` installs them)", pkgs.join(" ")))
}

/// Mount points under `dir`, in /proc/mounts order (parents first).
fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = format!("{}/", dir.display());
    let text = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split(' ').nth(1))
        // /proc/mounts escapes spaces as \040; scratch paths have none
        .filter(|m| m.starts_with(&prefix))
        .map(String::from)
        .collect()
}

/// containerd-shim processes started for `sock` (`-address SOCK` in argv).
fn shim_pids(sock: &Path) -> Vec<i32> {
    let want = sock.as_os_str().as_encoded_bytes();
    let mut pids = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        if fs::read_to_string(e.path().join("comm")).map(|c| c.trim() != "containerd-shim").unwrap_or(true) {
            continue;
        }
        let argv = fs::read(e.path().join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = argv.split(|b| *b == 0).collect();
        if args.windows(2).any(|w| w[0] == b"-address" && w[1] == want) {
            pids.push(pid);
        }
    }
    pids
}

fn is_zombie(pid: i32) -> bool {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // "pid (comm) S ...": the state follows the last ')'
    stat.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')).unwrap_or(true)
}

/// /sys/fs/cgroup (cgroup v2) and the hierarchies under it (v1, hybrid).
fn cgroup_hierarchies() -> Vec<PathBuf> {
    let root = PathBuf::from("/sys/fs/cgroup");
    let mut v = vec![root.clone()];
    v.extend(fs::read_dir(&root).into_iter().flatten().flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    v
}

/// A cgroup directory and its children (empty ones: rmdir, deepest first).
fn remove_cgroup(dir: &Path) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&e.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}
