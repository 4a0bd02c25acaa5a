//! The object delivery path that S3 and its local-directory twin share:
//! objects in the AWS key layout, one per 5-minute bucket of `end` (more
//! when rotated by size), gzip text with a header line or Parquet. Only
//! the put differs, behind [`ObjectStore`].

use std::{
    future::Future,
    sync::{atomic::Ordering, Arc},
};

use anyhow::Result;
use tracing::error;

use super::{
    batch::{group_files, FileFormat, Layout},
    destination::{BoxFut, Destination, ShipStats},
    parquet::{encode, hash8},
    retry::{retry, Failure, Interrupted, RetryPolicy},
    spool::Batch,
    stop::Stop,
};

/// Options of the S3-layout destinations (`s3://…?format=parquet&hive&per-hour`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LayoutOptions {
    pub format: FileFormat,
    pub hive: bool,
    pub per_hour: bool,
}

impl LayoutOptions {
    /// Parses the query `q` of output `s`.
    pub fn parse(s: &str, q: Option<&str>) -> Result<LayoutOptions, String> {
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

    /// The options as query parts, in a fixed order (defaults left out).
    pub fn query(&self) -> Vec<String> {
        let mut q = Vec::new();
        if self.format == FileFormat::Parquet {
            q.push("format=parquet".to_string());
        }
        if self.hive {
            q.push("hive".to_string());
        }
        if self.per_hour {
            q.push("per-hour".to_string());
        }
        q
    }

    /// The key layout of an output with these options.
    pub fn layout(&self, prefix: &str, account_id: &str, region: &str, flow_log_id: &str) -> Layout {
        Layout {
            prefix: prefix.to_string(),
            account_id: account_id.to_string(),
            region: region.to_string(),
            flow_log_id: flow_log_id.to_string(),
            hive: self.hive,
            per_hour: self.per_hour,
            format: self.format,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ObjectOptions {
    /// New file when a file's text would pass this many bytes (AWS: 75 MB).
    pub rotate_bytes: usize,
    /// Objects at least this large are uploaded in parts of `part_size`
    /// (S3: at least 5 MiB but the last).
    pub multipart_threshold: usize,
    pub part_size: usize,
}

impl Default for ObjectOptions {
    fn default() -> Self {
        ObjectOptions { rotate_bytes: 75 * 1000 * 1000, multipart_threshold: 16 << 20, part_size: 8 << 20 }
    }
}

/// Encodes the files of `batches`: (key, body) in bucket order.
pub fn build_objects(layout: &Layout, batches: &[Batch], rotate_bytes: usize) -> Result<Vec<(String, Vec<u8>)>> {
    group_files(batches, rotate_bytes)
        .iter()
        .map(|g| {
            let body = encode(g, layout.format)?;
            Ok((layout.key(g.bucket, &hash8(&body)), body))
        })
        .collect()
}

/// Where objects go: the one thing S3 and a local directory do differently.
pub trait ObjectStore: Send + Sync + 'static {
    /// The call's name in retry logs (`PutObject`, `write`).
    const CALL: &'static str;
    /// Stores one whole object under `key`; a reader never sees part of it.
    fn put(&self, key: &str, body: &[u8]) -> impl Future<Output = Result<(), Failure>> + Send;
    /// Logs one stored object (S3: at debug level; a directory: not at all).
    fn stored(&self, _dest: &str, _key: &str, _bytes: usize) {}
    /// Logs a delivered set of objects.
    fn delivered(&self, dest: &str, objects: usize, records: usize);
}

/// A destination of objects in the S3 key layout, in a [`ObjectStore`].
pub struct ObjectDest<S> {
    pub name: String,
    pub store: S,
    pub layout: Layout,
    pub opts: ObjectOptions,
    pub retry: RetryPolicy,
    pub stats: Arc<ShipStats>,
}

impl<S: ObjectStore> Destination for ObjectDest<S> {
    fn name(&self) -> &str {
        &self.name
    }
    fn batches_files(&self) -> bool {
        true
    }
    fn max_pending_bytes(&self) -> usize {
        self.opts.rotate_bytes
    }
    fn deliver<'a>(&'a mut self, batches: &'a [Batch], stop: &'a Stop) -> BoxFut<'a> {
        Box::pin(async move {
            let n: usize = batches.iter().map(|b| b.records.len()).sum();
            let objects = match build_objects(&self.layout, batches, self.opts.rotate_bytes) {
                Ok(o) => o,
                Err(e) => {
                    self.stats.rejected.fetch_add(n as u64, Ordering::Relaxed);
                    error!(destination = %self.name, records = n, "cannot encode records: {e:#}; they are dropped (counted in flowlog_records_rejected)");
                    return Ok(());
                }
            };
            for (key, body) in &objects {
                retry(&self.name, S::CALL, &self.retry, &*self.stats, stop, |_| self.store.put(key, body)).await?;
                self.stats.objects.fetch_add(1, Ordering::Relaxed);
                self.store.stored(&self.name, key, body.len());
            }
            self.stats.delivered.fetch_add(n as u64, Ordering::Relaxed);
            self.store.delivered(&self.name, objects.len(), n);
            Ok::<(), Interrupted>(())
        })
    }
}
