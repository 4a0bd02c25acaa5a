//! IMDSv2: the session-token form of the EC2 instance metadata service.
//!
//! A `PUT /latest/api/token` carrying the wanted lifetime in
//! `X-aws-ec2-metadata-token-ttl-seconds` (1..=21600 s) returns a token;
//! every `GET /latest/...` then carries it in `X-aws-ec2-metadata-token`.
//! The client keeps one token and reuses it until shortly before it expires,
//! because the service is throttled per instance and a PUT per GET would
//! double the load. A 401 means the token is no longer valid (expired, or
//! the instance was stopped and started): the client gets a new one and
//! repeats the request once.
//!
//! Throttling (429), server errors (500/502/503/504), timeouts and refused
//! connections are retried with exponential backoff and jitter, a bounded
//! number of times; then the call fails with the last cause. 403 (metadata
//! service off, or this request refused) and other statuses are final.
//!
//! # Containers and the hop limit
//! The token PUT response is sent with an IP TTL equal to the instance's
//! "PUT response hop limit", 1 by default. An agent in a container behind a
//! bridge is one hop further away, so the response is dropped and the PUT
//! just times out while plain connections work. Such instances need the
//! limit raised to 2: `aws ec2 modify-instance-metadata-options
//! --instance-id i-... --http-put-response-hop-limit 2` (or host networking).
//! A timed-out PUT names this in its error.

use std::{
    error::Error as _,
    sync::Mutex,
    time::{Duration, Instant},
};

use serde::de::DeserializeOwned;
use tracing::debug;

use super::config::Ec2Config;

const TOKEN_PATH: &str = "/latest/api/token";
const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";

const HOP_LIMIT_HINT: &str = " (a token PUT that times out from a container usually means the instance's metadata \
PUT response hop limit is 1; it must be 2 or more: aws ec2 modify-instance-metadata-options --http-put-response-hop-limit 2)";

#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    #[error("cannot set up the HTTP client for instance metadata: {0}")]
    Client(String),
    #[error(
        "instance metadata at {endpoint} refused {what} (HTTP 403): the metadata service is turned off for this instance, or it does not allow this request"
    )]
    Forbidden { endpoint: String, what: String },
    #[error("instance metadata at {endpoint} answered HTTP {status} to {what}")]
    Status { endpoint: String, what: String, status: u16 },
    #[error("instance metadata at {endpoint} rejected a freshly issued token for {what} (HTTP 401 twice)")]
    Unauthorized { endpoint: String, what: String },
    #[error("no usable answer from instance metadata at {endpoint} for {what} after {attempts} attempt(s); last: {last}{hint}")]
    GaveUp { endpoint: String, what: String, attempts: u32, last: String, hint: &'static str },
    #[error("instance metadata {what}: {problem}")]
    Invalid { what: String, problem: String },
}

/// Why one try failed, and whether trying again may help.
enum Fail {
    Retry { why: String, put_timed_out: bool },
    Unauthorized,
    Fatal(ImdsError),
}

struct Token {
    value: String,
    renew_at: Instant,
}

pub struct ImdsClient {
    http: reqwest::Client,
    endpoint: String,
    ttl: Duration,
    max_attempts: u32,
    backoff_base: Duration,
    backoff_max: Duration,
    token: Mutex<Option<Token>>,
}

fn retryable(status: u16) -> bool {
    matches!(status, 429 | 500 | 502 | 503 | 504)
}

/// reqwest's own message is only "error sending request"; the cause
/// (refused, timed out) is further down the chain.
fn describe(e: &reqwest::Error) -> String {
    let mut s = if e.is_timeout() { "timed out".to_string() } else { e.to_string() };
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

impl ImdsClient {
    /// Builds the client; no request is made until the first [`Self::get`].
    pub fn new(cfg: &Ec2Config) -> Result<Self, ImdsError> {
        let http = reqwest::Client::builder()
            // An HTTP(S)_PROXY of the environment must not see metadata
            // requests: a proxy cannot reach the instance's link-local
            // address, and the token would leak to it.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(cfg.connect_timeout())
            .timeout(cfg.timeout())
            .user_agent(concat!("flowlog-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ImdsError::Client(describe(&e)))?;
        Ok(ImdsClient {
            http,
            endpoint: cfg.endpoint.trim_end_matches('/').to_string(),
            ttl: cfg.token_ttl(),
            max_attempts: cfg.max_attempts.max(1),
            backoff_base: cfg.backoff_base(),
            backoff_max: cfg.backoff_max(),
            token: Mutex::new(None),
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// `GET /latest/<path>` (e.g. `meta-data/instance-id`): the body, or
    /// `None` for 404 (the item does not exist on this instance).
    pub async fn get(&self, path: &str) -> Result<Option<String>, ImdsError> {
        let what = format!("GET /latest/{path}");
        let mut attempt = 0;
        let mut renewed = false;
        loop {
            attempt += 1;
            match self.get_once(path, &what).await {
                Ok(v) => return Ok(v),
                Err(Fail::Fatal(e)) => return Err(e),
                // An expired token is routine: renew at once, once.
                Err(Fail::Unauthorized) if !renewed => {
                    debug!(%what, "IMDS token rejected; getting a new one");
                    renewed = true;
                    attempt -= 1;
                }
                Err(Fail::Unauthorized) => return Err(ImdsError::Unauthorized { endpoint: self.endpoint.clone(), what }),
                Err(Fail::Retry { why, put_timed_out }) => {
                    if attempt >= self.max_attempts {
                        let hint = if put_timed_out { HOP_LIMIT_HINT } else { "" };
                        return Err(ImdsError::GaveUp { endpoint: self.endpoint.clone(), what, attempts: attempt, last: why, hint });
                    }
                    let wait = self.backoff(attempt);
                    debug!(%what, attempt, cause = %why, wait_ms = wait.as_millis() as u64, "IMDS request failed; retrying");
                    tokio::time::sleep(wait).await;
                }
            }
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

    /// Wait before try `attempt + 1`: base·2^(attempt-1), capped, then half
    /// of it fixed and half random, so retries neither collapse to zero
    /// nor line up across hosts.
    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self.backoff_base.saturating_mul(1u32 << (attempt - 1).min(20)).min(self.backoff_max);
        let half = exp / 2;
        half + half.mul_f64(fastrand::f64())
    }

    fn send_fail(&self, e: reqwest::Error, is_put: bool) -> Fail {
        if e.is_builder() {
            return Fail::Fatal(ImdsError::Invalid { what: if is_put { "token PUT".into() } else { "request".into() }, problem: describe(&e) });
        }
        Fail::Retry { why: describe(&e), put_timed_out: is_put && e.is_timeout() }
    }

    async fn get_once(&self, path: &str, what: &str) -> Result<Option<String>, Fail> {
        let token = self.token().await?;
        let resp = self
            .http
            .get(format!("{}/latest/{path}", self.endpoint))
            .header(TOKEN_HEADER, token.as_str())
            .send()
            .await
            .map_err(|e| self.send_fail(e, false))?;
        match resp.status().as_u16() {
            200 => resp.text().await.map(Some).map_err(|e| Fail::Retry { why: format!("reading the answer: {}", describe(&e)), put_timed_out: false }),
            404 => Ok(None),
            401 => {
                self.forget_token(&token);
                Err(Fail::Unauthorized)
            }
            403 => Err(Fail::Fatal(ImdsError::Forbidden { endpoint: self.endpoint.clone(), what: what.to_string() })),
            s if retryable(s) => Err(Fail::Retry { why: format!("HTTP {s}"), put_timed_out: false }),
            s => Err(Fail::Fatal(ImdsError::Status { endpoint: self.endpoint.clone(), what: what.to_string(), status: s })),
        }
    }

    fn forget_token(&self, value: &str) {
        let mut t = self.token.lock().unwrap();
        if t.as_ref().is_some_and(|t| t.value == value) {
            *t = None;
        }
    }

    /// The cached token, or a new one from a PUT. Renewal starts a tenth of
    /// the TTL (at most a minute) before expiry, so a token never runs out
    /// between being read here and arriving at the service.
    async fn token(&self) -> Result<String, Fail> {
        if let Some(t) = self.token.lock().unwrap().as_ref() {
            if Instant::now() < t.renew_at {
                return Ok(t.value.clone());
            }
        }
        let what = "the token PUT";
        let sent = Instant::now();
        let resp = self
            .http
            .put(format!("{}{TOKEN_PATH}", self.endpoint))
            .header(TTL_HEADER, self.ttl.as_secs().to_string())
            .send()
            .await
            .map_err(|e| self.send_fail(e, true))?;
        match resp.status().as_u16() {
            200 => {
                let body = resp.text().await.map_err(|e| Fail::Retry { why: format!("reading the token: {}", describe(&e)), put_timed_out: false })?;
                let value = body.trim().to_string();
                if value.is_empty() {
                    return Err(Fail::Fatal(ImdsError::Invalid { what: what.into(), problem: "empty token".into() }));
                }
                let margin = (self.ttl / 10).min(Duration::from_secs(60));
                *self.token.lock().unwrap() = Some(Token { value: value.clone(), renew_at: sent + self.ttl - margin });
                debug!(ttl_s = self.ttl.as_secs(), "new IMDS session token");
                Ok(value)
            }
            403 => Err(Fail::Fatal(ImdsError::Forbidden { endpoint: self.endpoint.clone(), what: what.into() })),
            s if retryable(s) => Err(Fail::Retry { why: format!("HTTP {s} to the token PUT"), put_timed_out: false }),
            s => Err(Fail::Fatal(ImdsError::Status { endpoint: self.endpoint.clone(), what: what.into(), status: s })),
        }
    }
}

/// Non-empty trimmed lines of a text answer.
pub(crate) fn lines(s: &str) -> impl Iterator<Item = &str> {
    s.lines().map(str::trim).filter(|l| !l.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowlog_testkit::fake_imds::FakeImds;

    fn cfg(endpoint: &str) -> Ec2Config {
        Ec2Config { endpoint: endpoint.into(), max_attempts: 4, backoff_base_ms: 1, backoff_max_ms: 8, timeout_ms: 2_000, ..Ec2Config::default() }
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

    #[tokio::test]
    async fn expired_token_is_replaced_on_401() {
        let fake = FakeImds::start().await;
        fake.set("meta-data/instance-id", "i-1");
        let c = ImdsClient::new(&cfg(&fake.endpoint())).unwrap();
        assert!(c.get("meta-data/instance-id").await.unwrap().is_some());
        fake.expire_tokens();
        assert_eq!(c.get("meta-data/instance-id").await.unwrap().as_deref(), Some("i-1"));
        let s = fake.stats();
        assert_eq!((s.puts, s.unauthorized, s.gets), (2, 1, 3));
    }

    #[tokio::test]
    async fn token_is_renewed_before_its_ttl_ends() {
        let fake = FakeImds::start().await;
        fake.set("meta-data/instance-id", "i-1");
        let c = ImdsClient::new(&Ec2Config { token_ttl_secs: 1, ..cfg(&fake.endpoint()) }).unwrap();
        c.get("meta-data/instance-id").await.unwrap();
        c.get("meta-data/instance-id").await.unwrap();
        assert_eq!(fake.stats().puts, 1);
        tokio::time::sleep(Duration::from_millis(950)).await;
        c.get("meta-data/instance-id").await.unwrap();
        let s = fake.stats();
        assert_eq!(s.puts, 2, "renewed ahead of expiry");
        assert_eq!(s.unauthorized, 0, "never sent an expired token");
        assert_eq!(s.ttls_asked, vec![1, 1]);
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
        assert!(msg.contains(&fake.endpoint()) && msg.contains("after 4 attempt(s)") && msg.contains("HTTP 503"), "{msg}");
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
        assert!(msg.contains("timed out") && msg.contains("hop limit") && msg.contains("after 2 attempt(s)"), "{msg}");
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

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let c = ImdsClient::new(&Ec2Config { backoff_base_ms: 100, backoff_max_ms: 1_000, ..Ec2Config::default() }).unwrap();
        for _ in 0..50 {
            let (a, b, d) = (c.backoff(1), c.backoff(3), c.backoff(10));
            assert!(a >= Duration::from_millis(50) && a <= Duration::from_millis(100), "{a:?}");
            assert!(b >= Duration::from_millis(200) && b <= Duration::from_millis(400), "{b:?}");
            assert!(d >= Duration::from_millis(500) && d <= Duration::from_millis(1_000), "{d:?}");
        }
        let spread: std::collections::BTreeSet<Duration> = (0..20).map(|_| c.backoff(5)).collect();
        assert!(spread.len() > 1, "jitter");
    }
}
