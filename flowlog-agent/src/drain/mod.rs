//! The drain stage: reads the kernel flow tables once per window, exactly
//! once per packet ([`sys`] has the raw `bpf()` calls aya lacks, [`clock`]
//! turns kernel times into Unix time; both in the base [`crate::bpf`]).
//!
//! The programs write to the generation named in `GENERATION[0]`. To close a
//! window the agent writes the other generation there and then waits for an
//! RCU grace period ([`sys::RcuBarrier`]): programs that read the old value have
//! finished, new ones use the new table. The old table is then quiescent: it
//! is read in batches, the records are shipped, and only then is it emptied
//! ([`FlowTables::release`]). An agent killed between reading and releasing
//! leaves the entries in place, and the next agent reports them (at worst a
//! window reported twice, never lost).
//!
//! Two kinds of table ([`TableKind`]): the hash table is read with batched
//! `bpf()` lookups and emptied by deleting the keys read; the slot table is
//! read straight from an `mmap` of the array (no syscall per flow), its
//! duplicate slots of one flow (racing inserts) added together, and emptied
//! by zeroing the slots read, through the mapping again.

use std::os::fd::AsFd;

use anyhow::{anyhow, Context, Result};
use aya::{
    maps::{Array, HashMap, IterableMap, MapData, PerCpuArray, PerCpuValues},
    Ebpf,
};
use flowlog_common::{counters, maps, FlowKey, FlowSlot, FlowStats, InsertFailures, RejectKey, GENERATION_GRACE, SLOT_PROBES};

use crate::bpf::{clock, sys, TableKind};

pub mod live;


/// Everything one window counted.
#[derive(Clone, Debug, Default)]
pub struct Drained {
    pub flows: Vec<(FlowKey, FlowStats)>,
    /// REJECT counts (see [`crate::capture::reject`]). Packets moved here from an
    /// ingress ACCEPT entry are no longer in `flows`, whose entries may be
    /// left with 0 packets.
    pub rejects: Vec<(RejectKey, FlowStats)>,
    /// Failed inserts per ifindex.
    pub fails: Vec<(u32, InsertFailures)>,
    /// Failed inserts whose interface could not be recorded.
    pub unattributed_failures: u64,
    /// Add to kernel (CLOCK_MONOTONIC) times to get Unix ns.
    pub kernel_to_unix_ns: i128,
    pub window_start_unix_ns: u64,
    pub window_end_unix_ns: u64,
    /// What to delete once the records are safe: per generation, the keys read.
    read: Vec<Read>,
}

impl Drained {
    /// A window's counts without kernel tables behind them (tests, benchmarks).
    pub fn from_parts(
        flows: Vec<(FlowKey, FlowStats)>,
        fails: Vec<(u32, InsertFailures)>,
        unattributed_failures: u64,
        kernel_to_unix_ns: i128,
        window_start_unix_ns: u64,
        window_end_unix_ns: u64,
    ) -> Self {
        Drained { flows, rejects: vec![], fails, unattributed_failures, kernel_to_unix_ns, window_start_unix_ns, window_end_unix_ns, read: vec![] }
    }

    /// Adds REJECT counts to a window built with [`Drained::from_parts`].
    pub fn with_rejects(mut self, rejects: Vec<(RejectKey, FlowStats)>) -> Self {
        self.rejects = rejects;
        self
    }
}

#[derive(Clone, Debug, Default)]
struct Read {
    generation: u32,
    flow_keys: Vec<FlowKey>,
    /// Slot table: the indexes of the slots read (ascending), zeroed on release.
    slots: Vec<u32>,
    reject_keys: Vec<RejectKey>,
    fail_keys: Vec<u32>,
    unattributed: bool,
}

/// Cumulative per-CPU counters of the programs, summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    pub malformed: u64,
    pub non_ip: u64,
    pub filtered: u64,
    pub sampled_out: u64,
    /// See [`counters::REJECT_NOT_MOVED`].
    pub reject_not_moved: u64,
    /// See [`counters::REJECT_UNPARSED`].
    pub reject_unparsed: u64,
}

/// The flow tables of both generations.
enum Flows {
    Hash([HashMap<MapData, FlowKey, FlowStats>; 2]),
    /// Read and zeroed through mmap: no syscall per flow.
    Slots { tables: [Array<MapData, FlowSlot>; 2], capacity: u32, clock: Array<MapData, u64> },
}

/// Slots mapped at a time while reading or zeroing (4 MiB): the agent's
/// resident memory grows by one chunk, not by the table.
const CHUNK_SLOTS: usize = 65_536;

pub struct FlowTables {
    flows: Flows,
    fails: [HashMap<MapData, u32, InsertFailures>; 2],
    rejects: [HashMap<MapData, RejectKey, FlowStats>; 2],
    generation: Array<MapData, u32>,
    counters: PerCpuArray<MapData, u64>,
    barrier: sys::RcuBarrier,
    current: u32,
    window_start_unix_ns: u64,
    batch: usize,
    /// A shipped window's vectors, emptied, for the next one to read into
    /// ([`FlowTables::recycle`]).
    spare: Spare,
}

/// See [`FlowTables::recycle`].
#[derive(Default)]
struct Spare {
    flows: Vec<(FlowKey, FlowStats)>,
    slots: Vec<u32>,
}

fn take<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(ebpf: &mut Ebpf, name: &str) -> Result<T> {
    let map = ebpf.take_map(name).ok_or_else(|| anyhow!("eBPF object has no map {name}"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

const NS: u64 = 1_000_000_000;

impl FlowTables {
    /// Takes the maps out of a loaded object. With fresh maps the first
    /// window starts now in generation 0; with maps reused from a previous
    /// agent (pinned), it goes on in the generation and window that agent
    /// left.
    pub fn new(ebpf: &mut Ebpf, batch: usize, kind: TableKind, capacity: u32) -> Result<Self> {
        let mut generation: Array<MapData, u32> = take(ebpf, maps::GENERATION)?;
        let current = generation.get(&0, 0).context("reading the generation")? & 1;
        let last_flip = generation.get(&1, 0).context("reading the generation")? as u64;
        let now = clock::unix_ns();
        let window_start_unix_ns = if last_flip > 0 && last_flip * NS <= now { last_flip * NS } else { now };
        let barrier = sys::RcuBarrier::new(generation.map().fd().as_fd())
            .context("creating the ARRAY_OF_MAPS used to wait for running programs")?;
        // A previous agent may have died in the middle of a flip: with the
        // drop program's grace still set, or with programs that read the old
        // generation still running. Clear the grace, then wait for every
        // running program, before anything is read.
        let grace = generation.get(&GENERATION_GRACE, 0).context("reading the generation")?;
        if grace != 0 {
            tracing::warn!("a previous agent stopped in the middle of a window flip: finishing it");
            generation.set(GENERATION_GRACE, 0, 0).context("resetting the flip state")?;
        }
        if generation.get(&0, 0).context("reading the generation")? > 1 {
            generation.set(0, current, 0).context("resetting the generation")?;
        }
        barrier.wait().context("waiting for running programs (synchronize_rcu)")?;
        let flows = match kind {
            TableKind::Hash => Flows::Hash([take(ebpf, maps::FLOWS_0)?, take(ebpf, maps::FLOWS_1)?]),
            TableKind::Slots => {
                let mut clock: Array<MapData, u64> = take(ebpf, maps::SLOT_CLOCK)?;
                // Fresh maps: the open window's slot times count from now.
                if clock.get(&current, 0).context("reading the slot clock")? == 0 {
                    clock.set(current, slot_base(window_start_unix_ns), 0).context("setting the slot clock")?;
                }
                Flows::Slots { tables: [take(ebpf, maps::SLOTS_0)?, take(ebpf, maps::SLOTS_1)?], capacity, clock }
            }
        };
        Ok(FlowTables {
            flows,
            fails: [take(ebpf, maps::FAILS_0)?, take(ebpf, maps::FAILS_1)?],
            rejects: [take(ebpf, maps::REJECTS_0)?, take(ebpf, maps::REJECTS_1)?],
            generation,
            counters: take(ebpf, maps::COUNTERS)?,
            barrier,
            current,
            window_start_unix_ns,
            batch,
            spare: Spare::default(),
        })
    }

    /// The flow table behind these tables.
    pub fn kind(&self) -> TableKind {
        match self.flows {
            Flows::Hash(_) => TableKind::Hash,
            Flows::Slots { .. } => TableKind::Slots,
        }
    }

    /// Slots per generation (slot table), else `None`.
    pub fn slot_capacity(&self) -> Option<u32> {
        match self.flows {
            Flows::Hash(_) => None,
            Flows::Slots { capacity, .. } => Some(capacity),
        }
    }

    /// Entries a previous agent read but did not release (it died while
    /// shipping them). Window bounds are those of the packets found.
    pub fn leftover(&mut self) -> Result<Option<Drained>> {
        let idle = 1 - self.current;
        let mut d = self.read_generation(idle, 0, 0)?;
        if d.flows.is_empty() && d.rejects.is_empty() && d.fails.is_empty() && d.unattributed_failures == 0 {
            return Ok(None);
        }
        let stats = || d.flows.iter().map(|f| &f.1).chain(d.rejects.iter().map(|r| &r.1));
        let first = stats().map(|s| s.first_seen_ns).min();
        let last = stats().map(|s| s.last_seen_ns).max();
        let to_unix = |t: u64| (t as i128 + d.kernel_to_unix_ns).max(0) as u64;
        d.window_start_unix_ns = first.map_or(self.window_start_unix_ns, to_unix).min(self.window_start_unix_ns);
        d.window_end_unix_ns = last.map_or(self.window_start_unix_ns, to_unix).max(d.window_start_unix_ns);
        Ok(Some(d))
    }

    /// Closes the current window and reads what it counted. Call
    /// [`FlowTables::release`] once the records are shipped, before the next
    /// rotation.
    pub fn rotate(&mut self) -> Result<Drained> {
        let (old, end, next_start) = self.flip()?;
        let d = self.read_generation(old, self.window_start_unix_ns, end)?;
        self.window_start_unix_ns = next_start;
        Ok(d)
    }

    /// Final drain, after the programs are detached: both generations.
    pub fn drain_all(&mut self) -> Result<Drained> {
        let (old, end, next_start) = self.flip()?;
        let mut d = self.read_generation(old, self.window_start_unix_ns, end)?;
        // Programs in flight during the flip may have used the new table.
        let late = self.read_generation(1 - old, self.window_start_unix_ns, end)?;
        self.window_start_unix_ns = next_start;
        d.flows.extend(late.flows);
        d.rejects.extend(late.rejects);
        d.fails.extend(late.fails);
        d.unattributed_failures += late.unattributed_failures;
        d.read.extend(late.read);
        d.flows = merge_flows(d.flows);
        d.rejects = merge_flows(d.rejects);
        d.fails = merge_fails(d.fails);
        Ok(d)
    }

    /// Empties what `d` was read from: its records are safe now.
    pub fn release(&mut self, d: &Drained) -> Result<()> {
        for r in &d.read {
            let g = r.generation as usize;
            match &self.flows {
                Flows::Hash(t) => sys::delete_keys(t[g].map().fd().as_fd(), &r.flow_keys).context("emptying the flow table")?,
                Flows::Slots { tables, capacity, .. } => {
                    zero_slots(tables[g].map().fd().as_fd(), *capacity, &r.slots).context("emptying the slot table")?
                }
            }
            sys::delete_keys(self.rejects[g].map().fd().as_fd(), &r.reject_keys).context("emptying the REJECT table")?;
            sys::delete_keys(self.fails[g].map().fd().as_fd(), &r.fail_keys).context("emptying the failure table")?;
            if r.unattributed {
                let idx = unattributed_index(r.generation);
                let n = self.counters.get(&idx, 0)?.len();
                let zeros = PerCpuValues::try_from(vec![0u64; n]).context("per-CPU zeros")?;
                self.counters.set(idx, zeros, 0).context("resetting counters")?;
            }
        }
        Ok(())
    }

    /// Takes back a window's vectors once it is shipped (and released, or
    /// left in the kernel): the next window reads into them, not into fresh
    /// pages that fault in 4 KiB at a time (1-2 ms of a 100,000-flow drain:
    /// BENCHMARKS.md, #22). They stay the size of the largest window read
    /// (88 bytes per flow, so at most about 88 bytes × `max-flows`).
    pub fn recycle(&mut self, mut d: Drained) {
        d.flows.clear();
        let mut slots = d.read.into_iter().next().map(|r| r.slots).unwrap_or_default();
        slots.clear();
        self.spare = Spare { flows: d.flows, slots };
    }

    /// Switches generation. Returns the old one, which no program uses any
    /// more, the end of the closed window and the start of the next one.
    fn flip(&mut self) -> Result<(u32, u64, u64)> {
        let old = self.current;
        let new = 1 - old;
        // Noted before the flip: packets of the next window are stamped later.
        let next_start = clock::unix_ns();
        if let Flows::Slots { clock, .. } = &mut self.flows {
            clock.set(new, slot_base(next_start), 0).context("setting the slot clock")?;
        }
        // The drop program may still take ACCEPT counts back from the old
        // generation until the second barrier (see `reject`).
        self.generation.set(GENERATION_GRACE, old + 1, 0).context("switching generation")?;
        self.generation.set(0, new, 0).context("switching generation")?;
        self.generation.set(1, (next_start / NS) as u32, 0).context("noting the flip time")?;
        self.barrier.wait().context("waiting for running programs (synchronize_rcu)")?;
        self.generation.set(GENERATION_GRACE, 0, 0).context("switching generation")?;
        self.barrier.wait().context("waiting for running programs (synchronize_rcu)")?;
        self.current = new;
        Ok((old, clock::unix_ns(), next_start))
    }

    fn read_generation(&mut self, g: u32, window_start_unix_ns: u64, window_end_unix_ns: u64) -> Result<Drained> {
        let i = g as usize;
        let Spare { mut flows, mut slots } = std::mem::take(&mut self.spare);
        match &self.flows {
            Flows::Hash(t) => sys::lookup_all(t[i].map().fd().as_fd(), self.batch, &mut flows).context("reading the flow table")?,
            Flows::Slots { tables, capacity, clock } => {
                let base = clock.get(&g, 0).context("reading the slot clock")?;
                // As many as the table may hold: pages never written cost no
                // memory, and grown by doubling, the copies and the freed
                // halves were 12 MiB of the agent's peak at a million flows
                // (BENCHMARKS.md, #22).
                flows.reserve(*capacity as usize / 2);
                slots.reserve(*capacity as usize / 2);
                read_slots(tables[i].map().fd().as_fd(), *capacity, base, &mut flows, &mut slots).context("reading the slot table")?;
            }
        }
        let mut fails = Vec::new();
        sys::lookup_all(self.fails[i].map().fd().as_fd(), 1024, &mut fails).context("reading the failure table")?;
        let mut rejects = Vec::new();
        sys::lookup_all(self.rejects[i].map().fd().as_fd(), self.batch, &mut rejects).context("reading the REJECT table")?;
        let unattributed: u64 = self.counters.get(&unattributed_index(g), 0).context("reading counters")?.iter().sum();
        let read = Read {
            generation: g,
            flow_keys: if slots.is_empty() { flows.iter().map(|f: &(FlowKey, FlowStats)| f.0).collect() } else { vec![] },
            slots,
            reject_keys: rejects.iter().map(|f: &(RejectKey, FlowStats)| f.0).collect(),
            fail_keys: fails.iter().map(|f: &(u32, InsertFailures)| f.0).collect(),
            unattributed: unattributed > 0,
        };
        Ok(Drained {
            flows,
            rejects,
            fails,
            unattributed_failures: unattributed,
            kernel_to_unix_ns: clock::kernel_to_unix_offset_ns(),
            window_start_unix_ns,
            window_end_unix_ns,
            read: vec![read],
        })
    }

    pub fn counters(&self) -> Result<KernelCounters> {
        let sum = |i: u32| -> Result<u64> { Ok(self.counters.get(&i, 0)?.iter().sum()) };
        Ok(KernelCounters {
            malformed: sum(counters::MALFORMED)?,
            non_ip: sum(counters::NON_IP)?,
            filtered: sum(counters::FILTERED)?,
            sampled_out: sum(counters::SAMPLED_OUT)?,
            reject_not_moved: sum(counters::REJECT_NOT_MOVED)?,
            reject_unparsed: sum(counters::REJECT_UNPARSED)?,
        })
    }
}

/// CLOCK_MONOTONIC ns of the Unix second that holds `unix_ns`' instant (or
/// began just before it): slot times count whole seconds from there, so they
/// are whole Unix seconds too.
fn slot_base(unix_ns: u64) -> u64 {
    let off = clock::kernel_to_unix_offset_ns();
    let mono = unix_ns as i128 - off;
    (mono - (unix_ns % NS) as i128).max(1) as u64
}

/// Reads every published slot of a table (quiescent, or the live one, read
/// only); duplicate slots of one flow (two CPUs inserted it at once) are
/// added together.
fn read_slots(fd: std::os::fd::BorrowedFd<'_>, capacity: u32, base: u64, out: &mut Vec<(FlowKey, FlowStats)>, idx: &mut Vec<u32>) -> std::io::Result<()> {
    let cap = capacity as usize;
    let first = out.len();
    let mut dups = Vec::new();
    let mut start = 0;
    // Half a second into the slot's second: the Unix second survives the
    // µs between this offset and the one the window is converted with.
    let ns = |sec: u16| base + sec as u64 * NS + NS / 2;
    while start < cap {
        let n = CHUNK_SLOTS.min(cap - start);
        let m = sys::Mapping::read_only(fd, start * 64, n * 64)?;
        for j in 0..n {
            // SAFETY: slot j of n of plain data, mapped and 64-aligned. Copied
            // with a volatile read: the live view reads the generation being
            // written (a slot read mid-update is at worst a count behind).
            let s = &unsafe { std::ptr::read_volatile((m.as_ptr() as *const FlowSlot).add(j)) };
            // Claimed but never published cannot happen once quiescent (a
            // program publishes before it returns): skipped, like empty.
            if s.state == 0 || s.state == FlowSlot::CLAIMED {
                continue;
            }
            if s.flags & FlowSlot::MAYBE_DUP != 0 {
                dups.push(out.len());
            }
            idx.push((start + j) as u32);
            let st = FlowStats {
                packets: s.packets,
                bytes: s.bytes,
                first_seen_ns: ns(s.first_sec),
                last_seen_ns: ns(s.last_sec),
                tcp_flags: s.tcp_flags(),
                _pad: 0,
            };
            out.push((s.key(), st));
        }
        start += n;
    }
    if dups.is_empty() {
        return Ok(());
    }
    // A twin sits between the flow's home slot and the marked one.
    let mask = capacity - 1;
    let mut gone = Vec::new();
    for &p in &dups {
        let (key, st) = out[p];
        let at = idx[p - first];
        let mut i = FlowSlot::of_key(&key).home(mask);
        for _ in 0..SLOT_PROBES {
            if i == at {
                break;
            }
            if let Ok(q) = idx.binary_search(&i) {
                let q = first + q;
                if out[q].0 == key && !gone.contains(&q) {
                    out[q].1.absorb(&st);
                    gone.push(p);
                    break;
                }
            }
            i = (i + 1) & mask;
        }
    }
    gone.sort_unstable();
    for p in gone.into_iter().rev() {
        out.remove(p);
    }
    Ok(())
}

/// Zeroes the slots read (indexes ascending), once their records are safe.
fn zero_slots(fd: std::os::fd::BorrowedFd<'_>, capacity: u32, idx: &[u32]) -> std::io::Result<()> {
    let cap = capacity as usize;
    let mut rest = idx;
    while let Some(&first) = rest.first() {
        let start = first as usize / CHUNK_SLOTS * CHUNK_SLOTS;
        let n = CHUNK_SLOTS.min(cap - start);
        let end = rest.partition_point(|&i| (i as usize) < start + n);
        let m = sys::Mapping::new(fd, start * 64, n * 64)?;
        for &i in &rest[..end] {
            // SAFETY: inside the mapping; no program writes this generation.
            unsafe { std::ptr::write_bytes(m.as_ptr().add((i as usize - start) * 64), 0, 64) };
        }
        rest = &rest[end..];
    }
    Ok(())
}

fn unattributed_index(g: u32) -> u32 {
    if g == 0 {
        counters::UNATTRIBUTED_FAILS_0
    } else {
        counters::UNATTRIBUTED_FAILS_1
    }
}

/// The final drain reads two tables that may hold the same flow.
fn merge_flows<K: Ord>(v: Vec<(K, FlowStats)>) -> Vec<(K, FlowStats)> {
    let mut m: std::collections::BTreeMap<K, FlowStats> = Default::default();
    for (k, s) in v {
        m.entry(k).and_modify(|e| e.absorb(&s)).or_insert(s);
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

#[cfg(test)]
mod tests {
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};

    use flowlog_common::{FlowKey, FlowSlot};

    use super::{read_slots, zero_slots};

    /// A file standing in for an mmap-able array: the drain maps both alike.
    fn table(slots: &[(u32, FlowSlot)], capacity: u32) -> OwnedFd {
        // SAFETY: plain memfd_create; the fd is new and owned here.
        let fd = unsafe { OwnedFd::from_raw_fd(libc::memfd_create(c"slots".as_ptr(), 0)) };
        let mut bytes = vec![0u8; capacity as usize * 64];
        for (i, s) in slots {
            // SAFETY: FlowSlot is 64 bytes of plain data.
            let b: [u8; 64] = unsafe { std::mem::transmute(*s) };
            bytes[*i as usize * 64..][..64].copy_from_slice(&b);
        }
        std::fs::write(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd)), &bytes).unwrap();
        fd
    }

    fn key(port: u16) -> FlowKey {
        FlowKey { ifindex: 3, src_addr: [1; 16], dst_addr: [2; 16], src_port: port, dst_port: 80, protocol: 6, direction: 0, family: 6, _pad: 0 }
    }

    fn slot(k: &FlowKey, packets: u64, flags: u8) -> FlowSlot {
        FlowSlot { packets, bytes: packets * 100, flags, first_sec: 2, last_sec: 5, ..FlowSlot::of_key(k) }
    }

    /// Two slots of one flow (racing inserts): the marked one is added to
    /// its twin nearer the home slot; other flows, and a marked slot without
    /// a twin, stay as they are; claimed slots are never read.
    #[test]
    fn duplicate_slots_are_merged_and_zeroed() {
        let cap = 64u32;
        let (a, b, c) = (key(1), key(2), key(3));
        let home = FlowSlot::of_key(&a).home(cap - 1);
        let at = |d: u32| (home + d) & (cap - 1);
        let claimed = FlowSlot { state: FlowSlot::CLAIMED, ..FlowSlot::of_key(&c) };
        let slots = [
            (at(0), slot(&a, 10, FlowSlot::SYN)),
            (at(1), slot(&b, 4, FlowSlot::MAYBE_DUP)),
            (at(2), slot(&a, 1, FlowSlot::MAYBE_DUP | FlowSlot::FIN)),
            (at(3), claimed),
        ];
        let fd = table(&slots, cap);
        let (mut out, mut idx) = (Vec::new(), Vec::new());
        read_slots(fd.as_fd(), cap, 1_000_000_000, &mut out, &mut idx).unwrap();
        out.sort_by_key(|f| f.0);
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!((out[0].0, out[0].1.packets, out[0].1.bytes), (a, 11, 1100));
        assert_eq!((out[0].1.tcp_flags.syn, out[0].1.tcp_flags.fin), (1, 1));
        assert_eq!((out[1].0, out[1].1.packets), (b, 4));
        // Half a second into the second, from the window's base.
        assert_eq!(out[0].1.first_seen_ns, 1_000_000_000 + 2_500_000_000);
        let mut want: Vec<u32> = vec![at(0), at(1), at(2)];
        want.sort();
        assert_eq!(idx, want);
        zero_slots(fd.as_fd(), cap, &idx).unwrap();
        let bytes = std::fs::read(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd))).unwrap();
        for i in 0..cap {
            let zero = bytes[i as usize * 64..][..64].iter().all(|&b| b == 0);
            assert_eq!(zero, i != at(3), "slot {i}");
        }
    }
}
