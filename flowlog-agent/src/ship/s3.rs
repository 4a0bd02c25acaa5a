//! S3 destination and its local-directory twin: objects in the AWS key
//! layout, one per 5-minute bucket of `end` (more when rotated by size),
//! gzip text with a header line or Parquet. Objects larger than the
//! multipart threshold go up in parts.

use std::{
    path::PathBuf,
    sync::{atomic::Ordering, Arc},
};

use anyhow::{Context, Result};
use aws_sdk_s3::{
    primitives::ByteStream,
    types::{CompletedMultipartUpload, CompletedPart},
    Client,
};
use tracing::{debug, error, info};

use super::{
    aws::{classify, retry, startup_check, Failure, Interrupted, RetryPolicy},
    batch::{group_files, Layout},
    parquet::{encode, hash8},
    spool::Batch,
    destination::{BoxFut, Destination, ShipStats},
    stop::Stop,
};

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

pub struct S3Dest {
    pub name: String,
    pub client: Client,
    pub bucket: String,
    pub layout: Layout,
    pub opts: ObjectOptions,
    pub retry: RetryPolicy,
    pub stats: Arc<ShipStats>,
}

impl S3Dest {
    /// Startup check: the bucket exists and we may use it.
    pub async fn check(&self) -> Result<()> {
        match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(_) => Ok(()),
            Err(e) => match classify(&e) {
                Failure::NotFound(_) => anyhow::bail!("{}: bucket {:?} does not exist (create it, or fix the bucket name)", self.name, self.bucket),
                f => startup_check(&self.name, f),
            },
        }
    }

    async fn put(&self, key: &str, body: &[u8]) -> Result<(), Failure> {
        if body.len() < self.opts.multipart_threshold {
            return self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .content_type(if key.ends_with(".gz") { "application/gzip" } else { "application/octet-stream" })
                .body(ByteStream::from(body.to_vec()))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| classify(&e));
        }
        let up = self.client.create_multipart_upload().bucket(&self.bucket).key(key).send().await.map_err(|e| classify(&e))?;
        let id = up.upload_id().unwrap_or_default().to_string();
        let r = self.put_parts(key, &id, body).await;
        if r.is_err() {
            let _ = self.client.abort_multipart_upload().bucket(&self.bucket).key(key).upload_id(&id).send().await;
        }
        r
    }

    async fn put_parts(&self, key: &str, id: &str, body: &[u8]) -> Result<(), Failure> {
        let mut parts = Vec::new();
        for (i, chunk) in body.chunks(self.opts.part_size.max(1)).enumerate() {
            let n = i as i32 + 1;
            let r = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(id)
                .part_number(n)
                .body(ByteStream::from(chunk.to_vec()))
                .send()
                .await
                .map_err(|e| classify(&e))?;
            parts.push(CompletedPart::builder().part_number(n).set_e_tag(r.e_tag().map(str::to_string)).build());
        }
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .send()
            .await
            .map(|_| ())
            .map_err(|e| classify(&e))
    }
}

impl Destination for S3Dest {
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
            let objects = match build_objects(&self.layout, batches, self.opts.rotate_bytes) {
                Ok(o) => o,
                Err(e) => {
                    let n: usize = batches.iter().map(|b| b.records.len()).sum();
                    self.stats.rejected.fetch_add(n as u64, Ordering::Relaxed);
                    error!(destination = %self.name, records = n, "cannot encode records: {e:#}; they are dropped (counted in flowlog_records_rejected)");
                    return Ok(());
                }
            };
            for (key, body) in &objects {
                let multipart = body.len() >= self.opts.multipart_threshold;
                retry(&self.name, "PutObject", &self.retry, &self.stats, stop, |_| self.put(key, body)).await?;
                self.stats.objects.fetch_add(1, Ordering::Relaxed);
                debug!(destination = %self.name, key, bytes = body.len(), multipart, "object uploaded");
            }
            let n: usize = batches.iter().map(|b| b.records.len()).sum();
            self.stats.delivered.fetch_add(n as u64, Ordering::Relaxed);
            info!(destination = %self.name, objects = objects.len(), records = n, "uploaded");
            Ok::<(), Interrupted>(())
        })
    }
}

/// The S3 layout in a local directory. Files are written to a temporary
/// name and renamed, so a reader never sees half a file.
pub struct DirDest {
    pub name: String,
    pub root: PathBuf,
    pub layout: Layout,
    pub opts: ObjectOptions,
    pub retry: RetryPolicy,
    pub stats: Arc<ShipStats>,
}

impl DirDest {
    pub fn check(&self) -> Result<()> {
        std::fs::create_dir_all(&self.root).with_context(|| format!("{}: cannot create {}", self.name, self.root.display()))?;
        let probe = self.root.join(".flowlog-probe");
        std::fs::write(&probe, b"").with_context(|| format!("{}: {} is not writable", self.name, self.root.display()))?;
        let _ = std::fs::remove_file(probe);
        Ok(())
    }

    fn write(&self, key: &str, body: &[u8]) -> Result<(), Failure> {
        let path = self.root.join(key);
        let dir = path.parent().expect("keys have folders");
        let tmp = dir.join(format!(".{}.tmp", path.file_name().unwrap().to_string_lossy()));
        std::fs::create_dir_all(dir)
            .and_then(|_| std::fs::write(&tmp, body))
            .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| Failure::Other(format!("writing {}: {e}", path.display())))
    }
}

impl Destination for DirDest {
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
            let objects = match build_objects(&self.layout, batches, self.opts.rotate_bytes) {
                Ok(o) => o,
                Err(e) => {
                    let n: usize = batches.iter().map(|b| b.records.len()).sum();
                    self.stats.rejected.fetch_add(n as u64, Ordering::Relaxed);
                    error!(destination = %self.name, records = n, "cannot encode records: {e:#}; they are dropped (counted in flowlog_records_rejected)");
                    return Ok(());
                }
            };
            for (key, body) in &objects {
                retry(&self.name, "write", &self.retry, &self.stats, stop, |_| std::future::ready(self.write(key, body))).await?;
                self.stats.objects.fetch_add(1, Ordering::Relaxed);
            }
            let n: usize = batches.iter().map(|b| b.records.len()).sum();
            self.stats.delivered.fetch_add(n as u64, Ordering::Relaxed);
            debug!(destination = %self.name, files = objects.len(), records = n, "written");
            Ok::<(), Interrupted>(())
        })
    }
}
