//! The enrich stage: drained kernel counters + interface metadata → flow
//! records. The rules that need only data (AWS service ranges, traffic-path,
//! exclusions, address normalisation) live in `flowlog_records`; this module
//! applies them per window.
//!
//! Pure logic: no syscalls, so the window rules (one record per flow per
//! interface, NODATA for idle interfaces, SKIPDATA where inserts failed) are
//! tested without root. The optional [`Enrichment`] adds what needs outside
//! data: AWS service names, the traffic path, address normalisation, and
//! the filters.

use std::{
    collections::BTreeMap,
    ops::Range,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    sync::{Arc, Mutex},
};

use flowlog_common::{direction, family, FlowKey, FlowStats, TcpFlagsSeen};
use ipnet::IpNet;
use serde::Deserialize;

use flowlog_records::{
    aws_services::{AwsRangesError, AwsServices},
    filter::{ExclusionConfig, Exclusions, TrafficType},
    record::{Action, Direction, EcsMeta, FlowRecord, LogStatus, TagValues},
    semantics,
    traffic_path::{RouteError, RouteTable, RouteTableConfig},
};
use crate::{
    metadata::{kubernetes::index::{K8sGroups, PodIndex, NO_POD}, InterfaceMetadata},
    drain::Drained,
    capture::reject::{self, RejectReasons},
};

/// What the records need to know of an interface.
#[derive(Clone, Debug, PartialEq)]
pub struct InterfaceMeta {
    pub ifindex: u32,
    pub name: String,
    pub interface_id: Arc<str>,
    /// From the metadata provider (account, VPC, subnet, instance, region,
    /// AZ, addresses); `None` where only the derived id is known.
    pub meta: Option<Arc<InterfaceMetadata>>,
    /// Values of the configured tag fields (version 11).
    pub tags: Option<Arc<TagValues>>,
    /// ECS task of the interface (version 7), where configured.
    pub ecs: Option<Arc<EcsMeta>>,
}

/// Metadata of this host that is not per interface.
#[derive(Clone, Debug)]
pub struct HostMeta {
    /// `account-id` where the interface's metadata has none.
    pub account_id: Arc<str>,
    /// Set by `--account-id`: wins over every provider.
    pub account_override: bool,
}

impl HostMeta {
    pub fn new(account_id: impl Into<Arc<str>>) -> Self {
        HostMeta { account_id: account_id.into(), account_override: false }
    }
}

/// A record of `meta` with the interface's metadata fields filled in.
fn base_record(host: &HostMeta, meta: &InterfaceMeta, start: u64, end: u64, status: LogStatus) -> FlowRecord {
    let m = meta.meta.as_deref();
    let account = match m {
        Some(m) if !host.account_override => m.account_id.clone(),
        _ => host.account_id.clone(),
    };
    FlowRecord {
        vpc_id: m.and_then(|m| m.vpc_id.clone()),
        subnet_id: m.and_then(|m| m.subnet_id.clone()),
        instance_id: m.and_then(|m| m.instance_id.clone()),
        region: m.and_then(|m| m.region.clone()),
        az_id: m.and_then(|m| m.az_id.clone()),
        tags: meta.tags.clone(),
        ecs: meta.ecs.clone(),
        ..FlowRecord::status_only(account, meta.interface_id.clone(), start, end, status)
    }
}

/// The interface's addresses, primary private IPv4 first, for
/// `srcaddr`/`dstaddr` normalisation.
pub fn interface_addrs(m: &InterfaceMetadata) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = m.primary_ipv4.map(IpAddr::V4).into_iter().collect();
    v.extend(m.ipv4s.iter().filter(|a| Some(**a) != m.primary_ipv4).map(|a| IpAddr::V4(*a)));
    v.extend(m.ipv6s.iter().map(|a| IpAddr::V6(*a)));
    v
}

/// Outside data for the fields and filters that need more than the
/// packet. `Default` knows nothing and filters nothing: its records equal
/// those built without enrichment.
#[derive(Clone, Debug, Default)]
pub struct Enrichment {
    /// For `pkt-src-aws-service` / `pkt-dst-aws-service`.
    pub aws_services: Option<AwsServices>,
    /// For `traffic-path`.
    pub routes: Option<RouteTable>,
    /// Flows native flow logs do not record.
    pub exclusions: Option<Exclusions>,
    pub traffic_type: TrafficType,
    /// `reject-reason` text of kernel drop reasons (none: `-`).
    pub reject_reasons: RejectReasons,
    /// The window's pods (the `k8s-*` extension fields), set per window.
    pub pods: Option<Arc<PodIndex>>,
}

/// The enrichment part of the configuration file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct EnrichConfig {
    /// Path of AWS's `ip-ranges.json`.
    pub ip_ranges: Option<PathBuf>,
    pub route_table: RouteTableConfig,
    pub exclusions: ExclusionConfig,
    pub traffic_type: TrafficType,
    /// The VPC's CIDR blocks: where the VPC router (base+1) and Amazon DNS
    /// (base+2) are, for the exclusions.
    pub vpc_cidrs: Vec<IpNet>,
    pub tag_fields: TagFields,
    /// ECS task metadata (version 7 fields) per interface name, for hosts
    /// that know which task owns an interface (e.g. awsvpc task ENIs).
    pub ecs: std::collections::BTreeMap<String, EcsConfig>,
}

/// The version 7 fields of one interface; absent ones are `-`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct EcsConfig {
    pub cluster_arn: Option<String>,
    pub cluster_name: Option<String>,
    pub container_instance_arn: Option<String>,
    pub container_instance_id: Option<String>,
    pub container_id: Option<String>,
    pub second_container_id: Option<String>,
    pub service_name: Option<String>,
    pub task_definition_arn: Option<String>,
    pub task_arn: Option<String>,
    pub task_id: Option<String>,
}

impl EcsConfig {
    pub fn meta(&self) -> Arc<EcsMeta> {
        let a = |v: &Option<String>| v.as_deref().map(Arc::<str>::from);
        Arc::new(EcsMeta {
            cluster_arn: a(&self.cluster_arn),
            cluster_name: a(&self.cluster_name),
            container_instance_arn: a(&self.container_instance_arn),
            container_instance_id: a(&self.container_instance_id),
            container_id: a(&self.container_id),
            second_container_id: a(&self.second_container_id),
            service_name: a(&self.service_name),
            task_definition_arn: a(&self.task_definition_arn),
            task_arn: a(&self.task_arn),
            task_id: a(&self.task_id),
        })
    }
}

/// The tag keys whose values fill `instance-tag`, `instance-tag-2`,
/// `interface-tag`, `interface-tag-2` (like `TagFieldSpecifications` of
/// `CreateFlowLogs`: up to two keys per resource type).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct TagFields {
    pub instance: Vec<String>,
    pub network_interface: Vec<String>,
}

impl TagFields {
    pub fn validate(&self) -> Result<(), String> {
        for (k, v) in [("enrich.tag-fields.instance", &self.instance), ("enrich.tag-fields.network-interface", &self.network_interface)] {
            if v.len() > 2 {
                return Err(format!("{k}: at most 2 tag keys, as in CreateFlowLogs; got {}", v.len()));
            }
            if let Some(bad) = v.iter().find(|t| t.is_empty() || t.len() > 128) {
                return Err(format!("{k}: tag key {bad:?} must be 1 to 128 characters"));
            }
        }
        Ok(())
    }

    /// The tag field values of an interface; `None` when no key is configured.
    pub fn values(&self, instance_tags: &std::collections::BTreeMap<String, String>, interface_tags: &std::collections::BTreeMap<String, String>) -> Option<Arc<TagValues>> {
        if self.instance.is_empty() && self.network_interface.is_empty() {
            return None;
        }
        let pick = |keys: &[String], tags: &std::collections::BTreeMap<String, String>| {
            let get = |i: usize| keys.get(i).and_then(|k| tags.get(k)).map(|v| Arc::<str>::from(v.as_str()));
            [get(0), get(1)]
        };
        Some(Arc::new(TagValues {
            instance: pick(&self.instance, instance_tags),
            interface: pick(&self.network_interface, interface_tags),
            asg: [None, None],
        }))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EnrichError {
    #[error(transparent)]
    AwsRanges(#[from] AwsRangesError),
    #[error(transparent)]
    Routes(#[from] RouteError),
    #[error("{0}")]
    TagFields(String),
}

impl EnrichConfig {
    /// Loads the files and builds the lookups. `vpc_cidrs` locate the VPC
    /// router and DNS addresses; `exclusions_by_default` is the mode's
    /// default when the config does not say (on in EC2 mode);
    /// `reject_reasons` name the kernel's drop reasons in REJECT records.
    pub fn build(&self, vpc_cidrs: &[IpNet], exclusions_by_default: bool, reject_reasons: RejectReasons) -> Result<Enrichment, EnrichError> {
        self.tag_fields.validate().map_err(EnrichError::TagFields)?;
        let aws_services = self.ip_ranges.as_deref().map(AwsServices::load).transpose()?;
        let routes = if self.route_table.routes.is_empty() { None } else { Some(RouteTable::new(&self.route_table)?) };
        let exclusions = self
            .exclusions
            .enabled_or(exclusions_by_default)
            .then(|| {
                let cidrs: Vec<IpNet> = self.vpc_cidrs.iter().chain(vpc_cidrs).copied().collect();
                Exclusions::from_config(&self.exclusions, &cidrs)
            });
        Ok(Enrichment { aws_services, routes, exclusions, traffic_type: self.traffic_type, reject_reasons, pods: None })
    }
}

/// AWS `tcp-flags`: FIN 1, SYN 2, RST 4, and 18 for a packet with SYN and ACK
/// together; other flags (ACK, PSH, URG, ECE, CWR) are not reported.
pub fn aws_tcp_flags(seen: &TcpFlagsSeen) -> u8 {
    let bit = |b: u8, v: u8| if b != 0 { v } else { 0 };
    bit(seen.fin, 0x01) | bit(seen.syn, 0x02) | bit(seen.rst, 0x04) | bit(seen.syn_ack, 0x12)
}

pub fn key_addrs(key: &FlowKey) -> (IpAddr, IpAddr) {
    fn addr(fam: u8, b: &[u8; 16]) -> IpAddr {
        if fam == family::IPV4 {
            IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
        } else {
            IpAddr::V6(Ipv6Addr::from(*b))
        }
    }
    (addr(key.family, &key.src_addr), addr(key.family, &key.dst_addr))
}

fn unix_secs(boot_ns: u64, kernel_to_unix_ns: i128) -> u64 {
    // i64 holds every date until 2262; i128 division is a slow library call.
    if let (Ok(t), Ok(off)) = (i64::try_from(boot_ns), i64::try_from(kernel_to_unix_ns)) {
        if let Some(ns) = t.checked_add(off) {
            return (ns.max(0) / 1_000_000_000) as u64;
        }
    }
    let ns = boot_ns as i128 + kernel_to_unix_ns;
    (ns.max(0) / 1_000_000_000) as u64
}

/// A flow of the window in output order: ifindex (32 bits), first seen
/// (64), index (32) into `drained.flows`, or `flows.len() + i` for the
/// `i`-th merged REJECT entry.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Slot(u128);

impl Slot {
    fn new(ifindex: u32, first_seen_ns: u64, idx: usize) -> Slot {
        Slot((ifindex as u128) << 96 | (first_seen_ns as u128) << 32 | idx as u32 as u128)
    }
    fn ifindex(self) -> u32 {
        (self.0 >> 96) as u32
    }
    fn idx(self) -> usize {
        self.0 as u32 as usize
    }
}

/// The window's flows in output order. Where the spans of the ifindexes, of
/// the first-packet times and of the indexes fit in 64 bits together (one
/// interface, a minute of nanoseconds and a million flows take 56), each
/// flow is one 64-bit key, each part shifted into its own bits, so the order
/// is the same as the 128-bit [`Slot`]s': half the bytes to move and compare
/// (a million slots took 50-60 ms to sort, 64-bit keys 22-37 ms), and the
/// keys are kept rather than turned back into slots, so that a window of a
/// million flows holds 8 MiB of order, not 16 plus 8 while sorting
/// (BENCHMARKS.md, issue #22: the peak RSS).
enum Order {
    Packed(Vec<u64>, Packing),
    Wide(Vec<Slot>),
}

/// How a packed key holds a [`Slot`]: each part minus its least value, the
/// time and the index in the low `t_bits` + `x_bits` bits.
struct Packing {
    lo: (u32, u64, u32),
    t_bits: u32,
    x_bits: u32,
}

impl Packing {
    #[inline(always)]
    fn pack(&self, (i, t, x): (u32, u64, u32)) -> u64 {
        let Packing { lo, t_bits, x_bits } = self;
        (((i - lo.0) as u128) << (t_bits + x_bits) | ((t - lo.1) as u128) << x_bits | (x - lo.2) as u128) as u64
    }

    #[inline(always)]
    fn unpack(&self, key: u64) -> Slot {
        let Packing { lo, t_bits, x_bits } = self;
        let (k, mask) = (key as u128, |b: u32| (1u128 << b) - 1);
        let i = (k >> (t_bits + x_bits)) as u32 + lo.0;
        let t = ((k >> x_bits) & mask(*t_bits)) as u64 + lo.1;
        let x = (k & mask(*x_bits)) as u32 + lo.2;
        Slot::new(i, t, x as usize)
    }
}

impl Order {
    /// Sorts the slots `each` yields (called twice: once for the spans,
    /// once for the keys, so the slots are never collected when they pack).
    fn sorted<I: Iterator<Item = Slot>>(each: impl Fn() -> I) -> Order {
        let fields = |s: Slot| ((s.0 >> 96) as u32, (s.0 >> 32) as u64, s.0 as u32);
        let mut spans = None;
        for (i, t, x) in each().map(fields) {
            let (lo, hi) = spans.get_or_insert(((i, t, x), (i, t, x)));
            *lo = (lo.0.min(i), lo.1.min(t), lo.2.min(x));
            *hi = (hi.0.max(i), hi.1.max(t), hi.2.max(x));
        }
        let Some((lo, hi)) = spans else { return Order::Wide(Vec::new()) };
        let bits = |span: u64| 64 - span.leading_zeros();
        let (i_bits, t_bits, x_bits) = (bits((hi.0 - lo.0) as u64), bits(hi.1 - lo.1), bits((hi.2 - lo.2) as u64));
        if i_bits + t_bits + x_bits > 64 {
            let mut slots: Vec<Slot> = each().collect();
            slots.sort_unstable();
            return Order::Wide(slots);
        }
        let packing = Packing { lo, t_bits, x_bits };
        let mut keys: Vec<u64> = each().map(|s| packing.pack(fields(s))).collect();
        keys.sort_unstable();
        Order::Packed(keys, packing)
    }

    fn len(&self) -> usize {
        match self {
            Order::Packed(keys, _) => keys.len(),
            Order::Wide(slots) => slots.len(),
        }
    }

    /// The `at`-th flow in output order; `at` < [`Self::len`].
    #[inline(always)]
    fn get(&self, at: usize) -> Slot {
        match self {
            Order::Packed(keys, p) => p.unpack(keys[at]),
            Order::Wide(slots) => slots[at],
        }
    }

    /// [`slice::partition_point`] over the places from `from` on.
    fn partition_point(&self, from: usize, pred: impl Fn(Slot) -> bool) -> usize {
        from + match self {
            Order::Packed(keys, p) => keys[from..].partition_point(|&k| pred(p.unpack(k))),
            Order::Wide(slots) => slots[from..].partition_point(|&s| pred(s)),
        }
    }
}

/// How many flows ahead of the one being written [`for_each_record`] asks
/// the CPU to fetch.
const PREFETCH_AHEAD: usize = 16;

/// Asks the CPU to bring `v` into the cache. Flows are written in output
/// order, not in the order the table gave them, so each record's entry is a
/// random read in the window's flows (88 MB at 1 M flows): without this the
/// wait for that cache and TLB miss was most of a record's time
/// (BENCHMARKS.md, issue #22).
#[inline(always)]
fn prefetch<T>(v: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint; it never faults and reads nothing into
    // the program (and the pointer comes from a reference anyway).
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>((v as *const T).cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = v;
}

/// Builds the records of one window (see [`for_each_record`]).
pub fn build_records(host: &HostMeta, interfaces: &[InterfaceMeta], drained: &Drained, enrichment: Option<&Enrichment>) -> Vec<FlowRecord> {
    let mut out = Vec::with_capacity(drained.flows.len() + interfaces.len());
    for_each_record(host, interfaces, drained, enrichment, |r| out.push(r.clone()));
    out
}

/// Hands the records of one window to `emit`, one at a time, in order:
/// per interface, flows by first packet (flows with the same time in the
/// order the kernel table gave them, ACCEPT before REJECT), then the
/// interface's NODATA or SKIPDATA record.
///
/// `interfaces` are all interfaces that were attached during the window
/// (including ones that disappeared in it): each gets its flow records, or
/// one NODATA record, plus one SKIPDATA record if inserts failed for it.
/// Flows of an ifindex not in `interfaces` cannot happen unless the caller
/// forgot an interface; they are still written, under a derived id.
///
/// With `enrichment`, flows the filters leave out do not count as traffic:
/// an interface with only such flows gets a NODATA record.
///
/// Records are streamed, not collected, because a window can hold a million
/// flows: the caller formats each one into its output buffer, so a window
/// costs its text, not its text plus a record per flow. The per-interface
/// fields are filled once; per flow only the flow's fields change.
pub fn for_each_record(
    host: &HostMeta,
    interfaces: &[InterfaceMeta],
    drained: &Drained,
    enrichment: Option<&Enrichment>,
    emit: impl FnMut(&FlowRecord),
) {
    let w = WindowRecords::new(host, interfaces, drained, enrichment);
    w.write(0..w.places(), emit);
}

/// The least records a formatting thread is started for: 25,000 take 3-4 ms
/// on one core (6-8 M records/s), against tens of µs to start a thread and
/// its share of a window's page faults; so a window of less than 50,000
/// records (most windows: one host rarely has that many flows a minute)
/// stays on one thread and leaves the other cores alone.
pub const PLACES_PER_THREAD: usize = 25_000;

/// `n` (at least one) contiguous ranges of about the same length, covering
/// `r` in order.
fn split(r: Range<usize>, n: usize) -> Vec<Range<usize>> {
    let (n, lo, len) = (n.max(1), r.start, r.len());
    (0..n).map(|i| lo + len * i / n..lo + len * (i + 1) / n).collect()
}

/// One interface's part of a window's output.
struct Run {
    meta: InterfaceMeta,
    /// Its flows, in `WindowRecords::slots`.
    flows: Range<usize>,
    /// Its first place in the window's output: one place per flow, then
    /// one for its NODATA or SKIPDATA record.
    at: usize,
    /// Inserts failed for it (or for an unknown interface): SKIPDATA.
    skipped: bool,
}

impl Run {
    /// The place of its NODATA or SKIPDATA record, if it has one.
    fn last(&self) -> usize {
        self.at + self.flows.len()
    }
}

/// The records of one window (see [`for_each_record`]), sorted into output
/// order once, then written whole or as contiguous ranges of places, each
/// range on its own, so that ranges can be formatted on several cores
/// ([`WindowRecords::write_parallel`]): the ranges' records, joined in
/// order, are the window's.
///
/// A place is a flow of an interface, or the place after an interface's
/// flows where its NODATA or SKIPDATA record goes (an interface with
/// neither leaves that place empty).
pub struct WindowRecords<'a> {
    host: &'a HostMeta,
    drained: &'a Drained,
    enrichment: Option<&'a Enrichment>,
    /// ACCEPT entries the drop program emptied (every packet of the flow
    /// was dropped) are no records: their packets are in these REJECT ones.
    rejects: Vec<(FlowKey, FlowStats, Option<Arc<str>>)>,
    slots: Order,
    /// In output order.
    runs: Vec<Run>,
    /// The window, in Unix seconds.
    secs: (u64, u64),
}

impl<'a> WindowRecords<'a> {
    pub fn new(host: &'a HostMeta, interfaces: &[InterfaceMeta], drained: &'a Drained, enrichment: Option<&'a Enrichment>) -> Self {
        let no_reasons = RejectReasons::default();
        let rejects = reject::merge(&drained.rejects, enrichment.map_or(&no_reasons, |e| &e.reject_reasons));
        let n_flows = drained.flows.len();
        // The order is (interface, first packet, place in the window), packed
        // into one integer per flow (see `Order`): sorting plain integers is several times faster
        // than comparing keys through pointers into a million scattered entries,
        // and ties (the capture clock ticks every few ms) need no key compare.
        let slots = Order::sorted(|| {
            drained
                .flows
                .iter()
                .enumerate()
                .filter(|(_, f)| f.1.packets > 0)
                .map(|(i, (k, v))| Slot::new(k.ifindex, v.first_seen_ns, i))
                .chain(rejects.iter().enumerate().map(|(i, (k, v, _))| Slot::new(k.ifindex, v.first_seen_ns, n_flows + i)))
        });
        let failed: BTreeMap<u32, u64> = drained.fails.iter().map(|(i, f)| (*i, f.packets)).collect();

        let mut order: Vec<InterfaceMeta> = interfaces.to_vec();
        let mut seen_ifindex = None;
        for idx in (0..slots.len()).map(|at| slots.get(at).ifindex()).chain(failed.keys().copied()) {
            if seen_ifindex == Some(idx) {
                continue;
            }
            seen_ifindex = Some(idx);
            if !order.iter().any(|m| m.ifindex == idx) {
                order.push(InterfaceMeta {
                    ifindex: idx,
                    name: format!("ifindex{idx}"),
                    interface_id: format!("if-{idx}").into(),
                    meta: None,
                    tags: None,
                    ecs: None,
                });
            }
        }
        let mut at = 0;
        let runs = order
            .into_iter()
            .map(|meta| {
                let lo = slots.partition_point(0, |s| s.ifindex() < meta.ifindex);
                let hi = slots.partition_point(lo, |s| s.ifindex() == meta.ifindex);
                let skipped = failed.contains_key(&meta.ifindex) || drained.unattributed_failures > 0;
                let run = Run { meta, flows: lo..hi, at, skipped };
                at = run.last() + 1;
                run
            })
            .collect();
        let secs = (drained.window_start_unix_ns / 1_000_000_000, drained.window_end_unix_ns / 1_000_000_000);
        WindowRecords { host, drained, enrichment, rejects, slots, runs, secs }
    }

    /// The window's places (see [`WindowRecords`]).
    pub fn places(&self) -> usize {
        self.runs.last().map_or(0, |r| r.last() + 1)
    }

    /// How many threads to format the window on: one per core, each with
    /// at least [`PLACES_PER_THREAD`] places.
    pub fn threads(&self) -> usize {
        let wanted = self.places() / PLACES_PER_THREAD;
        if wanted < 2 {
            return 1; // without reading the cgroup's CPU limit
        }
        wanted.min(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// `n` (at least one) contiguous ranges of about the same number of
    /// places, covering the window in order.
    pub fn ranges(&self, n: usize) -> Vec<Range<usize>> {
        split(0..self.places(), n)
    }

    /// The window in consecutive pieces of `size` places (the last may be
    /// shorter; none for an empty window).
    pub fn pieces(&self, size: usize) -> impl Iterator<Item = Range<usize>> {
        let (len, size) = (self.places(), size.max(1));
        (0..len).step_by(size).map(move |lo| lo..(lo + size).min(len))
    }

    fn entry(&self, slot: Slot) -> (&FlowKey, &FlowStats, Action, Option<&Arc<str>>) {
        let i = slot.idx();
        match self.drained.flows.get(i) {
            Some((k, v)) => (k, v, semantics::CAPTURED_ACTION, None),
            None => {
                let (k, v, r) = &self.rejects[i - self.drained.flows.len()];
                (k, v, Action::Reject, r.as_ref())
            }
        }
    }

    /// Whether the filters let this flow through (no enrichment: all);
    /// `addrs`: the key's packet addresses ([`key_addrs`]).
    fn admits(&self, k: &FlowKey, action: Action, (src, dst): (IpAddr, IpAddr)) -> bool {
        let Some(e) = self.enrichment else { return true };
        let excluded = e.exclusions.as_ref().is_some_and(|x| x.excludes(src, dst, k.protocol, k.src_port, k.dst_port));
        !excluded && e.traffic_type.admits(Some(action))
    }

    /// Hands the records of these places to `emit`, in order. Each range
    /// starts afresh (no state of the places before it), so ranges may be
    /// written in any order, on any thread.
    pub fn write(&self, places: Range<usize>, mut emit: impl FnMut(&FlowRecord)) {
        let (host, drained, enrichment) = (self.host, self.drained, self.enrichment);
        let (w_start, w_end) = self.secs;
        let services = enrichment.and_then(|e| e.aws_services.as_ref());
        let service_of = |a: IpAddr| services.and_then(|s| s.lookup(a)).cloned();
        let pods = enrichment.and_then(|e| e.pods.as_deref());
        let mut k8s = pods.map(K8sGroups::new);
        let first = self.runs.partition_point(|r| r.last() < places.start);
        for run in self.runs[first..].iter().take_while(|r| r.at < places.end) {
            let meta = &run.meta;
            let own_pod = pods.map_or(NO_POD, |p| p.of_ifindex(meta.ifindex));
            // This range's share of the interface's flows.
            let n = run.flows.len();
            let lo = run.flows.start + places.start.saturating_sub(run.at).min(n);
            let hi = run.flows.start + (places.end - run.at).min(n);
            // Interfaces without known addresses keep the packet addresses.
            let addrs = meta.meta.as_deref().map(interface_addrs).filter(|a| !a.is_empty());
            let mut rec = base_record(host, meta, w_start, w_end, LogStatus::Ok);
            let mut written = 0usize;
            for at in lo..hi {
                if let Some((k, v)) = (at + PREFETCH_AHEAD < self.slots.len()).then(|| self.slots.get(at + PREFETCH_AHEAD)).and_then(|s| drained.flows.get(s.idx())) {
                    prefetch(k);
                    prefetch(v);
                }
                let (k, v, action, reject_reason) = self.entry(self.slots.get(at));
                let (pkt_src, pkt_dst) = key_addrs(k);
                if !self.admits(k, action, (pkt_src, pkt_dst)) {
                    continue;
                }
                let dir = if k.direction == direction::INGRESS { Direction::Ingress } else { Direction::Egress };
                let (src, dst) = match &addrs {
                    Some(a) => semantics::normalise_addrs(dir, pkt_src, pkt_dst, a),
                    None => (pkt_src, pkt_dst),
                };
                let start = unix_secs(v.first_seen_ns, drained.kernel_to_unix_ns).clamp(w_start, w_end);
                rec.start = start;
                rec.end = unix_secs(v.last_seen_ns, drained.kernel_to_unix_ns).clamp(start, w_end);
                rec.srcaddr = Some(src);
                rec.dstaddr = Some(dst);
                rec.pkt_srcaddr = Some(pkt_src);
                rec.pkt_dstaddr = Some(pkt_dst);
                rec.srcport = Some(k.src_port);
                rec.dstport = Some(k.dst_port);
                rec.protocol = Some(k.protocol);
                rec.packets = Some(v.packets);
                rec.bytes = Some(v.bytes);
                rec.action = Some(action);
                rec.tcp_flags = Some(if k.protocol == 6 { aws_tcp_flags(&v.tcp_flags) } else { 0 });
                rec.ip_type = Some(semantics::ip_type(pkt_src));
                rec.flow_direction = Some(dir);
                if services.is_some() {
                    rec.pkt_src_aws_service = service_of(pkt_src);
                    rec.pkt_dst_aws_service = service_of(pkt_dst);
                }
                rec.traffic_path = enrichment.and_then(|e| e.routes.as_ref()).and_then(|r| r.path(dir, pkt_dst)).map(|p| p.code());
                if rec.reject_reason.as_ref() != reject_reason {
                    rec.reject_reason = reject_reason.cloned();
                }
                if let Some(g) = &mut k8s {
                    // Records of one interface often share a group: no refcount churn then.
                    let group = g.of(own_pod, Some((pkt_src, pkt_dst)));
                    if rec.k8s.as_ref().map(Arc::as_ptr) != group.map(Arc::as_ptr) {
                        rec.k8s = group.cloned();
                    }
                }
                emit(&rec);
                written += 1;
            }
            if !places.contains(&run.last()) {
                continue;
            }
            // NODATA only if no flow of the interface passed the filters,
            // including its flows in the ranges before this one (the first
            // one checked passes, unless the filters leave flows out).
            let nodata = || written == 0 && !(run.flows.start..lo).any(|at| matches!(self.entry(self.slots.get(at)), (k, _, a, _) if self.admits(k, a, key_addrs(k))));
            let status = if run.skipped {
                Some(LogStatus::SkipData)
            } else if nodata() {
                Some(LogStatus::NoData)
            } else {
                None
            };
            if let Some(status) = status {
                let mut r = base_record(host, meta, w_start, w_end, status);
                if let Some(g) = &mut k8s {
                    r.k8s = g.of(own_pod, None).cloned();
                }
                emit(&r);
            }
        }
    }

    /// Writes the window as `parts.len()` contiguous ranges ([`Self::ranges`]),
    /// each on its own thread (the first on this one), handing each range's
    /// records to `emit` with that range's part: joined in order, the parts
    /// hold what one [`Self::write`] of the whole window would give.
    pub fn write_parallel<P: Send>(&self, parts: &mut [P], emit: impl Fn(&mut P, &FlowRecord) + Sync) {
        self.write_parallel_in(0..self.places(), parts, emit)
    }

    /// [`WindowRecords::write_parallel`] for the places in `within` only.
    pub fn write_parallel_in<P: Send>(&self, within: Range<usize>, parts: &mut [P], emit: impl Fn(&mut P, &FlowRecord) + Sync) {
        let n = parts.len();
        // Ranges are taken in turn by whichever thread is free; each range
        // has its part, so the order of the output does not depend on it.
        let queue = Mutex::new(parts.iter_mut().zip(split(within, n)));
        let next = || queue.lock().unwrap_or_else(|e| e.into_inner()).next();
        let work = || {
            while let Some((part, range)) = next() {
                self.write(range, |r| emit(part, r));
            }
        };
        std::thread::scope(|s| {
            for _ in 1..n {
                // Without a thread, the ranges left are written here.
                if std::thread::Builder::new().name("flowlog-format".into()).spawn_scoped(s, work).is_err() {
                    break;
                }
            }
            work();
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowlog_common::InsertFailures;

    /// The 64-bit sort gives the order of the 128-bit one, for windows
    /// whose parts fit in 64 bits and windows that fall back.
    #[test]
    fn slots_sort_as_their_full_keys() {
        let mut rng = fastrand::Rng::with_seed(64);
        for case in 0..400 {
            let n = rng.usize(0..3000);
            let mut ifaces: Vec<u32> = (0..rng.usize(1..6)).map(|_| if rng.bool() { rng.u32(1..40) } else { rng.u32(..) }).collect();
            if case % 7 == 0 {
                ifaces.push(u32::MAX);
            }
            let t0 = rng.u64(..u64::MAX / 2);
            let span = 1u64 << rng.u32(0..63);
            let mut slots: Vec<Slot> =
                (0..n).map(|i| Slot::new(ifaces[rng.usize(..ifaces.len())], t0 + rng.u64(0..span) / 4_000_000 * 4_000_000, i)).collect();
            rng.shuffle(&mut slots);
            let mut want = slots.clone();
            want.sort_unstable();
            let order = Order::sorted(|| slots.iter().copied());
            let got: Vec<Slot> = (0..order.len()).map(|at| order.get(at)).collect();
            assert!(got == want, "case {case}: {n} slots, interfaces {ifaces:?}, time span {span}");
            // An interface's flows are found by ifindex in either layout.
            for i in ifaces.iter().copied().chain([0, 1, u32::MAX]) {
                assert_eq!(order.partition_point(0, |s| s.ifindex() < i), want.partition_point(|s| s.ifindex() < i), "case {case}: ifindex {i}");
            }
        }
    }

    fn key(ifindex: u32, sport: u16, proto: u8, dir: u8) -> FlowKey {
        let mut k = FlowKey {
            ifindex,
            src_addr: [0; 16],
            dst_addr: [0; 16],
            src_port: sport,
            dst_port: 80,
            protocol: proto,
            direction: dir,
            family: family::IPV4,
            _pad: 0,
        };
        k.src_addr[..4].copy_from_slice(&[10, 0, 0, 1]);
        k.dst_addr[..4].copy_from_slice(&[10, 0, 0, 2]);
        k
    }

    /// `flags`: the raw TCP flags of one packet standing for the window.
    fn stats(packets: u64, bytes: u64, first_s: u64, last_s: u64, flags: u8) -> FlowStats {
        FlowStats {
            packets,
            bytes,
            first_seen_ns: first_s * 1_000_000_000 + 5,
            last_seen_ns: last_s * 1_000_000_000 + 7,
            tcp_flags: TcpFlagsSeen::of_packet(flags),
            _pad: 0,
        }
    }

    fn iface(ifindex: u32, id: &str) -> InterfaceMeta {
        InterfaceMeta { ifindex, name: format!("veth{ifindex}"), interface_id: id.into(), meta: None, tags: None, ecs: None }
    }

    /// [`iface`] whose metadata lists these IPv4 addresses, the first the
    /// primary (as IMDS lists them).
    fn iface_with_addrs(ifindex: u32, id: &str, addrs: &[&str]) -> InterfaceMeta {
        use crate::metadata::{HostMetadata, LinkId};
        let mut m = InterfaceMetadata::derived(&LinkId::new(format!("veth{ifindex}"), None), &HostMetadata::default(), "machine-1");
        m.ipv4s = addrs.iter().map(|a| a.parse().unwrap()).collect();
        m.primary_ipv4 = m.ipv4s.first().copied();
        InterfaceMeta { meta: Some(Arc::new(m)), ..iface(ifindex, id) }
    }

    fn drained(flows: Vec<(FlowKey, FlowStats)>, fails: Vec<(u32, InsertFailures)>, unattributed: u64) -> Drained {
        // kernel clock 100 s == unix 1_700_000_100 s
        Drained::from_parts(
            flows,
            fails,
            unattributed,
            1_700_000_000 * 1_000_000_000,
            1_700_000_100 * 1_000_000_000 + 300,
            1_700_000_160 * 1_000_000_000 + 900,
        )
    }

    fn lines(records: &[FlowRecord]) -> Vec<String> {
        let f = flowlog_records::format::Format::default();
        records.iter().map(|r| f.line(r)).collect()
    }

    #[test]
    fn flows_nodata_and_skipdata_per_interface() {
        let host = HostMeta::new("unknown");
        let ifaces = [iface(2, "eni-a"), iface(3, "eni-b"), iface(4, "eni-c")];
        let d = drained(
            vec![
                (key(2, 4000, 17, direction::EGRESS), stats(3, 300, 101, 103, 0)),
                (key(2, 3000, 6, direction::INGRESS), stats(5, 500, 100, 110, 0x02)),
                (key(4, 5000, 1, direction::INGRESS), stats(1, 84, 120, 120, 0)),
            ],
            vec![(4, InsertFailures { packets: 9, bytes: 900 })],
            0,
        );
        assert_eq!(
            lines(&build_records(&host, &ifaces, &d, None)),
            [
                "2 unknown eni-a 10.0.0.1 10.0.0.2 3000 80 6 5 500 1700000100 1700000110 ACCEPT OK",
                "2 unknown eni-a 10.0.0.1 10.0.0.2 4000 80 17 3 300 1700000101 1700000103 ACCEPT OK",
                "2 unknown eni-b - - - - - - - 1700000100 1700000160 - NODATA",
                "2 unknown eni-c 10.0.0.1 10.0.0.2 5000 80 1 1 84 1700000120 1700000120 ACCEPT OK",
                "2 unknown eni-c - - - - - - - 1700000100 1700000160 - SKIPDATA",
            ]
        );
    }

    #[test]
    fn unattributed_failures_mark_every_interface() {
        let host = HostMeta::new("1");
        let d = drained(vec![(key(2, 1, 17, 0), stats(1, 28, 100, 100, 0))], vec![], 4);
        let l = lines(&build_records(&host, &[iface(2, "a"), iface(3, "b")], &d, None));
        assert_eq!(
            l,
            [
                "2 1 a 10.0.0.1 10.0.0.2 1 80 17 1 28 1700000100 1700000100 ACCEPT OK",
                "2 1 a - - - - - - - 1700000100 1700000160 - SKIPDATA",
                "2 1 b - - - - - - - 1700000100 1700000160 - SKIPDATA",
            ]
        );
    }

    #[test]
    fn times_are_clamped_into_the_window() {
        // A packet stamped just before the flip that opened the window.
        let host = HostMeta::new("1");
        let d = drained(vec![(key(2, 1, 17, 0), stats(1, 28, 99, 99, 0))], vec![], 0);
        let r = build_records(&host, &[iface(2, "a")], &d, None);
        assert_eq!((r[0].start, r[0].end), (1_700_000_100, 1_700_000_100));
    }

    #[test]
    fn tag_fields_fill_version_11_fields() {
        let tf = TagFields { instance: vec!["team".into()], network_interface: vec!["role".into(), "env".into()] };
        let inst = std::collections::BTreeMap::from([("team".to_string(), "net ops".to_string())]);
        let ifc = std::collections::BTreeMap::from([("env".to_string(), "prod".to_string())]);
        let mut m = iface(2, "eni-a");
        m.tags = tf.values(&inst, &ifc);
        let d = drained(vec![(key(2, 1, 17, 0), stats(1, 28, 100, 100, 0))], vec![], 0);
        let f = flowlog_records::format::Format::parse("${interface-id} ${instance-tag} ${instance-tag-2} ${interface-tag} ${interface-tag-2} ${version}").unwrap();
        let r = build_records(&HostMeta::new("1"), &[m], &d, None);
        // Values are percent-encoded so that a space never splits a field.
        assert_eq!(f.line(&r[0]), "eni-a net%20ops - - prod 11");
        assert_eq!(TagFields::default().values(&inst, &ifc), None);
        // ECS fields where configured, `-` for the ones not known.
        let mut m = iface(2, "eni-a");
        m.ecs = Some(EcsConfig { cluster_name: Some("prod".into()), task_id: Some("abc123".into()), ..Default::default() }.meta());
        let f = flowlog_records::format::Format::parse("${ecs-cluster-name} ${ecs-service-name} ${ecs-task-id} ${version}").unwrap();
        assert_eq!(f.line(&build_records(&HostMeta::new("1"), &[m], &d, None)[0]), "prod - abc123 7");
        let e = TagFields { instance: vec!["a".into(), "b".into(), "c".into()], ..Default::default() }.validate().unwrap_err();
        assert_eq!(e, "enrich.tag-fields.instance: at most 2 tag keys, as in CreateFlowLogs; got 3");
    }

    #[test]
    fn tcp_flags_follow_aws_rules() {
        // The flags of the packets of a window.
        let seen = |packets: &[u8]| {
            let mut s = TcpFlagsSeen::NONE;
            for p in packets {
                s.absorb(&TcpFlagsSeen::of_packet(*p));
            }
            aws_tcp_flags(&s)
        };
        assert_eq!(seen(&[0x10]), 0); // ACK alone
        assert_eq!(seen(&[0x18]), 0); // PSH+ACK
        assert_eq!(seen(&[0x02]), 2); // SYN
        assert_eq!(seen(&[0x12]), 18); // SYN-ACK
        // SYN then a separate ACK: no SYN-ACK packet.
        assert_eq!(seen(&[0x02, 0x10]), 2);
        assert_eq!(seen(&[0x12, 0x11]), 19); // SYN-ACK + FIN
        assert_eq!(seen(&[0x03]), 3); // SYN + FIN
        assert_eq!(seen(&[0x04 | 0x10]), 4); // RST+ACK
        assert_eq!(seen(&[0x42]), 2); // SYN+ECE
        assert_eq!(seen(&[0x02, 0x12, 0x11, 0x14]), 23); // all four
        assert_eq!(seen(&[]), 0);
    }

    /// A flow between two addresses, in `drained_at` time (kernel clock = Unix).
    #[allow(clippy::too_many_arguments)]
    fn flow(ifindex: u32, src: &str, dst: &str, ports: (u16, u16), proto: u8, dir: u8, counts: (u64, u64), secs: (u64, u64), flags: u8) -> (FlowKey, FlowStats) {
        let (s, d): (IpAddr, IpAddr) = (src.parse().unwrap(), dst.parse().unwrap());
        let mut k = key(ifindex, ports.0, proto, dir);
        k.dst_port = ports.1;
        k.src_addr = [0; 16];
        k.dst_addr = [0; 16];
        match (s, d) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                k.src_addr[..4].copy_from_slice(&s.octets());
                k.dst_addr[..4].copy_from_slice(&d.octets());
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                k.family = family::IPV6;
                k.src_addr = s.octets();
                k.dst_addr = d.octets();
            }
            _ => panic!("mixed families"),
        }
        let mut st = stats(counts.0, counts.1, secs.0, secs.1, flags);
        st.first_seen_ns = secs.0 * 1_000_000_000;
        st.last_seen_ns = secs.1 * 1_000_000_000 + 999;
        (k, st)
    }

    fn drained_at(flows: Vec<(FlowKey, FlowStats)>, window: (u64, u64)) -> Drained {
        Drained::from_parts(flows, vec![], 0, 0, window.0 * 1_000_000_000, window.1 * 1_000_000_000)
    }

    const IP_RANGES: &str = r#"{"syncToken": "1", "prefixes": [
        {"ip_prefix": "52.95.128.0/21", "region": "ap-southeast-2", "service": "AMAZON", "network_border_group": "ap-southeast-2"},
        {"ip_prefix": "52.95.128.0/21", "region": "ap-southeast-2", "service": "S3", "network_border_group": "ap-southeast-2"}
    ], "ipv6_prefixes": []}"#;

    /// The v5 example (reference §8.6) from kernel counters: everything but
    /// the interface metadata comes out of `build_records`.
    #[test]
    fn v5_example_from_packets() {
        let routes: flowlog_records::traffic_path::RouteTableConfig = serde_json::from_str(
            r#"{"routes": [{"destination": "10.0.0.0/16", "target": "local"}, {"destination": "0.0.0.0/0", "target": "igw"}]}"#,
        )
        .unwrap();
        let e = Enrichment {
            aws_services: Some(AwsServices::from_json(IP_RANGES).unwrap()),
            routes: Some(RouteTable::new(&routes).unwrap()),
            ..Enrichment::default()
        };
        // One packet with SYN, ACK and FIN; SYN and FIN in separate packets.
        let syn_ack_fin = 0x13;
        let syn_then_ack_fin = 0x03;
        let mut d = drained_at(
            vec![
                flow(2, "52.95.128.179", "10.0.0.71", (80, 34210), 6, direction::INGRESS, (14, 15044), (1616729292, 1616729349), syn_ack_fin),
                flow(2, "10.0.0.71", "52.95.128.179", (34210, 80), 6, direction::EGRESS, (7, 471), (1616729292, 1616729349), syn_then_ack_fin),
            ],
            (1616729280, 1616729350),
        );
        // The reply leaves a little after the request arrived (same second).
        d.flows[1].1.first_seen_ns += 1_000;
        let host = HostMeta::new("123456789012");
        let records = build_records(&host, &[iface_with_addrs(2, "eni-1235b8ca123456789", &["10.0.0.71"])], &d, Some(&e));
        let f = flowlog_records::format::Format::parse(flowlog_records::vectors::V5_FORMAT).unwrap();
        let got: Vec<String> = records.into_iter().map(|r| f.line(&flowlog_records::vectors::v5_interface_meta(r))).collect();
        assert_eq!(got, flowlog_records::vectors::V5_LINES);
    }

    /// The v10 example's `traffic-path` (reference §8.7): 1 for egress inside
    /// the VPC, `-` for ingress.
    #[test]
    fn v10_example_paths_from_packets() {
        let e = EnrichConfig {
            route_table: serde_json::from_str(r#"{"routes": [{"destination": "10.0.0.0/16", "target": "local"}]}"#).unwrap(),
            ..EnrichConfig::default()
        }
        .build(&[], false, RejectReasons::default())
        .unwrap();
        let me = "10.0.128.55";
        let mut flows = Vec::new();
        for (i, (peer, port)) in [("10.0.133.8", 43236), ("10.0.133.8", 36902), ("10.0.130.104", 55016), ("10.0.130.104", 60276)].into_iter().enumerate() {
            let t = 1_700_000_000 + 2 * i as u64;
            flows.push(flow(2, peer, me, (port, 80), 6, direction::INGRESS, (1, 60), (t, t), 0x02));
            flows.push(flow(2, me, peer, (80, port), 6, direction::EGRESS, (1, 60), (t + 1, t + 1), 0x12));
        }
        let records = build_records(&HostMeta::new("1"), &[iface(2, "eni-1")], &drained_at(flows, (1_700_000_000, 1_700_000_060)), Some(&e));
        let f = flowlog_records::format::Format::parse("${flow-direction} ${traffic-path} ${srcaddr} ${dstaddr} ${srcport} ${dstport}").unwrap();
        let want: Vec<String> = flowlog_records::vectors::V10_TEXT.lines().skip(1).map(|l| l.rsplit_once(' ').unwrap().0.to_string()).collect();
        assert_eq!(records.iter().map(|r| f.line(r)).collect::<Vec<_>>(), want);
    }

    /// New v3/v5 fields are filled without any enrichment, and the default
    /// format is unaffected by them.
    #[test]
    fn packet_fields_without_enrichment() {
        let d = drained_at(
            vec![
                flow(2, "2001:db8::1", "2001:db8::2", (0, 0), 58, direction::EGRESS, (2, 208), (100, 101), 0),
                flow(2, "198.51.100.7", "10.0.0.6", (5000, 22), 6, direction::INGRESS, (3, 180), (102, 103), 0x02),
            ],
            (100, 160),
        );
        let records = build_records(&HostMeta::new("1"), &[iface(2, "eni-1")], &d, None);
        let f = flowlog_records::format::Format::parse("${type} ${srcaddr} ${dstaddr} ${pkt-srcaddr} ${pkt-dstaddr} ${tcp-flags} ${flow-direction} ${traffic-path} ${pkt-src-aws-service} ${action}").unwrap();
        assert_eq!(
            records.iter().map(|r| f.line(r)).collect::<Vec<_>>(),
            [
                "IPv6 2001:db8::1 2001:db8::2 2001:db8::1 2001:db8::2 0 egress - - ACCEPT",
                "IPv4 198.51.100.7 10.0.0.6 198.51.100.7 10.0.0.6 2 ingress - - ACCEPT",
            ]
        );
    }

    /// Interface addresses normalise `srcaddr`/`dstaddr`; the packet's stay
    /// in `pkt-*`.
    #[test]
    fn addresses_normalised_per_interface() {
        let d = drained_at(
            vec![
                flow(2, "198.51.100.7", "10.0.0.6", (5000, 22), 6, direction::INGRESS, (3, 180), (102, 103), 0x02),
                flow(2, "203.0.113.9", "198.51.100.7", (5001, 443), 6, direction::EGRESS, (1, 60), (104, 104), 0x02),
                flow(3, "198.51.100.7", "10.0.0.6", (5000, 22), 6, direction::INGRESS, (3, 180), (102, 103), 0x02),
            ],
            (100, 160),
        );
        let ifaces = [iface_with_addrs(2, "eni-a", &["10.0.0.5", "10.0.0.6"]), iface(3, "eni-b")];
        let records = build_records(&HostMeta::new("1"), &ifaces, &d, Some(&Enrichment::default()));
        let f = flowlog_records::format::Format::parse("${interface-id} ${srcaddr} ${dstaddr} ${pkt-srcaddr} ${pkt-dstaddr}").unwrap();
        assert_eq!(
            records.iter().map(|r| f.line(r)).collect::<Vec<_>>(),
            [
                "eni-a 198.51.100.7 10.0.0.5 198.51.100.7 10.0.0.6",
                "eni-a 10.0.0.5 198.51.100.7 203.0.113.9 198.51.100.7",
                // No addresses known for this interface: packet addresses.
                "eni-b 198.51.100.7 10.0.0.6 198.51.100.7 10.0.0.6",
            ]
        );
    }

    /// Excluded and filtered-out flows vanish; an interface left without
    /// records reports NODATA.
    #[test]
    fn filters_leave_flows_out() {
        let flows = vec![
            flow(2, "10.0.1.5", "169.254.169.254", (40000, 80), 6, direction::EGRESS, (5, 400), (101, 101), 0x02),
            flow(2, "10.0.1.5", "10.0.0.2", (40001, 53), 17, direction::EGRESS, (1, 70), (102, 102), 0),
            flow(3, "10.0.2.5", "10.0.0.2", (40001, 53), 17, direction::EGRESS, (1, 70), (102, 102), 0),
            flow(3, "10.0.2.5", "10.0.9.9", (40002, 443), 6, direction::EGRESS, (1, 60), (103, 103), 0x02),
        ];
        let d = drained_at(flows, (100, 160));
        let host = HostMeta::new("1");
        let ifaces = [iface(2, "eni-a"), iface(3, "eni-b")];
        let cfg: EnrichConfig = serde_json::from_str(r#"{"exclusions": {}, "traffic-type": "ALL"}"#).unwrap();
        let e = cfg.build(&["10.0.0.0/16".parse().unwrap()], true, RejectReasons::default()).unwrap();
        assert_eq!(
            lines(&build_records(&host, &ifaces, &d, Some(&e))),
            [
                "2 1 eni-a - - - - - - - 100 160 - NODATA",
                "2 1 eni-b 10.0.2.5 10.0.9.9 40002 443 6 1 60 103 103 ACCEPT OK",
            ]
        );
        // Off by default outside EC2 mode: everything is written.
        let e = cfg.build(&["10.0.0.0/16".parse().unwrap()], false, RejectReasons::default()).unwrap();
        assert_eq!(build_records(&host, &ifaces, &d, Some(&e)).len(), 4);
        // A REJECT-only log has nothing to say about accepted traffic.
        let e = Enrichment { traffic_type: TrafficType::Reject, ..Enrichment::default() };
        assert_eq!(
            lines(&build_records(&host, &ifaces, &d, Some(&e))),
            ["2 1 eni-a - - - - - - - 100 160 - NODATA", "2 1 eni-b - - - - - - - 100 160 - NODATA"]
        );
        // Without enrichment: as before, all four flows.
        assert_eq!(build_records(&host, &ifaces, &d, None).len(), 4);
    }

    /// ACCEPT and REJECT entries of one flow become separate records (an
    /// emptied ACCEPT entry none), filtered by the traffic type.
    #[test]
    fn records_split_accept_and_reject_and_filter_by_traffic_type() {
        use flowlog_common::RejectKey;
        use flowlog_records::format::Format;
        let st = |p: u64, first: u64, last: u64, flags: u8| FlowStats {
            packets: p,
            bytes: p * 100,
            first_seen_ns: first,
            last_seen_ns: last,
            tcp_flags: TcpFlagsSeen::of_packet(flags),
            _pad: 0,
        };
        let k = key(2, 1, 6, direction::INGRESS);
        let emptied = FlowKey { src_port: 2, ..k };
        let egress = FlowKey { src_port: 3, direction: direction::EGRESS, ..k };
        let sec = 1_000_000_000u64;
        let d = Drained::from_parts(
            vec![(k, st(4, 100 * sec, 101 * sec, 0x10)), (emptied, st(0, 100 * sec, 100 * sec, 0x02))],
            vec![],
            0,
            1_700_000_000 * sec as i128,
            1_700_000_100 * sec,
            1_700_000_160 * sec,
        )
        .with_rejects(vec![
            (RejectKey { flow: k, reason: 10 }, st(3, 102 * sec, 103 * sec, 0x02)),
            (RejectKey { flow: emptied, reason: 10 }, st(2, 100 * sec, 100 * sec, 0x02)),
            (RejectKey { flow: egress, reason: 12 }, st(1, 105 * sec, 105 * sec, 0)),
        ]);
        let host = HostMeta::new("1");
        let ifaces = [InterfaceMeta { ifindex: 2, name: "veth0".into(), interface_id: "eni-a".into(), meta: None, tags: None, ecs: None }, InterfaceMeta { ifindex: 3, name: "veth1".into(), interface_id: "eni-b".into(), meta: None, tags: None, ecs: None }];
        let reasons = RejectReasons { by_value: std::collections::HashMap::from([(10, ("NETFILTER_DROP".into(), None)), (12, ("NO_SOCKET".into(), Some("CLOSED".into())))]) };
        let fmt = Format::parse("${interface-id} ${srcport} ${packets} ${bytes} ${start} ${action} ${log-status} ${flow-direction} ${reject-reason}").unwrap();
        let run = |t: TrafficType| -> Vec<String> {
            let e = Enrichment { traffic_type: t, reject_reasons: reasons.clone(), ..Enrichment::default() };
            build_records(&host, &ifaces, &d, Some(&e)).iter().map(|r| fmt.line(r)).collect()
        };
        assert_eq!(
            run(TrafficType::All),
            [
                "eni-a 1 4 400 1700000100 ACCEPT OK ingress -",
                // The emptied ACCEPT entry (all its packets dropped) has no record.
                "eni-a 2 2 200 1700000100 REJECT OK ingress -",
                "eni-a 1 3 300 1700000102 REJECT OK ingress -",
                "eni-a 3 1 100 1700000105 REJECT OK egress CLOSED",
                "eni-b - - - 1700000100 - NODATA - -",
            ]
        );
        assert_eq!(run(TrafficType::Accept), ["eni-a 1 4 400 1700000100 ACCEPT OK ingress -", "eni-b - - - 1700000100 - NODATA - -"]);
        assert_eq!(
            run(TrafficType::Reject),
            [
                "eni-a 2 2 200 1700000100 REJECT OK ingress -",
                "eni-a 1 3 300 1700000102 REJECT OK ingress -",
                "eni-a 3 1 100 1700000105 REJECT OK egress CLOSED",
                "eni-b - - - 1700000100 - NODATA - -",
            ]
        );
        // Without a mapping every reject-reason is `-`.
        let plain = build_records(&host, &ifaces, &d, None);
        assert!(plain.iter().all(|r| r.reject_reason.is_none()));
        assert_eq!(plain.iter().filter(|r| r.action == Some(flowlog_records::record::Action::Reject)).count(), 3);
    }

    /// Pod veths carry their pod's identity (NODATA too), addresses of pods
    /// on this node name them on any interface; the AWS fields are unchanged.
    #[test]
    fn k8s_fields_from_the_window_pods() {
        use crate::metadata::kubernetes::{index::ResolvedPod, model::Pod};
        let p = |ns: &str, name: &str, ip: &str, ifindex: u32| ResolvedPod {
            pod: Pod {
                id: format!("sb-{name}"),
                namespace: ns.into(),
                name: name.into(),
                uid: format!("uid-{name}"),
                labels: [("app.kubernetes.io/name".to_string(), format!("{name} app"))].into(),
                ips: vec![ip.parse().unwrap()],
                netns: Some(format!("/run/netns/{name}").into()),
                host_ifaces: vec![],
            },
            ifindexes: vec![ifindex],
        };
        let pods = [p("shop", "web", "10.88.0.2", 7), p("shop", "db", "10.88.0.3", 8)];
        let index = PodIndex::build(pods.iter(), Some("app.kubernetes.io/name"));
        let e = Enrichment { pods: Some(Arc::new(index)), ..Enrichment::default() };
        let d = drained_at(
            vec![
                flow(7, "10.88.0.2", "10.88.0.3", (40000, 5432), 6, direction::EGRESS, (3, 180), (101, 102), 0x02),
                flow(2, "10.88.0.2", "10.88.0.3", (40000, 5432), 6, direction::INGRESS, (3, 180), (101, 102), 0x02),
                flow(2, "10.88.0.3", "192.0.2.1", (5432, 443), 6, direction::EGRESS, (1, 60), (103, 103), 0x02),
                flow(2, "198.51.100.1", "192.0.2.1", (1, 2), 17, direction::EGRESS, (1, 60), (104, 104), 0),
            ],
            (100, 160),
        );
        let ifaces = [iface(2, "eni-node"), iface(7, "eni-web"), iface(8, "eni-db")];
        let records = build_records(&HostMeta::new("1"), &ifaces, &d, Some(&e));
        let f = flowlog_records::format::Format::parse(
            "${interface-id} ${srcaddr} ${dstaddr} ${packets} ${log-status} ${k8s-namespace} ${k8s-pod-name} \
             ${k8s-pod-uid} ${k8s-src-pod} ${k8s-dst-pod} ${k8s-pod-label}",
        )
        .unwrap();
        assert_eq!(
            records.iter().map(|r| f.line(r)).collect::<Vec<_>>(),
            [
                "eni-node 10.88.0.2 10.88.0.3 3 OK - - - shop/web shop/db -",
                "eni-node 10.88.0.3 192.0.2.1 1 OK - - - shop/db - -",
                "eni-node 198.51.100.1 192.0.2.1 1 OK - - - - - -",
                "eni-web 10.88.0.2 10.88.0.3 3 OK shop web uid-web shop/web shop/db web%20app",
                "eni-db - - - NODATA shop db uid-db - - db%20app",
            ]
        );
        // The default format is byte-exact with and without pods.
        assert_eq!(lines(&records), lines(&build_records(&HostMeta::new("1"), &ifaces, &d, None)));
        assert!(records[2].k8s.is_none());
    }

    #[test]
    fn enrich_config_errors() {
        let bad_routes: EnrichConfig = serde_json::from_str(
            r#"{"route-table": {"routes": [{"destination": "0.0.0.0/0", "target": "igw"}, {"destination": "0.0.0.0/0", "target": "vgw"}]}}"#,
        )
        .unwrap();
        assert_eq!(bad_routes.build(&[], true, RejectReasons::default()).unwrap_err().to_string(), "route table: destination 0.0.0.0/0 is listed twice");
        let missing = EnrichConfig { ip_ranges: Some("/nonexistent/ip-ranges.json".into()), ..EnrichConfig::default() };
        assert!(missing.build(&[], true, RejectReasons::default()).unwrap_err().to_string().starts_with("cannot read AWS ip-ranges file /nonexistent/ip-ranges.json: "));
        assert!(serde_json::from_str::<EnrichConfig>(r#"{"routes": []}"#).is_err());
        let empty = EnrichConfig::default().build(&[], true, RejectReasons::default()).unwrap();
        assert!(empty.aws_services.is_none() && empty.routes.is_none() && empty.exclusions.is_some());
        assert_eq!(empty.traffic_type, TrafficType::All);
    }

    #[test]
    fn ipv6_keys_become_ipv6_addresses() {
        let mut k = key(2, 1, 58, 0);
        k.family = family::IPV6;
        k.src_addr = "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets();
        k.dst_addr = "fe80::2".parse::<Ipv6Addr>().unwrap().octets();
        assert_eq!(key_addrs(&k), ("2001:db8::1".parse().unwrap(), "fe80::2".parse().unwrap()));
    }

    /// One thread below two threads' worth of places, then one per
    /// `PLACES_PER_THREAD` up to the cores; ranges cover the places in order.
    #[test]
    fn threads_follow_the_window_size() {
        let host = HostMeta::new("1");
        let window = |n: usize| drained((0..n).map(|i| (key(2, i as u16, 17, 0), stats(1, 28, 100, 100, 0))).collect(), vec![], 0);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        // One place per flow plus the interface's last (empty) place.
        for (flows, want) in [(0, 1), (2 * PLACES_PER_THREAD - 2, 1), (2 * PLACES_PER_THREAD - 1, 2.min(cores)), (8 * PLACES_PER_THREAD, 8.min(cores))] {
            let d = window(flows);
            let w = WindowRecords::new(&host, &[iface(2, "a")], &d, None);
            assert_eq!((w.places(), w.threads()), (flows + 1, want), "{flows} flows");
        }
        let d = window(10);
        let w = WindowRecords::new(&host, &[iface(2, "a")], &d, None);
        assert_eq!(w.ranges(0), vec![0..11]);
        assert_eq!(w.ranges(3), [0..3, 3..7, 7..11]);
    }

    /// A random window: ACCEPT flows (some emptied by the drop program),
    /// REJECT entries, on interfaces with and without metadata, tags, ECS
    /// fields or a pod, on idle interfaces, on interfaces not in the list,
    /// with insert failures; and a random enrichment (filters that leave
    /// interfaces without records, AWS services, routes, reject reasons,
    /// pods), or none.
    fn random_window(rng: &mut fastrand::Rng) -> (Vec<InterfaceMeta>, Drained, Option<Enrichment>) {
        use crate::metadata::kubernetes::{index::ResolvedPod, model::Pod};
        use flowlog_common::{InsertFailures, RejectKey};
        let mut ifindexes: Vec<u32> = (1..20).collect();
        rng.shuffle(&mut ifindexes);
        ifindexes.truncate(rng.usize(1..10));
        let ifaces: Vec<InterfaceMeta> = ifindexes
            .iter()
            .map(|&i| {
                let mut m = if rng.bool() { iface_with_addrs(i, &format!("eni-{i}"), &["10.0.0.3", "10.0.0.4"]) } else { iface(i, &format!("eni-{i}")) };
                if rng.u8(0..3) == 0 {
                    let tf = TagFields { instance: vec!["team".into()], network_interface: vec!["env".into()] };
                    let t = std::collections::BTreeMap::from([("team".to_string(), "net ops".to_string()), ("env".to_string(), format!("e{i}"))]);
                    m.tags = tf.values(&t, &t);
                }
                if rng.u8(0..3) == 0 {
                    m.ecs = Some(EcsConfig { cluster_name: Some("prod".into()), task_id: Some(format!("t{i}")), ..Default::default() }.meta());
                }
                m
            })
            .collect();
        // Flows on some of the interfaces (the others are idle), and now
        // and then on one the list lacks.
        let unlisted = 40 + rng.u32(0..3);
        let busy: Vec<u32> = ifindexes.iter().copied().filter(|_| rng.u8(0..4) != 0).chain([unlisted]).collect();
        const ADDRS: [&str; 9] = ["10.0.0.3", "10.0.0.4", "10.0.0.2", "10.0.7.9", "169.254.169.254", "52.95.128.7", "10.88.0.2", "10.88.0.3", "192.0.2.1"];
        const ADDRS6: [&str; 3] = ["2001:db8::1", "fe80::2", "2001:db8::3"];
        let random_key = |rng: &mut fastrand::Rng| {
            let ifindex = if rng.u8(0..50) == 0 { busy[busy.len() - 1] } else { busy[rng.usize(..busy.len().max(2) - 1)] };
            let proto = [6, 17, 1][rng.usize(..3)];
            let mut k = key(ifindex, rng.u16(..), proto, rng.u8(0..2));
            k.dst_port = [53, 80, 443, rng.u16(..)][rng.usize(..4)];
            if rng.u8(0..6) == 0 {
                k.family = family::IPV6;
                k.src_addr = ADDRS6[rng.usize(..3)].parse::<Ipv6Addr>().unwrap().octets();
                k.dst_addr = ADDRS6[rng.usize(..3)].parse::<Ipv6Addr>().unwrap().octets();
            } else {
                k.src_addr[..4].copy_from_slice(&ADDRS[rng.usize(..ADDRS.len())].parse::<Ipv4Addr>().unwrap().octets());
                k.dst_addr[..4].copy_from_slice(&ADDRS[rng.usize(..ADDRS.len())].parse::<Ipv4Addr>().unwrap().octets());
            }
            k
        };
        // Times on a coarse clock (ties), some before the window's start.
        let random_stats = |rng: &mut fastrand::Rng, packets: u64| {
            let first = 99_000_000_000 + rng.u64(0..2000) * 31_000_000;
            FlowStats {
                packets,
                bytes: packets * rng.u64(40..1500),
                first_seen_ns: first,
                last_seen_ns: first + rng.u64(0..5_000_000_000),
                tcp_flags: TcpFlagsSeen::of_packet(rng.u8(..)),
                _pad: 0,
            }
        };
        let n = [0, rng.usize(0..40), rng.usize(0..3000)][rng.usize(..3)];
        let flows: Vec<(FlowKey, FlowStats)> = (0..n)
            .map(|_| {
                let packets = if rng.u8(0..10) == 0 { 0 } else { rng.u64(1..1000) };
                (random_key(rng), random_stats(rng, packets))
            })
            .collect();
        let rejects: Vec<(RejectKey, FlowStats)> = (0..rng.usize(0..n / 3 + 1))
            .map(|_| {
                let flow = if !flows.is_empty() && rng.bool() { flows[rng.usize(..flows.len())].0 } else { random_key(rng) };
                let packets = rng.u64(1..10);
                (RejectKey { flow, reason: [10, 12, 99][rng.usize(..3)] }, random_stats(rng, packets))
            })
            .collect();
        let fails: Vec<(u32, InsertFailures)> =
            ifindexes.iter().filter(|_| rng.u8(0..5) == 0).map(|&i| (i, InsertFailures { packets: 1, bytes: 60 })).collect();
        let d = drained(flows, fails, (rng.u8(0..20) == 0) as u64).with_rejects(rejects);
        if rng.u8(0..4) == 0 {
            return (ifaces, d, None);
        }
        let traffic = ["ALL", "ACCEPT", "REJECT"][rng.usize(..3)];
        let cfg: EnrichConfig = serde_json::from_str(&format!(
            r#"{{"exclusions": {{}}, "traffic-type": "{traffic}", "route-table": {{"routes": [
                {{"destination": "10.0.0.0/16", "target": "local"}}, {{"destination": "0.0.0.0/0", "target": "igw"}}]}}}}"#
        ))
        .unwrap();
        let reasons = RejectReasons { by_value: std::collections::HashMap::from([(10, ("NETFILTER_DROP".into(), None)), (12, ("NO_SOCKET".into(), Some("CLOSED".into())))]) };
        let mut e = cfg.build(&["10.0.0.0/16".parse().unwrap()], rng.bool(), reasons).unwrap();
        e.aws_services = Some(AwsServices::from_json(IP_RANGES).unwrap());
        let pod = |name: &str, ip: &str, ifindex: u32| ResolvedPod {
            pod: Pod {
                id: format!("sb-{name}"),
                namespace: "shop".into(),
                name: name.into(),
                uid: format!("uid-{name}"),
                labels: [("app".to_string(), format!("{name} app"))].into(),
                ips: vec![ip.parse().unwrap()],
                netns: None,
                host_ifaces: vec![],
            },
            ifindexes: vec![ifindex],
        };
        let pods = [pod("web", "10.88.0.2", ifindexes[0]), pod("db", "10.88.0.3", 19)];
        e.pods = rng.bool().then(|| Arc::new(PodIndex::build(pods.iter(), Some("app"))));
        (ifaces, d, Some(e))
    }

    /// The window formatted (every field, and the default format whose
    /// per-interface prefix is cached) in contiguous ranges, each with its
    /// own formatter, joined in order, is byte for byte the window
    /// formatted in one go: its text, its spool records and its counts; for
    /// 1 to 8 threads, and for ranges that end at every place of a small
    /// window (inside an interface's flows, on its NODATA or SKIPDATA place,
    /// on its first flow).
    /// `Shipper::write_window` (on every core, written out a piece at a
    /// time) hands the outputs exactly what the window sent whole does: the
    /// same file bytes, the same spool batch, the same counts.
    #[tokio::test]
    async fn a_window_written_in_pieces_is_the_whole_window() {
        use crate::metrics::RecordCounts;
        let (dir, file, mut sh) = crate::ship::tests::file_and_dir("pieces").await;
        let mut spooled = sh.spool().unwrap().reader(&sh.stats[0].0);
        let format = flowlog_records::format::Format::default();
        let host = HostMeta::new("123456789012");
        let mut rng = fastrand::Rng::with_seed(64);
        for case in 0..40 {
            let (ifaces, d, e) = random_window(&mut rng);
            let whole = build_records(&host, &ifaces, &d, e.as_ref());
            let mut want_counts = RecordCounts::default();
            whole.iter().for_each(|r| want_counts.add(r));
            let before = std::fs::metadata(&file).map_or(0, |m| m.len() as usize);
            let sent = sh.send(&format, &whole);
            let text = std::fs::read(&file).unwrap();
            let want = text[before..].to_vec();
            let piece = [1, 2, 7, 64, 100_000][case % 5];
            let (results, counts) = sh.write_window_in(&format, &WindowRecords::new(&host, &ifaces, &d, e.as_ref()), piece);
            assert_eq!(results, sent, "case {case}");
            assert_eq!(std::fs::read(&file).unwrap()[text.len()..], want[..], "case {case}, pieces of {piece}");
            assert_eq!(format!("{counts:?}"), format!("{want_counts:?}"), "case {case}");
            if !whole.is_empty() {
                let (a, _) = spooled.next_batch().unwrap().unwrap();
                let (b, _) = spooled.next_batch().unwrap().unwrap();
                assert_eq!(a, b, "case {case}");
            }
        }
        sh.shutdown().await;
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ranges_joined_are_the_whole_window() {
        use crate::{metrics::RecordCounts, ship::Part};
        use flowlog_records::format::{Format, ALL_FIELDS};
        let formats = [Format::from_fields(ALL_FIELDS.to_vec()).unwrap(), Format::default()];
        let host = HostMeta::new("123456789012");
        let mut rng = fastrand::Rng::with_seed(22);
        let (mut ranges_checked, mut nodata, mut filtered_nodata) = (0, 0, 0);
        for case in 0..300 {
            let (ifaces, d, e) = random_window(&mut rng);
            let format = &formats[case % 2];
            let part = || (Part::new(format, true, true, Vec::new()), RecordCounts::default());
            let push = |(p, c): &mut (Part, RecordCounts), r: &FlowRecord| {
                c.add(r);
                p.push(r);
            };
            let mut whole = part();
            for_each_record(&host, &ifaces, &d, e.as_ref(), |r| push(&mut whole, r));
            let (want_text, want_spool) = whole.0.output();
            nodata += whole.1.nodata;
            let unfiltered = build_records(&host, &ifaces, &d, None);
            filtered_nodata += whole.1.nodata - unfiltered.iter().filter(|r| r.log_status == LogStatus::NoData).count();
            let joined = |parts: &[(Part, RecordCounts)]| {
                let mut counts = RecordCounts::default();
                let (mut text, mut spool) = (Vec::new(), Vec::new());
                for (p, c) in parts {
                    counts.merge(c);
                    text.extend_from_slice(p.output().0);
                    spool.extend_from_slice(p.output().1);
                }
                (text, spool, counts)
            };
            let w = WindowRecords::new(&host, &ifaces, &d, e.as_ref());
            for threads in 1..=8 {
                let mut parts: Vec<_> = (0..threads).map(|_| part()).collect();
                w.write_parallel(&mut parts, push);
                let (text, spool, counts) = joined(&parts);
                assert_eq!(String::from_utf8_lossy(&text), String::from_utf8_lossy(want_text), "case {case}, {threads} threads");
                assert_eq!(spool, want_spool, "case {case}, {threads} threads");
                assert_eq!(counts, whole.1, "case {case}, {threads} threads");
            }
            // Two ranges split at every place of small windows.
            if w.places() < 200 {
                for cut in 0..=w.places() {
                    let mut parts = [part(), part()];
                    for (p, r) in parts.iter_mut().zip([0..cut, cut..w.places()]) {
                        w.write(r, |rec| push(p, rec));
                    }
                    let (text, spool, counts) = joined(&parts);
                    assert_eq!(String::from_utf8_lossy(&text), String::from_utf8_lossy(want_text), "case {case}, cut at {cut}");
                    assert_eq!((spool.as_slice(), counts), (want_spool, whole.1), "case {case}, cut at {cut}");
                    ranges_checked += 1;
                }
            }
        }
        // The cases cover what they are for.
        assert!(ranges_checked > 1000 && nodata > 100 && filtered_nodata > 10, "{ranges_checked} cuts, {nodata} NODATA, {filtered_nodata} by filters");
    }

}
