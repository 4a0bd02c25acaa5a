//! `s3://<bucket>[/<prefix>][?options]`: objects in the AWS key layout in
//! an S3 bucket (the object delivery path of [`super::object`]). Objects
//! larger than the multipart threshold go up in parts.

use std::{fmt, future::Future};

use anyhow::Result;
use aws_sdk_s3::{
    primitives::ByteStream,
    types::{CompletedMultipartUpload, CompletedPart},
    Client,
};
use tracing::{debug, info};

use super::{
    aws::valid_region,
    object::{LayoutOptions, ObjectDest, ObjectStore},
    prelude::*,
};
/// Still reachable here, where it was first defined.
pub use super::object::ObjectOptions;

pub const REGISTRATION: Registration = Registration {
    syntax: "`s3://<bucket>[/<prefix>][?options]` (options: format=text|parquet, hive, per-hour, joined with &)",
    parse: |s| parse_aws_scheme(s, "s3://", S3Output::parse),
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Output {
    pub bucket: String,
    /// Without leading or trailing `/`.
    pub prefix: String,
    pub opts: LayoutOptions,
    pub aws: OutputAws,
}

impl S3Output {
    fn parse(s: &str, p: &str, aws: OutputAws, q: Option<&str>) -> Result<S3Output, String> {
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
        Ok(S3Output { bucket: bucket.into(), prefix: prefix.into(), opts: LayoutOptions::parse(s, q)?, aws })
    }

    /// The region in its keys: its own, else the known one.
    fn region<'a>(&'a self, cx: &'a StartContext<'_>) -> Option<&'a str> {
        self.aws.region.as_deref().or(cx.known_region)
    }
}

impl fmt::Display for S3Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}", self.bucket)?;
        if !self.prefix.is_empty() {
            write!(f, "/{}", self.prefix)?;
        }
        write!(f, "{}", query([self.opts.query(), self.aws.query()].concat()))
    }
}

impl OutputSpec for S3Output {
    fn aws(&self) -> Option<&OutputAws> {
        Some(&self.aws)
    }
    fn validate(&self, cx: &StartContext<'_>) -> Result<()> {
        check_s3_identity(cx.name, cx.account_id, self.region(cx))
    }
    fn start<'a>(&'a self, cx: StartContext<'a>) -> StartFut<'a> {
        Box::pin(async move {
            let path_style = cx.aws.endpoint_url.is_some() || self.aws.endpoint.is_some();
            let store = S3Store {
                client: Client::from_conf(aws_sdk_s3::config::Builder::from(cx.sdk()).force_path_style(path_style).build()),
                bucket: self.bucket.clone(),
                multipart_threshold: cx.objects.multipart_threshold,
                part_size: cx.objects.part_size,
            };
            store.check(cx.name).await?;
            let layout = self.opts.layout(&self.prefix, cx.account_id, self.region(&cx).unwrap_or(cx.region()), cx.flow_log_id);
            anyhow::Ok(Box::new(ObjectDest { name: cx.name.to_string(), store, layout, opts: cx.objects.clone(), retry: cx.retry, stats: cx.stats }) as Box<dyn Destination>)
        })
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
        Some(r) if !valid_region(r) => anyhow::bail!("{output}: invalid AWS region {r:?}: expected lowercase letters, digits and dashes, such as us-east-1"),
        Some(_) => Ok(()),
    }
}

/// A bucket as an object store.
pub struct S3Store {
    pub client: Client,
    pub bucket: String,
    /// Objects at least this large are uploaded in parts of `part_size`.
    pub multipart_threshold: usize,
    pub part_size: usize,
}

impl S3Store {
    /// Startup check: the bucket exists and we may use it.
    pub async fn check(&self, name: &str) -> Result<()> {
        match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(_) => Ok(()),
            Err(e) => match classify(&e) {
                Failure::NotFound(_) => anyhow::bail!("{}: bucket {:?} does not exist (create it, or fix the bucket name)", name, self.bucket),
                f => startup_check(name, f),
            },
        }
    }

    async fn put_object(&self, key: &str, body: &[u8]) -> Result<(), Failure> {
        if body.len() < self.multipart_threshold {
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
        for (i, chunk) in body.chunks(self.part_size.max(1)).enumerate() {
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

impl ObjectStore for S3Store {
    const CALL: &'static str = "PutObject";
    fn put(&self, key: &str, body: &[u8]) -> impl Future<Output = Result<(), Failure>> + Send {
        self.put_object(key, body)
    }
    fn stored(&self, dest: &str, key: &str, bytes: usize) {
        let multipart = bytes >= self.multipart_threshold;
        debug!(destination = %dest, key, bytes, multipart, "object uploaded");
    }
    fn delivered(&self, dest: &str, objects: usize, records: usize) {
        info!(destination = %dest, objects, records, "uploaded");
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
}
