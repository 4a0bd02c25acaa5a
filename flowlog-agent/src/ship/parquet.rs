//! Object bodies of the S3 layout: gzip text with a header line, or Parquet
//! with one column per field, typed as AWS documents (spec §2: INT_32,
//! INT_64, else STRING), GZIP-compressed pages. `-` is written as null.
//!
//! Columns are built from the header line of the spooled batch (the field
//! names of the format the records were written in), so a new field only
//! needs an entry in [`column_type`]. Values are the space-separated tokens
//! of each record line.

use std::{io::Write, sync::Arc};

use anyhow::{bail, Context, Result};
use flate2::{write::GzEncoder, Compression as GzLevel};
use parquet::{
    basic::{Compression, GzipLevel, LogicalType, Repetition, Type as Physical},
    data_type::{ByteArray, ByteArrayType, Int32Type, Int64Type},
    file::{properties::WriterProperties, writer::SerializedFileWriter},
    schema::types::Type,
};

use super::batch::{FileFormat, FileGroup};

/// Parquet type of a field, per the AWS field table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnType {
    Int32,
    Int64,
    String,
}

/// The AWS Parquet type of a field by name; unknown names are strings.
pub fn column_type(field: &str) -> ColumnType {
    match field {
        "version" | "srcport" | "dstport" | "protocol" | "tcp-flags" | "traffic-path" | "encryption-status" => ColumnType::Int32,
        "packets" | "bytes" | "start" | "end" => ColumnType::Int64,
        _ => ColumnType::String,
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
    let names: Vec<&str> = header.split(' ').filter(|s| !s.is_empty()).collect();
    if names.is_empty() {
        bail!("no fields in the header line");
    }
    let mut cols: Vec<Vec<Option<&str>>> = vec![Vec::with_capacity(lines.len()); names.len()];
    for (i, l) in lines.iter().enumerate() {
        let toks: Vec<&str> = l.split(' ').collect();
        if toks.len() != names.len() {
            bail!("record {i} has {} values for {} fields: {l:?}", toks.len(), names.len());
        }
        for (c, t) in cols.iter_mut().zip(toks) {
            c.push((t != "-").then_some(t));
        }
    }
    let fields = names
        .iter()
        .map(|n| {
            let b = match column_type(n) {
                ColumnType::Int32 => Type::primitive_type_builder(n, Physical::INT32),
                ColumnType::Int64 => Type::primitive_type_builder(n, Physical::INT64),
                ColumnType::String => Type::primitive_type_builder(n, Physical::BYTE_ARRAY).with_logical_type(Some(LogicalType::String)),
            };
            b.with_repetition(Repetition::OPTIONAL).build().map(Arc::new)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let schema = Arc::new(Type::group_type_builder("schema").with_fields(fields).build()?);
    let props = Arc::new(WriterProperties::builder().set_compression(Compression::GZIP(GzipLevel::default())).build());
    let mut w = SerializedFileWriter::new(Vec::new(), schema, props)?;
    let mut rg = w.next_row_group()?;
    let mut i = 0;
    while let Some(mut col) = rg.next_column()? {
        let name = names[i];
        let vals = &cols[i];
        let defs: Vec<i16> = vals.iter().map(|v| i16::from(v.is_some())).collect();
        match column_type(name) {
            ColumnType::Int32 => {
                let v = vals.iter().flatten().map(|s| s.parse::<i32>().with_context(|| format!("field {name}: {s:?} is not an INT_32"))).collect::<Result<Vec<_>>>()?;
                col.typed::<Int32Type>().write_batch(&v, Some(&defs), None)?;
            }
            ColumnType::Int64 => {
                let v = vals.iter().flatten().map(|s| s.parse::<i64>().with_context(|| format!("field {name}: {s:?} is not an INT_64"))).collect::<Result<Vec<_>>>()?;
                col.typed::<Int64Type>().write_batch(&v, Some(&defs), None)?;
            }
            ColumnType::String => {
                let v: Vec<ByteArray> = vals.iter().flatten().map(|s| ByteArray::from(*s)).collect();
                col.typed::<ByteArrayType>().write_batch(&v, Some(&defs), None)?;
            }
        }
        col.close()?;
        i += 1;
    }
    rg.close()?;
    Ok(w.into_inner()?)
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
    fn parquet_columns_are_typed_and_dashes_are_null() {
        let header = "version account-id srcport packets start log-status";
        let body = parquet_file(header, &["2 123 443 10 1700000000 OK", "2 123 - - 1700000060 NODATA"]).unwrap();
        let r = SerializedFileReader::new(bytes::Bytes::from(body)).unwrap();
        let schema = r.metadata().file_metadata().schema_descr();
        let types: Vec<(String, Physical)> = schema.columns().iter().map(|c| (c.name().to_string(), c.physical_type())).collect();
        assert_eq!(
            types,
            vec![
                ("version".into(), Physical::INT32),
                ("account-id".into(), Physical::BYTE_ARRAY),
                ("srcport".into(), Physical::INT32),
                ("packets".into(), Physical::INT64),
                ("start".into(), Physical::INT64),
                ("log-status".into(), Physical::BYTE_ARRAY),
            ]
        );
        let rows: Vec<Vec<PqField>> = r.get_row_iter(None).unwrap().map(|row| row.unwrap().get_column_iter().map(|(_, f)| f.clone()).collect()).collect();
        assert_eq!(
            rows,
            vec![
                vec![PqField::Int(2), PqField::Str("123".into()), PqField::Int(443), PqField::Long(10), PqField::Long(1_700_000_000), PqField::Str("OK".into())],
                vec![PqField::Int(2), PqField::Str("123".into()), PqField::Null, PqField::Null, PqField::Long(1_700_000_060), PqField::Str("NODATA".into())],
            ]
        );
        assert!(parquet_file("a b", &["1"]).is_err());
    }
}
