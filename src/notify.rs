//! systemd integration over the notify socket: `READY=1` once memberships and credentials are in
//! hand, a live `STATUS=` line, `STOPPING=1`, `EXTEND_TIMEOUT_USEC=` while the drain is making
//! progress, and `WATCHDOG=1` when the unit sets `WatchdogSec=`.
//!
//! The extension is what lets a unit keep a short `TimeoutStopSec=` and still drain for as long as
//! connections keep closing: each one reaches `drain.stall_timeout` ahead, and it is renewed (at most
//! once a second) only after fresh progress, so a drain stalled that long (a connection held open,
//! nothing closing) is left to the unit's own timeout instead of being kept alive to its deadline.
//! Deregistering and settling count as progress throughout: they are the stop's own steps, bounded by
//! their own deadlines.
//!
//! # Never blocking on the manager
//!
//! The socket is a datagram socket whose queue holds `net.unix.max_dgram_qlen` messages (10 by
//! default) for a reader that is not reading: a PID 1 busy in a mass shutdown, a container runtime that
//! passes `NOTIFY_SOCKET` and reads it late. A blocking send would then hang the stop (before this, the
//! agent did not even send its DELETEs). So every send is one non-blocking `sendto(2)`, and what does
//! not fit waits in an outbox that holds at most one of each field:
//!
//! * `STATUS=` lines are coalesced, the latest wins: at most one a second (or one per poll interval, if
//!   that is longer), counted from when the previous line was sent, except that a change of phase
//!   (and the final verdict) is always sent at once.
//!   While the queue is full a pending line is replaced by the next, and dropped if it cannot go.
//! * `READY=1`, `STOPPING=1`, `EXTEND_TIMEOUT_USEC=` and `WATCHDOG=1` are retried in this module's own
//!   small task (the caller never waits): after 10 ms, doubling up to 250 ms apart, for [`RETRY_FOR`]
//!   (2 s). Then the extension, ping and status are dropped (their successors follow while they still
//!   matter). READY and STOPPING say what state the service is in, and nothing else says it again:
//!   a READY lost while serving (which sends nothing more unless `WatchdogSec=` is set) would leave
//!   the manager waiting until its `TimeoutStartSec=`, and then stopping (draining) a server that is
//!   serving. So while one of them is still not taken, it is tried once every [`RETRY_SLOW`] (1 s),
//!   for as long as the queue stays full, and goes with anything new meanwhile (which gets a 2 s of
//!   its own). These are the only wake-ups a stalled manager costs; once everything is taken, or
//!   given up, the task sleeps until there is something new to say.
//! * A send that fails for another reason than a full queue (the socket is gone: the manager is not
//!   listening at all) is not retried: READY and STOPPING then wait for the next message to ride along.
//! * Whatever is pending is sent as one datagram, so a queue that frees one slot takes all of it.
//! * The first loss is said once in the log (not per message); at exit one last non-blocking send is
//!   tried and what is left is dropped: the process's exit is the news the manager acts on then.
//!
//! `NOTIFY_SOCKET` is a path or an abstract name (`@name`). Without it every call is a no-op, so the
//! same code runs under systemd, in a container and at a terminal.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::drain::{Event, Phase, Sink, Verdict};

/// Extensions are renewed at most this often, however fast the drain reports.
const RENEW_EVERY: Duration = Duration::from_secs(1);

/// Slack past the drain's own deadline that an extension may reach: time for the verdict to be acted
/// on (the hook answered, the process exiting) after the deadline.
const PAST_DEADLINE: Duration = Duration::from_secs(5);

/// Progress `STATUS=` lines go at most this often (or once per poll interval, if that is longer).
const STATUS_EVERY: Duration = Duration::from_secs(1);

/// How long a message the manager could not take is tried again before it is given up. The stop
/// never waits for it (the retries are the notifier's own task), so this only decides when a message
/// stops being worth a wake-up: a manager that reads at all empties its queue on every turn of its
/// event loop, so one still full after 2 s has stalled; what is retried is renewed while it still
/// matters (an extension at each second of progress, a ping every half `WatchdogSec=`), each renewal
/// with its own 2 s; and an extension sent this late reaches at most 2 s past what it meant, within
/// `PAST_DEADLINE`.
pub const RETRY_FOR: Duration = Duration::from_secs(2);
const RETRY_FIRST: Duration = Duration::from_millis(10);
const RETRY_MAX_GAP: Duration = Duration::from_millis(250);

/// How often READY or STOPPING is tried once [`RETRY_FOR`] has passed with the queue still full: until
/// it is taken, since nothing else would say it (a manager that reads again after 10 s gets READY
/// within a second, not at its `TimeoutStartSec=`). One wake-up a second while the manager is not
/// reading, none once it has taken them.
pub const RETRY_SLOW: Duration = Duration::from_secs(1);

pub struct Notifier {
    link: Option<Arc<Link>>,
    state: Mutex<State>,
}

struct State {
    /// How far ahead an extension reaches, and so how long a stalled drain keeps its stop time.
    stall_timeout: Duration,
    /// The last STATUS= line said, so an unchanged line is not sent again at every census.
    last_status: String,
    phase: Option<Phase>,
    deregistered: (usize, usize),
    established: Option<usize>,
    /// Progress seen since the last extension: the next one is earned.
    progressed: bool,
    last_extend: Option<Instant>,
    deadline_in: Option<Duration>,
}

/// One notify field, before it is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Message {
    Ready,
    Stopping,
    /// A STATUS= line that says something new happened (a phase, the verdict): sent at once.
    Status(String),
    /// A STATUS= line that only says how far the drain is: at most one per status interval.
    Progress(String),
    Extend(Duration),
    Watchdog,
}

impl Notifier {
    /// Talks to systemd when `NOTIFY_SOCKET` is set. `stall_timeout` is `drain.stall_timeout`,
    /// `poll_interval` is `drain.poll_interval` (progress lines come no faster than either it or 1 s).
    pub fn from_env(stall_timeout: Duration, poll_interval: Duration) -> Notifier {
        let link = std::env::var_os("NOTIFY_SOCKET").and_then(|s| match target(&s) {
            Ok(target) => Some(Link::open(target, poll_interval)),
            Err(e) => {
                tracing::warn!(notify_socket = ?s, error = %e, "NOTIFY_SOCKET cannot be used: systemd is not told anything");
                None
            }
        });
        Notifier {
            link,
            state: Mutex::new(State::new(stall_timeout)),
        }
    }

    fn deliver(&self, messages: Vec<Message>) {
        if let Some(link) = &self.link {
            link.deliver(messages);
        }
    }

    /// Start-up is over: READY=1 with the status line that says so.
    pub fn ready(&self, status: &str) {
        self.deliver(vec![Message::Ready, Message::Status(status.to_owned())]);
    }

    /// A new step of starting or stopping, said at once.
    pub fn status(&self, status: &str) {
        self.lock().last_status = status.to_owned();
        self.deliver(vec![Message::Status(status.to_owned())]);
    }

    /// The stop began: tell systemd, and ask for time for the first steps.
    pub fn stopping(&self, total_members: usize) {
        let line = "stopping: deregistering".to_owned();
        let mut messages = vec![Message::Stopping, Message::Status(line.clone())];
        let mut st = self.lock();
        st.last_status = line;
        messages.extend(st.stopping(total_members, Instant::now()));
        drop(st);
        self.deliver(messages);
    }

    /// `exec`: the drain is over and the supervised application is being stopped. Its grace period is
    /// stop time the unit must allow too, or a short `TimeoutStopSec` would SIGKILL it mid-shutdown.
    pub fn stopping_child(&self, pid: i32, signal: &str, grace: Duration) {
        let line = format!(
            "stopping the application (pid {pid}, {signal}, grace {} s)",
            grace.as_secs()
        );
        self.lock().last_status.clone_from(&line);
        let ask = grace + PAST_DEADLINE;
        if ask.as_micros() > u128::from(u32::MAX) {
            tracing::warn!(
                grace_s = grace.as_secs(),
                "the notify protocol asks for at most 71 minutes more: the unit's TimeoutStopSec must cover the rest of --grace"
            );
        }
        self.deliver(vec![Message::Status(line), Message::Extend(ask)]);
    }

    /// One more membership is out of its pool.
    pub fn deregistered(&self, done: usize, total: usize) {
        let messages = self.lock().deregistered(done, total);
        self.deliver(messages);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends `WATCHDOG=1` at half the unit's `WatchdogSec=` until the process exits. Does nothing when
    /// the unit has no watchdog: no periodic wake-ups unless asked for.
    pub fn spawn_watchdog(&'static self) {
        let mut usec = 0;
        if self.link.is_none() || !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
            return;
        }
        let period = Duration::from_micros(usec) / 2;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                self.deliver(vec![Message::Watchdog]);
            }
        });
    }
}

/// At exit: one last non-blocking try of whatever is still pending, then it is dropped (and said,
/// if no loss was said before). Never waits.
pub fn finish() {
    if let Some(link) = OPEN.get() {
        link.finish(Instant::now());
    }
}

/// The link opened by this process, for [`finish`].
static OPEN: OnceLock<Arc<Link>> = OnceLock::new();

impl State {
    fn new(stall_timeout: Duration) -> State {
        State {
            stall_timeout,
            last_status: String::new(),
            phase: None,
            deregistered: (0, 0),
            established: None,
            progressed: false,
            last_extend: None,
            deadline_in: None,
        }
    }

    fn stopping(&mut self, total_members: usize, now: Instant) -> Vec<Message> {
        self.deregistered = (0, total_members);
        self.progressed = true;
        self.extend_if_earned(now).into_iter().collect()
    }

    fn deregistered(&mut self, done: usize, total: usize) -> Vec<Message> {
        self.deregistered = (done, total);
        self.progressed = true;
        let line = status_line(self);
        self.last_status.clone_from(&line);
        vec![Message::Progress(line)]
    }

    /// How far the next extension reaches: the stall window, but not past the drain's own deadline.
    fn reach(&self) -> Duration {
        self.deadline_in.map_or(self.stall_timeout, |d| {
            (d + PAST_DEADLINE).min(self.stall_timeout)
        })
    }

    fn extend_if_earned(&mut self, now: Instant) -> Option<Message> {
        let due = self
            .last_extend
            .is_none_or(|t| now.saturating_duration_since(t) >= RENEW_EVERY);
        if !(self.progressed && due) {
            return None;
        }
        self.progressed = false;
        self.last_extend = Some(now);
        Some(Message::Extend(self.reach()))
    }

    /// What `event` changes in what systemd is told.
    fn on_event(&mut self, event: &Event, now: Instant) -> Vec<Message> {
        let mut phase_changed = false;
        match event {
            Event::PhaseChanged { phase, .. } => {
                self.phase = Some(*phase);
                self.progressed = true;
                phase_changed = true;
                if matches!(phase, Phase::Drained | Phase::TimedOut) {
                    // The verdict line follows at once and says it better.
                    return Vec::new();
                }
            }
            Event::Progress {
                established,
                deadline_in,
            } => {
                let fewer = self.established.is_none_or(|prev| *established < prev);
                let own_step = matches!(self.phase, Some(Phase::Deregistering | Phase::Settling));
                if fewer || own_step {
                    self.progressed = true;
                }
                self.established = Some(*established);
                self.deadline_in = Some(*deadline_in);
            }
            Event::NewConnections { .. } => self.progressed = true,
            Event::Finished { verdict, .. } => {
                let line = match verdict {
                    Verdict::Drained => "drained".to_owned(),
                    Verdict::TimedOut { remaining } => {
                        format!("deadline reached, {remaining} connections open")
                    }
                    Verdict::DeregistrationFailed { .. } => {
                        "deregistration failed; drain waited out".to_owned()
                    }
                };
                self.last_status.clone_from(&line);
                return vec![Message::Status(line)];
            }
            // Nothing the status line or an extension depends on; after the verdict, too (the poll
            // interval can still be said then), where a line would take the verdict's place.
            Event::Deadline { .. }
            | Event::Settled { .. }
            | Event::CensusFailed { .. }
            | Event::PollInterval { .. } => return Vec::new(),
        }
        let mut out = Vec::new();
        let line = status_line(self);
        if line != self.last_status {
            self.last_status.clone_from(&line);
            out.push(if phase_changed {
                Message::Status(line)
            } else {
                Message::Progress(line)
            });
        }
        out.extend(self.extend_if_earned(now));
        out
    }
}

/// "deregistered 3/3, draining: 12 connections, 41 s left"
fn status_line(st: &State) -> String {
    let (done, total) = st.deregistered;
    let mut line = format!("deregistered {done}/{total}");
    if let Some(phase) = st.phase {
        line.push_str(", ");
        line.push_str(phase.as_str());
    }
    if let Some(n) = st.established {
        line.push_str(&format!(": {n} connections"));
    }
    if let Some(left) = st.deadline_in {
        line.push_str(&format!(", {} s left", left.as_secs()));
    }
    line
}

impl Sink for Notifier {
    fn emit(&self, event: &Event) {
        let Some(link) = &self.link else { return };
        if let Event::PollInterval { interval, .. } = event {
            link.outbox().status_every = (*interval).max(STATUS_EVERY);
        }
        let messages = self.lock().on_event(event, Instant::now());
        link.deliver(messages);
    }
}

/// Where `NOTIFY_SOCKET` points: a path, or `@name` in the abstract namespace.
fn target(value: &std::ffi::OsStr) -> io::Result<SocketAddr> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = value.as_bytes();
    match bytes.split_first() {
        Some((b'@', name)) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name)
        }
        Some((b'/', _)) => SocketAddr::from_pathname(value),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "neither an absolute path nor @abstract (vsock: is not supported)",
        )),
    }
}

/// The socket, what waits to be sent, and the task that retries it.
struct Link {
    socket: Option<UnixDatagram>,
    to: SocketAddr,
    outbox: Mutex<Outbox>,
    /// Wakes the retry task: something is pending.
    wake: tokio::sync::Notify,
    warned: AtomicBool,
}

impl Link {
    fn open(to: SocketAddr, poll_interval: Duration) -> Arc<Link> {
        // Non-blocking, so a sendto(2) that finds the queue full fails at once with EAGAIN
        // (MSG_DONTWAIT on every call). Close-on-exec: `exec`'s child does not inherit it.
        let socket = UnixDatagram::unbound()
            .and_then(|s| s.set_nonblocking(true).map(|()| s))
            .map_err(|e| tracing::warn!(error = %e, "cannot open a socket for NOTIFY_SOCKET"))
            .ok();
        let link = Arc::new(Link {
            socket,
            to,
            outbox: Mutex::new(Outbox::new(poll_interval.max(STATUS_EVERY))),
            wake: tokio::sync::Notify::new(),
            warned: AtomicBool::new(false),
        });
        // Outside a runtime (unit tests) there is no retry task: the next message retries.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(link.clone().retry());
        }
        let _ = OPEN.set(link.clone());
        link
    }

    fn outbox(&self) -> std::sync::MutexGuard<'_, Outbox> {
        self.outbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn deliver(&self, messages: Vec<Message>) {
        let now = Instant::now();
        {
            let mut outbox = self.outbox();
            for m in messages {
                outbox.push(m, now);
            }
        }
        if self.attempt(now, false).is_some() {
            self.wake.notify_one();
        }
    }

    /// Sends what is due (one datagram), if anything. Returns when to try again.
    fn attempt(&self, now: Instant, last: bool) -> Option<Instant> {
        let mut outbox = self.outbox();
        if let Some(datagram) = outbox.compose(now, last) {
            let sent = match &self.socket {
                Some(s) => s
                    .send_to_addr(datagram.text.as_bytes(), &self.to)
                    .map(|_| ()),
                None => Err(io::Error::from(io::ErrorKind::NotConnected)),
            };
            match sent {
                // Pacing counts from the send itself: the manager sees progress lines at least a
                // status interval apart even when this thread was delayed between `now` and here.
                Ok(()) => {
                    if outbox.slow {
                        tracing::debug!(message = %datagram.text.trim_end(), "notify: taken at last");
                    }
                    outbox.sent(&datagram, Instant::now().max(now));
                }
                Err(e) => {
                    let full = matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) || e.raw_os_error() == Some(libc::ENOBUFS);
                    // Tried once a second while READY/STOPPING wait for a stalled manager: said
                    // when that begins, not at every try.
                    let was_slow = outbox.slow;
                    if !was_slow {
                        tracing::debug!(error = %e, message = %datagram.text.trim_end(), "notify: not sent");
                    }
                    outbox.failed(now, full && !last);
                    if outbox.slow && !was_slow {
                        tracing::debug!(
                            failing_ms = RETRY_FOR.as_millis() as u64,
                            retry_every_ms = RETRY_SLOW.as_millis() as u64,
                            "notify: the manager is not reading; READY/STOPPING are tried until taken"
                        );
                    }
                    if !full {
                        self.warn_once(&e.to_string());
                    }
                }
            }
        }
        if outbox.dropped > 0 {
            self.warn_once("its queue is full: the manager is not reading");
        }
        outbox.next_wake(now)
    }

    fn warn_once(&self, why: &str) {
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                why,
                "notify socket: messages to the service manager were dropped (said once; the stop goes on)"
            );
        }
    }

    /// Retries with backoff and sends a held progress line when its turn comes; asleep otherwise.
    async fn retry(self: Arc<Link>) {
        loop {
            let woken = self.wake.notified();
            match self.attempt(Instant::now(), false) {
                Some(at) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at.into()) => {}
                        () = woken => {}
                    }
                }
                None => woken.await,
            }
        }
    }

    fn finish(&self, now: Instant) {
        self.attempt(now, true);
        let mut outbox = self.outbox();
        let left = u64::from(std::mem::take(&mut outbox.ready))
            + u64::from(std::mem::take(&mut outbox.stopping));
        outbox.dropped += left;
        if left > 0 {
            self.warn_once("its queue is full at exit: the manager is not reading");
        }
        tracing::debug!(
            datagrams = outbox.datagrams,
            dropped = outbox.dropped,
            "notify: done"
        );
        outbox.datagrams = 0;
    }
}

/// One datagram: the pending fields, in the order systemd's documentation shows them.
#[derive(Debug)]
struct Datagram {
    text: String,
    with_status: bool,
}

/// What waits to be sent: at most one of each field, so it never grows. Pure (instants are given), so
/// coalescing, pacing and the bounded retry are tested without a socket.
#[derive(Debug)]
struct Outbox {
    ready: bool,
    stopping: bool,
    status: Option<String>,
    /// When the pending status may go: now for a new phase, else a status interval after the last.
    status_due: Option<Instant>,
    extend: Option<Duration>,
    watchdog: bool,
    /// Progress lines go at most this often.
    status_every: Duration,
    last_status_at: Option<Instant>,
    /// Since when sends have failed with a full queue, and when to try next.
    failing_since: Option<Instant>,
    retry_at: Option<Instant>,
    retry_gap: Duration,
    /// Past [`RETRY_FOR`] with the queue still full and READY or STOPPING not taken: tried every
    /// [`RETRY_SLOW`] until they are.
    slow: bool,
    /// Retries given up (the socket is gone, not full): what is left (READY, STOPPING) waits for the
    /// next message to ride along.
    parked: bool,
    /// Fields that never reached the manager.
    dropped: u64,
    datagrams: u64,
}

impl Outbox {
    fn new(status_every: Duration) -> Outbox {
        Outbox {
            ready: false,
            stopping: false,
            status: None,
            status_due: None,
            extend: None,
            watchdog: false,
            status_every,
            last_status_at: None,
            failing_since: None,
            retry_at: None,
            retry_gap: RETRY_FIRST,
            slow: false,
            parked: false,
            dropped: 0,
            datagrams: 0,
        }
    }

    fn push(&mut self, m: Message, now: Instant) {
        // Something new to say: worth new tries at once, with a bound of its own, for it and for
        // what was parked or is being tried slowly.
        if self.parked || self.slow {
            self.parked = false;
            self.slow = false;
            self.failing_since = None;
            self.retry_at = None;
            self.retry_gap = RETRY_FIRST;
        }
        match m {
            Message::Ready => self.ready = true,
            Message::Stopping => self.stopping = true,
            Message::Status(line) => self.set_status(line, now),
            Message::Progress(line) => {
                let due = self
                    .last_status_at
                    .map_or(now, |t| (t + self.status_every).max(now));
                self.set_status(line, due);
            }
            // A later extension counts from its own receipt: it replaces an earlier one.
            Message::Extend(d) => self.extend = Some(d),
            Message::Watchdog => self.watchdog = true,
        }
    }

    /// The latest line wins; it goes at the earlier of its turn and the replaced line's. Replacing a
    /// line that is pending because the queue is full loses it.
    fn set_status(&mut self, line: String, due: Instant) {
        if self.status.is_some() && self.failing_since.is_some() {
            self.dropped += 1;
        }
        self.status = Some(line);
        self.status_due = Some(self.status_due.map_or(due, |d| d.min(due)));
    }

    /// The datagram to send now, if any. `last`: at exit, everything pending, whatever its turn.
    fn compose(&mut self, now: Instant, last: bool) -> Option<Datagram> {
        if !last && (self.parked || self.retry_at.is_some_and(|t| t > now)) {
            return None;
        }
        let with_status =
            self.status.is_some() && (last || self.status_due.is_none_or(|d| d <= now));
        if !(self.ready || self.stopping || self.extend.is_some() || self.watchdog || with_status) {
            return None;
        }
        let mut text = String::new();
        if self.ready {
            text.push_str("READY=1\n");
        }
        if self.stopping {
            text.push_str("STOPPING=1\n");
        }
        if let (true, Some(line)) = (with_status, &self.status) {
            // One line: a newline would end the field.
            text.push_str("STATUS=");
            text.push_str(&line.replace('\n', " "));
            text.push('\n');
        }
        if let Some(d) = self.extend {
            let usec = u32::try_from(d.as_micros()).unwrap_or(u32::MAX);
            text.push_str(&format!("EXTEND_TIMEOUT_USEC={usec}\n"));
        }
        if self.watchdog {
            text.push_str("WATCHDOG=1\n");
        }
        Some(Datagram { text, with_status })
    }

    fn sent(&mut self, d: &Datagram, now: Instant) {
        self.datagrams += 1;
        self.ready = false;
        self.stopping = false;
        self.extend = None;
        self.watchdog = false;
        if d.with_status {
            self.status = None;
            self.status_due = None;
            self.last_status_at = Some(now);
        }
        self.failing_since = None;
        self.retry_at = None;
        self.retry_gap = RETRY_FIRST;
        self.slow = false;
    }

    /// The send failed. `again`: the queue was full (worth a retry, within [`RETRY_FOR`]; READY and
    /// STOPPING until taken); otherwise (the socket is gone, or the process is exiting) what can only
    /// go now is dropped at once.
    fn failed(&mut self, now: Instant, again: bool) {
        let since = *self.failing_since.get_or_insert(now);
        if again && now.saturating_duration_since(since) < RETRY_FOR {
            self.retry_at = Some(now + self.retry_gap);
            self.retry_gap = (self.retry_gap * 2).min(RETRY_MAX_GAP);
            return;
        }
        self.dropped += u64::from(self.status.take().is_some())
            + u64::from(self.extend.take().is_some())
            + u64::from(std::mem::take(&mut self.watchdog));
        self.status_due = None;
        self.retry_gap = RETRY_FIRST;
        if again && (self.ready || self.stopping) {
            // Still failing since `since`: a later failure lands here again, until taken.
            self.slow = true;
            self.retry_at = Some(now + RETRY_SLOW);
            return;
        }
        self.retry_at = None;
        self.failing_since = None;
        self.slow = false;
        self.parked = true;
    }

    /// When something pending can next be tried: a retry, or a held progress line's turn. `None`:
    /// nothing is (no wake-ups until something new is pushed).
    fn next_wake(&self, now: Instant) -> Option<Instant> {
        if self.parked {
            return None;
        }
        if let Some(t) = self.retry_at {
            return Some(t);
        }
        if self.ready || self.stopping || self.extend.is_some() || self.watchdog {
            return Some(now);
        }
        self.status.as_ref().and(self.status_due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_line_reads_like_a_sentence() {
        let st = State {
            phase: Some(Phase::Draining),
            deregistered: (3, 3),
            established: Some(12),
            deadline_in: Some(Duration::from_secs(41)),
            ..State::new(Duration::from_secs(30))
        };
        assert_eq!(
            status_line(&st),
            "deregistered 3/3, draining: 12 connections, 41 s left"
        );
    }

    fn progress(established: usize, left_s: u64) -> Event {
        Event::Progress {
            established,
            deadline_in: Duration::from_secs(left_s),
        }
    }

    fn phase(phase: Phase) -> Event {
        Event::PhaseChanged {
            phase,
            elapsed: Duration::ZERO,
        }
    }

    fn extends(messages: &[Message]) -> Vec<Duration> {
        messages
            .iter()
            .filter_map(|m| match m {
                Message::Extend(d) => Some(*d),
                _ => None,
            })
            .collect()
    }

    /// The drain's steps at made-up instants: 0 s stop, then draining with 2 connections that stay open
    /// for 10 s, then one closes.
    #[test]
    fn extensions_are_renewed_only_after_progress_and_reach_the_stall_window() {
        let window = Duration::from_secs(8);
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut st = State::new(window);
        assert_eq!(extends(&st.stopping(1, at(0))), [window]);
        assert!(extends(&st.on_event(&phase(Phase::Deregistering), at(10))).is_empty());
        st.deregistered(1, 1);
        st.on_event(&phase(Phase::Settling), at(50));
        // Settling is the stop's own step: progress at every census, renewed once a second.
        let mut renewed = Vec::new();
        for ms in (100..1_500).step_by(100) {
            if !extends(&st.on_event(&progress(2, 299), at(ms))).is_empty() {
                renewed.push(ms);
            }
        }
        assert_eq!(renewed, [1_000], "once a second at most");
        st.on_event(&phase(Phase::Draining), at(1_500));
        // Draining with nothing closing: not one extension after the one the phase change earned.
        let mut stalled = Vec::new();
        for ms in (1_600..12_000).step_by(100) {
            stalled.extend(extends(&st.on_event(&progress(2, 290), at(ms))));
        }
        assert_eq!(
            stalled,
            [window],
            "the phase change earned one (due at 2 s), then none while stalled"
        );
        // A connection closes: progress, renewed at once.
        assert_eq!(
            extends(&st.on_event(&progress(1, 280), at(12_000))),
            [window]
        );
        // Near the drain's deadline the extension reaches no further than it (plus the slack).
        assert_eq!(
            extends(&st.on_event(&progress(0, 1), at(13_000))),
            [Duration::from_secs(1) + PAST_DEADLINE]
        );
    }

    #[test]
    fn a_phase_change_is_a_status_to_send_at_once_and_the_verdict_replaces_the_final_phase() {
        let t0 = Instant::now();
        let mut st = State::new(Duration::from_secs(30));
        st.stopping(1, t0);
        let lines = |ms: &[Message]| -> Vec<Message> {
            ms.iter()
                .filter(|m| matches!(m, Message::Status(_) | Message::Progress(_)))
                .cloned()
                .collect()
        };
        assert_eq!(
            lines(&st.on_event(&phase(Phase::Draining), t0)),
            [Message::Status("deregistered 0/1, draining".into())]
        );
        assert_eq!(
            lines(&st.on_event(&progress(2, 9), t0)),
            [Message::Progress(
                "deregistered 0/1, draining: 2 connections, 9 s left".into()
            )]
        );
        assert!(
            lines(&st.on_event(&progress(2, 9), t0)).is_empty(),
            "unchanged"
        );
        assert!(lines(&st.on_event(&phase(Phase::Drained), t0)).is_empty());
        assert_eq!(
            st.on_event(
                &Event::Finished {
                    verdict: Verdict::Drained,
                    elapsed: Duration::ZERO,
                    last_arrival: None,
                    deadline: crate::drain::DeadlineSource::Configured {
                        timeout: Duration::from_secs(30)
                    },
                },
                t0
            ),
            [Message::Status("drained".into())]
        );
        // The drive loop says a new poll interval after the verdict's census: the verdict stays
        // the last word.
        let poll = Event::PollInterval {
            interval: Duration::from_millis(400),
            census_cost: Duration::from_millis(20),
        };
        assert!(st.on_event(&poll, t0).is_empty());
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// What a reader that reads everything would see: each datagram composed at `at`, sent.
    fn send_due(ob: &mut Outbox, now: Instant) -> Option<String> {
        let d = ob.compose(now, false)?;
        ob.sent(&d, now);
        Some(d.text)
    }

    #[test]
    fn progress_lines_go_at_most_once_a_status_interval_the_latest_winning_and_phases_at_once() {
        let t0 = Instant::now();
        let mut ob = Outbox::new(Duration::from_secs(1));
        let mut seen = Vec::new();
        // The drain reports every 100 ms for 3 s; phases change at 250 ms and 2,050 ms.
        for step in 0..30u64 {
            let now = t0 + ms(step * 100);
            ob.push(Message::Progress(format!("count {step}")), now);
            if step == 2 {
                ob.push(Message::Status("phase B".into()), now + ms(50));
            }
            if step == 20 {
                ob.push(Message::Status("phase C".into()), now + ms(50));
            }
            for now in [now, now + ms(50)] {
                if let Some(text) = send_due(&mut ob, now) {
                    seen.push((now.duration_since(t0).as_millis(), text));
                }
            }
        }
        let seen: Vec<(u128, &str)> = seen.iter().map(|(t, s)| (*t, s.as_str())).collect();
        assert_eq!(
            seen,
            [
                (0, "STATUS=count 0\n"),
                // The phase change goes at once, though a line went 250 ms before.
                (250, "STATUS=phase B\n"),
                // A second after it: the latest progress line of those held meanwhile.
                (1_250, "STATUS=count 12\n"),
                (2_050, "STATUS=phase C\n"),
            ]
        );
        // The last line is held for its turn, when the task wakes to send it.
        assert_eq!(ob.next_wake(t0 + ms(2_950)), Some(t0 + ms(3_050)));
        assert_eq!(
            send_due(&mut ob, t0 + ms(3_050)).as_deref(),
            Some("STATUS=count 29\n")
        );
        assert_eq!(
            ob.next_wake(t0 + ms(3_050)),
            None,
            "nothing pending: asleep"
        );
        // A slower poll interval slows progress lines down with it.
        ob.status_every = Duration::from_secs(5);
        ob.push(Message::Progress("later".into()), t0 + ms(4_000));
        assert_eq!(ob.next_wake(t0 + ms(4_000)), Some(t0 + ms(8_050)));
    }

    #[test]
    fn everything_pending_goes_as_one_datagram_in_protocol_order() {
        let t0 = Instant::now();
        let mut ob = Outbox::new(Duration::from_secs(1));
        ob.push(Message::Stopping, t0);
        ob.push(Message::Status("stopping: deregistering".into()), t0);
        ob.push(Message::Extend(Duration::from_secs(30)), t0);
        ob.push(Message::Ready, t0);
        assert_eq!(
            send_due(&mut ob, t0).unwrap(),
            "READY=1\nSTOPPING=1\nSTATUS=stopping: deregistering\nEXTEND_TIMEOUT_USEC=30000000\n"
        );
        assert_eq!(send_due(&mut ob, t0), None);
    }

    /// Drives `ob` as the retry task would, every send failing with a full queue, from `now` until
    /// `until`: the instants it tried at (ms after `t0`).
    fn fail_until(ob: &mut Outbox, t0: Instant, mut now: Instant, until: Instant) -> Vec<u128> {
        let mut tries = Vec::new();
        while now <= until {
            if ob.compose(now, false).is_some() {
                tries.push(now.duration_since(t0).as_millis());
                ob.failed(now, true);
            }
            match ob.next_wake(now) {
                Some(at) => now = at,
                None => break,
            }
            assert!(tries.len() < 1_000, "bounded");
        }
        tries
    }

    /// The queue stays full: the stop's messages are retried with growing gaps for RETRY_FOR, the
    /// statuses coalesced and counted as dropped, then the status and the extension are given up,
    /// while STOPPING, which nothing would say again, is tried once a second until it is taken; then
    /// nothing is pending and the task sleeps.
    #[test]
    fn a_full_queue_is_retried_with_backoff_within_the_bound_then_only_the_state_once_a_second() {
        let t0 = Instant::now();
        let mut ob = Outbox::new(Duration::from_secs(1));
        ob.push(Message::Stopping, t0);
        ob.push(Message::Status("stopping".into()), t0);
        ob.push(Message::Extend(Duration::from_secs(30)), t0);
        let mut tries = Vec::new();
        let mut now = t0;
        while let Some(d) = ob.compose(now, false) {
            tries.push(now.duration_since(t0).as_millis());
            assert!(d.text.starts_with("STOPPING=1\n"), "{}", d.text);
            ob.failed(now, true);
            if tries.len() == 3 {
                // Progress meanwhile replaces the pending line: the old one is lost.
                ob.push(Message::Progress("newer".into()), now);
                assert_eq!(ob.dropped, 1);
            }
            now = ob.next_wake(now).expect("STOPPING is never given up");
            if now > t0 + ms(6_000) {
                break;
            }
            assert!(tries.len() < 100, "bounded");
        }
        assert_eq!(
            tries,
            [
                0, 10, 30, 70, 150, 310, 560, 810, 1_060, 1_310, 1_560, 1_810, 2_060, 3_060, 4_060,
                5_060
            ],
            "backoff for 2 s, then once a second"
        );
        assert_eq!(
            ob.dropped, 3,
            "the first status, the newer one, the extension: given up at 2 s"
        );
        // The manager reads again: STOPPING alone, at the next slow try (6,060 ms).
        assert_eq!(
            send_due(&mut ob, now).as_deref(),
            Some("STOPPING=1\n"),
            "taken at last"
        );
        assert_eq!(ob.next_wake(now), None, "nothing pending: asleep");
        assert_eq!(ob.dropped, 3);
    }

    /// Serving, READY not taken: without a watchdog nothing else is sent, so READY alone keeps
    /// (slow) tries going. Something new meanwhile (a watchdog ping) is tried at once, READY with it,
    /// with its own 2 s of backoff, after which READY is back to once a second.
    #[test]
    fn a_ready_not_taken_is_tried_once_a_second_and_anything_new_goes_with_it_at_once() {
        let t0 = Instant::now();
        let mut ob = Outbox::new(Duration::from_secs(1));
        ob.push(Message::Ready, t0);
        ob.push(Message::Status("serving".into()), t0);
        let tries = fail_until(&mut ob, t0, t0, t0 + ms(4_500));
        assert_eq!(&tries[tries.len() - 4..], [1_810, 2_060, 3_060, 4_060]);
        assert!(ob.slow && ob.next_wake(t0 + ms(4_500)) == Some(t0 + ms(5_060)));
        ob.push(Message::Watchdog, t0 + ms(4_500));
        assert_eq!(
            ob.next_wake(t0 + ms(4_500)),
            Some(t0 + ms(4_500)),
            "at once"
        );
        let tries = fail_until(&mut ob, t0, t0 + ms(4_500), t0 + ms(8_000));
        assert_eq!(
            tries,
            [
                4_500, 4_510, 4_530, 4_570, 4_650, 4_810, 5_060, 5_310, 5_560, 5_810, 6_060, 6_310,
                6_560, 7_560
            ],
            "the ping's own 2 s, then READY once a second"
        );
        assert_eq!(ob.dropped, 2, "the status, the ping");
        assert_eq!(
            send_due(&mut ob, t0 + ms(8_560)).as_deref(),
            Some("READY=1\n")
        );
        assert_eq!(ob.next_wake(t0 + ms(8_560)), None);
    }

    /// The socket is gone (not full): nothing is retried, so a manager that is not there costs no
    /// wake-ups; READY and STOPPING ride along with the next message.
    #[test]
    fn a_socket_that_is_gone_costs_no_wake_ups_and_the_state_rides_with_the_next_message() {
        let t0 = Instant::now();
        let mut ob = Outbox::new(Duration::from_secs(1));
        ob.push(Message::Stopping, t0);
        ob.push(Message::Extend(Duration::from_secs(30)), t0);
        assert!(ob.compose(t0, false).is_some());
        ob.failed(t0, false);
        assert!(ob.parked && ob.next_wake(t0).is_none(), "given up: asleep");
        assert_eq!(ob.dropped, 1, "the extension");
        assert_eq!(ob.compose(t0 + ms(5_000), false).map(|d| d.text), None);
        ob.push(Message::Watchdog, t0 + ms(5_000));
        assert_eq!(
            send_due(&mut ob, t0 + ms(5_000)).as_deref(),
            Some("STOPPING=1\nWATCHDOG=1\n")
        );
    }

    /// A socket whose reader never reads: no send blocks, the first loss is said once, and a reader
    /// that comes back within the bound gets STOPPING and the latest status in one datagram.
    #[tokio::test]
    async fn a_reader_that_stops_reading_never_blocks_a_send_and_gets_the_stop_when_it_reads_again()
    {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let reader = UnixDatagram::bind(&path).unwrap();
        reader.set_nonblocking(true).unwrap();
        let filler = UnixDatagram::unbound().unwrap();
        filler.set_nonblocking(true).unwrap();
        let mut queued = 0;
        while filler.send_to(b"FILLER=1", &path).is_ok() {
            queued += 1;
            assert!(queued < 100_000);
        }
        let link = Link::open(SocketAddr::from_pathname(&path).unwrap(), ms(200));
        let began = Instant::now();
        link.deliver(vec![
            Message::Stopping,
            Message::Status("stopping: deregistering".into()),
        ]);
        for n in 0..50 {
            link.deliver(vec![Message::Status(format!("phase {n}"))]);
        }
        assert!(began.elapsed() < ms(500), "no send waited");
        assert!(link.warned.load(Ordering::Relaxed), "the loss was said");
        tokio::time::sleep(ms(100)).await;
        // The manager reads again: its backlog, then what the retries bring.
        let mut buf = [0u8; 1024];
        let mut got = Vec::new();
        let deadline = Instant::now() + RETRY_FOR;
        while !got.iter().any(|m: &String| m.contains("STOPPING=1")) && Instant::now() < deadline {
            match reader.recv(&mut buf) {
                Ok(n) if &buf[..n] == b"FILLER=1" => {}
                Ok(n) => got.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                Err(_) => tokio::time::sleep(ms(5)).await,
            }
        }
        assert_eq!(got, ["STOPPING=1\nSTATUS=phase 49\n"]);
    }

    /// A manager that stops reading before READY and reads again only after the retry bound: READY
    /// still reaches it (within a slow retry of its reading again), although nothing else is sent
    /// while serving; then nothing is pending and the task sleeps.
    #[tokio::test]
    async fn a_manager_that_reads_again_after_the_bound_still_gets_ready() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let reader = UnixDatagram::bind(&path).unwrap();
        reader.set_nonblocking(true).unwrap();
        let filler = UnixDatagram::unbound().unwrap();
        filler.set_nonblocking(true).unwrap();
        let mut queued = 0;
        while filler.send_to(b"FILLER=1", &path).is_ok() {
            queued += 1;
            assert!(queued < 100_000);
        }
        let link = Link::open(SocketAddr::from_pathname(&path).unwrap(), ms(200));
        let sent = Instant::now();
        link.deliver(vec![Message::Ready, Message::Status("serving".into())]);
        // A manager busy for longer than the bound (the scenario, not a synchronisation).
        tokio::time::sleep(RETRY_FOR + ms(500)).await;
        assert!(link.outbox().slow, "past the bound, still trying");
        let resumed = Instant::now();
        let mut buf = [0u8; 1024];
        let mut got = Vec::new();
        while got.is_empty() && resumed.elapsed() < RETRY_SLOW * 5 {
            match reader.recv(&mut buf) {
                Ok(n) if &buf[..n] == b"FILLER=1" => {}
                Ok(n) => got.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                Err(_) => tokio::time::sleep(ms(5)).await,
            }
        }
        assert_eq!(got, ["READY=1\n"], "the status was given up, READY never");
        eprintln!(
            "READY taken {:?} after it was first tried, {:?} after the reader resumed",
            sent.elapsed(),
            resumed.elapsed()
        );
        assert_eq!(link.outbox().next_wake(Instant::now()), None, "asleep");
        assert_eq!(link.outbox().dropped, 1, "the status");
    }

    #[test]
    fn notify_socket_is_a_path_or_an_abstract_name() {
        use std::os::linux::net::SocketAddrExt;
        let t = |s: &str| target(std::ffi::OsStr::new(s));
        assert_eq!(
            t("/run/systemd/notify").unwrap().as_pathname(),
            Some(std::path::Path::new("/run/systemd/notify"))
        );
        assert_eq!(
            t("@sd-notify").unwrap().as_abstract_name(),
            Some(&b"sd-notify"[..])
        );
        assert!(t("vsock:2:1234").is_err());
        assert!(t("").is_err());
    }
}
