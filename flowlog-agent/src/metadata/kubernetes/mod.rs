//! Pod identity on Kubernetes nodes, from the node's own container runtime
//! (CRI), with no API server: which pod owns a captured interface and which
//! pod on this node holds an address.
//!
//! `model` is what a runtime reports, `netns` finds the host interface of
//! each pod's network namespace, `index` keeps listings per window and does
//! the per-record lookups, `source` lists pods off the capture path.

pub mod index;
pub mod model;
pub mod netns;
