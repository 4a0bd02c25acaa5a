//! The `compare` subcommand: arguments, sources, output, exit status.

use std::{collections::HashMap, io::IsTerminal, process::ExitCode, time::Instant};

use anyhow::{anyhow, Result};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{
    aws::{Aws, AwsOptions, CloudWatchSource},
    compare, report,
    source::{self, local_in, Location, RecordSource},
    Limits, MatchOptions, Report,
};
use flowlog_records::format::Format;

/// Exit status when a `--max-*` limit is exceeded.
pub const EXIT_EXCEEDED: u8 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
    Csv,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SqlDialect {
    Athena,
}

/// Compare the agent's flow logs with AWS's native VPC flow logs.
///
/// A source is a file or directory (text, gzip text or Parquet; every file
/// below a directory), `s3://bucket/prefix` (native key layout) or
/// `cloudwatch://log-group[?stream=log-stream]`.
///
/// Exit status: 0, 3 when a --max-* limit is exceeded, 1 when a source
/// cannot be read, 2 for invalid arguments.
#[derive(Args, Debug, Clone)]
pub struct CompareArgs {
    /// The native (AWS) flow logs.
    #[arg(long, value_name = "SOURCE", required_unless_present = "emit_sql")]
    pub native: Option<Location>,
    /// The agent's flow logs.
    #[arg(long, value_name = "SOURCE", required_unless_present = "emit_sql")]
    pub agent: Option<Location>,
    /// Print the comparison as SQL over two tables (deploy/athena/) instead
    /// of reading sources: for Athena (the query also runs in DuckDB).
    /// Uses --tolerance, --interface-map, --match-direction, --since, --until.
    #[arg(long, value_enum, value_name = "DIALECT", conflicts_with_all = ["native", "agent"])]
    pub emit_sql: Option<SqlDialect>,
    /// With --emit-sql: the table of the native flow logs.
    #[arg(long, default_value = "native_flow_logs", value_name = "TABLE")]
    pub native_table: String,
    /// With --emit-sql: the table of the agent's flow logs.
    #[arg(long, default_value = "agent_flow_logs", value_name = "TABLE")]
    pub agent_table: String,
    /// Format of native text without a header line (CloudWatch events, or
    /// files without one), as `--log-format` takes it. Default: version 2.
    #[arg(long, value_name = "FORMAT")]
    pub native_format: Option<String>,
    /// Format of the agent's text without a header line (its `--log-format`).
    #[arg(long, value_name = "FORMAT")]
    pub agent_format: Option<String>,
    /// `agent-id=native-id`: the agent's interface id that native logs name
    /// otherwise; repeatable or comma-separated.
    #[arg(long = "interface-map", value_name = "AGENT=NATIVE", value_delimiter = ',')]
    pub interface_map: Vec<String>,
    /// Seconds by which the [start, end] of two records may be apart and
    /// still belong to one flow.
    #[arg(long, default_value_t = 5, value_name = "SECS")]
    pub tolerance: u64,
    /// Seconds by which a source may be out of time order (memory grows
    /// with the flows active within it).
    #[arg(long, default_value_t = 900, value_name = "SECS")]
    pub reorder_window: u64,
    /// Make flow-direction part of the flow key (both sides must log it).
    #[arg(long)]
    pub match_direction: bool,
    /// List the N earliest flows only native logs have, only the agent
    /// logged, and with other counts.
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub examples: usize,
    /// Only records with start >= this (Unix seconds or RFC 3339:
    /// 2018-06-20T16:20:00Z, 2018-06-20T18:20:00+02:00, fractions rounded up);
    /// also the start of the CloudWatch query.
    #[arg(long, value_parser = source::parse_time, value_name = "TIME")]
    pub since: Option<u64>,
    /// Only records with start < this; also the end of the CloudWatch query.
    #[arg(long, value_parser = source::parse_time, value_name = "TIME")]
    pub until: Option<u64>,
    /// CloudWatch events are fetched and ordered in slices of this many seconds.
    #[arg(long, default_value_t = 3600, value_name = "SECS")]
    pub cloudwatch_slice: u64,
    /// AWS region of S3/CloudWatch sources (default: the SDK's chain).
    #[arg(long, env = "AWS_REGION")]
    pub region: Option<String>,
    /// Endpoint of S3/CloudWatch Logs (a local test server).
    #[arg(long, value_name = "URL")]
    pub aws_endpoint_url: Option<String>,
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub output_format: OutputFormat,
    /// No progress bar on stderr (there is none when stderr is not a terminal).
    #[arg(long)]
    pub no_progress: bool,
    #[command(flatten)]
    pub limits: Limits,
}

fn open(loc: &Location, format: Format, a: &CompareArgs, aws: &mut Option<Aws>) -> Result<Box<dyn RecordSource>> {
    let mut get_aws = || -> Result<Aws> {
        if aws.is_none() {
            *aws = Some(Aws::new(&AwsOptions { region: a.region.clone(), endpoint_url: a.aws_endpoint_url.clone() })?);
        }
        Ok(aws.clone().expect("set"))
    };
    let (since, until) = (a.since.unwrap_or(0), a.until.unwrap_or(u64::MAX));
    let src: Box<dyn RecordSource> = match loc {
        Location::Local(p) => local_in(p, format, since, until)?,
        Location::S3 { bucket, prefix } => super::aws::s3(&get_aws()?, bucket, prefix, format, since, until)?,
        Location::CloudWatch { group, stream } => {
            Box::new(CloudWatchSource::new(&get_aws()?, group, stream.as_deref(), a.since, a.until, a.cloudwatch_slice, format)?)
        }
    };
    Ok(src)
}

fn interface_map(a: &CompareArgs) -> Result<std::collections::BTreeMap<String, String>> {
    let mut map = std::collections::BTreeMap::new();
    for m in &a.interface_map {
        let (ag, na) = m.split_once('=').filter(|(x, y)| !x.is_empty() && !y.is_empty()).ok_or_else(|| {
            anyhow!("invalid --interface-map {m:?}: expected agent-interface-id=native-interface-id, e.g. eni-0a1=eni-0b2")
        })?;
        map.insert(ag.to_string(), na.to_string());
    }
    Ok(map)
}

fn table_name(t: &str, what: &str) -> Result<()> {
    // Interpolated into the SQL: a (database-qualified) identifier only.
    if t.is_empty() || !t.split('.').all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')) {
        return Err(anyhow!("invalid --{what} {t:?}: expected a table name such as flow_logs or db.flow_logs (letters, digits, _)"));
    }
    Ok(())
}

/// `--emit-sql`: the query.
pub fn sql(a: &CompareArgs) -> Result<String> {
    table_name(&a.native_table, "native-table")?;
    table_name(&a.agent_table, "agent-table")?;
    let map = interface_map(a)?;
    Ok(super::sql::emit(&super::sql::SqlOptions {
        native_table: &a.native_table,
        agent_table: &a.agent_table,
        tolerance: a.tolerance,
        interface_map: &map,
        match_direction: a.match_direction,
        since: a.since,
        until: a.until,
    }))
}

/// Runs a comparison; the report and the limits it exceeds.
pub fn run(a: &CompareArgs, progress: bool) -> Result<(Report, Vec<String>)> {
    let fmt = |s: &Option<String>, what: &str| -> Result<Format> {
        match s {
            None => Ok(Format::default()),
            Some(s) => Format::parse(s).map_err(|e| anyhow!("--{what}: {e}")),
        }
    };
    let map: HashMap<String, String> = interface_map(a)?.into_iter().collect();
    let (Some(native), Some(agent)) = (&a.native, &a.agent) else { return Err(anyhow!("--native and --agent are both needed")) };
    let mut aws = None;
    let mut native = open(native, fmt(&a.native_format, "native-format")?, a, &mut aws).map_err(|e| anyhow!("native: {e:#}"))?;
    let mut agent = open(agent, fmt(&a.agent_format, "agent-format")?, a, &mut aws).map_err(|e| anyhow!("agent: {e:#}"))?;
    let opts = MatchOptions {
        tolerance: a.tolerance,
        reorder_window: a.reorder_window,
        interface_map: map,
        match_direction: a.match_direction,
        since: a.since.unwrap_or(0),
        until: a.until.unwrap_or(u64::MAX),
        examples: a.examples,
    };
    let bar = if progress && std::io::stderr().is_terminal() {
        let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        b.set_style(ProgressStyle::with_template("{spinner} {elapsed} {msg}").expect("valid template"));
        b.set_message("reading");
        b.enable_steady_tick(std::time::Duration::from_millis(200));
        b
    } else {
        ProgressBar::hidden()
    };
    let t0 = Instant::now();
    let mut cb = |m: &super::Matcher, n: [u64; 2], pos: [String; 2]| {
        let rate = (n[0] + n[1]) as f64 / t0.elapsed().as_secs_f64().max(1e-3);
        bar.set_message(format!(
            "native {} records ({}), agent {} records ({}), {} open flows, {:.0} records/s",
            n[0],
            pos[0],
            n[1],
            pos[1],
            m.open_flows(),
            rate
        ));
        bar.tick();
    };
    let r = compare(native.as_mut(), agent.as_mut(), opts, &mut cb);
    bar.finish_and_clear();
    let r = r?;
    let exceeded = a.limits.check(&r);
    Ok((r, exceeded))
}

/// `flowlog-agent compare`.
pub fn main(a: CompareArgs) -> ExitCode {
    if a.emit_sql.is_some() {
        return match sql(&a) {
            Ok(q) => {
                print!("{q}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    let (r, exceeded) = match run(&a, !a.no_progress) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let out = match a.output_format {
        OutputFormat::Table => report::table(&r, &exceeded),
        OutputFormat::Json => report::json(&r, &exceeded),
        OutputFormat::Csv => report::csv(&r),
    };
    print!("{out}");
    if exceeded.is_empty() {
        ExitCode::SUCCESS
    } else {
        if a.output_format == OutputFormat::Csv {
            for e in &exceeded {
                eprintln!("exceeded: {e}");
            }
        }
        ExitCode::from(EXIT_EXCEEDED)
    }
}
