//! The log sink: one line per state change of the drain, with counts and timings.

use std::time::Duration;

use crate::drain::{DeadlineSource, Event, Sink, Verdict};

/// When the last new connection was seen, for a person reading the log.
fn arrival(last: Option<Duration>) -> String {
    match last {
        Some(d) => format!(
            "the last new connection was seen {} ms after the stop",
            d.as_millis()
        ),
        None => "no new connection arrived after deregistration".to_owned(),
    }
}

/// Writes drain events as tracing log lines. Progress is logged only when the count changes, so a long
/// drain does not flood the journal.
#[derive(Default)]
pub struct LogSink {
    last: std::sync::Mutex<Option<usize>>,
}

impl Sink for LogSink {
    fn emit(&self, event: &Event) {
        match event {
            Event::PhaseChanged { phase, elapsed } => {
                tracing::info!(
                    phase = phase.as_str(),
                    elapsed_ms = elapsed.as_millis() as u64,
                    "drain: {}",
                    phase.as_str()
                );
            }
            Event::NewConnections {
                arrived,
                established,
                elapsed,
            } => tracing::info!(
                arrived,
                established,
                elapsed_ms = elapsed.as_millis() as u64,
                "new connections still arriving after deregistration; settle window restarted"
            ),
            Event::Progress {
                established,
                deadline_in,
            } => {
                let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
                if *last != Some(*established) {
                    *last = Some(*established);
                    tracing::info!(
                        connections = established,
                        deadline_in_s = deadline_in.as_secs(),
                        "draining: {established} connections open"
                    );
                }
            }
            Event::Deadline {
                source,
                deadline_in,
            } => match source {
                DeadlineSource::Configured { timeout } => tracing::info!(
                    deadline = "drain.timeout",
                    timeout_ms = timeout.as_millis() as u64,
                    deadline_in_ms = deadline_in.as_millis() as u64,
                    "deadline: drain.timeout ({}) applies",
                    humantime::format_duration(*timeout)
                ),
                DeadlineSource::LoadBalancer { pool, timeout } => tracing::info!(
                    deadline = "connection_drain",
                    pool = %pool,
                    connection_drain_s = timeout.as_secs(),
                    deadline_in_ms = deadline_in.as_millis() as u64,
                    "deadline: pool {pool}'s connection_drain ({} s) applies, before drain.timeout: \
                     the load balancer closes what is left then",
                    timeout.as_secs()
                ),
            },
            Event::Settled {
                last_arrival,
                elapsed,
            } => tracing::info!(
                last_arrival_ms = last_arrival.map(|d| d.as_millis() as u64),
                elapsed_ms = elapsed.as_millis() as u64,
                "settled: {}; counting down",
                arrival(*last_arrival)
            ),
            Event::CensusFailed { error } => tracing::warn!(%error, "connection census failed"),
            Event::PollInterval {
                interval,
                census_cost,
            } => tracing::debug!(
                interval_ms = interval.as_millis() as u64,
                census_cost_us = census_cost.as_micros() as u64,
                "census cost {} us of CPU: polling every {} ms",
                census_cost.as_micros(),
                interval.as_millis()
            ),
            Event::Finished {
                verdict,
                elapsed,
                last_arrival,
                deadline,
            } => {
                let elapsed_ms = elapsed.as_millis() as u64;
                let last_arrival_ms = last_arrival.map(|d| d.as_millis() as u64);
                let arrival = arrival(*last_arrival);
                let deadline = match deadline {
                    DeadlineSource::Configured { .. } => "drain.timeout".to_owned(),
                    DeadlineSource::LoadBalancer { pool, .. } => {
                        format!("pool {pool}'s connection_drain")
                    }
                };
                match verdict {
                    Verdict::Drained => tracing::info!(
                        elapsed_ms,
                        last_arrival_ms,
                        "drained: no connections left ({arrival})"
                    ),
                    Verdict::TimedOut { remaining } => tracing::warn!(
                        elapsed_ms,
                        remaining,
                        last_arrival_ms,
                        deadline,
                        "drain deadline ({deadline}) reached with {remaining} connections still open ({arrival})"
                    ),
                    Verdict::DeregistrationFailed { remaining } => tracing::error!(
                        elapsed_ms,
                        remaining,
                        last_arrival_ms,
                        "drain finished with {remaining} connections open, but deregistration had failed: \
                         the load balancer may still route here ({arrival})"
                    ),
                }
            }
        }
    }
}
