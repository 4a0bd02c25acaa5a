//! What the agent keeps of a pod sandbox, whatever runtime reported it.

use std::{collections::BTreeMap, net::IpAddr, path::PathBuf};

/// One ready pod sandbox on this node, as its runtime reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pod {
    /// The runtime's sandbox id.
    pub id: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    /// The pod's addresses (primary first).
    pub ips: Vec<IpAddr>,
    /// The pod's network namespace file, when the runtime tells it.
    pub netns: Option<PathBuf>,
    /// Host-side interface names the runtime's CNI result names (veths),
    /// when it reports them.
    pub host_ifaces: Vec<String>,
}
