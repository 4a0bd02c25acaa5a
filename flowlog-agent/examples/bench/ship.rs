//! Benchmark 5: records/s shipped to S3, CloudWatch Logs and Firehose on a
//! local AWS-compatible server (moto), with the real SDK clients and the
//! agent's shipping code (`Shipper`: spool, batching, per-destination tasks).
//!
//! Method: per destination, a fresh `Shipper` with only that output; the
//! records go in as windows of `WINDOW` records (`Shipper::send`, what the
//! agent calls once per window), and the clock stops when the destination's
//! task reports every record acknowledged by the service. Then the service
//! is read back and must hold exactly the records sent (S3 objects gunzipped,
//! CloudWatch events per stream, the objects Firehose wrote): a rate without
//! that check would not count.
//!
//! moto is a Python server on loopback, on the same CPUs as the agent, so
//! these figures measure the agent and moto together; against AWS the
//! limits are the services' quotas and the network, not the agent (see
//! BENCHMARKS.md).

use std::{
    io::Read,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context, Result};
use flowlog_records::{
    format::Format,
    record::{Action, FlowRecord, LogStatus},
};
use flowlog_agent::ship::{
        aws::{AwsSettings, RetryPolicy},
        s3::ObjectOptions,
        ShipConfig, ShipStats, Shipper,
    };

use crate::kernel::thousands;

/// Records per destination and per window.
const RECORDS: usize = 200_000;
const WINDOW: usize = 20_000;
const IFACES: usize = 8;
const ACCOUNT: &str = "123456789012";
const BUCKET: &str = "flowlog-bench";
const FH_STREAM: &str = "flowlog-bench";
const FH_BUCKET: &str = "flowlog-bench-firehose";
const LOG_GROUP: &str = "flowlog-bench";
/// As installed by `cargo xtask setup` (xtask/src/main.rs).
const MOTO_VERSION: &str = "5.2.5";

pub struct Row {
    pub destination: &'static str,
    pub records: usize,
    /// Formatted text of the records (without terminators).
    pub bytes: usize,
    pub secs: f64,
    pub calls: u64,
    pub objects: u64,
}

/// moto, killed when dropped (and with us: PR_SET_PDEATHSIG).
struct Moto {
    child: Child,
    url: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The venv `cargo xtask setup` installs moto into.
fn moto_python() -> PathBuf {
    std::env::var_os("FLOWLOG_MOTO_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-tools/moto/bin/python"))
}

fn start_moto() -> Result<Moto> {
    let py = moto_python();
    ensure!(py.exists(), "no moto at {} (`cargo xtask setup` installs it)", py.display());
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut cmd = Command::new(&py);
    cmd.args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()]).stdout(Stdio::null()).stderr(Stdio::null());
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let child = cmd.spawn().with_context(|| format!("starting {} -m moto.server", py.display()))?;
    let moto = Moto { child, url: format!("http://127.0.0.1:{port}") };
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        ensure!(t.elapsed() < Duration::from_secs(60), "moto did not start on port {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(moto)
}

/// Dummy credentials and region for the SDK's default chain; no instance
/// metadata lookups (nothing leaves the machine).
fn test_credentials() {
    for (k, v) in [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_SESSION_TOKEN", "testing"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_CONFIG_FILE", "/nonexistent"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent"),
    ] {
        std::env::set_var(k, v);
    }
    std::env::remove_var("AWS_PROFILE");
}

/// Version 2 records over `IFACES` interfaces, one-minute windows.
fn records(t0: u64) -> Vec<FlowRecord> {
    (0..RECORDS)
        .map(|i| {
            let w = t0 + 60 * (i / WINDOW) as u64;
            FlowRecord {
                srcaddr: Some(format!("10.{}.{}.{}", i / 62_500, (i / 250) % 250, i % 250 + 1).parse().unwrap()),
                dstaddr: Some("10.1.0.1".parse().unwrap()),
                srcport: Some(1024u16.wrapping_add(i as u16)),
                dstport: Some(443),
                protocol: Some(6),
                packets: Some(i as u64 + 1),
                bytes: Some(100 * (i as u64 + 1)),
                action: Some(Action::Accept),
                ..FlowRecord::status_only(ACCOUNT.into(), format!("eni-{:017x}", i % IFACES).into(), w + (i as u64 % 7), w + 59, LogStatus::Ok)
            }
        })
        .collect()
}

async fn sdk(endpoint: &str) -> aws_config::SdkConfig {
    flowlog_agent::ship::aws::sdk_config(&AwsSettings { region: Some("us-east-1".into()), endpoint_url: Some(endpoint.into()) })
        .await
        .expect("SDK configuration")
}

async fn s3_client(endpoint: &str) -> aws_sdk_s3::Client {
    let c = sdk(endpoint).await;
    aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(&c).force_path_style(true).build())
}

/// Bodies of every object under `prefix`.
async fn objects(c: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let mut pages = c.list_objects_v2().bucket(bucket).prefix(prefix).into_paginator().send();
    while let Some(page) = pages.next().await {
        for o in page?.contents() {
            let key = o.key().ok_or_else(|| anyhow!("object without key"))?;
            let body = c.get_object().bucket(bucket).key(key).send().await?.body.collect().await?.into_bytes();
            out.push(body.to_vec());
        }
    }
    Ok(out)
}

/// What the destination holds, as text lines.
async fn read_back(destination: &str, endpoint: &str) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    match destination {
        "S3" => {
            for body in objects(&s3_client(endpoint).await, BUCKET, "").await? {
                let mut text = String::new();
                flate2::read::GzDecoder::new(&body[..]).read_to_string(&mut text)?;
                // The first line of every file is the header.
                lines.extend(text.lines().skip(1).map(str::to_string));
            }
        }
        "CloudWatch Logs" => {
            let c = aws_sdk_cloudwatchlogs::Client::new(&sdk(endpoint).await);
            let streams = c.describe_log_streams().log_group_name(LOG_GROUP).send().await?;
            for s in streams.log_streams() {
                let name = s.log_stream_name().ok_or_else(|| anyhow!("stream without name"))?;
                let mut token: Option<String> = None;
                loop {
                    let r = c
                        .get_log_events()
                        .log_group_name(LOG_GROUP)
                        .log_stream_name(name)
                        .start_from_head(true)
                        .set_next_token(token.clone())
                        .send()
                        .await?;
                    if r.events().is_empty() {
                        break;
                    }
                    lines.extend(r.events().iter().filter_map(|e| e.message().map(str::to_string)));
                    token = r.next_forward_token().map(str::to_string);
                }
            }
        }
        "Firehose" => {
            for body in objects(&s3_client(endpoint).await, FH_BUCKET, "").await? {
                for v in serde_json::Deserializer::from_slice(&body).into_iter::<serde_json::Value>() {
                    let v = v?;
                    lines.push(v["message"].as_str().ok_or_else(|| anyhow!("Firehose record without message: {v}"))?.to_string());
                }
            }
        }
        other => bail!("unknown destination {other}"),
    }
    Ok(lines)
}

async fn prepare(destination: &str, endpoint: &str) -> Result<()> {
    match destination {
        "S3" => {
            s3_client(endpoint).await.create_bucket().bucket(BUCKET).send().await?;
        }
        "Firehose" => {
            s3_client(endpoint).await.create_bucket().bucket(FH_BUCKET).send().await?;
            aws_sdk_firehose::Client::new(&sdk(endpoint).await)
                .create_delivery_stream()
                .delivery_stream_name(FH_STREAM)
                .extended_s3_destination_configuration(
                    aws_sdk_firehose::types::ExtendedS3DestinationConfiguration::builder()
                        .role_arn(format!("arn:aws:iam::{ACCOUNT}:role/firehose"))
                        .bucket_arn(format!("arn:aws:s3:::{FH_BUCKET}"))
                        .build()?,
                )
                .send()
                .await?;
        }
        // The destination creates its log group and streams.
        _ => {}
    }
    Ok(())
}

async fn one(destination: &'static str, output: &str, endpoint: &str, spool: &Path) -> Result<Row> {
    prepare(destination, endpoint).await?;
    let cfg = ShipConfig {
        outputs: vec![output.parse().map_err(|e| anyhow!("{e}"))?],
        account_id: ACCOUNT.into(),
        aws: AwsSettings { region: Some("us-east-1".into()), endpoint_url: Some(endpoint.into()) },
        flow_log_id: "fl-0123456789abcdef0".into(),
        spool_dir: spool.to_path_buf(),
        spool_max_bytes: 1 << 30,
        // S3 files close as soon as their records are spooled (AWS: every 5
        // minutes; here 75 MB of text would close one sooner): any interval
        // would be waiting, timed as if it were shipping.
        flush_interval: Duration::ZERO,
        objects: ObjectOptions::default(),
        retry: RetryPolicy { base: Duration::from_millis(50), max: Duration::from_millis(500) },
        shutdown_timeout: Duration::from_secs(10),
    };
    let t0 = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() / 60 * 60 - 3600;
    let recs = records(t0);
    let format = Format::default();
    let want: Vec<String> = recs.iter().map(|r| format.line(r)).collect();
    let bytes = want.iter().map(String::len).sum();
    let mut sh = Shipper::start(&cfg).await?;
    let stats: Arc<ShipStats> = sh.stats.first().map(|s| s.1.clone()).ok_or_else(|| anyhow!("{output} is not a spooled destination"))?;
    let started = Instant::now();
    for w in recs.chunks(WINDOW) {
        for (out, ok) in sh.send(&format, w) {
            ensure!(ok, "{out}: window not accepted");
        }
    }
    while stats.delivered.load(Ordering::Relaxed) < RECORDS as u64 {
        ensure!(started.elapsed() < Duration::from_secs(300), "{destination}: not delivered after 300 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let (calls, objects) = (stats.calls.load(Ordering::Relaxed), stats.objects.load(Ordering::Relaxed));
    ensure!(stats.rejected.load(Ordering::Relaxed) == 0, "{destination} rejected records");
    sh.shutdown().await;
    let mut got = read_back(destination, endpoint).await?;
    got.sort();
    let mut want = want;
    want.sort();
    ensure!(got == want, "{destination} holds {} records, {} were sent (or they differ)", got.len(), want.len());
    Ok(Row { destination, records: RECORDS, bytes, secs, calls, objects })
}

pub fn run() -> Result<Vec<Row>> {
    test_credentials();
    let moto = start_moto()?;
    let spool_root = std::env::temp_dir().join(format!("flowlog-bench-spool-{}", std::process::id()));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let res = rt.block_on(async {
        let mut rows = Vec::new();
        for (name, output) in [("S3", format!("s3://{BUCKET}")), ("CloudWatch Logs", format!("cloudwatch:{LOG_GROUP}")), ("Firehose", format!("firehose:{FH_STREAM}"))] {
            eprintln!("    {name}: {} records", thousands(RECORDS));
            let spool = spool_root.join(name.replace(' ', "-"));
            rows.push(one(name, &output, &moto.url, &spool).await.with_context(|| format!("shipping to {name}"))?);
        }
        Ok(rows)
    });
    let _ = std::fs::remove_dir_all(&spool_root);
    drop(moto);
    res
}

pub fn print(rows: &[Row]) {
    println!("## 5. Ship to AWS destinations on a local AWS-compatible server (moto {MOTO_VERSION})\n");
    println!(
        "{} version-2 records per destination over {IFACES} interfaces, handed over as windows of {} \
         (`Shipper::send`, as the agent does once per window); timed from the first window until the \
         destination's task reports every record acknowledged; then the service is read back and must hold \
         exactly the records sent. S3: gzip text objects, flush interval 0 here (5 minutes by \
         default), so a file closes with what was spooled when the previous upload returned and no waiting is \
         timed; CloudWatch Logs: one stream per interface, PutLogEvents batches; Firehose: PutRecordBatch. \
         moto (Python) runs on loopback on the same {} CPUs as the agent and does most of the work per record: \
         these rates are a floor set by the local server, not the agent's ceiling.\n",
        thousands(RECORDS),
        thousands(WINDOW),
        crate::util::nproc()
    );
    println!("| destination | records | text | time | records/s | requests |");
    println!("|---|---:|---:|---:|---:|---|");
    for r in rows {
        println!(
            "| {} | {} | {:.1} MB | {:.2} s | {} | {} |",
            r.destination,
            thousands(r.records),
            r.bytes as f64 / 1e6,
            r.secs,
            thousands((r.records as f64 / r.secs) as usize),
            match r.destination {
                "S3" => format!("{} objects", r.objects),
                "CloudWatch Logs" => format!("{} PutLogEvents", r.calls),
                _ => format!("{} PutRecordBatch", r.calls),
            }
        );
    }
    println!();
}
