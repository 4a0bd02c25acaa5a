//! flowlog agent: eBPF flow capture → AWS VPC Flow Logs records.
//!
//! One folder per stage of the pipeline:
//! [`capture`] (load, attach and pin the programs, REJECT from drops, link
//! watching) → [`drain`] (read the quiescent kernel tables once per window)
//! → [`enrich`] (records with metadata) → format (`flowlog_records::format`)
//! → [`ship`] (destinations). Capture and drain stand on [`bpf`] (raw
//! syscalls, kernel feature probes, the clocks, the flow table kind), which
//! uses no stage. [`agent`] runs the loop with the [`config`] it
//! is given and reports through [`metrics`] (and to systemd, [`notify`]), and
//! serves the open window's counts on [`live`] for [`top`]; [`metadata`] answers who this
//! host and its interfaces are; [`compare`] checks records against native
//! flow logs; [`toml_de`] reads TOML with the full key in every error.
//!
//! The record model (fields, formats, parser, pure enrichment rules) is the
//! `flowlog-records` crate: no kernel, async or AWS dependency.

pub mod agent;
pub mod bpf;
pub mod capture;
pub mod compare;
pub mod config;
pub mod drain;
pub mod enrich;
pub mod live;
pub mod metadata;
pub mod metrics;
pub mod notify;
pub mod ship;
pub mod toml_de;
pub mod top;
