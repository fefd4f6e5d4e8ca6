//! Everything the agent writes to on its way out, misbehaving: a notify socket whose manager stopped
//! reading (and one that reads again, within the retry bound and after it), a stderr (the journal)
//! that nobody reads, a state directory on a full filesystem or on one that stopped answering: each stop still ends in its usual time,
//! with its usual exit code. And status clients that connect and never read: the agent holds few of
//! them, none for long. (`exec`, `register` and the scale-in hook have theirs in their own files.)

mod common;

use std::time::{Duration, Instant};

use common::privfs::PrivateFs;
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
    notify.caught_up();
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
    notify.caught_up();
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
    notify.caught_up();
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
    let err = pipe.text_to_end();
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

/// A pool where this server has [`MANY`] memberships (one address and port, as many IDs): the status
/// document lists them all, 320 KiB, more than a Unix socket's send buffer (208 KiB by default), so an
/// answer to a client that does not read really waits. With a few memberships the document fits the
/// buffer: the write completes whether anyone reads or not, and a silent client costs nothing.
const BIG_POOL: &str = "b16b16b1-0000-4000-8000-000000000000";
const MANY: usize = 2_000;

fn big_pool(sc: elb_sim::Scenario) -> elb_sim::Scenario {
    let mut sc = sc.pool(BIG_POOL, |p| p);
    for i in 0..MANY {
        sc = sc.member(
            BIG_POOL,
            &format!("00000000-0000-4000-8000-{i:012x}"),
            "127.0.0.1",
            9,
        );
    }
    sc
}

/// The connections to the status socket at `path` that process `pid` holds open: its descriptors'
/// sockets that `/proc/net/unix` lists as connected at that path (an accepted socket bears its
/// listener's path; the clients here are unbound).
fn status_connections(pid: i32, path: &std::path::Path) -> usize {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    let held: std::collections::HashSet<String> = fds
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_str()?;
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let table = std::fs::read_to_string("/proc/net/unix").unwrap();
    let path = path.to_str().unwrap();
    table
        .lines()
        .skip(1)
        .filter(|l| {
            // Num RefCount Protocol Flags Type St Inode Path; St 03: connected.
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() == 8 && f[5] == "03" && f[7] == path && held.contains(f[6])
        })
        .count()
}

/// Status clients that connect and never read, three times as many as are answered at once, while
/// the document is too large to be written without a reader: the agent never holds more than 16 of
/// them, cuts each off after its second, and then holds none; `elb-drain status`, queued behind
/// them, gets the daemon's whole document (within the 5 s it waits: three rounds of a second).
/// Before, every silent client held a descriptor and a copy of the document for as long as it
/// stayed connected: 48 here, and as many as connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_clients_that_never_read_are_cut_off_and_hold_nothing() {
    use elb_drain::status::{ANSWER_WITHIN, CLIENTS_AT_ONCE};
    use std::io::Read;
    const SILENT: usize = 3 * CLIENTS_AT_ONCE;
    let s = setup_with(big_pool).await;
    // Some thousands of requests at start-up (a ShowMember each for the state file): time for them
    // on a loaded machine.
    let config = s.config(&quick(""));
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("retry_deadline = \"3s\"", "retry_deadline = \"30s\"")
        .replace("request_timeout = \"1s\"", "request_timeout = \"10s\"")
        + &format!(
            "[[member]]\npool_id = \"{BIG_POOL}\"\naddress = \"127.0.0.1\"\nprotocol_port = 9\n"
        );
    std::fs::write(&config, text).unwrap();
    let mut cmd = agent(&config, &["run"]);
    cmd.env("RUNTIME_DIRECTORY", s.dir.path());
    let agent = ProcGuard::spawn(cmd);
    assert!(
        agent.wait_stderr("status socket ready", Duration::from_secs(60)),
        "{}",
        agent.stderr()
    );
    let (pid, socket) = (agent.pid(), s.dir.path().join("status.sock"));
    assert_eq!(status_connections(pid, &socket), 0);
    let mut silent: Vec<std::os::unix::net::UnixStream> = (0..SILENT)
        .map(|_| std::os::unix::net::UnixStream::connect(&socket).unwrap())
        .collect();
    let mut cmd = common::agent(&config, &["status", "--json"]);
    cmd.env("RUNTIME_DIRECTORY", s.dir.path());
    let mut status = ProcGuard::spawn(cmd);
    let began = Instant::now();
    let mut most = 0;
    let code = loop {
        most = most.max(status_connections(pid, &socket));
        if let Some(exit) = status.wait_timeout(Duration::from_millis(10)) {
            break exit.code();
        }
        assert!(began.elapsed() < Duration::from_secs(60), "status hangs");
    };
    eprintln!(
        "elb-drain status exited after {:?}; the agent held at most {most} status connections",
        began.elapsed()
    );
    assert_eq!(code, Some(0), "{}", status.stderr());
    let doc: serde_json::Value = serde_json::from_str(&status.stdout()).expect("JSON");
    let daemon = &doc["daemon"];
    assert_eq!(
        daemon["memberships"].as_array().map(Vec::len),
        Some(MANY + 1),
        "the daemon answered in full (null: not within the 5 s `status` waits)"
    );
    let size = daemon.to_string().len();
    assert!(
        most <= CLIENTS_AT_ONCE,
        "{most} connections held at once, of {SILENT} silent clients"
    );
    // Each silent client was cut off, short of the document: the write did wait for it.
    let cut = Instant::now() + ANSWER_WITHIN * (SILENT / CLIENTS_AT_ONCE + 10) as u32;
    for (i, c) in silent.iter_mut().enumerate() {
        c.set_read_timeout(Some(
            cut.saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ))
        .unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got)
            .unwrap_or_else(|e| panic!("silent client {i} not cut off: {e}"));
        assert!(
            got.len() < size,
            "silent client {i} got {} bytes of {size}: the document fits the socket's buffer here, and this test proves nothing",
            got.len()
        );
    }
    assert!(
        wait_until(Duration::from_secs(10), || status_connections(pid, &socket)
            == 0),
        "{} status connections still held",
        status_connections(pid, &socket)
    );
}

/// `run` with its state directory in `fs`, under a notify socket, started and ready, with one
/// connection to the application held open. The notify socket is returned to be kept.
fn run_with_state_in(
    s: &Setup,
    fs: &PrivateFs,
) -> (ProcGuard, Vec<std::net::TcpStream>, NotifySocket) {
    let notify = NotifySocket::bind(s.dir.path());
    let config = s.config(&quick(""));
    let held = s.connections_to_us(1);
    let mut cmd = agent(&config, &["run"]);
    cmd.env("NOTIFY_SOCKET", &notify.path)
        .env("STATE_DIRECTORY", &fs.dir);
    fs.enter(&mut cmd);
    let agent = ProcGuard::spawn(cmd);
    assert!(
        wait_until(Duration::from_secs(10), || notify.has("READY=1")),
        "{}",
        agent.stderr()
    );
    (agent, held, notify)
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
    let Some(full) = PrivateFs::full(&s.dir.path().join("state"), &stage) else {
        return;
    };
    assert_eq!(
        std::fs::read_to_string(full.path("state.json")).unwrap(),
        before
    );
    let (mut agent, held, _notify) = run_with_state_in(&s, &full);
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

/// An empty state directory that works until [`PrivateFs::hang`]; `None` where the machine cannot
/// make one (the test skips, as the helper says).
fn hangable_state(s: &Setup) -> Option<PrivateFs> {
    let stage = s.dir.path().join("stage");
    std::fs::create_dir_all(&stage).unwrap();
    PrivateFs::hangable(&s.dir.path().join("state"), &stage)
}

/// The state directory stops answering once the agent has started (a hung NFS server: every access
/// sleeps in the kernel until the process is killed). The stop's record cannot be written: the agent
/// waits [`elb_drain::state::ACCESS_BOUND`] for it, says so naming the file, and goes on; the drain ends
/// and it exits 0. Before, the write held the runtime's only thread, and with it the drain, its
/// deadline and the exit, until systemd's SIGKILL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_directory_that_stops_answering_holds_no_stop() {
    let s = setup().await;
    let Some(fs) = hangable_state(&s) else {
        return;
    };
    let (mut agent, held, _notify) = run_with_state_in(&s, &fs);
    assert!(
        fs.path("state.json").exists(),
        "the start's snapshot was written while the filesystem answered: {}",
        agent.stderr()
    );
    fs.hang();
    agent.signal(libc::SIGTERM);
    let (code, _) = finish_stop(&s, &mut agent, held);
    assert_eq!(code, Some(0), "{}", agent.stderr());
    let err = agent.stderr();
    let failed: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("could not write the state file"))
        .collect();
    assert_eq!(failed.len(), 1, "the stop's record: {err}");
    assert!(
        failed[0].contains("not written within 5s") && failed[0].contains("state.json"),
        "{failed:?}"
    );
}

/// `drain` (as `ExecStop=`) when the state directory already stopped answering: it reads the state
/// file at the stop. The first read is waited for 5 s, once; every later read or write of the file
/// is given up at once while that one is stuck. The member is deleted and the drain exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_with_a_state_directory_that_stopped_answering_waits_for_it_once() {
    let s = setup().await;
    let Some(fs) = hangable_state(&s) else {
        return;
    };
    fs.hang();
    let config = s.config(&quick(""));
    let held = s.connections_to_us(1);
    let mut cmd = agent(&config, &["drain"]);
    cmd.env("STATE_DIRECTORY", &fs.dir);
    fs.enter(&mut cmd);
    let begun = Instant::now();
    let mut agent = ProcGuard::spawn(cmd);
    let (code, _) = finish_stop(&s, &mut agent, held);
    assert_eq!(code, Some(0), "{}", agent.stderr());
    let err = agent.stderr();
    let about_state: Vec<&str> = err.lines().filter(|l| l.contains("state.json")).collect();
    let waited = about_state
        .iter()
        .filter(|l| l.contains("not read within 5s"))
        .count();
    let at_once = about_state
        .iter()
        .filter(|l| l.contains("has not finished"))
        .count();
    assert_eq!(waited, 1, "one wait, the first read: {about_state:#?}");
    assert!(
        at_once >= 2 && waited + at_once == about_state.len(),
        "the snapshot's read and the writes given up at once: {about_state:#?}"
    );
    assert!(
        begun.elapsed() < Duration::from_secs(5) + USUAL,
        "{:?}",
        begun.elapsed()
    );
}
