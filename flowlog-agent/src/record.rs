//! One flow log record, typed. `None` fields are written as `-`.

use std::{net::IpAddr, sync::Arc};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogStatus {
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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
}

/// The fields of a record. NODATA/SKIPDATA records have only `account_id`,
/// `interface_id`, `start`, `end` and `log_status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowRecord {
    pub account_id: Arc<str>,
    pub interface_id: Arc<str>,
    pub srcaddr: Option<IpAddr>,
    pub dstaddr: Option<IpAddr>,
    /// The packet's own addresses (`srcaddr`/`dstaddr` may be normalised to
    /// the interface's primary address).
    pub pkt_srcaddr: Option<IpAddr>,
    pub pkt_dstaddr: Option<IpAddr>,
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
    /// AWS `tcp-flags` value (FIN 1, SYN 2, RST 4, SYN-ACK 18, OR-ed).
    pub tcp_flags: Option<u8>,
    pub flow_direction: Option<Direction>,
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
            account_id,
            interface_id,
            srcaddr: None,
            dstaddr: None,
            pkt_srcaddr: None,
            pkt_dstaddr: None,
            srcport: None,
            dstport: None,
            protocol: None,
            packets: None,
            bytes: None,
            start,
            end,
            action: None,
            log_status,
            tcp_flags: None,
            flow_direction: None,
        }
    }
}
