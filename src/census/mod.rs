//! The connection census: how many ESTABLISHED TCP connections (IPv4, IPv6, v4-mapped) this server has
//! on the drain ports, from peers that are not excluded.
//!
//! The fast path is netlink `sock_diag` ([`netlink`]) with the state and the ports filtered in the kernel
//! and the reply walked in place (no allocation per socket); `/proc/net/tcp{,6}` ([`procfs`]) is the
//! fallback where netlink is not permitted. A census also reports how many counted sockets are new since
//! the previous one (`arrived`), which is how the drain engine sees that the load balancer is still
//! sending connections. [`destroy`] subscribes to the kernel's socket-destroy notifications, so a long
//! drain can count down instead of re-walking a large socket table.

pub mod cookies;
pub mod destroy;
pub mod netlink;
pub mod procfs;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;

pub use cookies::{CookieSet, Horizon, Latest};
pub use destroy::{Counted, DestroyWatch, Destroyed};
pub use netlink::{DumpMode, NetlinkCensus};
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
        if self.exclude_peers.is_empty() {
            return false;
        }
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

/// What failed, named so an operator can act on it (which request, which file and line).
#[derive(Debug, thiserror::Error)]
pub enum CensusError {
    #[error("census: netlink sock_diag {what}: {source}")]
    Netlink {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("census: {file}: {source}")]
    ProcRead {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("census: {file}: line {line}: {reason}")]
    ProcLine {
        file: String,
        line: usize,
        reason: String,
    },
    /// The kernel dropped destroy notifications (our receive buffer overflowed): a count-down from
    /// them would be wrong, so the caller must go back to counting.
    #[error("census: socket-destroy notifications were lost (receive buffer overflow)")]
    DestroyLost,
}

/// At most this many sockets are looked up in one [`Census::recheck`] (2 to 3 ms of CPU, at 2 to 3 µs
/// a lookup, on the runtime's thread). One that found this many gone stopped there, not at a socket
/// still open: the next goes on from where it stopped, and can go on at once (each socket is found
/// gone once, so the rechecks that follow one census do at most one lookup per socket it counted).
pub const RECHECK_WORK: usize = 1024;

pub trait Census: Send {
    fn count(&mut self) -> Result<Count, CensusError>;
    fn backend(&self) -> Backend;
    /// Which sockets the latest census counted, and its number, for a [`DestroyWatch`] to count each
    /// destroy against the census that counted the socket. Only the netlink census has socket cookies.
    fn horizon(&self) -> Option<Horizon> {
        None
    }
    /// Whether any socket the latest census counted is still ESTABLISHED, each looked up by itself:
    /// 0 when every one of them has left (exactly), else how many were not found gone yet (at least
    /// as many as are open). `None` where the census cannot (it counted more than it keeps, or has
    /// no such lookup). Far cheaper than a census (no walk of the socket table), so it can run often;
    /// what it cannot see is a connection that arrived after the census. It looks up at most
    /// [`RECHECK_WORK`] sockets, stopping at the first still open: the first after a census reports
    /// at most that many fewer than the census counted, and each next one at most that many fewer
    /// than the one before.
    fn recheck(&mut self) -> Option<Result<usize, CensusError>> {
        None
    }
}

/// The best census this process may use: netlink if a probe count works, else /proc (a seccomp
/// profile, an LSM or a kernel without `inet_diag` refuses the sock_diag socket or its dump). The
/// choice is logged either way: an operator reading a slow drain wants to know which one counted.
/// For one-shot counts (`connections`, `status`): it keeps no socket ids for rechecks.
pub fn open(spec: &CensusSpec) -> Box<dyn Census> {
    open_keeping(spec, 0)
}

/// [`open`], keeping the ids of up to `recheck_max` counted sockets for [`Census::recheck`].
fn open_keeping(spec: &CensusSpec, recheck_max: usize) -> Box<dyn Census> {
    let (census, refused) = choose_keeping(spec, recheck_max);
    match refused {
        None => tracing::info!(
            backend = "netlink",
            "connection census: netlink sock_diag, states and ports filtered in the kernel"
        ),
        Some(e) => {
            tracing::warn!(backend = "procfs", error = %e, "netlink census unavailable; falling back to /proc/net/tcp")
        }
    }
    census
}

/// The choice [`open`] makes, silently: netlink if a probe count works, else /proc with the reason
/// netlink was refused (for `check` to show).
pub fn choose(spec: &CensusSpec) -> (Box<dyn Census>, Option<CensusError>) {
    choose_keeping(spec, 0)
}

fn choose_keeping(spec: &CensusSpec, recheck_max: usize) -> (Box<dyn Census>, Option<CensusError>) {
    let netlink = NetlinkCensus::new(spec.clone()).map(|n| n.with_recheck_max(recheck_max));
    match netlink.and_then(|mut n| n.probe().map(|()| n)) {
        Ok(n) => (Box::new(n), None),
        Err(e) => (Box::new(ProcCensus::new(spec.clone())), Some(e)),
    }
}

/// [`open`] plus socket-destroy notifications as a channel of "this many sockets that census counted
/// went away" ([`Destroyed`]), exact by cookie. The subscription comes first, so no destroy between it
/// and the first census is missed. The channel is `None` where the kernel refuses the subscription
/// (see [`destroy`]); the drain then polls. Needs a tokio runtime (the watch runs as a task).
pub fn open_with_destroy(
    spec: &CensusSpec,
) -> (
    Box<dyn Census>,
    Option<tokio::sync::mpsc::UnboundedReceiver<Destroyed>>,
) {
    let watch = DestroyWatch::subscribe(spec);
    // The drain's census: it keeps the counted sockets' ids for rechecks.
    let census = open_keeping(spec, netlink::RECHECK_MAX);
    let channel = match (watch, census.horizon()) {
        (Ok(mut watch), Some(horizon)) => {
            watch.follow(horizon);
            Some(watch.spawn())
        }
        (Ok(_), None) => {
            tracing::info!("socket-destroy notifications need the netlink census; the drain polls");
            None
        }
        (Err(e), _) => {
            tracing::info!(error = %e, "socket-destroy notifications unavailable; the drain polls the census");
            None
        }
    };
    (census, channel)
}

/// The LISTEN sockets on `ports` (port, local address), IPv4 and IPv6: whether the application is up,
/// and whether IPv6 (or dual-stack) clients can arrive. Netlink, or /proc where netlink is refused.
pub fn listening(ports: &[u16]) -> Result<Vec<(u16, SocketAddr)>, CensusError> {
    match netlink::listening(ports) {
        Ok(found) => Ok(found),
        Err(e) => {
            tracing::debug!(error = %e, "netlink listener dump refused; reading /proc/net/tcp");
            procfs::listening_sockets(ports)
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

    #[test]
    fn ipv6_exclusions_do_not_match_v4_mapped_as_ipv6() {
        // ::ffff:0:0/96 written as an IPv6 CIDR is not how operators name IPv4 peers; the mapped peer
        // is compared as IPv4, so an IPv6 /8 elsewhere does not swallow it.
        let spec = CensusSpec {
            ports: vec![80],
            exclude_peers: vec!["fd00::/8".parse().unwrap()],
        };
        assert!(spec.counts(80, "::ffff:10.1.2.3".parse().unwrap()));
        assert!(!spec.counts(80, "fd12::3".parse().unwrap()));
    }
}
