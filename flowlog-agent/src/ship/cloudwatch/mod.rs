//! `cloudwatch:<log-group>[?retention=<days>&class=<class>]`, the
//! CloudWatch Logs destination: one log group (created if missing, with an
//! optional retention and log class, tagged as a CloudWatch data source),
//! one stream per interface (`<interface-id>-all`, created if missing or
//! deleted), one event per record with timestamp `start` × 1000, batches
//! within every PutLogEvents limit.

use std::{
    collections::HashSet,
    fmt,
    sync::{atomic::Ordering, Arc},
};

use anyhow::Result;
use aws_sdk_cloudwatchlogs::{
    error::{DisplayErrorContext, ProvideErrorMetadata},
    types::{InputLogEvent, LogGroupClass},
    Client,
};
use tracing::{debug, info, warn};

use super::{
    batch::{cw_events_by_stream, cw_split, CwEvent, CwLimits},
    prelude::*,
};

pub const REGISTRATION: Registration = Registration { syntax: "`cloudwatch:<log-group>[?retention=<days>&class=standard|infrequent-access]`", parse: |s| parse_aws_scheme(s, "cloudwatch:", CloudWatchOutput::parse) };

/// The tags a group the agent creates gets, so that CloudWatch Logs lists
/// it as a custom data source (`@data_source_name`/`@data_source_type`:
/// data-source views, S3 Tables integration). Custom names may not start
/// with `aws` or `amazon`; AWS's own names are lowercase snake_case.
pub const DATASOURCE_TAGS: [(&str, &str); 2] = [("cw:datasource:name", "flowlog"), ("cw:datasource:type", "vpc_flow_logs")];

/// `class=`: the log class of a group the agent creates. Infrequent Access
/// halves the ingestion price but has no metric or subscription filters,
/// hence opt-in; a group's class cannot change once created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupClass {
    Standard,
    InfrequentAccess,
}

impl GroupClass {
    /// `standard`, `infrequent-access`, or the API's spelling
    /// (`STANDARD`, `INFREQUENT_ACCESS`).
    fn parse(v: &str) -> Option<GroupClass> {
        match v.to_ascii_lowercase().replace('_', "-").as_str() {
            "standard" => Some(GroupClass::Standard),
            "infrequent-access" => Some(GroupClass::InfrequentAccess),
            _ => None,
        }
    }

    /// The spelling of the canonical URL.
    pub fn name(self) -> &'static str {
        match self {
            GroupClass::Standard => "standard",
            GroupClass::InfrequentAccess => "infrequent-access",
        }
    }

    pub fn sdk(self) -> LogGroupClass {
        match self {
            GroupClass::Standard => LogGroupClass::Standard,
            GroupClass::InfrequentAccess => LogGroupClass::InfrequentAccess,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloudWatchOutput {
    pub group: String,
    pub retention_days: Option<i32>,
    /// Only for a group the agent creates; `None`: the service's default
    /// (Standard).
    pub class: Option<GroupClass>,
    pub aws: OutputAws,
}

impl CloudWatchOutput {
    fn parse(s: &str, g: &str, aws: OutputAws, q: Option<&str>) -> Result<CloudWatchOutput, String> {
        if g.is_empty() || g.len() > 512 || !g.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-/#".contains(&b)) {
            return Err(format!("invalid output {s:?}: log group names are 1-512 characters of a-z A-Z 0-9 . _ - / #"));
        }
        let mut retention_days = None;
        let mut class = None;
        for kv in q.unwrap_or("").split('&').filter(|x| !x.is_empty()) {
            match kv.split_once('=') {
                Some(("retention", v)) => {
                    retention_days = Some(v.parse::<i32>().ok().filter(|d| *d > 0).ok_or_else(|| format!("invalid output {s:?}: retention={v:?} is not a number of days"))?)
                }
                Some(("class", v)) => {
                    class = Some(GroupClass::parse(v).ok_or_else(|| format!("invalid output {s:?}: class={v:?} is not a log group class (standard or infrequent-access)"))?)
                }
                _ => return Err(format!("invalid output {s:?}: unknown option {kv:?} (retention=<days>, class=standard|infrequent-access)")),
            }
        }
        Ok(CloudWatchOutput { group: g.into(), retention_days, class, aws })
    }
}

impl fmt::Display for CloudWatchOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cloudwatch:{}", self.group)?;
        let r = self.retention_days.iter().map(|d| format!("retention={d}"));
        let c = self.class.iter().map(|c| format!("class={}", c.name()));
        write!(f, "{}", query([r.chain(c).collect(), self.aws.query()].concat()))
    }
}

impl OutputSpec for CloudWatchOutput {
    fn aws(&self) -> Option<&OutputAws> {
        Some(&self.aws)
    }
    fn start<'a>(&'a self, cx: StartContext<'a>) -> StartFut<'a> {
        CloudWatchDest::new(cx.name, Client::new(cx.sdk()), self, cx.retry, cx.stats).checked()
    }
}

impl StartupCheck for CloudWatchDest {
    fn startup_check(&self) -> impl std::future::Future<Output = Result<()>> + Send {
        self.check()
    }
}

pub struct CloudWatchDest {
    pub name: String,
    pub client: Client,
    pub group: String,
    pub retention_days: Option<i32>,
    pub class: Option<GroupClass>,
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
    /// The destination of output `o`, named `name`, calling through `client`.
    pub fn new(name: &str, client: Client, o: &CloudWatchOutput, retry: RetryPolicy, stats: Arc<ShipStats>) -> CloudWatchDest {
        CloudWatchDest {
            name: name.to_string(),
            client,
            group: o.group.clone(),
            retention_days: o.retention_days,
            class: o.class,
            limits: CwLimits::default(),
            retry,
            stats,
            streams: Default::default(),
        }
    }

    /// CreateLogGroup with the class and, if `tagged`, the data-source tags.
    async fn create_log_group(&self, tagged: bool) -> Result<(), aws_sdk_cloudwatchlogs::error::SdkError<aws_sdk_cloudwatchlogs::operation::create_log_group::CreateLogGroupError, aws_sdk_cloudwatchlogs::config::http::HttpResponse>> {
        let mut r = self.client.create_log_group().log_group_name(&self.group).set_log_group_class(self.class.map(GroupClass::sdk));
        if tagged {
            for (k, v) in DATASOURCE_TAGS {
                r = r.tags(k, v);
            }
        }
        r.send().await.map(|_| ())
    }

    async fn create_group(&self) -> Result<(), Failure> {
        let class = self.class.map_or("default", GroupClass::name);
        match self.create_log_group(true).await {
            Ok(()) => info!(destination = %self.name, group = %self.group, class, "log group created"),
            Err(e) if already_exists(&e) => self.compare_class().await,
            // Tags on CreateLogGroup need logs:TagResource too: a policy
            // written before them still gets its group, untagged. (Bad
            // credentials are another code, and fail below as before.)
            Err(e) if e.as_service_error().and_then(|s| s.code()) == Some("AccessDeniedException") => {
                let m = DisplayErrorContext(&e);
                match self.create_log_group(false).await {
                    Ok(()) => warn!(destination = %self.name, group = %self.group, class, "log group created without its data-source tags (cw:datasource:name, cw:datasource:type): CreateLogGroup with tags was denied (logs:TagResource missing?): {m}"),
                    Err(e) if already_exists(&e) => self.compare_class().await,
                    Err(e) => return Err(classify(&e)),
                }
            }
            Err(e) => return Err(classify(&e)),
        }
        if let Some(days) = self.retention_days {
            self.client.put_retention_policy().log_group_name(&self.group).retention_in_days(days).send().await.map_err(|e| classify(&e))?;
        }
        Ok(())
    }

    /// With `class=`, says when the existing group has another class (the
    /// class of a group cannot change). Best effort: DescribeLogGroups may
    /// be denied, or not report the class.
    async fn compare_class(&self) {
        let Some(want) = self.class else { return };
        match self.client.describe_log_groups().log_group_name_prefix(&self.group).send().await {
            Ok(r) => match r.log_groups().iter().find(|g| g.log_group_name() == Some(self.group.as_str())).and_then(|g| g.log_group_class()) {
                Some(have) if *have != want.sdk() => warn!(
                    destination = %self.name,
                    group = %self.group,
                    class = have.as_str(),
                    wanted = want.sdk().as_str(),
                    "the log group exists with another class, which cannot change: class= applies only to a group the agent creates"
                ),
                Some(_) => {}
                None => debug!(destination = %self.name, group = %self.group, "DescribeLogGroups reports no class for the existing group"),
            },
            Err(e) => debug!(destination = %self.name, group = %self.group, error = %DisplayErrorContext(&e), "DescribeLogGroups failed: the existing group's class is not compared"),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ship::Output;

    #[test]
    fn class_option() {
        for (url, class, canonical) in [
            ("cloudwatch:/g?class=infrequent-access", Some(GroupClass::InfrequentAccess), "cloudwatch:/g?class=infrequent-access"),
            ("cloudwatch:/g?class=INFREQUENT_ACCESS&retention=30", Some(GroupClass::InfrequentAccess), "cloudwatch:/g?retention=30&class=infrequent-access"),
            ("cloudwatch:/g?class=Standard&region=eu-west-1", Some(GroupClass::Standard), "cloudwatch:/g?class=standard&region=eu-west-1"),
            ("cloudwatch:/g", None, "cloudwatch:/g"),
        ] {
            let o: Output = url.parse().unwrap();
            assert_eq!(o.spec::<CloudWatchOutput>().unwrap().class, class, "{url}");
            assert_eq!(o.to_string(), canonical);
        }
        assert_eq!(GroupClass::InfrequentAccess.sdk().as_str(), "INFREQUENT_ACCESS");
        assert_eq!(GroupClass::Standard.sdk().as_str(), "STANDARD");
        for (bad, why) in [
            ("cloudwatch:/g?class=delivery", "class=\"delivery\" is not a log group class (standard or infrequent-access)"),
            ("cloudwatch:/g?class=", "class=\"\" is not a log group class"),
            ("cloudwatch:/g?tier=standard", "unknown option \"tier=standard\" (retention=<days>, class=standard|infrequent-access)"),
        ] {
            let e = bad.parse::<Output>().unwrap_err();
            assert!(e.starts_with(&format!("invalid output {bad:?}: {why}")), "{e}");
        }
    }
}
