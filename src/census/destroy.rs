//! Socket-destroy notifications (`SKNLGRP_INET_TCP_DESTROY`, `SKNLGRP_INET6_TCP_DESTROY`): the kernel
//! tells us each TCP socket it frees, so a drain over a large socket table can count down from one
//! census instead of re-walking the table every poll.
//!
//! Where the kernel refuses the subscription (a sandbox without the sock_diag socket; kernels that ask
//! for CAP_NET_ADMIN: 6.18 lets any process subscribe, measured as uid 65534 without capabilities),
//! [`DestroyWatch::subscribe`] fails and the drain polls.
//!
//! Which notifications are ours: every destroyed TCP socket reports state CLOSE (the kernel frees a
//! socket only once it is CLOSE; one closed actively is freed when its TIME_WAIT stand-in replaces it,
//! which sends no notification of its own), so the state tells nothing about whether we counted it.
//! What does: the local port and peer (the census' own rule; a listener, whose peer is the unspecified
//! address, never counts), and the socket cookie. A counted socket got its cookie at the latest
//! census (or earlier), while one that arrived later, or was never ESTABLISHED and never dumped, gets
//! a fresh cookie at destruction. With a [`Horizon`] (see [`DestroyWatch::follow`]) only sockets the
//! latest census knew count.
//!
//! What stays approximate, in the safe direction (the drain engine confirms "zero" with a census): a
//! socket counted by an earlier census that left ESTABLISHED before the latest one is still known by
//! cookie, so its destroy is counted too; a socket only leaves ESTABLISHED some time before it is freed
//! (FIN exchange, CLOSE_WAIT until the application closes it).

use std::io;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use super::cookies::Horizon;
use super::netlink::{DiagSocket, parse, walk};
use super::{CensusError, CensusSpec};

const SKNLGRP_INET_TCP_DESTROY: u32 = 1;
const SKNLGRP_INET6_TCP_DESTROY: u32 = 3;
/// Room for a burst of notifications (each ~124 bytes, ~1 KiB with the kernel's overhead): tens of
/// thousands of sockets closing between two reads before the kernel drops any.
/// Sent on the channel when notifications were lost: the count-down must be rebased on a census.
pub const RECOUNT: usize = 0;

const RCVBUF: libc::c_int = 32 * 1024 * 1024;

pub struct DestroyWatch {
    spec: CensusSpec,
    /// The socket until the first wait registers it with the runtime.
    socket: Option<DiagSocket>,
    registered: Option<AsyncFd<DiagSocket>>,
    buf: Vec<u8>,
    horizon: Option<Horizon>,
}

fn setsockopt(fd: i32, level: i32, name: i32, value: libc::c_int) -> io::Result<()> {
    // SAFETY: an int option on our own fd.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl DestroyWatch {
    /// Subscribes now; call before the census the count-down starts from, so nothing is missed.
    pub fn subscribe(spec: &CensusSpec) -> Result<DestroyWatch, CensusError> {
        let err =
            |what: &'static str| move |source: io::Error| CensusError::Netlink { what, source };
        let socket = DiagSocket::open().map_err(err("destroy notifications: socket"))?;
        let fd = socket.fd();
        // SAFETY: fcntl on our own fd.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(err("destroy notifications: fcntl")(
                io::Error::last_os_error(),
            ));
        }
        // Beyond rmem_max needs CAP_NET_ADMIN, which the subscription needs anyway; a smaller buffer
        // only makes an overflow (reported as DestroyLost) likelier.
        if setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, RCVBUF).is_err() {
            let _ = setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, RCVBUF);
        }
        // SAFETY: a zeroed sockaddr_nl with family and groups set, bound on our own fd.
        let rc = unsafe {
            let mut addr: libc::sockaddr_nl = std::mem::zeroed();
            addr.nl_family = libc::AF_NETLINK as u16;
            addr.nl_groups =
                (1 << (SKNLGRP_INET_TCP_DESTROY - 1)) | (1 << (SKNLGRP_INET6_TCP_DESTROY - 1));
            libc::bind(
                fd,
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc < 0 {
            return Err(err(
                "destroy notifications: bind to the destroy groups (refused; some kernels ask for CAP_NET_ADMIN)",
            )(io::Error::last_os_error()));
        }
        Ok(DestroyWatch {
            spec: spec.clone(),
            socket: Some(socket),
            registered: None,
            buf: vec![0u8; 64 * 1024],
            horizon: None,
        })
    }

    /// Counts from now on only sockets that the census owning `horizon` saw at its latest count.
    /// Before that census has counted once, nothing counts.
    pub fn follow(&mut self, horizon: Horizon) {
        self.horizon = Some(horizon);
    }

    fn socket(&self) -> &DiagSocket {
        match (&self.socket, &self.registered) {
            (Some(s), _) => s,
            (None, Some(r)) => r.get_ref(),
            (None, None) => unreachable!("the socket is held in one of the two"),
        }
    }

    /// Matching destroy notifications in one received datagram.
    fn tally(&self, len: usize) -> Result<usize, CensusError> {
        let known = self.horizon.as_ref().map(Horizon::latest);
        let spec = &self.spec;
        let mut n = 0;
        walk(&self.buf[..len], None, &mut |m| {
            let s = parse(m);
            let counted = !s.peer.is_unspecified()
                && spec.counts(s.local_port, s.peer)
                && match &known {
                    None => true,
                    Some(None) => false,
                    Some(Some(set)) => set.knew(s.cookie),
                };
            n += usize::from(counted);
        })
        .map_err(|source| CensusError::Netlink {
            what: "destroy notification",
            source,
        })?;
        Ok(n)
    }

    /// Reads every notification already queued, without waiting: how many matched.
    pub fn try_next(&mut self) -> Result<usize, CensusError> {
        let mut total = 0;
        loop {
            let mut buf = std::mem::take(&mut self.buf);
            let got = self.socket().recv(&mut buf);
            self.buf = buf;
            match got {
                Ok(len) => total += self.tally(len)?,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(total),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    return Err(CensusError::DestroyLost);
                }
                Err(source) => {
                    return Err(CensusError::Netlink {
                        what: "destroy notifications: recv",
                        source,
                    });
                }
            }
        }
    }

    /// Waits until at least one matching socket was destroyed; returns how many matched since the last
    /// call. [`CensusError::DestroyLost`] means the kernel dropped some: go back to counting.
    pub async fn next(&mut self) -> Result<usize, CensusError> {
        if let Some(socket) = self.socket.take() {
            // Registered on first use, so the watch can be made outside a runtime (before the census).
            // SAFETY: the AsyncFd owns the socket, so its fd stays open while it is registered.
            match unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) } {
                Ok(fd) => self.registered = Some(fd),
                Err(e) => {
                    let (socket, source) = e.into_parts();
                    self.socket = Some(socket);
                    return Err(CensusError::Netlink {
                        what: "destroy notifications: register with the runtime",
                        source,
                    });
                }
            }
        }
        loop {
            let n = self.try_next()?;
            if n > 0 {
                return Ok(n);
            }
            let Some(fd) = &self.registered else {
                unreachable!("registered above");
            };
            let mut guard = fd.readable().await.map_err(|source| CensusError::Netlink {
                what: "destroy notifications: wait",
                source,
            })?;
            // try_next read until WouldBlock, so the readiness seen now is new or stale; clearing it
            // and reading again is correct either way (a stale one just costs one empty read).
            guard.clear_ready();
        }
    }

    /// Runs the watch as a task; the channel yields counts of matching destroyed sockets and closes if
    /// the watch fails (notifications lost: the drain polls). The task ends when the receiver is dropped.
    pub fn spawn(mut self) -> mpsc::UnboundedReceiver<usize> {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let n = tokio::select! {
                    n = self.next() => n,
                    _ = tx.closed() => return,
                };
                match n {
                    Ok(n) => {
                        if tx.send(n).is_err() {
                            return;
                        }
                    }
                    Err(CensusError::DestroyLost) => {
                        // A burst overran the buffer: ask the engine to recount, and keep watching.
                        tracing::debug!(
                            "destroy notifications lost in a burst; asking for a recount"
                        );
                        if tx.send(RECOUNT).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "socket-destroy count-down stopped; the drain polls");
                        return;
                    }
                }
            }
        });
        rx
    }
}
