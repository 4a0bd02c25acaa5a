//! The configuration: a TOML file, overridden by environment variables,
//! overridden by command-line flags. [`Keys`] declares each key once: its
//! serde name is the file's key, its `arg` the flag and variable
//! (`interval` ↔ `--interval` ↔ `FLOWLOG_INTERVAL`), its doc the flag's
//! help. [`Settings::resolve`] lays flags over the file and checks each
//! value; [`Settings::render`] prints the result as `Keys` again.
//!
//! Errors name the key, the value and what is accepted.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::builder::BoolishValueParser;
use serde::{Deserialize, Serialize};

use flowlog_records::format::Format;
use crate::{
    capture::{reject::RejectConfig, IngressHook, KernelFilters},
    enrich::EnrichConfig,
    metadata::{kubernetes::KubernetesConfig, MetadataConfig},
    ship::{aws::AwsSettings, s3::ObjectOptions, Output, ShipConfig},
};

/// What the main loop ([`crate::agent::run`]) runs with, after precedence
/// and validation (see [`Settings`]).
#[derive(Clone, Debug)]
pub struct Config {
    /// Interface names or globs; empty = every up, non-loopback interface.
    pub ifaces: Vec<String>,
    /// Globs of interfaces never to capture on.
    pub exclude_ifaces: Vec<String>,
    pub format: Format,
    pub interval: Duration,
    /// Outputs, spool, AWS settings.
    pub ship: ShipConfig,
    /// Overrides the metadata provider's account id.
    pub account_id: Option<String>,
    /// Capacity of each flow table generation.
    pub max_flows: u32,
    /// Where maps and attachments are pinned (`None`: not pinned).
    pub pin_root: Option<PathBuf>,
    pub on_exit: OnExit,
    /// Address of the metrics/health endpoint (`None`: off).
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The live endpoint's unix socket (`None`: off).
    pub live_socket: Option<PathBuf>,
    /// Whether `live_socket` was configured (then failing to bind it is an error).
    pub live_socket_explicit: bool,
    /// Driver statistics (`ethtool -S` names) exported per captured
    /// interface (empty: none).
    pub ethtool_stats: Vec<String>,
    /// Count 1 packet in N, scaled by N (0/1: all).
    pub sample_rate: u32,
    pub filters: KernelFilters,
    pub ingress_hook: IngressHook,
    /// What counts as REJECT (`reject-reasons`, `reject-reason-map`).
    pub reject: RejectConfig,
    /// Whether the reasons were asked for (then missing BTF is an error;
    /// with the default, REJECT is switched off with a warning).
    pub reject_explicit: bool,
}

/// What SIGINT/SIGTERM does with the kernel side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnExit {
    /// Final drain, then detach and remove the pins.
    Detach,
    /// Drain the current window, leave the programs counting into the
    /// pinned maps for the next agent (restarts and upgrades lose nothing).
    Keep,
}

pub const DEFAULT_INTERVAL: u64 = 60;
pub const DEFAULT_MAX_FLOWS: u32 = 65_536;
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/flowlog";
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9750";

/// Declares a struct of configuration keys and how two layers of it merge
/// ([`Layer`]), so that a key is written once: its doc is the flag's help,
/// its serde name the file's key, its `arg` the flag and variable.
macro_rules! keys {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* pub $f:ident: $t:ty,)* }) => {
        $(#[$m])*
        pub struct $name { $($(#[$fm])* pub $f: $t,)* }

        impl Layer for $name {
            fn over(self, below: Self) -> Self {
                $name { $($f: self.$f.over(below.$f),)* }
            }
        }
    };
}

/// One source of configuration laid over another (flags and variables over
/// the file): a key given here wins.
pub trait Layer {
    fn over(self, below: Self) -> Self;
}

impl<T> Layer for Option<T> {
    fn over(self, below: Self) -> Self {
        self.or(below)
    }
}

/// A list given here replaces the lower one entirely.
impl<T> Layer for Vec<T> {
    fn over(self, below: Self) -> Self {
        if self.is_empty() {
            below
        } else {
            self
        }
    }
}

/// Sections that only the file sets (no flag): a section left at its
/// defaults gives way.
macro_rules! file_only_section {
    ($($t:ty),*) => {$(
        impl Layer for $t {
            fn over(self, below: Self) -> Self {
                if self == <$t>::default() {
                    below
                } else {
                    self
                }
            }
        }
    )*};
}
file_only_section!(MetadataConfig, EnrichConfig);

keys! {
    /// Every key of the file, flag and environment variable, each `None` or
    /// empty where its source does not give it. Absent keys take the
    /// defaults in [`Settings::resolve`]; unknown keys in the file are errors
    /// (a typo must not silently fall back to a default).
    #[derive(Clone, Debug, Default, Deserialize, Serialize, clap::Args)]
    #[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
    pub struct Keys {
        /// Interface name or glob (`veth*`) to capture on; repeatable.
        /// Default: every interface that is up, except loopback.
        #[arg(help_heading = "Capture", long = "iface", short = 'i', value_name = "IFACES", env = "FLOWLOG_IFACES", value_delimiter = ',')]
        pub interfaces: Vec<String>,
        /// Glob of interfaces never to capture on (wins over --iface); repeatable.
        #[arg(help_heading = "Capture", long = "exclude-iface", value_name = "EXCLUDE_IFACES", env = "FLOWLOG_EXCLUDE_IFACES", value_delimiter = ',')]
        pub exclude_interfaces: Vec<String>,
        /// Flows per aggregation window the kernel table holds; beyond it,
        /// packets of new flows are not counted and SKIPDATA is written. Default 65536.
        #[arg(help_heading = "Capture", long, env = "FLOWLOG_MAX_FLOWS")]
        pub max_flows: Option<u32>,
        /// Where ingress is counted: `auto` (XDP, or TC where XDP is refused,
        /// e.g. for a jumbo MTU), `xdp` or `tc`. Default auto.
        #[arg(help_heading = "Capture", long, env = "FLOWLOG_INGRESS_HOOK")]
        pub ingress_hook: Option<String>,
        /// Count 1 packet in N, chosen at random in the kernel; records then
        /// show counts multiplied by N. Default 1 (every packet).
        #[arg(help_heading = "Capture", long, env = "FLOWLOG_SAMPLE_RATE")]
        pub sample_rate: Option<u32>,
        /// The `[filters]` section.
        #[command(flatten)]
        pub filters: Filters,
        /// The `[kubernetes]` section.
        #[command(flatten)]
        pub kubernetes: Kubernetes,
        /// Aggregation interval in seconds, 1..3600 (AWS: 60 or 600). Default 60.
        #[arg(help_heading = "Records", long, env = "FLOWLOG_INTERVAL")]
        pub interval: Option<u64>,
        /// Record format, as `CreateFlowLogs --log-format` takes it, e.g.
        /// "${srcaddr} ${dstaddr} ${packets}". Default: the version 2 format.
        #[arg(help_heading = "Records", long, env = "FLOWLOG_LOG_FORMAT")]
        pub log_format: Option<String>,
        /// The `account-id` field; overrides what the metadata provider says.
        #[arg(help_heading = "Records", long, env = "FLOWLOG_ACCOUNT_ID")]
        pub account_id: Option<String>,
        /// Which records to write, like a flow log's traffic type: `ACCEPT`,
        /// `REJECT` or `ALL` (overrides `[enrich] traffic-type`). Default ALL.
        #[arg(help_heading = "Records", long, env = "FLOWLOG_TRAFFIC_TYPE")]
        #[serde(skip_deserializing)]
        pub traffic_type: Option<String>,
        /// Kernel drop reasons (`enum skb_drop_reason` names without the
        /// `SKB_DROP_REASON_` prefix) whose packets are REJECT, e.g.
        /// `NETFILTER_DROP,NO_SOCKET`; `none`: no REJECT records, no drop hook.
        /// Default NETFILTER_DROP (switched off with a warning where the kernel
        /// has no BTF).
        #[arg(help_heading = "Records", long, value_delimiter = ',', env = "FLOWLOG_REJECT_REASONS")]
        pub reject_reasons: Vec<String>,
        /// `DROP_REASON=TEXT`: the `reject-reason` field of REJECT records of that
        /// drop reason (default `-`, as AWS writes for reasons other than its
        /// own); repeatable.
        #[arg(help_heading = "Records", long, value_delimiter = ',', env = "FLOWLOG_REJECT_REASON_MAP")]
        pub reject_reason_map: Vec<String>,
        /// Where records go; repeatable (fan-out): `stdout`, `file:<path>` (one
        /// record per line), `dir:<path>` (the S3 layout on a local directory),
        /// `s3://<bucket>[/<prefix>]`, `cloudwatch:<log-group>[?retention=<days>&class=infrequent-access]`,
        /// `firehose:<delivery-stream>`. `dir:` and `s3:` take
        /// `?format=parquet&hive&per-hour`; `file:` and `dir:` files are 0640 unless
        /// `?mode=<octal>`. All but stdout/file go through the spool. Default stdout.
        #[arg(help_heading = "Outputs", long = "output", short = 'o', env = "FLOWLOG_OUTPUTS", value_delimiter = ',')]
        pub outputs: Vec<String>,
        /// The flow log id in S3 object names. Default fl-00000000000000000.
        #[arg(help_heading = "Outputs", long, env = "FLOWLOG_FLOW_LOG_ID")]
        pub flow_log_id: Option<String>,
        /// Spool directory: records wait here until every spooled output has
        /// them. Default $STATE_DIRECTORY/spool (systemd), else /var/lib/flowlog/spool.
        #[arg(help_heading = "Outputs", long, env = "FLOWLOG_SPOOL_DIR")]
        pub spool_dir: Option<PathBuf>,
        /// Bound of the spool in bytes; past it the oldest records are dropped
        /// (and counted). Default 1073741824.
        #[arg(help_heading = "Outputs", long, env = "FLOWLOG_SPOOL_MAX_BYTES")]
        pub spool_max_bytes: Option<u64>,
        /// Seconds S3 and dir outputs gather records into files (AWS: 300). Default 300.
        #[arg(help_heading = "Outputs", long, env = "FLOWLOG_FILE_INTERVAL")]
        pub file_interval: Option<u64>,
        /// Size at which S3/dir files are rotated, in bytes (AWS: 75 MB). Default 75000000.
        #[arg(help_heading = "Outputs", long, env = "FLOWLOG_FILE_MAX_BYTES")]
        pub file_max_bytes: Option<usize>,
        /// Seconds a graceful shutdown may take to flush the outputs. Default 10.
        #[arg(help_heading = "Outputs", long, env = "FLOWLOG_SHUTDOWN_TIMEOUT")]
        pub shutdown_timeout: Option<u64>,
        /// AWS region of the AWS outputs (default: the SDK's chain, AWS_REGION...).
        #[arg(help_heading = "AWS", long, env = "FLOWLOG_REGION")]
        pub region: Option<String>,
        /// Endpoint override for the AWS services (e.g. a local test server).
        #[arg(help_heading = "AWS", long, env = "FLOWLOG_AWS_ENDPOINT_URL")]
        pub aws_endpoint_url: Option<String>,
        /// Whether to pin (the file's `pin`; the flag is `--no-pin`).
        #[arg(skip)]
        pub pin: Option<bool>,
        /// Pin maps and attachments under this directory (on a BPF filesystem)
        /// so that a restarted agent reports what was counted in between.
        /// Default /sys/fs/bpf/flowlog.
        #[arg(help_heading = "Restarts", long, env = "FLOWLOG_PIN_DIR")]
        pub pin_dir: Option<PathBuf>,
        /// Do not pin: every start begins with empty tables (`--no-pin=false`
        /// pins even where the config file says `pin = false`).
        #[arg(help_heading = "Restarts", long, env = "FLOWLOG_NO_PIN", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = BoolishValueParser::new())]
        #[serde(skip)]
        pub no_pin: Option<bool>,
        /// On SIGINT/SIGTERM: `detach` (final drain, detach, remove pins; the
        /// default) or `keep` (programs stay attached and counting for the next agent).
        #[arg(help_heading = "Restarts", long, env = "FLOWLOG_ON_EXIT")]
        pub on_exit: Option<String>,
        /// Address of the Prometheus metrics and /healthz, /readyz endpoint, or
        /// `off`. Default 127.0.0.1:9750.
        #[arg(help_heading = "Operations", long, env = "FLOWLOG_METRICS_LISTEN")]
        pub metrics_listen: Option<String>,
        /// Unix socket of the live endpoint (`flowlog-agent top`): the open
        /// window's counts, for root only (mode 0600), or `off`. Default
        /// /run/flowlog/live.sock.
        #[arg(help_heading = "Operations", long, env = "FLOWLOG_LIVE_SOCKET")]
        pub live_socket: Option<String>,
        /// Driver statistics (`ethtool -S` names) exported as the counters
        /// flowlog_ethtool_<name>_total{interface} where the captured
        /// interface's driver has them; repeatable; `none`: no link counters. Default the
        /// ENA allowance counters: bw_in_allowance_exceeded,
        /// bw_out_allowance_exceeded, pps_allowance_exceeded,
        /// conntrack_allowance_exceeded, linklocal_allowance_exceeded.
        #[arg(help_heading = "Operations", long, value_delimiter = ',', env = "FLOWLOG_ETHTOOL_STATS")]
        pub ethtool_stats: Vec<String>,
        /// Log filter (tracing syntax), e.g. `info` or `flowlog_agent=debug`.
        #[arg(help_heading = "Operations", long, env = "FLOWLOG_LOG")]
        pub log: Option<String>,
        /// The agent's own logs as JSON lines (for log collectors) instead of
        /// text (`--log-json=false` overrides the config file).
        #[arg(help_heading = "Operations", long, env = "FLOWLOG_LOG_JSON", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = BoolishValueParser::new())]
        pub log_json: Option<bool>,
        #[arg(skip)]
        #[serde(skip_serializing)]
        pub metadata: MetadataConfig,
        #[arg(skip)]
        #[serde(skip_serializing)]
        pub enrich: EnrichConfig,
    }
}

keys! {
    /// The kernel filters: the `[filters]` section and their flags.
    #[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, clap::Args)]
    #[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
    pub struct Filters {
        /// Count only packets with an address (either end) in this CIDR; repeatable.
        #[arg(help_heading = "Kernel filters", long = "include-cidr", env = "FLOWLOG_INCLUDE_CIDRS", value_delimiter = ',')]
        pub include_cidrs: Vec<ipnet::IpNet>,
        /// Never count packets with an address (either end) in this CIDR; repeatable.
        #[arg(help_heading = "Kernel filters", long = "exclude-cidr", env = "FLOWLOG_EXCLUDE_CIDRS", value_delimiter = ',')]
        pub exclude_cidrs: Vec<ipnet::IpNet>,
        /// Count only packets with this port (either end); repeatable.
        #[arg(help_heading = "Kernel filters", long = "include-port", env = "FLOWLOG_INCLUDE_PORTS", value_delimiter = ',')]
        pub include_ports: Vec<u16>,
        /// Never count packets with this port (either end); repeatable.
        #[arg(help_heading = "Kernel filters", long = "exclude-port", env = "FLOWLOG_EXCLUDE_PORTS", value_delimiter = ',')]
        pub exclude_ports: Vec<u16>,
        /// Count only this IP protocol number (6 TCP, 17 UDP, 1 ICMP); repeatable.
        #[arg(help_heading = "Kernel filters", long = "protocol", env = "FLOWLOG_PROTOCOLS", value_delimiter = ',')]
        pub protocols: Vec<u8>,
    }
}

keys! {
    /// Pod identity from the node's container runtime (the `k8s-*` extension
    /// fields): the `[kubernetes]` section and its flags.
    #[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, clap::Args)]
    #[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
    pub struct Kubernetes {
        /// Pod identity for the k8s-* fields from the node's container runtime
        /// (CRI, no API server): `auto` (on when a CRI socket exists and the
        /// log format names a k8s-* field), `on` or `off`. Default auto.
        #[arg(help_heading = "Kubernetes", long = "kubernetes", value_name = "MODE", env = "FLOWLOG_KUBERNETES")]
        pub mode: Option<String>,
        /// The runtime's CRI socket. Default: the first that exists of
        /// /run/containerd/containerd.sock, /run/crio/crio.sock, /var/run/crio/crio.sock.
        #[arg(help_heading = "Kubernetes", long = "cri-socket", env = "FLOWLOG_CRI_SOCKET")]
        pub cri_socket: Option<PathBuf>,
        /// Pod label key whose value the k8s-pod-label field writes, e.g.
        /// app.kubernetes.io/name. Default none (the field is `-`).
        #[arg(help_heading = "Kubernetes", long = "k8s-pod-label", value_name = "KEY", env = "FLOWLOG_K8S_POD_LABEL")]
        pub pod_label: Option<String>,
        /// Seconds between pod listings, 1..3600; link changes (new pod veths)
        /// also trigger one, at most one a second. Default 10.
        #[arg(help_heading = "Kubernetes", long = "k8s-refresh", value_name = "SECS", env = "FLOWLOG_K8S_REFRESH")]
        pub refresh_interval: Option<u64>,
        /// Seconds a whole pod listing (one call per pod) may take before it
        /// counts as failed, 1..120. Default 10.
        #[arg(help_heading = "Kubernetes", long = "cri-timeout", value_name = "SECS", env = "FLOWLOG_CRI_TIMEOUT")]
        pub cri_timeout: Option<u64>,
    }
}

impl Kubernetes {
    /// Checks each value; defaults for absent ones.
    fn resolve(self) -> Result<KubernetesConfig, ConfigError> {
        let d = KubernetesConfig::default();
        let mode = match self.mode {
            Some(m) => m.parse().map_err(|e| invalid("kubernetes.mode", &m, e))?,
            None => d.mode,
        };
        if let Some(p) = self.cri_socket.as_ref().filter(|p| !p.is_absolute()) {
            let accepted = "an absolute path, e.g. /run/containerd/containerd.sock";
            return Err(invalid("kubernetes.cri-socket", p.display(), accepted));
        }
        if let Some(k) = &self.pod_label {
            // A label key: an optional DNS prefix (253) and `/`, a name (63).
            if k.is_empty() || k.len() > 317 || k.contains(|c: char| c.is_whitespace() || c.is_control()) {
                let accepted = "a label key such as app.kubernetes.io/name (1 to 317 characters, no spaces)";
                return Err(invalid("kubernetes.pod-label", k, accepted));
            }
        }
        let refresh = self.refresh_interval.unwrap_or(d.refresh.as_secs());
        if !(1..=3600).contains(&refresh) {
            return Err(invalid("kubernetes.refresh-interval", refresh, "seconds from 1 to 3600"));
        }
        let timeout = self.cri_timeout.unwrap_or(d.timeout.as_secs());
        if !(1..=120).contains(&timeout) {
            return Err(invalid("kubernetes.cri-timeout", timeout, "seconds from 1 to 120"));
        }
        Ok(KubernetesConfig {
            mode,
            socket: self.cri_socket,
            pod_label: self.pod_label,
            refresh: Duration::from_secs(refresh),
            timeout: Duration::from_secs(timeout),
        })
    }
}

impl From<&KubernetesConfig> for Kubernetes {
    fn from(k: &KubernetesConfig) -> Kubernetes {
        Kubernetes {
            mode: Some(k.mode.as_str().into()),
            cri_socket: k.socket.as_ref().map(|p| PathBuf::from(p.display().to_string())),
            pod_label: k.pod_label.clone(),
            refresh_interval: Some(k.refresh.as_secs()),
            cri_timeout: Some(k.timeout.as_secs()),
        }
    }
}

impl From<Filters> for KernelFilters {
    fn from(f: Filters) -> KernelFilters {
        KernelFilters {
            include_cidrs: f.include_cidrs,
            exclude_cidrs: f.exclude_cidrs,
            include_ports: f.include_ports,
            exclude_ports: f.exclude_ports,
            protocols: f.protocols,
        }
    }
}

impl From<&KernelFilters> for Filters {
    fn from(f: &KernelFilters) -> Filters {
        let f = f.clone();
        Filters {
            include_cidrs: f.include_cidrs,
            exclude_cidrs: f.exclude_cidrs,
            include_ports: f.include_ports,
            exclude_ports: f.exclude_ports,
            protocols: f.protocols,
        }
    }
}

/// The file's keys.
pub type FileConfig = Keys;
/// The keys from flags or environment variables (clap fills both).
pub type Overrides = Keys;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("config file {path}: {reason}")]
    Syntax { path: String, reason: String },
    #[error("invalid {key} = {value:?}: {accepted}")]
    Invalid { key: &'static str, value: String, accepted: String },
}

fn invalid(key: &'static str, value: impl ToString, accepted: impl ToString) -> ConfigError {
    ConfigError::Invalid { key, value: value.to_string(), accepted: accepted.to_string() }
}

impl Keys {
    /// Reads the config file.
    pub fn load(path: &std::path::Path) -> Result<Keys, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Read { path: path.display().to_string(), reason: e.to_string() })?;
        Self::parse(&text).map_err(|reason| ConfigError::Syntax { path: path.display().to_string(), reason })
    }

    /// Errors carry the full key (`metadata.onprem.account-id: ...`).
    pub fn parse(text: &str) -> Result<Keys, String> {
        let cfg: Keys = crate::toml_de::from_toml(text)?;
        cfg.metadata.validate().map_err(|e| e.to_string())?;
        Ok(cfg)
    }
}


/// Where the settings come from: kept so that a reload (SIGHUP) reads the
/// same file with the same flags and variables as the start did.
#[derive(Clone, Debug, Default)]
pub struct Source {
    pub path: Option<PathBuf>,
    pub overrides: Overrides,
}

impl Source {
    pub fn load(&self) -> Result<Settings, ConfigError> {
        let file = match &self.path {
            Some(p) => Keys::load(p)?,
            None => Keys::default(),
        };
        Settings::resolve(file, self.overrides.clone())
    }
}

/// The keys a reload changes (at the next window boundary), with the
/// `[enrich]` and `[filters]` sections. Every other key (and `[metadata]`)
/// keeps its value until a restart: the kernel side is loaded with it
/// (`max-flows`, `sample-rate`, `ingress-hook`, `reject-reasons`, pinning),
/// or it is set up once (`interval`, the metrics listener, the spool, the
/// logs, the AWS settings, the metadata provider).
pub const RELOADABLE: &[&str] =
    &["interfaces", "exclude-interfaces", "log-format", "outputs", "traffic-type", "on-exit", "filters"];

/// Everything the agent runs with, after precedence and validation.
#[derive(Clone, Debug)]
pub struct Settings {
    pub agent: Config,
    pub log: String,
    /// The agent's own logs as JSON lines instead of text.
    pub log_json: bool,
    pub metadata: MetadataConfig,
    pub enrich: EnrichConfig,
    pub kubernetes: KubernetesConfig,
}

impl Settings {
    /// Flags and variables (`o`) over the file, then the defaults; each
    /// value checked.
    pub fn resolve(file: FileConfig, o: Overrides) -> Result<Settings, ConfigError> {
        let k = o.over(file);
        let interval = k.interval.unwrap_or(DEFAULT_INTERVAL);
        if !(1..=3600).contains(&interval) {
            return Err(invalid("interval", interval, "seconds from 1 to 3600 (AWS offers 60 and 600)"));
        }
        let max_flows = k.max_flows.unwrap_or(DEFAULT_MAX_FLOWS);
        if !(1..=16_777_216).contains(&max_flows) {
            return Err(invalid("max-flows", max_flows, "1 to 16777216"));
        }
        let outputs = if k.outputs.is_empty() { vec!["stdout".to_string()] } else { k.outputs };
        let outputs = outputs
            .iter()
            .map(|s| s.parse::<Output>().map_err(|e| invalid("outputs", s, e)))
            .collect::<Result<Vec<_>, _>>()?;
        let defaults = ShipConfig::default();
        let file_interval = k.file_interval.unwrap_or(defaults.flush_interval.as_secs());
        if !(1..=3600).contains(&file_interval) {
            return Err(invalid("file-interval", file_interval, "seconds from 1 to 3600 (AWS: 300)"));
        }
        let file_max_bytes = k.file_max_bytes.unwrap_or(defaults.objects.rotate_bytes);
        if file_max_bytes == 0 {
            return Err(invalid("file-max-bytes", 0, "a size in bytes above 0 (AWS: 75000000)"));
        }
        let spool_max_bytes = k.spool_max_bytes.unwrap_or(defaults.spool_max_bytes);
        if spool_max_bytes < 1 << 20 {
            return Err(invalid("spool-max-bytes", spool_max_bytes, "at least 1048576 (1 MiB)"));
        }
        let ship = ShipConfig {
            outputs,
            aws: AwsSettings { region: k.region, endpoint_url: k.aws_endpoint_url },
            flow_log_id: k.flow_log_id.unwrap_or(defaults.flow_log_id.clone()),
            spool_dir: k.spool_dir.unwrap_or_else(crate::ship::default_spool_dir),
            spool_max_bytes,
            flush_interval: Duration::from_secs(file_interval),
            objects: ObjectOptions { rotate_bytes: file_max_bytes, ..defaults.objects.clone() },
            shutdown_timeout: Duration::from_secs(k.shutdown_timeout.unwrap_or(defaults.shutdown_timeout.as_secs())),
            ..defaults
        };
        let format = match k.log_format {
            Some(spec) => Format::parse(&spec).map_err(|e| invalid("log-format", &spec, e))?,
            None => Format::default(),
        };
        let account_id = k.account_id;
        if let Some(a) = &account_id {
            if a.is_empty() || a.contains(char::is_whitespace) {
                return Err(invalid("account-id", a, "a non-empty value without spaces"));
            }
        }
        let on_exit = match k.on_exit {
            Some(v) => v.parse().map_err(|e| invalid("on-exit", v, e))?,
            None => OnExit::Detach,
        };
        let listen = k.metrics_listen.unwrap_or_else(|| DEFAULT_METRICS_LISTEN.into());
        let metrics_listen: Option<SocketAddr> = match listen.as_str() {
            "off" => None,
            a => Some(a.parse().map_err(|_| invalid("metrics-listen", a, "off, or an address such as 127.0.0.1:9750 or [::1]:9750"))?),
        };
        let live_socket_explicit = k.live_socket.is_some();
        let live_socket = match k.live_socket.as_deref().unwrap_or(crate::live::DEFAULT_LIVE_SOCKET) {
            "off" => None,
            p if p.starts_with('/') => Some(PathBuf::from(p)),
            p => return Err(invalid("live-socket", p, "off, or an absolute path such as /run/flowlog/live.sock")),
        };
        use crate::metrics::link;
        let ethtool_stats = if k.ethtool_stats.is_empty() { link::default_names() } else { k.ethtool_stats };
        let ethtool_stats =
            link::check_names(&ethtool_stats).map_err(|e| invalid("ethtool-stats", ethtool_stats.join(","), e))?;
        // `pin` comes only from the file, `no-pin` only from flags and variables.
        let pin = k.no_pin.map_or_else(|| k.pin.unwrap_or(true), |no| !no);
        let pin_dir = k.pin_dir.unwrap_or_else(|| DEFAULT_PIN_DIR.into());
        if pin && !pin_dir.is_absolute() {
            return Err(invalid("pin-dir", pin_dir.display(), "an absolute path on a BPF filesystem"));
        }
        let ingress_hook = match k.ingress_hook {
            Some(h) => h.parse::<IngressHook>().map_err(|e| invalid("ingress-hook", &h, e))?,
            None => IngressHook::Auto,
        };
        let reject_explicit = !k.reject_reasons.is_empty();
        let reject = RejectConfig::from_args(&k.reject_reasons, &k.reject_reason_map)
            .map_err(|e| invalid("reject-reasons", k.reject_reasons.join(","), format!("{e:#}")))?;
        let mut enrich = k.enrich;
        if let Some(t) = k.traffic_type {
            enrich.traffic_type = t.parse().map_err(|e| invalid("traffic-type", &t, e))?;
        }
        let sample_rate = k.sample_rate.unwrap_or(1);
        if sample_rate == 0 {
            return Err(invalid("sample-rate", 0, "1 (every packet) or more (1 in N, counts scaled by N)"));
        }
        let filters = KernelFilters::from(k.filters);
        if let Err((key, n)) = filters.validate() {
            return Err(invalid(key, format!("{n} entries"), format!("at most {}", crate::capture::MAX_FILTER_ENTRIES)));
        }
        let kubernetes = k.kubernetes.resolve()?;
        let (include, exclude) = (k.interfaces, k.exclude_interfaces);
        crate::capture::links::Selector::new(&include, &exclude).map_err(|e| invalid("interfaces", include.join(","), e))?;
        Ok(Settings {
            agent: Config {
                ifaces: include,
                exclude_ifaces: exclude,
                format,
                interval: Duration::from_secs(interval),
                ship,
                account_id,
                max_flows,
                pin_root: pin.then_some(pin_dir),
                on_exit,
                metrics_listen,
                live_socket,
                live_socket_explicit,
                ethtool_stats,
                sample_rate,
                filters,
                ingress_hook,
                reject,
                reject_explicit,
            },
            log: k.log.unwrap_or_else(|| "info".into()),
            log_json: k.log_json.unwrap_or(false),
            metadata: k.metadata,
            enrich,
            kubernetes,
        })
    }

    /// The effective configuration as a config file would say it (the
    /// [`Keys`], serialized). Nothing here is secret today (AWS credentials
    /// never pass through the config); values of keys that look like secrets
    /// are redacted all the same.
    pub fn render(&self) -> String {
        let mut out: String = match toml::to_string(&self.keys()) {
            Ok(text) => text.lines().map(redact).map(|l| l + "\n").collect(),
            Err(e) => format!("# cannot render the configuration: {e}\n"),
        };
        out.push_str(&format!("\n# [metadata]\n# {:?}\n", self.metadata));
        out.push_str(&format!("\n# [enrich]\n# {:?}\n", self.enrich));
        out
    }

    /// The keys a reload ([`RELOADABLE`]) does not change that differ in
    /// `new`: they keep their running value until a restart.
    pub fn restart_only_changes(&self, new: &Settings) -> Vec<String> {
        let table = |s: &Settings| match toml::Table::try_from(s.keys()) {
            Ok(t) => t,
            Err(e) => unreachable!("the keys are plain TOML values: {e}"),
        };
        let (old, new_keys) = (table(self), table(new));
        let mut changed: Vec<String> = old
            .keys()
            .chain(new_keys.keys())
            .filter(|k| !RELOADABLE.contains(&k.as_str()) && old.get(*k) != new_keys.get(*k))
            .cloned()
            .collect();
        changed.sort();
        changed.dedup();
        if self.metadata != new.metadata {
            changed.push("metadata".into());
        }
        changed
    }

    /// The effective values as [`Keys`].
    fn keys(&self) -> Keys {
        let a = &self.agent;
        // Paths as text: TOML has no other kind of string.
        let path = |p: &std::path::Path| PathBuf::from(p.display().to_string());
        Keys {
            interfaces: a.ifaces.clone(),
            exclude_interfaces: a.exclude_ifaces.clone(),
            max_flows: Some(a.max_flows),
            ingress_hook: Some(a.ingress_hook.as_str().into()),
            sample_rate: Some(a.sample_rate),
            filters: Filters::from(&a.filters),
            kubernetes: Kubernetes::from(&self.kubernetes),
            interval: Some(a.interval.as_secs()),
            log_format: Some(a.format.spec()),
            account_id: Some(a.account_id.clone().unwrap_or_else(|| "<from metadata>".into())),
            traffic_type: Some(self.enrich.traffic_type.as_str().into()),
            reject_reasons: a.reject.reasons.clone(),
            reject_reason_map: a.reject.reason_map.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            outputs: a.ship.outputs.iter().map(|o| o.to_string()).collect(),
            flow_log_id: Some(a.ship.flow_log_id.clone()),
            spool_dir: Some(path(&a.ship.spool_dir)),
            spool_max_bytes: Some(a.ship.spool_max_bytes),
            file_interval: Some(a.ship.flush_interval.as_secs()),
            file_max_bytes: Some(a.ship.objects.rotate_bytes),
            shutdown_timeout: Some(a.ship.shutdown_timeout.as_secs()),
            region: Some(a.ship.aws.region.clone().unwrap_or_default()),
            aws_endpoint_url: Some(a.ship.aws.endpoint_url.clone().unwrap_or_default()),
            pin: Some(a.pin_root.is_some()),
            pin_dir: Some(a.pin_root.as_deref().map_or_else(PathBuf::new, path)),
            no_pin: None,
            on_exit: Some(a.on_exit.as_str().into()),
            metrics_listen: Some(a.metrics_listen.map_or("off".to_string(), |s| s.to_string())),
            live_socket: Some(a.live_socket.as_deref().map_or("off".to_string(), |p| p.display().to_string())),
            ethtool_stats: if a.ethtool_stats.is_empty() { vec!["none".into()] } else { a.ethtool_stats.clone() },
            log: Some(self.log.clone()),
            log_json: Some(self.log_json),
            // Not serialized: shown below as they are.
            metadata: MetadataConfig::default(),
            enrich: EnrichConfig::default(),
        }
    }
}

/// A `key = value` line, its value hidden where the key looks secret.
fn redact(line: &str) -> String {
    match line.split_once(" = ") {
        Some((k, _)) if ["secret", "password", "token"].iter().any(|s| k.contains(s)) => format!("{k} = \"<redacted>\""),
        _ => line.to_string(),
    }
}

impl OnExit {
    pub fn as_str(self) -> &'static str {
        match self {
            OnExit::Detach => "detach",
            OnExit::Keep => "keep",
        }
    }
}

impl std::str::FromStr for OnExit {
    type Err = &'static str;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [OnExit::Detach, OnExit::Keep].into_iter().find(|o| o.as_str() == s).ok_or("detach or keep")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(file: &str, o: Overrides) -> Result<Settings, String> {
        let f = FileConfig::parse(file)?;
        Settings::resolve(f, o).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() {
        let s = resolve("", Overrides::default()).unwrap();
        assert_eq!(s.agent.interval, Duration::from_secs(60));
        assert_eq!(s.agent.ship.outputs, [Output::stdout()]);
        assert_eq!(s.agent.max_flows, 65_536);
        assert_eq!(s.agent.pin_root.as_deref(), Some(std::path::Path::new("/sys/fs/bpf/flowlog")));
        assert_eq!(s.agent.metrics_listen, Some("127.0.0.1:9750".parse().unwrap()));
        assert_eq!(s.agent.ethtool_stats, crate::metrics::link::default_names());
        assert_eq!(s.agent.format, Format::default());
        assert_eq!(s.agent.account_id, None);
        assert_eq!(s.log, "info");
    }

    /// The spool follows systemd's StateDirectory= (the unit's only writable
    /// state path) and is otherwise below /var/lib/flowlog, which the unit
    /// and the Kubernetes manifest both make writable.
    #[test]
    fn spool_default_follows_state_directory() {
        use crate::ship::{spool_dir_for, DEFAULT_SPOOL_DIR};
        use std::{ffi::OsStr, path::Path};
        assert_eq!(DEFAULT_SPOOL_DIR, "/var/lib/flowlog/spool");
        assert_eq!(spool_dir_for(None), Path::new(DEFAULT_SPOOL_DIR));
        assert_eq!(spool_dir_for(Some(OsStr::new("/var/lib/flowlog"))), Path::new("/var/lib/flowlog/spool"));
        assert_eq!(spool_dir_for(Some(OsStr::new("/srv/state:/var/lib/other"))), Path::new("/srv/state/spool"));
        assert_eq!(spool_dir_for(Some(OsStr::new(""))), Path::new(DEFAULT_SPOOL_DIR));
        assert_eq!(spool_dir_for(Some(OsStr::new("relative"))), Path::new(DEFAULT_SPOOL_DIR));
    }

    #[test]
    fn flags_win_over_the_file() {
        let file = r#"
            interfaces = ["veth*"]
            interval = 600
            max-flows = 1000
            log-format = "${srcaddr} ${dstaddr}"
            metrics-listen = "off"
            pin = false
            on-exit = "keep"
            outputs = ["stdout", "file:/tmp/x.log"]
        "#;
        let s = resolve(file, Overrides::default()).unwrap();
        assert_eq!((s.agent.ifaces.clone(), s.agent.interval.as_secs(), s.agent.max_flows), (vec!["veth*".to_string()], 600, 1000));
        assert_eq!((s.agent.metrics_listen, s.agent.pin_root.clone(), s.agent.on_exit), (None, None, OnExit::Keep));
        assert_eq!(s.agent.ship.outputs.len(), 2);
        let o = Overrides { interfaces: vec!["eth0".into()], interval: Some(5), ..Default::default() };
        let s = resolve(file, o).unwrap();
        assert_eq!((s.agent.ifaces, s.agent.interval.as_secs(), s.agent.max_flows), (vec!["eth0".to_string()], 5, 1000));
    }

    /// Each bad value → an error naming the key, the value and what is accepted.
    #[test]
    fn validation_table() {
        let cases: &[(&str, &str)] = &[
            ("interval = 0", "invalid interval = \"0\": seconds from 1 to 3600 (AWS offers 60 and 600)"),
            ("interval = 7200", "invalid interval = \"7200\": seconds from 1 to 3600 (AWS offers 60 and 600)"),
            ("max-flows = 0", "invalid max-flows = \"0\": 1 to 16777216"),
            ("on-exit = \"stay\"", "invalid on-exit = \"stay\": detach or keep"),
            ("metrics-listen = \"localhost\"", "invalid metrics-listen = \"localhost\": off, or an address such as 127.0.0.1:9750 or [::1]:9750"),
            ("outputs = [\"s3\"]", "invalid outputs = \"s3\": invalid output \"s3\": expected `stdout`, `file:<path>[?mode=<octal>]`, `dir:<path>[?options]` (also mode=<octal>), `s3://<bucket>[/<prefix>][?options]` (options: format=text|parquet, hive, per-hour, joined with &), `cloudwatch:<log-group>[?retention=<days>&class=standard|infrequent-access]` or `firehose:<delivery-stream>`; the AWS ones also take region=<region>, endpoint=<url> and role-arn=<arn>"),
            ("spool-max-bytes = 10", "invalid spool-max-bytes = \"10\": at least 1048576 (1 MiB)"),
            ("file-interval = 0", "invalid file-interval = \"0\": seconds from 1 to 3600 (AWS: 300)"),
            ("account-id = \"a b\"", "invalid account-id = \"a b\": a non-empty value without spaces"),
            ("pin-dir = \"bpf\"", "invalid pin-dir = \"bpf\": an absolute path on a BPF filesystem"),
            ("ingress-hook = \"ebpf\"", "invalid ingress-hook = \"ebpf\": auto, xdp or tc"),
            ("sample-rate = 0", "invalid sample-rate = \"0\": 1 (every packet) or more (1 in N, counts scaled by N)"),
            ("ethtool-stats = [\"rx drops\"]", "invalid ethtool-stats = \"rx drops\": \"rx drops\": an `ethtool -S` statistic name is 1 to 31 bytes without spaces"),
            ("ethtool-stats = [\"none\", \"rx_drops\"]", "invalid ethtool-stats = \"none,rx_drops\": `none` alone, or names of `ethtool -S` statistics"),
            ("interfaces = [\"veth[\"]", "invalid interfaces = \"veth[\": invalid interface pattern \"veth[\": unclosed character class; missing ']'"),
        ];
        for (file, want) in cases {
            assert_eq!(resolve(file, Overrides::default()).unwrap_err(), *want, "{file}");
        }
        let e = resolve("log-format = \"${nope}\"", Overrides::default()).unwrap_err();
        assert!(e.starts_with("invalid log-format = \"${nope}\": unknown field \"${nope}\""), "{e}");
    }

    /// What a reload cannot change is named; what it changes is not.
    #[test]
    fn restart_only_keys_are_named() {
        let base = "interfaces = [\"veth*\"]\ninterval = 60\n";
        let old = resolve(base, Overrides::default()).unwrap();
        let reloadable = "interfaces = [\"eth0\"]\nexclude-interfaces = [\"x*\"]\ninterval = 60\n\
            log-format = \"${srcaddr}\"\noutputs = [\"stdout\", \"file:/tmp/x.log\"]\non-exit = \"keep\"\n\
            [enrich]\ntraffic-type = \"REJECT\"\n[filters]\nexclude-ports = [22]\n";
        let new = resolve(reloadable, Overrides::default()).unwrap();
        assert_eq!(old.restart_only_changes(&new), Vec::<String>::new());
        let restart = format!(
            "{base}max-flows = 10\nsample-rate = 2\nmetrics-listen = \"off\"\npin = false\nspool-dir = \"/x\"\n\
             account-id = \"1\"\n[filters]\nprotocols = [6]\n[metadata]\nmode = \"onprem\"\n"
        );
        let new = resolve(&restart, Overrides::default()).unwrap();
        let want = ["account-id", "max-flows", "metrics-listen", "pin", "pin-dir", "sample-rate"];
        assert_eq!(old.restart_only_changes(&new), [&want[..], &["spool-dir", "metadata"]].concat());
        let new = resolve(&base.replace("60", "600"), Overrides::default()).unwrap();
        assert_eq!(old.restart_only_changes(&new), ["interval"]);
    }

    /// A reload reads the same file with the same flags over it.
    #[test]
    fn source_lays_the_start_flags_over_the_file_again() {
        let path = std::env::temp_dir().join(format!("flowlog-source-{}.toml", std::process::id()));
        std::fs::write(&path, "interval = 60\nlog-format = \"${srcaddr}\"\n").unwrap();
        let overrides = Overrides { interval: Some(5), ..Default::default() };
        let source = Source { path: Some(path.clone()), overrides };
        let s = source.load().unwrap();
        assert_eq!((s.agent.interval.as_secs(), s.agent.format.spec()), (5, "${srcaddr}".to_string()));
        std::fs::write(&path, "interval = 600\nlog-format = \"${dstaddr}\"\n").unwrap();
        let s = source.load().unwrap();
        assert_eq!((s.agent.interval.as_secs(), s.agent.format.spec()), (5, "${dstaddr}".to_string()));
        std::fs::write(&path, "interval = \n").unwrap();
        let e = source.load().unwrap_err().to_string();
        assert!(e.starts_with(&format!("config file {}: TOML parse error", path.display())), "{e}");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn file_errors_name_the_key() {
        assert!(FileConfig::parse("intervall = 5").unwrap_err().contains("unknown field `intervall`"));
        let e = FileConfig::parse("interval = \"60\"").unwrap_err();
        assert!(e.starts_with("interval: "), "{e}");
        let e = FileConfig::parse("[metadata]\nmode = \"cloud\"").unwrap_err();
        assert!(e.starts_with("metadata.mode: "), "{e}");
        assert!(FileConfig::parse("[enrich]\nbogus = 1").unwrap_err().contains("enrich"));
    }

    #[test]
    fn render_shows_effective_values() {
        let s = resolve("interval = 10\naccount-id = \"123456789012\"", Overrides::default()).unwrap();
        let r = s.render();
        assert!(r.contains("interval = 10\n") && r.contains("account-id = \"123456789012\"\n") && r.contains("pin = true\n"), "{r}");
        // Enums as the file spells them.
        let o = Overrides { ingress_hook: Some("xdp".into()), on_exit: Some("keep".into()), traffic_type: Some("REJECT".into()), ..Default::default() };
        let r = resolve("", o).unwrap().render();
        for line in ["ingress-hook = \"xdp\"\n", "on-exit = \"keep\"\n", "traffic-type = \"REJECT\"\n"] {
            assert!(r.contains(line), "{line:?} not in {r}");
        }
    }

    /// `none` switches the link counters off, and says so when rendered; a
    /// flag's list replaces the file's.
    #[test]
    fn ethtool_stats_none_or_a_list() {
        let s = resolve("ethtool-stats = [\"none\"]", Overrides::default()).unwrap();
        assert_eq!(s.agent.ethtool_stats, Vec::<String>::new());
        assert!(s.render().contains("ethtool-stats = [\"none\"]\n"), "{}", s.render());
        let stats = vec!["peer_ifindex".into(), "rx_queue_0_xdp_packets".into()];
        let o = Overrides { ethtool_stats: stats, ..Default::default() };
        let s = resolve("ethtool-stats = [\"none\"]", o).unwrap();
        assert_eq!(s.agent.ethtool_stats, ["peer_ifindex", "rx_queue_0_xdp_packets"]);
        let r = resolve("", Overrides::default()).unwrap().render();
        let ena = "[\"bw_in_allowance_exceeded\", \"bw_out_allowance_exceeded\", \"pps_allowance_exceeded\", \
                   \"conntrack_allowance_exceeded\", \"linklocal_allowance_exceeded\"]";
        assert!(r.contains(&format!("ethtool-stats = {ena}\n")), "{r}");
    }

    /// A key given by flags or variables wins; a list replaces the file's
    /// whole; what only the file has (sections, `pin`) stays.
    #[test]
    fn layers_merge_per_key() {
        let file = FileConfig::parse("interval = 600\nlog = \"debug\"\npin = false\nreject-reasons = [\"NO_SOCKET\"]\n[filters]\nprotocols = [6]\ninclude-ports = [80]\n[metadata]\nrefresh-interval-secs = 5").unwrap();
        let flags = Overrides {
            interval: Some(5),
            reject_reasons: vec!["NETFILTER_DROP".into(), "TCP_CSUM".into()],
            filters: Filters { protocols: vec![17], ..Default::default() },
            ..Default::default()
        };
        let k = flags.over(file);
        assert_eq!((k.interval, k.log.as_deref(), k.pin), (Some(5), Some("debug"), Some(false)));
        assert_eq!(k.reject_reasons, ["NETFILTER_DROP", "TCP_CSUM"]);
        assert_eq!((k.filters.protocols, k.filters.include_ports), (vec![17], vec![80]));
        assert_eq!(k.metadata.refresh_interval_secs, 5);
    }
}

#[cfg(test)]
mod kubernetes_tests {
    use super::*;
    use crate::metadata::kubernetes::Mode;

    fn resolve(file: &str, flags: &[&str]) -> Result<Settings, String> {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            keys: Keys,
        }
        let args = std::iter::once("flowlog-agent").chain(flags.iter().copied());
        let o = Cli::try_parse_from(args).map_err(|e| e.to_string())?.keys;
        Settings::resolve(FileConfig::parse(file)?, o).map_err(|e| e.to_string())
    }

    /// The `[kubernetes]` section and its flags (flags win), and what
    /// `check-config` prints of it.
    #[test]
    fn section_flags_and_render() {
        let s = resolve(
            "[kubernetes]\nmode = \"on\"\ncri-socket = \"/run/k3s/containerd/containerd.sock\"\n\
             pod-label = \"app.kubernetes.io/name\"\nrefresh-interval = 30\n",
            &["--cri-timeout", "5", "--kubernetes", "off"],
        )
        .unwrap();
        let k = &s.kubernetes;
        assert_eq!(
            (k.mode, k.socket.as_deref(), k.pod_label.as_deref(), k.refresh, k.timeout),
            (
                Mode::Off,
                Some(std::path::Path::new("/run/k3s/containerd/containerd.sock")),
                Some("app.kubernetes.io/name"),
                Duration::from_secs(30),
                Duration::from_secs(5)
            )
        );
        assert!(s.render().contains(
            "[kubernetes]\nmode = \"off\"\ncri-socket = \"/run/k3s/containerd/containerd.sock\"\n\
             pod-label = \"app.kubernetes.io/name\"\nrefresh-interval = 30\ncri-timeout = 5\n"
        ), "{}", s.render());
    }

    /// Bad values: the key, the value and what is accepted.
    #[test]
    fn errors() {
        let err = |file: &str| resolve(file, &[]).unwrap_err();
        assert_eq!(err("[kubernetes]\nmode = \"yes\""), "invalid kubernetes.mode = \"yes\": auto, on or off");
        assert_eq!(
            err("[kubernetes]\ncri-socket = \"containerd.sock\""),
            "invalid kubernetes.cri-socket = \"containerd.sock\": an absolute path, e.g. \
             /run/containerd/containerd.sock"
        );
        assert_eq!(
            err("[kubernetes]\npod-label = \"my app\""),
            "invalid kubernetes.pod-label = \"my app\": a label key such as app.kubernetes.io/name (1 to 317 \
             characters, no spaces)"
        );
        let refresh = err("[kubernetes]\nrefresh-interval = 0");
        assert_eq!(refresh, "invalid kubernetes.refresh-interval = \"0\": seconds from 1 to 3600");
        let timeout = err("[kubernetes]\ncri-timeout = 121");
        assert_eq!(timeout, "invalid kubernetes.cri-timeout = \"121\": seconds from 1 to 120");
        let unknown = err("[kubernetes]\nsocket = \"/x\"");
        assert!(unknown.contains("unknown field `socket`"), "{unknown}");
        let flag = resolve("", &["--kubernetes", "maybe"]).unwrap_err();
        assert_eq!(flag, "invalid kubernetes.mode = \"maybe\": auto, on or off");
    }
}

#[cfg(test)]
mod example {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../flowlog.example.toml");

    /// The documented example parses, and says every key once, with its
    /// default: the file and the code cannot drift apart.
    #[test]
    fn example_file_is_complete_and_parses_to_the_defaults() {
        let parsed = FileConfig::parse(EXAMPLE).unwrap();
        let s = Settings::resolve(parsed.clone(), Overrides::default()).unwrap();
        let d = Settings::resolve(FileConfig::default(), Overrides::default()).unwrap();
        assert_eq!(s.render(), d.render());
        assert_eq!(parsed.metadata, MetadataConfig::default());
        assert_eq!(parsed.enrich, EnrichConfig::default());
        assert_eq!(parsed.filters, Filters::default());
        assert_eq!(s.kubernetes, KubernetesConfig::default());
        // Every key (commented or not) appears in the example.
        let keys = [
            "interfaces", "exclude-interfaces", "interval", "outputs", "log-format", "account-id", "max-flows", "pin", "pin-dir",
            "on-exit", "metrics-listen", "ethtool-stats", "live-socket", "log", "mode", "refresh-interval-secs", "endpoint", "token-ttl-secs", "connect-timeout-ms",
            "timeout-ms", "max-attempts", "endpoint-mode", "instance-tags", "region", "az-id", "vpc-id",
            "subnet-id", "instance-id", "interface-id", "addresses", "tags", "traffic-type", "ip-ranges", "vpc-cidrs", "enabled",
            "instance-metadata", "time-sync", "amazon-dns", "dhcp", "vpc-router", "windows-activation", "extra", "nitro", "routes",
            "log-json", "ingress-hook", "reject-reasons", "reject-reason-map", "region", "aws-endpoint-url", "flow-log-id", "spool-dir",
            "spool-max-bytes", "file-interval", "file-max-bytes", "shutdown-timeout", "sample-rate", "include-cidrs", "instance", "network-interface", "cluster-arn", "cluster-name", "container-instance-arn",
            "container-instance-id", "container-id", "second-container-id", "service-name", "task-definition-arn", "task-arn", "task-id", "exclude-cidrs", "include-ports", "exclude-ports", "protocols",
            "cri-socket", "pod-label", "refresh-interval", "cri-timeout",
        ];
        for k in keys {
            assert!(EXAMPLE.lines().any(|l| l.trim_start_matches("# ").starts_with(&format!("{k} = "))), "{k} missing from the example");
        }
        // And every flag of the agent is named in it.
        for flag in [
            "--iface", "--exclude-iface", "--interval", "--output", "--log-format", "--account-id", "--max-flows", "--no-pin", "--pin-dir",
            "--on-exit", "--metrics-listen", "--ethtool-stats", "--live-socket", "--log", "--log-json", "--ingress-hook", "--traffic-type", "--reject-reasons", "--reject-reason-map", "--region", "--aws-endpoint-url", "--flow-log-id",
            "--spool-dir", "--spool-max-bytes", "--file-interval", "--file-max-bytes", "--shutdown-timeout", "--sample-rate", "--include-cidr", "--exclude-cidr", "--include-port",
            "--exclude-port", "--protocol", "--kubernetes", "--cri-socket", "--k8s-pod-label", "--k8s-refresh",
            "--cri-timeout",
        ] {
            assert!(EXAMPLE.contains(&format!("flag {flag}")), "{flag} missing");
        }
    }
}
