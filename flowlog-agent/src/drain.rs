//! Reads the kernel flow tables once per window, exactly once per packet.
//!
//! The programs write to the generation named in `GENERATION`. To close a
//! window the agent writes the other generation there and then waits for an
//! RCU grace period ([`RcuBarrier`]): programs that read the old value have
//! finished, new ones use the new table. The old table is then quiescent, and
//! is read and emptied in one batched pass. Nothing a program counted can be
//! missed or read twice, and no entry is deleted while a CPU updates it.

use std::os::fd::AsFd;

use anyhow::{anyhow, Context, Result};
use aya::{
    maps::{Array, HashMap, IterableMap, MapData, PerCpuArray, PerCpuValues},
    Ebpf,
};
use flowlog_common::{counters, maps, FlowKey, FlowStats, InsertFailures};

use crate::{clock, sys};

/// Everything one window counted.
#[derive(Clone, Debug, Default)]
pub struct Drained {
    pub flows: Vec<(FlowKey, FlowStats)>,
    /// Failed inserts per ifindex.
    pub fails: Vec<(u32, InsertFailures)>,
    /// Failed inserts whose interface could not be recorded.
    pub unattributed_failures: u64,
    /// Add to kernel (boot clock) times to get Unix ns.
    pub boot_to_unix_ns: i128,
    pub window_start_unix_ns: u64,
    pub window_end_unix_ns: u64,
}

/// Cumulative per-CPU counters of the programs, summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    pub malformed: u64,
    pub non_ip: u64,
}

pub struct FlowTables {
    flows: [HashMap<MapData, FlowKey, FlowStats>; 2],
    fails: [HashMap<MapData, u32, InsertFailures>; 2],
    generation: Array<MapData, u32>,
    counters: PerCpuArray<MapData, u64>,
    barrier: sys::RcuBarrier,
    current: u32,
    window_start_unix_ns: u64,
    batch: usize,
}

fn take<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(ebpf: &mut Ebpf, name: &str) -> Result<T> {
    let map = ebpf.take_map(name).ok_or_else(|| anyhow!("eBPF object has no map {name}"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

impl FlowTables {
    /// Takes the maps out of a loaded object and starts the first window
    /// (generation 0). Call before attaching programs.
    pub fn new(ebpf: &mut Ebpf, batch: usize) -> Result<Self> {
        let mut generation: Array<MapData, u32> = take(ebpf, maps::GENERATION)?;
        generation.set(0, 0, 0).context("resetting the generation")?;
        let barrier = sys::RcuBarrier::new(generation.map().fd().as_fd())
            .context("creating the ARRAY_OF_MAPS used to wait for running programs")?;
        Ok(FlowTables {
            flows: [take(ebpf, maps::FLOWS_0)?, take(ebpf, maps::FLOWS_1)?],
            fails: [take(ebpf, maps::FAILS_0)?, take(ebpf, maps::FAILS_1)?],
            generation,
            counters: take(ebpf, maps::COUNTERS)?,
            barrier,
            current: 0,
            window_start_unix_ns: clock::unix_ns(),
            batch,
        })
    }

    /// Closes the current window and returns what it counted.
    pub fn rotate(&mut self) -> Result<Drained> {
        let (old, end, next_start) = self.flip()?;
        let d = self.drain_generation(old, end)?;
        self.window_start_unix_ns = next_start;
        Ok(d)
    }

    /// Final drain, after the programs are detached: both generations.
    pub fn drain_all(&mut self) -> Result<Drained> {
        let (old, end, next_start) = self.flip()?;
        let mut d = self.drain_generation(old, end)?;
        // Programs in flight during the flip may have used the new table.
        let late = self.drain_generation(1 - old, end)?;
        self.window_start_unix_ns = next_start;
        d.flows.extend(late.flows);
        d.fails.extend(late.fails);
        d.unattributed_failures += late.unattributed_failures;
        d.flows = merge_flows(d.flows);
        d.fails = merge_fails(d.fails);
        Ok(d)
    }

    /// Switches generation. Returns the old one, which no program uses any
    /// more, the end of the closed window and the start of the next one.
    fn flip(&mut self) -> Result<(u32, u64, u64)> {
        let old = self.current;
        let new = 1 - old;
        // Noted before the flip: packets of the next window are stamped later.
        let next_start = clock::unix_ns();
        self.generation.set(0, new, 0).context("switching generation")?;
        self.barrier.wait().context("waiting for running programs (synchronize_rcu)")?;
        self.current = new;
        Ok((old, clock::unix_ns(), next_start))
    }

    fn drain_generation(&mut self, g: u32, window_end_unix_ns: u64) -> Result<Drained> {
        let g = g as usize;
        let mut flows = Vec::new();
        sys::lookup_and_delete_all(self.flows[g].map().fd().as_fd(), self.batch, &mut flows)
            .context("draining the flow table")?;
        let mut fails = Vec::new();
        sys::lookup_and_delete_all(self.fails[g].map().fd().as_fd(), 1024, &mut fails)
            .context("draining the insert-failure table")?;
        let idx = if g == 0 { counters::UNATTRIBUTED_FAILS_0 } else { counters::UNATTRIBUTED_FAILS_1 };
        let per_cpu = self.counters.get(&idx, 0).context("reading counters")?;
        let unattributed: u64 = per_cpu.iter().sum();
        if unattributed > 0 {
            let zeros = PerCpuValues::try_from(vec![0u64; per_cpu.len()]).context("per-CPU zeros")?;
            self.counters.set(idx, zeros, 0).context("resetting counters")?;
        }
        let d = Drained {
            flows,
            fails,
            unattributed_failures: unattributed,
            boot_to_unix_ns: clock::boot_to_unix_offset_ns(),
            window_start_unix_ns: self.window_start_unix_ns,
            window_end_unix_ns,
        };
        Ok(d)
    }

    pub fn counters(&self) -> Result<KernelCounters> {
        let sum = |i: u32| -> Result<u64> { Ok(self.counters.get(&i, 0)?.iter().sum()) };
        Ok(KernelCounters { malformed: sum(counters::MALFORMED)?, non_ip: sum(counters::NON_IP)? })
    }
}

/// The final drain reads two tables that may hold the same flow.
fn merge_flows(v: Vec<(FlowKey, FlowStats)>) -> Vec<(FlowKey, FlowStats)> {
    let mut m: std::collections::BTreeMap<FlowKey, FlowStats> = Default::default();
    for (k, s) in v {
        m.entry(k)
            .and_modify(|e| {
                e.packets += s.packets;
                e.bytes += s.bytes;
                e.first_seen_ns = e.first_seen_ns.min(s.first_seen_ns);
                e.last_seen_ns = e.last_seen_ns.max(s.last_seen_ns);
                e.tcp_flags |= s.tcp_flags;
            })
            .or_insert(s);
    }
    m.into_iter().collect()
}

fn merge_fails(v: Vec<(u32, InsertFailures)>) -> Vec<(u32, InsertFailures)> {
    let mut m: std::collections::BTreeMap<u32, InsertFailures> = Default::default();
    for (k, s) in v {
        let e = m.entry(k).or_default();
        e.packets += s.packets;
        e.bytes += s.bytes;
    }
    m.into_iter().collect()
}
