//! `flowlog-agent compare` as a program: exit status, a large input within
//! bounded memory (peak RSS of the child), and S3 / CloudWatch Logs sources
//! against a moto server on loopback.

use flowlog_testkit::aws as harness;

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use flowlog_testkit::parquet::parquet_object;

const HEADER: &str = "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status";

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_flowlog-agent"));
    c.env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .env_remove("AWS_PROFILE");
    c
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("flowlog-compare-it-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn gz(text: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(text).unwrap();
    e.finish().unwrap()
}

#[allow(clippy::too_many_arguments)]
fn line(iface: &str, src: &str, dst: &str, sport: u16, dport: u16, proto: u8, packets: u64, bytes: u64, start: u64, end: u64) -> String {
    format!("2 123456789012 {iface} {src} {dst} {sport} {dport} {proto} {packets} {bytes} {start} {end} ACCEPT OK")
}

/// Runs the program; (exit code, stdout, stderr, peak RSS in KiB).
fn run(args: &[&str]) -> (i32, String, String, u64) {
    let mut child = bin().args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let t = std::thread::spawn(move || {
        let mut s = String::new();
        err.read_to_string(&mut s).unwrap();
        s
    });
    let mut stdout = String::new();
    out.read_to_string(&mut stdout).unwrap();
    let stderr = t.join().unwrap();
    // wait4 for this child's own resource usage (not that of other
    // children of the test process).
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid value; wait4 fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    // SAFETY: pid is our child, not yet reaped.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    assert_eq!(r, pid);
    std::mem::forget(child);
    let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { -1 };
    (code, stdout, stderr, ru.ru_maxrss as u64)
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

#[test]
fn exit_status_and_output_formats() {
    let d = tempdir("exit");
    let native = [
        HEADER.to_string(),
        line("eni-1", "10.0.0.1", "10.0.0.2", 1000, 443, 6, 10, 1000, 1_000_000, 1_000_030),
        line("eni-1", "10.0.0.1", "10.0.0.3", 1001, 53, 17, 1, 60, 1_000_010, 1_000_010),
    ]
    .join("\n");
    std::fs::write(d.join("native.log.gz"), gz(native.as_bytes())).unwrap();
    std::fs::write(d.join("agent.log"), line("eni-a", "10.0.0.1", "10.0.0.2", 1000, 443, 6, 9, 900, 1_000_001, 1_000_030) + "\n").unwrap();
    let (n, a) = (d.join("native.log.gz"), d.join("agent.log"));
    let base = ["compare", "--native", n.to_str().unwrap(), "--agent", a.to_str().unwrap(), "--interface-map", "eni-a=eni-1"];
    let (code, out, err, _) = run(&base);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("interface  flows n/a  matched"), "{out}");
    assert!(out.contains("\neni-1 "), "{out}");
    let (code, out, _, _) = run(&[&base[..], &["--max-missing-flows", "0", "--max-packet-delta-pct", "10"]].concat());
    assert_eq!(code, 3);
    assert!(out.contains("EXCEEDED: 1 flows only in native logs exceed --max-missing-flows 0\n"), "{out}");
    assert!(out.contains("EXCEEDED: packet delta -2 (-18.18%) exceeds --max-packet-delta-pct 10\n"), "{out}");
    let (code, out, _, _) = run(&[&base[..], &["--output-format", "json", "--max-packet-delta-pct", "20"]].concat());
    assert_eq!(code, 0);
    let j = json(&out);
    assert_eq!(j["overall"]["matched_flows"], 1);
    assert_eq!(j["overall"]["start_skew"]["max_signed"], 1);
    assert_eq!(j["interfaces"]["eni-1"]["only_native_flows"], 1);
    let (code, out, err, _) = run(&[&base[..], &["--output-format", "csv", "--max-extra-flows", "0", "--max-skew", "0"]].concat());
    assert_eq!(code, 3);
    assert_eq!(out.lines().count(), 3);
    assert_eq!(err, "exceeded: start/end skew of 1s exceeds --max-skew 0\n");
    // Unreadable input: status 1 and the line.
    std::fs::write(d.join("agent.log"), "2 123 eni-1 10.0.0.1\n").unwrap();
    let (code, _, err, _) = run(&base);
    assert_eq!(code, 1);
    assert_eq!(
        err,
        format!("error: agent: {}: line 1: expected 14 fields ({HEADER}), found 4\n", a.display())
    );
    let (code, _, err, _) = run(&["compare", "--native", "s3://", "--agent", "x"]);
    assert_eq!(code, 2, "{err}");
    std::fs::remove_dir_all(&d).unwrap();
}

/// Writes `n` records: `flows` distinct flows per 60-second window, each
/// one packet; the agent's copy counts 2 packets for every 1000th record.
fn write_large(dir: &Path, n: u64, flows: u64) -> (PathBuf, PathBuf) {
    let np = dir.join("native.log.gz");
    let ap = dir.join("agent.log");
    let mut native = flate2::write::GzEncoder::new(std::io::BufWriter::new(std::fs::File::create(&np).unwrap()), flate2::Compression::fast());
    let mut agent = std::io::BufWriter::new(std::fs::File::create(&ap).unwrap());
    writeln!(native, "{HEADER}").unwrap();
    for i in 0..n {
        let (w, f) = (i / flows, i % flows);
        let port = ((w * flows + f) % 60_000) as u16;
        let src = Ipv4Addr::from(0x0a00_0000 + (w as u32 / 10)).to_string();
        let t = 1_700_000_000 + w * 60 + f % 50;
        writeln!(native, "{}", line("eni-0123456789abcdef0", &src, "10.1.0.1", port, 443, 6, 1, 100, t, t)).unwrap();
        let p = if i % 1000 == 0 { 2 } else { 1 };
        writeln!(agent, "{}", line("eni-0123456789abcdef0", &src, "10.1.0.1", port, 443, 6, p, 100 * p, t, t + 1)).unwrap();
    }
    native.finish().unwrap().into_inner().unwrap().sync_all().unwrap();
    agent.into_inner().unwrap().sync_all().unwrap();
    (np, ap)
}

/// A million records per side (≈95 MB of text each): the comparison's
/// peak RSS stays far below what holding the records would take.
#[test]
fn large_input_in_bounded_memory() {
    let d = tempdir("large");
    let n = 1_000_000u64;
    let (np, ap) = write_large(&d, n, 1000);
    let size = std::fs::metadata(&ap).unwrap().len();
    let t0 = Instant::now();
    let (code, out, err, rss_kib) = run(&["compare", "--native", np.to_str().unwrap(), "--agent", ap.to_str().unwrap(), "--output-format", "json"]);
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(code, 0, "{err}");
    let j = json(&out);
    let o = &j["overall"];
    assert_eq!(o["native"]["records"], n);
    assert_eq!(o["agent"]["records"], n);
    assert_eq!(o["matched_flows"], n);
    assert_eq!(o["only_native_flows"], 0);
    assert_eq!(o["packets"]["delta"], n / 1000);
    assert_eq!(o["packet_mismatches"], n / 1000);
    assert_eq!(o["end_skew"]["flows_skewed"], n);
    let peak = j["peak_open_flows"].as_u64().unwrap();
    eprintln!(
        "large input: 2 × {n} records ({} MB of agent text) in {secs:.1} s = {:.0} records/s (debug build), peak RSS {} MiB, peak open flows {peak}",
        size / 1_000_000,
        2.0 * n as f64 / secs,
        rss_kib / 1024
    );
    // Reorder window 900 s + tolerance: about 16 windows of 1000 flows.
    assert!(peak <= 17_000, "{peak}");
    assert!(rss_kib < 64 * 1024, "peak RSS {rss_kib} KiB");
    std::fs::remove_dir_all(&d).unwrap();
}

// ---- S3 and CloudWatch Logs against moto ----

struct Moto(Child, u16);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// moto from the shared test-tools venv (installed from PyPI when missing,
/// pinned like the destination tests).
fn moto() -> Option<Moto> {
    let python = harness::ensure_moto();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(&python)
        .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let m = Moto(child, port);
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(60), "moto did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(m)
}

/// `yyyy/mm/dd` and `yyyymmddThhmmZ` of Unix seconds (UTC).
fn utc(t: u64) -> (String, String) {
    let (days, secs) = ((t / 86400) as i64, t % 86400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (format!("{y:04}/{m:02}/{d:02}"), format!("{y:04}{m:02}{d:02}T{:02}{:02}Z", secs / 3600, secs % 3600 / 60))
}

#[test]
fn s3_prefix_against_cloudwatch_log_group() {
    let Some(m) = moto() else { return };
    let url = format!("http://127.0.0.1:{}", m.1);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let t0 = (now - 7200) / 300 * 300;
    // Native: F1 10 packets, F2 5, F3 only here; in a gzip text object
    // (header, another field order) and a Parquet object.
    let custom = "interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end log-status action account-id version";
    let nl = |iface: &str, src: &str, sport: u16, packets: u64, start: u64| {
        format!("{iface} {src} 10.0.0.9 {sport} 443 6 {packets} {} {start} {} OK ACCEPT unknown 2", packets * 100, start + 20)
    };
    let text = format!("{custom}\n{}\n{}\n", nl("eni-1", "10.0.0.1", 1000, 10, t0 + 10), nl("eni-1", "10.0.0.2", 1001, 5, t0 + 15));
    let parquet = parquet_object(custom, &[nl("eni-1", "10.0.0.3", 1002, 7, t0 + 330), "eni-1 - - - - - - - 0 0 NODATA - unknown 2".to_string()]).unwrap();
    let (day, stamp) = utc(t0);
    let (_, stamp2) = utc(t0 + 300);
    let prefix = format!("flows/AWSLogs/123456789012/vpcflowlogs/us-east-1/{day}");
    // Agent: CloudWatch events in its own format without interface-id (the
    // stream names it): F1 10, F2 4, F4 only here.
    let afmt = "${srcaddr} ${dstaddr} ${srcport} ${dstport} ${protocol} ${packets} ${bytes} ${start} ${end} ${action} ${log-status}";
    let al = |src: &str, sport: u16, packets: u64, start: u64| format!("{src} 10.0.0.9 {sport} 443 6 {packets} {} {start} {} ACCEPT OK", packets * 100, start + 20);
    let events = [al("10.0.0.1", 1000, 10, t0 + 11), al("10.0.0.2", 1001, 4, t0 + 15), al("10.0.0.4", 1003, 3, t0 + 400)];

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        use aws_sdk_cloudwatchlogs::types::InputLogEvent;
        let creds = aws_sdk_s3::config::Credentials::new("testing", "testing", None, None, "test");
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring))
            .build_https();
        let sdk = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(&url)
            .credentials_provider(aws_sdk_s3::config::SharedCredentialsProvider::new(creds))
            .http_client(http)
            .build();
        let s3 = aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(&sdk).force_path_style(true).build());
        s3.create_bucket().bucket("native-logs").send().await.unwrap();
        let put = |key: String, body: Vec<u8>| s3.put_object().bucket("native-logs").key(key).body(body.into()).send();
        put(format!("{prefix}/123456789012_vpcflowlogs_us-east-1_fl-1_{stamp}_0a0b0c0d.log.gz"), gz(text.as_bytes())).await.unwrap();
        put(format!("{prefix}/123456789012_vpcflowlogs_us-east-1_fl-1_{stamp2}_0a0b0c0e.log.parquet"), parquet).await.unwrap();
        put("elsewhere/x.log.gz".into(), b"not read".to_vec()).await.unwrap();
        let logs = aws_sdk_cloudwatchlogs::Client::new(&sdk);
        logs.create_log_group().log_group_name("/flowlog/agent").send().await.unwrap();
        logs.create_log_stream().log_group_name("/flowlog/agent").log_stream_name("eni-1-all").send().await.unwrap();
        let ev = events.iter().map(|e| {
            let start: u64 = e.split(' ').nth(7).unwrap().parse().unwrap();
            InputLogEvent::builder().timestamp(start as i64 * 1000).message(e).build().unwrap()
        });
        logs.put_log_events().log_group_name("/flowlog/agent").log_stream_name("eni-1-all").set_log_events(Some(ev.collect())).send().await.unwrap();
        // Another interface's stream: read only without ?stream=.
        logs.create_log_stream().log_group_name("/flowlog/agent").log_stream_name("eni-9-all").send().await.unwrap();
        let e = InputLogEvent::builder().timestamp((t0 as i64 + 20) * 1000).message(al("10.0.0.5", 1005, 2, t0 + 20)).build().unwrap();
        logs.put_log_events().log_group_name("/flowlog/agent").log_stream_name("eni-9-all").log_events(e).send().await.unwrap();
    });

    let args = [
        "compare",
        "--native",
        "s3://native-logs/flows/",
        "--agent",
        "cloudwatch:///flowlog/agent?stream=eni-1-all",
        "--agent-format",
        afmt,
        "--aws-endpoint-url",
        &url,
        "--cloudwatch-slice",
        "120",
        "--output-format",
        "json",
    ];
    let (code, out, err, _) = run(&args);
    assert_eq!(code, 0, "{err}");
    let j = json(&out);
    let o = &j["overall"];
    assert_eq!(j["interfaces"].as_object().unwrap().keys().collect::<Vec<_>>(), ["eni-1"]);
    assert_eq!((o["native"]["records"].as_u64(), o["agent"]["records"].as_u64()), (Some(4), Some(3)));
    assert_eq!((o["matched_flows"].as_u64(), o["only_native_flows"].as_u64(), o["only_agent_flows"].as_u64()), (Some(2), Some(1), Some(1)));
    assert_eq!((o["packets"]["native"].as_u64(), o["packets"]["agent"].as_u64()), (Some(22), Some(17)));
    assert_eq!((o["matched_packets"]["delta"].as_i64(), o["start_skew"]["max_signed"].as_i64()), (Some(-1), Some(1)));
    assert_eq!(o["native"]["nodata"], 1);

    // The whole group: eni-9's stream too, its interface from the stream name.
    let mut all = args.to_vec();
    all[4] = "cloudwatch:///flowlog/agent";
    let (code, out, err, _) = run(&all);
    assert_eq!(code, 0, "{err}");
    let j = json(&out);
    assert_eq!(j["interfaces"].as_object().unwrap().keys().collect::<Vec<_>>(), ["eni-1", "eni-9"]);
    assert_eq!((j["overall"]["agent"]["records"].as_u64(), j["overall"]["only_agent_flows"].as_u64()), (Some(4), Some(2)));
    assert_eq!(j["interfaces"]["eni-9"]["only_agent_packets"], 2);

    // One stream, a time range, and errors naming the object.
    let since = (t0 + 300).to_string();
    let args2 = [&args[..], &["--since", &since]].concat();
    let (code, out, err, _) = run(&args2);
    assert_eq!(code, 0, "{err}");
    let o = json(&out)["overall"].clone();
    assert_eq!((o["matched_flows"].as_u64(), o["only_native_flows"].as_u64(), o["only_agent_flows"].as_u64()), (Some(0), Some(1), Some(1)));
    let mut args3 = args.to_vec();
    args3[2] = "s3://native-logs/elsewhere";
    let (code, _, err, _) = run(&args3);
    assert_eq!(code, 1);
    assert_eq!(err, "error: native: s3://native-logs/elsewhere/x.log.gz: line 1: expected 14 fields (version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status), found 2\n");
    args3[2] = "s3://no-such-bucket/x";
    let (code, _, err, _) = run(&args3);
    assert_eq!(code, 1);
    assert!(err.starts_with("error: native: listing s3://no-such-bucket/x: ") && err.contains("NoSuchBucket"), "{err}");
    drop(m);
}

/// The worked example of the README: its command, run on the committed
/// files, prints what the README shows.
#[test]
fn readme_example_is_current() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let fmt = "${version} ${account-id} ${interface-id} ${srcaddr} ${dstaddr} ${srcport} ${dstport} ${protocol} ${packets} ${bytes} ${start} ${end} ${action} ${log-status} ${tcp-flags}";
    let native = root.join("examples/compare/native");
    let agent = root.join("examples/compare/agent.txt");
    let args = [
        "compare",
        "--native",
        native.to_str().unwrap(),
        "--agent",
        agent.to_str().unwrap(),
        "--agent-format",
        fmt,
        "--interface-map",
        "eni-2ee1fb4213a13053a=eni-0f9e8d7c6b5a40312",
        "--max-packet-delta-pct",
        "1",
        "--max-missing-flows",
        "0",
    ];
    for a in ["--native examples/compare/native --agent examples/compare/agent.txt", fmt, "--interface-map eni-2ee1fb4213a13053a=eni-0f9e8d7c6b5a40312 --max-packet-delta-pct 1 --max-missing-flows 0"] {
        assert!(readme.contains(a), "README lacks {a:?}");
    }
    let (code, out, err, _) = run(&args);
    assert_eq!(code, 3, "{err}");
    assert!(readme.contains(&format!("{out}$ echo $?\n3\n")), "README example output differs; now:\n{out}");
    let (_, out, _, _) = run(&[&args[..], &["--output-format", "json"]].concat());
    let o = &json(&out)["overall"];
    let want = serde_json::json!({
        "matched_flows": o["matched_flows"], "only_native_flows": o["only_native_flows"], "only_agent_flows": o["only_agent_flows"],
        "packets": o["packets"], "matched_packets": o["matched_packets"],
    });
    let shown = readme.split("jq '.overall | {matched_flows, only_native_flows, only_agent_flows, packets, matched_packets}'\n").nth(1).unwrap();
    let shown: serde_json::Value = serde_json::from_str(&shown[..shown.find("\n}\n").unwrap() + 2]).unwrap();
    assert_eq!(shown, want);
}
