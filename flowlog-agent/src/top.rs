//! `flowlog-agent top`: the traffic of a running agent, live, from its
//! endpoint ([`crate::live`]): per interface packets/s and bits/s in and out,
//! and the top flows of the open window; a terminal view (ratatui) refreshed
//! every second, or one snapshot for scripts (`--once`).
//!
//! Rates come from successive polls. Counts restart at every window flip:
//! [`rate`] then takes the average since the new window's start, never a
//! difference across windows (no negative rate, no spike).

use std::{
    collections::HashMap,
    io::Read,
    net::IpAddr,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use ratatui::{
    crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
    layout::{Constraint, Layout},
    style::{Modifier, Style},
    text::Line,
    widgets::{Block, Paragraph, Row, Table},
    Frame,
};
use serde::Deserialize;

use crate::live::{Flow, Snapshot, DEFAULT_LIVE_SOCKET};

/// Arguments of `flowlog-agent top`.
#[derive(clap::Args, Debug)]
pub struct TopArgs {
    /// The agent's live socket (its `live-socket`). Default: the config
    /// file's `live-socket` with --config, else /run/flowlog/live.sock.
    #[arg(long, env = "FLOWLOG_LIVE_SOCKET")]
    pub live_socket: Option<PathBuf>,
    /// The agent's config file, to find its `live-socket`.
    #[arg(long, short = 'c', env = "FLOWLOG_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print one snapshot and exit (for scripts) instead of the terminal view;
    /// rates are then averages since the window started.
    #[arg(long)]
    pub once: bool,
    /// With --once: `text` (tables) or `json` (the endpoint's document, every flow).
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
    /// Short for --format json.
    #[arg(long)]
    pub json: bool,
    /// Order of the flows (keys `b` and `p` in the terminal view).
    #[arg(long, value_enum, default_value = "bytes")]
    pub sort: SortKey,
    /// Only flows matching every term (space-separated): an interface name,
    /// an address or its beginning (`10.0.`), a port, or a pod (key `/`).
    #[arg(long, default_value = "")]
    pub filter: String,
    /// Flows shown with --once --format text (0: all).
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SortKey {
    Bytes,
    Packets,
}

impl SortKey {
    fn name(self) -> &'static str {
        match self {
            SortKey::Bytes => "bytes",
            SortKey::Packets => "packets",
        }
    }
}

pub fn main(a: TopArgs) -> ExitCode {
    match run(a) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(a: TopArgs) -> Result<()> {
    let socket = socket_path(&a)?;
    if a.once {
        let (raw, snap) = fetch(&socket)?;
        if a.json || a.format == OutputFormat::Json {
            println!("{raw}");
        } else {
            print!("{}", text(&View::new(None, &snap, a.sort, &a.filter), a.limit));
        }
        return Ok(());
    }
    interactive(&socket, a.sort, a.filter)
}

fn socket_path(a: &TopArgs) -> Result<PathBuf> {
    if let Some(p) = &a.live_socket {
        return Ok(p.clone());
    }
    let from_file = match &a.config {
        Some(c) => crate::config::Keys::load(c).map_err(|e| anyhow::anyhow!("{e}"))?.live_socket,
        None => None,
    };
    match from_file.as_deref() {
        Some("off") => {
            anyhow::bail!("live-socket is off in {}", a.config.as_deref().unwrap_or(Path::new("")).display())
        }
        Some(p) => Ok(PathBuf::from(p)),
        None => Ok(PathBuf::from(DEFAULT_LIVE_SOCKET)),
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Reply {
    Ok(Snapshot),
    Err { error: String },
}

/// One snapshot from the endpoint: the document as read, and parsed.
pub fn fetch(socket: &Path) -> Result<(String, Snapshot)> {
    let mut s = UnixStream::connect(socket).map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::PermissionDenied => ": the live socket is for root only",
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                ": is the agent running (live-socket)?"
            }
            _ => "",
        };
        anyhow::anyhow!("connecting to {}: {e}{hint}", socket.display())
    })?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).with_context(|| format!("reading {}", socket.display()))?;
    match serde_json::from_str(&raw)
        .with_context(|| format!("the answer of {} is not a live snapshot", socket.display()))?
    {
        Reply::Ok(snap) => Ok((raw, snap)),
        Reply::Err { error } => anyhow::bail!("the agent could not read its tables: {error}"),
    }
}

/// When a snapshot was read, and in which window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Poll {
    pub window_start: u64,
    pub now_ms: u64,
}

impl Poll {
    fn of(s: &Snapshot) -> Poll {
        Poll { window_start: s.window_start, now_ms: s.now_ms }
    }
}

/// Per second, of a count that restarts with every window: the growth since
/// the previous poll of the same window; after a flip (or on the first poll)
/// the average since the window started, over at least one second.
pub fn rate(prev: Option<Poll>, prev_count: u64, cur: Poll, count: u64) -> f64 {
    match prev {
        Some(p) if p.window_start == cur.window_start && cur.now_ms > p.now_ms && count >= prev_count => {
            (count - prev_count) as f64 * 1000.0 / (cur.now_ms - p.now_ms) as f64
        }
        _ => count as f64 * 1000.0 / cur.now_ms.saturating_sub(cur.window_start * 1000).max(1000) as f64,
    }
}

type FlowId = (String, IpAddr, IpAddr, u16, u16, u8, String, String);

fn flow_id(f: &Flow) -> FlowId {
    (f.interface.clone(), f.srcaddr, f.dstaddr, f.srcport, f.dstport, f.protocol, f.direction.clone(), f.action.clone())
}

/// What the view shows: rows with rates, filtered and sorted.
#[derive(Clone, Debug, Default)]
pub struct View {
    pub window_start: u64,
    pub now_ms: u64,
    pub interfaces: Vec<IfaceRow>,
    pub flows: Vec<FlowRow>,
    pub sort: Option<SortKey>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct IfaceRow {
    pub name: String,
    /// packets/s in, bits/s in, packets/s out, bits/s out.
    pub rates: [f64; 4],
    /// packets in, bytes in, packets out, bytes out, since the window started.
    pub counts: [u64; 4],
}

#[derive(Clone, Debug, PartialEq)]
pub struct FlowRow {
    pub flow: Flow,
    pub pps: f64,
    pub bps: f64,
}

/// Whether a flow matches every term of `filter`.
pub fn matches(f: &Flow, filter: &str) -> bool {
    filter.split_whitespace().all(|t| {
        f.interface == t
            || f.srcaddr.to_string().starts_with(t)
            || f.dstaddr.to_string().starts_with(t)
            || t.parse::<u16>().is_ok_and(|p| p == f.srcport || p == f.dstport)
            || [&f.src_pod, &f.dst_pod].iter().any(|p| p.as_deref() == Some(t))
    })
}

impl View {
    /// The rows of `cur`, with rates against `prev` (the previous poll).
    pub fn new(prev: Option<&Snapshot>, cur: &Snapshot, sort: SortKey, filter: &str) -> View {
        let (p, c) = (prev.map(Poll::of), Poll::of(cur));
        let prev_ifaces: HashMap<&str, [u64; 4]> = prev
            .map(|s| {
                s.interfaces
                    .iter()
                    .map(|i| (i.name.as_str(), [i.packets_in, i.bytes_in, i.packets_out, i.bytes_out]))
                    .collect()
            })
            .unwrap_or_default();
        // Interfaces a term names: only those are listed.
        let named: Vec<&str> =
            filter.split_whitespace().filter(|t| cur.interfaces.iter().any(|i| i.name == *t)).collect();
        let interfaces = cur
            .interfaces
            .iter()
            .filter(|i| named.is_empty() || named.contains(&i.name.as_str()))
            .map(|i| {
                let counts = [i.packets_in, i.bytes_in, i.packets_out, i.bytes_out];
                let before = prev_ifaces.get(i.name.as_str()).copied().unwrap_or_default();
                let r = |j: usize, bits: f64| rate(p, before[j], c, counts[j]) * bits;
                IfaceRow { name: i.name.clone(), rates: [r(0, 1.0), r(1, 8.0), r(2, 1.0), r(3, 8.0)], counts }
            })
            .collect();
        let prev_flows: HashMap<FlowId, (u64, u64)> =
            prev.map(|s| s.flows.iter().map(|f| (flow_id(f), (f.packets, f.bytes))).collect()).unwrap_or_default();
        let mut flows: Vec<FlowRow> = cur
            .flows
            .iter()
            .filter(|f| matches(f, filter))
            .map(|f| {
                let (pp, pb) = prev_flows.get(&flow_id(f)).copied().unwrap_or_default();
                FlowRow { flow: f.clone(), pps: rate(p, pp, c, f.packets), bps: rate(p, pb, c, f.bytes) * 8.0 }
            })
            .collect();
        let bytes = |r: &FlowRow| (r.flow.bytes, r.flow.packets);
        let packets = |r: &FlowRow| (r.flow.packets, r.flow.bytes);
        match sort {
            SortKey::Bytes => flows.sort_by_key(|r| std::cmp::Reverse(bytes(r))),
            SortKey::Packets => flows.sort_by_key(|r| std::cmp::Reverse(packets(r))),
        }
        View { window_start: cur.window_start, now_ms: cur.now_ms, interfaces, flows, sort: Some(sort) }
    }
}

fn proto(p: u8) -> String {
    match p {
        1 => "ICMP".into(),
        6 => "TCP".into(),
        17 => "UDP".into(),
        58 => "ICMPv6".into(),
        n => n.to_string(),
    }
}

/// 1234567 → "1.23M": rates in the tables.
fn si(v: f64) -> String {
    match v {
        v if v >= 1e9 => format!("{:.2}G", v / 1e9),
        v if v >= 1e6 => format!("{:.2}M", v / 1e6),
        v if v >= 1e3 => format!("{:.2}k", v / 1e3),
        v => format!("{v:.0}"),
    }
}

fn endpoint(a: IpAddr, port: u16) -> String {
    match a {
        IpAddr::V4(_) => format!("{a}:{port}"),
        IpAddr::V6(_) => format!("[{a}]:{port}"),
    }
}

fn pod(f: &Flow) -> String {
    match (&f.src_pod, &f.dst_pod) {
        (None, None) => String::new(),
        (s, d) => format!("{} > {}", s.as_deref().unwrap_or("-"), d.as_deref().unwrap_or("-")),
    }
}

fn window_line(v: &View) -> String {
    let start = jiff::Timestamp::from_second(v.window_start as i64)
        .map_or_else(|_| v.window_start.to_string(), |t| t.to_string());
    format!("window {start} ({} s so far)", v.now_ms.saturating_sub(v.window_start * 1000) / 1000)
}

const IFACE_HEAD: [&str; 9] = [
    "INTERFACE",
    "PKT/S IN",
    "BIT/S IN",
    "PKT/S OUT",
    "BIT/S OUT",
    "PACKETS IN",
    "BYTES IN",
    "PACKETS OUT",
    "BYTES OUT",
];
const FLOW_HEAD: [&str; 10] =
    ["INTERFACE", "DIR", "ACTION", "PROTO", "SOURCE", "DESTINATION", "PACKETS", "BYTES", "BIT/S", "POD"];

fn iface_cells(i: &IfaceRow) -> Vec<String> {
    let mut c = vec![i.name.clone()];
    c.extend(i.rates.iter().map(|r| si(*r)));
    c.extend(i.counts.iter().map(|n| n.to_string()));
    c
}

fn flow_cells(r: &FlowRow) -> Vec<String> {
    let f = &r.flow;
    vec![
        f.interface.clone(),
        f.direction.clone(),
        f.action.clone(),
        proto(f.protocol),
        endpoint(f.srcaddr, f.srcport),
        endpoint(f.dstaddr, f.dstport),
        f.packets.to_string(),
        f.bytes.to_string(),
        si(r.bps),
        pod(f),
    ]
}

/// `--once --format text`: the two tables, columns aligned.
pub fn text(v: &View, limit: usize) -> String {
    fn table(head: &[&str], rows: Vec<Vec<String>>) -> String {
        let mut w: Vec<usize> = head.iter().map(|h| h.len()).collect();
        for r in &rows {
            for (i, c) in r.iter().enumerate() {
                w[i] = w[i].max(c.len());
            }
        }
        let line = |cells: Vec<&str>| {
            let l: Vec<String> = cells.iter().enumerate().map(|(i, c)| format!("{c:<0$}", w[i])).collect();
            l.join("  ").trim_end().to_string() + "\n"
        };
        let mut out = line(head.to_vec());
        for r in &rows {
            out += &line(r.iter().map(String::as_str).collect());
        }
        out
    }
    let n = if limit == 0 { v.flows.len() } else { limit.min(v.flows.len()) };
    let sort = v.sort.map_or("bytes", SortKey::name);
    format!(
        "{}\n\n{}\nflows by {sort} ({n} of {})\n{}",
        window_line(v),
        table(&IFACE_HEAD, v.interfaces.iter().map(iface_cells).collect()),
        v.flows.len(),
        table(&FLOW_HEAD, v.flows[..n].iter().map(flow_cells).collect())
    )
}

/// The terminal view's state between frames.
struct Screen {
    socket: PathBuf,
    sort: SortKey,
    filter: String,
    /// The filter being typed after `/`.
    editing: Option<String>,
    prev: Option<Snapshot>,
    cur: Option<Snapshot>,
    view: View,
    error: Option<String>,
}

impl Screen {
    fn poll(&mut self) {
        match fetch(&self.socket) {
            Ok((_, s)) => {
                self.prev = self.cur.replace(s);
                self.error = None;
                self.rebuild();
            }
            Err(e) => self.error = Some(format!("{e:#}")),
        }
    }

    fn rebuild(&mut self) {
        if let Some(c) = &self.cur {
            self.view = View::new(self.prev.as_ref(), c, self.sort, &self.filter);
        }
    }

    /// A key; whether to quit.
    fn key(&mut self, code: KeyCode, mods: KeyModifiers) -> bool {
        if code == KeyCode::Char('c') && mods.contains(KeyModifiers::CONTROL) {
            return true;
        }
        if let Some(e) = &mut self.editing {
            match code {
                KeyCode::Enter => {
                    self.filter = std::mem::take(e);
                    self.editing = None;
                    self.rebuild();
                }
                KeyCode::Esc => self.editing = None,
                KeyCode::Backspace => {
                    e.pop();
                }
                KeyCode::Char(c) => e.push(c),
                _ => {}
            }
            return false;
        }
        match code {
            KeyCode::Char('q') | KeyCode::Esc => return true,
            KeyCode::Char('b') => self.sort = SortKey::Bytes,
            KeyCode::Char('p') => self.sort = SortKey::Packets,
            KeyCode::Char('/') => self.editing = Some(self.filter.clone()),
            KeyCode::Char('c') => self.filter.clear(),
            _ => return false,
        }
        self.rebuild();
        false
    }

    fn draw(&self, f: &mut Frame) {
        let [head, ifaces, flows, keys] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Length(self.view.interfaces.len() as u16 + 3),
            Constraint::Min(3),
            Constraint::Length(1),
        ])
        .areas(f.area());
        let status = match (&self.error, &self.cur) {
            (Some(e), _) => format!("{}  error: {e}", self.socket.display()),
            (None, None) => format!("{}  waiting for the agent", self.socket.display()),
            (None, Some(_)) => format!("{}  {}", self.socket.display(), window_line(&self.view)),
        };
        f.render_widget(Paragraph::new(status), head);
        let bold = Style::default().add_modifier(Modifier::BOLD);
        let widths = |n: usize, first: u16| {
            let mut w = vec![Constraint::Length(first)];
            w.extend(std::iter::repeat_n(Constraint::Fill(1), n - 1));
            w
        };
        let rows = self.view.interfaces.iter().map(|i| Row::new(iface_cells(i)));
        let t = Table::new(rows, widths(IFACE_HEAD.len(), 12))
            .header(Row::new(IFACE_HEAD).style(bold))
            .block(Block::bordered().title("interfaces (rates per second)"));
        f.render_widget(t, ifaces);
        let rows = self.view.flows.iter().map(|r| Row::new(flow_cells(r)));
        let w = [
            Constraint::Length(12),
            Constraint::Length(7),
            Constraint::Length(6),
            Constraint::Length(6),
            Constraint::Fill(3),
            Constraint::Fill(3),
            Constraint::Length(10),
            Constraint::Length(12),
            Constraint::Length(9),
            Constraint::Fill(2),
        ];
        let title = format!(
            "flows by {} ({}){}",
            self.sort.name(),
            self.view.flows.len(),
            if self.filter.is_empty() { String::new() } else { format!(", filter: {}", self.filter) }
        );
        let t = Table::new(rows, w).header(Row::new(FLOW_HEAD).style(bold)).block(Block::bordered().title(title));
        f.render_widget(t, flows);
        let help = match &self.editing {
            Some(e) => Line::from(format!("filter (interface, address, port, pod; Enter applies, Esc cancels): {e}_")),
            None => Line::from("q quit  b sort by bytes  p sort by packets  / filter  c clear filter"),
        };
        f.render_widget(Paragraph::new(help), keys);
    }
}

fn interactive(socket: &Path, sort: SortKey, filter: String) -> Result<()> {
    // Fails before the screen changes when the agent cannot be reached.
    fetch(socket)?;
    let mut s = Screen {
        socket: socket.into(),
        sort,
        filter,
        editing: None,
        prev: None,
        cur: None,
        view: View::default(),
        error: None,
    };
    let mut terminal = ratatui::init();
    let result = (|| -> Result<()> {
        let mut next = Instant::now();
        loop {
            if Instant::now() >= next {
                s.poll();
                next = Instant::now() + Duration::from_secs(1);
            }
            terminal.draw(|f| s.draw(f))?;
            if event::poll(next.saturating_duration_since(Instant::now()))? {
                if let Event::Key(k) = event::read()? {
                    if k.kind == KeyEventKind::Press && s.key(k.code, k.modifiers) {
                        return Ok(());
                    }
                }
            }
        }
    })();
    ratatui::restore();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::Interface;

    fn flow(sport: u16, packets: u64, bytes: u64) -> Flow {
        Flow {
            interface: "veth0".into(),
            srcaddr: "10.0.0.1".parse().unwrap(),
            dstaddr: "10.0.0.2".parse().unwrap(),
            srcport: sport,
            dstport: 53,
            protocol: 17,
            direction: "egress".into(),
            action: "ACCEPT".into(),
            packets,
            bytes,
            src_pod: None,
            dst_pod: None,
        }
    }

    fn snap(window_start: u64, now_ms: u64, flows: Vec<Flow>) -> Snapshot {
        let (p, b) = flows.iter().fold((0, 0), |(p, b), f| (p + f.packets, b + f.bytes));
        let i = Interface { name: "veth0".into(), ifindex: 2, packets_out: p, bytes_out: b, ..Default::default() };
        Snapshot { window_start, now_ms, interfaces: vec![i], flows }
    }

    /// Growth over the poll interval within a window; across a flip the
    /// average since the new window began, never negative, never more than
    /// the count per second.
    #[test]
    fn rates_across_a_window_flip() {
        let p = |window_start, now_ms| Poll { window_start, now_ms };
        assert_eq!(rate(Some(p(1000, 1_005_000)), 100, p(1000, 1_006_000), 350), 250.0);
        assert_eq!(rate(Some(p(1000, 1_005_000)), 100, p(1000, 1_005_500), 350), 500.0);
        // Flipped at 1060: the count restarted from 0 (lower than before).
        assert_eq!(rate(Some(p(1000, 1_059_500)), 9000, p(1060, 1_060_500), 40), 40.0);
        assert_eq!(rate(Some(p(1000, 1_059_500)), 9000, p(1060, 1_062_000), 40), 20.0);
        // First poll: the window's average.
        assert_eq!(rate(None, 0, p(1000, 1_010_000), 500), 50.0);
        // A count that went back in the same window (agent restarted): no negative rate.
        assert_eq!(rate(Some(p(1000, 1_005_000)), 100, p(1000, 1_006_000), 30), 30.0 / 6.0);
    }

    /// --live-socket, else the config file's live-socket, else the default;
    /// an agent that is not there is a clear error.
    #[test]
    fn socket_from_flag_config_or_default() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            top: TopArgs,
        }
        let dir = std::env::temp_dir().join(format!("flowlog-top-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (on, off) = (dir.join("on.toml"), dir.join("off.toml"));
        std::fs::write(&on, "live-socket = \"/run/x/live.sock\"\n").unwrap();
        std::fs::write(&off, "live-socket = \"off\"\n").unwrap();
        let path =
            |args: &[&str]| socket_path(&Cli::parse_from([&["top"], args].concat()).top).map_err(|e| e.to_string());
        assert_eq!(path(&["--live-socket", "/a.sock", "-c", on.to_str().unwrap()]), Ok("/a.sock".into()));
        assert_eq!(path(&["-c", on.to_str().unwrap()]), Ok("/run/x/live.sock".into()));
        assert_eq!(path(&["-c", off.to_str().unwrap()]), Err(format!("live-socket is off in {}", off.display())));
        let err = fetch(&dir.join("none.sock")).unwrap_err().to_string();
        assert!(err.ends_with(": is the agent running (live-socket)?"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn view_rates_sort_and_filter() {
        let a = snap(1000, 1_004_000, vec![flow(1, 10, 1000), flow(2, 40, 1900)]);
        let b = snap(1000, 1_005_000, vec![flow(1, 20, 2000), flow(2, 40, 1900), flow(3, 1, 5000)]);
        let v = View::new(Some(&a), &b, SortKey::Bytes, "");
        let got: Vec<(u16, f64, f64)> = v.flows.iter().map(|r| (r.flow.srcport, r.pps, r.bps)).collect();
        assert_eq!(got, [(3, 1.0, 40_000.0), (1, 10.0, 8000.0), (2, 0.0, 0.0)]);
        assert_eq!(v.interfaces[0].counts, [0, 0, 61, 8900]);
        assert_eq!(v.interfaces[0].rates, [0.0, 0.0, 11.0, 48_000.0]);
        let v = View::new(Some(&a), &b, SortKey::Packets, "");
        assert_eq!(v.flows.iter().map(|r| r.flow.srcport).collect::<Vec<_>>(), [2, 1, 3]);
        let v = View::new(Some(&a), &b, SortKey::Bytes, "veth0 2");
        assert_eq!(v.flows.iter().map(|r| r.flow.srcport).collect::<Vec<_>>(), [2]);
        let v = View::new(None, &b, SortKey::Bytes, "10.0.0.9");
        assert!(v.flows.is_empty());
        assert_eq!(View::new(None, &b, SortKey::Bytes, "10.0.").flows.len(), 3);
        let out = text(&View::new(None, &b, SortKey::Bytes, ""), 2);
        assert!(out.contains("flows by bytes (2 of 3)"), "{out}");
        // Averages since the window started (5 s).
        assert!(
            out.contains("\nveth0      egress  ACCEPT  UDP    10.0.0.1:3  10.0.0.2:53  1        5000   8.00k\n"),
            "{out}"
        );
        assert!(
            out.contains(
                "\nveth0      0         0         12         14.24k     0           0         61           8900\n"
            ),
            "{out}"
        );
    }
}
