//! Cost of Kubernetes pod identity (the `k8s-*` extension fields): records
//! and format of one window of 100K flows on 1,000 pod veths, without the
//! fields (the default format), with the fields but no pods known (every
//! value `-`), and with 1,000 pods known; plus building the window's pod
//! lookups. The kernel side (rotate, read) is the same in every case and
//! measured in section 3; this window is built in memory.

use std::net::IpAddr;

use anyhow::{ensure, Result};
use flowlog_agent::{
    drain::Drained,
    enrich::{self, Enrichment, HostMeta, InterfaceMeta},
    metadata::kubernetes::{
        index::{History, ResolvedPod},
        model::Pod,
    },
};
use flowlog_common::{FlowKey, FlowStats};
use flowlog_records::format::Format;

use crate::{kernel::thousands, util::{median, thread_cpu_ns}};

const PODS: usize = 1_000;
const FLOWS: usize = 100_000;
/// The window: [START, START + WINDOW_NS).
const START: u64 = 1_700_000_000_000_000_000;
const WINDOW_NS: u64 = 60_000_000_000;
/// Pod veths are ifindex FIRST_IFINDEX..+PODS.
const FIRST_IFINDEX: u32 = 100;
const K8S_FORMAT: &str = "${version} ${account-id} ${interface-id} ${srcaddr} ${dstaddr} ${srcport} ${dstport} \
${protocol} ${packets} ${bytes} ${start} ${end} ${action} ${log-status} ${k8s-namespace} ${k8s-pod-name} \
${k8s-pod-uid} ${k8s-src-pod} ${k8s-dst-pod} ${k8s-pod-label}";

pub struct Results {
    pub rounds: usize,
    /// CPU ms: default format; k8s format, no pods; k8s format, 1,000 pods.
    pub plain_ms: f64,
    pub dashes_ms: f64,
    pub pods_ms: f64,
    /// CPU ms of the records alone (no format): no pods; 1,000 pods.
    pub records_ms: f64,
    pub records_pods_ms: f64,
    /// CPU ms to build the lookups of 1,000 pods when a listing changed (in
    /// the listing task), to take them at the close of a window whose
    /// listing changed (prepared), and to reuse them (listing unchanged).
    pub prepare_ms: f64,
    pub index_ms: f64,
    pub steady_ms: f64,
    pub plain_bytes: usize,
    pub pods_bytes: usize,
}

fn pod_ip(p: usize) -> [u8; 4] {
    [10, 1, (p >> 8) as u8, p as u8]
}

fn pods() -> Vec<ResolvedPod> {
    (0..PODS)
        .map(|p| ResolvedPod {
            pod: Pod {
                id: format!("{p:064x}"),
                namespace: format!("team-{}", p % 20),
                name: format!("service-{}-7d9f8b6c5d-x{p:04}", p % 50),
                uid: format!("0b5c6f1e-8a3d-4c1e-9f00-{p:012}"),
                labels: [("app.kubernetes.io/name".to_string(), format!("service-{}", p % 50))].into(),
                ips: vec![IpAddr::from(pod_ip(p))],
                netns: Some(format!("/run/netns/cni-{p}").into()),
                host_ifaces: vec![],
            },
            ifindexes: vec![FIRST_IFINDEX + p as u32],
        })
        .collect()
}

/// Flow `i` of section 3's mix, on pod `i % PODS`'s veth: to another pod for
/// 3 in 4 flows, else to an address outside the node.
fn flow(i: usize) -> (FlowKey, FlowStats) {
    let (mut key, stats) = crate::drain::flow(i, false, START + WINDOW_NS);
    let p = i % PODS;
    key.ifindex = FIRST_IFINDEX + p as u32;
    key.src_addr[..4].copy_from_slice(&pod_ip(p));
    let dst = if i.is_multiple_of(4) { [172, 16, (i % 7) as u8, 10 + (i % 200) as u8] } else { pod_ip((i * 7 + 3) % PODS) };
    key.dst_addr[..4].copy_from_slice(&dst);
    (key, stats)
}

fn cpu_ms<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let c0 = thread_cpu_ns();
    let v = f();
    (v, (thread_cpu_ns() - c0) as f64 / 1e6)
}

pub fn run(rounds: usize) -> Result<Results> {
    let start = START;
    let drained = Drained::from_parts((0..FLOWS).map(flow).collect(), vec![], 0, 0, start, start + WINDOW_NS);
    let host = HostMeta::new("123456789012");
    let interfaces: Vec<InterfaceMeta> = (0..PODS as u32)
        .map(|p| InterfaceMeta {
            ifindex: FIRST_IFINDEX + p,
            name: format!("veth{p:08x}"),
            interface_id: format!("eni-{p:017x}").into(),
            meta: None,
            tags: None,
            ecs: None,
        })
        .collect();
    let (plain, k8s) = (Format::default(), Format::parse(K8S_FORMAT)?);
    let listing = pods();
    let mut batch = Vec::with_capacity(64 << 20);
    let window = |format: &Format, e: &Enrichment, batch: &mut Vec<u8>| {
        batch.clear();
        cpu_ms(|| {
            enrich::for_each_record(&host, &interfaces, &drained, Some(e), |r| {
                format.write(r, batch);
                batch.push(b'\n');
            })
        })
        .1
    };
    let records = |e: &Enrichment| {
        cpu_ms(|| {
            let mut n = 0usize;
            enrich::for_each_record(&host, &interfaces, &drained, Some(e), |r| {
                n += std::hint::black_box(r).k8s.is_some() as usize
            });
            n
        })
    };
    let (mut plain_v, mut dashes_v, mut pods_v, mut index_v) = (vec![], vec![], vec![], vec![]);
    let (mut rec_v, mut rec_pods_v, mut steady_v, mut prepare_v) = (vec![], vec![], vec![], vec![]);
    // Pods rarely change between windows: the agent's usual window.
    let mut steady = History::default();
    steady.push(start - 1, listing.clone());
    let mut next = start;
    let (mut plain_bytes, mut pods_bytes) = (0, 0);
    for _ in 0..rounds {
        plain_v.push(window(&plain, &Enrichment::default(), &mut batch));
        plain_bytes = batch.len();
        dashes_v.push(window(&k8s, &Enrichment::default(), &mut batch));
        // As the listing task does when a listing changed: the next window's
        // lookups, built then; then the window's close takes them.
        let mut h = History::default();
        h.push(start - 1, listing.clone());
        let ((), ms) = cpu_ms(|| h.prepare(Some("app.kubernetes.io/name")));
        prepare_v.push(ms);
        let (index, ms) = cpu_ms(|| h.window(start, start + 60_000_000_000, Some("app.kubernetes.io/name")));
        index_v.push(ms);
        let (_, ms) = cpu_ms(|| steady.window(next, next + 60_000_000_000, Some("app.kubernetes.io/name")));
        next += 60_000_000_000;
        steady_v.push(ms);
        let e = Enrichment { pods: index, ..Enrichment::default() };
        let (n, ms) = records(&Enrichment::default());
        ensure!(n == 0, "{n} records with a pod without pods");
        rec_v.push(ms);
        let (n, ms) = records(&e);
        ensure!(n == FLOWS, "{n} records with a pod, want {FLOWS}");
        rec_pods_v.push(ms);
        pods_v.push(window(&k8s, &e, &mut batch));
        pods_bytes = batch.len();
        // Every record on a pod veth names its pod: no `-` namespace.
        let text = std::str::from_utf8(&batch)?;
        ensure!(text.lines().count() == FLOWS, "{} lines, want {FLOWS}", text.lines().count());
        ensure!(text.lines().all(|l| l.split(' ').nth(14) != Some("-")), "a record without its pod");
    }
    Ok(Results {
        rounds,
        plain_ms: median(&mut plain_v),
        dashes_ms: median(&mut dashes_v),
        pods_ms: median(&mut pods_v),
        prepare_ms: median(&mut prepare_v),
        index_ms: median(&mut index_v),
        steady_ms: median(&mut steady_v),
        records_ms: median(&mut rec_v),
        records_pods_ms: median(&mut rec_pods_v),
        plain_bytes,
        pods_bytes,
    })
}

pub fn print(r: &Results) {
    println!("## 6. Kubernetes pod identity (k8s-* extension fields)\n");
    println!(
        "Records + format of one window: {} flows on {} pod veths, 3 in 4 between two pods of the node, as \
         `agent::ship` streams them; CPU ms, median of {} rounds. \"fields, no pods\": the format names the six \
         k8s-* fields, no pod is known (every value `-`); \"1,000 pods\": the same with the window's lookups of \
         1,000 pods; \"records alone\": `for_each_record` without formatting. The lookups are built in the \
         pod listing task when a listing changes (`History::prepare`), so a window's close only takes them.\n",
        thousands(FLOWS),
        thousands(PODS),
        r.rounds
    );
    let identity = r.pods_ms - r.plain_ms + r.index_ms;
    let lookups = r.records_pods_ms - r.records_ms + r.steady_ms;
    println!("| case | CPU ms | bytes of text |\n|---|---:|---:|");
    println!("| records alone, no pods | {:.1} | |", r.records_ms);
    println!("| records alone, 1,000 pods | {:.1} | |", r.records_pods_ms);
    println!("| default format (no k8s fields) | {:.1} | {} |", r.plain_ms, thousands(r.plain_bytes));
    println!("| default + k8s fields, no pods | {:.1} | |", r.dashes_ms);
    println!("| default + k8s fields, 1,000 pods | {:.1} | {} |", r.pods_ms, thousands(r.pods_bytes));
    println!("| look-ups of 1,000 pods built in the listing task (per listing change) | {:.2} | |", r.prepare_ms);
    println!("| window look-ups at the close, listing changed (prepared) | {:.3} | |", r.index_ms);
    println!("| window look-ups of 1,000 pods, reused (listing unchanged) | {:.3} | |", r.steady_ms);
    println!(
        "\nIdentity (look-ups per record + the window's look-up tables, reused: records alone with − without \
         pods + reuse): {lookups:.1} ms per window, {:.1}% of the default records + format; in a window whose \
         pods changed, {:.1}% (look-ups prepared by the listing task, which spent {:.2} ms on them once for that \
         change: {:.1}% if counted in the window). Writing the six fields' text ({} more bytes) is format work on \
         top: the whole difference, 1,000 pods − default format + look-ups at the close, is {identity:.1} ms \
         ({:.1}%).\n",
        100.0 * lookups / r.plain_ms,
        100.0 * (r.records_pods_ms - r.records_ms + r.index_ms) / r.plain_ms,
        r.prepare_ms,
        100.0 * (r.records_pods_ms - r.records_ms + r.index_ms + r.prepare_ms) / r.plain_ms,
        thousands(r.pods_bytes - r.plain_bytes),
        100.0 * identity / r.plain_ms,
    );
}
