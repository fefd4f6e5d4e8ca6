//! The documented exit codes: the one contract every caller (systemd, hook scripts, deploy tools) reads.

use std::process::ExitCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Drained: every counted connection closed (or, for other commands, success).
    Ok = 0,
    /// Anything not covered below.
    Failure = 1,
    /// Command-line usage error.
    Usage = 2,
    /// Could not deregister: the API was unreachable or refusing after retries (EX_UNAVAILABLE).
    Unavailable = 69,
    /// The drain deadline came with connections still open (EX_TEMPFAIL).
    TimedOut = 75,
    /// Configuration error; no API call was made (EX_CONFIG).
    Config = 78,
    /// A second SIGINT forced an immediate exit in the middle of a drain (128 + SIGINT).
    Interrupted = 130,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e as u8)
    }
}

impl From<crate::drain::Verdict> for Exit {
    fn from(v: crate::drain::Verdict) -> Exit {
        match v {
            crate::drain::Verdict::Drained => Exit::Ok,
            crate::drain::Verdict::TimedOut { .. } => Exit::TimedOut,
            crate::drain::Verdict::DeregistrationFailed { .. } => Exit::Unavailable,
        }
    }
}
