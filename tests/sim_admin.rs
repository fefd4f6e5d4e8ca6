//! elb-sim's admin side, what tests use to stage trouble and to look behind the scenes: fault injection
//! per route (through the admin HTTP API and `Sim::inject_fault`), the per-project token-bucket rate
//! limit (429 `APIGW.0308` with `Retry-After`), the request log and its fields, and the other admin
//! routes (hooks, members behind the API's back, scale-in, launch).

mod common;
mod simkit;

use std::time::{Duration, Instant, SystemTime};

use common::PROJECT;
use elb_sim::scenario::{Instance, ScalingGroup};
use elb_sim::{AuthKind, Fault, FaultAction, Scenario, Sim};
use reqwest::Method;
use serde_json::{Value, json};
use simkit::{Api, Key, Reply, Signed, eventually, login};

const POOL: &str = "36ce7086-a496-4666-9064-5ba0e6840c75";
const OTHER_PROJECT: &str = "00a3fff0d03c428eac3678da6a7d0f24";
const OTHER_POOL: &str = "46ce7086-a496-4666-9064-5ba0e6840c75";
const MEMBER: &str = "00000000-0000-4000-8000-000000000001";
const INSTANCE: &str = "6a7bd0c6-9e22-4d9f-a9c2-0d11ee3c0e55";
const GROUP: &str = "7b8bd0c6-9e22-4d9f-a9c2-0d11ee3c0e55";

fn scenario() -> Scenario {
    Scenario::builder()
        .project(PROJECT)
        .project(OTHER_PROJECT)
        .user("alice", "acme", "pw")
        .access_key("AKPERMANENT000000000", "permanent-sk", PROJECT)
        .pool(POOL, |p| p)
        .pool(OTHER_POOL, |p| p.project(OTHER_PROJECT))
        .member_of_instance(POOL, MEMBER, "127.0.1.1", 80, INSTANCE)
        .instance(Instance {
            uuid: INSTANCE.into(),
            project_id: PROJECT.into(),
            local_ipv4: "127.0.1.1".into(),
            region_id: None,
            hostname: "web-1".into(),
            name: "web-1".into(),
            agency: true,
            scaling_group_id: Some(GROUP.into()),
        })
        .scaling_group(ScalingGroup {
            id: GROUP.into(),
            project_id: PROJECT.into(),
            hook_name: "drain-hook".into(),
            default_result: "ABANDON".into(),
            hook_timeout: Duration::from_secs(3600),
            other_hooks: Vec::new(),
            launching_hooks: Vec::new(),
        })
}

async fn start() -> (Sim, Api) {
    let sim = Sim::start(scenario()).await.expect("elb-sim starts");
    let api = login(&sim, "alice", "acme", "pw", PROJECT).await;
    (sim, api)
}

fn pool() -> String {
    format!("/v3/{PROJECT}/elb/pools/{POOL}")
}

fn member() -> String {
    format!("{}/members/{MEMBER}", pool())
}

async fn admin_post(sim: &Sim, path: &str, body: Value) -> reqwest::Response {
    simkit::client(sim)
        .post(format!("{}{path}", sim.admin_url()))
        .json(&body)
        .send()
        .await
        .expect("admin answers")
}

async fn admin_get(sim: &Sim, path: &str) -> Value {
    simkit::client(sim)
        .get(format!("{}{path}", sim.admin_url()))
        .send()
        .await
        .expect("admin answers")
        .json()
        .await
        .expect("admin answers JSON")
}

/// The raw response (or the transport error) of a token-authenticated GET.
async fn raw_get(api: &Api, path: &str) -> reqwest::Result<reqwest::Response> {
    api.http
        .get(format!("{}{path}", api.base))
        .header("X-Auth-Token", api.token.clone().unwrap())
        .send()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_sequence_then_normal_answers() {
    let (sim, api) = start().await;
    sim.inject_fault(Fault::new(
        "GET",
        "/v3/*/elb/pools/*",
        vec![
            FaultAction::Status {
                status: 503,
                retry_after: None,
            },
            FaultAction::Status {
                status: 503,
                retry_after: None,
            },
        ],
    ));
    for _ in 0..2 {
        let r = api.get(&pool()).await;
        r.assert_error(503, "ELB.8906");
        assert!(r.header("retry-after").is_none());
    }
    for _ in 0..2 {
        assert_eq!(
            api.get(&pool()).await.status,
            200,
            "the sequence is used up"
        );
    }
    let statuses: Vec<u16> = sim.request_log().iter().skip(1).map(|e| e.status).collect();
    assert_eq!(statuses, [503, 503, 200, 200]);

    // Each injected status carries the body the real API uses for it.
    for (status, code) in [
        (400, "ELB.8902"),
        (401, "APIGW.0301"),
        (403, "ELB.9802"),
        (404, "ELB.8904"),
        (409, "ELB.8907"),
        (500, "ELB.8906"),
    ] {
        sim.inject_fault(Fault::new(
            "DELETE",
            "/v3/*/elb/pools/*/members/*",
            vec![FaultAction::Status {
                status,
                retry_after: None,
            }],
        ));
        api.delete(&member()).await.assert_error(status, code);
    }
    assert!(
        sim.member_exists(POOL, MEMBER),
        "a faulted request never reaches the state"
    );
    // Pass lets one through, then the next action applies.
    sim.inject_fault(Fault::new(
        "GET",
        "/v3/*/elb/pools/*",
        vec![
            FaultAction::Pass,
            FaultAction::Status {
                status: 500,
                retry_after: None,
            },
        ],
    ));
    assert_eq!(api.get(&pool()).await.status, 200);
    assert_eq!(api.get(&pool()).await.status, 500);
    assert_eq!(api.get(&pool()).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_kind_through_the_admin_api() {
    let (sim, api) = start().await;
    let inject = |action: Value| {
        let sim = &sim;
        async move {
            let r = admin_post(
                sim,
                "/faults",
                json!({"method": "GET", "path": "/v3/*/elb/pools/*", "actions": [action]}),
            )
            .await;
            assert_eq!(r.status(), 200);
        }
    };

    inject(json!({"kind": "status", "status": 429, "retry_after": 7})).await;
    let r = api.get(&pool()).await;
    r.assert_error(429, "APIGW.0308");
    assert_eq!(r.header("retry-after"), Some("7"));

    inject(json!({"kind": "delay", "ms": 300})).await;
    let t = Instant::now();
    let r = api.get(&pool()).await;
    assert_eq!(r.status, 200, "a delay, then the normal answer");
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );

    inject(json!({"kind": "malformed"})).await;
    let r = api.get(&pool()).await;
    assert_eq!(r.status, 200);
    assert!(
        serde_json::from_str::<Value>(&r.raw).is_err(),
        "not JSON: {}",
        r.raw
    );

    inject(json!({"kind": "reset"})).await;
    let r = raw_get(&api, &pool()).await;
    let failed = match r {
        Err(_) => true,
        Ok(resp) => resp.bytes().await.is_err(),
    };
    assert!(failed, "a reset connection yields no complete answer");
    assert_eq!(
        sim.request_log().last().unwrap().status,
        0,
        "logged as no answer"
    );

    inject(json!({"kind": "truncated"})).await;
    let resp = raw_get(&api, &pool()).await.expect("headers arrive");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.content_length(), Some(4096));
    let mut resp = resp;
    let first = resp
        .chunk()
        .await
        .expect("the first bytes arrive")
        .expect("a chunk");
    assert!(first.starts_with(b"{\"members\""), "{first:?}");
    let mut rest = Ok(None);
    for _ in 0..100 {
        rest = resp.chunk().await;
        if !matches!(rest, Ok(Some(_))) {
            break;
        }
    }
    assert!(
        rest.is_err(),
        "the body is cut short of its Content-Length: {rest:?}"
    );

    inject(json!({"kind": "oversized", "bytes": 3_000_000})).await;
    let resp = raw_get(&api, &pool()).await.expect("headers arrive");
    assert_eq!(resp.bytes().await.unwrap().len(), 3_000_000);

    assert_eq!(api.get(&pool()).await.status, 200, "all used up");
    // A fault the admin API cannot read is refused.
    let r = admin_post(
        &sim,
        "/faults",
        json!({"path": "/x", "actions": [{"kind": "explode"}]}),
    )
    .await;
    assert_eq!(r.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_match_by_method_and_path_and_can_repeat() {
    let (sim, api) = start().await;
    let s503 = FaultAction::Status {
        status: 503,
        retry_after: None,
    };
    // Only DELETEs of members: a GET of the same path passes.
    sim.inject_fault(
        Fault::new("DELETE", "/v3/*/elb/pools/*/members/*", vec![s503.clone()]).repeating(),
    );
    assert_eq!(api.get(&member()).await.status, 200);
    for _ in 0..3 {
        assert_eq!(
            api.delete(&member()).await.status,
            503,
            "repeat keeps the last action"
        );
    }
    // `*` is one segment: the pool pattern does not catch its members.
    sim.inject_fault(Fault::new("GET", "/v3/*/elb/pools/*", vec![s503.clone()]));
    assert_eq!(api.get(&format!("{}/members", pool())).await.status, 200);
    assert_eq!(api.get(&pool()).await.status, 503);
    // `**` catches the rest; no method: every method.
    sim.inject_fault(Fault {
        method: None,
        path: "/v3/**".into(),
        actions: vec![s503.clone(), s503.clone()],
        repeat: false,
    });
    assert_eq!(api.get(&format!("{}/members", pool())).await.status, 503);
    assert_eq!(
        api.post(&format!("{}/members", pool()), json!({}))
            .await
            .status,
        503
    );
    // Clearing every fault through the admin API.
    let r = simkit::client(&sim)
        .delete(format!("{}/faults", sim.admin_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(api.delete(&member()).await.status, 204);
    // IAM and the metadata service can be faulted too.
    sim.inject_fault(Fault::new("POST", "/v3/auth/tokens", vec![s503.clone()]));
    let r = simkit::request_token(&sim, "alice", "acme", "pw", PROJECT).await;
    assert_eq!(r.status, 503);
    assert_eq!(
        simkit::request_token(&sim, "alice", "acme", "pw", PROJECT)
            .await
            .status,
        201
    );
    sim.inject_fault(Fault::new(
        "GET",
        "/openstack/latest/securitykey",
        vec![FaultAction::Status {
            status: 500,
            retry_after: None,
        }],
    ));
    let url = format!("{}/openstack/latest/securitykey", sim.metadata_url());
    assert_eq!(
        simkit::client(&sim)
            .get(&url)
            .send()
            .await
            .unwrap()
            .status(),
        500
    );
    assert_eq!(
        simkit::client(&sim)
            .get(&url)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_bucket_per_project_answers_429_with_retry_after() {
    let (sim, api) = start().await;
    let other = login(&sim, "alice", "acme", "pw", OTHER_PROJECT).await;
    let r = admin_post(
        &sim,
        "/rate-limit",
        json!({"project_id": PROJECT, "per_second": 1.0, "burst": 3}),
    )
    .await;
    assert_eq!(r.status(), 200);
    // A burst of 3, then throttled.
    for i in 0..3 {
        assert_eq!(
            api.get(&pool()).await.status,
            200,
            "request {i} within the burst"
        );
    }
    let r = api.get(&pool()).await;
    let msg = r.assert_error(429, "APIGW.0308");
    assert!(!msg.is_empty());
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    // Throttling comes before authentication, as at the gateway: even a caller without credentials.
    Api::anonymous(&sim)
        .get(&pool())
        .await
        .assert_error(429, "APIGW.0308");
    // Another project has its own budget.
    assert_eq!(
        other
            .get(&format!("/v3/{OTHER_PROJECT}/elb/pools/{OTHER_POOL}"))
            .await
            .status,
        200
    );
    // The bucket refills at its rate: one request a second gets through again.
    let t = Instant::now();
    assert!(
        eventually(Duration::from_secs(3), || async {
            api.get(&pool()).await.status == 200
        })
        .await
    );
    assert!(
        t.elapsed() >= Duration::from_millis(200),
        "not before a token was due"
    );
    let log = sim.request_log();
    assert!(log.iter().filter(|e| e.status == 429).count() >= 2);

    // Through the Rust API: 2 per second, burst 1.
    sim.set_rate_limit(PROJECT, 2.0, 1);
    assert!(
        eventually(Duration::from_secs(3), || async {
            api.get(&pool()).await.status == 200
        })
        .await
    );
    let r = api.get(&pool()).await;
    assert_eq!(r.code(), (429, "APIGW.0308"));
    assert_eq!(r.header("retry-after"), Some("1"));
    // Bad admin input is refused.
    let r = admin_post(&sim, "/rate-limit", json!({"per_second": 1})).await;
    assert_eq!(r.status(), 400);
    let r = admin_post(
        &sim,
        "/rate-limit",
        json!({"project_id": PROJECT, "per_second": 0}),
    )
    .await;
    assert_eq!(r.status(), 400, "a bucket that never refills");
    // Lifting the limit: every request passes again at once.
    let r = simkit::client(&sim)
        .delete(format!("{}/rate-limit", sim.admin_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for _ in 0..5 {
        assert_eq!(api.get(&pool()).await.status, 200);
    }
    sim.set_rate_limit(PROJECT, 1.0, 1);
    assert_eq!(api.get(&pool()).await.status, 200);
    assert_eq!(api.get(&pool()).await.status, 429);
    sim.clear_rate_limits();
    assert_eq!(api.get(&pool()).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_log_records_every_call() {
    let sim = Sim::start(scenario()).await.unwrap();
    let start_wall = SystemTime::now();
    let api = login(&sim, "alice", "acme", "pw", PROJECT).await;
    assert_eq!(
        api.get(&format!("{}/members?address=127.0.1.1", pool()))
            .await
            .status,
        200
    );
    let key = Key::permanent("AKPERMANENT000000000", "permanent-sk");
    assert_eq!(
        Signed::new(Method::GET, &pool(), &key)
            .send(&sim)
            .await
            .status,
        200
    );
    let temp = Key::from_metadata(&sim).await;
    assert_eq!(
        Signed::new(Method::GET, &pool(), &temp)
            .send(&sim)
            .await
            .status,
        200
    );
    let hooks = format!("/autoscaling-api/v1/{PROJECT}/scaling_instance_hook/{GROUP}/list");
    assert_eq!(api.get(&hooks).await.status, 200);
    assert_eq!(Api::anonymous(&sim).delete(&member()).await.status, 401);
    assert_eq!(api.delete(&member()).await.status, 204);
    let end_wall = SystemTime::now();

    let log = sim.request_log();
    let summary: Vec<(&str, &str, &str, AuthKind, u16)> = log
        .iter()
        .map(|e| {
            (
                e.service.as_str(),
                e.method.as_str(),
                e.path.as_str(),
                e.auth,
                e.status,
            )
        })
        .collect();
    let members = format!("{}/members", pool());
    assert_eq!(
        summary,
        [
            ("iam", "POST", "/v3/auth/tokens", AuthKind::None, 201),
            ("elb", "GET", members.as_str(), AuthKind::Token, 200),
            ("elb", "GET", pool().as_str(), AuthKind::Aksk, 200),
            (
                "metadata",
                "GET",
                "/openstack/latest/securitykey",
                AuthKind::None,
                200
            ),
            ("elb", "GET", pool().as_str(), AuthKind::AkskTemporary, 200),
            ("as", "GET", hooks.as_str(), AuthKind::Token, 200),
            ("elb", "DELETE", member().as_str(), AuthKind::None, 401),
            ("elb", "DELETE", member().as_str(), AuthKind::Token, 204),
        ]
    );
    assert_eq!(log[0].query, "nocatalog=true");
    assert_eq!(log[1].query, "address=127.0.1.1");
    // Arrival times: wall clock within the test's window, monotonic strictly increasing.
    for e in &log {
        assert!(
            e.at >= start_wall - Duration::from_millis(1) && e.at <= end_wall,
            "{e:?}"
        );
    }
    assert!(
        log.windows(2).all(|w| w[0].mono_ns < w[1].mono_ns),
        "{log:?}"
    );
    assert!(log.windows(2).all(|w| w[0].at <= w[1].at));
    // The monotonic clock is CLOCK_MONOTONIC, comparable with this process's own reading.
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let now_ns = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    assert!(log.last().unwrap().mono_ns <= now_ns && now_ns - log[0].mono_ns < 60_000_000_000);
    // sim_ns is the same clock, counted from the simulator's start.
    let offsets: Vec<u64> = log.iter().map(|e| e.mono_ns - e.sim_ns).collect();
    assert!(
        offsets.windows(2).all(|w| w[0] == w[1]),
        "one origin: {offsets:?}"
    );
    assert!(
        log[0].sim_ns > 0 && log[0].sim_ns < 60_000_000_000,
        "{log:?}"
    );

    // The admin API serves the same log as JSON, and clears it.
    let json_log = admin_get(&sim, "/log").await;
    let entries = json_log.as_array().unwrap();
    assert_eq!(entries.len(), log.len());
    let e = &entries[7];
    assert_eq!(
        (
            e["service"].as_str(),
            e["method"].as_str(),
            e["path"].as_str(),
            e["auth"].as_str(),
            e["status"].as_u64()
        ),
        (
            Some("elb"),
            Some("DELETE"),
            Some(member().as_str()),
            Some("token"),
            Some(204)
        )
    );
    assert_eq!(entries[4]["auth"], "aksk-temporary");
    assert_eq!(entries[2]["auth"], "aksk");
    assert_eq!(e["mono_ns"].as_u64(), Some(log[7].mono_ns));
    assert_eq!(e["sim_ns"].as_u64(), Some(log[7].sim_ns));
    let at = e["at"].as_f64().unwrap();
    let expect = log[7]
        .at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((at - expect).abs() < 0.001, "{at} vs {expect}");
    let r = simkit::client(&sim)
        .delete(format!("{}/log", sim.admin_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(sim.request_log().is_empty());
    assert_eq!(admin_get(&sim, "/log").await, json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_stage_and_show_the_world() {
    let (sim, api) = start().await;
    // A member added behind the API's back (someone else registering) shows up in the API.
    let r = admin_post(
        &sim,
        "/members",
        json!({"pool_id": POOL, "address": "127.0.1.7", "protocol_port": 8080, "weight": 4}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let shown = api.get(&format!("{}/members/{id}", pool())).await;
    assert_eq!(
        (shown.status, shown.body["member"]["weight"].as_u64()),
        (200, Some(4))
    );
    let stored = admin_get(&sim, &format!("/pools/{POOL}/members")).await;
    assert_eq!(stored.as_array().unwrap().len(), 2);
    assert!(
        stored
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m.get("pool_id").is_none())
    );
    let r = admin_post(
        &sim,
        "/members",
        json!({"pool_id": "nope", "address": "127.0.1.8", "protocol_port": 1}),
    )
    .await;
    assert_eq!(r.status(), 400);

    // Scale-in and hooks.
    assert_eq!(admin_get(&sim, "/hooks").await, json!([]));
    let r = admin_post(&sim, "/scale-in", json!({"instance_id": INSTANCE})).await;
    assert_eq!(r.status(), 200);
    let hooks = admin_get(&sim, "/hooks").await;
    assert_eq!(
        (
            hooks[0]["instance_id"].as_str(),
            hooks[0]["status"].as_str(),
            hooks[0]["timed_out"].as_bool()
        ),
        (Some(INSTANCE), Some("HANGING"), Some(false))
    );
    assert!(!sim.member_exists(POOL, MEMBER));
    assert!(sim.member_exists(POOL, &id), "another address stays");
    // A launch hangs the group's launching hooks, and leaves the pools alone.
    sim.shared()
        .lock_for_tests(|inner| inner.groups[0].launching_hooks = vec!["warm-up".into()]);
    let r = admin_post(&sim, "/launch", json!({"instance_id": INSTANCE})).await;
    assert_eq!(r.status(), 200);
    let hooks = admin_get(&sim, "/hooks").await;
    assert_eq!(
        (
            hooks[1]["lifecycle_hook_name"].as_str(),
            hooks[1]["status"].as_str(),
            hooks[1]["launching"].as_bool()
        ),
        (Some("warm-up"), Some("HANGING"), Some(true))
    );
    assert!(sim.member_exists(POOL, &id));
    let r = admin_post(&sim, "/launch", json!({"instance_id": "no-such-instance"})).await;
    assert_eq!(r.status(), 400);
    // No data plane here: no connections to report.
    assert_eq!(admin_get(&sim, "/connections").await, json!([]));
    let r = simkit::client(&sim)
        .get(format!("{}/nothing", sim.admin_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r: Reply = Reply::from(
        simkit::client(&sim)
            .post(format!("{}/scale-in", sim.admin_url()))
            .body("not json")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 400);
}
