//! systemd's notify protocol, with a real NOTIFY_SOCKET the test binds: the messages the agent sends
//! while starting, draining and exiting, their order, grouping and pacing.

mod common;

use std::time::Duration;

use common::*;
use elb_sim::{Fault, FaultAction};

/// The messages with the seconds of `N s left` replaced by `#`, and a STATUS dropped when it says
/// nothing the previous STATUS did not (only the seconds ticked on): what is left is the sequence of
/// things the agent told systemd, which is the same on every run.
fn normalised(all: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut last_status = String::new();
    for m in all {
        let m = m.trim_end();
        let m = match m.find(" s left") {
            Some(end) => {
                let start = m[..end].rfind(' ').map_or(0, |i| i + 1);
                format!("{}#{}", &m[..start], &m[end..])
            }
            None => m.to_owned(),
        };
        if m.starts_with("STATUS=") {
            if m == last_status {
                continue;
            }
            last_status.clone_from(&m);
        }
        out.push(m);
    }
    out
}

/// Health checks only at the simulator's start: a probe's short connection to the application would be
/// counted by a census that happens to catch it, and change what the agent reports.
fn no_health_probes(sc: elb_sim::Scenario) -> elb_sim::Scenario {
    sc.settings(|st| st.health_interval = Duration::from_secs(3600))
}

/// Status lines less than this apart, of one phase, would be progress sent too often: the agent's
/// interval (1 s here, where the poll interval is shorter). Times are the kernel's send stamps
/// ([`NotifySocket`]), and the agent counts the interval from its previous send, so no allowance for
/// either side's scheduling is needed; 10 ms is for the clocks' conversion.
const STATUS_EVERY: Duration = Duration::from_millis(1_000 - 10);

/// Extensions are renewed at most once a second. The agent counts from when it decided to renew, a
/// moment before the send: a thread delayed between the two (two loaded cores) is allowed 250 ms.
const RENEW_EVERY: Duration = Duration::from_millis(1_000 - 250);

/// The whole conversation with systemd, start to exit. The IAM token is answered late (800 ms), so
/// READY=1 can be seen to wait for the credential; the DELETE is answered 300 ms late, so the census
/// usually runs while deregistering.
///
/// What may differ from run to run is only what scheduling delays let out (a held progress line whose
/// turn came before the next phase did, a renewal earned a second later), so the sequence is checked
/// by its rules rather than as one exact list: each phase's line in order, at once; between them only
/// progress lines of the phase before, each at least a status interval after the previous line of its
/// phase; the verdict last, instead of the final phase; renewals earned by progress (the draining
/// phase, a closed connection), none while nothing progressed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_status_stopping_extend_and_the_final_status() {
    let s = setup_with(no_health_probes).await;
    let notify = NotifySocket::bind(s.dir.path());
    let config = s.config("settle = \"100ms\"\npoll_interval = \"20ms\"\ntimeout = \"30s\"");
    // The token's answer is held longer than the default request timeout of these tests.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("request_timeout = \"1s\"", "request_timeout = \"3s\"");
    std::fs::write(&config, text).unwrap();
    const IAM_DELAY_MS: u64 = 800;
    s.sim.inject_fault(Fault::new(
        "POST",
        "/v3/auth/tokens",
        vec![FaultAction::Delay { ms: IAM_DELAY_MS }],
    ));
    s.sim.inject_fault(Fault::new(
        "DELETE",
        "/v3/*/elb/pools/*/members/*",
        vec![FaultAction::Delay { ms: 300 }],
    ));
    let mut held = s.connections_to_us(2);
    let mut cmd = agent(&config, &["run"]);
    cmd.env("NOTIFY_SOCKET", &notify.path);
    let mut agent = ProcGuard::spawn(cmd);
    assert!(
        wait_until(Duration::from_secs(10), || notify.has("READY=1")),
        "{:?}\n{}",
        notify.all(),
        agent.stderr()
    );
    // READY only once the credential is in hand: after the token request was answered, never during
    // the delay (while the starting STATUS was already out).
    let token = s
        .sim
        .request_log()
        .into_iter()
        .find(|r| r.service == "iam" && r.status == 201)
        .expect("the token was fetched");
    let answered = token.mono_ns + IAM_DELAY_MS * 1_000_000;
    let starting = notify.sent_at("STATUS=starting").expect("starting STATUS");
    let ready = notify.sent_at("READY=1").unwrap();
    assert!(
        starting < answered && answered <= ready,
        "starting at {starting}, token answered at {answered}, READY at {ready} (ns)"
    );

    agent.signal(libc::SIGTERM);
    // Progress earns the renewals. The phase change to draining earns one (due a second after the
    // previous); then, with two connections open and none closing, nothing is earned until one
    // closes.
    assert!(
        wait_until(Duration::from_secs(5), || notify
            .has("draining: 2 connections")),
        "{:?}",
        notify.all()
    );
    let draining = notify
        .sent_at("draining: 2 connections")
        .expect("the draining phase");
    assert!(
        wait_until(Duration::from_secs(5), || !extends_since(&notify, draining)
            .is_empty()),
        "the draining phase earned a renewal: {:#?}",
        notify.timed()
    );
    let popped = mono_ns();
    held.pop();
    assert!(
        wait_until(Duration::from_secs(5), || notify
            .has("draining: 1 connections")),
        "{:?}",
        notify.all()
    );
    assert!(
        wait_until(Duration::from_secs(5), || !extends_since(&notify, popped)
            .is_empty()),
        "the closed connection earned a renewal: {:#?}",
        notify.timed()
    );
    drop(held);
    assert_eq!(
        agent
            .wait_timeout(Duration::from_secs(10))
            .expect("exits")
            .code(),
        Some(0),
        "{}",
        agent.stderr()
    );
    notify.caught_up();

    let all = notify.all();
    // What is said at one moment is one datagram: the stop's first.
    assert_eq!(
        &all[..3],
        [
            "STATUS=starting: resolving memberships\n",
            "READY=1\nSTATUS=serving; 1 memberships\n",
            "STOPPING=1\nSTATUS=stopping: deregistering\nEXTEND_TIMEOUT_USEC=30000000\n",
        ],
        "{all:#?}"
    );
    let fields = notify.fields();
    let statuses: Vec<String> = fields
        .iter()
        .filter(|f| f.starts_with("STATUS="))
        .cloned()
        .collect();
    // Each phase at once, in order; the count as it falls; the verdict instead of the final phase.
    // The settling line has the count when a census ended before the DELETE's answer (the usual
    // case), so only its start is given. Between these, only progress lines of the phase before.
    assert_phases(
        &normalised(&statuses),
        &[
            "STATUS=starting: resolving memberships",
            "STATUS=serving; 1 memberships",
            "STATUS=stopping: deregistering",
            "STATUS=deregistered 0/1, deregistering",
            "STATUS=deregistered 1/1, settling",
            "STATUS=deregistered 1/1, draining: 2 connections, # s left",
            "STATUS=deregistered 1/1, draining: 1 connections, # s left",
        ],
        "STATUS=drained",
    );
    // Every renewal reaches the stall window (30 s, the default); at most one a second; one was in
    // the stop's first datagram, one followed the draining phase, and none came between that one
    // and the close, while nothing progressed.
    let renewals: Vec<u64> = notify
        .timed_fields()
        .into_iter()
        .filter(|(_, f)| f.starts_with("EXTEND_TIMEOUT_USEC="))
        .inspect(|(_, f)| assert_eq!(f, "EXTEND_TIMEOUT_USEC=30000000", "{all:#?}"))
        .map(|(t, _)| t)
        .collect();
    assert!(
        renewals
            .windows(2)
            .all(|w| w[1] - w[0] >= RENEW_EVERY.as_nanos() as u64),
        "renewals less than a second apart: {:#?}",
        notify.timed()
    );
    let earned_by_draining = extends_since(&notify, draining)[0];
    assert!(
        !renewals
            .iter()
            .any(|t| *t > earned_by_draining && *t < popped),
        "a renewal while nothing progressed: {:#?}",
        notify.timed()
    );
    assert!(renewals.len() >= 3, "{all:#?}");
    assert!(
        statuses.windows(2).all(|w| w[0] != w[1]),
        "an unchanged STATUS is not repeated: {all:?}"
    );
    assert_paced(&notify);
    // The seconds left count down from the 30 s deadline.
    let left: Vec<u64> = statuses.iter().filter_map(|m| seconds_left(m)).collect();
    assert!(
        !left.is_empty() && left.windows(2).all(|w| w[0] >= w[1]) && left[0] <= 30,
        "{left:?}"
    );
}

/// When each EXTEND_TIMEOUT_USEC sent at or after `since` ([`mono_ns`]) was sent.
fn extends_since(notify: &NotifySocket, since: u64) -> Vec<u64> {
    notify
        .timed_fields()
        .into_iter()
        .filter(|(t, f)| *t >= since && f.starts_with("EXTEND_TIMEOUT_USEC="))
        .map(|(t, _)| t)
        .collect()
}

/// `statuses` (normalised) hold each of `phases` in order (a line matches one it starts with), and
/// `verdict` as the last line; any other line is a progress line (a count) of the phase matched
/// last, so it was sent before the next phase's line or not at all.
fn assert_phases(statuses: &[String], phases: &[&str], verdict: &str) {
    let mut next = 0;
    for (i, line) in statuses.iter().enumerate() {
        if i + 1 == statuses.len() {
            assert_eq!(line, verdict, "the verdict is the last word: {statuses:#?}");
            break;
        }
        if next < phases.len() && line.starts_with(phases[next]) {
            next += 1;
            continue;
        }
        let phase = next
            .checked_sub(1)
            .map(|k| phase_of(phases[k]))
            .unwrap_or_else(|| panic!("{line:?} before any phase: {statuses:#?}"));
        assert!(
            line.contains(" connections") && phase_of(line) == phase,
            "{line:?} is no progress line of the phase before it ({phase}): {statuses:#?}"
        );
    }
    assert_eq!(
        next,
        phases.len(),
        "missing {:?}: {statuses:#?}",
        phases.get(next)
    );
}

/// The phase a drain's STATUS line names ("deregistered 1/1, draining: 2 connections, ..." ->
/// "draining"); any other line is its own phase.
fn phase_of(status: &str) -> &str {
    match status.split_once(", ") {
        Some((head, rest)) if head.starts_with("STATUS=deregistered ") => {
            rest.split(':').next().unwrap_or(rest)
        }
        _ => status,
    }
}

/// Two STATUS lines of one phase are at least a status interval apart, as sent: only a new phase
/// (or the verdict) goes at once.
fn assert_paced(notify: &NotifySocket) {
    let statuses: Vec<(u64, String)> = notify
        .timed_fields()
        .into_iter()
        .filter(|(_, f)| f.starts_with("STATUS="))
        .collect();
    for w in statuses.windows(2) {
        let ((t0, a), (t1, b)) = (&w[0], &w[1]);
        if phase_of(a) == phase_of(b) {
            assert!(
                t1 - t0 >= STATUS_EVERY.as_nanos() as u64,
                "progress lines {} ms apart: {statuses:#?}",
                (t1 - t0) / 1_000_000
            );
        }
    }
}

/// The seconds of a `... N s left` STATUS.
fn seconds_left(m: &str) -> Option<u64> {
    m.trim_end()
        .strip_suffix(" s left")?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

/// `drain.stall_timeout = "2s"`: with two connections held open and nothing closing, the agent stops
/// asking systemd for time (its last extension reaches 2 s, so the unit's own timeout takes over 2 s
/// after the last progress), although it keeps reporting; a connection closing renews it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_drain_stops_asking_for_time_and_progress_resumes_it() {
    let s = setup_with(no_health_probes).await;
    let notify = NotifySocket::bind(s.dir.path());
    let config = s.config(
        "settle = \"100ms\"\npoll_interval = \"20ms\"\ntimeout = \"30s\"\nstall_timeout = \"2s\"",
    );
    let mut held = s.connections_to_us(2);
    let mut cmd = agent(&config, &["run"]);
    cmd.env("NOTIFY_SOCKET", &notify.path);
    let mut agent = ProcGuard::spawn(cmd);
    assert!(
        wait_until(Duration::from_secs(10), || notify.has("READY=1")),
        "{}",
        agent.stderr()
    );
    agent.signal(libc::SIGTERM);
    assert!(
        wait_until(Duration::from_secs(5), || notify
            .has("draining: 2 connections")),
        "{:?}",
        notify.all()
    );
    let first = seconds_left(
        &notify
            .fields()
            .into_iter()
            .find(|m| m.contains("draining: 2 connections"))
            .unwrap(),
    )
    .unwrap();
    // Stalled for twice the window, by the agent's own count of the seconds left.
    assert!(
        wait_until(Duration::from_secs(10), || notify.fields().iter().any(
            |m| {
                m.contains("draining: 2 connections")
                    && seconds_left(m).is_some_and(|n| n + 4 <= first)
            }
        )),
        "{:?}",
        notify.all()
    );
    let stalled = notify.timed_fields();
    let draining = stalled
        .iter()
        .position(|(_, m)| m.contains("draining: 2 connections"))
        .unwrap();
    let extends: Vec<&(u64, String)> = stalled
        .iter()
        .filter(|(_, m)| m.starts_with("EXTEND_TIMEOUT_USEC="))
        .collect();
    let since_draining = stalled[draining..]
        .iter()
        .filter(|(_, m)| m.starts_with("EXTEND_TIMEOUT_USEC="))
        .count();
    assert!(
        since_draining <= 1,
        "at most the one the phase change earned: {stalled:#?}"
    );
    let (last_extend, value) = extends.last().expect("extended at the stop");
    assert_eq!(
        value.trim_end(),
        "EXTEND_TIMEOUT_USEC=2000000",
        "reaches the stall window"
    );
    let latest = stalled.last().unwrap().0;
    assert!(
        latest - last_extend > 2_000_000_000,
        "silent for longer than the stall window while still reporting: {stalled:#?}"
    );

    // Progress: one connection closes, and the next extension follows (at once: the status line that
    // says so may wait for its turn, up to a second).
    let before = extends.len();
    let closed = mono_ns();
    held.pop();
    assert!(
        wait_until(Duration::from_secs(5), || {
            notify.has("draining: 1 connections")
                && notify
                    .timed_fields()
                    .iter()
                    .any(|(t, m)| *t > closed && m.trim_end() == "EXTEND_TIMEOUT_USEC=2000000")
        }),
        "{:?}",
        notify.all()
    );
    let renewed = notify
        .fields()
        .iter()
        .filter(|m| m.starts_with("EXTEND_TIMEOUT_USEC="))
        .count();
    assert_eq!(renewed, before + 1, "{:?}", notify.all());
    drop(held);
    assert_eq!(
        agent
            .wait_timeout(Duration::from_secs(10))
            .expect("exits")
            .code(),
        Some(0),
        "{}",
        agent.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_pings_at_half_the_interval_only_when_asked() {
    let s = setup().await;
    let notify = NotifySocket::bind(s.dir.path());
    let config = s.config("settle = \"100ms\"\npoll_interval = \"20ms\"");
    let mut cmd = under_watchdog(agent(&config, &["run"]), Duration::from_millis(200));
    cmd.env("NOTIFY_SOCKET", &notify.path);
    let agent = ProcGuard::spawn(cmd);
    assert!(
        wait_until(Duration::from_secs(10), || notify.has("READY=1")),
        "{}",
        agent.stderr()
    );
    let start = notify.count_lines("WATCHDOG=1");
    std::thread::sleep(Duration::from_millis(1000));
    let n = notify.count_lines("WATCHDOG=1") - start;
    assert!(
        (5..=15).contains(&n),
        "{n} pings in 1 s at WatchdogSec=200ms (expected about 10)"
    );
    drop(agent);

    // Without WatchdogSec: no pings at all (no periodic wake-ups).
    let sub = s.dir.path().join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    let notify2 = NotifySocket::bind(&sub);
    let mut cmd = common::agent(&config, &["run"]);
    cmd.env("NOTIFY_SOCKET", &notify2.path);
    let agent = ProcGuard::spawn(cmd);
    assert!(
        wait_until(Duration::from_secs(10), || notify2.has("READY=1")),
        "{}",
        agent.stderr()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(!notify2.has("WATCHDOG=1"), "{:?}", notify2.all());
}

/// The stop the issue counted (3 connections, closing one by one, at the default poll interval):
/// each phase once, progress at most once a second, what is said at one moment in one datagram. It
/// sent 16 datagrams (13 STATUS lines) before pacing; now at most the five phases and the verdict
/// plus, for each second of the stop, one progress line and one extension.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_connection_stop_is_told_in_few_messages() {
    let s = setup_with(no_health_probes).await;
    let notify = NotifySocket::bind(s.dir.path());
    let config = s.config("settle = \"1s\"\npoll_interval = \"200ms\"\ntimeout = \"30s\"");
    let mut held = s.connections_to_us(3);
    let mut cmd = agent(&config, &["run"]);
    cmd.env("NOTIFY_SOCKET", &notify.path);
    let mut agent = ProcGuard::spawn(cmd);
    assert!(
        wait_until(Duration::from_secs(10), || notify.has("READY=1")),
        "{}",
        agent.stderr()
    );
    let before = notify.all().len();
    let stop = std::time::Instant::now();
    agent.signal(libc::SIGTERM);
    assert!(
        wait_until(Duration::from_secs(10), || notify
            .has("draining: 3 connections")),
        "{:?}",
        notify.all()
    );
    while held.pop().is_some() {
        std::thread::sleep(Duration::from_millis(700));
    }
    let exit = agent.wait_timeout(Duration::from_secs(10)).expect("exits");
    assert_eq!(exit.code(), Some(0), "{}", agent.stderr());
    notify.caught_up();
    let took = stop.elapsed().as_secs_f64().ceil() as usize;
    let sent = notify.all()[before..].to_vec();
    let statuses = sent
        .iter()
        .flat_map(|m| m.lines())
        .filter(|l| l.starts_with("STATUS="))
        .count();
    eprintln!(
        "{} datagrams, {statuses} STATUS lines in a {took} s stop: {sent:#?}",
        sent.len()
    );
    assert!(sent.len() <= 6 + 2 * took, "{sent:#?}");
    assert_paced(&notify);
}
