//! Lists the node's pods off the capture path: in a task of its own, every
//! `refresh` and soon after link changes (a new pod veth), each listing
//! bounded by a timeout. The main loop only reads the kept listings when a
//! window closes ([`PodSource::window`]), so a slow or absent runtime never
//! delays records: their `k8s-*` fields use the last good listing, or `-`.

use std::{
    future::Future,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::Notify;
use tracing::{info, warn};

use super::{
    index::{self, History, PodIndex},
    model::Pod,
    netns, KubernetesConfig,
};
use crate::{bpf::clock, metrics::Metrics};

/// Where pods come from (the CRI client; a fixed list in tests).
pub trait PodLister: Send + 'static {
    fn list(&mut self) -> impl Future<Output = Result<Vec<Pod>, String>> + Send;
}

/// The runtime's CRI endpoint; reconnects after a failed call.
pub struct CriLister {
    socket: PathBuf,
    client: Option<super::cri::v1::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>>,
}

impl CriLister {
    pub fn new(socket: PathBuf) -> CriLister {
        CriLister { socket, client: None }
    }
}

impl PodLister for CriLister {
    async fn list(&mut self) -> Result<Vec<Pod>, String> {
        let mut client = match self.client.take() {
            Some(c) => c,
            None => super::cri::connect(&self.socket).await.map_err(|e| e.to_string())?,
        };
        let pods = super::cri::list_pods(&mut client, &self.socket).await.map_err(|e| e.to_string())?;
        self.client = Some(client);
        Ok(pods)
    }
}

/// Link events closer together than this share one listing.
const SETTLE: Duration = Duration::from_secs(1);

/// The main loop's end of the pod listing task.
pub struct PodSource {
    history: Arc<Mutex<History>>,
    label: Option<String>,
    kick: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PodSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PodSource {
    /// Starts listing pods from `lister` (which talks to `socket`) now and
    /// then as configured.
    pub fn start<L: PodLister>(
        mut lister: L,
        socket: PathBuf,
        cfg: &KubernetesConfig,
        metrics: Arc<Metrics>,
    ) -> PodSource {
        let history = Arc::new(Mutex::new(History::default()));
        let kick = Arc::new(Notify::new());
        let (h, k, refresh, timeout) = (history.clone(), kick.clone(), cfg.refresh, cfg.timeout);
        let label = cfg.pod_label.clone();
        let task = tokio::spawn(async move {
            let mut failing = false;
            loop {
                let at = clock::unix_ns();
                let listed = match tokio::time::timeout(timeout, lister.list()).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("no answer within {} s", timeout.as_secs())),
                };
                // Host links and namespace ids: a few netlink round trips.
                let resolved = match listed {
                    Ok(pods) => {
                        tokio::task::spawn_blocking(move || resolve(pods)).await.unwrap_or_else(|e| Err(e.to_string()))
                    }
                    Err(e) => Err(e),
                };
                match resolved {
                    Ok(pods) => {
                        if failing {
                            info!(socket = %socket.display(), pods = pods.len(), "kubernetes: pod listing works again");
                        }
                        failing = false;
                        metrics.set_k8s_pods(pods.len());
                        let mut h = h.lock().unwrap_or_else(|e| e.into_inner());
                        h.push(at, pods);
                        // The next window's lookups, built here rather than
                        // at its close (a no-op when nothing changed).
                        h.prepare(label.as_deref());
                    }
                    Err(e) => {
                        metrics.k8s_lookup_failed();
                        if !failing {
                            warn!("{}", failure_message(&socket, &e));
                        }
                        failing = true;
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(refresh) => {}
                    _ = k.notified() => tokio::time::sleep(SETTLE).await,
                }
            }
        });
        PodSource { history, label: cfg.pod_label.clone(), kick, task }
    }

    /// A link appeared or went: list again soon.
    pub fn link_changed(&self) {
        self.kick.notify_one();
    }

    /// `namespace/name` of the pod on this node holding an address now (the
    /// newest listing), for the live view; windows are not affected.
    pub fn live_lookup(&self) -> crate::live::PodLookup {
        let history = self.history.clone();
        let cache: Mutex<Option<(Arc<Vec<index::ResolvedPod>>, PodIndex)>> = Mutex::new(None);
        Arc::new(move |ip| {
            let newest = history.lock().unwrap_or_else(|e| e.into_inner()).newest()?;
            let mut c = cache.lock().unwrap_or_else(|e| e.into_inner());
            if !c.as_ref().is_some_and(|(l, _)| Arc::ptr_eq(l, &newest)) {
                let index = PodIndex::build(newest.iter(), None);
                *c = Some((newest, index));
            }
            let index = &c.as_ref()?.1;
            index.pod(index.of_ip(ip)).map(|p| p.qualified.to_string())
        })
    }

    /// The pod lookups of the window `[start_ns, end_ns)` (Unix time); `None`
    /// before the first good listing. No runtime call: the kept listings.
    pub fn window(&self, start_ns: u64, end_ns: u64) -> Option<Arc<PodIndex>> {
        let mut h = self.history.lock().unwrap_or_else(|e| e.into_inner());
        h.window(start_ns, end_ns, self.label.as_deref())
    }
}

fn resolve(pods: Vec<Pod>) -> Result<Vec<index::ResolvedPod>, String> {
    let links = netns::host_links().map_err(|e| format!("listing host interfaces (rtnetlink): {e}"))?;
    // A namespace file that is gone (pod being deleted) or not mounted here:
    // the runtime's interface names are the fallback.
    Ok(index::resolve(pods, &links, |p: &Path| {
        // Runtimes name /var/run/netns/…; an image may have no /var/run link.
        let alt = p.strip_prefix("/var/run").ok().map(|rest| Path::new("/run").join(rest));
        netns::nsid_of(p).ok().flatten().or_else(|| alt.and_then(|a| netns::nsid_of(&a).ok().flatten()))
    }))
}

/// The one warning a failing runtime gets (until it answers again).
pub fn failure_message(socket: &Path, e: &str) -> String {
    format!(
        "kubernetes: cannot list pods from the container runtime at {s}: {e}; the k8s-* fields are `-` \
         (or name the pods of the last good listing) until it answers. In a pod, mount the socket's \
         directory as a hostPath volume, read-only, at the same path (or set kubernetes.cri-socket / \
         --cri-socket); counting goes on",
        s = socket.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Fixed(Arc<AtomicUsize>, Result<Vec<Pod>, String>);

    impl PodLister for Fixed {
        async fn list(&mut self) -> Result<Vec<Pod>, String> {
            self.0.fetch_add(1, Ordering::SeqCst);
            self.1.clone()
        }
    }

    struct Hangs;

    impl PodLister for Hangs {
        async fn list(&mut self) -> Result<Vec<Pod>, String> {
            std::future::pending().await
        }
    }

    fn cfg() -> KubernetesConfig {
        KubernetesConfig {
            refresh: Duration::from_secs(3600),
            timeout: Duration::from_secs(1),
            pod_label: Some("app".into()),
            ..KubernetesConfig::default()
        }
    }

    fn failures(m: &Metrics) -> String {
        m.render().lines().filter(|l| l.starts_with("flowlog_k8s_")).collect::<Vec<_>>().join("\n")
    }

    /// A listing is taken at start; the window that contains it names its
    /// pods (the label picked from the configured key).
    #[tokio::test]
    async fn listing_feeds_the_window() {
        let pod = Pod {
            namespace: "shop".into(),
            name: "web".into(),
            uid: "u1".into(),
            labels: [("app".to_string(), "web".to_string())].into(),
            ips: vec!["10.88.0.2".parse().unwrap()],
            netns: Some("/nonexistent/netns".into()),
            ..Pod::default()
        };
        let calls = Arc::new(AtomicUsize::new(0));
        let metrics = Metrics::new(Duration::from_secs(60));
        let start = clock::unix_ns();
        let src = PodSource::start(Fixed(calls.clone(), Ok(vec![pod])), "/x.sock".into(), &cfg(), metrics.clone());
        while src.history.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let idx = src.window(start, start + 60_000_000_000).unwrap();
        let p = idx.pod(idx.of_ip("10.88.0.2".parse().unwrap())).unwrap();
        assert_eq!((p.qualified.as_ref(), p.label.as_deref()), ("shop/web", Some("web")));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(failures(&metrics).contains("flowlog_k8s_pods 1"));
        // A link event lists again (after the settle delay).
        src.link_changed();
        tokio::time::timeout(Duration::from_secs(5), async {
            while calls.load(Ordering::SeqCst) < 2 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap();
    }

    /// A runtime that refuses or never answers: failures counted, windows
    /// have no pods, nothing waits on it.
    #[tokio::test]
    async fn failures_are_counted_and_never_block() {
        let metrics = Metrics::new(Duration::from_secs(60));
        let calls = Arc::new(AtomicUsize::new(0));
        let lister = Fixed(calls.clone(), Err("connection refused".into()));
        let refused = PodSource::start(lister, "/x.sock".into(), &cfg(), metrics.clone());
        let hangs = PodSource::start(Hangs, "/y.sock".into(), &cfg(), metrics.clone());
        tokio::time::timeout(Duration::from_secs(5), async {
            while !failures(&metrics).contains("flowlog_k8s_pod_lookup_failures_total 2") {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap();
        assert!(refused.window(0, u64::MAX).is_none());
        assert!(hangs.window(0, u64::MAX).is_none());
        assert_eq!(
            failure_message(Path::new("/run/containerd/containerd.sock"), "permission denied"),
            "kubernetes: cannot list pods from the container runtime at /run/containerd/containerd.sock: \
             permission denied; the k8s-* fields are `-` (or name the pods of the last good listing) until it \
             answers. In a pod, mount the socket's directory as a hostPath volume, read-only, at the same path (or \
             set kubernetes.cri-socket / --cri-socket); counting goes on"
        );
    }
}
