//! The real agent binary under the confinement of the shipped artefacts,
//! with a spooled output (`s3://` to moto) and a local one, and no
//! `spool-dir` set: what an operator gets from deploy/ as it is.
//!
//! - systemd unit (deploy/systemd/flowlog.service): no systemd instance
//!   runs here, so the unit's filesystem confinement is rebuilt with a
//!   private mount namespace: every mount read-only (ProtectSystem=strict),
//!   then the unit's writable paths (ReadWritePaths=, StateDirectory=,
//!   LogsDirectory=, RuntimeDirectory=) bound read-write, PrivateTmp, PrivateDevices,
//!   ProtectHome, read-only /sys and /proc/sys; the unit's capability
//!   bounding and ambient sets and NoNewPrivileges with setpriv; the
//!   environment systemd gives (STATE_DIRECTORY=...); its SystemCallFilter,
//!   RestrictAddressFamilies and MemoryDenyWriteExecute checked on an
//!   strace of the whole run.
//! - Kubernetes DaemonSet (deploy/kubernetes/flowlog.yaml): the ConfigMap's
//!   config, FLOWLOG_CONFIG from the container's env, a read-only root with
//!   the pod's writable hostPath mounts only, /dev a tmpfs with the usual
//!   devices, the container's capabilities.
//!
//! Both run in a network namespace joined by a veth to a second one that
//! sends known UDP traffic; the test checks the exact records in S3 and in
//! the local output. The state and log directories are test directories
//! bound over /var/lib and /var/log inside the mount namespace (the host's
//! are not touched), in a scratch directory under /run with the agent binary
//! bound into it: the checkout, wherever it is, may be under what the
//! confinement hides (/tmp, /home). Needs root, strace, systemd-analyze,
//! setpriv, unshare.

use flowlog_records::{
    format::Format,
    parse::parse_record,
    record::{Action, LogStatus},
};
use flowlog_testkit::{
    aws::{self as harness, NetnsMoto},
    netns::{in_netns, Topo},
    require_root, shell_quote,
    systemd::{parse_unit, Calls},
    ScratchDir,
};

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead, BufReader, Read},
    net::UdpSocket,
    os::unix::{net::UnixDatagram, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use yaml_rust2::YamlLoader;

const AGENT: &str = env!("CARGO_BIN_EXE_flowlog-agent");
const UNIT: &str = "deploy/systemd/flowlog.service";
const MANIFEST: &str = "deploy/kubernetes/flowlog.yaml";
/// Datagrams per destination port, and ports.
const PACKETS: u64 = 7;
const PORTS: u16 = 12;
const PAYLOAD: usize = 100;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn read(rel: &str) -> String {
    fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn tools_missing() -> bool {
    let missing: Vec<&str> = ["strace", "systemd-analyze", "ip", "setpriv", "unshare"]
        .into_iter()
        .filter(|t| Command::new(t).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err())
        .collect();
    if missing.is_empty() {
        return false;
    }
    assert!(std::env::var("FLOWLOG_REQUIRE_ROOT_TESTS").as_deref() != Ok("1"), "{missing:?} not installed");
    eprintln!("{missing:?} not installed: skipped");
    true
}

/// Namespaces a (agent, moto) and b (traffic), a veth between them whose
/// a side is named like a node NIC (`ens…`, matched by the manifest's
/// default interfaces), 10.204.<n>.1/.2.
fn topo() -> Topo {
    Topo::with_a_if("ens", 204, false)
}

/// moto in namespace a on 127.0.0.1:4566 with a bucket; killed on drop.
fn moto(ns: &str, bucket: &'static str) -> NetnsMoto {
    let moto = NetnsMoto::start(ns, 4566);
    let ep = moto.endpoint.clone();
    in_netns(ns, move || {
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            harness::s3(&ep).await.create_bucket().bucket(bucket).send().await.unwrap();
        })
    });
    moto
}

/// The scratch directory of one confined run, outside everything the
/// confinement hides (/tmp, /var/tmp, /home, /root: the checkout may be
/// under any of them), with the agent binary bound into it (`agent`) by
/// the script before anything is hidden.
struct Scratch {
    dir: ScratchDir,
    agent: PathBuf,
}

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = ScratchDir::new(&format!("flowlog-confined-{name}"));
        let agent = dir.join("flowlog-agent");
        // The mount point of the bind.
        fs::write(&agent, "").unwrap();
        Scratch { dir, agent }
    }
}

/// The mount points of `writable` that do not exist yet: the script makes
/// them on the host's file system (e.g. /run/flowlog); removed again on drop.
struct MountPoints(Vec<PathBuf>);

impl MountPoints {
    fn missing(writable: &[(PathBuf, &str)]) -> MountPoints {
        MountPoints(writable.iter().map(|(_, to)| PathBuf::from(to)).filter(|p| !p.exists()).collect())
    }
}

impl Drop for MountPoints {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = fs::remove_dir(p);
        }
    }
}

/// The shell that builds the confinement inside `unshare -m` (after `ip
/// netns exec`, which gives a fresh /sys): `writable` are (host dir, path
/// inside) pairs bound read-write after everything was made read-only.
/// First of all, the agent binary is bound to `scratch.agent`: what the
/// script hides next may hold the checkout.
fn confine_script(scratch: &Scratch, binds_before: &[(PathBuf, &str)], writable: &[(PathBuf, &str)], private_tmp: bool, hide_home: bool, exec: &str) -> String {
    let mut s = String::from("set -eu\nmount --make-rprivate /\nmount -t bpf bpf /sys/fs/bpf\n");
    s += &format!("mount --bind {} {}\n", shell_quote(AGENT), shell_quote(&scratch.agent));
    // PrivateDevices= / a container's /dev: a tmpfs with the usual devices.
    s += &format!("D={}\nmkdir -p \"$D\"\nmount -t tmpfs -o mode=0755,nosuid tmpfs \"$D\"\n", shell_quote(scratch.dir.join("dev")));
    s += "for d in null zero full random urandom tty; do touch \"$D/$d\"; mount --bind /dev/$d \"$D/$d\"; done\n";
    s += "mkdir \"$D/shm\" \"$D/pts\"\nmount --rbind \"$D\" /dev\n";
    if private_tmp {
        s += "mount -t tmpfs -o mode=1777 tmpfs /tmp\nmount -t tmpfs -o mode=1777 tmpfs /var/tmp\n";
    }
    if hide_home {
        // ProtectHome=yes: empty and inaccessible.
        s += "for h in /home /root; do [ -d $h ] && mount -t tmpfs -o mode=0000,ro tmpfs $h; done\n";
    }
    for (from, to) in binds_before {
        s += &format!("mount --bind {} {to}\n", shell_quote(from));
    }
    // Mount points of the writable paths (RuntimeDirectory= is created by
    // systemd at start, like this).
    for (_, to) in writable {
        s += &format!("mkdir -p {to}\n");
    }
    // Everything read-only (ProtectSystem=strict, ProtectKernelTunables,
    // readOnlyRootFilesystem), deepest mounts last so none is missed;
    // /proc itself stays as it is (/proc/sys read-only).
    s += "mount --bind /proc/sys /proc/sys\n";
    s += "findmnt -rn -o TARGET,FSTYPE | grep -v '\\\\' | while read -r m t; do\n";
    // Namespace files (ip netns's) are not file systems one can write to.
    s += "  [ $t = nsfs ] && continue\n";
    s += "  case $m in /proc/sys) ;; /proc|/proc/*|/dev|/dev/*) continue;; esac\n";
    if private_tmp {
        s += "  case $m in /tmp|/var/tmp) continue;; esac\n";
    }
    s += "  mount -o remount,bind,ro $m 2>/dev/null || mount -o remount,bind,ro,nosuid,nodev,noexec $m 2>/dev/null || mount -o remount,bind,ro,nosuid,nodev $m 2>/dev/null || mount -o remount,bind,ro,nosuid $m\n";
    s += "done\n";
    // A bind mount inherits its source's read-only flag: made writable again.
    for (from, to) in writable {
        s += &format!("mount --bind {} {to}\nmount -o remount,bind,rw {to}\n", shell_quote(from));
    }
    // The confinement holds: prove it before starting the agent.
    s += "for p in / /etc /usr /var /var/lib /sys /sys/class/net /proc/sys/net ";
    s += &shell_quote(root());
    s += "; do if touch \"$p/.flowlog-confined-probe\" 2>/dev/null; then rm -f \"$p/.flowlog-confined-probe\"; echo \"writable: $p\" >&2; exit 97; fi; done\n";
    for (_, to) in writable {
        // mkdir: bpffs holds no regular files.
        s += &format!("mkdir {to}/.flowlog-probe && rmdir {to}/.flowlog-probe\n");
    }
    s += "echo confined >&2\n";
    s += &format!("exec {exec}\n");
    s
}

/// Runs the script in namespace `ns`; returns the agent's stderr once it
/// exited after SIGTERM (sent once ready, after `traffic`).
fn run_confined(ns: &str, script: &str, env: &[(&str, String)], traced: bool, traffic: impl FnOnce()) -> String {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "unshare", "-m", "sh", "-c", script]).env_clear();
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdout(Stdio::null()).stderr(Stdio::piped()).process_group(0);
    let mut child = cmd.spawn().unwrap();
    let (ready_tx, ready_rx) = mpsc::channel();
    let pipe = child.stderr.take().unwrap();
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
    if ready_rx.recv_timeout(Duration::from_secs(60)).is_err() {
        // SAFETY: kill(2) of our own process group.
        unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
        let _ = child.wait();
        panic!("agent not ready under the confinement:\n{}", log.join().unwrap());
    }
    traffic();
    thread::sleep(Duration::from_millis(500));
    // The agent: the exec'd process itself, or strace's child.
    let pid = child.id() as i32;
    let agent = if traced {
        let c = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
        c.split_whitespace().next().expect("strace has no child").parse::<i32>().unwrap()
    } else {
        pid
    };
    // SAFETY: plain kill(2) of our child (or strace's).
    unsafe { libc::kill(agent, libc::SIGTERM) };
    let st = child.wait().unwrap();
    let log = log.join().unwrap();
    assert!(st.success(), "agent under the confinement: {st}\n{log}");
    assert!(log.contains("confined\n"), "{log}");
    log
}

/// The same confinement with a spool outside the writable paths (the
/// agent's default before it followed them): the agent must refuse to start
/// and say why, so the confinement is real.
fn confined_start_fails(ns: &str, script: &str, env: &[(&str, String)]) -> String {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "unshare", "-m", "sh", "-c", script]).env_clear();
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(stderr.contains("confined\n"), "{stderr}");
    assert!(!o.status.success() && o.status.code() != Some(124), "the agent started with its spool on a read-only path: {stderr}");
    stderr
}

fn send_traffic(t: &Topo) {
    let (a4, b4) = (t.a4, t.b4);
    in_netns(&t.b, move || {
        let s = UdpSocket::bind((b4, 40000)).unwrap();
        for _ in 0..PACKETS {
            for port in 0..PORTS {
                s.send_to(&[0u8; PAYLOAD], (a4, 9000 + port)).unwrap();
            }
            thread::sleep(Duration::from_millis(20));
        }
    });
}

/// The UDP records from b to a (ICMP port unreachable replies and IPv6
/// neighbour discovery are other flows): exactly one per port with every
/// datagram, in `format`.
fn check_udp_records(what: &str, format: &Format, lines: &[String], t: &Topo) -> Vec<String> {
    let mut got: Vec<(String, _)> = lines
        .iter()
        .map(|l| (l.clone(), parse_record(format, l).unwrap_or_else(|e| panic!("{what}: {e}: {l}"))))
        .filter(|(_, p)| p.record.srcaddr == Some(t.b4.into()) && p.record.protocol == Some(17))
        .collect();
    got.sort_by(|x, y| x.0.cmp(&y.0));
    let ports: Vec<Option<u16>> = got.iter().map(|(_, p)| p.record.dstport).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    let want_ports: Vec<Option<u16>> = (0..PORTS).map(|p| Some(9000 + p)).collect();
    let lines: Vec<String> = got.iter().map(|(l, _)| l.clone()).collect();
    assert_eq!(ports, want_ports, "{what}: {lines:#?}");
    assert_eq!(got.len(), PORTS as usize, "{what}: one record per flow: {lines:#?}");
    for (l, p) in &got {
        let r = &p.record;
        assert_eq!((p.version, r.account_id.as_deref(), r.dstaddr, r.srcport), (Some(2), Some("123456789012"), Some(t.a4.into()), Some(40000)), "{what}: {l}");
        assert_eq!(r.packets, Some(PACKETS), "{what}: packets: {l}");
        assert_eq!(r.bytes, Some(PACKETS * (PAYLOAD as u64 + 28)), "{what}: bytes (IPv4 + UDP headers): {l}");
        assert_eq!((r.action, r.log_status), (Some(Action::Accept), LogStatus::Ok), "{what}: {l}");
    }
    lines
}

/// The records of the objects under `prefix` in `bucket` (gzipped text).
fn s3_lines(ns: &str, bucket: &'static str, prefix: &'static str) -> Vec<String> {
    in_netns(ns, move || {
        tokio::runtime::Runtime::new().unwrap().block_on(async move {
            let s3 = harness::s3("http://127.0.0.1:4566").await;
            let mut got = Vec::new();
            for (key, body) in harness::objects(&s3, bucket, prefix).await {
                assert!(key.starts_with(&format!("{prefix}AWSLogs/123456789012/vpcflowlogs/us-east-1/")), "{key}");
                let mut s = String::new();
                flate2::read::GzDecoder::new(&body[..]).read_to_string(&mut s).unwrap();
                got.extend(s.lines().skip(1).map(str::to_string));
            }
            got
        })
    })
}

fn aws_env() -> Vec<(&'static str, String)> {
    [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_CONFIG_FILE", "/nonexistent"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent"),
    ]
    .into_iter()
    .map(|(k, v)| (k, v.to_string()))
    .collect()
}

/// Keys every run sets: where moto is and what the S3 keys say. Prepended,
/// so they stay top-level keys.
const AWS_KEYS: &str = "region = \"us-east-1\"\naws-endpoint-url = \"http://127.0.0.1:4566\"\naccount-id = \"123456789012\"\n";

/// A systemd time span of whole seconds or minutes (`30s`, `2min`).
fn systemd_seconds(v: &str) -> u64 {
    match v.strip_suffix("min") {
        Some(m) => m.parse::<u64>().unwrap() * 60,
        None => v.trim_end_matches('s').parse().unwrap_or_else(|_| panic!("time span {v:?}")),
    }
}

#[test]
fn systemd_unit_confinement_delivers_to_s3_and_a_file() {
    if tools_missing() || !require_root() {
        return;
    }
    let unit = parse_unit(&read(UNIT));
    let svc = &unit["Service"];
    let words = |k: &str| -> Vec<String> { svc.get(k).into_iter().flatten().flat_map(|v| v.split_whitespace()).map(String::from).collect() };
    let one = |k: &str| svc[k].last().unwrap().clone();
    assert_eq!(one("ProtectSystem"), "strict");
    let state = format!("/var/lib/{}", one("StateDirectory"));
    let logs = format!("/var/log/{}", one("LogsDirectory"));
    let runtime = format!("/run/{}", one("RuntimeDirectory"));

    let t = topo();
    let _moto = moto(&t.a, "unit");
    let scratch = Scratch::new("unit");
    let dir = &scratch.dir;
    // /var/lib and /var/log of the confinement: only <StateDirectory> and
    // <LogsDirectory> in them, as systemd creates them (0700 under UMask).
    for (d, sub) in [("varlib", one("StateDirectory")), ("varlog", one("LogsDirectory"))] {
        fs::create_dir_all(dir.join(d).join(&sub)).unwrap();
    }
    fs::create_dir_all(dir.join("runtime")).unwrap();
    // The packaged default config (the example), made to capture the test
    // interface and send to moto and to the logs directory.
    let example = read("flowlog.example.toml");
    assert!(!example.lines().any(|l| l.starts_with("spool-dir")), "the example must leave spool-dir to the default");
    let config = format!(
        "{AWS_KEYS}{}",
        example
            .replace("\ninterfaces = []\n", &format!("\ninterfaces = [\"{}\"]\n", t.a_if))
            .replace("outputs = [\"stdout\"]", &format!("outputs = [\"s3://unit/host\", \"file:{logs}/records.log\"]"))
    );
    assert!(config.matches(&t.a_if).count() == 1 && config.contains("s3://unit/host"), "{config}");
    fs::write(dir.join("flowlog.toml"), &config).unwrap();

    // ExecStart with the test config; the unit's capabilities via setpriv.
    let exec: Vec<String> = one("ExecStart")
        .split_whitespace()
        .map(|a| match a {
            "/usr/local/bin/flowlog-agent" | "/usr/bin/flowlog-agent" => shell_quote(&scratch.agent),
            "/etc/flowlog/flowlog.toml" => shell_quote(dir.join("flowlog.toml")),
            a => shell_quote(a),
        })
        .collect();
    let caps = |k: &str| words(k).iter().map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase())).collect::<Vec<_>>().join(",");
    assert_eq!(one("NoNewPrivileges"), "yes");
    // strace writes where the unit may write (the logs directory).
    let trace = dir.join("varlog").join(one("LogsDirectory")).join(".strace");
    let trace_inside = format!("{logs}/.strace");
    let setpriv = format!(
        "setpriv --bounding-set=-all,{} --inh-caps=-all,{} --ambient-caps={} --no-new-privs",
        caps("CapabilityBoundingSet"),
        caps("AmbientCapabilities"),
        caps("AmbientCapabilities")
    );
    let exec = format!("strace -f -qq -o {trace_inside} {setpriv} {}", exec.join(" "));
    let mut writable: Vec<(PathBuf, &str)> = vec![
        (dir.join("varlib").join(one("StateDirectory")), state.as_str()),
        (dir.join("varlog").join(one("LogsDirectory")), logs.as_str()),
        (dir.join("runtime"), runtime.as_str()),
    ];
    let rw = words("ReadWritePaths");
    for p in &rw {
        writable.push((PathBuf::from(p), p.as_str()));
    }
    let _made = MountPoints::missing(&writable);
    let script = confine_script(&scratch, &[(dir.join("varlib"), "/var/lib"), (dir.join("varlog"), "/var/log")], &writable, one("PrivateTmp") == "yes", one("ProtectHome") == "yes", &exec);
    // What systemd puts in the environment (no spool-dir anywhere: the
    // default must follow STATE_DIRECTORY).
    let mut env = aws_env();
    env.extend([
        ("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()),
        ("STATE_DIRECTORY", state.clone()),
        ("LOGS_DIRECTORY", logs.clone()),
        ("RUNTIME_DIRECTORY", runtime.clone()),
        ("CONFIGURATION_DIRECTORY", "/etc/flowlog".to_string()),
    ]);
    // Type=notify: what systemd gives the service, a notification socket
    // and, with WatchdogSec=, the watchdog period.
    assert_eq!(one("Type"), "notify");
    let watchdog_us = systemd_seconds(&one("WatchdogSec")) * 1_000_000;
    let sock_path = dir.join("notify.sock");
    let notify = UnixDatagram::bind(&sock_path).unwrap();
    notify.set_nonblocking(true).unwrap();
    env.extend([("NOTIFY_SOCKET", sock_path.display().to_string()), ("WATCHDOG_USEC", watchdog_us.to_string())]);
    let log = run_confined(&t.a, &script, &env, true, || send_traffic(&t));
    let mut msgs = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = notify.recv(&mut buf) {
        msgs.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let matches = |m: &String, what: &str| m.lines().any(|l| l == what || what.split_once('*').is_some_and(|(a, b)| l.starts_with(a) && l.ends_with(b)));
    let at = |what: &str| msgs.iter().position(|m| matches(m, what));
    let ready = at("READY=1").unwrap_or_else(|| panic!("no READY=1 from the agent: {msgs:?}\n{log}"));
    assert!(msgs[ready].contains("STATUS=capturing on 1 interfaces, writing to "), "{msgs:?}");
    let ping = at("WATCHDOG=1").unwrap_or_else(|| panic!("no watchdog ping with WATCHDOG_USEC={watchdog_us}: {msgs:?}"));
    let stopping = at("STOPPING=1").unwrap_or_else(|| panic!("no STOPPING=1 at SIGTERM: {msgs:?}"));
    // The final window's status (a window boundary may have passed earlier).
    let last = msgs.iter().rposition(|m| matches(m, "STATUS=* flows from 1 interfaces in the last window (written); 1 interfaces attached")).unwrap_or_else(|| panic!("no window status: {msgs:?}"));
    assert!(ready < ping && ready < stopping && stopping < last, "order of the notifications: {msgs:?}");

    // Records: the local file and S3 agree, with the exact traffic.
    let file: Vec<String> = fs::read_to_string(dir.join("varlog").join(one("LogsDirectory")).join("records.log")).unwrap().lines().map(String::from).collect();
    let want = check_udp_records(&format!("file (agent log:\n{log})"), &Format::default(), &file, &t);
    let mut s3 = s3_lines(&t.a, "unit", "host/");
    s3.sort();
    let mut all_file = file.clone();
    all_file.sort();
    assert_eq!(s3, all_file, "S3 and the file output differ\n{log}");
    assert_eq!(check_udp_records("S3", &Format::default(), &s3, &t), want);
    // The live endpoint answered on the default socket in the runtime
    // directory while the agent ran (removed when it stopped).
    assert!(log.contains(&format!("socket={runtime}/live.sock")), "no live endpoint in {runtime}\n{log}");
    assert!(!dir.join("runtime").join("live.sock").exists(), "the live socket outlived the agent");
    // The spool was the default one, in the state directory.
    assert!(dir.join("varlib").join(one("StateDirectory")).join("spool").is_dir(), "no spool in $STATE_DIRECTORY\n{log}");

    // Its SystemCallFilter, RestrictAddressFamilies and
    // MemoryDenyWriteExecute would have allowed every call of the agent
    // (what setpriv did before exec'ing the agent is left out).
    let trace = fs::read_to_string(&trace).unwrap();
    let calls = Calls::from_strace(&trace, Some(&scratch.agent.display().to_string()));
    assert!(calls.started, "no execve of the agent in the trace");
    assert!(calls.used.contains("bpf") && calls.used.contains("connect"), "{:?}", calls.used);
    calls.assert_allowed_by(svc);
    if one("MemoryDenyWriteExecute") == "yes" {
        assert!(calls.write_exec.is_empty(), "MemoryDenyWriteExecute denies {:?}", calls.write_exec);
    }
    // No denied write on the way (a spool or output outside the grants).
    assert!(!trace.contains("EROFS"), "a write hit the read-only system: {}", trace.lines().filter(|l| l.contains("EROFS")).collect::<Vec<_>>().join("\n"));
}

#[test]
fn kubernetes_pod_confinement_delivers_to_s3_and_a_file() {
    if tools_missing() || !require_root() {
        return;
    }
    let docs = YamlLoader::load_from_str(&read(MANIFEST)).unwrap();
    let ds = docs.iter().find(|d| d["kind"].as_str() == Some("DaemonSet")).unwrap();
    let cm = docs.iter().find(|d| d["kind"].as_str() == Some("ConfigMap")).unwrap();
    let pod = &ds["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    let config = cm["data"]["flowlog.toml"].as_str().unwrap();
    let env: BTreeMap<&str, &str> = c["env"].as_vec().unwrap().iter().map(|e| (e["name"].as_str().unwrap(), e["value"].as_str().unwrap())).collect();
    assert_eq!(env.keys().copied().collect::<Vec<_>>(), ["FLOWLOG_CONFIG"]);

    let t = topo();
    let _moto = moto(&t.a, "pod");
    let scratch = Scratch::new("pod");
    let dir = &scratch.dir;
    // The ConfigMap's config as shipped (interfaces eth*/ens* capture the
    // test's ens… interface), with an S3 output and a file on the data volume.
    let outputs = "outputs = [\"stdout\"]";
    assert!(config.contains(outputs), "{config}");
    assert!(!config.lines().any(|l| l.starts_with("spool-dir")), "the ConfigMap must leave spool-dir to the default");
    let config = format!("{AWS_KEYS}{}", config.replace(outputs, "outputs = [\"s3://pod/nodes\", \"file:/var/lib/flowlog/records.log\"]"));
    // The volumes: hostPath ones are the node's (here: test directories
    // for /var/lib/flowlog), the ConfigMap a directory with its one key.
    fs::create_dir_all(dir.join("configmap")).unwrap();
    fs::write(dir.join("configmap/flowlog.toml"), &config).unwrap();
    fs::create_dir_all(dir.join("varlib/flowlog")).unwrap();
    let volumes: BTreeMap<&str, &yaml_rust2::Yaml> = pod["volumes"].as_vec().unwrap().iter().map(|v| (v["name"].as_str().unwrap(), v)).collect();
    let mut writable = Vec::new();
    let mut empty_dirs = Vec::new();
    let mut config_path = None;
    for m in c["volumeMounts"].as_vec().unwrap() {
        let at = m["mountPath"].as_str().unwrap();
        let v = volumes[m["name"].as_str().unwrap()];
        let ro = m["readOnly"].as_bool() == Some(true);
        if !v["configMap"].is_badvalue() {
            // Read-only anyway; the agent finds it through FLOWLOG_CONFIG.
            config_path = Some(dir.join("configmap").join(env["FLOWLOG_CONFIG"].strip_prefix(&format!("{at}/")).unwrap()));
            continue;
        }
        if !v["emptyDir"].is_badvalue() {
            // A fresh directory of the pod's.
            let d = dir.join(format!("emptydir-{}", m["name"].as_str().unwrap()));
            fs::create_dir_all(&d).unwrap();
            empty_dirs.push((d, at));
            continue;
        }
        let host = v["hostPath"]["path"].as_str().unwrap();
        match (host, ro) {
            ("/sys/fs/bpf", false) => writable.push((PathBuf::from("/sys/fs/bpf"), "/sys/fs/bpf")),
            ("/var/lib/flowlog", false) => writable.push((dir.join("varlib/flowlog"), "/var/lib/flowlog")),
            ("/etc/machine-id", true) => {} // the same file, read-only like all
            // The runtime's socket directory and the pods' netns files:
            // read-only like all (no runtime here: `auto` finds no socket).
            ("/run/containerd", true) | ("/run/netns", true) => {}
            other => panic!("volume {other:?} not known to this test"),
        }
    }
    assert_eq!(writable.len(), 2, "pins and data volumes");
    assert_eq!(empty_dirs.iter().map(|(_, at)| *at).collect::<Vec<_>>(), ["/run/flowlog"], "the live socket's volume");
    writable.extend(empty_dirs.iter().map(|(d, at)| (d.clone(), *at)));
    let caps: Vec<String> = sc["capabilities"]["add"].as_vec().unwrap().iter().map(|c| format!("+{}", c.as_str().unwrap().to_lowercase())).collect();
    let caps = caps.join(",");
    // Runtimes give added capabilities to the bounding, permitted and
    // effective sets; allowPrivilegeEscalation: false is no_new_privs.
    let exec = format!("setpriv --bounding-set=-all,{caps} --inh-caps=-all --no-new-privs {}", shell_quote(&scratch.agent));
    let _made = MountPoints::missing(&writable);
    let script = confine_script(&scratch, &[(dir.join("varlib"), "/var/lib")], &writable, false, false, &exec);
    let mut envs = aws_env();
    envs.push(("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()));
    let config_path = config_path.unwrap();
    let configmap_format = toml::from_str::<toml::Table>(&fs::read_to_string(&config_path).unwrap()).unwrap()["log-format"].as_str().map(String::from);
    envs.push(("FLOWLOG_CONFIG", config_path.display().to_string()));
    // The old default spool directory, read-only in the pod: a clear error.
    let mut old = envs.clone();
    old.push(("FLOWLOG_SPOOL_DIR", "/var/lib/flowlog-agent/spool".to_string()));
    let old_script = script.replace("exec setpriv", "exec timeout 20 setpriv");
    let err = confined_start_fails(&t.a, &old_script, &old);
    assert!(err.contains("/var/lib/flowlog-agent/spool") && err.contains("Read-only file system"), "{err}");
    let log = run_confined(&t.a, &script, &envs, false, || send_traffic(&t));

    let file: Vec<String> = fs::read_to_string(dir.join("varlib/flowlog/records.log")).unwrap().lines().map(String::from).collect();
    // The ConfigMap's format: the default fields, then the k8s-* ones
    // (`-` here: no container runtime in this emulation).
    let format = Format::parse(configmap_format.as_deref().expect("the ConfigMap sets log-format")).unwrap();
    let want = check_udp_records(&format!("file (agent log:\n{log})"), &format, &file, &t);
    assert!(want.iter().all(|l| l.ends_with(" OK - - - - - -")), "{want:?}");
    let mut s3 = s3_lines(&t.a, "pod", "nodes/");
    s3.sort();
    let mut all_file = file;
    all_file.sort();
    assert_eq!(s3, all_file, "S3 and the file output differ\n{log}");
    assert_eq!(check_udp_records("S3", &format, &s3, &t), want);
    assert!(dir.join("varlib/flowlog/spool").is_dir(), "no spool on the data volume\n{log}");
    // The live endpoint on its emptyDir.
    assert!(log.contains("socket=/run/flowlog/live.sock"), "no live endpoint\n{log}");
}
