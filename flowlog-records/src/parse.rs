//! Text line → record: the reverse of [`crate::format`], for reading AWS's
//! (or our own) flow logs back, e.g. to compare them.
//!
//! Tolerant where real files vary: any run of spaces (or tabs) separates
//! fields — an AWS documentation example has a double space —, a trailing
//! `\r` is ignored, `-` is "no value" in every field that can be missing, and
//! text fields are taken as they are (`unknown` account ids included). Strict
//! where a silent mistake would corrupt a comparison: the field count must
//! match the format, numbers must fit their field, and enum fields must hold
//! one of AWS's values. Errors name the field, its column and the value;
//! [`RecordParser`] adds the line number.

use std::{collections::HashSet, net::IpAddr, sync::Arc};

use crate::{
    format::{valid_fields, Field, Format, FormatError},
    record::{Action, Direction, EcsMeta, FlowRecord, IpType, K8sMeta, LogStatus, NextHop, TagValues},
};

/// One parsed line: the record and the `version` it states (if the format
/// has that field; the writer derives it from the format instead).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedRecord {
    pub version: Option<u8>,
    pub record: FlowRecord,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("expected {expected} fields ({header}), found {found}")]
    FieldCount { expected: usize, found: usize, header: String },
    #[error("field {field} (column {column}): {value:?} is not {expected}")]
    BadValue { field: &'static str, column: usize, value: String, expected: &'static str },
}

/// A record error with the line it happened on (1-based, header included).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {error}")]
pub struct LineError {
    pub line: usize,
    pub error: RecordError,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("empty header line: expected field names such as \"version account-id ...\"")]
    Empty,
    #[error("unknown field {token:?} in header line. Valid fields: {valid}")]
    Unknown { token: String, valid: String },
}

/// The format of an S3 text file from its header line: field names
/// separated by spaces, without `${}`.
pub fn format_from_header(line: &str) -> Result<Format, HeaderError> {
    let fields = line
        .split_ascii_whitespace()
        .map(|t| Field::from_name(t).ok_or_else(|| HeaderError::Unknown { token: t.to_string(), valid: valid_fields() }))
        .collect::<Result<Vec<_>, _>>()?;
    Format::from_fields(fields).map_err(|e| match e {
        FormatError::Empty { .. } => HeaderError::Empty,
        _ => unreachable!("from_fields only rejects empty formats"),
    })
}

/// Parses one line of `format`. Every text value is a fresh allocation; use
/// [`RecordParser`] to share repeated values across lines.
pub fn parse_record(format: &Format, line: &str) -> Result<ParsedRecord, RecordError> {
    parse_with(format, line, &mut |s: &str| Arc::from(s))
}

/// Parses a whole S3-style text: a header line, then one record per line.
/// Blank lines are skipped.
pub fn parse_text(text: &str) -> Result<(Format, Vec<ParsedRecord>), ParseTextError> {
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let Some((i, header)) = lines.next() else {
        return Err(ParseTextError::Header { line: 1, error: HeaderError::Empty });
    };
    let mut parser = RecordParser::new(format_from_header(header).map_err(|error| ParseTextError::Header { line: i + 1, error })?);
    let mut out = Vec::new();
    for (i, l) in lines {
        parser.line = i;
        if let Some(r) = parser.parse_line(l)? {
            out.push(r);
        }
    }
    Ok((parser.format, out))
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseTextError {
    #[error("line {line}: {error}")]
    Header { line: usize, error: HeaderError },
    #[error(transparent)]
    Record(#[from] LineError),
}

/// Parses successive lines of one format, counting lines for error
/// messages and sharing equal text values (account, interface, VPC ids
/// repeat on every line of a file).
#[derive(Debug)]
pub struct RecordParser {
    format: Format,
    /// Lines seen so far.
    line: usize,
    interned: HashSet<Arc<str>>,
}

impl RecordParser {
    pub fn new(format: Format) -> RecordParser {
        RecordParser { format, line: 0, interned: HashSet::new() }
    }

    /// A parser for the file whose header line this is; the header counts
    /// as line 1.
    pub fn from_header(header: &str) -> Result<RecordParser, HeaderError> {
        let mut p = RecordParser::new(format_from_header(header)?);
        p.line = 1;
        Ok(p)
    }

    pub fn format(&self) -> &Format {
        &self.format
    }

    /// Parses the next line; `Ok(None)` for a blank line.
    pub fn parse_line(&mut self, line: &str) -> Result<Option<ParsedRecord>, LineError> {
        self.line += 1;
        if line.trim().is_empty() {
            return Ok(None);
        }
        let interned = &mut self.interned;
        let mut intern = |s: &str| match interned.get(s) {
            Some(a) => a.clone(),
            None => {
                let a: Arc<str> = Arc::from(s);
                interned.insert(a.clone());
                a
            }
        };
        parse_with(&self.format, line, &mut intern).map(Some).map_err(|error| LineError { line: self.line, error })
    }
}

fn parse_with(format: &Format, line: &str, intern: &mut dyn FnMut(&str) -> Arc<str>) -> Result<ParsedRecord, RecordError> {
    let fields = format.fields();
    let found = line.split_ascii_whitespace().count();
    if found != fields.len() {
        return Err(RecordError::FieldCount { expected: fields.len(), found, header: format.header() });
    }
    let mut r = FlowRecord::default();
    let mut version = None;
    let (mut ecs, mut tags, mut hop, mut k8s) = (EcsMeta::default(), TagValues::default(), NextHop::default(), K8sMeta::default());
    for (i, (f, v)) in fields.iter().copied().zip(line.split_ascii_whitespace()).enumerate() {
        let bad = |expected: &'static str| RecordError::BadValue { field: f.name(), column: i + 1, value: v.to_string(), expected };
        let missing = v == "-";
        // Parses an optional value: `-` is None, anything else must parse.
        macro_rules! opt {
            ($parse:expr, $expected:literal) => {
                if missing {
                    None
                } else {
                    Some($parse.ok_or_else(|| bad($expected))?)
                }
            };
        }
        macro_rules! required {
            ($parse:expr, $expected:literal) => {
                $parse.ok_or_else(|| bad($expected))?
            };
        }
        match f {
            Field::Version => version = Some(required!(v.parse::<u8>().ok(), "a version number")),
            Field::SrcAddr => r.srcaddr = opt!(v.parse::<IpAddr>().ok(), "an IP address or -"),
            Field::DstAddr => r.dstaddr = opt!(v.parse::<IpAddr>().ok(), "an IP address or -"),
            Field::PktSrcAddr => r.pkt_srcaddr = opt!(v.parse::<IpAddr>().ok(), "an IP address or -"),
            Field::PktDstAddr => r.pkt_dstaddr = opt!(v.parse::<IpAddr>().ok(), "an IP address or -"),
            Field::SrcPort => r.srcport = opt!(v.parse::<u16>().ok(), "a port number (0-65535) or -"),
            Field::DstPort => r.dstport = opt!(v.parse::<u16>().ok(), "a port number (0-65535) or -"),
            Field::Protocol => r.protocol = opt!(v.parse::<u8>().ok(), "a protocol number (0-255) or -"),
            Field::Packets => r.packets = opt!(v.parse::<u64>().ok(), "a packet count or -"),
            Field::Bytes => r.bytes = opt!(v.parse::<u64>().ok(), "a byte count or -"),
            Field::Start => r.start = required!(v.parse::<u64>().ok(), "a time in Unix seconds"),
            Field::End => r.end = required!(v.parse::<u64>().ok(), "a time in Unix seconds"),
            Field::Action => r.action = opt!(Action::from_name(v), "ACCEPT, REJECT or -"),
            Field::LogStatus => r.log_status = required!(LogStatus::from_name(v), "OK, NODATA or SKIPDATA"),
            Field::TcpFlags => r.tcp_flags = opt!(v.parse::<u8>().ok(), "a TCP flags value (0-255) or -"),
            Field::Type => r.ip_type = opt!(IpType::from_name(v), "IPv4, IPv6, EFA or -"),
            Field::FlowDirection => r.flow_direction = opt!(Direction::from_name(v), "ingress, egress or -"),
            Field::TrafficPath => r.traffic_path = opt!(v.parse::<u8>().ok(), "a traffic path code or -"),
            Field::EncryptionStatus => r.encryption_status = opt!(v.parse::<u8>().ok(), "an encryption status code or -"),
            _ => {
                let value = if missing {
                    None
                } else if f.is_tag() {
                    Some(intern(&percent_decode(v)))
                } else {
                    Some(intern(v))
                };
                *text_slot(f, &mut r, &mut ecs, &mut tags, &mut hop, &mut k8s) = value;
            }
        }
    }
    // A group with no value at all is absent, as the writer has it.
    if ecs != EcsMeta::default() {
        r.ecs = Some(Arc::new(ecs));
    }
    if tags != TagValues::default() {
        r.tags = Some(Arc::new(tags));
    }
    if hop != NextHop::default() {
        r.next_hop = Some(Arc::new(hop));
    }
    if k8s != K8sMeta::default() {
        r.k8s = Some(Arc::new(k8s));
    }
    Ok(ParsedRecord { version, record: r })
}

/// Where a text field lives (the inverse of [`Field::text`]).
fn text_slot<'a>(
    f: Field,
    r: &'a mut FlowRecord,
    ecs: &'a mut EcsMeta,
    tags: &'a mut TagValues,
    hop: &'a mut NextHop,
    k8s: &'a mut K8sMeta,
) -> &'a mut Option<Arc<str>> {
    match f {
        Field::AccountId => &mut r.account_id,
        Field::InterfaceId => &mut r.interface_id,
        Field::VpcId => &mut r.vpc_id,
        Field::SubnetId => &mut r.subnet_id,
        Field::InstanceId => &mut r.instance_id,
        Field::Region => &mut r.region,
        Field::AzId => &mut r.az_id,
        Field::SublocationType => &mut r.sublocation_type,
        Field::SublocationId => &mut r.sublocation_id,
        Field::PktSrcAwsService => &mut r.pkt_src_aws_service,
        Field::PktDstAwsService => &mut r.pkt_dst_aws_service,
        Field::EcsClusterArn => &mut ecs.cluster_arn,
        Field::EcsClusterName => &mut ecs.cluster_name,
        Field::EcsContainerInstanceArn => &mut ecs.container_instance_arn,
        Field::EcsContainerInstanceId => &mut ecs.container_instance_id,
        Field::EcsContainerId => &mut ecs.container_id,
        Field::EcsSecondContainerId => &mut ecs.second_container_id,
        Field::EcsServiceName => &mut ecs.service_name,
        Field::EcsTaskDefinitionArn => &mut ecs.task_definition_arn,
        Field::EcsTaskArn => &mut ecs.task_arn,
        Field::EcsTaskId => &mut ecs.task_id,
        Field::RejectReason => &mut r.reject_reason,
        Field::ResourceId => &mut r.resource_id,
        Field::InstanceTag => &mut tags.instance[0],
        Field::InstanceTag2 => &mut tags.instance[1],
        Field::InterfaceTag => &mut tags.interface[0],
        Field::InterfaceTag2 => &mut tags.interface[1],
        Field::AsgTag => &mut tags.asg[0],
        Field::AsgTag2 => &mut tags.asg[1],
        Field::InterfaceType => &mut r.interface_type,
        Field::NextHopInterfaceId => &mut hop.interface_id,
        Field::NextHopSubnetId => &mut hop.subnet_id,
        Field::NextHopAzId => &mut hop.az_id,
        Field::NextHopVpcId => &mut hop.vpc_id,
        Field::NextHopInterfaceType => &mut hop.interface_type,
        Field::K8sNamespace => &mut k8s.namespace,
        Field::K8sPodName => &mut k8s.pod_name,
        Field::K8sPodUid => &mut k8s.pod_uid,
        Field::K8sSrcPod => &mut k8s.src_pod,
        Field::K8sDstPod => &mut k8s.dst_pod,
        Field::K8sPodLabel => &mut k8s.pod_label,
        other => unreachable!("{} is not a text field", other.name()),
    }
}

/// `%XX` → byte; a `%` not followed by two hex digits is kept as it is.
/// Invalid UTF-8 after decoding is replaced, not rejected: tags are for
/// display and comparison only.
fn percent_decode(s: &str) -> String {
    if !s.contains('%') {
        return s.to_string();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::ALL_FIELDS;

    fn fmt(spec: &str) -> Format {
        Format::parse(spec).unwrap()
    }

    #[test]
    fn header_lines() {
        let f = format_from_header("version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status").unwrap();
        assert_eq!(f, Format::default());
        let f = format_from_header("flow-direction  traffic-path srcaddr\r").unwrap();
        assert_eq!((f.fields(), f.version()), (&[Field::FlowDirection, Field::TrafficPath, Field::SrcAddr][..], 5));
        assert_eq!(format_from_header("  "), Err(HeaderError::Empty));
        assert_eq!(
            format_from_header("version ${srcaddr}").unwrap_err().to_string(),
            format!("unknown field \"${{srcaddr}}\" in header line. Valid fields: {}", valid_fields())
        );
    }

    #[test]
    fn hyphens_and_unknown_account() {
        let f = Format::default();
        let p = parse_record(&f, "2 unknown eni-1 - - - - - - - 1431280876 1431280934 - NODATA").unwrap();
        assert_eq!(p.version, Some(2));
        assert_eq!(p.record, FlowRecord::status_only("unknown".into(), "eni-1".into(), 1431280876, 1431280934, LogStatus::NoData));
        // Every field of the widest format can be `-` except the four that
        // always have a value.
        let all = Format::from_fields(ALL_FIELDS.to_vec()).unwrap();
        let line = ALL_FIELDS
            .iter()
            .map(|f| match f {
                Field::Version => "11",
                Field::Start | Field::End => "7",
                Field::LogStatus => "OK",
                _ => "-",
            })
            .collect::<Vec<_>>()
            .join(" ");
        let p = parse_record(&all, &line).unwrap();
        assert_eq!(p.record, FlowRecord { start: 7, end: 7, ..FlowRecord::default() });
        assert_eq!(all.line(&p.record), line);
    }

    /// Wrong lines → exact messages naming the line, field and column.
    #[test]
    fn errors_name_line_field_and_value() {
        let header = "version srcport packets start action log-status type flow-direction";
        let cases = [
            ("2 80 1 5 ACCEPT", "line 2: expected 8 fields (version srcport packets start action log-status type flow-direction), found 5"),
            ("2 80 1 5 ACCEPT OK IPv4 ingress extra", "line 2: expected 8 fields (version srcport packets start action log-status type flow-direction), found 9"),
            ("x 80 1 5 ACCEPT OK IPv4 ingress", "line 2: field version (column 1): \"x\" is not a version number"),
            ("- 80 1 5 ACCEPT OK IPv4 ingress", "line 2: field version (column 1): \"-\" is not a version number"),
            ("2 65536 1 5 ACCEPT OK IPv4 ingress", "line 2: field srcport (column 2): \"65536\" is not a port number (0-65535) or -"),
            ("2 80 -1 5 ACCEPT OK IPv4 ingress", "line 2: field packets (column 3): \"-1\" is not a packet count or -"),
            ("2 80 1 - ACCEPT OK IPv4 ingress", "line 2: field start (column 4): \"-\" is not a time in Unix seconds"),
            ("2 80 1 5 accept OK IPv4 ingress", "line 2: field action (column 5): \"accept\" is not ACCEPT, REJECT or -"),
            ("2 80 1 5 ACCEPT - IPv4 ingress", "line 2: field log-status (column 6): \"-\" is not OK, NODATA or SKIPDATA"),
            ("2 80 1 5 ACCEPT OK ipv4 ingress", "line 2: field type (column 7): \"ipv4\" is not IPv4, IPv6, EFA or -"),
            ("2 80 1 5 ACCEPT OK IPv4 in", "line 2: field flow-direction (column 8): \"in\" is not ingress, egress or -"),
        ];
        for (line, want) in cases {
            let mut p = RecordParser::from_header(header).unwrap();
            assert_eq!(p.parse_line(line).unwrap_err().to_string(), want, "{line}");
        }
        let f = fmt("${srcaddr} ${tcp-flags}");
        assert_eq!(
            parse_record(&f, "10.0.0.300 2").unwrap_err().to_string(),
            "field srcaddr (column 1): \"10.0.0.300\" is not an IP address or -"
        );
        assert_eq!(parse_record(&f, "10.0.0.3 256").unwrap_err().to_string(), "field tcp-flags (column 2): \"256\" is not a TCP flags value (0-255) or -");
        assert_eq!(parse_record(&f, "").unwrap_err().to_string(), "expected 2 fields (srcaddr tcp-flags), found 0");
    }

    #[test]
    fn whitespace_blank_lines_and_line_numbers() {
        let text = "srcaddr dstaddr packets\n10.0.0.1  10.0.0.2 3\r\n\n\t10.0.0.2 10.0.0.1\t4 \nbad 10.0.0.1 4\n";
        let e = parse_text(text).unwrap_err();
        assert_eq!(e.to_string(), "line 5: field srcaddr (column 1): \"bad\" is not an IP address or -");
        let (f, recs) = parse_text(&text.replace("bad 10.0.0.1 4\n", "")).unwrap();
        assert_eq!(f.header(), "srcaddr dstaddr packets");
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[1].record.packets, Some(4));
        assert_eq!(recs[1].version, None);
        assert_eq!(parse_text("\n\n").unwrap_err().to_string(), "line 1: empty header line: expected field names such as \"version account-id ...\"");
        assert_eq!(
            parse_text("\nsrcaddr nope\n").unwrap_err().to_string(),
            format!("line 2: unknown field \"nope\" in header line. Valid fields: {}", valid_fields())
        );
    }

    #[test]
    fn repeated_text_is_shared() {
        let mut p = RecordParser::new(fmt("${account-id} ${interface-id}"));
        let a = p.parse_line("123 eni-1").unwrap().unwrap().record;
        let b = p.parse_line("123 eni-2").unwrap().unwrap().record;
        assert!(Arc::ptr_eq(a.account_id.as_ref().unwrap(), b.account_id.as_ref().unwrap()));
        assert_eq!(p.parse_line("   ").unwrap(), None);
        assert_eq!(p.parse_line("x").unwrap_err().line, 4);
    }

    #[test]
    fn groups_and_tags_round_trip() {
        let f = fmt("${ecs-cluster-name} ${ecs-task-id} ${instance-tag} ${interface-tag-2} ${asg-tag} ${next-hop-az-id} ${reject-reason} ${encryption-status}");
        for line in [
            "prod abc web%20server %2D %C3%BC%25 use1-az1 BPA 3",
            "- - - - - - - -",
            "- x - - a.b - EC 0",
        ] {
            let p = parse_record(&f, line).unwrap();
            assert_eq!(f.line(&p.record), line, "{line}");
        }
        let r = parse_record(&f, "prod abc web%20server %2D %C3%BC%25 use1-az1 BPA 3").unwrap().record;
        let tags = r.tags.as_deref().unwrap();
        assert_eq!((tags.instance[0].as_deref(), tags.interface[1].as_deref(), tags.asg[0].as_deref()), (Some("web server"), Some("-"), Some("ü%")));
        assert!(parse_record(&f, "- - - - - - - -").unwrap().record.ecs.is_none());
    }

    /// The Kubernetes extension fields read back into one group; a line
    /// without identity has none.
    #[test]
    fn k8s_fields_round_trip() {
        let f = fmt("${srcaddr} ${k8s-namespace} ${k8s-pod-name} ${k8s-pod-uid} ${k8s-src-pod} ${k8s-dst-pod} ${k8s-pod-label}");
        let line = "10.88.0.2 shop web-1 0b5c6f1e-8a3d-4c1e-9f00-1234567890ab shop/web-1 kube-system/dns-2 my%20app";
        let p = parse_record(&f, line).unwrap();
        let k = p.record.k8s.as_deref().unwrap();
        assert_eq!(
            (k.namespace.as_deref(), k.pod_name.as_deref(), k.src_pod.as_deref(), k.dst_pod.as_deref(), k.pod_label.as_deref()),
            (Some("shop"), Some("web-1"), Some("shop/web-1"), Some("kube-system/dns-2"), Some("my app"))
        );
        assert_eq!(f.line(&p.record), line);
        let none = parse_record(&f, "10.88.0.2 - - - - - -").unwrap();
        assert!(none.record.k8s.is_none());
        assert_eq!(f.line(&none.record), "10.88.0.2 - - - - - -");
    }

    #[test]
    fn percent_decoding_is_lenient() {
        assert_eq!(percent_decode("a%20b"), "a b");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%41%"), "A%");
        assert_eq!(percent_decode("%FF"), "\u{FFFD}");
    }
}
