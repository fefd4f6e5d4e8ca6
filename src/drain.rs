//! The drain engine: from "stop requested" to a verdict.
//!
//! ```text
//! Serving ─▶ Deregistering ─▶ Settling ─▶ Draining ─▶ Drained | TimedOut
//! ```
//!
//! [`Engine`] is pure logic over instants and census counts: it prints nothing, knows no systemd and
//! does no I/O, so every transition is unit-tested with made-up clocks. [`drive`] is the thin async
//! loop that feeds it real censuses, deregistration results and socket-destroy notifications.
//!
//! The settle phase is the point of the design: a load balancer keeps sending new connections for a
//! while after the API said the member is gone (configuration propagation). Instead of a blind sleep the
//! engine watches for connections that were not in the previous census and only starts counting down
//! once none has arrived for `settle`, bounded by the deadline.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::census::{Census, Count};

/// The timing knobs of one drain, from `[drain]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub settle: Duration,
    pub timeout: Duration,
    pub poll_interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Serving,
    Deregistering,
    Settling,
    Draining,
    Drained,
    TimedOut,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Serving => "serving",
            Phase::Deregistering => "deregistering",
            Phase::Settling => "settling",
            Phase::Draining => "draining",
            Phase::Drained => "drained",
            Phase::TimedOut => "timed out",
        }
    }
}

/// Why the drain ended. The binary maps it to the documented exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every counted connection is gone (exit 0).
    Drained,
    /// The deadline came with connections still open (exit 75).
    TimedOut { remaining: usize },
    /// Deregistration failed after retries; the drain was still waited out (exit 69).
    DeregistrationFailed { remaining: usize },
}

/// Which deadline bounds the drain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadlineSource {
    /// `[drain] timeout` after the stop began.
    Configured,
    /// A pool's `connection_drain`: the load balancer itself cuts what remains at its timeout.
    LoadBalancer { pool: String, timeout: Duration },
}

/// What the engine reports; sinks (log, systemd, progress bar, status socket) turn these into output.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    PhaseChanged {
        phase: Phase,
        elapsed: Duration,
    },
    /// Connections that were not in the previous census arrived while settling: the load balancer is
    /// still routing to us.
    NewConnections {
        arrived: usize,
        established: usize,
        elapsed: Duration,
    },
    /// A fresh count of live connections.
    Progress {
        established: usize,
        deadline_in: Duration,
    },
    DeadlineLowered {
        source: DeadlineSource,
        deadline_in: Duration,
    },
    CensusFailed {
        error: String,
    },
    Finished {
        verdict: Verdict,
        elapsed: Duration,
        last_arrival: Option<Duration>,
    },
}

/// Receives events. Implementations must be cheap and must not block: the engine's loop calls them inline.
pub trait Sink: Send + Sync {
    fn emit(&self, event: &Event);
}

/// Forwards every event to each of several sinks.
pub struct Fanout(pub Vec<Box<dyn Sink>>);

impl Sink for Fanout {
    fn emit(&self, event: &Event) {
        for sink in &self.0 {
            sink.emit(event);
        }
    }
}

/// What the engine wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Take the next census no later than this.
    CensusBy(Instant),
    Done(Verdict),
}

/// The state machine. All inputs carry the instant they happened at.
#[derive(Debug)]
pub struct Engine {
    plan: Plan,
    started: Instant,
    deadline: Instant,
    phase: Phase,
    deregistered_at: Option<Instant>,
    deregistration_failed: bool,
    last_arrival: Option<Instant>,
    /// When a census last showed no arrivals since the one before it.
    quiet_since: Option<Instant>,
    established: Option<usize>,
    events: Vec<Event>,
}

impl Engine {
    /// A stop began at `now`: deregistration is under way.
    pub fn new(plan: Plan, now: Instant) -> Engine {
        let mut engine = Engine {
            plan,
            started: now,
            deadline: now + plan.timeout,
            phase: Phase::Serving,
            deregistered_at: None,
            deregistration_failed: false,
            last_arrival: None,
            quiet_since: None,
            established: None,
            events: Vec::new(),
        };
        engine.enter(Phase::Deregistering, now);
        engine
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Events produced since the last call.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    fn enter(&mut self, phase: Phase, now: Instant) {
        if self.phase != phase {
            self.phase = phase;
            self.events.push(Event::PhaseChanged {
                phase,
                elapsed: now - self.started,
            });
        }
    }

    /// A pool cuts its remaining connections `timeout` after deregistration: that may be the binding
    /// deadline. Call after [`Engine::deregistered`].
    pub fn lb_connection_drain(&mut self, pool: &str, timeout: Duration, now: Instant) {
        // The timeout comes from the cloud's answer: one past the clock's range cuts nothing.
        let Some(cut) = self.deregistered_at.unwrap_or(now).checked_add(timeout) else {
            return;
        };
        if cut < self.deadline {
            self.deadline = cut;
            self.events.push(Event::DeadlineLowered {
                source: DeadlineSource::LoadBalancer {
                    pool: pool.to_owned(),
                    timeout,
                },
                deadline_in: cut.saturating_duration_since(now),
            });
        }
    }

    /// Every DELETE has been answered (or given up on). Settling starts now.
    pub fn deregistered(&mut self, now: Instant, failed: bool) {
        if self.deregistered_at.is_some() {
            return;
        }
        self.deregistered_at = Some(now);
        self.deregistration_failed = failed;
        // A census before this instant says nothing about whether the load balancer stopped.
        self.quiet_since = None;
        self.enter(Phase::Settling, now);
    }

    /// A census finished at `now`.
    pub fn observe(&mut self, count: Count, now: Instant) -> Step {
        if let Some(verdict) = self.finished() {
            return Step::Done(verdict);
        }
        self.established = Some(count.established);
        match self.phase {
            Phase::Settling => {
                if count.arrived > 0 {
                    self.last_arrival = Some(now);
                    self.quiet_since = None;
                    self.events.push(Event::NewConnections {
                        arrived: count.arrived,
                        established: count.established,
                        elapsed: now - self.started,
                    });
                } else if self.quiet_since.is_none() {
                    // No arrival since the previous census, which was at or after deregistration
                    // (or this is the first one after it): quiet since deregistration at the latest.
                    self.quiet_since =
                        Some(self.last_arrival.or(self.deregistered_at).unwrap_or(now));
                }
                if let Some(quiet) = self.quiet_since
                    && now >= quiet + self.plan.settle
                {
                    self.enter(Phase::Draining, now);
                }
            }
            Phase::Deregistering | Phase::Draining => {}
            Phase::Serving | Phase::Drained | Phase::TimedOut => {}
        }
        self.events.push(Event::Progress {
            established: count.established,
            deadline_in: self.deadline.saturating_duration_since(now),
        });
        if self.phase == Phase::Draining && count.established == 0 {
            return self.finish(Phase::Drained, now);
        }
        self.tick(now)
    }

    /// Time passed without a census (or a census failed): checks the deadline.
    pub fn tick(&mut self, now: Instant) -> Step {
        if let Some(verdict) = self.finished() {
            return Step::Done(verdict);
        }
        if now >= self.deadline {
            return self.finish(Phase::TimedOut, now);
        }
        let next = match self.phase {
            // While settling, the end of the quiet window is worth a census of its own.
            Phase::Settling => match self.quiet_since {
                Some(q) => (q + self.plan.settle).min(now + self.plan.poll_interval),
                None => now + self.plan.poll_interval,
            },
            _ => now + self.plan.poll_interval,
        };
        Step::CensusBy(next.min(self.deadline))
    }

    fn finish(&mut self, phase: Phase, now: Instant) -> Step {
        self.enter(phase, now);
        let verdict = self.finished().expect("terminal phase");
        self.events.push(Event::Finished {
            verdict,
            elapsed: now - self.started,
            last_arrival: self.last_arrival.map(|t| t - self.started),
        });
        Step::Done(verdict)
    }

    fn finished(&self) -> Option<Verdict> {
        let remaining = self.established.unwrap_or(0);
        let verdict = match self.phase {
            Phase::Drained => Verdict::Drained,
            Phase::TimedOut => Verdict::TimedOut { remaining },
            _ => return None,
        };
        Some(if self.deregistration_failed {
            Verdict::DeregistrationFailed { remaining }
        } else {
            verdict
        })
    }
}

/// How the deregistration of every membership ended, reported once by the caller's future.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deregistration {
    pub failed: bool,
    /// Pools whose `connection_drain` is enabled: (pool ID, its timeout).
    pub lb_drain: Vec<(String, Duration)>,
}

/// Adapts the poll interval to what a census costs, so a busy server is not burned by its own drain: the
/// census never takes more than about 1/`COST_RATIO` of a core.
pub const COST_RATIO: u32 = 20;

/// Runs the drain to its verdict.
///
/// * `deregistration` resolves when every DELETE is answered;
/// * `census` is moved into a blocking thread for each count (one count may take a fifth of a second on a
///   server with 100k sockets);
/// * `destroyed`, when the kernel allows socket-destroy notifications, yields how many counted sockets
///   went away: the engine then counts down from one census instead of polling at the full rate, and takes
///   a confirming census the moment the count reaches zero.
pub async fn drive(
    plan: Plan,
    started: Instant,
    deregistration: impl std::future::Future<Output = Deregistration>,
    setup: impl FnOnce() -> (Box<dyn Census>, Option<mpsc::UnboundedReceiver<usize>>) + Send + 'static,
    sink: &dyn Sink,
) -> Verdict {
    let mut engine = Engine::new(plan, started);
    flush(&mut engine, sink);
    tokio::pin!(deregistration);
    // Opening the census (a netlink probe, the destroy subscription) happens on a blocking thread, so
    // the DELETEs, polled first below, are on the wire before any of it.
    let setup = tokio::task::spawn_blocking(setup);
    tokio::pin!(setup);
    let mut census: Option<Box<dyn Census>> = None;
    let mut destroyed: Option<mpsc::UnboundedReceiver<usize>> = None;
    let mut deregistration_done = false;
    let mut next = Instant::now();
    let mut interval = plan.poll_interval;
    // Count-down state: remaining sockets according to destroy notifications since the last census.
    let mut estimate: Option<usize> = None;
    loop {
        tokio::select! {
            biased;
            report = &mut deregistration, if !deregistration_done => {
                deregistration_done = true;
                let now = Instant::now();
                engine.deregistered(now, report.failed);
                for (pool, timeout) in &report.lb_drain {
                    engine.lb_connection_drain(pool, *timeout, now);
                }
                flush(&mut engine, sink);
                next = now;
            }
            ready = &mut setup, if census.is_none() => {
                let (c, d) = ready.expect("census setup panicked");
                census = Some(c);
                destroyed = d;
            }
            n = recv(&mut destroyed), if estimate.is_some() => {
                match n {
                    // Notifications were lost: recount now and count down from there.
                    Some(crate::census::destroy::RECOUNT) => next = Instant::now(),
                    Some(n) => {
                        let left = estimate.unwrap_or(0).saturating_sub(n);
                        estimate = Some(left);
                        if left == 0 {
                            next = Instant::now();
                        }
                    }
                    // The watch died: fall back to polling.
                    None => {
                        destroyed = None;
                        estimate = None;
                        next = Instant::now();
                    }
                }
            }
            _ = tokio::time::sleep_until(next), if census.is_some() => {
                let begun = Instant::now();
                let mut counting = census.take().expect("guarded");
                let (back, result) = tokio::task::spawn_blocking(move || {
                    let r = counting.count();
                    (counting, r)
                })
                .await
                .expect("census thread panicked");
                census = Some(back);
                let now = Instant::now();
                let cost = now - begun;
                let step = match result {
                    Ok(count) => {
                        let step = engine.observe(count, now);
                        if engine.phase() == Phase::Draining && destroyed.is_some() {
                            estimate = Some(count.established);
                        }
                        step
                    }
                    Err(e) => {
                        sink.emit(&Event::CensusFailed { error: e.to_string() });
                        engine.tick(now)
                    }
                };
                flush(&mut engine, sink);
                interval = interval.max(cost * COST_RATIO).max(plan.poll_interval);
                match step {
                    Step::Done(verdict) => return verdict,
                    Step::CensusBy(at) => {
                        // The engine asks at the poll interval; an expensive census stretches that, and
                        // while destroy notifications count down for us a census only confirms.
                        let mut later = interval - plan.poll_interval;
                        if estimate.is_some() {
                            // Counting down: a census only confirms. Rarely, but at least every 10 s,
                            // in case a counted socket leaves ESTABLISHED without being destroyed.
                            later += (interval * 9).min(Duration::from_secs(10).saturating_sub(interval));
                        }
                        next = (at + later).min(engine.deadline());
                    }
                }
            }
        }
    }
}

async fn recv(rx: &mut Option<mpsc::UnboundedReceiver<usize>>) -> Option<usize> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn flush(engine: &mut Engine, sink: &dyn Sink) {
    for event in engine.take_events() {
        sink.emit(&event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAN: Plan = Plan {
        settle: Duration::from_secs(2),
        timeout: Duration::from_secs(30),
        poll_interval: Duration::from_millis(200),
    };

    fn count(established: usize, arrived: usize) -> Count {
        Count {
            established,
            arrived,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn drains_after_settling_when_the_count_reaches_zero() {
        let t0 = Instant::now();
        let mut e = Engine::new(PLAN, t0);
        assert_eq!(e.phase(), Phase::Deregistering);
        assert!(matches!(
            e.observe(count(3, 0), t0 + ms(5)),
            Step::CensusBy(_)
        ));
        e.deregistered(t0 + ms(10), false);
        assert_eq!(e.phase(), Phase::Settling);
        // Zero connections but not yet settled: no verdict.
        assert!(matches!(
            e.observe(count(0, 0), t0 + ms(500)),
            Step::CensusBy(_)
        ));
        assert_eq!(e.phase(), Phase::Settling);
        assert_eq!(
            e.observe(count(0, 0), t0 + ms(2010)),
            Step::Done(Verdict::Drained)
        );
        assert_eq!(e.phase(), Phase::Drained);
    }

    #[test]
    fn new_connections_restart_the_settle_window() {
        let t0 = Instant::now();
        let mut e = Engine::new(PLAN, t0);
        e.deregistered(t0, false);
        e.observe(count(2, 0), t0 + ms(200));
        e.observe(count(3, 1), t0 + ms(1900)); // the LB still routes to us
        e.observe(count(3, 0), t0 + ms(2100));
        assert_eq!(
            e.phase(),
            Phase::Settling,
            "settle counts from the last arrival"
        );
        e.observe(count(1, 0), t0 + ms(3950));
        assert_eq!(e.phase(), Phase::Draining);
        assert_eq!(
            e.observe(count(0, 0), t0 + ms(4000)),
            Step::Done(Verdict::Drained)
        );
        let events = e.take_events();
        assert!(events.contains(&Event::NewConnections {
            arrived: 1,
            established: 3,
            elapsed: ms(1900)
        }));
        assert!(events.iter().any(|ev| matches!(ev,
            Event::Finished { verdict: Verdict::Drained, last_arrival: Some(d), .. } if *d == ms(1900))));
    }

    #[test]
    fn the_deadline_ends_the_drain_with_the_remaining_count() {
        let t0 = Instant::now();
        let mut e = Engine::new(PLAN, t0);
        e.deregistered(t0 + ms(3), false);
        e.observe(count(1, 0), t0 + ms(2500));
        assert_eq!(e.phase(), Phase::Draining);
        assert!(
            matches!(e.observe(count(1, 0), t0 + ms(29_000)), Step::CensusBy(at) if at <= t0 + PLAN.timeout)
        );
        assert_eq!(
            e.tick(t0 + PLAN.timeout),
            Step::Done(Verdict::TimedOut { remaining: 1 })
        );
    }

    #[test]
    fn a_failed_deregistration_still_waits_out_the_drain_and_says_so() {
        let t0 = Instant::now();
        let mut e = Engine::new(PLAN, t0);
        e.deregistered(t0 + ms(100), true);
        e.observe(count(2, 0), t0 + ms(1000));
        assert!(matches!(
            e.observe(count(1, 0), t0 + ms(2200)),
            Step::CensusBy(_)
        ));
        assert_eq!(
            e.observe(count(0, 0), t0 + ms(5000)),
            Step::Done(Verdict::DeregistrationFailed { remaining: 0 })
        );
        let mut e = Engine::new(PLAN, t0);
        e.deregistered(t0, true);
        e.observe(count(4, 0), t0 + ms(2500));
        assert_eq!(
            e.tick(t0 + PLAN.timeout),
            Step::Done(Verdict::DeregistrationFailed { remaining: 4 })
        );
    }

    /// A ShowPool answer with `connection_drain.timeout` = 2^64-1 (any u64 parses) made `now + timeout`
    /// panic mid-drain, after the members were already deleted.
    #[test]
    fn a_pool_drain_timeout_past_the_clock_lowers_nothing() {
        let t0 = Instant::now();
        let mut e = Engine::new(PLAN, t0);
        e.deregistered(t0, false);
        e.lb_connection_drain("pool-a", Duration::from_secs(u64::MAX), t0);
        assert_eq!(e.deadline(), t0 + PLAN.timeout);
        assert!(
            !e.take_events()
                .iter()
                .any(|ev| matches!(ev, Event::DeadlineLowered { .. }))
        );
    }

    #[test]
    fn a_pool_connection_drain_timeout_lowers_the_deadline() {
        let t0 = Instant::now();
        let mut e = Engine::new(PLAN, t0);
        e.deregistered(t0 + ms(10), false);
        e.lb_connection_drain("pool-a", Duration::from_secs(10), t0 + ms(10));
        e.lb_connection_drain("pool-b", Duration::from_secs(60), t0 + ms(10)); // longer: ignored
        assert_eq!(e.deadline(), t0 + ms(10_010));
        let lowered: Vec<_> = e
            .take_events()
            .into_iter()
            .filter(|ev| matches!(ev, Event::DeadlineLowered { .. }))
            .collect();
        assert_eq!(lowered.len(), 1, "{lowered:?}");
        assert_eq!(
            e.tick(t0 + ms(10_010)),
            Step::Done(Verdict::TimedOut { remaining: 0 })
        );
    }

    #[test]
    fn a_census_taken_before_deregistration_does_not_count_toward_settling() {
        let t0 = Instant::now();
        let mut e = Engine::new(PLAN, t0);
        e.observe(count(0, 0), t0 + ms(1));
        e.deregistered(t0 + ms(1500), false);
        e.observe(count(0, 0), t0 + ms(2100));
        assert_eq!(e.phase(), Phase::Settling);
        assert_eq!(
            e.observe(count(0, 0), t0 + ms(3600)),
            Step::Done(Verdict::Drained)
        );
    }

    /// A census whose counts follow a script; records how often it was asked.
    struct Scripted(std::sync::Arc<std::sync::Mutex<Vec<Count>>>);

    impl Census for Scripted {
        fn count(&mut self) -> Result<Count, crate::census::CensusError> {
            let mut v = self.0.lock().unwrap();
            Ok(if v.len() > 1 { v.remove(0) } else { v[0] })
        }
        fn backend(&self) -> crate::census::Backend {
            crate::census::Backend::Procfs
        }
    }

    struct Collect(std::sync::Mutex<Vec<Event>>);
    impl Sink for Collect {
        fn emit(&self, event: &Event) {
            self.0.lock().unwrap().push(event.clone());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn drive_polls_until_drained() {
        let script = vec![count(2, 0), count(2, 0), count(1, 0), count(0, 0)];
        let census = Box::new(Scripted(std::sync::Arc::new(std::sync::Mutex::new(script))));
        let sink = Collect(Default::default());
        let plan = Plan {
            settle: ms(300),
            ..PLAN
        };
        let t0 = Instant::now();
        let dereg = async {
            tokio::time::sleep(ms(50)).await;
            Deregistration {
                failed: false,
                lb_drain: vec![],
            }
        };
        let verdict = drive(
            plan,
            t0,
            dereg,
            move || (census as Box<dyn Census>, None),
            &sink,
        )
        .await;
        assert_eq!(verdict, Verdict::Drained);
        let events = sink.0.into_inner().unwrap();
        let phases: Vec<Phase> = events
            .iter()
            .filter_map(|e| {
                if let Event::PhaseChanged { phase, .. } = e {
                    Some(*phase)
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(
            phases,
            [
                Phase::Deregistering,
                Phase::Settling,
                Phase::Draining,
                Phase::Drained
            ]
        );
        assert!(t0.elapsed() < ms(2000), "took {:?}", t0.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn drive_counts_down_on_destroy_notifications() {
        // The census always says 5 until the very end: only destroy events can drive the count down,
        // and the confirming census at zero ends the drain.
        let script = std::sync::Arc::new(std::sync::Mutex::new(vec![count(5, 0)]));
        let census = Box::new(Scripted(script.clone()));
        let (tx, rx) = mpsc::unbounded_channel();
        let sink = Collect(Default::default());
        let plan = Plan {
            settle: ms(100),
            timeout: Duration::from_secs(600),
            poll_interval: ms(100),
        };
        let t0 = Instant::now();
        let closer = async {
            // Wait until the engine is draining (it then counts from the census), then close all five.
            tokio::time::sleep(ms(1000)).await;
            *script.lock().unwrap() = vec![count(0, 0)];
            tx.send(3).unwrap();
            tx.send(2).unwrap();
            std::future::pending::<()>().await
        };
        let dereg = async {
            Deregistration {
                failed: false,
                lb_drain: vec![],
            }
        };
        let verdict = tokio::select! {
            v = drive(plan, t0, dereg, move || (census as Box<dyn Census>, Some(rx)), &sink) => v,
            _ = closer => unreachable!(),
        };
        assert_eq!(verdict, Verdict::Drained);
        // Without the notifications the next census would only come 10 poll intervals later.
        assert!(t0.elapsed() < ms(1100), "took {:?}", t0.elapsed());
    }
}
