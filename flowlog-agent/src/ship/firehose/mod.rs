//! `firehose:<delivery-stream>`, the Kinesis Data Firehose destination: `PutRecordBatch` of
//! `{"message":"<record>"}` records within its limits (500 records and
//! 4 MiB per call, 1,000 KiB per record); after a partial failure only the
//! failed records are sent again.

use std::{
    fmt,
    sync::{atomic::Ordering, Arc},
};

use anyhow::Result;
use aws_sdk_firehose::{primitives::Blob, types::Record, Client};
use tokio::sync::Mutex;
use tracing::{debug, warn};

use super::{
    batch::{fh_payload, fh_split},
    prelude::*,
};

pub const REGISTRATION: Registration = Registration { syntax: "`firehose:<delivery-stream>`", parse: |s| parse_aws_scheme(s, "firehose:", FirehoseOutput::parse) };

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirehoseOutput {
    pub stream: String,
    pub aws: OutputAws,
}

impl FirehoseOutput {
    fn parse(s: &str, st: &str, aws: OutputAws, q: Option<&str>) -> Result<FirehoseOutput, String> {
        if let Some(q) = q {
            return Err(format!("invalid output {s:?}: unknown option {q:?} (region, endpoint, role-arn)"));
        }
        if st.is_empty() || st.len() > 64 || !st.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
            return Err(format!("invalid output {s:?}: delivery stream names are 1-64 characters of a-z A-Z 0-9 . _ -"));
        }
        Ok(FirehoseOutput { stream: st.into(), aws })
    }
}

impl fmt::Display for FirehoseOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "firehose:{}{}", self.stream, query(self.aws.query()))
    }
}

impl OutputSpec for FirehoseOutput {
    fn aws(&self) -> Option<&OutputAws> {
        Some(&self.aws)
    }
    fn start<'a>(&'a self, cx: StartContext<'a>) -> StartFut<'a> {
        let client = Client::new(cx.sdk());
        let d = FirehoseDest { name: cx.name.to_string(), client, stream: self.stream.clone(), retry: cx.retry, stats: cx.stats };
        d.checked()
    }
}

impl StartupCheck for FirehoseDest {
    fn startup_check(&self) -> impl std::future::Future<Output = Result<()>> + Send {
        self.check()
    }
}

pub struct FirehoseDest {
    pub name: String,
    pub client: Client,
    pub stream: String,
    pub retry: RetryPolicy,
    pub stats: Arc<ShipStats>,
}

impl FirehoseDest {
    pub async fn check(&self) -> Result<()> {
        match self.client.describe_delivery_stream().delivery_stream_name(&self.stream).send().await {
            Ok(_) => Ok(()),
            // The service answered 2xx with a description this SDK cannot
            // parse (e.g. a field it requires is missing): the stream exists.
            Err(aws_sdk_firehose::error::SdkError::ResponseError(r)) if r.raw().status().is_success() => Ok(()),
            Err(e) => match classify(&e) {
                Failure::NotFound(_) => anyhow::bail!("{}: delivery stream {:?} does not exist", self.name, self.stream),
                f => startup_check(&self.name, f),
            },
        }
    }

    /// Sends what is left in `pending`; keeps only the failed records there.
    async fn put(&self, pending: &Mutex<Vec<Vec<u8>>>) -> Result<(), Failure> {
        let mut p = pending.lock().await;
        let records: Vec<Record> = p.iter().map(|d| Record::builder().data(Blob::new(d.clone())).build().expect("data set")).collect();
        let r = self.client.put_record_batch().delivery_stream_name(&self.stream).set_records(Some(records)).send().await.map_err(|e| classify(&e))?;
        if r.failed_put_count() == 0 {
            p.clear();
            return Ok(());
        }
        let resp = r.request_responses();
        let mut failed = Vec::new();
        let mut codes = Vec::new();
        for (i, d) in p.drain(..).enumerate() {
            match resp.get(i) {
                Some(rr) if rr.error_code().is_none() && rr.record_id().is_some() => {}
                Some(rr) => {
                    codes.push(rr.error_code().unwrap_or("?").to_string());
                    failed.push(d);
                }
                None => failed.push(d),
            }
        }
        codes.dedup();
        let n = failed.len();
        *p = failed;
        self.stats.partial_retries.fetch_add(n as u64, Ordering::Relaxed);
        Err(Failure::Transient(format!("PutRecordBatch: {n} records failed ({}); sending them again", codes.join(", "))))
    }
}

impl Destination for FirehoseDest {
    fn name(&self) -> &str {
        &self.name
    }
    fn deliver<'a>(&'a mut self, batches: &'a [Batch], stop: &'a Stop) -> BoxFut<'a> {
        Box::pin(async move {
            let payloads: Vec<Vec<u8>> = batches.iter().flat_map(|b| b.records.iter()).map(|r| fh_payload(&r.line)).collect();
            let (calls, too_big) = fh_split(payloads);
            if !too_big.is_empty() {
                self.stats.rejected.fetch_add(too_big.len() as u64, Ordering::Relaxed);
                warn!(destination = %self.name, records = too_big.len(), "records over Firehose's 1,000 KiB limit cannot be sent; dropped");
            }
            for call in calls {
                let n = call.len() as u64;
                let pending = Mutex::new(call);
                retry(&self.name, "PutRecordBatch", &self.retry, &*self.stats, stop, |_| self.put(&pending)).await?;
                self.stats.delivered.fetch_add(n, Ordering::Relaxed);
                debug!(destination = %self.name, records = n, "PutRecordBatch");
            }
            Ok::<(), Interrupted>(())
        })
    }
}
