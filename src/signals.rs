//! Stop signals, via signal-hook: SIGTERM and SIGINT start the drain; SIGHUP is logged and ignored
//! (there is nothing to reload silently); a second SIGINT in the middle of a drain forces an
//! immediate exit, for the operator at a terminal who really means it.

use futures_util::StreamExt;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

pub use signal_hook::consts::{SIGINT as INT, SIGTERM as TERM};

/// The process's stop-signal stream. Installing it replaces the default "die at once" action, so it is
/// installed first thing, before any slow start-up work.
pub struct Signals(signal_hook_tokio::Signals);

impl Signals {
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals(signal_hook_tokio::Signals::new([
            SIGTERM, SIGINT, SIGHUP,
        ])?))
    }

    /// The next stop signal (SIGTERM or SIGINT); SIGHUP is logged and skipped.
    pub async fn stop(&mut self) -> i32 {
        loop {
            match self.0.next().await {
                Some(SIGHUP) => {
                    tracing::warn!("SIGHUP received: elb-drain has nothing to reload; ignored")
                }
                Some(sig) => return sig,
                None => std::future::pending::<()>().await,
            }
        }
    }

    /// Resolves when the drain must be abandoned: the second SIGINT counting the one that started it.
    /// Further SIGTERMs join the drain already running.
    pub async fn abort(&mut self, started_by: Option<i32>) {
        let mut interrupts = u32::from(started_by == Some(SIGINT));
        loop {
            match self.stop().await {
                SIGINT => {
                    interrupts += 1;
                    if interrupts >= 2 {
                        tracing::warn!("second SIGINT: abandoning the drain now");
                        return;
                    }
                    tracing::warn!(
                        "SIGINT: already draining; send SIGINT again to abandon the drain"
                    );
                }
                sig => tracing::info!(signal = sig, "stop signal received: already draining"),
            }
        }
    }
}

pub fn name(sig: i32) -> &'static str {
    match sig {
        SIGTERM => "SIGTERM",
        SIGINT => "SIGINT",
        SIGHUP => "SIGHUP",
        _ => "signal",
    }
}
