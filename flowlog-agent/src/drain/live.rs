//! A read-only view of the generation the programs are writing, for the live
//! endpoint ([`crate::live`], `flowlog-agent top`).
//!
//! Strictly read-only, so the drain's exactly-once stays intact: the slot
//! table through a `PROT_READ` mapping, the hash and REJECT tables by batched
//! lookups; it never flips, deletes or changes a count. Its file descriptors
//! are duplicates of the drain's, so it runs beside the main loop. A read that
//! a window flip overtook (the generation changed meanwhile, and the drain may
//! be emptying what was read) is done again on the new generation.

use std::os::fd::{AsFd, OwnedFd};

use anyhow::{Context, Result};
use aya::maps::{Array, IterableMap, Map, MapData};
use flowlog_common::{FlowKey, FlowStats, RejectKey};

use super::{read_slots, FlowTables, Flows, NS};
use crate::bpf::sys;

/// The counts of the open window so far.
#[derive(Clone, Debug, Default)]
pub struct LiveWindow {
    pub window_start_unix_ns: u64,
    /// ACCEPT counts (an entry may hold 0 packets once its packets moved to REJECT).
    pub flows: Vec<(FlowKey, FlowStats)>,
    pub rejects: Vec<(RejectKey, FlowStats)>,
}

enum LiveFlows {
    Hash([OwnedFd; 2]),
    Slots { tables: [OwnedFd; 2], capacity: u32 },
}

pub struct LiveTables {
    generation: Array<MapData, u32>,
    flows: LiveFlows,
    rejects: [OwnedFd; 2],
    batch: usize,
    /// The window the agent started in (its flip time may predate `GENERATION[1]`).
    started_unix_ns: u64,
}

fn dup(fd: std::os::fd::BorrowedFd<'_>) -> Result<OwnedFd> {
    fd.try_clone_to_owned().context("duplicating a map's file descriptor for the live view")
}

impl FlowTables {
    /// A read-only view of the tables for the live endpoint.
    pub fn live(&self) -> Result<LiveTables> {
        let gen = MapData::from_fd(dup(self.generation.map().fd().as_fd())?).context("the generation map")?;
        let generation = Array::try_from(Map::Array(gen)).context("the generation map")?;
        let flows = match &self.flows {
            Flows::Hash(t) => LiveFlows::Hash([dup(t[0].map().fd().as_fd())?, dup(t[1].map().fd().as_fd())?]),
            Flows::Slots { tables, capacity, .. } => LiveFlows::Slots {
                tables: [dup(tables[0].map().fd().as_fd())?, dup(tables[1].map().fd().as_fd())?],
                capacity: *capacity,
            },
        };
        Ok(LiveTables {
            generation,
            flows,
            rejects: [dup(self.rejects[0].map().fd().as_fd())?, dup(self.rejects[1].map().fd().as_fd())?],
            batch: self.batch,
            started_unix_ns: self.window_start_unix_ns,
        })
    }
}

impl LiveTables {
    fn current(&self) -> Result<u32> {
        Ok(self.generation.get(&0, 0).context("reading the generation")? & 1)
    }

    /// What the open window counted so far.
    pub fn read(&self) -> Result<LiveWindow> {
        let mut g = self.current()?;
        // A flip takes a few ms once per interval: three tries are plenty.
        for _ in 0..3 {
            let w = self.read_generation(g)?;
            let now = self.current()?;
            if now == g {
                return Ok(w);
            }
            g = now;
        }
        anyhow::bail!("the window flipped during every read: try again")
    }

    fn read_generation(&self, g: u32) -> Result<LiveWindow> {
        let i = g as usize;
        let mut flows = Vec::new();
        match &self.flows {
            LiveFlows::Hash(t) => {
                sys::lookup_all(t[i].as_fd(), self.batch, &mut flows).context("reading the flow table")?
            }
            LiveFlows::Slots { tables, capacity } => {
                // Times are not reported: no slot clock needed.
                read_slots(tables[i].as_fd(), *capacity, 0, &mut flows, &mut Vec::new())
                    .context("reading the slot table")?
            }
        }
        let mut rejects = Vec::new();
        sys::lookup_all(self.rejects[i].as_fd(), self.batch, &mut rejects).context("reading the REJECT table")?;
        let last_flip = self.generation.get(&1, 0).context("reading the generation")? as u64 * NS;
        Ok(LiveWindow { window_start_unix_ns: last_flip.max(self.started_unix_ns), flows, rejects })
    }
}
