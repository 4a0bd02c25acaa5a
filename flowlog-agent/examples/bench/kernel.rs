//! Benchmark 1: kernel cost per packet, with BPF_PROG_TEST_RUN.
//!
//! Method: the bench object's driver program (`bench_{xdp,tc}_driver`)
//! rewrites the TCP source port of the test frame to the next of `flows`
//! values and tail-calls the program under test: `pass` (returns at once),
//! `min` (minimal parse + per-CPU hash count) or the agent's own
//! `flowlog_ingress`/`flowlog_egress`, unchanged, with their real maps. One
//! test_run with `repeat` = a multiple of `flows` so runs whole cycles of
//! distinct flows inside the kernel, with no syscall between packets. The
//! cost per packet is the calling thread's CPU time over the call divided by
//! `repeat` (sub-ns resolution; the kernel's own `duration` is rounded down
//! to whole ns). Driver and tail call are paid by all three programs alike,
//! so they cancel out in "added over pass".
//!
//! Both flow tables in one run: `flowlog` is the agent's programs loaded
//! with the slot table (the default where the kernel has compare-and-
//! exchange), `hash` the same programs loaded a second time with the hash
//! table (the default before 5.12), each with its own maps.
//!
//! Steady state: every flow is already in the table (a warm-up cycle first),
//! as for all packets of a flow but its first in a window. "New flows": one
//! cycle of 65,536 flows over an empty table, every packet inserts.

use anyhow::{anyhow, ensure, Context, Result};
use aya::{
    maps::{Array, MapData, PerCpuHashMap, ProgramArray},
    programs::{Program, SchedClassifier, TestRun, TestRunOptions, Xdp},
    Ebpf, EbpfLoader,
};
use flowlog_agent::{
    bpf::TableKind,
    capture::{Capture, EGRESS_PROGRAM, INGRESS_PROGRAM},
    drain::FlowTables,
};
use flowlog_common::FlowKey;

use crate::util::{median, tcp_frame, thread_cpu_ns, Family};

pub static BENCH_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/flowlog-bench.bpf.o"));

const XDP_PASS: u32 = 2;
const TC_ACT_UNSPEC: u32 = u32::MAX;
/// The agent's default `--max-flows`; the min program's map has the same size.
const MAX_FLOWS: u32 = 65_536;
/// Packets per test_run call: about 5-30 ms per call.
const PACKETS_PER_CALL: usize = 262_144;
pub const FLOW_COUNTS: [usize; 3] = [1, 1_000, 65_536];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Xdp,
    Tc,
}

impl Hook {
    pub fn name(self) -> &'static str {
        match self {
            Hook::Xdp => "XDP",
            Hook::Tc => "TC",
        }
    }
}

/// The programs a driver can tail-call, by slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prog {
    Pass = 0,
    Min = 1,
    Flowlog = 2,
    /// The agent's programs with the hash table.
    Hash = 3,
}

pub const PROGS: [Prog; 4] = [Prog::Pass, Prog::Min, Prog::Flowlog, Prog::Hash];

/// ns/packet of the three programs in one setting.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cost {
    pub pass: f64,
    pub min: f64,
    pub flowlog: f64,
    pub hash: f64,
}

impl Cost {
    fn set(&mut self, p: Prog, v: f64) {
        match p {
            Prog::Pass => self.pass = v,
            Prog::Min => self.min = v,
            Prog::Flowlog => self.flowlog = v,
            Prog::Hash => self.hash = v,
        }
    }
    /// Added cost over `pass`, flowlog / min.
    pub fn net_ratio(&self) -> f64 {
        (self.flowlog - self.pass) / (self.min - self.pass)
    }
    /// The same for the hash table.
    pub fn hash_net_ratio(&self) -> f64 {
        (self.hash - self.pass) / (self.min - self.pass)
    }
}

#[derive(Clone, Debug)]
pub struct Row {
    pub family: Family,
    pub hook: Hook,
    /// "1", "1,000", "65,536", or "65,536 new".
    pub flows: String,
    pub cost: Cost,
}

pub struct Results {
    pub rows: Vec<Row>,
    /// Driver + tail call, measured as pass-through-driver minus pass run
    /// directly on one frame (IPv4, XDP and TC).
    pub driver_overhead_ns: [f64; 2],
    pub rounds: usize,
    pub cuts: Vec<CutRow>,
}

#[allow(dead_code)] // `prod` is only held, never read.
struct Harness {
    // Owns the agent's programs, which the tail-call arrays point to.
    prod: Capture,
    tables: FlowTables,
    prod_hash: Capture,
    hash_tables: FlowTables,
    bench: Ebpf,
    driver: Array<MapData, [u32; 4]>,
    min_flows: PerCpuHashMap<MapData, FlowKey, [u64; 2]>,
    // Hold the tail-call targets (and take the cut programs, `run_cuts`).
    xdp_targets: ProgramArray<MapData>,
    tc_targets: ProgramArray<MapData>,
    /// Program runs since the tables were last emptied, per slot.
    runs: [u64; 4],
}

fn xdp(p: &mut Program) -> Result<&mut Xdp> {
    Ok(p.try_into()?)
}
fn tc(p: &mut Program) -> Result<&mut SchedClassifier> {
    Ok(p.try_into()?)
}

impl Harness {
    fn load() -> Result<Harness> {
        ensure!(
            !BENCH_OBJECT.is_empty(),
            "the benchmark programs were not built (FLOWLOG_EBPF_OBJECT embeds a prebuilt agent object only); \
             unset FLOWLOG_EBPF_OBJECT to build them"
        );
        let (mut prod, tables) = Capture::loader(MAX_FLOWS).table(TableKind::Slots).load()?;
        let (mut prod_hash, hash_tables) = Capture::loader(MAX_FLOWS).table(TableKind::Hash).load()?;
        let mut bench = EbpfLoader::new().load(BENCH_OBJECT).context("loading the benchmark object")?;
        for name in ["bench_xdp_pass", "bench_xdp_min", "bench_xdp_driver"] {
            xdp(bench.program_mut(name).ok_or_else(|| anyhow!("no program {name}"))?)?.load()?;
        }
        for name in ["bench_tc_pass", "bench_tc_min", "bench_tc_driver"] {
            tc(bench.program_mut(name).ok_or_else(|| anyhow!("no program {name}"))?)?.load()?;
        }
        let mut xdp_targets = ProgramArray::try_from(bench.take_map("XDP_TARGETS").context("XDP_TARGETS")?)?;
        let mut tc_targets = ProgramArray::try_from(bench.take_map("TC_TARGETS").context("TC_TARGETS")?)?;
        xdp_targets.set(Prog::Pass as u32, xdp(bench.program_mut("bench_xdp_pass").unwrap())?.fd()?, 0)?;
        xdp_targets.set(Prog::Min as u32, xdp(bench.program_mut("bench_xdp_min").unwrap())?.fd()?, 0)?;
        // XDP is verified on first use (Capture::xdp_program).
        prod.xdp_program()?;
        xdp_targets.set(Prog::Flowlog as u32, xdp(prod.ebpf_mut().program_mut(INGRESS_PROGRAM).unwrap())?.fd()?, 0)?;
        prod_hash.xdp_program()?;
        xdp_targets.set(Prog::Hash as u32, xdp(prod_hash.ebpf_mut().program_mut(INGRESS_PROGRAM).unwrap())?.fd()?, 0)?;
        tc_targets.set(Prog::Pass as u32, tc(bench.program_mut("bench_tc_pass").unwrap())?.fd()?, 0)?;
        tc_targets.set(Prog::Min as u32, tc(bench.program_mut("bench_tc_min").unwrap())?.fd()?, 0)?;
        tc_targets.set(Prog::Flowlog as u32, tc(prod.ebpf_mut().program_mut(EGRESS_PROGRAM).unwrap())?.fd()?, 0)?;
        tc_targets.set(Prog::Hash as u32, tc(prod_hash.ebpf_mut().program_mut(EGRESS_PROGRAM).unwrap())?.fd()?, 0)?;
        let driver = Array::try_from(bench.take_map("DRIVER").context("DRIVER")?)?;
        let min_flows = PerCpuHashMap::try_from(bench.take_map("MIN_FLOWS").context("MIN_FLOWS")?)?;
        Ok(Harness {
            prod,
            tables,
            prod_hash,
            hash_tables,
            bench,
            driver,
            min_flows,
            xdp_targets,
            tc_targets,
            runs: [0; 4],
        })
    }

    /// Runs `prog` through the driver over `flows` distinct flows, `repeat`
    /// packets; returns CPU ns per packet.
    fn run(&mut self, hook: Hook, family: Family, prog: Prog, flows: usize, repeat: usize) -> Result<f64> {
        debug_assert_eq!(repeat % flows, 0, "whole cycles of flows");
        self.driver.set(0, [flows as u32, family.sport_offset(), prog as u32, 0], 0)?;
        let frame = tcp_frame(family, [2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1], 0);
        let opts = TestRunOptions { data_in: Some(&frame), repeat: repeat as u32, ..TestRunOptions::new() };
        let (name, want) = match hook {
            Hook::Xdp => ("bench_xdp_driver", XDP_PASS),
            Hook::Tc => ("bench_tc_driver", TC_ACT_UNSPEC),
        };
        let p = self.bench.program_mut(name).unwrap();
        let t0 = thread_cpu_ns();
        let r = match hook {
            Hook::Xdp => xdp(p)?.test_run(opts)?,
            Hook::Tc => tc(p)?.test_run(opts)?,
        };
        let t1 = thread_cpu_ns();
        // A failed tail call returns XDP_ABORTED / TC_ACT_SHOT instead.
        ensure!(r.return_value == want, "{} driver returned {} (tail call failed?)", hook.name(), r.return_value);
        self.runs[prog as usize] += repeat as u64;
        Ok((t1 - t0) as f64 / repeat as f64)
    }

    /// The pass program run directly on one frame, without driver.
    fn run_direct_pass(&mut self, hook: Hook, repeat: usize) -> Result<f64> {
        let frame = tcp_frame(Family::V4, [2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1], 1);
        let opts = TestRunOptions { data_in: Some(&frame), repeat: repeat as u32, ..TestRunOptions::new() };
        let t0 = thread_cpu_ns();
        match hook {
            Hook::Xdp => xdp(self.bench.program_mut("bench_xdp_pass").unwrap())?.test_run(opts)?,
            Hook::Tc => tc(self.bench.program_mut("bench_tc_pass").unwrap())?.test_run(opts)?,
        };
        Ok((thread_cpu_ns() - t0) as f64 / repeat as f64)
    }

    /// Empties both flow tables and checks what the runs since the last
    /// check counted: exactly one packet per run, nothing lost. Returns the
    /// number of flows the agent's table held.
    fn check_and_clear(&mut self, family: Family, hook: Hook) -> Result<usize> {
        let mut stored = 0;
        for (prog, tables) in [(Prog::Flowlog, &mut self.tables), (Prog::Hash, &mut self.hash_tables)] {
            let d = tables.rotate()?;
            tables.release(&d)?;
            let packets: u64 = d.flows.iter().map(|(_, s)| s.packets).sum();
            ensure!(
                d.fails.is_empty() && d.unattributed_failures == 0,
                "flow table insert failures during the benchmark ({:?}): {:?}",
                tables.kind(),
                d.fails
            );
            ensure!(
                packets == self.runs[prog as usize],
                "{} {}: flowlog ({:?}) counted {packets} packets for {} runs",
                family.name(),
                hook.name(),
                tables.kind(),
                self.runs[prog as usize]
            );
            if prog == Prog::Flowlog {
                stored = d.flows.len();
            } else {
                ensure!(d.flows.len() == stored, "the hash table holds {} flows, the slot table {stored}", d.flows.len());
            }
        }
        let keys: Vec<FlowKey> = self.min_flows.keys().collect::<Result<_, _>>()?;
        let mut min_packets = 0u64;
        for k in &keys {
            min_packets += self.min_flows.get(k, 0)?.iter().map(|v| v[0]).sum::<u64>();
            self.min_flows.remove(k)?;
        }
        ensure!(
            min_packets == self.runs[Prog::Min as usize],
            "min program counted {min_packets} packets for {} runs",
            self.runs[Prog::Min as usize]
        );
        self.runs = [0; 4];
        Ok(stored)
    }
}

pub fn run(rounds: usize) -> Result<Results> {
    let mut h = Harness::load()?;
    let mut results = run_with(&mut h, rounds)?;
    results.cuts = run_cuts(&mut h, rounds)?;
    Ok(results)
}

/// Where the slot-table programs' time goes (issue #22, item 2): the
/// agent's programs loaded again with `BENCH_CUT` (flowlog_common::bench_cut)
/// stop after parsing, after the filters, or just before the table; each
/// part's cost is the difference between two cuts.
#[derive(Clone, Debug)]
pub struct CutRow {
    pub hook: Hook,
    pub flows: usize,
    pub pass: f64,
    /// After parse, after the filters, before the table.
    pub cuts: [f64; 3],
    pub full: f64,
}

pub const CUTS: [(u32, &str); 3] = [
    (flowlog_common::bench_cut::AFTER_PARSE, "parse"),
    (flowlog_common::bench_cut::AFTER_FILTERS, "+ filters and sampling"),
    (flowlog_common::bench_cut::BEFORE_TABLE, "+ generation and clock"),
];

fn run_cuts(h: &mut Harness, rounds: usize) -> Result<Vec<CutRow>> {
    eprintln!("    program parts (BENCH_CUT)");
    let mut cut_progs = Vec::new();
    for (cut, _) in CUTS {
        let (mut c, _tables) =
            Capture::loader(MAX_FLOWS).table(TableKind::Slots).bench_cut(cut).load()?;
        c.xdp_program()?;
        cut_progs.push(c);
    }
    let mut rows = Vec::new();
    for hook in [Hook::Xdp, Hook::Tc] {
        for flows in [1, MAX_FLOWS as usize] {
            let repeat = (PACKETS_PER_CALL / flows).max(1) * flows;
            let mut samples: [Vec<f64>; 5] = Default::default();
            for _ in 0..rounds {
                samples[0].push(h.run(hook, Family::V4, Prog::Pass, flows, repeat)?);
                samples[4].push(h.run(hook, Family::V4, Prog::Flowlog, flows, repeat)?);
                for (i, c) in cut_progs.iter_mut().enumerate() {
                    // Each cut program in turn in the hash table's slot.
                    match hook {
                        Hook::Xdp => {
                            let fd = xdp(c.ebpf_mut().program_mut(INGRESS_PROGRAM).unwrap())?.fd()?;
                            h.xdp_targets.set(Prog::Hash as u32, fd, 0)?;
                        }
                        Hook::Tc => {
                            let fd = tc(c.ebpf_mut().program_mut(EGRESS_PROGRAM).unwrap())?.fd()?;
                            h.tc_targets.set(Prog::Hash as u32, fd, 0)?;
                        }
                    }
                    samples[1 + i].push(h.run(hook, Family::V4, Prog::Hash, flows, repeat)?);
                }
            }
            let m = samples.map(|mut s| median(&mut s));
            rows.push(CutRow { hook, flows, pass: m[0], cuts: [m[1], m[2], m[3]], full: m[4] });
        }
        // The full program counted every packet it ran (per hook: the two
        // directions' flows would not fit one table); the cut ones never
        // reach a table (their own, unused: nothing to check there).
        let d = h.tables.rotate()?;
        h.tables.release(&d)?;
        let packets: u64 = d.flows.iter().map(|(_, s)| s.packets).sum();
        let runs = std::mem::take(&mut h.runs[Prog::Flowlog as usize]);
        ensure!(d.fails.is_empty() && packets == runs, "flowlog counted {packets} packets for {runs} runs ({:?})", d.fails);
    }
    Ok(rows)
}

fn run_with(h: &mut Harness, rounds: usize) -> Result<Results> {
    let mut rows = Vec::new();
    // The generation flip leaves the next table empty; start from there.
    h.check_and_clear(Family::V4, Hook::Xdp)?;

    // Calibration: what the driver and the tail call add to every program.
    let mut driver_overhead_ns = [0.0; 2];
    for (i, hook) in [Hook::Xdp, Hook::Tc].into_iter().enumerate() {
        let mut via = Vec::new();
        let mut direct = Vec::new();
        for _ in 0..rounds {
            via.push(h.run(hook, Family::V4, Prog::Pass, 1, PACKETS_PER_CALL)?);
            direct.push(h.run_direct_pass(hook, PACKETS_PER_CALL)?);
        }
        driver_overhead_ns[i] = median(&mut via) - median(&mut direct);
    }

    for family in [Family::V4, Family::V6] {
        for hook in [Hook::Xdp, Hook::Tc] {
            eprintln!("    {} {}", family.name(), hook.name());
            // New flows: each sample over empty tables.
            let n = MAX_FLOWS as usize;
            let mut samples: [Vec<f64>; 4] = Default::default();
            for _ in 0..rounds.min(5) {
                for p in PROGS {
                    samples[p as usize].push(h.run(hook, family, p, n, n)?);
                }
                let table = h.check_and_clear(family, hook)?;
                ensure!(table == n, "expected {n} flows in the table, found {table}");
            }
            let mut insert = Cost::default();
            for p in PROGS {
                insert.set(p, median(&mut samples[p as usize]));
            }

            // Steady state, growing flow sets (each contains the previous).
            for flows in FLOW_COUNTS {
                let repeat = (PACKETS_PER_CALL / flows).max(1) * flows;
                // Warm-up: every flow in the tables, caches and branch
                // predictors trained; not counted.
                for p in PROGS {
                    h.run(hook, family, p, flows, repeat)?;
                }
                let mut samples: [Vec<f64>; 4] = Default::default();
                // Rounds interleave the programs, so a change of machine load
                // hits all three alike.
                for _ in 0..rounds {
                    for p in PROGS {
                        samples[p as usize].push(h.run(hook, family, p, flows, repeat)?);
                    }
                }
                let mut cost = Cost::default();
                for p in PROGS {
                    cost.set(p, median(&mut samples[p as usize]));
                }
                rows.push(Row { family, hook, flows: thousands(flows), cost });
            }
            rows.push(Row { family, hook, flows: format!("{} new", thousands(n)), cost: insert });
            let table = h.check_and_clear(family, hook)?;
            ensure!(table == n, "expected {n} flows in the table, found {table}");
        }
    }
    Ok(Results { rows, driver_overhead_ns, rounds, cuts: Vec::new() })
}

pub fn thousands(n: usize) -> String {
    let digits = n.to_string().into_bytes();
    let groups: Vec<&[u8]> = digits.rchunks(3).rev().collect();
    String::from_utf8(groups.join(&b","[..])).unwrap()
}
