//! Stop signals, via signal-hook: SIGTERM and SIGINT start the drain; SIGHUP is logged and ignored
//! by `run` and `drain` (there is nothing to reload silently) and passed on to the child by `exec`
//! (the usual "reload" of the application it supervises, see [`Signals::install_supervising`]); a
//! second SIGINT in the middle of a drain forces an immediate exit, for the operator at a terminal
//! who really means it.
//!
//! The handlers are installed before any slow start-up work, and the process keeps one count of the
//! SIGINTs it received across every phase (starting, serving, draining, stopping a supervised child):
//! any number of SIGTERMs and SIGHUPs, however fast they come, never start a second drain nor abort
//! the one running, and "the second SIGINT" means the second one since the process started, whichever
//! phase the first one arrived in. Signals that arrive while nothing is listening stay queued (the
//! self-pipe of signal-hook), so none is lost between phases; repeats of one signal may coalesce,
//! which is harmless because only SIGINT is counted and a coalesced pair was sent at once anyway.

use futures_util::StreamExt;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

pub use signal_hook::consts::{SIGINT as INT, SIGTERM as TERM};

/// The process's stop-signal stream. Installing it replaces the default "die at once" action, so it is
/// installed first thing, before any slow start-up work.
pub struct Signals {
    stream: signal_hook_tokio::Signals,
    /// SIGINTs received so far, in any phase.
    interrupts: u32,
}

impl Signals {
    pub fn install() -> std::io::Result<Signals> {
        let stream = signal_hook_tokio::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
        // A stop signal that came while they were held by `hold` is delivered to the handler now.
        release();
        // Tests (and operators reading a log) need to know from when a SIGTERM is a stop request
        // rather than the default action: this is the line.
        tracing::debug!("signal handlers installed: SIGTERM/SIGINT stop, SIGHUP is ignored");
        Ok(Signals {
            stream,
            interrupts: 0,
        })
    }

    /// For `exec`: the stop signals as with [`Signals::install`], and `forwarded` (SIGHUP among them)
    /// caught for the caller to pass on to its child, never taken as a stop nor ignored. Both are in
    /// place before a SIGHUP held by [`hold`] is let through, so it reaches the child too.
    pub fn install_supervising(forwarded: &[i32]) -> std::io::Result<(Signals, Forwarded)> {
        let stream = signal_hook_tokio::Signals::new([SIGTERM, SIGINT])?;
        let passed = signal_hook_tokio::Signals::new(forwarded.iter().copied())?;
        release();
        tracing::debug!(
            "signal handlers installed: SIGTERM/SIGINT stop, SIGHUP and the others go to the child"
        );
        Ok((
            Signals {
                stream,
                interrupts: 0,
            },
            Forwarded(passed),
        ))
    }

    /// The next stop signal (SIGTERM or SIGINT); SIGHUP, where it is not forwarded, is logged and
    /// skipped.
    pub async fn stop(&mut self) -> i32 {
        loop {
            match self.stream.next().await {
                Some(SIGHUP) => {
                    tracing::warn!("SIGHUP received: elb-drain has nothing to reload; ignored")
                }
                Some(sig) => {
                    if sig == SIGINT {
                        self.interrupts += 1;
                    }
                    return sig;
                }
                None => std::future::pending::<()>().await,
            }
        }
    }

    /// Resolves when the stop under way must be abandoned: at the second SIGINT since the process
    /// started (at once if it already came). SIGTERMs and SIGHUPs are logged and change nothing.
    pub async fn abort(&mut self) {
        loop {
            if self.interrupts >= 2 {
                tracing::warn!("second SIGINT: abandoning the drain now");
                return;
            }
            match self.stop().await {
                SIGINT if self.interrupts >= 2 => {}
                SIGINT => tracing::warn!(
                    "SIGINT: already draining; send SIGINT again to abandon the drain"
                ),
                sig => tracing::info!(
                    signal = name(sig),
                    "stop signal received: already draining; ignored"
                ),
            }
        }
    }

    /// Resolves at the next SIGINT from now on; SIGTERMs and SIGHUPs meanwhile are logged and ignored.
    pub async fn next_interrupt(&mut self) {
        loop {
            match self.stop().await {
                SIGINT => return,
                sig => tracing::info!(
                    signal = name(sig),
                    "stop signal received: already stopping; ignored"
                ),
            }
        }
    }
}

/// The signals `exec` passes on to its child, as they arrive.
pub struct Forwarded(signal_hook_tokio::Signals);

impl Forwarded {
    /// The next signal to pass on.
    pub async fn next(&mut self) -> i32 {
        match self.0.next().await {
            Some(sig) => sig,
            None => std::future::pending().await,
        }
    }
}

/// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread, for `main` to call first thing: one that
/// arrives before the handlers exist (while the command line is parsed and the runtime built) then
/// stays pending instead of killing the process with the default action, and [`Signals::install`]
/// (or [`release`], for commands that install none) lets it through on the main thread, where the
/// commands run. The runtime's worker threads keep the signals blocked, which only means the kernel
/// delivers them to the main thread; children start with an empty mask (std resets it at spawn).
pub fn hold() {
    mask(libc::SIG_BLOCK);
}

/// Undoes [`hold`]: a stop signal held meanwhile is delivered now (to the handler if there is one,
/// else with its default action).
pub fn release() {
    mask(libc::SIG_UNBLOCK);
}

fn mask(how: libc::c_int) {
    // SAFETY: a zeroed sigset_t is valid storage for sigemptyset, which initialises it; the calls only
    // touch this local set and the calling thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [SIGTERM, SIGINT, SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(how, &set, std::ptr::null_mut());
    }
}

pub fn name(sig: i32) -> &'static str {
    match sig {
        SIGTERM => "SIGTERM",
        SIGINT => "SIGINT",
        SIGHUP => "SIGHUP",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGWINCH => "SIGWINCH",
        _ => "signal",
    }
}
