//! flowlog agent: eBPF flow capture → AWS VPC Flow Logs records.
//!
//! One module per stage: [`capture`] (load/attach) → [`drain`] (read the
//! kernel tables once per window) → [`enrich`] (records with metadata) →
//! [`format`] (byte-exact text) → [`ship`] (destinations). [`agent`] runs the
//! loop. Everything but `capture`, `drain` and `sys` is pure and tested
//! without root.

pub mod agent;
pub mod capture;
pub mod clock;
pub mod drain;
pub mod enrich;
pub mod format;
pub mod ifaces;
pub mod metadata;
pub mod metrics;
pub mod record;
pub mod ship;
pub mod sys;
pub mod watch;
