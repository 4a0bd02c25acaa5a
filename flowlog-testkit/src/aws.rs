//! Test harness for the AWS destinations: a moto server (installed from PyPI
//! when missing) on a free loopback port, SDK clients pointed at it, and a
//! loopback proxy in front of it that can be taken down (outage) or answer
//! chosen requests with throttling / 5xx / partial failures.

use std::{
    collections::VecDeque,
    net::{SocketAddr, TcpListener as StdListener},
    os::unix::process::CommandExt,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, Request, Response};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioIo},
};
use tokio::{net::TcpSocket, task::JoinSet};

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Dummy credentials, region us-east-1, no instance metadata (never leave
/// the machine).
pub fn test_env() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("flowlog_agent=info")))
            .with_test_writer()
            .try_init();
        for (k, v) in [
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_SESSION_TOKEN", "testing"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_DEFAULT_REGION", "us-east-1"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("AWS_CONFIG_FILE", "/nonexistent"),
            ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent"),
        ] {
            std::env::set_var(k, v);
        }
        std::env::remove_var("AWS_PROFILE");
    });
}

/// moto pinned: 5.2.1 answers CompleteMultipartUpload with a wrong XML
/// root (getmoto/moto#10055), which the Rust SDK refuses.
pub const MOTO_VERSION: &str = "5.2.5";

/// The Python of the test tools venv (`target/test-tools/moto`, shared with
/// `cargo xtask setup`), or FLOWLOG_MOTO_PYTHON.
pub fn moto_python() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("FLOWLOG_MOTO_PYTHON") {
        return p.into();
    }
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-tools/moto/bin/python")
}

fn moto_ok(py: &std::path::Path) -> bool {
    Command::new(py)
        .args(["-c", &format!("import moto, moto.server, flask; assert moto.__version__ == '{MOTO_VERSION}'")])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs moto[server] (pinned) from PyPI into the venv when missing.
pub fn ensure_moto() -> std::path::PathBuf {
    ensure_venv(moto_python(), &[&format!("moto[server]=={MOTO_VERSION}")], moto_ok)
}

/// The venv of `py` with `packages` from PyPI, created and filled unless
/// `ok` already holds. Tests of one binary run in parallel: one pip at a time.
fn ensure_venv(py: std::path::PathBuf, packages: &[&str], ok: fn(&std::path::Path) -> bool) -> std::path::PathBuf {
    static INSTALL: Mutex<()> = Mutex::new(());
    let _one = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if ok(&py) {
        return py;
    }
    let venv = py.parent().unwrap().parent().unwrap().to_path_buf();
    eprintln!("installing {} from PyPI into {}", packages.join(" "), venv.display());
    if !py.exists() {
        let st = Command::new("python3").arg("-m").arg("venv").arg(&venv).status().expect("python3 -m venv");
        assert!(st.success(), "python3 -m venv {} failed", venv.display());
    }
    let st = Command::new(&py).args(["-m", "pip", "install", "--quiet"]).args(packages).status().expect("pip");
    assert!(st.success(), "pip install {} failed", packages.join(" "));
    assert!(ok(&py), "{} installed but not importable", packages.join(" "));
    py
}

/// PyPI packages of the data-lake tests (DuckDB with its httpfs extension
/// from PyPI: DuckDB's own extension repository is not reachable from CI;
/// pyarrow as a second Parquet reader). Same list in `cargo xtask setup`.
pub const LAKE_PACKAGES: [&str; 3] = ["duckdb==1.5.5", "duckdb-extension-httpfs==1.5.5", "pyarrow==26.0.1"];

fn lake_ok(py: &std::path::Path) -> bool {
    Command::new(py)
        .args(["-c", "import duckdb, duckdb_extension_httpfs, pyarrow; assert duckdb.__version__ == '1.5.5' and pyarrow.__version__ == '26.0.1'"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The Python of `target/test-tools/lake` (DuckDB, pyarrow), installed from
/// PyPI when missing, or FLOWLOG_LAKE_PYTHON.
pub fn ensure_lake() -> std::path::PathBuf {
    let py = match std::env::var_os("FLOWLOG_LAKE_PYTHON") {
        Some(p) => std::path::PathBuf::from(p),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-tools/lake/bin/python"),
    };
    ensure_venv(py, &LAKE_PACKAGES, lake_ok)
}

/// The moto server shared by the tests of this binary. It dies with the
/// test process (PR_SET_PDEATHSIG from a thread that never ends).
pub fn moto() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        test_env();
        let py = ensure_moto();
        let port = free_port();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut cmd = Command::new(&py);
            cmd.args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
                .env("S3_UPLOAD_PART_MIN_SIZE", "1024")
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            // SAFETY: prctl is async-signal-safe.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let mut child = cmd.spawn().expect("starting moto_server");
            tx.send(child.id()).unwrap();
            // This thread lives as long as moto (PR_SET_PDEATHSIG is per thread).
            let _ = child.wait();
        });
        rx.recv().unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let t = Instant::now();
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(60), "moto_server did not start on port {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        url
    })
}

pub async fn sdk(endpoint: &str) -> aws_config::SdkConfig {
    test_env();
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(
            aws_smithy_http_client::Builder::new()
                .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring))
                .build_https(),
        )
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .load()
        .await
}

pub async fn s3(endpoint: &str) -> aws_sdk_s3::Client {
    let c = sdk(endpoint).await;
    aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(&c).force_path_style(true).build())
}

pub async fn logs(endpoint: &str) -> aws_sdk_cloudwatchlogs::Client {
    aws_sdk_cloudwatchlogs::Client::new(&sdk(endpoint).await)
}

pub async fn firehose(endpoint: &str) -> aws_sdk_firehose::Client {
    aws_sdk_firehose::Client::new(&sdk(endpoint).await)
}

/// Every object under `prefix`: (key, body), sorted by key.
pub async fn objects(c: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut token = None;
    loop {
        let r = c.list_objects_v2().bucket(bucket).prefix(prefix).set_continuation_token(token.clone()).send().await.unwrap();
        for o in r.contents() {
            let k = o.key().unwrap().to_string();
            let body = c.get_object().bucket(bucket).key(&k).send().await.unwrap().body.collect().await.unwrap().into_bytes().to_vec();
            out.push((k, body));
        }
        token = r.next_continuation_token().map(str::to_string);
        if token.is_none() {
            break;
        }
    }
    out.sort();
    out
}

/// Every event of a stream, oldest first: (timestamp ms, message).
pub async fn log_events(c: &aws_sdk_cloudwatchlogs::Client, group: &str, stream: &str) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let r = c.get_log_events().log_group_name(group).log_stream_name(stream).start_from_head(true).set_next_token(token.clone()).send().await.unwrap();
        let n = r.events().len();
        out.extend(r.events().iter().map(|e| (e.timestamp().unwrap(), e.message().unwrap().to_string())));
        let next = r.next_forward_token().map(str::to_string);
        if n == 0 || next == token {
            break;
        }
        token = next;
    }
    out
}

/// A Firehose delivery stream that moto delivers to `bucket`.
pub async fn create_delivery_stream(endpoint: &str, name: &str, bucket: &str) {
    s3(endpoint).await.create_bucket().bucket(bucket).send().await.unwrap();
    firehose(endpoint)
        .await
        .create_delivery_stream()
        .delivery_stream_name(name)
        .extended_s3_destination_configuration(
            aws_sdk_firehose::types::ExtendedS3DestinationConfiguration::builder()
                .role_arn("arn:aws:iam::123456789012:role/firehose")
                .bucket_arn(format!("arn:aws:s3:::{bucket}"))
                .prefix("fh/")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
}

/// The `message` of every record moto wrote for a delivery stream (its
/// objects are the concatenated record payloads).
pub async fn firehose_messages(endpoint: &str, bucket: &str) -> Vec<String> {
    let c = s3(endpoint).await;
    let mut out = Vec::new();
    for (_, body) in objects(&c, bucket, "fh/").await {
        for v in serde_json::Deserializer::from_slice(&body).into_iter::<serde_json::Value>() {
            let v = v.unwrap();
            assert_eq!(v.as_object().unwrap().len(), 1, "{v}");
            out.push(v["message"].as_str().unwrap().to_string());
        }
    }
    out
}

pub async fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ------------------------------------------------------------------- proxy

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// 400 ThrottlingException (JSON protocols) / 503 SlowDown (S3).
    Throttle,
    /// 500 ServiceUnavailable / InternalError.
    Error500,
    /// Firehose only: forward the first half of the records, report the
    /// second half as failed.
    HalfFail,
    /// CloudWatch only: forward, then add rejectedLogEventsInfo
    /// (tooOldLogEventEndIndex 1) to the answer.
    RejectTooOld,
    /// 403 AccessDenied (S3) / 400 UnrecognizedClientException (JSON).
    AccessDenied,
}

/// `fault` for the next `count` requests whose target (X-Amz-Target, or
/// `METHOD /path` for S3) contains `matches`.
#[derive(Clone, Debug)]
pub struct Rule {
    pub matches: String,
    pub fault: Fault,
    pub count: u32,
}

#[derive(Default)]
struct Ctl {
    rules: VecDeque<Rule>,
}

pub struct Proxy {
    pub port: u16,
    pub url: String,
    upstream: String,
    ctl: Arc<Mutex<Ctl>>,
    pub faults_served: Arc<AtomicU64>,
    pub forwarded: Arc<AtomicU64>,
    tasks: Option<JoinSet<()>>,
}

fn target_of(req: &Request<Incoming>) -> String {
    match req.headers().get("x-amz-target") {
        Some(t) => t.to_str().unwrap_or("").to_string(),
        None => format!("{} {}", req.method(), req.uri().path()),
    }
}

fn fault_response(fault: Fault, s3: bool) -> Response<Full<Bytes>> {
    let (status, body, ctype) = match (fault, s3) {
        (Fault::Throttle, false) => (400, r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#.to_string(), "application/x-amz-json-1.1"),
        (Fault::Error500, false) => (500, r#"{"__type":"ServiceUnavailableException","message":"injected"}"#.to_string(), "application/x-amz-json-1.1"),
        (Fault::Throttle, true) => (503, "<Error><Code>SlowDown</Code><Message>Reduce your request rate.</Message></Error>".to_string(), "application/xml"),
        (Fault::AccessDenied, true) => (403, "<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>".to_string(), "application/xml"),
        (Fault::AccessDenied, false) => (400, r#"{"__type":"UnrecognizedClientException","message":"The security token included in the request is invalid."}"#.to_string(), "application/x-amz-json-1.1"),
        (_, true) => (500, "<Error><Code>InternalError</Code><Message>injected</Message></Error>".to_string(), "application/xml"),
        (Fault::HalfFail | Fault::RejectTooOld, false) => unreachable!(),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    r.headers_mut().insert("content-type", ctype.parse().unwrap());
    r
}

async fn handle(
    req: Request<Incoming>,
    upstream: String,
    ctl: Arc<Mutex<Ctl>>,
    faults: Arc<AtomicU64>,
    forwarded: Arc<AtomicU64>,
    client: Client<HttpConnector, Full<Bytes>>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let target = target_of(&req);
    let s3 = !req.headers().contains_key("x-amz-target");
    let fault = {
        let mut c = ctl.lock().unwrap();
        let mut hit = None;
        for r in c.rules.iter_mut() {
            if r.count > 0 && target.contains(&r.matches) {
                r.count -= 1;
                hit = Some(r.fault);
                break;
            }
        }
        c.rules.retain(|r| r.count > 0);
        hit
    };
    let (parts, body) = req.into_parts();
    let mut body = body.collect().await?.to_bytes();
    if let Some(f) = fault {
        faults.fetch_add(1, Ordering::Relaxed);
        if f != Fault::HalfFail && f != Fault::RejectTooOld {
            return Ok(fault_response(f, s3));
        }
    }
    let mut failed_tail = 0usize;
    if fault == Some(Fault::HalfFail) {
        let mut v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let recs = v["Records"].as_array_mut().unwrap();
        let keep = recs.len() / 2;
        failed_tail = recs.len() - keep;
        recs.truncate(keep);
        body = Bytes::from(serde_json::to_vec(&v).unwrap());
    }
    let uri = format!("{upstream}{}", parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
    let mut fwd = Request::builder().method(parts.method.clone()).uri(uri);
    for (k, v) in parts.headers.iter() {
        if k != "content-length" && k != "host" {
            fwd = fwd.header(k, v);
        }
    }
    // The signature covers the original host header.
    if let Some(h) = parts.headers.get("host") {
        fwd = fwd.header("host", h);
    }
    let resp = client.request(fwd.body(Full::new(body)).unwrap()).await.expect("forwarding to moto");
    forwarded.fetch_add(1, Ordering::Relaxed);
    let (rparts, rbody) = resp.into_parts();
    let mut rbytes = rbody.collect().await?.to_bytes();
    if failed_tail > 0 {
        let mut v: serde_json::Value = serde_json::from_slice(&rbytes).unwrap();
        let rr = v["RequestResponses"].as_array_mut().unwrap();
        for _ in 0..failed_tail {
            rr.push(serde_json::json!({"ErrorCode": "ServiceUnavailableException", "ErrorMessage": "Slow down."}));
        }
        v["FailedPutCount"] = serde_json::json!(failed_tail);
        rbytes = Bytes::from(serde_json::to_vec(&v).unwrap());
    }
    if fault == Some(Fault::RejectTooOld) {
        let mut v: serde_json::Value = serde_json::from_slice(&rbytes).unwrap_or_else(|_| serde_json::json!({}));
        v["rejectedLogEventsInfo"] = serde_json::json!({"tooOldLogEventEndIndex": 1});
        rbytes = Bytes::from(serde_json::to_vec(&v).unwrap());
    }
    let mut out = Response::from_parts(rparts, Full::new(rbytes));
    out.headers_mut().remove("content-length");
    Ok(out)
}

impl Proxy {
    pub async fn start(upstream: &str) -> Proxy {
        let port = free_port();
        let mut p = Proxy {
            port,
            url: format!("http://127.0.0.1:{port}"),
            upstream: upstream.to_string(),
            ctl: Default::default(),
            faults_served: Default::default(),
            forwarded: Default::default(),
            tasks: None,
        };
        p.up().await;
        p
    }

    pub fn inject(&self, rule: Rule) {
        self.ctl.lock().unwrap().rules.push_back(rule);
    }

    pub fn pending_faults(&self) -> u32 {
        self.ctl.lock().unwrap().rules.iter().map(|r| r.count).sum()
    }

    /// Stops listening and cuts every open connection: the "server" is down.
    pub fn down(&mut self) {
        if let Some(mut t) = self.tasks.take() {
            t.abort_all();
        }
    }

    /// Listens again on the same port.
    pub async fn up(&mut self) {
        let sock = TcpSocket::new_v4().unwrap();
        sock.set_reuseaddr(true).unwrap();
        sock.bind(SocketAddr::from(([127, 0, 0, 1], self.port))).unwrap();
        let listener = sock.listen(128).unwrap();
        let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let (upstream, ctl, faults, fwd) = (self.upstream.clone(), self.ctl.clone(), self.faults_served.clone(), self.forwarded.clone());
        let conns = Arc::new(Mutex::new(JoinSet::new()));
        let mut set = JoinSet::new();
        set.spawn(async move {
            // Connection tasks live in `conns`, dropped (aborted) with this task.
            let _keep = conns.clone();
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (upstream, ctl, faults, fwd, client) = (upstream.clone(), ctl.clone(), faults.clone(), fwd.clone(), client.clone());
                conns.lock().unwrap().spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(req, upstream.clone(), ctl.clone(), faults.clone(), fwd.clone(), client.clone()));
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        self.tasks = Some(set);
    }
}

/// A moto server of its own inside network namespace `ns`, on
/// 127.0.0.1:`port` there, answering once `start` returns; killed on drop.
/// For the tests that run the agent binary in a namespace.
pub struct NetnsMoto {
    child: std::process::Child,
    pub endpoint: String,
}

impl NetnsMoto {
    pub fn start(ns: &str, port: u16) -> NetnsMoto {
        let py = ensure_moto();
        test_env();
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(&py)
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ip netns exec ... moto.server");
        let mut moto = NetnsMoto { child, endpoint: format!("http://127.0.0.1:{port}") };
        let up = crate::netns::in_netns(ns, move || {
            let until = Instant::now() + Duration::from_secs(60);
            while Instant::now() < until {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            false
        });
        if !up {
            let _ = moto.child.kill();
            panic!("moto not listening on 127.0.0.1:{port} in {ns} after 60 s");
        }
        moto
    }
}

impl Drop for NetnsMoto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
