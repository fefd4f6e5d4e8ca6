//! The /proc census fallback, for real: the agent runs under a seccomp filter that refuses it the
//! `NETLINK_SOCK_DIAG` socket (as a container runtime's seccomp profile or an LSM can), so the probe in
//! `census::open` fails. The agent must say so, count through `/proc/net/tcp*` and drain exactly as
//! before, polling (the socket-destroy watch needs the same socket). Everything else (its HTTP
//! client, the other netlink families `getifaddrs` uses) is left alone.

mod common;

use std::time::{Duration, Instant};

use common::confine::{Confine, can_confine, confine};
use common::*;

/// `poll_interval` of the drain below.
const POLL: Duration = Duration::from_millis(50);
/// Beyond the census that sees the close: the verdict, the exit, the test noticing (5 ms polls).
/// Measured under a load average of 4-8 on 2 cores: close to exit 62-72 ms with the interval
/// stretched to 62-72 ms by the census cost, so at most 9 ms beyond it.
const EXIT_MARGIN: Duration = Duration::from_millis(100);

/// `cmd` with `socket(AF_NETLINK, _, NETLINK_SOCK_DIAG)` refused; nothing else changes.
macro_rules! filtered_or_skip {
    ($cmd:expr) => {{
        if !can_confine(Confine::NoNetlink) {
            return;
        }
        let mut cmd = $cmd;
        confine(&mut cmd, Confine::NoNetlink);
        cmd
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_sock_diag_the_census_falls_back_to_proc_and_says_so() {
    let s = setup().await;
    let config = s.config("settle = \"100ms\"\npoll_interval = \"50ms\"\ntimeout = \"10s\"");
    let _conns = s.connections_to_us(2);

    // Allowed, the agent chooses netlink and says so.
    let mut free = ProcGuard::spawn(agent(&config, &["connections", "--json"]));
    assert_eq!(
        free.wait_timeout(Duration::from_secs(10))
            .expect("exits")
            .code(),
        Some(0),
        "{}",
        free.stderr()
    );
    let v: serde_json::Value = serde_json::from_str(free.stdout().trim()).expect("JSON");
    assert_eq!(v["backend"], "netlink", "{v}");
    assert!(
        free.stderr().contains(
            "connection census: netlink sock_diag, states and ports filtered in the kernel"
        ),
        "{}",
        free.stderr()
    );

    // Refused, it falls back to /proc, says why, and counts the same.
    let cmd = filtered_or_skip!(agent(&config, &["connections", "--json"]));
    let mut refused = ProcGuard::spawn(cmd);
    assert_eq!(
        refused
            .wait_timeout(Duration::from_secs(10))
            .expect("exits")
            .code(),
        Some(0),
        "{}",
        refused.stderr()
    );
    let v: serde_json::Value = serde_json::from_str(refused.stdout().trim()).expect("JSON");
    assert_eq!(
        (v["backend"].as_str(), v["established"].as_u64()),
        (Some("procfs"), Some(2)),
        "{v}"
    );
    let err = refused.stderr();
    assert!(
        err.contains("netlink census unavailable; falling back to /proc/net/tcp"),
        "{err}"
    );
    assert!(err.contains("Permission denied"), "the reason: {err}");
    assert!(!err.contains("connection census: netlink"), "{err}");
}

/// The whole stop under the filter: deregister, wait for the connections counted through /proc, and
/// exit within a poll of the last close (no destroy notifications without the sock_diag socket).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_counted_through_proc_waits_for_the_last_connection() {
    let s = setup().await;
    let config = s.config("settle = \"200ms\"\npoll_interval = \"50ms\"\ntimeout = \"20s\"");
    let mut conns = s.connections_to_us(2);
    let cmd = filtered_or_skip!(agent(&config, &["run"]));
    let mut agent = ProcGuard::spawn(cmd);
    assert!(
        agent.wait_stderr("ready", Duration::from_secs(10)),
        "{}",
        agent.stderr()
    );
    agent.signal(libc::SIGTERM);
    assert!(
        agent.wait_stderr("drain: draining", Duration::from_secs(5)),
        "{}",
        agent.stderr()
    );
    assert!(!s.sim.member_exists(POOL, MEMBER));
    assert!(agent.is_running(), "{}", agent.stderr());
    drop(conns.pop());
    assert!(wait_until(Duration::from_secs(5), || s
        .sim
        .live_connections(MEMBER)
        == 1));
    assert!(agent.is_running(), "one connection is still open");
    drop(conns.pop());
    let closed = Instant::now();
    let status = agent
        .wait_timeout(Duration::from_secs(5))
        .expect("exits after the last close");
    let took = closed.elapsed();
    let err = agent.stderr();
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(
        err.contains("netlink census unavailable; falling back to /proc/net/tcp"),
        "{err}"
    );
    assert!(
        err.contains("socket-destroy notifications unavailable; the drain polls"),
        "{err}"
    );
    // Polling: the close is seen by the next census, at most one interval later. The interval is
    // poll_interval unless the census cost stretched it (a /proc census of a busy machine in a debug
    // build: ~1500 sockets here cost 4-6 ms of CPU, so 80-120 ms); the agent says when it does.
    let interval = err
        .lines()
        .filter_map(|l| {
            let rest = &l[l.find("polling every ")? + "polling every ".len()..];
            rest.split(' ').next()?.parse::<u64>().ok()
        })
        .map(Duration::from_millis)
        .fold(POLL, Duration::max);
    assert!(
        took < interval + EXIT_MARGIN,
        "exit {took:?} after the last close, polling every {interval:?} at most:\n{err}"
    );
}
