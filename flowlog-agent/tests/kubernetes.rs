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

/// A pod's network namespace file.
fn ns_of(p: &Pod) -> PathBuf {
    p.netns.clone().unwrap_or_else(|| panic!("{}/{}: no netns", p.namespace, p.name))
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
    let Some(ctrd) = Containerd::start_or_skip() else { return };
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
    udp(&ns_of(w1), ipv4(w1), &host, BRIDGE_GW, 7001, 2, 100);
    udp(&ns_of(d1), ipv4(d1), &host, PTP_GW, 7002, 2, 100);
    udp(&ns_of(w1), ipv4(w1), &ns_of(w2), ipv4(w2), 7003, 2, 100);
    udp(&ns_of(d1), ipv4(d1), &ns_of(w2), ipv4(w2), 7004, 2, 100);
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
    assert_eq!(ctrd.pod_host_veth(&ns_of(&w3)), w3.host_ifaces.iter().find(|n| *n != BRIDGE).unwrap().as_str());
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

/// The tests' fields and the Kubernetes extension fields.
fn k8s_format() -> String {
    format!("{FORMAT} ${{k8s-namespace}} ${{k8s-pod-name}} ${{k8s-pod-uid}} ${{k8s-src-pod}} ${{k8s-dst-pod}} ${{k8s-pod-label}}")
}

/// The agent in containerd's namespace on every veth (pods come and go) and
/// the bridge, pod identity from the harness's CRI socket, label `app`.
fn start_agent(ctrd: &Containerd, interval: &str, extra: &[&str]) -> Agent {
    let (fmt, sock) = (k8s_format(), ctrd.socket());
    let agent = AgentCmd::new(env!("CARGO_BIN_EXE_flowlog-agent"), ctrd.netns().name())
        .ifaces(&["veth*", BRIDGE])
        .args(&["--interval", interval, "--log-format", &fmt, "--kubernetes", "on"])
        .args(extra)
        .args(&["--cri-socket", sock.to_str().unwrap(), "--k8s-refresh", "1", "--k8s-pod-label", "app"])
        .check(accepted)
        .start();
    agent.wait_log(Duration::from_secs(10), |l| l.contains("kubernetes: pod identity from the container runtime"));
    // The first pod listing (started before `ready`; a few CRI calls).
    thread::sleep(Duration::from_millis(1000));
    agent
}

/// Nothing here drops packets.
fn accepted(r: &Rec) {
    if r.status == "OK" {
        assert_eq!(r.action, "ACCEPT", "{r:?}");
    }
}

/// A record's pod fields: the interface's pod as `namespace/name/uid`, the
/// source's and destination's pods, the interface pod's label.
type PodFields = (String, String, String, String);

fn pod_fields(r: &Rec) -> PodFields {
    let t = |s: &Option<std::sync::Arc<str>>| s.as_deref().unwrap_or("-").to_string();
    let k = &r.k8s;
    let owner = match (&k.namespace, &k.pod_name, &k.pod_uid) {
        (None, None, None) => "-".to_string(),
        _ => format!("{}/{}/{}", t(&k.namespace), t(&k.pod_name), t(&k.pod_uid)),
    };
    (owner, t(&k.src_pod), t(&k.dst_pod), t(&k.pod_label))
}

/// Packets and bytes of the OK IPv4 UDP records to `dport`, per direction and pod fields.
fn by_pod(recs: &[Rec], dport: u16) -> BTreeMap<(String, PodFields), (u64, u64)> {
    let mut m = BTreeMap::new();
    for r in recs.iter().filter(|r| r.status == "OK" && r.proto == Some(17) && r.dport == Some(dport)) {
        let e = m.entry((r.direction.clone(), pod_fields(r))).or_insert((0, 0));
        e.0 += r.packets;
        e.1 += r.bytes;
    }
    m
}

/// One expected row: direction, interface's pod, source pod, destination
/// pod, label, and `n` datagrams of `size` bytes (IPv4 + UDP headers: 28 bytes).
type Row<'a> = (&'a str, &'a str, &'a str, &'a str, &'a str, u64, u64);

/// The records to `dport` are exactly `rows`.
fn expect(recs: &[Rec], log: &str, dport: u16, rows: &[Row]) {
    let want: BTreeMap<_, _> = rows
        .iter()
        .map(|&(dir, owner, src, dst, label, n, size)| {
            ((dir.into(), (owner.into(), src.into(), dst.into(), label.into())), (n, n * (size + 28)))
        })
        .collect();
    assert_eq!(by_pod(recs, dport), want, "records to port {dport}; agent log:\n{log}");
}

/// Known UDP traffic between pods of both networks and to the gateways:
/// every record on a pod's veth names that pod (namespace, name, UID,
/// label), the bridge's records name no pod, and every record names the pods
/// behind its source and destination addresses; packets and bytes exact.
#[test]
fn records_name_the_pod_of_each_veth_and_of_each_address() {
    let Some(ctrd) = Containerd::start_or_skip() else { return };
    let mut c = Cri::connect(&ctrd);
    c.run_pod("shop", "web-1", "uid-web-1", "", &[("app", "web")]);
    c.run_pod("shop", "web-2", "uid-web-2", "", &[("app", "web")]);
    c.run_pod("data", "db-1", "uid-db-1", PTP_HANDLER, &[("app", "db")]);
    let pods = c.pods();
    let (w1, w2, d1) = (&pods["shop/web-1"], &pods["shop/web-2"], &pods["data/db-1"]);
    let host = PathBuf::from(format!("/run/netns/{}", ctrd.netns().name()));
    // A short path: a unix socket's is at most 107 bytes.
    let live = PathBuf::from(format!("/run/flowlog-k8s-live-{}.sock", std::process::id()));
    let agent = start_agent(&ctrd, "3600", &["--live-socket", live.to_str().unwrap()]);
    // bridge pod -> bridge pod (bridged), ptp pod -> bridge pod (routed via
    // the bridge), each pod -> its gateway.
    udp(&ns_of(w1), ipv4(w1), &ns_of(w2), ipv4(w2), 7101, 3, 100);
    udp(&ns_of(d1), ipv4(d1), &ns_of(w2), ipv4(w2), 7102, 4, 200);
    udp(&ns_of(w1), ipv4(w1), &host, BRIDGE_GW, 7103, 2, 50);
    udp(&ns_of(d1), ipv4(d1), &host, PTP_GW, 7104, 5, 60);
    // The live view (`top`) names the pods behind the addresses too.
    let out = std::process::Command::new(flowlog_testkit::agent_bin(env!("CARGO_BIN_EXE_flowlog-agent")))
        .args(["top", "--once", "--json", "--live-socket"])
        .arg(&live)
        .output()
        .unwrap();
    assert!(out.status.success(), "top --once --json: {}", String::from_utf8_lossy(&out.stderr));
    let snap: flowlog_agent::live::Snapshot = serde_json::from_slice(&out.stdout).unwrap();
    let pods_of = |port: u16| -> Vec<(String, Option<String>, Option<String>, u64)> {
        let mut v: Vec<_> = snap
            .flows
            .iter()
            .filter(|f| f.dstport == port && f.direction == "ingress")
            .map(|f| (f.interface.clone(), f.src_pod.clone(), f.dst_pod.clone(), f.packets))
            .collect();
        v.sort();
        v
    };
    let (s, d) = (|p: &str| Some(p.to_string()), |p: &str| Some(p.to_string()));
    assert_eq!(pods_of(7101), [(ctrd.pod_host_veth(&ns_of(w1)), s("shop/web-1"), d("shop/web-2"), 3)], "{snap:?}");
    assert_eq!(pods_of(7103).iter().map(|r| (r.1.clone(), r.2.clone(), r.3)).collect::<Vec<_>>(), vec![(s("shop/web-1"), None, 2); 2], "{snap:?}");
    let (recs, log) = agent.stop();
    let (web1, web2, db1) = ("shop/web-1/uid-web-1", "shop/web-2/uid-web-2", "data/db-1/uid-db-1");
    // On the sender's veth (ingress from the pod) and the receiver's (egress to it).
    expect(&recs, &log, 7101, &[
        ("ingress", web1, "shop/web-1", "shop/web-2", "web", 3, 100),
        ("egress", web2, "shop/web-1", "shop/web-2", "web", 3, 100),
    ]);
    // Routed: also out of the bridge, which is no pod's.
    expect(&recs, &log, 7102, &[
        ("ingress", db1, "data/db-1", "shop/web-2", "db", 4, 200),
        ("egress", "-", "data/db-1", "shop/web-2", "-", 4, 200),
        ("egress", web2, "data/db-1", "shop/web-2", "web", 4, 200),
    ]);
    // To the host: the gateway address is no pod's.
    expect(&recs, &log, 7103, &[
        ("ingress", web1, "shop/web-1", "-", "web", 2, 50),
        ("ingress", "-", "shop/web-1", "-", "-", 2, 50),
    ]);
    expect(&recs, &log, 7104, &[
        ("ingress", db1, "data/db-1", "-", "db", 5, 60),
    ]);
}

/// A pod's address goes to the next pod: the window in which the first pod
/// held it names that pod (also after it is gone), the later windows name
/// the next one; the veths' records name their own pods.
#[test]
fn after_ip_reuse_each_window_names_the_pod_that_held_the_address() {
    let Some(ctrd) = Containerd::start_or_skip() else { return };
    let mut c = Cri::connect(&ctrd);
    c.run_pod("data", "client", "uid-client", PTP_HANDLER, &[("app", "client")]);
    let old = c.run_pod("shop", "web-1", "uid-web-1", "", &[("app", "web")]);
    let pods = c.pods();
    let (cl, w1) = (pods["data/client"].clone(), pods["shop/web-1"].clone());
    let addr = ipv4(&w1);
    let interval = 2;
    let agent = start_agent(&ctrd, &interval.to_string(), &[]);
    // Traffic to web-1, which is gone before its window closes.
    udp(&ns_of(&cl), ipv4(&cl), &ns_of(&w1), addr, 7201, 3, 100);
    c.remove_pod(&old);
    // The listing that sees web-1 gone (1 s after its veth went), then a window
    // boundary: an address two pods held within one window would be `-`.
    thread::sleep(Duration::from_millis(1500) + Duration::from_secs(interval));
    // The same address for web-2 (host-local would hand out the next one).
    ctrd.allocate_next(BRIDGE_NET, addr);
    c.run_pod("shop", "web-2", "uid-web-2", "", &[("app", "web")]);
    let w2 = c.pods()["shop/web-2"].clone();
    assert_eq!(ipv4(&w2), addr);
    // The listing that sees web-2 (and the agent on its new veth), then traffic to it.
    thread::sleep(Duration::from_millis(2000));
    udp(&ns_of(&cl), ipv4(&cl), &ns_of(&w2), addr, 7202, 4, 200);
    let (recs, log) = agent.stop();
    let client = "data/client/uid-client";
    expect(&recs, &log, 7201, &[
        ("ingress", client, "data/client", "shop/web-1", "client", 3, 100),
        ("egress", "-", "data/client", "shop/web-1", "-", 3, 100),
        ("egress", "shop/web-1/uid-web-1", "data/client", "shop/web-1", "web", 3, 100),
    ]);
    expect(&recs, &log, 7202, &[
        ("ingress", client, "data/client", "shop/web-2", "client", 4, 200),
        ("egress", "-", "data/client", "shop/web-2", "-", 4, 200),
        ("egress", "shop/web-2/uid-web-2", "data/client", "shop/web-2", "web", 4, 200),
    ]);
}

/// No runtime at the configured socket: a warning that names it and says
/// what to mount; records as without pod identity, the k8s fields `-`.
#[test]
fn without_a_runtime_records_are_exact_and_k8s_fields_are_dashes() {
    if !require_root() {
        return;
    }
    let t = Topo::new(203, false);
    let sock = format!("/run/flowlog-no-cri-{}/containerd.sock", std::process::id());
    let fmt = k8s_format();
    let agent = AgentCmd::new(env!("CARGO_BIN_EXE_flowlog-agent"), &t.a)
        .ifaces(&[&t.a_if])
        .args(&["--interval", "3600", "--log-format", &fmt, "--kubernetes", "on", "--cri-socket", &sock])
        .check(accepted)
        .start();
    let (a_ns, b_ns) = (PathBuf::from(format!("/run/netns/{}", t.a)), PathBuf::from(format!("/run/netns/{}", t.b)));
    udp(&b_ns, t.b4, &a_ns, t.a4, 7301, 6, 300);
    agent.wait_log(Duration::from_secs(10), |l| l.contains(&sock));
    let (recs, log) = agent.stop();
    expect(&recs, &log, 7301, &[("ingress", "-", "-", "-", "-", 6, 300)]);
    let warning = log.lines().find(|l| l.contains("WARN") && l.contains(&sock)).unwrap_or_else(|| panic!("{log}"));
    assert!(warning.contains("mount"), "{warning}");
}
