//! Pure batching rules of the destinations: CloudWatch Logs PutLogEvents,
//! Firehose PutRecordBatch, and the S3 key layout and 5-minute grouping.

use std::collections::BTreeMap;

use super::spool::{Batch, SpoolRecord};

// ---------------------------------------------------------------- CloudWatch

/// PutLogEvents: "The maximum batch size is 1,048,576 bytes. This size is
/// calculated as the sum of all event messages in UTF-8, plus 26 bytes for
/// each log event."
pub const CW_MAX_BATCH_BYTES: usize = 1_048_576;
pub const CW_EVENT_OVERHEAD: usize = 26;
pub const CW_MAX_EVENTS: usize = 10_000;
/// The span of one batch (max − min timestamp) must not exceed 24 h.
pub const CW_MAX_SPAN_MS: i64 = 24 * 3600 * 1000;
/// Largest message of one event (1 MB, minus the per-event overhead).
pub const CW_MAX_EVENT_BYTES: usize = 1_048_576 - CW_EVENT_OVERHEAD;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CwEvent {
    pub timestamp_ms: i64,
    pub message: String,
}

#[derive(Clone, Copy, Debug)]
pub struct CwLimits {
    pub max_bytes: usize,
    pub max_events: usize,
    pub max_span_ms: i64,
}

impl Default for CwLimits {
    fn default() -> Self {
        CwLimits { max_bytes: CW_MAX_BATCH_BYTES, max_events: CW_MAX_EVENTS, max_span_ms: CW_MAX_SPAN_MS }
    }
}

/// The stream of an interface: `<interface-id>-all`.
pub fn cw_stream_name(interface_id: &str) -> String {
    format!("{interface_id}-all")
}

/// Groups records by log stream, each stream's events sorted by timestamp
/// (`start` × 1000; stable, so records of equal start keep spool order).
pub fn cw_events_by_stream<'a>(records: impl IntoIterator<Item = &'a SpoolRecord>) -> BTreeMap<String, Vec<CwEvent>> {
    let mut m: BTreeMap<String, Vec<CwEvent>> = BTreeMap::new();
    for r in records {
        m.entry(cw_stream_name(&r.interface_id)).or_default().push(CwEvent { timestamp_ms: (r.start as i64).saturating_mul(1000), message: r.line.clone() });
    }
    for v in m.values_mut() {
        v.sort_by_key(|e| e.timestamp_ms);
    }
    m
}

/// Splits timestamp-sorted events into PutLogEvents calls that respect every
/// limit. Messages longer than one event may be are truncated (a flow record
/// is never close to that).
pub fn cw_split(mut events: Vec<CwEvent>, lim: CwLimits) -> Vec<Vec<CwEvent>> {
    events.sort_by_key(|e| e.timestamp_ms);
    let mut out = Vec::new();
    let mut cur: Vec<CwEvent> = Vec::new();
    let mut bytes = 0;
    for mut e in events {
        if e.message.len() > CW_MAX_EVENT_BYTES {
            let mut cut = CW_MAX_EVENT_BYTES;
            while !e.message.is_char_boundary(cut) {
                cut -= 1;
            }
            e.message.truncate(cut);
        }
        let size = e.message.len() + CW_EVENT_OVERHEAD;
        let full = !cur.is_empty()
            && (cur.len() >= lim.max_events || bytes + size > lim.max_bytes || e.timestamp_ms - cur[0].timestamp_ms > lim.max_span_ms);
        if full {
            out.push(std::mem::take(&mut cur));
            bytes = 0;
        }
        bytes += size;
        cur.push(e);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

// ------------------------------------------------------------------ Firehose

pub const FH_MAX_RECORDS: usize = 500;
pub const FH_MAX_CALL_BYTES: usize = 4 * 1024 * 1024;
pub const FH_MAX_RECORD_BYTES: usize = 1000 * 1024;

/// A Firehose record: `{"message":"<record>"}` (JSON, no newline).
pub fn fh_payload(line: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "message": line })).expect("JSON of a string")
}

/// Splits payloads into PutRecordBatch calls: ≤ 500 records and ≤ 4 MiB
/// each. Payloads over 1,000 KiB cannot be sent and are returned apart.
pub fn fh_split(payloads: Vec<Vec<u8>>) -> (Vec<Vec<Vec<u8>>>, Vec<Vec<u8>>) {
    let mut calls = Vec::new();
    let mut too_big = Vec::new();
    let mut cur: Vec<Vec<u8>> = Vec::new();
    let mut bytes = 0;
    for p in payloads {
        if p.len() > FH_MAX_RECORD_BYTES {
            too_big.push(p);
            continue;
        }
        if !cur.is_empty() && (cur.len() >= FH_MAX_RECORDS || bytes + p.len() > FH_MAX_CALL_BYTES) {
            calls.push(std::mem::take(&mut cur));
            bytes = 0;
        }
        bytes += p.len();
        cur.push(p);
    }
    if !cur.is_empty() {
        calls.push(cur);
    }
    (calls, too_big)
}

// ------------------------------------------------------------ S3 key layout

/// Object format of S3 and local-directory destinations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FileFormat {
    #[default]
    Text,
    Parquet,
}

/// Where S3-layout objects go and what they are called.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Optional prefix, without leading or trailing `/`.
    pub prefix: String,
    pub account_id: String,
    pub region: String,
    pub flow_log_id: String,
    pub hive: bool,
    pub per_hour: bool,
    pub format: FileFormat,
}

/// UTC calendar time of Unix seconds, for object keys. (Seconds past
/// year 9999 cannot come from a clock; they are clamped, not a panic.)
fn utc(t: u64) -> jiff::civil::DateTime {
    let ts = jiff::Timestamp::from_second(i64::try_from(t).unwrap_or(i64::MAX)).unwrap_or(jiff::Timestamp::MAX);
    ts.to_zoned(jiff::tz::TimeZone::UTC).datetime()
}

/// The 5-minute bucket (Unix seconds) a record with this `end` belongs to.
pub fn bucket_of(end: u64) -> u64 {
    end - end % 300
}

impl Layout {
    /// The folder of a bucket, ending with `/`.
    pub fn folder(&self, bucket: u64) -> String {
        let t = utc(bucket);
        let (y, mo, d, h) = (t.year(), t.month(), t.day(), t.hour());
        let mut s = String::new();
        if !self.prefix.is_empty() {
            s.push_str(&self.prefix);
            s.push('/');
        }
        if self.hive {
            s.push_str(&format!(
                "AWSLogs/aws-account-id={}/aws-service=vpcflowlogs/aws-region={}/year={y:04}/month={mo:02}/day={d:02}/",
                self.account_id, self.region
            ));
            if self.per_hour {
                s.push_str(&format!("hour={h:02}/"));
            }
        } else {
            s.push_str(&format!("AWSLogs/{}/vpcflowlogs/{}/{y:04}/{mo:02}/{d:02}/", self.account_id, self.region));
            if self.per_hour {
                s.push_str(&format!("{h:02}/"));
            }
        }
        s
    }

    /// `<account>_vpcflowlogs_<region>_<flow-log-id>_<YYYYMMDDTHHmmZ>_<hash>.log.gz`
    /// (`.log.parquet` for Parquet).
    pub fn file_name(&self, bucket: u64, hash8: &str) -> String {
        let t = utc(bucket);
        let (y, mo, d, h, mi) = (t.year(), t.month(), t.day(), t.hour(), t.minute());
        let ext = match self.format {
            FileFormat::Text => "log.gz",
            FileFormat::Parquet => "log.parquet",
        };
        format!("{}_vpcflowlogs_{}_{}_{y:04}{mo:02}{d:02}T{h:02}{mi:02}Z_{hash8}.{ext}", self.account_id, self.region, self.flow_log_id)
    }

    pub fn key(&self, bucket: u64, hash8: &str) -> String {
        format!("{}{}", self.folder(bucket), self.file_name(bucket, hash8))
    }
}

/// The records of one future object: one 5-minute bucket, one header.
#[derive(Debug, PartialEq, Eq)]
pub struct FileGroup<'a> {
    pub bucket: u64,
    pub header: &'a str,
    pub records: Vec<&'a SpoolRecord>,
}

/// Groups the records of `batches` into files: one per (5-minute bucket of
/// `end`, header), oldest bucket first, records in spool order, a new file
/// whenever the text of a file would pass `rotate_bytes` (a file always
/// holds at least one record).
pub fn group_files(batches: &[Batch], rotate_bytes: usize) -> Vec<FileGroup<'_>> {
    let mut by: BTreeMap<(u64, &str), Vec<&SpoolRecord>> = BTreeMap::new();
    for b in batches {
        for r in &b.records {
            by.entry((bucket_of(r.end), b.header.as_str())).or_default().push(r);
        }
    }
    let mut out = Vec::new();
    for ((bucket, header), recs) in by {
        let mut cur = Vec::new();
        let mut size = header.len() + 1;
        for r in recs {
            let n = r.line.len() + 1;
            if !cur.is_empty() && size + n > rotate_bytes {
                out.push(FileGroup { bucket, header, records: std::mem::take(&mut cur) });
                size = header.len() + 1;
            }
            size += n;
            cur.push(r);
        }
        if !cur.is_empty() {
            out.push(FileGroup { bucket, header, records: cur });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(ts: i64, len: usize) -> CwEvent {
        CwEvent { timestamp_ms: ts, message: "x".repeat(len) }
    }

    fn check(batches: &[Vec<CwEvent>], lim: CwLimits) {
        for b in batches {
            assert!(!b.is_empty());
            assert!(b.len() <= lim.max_events);
            assert!(b.iter().map(|e| e.message.len() + 26).sum::<usize>() <= lim.max_bytes);
            assert!(b.windows(2).all(|w| w[0].timestamp_ms <= w[1].timestamp_ms));
            assert!(b.last().unwrap().timestamp_ms - b[0].timestamp_ms <= lim.max_span_ms);
        }
    }

    #[test]
    fn cw_splits_at_exactly_one_mib_counting_26_bytes_per_event() {
        // 1,048,576 / (998 + 26) = 1024 events fill a batch exactly.
        let events: Vec<_> = (0..2048).map(|i| ev(1_000_000 + i, 998)).collect();
        let b = cw_split(events, CwLimits::default());
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), vec![1024, 1024]);
        check(&b, CwLimits::default());
        // One byte more per event: 1023 per batch.
        let events: Vec<_> = (0..2048).map(|i| ev(1_000_000 + i, 999)).collect();
        let b = cw_split(events, CwLimits::default());
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), vec![1023, 1023, 2]);
        check(&b, CwLimits::default());
    }

    #[test]
    fn cw_splits_at_10000_events() {
        let events: Vec<_> = (0..25_001).map(|i| ev(5_000 + i / 7, 10)).collect();
        let b = cw_split(events, CwLimits::default());
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), vec![10_000, 10_000, 5_001]);
        check(&b, CwLimits::default());
        assert_eq!(cw_split((0..10_000).map(|i| ev(i, 10)).collect(), CwLimits::default()).len(), 1);
    }

    #[test]
    fn cw_splits_at_24_hours_and_sorts() {
        let day = CW_MAX_SPAN_MS;
        // Unsorted input; exactly 24 h fits, 24 h + 1 ms does not.
        let events = vec![ev(day, 5), ev(0, 5), ev(day + 1, 5), ev(10, 5), ev(3 * day, 5)];
        let b = cw_split(events, CwLimits::default());
        let ts: Vec<Vec<i64>> = b.iter().map(|v| v.iter().map(|e| e.timestamp_ms).collect()).collect();
        assert_eq!(ts, vec![vec![0, 10, day], vec![day + 1], vec![3 * day]]);
        check(&b, CwLimits::default());
    }

    #[test]
    fn cw_streams_and_timestamps() {
        let recs = vec![
            SpoolRecord { interface_id: "eni-b".into(), start: 20, end: 80, line: "b1".into() },
            SpoolRecord { interface_id: "eni-a".into(), start: 30, end: 80, line: "a1".into() },
            SpoolRecord { interface_id: "eni-b".into(), start: 10, end: 80, line: "b0".into() },
        ];
        let m = cw_events_by_stream(&recs);
        assert_eq!(m.keys().collect::<Vec<_>>(), vec!["eni-a-all", "eni-b-all"]);
        assert_eq!(m["eni-b-all"], vec![CwEvent { timestamp_ms: 10_000, message: "b0".into() }, CwEvent { timestamp_ms: 20_000, message: "b1".into() }]);
    }

    #[test]
    fn firehose_limits() {
        assert_eq!(fh_payload("2 1 eni-1 \"x\""), br#"{"message":"2 1 eni-1 \"x\""}"#.to_vec());
        let (calls, big) = fh_split((0..1201).map(|_| vec![b'x'; 100]).collect());
        assert_eq!(calls.iter().map(Vec::len).collect::<Vec<_>>(), vec![500, 500, 201]);
        assert!(big.is_empty());
        // 4 MiB per call: 5 records of 1,000 KiB = 5,120,000 > 4,194,304.
        let (calls, big) = fh_split((0..6).map(|_| vec![b'x'; FH_MAX_RECORD_BYTES]).chain([vec![b'y'; FH_MAX_RECORD_BYTES + 1]]).collect());
        assert_eq!(calls.iter().map(Vec::len).collect::<Vec<_>>(), vec![4, 2]);
        assert_eq!(big.len(), 1);
        assert!(calls.iter().all(|c| c.iter().map(Vec::len).sum::<usize>() <= FH_MAX_CALL_BYTES));
    }

    fn layout(hive: bool, per_hour: bool, format: FileFormat) -> Layout {
        Layout { prefix: "logs/x".into(), account_id: "123456789012".into(), region: "us-east-1".into(), flow_log_id: "fl-1234abcd".into(), hive, per_hour, format }
    }

    #[test]
    fn s3_keys_follow_the_aws_layouts() {
        // 2018-06-20T16:24:59Z → bucket 16:20.
        let end = 1_529_511_899;
        let b = bucket_of(end);
        // AWS layouts: plain and hive, per day and per hour, text and Parquet.
        for (got, want) in [
            (layout(false, false, FileFormat::Text).key(b, "fe123456"), "logs/x/AWSLogs/123456789012/vpcflowlogs/us-east-1/2018/06/20/123456789012_vpcflowlogs_us-east-1_fl-1234abcd_20180620T1620Z_fe123456.log.gz"),
            (layout(false, true, FileFormat::Text).folder(b), "logs/x/AWSLogs/123456789012/vpcflowlogs/us-east-1/2018/06/20/16/"),
            (layout(true, false, FileFormat::Parquet).key(b, "00000000"), "logs/x/AWSLogs/aws-account-id=123456789012/aws-service=vpcflowlogs/aws-region=us-east-1/year=2018/month=06/day=20/123456789012_vpcflowlogs_us-east-1_fl-1234abcd_20180620T1620Z_00000000.log.parquet"),
            (layout(true, true, FileFormat::Text).folder(b), "logs/x/AWSLogs/aws-account-id=123456789012/aws-service=vpcflowlogs/aws-region=us-east-1/year=2018/month=06/day=20/hour=16/"),
        ] {
            assert_eq!(got, want);
        }
        let mut l = layout(false, false, FileFormat::Text);
        l.prefix.clear();
        assert!(l.folder(0).starts_with("AWSLogs/123456789012/vpcflowlogs/us-east-1/1970/01/01/"));
        assert!(l.key(951_782_400, "0").starts_with("AWSLogs/123456789012/vpcflowlogs/us-east-1/2000/02/29/123456789012_vpcflowlogs_us-east-1_fl-1234abcd_20000229T0000Z_0."));
        assert!(l.key(1_735_689_599, "0").contains("/2024/12/31/123456789012_vpcflowlogs_us-east-1_fl-1234abcd_20241231T2359Z_0."));
        assert!(l.key(u64::MAX, "0").contains("/9999/12/"), "clamped to the calendar's end, no panic");
    }

    #[test]
    fn files_group_by_5_minute_bucket_of_end_and_rotate() {
        let r = |end: u64, l: &str| SpoolRecord { interface_id: "e".into(), start: end - 10, end, line: l.into() };
        let batches = vec![
            Batch { header: "h".into(), records: vec![r(299, "a"), r(300, "b"), r(599, "c")] },
            Batch { header: "h".into(), records: vec![r(100, "d"), r(600, "e")] },
        ];
        let g = group_files(&batches, 1 << 20);
        let got: Vec<(u64, Vec<&str>)> = g.iter().map(|f| (f.bucket, f.records.iter().map(|r| r.line.as_str()).collect())).collect();
        assert_eq!(got, vec![(0, vec!["a", "d"]), (300, vec!["b", "c"]), (600, vec!["e"])]);
        // Rotation: header (2) + 2 lines of 4 bytes fit in 10 bytes, a third does not.
        let batches = vec![Batch { header: "h".into(), records: (0..5).map(|_| r(10, "abc")).collect() }];
        let g = group_files(&batches, 10);
        assert_eq!(g.iter().map(|f| f.records.len()).collect::<Vec<_>>(), vec![2, 2, 1]);
    }
}
