//! The daemon's live state, for people and scripts: a Unix socket (`/run/elb-drain/status.sock`, mode
//! 0660) that answers every connection with one JSON document and closes; `elb-drain status` reads it.
//! Also the terminal progress line of `elb-drain drain`.
//!
//! A client that connects and never reads (or reads a byte a minute) must cost the agent nothing it
//! needs for a stop: each answer is written by its own task, never by the drain, and given
//! [`ANSWER_WITHIN`] before the connection is closed; at most [`CLIENTS_AT_ONCE`] are answered at a
//! time, the others waiting in the listen backlog (the kernel's, not the agent's file descriptors,
//! which the DELETEs and the census need); and a failed `accept` (out of file descriptors) pauses the
//! server instead of ending it. A client queued behind N silent ones is answered after about N / 16
//! seconds. This matters only when the document outgrows a socket's send buffer (208 KiB by default,
//! some 1,300 memberships): a smaller one is written whole at once, read or not. The document is
//! rendered once per change and shared by every answer, so a flood of clients costs no CPU per client.

use std::fmt::Write;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;

use crate::drain::{Event, Sink, Verdict};

/// The socket path: `[status] socket`, else systemd's `RuntimeDirectory=`, else /run/elb-drain.
pub fn default_socket(env: crate::config::Env<'_>) -> PathBuf {
    env("RUNTIME_DIRECTORY")
        .and_then(|d| d.split(':').next().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/run/elb-drain"))
        .join("status.sock")
}

/// What the daemon is doing, kept current by the drain's events and the command.
#[derive(Clone)]
pub struct Board(Arc<Mutex<Doc>>);

struct Doc {
    value: Value,
    /// `value` as sent, rendered at the first answer after a change and shared by every answer until
    /// the next: a flood of clients costs one rendering, not one each (a document listing thousands
    /// of memberships takes milliseconds to render, which the answers would otherwise queue behind).
    text: Option<Arc<str>>,
}

impl Board {
    pub fn new(memberships: Value) -> Board {
        Board(Arc::new(Mutex::new(Doc {
            value: json!({
                "pid": std::process::id(),
                "phase": "starting",
                "memberships": memberships,
                "deregistered": 0,
                "established": null,
                "deadline_in_s": null,
                "since": humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            }),
            text: None,
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Doc> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set(&self, key: &str, value: Value) {
        let mut doc = self.lock();
        if doc.value[key] != value {
            doc.value[key] = value;
            doc.text = None;
        }
    }

    pub fn snapshot(&self) -> Value {
        self.lock().value.clone()
    }

    /// The document as one answer: JSON and a newline.
    fn rendered(&self) -> Arc<str> {
        let mut doc = self.lock();
        let Doc { value, text } = &mut *doc;
        text.get_or_insert_with(|| format!("{value}\n").into())
            .clone()
    }

    /// Serves the board on `path` until the process exits. The socket is created with mode 0660 (the
    /// unit's group may read it) and replaces a stale one left by a crash.
    pub fn serve(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let _ = std::fs::remove_file(path);
        // SAFETY: umask only changes this process's file-creation mask, restored right after bind.
        let old = unsafe { libc::umask(0o117) };
        let listener = UnixListener::bind(path);
        unsafe { libc::umask(old) };
        let listener = listener?;
        let board = self.clone();
        let answering = Arc::new(tokio::sync::Semaphore::new(CLIENTS_AT_ONCE));
        tokio::spawn(async move {
            loop {
                let Ok(turn) = answering.clone().acquire_owned().await else {
                    return;
                };
                match listener.accept().await {
                    Ok((conn, _)) => {
                        let doc = board.rendered();
                        tokio::spawn(async move {
                            answer(conn, doc.as_bytes(), ANSWER_WITHIN).await;
                            drop(turn);
                        });
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "status socket: accept failed; pausing");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(())
    }
}

/// How long one client has to read its answer (usually a few KiB, which `elb-drain status` reads at
/// once, and which fit the socket's buffer anyway).
pub const ANSWER_WITHIN: Duration = Duration::from_secs(1);

/// Clients answered at the same time.
pub const CLIENTS_AT_ONCE: usize = 16;

/// Writes `doc` and closes, or gives up after `within`: the connection is dropped either way.
async fn answer(mut conn: impl tokio::io::AsyncWrite + Unpin, doc: &[u8], within: Duration) {
    let _ = tokio::time::timeout(within, async {
        conn.write_all(doc).await?;
        conn.shutdown().await
    })
    .await;
}

impl Sink for Board {
    fn emit(&self, event: &Event) {
        match event {
            Event::PhaseChanged { phase, .. } => self.set("phase", json!(phase.as_str())),
            Event::Progress {
                established,
                deadline_in,
            } => {
                self.set("established", json!(established));
                self.set("deadline_in_s", json!(deadline_in.as_secs()));
            }
            Event::Finished { verdict, .. } => self.set("verdict", json!(format!("{verdict:?}"))),
            _ => {}
        }
    }
}

/// Reads the daemon's board from its socket.
pub async fn read(path: &Path) -> std::io::Result<Value> {
    use tokio::io::AsyncReadExt;
    let conn = tokio::net::UnixStream::connect(path).await?;
    let mut text = String::new();
    // The daemon answers at once with a few KiB; whatever else listens there is not waited for, nor
    // read, without bound.
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        conn.take(1024 * 1024).read_to_string(&mut text),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer within 5 s"))??;
    serde_json::from_str(&text).map_err(std::io::Error::other)
}

/// A one-line progress bar on stderr, when stderr is a terminal: connections left and time left.
pub struct Progress {
    first: Mutex<Option<usize>>,
    tty: bool,
}

impl Progress {
    pub fn new() -> Progress {
        Progress {
            first: Mutex::new(None),
            tty: std::io::stderr().is_terminal(),
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Sink for Progress {
    fn emit(&self, event: &Event) {
        if !self.tty {
            return;
        }
        // Through the log's queue (a terminal can stall too: ^S), one write per update.
        let mut line = String::new();
        match event {
            Event::Progress {
                established,
                deadline_in,
            } => {
                let mut first = self.first.lock().unwrap_or_else(|p| p.into_inner());
                let total = (*first.get_or_insert(*established)).max(*established);
                let done = total - established;
                let width = 30;
                let filled = (done * width).checked_div(total).unwrap_or(width);
                let _ = write!(
                    line,
                    "\r[{}{}] {established} connections left, {} s to the deadline \x1b[K",
                    "#".repeat(filled),
                    ".".repeat(width - filled),
                    deadline_in.as_secs()
                );
            }
            Event::Finished { verdict, .. } => {
                let what = match verdict {
                    Verdict::Drained => "drained".to_owned(),
                    Verdict::TimedOut { remaining } => {
                        format!("deadline reached, {remaining} connections left")
                    }
                    Verdict::DeregistrationFailed { .. } => "deregistration failed".to_owned(),
                };
                let _ = writeln!(line, "\r{what}\x1b[K");
            }
            _ => {}
        }
        if !line.is_empty() {
            let _ = std::io::Write::write_all(&mut crate::logging::Stderr, line.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::time::Instant;

    /// Every answer between two changes is the same rendering; a change renders anew, and setting
    /// a field to what it already is changes nothing.
    #[test]
    fn the_document_is_rendered_once_per_change() {
        let board = Board::new(json!([]));
        let first = board.rendered();
        assert!(Arc::ptr_eq(&first, &board.rendered()));
        board.set("phase", json!("starting"));
        assert!(Arc::ptr_eq(&first, &board.rendered()), "unchanged");
        board.set("phase", json!("serving"));
        let second = board.rendered();
        assert!(!Arc::ptr_eq(&first, &second));
        let doc: Value = serde_json::from_str(&second).unwrap();
        assert_eq!(doc["phase"], "serving");
        assert!(second.ends_with('\n'));
    }

    #[tokio::test]
    async fn an_answer_nobody_reads_is_given_up_after_its_time() {
        let (conn, _unread) = tokio::io::duplex(64);
        let began = Instant::now();
        answer(conn, &[b'x'; 1 << 20], Duration::from_millis(100)).await;
        let took = began.elapsed();
        assert!(
            took >= Duration::from_millis(100) && took < Duration::from_secs(2),
            "{took:?}"
        );
    }

    /// More clients than are answered at once connect and never read, each answer larger than a
    /// socket buffer (so each write really waits): the status is still answered to a client that
    /// reads, within about one ANSWER_WITHIN, and the clients that never read are cut off.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn clients_that_never_read_cost_a_second_and_are_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.sock");
        // Over the socket's send buffer (about 200 KiB), under what `read` accepts (1 MiB).
        let board = Board::new(json!("m".repeat(600_000)));
        board.serve(&path).unwrap();
        let mut silent: Vec<std::os::unix::net::UnixStream> = (0..CLIENTS_AT_ONCE + 4)
            .map(|_| std::os::unix::net::UnixStream::connect(&path).unwrap())
            .collect();
        let began = Instant::now();
        let doc = read(&path).await.expect("answered");
        let took = began.elapsed();
        assert_eq!(doc["memberships"].as_str().map(str::len), Some(600_000));
        assert!(took < ANSWER_WITHIN * 4, "{took:?}");
        // The first silent client was given its second long ago: what it can still read is cut short.
        let mut got = Vec::new();
        silent[0]
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        silent[0]
            .read_to_end(&mut got)
            .expect("closed, not hanging");
        assert!(got.len() < 600_000, "cut off after {} bytes", got.len());
    }
}
