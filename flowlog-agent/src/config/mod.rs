//! The configuration: a TOML file, overridden by environment variables,
//! overridden by command-line flags. Every key of the file has a flag and a
//! variable (`interval` ↔ `--interval` ↔ `FLOWLOG_INTERVAL`).
//!
//! Errors name the key, the value and what is accepted.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;

use flowlog_records::format::Format;
use crate::{
    capture::{reject::RejectConfig, IngressHook, KernelFilters},
    enrich::EnrichConfig,
    metadata::MetadataConfig,
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

/// The file. Absent keys take the defaults below; unknown keys are errors
/// (a typo must not silently fall back to a default).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct FileConfig {
    pub interfaces: Option<Vec<String>>,
    pub exclude_interfaces: Option<Vec<String>>,
    pub interval: Option<u64>,
    pub outputs: Option<Vec<String>>,
    pub region: Option<String>,
    pub aws_endpoint_url: Option<String>,
    pub flow_log_id: Option<String>,
    pub spool_dir: Option<PathBuf>,
    pub spool_max_bytes: Option<u64>,
    pub file_interval: Option<u64>,
    pub file_max_bytes: Option<usize>,
    pub shutdown_timeout: Option<u64>,
    pub log_format: Option<String>,
    pub account_id: Option<String>,
    pub max_flows: Option<u32>,
    pub pin_dir: Option<PathBuf>,
    pub pin: Option<bool>,
    pub on_exit: Option<String>,
    pub metrics_listen: Option<String>,
    pub log: Option<String>,
    pub log_json: Option<bool>,
    pub ingress_hook: Option<String>,
    pub reject_reasons: Option<Vec<String>>,
    pub reject_reason_map: Option<Vec<String>>,
    pub sample_rate: Option<u32>,
    pub filters: KernelFilters,
    pub metadata: MetadataConfig,
    pub enrich: EnrichConfig,
}

/// Values from flags or environment variables (clap fills both); `None`
/// where neither was given.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub interfaces: Vec<String>,
    pub exclude_interfaces: Vec<String>,
    pub interval: Option<u64>,
    pub outputs: Vec<String>,
    pub region: Option<String>,
    pub aws_endpoint_url: Option<String>,
    pub flow_log_id: Option<String>,
    pub spool_dir: Option<PathBuf>,
    pub spool_max_bytes: Option<u64>,
    pub file_interval: Option<u64>,
    pub file_max_bytes: Option<usize>,
    pub shutdown_timeout: Option<u64>,
    pub log_format: Option<String>,
    pub account_id: Option<String>,
    pub max_flows: Option<u32>,
    pub pin_dir: Option<PathBuf>,
    /// `Some`: given as a flag or variable (which then wins over the file).
    pub no_pin: Option<bool>,
    pub on_exit: Option<String>,
    pub metrics_listen: Option<String>,
    pub log: Option<String>,
    pub log_json: Option<bool>,
    pub ingress_hook: Option<String>,
    pub traffic_type: Option<String>,
    pub reject_reasons: Vec<String>,
    pub reject_reason_map: Vec<String>,
    pub sample_rate: Option<u32>,
    pub include_cidrs: Vec<ipnet::IpNet>,
    pub exclude_cidrs: Vec<ipnet::IpNet>,
    pub include_ports: Vec<u16>,
    pub exclude_ports: Vec<u16>,
    pub protocols: Vec<u8>,
}

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

/// A list from the flags if any were given, else the file's.
fn pick<T>(cli: Vec<T>, file: Vec<T>) -> Vec<T> {
    if cli.is_empty() {
        file
    } else {
        cli
    }
}

impl FileConfig {
    pub fn load(path: &std::path::Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Read { path: path.display().to_string(), reason: e.to_string() })?;
        Self::parse(&text).map_err(|reason| ConfigError::Syntax { path: path.display().to_string(), reason })
    }

    /// Errors carry the full key (`metadata.onprem.account-id: ...`).
    pub fn parse(text: &str) -> Result<FileConfig, String> {
        let cfg: FileConfig = crate::toml_de::from_toml(text)?;
        cfg.metadata.validate().map_err(|e| e.to_string())?;
        Ok(cfg)
    }
}


/// Everything the agent runs with, after precedence and validation.
#[derive(Clone, Debug)]
pub struct Settings {
    pub agent: Config,
    pub log: String,
    /// The agent's own logs as JSON lines instead of text.
    pub log_json: bool,
    pub metadata: MetadataConfig,
    pub enrich: EnrichConfig,
}

impl Settings {
    pub fn resolve(file: FileConfig, o: Overrides) -> Result<Settings, ConfigError> {
        let pick_vec = |cli: Vec<String>, file: Option<Vec<String>>| if cli.is_empty() { file.unwrap_or_default() } else { cli };
        let interval = o.interval.or(file.interval).unwrap_or(DEFAULT_INTERVAL);
        if !(1..=3600).contains(&interval) {
            return Err(invalid("interval", interval, "seconds from 1 to 3600 (AWS offers 60 and 600)"));
        }
        let max_flows = o.max_flows.or(file.max_flows).unwrap_or(DEFAULT_MAX_FLOWS);
        if !(1..=16_777_216).contains(&max_flows) {
            return Err(invalid("max-flows", max_flows, "1 to 16777216"));
        }
        let outputs = pick_vec(o.outputs, file.outputs);
        let outputs = if outputs.is_empty() { vec!["stdout".to_string()] } else { outputs };
        let outputs = outputs
            .iter()
            .map(|s| s.parse::<Output>().map_err(|e| invalid("outputs", s, e)))
            .collect::<Result<Vec<_>, _>>()?;
        let defaults = ShipConfig::default();
        let file_interval = o.file_interval.or(file.file_interval).unwrap_or(defaults.flush_interval.as_secs());
        if !(1..=3600).contains(&file_interval) {
            return Err(invalid("file-interval", file_interval, "seconds from 1 to 3600 (AWS: 300)"));
        }
        let file_max_bytes = o.file_max_bytes.or(file.file_max_bytes).unwrap_or(defaults.objects.rotate_bytes);
        if file_max_bytes == 0 {
            return Err(invalid("file-max-bytes", 0, "a size in bytes above 0 (AWS: 75000000)"));
        }
        let spool_max_bytes = o.spool_max_bytes.or(file.spool_max_bytes).unwrap_or(defaults.spool_max_bytes);
        if spool_max_bytes < 1 << 20 {
            return Err(invalid("spool-max-bytes", spool_max_bytes, "at least 1048576 (1 MiB)"));
        }
        let ship = ShipConfig {
            outputs,
            aws: AwsSettings { region: o.region.or(file.region), endpoint_url: o.aws_endpoint_url.or(file.aws_endpoint_url) },
            flow_log_id: o.flow_log_id.or(file.flow_log_id).unwrap_or(defaults.flow_log_id.clone()),
            spool_dir: o.spool_dir.or(file.spool_dir).unwrap_or_else(crate::ship::default_spool_dir),
            spool_max_bytes,
            flush_interval: Duration::from_secs(file_interval),
            objects: ObjectOptions { rotate_bytes: file_max_bytes, ..defaults.objects.clone() },
            shutdown_timeout: Duration::from_secs(o.shutdown_timeout.or(file.shutdown_timeout).unwrap_or(defaults.shutdown_timeout.as_secs())),
            ..defaults
        };
        let format = match o.log_format.or(file.log_format) {
            Some(spec) => Format::parse(&spec).map_err(|e| invalid("log-format", &spec, e))?,
            None => Format::default(),
        };
        let account_id = o.account_id.or(file.account_id);
        if let Some(a) = &account_id {
            if a.is_empty() || a.contains(char::is_whitespace) {
                return Err(invalid("account-id", a, "a non-empty value without spaces"));
            }
        }
        let on_exit = match o.on_exit.or(file.on_exit).as_deref() {
            None | Some("detach") => OnExit::Detach,
            Some("keep") => OnExit::Keep,
            Some(v) => return Err(invalid("on-exit", v, "detach or keep")),
        };
        let listen = o.metrics_listen.or(file.metrics_listen).unwrap_or_else(|| DEFAULT_METRICS_LISTEN.into());
        let metrics_listen: Option<SocketAddr> = match listen.as_str() {
            "off" => None,
            a => Some(a.parse().map_err(|_| invalid("metrics-listen", a, "off, or an address such as 127.0.0.1:9750 or [::1]:9750"))?),
        };
        let pin = o.no_pin.map_or_else(|| file.pin.unwrap_or(true), |no| !no);
        let pin_dir = o.pin_dir.or(file.pin_dir).unwrap_or_else(|| DEFAULT_PIN_DIR.into());
        if pin && !pin_dir.is_absolute() {
            return Err(invalid("pin-dir", pin_dir.display(), "an absolute path on a BPF filesystem"));
        }
        let ingress_hook = match o.ingress_hook.or(file.ingress_hook) {
            Some(h) => h.parse::<IngressHook>().map_err(|e| invalid("ingress-hook", &h, e))?,
            None => IngressHook::Auto,
        };
        let reasons = pick(o.reject_reasons, file.reject_reasons.unwrap_or_default());
        let reject_explicit = !reasons.is_empty();
        let reason_map = pick(o.reject_reason_map, file.reject_reason_map.unwrap_or_default());
        let reject = crate::capture::reject::RejectConfig::from_args(&reasons, &reason_map)
            .map_err(|e| invalid("reject-reasons", reasons.join(","), format!("{e:#}")))?;
        let mut enrich = file.enrich;
        if let Some(t) = o.traffic_type {
            enrich.traffic_type = t.parse().map_err(|e| invalid("traffic-type", &t, e))?;
        }
        let sample_rate = o.sample_rate.or(file.sample_rate).unwrap_or(1);
        if sample_rate == 0 {
            return Err(invalid("sample-rate", 0, "1 (every packet) or more (1 in N, counts scaled by N)"));
        }
        let filters = KernelFilters {
            include_cidrs: pick(o.include_cidrs, file.filters.include_cidrs),
            exclude_cidrs: pick(o.exclude_cidrs, file.filters.exclude_cidrs),
            include_ports: pick(o.include_ports, file.filters.include_ports),
            exclude_ports: pick(o.exclude_ports, file.filters.exclude_ports),
            protocols: pick(o.protocols, file.filters.protocols),
        };
        if let Err((key, n)) = filters.validate() {
            return Err(invalid(key, format!("{n} entries"), format!("at most {}", crate::capture::MAX_FILTER_ENTRIES)));
        }
        let include = pick_vec(o.interfaces, file.interfaces);
        let exclude = pick_vec(o.exclude_interfaces, file.exclude_interfaces);
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
                sample_rate,
                filters,
                ingress_hook,
                reject,
                reject_explicit,
            },
            log: o.log.or(file.log).unwrap_or_else(|| "info".into()),
            log_json: o.log_json.or(file.log_json).unwrap_or(false),
            metadata: file.metadata,
            enrich,
        })
    }

    /// The effective configuration as a config file would say it. Nothing
    /// here is secret today (AWS credentials never pass through the config);
    /// values of keys that look like secrets are redacted all the same.
    pub fn render(&self) -> String {
        let a = &self.agent;
        let list = |v: &[String]| format!("[{}]", v.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", "));
        let mut out = String::new();
        let mut kv = |k: &str, v: String| {
            let secret = ["secret", "password", "token"].iter().any(|s| k.contains(s));
            out.push_str(&format!("{k} = {}\n", if secret { "\"<redacted>\"".to_string() } else { v }));
        };
        kv("interfaces", list(&a.ifaces));
        kv("exclude-interfaces", list(&a.exclude_ifaces));
        kv("interval", a.interval.as_secs().to_string());
        kv("outputs", list(&a.ship.outputs.iter().map(|o| o.to_string()).collect::<Vec<_>>()));
        kv("region", format!("{:?}", a.ship.aws.region.clone().unwrap_or_default()));
        kv("aws-endpoint-url", format!("{:?}", a.ship.aws.endpoint_url.clone().unwrap_or_default()));
        kv("flow-log-id", format!("{:?}", a.ship.flow_log_id));
        kv("spool-dir", format!("{:?}", a.ship.spool_dir.display().to_string()));
        kv("spool-max-bytes", a.ship.spool_max_bytes.to_string());
        kv("file-interval", a.ship.flush_interval.as_secs().to_string());
        kv("file-max-bytes", a.ship.objects.rotate_bytes.to_string());
        kv("shutdown-timeout", a.ship.shutdown_timeout.as_secs().to_string());
        kv("log-format", format!("{:?}", a.format.spec()));
        kv("account-id", a.account_id.as_ref().map_or("\"<from metadata>\"".into(), |s| format!("{s:?}")));
        kv("max-flows", a.max_flows.to_string());
        kv("pin", a.pin_root.is_some().to_string());
        kv("pin-dir", format!("{:?}", a.pin_root.as_ref().map_or(String::new(), |p| p.display().to_string())));
        kv("on-exit", format!("{:?}", if a.on_exit == OnExit::Keep { "keep" } else { "detach" }));
        kv("metrics-listen", format!("{:?}", a.metrics_listen.map_or("off".to_string(), |s| s.to_string())));
        kv("log", format!("{:?}", self.log));
        kv("log-json", self.log_json.to_string());
        kv("ingress-hook", format!("{:?}", format!("{:?}", a.ingress_hook).to_lowercase()));
        kv("traffic-type", format!("{:?}", format!("{:?}", self.enrich.traffic_type).to_uppercase()));
        kv("reject-reasons", list(&a.reject.reasons));
        kv("reject-reason-map", list(&a.reject.reason_map.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>()));
        kv("sample-rate", a.sample_rate.to_string());
        let f = &a.filters;
        let nets = |v: &[ipnet::IpNet]| list(&v.iter().map(|n| n.to_string()).collect::<Vec<_>>());
        let nums = |v: Vec<String>| format!("[{}]", v.join(", "));
        out.push_str("\n[filters]\n");
        out.push_str(&format!("include-cidrs = {}\n", nets(&f.include_cidrs)));
        out.push_str(&format!("exclude-cidrs = {}\n", nets(&f.exclude_cidrs)));
        out.push_str(&format!("include-ports = {}\n", nums(f.include_ports.iter().map(u16::to_string).collect())));
        out.push_str(&format!("exclude-ports = {}\n", nums(f.exclude_ports.iter().map(u16::to_string).collect())));
        out.push_str(&format!("protocols = {}\n", nums(f.protocols.iter().map(u8::to_string).collect())));
        out.push_str(&format!("\n# [metadata]\n# {:?}\n", self.metadata));
        out.push_str(&format!("\n# [enrich]\n# {:?}\n", self.enrich));
        out
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
            ("outputs = [\"s3\"]", "invalid outputs = \"s3\": invalid output \"s3\": expected `stdout`, `file:<path>`, `dir:<path>[?options]`, `s3://<bucket>[/<prefix>][?options]` (options: format=text|parquet, hive, per-hour, joined with &), `cloudwatch:<log-group>[?retention=<days>]` or `firehose:<delivery-stream>`; the AWS ones also take region=<region>, endpoint=<url> and role-arn=<arn>"),
            ("spool-max-bytes = 10", "invalid spool-max-bytes = \"10\": at least 1048576 (1 MiB)"),
            ("file-interval = 0", "invalid file-interval = \"0\": seconds from 1 to 3600 (AWS: 300)"),
            ("account-id = \"a b\"", "invalid account-id = \"a b\": a non-empty value without spaces"),
            ("pin-dir = \"bpf\"", "invalid pin-dir = \"bpf\": an absolute path on a BPF filesystem"),
            ("ingress-hook = \"ebpf\"", "invalid ingress-hook = \"ebpf\": auto, xdp or tc"),
            ("sample-rate = 0", "invalid sample-rate = \"0\": 1 (every packet) or more (1 in N, counts scaled by N)"),
            ("interfaces = [\"veth[\"]", "invalid interfaces = \"veth[\": invalid interface pattern \"veth[\": unclosed character class; missing ']'"),
        ];
        for (file, want) in cases {
            assert_eq!(resolve(file, Overrides::default()).unwrap_err(), *want, "{file}");
        }
        let e = resolve("log-format = \"${nope}\"", Overrides::default()).unwrap_err();
        assert!(e.starts_with("invalid log-format = \"${nope}\": unknown field \"${nope}\""), "{e}");
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
        assert_eq!(parsed.filters, KernelFilters::default());
        // Every key (commented or not) appears in the example.
        let keys = [
            "interfaces", "exclude-interfaces", "interval", "outputs", "log-format", "account-id", "max-flows", "pin", "pin-dir",
            "on-exit", "metrics-listen", "log", "mode", "refresh-interval-secs", "endpoint", "token-ttl-secs", "connect-timeout-ms",
            "timeout-ms", "max-attempts", "endpoint-mode", "instance-tags", "region", "az-id", "vpc-id",
            "subnet-id", "instance-id", "interface-id", "addresses", "tags", "traffic-type", "ip-ranges", "vpc-cidrs", "enabled",
            "instance-metadata", "time-sync", "amazon-dns", "dhcp", "vpc-router", "windows-activation", "extra", "nitro", "routes",
            "log-json", "ingress-hook", "reject-reasons", "reject-reason-map", "region", "aws-endpoint-url", "flow-log-id", "spool-dir",
            "spool-max-bytes", "file-interval", "file-max-bytes", "shutdown-timeout", "sample-rate", "include-cidrs", "instance", "network-interface", "cluster-arn", "cluster-name", "container-instance-arn",
            "container-instance-id", "container-id", "second-container-id", "service-name", "task-definition-arn", "task-arn", "task-id", "exclude-cidrs", "include-ports", "exclude-ports", "protocols",
        ];
        for k in keys {
            assert!(EXAMPLE.lines().any(|l| l.trim_start_matches("# ").starts_with(&format!("{k} = "))), "{k} missing from the example");
        }
        // And every flag of the agent is named in it.
        for flag in [
            "--iface", "--exclude-iface", "--interval", "--output", "--log-format", "--account-id", "--max-flows", "--no-pin", "--pin-dir",
            "--on-exit", "--metrics-listen", "--log", "--log-json", "--ingress-hook", "--traffic-type", "--reject-reasons", "--reject-reason-map", "--region", "--aws-endpoint-url", "--flow-log-id",
            "--spool-dir", "--spool-max-bytes", "--file-interval", "--file-max-bytes", "--shutdown-timeout", "--sample-rate", "--include-cidr", "--exclude-cidr", "--include-port",
            "--exclude-port", "--protocol",
        ] {
            assert!(EXAMPLE.contains(&format!("flag {flag}")), "{flag} missing");
        }
    }
}
