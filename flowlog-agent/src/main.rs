use std::{io::IsTerminal, path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};
use flowlog_agent::{
    agent, compare,
    config::{FileConfig, Overrides, Settings},
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
    /// Validate the configuration and print the effective values.
    CheckConfig(RunArgs),
    /// Compare flow logs with AWS's native VPC flow logs.
    Compare(compare::cli::CompareArgs),
}

/// Flags win over environment variables, which win over the config file.
/// Defaults are those of the config file (see `flowlog.example.toml`).
#[derive(Args, Debug)]
struct RunArgs {
    /// Config file (TOML).
    #[arg(long, short = 'c', env = "FLOWLOG_CONFIG")]
    config: Option<PathBuf>,
    /// Interface name or glob (`veth*`) to capture on; repeatable.
    /// Default: every interface that is up, except loopback.
    #[arg(long = "iface", short = 'i', env = "FLOWLOG_IFACES", value_delimiter = ',')]
    ifaces: Vec<String>,
    /// Glob of interfaces never to capture on (wins over --iface); repeatable.
    #[arg(long = "exclude-iface", env = "FLOWLOG_EXCLUDE_IFACES", value_delimiter = ',')]
    exclude_ifaces: Vec<String>,
    /// Aggregation interval in seconds, 1..3600 (AWS: 60 or 600). Default 60.
    #[arg(long, env = "FLOWLOG_INTERVAL")]
    interval: Option<u64>,
    /// Where records go: `stdout` or `file:<path>`; repeatable. Default stdout.
    #[arg(long = "output", short = 'o', env = "FLOWLOG_OUTPUTS", value_delimiter = ',')]
    outputs: Vec<String>,
    /// Record format, as `CreateFlowLogs --log-format` takes it, e.g.
    /// "${srcaddr} ${dstaddr} ${packets}". Default: the version 2 format.
    #[arg(long, env = "FLOWLOG_LOG_FORMAT")]
    log_format: Option<String>,
    /// The `account-id` field; overrides what the metadata provider says.
    #[arg(long, env = "FLOWLOG_ACCOUNT_ID")]
    account_id: Option<String>,
    /// Flows per aggregation window the kernel table holds; beyond it,
    /// packets of new flows are not counted and SKIPDATA is written. Default 65536.
    #[arg(long, env = "FLOWLOG_MAX_FLOWS")]
    max_flows: Option<u32>,
    /// Pin maps and attachments under this directory (on a BPF filesystem)
    /// so that a restarted agent reports what was counted in between.
    /// Default /sys/fs/bpf/flowlog.
    #[arg(long, env = "FLOWLOG_PIN_DIR")]
    pin_dir: Option<PathBuf>,
    /// Do not pin: every start begins with empty tables.
    #[arg(long, env = "FLOWLOG_NO_PIN")]
    no_pin: bool,
    /// On SIGINT/SIGTERM: `detach` (final drain, detach, remove pins; the
    /// default) or `keep` (programs stay attached and counting for the next agent).
    #[arg(long, env = "FLOWLOG_ON_EXIT")]
    on_exit: Option<String>,
    /// Address of the Prometheus metrics and /healthz, /readyz endpoint, or
    /// `off`. Default 127.0.0.1:9750.
    #[arg(long, env = "FLOWLOG_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// Log filter (tracing syntax), e.g. `info` or `flowlog_agent=debug`.
    #[arg(long, env = "FLOWLOG_LOG")]
    log: Option<String>,
    /// The agent's own logs as JSON lines (for log collectors) instead of text.
    #[arg(long, env = "FLOWLOG_LOG_JSON")]
    log_json: bool,
    /// Count 1 packet in N, chosen at random in the kernel; records then
    /// show counts multiplied by N. Default 1 (every packet).
    #[arg(long, env = "FLOWLOG_SAMPLE_RATE")]
    sample_rate: Option<u32>,
    /// Count only packets with an address (either end) in this CIDR; repeatable.
    #[arg(long = "include-cidr", env = "FLOWLOG_INCLUDE_CIDRS", value_delimiter = ',')]
    include_cidrs: Vec<ipnet::IpNet>,
    /// Never count packets with an address (either end) in this CIDR; repeatable.
    #[arg(long = "exclude-cidr", env = "FLOWLOG_EXCLUDE_CIDRS", value_delimiter = ',')]
    exclude_cidrs: Vec<ipnet::IpNet>,
    /// Count only packets with this port (either end); repeatable.
    #[arg(long = "include-port", env = "FLOWLOG_INCLUDE_PORTS", value_delimiter = ',')]
    include_ports: Vec<u16>,
    /// Never count packets with this port (either end); repeatable.
    #[arg(long = "exclude-port", env = "FLOWLOG_EXCLUDE_PORTS", value_delimiter = ',')]
    exclude_ports: Vec<u16>,
    /// Count only this IP protocol number (6 TCP, 17 UDP, 1 ICMP); repeatable.
    #[arg(long = "protocol", env = "FLOWLOG_PROTOCOLS", value_delimiter = ',')]
    protocols: Vec<u8>,
}

impl RunArgs {
    fn settings(self) -> Result<Settings, String> {
        let file = match &self.config {
            Some(p) => FileConfig::load(p).map_err(|e| e.to_string())?,
            None => FileConfig::default(),
        };
        let o = Overrides {
            interfaces: self.ifaces,
            exclude_interfaces: self.exclude_ifaces,
            interval: self.interval,
            outputs: self.outputs,
            log_format: self.log_format,
            account_id: self.account_id,
            max_flows: self.max_flows,
            pin_dir: self.pin_dir,
            no_pin: self.no_pin,
            on_exit: self.on_exit,
            metrics_listen: self.metrics_listen,
            log: self.log,
            log_json: self.log_json,
            sample_rate: self.sample_rate,
            include_cidrs: self.include_cidrs,
            exclude_cidrs: self.exclude_cidrs,
            include_ports: self.include_ports,
            exclude_ports: self.exclude_ports,
            protocols: self.protocols,
        };
        Settings::resolve(file, o).map_err(|e| e.to_string())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (args, check) = match cli.cmd {
        Some(Cmd::Run(a)) => (a, false),
        Some(Cmd::CheckConfig(a)) => (a, true),
        Some(Cmd::Compare(a)) => return compare::cli::main(a),
        None => (cli.run, false),
    };
    let settings = match args.settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if check {
        if let Err(e) = settings.enrich.build(&[], false) {
            eprintln!("error: enrich: {e}");
            return ExitCode::from(2);
        }
        print!("{}", settings.render());
        return ExitCode::SUCCESS;
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&settings.log).unwrap_or_else(|e| {
        eprintln!("invalid log filter {:?}: {e}; using info", settings.log);
        tracing_subscriber::EnvFilter::new("info")
    });
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if settings.log_json {
        logs.json().init();
    } else {
        logs.with_ansi(std::io::stderr().is_terminal()).init();
    }

    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(agent::run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
