//! The live endpoint: the counts of the window being written, before it
//! closes, for `flowlog-agent top` ([`crate::top`]) and scripts.
//!
//! A unix socket (`live-socket`, default [`DEFAULT_LIVE_SOCKET`]): a client
//! connects and reads one JSON document ([`Snapshot`]), then the agent closes
//! the connection; no request. Live flows name every address and port of the
//! host, so the socket is `0600`, owned by the agent's user (root): it is
//! bound under a temporary name, restricted, then renamed into place, so it
//! is never reachable with a wider mode. It is not served over TCP (the
//! metrics listener may face the network for Prometheus).
//!
//! The counts come from [`LiveTables`], read-only.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tokio::{io::AsyncWriteExt, net::UnixListener};
use tracing::{info, warn};

use crate::{
    bpf::clock,
    capture::links,
    drain::live::{LiveTables, LiveWindow},
    enrich::key_addrs,
};

pub const DEFAULT_LIVE_SOCKET: &str = "/run/flowlog/live.sock";

/// What a client reads: the open window so far.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Unix seconds: the open window's start.
    pub window_start: u64,
    /// Unix milliseconds when the tables were read.
    pub now_ms: u64,
    /// Per interface with traffic in the window, by name.
    pub interfaces: Vec<Interface>,
    pub flows: Vec<Flow>,
}

/// An interface's counts since the window started (ACCEPT and REJECT).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    pub ifindex: u32,
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
}

/// One flow of the window so far: one record's worth (per interface,
/// direction and action).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    pub interface: String,
    pub srcaddr: IpAddr,
    pub dstaddr: IpAddr,
    pub srcport: u16,
    pub dstport: u16,
    pub protocol: u8,
    /// `ingress` or `egress`.
    pub direction: String,
    /// `ACCEPT` or `REJECT`.
    pub action: String,
    pub packets: u64,
    pub bytes: u64,
    /// The pods of the addresses, when a [`PodLookup`] knows them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src_pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_pod: Option<String>,
}

/// Names the pod of an address (`namespace/name`): the hook through which
/// the Kubernetes metadata source fills [`Flow::src_pod`] and
/// [`Flow::dst_pod`] ([`crate::metadata::kubernetes::source::PodSource::live_lookup`]).
pub type PodLookup = Arc<dyn Fn(IpAddr) -> Option<String> + Send + Sync>;

/// The JSON model of a live window; interfaces named by `names`.
pub fn snapshot(w: &LiveWindow, now_ms: u64, names: &BTreeMap<u32, String>, pods: Option<&PodLookup>) -> Snapshot {
    let name = |i: u32| names.get(&i).cloned().unwrap_or_else(|| format!("if{i}"));
    let mut ifaces: BTreeMap<u32, Interface> = BTreeMap::new();
    let mut flows = Vec::new();
    let accepts = w.flows.iter().map(|(k, s)| (k, s, "ACCEPT"));
    let rejects = w.rejects.iter().map(|(k, s)| (&k.flow, s, "REJECT"));
    for (k, s, action) in accepts.chain(rejects) {
        // ACCEPT entries whose every packet was dropped (moved to REJECT).
        if s.packets == 0 {
            continue;
        }
        let ingress = k.direction == flowlog_common::direction::INGRESS;
        let i = ifaces.entry(k.ifindex).or_insert_with(|| Interface {
            name: name(k.ifindex),
            ifindex: k.ifindex,
            ..Default::default()
        });
        let (p, b) =
            if ingress { (&mut i.packets_in, &mut i.bytes_in) } else { (&mut i.packets_out, &mut i.bytes_out) };
        *p += s.packets;
        *b += s.bytes;
        let (src, dst) = key_addrs(k);
        flows.push(Flow {
            interface: i.name.clone(),
            srcaddr: src,
            dstaddr: dst,
            srcport: k.src_port,
            dstport: k.dst_port,
            protocol: k.protocol,
            direction: if ingress { "ingress" } else { "egress" }.into(),
            action: action.into(),
            packets: s.packets,
            bytes: s.bytes,
            src_pod: pods.and_then(|p| p(src)),
            dst_pod: pods.and_then(|p| p(dst)),
        });
    }
    flows.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(b.packets.cmp(&a.packets)));
    let mut interfaces: Vec<Interface> = ifaces.into_values().collect();
    interfaces.sort_by(|a, b| a.name.cmp(&b.name));
    Snapshot { window_start: w.window_start_unix_ns / 1_000_000_000, now_ms, interfaces, flows }
}

/// The socket while the agent serves it; removed when dropped, unless
/// another agent has replaced it since.
pub struct Server {
    path: PathBuf,
    ino: u64,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds the socket (`0600`, in a directory created `0755` if missing) and
/// answers every connection with a [`Snapshot`].
pub async fn serve(path: &Path, tables: LiveTables, pods: Option<PodLookup>) -> Result<Server> {
    let (listener, ino) = bind_private(path)?;
    let tables = Arc::new(tables);
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                // Out of descriptors, say: not a busy loop.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            };
            let (tables, pods) = (tables.clone(), pods.clone());
            tokio::spawn(async move {
                let body = tokio::task::spawn_blocking(move || read(&tables, pods.as_ref())).await;
                let body = match body {
                    Ok(Ok(b)) => b,
                    Ok(Err(e)) => serde_json::json!({ "error": format!("{e:#}") }).to_string(),
                    Err(e) => serde_json::json!({ "error": e.to_string() }).to_string(),
                };
                let _ = stream.write_all(body.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    info!(socket = %path.display(), "live endpoint (flowlog-agent top) on a root-only unix socket");
    Ok(Server { path: path.to_path_buf(), ino, task })
}

/// The listening socket at `path`, mode `0600` from the start, and its inode.
/// A socket another agent still answers on is left alone (an error); a stale
/// one is replaced.
fn bind_private(path: &Path) -> Result<(UnixListener, u64)> {
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        anyhow::bail!("another agent answers on {}", path.display());
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let name = path.file_name().context("the socket path has no file name")?.to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).with_context(|| format!("binding {}", tmp.display()))?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("placing the socket at {}", path.display()));
    }
    let ino = std::fs::symlink_metadata(path).context("the socket just bound")?.ino();
    Ok((listener, ino))
}

fn read(tables: &LiveTables, pods: Option<&PodLookup>) -> Result<String> {
    let w = tables.read()?;
    let names = links::list_links().map(|l| l.into_iter().map(|l| (l.ifindex, l.name)).collect()).unwrap_or_else(|e| {
        warn!("live endpoint: cannot list interfaces: {e}");
        BTreeMap::new()
    });
    Ok(serde_json::to_string(&snapshot(&w, clock::unix_ns() / 1_000_000, &names, pods))?)
}

/// Starts the endpoint where configured. Failing at the default path (no
/// `/run` to write to, another agent there) is a warning: the agent captures
/// without it. A path set explicitly must work.
pub async fn start(path: Option<&Path>, explicit: bool, tables: LiveTables, pods: Option<PodLookup>) -> Result<Option<Server>> {
    let Some(path) = path else { return Ok(None) };
    match serve(path, tables, pods).await {
        Ok(s) => Ok(Some(s)),
        Err(e) if !explicit => {
            warn!("no live endpoint (flowlog-agent top): {e:#}; set live-socket to a writable path, or off");
            Ok(None)
        }
        Err(e) => Err(e.context("live-socket (`off` disables it)")),
    }
}

#[cfg(test)]
mod tests {
    use flowlog_common::{FlowKey, FlowStats, RejectKey};

    use super::*;

    fn key(ifindex: u32, sport: u16, direction: u8) -> FlowKey {
        let mut src = [0; 16];
        src[..4].copy_from_slice(&[10, 0, 0, 1]);
        let mut dst = [0; 16];
        dst[..4].copy_from_slice(&[10, 0, 0, 2]);
        FlowKey {
            ifindex,
            src_addr: src,
            dst_addr: dst,
            src_port: sport,
            dst_port: 53,
            protocol: 17,
            direction,
            family: 4,
            _pad: 0,
        }
    }

    fn st(packets: u64, bytes: u64) -> FlowStats {
        FlowStats { packets, bytes, ..Default::default() }
    }

    /// A new socket is 0600 in a directory created for it, with no temporary
    /// name left; a stale socket is replaced; one another agent answers on is
    /// left alone.
    #[tokio::test]
    async fn socket_is_private_and_never_stolen() {
        let dir = std::env::temp_dir().join(format!("flowlog-live-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("run/live.sock");
        let (first, ino) = bind_private(&path).unwrap();
        let m = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!((m.mode() & 0o7777, m.ino()), (0o600, ino));
        assert_eq!(std::fs::metadata(dir.join("run")).unwrap().mode() & 0o777, 0o755);
        let names: Vec<_> = std::fs::read_dir(dir.join("run")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["live.sock"]);
        let err = bind_private(&path).map(|_| ()).unwrap_err().to_string();
        assert_eq!(err, format!("another agent answers on {}", path.display()));
        assert_eq!(std::fs::symlink_metadata(&path).unwrap().ino(), ino, "the other agent's socket was replaced");
        // Its agent gone (killed: the file stays), the next one takes the path.
        drop(first);
        let (_second, ino2) = bind_private(&path).unwrap();
        assert_ne!(ino2, ino);
        std::os::unix::net::UnixStream::connect(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Interfaces sum ACCEPT and REJECT per direction; an ACCEPT entry left
    /// with 0 packets is no flow; flows by bytes, the pod hook applied.
    #[test]
    fn window_becomes_snapshot() {
        let w = LiveWindow {
            window_start_unix_ns: 1_800_000_000_123_000_000,
            flows: vec![(key(3, 1000, 0), st(2, 200)), (key(3, 1001, 1), st(5, 900)), (key(3, 1002, 0), st(0, 0))],
            rejects: vec![(RejectKey { flow: key(3, 1002, 0), reason: 2 }, st(1, 60))],
        };
        let names = BTreeMap::from([(3, "veth0".to_string())]);
        let pods: PodLookup =
            Arc::new(|a: IpAddr| (a == IpAddr::from([10, 0, 0, 2])).then(|| "default/web".to_string()));
        let s = snapshot(&w, 42, &names, Some(&pods));
        assert_eq!((s.window_start, s.now_ms), (1_800_000_000, 42));
        assert_eq!(
            s.interfaces,
            [Interface {
                name: "veth0".into(),
                ifindex: 3,
                packets_in: 3,
                bytes_in: 260,
                packets_out: 5,
                bytes_out: 900
            }]
        );
        let got: Vec<(u16, &str, &str, u64, u64)> =
            s.flows.iter().map(|f| (f.srcport, f.direction.as_str(), f.action.as_str(), f.packets, f.bytes)).collect();
        assert_eq!(
            got,
            [
                (1001, "egress", "ACCEPT", 5, 900),
                (1000, "ingress", "ACCEPT", 2, 200),
                (1002, "ingress", "REJECT", 1, 60)
            ]
        );
        assert_eq!((s.flows[0].src_pod.as_deref(), s.flows[0].dst_pod.as_deref()), (None, Some("default/web")));
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Snapshot>(&text).unwrap(), s);
    }
}
