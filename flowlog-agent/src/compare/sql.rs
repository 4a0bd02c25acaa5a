//! `compare --emit-sql athena`: the comparison as one SQL query over two
//! tables (the DDLs of deploy/athena/), for fleets whose logs are too big
//! to download.
//!
//! Same rules as [`super::Matcher`]: OK records only form flows; the flow
//! key is interface (after `--interface-map`), addresses, ports, protocol
//! (and direction with `--match-direction`); records of both sides, sorted
//! by `start` within a key, chain into one activity group while a record's
//! `start` is within `tolerance` of the largest `end` before it (a gaps and
//! islands query with window functions). Where it differs: the matcher
//! reads each side in time order up to the reorder window and a record that
//! arrives out of order joins the group open at that moment, while SQL
//! sorts first; on sources in time order per flow (what AWS and the agent
//! write) both give the same groups. SQL has no `late_records`, skews,
//! tcp-flags/action/direction mismatches or examples.
//!
//! The result has the columns of `compare --output-format csv` that it
//! computes, with the same names: one row per interface, then `*`.

use std::collections::BTreeMap;

/// The CSV columns the query returns, in order.
pub const COLUMNS: &str = "interface,native_records,agent_records,native_flows,agent_flows,matched_flows,only_native_flows,only_agent_flows,\
only_native_packets,only_agent_packets,native_packets,agent_packets,packet_delta,native_bytes,agent_bytes,byte_delta,\
matched_packet_delta,matched_byte_delta,packet_mismatches,byte_mismatches,native_nodata,agent_nodata,native_skipdata,agent_skipdata";

pub struct SqlOptions<'a> {
    pub native_table: &'a str,
    pub agent_table: &'a str,
    pub tolerance: u64,
    /// Agent interface id → native interface id.
    pub interface_map: &'a BTreeMap<String, String>,
    pub match_direction: bool,
    pub since: Option<u64>,
    pub until: Option<u64>,
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The query (Athena/Trino; also runs in DuckDB).
pub fn emit(o: &SqlOptions) -> String {
    let mut filter = Vec::new();
    if let Some(s) = o.since {
        filter.push(format!("start >= {s}"));
    }
    if let Some(u) = o.until {
        filter.push(format!("start < {u}"));
    }
    let filter = if filter.is_empty() { String::new() } else { format!(" WHERE {}", filter.join(" AND ")) };
    let agent_iface = if o.interface_map.is_empty() {
        "coalesce(interface_id, '-')".to_string()
    } else {
        let arms: String = o.interface_map.iter().map(|(a, n)| format!(" WHEN {} THEN {}", quote(a), quote(n))).collect();
        format!("CASE coalesce(interface_id, '-'){arms} ELSE coalesce(interface_id, '-') END")
    };
    let cols = "srcaddr, dstaddr, srcport, dstport, protocol, packets, bytes, start, \"end\", log_status, flow_direction";
    let key = if o.match_direction { "iface, srcaddr, dstaddr, srcport, dstport, protocol, flow_direction" } else { "iface, srcaddr, dstaddr, srcport, dstport, protocol" };
    let (tol, native, agent) = (o.tolerance, o.native_table, o.agent_table);
    format!(
        "-- flowlog-agent compare as SQL: native = {native}, agent = {agent}, tolerance {tol} s{dir}.
-- Columns as in `compare --output-format csv`; one row per interface, then '*'.
WITH recs AS (
  SELECT 0 AS side, coalesce(interface_id, '-') AS iface, {cols} FROM {native}{filter}
  UNION ALL
  SELECT 1 AS side, {agent_iface} AS iface, {cols} FROM {agent}{filter}
),
ok AS (
  SELECT *, greatest(\"end\", start) AS e FROM recs WHERE log_status = 'OK'
),
marked AS (
  -- A record more than the tolerance after every earlier end of its key starts a new activity group.
  SELECT *, CASE WHEN start > max(e) OVER (PARTITION BY {key} ORDER BY start, e, side ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) + {tol}
    THEN 1 ELSE 0 END AS brk FROM ok
),
grouped AS (
  SELECT *, sum(brk) OVER (PARTITION BY {key} ORDER BY start, e, side ROWS UNBOUNDED PRECEDING) AS grp FROM marked
),
flows AS (
  SELECT iface,
    count(CASE WHEN side = 0 THEN 1 END) AS nrec, count(CASE WHEN side = 1 THEN 1 END) AS arec,
    coalesce(sum(CASE WHEN side = 0 THEN packets END), 0) AS np, coalesce(sum(CASE WHEN side = 1 THEN packets END), 0) AS ap,
    coalesce(sum(CASE WHEN side = 0 THEN bytes END), 0) AS nb, coalesce(sum(CASE WHEN side = 1 THEN bytes END), 0) AS ab
  FROM grouped GROUP BY {key}, grp
),
per_flows AS (
  SELECT iface,
    count(CASE WHEN nrec > 0 THEN 1 END) AS native_flows,
    count(CASE WHEN arec > 0 THEN 1 END) AS agent_flows,
    count(CASE WHEN nrec > 0 AND arec > 0 THEN 1 END) AS matched_flows,
    count(CASE WHEN arec = 0 THEN 1 END) AS only_native_flows,
    count(CASE WHEN nrec = 0 THEN 1 END) AS only_agent_flows,
    sum(CASE WHEN arec = 0 THEN np ELSE 0 END) AS only_native_packets,
    sum(CASE WHEN nrec = 0 THEN ap ELSE 0 END) AS only_agent_packets,
    sum(CASE WHEN nrec > 0 AND arec > 0 THEN ap - np ELSE 0 END) AS matched_packet_delta,
    sum(CASE WHEN nrec > 0 AND arec > 0 THEN ab - nb ELSE 0 END) AS matched_byte_delta,
    count(CASE WHEN nrec > 0 AND arec > 0 AND np <> ap THEN 1 END) AS packet_mismatches,
    count(CASE WHEN nrec > 0 AND arec > 0 AND nb <> ab THEN 1 END) AS byte_mismatches
  FROM flows GROUP BY iface
),
per_records AS (
  SELECT iface,
    count(CASE WHEN side = 0 THEN 1 END) AS native_records,
    count(CASE WHEN side = 1 THEN 1 END) AS agent_records,
    coalesce(sum(CASE WHEN side = 0 AND log_status = 'OK' THEN packets END), 0) AS native_packets,
    coalesce(sum(CASE WHEN side = 1 AND log_status = 'OK' THEN packets END), 0) AS agent_packets,
    coalesce(sum(CASE WHEN side = 0 AND log_status = 'OK' THEN bytes END), 0) AS native_bytes,
    coalesce(sum(CASE WHEN side = 1 AND log_status = 'OK' THEN bytes END), 0) AS agent_bytes,
    count(CASE WHEN side = 0 AND log_status = 'NODATA' THEN 1 END) AS native_nodata,
    count(CASE WHEN side = 1 AND log_status = 'NODATA' THEN 1 END) AS agent_nodata,
    count(CASE WHEN side = 0 AND log_status = 'SKIPDATA' THEN 1 END) AS native_skipdata,
    count(CASE WHEN side = 1 AND log_status = 'SKIPDATA' THEN 1 END) AS agent_skipdata
  FROM recs GROUP BY iface
),
per_iface AS (
  SELECT r.iface AS interface, native_records, agent_records,
    coalesce(native_flows, 0) AS native_flows, coalesce(agent_flows, 0) AS agent_flows, coalesce(matched_flows, 0) AS matched_flows,
    coalesce(only_native_flows, 0) AS only_native_flows, coalesce(only_agent_flows, 0) AS only_agent_flows,
    coalesce(only_native_packets, 0) AS only_native_packets, coalesce(only_agent_packets, 0) AS only_agent_packets,
    native_packets, agent_packets, agent_packets - native_packets AS packet_delta,
    native_bytes, agent_bytes, agent_bytes - native_bytes AS byte_delta,
    coalesce(matched_packet_delta, 0) AS matched_packet_delta, coalesce(matched_byte_delta, 0) AS matched_byte_delta,
    coalesce(packet_mismatches, 0) AS packet_mismatches, coalesce(byte_mismatches, 0) AS byte_mismatches,
    native_nodata, agent_nodata, native_skipdata, agent_skipdata
  FROM per_records r LEFT JOIN per_flows f ON r.iface = f.iface
)
SELECT * FROM (
  SELECT * FROM per_iface
  UNION ALL
  SELECT '*', sum(native_records), sum(agent_records), sum(native_flows), sum(agent_flows), sum(matched_flows),
    sum(only_native_flows), sum(only_agent_flows), sum(only_native_packets), sum(only_agent_packets),
    sum(native_packets), sum(agent_packets), sum(packet_delta), sum(native_bytes), sum(agent_bytes), sum(byte_delta),
    sum(matched_packet_delta), sum(matched_byte_delta), sum(packet_mismatches), sum(byte_mismatches),
    sum(native_nodata), sum(agent_nodata), sum(native_skipdata), sum(agent_skipdata)
  FROM per_iface
) AS report
ORDER BY CASE WHEN interface = '*' THEN 1 ELSE 0 END, interface;
",
        dir = if o.match_direction { ", flow direction in the key" } else { "" },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_reach_the_query() {
        let map = BTreeMap::from([("eni-a".to_string(), "eni-'n".to_string())]);
        let q = emit(&SqlOptions { native_table: "n", agent_table: "a", tolerance: 7, interface_map: &map, match_direction: true, since: Some(10), until: Some(20) });
        assert!(q.contains("FROM n WHERE start >= 10 AND start < 20\n"), "{q}");
        assert!(q.contains("CASE coalesce(interface_id, '-') WHEN 'eni-a' THEN 'eni-''n' ELSE"), "{q}");
        assert!(q.contains("PARTITION BY iface, srcaddr, dstaddr, srcport, dstport, protocol, flow_direction ORDER BY"), "{q}");
        assert!(q.contains("1 PRECEDING) + 7\n"), "{q}");
        let q = emit(&SqlOptions { native_table: "n", agent_table: "a", tolerance: 5, interface_map: &BTreeMap::new(), match_direction: false, since: None, until: None });
        assert!(q.contains("FROM n\n") && q.contains("FROM a\n") && !q.contains("flow_direction ORDER"), "{q}");
        // The CSV columns it claims are the report's.
        for c in COLUMNS.split(',') {
            assert!(super::super::report::CSV_HEADER.split(',').any(|h| h == c), "{c}");
        }
    }
}
