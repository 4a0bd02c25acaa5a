//! Record → text line, byte-exact with AWS VPC Flow Logs.
//!
//! Fields are joined by one space, `-` stands for a missing value, numbers
//! are plain decimal, IPv6 addresses are in RFC 5952 form (what `Ipv6Addr`'s
//! `Display` writes). No trailing space, no newline: the caller decides the
//! line terminator (S3/files use `\n`, CloudWatch events have none).
//!
//! Writing appends to a caller-owned buffer and never allocates per field.
//! A format is compiled once into a plan of writers (one per field, chosen
//! at parse time); numbers and addresses are written by table-driven code
//! ([`write_u64`], [`write_ip`]) that writes what `Display` writes without
//! `core::fmt`'s per-piece dispatch. [`LineWriter`] also renders the leading
//! per-interface fields (version, account, interface id) once per interface.
//! Formatting is most of the agent's per-record CPU time (BENCHMARKS.md);
//! [`reference`] keeps the plain field-by-field writer the tests compare
//! every writer against.
//!
//! The field table (`fields!`) also gives each field's column type
//! ([`Kind`], its Athena type): the agent's Parquet writer, `compare`'s
//! test files and the Athena DDLs of deploy/athena/ (`cargo xtask athena`)
//! are made from it, so a new field is one row plus its meaning.
//!
//! Rows of version 0 are flowlog's own extension fields (Kubernetes pod
//! identity), not AWS fields: they never count towards a format's version,
//! are in no AWS field set, the default format or the Athena DDLs.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use crate::record::FlowRecord;

/// How a field's values are typed in Parquet and Athena: AWS's Parquet
/// field table (INT_32, INT_64, else STRING). The agent maps it to Parquet
/// types; this crate stays free of a Parquet dependency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Int32,
    Int64,
    String,
}

impl Kind {
    /// The Athena (Hive DDL) type of a column of this kind.
    pub fn athena(self) -> &'static str {
        match self {
            Kind::Int32 => "int",
            Kind::Int64 => "bigint",
            Kind::String => "string",
        }
    }
}

/// Declares [`Field`] from one table, so a field's name, version, type and
/// place in [`ALL_FIELDS`] cannot drift apart. A row is
/// `Variant = "name" @ version : Kind`, with `as "athena-type"` after the
/// kind where AWS's Athena DDL types the column otherwise; version 0 marks
/// a flowlog extension.
macro_rules! fields {
    (@athena $kind:ident) => { Kind::$kind.athena() };
    (@athena $kind:ident $athena:literal) => { $athena };
    ($($variant:ident = $name:literal @ $version:literal : $kind:ident $(as $athena:literal)?,)*) => {
        /// A record field, named as in `${field}` format strings.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Field {
            $($variant,)*
        }

        /// Every field, in the order of the AWS field table (versions 2–11),
        /// then flowlog's extensions (version 0).
        pub const ALL_FIELDS: [Field; [$(stringify!($variant),)*].len()] = [$(Field::$variant,)*];

        impl Field {
            pub fn name(self) -> &'static str {
                match self {
                    $(Field::$variant => $name,)*
                }
            }

            /// The flow log version that introduced the field.
            pub fn version(self) -> u8 {
                match self {
                    $(Field::$variant => $version,)*
                }
            }

            /// The type of the field's Parquet column.
            pub fn kind(self) -> Kind {
                match self {
                    $(Field::$variant => Kind::$kind,)*
                }
            }

            /// The type of the field's column in the Athena DDLs.
            pub fn athena(self) -> &'static str {
                match self {
                    $(Field::$variant => fields!(@athena $kind $($athena)?),)*
                }
            }
        }
    };
}

fields! {
    Version = "version" @ 2 : Int32,
    AccountId = "account-id" @ 2 : String,
    InterfaceId = "interface-id" @ 2 : String,
    SrcAddr = "srcaddr" @ 2 : String,
    DstAddr = "dstaddr" @ 2 : String,
    SrcPort = "srcport" @ 2 : Int32,
    DstPort = "dstport" @ 2 : Int32,
    // AWS's DDL has bigint; Athena reads the INT_32 column as that.
    Protocol = "protocol" @ 2 : Int32 as "bigint",
    Packets = "packets" @ 2 : Int64,
    Bytes = "bytes" @ 2 : Int64,
    Start = "start" @ 2 : Int64,
    End = "end" @ 2 : Int64,
    Action = "action" @ 2 : String,
    LogStatus = "log-status" @ 2 : String,
    VpcId = "vpc-id" @ 3 : String,
    SubnetId = "subnet-id" @ 3 : String,
    InstanceId = "instance-id" @ 3 : String,
    TcpFlags = "tcp-flags" @ 3 : Int32,
    Type = "type" @ 3 : String,
    PktSrcAddr = "pkt-srcaddr" @ 3 : String,
    PktDstAddr = "pkt-dstaddr" @ 3 : String,
    Region = "region" @ 4 : String,
    AzId = "az-id" @ 4 : String,
    SublocationType = "sublocation-type" @ 4 : String,
    SublocationId = "sublocation-id" @ 4 : String,
    PktSrcAwsService = "pkt-src-aws-service" @ 5 : String,
    PktDstAwsService = "pkt-dst-aws-service" @ 5 : String,
    FlowDirection = "flow-direction" @ 5 : String,
    TrafficPath = "traffic-path" @ 5 : Int32,
    EcsClusterArn = "ecs-cluster-arn" @ 7 : String,
    EcsClusterName = "ecs-cluster-name" @ 7 : String,
    EcsContainerInstanceArn = "ecs-container-instance-arn" @ 7 : String,
    EcsContainerInstanceId = "ecs-container-instance-id" @ 7 : String,
    EcsContainerId = "ecs-container-id" @ 7 : String,
    EcsSecondContainerId = "ecs-second-container-id" @ 7 : String,
    EcsServiceName = "ecs-service-name" @ 7 : String,
    EcsTaskDefinitionArn = "ecs-task-definition-arn" @ 7 : String,
    EcsTaskArn = "ecs-task-arn" @ 7 : String,
    EcsTaskId = "ecs-task-id" @ 7 : String,
    RejectReason = "reject-reason" @ 8 : String,
    ResourceId = "resource-id" @ 9 : String,
    EncryptionStatus = "encryption-status" @ 10 : Int32,
    InstanceTag = "instance-tag" @ 11 : String,
    InstanceTag2 = "instance-tag-2" @ 11 : String,
    InterfaceTag = "interface-tag" @ 11 : String,
    InterfaceTag2 = "interface-tag-2" @ 11 : String,
    AsgTag = "asg-tag" @ 11 : String,
    AsgTag2 = "asg-tag-2" @ 11 : String,
    InterfaceType = "interface-type" @ 11 : String,
    NextHopInterfaceId = "next-hop-interface-id" @ 11 : String,
    NextHopSubnetId = "next-hop-subnet-id" @ 11 : String,
    NextHopAzId = "next-hop-az-id" @ 11 : String,
    NextHopVpcId = "next-hop-vpc-id" @ 11 : String,
    NextHopInterfaceType = "next-hop-interface-type" @ 11 : String,
    // flowlog extensions (version 0): Kubernetes pod identity from the node's
    // container runtime.
    K8sNamespace = "k8s-namespace" @ 0 : String,
    K8sPodName = "k8s-pod-name" @ 0 : String,
    K8sPodUid = "k8s-pod-uid" @ 0 : String,
    K8sSrcPod = "k8s-src-pod" @ 0 : String,
    K8sDstPod = "k8s-dst-pod" @ 0 : String,
    K8sPodLabel = "k8s-pod-label" @ 0 : String,
}

impl Field {
    pub fn from_name(name: &str) -> Option<Field> {
        ALL_FIELDS.iter().copied().find(|f| f.name() == name)
    }

    /// The field's Parquet and Athena column name (see [`column_name`]).
    pub fn column(self) -> String {
        column_name(self.name())
    }

    /// The field of a Parquet column: AWS's `account_id`, or `account-id`
    /// as earlier versions of the agent wrote it.
    pub fn from_column(column: &str) -> Option<Field> {
        Field::from_name(&column.replace('_', "-"))
    }

    /// A flowlog extension, not an AWS field (version 0 in the table).
    pub fn is_extension(self) -> bool {
        self.version() == 0
    }

    /// Tag values (and the Kubernetes label value, written the same way) are
    /// free text chosen by users, so they are written percent-encoded to keep
    /// one field one token.
    pub fn is_tag(self) -> bool {
        matches!(
            self,
            Field::InstanceTag
                | Field::InstanceTag2
                | Field::InterfaceTag
                | Field::InterfaceTag2
                | Field::AsgTag
                | Field::AsgTag2
                | Field::K8sPodLabel
        )
    }

    /// The text value of a string-valued field (`None` for typed fields:
    /// numbers, addresses, enums).
    pub fn text(self, r: &FlowRecord) -> Option<Option<&str>> {
        let ecs = r.ecs.as_deref();
        let tags = r.tags.as_deref();
        let hop = r.next_hop.as_deref();
        let k8s = r.k8s.as_deref();
        let v = match self {
            Field::AccountId => r.account_id.as_deref(),
            Field::InterfaceId => r.interface_id.as_deref(),
            Field::VpcId => r.vpc_id.as_deref(),
            Field::SubnetId => r.subnet_id.as_deref(),
            Field::InstanceId => r.instance_id.as_deref(),
            Field::Region => r.region.as_deref(),
            Field::AzId => r.az_id.as_deref(),
            Field::SublocationType => r.sublocation_type.as_deref(),
            Field::SublocationId => r.sublocation_id.as_deref(),
            Field::PktSrcAwsService => r.pkt_src_aws_service.as_deref(),
            Field::PktDstAwsService => r.pkt_dst_aws_service.as_deref(),
            Field::EcsClusterArn => ecs.and_then(|e| e.cluster_arn.as_deref()),
            Field::EcsClusterName => ecs.and_then(|e| e.cluster_name.as_deref()),
            Field::EcsContainerInstanceArn => ecs.and_then(|e| e.container_instance_arn.as_deref()),
            Field::EcsContainerInstanceId => ecs.and_then(|e| e.container_instance_id.as_deref()),
            Field::EcsContainerId => ecs.and_then(|e| e.container_id.as_deref()),
            Field::EcsSecondContainerId => ecs.and_then(|e| e.second_container_id.as_deref()),
            Field::EcsServiceName => ecs.and_then(|e| e.service_name.as_deref()),
            Field::EcsTaskDefinitionArn => ecs.and_then(|e| e.task_definition_arn.as_deref()),
            Field::EcsTaskArn => ecs.and_then(|e| e.task_arn.as_deref()),
            Field::EcsTaskId => ecs.and_then(|e| e.task_id.as_deref()),
            Field::RejectReason => r.reject_reason.as_deref(),
            Field::ResourceId => r.resource_id.as_deref(),
            Field::InstanceTag => tags.and_then(|t| t.instance[0].as_deref()),
            Field::InstanceTag2 => tags.and_then(|t| t.instance[1].as_deref()),
            Field::InterfaceTag => tags.and_then(|t| t.interface[0].as_deref()),
            Field::InterfaceTag2 => tags.and_then(|t| t.interface[1].as_deref()),
            Field::AsgTag => tags.and_then(|t| t.asg[0].as_deref()),
            Field::AsgTag2 => tags.and_then(|t| t.asg[1].as_deref()),
            Field::InterfaceType => r.interface_type.as_deref(),
            Field::NextHopInterfaceId => hop.and_then(|h| h.interface_id.as_deref()),
            Field::NextHopSubnetId => hop.and_then(|h| h.subnet_id.as_deref()),
            Field::NextHopAzId => hop.and_then(|h| h.az_id.as_deref()),
            Field::NextHopVpcId => hop.and_then(|h| h.vpc_id.as_deref()),
            Field::NextHopInterfaceType => hop.and_then(|h| h.interface_type.as_deref()),
            Field::K8sNamespace => k8s.and_then(|k| k.namespace.as_deref()),
            Field::K8sPodName => k8s.and_then(|k| k.pod_name.as_deref()),
            Field::K8sPodUid => k8s.and_then(|k| k.pod_uid.as_deref()),
            Field::K8sSrcPod => k8s.and_then(|k| k.src_pod.as_deref()),
            Field::K8sDstPod => k8s.and_then(|k| k.dst_pod.as_deref()),
            Field::K8sPodLabel => k8s.and_then(|k| k.pod_label.as_deref()),
            _ => return None,
        };
        Some(v)
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("empty log format: give at least one field, e.g. \"${{srcaddr}} ${{dstaddr}}\". Valid fields: {valid}")]
    Empty { valid: String },
    #[error("malformed token {token:?} in log format: fields are written as ${{field-name}} and separated by spaces. Valid fields: {valid}")]
    Malformed { token: String, valid: String },
    #[error("unknown field {token:?} in log format. Valid fields: {valid}")]
    Unknown { token: String, valid: String },
}

/// The column name of a field name as AWS spells it in Parquet files and
/// Athena tables: `-` replaced by `_` (`account_id`, `log_status`).
pub fn column_name(field_name: &str) -> String {
    field_name.replace('-', "_")
}

/// The names of all fields, space-separated, for error messages.
pub fn valid_fields() -> String {
    ALL_FIELDS.iter().map(|f| f.name()).collect::<Vec<_>>().join(" ")
}

/// The default format: `${version} ${account-id} ... ${log-status}`.
pub const DEFAULT_FIELDS: [Field; 14] = [
    Field::Version,
    Field::AccountId,
    Field::InterfaceId,
    Field::SrcAddr,
    Field::DstAddr,
    Field::SrcPort,
    Field::DstPort,
    Field::Protocol,
    Field::Packets,
    Field::Bytes,
    Field::Start,
    Field::End,
    Field::Action,
    Field::LogStatus,
];

/// A format: its fields, and the plan of writers compiled from them once
/// (see [`Format::write`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Format {
    fields: Vec<Field>,
    version: u8,
    ops: Vec<Op>,
    /// How many leading ops write values that are the same for every record
    /// of an interface (see [`LineWriter`]).
    prefix_len: usize,
}

impl Default for Format {
    fn default() -> Self {
        Format::from_fields(DEFAULT_FIELDS.to_vec()).expect("the default format has fields")
    }
}

/// The writer of one field, chosen when the format is compiled so that
/// writing a record is one jump per field (no per-field lookups).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Version(u8),
    SrcAddr,
    DstAddr,
    PktSrcAddr,
    PktDstAddr,
    SrcPort,
    DstPort,
    Protocol,
    TcpFlags,
    TrafficPath,
    EncryptionStatus,
    Packets,
    Bytes,
    Start,
    End,
    Action,
    LogStatus,
    Type,
    FlowDirection,
    /// Every string-valued field, through [`Field::text`].
    Text(Field),
    /// Tag fields: [`Field::text`], percent-encoded.
    Tag(Field),
}

impl Op {
    fn of(f: Field, version: u8) -> Op {
        match f {
            Field::Version => Op::Version(version),
            Field::SrcAddr => Op::SrcAddr,
            Field::DstAddr => Op::DstAddr,
            Field::PktSrcAddr => Op::PktSrcAddr,
            Field::PktDstAddr => Op::PktDstAddr,
            Field::SrcPort => Op::SrcPort,
            Field::DstPort => Op::DstPort,
            Field::Protocol => Op::Protocol,
            Field::TcpFlags => Op::TcpFlags,
            Field::TrafficPath => Op::TrafficPath,
            Field::EncryptionStatus => Op::EncryptionStatus,
            Field::Packets => Op::Packets,
            Field::Bytes => Op::Bytes,
            Field::Start => Op::Start,
            Field::End => Op::End,
            Field::Action => Op::Action,
            Field::LogStatus => Op::LogStatus,
            Field::Type => Op::Type,
            Field::FlowDirection => Op::FlowDirection,
            f if f.is_tag() => Op::Tag(f),
            f => Op::Text(f),
        }
    }

    /// Whether the op's value is the same for every record of an interface
    /// (the enrich stage fills these from the interface's metadata; they
    /// are plain `Arc<str>` fields of the record, held by [`LineWriter`]).
    fn per_interface(self) -> bool {
        match self {
            Op::Version(_) => true,
            Op::Text(f) => interface_value(f, &FlowRecord::default()).is_some(),
            _ => false,
        }
    }

    /// Writes the op's value into `l` (which has room for [`MAX_OP`]
    /// bytes); text longer than `l`'s room goes to `out` after `l`.
    #[inline]
    fn put(self, r: &FlowRecord, l: &mut Line, out: &mut Vec<u8>) {
        match self {
            Op::Version(v) => l.u64(v as u64),
            Op::SrcAddr => l.addr(r.srcaddr),
            Op::DstAddr => l.addr(r.dstaddr),
            Op::PktSrcAddr => l.addr(r.pkt_srcaddr),
            Op::PktDstAddr => l.addr(r.pkt_dstaddr),
            Op::SrcPort => l.num(r.srcport.map(u64::from)),
            Op::DstPort => l.num(r.dstport.map(u64::from)),
            Op::Protocol => l.num(r.protocol.map(u64::from)),
            Op::TcpFlags => l.num(r.tcp_flags.map(u64::from)),
            Op::TrafficPath => l.num(r.traffic_path.map(u64::from)),
            Op::EncryptionStatus => l.num(r.encryption_status.map(u64::from)),
            Op::Packets => l.num(r.packets),
            Op::Bytes => l.num(r.bytes),
            Op::Start => l.u64(r.start),
            Op::End => l.u64(r.end),
            Op::Action => l.text(r.action.map(|a| a.as_str()), out),
            Op::LogStatus => l.text(Some(r.log_status.as_str()), out),
            Op::Type => l.text(r.ip_type.map(|t| t.as_str()), out),
            Op::FlowDirection => l.text(r.flow_direction.map(|d| d.as_str()), out),
            // A typed row missing from `Op::of` panics in every test here
            // rather than writing `-`.
            Op::Text(f) => l.text(f.text(r).expect("every other field is text"), out),
            Op::Tag(f) => {
                l.flush(out);
                write_tag(out, f.text(r).expect("tags are text"));
            }
        }
    }
}

/// Bytes of a line gathered on the stack and appended to the output in one
/// copy: a dozen small `extend_from_slice` calls per record (each a length
/// check and a `memcpy` call) cost more than the digits.
const LINE: usize = 256;
/// The most a non-text op writes (an address), plus its separator.
const MAX_OP: usize = MAX_IP + 1;

struct Line {
    buf: [u8; LINE],
    n: usize,
}

impl Line {
    const fn new() -> Line {
        Line { buf: [0; LINE], n: 0 }
    }

    #[inline]
    fn flush(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.buf[..self.n]);
        self.n = 0;
    }

    /// Makes room for one more op and its separator.
    #[inline]
    fn room(&mut self, out: &mut Vec<u8>) {
        if self.n + MAX_OP > LINE {
            self.flush(out);
        }
    }

    #[inline]
    fn byte(&mut self, b: u8) {
        self.buf[self.n] = b;
        self.n += 1;
    }

    #[inline]
    fn u64(&mut self, v: u64) {
        self.n = put_u64(&mut self.buf, self.n, v);
    }

    #[inline]
    fn num(&mut self, v: Option<u64>) {
        match v {
            Some(v) => self.u64(v),
            None => self.byte(b'-'),
        }
    }

    #[inline]
    fn addr(&mut self, a: Option<IpAddr>) {
        match a {
            Some(a) => self.n = put_ip(&mut self.buf, self.n, a),
            None => self.byte(b'-'),
        }
    }

    /// `None` and the empty string are both "no value" (see [`write_text`]).
    #[inline]
    fn text(&mut self, s: Option<&str>, out: &mut Vec<u8>) {
        match s {
            Some(s) if !s.is_empty() => {
                let s = s.as_bytes();
                if self.n + s.len() <= LINE {
                    self.buf[self.n..self.n + s.len()].copy_from_slice(s);
                    self.n += s.len();
                } else {
                    self.flush(out);
                    out.extend_from_slice(s);
                }
            }
            _ => self.byte(b'-'),
        }
    }
}

/// The record's own value of a per-interface text field (`None` for other
/// fields). [`Field::text`] gives the same text; this gives the `Arc`, so a
/// [`LineWriter`] can hold it and compare by pointer.
fn interface_value(f: Field, r: &FlowRecord) -> Option<&Option<Arc<str>>> {
    Some(match f {
        Field::AccountId => &r.account_id,
        Field::InterfaceId => &r.interface_id,
        Field::VpcId => &r.vpc_id,
        Field::SubnetId => &r.subnet_id,
        Field::InstanceId => &r.instance_id,
        Field::Region => &r.region,
        Field::AzId => &r.az_id,
        _ => return None,
    })
}

/// Two decimal digits of 0..100, for [`write_u64`].
const DIGITS2: [u8; 200] = {
    let mut t = [0u8; 200];
    let mut i = 0;
    while i < 100 {
        t[2 * i] = b'0' + (i / 10) as u8;
        t[2 * i + 1] = b'0' + (i % 10) as u8;
        i += 1;
    }
    t
};

/// Appends `n` in decimal, without `core::fmt`.
pub fn write_u64(out: &mut Vec<u8>, n: u64) {
    let mut buf = [0u8; 20];
    let end = put_u64(&mut buf, 0, n);
    out.extend_from_slice(&buf[..end]);
}

/// Writes `v` in decimal at `buf[n..]`, two digits per step from the end;
/// returns the new end.
#[inline(always)]
fn put_u64(buf: &mut [u8], n: usize, mut v: u64) -> usize {
    let end = n + v.checked_ilog10().unwrap_or(0) as usize + 1;
    let mut i = end;
    while v >= 100 {
        let d = (v % 100) as usize * 2;
        v /= 100;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&DIGITS2[d..d + 2]);
    }
    if v >= 10 {
        let d = v as usize * 2;
        buf[i - 2..i].copy_from_slice(&DIGITS2[d..d + 2]);
    } else {
        buf[i - 1] = b'0' + v as u8;
    }
    end
}

/// A [`Format`]'s writer for a stream of records: the leading fields that
/// are the same for every record of an interface (version, account-id,
/// interface-id, ... as far as the format starts with them) are rendered
/// once per interface and copied as one piece. Output is byte-identical to
/// [`Format::write`].
pub struct LineWriter<'f> {
    format: &'f Format,
    prefix: Vec<u8>,
    /// The values `prefix` was rendered from, held so that comparing
    /// pointers cannot mistake a freed and reused string for the same one.
    key: Vec<Option<Arc<str>>>,
    valid: bool,
    /// Reused: not zeroed per record.
    line: Line,
}

impl<'f> LineWriter<'f> {
    pub fn new(format: &'f Format) -> Self {
        LineWriter { format, prefix: Vec::new(), key: Vec::new(), valid: false, line: Line::new() }
    }

    /// Appends the record's line (without terminator) to `out`.
    #[inline]
    pub fn write(&mut self, r: &FlowRecord, out: &mut Vec<u8>) {
        let f = self.format;
        let n = f.prefix_len;
        if n == 0 {
            return f.write(r, out);
        }
        if !self.valid || !self.same_prefix(r) {
            self.render_prefix(r);
        }
        let l = &mut self.line;
        l.n = 0;
        if self.prefix.len() <= LINE - MAX_OP {
            l.buf[..self.prefix.len()].copy_from_slice(&self.prefix);
            l.n = self.prefix.len();
        } else {
            out.extend_from_slice(&self.prefix);
        }
        for op in &f.ops[n..] {
            l.room(out);
            l.byte(b' ');
            op.put(r, l, out);
        }
        l.flush(out);
    }

    #[inline]
    fn same_prefix(&self, r: &FlowRecord) -> bool {
        self.format.ops[..self.format.prefix_len].iter().zip(&self.key).all(|(op, held)| match op {
            Op::Text(f) => match (interface_value(*f, r), held) {
                (Some(Some(a)), Some(b)) => Arc::ptr_eq(a, b),
                (Some(None), None) => true,
                _ => false,
            },
            _ => true,
        })
    }

    #[cold]
    fn render_prefix(&mut self, r: &FlowRecord) {
        let f = self.format;
        let ops = &f.ops[..f.prefix_len];
        self.prefix.clear();
        f.write_ops(ops, r, &mut self.prefix);
        self.key = ops
            .iter()
            .map(|op| match op {
                Op::Text(field) => interface_value(*field, r).and_then(|v| v.clone()),
                _ => None,
            })
            .collect();
        self.valid = true;
    }
}

impl Format {
    /// Parses a format string as `CreateFlowLogs --log-format` takes it:
    /// `${field}` tokens separated by spaces.
    pub fn parse(spec: &str) -> Result<Format, FormatError> {
        let mut fields = Vec::new();
        for token in spec.split_ascii_whitespace() {
            let name = token
                .strip_prefix("${")
                .and_then(|t| t.strip_suffix('}'))
                .filter(|n| !n.is_empty() && !n.contains(['$', '{', '}']))
                .ok_or_else(|| FormatError::Malformed { token: token.to_string(), valid: valid_fields() })?;
            let f = Field::from_name(name).ok_or_else(|| FormatError::Unknown { token: token.to_string(), valid: valid_fields() })?;
            fields.push(f);
        }
        Format::from_fields(fields)
    }

    /// A format of the given fields, in that order (e.g. read from the
    /// header line of an S3 text file).
    pub fn from_fields(fields: Vec<Field>) -> Result<Format, FormatError> {
        if fields.is_empty() {
            return Err(FormatError::Empty { valid: valid_fields() });
        }
        // AWS: the version is that of the newest field chosen (extensions
        // are no AWS version).
        let version = fields.iter().filter(|f| !f.is_extension()).map(|f| f.version()).max().unwrap_or(2);
        let ops: Vec<Op> = fields.iter().map(|f| Op::of(*f, version)).collect();
        let prefix_len = ops.iter().take_while(|op| op.per_interface()).count();
        Ok(Format { fields, version, ops, prefix_len })
    }

    pub fn fields(&self) -> &[Field] {
        &self.fields
    }

    /// The value written in the `version` field.
    pub fn version(&self) -> u8 {
        self.version
    }

    /// The header line of S3 text files: the field names, space-separated.
    pub fn header(&self) -> String {
        self.fields.iter().map(|f| f.name()).collect::<Vec<_>>().join(" ")
    }

    /// The `${a} ${b}` string this format was parsed from (normalised).
    pub fn spec(&self) -> String {
        self.fields.iter().map(|f| format!("${{{}}}", f.name())).collect::<Vec<_>>().join(" ")
    }

    /// Appends the record's line (without terminator) to `out`. For a
    /// stream of records, [`LineWriter`] writes the same bytes faster.
    pub fn write(&self, r: &FlowRecord, out: &mut Vec<u8>) {
        self.write_ops(&self.ops, r, out);
    }

    fn write_ops(&self, ops: &[Op], r: &FlowRecord, out: &mut Vec<u8>) {
        thread_local! {
            // One per thread, so a line costs no zeroing of a fresh buffer.
            static LINE_BUF: std::cell::RefCell<Line> = const { std::cell::RefCell::new(Line::new()) };
        }
        LINE_BUF.with_borrow_mut(|l| {
            l.n = 0;
            for (i, op) in ops.iter().enumerate() {
                l.room(out);
                if i > 0 {
                    l.byte(b' ');
                }
                op.put(r, l, out);
            }
            l.flush(out);
        })
    }

    pub fn line(&self, r: &FlowRecord) -> String {
        let mut v = Vec::with_capacity(128);
        self.write(r, &mut v);
        String::from_utf8(v).expect("records are ASCII")
    }
}

/// Appends `a` exactly as its `Display` does: dotted quad, or RFC 5952 text
/// (lowercase hex, the longest run of two or more zero groups as `::`, the
/// first one on a tie; `::ffff:a.b.c.d` for IPv4-mapped addresses).
pub fn write_ip(out: &mut Vec<u8>, a: IpAddr) {
    let mut buf = [0u8; MAX_IP];
    let n = put_ip(&mut buf, 0, a);
    out.extend_from_slice(&buf[..n]);
}

/// Room an address needs in a buffer (39 bytes of text, and the last
/// octet's fixed-size copy).
const MAX_IP: usize = 48;

#[inline]
fn put_ip(buf: &mut [u8], n: usize, a: IpAddr) -> usize {
    match a {
        IpAddr::V4(a) => put_ipv4(buf, n, a),
        IpAddr::V6(a) => put_ipv6(buf, n, a),
    }
}

/// Each octet's decimal text (up to 3 bytes) and, in the last byte, its length.
const OCTETS: [[u8; 4]; 256] = {
    let mut t = [[0u8; 4]; 256];
    let mut i = 0;
    while i < 256 {
        let o = i as u8;
        t[i] = if o >= 100 {
            [b'0' + o / 100, b'0' + o / 10 % 10, b'0' + o % 10, 3]
        } else if o >= 10 {
            [b'0' + o / 10, b'0' + o % 10, 0, 2]
        } else {
            [b'0' + o, 0, 0, 1]
        };
        i += 1;
    }
    t
};

/// Writes `a` at `buf[n..]` (4 fixed-size copies); returns the new end.
/// Needs 16 bytes of room.
#[inline]
fn put_ipv4(buf: &mut [u8], mut n: usize, a: Ipv4Addr) -> usize {
    for (i, o) in a.octets().into_iter().enumerate() {
        let t = &OCTETS[o as usize];
        buf[n..n + 4].copy_from_slice(t);
        n += t[3] as usize;
        if i < 3 {
            buf[n] = b'.';
            n += 1;
        }
    }
    n
}

/// Writes `a` (RFC 5952) at `buf[n..]`; returns the new end.
fn put_ipv6(buf: &mut [u8], mut n: usize, a: Ipv6Addr) -> usize {
    if let Some(v4) = a.to_ipv4_mapped() {
        buf[n..n + 7].copy_from_slice(b"::ffff:");
        return put_ipv4(buf, n + 7, v4);
    }
    let g = a.segments();
    // Longest run of zero groups (first on a tie); compressed only if ≥ 2.
    let (mut best, mut best_len, mut run, mut run_len) = (0, 0, 0, 0);
    for (i, &x) in g.iter().enumerate() {
        if x == 0 {
            if run_len == 0 {
                run = i;
            }
            run_len += 1;
            if run_len > best_len {
                (best, best_len) = (run, run_len);
            }
        } else {
            run_len = 0;
        }
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut i = 0;
    while i < 8 {
        if best_len >= 2 && i == best {
            buf[n..n + 2].copy_from_slice(b"::");
            n += 2;
            i += best_len;
            continue;
        }
        if i > 0 && !(best_len >= 2 && i == best + best_len) {
            buf[n] = b':';
            n += 1;
        }
        let x = g[i];
        let digits = (4 - x.leading_zeros() as usize / 4).max(1);
        for d in (0..digits).rev() {
            buf[n] = HEX[(x >> (d * 4)) as usize & 15];
            n += 1;
        }
        i += 1;
    }
    n
}

/// `None` and the empty string are both "no value": an empty field would
/// shift every later column.
fn write_text(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) if !s.is_empty() => out.extend_from_slice(s.as_bytes()),
        _ => out.push(b'-'),
    }
}

/// Bytes written as themselves in tag values: letters, digits and the
/// punctuation EC2 allows in tags, except space. Everything else (space,
/// `%`, control and non-ASCII bytes) is `%XX`, so a value stays one token.
fn tag_byte_is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/' | b'=' | b'+' | b'@')
}

fn write_tag(out: &mut Vec<u8>, s: Option<&str>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    match s {
        None | Some("") => out.push(b'-'),
        // A lone hyphen would read back as "no value".
        Some("-") => out.extend_from_slice(b"%2D"),
        Some(s) => {
            for &b in s.as_bytes() {
                if tag_byte_is_plain(b) {
                    out.push(b);
                } else {
                    out.extend_from_slice(&[b'%', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
                }
            }
        }
    }
}

/// The field-by-field writer the agent used before formats were compiled
/// into a plan (commit 3c34e0b): what the tests compare [`Format::write`]
/// and [`LineWriter`] against, byte for byte, and what `cargo xtask bench`
/// measures them against.
#[doc(hidden)]
pub mod reference {
    use super::*;

    /// Appends the record's line (without terminator) to `out`.
    pub fn write(format: &Format, r: &FlowRecord, out: &mut Vec<u8>) {
        for (i, f) in format.fields().iter().enumerate() {
            if i > 0 {
                out.push(b' ');
            }
            write_field(format.version(), *f, r, out);
        }
    }

    fn write_field(version: u8, f: Field, r: &FlowRecord, out: &mut Vec<u8>) {
        fn num<N: itoa::Integer>(out: &mut Vec<u8>, v: Option<N>) {
            match v {
                Some(n) => out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes()),
                None => out.push(b'-'),
            }
        }
        fn addr(out: &mut Vec<u8>, a: Option<IpAddr>) {
            match a {
                Some(IpAddr::V4(a)) => write_ipv4(out, a),
                Some(IpAddr::V6(a)) => write_ipv6(out, a),
                None => out.push(b'-'),
            }
        }
        match f {
            Field::Version => num(out, Some(version)),
            Field::SrcAddr => addr(out, r.srcaddr),
            Field::DstAddr => addr(out, r.dstaddr),
            Field::SrcPort => num(out, r.srcport),
            Field::DstPort => num(out, r.dstport),
            Field::Protocol => num(out, r.protocol),
            Field::Packets => num(out, r.packets),
            Field::Bytes => num(out, r.bytes),
            Field::Start => num(out, Some(r.start)),
            Field::End => num(out, Some(r.end)),
            Field::Action => write_text(out, r.action.map(|a| a.as_str())),
            Field::LogStatus => write_text(out, Some(r.log_status.as_str())),
            Field::TcpFlags => num(out, r.tcp_flags),
            Field::Type => write_text(out, r.ip_type.map(|t| t.as_str())),
            Field::PktSrcAddr => addr(out, r.pkt_srcaddr),
            Field::PktDstAddr => addr(out, r.pkt_dstaddr),
            Field::FlowDirection => write_text(out, r.flow_direction.map(|d| d.as_str())),
            Field::TrafficPath => num(out, r.traffic_path),
            Field::EncryptionStatus => num(out, r.encryption_status),
            _ => {
                let v = f.text(r).expect("every other field is text");
                if f.is_tag() {
                    write_tag(out, v)
                } else {
                    write_text(out, v)
                }
            }
        }
    }

    /// The production writer's: the IPv6 algorithm was the same before the
    /// compiled formats (only IPv4 and integers changed), and it is checked
    /// against `Display` on its own.
    fn write_ipv6(out: &mut Vec<u8>, a: Ipv6Addr) {
        write_ip(out, IpAddr::V6(a));
    }
    /// The dotted quad, a digit at a time.
    fn write_ipv4(out: &mut Vec<u8>, a: Ipv4Addr) {
        let mut buf = [0u8; 15];
        let mut n = 0;
        for (i, o) in a.octets().into_iter().enumerate() {
            if i > 0 {
                buf[n] = b'.';
                n += 1;
            }
            if o >= 100 {
                buf[n] = b'0' + o / 100;
                n += 1;
            }
            if o >= 10 {
                buf[n] = b'0' + o / 10 % 10;
                n += 1;
            }
            buf[n] = b'0' + o % 10;
            n += 1;
        }
        out.extend_from_slice(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Action, EcsMeta, LogStatus, NextHop, TagValues};
    use std::sync::Arc;

    #[allow(clippy::too_many_arguments)]
    fn ok(
        iface: &str,
        src: &str,
        dst: &str,
        ports: (u16, u16),
        proto: u8,
        packets: u64,
        bytes: u64,
        window: (u64, u64),
        action: Action,
    ) -> FlowRecord {
        FlowRecord {
            srcaddr: Some(src.parse().unwrap()),
            dstaddr: Some(dst.parse().unwrap()),
            srcport: Some(ports.0),
            dstport: Some(ports.1),
            protocol: Some(proto),
            packets: Some(packets),
            bytes: Some(bytes),
            action: Some(action),
            ..FlowRecord::status_only("123456789010".into(), iface.into(), window.0, window.1, LogStatus::Ok)
        }
    }

    /// All 54 names in AWS table order, then the 6 extensions, written out by
    /// hand so that a change to the field table shows up here.
    const VALID: &str = "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status \
vpc-id subnet-id instance-id tcp-flags type pkt-srcaddr pkt-dstaddr \
region az-id sublocation-type sublocation-id \
pkt-src-aws-service pkt-dst-aws-service flow-direction traffic-path \
ecs-cluster-arn ecs-cluster-name ecs-container-instance-arn ecs-container-instance-id ecs-container-id ecs-second-container-id ecs-service-name ecs-task-definition-arn ecs-task-arn ecs-task-id \
reject-reason resource-id encryption-status \
instance-tag instance-tag-2 interface-tag interface-tag-2 asg-tag asg-tag-2 interface-type next-hop-interface-id next-hop-subnet-id next-hop-az-id next-hop-vpc-id next-hop-interface-type \
k8s-namespace k8s-pod-name k8s-pod-uid k8s-src-pod k8s-dst-pod k8s-pod-label";

    #[test]
    fn field_table_matches_aws() {
        assert_eq!(valid_fields(), VALID);
        let count = |v: u8| ALL_FIELDS.iter().filter(|f| !f.is_extension() && f.version() <= v).count();
        // Cumulative field counts per version, as in the AWS table.
        assert_eq!([2, 3, 4, 5, 7, 8, 9, 10, 11].map(count), [14, 21, 25, 29, 39, 40, 41, 42, 54]);
        // The extensions come after every AWS field and none is in the default format.
        let ext: Vec<&str> = ALL_FIELDS.iter().filter(|f| f.is_extension()).map(|f| f.name()).collect();
        assert_eq!(ext.join(" "), "k8s-namespace k8s-pod-name k8s-pod-uid k8s-src-pod k8s-dst-pod k8s-pod-label");
        assert!(ALL_FIELDS[..54].iter().all(|f| !f.is_extension()));
        assert!(DEFAULT_FIELDS.iter().all(|f| !f.is_extension()));
        for f in ALL_FIELDS {
            assert_eq!(Field::from_name(f.name()), Some(f));
        }
        assert_eq!(ALL_FIELDS.iter().filter(|f| f.is_tag()).count(), 7);
    }

    /// Parquet types as in AWS's field table, Athena types as in AWS's DDL
    /// (protocol bigint), column names with `_`, written out by hand.
    #[test]
    fn field_types_and_columns_match_aws() {
        let of = |k: Kind| ALL_FIELDS.iter().filter(|f| f.kind() == k).map(|f| f.name()).collect::<Vec<_>>().join(" ");
        assert_eq!(of(Kind::Int32), "version srcport dstport protocol tcp-flags traffic-path encryption-status");
        assert_eq!(of(Kind::Int64), "packets bytes start end");
        assert_eq!(of(Kind::String).split(' ').count(), 49);
        let athena: Vec<String> = ALL_FIELDS
            .iter()
            .filter(|f| !f.is_extension() && f.version() <= 5)
            .map(|f| format!("{} {}", f.column(), f.athena()))
            .collect();
        assert_eq!(
            athena.join(", "),
            "version int, account_id string, interface_id string, srcaddr string, dstaddr string, srcport int, dstport int, \
protocol bigint, packets bigint, bytes bigint, start bigint, end bigint, action string, log_status string, vpc_id string, \
subnet_id string, instance_id string, tcp_flags int, type string, pkt_srcaddr string, pkt_dstaddr string, region string, \
az_id string, sublocation_type string, sublocation_id string, pkt_src_aws_service string, pkt_dst_aws_service string, \
flow_direction string, traffic_path int"
        );
        assert_eq!((Field::EncryptionStatus.athena(), Field::NextHopAzId.athena()), ("int", "string"));
        for f in ALL_FIELDS {
            assert_eq!((Field::from_column(&f.column()), Field::from_column(f.name())), (Some(f), Some(f)));
        }
        assert_eq!((Field::from_column("account_id"), Field::from_column("accountid")), (Some(Field::AccountId), None));
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        let mut cases: Vec<IpAddr> = [
            "0.0.0.0", "255.255.255.255", "10.0.0.1", "100.64.9.99", "::", "::1", "1::", "::ffff:10.1.2.3",
            "::ffff:0:0", "::fffe:a01:203", "::10.1.2.3", "1:0:0:2::3", "1::2:0:0:3", "1:0:1:0:1:0:1:0", "0:1::",
            "fe80::1:0:0:0:1", "2001:db8:0:0:1:0:0:1", "abcd:ef01:2345:6789:abcd:ef01:2345:6789", "64:ff9b::a00:1",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        // Random addresses with many zero groups, so every run layout occurs.
        let mut rng = fastrand::Rng::with_seed(5952);
        for _ in 0..200_000 {
            let g: [u16; 8] = std::array::from_fn(|_| match rng.u8(0..4) {
                0 | 1 => 0,
                2 => rng.u16(0..16),
                _ => rng.u16(..),
            });
            cases.push(IpAddr::V6(g.into()));
            cases.push(IpAddr::V4(rng.u32(..).into()));
        }
        let mut out = Vec::new();
        for a in cases {
            out.clear();
            write_ip(&mut out, a);
            assert_eq!(std::str::from_utf8(&out).unwrap(), a.to_string(), "{a:?}");
        }
    }

    #[test]
    fn ipv6_is_written_compressed_lowercase() {
        let mut r = ok("eni-1", "::1", "fe80::1", (1, 2), 17, 1, 48, (5, 6), Action::Accept);
        r.srcaddr = Some("2001:DB8:0:0:0:0:0:1".parse().unwrap());
        assert_eq!(Format::default().line(&r), "2 123456789010 eni-1 2001:db8::1 fe80::1 1 2 17 1 48 5 6 ACCEPT OK");
    }

    #[test]
    fn custom_formats_take_the_highest_version() {
        let f = Format::parse("${srcaddr}  ${dstaddr}").unwrap();
        assert_eq!((f.fields(), f.version()), (&[Field::SrcAddr, Field::DstAddr][..], 2));
        let cases = [
            ("${version} ${tcp-flags}", 3),
            ("${region} ${version}", 4),
            ("${flow-direction} ${version}", 5),
            ("${version} ${traffic-path} ${pkt-srcaddr}", 5),
            ("${ecs-task-id}", 7),
            ("${reject-reason} ${srcaddr}", 8),
            ("${resource-id}", 9),
            ("${encryption-status} ${flow-direction}", 10),
            ("${next-hop-interface-type} ${encryption-status}", 11),
            ("${asg-tag-2}", 11),
            // Extensions are no AWS version.
            ("${k8s-namespace} ${k8s-pod-label}", 2),
            ("${k8s-src-pod} ${tcp-flags}", 3),
        ];
        for (spec, v) in cases {
            assert_eq!(Format::parse(spec).unwrap().version(), v, "{spec}");
        }
        let all = ALL_FIELDS.iter().map(|f| format!("${{{}}}", f.name())).collect::<Vec<_>>().join(" ");
        let f = Format::parse(&all).unwrap();
        assert_eq!((f.header(), f.version(), f.spec()), (VALID.to_string(), 11, all));
    }

    /// Bad format strings → the exact message a user sees.
    #[test]
    fn bad_formats_give_exact_messages() {
        let malformed = |t: &str| {
            format!("malformed token {t:?} in log format: fields are written as ${{field-name}} and separated by spaces. Valid fields: {VALID}")
        };
        let unknown = |t: &str| format!("unknown field {t:?} in log format. Valid fields: {VALID}");
        let empty = format!("empty log format: give at least one field, e.g. \"${{srcaddr}} ${{dstaddr}}\". Valid fields: {VALID}");
        let table: Vec<(&str, String)> = vec![
            ("", empty.clone()),
            ("  \t ", empty.clone()),
            ("${srcaddr} dstaddr", malformed("dstaddr")),
            ("srcaddr", malformed("srcaddr")),
            ("${srcaddr", malformed("${srcaddr")),
            ("$srcaddr", malformed("$srcaddr")),
            ("{srcaddr}", malformed("{srcaddr}")),
            ("$(srcaddr)", malformed("$(srcaddr)")),
            ("${}", malformed("${}")),
            ("${srcaddr}${dstaddr}", malformed("${srcaddr}${dstaddr}")),
            ("${srcaddr},${dstaddr}", malformed("${srcaddr},${dstaddr}")),
            ("${${srcaddr}}", malformed("${${srcaddr}}")),
            ("${version} ${srcaddr}}", malformed("${srcaddr}}")),
            ("${src-addr}", unknown("${src-addr}")),
            ("${SRCADDR}", unknown("${SRCADDR}")),
            ("${ srcaddr}", malformed("${")),
            ("${bogus}", unknown("${bogus}")),
            ("${version} ${instance-tag-3}", unknown("${instance-tag-3}")),
            ("${tcp_flags}", unknown("${tcp_flags}")),
            ("${srcaddr} ${nope}", unknown("${nope}")),
        ];
        for (spec, want) in table {
            assert_eq!(Format::parse(spec).unwrap_err().to_string(), want, "format {spec:?}");
        }
        // The structured error keeps the token for callers that want it.
        assert_eq!(
            Format::parse("${x}"),
            Err(FormatError::Unknown { token: "${x}".into(), valid: VALID.into() })
        );
        assert_eq!(Format::from_fields(vec![]), Err(FormatError::Empty { valid: VALID.into() }));
    }

    #[test]
    fn header_line_lists_field_names() {
        assert_eq!(
            Format::default().header(),
            "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status"
        );
    }

    /// Every field of a format with all 54 is `-` on an empty record, except
    /// the ones AWS always fills (version, times, log-status).
    #[test]
    fn unknown_values_are_hyphens() {
        let all = Format::from_fields(ALL_FIELDS.to_vec()).unwrap();
        let r = FlowRecord::status_only("1".into(), "eni-1".into(), 10, 20, LogStatus::NoData);
        let line = all.line(&r);
        let want = ALL_FIELDS
            .iter()
            .map(|f| match f {
                Field::Version => "11",
                Field::AccountId => "1",
                Field::InterfaceId => "eni-1",
                Field::Start => "10",
                Field::End => "20",
                Field::LogStatus => "NODATA",
                _ => "-",
            })
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(line, want);
        // Empty strings must not produce an empty column.
        let r = FlowRecord { account_id: Some("".into()), vpc_id: Some("".into()), ..FlowRecord::default() };
        assert_eq!(Format::parse("${account-id} ${vpc-id} ${start}").unwrap().line(&r), "- - 0");
    }

    #[test]
    fn grouped_fields_are_written() {
        let s = |v: &str| Some(Arc::<str>::from(v));
        let r = FlowRecord {
            ecs: Some(Arc::new(EcsMeta {
                cluster_name: s("prod"),
                task_id: s("abc123"),
                ..EcsMeta::default()
            })),
            tags: Some(Arc::new(TagValues {
                instance: [s("web server"), None],
                interface: [s("-"), s("ü%")],
                asg: [s("a:b/c=d+e@f_g.h-i"), s("")],
            })),
            next_hop: Some(Arc::new(NextHop { interface_type: s("transit_gateway"), ..NextHop::default() })),
            interface_type: s("nat_gateway"),
            reject_reason: s("BPA"),
            resource_id: s("nat-0123"),
            encryption_status: Some(1),
            traffic_path: Some(8),
            ..FlowRecord::default()
        };
        let f = Format::parse(
            "${ecs-cluster-name} ${ecs-cluster-arn} ${ecs-task-id} ${instance-tag} ${instance-tag-2} ${interface-tag} ${interface-tag-2} \
             ${asg-tag} ${asg-tag-2} ${next-hop-interface-type} ${next-hop-vpc-id} ${interface-type} ${reject-reason} ${resource-id} \
             ${encryption-status} ${traffic-path}",
        )
        .unwrap();
        assert_eq!(
            f.line(&r),
            "prod - abc123 web%20server - %2D %C3%BC%25 a:b/c=d+e@f_g.h-i - transit_gateway - nat_gateway BPA nat-0123 1 8"
        );
    }

    /// The Kubernetes extension fields: `-` without identity, the label
    /// percent-encoded like a tag, the AWS fields of the line unchanged.
    #[test]
    fn k8s_extension_fields_are_written() {
        use crate::record::K8sMeta;
        let s = |v: &str| Some(Arc::<str>::from(v));
        let spec = "${srcaddr} ${k8s-namespace} ${k8s-pod-name} ${k8s-pod-uid} ${k8s-src-pod} ${k8s-dst-pod} \
                    ${k8s-pod-label} ${version}";
        let f = Format::parse(spec).unwrap();
        let mut r = ok("eni-1", "10.88.0.2", "10.88.0.3", (1, 2), 6, 1, 40, (1, 1), Action::Accept);
        assert_eq!(f.line(&r), "10.88.0.2 - - - - - - 2");
        r.k8s = Some(Arc::new(K8sMeta {
            namespace: s("shop"),
            pod_name: s("web-7d9f"),
            pod_uid: s("0b5c6f1e-8a3d-4c1e-9f00-1234567890ab"),
            pod_label: s("my app"),
            src_pod: s("shop/web-7d9f"),
            dst_pod: None,
        }));
        let want = "10.88.0.2 shop web-7d9f 0b5c6f1e-8a3d-4c1e-9f00-1234567890ab shop/web-7d9f - my%20app 2";
        assert_eq!(f.line(&r), want);
        assert_eq!(Format::default().line(&r), "2 123456789010 eni-1 10.88.0.2 10.88.0.3 1 2 6 1 40 1 1 ACCEPT OK");
    }

    /// A random address: IPv4, IPv4-mapped, or IPv6 with runs of zeros.
    fn random_ip(rng: &mut fastrand::Rng) -> IpAddr {
        match rng.u8(0..4) {
            0 | 1 => IpAddr::V4(match rng.u8(0..3) {
                0 => [rng.u8(0..10), rng.u8(..), rng.u8(0..100), rng.u8(..)].into(),
                _ => rng.u32(..).into(),
            }),
            2 => IpAddr::V6(Ipv4Addr::from(rng.u32(..)).to_ipv6_mapped()),
            _ => IpAddr::V6(std::array::from_fn::<u16, 8, _>(|_| if rng.bool() { 0 } else { rng.u16(..) }).into()),
        }
    }

    /// A random value of a text field: often one of a few shared strings
    /// (as interface metadata is), sometimes empty, `-`, or bytes a tag must
    /// escape.
    fn random_text(rng: &mut fastrand::Rng, shared: &[Arc<str>]) -> Option<Arc<str>> {
        const ODD: [&str; 6] = ["", "-", "a b", "100%", "ü\t\u{1}x", "eni-0123456789abcdef0"];
        match rng.u8(0..6) {
            0 => None,
            1 => Some(ODD[rng.usize(..ODD.len())].into()),
            2 => Some((0..rng.usize(1..40)).map(|_| rng.alphanumeric()).collect::<String>().into()),
            _ => Some(shared[rng.usize(..shared.len())].clone()),
        }
    }

    /// A record with every field random (each one also unset at times).
    fn random_record(rng: &mut fastrand::Rng, shared: &[Arc<str>]) -> FlowRecord {
        use crate::record::{Direction, IpType};
        let mut t = || random_text(rng, shared);
        let ecs = EcsMeta {
            cluster_arn: t(),
            cluster_name: t(),
            container_instance_arn: t(),
            container_instance_id: t(),
            container_id: t(),
            second_container_id: t(),
            service_name: t(),
            task_definition_arn: t(),
            task_arn: t(),
            task_id: t(),
        };
        let tags = TagValues { instance: [t(), t()], interface: [t(), t()], asg: [t(), t()] };
        let hop = NextHop { interface_id: t(), subnet_id: t(), az_id: t(), vpc_id: t(), interface_type: t() };
        let k8s = crate::record::K8sMeta { namespace: t(), pod_name: t(), pod_uid: t(), pod_label: t(), src_pod: t(), dst_pod: t() };
        let texts: [Option<Arc<str>>; 14] = std::array::from_fn(|_| t());
        let [account_id, interface_id, vpc_id, subnet_id, instance_id, region, az_id, sublocation_type, sublocation_id, pkt_src_aws_service, pkt_dst_aws_service, reject_reason, resource_id, interface_type] =
            texts;
        let some = |rng: &mut fastrand::Rng| rng.u8(0..8) != 0;
        let big = |rng: &mut fastrand::Rng| match rng.u8(0..4) {
            0 => rng.u64(0..10),
            1 => rng.u64(..),
            _ => {
                let bits = rng.u32(1..40);
                rng.u64(0..1 << bits)
            }
        };
        FlowRecord {
            account_id,
            interface_id,
            srcaddr: some(rng).then(|| random_ip(rng)),
            dstaddr: some(rng).then(|| random_ip(rng)),
            srcport: some(rng).then(|| rng.u16(..)),
            dstport: some(rng).then(|| rng.u16(..)),
            protocol: some(rng).then(|| rng.u8(..)),
            packets: some(rng).then(|| big(rng)),
            bytes: some(rng).then(|| big(rng)),
            start: big(rng),
            end: big(rng),
            action: some(rng).then(|| if rng.bool() { Action::Accept } else { Action::Reject }),
            log_status: [LogStatus::Ok, LogStatus::NoData, LogStatus::SkipData][rng.usize(..3)],
            vpc_id,
            subnet_id,
            instance_id,
            tcp_flags: some(rng).then(|| rng.u8(..)),
            ip_type: some(rng).then(|| [IpType::V4, IpType::V6, IpType::Efa][rng.usize(..3)]),
            pkt_srcaddr: some(rng).then(|| random_ip(rng)),
            pkt_dstaddr: some(rng).then(|| random_ip(rng)),
            region,
            az_id,
            sublocation_type,
            sublocation_id,
            pkt_src_aws_service,
            pkt_dst_aws_service,
            flow_direction: some(rng).then(|| if rng.bool() { Direction::Ingress } else { Direction::Egress }),
            traffic_path: some(rng).then(|| rng.u8(..)),
            ecs: some(rng).then(|| Arc::new(ecs)),
            reject_reason,
            resource_id,
            encryption_status: some(rng).then(|| rng.u8(..)),
            tags: some(rng).then(|| Arc::new(tags)),
            interface_type,
            next_hop: some(rng).then(|| Arc::new(hop)),
            k8s: some(rng).then(|| Arc::new(k8s)),
        }
    }

    /// The formats the writers are checked with: the default, each
    /// version's full format, and random ones (fields repeated, in any
    /// order, many starting with per-interface fields).
    fn test_formats(rng: &mut fastrand::Rng) -> Vec<Format> {
        let mut formats = vec![Format::default()];
        for v in [2, 3, 4, 5, 7, 8, 9, 10, 11] {
            formats.push(Format::from_fields(ALL_FIELDS.iter().copied().filter(|f| f.version() <= v).collect()).unwrap());
        }
        let leading = [Field::Version, Field::AccountId, Field::InterfaceId, Field::VpcId, Field::SubnetId, Field::InstanceId, Field::Region, Field::AzId];
        for _ in 0..200 {
            let mut fields: Vec<Field> = (0..rng.usize(0..5)).map(|_| leading[rng.usize(..leading.len())]).collect();
            fields.extend((0..rng.usize(1..30)).map(|_| ALL_FIELDS[rng.usize(..ALL_FIELDS.len())]));
            formats.push(Format::from_fields(fields).unwrap());
        }
        formats
    }

    /// `Format::write` and `LineWriter` write exactly what the reference
    /// writer writes, for random records covering every field and value
    /// kind, in every format; the line writer over streams where records of
    /// one "interface" share their metadata strings and where they change.
    #[test]
    fn writers_match_the_reference_byte_for_byte() {
        let mut rng = fastrand::Rng::with_seed(22);
        let shared: Vec<Arc<str>> = ["123456789012", "eni-1", "vpc-0a", "", "-", "x y"].iter().map(|s| Arc::from(*s)).collect();
        let formats = test_formats(&mut rng);
        let (mut want, mut got, mut streamed) = (Vec::new(), Vec::new(), Vec::new());
        for (i, format) in formats.iter().enumerate() {
            let mut lines = LineWriter::new(format);
            want.clear();
            got.clear();
            streamed.clear();
            let mut r = random_record(&mut rng, &shared);
            for _ in 0..400 {
                // Mostly the next flow of the same interface: only the
                // flow's fields change, the metadata Arcs are shared.
                let next = random_record(&mut rng, &shared);
                r = if rng.u8(0..8) == 0 {
                    next
                } else {
                    FlowRecord { account_id: r.account_id.clone(), interface_id: r.interface_id.clone(), vpc_id: r.vpc_id.clone(), ..next }
                };
                reference::write(format, &r, &mut want);
                want.push(b'\n');
                format.write(&r, &mut got);
                got.push(b'\n');
                lines.write(&r, &mut streamed);
                streamed.push(b'\n');
            }
            let spec = format.spec();
            assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(&want), "format {i}: {spec}");
            assert_eq!(String::from_utf8_lossy(&streamed), String::from_utf8_lossy(&want), "line writer, format {i}: {spec}");
        }
    }

    /// The per-interface prefix: only leading per-interface fields, and a
    /// record whose metadata string has the same text in a new `Arc` (or a
    /// freed one's address) is written from its own value.
    #[test]
    fn line_writer_prefix_follows_the_record() {
        let f = Format::default();
        assert_eq!(f.prefix_len, 3);
        assert_eq!(Format::parse("${srcaddr} ${version}").unwrap().prefix_len, 0);
        assert_eq!(Format::parse("${account-id} ${vpc-id} ${az-id} ${instance-tag} ${region}").unwrap().prefix_len, 3);
        let mut w = LineWriter::new(&f);
        let mut out = Vec::new();
        for id in ["eni-a", "eni-b", "eni-b", "eni-a"] {
            let r = ok(id, "10.0.0.1", "10.0.0.2", (1, 2), 6, 1, 40, (5, 6), Action::Accept);
            w.write(&r, &mut out);
            out.push(b'\n');
        }
        let mut r = ok("eni-c", "10.0.0.1", "10.0.0.2", (1, 2), 6, 1, 40, (5, 6), Action::Accept);
        w.write(&r, &mut out);
        r.account_id = None;
        w.write(&r, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2 123456789010 eni-a 10.0.0.1 10.0.0.2 1 2 6 1 40 5 6 ACCEPT OK\n\
2 123456789010 eni-b 10.0.0.1 10.0.0.2 1 2 6 1 40 5 6 ACCEPT OK\n\
2 123456789010 eni-b 10.0.0.1 10.0.0.2 1 2 6 1 40 5 6 ACCEPT OK\n\
2 123456789010 eni-a 10.0.0.1 10.0.0.2 1 2 6 1 40 5 6 ACCEPT OK\n\
2 123456789010 eni-c 10.0.0.1 10.0.0.2 1 2 6 1 40 5 6 ACCEPT OK\
2 - eni-c 10.0.0.1 10.0.0.2 1 2 6 1 40 5 6 ACCEPT OK"
        );
    }

    #[test]
    fn integers_are_written_as_display_writes_them() {
        let mut rng = fastrand::Rng::with_seed(10);
        let mut cases: Vec<u64> = (0..=19).flat_map(|p| [10u64.pow(p) - 1, 10u64.pow(p), 10u64.pow(p) + 1]).collect();
        cases.extend([u64::MAX, u64::MAX - 1, u32::MAX as u64, u16::MAX as u64]);
        cases.extend((0..100_000).map(|_| rng.u64(..) >> rng.u32(0..64)));
        let mut out = Vec::new();
        for n in cases {
            out.clear();
            write_u64(&mut out, n);
            assert_eq!(std::str::from_utf8(&out).unwrap(), n.to_string());
        }
    }

    #[test]
    fn type_comes_from_the_record_not_the_address() {
        use crate::record::IpType;
        let f = Format::parse("${type} ${srcaddr}").unwrap();
        let mut r = ok("eni-1", "10.0.0.1", "10.0.0.2", (1, 2), 6, 1, 40, (1, 1), Action::Accept);
        assert_eq!(f.line(&r), "- 10.0.0.1");
        r.ip_type = Some(IpType::V4);
        assert_eq!(f.line(&r), "IPv4 10.0.0.1");
        r.ip_type = Some(IpType::Efa);
        assert_eq!(f.line(&r), "EFA 10.0.0.1");
    }
}
