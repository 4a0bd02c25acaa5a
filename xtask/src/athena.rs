//! `cargo xtask athena`: writes the Athena DDLs of deploy/athena/ from the
//! field table of flowlog-records (column names, types and order) and the
//! agent's S3 layouts: text or Parquet, plain or Hive-compatible keys, daily
//! or per-hour partitions (eight files). A test fails when the committed
//! files differ from what this writes; flowlog-agent/tests/lake.rs reads
//! the agent's output through them with DuckDB.

use std::fs;

use anyhow::{bail, Context, Result};
use flowlog_records::format::{ALL_FIELDS, DEFAULT_FIELDS};

use crate::{root_dir, step};

const DIR: &str = "deploy/athena";
/// The columns of AWS's documented DDL: the fields of versions 2 to 5.
const MAX_VERSION: u8 = 5;
/// Column names AWS's DDL quotes (reserved words).
const QUOTED: &[&str] = &["end"];

/// One S3 layout of the agent's `s3://` output.
#[derive(Clone, Copy, Debug)]
struct Layout {
    parquet: bool,
    hive: bool,
    hourly: bool,
}

impl Layout {
    fn all() -> Vec<Layout> {
        let mut v = Vec::new();
        for parquet in [false, true] {
            for hive in [false, true] {
                for hourly in [false, true] {
                    v.push(Layout { parquet, hive, hourly });
                }
            }
        }
        v
    }

    fn table(self) -> String {
        let format = if self.parquet { "parquet" } else { "text" };
        let keys = if self.hive { "hive" } else { "plain" };
        let period = if self.hourly { "hourly" } else { "daily" };
        format!("vpc_flow_logs_{format}_{keys}_{period}")
    }

    /// The partition keys, in key order: the Hive layout's `name=value`
    /// parts or the plain layout's `yyyy/MM/dd[/HH]`.
    fn keys(self) -> Vec<Key> {
        let mut k = if self.hive { vec![ACCOUNT, SERVICE, REGION, YEAR, MONTH, DAY] } else { vec![DATE] };
        if self.hourly {
            k.push(HOUR);
        }
        k
    }

    /// Where the partitions start.
    fn root(self) -> &'static str {
        if self.hive {
            "s3://BUCKET/PREFIX/AWSLogs/"
        } else {
            "s3://BUCKET/PREFIX/AWSLogs/ACCOUNT_ID/vpcflowlogs/REGION/"
        }
    }

    /// The statement, comments first.
    fn sql(self) -> String {
        let options: Vec<&str> = [(self.parquet, "format=parquet"), (self.hive, "hive"), (self.hourly, "per-hour")].iter().filter(|o| o.0).map(|o| o.1).collect();
        let output = if options.is_empty() { String::new() } else { format!("?{}", options.join("&")) };
        let mut l = vec![
            format!("-- Athena table over flowlog-agent's (or AWS's) flow logs in S3: output s3://BUCKET/PREFIX{output}"),
            format!("-- ({},", if self.parquet { "Parquet, columns read by name" } else { "gzip text with a header line, columns read by position" }),
            format!(
                "-- {} key layout, {} partitions, partition projection: no MSCK REPAIR / ADD PARTITION).",
                if self.hive { "Hive-compatible" } else { "plain" },
                if self.hourly { "per-hour" } else { "daily" }
            ),
            format!("-- Columns as in AWS's documented DDL (docs.aws.amazon.com/athena/latest/ug/vpc-flow-logs*.html), version 2 to {MAX_VERSION} fields."),
            "-- Replace BUCKET, PREFIX (drop \"PREFIX/\" when the output has no prefix), ACCOUNT_ID, REGION.".into(),
        ];
        if !self.parquet {
            l.push("-- Text columns are positional: the log format must be these fields in this order".into());
            l.push(format!("-- (the default format is the first {}; a shorter format leaves the rest NULL).", DEFAULT_FIELDS.len()));
        }
        l.push(format!("CREATE EXTERNAL TABLE IF NOT EXISTS `{}` (\n{}\n)", self.table(), columns().join(",\n")));
        let keys = self.keys();
        let parts: Vec<String> = keys.iter().map(|(k, _)| format!("`{k}` {}", if *k == "date" { "date" } else { "string" })).collect();
        l.push(format!("PARTITIONED BY ({})", parts.join(", ")));
        if self.parquet {
            l.push("ROW FORMAT SERDE 'org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe'".into());
            l.push("STORED AS INPUTFORMAT 'org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat'".into());
            l.push("OUTPUTFORMAT 'org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat'".into());
        } else {
            l.push("ROW FORMAT DELIMITED FIELDS TERMINATED BY ' '".into());
        }
        l.push(format!("LOCATION '{}'", self.root()));
        let mut props = vec![if self.parquet { ("EXTERNAL".to_string(), "true") } else { ("skip.header.line.count".to_string(), "1") }];
        props.push(("projection.enabled".into(), "true"));
        for (k, projection) in &keys {
            props.extend(projection.iter().map(|(p, v)| (format!("projection.{k}.{p}"), *v)));
        }
        let parts: Vec<String> = keys.iter().map(|(k, _)| if self.hive { format!("{k}=${{{k}}}") } else { format!("${{{k}}}") }).collect();
        let template = format!("{}{}", self.root(), parts.join("/"));
        props.push(("storage.location.template".into(), &template));
        let props: Vec<String> = props.iter().map(|(k, v)| format!("  \"{k}\"=\"{v}\"")).collect();
        l.push(format!("TBLPROPERTIES (\n{}\n);", props.join(",\n")));
        l.join("\n") + "\n"
    }
}

/// A partition key and its projection: the values it takes, as
/// `projection.<key>.<property>` table properties.
type Key = (&'static str, &'static [(&'static str, &'static str)]);
const ACCOUNT: Key = ("aws-account-id", &[("type", "enum"), ("values", "ACCOUNT_ID")]);
const SERVICE: Key = ("aws-service", &[("type", "enum"), ("values", "vpcflowlogs")]);
const REGION: Key = ("aws-region", &[("type", "enum"), ("values", "REGION")]);
const YEAR: Key = ("year", &[("type", "integer"), ("range", "2020,2100")]);
const MONTH: Key = ("month", &[("type", "integer"), ("range", "1,12"), ("digits", "2")]);
const DAY: Key = ("day", &[("type", "integer"), ("range", "1,31"), ("digits", "2")]);
const HOUR: Key = ("hour", &[("type", "integer"), ("range", "0,23"), ("digits", "2")]);
const DATE: Key = ("date", &[("type", "date"), ("format", "yyyy/MM/dd"), ("range", "2020/01/01,NOW"), ("interval", "1"), ("interval.unit", "DAYS")]);

/// The column list: name and Athena type of each field, in table order.
fn columns() -> Vec<String> {
    ALL_FIELDS
        .iter()
        .filter(|f| !f.is_extension() && f.version() <= MAX_VERSION)
        .map(|f| {
            let c = f.column();
            let c = if QUOTED.contains(&c.as_str()) { format!("`{c}`") } else { c };
            format!("  {c} {}", f.athena())
        })
        .collect()
}

/// Every DDL: file name under deploy/athena/ and contents.
fn ddls() -> Vec<(String, String)> {
    Layout::all().into_iter().map(|l| (format!("{}.sql", l.table()), l.sql())).collect()
}

/// `cargo xtask athena`.
pub fn athena(args: &[String]) -> Result<()> {
    if !args.is_empty() {
        bail!("athena takes no arguments (got {args:?})");
    }
    let dir = root_dir().join(DIR);
    for (name, sql) in ddls() {
        let path = dir.join(&name);
        if fs::read_to_string(&path).ok().as_deref() == Some(sql.as_str()) {
            continue;
        }
        fs::write(&path, sql).with_context(|| format!("writing {}", path.display()))?;
        step(&format!("wrote {DIR}/{name}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowlog_records::format::Field;

    /// The committed DDLs are what the field table generates, and there is
    /// no other `vpc_flow_logs_*.sql`.
    #[test]
    fn committed_ddls_are_generated_from_the_field_table() {
        let dir = root_dir().join(DIR);
        let want = ddls();
        assert_eq!(want.len(), 8);
        for (name, sql) in &want {
            let got = fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{DIR}/{name}: {e}"));
            assert!(got == *sql, "{DIR}/{name} differs from what the field table gives: run `cargo xtask athena`\n--- generated:\n{sql}");
        }
        let mut names: Vec<String> = want.into_iter().map(|(n, _)| n).collect();
        names.sort();
        let mut committed: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("vpc_flow_logs_") && n.ends_with(".sql"))
            .collect();
        committed.sort();
        assert_eq!(committed, names);
    }

    /// Text tables read by position: the default format must be the first
    /// columns, as their comment says.
    #[test]
    fn the_default_format_is_the_first_columns() {
        let first: Vec<Field> = ALL_FIELDS.iter().copied().filter(|f| !f.is_extension() && f.version() <= MAX_VERSION).take(DEFAULT_FIELDS.len()).collect();
        assert_eq!(first, DEFAULT_FIELDS);
    }
}
