//! Pod identity per window, without the runtime: listings of the node's pods
//! kept with the time they were taken ([`History`]), and the lookups one
//! window's records use ([`PodIndex`]).
//!
//! A window's records name the pods that existed during that window: the
//! last listing before the window started and every listing taken in it.
//! So a pod that went away keeps its identity for the window its traffic
//! was counted in, and a pod that took over an address afterwards does not
//! take that window's flows. An address or interface two different pods
//! held within one window is ambiguous and stays `-`. Listings are dropped
//! once no window that can still close needs them.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    path::Path,
    sync::Arc,
};

use flowlog_records::record::K8sMeta;

use super::{model::Pod, netns::HostLink};

/// Fast, non-keyed hashing: keys are ifindexes and addresses of this node.
type Map<K, V> = HashMap<K, V, foldhash::fast::FixedState>;

/// A pod and the host interfaces that lead into its network namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedPod {
    pub pod: Pod,
    pub ifindexes: Vec<u32>,
}

/// The host interfaces of each pod: the links whose peer namespace has the
/// id the host gives the pod's namespace file (`nsid`), else the host
/// interfaces the runtime's CNI result names.
pub fn resolve(pods: Vec<Pod>, links: &[HostLink], nsid: impl Fn(&Path) -> Option<i32>) -> Vec<ResolvedPod> {
    pods.into_iter()
        .map(|pod| {
            let id = pod.netns.as_deref().and_then(&nsid);
            let mut ifindexes: Vec<u32> =
                links.iter().filter(|l| id.is_some() && l.link_netnsid == id).map(|l| l.ifindex).collect();
            if ifindexes.is_empty() {
                ifindexes = links.iter().filter(|l| pod.host_ifaces.contains(&l.name)).map(|l| l.ifindex).collect();
            }
            ResolvedPod { pod, ifindexes }
        })
        .collect()
}

/// Listings of the node's pods, each with the Unix time (ns) it was taken.
#[derive(Debug, Default)]
pub struct History {
    listings: VecDeque<(u64, Listing)>,
    /// The last window's look-ups and the listings (and label) they were
    /// built from: pods rarely change between windows, so most windows reuse
    /// them. Holding the listings keeps their addresses from being reused.
    last: Option<(Vec<Listing>, Option<String>, Arc<PodIndex>)>,
}

/// One listing of the node's pods, shared by the windows it covers.
type Listing = Arc<Vec<ResolvedPod>>;

/// Bound on listings kept between two windows (refreshes are rate-limited;
/// this only guards against windows that stop closing).
const MAX_LISTINGS: usize = 4096;

impl History {
    /// A listing taken at `at_ns`; one equal to the last is not kept again
    /// (the state it describes holds since the earlier one).
    pub fn push(&mut self, at_ns: u64, pods: Vec<ResolvedPod>) {
        if self.listings.back().is_some_and(|(_, last)| **last == pods) {
            return;
        }
        if self.listings.len() >= MAX_LISTINGS {
            self.listings.pop_front();
        }
        self.listings.push_back((at_ns, Arc::new(pods)));
    }

    pub fn is_empty(&self) -> bool {
        self.listings.is_empty()
    }

    /// The newest listing, read without changing what windows will use.
    pub fn newest(&self) -> Option<Listing> {
        self.listings.back().map(|(_, l)| l.clone())
    }

    /// Builds the next window's lookups now: the listing task calls it after
    /// a listing that changed, so the window's close finds them ready (the
    /// listings held are those the next window uses, unless another comes
    /// before it closes).
    pub fn prepare(&mut self, label_key: Option<&str>) {
        if !self.listings.is_empty() {
            let all = self.listings.iter().map(|(_, l)| l.clone()).collect();
            self.lookups(all, label_key);
        }
    }

    /// The lookups of `used`: the last ones when built from the same
    /// listings, else built now.
    fn lookups(&mut self, used: Vec<Listing>, label_key: Option<&str>) -> Arc<PodIndex> {
        match &self.last {
            Some((l, label, index))
                if label.as_deref() == label_key && l.len() == used.len() && l.iter().zip(&used).all(|(a, b)| Arc::ptr_eq(a, b)) =>
            {
                index.clone()
            }
            _ => {
                let index = Arc::new(PodIndex::build(used.iter().flat_map(|l| l.iter()), label_key));
                self.last = Some((used, label_key.map(str::to_string), index.clone()));
                index
            }
        }
    }

    /// The lookups of the window `[start_ns, end_ns)`: the last listing at
    /// or before its start and all taken in it. Forgets the listings no later
    /// window needs. `None` before the first listing.
    pub fn window(&mut self, start_ns: u64, end_ns: u64, label_key: Option<&str>) -> Option<Arc<PodIndex>> {
        if self.listings.is_empty() {
            return None;
        }
        // Before the first listing (the agent's start), the first one stands
        // for the state at the window's start.
        let first = self.listings.iter().rposition(|(at, _)| *at <= start_ns).unwrap_or(0);
        let used: Vec<Listing> = self
            .listings
            .iter()
            .enumerate()
            .skip(first)
            .take_while(|(i, (at, _))| *i == first || *at < end_ns)
            .map(|(_, (_, l))| l.clone())
            .collect();
        let index = self.lookups(used, label_key);
        // The next window starts at `end_ns`: it needs the last listing at or
        // before that and the later ones.
        if let Some(keep) = self.listings.iter().rposition(|(at, _)| *at <= end_ns) {
            self.listings.drain(..keep);
        }
        Some(index)
    }
}

/// One pod's identity as the records write it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodIdent {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    pub uid: Arc<str>,
    /// `namespace/name`, for `k8s-src-pod` / `k8s-dst-pod`.
    pub qualified: Arc<str>,
    /// The configured label's value.
    pub label: Option<Arc<str>>,
}

/// Marks "no pod" (unknown or ambiguous) in the lookups.
pub const NO_POD: u32 = u32::MAX;

/// One window's lookups: interface → pod, address → pod.
#[derive(Clone, Debug, Default)]
pub struct PodIndex {
    pods: Vec<PodIdent>,
    by_ifindex: Map<u32, u32>,
    // Addresses as integers: one multiply to hash, not an enum's bytes.
    by_v4: Map<u32, u32>,
    by_v6: Map<u128, u32>,
}

impl PodIndex {
    /// From the pods seen in a window (the same pod may come several times).
    /// Pods without a network namespace of their own (hostNetwork) hold the
    /// node's addresses, not theirs: they get no address.
    pub fn build<'a>(pods: impl Iterator<Item = &'a ResolvedPod>, label_key: Option<&str>) -> PodIndex {
        let mut index = PodIndex::default();
        let mut known: HashMap<(&str, &str, &str), u32> = HashMap::new();
        // Claims an entry for pod `i`; a second pod makes it ambiguous.
        fn claim<K: std::hash::Hash + Eq>(m: &mut Map<K, u32>, k: K, i: u32) {
            let e = m.entry(k).or_insert(i);
            if *e != i {
                *e = NO_POD;
            }
        }
        for r in pods {
            let p = &r.pod;
            let i = *known.entry((p.namespace.as_str(), p.name.as_str(), p.uid.as_str())).or_insert_with(|| {
                index.pods.push(PodIdent {
                    namespace: p.namespace.as_str().into(),
                    name: p.name.as_str().into(),
                    uid: p.uid.as_str().into(),
                    qualified: format!("{}/{}", p.namespace, p.name).into(),
                    label: label_key.and_then(|k| p.labels.get(k)).map(|v| v.as_str().into()),
                });
                index.pods.len() as u32 - 1
            });
            for ifindex in &r.ifindexes {
                claim(&mut index.by_ifindex, *ifindex, i);
            }
            if p.netns.is_some() {
                for ip in &p.ips {
                    match ip {
                        IpAddr::V4(a) => claim(&mut index.by_v4, u32::from(*a), i),
                        IpAddr::V6(a) => claim(&mut index.by_v6, u128::from(*a), i),
                    }
                }
            }
        }
        index
    }

    pub fn len(&self) -> usize {
        self.pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    pub fn pod(&self, i: u32) -> Option<&PodIdent> {
        self.pods.get(i as usize)
    }

    /// The pod whose namespace the interface leads into, or [`NO_POD`].
    pub fn of_ifindex(&self, ifindex: u32) -> u32 {
        self.by_ifindex.get(&ifindex).copied().unwrap_or(NO_POD)
    }

    /// The pod on this node that holds the address, or [`NO_POD`].
    pub fn of_ip(&self, ip: IpAddr) -> u32 {
        match ip {
            IpAddr::V4(a) => self.by_v4.get(&u32::from(a)),
            IpAddr::V6(a) => self.by_v6.get(&u128::from(a)),
        }
        .copied()
        .unwrap_or(NO_POD)
    }
}

/// The records' Kubernetes group for one window: one shared `Arc` per
/// (interface pod, source pod, destination pod), so a record costs two
/// address lookups and a cache hit.
pub struct K8sGroups<'a> {
    index: &'a PodIndex,
    /// Key: interface pod, source pod, destination pod (32 bits each).
    cache: Map<u128, Option<Arc<K8sMeta>>>,
    /// The last two addresses looked up: on a pod's veth one end of nearly
    /// every flow is the pod itself.
    recent: [(Option<IpAddr>, u32); 2],
}

impl<'a> K8sGroups<'a> {
    pub fn new(index: &'a PodIndex) -> Self {
        K8sGroups { index, cache: Map::default(), recent: [(None, NO_POD); 2] }
    }

    fn pod_of(&mut self, ip: IpAddr) -> u32 {
        if self.recent[0].0 == Some(ip) {
            return self.recent[0].1;
        }
        if self.recent[1].0 == Some(ip) {
            self.recent.swap(0, 1);
            return self.recent[0].1;
        }
        let pod = self.index.of_ip(ip);
        self.recent[1] = (Some(ip), pod);
        pod
    }

    /// The group of a record on the interface of pod `iface` (or
    /// [`NO_POD`]) between these packet addresses (`None`: NODATA).
    pub fn of(&mut self, iface: u32, addrs: Option<(IpAddr, IpAddr)>) -> Option<&Arc<K8sMeta>> {
        let (src, dst) = match addrs {
            Some((s, d)) => (self.pod_of(s), self.pod_of(d)),
            None => (NO_POD, NO_POD),
        };
        let index = self.index;
        self.cache
            .entry((iface as u128) << 64 | (src as u128) << 32 | dst as u128)
            .or_insert_with(|| {
                let (own, s, d) = (index.pod(iface), index.pod(src), index.pod(dst));
                (own.is_some() || s.is_some() || d.is_some()).then(|| {
                    Arc::new(K8sMeta {
                        namespace: own.map(|p| p.namespace.clone()),
                        pod_name: own.map(|p| p.name.clone()),
                        pod_uid: own.map(|p| p.uid.clone()),
                        pod_label: own.and_then(|p| p.label.clone()),
                        src_pod: s.map(|p| p.qualified.clone()),
                        dst_pod: d.map(|p| p.qualified.clone()),
                    })
                })
            })
            .as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn pod(ns: &str, name: &str, uid: &str, ip: &str, netns: &str) -> Pod {
        Pod {
            id: format!("sb-{name}"),
            namespace: ns.into(),
            name: name.into(),
            uid: uid.into(),
            labels: [("app".to_string(), format!("{name}-app"))].into(),
            ips: vec![ip.parse().unwrap()],
            netns: Some(PathBuf::from(netns)),
            host_ifaces: vec![],
        }
    }

    fn link(ifindex: u32, name: &str, nsid: Option<i32>) -> HostLink {
        HostLink { ifindex, name: name.into(), link_netnsid: nsid }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Interfaces by peer namespace id; the CNI's host interface name only
    /// where the namespace has no id.
    #[test]
    fn interfaces_map_to_pods_by_namespace_id_then_name() {
        let a = pod("shop", "web", "u1", "10.88.0.2", "/run/netns/cni-a");
        let mut b = pod("shop", "db", "u2", "10.88.0.3", "/run/netns/cni-b");
        b.ips.push(ip("fd00:88::3"));
        let mut c = pod("ops", "agent", "u3", "10.88.0.4", "/run/netns/cni-c");
        c.host_ifaces = vec!["vethc".into(), "flbr0".into()];
        let links = [
            link(1, "lo", None),
            link(7, "vetha", Some(0)),
            link(8, "vethb", Some(1)),
            link(9, "vethc", Some(5)),
            link(3, "flbr0", None),
        ];
        let nsid = |p: &Path| match p.to_str().unwrap() {
            "/run/netns/cni-a" => Some(0),
            "/run/netns/cni-b" => Some(1),
            _ => None,
        };
        let r = resolve(vec![a, b, c], &links, nsid);
        assert_eq!(r.iter().map(|p| p.ifindexes.clone()).collect::<Vec<_>>(), [vec![7], vec![8], vec![9, 3]]);
        let idx = PodIndex::build(r.iter(), Some("app"));
        let name = |i: u32| idx.pod(i).map(|p| p.qualified.to_string());
        let by_iface = [7, 8, 9].map(|i| name(idx.of_ifindex(i)));
        assert_eq!(by_iface, [Some("shop/web".into()), Some("shop/db".into()), Some("ops/agent".into())]);
        assert_eq!(idx.of_ifindex(1), NO_POD);
        assert_eq!(name(idx.of_ip(ip("10.88.0.3"))), Some("shop/db".into()));
        assert_eq!(name(idx.of_ip(ip("fd00:88::3"))), Some("shop/db".into()));
        assert_eq!(idx.of_ip(ip("fd00:88::4")), NO_POD);
        assert_eq!(idx.of_ip(ip("10.88.0.9")), NO_POD);
        assert_eq!(idx.pod(idx.of_ifindex(7)).unwrap().label.as_deref(), Some("web-app"));
    }

    /// A bridge named by every pod's CNI result belongs to none of them; a
    /// hostNetwork pod (no namespace of its own) holds no address.
    #[test]
    fn shared_interfaces_and_host_network_pods_map_to_nobody() {
        let mut a = pod("shop", "web", "u1", "10.88.0.2", "/a");
        let mut b = pod("shop", "db", "u2", "10.88.0.3", "/b");
        a.host_ifaces = vec!["vetha".into(), "flbr0".into()];
        b.host_ifaces = vec!["vethb".into(), "flbr0".into()];
        let mut h = pod("kube-system", "kube-proxy", "u3", "192.0.2.10", "/x");
        h.netns = None;
        let links = [link(3, "flbr0", None), link(7, "vetha", None), link(8, "vethb", None)];
        let r = resolve(vec![a, b, h], &links, |_| None);
        let idx = PodIndex::build(r.iter(), None);
        assert_eq!((idx.of_ifindex(3), idx.of_ifindex(7), idx.of_ifindex(8)), (NO_POD, 0, 1));
        assert_eq!(idx.of_ip(ip("192.0.2.10")), NO_POD);
        assert_eq!(idx.len(), 3);
        assert!(idx.pod(0).unwrap().label.is_none());
    }

    /// A pod gone after its window keeps its identity for that window; the
    /// next pod with its address names the next window only; an address
    /// held by two pods within one window is `-`; old listings go.
    #[test]
    fn windows_keep_departed_pods_and_ip_reuse_does_not_move_flows() {
        let s = 1_000_000_000u64;
        let old = || vec![ResolvedPod { pod: pod("shop", "web-1", "u1", "10.88.0.2", "/a"), ifindexes: vec![7] }];
        let new = || vec![ResolvedPod { pod: pod("shop", "web-2", "u2", "10.88.0.2", "/b"), ifindexes: vec![9] }];
        let mut h = History::default();
        assert!(h.window(0, 60 * s, None).is_none());
        h.push(5 * s, old());
        h.push(30 * s, old()); // unchanged: not kept again
        let who = |idx: &PodIndex, a: &str| idx.pod(idx.of_ip(ip(a))).map(|p| p.qualified.to_string());
        // Window [60, 120): web-1 all along, deleted at 125, web-2 at 130.
        h.push(125 * s, vec![]);
        h.push(130 * s, new());
        let w1 = h.window(60 * s, 120 * s, None).unwrap();
        assert_eq!((who(&w1, "10.88.0.2"), w1.of_ifindex(7), w1.of_ifindex(9)), (Some("shop/web-1".into()), 0, NO_POD));
        // Window [120, 180): both held the address in it: ambiguous; each
        // interface still names its pod.
        let w2 = h.window(120 * s, 180 * s, None).unwrap();
        assert_eq!(w2.of_ip(ip("10.88.0.2")), NO_POD);
        let pod_name = |i: u32| w2.pod(w2.of_ifindex(i)).unwrap().name.to_string();
        assert_eq!((pod_name(7), pod_name(9)), ("web-1".into(), "web-2".into()));
        // Window [180, 240): web-1 is gone for good.
        let w3 = h.window(180 * s, 240 * s, None).unwrap();
        assert_eq!((who(&w3, "10.88.0.2"), w3.len(), w3.of_ifindex(7)), (Some("shop/web-2".into()), 1, NO_POD));
        assert_eq!(h.listings.len(), 1);
        // No listing since: the last one stays valid (runtime unreachable).
        let w4 = h.window(240 * s, 300 * s, None).unwrap();
        assert_eq!(who(&w4, "10.88.0.2"), Some("shop/web-2".into()));
        // Same listing, same label: the look-ups are reused, not rebuilt.
        assert!(Arc::ptr_eq(&w3, &w4));
        let labelled = h.window(300 * s, 360 * s, Some("app")).unwrap();
        assert!(!Arc::ptr_eq(&w4, &labelled));
        assert_eq!(labelled.pod(0).unwrap().label.as_deref(), Some("web-2-app"));
    }

    /// A listing that changed during a window: its lookups are prepared when
    /// it arrives, and the window's close uses exactly those (nothing built
    /// at the close), with the same answers as lookups built there.
    #[test]
    fn lookups_prepared_with_a_listing_serve_the_window_close() {
        let s = 1_000_000_000u64;
        let web = |name: &str, a: &str, i: u32| ResolvedPod { pod: pod("shop", name, name, a, "/n"), ifindexes: vec![i] };
        let mut h = History::default();
        h.push(5 * s, vec![web("web-1", "10.88.0.2", 7)]);
        h.window(0, 60 * s, Some("app")).unwrap();
        h.push(70 * s, vec![web("web-1", "10.88.0.2", 7), web("web-2", "10.88.0.3", 9)]);
        h.prepare(Some("app"));
        let prepared = h.last.as_ref().unwrap().2.clone();
        let mut fresh = History { listings: h.listings.clone(), last: None };
        let w = h.window(60 * s, 120 * s, Some("app")).unwrap();
        assert!(Arc::ptr_eq(&prepared, &w), "the close rebuilt the lookups");
        let built = fresh.window(60 * s, 120 * s, Some("app")).unwrap();
        for a in ["10.88.0.2", "10.88.0.3", "10.88.0.4"] {
            let name = |x: &PodIndex| x.pod(x.of_ip(ip(a))).map(|p| p.qualified.to_string());
            assert_eq!(name(&w), name(&built), "{a}");
        }
        assert_eq!((w.of_ifindex(7), w.of_ifindex(9), w.len()), (built.of_ifindex(7), built.of_ifindex(9), 2));
        // Another label: the prepared ones do not fit, the close builds.
        h.push(130 * s, vec![web("web-2", "10.88.0.3", 9)]);
        h.prepare(Some("app"));
        let other = h.window(120 * s, 180 * s, None).unwrap();
        assert!(!Arc::ptr_eq(&h.last.as_ref().unwrap().2, &prepared) && other.pod(0).unwrap().label.is_none());
    }

    /// The first listing came after the window started: it still names the
    /// window's pods (the agent's first window).
    #[test]
    fn a_first_listing_inside_the_window_counts_for_it() {
        let mut h = History::default();
        h.push(70, vec![ResolvedPod { pod: pod("a", "b", "u", "10.0.0.1", "/n"), ifindexes: vec![] }]);
        assert_eq!(h.window(60, 120, None).unwrap().of_ip(ip("10.0.0.1")), 0);
    }

    /// One group per (interface pod, source pod, destination pod), shared.
    #[test]
    fn record_groups_are_shared_per_pod_triple() {
        let r = [
            ResolvedPod { pod: pod("shop", "web", "u1", "10.88.0.2", "/a"), ifindexes: vec![7] },
            ResolvedPod { pod: pod("shop", "db", "u2", "10.88.0.3", "/b"), ifindexes: vec![8] },
        ];
        let idx = PodIndex::build(r.iter(), Some("app"));
        let mut g = K8sGroups::new(&idx);
        let web = idx.of_ifindex(7);
        let a = g.of(web, Some((ip("10.88.0.2"), ip("10.88.0.3")))).unwrap().clone();
        let b = g.of(web, Some((ip("10.88.0.2"), ip("10.88.0.3")))).unwrap().clone();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(
            *a,
            K8sMeta {
                namespace: Some("shop".into()),
                pod_name: Some("web".into()),
                pod_uid: Some("u1".into()),
                pod_label: Some("web-app".into()),
                src_pod: Some("shop/web".into()),
                dst_pod: Some("shop/db".into()),
            }
        );
        let outside = g.of(NO_POD, Some((ip("10.88.0.2"), ip("8.8.8.8")))).unwrap().clone();
        let o = (outside.namespace.as_deref(), outside.src_pod.as_deref(), outside.dst_pod.as_deref());
        assert_eq!(o, (None, Some("shop/web"), None));
        assert!(g.of(NO_POD, Some((ip("1.1.1.1"), ip("8.8.8.8")))).is_none());
        // After the recent-address memo turned over: still the right pods.
        let back = g.of(NO_POD, Some((ip("8.8.8.8"), ip("10.88.0.3")))).unwrap();
        assert_eq!((back.src_pod.as_deref(), back.dst_pod.as_deref()), (None, Some("shop/db")));
        let again = g.of(web, Some((ip("10.88.0.3"), ip("10.88.0.2")))).unwrap();
        assert_eq!((again.src_pod.as_deref(), again.dst_pod.as_deref()), (Some("shop/db"), Some("shop/web")));
        assert_eq!(g.of(web, None).unwrap().pod_name.as_deref(), Some("web"));
    }
}
