//! Pods' veths: the pod a host-side veth belongs to. Its peer is in the pod's namespace,
//! which the host knows by an id (`IFLA_LINK_NETNSID`); an `RTM_GETADDR` dump aimed at
//! that namespace and the peer's index (`IFA_TARGET_NETNSID`, kernel 4.20 and later)
//! gives the pod's addresses without entering its namespace or scanning /proc, and the
//! agent's pod index turns an address into the pod.

use std::io;
use std::net::IpAddr;

use super::rtnetlink::{AddressMessage, RTM_NEWADDR, RemotePeer, address_dump_request};
use crate::netlink::socket::{Reply, RequestError, RequestSocket};

/// The pod a veth belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodName {
    pub namespace: String,
    pub name: String,
}

/// Finds the pod that holds an address (the agent wires it to its pod index).
pub type PodLookup = Box<dyn Fn(IpAddr) -> Option<PodName> + Send + Sync>;

/// A veth whose peer had no usable address is asked again after this many refreshes at
/// most (doubling from 1).
const RETRY_MAX: u64 = 64;

/// A pod's veth: the host end of a pair whose other end is in the pod's namespace.
pub struct PodVeth {
    pub peer: RemotePeer,
    /// The peer's addresses, once they were found (they do not change while the pod
    /// lives, and the veth goes with the pod).
    addresses: Vec<IpAddr>,
    pub pod: Option<PodName>,
    /// The refresh from which the addresses may be asked for again, and the wait after
    /// the next empty answer.
    next_query: u64,
    retry: u64,
}

impl PodVeth {
    /// A veth whose pod is not known yet.
    pub fn new(peer: RemotePeer) -> Self {
        Self {
            peer,
            addresses: Vec::new(),
            pod: None,
            next_query: 0,
            retry: 1,
        }
    }

    /// True when the peer's addresses are not known and may be asked for at `refresh`
    /// (a veth appears before its pod's network is set up: asked again after 1, 2, 4 ...
    /// refreshes, at most [`RETRY_MAX`]).
    pub fn wants_addresses(&self, refresh: u64) -> bool {
        self.pod.is_none() && self.addresses.is_empty() && self.next_query <= refresh
    }

    /// Asks for the peer's addresses (one dump on `route`, a socket with
    /// `NETLINK_GET_STRICT_CHK` set).
    pub fn ask_addresses(
        &mut self,
        route: &mut RequestSocket,
        request: &mut Vec<u8>,
        refresh: u64,
    ) -> Result<(), RequestError> {
        let result = peer_addresses(route, request, self.peer, &mut self.addresses);
        if self.addresses.is_empty() {
            self.next_query = refresh + self.retry;
            self.retry = (self.retry * 2).min(RETRY_MAX);
        }
        result
    }

    /// Looks the addresses up; true when the pod was found now.
    pub fn look_up(&mut self, lookup: &PodLookup) -> bool {
        if self.pod.is_some() {
            return false;
        }
        self.pod = self.addresses.iter().find_map(|address| lookup(*address));
        self.pod.is_some()
    }
}

/// Asks for the addresses of a veth's peer in its own namespace (by that namespace's id
/// here, without entering it) and keeps the ones a pod could hold.
fn peer_addresses(
    route: &mut RequestSocket,
    request: &mut Vec<u8>,
    peer: RemotePeer,
    addresses: &mut Vec<IpAddr>,
) -> Result<(), RequestError> {
    let sequence = route.reserve(1);
    address_dump_request(request, sequence, peer.netns_id, peer.index);
    route.exchange(request, sequence, 1, |_, reply| match reply {
        Reply::Message(header, payload) if header.kind == RTM_NEWADDR => {
            let message = AddressMessage::parse(payload)?;
            // The kernel filters by index already; a kernel that ignored the filter
            // would answer with every interface of the pod.
            if message.index == peer.index && is_pod_address(message.address) {
                addresses.push(message.address);
            }
            Ok(())
        }
        Reply::Message(..) => Ok(()),
        Reply::Refused(errno) => Err(RequestError::Io(io::Error::from_raw_os_error(errno))),
    })
}

/// Addresses that name a pod: not loopback, link-local, multicast or unspecified.
fn is_pod_address(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => {
            !(v4.is_loopback() || v4.is_link_local() || v4.is_multicast() || v4.is_unspecified())
        }
        IpAddr::V6(v6) => {
            !(v6.is_loopback()
                || v6.is_unicast_link_local()
                || v6.is_multicast()
                || v6.is_unspecified())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_addresses_leave_out_link_local_and_loopback() {
        for (address, pod) in [
            ("10.244.1.7", true),
            ("fd00:10::7", true),
            ("fe80::1", false),
            ("169.254.1.1", false),
            ("127.0.0.1", false),
            ("::1", false),
            ("ff02::1", false),
            ("0.0.0.0", false),
        ] {
            assert_eq!(is_pod_address(address.parse().unwrap()), pod, "{address}");
        }
    }

    #[test]
    fn a_veth_without_addresses_is_asked_again_less_and_less_often() {
        let mut veth = PodVeth::new(RemotePeer {
            index: 2,
            netns_id: 0,
        });
        let mut asked = Vec::new();
        for refresh in 1..=40 {
            if veth.wants_addresses(refresh) {
                asked.push(refresh);
                // What ask_addresses does with an empty answer.
                veth.next_query = refresh + veth.retry;
                veth.retry = (veth.retry * 2).min(RETRY_MAX);
            }
        }
        assert_eq!(asked, [1, 2, 4, 8, 16, 32]);
        // Found addresses are looked up until a pod holds one, then kept.
        veth.addresses.push("10.1.0.9".parse().unwrap());
        assert!(!veth.wants_addresses(100));
        let nobody: PodLookup = Box::new(|_| None);
        assert!(!veth.look_up(&nobody));
        let cart: PodLookup = Box::new(|ip| {
            (ip == "10.1.0.9".parse::<IpAddr>().unwrap()).then(|| PodName {
                namespace: "shop".into(),
                name: "cart".into(),
            })
        });
        assert!(veth.look_up(&cart));
        assert!(!veth.look_up(&cart), "found once");
        assert_eq!(veth.pod.as_ref().unwrap().name, "cart");
    }
}
