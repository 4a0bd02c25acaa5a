//! Self-metrics (Prometheus text format) and health endpoints.
//!
//! `GET /metrics`, `GET /healthz` (the main loop closed a window recently),
//! `GET /readyz` (attached and running). Loopback by default: the numbers
//! describe the host's traffic. The captured interfaces' driver statistics
//! (link counters) are read at scrape time: [`link`].

pub mod link;

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use http_body_util::Full;
use hyper::{body::Bytes, server::conn::http1, service::service_fn, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use tokio::net::TcpListener;

use flowlog_records::record::{FlowRecord, LogStatus};
use crate::{
    bpf::clock,
    drain::Drained,
    enrich::InterfaceMeta,
};

/// Records of one window by `log-status`, counted as they stream by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordCounts {
    pub ok: usize,
    pub nodata: usize,
    pub skipdata: usize,
}

impl RecordCounts {
    pub fn add(&mut self, r: &FlowRecord) {
        match r.log_status {
            LogStatus::Ok => self.ok += 1,
            LogStatus::NoData => self.nodata += 1,
            LogStatus::SkipData => self.skipdata += 1,
        }
    }

    pub fn total(&self) -> usize {
        self.ok + self.nodata + self.skipdata
    }

    pub fn merge(&mut self, other: &RecordCounts) {
        self.ok += other.ok;
        self.nodata += other.nodata;
        self.skipdata += other.skipdata;
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IfaceDir {
    pub interface: String,
    pub direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Iface {
    pub interface: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Status {
    pub log_status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutputLabel {
    pub output: String,
}

/// `ok` (accepted; applied at the next window boundary) or `error`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadResult {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutputReason {
    pub output: String,
    pub reason: String,
}

/// What runs: the agent's version, the kernel object it loaded (first 16
/// hex digits of its SHA-256), the flow table that object has (`hash` or
/// `slots`, chosen by the kernel's features) and the kernel release.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
    pub ebpf_object: String,
    pub flow_table: String,
    pub kernel: String,
    /// "true" when every program loaded at startup is JIT-compiled.
    pub jited: String,
}

/// Declares [`Metrics`] and its `new` from one table, a metric a row in the
/// order `/metrics` lists them: its field, type (and its value where not the
/// default), name and help.
macro_rules! metrics {
    (@init) => { Default::default() };
    (@init $init:expr) => { $init };
    ($($field:ident: $ty:ty $(= $init:expr)?, $name:literal, $help:literal;)*) => {
        pub struct Metrics {
            registry: Registry,
            $($field: $ty,)*
            ready: AtomicBool,
            last_window_unix: AtomicU64,
            interval: Duration,
            link: Arc<link::LinkCounters>,
        }

        impl Metrics {
            pub fn new(interval: Duration) -> Arc<Metrics> {
                let mut registry = Registry::with_prefix("flowlog");
                $(
                    let $field: $ty = metrics!(@init $($init)?);
                    registry.register($name, $help, $field.clone());
                )*
                let link = Arc::new(link::LinkCounters::default());
                registry.register_collector(Box::new(link.clone()));
                Arc::new(Metrics {
                    registry,
                    $($field,)*
                    ready: AtomicBool::new(false),
                    last_window_unix: AtomicU64::new(clock::unix_ns() / 1_000_000_000),
                    interval,
                    link,
                })
            }
        }
    };
}

metrics! {
    windows: Counter, "windows", "Aggregation windows closed";
    packets: Family<IfaceDir, Counter>, "packets", "Packets counted (wire packets)";
    bytes: Family<IfaceDir, Counter>, "bytes", "IP-layer bytes counted";
    flows: Family<Iface, Counter>, "flows", "Flow records (OK) produced";
    insert_failures: Family<Iface, Counter>, "insert_failures_packets", "Packets not counted because the flow table was full (SKIPDATA)";
    records: Family<Status, Counter>, "records", "Records produced, by log-status";
    shipped: Family<OutputLabel, Counter>, "records_shipped", "Records written by a destination";
    dropped: Family<OutputLabel, Counter>, "records_dropped", "Records a destination failed to write";
    table_fill: Gauge<f64, AtomicU64>, "flow_table_fill_ratio", "Flows in the last window / --max-flows";
    malformed: Counter, "malformed_frames", "IP frames shorter than their headers say";
    non_ip: Counter, "non_ip_frames", "Frames that are not IPv4/IPv6";
    filtered: Counter, "filtered_packets", "Packets the kernel filters left out";
    sampled_out: Counter, "sampled_out_packets", "Packets sampling skipped (counted ones are scaled)";
    attached: Gauge, "attached_interfaces", "Interfaces the programs are attached to";
    delivered: Family<OutputLabel, Counter>, "records_delivered", "Records a spooled destination acknowledged";
    rejected: Family<OutputLabel, Counter>, "records_rejected", "Records a destination refused for good";
    spool_bytes: Gauge, "spool_bytes", "Size of the on-disk spool";
    spool_dropped: Counter, "spool_dropped_records", "Records dropped because the spool was full";
    drain_seconds: Histogram = Histogram::new([0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]), "drain_duration_seconds", "Time to flip and read the kernel tables";
    spool_oldest_age: Gauge, "spool_oldest_record_age_seconds", "Seconds since the window of the oldest record an output has not acknowledged ended (0: none waiting)";
    last_success: Family<OutputLabel, Gauge>, "output_last_success_timestamp_seconds", "Unix time of an output's last successful write or service call";
    errors: Family<OutputReason, Counter>, "output_errors", "Failed writes or service calls of an output, by reason";
    build: Family<BuildLabels, Gauge>, "build_info", "Always 1; the labels say what runs";
    reloads: Family<ReloadResult, Counter>, "config_reloads", "Configuration reloads (SIGHUP) by result: ok \
        (applied at the next window boundary), error (refused, the running configuration stays)";
    k8s_failures: Counter, "k8s_pod_lookup_failures", "Pod listings from the runtime (CRI) that failed or timed out";
    k8s_pods: Gauge, "k8s_pods", "Pods in the last good listing from the container runtime";
}

impl Metrics {

    /// `flowlog_build_info` for the loaded object.
    pub fn set_build(&self, flow_table: &str, object: &[u8], jited: bool) {
        use sha2::Digest;
        let h = sha2::Sha256::digest(object);
        let labels = BuildLabels {
            version: env!("CARGO_PKG_VERSION").into(),
            ebpf_object: h[..8].iter().map(|b| format!("{b:02x}")).collect(),
            flow_table: flow_table.into(),
            kernel: crate::bpf::probe::release(),
            jited: jited.to_string(),
        };
        self.build.clear();
        self.build.get_or_create(&labels).set(1);
    }

    /// A reload (SIGHUP) was accepted, or refused.
    pub fn reloaded(&self, ok: bool) {
        self.reloads.get_or_create(&ReloadResult { result: if ok { "ok" } else { "error" }.into() }).inc();
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    /// A pod listing failed (the last good one stays in use).
    pub fn k8s_lookup_failed(&self) {
        self.k8s_failures.inc();
    }

    pub fn set_k8s_pods(&self, n: usize) {
        self.k8s_pods.set(n as i64);
    }

    /// The captured interfaces: their number, and whose link counters to read.
    pub fn set_attached<'a>(&self, ifaces: impl ExactSizeIterator<Item = &'a InterfaceMeta>) {
        self.attached.set(ifaces.len() as i64);
        self.link.set_interfaces(ifaces.map(|m| m.name.clone()).collect());
    }

    /// The driver statistics (`ethtool -S` names) exported per interface.
    pub fn set_link_counters(&self, names: &[String]) {
        self.link.set_names(names);
    }

    pub fn drained(&self, d: &Drained, ifaces: &[InterfaceMeta], max_flows: u32, seconds: f64) {
        self.drain_seconds.observe(seconds);
        self.windows.inc();
        self.last_window_unix.store(clock::unix_ns() / 1_000_000_000, Ordering::Relaxed);
        self.table_fill.set(d.flows.len() as f64 / max_flows.max(1) as f64);
        let names: HashMap<u32, &str> = ifaces.iter().map(|m| (m.ifindex, m.name.as_str())).collect();
        let name = |i: u32| names.get(&i).map_or_else(|| format!("ifindex{i}"), |n| n.to_string());
        for (k, s) in &d.flows {
            let direction = if k.direction == flowlog_common::direction::INGRESS { "ingress" } else { "egress" };
            let l = IfaceDir { interface: name(k.ifindex), direction: direction.into() };
            self.packets.get_or_create(&l).inc_by(s.packets);
            self.bytes.get_or_create(&l).inc_by(s.bytes);
            self.flows.get_or_create(&Iface { interface: l.interface }).inc();
        }
        for (i, f) in &d.fails {
            self.insert_failures.get_or_create(&Iface { interface: name(*i) }).inc_by(f.packets);
        }
    }

    pub fn records(&self, counts: &RecordCounts) {
        for (status, n) in [(LogStatus::Ok, counts.ok), (LogStatus::NoData, counts.nodata), (LogStatus::SkipData, counts.skipdata)] {
            if n > 0 {
                self.records.get_or_create(&Status { log_status: status.as_str().into() }).inc_by(n as u64);
            }
        }
    }

    /// A direct output (stdout, file:) wrote a window, or failed to.
    pub fn shipped(&self, output: &str, n: usize, ok: bool) {
        let l = OutputLabel { output: output.into() };
        if ok {
            self.last_success.get_or_create(&l).set((clock::unix_ns() / 1_000_000_000) as i64);
        } else {
            self.errors.get_or_create(&OutputReason { output: output.into(), reason: "write".into() }).inc();
        }
        if ok { &self.shipped } else { &self.dropped }.get_or_create(&l).inc_by(n as u64);
    }

    /// Spooled destinations' counters and the spool's size.
    pub fn destinations(&self, shipper: &crate::ship::Shipper) {
        use std::sync::atomic::Ordering::Relaxed;
        for (name, st) in &shipper.stats {
            let l = OutputLabel { output: name.clone() };
            for (fam, v) in [(&self.delivered, st.delivered.load(Relaxed)), (&self.rejected, st.rejected.load(Relaxed))] {
                let c = fam.get_or_create(&l);
                c.inc_by(v.saturating_sub(c.get()));
            }
            let last = st.last_success_unix.load(Relaxed);
            if last > 0 {
                self.last_success.get_or_create(&l).set(last as i64);
            }
            for (reason, v) in st.errors() {
                if v > 0 {
                    let c = self.errors.get_or_create(&OutputReason { output: name.clone(), reason: reason.into() });
                    c.inc_by(v.saturating_sub(c.get()));
                }
            }
        }
        if let Some(sp) = shipper.spool() {
            self.spool_bytes.set(sp.bytes() as i64);
            self.spool_oldest_age.set(sp.oldest_record_age(clock::unix_ns() / 1_000_000_000).unwrap_or(0) as i64);
            let dropped = sp.stats.dropped_records.load(Relaxed);
            self.spool_dropped.inc_by(dropped.saturating_sub(self.spool_dropped.get()));
        }
    }

    /// The kernel's cumulative counters; metrics take the increase.
    pub fn kernel_counters(&self, c: &crate::drain::KernelCounters) {
        for (m, v) in [(&self.malformed, c.malformed), (&self.non_ip, c.non_ip), (&self.filtered, c.filtered), (&self.sampled_out, c.sampled_out)] {
            m.inc_by(v.saturating_sub(m.get()));
        }
    }

    /// Series of an interface that is gone, so pod churn does not grow them forever.
    pub fn forget_interface(&self, name: &str) {
        for direction in ["ingress", "egress"] {
            let l = IfaceDir { interface: name.into(), direction: direction.into() };
            self.packets.remove(&l);
            self.bytes.remove(&l);
        }
        self.flows.remove(&Iface { interface: name.into() });
        self.insert_failures.remove(&Iface { interface: name.into() });
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        encode(&mut s, &self.registry).expect("writing to a String");
        s
    }

    /// What `/healthz` answers, and what the systemd watchdog pings on.
    pub fn healthy(&self) -> bool {
        let now = clock::unix_ns() / 1_000_000_000;
        let last = self.last_window_unix.load(Ordering::Relaxed);
        now.saturating_sub(last) <= 2 * self.interval.as_secs() + 30
    }
}

fn reply(status: StatusCode, body: String, content_type: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts")
}

async fn handle(m: Arc<Metrics>, req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let text = "text/plain; charset=utf-8";
    Ok(match req.uri().path() {
        // Off the runtime's threads: the link counters' ioctl may wait for the RTNL lock.
        "/metrics" => match tokio::task::spawn_blocking(move || m.render()).await {
            Ok(body) => reply(StatusCode::OK, body, "application/openmetrics-text; version=1.0.0; charset=utf-8"),
            Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, format!("rendering the metrics failed: {e}\n"), text),
        },
        "/healthz" if m.healthy() => reply(StatusCode::OK, "ok\n".into(), text),
        "/healthz" => reply(StatusCode::SERVICE_UNAVAILABLE, "no window closed recently\n".into(), text),
        "/readyz" if m.ready.load(Ordering::Relaxed) => reply(StatusCode::OK, "ready\n".into(), text),
        "/readyz" => reply(StatusCode::SERVICE_UNAVAILABLE, "starting\n".into(), text),
        _ => reply(StatusCode::NOT_FOUND, "try /metrics, /healthz or /readyz\n".into(), text),
    })
}

/// Binds `addr` (port 0 picks one) and serves in the background.
pub async fn serve(addr: SocketAddr, m: Arc<Metrics>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let m = m.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| handle(m.clone(), req));
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowlog_common::{FlowKey, FlowStats, InsertFailures};

    fn sha_hex(b: &[u8]) -> String {
        use sha2::Digest;
        sha2::Sha256::digest(b).iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn window_counts_become_metrics() {
        let m = Metrics::new(Duration::from_secs(60));
        let key = |ifindex, direction| FlowKey {
            ifindex,
            src_addr: [0; 16],
            dst_addr: [0; 16],
            src_port: 1,
            dst_port: 2,
            protocol: 17,
            direction,
            family: 4,
            _pad: 0,
        };
        let st = |p, b| FlowStats { packets: p, bytes: b, ..Default::default() };
        let d = Drained::from_parts(
            vec![(key(2, 0), st(3, 300)), (key(2, 1), st(1, 50)), (key(3, 0), st(2, 20))],
            vec![(3, InsertFailures { packets: 7, bytes: 70 })],
            0,
            0,
            0,
            0,
        );
        let ifaces = [
            InterfaceMeta { ifindex: 2, name: "eth0".into(), interface_id: "eni-a".into(), meta: None, tags: None, ecs: None },
            InterfaceMeta { ifindex: 3, name: "eth1".into(), interface_id: "eni-b".into(), meta: None, tags: None, ecs: None },
        ];
        m.drained(&d, &ifaces, 10, 0.002);
        let c = |malformed, non_ip| crate::drain::KernelCounters { malformed, non_ip, filtered: 2, ..Default::default() };
        m.kernel_counters(&c(5, 9));
        m.kernel_counters(&c(6, 9));
        m.shipped("stdout", 4, true);
        m.shipped("file:/x", 2, false);
        m.set_build("slots", b"object", true);
        let text = m.render();
        assert!(text.contains(&format!("ebpf_object=\"{}\",flow_table=\"slots\"", &sha_hex(b"object")[..16])), "{text}");
        assert!(text.contains(",jited=\"true\"} 1"), "{text}");
        let version = format!("flowlog_build_info{{version=\"{}\",ebpf_object=\"", env!("CARGO_PKG_VERSION"));
        assert!(text.lines().any(|l| l.starts_with(&version) && l.ends_with("} 1")), "{text}");
        let now = clock::unix_ns() / 1_000_000_000;
        let last = text.lines().find_map(|l| l.strip_prefix("flowlog_output_last_success_timestamp_seconds{output=\"stdout\"} ")).unwrap();
        assert!(last.parse::<u64>().unwrap().abs_diff(now) <= 5, "{last} vs {now}");
        assert!(!text.contains("flowlog_output_last_success_timestamp_seconds{output=\"file:/x\"}"), "{text}");
        for line in [
            "flowlog_packets_total{interface=\"eth0\",direction=\"ingress\"} 3",
            "flowlog_bytes_total{interface=\"eth0\",direction=\"egress\"} 50",
            "flowlog_flows_total{interface=\"eth0\"} 2",
            "flowlog_insert_failures_packets_total{interface=\"eth1\"} 7",
            "flowlog_flow_table_fill_ratio 0.3",
            "flowlog_malformed_frames_total 6",
            "flowlog_non_ip_frames_total 9",
            "flowlog_filtered_packets_total 2",
            "flowlog_records_shipped_total{output=\"stdout\"} 4",
            "flowlog_records_dropped_total{output=\"file:/x\"} 2",
            "flowlog_output_errors_total{output=\"file:/x\",reason=\"write\"} 1",
            "flowlog_windows_total 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        m.forget_interface("eth0");
        assert!(!m.render().contains("interface=\"eth0\""));
    }
}
