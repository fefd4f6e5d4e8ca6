//! The log sink: one line per state change of the drain, with counts and timings.

use crate::drain::{DeadlineSource, Event, Sink, Verdict};

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
            Event::DeadlineLowered {
                source,
                deadline_in,
            } => match source {
                DeadlineSource::LoadBalancer { pool, timeout } => tracing::info!(
                    pool = %pool,
                    connection_drain_s = timeout.as_secs(),
                    deadline_in_s = deadline_in.as_secs(),
                    "pool has connection_drain enabled: the load balancer cuts remaining connections first; that is the effective deadline"
                ),
                DeadlineSource::Configured => {}
            },
            Event::CensusFailed { error } => tracing::warn!(%error, "connection census failed"),
            Event::Finished {
                verdict,
                elapsed,
                last_arrival,
            } => {
                let elapsed_ms = elapsed.as_millis() as u64;
                let last_arrival_ms = last_arrival.map(|d| d.as_millis() as u64);
                match verdict {
                    Verdict::Drained => {
                        tracing::info!(elapsed_ms, ?last_arrival_ms, "drained: no connections left")
                    }
                    Verdict::TimedOut { remaining } => tracing::warn!(
                        elapsed_ms,
                        remaining,
                        "drain deadline reached with {remaining} connections still open"
                    ),
                    Verdict::DeregistrationFailed { remaining } => tracing::error!(
                        elapsed_ms,
                        remaining,
                        "drain finished, but deregistration had failed: the load balancer may still route here"
                    ),
                }
            }
        }
    }
}
