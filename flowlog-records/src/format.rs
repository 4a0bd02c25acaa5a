//! Record → text line, byte-exact with AWS VPC Flow Logs.
//!
//! Fields are joined by one space, `-` stands for a missing value, numbers
//! are plain decimal, IPv6 addresses are in RFC 5952 form (what `Ipv6Addr`'s
//! `Display` writes). No trailing space, no newline: the caller decides the
//! line terminator (S3/files use `\n`, CloudWatch events have none).
//!
//! Writing appends to a caller-owned buffer and never allocates per field:
//! numbers go through `itoa`, addresses through [`write_ip`], which writes
//! what `Display` writes without `core::fmt`'s per-piece dispatch (formatting
//! is most of the agent's per-record CPU time).
//!
//! The field table (`fields!`) also gives each field's column type
//! ([`Kind`], its Athena type): the agent's Parquet writer, `compare`'s
//! test files and the Athena DDLs of deploy/athena/ (`cargo xtask athena`)
//! are made from it, so a new field is one row plus its meaning.
//!
//! Rows of version 0 are flowlog's own extension fields (Kubernetes pod
//! identity), not AWS fields: they never count towards a format's version,
//! are in no AWS field set, the default format or the Athena DDLs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Format {
    fields: Vec<Field>,
    version: u8,
}

impl Default for Format {
    fn default() -> Self {
        Format { fields: DEFAULT_FIELDS.to_vec(), version: 2 }
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
        Ok(Format { fields, version })
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

    /// Appends the record's line (without terminator) to `out`.
    pub fn write(&self, r: &FlowRecord, out: &mut Vec<u8>) {
        for (i, f) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(b' ');
            }
            self.write_field(*f, r, out);
        }
    }

    pub fn line(&self, r: &FlowRecord) -> String {
        let mut v = Vec::with_capacity(128);
        self.write(r, &mut v);
        String::from_utf8(v).expect("records are ASCII")
    }

    fn write_field(&self, f: Field, r: &FlowRecord, out: &mut Vec<u8>) {
        fn num<N: itoa::Integer>(out: &mut Vec<u8>, v: Option<N>) {
            match v {
                Some(n) => out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes()),
                None => out.push(b'-'),
            }
        }
        fn addr(out: &mut Vec<u8>, a: Option<IpAddr>) {
            match a {
                Some(a) => write_ip(out, a),
                None => out.push(b'-'),
            }
        }
        match f {
            Field::Version => num(out, Some(self.version)),
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
}

/// Appends `a` exactly as its `Display` does: dotted quad, or RFC 5952 text
/// (lowercase hex, the longest run of two or more zero groups as `::`, the
/// first one on a tie; `::ffff:a.b.c.d` for IPv4-mapped addresses).
pub fn write_ip(out: &mut Vec<u8>, a: IpAddr) {
    match a {
        IpAddr::V4(a) => write_ipv4(out, a),
        IpAddr::V6(a) => write_ipv6(out, a),
    }
}

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

fn write_ipv6(out: &mut Vec<u8>, a: Ipv6Addr) {
    if let Some(v4) = a.to_ipv4_mapped() {
        out.extend_from_slice(b"::ffff:");
        return write_ipv4(out, v4);
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
    let mut buf = [0u8; 39];
    let mut n = 0;
    fn group(buf: &mut [u8; 39], n: &mut usize, x: u16) {
        let digits = (4 - x.leading_zeros() as usize / 4).max(1);
        for d in (0..digits).rev() {
            buf[*n] = HEX[(x >> (d * 4)) as usize & 15];
            *n += 1;
        }
    }
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
        group(&mut buf, &mut n, g[i]);
        i += 1;
    }
    out.extend_from_slice(&buf[..n]);
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
        let athena: Vec<String> = ALL_FIELDS.iter().filter(|f| !f.is_extension() && f.version() <= 5).map(|f| format!("{} {}", f.column(), f.athena())).collect();
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
        let f = Format::parse("${srcaddr} ${k8s-namespace} ${k8s-pod-name} ${k8s-pod-uid} ${k8s-src-pod} ${k8s-dst-pod} ${k8s-pod-label} ${version}").unwrap();
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
        assert_eq!(f.line(&r), "10.88.0.2 shop web-7d9f 0b5c6f1e-8a3d-4c1e-9f00-1234567890ab shop/web-7d9f - my%20app 2");
        assert_eq!(Format::default().line(&r), "2 123456789010 eni-1 10.88.0.2 10.88.0.3 1 2 6 1 40 1 1 ACCEPT OK");
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
