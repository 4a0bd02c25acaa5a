//! The ship stage: formatted records to their destinations, without loss.
//!
//! - `stdout` and `file:<path>`: one record per line, written directly.
//! - `dir:<path>`, `s3://bucket/prefix`, `cloudwatch:<group>`,
//!   `firehose:<stream>`: every batch is first appended to the on-disk
//!   [`spool`], then each destination delivers from it in its own task and
//!   acknowledges; a batch leaves the spool once every destination has
//!   acknowledged it. A slow or failing destination holds only its own
//!   cursor: capture and the other destinations go on.
//!
//! Each destination is a folder (`stdout/`, `file/`, `dir/`, `s3/`,
//! `cloudwatch/`, `firehose/`) that parses its own output URL, checks and
//! builds itself ([`output::OutputSpec`]), registered once in
//! [`DESTINATIONS`]; the shipper only iterates them. `dir:` and `s3://`
//! share one delivery path ([`object`]); every spooled destination retries
//! with [`retry`].

pub mod aws;
pub mod batch;
pub mod destination;
pub mod object;
pub mod output;
pub mod parquet;
pub mod perm;
pub mod prelude;
pub mod retry;
pub mod spool;
pub mod stop;

use std::{
    path::{Path, PathBuf},
    str::FromStr,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result};
use tokio::{sync::watch, task::JoinHandle, time::Instant};
use tracing::{error, info, warn};

use flowlog_records::{
    format::{Format, LineWriter},
    record::FlowRecord,
};
use spool::{Batch, Pos, Spool};

use crate::{enrich::WindowRecords, metrics::RecordCounts};
pub use destination::{BoxFut, Destination, ShipStats};
pub use output::{Output, OutputSpec, Registration, Sink, StartContext};
pub use stop::Stop;

/// Declares the destination folders and lists them: a destination is one
/// folder (its options, startup check and construction) plus its name here.
macro_rules! destinations {
    ($($dest:ident),* $(,)?) => {
        $(pub mod $dest;)*
        /// Every destination kind, in the order of the syntax help.
        pub const DESTINATIONS: &[Registration] = &[$($dest::REGISTRATION),*];
    };
}

destinations!(stdout, file, dir, s3, cloudwatch, firehose);

impl FromStr for Output {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match DESTINATIONS.iter().find_map(|d| (d.parse)(s)) {
            Some(o) => o.map(|o| Output(o.into())),
            None => {
                let (last, rest) = DESTINATIONS.split_last().expect("destinations are registered");
                let kinds = rest.iter().map(|d| d.syntax).collect::<Vec<_>>().join(", ");
                Err(format!("invalid output {s:?}: expected {kinds} or {}; {}", last.syntax, aws::OUTPUT_SYNTAX))
            }
        }
    }
}

impl Output {
    /// The default output.
    pub fn stdout() -> Output {
        Output(Arc::new(stdout::Stdout))
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
            outputs: vec![Output::stdout()],
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

/// Records formatted and written to the direct outputs at a time by
/// [`Shipper::write_window`]: about 8 MiB of text in the default format, so
/// a window of a million flows holds 8 MiB of text instead of 113
/// (BENCHMARKS.md, issue #22), and each core still gets
/// [`crate::enrich::PLACES_PER_THREAD`] or more of a piece.
pub const WINDOW_PIECE: usize = 1 << 16;

/// One window on its way to the outputs (from [`Shipper::window`]).
pub struct WindowWriter<'a> {
    shipper: &'a mut Shipper,
    format: &'a Format,
    /// The window's records formatted since the last [`WindowWriter::flush`],
    /// in order: one part, or one per range formatted on its own thread
    /// ([`WindowWriter::parts`]).
    parts: Vec<Part<'a>>,
    /// The records for the spooled outputs, the whole window's, in the
    /// spool's encoding (a tenth of the memory of `SpoolRecord`s).
    spooled: Spooled,
    records: usize,
    /// Per direct output (in `shipper.direct`'s order), the error of a write
    /// of this window: later flushes skip it, the window is not written there.
    failed: Vec<Option<anyhow::Error>>,
}

/// Records formatted for every output: a window's, or one contiguous range
/// of them, formatted on its own (see [`WindowWriter::parts`]).
pub struct Part<'f> {
    /// The format, with its per-interface prefix cache (which depends only on
    /// the record, so a part can start anywhere in a window).
    lines: LineWriter<'f>,
    /// Lines for the direct outputs, `\n`-terminated.
    text: Vec<u8>,
    /// Whether there are direct outputs (otherwise `text` is scratch).
    direct: bool,
    /// The records for the spooled outputs.
    spooled: Option<Spooled>,
    records: usize,
}

/// Records encoded for the spool ([`spool::encode_record`]): a part's in
/// one buffer, a window's as its parts' buffers (never copied into one).
#[derive(Default)]
struct Spooled {
    encoded: Vec<Vec<u8>>,
    /// The earliest record end (the spool tracks its age).
    oldest_end: Option<u64>,
}

impl Spooled {
    fn push(&mut self, r: &FlowRecord, line: &[u8]) {
        if self.encoded.is_empty() {
            self.encoded.push(Vec::new());
        }
        if let Some(b) = self.encoded.last_mut() {
            spool::encode_record(b, r.start, r.end, r.interface_id.as_deref().unwrap_or("-"), line);
        }
        self.oldest_end = Some(self.oldest_end.map_or(r.end, |t| t.min(r.end)));
    }

    fn extend(&mut self, other: Spooled) {
        self.encoded.extend(other.encoded);
        self.oldest_end = match (self.oldest_end, other.oldest_end) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
}

impl<'f> Part<'f> {
    /// `direct`: keep the lines for direct outputs; `spooled`: make spool
    /// records; `text`: a buffer to reuse (what it holds is dropped).
    pub fn new(format: &'f Format, direct: bool, spooled: bool, mut text: Vec<u8>) -> Self {
        text.clear();
        Part { lines: LineWriter::new(format), text, direct, spooled: spooled.then(Spooled::default), records: 0 }
    }

    /// The lines for the direct outputs, and the spool records (encoded).
    pub fn output(&self) -> (&[u8], &[u8]) {
        (&self.text, self.spooled.as_ref().and_then(|s| s.encoded.first()).map_or(&[][..], |b| &b[..]))
    }

    /// Its text buffer, to reuse.
    pub fn into_text(self) -> Vec<u8> {
        self.text
    }

    pub fn push(&mut self, r: &FlowRecord) {
        let start = self.text.len();
        self.lines.write(r, &mut self.text);
        if let Some(b) = &mut self.spooled {
            b.push(r, &self.text[start..]);
        }
        if self.direct {
            self.text.push(b'\n');
        } else {
            self.text.truncate(start);
        }
        self.records += 1;
    }
}

impl<'a> WindowWriter<'a> {
    pub fn push(&mut self, r: &FlowRecord) {
        if self.parts.is_empty() {
            self.parts = self.parts(1);
        }
        if let Some(p) = self.parts.last_mut() {
            p.push(r);
        }
    }

    /// `n` empty parts, to be filled each with a contiguous range of the
    /// window's records (on its own thread) and handed back in order with
    /// [`WindowWriter::append`].
    pub fn parts(&mut self, n: usize) -> Vec<Part<'a>> {
        let (direct, spooled) = (!self.shipper.direct.is_empty(), !self.shipper.tasks.is_empty());
        (0..n).map(|_| Part::new(self.format, direct, spooled, self.shipper.texts.pop().unwrap_or_default())).collect()
    }

    /// Adds parts after the records so far.
    pub fn append(&mut self, parts: impl IntoIterator<Item = Part<'a>>) {
        self.parts.extend(parts);
    }

    /// Writes the lines so far to the direct outputs and frees their text,
    /// so that a large window is written in pieces rather than held whole
    /// (its text was most of the agent's peak memory: BENCHMARKS.md, #22).
    /// The pieces go out in order and nothing else writes to those outputs
    /// in between, so the outputs get the same bytes as from one write.
    pub fn flush(&mut self) {
        let text: Vec<&[u8]> = self.parts.iter().map(|p| &p.text[..]).filter(|t| !t.is_empty()).collect();
        if !text.is_empty() {
            for (s, failed) in self.shipper.direct.iter_mut().zip(self.failed.iter_mut()) {
                if failed.is_none() {
                    *failed = s.write_batch(&text).err();
                }
            }
        }
        // Kept for the next pieces and windows (no page faults for buffers
        // of the same size), unless much larger than what they held.
        for mut p in self.parts.drain(..) {
            self.records += p.records;
            if let Some(sp) = p.spooled.take() {
                self.spooled.extend(sp);
            }
            let mut text = p.into_text();
            if text.capacity() <= 2 * text.len() + (1 << 20) {
                text.clear();
                self.shipper.texts.push(text);
            }
        }
    }

    /// Writes the direct outputs and appends to the spool. Never waits for
    /// a destination. Returns, per direct output (and `spool` for the
    /// spooled ones), whether the records were written.
    pub fn finish(mut self) -> Vec<(String, bool)> {
        self.flush();
        let records = self.records;
        let mut results = Vec::new();
        for (s, failed) in self.shipper.direct.iter().zip(&self.failed) {
            if let Some(e) = failed {
                error!(output = %s.describe(), records, "records of this window were not written: {e:#}");
            }
            results.push((s.describe(), failed.is_none()));
        }
        // Parts make spool records (and their buffer) only for spooled outputs.
        let sp = std::mem::take(&mut self.spooled);
        if !sp.encoded.is_empty() {
            results.push(("spool".to_string(), self.shipper.send_encoded(&self.format.header(), records, &sp)));
        }
        results
    }
}

/// Fan-out to every configured output.
pub struct Shipper {
    direct: Vec<Box<dyn Sink>>,
    /// The outputs' names (`Output`'s text), in the order of `direct`.
    direct_names: Vec<String>,
    spool: Option<Spool>,
    tasks: Vec<Task>,
    /// Spooled outputs a reload removed, delivering what they had accepted.
    retiring: Vec<Task>,
    stop_tx: watch::Sender<Option<Instant>>,
    shutdown_timeout: Duration,
    flush_interval: Duration,
    /// Per spooled destination, by name.
    pub stats: Vec<(String, Arc<ShipStats>)>,
    /// The direct outputs' text buffers, reused across windows.
    texts: Vec<Vec<u8>>,
}

/// A spooled destination's delivery task.
struct Task {
    name: String,
    handle: JoinHandle<()>,
    /// Set by a reload that removes the output: deliver up to here, then end.
    retire: watch::Sender<Option<Pos>>,
}

/// The outputs a new configuration adds, opened and checked (see
/// [`Shipper::prepare`]) but not yet written to; and the full list.
pub struct Reconfig {
    outputs: Vec<String>,
    direct: Vec<(String, Box<dyn Sink>)>,
    spooled: Vec<(Box<dyn Destination>, Arc<ShipStats>)>,
    spool: NewSpool,
}

/// The spool for added spooled outputs when none ran before.
enum NewSpool {
    /// One runs already, or none is needed.
    Running,
    /// Opened at start, with the outputs' cursors.
    Open(Spool),
    /// Checked by a reload (opened, then closed: a reload waiting for the
    /// window's end must not hold its lock, a later SIGHUP may replace it);
    /// opened when it applies.
    At(PathBuf, u64),
}

/// What [`Shipper::apply`] changed, by output name.
#[derive(Debug, Default)]
pub struct Applied {
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

impl Shipper {
    /// Opens every output, checks the AWS ones (clear errors for a missing
    /// bucket, log group or delivery stream, bad region, access denied, an
    /// unusable spool directory) and starts one task per spooled output.
    pub async fn start(cfg: &ShipConfig) -> Result<Shipper> {
        let (stop_tx, _) = watch::channel(None);
        let mut sh = Shipper {
            direct: Vec::new(),
            direct_names: Vec::new(),
            spool: None,
            tasks: Vec::new(),
            retiring: Vec::new(),
            stop_tx,
            shutdown_timeout: cfg.shutdown_timeout,
            flush_interval: cfg.flush_interval,
            stats: Vec::new(),
            texts: Vec::new(),
        };
        let r = sh.prepare(cfg).await?;
        sh.install(r)?;
        Ok(sh)
    }

    /// Opens and checks the outputs of `cfg` that do not run yet (all of
    /// them at start), as [`Shipper::start`] does; nothing is written to them
    /// before [`Shipper::apply`]. The other settings of `cfg` (spool, AWS,
    /// files) are taken as they are: a reload does not change them.
    pub async fn prepare(&self, cfg: &ShipConfig) -> Result<Reconfig> {
        let outputs: Vec<String> = cfg.outputs.iter().map(|o| o.to_string()).collect();
        let spooled_names: Vec<&String> =
            cfg.outputs.iter().zip(&outputs).filter(|(o, _)| o.spooled()).map(|(_, n)| n).collect();
        let mut dedup = spooled_names.clone();
        dedup.sort();
        dedup.dedup();
        if dedup.len() != spooled_names.len() {
            let names: Vec<&str> = spooled_names.iter().map(|n| n.as_str()).collect();
            anyhow::bail!("the same output is given twice: {}", names.join(", "));
        }
        if let Some(r) = self.retiring.iter().find(|t| spooled_names.contains(&&t.name)) {
            anyhow::bail!(
                "output {} was removed by an earlier reload and is still delivering what it had accepted; add it \
                 again once it is done",
                r.name
            );
        }
        let new: Vec<(&Output, &String)> = cfg.outputs.iter().zip(&outputs).filter(|(_, n)| !self.runs(n)).collect();
        let mut direct = Vec::new();
        for (o, n) in new.iter().filter(|(o, _)| !o.spooled()) {
            direct.push(((*n).clone(), o.open()?));
        }
        let spooled: Vec<(&Output, &String)> = new.into_iter().filter(|(o, _)| o.spooled()).collect();
        if spooled.is_empty() {
            return Ok(Reconfig { outputs, direct, spooled: Vec::new(), spool: NewSpool::Running });
        }
        let needs_aws = spooled.iter().any(|(o, _)| o.aws().is_some_and(|a| a.region.is_none()));
        let sdk = if needs_aws { Some(aws::sdk_config(&cfg.aws).await?) } else { None };
        let known_region = sdk.as_ref().and_then(|c| c.region().map(|r| r.to_string())).or_else(|| cfg.aws.region.clone()).or_else(|| std::env::var("AWS_REGION").ok());
        // One SDK configuration per distinct set of output options.
        let mut sdks: Vec<(aws::OutputAws, aws_config::SdkConfig)> = Vec::new();
        for (o, _) in &spooled {
            if let Some(a) = o.aws() {
                if !sdks.iter().any(|(k, _)| k == a) {
                    let c = aws::output_sdk_config(&cfg.aws, a).await.with_context(|| format!("output {o}"))?;
                    sdks.push((a.clone(), c));
                }
            }
        }
        let cxs: Vec<StartContext> = spooled
            .iter()
            .map(|(o, name)| StartContext {
                name,
                account_id: &cfg.account_id,
                flow_log_id: &cfg.flow_log_id,
                aws: &cfg.aws,
                known_region: known_region.as_deref(),
                sdk: o.aws().map(|a| sdks.iter().find(|(k, _)| k == a).map(|(_, c)| c).expect("loaded above")),
                objects: &cfg.objects,
                retry: cfg.retry,
                stats: Arc::new(ShipStats::default()),
            })
            .collect();
        for ((o, _), cx) in spooled.iter().zip(&cxs) {
            o.validate(cx)?;
        }
        let mut dests = Vec::new();
        for ((o, _), cx) in spooled.iter().zip(cxs) {
            let stats = cx.stats.clone();
            dests.push((o.start(cx).await?, stats));
        }
        // At start the spool is opened with the outputs' cursors (each goes
        // on where it was); outputs a reload adds start at its end.
        let spool = if self.spool.is_some() {
            NewSpool::Running
        } else if self.running() {
            Spool::open(&cfg.spool_dir, cfg.spool_max_bytes, &[])?;
            NewSpool::At(cfg.spool_dir.clone(), cfg.spool_max_bytes)
        } else {
            let names: Vec<String> = spooled.iter().map(|(_, n)| (*n).clone()).collect();
            NewSpool::Open(Spool::open(&cfg.spool_dir, cfg.spool_max_bytes, &names)?)
        };
        Ok(Reconfig { outputs, direct, spooled: dests, spool })
    }

    /// Whether the output of that name runs (removed ones do not).
    fn runs(&self, name: &str) -> bool {
        self.direct_names.iter().any(|n| n == name) || self.tasks.iter().any(|t| t.name == name)
    }

    /// Whether any output runs (false only while [`Shipper::start`] runs).
    fn running(&self) -> bool {
        !self.direct.is_empty() || !self.tasks.is_empty()
    }

    /// Switches to the outputs of `r`, between two windows: a removed direct
    /// output is closed (it has every window so far), a removed spooled one
    /// delivers everything spooled up to now, then ends; an added one gets
    /// the windows from the next one on.
    pub fn apply(&mut self, r: Reconfig) -> Applied {
        self.reap();
        let mut applied = Applied::default();
        let (keep, gone): (Vec<_>, Vec<_>) =
            self.direct_names.drain(..).zip(self.direct.drain(..)).partition(|(n, _)| r.outputs.contains(n));
        for (n, _) in gone {
            info!(output = %n, "output removed by the reload: closed after the last window");
            applied.removed.push(n);
        }
        (self.direct_names, self.direct) = keep.into_iter().unzip();
        let end = self.spool.as_ref().map(Spool::end);
        let (gone, stay): (Vec<Task>, Vec<Task>) =
            std::mem::take(&mut self.tasks).into_iter().partition(|t| !r.outputs.contains(&t.name));
        self.tasks = stay;
        for t in gone {
            let end = end.expect("spooled outputs have a spool");
            let pending = self.spool.as_ref().and_then(|s| s.pending_records(&t.name).ok()).unwrap_or(0);
            let what = "output removed by the reload: delivering what it had accepted, then closing";
            info!(output = %t.name, records = pending, "{what}");
            let _ = t.retire.send(Some(end));
            applied.removed.push(t.name.clone());
            self.retiring.push(t);
        }
        let spooled = r.spooled.iter().map(|(d, _)| d.name().to_string());
        let added: Vec<String> = r.direct.iter().map(|(n, _)| n.clone()).chain(spooled).collect();
        if let Err(e) = self.install(r) {
            error!("outputs added by the reload could not start: {e:#}");
        }
        applied.added = added.into_iter().filter(|n| self.runs(n)).collect();
        for n in &applied.added {
            info!(output = %n, "output added by the reload: writing from this window on");
        }
        applied
    }

    /// Adds the outputs `r` opened. A spooled one's cursor starts at the
    /// spool's end, but at start (the spool opened with their cursors).
    fn install(&mut self, r: Reconfig) -> Result<()> {
        let Reconfig { outputs, direct, spooled, spool } = r;
        let at_end = !matches!(spool, NewSpool::Open(_));
        for (n, s) in direct {
            self.direct_names.push(n);
            self.direct.push(s);
        }
        // The order of the configuration (the output order of each window).
        let mut order: Vec<(String, Box<dyn Sink>)> = self.direct_names.drain(..).zip(self.direct.drain(..)).collect();
        order.sort_by_key(|(n, _)| outputs.iter().position(|o| o == n));
        (self.direct_names, self.direct) = order.into_iter().unzip();
        match spool {
            NewSpool::Running => {}
            NewSpool::Open(sp) => {
                for (d, _) in &spooled {
                    let p = sp.pending_records(d.name())?;
                    if p > 0 {
                        info!(destination = %d.name(), records = p, "spool: delivering records left from before");
                    }
                }
                self.spool = Some(sp);
            }
            NewSpool::At(dir, max_bytes) => self.spool = Some(Spool::open(&dir, max_bytes, &[])?),
        }
        for (d, stats) in spooled {
            let name = d.name().to_string();
            let spool = self.spool.clone().expect("opened for spooled outputs");
            if at_end {
                spool.add_destination(&name, spool.end()).with_context(|| format!("output {name}"))?;
            }
            self.stats.retain(|(n, _)| n != &name);
            self.stats.push((name.clone(), stats));
            let (retire, retire_rx) = watch::channel(None);
            let handle = tokio::spawn(drive(d, spool, Stop(self.stop_tx.subscribe()), retire_rx, self.flush_interval));
            self.tasks.push(Task { name, handle, retire });
        }
        Ok(())
    }

    pub fn spool(&self) -> Option<&Spool> {
        self.spool.as_ref()
    }

    pub fn describe(&self) -> String {
        let spooled = self.tasks.iter().map(|t| t.name.clone());
        self.direct.iter().map(|s| s.describe()).chain(spooled).collect::<Vec<_>>().join(",")
    }

    /// Forgets the removed outputs that delivered everything they had.
    pub fn reap(&mut self) {
        let done: Vec<String> =
            self.retiring.iter().filter(|t| t.handle.is_finished()).map(|t| t.name.clone()).collect();
        self.retiring.retain(|t| !done.contains(&t.name));
        self.stats.retain(|(n, _)| !done.contains(n));
    }

    /// Hands a window's records to every output (see [`Shipper::window`]).
    pub fn send(&mut self, format: &Format, records: &[FlowRecord]) -> Vec<(String, bool)> {
        let mut w = self.window(format);
        for r in records {
            w.push(r);
        }
        w.finish()
    }

    /// Formats a window's records and hands them to every output: a large
    /// window on every core, a range each, and written out a piece at a
    /// time (its whole text is never held). Returns what
    /// [`WindowWriter::finish`] returns and the records' counts.
    pub fn write_window(&mut self, format: &Format, records: &WindowRecords) -> (Vec<(String, bool)>, RecordCounts) {
        self.write_window_in(format, records, WINDOW_PIECE)
    }

    /// [`Shipper::write_window`] in pieces of `piece` records (tests).
    pub(crate) fn write_window_in(&mut self, format: &Format, records: &WindowRecords, piece: usize) -> (Vec<(String, bool)>, RecordCounts) {
        let mut counts = RecordCounts::default();
        let mut window = self.window(format);
        let threads = records.threads();
        for piece in records.pieces(piece) {
            let mut parts: Vec<_> = window.parts(threads).into_iter().map(|p| (p, RecordCounts::default())).collect();
            records.write_parallel_in(piece, &mut parts, |(part, counts), r| {
                counts.add(r);
                part.push(r);
            });
            for (part, c) in parts {
                counts.merge(&c);
                window.append([part]);
            }
            window.flush();
        }
        (window.finish(), counts)
    }

    /// Starts handing a window's records to every output, one at a time,
    /// so that a window is held as text, never as a `Vec<FlowRecord>`.
    /// Each record is formatted once, whatever the number of outputs.
    pub fn window<'a>(&'a mut self, format: &'a Format) -> WindowWriter<'a> {
        let failed = self.direct.iter().map(|_| None).collect();
        WindowWriter { shipper: self, format, parts: Vec::new(), spooled: Spooled::default(), records: 0, failed }
    }

    /// Appends a window's encoded records to the spool (spooled outputs only).
    fn send_encoded(&mut self, header: &str, records: usize, sp: &Spooled) -> bool {
        if let Some(spool) = &self.spool {
            let encoded: Vec<&[u8]> = sp.encoded.iter().map(|b| &b[..]).collect();
            if let Err(e) = spool.append_encoded(header, records, &encoded, sp.oldest_end) {
                error!(records, "records of this window could not be spooled and are lost: {e:#}");
                return false;
            }
        }
        true
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
        for t in self.tasks.into_iter().chain(self.retiring) {
            match tokio::time::timeout_at(deadline + Duration::from_secs(1), t.handle).await {
                Ok(_) => {}
                Err(_) => warn!(destination = %t.name, "did not finish before the shutdown deadline"),
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
///
/// `retire` (a reload removed the output): deliver everything before that
/// position at once (partial files too), then leave the spool and end.
async fn drive(
    mut dest: Box<dyn Destination>,
    spool: Spool,
    mut stop: Stop,
    mut retire: watch::Receiver<Option<Pos>>,
    flush_interval: Duration,
) {
    let name = dest.name().to_string();
    let mut reader = spool.reader(&name);
    let mut pending: Vec<Batch> = Vec::new();
    let mut pending_end = reader.pos();
    let mut pending_bytes = 0usize;
    let mut first_at: Option<Instant> = None;
    loop {
        let until = *retire.borrow_and_update();
        while pending_bytes < dest.max_pending_bytes() && until.is_none_or(|e| reader.pos() < e) {
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
        let now = stopping || until.is_some();
        let due = !pending.is_empty()
            && (now || pending_bytes >= dest.max_pending_bytes() || flush_at.is_some_and(|t| t <= Instant::now()));
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
                Err(retry::Interrupted) => {
                    warn!(destination = %name, records = pending.iter().map(|b| b.records.len()).sum::<usize>(), "shutdown deadline passed; records stay in the spool");
                    return;
                }
            }
            continue;
        }
        if until.is_some_and(|e| pending.is_empty() && reader.pos() >= e) {
            match spool.remove_destination(&name) {
                Ok(()) => info!(destination = %name, "removed output: all it had accepted is delivered; closed"),
                Err(e) => {
                    error!(destination = %name, "removed output delivered all, but its spool cursor stays: {e:#}")
                }
            }
            return;
        }
        if stopping && pending.is_empty() {
            return;
        }
        let wake = flush_at.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = reader.changed() => {}
            _ = tokio::time::sleep_until(wake) => {}
            _ = stop.changed() => {}
            Ok(()) = retire.changed() => {}
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::{
        batch::FileFormat, cloudwatch::CloudWatchOutput, dir::DirOutput, file::FileOutput, firehose::FirehoseOutput, object::LayoutOptions, s3::S3Output, *,
    };

    #[test]
    fn parses_outputs() {
        assert_eq!("stdout".parse::<Output>(), Ok(Output::stdout()));
        assert_eq!("file:/tmp/x.log".parse::<Output>().unwrap().spec(), Some(&FileOutput { path: "/tmp/x.log".into(), mode: None }));
        assert!("bogus".parse::<Output>().unwrap_err().starts_with("invalid output \"bogus\": expected `stdout`, `file:<path>[?mode=<octal>]`"));
        assert!("file:".parse::<Output>().is_err());
        let o = "s3://my-bucket/a/b/?format=parquet&hive".parse::<Output>().unwrap();
        assert_eq!(o.spec(), Some(&S3Output { bucket: "my-bucket".into(), prefix: "a/b".into(), opts: LayoutOptions { format: FileFormat::Parquet, hive: true, per_hour: false }, aws: Default::default() }));
        assert_eq!(o.to_string(), "s3://my-bucket/a/b?format=parquet&hive");
        assert_eq!("s3://b3t".parse::<Output>().unwrap().spec(), Some(&S3Output { bucket: "b3t".into(), prefix: "".into(), opts: LayoutOptions::default(), aws: Default::default() }));
        assert!("s3://Bad_Bucket".parse::<Output>().unwrap_err().contains("not a valid S3 bucket name"));
        assert!("s3://bucket/AWSLogs".parse::<Output>().unwrap_err().contains("reserved"));
        assert!("s3://bucket?format=csv".parse::<Output>().unwrap_err().contains("format=\"csv\""));
        assert_eq!(
            "dir:/var/log/flows?per-hour".parse::<Output>().unwrap().spec(),
            Some(&DirOutput { path: "/var/log/flows".into(), opts: LayoutOptions { per_hour: true, ..Default::default() }, mode: None })
        );
        assert_eq!("cloudwatch:/vpc/flows?retention=7".parse::<Output>().unwrap().spec(), Some(&CloudWatchOutput { group: "/vpc/flows".into(), retention_days: Some(7), class: None, aws: Default::default() }));
        assert!("cloudwatch:a b".parse::<Output>().is_err());
        assert!("cloudwatch:g?retention=x".parse::<Output>().is_err());
        assert_eq!("firehose:fh-1".parse::<Output>().unwrap().spec(), Some(&FirehoseOutput { stream: "fh-1".into(), aws: Default::default() }));
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

    /// The error on an output no kind takes lists every kind's syntax.
    #[test]
    fn unknown_output_lists_the_syntax() {
        assert_eq!(
            "s3".parse::<Output>().unwrap_err(),
            "invalid output \"s3\": expected `stdout`, `file:<path>[?mode=<octal>]`, `dir:<path>[?options]` (also mode=<octal>), `s3://<bucket>[/<prefix>][?options]` \
(options: format=text|parquet, hive, per-hour, joined with &), `cloudwatch:<log-group>[?retention=<days>&class=standard|infrequent-access]` or `firehose:<delivery-stream>`; the AWS ones also take region=<region>, endpoint=<url> and role-arn=<arn>"
        );
    }

    /// A shipper with a `file:` and a spooled `dir:` output under a fresh
    /// temporary directory: (the directory, the file, the shipper).
    pub(crate) async fn file_and_dir(name: &str) -> (PathBuf, PathBuf, Shipper) {
        let dir = std::env::temp_dir().join(format!("flowlog-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (file, objects) = (dir.join("flows.log"), dir.join("objects"));
        let cfg = ShipConfig {
            outputs: vec![format!("file:{}", file.display()).parse().unwrap(), format!("dir:{}", objects.display()).parse().unwrap()],
            spool_dir: dir.join("spool"),
            flush_interval: Duration::from_secs(3600),
            ..ShipConfig::default()
        };
        (dir, file, Shipper::start(&cfg).await.unwrap())
    }

    /// A window formatted in parts (one of them empty), appended in order,
    /// writes what the window sent whole writes: the same bytes to a direct
    /// output, the same batch to the spool.
    #[tokio::test]
    async fn a_window_in_parts_ships_as_one() {
        use flowlog_records::record::LogStatus;
        let (dir, file, mut sh) = file_and_dir("parts").await;
        let format = Format::default();
        let records: Vec<FlowRecord> = (0..30u64)
            .map(|i| {
                let status = if i % 10 == 9 { LogStatus::NoData } else { LogStatus::Ok };
                let mut r = FlowRecord::status_only("123456789012".into(), format!("eni-{}", i / 10).into(), 100 + i, 160, status);
                r.packets = (status == LogStatus::Ok).then_some(i);
                r
            })
            .collect();
        assert_eq!(sh.send(&format, &records), [(format!("file:{}", file.display()), true), ("spool".to_string(), true)]);
        let whole = std::fs::read(&file).unwrap();
        let mut w = sh.window(&format);
        let mut parts = w.parts(4);
        for (part, range) in parts.iter_mut().zip([0..7, 7..7, 7..19, 19..30]) {
            records[range].iter().for_each(|r| part.push(r));
        }
        w.append(parts);
        assert_eq!(w.finish(), [(format!("file:{}", file.display()), true), ("spool".to_string(), true)]);
        assert_eq!(std::fs::read(&file).unwrap(), [&whole[..], &whole[..]].concat());
        // Written out a piece at a time (`flush`), as `write_window` does.
        let mut w = sh.window(&format);
        for range in [0..7, 7..7, 7..19, 19..30] {
            let mut parts = w.parts(2);
            let mid = (range.start + range.end) / 2;
            records[range.start..mid].iter().for_each(|r| parts[0].push(r));
            records[mid..range.end].iter().for_each(|r| parts[1].push(r));
            w.append(parts);
            w.flush();
            // Out at once: the window's lines so far follow the two windows.
            let so_far: Vec<u8> = whole.split_inclusive(|b| *b == b'\n').take(range.end).flatten().copied().collect();
            assert_eq!(std::fs::read(&file).unwrap(), [&whole[..], &whole[..], &so_far[..]].concat());
        }
        assert_eq!(w.finish(), [(format!("file:{}", file.display()), true), ("spool".to_string(), true)]);
        assert_eq!(std::fs::read(&file).unwrap(), [&whole[..], &whole[..], &whole[..]].concat());
        let mut spooled = sh.spool().unwrap().reader(&sh.stats[0].0);
        let (first, _) = spooled.next_batch().unwrap().unwrap();
        let (second, _) = spooled.next_batch().unwrap().unwrap();
        let (third, _) = spooled.next_batch().unwrap().unwrap();
        assert_eq!(first.records.len(), 30);
        assert_eq!(second, first);
        assert_eq!(third, first);
        sh.shutdown().await;
        std::fs::remove_dir_all(&dir).unwrap();
    }

}
