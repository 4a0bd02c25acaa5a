//! `cargo xtask package`: the release binaries for x86-64 and arm64
//! (aarch64, e.g. Graviton) Linux with glibc 2.28 or later, both built by
//! one `cargo zigbuild` (zig from PyPI), then for each architecture a .deb
//! (cargo-deb) and an .rpm (cargo-generate-rpm) of its binary, all in
//! target/packages/: the binaries in target/packages/<arch>/flowlog-agent
//! (arch = x86_64 | aarch64, what the Dockerfile's TARGETARCH maps to), the
//! packages beside them. The tools are pinned and installed into
//! target/test-tools/ when missing. Package contents: the
//! `[package.metadata.deb]` and `[package.metadata.generate-rpm]` tables of
//! flowlog-agent/Cargo.toml; tested by flowlog-agent/tests/package.rs.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context, Result};

use crate::{cargo, root_dir, run, step};

pub const CARGO_ZIGBUILD_VERSION: &str = "0.24.0";
pub const CARGO_DEB_VERSION: &str = "3.8.0";
pub const CARGO_GENERATE_RPM_VERSION: &str = "0.21.1";
/// zig as a Python package (the linker and libc stubs of cargo-zigbuild).
pub const ZIGLANG_VERSION: &str = "0.15.1";
/// The oldest glibc the binaries run with (Debian 10, RHEL 8, Amazon Linux
/// 2023), on both architectures.
pub const GLIBC_FLOOR: &str = "2.28";
/// Where the packages, the binaries they hold and the staged unit go.
pub const PACKAGES_DIR: &str = "target/packages";
const TOOLS_ROOT: &str = "target/test-tools/cargo";
const ZIG_VENV: &str = "target/test-tools/zig-venv";

/// One architecture of the release.
pub struct Arch {
    /// `uname -m`, and the directory of its binary under target/packages/.
    pub name: &'static str,
    pub target: &'static str,
    /// Debian's and the Dockerfile's (BuildKit's TARGETARCH) name.
    pub deb: &'static str,
    pub rpm: &'static str,
}

pub const ARCHES: [Arch; 2] = [
    Arch { name: "x86_64", target: "x86_64-unknown-linux-gnu", deb: "amd64", rpm: "x86_64" },
    Arch { name: "aarch64", target: "aarch64-unknown-linux-gnu", deb: "arm64", rpm: "aarch64" },
];

impl Arch {
    /// cargo-zigbuild's spelling of the target with the glibc floor
    /// (the release and g-vm's arm64 test binaries share artefacts with it).
    pub fn zig_target(&self) -> String {
        format!("{}.{GLIBC_FLOOR}", self.target)
    }

    /// The packages' binary, relative to the repository.
    pub fn packaged_agent(&self) -> String {
        format!("{PACKAGES_DIR}/{}/flowlog-agent", self.name)
    }
}

fn tool_ok(bin: &Path, args: &[&str], version: &str) -> bool {
    Command::new(bin)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(version))
}

/// cargo-deb and cargo-generate-rpm being compiled (`cargo install`).
struct Installs(Vec<std::process::Child>);

impl Installs {
    fn wait(mut self) -> Result<()> {
        for mut child in std::mem::take(&mut self.0) {
            let status = child.wait()?;
            if !status.success() {
                bail!("cargo install failed: {status}");
            }
        }
        Ok(())
    }
}

/// Not waited for (the build failed): not left running either.
impl Drop for Installs {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Installs what is missing of cargo-zigbuild and zig (PyPI wheels, into
/// one venv: seconds), cargo-deb and cargo-generate-rpm (compiled: minutes),
/// and returns the PATH that has them first.
pub(crate) fn setup_tools() -> Result<PathBuf> {
    let (path, installs) = start_setup_tools()?;
    installs.wait()?;
    Ok(path)
}

/// setup_tools, returning before cargo-deb and cargo-generate-rpm are
/// compiled: both at once, and beside the release build, whose serial
/// stretches (the big crates, linking) leave a core idle.
fn start_setup_tools() -> Result<(PathBuf, Installs)> {
    let root = root_dir();
    let bin = root.join(TOOLS_ROOT).join("bin");
    fs::create_dir_all(&bin)?;
    let venv = root.join(ZIG_VENV);
    let py = venv.join("bin/python");
    let zigbuild = venv.join("bin/cargo-zigbuild");
    if !tool_ok(&py, &["-m", "ziglang", "version"], ZIGLANG_VERSION) || !tool_ok(&zigbuild, &["--version"], CARGO_ZIGBUILD_VERSION) {
        step(&format!("installing ziglang {ZIGLANG_VERSION} and cargo-zigbuild {CARGO_ZIGBUILD_VERSION} (PyPI) into {ZIG_VENV}"));
        if !py.exists() {
            run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
        }
        run(Command::new(&py).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            &format!("ziglang=={ZIGLANG_VERSION}"),
            &format!("cargo-zigbuild=={CARGO_ZIGBUILD_VERSION}"),
        ]))?;
    }
    // On PATH through a link: the venv's bin/ would put its python first too.
    let link = bin.join("cargo-zigbuild");
    if fs::read_link(&link).ok().as_deref() != Some(zigbuild.as_path()) {
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&zigbuild, &link).with_context(|| format!("cannot link {}", link.display()))?;
    }
    let mut installs = Vec::new();
    for (krate, version, exe, args) in [
        ("cargo-deb", CARGO_DEB_VERSION, "cargo-deb", &["--version"][..]),
        ("cargo-generate-rpm", CARGO_GENERATE_RPM_VERSION, "cargo-generate-rpm", &["generate-rpm", "--version"][..]),
    ] {
        if !tool_ok(&bin.join(exe), args, version) {
            step(&format!("installing {krate} {version} into {TOOLS_ROOT} (compiling it: a few minutes)"));
            let mut cmd = cargo();
            cmd.current_dir(&root).args(["install", "--quiet", "--locked", "--root", TOOLS_ROOT, &format!("{krate}@{version}")]);
            installs.push(cmd.spawn().with_context(|| format!("cannot start {cmd:?}"))?);
        }
    }
    let path = std::env::var("PATH").unwrap_or_default();
    Ok((PathBuf::from(format!("{}:{path}", bin.display())), Installs(installs)))
}

/// `cargo zigbuild` with the venv's zig (`python -m ziglang`) and its cache
/// under target/.
pub(crate) fn zigbuild_env(cmd: &mut Command) -> &mut Command {
    let root = root_dir();
    cmd.env("CARGO_ZIGBUILD_PYTHON_PATH", root.join(ZIG_VENV).join("bin/python"))
        .env("CARGO_ZIGBUILD_CACHE_DIR", root.join("target/test-tools/zig-cache"))
}

/// The Rust standard library for `target`, from rustup when missing.
pub(crate) fn ensure_rust_target(target: &str) -> Result<()> {
    let o = Command::new("rustc").args(["--print", "target-libdir", "--target", target]).output().context("cannot run rustc")?;
    let libdir = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
    let has_std = fs::read_dir(&libdir).is_ok_and(|d| d.flatten().any(|e| e.file_name().to_string_lossy().starts_with("libstd-")));
    if o.status.success() && has_std {
        return Ok(());
    }
    if Command::new("rustup").arg("--version").output().is_err() {
        bail!("no Rust standard library for {target} and no rustup to add it: install rustup, or this toolchain's std for {target}");
    }
    step(&format!("rustup target add {target}"));
    run(Command::new("rustup").args(["target", "add", target]))
}

/// The unit as packaged: the binary is /usr/bin/flowlog-agent there (by
/// hand it is /usr/local/bin's), everything else as in deploy/systemd/.
pub fn packaged_unit(unit: &str) -> String {
    let body = unit.replace("/usr/local/bin/flowlog-agent", "/usr/bin/flowlog-agent");
    format!("# Installed by the flowlog-agent package (from deploy/systemd/flowlog.service).\n{body}")
}

fn output(cmd: &mut Command) -> Result<Vec<u8>> {
    let o = cmd.stderr(Stdio::inherit()).output().with_context(|| format!("{cmd:?}"))?;
    if !o.status.success() {
        bail!("{cmd:?}: {}", o.status);
    }
    Ok(o.stdout)
}

/// Runs `cmd` and says how long it took (the CI budget is counted in these).
fn timed(what: &str, cmd: &mut Command) -> Result<()> {
    let started = Instant::now();
    step(what);
    run(cmd)?;
    step(&format!("{what}: {:.0?}", started.elapsed()));
    Ok(())
}

pub fn package() -> Result<()> {
    let root = root_dir();
    let started = Instant::now();
    for arch in &ARCHES {
        ensure_rust_target(arch.target)?;
    }
    let (path, installs) = start_setup_tools()?;
    step(&format!("zig, cargo-zigbuild and the Rust targets ready: {:.0?}", started.elapsed()));
    // One cargo run for both targets: the build scripts and proc macros are
    // built once and the two targets' crates share the cores.
    let mut build = cargo();
    zigbuild_env(&mut build).current_dir(&root).env("PATH", &path).args(["zigbuild", "--release", "--locked", "-p", "flowlog-agent"]);
    for arch in &ARCHES {
        build.args(["--target", &arch.zig_target()]);
    }
    let names: Vec<String> = ARCHES.iter().map(Arch::zig_target).collect();
    timed(&format!("building flowlog-agent (release, {}: glibc {GLIBC_FLOOR} or later)", names.join(" ")), &mut build)?;
    let bins: Vec<PathBuf> = ARCHES.iter().map(|a| root.join("target").join(a.target).join("release/flowlog-agent")).collect();
    if let Some(missing) = bins.iter().find(|b| !b.is_file()) {
        bail!("{} not built", missing.display());
    }
    let waiting = Instant::now();
    installs.wait()?;
    step(&format!("cargo-deb and cargo-generate-rpm ready (waited {:.0?} for them after the build)", waiting.elapsed()));

    let out = root.join(PACKAGES_DIR);
    let staging = out.join("staging");
    fs::create_dir_all(&staging)?;
    let unit = fs::read_to_string(root.join("deploy/systemd/flowlog.service")).context("deploy/systemd/flowlog.service")?;
    fs::write(staging.join("flowlog.service"), packaged_unit(&unit))?;
    // The manual page and shell completions, generated by the binary itself
    // so they always match its flags: this machine's architecture's binary
    // (the pages are the same for both). gzip -n: no name or time, so the
    // same page gives the same bytes.
    let host = ARCHES
        .iter()
        .position(|a| a.name == std::env::consts::ARCH)
        .with_context(|| format!("this machine's architecture {} is not one of the release's", std::env::consts::ARCH))?;
    let host_bin = &bins[host];
    let man = staging.join("man");
    let _ = fs::remove_dir_all(&man);
    fs::create_dir_all(&man)?;
    output(Command::new(host_bin).arg("man").arg("--dir").arg(&man))?;
    for page in fs::read_dir(&man)? {
        run(Command::new("gzip").arg("-9nf").arg(page?.path()))?;
    }
    for (shell, file) in [("bash", "flowlog-agent"), ("zsh", "_flowlog-agent"), ("fish", "flowlog-agent.fish")] {
        fs::write(staging.join(file), output(Command::new(host_bin).args(["completions", shell]))?)?;
    }
    // Nothing of an earlier run (or of the single-architecture layout, whose
    // binary was target/packages/flowlog-agent) is left to be mistaken for
    // this run's.
    for old in fs::read_dir(&out)? {
        let p = old?.path();
        if p.extension().is_some_and(|e| e == "deb" || e == "rpm") || p.file_name().is_some_and(|n| n == "flowlog-agent") {
            fs::remove_file(p)?;
        }
    }
    for (arch, bin) in ARCHES.iter().zip(&bins) {
        // The binary the packages hold, for the Dockerfile and the kernel matrix.
        let packaged = root.join(arch.packaged_agent());
        fs::create_dir_all(packaged.parent().unwrap())?;
        fs::copy(bin, &packaged)?;
        // Both tools read the binary from target/<target>/release/ and name
        // the architecture after the target.
        timed(
            &format!("cargo deb ({})", arch.deb),
            cargo()
                .current_dir(&root)
                .env("PATH", &path)
                .args(["deb", "-p", "flowlog-agent", "--no-build", "--no-strip", "--target", arch.target, "--output"])
                .arg(&out),
        )?;
        timed(
            &format!("cargo generate-rpm ({})", arch.rpm),
            cargo()
                .current_dir(&root)
                .env("PATH", &path)
                .args(["generate-rpm", "-p", "flowlog-agent", "--target", arch.target, "--output"])
                .arg(&out),
        )?;
    }
    let mut made: Vec<String> = fs::read_dir(&out)?.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned())).collect();
    made.sort();
    step(&format!("{}: {}", out.display(), made.join(" ")));
    Ok(())
}
