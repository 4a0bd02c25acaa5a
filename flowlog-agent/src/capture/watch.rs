//! Interfaces that appear, come up or disappear while the agent runs (pod
//! veths, hot-plugged NICs), from the kernel's rtnetlink link notifications.

use std::io;

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_route::{
    link::{LinkAttribute, LinkFlags, LinkMessage},
    RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use tokio::sync::mpsc;

use crate::capture::links::LinkInfo;

/// rtnetlink multicast group of link changes (linux/rtnetlink.h RTMGRP_LINK).
const RTMGRP_LINK: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// A link was created or changed (name, up/down).
    Changed(LinkInfo),
    Removed { ifindex: u32, name: String },
    /// The kernel dropped notifications (ENOBUFS): list the links again.
    Overrun,
}

fn link_info(m: &LinkMessage) -> Option<LinkInfo> {
    let name = m.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })?;
    Some(LinkInfo {
        name,
        ifindex: m.header.index,
        up: m.header.flags.contains(LinkFlags::Up),
        loopback: m.header.flags.contains(LinkFlags::Loopback),
    })
}

/// Decodes the link events in one netlink datagram.
pub fn decode(mut buf: &[u8]) -> Vec<LinkEvent> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(buf) else { break };
        let len = msg.header.length as usize;
        match msg.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) => out.extend(link_info(&m).map(LinkEvent::Changed)),
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(m)) => {
                let name = link_info(&m).map(|l| l.name).unwrap_or_default();
                out.push(LinkEvent::Removed { ifindex: m.header.index, name });
            }
            _ => {}
        }
        if len == 0 || len > buf.len() {
            break;
        }
        buf = &buf[len..];
    }
    out
}

/// Starts a thread that listens to link notifications of the current network
/// namespace and forwards them. The thread ends when the receiver is dropped.
pub fn spawn() -> io::Result<mpsc::UnboundedReceiver<LinkEvent>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind(&SocketAddr::new(0, RTMGRP_LINK))?;
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::Builder::new().name("flowlog-links".into()).spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match socket.recv(&mut &mut buf[..], 0) {
                Ok(n) => {
                    for ev in decode(&buf[..n]) {
                        if tx.send(ev).is_err() {
                            return;
                        }
                    }
                }
                // ENOBUFS: we fell behind and missed events; the agent lists
                // the links again (it also does every window).
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    tracing::warn!("missed link notifications (ENOBUFS): listing the interfaces again");
                    if tx.send(LinkEvent::Overrun).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::error!("link notifications stopped: {e}");
                    return;
                }
            }
        }
    })?;
    Ok(rx)
}

/// One rtnetlink request and its answers: every part of a dump (until DONE),
/// or the one reply; an error reply as the `io::Error` it carries.
pub fn request(msg: RouteNetlinkMessage, dump: bool) -> io::Result<Vec<RouteNetlinkMessage>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { 0 };
    header.sequence_number = 1;
    let mut req = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
    req.finalize();
    let mut buf = vec![0u8; req.buffer_len()];
    req.serialize(&mut buf);
    socket.send(&buf, 0)?;
    let mut out = Vec::new();
    let mut rx = vec![0u8; 64 * 1024];
    loop {
        let n = socket.recv(&mut &mut rx[..], 0)?;
        let mut at = &rx[..n];
        while !at.is_empty() {
            let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(at)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("rtnetlink answer: {e}")))?;
            let len = m.header.length as usize;
            match m.payload {
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                // An acknowledgement.
                NetlinkPayload::Error(_) => return Ok(out),
                NetlinkPayload::InnerMessage(inner) => {
                    out.push(inner);
                    if !dump {
                        return Ok(out);
                    }
                }
                _ => {}
            }
            if len == 0 || len > at.len() {
                break;
            }
            at = &at[len..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::NetlinkHeader;

    fn encode(msg: RouteNetlinkMessage) -> Vec<u8> {
        let mut p = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(msg));
        p.finalize();
        let mut buf = vec![0; p.buffer_len()];
        p.serialize(&mut buf);
        buf
    }

    fn link(index: u32, name: &str, flags: LinkFlags) -> LinkMessage {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags = flags;
        m.attributes.push(LinkAttribute::IfName(name.into()));
        m
    }

    #[test]
    fn decodes_new_and_deleted_links_in_one_datagram() {
        let mut buf = encode(RouteNetlinkMessage::NewLink(link(7, "veth7", LinkFlags::Up)));
        buf.extend(encode(RouteNetlinkMessage::DelLink(link(5, "veth5", LinkFlags::empty()))));
        buf.extend(encode(RouteNetlinkMessage::NewLink(link(1, "lo", LinkFlags::Up | LinkFlags::Loopback))));
        assert_eq!(
            decode(&buf),
            [
                LinkEvent::Changed(LinkInfo { name: "veth7".into(), ifindex: 7, up: true, loopback: false }),
                LinkEvent::Removed { ifindex: 5, name: "veth5".into() },
                LinkEvent::Changed(LinkInfo { name: "lo".into(), ifindex: 1, up: true, loopback: true }),
            ]
        );
    }

    #[test]
    fn garbage_is_ignored() {
        assert_eq!(decode(&[1, 2, 3]), []);
        assert_eq!(decode(&[]), []);
    }
}
