//! What an output is to the rest of the ship stage: a destination kind's
//! [`Registration`] (its syntax and parser), the parsed [`OutputSpec`] that
//! builds itself (a direct [`Sink`], or a spooled [`Destination`] after its
//! startup check), and the [`StartContext`] startup gives it. Each
//! destination folder implements these; `ship/mod.rs` lists the folders.

use std::{any::Any, fmt, future::Future, pin::Pin, sync::Arc};

use anyhow::Result;
use aws_config::SdkConfig;

use super::{
    aws::{AwsSettings, OutputAws},
    destination::{Destination, ShipStats},
    object::ObjectOptions,
    retry::RetryPolicy,
};

/// Parses an output of one kind; `None` when `s` is not one.
pub type ParseFn = fn(s: &str) -> Option<Result<Box<dyn OutputSpec>, String>>;

/// One destination kind, as its folder registers it.
pub struct Registration {
    /// Its syntax, for the error on an output no kind takes.
    pub syntax: &'static str,
    pub parse: ParseFn,
}

/// The parser of a kind whose outputs are `<scheme><rest>`: `parse(s, rest)`.
pub fn parse_scheme<T: OutputSpec>(s: &str, scheme: &str, parse: impl FnOnce(&str, &str) -> Result<T, String>) -> Option<Result<Box<dyn OutputSpec>, String>> {
    let rest = s.strip_prefix(scheme)?;
    Some(parse(s, rest).map(|o| Box::new(o) as Box<dyn OutputSpec>))
}

/// The parser of an AWS kind, `<scheme><path>[?query]`: `parse(s, path, aws,
/// query)` with the per-output AWS options ([`OutputAws::take`]) taken out of
/// the query first, so every AWS kind takes them the same way.
pub fn parse_aws_scheme<T: OutputSpec>(
    s: &str,
    scheme: &str,
    parse: fn(&str, &str, OutputAws, Option<&str>) -> Result<T, String>,
) -> Option<Result<Box<dyn OutputSpec>, String>> {
    parse_scheme(s, scheme, |s, rest| {
        let (path, q) = split_query(rest);
        let (aws, q) = OutputAws::take(s, q)?;
        parse(s, path, aws, q.as_deref())
    })
}

/// Splits `path?query`.
pub fn split_query(rest: &str) -> (&str, Option<&str>) {
    rest.split_once('?').map_or((rest, None), |(a, b)| (a, Some(b)))
}

/// `?a&b` of query parts, or nothing.
pub fn query(parts: Vec<String>) -> String {
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

pub type StartFut<'a> = Pin<Box<dyn Future<Output = Result<Box<dyn Destination>>> + Send + 'a>>;

/// A parsed output: it knows its options and builds its own delivery. Its
/// `Display` is the canonical URL, which names it (spool cursor, metrics).
pub trait OutputSpec: fmt::Debug + fmt::Display + Send + Sync + Any {
    /// Whether records for it go through the spool (else: a direct [`Sink`]).
    fn spooled(&self) -> bool {
        true
    }
    /// The per-output AWS options of an AWS destination.
    fn aws(&self) -> Option<&OutputAws> {
        None
    }
    /// A direct output's sink.
    fn open(&self) -> Result<Box<dyn Sink>> {
        anyhow::bail!("{self} is a spooled output, not a direct sink")
    }
    /// Checks that need no service call: made for every output before any
    /// is started.
    fn validate(&self, _cx: &StartContext<'_>) -> Result<()> {
        Ok(())
    }
    /// Builds the spooled destination and runs its startup check (a clear
    /// error for a missing bucket, log group or delivery stream, access
    /// denied, an unusable directory).
    fn start<'a>(&'a self, _cx: StartContext<'a>) -> StartFut<'a> {
        let e = anyhow::anyhow!("{self} is a direct output, not a spooled destination");
        Box::pin(async move { Err(e) })
    }
}

/// A direct output, written as each window is shipped.
pub trait Sink: Send {
    /// Writes a batch of newline-terminated records in one go: the parts,
    /// in order (a window formatted on several cores is one part per core,
    /// not copied into one buffer).
    fn write_batch(&mut self, parts: &[&[u8]]) -> Result<()>;
    fn describe(&self) -> String;
}

/// A spooled destination that checks at start that it can deliver (its
/// resource exists, the credentials may write to it): a failure stops the
/// start, or refuses a reload, with the check's error.
pub trait StartupCheck: Destination + Sync + Sized {
    fn startup_check(&self) -> impl Future<Output = Result<()>> + Send;

    /// Checked, then boxed: the end of an [`OutputSpec::start`].
    fn checked<'a>(self) -> StartFut<'a> {
        Box::pin(async move {
            self.startup_check().await?;
            anyhow::Ok(Box::new(self) as Box<dyn Destination>)
        })
    }
}

/// What startup hands a spooled destination to build itself with.
pub struct StartContext<'a> {
    /// The output's canonical name.
    pub name: &'a str,
    /// `account-id` used in S3 key names.
    pub account_id: &'a str,
    pub flow_log_id: &'a str,
    /// The global AWS settings.
    pub aws: &'a AwsSettings,
    /// The region of the global settings, the SDK's chain or `AWS_REGION`.
    pub known_region: Option<&'a str>,
    /// The SDK configuration for the output's [`OutputSpec::aws`] options.
    pub sdk: Option<&'a SdkConfig>,
    pub objects: &'a ObjectOptions,
    pub retry: RetryPolicy,
    pub stats: Arc<ShipStats>,
}

impl StartContext<'_> {
    /// The region in key names: only `dir:` outputs may lack one (a
    /// machine outside AWS).
    pub fn region(&self) -> &str {
        self.known_region.unwrap_or("local")
    }

    /// The SDK configuration of an AWS destination (loaded by startup for
    /// every output whose [`OutputSpec::aws`] is `Some`).
    pub fn sdk(&self) -> &SdkConfig {
        self.sdk.expect("startup loads an SDK configuration for every AWS output")
    }
}

/// An output of any registered kind (`s3://bucket?format=parquet`, ...).
#[derive(Clone)]
pub struct Output(pub Arc<dyn OutputSpec>);

impl Output {
    /// Its options, when it is of kind `T`.
    pub fn spec<T: OutputSpec>(&self) -> Option<&T> {
        let any: &dyn Any = &*self.0;
        any.downcast_ref()
    }
}

impl std::ops::Deref for Output {
    type Target = dyn OutputSpec;
    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Outputs are the same when their canonical names are.
impl PartialEq for Output {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl Eq for Output {}
