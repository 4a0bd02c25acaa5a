//! S3 and CloudWatch Logs sources (AWS SDK, driven from a small runtime of
//! its own: `compare` itself is synchronous).

use std::{sync::Arc, time::Duration};

use anyhow::{anyhow, bail, Context, Result};
use aws_config::{retry::RetryConfig, SdkConfig};
use aws_sdk_cloudwatchlogs::error::DisplayErrorContext;
use tokio::runtime::Runtime;

use super::source::{interface_from_stream, may_hold, sort_objects, ObjectReader, ObjectSource, RecordSource};
use flowlog_records::{
    format::Format,
    parse::RecordParser,
    record::FlowRecord,
};
use crate::ship::aws::{sdk_config_with, AwsSettings};

/// `--region` and `--aws-endpoint-url`.
#[derive(Clone, Debug, Default)]
pub struct AwsOptions {
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
}

/// The SDK configuration and the runtime its calls run on.
#[derive(Clone)]
pub struct Aws {
    rt: Arc<Runtime>,
    sdk: SdkConfig,
    path_style: bool,
}

impl Aws {
    /// Default credential chain and region, or the given ones.
    pub fn new(o: &AwsOptions) -> Result<Aws> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the runtime")?;
        let settings = AwsSettings { region: o.region.clone(), endpoint_url: o.endpoint_url.clone() };
        let sdk = rt.block_on(sdk_config_with(&settings, RetryConfig::standard().with_max_attempts(5), Duration::from_secs(120)))?;
        Ok(Aws { rt: Arc::new(rt), sdk, path_style: o.endpoint_url.is_some() })
    }

    fn s3(&self) -> aws_sdk_s3::Client {
        let c = aws_sdk_s3::config::Builder::from(&self.sdk).force_path_style(self.path_style).build();
        aws_sdk_s3::Client::from_conf(c)
    }

    fn logs(&self) -> aws_sdk_cloudwatchlogs::Client {
        aws_sdk_cloudwatchlogs::Client::new(&self.sdk)
    }
}

/// Every object under `s3://bucket/prefix`, in time order.
/// Objects that cannot hold records with `since <= start < until` are not
/// fetched (see [`super::source::may_hold`]).
pub fn s3(aws: &Aws, bucket: &str, prefix: &str, default: Format, since: u64, until: u64) -> Result<Box<dyn RecordSource>> {
    let client = aws.s3();
    let mut keys = Vec::new();
    let mut pages = client.list_objects_v2().bucket(bucket).prefix(prefix).into_paginator().send();
    aws.rt.block_on(async {
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| anyhow!("listing s3://{bucket}/{prefix}: {}", DisplayErrorContext(e)))?;
            for o in page.contents() {
                if let Some(k) = o.key() {
                    if !k.ends_with('/') {
                        keys.push(k.to_string());
                    }
                }
            }
        }
        Ok::<_, anyhow::Error>(())
    })?;
    if keys.is_empty() {
        bail!("s3://{bucket}/{prefix}: no objects");
    }
    sort_objects(&mut keys);
    keys.retain(|k| may_hold(k, since, until));
    let aws = aws.clone();
    let bucket = bucket.to_string();
    Ok(Box::new(ObjectSource::new(keys, move |key| {
        let name = format!("s3://{bucket}/{key}");
        let body = aws.rt.block_on(async {
            let o = client.get_object().bucket(&bucket).key(key).send().await.map_err(|e| anyhow!("{name}: {}", DisplayErrorContext(e)))?;
            o.body.collect().await.map(|b| b.into_bytes()).map_err(|e| anyhow!("{name}: {e}"))
        })?;
        ObjectReader::from_bytes(&name, body, &default)
    })))
}

/// A CloudWatch Logs group (or one stream of it), between `since` and
/// `until` (Unix seconds, by event time = record start). Read in time
/// slices: each slice's events are fetched, sorted by time and parsed, so
/// memory holds one slice of events.
pub struct CloudWatchSource {
    aws: Aws,
    client: aws_sdk_cloudwatchlogs::Client,
    group: String,
    stream: Option<String>,
    /// Milliseconds: the next slice starts here; reading ends at `until`.
    from: i64,
    until: i64,
    slice: i64,
    /// Events of the current slice: (timestamp, stream, message).
    events: std::vec::IntoIter<(i64, String, String)>,
    parser: RecordParser,
    record: FlowRecord,
    read: u64,
}

impl CloudWatchSource {
    pub fn new(
        aws: &Aws,
        group: &str,
        stream: Option<&str>,
        since: Option<u64>,
        until: Option<u64>,
        slice_secs: u64,
        format: Format,
    ) -> Result<CloudWatchSource> {
        let client = aws.logs();
        let (mut lo, mut hi) = (since.map(|s| s as i64 * 1000), until.map(|s| s as i64 * 1000));
        if lo.is_none() || hi.is_none() {
            // The range of the streams' events.
            let (first, last) = aws.rt.block_on(async {
                let mut q = client.describe_log_streams().log_group_name(group);
                if let Some(s) = stream {
                    q = q.log_stream_name_prefix(s);
                }
                let mut pages = q.into_paginator().send();
                let (mut first, mut last) = (i64::MAX, i64::MIN);
                while let Some(p) = pages.next().await {
                    let p = p.map_err(|e| anyhow!("cloudwatch://{group}: {}", DisplayErrorContext(e)))?;
                    for s in p.log_streams() {
                        if let Some(t) = s.first_event_timestamp() {
                            first = first.min(t);
                        }
                        last = last.max(s.last_event_timestamp().or(s.first_event_timestamp()).unwrap_or(i64::MIN));
                    }
                }
                Ok::<_, anyhow::Error>((first, last))
            })?;
            lo = lo.or(Some(if first == i64::MAX { 0 } else { first }));
            // Inclusive last event → exclusive end.
            hi = hi.or(Some(if last == i64::MIN { 0 } else { last + 1 }));
        }
        Ok(CloudWatchSource {
            aws: aws.clone(),
            client,
            group: group.to_string(),
            stream: stream.map(str::to_string),
            from: lo.unwrap_or(0),
            until: hi.unwrap_or(0),
            slice: slice_secs.max(1) as i64 * 1000,
            events: Vec::new().into_iter(),
            parser: RecordParser::new(format),
            record: FlowRecord::default(),
            read: 0,
        })
    }

    /// Fetches the next slice with events; false at the end.
    fn fill(&mut self) -> Result<bool> {
        while self.from < self.until {
            let (a, b) = (self.from, (self.from + self.slice).min(self.until));
            self.from = b;
            let group = &self.group;
            let mut q = self.client.filter_log_events().log_group_name(group).start_time(a).end_time(b - 1);
            if let Some(s) = &self.stream {
                q = q.log_stream_names(s);
            }
            let mut pages = q.into_paginator().send();
            let mut ev = Vec::new();
            self.aws.rt.block_on(async {
                while let Some(p) = pages.next().await {
                    let p = p.map_err(|e| anyhow!("cloudwatch://{group}: {}", DisplayErrorContext(e)))?;
                    for e in p.events() {
                        ev.push((e.timestamp().unwrap_or(0), e.log_stream_name().unwrap_or("").to_string(), e.message().unwrap_or("").to_string()));
                    }
                }
                Ok::<_, anyhow::Error>(())
            })?;
            if !ev.is_empty() {
                ev.sort_by_key(|e| e.0);
                self.events = ev.into_iter();
                return Ok(true);
            }
        }
        Ok(false)
    }
}

impl RecordSource for CloudWatchSource {
    fn next_record(&mut self) -> Result<Option<&FlowRecord>> {
        loop {
            let Some((_, stream, msg)) = self.events.next() else {
                if self.fill()? {
                    continue;
                }
                return Ok(None);
            };
            self.read += 1;
            let p = self
                .parser
                .parse_line(&msg)
                .map_err(|e| anyhow!("cloudwatch://{}, stream {stream}: event {:?}: {}", self.group, msg, e.error))?;
            let Some(p) = p else { continue };
            self.record = p.record;
            if self.record.interface_id.is_none() {
                self.record.interface_id = Some(interface_from_stream(&stream));
            }
            return Ok(Some(&self.record));
        }
    }

    fn position(&self) -> String {
        format!("{} events", self.read)
    }
}
