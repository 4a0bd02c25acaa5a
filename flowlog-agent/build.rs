//! Builds the eBPF programs (`flowlog-ebpf`) and leaves the object in
//! `$OUT_DIR/flowlog.bpf.o`, which the agent embeds. The benchmark-only
//! programs of the same crate go to `$OUT_DIR/flowlog-bench.bpf.o`, which only
//! `examples/bench.rs` embeds.
//!
//! The eBPF crate needs `-Z build-std=core` for `bpfel-unknown-none`, so a
//! toolchain with the core sources, plus `bpf-linker`. Two routes work:
//! - rustup's nightly with the `rust-src` component (most developer machines);
//! - Debian's `rustc-web`/`cargo-web` with `rust-web-src`, unlocked with
//!   `RUSTC_BOOTSTRAP=1` (machines where rustup cannot download rust-src).
//!
//! `FLOWLOG_EBPF_TOOLCHAIN=rustup|debian` forces a route; `FLOWLOG_EBPF_OBJECT`
//! skips the build and embeds a prebuilt object (packaging).

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

const FIX: &str = "Fix: run `cargo xtask setup` (installs Debian's rustc-web, cargo-web, \
rust-web-src, llvm-22-dev and bpf-linker), or install rustup nightly with rust-src \
(`rustup toolchain install nightly --component rust-src`) and `cargo install bpf-linker`; \
or set FLOWLOG_EBPF_OBJECT to a prebuilt flowlog eBPF object.";

struct Toolchain {
    name: &'static str,
    cargo: Vec<String>,
    envs: Vec<(&'static str, String)>,
}

fn main() {
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    let object = out_dir.join("flowlog.bpf.o");
    let bench_object = out_dir.join("flowlog-bench.bpf.o");
    println!("cargo:rerun-if-env-changed=FLOWLOG_EBPF_OBJECT");
    println!("cargo:rerun-if-env-changed=FLOWLOG_EBPF_TOOLCHAIN");

    if let Ok(prebuilt) = env::var("FLOWLOG_EBPF_OBJECT") {
        println!("cargo:rerun-if-changed={prebuilt}");
        std::fs::copy(&prebuilt, &object)
            .unwrap_or_else(|e| fail(&format!("cannot read FLOWLOG_EBPF_OBJECT={prebuilt}: {e}")));
        // No benchmark programs in a prebuilt setup: the benchmark says so.
        std::fs::write(&bench_object, b"")
            .unwrap_or_else(|e| fail(&format!("cannot write {}: {e}", bench_object.display())));
        return;
    }

    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let ebpf_dir = manifest.join("../flowlog-ebpf");
    for p in [
        "../flowlog-ebpf/src",
        "../flowlog-ebpf/Cargo.toml",
        "../flowlog-ebpf/Cargo.lock",
        "../flowlog-ebpf/.cargo/config.toml",
        "../flowlog-common/src",
    ] {
        println!("cargo:rerun-if-changed={}", manifest.join(p).display());
    }

    let path = search_path();
    let toolchain = pick_toolchain(&path).unwrap_or_else(|why| fail(&why));
    if find_in(&path, "bpf-linker").is_none() {
        fail("bpf-linker is not installed (not found on PATH or in $CARGO_HOME/bin).");
    }

    let target_dir = out_dir.join("ebpf-target");
    let mut cmd = Command::new(&toolchain.cargo[0]);
    cmd.args(&toolchain.cargo[1..])
        .args(["build", "--release", "--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(&ebpf_dir)
        .env("PATH", env::join_paths(&path).unwrap());
    // Settings of the outer (host) build must not leak into the BPF build.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTDOC",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTUP_TOOLCHAIN",
        "CARGO",
        "CARGO_MAKEFLAGS",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in &toolchain.envs {
        cmd.env(k, v);
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| fail(&format!("cannot run {} cargo: {e}", toolchain.name)));
    if !status.success() {
        fail(&format!(
            "building flowlog-ebpf with the {} toolchain failed ({status}); see the output above.",
            toolchain.name
        ));
    }
    for (bin, dest) in [("flowlog", &object), ("flowlog-bench", &bench_object)] {
        let built = target_dir.join("bpfel-unknown-none/release").join(bin);
        std::fs::copy(&built, dest).unwrap_or_else(|e| fail(&format!("cannot copy {}: {e}", built.display())));
    }
}

fn fail(why: &str) -> ! {
    eprintln!("\nerror: cannot build flowlog's eBPF programs: {why}\n{FIX}\n");
    panic!("cannot build flowlog's eBPF programs: {why} {FIX}");
}

/// PATH plus $CARGO_HOME/bin, where `cargo install bpf-linker` puts it.
fn search_path() -> Vec<PathBuf> {
    let mut path: Vec<PathBuf> = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect())
        .unwrap_or_default();
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    if let Some(bin) = cargo_home.map(|h| h.join("bin")) {
        if !path.contains(&bin) {
            path.push(bin);
        }
    }
    path
}

fn find_in(path: &[PathBuf], exe: &str) -> Option<PathBuf> {
    path.iter().map(|d| d.join(exe)).find(|p| p.is_file())
}

fn has_core_src(sysroot: &Path) -> bool {
    sysroot.join("lib/rustlib/src/rust/library/core/Cargo.toml").is_file()
}

fn rustup_nightly(path: &[PathBuf]) -> Result<Toolchain, String> {
    let rustup = find_in(path, "rustup").ok_or("rustup is not installed")?;
    let out = Command::new(&rustup)
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .output()
        .map_err(|e| format!("cannot run rustup: {e}"))?;
    if !out.status.success() {
        return Err("rustup has no nightly toolchain".into());
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !has_core_src(&sysroot) {
        return Err("rustup's nightly has no rust-src component".into());
    }
    Ok(Toolchain {
        name: "rustup nightly",
        cargo: vec![rustup.display().to_string(), "run".into(), "nightly".into(), "cargo".into()],
        envs: vec![],
    })
}

fn debian() -> Result<Toolchain, String> {
    let (cargo, rustc) = (Path::new("/usr/bin/cargo"), Path::new("/usr/bin/rustc"));
    if !cargo.is_file() || !rustc.is_file() {
        return Err("Debian's cargo-web/rustc-web are not installed".into());
    }
    if !has_core_src(Path::new("/usr")) {
        return Err("Debian's rust-web-src is not installed".into());
    }
    Ok(Toolchain {
        name: "Debian rustc-web",
        cargo: vec![cargo.display().to_string()],
        envs: vec![("RUSTC", rustc.display().to_string()), ("RUSTC_BOOTSTRAP", "1".into())],
    })
}

fn pick_toolchain(path: &[PathBuf]) -> Result<Toolchain, String> {
    match env::var("FLOWLOG_EBPF_TOOLCHAIN").as_deref() {
        Ok("rustup") => rustup_nightly(path),
        Ok("debian") => debian(),
        Ok(other) => Err(format!("FLOWLOG_EBPF_TOOLCHAIN={other} is not one of: rustup, debian")),
        Err(_) => rustup_nightly(path).or_else(|a| {
            debian().map_err(|b| format!("no toolchain can build for bpfel-unknown-none ({a}; {b})."))
        }),
    }
}
