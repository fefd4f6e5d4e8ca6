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
