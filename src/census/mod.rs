//! The connection census: how many ESTABLISHED TCP connections (IPv4, IPv6, v4-mapped) this server has
//! on the drain ports, from peers that are not excluded.
//!
//! The fast path is netlink `sock_diag` ([`netlink`]) with the state and the ports filtered in the kernel
//! and the reply walked in place (no allocation per socket); `/proc/net/tcp{,6}` ([`procfs`]) is the
//! fallback where netlink is not permitted. A census also reports how many counted sockets are new since
//! the previous one (`arrived`), which is how the drain engine sees that the load balancer is still
//! sending connections. [`destroy`] subscribes to the kernel's socket-destroy notifications, so a long
//! drain can count down instead of re-walking a large socket table.

pub mod destroy;
pub mod netlink;
pub mod procfs;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

pub use destroy::DestroyWatch;
pub use netlink::NetlinkCensus;
pub use procfs::ProcCensus;

/// What to count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CensusSpec {
    pub ports: Vec<u16>,
    pub exclude_peers: Vec<IpNet>,
}

impl CensusSpec {
    /// Whether a socket with this local port and peer is counted.
    pub fn counts(&self, local_port: u16, peer: IpAddr) -> bool {
        self.ports.contains(&local_port) && !self.excluded(peer)
    }

    pub fn excluded(&self, peer: IpAddr) -> bool {
        let peer = unmap(peer);
        self.exclude_peers.iter().any(|net| net.contains(&peer))
    }
}

/// `::ffff:a.b.c.d` is the IPv4 peer a.b.c.d (a dual-stack listener's view of an IPv4 client).
pub fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Count {
    pub established: usize,
    /// Counted sockets that were not there at the previous census of the same [`Census`] (0 the first time).
    pub arrived: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Netlink,
    Procfs,
}

#[derive(Debug, thiserror::Error)]
pub enum CensusError {
    #[error("census: netlink sock_diag: {0}")]
    Netlink(String),
    #[error("census: {file}: {reason}")]
    Proc { file: String, reason: String },
}

pub trait Census: Send {
    fn count(&mut self) -> Result<Count, CensusError>;
    fn backend(&self) -> Backend;
}

/// The best census this process may use: netlink if a probe count works, else /proc.
pub fn open(spec: &CensusSpec) -> Box<dyn Census> {
    match NetlinkCensus::new(spec.clone()) {
        Ok(mut n) => match n.probe() {
            Ok(()) => return Box::new(n),
            Err(e) => {
                tracing::warn!(error = %e, "netlink census unavailable; falling back to /proc/net/tcp")
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "netlink census unavailable; falling back to /proc/net/tcp")
        }
    }
    Box::new(ProcCensus::new(spec.clone()))
}

/// Socket-destroy notifications as a channel of "this many counted sockets went away", or `None` when
/// the kernel does not allow the subscription (it needs CAP_NET_ADMIN); the drain then polls.
pub fn destroy_channel(spec: &CensusSpec) -> Option<tokio::sync::mpsc::UnboundedReceiver<usize>> {
    match DestroyWatch::subscribe(spec.clone()) {
        Ok(watch) => Some(watch.spawn()),
        Err(e) => {
            tracing::info!(error = %e, "socket-destroy notifications unavailable; the drain polls the census");
            None
        }
    }
}

pub(crate) fn v4(bytes: [u8; 4]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(bytes))
}

pub(crate) fn v6(bytes: [u8; 16]) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_mapped_peers_match_ipv4_exclusions() {
        let spec = CensusSpec {
            ports: vec![80],
            exclude_peers: vec!["10.0.0.0/8".parse().unwrap()],
        };
        assert!(!spec.counts(80, "::ffff:10.1.2.3".parse().unwrap()));
        assert!(spec.counts(80, "::ffff:11.1.2.3".parse().unwrap()));
        assert!(!spec.counts(81, "11.1.2.3".parse().unwrap()));
        assert!(spec.counts(80, "fd00::1".parse().unwrap()));
    }
}
