//! The arm64 half of `cargo xtask vmtest --arch arm64`: Debian's arm64
//! kernels under QEMU's software emulation (`-cpu neoverse-n1`, Graviton2's
//! core), over an arm64 Debian root filesystem, since the host's root has
//! no arm64 binaries. See ../shared/reference/arm64.md for the recipe.
//!
//! Cached under target/ (a second run does no network access):
//!   target/vm/arm64/rootfs.tar.zst  debootstrap's result (built once: minutes)
//!   target/vm/arm64/root/           the tarball unpacked, the guest's `/`,
//!                                   plus what each run puts there:
//!     vmtest/guest.sh, vmtest/bin/  the guest script and test binaries
//!     vmtest/runs/<label>/          each VM's --rwdir (must be inside the root)
//!     usr/lib/modules/<release>/    hard links to the kernels' modules
//!     <host path of the agent>      the tests run it by its build path
//!
//! The test binaries are cross-built with cargo-zigbuild for
//! aarch64-unknown-linux-gnu.2.28, the release profile and target of the
//! aarch64 package, so both builds share their dependencies.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context, Result};

use super::{artifacts, snapshot, Arch, Build, PACKAGED_SUITE};
use crate::{apt_install, cargo, dpkg_installed, package, run, step};

/// QEMU for aarch64 guests, qemu-user for debootstrap's second stage,
/// zstd for the tarball, depmod (kmod).
const HOST_PACKAGES: &[&str] = &["qemu-system-arm", "qemu-user-static", "debootstrap", "kmod", "zstd"];
const TARGET: &str = "aarch64-unknown-linux-gnu";
const ROOTFS_SCRIPT: &str = "xtask/vm/rootfs-arm64.sh";
const MIRROR: &str = "http://deb.debian.org/debian";
pub(super) const DEFAULT_CPU: &str = "neoverse-n1";
/// Without LSE atomics: the JIT emits its load/store-exclusive sequences.
pub(super) const OLD_CPU: &str = "cortex-a57";
/// Under the root: what xtask puts there for the guest.
const GUEST_DIR: &str = "vmtest";

pub(super) fn ensure_host() -> Result<()> {
    if !HOST_PACKAGES.iter().all(|p| dpkg_installed(p)) {
        apt_install(HOST_PACKAGES)?;
    }
    Ok(())
}

/// qemu-aarch64 in binfmt_misc, so that chroot runs arm64 binaries. No
/// systemd here to do it; the F flag (Debian's file) makes it work inside
/// the chroot.
fn ensure_binfmt() -> Result<()> {
    let dir = Path::new("/proc/sys/fs/binfmt_misc");
    if !dir.join("register").exists() {
        run(Command::new("mount").args(["-t", "binfmt_misc", "binfmt_misc"]).arg(dir))?;
    }
    if !dir.join("qemu-aarch64").exists() {
        let conf = "/usr/lib/binfmt.d/qemu-aarch64.conf";
        let rule = fs::read_to_string(conf).with_context(|| format!("{conf} (package qemu-user-static)"))?;
        fs::write(dir.join("register"), rule.trim()).context("registering qemu-aarch64 in binfmt_misc")?;
    }
    Ok(())
}

/// The unpacked root filesystem, built and packed first if there is no
/// tarball. Returns the root.
pub(super) fn ensure_rootfs(root: &Path) -> Result<PathBuf> {
    let dir = root.join("target/vm/arm64");
    let tarball = dir.join("rootfs.tar.zst");
    if !tarball.is_file() {
        ensure_binfmt()?;
        fs::create_dir_all(&dir)?;
        step(&format!("vmtest: building the arm64 root filesystem (debootstrap bookworm; the second stage under qemu-user takes minutes) into {}", tarball.display()));
        let t0 = Instant::now();
        run(Command::new("sh").arg(root.join(ROOTFS_SCRIPT)).arg(dir.join("rootfs.work")).arg(&tarball).arg(MIRROR))?;
        step(&format!("vmtest: arm64 root filesystem built in {:.0?}", t0.elapsed()));
    }
    let rootfs = dir.join("root");
    let stamp = rootfs.join(".flowlog-tarball");
    let meta = fs::metadata(&tarball)?;
    let want = format!("{} {:?}\n", meta.len(), meta.modified().ok());
    if fs::read_to_string(&stamp).ok().as_deref() != Some(want.as_str()) {
        step(&format!("vmtest: unpacking {} into {}", tarball.display(), rootfs.display()));
        if rootfs.exists() {
            fs::remove_dir_all(&rootfs).with_context(|| format!("cannot clear {}", rootfs.display()))?;
        }
        fs::create_dir_all(&rootfs)?;
        run(Command::new("tar").arg("-C").arg(&rootfs).args(["--zstd", "--numeric-owner", "-xf"]).arg(&tarball))?;
        fs::write(&stamp, want)?;
    }
    // The previous run's binaries and results.
    let guest = rootfs.join(GUEST_DIR);
    if guest.exists() {
        fs::remove_dir_all(&guest).with_context(|| format!("cannot clear {}", guest.display()))?;
    }
    fs::create_dir_all(guest.join("runs"))?;
    fs::create_dir_all(guest.join("bin"))?;
    fs::copy(root.join(super::GUEST_SCRIPT), guest.join("guest.sh"))?;
    Ok(rootfs)
}

/// The kernel's modules in the root (virtme-ng links them in only when it
/// boots the host's root): hard links, same filesystem.
pub(super) fn link_modules(rootfs: &Path, kernel_root: &Path, release: &str) -> Result<()> {
    let dest = rootfs.join("usr/lib/modules");
    if dest.join(release).join("modules.dep").is_file() {
        return Ok(());
    }
    fs::create_dir_all(&dest)?;
    let _ = fs::remove_dir_all(dest.join(release));
    run(Command::new("cp").arg("-al").arg(kernel_root.join("lib/modules").join(release)).arg(&dest))
}

/// Where the guest sees a file of the root.
pub(super) fn guest_path(rootfs: &Path, p: &Path) -> Result<PathBuf> {
    let rel = p.strip_prefix(rootfs).with_context(|| format!("{} is not inside {}", p.display(), rootfs.display()))?;
    Ok(Path::new("/").join(rel))
}

/// The run directory of VM `label`, inside the root.
pub(super) fn run_dir(rootfs: &Path, label: &str) -> PathBuf {
    rootfs.join(GUEST_DIR).join("runs").join(label)
}

/// Where `cargo xtask package` leaves the aarch64 binary.
pub(super) const PACKAGED_AGENT: &str = "target/packages/aarch64/flowlog-agent";

/// Cross-builds the agent and the suites' test binaries (release profile,
/// the package's target) and puts them into the root: the test binaries
/// under vmtest/bin, the agent at its build path (compiled into the tests).
pub(super) fn build_tests(root: &Path, rootfs: &Path, suites: &[String]) -> Result<Build> {
    let path = package::setup_tools()?;
    let zig_target = format!("{TARGET}.{}", package::GLIBC_FLOOR);
    step(&format!("vmtest: cross-building flowlog-agent and its test binaries (release, {zig_target}, cargo-zigbuild)"));
    let t0 = Instant::now();
    let mut cmd = cargo();
    package::zigbuild_env(&mut cmd)
        .current_dir(root)
        .env("PATH", &path)
        .args(["zigbuild", "--release", "--locked", "-p", "flowlog-agent", "--target", &zig_target, "--message-format=json-render-diagnostics"]);
    let mut tests: Vec<&str> = suites.iter().map(|s| if s == PACKAGED_SUITE { "e2e" } else { s.as_str() }).collect();
    tests.dedup();
    for t in &tests {
        cmd.args(["--test", t]);
    }
    let out = cmd.stderr(Stdio::inherit()).output().context("cannot run cargo zigbuild")?;
    if !out.status.success() {
        bail!("cargo zigbuild --tests for {zig_target} failed: {}", out.status);
    }
    step(&format!("vmtest: arm64 test binaries built in {:.0?}", t0.elapsed()));
    let (tests, bins) = artifacts(&out.stdout);
    let bin_dir = rootfs.join(GUEST_DIR).join("bin");
    let mut build = Build { suites: Vec::new(), binds: Vec::new(), packaged_agent: None, rootfs: Some(rootfs.to_path_buf()) };
    build.add_suites(root, Arch::Arm64, suites, &tests, &bin_dir, &bin_dir.join("packaged-flowlog-agent"))?;
    for exe in bins.values() {
        // The host path, under the root: e.g. <root>/work/x/target/aarch64-.../release/flowlog-agent.
        let inside = rootfs.join(exe.strip_prefix("/").unwrap_or(exe));
        fs::create_dir_all(inside.parent().context("agent path")?)?;
        let _ = fs::remove_file(&inside);
        snapshot(exe, &inside)?;
    }
    Ok(build)
}
