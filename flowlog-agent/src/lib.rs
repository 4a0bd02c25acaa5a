//! flowlog agent: eBPF flow capture → AWS VPC Flow Logs records.
//!
//! One module per stage: [`capture`] (load/attach) → [`drain`] (read the
//! kernel tables once per window) → [`enrich`] (records with metadata) →
//! [`format`] (byte-exact text) → [`ship`] (destinations). [`agent`] runs the
//! loop. Everything but `capture`, `drain` and `sys` is pure and tested
//! without root.
//!
//! Record model: [`record`] (the fields), [`semantics`] (values from the
//! packet and interface), [`aws_services`], [`traffic_path`] and [`filter`]
//! (outside data used by [`enrich`]), [`prefix`] (their longest-prefix
//! lookup), [`parse`] (text back to records).

pub mod agent;
pub mod aws_services;
pub mod btf;
pub mod capture;
pub mod clock;
pub mod compare;
pub mod config;
pub mod drain;
pub mod enrich;
pub mod filter;
pub mod format;
pub mod ifaces;
pub mod metadata;
pub mod metrics;
pub mod parse;
pub mod prefix;
pub mod record;
pub mod reject;
pub mod semantics;
pub mod ship;
pub mod sys;
pub mod traffic_path;
#[cfg(test)]
mod vectors;
pub mod watch;
