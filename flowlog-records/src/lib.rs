//! The record model of flowlog: what a VPC Flow Logs record is, how it is
//! written byte for byte and read back, and the enrichment rules that need
//! nothing but data (AWS service ranges, traffic-path, exclusions).
//!
//! This crate has no kernel, async or AWS dependency so that everything that
//! must agree on the format (the agent's formatter, `compare`, the tests'
//! readers) shares one definition, and its tests run without root.
//!
//! - [`record`]: the fields of a record (versions 2 to 11) and their values.
//! - [`format`]: `${field}` formats and the byte-exact writer.
//! - [`parse`]: text back to records (header lines, `-`, NODATA/SKIPDATA).
//! - [`semantics`]: values that follow from the packet and the interface
//!   (address normalisation, `type`, `action`).
//! - [`aws_services`], [`traffic_path`], [`filter`]: outside data applied to
//!   every flow; [`prefix`] is their longest-prefix lookup.
//! - [`vectors`]: the reference's test vectors, shared with the agent's tests.

pub mod aws_services;
pub mod filter;
pub mod format;
pub mod parse;
pub mod prefix;
pub mod record;
pub mod semantics;
pub mod traffic_path;
pub mod vectors;
