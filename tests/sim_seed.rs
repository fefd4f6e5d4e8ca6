//! Changing elb-sim's world while it runs: `POST /seed` (projects, users, keys, pools, listeners,
//! members, instances, scaling groups; all or nothing), `PATCH /pools/{id}` (deletion protection,
//! connection drain, health monitor), `PUT /metadata` (instance, token mode, agency), and the same
//! through `Sim::seed`, `Sim::update_pool` and `Sim::set_metadata`. Tests that stage a situation in the
//! middle of a run (a key created after start, protection switched on under a running agent) rely on it.

mod common;
mod simkit;

use std::net::TcpStream;
use std::time::Duration;

use common::{EchoServer, PROJECT, echo};
use elb_sim::scenario::{ConnectionDrain, ListenerConfig, MemberConfig, TokenMode};
use elb_sim::{MetadataPatch, PoolPatch, Scenario, Seed, Sim};
use reqwest::Method;
use serde_json::{Value, json};
use simkit::{Api, Key, Reply, Signed, eventually, login};

const POOL: &str = "36ce7086-a496-4666-9064-5ba0e6840c75";
const NEW_POOL: &str = "86ce7086-a496-4666-9064-5ba0e6840c75";
const NEW_PROJECT: &str = "11a3fff0d03c428eac3678da6a7d0f24";
const LISTENER: &str = "0b5c5a2e-8f37-4a57-8b7e-4c2f1b0d9e11";
const SECOND_LISTENER: &str = "1b5c5a2e-8f37-4a57-8b7e-4c2f1b0d9e11";
const MEMBER: &str = "00000000-0000-4000-8000-000000000001";
const INSTANCE: &str = "6a7bd0c6-9e22-4d9f-a9c2-0d11ee3c0e55";
const INSTANCE2: &str = "7a7bd0c6-9e22-4d9f-a9c2-0d11ee3c0e55";
const GROUP: &str = "7b8bd0c6-9e22-4d9f-a9c2-0d11ee3c0e55";

/// A world with one user and one empty pool, and nothing else.
async fn start() -> (Sim, Api) {
    let sim = Sim::start(
        Scenario::builder()
            .project(PROJECT)
            .user("alice", "acme", "pw")
            .pool(POOL, |p| p)
            .settings(|s| s.health_interval = Duration::from_millis(50))
            .build(),
    )
    .await
    .expect("elb-sim starts");
    let api = login(&sim, "alice", "acme", "pw", PROJECT).await;
    (sim, api)
}

async fn admin(sim: &Sim, method: Method, path: &str, body: Value) -> Reply {
    Reply::from(
        simkit::client(sim)
            .request(method, format!("{}{path}", sim.admin_url()))
            .json(&body)
            .send()
            .await
            .expect("admin answers"),
    )
    .await
}

fn pool_path(project: &str, pool: &str) -> String {
    format!("/v3/{project}/elb/pools/{pool}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_adds_a_whole_world_to_a_running_simulator() {
    let (sim, _alice) = start().await;
    let app = EchoServer::start();
    let seed = json!({
        "project": [{"id": NEW_PROJECT}],
        "user": [{"name": "bob", "domain": "acme", "password": "pw2", "deny": ["elb:members:delete"]}],
        "access_key": [{"ak": "AKSEEDED000000000000", "sk": "seeded-sk", "project_id": NEW_PROJECT}],
        "pool": [{"id": NEW_POOL, "project_id": NEW_PROJECT, "health_monitor": true}],
        "listener": [{"id": LISTENER, "pool_id": NEW_POOL}],
        "member": [
            {"id": MEMBER, "pool_id": NEW_POOL, "address": "127.0.0.1", "protocol_port": app.addr.port(),
             "instance_id": INSTANCE},
            {"pool_id": NEW_POOL, "address": "127.0.0.1", "protocol_port": 1}
        ],
        "instance": [{"uuid": INSTANCE, "project_id": NEW_PROJECT, "local_ipv4": "127.0.0.1",
                      "scaling_group_id": GROUP}],
        "scaling_group": [{"id": GROUP, "project_id": NEW_PROJECT, "hook_timeout": "1h"}]
    });
    let r = admin(&sim, Method::POST, "/seed", seed).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    let members = r.body["members"].as_array().expect("member ids");
    assert_eq!(members.len(), 2);
    assert_eq!(members[0], MEMBER);
    let generated = members[1].as_str().unwrap().to_owned();
    assert_eq!(generated.len(), 36, "a generated UUID: {generated}");
    let addr = r.body["listeners"][LISTENER]
        .as_str()
        .expect("the new listener's address");
    assert_eq!(sim.listener_addr(LISTENER).unwrap().to_string(), addr);
    let listed = admin(&sim, Method::GET, "/listeners", Value::Null).await;
    assert_eq!(listed.body[LISTENER], addr);

    // The new user logs in to the new project; the pool carries its listener and its members.
    let bob = login(&sim, "bob", "acme", "pw2", NEW_PROJECT).await;
    let r = bob.get(&pool_path(NEW_PROJECT, NEW_POOL)).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(r.body["pool"]["listeners"], json!([{"id": LISTENER}]));
    assert_eq!(r.body["pool"]["members"].as_array().unwrap().len(), 2);
    // The health checker probes seeded members: ours listens, port 1 does not.
    let path = format!("{}/members", pool_path(NEW_PROJECT, NEW_POOL));
    assert!(
        eventually(Duration::from_secs(5), || async {
            let r = bob.get(&path).await;
            r.body["members"].as_array().is_some_and(|ms| {
                ms.iter().all(|m| {
                    let want = if m["id"] == MEMBER {
                        "ONLINE"
                    } else {
                        "OFFLINE"
                    };
                    m["operating_status"] == want
                })
            })
        })
        .await,
        "seeded members get health-checked"
    );
    let r = bob.get(&format!("{path}/{generated}")).await;
    assert_eq!(
        r.body["member"]["reason"]["reason_code"], "CONNECT_FAILED",
        "an OFFLINE member says why: {}",
        r.raw
    );
    let r = bob.get(&format!("{path}/{MEMBER}")).await;
    assert!(r.body["member"]["reason"].is_null(), "{}", r.raw);
    assert_eq!(r.body["member"]["status"][0]["listener_id"], LISTENER);
    assert_eq!(r.body["member"]["instance_id"], INSTANCE);
    // The seeded deny list holds.
    bob.delete(&format!("{path}/{MEMBER}"))
        .await
        .assert_error(403, "ELB.9802");
    // The seeded key signs.
    let key = Key::permanent("AKSEEDED000000000000", "seeded-sk");
    let r = Signed::new(Method::GET, &pool_path(NEW_PROJECT, NEW_POOL), &key)
        .project(NEW_PROJECT)
        .send(&sim)
        .await;
    assert_eq!(r.status, 200, "{}", r.raw);

    // The new listener carries traffic to the healthy member.
    let addr = sim.listener_addr(LISTENER).unwrap();
    let mut conn = TcpStream::connect(addr).unwrap();
    assert_eq!(
        echo(&mut conn, "through a seeded listener").unwrap(),
        "through a seeded listener"
    );
    // (The app also counts the health checker's connects: ask the data plane instead.)
    assert_eq!(sim.accepted_connections(MEMBER), 1);

    // The seeded instance and group take part in a scale-in.
    sim.start_scale_in(INSTANCE).unwrap();
    assert!(!sim.member_exists(NEW_POOL, MEMBER));
    let hooks = sim.hooks(GROUP);
    assert_eq!(hooks.len(), 1);
    assert_eq!(hooks[0].status, "HANGING");
    drop(conn);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_seed_changes_nothing() {
    let (sim, alice) = start().await;
    for (seed, why) in [
        (
            json!({"project": [{"id": NEW_PROJECT}], "user": [{"name": "carol", "domain": "acme", "password": "x"}],
                   "pool": [{"id": POOL}]}),
            "pool 36ce7086-a496-4666-9064-5ba0e6840c75 already exists",
        ),
        (
            json!({"user": [{"name": "carol", "domain": "acme", "password": "x"}],
                   "member": [{"pool_id": "nope", "address": "127.0.0.1", "protocol_port": 80}]}),
            "pool nope does not exist",
        ),
        (
            json!({"user": [{"name": "carol", "domain": "acme", "password": "x"}],
                   "listener": [{"id": "l", "pool_id": POOL, "listen": "not an address"}]}),
            "not an address:port",
        ),
        (
            json!({"user": [{"name": "carol", "domain": "acme", "password": "x"}],
                   "scaling_group": [{"id": "g", "project_id": PROJECT, "default_result": "MAYBE"}]}),
            "MAYBE",
        ),
        (json!({"pools": []}), "unknown field"),
    ] {
        let r = admin(&sim, Method::POST, "/seed", seed.clone()).await;
        assert_eq!(r.status, 400, "{seed}: {}", r.raw);
        let msg = r.body["error"].as_str().unwrap_or_default();
        assert!(msg.contains(why), "{seed}: {msg}");
    }
    // Not even the valid parts of a refused seed were applied.
    let r = simkit::request_token(&sim, "carol", "acme", "x", PROJECT).await;
    assert_eq!(r.status, 401, "{}", r.raw);
    let r = alice.get(&format!("/v3/{PROJECT}/elb/pools")).await;
    assert_eq!(r.ids("pools"), [POOL]);
    assert!(sim.members(POOL).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_listener_on_a_pool_follows_the_same_members() {
    let a = EchoServer::start();
    let b = EchoServer::start();
    let sim = Sim::start(
        Scenario::builder()
            .project(PROJECT)
            .pool(POOL, |p| p)
            .listener(LISTENER, POOL)
            .member(POOL, MEMBER, "127.0.0.1", a.addr.port())
            .build(),
    )
    .await
    .unwrap();
    let seeded = sim
        .seed(Seed {
            listener: vec![ListenerConfig {
                id: SECOND_LISTENER.into(),
                pool_id: POOL.into(),
                listen: "127.0.0.1:0".into(),
            }],
            ..Seed::default()
        })
        .await
        .unwrap();
    let second = seeded.listeners[SECOND_LISTENER];
    assert_eq!(sim.listener_addr(SECOND_LISTENER), Some(second));
    assert_eq!(sim.listeners().len(), 2);
    // A member change reaches both listeners: replace a by b, then both route to b only.
    sim.seed(Seed {
        member: vec![MemberConfig {
            id: Some("b".into()),
            pool_id: POOL.into(),
            address: "127.0.0.1".into(),
            protocol_port: b.addr.port(),
            weight: 1,
            instance_id: None,
            name: String::new(),
            subnet_cidr_id: None,
        }],
        ..Seed::default()
    })
    .await
    .unwrap();
    sim.shared()
        .lock_for_tests(|inner| inner.members.retain(|m| m.id != MEMBER));
    for listener in [LISTENER, SECOND_LISTENER] {
        for _ in 0..3 {
            let mut c = TcpStream::connect(sim.listener_addr(listener).unwrap()).unwrap();
            assert_eq!(echo(&mut c, listener).unwrap(), listener);
        }
    }
    assert_eq!(
        *a.accepted.lock().unwrap(),
        0,
        "the removed member got nothing"
    );
    assert_eq!(
        *b.accepted.lock().unwrap(),
        6,
        "both listeners route to the new member"
    );
    assert_eq!(sim.accepted_connections("b"), 6);
    // The listener id is taken now.
    let again = sim
        .seed(Seed {
            listener: vec![ListenerConfig {
                id: SECOND_LISTENER.into(),
                pool_id: POOL.into(),
                listen: "127.0.0.1:0".into(),
            }],
            ..Seed::default()
        })
        .await;
    assert!(
        again
            .unwrap_err()
            .to_string()
            .contains("listener 1b5c5a2e-8f37-4a57-8b7e-4c2f1b0d9e11 already exists")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_change_under_a_running_client() {
    let (sim, alice) = start().await;
    let app = EchoServer::start();
    let r = alice
        .post(
            &format!("{}/members", pool_path(PROJECT, POOL)),
            json!({"member": {"address": "127.0.0.1", "protocol_port": app.addr.port()}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.raw);
    let id = r.body["member"]["id"].as_str().unwrap().to_owned();
    let member = format!("{}/members/{id}", pool_path(PROJECT, POOL));
    assert_eq!(r.body["member"]["operating_status"], "NO_MONITOR");

    // Deletion protection switched on by someone else: DELETE is refused, ShowPool says why.
    let r = admin(
        &sim,
        Method::PATCH,
        &format!("/pools/{POOL}"),
        json!({"member_deletion_protection": true}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    alice.delete(&member).await.assert_error(403, "ELB.8916");
    let r = alice.get(&pool_path(PROJECT, POOL)).await;
    assert_eq!(r.body["pool"]["member_deletion_protection_enable"], true);

    // A health monitor and connection drain, through the Rust API.
    sim.update_pool(
        POOL,
        PoolPatch {
            health_monitor: Some(true),
            connection_drain: Some(ConnectionDrain {
                enable: true,
                timeout: 30,
            }),
            name: Some("renamed".into()),
            ..PoolPatch::default()
        },
    )
    .unwrap();
    let r = alice.get(&pool_path(PROJECT, POOL)).await;
    assert_eq!(
        r.body["pool"]["connection_drain"],
        json!({"enable": true, "timeout": 30})
    );
    assert_eq!(r.body["pool"]["name"], "renamed");
    assert!(
        r.body["pool"]["healthmonitor_id"]
            .as_str()
            .is_some_and(|h| !h.is_empty())
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            alice.get(&member).await.body["member"]["operating_status"] == "ONLINE"
        })
        .await,
        "the new health monitor checks the member"
    );

    // Protection off again: the DELETE goes through.
    let r = admin(
        &sim,
        Method::PATCH,
        &format!("/pools/{POOL}"),
        json!({"member_deletion_protection": false, "health_monitor": false}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    let r = alice.get(&member).await;
    assert_eq!(r.body["member"]["operating_status"], "NO_MONITOR");
    assert_eq!(alice.delete(&member).await.status, 204);

    // Refusals.
    let r = admin(&sim, Method::PATCH, "/pools/nope", json!({})).await;
    assert!(r.raw.contains("pool nope does not exist"), "{}", r.raw);
    assert_eq!(r.status, 400);
    let r = admin(
        &sim,
        Method::PATCH,
        &format!("/pools/{POOL}"),
        json!({"protection": true}),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.raw);
    assert!(sim.update_pool("nope", PoolPatch::default()).is_err());
}

async fn md(sim: &Sim, path: &str) -> Reply {
    Reply::from(
        simkit::client(sim)
            .get(format!("{}{path}", sim.metadata_url()))
            .send()
            .await
            .expect("metadata answers"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metadata_service_switches_instance_token_mode_and_agency() {
    let (sim, _) = start().await;
    let instances = json!({"instance": [
        {"uuid": INSTANCE, "project_id": PROJECT, "local_ipv4": "127.0.0.1", "agency": true},
        {"uuid": INSTANCE2, "project_id": PROJECT, "local_ipv4": "127.0.0.2"}
    ]});
    let r = admin(&sim, Method::POST, "/seed", instances).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    // The first instance seeded into a world without one becomes "this server".
    let r = md(&sim, "/openstack/latest/meta_data.json").await;
    assert_eq!(r.body["uuid"], INSTANCE);
    let r = md(&sim, "/openstack/latest/securitykey").await;
    assert_eq!(r.status, 200, "{}", r.raw);
    let first_key = r.body["credential"]["access"].as_str().unwrap().to_owned();

    // Another server, with no agency.
    let r = admin(
        &sim,
        Method::PUT,
        "/metadata",
        json!({"instance": INSTANCE2}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(
        md(&sim, "/latest/meta-data/local-ipv4").await.raw,
        "127.0.0.2"
    );
    let r = md(&sim, "/openstack/latest/securitykey").await;
    assert_eq!(r.status, 401);
    assert!(
        r.raw
            .contains("Please configure Cloud Service Agency first")
    );
    // An agency granted while it runs: a key of its own, not the first server's.
    sim.set_metadata(MetadataPatch {
        agency: Some(true),
        ..MetadataPatch::default()
    })
    .unwrap();
    let r = md(&sim, "/openstack/latest/securitykey").await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_ne!(r.body["credential"]["access"], first_key.as_str());

    // Token modes: required, then an old platform without tokens.
    sim.set_metadata(MetadataPatch {
        tokens: Some(TokenMode::Required),
        ..MetadataPatch::default()
    })
    .unwrap();
    assert_eq!(
        md(&sim, "/openstack/latest/meta_data.json").await.status,
        401
    );
    let r = admin(
        &sim,
        Method::PUT,
        "/metadata",
        json!({"tokens": "unsupported"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    let put = simkit::client(&sim)
        .put(format!("{}/meta-data/latest/api/token", sim.metadata_url()))
        .header("X-Metadata-Token-Ttl-Seconds", "60")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 404);
    assert_eq!(
        md(&sim, "/openstack/latest/meta_data.json").await.status,
        200
    );

    // Refusals.
    let r = admin(&sim, Method::PUT, "/metadata", json!({"instance": "nope"})).await;
    assert_eq!(r.status, 400, "{}", r.raw);
    let r = admin(
        &sim,
        Method::PUT,
        "/metadata",
        json!({"tokens": "sometimes"}),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.raw);
}
