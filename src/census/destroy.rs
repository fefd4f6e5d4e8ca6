//! Socket-destroy notifications (`SKNLGRP_INET_TCP_DESTROY`, `SKNLGRP_INET6_TCP_DESTROY`): the kernel
//! tells us each TCP socket it frees, so a drain over a large socket table can count down from one
//! census instead of re-walking the table every poll.
//!
//! Subscribing needs CAP_NET_ADMIN; without it [`DestroyWatch::subscribe`] fails and the drain polls.
//! A notification says a socket on a drain port from a counted peer went away; whether it was one of the
//! counted ESTABLISHED ones the engine confirms with a real census when its estimate reaches zero.

use std::io;

use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use super::netlink::{DIAG_MSG_LEN, DiagSocket, SOCK_DIAG_BY_FAMILY, parse};
use super::{CensusError, CensusSpec};

/// Sent on the channel when notifications were lost: the count-down must be rebased on a census.
pub const RECOUNT: usize = 0;

/// Receive buffer asked for (root may exceed rmem_max with SO_RCVBUFFORCE): a drain of 100k sockets
/// sends 100k notifications in a burst.
const RCVBUF: libc::c_int = 32 << 20;

const SKNLGRP_INET_TCP_DESTROY: u32 = 1;
const SKNLGRP_INET6_TCP_DESTROY: u32 = 3;

pub struct DestroyWatch {
    spec: CensusSpec,
    socket: DiagSocket,
}

impl DestroyWatch {
    /// Subscribes now; call before the census the count-down starts from, so nothing is missed.
    pub fn subscribe(spec: CensusSpec) -> Result<DestroyWatch, CensusError> {
        let err = |what: &str, e: io::Error| {
            CensusError::Netlink(format!("destroy notifications: {what}: {e}"))
        };
        let socket = DiagSocket::open().map_err(|e| err("socket", e))?;
        // SAFETY: fcntl and bind on our own fd with a zeroed, filled-in sockaddr_nl.
        unsafe {
            let flags = libc::fcntl(socket.fd(), libc::F_GETFL);
            if flags < 0 || libc::fcntl(socket.fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
                return Err(err("fcntl", io::Error::last_os_error()));
            }
            let mut addr: libc::sockaddr_nl = std::mem::zeroed();
            addr.nl_family = libc::AF_NETLINK as u16;
            addr.nl_groups =
                (1 << (SKNLGRP_INET_TCP_DESTROY - 1)) | (1 << (SKNLGRP_INET6_TCP_DESTROY - 1));
            // Best effort: a bigger buffer means fewer recounts after a burst.
            if libc::setsockopt(
                socket.fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&RCVBUF as *const libc::c_int).cast(),
                4,
            ) != 0
            {
                libc::setsockopt(
                    socket.fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUF,
                    (&RCVBUF as *const libc::c_int).cast(),
                    4,
                );
            }
            let rc = libc::bind(
                socket.fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            );
            if rc < 0 {
                return Err(err(
                    "bind to the destroy groups (needs CAP_NET_ADMIN)",
                    io::Error::last_os_error(),
                ));
            }
        }
        Ok(DestroyWatch { spec, socket })
    }

    /// Counts matching destroy notifications in one received batch.
    fn tally(spec: &CensusSpec, buf: &[u8]) -> usize {
        let mut at = 0;
        let mut n = 0;
        while at + 16 <= buf.len() {
            let len = u32::from_ne_bytes(buf[at..at + 4].try_into().expect("4 bytes")) as usize;
            let kind = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().expect("2 bytes"));
            if len < 16 || at + len > buf.len() {
                break;
            }
            if kind == SOCK_DIAG_BY_FAMILY && len >= 16 + DIAG_MSG_LEN {
                let s = parse(&buf[at + 16..at + 16 + DIAG_MSG_LEN]);
                if spec.counts(s.local_port, s.peer) {
                    n += 1;
                }
            }
            at += (len + 3) & !3;
        }
        n
    }

    /// Runs the watch on the runtime; the channel yields counts of matching destroyed sockets and closes
    /// if the watch fails. The task ends when the receiver is dropped.
    pub fn spawn(self) -> mpsc::UnboundedReceiver<usize> {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let DestroyWatch { spec, socket } = self;
            // SAFETY: the AsyncFd owns the socket, so the fd stays open while it is registered.
            let fd = match unsafe { AsyncFd::register(socket) } {
                Ok(fd) => fd,
                Err(e) => {
                    tracing::warn!(error = %e, "destroy notifications: cannot register with the runtime");
                    return;
                }
            };
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let ready = tokio::select! {
                    r = fd.readable() => r,
                    _ = tx.closed() => return,
                };
                let mut guard = match ready {
                    Ok(g) => g,
                    Err(_) => return,
                };
                match fd.get_ref().recv(&mut buf) {
                    Ok(n) => {
                        let hits = Self::tally(&spec, &buf[..n]);
                        if hits > 0 && tx.send(hits).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => guard.clear_ready(),
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                        // A burst overran the buffer: some notifications are lost. Say so (0 = "recount
                        // now"); the engine takes a census and counts down from it again.
                        tracing::debug!(
                            "destroy notifications overran the socket buffer; asking for a recount"
                        );
                        if tx.send(RECOUNT).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "destroy notifications failed; falling back to polling");
                        return;
                    }
                }
            }
        });
        rx
    }
}
