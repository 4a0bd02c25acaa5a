//! IMDSv2 through the AWS SDK's client (`aws_config::imds::Client`).
//!
//! The SDK does the protocol: a `PUT /latest/api/token` with the wanted
//! lifetime, the token on every `GET /latest/...`, one cached token reused
//! until 120 s before it expires (so a TTL below that gets a fresh token per
//! request), and its standard retry strategy (exponential backoff with
//! jitter, a retry quota). What is added here:
//! - the endpoint: `[metadata.ec2] endpoint`, else the standard
//!   `AWS_EC2_METADATA_SERVICE_ENDPOINT`, else the mode (`endpoint-mode`,
//!   else `AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE`: `IPv4`
//!   `http://169.254.169.254`, `IPv6` `http://[fd00:ec2::254]`), resolved
//!   here so the agent knows which address to keep out of its flow logs;
//! - retries of throttling (429), 5xx, refused connections and timeouts
//!   (the SDK's default classifier retries only 5xx and 401, for a quick
//!   credential chain; an agent refreshing in the background wants more);
//! - a 401 (the token was revoked: the instance was stopped and started)
//!   gets a new client, so a new token, and the request is repeated once:
//!   the SDK retries a 401 with the cached token, which cannot help;
//! - 404 is `None` (the item does not exist on this instance), and errors
//!   that say what failed, where, and what to do.
//!
//! # Containers and the hop limit
//! The token PUT response is sent with an IP TTL equal to the instance's
//! "PUT response hop limit", 1 by default. An agent in a container behind a
//! bridge is one hop further away, so the response is dropped and the PUT
//! just times out while plain connections work. Such instances need the
//! limit raised to 2: `aws ec2 modify-instance-metadata-options
//! --instance-id i-... --http-put-response-hop-limit 2` (or host networking).
//! A timed-out PUT names this in its error.

use std::{error::Error as _, sync::RwLock};

use aws_config::imds::client::error::{ImdsError as SdkImdsError, TokenError};
use aws_config::provider_config::ProviderConfig;
use aws_sdk_s3::error::SdkError;
use aws_smithy_runtime_api::client::{
    interceptors::context::InterceptorContext,
    orchestrator::HttpResponse,
    retries::classifiers::{ClassifyRetry, RetryAction, SharedRetryClassifier},
};
use serde::de::DeserializeOwned;
use tracing::debug;

use super::config::{Ec2Config, EndpointMode};

pub const ENDPOINT_ENV: &str = "AWS_EC2_METADATA_SERVICE_ENDPOINT";
pub const ENDPOINT_MODE_ENV: &str = "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE";
pub const IPV4_ENDPOINT: &str = "http://169.254.169.254";
pub const IPV6_ENDPOINT: &str = "http://[fd00:ec2::254]";

const HOP_LIMIT_HINT: &str = " (a token PUT that times out from a container usually means the instance's metadata \
PUT response hop limit is 1; it must be 2 or more: aws ec2 modify-instance-metadata-options --http-put-response-hop-limit 2)";

#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    #[error("cannot set up the client for instance metadata: {0}")]
    Client(String),
    #[error(
        "instance metadata at {endpoint} refused {what} (HTTP 403): the metadata service is turned off for this instance, or it does not allow this request"
    )]
    Forbidden { endpoint: String, what: String },
    #[error("instance metadata at {endpoint} answered HTTP {status} to {what}")]
    Status { endpoint: String, what: String, status: u16 },
    #[error("instance metadata at {endpoint} rejected a freshly issued token for {what} (HTTP 401 twice)")]
    Unauthorized { endpoint: String, what: String },
    #[error("no usable answer from instance metadata at {endpoint} for {what} after up to {attempts} attempt(s); last: {last}{hint}")]
    GaveUp { endpoint: String, what: String, attempts: u32, last: String, hint: &'static str },
    #[error("instance metadata {what}: {problem}")]
    Invalid { what: String, problem: String },
}

/// What to retry: throttling, server errors, and failures without an
/// answer (refused, reset, timed out). Not 401 (see the module doc), 403
/// or other client errors.
#[derive(Debug)]
struct Classifier;

impl ClassifyRetry for Classifier {
    fn name(&self) -> &'static str {
        "flowlog IMDS"
    }
    fn classify_retry(&self, ctx: &InterceptorContext) -> RetryAction {
        if let Some(r) = ctx.response() {
            return match r.status().as_u16() {
                429 => RetryAction::throttling_error(),
                s if s >= 500 => RetryAction::server_error(),
                _ => RetryAction::NoActionIndicated,
            };
        }
        match ctx.output_or_error() {
            Some(Err(e)) if e.is_connector_error() || e.is_timeout_error() || e.is_response_error() => RetryAction::transient_error(),
            _ => RetryAction::NoActionIndicated,
        }
    }
}

/// The endpoint as the SDK would choose it, with the config file in the
/// place of explicit settings: config endpoint, `AWS_EC2_METADATA_SERVICE_ENDPOINT`,
/// config mode, `AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE`, IPv4.
pub fn resolve_endpoint(cfg: &Ec2Config, env: impl Fn(&str) -> Option<String>) -> Result<String, ImdsError> {
    if let Some(e) = &cfg.endpoint {
        return Ok(e.trim_end_matches('/').to_string());
    }
    if let Some(e) = env(ENDPOINT_ENV).filter(|e| !e.is_empty()) {
        let u: hyper::Uri = e.parse().map_err(|err| ImdsError::Client(format!("{ENDPOINT_ENV}={e:?} is not a URL: {err}")))?;
        if u.scheme_str() != Some("http") || u.host().is_none() {
            return Err(ImdsError::Client(format!("{ENDPOINT_ENV}={e:?}: expected http://host[:port]")));
        }
        return Ok(e.trim_end_matches('/').to_string());
    }
    let mode = match cfg.endpoint_mode {
        Some(m) => m,
        None => match env(ENDPOINT_MODE_ENV).filter(|m| !m.is_empty()) {
            Some(m) => m.parse().map_err(|p| ImdsError::Client(format!("{ENDPOINT_MODE_ENV}: {p}")))?,
            None => EndpointMode::Ipv4,
        },
    };
    Ok(match mode {
        EndpointMode::Ipv4 => IPV4_ENDPOINT,
        EndpointMode::Ipv6 => IPV6_ENDPOINT,
    }
    .to_string())
}

pub struct ImdsClient {
    /// Replaced by a fresh one (empty token cache) after a 401.
    sdk: RwLock<aws_config::imds::Client>,
    builder: aws_config::imds::client::Builder,
    endpoint: String,
    max_attempts: u32,
}

/// An error and its causes, each once: the SDK's own messages are short
/// ("dispatch failure"); the cause (refused, timed out) is further down.
/// Also the CRI client's (tonic's "transport error").
pub(crate) fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    s
}

fn retryable(status: u16) -> bool {
    status == 429 || status >= 500
}

impl ImdsClient {
    /// Builds the client; no request is made until the first [`Self::get`].
    pub fn new(cfg: &Ec2Config) -> Result<Self, ImdsError> {
        let endpoint = resolve_endpoint(cfg, |k| std::env::var(k).ok())?;
        // Plain HTTP and no proxy: an HTTP(S)_PROXY of the environment must
        // not see metadata requests (a proxy cannot reach the link-local
        // address, and the token would leak to it); this client has none.
        let http = aws_smithy_http_client::Builder::new().build_http();
        let provider = ProviderConfig::without_region().with_http_client(http);
        let builder = aws_config::imds::Client::builder()
            .configure(&provider)
            .endpoint(&endpoint)
            .map_err(|e| ImdsError::Client(format!("endpoint {endpoint:?}: {e}")))?
            .token_ttl(cfg.token_ttl())
            .max_attempts(cfg.max_attempts.max(1))
            .connect_timeout(cfg.connect_timeout())
            // Per request. Not the attempt timeout: an attempt includes the
            // token PUT with its own retries.
            .read_timeout(cfg.timeout())
            .retry_classifier(SharedRetryClassifier::new(Classifier));
        Ok(ImdsClient { sdk: RwLock::new(builder.clone().build()), builder, endpoint, max_attempts: cfg.max_attempts.max(1) })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// `GET /latest/<path>` (e.g. `meta-data/instance-id`): the body, or
    /// `None` for 404 (the item does not exist on this instance).
    pub async fn get(&self, path: &str) -> Result<Option<String>, ImdsError> {
        let what = format!("GET /latest/{path}");
        let mut renewed = false;
        loop {
            let sdk = self.sdk.read().unwrap().clone();
            match sdk.get(format!("/latest/{path}")).await {
                Ok(v) => return Ok(Some(v.into())),
                Err(e) => match self.classify(&e, &what) {
                    Outcome::NotFound => return Ok(None),
                    Outcome::Unauthorized if !renewed => {
                        // A revoked token is routine: renew at once, once.
                        debug!(%what, "IMDS token rejected; getting a new one");
                        renewed = true;
                        *self.sdk.write().unwrap() = self.builder.clone().build();
                    }
                    Outcome::Unauthorized => return Err(ImdsError::Unauthorized { endpoint: self.endpoint.clone(), what }),
                    Outcome::Error(e) => return Err(e),
                },
            }
        }
    }

    fn gave_up(&self, what: &str, last: String, hint: &'static str) -> ImdsError {
        ImdsError::GaveUp { endpoint: self.endpoint.clone(), what: what.to_string(), attempts: self.max_attempts, last, hint }
    }

    fn status(&self, what: &str, status: u16) -> Outcome {
        let (endpoint, what) = (self.endpoint.clone(), what.to_string());
        Outcome::Error(match status {
            403 => ImdsError::Forbidden { endpoint, what },
            s if retryable(s) => return Outcome::Error(self.gave_up(&what, format!("HTTP {s}"), "")),
            status => ImdsError::Status { endpoint, what, status },
        })
    }

    fn classify(&self, e: &SdkImdsError, what: &str) -> Outcome {
        match e {
            SdkImdsError::ErrorResponse(r) => match r.response().status().as_u16() {
                404 => Outcome::NotFound,
                401 => Outcome::Unauthorized,
                s => self.status(what, s),
            },
            SdkImdsError::FailedToLoadToken(_) => {
                let put = "the token PUT";
                match e.source().and_then(|s| s.downcast_ref::<SdkError<TokenError, HttpResponse>>()) {
                    Some(SdkError::ServiceError(c)) if c.raw().status().as_u16() != 200 => self.status(put, c.raw().status().as_u16()),
                    Some(SdkError::ServiceError(c)) => {
                        Outcome::Error(ImdsError::Invalid { what: put.into(), problem: c.err().to_string() })
                    }
                    Some(t @ SdkError::TimeoutError(_)) => Outcome::Error(self.gave_up(put, format!("timed out: {}", describe(t)), HOP_LIMIT_HINT)),
                    Some(SdkError::DispatchFailure(d)) if d.is_timeout() => {
                        Outcome::Error(self.gave_up(put, format!("timed out: {}", describe(e)), HOP_LIMIT_HINT))
                    }
                    _ => Outcome::Error(self.gave_up(put, describe(e), "")),
                }
            }
            SdkImdsError::IoError(_) | SdkImdsError::Unexpected(_) => {
                let mut d = describe(e);
                if timed_out(e) && !d.contains("timed out") {
                    d = format!("timed out: {d}");
                }
                Outcome::Error(self.gave_up(what, d, ""))
            }
            _ => Outcome::Error(self.gave_up(what, describe(e), "")),
        }
    }

    /// A directory listing: one entry per line, sub-directories with a
    /// trailing `/` (removed here). 404 is an empty list.
    pub async fn list(&self, path: &str) -> Result<Vec<String>, ImdsError> {
        Ok(self.get(path).await?.map(|s| lines(&s).map(|l| l.trim_end_matches('/').to_string()).collect()).unwrap_or_default())
    }

    /// A JSON document such as `dynamic/instance-identity/document`.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>, ImdsError> {
        match self.get(path).await? {
            None => Ok(None),
            Some(s) => serde_json::from_str(&s)
                .map(Some)
                .map_err(|e| ImdsError::Invalid { what: format!("/latest/{path}"), problem: format!("not the expected JSON: {e}") }),
        }
    }
}

enum Outcome {
    NotFound,
    Unauthorized,
    Error(ImdsError),
}

fn timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut src = Some(e);
    while let Some(c) = src {
        if c.to_string().to_lowercase().contains("timeout") || c.to_string().to_lowercase().contains("timed out") {
            return true;
        }
        src = c.source();
    }
    false
}

/// Non-empty trimmed lines of a text answer.
pub(crate) fn lines(s: &str) -> impl Iterator<Item = &str> {
    s.lines().map(str::trim).filter(|l| !l.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowlog_testkit::fake_imds::FakeImds;
    use std::time::Duration;

    fn cfg(endpoint: &str) -> Ec2Config {
        Ec2Config { endpoint: Some(endpoint.into()), max_attempts: 4, timeout_ms: 2_000, ..Ec2Config::default() }
    }

    #[tokio::test]
    async fn token_is_put_once_and_reused() {
        let fake = FakeImds::start().await;
        fake.set("meta-data/instance-id", "i-0123456789abcdef0");
        let c = ImdsClient::new(&cfg(&fake.endpoint())).unwrap();
        for _ in 0..3 {
            assert_eq!(c.get("meta-data/instance-id").await.unwrap().as_deref(), Some("i-0123456789abcdef0"));
        }
        assert_eq!(c.get("meta-data/nothing-here").await.unwrap(), None);
        let s = fake.stats();
        assert_eq!((s.puts, s.gets), (1, 4));
        assert_eq!(s.ttls_asked, vec![21_600]);
        assert_eq!(s.unauthorized, 0);
    }

    /// A token the service expired early is replaced on the 401, and a
    /// throttled answer after it is retried: the caller sees neither.
    #[tokio::test]
    async fn expired_token_is_replaced_on_401_and_throttling_retried() {
        let fake = FakeImds::start().await;
        fake.set("meta-data/instance-id", "i-1");
        let c = ImdsClient::new(&cfg(&fake.endpoint())).unwrap();
        assert!(c.get("meta-data/instance-id").await.unwrap().is_some());
        fake.expire_tokens();
        fake.throttle(1, 429);
        assert_eq!(c.get("meta-data/instance-id").await.unwrap().as_deref(), Some("i-1"));
        let s = fake.stats();
        assert_eq!((s.puts, s.unauthorized, s.throttled), (2, 1, 1));
    }

    /// The SDK renews a token 120 s before its end: a TTL under that is
    /// one token per request, and an expired one is never sent.
    #[tokio::test]
    async fn short_ttl_tokens_are_renewed_before_they_end() {
        let fake = FakeImds::start().await;
        fake.set("meta-data/instance-id", "i-1");
        let c = ImdsClient::new(&Ec2Config { token_ttl_secs: 1, ..cfg(&fake.endpoint()) }).unwrap();
        c.get("meta-data/instance-id").await.unwrap();
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        c.get("meta-data/instance-id").await.unwrap();
        let s = fake.stats();
        assert_eq!(s.puts, 2, "renewed");
        assert_eq!(s.unauthorized, 0, "never sent an expired token");
        assert_eq!(s.ttls_asked, vec![1, 1]);
        // Above the SDK's renewal margin the token is kept.
        let c = ImdsClient::new(&Ec2Config { token_ttl_secs: 300, ..cfg(&fake.endpoint()) }).unwrap();
        for _ in 0..3 {
            c.get("meta-data/instance-id").await.unwrap();
        }
        assert_eq!(fake.stats().puts, 3);
    }

    #[tokio::test]
    async fn throttling_is_retried() {
        let fake = FakeImds::start().await;
        fake.set("meta-data/instance-id", "i-1");
        let c = ImdsClient::new(&cfg(&fake.endpoint())).unwrap();
        c.get("meta-data/instance-id").await.unwrap();
        // Two GETs throttled, then served; the token stays the same.
        fake.throttle(2, 429);
        assert_eq!(c.get("meta-data/instance-id").await.unwrap().as_deref(), Some("i-1"));
        let s = fake.stats();
        assert_eq!((s.throttled, s.puts, s.gets), (2, 1, 2));
        // Throttled token PUTs are retried the same way.
        let c = ImdsClient::new(&cfg(&fake.endpoint())).unwrap();
        fake.throttle(1, 503);
        assert_eq!(c.get("meta-data/instance-id").await.unwrap().as_deref(), Some("i-1"));
        let s = fake.stats();
        assert_eq!((s.throttled, s.puts), (3, 2));
    }

    #[tokio::test]
    async fn gives_up_with_a_clear_error_when_failures_go_on() {
        let fake = FakeImds::start().await;
        fake.set("meta-data/instance-id", "i-1");
        fake.throttle(u32::MAX, 503);
        let c = ImdsClient::new(&cfg(&fake.endpoint())).unwrap();
        let e = c.get("meta-data/instance-id").await.unwrap_err();
        assert!(matches!(e, ImdsError::GaveUp { attempts: 4, .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains(&fake.endpoint()) && msg.contains("up to 4 attempt(s)") && msg.contains("HTTP 503"), "{msg}");
        assert_eq!(fake.stats().throttled, 4);
    }

    #[tokio::test]
    async fn refused_connections_are_retried_then_reported() {
        // A port that was just free: nothing listens there.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", l.local_addr().unwrap());
        drop(l);
        let c = ImdsClient::new(&cfg(&endpoint)).unwrap();
        let e = c.get("meta-data/instance-id").await.unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, ImdsError::GaveUp { attempts: 4, .. }), "{msg}");
        assert!(msg.to_lowercase().contains("refused"), "{msg}");
    }

    #[tokio::test]
    async fn a_put_that_times_out_points_at_the_hop_limit() {
        let fake = FakeImds::start().await;
        fake.stall_puts();
        let c = ImdsClient::new(&Ec2Config { timeout_ms: 100, max_attempts: 2, ..cfg(&fake.endpoint()) }).unwrap();
        let msg = c.get("meta-data/instance-id").await.unwrap_err().to_string();
        assert!(msg.contains("timed out") && msg.contains("hop limit") && msg.contains("up to 2 attempt(s)"), "{msg}");
        assert_eq!(fake.stats().puts, 2, "the timed-out PUT was retried");
    }

    #[tokio::test]
    async fn forbidden_and_other_statuses_are_final() {
        let fake = FakeImds::start().await;
        fake.throttle(u32::MAX, 403);
        let c = ImdsClient::new(&cfg(&fake.endpoint())).unwrap();
        let e = c.get("meta-data/instance-id").await.unwrap_err();
        assert!(matches!(e, ImdsError::Forbidden { .. }), "{e:?}");
        assert!(e.to_string().contains("turned off"));
        assert_eq!(fake.stats().throttled, 1, "no retry on 403");
    }

    #[tokio::test]
    async fn the_token_header_is_required() {
        // The fake answers 401 to a GET without a valid token; a client
        // that forgot the header would fail here.
        let fake = FakeImds::start().await;
        fake.set("meta-data/instance-id", "i-1");
        fake.reject_all_tokens();
        let c = ImdsClient::new(&cfg(&fake.endpoint())).unwrap();
        let e = c.get("meta-data/instance-id").await.unwrap_err();
        assert!(matches!(e, ImdsError::Unauthorized { .. }), "{e:?}");
        assert_eq!(fake.stats().puts, 2);
    }

    #[tokio::test]
    async fn listings_and_json() {
        let fake = FakeImds::start().await;
        fake.set("meta-data/network/interfaces/macs/", "02:00:00:00:00:01/\n02:00:00:00:00:02/\n");
        fake.set("dynamic/instance-identity/document", r#"{"accountId":"123456789012","region":"eu-west-1"}"#);
        fake.set("dynamic/bad", "{");
        let c = ImdsClient::new(&cfg(&fake.endpoint())).unwrap();
        assert_eq!(c.list("meta-data/network/interfaces/macs/").await.unwrap(), ["02:00:00:00:00:01", "02:00:00:00:00:02"]);
        assert!(c.list("meta-data/tags/instance").await.unwrap().is_empty());
        let v: serde_json::Value = c.get_json("dynamic/instance-identity/document").await.unwrap().unwrap();
        assert_eq!(v["accountId"], "123456789012");
        let e = c.get_json::<serde_json::Value>("dynamic/bad").await.unwrap_err();
        assert!(e.to_string().contains("/latest/dynamic/bad"), "{e}");
    }

    /// Config endpoint, then the standard variables, then the mode.
    #[test]
    fn endpoint_resolution_follows_the_sdk_order() {
        let env = |vars: &'static [(&'static str, &'static str)]| move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string());
        let d = Ec2Config::default();
        assert_eq!(resolve_endpoint(&d, env(&[])).unwrap(), IPV4_ENDPOINT);
        assert_eq!(resolve_endpoint(&d, env(&[(ENDPOINT_MODE_ENV, "IPv6")])).unwrap(), IPV6_ENDPOINT);
        assert_eq!(resolve_endpoint(&d, env(&[(ENDPOINT_MODE_ENV, "IPv6"), (ENDPOINT_ENV, "http://127.0.0.1:9/")])).unwrap(), "http://127.0.0.1:9");
        let v6 = Ec2Config { endpoint_mode: Some(EndpointMode::Ipv6), ..d.clone() };
        assert_eq!(resolve_endpoint(&v6, env(&[(ENDPOINT_MODE_ENV, "IPv4")])).unwrap(), IPV6_ENDPOINT);
        assert_eq!(resolve_endpoint(&v6, env(&[(ENDPOINT_ENV, "http://127.0.0.1:9")])).unwrap(), "http://127.0.0.1:9", "the variable is an explicit endpoint");
        let e = Ec2Config { endpoint: Some("http://127.0.0.1:8/".into()), ..v6 };
        assert_eq!(resolve_endpoint(&e, env(&[(ENDPOINT_ENV, "http://127.0.0.1:9")])).unwrap(), "http://127.0.0.1:8");
        assert!(resolve_endpoint(&d, env(&[(ENDPOINT_MODE_ENV, "IPv5")])).unwrap_err().to_string().contains(ENDPOINT_MODE_ENV));
        assert!(resolve_endpoint(&d, env(&[(ENDPOINT_ENV, "https://x")])).is_err());
    }

    /// `AWS_EC2_METADATA_SERVICE_ENDPOINT` reaches the real client: this
    /// test runs itself again in a child process with the variable set to
    /// the fake (the parent's environment stays as it is).
    #[tokio::test]
    async fn the_standard_endpoint_variable_is_used() {
        const CHILD: &str = "FLOWLOG_TEST_IMDS_ENV_CHILD";
        if std::env::var_os(CHILD).is_some() {
            let c = ImdsClient::new(&Ec2Config { max_attempts: 1, ..Ec2Config::default() }).unwrap();
            assert_eq!(c.endpoint(), std::env::var(ENDPOINT_ENV).unwrap());
            assert_eq!(c.get("meta-data/instance-id").await.unwrap().as_deref(), Some("i-env"));
            return;
        }
        let fake = FakeImds::start().await;
        fake.set("meta-data/instance-id", "i-env");
        let exe = std::env::current_exe().unwrap();
        let endpoint = fake.endpoint();
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(exe)
                .args(["--exact", "metadata::imds::tests::the_standard_endpoint_variable_is_used", "--nocapture"])
                .env(CHILD, "1")
                .env(ENDPOINT_ENV, endpoint)
                .env_remove(ENDPOINT_MODE_ENV)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"));
        assert_eq!(fake.stats().puts, 1);
    }
}
