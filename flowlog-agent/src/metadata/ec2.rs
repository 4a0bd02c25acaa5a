//! EC2 provider: host and ENI metadata from IMDS, ENIs matched to OS
//! interfaces by MAC address.
//!
//! What changes during an instance's life decides what is re-read:
//! - instance id, region, AZ and account never change: read once;
//! - an ENI's id, VPC, subnet, owner and device number are fixed while it
//!   is attached: read once per MAC;
//! - the MAC list (hot-plugged or detached ENIs), each ENI's addresses
//!   (secondary IPs come and go) and instance tags: read on every refresh.
//!
//! Only MACs of the interfaces asked for are fetched, which keeps the
//! request count (IMDS throttles per instance) proportional to what the
//! agent captures on. Interfaces whose MAC is no ENI (docker0, veths, an
//! ENI whose data IMDS does not show yet) get derived ids, and their real
//! ids on the first refresh after IMDS lists them.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, Ipv6Addr},
    str::FromStr,
    sync::Arc,
};

use serde::Deserialize;
use tracing::warn;

use super::{config::Ec2Config, imds::{lines, ImdsClient, ImdsError}};
use super::model::{HostMetadata, InterfaceMetadata, LinkId, MacAddr, Origin, Snapshot, UNKNOWN_ACCOUNT};

const MACS: &str = "meta-data/network/interfaces/macs/";

/// What is kept of one ENI.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Eni {
    interface_id: Arc<str>,
    owner_id: Option<Arc<str>>,
    vpc_id: Option<Arc<str>>,
    subnet_id: Option<Arc<str>>,
    device_number: Option<u32>,
    ipv4s: Vec<Ipv4Addr>,
    ipv6s: Vec<Ipv6Addr>,
}

/// The fields of the instance identity document used here.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IdentityDocument {
    account_id: Option<String>,
    region: Option<String>,
}

pub struct Ec2Provider {
    client: ImdsClient,
    machine_id: String,
    instance_tags: bool,
    host: Option<HostMetadata>,
    enis: BTreeMap<MacAddr, Eni>,
}

/// A trimmed, non-empty IMDS value.
fn value(v: Option<String>) -> Option<Arc<str>> {
    v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).map(Into::into)
}

fn parse_all<T: FromStr>(path: &str, body: Option<String>) -> Result<Vec<T>, ImdsError> {
    lines(body.as_deref().unwrap_or(""))
        .map(|l| l.parse::<T>().map_err(|_| ImdsError::Invalid { what: format!("/latest/{path}"), problem: format!("{l:?} is not an address") }))
        .collect()
}

impl Ec2Provider {
    pub fn new(cfg: &Ec2Config, machine_id: &str) -> Result<Self, ImdsError> {
        Ok(Ec2Provider {
            client: ImdsClient::new(cfg)?,
            machine_id: machine_id.to_string(),
            instance_tags: cfg.instance_tags,
            host: None,
            enis: BTreeMap::new(),
        })
    }

    pub fn endpoint(&self) -> &str {
        self.client.endpoint()
    }

    pub fn client(&self) -> &ImdsClient {
        &self.client
    }

    /// See the module doc for what is re-read. On error, what was read
    /// before the failure is kept for [`Self::cached`].
    pub async fn refresh(&mut self, links: &[LinkId]) -> Result<Snapshot, ImdsError> {
        if self.host.is_none() {
            self.host = Some(self.load_host().await?);
        }
        if self.instance_tags {
            let tags = self.load_tags().await?;
            if let Some(h) = self.host.as_mut() {
                h.instance_tags = tags;
            }
        }
        let mut listed = BTreeSet::new();
        for entry in self.client.list(MACS).await? {
            match entry.parse::<MacAddr>() {
                Ok(m) => {
                    listed.insert(m);
                }
                Err(e) => warn!("IMDS {MACS}: ignoring entry: {e}"),
            }
        }
        self.enis.retain(|m, _| listed.contains(m));
        let wanted: BTreeSet<MacAddr> = links.iter().filter_map(|l| l.mac).filter(|m| listed.contains(m)).collect();
        for mac in wanted {
            if self.enis.contains_key(&mac) {
                let (v4, v6) = self.load_addresses(mac).await?;
                let e = self.enis.get_mut(&mac).expect("checked above");
                (e.ipv4s, e.ipv6s) = (v4, v6);
            } else if let Some(e) = self.load_eni(mac).await? {
                self.enis.insert(mac, e);
            }
        }
        Ok(self.cached(links))
    }

    /// Metadata from what was read so far; no I/O.
    pub fn cached(&self, links: &[LinkId]) -> Snapshot {
        let host = self.host.clone().unwrap_or_default();
        let interfaces = links
            .iter()
            .map(|l| {
                let m = match l.mac.and_then(|m| self.enis.get(&m)) {
                    Some(e) => InterfaceMetadata {
                        name: l.name.clone(),
                        mac: l.mac,
                        origin: Origin::Imds,
                        interface_id: e.interface_id.clone(),
                        account_id: e.owner_id.clone().unwrap_or_else(|| host.account_id.clone()),
                        vpc_id: e.vpc_id.clone(),
                        subnet_id: e.subnet_id.clone(),
                        instance_id: host.instance_id.clone(),
                        region: host.region.clone(),
                        az_id: host.az_id.clone(),
                        primary_ipv4: e.ipv4s.first().copied(),
                        ipv4s: e.ipv4s.clone(),
                        ipv6s: e.ipv6s.clone(),
                        device_number: e.device_number,
                        tags: BTreeMap::new(),
                    },
                    None => InterfaceMetadata::derived(l, &host, &self.machine_id),
                };
                (l.name.clone(), m)
            })
            .collect();
        Snapshot { host, interfaces }
    }

    async fn load_host(&self) -> Result<HostMetadata, ImdsError> {
        let c = &self.client;
        let instance_id = value(c.get("meta-data/instance-id").await?);
        let doc: Option<IdentityDocument> = c.get_json("dynamic/instance-identity/document").await?;
        let (doc_account, doc_region) = doc.map(|d| (d.account_id, d.region)).unwrap_or_default();
        // placement/region exists since 2020; older instances only have the
        // identity document's copy.
        let region = value(c.get("meta-data/placement/region").await?).or_else(|| value(doc_region));
        let az_id = value(c.get("meta-data/placement/availability-zone-id").await?);
        Ok(HostMetadata {
            account_id: value(doc_account).unwrap_or_else(|| UNKNOWN_ACCOUNT.into()),
            region,
            az_id,
            instance_id,
            instance_tags: BTreeMap::new(),
        })
    }

    /// `meta-data/tags/instance/*`; 404 (tags not enabled) is no tags.
    async fn load_tags(&self) -> Result<BTreeMap<String, String>, ImdsError> {
        let mut tags = BTreeMap::new();
        for k in self.client.list("meta-data/tags/instance").await? {
            if let Some(v) = self.client.get(&format!("meta-data/tags/instance/{k}")).await? {
                tags.insert(k, v);
            }
        }
        Ok(tags)
    }

    async fn load_addresses(&self, mac: MacAddr) -> Result<(Vec<Ipv4Addr>, Vec<Ipv6Addr>), ImdsError> {
        let p4 = format!("{MACS}{mac}/local-ipv4s");
        let p6 = format!("{MACS}{mac}/ipv6s");
        let v4 = parse_all(&p4, self.client.get(&p4).await?)?;
        // 404 when the ENI has no IPv6 address.
        let v6 = parse_all(&p6, self.client.get(&p6).await?)?;
        Ok((v4, v6))
    }

    /// `None` while IMDS lists the MAC but has no `interface-id` for it yet
    /// (an ENI being attached); the next refresh tries again.
    async fn load_eni(&self, mac: MacAddr) -> Result<Option<Eni>, ImdsError> {
        let get = |f: &str| {
            let p = format!("{MACS}{mac}/{f}");
            async move { self.client.get(&p).await.map(value) }
        };
        let Some(interface_id) = get("interface-id").await? else { return Ok(None) };
        let owner_id = get("owner-id").await?;
        let vpc_id = get("vpc-id").await?;
        let subnet_id = get("subnet-id").await?;
        let device_number = get("device-number").await?.and_then(|s| s.parse().ok());
        let (ipv4s, ipv6s) = self.load_addresses(mac).await?;
        Ok(Some(Eni { interface_id, owner_id, vpc_id, subnet_id, device_number, ipv4s, ipv6s }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::{config::Mode, MetadataConfig, MetadataProvider, ProviderKind};
    use flowlog_testkit::fake_imds::FakeImds;

    const MAC0: &str = "0a:1b:2c:3d:4e:01";
    const MAC1: &str = "0a:1b:2c:3d:4e:02";
    const MAC2: &str = "0a:1b:2c:3d:4e:03";

    fn mac(s: &str) -> MacAddr {
        s.parse().unwrap()
    }

    fn cfg(endpoint: &str) -> Ec2Config {
        Ec2Config { endpoint: Some(endpoint.into()), max_attempts: 3, ..Ec2Config::default() }
    }

    /// One ENI as the fake serves it.
    struct Spec {
        mac: &'static str,
        id: &'static str,
        subnet: &'static str,
        owner: Option<&'static str>,
        device: u32,
        v4: &'static [&'static str],
        v6: &'static [&'static str],
    }

    const ENI0: Spec = Spec {
        mac: MAC0,
        id: "eni-0aaaaaaaaaaaaaaa0",
        subnet: "subnet-0a",
        owner: Some("111122223333"),
        device: 0,
        v4: &["10.0.1.10", "10.0.1.11"],
        v6: &["2001:db8::10"],
    };
    /// Owned by another account (a cross-account attachment), no IPv6.
    const ENI1: Spec =
        Spec { mac: MAC1, id: "eni-0bbbbbbbbbbbbbbb1", subnet: "subnet-0b", owner: Some("444455556666"), device: 1, v4: &["10.0.2.20"], v6: &[] };
    /// No owner-id served.
    const ENI2: Spec = Spec { mac: MAC2, id: "eni-0ccccccccccccccc2", subnet: "subnet-0c", owner: None, device: 2, v4: &["10.0.3.30"], v6: &[] };

    fn serve(fake: &FakeImds, e: &Spec) {
        let p = |f: &str| format!("{MACS}{}/{f}", e.mac);
        fake.set(&p("interface-id"), e.id);
        fake.set(&p("vpc-id"), "vpc-0f1e2d3c");
        fake.set(&p("subnet-id"), e.subnet);
        if let Some(o) = e.owner {
            fake.set(&p("owner-id"), o);
        }
        fake.set(&p("device-number"), &e.device.to_string());
        fake.set(&p("local-ipv4s"), &(e.v4.join("\n") + "\n"));
        if !e.v6.is_empty() {
            fake.set(&p("ipv6s"), &e.v6.join("\n"));
        }
    }

    /// An instance with ENI0 and ENI1.
    async fn instance() -> FakeImds {
        let fake = FakeImds::start().await;
        fake.set("meta-data/instance-id", "i-0123456789abcdef0");
        fake.set("meta-data/placement/region", "eu-west-1");
        fake.set("meta-data/placement/availability-zone-id", "euw1-az2");
        fake.set("meta-data/placement/availability-zone", "eu-west-1b");
        fake.set(
            "dynamic/instance-identity/document",
            r#"{"availabilityZone":"eu-west-1b","privateIp":"10.0.1.10","instanceId":"i-0123456789abcdef0","accountId":"111122223333","region":"eu-west-1","version":"2017-09-30"}"#,
        );
        fake.set(MACS, &format!("{MAC0}/\n{MAC1}/\n"));
        serve(&fake, &ENI0);
        serve(&fake, &ENI1);
        fake
    }

    fn links() -> Vec<LinkId> {
        vec![
            LinkId::new("ens5", Some(mac(MAC0))),
            LinkId::new("ens6", Some(mac(MAC1))),
            LinkId::new("docker0", Some(mac("02:42:ac:11:00:01"))),
            LinkId::new("wg0", None),
        ]
    }

    fn host() -> HostMetadata {
        HostMetadata {
            account_id: "111122223333".into(),
            region: Some("eu-west-1".into()),
            az_id: Some("euw1-az2".into()),
            instance_id: Some("i-0123456789abcdef0".into()),
            instance_tags: BTreeMap::new(),
        }
    }

    /// What `name` on ENI `e` must get; `account` is the owner, or the
    /// identity document's account where IMDS has no owner-id.
    fn expect(name: &str, e: &Spec, account: &str) -> InterfaceMetadata {
        InterfaceMetadata {
            name: name.into(),
            mac: Some(mac(e.mac)),
            origin: Origin::Imds,
            interface_id: e.id.into(),
            account_id: account.into(),
            vpc_id: Some("vpc-0f1e2d3c".into()),
            subnet_id: Some(e.subnet.into()),
            instance_id: Some("i-0123456789abcdef0".into()),
            region: Some("eu-west-1".into()),
            az_id: Some("euw1-az2".into()),
            primary_ipv4: e.v4.first().map(|a| a.parse().unwrap()),
            ipv4s: e.v4.iter().map(|a| a.parse().unwrap()).collect(),
            ipv6s: e.v6.iter().map(|a| a.parse().unwrap()).collect(),
            device_number: Some(e.device),
            tags: BTreeMap::new(),
        }
    }

    #[tokio::test]
    async fn two_enis_by_mac_and_derived_ids_for_the_rest() {
        let fake = instance().await;
        let mut p = Ec2Provider::new(&cfg(&fake.endpoint()), "machine-1").unwrap();
        let s = p.refresh(&links()).await.unwrap();
        assert_eq!(s.host, host());
        let want: BTreeMap<String, InterfaceMetadata> = [
            expect("ens5", &ENI0, "111122223333"),
            expect("ens6", &ENI1, "444455556666"),
            InterfaceMetadata::derived(&links()[2], &host(), "machine-1"),
            InterfaceMetadata::derived(&links()[3], &host(), "machine-1"),
        ]
        .into_iter()
        .map(|m| (m.name.clone(), m))
        .collect();
        assert_eq!(s.interfaces, want);
        // The unknown MAC: derived id, host values, no VPC or subnet.
        let d = s.interface("docker0").unwrap();
        assert_eq!(&*d.interface_id, crate::capture::links::derived_interface_id("machine-1", "docker0"));
        assert_eq!((d.origin, d.vpc_id.as_deref(), d.instance_id.as_deref()), (Origin::Derived, None, Some("i-0123456789abcdef0")));
        assert_eq!(p.cached(&links()), s);
        // Every request carried a valid token; one PUT for all of them.
        let st = fake.stats();
        assert_eq!((st.puts, st.unauthorized), (1, 0));
    }

    #[tokio::test]
    async fn refresh_picks_up_hot_plugged_enis_and_rereads_only_what_changes() {
        let fake = instance().await;
        let mut p = Ec2Provider::new(&cfg(&fake.endpoint()), "m").unwrap();
        p.refresh(&links()).await.unwrap();

        // A third ENI is attached: the OS shows ens7 before IMDS lists it.
        let mut l = links();
        l.push(LinkId::new("ens7", Some(mac(MAC2))));
        fake.clear_stats();
        let s = p.refresh(&l).await.unwrap();
        assert_eq!(s.interface("ens7").unwrap().origin, Origin::Derived);
        assert_eq!(
            fake.stats().paths,
            [
                MACS.to_string(),
                format!("{MACS}{MAC0}/local-ipv4s"),
                format!("{MACS}{MAC0}/ipv6s"),
                format!("{MACS}{MAC1}/local-ipv4s"),
                format!("{MACS}{MAC1}/ipv6s"),
            ],
            "host values and fixed ENI values are not read again"
        );

        // IMDS lists it now, and ens5 got a secondary address.
        fake.set(MACS, &format!("{MAC0}/\n{MAC1}/\n{MAC2}/\n"));
        serve(&fake, &ENI2);
        fake.set(&format!("{MACS}{MAC0}/local-ipv4s"), "10.0.1.10\n10.0.1.11\n10.0.1.12");
        let s = p.refresh(&l).await.unwrap();
        // No owner-id served: the account comes from the identity document.
        assert_eq!(s.interface("ens7").unwrap(), &expect("ens7", &ENI2, "111122223333"));
        assert_eq!(s.interface("ens5").unwrap().ipv4s.len(), 3);
        assert_eq!(s.interface("ens5").unwrap().primary_ipv4, Some("10.0.1.10".parse().unwrap()));

        // ens6's ENI is detached: it falls back to a derived id.
        fake.set(MACS, &format!("{MAC0}/\n{MAC2}/\n"));
        let s = p.refresh(&l).await.unwrap();
        assert_eq!(s.interface("ens6").unwrap().origin, Origin::Derived);
        assert_eq!(s.interface("ens7").unwrap().origin, Origin::Imds);
    }

    #[tokio::test]
    async fn host_values_fall_back_when_paths_are_missing() {
        // An older instance: no placement/region or az-id, no identity
        // document account, no ENIs listed.
        let fake = FakeImds::start().await;
        fake.set("meta-data/instance-id", "i-1");
        fake.set("dynamic/instance-identity/document", r#"{"region":"us-east-1"}"#);
        let mut p = Ec2Provider::new(&cfg(&fake.endpoint()), "m").unwrap();
        let s = p.refresh(&links()[..1]).await.unwrap();
        assert_eq!(
            s.host,
            HostMetadata {
                account_id: "unknown".into(),
                region: Some("us-east-1".into()),
                az_id: None,
                instance_id: Some("i-1".into()),
                instance_tags: BTreeMap::new()
            }
        );
        assert_eq!(s.interface("ens5").unwrap().origin, Origin::Derived);
    }

    #[tokio::test]
    async fn instance_tags_when_enabled() {
        let fake = instance().await;
        fake.set("meta-data/tags/instance", "Name\nteam");
        fake.set("meta-data/tags/instance/Name", "edge-1");
        fake.set("meta-data/tags/instance/team", "net");
        let mut p = Ec2Provider::new(&Ec2Config { instance_tags: true, ..cfg(&fake.endpoint()) }, "m").unwrap();
        let s = p.refresh(&links()).await.unwrap();
        let want: BTreeMap<String, String> = [("Name".into(), "edge-1".into()), ("team".into(), "net".into())].into();
        assert_eq!(s.host.instance_tags, want);
        // Off by default: no tag request at all.
        fake.clear_stats();
        let mut p = Ec2Provider::new(&cfg(&fake.endpoint()), "m").unwrap();
        p.refresh(&links()).await.unwrap();
        assert!(fake.stats().paths.iter().all(|p| !p.contains("tags")));
    }

    #[tokio::test]
    async fn a_failed_refresh_keeps_what_was_read() {
        let fake = instance().await;
        let mut p = Ec2Provider::new(&cfg(&fake.endpoint()), "m").unwrap();
        let good = p.refresh(&links()).await.unwrap();
        fake.throttle(u32::MAX, 503);
        let e = p.refresh(&links()).await.unwrap_err();
        assert!(e.to_string().contains("up to 3 attempt(s)"), "{e}");
        assert_eq!(p.cached(&links()), good);
    }

    #[tokio::test]
    async fn provider_enum_in_ec2_mode() {
        let fake = instance().await;
        let cfg = MetadataConfig { mode: Mode::Ec2, ec2: cfg(&fake.endpoint()), ..Default::default() };
        let (mut p, sel) = MetadataProvider::new(&cfg, std::path::Path::new("/nonexistent"), "m").unwrap();
        assert_eq!((p.kind(), sel.kind), (ProviderKind::Ec2, ProviderKind::Ec2));
        assert_eq!(p.imds_endpoint(), Some(fake.endpoint().as_str()));
        let s = p.refresh(&links()).await.unwrap();
        assert_eq!(&*s.interface("ens6").unwrap().interface_id, "eni-0bbbbbbbbbbbbbbb1");
    }

    /// `auto` on a host without EC2 signs goes on-prem and never talks to
    /// the configured endpoint.
    #[tokio::test]
    async fn auto_without_ec2_signs_sends_nothing() {
        let fake = instance().await;
        let root = crate::metadata::tests::tempdir("auto");
        let cfg = MetadataConfig { mode: Mode::Auto, ec2: cfg(&fake.endpoint()), ..Default::default() };
        let (mut p, sel) = MetadataProvider::new(&cfg, &root, "m").unwrap();
        assert_eq!(sel.kind, ProviderKind::OnPrem);
        assert_eq!(p.imds_endpoint(), None);
        let s = p.refresh(&links()).await.unwrap();
        assert_eq!(s.interface("ens5").unwrap().origin, Origin::Derived);
        assert_eq!(fake.stats(), Default::default());

        // The same tree with a Nitro asset tag selects EC2.
        std::fs::create_dir_all(root.join("class/dmi/id")).unwrap();
        std::fs::write(root.join("class/dmi/id/board_asset_tag"), "i-0123456789abcdef0\n").unwrap();
        let (mut p, sel) = MetadataProvider::new(&cfg, &root, "m").unwrap();
        assert_eq!(sel.kind, ProviderKind::Ec2, "{}", sel.why);
        assert_eq!(p.refresh(&links()).await.unwrap().interface("ens5").unwrap().origin, Origin::Imds);
        std::fs::remove_dir_all(root).unwrap();
    }
}
