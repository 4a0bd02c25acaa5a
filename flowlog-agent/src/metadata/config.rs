//! The `[metadata]` section of the config file.
//!
//! ```toml
//! [metadata]
//! mode = "auto"                 # ec2 | onprem | auto (default auto)
//! refresh-interval-secs = 60    # how often ENIs and addresses are re-read
//!
//! [metadata.ec2]                # used only when EC2 is selected
//! # endpoint = "http://169.254.169.254" # default: AWS_EC2_METADATA_SERVICE_ENDPOINT, else by mode
//! # endpoint-mode = "IPv6"            # IPv6-only Nitro: http://[fd00:ec2::254]
//! token-ttl-secs = 21600
//! connect-timeout-ms = 1000
//! timeout-ms = 3000
//! max-attempts = 5
//! instance-tags = false
//!
//! [metadata.onprem]             # used only when on-prem is selected
//! account-id = "123456789012"
//! region = "eu-west-1"
//! az-id = "euw1-az1"
//! vpc-id = "vpc-0a1b2c3d"
//! subnet-id = "subnet-0a1b2c3d"
//! instance-id = "i-0a1b2c3d4e5f60718"
//! instance-tags = { Name = "edge-1" }
//!
//! [metadata.onprem.interfaces.eth0]               # by name ...
//! interface-id = "eni-0a1b2c3d4e5f60718"
//! subnet-id = "subnet-99"
//! addresses = ["10.0.0.5", "2001:db8::5"]
//! tags = { role = "uplink" }
//!
//! [metadata.onprem.interfaces."02:00:5e:10:00:01"] # ... or by MAC
//! interface-id = "eni-0f0e0d0c0b0a09080"
//! ```
//! Keys are kebab-case like the flow-log field names they feed. Unknown keys
//! are errors, so a typo does not silently fall back to a default.

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use serde::Deserialize;

use super::model::MacAddr;

/// Where metadata comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// IMDSv2 at `[metadata.ec2].endpoint`.
    Ec2,
    /// `[metadata.onprem]` only; no network traffic.
    Onprem,
    /// EC2 if DMI/hypervisor files say so ([`super::detect`]), else on-prem.
    #[default]
    Auto,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct MetadataConfig {
    pub mode: Mode,
    /// Seconds between refreshes. Each EC2 refresh costs one request for the
    /// MAC list and two per ENI (addresses), a few more for a new ENI.
    pub refresh_interval_secs: u64,
    pub ec2: Ec2Config,
    pub onprem: OnPremConfig,
}

impl Default for MetadataConfig {
    fn default() -> Self {
        MetadataConfig { mode: Mode::Auto, refresh_interval_secs: 60, ec2: Ec2Config::default(), onprem: OnPremConfig::default() }
    }
}

/// IMDSv2 client settings.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Ec2Config {
    /// Base URL, `http://` only (IMDS has no TLS). Contacted only when EC2
    /// mode is selected or detected. Unset: `AWS_EC2_METADATA_SERVICE_ENDPOINT`,
    /// else the address of [`Self::endpoint_mode`] (see [`super::imds`]).
    pub endpoint: Option<String>,
    /// `IPv4` (`http://169.254.169.254`) or `IPv6` (`http://[fd00:ec2::254]`,
    /// Nitro instances with the IPv6 endpoint turned on). Unset:
    /// `AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE`, else IPv4.
    pub endpoint_mode: Option<EndpointMode>,
    /// Session token lifetime asked for, 1..=21600 s (IMDS bounds). The
    /// SDK renews a token 120 s before it ends, so below 120 s every
    /// request gets a new one.
    pub token_ttl_secs: u32,
    pub connect_timeout_ms: u64,
    /// Per-attempt limit (connect to last byte). A token PUT that hits it in a
    /// container usually means the instance's PUT response hop limit is 1
    /// (see [`super::imds`]).
    pub timeout_ms: u64,
    /// Tries per request on throttling (429), 5xx, refused connections and
    /// timeouts, with the SDK's standard backoff (exponential, jittered).
    pub max_attempts: u32,
    /// Read `meta-data/tags/instance/*` (needs "instance tags in metadata"
    /// enabled on the instance; absent otherwise). Off by default: one
    /// request per tag per refresh.
    pub instance_tags: bool,
}

/// Which of the two IMDS addresses to use without an explicit endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum EndpointMode {
    #[serde(rename = "IPv4", alias = "ipv4")]
    Ipv4,
    #[serde(rename = "IPv6", alias = "ipv6")]
    Ipv6,
}

impl std::str::FromStr for EndpointMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            _ if s.eq_ignore_ascii_case("ipv4") => Ok(EndpointMode::Ipv4),
            _ if s.eq_ignore_ascii_case("ipv6") => Ok(EndpointMode::Ipv6),
            _ => Err(format!("{s:?} is not an endpoint mode: expected IPv4 or IPv6")),
        }
    }
}

impl Default for Ec2Config {
    fn default() -> Self {
        Ec2Config {
            endpoint: None,
            endpoint_mode: None,
            token_ttl_secs: 21_600,
            connect_timeout_ms: 1_000,
            timeout_ms: 3_000,
            max_attempts: 5,
            instance_tags: false,
        }
    }
}

impl Ec2Config {
    pub fn token_ttl(&self) -> Duration {
        Duration::from_secs(self.token_ttl_secs.into())
    }
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// Host-wide values for a machine outside EC2 (or to stand in for IMDS).
/// Every field is optional; see the defaults table in [`super`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct OnPremConfig {
    pub account_id: Option<String>,
    pub region: Option<String>,
    pub az_id: Option<String>,
    pub vpc_id: Option<String>,
    pub subnet_id: Option<String>,
    pub instance_id: Option<String>,
    pub instance_tags: BTreeMap<String, String>,
    /// Keyed by interface name or MAC address; a name entry wins over a MAC
    /// entry for the same interface (entries are not merged).
    pub interfaces: BTreeMap<String, InterfaceOverride>,
}

/// Per-interface values; unset ones fall back to the section's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct InterfaceOverride {
    pub interface_id: Option<String>,
    pub account_id: Option<String>,
    pub vpc_id: Option<String>,
    pub subnet_id: Option<String>,
    /// The interface's own addresses; the first IPv4 is the primary one.
    pub addresses: Vec<IpAddr>,
    pub tags: BTreeMap<String, String>,
}

/// How an `interfaces` key is read.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum InterfaceKey {
    Name(String),
    Mac(MacAddr),
}

impl InterfaceKey {
    /// A MAC if it parses as one; otherwise it must look like a Linux
    /// interface name (1..=15 bytes, no whitespace, `/` or `:`), so a
    /// mistyped MAC is an error rather than a name that never matches.
    pub fn parse(key: &str) -> Result<Self, String> {
        if let Ok(m) = key.parse::<MacAddr>() {
            return Ok(InterfaceKey::Mac(m));
        }
        let ok = !key.is_empty() && key.len() <= 15 && !key.chars().any(|c| c.is_whitespace() || c.is_control() || c == '/' || c == ':');
        if ok {
            Ok(InterfaceKey::Name(key.to_string()))
        } else {
            Err("neither an interface name (1-15 characters, no spaces, '/' or ':') nor a MAC address".into())
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Syntax or type errors; toml's text quotes the offending line.
    #[error("config: {0}")]
    Toml(String),
    #[error("config: {key}: {problem}")]
    Key { key: String, problem: String },
}

fn key_err(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Key { key: key.into(), problem: problem.into() }
}

/// Values land in space-separated records, so an empty value or one with
/// whitespace would shift every later field.
fn check_token(key: &str, v: &Option<String>) -> Result<(), ConfigError> {
    match v {
        Some(s) if s.is_empty() => Err(key_err(key, "is empty (leave it out to get the default)")),
        Some(s) if s.chars().any(|c| c.is_whitespace() || c.is_control()) => Err(key_err(key, format!("{s:?} contains whitespace"))),
        _ => Ok(()),
    }
}

/// A key as written in TOML: bare when it can be, quoted otherwise.
fn toml_key(k: &str) -> String {
    if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        k.to_string()
    } else {
        format!("{k:?}")
    }
}

fn check_tags(key: &str, tags: &BTreeMap<String, String>) -> Result<(), ConfigError> {
    match tags.keys().find(|k| k.is_empty()) {
        Some(_) => Err(key_err(key, "has an empty tag key")),
        None => Ok(()),
    }
}

impl MetadataConfig {
    /// Reads the `[metadata]` table of a whole config file (other tables
    /// are ignored; a missing table means all defaults) and validates it.
    pub fn from_toml(doc: &str) -> Result<Self, ConfigError> {
        #[derive(Deserialize)]
        struct Doc {
            #[serde(default)]
            metadata: MetadataConfig,
        }
        let d: Doc = crate::toml_de::from_toml(doc).map_err(ConfigError::Toml)?;
        d.metadata.validate()?;
        Ok(d.metadata)
    }

    pub fn refresh_interval(&self) -> Duration {
        Duration::from_secs(self.refresh_interval_secs)
    }

    /// Checks that serde cannot express; errors name the full key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.refresh_interval_secs == 0 {
            return Err(key_err("metadata.refresh-interval-secs", "must be at least 1"));
        }
        self.ec2.validate()?;
        self.onprem.validate()
    }
}

impl Ec2Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let k = |f: &str| format!("metadata.ec2.{f}");
        if let Some(e) = &self.endpoint {
            let url: hyper::Uri = e.parse().map_err(|err| key_err(k("endpoint"), format!("{e:?} is not a URL: {err}")))?;
            if url.scheme_str() != Some("http") {
                return Err(key_err(k("endpoint"), format!("{e:?}: only http:// (the metadata service has no TLS)")));
            }
            if url.host().is_none() || !matches!(url.path(), "" | "/") || url.query().is_some() || url.authority().is_some_and(|a| a.as_str().contains('@')) {
                return Err(key_err(k("endpoint"), format!("{e:?}: give scheme, host and port only; /latest/... is added")));
            }
        }
        if !(1..=21_600).contains(&self.token_ttl_secs) {
            return Err(key_err(k("token-ttl-secs"), format!("{} is outside 1..=21600 (the bounds IMDS accepts)", self.token_ttl_secs)));
        }
        if !(1..=10).contains(&self.max_attempts) {
            return Err(key_err(k("max-attempts"), format!("{} is outside 1..=10", self.max_attempts)));
        }
        for (f, v) in [("connect-timeout-ms", self.connect_timeout_ms), ("timeout-ms", self.timeout_ms)] {
            if v == 0 {
                return Err(key_err(k(f), "must be at least 1"));
            }
        }
        Ok(())
    }
}

impl OnPremConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let k = |f: &str| format!("metadata.onprem.{f}");
        for (f, v) in [
            ("account-id", &self.account_id),
            ("region", &self.region),
            ("az-id", &self.az_id),
            ("vpc-id", &self.vpc_id),
            ("subnet-id", &self.subnet_id),
            ("instance-id", &self.instance_id),
        ] {
            check_token(&k(f), v)?;
        }
        check_tags(&k("instance-tags"), &self.instance_tags)?;
        let mut macs: BTreeMap<MacAddr, &str> = BTreeMap::new();
        for (key, o) in &self.interfaces {
            let base = format!("metadata.onprem.interfaces.{}", toml_key(key));
            match InterfaceKey::parse(key).map_err(|p| key_err(&base, p))? {
                InterfaceKey::Mac(m) => {
                    if let Some(prev) = macs.insert(m, key) {
                        return Err(key_err(&base, format!("same MAC as interfaces.{}", toml_key(prev))));
                    }
                }
                InterfaceKey::Name(_) => {}
            }
            for (f, v) in [("interface-id", &o.interface_id), ("account-id", &o.account_id), ("vpc-id", &o.vpc_id), ("subnet-id", &o.subnet_id)] {
                check_token(&format!("{base}.{f}"), v)?;
            }
            check_tags(&format!("{base}.tags"), &o.tags)?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn empty_file_and_missing_section_give_defaults() {
        assert_eq!(MetadataConfig::from_toml("").unwrap(), MetadataConfig::default());
        assert_eq!(MetadataConfig::from_toml("[other]\nx = 1\n").unwrap(), MetadataConfig::default());
        let d = MetadataConfig::default();
        assert_eq!(d.mode, Mode::Auto);
        assert_eq!((d.ec2.endpoint.as_deref(), d.ec2.endpoint_mode), (None, None));
        assert_eq!(d.ec2.token_ttl(), Duration::from_secs(21_600));
        assert_eq!(d.refresh_interval(), Duration::from_secs(60));
        d.validate().unwrap();
    }

    /// The host-wide keys of an `[metadata.onprem]` section the tests share.
    pub(crate) const ONPREM_HOST: &str = r#"account-id = "123456789012"
            region = "eu-west-1"
            az-id = "euw1-az1"
            vpc-id = "vpc-1"
            subnet-id = "subnet-1"
            instance-id = "i-1""#;

    #[test]
    fn full_onprem_section() {
        let c = MetadataConfig::from_toml(&format!(
            r#"
            [metadata]
            mode = "onprem"
            refresh-interval-secs = 30
            [metadata.onprem]
            {ONPREM_HOST}
            instance-tags = {{ Name = "edge-1" }}
            [metadata.onprem.interfaces.eth0]
            interface-id = "eni-0a"
            subnet-id = "subnet-2"
            addresses = ["10.0.0.5", "2001:db8::5"]
            tags = {{ role = "uplink" }}
            [metadata.onprem.interfaces."02:00:5E:10:00:01"]
            interface-id = "eni-0b"
            "#,
        ))
        .unwrap();
        assert_eq!(c.mode, Mode::Onprem);
        assert_eq!(c.refresh_interval_secs, 30);
        let o = &c.onprem;
        assert_eq!(o.account_id.as_deref(), Some("123456789012"));
        assert_eq!((o.region.as_deref(), o.az_id.as_deref(), o.instance_id.as_deref()), (Some("eu-west-1"), Some("euw1-az1"), Some("i-1")));
        assert_eq!(o.instance_tags.get("Name").map(String::as_str), Some("edge-1"));
        let e = &o.interfaces["eth0"];
        assert_eq!(e.interface_id.as_deref(), Some("eni-0a"));
        assert_eq!(e.vpc_id, None);
        assert_eq!(e.addresses, vec!["10.0.0.5".parse::<IpAddr>().unwrap(), "2001:db8::5".parse().unwrap()]);
        assert_eq!(o.interfaces["02:00:5E:10:00:01"].interface_id.as_deref(), Some("eni-0b"));
    }

    #[test]
    fn ec2_section() {
        let c = MetadataConfig::from_toml(
            "[metadata]\nmode = \"ec2\"\n[metadata.ec2]\nendpoint = \"http://[fd00:ec2::254]\"\ntoken-ttl-secs = 60\ninstance-tags = true\n",
        )
        .unwrap();
        assert_eq!(c.mode, Mode::Ec2);
        assert_eq!((c.ec2.endpoint.as_deref().unwrap(), c.ec2.token_ttl_secs, c.ec2.instance_tags), ("http://[fd00:ec2::254]", 60, true));
        assert_eq!(c.ec2.max_attempts, Ec2Config::default().max_attempts);
    }

    /// Each bad input fails, and the message names the key at fault.
    #[test]
    fn bad_input_names_the_key() {
        let cases: &[(&str, &str)] = &[
            ("[metadata]\nmode = \"ec3\"", "metadata.mode"),
            ("[metadata]\nrefresh-interval-secs = 0", "metadata.refresh-interval-secs"),
            ("[metadata]\nrefresh-interval-secs = \"60\"", "refresh-interval-secs"),
            ("[metadata]\nrefresh_interval_secs = 60", "refresh_interval_secs"),
            ("[metadata.onprem]\naccount-id = \"\"", "metadata.onprem.account-id"),
            ("[metadata.onprem]\nacount-id = \"1\"", "acount-id"),
            ("[metadata.onprem]\nregion = 5", "metadata.onprem.region"),
            ("[metadata.onprem]\nvpc-id = \"vpc 1\"", "metadata.onprem.vpc-id"),
            ("[metadata.onprem]\ninstance-tags = { \"\" = \"x\" }", "metadata.onprem.instance-tags"),
            ("[metadata.onprem.interfaces.eth0]\ninterface-id = \"eni 1\"", "metadata.onprem.interfaces.eth0.interface-id"),
            ("[metadata.onprem.interfaces.eth0]\naddresses = [\"10.0.0.300\"]", "metadata.onprem.interfaces.eth0.addresses[0]"),
            ("[metadata.onprem.interfaces.eth0]\nsubnet = \"s\"", "metadata.onprem.interfaces.eth0.subnet"),
            ("[metadata.onprem.interfaces.\"02:00:5e:10:00:zz\"]\ninterface-id = \"eni-1\"", "metadata.onprem.interfaces.\"02:00:5e:10:00:zz\""),
            ("[metadata.onprem.interfaces.averyveryverylongname]", "metadata.onprem.interfaces.averyveryverylongname:"),
            (
                "[metadata.onprem.interfaces.\"02:00:5e:10:00:01\"]\n[metadata.onprem.interfaces.\"02-00-5E-10-00-01\"]",
                "metadata.onprem.interfaces.\"02:00:5e:10:00:01\"",
            ),
            ("[metadata.ec2]\nendpoint = \"https://169.254.169.254\"", "metadata.ec2.endpoint"),
            ("[metadata.ec2]\nendpoint = \"http://169.254.169.254/latest\"", "metadata.ec2.endpoint"),
            ("[metadata.ec2]\nendpoint = \"not a url\"", "metadata.ec2.endpoint"),
            ("[metadata.ec2]\ntoken-ttl-secs = 21601", "metadata.ec2.token-ttl-secs"),
            ("[metadata.ec2]\ntoken-ttl-secs = 0", "metadata.ec2.token-ttl-secs"),
            ("[metadata.ec2]\ntoken-ttl-secs = -1", "metadata.ec2.token-ttl-secs"),
            ("[metadata.ec2]\nmax-attempts = 0", "metadata.ec2.max-attempts"),
            ("[metadata.ec2]\ntimeout-ms = 0", "metadata.ec2.timeout-ms"),
            ("[metadata.ec2]\nendpoint-mode = \"ipv5\"", "metadata.ec2.endpoint-mode"),
            ("[metadata.ec2]\nbackoff-base-ms = 500", "backoff-base-ms"),
            ("[metadata]\nmode = ", "mode"),
        ];
        for (doc, key) in cases {
            let e = MetadataConfig::from_toml(doc).expect_err(doc).to_string();
            assert!(e.contains(key), "error for {doc:?} does not name {key:?}: {e}");
        }
    }

    #[test]
    fn interface_keys() {
        assert_eq!(InterfaceKey::parse("eth0"), Ok(InterfaceKey::Name("eth0".into())));
        assert_eq!(InterfaceKey::parse("0A-00-00-00-00-01"), Ok(InterfaceKey::Mac(MacAddr([10, 0, 0, 0, 0, 1]))));
        assert!(InterfaceKey::parse("eth0:1").is_err());
        assert!(InterfaceKey::parse("").is_err());
        assert!(InterfaceKey::parse("a b").is_err());
    }
}
