//! The agent's main loop: capture → drain → enrich → format → ship, once per
//! aggregation interval, and a final round on SIGINT/SIGTERM.

use std::{
    collections::BTreeMap,
    path::Path,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result};
use tokio::{
    signal::unix::{signal, SignalKind},
    time::{sleep_until, Instant},
};
use tracing::{error, info, warn};

use flowlog_records::format::Format;
use crate::{
    capture::{self, Capture},
    drain::clock,
    drain::Drained,
    enrich::{self, HostMeta, InterfaceMeta},
    capture::links,
    metrics::{self, Metrics, RecordCounts},
    config::{OnExit, Settings},
    enrich::{EcsConfig, Enrichment, TagFields},
    metadata::{InterfaceMetadata, LinkId, MetadataProvider, ProviderKind, Snapshot},
    ship::Shipper,
    capture::watch::{self, LinkEvent},
};

const SYSFS: &str = "/sys";

/// The next multiple of `interval` in Unix time, so windows line up across
/// hosts (and with the 5-minute files of S3 destinations).
fn next_boundary(interval: Duration) -> Instant {
    let now = clock::unix_ns() as u128;
    let step = interval.as_nanos().max(1);
    let wait = step - now % step;
    Instant::now() + Duration::from_nanos(wait as u64)
}

pub async fn run(settings: Settings) -> Result<()> {
    let cfg = &settings.agent;
    let drops = match crate::capture::reject::DropSetup::prepare(&cfg.reject) {
        Ok(d) => d.map(|d| crate::capture::reject::DropSetup { optional: !cfg.reject_explicit, ..d }),
        Err(e) if !cfg.reject_explicit => {
            warn!("REJECT records are off: {e:#}");
            None
        }
        Err(e) => return Err(e),
    };
    // Subscribe first: a link created while we list is then not missed.
    let mut link_events = watch::spawn().context("subscribing to link notifications (rtnetlink)")?;
    let links = links::list_links().context("listing network interfaces in /sys/class/net")?;
    let selector = links::Selector::new(&cfg.ifaces, &cfg.exclude_ifaces)?;
    let selected = selector.select(&links)?;
    let (mut capture, mut tables) =
        Capture::load(cfg.max_flows, cfg.pin_root.as_deref(), cfg.sample_rate, &cfg.filters, drops.as_ref())?;
    capture.set_ingress_hook(cfg.ingress_hook);
    if !capture::probe::tcx_available() {
        // Netlink filters outlive their agent; on interfaces this agent will
        // not capture on, a crashed predecessor's would count on unseen.
        for l in links.iter().filter(|l| !selected.iter().any(|s| s.ifindex == l.ifindex)) {
            capture::tc::remove_all(&l.name, l.ifindex, &capture::TC_PROGRAMS);
        }
    }
    let metrics = Metrics::new(cfg.interval);
    metrics.set_build(capture.table().name(), capture::object_of(capture.table()), capture.jit().all_jited());
    if let Some(addr) = cfg.metrics_listen {
        let bound = metrics::serve(addr, metrics.clone())
            .await
            .with_context(|| format!("listening on {addr} for metrics (--metrics-listen; `off` disables it)"))?;
        info!("metrics on http://{bound}/metrics, health on /healthz and /readyz");
    }
    let machine = links::machine_id();
    let (mut provider, selection) =
        MetadataProvider::new(&settings.metadata, Path::new(SYSFS), &machine).context("metadata configuration ([metadata])")?;
    info!(source = ?selection.kind, why = %selection.why, "metadata provider");
    // Native flow logs never show metadata, DNS, time sync or DHCP traffic of
    // an instance: leave it out by default on EC2.
    let mut enrichment = settings
        .enrich
        .build(&[], selection.kind == ProviderKind::Ec2)
        .context("enrichment configuration ([enrich])")?;
    if let Some(d) = &drops {
        enrichment.reject_reasons = d.reasons.clone();
    }
    let link_ids: Vec<LinkId> = selected.iter().map(|l| LinkId::from_sysfs(Path::new(SYSFS), &l.name)).collect();
    let snapshot = match provider.refresh(&link_ids).await {
        Ok(s) => s,
        Err(e) => {
            warn!("metadata: {e}; using what is known");
            provider.cached(&link_ids)
        }
    };
    let host = HostMeta {
        account_id: cfg.account_id.as_deref().map_or_else(|| snapshot.host.account_id.clone(), Into::into),
        account_override: cfg.account_id.is_some(),
    };
    // Refreshes run off the capture path: IMDS may be slow or retrying.
    let (links_tx, links_rx) = tokio::sync::watch::channel(link_ids);
    let (snap_tx, mut snap_rx) = tokio::sync::watch::channel(snapshot.clone());
    let refresh = settings.metadata.refresh_interval();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(Instant::now() + refresh, refresh);
        loop {
            tick.tick().await;
            let links = links_rx.borrow().clone();
            let s = match provider.refresh(&links).await {
                Ok(s) => s,
                Err(e) => {
                    warn!("metadata refresh: {e}; keeping what is known");
                    provider.cached(&links)
                }
            };
            if snap_tx.send(s).is_err() {
                return;
            }
        }
    });
    let mut ifs = Interfaces {
        machine,
        attached: BTreeMap::new(),
        in_window: Vec::new(),
        forget: Vec::new(),
        snapshot,
        links: links_tx,
        tag_fields: settings.enrich.tag_fields.clone(),
        ecs: settings.enrich.ecs.clone(),
    };
    for link in &selected {
        ifs.attach(&mut capture, link)?;
    }
    if selected.is_empty() {
        warn!(patterns = %cfg.ifaces.join(","), "no interface matches yet; waiting for matching interfaces to appear");
    }
    let mut ship_cfg = cfg.ship.clone();
    ship_cfg.account_id = host.account_id.to_string();
    let mut shipper = Shipper::start(&ship_cfg).await?;
    let format = &cfg.format;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    metrics.set_attached(ifs.attached.len());
    metrics.set_ready();
    crate::notify::ready(&format!("capturing on {} interfaces, writing to {}", ifs.attached.len(), shipper.describe()), metrics.clone());
    info!(
        interfaces = ifs.attached.len(),
        interval_s = cfg.interval.as_secs_f64(),
        max_flows = cfg.max_flows,
        sample_rate = cfg.sample_rate.max(1),
        outputs = %shipper.describe(),
        "ready"
    );

    let mut last_counters = tables.counters()?;
    let keep = cfg.on_exit == OnExit::Keep && capture.pin_dir().is_some();
    if let Some(d) = tables.leftover()? {
        warn!(flows = d.flows.len(), "a previous agent stopped before it shipped a window: reporting it now");
        if ship(&host, &ifs.in_window, format, &d, &mut shipper, &metrics, &enrichment) {
            tables.release(&d)?;
        }
    }
    // Interfaces whose attach failed once: not retried every window.
    let mut refused = std::collections::BTreeSet::new();
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
                    LinkEvent::Overrun => relist(&mut ifs, &mut capture, &selector, &mut refused),
                },
                Ok(()) = snap_rx.changed() => {
                    let s = snap_rx.borrow_and_update().clone();
                    ifs.update(s);
                }
            }
        };
        if stop {
            crate::notify::stopping();
        }
        relist(&mut ifs, &mut capture, &selector, &mut refused);
        let started = std::time::Instant::now();
        let drained = if stop && !keep {
            capture.detach_all();
            tables.drain_all()?
        } else {
            tables.rotate()?
        };
        metrics.drained(&drained, &ifs.in_window, cfg.max_flows, started.elapsed().as_secs_f64());
        let written = ship(&host, &ifs.in_window, format, &drained, &mut shipper, &metrics, &enrichment);
        crate::notify::status(&format!(
            "{} flows from {} interfaces in the last window ({}); {} interfaces attached",
            drained.flows.len(),
            ifs.in_window.len(),
            if written { "written" } else { "kept in the kernel: no output took it" },
            ifs.attached.len()
        ));
        if written {
            tables.release(&drained)?;
        } else if !stop || keep {
            // Left in the kernel table: the programs add to it again two
            // windows on, and that window reports both (times widened).
            warn!(flows = drained.flows.len(), "no output took this window's records: they stay in the kernel and are reported with a later window");
        }
        let skipped: u64 = drained.fails.iter().map(|(_, f)| f.packets).sum::<u64>() + drained.unattributed_failures;
        if skipped > 0 {
            warn!(packets = skipped, max_flows = cfg.max_flows, "flow table full: packets not counted, SKIPDATA written; raise --max-flows");
        }
        let c = tables.counters()?;
        metrics.kernel_counters(&c);
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
            shipper.shutdown().await;
            if keep {
                capture.keep_pinned();
                info!("stopped; programs stay attached and keep counting for the next agent (--on-exit keep)");
            } else if written || capture.pin_dir().is_none() {
                if !written {
                    error!(flows = drained.flows.len(), "no output took the final window's records and nothing is pinned: they are lost");
                }
                capture.remove_pins();
                info!("stopped after the final drain");
            } else {
                warn!(flows = drained.flows.len(), "no output took the final window's records: the pinned tables keep them for the next agent");
                info!("stopped after the final drain");
            }
            return Ok(());
        }
    }
}

/// Compares the attached interfaces with a fresh list of links, by ifindex:
/// a notification lost to a netlink overrun is recovered (new interfaces
/// attached, vanished ones reported), and a renamed interface, which keeps
/// its ifindex and its programs, stays attached.
fn relist(ifs: &mut Interfaces, capture: &mut Capture, selector: &links::Selector, refused: &mut std::collections::BTreeSet<u32>) {
    let now = match links::list_links() {
        Ok(l) => l,
        Err(e) => {
            warn!("cannot list interfaces to check for missed link events: {e}");
            return;
        }
    };
    for a in capture.attached().cloned().collect::<Vec<_>>() {
        if !now.iter().any(|l| l.ifindex == a.ifindex) {
            ifs.gone(capture, a.ifindex);
        }
    }
    refused.retain(|i| now.iter().any(|l| l.ifindex == *i));
    let missing: Vec<&links::LinkInfo> =
        now.iter().filter(|l| !ifs.attached.contains_key(&l.ifindex) && !refused.contains(&l.ifindex) && selector.wants(l)).collect();
    for l in missing {
        if let Err(e) = ifs.attach(capture, l) {
            error!(iface = %l.name, "cannot attach to an interface: {e:#}");
            refused.insert(l.ifindex);
        }
    }
}

/// Formats one window's records and writes them to every destination.
/// Whether at least one output (or the spool) took them: only then may the
/// kernel tables forget them.
#[allow(clippy::too_many_arguments)]
fn ship(
    host: &HostMeta,
    ifaces: &[InterfaceMeta],
    format: &Format,
    drained: &Drained,
    shipper: &mut Shipper,
    metrics: &Metrics,
    enrichment: &Enrichment,
) -> bool {
    let mut counts = RecordCounts::default();
    let mut window = shipper.window(format);
    enrich::for_each_record(host, ifaces, drained, Some(enrichment), |r| {
        counts.add(r);
        window.push(r);
    });
    metrics.records(&counts);
    let results = window.finish();
    for (output, ok) in &results {
        metrics.shipped(output, counts.total(), *ok);
    }
    metrics.destinations(shipper);
    results.is_empty() || results.iter().any(|(_, ok)| *ok)
}

/// The attached interfaces, and all that were attached during the window.
struct Interfaces {
    machine: String,
    attached: BTreeMap<u32, InterfaceMeta>,
    /// Gets NODATA/flow records in the current window, even if detached since.
    in_window: Vec<InterfaceMeta>,
    /// Gone interfaces whose metric series go after this window.
    forget: Vec<String>,
    /// The latest metadata.
    snapshot: Snapshot,
    /// What the metadata refresher looks up.
    links: tokio::sync::watch::Sender<Vec<LinkId>>,
    tag_fields: TagFields,
    ecs: BTreeMap<String, EcsConfig>,
}

impl Interfaces {
    fn meta_for(&self, ifindex: u32, name: &str) -> InterfaceMeta {
        let m = match self.snapshot.interface(name) {
            Some(m) => m.clone(),
            None => InterfaceMetadata::derived(&LinkId::from_sysfs(Path::new(SYSFS), name), &self.snapshot.host, &self.machine),
        };
        let tags = self.tag_fields.values(&self.snapshot.host.instance_tags, &m.tags);
        let ecs = self.ecs.get(name).map(EcsConfig::meta);
        InterfaceMeta { ifindex, name: name.to_string(), interface_id: m.interface_id.clone(), meta: Some(Arc::new(m)), tags, ecs }
    }

    fn attach(&mut self, capture: &mut Capture, link: &links::LinkInfo) -> Result<()> {
        let ingress = capture.attach(link)?;
        let meta = self.meta_for(link.ifindex, &link.name);
        info!(iface = %link.name, ifindex = link.ifindex, interface_id = %meta.interface_id, ingress, egress = "tc", "attached");
        if !self.in_window.iter().any(|m| m.ifindex == link.ifindex) {
            self.in_window.push(meta.clone());
        }
        self.attached.insert(link.ifindex, meta);
        let name = link.name.clone();
        self.links.send_modify(|l| {
            if !l.iter().any(|x| x.name == name) {
                l.push(LinkId::from_sysfs(Path::new(SYSFS), &name));
            }
        });
        Ok(())
    }

    fn gone(&mut self, capture: &mut Capture, ifindex: u32) {
        if let Some(m) = self.attached.remove(&ifindex) {
            capture.detach(ifindex);
            self.forget.push(m.name.clone());
            self.links.send_modify(|l| l.retain(|x| x.name != m.name));
            warn!(iface = %m.name, ifindex, "interface disappeared; reporting its last window and going on with the others");
            if self.attached.is_empty() {
                warn!("no interface left to capture on; waiting for matching interfaces to appear");
            }
        }
    }

    /// New metadata (e.g. a hot-plugged ENI got its id): applies from the
    /// current window on.
    fn update(&mut self, s: Snapshot) {
        self.snapshot = s;
        let fresh: Vec<InterfaceMeta> = self.attached.values().map(|m| self.meta_for(m.ifindex, &m.name)).collect();
        for m in fresh {
            if self.attached.get(&m.ifindex).is_some_and(|old| old.interface_id != m.interface_id) {
                info!(iface = %m.name, interface_id = %m.interface_id, "interface metadata changed");
            }
            if let Some(w) = self.in_window.iter_mut().find(|w| w.ifindex == m.ifindex) {
                *w = m.clone();
            }
            self.attached.insert(m.ifindex, m);
        }
    }
}
