//! `exec -- CMD`: elb-drain as the parent of the application (containers, supervisord). The child is a
//! real echo server; the test drives real signals and connections.

mod common;

use std::net::TcpStream;
use std::time::Duration;

use common::*;

/// A setup whose member is served by the supervised child instead of the in-test echo server.
async fn exec_setup() -> (Setup, u16) {
    let port = unclaimed_port();
    (setup_on_port(port).await, port)
}

fn spawn_exec(s: &Setup, port: u16) -> ProcGuard {
    spawn_exec_with(s, port, &[])
}

/// [`spawn_exec`] with more options for `exec` before the `--`.
fn spawn_exec_with(s: &Setup, port: u16, options: &[&str]) -> ProcGuard {
    ProcGuard::spawn(exec_command(s, port, options))
}

fn exec_command(s: &Setup, port: u16, options: &[&str]) -> std::process::Command {
    let config = s.config(&format!(
        "settle = \"100ms\"\npoll_interval = \"20ms\"\ntimeout = \"20s\"\nports = [{port}]"
    ));
    let mut args = vec!["exec", "--grace", "2s"];
    args.extend(options);
    args.push("--");
    let cmd = python_echo_app(port, 0.0);
    args.extend(cmd.iter().map(String::as_str));
    agent(&config, &args)
}

/// `exec` spawned and ready: the agent and its child's PID.
fn supervising(s: &Setup, port: u16) -> (ProcGuard, i32) {
    let agent = spawn_exec(s, port);
    let pid = child_pid(&agent);
    assert!(
        agent.wait_stderr("ready: supervising", Duration::from_secs(10)),
        "{}",
        agent.stderr()
    );
    (agent, pid)
}

/// The child says it received `sig` (the Python app prints "got NAME").
fn child_got(agent: &ProcGuard, sig: &str) {
    let said = format!("got {sig}");
    assert!(
        wait_until(Duration::from_secs(5), || agent.stdout().contains(&said)),
        "the child got {sig}:\n{}\n{}",
        agent.stdout(),
        agent.stderr()
    );
}

fn child_pid(agent: &ProcGuard) -> i32 {
    assert!(
        wait_until(Duration::from_secs(10), || agent.stdout().contains("pid ")),
        "{}",
        agent.stderr()
    );
    agent
        .stdout()
        .lines()
        .find_map(|l| l.strip_prefix("pid "))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_first_then_stops_the_child_and_passes_its_status_through() {
    let (s, port) = exec_setup().await;
    let (mut agent, _pid) = supervising(&s, port);
    let mut held = s.connections_to_us(1);
    // Signals other than the stop signals go to the child.
    agent.signal(libc::SIGUSR1);
    child_got(&agent, "USR1");

    agent.signal(libc::SIGTERM);
    assert!(wait_until(Duration::from_secs(5), || !s
        .sim
        .member_exists(POOL, MEMBER)));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !agent.stdout().contains("got TERM"),
        "the child keeps serving while connections drain"
    );
    assert_eq!(echo(&mut held[0], "still served").unwrap(), "still served");
    drop(held);
    let exit = agent.wait_timeout(Duration::from_secs(10)).expect("exits");
    assert!(
        agent.stdout().contains("got TERM"),
        "the child got its stop signal after the drain"
    );
    assert_eq!(
        exit.code(),
        Some(3),
        "the child's status: {}",
        agent.stderr()
    );
}

/// Under systemd (`ExecStart=elb-drain exec -- app`), stopping the application after the drain is
/// stop time too: the agent says so and asks for the grace period, so a short `TimeoutStopSec` does not
/// SIGKILL the application in the middle of its own shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_systemd_the_childs_grace_period_is_asked_for() {
    let (s, port) = exec_setup().await;
    let notify = NotifySocket::bind(s.dir.path());
    let mut agent = ProcGuard::spawn({
        let mut cmd = exec_command(&s, port, &[]);
        cmd.env("NOTIFY_SOCKET", &notify.path);
        cmd
    });
    let pid = child_pid(&agent);
    assert!(
        wait_until(Duration::from_secs(10), || notify.has("READY=1")),
        "{}",
        agent.stderr()
    );
    agent.signal(libc::SIGTERM);
    let exit = agent.wait_timeout(Duration::from_secs(10)).expect("exits");
    assert_eq!(exit.code(), Some(3), "{}", agent.stderr());
    notify.caught_up();
    // Field by field: what is sent at one moment may share a datagram.
    let all: Vec<String> = notify
        .all()
        .iter()
        .flat_map(|m| m.lines().map(str::to_owned).collect::<Vec<_>>())
        .collect();
    let stopping = format!("STATUS=stopping the application (pid {pid}, SIGTERM, grace 2 s)");
    let at = all
        .iter()
        .position(|m| m == &stopping)
        .unwrap_or_else(|| panic!("no {stopping:?} in {all:?}"));
    assert!(
        all[..at].iter().any(|m| m == "STATUS=drained"),
        "after the drain: {all:?}"
    );
    assert_eq!(
        all.get(at + 1).map(String::as_str),
        Some("EXTEND_TIMEOUT_USEC=7000000"),
        "the grace (2 s) and a margin: {all:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_that_dies_is_deregistered_at_once() {
    let (s, port) = exec_setup().await;
    let (mut agent, pid) = supervising(&s, port);
    assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: kill(2) on the supervised child's PID (it is alive: the agent is still waiting on it);
    // clock_gettime writes our timespec.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
        libc::kill(pid, libc::SIGKILL);
    }
    let killed_ns = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    let exit = agent.wait_timeout(Duration::from_secs(10)).expect("exits");
    assert_eq!(
        exit.code(),
        Some(128 + 9),
        "the child's fate, passed through: {}",
        agent.stderr()
    );
    let del = deletes(&s.sim);
    assert_eq!(del.len(), 1, "{}", agent.stderr());
    assert_eq!(del[0].status, 204);
    let after_ms = (del[0].mono_ns.saturating_sub(killed_ns)) as f64 / 1e6;
    assert!(after_ms < 100.0, "DELETE {after_ms:.1} ms after the crash");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_that_dies_while_the_agent_starts_is_deregistered_too() {
    let s = setup().await;
    let config = s.config("settle = \"100ms\"\npoll_interval = \"20ms\"");
    // The child is gone long before the memberships are resolved (IAM login, ShowMember).
    let mut agent = ProcGuard::spawn(agent(&config, &["exec", "--", "sh", "-c", "exit 7"]));
    let exit = agent.wait_timeout(Duration::from_secs(15)).expect("exits");
    assert_eq!(
        exit.code(),
        Some(7),
        "the child's status: {}",
        agent.stderr()
    );
    assert!(
        !s.sim.member_exists(POOL, MEMBER),
        "a server whose application died at start is taken out: {}",
        agent.stderr()
    );
    assert_eq!(deletes(&s.sim).len(), 1);
}

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

/// SIGHUP is the application's reload signal: `exec` passes it on, while serving and while draining,
/// and never takes it for a stop (no drain starts: the only DELETE follows the SIGTERM).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_is_forwarded_to_the_child_and_starts_no_drain() {
    let (s, port) = exec_setup().await;
    let (mut agent, _pid) = supervising(&s, port);
    let mut held = s.connections_to_us(1);
    agent.signal(libc::SIGHUP);
    child_got(&agent, "HUP");
    assert!(agent.is_running(), "{}", agent.stderr());
    assert!(s.sim.member_exists(POOL, MEMBER), "{}", agent.stderr());
    assert_eq!(echo(&mut held[0], "after HUP").unwrap(), "after HUP");

    let term = mono_ns();
    agent.signal(libc::SIGTERM);
    assert!(
        agent.wait_stderr("drain: draining", Duration::from_secs(10)),
        "{}",
        agent.stderr()
    );
    // Draining: the child still serves, and still gets its reload signal.
    agent.signal(libc::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(5), || count(&agent.stdout(), "got HUP")
            == 2),
        "{}\n{}",
        agent.stdout(),
        agent.stderr()
    );
    assert!(!agent.stdout().contains("got TERM"), "{}", agent.stdout());
    drop(held);
    let exit = agent.wait_timeout(Duration::from_secs(10)).expect("exits");
    assert_eq!(exit.code(), Some(3), "{}", agent.stderr());
    let del = deletes(&s.sim);
    assert_eq!(del.len(), 1, "one drain: {}", agent.stderr());
    assert!(
        del[0].mono_ns > term,
        "the drain began at the SIGTERM, not at the SIGHUP"
    );
    assert!(
        !agent.stderr().contains("SIGHUP received"),
        "not ignored as in run: {}",
        agent.stderr()
    );
}

/// `--stop-signal SIGQUIT`: after the drain the child gets SIGQUIT (never SIGTERM), and the status it
/// exits with on it (4) is the agent's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configured_stop_signal_reaches_the_child_after_the_drain() {
    let (s, port) = exec_setup().await;
    let mut agent = spawn_exec_with(&s, port, &["--stop-signal", "SIGQUIT"]);
    let _pid = child_pid(&agent);
    assert!(
        agent.wait_stderr("ready: supervising", Duration::from_secs(10)),
        "{}",
        agent.stderr()
    );
    let mut held = s.connections_to_us(1);
    agent.signal(libc::SIGTERM);
    assert!(
        agent.wait_stderr("drain: draining", Duration::from_secs(10)),
        "{}",
        agent.stderr()
    );
    assert!(!s.sim.member_exists(POOL, MEMBER));
    assert_eq!(echo(&mut held[0], "draining").unwrap(), "draining");
    assert!(
        !agent.stdout().contains("got "),
        "nothing for the child while its connections drain: {}",
        agent.stdout()
    );
    drop(held);
    let exit = agent.wait_timeout(Duration::from_secs(10)).expect("exits");
    assert_eq!(
        exit.code(),
        Some(4),
        "the child's status on SIGQUIT: {}",
        agent.stderr()
    );
    let out = agent.stdout();
    assert_eq!(count(&out, "got QUIT"), 1, "{out}");
    assert!(!out.contains("got TERM"), "{out}");
}

/// Under a manager that stopped reading after READY (its notify queue full): the drain, the child's
/// stop signal and its status come as with a manager that reads, in the usual time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notify_socket_no_longer_read_does_not_hold_the_stop() {
    let (s, port) = exec_setup().await;
    let notify = NotifySocket::bind_stalling(s.dir.path(), "READY=1");
    let mut agent = ProcGuard::spawn({
        let mut cmd = exec_command(&s, port, &[]);
        cmd.env("NOTIFY_SOCKET", &notify.path);
        cmd
    });
    assert!(
        wait_until(Duration::from_secs(10), || notify.stalled()),
        "{}",
        agent.stderr()
    );
    let held = s.connections_to_us(1);
    agent.signal(libc::SIGTERM);
    assert!(
        wait_until(Duration::from_secs(5), || !s
            .sim
            .member_exists(POOL, MEMBER)),
        "{}",
        agent.stderr()
    );
    drop(held);
    let exit = agent.wait_timeout(Duration::from_secs(10)).expect("exits");
    assert!(agent.stdout().contains("got TERM"), "{}", agent.stdout());
    assert_eq!(
        exit.code(),
        Some(3),
        "the child's status: {}",
        agent.stderr()
    );
}

/// stderr (shared with the child, as under systemd) is a full pipe nobody reads: the agent's log
/// cannot hold it (the child here writes only to stdout; one that blocks on the stalled journal itself
/// is killed at the end of its --grace, as any child that does not exit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stderr_nobody_reads_does_not_hold_the_stop() {
    let (s, port) = exec_setup().await;
    let (pipe, stderr) = StalledPipe::new();
    let mut agent = ProcGuard::spawn_with_stderr(exec_command(&s, port, &[]), Some(stderr));
    child_pid(&agent);
    // Ready: the snapshot of the state file is written once the memberships are resolved.
    assert!(
        wait_until(Duration::from_secs(10), || s
            .dir
            .path()
            .join("state.json")
            .exists()),
        "never ready"
    );
    let held = s.connections_to_us(1);
    agent.signal(libc::SIGTERM);
    assert!(wait_until(Duration::from_secs(5), || !s
        .sim
        .member_exists(POOL, MEMBER)));
    drop(held);
    let exit = agent.wait_timeout(Duration::from_secs(10)).expect("exits");
    assert_eq!(exit.code(), Some(3), "{}", agent.stdout());
    drop(pipe);
}

/// `ExecStart=elb-drain exec -- app` in a unit with `WatchdogSec=`: the supervisor is the unit's main
/// process, so it is the one that must ping, at half the interval, while the child serves and while a
/// stop drains (before: `exec` never pinged, and systemd would have killed a healthy service at the
/// first timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_watchdog_the_supervisor_pings_while_serving_and_while_draining() {
    let (s, port) = exec_setup().await;
    let notify = NotifySocket::bind(s.dir.path());
    let mut cmd = under_watchdog(exec_command(&s, port, &[]), Duration::from_millis(200));
    cmd.env("NOTIFY_SOCKET", &notify.path);
    let mut agent = ProcGuard::spawn(cmd);
    assert!(
        wait_until(Duration::from_secs(10), || notify.has("READY=1")),
        "{}",
        agent.stderr()
    );
    let in_a_second = || {
        let start = notify.count_lines("WATCHDOG=1");
        std::thread::sleep(Duration::from_secs(1));
        notify.count_lines("WATCHDOG=1") - start
    };
    let serving = in_a_second();
    assert!(
        (5..=15).contains(&serving),
        "{serving} pings in 1 s while serving at WatchdogSec=200ms (expected about 10)"
    );
    let held = s.connections_to_us(1);
    agent.signal(libc::SIGTERM);
    assert!(
        agent.wait_stderr("drain: draining", Duration::from_secs(5)),
        "{}",
        agent.stderr()
    );
    let draining = in_a_second();
    assert!(
        (5..=15).contains(&draining),
        "{draining} pings in 1 s while draining (expected about 10)"
    );
    drop(held);
    let exit = agent.wait_timeout(Duration::from_secs(10)).expect("exits");
    assert_eq!(
        exit.code(),
        Some(3),
        "the child's status: {}",
        agent.stderr()
    );
}
