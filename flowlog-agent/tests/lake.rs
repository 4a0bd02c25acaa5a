//! The data lake as AWS users query it: the agent's real S3 output (the
//! `Shipper` in-process, against moto) read by third-party readers by
//! column name. DuckDB (PyPI, httpfs over moto's S3 API) applies the
//! Athena DDLs of deploy/athena/ (column list, types, key layout of the
//! partition template) to text and Parquet in both layouts, daily and per
//! hour; pyarrow reads the Parquet objects and shows their encodings.
//! Needs python3 (the venv target/test-tools/lake is installed from PyPI
//! when missing, or `cargo xtask setup`). No root.

use flowlog_testkit::{aws as harness, TmpPath};

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::Ordering,
    time::Duration,
};

use flowlog_agent::ship::{
    aws::{AwsSettings, RetryPolicy},
    s3::ObjectOptions,
    Output, ShipConfig, Shipper,
};
use flowlog_records::{
    format::Format,
    record::{Action, Direction, FlowRecord, IpType, LogStatus},
};

const ACCOUNT: &str = "123456789012";
const REGION: &str = "eu-west-1";

/// The columns of AWS's documented Athena DDL (versions 2 to 5), in order.
const AWS_COLUMNS: &str = "version account_id interface_id srcaddr dstaddr srcport dstport protocol packets bytes start end action log_status vpc_id subnet_id instance_id tcp_flags type pkt_srcaddr pkt_dstaddr region az_id sublocation_type sublocation_id pkt_src_aws_service pkt_dst_aws_service flow_direction traffic_path";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The log format of the DDL's columns, in their order (what text tables read by position).
fn ddl_format() -> Format {
    Format::parse(&AWS_COLUMNS.split(' ').map(|c| format!("${{{}}}", c.replace('_', "-"))).collect::<Vec<_>>().join(" ")).unwrap()
}

fn tmp(name: &str) -> TmpPath {
    TmpPath::new("flowlog-lake", name)
}

/// 40 minutes of records ending 3 hours ago, across an hour boundary:
/// 4 interfaces, ingress and egress, some REJECT, one NODATA per interface.
fn records() -> Vec<FlowRecord> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let t0 = (now - 3 * 3600) / 3600 * 3600 - 20 * 60;
    let mut v = Vec::new();
    for i in 0..400u64 {
        let w = t0 + 60 * (i / 10);
        let eni: std::sync::Arc<str> = format!("eni-0a1b2c3d4e5f6071{}", i % 4).into();
        let ingress = i % 3 == 0;
        let (local, peer): (IpAddr, IpAddr) = (format!("10.0.0.{}", 10 + i % 4).parse().unwrap(), format!("52.95.{}.{}", i % 7, 1 + i % 200).parse().unwrap());
        let (src, dst) = if ingress { (peer, local) } else { (local, peer) };
        let (sport, dport) = if ingress { (443, 32768 + i as u16) } else { (32768 + i as u16, 443) };
        v.push(FlowRecord {
            account_id: Some(ACCOUNT.into()),
            srcaddr: Some(src),
            dstaddr: Some(dst),
            srcport: Some(sport),
            dstport: Some(dport),
            protocol: Some(6),
            packets: Some(1 + i * 7 % 97),
            bytes: Some((1 + i * 7 % 97) * (60 + i % 1400)),
            action: Some(if i % 11 == 0 { Action::Reject } else { Action::Accept }),
            vpc_id: Some("vpc-0abc12345def67890".into()),
            subnet_id: Some("subnet-0abc12345def67890".into()),
            instance_id: Some("i-0abc12345def67890".into()),
            tcp_flags: Some([2, 18, 3, 19][(i % 4) as usize]),
            ip_type: Some(IpType::V4),
            pkt_srcaddr: Some(src),
            pkt_dstaddr: Some(dst),
            region: Some(REGION.into()),
            az_id: Some("euw1-az2".into()),
            pkt_src_aws_service: ingress.then(|| "S3".into()),
            pkt_dst_aws_service: (!ingress).then(|| "S3".into()),
            flow_direction: Some(if ingress { Direction::Ingress } else { Direction::Egress }),
            traffic_path: (!ingress).then_some(8),
            ..FlowRecord::status_only(ACCOUNT.into(), eni, w + i % 20, w + 30 + i % 29, LogStatus::Ok)
        });
    }
    for k in 0..4 {
        v.push(FlowRecord { region: Some(REGION.into()), ..FlowRecord::status_only(ACCOUNT.into(), format!("eni-0a1b2c3d4e5f6071{k}").into(), t0 + 600, t0 + 659, LogStatus::NoData) });
    }
    v
}

fn config(output: &str, endpoint: &str, spool: &Path) -> ShipConfig {
    ShipConfig {
        outputs: vec![output.parse::<Output>().unwrap()],
        account_id: ACCOUNT.into(),
        aws: AwsSettings { region: Some(REGION.into()), endpoint_url: Some(endpoint.to_string()) },
        flow_log_id: "fl-0123456789abcdef0".into(),
        spool_dir: spool.to_path_buf(),
        spool_max_bytes: 64 << 20,
        flush_interval: Duration::from_millis(200),
        objects: ObjectOptions::default(),
        retry: RetryPolicy { base: Duration::from_millis(50), max: Duration::from_millis(500) },
        shutdown_timeout: Duration::from_secs(10),
    }
}

/// Ships `recs` in `format` to `output` and waits until all are delivered.
async fn ship(output: &str, format: &Format, recs: &[FlowRecord], spool: &Path) {
    let mut sh = Shipper::start(&config(output, harness::moto(), spool)).await.unwrap();
    sh.send(format, recs);
    let st = sh.stats[0].1.clone();
    let n = recs.len() as u64;
    harness::wait_for("delivery", Duration::from_secs(60), || st.delivered.load(Ordering::Relaxed) >= n).await;
    assert_eq!(st.delivered.load(Ordering::Relaxed), n);
    sh.shutdown().await;
}

fn python(script: &str, args: &[String]) -> serde_json::Value {
    let py = harness::ensure_lake();
    let out = Command::new(py).arg(root().join("flowlog-agent/tests/lake").join(script)).args(args).output().expect("python");
    assert!(out.status.success(), "{script} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{script}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn sorted(v: &serde_json::Value) -> Vec<String> {
    let mut v: Vec<String> = v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect();
    v.sort();
    v
}

/// Every DDL of deploy/athena/ over the agent's output of the matching
/// layout: all files found through the partition template, every row with
/// every column right, exact sums.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duckdb_reads_the_agent_output_through_every_athena_ddl() {
    let moto = harness::moto();
    let s3 = harness::s3(moto).await;
    let recs = records();
    let text_format = ddl_format();
    // Parquet is read by name: the agent's format in another order.
    let mut fields: Vec<String> = AWS_COLUMNS.split(' ').map(|c| format!("${{{}}}", c.replace('_', "-"))).collect();
    fields.reverse();
    let pq_format = Format::parse(&fields.join(" ")).unwrap();
    let want_rows = {
        let mut v: Vec<String> = recs.iter().map(|r| text_format.line(r)).collect();
        v.sort();
        v
    };
    let ok = || recs.iter().filter(|r| r.log_status == LogStatus::Ok);
    let (packets, bytes): (u64, u64) = (ok().map(|r| r.packets.unwrap()).sum(), ok().map(|r| r.bytes.unwrap()).sum());
    let mut per_iface: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for r in ok() {
        let e = per_iface.entry(r.interface_id.as_deref().unwrap().to_string()).or_default();
        e.0 += r.packets.unwrap();
        e.1 += r.bytes.unwrap();
    }
    let mut ddls = 0;
    for fmt in ["text", "parquet"] {
        for hive in [false, true] {
            for hourly in [false, true] {
                let name = format!("vpc_flow_logs_{fmt}_{}_{}", if hive { "hive" } else { "plain" }, if hourly { "hourly" } else { "daily" });
                let bucket = name.replace('_', "-");
                s3.create_bucket().bucket(&bucket).send().await.unwrap();
                let opts: Vec<&str> = [(fmt == "parquet", "format=parquet"), (hive, "hive"), (hourly, "per-hour")].iter().filter(|o| o.0).map(|o| o.1).collect();
                let output = if opts.is_empty() { format!("s3://{bucket}/flows") } else { format!("s3://{bucket}/flows?{}", opts.join("&")) };
                let format = if fmt == "text" { &text_format } else { &pq_format };
                ship(&output, format, &recs, &tmp(&bucket)).await;
                let objects = harness::objects(&s3, &bucket, "").await.len();
                // 40 minutes of `end`: 8 five-minute objects.
                assert_eq!(objects, 8, "{name}");
                let ddl = root().join(format!("deploy/athena/{name}.sql"));
                let endpoint = moto.trim_start_matches("http://").to_string();
                let got = python("ddl_read.py", &[ddl.display().to_string(), endpoint, bucket.clone(), "flows".into(), ACCOUNT.into(), REGION.into()]);
                assert_eq!(got["columns"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect::<Vec<_>>().join(" "), AWS_COLUMNS, "{name}");
                assert_eq!(got["files"].as_u64(), Some(objects as u64), "{name}: files through {}", got["glob"]);
                assert_eq!(sorted(&got["rows"]), want_rows, "{name}");
                assert_eq!((got["packets"].as_u64(), got["bytes"].as_u64()), (Some(packets), Some(bytes)), "{name}");
                let pi: BTreeMap<String, (u64, u64)> =
                    got["per_interface"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), (v[0].as_u64().unwrap(), v[1].as_u64().unwrap()))).collect();
                assert_eq!(pi, per_iface, "{name}");
                ddls += 1;
            }
        }
    }
    assert_eq!(ddls, std::fs::read_dir(root().join("deploy/athena")).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".sql") && e.as_ref().unwrap().file_name().to_string_lossy().starts_with("vpc_flow_logs_")).count());
}

/// pyarrow (not the crate that writes them) reads the agent's Parquet
/// objects by AWS's column names; every column chunk is PLAIN (+ RLE
/// definition levels), without a dictionary page, in format-1.0 data pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyarrow_reads_the_parquet_objects_by_name_and_they_are_v1_plain() {
    let moto = harness::moto();
    let s3 = harness::s3(moto).await;
    s3.create_bucket().bucket("lake-pyarrow").send().await.unwrap();
    let recs = records();
    let format = Format::default();
    ship("s3://lake-pyarrow?format=parquet", &format, &recs, &tmp("pyarrow")).await;
    let dir = tmp("pyarrow-files");
    std::fs::create_dir_all(&dir).unwrap();
    let mut args = vec!["version,account_id,interface_id,srcaddr,dstaddr,srcport,dstport,protocol,packets,bytes,start,end,action,log_status".to_string()];
    for (i, (_, body)) in harness::objects(&s3, "lake-pyarrow", "").await.iter().enumerate() {
        let p = dir.join(format!("{i}.log.parquet"));
        std::fs::write(&p, body).unwrap();
        args.push(p.display().to_string());
    }
    let files = args.len() - 1;
    assert_eq!(files, 8);
    let got = python("pyarrow_read.py", &args);
    let mut rows = Vec::new();
    for f in got.as_array().unwrap() {
        assert_eq!(f["schema"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect::<Vec<_>>().join(","), args[0]);
        assert_eq!(f["chunks"].as_array().unwrap().len(), 14);
        for c in f["chunks"].as_array().unwrap() {
            assert_eq!(c["encodings"], serde_json::json!(["PLAIN", "RLE"]), "{c}");
            assert_eq!(c["dictionary_page"], serde_json::json!(false), "{c}");
            assert_eq!(c["first_page"], serde_json::json!("DATA_PAGE"), "{c}");
        }
        rows.extend(sorted(&f["rows"]));
    }
    rows.sort();
    let mut want: Vec<String> = recs.iter().map(|r| format.line(r)).collect();
    want.sort();
    assert_eq!(rows, want);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn agent_bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_flowlog-agent"));
    c.env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", REGION)
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent");
    c
}

/// CSV text → interface → column → value, for the given columns.
fn csv_rows(text: &str, columns: &[&str]) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("a header").split(',').collect();
    lines
        .map(|l| {
            let v: BTreeMap<&str, &str> = header.iter().copied().zip(l.split(',')).collect();
            (v["interface"].to_string(), columns.iter().map(|c| (c.to_string(), v.get(c).unwrap_or_else(|| panic!("no column {c} in {header:?}")).to_string())).collect())
        })
        .collect()
}

/// `compare --emit-sql athena`, run by DuckDB over a text table (native)
/// and a Parquet table (agent) of deploy/athena/, gives the same figures
/// as `compare` reading the same objects: drops, count drift, split
/// records, flows moved beyond the tolerance, extra flows, an interface
/// mapped, NODATA on one side only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emitted_sql_in_duckdb_gives_the_report_of_compare() {
    let moto = harness::moto();
    let s3 = harness::s3(moto).await;
    let native = records();
    let mapped = "eni-0a1b2c3d4e5f60713";
    let (mut agent, mut dropped, mut moved) = (Vec::new(), 0, 0);
    for (i, r) in native.iter().enumerate() {
        let mut r = r.clone();
        if r.interface_id.as_deref() == Some(mapped) {
            r.interface_id = Some("eni-agent3".into());
        }
        if r.log_status != LogStatus::Ok {
            // NODATA only on two interfaces.
            if i % 2 == 0 {
                agent.push(r);
            }
            continue;
        }
        if i % 13 == 5 {
            dropped += 1;
            continue;
        }
        if i % 19 == 4 {
            moved += 1;
            r.start += 300;
            r.end += 300;
        }
        if i % 7 == 3 {
            r.packets = r.packets.map(|p| p + 1);
            r.bytes = r.bytes.map(|b| b + 100);
        }
        let p = r.packets.unwrap();
        if i % 17 == 2 && p >= 2 && r.end > r.start {
            let mid = r.start + (r.end - r.start) / 2;
            let (b, half) = (r.bytes.unwrap(), p / 2);
            agent.push(FlowRecord { end: mid, packets: Some(half), bytes: Some(b / 2), ..r.clone() });
            agent.push(FlowRecord { start: mid + 1, packets: Some(p - half), bytes: Some(b - b / 2), ..r });
            continue;
        }
        agent.push(r);
    }
    for k in 0..3u16 {
        let mut r = native[k as usize].clone();
        r.srcport = Some(9000 + k);
        agent.push(r);
    }
    for b in ["cmp-native", "cmp-agent"] {
        s3.create_bucket().bucket(b).send().await.unwrap();
    }
    ship("s3://cmp-native/flows", &ddl_format(), &native, &tmp("cmp-native")).await;
    ship("s3://cmp-agent/flows?format=parquet&hive&per-hour", &Format::default(), &agent, &tmp("cmp-agent")).await;

    let map = format!("eni-agent3={mapped}");
    let out = agent_bin()
        .args(["compare", "--native", "s3://cmp-native/flows", "--agent", "s3://cmp-agent/flows", "--aws-endpoint-url", moto])
        .args(["--interface-map", &map, "--output-format", "csv", "--no-progress"])
        .output()
        .unwrap();
    assert!(out.status.success(), "compare: {}", String::from_utf8_lossy(&out.stderr));
    let columns: Vec<&str> = flowlog_agent::compare::sql::COLUMNS.split(',').collect();
    let want = csv_rows(&String::from_utf8(out.stdout).unwrap(), &columns);
    // The data exercise every kind of difference.
    let all = &want["*"];
    let n = |c: &str| all[c].parse::<u64>().unwrap();
    assert_eq!((n("matched_flows"), n("only_native_flows"), n("only_agent_flows")), (400 - dropped - moved, dropped + moved, moved + 3));
    assert!(n("packet_mismatches") > 0 && n("native_nodata") == 4 && n("agent_nodata") == 2, "{all:?}");
    assert_eq!(want.len(), 5, "{:?}", want.keys());

    let out = agent_bin().args(["compare", "--emit-sql", "athena", "--interface-map", &map]).output().unwrap();
    assert!(out.status.success(), "--emit-sql: {}", String::from_utf8_lossy(&out.stderr));
    let query = tmp("cmp-query.sql");
    std::fs::write(&query, &out.stdout).unwrap();
    let ddl = |n: &str| root().join(format!("deploy/athena/{n}.sql")).display().to_string();
    let py = harness::ensure_lake();
    let endpoint = moto.trim_start_matches("http://").to_string();
    let args = [query.display().to_string(), endpoint, ACCOUNT.into(), REGION.into(), ddl("vpc_flow_logs_text_plain_daily"), "cmp-native".into(), "flows".into(), ddl("vpc_flow_logs_parquet_hive_hourly"), "cmp-agent".into(), "flows".into()];
    let out = Command::new(py).arg(root().join("flowlog-agent/tests/lake/compare_sql.py")).args(&args).output().unwrap();
    assert!(out.status.success(), "compare_sql.py: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().next(), Some(flowlog_agent::compare::sql::COLUMNS));
    assert_eq!(csv_rows(&text, &columns), want);
}
