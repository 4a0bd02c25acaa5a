//! The shutdown signal every destination watches: a deadline after which
//! it gives up and leaves what is left in the spool for the next start.

use tokio::{sync::watch, time::Instant};

/// The shutdown signal: `None` while running, then the deadline by which
/// destinations give up (what is left stays in the spool).
#[derive(Clone)]
pub struct Stop(pub(super) watch::Receiver<Option<Instant>>);

impl Stop {
    pub fn stopping(&self) -> bool {
        self.0.borrow().is_some()
    }
    /// Resolves once the deadline has passed.
    pub async fn expired(&self) {
        let mut rx = self.0.clone();
        let deadline = loop {
            if let Some(d) = *rx.borrow_and_update() {
                break d;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::time::sleep_until(deadline).await;
    }
    pub(super) async fn changed(&mut self) {
        if self.0.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

