//! elb-sim's data plane with real sockets: deleting a member through the API stops new connections to
//! it at once while every connection it already has keeps flowing, untouched; with the pool's
//! connection_drain the load balancer closes them itself after the timeout; health checks steer traffic.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use elb_sim::{Scenario, Sim};

const A: &str = "00000000-0000-4000-8000-00000000000a";
const B: &str = "00000000-0000-4000-8000-00000000000b";

async fn lb(drain: Option<u64>, monitor: bool) -> (Sim, EchoServer, EchoServer) {
    let (a, b) = (EchoServer::start(), EchoServer::start());
    let sim = Sim::start(
        Scenario::builder()
            .project(PROJECT)
            .user("alice", "acme", "pw")
            .pool(POOL, |p| {
                let p = p.health_monitor(monitor);
                match drain {
                    Some(t) => p.connection_drain(t),
                    None => p,
                }
            })
            .listener(LISTENER, POOL)
            .member(POOL, A, "127.0.0.1", a.addr.port())
            .member(POOL, B, "127.0.0.1", b.addr.port())
            .settings(|s| s.health_interval = Duration::from_millis(100))
            .build(),
    )
    .await
    .unwrap();
    (sim, a, b)
}

async fn delete_via_api(sim: &Sim, member: &str) {
    let r = http()
        .post(format!("{}/v3/auth/tokens", sim.api_url()))
        .json(&serde_json::json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": "alice", "password": "pw", "domain": {"name": "acme"}}}}, "scope": {"project": {"id": PROJECT}}}}))
        .send()
        .await
        .unwrap();
    let token = r.headers()["x-subject-token"].to_str().unwrap().to_owned();
    let r = http()
        .delete(format!(
            "{}/v3/{PROJECT}/elb/pools/{POOL}/members/{member}",
            sim.api_url()
        ))
        .header("X-Auth-Token", token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
}

fn connect(sim: &Sim, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|i| {
            let mut c = TcpStream::connect(sim.listener_addr(LISTENER).unwrap()).unwrap();
            assert_eq!(
                echo(&mut c, &format!("hello {i}")).unwrap(),
                format!("hello {i}")
            );
            c
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_member_keeps_its_connections_and_gets_no_new_ones() {
    let (sim, a, b) = lb(None, false).await;
    let mut old = connect(&sim, 10);
    assert_eq!(
        (sim.live_connections(A), sim.live_connections(B)),
        (5, 5),
        "round robin"
    );
    delete_via_api(&sim, A).await;
    let a_before = *a.accepted.lock().unwrap();
    let b_before = *b.accepted.lock().unwrap();
    let _new = connect(&sim, 8);
    assert_eq!(
        *a.accepted.lock().unwrap(),
        a_before,
        "no new connection to the deleted member"
    );
    assert_eq!(
        *b.accepted.lock().unwrap(),
        b_before + 8,
        "all new connections to the other"
    );
    // Every old connection still echoes, and keeps doing so: none was reset.
    for round in 0..3 {
        for (i, c) in old.iter_mut().enumerate() {
            assert_eq!(
                echo(c, &format!("r{round} c{i}")).unwrap(),
                format!("r{round} c{i}")
            );
        }
    }
    assert_eq!(sim.live_connections(A), 5);
    drop(old);
    assert!(wait_until(Duration::from_secs(5), || sim
        .live_connections(A)
        == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_drain_closes_a_removed_members_connections_after_its_timeout() {
    let (sim, _a, _b) = lb(Some(1), false).await;
    let mut conns = connect(&sim, 4);
    delete_via_api(&sim, A).await;
    let removed = Instant::now();
    for c in conns.iter_mut() {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    }
    // A's two connections are closed cleanly (EOF) after about a second; B's stay.
    assert!(wait_until(Duration::from_secs(5), || sim
        .live_connections(A)
        == 0));
    assert!(
        removed.elapsed() >= Duration::from_millis(1000),
        "not before the drain timeout"
    );
    assert_eq!(sim.live_connections(B), 2);
    let mut eof = 0;
    for c in conns.iter_mut() {
        c.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 16];
        match std::io::Read::read(c, &mut buf) {
            Ok(0) => eof += 1,
            Ok(n) => panic!("unexpected {n} bytes"),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("a reset instead of a clean close: {e}"),
        }
    }
    assert_eq!(eof, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_take_a_dead_member_out_and_report_it() {
    let (sim, _a, _b) = lb(None, true).await;
    assert!(wait_until(Duration::from_secs(5), || sim
        .members(POOL)
        .iter()
        .all(|m| m["operating_status"] == "ONLINE")));
    // Point B at a port nobody listens on: it goes OFFLINE and gets no traffic.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    sim.shared().lock_for_tests(|inner| {
        inner
            .members
            .iter_mut()
            .find(|m| m.id == B)
            .unwrap()
            .protocol_port = dead;
    });
    assert!(wait_until(Duration::from_secs(5), || sim
        .members(POOL)
        .iter()
        .any(|m| m["id"] == B && m["operating_status"] == "OFFLINE")));
    let before = sim.accepted_connections(A);
    let _c = connect(&sim, 4);
    assert_eq!(sim.accepted_connections(A), before + 4);
    // Without a health monitor there is no verdict.
    let (sim, _a, _b) = lb(None, false).await;
    assert!(
        sim.members(POOL)
            .iter()
            .all(|m| m["operating_status"] == "NO_MONITOR")
    );
}
