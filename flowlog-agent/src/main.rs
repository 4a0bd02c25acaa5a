use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};
use std::io::IsTerminal;

use flowlog_agent::{agent, format::Format, ship::Output};

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
    /// Glob of interfaces never to capture on (wins over --iface); repeatable.
    #[arg(long = "exclude-iface", env = "FLOWLOG_EXCLUDE_IFACES", value_delimiter = ',')]
    exclude_ifaces: Vec<String>,
    /// Aggregation interval in seconds (AWS: 60 or 600). Any value ≥ 1.
    #[arg(long, default_value_t = 60, env = "FLOWLOG_INTERVAL", value_parser = clap::value_parser!(u64).range(1..=3600))]
    interval: u64,
    /// Where records go: `stdout` or `file:<path>`; repeatable.
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
    /// Pin maps and attachments under this directory (on a BPF filesystem)
    /// so that a restarted agent reports what was counted in between.
    #[arg(long, default_value = "/sys/fs/bpf/flowlog", env = "FLOWLOG_PIN_DIR")]
    pin_dir: PathBuf,
    /// Do not pin: every start begins with empty tables.
    #[arg(long, env = "FLOWLOG_NO_PIN")]
    no_pin: bool,
    /// On SIGINT/SIGTERM: `detach` (final drain, detach, remove pins) or
    /// `keep` (programs stay attached and counting for the next agent).
    #[arg(long, value_enum, default_value = "detach", env = "FLOWLOG_ON_EXIT")]
    on_exit: agent::OnExit,
    /// Address of the Prometheus metrics and /healthz, /readyz endpoint, or `off`.
    #[arg(long, default_value = "127.0.0.1:9750", env = "FLOWLOG_METRICS_LISTEN", value_parser = parse_listen)]
    metrics_listen: Listen,
    /// Which records to write, like a flow log's traffic type: `ACCEPT`,
    /// `REJECT` or `ALL`.
    #[arg(long, default_value = "ALL", env = "FLOWLOG_TRAFFIC_TYPE")]
    traffic_type: flowlog_agent::filter::TrafficType,
    /// Kernel drop reasons (`enum skb_drop_reason` names without the
    /// `SKB_DROP_REASON_` prefix) whose packets are REJECT, e.g.
    /// `NETFILTER_DROP,NO_SOCKET`; `none`: no REJECT records, no drop hook.
    #[arg(long, value_delimiter = ',', env = "FLOWLOG_REJECT_REASONS", default_value = "NETFILTER_DROP")]
    reject_reasons: Vec<String>,
    /// `DROP_REASON=TEXT`: the `reject-reason` field of REJECT records of that
    /// drop reason (default `-`, as AWS writes for reasons other than its
    /// own); repeatable.
    #[arg(long, value_delimiter = ',', env = "FLOWLOG_REJECT_REASON_MAP")]
    reject_reason_map: Vec<String>,
    /// Log filter (tracing syntax), e.g. `info` or `flowlog_agent=debug`.
    #[arg(long, default_value = "info", env = "FLOWLOG_LOG")]
    log: String,
}

#[derive(Clone, Debug)]
struct Listen(Option<std::net::SocketAddr>);

fn parse_listen(s: &str) -> Result<Listen, String> {
    if s == "off" {
        return Ok(Listen(None));
    }
    s.parse().map(|a| Listen(Some(a))).map_err(|_| format!("{s:?} is not `off` or an address like 127.0.0.1:9750 or [::1]:9750"))
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
    let reject = match flowlog_agent::reject::RejectConfig::from_args(&args.reject_reasons, &args.reject_reason_map) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let cfg = agent::Config {
        format,
        ifaces: args.ifaces,
        exclude_ifaces: args.exclude_ifaces,
        interval: Duration::from_secs(args.interval),
        outputs: args.outputs,
        account_id: args.account_id,
        max_flows: args.max_flows,
        pin_root: (!args.no_pin).then_some(args.pin_dir),
        on_exit: args.on_exit,
        metrics_listen: args.metrics_listen.0,
        traffic_type: args.traffic_type,
        reject,
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
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
