//! Object bodies of the S3 layout: gzip text with a header line, or Parquet
//! with one column per field, named as AWS names them (the field name with
//! `-` replaced by `_`: `account_id`, `log_status`; readers such as Athena,
//! Glue, Spark, pyarrow and DuckDB select columns by those names), typed as
//! AWS documents (spec §2: INT_32, INT_64, else STRING), GZIP-compressed.
//! A `-` is null in the numeric columns and the string `-` in the STRING
//! ones (as in the one sample of native files we know of: README, Parquet).
//!
//! The file is written for the most conservative readers: format 1.0 data
//! pages, PLAIN encoding, no dictionary. (The parquet crate writes
//! dictionaries only as RLE_DICTIONARY, which readers that know only
//! PLAIN_DICTIONARY refuse; the size cost is in the README.)
//!
//! Columns are built from the header line of the spooled batch (the field
//! names of the format the records were written in), named and typed by the
//! field table ([`column_name`], [`Field::kind`]), so a new field needs
//! nothing here. Values are the space-separated tokens of each record line.

use std::{io::Write, sync::Arc};

use anyhow::{bail, Context, Result};
use flate2::{write::GzEncoder, Compression as GzLevel};
use parquet::{
    basic::{Compression, Encoding, GzipLevel, LogicalType, Repetition, Type as Physical},
    data_type::{ByteArray, ByteArrayType, Int32Type, Int64Type},
    file::{
        properties::{WriterProperties, WriterVersion},
        writer::SerializedFileWriter,
    },
    schema::types::Type,
};

use flowlog_records::format::{column_name, Field, Kind};

use super::batch::{FileFormat, FileGroup};

/// The Parquet type of a header field by name; names the field table does
/// not know (a spool of another version) are strings.
fn column_kind(field: &str) -> Kind {
    Field::from_name(field).map_or(Kind::String, Field::kind)
}

/// The Parquet physical type of a column kind.
fn physical(kind: Kind) -> Physical {
    match kind {
        Kind::Int32 => Physical::INT32,
        Kind::Int64 => Physical::INT64,
        Kind::String => Physical::BYTE_ARRAY,
    }
}

/// Gzip text: the header line, then one line per record.
pub fn gzip_text(header: &str, lines: &[&str]) -> Result<Vec<u8>> {
    let mut gz = GzEncoder::new(Vec::with_capacity(lines.len() * 40 + 64), GzLevel::default());
    gz.write_all(header.as_bytes())?;
    gz.write_all(b"\n")?;
    for l in lines {
        gz.write_all(l.as_bytes())?;
        gz.write_all(b"\n")?;
    }
    Ok(gz.finish()?)
}

/// A Parquet file of the records, columns named after `header`'s fields.
pub fn parquet_file(header: &str, lines: &[&str]) -> Result<Vec<u8>> {
    write_parquet(header, lines, false)
}

/// One column's values (nulls left out: see [`Columns`]'s `defs`).
enum Values {
    Int32(Vec<i32>),
    Int64(Vec<i64>),
    Str(Vec<ByteArray>),
}

impl Values {
    fn kind(&self) -> Kind {
        match self {
            Values::Int32(_) => Kind::Int32,
            Values::Int64(_) => Kind::Int64,
            Values::Str(_) => Kind::String,
        }
    }
}

/// The records' values split into typed columns: the part of a Parquet body
/// that reads the lines, measured apart from the encoding and compression in
/// the bench (`cargo xtask bench --only drain`, "Parquet: columns").
pub struct Columns<'h> {
    names: Vec<&'h str>,
    /// Per column and record: 1 for a value, 0 for a null.
    defs: Vec<Vec<i16>>,
    values: Vec<Values>,
}

impl<'h> Columns<'h> {
    /// Splits `lines` into the columns of `header`'s fields, parsing the
    /// numbers as it goes (one pass, no per-line allocation).
    pub fn from_lines(header: &'h str, lines: &[&str]) -> Result<Self> {
        let names: Vec<&str> = header.split(' ').filter(|s| !s.is_empty()).collect();
        if names.is_empty() {
            bail!("no fields in the header line");
        }
        let n = lines.len();
        let mut defs = vec![Vec::with_capacity(n); names.len()];
        let mut values: Vec<Values> = names
            .iter()
            .map(|name| match column_kind(name) {
                Kind::Int32 => Values::Int32(Vec::with_capacity(n)),
                Kind::Int64 => Values::Int64(Vec::with_capacity(n)),
                Kind::String => Values::Str(Vec::with_capacity(n)),
            })
            .collect();
        // The strings are slices of one copy of the text (a reference count
        // each), not an allocation each: a third of the columns' time.
        let text = bytes::Bytes::from(lines.concat());
        let mut line_at = 0;
        for (i, l) in lines.iter().enumerate() {
            let (base, at) = (l.as_ptr() as usize, line_at);
            line_at += l.len();
            let wrong_count = || anyhow::anyhow!("record {i} has {} values for {} fields: {l:?}", l.split(' ').count(), names.len());
            let mut toks = l.split(' ');
            for (c, (d, v)) in defs.iter_mut().zip(&mut values).enumerate() {
                let t = toks.next().ok_or_else(wrong_count)?;
                // STRING columns keep `-`; there is no number to write for it.
                let null = t == "-" && !matches!(v, Values::Str(_));
                d.push(i16::from(!null));
                if null {
                    continue;
                }
                match v {
                    Values::Int32(v) => v.push(t.parse().with_context(|| format!("field {}: {t:?} is not an INT_32", names[c]))?),
                    Values::Int64(v) => v.push(t.parse().with_context(|| format!("field {}: {t:?} is not an INT_64", names[c]))?),
                    Values::Str(v) => {
                        let from = at + (t.as_ptr() as usize - base);
                        v.push(ByteArray::from(text.slice(from..from + t.len())))
                    }
                }
            }
            if toks.next().is_some() {
                return Err(wrong_count());
            }
        }
        Ok(Columns { names, defs, values })
    }

    /// The Parquet file. `dictionary`: what earlier versions wrote
    /// (RLE_DICTIONARY pages), kept only to measure the size difference.
    pub fn write(&self, dictionary: bool) -> Result<Vec<u8>> {
        let fields = self
            .names
            .iter()
            .zip(self.values.iter().map(Values::kind))
            .map(|(n, kind)| {
                let logical = (kind == Kind::String).then_some(LogicalType::String);
                Type::primitive_type_builder(&column_name(n), physical(kind)).with_logical_type(logical).with_repetition(Repetition::OPTIONAL).build().map(Arc::new)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let schema = Arc::new(Type::group_type_builder("schema").with_fields(fields).build()?);
        let mut props = WriterProperties::builder().set_compression(Compression::GZIP(GzipLevel::default())).set_writer_version(WriterVersion::PARQUET_1_0);
        if !dictionary {
            props = props.set_dictionary_enabled(false).set_encoding(Encoding::PLAIN);
        }
        let props = Arc::new(props.build());
        let mut w = SerializedFileWriter::new(Vec::new(), schema, props)?;
        let mut rg = w.next_row_group()?;
        let mut columns = self.defs.iter().zip(&self.values);
        while let Some(mut col) = rg.next_column()? {
            let Some((defs, values)) = columns.next() else { bail!("more Parquet columns than fields") };
            match values {
                Values::Int32(v) => col.typed::<Int32Type>().write_batch(v, Some(defs), None)?,
                Values::Int64(v) => col.typed::<Int64Type>().write_batch(v, Some(defs), None)?,
                Values::Str(v) => col.typed::<ByteArrayType>().write_batch(v, Some(defs), None)?,
            };
            col.close()?;
        }
        rg.close()?;
        Ok(w.into_inner()?)
    }
}

fn write_parquet(header: &str, lines: &[&str], dictionary: bool) -> Result<Vec<u8>> {
    Columns::from_lines(header, lines)?.write(dictionary)
}

/// The body of one object of `group`.
pub fn encode(group: &FileGroup<'_>, format: FileFormat) -> Result<Vec<u8>> {
    let lines: Vec<&str> = group.records.iter().map(|r| r.line.as_str()).collect();
    match format {
        FileFormat::Text => gzip_text(group.header, &lines),
        FileFormat::Parquet => parquet_file(group.header, &lines),
    }
}

/// The `<hash>` of an object name: 8 hex digits of the body's SHA-256, so a
/// body uploaded twice (after a crash before the acknowledgement) lands on
/// the same key instead of duplicating records.
pub fn hash8(body: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(body);
    d[..4].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::{
        file::reader::{FileReader, SerializedFileReader},
        record::Field as PqField,
    };
    use std::io::Read;

    #[test]
    fn gzip_text_has_the_header_line() {
        let body = gzip_text("a b", &["1 2", "3 -"]).unwrap();
        let mut s = String::new();
        flate2::read::GzDecoder::new(&body[..]).read_to_string(&mut s).unwrap();
        assert_eq!(s, "a b\n1 2\n3 -\n");
    }

    #[test]
    fn parquet_columns_are_named_and_typed_as_aws_and_dashes_are_null_only_in_numbers() {
        let header = "version account-id srcport packets start action log-status";
        let body = parquet_file(header, &["2 123 443 10 1700000000 ACCEPT OK", "2 123 - - 1700000060 - NODATA"]).unwrap();
        let r = SerializedFileReader::new(bytes::Bytes::from(body)).unwrap();
        let schema = r.metadata().file_metadata().schema_descr();
        let types: Vec<(String, Physical)> = schema.columns().iter().map(|c| (c.name().to_string(), c.physical_type())).collect();
        assert_eq!(
            types,
            vec![
                ("version".into(), Physical::INT32),
                ("account_id".into(), Physical::BYTE_ARRAY),
                ("srcport".into(), Physical::INT32),
                ("packets".into(), Physical::INT64),
                ("start".into(), Physical::INT64),
                ("action".into(), Physical::BYTE_ARRAY),
                ("log_status".into(), Physical::BYTE_ARRAY),
            ]
        );
        let rows: Vec<Vec<PqField>> = r.get_row_iter(None).unwrap().map(|row| row.unwrap().get_column_iter().map(|(_, f)| f.clone()).collect()).collect();
        let s = |v: &str| PqField::Str(v.into());
        assert_eq!(
            rows,
            vec![
                vec![PqField::Int(2), s("123"), PqField::Int(443), PqField::Long(10), PqField::Long(1_700_000_000), s("ACCEPT"), s("OK")],
                vec![PqField::Int(2), s("123"), PqField::Null, PqField::Null, PqField::Long(1_700_000_060), s("-"), s("NODATA")],
            ]
        );
        assert_eq!(parquet_file("a b", &["1"]).unwrap_err().to_string(), "record 0 has 1 values for 2 fields: \"1\"");
        assert_eq!(parquet_file("a", &["1", "1 2"]).unwrap_err().to_string(), "record 1 has 2 values for 1 fields: \"1 2\"");
        assert_eq!(parquet_file("srcport", &["x"]).unwrap_err().to_string(), "field srcport: \"x\" is not an INT_32");
    }

    /// Format-1.0 data pages, PLAIN values, no dictionary page: what
    /// readers that know neither v2 pages nor RLE_DICTIONARY decode.
    #[test]
    fn parquet_pages_are_v1_and_plain() {
        use parquet::{basic::Encoding, column::page::Page};
        let lines: Vec<String> = (0..2000).map(|i| format!("2 123456789012 eni-{} 10.0.0.{} 10.0.1.1 {} 443 6 {} {} 1700000000 1700000059 ACCEPT OK", i % 3, i % 200, 1024 + i, i + 1, 100 * (i + 1))).collect();
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        let body = parquet_file(&flowlog_records::format::Format::default().header(), &lines).unwrap();
        let r = SerializedFileReader::new(bytes::Bytes::from(body)).unwrap();
        let rg = r.get_row_group(0).unwrap();
        assert_eq!(rg.num_columns(), 14);
        for i in 0..rg.num_columns() {
            let c = rg.metadata().column(i);
            assert_eq!(c.dictionary_page_offset(), None, "column {i}");
            // RLE is the definition levels' encoding (v1 pages).
            let mut e: Vec<Encoding> = c.encodings().collect();
            e.sort_by_key(|e| *e as i32);
            assert_eq!(e, vec![Encoding::PLAIN, Encoding::RLE], "column {i}");
            let mut pages = rg.get_column_page_reader(i).unwrap();
            let mut n = 0;
            while let Some(p) = pages.get_next_page().unwrap() {
                assert!(matches!(p, Page::DataPage { encoding: Encoding::PLAIN, .. }), "column {i}: {:?} {:?}", p.page_type(), p.encoding());
                n += 1;
            }
            assert!(n >= 1);
        }
    }

    /// Figures for the README: `cargo test -p flowlog-agent --lib
    /// parquet_size -- --ignored --nocapture`.
    #[test]
    #[ignore = "measurement"]
    fn parquet_size() {
        for (name, header, lines) in [("v2 default", DEFAULT_HEADER, realistic(100_000, false)), ("v5 29 fields", V5_HEADER, realistic(100_000, true))] {
            let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
            let text: usize = lines.iter().map(|l| l.len() + 1).sum();
            let gz = gzip_text(header, &lines).unwrap().len();
            let dict = write_parquet(header, &lines, true).unwrap().len();
            let plain = parquet_file(header, &lines).unwrap().len();
            eprintln!(
                "{name}: 100,000 records, {text} text bytes; gzip text {gz}; Parquet RLE_DICTIONARY (before) {dict}; PLAIN v1 (now) {plain} ({:+.1}%)",
                (plain as f64 / dict as f64 - 1.0) * 100.0
            );
        }
    }

    const DEFAULT_HEADER: &str = "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status";
    const V5_HEADER: &str = "version srcaddr dstaddr srcport dstport protocol start end type packets bytes account-id vpc-id subnet-id instance-id interface-id region az-id sublocation-type sublocation-id action tcp-flags pkt-srcaddr pkt-dstaddr pkt-src-aws-service pkt-dst-aws-service traffic-path flow-direction log-status";

    /// A server's records: 4 interfaces, 60-s windows of 500 records, ~300
    /// client addresses, ephemeral ports, a few services, long-tailed
    /// counts, some REJECTs and NODATA (deterministic LCG, no crate).
    fn realistic(n: usize, v5: bool) -> Vec<String> {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = move |m: u64| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 33) % m
        };
        (0..n)
            .map(|i| {
                let t = 1_700_000_000 + 60 * (i as u64 / 500);
                let eni = format!("eni-0a1b2c3d4e5f6071{}", rnd(4));
                let local = format!("10.0.{}.{}", rnd(4), 10 + rnd(4));
                if rnd(200) == 0 {
                    return if v5 {
                        format!("5 - - - - - {t} {} - - - 123456789012 vpc-0abc12345def67890 subnet-0abc12345def67890 i-0abc12345def67890 {eni} eu-west-1 euw1-az2 - - - - - - - - - - NODATA", t + 59)
                    } else {
                        format!("2 123456789012 {eni} - - - - - - - {t} {} - NODATA", t + 59)
                    };
                }
                let peer = if rnd(4) == 0 { format!("52.95.{}.{}", rnd(4), rnd(250)) } else { format!("10.{}.{}.{}", 1 + rnd(3), rnd(10), rnd(250)) };
                let (sport, dport) = ([443, 80, 22, 5432, 53][rnd(5) as usize], 32768 + rnd(28000));
                let proto = if sport == 53 { 17 } else { 6 };
                let packets = 1 + rnd(10) * rnd(100) * if rnd(20) == 0 { rnd(1000) } else { 1 };
                let bytes = packets * (40 + rnd(1460));
                let (start, end) = (t + rnd(30), t + 30 + rnd(30));
                let action = if rnd(30) == 0 { "REJECT" } else { "ACCEPT" };
                let ingress = rnd(2) == 0;
                let (src, dst, sp, dp) = if ingress { (peer.clone(), local.clone(), dport, sport) } else { (local.clone(), peer.clone(), sport, dport) };
                if v5 {
                    let svc = if peer.starts_with("52.") { "S3" } else { "-" };
                    let (ssvc, dsvc, dir, path) = if ingress { (svc, "-", "ingress", "-".to_string()) } else { ("-", svc, "egress", (1 + rnd(8)).to_string()) };
                    format!("5 {src} {dst} {sp} {dp} {proto} {start} {end} IPv4 {packets} {bytes} 123456789012 vpc-0abc12345def67890 subnet-0abc12345def67890 i-0abc12345def67890 {eni} eu-west-1 euw1-az2 - - {action} {} {src} {dst} {ssvc} {dsvc} {path} {dir} OK", [0, 2, 3, 18, 19][rnd(5) as usize])
                } else {
                    format!("2 123456789012 {eni} {src} {dst} {sp} {dp} {proto} {packets} {bytes} {start} {end} {action} OK")
                }
            })
            .collect()
    }
}
