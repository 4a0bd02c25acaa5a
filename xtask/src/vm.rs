//! `cargo xtask vmtest`: the root-needing test suites on the kernels operators
//! run (Debian's 5.10, 6.1 and 6.12), each in a QEMU VM booted by virtme-ng.
//! x86-64 (the default): over the host's own root filesystem, so the
//! host-built test binaries run unchanged. arm64 (`--arch arm64`, [`arm64`]):
//! Debian's arm64 kernels over an arm64 root filesystem, with cross-built
//! test binaries. See ../shared/reference/kernels.md and arm64.md for the
//! recipes and pitfalls.
//!
//! Everything it needs is installed on first use and cached under target/:
//!   target/test-tools/virtme-ng/   venv with virtme-ng (PyPI)
//!   target/vm/apt/<dist>[-arm64]/  private apt lists, for the kernel lookup only
//!   target/vm/kernels/[arm64-]<series>/  unpacked kernel package + kernel.txt
//!   target/vm/runs/<series>/       the last x86-64 run's guest output (--rwdir)
//!   target/vm/arm64/               the arm64 root filesystem and its runs
//! A second run does no network access.

mod arm64;

use std::{
    collections::BTreeMap,
    env, fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::{apt_install, cargo, dpkg_installed, is_root, root_dir, run, step};

/// Debian packages on the host: QEMU, depmod (kmod) and virtme-ng's busybox.
const HOST_PACKAGES: &[&str] = &["qemu-system-x86", "kmod", "busybox-static"];

/// The architecture of the guests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arch {
    X86_64,
    Arm64,
}

impl Arch {
    const ALL: [Arch; 2] = [Arch::X86_64, Arch::Arm64];

    fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Arm64 => "arm64",
        }
    }

    /// Debian's name, in kernel package names.
    fn deb(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// What `cargo xtask package` leaves for the packages (and the Dockerfile).
    fn packaged_agent(self) -> &'static str {
        match self {
            Arch::X86_64 => "target/packages/x86_64/flowlog-agent",
            Arch::Arm64 => arm64::PACKAGED_AGENT,
        }
    }
}
const VNG_VERSION: &str = "1.42";
const VNG_VENV: &str = "target/test-tools/virtme-ng";
const GUEST_SCRIPT: &str = "xtask/vm/guest.sh";

/// Integration test targets of flowlog-agent that need root and a kernel
/// (restart and hot-plug tests live in e2e). Add new ones here.
const SUITES: &[&str] = &["kernel", "e2e", "reject", "devices"];

/// What each kernel runs by default (`--full`: every test of every suite).
/// Under software emulation a suite costs minutes, so each kernel runs the
/// tests of the properties that depend on the kernel: the BPF programs on
/// crafted frames (all of `kernel`), attach and detach as that kernel does
/// them (netlink filters before 6.6, TCX from 6.6): exact counts with both
/// ingress hooks, handover with `keep`, `kill -9` and `detach`, other
/// loaders' programs, hot-plug; REJECT where drop reasons exist (5.10 only
/// reports the skips); the interface kinds whose modules the host lacks
/// (on 6.1). Everything else is kernel-independent and runs on the host.
fn default_filters(img: &KernelImage, suite: &str) -> Option<&'static [&'static str]> {
    if img.arch == Arch::Arm64 {
        return arm64_filters(img.series, img.cpu.as_deref().unwrap_or(arm64::DEFAULT_CPU), suite);
    }
    let series = img.series;
    const ALL: &[&str] = &[];
    const E2E: &[&str] = &[
        "udp_tcp_icmp_both_directions_are_exact",
        "restart_with_keep_hands_over_exactly",
        "kill_9_leaves_one_program_per_hook",
        "programs_attached_before_the_agent",
        "hot_plugged_interfaces_are_attached_once",
        "concurrent_senders_on_every_cpu_insert_the_same_new_flows_exactly",
    ];
    const DEVICES: &[&str] = &["vlan", "bond", "dummy", "wireguard"];
    // e2e's exactness and restart tests again, with the packaged binary.
    const PACKAGED: &[&str] = &["udp_tcp_icmp_both_directions_are_exact", "restart_with_keep_hands_over_exactly"];
    match (series, suite) {
        (_, "kernel") | (_, "reject") => Some(ALL),
        (_, "e2e") => Some(E2E),
        (_, PACKAGED_SUITE) => Some(PACKAGED),
        ("6.1", "devices") => Some(DEVICES),
        _ => None,
    }
}

/// The arm64 plan. Emulating arm64 costs more than x86-64, and the host
/// suites already ran every test once: each kernel runs the BPF programs on
/// crafted frames (all of `kernel`: the arm64 JIT's code) and REJECT, and
/// the e2e properties are spread over the kernels so that each runs once
/// with the netlink filters (5.10, 6.1) and once with TCX (6.12): exact
/// counts everywhere, the `keep` handover and `kill -9` on 5.10 and 6.12,
/// every CPU inserting the same new flows on 6.1 (slot table) and 6.12,
/// programs interpreted with the JIT off on 6.1 (the state of arm64
/// 5.12-5.17, where the JIT cannot translate the atomics). The packaged
/// binary's exactness on each kernel. With `cortex-a57` (no LSE atomics:
/// the JIT's other atomic sequences) the BPF programs alone.
fn arm64_filters(series: &str, cpu: &str, suite: &str) -> Option<&'static [&'static str]> {
    const ALL: &[&str] = &[];
    const EXACT: &str = "udp_tcp_icmp_both_directions_are_exact";
    const E2E_510: &[&str] = &[EXACT, "restart_with_keep_hands_over_exactly", "kill_9_leaves_one_program_per_hook"];
    const E2E_61: &[&str] = &[
        EXACT,
        "concurrent_senders_on_every_cpu_insert_the_same_new_flows_exactly",
        "programs_the_kernel_interprets_are_reported_and_counted_exactly",
    ];
    const E2E_612: &[&str] = &[
        EXACT,
        "restart_with_keep_hands_over_exactly",
        "kill_9_leaves_one_program_per_hook",
        "concurrent_senders_on_every_cpu_insert_the_same_new_flows_exactly",
    ];
    const PACKAGED: &[&str] = &["udp_tcp_icmp_both_directions_are_exact_with_xdp_ingress"];
    if cpu != arm64::DEFAULT_CPU {
        return (suite == "kernel").then_some(ALL);
    }
    match (series, suite) {
        (_, "kernel") | (_, "reject") => Some(ALL),
        ("5.10", "e2e") => Some(E2E_510),
        ("6.1", "e2e") => Some(E2E_61),
        ("6.12", "e2e") => Some(E2E_612),
        (_, PACKAGED_SUITE) => Some(PACKAGED),
        _ => None,
    }
}

/// The suite `--packaged` adds: e2e's test binary run with
/// FLOWLOG_TEST_AGENT_BIN set to the packages' binary.
const PACKAGED_SUITE: &str = "packaged";

const VM_MEMORY: &str = "3G";
/// What the arm64 recipe ran with; four arm64 VMs at once stay under 8G.
const VM_MEMORY_ARM64: &str = "2G";

fn vm_memory(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => VM_MEMORY,
        Arch::Arm64 => VM_MEMORY_ARM64,
    }
}
const VM_CPUS: &str = "2";
/// Default per-suite limit inside the guest. Software emulation (TCG) makes
/// the slowest suite, e2e, take several minutes.
const SUITE_TIMEOUT: Duration = Duration::from_secs(600);
/// Boot plus guest setup (modprobe) under TCG takes 15-60 s; 4 minutes is
/// generous, and covers a kernel that hangs before running the script.
const BOOT_ALLOWANCE: Duration = Duration::from_secs(240);
/// Lines of each failure shown in the report (the rest is in the run dir).
const FIRST_LINES: usize = 8;
/// After the guest wrote `done`, the VM powers off within seconds.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(60);

/// A Debian release to fetch kernel packages from, through a private sources
/// file and lists dir: the host's apt configuration is neither needed nor
/// touched, and a kernel from another release (5.10) needs no host change.
struct Dist {
    name: &'static str,
    /// Alternative sources.list contents, tried in order. Releases move to
    /// archive.debian.org when they end; that one's Release files are expired.
    mirrors: &'static [Mirror],
}

struct Mirror {
    sources: &'static str,
    /// archive.debian.org's Release files have an expired Valid-Until.
    ignore_valid_until: bool,
}

const BOOKWORM: Dist = Dist {
    name: "bookworm",
    mirrors: &[Mirror {
        sources: "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main\n\
                  deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-updates main\n\
                  deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main\n",
        ignore_valid_until: false,
    }],
};

const BULLSEYE: Dist = Dist {
    name: "bullseye",
    mirrors: &[
        Mirror {
            sources: "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bullseye main\n\
                      deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bullseye-security main\n",
            ignore_valid_until: false,
        },
        Mirror {
            sources: "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://archive.debian.org/debian bullseye main\n\
                      deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://archive.debian.org/debian-security bullseye-security main\n",
            ignore_valid_until: true,
        },
    ],
};

/// A kernel of the matrix: the newest `linux-image-<series>.*-amd64-unsigned`
/// of `dist` (generic flavour: -cloud has no 9p, which virtme-ng needs).
struct KernelSpec {
    series: &'static str,
    dist: &'static Dist,
}

const KERNELS: &[KernelSpec] = &[
    KernelSpec { series: "5.10", dist: &BULLSEYE },
    KernelSpec { series: "6.1", dist: &BOOKWORM },
    KernelSpec { series: "6.12", dist: &BOOKWORM },
];

const USAGE: &str = "usage: cargo xtask vmtest [--arch x86_64|arm64|all] [--kernel 5.10|6.1|6.12|all]... [--suite NAME...] [--jobs N]\n\
    \x20                         [--suite-timeout SECS] [--threads N] [--refresh-kernels] [--cpu NAME]\n\
    \n  --arch A           guest architecture: x86_64 (default), arm64 (Debian's arm64 kernels, -cpu neoverse-n1,\
    \n                     and 6.12 once more with -cpu cortex-a57), or all (one after the other)\
    \n  --cpu NAME         arm64: the QEMU CPU of every arm64 VM instead (e.g. cortex-a57)\
    \n  --kernel K         kernel series to boot (repeatable or comma-separated; default all)\
    \n  --suite NAME...    flowlog-agent integration tests to run (default: kernel e2e reject devices)\
    \n  --jobs N           VMs at once (default: all selected kernels)\
    \n  --suite-timeout S  limit per suite inside the VM (default 600)\
    \n  --threads N        --test-threads of each suite (default 1)\
    \n  --refresh-kernels  look for newer kernel packages instead of using the cache\
    \n  --full             every test of every suite on every kernel (default: the plan of `default_filters`)\
    \n  --packaged         also run e2e's exactness tests with the packages' release binary (target/packages/<arch>/flowlog-agent,\
    \n                     from `cargo xtask package`) as suite \"packaged\" (`--suite packaged`: that suite alone)";

struct Opts {
    help: bool,
    arches: Vec<Arch>,
    /// `--cpu`: the arm64 VMs' QEMU CPU instead of the plan's.
    cpu: Option<String>,
    kernels: Vec<&'static KernelSpec>,
    suites: Vec<String>,
    /// `--jobs`; None: the architecture's default.
    jobs: Option<usize>,
    suite_timeout: Duration,
    threads: usize,
    refresh: bool,
    /// Every test of every suite on every kernel, not the default plan.
    full: bool,
}

fn parse_args(args: &[String]) -> Result<Opts> {
    let mut arches: Vec<Arch> = Vec::new();
    let mut cpu = None;
    let mut kernels: Vec<&'static KernelSpec> = Vec::new();
    let mut suites: Vec<String> = Vec::new();
    let mut jobs = None;
    let mut suite_timeout = SUITE_TIMEOUT;
    let mut threads = 1;
    let mut refresh = false;
    let mut full = false;
    let mut packaged = false;
    let mut it = args.iter().map(String::as_str).peekable();
    fn value<'a>(flag: &str, v: Option<&'a str>) -> Result<&'a str> {
        v.with_context(|| format!("{flag} needs a value\n{USAGE}"))
    }
    fn number(flag: &str, v: &str) -> Result<usize> {
        match v.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => bail!("{flag} wants a positive number, not {v:?}"),
        }
    }
    while let Some(arg) = it.next() {
        // Accept both `--flag value` and `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v)),
            _ => (arg, None),
        };
        match flag {
            "--arch" => match value(flag, inline.or_else(|| it.next()))? {
                "x86_64" | "x86-64" | "amd64" => arches.push(Arch::X86_64),
                "arm64" | "aarch64" => arches.push(Arch::Arm64),
                "all" => arches.extend(Arch::ALL),
                other => bail!("unknown architecture {other:?}: x86_64, arm64 or all"),
            },
            "--cpu" => {
                let c = value(flag, inline.or_else(|| it.next()))?;
                if c.is_empty() || !c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '.') {
                    bail!("--cpu wants a QEMU CPU model name (e.g. cortex-a57), not {c:?}");
                }
                cpu = Some(c.to_string());
            }
            "--kernel" => {
                for k in value(flag, inline.or_else(|| it.next()))?.split(',').filter(|k| !k.is_empty()) {
                    if k == "all" {
                        kernels.extend(KERNELS.iter());
                    } else if let Some(spec) = KERNELS.iter().find(|s| s.series == k) {
                        kernels.push(spec);
                    } else {
                        let known: Vec<&str> = KERNELS.iter().map(|s| s.series).collect();
                        bail!("unknown kernel {k:?}: choose from {} or all (the host kernel is covered by `cargo xtask test`)", known.join(", "));
                    }
                }
            }
            "--suite" => {
                let mut names: Vec<&str> = inline.into_iter().collect();
                // NAME... : every following word up to the next flag.
                while let Some(n) = it.next_if(|a| !a.starts_with("--")) {
                    names.push(n);
                }
                if names.is_empty() {
                    bail!("--suite needs at least one name\n{USAGE}");
                }
                suites.extend(names.iter().flat_map(|n| n.split(',')).filter(|n| !n.is_empty()).map(String::from));
            }
            "--jobs" => jobs = Some(number(flag, value(flag, inline.or_else(|| it.next()))?)?),
            "--threads" => threads = number(flag, value(flag, inline.or_else(|| it.next()))?)?,
            "--suite-timeout" => {
                suite_timeout = Duration::from_secs(number(flag, value(flag, inline.or_else(|| it.next()))?)? as u64)
            }
            "--refresh-kernels" => refresh = true,
            "--full" => full = true,
            "--packaged" => packaged = true,
            "-h" | "--help" => {
                return Ok(Opts { help: true, arches, cpu, kernels, suites, jobs, suite_timeout, threads, refresh, full })
            }
            _ => bail!("unknown argument {arg:?}\n{USAGE}"),
        }
    }
    if arches.is_empty() {
        arches.push(Arch::X86_64);
    }
    arches.sort_by_key(|a| Arch::ALL.iter().position(|b| b == a));
    arches.dedup();
    if cpu.is_some() && !arches.contains(&Arch::Arm64) {
        bail!("--cpu applies to the arm64 VMs: add --arch arm64");
    }
    if kernels.is_empty() {
        kernels.extend(KERNELS.iter());
    }
    // Keep the matrix order and drop repeats (`--kernel all --kernel 6.1`).
    kernels.sort_by_key(|k| KERNELS.iter().position(|s| s.series == k.series));
    kernels.dedup_by_key(|k| k.series);
    if suites.is_empty() {
        suites = SUITES.iter().map(|s| s.to_string()).collect();
    }
    let mut unique: Vec<String> = Vec::new();
    for s in suites {
        if !unique.contains(&s) {
            unique.push(s);
        }
    }
    // `--suite packaged` is `--packaged`.
    if unique.iter().any(|s| s == PACKAGED_SUITE) {
        packaged = true;
        unique.retain(|s| s != PACKAGED_SUITE);
    }
    let mut suites = unique;
    // Fail before the long build, not after it.
    let tests = root_dir().join("flowlog-agent/tests");
    for s in &suites {
        let valid_name = s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid_name || !(tests.join(format!("{s}.rs")).is_file() || tests.join(s).join("main.rs").is_file()) {
            bail!("unknown suite {s:?}: not an integration test of flowlog-agent (flowlog-agent/tests/{s}.rs); the usual ones are {}", SUITES.join(", "));
        }
    }
    if packaged {
        for a in &arches {
            let bin = a.packaged_agent();
            if !root_dir().join(bin).is_file() {
                bail!("--packaged: no {bin}; run `cargo xtask package` first");
            }
        }
        suites.push(PACKAGED_SUITE.to_string());
    }
    Ok(Opts { help: false, arches, cpu, kernels, suites, jobs, suite_timeout, threads, refresh, full })
}

pub fn vmtest(args: &[String]) -> Result<()> {
    // Arguments first: a typo should not wait for the setup.
    let opts = parse_args(args)?;
    if opts.help {
        println!("{USAGE}");
        return Ok(());
    }
    if !is_root() {
        bail!("vmtest installs packages and runs QEMU with the host root shared: run `cargo xtask vmtest` as root");
    }
    let root = root_dir();
    if root.to_str().is_none_or(|s| s.contains(char::is_whitespace)) {
        // The guest command line goes through virtme-ng's kernel command line.
        bail!("vmtest needs a repository path without spaces or non-UTF-8 bytes, not {}", root.display());
    }

    // Two runs at once would clear each other's target/vm/{bin,runs}.
    let _lock = lock_vm_dir(&root)?;
    // The eBPF toolchain, for the host build of the tests.
    super::setup()?;
    let vng_bin = ensure_virtme_ng(&root)?;
    // One architecture after the other: each saturates the host's CPUs.
    let mut failed = Vec::new();
    for &arch in &opts.arches {
        if let Err(e) = run_arch(&root, &vng_bin, arch, &opts) {
            eprintln!("vmtest {}: {e:#}", arch.name());
            failed.push(format!("{}: {e:#}", arch.name()));
        }
    }
    if !failed.is_empty() {
        bail!("{}", failed.join("\n"));
    }
    Ok(())
}

/// The kernels, build and VMs of one architecture, and their report.
fn run_arch(root: &Path, vng_bin: &Path, arch: Arch, opts: &Opts) -> Result<()> {
    let started = Instant::now();
    let mut images = Vec::new();
    match arch {
        Arch::X86_64 => ensure_host_packages()?,
        Arch::Arm64 => arm64::ensure_host()?,
    }
    for spec in &opts.kernels {
        let img = ensure_kernel(root, arch, spec, opts.refresh)?;
        if arch == Arch::Arm64 {
            // The plan's second CPU: 6.12 again without LSE atomics.
            let extra = opts.cpu.is_none() && spec.series == "6.12";
            let cpu = opts.cpu.clone().unwrap_or_else(|| arm64::DEFAULT_CPU.into());
            if extra {
                images.push(img.with_cpu(arm64::OLD_CPU));
            }
            images.insert(images.len() - usize::from(extra), img.with_cpu(&cpu));
        } else {
            images.push(img);
        }
    }
    let build = match arch {
        Arch::X86_64 => build_tests(root, &opts.suites)?,
        Arch::Arm64 => {
            let rootfs = arm64::ensure_rootfs(root)?;
            for img in &images {
                arm64::link_modules(&rootfs, &img.kernel_root(), &img.release)?;
            }
            // Only what the plan runs: each release test binary costs minutes.
            let planned: Vec<String> =
                opts.suites.iter().filter(|s| opts.full || images.iter().any(|img| default_filters(img, s).is_some())).cloned().collect();
            arm64::build_tests(root, &rootfs, &planned)?
        }
    };
    step(&format!("vmtest {}: setup and build took {:.0?}", arch.name(), started.elapsed()));

    // All at once: the guests mostly wait (agent windows, sleeps). The four
    // arm64 VMs at once took 336 s in all on 2 shared cores.
    let jobs = opts.jobs.unwrap_or(images.len()).min(images.len()).max(1);
    let started = Instant::now();
    step(&format!(
        "booting {} {} VM(s), {} at once ({} vCPUs, {} each, software emulation): suites {}",
        images.len(),
        arch.name(),
        jobs,
        VM_CPUS,
        vm_memory(arch),
        opts.suites.join(" ")
    ));
    let runs = run_vms(root, vng_bin, &images, &build, opts, jobs);
    let total = started.elapsed();

    let mut failed = Vec::new();
    let mut rows = Vec::new();
    for (img, vm) in images.iter().zip(&runs) {
        report_vm(img, vm, &opts.suites, &mut failed, &mut rows);
    }
    print_summary(&rows, &runs, &images, total);
    if !failed.is_empty() {
        bail!("{} of {} suite runs failed: {}", failed.len(), rows.len(), failed.join(", "));
    }
    Ok(())
}

/// An exclusive flock on target/vm/lock, held until the returned file drops
/// (the kernel releases it if we die).
fn lock_vm_dir(root: &Path) -> Result<fs::File> {
    use std::os::fd::AsRawFd;
    let dir = root.join("target/vm");
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("lock");
    let file = fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock(2) on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        step(&format!("vmtest: another vmtest holds {}; waiting for it to finish", path.display()));
        // SAFETY: as above.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            bail!("cannot lock {}: {}", path.display(), std::io::Error::last_os_error());
        }
    }
    Ok(file)
}

// ---------------------------------------------------------------- installs

fn ensure_host_packages() -> Result<()> {
    if HOST_PACKAGES.iter().all(|p| dpkg_installed(p)) {
        step(&format!("vmtest: {} installed", HOST_PACKAGES.join(", ")));
        return Ok(());
    }
    // apt_install runs `apt-get update` first, and only for what is missing.
    apt_install(HOST_PACKAGES)
}

/// virtme-ng in its own venv; returns the venv's bin dir (vng calls
/// virtme-run, so the whole dir goes on PATH).
fn ensure_virtme_ng(root: &Path) -> Result<PathBuf> {
    let venv = root.join(VNG_VENV);
    let bin = venv.join("bin");
    let py = bin.join("python");
    let check = format!("import importlib.metadata as m, sys; sys.exit(m.version('virtme-ng') != '{VNG_VERSION}')");
    let ok = |py: &Path| {
        bin.join("vng").is_file()
            && Command::new(py).args(["-c", &check]).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
    };
    if ok(&py) {
        step(&format!("vmtest: virtme-ng {VNG_VERSION} cached in {}", venv.display()));
        return Ok(bin);
    }
    step(&format!("vmtest: installing virtme-ng=={VNG_VERSION} (PyPI) into {}", venv.display()));
    if !py.exists() {
        if Command::new("python3").arg("--version").output().is_err() {
            apt_install(&["python3", "python3-venv"])?;
        }
        if run(Command::new("python3").arg("-m").arg("venv").arg(&venv)).is_err() {
            // Debian's python3 without ensurepip.
            apt_install(&["python3-venv"])?;
            let _ = fs::remove_dir_all(&venv);
            run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
        }
    }
    run(Command::new(&py).args(["-m", "pip", "install", "--quiet", &format!("virtme-ng=={VNG_VERSION}")]))?;
    if !ok(&py) {
        bail!("virtme-ng {VNG_VERSION} installed into {} but `vng` is not usable there", venv.display());
    }
    Ok(bin)
}

/// An unpacked kernel: what `vng -r` boots and what the report names. One
/// VM each: the same kernel may boot twice (arm64 with another CPU).
#[derive(Clone)]
struct KernelImage {
    series: &'static str,
    arch: Arch,
    package: String,
    /// `uname -r`, the directory under lib/modules.
    release: String,
    vmlinuz: PathBuf,
    /// arm64: QEMU's `-cpu`.
    cpu: Option<String>,
    /// The VM's name in the report and its run directory: "6.1" (x86-64),
    /// "arm64-6.1", "arm64-6.12-cortex-a57".
    label: String,
}

impl KernelImage {
    /// Reads a cache entry; None if absent or incomplete.
    fn load(series: &'static str, arch: Arch, dir: &Path) -> Option<KernelImage> {
        let text = fs::read_to_string(dir.join("kernel.txt")).ok()?;
        let field = |k: &str| text.lines().find_map(|l| l.strip_prefix(k)?.strip_prefix('=')).map(str::to_string);
        let (package, release) = (field("package")?, field("release")?);
        let vmlinuz = dir.join("root/boot").join(format!("vmlinuz-{release}"));
        let complete = vmlinuz.is_file() && dir.join("root/lib/modules").join(&release).join("modules.dep").is_file();
        let label = match arch {
            Arch::X86_64 => series.to_string(),
            Arch::Arm64 => format!("arm64-{series}"),
        };
        complete.then_some(KernelImage { series, arch, package, release, vmlinuz, cpu: None, label })
    }

    /// The unpacked package (boot/, lib/modules/).
    fn kernel_root(&self) -> PathBuf {
        self.vmlinuz.parent().and_then(Path::parent).map_or_else(PathBuf::new, Path::to_path_buf)
    }

    /// The same kernel on QEMU CPU `cpu` (arm64); the plan's default CPU
    /// keeps the plain label.
    fn with_cpu(&self, cpu: &str) -> KernelImage {
        let label = if cpu == arm64::DEFAULT_CPU { self.label.clone() } else { format!("{}-{cpu}", self.label) };
        KernelImage { cpu: Some(cpu.to_string()), label, ..self.clone() }
    }
}

fn ensure_kernel(root: &Path, arch: Arch, spec: &'static KernelSpec, refresh: bool) -> Result<KernelImage> {
    let name = match arch {
        Arch::X86_64 => spec.series.to_string(),
        Arch::Arm64 => format!("arm64-{}", spec.series),
    };
    let dir = root.join("target/vm/kernels").join(&name);
    let cached = match KernelImage::load(spec.series, arch, &dir) {
        Some(img) if !refresh => {
            step(&format!("vmtest: kernel {name}: {} cached in {}", img.package, dir.display()));
            return Ok(img);
        }
        other => other,
    };
    let apt = PrivateApt::new(root, spec.dist, arch);
    let candidates = apt.newest_kernels(spec.series, refresh)?;
    if let Some(img) = cached.filter(|img| candidates.first() == Some(&img.package)) {
        step(&format!("vmtest: kernel {name}: {} is still the newest, cached", img.package));
        return Ok(img);
    }
    // Unpack next to the cache and swap it in only when complete, so an
    // interrupted run never leaves a half kernel that looks cached.
    let partial = root.join("target/vm/kernels").join(format!("{name}.partial"));
    let _ = fs::remove_dir_all(&partial);
    fs::create_dir_all(&partial).with_context(|| format!("cannot create {}", partial.display()))?;
    // The lists may name a package the mirror lacks (bullseye-security's
    // arm64 kernels answer 404 here): then the next older one.
    let mut errors = Vec::new();
    for candidate in &candidates {
        step(&format!("vmtest: kernel {name}: downloading {candidate} ({})", spec.dist.name));
        match apt.download(candidate, &partial) {
            Ok(()) => break,
            Err(e) => errors.push(format!("{candidate}: {e:#}")),
        }
    }
    if errors.len() == candidates.len() {
        bail!("no kernel package of {name} could be downloaded: {}", errors.join("; "));
    }
    let package = &candidates[errors.len()];
    let deb = fs::read_dir(&partial)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt-get download {package} left no .deb in {}", partial.display()))?;
    let unpacked = partial.join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    fs::remove_file(&deb)?;
    let mut releases: Vec<String> = fs::read_dir(unpacked.join("lib/modules"))
        .with_context(|| format!("{package} has no lib/modules"))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    let release = match releases.as_mut_slice() {
        [one] => std::mem::take(one),
        _ => bail!("{package}: expected one lib/modules/<release>, found {releases:?}"),
    };
    // Without modules.dep, `modprobe veth` in the guest says "not found".
    run(Command::new("depmod").arg("-b").arg(&unpacked).arg(&release))?;
    fs::write(partial.join("kernel.txt"), format!("package={package}\nrelease={release}\ndist={}\n", spec.dist.name))?;
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&partial, &dir).with_context(|| format!("cannot move {} to {}", partial.display(), dir.display()))?;
    KernelImage::load(spec.series, arch, &dir).with_context(|| format!("{package} unpacked into {} but no boot/vmlinuz-{release}", dir.display()))
}

/// apt pointed at our own sources file, lists and cache under
/// target/vm/apt/<dist>: `apt-get update` there needs no lock on the host's
/// apt, and the host's lists stay as they are.
struct PrivateApt {
    dist: &'static Dist,
    arch: Arch,
    dir: PathBuf,
}

impl PrivateApt {
    fn new(root: &Path, dist: &'static Dist, arch: Arch) -> PrivateApt {
        let name = match arch {
            Arch::X86_64 => dist.name.to_string(),
            Arch::Arm64 => format!("{}-arm64", dist.name),
        };
        PrivateApt { dist, arch, dir: root.join("target/vm/apt").join(name) }
    }

    fn options(&self, mirror: &Mirror) -> Vec<String> {
        let d = self.dir.display();
        let mut o = vec![
            format!("Dir::Etc::sourcelist={d}/sources.list"),
            "Dir::Etc::sourceparts=/dev/null".into(),
            "Dir::Etc::preferencesparts=/dev/null".into(),
            format!("Dir::State::Lists={d}/lists"),
            format!("Dir::Cache={d}/cache"),
            // Packages lists only: no AppStream metadata, no translations.
            "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false".into(),
            "Acquire::Languages=none".into(),
            // Installed packages are irrelevant to a download.
            "Dir::State::status=/dev/null".into(),
            // _apt cannot write to target/ (and need not).
            "APT::Sandbox::User=root".into(),
            // The guests' architecture only (arm64 lists on an amd64 host).
            format!("APT::Architecture={}", self.arch.deb()),
            format!("APT::Architectures::={}", self.arch.deb()),
        ];
        if mirror.ignore_valid_until {
            o.push("Acquire::Check-Valid-Until=false".into());
        }
        o.into_iter().flat_map(|o| ["-o".to_string(), o]).collect()
    }

    /// The mirror whose lists we have (recorded by `update`).
    fn current_mirror(&self) -> Option<&'static Mirror> {
        let sources = fs::read_to_string(self.dir.join("sources.list")).ok()?;
        let has_lists = fs::read_dir(self.dir.join("lists")).ok()?.flatten().any(|e| e.file_name().to_string_lossy().contains("_Packages"));
        self.dist.mirrors.iter().find(|m| m.sources == sources).filter(|_| has_lists)
    }

    /// `apt-get update` from the first mirror that answers.
    fn update(&self) -> Result<&'static Mirror> {
        let mut errors = Vec::new();
        for mirror in self.dist.mirrors {
            for sub in ["lists/partial", "cache/archives/partial"] {
                fs::create_dir_all(self.dir.join(sub))?;
            }
            fs::write(self.dir.join("sources.list"), mirror.sources)?;
            step(&format!("vmtest: apt-get update for {} (private lists in {})", self.dist.name, self.dir.display()));
            let mut cmd = Command::new("apt-get");
            cmd.args(self.options(mirror)).args(["-q", "--error-on=any", "update"]);
            match run(&mut cmd) {
                Ok(()) => return Ok(mirror),
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        bail!("no mirror of Debian {} answered: {}", self.dist.name, errors.join("; "))
    }

    /// The newest generic kernel packages of `series` for our architecture,
    /// newest first, e.g. linux-image-6.1.0-57-amd64-unsigned. Uses the lists we have, and
    /// updates them when there are none, none match, or `refresh`.
    fn newest_kernels(&self, series: &str, refresh: bool) -> Result<Vec<String>> {
        let mut mirror = match (self.current_mirror(), refresh) {
            (Some(m), false) => m,
            _ => self.update()?,
        };
        let mut updated = refresh;
        loop {
            let deb = self.arch.deb();
            let pattern = format!("^linux-image-{}\\.[0-9].*-{deb}-unsigned$", series.replace('.', "\\."));
            let out = Command::new("apt-cache")
                .args(self.options(mirror))
                .args(["search", "--names-only", &pattern])
                .output()
                .context("cannot run apt-cache")?;
            let names = String::from_utf8_lossy(&out.stdout);
            let mut found: Vec<(Vec<u64>, &str)> = names
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .filter_map(|name| kernel_sort_key(name, series, deb).map(|key| (key, name)))
                .collect();
            found.sort();
            match found.last() {
                Some(_) => return Ok(found.iter().rev().take(KERNEL_CANDIDATES).map(|(_, n)| n.to_string()).collect()),
                None if !updated => {
                    mirror = self.update()?;
                    updated = true;
                }
                None => bail!("Debian {} has no package linux-image-{series}.*-{deb}-unsigned (apt-cache search {pattern:?})", self.dist.name),
            }
        }
    }

    /// `apt-get download` into `dest`; on failure (lists older than the
    /// archive) update the lists once and try again.
    fn download(&self, package: &str, dest: &Path) -> Result<()> {
        let get = |mirror: &Mirror| {
            run(Command::new("apt-get").current_dir(dest).args(self.options(mirror)).args(["-q", "download", package]))
        };
        let mirror = match self.current_mirror() {
            Some(m) => m,
            None => self.update()?,
        };
        if get(mirror).is_ok() {
            return Ok(());
        }
        let mirror = self.update()?;
        get(mirror)
    }
}

/// Kernel packages tried, newest first, when a download fails.
const KERNEL_CANDIDATES: usize = 6;

/// Orders kernel package names by the numbers in them (6.1.0-57 > 6.1.0-9);
/// None for other flavours (-cloud, -rt: any all-letter part) and series.
fn kernel_sort_key(name: &str, series: &str, deb_arch: &str) -> Option<Vec<u64>> {
    let mid = name.strip_prefix("linux-image-")?.strip_suffix("-unsigned")?.strip_suffix(deb_arch)?.strip_suffix('-')?;
    let rest = mid.strip_prefix(series)?.strip_prefix('.')?;
    if !rest.starts_with(|c: char| c.is_ascii_digit()) || mid.split('-').any(|part| part.chars().all(|c| c.is_ascii_alphabetic())) {
        return None;
    }
    Some(mid.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).filter_map(|s| s.parse().ok()).collect())
}

// ------------------------------------------------------------------- build

/// The host-built binaries a run uses, snapshotted under target/vm/bin.
struct Build {
    /// (suite, snapshot of its test binary), in the order asked.
    suites: Vec<(String, PathBuf)>,
    /// (snapshot, original path) of the agent binaries: the tests run
    /// CARGO_BIN_EXE_flowlog-agent, an absolute path compiled in, so the guest
    /// bind-mounts each snapshot over its original.
    binds: Vec<(PathBuf, PathBuf)>,
    /// Snapshot of the packages' binary, for the `packaged` suite.
    packaged_agent: Option<PathBuf>,
    /// arm64: the guest's root filesystem, which holds the snapshots; the
    /// guest sees them (and the run dirs) at their paths relative to it.
    rootfs: Option<PathBuf>,
}

impl Build {
    /// Where the guest sees host path `p`.
    fn guest_path(&self, p: &Path) -> Result<PathBuf> {
        match &self.rootfs {
            Some(r) => arm64::guest_path(r, p),
            None => Ok(p.to_path_buf()),
        }
    }
}

/// Test binaries and binaries (by target name) of `--message-format=json`.
fn artifacts(stdout: &[u8]) -> (BTreeMap<String, PathBuf>, BTreeMap<String, PathBuf>) {
    let mut tests = BTreeMap::new();
    let mut bins = BTreeMap::new();
    for line in String::from_utf8_lossy(stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let (Some(name), Some(exe)) = (msg["target"]["name"].as_str(), msg["executable"].as_str()) else { continue };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let kind = |k: &str| msg["target"]["kind"].as_array().is_some_and(|ks| ks.iter().any(|x| x == k));
        if kind("test") {
            tests.insert(name.to_string(), PathBuf::from(exe));
        } else if kind("bin") && msg["profile"]["test"] == false {
            // A binary the integration tests run (not the bin's unit tests).
            bins.insert(name.to_string(), PathBuf::from(exe));
        }
    }
    (tests, bins)
}

/// Builds the agent and the suites' test binaries on the host (the guest sees
/// the same paths: shared root), then snapshots them. A VM run takes minutes,
/// and any `cargo build` or `cargo test` in this tree meanwhile would replace
/// target/debug/flowlog-agent and deps/<suite>-<hash> (same names) under the
/// running tests.
fn build_tests(root: &Path, suites: &[String]) -> Result<Build> {
    step("vmtest: building flowlog-agent and its test binaries on the host");
    run(cargo().current_dir(root).args(["build", "-p", "flowlog-agent"]))?;
    let out = cargo()
        .current_dir(root)
        .args(["test", "--no-run", "--message-format=json", "-p", "flowlog-agent", "--tests"])
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo test --no-run")?;
    if !out.status.success() {
        bail!("cargo test --no-run -p flowlog-agent --tests failed: {}", out.status);
    }
    let (tests, bins) = artifacts(&out.stdout);
    let snap = root.join("target/vm/bin");
    if snap.exists() {
        fs::remove_dir_all(&snap).with_context(|| format!("cannot clear {}", snap.display()))?;
    }
    fs::create_dir_all(snap.join("bin"))?;
    let mut build = Build { suites: Vec::new(), binds: Vec::new(), packaged_agent: None, rootfs: None };
    build.add_suites(root, Arch::X86_64, suites, &tests, &snap, &snap.join("bin/packaged-flowlog-agent"))?;
    for (name, exe) in &bins {
        build.binds.push((snapshot(exe, &snap.join("bin").join(name))?, exe.clone()));
    }
    Ok(build)
}

impl Build {
    /// Snapshots each suite's test binary into `dir`; the `packaged` suite
    /// runs the e2e binary with the packages' agent of `arch`, snapshot to
    /// `packaged_to`.
    fn add_suites(&mut self, root: &Path, arch: Arch, suites: &[String], tests: &BTreeMap<String, PathBuf>, dir: &Path, packaged_to: &Path) -> Result<()> {
        for s in suites {
            let test = if s == PACKAGED_SUITE {
                let packaged = root.join(arch.packaged_agent());
                if !packaged.is_file() {
                    bail!("--packaged: no {}; run `cargo xtask package` first", arch.packaged_agent());
                }
                self.packaged_agent = Some(snapshot(&packaged, packaged_to)?);
                "e2e"
            } else {
                s.as_str()
            };
            let Some(exe) = tests.get(test) else {
                bail!("cargo built no {} test binary {s:?} (test targets: {})", arch.name(), tests.keys().cloned().collect::<Vec<_>>().join(", "));
            };
            self.suites.push((s.clone(), snapshot(exe, &dir.join(s))?));
        }
        Ok(())
    }
}

/// A hard link keeps the built file: cargo and the linker replace outputs by
/// writing a new file, never in place. Copy where linking is impossible.
fn snapshot(from: &Path, to: &Path) -> Result<PathBuf> {
    if fs::hard_link(from, to).is_err() {
        fs::copy(from, to).with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    }
    Ok(to.to_path_buf())
}

// --------------------------------------------------------------------- VMs

/// What one VM left behind, read from its run dir.
struct VmRun {
    dir: PathBuf,
    /// From vng's start to the guest script's first file.
    boot: Option<Duration>,
    wall: Duration,
    /// Per suite: from its `.start` to its `.rc`, as seen by the host.
    suite_wall: BTreeMap<String, Duration>,
    /// Why the VM did not end normally, if it did not.
    problem: Option<String>,
}

fn run_vms(root: &Path, vng_bin: &Path, images: &[KernelImage], build: &Build, opts: &Opts, jobs: usize) -> Vec<VmRun> {
    // A shared queue of kernel indexes; `jobs` workers take from it.
    let queue = Mutex::new((0..images.len()).collect::<Vec<_>>().into_iter());
    let results: Mutex<Vec<Option<VmRun>>> = Mutex::new((0..images.len()).map(|_| None).collect());
    thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| loop {
                let Some(i) = queue.lock().unwrap_or_else(|e| e.into_inner()).next() else { break };
                let img = &images[i];
                let vm = run_vm(root, vng_bin, img, build, opts).unwrap_or_else(|e| VmRun {
                    dir: run_dir(root, build, img),
                    boot: None,
                    wall: Duration::ZERO,
                    suite_wall: BTreeMap::new(),
                    problem: Some(format!("{e:#}")),
                });
                results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(vm);
            });
        }
    });
    let results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    results
        .into_iter()
        .zip(images)
        .map(|(r, img)| {
            r.unwrap_or_else(|| VmRun {
                dir: run_dir(root, build, img),
                boot: None,
                wall: Duration::ZERO,
                suite_wall: BTreeMap::new(),
                problem: Some("not run (its worker thread died)".into()),
            })
        })
        .collect()
}

/// The VM's --rwdir: under target/vm/runs (x86-64), inside the root (arm64).
fn run_dir(root: &Path, build: &Build, img: &KernelImage) -> PathBuf {
    match &build.rootfs {
        Some(r) => arm64::run_dir(r, &img.label),
        None => root.join("target/vm/runs").join(&img.label),
    }
}

fn run_vm(root: &Path, vng_bin: &Path, img: &KernelImage, build: &Build, opts: &Opts) -> Result<VmRun> {
    let suites = &build.suites;
    let dir = run_dir(root, build, img);
    // Start clean: a file of the previous run must not pass for this one's.
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    fs::create_dir_all(&dir)?;
    fs::write(
        dir.join("env.sh"),
        format!("KERNEL_SERIES={}\nSUITE_TIMEOUT={}\nTEST_THREADS={}\n", img.series, opts.suite_timeout.as_secs(), opts.threads),
    )?;
    // `<suite> <binary> [test name filters]`; a suite the plan leaves out
    // for this kernel is not run there.
    let mut list = String::new();
    for (s, exe) in suites {
        let Some(filters) = (if opts.full { Some(&[][..]) } else { default_filters(img, s) }) else { continue };
        list.push_str(&format!("{s} {} {}\n", build.guest_path(exe)?.display(), filters.join(" ")));
    }
    fs::write(dir.join("suites.txt"), list)?;
    if let Some(bin) = &build.packaged_agent {
        fs::write(dir.join(format!("{PACKAGED_SUITE}.env")), format!("FLOWLOG_TEST_AGENT_BIN={}\n", build.guest_path(bin)?.display()))?;
    }
    let binds: String = build.binds.iter().map(|(snap, orig)| format!("{} {}\n", snap.display(), orig.display())).collect();
    fs::write(dir.join("binds.txt"), binds)?;

    let path = format!("{}:{}", vng_bin.display(), env::var("PATH").unwrap_or_default());
    let console = fs::File::create(dir.join("console.log"))?;
    let mut cmd = Command::new(vng_bin.join("vng"));
    cmd.arg("-r").arg(&img.vmlinuz).args(["--memory", vm_memory(img.arch), "--cpus", VM_CPUS, "--disable-kvm", "--rwdir"]).arg(&dir);
    match &build.rootfs {
        // The guest's / is the arm64 root; the script and run dir are in it.
        Some(rootfs) => {
            let cpu = img.cpu.as_deref().unwrap_or(arm64::DEFAULT_CPU);
            cmd.args(["--arch", "arm64", "--root"])
                .arg(rootfs)
                .arg(format!("--qemu-opts=-cpu {cpu}"))
                .args(["--", "/bin/sh"])
                .arg(arm64::guest_path(rootfs, &rootfs.join("vmtest/guest.sh"))?)
                .arg(build.guest_path(&dir)?);
        }
        None => {
            cmd.args(["--", "/bin/sh"]).arg(root.join(GUEST_SCRIPT)).arg(&dir);
        }
    }
    cmd.current_dir(root)
        .env("PATH", path)
        .stdin(Stdio::null())
        .stdout(console.try_clone()?)
        .stderr(console);
    let limit = BOOT_ALLOWANCE + opts.suite_timeout.saturating_mul(suites.len() as u32) + SHUTDOWN_GRACE;
    let cpu = img.cpu.as_deref().map_or(String::new(), |c| format!(", -cpu {c}"));
    step(&format!("[{}] booting {}{cpu} (limit {:.0?})", img.label, img.release, limit));
    let t0 = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("cannot start {}", vng_bin.join("vng").display()))?;

    let mut vm = VmRun { dir: dir.clone(), boot: None, wall: Duration::ZERO, suite_wall: BTreeMap::new(), problem: None };
    let mut suite_start: BTreeMap<&str, Instant> = BTreeMap::new();
    let mut done_at = None;
    loop {
        // vng's exit status says nothing (255 even when all went well): the
        // files in the run dir are the only results.
        let exited = child.try_wait().context("waiting for vng")?.is_some();
        if vm.boot.is_none() && dir.join("started").exists() {
            vm.boot = Some(t0.elapsed());
            step(&format!("[{}] guest up after {:.0?}", img.label, t0.elapsed()));
        }
        for (s, _) in suites {
            if !suite_start.contains_key(s.as_str()) && dir.join(format!("{s}.start")).exists() {
                suite_start.insert(s, Instant::now());
            }
            if let (Some(t), false) = (suite_start.get(s.as_str()), vm.suite_wall.contains_key(s)) {
                if dir.join(format!("{s}.rc")).exists() {
                    vm.suite_wall.insert(s.clone(), t.elapsed());
                    step(&format!("[{}] {s} finished after {:.0?}", img.label, t.elapsed()));
                }
            }
        }
        if done_at.is_none() && dir.join("done").exists() {
            done_at = Some(Instant::now());
        }
        if exited {
            break;
        }
        if t0.elapsed() > limit {
            vm.problem = Some(format!("VM killed after {:.0?} (limit: boot allowance + suites x suite timeout)", t0.elapsed()));
            kill_tree(&mut child);
            break;
        }
        if done_at.is_some_and(|t| t.elapsed() > SHUTDOWN_GRACE) {
            // Results are complete; only the power-off hangs.
            kill_tree(&mut child);
            break;
        }
        thread::sleep(Duration::from_millis(500));
    }
    vm.wall = t0.elapsed();
    if vm.problem.is_none() && !dir.join("done").exists() {
        vm.problem = Some(if vm.boot.is_none() {
            "the guest script never started (kernel did not boot? see console.log)".into()
        } else {
            "the VM stopped before the guest script finished (see guest.log, console.log)".into()
        });
    }
    step(&format!("[{}] VM finished after {:.0?}", img.label, vm.wall));
    Ok(vm)
}

/// SIGTERM, then SIGKILL, to vng and everything under it (sh, virtme-run,
/// QEMU). vng stays in our process group so that Ctrl-C reaches QEMU too;
/// hence the walk over /proc instead of a kill of its own group.
fn kill_tree(child: &mut Child) {
    let Ok(pid) = i32::try_from(child.id()) else { return };
    let mut pids = descendants(pid);
    pids.push(pid);
    for sig in [libc::SIGTERM, libc::SIGKILL] {
        for p in &pids {
            // SAFETY: kill(2) of processes we started (still ours: their
            // parent chain is alive until we reap vng below).
            unsafe { libc::kill(*p, sig) };
        }
        for _ in 0..20 {
            if child.try_wait().ok().flatten().is_some() && pids.iter().all(|p| !Path::new(&format!("/proc/{p}")).exists()) {
                return;
            }
            thread::sleep(Duration::from_millis(250));
        }
    }
    let _ = child.wait();
}

/// Processes whose parent chain leads to `pid`, from /proc/<pid>/stat.
fn descendants(pid: i32) -> Vec<i32> {
    let mut parent = BTreeMap::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(stat) = fs::read_to_string(e.path().join("stat")) else { continue };
        // "pid (comm) state ppid ...": comm may contain spaces and parens.
        let ppid = stat.rsplit_once(") ").and_then(|(_, rest)| rest.split(' ').nth(1)?.parse::<i32>().ok());
        if let Some(ppid) = ppid {
            parent.insert(p, ppid);
        }
    }
    let mut out: Vec<i32> = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for (&c, _) in parent.iter().filter(|(_, &pp)| pp == p) {
            out.push(c);
            frontier.push(c);
        }
    }
    out
}

// ----------------------------------------------------------------- results

/// One suite on one kernel, parsed from libtest's output.
struct SuiteResult {
    status: Status,
    counts: Option<(u32, u32, u32)>,
    /// libtest's own "finished in".
    finished_in: Option<String>,
    failed: Vec<String>,
    /// The first lines of each failed test's panic (or, for a suite that
    /// timed out, the last lines of the test that hung).
    first_lines: BTreeMap<String, Vec<String>>,
    /// (test, line) of every line starting with `SKIP:`.
    skips: Vec<(Option<String>, String)>,
    /// The test that started and did not finish (for timeouts).
    running: Option<String>,
}

#[derive(Clone, Copy, PartialEq)]
enum Status {
    Ok,
    Failed,
    TimedOut,
    NotRun,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Failed => "FAILED",
            Status::TimedOut => "TIMEOUT",
            Status::NotRun => "NOT RUN",
        }
    }
}

/// Reads `<suite>.log`: libtest run with --nocapture --test-threads=1, so
/// each test's output (and its panic) follows its "test NAME ... " line and
/// precedes its outcome. With more threads the lines interleave; the panic
/// lines still name the test (libtest names the thread after it).
fn parse_suite(dir: &Path, suite: &str) -> SuiteResult {
    let read = |ext: &str| fs::read(dir.join(format!("{suite}.{ext}"))).map(|b| String::from_utf8_lossy(&b).into_owned());
    let log = read("log").unwrap_or_default();
    let rc: Option<i32> = read("rc").ok().and_then(|s| s.trim().parse().ok());
    let mut r = SuiteResult {
        status: Status::NotRun,
        counts: None,
        finished_in: None,
        failed: Vec::new(),
        first_lines: BTreeMap::new(),
        skips: Vec::new(),
        running: None,
    };
    let lines: Vec<&str> = log.lines().collect();
    let add_failed = |r: &mut SuiteResult, name: &str| {
        if !r.failed.iter().any(|f| f == name) {
            r.failed.push(name.to_string());
        }
    };
    // Where the running test's output starts, for the tail of a hung one.
    let mut running_from = 0;
    let mut in_failure_list = false;
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim();
        if let Some(rest) = line.strip_prefix("test result: ") {
            r.counts = parse_counts(rest);
            r.finished_in = rest.split("finished in ").nth(1).map(|s| s.trim().to_string());
            in_failure_list = false;
            continue;
        }
        if *line == "failures:" {
            in_failure_list = true;
            r.running = None;
            continue;
        }
        if in_failure_list {
            // "    NAME" lines; with --nocapture no "---- NAME stdout ----" blocks.
            if let Some(name) = line.strip_prefix("    ").filter(|n| !n.is_empty() && !n.contains(' ')) {
                add_failed(&mut r, name);
            }
            continue;
        }
        let mut output = Some(*line);
        if let Some((name, rest)) = line.strip_prefix("test ").and_then(|l| l.split_once(" ... ")) {
            match rest.trim() {
                "ok" => r.running = None,
                "FAILED" => {
                    add_failed(&mut r, name);
                    r.running = None;
                }
                o if o.starts_with("ignored") => r.running = None,
                // Started; what follows on the line is its first output.
                _ => {
                    r.running = Some(name.to_string());
                    running_from = i;
                }
            }
            output = (!rest.trim().is_empty()).then_some(rest);
        } else if r.running.is_some() && matches!(trimmed, "ok" | "FAILED") {
            if trimmed == "FAILED" {
                let name = r.running.clone().unwrap_or_default();
                add_failed(&mut r, &name);
            }
            r.running = None;
            output = None;
        }
        if let Some(out) = output.map(str::trim).filter(|o| o.starts_with("SKIP:")) {
            r.skips.push((r.running.clone(), out.to_string()));
        }
    }
    for name in &r.failed {
        let head = format!("thread '{name}' ");
        if let Some(at) = lines.iter().position(|l| l.starts_with(&head) && l.contains("panicked at")) {
            let panic = lines[at..]
                .iter()
                .take_while(|l| !l.starts_with("stack backtrace:") && !l.starts_with("note: ") && !l.starts_with("test "))
                .take(FIRST_LINES)
                .map(|l| l.to_string())
                .collect();
            r.first_lines.insert(name.clone(), panic);
        }
    }

    r.status = match rc {
        None => Status::NotRun,
        // timeout(1): 124 after SIGTERM, 137 after the -k SIGKILL.
        Some(124) | Some(137) => Status::TimedOut,
        Some(0) if r.counts.is_some_and(|(_, failed, _)| failed == 0) => Status::Ok,
        Some(_) => Status::Failed,
    };
    if r.status == Status::TimedOut {
        if let Some(name) = &r.running {
            r.first_lines.insert(format!("{name} (hung; its last lines)"), last_lines(&lines[running_from..]));
        }
    } else if r.status == Status::Failed && r.failed.is_empty() {
        // No test failed: the binary itself did (or printed no summary).
        r.first_lines.insert(format!("(exit {}; last lines)", rc.unwrap_or(-1)), last_lines(&lines));
    }
    r
}

/// The last FIRST_LINES non-empty lines.
fn last_lines(lines: &[&str]) -> Vec<String> {
    let kept: Vec<&&str> = lines.iter().filter(|l| !l.trim().is_empty()).collect();
    kept[kept.len().saturating_sub(FIRST_LINES)..].iter().map(|l| l.to_string()).collect()
}

/// "ok. 5 passed; 1 failed; 2 ignored; 0 measured; ..." -> (5, 1, 2).
fn parse_counts(s: &str) -> Option<(u32, u32, u32)> {
    let count = |what: &str| {
        s.split(';').find_map(|part| part.trim().rsplit_once(' ').filter(|(_, w)| *w == what).and_then(|(n, _)| n.rsplit(' ').next()?.parse().ok()))
    };
    Some((count("passed")?, count("failed")?, count("ignored")?))
}

struct Row {
    label: String,
    suite: String,
    result: SuiteResult,
    wall: Option<Duration>,
}

fn report_vm(img: &KernelImage, vm: &VmRun, suites: &[String], failed: &mut Vec<String>, rows: &mut Vec<Row>) {
    let tag = format!("[{}]", img.label);
    let cpu = img.cpu.as_deref().map_or(String::new(), |c| format!(", -cpu {c}"));
    println!("\n=== kernel {} ({}, {}{cpu}) ===", img.label, img.release, img.package);
    println!(
        "{tag} boot {}, VM {:.0?}; output in {}",
        vm.boot.map_or("n/a".into(), |b| format!("{:.0?}", b)),
        vm.wall,
        vm.dir.display()
    );
    if let Some(p) = &vm.problem {
        println!("{tag} VM: {p}");
    }
    // The guest script's notes on its environment (missing modules, tools).
    if let Ok(log) = fs::read_to_string(vm.dir.join("guest.log")) {
        for l in log.lines().filter(|l| l.starts_with("env: ")) {
            println!("{tag} {l}");
        }
    }
    // The suites this kernel's plan ran (suites.txt, written before boot).
    let planned: Vec<String> = fs::read_to_string(vm.dir.join("suites.txt"))
        .map(|t| t.lines().filter_map(|l| l.split_whitespace().next().map(String::from)).collect())
        .unwrap_or_default();
    for suite in suites.iter().filter(|s| planned.is_empty() || planned.contains(s)) {
        let r = parse_suite(&vm.dir, suite);
        let counts = r.counts.map_or("no test result line".into(), |(p, f, i)| format!("{p} passed, {f} failed, {i} ignored"));
        let libtest = r.finished_in.as_deref().map_or(String::new(), |t| format!(", libtest {t}"));
        println!("{tag} {suite:<8} {:<8} {counts}{libtest}", r.status.label());
        for name in &r.failed {
            println!("{tag}   failed: {name}");
        }
        for (name, lines) in &r.first_lines {
            println!("{tag}   --- {name}:");
            for l in lines {
                println!("{tag}       {l}");
            }
        }
        if r.status == Status::TimedOut {
            println!("{tag}   still running when the suite timed out: {}", r.running.as_deref().unwrap_or("(unknown)"));
        }
        for (test, line) in &r.skips {
            // Name the test unless its line already does.
            let who = test.as_deref().filter(|t| !line.contains(*t)).map_or(String::new(), |t| format!("{t}: "));
            println!("{tag}   {who}{line}");
        }
        // The packaged suite counts only if its tests ran the packages' binary.
        let unproven = suite == PACKAGED_SUITE
            && !fs::read_to_string(vm.dir.join(format!("{suite}.log"))).is_ok_and(|l| l.contains("(FLOWLOG_TEST_AGENT_BIN)"));
        if unproven {
            println!("{tag}   the tests did not say they ran the packaged binary (no \"agent binary: ... (FLOWLOG_TEST_AGENT_BIN)\" line)");
        }
        if r.status != Status::Ok || unproven {
            failed.push(format!("{}/{suite}", img.label));
        }
        rows.push(Row { label: img.label.clone(), suite: suite.clone(), wall: vm.suite_wall.get(suite).copied(), result: r });
    }
}

fn print_summary(rows: &[Row], runs: &[VmRun], images: &[KernelImage], total: Duration) {
    println!("\n=== vmtest summary ===");
    let w = images.iter().map(|i| i.label.len()).max().unwrap_or(0).max(6);
    println!("{:<w$} {:<10} {:<8} {:>6} {:>6} {:>7} {:>5} {:>8}", "kernel", "suite", "result", "passed", "failed", "ignored", "skips", "wall");
    let n = |v: Option<u32>| v.map_or("-".to_string(), |v| v.to_string());
    for r in rows {
        let c = r.result.counts;
        println!(
            "{:<w$} {:<10} {:<8} {:>6} {:>6} {:>7} {:>5} {:>8}",
            r.label,
            r.suite,
            r.result.status.label(),
            n(c.map(|c| c.0)),
            n(c.map(|c| c.1)),
            n(c.map(|c| c.2)),
            r.result.skips.len(),
            r.wall.map_or("-".into(), |w| format!("{:.0?}", w)),
        );
    }
    for (img, vm) in images.iter().zip(runs) {
        println!(
            "VM {:<w$} boot {:>5}  total {:>6.0?}{}",
            img.label,
            vm.boot.map_or("-".into(), |b| format!("{:.0?}", b)),
            vm.wall,
            vm.problem.as_deref().map_or(String::new(), |p| format!("  ({p})"))
        );
    }
    println!("all VMs: {total:.0?}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_names_sort_by_numbers_and_skip_other_flavours() {
        assert_eq!(kernel_sort_key("linux-image-6.1.0-57-amd64-unsigned", "6.1", "amd64"), Some(vec![6, 1, 0, 57]));
        assert!(kernel_sort_key("linux-image-6.1.0-57-amd64-unsigned", "6.1", "amd64") > kernel_sort_key("linux-image-6.1.0-9-amd64-unsigned", "6.1", "amd64"));
        assert_eq!(kernel_sort_key("linux-image-6.1.0-57-cloud-amd64-unsigned", "6.1", "amd64"), None);
        assert_eq!(kernel_sort_key("linux-image-6.1.0-57-rt-amd64-unsigned", "6.1", "amd64"), None);
        assert_eq!(kernel_sort_key("linux-image-6.12.117+deb12-amd64-unsigned", "6.1", "amd64"), None);
        assert_eq!(kernel_sort_key("linux-image-6.12.117+deb12-amd64-unsigned", "6.12", "amd64"), Some(vec![6, 12, 117, 12]));
        assert_eq!(kernel_sort_key("linux-image-5.10.0-46-amd64-unsigned", "5.10", "amd64"), Some(vec![5, 10, 0, 46]));
        assert_eq!(kernel_sort_key("linux-image-6.12.107+deb12-arm64-unsigned", "6.12", "arm64"), Some(vec![6, 12, 107, 12]));
        assert_eq!(kernel_sort_key("linux-image-6.1.0-53-arm64-unsigned", "6.1", "amd64"), None);
        assert_eq!(kernel_sort_key("linux-image-6.1.0-53-cloud-arm64-unsigned", "6.1", "arm64"), None);
    }

    #[test]
    fn libtest_output_is_parsed() {
        let dir = env::temp_dir().join(format!("xtask-vm-parse-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("e2e.log"),
            "\nrunning 4 tests\ntest a ... SKIP: no TCX before 6.6\nsome log\nok\ntest b ... log line\n\
             thread 'b' (12) panicked at x.rs:1:\nboom\nstack backtrace:\n   0: x\nFAILED\ntest c ... ignored\n\
             test d ... FAILED\n\nfailures:\n\nfailures:\n    b\n    d\n\n\
             test result: FAILED. 1 passed; 2 failed; 1 ignored; 0 measured; 0 filtered out; finished in 1.50s\n",
        )
        .unwrap();
        fs::write(dir.join("e2e.rc"), "101\n").unwrap();
        let r = parse_suite(&dir, "e2e");
        assert!(r.status == Status::Failed);
        assert_eq!(r.counts, Some((1, 2, 1)));
        assert_eq!(r.failed, ["b", "d"]);
        assert_eq!(r.first_lines["b"], ["thread 'b' (12) panicked at x.rs:1:", "boom"]);
        assert_eq!(r.skips, [(Some("a".to_string()), "SKIP: no TCX before 6.6".to_string())]);
        assert_eq!(r.finished_in.as_deref(), Some("1.50s"));
        assert!(parse_suite(&dir, "kernel").status == Status::NotRun);

        // Killed by timeout(1) in the middle of a test.
        fs::write(dir.join("kernel.log"), "running 2 tests\ntest x ... ok\ntest y ... \nwaiting\nstill waiting\n").unwrap();
        fs::write(dir.join("kernel.rc"), "124\n").unwrap();
        let r = parse_suite(&dir, "kernel");
        assert!(r.status == Status::TimedOut);
        assert_eq!(r.running.as_deref(), Some("y"));
        assert_eq!(r.first_lines["y (hung; its last lines)"], ["test y ... ", "waiting", "still waiting"]);
        fs::remove_dir_all(&dir).unwrap();
    }
}
