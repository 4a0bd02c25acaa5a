//! Generated native-style logs with known differences → exact figures.

use std::{io::Write as _, sync::Arc};

use super::{
    source::{local, name_time, sort_objects, ObjectReader, RecordSource},
    *,
};
use flowlog_testkit::parquet::{parquet_object as pq, parquet_object_legacy};
use flowlog_records::{
    format::Format,
    record::{Action, Direction, FlowRecord, LogStatus},
};

/// Records of memory, for tests.
struct VecSource {
    records: std::vec::IntoIter<FlowRecord>,
    cur: FlowRecord,
}

impl VecSource {
    fn new(records: Vec<FlowRecord>) -> VecSource {
        VecSource { records: records.into_iter(), cur: FlowRecord::default() }
    }
}

impl RecordSource for VecSource {
    fn next_record(&mut self) -> anyhow::Result<Option<&FlowRecord>> {
        Ok(match self.records.next() {
            Some(r) => {
                self.cur = r;
                Some(&self.cur)
            }
            None => None,
        })
    }
    fn position(&self) -> String {
        String::new()
    }
}

/// One packet of a flow: (second, bytes, tcp-flags).
type Pkt = (u64, u64, u8);

struct Flow {
    iface: &'static str,
    src: &'static str,
    dst: &'static str,
    ports: (u16, u16),
    proto: u8,
    dir: Direction,
    pkts: Vec<Pkt>,
}

/// Cuts a flow's packets into records of `width`-second windows starting
/// at multiples of `width` plus `offset`, as either side would.
fn windows(f: &Flow, width: u64, offset: u64) -> Vec<(u64, FlowRecord)> {
    let mut out: Vec<(u64, FlowRecord)> = Vec::new();
    for &(t, b, fl) in &f.pkts {
        let w = (t + width - offset) / width;
        match out.last_mut() {
            Some((lw, r)) if *lw == w => {
                r.packets = Some(r.packets.unwrap() + 1);
                r.bytes = Some(r.bytes.unwrap() + b);
                r.end = t;
                r.tcp_flags = Some(r.tcp_flags.unwrap() | fl);
            }
            _ => out.push((
                w,
                FlowRecord {
                    srcaddr: Some(f.src.parse().unwrap()),
                    dstaddr: Some(f.dst.parse().unwrap()),
                    srcport: Some(f.ports.0),
                    dstport: Some(f.ports.1),
                    protocol: Some(f.proto),
                    packets: Some(1),
                    bytes: Some(b),
                    action: Some(Action::Accept),
                    tcp_flags: Some(fl),
                    flow_direction: Some(f.dir),
                    ..FlowRecord::status_only("123456789012".into(), f.iface.into(), t, t, LogStatus::Ok)
                },
            )),
        }
    }
    out
}

fn pkts(from: u64, n: u64, bytes: u64) -> Vec<Pkt> {
    (from..from + n).map(|t| (t, bytes, 0)).collect()
}

/// The scenario: what each side saw.
///
/// | flow | interface | native | agent |
/// |---|---|---|---|
/// | A tcp 10.0.0.1:40000→10.0.0.2:443 | eni-1 | 300 pkts × 100 B, t 1000..1299, SYN first, FIN last | same |
/// | B tcp reverse of A | eni-1 | 300 × 1000 B | every 10th packet missing: 270 |
/// | C udp 10.0.0.1:5353→10.0.0.3:53 | eni-1 | 5 × 60 B | — |
/// | D tcp 10.0.1.1:1234→10.0.1.2:80 | eni-2 (agent: eni-agent2) | 20 × 50 B, t 1200.., flags SYN-ACK | 2 s later, flags SYN |
/// | E udp 10.0.1.1:9999→10.0.1.9:9999 | eni-2 | — | 3 × 70 B |
///
/// Plus NODATA: native 2 on eni-2, agent 1; SKIPDATA: agent 1 on eni-1.
fn scenario() -> (Vec<Flow>, Vec<Flow>) {
    let mut a = pkts(1000, 300, 100);
    a[0].2 = 2;
    a[299].2 = 1;
    let b = pkts(1000, 300, 1000);
    let b_agent: Vec<Pkt> = b.iter().copied().filter(|p| (p.0 - 1000) % 10 != 9).collect();
    let d: Vec<Pkt> = pkts(1200, 20, 50).into_iter().map(|(t, b, _)| (t, b, 18)).collect();
    let d_agent: Vec<Pkt> = d.iter().map(|&(t, b, _)| (t + 2, b, 2)).collect();
    let flow = |iface, src, dst, ports, proto, dir, pkts| Flow { iface, src, dst, ports, proto, dir, pkts };
    let native = vec![
        flow("eni-1", "10.0.0.1", "10.0.0.2", (40000, 443), 6, Direction::Egress, a.clone()),
        flow("eni-1", "10.0.0.2", "10.0.0.1", (443, 40000), 6, Direction::Ingress, b),
        flow("eni-1", "10.0.0.1", "10.0.0.3", (5353, 53), 17, Direction::Egress, pkts(1100, 5, 60)),
        flow("eni-2", "10.0.1.1", "10.0.1.2", (1234, 80), 6, Direction::Egress, d),
    ];
    let agent = vec![
        flow("eni-1", "10.0.0.1", "10.0.0.2", (40000, 443), 6, Direction::Egress, a),
        flow("eni-1", "10.0.0.2", "10.0.0.1", (443, 40000), 6, Direction::Ingress, b_agent),
        flow("eni-agent2", "10.0.1.1", "10.0.1.2", (1234, 80), 6, Direction::Egress, d_agent),
        flow("eni-agent2", "10.0.1.1", "10.0.1.9", (9999, 9999), 17, Direction::Egress, pkts(1250, 3, 70)),
    ];
    (native, agent)
}

/// Records of all flows in window order (then flow order), with the
/// status records put in their windows.
fn records(flows: &[Flow], width: u64, offset: u64, status: &[(&str, u64, LogStatus)]) -> Vec<FlowRecord> {
    let mut all: Vec<(u64, usize, FlowRecord)> = Vec::new();
    for (i, f) in flows.iter().enumerate() {
        all.extend(windows(f, width, offset).into_iter().map(|(w, r)| (w, i, r)));
    }
    for (j, (iface, t, st)) in status.iter().enumerate() {
        let w = (t + width - offset) / width;
        let start = (w - 1) * width + offset;
        all.push((w, 100 + j, FlowRecord::status_only("unknown".into(), Arc::from(*iface), start, start + width, *st)));
    }
    all.sort_by_key(|(w, i, _)| (*w, *i));
    all.into_iter().map(|(_, _, r)| r).collect()
}

const NATIVE_STATUS: &[(&str, u64, LogStatus)] = &[("eni-2", 1010, LogStatus::NoData), ("eni-2", 1070, LogStatus::NoData)];
const AGENT_STATUS: &[(&str, u64, LogStatus)] = &[("eni-agent2", 1010, LogStatus::NoData), ("eni-1", 1130, LogStatus::SkipData)];

fn opts() -> MatchOptions {
    MatchOptions { interface_map: [("eni-agent2".to_string(), "eni-2".to_string())].into(), ..MatchOptions::default() }
}

fn run(native: Vec<FlowRecord>, agent: Vec<FlowRecord>, o: MatchOptions) -> Report {
    compare(&mut VecSource::new(native), &mut VecSource::new(agent), o, &mut |_, _, _| {}).unwrap()
}

fn scenario_report(native_width: u64, native_offset: u64) -> Report {
    let (n, a) = scenario();
    run(records(&n, native_width, native_offset, NATIVE_STATUS), records(&a, 60, 0, AGENT_STATUS), opts())
}

/// Without the record counts (they depend on the window width).
fn figures(r: &Report) -> Report {
    let mut r = r.clone();
    r.peak_open_flows = 0;
    for s in r.interfaces.values_mut().chain([&mut r.overall]) {
        s.native.records = 0;
        s.agent.records = 0;
    }
    r
}

#[test]
fn known_differences_give_exact_figures() {
    let r = scenario_report(60, 23);
    let o = &r.overall;
    assert_eq!((o.native.flows, o.agent.flows, o.matched_flows, o.only_native_flows, o.only_agent_flows), (4, 4, 3, 1, 1));
    assert_eq!((o.only_native_packets, o.only_agent_packets), (5, 3));
    assert_eq!(o.packets, Delta { native: 625, agent: 593, delta: -32, delta_pct: Some(-5.12) });
    assert_eq!(o.bytes, Delta { native: 331_300, agent: 301_210, delta: -30_090, delta_pct: Some(-9.08) });
    assert_eq!(o.matched_packets, Delta { native: 620, agent: 590, delta: -30, delta_pct: Some(-4.84) });
    assert_eq!(o.matched_bytes, Delta { native: 331_000, agent: 301_000, delta: -30_000, delta_pct: Some(-9.06) });
    assert_eq!((o.packet_mismatches, o.byte_mismatches), (1, 1));
    // D starts and ends 2 s later on the agent; B's last packet (t 1299) is
    // one the agent missed: it ends 1 s earlier.
    assert_eq!((o.start_skew.flows_skewed, o.start_skew.max_signed, o.start_skew.mean_abs), (1, 2, 0.67));
    assert_eq!((o.end_skew.flows_skewed, o.end_skew.max_signed, o.end_skew.mean_abs), (2, 2, 1.0));
    assert_eq!((o.tcp_flags_mismatches, o.action_mismatches, o.direction_mismatches), (1, 0, 0));
    assert_eq!((o.native.nodata, o.agent.nodata, o.native.skipdata, o.agent.skipdata), (2, 1, 0, 1));
    assert_eq!(r.late_records, [0, 0]);
    assert_eq!(r.examples, Examples::default());
    assert_eq!(r.interfaces.keys().collect::<Vec<_>>(), ["eni-1", "eni-2"]);
    let e1 = &r.interfaces["eni-1"];
    assert_eq!((e1.native.flows, e1.agent.flows, e1.matched_flows, e1.only_native_flows, e1.only_agent_flows), (3, 2, 2, 1, 0));
    assert_eq!(e1.packets, Delta { native: 605, agent: 570, delta: -35, delta_pct: Some(-5.79) });
    assert_eq!((e1.agent.skipdata, e1.tcp_flags_mismatches, e1.end_skew.max_signed), (1, 0, -1));
    let e2 = &r.interfaces["eni-2"];
    assert_eq!((e2.native.flows, e2.agent.flows, e2.matched_flows, e2.only_native_flows, e2.only_agent_flows), (1, 2, 1, 0, 1));
    assert_eq!(e2.packets, Delta { native: 20, agent: 23, delta: 3, delta_pct: Some(15.0) });
    assert_eq!((e2.native.nodata, e2.agent.nodata, e2.tcp_flags_mismatches, e2.start_skew.max_signed), (2, 1, 1, 2));
    // Records: native windows of 60 s from 23 s past the minute.
    // (C crosses a native window boundary.)
    assert_eq!((o.native.records, o.agent.records), (17, 16));
}

/// The same traffic cut into 10-minute native windows at another offset
/// gives the same figures: matching does not depend on window alignment.
#[test]
fn window_alignment_does_not_matter() {
    let base = figures(&scenario_report(60, 23));
    for (w, off) in [(60, 0), (60, 59), (600, 17), (600, 0), (10, 3)] {
        assert_eq!(figures(&scenario_report(w, off)), base, "native windows of {w} s at +{off}");
    }
}

#[test]
fn without_the_interface_map_eni2_is_two_one_sided_interfaces() {
    let (n, a) = scenario();
    let r = run(records(&n, 60, 23, NATIVE_STATUS), records(&a, 60, 0, AGENT_STATUS), MatchOptions::default());
    assert_eq!(r.interfaces.keys().collect::<Vec<_>>(), ["eni-1", "eni-2", "eni-agent2"]);
    assert_eq!((r.overall.matched_flows, r.overall.only_native_flows, r.overall.only_agent_flows), (2, 2, 2));
}

#[test]
fn direction_in_the_key_and_disagreements() {
    let (n, mut a) = scenario();
    a[0].dir = Direction::Ingress;
    let r = run(records(&n, 60, 23, &[]), records(&a, 60, 0, &[]), opts());
    assert_eq!((r.overall.matched_flows, r.overall.direction_mismatches), (3, 1));
    let r = run(records(&n, 60, 23, &[]), records(&a, 60, 0, &[]), MatchOptions { match_direction: true, ..opts() });
    assert_eq!((r.overall.matched_flows, r.overall.only_native_flows, r.overall.only_agent_flows, r.overall.direction_mismatches), (2, 2, 2, 0));
}

/// A pause longer than the tolerance splits a flow in two.
#[test]
fn pauses_split_flows() {
    let f = |pk: Vec<Pkt>| Flow { iface: "eni-1", src: "10.0.0.1", dst: "10.0.0.2", ports: (1, 2), proto: 17, dir: Direction::Egress, pkts: pk };
    let mut p = pkts(1000, 10, 10);
    p.extend(pkts(1100, 10, 10));
    let native = records(&[f(p.clone())], 60, 0, &[]);
    let agent = records(&[f(pkts(1000, 10, 10))], 60, 30, &[]);
    let r = run(native, agent, MatchOptions::default());
    assert_eq!((r.overall.matched_flows, r.overall.only_native_flows, r.overall.only_native_packets), (1, 1, 10));
    // With a tolerance above the pause, one flow.
    let r = run(records(&[f(p)], 60, 0, &[]), records(&[f(pkts(1000, 10, 10))], 60, 30, &[]), MatchOptions { tolerance: 100, ..Default::default() });
    assert_eq!((r.overall.matched_flows, r.overall.matched_packets.delta), (1, -10));
}

#[test]
fn examples_list_the_earliest_flows() {
    let (n, a) = scenario();
    let ex = |n_ex| {
        let o = MatchOptions { examples: n_ex, ..opts() };
        run(records(&n, 60, 23, NATIVE_STATUS), records(&a, 60, 0, AGENT_STATUS), o).examples
    };
    let e = ex(5);
    let one = |start, end, iface: &str, flow: &str, counts: [u64; 4]| FlowExample {
        start,
        end,
        interface: iface.into(),
        flow: flow.into(),
        native_packets: counts[0],
        agent_packets: counts[1],
        native_bytes: counts[2],
        agent_bytes: counts[3],
    };
    assert_eq!(e.only_native, [one(1100, 1104, "eni-1", "10.0.0.1:5353 -> 10.0.0.3:53 17", [5, 0, 300, 0])]);
    assert_eq!(e.only_agent, [one(1250, 1252, "eni-2", "10.0.1.1:9999 -> 10.0.1.9:9999 17", [0, 3, 0, 210])]);
    assert_eq!(e.count_mismatch, [one(1000, 1299, "eni-1", "10.0.0.2:443 -> 10.0.0.1:40000 6", [300, 270, 300_000, 270_000])]);
    let mut v = Vec::new();
    for s in [5, 3, 9, 1, 4] {
        keep(&mut v, one(s, s, "i", "f", [0; 4]), 3);
    }
    assert_eq!(v.iter().map(|e| e.start).collect::<Vec<_>>(), [1, 3, 4]);
}

#[test]
fn limits_exceeded() {
    let r = scenario_report(60, 23);
    assert!(Limits::default().check(&r).is_empty());
    let l = Limits {
        max_packet_delta_pct: Some(5.0),
        max_byte_delta_pct: Some(10.0),
        max_missing_flows: Some(0),
        max_extra_flows: Some(1),
        max_skew: Some(1),
        max_tcp_flags_mismatches: Some(0),
    };
    assert_eq!(
        l.check(&r),
        [
            "packet delta -32 (-5.12%) exceeds --max-packet-delta-pct 5",
            "1 flows only in native logs exceed --max-missing-flows 0",
            "start/end skew of 2s exceeds --max-skew 1",
            "1 tcp-flags disagreements exceed --max-tcp-flags-mismatches 0",
        ]
    );
}

// ---- files ----

fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("flowlog-compare-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn gz(text: &str) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(text.as_bytes()).unwrap();
    e.finish().unwrap()
}

/// The native records as S3 would store them: one object per 5 minutes of
/// `end`, in the dated key layout of two regions, with a header line.
/// `parquet`: 0 text, 1 Parquet as AWS writes it, 2 Parquet as earlier
/// agents wrote it (`account-id` columns, `-` as null).
fn write_native_tree(dir: &std::path::Path, recs: &[FlowRecord], format: &Format, parquet: u8) {
    let mut by_obj: BTreeMap<(u64, usize), Vec<&FlowRecord>> = BTreeMap::new();
    for r in recs {
        // Two regions (two directory trees) with objects of the same times.
        let region = usize::from(r.srcport == Some(5353) || r.interface_id.as_deref() == Some("eni-2"));
        by_obj.entry((r.end / 300 * 300, region)).or_default().push(r);
    }
    for ((t, region), rs) in by_obj {
        let region = ["us-east-1", "eu-west-1"][region];
        // 1970-01-01 + t: all in one day.
        let (h, m) = (t / 3600, t % 3600 / 60);
        let d = dir.join(format!("AWSLogs/123456789012/vpcflowlogs/{region}/1970/01/01"));
        std::fs::create_dir_all(&d).unwrap();
        let base = format!("123456789012_vpcflowlogs_{region}_fl-1234abcd_19700101T{h:02}{m:02}Z_abcdef01");
        let lines: Vec<String> = rs.iter().map(|r| format.line(r)).collect();
        if parquet > 0 {
            let write = if parquet == 1 { pq } else { parquet_object_legacy };
            std::fs::write(d.join(format!("{base}.log.parquet")), write(&format.header(), &lines).unwrap()).unwrap();
        } else {
            let text = format!("{}\n{}\n", format.header(), lines.join("\n"));
            std::fs::write(d.join(format!("{base}.log.gz")), gz(&text)).unwrap();
        }
    }
}

const NATIVE_V5: &str = "${log-status} ${start} ${end} ${account-id} ${flow-direction} ${tcp-flags}  ${dstaddr} ${srcaddr} ${dstport} ${srcport} ${protocol} ${interface-id} ${packets} ${bytes} ${action} ${version} ${vpc-id}";
const AGENT_V3: &str = "${version} ${account-id} ${interface-id} ${srcaddr} ${dstaddr} ${srcport} ${dstport} ${protocol} ${packets} ${bytes} ${start} ${end} ${action} ${log-status} ${tcp-flags} ${flow-direction}";

fn file_report(parquet: u8, name: &str) -> Report {
    let (n, a) = scenario();
    let dir = tempdir(name);
    let nf = Format::parse(NATIVE_V5).unwrap();
    write_native_tree(&dir.join("native"), &records(&n, 60, 23, NATIVE_STATUS), &nf, parquet);
    // The agent's file: no header, its own format, plain text.
    let af = Format::parse(AGENT_V3).unwrap();
    let text: String = records(&a, 60, 0, AGENT_STATUS).iter().map(|r| af.line(r) + "\n").collect();
    std::fs::write(dir.join("agent.log"), text).unwrap();
    let mut native = local(&dir.join("native"), Format::default()).unwrap();
    let mut agent = local(&dir.join("agent.log"), af).unwrap();
    let r = compare(native.as_mut(), agent.as_mut(), opts(), &mut |_, _, _| {}).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    r
}

fn no_peak(mut r: Report) -> Report {
    r.peak_open_flows = 0;
    r
}

/// Gzip text with a header in another field order (native) against
/// header-less text in the agent's format: the same figures as in memory.
#[test]
fn gzip_tree_with_headers_against_plain_text() {
    assert_eq!(no_peak(file_report(0, "text")), no_peak(scenario_report(60, 23)));
}

#[test]
fn parquet_against_text() {
    assert_eq!(no_peak(file_report(1, "parquet")), no_peak(scenario_report(60, 23)));
}

/// Files of earlier versions (`account-id` columns, `-` as null) read the same.
#[test]
fn legacy_parquet_against_text() {
    assert_eq!(no_peak(file_report(2, "parquet-legacy")), no_peak(scenario_report(60, 23)));
}

#[test]
fn objects_sort_by_the_time_in_their_name() {
    let mut v = vec![
        "b/AWSLogs/1/vpcflowlogs/us-east-1/2018/06/20/1_vpcflowlogs_us-east-1_fl-1_20180620T1625Z_ffffffff.log.gz".to_string(),
        "a/AWSLogs/1/vpcflowlogs/us-west-2/2018/06/20/1_vpcflowlogs_us-west-2_fl-1_20180620T1630Z_00000000.log.gz".into(),
        "c/AWSLogs/1/vpcflowlogs/eu-west-1/2018/06/20/1_vpcflowlogs_eu-west-1_fl-1_20180620T1620Z_00000000.log.parquet".into(),
        "agent.log".into(),
    ];
    sort_objects(&mut v);
    assert_eq!(v.iter().map(|n| name_time(n).unwrap_or("-")).collect::<Vec<_>>(), ["-", "20180620T1620Z", "20180620T1625Z", "20180620T1630Z"]);
}

#[test]
fn objects_outside_the_time_range_are_skipped() {
    let k = "x/1_vpcflowlogs_us-east-1_fl-1_20180620T1620Z_00000000.log.gz";
    let t = 1_529_511_600; // 2018-06-20T16:20:00Z
    assert_eq!(source::name_secs(k), Some(t));
    assert!(source::may_hold(k, 0, u64::MAX));
    // Ends in [16:20, 16:25): starts from 16:05 (15 minutes before) on.
    assert!(source::may_hold(k, t + 299, u64::MAX) && !source::may_hold(k, t + 300, u64::MAX));
    assert!(source::may_hold(k, 0, t - 899) && !source::may_hold(k, 0, t - 900));
    assert!(source::may_hold("agent.log", t, t + 1));
}

// ---- bad input ----

fn read_all(path: &std::path::Path) -> anyhow::Result<u64> {
    let mut s = local(path, Format::default())?;
    let mut n = 0;
    while s.next_record()?.is_some() {
        n += 1;
    }
    Ok(n)
}

const HEADER: &str = "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status";
const LINE: &str = "2 123456789012 eni-1 10.0.0.1 10.0.0.2 1 2 6 3 180 1000 1010 ACCEPT OK";

#[test]
fn corrupt_gzip_names_the_file_and_line() {
    let dir = tempdir("corrupt-gz");
    let text = format!("{HEADER}\n{}", format!("{LINE}\n").repeat(2000));
    let mut body = gz(&text);
    // Damage the compressed data past the first block of lines.
    let n = body.len();
    for b in &mut body[n / 2..n / 2 + 64] {
        *b ^= 0x5a;
    }
    let p = dir.join("x.log.gz");
    std::fs::write(&p, &body).unwrap();
    // Garbage out of the decompressor is either unreadable or unparsable.
    let e = format!("{:#}", read_all(&p).unwrap_err());
    assert!(e.starts_with(&format!("{}: line ", p.display())), "{e}");
    // A wrong checksum shows at the end of the stream.
    let mut body = gz(&text);
    let n = body.len();
    body[n - 8] ^= 1;
    std::fs::write(&p, &body).unwrap();
    assert_eq!(
        format!("{:#}", read_all(&p).unwrap_err()),
        format!("{}: line 2002: cannot read: corrupt gzip stream does not have a matching checksum", p.display())
    );
    // Truncated: the stream ends early.
    let body = gz(&text);
    std::fs::write(&p, &body[..body.len() - 100]).unwrap();
    let e = format!("{:#}", read_all(&p).unwrap_err());
    assert!(e.starts_with(&format!("{}: line ", p.display())) && e.contains("cannot read: "), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn truncated_parquet_names_the_object() {
    let dir = tempdir("bad-parquet");
    let body = pq(HEADER, &[LINE.to_string(), LINE.to_string()]).unwrap();
    let p = dir.join("x.log.parquet");
    std::fs::write(&p, &body).unwrap();
    assert_eq!(read_all(&p).unwrap(), 2);
    std::fs::write(&p, &body[..body.len() / 2]).unwrap();
    let e = format!("{:#}", read_all(&p).unwrap_err());
    assert!(e.starts_with(&format!("{}: not a readable Parquet file: ", p.display())), "{e}");
    // Parquet columns must be flow log fields.
    let body = pq("srcaddr colour", &["10.0.0.1 red".to_string()]).unwrap();
    let e = ObjectReader::from_bytes("s3://b/k.parquet", body.into(), &Format::default()).err().unwrap();
    assert_eq!(e.to_string(), "s3://b/k.parquet: Parquet column \"colour\" is not a flow log field");
    // A bad value names the row, field and value.
    let body = pq("srcaddr packets", &["10.0.0.1 3".to_string(), "10.0.0.300 4".to_string()]).unwrap();
    let mut r = ObjectReader::from_bytes("s3://b/k.parquet", body.into(), &Format::default()).unwrap();
    assert!(r.next_record().unwrap().is_some());
    assert_eq!(r.next_record().unwrap_err().to_string(), "s3://b/k.parquet: row 2: field srcaddr (column 1): \"10.0.0.300\" is not an IP address or -");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn wrong_field_counts_name_the_line() {
    let dir = tempdir("fields");
    let p = dir.join("x.log");
    let short = LINE.rsplit_once(' ').unwrap().0;
    std::fs::write(&p, format!("{HEADER}\n{LINE}\n\n{short}\n")).unwrap();
    assert_eq!(
        format!("{:#}", read_all(&p).unwrap_err()),
        format!("{}: line 4: expected 14 fields ({HEADER}), found 13", p.display())
    );
    // Without a header, the default format; line numbers still count from 1.
    std::fs::write(&p, format!("{LINE}\n{LINE} extra\n")).unwrap();
    assert_eq!(format!("{:#}", read_all(&p).unwrap_err()), format!("{}: line 2: expected 14 fields ({HEADER}), found 15", p.display()));
    // Blank lines before the first record count too.
    std::fs::write(&p, format!("\n\n{short}\n")).unwrap();
    assert_eq!(format!("{:#}", read_all(&p).unwrap_err()), format!("{}: line 3: expected 14 fields ({HEADER}), found 13", p.display()));
    // Tolerated irregularities: double spaces, `-`, `unknown`, CRLF.
    std::fs::write(&p, "2 unknown eni-1  - - - - - - - 1000 1060 - NODATA\r\n2 123 eni-1 10.0.0.1 10.0.0.2 1 2 6 3 180 1000 1010 ACCEPT OK\n").unwrap();
    assert_eq!(read_all(&p).unwrap(), 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `cat a.log.gz b.log.gz`: two gzip members, each with its header line
/// (here in different field orders).
#[test]
fn concatenated_gzip_files_with_their_headers() {
    let dir = tempdir("concat");
    let p = dir.join("all.log.gz");
    let mut body = gz(&format!("{HEADER}\n{LINE}\n"));
    body.extend(gz("srcaddr dstaddr packets interface-id\n10.0.0.1 10.0.0.2 5 eni-2\n10.0.0.1 10.0.0.2 6 eni-2\n"));
    std::fs::write(&p, &body).unwrap();
    let mut s = local(&p, Format::default()).unwrap();
    let mut got = Vec::new();
    while let Some(r) = s.next_record().unwrap() {
        got.push((r.interface_id.as_deref().unwrap().to_string(), r.packets));
    }
    assert_eq!(got, [("eni-1".into(), Some(3)), ("eni-2".into(), Some(5)), ("eni-2".into(), Some(6))]);
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---- large input ----

/// Generates `n` records lazily: `flows` distinct flows per 60 s window,
/// windows one after the other, each flow 1 packet of 100 bytes.
struct Generated {
    n: u64,
    i: u64,
    flows: u64,
    offset: u64,
    rec: FlowRecord,
}

impl Generated {
    fn new(n: u64, flows: u64, offset: u64) -> Generated {
        Generated { n, i: 0, flows, offset, rec: FlowRecord::status_only("1".into(), "eni-1".into(), 0, 0, LogStatus::Ok) }
    }
}

impl RecordSource for Generated {
    fn next_record(&mut self) -> anyhow::Result<Option<&FlowRecord>> {
        if self.i == self.n {
            return Ok(None);
        }
        let (w, f) = (self.i / self.flows, self.i % self.flows);
        self.i += 1;
        // Each window's flows are new ones (the source port moves on), so
        // the total number of flows is n, but few are active at a time.
        let port = (w * self.flows + f) % 60_000;
        let t = 1_000_000 + w * 60 + self.offset + f % 50;
        let r = &mut self.rec;
        r.srcaddr = Some(std::net::Ipv4Addr::from(0x0a00_0000 + (w as u32 / 10)).into());
        r.dstaddr = Some("10.1.0.1".parse().unwrap());
        (r.srcport, r.dstport, r.protocol) = (Some(port as u16), Some(443), Some(6));
        (r.packets, r.bytes, r.start, r.end) = (Some(1), Some(100), t, t);
        Ok(Some(&self.rec))
    }
    fn position(&self) -> String {
        String::new()
    }
}

/// Two million records per side, all distinct flows: the matcher holds
/// the flows of a few windows (reorder window + tolerance), never all.
#[test]
fn large_input_holds_only_active_flows() {
    let n = 2_000_000;
    let o = MatchOptions { reorder_window: 120, ..MatchOptions::default() };
    let r = compare(&mut Generated::new(n, 1000, 0), &mut Generated::new(n, 1000, 1), o, &mut |_, _, _| {}).unwrap();
    assert_eq!((r.overall.matched_flows, r.overall.only_native_flows, r.overall.only_agent_flows), (n, 0, 0));
    assert_eq!((r.overall.start_skew.flows_skewed, r.overall.start_skew.max_signed), (n, 1));
    assert_eq!(r.overall.packets.delta, 0);
    // Reorder window 120 s + tolerance 5 s + one window being read: at most
    // 4 windows of 1000 flows.
    assert!(r.peak_open_flows <= 4000, "{}", r.peak_open_flows);
}

#[test]
fn late_records_are_counted() {
    let rec = |t: u64, port: u16| FlowRecord {
        srcport: Some(port),
        packets: Some(1),
        ..FlowRecord::status_only("1".into(), "eni-1".into(), t, t, LogStatus::Ok)
    };
    let native = vec![rec(1000, 1), rec(5000, 2), rec(1001, 3)];
    let agent = vec![rec(1000, 1), rec(5000, 2), rec(6000, 4)];
    let r = run(native, agent, MatchOptions { reorder_window: 60, ..Default::default() });
    assert_eq!(r.late_records, [1, 0]);
    let r = run(
        vec![rec(1000, 1), rec(5000, 2), rec(1001, 3)],
        vec![rec(1000, 1), rec(5000, 2), rec(6000, 4)],
        MatchOptions { reorder_window: 4000, ..Default::default() },
    );
    assert_eq!(r.late_records, [0, 0]);
}

#[test]
fn report_renderings() {
    let r = scenario_report(60, 23);
    let t = report::table(&r, &["x exceeds y".into()]);
    let lines: Vec<&str> = t.lines().collect();
    assert!(lines[0].starts_with("interface  flows n/a  matched  only native  only agent"), "{t}");
    assert!(lines[1].starts_with("eni-1  "), "{t}");
    assert!(lines[4].starts_with("all  ") && lines[4].contains("-32 (-5.12%)") && lines[4].contains("  4/4  ") && lines[4].contains("2/1"), "{t}");
    assert!(t.ends_with("EXCEEDED: x exceeds y\n"), "{t}");
    let j: serde_json::Value = serde_json::from_str(&report::json(&r, &[])).unwrap();
    assert_eq!(j["overall"]["packets"]["delta_pct"], -5.12);
    assert_eq!(j["interfaces"]["eni-2"]["only_agent_flows"], 1);
    assert_eq!(j["exceeded"], serde_json::json!([]));
    let c = report::csv(&r);
    let rows: Vec<&str> = c.lines().collect();
    assert_eq!(rows.len(), 4);
    let cols: Vec<&str> = report::CSV_HEADER.split(',').collect();
    let all: Vec<&str> = rows[3].split(',').collect();
    assert_eq!(all.len(), cols.len());
    let get = |k: &str| all[cols.iter().position(|c| *c == k).unwrap()];
    assert_eq!((get("interface"), get("packet_delta"), get("packet_delta_pct"), get("only_native_flows")), ("*", "-32", "-5.12", "1"));
}

#[test]
fn locations_parse() {
    use source::Location;
    assert_eq!("s3://b/p/x".parse::<Location>().unwrap(), Location::S3 { bucket: "b".into(), prefix: "p/x".into() });
    assert_eq!("s3://b".parse::<Location>().unwrap(), Location::S3 { bucket: "b".into(), prefix: "".into() });
    assert_eq!(
        "cloudwatch:///aws/vpc/fl?stream=eni-1-all".parse::<Location>().unwrap(),
        Location::CloudWatch { group: "/aws/vpc/fl".into(), stream: Some("eni-1-all".into()) }
    );
    assert!("cloudwatch://g?x=1".parse::<Location>().is_err());
    assert!("http://x".parse::<Location>().is_err());
    assert_eq!("./a".parse::<Location>().unwrap(), Location::Local("./a".into()));
    assert_eq!(source::parse_time("2018-06-20T16:20:00Z"), Ok(1_529_511_600));
    assert_eq!(source::parse_time("2018-06-20T18:20:00+02:00"), Ok(1_529_511_600));
    assert_eq!(source::parse_time("2018-06-20T16:19:59.25Z"), Ok(1_529_511_600));
    assert_eq!(source::parse_time("1529511600"), Ok(1_529_511_600));
    assert!(source::parse_time("2018-13-20T16:20:00Z").is_err());
    assert!(source::parse_time("2018-06-20T16:20:00").unwrap_err().contains("RFC 3339"), "an offset is required");
    assert!(source::parse_time("1969-12-31T23:59:59Z").is_err());
    assert_eq!(source::name_secs("123_vpcflowlogs_us-east-1_fl-1_20180620T1620Z_ab.log.gz"), Some(1_529_511_600));
    assert_eq!(source::name_secs("x_20181320T1620Z_ab.log.gz"), None);
}

/// The agent's own Parquet writer, AWS's spelling and the earlier one: the
/// same records back, `-` in numeric (null) and STRING columns alike.
#[test]
fn parquet_of_every_spelling_reads_back_the_same_records() {
    let lines = [LINE.to_string(), "2 123456789012 eni-1 - - - - - - - 1000 1060 - NODATA".to_string()];
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let bodies = [
        ("agent", crate::ship::parquet::parquet_file(HEADER, &refs).unwrap()),
        ("aws", pq(HEADER, &lines).unwrap()),
        ("legacy", parquet_object_legacy(HEADER, &lines).unwrap()),
    ];
    let f = Format::default();
    for (what, body) in bodies {
        let mut r = ObjectReader::from_bytes("x.parquet", body.into(), &f).unwrap();
        let mut got = Vec::new();
        while let Some(rec) = r.next_record().unwrap() {
            got.push(f.line(&rec));
        }
        assert_eq!(got, lines, "{what}");
    }
}
