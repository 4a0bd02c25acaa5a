use std::{io::IsTerminal, path::PathBuf, process::ExitCode};

use clap::{builder::BoolishValueParser, Args, CommandFactory, Parser, Subcommand};
use flowlog_agent::{
    agent,
    compare,
    config::{FileConfig, Overrides, Settings},
};

const EXAMPLES: &str = "\
Examples:
  # Every interface that is up, records to stdout in the default (version 2) format:
  flowlog-agent

  # Two interfaces, 10-second windows, a custom format, to a local file:
  flowlog-agent -i eth0 -i 'ens*' --interval 10 \\
      --log-format '${srcaddr} ${dstaddr} ${packets} ${bytes} ${tcp-flags}' \\
      -o file:/var/log/flowlog/records.log

  # To S3 as AWS lays it out (Parquet, hourly Hive partitions) and to CloudWatch Logs:
  flowlog-agent -o 's3://my-bucket/flows?format=parquet&hive&per-hour' -o cloudwatch:/flowlog/vpc

  # A config file; check it first (prints the values in effect):
  flowlog-agent check-config -c /etc/flowlog/flowlog.toml
  flowlog-agent -c /etc/flowlog/flowlog.toml

Every flag also reads the environment variable shown with it; flags win over
variables, variables over the config file. Boolean variables take 1/0,
true/false, yes/no, on/off. Documentation: README.md, flowlog.example.toml, man
flowlog-agent.";

/// eBPF flow logs in the AWS VPC Flow Logs format.
///
/// Counts every packet per interface and 5-tuple in the kernel (XDP, TC) and
/// writes one record per flow and aggregation window, byte-exact in the
/// format of AWS VPC Flow Logs, to stdout, files, S3, CloudWatch Logs or
/// Kinesis Data Firehose.
#[derive(Parser, Debug)]
#[command(name = "flowlog-agent", version, args_conflicts_with_subcommands = true, after_help = EXAMPLES)]
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
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    ///
    /// bash: `flowlog-agent completions bash > /etc/bash_completion.d/flowlog-agent`
    Completions {
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `flowlog-agent man | man -l -`.
    Man {
        /// Write the pages of the command and of every subcommand
        /// (flowlog-agent.1, flowlog-agent-compare.1, ...) into this directory
        /// instead.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// Flags win over environment variables, which win over the config file.
/// Defaults are those of the config file (see `flowlog.example.toml`).
#[derive(Args, Debug)]
struct RunArgs {
    /// Config file (TOML).
    #[arg(help_heading = "Config", long, short = 'c', env = "FLOWLOG_CONFIG")]
    config: Option<PathBuf>,
    /// Interface name or glob (`veth*`) to capture on; repeatable.
    /// Default: every interface that is up, except loopback.
    #[arg(help_heading = "Capture", long = "iface", short = 'i', env = "FLOWLOG_IFACES", value_delimiter = ',')]
    ifaces: Vec<String>,
    /// Glob of interfaces never to capture on (wins over --iface); repeatable.
    #[arg(help_heading = "Capture", long = "exclude-iface", env = "FLOWLOG_EXCLUDE_IFACES", value_delimiter = ',')]
    exclude_ifaces: Vec<String>,
    /// Flows per aggregation window the kernel table holds; beyond it,
    /// packets of new flows are not counted and SKIPDATA is written. Default 65536.
    #[arg(help_heading = "Capture", long, env = "FLOWLOG_MAX_FLOWS")]
    max_flows: Option<u32>,
    /// Where ingress is counted: `auto` (XDP, or TC where XDP is refused,
    /// e.g. for a jumbo MTU), `xdp` or `tc`. Default auto.
    #[arg(help_heading = "Capture", long, env = "FLOWLOG_INGRESS_HOOK")]
    ingress_hook: Option<String>,
    /// Count 1 packet in N, chosen at random in the kernel; records then
    /// show counts multiplied by N. Default 1 (every packet).
    #[arg(help_heading = "Capture", long, env = "FLOWLOG_SAMPLE_RATE")]
    sample_rate: Option<u32>,
    /// Count only packets with an address (either end) in this CIDR; repeatable.
    #[arg(help_heading = "Kernel filters", long = "include-cidr", env = "FLOWLOG_INCLUDE_CIDRS", value_delimiter = ',')]
    include_cidrs: Vec<ipnet::IpNet>,
    /// Never count packets with an address (either end) in this CIDR; repeatable.
    #[arg(help_heading = "Kernel filters", long = "exclude-cidr", env = "FLOWLOG_EXCLUDE_CIDRS", value_delimiter = ',')]
    exclude_cidrs: Vec<ipnet::IpNet>,
    /// Count only packets with this port (either end); repeatable.
    #[arg(help_heading = "Kernel filters", long = "include-port", env = "FLOWLOG_INCLUDE_PORTS", value_delimiter = ',')]
    include_ports: Vec<u16>,
    /// Never count packets with this port (either end); repeatable.
    #[arg(help_heading = "Kernel filters", long = "exclude-port", env = "FLOWLOG_EXCLUDE_PORTS", value_delimiter = ',')]
    exclude_ports: Vec<u16>,
    /// Count only this IP protocol number (6 TCP, 17 UDP, 1 ICMP); repeatable.
    #[arg(help_heading = "Kernel filters", long = "protocol", env = "FLOWLOG_PROTOCOLS", value_delimiter = ',')]
    protocols: Vec<u8>,
    /// Aggregation interval in seconds, 1..3600 (AWS: 60 or 600). Default 60.
    #[arg(help_heading = "Records", long, env = "FLOWLOG_INTERVAL")]
    interval: Option<u64>,
    /// Record format, as `CreateFlowLogs --log-format` takes it, e.g.
    /// "${srcaddr} ${dstaddr} ${packets}". Default: the version 2 format.
    #[arg(help_heading = "Records", long, env = "FLOWLOG_LOG_FORMAT")]
    log_format: Option<String>,
    /// The `account-id` field; overrides what the metadata provider says.
    #[arg(help_heading = "Records", long, env = "FLOWLOG_ACCOUNT_ID")]
    account_id: Option<String>,
    /// Which records to write, like a flow log's traffic type: `ACCEPT`,
    /// `REJECT` or `ALL` (overrides `[enrich] traffic-type`). Default ALL.
    #[arg(help_heading = "Records", long, env = "FLOWLOG_TRAFFIC_TYPE")]
    traffic_type: Option<String>,
    /// Kernel drop reasons (`enum skb_drop_reason` names without the
    /// `SKB_DROP_REASON_` prefix) whose packets are REJECT, e.g.
    /// `NETFILTER_DROP,NO_SOCKET`; `none`: no REJECT records, no drop hook.
    /// Default NETFILTER_DROP (switched off with a warning where the kernel
    /// has no BTF).
    #[arg(help_heading = "Records", long, value_delimiter = ',', env = "FLOWLOG_REJECT_REASONS")]
    reject_reasons: Vec<String>,
    /// `DROP_REASON=TEXT`: the `reject-reason` field of REJECT records of that
    /// drop reason (default `-`, as AWS writes for reasons other than its
    /// own); repeatable.
    #[arg(help_heading = "Records", long, value_delimiter = ',', env = "FLOWLOG_REJECT_REASON_MAP")]
    reject_reason_map: Vec<String>,
    /// Where records go; repeatable (fan-out): `stdout`, `file:<path>` (one
    /// record per line), `dir:<path>` (the S3 layout on a local directory),
    /// `s3://<bucket>[/<prefix>]`, `cloudwatch:<log-group>[?retention=<days>]`,
    /// `firehose:<delivery-stream>`. `dir:` and `s3:` take
    /// `?format=parquet&hive&per-hour`. All but stdout/file go through the
    /// spool. Default stdout.
    #[arg(help_heading = "Outputs", long = "output", short = 'o', env = "FLOWLOG_OUTPUTS", value_delimiter = ',')]
    outputs: Vec<String>,
    /// The flow log id in S3 object names. Default fl-00000000000000000.
    #[arg(help_heading = "Outputs", long, env = "FLOWLOG_FLOW_LOG_ID")]
    flow_log_id: Option<String>,
    /// Spool directory: records wait here until every spooled output has
    /// them. Default $STATE_DIRECTORY/spool (systemd), else /var/lib/flowlog/spool.
    #[arg(help_heading = "Outputs", long, env = "FLOWLOG_SPOOL_DIR")]
    spool_dir: Option<PathBuf>,
    /// Bound of the spool in bytes; past it the oldest records are dropped
    /// (and counted). Default 1073741824.
    #[arg(help_heading = "Outputs", long, env = "FLOWLOG_SPOOL_MAX_BYTES")]
    spool_max_bytes: Option<u64>,
    /// Seconds S3 and dir outputs gather records into files (AWS: 300). Default 300.
    #[arg(help_heading = "Outputs", long, env = "FLOWLOG_FILE_INTERVAL")]
    file_interval: Option<u64>,
    /// Size at which S3/dir files are rotated, in bytes (AWS: 75 MB). Default 75000000.
    #[arg(help_heading = "Outputs", long, env = "FLOWLOG_FILE_MAX_BYTES")]
    file_max_bytes: Option<usize>,
    /// Seconds a graceful shutdown may take to flush the outputs. Default 10.
    #[arg(help_heading = "Outputs", long, env = "FLOWLOG_SHUTDOWN_TIMEOUT")]
    shutdown_timeout: Option<u64>,
    /// AWS region of the AWS outputs (default: the SDK's chain, AWS_REGION...).
    #[arg(help_heading = "AWS", long, env = "FLOWLOG_REGION")]
    region: Option<String>,
    /// Endpoint override for the AWS services (e.g. a local test server).
    #[arg(help_heading = "AWS", long, env = "FLOWLOG_AWS_ENDPOINT_URL")]
    aws_endpoint_url: Option<String>,
    /// Pin maps and attachments under this directory (on a BPF filesystem)
    /// so that a restarted agent reports what was counted in between.
    /// Default /sys/fs/bpf/flowlog.
    #[arg(help_heading = "Restarts", long, env = "FLOWLOG_PIN_DIR")]
    pin_dir: Option<PathBuf>,
    /// Do not pin: every start begins with empty tables (`--no-pin=false`
    /// pins even where the config file says `pin = false`).
    #[arg(help_heading = "Restarts", long, env = "FLOWLOG_NO_PIN", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    no_pin: Option<bool>,
    /// On SIGINT/SIGTERM: `detach` (final drain, detach, remove pins; the
    /// default) or `keep` (programs stay attached and counting for the next agent).
    #[arg(help_heading = "Restarts", long, env = "FLOWLOG_ON_EXIT")]
    on_exit: Option<String>,
    /// Address of the Prometheus metrics and /healthz, /readyz endpoint, or
    /// `off`. Default 127.0.0.1:9750.
    #[arg(help_heading = "Operations", long, env = "FLOWLOG_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// Log filter (tracing syntax), e.g. `info` or `flowlog_agent=debug`.
    #[arg(help_heading = "Operations", long, env = "FLOWLOG_LOG")]
    log: Option<String>,
    /// The agent's own logs as JSON lines (for log collectors) instead of
    /// text (`--log-json=false` overrides the config file).
    #[arg(help_heading = "Operations", long, env = "FLOWLOG_LOG_JSON", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    log_json: Option<bool>,
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
            region: self.region,
            aws_endpoint_url: self.aws_endpoint_url,
            flow_log_id: self.flow_log_id,
            spool_dir: self.spool_dir,
            spool_max_bytes: self.spool_max_bytes,
            file_interval: self.file_interval,
            file_max_bytes: self.file_max_bytes,
            shutdown_timeout: self.shutdown_timeout,
            log_format: self.log_format,
            account_id: self.account_id,
            max_flows: self.max_flows,
            pin_dir: self.pin_dir,
            no_pin: self.no_pin,
            on_exit: self.on_exit,
            metrics_listen: self.metrics_listen,
            log: self.log,
            log_json: self.log_json,
            ingress_hook: self.ingress_hook,
            traffic_type: self.traffic_type,
            reject_reasons: self.reject_reasons,
            reject_reason_map: self.reject_reason_map,
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
        Some(Cmd::Completions { shell }) => {
            clap_complete::generate(shell, &mut Cli::command(), "flowlog-agent", &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
        Some(Cmd::Man { dir }) => {
            // No `help` subcommand: it has no page of its own.
            let cmd = Cli::command().disable_help_subcommand(true);
            let done = match &dir {
                Some(d) => clap_mangen::generate_to(cmd, d),
                None => clap_mangen::Man::new(cmd).render(&mut std::io::stdout()),
            };
            return match done {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: writing the manual page{}: {e}", dir.map_or(String::new(), |d| format!(" into {}", d.display())));
                    ExitCode::FAILURE
                }
            };
        }
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

    // Two workers: destinations deliver while the main loop waits in bpf().
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
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
