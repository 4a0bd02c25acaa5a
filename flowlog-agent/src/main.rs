use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use std::io::IsTerminal;

use flowlog_agent::{
    agent,
    format::Format,
    ship::{aws::AwsSettings, s3::ObjectOptions, Output, ShipConfig},
};

/// eBPF flow logs in the AWS VPC Flow Logs format.
#[derive(Parser, Debug)]
#[command(name = "flowlog-agent", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Capture and write flow logs (the default).
    Run(RunArgs),
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Interface name or glob (`veth*`) to capture on; repeatable.
    /// Default: every interface that is up, except loopback.
    #[arg(long = "iface", short = 'i', env = "FLOWLOG_IFACES", value_delimiter = ',')]
    ifaces: Vec<String>,
    /// Aggregation interval in seconds (AWS: 60 or 600). Any value ≥ 1.
    #[arg(long, default_value_t = 60, env = "FLOWLOG_INTERVAL", value_parser = clap::value_parser!(u64).range(1..=3600))]
    interval: u64,
    /// Where records go; repeatable (fan-out): `stdout`, `file:<path>` (one
    /// record per line), `dir:<path>` (the S3 layout on a local directory),
    /// `s3://<bucket>[/<prefix>]`, `cloudwatch:<log-group>[?retention=<days>]`,
    /// `firehose:<delivery-stream>`. `dir:` and `s3:` take
    /// `?format=parquet&hive&per-hour`. All but stdout/file go through the spool.
    #[arg(long = "output", short = 'o', default_value = "stdout", env = "FLOWLOG_OUTPUTS", value_delimiter = ',')]
    outputs: Vec<Output>,
    /// Record format, as `CreateFlowLogs --log-format` takes it, e.g.
    /// "${srcaddr} ${dstaddr} ${packets}". Default: the version 2 format.
    #[arg(long, env = "FLOWLOG_LOG_FORMAT")]
    log_format: Option<String>,
    /// The `account-id` field.
    #[arg(long, default_value = "unknown", env = "FLOWLOG_ACCOUNT_ID")]
    account_id: String,
    /// Flows per aggregation window the kernel table holds; beyond it,
    /// packets of new flows are not counted and SKIPDATA is written.
    #[arg(long, default_value_t = 65_536, env = "FLOWLOG_MAX_FLOWS", value_parser = clap::value_parser!(u32).range(1..=16_777_216))]
    max_flows: u32,
    /// AWS region of the AWS outputs (default: the SDK's chain, AWS_REGION...).
    #[arg(long, env = "FLOWLOG_REGION")]
    region: Option<String>,
    /// Endpoint override for the AWS services (e.g. a local test server).
    #[arg(long, env = "FLOWLOG_AWS_ENDPOINT_URL")]
    aws_endpoint_url: Option<String>,
    /// The flow log id in S3 object names.
    #[arg(long, default_value = "fl-00000000000000000", env = "FLOWLOG_FLOW_LOG_ID")]
    flow_log_id: String,
    /// Spool directory: records wait here until every spooled output has them.
    #[arg(long, default_value = "/var/lib/flowlog-agent/spool", env = "FLOWLOG_SPOOL_DIR")]
    spool_dir: std::path::PathBuf,
    /// Bound of the spool; past it the oldest records are dropped (and counted).
    #[arg(long, default_value_t = 1 << 30, env = "FLOWLOG_SPOOL_MAX_BYTES")]
    spool_max_bytes: u64,
    /// Seconds S3 and dir outputs gather records into files (AWS: 300).
    #[arg(long, default_value_t = 300, env = "FLOWLOG_FILE_INTERVAL", value_parser = clap::value_parser!(u64).range(1..=3600))]
    file_interval: u64,
    /// Size at which S3/dir files are rotated, in bytes (AWS: 75 MB).
    #[arg(long, default_value_t = 75_000_000, env = "FLOWLOG_FILE_MAX_BYTES")]
    file_max_bytes: usize,
    /// Seconds a graceful shutdown may take to flush the outputs.
    #[arg(long, default_value_t = 10, env = "FLOWLOG_SHUTDOWN_TIMEOUT")]
    shutdown_timeout: u64,
    /// Log filter (tracing syntax), e.g. `info` or `flowlog_agent=debug`.
    #[arg(long, default_value = "info", env = "FLOWLOG_LOG")]
    log: String,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let args = match cli.cmd {
        Some(Cmd::Run(a)) => a,
        None => cli.run,
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log).unwrap_or_else(|e| {
        eprintln!("invalid --log {:?}: {e}; using info", args.log);
        tracing_subscriber::EnvFilter::new("info")
    });
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal()).init();

    if args.account_id.is_empty() || args.account_id.contains(char::is_whitespace) {
        eprintln!("error: --account-id {:?} must be non-empty and without spaces", args.account_id);
        return std::process::ExitCode::from(2);
    }
    let format = match args.log_format.as_deref().map(Format::parse).transpose() {
        Ok(f) => f.unwrap_or_default(),
        Err(e) => {
            eprintln!("error: --log-format: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let cfg = agent::Config {
        format,
        ifaces: args.ifaces,
        interval: Duration::from_secs(args.interval),
        ship: ShipConfig {
            outputs: args.outputs,
            account_id: args.account_id.clone(),
            aws: AwsSettings { region: args.region, endpoint_url: args.aws_endpoint_url },
            flow_log_id: args.flow_log_id,
            spool_dir: args.spool_dir,
            spool_max_bytes: args.spool_max_bytes,
            flush_interval: Duration::from_secs(args.file_interval),
            objects: ObjectOptions { rotate_bytes: args.file_max_bytes.max(1), ..ObjectOptions::default() },
            shutdown_timeout: Duration::from_secs(args.shutdown_timeout),
            ..ShipConfig::default()
        },
        account_id: args.account_id,
        max_flows: args.max_flows,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(agent::run(cfg)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
