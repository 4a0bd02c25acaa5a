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
    ship::{Output, Sink},
};

#[derive(Clone, Debug)]
pub struct Config {
    /// Interface names or globs; empty = every up, non-loopback interface.
    pub ifaces: Vec<String>,
    pub format: Format,
    pub interval: Duration,
    pub outputs: Vec<Output>,
    pub account_id: String,
    /// Capacity of each flow table generation.
    pub max_flows: u32,
    /// Where maps and attachments are pinned (`None`: not pinned).
    pub pin_root: Option<PathBuf>,
    pub on_exit: OnExit,
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
    let links = ifaces::list_links().context("listing network interfaces in /sys/class/net")?;
    let selected = ifaces::select(&cfg.ifaces, &links)?;
    let (mut capture, mut tables) = Capture::load(cfg.max_flows, cfg.pin_root.as_deref())?;
    let machine = ifaces::machine_id();
    let mut metas: BTreeMap<u32, InterfaceMeta> = BTreeMap::new();
    for link in &selected {
        capture.attach(link)?;
        let interface_id: Arc<str> = ifaces::derived_interface_id(&machine, &link.name).into();
        info!(iface = %link.name, ifindex = link.ifindex, %interface_id, "attached (XDP ingress, TC egress)");
        metas.insert(link.ifindex, InterfaceMeta { ifindex: link.ifindex, name: link.name.clone(), interface_id });
    }
    let mut sinks = cfg.outputs.iter().map(Sink::open).collect::<Result<Vec<_>>>()?;
    let host = HostMeta { account_id: cfg.account_id.as_str().into() };
    let format = &cfg.format;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    info!(
        interfaces = metas.len(),
        interval_s = cfg.interval.as_secs_f64(),
        max_flows = cfg.max_flows,
        outputs = %sinks.iter().map(Sink::describe).collect::<Vec<_>>().join(","),
        "ready"
    );

    let mut window_ifaces: Vec<InterfaceMeta> = metas.values().cloned().collect();
    let mut last_counters = tables.counters()?;
    let keep = cfg.on_exit == OnExit::Keep && capture.pin_dir().is_some();
    if let Some(d) = tables.leftover()? {
        warn!(flows = d.flows.len(), "a previous agent stopped before it shipped a window: reporting it now");
        ship(&host, &window_ifaces, format, &d, &mut sinks);
        tables.release(&d)?;
    }
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
        let drained = if stop && !keep {
            capture.detach_all();
            tables.drain_all()?
        } else {
            tables.rotate()?
        };
        ship(&host, &window_ifaces, format, &drained, &mut sinks);
        tables.release(&drained)?;
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
fn ship(host: &HostMeta, ifaces: &[InterfaceMeta], format: &Format, drained: &Drained, sinks: &mut [Sink]) {
    let records = enrich::build_records(host, ifaces, drained);
    let mut batch = Vec::with_capacity(records.len() * 120);
    for r in &records {
        format.write(r, &mut batch);
        batch.push(b'\n');
    }
    for s in sinks {
        if let Err(e) = s.write_batch(&batch) {
            error!(output = %s.describe(), records = records.len(), "records of this window were not written: {e:#}");
        }
    }
}
