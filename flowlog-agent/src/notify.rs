//! systemd service notifications for `Type=notify` units.
//!
//! READY=1 goes out when `/readyz` turns ready (programs attached, outputs
//! checked), so `systemctl start` returns only once the agent counts, and
//! ordering (`After=flowlog.service`) means something. WATCHDOG=1 is sent at
//! half the unit's `WatchdogSec=` for as long as `/healthz` is healthy (the
//! main loop closed a window within two intervals and 30 s): a wedged main
//! loop stops the pings and systemd restarts the agent. Pinging from a timer
//! rather than once per window keeps `WatchdogSec=` independent of
//! `--interval` (1 s to 1 h). A reload (SIGHUP, `systemctl reload`) sends
//! RELOADING=1, then READY=1 once the new configuration is accepted or
//! refused (it applies at the next window boundary). Outside systemd (no `NOTIFY_SOCKET`) all of
//! this is a no-op.

use std::{sync::Arc, time::Duration};

use sd_notify::NotifyState;
use tracing::{debug, warn};

use crate::metrics::Metrics;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!("cannot notify systemd (NOTIFY_SOCKET): {e}");
    }
}

/// Ready, with a status line for `systemctl status`; starts the watchdog
/// pings if the unit asked for them.
pub fn ready(status: &str, metrics: Arc<Metrics>) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
    if let Some(period) = sd_notify::watchdog_enabled() {
        let every = (period / 2).max(Duration::from_millis(100));
        debug!(?period, "systemd watchdog enabled");
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                if metrics.healthy() {
                    send(&[NotifyState::Watchdog]);
                }
            }
        });
    }
}

/// The status line after each window.
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// A reload (SIGHUP) started: systemd shows the unit as reloading until
/// [`reloaded`].
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now, NotifyState::Status("reloading the configuration")]),
        Err(e) => warn!("cannot read the monotonic clock for RELOADING=1: {e}"),
    }
}

/// The reload is decided (accepted for the next window boundary, or refused).
pub fn reloaded(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping: final drain and flush")]);
}
