//! The ship stage: formatted records to their destinations, without loss.
//!
//! - `stdout` and `file:<path>`: one record per line, written directly.
//! - `dir:<path>`, `s3://bucket/prefix`, `cloudwatch:<group>`,
//!   `firehose:<stream>`: every batch is first appended to the on-disk
//!   [`spool`], then each destination delivers from it in its own task and
//!   acknowledges; a batch leaves the spool once every destination has
//!   acknowledged it. A slow or failing destination holds only its own
//!   cursor: capture and the other destinations go on.

pub mod aws;
pub mod batch;
pub mod cloudwatch;
pub mod destination;
pub mod firehose;
pub mod parquet;
pub mod s3;
pub mod spool;
pub mod stop;

use std::{
    fmt,
    fs::{File, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
    str::FromStr,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result};
use tokio::{sync::watch, task::JoinHandle, time::Instant};
use tracing::{error, info, warn};

use flowlog_records::{
    format::Format,
    record::FlowRecord,
};
use batch::{CwLimits, FileFormat, Layout};
use spool::{Batch, Spool, SpoolRecord};
pub use destination::{BoxFut, Destination, ShipStats};
pub use stop::Stop;

/// Options of the S3-layout destinations (`s3://…?format=parquet&hive&per-hour`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LayoutOptions {
    pub format: FileFormat,
    pub hive: bool,
    pub per_hour: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    Stdout,
    /// Appends records to a file, one per line.
    File(PathBuf),
    /// The S3 layout in a local directory.
    Dir { path: PathBuf, opts: LayoutOptions },
    S3 { bucket: String, prefix: String, opts: LayoutOptions, aws: aws::OutputAws },
    CloudWatch { group: String, retention_days: Option<i32>, aws: aws::OutputAws },
    Firehose { stream: String, aws: aws::OutputAws },
}

const OUTPUT_SYNTAX: &str = "expected `stdout`, `file:<path>`, `dir:<path>[?options]`, `s3://<bucket>[/<prefix>][?options]` \
(options: format=text|parquet, hive, per-hour, joined with &), `cloudwatch:<log-group>[?retention=<days>]` or `firehose:<delivery-stream>`; the AWS ones also take region=<region>, endpoint=<url> and role-arn=<arn>";

/// Takes the AWS options (region, endpoint, role-arn) out of a query;
/// returns them and the rest of the query.
fn take_aws(s: &str, q: Option<&str>) -> Result<(aws::OutputAws, Option<String>), String> {
    let mut a = aws::OutputAws::default();
    let mut rest = Vec::new();
    for kv in q.unwrap_or("").split('&').filter(|x| !x.is_empty()) {
        let slot = match kv.split_once('=') {
            Some(("region", v)) => Some((&mut a.region, v)),
            Some(("endpoint", v)) => Some((&mut a.endpoint, v)),
            Some(("role-arn" | "role_arn", v)) => Some((&mut a.role_arn, v)),
            _ => None,
        };
        match slot {
            Some((slot, v)) => *slot = Some(v.to_string()),
            None => rest.push(kv),
        }
    }
    a.validate().map_err(|e| format!("invalid output {s:?}: {e}"))?;
    Ok((a, if rest.is_empty() { None } else { Some(rest.join("&")) }))
}

fn query(parts: Vec<String>) -> String {
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

fn parse_layout_opts(s: &str, q: Option<&str>) -> Result<LayoutOptions, String> {
    let mut o = LayoutOptions::default();
    for kv in q.unwrap_or("").split('&').filter(|x| !x.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, "true"));
        let flag = || match v {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" => Ok(false),
            _ => Err(format!("invalid output {s:?}: {k}={v:?} is not true or false")),
        };
        match k {
            "format" => {
                o.format = match v {
                    "text" | "plain-text" => FileFormat::Text,
                    "parquet" => FileFormat::Parquet,
                    _ => return Err(format!("invalid output {s:?}: format={v:?}: expected text or parquet")),
                }
            }
            "hive" => o.hive = flag()?,
            "per-hour" | "per_hour" => o.per_hour = flag()?,
            _ => return Err(format!("invalid output {s:?}: unknown option {k:?} (format, hive, per-hour)")),
        }
    }
    Ok(o)
}

fn layout_query(o: &LayoutOptions) -> Vec<String> {
    let mut q = Vec::new();
    if o.format == FileFormat::Parquet {
        q.push("format=parquet".to_string());
    }
    if o.hive {
        q.push("hive".to_string());
    }
    if o.per_hour {
        q.push("per-hour".to_string());
    }
    q
}

impl FromStr for Output {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid output {s:?}: {OUTPUT_SYNTAX}");
        if s == "stdout" || s == "-" {
            return Ok(Output::Stdout);
        }
        if let Some(p) = s.strip_prefix("file:") {
            return if p.is_empty() { Err(bad()) } else { Ok(Output::File(PathBuf::from(p))) };
        }
        if let Some(rest) = s.strip_prefix("dir:") {
            let (p, q) = rest.split_once('?').map_or((rest, None), |(a, b)| (a, Some(b)));
            if p.is_empty() {
                return Err(bad());
            }
            return Ok(Output::Dir { path: PathBuf::from(p), opts: parse_layout_opts(s, q)? });
        }
        if let Some(rest) = s.strip_prefix("s3://") {
            let (p, q) = rest.split_once('?').map_or((rest, None), |(a, b)| (a, Some(b)));
            let (aws, q) = take_aws(s, q)?;
            let q = q.as_deref();
            let (bucket, prefix) = p.split_once('/').unwrap_or((p, ""));
            let prefix = prefix.trim_matches('/');
            let valid_bucket = (3..=63).contains(&bucket.len())
                && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
                && !bucket.starts_with(['-', '.'])
                && !bucket.ends_with(['-', '.']);
            if !valid_bucket {
                return Err(format!("invalid output {s:?}: {bucket:?} is not a valid S3 bucket name (3-63 characters: a-z 0-9 . -)"));
            }
            if prefix.split('/').any(|c| c == "AWSLogs") {
                return Err(format!("invalid output {s:?}: AWSLogs is reserved and cannot be part of the prefix"));
            }
            return Ok(Output::S3 { bucket: bucket.into(), prefix: prefix.into(), opts: parse_layout_opts(s, q)?, aws });
        }
        if let Some(rest) = s.strip_prefix("cloudwatch:") {
            let (g, q) = rest.split_once('?').map_or((rest, None), |(a, b)| (a, Some(b)));
            let (aws, q) = take_aws(s, q)?;
            let q = q.as_deref();
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
            return Ok(Output::CloudWatch { group: g.into(), retention_days, aws });
        }
        if let Some(rest) = s.strip_prefix("firehose:") {
            let (st, q) = rest.split_once('?').map_or((rest, None), |(a, b)| (a, Some(b)));
            let (aws, q) = take_aws(s, q)?;
            if let Some(q) = q {
                return Err(format!("invalid output {s:?}: unknown option {q:?} (region, endpoint, role-arn)"));
            }
            if st.is_empty() || st.len() > 64 || !st.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
                return Err(format!("invalid output {s:?}: delivery stream names are 1-64 characters of a-z A-Z 0-9 . _ -"));
            }
            return Ok(Output::Firehose { stream: st.into(), aws });
        }
        Err(bad())
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Output::Stdout => write!(f, "stdout"),
            Output::File(p) => write!(f, "file:{}", p.display()),
            Output::Dir { path, opts } => write!(f, "dir:{}{}", path.display(), query(layout_query(opts))),
            Output::S3 { bucket, prefix, opts, aws } => {
                write!(f, "s3://{bucket}")?;
                if !prefix.is_empty() {
                    write!(f, "/{prefix}")?;
                }
                write!(f, "{}", query([layout_query(opts), aws.query()].concat()))
            }
            Output::CloudWatch { group, retention_days, aws } => {
                write!(f, "cloudwatch:{group}")?;
                let r = retention_days.iter().map(|d| format!("retention={d}")).collect();
                write!(f, "{}", query([r, aws.query()].concat()))
            }
            Output::Firehose { stream, aws } => write!(f, "firehose:{stream}{}", query(aws.query())),
        }
    }
}

impl Output {
    /// The per-output AWS options of an AWS destination.
    pub fn aws(&self) -> Option<&aws::OutputAws> {
        match self {
            Output::S3 { aws, .. } | Output::CloudWatch { aws, .. } | Output::Firehose { aws, .. } => Some(aws),
            _ => None,
        }
    }

    /// Whether records for it go through the spool.
    pub fn spooled(&self) -> bool {
        !matches!(self, Output::Stdout | Output::File(_))
    }
}

pub enum Sink {
    Stdout(io::Stdout),
    File { path: PathBuf, file: File },
}

impl Sink {
    pub fn open(o: &Output) -> Result<Sink> {
        Ok(match o {
            Output::Stdout => Sink::Stdout(io::stdout()),
            Output::File(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
                }
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("opening output file {}", path.display()))?;
                Sink::File { path: path.clone(), file }
            }
            other => anyhow::bail!("{other} is a spooled output, not a direct sink"),
        })
    }

    /// Writes a batch of newline-terminated records in one go.
    pub fn write_batch(&mut self, lines: &[u8]) -> Result<()> {
        match self {
            Sink::Stdout(s) => {
                let mut l = s.lock();
                l.write_all(lines)?;
                l.flush()?;
            }
            Sink::File { path, file } => {
                file.write_all(lines).with_context(|| format!("writing {}", path.display()))?;
                file.flush()?;
            }
        }
        Ok(())
    }

    pub fn describe(&self) -> String {
        match self {
            Sink::Stdout(_) => "stdout".into(),
            Sink::File { path, .. } => format!("file:{}", path.display()),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ShipConfig {
    pub outputs: Vec<Output>,
    /// `account-id` used in S3 key names.
    pub account_id: String,
    pub aws: aws::AwsSettings,
    /// Region in S3 key names when no AWS destination sets one.
    pub flow_log_id: String,
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
    /// How long S3/dir destinations gather records into files (AWS: 5 min).
    pub flush_interval: Duration,
    pub objects: s3::ObjectOptions,
    pub retry: aws::RetryPolicy,
    pub shutdown_timeout: Duration,
}

/// The spool directory without `spool-dir`, `$STATE_DIRECTORY` unset:
/// below `/var/lib/flowlog`, which the systemd unit (`StateDirectory=flowlog`)
/// and the Kubernetes manifest (hostPath volume) make writable.
pub const DEFAULT_SPOOL_DIR: &str = "/var/lib/flowlog/spool";

/// The default spool directory: `spool` in the first directory of
/// `$STATE_DIRECTORY` (set by systemd for `StateDirectory=`, the only
/// writable state path under `ProtectSystem=strict`), else
/// [`DEFAULT_SPOOL_DIR`].
pub fn default_spool_dir() -> PathBuf {
    spool_dir_for(std::env::var_os("STATE_DIRECTORY").as_deref())
}

/// [`default_spool_dir`] for a given `$STATE_DIRECTORY` (colon-separated
/// when the unit names several directories; relative entries are ignored).
pub fn spool_dir_for(state_directory: Option<&std::ffi::OsStr>) -> PathBuf {
    state_directory
        .and_then(|v| v.to_str())
        .and_then(|v| v.split(':').find(|d| d.starts_with('/')))
        .map(|d| Path::new(d).join("spool"))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SPOOL_DIR))
}

impl Default for ShipConfig {
    fn default() -> Self {
        ShipConfig {
            outputs: vec![Output::Stdout],
            account_id: "unknown".into(),
            aws: aws::AwsSettings::default(),
            flow_log_id: "fl-00000000000000000".into(),
            spool_dir: PathBuf::from(DEFAULT_SPOOL_DIR),
            spool_max_bytes: 1 << 30,
            flush_interval: Duration::from_secs(300),
            objects: s3::ObjectOptions::default(),
            retry: aws::RetryPolicy::default(),
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

/// An `s3://` output writes the account and region into every key
/// (`AWSLogs/<account>/vpcflowlogs/<region>/`), where Athena's partitions,
/// bucket policies and `compare` look for them: a placeholder such as
/// `unknown` would put the records where no reader finds them.
pub fn check_s3_identity(output: &str, account: &str, region: Option<&str>) -> Result<()> {
    if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
        anyhow::bail!(
            "{output}: the AWS account id is {account:?}, not a 12-digit account id; S3 keys need it (AWSLogs/<account>/...): \
             set `account-id` in the config file or --account-id, or `account-id` in [metadata.onprem], or run where the instance metadata service gives it"
        );
    }
    match region {
        None => anyhow::bail!("{output}: no AWS region; S3 keys need it (AWSLogs/<account>/vpcflowlogs/<region>/): set `region` in the config file, --region or AWS_REGION"),
        Some(r) if !aws::valid_region(r) => anyhow::bail!("{output}: invalid AWS region {r:?}: expected lowercase letters, digits and dashes, such as us-east-1"),
        Some(_) => Ok(()),
    }
}

/// One window on its way to the outputs (from [`Shipper::window`]).
pub struct WindowWriter<'a> {
    shipper: &'a mut Shipper,
    format: &'a Format,
    /// Lines for the direct outputs, `\n`-terminated.
    text: Vec<u8>,
    /// The batch for the spooled outputs.
    spooled: Option<Batch>,
    records: usize,
}

impl WindowWriter<'_> {
    pub fn push(&mut self, r: &FlowRecord) {
        let start = self.text.len();
        self.format.write(r, &mut self.text);
        if let Some(b) = &mut self.spooled {
            b.records.push(SpoolRecord {
                interface_id: r.interface_id.as_deref().unwrap_or("-").to_string(),
                start: r.start,
                end: r.end,
                line: String::from_utf8(self.text[start..].to_vec()).expect("records are ASCII"),
            });
        }
        if self.shipper.direct.is_empty() {
            self.text.truncate(start);
        } else {
            self.text.push(b'\n');
        }
        self.records += 1;
    }

    /// Writes the direct outputs and appends to the spool. Never waits for
    /// a destination. Returns, per direct output (and `spool` for the
    /// spooled ones), whether the records were written.
    pub fn finish(self) -> Vec<(String, bool)> {
        let mut results = Vec::new();
        for s in &mut self.shipper.direct {
            let res = s.write_batch(&self.text);
            if let Err(e) = &res {
                error!(output = %s.describe(), records = self.records, "records of this window were not written: {e:#}");
            }
            results.push((s.describe(), res.is_ok()));
        }
        if let Some(batch) = self.spooled.filter(|b| !b.records.is_empty()) {
            results.push(("spool".to_string(), self.shipper.send_batch(&batch)));
        }
        // Kept for the next window (no page faults for a buffer of the same
        // size), unless this window was much smaller than a past peak.
        let mut text = self.text;
        if text.capacity() <= 2 * text.len() + (1 << 20) {
            text.clear();
            self.shipper.text = text;
        }
        results
    }
}

/// Fan-out to every configured output.
pub struct Shipper {
    direct: Vec<Sink>,
    spool: Option<Spool>,
    tasks: Vec<(String, JoinHandle<()>)>,
    stop_tx: watch::Sender<Option<Instant>>,
    shutdown_timeout: Duration,
    /// Per spooled destination, by name.
    pub stats: Vec<(String, Arc<ShipStats>)>,
    /// The direct outputs' text buffer, reused across windows.
    text: Vec<u8>,
}

impl Shipper {
    /// Opens every output, checks the AWS ones (clear errors for a missing
    /// bucket, log group or delivery stream, bad region, access denied, an
    /// unusable spool directory) and starts one task per spooled output.
    pub async fn start(cfg: &ShipConfig) -> Result<Shipper> {
        let direct = cfg.outputs.iter().filter(|o| !o.spooled()).map(Sink::open).collect::<Result<Vec<_>>>()?;
        let spooled: Vec<&Output> = cfg.outputs.iter().filter(|o| o.spooled()).collect();
        let (stop_tx, stop_rx) = watch::channel(None);
        let mut sh = Shipper { direct, spool: None, tasks: Vec::new(), stop_tx, shutdown_timeout: cfg.shutdown_timeout, stats: Vec::new(), text: Vec::new() };
        if spooled.is_empty() {
            return Ok(sh);
        }
        let names: Vec<String> = spooled.iter().map(|o| o.to_string()).collect();
        let mut dedup = names.clone();
        dedup.sort();
        dedup.dedup();
        if dedup.len() != names.len() {
            anyhow::bail!("the same output is given twice: {}", names.join(", "));
        }
        let needs_aws = spooled.iter().any(|o| o.aws().is_some_and(|a| a.region.is_none()));
        let sdk = if needs_aws { Some(aws::sdk_config(&cfg.aws).await?) } else { None };
        let known_region = sdk.as_ref().and_then(|c| c.region().map(|r| r.to_string())).or_else(|| cfg.aws.region.clone()).or_else(|| std::env::var("AWS_REGION").ok());
        // One SDK configuration per distinct set of output options.
        let mut sdks: Vec<(aws::OutputAws, aws_config::SdkConfig)> = Vec::new();
        for o in &spooled {
            if let Some(a) = o.aws() {
                if !sdks.iter().any(|(k, _)| k == a) {
                    let c = aws::output_sdk_config(&cfg.aws, a).await.with_context(|| format!("output {o}"))?;
                    sdks.push((a.clone(), c));
                }
            }
        }
        let sdk_for = |a: &aws::OutputAws| sdks.iter().find(|(k, _)| k == a).map(|(_, c)| c).unwrap();
        for (o, name) in spooled.iter().zip(&names) {
            if let Output::S3 { aws, .. } = o {
                let r = aws.region.clone().or_else(|| known_region.clone());
                check_s3_identity(name, &cfg.account_id, r.as_deref())?;
            }
        }
        // Only `dir:` outputs may lack a region (a machine outside AWS).
        let region = known_region.unwrap_or_else(|| "local".into());
        let mut dests: Vec<Box<dyn Destination>> = Vec::new();
        for (o, name) in spooled.iter().zip(&names) {
            let stats = Arc::new(ShipStats::default());
            sh.stats.push((name.clone(), stats.clone()));
            let layout = |prefix: &str, opts: &LayoutOptions, r: Option<&String>| Layout {
                prefix: prefix.to_string(),
                account_id: cfg.account_id.clone(),
                region: r.unwrap_or(&region).clone(),
                flow_log_id: cfg.flow_log_id.clone(),
                hive: opts.hive,
                per_hour: opts.per_hour,
                format: opts.format,
            };
            match o {
                Output::Dir { path, opts } => {
                    let d = s3::DirDest { name: name.clone(), root: path.clone(), layout: layout("", opts, None), opts: cfg.objects.clone(), retry: cfg.retry, stats };
                    d.check()?;
                    dests.push(Box::new(d));
                }
                Output::S3 { bucket, prefix, opts, aws } => {
                    let path_style = cfg.aws.endpoint_url.is_some() || aws.endpoint.is_some();
                    let d = s3::S3Dest {
                        name: name.clone(),
                        client: aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(sdk_for(aws)).force_path_style(path_style).build()),
                        bucket: bucket.clone(),
                        layout: layout(prefix, opts, aws.region.as_ref()),
                        opts: cfg.objects.clone(),
                        retry: cfg.retry,
                        stats,
                    };
                    d.check().await?;
                    dests.push(Box::new(d));
                }
                Output::CloudWatch { group, retention_days, aws } => {
                    let d = cloudwatch::CloudWatchDest {
                        name: name.clone(),
                        client: aws_sdk_cloudwatchlogs::Client::new(sdk_for(aws)),
                        group: group.clone(),
                        retention_days: *retention_days,
                        limits: CwLimits::default(),
                        retry: cfg.retry,
                        stats,
                        streams: Default::default(),
                    };
                    d.check().await?;
                    dests.push(Box::new(d));
                }
                Output::Firehose { stream, aws } => {
                    let d = firehose::FirehoseDest { name: name.clone(), client: aws_sdk_firehose::Client::new(sdk_for(aws)), stream: stream.clone(), retry: cfg.retry, stats };
                    d.check().await?;
                    dests.push(Box::new(d));
                }
                Output::Stdout | Output::File(_) => unreachable!(),
            }
        }
        let spool = Spool::open(&cfg.spool_dir, cfg.spool_max_bytes, &names)?;
        for n in &names {
            let p = spool.pending_records(n)?;
            if p > 0 {
                info!(destination = %n, records = p, "spool: delivering records left from before");
            }
        }
        for d in dests {
            let name = d.name().to_string();
            let task = tokio::spawn(drive(d, spool.clone(), Stop(stop_rx.clone()), cfg.flush_interval));
            sh.tasks.push((name, task));
        }
        sh.spool = Some(spool);
        Ok(sh)
    }

    pub fn spool(&self) -> Option<&Spool> {
        self.spool.as_ref()
    }

    pub fn describe(&self) -> String {
        self.direct.iter().map(Sink::describe).chain(self.tasks.iter().map(|(n, _)| n.clone())).collect::<Vec<_>>().join(",")
    }

    /// Hands a window's records to every output (see [`Shipper::window`]).
    pub fn send(&mut self, format: &Format, records: &[FlowRecord]) -> Vec<(String, bool)> {
        let mut w = self.window(format);
        for r in records {
            w.push(r);
        }
        w.finish()
    }

    /// Starts handing a window's records to every output, one at a time,
    /// so that a window is held as text, never as a `Vec<FlowRecord>`.
    /// Each record is formatted once, whatever the number of outputs.
    pub fn window<'a>(&'a mut self, format: &'a Format) -> WindowWriter<'a> {
        let spooled = self.spool.is_some().then(|| Batch { header: format.header(), records: Vec::new() });
        let text = std::mem::take(&mut self.text);
        WindowWriter { shipper: self, format, text, spooled, records: 0 }
    }

    /// Appends a batch to the spool (spooled outputs only).
    pub fn send_batch(&mut self, batch: &Batch) -> bool {
        if let Some(sp) = &self.spool {
            if let Err(e) = sp.append(batch) {
                error!(records = batch.records.len(), "records of this window could not be spooled and are lost: {e:#}");
                return false;
            }
        }
        true
    }

    /// Graceful shutdown: every destination flushes what it can before the
    /// deadline; the rest stays in the spool for the next start.
    pub async fn shutdown(self) {
        let deadline = Instant::now() + self.shutdown_timeout;
        let _ = self.stop_tx.send(Some(deadline));
        for (name, t) in self.tasks {
            match tokio::time::timeout_at(deadline + Duration::from_secs(1), t).await {
                Ok(_) => {}
                Err(_) => warn!(destination = %name, "did not finish before the shutdown deadline"),
            }
        }
        if let Some(sp) = &self.spool {
            for (name, _) in &self.stats {
                match sp.pending_records(name) {
                    Ok(0) => {}
                    Ok(n) => warn!(destination = %name, records = n, "not delivered before the shutdown deadline; kept in the spool for the next start"),
                    Err(e) => warn!(destination = %name, "spool: {e:#}"),
                }
            }
        }
    }
}

/// One destination's loop: read from the spool at its cursor, deliver,
/// acknowledge.
async fn drive(mut dest: Box<dyn Destination>, spool: Spool, mut stop: Stop, flush_interval: Duration) {
    let name = dest.name().to_string();
    let mut reader = spool.reader(&name);
    let mut pending: Vec<Batch> = Vec::new();
    let mut pending_end = reader.pos();
    let mut pending_bytes = 0usize;
    let mut first_at: Option<Instant> = None;
    loop {
        while pending_bytes < dest.max_pending_bytes() {
            match reader.next_batch() {
                Ok(Some((b, end))) => {
                    pending_bytes += b.text_len();
                    pending.push(b);
                    pending_end = end;
                    first_at.get_or_insert_with(Instant::now);
                }
                Ok(None) => break,
                Err(e) => {
                    error!(destination = %name, "reading the spool: {e:#}");
                    break;
                }
            }
        }
        let stopping = stop.stopping();
        let flush_at = first_at.map(|t| t + if dest.batches_files() { flush_interval } else { Duration::ZERO });
        let due = !pending.is_empty() && (stopping || pending_bytes >= dest.max_pending_bytes() || flush_at.is_some_and(|t| t <= Instant::now()));
        if due {
            match dest.deliver(&pending, &stop).await {
                Ok(()) => {
                    if let Err(e) = spool.ack(&name, pending_end) {
                        error!(destination = %name, "spool: {e:#}");
                    }
                    pending.clear();
                    pending_bytes = 0;
                    first_at = None;
                }
                Err(aws::Interrupted) => {
                    warn!(destination = %name, records = pending.iter().map(|b| b.records.len()).sum::<usize>(), "shutdown deadline passed; records stay in the spool");
                    return;
                }
            }
            continue;
        }
        if stopping && pending.is_empty() {
            return;
        }
        let wake = flush_at.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = reader.changed() => {}
            _ = tokio::time::sleep_until(wake) => {}
            _ = stop.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_needs_a_12_digit_account_and_a_region() {
        assert!(check_s3_identity("s3://b", "123456789012", Some("eusc-de-east-1")).is_ok());
        let e = check_s3_identity("s3://b", "unknown", Some("us-east-1")).unwrap_err().to_string();
        assert_eq!(
            e,
            "s3://b: the AWS account id is \"unknown\", not a 12-digit account id; S3 keys need it (AWSLogs/<account>/...): \
             set `account-id` in the config file or --account-id, or `account-id` in [metadata.onprem], or run where the instance metadata service gives it"
        );
        for a in ["12345678901", "1234567890123", "12345678901x", ""] {
            assert!(check_s3_identity("s3://b", a, Some("us-east-1")).is_err(), "{a}");
        }
        assert_eq!(
            check_s3_identity("s3://b", "123456789012", None).unwrap_err().to_string(),
            "s3://b: no AWS region; S3 keys need it (AWSLogs/<account>/vpcflowlogs/<region>/): set `region` in the config file, --region or AWS_REGION"
        );
        assert!(check_s3_identity("s3://b", "123456789012", Some("US-EAST-1")).is_err());
    }

    #[test]
    fn parses_outputs() {
        assert_eq!("stdout".parse::<Output>(), Ok(Output::Stdout));
        assert_eq!("file:/tmp/x.log".parse::<Output>(), Ok(Output::File("/tmp/x.log".into())));
        assert!("bogus".parse::<Output>().unwrap_err().starts_with("invalid output \"bogus\": expected `stdout`, `file:<path>`"));
        assert!("file:".parse::<Output>().is_err());
        let o = "s3://my-bucket/a/b/?format=parquet&hive".parse::<Output>().unwrap();
        assert_eq!(o, Output::S3 { bucket: "my-bucket".into(), prefix: "a/b".into(), opts: LayoutOptions { format: FileFormat::Parquet, hive: true, per_hour: false }, aws: Default::default() });
        assert_eq!(o.to_string(), "s3://my-bucket/a/b?format=parquet&hive");
        assert_eq!("s3://b3t".parse::<Output>().unwrap(), Output::S3 { bucket: "b3t".into(), prefix: "".into(), opts: LayoutOptions::default(), aws: Default::default() });
        assert!("s3://Bad_Bucket".parse::<Output>().unwrap_err().contains("not a valid S3 bucket name"));
        assert!("s3://bucket/AWSLogs".parse::<Output>().unwrap_err().contains("reserved"));
        assert!("s3://bucket?format=csv".parse::<Output>().unwrap_err().contains("format=\"csv\""));
        assert_eq!(
            "dir:/var/log/flows?per-hour".parse::<Output>().unwrap(),
            Output::Dir { path: "/var/log/flows".into(), opts: LayoutOptions { per_hour: true, ..Default::default() } }
        );
        assert_eq!("cloudwatch:/vpc/flows?retention=7".parse::<Output>().unwrap(), Output::CloudWatch { group: "/vpc/flows".into(), retention_days: Some(7), aws: Default::default() });
        assert!("cloudwatch:a b".parse::<Output>().is_err());
        assert!("cloudwatch:g?retention=x".parse::<Output>().is_err());
        assert_eq!("firehose:fh-1".parse::<Output>().unwrap(), Output::Firehose { stream: "fh-1".into(), aws: Default::default() });
        // Per-output AWS options, kept in the name.
        let s = "s3://b3t/p?format=parquet&region=eu-west-1&endpoint=http://127.0.0.1:9&role-arn=arn:aws:iam::123456789012:role/x";
        let o: Output = s.parse().unwrap();
        let a = o.aws().unwrap();
        assert_eq!((a.region.as_deref(), a.endpoint.as_deref(), a.role_arn.as_deref()), (Some("eu-west-1"), Some("http://127.0.0.1:9"), Some("arn:aws:iam::123456789012:role/x")));
        assert_eq!(o.to_string(), s);
        let c: Output = "cloudwatch:/g?retention=7&region=us-east-2".parse().unwrap();
        assert_eq!(c.to_string(), "cloudwatch:/g?retention=7&region=us-east-2");
        assert_eq!("firehose:f?role-arn=arn:aws-cn:iam::123456789012:role/a/b".parse::<Output>().unwrap().to_string(), "firehose:f?role-arn=arn:aws-cn:iam::123456789012:role/a/b");
        for bad in ["s3://b3t?region=EU", "s3://b3t?endpoint=ftp://x", "firehose:f?role-arn=arn:aws:iam::12:role/x", "firehose:f?role-arn=role", "firehose:f?x=1"] {
            assert!(bad.parse::<Output>().is_err(), "{bad}");
        }
        assert!("firehose:".parse::<Output>().is_err());
    }

    #[test]
    fn file_sink_appends_lines() {
        let dir = std::env::temp_dir().join(format!("flowlog-ship-{}", std::process::id()));
        let path = dir.join("sub/out.log");
        let mut s = Sink::open(&Output::File(path.clone())).unwrap();
        s.write_batch(b"a\n").unwrap();
        s.write_batch(b"b\n").unwrap();
        drop(s);
        let mut s = Sink::open(&Output::File(path.clone())).unwrap();
        s.write_batch(b"c\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a\nb\nc\n");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
