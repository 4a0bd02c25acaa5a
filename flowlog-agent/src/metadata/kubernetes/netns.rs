//! Which host interface leads into which network namespace, from rtnetlink:
//! a host veth's `IFLA_LINK_NETNSID` is the id this namespace gives its
//! peer's namespace, and `RTM_GETNSID` with `NETNSA_FD` gives the id of a
//! namespace file (a pod's `/var/run/netns/cni-…`). Equal ids: the veth's
//! peer is in that pod.

use std::{io, os::fd::AsRawFd, path::Path};

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_route::{
    link::{LinkAttribute, LinkMessage},
    nsid::{NsidAttribute, NsidMessage},
    RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// A link of the host's namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostLink {
    pub ifindex: u32,
    pub name: String,
    /// The id of the namespace its peer is in (veths), if any.
    pub link_netnsid: Option<i32>,
}

/// One request, its answers (all parts of a dump) until DONE or the reply.
fn request(msg: RouteNetlinkMessage, dump: bool) -> io::Result<Vec<RouteNetlinkMessage>> {
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
                NetlinkPayload::Error(e) => match e.code {
                    Some(code) => return Err(io::Error::from_raw_os_error(-code.get())),
                    None => return Ok(out),
                },
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

/// Every link of this namespace with the namespace id of its peer. (A dump
/// also makes the kernel assign ids to peer namespaces that had none.)
pub fn host_links() -> io::Result<Vec<HostLink>> {
    let answers = request(RouteNetlinkMessage::GetLink(LinkMessage::default()), true)?;
    Ok(answers
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(l),
            _ => None,
        })
        .map(|l| {
            let mut link = HostLink { ifindex: l.header.index, name: String::new(), link_netnsid: None };
            for a in l.attributes {
                match a {
                    LinkAttribute::IfName(n) => link.name = n,
                    LinkAttribute::LinkNetNsId(id) if id >= 0 => link.link_netnsid = Some(id),
                    _ => {}
                }
            }
            link
        })
        .collect())
}

/// The id this namespace gives the network namespace of `path`; `None` when
/// it has none (no veth of ours leads there).
pub fn nsid_of(path: &Path) -> io::Result<Option<i32>> {
    let file = std::fs::File::open(path)?;
    let mut msg = NsidMessage::default();
    msg.attributes.push(NsidAttribute::Fd(file.as_raw_fd() as u32));
    let answers = request(RouteNetlinkMessage::GetNsId(msg), false)?;
    Ok(answers.into_iter().find_map(|m| match m {
        RouteNetlinkMessage::NewNsId(m) => m.attributes.into_iter().find_map(|a| match a {
            NsidAttribute::Id(id) if id >= 0 => Some(id),
            _ => None,
        }),
        _ => None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Root: a veth pair with one end in a fresh namespace; the host end's
    /// peer namespace id equals the id of that namespace's file.
    #[test]
    fn veth_peer_namespace_id_matches_the_namespace_file() {
        use flowlog_testkit::netns::{next_id, sh, Netns};
        flowlog_testkit::require_root();
        let ns = Netns::new("k8s");
        let host = format!("flk{}", next_id());
        // Deleted with the namespace (its peer goes, so does it).
        sh(&["ip", "link", "add", &host, "type", "veth", "peer", "name", "eth0", "netns", ns.name()]);
        let links = host_links().unwrap();
        let link = links.iter().find(|l| l.name == host).expect("host veth listed");
        let id = nsid_of(Path::new(&format!("/run/netns/{}", ns.name()))).unwrap();
        assert!(id.is_some(), "the namespace has an id once a veth leads there");
        assert_eq!(link.link_netnsid, id);
        assert!(links.iter().find(|l| l.name == "lo").unwrap().link_netnsid.is_none());
        assert_eq!(nsid_of(Path::new("/nonexistent/netns")).unwrap_err().kind(), io::ErrorKind::NotFound);
    }
}
