//! What a spooled destination is: the trait the shipper drives and the
//! counters it reports, apart from `ship/mod.rs` so that destinations and the
//! shipper depend on it, not on each other.

use std::{
    future::Future,
    pin::Pin,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
};

use super::{
    retry::{CallCounter, Failure, Interrupted},
    spool::Batch,
    stop::Stop,
};

/// Counters of one destination.
#[derive(Debug, Default)]
pub struct ShipStats {
    /// Records acknowledged by the destination.
    pub delivered: AtomicU64,
    /// Records the service refused for good (CloudWatch rejectedLogEventsInfo,
    /// Firehose records over 1,000 KiB).
    pub rejected: AtomicU64,
    /// Records sent again after a Firehose partial failure.
    pub partial_retries: AtomicU64,
    /// S3 objects / local files written.
    pub objects: AtomicU64,
    /// Service calls that succeeded.
    pub calls: AtomicU64,
    /// Unix second of the last successful call (0: none yet).
    pub last_success_unix: AtomicU64,
    /// Failed calls, by [`Failure::REASONS`].
    pub errors: [AtomicU64; Failure::REASONS.len()],
}

impl CallCounter for ShipStats {
    fn succeeded(&self) {
        self.calls.fetch_add(1, Relaxed);
        self.last_success_unix.store(crate::bpf::clock::unix_ns() / 1_000_000_000, Relaxed);
    }

    fn failed(&self, f: &Failure) {
        self.errors[f.reason_index()].fetch_add(1, Relaxed);
    }
}

impl ShipStats {
    /// `(reason, failed calls)` for every reason.
    pub fn errors(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Failure::REASONS.iter().zip(&self.errors).map(|(r, n)| (*r, n.load(Relaxed)))
    }
}

pub type BoxFut<'a> = Pin<Box<dyn Future<Output = Result<(), Interrupted>> + Send + 'a>>;

/// A spooled destination.
pub trait Destination: Send + 'static {
    fn name(&self) -> &str;
    /// Whether batches accumulate into files (S3 layouts) for up to the
    /// flush interval, instead of going out as soon as they are spooled.
    fn batches_files(&self) -> bool {
        false
    }
    /// Deliver once this much text is pending, whatever the flush interval.
    fn max_pending_bytes(&self) -> usize {
        4 << 20
    }
    /// Delivers every record of `batches`, retrying as long as it takes;
    /// `Err` only when the shutdown deadline passed.
    fn deliver<'a>(&'a mut self, batches: &'a [Batch], stop: &'a Stop) -> BoxFut<'a>;
}

