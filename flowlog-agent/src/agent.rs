//! The agent's main loop: capture → drain → enrich → format → ship, once per
//! aggregation interval, and a final round on SIGINT/SIGTERM.
//!
//! SIGHUP reads the configuration again ([`Source`]) and checks it at once
//! (outputs opened and checked too); a bad one is refused and the running
//! one stays. A good one waits for the window's end: the window is written
//! as configured when it was counted, then the interfaces, the format, the
//! outputs and `[enrich]` change, so each window is whole in one
//! configuration. Interfaces no longer selected are detached just before
//! the window's tables are switched (their last packets are in it), new ones
//! attached just after.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result};
use tokio::{
    signal::unix::{signal, Signal, SignalKind},
    sync::mpsc::UnboundedReceiver,
    time::{sleep_until, Instant},
};
use tracing::{error, info, warn};

use crate::{
    bpf::clock,
    capture::{self, links, reject::{DropSetup, RejectReasons}, watch::{self, LinkEvent}, Capture},
    config::{Config, OnExit, Settings, Source},
    drain::{Drained, FlowTables, KernelCounters},
    enrich::{self, EcsConfig, Enrichment, HostMeta, InterfaceMeta, TagFields},
    metadata::{
        kubernetes::{source::PodSource, KubernetesConfig, Mode as K8sMode},
        refresh::Refresher,
        InterfaceMetadata, LinkId, MetadataProvider, ProviderKind, Snapshot,
    },
    metrics::{self, Metrics},
    ship::{Reconfig, ShipConfig, Shipper},
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

/// Runs windows until SIGINT/SIGTERM, then a final one; a reload (SIGHUP)
/// re-reads `source` and applies at the next window boundary.
pub async fn run(settings: Settings, source: Source) -> Result<()> {
    let mut agent = Agent::start(settings, source).await?;
    agent.report_leftover()?;
    loop {
        let stop = agent.wait_for_window_end().await;
        let reload = agent.pending.take();
        if let Some(r) = reload.as_ref().filter(|_| !stop) {
            agent.leave_unselected(&r.selector);
        }
        let closed = agent.close_window(stop)?;
        if stop {
            if reload.is_some() {
                warn!("stopping before the reloaded configuration applied: the window was written with the running \
                       one");
            }
            return agent.finish(closed).await;
        }
        if let Some(r) = reload {
            agent.apply(r);
        }
    }
}

/// What the main loop runs with, set up by [`Agent::start`].
struct Agent {
    cfg: Config,
    /// Everything running (`cfg` is its `agent`): what a reload compares with.
    settings: Settings,
    source: Source,
    /// A reload accepted, waiting for the window's end.
    pending: Option<Reload>,
    /// On EC2 (the exclusions' default) and the REJECT reasons: to build a
    /// reloaded `[enrich]` as the start did.
    on_ec2: bool,
    reject_reasons: RejectReasons,
    capture: Capture,
    tables: FlowTables,
    selector: links::Selector,
    link_events: UnboundedReceiver<LinkEvent>,
    ifs: Interfaces,
    host: HostMeta,
    enrichment: Enrichment,
    /// Pod identity for the `k8s-*` fields, when on.
    pods: Option<PodSource>,
    shipper: Shipper,
    metrics: Arc<Metrics>,
    sigterm: Signal,
    sigint: Signal,
    sighup: Signal,
    last_counters: KernelCounters,
    /// `--on-exit keep` with pinned tables: the programs outlive the agent.
    keep: bool,
    /// Interfaces whose attach failed once: not retried every window.
    refused: BTreeSet<u32>,
    /// The live endpoint (`flowlog-agent top`); its socket goes with the agent.
    _live: Option<crate::live::Server>,
}

/// A new configuration, checked and with its added outputs opened, waiting
/// for the window's end.
struct Reload {
    settings: Settings,
    selector: links::Selector,
    enrichment: Enrichment,
    outputs: Reconfig,
    /// What changes, for the log.
    changes: Vec<&'static str>,
}

/// One window's outcome, which the final round reports on.
struct Closed {
    flows: usize,
    /// At least one output (or the spool) took the records.
    written: bool,
}

impl Agent {
    /// Loads the programs, starts metrics and metadata, attaches to the
    /// selected interfaces and opens the outputs; then says it is ready.
    async fn start(settings: Settings, source: Source) -> Result<Agent> {
        let Settings { agent: cfg, metadata, enrich, kubernetes, .. } = settings.clone();
        // First: a SIGHUP while starting is then a reload once started, not
        // the signal's default (the end of the process).
        let sighup = signal(SignalKind::hangup())?;
        let drops = prepare_drops(&cfg)?;
        // Subscribe first: a link created while we list is then not missed.
        let link_events = watch::spawn().context("subscribing to link notifications (rtnetlink)")?;
        let links = links::list_links().context("listing network interfaces in /sys/class/net")?;
        let selector = links::Selector::new(&cfg.ifaces, &cfg.exclude_ifaces)?;
        let selected = selector.select(&links)?;
        let (mut capture, tables) = load_capture(&cfg, drops.as_ref(), &links, &selected)?;
        let metrics = start_metrics(&cfg, &capture).await?;
        let pods = start_pods(&cfg, &kubernetes, &metrics);
        let pod_lookup = pods.as_ref().map(|p| p.live_lookup());
        let live = crate::live::start(cfg.live_socket.as_deref(), cfg.live_socket_explicit, tables.live()?, pod_lookup).await?;
        let machine = links::machine_id();
        let (provider, selection) =
            MetadataProvider::new(&metadata, Path::new(SYSFS), &machine).context("metadata configuration ([metadata])")?;
        info!(source = ?selection.kind, why = %selection.why, "metadata provider");
        let reject_reasons = drops.map(|d| d.reasons).unwrap_or_default();
        // Native flow logs never show metadata, DNS, time sync or DHCP traffic of
        // an instance: leave it out by default on EC2.
        let on_ec2 = selection.kind == ProviderKind::Ec2;
        let enrichment =
            enrich.build(&[], on_ec2, reject_reasons.clone()).context("enrichment configuration ([enrich])")?;
        let link_ids: Vec<LinkId> = selected.iter().map(|l| LinkId::from_sysfs(Path::new(SYSFS), &l.name)).collect();
        let (snapshot, refresher) = Refresher::start(provider, link_ids, metadata.refresh_interval()).await;
        let host = HostMeta {
            account_id: cfg.account_id.as_deref().map_or_else(|| snapshot.host.account_id.clone(), Into::into),
            account_override: cfg.account_id.is_some(),
        };
        let mut ifs = Interfaces::new(machine, snapshot, refresher, enrich.tag_fields, enrich.ecs);
        for link in &selected {
            ifs.attach(&mut capture, link)?;
        }
        if selected.is_empty() {
            warn!(patterns = %cfg.ifaces.join(","), "no interface matches yet; waiting for matching interfaces to appear");
        }
        let shipper = Shipper::start(&ShipConfig { account_id: host.account_id.to_string(), ..cfg.ship.clone() }).await?;
        let (sigterm, sigint) = (signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?);
        let last_counters = tables.counters()?;
        let keep = cfg.on_exit == OnExit::Keep && capture.pin_dir().is_some();
        let agent = Agent {
            cfg,
            settings,
            source,
            pending: None,
            on_ec2,
            reject_reasons,
            capture,
            tables,
            selector,
            link_events,
            ifs,
            host,
            enrichment,
            pods,
            shipper,
            metrics,
            sigterm,
            sigint,
            sighup,
            last_counters,
            keep,
            refused: BTreeSet::new(),
            _live: live,
        };
        agent.announce_ready();
        Ok(agent)
    }

    /// To the metrics, systemd and the log.
    fn announce_ready(&self) {
        let (attached, outputs) = (self.ifs.attached.len(), self.shipper.describe());
        self.metrics.set_attached(self.ifs.attached.values());
        self.metrics.set_ready();
        crate::notify::ready(&format!("capturing on {attached} interfaces, writing to {outputs}"), self.metrics.clone());
        info!(
            interfaces = attached,
            interval_s = self.cfg.interval.as_secs_f64(),
            max_flows = self.cfg.max_flows,
            sample_rate = self.cfg.sample_rate.max(1),
            outputs = %outputs,
            "ready"
        );
    }

    /// A window a previous agent counted but did not ship (pinned tables).
    fn report_leftover(&mut self) -> Result<()> {
        if let Some(d) = self.tables.leftover()? {
            warn!(flows = d.flows.len(), "a previous agent stopped before it shipped a window: reporting it now");
            if self.ship(&d) {
                self.tables.release(&d)?;
            }
        }
        Ok(())
    }

    /// Follows links and metadata until the window's end (`false`) or a
    /// stop signal (`true`).
    async fn wait_for_window_end(&mut self) -> bool {
        let deadline = next_boundary(self.cfg.interval);
        loop {
            tokio::select! {
                _ = sleep_until(deadline) => return false,
                _ = self.sigterm.recv() => return true,
                _ = self.sigint.recv() => return true,
                _ = self.sighup.recv() => self.reload().await,
                Some(ev) = self.link_events.recv() => {
                    if let Some(p) = &self.pods {
                        p.link_changed();
                    }
                    match ev {
                        LinkEvent::Changed(link) => {
                            if !self.ifs.attached.contains_key(&link.ifindex) && self.selector.wants(&link) {
                                if let Err(e) = self.ifs.attach(&mut self.capture, &link) {
                                    error!(iface = %link.name, "cannot attach to a new interface: {e:#}");
                                }
                            }
                        }
                        LinkEvent::Removed { ifindex, .. } => self.ifs.gone(&mut self.capture, ifindex),
                        LinkEvent::Overrun => {
                            relist(&mut self.ifs, &mut self.capture, &self.selector, &mut self.refused)
                        }
                    }
                }
                s = self.ifs.refresher.changed() => self.ifs.update(s),
            }
            self.metrics.set_attached(self.ifs.attached.values());
        }
    }

    /// SIGHUP: reads and checks the configuration; accepted, it waits for
    /// the window's end (replacing one accepted before that did not apply
    /// yet); refused, the running one stays.
    async fn reload(&mut self) {
        crate::notify::reloading();
        let path = match &self.source.path {
            Some(p) => p.display().to_string(),
            None => "(none: flags and variables only)".to_string(),
        };
        info!(config = %path, "SIGHUP: reading the configuration again");
        match self.prepare_reload().await {
            Ok(r) => {
                self.metrics.reloaded(true);
                let changes =
                    if r.changes.is_empty() { "nothing reloadable".to_string() } else { r.changes.join(", ") };
                info!(changes = %changes, "configuration reload accepted: it applies at the next window boundary");
                crate::notify::reloaded(&format!("reload accepted ({changes}): applies at the next window boundary"));
                if self.pending.replace(r).is_some() {
                    info!("it replaces a reload accepted earlier in this window");
                }
            }
            Err(e) => {
                self.metrics.reloaded(false);
                error!("configuration reload refused, the running configuration stays: {e:#}");
                crate::notify::reloaded("reload refused (see the log); the running configuration stays");
            }
        }
    }

    /// The new configuration, checked as a start checks it: the file and
    /// every value, the interface patterns against the links, `[enrich]`,
    /// the added outputs opened (AWS ones checked).
    async fn prepare_reload(&self) -> Result<Reload> {
        let new = self.source.load()?;
        for key in self.settings.restart_only_changes(&new) {
            warn!(key = %key, "changed in the configuration, but only a restart changes it: the running value stays");
        }
        let n = &new.agent;
        let selector = links::Selector::new(&n.ifaces, &n.exclude_ifaces)?;
        selector.select(&links::list_links().context("listing network interfaces in /sys/class/net")?)?;
        let reasons = self.reject_reasons.clone();
        let enrichment = new.enrich.build(&[], self.on_ec2, reasons).context("enrichment configuration ([enrich])")?;
        let account_id = self.host.account_id.to_string();
        let ship = ShipConfig { outputs: n.ship.outputs.clone(), account_id, ..self.cfg.ship.clone() };
        let outputs = self.shipper.prepare(&ship).await?;
        let c = &self.cfg;
        capture::KernelFilters::check_replace(&c.filters, &n.filters).context("[filters]")?;
        let changes = [
            (c.ifaces != n.ifaces || c.exclude_ifaces != n.exclude_ifaces, "interfaces"),
            (c.format != n.format, "log-format"),
            (c.ship.outputs != n.ship.outputs, "outputs"),
            (self.settings.enrich != new.enrich, "[enrich]"),
            (c.on_exit != n.on_exit, "on-exit"),
            (c.filters != n.filters, "[filters]"),
        ];
        let changes = changes.into_iter().filter(|(changed, _)| *changed).map(|(_, what)| what).collect();
        Ok(Reload { settings: new, selector, enrichment, outputs, changes })
    }

    /// Before the last window of a reload is switched out: detaches the
    /// interfaces the new configuration no longer selects, so their last
    /// packets are in that window.
    fn leave_unselected(&mut self, selector: &links::Selector) {
        let gone: Vec<u32> = self.capture.attached().filter(|l| !selector.wants(l)).map(|l| l.ifindex).collect();
        for ifindex in gone {
            if let Some(m) = self.ifs.detach(&mut self.capture, ifindex) {
                let why = "detached: the reloaded configuration no longer selects it; reporting its last window";
                info!(iface = %m.name, ifindex, "{why}");
            }
            // Not attached again by the window's own relist (old selector).
            self.refused.insert(ifindex);
        }
    }

    /// After the window's end: the reloaded configuration takes over.
    fn apply(&mut self, r: Reload) {
        let Reload { settings: new, selector, enrichment, outputs, changes } = r;
        // Reloadable keys from the new configuration, the others as running.
        let s = &mut self.settings;
        s.agent.ifaces = new.agent.ifaces;
        s.agent.exclude_ifaces = new.agent.exclude_ifaces;
        s.agent.format = new.agent.format;
        s.agent.ship.outputs = new.agent.ship.outputs;
        s.agent.on_exit = new.agent.on_exit;
        s.enrich = new.enrich;
        if s.agent.filters != new.agent.filters {
            match self.capture.replace_filters(&s.agent.filters, &new.agent.filters) {
                Ok(()) => s.agent.filters = new.agent.filters,
                // Checked when the reload was accepted; a map update the
                // kernel refused leaves a mix of both sets.
                Err(e) => error!("kernel filters only partly reloaded ({e:#}): restart the agent"),
            }
        }
        self.cfg = s.agent.clone();
        self.keep = self.cfg.on_exit == OnExit::Keep && self.capture.pin_dir().is_some();
        self.enrichment = enrichment;
        self.ifs.tag_fields = self.settings.enrich.tag_fields.clone();
        self.ifs.ecs = self.settings.enrich.ecs.clone();
        self.ifs.update(self.ifs.snapshot.clone());
        self.selector = selector;
        self.refused.clear();
        relist(&mut self.ifs, &mut self.capture, &self.selector, &mut self.refused);
        let applied = self.shipper.apply(outputs);
        self.metrics.set_attached(self.ifs.attached.values());
        let outputs = self.shipper.describe();
        info!(
            changes = %changes.join(","),
            interfaces = self.ifs.attached.len(),
            outputs = %outputs,
            added = %applied.added.join(","),
            removed = %applied.removed.join(","),
            "configuration reloaded: applies from this window on"
        );
        let n = self.ifs.attached.len();
        crate::notify::status(&format!("configuration reloaded; capturing on {n} interfaces, writing to {outputs}"));
    }

    /// Drains the window (everything, on a stop that detaches), ships it,
    /// and releases it from the kernel once an output took it.
    fn close_window(&mut self, stop: bool) -> Result<Closed> {
        if stop {
            crate::notify::stopping();
        }
        relist(&mut self.ifs, &mut self.capture, &self.selector, &mut self.refused);
        let started = std::time::Instant::now();
        let drained = if stop && !self.keep {
            self.capture.detach_all();
            self.tables.drain_all()?
        } else {
            self.tables.rotate()?
        };
        self.metrics.drained(&drained, &self.ifs.in_window, self.cfg.max_flows, started.elapsed().as_secs_f64());
        let written = self.ship(&drained);
        crate::notify::status(&format!(
            "{} flows from {} interfaces in the last window ({}); {} interfaces attached",
            drained.flows.len(),
            self.ifs.in_window.len(),
            if written { "written" } else { "kept in the kernel: no output took it" },
            self.ifs.attached.len()
        ));
        if written {
            self.tables.release(&drained)?;
        } else if !stop || self.keep {
            // Left in the kernel table: the programs add to it again two
            // windows on, and that window reports both (times widened).
            warn!(flows = drained.flows.len(), "no output took this window's records: they stay in the kernel and are reported with a later window");
        }
        let skipped: u64 = drained.fails.iter().map(|(_, f)| f.packets).sum::<u64>() + drained.unattributed_failures;
        if skipped > 0 {
            warn!(packets = skipped, max_flows = self.cfg.max_flows, "flow table full: packets not counted, SKIPDATA written; raise --max-flows");
        }
        self.report_counters()?;
        // The next window reports the interfaces attached now.
        self.ifs.in_window = self.ifs.attached.values().cloned().collect();
        for name in self.ifs.forget.drain(..) {
            self.metrics.forget_interface(&name);
        }
        self.metrics.set_attached(self.ifs.attached.values());
        let closed = Closed { flows: drained.flows.len(), written };
        self.tables.recycle(drained);
        Ok(closed)
    }

    /// The kernel's counters to the metrics; what grew since the last
    /// window to the log.
    fn report_counters(&mut self) -> Result<()> {
        let c = self.tables.counters()?;
        self.metrics.kernel_counters(&c);
        let last = &self.last_counters;
        if c.malformed > last.malformed {
            info!(frames = c.malformed - last.malformed, "malformed or truncated IP frames ignored in this window");
        }
        if c.reject_not_moved > last.reject_not_moved {
            warn!(
                packets = c.reject_not_moved - last.reject_not_moved,
                "dropped packets reported as REJECT whose ACCEPT count was in an earlier window (dropped long after they arrived)"
            );
        }
        self.last_counters = c;
        Ok(())
    }

    /// After the final window: flushes the outputs, then leaves the kernel
    /// side as `--on-exit` says (pins removed only when nothing is lost).
    async fn finish(mut self, last: Closed) -> Result<()> {
        self.shipper.shutdown().await;
        if self.keep {
            self.capture.keep_pinned();
            info!("stopped; programs stay attached and keep counting for the next agent (--on-exit keep)");
        } else if last.written || self.capture.pin_dir().is_none() {
            if !last.written {
                error!(flows = last.flows, "no output took the final window's records and nothing is pinned: they are lost");
            }
            self.capture.remove_pins();
            info!("stopped after the final drain");
        } else {
            warn!(flows = last.flows, "no output took the final window's records: the pinned tables keep them for the next agent");
            info!("stopped after the final drain");
        }
        Ok(())
    }

    /// Formats one window's records and writes them to every destination.
    /// Whether at least one output (or the spool) took them: only then may the
    /// kernel tables forget them.
    fn ship(&mut self, drained: &Drained) -> bool {
        // The pods of this window from the kept listings (no runtime call).
        let (start, end) = (drained.window_start_unix_ns, drained.window_end_unix_ns);
        self.enrichment.pods = self.pods.as_ref().and_then(|p| p.window(start, end));
        let records = enrich::WindowRecords::new(&self.host, &self.ifs.in_window, drained, Some(&self.enrichment));
        let (results, counts) = self.shipper.write_window(&self.cfg.format, &records);
        self.metrics.records(&counts);
        for (output, ok) in &results {
            self.metrics.shipped(output, counts.total(), *ok);
        }
        self.shipper.reap();
        self.metrics.destinations(&self.shipper);
        results.is_empty() || results.iter().any(|(_, ok)| *ok)
    }
}

/// Reads the kernel's drop reasons for REJECT. Without an explicit
/// `reject-reasons`, a kernel that cannot (no BTF) gets a warning and no
/// REJECT records rather than a failed start.
fn prepare_drops(cfg: &Config) -> Result<Option<DropSetup>> {
    match DropSetup::prepare(&cfg.reject) {
        Ok(d) => Ok(d.map(|d| DropSetup { optional: !cfg.reject_explicit, ..d })),
        Err(e) if !cfg.reject_explicit => {
            warn!("REJECT records are off: {e:#}");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Loads the programs and maps (nothing attached yet).
fn load_capture(cfg: &Config, drops: Option<&DropSetup>, links: &[links::LinkInfo], selected: &[links::LinkInfo]) -> Result<(Capture, FlowTables)> {
    let (mut capture, tables) = Capture::loader(cfg.max_flows)
        .pin_root(cfg.pin_root.as_deref())
        .sample_rate(cfg.sample_rate)
        .filters(&cfg.filters)
        .drops(drops)
        .load()?;
    capture.set_ingress_hook(cfg.ingress_hook);
    if !crate::bpf::probe::tcx_available() {
        // Netlink filters outlive their agent; on interfaces this agent will
        // not capture on, a crashed predecessor's would count on unseen.
        for l in links.iter().filter(|l| !selected.iter().any(|s| s.ifindex == l.ifindex)) {
            capture::tc::remove_all(&l.name, l.ifindex, &capture::TC_PROGRAMS);
        }
    }
    Ok((capture, tables))
}

/// The pod listing task, when the format names a `k8s-*` field and a CRI
/// socket is there (`auto`) or it is asked for (`on`).
fn start_pods(cfg: &Config, k8s: &KubernetesConfig, metrics: &Arc<Metrics>) -> Option<PodSource> {
    let wanted = cfg.format.fields().iter().any(|f| f.is_extension());
    match k8s.decide(wanted, |p| p.exists()) {
        Ok(socket) => {
            let label = k8s.pod_label.as_deref().unwrap_or("-");
            info!(socket = %socket.display(), label, "kubernetes: pod identity from the container runtime (CRI)");
            let lister = crate::metadata::kubernetes::source::CriLister::new(socket.clone());
            Some(PodSource::start(lister, socket, k8s, metrics.clone()))
        }
        Err(why) => {
            if wanted || k8s.mode == K8sMode::On {
                warn!(
                    "kubernetes: pod identity is off: {why}; the k8s-* fields are `-`. On a node, mount the runtime's \
                     CRI socket (hostPath, read-only) or set --cri-socket"
                );
            }
            None
        }
    }
}

/// The metrics registry, served on `metrics-listen` unless that is off.
async fn start_metrics(cfg: &Config, capture: &Capture) -> Result<Arc<Metrics>> {
    let metrics = Metrics::new(cfg.interval);
    metrics.set_link_counters(&cfg.ethtool_stats);
    metrics.set_build(capture.table().name(), capture::object_of(capture.table()), capture.jit().all_jited());
    if let Some(addr) = cfg.metrics_listen {
        let bound = metrics::serve(addr, metrics.clone())
            .await
            .with_context(|| format!("listening on {addr} for metrics (--metrics-listen; `off` disables it)"))?;
        info!("metrics on http://{bound}/metrics, health on /healthz and /readyz");
    }
    Ok(metrics)
}

/// Compares the attached interfaces with a fresh list of links, by ifindex:
/// a notification lost to a netlink overrun is recovered (new interfaces
/// attached, vanished ones reported), and a renamed interface, which keeps
/// its ifindex and its programs, stays attached.
fn relist(ifs: &mut Interfaces, capture: &mut Capture, selector: &links::Selector, refused: &mut BTreeSet<u32>) {
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
    /// Looks up the attached interfaces' metadata.
    refresher: Refresher,
    tag_fields: TagFields,
    ecs: BTreeMap<String, EcsConfig>,
}

impl Interfaces {
    fn new(machine: String, snapshot: Snapshot, refresher: Refresher, tag_fields: TagFields, ecs: BTreeMap<String, EcsConfig>) -> Interfaces {
        Interfaces { machine, attached: BTreeMap::new(), in_window: Vec::new(), forget: Vec::new(), snapshot, refresher, tag_fields, ecs }
    }

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
        self.refresher.add(LinkId::from_sysfs(Path::new(SYSFS), &link.name));
        Ok(())
    }

    /// Detaches an interface; it stays in the window's records.
    fn detach(&mut self, capture: &mut Capture, ifindex: u32) -> Option<InterfaceMeta> {
        let m = self.attached.remove(&ifindex)?;
        capture.detach(ifindex);
        self.forget.push(m.name.clone());
        self.refresher.remove(&m.name);
        Some(m)
    }

    fn gone(&mut self, capture: &mut Capture, ifindex: u32) {
        if let Some(m) = self.detach(capture, ifindex) {
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
