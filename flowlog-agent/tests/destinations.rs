//! Destinations against real components: a moto server started by the
//! harness (installed from PyPI when missing), the real SDK clients through
//! an endpoint override, results read back with the SDK and compared record
//! by record. No root needed.

use flowlog_testkit::{aws as harness, TmpPath};

use std::{
    io::{BufRead, BufReader, Read},
    path::Path,
    process::{Command, Stdio},
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use flowlog_records::{
    format::Format,
    parse::parse_record,
    record::{Action, FlowRecord, LogStatus},
};
use flowlog_agent::ship::{
        aws::{AwsSettings, RetryPolicy},
        parquet::hash8,
        s3::ObjectOptions,
        Output, ShipConfig, ShipStats, Shipper,
    };
use harness::{Fault, Proxy, Rule};

const ACCOUNT: &str = "123456789012";
/// An hour ago, 200 s into a 5-minute bucket, so 20 windows of 60 s end in
/// 5 buckets. (CloudWatch Logs rejects events older than 14 days.)
fn t0() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    (now - 3600) / 300 * 300 + 200
}

/// UTC `strftime` of Unix seconds (jiff, not the agent's own key code).
fn utc(t: u64, fmt: &str) -> String {
    jiff::Timestamp::from_second(t as i64).unwrap().strftime(fmt).to_string()
}

fn tmp(name: &str) -> TmpPath {
    TmpPath::new("flowlog-dest", name)
}

/// `n` records on `ifaces` interfaces, windows of 60 s from `t0`.
fn records(n: usize, ifaces: usize, t0: u64) -> Vec<FlowRecord> {
    (0..n)
        .map(|i| {
            let w = t0 + 60 * (i as u64 / 50);
            FlowRecord {
                srcaddr: Some(format!("10.{}.{}.{}", i / 62_500, (i / 250) % 250, i % 250 + 1).parse().unwrap()),
                dstaddr: Some("10.1.0.1".parse().unwrap()),
                srcport: Some(1024u16.wrapping_add(i as u16)),
                dstport: Some(443),
                protocol: Some(6),
                packets: Some(i as u64 + 1),
                bytes: Some(100 * (i as u64 + 1)),
                action: Some(Action::Accept),
                ..FlowRecord::status_only(ACCOUNT.into(), format!("eni-{:017x}", i % ifaces).into(), w + (i as u64 % 7), w + 59, LogStatus::Ok)
            }
        })
        .collect()
}

fn config(outputs: Vec<Output>, endpoint: Option<&str>, spool: &Path) -> ShipConfig {
    ShipConfig {
        outputs,
        account_id: ACCOUNT.into(),
        aws: AwsSettings { region: Some("us-east-1".into()), endpoint_url: endpoint.map(str::to_string) },
        flow_log_id: "fl-0123456789abcdef0".into(),
        spool_dir: spool.to_path_buf(),
        spool_max_bytes: 256 << 20,
        flush_interval: Duration::from_millis(300),
        objects: ObjectOptions::default(),
        retry: RetryPolicy { base: Duration::from_millis(50), max: Duration::from_millis(500) },
        shutdown_timeout: Duration::from_secs(10),
    }
}

fn stats(sh: &Shipper, i: usize) -> Arc<ShipStats> {
    sh.stats[i].1.clone()
}

async fn wait_delivered(sh: &Shipper, n: u64, timeout: Duration) {
    let all: Vec<(String, Arc<ShipStats>)> = sh.stats.clone();
    harness::wait_for("every destination to deliver", timeout, || all.iter().all(|(_, s)| s.delivered.load(Ordering::Relaxed) >= n)).await;
    for (name, s) in &all {
        assert_eq!(s.delivered.load(Ordering::Relaxed), n, "{name}");
    }
}

/// Same records, ignoring order; on failure says what is missing or extra
/// (without dumping thousands of lines).
fn assert_same(what: &str, mut got: Vec<String>, mut want: Vec<String>) {
    got.sort();
    want.sort();
    if got == want {
        return;
    }
    let mut dup = got.clone();
    dup.dedup();
    let missing: Vec<&String> = want.iter().filter(|w| got.binary_search(w).is_err()).take(3).collect();
    let extra: Vec<&String> = got.iter().filter(|g| want.binary_search(g).is_err()).take(3).collect();
    panic!("{what}: got {} records ({} distinct), want {}; missing e.g. {missing:?}; extra e.g. {extra:?}", got.len(), dup.len(), want.len());
}

fn gunzip(b: &[u8]) -> String {
    let mut s = String::new();
    flate2::read::GzDecoder::new(b).read_to_string(&mut s).expect("valid gzip");
    s
}

/// (key, body) of S3-layout text objects → every record line, checking key
/// names, hashes, 5-minute grouping by `end` and the header line.
fn check_text_objects(objs: &[(String, Vec<u8>)], folder_prefix: &str, format: &Format) -> Vec<String> {
    let mut lines = Vec::new();
    for (key, body) in objs {
        assert!(key.starts_with(folder_prefix), "{key}");
        let name = key.rsplit('/').next().unwrap();
        let region = folder_prefix.split("/vpcflowlogs/").nth(1).and_then(|r| r.split('/').next()).filter(|r| !r.is_empty()).unwrap_or("us-east-1");
        let want_start = format!("{ACCOUNT}_vpcflowlogs_{region}_fl-0123456789abcdef0_");
        assert!(name.starts_with(&want_start) && name.ends_with(".log.gz"), "{name}");
        let hash = &name[name.len() - 15..name.len() - 7];
        assert_eq!(hash, hash8(body), "{name}");
        let stamp = &name[want_start.len()..want_start.len() + 14];
        let text = gunzip(body);
        let mut it = text.lines();
        assert_eq!(it.next().unwrap(), format.header());
        for l in it {
            let end = parse_record(format, l).unwrap_or_else(|e| panic!("{e}: {l}")).record.end;
            let b = end - end % 300;
            assert_eq!(stamp, utc(b, "%Y%m%dT%H%MZ"), "{l} in {name}");
            lines.push(l.to_string());
        }
    }
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_text_round_trip_and_flush_on_shutdown() {
    let moto = harness::moto();
    let s3 = harness::s3(moto).await;
    s3.create_bucket().bucket("rt-text").send().await.unwrap();
    let spool = tmp("s3text");
    let mut cfg = config(vec!["s3://rt-text/flows/x".parse().unwrap()], Some(moto), &spool);
    cfg.flush_interval = Duration::from_secs(3600); // only the shutdown flushes
    let format = Format::default();
    let recs = records(1000, 3, t0());
    let mut sh = Shipper::start(&cfg).await.unwrap();
    for w in recs.chunks(50) {
        sh.send(&format, w);
    }
    let st = stats(&sh, 0);
    let t = Instant::now();
    sh.shutdown().await;
    eprintln!("shutdown flush of 1000 records to S3: {:?}", t.elapsed());
    assert_eq!(st.delivered.load(Ordering::Relaxed), 1000);
    let objs = harness::objects(&s3, "rt-text", "").await;
    // 1000 records, 20 windows of 60 s from 22:13:20 → end buckets 22:10 .. 22:30.
    assert_eq!(objs.len(), 5, "{:?}", objs.iter().map(|o| &o.0).collect::<Vec<_>>());
    let lines = check_text_objects(&objs, "flows/x/AWSLogs/123456789012/vpcflowlogs/us-east-1/", &format);
    assert_same("S3", lines, recs.iter().map(|r| format.line(r)).collect());
    assert_eq!(std::fs::read_dir(&spool).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("seg-")).count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_parquet_hive_per_hour_multipart_round_trip() {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let moto = harness::moto();
    let s3 = harness::s3(moto).await;
    s3.create_bucket().bucket("rt-parquet").send().await.unwrap();
    let spool = tmp("s3pq");
    let mut cfg = config(vec!["s3://rt-parquet?format=parquet&hive&per-hour".parse().unwrap()], Some(moto), &spool);
    // Multipart for everything over 4 KiB, in 2 KiB parts (moto's minimum part size is lowered to 1 KiB).
    cfg.objects = ObjectOptions { multipart_threshold: 4096, part_size: 2048, ..ObjectOptions::default() };
    let format = Format::parse("${version} ${account-id} ${interface-id} ${srcaddr} ${dstaddr} ${srcport} ${dstport} ${protocol} ${packets} ${bytes} ${start} ${end} ${action} ${log-status} ${tcp-flags} ${flow-direction}").unwrap();
    let mut recs = records(600, 2, t0());
    recs.push(FlowRecord::status_only(ACCOUNT.into(), "eni-nodata".into(), t0(), t0() + 59, LogStatus::NoData));
    let mut sh = Shipper::start(&cfg).await.unwrap();
    sh.send(&format, &recs);
    wait_delivered(&sh, recs.len() as u64, Duration::from_secs(60)).await;
    sh.shutdown().await;
    let objs = harness::objects(&s3, "rt-parquet", "").await;
    assert!(!objs.is_empty());
    let mut rows = Vec::new();
    let mut nodata = Vec::new();
    let mut large = 0;
    for (key, body) in &objs {
        // The folder is the file's 5-minute bucket: year=…/month=…/day=…/hour=….
        let name = key.rsplit('/').next().unwrap();
        let stamp = &name["123456789012_vpcflowlogs_us-east-1_fl-0123456789abcdef0_".len()..][..14];
        let folder = format!("year={}/month={}/day={}/hour={}/", &stamp[..4], &stamp[4..6], &stamp[6..8], &stamp[9..11]);
        assert_eq!(key, &format!("AWSLogs/aws-account-id=123456789012/aws-service=vpcflowlogs/aws-region=us-east-1/{folder}{name}"));
        assert!(key.ends_with(".log.parquet"), "{key}");
        if body.len() > 4096 {
            large += 1;
        }
        let r = SerializedFileReader::new(bytes::Bytes::from(body.clone())).unwrap();
        let cols: Vec<(String, parquet::basic::Type)> = r.metadata().file_metadata().schema_descr().columns().iter().map(|c| (c.name().to_string(), c.physical_type())).collect();
        use parquet::basic::Type::*;
        let want: Vec<(String, parquet::basic::Type)> = [
            ("version", INT32),
            ("account_id", BYTE_ARRAY),
            ("interface_id", BYTE_ARRAY),
            ("srcaddr", BYTE_ARRAY),
            ("dstaddr", BYTE_ARRAY),
            ("srcport", INT32),
            ("dstport", INT32),
            ("protocol", INT32),
            ("packets", INT64),
            ("bytes", INT64),
            ("start", INT64),
            ("end", INT64),
            ("action", BYTE_ARRAY),
            ("log_status", BYTE_ARRAY),
            ("tcp_flags", INT32),
            ("flow_direction", BYTE_ARRAY),
        ]
        .into_iter()
        .map(|(n, t)| (n.to_string(), t))
        .collect();
        assert_eq!(cols, want);
        for row in r.get_row_iter(None).unwrap() {
            let row = row.unwrap();
            if row.get_column_iter().any(|(_, f)| *f == parquet::record::Field::Str("NODATA".into())) {
                let f: Vec<&parquet::record::Field> = row.get_column_iter().map(|(_, f)| f).collect();
                nodata.push((f[3].clone(), f[5].clone(), f[8].clone(), f[12].clone()));
            }
            // Back to the text form: nulls (numbers) and `-` (strings) are `-`.
            let line = row
                .get_column_iter()
                .map(|(_, f)| match f {
                    parquet::record::Field::Null => "-".to_string(),
                    parquet::record::Field::Str(s) => s.clone(),
                    parquet::record::Field::Int(i) => i.to_string(),
                    parquet::record::Field::Long(i) => i.to_string(),
                    other => panic!("unexpected {other:?}"),
                })
                .collect::<Vec<_>>()
                .join(" ");
            rows.push(line);
        }
    }
    assert!(large > 0, "no object took the multipart path");
    // `-`: the string in STRING columns (srcaddr, action), null in numeric ones (srcport, packets).
    use parquet::record::Field as F;
    assert_eq!(nodata, vec![(F::Str("-".into()), F::Null, F::Null, F::Str("-".into()))]);
    assert_same("S3 Parquet", rows, recs.iter().map(|r| format.line(r)).collect());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudwatch_round_trip_streams_timestamps_and_deleted_stream() {
    let moto = harness::moto();
    let logs = harness::logs(moto).await;
    let spool = tmp("cw");
    let cfg = config(vec!["cloudwatch:/flowlog/rt?retention=7".parse().unwrap()], Some(moto), &spool);
    let format = Format::default();
    let recs = records(900, 3, t0());
    let mut sh = Shipper::start(&cfg).await.unwrap();
    let g = logs.describe_log_groups().log_group_name_prefix("/flowlog/rt").send().await.unwrap();
    assert_eq!(g.log_groups()[0].retention_in_days(), Some(7));
    sh.send(&format, &recs[..600]);
    wait_delivered(&sh, 600, Duration::from_secs(60)).await;
    // Someone deletes a stream: it is recreated.
    logs.delete_log_stream().log_group_name("/flowlog/rt").log_stream_name(format!("eni-{:017x}-all", 1)).send().await.unwrap();
    sh.send(&format, &recs[600..]);
    wait_delivered(&sh, 900, Duration::from_secs(60)).await;
    sh.shutdown().await;
    for i in 0..3 {
        let iface = format!("eni-{i:017x}");
        let got = harness::log_events(&logs, "/flowlog/rt", &format!("{iface}-all")).await;
        let mut want: Vec<(i64, String)> = recs
            .iter()
            .enumerate()
            .filter(|(j, r)| r.interface_id.as_deref() == Some(&*iface) && (i != 1 || *j >= 600))
            .map(|(_, r)| (r.start as i64 * 1000, format.line(r)))
            .collect();
        want.sort_by_key(|e| e.0);
        assert_same(&iface, got.iter().map(|(t, m)| format!("{t} {m}")).collect(), want.iter().map(|(t, m)| format!("{t} {m}")).collect());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firehose_round_trip_payloads() {
    let moto = harness::moto();
    harness::create_delivery_stream(moto, "fh-rt", "fh-rt-bucket").await;
    let spool = tmp("fh");
    let cfg = config(vec!["firehose:fh-rt".parse().unwrap()], Some(moto), &spool);
    let format = Format::default();
    let recs = records(1234, 2, t0());
    let mut sh = Shipper::start(&cfg).await.unwrap();
    sh.send(&format, &recs);
    wait_delivered(&sh, 1234, Duration::from_secs(60)).await;
    // 1234 records → 500 + 500 + 234.
    assert_eq!(stats(&sh, 0).calls.load(Ordering::Relaxed), 3);
    sh.shutdown().await;
    assert_same("Firehose", harness::firehose_messages(moto, "fh-rt-bucket").await, recs.iter().map(|r| format.line(r)).collect());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dir_round_trip_text_and_parquet() {
    let root = tmp("dirout");
    let spool = tmp("dirspool");
    let cfg = config(
        vec![format!("dir:{}", root.join("text").display()).parse().unwrap(), format!("dir:{}?format=parquet&per-hour", root.join("pq").display()).parse().unwrap()],
        None,
        &spool,
    );
    let format = Format::default();
    let recs = records(500, 2, t0());
    let mut sh = Shipper::start(&cfg).await.unwrap();
    sh.send(&format, &recs);
    wait_delivered(&sh, 500, Duration::from_secs(30)).await;
    sh.shutdown().await;
    let base = root.join("text");
    let objs: Vec<(String, Vec<u8>)> = flowlog_testkit::agent::files_under(&base)
        .iter()
        .map(|p| (p.strip_prefix(&base).unwrap().to_string_lossy().to_string(), std::fs::read(p).unwrap()))
        .collect();
    let got = check_text_objects(&objs, "AWSLogs/123456789012/vpcflowlogs/us-east-1/", &format);
    assert_same("dir", got, recs.iter().map(|r| format.line(r)).collect());
    let pq = root.join(format!("pq/AWSLogs/123456789012/vpcflowlogs/us-east-1/{}", utc(recs[0].end, "%Y/%m/%d/%H")));
    let n = std::fs::read_dir(&pq).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".log.parquet")).count();
    assert!(n >= 1, "{n} parquet files in {}", pq.display());
}

/// Record lines of every text object under a `dir:` output.
fn dir_lines(root: &Path) -> Vec<String> {
    let files = flowlog_testkit::agent::files_under(root);
    files.iter().flat_map(|p| gunzip(&std::fs::read(p).unwrap()).lines().skip(1).map(str::to_string).collect::<Vec<_>>()).collect()
}

/// A reload's outputs: between two windows, a spooled and a direct output
/// removed, another of each added. The removed ones have exactly the first
/// window (the spooled one delivers what it had accepted, then leaves the
/// spool), the added ones exactly the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_outputs_between_windows_exactly() {
    let root = tmp("reload");
    std::fs::create_dir_all(&*root).unwrap();
    let spool = root.join("spool");
    let (x, y, f1, f2) = (root.join("x"), root.join("y"), root.join("f1.log"), root.join("f2.log"));
    let (xn, yn) = (format!("dir:{}", x.display()), format!("dir:{}", y.display()));
    let (f1n, f2n) = (format!("file:{}", f1.display()), format!("file:{}", f2.display()));
    let outputs = |names: &[&String]| -> Vec<Output> { names.iter().map(|n| n.parse().unwrap()).collect() };
    let mut cfg = config(outputs(&[&xn, &f1n]), None, &spool);
    cfg.flush_interval = Duration::from_secs(3600);
    let format = Format::default();
    let recs = records(200, 2, t0());
    let lines = |r: &[FlowRecord]| -> Vec<String> { r.iter().map(|r| format.line(r)).collect() };
    let read = |p: &Path| -> Vec<String> { std::fs::read_to_string(p).unwrap().lines().map(str::to_string).collect() };
    let mut sh = Shipper::start(&cfg).await.unwrap();
    sh.send(&format, &recs[..100]);
    let r = sh.prepare(&ShipConfig { outputs: outputs(&[&f2n, &yn]), ..cfg.clone() }).await.unwrap();
    // Nothing changes before apply: the added ones are only opened.
    assert_eq!(sh.describe(), format!("{f1n},{xn}"));
    let applied = sh.apply(r);
    assert_eq!((applied.added, applied.removed), (vec![f2n.clone(), yn.clone()], vec![f1n.clone(), xn.clone()]));
    assert_eq!(sh.describe(), format!("{f2n},{yn}"));
    sh.send(&format, &recs[100..]);
    // The removed spooled output delivers its window at once (not after the
    // hour-long file interval), then its cursor is gone.
    harness::wait_for("the removed output to deliver and end", Duration::from_secs(30), || {
        sh.reap();
        sh.stats.iter().all(|(n, _)| n != &xn)
    })
    .await;
    assert!(!spool.join(flowlog_agent::ship::spool::cursor_file_name(&xn)).exists());
    assert_same("removed dir:", dir_lines(&x), lines(&recs[..100]));
    // Twice the same spooled output: refused, nothing changes.
    let twice = sh.prepare(&ShipConfig { outputs: outputs(&[&yn, &yn]), ..cfg.clone() }).await;
    assert!(twice.err().unwrap().to_string().contains("the same output is given twice"));
    sh.shutdown().await;
    assert_same("added dir:", dir_lines(&y), lines(&recs[100..]));
    assert_same("removed file:", read(&f1), lines(&recs[..100]));
    assert_same("added file:", read(&f2), lines(&recs[100..]));
}

/// The first spooled output, added by a reload: a second reload before the
/// first applied may replace it (the waiting one holds no spool lock); the
/// output gets the windows after it applied, none from before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_the_first_spooled_output() {
    let root = tmp("reload-first");
    std::fs::create_dir_all(&*root).unwrap();
    let (f, y) = (root.join("f.log"), root.join("y"));
    let out = |s: String| -> Output { s.parse().unwrap() };
    let cfg = config(vec![out(format!("file:{}", f.display()))], None, &root.join("spool"));
    let format = Format::default();
    let recs = records(100, 1, t0());
    let mut sh = Shipper::start(&cfg).await.unwrap();
    sh.send(&format, &recs[..50]);
    let outputs = vec![out(format!("file:{}", f.display())), out(format!("dir:{}", y.display()))];
    let new = ShipConfig { outputs, ..cfg.clone() };
    let first = sh.prepare(&new).await.unwrap();
    let second = sh.prepare(&new).await.unwrap();
    drop(first);
    assert_eq!(sh.apply(second).added, [format!("dir:{}", y.display())]);
    sh.send(&format, &recs[50..]);
    sh.shutdown().await;
    assert_same("added dir:", dir_lines(&y), recs[50..].iter().map(|r| format.line(r)).collect());
    assert_eq!(std::fs::read_to_string(&f).unwrap().lines().count(), 100);
}

/// Every record exactly once, per destination.
async fn check_all_once(moto: &str, format: &Format, recs: &[FlowRecord], bucket: &str, group: &str, fh_bucket: &str) {
    let want: Vec<String> = recs.iter().map(|r| format.line(r)).collect();
    let s3 = harness::s3(moto).await;
    let got = check_text_objects(&harness::objects(&s3, bucket, "").await, "AWSLogs/", format);
    assert_same("S3", got, want.clone());
    let logs = harness::logs(moto).await;
    let mut got = Vec::new();
    let streams: Vec<String> = {
        let mut s: Vec<String> = recs.iter().map(|r| format!("{}-all", r.interface_id.as_deref().unwrap())).collect();
        s.sort();
        s.dedup();
        s
    };
    for st in streams {
        got.extend(harness::log_events(&logs, group, &st).await.into_iter().map(|e| e.1));
    }
    assert_same("CloudWatch", got, want.clone());
    assert_same("Firehose", harness::firehose_messages(moto, fh_bucket).await, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_fan_out_keeps_going_and_delivers_exactly_once() {
    let moto = harness::moto();
    let s3 = harness::s3(moto).await;
    s3.create_bucket().bucket("outage").send().await.unwrap();
    harness::create_delivery_stream(moto, "fh-outage", "fh-outage-bucket").await;
    let mut proxy = Proxy::start(moto).await;
    let spool = tmp("outage");
    let dir = tmp("outage-dir");
    let cfg = config(
        vec![
            "s3://outage".parse().unwrap(),
            "cloudwatch:outage".parse().unwrap(),
            "firehose:fh-outage".parse().unwrap(),
            format!("dir:{}", dir.display()).parse().unwrap(),
        ],
        Some(&proxy.url),
        &spool,
    );
    let format = Format::default();
    let recs = records(2000, 4, t0());
    let mut sh = Shipper::start(&cfg).await.unwrap();
    sh.send(&format, &recs[..500]);
    wait_delivered(&sh, 500, Duration::from_secs(60)).await;
    // The server goes away; capture goes on.
    proxy.down();
    for w in recs[500..].chunks(100) {
        let t = Instant::now();
        sh.send(&format, w);
        assert!(t.elapsed() < Duration::from_secs(2), "send waited for a destination: {:?}", t.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The local directory is not held back by the failing ones.
    let dir_stats = stats(&sh, 3);
    harness::wait_for("dir output", Duration::from_secs(30), || dir_stats.delivered.load(Ordering::Relaxed) == 2000).await;
    for i in 0..3 {
        assert!(stats(&sh, i).delivered.load(Ordering::Relaxed) < 2000, "{} delivered during the outage", sh.stats[i].0);
    }
    assert!(sh.spool().unwrap().pending_records("s3://outage").unwrap() > 0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.up().await;
    wait_delivered(&sh, 2000, Duration::from_secs(90)).await;
    sh.shutdown().await;
    check_all_once(moto, &format, &recs, "outage", "outage", "fh-outage-bucket").await;
    // Everything acknowledged: the spool is empty.
    let sp = Shipper::start(&config(vec!["s3://outage".parse().unwrap()], Some(moto), &spool)).await.unwrap();
    assert_eq!(sp.spool().unwrap().pending_records("s3://outage").unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_5xx_and_partial_failures_are_retried_without_loss() {
    let moto = harness::moto();
    let s3 = harness::s3(moto).await;
    s3.create_bucket().bucket("throttle").send().await.unwrap();
    harness::create_delivery_stream(moto, "fh-throttle", "fh-throttle-bucket").await;
    let proxy = Proxy::start(moto).await;
    let spool = tmp("throttle");
    let cfg = config(vec!["s3://throttle".parse().unwrap(), "cloudwatch:throttle".parse().unwrap(), "firehose:fh-throttle".parse().unwrap()], Some(&proxy.url), &spool);
    let format = Format::default();
    let recs = records(1500, 3, t0());
    let mut sh = Shipper::start(&cfg).await.unwrap();
    for r in [
        Rule { matches: "PutLogEvents".into(), fault: Fault::Throttle, count: 3 },
        Rule { matches: "PutLogEvents".into(), fault: Fault::Error500, count: 2 },
        Rule { matches: "PutLogEvents".into(), fault: Fault::RejectTooOld, count: 1 },
        Rule { matches: "PUT /throttle/".into(), fault: Fault::Throttle, count: 2 },
        Rule { matches: "PUT /throttle/".into(), fault: Fault::Error500, count: 2 },
        Rule { matches: "PutRecordBatch".into(), fault: Fault::HalfFail, count: 2 },
        Rule { matches: "PutRecordBatch".into(), fault: Fault::Throttle, count: 1 },
        Rule { matches: "PutRecordBatch".into(), fault: Fault::Error500, count: 1 },
        Rule { matches: "PUT /throttle/".into(), fault: Fault::AccessDenied, count: 1 },
    ] {
        proxy.inject(r);
    }
    sh.send(&format, &recs);
    wait_delivered(&sh, 1500, Duration::from_secs(90)).await;
    assert_eq!(proxy.pending_faults(), 0);
    assert_eq!(proxy.faults_served.load(Ordering::Relaxed), 15);
    let fh = stats(&sh, 2);
    assert!(fh.partial_retries.load(Ordering::Relaxed) > 0);
    // Every failed call is counted by reason (the metrics' source); a
    // partial Firehose failure is a transient one.
    let errors = |i: usize| stats(&sh, i).errors().filter(|(_, n)| *n > 0).collect::<Vec<_>>();
    assert_eq!(errors(0), [("transient", 4), ("access_denied", 1)], "S3");
    assert_eq!(errors(1), [("transient", 5)], "CloudWatch Logs");
    assert_eq!(errors(2), [("transient", 4)], "Firehose");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    for i in 0..3 {
        let last = stats(&sh, i).last_success_unix.load(Ordering::Relaxed);
        assert!(last + 120 >= now && last <= now, "output {i}: last success {last}, now {now}");
    }
    // rejectedLogEventsInfo is counted (here a fake: moto stored the events).
    assert_eq!(stats(&sh, 1).rejected.load(Ordering::Relaxed), 1);
    sh.shutdown().await;
    check_all_once(moto, &format, &recs, "throttle", "throttle", "fh-throttle-bucket").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_deadline_keeps_undelivered_records_in_the_spool() {
    harness::test_env();
    let spool = tmp("deadline");
    // Nothing listens there: the startup check only warns, delivery cannot happen.
    let dead = format!("http://127.0.0.1:{}", harness::free_port());
    let mut cfg = config(vec!["cloudwatch:deadline".parse().unwrap()], Some(&dead), &spool);
    cfg.shutdown_timeout = Duration::from_secs(1);
    let mut sh = Shipper::start(&cfg).await.unwrap();
    sh.send(&Format::default(), &records(300, 2, t0()));
    let t = Instant::now();
    sh.shutdown().await;
    let dt = t.elapsed();
    assert!(dt >= Duration::from_millis(900) && dt < Duration::from_secs(3), "shutdown took {dt:?}");
    let moto = harness::moto();
    let cfg = config(vec!["cloudwatch:deadline".parse().unwrap()], Some(moto), &spool);
    let sh = Shipper::start(&cfg).await.unwrap();
    // All 300 were kept and are now delivered.
    wait_delivered(&sh, 300, Duration::from_secs(60)).await;
    sh.shutdown().await;
}

/// The child side of `kill_9_with_a_non_empty_spool_then_restart_delivers`:
/// spools records for outputs whose endpoint is down, says so, and waits to
/// be killed.
#[test]
#[ignore = "run by kill_9_with_a_non_empty_spool_then_restart_delivers"]
fn kill9_child() {
    let Ok(spool) = std::env::var("FLOWLOG_TEST_SPOOL") else { return };
    let endpoint = std::env::var("FLOWLOG_TEST_ENDPOINT").unwrap();
    harness::test_env();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let cfg = config(vec!["s3://kill9".parse().unwrap(), "cloudwatch:kill9".parse().unwrap(), "firehose:fh-kill9".parse().unwrap()], Some(&endpoint), Path::new(&spool));
        let mut sh = Shipper::start(&cfg).await.unwrap();
        let format = Format::default();
        for w in records(1000, 2, t0()).chunks(100) {
            sh.send(&format, w);
        }
        println!("SPOOLED");
        std::future::pending::<()>().await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_a_non_empty_spool_then_restart_delivers() {
    let moto = harness::moto();
    harness::s3(moto).await.create_bucket().bucket("kill9").send().await.unwrap();
    harness::create_delivery_stream(moto, "fh-kill9", "fh-kill9-bucket").await;
    let spool = tmp("kill9");
    // Nothing listens there: the child cannot deliver anything.
    let dead = format!("http://127.0.0.1:{}", harness::free_port());
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "kill9_child", "--ignored", "--nocapture", "--test-threads=1"])
        .env("FLOWLOG_TEST_SPOOL", spool.as_os_str())
        .env("FLOWLOG_TEST_ENDPOINT", &dead)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let t = Instant::now();
    loop {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "child ended before spooling");
        if line.trim() == "SPOOLED" {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let segs: u64 = std::fs::read_dir(&spool).unwrap().map(|e| e.unwrap()).filter(|e| e.file_name().to_string_lossy().starts_with("seg-")).map(|e| e.metadata().unwrap().len()).sum();
    assert!(segs > 0, "spool is empty after kill -9");
    // Restart with the server reachable: the spool drains, in order.
    let cfg = config(vec!["s3://kill9".parse().unwrap(), "cloudwatch:kill9".parse().unwrap(), "firehose:fh-kill9".parse().unwrap()], Some(moto), &spool);
    let t = Instant::now();
    let sh = Shipper::start(&cfg).await.unwrap();
    wait_delivered(&sh, 1000, Duration::from_secs(60)).await;
    eprintln!("spool of 1000 records × 3 destinations drained after restart in {:?}", t.elapsed());
    sh.shutdown().await;
    let format = Format::default();
    let recs = records(1000, 2, t0());
    check_all_once(moto, &format, &recs, "kill9", "kill9", "fh-kill9-bucket").await;
    // The spool drains in order: each CloudWatch stream got its events in
    // spool order (records of a stream have increasing windows).
    let logs = harness::logs(moto).await;
    for i in 0..2 {
        let iface = format!("eni-{i:017x}");
        let got: Vec<String> = harness::log_events(&logs, "kill9", &format!("{iface}-all")).await.into_iter().map(|e| e.1).collect();
        let want: Vec<String> = recs.iter().filter(|r| r.interface_id.as_deref() == Some(&*iface)).map(|r| format.line(r)).collect();
        let mut by_start = want.clone();
        by_start.sort_by_key(|l| parse_record(&format, l).unwrap().record.start);
        assert_eq!(got.len(), want.len());
        assert!(got == by_start, "{iface}: events out of order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_is_a_clear_startup_error() {
    let moto = harness::moto();
    let spool = tmp("badcfg");
    let err = |cfg: ShipConfig| async move { format!("{:#}", Shipper::start(&cfg).await.err().expect("startup should fail")) };
    // No account id (metadata gave none): an error, not objects under AWSLogs/unknown/.
    let mut c = config(vec!["s3://no-account".parse().unwrap()], Some(moto), &spool);
    c.account_id = "unknown".into();
    let e = err(c).await;
    assert!(e.starts_with("s3://no-account: the AWS account id is \"unknown\", not a 12-digit account id;") && e.contains("--account-id") && e.contains("[metadata.onprem]"), "{e}");
    let e = err(config(vec!["s3://no-such-bucket".parse().unwrap()], Some(moto), &spool)).await;
    assert!(e.contains("bucket \"no-such-bucket\" does not exist"), "{e}");
    let e = err(config(vec!["firehose:no-such-stream".parse().unwrap()], Some(moto), &spool)).await;
    assert!(e.contains("delivery stream \"no-such-stream\" does not exist"), "{e}");
    let mut c = config(vec!["cloudwatch:g".parse().unwrap()], Some(moto), &spool);
    c.aws.region = Some("US_Middle-1".into());
    let e = err(c).await;
    assert!(e.contains("invalid AWS region \"US_Middle-1\""), "{e}");
    // Any region of the right shape is the SDK's to judge: a real one that
    // an older, stricter check refused starts.
    harness::s3(moto).await.create_bucket().bucket("eusc").send().await.unwrap();
    let scratch = tmp("eusc-spool");
    let mut c = config(vec!["s3://eusc".parse().unwrap()], Some(moto), &scratch);
    c.aws.region = Some("eusc-de-east-1".into());
    Shipper::start(&c).await.expect("eusc-de-east-1 is a region").shutdown().await;
    let mut c = config(vec!["cloudwatch:g".parse().unwrap()], Some(moto), &spool);
    c.aws.endpoint_url = Some("127.0.0.1:4566".into());
    assert!(err(c).await.contains("invalid --aws-endpoint-url"));
    // A spool directory that cannot be created/written.
    let file = tmp("badcfg-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let e = err(config(vec!["cloudwatch:g".parse().unwrap()], Some(moto), &file.join("spool"))).await;
    assert!(e.contains("spool directory") && e.contains("cannot create it"), "{e}");
    // Not writable, even for root.
    let e = err(config(vec!["cloudwatch:g".parse().unwrap()], Some(moto), Path::new("/proc/sys/flowlog-spool"))).await;
    assert!(e.contains("spool directory /proc/sys/flowlog-spool"), "{e}");
    // Access denied / bad credentials at startup (moto accepts any
    // credentials, so the proxy answers like AWS does).
    let proxy = Proxy::start(moto).await;
    harness::s3(moto).await.create_bucket().bucket("denied").send().await.unwrap();
    proxy.inject(Rule { matches: "HEAD /denied".into(), fault: Fault::AccessDenied, count: 1 });
    let e = err(config(vec!["s3://denied".parse().unwrap()], Some(&proxy.url), &spool)).await;
    assert!(e.contains("s3://denied: access denied or invalid credentials"), "{e}");
    proxy.inject(Rule { matches: "CreateLogGroup".into(), fault: Fault::AccessDenied, count: 1 });
    let e = err(config(vec!["cloudwatch:denied".parse().unwrap()], Some(&proxy.url), &spool)).await;
    assert!(e.contains("cloudwatch:denied: access denied or invalid credentials") && e.contains("UnrecognizedClientException"), "{e}");
    // Output syntax errors name the problem.
    assert!("s3://Bad_Bucket".parse::<Output>().unwrap_err().contains("not a valid S3 bucket name"));
}

/// Figures (not a check): `cargo test -p flowlog-agent --test destinations
/// measure -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement"]
async fn measure() {
    use flowlog_agent::ship::spool::{Batch, Spool, SpoolRecord};
    let format = Format::default();
    let recs = records(100_000, 8, t0());
    let batch = Batch { header: format.header(), records: recs.iter().map(|r| SpoolRecord { interface_id: r.interface_id.as_deref().unwrap().to_string(), start: r.start, end: r.end, line: format.line(r) }).collect() };
    let text: usize = batch.text_len();
    // Spool: 100 appends of 1,000 records (fsync each).
    let dir = tmp("measure-spool");
    let sp = Spool::open(&dir, 1 << 30, &["x".to_string()]).unwrap();
    let t = Instant::now();
    for c in batch.records.chunks(1000) {
        sp.append(&Batch { header: batch.header.clone(), records: c.to_vec() }).unwrap();
    }
    let dt = t.elapsed();
    eprintln!("spool: 100,000 records ({} text bytes) in 100 fsynced appends: {dt:?}, {:.0} records/s, {} bytes on disk", text, 100_000.0 / dt.as_secs_f64(), sp.bytes());
    let t = Instant::now();
    assert_eq!(sp.pending_records("x").unwrap(), 100_000);
    eprintln!("spool: reading it back: {:?}", t.elapsed());
    // Encoding.
    let lines: Vec<&str> = batch.records.iter().map(|r| r.line.as_str()).collect();
    let t = Instant::now();
    let gz = flowlog_agent::ship::parquet::gzip_text(&batch.header, &lines).unwrap();
    eprintln!("gzip text: {} → {} bytes ({:.1}×) in {:?}", text, gz.len(), text as f64 / gz.len() as f64, t.elapsed());
    let t = Instant::now();
    let pq = flowlog_agent::ship::parquet::parquet_file(&batch.header, &lines).unwrap();
    eprintln!("parquet: {} → {} bytes ({:.1}×) in {:?}", text, pq.len(), text as f64 / pq.len() as f64, t.elapsed());
    // Delivery to moto, 20,000 records per destination.
    let moto = harness::moto();
    harness::s3(moto).await.create_bucket().bucket("measure").send().await.unwrap();
    harness::create_delivery_stream(moto, "fh-measure", "fh-measure-bucket").await;
    for out in ["s3://measure", "cloudwatch:measure", "firehose:fh-measure"] {
        let spool = tmp(&format!("measure-{}", out.replace([':', '/'], "_")));
        let cfg = config(vec![out.parse().unwrap()], Some(moto), &spool);
        let mut sh = Shipper::start(&cfg).await.unwrap();
        let t = Instant::now();
        for w in recs[..20_000].chunks(1000) {
            sh.send(&format, w);
        }
        wait_delivered(&sh, 20_000, Duration::from_secs(300)).await;
        let dt = t.elapsed();
        eprintln!("{out}: 20,000 records delivered to moto in {dt:?} ({:.0} records/s, {} calls/objects)", 20_000.0 / dt.as_secs_f64(), stats(&sh, 0).calls.load(Ordering::Relaxed) + stats(&sh, 0).objects.load(Ordering::Relaxed));
        sh.shutdown().await;
    }
}

/// Per-output options: an output in another region at its own endpoint,
/// and one delivering with a role assumed through STS (moto's AssumeRole).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_output_region_endpoint_and_role() {
    let moto = harness::moto();
    let s3 = harness::s3(moto).await;
    s3.create_bucket().bucket("per-out-ep").send().await.unwrap();
    s3.create_bucket().bucket("per-out-role").send().await.unwrap();
    let format = Format::default();
    let recs = records(40, 2, t0());

    // No global endpoint: the output's own endpoint and region are used.
    let spool = tmp("perout-ep");
    let o: Output = format!("s3://per-out-ep/p?region=eu-west-1&endpoint={moto}").parse().unwrap();
    let mut sh = Shipper::start(&config(vec![o], None, &spool)).await.unwrap();
    sh.send(&format, &recs);
    wait_delivered(&sh, 40, Duration::from_secs(30)).await;
    sh.shutdown().await;
    let objs = harness::objects(&s3, "per-out-ep", "").await;
    assert_same("S3", check_text_objects(&objs, "p/AWSLogs/123456789012/vpcflowlogs/eu-west-1/", &format), recs.iter().map(|r| format.line(r)).collect());

    // A cross-account delivery role.
    let spool = tmp("perout-role");
    let o: Output = "s3://per-out-role?role-arn=arn:aws:iam::123456789012:role/flowlog-delivery".parse().unwrap();
    let mut sh = Shipper::start(&config(vec![o], Some(moto), &spool)).await.unwrap();
    sh.send(&format, &recs);
    wait_delivered(&sh, 40, Duration::from_secs(30)).await;
    sh.shutdown().await;
    let objs = harness::objects(&s3, "per-out-role", "").await;
    assert_same("S3", check_text_objects(&objs, "AWSLogs/123456789012/vpcflowlogs/us-east-1/", &format), recs.iter().map(|r| format.line(r)).collect());

    // A dead endpoint is a delivery failure (warned at startup, retried
    // from the spool): nothing is acknowledged.
    let dead = format!("http://127.0.0.1:{}", harness::free_port());
    let o: Output = format!("s3://per-out-ep?endpoint={dead}&role-arn=arn:aws:iam::123456789012:role/x").parse().unwrap();
    let scratch = tmp("perout-bad");
    let mut cfg = config(vec![o], Some(&dead), &scratch);
    cfg.shutdown_timeout = Duration::from_millis(500);
    let mut sh = Shipper::start(&cfg).await.unwrap();
    sh.send(&format, &recs);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let st = stats(&sh, 0);
    assert_eq!((st.delivered.load(Ordering::Relaxed), st.calls.load(Ordering::Relaxed), st.last_success_unix.load(Ordering::Relaxed)), (0, 0, 0));
    assert!(st.errors().any(|(r, n)| r == "transient" && n > 0), "{:?}", st.errors().collect::<Vec<_>>());
    sh.shutdown().await;
    // A malformed role is refused when the output is parsed.
    let e = "s3://b3t?role-arn=arn:aws:iam::1:role/x".parse::<Output>().unwrap_err();
    assert!(e.contains("role-arn") && e.contains("IAM role ARN"), "{e}");
}

/// Records every CloudWatch Logs request (operation, JSON body) the agent's
/// client sends; with `deny_tagged`, a CreateLogGroup carrying tags does not
/// reach moto's operation and is answered like AWS answers a caller without
/// logs:TagResource.
#[derive(Debug, Default, Clone)]
struct CwCapture {
    calls: Arc<std::sync::Mutex<Vec<(String, serde_json::Value)>>>,
    deny_tagged: bool,
}

impl CwCapture {
    fn calls(&self, op: &str) -> Vec<serde_json::Value> {
        self.calls.lock().unwrap().iter().filter(|(o, _)| o == op).map(|(_, b)| b.clone()).collect()
    }
    fn denied(&self) -> bool {
        self.deny_tagged && self.calls.lock().unwrap().last().is_some_and(|(o, b)| o == "CreateLogGroup" && b.get("tags").is_some())
    }
}

impl aws_sdk_cloudwatchlogs::config::Intercept for CwCapture {
    fn name(&self) -> &'static str {
        "CwCapture"
    }
    fn modify_before_transmit(
        &self,
        cx: &mut aws_sdk_cloudwatchlogs::config::interceptors::BeforeTransmitInterceptorContextMut<'_>,
        _: &aws_sdk_cloudwatchlogs::config::RuntimeComponents,
        _: &mut aws_sdk_cloudwatchlogs::config::ConfigBag,
    ) -> Result<(), aws_sdk_cloudwatchlogs::error::BoxError> {
        let r = cx.request_mut();
        let op = r.headers().get("x-amz-target").and_then(|t| t.rsplit('.').next()).unwrap_or("").to_string();
        let body = serde_json::from_slice(r.body().bytes().unwrap_or(b"{}")).unwrap();
        self.calls.lock().unwrap().push((op, body));
        if self.denied() {
            // No operation for moto to run: nothing is created.
            r.headers_mut().remove("x-amz-target");
        }
        Ok(())
    }
    fn modify_before_deserialization(
        &self,
        cx: &mut aws_sdk_cloudwatchlogs::config::interceptors::BeforeDeserializationInterceptorContextMut<'_>,
        _: &aws_sdk_cloudwatchlogs::config::RuntimeComponents,
        _: &mut aws_sdk_cloudwatchlogs::config::ConfigBag,
    ) -> Result<(), aws_sdk_cloudwatchlogs::error::BoxError> {
        if self.denied() {
            let r = cx.response_mut();
            *r.status_mut() = aws_smithy_runtime_api::http::StatusCode::try_from(400).unwrap();
            r.headers_mut().remove("x-amzn-errortype");
            r.headers_mut().insert("content-type", "application/x-amz-json-1.1");
            *r.body_mut() = String::from(r#"{"__type":"AccessDeniedException","message":"User is not authorized to perform: logs:TagResource"}"#).into();
        }
        Ok(())
    }
}

/// The tags moto recorded on a log group.
async fn group_tags(logs: &aws_sdk_cloudwatchlogs::Client, group: &str) -> std::collections::BTreeMap<String, String> {
    let g = logs.describe_log_groups().log_group_name_prefix(group).send().await.unwrap();
    let g = g.log_groups().iter().find(|g| g.log_group_name() == Some(group)).expect("the group exists");
    let arn = g.arn().unwrap().trim_end_matches(":*");
    logs.list_tags_for_resource().resource_arn(arn).send().await.unwrap().tags().cloned().unwrap_or_default().into_iter().collect()
}

/// `class=` and the data-source tags of a group the agent creates: the
/// requests carry them (moto ignores logGroupClass, so it is checked in the
/// request) and moto records the tags; without logs:TagResource the group
/// is still created, untagged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudwatch_group_class_and_datasource_tags() {
    use flowlog_agent::ship::cloudwatch::{CloudWatchDest, CloudWatchOutput, DATASOURCE_TAGS};
    let moto = harness::moto();
    let logs = harness::logs(moto).await;
    let sdk = harness::sdk(moto).await;
    let want_tags: std::collections::BTreeMap<String, String> = DATASOURCE_TAGS.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    assert_eq!(want_tags, [("cw:datasource:name", "flowlog"), ("cw:datasource:type", "vpc_flow_logs")].into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
    let retry = RetryPolicy { base: Duration::from_millis(50), max: Duration::from_millis(500) };
    let dest = |url: &str, cap: &CwCapture| {
        let o: Output = url.parse().unwrap();
        let client = aws_sdk_cloudwatchlogs::Client::from_conf(aws_sdk_cloudwatchlogs::config::Builder::from(&sdk).interceptor(cap.clone()).build());
        CloudWatchDest::new(url, client, o.spec::<CloudWatchOutput>().unwrap(), retry, Default::default())
    };

    // Infrequent Access: the class and the tags in CreateLogGroup.
    let cap = CwCapture::default();
    dest("cloudwatch:/flowlog/ia?class=infrequent-access&retention=3", &cap).check().await.unwrap();
    let created = cap.calls("CreateLogGroup");
    assert_eq!(created.len(), 1);
    assert_eq!(created[0]["logGroupName"], "/flowlog/ia");
    assert_eq!(created[0]["logGroupClass"], "INFREQUENT_ACCESS");
    assert_eq!(created[0]["tags"], serde_json::to_value(&want_tags).unwrap());
    assert_eq!(cap.calls("PutRetentionPolicy").len(), 1);
    assert_eq!(group_tags(&logs, "/flowlog/ia").await, want_tags);
    // It exists now: started again with another class, the group is
    // compared (DescribeLogGroups), not recreated, and startup succeeds.
    let cap = CwCapture::default();
    dest("cloudwatch:/flowlog/ia?class=standard", &cap).check().await.unwrap();
    assert_eq!(cap.calls("CreateLogGroup").len(), 1);
    assert_eq!(cap.calls("DescribeLogGroups").len(), 1);

    // No class: none sent (the service's default), tags still.
    let cap = CwCapture::default();
    dest("cloudwatch:/flowlog/std", &cap).check().await.unwrap();
    let created = cap.calls("CreateLogGroup");
    assert_eq!(created.len(), 1);
    assert!(created[0].get("logGroupClass").is_none(), "{}", created[0]);
    assert_eq!(group_tags(&logs, "/flowlog/std").await, want_tags);
    assert!(cap.calls("DescribeLogGroups").is_empty());

    // Tagging denied: created again without tags (and with its class).
    let cap = CwCapture { deny_tagged: true, ..Default::default() };
    dest("cloudwatch:/flowlog/untagged?class=infrequent-access", &cap).check().await.unwrap();
    let created = cap.calls("CreateLogGroup");
    assert_eq!(created.len(), 2);
    assert!(created[0].get("tags").is_some() && created[1].get("tags").is_none(), "{created:?}");
    assert_eq!(created[1]["logGroupClass"], "INFREQUENT_ACCESS");
    assert!(group_tags(&logs, "/flowlog/untagged").await.is_empty());

    // Through the shipper: the option reaches the group it creates.
    let spool = tmp("cw-class");
    let sh = Shipper::start(&config(vec!["cloudwatch:/flowlog/shipped?class=infrequent-access".parse().unwrap()], Some(moto), &spool)).await.unwrap();
    assert_eq!(sh.stats[0].0, "cloudwatch:/flowlog/shipped?class=infrequent-access");
    sh.shutdown().await;
    assert_eq!(group_tags(&logs, "/flowlog/shipped").await, want_tags);
    std::fs::remove_dir_all(spool).unwrap();
}
