//! The deployment artefacts (Dockerfile, deploy/) checked against the agent
//! itself: its config parser, its flags, its defaults, and xtask's toolchain.
//! No root needed, except by one test that traces the agent's system calls
//! (skipped without root or strace).
//!
//! Each artefact has a `*_problems` function listing what is wrong with it;
//! the real files must have none, and mutated copies must show the expected
//! problem (so the checks can fail).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
};


use flowlog_testkit::{
    netns::Netns,
    shell_quote,
    systemd::{self, parse_unit, Calls},
};
use flowlog_agent::{
    config::OnExit,
    config::{FileConfig, Overrides, Settings, DEFAULT_METRICS_LISTEN, DEFAULT_PIN_DIR},
    metadata::kubernetes::{cri::default_sockets, Mode as K8sMode},
    ship::{file::FileOutput, Output},
};
use yaml_rust2::{Yaml, YamlLoader};

const AGENT: &str = env!("CARGO_BIN_EXE_flowlog-agent");
/// What the agent needs, in Kubernetes' spelling; systemd's adds `CAP_`.
const CAPS: [&str; 3] = ["BPF", "NET_ADMIN", "PERFMON"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn set<'a>(it: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    it.into_iter().map(String::from).collect()
}

fn agent_help() -> String {
    let out = Command::new(AGENT).arg("--help").output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// `text` with the first `from` outside comment lines replaced by `to`.
fn mutate(text: &str, from: &str, to: &str) -> String {
    let mut done = false;
    let out: Vec<String> = text
        .lines()
        .map(|l| {
            if !done && !l.trim_start().starts_with('#') && l.contains(from) {
                done = true;
                l.replacen(from, to, 1)
            } else {
                l.to_string()
            }
        })
        .collect();
    assert!(done, "{from:?} not found outside comments");
    out.join("\n") + "\n"
}

fn tmp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("flowlog-deploy-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

// ---------------------------------------------------------------- Kubernetes

const MANIFEST: &str = "deploy/kubernetes/flowlog.yaml";

fn yaml_docs(text: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(text).unwrap_or_else(|e| panic!("{MANIFEST}: {e}"))
}

fn doc<'a>(docs: &'a [Yaml], kind: &str) -> &'a Yaml {
    docs.iter().find(|d| d["kind"].as_str() == Some(kind)).unwrap_or_else(|| panic!("no {kind} in {MANIFEST}"))
}

fn strs(y: &Yaml) -> Vec<&str> {
    y.as_vec().map(|v| v.iter().filter_map(Yaml::as_str).collect()).unwrap_or_default()
}

/// The ConfigMap's config file: its key, text and what the agent resolves.
fn configmap_config(docs: &[Yaml]) -> (String, String, Result<Settings, String>) {
    let data = doc(docs, "ConfigMap")["data"].as_hash().expect("ConfigMap without data");
    assert_eq!(data.len(), 1, "the ConfigMap holds one file");
    let (k, v) = data.iter().next().unwrap();
    let (key, text) = (k.as_str().unwrap().to_string(), v.as_str().expect("config is a string").to_string());
    let settings = FileConfig::parse(&text).and_then(|f| Settings::resolve(f, Overrides::default()).map_err(|e| e.to_string()));
    (key, text, settings)
}

fn manifest_problems(text: &str) -> Vec<String> {
    let docs = yaml_docs(text);
    let mut p = Vec::new();
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    if kinds != ["ServiceAccount", "ConfigMap", "DaemonSet"] {
        p.push(format!("objects {kinds:?}, want ServiceAccount, ConfigMap, DaemonSet"));
    }
    for d in &docs {
        if !d["metadata"]["namespace"].is_badvalue() {
            p.push(format!("{} sets a namespace (choose it with kubectl -n)", d["kind"].as_str().unwrap_or("?")));
        }
    }
    let sa = doc(&docs, "ServiceAccount");
    let ds = doc(&docs, "DaemonSet");
    let (cm_key, _, settings) = configmap_config(&docs);
    let s = match settings {
        Ok(s) => s,
        Err(e) => {
            p.push(format!("ConfigMap {cm_key}: the agent rejects it: {e}"));
            return p;
        }
    };

    // What the config says the pod must provide.
    if s.agent.on_exit != OnExit::Keep {
        p.push("config: on-exit must be \"keep\" (rollouts lose nothing)".into());
    }
    let listen: SocketAddr = match s.agent.metrics_listen {
        Some(a) if a.ip().is_unspecified() => a,
        other => {
            p.push(format!("config: metrics-listen {other:?}: the kubelet's probes need it on every address (0.0.0.0:PORT)"));
            return p;
        }
    };
    let port = listen.port() as i64;
    let Some(pin_dir) = s.agent.pin_root.clone() else {
        p.push("config: pinning is off: restarts would lose what was counted".into());
        return p;
    };

    let spec = &ds["spec"]["template"]["spec"];
    if ds["spec"]["selector"]["matchLabels"] != ds["spec"]["template"]["metadata"]["labels"] {
        p.push("DaemonSet selector does not equal the pod labels".into());
    }
    if spec["serviceAccountName"].as_str() != sa["metadata"]["name"].as_str() {
        p.push("DaemonSet does not use the ServiceAccount".into());
    }
    if spec["hostNetwork"].as_bool() != Some(true) {
        p.push("hostNetwork must be true (the node's interfaces)".into());
    }
    if spec["dnsPolicy"].as_str() != Some("ClusterFirstWithHostNet") {
        p.push("dnsPolicy must be ClusterFirstWithHostNet".into());
    }
    for k in ["hostPID", "hostIPC"] {
        if !spec[k].is_badvalue() {
            p.push(format!("{k} is set; the agent needs neither"));
        }
    }
    let tolerations = spec["tolerations"].as_vec().cloned().unwrap_or_default();
    if !tolerations.iter().any(|t| t["operator"].as_str() == Some("Exists") && t["key"].is_badvalue() && t["effect"].is_badvalue()) {
        p.push("tolerations: want `operator: Exists` (every node, every taint)".into());
    }
    let strategy = &ds["spec"]["updateStrategy"];
    if strategy["type"].as_str() != Some("RollingUpdate") || strategy["rollingUpdate"]["maxSurge"].as_i64() != Some(0) {
        p.push("updateStrategy: RollingUpdate with maxSurge 0 (one agent per node: port and pins)".into());
    }
    let annotations = &ds["spec"]["template"]["metadata"]["annotations"];
    if annotations["prometheus.io/port"].as_str() != Some(&port.to_string()) {
        p.push(format!("prometheus.io/port annotation is not the metrics port {port}"));
    }

    let containers = spec["containers"].as_vec().cloned().unwrap_or_default();
    if containers.len() != 1 {
        p.push(format!("{} containers, want 1", containers.len()));
        return p;
    }
    let c = &containers[0];
    let sc = &c["securityContext"];
    if sc["privileged"].as_bool() != Some(false) {
        p.push("securityContext.privileged must be false".into());
    }
    if sc["allowPrivilegeEscalation"].as_bool() != Some(false) {
        p.push("securityContext.allowPrivilegeEscalation must be false".into());
    }
    if sc["readOnlyRootFilesystem"].as_bool() != Some(true) {
        p.push("securityContext.readOnlyRootFilesystem must be true".into());
    }
    // uid 0: Kubernetes gives a non-root uid no effective capabilities.
    if sc["runAsUser"].as_i64() != Some(0) {
        p.push("securityContext.runAsUser must be 0 (added capabilities are not effective for other uids)".into());
    }
    let add = set(strs(&sc["capabilities"]["add"]));
    if add != set(CAPS) {
        p.push(format!("capabilities.add {add:?}, want exactly {CAPS:?}"));
    }
    if strs(&sc["capabilities"]["drop"]) != ["ALL"] {
        p.push("capabilities.drop must be [ALL]".into());
    }

    // Probes and ports: the port the agent listens on.
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let g = &c[probe]["httpGet"];
        if g["path"].as_str() != Some(path) || g["port"].as_i64() != Some(port) {
            p.push(format!("{probe}: want httpGet {path} on port {port}, have {:?} on {:?}", g["path"], g["port"]));
        }
    }
    let ports: Vec<i64> = c["ports"].as_vec().map(|v| v.iter().filter_map(|x| x["containerPort"].as_i64()).collect()).unwrap_or_default();
    if ports != [port] {
        p.push(format!("containerPorts {ports:?}, want [{port}]"));
    }

    // Volumes: every mount has a volume and the other way round.
    let volumes: BTreeMap<String, Yaml> = spec["volumes"]
        .as_vec()
        .map(|v| v.iter().map(|x| (x["name"].as_str().unwrap_or("").to_string(), x.clone())).collect())
        .unwrap_or_default();
    let mounts: Vec<Yaml> = c["volumeMounts"].as_vec().cloned().unwrap_or_default();
    let mount_names = set(mounts.iter().filter_map(|m| m["name"].as_str()));
    if mount_names != volumes.keys().cloned().collect() {
        p.push(format!("volumeMounts {mount_names:?} and volumes {:?} differ", volumes.keys().collect::<Vec<_>>()));
    }
    let mount_of = |pred: &dyn Fn(&Yaml) -> bool| -> Option<(&Yaml, &Yaml)> {
        let (name, v) = volumes.iter().find(|(_, v)| pred(v))?;
        Some((mounts.iter().find(|m| m["name"].as_str() == Some(name))?, v))
    };

    // The config file: FLOWLOG_CONFIG names the ConfigMap's key where it is mounted.
    let env: BTreeMap<&str, &str> = c["env"]
        .as_vec()
        .map(|v| v.iter().filter_map(|e| Some((e["name"].as_str()?, e["value"].as_str()?))).collect())
        .unwrap_or_default();
    let cm_name = doc(&docs, "ConfigMap")["metadata"]["name"].as_str();
    match mount_of(&|v| v["configMap"]["name"].as_str() == cm_name) {
        Some((m, _)) => {
            let want = format!("{}/{cm_key}", m["mountPath"].as_str().unwrap_or("?").trim_end_matches('/'));
            if env.get("FLOWLOG_CONFIG") != Some(&want.as_str()) {
                p.push(format!("FLOWLOG_CONFIG {:?}, want {want:?} (the mounted ConfigMap)", env.get("FLOWLOG_CONFIG")));
            }
            if m["readOnly"].as_bool() != Some(true) {
                p.push("the config mount should be readOnly".into());
            }
        }
        None => p.push("the ConfigMap is not mounted".into()),
    }
    // Command-line flags would silently win over the ConfigMap.
    for k in ["command", "args"] {
        if !c[k].is_badvalue() {
            p.push(format!("container {k} is set: flags override the ConfigMap"));
        }
    }
    if let Some(k) = env.keys().find(|k| k.starts_with("FLOWLOG_") && **k != "FLOWLOG_CONFIG") {
        p.push(format!("{k} in env overrides the ConfigMap"));
    }

    // The pins: the node's /sys/fs/bpf at the same path, writable, holding pin-dir.
    match mount_of(&|v| v["hostPath"]["path"].as_str() == Some("/sys/fs/bpf")) {
        Some((m, _)) => {
            let at = m["mountPath"].as_str().unwrap_or("");
            if at != "/sys/fs/bpf" || m["readOnly"].as_bool() == Some(true) {
                p.push(format!("/sys/fs/bpf must be mounted read-write at /sys/fs/bpf, not {at:?}"));
            }
            if !pin_dir.starts_with(at) || pin_dir == Path::new(at) {
                p.push(format!("pin-dir {} is not below the bpffs mount {at}", pin_dir.display()));
            }
        }
        None => p.push("no hostPath volume for /sys/fs/bpf".into()),
    }
    // interface-ids derive from the node's machine-id.
    if mount_of(&|v| v["hostPath"]["path"].as_str() == Some("/etc/machine-id"))
        .is_none_or(|(m, _)| m["mountPath"].as_str() != Some("/etc/machine-id") || m["readOnly"].as_bool() != Some(true))
    {
        p.push("/etc/machine-id of the node must be mounted read-only at /etc/machine-id".into());
    }
    // With a read-only root, the spool (the agent's default unless the
    // config sets one) and file outputs must land on a writable mount.
    let on_writable = |path: &Path| {
        mounts.iter().any(|m| m["readOnly"].as_bool() != Some(true) && m["mountPath"].as_str().is_some_and(|mp| path.starts_with(mp)))
    };
    if !on_writable(&s.agent.ship.spool_dir) {
        p.push(format!("spool-dir {} is not on a writable volume (s3://, cloudwatch:, firehose:, dir: outputs need it)", s.agent.ship.spool_dir.display()));
    }
    for o in &s.agent.ship.outputs {
        if let Some(FileOutput { path, .. }) = o.spec() {
            let writable = mounts.iter().any(|m| {
                m["readOnly"].as_bool() != Some(true) && m["mountPath"].as_str().is_some_and(|mp| path.starts_with(mp))
            });
            if !writable {
                p.push(format!("output file:{} is not on a writable volume", path.display()));
            }
        }
    }
    // Pod identity (k8s-* fields): the runtime's socket read-only at its own
    // path, the pods' namespace files, and the pods' interfaces captured.
    let k8s = &s.kubernetes;
    if s.agent.format.fields().iter().any(|f| f.is_extension()) && k8s.mode != K8sMode::Off {
        let socket = k8s.socket.clone().unwrap_or_else(|| PathBuf::from(default_sockets()[0]));
        let dir = socket.parent().unwrap_or(Path::new("/"));
        match mount_of(&|v| v["hostPath"]["path"].as_str().is_some_and(|hp| dir.starts_with(hp))) {
            Some((m, v))
                if m["mountPath"].as_str() == v["hostPath"]["path"].as_str() && m["readOnly"].as_bool() == Some(true) => {}
            _ => p.push(format!(
                "kubernetes: the CRI socket {} must be on a read-only hostPath mount at the same path",
                socket.display()
            )),
        }
        match mount_of(&|v| v["hostPath"]["path"].as_str() == Some("/run/netns")) {
            Some((m, _))
                if m["mountPath"].as_str() == Some("/run/netns")
                    && m["readOnly"].as_bool() == Some(true)
                    && m["mountPropagation"].as_str() == Some("HostToContainer") => {}
            _ => p.push(
                "kubernetes: /run/netns must be mounted read-only at /run/netns with mountPropagation HostToContainer".into(),
            ),
        }
        if !s.agent.ifaces.iter().any(|i| i == "veth*") {
            p.push(format!("kubernetes: interfaces {:?} capture no pod interfaces (veth*)", s.agent.ifaces));
        }
    }
    for (kind, want) in [("requests", ["cpu", "memory"]), ("limits", ["cpu", "memory"])] {
        for r in want {
            if c["resources"][kind][r].is_badvalue() {
                p.push(format!("resources.{kind}.{r} missing"));
            }
        }
    }
    p
}

#[test]
fn kubernetes_manifest_matches_the_agent() {
    assert_eq!(manifest_problems(&read(MANIFEST)), Vec::<String>::new());
}

#[test]
fn kubernetes_config_resolves_with_the_agents_parser() {
    let docs = yaml_docs(&read(MANIFEST));
    let (key, text, settings) = configmap_config(&docs);
    assert_eq!(key, "flowlog.toml");
    let s = settings.unwrap();
    assert_eq!(s.agent.on_exit, OnExit::Keep);
    assert_eq!(s.agent.metrics_listen, Some("0.0.0.0:9750".parse().unwrap()));
    assert_eq!(s.agent.pin_root.as_deref(), Some(Path::new(DEFAULT_PIN_DIR)));
    assert_eq!(s.agent.ship.outputs, [Output::stdout()]);
    assert_eq!(s.agent.interval.as_secs(), 60);
    // The node's NICs, as VPC Flow Logs capture ENIs, and the pods' interfaces.
    assert_eq!(s.agent.ifaces, ["eth*", "ens*", "veth*", "eni*", "cali*", "lxc*"]);
    // The AWS default fields first, unchanged; then the k8s-* extensions.
    let fields = s.agent.format.fields();
    assert_eq!(fields[..14], flowlog_records::format::DEFAULT_FIELDS);
    let ext = fields[14..].iter().map(|f| f.name()).collect::<Vec<_>>().join(" ");
    assert_eq!(ext, "k8s-namespace k8s-pod-name k8s-pod-uid k8s-src-pod k8s-dst-pod k8s-pod-label");
    assert_eq!(s.agent.format.version(), 2);
    assert_eq!((s.kubernetes.mode, s.kubernetes.pod_label.as_deref()), (K8sMode::Auto, Some("app.kubernetes.io/name")));
    // The metrics port is the agent's default one.
    assert_eq!(DEFAULT_METRICS_LISTEN.rsplit_once(':').unwrap().1, "9750");
    // And the agent's own check agrees (enrichment tables included).
    let dir = tmp_dir("k8s");
    let file = dir.join(&key);
    std::fs::write(&file, &text).unwrap();
    let out = Command::new(AGENT).arg("check-config").arg("--config").arg(&file).env_clear().output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "check-config: {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("on-exit = \"keep\"\n") && stdout.contains("metrics-listen = \"0.0.0.0:9750\"\n"), "{stdout}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn kubernetes_checks_catch_mistakes() {
    let good = read(MANIFEST);
    let cases: &[(&str, &str, &str)] = &[
        ("add: [BPF, NET_ADMIN, PERFMON]", "add: [BPF, NET_ADMIN, PERFMON, SYS_ADMIN]", "capabilities.add"),
        ("privileged: false", "privileged: true", "privileged must be false"),
        ("metrics-listen = \"0.0.0.0:9750\"", "metrics-listen = \"0.0.0.0:9751\"", "readinessProbe: want httpGet /readyz on port 9751"),
        ("metrics-listen = \"0.0.0.0:9750\"", "metrics-listen = \"127.0.0.1:9750\"", "kubelet's probes need it on every address"),
        ("on-exit = \"keep\"", "on-exit = \"detach\"", "on-exit must be \"keep\""),
        ("pin-dir = \"/sys/fs/bpf/flowlog\"", "pin-dir = \"/run/flowlog\"", "is not below the bpffs mount"),
        ("value: /etc/flowlog/flowlog.toml", "value: /etc/flowlog.toml", "FLOWLOG_CONFIG"),
        ("hostNetwork: true", "hostNetwork: false", "hostNetwork must be true"),
        ("interval = 60", "intervall = 60", "unknown field `intervall`"),
        ("outputs = [\"stdout\"]", "outputs = [\"file:/tmp/records.log\"]", "output file:/tmp/records.log is not on a writable volume"),
        ("interval = 60", "spool-dir = \"/var/lib/flowlog-agent/spool\"\n    interval = 60", "spool-dir /var/lib/flowlog-agent/spool is not on a writable volume"),
        ("mountPath: /var/lib/flowlog", "mountPath: /var/lib/flowlog-data", "spool-dir /var/lib/flowlog/spool is not on a writable volume"),
        ("mountPath: /run/containerd", "mountPath: /host/run/containerd", "CRI socket /run/containerd/containerd.sock must be"),
        ("cri-socket = \"/run/containerd/", "cri-socket = \"/var/run/crio/crio.sock\" # ", "CRI socket /var/run/crio/crio.sock must be"),
        ("mountPropagation: HostToContainer", "mountPropagation: None", "/run/netns must be mounted read-only"),
        ("\"veth*\", ", "", "capture no pod interfaces"),
    ];
    for (from, to, want) in cases {
        let problems = manifest_problems(&mutate(&good, from, to));
        assert!(problems.iter().any(|p| p.contains(want)), "{to:?}: want a problem with {want:?}, got {problems:?}");
    }
    // A file output under the writable data volume is fine.
    let ok = mutate(&good, "outputs = [\"stdout\"]", "outputs = [\"file:/var/lib/flowlog/records.log\"]");
    assert_eq!(manifest_problems(&ok), Vec::<String>::new());
    // The socket mounted writable (the readOnly line after its mountPath).
    let cri_mount = "mountPath: /run/containerd\n              readOnly: true";
    assert!(good.contains(cri_mount));
    let writable = good.replacen(cri_mount, "mountPath: /run/containerd", 1);
    let problems = manifest_problems(&writable);
    assert!(problems.iter().any(|p| p.contains("must be on a read-only hostPath mount")), "{problems:?}");
    // Pod identity off, or no k8s-* field: neither the socket nor pod interfaces are required.
    let off = good
        .replacen("    mode = \"auto\"\n    cri-socket", "    mode = \"off\"\n    cri-socket", 1)
        .replacen(cri_mount, "mountPath: /run/containerd", 1);
    assert_ne!(off, good.replacen(cri_mount, "mountPath: /run/containerd", 1));
    let off = mutate(&off, "mountPropagation: HostToContainer", "mountPropagation: None").replacen("\"veth*\", ", "", 1);
    assert_eq!(manifest_problems(&off), Vec::<String>::new());
    let k8s_fields = " ${k8s-namespace} ${k8s-pod-name} ${k8s-pod-uid} ${k8s-src-pod} ${k8s-dst-pod} ${k8s-pod-label}";
    let no_fields = mutate(&writable, k8s_fields, "");
    assert_eq!(manifest_problems(&no_fields.replacen("\"veth*\", ", "", 1)), Vec::<String>::new());
}

// ------------------------------------------------------------------- systemd

const UNIT: &str = "deploy/systemd/flowlog.service";

fn unit_problems(text: &str, help: &str) -> Vec<String> {
    let unit = parse_unit(text);
    let mut p = Vec::new();
    let empty = BTreeMap::new();
    let svc = unit.get("Service").unwrap_or(&empty);
    let one = |k: &str| svc.get(k).and_then(|v| v.last()).map(String::as_str);
    let words = |k: &str| -> BTreeSet<String> {
        svc.get(k).into_iter().flatten().flat_map(|v| v.split_whitespace()).map(String::from).collect()
    };

    // ExecStart: the binary, flags the agent has, the config and on-exit.
    let exec: Vec<&str> = one("ExecStart").unwrap_or("").split_whitespace().collect();
    if exec.first() != Some(&"/usr/local/bin/flowlog-agent") {
        p.push(format!("ExecStart runs {:?}, want /usr/local/bin/flowlog-agent", exec.first()));
    }
    for flag in exec.iter().filter(|a| a.starts_with("--")) {
        let name = flag.split('=').next().unwrap();
        if !help.split(|c: char| c.is_whitespace() || c == ',').any(|w| w == name) {
            p.push(format!("ExecStart flag {name} is not in `flowlog-agent --help`"));
        }
    }
    let value = |flag: &str| exec.iter().position(|a| *a == flag).and_then(|i| exec.get(i + 1)).copied();
    if value("--config") != Some("/etc/flowlog/flowlog.toml") {
        p.push(format!("--config {:?}, want /etc/flowlog/flowlog.toml", value("--config")));
    }
    if value("--on-exit") != Some("keep") {
        p.push(format!("--on-exit {:?}, want keep (restarts lose nothing)", value("--on-exit")));
    }
    if one("ConfigurationDirectory") != Some("flowlog") {
        p.push("ConfigurationDirectory=flowlog (/etc/flowlog) expected".into());
    }

    // Exactly the three capabilities.
    let caps: BTreeSet<String> = CAPS.iter().map(|c| format!("CAP_{c}")).collect();
    for k in ["CapabilityBoundingSet", "AmbientCapabilities"] {
        if words(k) != caps {
            p.push(format!("{k}={:?}, want exactly {caps:?}", words(k)));
        }
    }

    // Hardening, and nothing in it that blocks the agent.
    for (k, v) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectControlGroups", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("RestrictNamespaces", "yes"),
        ("SystemCallArchitectures", "native"),
        ("Restart", "on-failure"),
        // The agent sends READY=1 and watchdog pings (src/notify.rs).
        ("Type", "notify"),
    ] {
        if one(k) != Some(v) {
            p.push(format!("{k}={:?}, want {v}", one(k)));
        }
    }
    // The pins are written under /sys/fs/bpf, which ProtectSystem=strict
    // and ProtectKernelTunables make read-only.
    let pin_parent = Path::new(DEFAULT_PIN_DIR).parent().unwrap().to_str().unwrap();
    if !words("ReadWritePaths").contains(pin_parent) {
        p.push(format!("ReadWritePaths must include {pin_parent} (pins)"));
    }
    if one("WatchdogSec").is_none() {
        p.push("WatchdogSec= expected: the agent pings the watchdog while healthy".into());
    }
    // `systemctl reload`: SIGHUP to the agent, which re-reads its config.
    if one("ExecReload") != Some("/bin/kill -HUP $MAINPID") {
        let got = one("ExecReload");
        p.push(format!("ExecReload={got:?}, want /bin/kill -HUP $MAINPID (the agent reloads on SIGHUP)"));
    }
    if one("NotifyAccess").is_some_and(|v| v != "main") {
        p.push("NotifyAccess must stay main: the agent itself notifies".into());
    }
    if one("StateDirectory") != Some("flowlog") {
        p.push("StateDirectory=flowlog (/var/lib/flowlog) expected".into());
    }
    // The spool's default under systemd ($STATE_DIRECTORY/spool) and without
    // it (the agent run by hand) are both in the state directory.
    if let Some(state) = one("StateDirectory") {
        let state = Path::new("/var/lib").join(state);
        let under = flowlog_agent::ship::spool_dir_for(Some(state.as_os_str()));
        let plain = Path::new(flowlog_agent::ship::DEFAULT_SPOOL_DIR);
        if !under.starts_with(&state) || !plain.starts_with(&state) {
            p.push(format!("the spool ({}, {}) is not in StateDirectory {}", under.display(), plain.display(), state.display()));
        }
    }
    let families = words("RestrictAddressFamilies");
    for f in ["AF_NETLINK", "AF_INET", "AF_INET6", "AF_UNIX"] {
        if !families.contains(f) {
            p.push(format!("RestrictAddressFamilies lacks {f}"));
        }
    }
    if families.iter().any(|f| f.starts_with('~')) {
        p.push("RestrictAddressFamilies must be an allow list".into());
    }
    let filter = words("SystemCallFilter");
    if !filter.is_empty() && !filter.contains("bpf") {
        p.push("SystemCallFilter does not allow bpf".into());
    }
    if filter.iter().any(|f| f.starts_with('~') && f.contains("bpf")) {
        p.push("SystemCallFilter denies bpf".into());
    }
    for (k, why) in [
        ("PrivateNetwork", "the host's interfaces"),
        ("PrivateUsers", "capabilities in a user namespace cannot load BPF programs"),
        ("DynamicUser", "/sys/fs/bpf is root's"),
        ("User", "/sys/fs/bpf is root's"),
        ("ProcSubset", "the BPF loader reads /proc"),
        ("InaccessiblePaths", "/sys, /etc/machine-id must stay readable"),
        ("IPAddressDeny", "IMDS and AWS endpoints"),
    ] {
        if one(k).is_some_and(|v| v != "no" && v != "root") {
            p.push(format!("{k} is set: it blocks the agent ({why})"));
        }
    }
    if unit.get("Install").and_then(|i| i.get("WantedBy")).is_none_or(|w| !w.iter().any(|v| v == "multi-user.target")) {
        p.push("[Install] WantedBy=multi-user.target expected".into());
    }
    p
}

#[test]
fn systemd_unit_matches_the_agent() {
    assert_eq!(unit_problems(&read(UNIT), &agent_help()), Vec::<String>::new());
}

#[test]
fn systemd_checks_catch_mistakes() {
    let good = read(UNIT);
    let help = agent_help();
    let cases: &[(&str, &str, &str)] = &[
        ("--on-exit keep", "--on-exit keep --pin-path /x", "flag --pin-path is not in"),
        ("--on-exit keep", "--on-exit detach", "--on-exit Some(\"detach\")"),
        ("CapabilityBoundingSet=CAP_BPF", "CapabilityBoundingSet=CAP_SYS_ADMIN CAP_BPF", "CapabilityBoundingSet="),
        ("AmbientCapabilities=CAP_BPF CAP_NET_ADMIN CAP_PERFMON", "AmbientCapabilities=CAP_BPF CAP_NET_ADMIN", "AmbientCapabilities="),
        ("ReadWritePaths=/sys/fs/bpf", "ReadWritePaths=/var/tmp", "ReadWritePaths must include /sys/fs/bpf"),
        (" AF_NETLINK", "", "RestrictAddressFamilies lacks AF_NETLINK"),
        ("@system-service bpf", "@system-service", "does not allow bpf"),
        ("NoNewPrivileges=yes", "PrivateNetwork=yes", "PrivateNetwork is set"),
        ("StateDirectory=flowlog", "StateDirectory=flowlog-agent", "is not in StateDirectory /var/lib/flowlog-agent"),
        ("/etc/flowlog/flowlog.toml", "/etc/flowlog.toml", "--config Some(\"/etc/flowlog.toml\")"),
        ("Type=notify", "Type=exec", "Type=Some(\"exec\"), want notify"),
        ("WatchdogSec=60s", "TimeoutStartSec=90s", "WatchdogSec= expected"),
        ("-HUP $MAINPID", "-USR1 $MAINPID", "ExecReload=Some(\"/bin/kill -USR1 $MAINPID\")"),
    ];
    for (from, to, want) in cases {
        let problems = unit_problems(&mutate(&good, from, to), &help);
        assert!(problems.iter().any(|p| p.contains(want)), "{to:?}: want a problem with {want:?}, got {problems:?}");
    }
}

/// The unit's command line, with the example config instead of
/// /etc/flowlog's, is accepted by the agent as it is.
#[test]
fn systemd_exec_start_is_accepted_by_the_agent() {
    let unit = parse_unit(&read(UNIT));
    let exec = &unit["Service"]["ExecStart"][0];
    let example = root().join("flowlog.example.toml");
    let args: Vec<String> = exec
        .split_whitespace()
        .skip(1)
        .map(|a| if a == "/etc/flowlog/flowlog.toml" { example.display().to_string() } else { a.to_string() })
        .collect();
    let out = Command::new(AGENT).arg("check-config").args(&args).env_clear().output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "check-config {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("on-exit = \"keep\"\n") && stdout.contains("pin-dir = \"/sys/fs/bpf/flowlog\"\n"), "{stdout}");
}

/// `systemd-analyze verify` (offline) and the exposure score, where systemd
/// is installed. ExecStart points at the built agent for the check.
#[test]
fn systemd_analyze_accepts_the_unit() {
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        eprintln!("systemd-analyze not installed: skipped (the unit is still checked by systemd_unit_matches_the_agent)");
        return;
    }
    let dir = tmp_dir("systemd");
    let unit = dir.join("flowlog.service");
    std::fs::write(&unit, read(UNIT).replace("/usr/local/bin/flowlog-agent", &systemd::quote(AGENT))).unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(&unit).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "systemd-analyze verify: {stderr}");
    let out = Command::new("systemd-analyze").args(["security", "--offline=yes", "--no-pager"]).arg(&unit).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for flowlog.service:"))
        .and_then(|(_, r)| r.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure score: {text}{}", String::from_utf8_lossy(&out.stderr)));
    // 0 = locked down, 10 = unprotected. What remains is what the agent
    // needs: the host network and CAP_NET_ADMIN.
    assert!(score <= 3.0, "exposure {score}:\n{text}");
    let _ = std::fs::remove_dir_all(dir);
}

/// The agent, run with the unit's flags in a network namespace of its own
/// for a few windows and scraped (link counters included), calls only system
/// calls the unit's SystemCallFilter allows and opens only sockets
/// RestrictAddressFamilies allows.
#[test]
fn systemd_sandbox_allows_what_the_agent_calls() {
    let missing = |tool: &str| Command::new(tool).arg("--version").output().is_err();
    if missing("strace") || missing("systemd-analyze") || missing("ip") {
        // `cargo xtask test` installs them; there, a skip would hide a failure.
        assert!(std::env::var("FLOWLOG_REQUIRE_ROOT_TESTS").as_deref() != Ok("1"), "strace, systemd-analyze or ip not installed");
        eprintln!("strace, systemd-analyze or ip not installed: skipped");
        return;
    }
    if !flowlog_testkit::require_root() {
        return;
    }
    let unit = parse_unit(&read(UNIT));
    let svc = &unit["Service"];

    let dir = tmp_dir("strace");
    let ns = Netns::new("deploy");
    ns.ip(&["link", "add", "fdeploy0", "type", "veth", "peer", "name", "fdeploy1"]);
    for l in ["fdeploy0", "fdeploy1"] {
        ns.ip(&["link", "set", l, "up"]);
    }
    let config = dir.join("flowlog.toml");
    let text = "interfaces = [\"fdeploy*\"]\ninterval = 1\nmetrics-listen = \"127.0.0.1:9750\"\n\
                ethtool-stats = [\"peer_ifindex\"]\n";
    std::fs::write(&config, text).unwrap();
    let exec: Vec<String> = svc["ExecStart"][0]
        .split_whitespace()
        .skip(1)
        .map(|a| if a == "/etc/flowlog/flowlog.toml" { shell_quote(&config) } else { shell_quote(a) })
        .collect();
    let trace = dir.join("trace");
    // `ip netns exec` mounts a fresh /sys: mount a BPF filesystem first, as
    // systemd does at boot (the agent's own fallback mount is not traced).
    let script = format!(
        "mount -t bpf bpf /sys/fs/bpf && exec timeout -s TERM 3.5 strace -f -qq -o {} {} {}",
        shell_quote(&trace),
        shell_quote(AGENT),
        exec.join(" ")
    );
    // Scrapes until the link counters (the ethtool ioctl) are on /metrics.
    let scraper = {
        let ns = ns.to_string();
        std::thread::spawn(move || {
            let addr: SocketAddr = "127.0.0.1:9750".parse().unwrap();
            let until = std::time::Instant::now() + std::time::Duration::from_millis(3500);
            while std::time::Instant::now() < until {
                let ns2 = ns.clone();
                if flowlog_testkit::netns::in_netns(&ns, move || std::net::TcpStream::connect(addr).is_ok()) {
                    let body = flowlog_testkit::agent::http_get(&ns2, addr, "/metrics").1;
                    if body.contains("flowlog_ethtool_peer_ifindex_total{interface=\"fdeploy0\"} ") {
                        return true;
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            false
        })
    };
    let out = Command::new("ip").args(["netns", "exec", &ns, "sh", "-c", &script]).env_clear().output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(scraper.join().unwrap(), "no link counter on /metrics: {stderr}");
    // timeout's SIGTERM: the agent drains and exits 0; timeout says 124.
    assert_eq!(out.status.code(), Some(124), "{stderr}");
    assert!(stderr.contains("attached") && stderr.contains("programs stay attached"), "{stderr}");
    let calls = Calls::from_strace(&std::fs::read_to_string(&trace).unwrap(), None);
    assert!(["bpf", "epoll_wait", "ioctl"].iter().all(|c| calls.used.contains(*c)), "{:?}", calls.used);
    calls.assert_allowed_by(svc);
    let _ = std::fs::remove_dir_all(dir);
}

// ----------------------------------------------------------------------- IAM

/// action → resources, from a policy document.
fn policy_actions(rel: &str) -> BTreeMap<String, BTreeSet<String>> {
    let v: serde_json::Value = serde_json::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    assert_eq!(v["Version"], "2012-10-17", "{rel}");
    let as_list = |x: &serde_json::Value| -> Vec<String> {
        match x {
            serde_json::Value::String(s) => vec![s.clone()],
            serde_json::Value::Array(a) => a.iter().map(|s| s.as_str().unwrap().to_string()).collect(),
            other => panic!("{rel}: {other}"),
        }
    };
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for st in v["Statement"].as_array().unwrap() {
        assert_eq!(st["Effect"], "Allow", "{rel}");
        assert!(st.get("NotAction").is_none() && st.get("NotResource").is_none(), "{rel}");
        for a in as_list(&st["Action"]) {
            assert!(!a.contains('*'), "{rel}: wildcard action {a}");
            out.entry(a).or_default().extend(as_list(&st["Resource"]));
        }
    }
    out
}

fn actions(p: &BTreeMap<String, BTreeSet<String>>) -> BTreeSet<String> {
    p.keys().cloned().collect()
}

#[test]
fn iam_cloudwatch_logs() {
    let p = policy_actions("deploy/iam/cloudwatch-logs.json");
    assert_eq!(
        actions(&p),
        set([
            "logs:CreateLogGroup",
            "logs:CreateLogStream",
            "logs:DescribeLogGroups",
            "logs:DescribeLogStreams",
            "logs:PutLogEvents",
            "logs:PutRetentionPolicy",
            "logs:TagResource"
        ])
    );
    let group = set(["arn:aws:logs:REGION:ACCOUNT_ID:log-group:LOG_GROUP", "arn:aws:logs:REGION:ACCOUNT_ID:log-group:LOG_GROUP:*"]);
    for a in ["logs:CreateLogGroup", "logs:TagResource", "logs:PutRetentionPolicy", "logs:DescribeLogStreams"] {
        assert_eq!(p[a], group, "{a}");
    }
    for a in ["logs:CreateLogStream", "logs:PutLogEvents"] {
        assert_eq!(p[a], set(["arn:aws:logs:REGION:ACCOUNT_ID:log-group:LOG_GROUP:log-stream:*"]), "{a}");
    }
    // Listing groups cannot be narrowed to one group.
    assert_eq!(p["logs:DescribeLogGroups"], set(["arn:aws:logs:REGION:ACCOUNT_ID:log-group:*"]));
}

#[test]
fn iam_s3() {
    let p = policy_actions("deploy/iam/s3.json");
    assert_eq!(actions(&p), set(["s3:AbortMultipartUpload", "s3:ListBucket", "s3:PutObject"]));
    // Objects only under the AWS layout (<prefix>/AWSLogs/...); the bucket
    // itself only for the startup check (HeadBucket needs s3:ListBucket).
    for a in ["s3:PutObject", "s3:AbortMultipartUpload"] {
        assert_eq!(p[a], set(["arn:aws:s3:::BUCKET/PREFIX/AWSLogs/*"]), "{a}");
    }
    assert_eq!(p["s3:ListBucket"], set(["arn:aws:s3:::BUCKET"]));
}

#[test]
fn iam_firehose() {
    let p = policy_actions("deploy/iam/firehose.json");
    assert_eq!(actions(&p), set(["firehose:DescribeDeliveryStream", "firehose:PutRecordBatch"]));
    for r in p.values() {
        assert_eq!(*r, set(["arn:aws:firehose:REGION:ACCOUNT_ID:deliverystream/STREAM"]));
    }
}

/// Every placeholder of the policies is explained in deploy/README.md.
#[test]
fn iam_placeholders_are_documented() {
    let readme = read("deploy/README.md");
    let mut seen = BTreeSet::new();
    for f in ["cloudwatch-logs", "s3", "firehose"] {
        let text = read(&format!("deploy/iam/{f}.json"));
        assert!(readme.contains(&format!("iam/{f}.json")), "deploy/README.md does not mention iam/{f}.json");
        for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.len() > 1 && word.chars().all(|c| c.is_ascii_uppercase() || c == '_') && word != "AWSLogs" {
                seen.insert(word.to_string());
            }
        }
    }
    assert_eq!(seen, set(["ACCOUNT_ID", "BUCKET", "LOG_GROUP", "PREFIX", "REGION", "STREAM"]));
    for w in &seen {
        assert!(readme.contains(&format!("`{w}`")), "placeholder {w} not explained in deploy/README.md");
    }
}

// ---------------------------------------------------------------- Dockerfile

/// Instructions (continuations joined, comments dropped) as (INSTRUCTION, rest).
fn dockerfile(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if cur.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        if t.starts_with('#') {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(part) => {
                cur.push_str(part);
                cur.push(' ');
            }
            None => {
                cur.push_str(t);
                let (i, rest) = cur.split_once(' ').unwrap_or((&cur, ""));
                out.push((i.to_uppercase(), rest.split_whitespace().collect::<Vec<_>>().join(" ")));
                cur.clear();
            }
        }
    }
    out
}

fn xtask_str(src: &str, name: &str) -> String {
    let start = src.find(&format!("const {name}: &str = \"")).unwrap_or_else(|| panic!("{name} not in xtask"));
    let rest = &src[start..];
    let rest = &rest[rest.find('"').unwrap() + 1..];
    rest[..rest.find('"').unwrap()].to_string()
}

/// The image is the packages' binary (`cargo xtask package`, glibc 2.28
/// floor) on a glibc base: no second build that could differ from the
/// tested packages.
#[test]
fn dockerfile_runs_the_packaged_agent() {
    let ins = dockerfile(&read("Dockerfile"));
    let xtask = read("xtask/src/package.rs");
    let froms: Vec<&String> = ins.iter().filter(|(i, _)| i == "FROM").map(|(_, r)| r).collect();
    // A stage per architecture holds its packaged binary; the builder's
    // TARGETARCH picks one for the image, the last stage.
    assert_eq!(froms, ["scratch AS agent-amd64", "scratch AS agent-arm64", "agent-${TARGETARCH} AS agent", "${RUNTIME_IMAGE}"], "{froms:?}");
    let args: BTreeMap<&str, &str> = ins.iter().filter(|(i, _)| i == "ARG").filter_map(|(_, r)| r.split_once('=')).collect();
    // A glibc base (the binary needs glibc >= 2.28; Debian 12 has 2.36).
    assert!(args["RUNTIME_IMAGE"].contains("distroless/cc-debian12") || args["RUNTIME_IMAGE"].contains("bookworm"), "{args:?}");
    assert_eq!(xtask_str(&xtask, "GLIBC_FLOOR"), "2.28");
    assert!(ins.iter().all(|(i, _)| i != "RUN"), "nothing to run: the binary is built by `cargo xtask package`");

    // The binaries: where `cargo xtask package` puts them, and the ENTRYPOINT.
    let copies: Vec<Vec<&str>> = ins.iter().filter(|(i, _)| i == "COPY").map(|(_, r)| r.split_whitespace().collect()).collect();
    let packaged = ["x86_64", "aarch64"].map(|arch| format!("{}/{arch}/flowlog-agent", xtask_str(&xtask, "PACKAGES_DIR")));
    for p in &packaged {
        assert!(copies.iter().any(|c| c[..] == [p.as_str(), "/flowlog-agent"]), "no COPY {p} /flowlog-agent: {copies:?}");
    }
    let bin = copies.iter().find(|c| c[..2] == ["--from=agent", "/flowlog-agent"]).unwrap_or_else(|| panic!("no COPY --from=agent: {copies:?}"));
    let entry = ins.iter().find(|(i, _)| i == "ENTRYPOINT").map(|(_, r)| r.as_str()).expect("no ENTRYPOINT");
    let entry: Vec<String> = serde_json::from_str(entry).expect("ENTRYPOINT in exec form (signals reach the agent)");
    assert_eq!(entry, [bin[2].to_string()]);
    assert_eq!(bin[2], "/usr/local/bin/flowlog-agent");

    // Config: the example (as the packages install it) at the path
    // FLOWLOG_CONFIG names, and no CMD flags that would override a mounted config.
    let config = copies.iter().find(|c| c[0] == "flowlog.example.toml").expect("example config not copied");
    let env: Vec<&str> = ins.iter().filter(|(i, _)| i == "ENV").map(|(_, r)| r.as_str()).collect();
    assert_eq!(env, [format!("FLOWLOG_CONFIG={}", config[1])]);
    assert_eq!(config[1], "/etc/flowlog/flowlog.toml");
    assert!(ins.iter().all(|(i, _)| i != "CMD"), "CMD flags would win over FLOWLOG_CONFIG's file");
    let expose: Vec<&str> = ins.iter().filter(|(i, _)| i == "EXPOSE").map(|(_, r)| r.as_str()).collect();
    let port = DEFAULT_METRICS_LISTEN.rsplit_once(':').unwrap().1;
    assert_eq!(expose, [format!("{port}/tcp")]);
    assert_eq!(copies.len(), 4, "only the binaries and the config: {copies:?}");

    // The build context: target/ is left out except the packaged binaries
    // (a later `!` wins in .dockerignore).
    let ignore = read(".dockerignore");
    let lines: Vec<&str> = ignore.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    for p in ["target", "flowlog-ebpf/target", ".git"] {
        assert!(lines.contains(&p), ".dockerignore lacks {p}");
    }
    let t = lines.iter().position(|l| *l == "target").unwrap();
    for p in &packaged {
        let keep = format!("!{p}");
        assert!(lines.iter().position(|l| *l == keep).is_some_and(|k| k > t), ".dockerignore must re-include {p} after `target`");
    }
}

// -------------------------------------------------------------------- README

#[test]
fn readme_points_at_the_artefacts() {
    let top = read("README.md");
    assert!(top.contains("\n## Deploying\n"), "README.md has no Deploying section");
    assert!(top.contains("deploy/README.md"));
    let deploy = read("deploy/README.md");
    for f in [MANIFEST, UNIT, "Dockerfile", "deploy/iam/cloudwatch-logs.json", "deploy/iam/s3.json", "deploy/iam/firehose.json"] {
        assert!(root().join(f).is_file(), "{f}");
        let name = Path::new(f).file_name().unwrap().to_str().unwrap();
        assert!(deploy.contains(name), "deploy/README.md does not mention {name}");
    }
}
