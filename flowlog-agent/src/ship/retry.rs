//! The retry vocabulary every spooled destination shares: what went wrong
//! with a call ([`Failure`]), the backoff policy, the loop that retries
//! until success or the shutdown deadline ([`Interrupted`]), and how a
//! failure is judged at startup. Nothing here knows a service.

use std::{future::Future, time::Duration};

use anyhow::{bail, Result};
use tracing::{error, warn};

use super::stop::Stop;

/// Where [`retry`] counts its calls (a destination's `ShipStats`); a
/// trait so that the counters' owner depends on this vocabulary, not the
/// other way round.
pub trait CallCounter: Sync {
    fn succeeded(&self);
    fn failed(&self, f: &Failure);
}

/// What went wrong with one call.
#[derive(Debug)]
pub enum Failure {
    /// Throttling, 5xx, network: retry.
    Transient(String),
    /// Access denied, bad or expired credentials: retry (slowly), loudly.
    Auth(String),
    /// The log group/stream, bucket or delivery stream is missing.
    NotFound(String),
    /// Anything else the service refused.
    Other(String),
}

impl Failure {
    /// The `reason` label of `flowlog_output_errors_total`, in the order
    /// of [`Failure::reason_index`].
    pub const REASONS: [&'static str; 4] = ["transient", "access_denied", "not_found", "other"];

    pub fn reason_index(&self) -> usize {
        match self {
            Failure::Transient(_) => 0,
            Failure::Auth(_) => 1,
            Failure::NotFound(_) => 2,
            Failure::Other(_) => 3,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Transient(m) => write!(f, "transient: {m}"),
            Failure::Auth(m) => write!(f, "access denied or bad credentials: {m}"),
            Failure::NotFound(m) => write!(f, "not found: {m}"),
            Failure::Other(m) => write!(f, "{m}"),
        }
    }
}

/// Exponential backoff with jitter: attempt n waits a random time in
/// [d/2, d], d = min(max, base × 2^n).
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    pub base: Duration,
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { base: Duration::from_millis(200), max: Duration::from_secs(60) }
    }
}

impl RetryPolicy {
    pub fn delay(&self, attempt: u32) -> Duration {
        let d = self.base.saturating_mul(1u32 << attempt.min(20)).min(self.max);
        let half = d / 2;
        half + Duration::from_nanos(fastrand::u64(0..=half.as_nanos() as u64))
    }
}

/// The call was given up because the shutdown deadline passed; the data
/// stays in the spool.
#[derive(Debug)]
pub struct Interrupted;

/// Runs `f` until it succeeds, sleeping with backoff between failures, or
/// until the shutdown deadline passes. Every attempt is counted in `stats`
/// (last success, failures by reason).
pub async fn retry<T, F, Fut>(dest: &str, what: &str, policy: &RetryPolicy, stats: &dyn CallCounter, stop: &Stop, mut f: F) -> Result<T, Interrupted>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let mut attempt = 0u32;
    loop {
        let r = tokio::select! {
            r = f(attempt) => r,
            _ = stop.expired() => return Err(Interrupted),
        };
        match r {
            Ok(v) => {
                stats.succeeded();
                if attempt > 0 {
                    tracing::info!(destination = dest, operation = what, attempts = attempt + 1, "succeeded after retries");
                }
                return Ok(v);
            }
            Err(e) => {
                stats.failed(&e);
                let first = attempt.is_multiple_of(10);
                match &e {
                    Failure::Auth(_) | Failure::Other(_) if first => error!(destination = dest, operation = what, attempt, "{e}; retrying (records stay in the spool)"),
                    _ if first => warn!(destination = dest, operation = what, attempt, "{e}; retrying"),
                    _ => tracing::debug!(destination = dest, operation = what, attempt, "{e}; retrying"),
                }
                // Auth and unknown errors are not fixed by retrying quickly.
                let a = match e {
                    Failure::Auth(_) | Failure::Other(_) => attempt + 4,
                    _ => attempt,
                };
                tokio::select! {
                    _ = tokio::time::sleep(policy.delay(a)) => {},
                    _ = stop.expired() => return Err(Interrupted),
                }
                attempt += 1;
            }
        }
    }
}

/// Startup checks: a definite refusal (missing resource, access denied) is
/// an error; an unreachable service is only a warning (the spool holds the
/// records until it comes back).
pub fn startup_check(dest: &str, f: Failure) -> Result<()> {
    match f {
        Failure::Transient(m) => {
            warn!(destination = dest, "no usable answer from the service at startup ({m}); records are spooled until it answers");
            Ok(())
        }
        Failure::Auth(m) => bail!("{dest}: access denied or invalid credentials: {m}"),
        Failure::NotFound(m) => bail!("{dest}: does not exist: {m}"),
        Failure::Other(m) => bail!("{dest}: {m}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let p = RetryPolicy { base: Duration::from_millis(100), max: Duration::from_secs(2) };
        for a in 0..30 {
            let d = p.delay(a);
            let full = Duration::from_millis(100).saturating_mul(1 << a.min(20)).min(Duration::from_secs(2));
            assert!(d >= full / 2 && d <= full, "{a}: {d:?}");
        }
    }
}
