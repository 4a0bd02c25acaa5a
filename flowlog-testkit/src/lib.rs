//! Test support for flowlog, kept out of the agent's `src/` so that no fake
//! can reach the shipped binary: a fake IMDS ([`fake_imds`]), the moto
//! harness and a fault-injecting proxy ([`aws`]), frame builders for
//! `BPF_PROG_TEST_RUN` ([`frames`]), network namespaces and a packet
//! capture ([`netns`]), the agent run in them with its records read back
//! ([`agent`]), systemd unit files read as systemd does ([`systemd`]),
//! Parquet files of other writers for `compare` ([`parquet`]), terminal
//! programs run in tmux ([`tmux`]), a private containerd with CNI pods for
//! the Kubernetes tests ([`containerd`]).

pub mod agent;
pub mod aws;
pub mod containerd;
pub mod fake_imds;
pub mod frames;
pub mod netns;
pub mod parquet;
pub mod systemd;
pub mod tmux;

/// Tests that need root (BPF, network namespaces) call this first. Under
/// `cargo xtask test` (and CI) FLOWLOG_REQUIRE_ROOT_TESTS=1 turns a missing
/// privilege into a failure instead of a skip.
pub fn require_root() -> bool {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("FLOWLOG_REQUIRE_ROOT_TESTS").as_deref() == Ok("1") {
        panic!("this test needs root (BPF programs, network namespaces)");
    }
    eprintln!("skipped: needs root; run `cargo xtask test` as root");
    false
}

/// The agent binary a test runs: `built` (the test's
/// `CARGO_BIN_EXE_flowlog-agent`), or the one FLOWLOG_TEST_AGENT_BIN names.
/// `cargo xtask vmtest --packaged` sets it to the packages' release binary
/// (glibc 2.28 floor), so the same tests prove that binary on every kernel
/// of the matrix.
pub fn agent_bin(built: &str) -> String {
    match std::env::var("FLOWLOG_TEST_AGENT_BIN") {
        Ok(p) if !p.is_empty() => {
            assert!(std::path::Path::new(&p).is_file(), "FLOWLOG_TEST_AGENT_BIN={p}: no such file");
            eprintln!("agent binary: {p} (FLOWLOG_TEST_AGENT_BIN)");
            p
        }
        _ => built.to_string(),
    }
}

/// A BPF filesystem of the tests' own, for pinning: `ip netns exec` gives a
/// process a fresh /sys, so /sys/fs/bpf would not survive from one agent to
/// the next inside a test namespace.
pub fn test_bpffs() -> &'static std::path::Path {
    let dir = std::path::Path::new("/run/flowlog-test-bpffs");
    std::fs::create_dir_all(dir).expect("creating /run/flowlog-test-bpffs");
    let mounted = std::process::Command::new("mountpoint").arg("-q").arg(dir).status().is_ok_and(|s| s.success());
    if !mounted {
        let st = std::process::Command::new("mount").args(["-t", "bpf", "bpf"]).arg(dir).status().expect("mount");
        assert!(st.success(), "mount -t bpf bpf {}", dir.display());
    }
    dir
}

/// `s` quoted for `sh -c` scripts: checkouts live anywhere, paths with
/// spaces included.
pub fn shell_quote(s: impl AsRef<std::ffi::OsStr>) -> String {
    let s = s.as_ref().to_str().expect("a UTF-8 path");
    shlex::try_quote(s).unwrap_or_else(|e| panic!("{s:?}: {e}")).into_owned()
}

/// A path under `$TMPDIR` named for the test and this process, absent at
/// first and removed when dropped (also when the test fails).
pub struct TmpPath(std::path::PathBuf);

impl TmpPath {
    pub fn new(prefix: &str, name: &str) -> TmpPath {
        let d = std::env::temp_dir().join(format!("{prefix}-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        TmpPath(d)
    }
}

impl std::ops::Deref for TmpPath {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::path::Path> for TmpPath {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TmpPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A fresh directory `/run/<name>-<pid>-<n>`, removed on drop. For what must
/// stay visible where a test hides /tmp, /var/tmp and /home (the checkout,
/// and with it the target directory, may be under any of them), and for
/// unix sockets (108-byte paths).
pub struct ScratchDir(std::path::PathBuf);

impl ScratchDir {
    pub fn new(name: &str) -> ScratchDir {
        let d = std::path::PathBuf::from(format!("/run/{name}-{}-{}", std::process::id(), netns::next_id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
        ScratchDir(d)
    }
}

impl std::ops::Deref for ScratchDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
