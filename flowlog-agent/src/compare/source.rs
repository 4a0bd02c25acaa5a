//! Where `compare` reads records from: local files and directories, S3
//! prefixes and CloudWatch log groups.
//!
//! An S3 object or a file is one of (recognised by its first bytes, not its
//! name): gzip-compressed text, plain text, or Parquet. Text files start
//! with a header line of field names (what AWS writes to S3) or not (the
//! agent's files, CloudWatch events): then the source's `--*-format` (by
//! default the version 2 format) says what the fields are. Parquet columns
//! are named after the fields, `_` between words as AWS writes them or `-`
//! (files of earlier versions of the agent); a null or `-` is `-`.
//!
//! Objects are read one at a time, in the order of the time stamp in their
//! name (`..._20180620T1620Z_<hash>.log.gz`, S3 layout) and then of their
//! path, so a tree of several accounts and regions is read in time order.

use std::{
    fs::File,
    io::{BufRead, BufReader, Cursor},
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use flate2::read::MultiGzDecoder;
use parquet::{
    file::reader::{FileReader, SerializedFileReader},
    record::{reader::RowIter, Field as PqField},
};

use flowlog_records::{
    format::{Field, Format},
    parse::RecordParser,
    record::FlowRecord,
};

/// A stream of records.
pub trait RecordSource {
    /// The next record, `None` at the end.
    fn next_record(&mut self) -> Result<Option<&FlowRecord>>;
    /// Where reading is, for progress output (`object 3/40`).
    fn position(&self) -> String;
}

/// A source as given on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A file, or a directory: every file below it.
    Local(PathBuf),
    /// `s3://bucket[/prefix]`: every object under the prefix.
    S3 { bucket: String, prefix: String },
    /// `cloudwatch://group[?stream=name]`: log group names may contain `/`,
    /// so the stream is a query parameter.
    CloudWatch { group: String, stream: Option<String> },
}

impl std::str::FromStr for Location {
    type Err = String;
    fn from_str(s: &str) -> Result<Location, String> {
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(format!("invalid source {s:?}: expected s3://bucket[/prefix]"));
            }
            return Ok(Location::S3 { bucket: bucket.into(), prefix: prefix.into() });
        }
        if let Some(rest) = s.strip_prefix("cloudwatch://") {
            let (group, query) = rest.split_once('?').unwrap_or((rest, ""));
            let stream = match query {
                "" => None,
                q => match q.strip_prefix("stream=") {
                    Some(st) if !st.is_empty() => Some(st.to_string()),
                    _ => return Err(format!("invalid source {s:?}: expected cloudwatch://log-group[?stream=log-stream]")),
                },
            };
            if group.is_empty() {
                return Err(format!("invalid source {s:?}: expected cloudwatch://log-group[?stream=log-stream]"));
            }
            return Ok(Location::CloudWatch { group: group.into(), stream });
        }
        if s.contains("://") {
            return Err(format!("invalid source {s:?}: expected a path, s3://bucket/prefix or cloudwatch://log-group"));
        }
        Ok(Location::Local(s.into()))
    }
}

/// The `YYYYMMDDTHHmmZ` in an S3 object name, if any.
pub fn name_time(name: &str) -> Option<&str> {
    let b = name.as_bytes();
    (0..b.len().saturating_sub(13)).rev().find_map(|i| {
        let t = &b[i..i + 14];
        let ok = t[..8].iter().all(u8::is_ascii_digit) && t[8] == b'T' && t[9..13].iter().all(u8::is_ascii_digit) && t[13] == b'Z';
        ok.then(|| &name[i..i + 14])
    })
}

/// Unix seconds of the `YYYYMMDDTHHmmZ` in an object name.
pub fn name_secs(name: &str) -> Option<u64> {
    let t = jiff::civil::DateTime::strptime("%Y%m%dT%H%MZ", name_time(name)?).ok()?;
    u64::try_from(t.to_zoned(jiff::tz::TimeZone::UTC).ok()?.timestamp().as_second()).ok()
}

/// `--since`/`--until`: Unix seconds or an RFC 3339 time with any offset.
/// Records hold whole seconds, so a fraction rounds up: `start >= 10.5` and
/// `start < 10.5` mean `start >= 11` and `start < 11`.
pub fn parse_time(s: &str) -> Result<u64, String> {
    if let Ok(n) = s.parse::<u64>() {
        return Ok(n);
    }
    let ts: jiff::Timestamp = s.parse().map_err(|e| {
        format!("invalid time {s:?}: expected Unix seconds or an RFC 3339 time such as 2018-06-20T16:20:00Z or 2018-06-20T18:20:00+02:00 ({e})")
    })?;
    let secs = ts.as_second() + i64::from(ts.subsec_nanosecond() > 0);
    u64::try_from(secs).map_err(|_| format!("invalid time {s:?}: before 1970"))
}

/// Whether an object may hold records with `since <= start < until`. The
/// time in an AWS object name is the 5-minute bucket of its records' `end`,
/// and `start` is at most an aggregation interval (10 minutes; 15 were
/// documented once) before `end`. Objects without a time are always read.
pub fn may_hold(name: &str, since: u64, until: u64) -> bool {
    match name_secs(name) {
        Some(t) => t + 300 > since && t.saturating_sub(900) < until,
        None => true,
    }
}

/// Sorts object names by the time in their name, then by name.
pub fn sort_objects(names: &mut [String]) {
    names.sort_by(|a, b| (name_time(a), a.as_str()).cmp(&(name_time(b), b.as_str())));
}

/// Every file below `path` (or `path` itself), hidden ones excepted.
pub fn list_files(path: &Path) -> Result<Vec<String>> {
    let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
    let mut out = Vec::new();
    if meta.is_file() {
        out.push(path.to_string_lossy().into_owned());
        return Ok(out);
    }
    let mut dirs = vec![path.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("{}", d.display()))? {
            let e = e.with_context(|| format!("{}", d.display()))?;
            if e.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let p = e.path();
            if e.file_type()?.is_dir() {
                dirs.push(p);
            } else {
                out.push(p.to_string_lossy().into_owned());
            }
        }
    }
    sort_objects(&mut out);
    Ok(out)
}

/// The records of one object (file or S3 object).
pub enum ObjectReader {
    Text { name: String, input: Box<dyn BufRead>, parser: Option<RecordParser>, default: Format, buf: String, line: usize },
    Parquet { name: String, rows: RowIter<'static>, parser: RecordParser, row: usize, buf: String },
}

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const PARQUET_MAGIC: &[u8] = b"PAR1";

impl ObjectReader {
    /// Opens a local file.
    pub fn open_file(path: &str, default: &Format) -> Result<ObjectReader> {
        let f = File::open(path).with_context(|| path.to_string())?;
        let mut r = BufReader::with_capacity(256 * 1024, f);
        let head = r.fill_buf().with_context(|| path.to_string())?.to_vec();
        if head.starts_with(PARQUET_MAGIC) {
            return Self::parquet(path, SerializedFileReader::new(r.into_inner()));
        }
        Ok(Self::text(path, Box::new(r), &head, default))
    }

    /// An object read into memory (S3).
    pub fn from_bytes(name: &str, body: Bytes, default: &Format) -> Result<ObjectReader> {
        if body.starts_with(PARQUET_MAGIC) {
            return Self::parquet(name, SerializedFileReader::new(body));
        }
        let head = body[..body.len().min(2)].to_vec();
        Ok(Self::text(name, Box::new(Cursor::new(body)), &head, default))
    }

    fn text(name: &str, input: Box<dyn BufRead>, head: &[u8], default: &Format) -> ObjectReader {
        let input: Box<dyn BufRead> =
            if head.starts_with(GZIP_MAGIC) { Box::new(BufReader::with_capacity(256 * 1024, MultiGzDecoder::new(input))) } else { input };
        ObjectReader::Text { name: name.to_string(), input, parser: None, default: default.clone(), buf: String::new(), line: 0 }
    }

    fn parquet<R: parquet::file::reader::ChunkReader + 'static>(
        name: &str,
        r: parquet::errors::Result<SerializedFileReader<R>>,
    ) -> Result<ObjectReader> {
        let r = r.map_err(|e| anyhow!("{name}: not a readable Parquet file: {e}"))?;
        let schema = r.metadata().file_metadata().schema_descr_ptr();
        let fields = schema
            .columns()
            .iter()
            .map(|c| {
                Field::from_column(c.name()).ok_or_else(|| anyhow!("{name}: Parquet column {:?} is not a flow log field", c.name()))
            })
            .collect::<Result<Vec<_>>>()?;
        let format = Format::from_fields(fields).map_err(|_| anyhow!("{name}: Parquet file without columns"))?;
        let rows = RowIter::from_file_into(Box::new(r));
        Ok(ObjectReader::Parquet { name: name.to_string(), rows, parser: RecordParser::new(format), row: 0, buf: String::new() })
    }

    /// The next record of the object.
    pub fn next_record(&mut self) -> Result<Option<FlowRecord>> {
        match self {
            ObjectReader::Text { name, input, parser, default, buf, line } => loop {
                buf.clear();
                *line += 1;
                let n = input.read_line(buf).map_err(|e| anyhow!("{name}: line {line}: cannot read: {e}"))?;
                if n == 0 {
                    return Ok(None);
                }
                let text = buf.trim_end_matches(['\n', '\r']);
                if text.trim().is_empty() {
                    continue;
                }
                // A header line: at the start, or again further on where
                // files were concatenated (`cat a.log.gz b.log.gz`).
                let first = text.split_ascii_whitespace().next().unwrap_or("");
                if Field::from_name(first).is_some() && (parser.is_none() || text.split_ascii_whitespace().all(|t| Field::from_name(t).is_some())) {
                    let p = RecordParser::from_header(text).map_err(|e| anyhow!("{name}: line {line}: {e}"))?;
                    *parser = Some(p);
                    continue;
                }
                let p = parser.get_or_insert_with(|| RecordParser::new(default.clone()));
                // Line numbers are ours: the parser does not see blank lines.
                return match p.parse_line(text) {
                    Ok(Some(r)) => Ok(Some(r.record)),
                    Ok(None) => continue,
                    Err(e) => Err(anyhow!("{name}: line {line}: {}", e.error)),
                };
            },
            ObjectReader::Parquet { name, rows, parser, row, buf } => {
                let Some(r) = rows.next() else { return Ok(None) };
                *row += 1;
                let r = r.map_err(|e| anyhow!("{name}: row {row}: cannot read: {e}"))?;
                buf.clear();
                for (i, (col, v)) in r.get_column_iter().enumerate() {
                    if i > 0 {
                        buf.push(' ');
                    }
                    use std::fmt::Write as _;
                    match v {
                        PqField::Null => buf.push('-'),
                        PqField::Str(s) if s.is_empty() => buf.push('-'),
                        PqField::Str(s) if s.contains(|c: char| c.is_ascii_whitespace()) => {
                            bail!("{name}: row {row}: column {col}: {s:?} contains white space")
                        }
                        PqField::Str(s) => buf.push_str(s),
                        PqField::Int(n) => write!(buf, "{n}").expect("to String"),
                        PqField::Long(n) => write!(buf, "{n}").expect("to String"),
                        PqField::Short(n) => write!(buf, "{n}").expect("to String"),
                        PqField::Byte(n) => write!(buf, "{n}").expect("to String"),
                        PqField::UInt(n) => write!(buf, "{n}").expect("to String"),
                        PqField::ULong(n) => write!(buf, "{n}").expect("to String"),
                        PqField::UShort(n) => write!(buf, "{n}").expect("to String"),
                        PqField::UByte(n) => write!(buf, "{n}").expect("to String"),
                        other => bail!("{name}: row {row}: column {col}: unsupported Parquet value {other}"),
                    }
                }
                match parser.parse_line(buf) {
                    Ok(Some(p)) => Ok(Some(p.record)),
                    Ok(None) => bail!("{name}: row {row}: empty row"),
                    Err(e) => Err(anyhow!("{name}: row {row}: {}", e.error)),
                }
            }
        }
    }
}

/// Opens the objects of a list one after the other.
pub struct ObjectSource<F: FnMut(&str) -> Result<ObjectReader>> {
    names: Vec<String>,
    next: usize,
    open: F,
    current: Option<ObjectReader>,
    record: FlowRecord,
}

impl<F: FnMut(&str) -> Result<ObjectReader>> ObjectSource<F> {
    pub fn new(names: Vec<String>, open: F) -> Self {
        ObjectSource { names, next: 0, open, current: None, record: FlowRecord::default() }
    }
}

impl<F: FnMut(&str) -> Result<ObjectReader>> RecordSource for ObjectSource<F> {
    fn next_record(&mut self) -> Result<Option<&FlowRecord>> {
        loop {
            if let Some(cur) = &mut self.current {
                if let Some(r) = cur.next_record()? {
                    self.record = r;
                    return Ok(Some(&self.record));
                }
                self.current = None;
            }
            let Some(name) = self.names.get(self.next) else { return Ok(None) };
            self.next += 1;
            self.current = Some((self.open)(name)?);
        }
    }

    fn position(&self) -> String {
        format!("object {}/{}", self.next, self.names.len())
    }
}

/// A local file or directory.
pub fn local(path: &Path, default: Format) -> Result<Box<dyn RecordSource>> {
    local_in(path, default, 0, u64::MAX)
}

/// A local file or directory, without the objects that cannot hold
/// records with `since <= start < until` (see [`may_hold`]).
pub fn local_in(path: &Path, default: Format, since: u64, until: u64) -> Result<Box<dyn RecordSource>> {
    let mut names = list_files(path)?;
    if names.is_empty() {
        bail!("{}: no files", path.display());
    }
    names.retain(|n| may_hold(n, since, until));
    Ok(Box::new(ObjectSource::new(names, move |n| ObjectReader::open_file(n, &default))))
}

/// Sets the interface of records that lack the field from a CloudWatch
/// stream name (`eni-123-all` → `eni-123`).
pub fn interface_from_stream(stream: &str) -> Arc<str> {
    let s = stream.strip_suffix("-all").or_else(|| stream.strip_suffix("-accept")).or_else(|| stream.strip_suffix("-reject")).unwrap_or(stream);
    Arc::from(s)
}
