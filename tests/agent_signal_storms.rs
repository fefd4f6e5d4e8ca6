//! Signal storms: bursts of SIGTERM/SIGHUP, and SIGINT twice, in each state of the agent. Whatever
//! arrives, exactly one drain runs (one DELETE per membership, one "stop: deregistering" line) and it
//! ends as documented: exit 0 once the held connection closes, 130 right after a second SIGINT, SIGHUP
//! ignored, a SIGTERM storm never an abort.
//!
//! The states: *starting* is until READY, held open here by delaying the IAM token request; the
//! tests send their signals after the agent's "signal handlers installed" line. A signal before the
//! handlers exist is held pending from the first line of `main` (only the dynamic loader's first
//! instants after exec remain, as for any process) and then handled as a stop while starting, which
//! one test checks by starting the agent with SIGTERM already pending. *Serving* is after "ready". *Deleting* is while
//! the DELETE is held in the simulator by a delay. *Settling* is after the DELETE, inside a long settle
//! window. *Draining* is after the DELETE with a connection held. *Stopping the child* is `exec`'s last
//! step, after the drain, while the child takes its time to exit.
//!
//! Two of the same signal sent back to back may be delivered as one (the kernel and signal-hook both
//! coalesce a pending signal), so a test that needs two SIGINTs counted waits for the first one's log
//! line before sending the second. Storms need no such care: any number of SIGTERMs must act as one.

mod common;

use std::time::{Duration, Instant};

use common::*;
use elb_sim::{Fault, FaultAction};

const DELETE_PATH: &str = "/v3/*/elb/pools/*/members/*";
const QUICK: &str = "settle = \"100ms\"\npoll_interval = \"20ms\"\ntimeout = \"20s\"";
const LIMIT: Duration = Duration::from_secs(15);
/// Long enough that "exited before the delay ended" proves the exit did not wait for it.
const HELD_MS: u64 = 3000;
const STORM: usize = 50;

/// `n` signals as fast as kill(2) goes, alternating SIGTERM and SIGHUP.
fn storm(agent: &ProcGuard, n: usize) {
    for i in 0..n {
        agent.signal(if i % 2 == 0 {
            libc::SIGTERM
        } else {
            libc::SIGHUP
        });
    }
}

fn delay(ms: u64) -> Vec<FaultAction> {
    vec![FaultAction::Delay { ms }]
}

fn fault_taken(s: &Setup) -> bool {
    s.sim
        .shared()
        .lock_for_tests(|inner| inner.faults.is_empty())
}

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

fn no_panic(agent: &ProcGuard) {
    assert!(!agent.stderr().contains("panicked"), "{}", agent.stderr());
}

/// After a storm: one drain, still waiting for the held connection; then it closes and the agent
/// exits 0. One DELETE in the simulator's log.
fn one_drain_then_exit_0(s: &Setup, agent: &mut ProcGuard, held: Vec<std::net::TcpStream>) {
    assert!(
        wait_until(LIMIT, || !s.sim.member_exists(POOL, MEMBER)),
        "{}",
        agent.stderr()
    );
    assert!(
        agent.wait_stderr("drain: draining", LIMIT),
        "{}",
        agent.stderr()
    );
    assert!(
        agent.is_running(),
        "a SIGTERM storm is not an abort:\n{}",
        agent.stderr()
    );
    drop(held);
    let exit = agent.wait_timeout(LIMIT).expect("exits once drained");
    let err = agent.stderr();
    assert_eq!(exit.code(), Some(0), "{err}");
    assert_eq!(count(&err, "stop: deregistering"), 1, "one drain:\n{err}");
    assert_eq!(count(&err, "drained: no connections left"), 1, "{err}");
    assert_eq!(deletes(&s.sim).len(), 1, "one DELETE");
    assert!(s.sim.member_exists(POOL, OTHER));
    no_panic(agent);
}

/// Waits for 130 and says how long it took from `since`.
fn exits_130(agent: &mut ProcGuard, since: Instant) -> Duration {
    let exit = agent.wait_timeout(LIMIT).expect("exits");
    assert_eq!(exit.code(), Some(130), "{}", agent.stderr());
    no_panic(agent);
    since.elapsed()
}

/// The first SIGINT, and the line that says the agent took it as a stop.
fn first_sigint(agent: &ProcGuard, says: &str) {
    agent.signal(libc::SIGINT);
    assert!(agent.wait_stderr(says, LIMIT), "{}", agent.stderr());
}

/// The second SIGINT: the agent exits 130 at once (no panic); how long it took.
fn second_sigint_exits_130(agent: &mut ProcGuard) -> Duration {
    let second = Instant::now();
    agent.signal(libc::SIGINT);
    exits_130(agent, second)
}

/// `run` held in start-up: the handlers are installed and the IAM token request is delayed.
async fn starting(s: &Setup) -> ProcGuard {
    s.sim
        .inject_fault(Fault::new("POST", "/v3/auth/tokens", delay(HELD_MS)));
    let agent = ProcGuard::spawn(agent(&s.config(QUICK), &["run"]));
    assert!(
        agent.wait_stderr("signal handlers installed", LIMIT),
        "{}",
        agent.stderr()
    );
    assert!(wait_until(LIMIT, || fault_taken(s)), "{}", agent.stderr());
    agent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_while_starting_is_one_stop_it_finishes_start_up_and_drains() {
    let s = setup().await;
    let held = s.connections_to_us(1);
    let mut agent = starting(&s).await;
    storm(&agent, STORM);
    assert!(
        agent.wait_stderr("stop signal while starting", LIMIT),
        "{}",
        agent.stderr()
    );
    one_drain_then_exit_0(&s, &mut agent, held);
    let err = agent.stderr();
    assert!(
        !err.contains("ready: waiting"),
        "a stop before ready never reports ready:\n{err}"
    );
    assert!(err.contains("SIGHUP received"), "{err}");
}

/// A SIGTERM that arrives before the handlers exist. The agent blocks the stop signals as the first
/// thing `main` does, so such a signal is pending, not fatal; this test starts the agent in exactly
/// that state (blocked and pending are both inherited across exec) and checks that it is then
/// handled as a stop during start-up: memberships resolved, deregistered, drained, exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_before_the_handlers_are_installed_is_a_stop_not_a_kill() {
    use std::os::unix::process::CommandExt;
    let s = setup().await;
    let held = s.connections_to_us(1);
    let mut cmd = agent(&s.config(QUICK), &["run"]);
    // SAFETY: only async-signal-safe calls (sigemptyset, sigaddset, sigprocmask, kill, getpid)
    // between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            libc::kill(libc::getpid(), libc::SIGTERM);
            Ok(())
        });
    }
    let mut agent = ProcGuard::spawn(cmd);
    assert!(
        agent.wait_stderr("stop signal while starting", LIMIT),
        "{}",
        agent.stderr()
    );
    one_drain_then_exit_0(&s, &mut agent, held);
    assert!(!agent.stderr().contains("ready: waiting"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_twice_while_starting_exits_130_at_once_without_deregistering() {
    let s = setup().await;
    let mut agent = starting(&s).await;
    first_sigint(&agent, "stop signal while starting");
    let took = second_sigint_exits_130(&mut agent);
    assert!(
        took < Duration::from_millis(HELD_MS),
        "did not wait for start-up: {took:?}"
    );
    assert!(deletes(&s.sim).is_empty());
    assert!(s.sim.member_exists(POOL, MEMBER));
}

/// `run` with `[register] on_start`, stopped while waiting for the member it created to turn ONLINE
/// (the simulator's health check runs once a minute here, so it stays INITIAL): the storm cuts the
/// wait short, and the member just registered is drained, well before `healthy_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_while_registering_on_start_drains_what_was_registered() {
    let s = setup_with(|mut sc| {
        sc.member.retain(|m| m.id.as_deref() != Some(MEMBER));
        sc.settings(|st| st.health_interval = Duration::from_secs(60))
    })
    .await;
    let port = s.app.addr.port();
    let config = s.config_by_address(
        &format!("{QUICK}\nports = [{port}]"),
        "[register]\non_start = true\nhealthy_timeout = \"60s\"\n",
    );
    let mut agent = ProcGuard::spawn(agent(&config, &["run"]));
    assert!(
        wait_until(LIMIT, || s.ours().len() == 1),
        "{}",
        agent.stderr()
    );
    let stopped = Instant::now();
    storm(&agent, STORM);
    let exit = agent.wait_timeout(LIMIT).expect("exits");
    let err = agent.stderr();
    assert_eq!(exit.code(), Some(0), "{err}");
    assert!(stopped.elapsed() < LIMIT, "{:?}", stopped.elapsed());
    assert!(err.contains("stop signal while registering"), "{err}");
    assert!(!err.contains("ready: waiting"), "{err}");
    assert_eq!(s.ours().len(), 0, "the member it registered is drained");
    assert_eq!(count(&err, "stop: deregistering"), 1, "{err}");
    assert_eq!(deletes(&s.sim).len(), 1);
    let creates = s
        .sim
        .request_log()
        .iter()
        .filter(|r| r.method == "POST" && r.service == "elb")
        .count();
    assert_eq!(creates, 1);
    no_panic(&agent);
}

/// Two SIGINTs while `run` waits for the member it registered on start to turn ONLINE: the first cuts
/// the wait short and starts the drain of what was registered, the second abandons that drain at once
/// (a connection held to the application would otherwise keep it for `drain.timeout`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_twice_while_registering_on_start_exits_130_at_once() {
    let s = setup_with(|mut sc| {
        sc.member.retain(|m| m.id.as_deref() != Some(MEMBER));
        sc.settings(|st| st.health_interval = Duration::from_secs(60))
    })
    .await;
    let port = s.app.addr.port();
    let config = s.config_by_address(
        &format!("{QUICK}\nports = [{port}]"),
        "[register]\non_start = true\nhealthy_timeout = \"60s\"\n",
    );
    let _held = std::net::TcpStream::connect(s.app.addr).expect("connect to the application");
    let mut agent = ProcGuard::spawn(agent(&config, &["run"]));
    assert!(
        wait_until(LIMIT, || s.ours().len() == 1),
        "{}",
        agent.stderr()
    );
    first_sigint(&agent, "stop signal while registering");
    let took = second_sigint_exits_130(&mut agent);
    assert!(
        took < Duration::from_secs(2),
        "did not wait for the drain: {took:?}"
    );
    assert!(
        count(&agent.stderr(), "stop: deregistering") <= 1,
        "{}",
        agent.stderr()
    );
    assert!(deletes(&s.sim).len() <= 1);
}

async fn serving(s: &Setup) -> ProcGuard {
    let agent = ProcGuard::spawn(agent(&s.config(QUICK), &["run"]));
    assert!(
        agent.wait_stderr("ready: waiting", LIMIT),
        "{}",
        agent.stderr()
    );
    agent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_while_serving_starts_exactly_one_drain() {
    let s = setup().await;
    let held = s.connections_to_us(1);
    let mut agent = serving(&s).await;
    storm(&agent, STORM);
    one_drain_then_exit_0(&s, &mut agent, held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_alone_while_serving_is_ignored() {
    let s = setup().await;
    let mut agent = serving(&s).await;
    for _ in 0..STORM {
        agent.signal(libc::SIGHUP);
    }
    assert!(
        agent.wait_stderr("SIGHUP received", LIMIT),
        "{}",
        agent.stderr()
    );
    // A SIGTERM after the burst: the process was alive and serving all along, and drains now.
    assert!(agent.is_running());
    assert!(deletes(&s.sim).is_empty(), "SIGHUP never drains");
    agent.signal(libc::SIGTERM);
    assert_eq!(
        agent.wait_timeout(LIMIT).expect("exits").code(),
        Some(0),
        "{}",
        agent.stderr()
    );
    assert_eq!(deletes(&s.sim).len(), 1);
    assert_eq!(count(&agent.stderr(), "stop: deregistering"), 1);
}

/// The first SIGINT while serving starts the stop; the second, sent as soon as the first is logged,
/// abandons it at once, whatever step it has reached, though a connection is held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_twice_from_serving_exits_130_at_once() {
    let s = setup().await;
    let _held = s.connections_to_us(1);
    let mut agent = serving(&s).await;
    first_sigint(&agent, "stop signal received");
    let took = second_sigint_exits_130(&mut agent);
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(
        !agent.stderr().contains("drained: no connections left"),
        "{}",
        agent.stderr()
    );
    assert!(deletes(&s.sim).len() <= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_while_the_delete_is_in_flight_joins_it() {
    let s = setup().await;
    let held = s.connections_to_us(1);
    let mut agent = serving(&s).await;
    s.sim
        .inject_fault(Fault::new("DELETE", DELETE_PATH, delay(500)));
    agent.signal(libc::SIGTERM);
    assert!(wait_until(LIMIT, || fault_taken(&s)), "{}", agent.stderr());
    storm(&agent, STORM);
    one_drain_then_exit_0(&s, &mut agent, held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_twice_while_the_delete_is_in_flight_exits_130_at_once() {
    let s = setup().await;
    let _held = s.connections_to_us(1);
    let mut agent = serving(&s).await;
    s.sim
        .inject_fault(Fault::new("DELETE", DELETE_PATH, delay(HELD_MS)));
    agent.signal(libc::SIGINT);
    assert!(wait_until(LIMIT, || fault_taken(&s)), "{}", agent.stderr());
    assert!(
        agent.wait_stderr("stop signal received", LIMIT),
        "{}",
        agent.stderr()
    );
    let took = second_sigint_exits_130(&mut agent);
    assert!(
        took < Duration::from_millis(HELD_MS),
        "did not wait for the DELETE: {took:?}"
    );
    assert_eq!(count(&agent.stderr(), "stop: deregistering"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_while_draining_changes_nothing() {
    let s = setup().await;
    let held = s.connections_to_us(1);
    let mut agent = serving(&s).await;
    agent.signal(libc::SIGTERM);
    assert!(
        agent.wait_stderr("drain: draining", LIMIT),
        "{}",
        agent.stderr()
    );
    storm(&agent, STORM);
    storm(&agent, STORM);
    one_drain_then_exit_0(&s, &mut agent, held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_twice_while_draining_exits_130_at_once() {
    let s = setup().await;
    let _held = s.connections_to_us(1);
    let mut agent = serving(&s).await;
    first_sigint(&agent, "drain: draining");
    storm(&agent, STORM);
    let took = second_sigint_exits_130(&mut agent);
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(deletes(&s.sim).len(), 1);
}

/// Settling: the DELETE answered, the agent waits for the load balancer to stop sending new
/// connections (here a 10 s settle window). A second SIGINT ends that wait at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_twice_while_settling_exits_130_at_once() {
    const SETTLE_S: u64 = 10;
    let s = setup().await;
    let agent_config = s.config(&format!(
        "settle = \"{SETTLE_S}s\"\npoll_interval = \"20ms\"\ntimeout = \"20s\""
    ));
    let mut agent = ProcGuard::spawn(agent(&agent_config, &["run"]));
    assert!(
        agent.wait_stderr("ready: waiting", LIMIT),
        "{}",
        agent.stderr()
    );
    first_sigint(&agent, "drain: settling");
    let took = second_sigint_exits_130(&mut agent);
    assert!(
        took < Duration::from_secs(2),
        "did not wait out the {SETTLE_S} s settle window: {took:?}"
    );
    let err = agent.stderr();
    assert!(!err.contains("drain: draining"), "still settling:\n{err}");
    assert_eq!(deletes(&s.sim).len(), 1, "the DELETE was answered first");
    assert!(!s.sim.member_exists(POOL, MEMBER));
}

/// `exec` supervising the slow-stopping app, ready.
async fn exec_ready() -> (Setup, ProcGuard) {
    let port = unclaimed_port();
    let s = setup_on_port(port).await;
    let config = s.config(&format!("{QUICK}\nports = [{port}]"));
    let mut args = vec!["exec", "--grace", "10s", "--"];
    let cmd = python_echo_app(port, HELD_MS as f64 / 1000.0);
    args.extend(cmd.iter().map(String::as_str));
    let agent = ProcGuard::spawn(agent(&config, &args));
    assert!(
        agent.wait_stderr("ready: supervising", LIMIT),
        "{}",
        agent.stderr()
    );
    assert!(
        wait_until(LIMIT, || agent.stdout().contains("pid ")),
        "{}",
        agent.stderr()
    );
    (s, agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_a_storm_while_the_child_is_stopping_stops_it_once_and_passes_its_status() {
    let (s, mut agent) = exec_ready().await;
    agent.signal(libc::SIGTERM);
    assert!(
        wait_until(LIMIT, || agent.stdout().contains("got TERM")),
        "{}",
        agent.stderr()
    );
    storm(&agent, STORM);
    let exit = agent.wait_timeout(LIMIT).expect("exits");
    assert_eq!(
        exit.code(),
        Some(3),
        "the child's own status:\n{}",
        agent.stderr()
    );
    assert_eq!(
        count(&agent.stdout(), "got TERM"),
        1,
        "stopped once:\n{}",
        agent.stdout()
    );
    assert_eq!(count(&agent.stderr(), "stop: deregistering"), 1);
    assert_eq!(deletes(&s.sim).len(), 1);
    no_panic(&agent);
}

/// `exec`: the second SIGINT abandons the drain, as anywhere, but the agent then still stops the
/// child as usual (its stop signal, its grace period) and exits with the child's status, not 130.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_sigint_twice_while_draining_abandons_the_drain_and_stops_the_child() {
    let (s, mut agent) = exec_ready().await;
    let _held = s.connections_to_us(1);
    first_sigint(&agent, "drain: draining");
    assert!(
        !agent.stdout().contains("got TERM"),
        "the child runs while the drain lasts"
    );
    let second = Instant::now();
    agent.signal(libc::SIGINT);
    let exit = agent.wait_timeout(LIMIT).expect("exits");
    let took = second.elapsed();
    let err = agent.stderr();
    assert_eq!(exit.code(), Some(3), "the child's own status:\n{err}");
    assert!(err.contains("second SIGINT: abandoning the drain"), "{err}");
    assert!(!err.contains("drained: no connections left"), "{err}");
    assert_eq!(
        count(&agent.stdout(), "got TERM"),
        1,
        "stopped once, gracefully:\n{}",
        agent.stdout()
    );
    // The child's own shutdown (HELD_MS) is waited for; the 20 s drain deadline is not.
    assert!(
        took >= Duration::from_millis(HELD_MS) && took < Duration::from_secs(20),
        "{took:?}"
    );
    assert_eq!(deletes(&s.sim).len(), 1);
    no_panic(&agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_sigint_while_the_child_is_stopping_kills_it_at_once() {
    let (s, mut agent) = exec_ready().await;
    agent.signal(libc::SIGINT);
    assert!(
        wait_until(LIMIT, || agent.stdout().contains("got TERM")),
        "{}",
        agent.stderr()
    );
    let second = Instant::now();
    agent.signal(libc::SIGINT);
    let exit = agent.wait_timeout(LIMIT).expect("exits");
    let took = second.elapsed();
    assert_eq!(
        exit.code(),
        Some(128 + libc::SIGKILL),
        "the child's status, killed:\n{}",
        agent.stderr()
    );
    assert!(
        took < Duration::from_millis(HELD_MS),
        "did not wait for the child: {took:?}"
    );
    assert_eq!(deletes(&s.sim).len(), 1);
    no_panic(&agent);
}
