//! `cargo xtask bench`: flowlog's benchmarks, in one run (see BENCHMARKS.md).
//!
//! 1. kernel: cost per packet of the XDP and TC programs (BPF_PROG_TEST_RUN)
//!    beside a pass-only and a minimal per-CPU-hash program;
//! 2. veth: packet rate between two network namespaces without and with the
//!    programs attached;
//! 3. drain: rotate + build_records + format of 10K/100K/1M flows, peak RSS;
//! 4. the formatted records written to a file destination;
//! 5. ship: records/s to S3, CloudWatch Logs and Firehose on moto;
//! 6. k8s: records + format with the Kubernetes pod identity fields (`k8s.rs`).
//!
//! Needs root. Prints Markdown tables on stdout, progress on stderr.
//! Options: `--only kernel,veth,drain,ship,k8s` (sections), `--rounds N` (samples
//! per figure, default 7), `--veth-secs S` (seconds per veth sample, default 3).

mod drain;
mod k8s;
mod kernel;
mod ship;
mod util;
mod veth;

use std::{process::ExitCode, time::Instant};

use anyhow::{bail, Context, Result};

struct Opts {
    sections: Vec<String>,
    rounds: usize,
    veth_secs: f64,
}

fn parse_opts(args: &[String]) -> Result<Opts> {
    let sections = ["kernel", "veth", "drain", "ship", "k8s"].map(String::from).to_vec();
    let mut o = Opts { sections, rounds: 7, veth_secs: 3.0 };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--only" => o.sections = val()?.split(',').map(str::to_string).collect(),
            "--rounds" => o.rounds = val()?.parse().context("--rounds")?,
            "--veth-secs" => o.veth_secs = val()?.parse().context("--veth-secs")?,
            "--" => {}
            other => {
                bail!("unknown option {other}; options: --only kernel,veth,drain,ship,k8s  --rounds N  --veth-secs S")
            }
        }
    }
    for s in &o.sections {
        if !["kernel", "veth", "drain", "ship", "k8s"].contains(&s.as_str()) {
            bail!("unknown section {s}: expected kernel, veth, drain, ship or k8s");
        }
    }
    if o.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    Ok(o)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The drain section runs each size in a child process, for its peak RSS.
    if args.first().map(String::as_str) == Some(drain::CHILD_ARG) {
        return match drain::child(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench child: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match parse_opts(&args).and_then(|o| run(&o)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(o: &Opts) -> Result<()> {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark loads eBPF programs and creates network namespaces: run it as root (`cargo xtask bench`)");
    }
    let started = Instant::now();
    let kernel_release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("model name").map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())))
        .unwrap_or_default();
    println!("# flowlog benchmarks\n");
    println!(
        "Machine: {} CPUs ({cpu}), Linux {}. 1-min load at start: {:.2}. Rounds per figure: {}.\n",
        util::nproc(),
        kernel_release.trim(),
        util::load1(),
        o.rounds
    );
    let has = |s: &str| o.sections.iter().any(|x| x == s);
    let (mut k, mut v, mut d) = (None, None, None);
    if has("kernel") {
        eprintln!("==> 1. kernel cost per packet (BPF_PROG_TEST_RUN)");
        let r = kernel::run(o.rounds)?;
        print_kernel(&r);
        k = Some(r);
    }
    if has("veth") {
        eprintln!("==> 2. veth throughput between two network namespaces");
        let r = veth::run(o.rounds.min(5), o.veth_secs)?;
        veth::print(&r);
        v = Some(r);
        let tcp = veth::run_tcp(o.rounds.min(5), o.veth_secs)?;
        veth::print_tcp(&tcp, o.veth_secs);
    }
    if has("drain") {
        eprintln!("==> 3./4. drain + format, ship to a file, peak RSS (one child process per size)");
        let r = drain::run()?;
        drain::print(&r);
        d = Some(r);
    }
    if has("ship") {
        eprintln!("==> 5. ship to S3, CloudWatch Logs and Firehose on moto (local AWS-compatible server)");
        let r = ship::run()?;
        ship::print(&r);
    }
    if has("k8s") {
        eprintln!("==> 6. records + format with Kubernetes pod identity (1,000 pods, 100K flows)");
        k8s::print(&k8s::run(o.rounds)?);
    }
    print_summary(k.as_ref(), v.as_ref(), d.as_ref());
    println!("1-min load at the end: {:.2}. Total time: {:.0?}.", util::load1(), started.elapsed());
    Ok(())
}

/// The figures of issue #22 from this run's sections (slot table, IPv4),
/// with the writer of commit 3c34e0b (`format::reference`, same records
/// stage) beside the new one.
fn print_summary(k: Option<&kernel::Results>, v: Option<&veth::Results>, d: Option<&drain::Results>) {
    println!("## Summary (issue #22)\n");
    println!("| figure | with the writer of 3c34e0b | this run | target |");
    println!("|---|---|---|---|");
    let row = |flows: usize| d.and_then(|d| d.rows.iter().find(|x| x.flows == flows && x.family == "IPv4" && x.table == "slots"));
    if let Some(x) = row(1_000_000) {
        let rate = |format_ms: f64| x.flows as f64 / (x.enrich_ms + format_ms) / 1e3;
        println!(
            "| records + format, 1 M IPv4 flows, one core | {:.1} + {:.1} ms = {:.2} M records/s ({:.0} ns) | {:.1} + {:.1} ms = {:.2} M records/s ({:.0} ns) | ≥ 10 M/s (≤ 100 ns) |",
            x.enrich_ms,
            x.format_ref_ms,
            rate(x.format_ref_ms),
            1e3 / rate(x.format_ref_ms),
            x.enrich_ms,
            x.format_ms,
            rate(x.format_ms),
            1e3 / rate(x.format_ms),
        );
        println!(
            "| records + format, 1 M IPv4 flows, all {} threads | | {:.1} ms = {:.2} M records/s on idle cores (sort + longest range, thread CPU); {:.1} ms = {:.2} M/s wall in this run | ≥ 10 M/s |",
            x.threads,
            x.parallel_path_ms,
            x.flows as f64 / x.parallel_path_ms / 1e3,
            x.parallel_ms,
            x.flows as f64 / x.parallel_ms / 1e3,
        );
        println!(
            "| the formatter alone (records built beforehand) | {:.0} ns = {:.1} M/s | {:.0} ns = {:.1} M/s | |",
            x.only_ref_ns,
            1e3 / x.only_ref_ns,
            x.only_lines_ns,
            1e3 / x.only_lines_ns
        );
        println!(
            "| peak RSS, 1 M flows in a window | one window's text held whole: {:.0} MiB (drained flows {:.0} MiB, text {:.0} MiB) | the agent's path (`Shipper::write_window`, `file:` output, text written out 65,536 records at a time): {:.0} MiB | ≤ 128 MiB |",
            x.maxrss_kib as f64 / 1024.0,
            x.drained_mib,
            x.bytes as f64 / (1 << 20) as f64,
            x.agent_maxrss_kib as f64 / 1024.0
        );
    }
    if let Some(x) = row(100_000) {
        let rate = |format_ms: f64| {
            let ms = x.rotate_ms + x.enrich_ms + format_ms;
            format!("{ms:.1} ms = {:.2} M/s", x.flows as f64 / ms / 1e3)
        };
        println!("| drain + format at 100 K flows (slot table) | {} | {} | ≥ 8 M/s |", rate(x.format_ref_ms), rate(x.format_ms));
        let rate = |ms: f64| format!("{:.1} ms = {:.2} M/s", x.rotate_ms + ms, x.flows as f64 / (x.rotate_ms + ms) / 1e3);
        println!(
            "| drain + format at 100 K flows (slot table), all {} threads | | {} on idle cores; {} wall in this run | ≥ 8 M/s |",
            x.threads,
            rate(x.parallel_path_ms),
            rate(x.parallel_ms)
        );
    }
    if let Some(v) = v {
        let rate = |c: veth::Config| v.rows.iter().find(|r| r.config == c).map(|r| r.rate);
        if let (Some(none), Some(pass), Some(fl)) = (rate(veth::Config::None), rate(veth::Config::PassTc), rate(veth::Config::FlowlogTc)) {
            println!(
                "| veth 64-byte flood, default TC hooks | | {:.2} M/s = {:.2}× the pass-only TC hooks ({:.0}% of no programs) | ≥ 0.95× |",
                fl / 1e6,
                fl / pass,
                fl / none * 100.0
            );
        }
    }
    if let Some(k) = k {
        let range = |pick: &dyn Fn(&kernel::Row) -> Option<f64>| {
            let xs: Vec<f64> = k.rows.iter().filter_map(pick).collect();
            let (lo, hi) = xs.iter().fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
            format!("{lo:.2}-{hi:.2}×")
        };
        println!(
            "| kernel, 1 flow (test_run) | | slots {} the minimal per-CPU program | ≤ 1.1× |",
            range(&|r| (r.flows == "1").then(|| r.cost.net_ratio()))
        );
        println!(
            "| kernel, 65,536 flows | | slots {} the hash table | ≤ 0.5× |",
            range(&|r| r.flows.starts_with("65,536").then(|| (r.cost.flowlog - r.cost.pass) / (r.cost.hash - r.cost.pass)))
        );
    }
    println!();
}

fn print_kernel(r: &kernel::Results) {
    println!("## 1. Kernel cost per packet (ns, BPF_PROG_TEST_RUN, median of {} runs)\n", r.rounds);
    println!(
        "60-byte IPv4 (64 on the wire) and 74-byte IPv6 (78) TCP frames. `pass` returns at once; `min` parses \
         and counts in a per-CPU hash; `flowlog` is the agent's program. Every column includes the driver and \
         its tail call: {:.1} ns (XDP), {:.1} ns (TC). \"added\" = minus `pass`: the program's own cost. \
         \"test_run ratio\" = flowlog / min without the driver, as BPF_PROG_TEST_RUN would report them \
         (its per-run overhead included).\n",
        r.driver_overhead_ns[0], r.driver_overhead_ns[1]
    );
    println!(
        "`slots` is the agent's programs with the slot table (the default from Linux 5.12), `hash` the same programs \
         with the hash table (before 5.12), loaded side by side with their own maps. \"vs hash\" = slots added / hash added.\n"
    );
    println!("| hook | family | flows | pass | min | hash | slots | min added | hash added | slots added | slots vs hash | hash / min | slots / min | slots test_run ratio |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in &r.rows {
        let c = row.cost;
        let driver = r.driver_overhead_ns[if row.hook == kernel::Hook::Xdp { 0 } else { 1 }];
        println!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2}× | {:.2}× | {:.2}× | {:.2}× |",
            row.hook.name(),
            row.family.name(),
            row.flows,
            c.pass,
            c.min,
            c.hash,
            c.flowlog,
            c.min - c.pass,
            c.hash - c.pass,
            c.flowlog - c.pass,
            (c.flowlog - c.pass) / (c.hash - c.pass),
            c.hash_net_ratio(),
            c.net_ratio(),
            (c.flowlog - driver) / (c.min - driver)
        );
    }
    println!();
    if r.cuts.is_empty() {
        return;
    }
    println!("### Where the slot-table programs' time goes (IPv4, ns per packet, median of {} runs)\n", r.rounds);
    println!(
        "The agent's programs loaded again with `BENCH_CUT`: they return after parsing, after the filters and the \
         sampling (none configured: one array lookup), or after reading the generation and the clock, just before \
         the flow's entry is written. Each part = the difference between two columns; `pass` includes the driver.\n"
    );
    println!("| hook | flows | pass | parse | + filters | + generation, clock | full | parse | filters | generation, clock | table entry |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for c in &r.cuts {
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            c.hook.name(),
            kernel::thousands(c.flows),
            c.pass,
            c.cuts[0],
            c.cuts[1],
            c.cuts[2],
            c.full,
            c.cuts[0] - c.pass,
            c.cuts[1] - c.cuts[0],
            c.cuts[2] - c.cuts[1],
            c.full - c.cuts[2]
        );
    }
    println!();
}
