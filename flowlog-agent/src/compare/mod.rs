//! `flowlog-agent compare`: this agent's records against AWS's native flow
//! logs (or any two flow logs).
//!
//! [`source`] reads records from files, directories, S3 prefixes and
//! CloudWatch log groups; this module matches them; [`report`] prints the
//! result.
//!
//! # Matching
//!
//! Both sides aggregate packets into windows, but not the same windows:
//! native windows are not aligned to the agent's, and may be 60 or 600
//! seconds long. What both agree on is *when* packets were seen, because
//! `start`/`end` of an OK record are the first and last packet's second in
//! the window. So records are not matched window to window: for one flow
//! key (interface, source and destination address and port, protocol; and
//! the direction with `--match-direction`) the records of both sides are
//! chained into **activity groups**: a record joins the open group of its
//! key when its `[start, end]` comes within `tolerance` seconds of the
//! group's `[first start, last end]`; otherwise the group is closed and a
//! new one starts. A flow that is continuously active is one group however
//! either side cut it into windows; a flow that pauses for longer than the
//! tolerance becomes several. A group with records from both sides is a
//! matched flow, and its packet and byte sums, first start, last end and
//! OR-ed tcp-flags are compared; a group with records from one side only is
//! a flow only that side saw.
//!
//! # Streaming
//!
//! Only open groups are held (a key, two sums, a few times): memory grows
//! with the flows active at one time, not with the size of the logs. The
//! two sources are read in step, always from the side that is behind in
//! time, and a group is closed once both sides have read past its last end
//! plus the tolerance plus the **reorder window**: the assumption is that
//! each source is in time order up to that many seconds (S3 objects are
//! read in the order of the time in their names, CloudWatch events in time
//! order). A record older than what was already closed is counted as late
//! (`late_records`); if that number is not 0, increase `--reorder-window`.

pub mod aws;
pub mod cli;
pub mod report;
pub mod source;
pub mod sql;

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::Arc,
};

use serde::Serialize;

use flowlog_records::record::{Action, Direction, FlowRecord, LogStatus};

/// Which side a record comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Native = 0,
    Agent = 1,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::Native => "native",
            Side::Agent => "agent",
        }
    }
}

#[derive(Clone, Debug)]
pub struct MatchOptions {
    /// Seconds by which two records' `[start, end]` may be apart and still
    /// belong to one activity group.
    pub tolerance: u64,
    /// Seconds by which a source may be out of time order.
    pub reorder_window: u64,
    /// Agent interface id → native interface id.
    pub interface_map: HashMap<String, String>,
    /// Make `flow-direction` part of the flow key.
    pub match_direction: bool,
    /// Only records with `since <= start < until` are compared.
    pub since: u64,
    pub until: u64,
    /// Flows to list per kind of difference (the earliest ones).
    pub examples: usize,
}

impl Default for MatchOptions {
    fn default() -> Self {
        MatchOptions { tolerance: 5, reorder_window: 900, interface_map: HashMap::new(), match_direction: false, since: 0, until: u64::MAX, examples: 0 }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    interface: Arc<str>,
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    sport: Option<u16>,
    dport: Option<u16>,
    proto: Option<u8>,
    direction: Option<Direction>,
}

/// One side's part of an activity group.
#[derive(Clone, Copy, Debug, Default)]
struct Part {
    records: u64,
    packets: u64,
    bytes: u64,
    start: u64,
    end: u64,
    /// OR of tcp-flags; `None` if no record had the field.
    flags: Option<u8>,
    /// Bits: 1 ACCEPT, 2 REJECT.
    actions: u8,
    /// Bits: 1 ingress, 2 egress.
    directions: u8,
}

#[derive(Clone, Copy, Debug)]
struct Group {
    lo: u64,
    hi: u64,
    parts: [Option<Part>; 2],
}

/// Sums of one side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct SideCounts {
    /// Records read (all statuses).
    pub records: u64,
    /// Activity groups this side has records in.
    pub flows: u64,
    pub packets: u64,
    pub bytes: u64,
    pub nodata: u64,
    pub skipdata: u64,
}

/// Native vs agent for one quantity: `delta = agent - native`,
/// `delta_pct = delta / native * 100` (`None` when native is 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Delta {
    pub native: u64,
    pub agent: u64,
    pub delta: i64,
    pub delta_pct: Option<f64>,
}

impl Delta {
    fn new(native: u64, agent: u64) -> Delta {
        let delta = agent as i64 - native as i64;
        let delta_pct = (native > 0).then(|| (delta as f64 * 100.0 / native as f64 * 100.0).round() / 100.0);
        Delta { native, agent, delta, delta_pct }
    }
}

/// Signed seconds agent − native over matched flows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Skew {
    /// Matched flows whose time differs at all.
    pub flows_skewed: u64,
    pub mean_abs: f64,
    pub max_abs: u64,
    /// The signed value of the largest difference (agent − native).
    pub max_signed: i64,
    #[serde(skip)]
    sum_abs: u64,
}

impl Skew {
    fn add(&mut self, d: i64) {
        let a = d.unsigned_abs();
        if a > 0 {
            self.flows_skewed += 1;
        }
        self.sum_abs += a;
        if a > self.max_abs {
            self.max_abs = a;
            self.max_signed = d;
        }
    }
    fn merge(&mut self, o: &Skew) {
        self.flows_skewed += o.flows_skewed;
        self.sum_abs += o.sum_abs;
        if o.max_abs > self.max_abs {
            self.max_abs = o.max_abs;
            self.max_signed = o.max_signed;
        }
    }
    fn finish(&mut self, matched: u64) {
        self.mean_abs = if matched == 0 { 0.0 } else { (self.sum_abs as f64 / matched as f64 * 100.0).round() / 100.0 };
    }
}

/// The comparison of one interface (or of all: [`Report::overall`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Stats {
    pub native: SideCounts,
    pub agent: SideCounts,
    /// Flows (activity groups) seen by both sides.
    pub matched_flows: u64,
    /// Flows only native logs have: the agent missed them.
    pub only_native_flows: u64,
    /// Flows only the agent logged.
    pub only_agent_flows: u64,
    /// Packets of only-native / only-agent flows.
    pub only_native_packets: u64,
    pub only_agent_packets: u64,
    /// All OK records.
    pub packets: Delta,
    pub bytes: Delta,
    /// Matched flows only: counting drift, without the missing flows.
    pub matched_packets: Delta,
    pub matched_bytes: Delta,
    /// Matched flows with a different number of packets / bytes.
    pub packet_mismatches: u64,
    pub byte_mismatches: u64,
    pub start_skew: Skew,
    pub end_skew: Skew,
    /// Matched flows whose OR-ed tcp-flags differ (both sides log the field).
    pub tcp_flags_mismatches: u64,
    /// Matched flows where both sides give an action (or direction) and
    /// they differ.
    pub action_mismatches: u64,
    pub direction_mismatches: u64,
}

impl Stats {
    fn merge(&mut self, o: &Stats) {
        for (a, b) in [(&mut self.native, &o.native), (&mut self.agent, &o.agent)] {
            a.records += b.records;
            a.flows += b.flows;
            a.packets += b.packets;
            a.bytes += b.bytes;
            a.nodata += b.nodata;
            a.skipdata += b.skipdata;
        }
        self.matched_flows += o.matched_flows;
        self.only_native_flows += o.only_native_flows;
        self.only_agent_flows += o.only_agent_flows;
        self.only_native_packets += o.only_native_packets;
        self.only_agent_packets += o.only_agent_packets;
        self.matched_packets.native += o.matched_packets.native;
        self.matched_packets.agent += o.matched_packets.agent;
        self.matched_bytes.native += o.matched_bytes.native;
        self.matched_bytes.agent += o.matched_bytes.agent;
        self.packet_mismatches += o.packet_mismatches;
        self.byte_mismatches += o.byte_mismatches;
        self.start_skew.merge(&o.start_skew);
        self.end_skew.merge(&o.end_skew);
        self.tcp_flags_mismatches += o.tcp_flags_mismatches;
        self.action_mismatches += o.action_mismatches;
        self.direction_mismatches += o.direction_mismatches;
    }

    fn finish(&mut self) {
        self.packets = Delta::new(self.native.packets, self.agent.packets);
        self.bytes = Delta::new(self.native.bytes, self.agent.bytes);
        self.matched_packets = Delta::new(self.matched_packets.native, self.matched_packets.agent);
        self.matched_bytes = Delta::new(self.matched_bytes.native, self.matched_bytes.agent);
        self.start_skew.finish(self.matched_flows);
        self.end_skew.finish(self.matched_flows);
    }
}

/// The result of a comparison.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Report {
    /// By (native) interface id; `-` for records without one.
    pub interfaces: BTreeMap<String, Stats>,
    pub overall: Stats,
    /// Records that arrived after their time had been closed (see
    /// `--reorder-window`), per side.
    pub late_records: [u64; 2],
    /// The most activity groups held at once: what memory grows with.
    pub peak_open_flows: usize,
    pub tolerance: u64,
    pub reorder_window: u64,
    /// The earliest flows of each kind of difference (`--examples`).
    pub examples: Examples,
}

/// One flow (activity group) of the report's examples.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct FlowExample {
    pub start: u64,
    pub end: u64,
    pub interface: String,
    /// `srcaddr:srcport -> dstaddr:dstport protocol` (`-` where unknown).
    pub flow: String,
    /// Packets and bytes per side (0 for the side that has none).
    pub native_packets: u64,
    pub agent_packets: u64,
    pub native_bytes: u64,
    pub agent_bytes: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Examples {
    pub only_native: Vec<FlowExample>,
    pub only_agent: Vec<FlowExample>,
    /// Matched flows with other packet or byte counts.
    pub count_mismatch: Vec<FlowExample>,
}

/// Keeps the `n` earliest.
fn keep(v: &mut Vec<FlowExample>, e: FlowExample, n: usize) {
    if n == 0 || (v.len() == n && v.last().is_some_and(|l| &e >= l)) {
        return;
    }
    let i = v.partition_point(|x| x < &e);
    v.insert(i, e);
    v.truncate(n);
}

fn example(key: &Key, g: &Group) -> FlowExample {
    fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
        v.map_or_else(|| "-".to_string(), |v| v.to_string())
    }
    let addr = |a: Option<IpAddr>, p: Option<u16>| match a {
        Some(IpAddr::V6(a)) => format!("[{a}]:{}", opt(p)),
        a => format!("{}:{}", opt(a), opt(p)),
    };
    let [n, a] = g.parts.map(|p| p.unwrap_or_default());
    let mut flow = format!("{} -> {} {}", addr(key.src, key.sport), addr(key.dst, key.dport), opt(key.proto));
    if let Some(d) = key.direction {
        flow = format!("{flow} {}", d.as_str());
    }
    FlowExample {
        start: g.lo,
        end: g.hi,
        interface: key.interface.to_string(),
        flow,
        native_packets: n.packets,
        agent_packets: a.packets,
        native_bytes: n.bytes,
        agent_bytes: a.bytes,
    }
}

/// The matching engine: feed records of both sides with [`Matcher::push`]
/// in (roughly) time order, then [`Matcher::finish`].
pub struct Matcher {
    opts: MatchOptions,
    map: HashMap<Arc<str>, Arc<str>>,
    open: HashMap<Key, Group>,
    stats: HashMap<Arc<str>, Stats>,
    /// Latest `start` read per side (`None`: nothing read yet).
    seen: [Option<u64>; 2],
    /// Whether a side has no more records.
    done: [bool; 2],
    /// Groups ending before this were closed.
    closed_before: u64,
    late: [u64; 2],
    peak_open: usize,
    examples: Examples,
}

impl Matcher {
    pub fn new(opts: MatchOptions) -> Matcher {
        let map = opts.interface_map.iter().map(|(a, n)| (Arc::from(a.as_str()), Arc::from(n.as_str()))).collect();
        Matcher { opts, map, open: HashMap::new(), stats: HashMap::new(), seen: [None; 2], done: [false; 2], closed_before: 0, late: [0; 2], peak_open: 0, examples: Examples::default() }
    }

    /// Activity groups held now.
    pub fn open_flows(&self) -> usize {
        self.open.len()
    }

    pub fn peak_open_flows(&self) -> usize {
        self.peak_open
    }

    /// The latest `start` read from `side`, to read the side that is behind.
    pub fn position(&self, side: Side) -> Option<u64> {
        self.seen[side as usize]
    }

    fn interface(&self, side: Side, r: &FlowRecord) -> Arc<str> {
        let id = r.interface_id.clone().unwrap_or_else(|| Arc::from("-"));
        if side == Side::Agent {
            if let Some(n) = self.map.get(&id) {
                return n.clone();
            }
        }
        id
    }

    fn stats(&mut self, iface: &Arc<str>) -> &mut Stats {
        self.stats.entry(iface.clone()).or_default()
    }

    pub fn push(&mut self, side: Side, r: &FlowRecord) {
        let s = side as usize;
        let iface = self.interface(side, r);
        let advanced = self.seen[s].is_none_or(|p| r.start > p);
        if advanced {
            self.seen[s] = Some(r.start);
        }
        let st = self.stats.entry(iface.clone()).or_default();
        let c = if side == Side::Native { &mut st.native } else { &mut st.agent };
        c.records += 1;
        let (packets, bytes) = (r.packets.unwrap_or(0), r.bytes.unwrap_or(0));
        match r.log_status {
            LogStatus::NoData => c.nodata += 1,
            LogStatus::SkipData => c.skipdata += 1,
            LogStatus::Ok => {
                c.packets += packets;
                c.bytes += bytes;
            }
        }
        if r.log_status != LogStatus::Ok {
            if advanced {
                self.evict();
            }
            return;
        }
        let tol = self.opts.tolerance;
        if r.end.saturating_add(tol) < self.closed_before {
            self.late[s] += 1;
        }
        let key = Key {
            interface: iface,
            src: r.srcaddr,
            dst: r.dstaddr,
            sport: r.srcport,
            dport: r.dstport,
            proto: r.protocol,
            direction: if self.opts.match_direction { r.flow_direction } else { None },
        };
        let end = r.end.max(r.start);
        let part = Part {
            records: 1,
            packets,
            bytes,
            start: r.start,
            end,
            flags: r.tcp_flags,
            actions: match r.action {
                Some(Action::Accept) => 1,
                Some(Action::Reject) => 2,
                None => 0,
            },
            directions: match r.flow_direction {
                Some(Direction::Ingress) => 1,
                Some(Direction::Egress) => 2,
                None => 0,
            },
        };
        let fresh = Group { lo: r.start, hi: end, parts: [None, None] };
        let mut fresh_parts = fresh.parts;
        fresh_parts[s] = Some(part);
        let fresh = Group { parts: fresh_parts, ..fresh };
        match self.open.get_mut(&key) {
            // Records later than the group's end by more than the tolerance
            // start a new group; anything else (overlapping, or earlier:
            // out of order within the reorder window) joins it.
            Some(g) if r.start > g.hi.saturating_add(tol) => {
                let old = std::mem::replace(g, fresh);
                self.close(&key, old);
            }
            Some(g) => {
                g.lo = g.lo.min(r.start);
                g.hi = g.hi.max(end);
                match &mut g.parts[s] {
                    None => g.parts[s] = Some(part),
                    Some(p) => {
                        p.records += 1;
                        p.packets += packets;
                        p.bytes += bytes;
                        p.start = p.start.min(r.start);
                        p.end = p.end.max(end);
                        p.flags = match (p.flags, part.flags) {
                            (Some(a), Some(b)) => Some(a | b),
                            (a, b) => a.or(b),
                        };
                        p.actions |= part.actions;
                        p.directions |= part.directions;
                    }
                }
            }
            None => {
                self.open.insert(key, fresh);
                self.peak_open = self.peak_open.max(self.open.len());
            }
        }
        if advanced {
            self.evict();
        }
    }

    /// Marks `side` as finished: it no longer holds groups open.
    pub fn side_done(&mut self, side: Side) {
        self.done[side as usize] = true;
        self.evict();
    }

    /// The time before which both sides have been read completely (given
    /// the reorder window), or `None` before both have started.
    fn watermark(&self) -> Option<u64> {
        let pos = |s: usize| if self.done[s] { Some(u64::MAX) } else { self.seen[s] };
        let w = pos(0)?.min(pos(1)?);
        Some(w.saturating_sub(self.opts.reorder_window))
    }

    fn evict(&mut self) {
        let Some(w) = self.watermark() else { return };
        // Scan at most once per `tolerance + 1` seconds of progress: the
        // scan costs the open groups, amortised over the records between.
        let step = self.opts.tolerance.max(1);
        if w != u64::MAX && w < self.closed_before.saturating_add(step) {
            return;
        }
        let tol = self.opts.tolerance;
        let expired: Vec<Key> = self.open.iter().filter(|(_, g)| g.hi.saturating_add(tol) < w).map(|(k, _)| k.clone()).collect();
        for k in expired {
            let g = self.open.remove(&k).expect("listed");
            self.close(&k, g);
        }
        self.closed_before = self.closed_before.max(w);
    }

    fn close(&mut self, key: &Key, g: Group) {
        let n = self.opts.examples;
        if n > 0 {
            let list = match g.parts {
                [Some(x), Some(y)] if x.packets != y.packets || x.bytes != y.bytes => Some(&mut self.examples.count_mismatch),
                [Some(_), None] => Some(&mut self.examples.only_native),
                [None, Some(_)] => Some(&mut self.examples.only_agent),
                _ => None,
            };
            if let Some(list) = list {
                keep(list, example(key, &g), n);
            }
        }
        let st = self.stats(&key.interface);
        match g.parts {
            [Some(n), Some(a)] => {
                st.native.flows += 1;
                st.agent.flows += 1;
                st.matched_flows += 1;
                st.matched_packets.native += n.packets;
                st.matched_packets.agent += a.packets;
                st.matched_bytes.native += n.bytes;
                st.matched_bytes.agent += a.bytes;
                st.packet_mismatches += u64::from(n.packets != a.packets);
                st.byte_mismatches += u64::from(n.bytes != a.bytes);
                st.start_skew.add(a.start as i64 - n.start as i64);
                st.end_skew.add(a.end as i64 - n.end as i64);
                if let (Some(x), Some(y)) = (n.flags, a.flags) {
                    st.tcp_flags_mismatches += u64::from(x != y);
                }
                st.action_mismatches += u64::from(n.actions != 0 && a.actions != 0 && n.actions != a.actions);
                st.direction_mismatches += u64::from(n.directions != 0 && a.directions != 0 && n.directions != a.directions);
            }
            [Some(n), None] => {
                st.native.flows += 1;
                st.only_native_flows += 1;
                st.only_native_packets += n.packets;
            }
            [None, Some(a)] => {
                st.agent.flows += 1;
                st.only_agent_flows += 1;
                st.only_agent_packets += a.packets;
            }
            [None, None] => unreachable!("a group has at least one record"),
        }
    }

    pub fn finish(mut self) -> Report {
        self.done = [true, true];
        let open: Vec<(Key, Group)> = self.open.drain().collect();
        for (k, g) in open {
            self.close(&k, g);
        }
        let mut overall = Stats::default();
        let mut interfaces = BTreeMap::new();
        for (iface, mut st) in self.stats {
            overall.merge(&st);
            st.finish();
            interfaces.insert(iface.to_string(), st);
        }
        overall.finish();
        Report {
            interfaces,
            overall,
            late_records: self.late,
            peak_open_flows: self.peak_open,
            tolerance: self.opts.tolerance,
            reorder_window: self.opts.reorder_window,
            examples: self.examples,
        }
    }
}

/// User-given limits (the `--max-*` arguments); exceeding one makes
/// `compare` exit with status 3.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Limits {
    /// Limit on |packet delta| in percent of native packets, overall.
    #[arg(long, value_name = "PCT")]
    pub max_packet_delta_pct: Option<f64>,
    /// Limit on |byte delta| in percent of native bytes, overall.
    #[arg(long, value_name = "PCT")]
    pub max_byte_delta_pct: Option<f64>,
    /// Limit on flows only native logs have.
    #[arg(long, value_name = "N")]
    pub max_missing_flows: Option<u64>,
    /// Limit on flows only the agent logged.
    #[arg(long, value_name = "N")]
    pub max_extra_flows: Option<u64>,
    /// Limit on start/end skew of matched flows, seconds.
    #[arg(long, value_name = "SECS")]
    pub max_skew: Option<u64>,
    /// Limit on matched flows whose tcp-flags differ.
    #[arg(long, value_name = "N")]
    pub max_tcp_flags_mismatches: Option<u64>,
}

impl Limits {
    /// The limits `r` exceeds (overall figures), as messages.
    pub fn check(&self, r: &Report) -> Vec<String> {
        let o = &r.overall;
        let mut out = Vec::new();
        let pct = |d: &Delta| d.delta_pct.map(f64::abs).unwrap_or(if d.agent > 0 { f64::INFINITY } else { 0.0 });
        if let Some(m) = self.max_packet_delta_pct {
            if pct(&o.packets) > m {
                out.push(format!("packet delta {:+} ({}) exceeds --max-packet-delta-pct {m}", o.packets.delta, fmt_pct(o.packets.delta_pct)));
            }
        }
        if let Some(m) = self.max_byte_delta_pct {
            if pct(&o.bytes) > m {
                out.push(format!("byte delta {:+} ({}) exceeds --max-byte-delta-pct {m}", o.bytes.delta, fmt_pct(o.bytes.delta_pct)));
            }
        }
        if let Some(m) = self.max_missing_flows {
            if o.only_native_flows > m {
                out.push(format!("{} flows only in native logs exceed --max-missing-flows {m}", o.only_native_flows));
            }
        }
        if let Some(m) = self.max_extra_flows {
            if o.only_agent_flows > m {
                out.push(format!("{} flows only in agent logs exceed --max-extra-flows {m}", o.only_agent_flows));
            }
        }
        if let Some(m) = self.max_skew {
            let s = o.start_skew.max_abs.max(o.end_skew.max_abs);
            if s > m {
                out.push(format!("start/end skew of {s}s exceeds --max-skew {m}"));
            }
        }
        if let Some(m) = self.max_tcp_flags_mismatches {
            if o.tcp_flags_mismatches > m {
                out.push(format!("{} tcp-flags disagreements exceed --max-tcp-flags-mismatches {m}", o.tcp_flags_mismatches));
            }
        }
        out
    }
}

/// `+1.25%`, or `n/a` without a base.
pub fn fmt_pct(p: Option<f64>) -> String {
    match p {
        Some(p) => format!("{p:+.2}%"),
        None => "n/a".into(),
    }
}

/// Called with the matcher, the records read per side and the sources'
/// positions.
pub type Progress<'a> = dyn FnMut(&Matcher, [u64; 2], [String; 2]) + 'a;

/// Reads both sources in step (always the one behind in time) through a
/// [`Matcher`]. `progress` is called every 65,536 records with the matcher,
/// the records read per side and the sources' positions.
pub fn compare(
    native: &mut dyn source::RecordSource,
    agent: &mut dyn source::RecordSource,
    opts: MatchOptions,
    progress: &mut Progress<'_>,
) -> anyhow::Result<Report> {
    let (since, until) = (opts.since, opts.until);
    let mut m = Matcher::new(opts);
    let srcs: [&mut dyn source::RecordSource; 2] = [native, agent];
    let mut done = [false, false];
    let mut n = [0u64; 2];
    loop {
        let side = match done {
            [true, true] => break,
            [true, false] => Side::Agent,
            [false, true] => Side::Native,
            [false, false] => match (m.position(Side::Native), m.position(Side::Agent)) {
                (Some(a), Some(b)) if b < a => Side::Agent,
                (Some(_), None) => Side::Agent,
                _ => Side::Native,
            },
        };
        let s = side as usize;
        match srcs[s].next_record().map_err(|e| e.context(side.name()))? {
            Some(r) => {
                n[s] += 1;
                if r.start >= since && r.start < until {
                    m.push(side, r);
                }
                if (n[0] + n[1]) % 65_536 == 0 {
                    progress(&m, n, [srcs[0].position(), srcs[1].position()]);
                }
            }
            None => {
                done[s] = true;
                m.side_done(side);
            }
        }
    }
    progress(&m, n, [srcs[0].position(), srcs[1].position()]);
    Ok(m.finish())
}

#[cfg(test)]
mod tests;
