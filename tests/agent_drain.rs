//! End to end: the agent binary against elb-sim, with real sockets and real signals.
//!
//! The application is an echo server on 127.0.0.1; clients reach it through elb-sim's data plane (a real
//! TCP load balancer), so the connections the agent counts are the ones the load balancer opened.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_deregisters_then_waits_for_the_last_connection() {
    let s = setup().await;
    let config = s.config("settle = \"300ms\"\npoll_interval = \"50ms\"\ntimeout = \"30s\"");
    let mut conns = s.connections_to_us(3);
    let mut agent = ProcGuard::spawn(agent(&config, &["run"]));
    assert!(
        agent.wait_stderr("ready", Duration::from_secs(10)),
        "agent never ready:\n{}",
        agent.stderr()
    );
    assert!(
        deletes(&s.sim).is_empty(),
        "nothing may be deleted before the stop"
    );

    let before = s.sim.request_log().len();
    agent.signal(libc::SIGTERM);
    assert!(
        wait_until(Duration::from_secs(5), || !s
            .sim
            .member_exists(POOL, MEMBER)),
        "member still registered:\n{}",
        agent.stderr()
    );
    let del = deletes(&s.sim);
    assert_eq!(del.len(), 1, "{del:?}");
    // Credentials and memberships were resolved before the signal: the DELETE is the first request after it.
    assert_eq!(
        s.sim.request_log()[before].method,
        "DELETE",
        "{:?}",
        &s.sim.request_log()[before..]
    );
    assert!(
        del[0]
            .path
            .ends_with(&format!("/elb/pools/{POOL}/members/{MEMBER}")),
        "{:?}",
        del[0]
    );
    assert!(
        s.sim.member_exists(POOL, OTHER),
        "the other member is untouched"
    );

    // New connections now all go to the other server; ours keep flowing.
    let other_before = *s.other_app.accepted.lock().unwrap();
    for i in 0..6 {
        let mut c = s.lb();
        assert_eq!(
            echo(&mut c, &format!("new {i}")).unwrap(),
            format!("new {i}")
        );
    }
    assert_eq!(
        *s.other_app.accepted.lock().unwrap(),
        other_before + 6,
        "all new connections on the other server"
    );
    assert_eq!(s.sim.live_connections(MEMBER), 3);
    std::thread::sleep(Duration::from_millis(600)); // longer than settle: the agent must still be waiting
    assert!(
        agent.is_running(),
        "agent exited with connections open:\n{}",
        agent.stderr()
    );
    for c in conns.iter_mut() {
        assert_eq!(echo(c, "still here").unwrap(), "still here");
    }

    conns.truncate(1);
    assert!(wait_until(Duration::from_secs(5), || s
        .sim
        .live_connections(MEMBER)
        == 1));
    assert!(agent.is_running());
    let last = conns.pop().unwrap();
    drop(last);
    let closed = Instant::now();
    let status = agent
        .wait_timeout(Duration::from_secs(5))
        .expect("agent exits after the last close");
    let took = closed.elapsed();
    assert_eq!(status.code(), Some(0), "{}", agent.stderr());
    // poll_interval is 50 ms; the close has to travel through the proxy too.
    assert!(
        took < Duration::from_millis(1000),
        "exit {took:?} after the last close"
    );
    assert!(agent.stderr().contains("drained"), "{}", agent.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_exits_75_and_reports_what_was_open() {
    let s = setup().await;
    let config = s.config("settle = \"200ms\"\npoll_interval = \"50ms\"\ntimeout = \"2s\"");
    let _held = s.connections_to_us(1);
    let mut agent = ProcGuard::spawn(agent(&config, &["drain"]));
    let started = Instant::now();
    let status = agent
        .wait_timeout(Duration::from_secs(10))
        .expect("exits at the deadline");
    let took = started.elapsed();
    assert_eq!(status.code(), Some(75), "{}", agent.stderr());
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(4),
        "took {took:?}"
    );
    assert!(
        agent.stderr().contains("1 connections still open"),
        "{}",
        agent.stderr()
    );
    assert!(!s.sim.member_exists(POOL, MEMBER));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_prints_the_census_and_json_logs_parse() {
    let s = setup().await;
    let config = s.config("settle = \"100ms\"\npoll_interval = \"20ms\"\ntimeout = \"10s\"");
    let _conns = s.connections_to_us(2);
    let mut c = ProcGuard::spawn(agent(&config, &["connections", "--json"]));
    assert_eq!(
        c.wait_timeout(Duration::from_secs(10))
            .expect("exits")
            .code(),
        Some(0),
        "{}",
        c.stderr()
    );
    let v: serde_json::Value = serde_json::from_str(c.stdout().trim()).expect("JSON");
    assert_eq!(
        (v["established"].as_u64(), v["backend"].as_str()),
        (Some(2), Some("netlink")),
        "{v}"
    );
    let port = s.app.addr.port().to_string();
    let mut c = ProcGuard::spawn(agent(&config, &["connections", "--ports", &port]));
    c.wait_timeout(Duration::from_secs(10)).expect("exits");
    assert_eq!(
        c.stdout().trim(),
        format!("2 established connections on port {port}")
    );

    // JSON logs: one object per line, with the fields collectors key on.
    drop(_conns);
    let mut d = ProcGuard::spawn(agent(&config, &["--log-format", "json", "drain"]));
    assert_eq!(
        d.wait_timeout(Duration::from_secs(10))
            .expect("exits")
            .code(),
        Some(0),
        "{}",
        d.stderr()
    );
    let lines: Vec<serde_json::Value> = d
        .stderr()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines.iter().all(|l| l["timestamp"].is_string()
            && l["level"].is_string()
            && l["message"].is_string())
    );
    let dereg = lines
        .iter()
        .find(|l| l["message"] == "deregistered")
        .expect("a deregistered line");
    assert_eq!(
        (dereg["pool"].as_str(), dereg["member"].as_str()),
        (Some(POOL), Some(MEMBER))
    );
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "drained: no connections left" && l["elapsed_ms"].is_u64())
    );
}
