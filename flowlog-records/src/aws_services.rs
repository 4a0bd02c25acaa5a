//! `pkt-src-aws-service` / `pkt-dst-aws-service` from AWS's published
//! address ranges (`ip-ranges.json`).
//!
//! The file lists each prefix once per service it belongs to; `AMAZON` is the
//! catch-all that also repeats most specific prefixes. Flow logs show one
//! name per address: the longest matching prefix, and for a prefix listed
//! under several services a specific one rather than `AMAZON` (the first
//! specific one in file order, so the choice is stable).

use std::{collections::HashMap, net::IpAddr, path::Path, sync::Arc};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Deserialize;

use crate::prefix::PrefixMap;

/// The catch-all service name.
pub const AMAZON: &str = "AMAZON";

/// The parts of `ip-ranges.json` the lookup needs; other keys are ignored so
/// that new fields in AWS's file do not break loading.
#[derive(Deserialize)]
struct IpRangesFile {
    #[serde(rename = "syncToken", default)]
    sync_token: Option<String>,
    #[serde(default)]
    prefixes: Vec<V4Entry>,
    #[serde(default)]
    ipv6_prefixes: Vec<V6Entry>,
}

#[derive(Deserialize)]
struct V4Entry {
    ip_prefix: Ipv4Net,
    service: String,
}

#[derive(Deserialize)]
struct V6Entry {
    ipv6_prefix: Ipv6Net,
    service: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AwsRangesError {
    #[error("cannot read AWS ip-ranges file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("AWS ip-ranges file {path} is not valid ip-ranges.json: {source}")]
    Json { path: String, source: serde_json::Error },
}

/// Address → AWS service name.
#[derive(Clone, Debug, Default)]
pub struct AwsServices {
    map: PrefixMap<Arc<str>>,
    sync_token: Option<String>,
}

impl AwsServices {
    /// Loads an `ip-ranges.json` file.
    pub fn load(path: &Path) -> Result<AwsServices, AwsRangesError> {
        let text = std::fs::read_to_string(path).map_err(|source| AwsRangesError::Read { path: path.display().to_string(), source })?;
        Self::from_json(&text).map_err(|source| AwsRangesError::Json { path: path.display().to_string(), source })
    }

    pub fn from_json(text: &str) -> Result<AwsServices, serde_json::Error> {
        let file: IpRangesFile = serde_json::from_str(text)?;
        let v4 = file.prefixes.into_iter().map(|e| (IpNet::V4(e.ip_prefix), e.service));
        let v6 = file.ipv6_prefixes.into_iter().map(|e| (IpNet::V6(e.ipv6_prefix), e.service));
        let mut s = Self::from_entries(v4.chain(v6));
        s.sync_token = file.sync_token;
        Ok(s)
    }

    /// Builds the lookup from (prefix, service) pairs in file order.
    pub fn from_entries(entries: impl IntoIterator<Item = (IpNet, String)>) -> AwsServices {
        // One Arc per distinct name: records then share it.
        let mut names: HashMap<String, Arc<str>> = HashMap::new();
        let mut map = PrefixMap::new();
        for (net, service) in entries {
            let name = names.entry(service).or_insert_with_key(|k| Arc::from(k.as_str())).clone();
            match map.get_exact_mut(net) {
                None => {
                    map.insert(net, name);
                }
                Some(existing) => {
                    if &**existing == AMAZON && &*name != AMAZON {
                        *existing = name;
                    }
                }
            }
        }
        AwsServices { map, sync_token: None }
    }

    /// The service of the longest prefix containing `addr`.
    pub fn lookup(&self, addr: IpAddr) -> Option<&Arc<str>> {
        self.map.lookup(addr).map(|(v, _)| v)
    }

    /// Number of distinct prefixes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The file's `syncToken` (its publication time), for logging which
    /// version is loaded.
    pub fn sync_token(&self) -> Option<&str> {
        self.sync_token.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small excerpt in the shape of the real file (extra keys included).
    const FIXTURE: &str = r#"{
  "syncToken": "1700000000",
  "createDate": "2023-11-14-22-13-20",
  "prefixes": [
    {"ip_prefix": "52.95.0.0/16", "region": "ap-southeast-2", "service": "AMAZON", "network_border_group": "ap-southeast-2"},
    {"ip_prefix": "52.95.128.0/21", "region": "ap-southeast-2", "service": "AMAZON", "network_border_group": "ap-southeast-2"},
    {"ip_prefix": "52.95.128.0/21", "region": "ap-southeast-2", "service": "S3", "network_border_group": "ap-southeast-2"},
    {"ip_prefix": "52.95.128.0/21", "region": "ap-southeast-2", "service": "EC2", "network_border_group": "ap-southeast-2"},
    {"ip_prefix": "3.5.0.0/19", "region": "ap-southeast-2", "service": "EC2", "network_border_group": "ap-southeast-2"},
    {"ip_prefix": "3.5.0.0/19", "region": "ap-southeast-2", "service": "AMAZON", "network_border_group": "ap-southeast-2"},
    {"ip_prefix": "3.5.0.0/24", "region": "ap-southeast-2", "service": "AMAZON", "network_border_group": "ap-southeast-2"},
    {"ip_prefix": "15.177.0.0/18", "region": "GLOBAL", "service": "ROUTE53_HEALTHCHECKS", "network_border_group": "GLOBAL"}
  ],
  "ipv6_prefixes": [
    {"ipv6_prefix": "2600:1f00::/24", "region": "GLOBAL", "service": "AMAZON", "network_border_group": "GLOBAL"},
    {"ipv6_prefix": "2600:1fa0:8000::/39", "region": "ap-southeast-2", "service": "AMAZON", "network_border_group": "ap-southeast-2"},
    {"ipv6_prefix": "2600:1fa0:8000::/39", "region": "ap-southeast-2", "service": "S3", "network_border_group": "ap-southeast-2"}
  ]
}"#;

    fn service(s: &AwsServices, a: &str) -> Option<String> {
        s.lookup(a.parse().unwrap()).map(|v| v.to_string())
    }

    #[test]
    fn longest_prefix_and_specific_service_win() {
        let s = AwsServices::from_json(FIXTURE).unwrap();
        assert_eq!(s.sync_token(), Some("1700000000"));
        assert_eq!(s.len(), 7);
        // The v5 example's S3 endpoint: /21 listed as AMAZON, S3, EC2 → S3.
        assert_eq!(service(&s, "52.95.128.179").as_deref(), Some("S3"));
        // Outside the /21 but inside the AMAZON /16.
        assert_eq!(service(&s, "52.95.200.1").as_deref(), Some("AMAZON"));
        // A longer AMAZON-only prefix beats a shorter specific one.
        assert_eq!(service(&s, "3.5.0.10").as_deref(), Some("AMAZON"));
        assert_eq!(service(&s, "3.5.1.10").as_deref(), Some("EC2"));
        assert_eq!(service(&s, "15.177.1.1").as_deref(), Some("ROUTE53_HEALTHCHECKS"));
        assert_eq!(service(&s, "10.0.0.71"), None);
        assert_eq!(service(&s, "2600:1fa0:80ab::1").as_deref(), Some("S3"));
        assert_eq!(service(&s, "2600:1f11::1").as_deref(), Some("AMAZON"));
        assert_eq!(service(&s, "2001:db8::1"), None);
    }

    #[test]
    fn names_are_shared() {
        let s = AwsServices::from_json(FIXTURE).unwrap();
        // Two different AMAZON prefixes hand out the same allocation.
        let a = s.lookup("3.5.0.10".parse().unwrap()).unwrap();
        let b = s.lookup("52.95.200.1".parse().unwrap()).unwrap();
        assert_eq!(&**a, "AMAZON");
        assert!(Arc::ptr_eq(a, b));
    }

    #[test]
    fn bad_files_are_reported_with_their_path() {
        assert!(AwsServices::from_json(r#"{"prefixes": [{"ip_prefix": "1.2.3.0/33", "service": "S3"}]}"#).is_err());
        assert!(AwsServices::from_json(r#"{"prefixes": [{"ip_prefix": "1.2.3.0/24"}]}"#).is_err());
        assert_eq!(AwsServices::from_json("{}").unwrap().len(), 0);
        let dir = std::env::temp_dir().join(format!("flowlog-ipranges-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("ip-ranges.json");
        std::fs::write(&good, FIXTURE).unwrap();
        assert_eq!(AwsServices::load(&good).unwrap().len(), 7);
        let bad = dir.join("bad.json");
        std::fs::write(&bad, "[").unwrap();
        let e = AwsServices::load(&bad).unwrap_err().to_string();
        assert!(e.starts_with(&format!("AWS ip-ranges file {} is not valid ip-ranges.json: ", bad.display())), "{e}");
        let e = AwsServices::load(&dir.join("missing.json")).unwrap_err().to_string();
        assert!(e.starts_with("cannot read AWS ip-ranges file "), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
