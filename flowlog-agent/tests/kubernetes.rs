//! Pod identity against a real container runtime: a private containerd
//! (flowlog_testkit::containerd) makes pod sandboxes through CRI, with the
//! agent's own CRI client, on the `bridge` and the `ptp` CNI networks. Needs
//! root and `containerd runc containernetworking-plugins umoci` (installed by
//! `cargo xtask test`).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, UdpSocket},
    path::{Path, PathBuf},
    thread,
    time::Duration,
};

use flowlog_agent::metadata::kubernetes::{
    cri::{self, v1},
    model::Pod,
};
use flowlog_testkit::{
    agent::{Agent, AgentCmd, Rec, FORMAT},
    containerd::{self, Containerd, BRIDGE, BRIDGE_GW, BRIDGE_NET, PTP_GW, PTP_HANDLER, PTP_NET},
    netns::{in_netns_file, Topo},
    require_root,
};
use tonic::transport::Channel;

/// The runtime through the agent's CRI client, on a runtime of the test's own.
struct Cri {
    rt: tokio::runtime::Runtime,
    client: v1::runtime_service_client::RuntimeServiceClient<Channel>,
    socket: PathBuf,
    cgroup_parent: String,
}

impl Cri {
    fn connect(ctrd: &Containerd) -> Cri {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let socket = ctrd.socket();
        let client = rt.block_on(cri::connect(&socket)).unwrap_or_else(|e| panic!("{e}\n{}", ctrd.log()));
        Cri { rt, client, socket, cgroup_parent: ctrd.cgroup_parent() }
    }

    /// RunPodSandbox: `handler` "" is the bridge network, [`PTP_HANDLER`] the ptp one.
    fn run_pod(&mut self, ns: &str, name: &str, uid: &str, handler: &str, labels: &[(&str, &str)]) -> String {
        let config = v1::PodSandboxConfig {
            metadata: Some(v1::PodSandboxMetadata { name: name.into(), uid: uid.into(), namespace: ns.into(), attempt: 0 }),
            hostname: name.into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            linux: Some(v1::LinuxPodSandboxConfig { cgroup_parent: self.cgroup_parent.clone(), ..Default::default() }),
            ..Default::default()
        };
        let req = v1::RunPodSandboxRequest { config: Some(config), runtime_handler: handler.into() };
        let resp = self.rt.block_on(self.client.run_pod_sandbox(req)).unwrap_or_else(|e| panic!("RunPodSandbox {ns}/{name}: {e}"));
        resp.into_inner().pod_sandbox_id
    }

    /// StopPodSandbox (CNI DEL: the veth goes, the address is freed) and RemovePodSandbox.
    fn remove_pod(&mut self, id: &str) {
        let stop = v1::StopPodSandboxRequest { pod_sandbox_id: id.into() };
        self.rt.block_on(self.client.stop_pod_sandbox(stop)).unwrap();
        let rm = v1::RemovePodSandboxRequest { pod_sandbox_id: id.into() };
        self.rt.block_on(self.client.remove_pod_sandbox(rm)).unwrap();
    }

    /// `cri::list_pods`, by name.
    fn pods(&mut self) -> BTreeMap<String, Pod> {
        let pods = self.rt.block_on(cri::list_pods(&mut self.client, &self.socket)).unwrap();
        pods.into_iter().map(|p| (format!("{}/{}", p.namespace, p.name), p)).collect()
    }
}

/// `n` datagrams of `size` bytes from `src` in namespace file `from` to
/// `dst:port` in namespace file `to`, each awaited; returns the source port.
fn udp(from: &Path, src: Ipv4Addr, to: &Path, dst: Ipv4Addr, port: u16, n: usize, size: usize) -> u16 {
    let rx = in_netns_file(to, move || UdpSocket::bind((dst, port))).unwrap_or_else(|e| panic!("bind {dst}:{port}: {e}"));
    let tx = in_netns_file(from, move || UdpSocket::bind((src, 0))).unwrap_or_else(|e| panic!("bind {src}: {e}"));
    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = vec![0u8; 65536];
    for i in 0..n {
        tx.send_to(&vec![i as u8; size], (dst, port)).unwrap();
        assert_eq!(rx.recv(&mut buf).unwrap_or_else(|e| panic!("{src} -> {dst}:{port}: datagram {i} lost: {e}")), size);
    }
    tx.local_addr().unwrap().port()
}

fn ipv4(p: &Pod) -> Ipv4Addr {
    match p.ips.as_slice() {
        [IpAddr::V4(a)] => *a,
        other => panic!("{}/{}: addresses {other:?}", p.namespace, p.name),
    }
}

/// The harness and the CRI client, checked against the kernel's view: every
/// pod listed with its identity, labels, address and network namespace, its
/// host veth named in the CNI result the same as the kernel's peer link says;
/// traffic flows; a removed pod is gone from the list and its veth from the
/// host; the teardown leaves nothing.
#[test]
fn containerd_pods_map_to_their_host_veths_and_teardown_is_clean() {
    if !require_root() {
        return;
    }
    let ctrd = Containerd::start();
    let mut c = Cri::connect(&ctrd);
    let web1 = c.run_pod("shop", "web-1", "uid-web-1", "", &[("app", "web"), ("tier", "front")]);
    let web2 = c.run_pod("shop", "web-2", "uid-web-2", "", &[("app", "web")]);
    let db1 = c.run_pod("data", "db-1", "uid-db-1", PTP_HANDLER, &[("app", "db")]);
    let pods = c.pods();
    assert_eq!(pods.keys().collect::<Vec<_>>(), ["data/db-1", "shop/web-1", "shop/web-2"]);
    let (w1, w2, d1) = (&pods["shop/web-1"], &pods["shop/web-2"], &pods["data/db-1"]);
    assert_eq!((w1.id.as_str(), w2.id.as_str(), d1.id.as_str()), (web1.as_str(), web2.as_str(), db1.as_str()));
    assert_eq!((w1.uid.as_str(), d1.uid.as_str()), ("uid-web-1", "uid-db-1"));
    assert_eq!(w1.labels, [("app".to_string(), "web".to_string()), ("tier".to_string(), "front".to_string())].into());
    for (p, net) in [(w1, [10, 88, 0]), (w2, [10, 88, 0]), (d1, [10, 89, 0])] {
        let a = ipv4(p).octets();
        assert_eq!(a[..3], net, "{p:?}");
        let netns = p.netns.as_deref().unwrap_or_else(|| panic!("no netns: {p:?}"));
        assert!(netns.starts_with(ctrd.scratch()), "{p:?}");
        // The CNI result's host veth is the kernel's peer of the pod's eth0
        // (the bridge: shared by the bridge pods, nobody's).
        let veth = ctrd.pod_host_veth(netns);
        let named: Vec<&String> = p.host_ifaces.iter().filter(|n| *n != BRIDGE).collect();
        assert_eq!(named, [&veth], "{p:?}");
        // The address is the pod's eth0's, inside its namespace.
        let addrs = containerd::pod_exec(netns, &["ip", "-4", "-o", "addr", "show", "eth0"]).unwrap();
        assert!(addrs.contains(&format!(" {}/24 ", ipv4(p))), "{addrs}");
    }
    assert_eq!(ctrd.host_veths().len(), 3);
    // runc's cgroups under the harness's own parent (removed at teardown).
    let parent = ctrd.cgroup_parent();
    let cgroup = |id: &str| {
        let rel = format!("{}/{id}", parent.trim_start_matches('/'));
        let roots = std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten().map(|e| e.path());
        std::iter::once(PathBuf::from("/sys/fs/cgroup")).chain(roots).any(|h| h.join(&rel).is_dir())
    };
    assert!(cgroup(&web1) && cgroup(&db1));
    // Traffic: pod -> its gateway (in containerd's namespace) on both
    // networks, bridge pod -> bridge pod, ptp pod -> bridge pod (routed).
    let host = PathBuf::from(format!("/run/netns/{}", ctrd.netns().name()));
    let ns = |p: &Pod| p.netns.clone().unwrap();
    udp(&ns(w1), ipv4(w1), &host, BRIDGE_GW, 7001, 2, 100);
    udp(&ns(d1), ipv4(d1), &host, PTP_GW, 7002, 2, 100);
    udp(&ns(w1), ipv4(w1), &ns(w2), ipv4(w2), 7003, 2, 100);
    udp(&ns(d1), ipv4(d1), &ns(w2), ipv4(w2), 7004, 2, 100);
    // Removing a pod through CRI: gone from the list, its veth gone.
    let gone = ctrd.pod_host_veth(w2.netns.as_deref().unwrap());
    c.remove_pod(&web2);
    let pods = c.pods();
    assert_eq!(pods.keys().collect::<Vec<_>>(), ["data/db-1", "shop/web-1"]);
    assert!(ctrd.host_veths().iter().all(|(n, _)| *n != gone));
    // Its address again, for a pod of another name.
    ctrd.allocate_next(BRIDGE_NET, ipv4(w2));
    let web3 = c.run_pod("shop", "web-3", "uid-web-3", "", &[]);
    let w3 = c.pods()["shop/web-3"].clone();
    assert_eq!((w3.id.as_str(), ipv4(&w3)), (web3.as_str(), ipv4(w2)));
    assert_eq!(ctrd.pod_host_veth(&ns(&w3)), w3.host_ifaces.iter().find(|n| *n != BRIDGE).unwrap().as_str());
    // Teardown with live pods (as after a failed test) leaves nothing.
    let scratch = ctrd.scratch().to_path_buf();
    let cache = |id: &str, net: &str| Path::new("/var/lib/cni/results").join(format!("{net}-{id}-eth0"));
    assert!(cache(&web1, BRIDGE_NET).exists() && cache(&db1, PTP_NET).exists());
    drop(c);
    assert_eq!(ctrd.stop(), Vec::<String>::new());
    assert!(!scratch.exists());
    assert!(!cache(&web1, BRIDGE_NET).exists() && !cache(&db1, PTP_NET).exists());
    assert!(!cgroup(&web1) && !cgroup(&db1));
}
