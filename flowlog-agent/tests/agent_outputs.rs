//! The agent binary end to end with every destination at once: two network
//! namespaces joined by a veth pair, the agent and a moto server in
//! namespace `a`, real UDP traffic, SIGTERM; then what reached the local
//! directory, S3, CloudWatch Logs and Firehose is compared record by record
//! with the agent's own `file:` output. Needs root.

use flowlog_testkit::aws as harness;

use std::{
    fs,
    io::{BufRead, BufReader, Read},
    net::UdpSocket,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use flowlog_testkit::require_root;

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    thread::spawn(move || {
        let fd = fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: valid netns fd; only this thread changes namespace.
        assert_eq!(unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns {path}");
        f()
    })
    .join()
    .unwrap()
}

/// Namespaces `fo<pid><tag>a`/`…b`, veth between them, 10.203.0.1/.2; removed on drop.
struct Topo {
    a: String,
    b: String,
}

impl Topo {
    fn new(tag: u8) -> Topo {
        let p = format!("{}{tag}", std::process::id() % 100_000);
        let t = Topo { a: format!("fo{p}a"), b: format!("fo{p}b") };
        let (ia, ib) = (format!("fo{p}x"), format!("fo{p}y"));
        for ns in [&t.a, &t.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
            sh(&["ip", "netns", "add", ns]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        sh(&["ip", "link", "add", &ia, "netns", &t.a, "type", "veth", "peer", "name", &ib, "netns", &t.b]);
        sh(&["ip", "-n", &t.a, "addr", "add", "10.203.0.1/24", "dev", &ia]);
        sh(&["ip", "-n", &t.b, "addr", "add", "10.203.0.2/24", "dev", &ib]);
        sh(&["ip", "-n", &t.a, "link", "set", &ia, "up"]);
        sh(&["ip", "-n", &t.b, "link", "set", &ib, "up"]);
        t
    }
    fn a_if(&self) -> String {
        format!("{}x", &self.a[..self.a.len() - 1])
    }
}

impl Drop for Topo {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn lines_of_text_files(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(".log.gz") {
                let mut s = String::new();
                flate2::read::GzDecoder::new(&fs::read(&p).unwrap()[..]).read_to_string(&mut s).unwrap();
                out.extend(s.lines().skip(1).map(str::to_string));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn agent_delivers_to_every_destination_at_once() {
    if !require_root() {
        return;
    }
    let py = harness::ensure_moto();
    harness::test_env();
    let t = Topo::new(1);
    let port = 4566;
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut moto = Command::new("ip")
        .args(["netns", "exec", &t.a])
        .arg(&py)
        .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ep = endpoint.clone();
    in_netns(&t.a, move || {
        for _ in 0..600 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            harness::s3(&ep).await.create_bucket().bucket("agent-e2e").send().await.unwrap();
            harness::create_delivery_stream(&ep, "agent-e2e", "agent-e2e-fh").await;
        })
    });

    let tmp: PathBuf = std::env::temp_dir().join(format!("flowlog-agent-outputs-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).unwrap();
    let mut agent = Command::new("ip")
        .args(["netns", "exec", &t.a, env!("CARGO_BIN_EXE_flowlog-agent"), "--iface", &t.a_if(), "--interval", "1"])
        .args(["--account-id", "123456789012", "--region", "us-east-1", "--aws-endpoint-url", &endpoint, "--flow-log-id", "fl-0e2e0e2e0e2e0e2e0"])
        .args(["--output", &format!("file:{}", tmp.join("all.log").display())])
        .args(["--output", &format!("dir:{}", tmp.join("dir").display())])
        .args(["--output", "s3://agent-e2e/p", "--output", "cloudwatch:agent-e2e", "--output", "firehose:agent-e2e"])
        .args(["--spool-dir", &tmp.join("spool").to_string_lossy(), "--file-interval", "1"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let (ready_tx, ready_rx) = mpsc::channel();
    let pipe = agent.stderr.take().unwrap();
    let log = thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if line.contains(" ready ") {
                let _ = ready_tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    if ready_rx.recv_timeout(Duration::from_secs(30)).is_err() {
        let _ = agent.kill();
        let _ = moto.kill();
        panic!("agent not ready: {}", log.join().unwrap());
    }
    // Traffic from b to a over 3 windows, several ports.
    in_netns(&t.b, || {
        let s = UdpSocket::bind("10.203.0.2:0").unwrap();
        for i in 0..30u16 {
            for port in 0..20u16 {
                s.send_to(&[0u8; 100], ("10.203.0.1", 9000 + port)).unwrap();
            }
            if i % 10 == 9 {
                thread::sleep(Duration::from_millis(1000));
            }
        }
    });
    thread::sleep(Duration::from_millis(1200));
    // SAFETY: plain kill(2) of our child.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let st = agent.wait().unwrap();
    let log = log.join().unwrap();
    assert!(st.success(), "agent: {st}\n{log}");

    let mut want: Vec<String> = fs::read_to_string(tmp.join("all.log")).unwrap().lines().map(str::to_string).collect();
    want.sort();
    assert!(want.iter().filter(|l| l.ends_with(" OK")).count() >= 20, "{want:?}");
    assert_eq!(lines_of_text_files(&tmp.join("dir")), want, "dir:\n{log}");

    let ep = endpoint.clone();
    let want2 = want.clone();
    in_netns(&t.a, move || {
        tokio::runtime::Runtime::new().unwrap().block_on(async move {
            let s3 = harness::s3(&ep).await;
            let mut got = Vec::new();
            for (key, body) in harness::objects(&s3, "agent-e2e", "p/").await {
                assert!(key.starts_with("p/AWSLogs/123456789012/vpcflowlogs/us-east-1/") && key.contains("_fl-0e2e0e2e0e2e0e2e0_"), "{key}");
                let mut s = String::new();
                flate2::read::GzDecoder::new(&body[..]).read_to_string(&mut s).unwrap();
                got.extend(s.lines().skip(1).map(str::to_string));
            }
            got.sort();
            assert_eq!(got, want2, "S3");
            let logs = harness::logs(&ep).await;
            let mut got = Vec::new();
            for st in logs.describe_log_streams().log_group_name("agent-e2e").send().await.unwrap().log_streams() {
                let name = st.log_stream_name().unwrap();
                assert!(name.ends_with("-all"), "{name}");
                for (ts, m) in harness::log_events(&logs, "agent-e2e", name).await {
                    assert_eq!(ts / 1000, m.split(' ').nth(10).unwrap().parse::<i64>().unwrap(), "{m}");
                    assert!(m.contains(&format!(" {} ", &name[..name.len() - 4])), "{m} in {name}");
                    got.push(m);
                }
            }
            got.sort();
            assert_eq!(got, want2, "CloudWatch");
            let mut got = harness::firehose_messages(&ep, "agent-e2e-fh").await;
            got.sort();
            assert_eq!(got, want2, "Firehose");
        })
    });
    let _ = moto.kill();
    let _ = moto.wait();
    let _ = fs::remove_dir_all(&tmp);
}

/// Starts the agent in `ns`; returns it and its log collector once ready.
fn start_agent(ns: &str, iface: &str, endpoint: &str, tmp: &Path, file: &str) -> (std::process::Child, thread::JoinHandle<String>) {
    let mut agent = Command::new("ip")
        .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_flowlog-agent"), "--iface", iface, "--interval", "1"])
        .args(["--account-id", "123456789012", "--region", "us-east-1", "--aws-endpoint-url", endpoint])
        .args(["--output", &format!("file:{}", tmp.join(file).display())])
        .args(["--output", "cloudwatch:kill9", "--output", "firehose:kill9"])
        .args(["--spool-dir", &tmp.join("spool").to_string_lossy(), "--shutdown-timeout", "20"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let (ready_tx, ready_rx) = mpsc::channel();
    let pipe = agent.stderr.take().unwrap();
    let log = thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if line.contains(" ready ") {
                let _ = ready_tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    if ready_rx.recv_timeout(Duration::from_secs(30)).is_err() {
        let _ = agent.kill();
        panic!("agent not ready: {}", log.join().unwrap());
    }
    (agent, log)
}

fn udp_burst(ns: &str, windows: u16) {
    in_netns(ns, move || {
        let s = UdpSocket::bind("10.203.0.2:0").unwrap();
        for _ in 0..windows {
            for port in 0..10u16 {
                s.send_to(&[0u8; 60], ("10.203.0.1", 7000 + port)).unwrap();
            }
            thread::sleep(Duration::from_millis(1000));
        }
    });
}

/// kill -9 of the real agent while its spool holds records it could not
/// deliver (service unreachable), then a restart with the service up: the
/// records of the first run arrive.
#[test]
fn agent_killed_with_a_full_spool_delivers_it_after_restart() {
    if !require_root() {
        return;
    }
    let py = harness::ensure_moto();
    harness::test_env();
    let t = Topo::new(2);
    let tmp: PathBuf = std::env::temp_dir().join(format!("flowlog-agent-kill9-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).unwrap();
    // Run 1: nothing listens on the endpoint.
    let (mut agent, log) = start_agent(&t.a, &t.a_if(), "http://127.0.0.1:4566", &tmp, "run1.log");
    udp_burst(&t.b, 3);
    thread::sleep(Duration::from_millis(1200));
    agent.kill().unwrap(); // SIGKILL
    agent.wait().unwrap();
    let log1 = log.join().unwrap();
    let run1: Vec<String> = fs::read_to_string(tmp.join("run1.log")).unwrap().lines().map(str::to_string).collect();
    assert!(run1.iter().any(|l| l.ends_with(" OK")), "no records in run 1:\n{log1}");
    // Run 2: the service is up.
    let port = 4566;
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut moto = Command::new("ip")
        .args(["netns", "exec", &t.a])
        .arg(&py)
        .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ep = endpoint.clone();
    in_netns(&t.a, move || {
        for _ in 0..600 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
        tokio::runtime::Runtime::new().unwrap().block_on(harness::create_delivery_stream(&ep, "kill9", "kill9-fh"));
    });
    let (agent, log) = start_agent(&t.a, &t.a_if(), &endpoint, &tmp, "run2.log");
    thread::sleep(Duration::from_millis(1500));
    // SAFETY: plain kill(2) of our child.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let mut agent = agent;
    assert!(agent.wait().unwrap().success());
    let log2 = log.join().unwrap();
    assert!(log2.contains("delivering records left from before"), "{log2}");
    let run2: Vec<String> = fs::read_to_string(tmp.join("run2.log")).unwrap().lines().map(str::to_string).collect();
    let mut want: Vec<String> = run1.iter().chain(&run2).cloned().collect();
    want.sort();
    let ep = endpoint.clone();
    in_netns(&t.a, move || {
        tokio::runtime::Runtime::new().unwrap().block_on(async move {
            let logs = harness::logs(&ep).await;
            let mut got = Vec::new();
            for st in logs.describe_log_streams().log_group_name("kill9").send().await.unwrap().log_streams() {
                got.extend(harness::log_events(&logs, "kill9", st.log_stream_name().unwrap()).await.into_iter().map(|e| e.1));
            }
            got.sort();
            assert_eq!(got, want, "CloudWatch");
            let mut got = harness::firehose_messages(&ep, "kill9-fh").await;
            got.sort();
            assert_eq!(got, want, "Firehose");
        })
    });
    let _ = moto.kill();
    let _ = moto.wait();
    let _ = fs::remove_dir_all(&tmp);
}
