//! The report as a terminal table, JSON or CSV.

use std::fmt::Write as _;

use super::{fmt_pct, Delta, Report, Skew, Stats};

fn delta(d: &Delta) -> String {
    format!("{:+} ({})", d.delta, fmt_pct(d.delta_pct))
}

fn skew(s: &Skew) -> String {
    format!("{:.2}/{}", s.mean_abs, s.max_signed)
}

fn row(name: &str, s: &Stats) -> Vec<String> {
    vec![
        name.to_string(),
        format!("{}/{}", s.native.flows, s.agent.flows),
        s.matched_flows.to_string(),
        s.only_native_flows.to_string(),
        s.only_agent_flows.to_string(),
        delta(&s.packets),
        delta(&s.bytes),
        delta(&s.matched_packets),
        skew(&s.start_skew),
        skew(&s.end_skew),
        s.tcp_flags_mismatches.to_string(),
        format!("{}/{}", s.native.nodata, s.agent.nodata),
        format!("{}/{}", s.native.skipdata, s.agent.skipdata),
    ]
}

/// A table for people: one row per interface and one for all, then the
/// totals and the limits exceeded.
pub fn table(r: &Report, exceeded: &[String]) -> String {
    let header: Vec<String> = [
        "interface",
        "flows n/a",
        "matched",
        "only native",
        "only agent",
        "packets Δ",
        "bytes Δ",
        "matched pkts Δ",
        "start skew",
        "end skew",
        "flags differ",
        "NODATA n/a",
        "SKIPDATA n/a",
    ]
    .map(String::from)
    .to_vec();
    let mut rows = vec![header];
    for (i, s) in &r.interfaces {
        rows.push(row(i, s));
    }
    rows.push(row("all", &r.overall));
    let cols = rows[0].len();
    let width: Vec<usize> = (0..cols).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for (n, row) in rows.iter().enumerate() {
        if n == rows.len() - 1 {
            let total: usize = width.iter().sum::<usize>() + 2 * (cols - 1);
            out.push_str(&"-".repeat(total));
            out.push('\n');
        }
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            let pad = width[c] - cell.chars().count();
            if c > 0 {
                line.push_str("  ");
            }
            if c == 0 {
                line.push_str(cell);
                line.push_str(&" ".repeat(pad));
            } else {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    let o = &r.overall;
    let _ = writeln!(
        out,
        "\nrecords read: native {}, agent {}; packets native {}, agent {}; bytes native {}, agent {}",
        o.native.records, o.agent.records, o.native.packets, o.agent.packets, o.native.bytes, o.agent.bytes
    );
    let _ = writeln!(
        out,
        "matched flows: {} with other packet counts, {} with other byte counts, {} with other actions, {} with other directions",
        o.packet_mismatches, o.byte_mismatches, o.action_mismatches, o.direction_mismatches
    );
    let _ = writeln!(
        out,
        "n/a = native/agent; Δ = agent - native; skew = agent - native in seconds: mean of absolute values/largest;\ntolerance {}s, reorder window {}s, peak open flows {}",
        r.tolerance, r.reorder_window, r.peak_open_flows
    );
    for (title, list) in [
        ("only in native logs", &r.examples.only_native),
        ("only in agent logs", &r.examples.only_agent),
        ("with other counts (packets, bytes native/agent)", &r.examples.count_mismatch),
    ] {
        if list.is_empty() {
            continue;
        }
        let _ = writeln!(out, "\nflows {title}, earliest first:");
        for e in list {
            let _ = write!(out, "  {}..{}  {}  {}", e.start, e.end, e.interface, e.flow);
            let _ = match (e.native_packets > 0 || e.native_bytes > 0, e.agent_packets > 0 || e.agent_bytes > 0) {
                (true, true) => writeln!(out, "  {}/{} packets, {}/{} bytes", e.native_packets, e.agent_packets, e.native_bytes, e.agent_bytes),
                (true, false) => writeln!(out, "  {} packets, {} bytes", e.native_packets, e.native_bytes),
                _ => writeln!(out, "  {} packets, {} bytes", e.agent_packets, e.agent_bytes),
            };
        }
    }
    if r.late_records != [0, 0] {
        let _ = writeln!(
            out,
            "warning: late records (older than the reorder window): native {}, agent {}; increase --reorder-window",
            r.late_records[0], r.late_records[1]
        );
    }
    if !exceeded.is_empty() {
        out.push('\n');
    }
    for e in exceeded {
        let _ = writeln!(out, "EXCEEDED: {e}");
    }
    out
}

/// The report as one JSON object (`interfaces`, `overall`, ..., `exceeded`).
pub fn json(r: &Report, exceeded: &[String]) -> String {
    let mut v = serde_json::to_value(r).expect("serialisable");
    v["exceeded"] = serde_json::json!(exceeded);
    let mut s = serde_json::to_string_pretty(&v).expect("serialisable");
    s.push('\n');
    s
}

pub const CSV_HEADER: &str = "interface,native_records,agent_records,native_flows,agent_flows,matched_flows,only_native_flows,only_agent_flows,\
only_native_packets,only_agent_packets,native_packets,agent_packets,packet_delta,packet_delta_pct,native_bytes,agent_bytes,byte_delta,byte_delta_pct,\
matched_packet_delta,matched_packet_delta_pct,matched_byte_delta,matched_byte_delta_pct,packet_mismatches,byte_mismatches,\
start_skew_mean_abs,start_skew_max,end_skew_mean_abs,end_skew_max,tcp_flags_mismatches,action_mismatches,direction_mismatches,\
native_nodata,agent_nodata,native_skipdata,agent_skipdata";

/// One CSV row per interface, then `*` for all of them.
pub fn csv(r: &Report) -> String {
    let pct = |p: Option<f64>| p.map(|p| p.to_string()).unwrap_or_default();
    let mut out = String::from(CSV_HEADER);
    out.push('\n');
    let rows = r.interfaces.iter().map(|(i, s)| (i.as_str(), s)).chain([("*", &r.overall)]);
    for (i, s) in rows {
        let _ = writeln!(
            out,
            "{i},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            s.native.records,
            s.agent.records,
            s.native.flows,
            s.agent.flows,
            s.matched_flows,
            s.only_native_flows,
            s.only_agent_flows,
            s.only_native_packets,
            s.only_agent_packets,
            s.packets.native,
            s.packets.agent,
            s.packets.delta,
            pct(s.packets.delta_pct),
            s.bytes.native,
            s.bytes.agent,
            s.bytes.delta,
            pct(s.bytes.delta_pct),
            s.matched_packets.delta,
            pct(s.matched_packets.delta_pct),
            s.matched_bytes.delta,
            pct(s.matched_bytes.delta_pct),
            s.packet_mismatches,
            s.byte_mismatches,
            s.start_skew.mean_abs,
            s.start_skew.max_signed,
            s.end_skew.mean_abs,
            s.end_skew.max_signed,
            s.tcp_flags_mismatches,
            s.action_mismatches,
            s.direction_mismatches,
            s.native.nodata,
            s.agent.nodata,
            s.native.skipdata,
            s.agent.skipdata,
        );
    }
    out
}
