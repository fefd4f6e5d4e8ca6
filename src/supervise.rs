//! `exec` mode: elb-drain as the parent of the application, for hosts without systemd (containers,
//! supervisord).
//!
//! The child gets every signal except the stop signals. On SIGTERM/SIGINT the drain runs first while the
//! child keeps serving; then the child gets its stop signal, a grace period, and SIGKILL. If the child
//! dies on its own, the server is deregistered at once: a crashed server must not wait for health checks
//! to take it out. The exit status is the child's.
//!
//! The child inherits stdout and stderr (under systemd, the journal): the agent writes nothing for
//! it, and a child blocked on a stalled journal is stopped like any other, SIGKILL after its grace.

use std::process::ExitStatus;
use std::time::Duration;

use tokio::process::{Child, Command};

/// Signals passed through to the child as they are. The stop signals (TERM, INT) start the drain instead.
pub const FORWARDED: &[i32] = &[
    libc::SIGHUP,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
    libc::SIGQUIT,
];

#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error("cannot start {program:?}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("waiting for the child: {0}")]
    Wait(std::io::Error),
}

/// The supervised application.
pub struct Supervised {
    child: Child,
    pid: i32,
}

impl Supervised {
    pub fn spawn(argv: &[String]) -> Result<Supervised, SuperviseError> {
        let (program, rest) = argv.split_first().ok_or_else(|| SuperviseError::Spawn {
            program: String::new(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "no command given"),
        })?;
        let child = Command::new(program)
            .args(rest)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| SuperviseError::Spawn {
                program: program.clone(),
                source,
            })?;
        let pid = child.id().map(|p| p as i32).unwrap_or(-1);
        Ok(Supervised { child, pid })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Sends `sig` to the child, if it is still there.
    pub fn signal(&mut self, sig: i32) {
        if self.pid > 0 && matches!(self.child.try_wait(), Ok(None)) {
            // SAFETY: kill(2) on our own unreaped child.
            unsafe {
                libc::kill(self.pid, sig);
            }
        }
    }

    /// Resolves when the child exits on its own.
    pub async fn wait(&mut self) -> Result<ExitStatus, SuperviseError> {
        self.child.wait().await.map_err(SuperviseError::Wait)
    }

    /// Stops the child: `stop_signal`, then SIGKILL after `grace`.
    pub async fn stop(
        &mut self,
        stop_signal: i32,
        grace: Duration,
    ) -> Result<ExitStatus, SuperviseError> {
        self.signal(stop_signal);
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => status.map_err(SuperviseError::Wait),
            Err(_) => {
                tracing::warn!(
                    pid = self.pid,
                    grace_ms = grace.as_millis() as u64,
                    "child ignored its stop signal; SIGKILL"
                );
                self.signal(libc::SIGKILL);
                self.child.wait().await.map_err(SuperviseError::Wait)
            }
        }
    }
}

/// The exit code a shell would report for the child's status: its code, or 128 + the killing signal.
pub fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(sig)) => (128 + sig) as u8,
        (None, None) => 1,
    }
}

/// Parses a signal name (`TERM`, `SIGTERM`, `15`) for `--stop-signal`.
pub fn parse_signal(s: &str) -> Result<i32, String> {
    let name = s.trim().to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    Ok(match name {
        "TERM" => libc::SIGTERM,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "HUP" => libc::SIGHUP,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "KILL" => libc::SIGKILL,
        other => match other.parse::<i32>() {
            Ok(n) if (1..=64).contains(&n) => n,
            _ => {
                return Err(format!(
                    "{s:?} is not a signal name (TERM, INT, QUIT, HUP, USR1, USR2, KILL) or number"
                ));
            }
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names() {
        assert_eq!(parse_signal("term"), Ok(libc::SIGTERM));
        assert_eq!(parse_signal("SIGQUIT"), Ok(libc::SIGQUIT));
        assert_eq!(parse_signal("9"), Ok(9));
        assert!(parse_signal("FOO").unwrap_err().contains("FOO"));
    }

    #[tokio::test]
    async fn a_child_that_ignores_its_stop_signal_is_killed_after_the_grace_period() {
        let mut child = Supervised::spawn(&[
            "sh".into(),
            "-c".into(),
            "trap '' TERM; echo up; sleep 30".into(),
        ])
        .unwrap();
        // Give the shell a moment to install its trap: poll /proc for the sleep child instead of sleeping.
        let pid = child.pid();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .trim()
            .is_empty()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "shell never started its sleep"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let status = child
            .stop(libc::SIGTERM, Duration::from_millis(200))
            .await
            .unwrap();
        assert_eq!(exit_code(status), 128 + libc::SIGKILL as u8);
    }

    #[tokio::test]
    async fn the_childs_exit_code_is_passed_through() {
        let mut child = Supervised::spawn(&["sh".into(), "-c".into(), "exit 7".into()]).unwrap();
        assert_eq!(exit_code(child.wait().await.unwrap()), 7);
        let err = Supervised::spawn(&["/nonexistent/app".into()])
            .err()
            .unwrap();
        assert!(err.to_string().contains("/nonexistent/app"));
    }
}
