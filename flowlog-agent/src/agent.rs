//! The agent's main loop: capture → drain → enrich → format → ship, once per
//! aggregation interval, and a final round on SIGINT/SIGTERM.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use tokio::{
    signal::unix::{signal, SignalKind},
    time::{sleep_until, Instant},
};
use tracing::{info, warn};

use crate::{
    capture::{self, Capture},
    clock,
    enrich::{self, HostMeta, InterfaceMeta},
    format::Format,
    ifaces,
    ship::{ShipConfig, Shipper},
};

#[derive(Clone, Debug)]
pub struct Config {
    /// Interface names or globs; empty = every up, non-loopback interface.
    pub ifaces: Vec<String>,
    pub format: Format,
    pub interval: Duration,
    /// Outputs, spool, AWS settings.
    pub ship: ShipConfig,
    pub account_id: String,
    /// Capacity of each flow table generation.
    pub max_flows: u32,
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
    let links = ifaces::list_links().context("listing network interfaces in /sys/class/net")?;
    let selected = ifaces::select(&cfg.ifaces, &links)?;
    let (mut capture, mut tables) = Capture::load(cfg.max_flows)?;
    let machine = ifaces::machine_id();
    let mut metas: BTreeMap<u32, InterfaceMeta> = BTreeMap::new();
    for link in &selected {
        capture.attach(link)?;
        let interface_id: Arc<str> = ifaces::derived_interface_id(&machine, &link.name).into();
        info!(iface = %link.name, ifindex = link.ifindex, %interface_id, "attached (XDP ingress, TC egress)");
        metas.insert(link.ifindex, InterfaceMeta { ifindex: link.ifindex, name: link.name.clone(), interface_id });
    }
    let mut shipper = Shipper::start(&cfg.ship).await?;
    let host = HostMeta { account_id: cfg.account_id.as_str().into() };
    let format = &cfg.format;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    info!(
        interfaces = metas.len(),
        interval_s = cfg.interval.as_secs_f64(),
        max_flows = cfg.max_flows,
        outputs = %shipper.describe(),
        "ready"
    );

    let mut window_ifaces: Vec<InterfaceMeta> = metas.values().cloned().collect();
    let mut last_counters = tables.counters()?;
    loop {
        let stop = tokio::select! {
            _ = sleep_until(next_boundary(cfg.interval)) => false,
            _ = sigterm.recv() => true,
            _ = sigint.recv() => true,
        };

        let mut gone = Vec::new();
        for a in capture.attached().cloned().collect::<Vec<_>>() {
            if !capture::still_present(&a) {
                warn!(iface = %a.name, ifindex = a.ifindex, "interface disappeared; reporting its last window and going on with the others");
                capture.detach(a.ifindex);
                gone.push(a.ifindex);
            }
        }
        let drained = if stop {
            capture.detach_all();
            tables.drain_all()?
        } else {
            tables.rotate()?
        };
        let records = enrich::build_records(&host, &window_ifaces, &drained);
        shipper.send(format, &records);
        let skipped: u64 = drained.fails.iter().map(|(_, f)| f.packets).sum::<u64>() + drained.unattributed_failures;
        if skipped > 0 {
            warn!(packets = skipped, max_flows = cfg.max_flows, "flow table full: packets not counted, SKIPDATA written; raise --max-flows");
        }
        let c = tables.counters()?;
        if c.malformed > last_counters.malformed {
            info!(frames = c.malformed - last_counters.malformed, "malformed or truncated IP frames ignored in this window");
        }
        last_counters = c;

        for i in &gone {
            metas.remove(i);
        }
        if metas.is_empty() && !stop && !gone.is_empty() {
            warn!("no interface left to capture on");
        }
        window_ifaces = metas.values().cloned().collect();
        if stop {
            shipper.shutdown().await;
            info!("stopped after the final drain");
            return Ok(());
        }
    }
}
