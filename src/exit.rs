//! The documented exit codes: the one contract every caller (systemd, hook scripts, deploy tools) reads.

use std::process::ExitCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Drained: every counted connection closed (or, for other commands, success).
    Ok,
    /// Anything not covered below.
    Failure,
    /// Command-line usage error.
    Usage,
    /// Could not deregister: the API was unreachable or refusing after retries (EX_UNAVAILABLE).
    Unavailable,
    /// The drain deadline came with connections still open (EX_TEMPFAIL).
    TimedOut,
    /// Configuration error; no API call was made (EX_CONFIG).
    Config,
    /// A second SIGINT forced an immediate exit in the middle of a drain (128 + SIGINT).
    Interrupted,
    /// `exec`: the supervised command's own exit code.
    Child(u8),
}

impl Exit {
    /// A supervised child's own exit code, passed through as it is.
    pub fn from_code(code: u8) -> Exit {
        match code {
            0 => Exit::Ok,
            2 => Exit::Usage,
            69 => Exit::Unavailable,
            75 => Exit::TimedOut,
            78 => Exit::Config,
            130 => Exit::Interrupted,
            _ => Exit::Child(code),
        }
    }

    pub fn code(self) -> u8 {
        match self {
            Exit::Child(c) => c,
            other => other.discriminant(),
        }
    }

    fn discriminant(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Failure => 1,
            Exit::Usage => 2,
            Exit::Unavailable => 69,
            Exit::TimedOut => 75,
            Exit::Config => 78,
            Exit::Interrupted => 130,
            Exit::Child(c) => c,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e.code())
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
