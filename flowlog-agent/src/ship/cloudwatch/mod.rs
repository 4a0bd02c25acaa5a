//! `cloudwatch:<log-group>[?retention=<days>]`, the CloudWatch Logs
//! destination: one log group (created if missing, with an
//! optional retention), one stream per interface (`<interface-id>-all`,
//! created if missing or deleted), one event per record with timestamp
//! `start` × 1000, batches within every PutLogEvents limit.

use std::{
    collections::HashSet,
    fmt,
    sync::{atomic::Ordering, Arc},
};

use anyhow::Result;
use aws_sdk_cloudwatchlogs::{types::InputLogEvent, Client};
use tracing::{debug, info, warn};

use super::{
    aws::{classify, OutputAws},
    batch::{cw_events_by_stream, cw_split, CwEvent, CwLimits},
    destination::{BoxFut, Destination, ShipStats},
    output::{parse_aws_scheme, query, OutputSpec, Registration, StartContext, StartFut},
    retry::{retry, startup_check, Failure, Interrupted, RetryPolicy},
    spool::Batch,
    stop::Stop,
};

pub const REGISTRATION: Registration = Registration { syntax: "`cloudwatch:<log-group>[?retention=<days>]`", parse: |s| parse_aws_scheme(s, "cloudwatch:", CloudWatchOutput::parse) };

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloudWatchOutput {
    pub group: String,
    pub retention_days: Option<i32>,
    pub aws: OutputAws,
}

impl CloudWatchOutput {
    fn parse(s: &str, g: &str, aws: OutputAws, q: Option<&str>) -> Result<CloudWatchOutput, String> {
        if g.is_empty() || g.len() > 512 || !g.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-/#".contains(&b)) {
            return Err(format!("invalid output {s:?}: log group names are 1-512 characters of a-z A-Z 0-9 . _ - / #"));
        }
        let mut retention_days = None;
        for kv in q.unwrap_or("").split('&').filter(|x| !x.is_empty()) {
            match kv.split_once('=') {
                Some(("retention", v)) => {
                    retention_days = Some(v.parse::<i32>().ok().filter(|d| *d > 0).ok_or_else(|| format!("invalid output {s:?}: retention={v:?} is not a number of days"))?)
                }
                _ => return Err(format!("invalid output {s:?}: unknown option {kv:?} (retention=<days>)")),
            }
        }
        Ok(CloudWatchOutput { group: g.into(), retention_days, aws })
    }
}

impl fmt::Display for CloudWatchOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cloudwatch:{}", self.group)?;
        let r = self.retention_days.iter().map(|d| format!("retention={d}")).collect();
        write!(f, "{}", query([r, self.aws.query()].concat()))
    }
}

impl OutputSpec for CloudWatchOutput {
    fn aws(&self) -> Option<&OutputAws> {
        Some(&self.aws)
    }
    fn start<'a>(&'a self, cx: StartContext<'a>) -> StartFut<'a> {
        Box::pin(async move {
            let d = CloudWatchDest {
                name: cx.name.to_string(),
                client: Client::new(cx.sdk()),
                group: self.group.clone(),
                retention_days: self.retention_days,
                limits: CwLimits::default(),
                retry: cx.retry,
                stats: cx.stats,
                streams: Default::default(),
            };
            d.check().await?;
            anyhow::Ok(Box::new(d) as Box<dyn Destination>)
        })
    }
}

pub struct CloudWatchDest {
    pub name: String,
    pub client: Client,
    pub group: String,
    pub retention_days: Option<i32>,
    pub limits: CwLimits,
    pub retry: RetryPolicy,
    pub stats: Arc<ShipStats>,
    /// Streams known to exist.
    pub streams: HashSet<String>,
}

fn already_exists<E: aws_sdk_cloudwatchlogs::error::ProvideErrorMetadata>(e: &aws_sdk_cloudwatchlogs::error::SdkError<E, aws_sdk_cloudwatchlogs::config::http::HttpResponse>) -> bool {
    e.as_service_error().and_then(|s| s.code()) == Some("ResourceAlreadyExistsException")
}

impl CloudWatchDest {
    async fn create_group(&self) -> Result<(), Failure> {
        match self.client.create_log_group().log_group_name(&self.group).send().await {
            Ok(_) => info!(destination = %self.name, group = %self.group, "log group created"),
            Err(e) if already_exists(&e) => {}
            Err(e) => return Err(classify(&e)),
        }
        if let Some(days) = self.retention_days {
            self.client.put_retention_policy().log_group_name(&self.group).retention_in_days(days).send().await.map_err(|e| classify(&e))?;
        }
        Ok(())
    }

    /// Startup: the group exists (created if missing) and we may write to it.
    pub async fn check(&self) -> Result<()> {
        match self.create_group().await {
            Ok(()) => Ok(()),
            Err(f) => startup_check(&self.name, f),
        }
    }

    async fn create_stream(&self, stream: &str) -> Result<(), Failure> {
        match self.client.create_log_stream().log_group_name(&self.group).log_stream_name(stream).send().await {
            Ok(_) => Ok(()),
            Err(e) if already_exists(&e) => Ok(()),
            Err(e) => match classify(&e) {
                // The group itself is gone: recreate it, then the stream.
                Failure::NotFound(_) => {
                    self.create_group().await?;
                    match self.client.create_log_stream().log_group_name(&self.group).log_stream_name(stream).send().await {
                        Ok(_) => Ok(()),
                        Err(e) if already_exists(&e) => Ok(()),
                        Err(e) => Err(classify(&e)),
                    }
                }
                f => Err(f),
            },
        }
    }

    /// One PutLogEvents call; a missing stream or group is (re)created.
    async fn put(&self, stream: &str, events: &[CwEvent], create_first: bool) -> Result<(), Failure> {
        if create_first {
            self.create_stream(stream).await?;
        }
        let evs: Vec<InputLogEvent> = events
            .iter()
            .map(|e| InputLogEvent::builder().timestamp(e.timestamp_ms).message(&e.message).build().expect("timestamp and message set"))
            .collect();
        let r = match self.client.put_log_events().log_group_name(&self.group).log_stream_name(stream).set_log_events(Some(evs)).send().await {
            Ok(r) => r,
            Err(e) => {
                return Err(match classify(&e) {
                    Failure::NotFound(m) => {
                        warn!(destination = %self.name, stream, "log stream or group missing (deleted?): recreating it");
                        self.create_stream(stream).await?;
                        Failure::Transient(format!("recreated {stream}: {m}"))
                    }
                    f => f,
                })
            }
        };
        if let Some(rej) = r.rejected_log_events_info() {
            // Events too old, expired by retention, or too far in the future
            // are refused for good: count them, say which.
            let n = events.len() as i32;
            let too_old = rej.too_old_log_event_end_index().map_or(0, |i| i.clamp(0, n));
            let expired = rej.expired_log_event_end_index().map_or(0, |i| i.clamp(0, n));
            let too_new = rej.too_new_log_event_start_index().map_or(0, |i| n - i.clamp(0, n));
            let lost = (too_old.max(expired) + too_new).min(n) as u64;
            self.stats.rejected.fetch_add(lost, Ordering::Relaxed);
            warn!(destination = %self.name, stream, rejected = lost, ?rej, "CloudWatch Logs rejected events (too old, expired, or too new)");
        }
        Ok(())
    }
}

impl Destination for CloudWatchDest {
    fn name(&self) -> &str {
        &self.name
    }
    fn deliver<'a>(&'a mut self, batches: &'a [Batch], stop: &'a Stop) -> BoxFut<'a> {
        Box::pin(async move {
            let by_stream = cw_events_by_stream(batches.iter().flat_map(|b| b.records.iter()));
            let mut total = 0u64;
            for (stream, events) in by_stream {
                for chunk in cw_split(events, self.limits) {
                    let known = self.streams.contains(&stream);
                    retry(&self.name, "PutLogEvents", &self.retry, &*self.stats, stop, |attempt| self.put(&stream, &chunk, !known && attempt == 0)).await?;
                    self.streams.insert(stream.clone());
                    total += chunk.len() as u64;
                    debug!(destination = %self.name, stream, events = chunk.len(), "PutLogEvents");
                }
            }
            self.stats.delivered.fetch_add(total, Ordering::Relaxed);
            Ok::<(), Interrupted>(())
        })
    }
}
