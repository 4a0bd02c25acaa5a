//! `cargo xtask <task>`: set up the eBPF toolchain, run the agent, run the
//! tests, run the benchmarks.
//!
//! Every task installs what is missing first (Debian packages, bpf-linker)
//! and says what it does; when everything is there it costs a few checks.

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::Instant,
};

use anyhow::{bail, Context, Result};

mod athena;
mod cri;
mod package;
mod vm;

/// Debian packages of the toolchain route in docs (see README "Building").
const DEBIAN_TOOLCHAIN: &[&str] = &["rustc-web", "cargo-web", "rust-web-src"];
/// LLVM that bpf-linker links against: the same major as rustc-web's LLVM.
const DEBIAN_LLVM: &[&str] = &["llvm-22-dev", "libpolly-22-dev", "zlib1g-dev", "libzstd-dev"];
/// Tools the kernel tests use to build network namespaces.
/// rpm: tests/package.rs reads the .rpm; man-db: the manual page tests; tmux: tests/top.rs.
/// qemu-user-static, libc6-arm64-cross: tests/package.rs runs the arm64 binary; buildah: it builds the image.
/// containerd, runc, containernetworking-plugins (in /usr/lib/cni), umoci, gcc: the private containerd with CNI pods
/// of tests/kubernetes.rs (flowlog-testkit/src/containerd.rs); protobuf-compiler: the check of the CRI client code.
const DEBIAN_TEST_TOOLS: &[&str] = &[
    "iproute2", "ethtool", "procps", "tmux", "util-linux", "strace", "systemd", "nftables", "wireguard-tools", "rpm", "man-db", "qemu-user-static",
    "libc6-arm64-cross", "libgcc-s1-arm64-cross", "buildah", "containerd", "runc", "containernetworking-plugins", "umoci", "gcc",
    "libc6-dev", "protobuf-compiler",
];
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";
/// moto, the local AWS server the destination tests talk to (pinned: 5.2.1
/// answers CompleteMultipartUpload with a root element the SDK refuses).
/// Same venv and version as flowlog-agent/tests/common/aws.rs.
const MOTO_VERSION: &str = "5.2.5";
const MOTO_VENV: &str = "target/test-tools/moto";

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let (task, rest) = match args.split_first() {
        Some((t, r)) => (t.as_str(), r.to_vec()),
        None => ("help", vec![]),
    };
    let started = Instant::now();
    let res = match task {
        "setup" => setup(),
        // The committed eBPF objects need no eBPF toolchain to build the agent
        // (build.rs says what to install when the eBPF sources changed).
        "build" => build_release(),
        "run" => run_agent(&rest),
        "test" => setup().and_then(|_| test(&rest)),
        "bench" => setup().and_then(|_| bench(&rest)),
        "vmtest" => vm::vmtest(&rest),
        "ebpf" => setup().and_then(|_| ebpf_objects()),
        "package" => package::package(),
        "athena" => athena::athena(&rest),
        "cri" if rest.first().map(String::as_str) == Some("--check") => cri::check(),
        "cri" => cri::write(),
        _ => {
            eprintln!(
                "usage: cargo xtask <task>\n\
                 \n  setup           install the eBPF toolchain if missing (Debian packages, bpf-linker) and moto (test server)\
                 \n  build           build the agent (release; stable Rust is enough)\
                 \n  ebpf            setup, then rebuild the committed eBPF objects (flowlog-ebpf/prebuilt) from their sources\
                 \n  run [-- ARGS]   build, and run the agent as root with ARGS\
                 \n  test [ARGS]     setup, then run every test (needs root): the committed eBPF objects and CRI code rebuilt and compared,\
                 \n                  the host suites, then the root suites on the kernel matrix of both architectures (vmtest);\
                 \n                  ARGS go to `cargo test`\
                 \n  bench [ARGS]    setup, then run the benchmarks of BENCHMARKS.md (needs root, ~5 min);\
                 \n                  ARGS: --only kernel,veth,drain,ship  --rounds N  --veth-secs S\
                 \n  cri             write the agent's CRI client code (flowlog-agent/src/metadata/kubernetes/cri/vendor/runtime.v1.rs)\
                 \n                  from the vendored api.proto (needs protoc: installs protobuf-compiler); --check: only compare\
                 \n  athena          write the Athena DDLs of deploy/athena/ from the field table (flowlog-records)\
                 \n  package         the release binaries for x86_64 and aarch64 (glibc 2.28 floor, cargo-zigbuild) in target/packages/<arch>/,\
                 \n                  and their .deb and .rpm in target/packages/\
                 \n  vmtest [ARGS]   setup, then run the root-needing suites in QEMU VMs on Debian's 5.10, 6.1, 6.12 kernels (~15 min);\
                 \n                  ARGS: --arch x86_64|arm64|all  --kernel 5.10|6.1|6.12|all  --suite NAME...  --jobs N\
                 \n                  (see `cargo xtask vmtest --help`)"
            );
            return if task == "help" { ExitCode::SUCCESS } else { ExitCode::from(2) };
        }
    };
    match res {
        Ok(()) => {
            step(&format!("xtask {task}: done in {:.0?}", started.elapsed()));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xtask {task}: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn step(msg: &str) {
    eprintln!("==> {msg}");
}

fn root_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn cargo_bin_dir() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cargo"))
        .join("bin")
}

fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn apt_install(pkgs: &[&str]) -> Result<()> {
    let missing: Vec<&str> = pkgs.iter().copied().filter(|p| !dpkg_installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!("missing Debian packages {}: run as root, or `apt-get install {}` yourself", missing.join(" "), missing.join(" "));
    }
    step(&format!("installing Debian packages: {}", missing.join(" ")));
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        // Wait for another apt (unattended upgrades, a parallel setup) instead of failing.
        .args(["install", "-y", "-q", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=600"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// rustup's nightly with rust-src, if the user has it.
fn rustup_nightly_with_src() -> bool {
    let Ok(out) = Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]).env_remove("RUSTUP_TOOLCHAIN").output() else {
        return false;
    };
    out.status.success()
        && Path::new(String::from_utf8_lossy(&out.stdout).trim())
            .join("lib/rustlib/src/rust/library/core/Cargo.toml")
            .is_file()
}

fn bpf_linker_ok() -> bool {
    let exe = cargo_bin_dir().join("bpf-linker");
    let exe = if exe.is_file() { exe } else { PathBuf::from("bpf-linker") };
    Command::new(exe).arg("--version").output().is_ok_and(|o| o.status.success())
}

fn setup() -> Result<()> {
    let nightly = rustup_nightly_with_src();
    let test_tools_missing = DEBIAN_TEST_TOOLS.iter().any(|p| !dpkg_installed(p));
    if nightly {
        step("eBPF toolchain: rustup nightly with rust-src");
    } else {
        step("eBPF toolchain: Debian rustc-web + rust-web-src (RUSTC_BOOTSTRAP=1)");
        apt_install(DEBIAN_TOOLCHAIN)?;
    }
    if test_tools_missing && is_root() {
        apt_install(DEBIAN_TEST_TOOLS)?;
    }
    setup_moto()?;
    setup_lake()?;
    if bpf_linker_ok() {
        return Ok(());
    }
    let mut install = cargo();
    install.args(["install", "--locked", &format!("bpf-linker@{BPF_LINKER_VERSION}")]);
    if !nightly {
        // Link bpf-linker against Debian's LLVM 22, the LLVM of rustc-web.
        apt_install(DEBIAN_LLVM)?;
        install.args(["--no-default-features", "--features", "llvm-22"]);
        let path = env::var("PATH").unwrap_or_default();
        install.env("PATH", format!("{LLVM_BIN}:{path}"));
    }
    step(&format!("installing bpf-linker {BPF_LINKER_VERSION} (about a minute)"));
    run(&mut install)
}

/// A venv with moto[server] for the destination tests (PyPI).
fn setup_moto() -> Result<()> {
    let venv = root_dir().join(MOTO_VENV);
    let py = venv.join("bin/python");
    let check = format!("import moto, moto.server, flask; assert moto.__version__ == '{MOTO_VERSION}'");
    if Command::new(&py).args(["-c", &check]).stderr(std::process::Stdio::null()).status().is_ok_and(|s| s.success()) {
        return Ok(());
    }
    step(&format!("installing moto[server]=={MOTO_VERSION} (local AWS server for the destination tests) into {}", venv.display()));
    if !py.exists() {
        if Command::new("python3").arg("--version").output().is_err() {
            apt_install(&["python3", "python3-venv", "python3-pip"])?;
        }
        if run(Command::new("python3").arg("-m").arg("venv").arg(&venv)).is_err() {
            // Debian's python3 without ensurepip.
            apt_install(&["python3-venv"])?;
            run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
        }
    }
    run(Command::new(&py).args(["-m", "pip", "install", "--quiet", &format!("moto[server]=={MOTO_VERSION}")]))
}

/// A venv with DuckDB (+ httpfs) and pyarrow for the data-lake tests
/// (flowlog-agent/tests/lake.rs; same pins as flowlog_testkit::aws::LAKE_PACKAGES).
fn setup_lake() -> Result<()> {
    let venv = root_dir().join("target/test-tools/lake");
    let py = venv.join("bin/python");
    let pkgs = ["duckdb==1.5.5", "duckdb-extension-httpfs==1.5.5", "pyarrow==26.0.1"];
    let check = "import duckdb, duckdb_extension_httpfs, pyarrow; assert duckdb.__version__ == '1.5.5' and pyarrow.__version__ == '26.0.1'";
    if Command::new(&py).args(["-c", check]).stderr(std::process::Stdio::null()).status().is_ok_and(|s| s.success()) {
        return Ok(());
    }
    step(&format!("installing {} (data-lake tests) into {}", pkgs.join(" "), venv.display()));
    if !py.exists() {
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    }
    run(Command::new(&py).args(["-m", "pip", "install", "--quiet"]).args(pkgs))
}

fn build_release() -> Result<()> {
    step("building flowlog-agent (release; the eBPF programs are built by its build.rs)");
    run(cargo().current_dir(root_dir()).args(["build", "--release", "-p", "flowlog-agent"]))
}

fn run_agent(args: &[String]) -> Result<()> {
    build_release()?;
    let args: Vec<&String> = args.iter().skip_while(|a| *a == "--").collect();
    let exe = root_dir().join("target/release/flowlog-agent");
    step(&format!("running {} {}", exe.display(), args.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ")));
    if !is_root() {
        eprintln!("note: not root; the agent will say which capabilities it lacks");
    }
    run(Command::new(exe).args(args))
}

/// `cargo xtask ebpf`: a fresh build of the eBPF crate stored as the
/// committed objects, with the hash of their sources (flowlog-agent/build.rs).
fn ebpf_objects() -> Result<()> {
    step("building the eBPF programs into flowlog-ebpf/prebuilt (commit them with the sources)");
    run(cargo().current_dir(root_dir()).args(["build", "-p", "flowlog-agent"]).env("FLOWLOG_EBPF_PREBUILT", "write"))
}

fn test(args: &[String]) -> Result<()> {
    if !is_root() {
        bail!("the kernel tests load eBPF programs and create network namespaces: run `cargo xtask test` as root");
    }
    // Every build of this run (host suites and the VM suites' binaries)
    // rebuilds the eBPF objects and fails unless they are the committed
    // bytes: one setting for all, so nothing is built twice.
    std::env::set_var("FLOWLOG_EBPF_PREBUILT", "check");
    // The committed CRI client code, like the eBPF objects: a fresh generation.
    let cri = cri::check();
    // The packages first: tests/package.rs installs the deb and reads the
    // rpm, and the matrix runs the packaged binary of each architecture on
    // every kernel.
    let packages = if args.is_empty() {
        step("building the packages (cargo xtask package): tested on this machine and in the kernel matrix");
        package::package()
    } else {
        Ok(())
    };
    step("running the host suites (unit, eBPF programs via BPF_PROG_TEST_RUN, end-to-end in network namespaces) on this kernel");
    let host = run(cargo()
        .current_dir(root_dir())
        .args(["test", "--workspace", "--no-fail-fast"])
        .args(args)
        .env("FLOWLOG_REQUIRE_PACKAGES", if args.is_empty() && packages.is_ok() { "1" } else { "0" })
        .env("FLOWLOG_REQUIRE_ROOT_TESTS", "1"));
    // The kernel matrix even when a host suite failed: both results count.
    let matrix = if args.is_empty() {
        let mut vm_args = ["--arch", "all", "--kernel", "all"].map(String::from).to_vec();
        if packages.is_ok() {
            vm_args.push("--packaged".into());
        }
        step(&format!("running the root suites on the kernel matrix (cargo xtask vmtest {})", vm_args.join(" ")));
        vm::vmtest(&vm_args)
    } else {
        step("test ARGS given: the kernel matrix is skipped (run `cargo xtask vmtest`)");
        Ok(())
    };
    cri.and(packages.context("cargo xtask package")).and(host).and(matrix)
}

fn bench(args: &[String]) -> Result<()> {
    if !is_root() {
        bail!("the benchmarks load eBPF programs and create network namespaces: run `cargo xtask bench` as root");
    }
    step("running the benchmarks (flowlog-agent/examples/bench; results on stdout, see BENCHMARKS.md)");
    let args: Vec<&String> = args.iter().skip_while(|a| *a == "--").collect();
    run(cargo()
        .current_dir(root_dir())
        .args(["run", "--quiet", "--release", "-p", "flowlog-agent", "--example", "bench", "--"])
        .args(args))
}
