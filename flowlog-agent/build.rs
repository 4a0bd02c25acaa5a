//! Provides the eBPF programs (`flowlog-ebpf`) as `$OUT_DIR/flowlog.bpf.o`
//! (hash flow table) and `$OUT_DIR/flowlog-slots.bpf.o` (slot flow table, the
//! crate's `slots` feature), which the agent embeds, and the benchmark-only programs of the same crate
//! as `$OUT_DIR/flowlog-bench.bpf.o` (benchmarks and e2e tests embed it).
//!
//! The objects are committed in `flowlog-ebpf/prebuilt/` with a SHA-256 of
//! the sources they were built from (`inputs.sha256`). When the sources are
//! unchanged the committed objects are used, so `cargo build` needs nothing
//! but stable Rust. When they changed (or `FLOWLOG_EBPF_BUILD=1`), the eBPF
//! crate is built here, which needs `-Z build-std=core` for
//! `bpfel-unknown-none` and `bpf-linker`. Two toolchain routes work:
//! - rustup's nightly with the `rust-src` component (most developer machines);
//! - Debian's `rustc-web`/`cargo-web` with `rust-web-src`, unlocked with
//!   `RUSTC_BOOTSTRAP=1` (machines where rustup cannot download rust-src).
//!
//! `FLOWLOG_EBPF_TOOLCHAIN=rustup|debian` forces a route; `FLOWLOG_EBPF_OBJECT`
//! embeds another prebuilt object (packaging). `FLOWLOG_EBPF_PREBUILT=write`
//! (`cargo xtask ebpf`) stores a fresh build in `prebuilt/`;
//! `FLOWLOG_EBPF_PREBUILT=check` fails unless a fresh build is byte for byte
//! the committed one (CI).

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
    let slots_object = out_dir.join("flowlog-slots.bpf.o");
    let bench_object = out_dir.join("flowlog-bench.bpf.o");
    println!("cargo:rerun-if-env-changed=FLOWLOG_EBPF_OBJECT");
    println!("cargo:rerun-if-env-changed=FLOWLOG_EBPF_TOOLCHAIN");

    if let Ok(prebuilt) = env::var("FLOWLOG_EBPF_OBJECT") {
        println!("cargo:rerun-if-changed={prebuilt}");
        std::fs::copy(&prebuilt, &object)
            .unwrap_or_else(|e| fail(&format!("cannot read FLOWLOG_EBPF_OBJECT={prebuilt}: {e}")));
        // No benchmark programs in a prebuilt setup: the benchmark says so.
        // No slot-table object either: the agent uses the hash table.
        for o in [&bench_object, &slots_object] {
            std::fs::write(o, b"").unwrap_or_else(|e| fail(&format!("cannot write {}: {e}", o.display())));
        }
        return;
    }

    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let ebpf_dir = manifest.join("../flowlog-ebpf");
    let prebuilt_dir = ebpf_dir.join("prebuilt");
    println!("cargo:rerun-if-env-changed=FLOWLOG_EBPF_BUILD");
    println!("cargo:rerun-if-env-changed=FLOWLOG_EBPF_PREBUILT");
    for p in INPUTS {
        println!("cargo:rerun-if-changed={}", manifest.join("..").join(p).display());
    }
    println!("cargo:rerun-if-changed={}", prebuilt_dir.display());
    let root = manifest.join("..");
    let hash = inputs_hash(&root).unwrap_or_else(|e| fail(&format!("cannot read the eBPF sources: {e}")));
    let committed = std::fs::read_to_string(prebuilt_dir.join("inputs.sha256")).unwrap_or_default();
    let mode = env::var("FLOWLOG_EBPF_PREBUILT").unwrap_or_default();
    let force = env::var("FLOWLOG_EBPF_BUILD").is_ok_and(|v| v == "1") || !mode.is_empty();
    if !force && committed.trim() == hash {
        for (name, dest) in OBJECTS.iter().copied().zip([&object, &slots_object, &bench_object]) {
            std::fs::copy(prebuilt_dir.join(name), dest)
                .unwrap_or_else(|e| fail(&format!("cannot copy the committed {name}: {e}")));
        }
        return;
    }
    if !force {
        println!(
            "cargo:warning=the eBPF sources differ from those of the committed objects (flowlog-ebpf/prebuilt): building them; \
             `cargo xtask ebpf` stores the new objects"
        );
    }

    let path = search_path();
    let toolchain = pick_toolchain(&path).unwrap_or_else(|why| fail(&why));
    if find_in(&path, "bpf-linker").is_none() {
        fail("bpf-linker is not installed (not found on PATH or in $CARGO_HOME/bin).");
    }

    let target_dir = out_dir.join("ebpf-target");
    // Reproducible objects: no checkout or home directory paths in the debug
    // info (BTF line info names source files). RUSTFLAGS replaces the target
    // rustflags of flowlog-ebpf/.cargo/config.toml, so they are repeated here.
    let mut flags = vec!["-Ctarget-cpu=v3".to_string()];
    if let Ok(r) = root.canonicalize() {
        flags.push(format!("--remap-path-prefix={}=/flowlog", r.display()));
    }
    if let Some(home) = env::var_os("CARGO_HOME").map(PathBuf::from).or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo"))) {
        flags.push(format!("--remap-path-prefix={}=/cargo", home.display()));
    }
    // The hash-table object (and the benchmark programs), then the
    // slot-table object: the same crate with the `slots` feature.
    for (features, outputs) in [(None, vec![("flowlog", &object), ("flowlog-bench", &bench_object)]), (Some("slots"), vec![("flowlog", &slots_object)])] {
        let mut cmd = Command::new(&toolchain.cargo[0]);
        cmd.args(&toolchain.cargo[1..])
            .args(["build", "--release", "--target", "bpfel-unknown-none", "-Z", "build-std=core"])
            .arg("--target-dir")
            .arg(&target_dir)
            .current_dir(&ebpf_dir)
            .env("PATH", env::join_paths(&path).unwrap());
        if let Some(f) = features {
            cmd.args(["--features", f]);
        }
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
        cmd.env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f"));
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
        for (bin, dest) in outputs {
            let built = target_dir.join("bpfel-unknown-none/release").join(bin);
            std::fs::copy(&built, dest).unwrap_or_else(|e| fail(&format!("cannot copy {}: {e}", built.display())));
        }
    }
    match mode.as_str() {
        "write" => {
            std::fs::create_dir_all(&prebuilt_dir).unwrap_or_else(|e| fail(&format!("{}: {e}", prebuilt_dir.display())));
            for (name, src) in OBJECTS.iter().copied().zip([&object, &slots_object, &bench_object]) {
                std::fs::copy(src, prebuilt_dir.join(name)).unwrap_or_else(|e| fail(&format!("cannot store {name}: {e}")));
            }
            std::fs::write(prebuilt_dir.join("inputs.sha256"), format!("{hash}\n"))
                .unwrap_or_else(|e| fail(&format!("cannot store inputs.sha256: {e}")));
            std::fs::write(prebuilt_dir.join("toolchain.txt"), toolchain_versions(&toolchain, &path))
                .unwrap_or_else(|e| fail(&format!("cannot store toolchain.txt: {e}")));
        }
        "check" => {
            if committed.trim() != hash {
                fail(&format!(
                    "flowlog-ebpf/prebuilt/inputs.sha256 is {:?}, the sources hash to {hash}: run `cargo xtask ebpf` and commit prebuilt/",
                    committed.trim()
                ));
            }
            for (name, fresh) in OBJECTS.iter().copied().zip([&object, &slots_object, &bench_object]) {
                let a = std::fs::read(prebuilt_dir.join(name)).unwrap_or_default();
                let b = std::fs::read(fresh).unwrap_or_default();
                if a != b {
                    fail(&format!(
                        "the committed flowlog-ebpf/prebuilt/{name} ({} bytes) differs from a fresh build ({} bytes) of the same sources \
                         with {}: run `cargo xtask ebpf` and commit prebuilt/ (toolchain.txt says what built the committed one)",
                        a.len(),
                        b.len(),
                        toolchain.name
                    ));
                }
            }
        }
        _ => {}
    }
}

/// The committed objects: the hash-table programs, the slot-table programs
/// (`--features slots`), the benchmark programs.
const OBJECTS: [&str; 3] = ["flowlog.bpf.o", "flowlog-slots.bpf.o", "flowlog-bench.bpf.o"];

/// What the committed objects are built from, relative to the workspace
/// root. A file added elsewhere that the eBPF crate reads must be listed.
const INPUTS: [&str; 6] = [
    "flowlog-ebpf/src",
    "flowlog-ebpf/Cargo.toml",
    "flowlog-ebpf/Cargo.lock",
    "flowlog-ebpf/.cargo/config.toml",
    "flowlog-common/src",
    "flowlog-common/Cargo.toml",
];

/// SHA-256 over every input file: its path, its length, its bytes, in path
/// order, so a renamed or moved file changes it too.
fn inputs_hash(root: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        let full = root.join(rel);
        if full.is_dir() {
            for e in std::fs::read_dir(&full)? {
                walk(root, &rel.join(e?.file_name()), out)?;
            }
        } else {
            out.push(rel.to_path_buf());
        }
        Ok(())
    }
    let mut files = Vec::new();
    for p in INPUTS {
        walk(root, Path::new(p), &mut files)?;
    }
    files.sort();
    let mut h = Sha256::new();
    for f in &files {
        let bytes = std::fs::read(root.join(f))?;
        h.update(f.to_string_lossy().as_bytes());
        h.update([0]);
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn toolchain_versions(t: &Toolchain, path: &[PathBuf]) -> String {
    let version = |cmd: &mut Command| {
        cmd.output().ok().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_else(|| "unknown".into())
    };
    let mut rustc = Command::new(&t.cargo[0]);
    rustc.args(&t.cargo[1..]).arg("--version").envs(t.envs.iter().map(|(k, v)| (*k, v.as_str())));
    let linker = find_in(path, "bpf-linker").map_or("unknown".into(), |l| version(Command::new(l).arg("--version")));
    format!("route: {}\ncargo: {}\nbpf-linker: {}\n", t.name, version(&mut rustc), linker)
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
