//! `cargo xtask package`: the release binary for any x86-64 Linux with glibc
//! 2.28 or later (cargo-zigbuild with zig from PyPI), then a .deb
//! (cargo-deb) and an .rpm (cargo-generate-rpm) of it, all in
//! target/packages/. The tools are pinned and installed into
//! target/test-tools/ when missing. Package contents: the
//! `[package.metadata.deb]` and `[package.metadata.generate-rpm]` tables of
//! flowlog-agent/Cargo.toml; tested by flowlog-agent/tests/package.rs.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

use crate::{cargo, root_dir, run, step};

pub const CARGO_ZIGBUILD_VERSION: &str = "0.24.0";
pub const CARGO_DEB_VERSION: &str = "3.8.0";
pub const CARGO_GENERATE_RPM_VERSION: &str = "0.21.1";
/// zig as a Python package (the linker and libc stubs of cargo-zigbuild).
pub const ZIGLANG_VERSION: &str = "0.15.1";
/// The oldest glibc the binary runs with (Debian 10, RHEL 8, Amazon Linux 2023).
pub const GLIBC_FLOOR: &str = "2.28";
pub const TARGET: &str = "x86_64-unknown-linux-gnu";
/// Where the packages, the binary they hold and the staged unit go.
pub const PACKAGES_DIR: &str = "target/packages";
const TOOLS_ROOT: &str = "target/test-tools/cargo";
const ZIG_VENV: &str = "target/test-tools/zig-venv";

fn tool_ok(bin: &Path, args: &[&str], version: &str) -> bool {
    Command::new(bin)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(version))
}

fn setup_tools() -> Result<PathBuf> {
    let root = root_dir();
    let bin = root.join(TOOLS_ROOT).join("bin");
    for (krate, version, exe, args) in [
        ("cargo-zigbuild", CARGO_ZIGBUILD_VERSION, "cargo-zigbuild", &["--version"][..]),
        ("cargo-deb", CARGO_DEB_VERSION, "cargo-deb", &["--version"][..]),
        ("cargo-generate-rpm", CARGO_GENERATE_RPM_VERSION, "cargo-generate-rpm", &["generate-rpm", "--version"][..]),
    ] {
        if !tool_ok(&bin.join(exe), args, version) {
            step(&format!("installing {krate} {version} into {TOOLS_ROOT}"));
            run(cargo().current_dir(&root).args(["install", "--locked", "--root", TOOLS_ROOT, &format!("{krate}@{version}")]))?;
        }
    }
    let py = root.join(ZIG_VENV).join("bin/python");
    if !tool_ok(&py, &["-m", "ziglang", "version"], ZIGLANG_VERSION) {
        step(&format!("installing ziglang {ZIGLANG_VERSION} (PyPI) into {ZIG_VENV}"));
        if !py.exists() {
            run(Command::new("python3").arg("-m").arg("venv").arg(root.join(ZIG_VENV)))?;
        }
        run(Command::new(&py).args(["-m", "pip", "install", "--quiet", &format!("ziglang=={ZIGLANG_VERSION}")]))?;
    }
    let path = std::env::var("PATH").unwrap_or_default();
    Ok(PathBuf::from(format!("{}:{path}", bin.display())))
}

/// `cargo zigbuild` with the venv's zig (`python -m ziglang`) and its cache
/// under target/.
fn zigbuild_env(cmd: &mut Command) -> &mut Command {
    let root = root_dir();
    cmd.env("CARGO_ZIGBUILD_PYTHON_PATH", root.join(ZIG_VENV).join("bin/python"))
        .env("CARGO_ZIGBUILD_CACHE_DIR", root.join("target/test-tools/zig-cache"))
}

/// The unit as packaged: the binary is /usr/bin/flowlog-agent there (by
/// hand it is /usr/local/bin's), everything else as in deploy/systemd/.
pub fn packaged_unit(unit: &str) -> String {
    let body = unit.replace("/usr/local/bin/flowlog-agent", "/usr/bin/flowlog-agent");
    format!("# Installed by the flowlog-agent package (from deploy/systemd/flowlog.service).\n{body}")
}

pub fn package() -> Result<()> {
    let root = root_dir();
    let path = setup_tools()?;
    let zig_target = format!("{TARGET}.{GLIBC_FLOOR}");
    step(&format!("building flowlog-agent (release, {zig_target}: glibc {GLIBC_FLOOR} or later)"));
    run(zigbuild_env(&mut cargo())
        .current_dir(&root)
        .env("PATH", &path)
        .args(["zigbuild", "--release", "--locked", "-p", "flowlog-agent", "--target", &zig_target]))?;
    let bin = root.join("target").join(TARGET).join("release/flowlog-agent");
    if !bin.is_file() {
        bail!("{} not built", bin.display());
    }
    let out = root.join(PACKAGES_DIR);
    let staging = out.join("staging");
    fs::create_dir_all(&staging)?;
    let unit = fs::read_to_string(root.join("deploy/systemd/flowlog.service")).context("deploy/systemd/flowlog.service")?;
    fs::write(staging.join("flowlog.service"), packaged_unit(&unit))?;
    // The binary the packages hold, for the Dockerfile.
    fs::copy(&bin, out.join("flowlog-agent"))?;
    for old in fs::read_dir(&out)? {
        let p = old?.path();
        if p.extension().is_some_and(|e| e == "deb" || e == "rpm") {
            fs::remove_file(p)?;
        }
    }
    step("cargo deb");
    run(cargo()
        .current_dir(&root)
        .env("PATH", &path)
        .args(["deb", "-p", "flowlog-agent", "--no-build", "--no-strip", "--target", TARGET, "--output"])
        .arg(&out))?;
    step("cargo generate-rpm");
    run(cargo()
        .current_dir(&root)
        .env("PATH", &path)
        .args(["generate-rpm", "-p", "flowlog-agent", "--target", TARGET, "--output"])
        .arg(&out))?;
    let mut made: Vec<String> = fs::read_dir(&out)?.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned())).collect();
    made.sort();
    step(&format!("{}: {}", out.display(), made.join(" ")));
    Ok(())
}
