//! Pod identity on Kubernetes nodes, from the node's own container runtime
//! (CRI), with no API server: which pod owns a captured interface and which
//! pod on this node holds an address.
//!
//! `cri` asks the runtime, `model` is what a runtime reports, `netns` finds the host interface of
//! each pod's network namespace, `index` keeps listings per window and does
//! the per-record lookups, `source` lists pods off the capture path.

pub mod cri;
pub mod index;
pub mod model;
pub mod netns;
pub mod source;

use std::{path::PathBuf, time::Duration};

/// Whether pod identity is looked up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// On when a CRI socket exists and the log format names a `k8s-*` field.
    #[default]
    Auto,
    On,
    Off,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::On => "on",
            Mode::Off => "off",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = &'static str;
    fn from_str(s: &str) -> Result<Mode, Self::Err> {
        [Mode::Auto, Mode::On, Mode::Off].into_iter().find(|m| m.as_str() == s).ok_or("auto, on or off")
    }
}

/// The `[kubernetes]` section, checked (see `config::Kubernetes`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubernetesConfig {
    pub mode: Mode,
    /// `None`: the first of [`cri::default_sockets`] that exists.
    pub socket: Option<PathBuf>,
    /// The label key whose value `k8s-pod-label` writes.
    pub pod_label: Option<String>,
    /// Between pod listings.
    pub refresh: Duration,
    /// A listing that takes longer has failed.
    pub timeout: Duration,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig { mode: Mode::Auto, socket: None, pod_label: None, refresh: Duration::from_secs(10), timeout: Duration::from_secs(10) }
    }
}

impl KubernetesConfig {
    /// The socket to use, and whether pod identity is on, for a log format
    /// that does (`wanted`) or does not name a `k8s-*` field. `Err`: why it
    /// is off, for the log.
    pub fn decide(&self, wanted: bool, exists: impl Fn(&std::path::Path) -> bool) -> Result<PathBuf, String> {
        let found = self.socket.clone().or_else(|| cri::default_sockets().iter().map(PathBuf::from).find(|p| exists(p)));
        match (self.mode, wanted) {
            (Mode::Off, _) => Err("kubernetes = off".into()),
            (_, false) => Err("the log format names no k8s-* field".into()),
            (Mode::Auto, true) => found.filter(|p| exists(p)).ok_or_else(|| format!("no CRI socket found (tried {})", self.tried())),
            // On: a missing socket is the source's warning, not a stop.
            (Mode::On, true) => Ok(found.unwrap_or_else(|| PathBuf::from(cri::default_sockets()[0]))),
        }
    }

    fn tried(&self) -> String {
        match &self.socket {
            Some(p) => p.display().to_string(),
            None => cri::default_sockets().join(", "),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn on_off_auto_and_the_socket() {
        let cfg = |mode, socket: Option<&str>| KubernetesConfig { mode, socket: socket.map(PathBuf::from), ..KubernetesConfig::default() };
        let crio = |p: &Path| p == Path::new("/run/crio/crio.sock");
        let none = |_: &Path| false;
        assert_eq!(cfg(Mode::Auto, None).decide(true, crio), Ok(PathBuf::from("/run/crio/crio.sock")));
        assert_eq!(
            cfg(Mode::Auto, None).decide(true, none),
            Err("no CRI socket found (tried /run/containerd/containerd.sock, /run/crio/crio.sock, /var/run/crio/crio.sock)".into())
        );
        assert_eq!(cfg(Mode::Auto, Some("/x.sock")).decide(true, none), Err("no CRI socket found (tried /x.sock)".into()));
        assert_eq!(cfg(Mode::Auto, None).decide(false, crio), Err("the log format names no k8s-* field".into()));
        assert_eq!(cfg(Mode::On, None).decide(true, none), Ok(PathBuf::from("/run/containerd/containerd.sock")));
        assert_eq!(cfg(Mode::On, Some("/x.sock")).decide(true, none), Ok(PathBuf::from("/x.sock")));
        assert_eq!(cfg(Mode::Off, None).decide(true, crio), Err("kubernetes = off".into()));
    }
}
