//! Log output: human-readable text by default, one JSON object per line for collectors.
//!
//! Everything goes to stderr (stdout is for command output such as `check --json`). The filter comes
//! from `ELB_DRAIN_LOG` in `RUST_LOG`'s `target=level` syntax (e.g. `debug`, `warn,elb_drain=debug`;
//! no regular expressions, which keeps the binary small), default `info`. Secrets never reach here: they are
//! [`crate::secret::Secret`] values, which format as `***`.
//!
//! # A stderr nobody reads
//!
//! stderr is a pipe or a socket to the journal, and a journal can stall (journald itself busy or
//! stopping in a mass shutdown). A write to it then blocks, and on the agent's one runtime thread that
//! would hang the stop at its next log line. So no line is written by the thread that logs it: the log,
//! the error lines of the commands (this module's `eprintln!`, which the command modules use in place
//! of std's) and the progress bar all go, in order, into a queue of at most [`QUEUED`] lines that one
//! writer thread empties. The thread sleeps in the queue's receive when there is nothing to write (no
//! periodic wake-up), and blocks on a stalled stderr instead of the agent. When the queue is full a
//! line is dropped, and the count of lost lines is written once stderr takes lines again.
//!
//! At exit, [`flush`] waits for the queue to be written, at most [`FLUSH_AT_EXIT`]: the last lines
//! (the verdict) reach a working journal, and a stalled one costs the stop half a second, not its end.
//! `tracing-appender`'s non-blocking writer does the same, but its guard, when the queue is still full
//! at exit, prints a complaint on stdout, which under systemd is the same stalled journal, and blocks
//! there.

use std::io::{self, Write};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use tracing_subscriber::filter::Targets;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Lines the queue holds for a stderr that does not take them. A stop logs tens of lines at `info`
/// (hundreds at `debug`); a few hundred bytes each, this is at most a few hundred KiB.
pub const QUEUED: usize = 1024;

/// How long the exit waits for queued lines to be written.
pub const FLUSH_AT_EXIT: Duration = Duration::from_millis(500);

/// Installs the global subscriber. An invalid `ELB_DRAIN_LOG` is reported and the default used.
pub fn init(format: LogFormat) {
    let (filter, bad) = match std::env::var("ELB_DRAIN_LOG") {
        Ok(spec) if !spec.is_empty() => match spec.parse::<Targets>() {
            Ok(f) => (f, None),
            Err(e) => (
                default_filter(),
                Some(format!("ELB_DRAIN_LOG={spec:?} ignored: {e}")),
            ),
        },
        _ => (default_filter(), None),
    };
    use std::io::IsTerminal;
    use tracing_subscriber::prelude::*;
    let ansi = std::io::stderr().is_terminal();
    Queue::start(format);
    let _ = match format {
        LogFormat::Text => tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(|| Stderr)
                    .with_ansi(ansi)
                    .with_target(false),
            )
            .with(filter)
            .try_init(),
        LogFormat::Json => tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_writer(|| Stderr),
            )
            .with(filter)
            .try_init(),
    };
    if let Some(msg) = bad {
        tracing::warn!("{msg}");
    }
}

/// INFO for everything but rustls, whose certificate errors the agent reports itself, with the
/// endpoint and the fix (`ELB_DRAIN_LOG` can turn it back on).
fn default_filter() -> Targets {
    Targets::new()
        .with_default(tracing::Level::INFO)
        .with_target("rustls", tracing::level_filters::LevelFilter::OFF)
}

/// stderr through the queue: each `write` is one chunk (the log writes a whole line at once). Before
/// [`init`], or if the writer thread could not be started, it is stderr itself.
pub struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match QUEUE.get() {
            Some(q) => {
                q.push(Chunk::Bytes(buf.to_vec()));
                Ok(buf.len())
            }
            None => io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One line (a newline is added) to stderr through the queue; what `eprintln!` expands to.
pub fn write_line(args: std::fmt::Arguments<'_>) {
    let _ = Stderr.write_all(format!("{args}\n").as_bytes());
}

/// `eprintln!` that cannot block on a stalled stderr, in order with the log: the command modules
/// import it in place of std's.
macro_rules! eprintln {
    ($($arg:tt)*) => {
        $crate::logging::write_line(format_args!($($arg)*))
    };
}
pub(crate) use eprintln;

/// At exit: waits until what was queued is written, at most `within`.
pub fn flush(within: Duration) {
    let Some(q) = QUEUE.get() else { return };
    let deadline = Instant::now() + within;
    let (done, written) = sync_channel(1);
    let mut marker = Chunk::Written(done);
    loop {
        match q.tx.try_send(marker) {
            Ok(()) => break,
            Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                marker = m;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(_) => return,
        }
    }
    let _ = written.recv_timeout(deadline.saturating_duration_since(Instant::now()));
}

static QUEUE: OnceLock<Queue> = OnceLock::new();

struct Queue {
    tx: SyncSender<Chunk>,
    dropped: &'static AtomicU64,
}

enum Chunk {
    Bytes(Vec<u8>),
    /// Everything before it is written: say so.
    Written(SyncSender<()>),
}

impl Queue {
    fn start(format: LogFormat) {
        let (tx, rx) = sync_channel(QUEUED);
        let dropped: &'static AtomicU64 = Box::leak(Box::new(AtomicU64::new(0)));
        let spawned = std::thread::Builder::new()
            .name("elb-drain-log".into())
            // It only writes lines: a small stack.
            .stack_size(64 * 1024)
            .spawn(move || write_out(rx, dropped, format, io::stderr()));
        if spawned.is_ok() {
            let _ = QUEUE.set(Queue { tx, dropped });
        }
    }

    fn push(&self, chunk: Chunk) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(chunk) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The writer thread: blocks in the queue's receive when idle, and in `write` when stderr does.
fn write_out(rx: Receiver<Chunk>, dropped: &AtomicU64, format: LogFormat, mut out: impl Write) {
    let mut told = 0;
    for chunk in rx {
        match chunk {
            Chunk::Bytes(b) => {
                let _ = out.write_all(&b);
            }
            Chunk::Written(done) => {
                let _ = done.try_send(());
            }
        }
        let lost = dropped.load(Ordering::Relaxed);
        if lost > told {
            let n = lost - told;
            let what = format!("{n} log lines were dropped: stderr was not being read");
            let _ = match format {
                LogFormat::Text => writeln!(out, "elb-drain: {what}"),
                LogFormat::Json => writeln!(
                    out,
                    "{}",
                    serde_json::json!({"level": "WARN", "message": what, "dropped_lines": n})
                ),
            };
            told = lost;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that blocks until the test lets it go, as a stalled pipe does.
    struct Stalled(
        std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
        Vec<u8>,
    );

    impl Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let (open, changed) = &*self.0;
            let mut open = open.lock().unwrap();
            while !*open {
                open = changed.wait(open).unwrap();
            }
            self.1.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_full_queue_drops_lines_without_waiting_and_says_how_many_once_stderr_takes_them_again() {
        let gate = std::sync::Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let (tx, rx) = sync_channel(4);
        let dropped: &'static AtomicU64 = Box::leak(Box::new(AtomicU64::new(0)));
        let q = Queue { tx, dropped };
        let out = Stalled(gate.clone(), Vec::new());
        let (back, written) = std::sync::mpsc::channel();
        let writer = std::thread::spawn(move || {
            let mut out = out;
            write_out(rx, dropped, LogFormat::Text, &mut out);
            back.send(out.1).unwrap();
        });
        let began = Instant::now();
        for n in 0..100 {
            q.push(Chunk::Bytes(format!("line {n}\n").into_bytes()));
        }
        assert!(began.elapsed() < Duration::from_secs(1), "no push waited");
        let lost = dropped.load(Ordering::Relaxed);
        // The queue (4) and the line stuck in the writer: the rest were dropped.
        assert!((94..=96).contains(&lost), "{lost}");
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        drop(q);
        writer.join().unwrap();
        let text = String::from_utf8(written.recv().unwrap()).unwrap();
        assert!(text.starts_with("line 0\n"), "{text}");
        assert!(
            text.contains(&format!("elb-drain: {lost} log lines were dropped")),
            "{text}"
        );
        assert_eq!(text.matches("were dropped").count(), 1, "{text}");
    }
}
