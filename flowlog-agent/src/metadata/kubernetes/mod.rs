//! Pod identity on Kubernetes nodes, from the node's own container runtime
//! (CRI), with no API server: which pod owns a captured interface and which
//! pod on this node holds an address.

pub mod cri;
pub mod model;
