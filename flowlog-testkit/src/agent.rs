//! The agent binary run by the integration tests: started in a network
//! namespace (optionally behind a wrapper such as `setpriv`), ready when it
//! logs `ready`, reloaded with SIGHUP, stopped with SIGTERM (final drain,
//! exit 0) or killed with SIGKILL; its `file:` output read back as records
//! with [`flowlog_records::parse`], in the `--log-format` it was given.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead, BufReader},
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{mpsc, Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use flowlog_records::{
    format::Format,
    parse::parse_record,
    record::{K8sMeta, LogStatus},
};

use crate::netns::next_id;

/// A record format with the fields the tests look at (version 5: it has
/// `flow-direction`).
pub const FORMAT: &str = "${version} ${interface-id} ${srcaddr} ${dstaddr} ${srcport} ${dstport} ${protocol} ${packets} ${bytes} ${start} ${end} ${action} ${log-status} ${tcp-flags} ${flow-direction}";

/// Generous: under the kernel matrix's software emulation, loading and
/// verifying the programs alone can take tens of seconds.
pub const READY_WITHIN: Duration = Duration::from_secs(120);

/// How to run the agent; [`AgentCmd::start`] runs it.
pub struct AgentCmd {
    exe: String,
    ns: String,
    wrapper: Vec<String>,
    ifaces: Vec<String>,
    args: Vec<String>,
    out: Option<PathBuf>,
    config: Option<PathBuf>,
    no_pin: bool,
    check: Option<fn(&Rec)>,
    ready_within: Duration,
}

impl AgentCmd {
    /// `exe` is the test's `CARGO_BIN_EXE_flowlog-agent` (or what
    /// FLOWLOG_TEST_AGENT_BIN names, see [`crate::agent_bin`]), run in
    /// network namespace `ns`.
    pub fn new(exe: &str, ns: &str) -> AgentCmd {
        AgentCmd {
            exe: crate::agent_bin(exe),
            ns: ns.into(),
            wrapper: vec![],
            ifaces: vec![],
            args: vec![],
            out: None,
            config: None,
            no_pin: true,
            check: None,
            ready_within: READY_WITHIN,
        }
    }

    /// `--iface` for each.
    pub fn ifaces(mut self, ifaces: &[&str]) -> AgentCmd {
        self.ifaces.extend(ifaces.iter().map(|s| s.to_string()));
        self
    }

    /// Further arguments, after `--iface` and `--output`.
    pub fn args(mut self, args: &[&str]) -> AgentCmd {
        self.args.extend(args.iter().map(|s| s.to_string()));
        self
    }

    /// A command that runs the agent inside the namespace (e.g. `setpriv ...`).
    pub fn wrapper(mut self, wrapper: &[&str]) -> AgentCmd {
        self.wrapper = wrapper.iter().map(|s| s.to_string()).collect();
        self
    }

    /// The `file:` output at `path` (the caller's: left in place). Without
    /// it, a file of the harness's own in the temporary directory, removed
    /// once read.
    pub fn output(mut self, path: impl Into<PathBuf>) -> AgentCmd {
        self.out = Some(path.into());
        self
    }

    /// `--config <path>`, whose outputs are the agent's: no `--output` flag,
    /// which would override the file's outputs, on reloads too. The file
    /// must have a `file:` output at the path given to [`AgentCmd::output`]
    /// (the one [`Agent::records`] reads).
    pub fn config(mut self, path: impl Into<PathBuf>) -> AgentCmd {
        self.config = Some(path.into());
        self
    }

    /// Pinning as the agent's configuration says. By default the harness
    /// adds `--no-pin` unless the arguments name a `--pin-dir`.
    pub fn default_pinning(mut self) -> AgentCmd {
        self.no_pin = false;
        self
    }

    /// How long it may take to log `ready` (default [`READY_WITHIN`]).
    pub fn ready_within(mut self, d: Duration) -> AgentCmd {
        self.ready_within = d;
        self
    }

    /// A test's own check of every record read back.
    pub fn check(mut self, f: fn(&Rec)) -> AgentCmd {
        self.check = Some(f);
        self
    }

    /// Starts the agent; returns once it logged `ready`.
    pub fn start(self) -> Agent {
        let format = match self.args.iter().position(|a| a == "--log-format") {
            Some(i) => Format::parse(&self.args[i + 1]).unwrap_or_else(|e| panic!("--log-format: {e}")),
            None => Format::default(),
        };
        let (out, own_out) = match self.out {
            Some(p) => (p, false),
            None => {
                let why = "AgentCmd::config: name the file: output the records are read from with AgentCmd::output";
                assert!(self.config.is_none(), "{why}");
                (std::env::temp_dir().join(format!("flowlog-test-{}-{}.log", self.ns, next_id())), true)
            }
        };
        let _ = fs::remove_file(&out);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns]).args(&self.wrapper).arg(&self.exe);
        for i in &self.ifaces {
            cmd.args(["--iface", i]);
        }
        match &self.config {
            Some(c) => cmd.arg("--config").arg(c),
            None => cmd.arg("--output").arg(format!("file:{}", out.display())),
        };
        cmd.args(&self.args);
        if self.no_pin && !self.args.iter().any(|a| a == "--pin-dir") {
            cmd.arg("--no-pin");
        }
        // Agents of parallel tests would contend for the host's default
        // /run/flowlog/live.sock: off unless a test names its own.
        if !self.args.iter().any(|a| a == "--live-socket") {
            cmd.arg("--live-socket").arg("off");
        }
        let mut child = cmd.stderr(Stdio::piped()).stdout(Stdio::null()).spawn().expect("start agent");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let pipe = child.stderr.take().unwrap();
        let log = stderr.clone();
        let reader = thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if line.contains(" ready ") || line.contains(r#""message":"ready""#) {
                    let _ = ready_tx.send(());
                }
                let mut l = log.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        if ready_rx.recv_timeout(self.ready_within).is_err() {
            let _ = child.kill();
            let _ = child.wait();
            let _ = reader.join();
            panic!("agent not ready: {}", stderr.lock().unwrap());
        }
        Agent { child, out, own_out, format, check: self.check, stderr, reader: Some(reader) }
    }
}

/// A running agent.
pub struct Agent {
    child: Child,
    out: PathBuf,
    own_out: bool,
    format: Format,
    check: Option<fn(&Rec)>,
    stderr: Arc<Mutex<String>>,
    reader: Option<thread::JoinHandle<()>>,
}

impl Agent {
    /// [`AgentCmd`] with interfaces and arguments, the rest by default.
    pub fn start(exe: &str, ns: &str, ifaces: &[&str], args: &[&str]) -> Agent {
        AgentCmd::new(exe, ns).ifaces(ifaces).args(args).start()
    }

    /// The process id: `ip netns exec` execs the wrapper or the agent.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its `file:` output.
    pub fn out(&self) -> &Path {
        &self.out
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until `done` holds for the log; panics with the log after `timeout`.
    pub fn wait_log(&self, timeout: Duration, done: impl Fn(&str) -> bool) {
        let until = Instant::now() + timeout;
        while !done(&self.stderr.lock().unwrap()) {
            assert!(Instant::now() < until, "{}", self.log());
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The records written so far.
    pub fn records(&self) -> Vec<Rec> {
        let text = fs::read_to_string(&self.out).unwrap_or_default();
        text.lines()
            .map(|l| {
                let r = Rec::parse(&self.format, l);
                if let Some(check) = self.check {
                    check(&r);
                }
                r
            })
            .collect()
    }

    /// SIGHUP: the agent reads its configuration again. Returns once it
    /// logged the outcome: `Ok` when it accepted the new configuration (it
    /// applies at the next window boundary: [`Agent::wait_reloaded`]),
    /// `Err(the log line)` when it refused it.
    pub fn reload(&self) -> Result<(), String> {
        let outcome =
            |l: &&str| l.contains("configuration reload accepted") || l.contains("configuration reload refused");
        let before = self.log().lines().filter(outcome).count();
        self.signal(libc::SIGHUP);
        self.wait_log(READY_WITHIN, |log| log.lines().filter(outcome).count() > before);
        let log = self.log();
        let line = log.lines().filter(outcome).nth(before).unwrap();
        if line.contains("accepted") {
            Ok(())
        } else {
            Err(line.to_string())
        }
    }

    /// Waits until `n` reloads in all were applied (at window boundaries).
    pub fn wait_reloaded(&self, n: usize) {
        self.wait_log(READY_WITHIN, |log| log.lines().filter(|l| l.contains("configuration reloaded")).count() >= n);
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: plain kill(2) on our child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// SIGTERM → final drain → exit 0; returns the records and the log.
    pub fn stop(mut self) -> (Vec<Rec>, String) {
        let log = self.terminate();
        (self.take_records(), log)
    }

    /// [`Agent::stop`] for a test that reads the outputs itself (e.g. in
    /// formats a reload changed): returns the log.
    pub fn stop_log(mut self) -> String {
        self.terminate()
    }

    fn terminate(&mut self) -> String {
        self.signal(libc::SIGTERM);
        let status = self.child.wait().unwrap();
        let log = self.finish();
        assert!(status.success(), "agent exit {status}: {log}");
        log
    }

    /// SIGKILL: no drain, no cleanup. Returns what it had written, and the log.
    pub fn kill9(mut self) -> (Vec<Rec>, String) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let log = self.finish();
        (self.take_records(), log)
    }

    /// The whole log, once the process is gone (its stderr closed).
    fn finish(&mut self) -> String {
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.log()
    }

    fn take_records(&self) -> Vec<Rec> {
        let recs = self.records();
        if self.own_out {
            let _ = fs::remove_file(&self.out);
        }
        recs
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.own_out {
            let _ = fs::remove_file(&self.out);
        }
    }
}

/// GET over plain HTTP/1.0 from inside namespace `ns` (the agent's
/// metrics and health endpoints): (status, body).
pub fn http_get(ns: &str, addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let path = path.to_string();
    crate::netns::in_netns(ns, move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let status = text[9..12].parse().unwrap();
        (status, text.split_once("\r\n\r\n").map(|x| x.1.to_string()).unwrap_or_default())
    })
}

/// The `ingress="..."` the agent logged when it attached to `iface`.
pub fn attach_hook(log: &str, iface: &str) -> Option<String> {
    log.lines().filter(|l| l.contains("attached") && l.contains(&format!("iface={iface}"))).find_map(|l| {
        let i = l.find("ingress=")? + "ingress=".len();
        Some(l[i..].trim_start_matches('"').split(['"', ' ']).next()?.to_string())
    })
}

/// A record as the tests compare it: the fields of [`FORMAT`] and
/// `reject-reason`; text fields as written, `-` where a field is missing
/// (from the record or from the format), counts 0 when missing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rec {
    pub version: Option<u8>,
    pub interface_id: String,
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    pub proto: Option<u8>,
    pub packets: u64,
    pub bytes: u64,
    pub start: u64,
    pub end: u64,
    pub action: String,
    pub status: String,
    pub tcp_flags: Option<u8>,
    pub direction: String,
    pub reject_reason: String,
    /// The `k8s-*` extension fields (all `None` when the format has none).
    pub k8s: K8sMeta,
}

pub type Tuple = (IpAddr, IpAddr, u16, u16, u8);

impl Rec {
    /// One line of `format`, with [`flowlog_records::parse`]. A line the
    /// format does not describe, a version other than the format's, or a
    /// NODATA/SKIPDATA record with flow fields is a test failure.
    pub fn parse(format: &Format, line: &str) -> Rec {
        let p = parse_record(format, line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        if let Some(v) = p.version {
            assert_eq!(v, format.version(), "{line:?}");
        }
        let r = p.record;
        if r.log_status != LogStatus::Ok {
            let flow = (r.srcaddr, r.dstaddr, r.srcport, r.dstport, r.protocol, r.packets, r.bytes, r.action);
            assert_eq!(flow, Default::default(), "{line:?}");
        }
        let text = |s: Option<&str>| s.unwrap_or("-").to_string();
        Rec {
            version: p.version,
            interface_id: text(r.interface_id.as_deref()),
            src: r.srcaddr,
            dst: r.dstaddr,
            sport: r.srcport,
            dport: r.dstport,
            proto: r.protocol,
            packets: r.packets.unwrap_or(0),
            bytes: r.bytes.unwrap_or(0),
            start: r.start,
            end: r.end,
            action: text(r.action.map(|a| a.as_str())),
            status: r.log_status.as_str().to_string(),
            tcp_flags: r.tcp_flags,
            direction: text(r.flow_direction.map(|d| d.as_str())),
            reject_reason: text(r.reject_reason.as_deref()),
            k8s: r.k8s.as_deref().cloned().unwrap_or_default(),
        }
    }

    /// The 5-tuple, when the record has one (an OK record).
    pub fn tuple(&self) -> Option<Tuple> {
        Some((self.src?, self.dst?, self.sport?, self.dport?, self.proto?))
    }
}

/// Per (5-tuple, direction): packets, bytes.
pub type Totals = BTreeMap<(Tuple, String), (u64, u64)>;

/// Sums of the OK records per (5-tuple, direction).
pub fn totals(recs: &[Rec]) -> Totals {
    let mut m = BTreeMap::new();
    for r in recs.iter().filter(|r| r.status == "OK") {
        let e = m.entry((r.tuple().unwrap(), r.direction.clone())).or_insert((0, 0));
        e.0 += r.packets;
        e.1 += r.bytes;
    }
    m
}

/// Only the entries of one protocol.
pub fn of_proto(m: &Totals, proto: u8) -> Totals {
    m.iter().filter(|((t, _), _)| t.4 == proto).map(|(k, v)| (k.clone(), *v)).collect()
}

/// Swaps the direction of every entry: what one end sends, the other receives.
pub fn mirrored(m: &Totals) -> Totals {
    m.iter()
        .map(|((t, d), v)| ((*t, if d == "egress" { "ingress".to_string() } else { "egress".to_string() }), *v))
        .collect()
}

/// Every file under `root` (any depth), sorted.
pub fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

/// The record lines of every `.log.gz` file under a `dir:` output (the S3
/// layout on a directory), header lines left out, sorted.
pub fn dir_output_lines(root: &Path) -> Vec<String> {
    use std::io::Read;
    let mut out = Vec::new();
    for p in files_under(root).into_iter().filter(|p| p.to_string_lossy().ends_with(".log.gz")) {
        let mut s = String::new();
        flate2::read::GzDecoder::new(&fs::read(&p).unwrap()[..]).read_to_string(&mut s).unwrap();
        out.extend(s.lines().skip(1).map(str::to_string));
    }
    out.sort();
    out
}
