//! The agent's main loop: capture → drain → enrich → format → ship, once per
//! aggregation interval, and a final round on SIGINT/SIGTERM.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use tokio::{
    signal::unix::{signal, SignalKind},
    time::{sleep_until, Instant},
};
use tracing::{error, info, warn};

use crate::{
    capture::{self, Capture},
    clock,
    drain::Drained,
    enrich::{self, HostMeta, InterfaceMeta},
    format::Format,
    ifaces,
    metrics::{self, Metrics},
    ship::{Output, Sink},
    watch::{self, LinkEvent},
};

#[derive(Clone, Debug)]
pub struct Config {
    /// Interface names or globs; empty = every up, non-loopback interface.
    pub ifaces: Vec<String>,
    /// Globs of interfaces never to capture on.
    pub exclude_ifaces: Vec<String>,
    pub format: Format,
    pub interval: Duration,
    pub outputs: Vec<Output>,
    pub account_id: String,
    /// Capacity of each flow table generation.
    pub max_flows: u32,
    /// Where maps and attachments are pinned (`None`: not pinned).
    pub pin_root: Option<PathBuf>,
    pub on_exit: OnExit,
    /// Address of the metrics/health endpoint (`None`: off).
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Which records are written (`--traffic-type`).
    pub traffic_type: crate::filter::TrafficType,
    /// What counts as REJECT (`--reject-reasons`, `--reject-reason-map`).
    pub reject: crate::reject::RejectConfig,
}

/// What SIGINT/SIGTERM does with the kernel side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnExit {
    /// Final drain, then detach and remove the pins.
    Detach,
    /// Drain the current window, leave the programs counting into the
    /// pinned maps for the next agent (restarts and upgrades lose nothing).
    Keep,
}

/// The next multiple of `interval` in Unix time, so windows line up across
/// hosts (and with the 5-minute files of S3 destinations).
fn next_boundary(interval: Duration) -> Instant {
    let now = clock::unix_ns() as u128;
    let step = interval.as_nanos().max(1);
    let wait = step - now % step;
    Instant::now() + Duration::from_nanos(wait as u64)
}

pub async fn run(cfg: Config) -> Result<()> {
    let drops = crate::reject::DropSetup::prepare(&cfg.reject)?;
    // Subscribe first: a link created while we list is then not missed.
    let mut link_events = watch::spawn().context("subscribing to link notifications (rtnetlink)")?;
    let links = ifaces::list_links().context("listing network interfaces in /sys/class/net")?;
    let selector = ifaces::Selector::new(&cfg.ifaces, &cfg.exclude_ifaces)?;
    let selected = selector.select(&links)?;
    let (mut capture, mut tables) = Capture::load_with(cfg.max_flows, cfg.pin_root.as_deref(), drops.as_ref())?;
    let enrichment = enrich::Enrichment {
        traffic_type: cfg.traffic_type,
        reject_reasons: drops.map(|d| d.reasons).unwrap_or_default(),
        ..Default::default()
    };
    let metrics = Metrics::new(cfg.interval);
    if let Some(addr) = cfg.metrics_listen {
        let bound = metrics::serve(addr, metrics.clone())
            .await
            .with_context(|| format!("listening on {addr} for metrics (--metrics-listen; `off` disables it)"))?;
        info!("metrics on http://{bound}/metrics, health on /healthz and /readyz");
    }
    let mut ifs = Interfaces { machine: ifaces::machine_id(), attached: BTreeMap::new(), in_window: Vec::new(), forget: Vec::new() };
    for link in &selected {
        ifs.attach(&mut capture, link)?;
    }
    if selected.is_empty() {
        warn!(patterns = %cfg.ifaces.join(","), "no interface matches yet; waiting for matching interfaces to appear");
    }
    let mut sinks = cfg.outputs.iter().map(Sink::open).collect::<Result<Vec<_>>>()?;
    let host = HostMeta { account_id: cfg.account_id.as_str().into() };
    let format = &cfg.format;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    metrics.set_attached(ifs.attached.len());
    metrics.set_ready();
    info!(
        interfaces = ifs.attached.len(),
        interval_s = cfg.interval.as_secs_f64(),
        max_flows = cfg.max_flows,
        outputs = %sinks.iter().map(Sink::describe).collect::<Vec<_>>().join(","),
        "ready"
    );

    let mut last_counters = tables.counters()?;
    let keep = cfg.on_exit == OnExit::Keep && capture.pin_dir().is_some();
    if let Some(d) = tables.leftover()? {
        warn!(flows = d.flows.len(), "a previous agent stopped before it shipped a window: reporting it now");
        ship(&host, &ifs.in_window, format, &d, &mut sinks, &metrics, &enrichment);
        tables.release(&d)?;
    }
    loop {
        let deadline = next_boundary(cfg.interval);
        let stop = loop {
            tokio::select! {
                _ = sleep_until(deadline) => break false,
                _ = sigterm.recv() => break true,
                _ = sigint.recv() => break true,
                Some(ev) = link_events.recv() => match ev {
                    LinkEvent::Changed(link) => {
                        if !ifs.attached.contains_key(&link.ifindex) && selector.wants(&link) {
                            if let Err(e) = ifs.attach(&mut capture, &link) {
                                error!(iface = %link.name, "cannot attach to a new interface: {e:#}");
                            }
                        }
                    }
                    LinkEvent::Removed { ifindex, .. } => ifs.gone(&mut capture, ifindex),
                },
            }
        };
        // In case a notification was missed.
        for a in capture.attached().cloned().collect::<Vec<_>>() {
            if !capture::still_present(&a) {
                ifs.gone(&mut capture, a.ifindex);
            }
        }
        let started = std::time::Instant::now();
        let drained = if stop && !keep {
            capture.detach_all();
            tables.drain_all()?
        } else {
            tables.rotate()?
        };
        metrics.drained(&drained, &ifs.in_window, cfg.max_flows, started.elapsed().as_secs_f64());
        ship(&host, &ifs.in_window, format, &drained, &mut sinks, &metrics, &enrichment);
        tables.release(&drained)?;
        let skipped: u64 = drained.fails.iter().map(|(_, f)| f.packets).sum::<u64>() + drained.unattributed_failures;
        if skipped > 0 {
            warn!(packets = skipped, max_flows = cfg.max_flows, "flow table full: packets not counted, SKIPDATA written; raise --max-flows");
        }
        let c = tables.counters()?;
        metrics.kernel_counters(c.malformed, c.non_ip);
        if c.malformed > last_counters.malformed {
            info!(frames = c.malformed - last_counters.malformed, "malformed or truncated IP frames ignored in this window");
        }
        if c.reject_not_moved > last_counters.reject_not_moved {
            warn!(
                packets = c.reject_not_moved - last_counters.reject_not_moved,
                "dropped packets reported as REJECT whose ACCEPT count was in an earlier window (dropped long after they arrived)"
            );
        }
        last_counters = c;

        // The next window reports the interfaces attached now.
        ifs.in_window = ifs.attached.values().cloned().collect();
        for name in ifs.forget.drain(..) {
            metrics.forget_interface(&name);
        }
        metrics.set_attached(ifs.attached.len());
        if stop {
            if keep {
                capture.keep_pinned();
                info!("stopped; programs stay attached and keep counting for the next agent (--on-exit keep)");
            } else {
                capture.remove_pins();
                info!("stopped after the final drain");
            }
            return Ok(());
        }
    }
}

/// Formats one window's records and writes them to every destination.
#[allow(clippy::too_many_arguments)]
fn ship(
    host: &HostMeta,
    ifaces: &[InterfaceMeta],
    format: &Format,
    drained: &Drained,
    sinks: &mut [Sink],
    metrics: &Metrics,
    enrichment: &enrich::Enrichment,
) {
    let records = enrich::build_records(host, ifaces, drained, Some(enrichment));
    metrics.records(&records);
    let mut batch = Vec::with_capacity(records.len() * 120);
    for r in &records {
        format.write(r, &mut batch);
        batch.push(b'\n');
    }
    for s in sinks {
        let res = s.write_batch(&batch);
        metrics.shipped(&s.describe(), records.len(), res.is_ok());
        if let Err(e) = res {
            error!(output = %s.describe(), records = records.len(), "records of this window were not written: {e:#}");
        }
    }
}

/// The attached interfaces, and all that were attached during the window.
struct Interfaces {
    machine: String,
    attached: BTreeMap<u32, InterfaceMeta>,
    /// Gets NODATA/flow records in the current window, even if detached since.
    in_window: Vec<InterfaceMeta>,
    /// Gone interfaces whose metric series go after this window.
    forget: Vec<String>,
}

impl Interfaces {
    fn attach(&mut self, capture: &mut Capture, link: &ifaces::LinkInfo) -> Result<()> {
        capture.attach(link)?;
        let interface_id: Arc<str> = ifaces::derived_interface_id(&self.machine, &link.name).into();
        info!(iface = %link.name, ifindex = link.ifindex, %interface_id, "attached (XDP ingress, TC egress)");
        let meta = InterfaceMeta { ifindex: link.ifindex, name: link.name.clone(), interface_id };
        if !self.in_window.iter().any(|m| m.ifindex == link.ifindex) {
            self.in_window.push(meta.clone());
        }
        self.attached.insert(link.ifindex, meta);
        Ok(())
    }

    fn gone(&mut self, capture: &mut Capture, ifindex: u32) {
        if let Some(m) = self.attached.remove(&ifindex) {
            capture.detach(ifindex);
            self.forget.push(m.name.clone());
            warn!(iface = %m.name, ifindex, "interface disappeared; reporting its last window and going on with the others");
            if self.attached.is_empty() {
                warn!("no interface left to capture on; waiting for matching interfaces to appear");
            }
        }
    }
}
