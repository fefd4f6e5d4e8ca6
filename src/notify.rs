//! systemd integration over the notify socket (`sd-notify`): `READY=1` once memberships and credentials
//! are in hand, a live `STATUS=` line, `STOPPING=1`, `EXTEND_TIMEOUT_USEC=` while the drain is making
//! progress, and `WATCHDOG=1` when the unit sets `WatchdogSec=`.
//!
//! Without `NOTIFY_SOCKET` every call is a no-op, so the same code runs under systemd, in a container
//! and at a terminal.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

use crate::drain::{Event, Phase, Sink, Verdict};

/// How far ahead each `EXTEND_TIMEOUT_USEC` reaches. It is renewed on every sign of progress, so a drain
/// that stalls for this long is left to the unit's own timeout.
pub const EXTEND_STEP: Duration = Duration::from_secs(30);

pub struct Notifier {
    enabled: bool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The last STATUS= sent, so an unchanged line is not sent again at every census.
    last_status: String,
    phase: Option<Phase>,
    deregistered: (usize, usize),
    established: Option<usize>,
    last_progress: Option<Instant>,
    last_extend: Option<Instant>,
    deadline_in: Option<Duration>,
}

impl Notifier {
    /// Talks to systemd when `NOTIFY_SOCKET` is set.
    pub fn from_env() -> Notifier {
        Notifier {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
            state: Mutex::default(),
        }
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if self.enabled
            && let Err(e) = sd_notify::notify(false, states)
        {
            tracing::warn!(error = %e, "sd_notify failed");
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
        let mut st = self.lock();
        st.deregistered = (0, total_members);
        st.last_progress = Some(Instant::now());
        drop(st);
        self.send(&[
            NotifyState::Stopping,
            NotifyState::Status("stopping: deregistering"),
        ]);
        self.extend(Instant::now(), EXTEND_STEP);
    }

    /// One more membership is out of its pool.
    pub fn deregistered(&self, done: usize) {
        let mut st = self.lock();
        st.deregistered.0 = done;
        st.last_progress = Some(Instant::now());
        let line = status_line(&st);
        drop(st);
        self.status(&line);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn extend(&self, now: Instant, by: Duration) {
        let usec = u32::try_from(by.as_micros()).unwrap_or(u32::MAX);
        self.lock().last_extend = Some(now);
        self.send(&[NotifyState::ExtendTimeoutUsec(usec)]);
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
        let now = Instant::now();
        let mut st = self.lock();
        match event {
            Event::PhaseChanged { phase, .. } => {
                st.phase = Some(*phase);
                st.last_progress = Some(now);
            }
            Event::Progress {
                established,
                deadline_in,
            } => {
                if st.established.is_none_or(|prev| *established < prev) {
                    st.last_progress = Some(now);
                }
                st.established = Some(*established);
                st.deadline_in = Some(*deadline_in);
            }
            Event::NewConnections { .. } => st.last_progress = Some(now),
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
                drop(st);
                self.status(&line);
                return;
            }
            Event::Deadline { .. }
            | Event::Settled { .. }
            | Event::CensusFailed { .. }
            | Event::PollInterval { .. } => {}
        }
        let line = status_line(&st);
        let changed = line != st.last_status;
        if changed {
            st.last_status.clone_from(&line);
        }
        // Extend while progressing: renew once a second at most, never beyond the drain's own deadline.
        let progressing = st.last_progress.is_some_and(|t| now - t < EXTEND_STEP);
        let due = st
            .last_extend
            .is_none_or(|t| now - t >= Duration::from_secs(1));
        let reach = st.deadline_in.map_or(EXTEND_STEP, |d| {
            (d + Duration::from_secs(5)).min(EXTEND_STEP)
        });
        drop(st);
        if changed {
            self.status(&line);
        }
        if progressing && due {
            self.extend(now, reach);
        }
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
            ..State::default()
        };
        assert_eq!(
            status_line(&st),
            "deregistered 3/3, draining: 12 connections, 41 s left"
        );
    }
}
