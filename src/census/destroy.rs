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
//! address, never counts), and the socket cookie. With a [`Horizon`] (see [`DestroyWatch::follow`]) a
//! destroy counts against a census exactly when that census counted the socket: its cookie is in the
//! census' set ([`super::cookies`]). Each count says which census it is against ([`Counted`]), so the
//! drain counts down the count of the census it holds and nothing else. Counted this way, the
//! count-down is never below the number of that census' sockets not yet freed.
//!
//! **While a census runs** a socket may be destroyed before or after the dump reached it, and its
//! notification may be read before the census has a set. So a destroy read while a census is under way
//! is counted against the latest set (the drain still holds that count if the census fails) and its
//! cookie is kept; when the census ends the kept cookies are looked up in its set and counted against
//! it. A destroy read when no census was under way needs no keeping: the next census begins after the
//! socket was freed, so it cannot count it.
//!
//! **Lost notifications.** A burst larger than the receive buffer makes the kernel drop some and
//! report ENOBUFS: the count-down then misses decrements (it can only be high), and the watch says so
//! ([`Destroyed::Lost`]) so the drain counts again. The lost ones were freed before the report, so a
//! census that begins after it is exact again.

use std::collections::VecDeque;
use std::io;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use super::cookies::{CookieSet, Horizon, Latest};
use super::netlink::{DiagSocket, parse, walk};
use super::{CensusError, CensusSpec};

const SKNLGRP_INET_TCP_DESTROY: u32 = 1;
const SKNLGRP_INET6_TCP_DESTROY: u32 = 3;
/// Room for a burst of notifications (each ~124 bytes, ~1 KiB with the kernel's overhead): tens of
/// thousands of sockets closing between two reads before the kernel drops any.
const RCVBUF: libc::c_int = 32 * 1024 * 1024;

/// Once a turn of the watch has counted something, it reads at most this many datagrams (one
/// notification each): a wave's backlog of notifications is read in turns with the drain's own
/// between them (before, the watch read a whole backlog without yielding), and reaches the drain as
/// one count per turn instead of one per socket.
const READ_BATCH: usize = 256;

/// After a turn that read the queue empty, the watch takes its next turn at least this much later. A
/// wave's notifications come one by one, and each one the thread is woken for costs the wake-up
/// (tens of µs of CPU on a VM, tens of times the reading). Paced, the watch takes at most 500 turns
/// a second whatever the wave's rate, and a destroy reaches the count-down at most this much later.
/// Between turns the socket is off the runtime's poll: on it, each arriving datagram wakes the
/// thread even while no task waits, and pacing alone changed nothing (an agent draining 100k: 43,000
/// wake-ups of its runtime's thread). Off it, the agent's CPU from the first close to its exit went
/// from 1030 to 620 ms at the median (BENCHMARKS §3).
const TURN_EVERY: std::time::Duration = std::time::Duration::from_millis(2);

/// Counted sockets that were destroyed, against one census.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counted {
    /// The census that counted them ([`Latest::number`]); 0 for a watch that follows no horizon,
    /// where every socket on a drain port counts.
    pub census: u64,
    pub destroyed: usize,
}

/// What a watch running as a task ([`DestroyWatch::spawn`]) sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destroyed {
    Counted(Counted),
    /// Notifications were lost (a burst overran the receive buffer): a count-down from a census that
    /// began before this may be high. Count again.
    Lost,
}

/// What a watch makes of the notifications it reads, apart from the socket (so it is tested with
/// made-up ones).
#[derive(Debug)]
struct Tally {
    spec: CensusSpec,
    horizon: Option<Horizon>,
    /// Cookies of matching sockets destroyed while census `.0` was under way, to look up in its set
    /// once it is published.
    kept: Option<(u64, CookieSet)>,
    ready: VecDeque<Counted>,
}

impl Tally {
    fn new(spec: CensusSpec) -> Tally {
        Tally {
            spec,
            horizon: None,
            kept: None,
            ready: VecDeque::new(),
        }
    }

    /// Looks the kept cookies up once the census they wait for has ended. A census that failed, or was
    /// followed by another before this ran, has no set to look them up in: dropping them leaves a
    /// count-down high, never low (the drain counts down only the latest census it holds, and a later
    /// census began after those sockets were freed).
    fn settle(&mut self, latest: &Latest) {
        let Some((awaited, cookies)) = &self.kept else {
            return;
        };
        if *awaited == latest.number + 1 && latest.under_way {
            return;
        }
        if *awaited == latest.number
            && let Some(set) = &latest.set
        {
            let destroyed = cookies.common(set) as usize;
            if destroyed > 0 {
                Self::count(
                    &mut self.ready,
                    Counted {
                        census: *awaited,
                        destroyed,
                    },
                );
            }
        }
        self.kept = None;
    }

    /// Looks up the kept cookies if their census ended meanwhile.
    fn refresh(&mut self) {
        if let Some(latest) = self.horizon.as_ref().map(Horizon::latest) {
            self.settle(&latest);
        }
    }

    /// One datagram of notifications.
    fn datagram(&mut self, buf: &[u8]) -> Result<(), CensusError> {
        // Read after the datagram was received: if no census is under way now, none that begins later
        // can have counted these sockets.
        let latest = self.horizon.as_ref().map(Horizon::latest);
        if let Some(latest) = &latest {
            self.settle(latest);
        }
        let Tally { spec, kept, .. } = self;
        let mut destroyed = 0;
        walk(buf, None, &mut |m| {
            let s = parse(m);
            if s.peer.is_unspecified() || !spec.counts(s.local_port, s.peer) {
                return;
            }
            let Some(latest) = &latest else {
                destroyed += 1;
                return;
            };
            if latest
                .set
                .as_ref()
                .is_some_and(|set| set.contains(s.cookie))
            {
                destroyed += 1;
            }
            if latest.under_way {
                kept.get_or_insert_with(|| (latest.number + 1, CookieSet::new()))
                    .1
                    .insert(s.cookie);
            }
        })
        .map_err(|source| CensusError::Netlink {
            what: "destroy notification",
            source,
        })?;
        if destroyed > 0 {
            Self::count(
                &mut self.ready,
                Counted {
                    census: latest.map_or(0, |l| l.number),
                    destroyed,
                },
            );
        }
        Ok(())
    }

    /// Queues a count, adding it to the last one when that is against the same census: what the drain
    /// makes of them is the same, in one message.
    fn count(ready: &mut VecDeque<Counted>, counted: Counted) {
        match ready.back_mut() {
            Some(last) if last.census == counted.census => {
                last.destroyed = last.destroyed.saturating_add(counted.destroyed);
            }
            _ => ready.push_back(counted),
        }
    }
}

pub struct DestroyWatch {
    /// The socket until the first wait registers it with the runtime.
    socket: Option<DiagSocket>,
    registered: Option<AsyncFd<DiagSocket>>,
    buf: Vec<u8>,
    tally: Tally,
    /// The kernel reported dropped notifications (ENOBUFS) after the counts still in `tally.ready`:
    /// said once those are taken.
    lost: bool,
    /// The latest turn stopped at [`READ_BATCH`], with more queued.
    backlog: bool,
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
            socket: Some(socket),
            registered: None,
            buf: vec![0u8; 64 * 1024],
            tally: Tally::new(spec.clone()),
            lost: false,
            backlog: false,
        })
    }

    /// Counts from now on only sockets that the census owning `horizon` counted, each against the
    /// census that counted it. One watch follows a horizon.
    pub fn follow(&mut self, horizon: Horizon) {
        self.tally.horizon = Some(horizon);
    }

    fn socket(&self) -> &DiagSocket {
        match (&self.socket, &self.registered) {
            (Some(s), _) => s,
            (None, Some(r)) => r.get_ref(),
            (None, None) => unreachable!("the socket is held in one of the two"),
        }
    }

    /// The next count of destroyed sockets from what is already queued, without waiting; `None` when
    /// everything queued was read and nothing (more) matched. A count holds what one turn read: up to
    /// `READ_BATCH` (256) notifications past the first that counted, against one census.
    pub fn try_next(&mut self) -> Result<Option<Counted>, CensusError> {
        self.tally.refresh();
        if self.tally.ready.is_empty() && !self.lost {
            self.read_turn()?;
        }
        if let Some(counted) = self.tally.ready.pop_front() {
            return Ok(Some(counted));
        }
        if std::mem::take(&mut self.lost) {
            return Err(CensusError::DestroyLost);
        }
        Ok(None)
    }

    /// Reads datagrams until one counted and [`READ_BATCH`] more were read, the queue is empty
    /// (`WouldBlock`, which the caller's wait relies on when nothing counted), or the kernel reports
    /// dropped ones.
    fn read_turn(&mut self) -> Result<(), CensusError> {
        let mut buf = std::mem::take(&mut self.buf);
        let mut read = 0usize;
        self.backlog = false;
        let result = loop {
            if read > READ_BATCH && !self.tally.ready.is_empty() {
                self.backlog = true;
                break Ok(());
            }
            match self.socket().recv(&mut buf) {
                Ok(len) => {
                    read += 1;
                    if let Err(e) = self.tally.datagram(&buf[..len]) {
                        break Err(e);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    self.lost = true;
                    break Ok(());
                }
                Err(source) => {
                    break Err(CensusError::Netlink {
                        what: "destroy notifications: recv",
                        source,
                    });
                }
            }
        };
        self.buf = buf;
        result
    }

    /// Takes the socket off the runtime's poll; the next wait registers it again, and what came
    /// meanwhile is read then.
    fn unregister(&mut self) {
        if let Some(fd) = self.registered.take() {
            self.socket = Some(fd.into_inner());
        }
    }

    /// Waits until matching sockets were destroyed: how many, against which census.
    /// [`CensusError::DestroyLost`] means the kernel dropped some: go back to counting.
    pub async fn next(&mut self) -> Result<Counted, CensusError> {
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
            if let Some(counted) = self.try_next()? {
                return Ok(counted);
            }
            let Some(fd) = &self.registered else {
                unreachable!("registered above");
            };
            let census_ended = async {
                match &self.tally.horizon {
                    Some(h) => h.ended().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ready = fd.readable() => {
                    let mut guard = ready.map_err(|source| CensusError::Netlink {
                        what: "destroy notifications: wait",
                        source,
                    })?;
                    // try_next read until WouldBlock, so the readiness seen now is new or stale;
                    // clearing it and reading again is correct either way (a stale one just costs
                    // one empty read).
                    guard.clear_ready();
                }
                // The kept cookies can be looked up now: the census' last sockets may have been
                // destroyed while it ran, and no other notification may come to wake us.
                () = census_ended => {}
            }
        }
    }

    /// Runs the watch as a task. The channel yields counts of destroyed sockets, each against the
    /// census that counted them, and [`Destroyed::Lost`] when the kernel dropped notifications; it
    /// closes if the watch fails otherwise (the drain then polls). The task ends when the receiver is
    /// dropped.
    pub fn spawn(mut self) -> mpsc::UnboundedReceiver<Destroyed> {
        let (tx, rx) = mpsc::unbounded_channel();
        let horizon = self.tally.horizon.clone();
        let watch = async move {
            loop {
                let next = tokio::select! {
                    next = self.next() => next,
                    _ = tx.closed() => return,
                };
                let sent = match next {
                    Ok(counted) => tx.send(Destroyed::Counted(counted)),
                    Err(CensusError::DestroyLost) => {
                        // A burst overran the buffer: ask the engine to recount, and keep watching.
                        tracing::debug!(
                            "destroy notifications lost in a burst; asking for a recount"
                        );
                        tx.send(Destroyed::Lost)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "socket-destroy count-down stopped; the drain polls");
                        return;
                    }
                };
                if sent.is_err() {
                    return;
                }
                // A backlog is read a turn at a time: the drain, on this thread too, takes each count
                // before the next turn. Once the queue was read empty, the next turn waits (see
                // [`TURN_EVERY`]) and reads what came meanwhile in one go.
                if self.backlog {
                    tokio::task::yield_now().await;
                } else {
                    // Off the runtime's poll meanwhile: registered, every datagram that arrives
                    // wakes the thread, whether a task waits for it or not.
                    self.unregister();
                    tokio::time::sleep(TURN_EVERY).await;
                }
            }
        };
        // Its polls, counted by the horizon: the drain's rechecks measure their wake-up only when
        // the watch did not run since the previous one.
        tokio::spawn(Polled {
            inner: Box::pin(watch),
            horizon,
        });
        rx
    }
}

/// A future whose polls are counted by `horizon` (see [`Horizon::watch_polls`]).
struct Polled<F> {
    inner: std::pin::Pin<Box<F>>,
    horizon: Option<Horizon>,
}

impl<F: std::future::Future> std::future::Future for Polled<F> {
    type Output = F::Output;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        if let Some(h) = &self.horizon {
            h.watched();
        }
        self.inner.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::census::netlink::{DIAG_MSG_LEN, SOCK_DIAG_BY_FAMILY};

    const PORT: u16 = 8080;

    /// A destroy notification as the kernel sends it: state CLOSE, local `port`, peer `peer`.
    fn destroy(port: u16, peer: [u8; 4], cookie: u64) -> Vec<u8> {
        let mut m = vec![0u8; DIAG_MSG_LEN];
        m[0] = libc::AF_INET as u8;
        m[1] = 7; // TCP_CLOSE
        m[4..6].copy_from_slice(&port.to_be_bytes());
        m[8..12].copy_from_slice(&[10, 0, 0, 1]);
        m[24..28].copy_from_slice(&peer);
        m[44..48].copy_from_slice(&(cookie as u32).to_ne_bytes());
        m[48..52].copy_from_slice(&((cookie >> 32) as u32).to_ne_bytes());
        let mut msg = Vec::new();
        msg.extend_from_slice(&((16 + m.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        msg.extend_from_slice(&0u16.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes()); // notifications carry no sequence
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&m);
        msg
    }

    /// One datagram with the destroys of these cookies (counted port, a client's peer).
    fn destroyed(cookies: &[u64]) -> Vec<u8> {
        cookies
            .iter()
            .flat_map(|&c| destroy(PORT, [10, 0, 0, 7], c))
            .collect()
    }

    fn spec() -> CensusSpec {
        CensusSpec {
            ports: vec![PORT],
            exclude_peers: vec!["192.168.0.0/16".parse().unwrap()],
        }
    }

    fn following() -> (Tally, Horizon) {
        let horizon = Horizon::default();
        let mut tally = Tally::new(spec());
        tally.horizon = Some(horizon.clone());
        (tally, horizon)
    }

    fn set(cookies: &[u64]) -> Arc<CookieSet> {
        let mut s = CookieSet::new();
        for &c in cookies {
            s.insert(c);
        }
        Arc::new(s)
    }

    /// A census from begin to end, counting `cookies`.
    fn census(horizon: &Horizon, cookies: &[u64]) -> u64 {
        horizon.begin();
        horizon.publish(set(cookies))
    }

    /// The drain measures its rechecks' wake-ups only when the watch did not run since the
    /// previous one: the horizon counts the watch's polls.
    #[tokio::test]
    async fn the_horizon_counts_the_polls_of_the_watch() {
        let horizon = Horizon::default();
        let busy = async {
            for _ in 0..3 {
                tokio::task::yield_now().await;
            }
        };
        let polled = Polled {
            inner: Box::pin(busy),
            horizon: Some(horizon.clone()),
        };
        polled.await;
        assert_eq!(horizon.watch_polls(), 4);
    }

    fn drain(tally: &mut Tally) -> Vec<Counted> {
        tally.refresh();
        tally.ready.drain(..).collect()
    }

    fn counted(census: u64, destroyed: usize) -> Counted {
        Counted { census, destroyed }
    }

    #[test]
    fn a_socket_an_earlier_census_counted_is_not_taken_off_the_latest() {
        // Census 1 counts sockets 100 and 101 (cookies numbered together, one batch). 100 leaves
        // ESTABLISHED (half-closed, FIN_WAIT2 until its peer answers), so census 2 counts only 101.
        // Then 100 is freed: the latest census never counted it. The batch rule knew it (its batch
        // was seen, 100 is below the batch's largest cookie) and took it off census 2's count.
        let (mut tally, horizon) = following();
        assert_eq!(census(&horizon, &[100, 101]), 1);
        assert_eq!(census(&horizon, &[101]), 2);
        tally.datagram(&destroyed(&[100])).unwrap();
        assert_eq!(drain(&mut tally), vec![], "not counted by census 2");
        tally.datagram(&destroyed(&[101])).unwrap();
        assert_eq!(drain(&mut tally), vec![counted(2, 1)]);
    }

    #[test]
    fn a_cookie_next_to_counted_ones_is_not_counted() {
        // A socket numbered between two counted ones (by another dump, SO_COOKIE, ...) that this
        // census did not count: not ESTABLISHED then, or arrived after its dump passed.
        let (mut tally, horizon) = following();
        census(&horizon, &[100, 102]);
        tally.datagram(&destroyed(&[101, 102])).unwrap();
        assert_eq!(drain(&mut tally), vec![counted(1, 1)]);
    }

    #[test]
    fn sockets_destroyed_while_a_census_runs_count_against_it_once_it_publishes() {
        let (mut tally, horizon) = following();
        census(&horizon, &[1, 2, 3, 4]);
        horizon.begin();
        // While census 2 runs: 1 is destroyed after its dump counted it, 2 before the dump reached
        // it. Both count against census 1 (the drain holds that count if census 2 fails), and wait.
        tally.datagram(&destroyed(&[1, 2])).unwrap();
        assert_eq!(drain(&mut tally), vec![counted(1, 2)]);
        assert_eq!(horizon.publish(set(&[1, 3, 4])), 2);
        assert_eq!(
            drain(&mut tally),
            vec![counted(2, 1)],
            "1 was in census 2's count, 2 was not"
        );
        assert!(tally.kept.is_none());
        tally.datagram(&destroyed(&[3])).unwrap();
        assert_eq!(drain(&mut tally), vec![counted(2, 1)]);
    }

    #[test]
    fn a_destroy_read_before_a_census_began_is_not_looked_up_in_its_set() {
        let (mut tally, horizon) = following();
        census(&horizon, &[1, 2]);
        tally.datagram(&destroyed(&[1])).unwrap();
        assert_eq!(drain(&mut tally), vec![counted(1, 1)]);
        assert!(tally.kept.is_none(), "nothing was under way: nothing kept");
        census(&horizon, &[2]);
        assert_eq!(drain(&mut tally), vec![]);
    }

    #[test]
    fn a_failed_census_leaves_the_count_against_the_latest_one() {
        let (mut tally, horizon) = following();
        census(&horizon, &[1, 2]);
        horizon.begin();
        tally.datagram(&destroyed(&[1])).unwrap();
        horizon.abandon();
        assert_eq!(drain(&mut tally), vec![counted(1, 1)]);
        assert!(tally.kept.is_none());
        // The next census gets the same number; what was kept for the failed one is gone.
        assert_eq!(census(&horizon, &[2]), 2);
        assert_eq!(drain(&mut tally), vec![]);
    }

    #[test]
    fn cookies_kept_for_a_census_that_was_followed_by_another_are_dropped() {
        // The watch did not run between census 2 and census 3 (a confirming census reads twice):
        // what it kept during census 2 was freed before census 3 began.
        let (mut tally, horizon) = following();
        census(&horizon, &[1, 2]);
        horizon.begin();
        tally.datagram(&destroyed(&[1])).unwrap();
        horizon.publish(set(&[1, 2]));
        horizon.begin();
        horizon.publish(set(&[2]));
        assert_eq!(drain(&mut tally), vec![counted(1, 1)]);
        assert!(tally.kept.is_none());
    }

    #[test]
    fn before_the_first_census_nothing_counts_but_its_own_sockets_do_once_it_publishes() {
        let (mut tally, horizon) = following();
        tally.datagram(&destroyed(&[1])).unwrap();
        assert_eq!(drain(&mut tally), vec![]);
        horizon.begin();
        tally.datagram(&destroyed(&[2, 3])).unwrap();
        horizon.publish(set(&[2, 4]));
        assert_eq!(drain(&mut tally), vec![counted(1, 1)]);
    }

    #[test]
    fn other_ports_excluded_peers_and_listeners_never_count() {
        let mut tally = Tally::new(spec());
        let mut buf = destroy(PORT + 1, [10, 0, 0, 7], 1);
        buf.extend(destroy(PORT, [192, 168, 1, 1], 2));
        buf.extend(destroy(PORT, [0, 0, 0, 0], 3));
        buf.extend(destroy(PORT, [10, 0, 0, 8], 4));
        tally.datagram(&buf).unwrap();
        assert_eq!(
            drain(&mut tally),
            vec![counted(0, 1)],
            "without a horizon, every socket on a drain port counts"
        );
    }
}
