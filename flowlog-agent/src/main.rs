use std::{io::IsTerminal, path::PathBuf, process::ExitCode};

use clap::{Args, CommandFactory, Parser, Subcommand};
use flowlog_agent::{
    agent,
    compare,
    config::{Keys, Source},
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

  # After editing the file (outputs, format, interfaces), without a restart:
  systemctl reload flowlog        # or kill -HUP <pid>: SIGHUP

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
    /// Live traffic of the running agent: per interface packets/s and bits/s,
    /// the top flows of the open window (root: reads its live socket).
    ///
    /// Keys: `b`/`p` sort flows by bytes/packets, `/` filter (interface,
    /// address or its beginning, port, pod; Enter applies), `c` clears the
    /// filter, `q` quits. `--once` prints one snapshot for scripts.
    Top(flowlog_agent::top::TopArgs),
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
    /// Config file (TOML). SIGHUP (`systemctl reload`) reads it again, with
    /// the same flags and variables over it: interfaces, log-format, outputs,
    /// [enrich] and on-exit change at the next window boundary; other keys
    /// need a restart; a bad file is refused and the running configuration stays.
    #[arg(help_heading = "Config", long, short = 'c', env = "FLOWLOG_CONFIG")]
    config: Option<PathBuf>,
    /// Every key of the config file (but the sections), as a flag.
    #[command(flatten)]
    keys: Keys,
}

impl RunArgs {
    fn source(self) -> Source {
        Source { path: self.config, overrides: self.keys }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (args, check) = match cli.cmd {
        Some(Cmd::Run(a)) => (a, false),
        Some(Cmd::CheckConfig(a)) => (a, true),
        Some(Cmd::Compare(a)) => return compare::cli::main(a),
        Some(Cmd::Top(a)) => return flowlog_agent::top::main(a),
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
    let source = args.source();
    let settings = match source.load() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if check {
        if let Err(e) = settings.enrich.build(&[], false, Default::default()) {
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
    match rt.block_on(agent::run(settings, source)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
