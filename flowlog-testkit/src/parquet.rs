//! Parquet files as other writers make them, for `compare`'s tests: AWS's
//! (columns named `account_id`, `-` null only in numeric columns) and
//! earlier versions of the agent's (columns named `account-id`, every `-`
//! null). Column types come from the field table ([`Field::kind`]); the
//! agent's own writer is `ship::parquet` (PLAIN v1 pages, GZIP), this one
//! keeps the parquet crate's defaults (dictionary pages, no compression), so
//! `compare` is tested on files it did not write itself.

use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use flowlog_records::format::{column_name, Field, Kind};
use parquet::{
    basic::{LogicalType, Repetition, Type as Physical},
    data_type::{ByteArray, ByteArrayType, Int32Type, Int64Type},
    file::{properties::WriterProperties, writer::SerializedFileWriter},
    schema::types::Type,
};

/// Records as AWS writes Parquet objects: one optional column per field of
/// `header` (INT32, INT64 or STRING per the field table), named with `_`
/// (`account_id`), `-` as null in numeric columns and as the string `-` in
/// STRING ones.
pub fn parquet_object(header: &str, lines: &[String]) -> Result<Vec<u8>> {
    parquet_object_as(header, lines, false)
}

/// What earlier versions of the agent wrote (columns named `account-id`, every
/// `-` null): files that `compare` still reads.
pub fn parquet_object_legacy(header: &str, lines: &[String]) -> Result<Vec<u8>> {
    parquet_object_as(header, lines, true)
}

fn parquet_object_as(header: &str, lines: &[String], legacy: bool) -> Result<Vec<u8>> {
    let names: Vec<&str> = header.split_ascii_whitespace().collect();
    // Names the table does not know are STRING columns (for tests of
    // `compare`'s error on them).
    let kinds: Vec<Kind> = names.iter().map(|n| Field::from_name(n).map_or(Kind::String, Field::kind)).collect();
    let fields = names
        .iter()
        .zip(&kinds)
        .map(|(n, kind)| {
            let c = if legacy { n.to_string() } else { column_name(n) };
            let b = match kind {
                Kind::Int32 => Type::primitive_type_builder(&c, Physical::INT32),
                Kind::Int64 => Type::primitive_type_builder(&c, Physical::INT64),
                Kind::String => Type::primitive_type_builder(&c, Physical::BYTE_ARRAY).with_logical_type(Some(LogicalType::String)),
            };
            b.with_repetition(Repetition::OPTIONAL).build().map(Arc::new)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let schema = Arc::new(Type::group_type_builder("schema").with_fields(fields).build()?);
    let mut w = SerializedFileWriter::new(Vec::new(), schema, Arc::new(WriterProperties::builder().build()))?;
    let mut rg = w.next_row_group()?;
    let rows: Vec<Vec<&str>> = lines.iter().map(|l| l.split_ascii_whitespace().collect()).collect();
    if let Some((i, r)) = rows.iter().enumerate().find(|(_, r)| r.len() != names.len()) {
        bail!("line {}: {} values for {} fields", i + 1, r.len(), names.len());
    }
    let mut i = 0;
    while let Some(mut col) = rg.next_column()? {
        let null = |v: &str| v == "-" && (legacy || kinds[i] != Kind::String);
        let vals: Vec<&str> = rows.iter().map(|r| r[i]).filter(|v| !null(v)).collect();
        let defs: Vec<i16> = rows.iter().map(|r| i16::from(!null(r[i]))).collect();
        let num = |v: &&str| v.parse::<i64>().map_err(|_| anyhow!("field {}: {v:?} is not a number", names[i]));
        match kinds[i] {
            Kind::Int32 => {
                let v = vals.iter().map(|v| num(v).map(|n| n as i32)).collect::<Result<Vec<_>>>()?;
                col.typed::<Int32Type>().write_batch(&v, Some(&defs), None)?
            }
            Kind::Int64 => {
                let v = vals.iter().map(num).collect::<Result<Vec<_>>>()?;
                col.typed::<Int64Type>().write_batch(&v, Some(&defs), None)?
            }
            Kind::String => col.typed::<ByteArrayType>().write_batch(&vals.iter().map(|v| ByteArray::from(*v)).collect::<Vec<_>>(), Some(&defs), None)?,
        };
        col.close()?;
        i += 1;
    }
    rg.close()?;
    Ok(w.into_inner()?)
}
