//! elb-sim's data plane with real sockets: deleting a member through the API (or setting its weight to
//! 0) stops new connections to it at once, while every connection it already has keeps flowing,
//! bytes intact and never reset; with the pool's `connection_drain` the load balancer closes them
//! itself, cleanly, after the timeout; health checks take a dead member out and report it.

mod common;
mod simkit;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use elb_sim::{Scenario, Sim};
use serde_json::{Value, json};
use simkit::{Api, login};

const A: &str = "00000000-0000-4000-8000-00000000000a";
const B: &str = "00000000-0000-4000-8000-00000000000b";

/// Two members, A and B, each an echo server on 127.0.0.1, behind one listener.
async fn lb(drain: Option<u64>, monitor: bool) -> (Sim, EchoServer, EchoServer, Api) {
    let (a, b) = (EchoServer::start(), EchoServer::start());
    let sim = start(drain, monitor, a.addr.port(), b.addr.port()).await;
    let api = login(&sim, "alice", "acme", "pw", PROJECT).await;
    (sim, a, b, api)
}

async fn start(drain: Option<u64>, monitor: bool, port_a: u16, port_b: u16) -> Sim {
    Sim::start(
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
            .member(POOL, A, "127.0.0.1", port_a)
            .member(POOL, B, "127.0.0.1", port_b)
            .settings(|s| s.health_interval = Duration::from_millis(100))
            .build(),
    )
    .await
    .expect("elb-sim starts")
}

fn member_path(id: &str) -> String {
    format!("/v3/{PROJECT}/elb/pools/{POOL}/members/{id}")
}

fn accepted(server: &EchoServer) -> u64 {
    *server.accepted.lock().unwrap()
}

/// Opens `n` connections through the load balancer, each proven alive by an echo.
fn connect(sim: &Sim, n: usize, tag: &str) -> Vec<TcpStream> {
    (0..n)
        .map(|i| {
            let mut c = TcpStream::connect(sim.listener_addr(LISTENER).unwrap()).unwrap();
            assert_eq!(
                echo(&mut c, &format!("{tag} {i}")).unwrap(),
                format!("{tag} {i}")
            );
            c
        })
        .collect()
}

/// Sends `bytes` of a pattern unique to `seed` and reads exactly them back.
fn echo_block(c: &mut TcpStream, seed: u8, bytes: usize) -> std::io::Result<()> {
    let data: Vec<u8> = (0..bytes)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut writer = c.try_clone()?;
    let sent = data.clone();
    let send = std::thread::spawn(move || writer.write_all(&sent));
    let mut back = vec![0u8; bytes];
    c.read_exact(&mut back)?;
    send.join().expect("writer thread")?;
    assert!(back == data, "bytes changed on the way");
    Ok(())
}

async fn connections(sim: &Sim) -> Vec<Value> {
    simkit::client(sim)
        .get(format!("{}/connections", sim.admin_url()))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_member_keeps_its_connections_and_gets_no_new_ones() {
    let (sim, a, b, api) = lb(None, false).await;
    let mut old = connect(&sim, 10, "hello");
    assert_eq!(
        (sim.live_connections(A), sim.live_connections(B)),
        (5, 5),
        "round robin over both"
    );
    assert_eq!((accepted(&a), accepted(&b)), (5, 5));
    let stats = connections(&sim).await;
    assert_eq!(
        stats,
        [
            json!({"member_id": A, "live": 5, "accepted": 5}),
            json!({"member_id": B, "live": 5, "accepted": 5})
        ]
    );

    let r = api.delete(&member_path(A)).await;
    assert_eq!(r.status, 204, "{}", r.raw);

    // Every new connection goes to B.
    let _new = connect(&sim, 8, "new");
    assert_eq!(accepted(&a), 5, "no new connection to the deleted member");
    assert_eq!(accepted(&b), 13, "all new connections to the other");
    assert_eq!(
        (sim.accepted_connections(A), sim.accepted_connections(B)),
        (5, 13)
    );
    // Every old connection still echoes, small lines and 256 KiB blocks, byte for byte: none was reset.
    for round in 0..3 {
        for (i, c) in old.iter_mut().enumerate() {
            assert_eq!(
                echo(c, &format!("r{round} c{i}")).unwrap(),
                format!("r{round} c{i}")
            );
        }
    }
    for (i, c) in old.iter_mut().enumerate() {
        echo_block(c, i as u8, 256 * 1024).expect("an old connection keeps flowing");
    }
    assert_eq!(
        sim.live_connections(A),
        5,
        "the deleted member's connections are all open"
    );
    // They end when a side closes them, not before.
    drop(old);
    assert!(wait_until(Duration::from_secs(5), || sim
        .live_connections(A)
        == 0));
    // B's old connections close asynchronously too; its 8 new ones stay.
    assert!(
        wait_until(Duration::from_secs(5), || sim.live_connections(B) == 8),
        "{}",
        sim.live_connections(B)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight_zero_is_the_soft_removal_and_weight_brings_it_back() {
    let (sim, a, b, api) = lb(None, false).await;
    let mut old = connect(&sim, 4, "hello");
    let r = api
        .put(&member_path(A), json!({"member": {"weight": 0}}))
        .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    let _new = connect(&sim, 6, "w0");
    assert_eq!((accepted(&a), accepted(&b)), (2, 8));
    for (i, c) in old.iter_mut().enumerate() {
        assert_eq!(
            echo(c, &format!("still {i}")).unwrap(),
            format!("still {i}")
        );
    }
    assert_eq!(sim.live_connections(A), 2);
    // admin_state_up false also takes it out.
    let r = api
        .put(
            &member_path(A),
            json!({"member": {"weight": 3, "admin_state_up": false}}),
        )
        .await;
    assert_eq!(r.status, 200);
    let _more = connect(&sim, 4, "down");
    assert_eq!(accepted(&a), 2);
    // Back in: weight 3 against 1, so A takes three of every four new connections.
    let r = api
        .put(&member_path(A), json!({"member": {"admin_state_up": true}}))
        .await;
    assert_eq!(r.status, 200);
    let _back = connect(&sim, 8, "back");
    assert_eq!(accepted(&a), 2 + 6, "weighted round robin");
    assert_eq!(accepted(&b), 8 + 4 + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_drain_closes_a_removed_members_connections_cleanly_after_its_timeout() {
    let (sim, _a, _b, api) = lb(Some(1), false).await;
    let mut conns = connect(&sim, 6, "hello");
    assert_eq!(sim.live_connections(A), 3);
    let before_delete = Instant::now();
    assert_eq!(api.delete(&member_path(A)).await.status, 204);
    // Within the drain timeout they still flow.
    for (i, c) in conns.iter_mut().enumerate() {
        assert_eq!(
            echo(c, &format!("in drain {i}")).unwrap(),
            format!("in drain {i}")
        );
    }
    // Then the load balancer closes A's three itself, cleanly (EOF, not a reset); B's stay.
    assert!(wait_until(Duration::from_secs(5), || sim
        .live_connections(A)
        == 0));
    let cut_after = before_delete.elapsed();
    assert!(
        cut_after >= Duration::from_millis(1000),
        "not before the drain timeout: {cut_after:?}"
    );
    assert!(cut_after < Duration::from_secs(3), "{cut_after:?}");
    let (mut closed, mut alive) = (0, 0);
    for (i, c) in conns.iter_mut().enumerate() {
        c.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut buf = [0u8; 16];
        match c.read(&mut buf) {
            Ok(0) => closed += 1,
            Ok(n) => panic!("unexpected {n} bytes"),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                assert_eq!(
                    echo(c, &format!("after {i}")).unwrap(),
                    format!("after {i}")
                );
                alive += 1;
            }
            Err(e) => panic!("a reset instead of a clean close: {e}"),
        }
    }
    assert_eq!((closed, alive), (3, 3));
    assert_eq!(sim.live_connections(B), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_back_before_the_drain_timeout_keeps_its_connections() {
    let (sim, a, _b, api) = lb(Some(1), false).await;
    let mut conns = connect(&sim, 2, "hello");
    let r = api
        .put(&member_path(A), json!({"member": {"weight": 0}}))
        .await;
    assert_eq!(r.status, 200);
    let r = api
        .put(&member_path(A), json!({"member": {"weight": 1}}))
        .await;
    assert_eq!(r.status, 200);
    // Past the drain timeout, the connection to A is still there and flowing.
    let t = Instant::now();
    assert!(wait_until(Duration::from_secs(3), || t.elapsed()
        > Duration::from_millis(1500)));
    assert_eq!(sim.live_connections(A), 1);
    for (i, c) in conns.iter_mut().enumerate() {
        assert_eq!(echo(c, &format!("kept {i}")).unwrap(), format!("kept {i}"));
    }
    assert_eq!(accepted(&a), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_take_a_dead_member_out_and_report_it() {
    // B's server is down from the start: its port has nobody listening.
    let a = EchoServer::start();
    let dead = unclaimed_port();
    let sim = start(None, true, a.addr.port(), dead).await;
    let status = |id: &str| {
        sim.members(POOL)
            .iter()
            .find(|m| m["id"] == id)
            .map(|m| m["operating_status"].as_str().unwrap_or("").to_owned())
            .unwrap_or_default()
    };
    assert!(wait_until(Duration::from_secs(5), || status(A) == "ONLINE"
        && status(B) == "OFFLINE"));
    // The API says so too, per listener as well.
    let api = login(&sim, "alice", "acme", "pw", PROJECT).await;
    let r = api.get(&member_path(B)).await;
    assert_eq!(r.body["member"]["operating_status"], "OFFLINE");
    assert_eq!(r.body["member"]["status"][0]["operating_status"], "OFFLINE");
    let r = api
        .get(&format!(
            "/v3/{PROJECT}/elb/pools/{POOL}/members?operating_status=ONLINE"
        ))
        .await;
    assert_eq!(r.ids("members"), [A]);
    // All new connections go to the healthy member; the dead one is never even tried.
    let _c = connect(&sim, 6, "health");
    assert_eq!(
        (sim.accepted_connections(A), sim.accepted_connections(B)),
        (6, 0)
    );
    // (The echo server itself also counts the health checker's probes.)
    assert!(accepted(&a) >= 6);

    // A member that dies later goes OFFLINE too.
    let (sim, _a, _b, _api) = lb(None, true).await;
    assert!(wait_until(Duration::from_secs(5), || sim
        .members(POOL)
        .iter()
        .all(|m| m["operating_status"] == "ONLINE")));
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
    let _c = connect(&sim, 4, "later");
    assert_eq!(sim.accepted_connections(A), before + 4);

    // Without a health monitor there is no verdict: NO_MONITOR, and traffic is not steered by it.
    let (sim, a, b, _api) = lb(None, false).await;
    assert!(
        sim.members(POOL)
            .iter()
            .all(|m| m["operating_status"] == "NO_MONITOR")
    );
    let _c = connect(&sim, 4, "plain");
    assert_eq!((accepted(&a), accepted(&b)), (2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_drain_also_follows_a_failed_health_check() {
    // The reference: connection_drain is triggered when a member is removed, gets weight 0, or fails
    // its health check. Move B's address to a dead port behind the API's back: its health check fails
    // while the connections already proxied to its old address are alive.
    let (sim, _a, _b, _api) = lb(Some(1), true).await;
    assert!(wait_until(Duration::from_secs(5), || sim
        .members(POOL)
        .iter()
        .all(|m| m["operating_status"] == "ONLINE")));
    let mut conns = connect(&sim, 4, "hello");
    assert_eq!(sim.live_connections(B), 2);
    let dead = unclaimed_port();
    let failed_from = Instant::now();
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
    assert!(
        wait_until(Duration::from_secs(5), || sim.live_connections(B) == 0),
        "the unhealthy member's connections were never drained"
    );
    assert!(failed_from.elapsed() >= Duration::from_millis(1000));
    let mut closed = 0;
    for c in conns.iter_mut() {
        c.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut buf = [0u8; 16];
        match c.read(&mut buf) {
            Ok(0) => closed += 1,
            Ok(n) => panic!("unexpected {n} bytes"),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("a reset instead of a clean close: {e}"),
        }
    }
    assert_eq!(closed, 2, "B's two, cleanly; A's stay");
    assert_eq!(sim.live_connections(A), 2);
}

/// The real ELB applies a removal on its nodes a while after the API answered. With
/// `propagation_delay` (scenario or admin `PATCH /settings`), a deleted or weight-0 member keeps
/// getting its share of new connections for that long, then none; its connections stay open throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removals_reach_the_data_plane_after_the_propagation_delay() {
    let (sim, a, b, api) = lb(None, false).await;
    let delay = Duration::from_millis(1500);
    let admin = simkit::client(&sim);
    let r = admin
        .patch(format!("{}/settings", sim.admin_url()))
        .json(&json!({"propagation_delay": "1500ms"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = admin
        .patch(format!("{}/settings", sim.admin_url()))
        .json(&json!({"propagation_delay": "soon"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "a bad duration is refused");
    assert!(r.text().await.unwrap().contains("propagation_delay"));

    let mut old = connect(&sim, 2, "before");
    let r = api.delete(&member_path(A)).await;
    assert_eq!(r.status, 204, "{}", r.raw);
    let deleted = Instant::now();
    let (a0, b0) = (accepted(&a), accepted(&b));
    let _during = connect(&sim, 6, "during");
    assert!(deleted.elapsed() < delay, "too slow to test the delay");
    assert_eq!(
        (accepted(&a) - a0, accepted(&b) - b0),
        (3, 3),
        "the deleted member still gets its share while the removal propagates"
    );
    // The condition is the passage of time itself: the propagation is over.
    std::thread::sleep(delay.saturating_sub(deleted.elapsed()));
    let a1 = accepted(&a);
    let _after = connect(&sim, 6, "after");
    assert_eq!(accepted(&a), a1, "none once it has propagated");
    for (i, c) in old.iter_mut().enumerate() {
        assert_eq!(echo(c, &format!("kept {i}")).unwrap(), format!("kept {i}"));
    }

    // Weight 0 propagates the same way; a scenario can set the delay from the start.
    let (a2, b2) = (EchoServer::start(), EchoServer::start());
    let sim2 = Sim::start(
        Scenario::builder()
            .project(PROJECT)
            .user("alice", "acme", "pw")
            .pool(POOL, |p| p)
            .listener(LISTENER, POOL)
            .member(POOL, A, "127.0.0.1", a2.addr.port())
            .member(POOL, B, "127.0.0.1", b2.addr.port())
            .settings(|s| s.propagation_delay = delay)
            .build(),
    )
    .await
    .expect("elb-sim starts");
    let api2 = login(&sim2, "alice", "acme", "pw", PROJECT).await;
    let r = api2
        .put(&member_path(A), json!({"member": {"weight": 0}}))
        .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    let weighted = Instant::now();
    let _during = connect(&sim2, 4, "w0");
    assert!(weighted.elapsed() < delay, "too slow to test the delay");
    assert_eq!((accepted(&a2), accepted(&b2)), (2, 2));
    std::thread::sleep(delay.saturating_sub(weighted.elapsed()));
    let _after = connect(&sim2, 4, "w0 after");
    assert_eq!((accepted(&a2), accepted(&b2)), (2, 6));
}
