//! The agent binary end to end with every destination at once: two network
//! namespaces joined by a veth pair, the agent and a moto server in
//! namespace `a`, real UDP traffic, SIGTERM; then what reached the local
//! directory, S3, CloudWatch Logs and Firehose is compared record by record
//! with the agent's own `file:` output. Needs root.

use std::{fs, io::Read, net::UdpSocket, path::Path, thread, time::Duration};

use flowlog_records::{format::Format, parse::parse_record};
use flowlog_testkit::{
    agent::{Agent, AgentCmd},
    aws::{self as harness, NetnsMoto},
    netns::{in_netns, Topo},
    require_root,
    ScratchDir,
};

/// Namespaces a (agent, moto) and b (traffic), 10.203.<n>.1/.2.
fn topo() -> Topo {
    Topo::new(203, false)
}

#[test]
fn agent_delivers_to_every_destination_at_once() {
    if !require_root() {
        return;
    }
    let t = topo();
    let moto = NetnsMoto::start(&t.a, 4566);
    let endpoint = moto.endpoint.clone();
    let ep = endpoint.clone();
    in_netns(&t.a, move || {
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            harness::s3(&ep).await.create_bucket().bucket("agent-e2e").send().await.unwrap();
            harness::create_delivery_stream(&ep, "agent-e2e", "agent-e2e-fh").await;
        })
    });

    let tmp = ScratchDir::new("flowlog-agent-outputs");
    let agent = AgentCmd::new(env!("CARGO_BIN_EXE_flowlog-agent"), &t.a)
        .default_pinning()
        .ready_within(Duration::from_secs(30))
        .ifaces(&[&t.a_if])
        .output(tmp.join("all.log"))
        .args(&["--interval", "1"])
        .args(&["--account-id", "123456789012", "--region", "us-east-1", "--aws-endpoint-url", &endpoint, "--flow-log-id", "fl-0e2e0e2e0e2e0e2e0"])
        .args(&["--output", &format!("dir:{}", tmp.join("dir").display())])
        .args(&["--output", "s3://agent-e2e/p", "--output", "cloudwatch:agent-e2e", "--output", "firehose:agent-e2e"])
        .args(&["--spool-dir", &tmp.join("spool").to_string_lossy(), "--file-interval", "1"])
        .start();
    // Traffic from b to a over 3 windows, several ports.
    let (a4, b4) = (t.a4, t.b4);
    in_netns(&t.b, move || {
        let s = UdpSocket::bind((b4, 0)).unwrap();
        for i in 0..30u16 {
            for port in 0..20u16 {
                s.send_to(&[0u8; 100], (a4, 9000 + port)).unwrap();
            }
            if i % 10 == 9 {
                thread::sleep(Duration::from_millis(1000));
            }
        }
    });
    thread::sleep(Duration::from_millis(1200));
    let (_, log) = agent.stop();

    let mut want: Vec<String> = fs::read_to_string(tmp.join("all.log")).unwrap().lines().map(str::to_string).collect();
    want.sort();
    assert!(want.iter().filter(|l| l.ends_with(" OK")).count() >= 20, "{want:?}");
    assert_eq!(flowlog_testkit::agent::dir_output_lines(&tmp.join("dir")), want, "dir:\n{log}");

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
                    assert_eq!(ts / 1000, parse_record(&Format::default(), &m).unwrap().record.start as i64, "{m}");
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
}

/// Starts the agent in `ns` writing to `file` in `tmp` too; returns once ready.
fn start_agent(t: &Topo, endpoint: &str, tmp: &Path, file: &str) -> Agent {
    AgentCmd::new(env!("CARGO_BIN_EXE_flowlog-agent"), &t.a)
        .default_pinning()
        .ready_within(Duration::from_secs(30))
        .ifaces(&[&t.a_if])
        .output(tmp.join(file))
        .args(&["--interval", "1"])
        .args(&["--account-id", "123456789012", "--region", "us-east-1", "--aws-endpoint-url", endpoint])
        .args(&["--output", "cloudwatch:kill9", "--output", "firehose:kill9"])
        .args(&["--spool-dir", &tmp.join("spool").to_string_lossy(), "--shutdown-timeout", "20"])
        .start()
}

fn udp_burst(t: &Topo, windows: u16) {
    let (a4, b4) = (t.a4, t.b4);
    in_netns(&t.b, move || {
        let s = UdpSocket::bind((b4, 0)).unwrap();
        for _ in 0..windows {
            for port in 0..10u16 {
                s.send_to(&[0u8; 60], (a4, 7000 + port)).unwrap();
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
    harness::test_env();
    let t = topo();
    let tmp = ScratchDir::new("flowlog-agent-kill9");
    // Run 1: nothing listens on the endpoint.
    let agent = start_agent(&t, "http://127.0.0.1:4566", &tmp, "run1.log");
    udp_burst(&t, 3);
    thread::sleep(Duration::from_millis(1200));
    let (_, log1) = agent.kill9();
    let run1: Vec<String> = fs::read_to_string(tmp.join("run1.log")).unwrap().lines().map(str::to_string).collect();
    assert!(run1.iter().any(|l| l.ends_with(" OK")), "no records in run 1:\n{log1}");
    // Run 2: the service is up.
    let moto = NetnsMoto::start(&t.a, 4566);
    let endpoint = moto.endpoint.clone();
    let ep = endpoint.clone();
    in_netns(&t.a, move || {
        tokio::runtime::Runtime::new().unwrap().block_on(harness::create_delivery_stream(&ep, "kill9", "kill9-fh"));
    });
    let agent = start_agent(&t, &endpoint, &tmp, "run2.log");
    thread::sleep(Duration::from_millis(1500));
    let (_, log2) = agent.stop();
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
}
