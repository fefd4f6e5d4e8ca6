//! systemd integration over the notify socket (`sd-notify`): `READY=1` once memberships and credentials
//! are in hand, a live `STATUS=` line, `STOPPING=1`, `EXTEND_TIMEOUT_USEC=` while the drain is making
//! progress, and `WATCHDOG=1` when the unit sets `WatchdogSec=`.
//!
//! The extension is what lets a unit keep a short `TimeoutStopSec=` and still drain for as long as
//! connections keep closing: each one reaches `drain.stall_timeout` ahead, and it is renewed (at most
//! once a second) only after fresh progress, so a drain stalled that long (a connection held open,
//! nothing closing) is left to the unit's own timeout instead of being kept alive to its deadline.
//! Deregistering and settling count as progress throughout: they are the stop's own steps, bounded by
//! their own deadlines.
//!
//! Without `NOTIFY_SOCKET` every call is a no-op, so the same code runs under systemd, in a container
//! and at a terminal.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

use crate::drain::{Event, Phase, Sink, Verdict};

/// Extensions are renewed at most this often, however fast the drain reports.
const RENEW_EVERY: Duration = Duration::from_secs(1);

/// Slack past the drain's own deadline that an extension may reach: time for the verdict to be acted
/// on (the hook answered, the process exiting) after the deadline.
const PAST_DEADLINE: Duration = Duration::from_secs(5);

pub struct Notifier {
    enabled: bool,
    state: Mutex<State>,
}

struct State {
    /// How far ahead an extension reaches, and so how long a stalled drain keeps its stop time.
    stall_timeout: Duration,
    /// The last STATUS= sent, so an unchanged line is not sent again at every census.
    last_status: String,
    phase: Option<Phase>,
    deregistered: (usize, usize),
    established: Option<usize>,
    /// Progress seen since the last extension: the next one is earned.
    progressed: bool,
    last_extend: Option<Instant>,
    deadline_in: Option<Duration>,
}

/// One notify message, before it is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Message {
    Status(String),
    Extend(Duration),
}

impl Notifier {
    /// Talks to systemd when `NOTIFY_SOCKET` is set. `stall_timeout` is `drain.stall_timeout`.
    pub fn from_env(stall_timeout: Duration) -> Notifier {
        Notifier {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
            state: Mutex::new(State::new(stall_timeout)),
        }
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if self.enabled
            && let Err(e) = sd_notify::notify(false, states)
        {
            tracing::warn!(error = %e, "sd_notify failed");
        }
    }

    fn deliver(&self, messages: Vec<Message>) {
        for m in messages {
            match m {
                Message::Status(line) => self.status(&line),
                Message::Extend(by) => {
                    let usec = u32::try_from(by.as_micros()).unwrap_or(u32::MAX);
                    self.send(&[NotifyState::ExtendTimeoutUsec(usec)]);
                }
            }
        }
    }

    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// The stop began: tell systemd, and ask for time for the first steps.
    pub fn stopping(&self, total_members: usize) {
        let extend = self.lock().stopping(total_members, Instant::now());
        self.send(&[
            NotifyState::Stopping,
            NotifyState::Status("stopping: deregistering"),
        ]);
        self.deliver(extend);
    }

    /// `exec`: the drain is over and the supervised application is being stopped. Its grace period is
    /// stop time the unit must allow too, or a short `TimeoutStopSec` would SIGKILL it mid-shutdown.
    pub fn stopping_child(&self, pid: i32, signal: &str, grace: Duration) {
        let line = format!(
            "stopping the application (pid {pid}, {signal}, grace {} s)",
            grace.as_secs()
        );
        self.lock().last_status.clone_from(&line);
        self.status(&line);
        let ask = grace + PAST_DEADLINE;
        if ask.as_micros() > u128::from(u32::MAX) {
            tracing::warn!(
                grace_s = grace.as_secs(),
                "the notify protocol asks for at most 71 minutes more: the unit's TimeoutStopSec must cover the rest of --grace"
            );
        }
        self.deliver(vec![Message::Extend(ask)]);
    }

    /// One more membership is out of its pool.
    pub fn deregistered(&self, done: usize) {
        let messages = self.lock().deregistered(done);
        self.deliver(messages);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends `WATCHDOG=1` at half the unit's `WatchdogSec=` until the process exits. Does nothing when
    /// the unit has no watchdog: no periodic wake-ups unless asked for.
    pub fn spawn_watchdog(&'static self) {
        let mut usec = 0;
        if !self.enabled || !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
            return;
        }
        let period = Duration::from_micros(usec) / 2;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                self.send(&[NotifyState::Watchdog]);
            }
        });
    }
}

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

    fn deregistered(&mut self, done: usize) -> Vec<Message> {
        self.deregistered.0 = done;
        self.progressed = true;
        let line = status_line(self);
        self.last_status.clone_from(&line);
        vec![Message::Status(line)]
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
        match event {
            Event::PhaseChanged { phase, .. } => {
                self.phase = Some(*phase);
                self.progressed = true;
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
            Event::Deadline { .. }
            | Event::Settled { .. }
            | Event::CensusFailed { .. }
            | Event::PollInterval { .. } => {}
        }
        let mut out = Vec::new();
        let line = status_line(self);
        if line != self.last_status {
            self.last_status.clone_from(&line);
            out.push(Message::Status(line));
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
        let messages = self.lock().on_event(event, Instant::now());
        self.deliver(messages);
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

    fn extends(messages: &[Message]) -> Vec<Duration> {
        messages
            .iter()
            .filter_map(|m| match m {
                Message::Extend(d) => Some(*d),
                Message::Status(_) => None,
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
        let phase = |phase| Event::PhaseChanged {
            phase,
            elapsed: Duration::ZERO,
        };
        assert!(extends(&st.on_event(&phase(Phase::Deregistering), at(10))).is_empty());
        st.deregistered(1);
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
}
