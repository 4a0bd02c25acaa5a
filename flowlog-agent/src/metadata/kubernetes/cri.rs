//! The CRI client: the node's container runtime (containerd, CRI-O) answers
//! the Kubernetes CRI `runtime.v1` API on a local unix socket.
//!
//! [`v1`] is tonic code generated from the vendored `cri/vendor/api.proto` by
//! `cargo xtask cri` and committed, so building the agent needs no protoc
//! (`cargo xtask test` checks it is a fresh generation). No kept crate ships
//! that code generated: k8s-cri and cri-api run protoc in their build.rs.
//!
//! [`list_pods`] reads what [`Pod`] keeps from ListPodSandbox (ready
//! sandboxes) and PodSandboxStatus(verbose) of each: name, namespace, UID,
//! labels and IPs from the status; the network namespace file and the host
//! side interfaces from the runtime's verbose `info` JSON, which is not part of
//! the API (containerd's layout; CRI-O's lacks the CNI result: fields it does
//! not have stay empty). Every call has a timeout: a runtime that hangs costs
//! one [`CALL_TIMEOUT`], never the agent.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tracing::{debug, warn};

use super::model::Pod;
use crate::metadata::imds::describe;

/// The CRI runtime.v1 API (generated; see the module header).
#[allow(clippy::all, clippy::pedantic, rustdoc::all, missing_docs)]
pub mod v1 {
    include!("cri/vendor/runtime.v1.rs");
}

pub use v1::runtime_service_client::RuntimeServiceClient;

/// Longest wait for one CRI call (and for connecting).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

static INFO_WARNED: AtomicBool = AtomicBool::new(false);

/// Where the runtimes listen by default, in the order auto-detection tries them.
pub fn default_sockets() -> &'static [&'static str] {
    &["/run/containerd/containerd.sock", "/run/crio/crio.sock", "/var/run/crio/crio.sock"]
}

#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("CRI socket {}: cannot connect: {reason}", socket.display())]
    Connect { socket: PathBuf, reason: String },
    #[error("CRI socket {}: {call} failed: {code:?}: {message}", socket.display())]
    Call { socket: PathBuf, call: &'static str, code: tonic::Code, message: String },
    #[error("CRI socket {}: {call} did not answer within {timeout:?}", socket.display())]
    Timeout { socket: PathBuf, call: &'static str, timeout: Duration },
}

/// Connects to the runtime's socket and checks it answers CRI v1 (Version).
pub async fn connect(path: &Path) -> Result<RuntimeServiceClient<Channel>, CriError> {
    connect_within(path, CALL_TIMEOUT).await
}

/// [`connect`] with another limit for connecting and for the Version call.
pub async fn connect_within(path: &Path, limit: Duration) -> Result<RuntimeServiceClient<Channel>, CriError> {
    let socket = path.to_path_buf();
    let sock = socket.clone();
    // The URI is required by tonic and ignored: every connection goes to the socket.
    let endpoint = Endpoint::from_static("http://[::]:50051").timeout(CALL_TIMEOUT).connect_timeout(limit);
    let connecting = endpoint.connect_with_connector(tower::service_fn(move |_: Uri| {
        let p = sock.clone();
        async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(p).await?)) }
    }));
    let channel = match tokio::time::timeout(limit, connecting).await {
        Ok(Ok(ch)) => ch,
        Ok(Err(e)) => return Err(CriError::Connect { socket, reason: describe(&e) }),
        Err(_) => return Err(CriError::Timeout { socket, call: "connect", timeout: limit }),
    };
    let mut client = RuntimeServiceClient::new(channel);
    let version = client.version(v1::VersionRequest { version: "v1".into() });
    let version = call_within(&socket, "Version", limit, version).await?;
    debug!(
        socket = %socket.display(),
        runtime = %version.runtime_name,
        version = %version.runtime_version,
        api = %version.runtime_api_version,
        "CRI runtime"
    );
    Ok(client)
}

/// The ready pod sandboxes of the runtime at `socket` (the path `client` was
/// connected to, named in errors). A sandbox that goes away between the list
/// and its status is left out; a verbose `info` the agent cannot read leaves
/// that pod's netns and host interfaces empty (logged), never an error.
pub async fn list_pods(client: &mut RuntimeServiceClient<Channel>, socket: &Path) -> Result<Vec<Pod>, CriError> {
    let ready = v1::PodSandboxFilter {
        state: Some(v1::PodSandboxStateValue { state: v1::PodSandboxState::SandboxReady as i32 }),
        ..Default::default()
    };
    let items =
        call(socket, "ListPodSandbox", client.list_pod_sandbox(v1::ListPodSandboxRequest { filter: Some(ready) }))
            .await?
            .items;
    let mut pods = Vec::with_capacity(items.len());
    for item in items.into_iter().filter(|i| i.state == v1::PodSandboxState::SandboxReady as i32) {
        let req = v1::PodSandboxStatusRequest { pod_sandbox_id: item.id.clone(), verbose: true };
        let resp = match call(socket, "PodSandboxStatus", client.pod_sandbox_status(req)).await {
            Ok(r) => r,
            Err(CriError::Call { code: tonic::Code::NotFound, .. }) => {
                debug!(socket = %socket.display(), id = %item.id, "pod sandbox went away before its status");
                continue;
            }
            Err(e) => return Err(e),
        };
        let Some(status) = resp.status else {
            debug!(socket = %socket.display(), id = %item.id, "PodSandboxStatus without a status");
            continue;
        };
        if status.state != v1::PodSandboxState::SandboxReady as i32 {
            continue;
        }
        let mut pod = pod_from_status(item.id, item.metadata, status);
        if let Some(text) = resp.info.get("info") {
            match parse_info(text) {
                Ok(info) => {
                    pod.netns = info.netns;
                    pod.host_ifaces = info.host_ifaces.into_iter().filter(|n| !is_bridge(n)).collect();
                }
                // Once per process: the runtime answers the same at every listing.
                Err(e) if !INFO_WARNED.swap(true, Ordering::Relaxed) => warn!(
                    socket = %socket.display(),
                    pod = %format!("{}/{}", pod.namespace, pod.name),
                    "CRI verbose info is not JSON ({e}): the pod's network namespace and host interfaces are unknown \
                     (interfaces are matched to such pods by nothing else; further pods: debug log)"
                ),
                Err(e) => debug!(socket = %socket.display(), id = %pod.id, "CRI verbose info is not JSON: {e}"),
            }
        }
        pods.push(pod);
    }
    Ok(pods)
}

/// One call with [`CALL_TIMEOUT`], its error naming the socket.
async fn call<T>(
    socket: &Path,
    name: &'static str,
    fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, CriError> {
    call_within(socket, name, CALL_TIMEOUT, fut).await
}

async fn call_within<T>(
    socket: &Path,
    name: &'static str,
    limit: Duration,
    fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, CriError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => Err(CriError::Call {
            socket: socket.to_path_buf(),
            call: name,
            code: s.code(),
            message: s.message().to_string(),
        }),
        Err(_) => Err(CriError::Timeout { socket: socket.to_path_buf(), call: name, timeout: limit }),
    }
}

/// Identity and addresses from the status (the list item's metadata if the
/// status has none); netns and host interfaces come from the verbose info.
fn pod_from_status(id: String, listed: Option<v1::PodSandboxMetadata>, status: v1::PodSandboxStatus) -> Pod {
    let md = status.metadata.or(listed).unwrap_or_default();
    let mut ips = Vec::new();
    if let Some(net) = &status.network {
        for ip in std::iter::once(net.ip.as_str()).chain(net.additional_ips.iter().map(|p| p.ip.as_str())) {
            match ip.parse::<IpAddr>() {
                Ok(a) if !ips.contains(&a) => ips.push(a),
                Ok(_) => {}
                // host-network pods have no IP of their own ("")
                Err(_) if ip.is_empty() => {}
                Err(_) => debug!(id = %id, ip, "CRI pod IP is not an address"),
            }
        }
    }
    Pod {
        id,
        namespace: md.namespace,
        name: md.name,
        uid: md.uid,
        labels: status.labels.into_iter().collect::<BTreeMap<_, _>>(),
        ips,
        netns: None,
        host_ifaces: Vec::new(),
    }
}

/// What the agent reads from a runtime's verbose PodSandboxStatus info.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct VerboseInfo {
    /// `runtimeSpec.linux.namespaces[type=network].path` (containerd, CRI-O).
    pub netns: Option<PathBuf>,
    /// `cniResult.Interfaces` names outside the pod (`Sandbox` empty), sorted:
    /// the host veth, and for the bridge plugin the bridge too (containerd).
    pub host_ifaces: Vec<String>,
}

/// Parses the `info` JSON; a field that is missing or of another shape is
/// left empty (runtimes differ), only text that is not JSON is an error.
pub fn parse_info(text: &str) -> Result<VerboseInfo, serde_json::Error> {
    let v: serde_json::Value = serde_json::from_str(text)?;
    let netns = v
        .pointer("/runtimeSpec/linux/namespaces")
        .and_then(|n| n.as_array())
        .into_iter()
        .flatten()
        .find(|n| n.get("type").and_then(|t| t.as_str()) == Some("network"))
        .and_then(|n| n.get("path")?.as_str())
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    let mut host_ifaces: Vec<String> = v
        .pointer("/cniResult/Interfaces")
        .and_then(|i| i.as_object())
        .into_iter()
        .flatten()
        .filter(|(_, iface)| iface.get("Sandbox").and_then(|s| s.as_str()).unwrap_or("").is_empty())
        .map(|(name, _)| name.clone())
        .collect();
    host_ifaces.sort();
    Ok(VerboseInfo { netns, host_ifaces })
}

/// The bridge plugin names its bridge among the host interfaces of every pod:
/// it is no pod's interface.
fn is_bridge(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).join("bridge").exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// containerd 1.6.20's PodSandboxStatus(verbose) `info` for a pod of the
    /// bridge network and one of the ptp network (captured from the test
    /// harness's containerd, pretty-printed).
    const CONTAINERD_16_BRIDGE: &str = include_str!("cri/testdata/containerd-1.6-bridge-info.json");
    const CONTAINERD_16_PTP: &str = include_str!("cri/testdata/containerd-1.6-ptp-info.json");
    const NETNS_DIR: &str = "/run/flowlog-ctrd-7/state/io.containerd.grpc.v1.cri/netns";

    #[test]
    fn containerd_info_gives_netns_and_host_interfaces() {
        let info = parse_info(CONTAINERD_16_BRIDGE).unwrap();
        let netns = Path::new(NETNS_DIR).join("cni-7fbd501d-a4c6-6a2b-d022-6a1cbd8aa1c8");
        assert_eq!(info, VerboseInfo { netns: Some(netns), host_ifaces: vec!["flbr0".into(), "vethe7e3046d".into()] });
        let info = parse_info(CONTAINERD_16_PTP).unwrap();
        let netns = Path::new(NETNS_DIR).join("cni-756a0541-c5c6-9503-04e2-51847ad8bddd");
        assert_eq!(info, VerboseInfo { netns: Some(netns), host_ifaces: vec!["veth20b17cc2".into()] });
    }

    #[test]
    fn missing_or_odd_fields_are_empty_not_errors() {
        // CRI-O: runtimeSpec but no cniResult.
        let crio = r#"{"pid": 42, "runtimeSpec": {"linux": {"namespaces": [
            {"type": "pid"}, {"type": "network", "path": "/var/run/netns/5f3c0b1e"}]}}}"#;
        assert_eq!(
            parse_info(crio).unwrap(),
            VerboseInfo { netns: Some("/var/run/netns/5f3c0b1e".into()), host_ifaces: vec![] }
        );
        // A network namespace without a path (host network), Interfaces null, no Sandbox key.
        let odd = r#"{"runtimeSpec": {"linux": {"namespaces": [{"type": "network"}]}},
            "cniResult": {"Interfaces": null}}"#;
        assert_eq!(parse_info(odd).unwrap(), VerboseInfo::default());
        let no_sandbox = r#"{"cniResult": {"Interfaces": {"eni1a2b": {"Mac": "aa"}, "eth0": {"Sandbox": "/x"}}}}"#;
        assert_eq!(parse_info(no_sandbox).unwrap().host_ifaces, ["eni1a2b"]);
        assert_eq!(parse_info("{}").unwrap(), VerboseInfo::default());
        assert_eq!(parse_info("[]").unwrap(), VerboseInfo::default());
        assert!(parse_info("not json").is_err());
    }

    #[test]
    fn status_gives_identity_and_addresses() {
        let status = v1::PodSandboxStatus {
            metadata: Some(v1::PodSandboxMetadata {
                name: "web-1".into(),
                uid: "0000-web-1".into(),
                namespace: "shop".into(),
                attempt: 0,
            }),
            state: v1::PodSandboxState::SandboxReady as i32,
            network: Some(v1::PodSandboxNetworkStatus {
                ip: "10.88.0.2".into(),
                additional_ips: vec![v1::PodIp { ip: "fd00::2".into() }, v1::PodIp { ip: "10.88.0.2".into() }],
            }),
            labels: [("app".to_string(), "web".to_string())].into(),
            ..Default::default()
        };
        let pod = pod_from_status("abc".into(), None, status);
        assert_eq!(
            pod,
            Pod {
                id: "abc".into(),
                namespace: "shop".into(),
                name: "web-1".into(),
                uid: "0000-web-1".into(),
                labels: [("app".to_string(), "web".to_string())].into(),
                ips: vec!["10.88.0.2".parse().unwrap(), "fd00::2".parse().unwrap()],
                netns: None,
                host_ifaces: vec![],
            }
        );
        // host network: no IP; metadata from the list item
        let listed = v1::PodSandboxMetadata { name: "h".into(), namespace: "kube-system".into(), ..Default::default() };
        let pod = pod_from_status("def".into(), Some(listed), v1::PodSandboxStatus::default());
        assert_eq!((pod.namespace.as_str(), pod.name.as_str(), pod.ips.len()), ("kube-system", "h", 0));
    }

    /// A socket that accepts and never answers (a hung runtime).
    #[tokio::test]
    async fn a_runtime_that_does_not_answer_times_out() {
        let dir = std::env::temp_dir().join(format!("flowlog-cri-hang-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("hang.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        let held = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((c, _)) = listener.accept().await {
                conns.push(c);
            }
        });
        let e = connect_within(&sock, Duration::from_millis(300)).await.unwrap_err();
        held.abort();
        let _ = std::fs::remove_dir_all(&dir);
        // the limit given, not CALL_TIMEOUT: the caller's bound holds
        assert!(matches!(e, CriError::Timeout { timeout, .. } if timeout == Duration::from_millis(300)), "{e}");
        assert!(e.to_string().starts_with(&format!("CRI socket {}: ", sock.display())), "{e}");
    }

    #[tokio::test]
    async fn connect_error_names_the_socket() {
        let missing = Path::new("/nonexistent/flowlog-test/containerd.sock");
        let e = connect(missing).await.unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, CriError::Connect { .. }), "{msg}");
        assert!(msg.starts_with("CRI socket /nonexistent/flowlog-test/containerd.sock: cannot connect"), "{msg}");
        assert!(msg.contains("No such file or directory"), "{msg}");
    }
}
