//! One flow log record, typed. `None` fields are written as `-`.
//!
//! The struct holds every field of versions 2–11 so that one type serves the
//! writer ([`crate::format`]) and the reader ([`crate::parse`]). Text that is
//! the same for many records (ids, metadata, service names) is `Arc<str>`, so
//! filling a record clones pointers, not strings. Groups of fields that come
//! from one source and are all set or all unknown together (an ECS task, the
//! configured tags, the next hop) sit behind one `Arc` each.
//!
//! Beyond AWS's fields, [`K8sMeta`] holds flowlog's own Kubernetes
//! extension fields (version 0 in the field table, never in an AWS format).

use std::{net::IpAddr, sync::Arc};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    Accept,
    Reject,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Accept => "ACCEPT",
            Action::Reject => "REJECT",
        }
    }

    pub fn from_name(s: &str) -> Option<Action> {
        [Action::Accept, Action::Reject].into_iter().find(|a| a.as_str() == s)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LogStatus {
    #[default]
    Ok,
    NoData,
    SkipData,
}

impl LogStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            LogStatus::Ok => "OK",
            LogStatus::NoData => "NODATA",
            LogStatus::SkipData => "SKIPDATA",
        }
    }

    pub fn from_name(s: &str) -> Option<LogStatus> {
        [LogStatus::Ok, LogStatus::NoData, LogStatus::SkipData].into_iter().find(|a| a.as_str() == s)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }

    pub fn from_name(s: &str) -> Option<Direction> {
        [Direction::Ingress, Direction::Egress].into_iter().find(|a| a.as_str() == s)
    }
}

/// The `type` field. `Efa` exists in AWS output (Elastic Fabric Adapter
/// traffic); a host agent never produces it but the reader must accept it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpType {
    V4,
    V6,
    Efa,
}

impl IpType {
    pub fn as_str(self) -> &'static str {
        match self {
            IpType::V4 => "IPv4",
            IpType::V6 => "IPv6",
            IpType::Efa => "EFA",
        }
    }

    pub fn from_name(s: &str) -> Option<IpType> {
        [IpType::V4, IpType::V6, IpType::Efa].into_iter().find(|a| a.as_str() == s)
    }

    /// The type of traffic between addresses of this family.
    pub fn of(addr: IpAddr) -> IpType {
        match addr {
            IpAddr::V4(_) => IpType::V4,
            IpAddr::V6(_) => IpType::V6,
        }
    }
}

/// The version 7 fields: the ECS task the traffic belongs to. Individual
/// fields stay `None` where AWS writes `-` even for ECS traffic (no container
/// instance on Fargate, no service for a standalone task, no second container).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EcsMeta {
    pub cluster_arn: Option<Arc<str>>,
    pub cluster_name: Option<Arc<str>>,
    pub container_instance_arn: Option<Arc<str>>,
    pub container_instance_id: Option<Arc<str>>,
    pub container_id: Option<Arc<str>>,
    pub second_container_id: Option<Arc<str>>,
    pub service_name: Option<Arc<str>>,
    pub task_definition_arn: Option<Arc<str>>,
    pub task_arn: Option<Arc<str>>,
    pub task_id: Option<Arc<str>>,
}

/// The version 11 tag fields: values of the (up to two) tag keys configured
/// per resource kind, unescaped. The writer percent-encodes them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TagValues {
    pub instance: [Option<Arc<str>>; 2],
    pub interface: [Option<Arc<str>>; 2],
    pub asg: [Option<Arc<str>>; 2],
}

/// The version 11 next-hop fields. A host sees only MAC addresses of its
/// neighbours, so these stay unknown unless some provider resolves them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NextHop {
    pub interface_id: Option<Arc<str>>,
    pub subnet_id: Option<Arc<str>>,
    pub az_id: Option<Arc<str>>,
    pub vpc_id: Option<Arc<str>>,
    pub interface_type: Option<Arc<str>>,
}

/// flowlog's Kubernetes extension fields (not AWS fields): the pod that owns
/// the record's interface, and the pods on this node behind the packet's
/// source and destination addresses, as the node's container runtime named
/// them in the record's window.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct K8sMeta {
    /// `k8s-namespace`, `k8s-pod-name`, `k8s-pod-uid`: the interface's pod.
    pub namespace: Option<Arc<str>>,
    pub pod_name: Option<Arc<str>>,
    pub pod_uid: Option<Arc<str>>,
    /// `k8s-pod-label`: the value of the configured label key on the
    /// interface's pod, unescaped (the writer percent-encodes it).
    pub pod_label: Option<Arc<str>>,
    /// `k8s-src-pod`, `k8s-dst-pod`: `namespace/name`.
    pub src_pod: Option<Arc<str>>,
    pub dst_pod: Option<Arc<str>>,
}

/// The fields of a record. NODATA/SKIPDATA records have only `account_id`,
/// `interface_id`, `start`, `end` and `log_status`.
///
/// `Default` is the empty record (all `-`, times 0, status OK); the reader
/// leaves the fields a format lacks at these values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowRecord {
    // version 2
    /// May be the literal `unknown` (interfaces owned by AWS services).
    pub account_id: Option<Arc<str>>,
    /// `None` for resources without an interface (regional NAT gateway).
    pub interface_id: Option<Arc<str>>,
    /// Possibly normalised to the interface's primary address, see
    /// [`crate::semantics::normalise_addrs`].
    pub srcaddr: Option<IpAddr>,
    pub dstaddr: Option<IpAddr>,
    pub srcport: Option<u16>,
    pub dstport: Option<u16>,
    pub protocol: Option<u8>,
    pub packets: Option<u64>,
    pub bytes: Option<u64>,
    /// Unix seconds.
    pub start: u64,
    /// Unix seconds.
    pub end: u64,
    pub action: Option<Action>,
    pub log_status: LogStatus,

    // version 3
    pub vpc_id: Option<Arc<str>>,
    pub subnet_id: Option<Arc<str>>,
    /// `None` for requester-managed interfaces (NAT gateway, endpoints).
    pub instance_id: Option<Arc<str>>,
    /// AWS `tcp-flags` value (FIN 1, SYN 2, RST 4, SYN-ACK 18, OR-ed).
    pub tcp_flags: Option<u8>,
    /// The `type` field.
    pub ip_type: Option<IpType>,
    /// The packet's own addresses (`srcaddr`/`dstaddr` may be normalised to
    /// the interface's primary address).
    pub pkt_srcaddr: Option<IpAddr>,
    pub pkt_dstaddr: Option<IpAddr>,

    // version 4
    pub region: Option<Arc<str>>,
    /// Zone id (`apse2-az3`), not the zone name; `None` in sublocations.
    pub az_id: Option<Arc<str>>,
    pub sublocation_type: Option<Arc<str>>,
    pub sublocation_id: Option<Arc<str>>,

    // version 5
    pub pkt_src_aws_service: Option<Arc<str>>,
    pub pkt_dst_aws_service: Option<Arc<str>>,
    pub flow_direction: Option<Direction>,
    /// Numeric code (see [`crate::traffic_path::TrafficPath`]); `None` for
    /// ingress and for egress no known path applies to.
    pub traffic_path: Option<u8>,

    // version 7
    pub ecs: Option<Arc<EcsMeta>>,

    // version 8
    pub reject_reason: Option<Arc<str>>,

    // version 9
    pub resource_id: Option<Arc<str>>,

    // version 10
    /// 0 plain, 1 Nitro-encrypted, 2 application-encrypted, 3 both.
    pub encryption_status: Option<u8>,

    // version 11
    pub tags: Option<Arc<TagValues>>,
    pub interface_type: Option<Arc<str>>,
    pub next_hop: Option<Arc<NextHop>>,

    // flowlog extensions
    pub k8s: Option<Arc<K8sMeta>>,
}

impl FlowRecord {
    /// A NODATA or SKIPDATA record: window bounds, `-` everywhere else.
    pub fn status_only(
        account_id: Arc<str>,
        interface_id: Arc<str>,
        start: u64,
        end: u64,
        log_status: LogStatus,
    ) -> Self {
        FlowRecord {
            account_id: Some(account_id),
            interface_id: Some(interface_id),
            start,
            end,
            log_status,
            ..FlowRecord::default()
        }
    }
}
