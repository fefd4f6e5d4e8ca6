//! Everything the agent writes to on its way out, misbehaving: a notify socket whose manager stopped
//! reading, a stderr (the journal) that nobody reads, status clients that connect and never read, a
//! state directory on a full filesystem. Each stop still ends in its usual time, with its usual exit
//! code. (`exec`, `register` and the scale-in hook have theirs in their own test files.)

mod common;

use std::time::{Duration, Instant};

use common::fullfs::FullFs;
use common::*;

/// What a stop normally takes, from the last connection's close to the exit, in these tests (the
/// drain notices within a poll interval of 20 ms): far more, a hang.
const USUAL: Duration = Duration::from_secs(10);

fn quick(drain: &str) -> String {
    format!("settle = \"100ms\"\npoll_interval = \"20ms\"\ntimeout = \"30s\"\n{drain}")
}

/// The stop of `agent`, started: waits for the DELETE, closes `held`, and returns the exit code
/// and how long the exit took after the last close (failing past [`USUAL`]).
fn finish_stop(
    s: &Setup,
    agent: &mut ProcGuard,
    held: Vec<std::net::TcpStream>,
) -> (Option<i32>, Duration) {
    assert!(
        wait_until(Duration::from_secs(10), || !s
            .sim
            .member_exists(POOL, MEMBER)),
        "no DELETE: {}",
        agent.stderr()
    );
    drop(held);
    let closed = Instant::now();
    let exit = agent
        .wait_timeout(USUAL)
        .unwrap_or_else(|| panic!("still running {USUAL:?} after the last close"));
    (exit.code(), closed.elapsed())
}

fn warnings_about_notify(err: &str) -> usize {
    err.lines()
        .filter(|l| l.contains("notify socket: messages to the service manager were dropped"))
        .count()
}

/// The case: a manager that read up to READY=1 and then no more, its queue full. Before, the
/// agent blocked in its first send of the stop (STOPPING=1) and never sent the DELETE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_stops_in_time_when_the_notify_socket_is_no_longer_read() {
    let s = setup().await;
    let notify = NotifySocket::bind_stalling(s.dir.path(), "READY=1");
    let config = s.config(&quick(""));
    let held = s.connections_to_us(3);
    let mut cmd = agent(&config, &["run"]);
    cmd.env("NOTIFY_SOCKET", &notify.path);
    let mut agent = ProcGuard::spawn(cmd);
    assert!(
        wait_until(Duration::from_secs(10), || notify.stalled()),
        "{}",
        agent.stderr()
    );
    let stop = Instant::now();
    agent.signal(libc::SIGTERM);
    let (code, after_close) = finish_stop(&s, &mut agent, held);
    eprintln!(
        "stop took {:?}, exit {after_close:?} after the last close",
        stop.elapsed()
    );
    assert_eq!(code, Some(0), "{}", agent.stderr());
    let err = agent.stderr();
    assert!(err.contains("drained: no connections left"), "{err}");
    assert_eq!(warnings_about_notify(&err), 1, "said once: {err}");
    assert_eq!(deletes(&s.sim).len(), 1);
}

/// `drain` (as `ExecStop=`, whose NOTIFY_SOCKET is the unit's) with a manager that reads nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_stops_in_time_when_the_notify_socket_is_never_read() {
    let s = setup().await;
    let notify = NotifySocket::bind_stalling(s.dir.path(), "");
    assert!(wait_until(Duration::from_secs(5), || notify.stalled()));
    let config = s.config(&quick(""));
    let held = s.connections_to_us(1);
    let mut cmd = agent(&config, &["drain"]);
    cmd.env("NOTIFY_SOCKET", &notify.path);
    let mut agent = ProcGuard::spawn(cmd);
    let (code, _) = finish_stop(&s, &mut agent, held);
    assert_eq!(code, Some(0), "{}", agent.stderr());
    assert_eq!(warnings_about_notify(&agent.stderr()), 1);
}

/// A manager that is only slow: it stops reading after READY and reads again as soon as the stop's
/// first send has found its queue full, well within the retry bound. What could not be sent meanwhile
/// was retried, not lost: STOPPING=1 and an extension reach it while the drain goes on, and the
/// drain's last word is the verdict. (A test thread delayed past the bound changes nothing here:
/// STOPPING is tried until it is taken, and the draining phase earns another extension.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_that_reads_again_within_the_bound_gets_the_stop() {
    use elb_drain::notify::{RETRY_FOR, RETRY_SLOW};
    let s = setup().await;
    let notify = NotifySocket::bind_stalling(s.dir.path(), "READY=1");
    let config = s.config(&quick(""));
    let held = s.connections_to_us(1);
    let mut cmd = agent(&config, &["run"]);
    cmd.env("NOTIFY_SOCKET", &notify.path);
    let mut agent = ProcGuard::spawn(cmd);
    assert!(
        wait_until(Duration::from_secs(10), || notify.stalled()),
        "{}",
        agent.stderr()
    );
    agent.signal(libc::SIGTERM);
    assert!(
        wait_until(Duration::from_secs(10), || agent
            .stderr()
            .contains("notify: not sent")),
        "a send found the queue full: {}",
        agent.stderr()
    );
    notify.resume();
    // The connection is still open: the drain goes on until both have arrived.
    assert!(
        wait_until(RETRY_FOR + RETRY_SLOW * 2, || notify.has("STOPPING=1")
            && notify
                .fields()
                .iter()
                .any(|f| f.starts_with("EXTEND_TIMEOUT_USEC="))),
        "{:?}\n{}",
        notify.all(),
        agent.stderr()
    );
    let (code, _) = finish_stop(&s, &mut agent, held);
    assert_eq!(code, Some(0), "{}", agent.stderr());
    let fields = notify.fields();
    assert_eq!(
        fields.last().map(String::as_str),
        Some("STATUS=drained"),
        "{fields:?}"
    );
}

/// A manager that stops reading before the agent is ready and reads again only after the retry
/// bound (a PID 1 busy for 3 s). While serving, the agent sends nothing else (no `WatchdogSec=`), so
/// READY=1 must be retried on its own: the manager gets it within a second of reading again, and the
/// stop after it as usual. Before, READY waited for a next message that never came: systemd would
/// have given up the start at `TimeoutStartSec=` and stopped (drained) a server that was serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_that_reads_again_after_the_bound_still_gets_ready() {
    use elb_drain::notify::{RETRY_FOR, RETRY_SLOW};
    let s = setup().await;
    let notify = NotifySocket::bind_stalling(s.dir.path(), "");
    assert!(wait_until(Duration::from_secs(5), || notify.stalled()));
    let config = s.config(&quick(""));
    let held = s.connections_to_us(1);
    let mut cmd = agent(&config, &["run"]);
    cmd.env("NOTIFY_SOCKET", &notify.path);
    let mut agent = ProcGuard::spawn(cmd);
    assert!(
        wait_until(Duration::from_secs(10), || {
            let err = agent.stderr();
            err.contains("ready: waiting for SIGTERM") && err.contains("notify: not sent")
        }),
        "ready, and READY=1 did not fit: {}",
        agent.stderr()
    );
    // The manager is busy for longer than the retry bound (the scenario, not a synchronisation).
    std::thread::sleep(RETRY_FOR + Duration::from_secs(1));
    assert!(notify.all().is_empty(), "{:?}", notify.all());
    let resumed = mono_ns();
    notify.resume();
    assert!(
        wait_until(RETRY_SLOW * 5, || notify.has("READY=1")),
        "READY never came: {:?}\n{}",
        notify.all(),
        agent.stderr()
    );
    let ready = notify.sent_at("READY=1").unwrap();
    eprintln!(
        "READY sent {} ms after the manager read again",
        ready.saturating_sub(resumed) / 1_000_000
    );
    // Serving: the stop goes as usual, the manager told.
    agent.signal(libc::SIGTERM);
    let (code, _) = finish_stop(&s, &mut agent, held);
    assert_eq!(code, Some(0), "{}", agent.stderr());
    let fields = notify.fields();
    let at = |f: &str| fields.iter().position(|x| x == f);
    assert!(
        at("READY=1") < at("STOPPING=1") && at("STOPPING=1").is_some(),
        "{fields:?}"
    );
    assert_eq!(
        fields.last().map(String::as_str),
        Some("STATUS=drained"),
        "{fields:?}"
    );
}

/// stderr is a pipe (a journal's stream) that is full and never read, from before the start: the
/// agent gets ready, drains and exits in the usual time with the usual code. Before, its first log
/// line blocked it for ever, before READY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stderr_nobody_reads_holds_neither_the_start_nor_the_stop() {
    let s = setup().await;
    let notify = NotifySocket::bind(s.dir.path());
    let config = s.config(&quick(""));
    let held = s.connections_to_us(2);
    let (pipe, stderr) = StalledPipe::new();
    let mut cmd = agent(&config, &["run"]);
    cmd.env("NOTIFY_SOCKET", &notify.path);
    let mut agent = ProcGuard::spawn_with_stderr(cmd, Some(stderr));
    assert!(
        wait_until(Duration::from_secs(10), || notify.has("READY=1")),
        "{:?}",
        notify.all()
    );
    agent.signal(libc::SIGTERM);
    let (code, after_close) = finish_stop(&s, &mut agent, held);
    eprintln!("exit {after_close:?} after the last close, stderr never read");
    assert_eq!(code, Some(0), "{:?}", notify.all());
    assert_eq!(
        notify.fields().last().map(String::as_str),
        Some("STATUS=drained")
    );
    drop(pipe);
}

/// The journal reads again during the drain: the lines held meanwhile (fewer than the queue holds)
/// all reach it, in order, up to the verdict. (Lines past the queue's size are dropped and counted:
/// the `logging` unit tests.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stderr_read_again_gets_every_line_held_meanwhile() {
    let s = setup().await;
    let notify = NotifySocket::bind(s.dir.path());
    let config = s.config(&quick(""));
    let held = s.connections_to_us(1);
    let (mut pipe, stderr) = StalledPipe::new();
    let mut cmd = agent(&config, &["run"]);
    cmd.env("NOTIFY_SOCKET", &notify.path);
    let mut agent = ProcGuard::spawn_with_stderr(cmd, Some(stderr));
    assert!(wait_until(Duration::from_secs(10), || notify.has("READY=1")));
    agent.signal(libc::SIGTERM);
    assert!(
        wait_until(Duration::from_secs(10), || notify.has("draining")),
        "{:?}",
        notify.all()
    );
    pipe.resume();
    let (code, _) = finish_stop(&s, &mut agent, held);
    assert_eq!(code, Some(0));
    let err = pipe.text();
    let order = [
        "signal handlers installed",
        "ready: waiting for SIGTERM",
        "stop signal received",
        "drained: no connections left",
    ];
    let at: Vec<Option<usize>> = order.iter().map(|l| err.find(l)).collect();
    assert!(
        at.iter().all(Option::is_some) && at.windows(2).all(|w| w[0] < w[1]),
        "{at:?}\n{err}"
    );
    assert!(!err.contains("were dropped"), "{err}");
}

/// Status clients that connect and never read (more than are answered at once), and one that reads
/// a byte at a time, slowly: the stop does not wait for any of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_clients_that_never_read_do_not_hold_the_stop() {
    use std::io::Read;
    let s = setup().await;
    let notify = NotifySocket::bind(s.dir.path());
    let config = s.config(&quick(""));
    let held = s.connections_to_us(1);
    let mut cmd = agent(&config, &["run"]);
    cmd.env("NOTIFY_SOCKET", &notify.path)
        .env("RUNTIME_DIRECTORY", s.dir.path());
    let mut agent = ProcGuard::spawn(cmd);
    assert!(
        agent.wait_stderr("status socket ready", Duration::from_secs(10)),
        "{}",
        agent.stderr()
    );
    let socket = s.dir.path().join("status.sock");
    let silent: Vec<std::os::unix::net::UnixStream> = (0..64)
        .map(|_| std::os::unix::net::UnixStream::connect(&socket).unwrap())
        .collect();
    let mut slow = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    let mut byte = [0u8; 1];
    slow.read_exact(&mut byte).unwrap();
    agent.signal(libc::SIGTERM);
    let (code, _) = finish_stop(&s, &mut agent, held);
    assert_eq!(code, Some(0), "{}", agent.stderr());
    drop(silent);
}

/// The state directory is a tiny filesystem that is full: each save fails with ENOSPC (said in the
/// log, naming the file), the state file from before is kept whole (an atomic write that cannot be
/// finished is not begun over it), no temporary file is left, and the drain goes on to exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_state_directory_loses_no_state_and_holds_no_stop() {
    const GONE: &str = "2923923e-fe8a-484f-bdbc-e11559b1f48f";
    let s = setup().await;
    let stage = s.dir.path().join("stage");
    std::fs::create_dir_all(&stage).unwrap();
    // A state file an earlier run left: a membership this server was taken out of, not put back.
    let before = format!(
        "{{\n  \"memberships\": [{{\"pool_id\": \"{POOL}\", \"member_id\": \"{GONE}\", \
         \"address\": \"127.0.0.1\", \"protocol_port\": 1, \"weight\": 7, \"subnet_cidr_id\": null, \
         \"removed\": \"delete\", \"removed_at\": \"2026-01-01T00:00:00Z\"}}]\n}}\n"
    );
    std::fs::write(stage.join("state.json"), &before).unwrap();
    let Some(full) = FullFs::mount(&s.dir.path().join("state"), &stage) else {
        return;
    };
    assert_eq!(
        std::fs::read_to_string(full.path("state.json")).unwrap(),
        before
    );
    let notify = NotifySocket::bind(s.dir.path());
    let config = s.config(&quick(""));
    let held = s.connections_to_us(1);
    let mut cmd = agent(&config, &["run"]);
    cmd.env("NOTIFY_SOCKET", &notify.path)
        .env("STATE_DIRECTORY", &full.dir);
    full.enter(&mut cmd);
    let mut agent = ProcGuard::spawn(cmd);
    assert!(
        wait_until(Duration::from_secs(10), || notify.has("READY=1")),
        "{}",
        agent.stderr()
    );
    agent.signal(libc::SIGTERM);
    let (code, _) = finish_stop(&s, &mut agent, held);
    assert_eq!(code, Some(0), "{}", agent.stderr());
    let err = agent.stderr();
    let failed: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("could not write the state file"))
        .collect();
    assert_eq!(failed.len(), 2, "the snapshot and the stop's record: {err}");
    assert!(
        failed
            .iter()
            .all(|l| l.contains("No space left on device") && l.contains("state.json")),
        "{failed:?}"
    );
    assert_eq!(
        std::fs::read_to_string(full.path("state.json")).unwrap(),
        before,
        "the old state is kept whole"
    );
    assert_eq!(
        full.list(),
        ["filler", "state.json"],
        "no temporary file left"
    );
}
