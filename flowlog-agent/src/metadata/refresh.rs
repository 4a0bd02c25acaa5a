//! Keeps the metadata of the captured interfaces fresh off the capture path:
//! IMDS may be slow or retrying, so lookups run in their own task and the
//! main loop takes each new [`Snapshot`] when it arrives.

use std::time::Duration;

use tokio::{sync::watch, time::Instant};
use tracing::warn;

use super::{LinkId, MetadataProvider, Snapshot};

/// The main loop's end of the refresher task: which links to look up, and
/// the snapshots that come back.
pub struct Refresher {
    links: watch::Sender<Vec<LinkId>>,
    snapshots: watch::Receiver<Snapshot>,
}

impl Refresher {
    /// Looks `links` up once now (on failure: what is cached), then again
    /// every `every` in a task, so hot-plugged ENIs get their ids.
    pub async fn start(mut provider: MetadataProvider, links: Vec<LinkId>, every: Duration) -> (Snapshot, Refresher) {
        let first = lookup(&mut provider, &links, "metadata", "using what is known").await;
        let (links_tx, links_rx) = watch::channel(links);
        let (snap_tx, snap_rx) = watch::channel(first.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(Instant::now() + every, every);
            loop {
                tick.tick().await;
                let links = links_rx.borrow().clone();
                let s = lookup(&mut provider, &links, "metadata refresh", "keeping what is known").await;
                if snap_tx.send(s).is_err() {
                    return;
                }
            }
        });
        (first, Refresher { links: links_tx, snapshots: snap_rx })
    }

    /// Looks `link` up from the next refresh on.
    pub fn add(&self, link: LinkId) {
        self.links.send_modify(|l| {
            if !l.iter().any(|x| x.name == link.name) {
                l.push(link);
            }
        });
    }

    /// Stops looking up the link of that name.
    pub fn remove(&self, name: &str) {
        self.links.send_modify(|l| l.retain(|x| x.name != name));
    }

    /// The next snapshot; pending forever once the task has ended.
    pub async fn changed(&mut self) -> Snapshot {
        if self.snapshots.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        self.snapshots.borrow_and_update().clone()
    }
}

/// A failed lookup falls back to the cached metadata (no I/O).
async fn lookup(provider: &mut MetadataProvider, links: &[LinkId], what: &str, fallback: &str) -> Snapshot {
    match provider.refresh(links).await {
        Ok(s) => s,
        Err(e) => {
            warn!("{what}: {e}; {fallback}");
            provider.cached(links)
        }
    }
}
