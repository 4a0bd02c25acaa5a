//! What the AWS destinations share: the SDK configuration (default
//! credential chain, region, endpoint override), the per-output AWS options
//! of an output URL, and the classification of SDK errors into
//! [`Failure`]s (the retry loop itself is in [`super::retry`]).

use std::time::Duration;

use anyhow::{bail, Result};
use aws_config::{retry::RetryConfig, timeout::TimeoutConfig, BehaviorVersion, Region, SdkConfig};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_http_client::tls;

use super::retry::Failure;
/// Still reachable here, where it was first defined.
pub use super::retry::RetryPolicy;

#[derive(Clone, Debug, Default)]
pub struct AwsSettings {
    pub region: Option<String>,
    /// Endpoint override (tests: the local server).
    pub endpoint_url: Option<String>,
}

/// Per-output AWS options (`s3://bucket?region=..&endpoint=..&role-arn=..`);
/// each unset one is the global setting (`region`, `aws-endpoint-url`, the
/// default credential chain).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutputAws {
    pub region: Option<String>,
    pub endpoint: Option<String>,
    /// A role to assume for this output's calls (a cross-account delivery
    /// role, as native flow logs have), with the default chain's credentials.
    pub role_arn: Option<String>,
}

impl OutputAws {
    pub fn validate(&self) -> Result<(), String> {
        if let Some(r) = &self.region {
            if !valid_region(r) {
                return Err(format!("region={r:?} is not a region name such as us-east-1"));
            }
        }
        if let Some(e) = &self.endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) || e.len() < 9 {
                return Err(format!("endpoint={e:?}: expected http://host:port or https://host"));
            }
        }
        if let Some(a) = &self.role_arn {
            if !valid_role_arn(a) {
                return Err(format!("role-arn={a:?} is not an IAM role ARN (arn:aws:iam::123456789012:role/name)"));
            }
        }
        Ok(())
    }

    /// The options as query parts, in a fixed order.
    pub fn query(&self) -> Vec<String> {
        [("region", &self.region), ("endpoint", &self.endpoint), ("role-arn", &self.role_arn)]
            .into_iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
            .collect()
    }
}

/// The options every AWS destination takes, after the kinds' syntax.
pub const OUTPUT_SYNTAX: &str = "the AWS ones also take region=<region>, endpoint=<url> and role-arn=<arn>";

impl OutputAws {
    /// Takes the AWS options (region, endpoint, role-arn) out of the query
    /// `q` of output `s`; returns them and the rest of the query.
    pub fn take(s: &str, q: Option<&str>) -> Result<(OutputAws, Option<String>), String> {
        let mut a = OutputAws::default();
        let mut rest = Vec::new();
        for kv in q.unwrap_or("").split('&').filter(|x| !x.is_empty()) {
            let slot = match kv.split_once('=') {
                Some(("region", v)) => Some((&mut a.region, v)),
                Some(("endpoint", v)) => Some((&mut a.endpoint, v)),
                Some(("role-arn" | "role_arn", v)) => Some((&mut a.role_arn, v)),
                _ => None,
            };
            match slot {
                Some((slot, v)) => *slot = Some(v.to_string()),
                None => rest.push(kv),
            }
        }
        a.validate().map_err(|e| format!("invalid output {s:?}: {e}"))?;
        Ok((a, if rest.is_empty() { None } else { Some(rest.join("&")) }))
    }
}

/// `arn:<partition>:iam::<12 digits>:role/<path/name>`.
pub fn valid_role_arn(a: &str) -> bool {
    let p: Vec<&str> = a.splitn(6, ':').collect();
    p.len() == 6
        && p[0] == "arn"
        && p[1].starts_with("aws")
        && p[2] == "iam"
        && p[3].is_empty()
        && p[4].len() == 12
        && p[4].bytes().all(|b| b.is_ascii_digit())
        && p[5].strip_prefix("role/").is_some_and(|n| !n.is_empty() && !n.ends_with('/'))
}

/// The SDK configuration of one output: its region and endpoint over the
/// global ones and, with `role-arn`, credentials from STS AssumeRole (asked
/// in the output's region, at the global endpoint: a per-output endpoint is
/// the destination service's, not STS's). The role is assumed on the first
/// call, so the startup check of the output shows a role that cannot be
/// assumed.
pub async fn output_sdk_config(global: &AwsSettings, o: &OutputAws) -> Result<SdkConfig> {
    let s = AwsSettings { region: o.region.clone().or_else(|| global.region.clone()), endpoint_url: o.endpoint.clone().or_else(|| global.endpoint_url.clone()) };
    let c = sdk_config(&s).await?;
    let Some(role) = &o.role_arn else { return Ok(c) };
    let sts = sdk_config(&AwsSettings { region: c.region().map(|r| r.to_string()), endpoint_url: global.endpoint_url.clone() }).await?;
    let p = aws_config::sts::AssumeRoleProvider::builder(role.clone()).session_name("flowlog-agent").configure(&sts).build().await;
    Ok(c.into_builder().credentials_provider(aws_sdk_s3::config::SharedCredentialsProvider::new(p)).build())
}

/// A region name's shape: non-empty, lowercase letters, digits and dashes.
/// Only the shape: the set of regions grows (`eusc-de-east-1`), and the
/// SDK and the service are the judges of the rest.
pub fn valid_region(r: &str) -> bool {
    !r.is_empty() && r.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Loads the SDK configuration: default credential chain, `region` or the
/// chain's region, the endpoint override, and no SDK-level retries (the
/// destinations retry themselves, without limit, from the spool).
pub async fn sdk_config(s: &AwsSettings) -> Result<SdkConfig> {
    sdk_config_with(s, RetryConfig::disabled(), Duration::from_secs(60)).await
}

/// [`sdk_config`] with the SDK's own retries and per-attempt timeout (for
/// `compare`, which reads once and has no spool to retry from).
pub async fn sdk_config_with(s: &AwsSettings, retry: RetryConfig, attempt_timeout: Duration) -> Result<SdkConfig> {
    if let Some(r) = &s.region {
        if !valid_region(r) {
            bail!("invalid AWS region {r:?}: expected a region name such as us-east-1 (lowercase letters, digits and dashes)");
        }
    }
    if let Some(e) = &s.endpoint_url {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            bail!("invalid --aws-endpoint-url {e:?}: expected http://host:port or https://host");
        }
    }
    let http = aws_smithy_http_client::Builder::new().tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring)).build_https();
    let mut l = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .retry_config(retry)
        .timeout_config(TimeoutConfig::builder().connect_timeout(Duration::from_secs(5)).operation_attempt_timeout(attempt_timeout).build());
    if let Some(r) = &s.region {
        l = l.region(Region::new(r.clone()));
    }
    if let Some(e) = &s.endpoint_url {
        l = l.endpoint_url(e.clone());
    }
    let c = l.load().await;
    match c.region() {
        None => bail!("no AWS region: give --region or set AWS_REGION"),
        Some(r) if !valid_region(r.as_ref()) => bail!("invalid AWS region {:?}: expected a region name such as us-east-1 (lowercase letters, digits and dashes)", r.as_ref()),
        Some(_) => {}
    }
    Ok(c)
}

const AUTH_CODES: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidSignatureException",
    "ExpiredToken",
    "ExpiredTokenException",
    "MissingAuthenticationToken",
    "AuthFailure",
    "AllAccessDisabled",
];
const TRANSIENT_CODES: &[&str] = &[
    "ThrottlingException",
    "Throttling",
    "ThrottledException",
    "SlowDown",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "InternalError",
    "InternalFailure",
    "InternalServerError",
    "RequestTimeout",
    "RequestTimeoutException",
    "LimitExceededException",
];
const NOT_FOUND_CODES: &[&str] = &["ResourceNotFoundException", "NoSuchBucket", "NotFound", "NoSuchKey", "NoSuchUpload"];

/// Sorts an SDK error into a [`Failure`].
pub fn classify<E, R>(e: &SdkError<E, R>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + HasStatus,
{
    let msg = format!("{}", aws_sdk_s3::error::DisplayErrorContext(e));
    match e {
        SdkError::ServiceError(se) => {
            let code = se.err().code().unwrap_or("");
            let status = se.raw().status_code();
            if AUTH_CODES.contains(&code) || status == 403 {
                Failure::Auth(msg)
            } else if TRANSIENT_CODES.contains(&code) || status >= 500 || status == 429 {
                Failure::Transient(msg)
            } else if NOT_FOUND_CODES.contains(&code) || status == 404 {
                Failure::NotFound(msg)
            } else {
                Failure::Other(msg)
            }
        }
        SdkError::ResponseError(r) => {
            let status = r.raw().status_code();
            if status == 403 {
                Failure::Auth(msg)
            } else if status == 404 {
                Failure::NotFound(msg)
            } else {
                Failure::Transient(msg)
            }
        }
        SdkError::ConstructionFailure(_) => {
            if msg.contains("credentials") {
                Failure::Auth(msg)
            } else {
                Failure::Other(msg)
            }
        }
        _ => Failure::Transient(msg),
    }
}

pub trait HasStatus {
    fn status_code(&self) -> u16;
}
impl HasStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions() {
        for r in ["us-east-1", "eu-central-2", "us-gov-west-1", "cn-north-1", "ap-southeast-4", "eusc-de-east-1", "us-isob-east-1"] {
            assert!(valid_region(r), "{r}");
        }
        for r in ["", "US-EAST-1", "us east 1", "us_east_1", "us-east-1/", "ü-1"] {
            assert!(!valid_region(r), "{r}");
        }
    }
}
