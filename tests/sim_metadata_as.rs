//! elb-sim's ECS metadata service (session-token modes, identity, addresses, the agency's temporary
//! keys) and its Auto Scaling lifecycle hooks (scale-in order, list, CONTINUE/ABANDON/EXTEND callbacks,
//! AS.7042 for a hook no longer HANGING, the default result at the deadline).

mod common;
mod simkit;

use std::time::{Duration, SystemTime};

use common::PROJECT;
use elb_sim::scenario::{Instance, ScalingGroup, TokenMode};
use elb_sim::{AuthKind, Scenario, Sim};
use reqwest::Method;
use serde_json::{Value, json};
use simkit::{Api, Key, Reply, Signed, eventually, login};

const POOL: &str = "36ce7086-a496-4666-9064-5ba0e6840c75";
const POOL2: &str = "46ce7086-a496-4666-9064-5ba0e6840c75";
const INSTANCE: &str = "6a7bd0c6-9e22-4d9f-a9c2-0d11ee3c0e55";
const PEER: &str = "7a7bd0c6-9e22-4d9f-a9c2-0d11ee3c0e55";
const GROUP: &str = "7b8bd0c6-9e22-4d9f-a9c2-0d11ee3c0e55";

fn m(n: u32) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

fn instance(uuid: &str, ip: &str) -> Instance {
    Instance {
        uuid: uuid.into(),
        project_id: PROJECT.into(),
        local_ipv4: ip.into(),
        region_id: Some("cn-north-4".into()),
        hostname: "web-1".into(),
        name: "web-1".into(),
        agency: true,
        scaling_group_id: Some(GROUP.into()),
    }
}

/// This server (INSTANCE, 127.0.1.1) is in two pools, once by instance id and once by address only;
/// its peer stays. The hook times out after `hook_timeout`.
fn scenario(hook_timeout: Duration, default_result: &str) -> Scenario {
    Scenario::builder()
        .project(PROJECT)
        .user("alice", "acme", "pw")
        .access_key("AKPERMANENT000000000", "permanent-sk", PROJECT)
        .pool(POOL, |p| p)
        .pool(POOL2, |p| p)
        .member_of_instance(POOL, &m(1), "127.0.1.1", 80, INSTANCE)
        .member(POOL, &m(2), "127.0.1.1", 81)
        .member_of_instance(POOL, &m(3), "127.0.1.2", 80, PEER)
        .member(POOL2, &m(4), "127.0.1.1", 80)
        .instance(instance(INSTANCE, "127.0.1.1"))
        .instance(instance(PEER, "127.0.1.2"))
        .scaling_group(ScalingGroup {
            id: GROUP.into(),
            project_id: PROJECT.into(),
            hook_name: "drain-hook".into(),
            default_result: default_result.into(),
            hook_timeout,
            other_hooks: Vec::new(),
            launching_hooks: Vec::new(),
        })
        .settings(|s| s.hook_extend = Duration::from_millis(1500))
}

async fn md(sim: &Sim, path: &str, token: Option<&str>) -> Reply {
    let mut req = simkit::client(sim).get(format!("{}{path}", sim.metadata_url()));
    if let Some(t) = token {
        req = req.header("X-Metadata-Token", t);
    }
    Reply::from(req.send().await.expect("metadata answers")).await
}

async fn session(sim: &Sim) -> Reply {
    Reply::from(
        simkit::client(sim)
            .put(format!("{}/meta-data/latest/api/token", sim.metadata_url()))
            .header("X-Metadata-Token-Ttl-Seconds", "21600")
            .send()
            .await
            .expect("metadata answers"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_token_modes() {
    for mode in [
        TokenMode::Optional,
        TokenMode::Required,
        TokenMode::Unsupported,
    ] {
        let mut s = scenario(Duration::from_secs(3600), "ABANDON");
        s.metadata.tokens = mode;
        let sim = Sim::start(s).await.unwrap();
        let put = session(&sim).await;
        let bare = md(&sim, "/openstack/latest/meta_data.json", None).await;
        let forged = md(&sim, "/openstack/latest/meta_data.json", Some("forged")).await;
        match mode {
            TokenMode::Unsupported => {
                // An older platform: the PUT is unknown, reads need nothing, a header is ignored.
                assert_eq!(put.status, 404, "{mode:?}");
                assert_eq!((bare.status, forged.status), (200, 200), "{mode:?}");
            }
            TokenMode::Optional | TokenMode::Required => {
                assert_eq!(put.status, 200, "{mode:?}");
                let token = put.raw.clone();
                assert!(token.len() >= 16 && !token.contains(char::is_whitespace));
                let expect_bare = if mode == TokenMode::Required {
                    401
                } else {
                    200
                };
                assert_eq!(bare.status, expect_bare, "{mode:?}");
                assert_eq!(forged.status, 401, "{mode:?}: an unknown token is refused");
                for path in [
                    "/openstack/latest/meta_data.json",
                    "/latest/meta-data/local-ipv4",
                    "/openstack/latest/network_data.json",
                    "/openstack/latest/securitykey",
                ] {
                    let r = md(&sim, path, Some(&token)).await;
                    assert_eq!(r.status, 200, "{mode:?} {path}: {}", r.raw);
                }
            }
        }
        assert!(sim.request_log().iter().all(|e| e.service == "metadata"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_session_tokens_live_for_their_ttl() {
    let mut s = scenario(Duration::from_secs(3600), "ABANDON");
    s.metadata.tokens = TokenMode::Required;
    let sim = Sim::start(s).await.unwrap();
    let put = |ttl: Option<&'static str>| {
        let mut req =
            simkit::client(&sim).put(format!("{}/meta-data/latest/api/token", sim.metadata_url()));
        if let Some(t) = ttl {
            req = req.header("X-Metadata-Token-Ttl-Seconds", t);
        }
        async move { Reply::from(req.send().await.expect("metadata answers")).await }
    };
    // The TTL header is required and bounded, as on the real service.
    for bad in [None, Some("0"), Some("21601"), Some("soon")] {
        let r = put(bad).await;
        assert_eq!(r.status, 400, "{bad:?}: {}", r.raw);
        assert!(r.raw.contains("1-21600"), "{}", r.raw);
    }
    let long = put(Some("21600")).await;
    assert_eq!(long.status, 200);
    let short = put(Some("1")).await;
    assert_eq!(short.status, 200);
    let path = "/openstack/latest/meta_data.json";
    assert_eq!(md(&sim, path, Some(&short.raw)).await.status, 200);
    // A one-second token expires; the long one still works; a new short one works again.
    assert!(
        eventually(Duration::from_secs(5), || async {
            md(&sim, path, Some(&short.raw)).await.status == 401
        })
        .await,
        "the 1 s session token never expired"
    );
    assert_eq!(md(&sim, path, Some(&long.raw)).await.status, 200);
    let again = put(Some("1")).await;
    assert_eq!(md(&sim, path, Some(&again.raw)).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_identity_and_addresses() {
    let sim = Sim::start(scenario(Duration::from_secs(3600), "ABANDON"))
        .await
        .unwrap();
    let r = md(&sim, "/openstack/latest/meta_data.json", None).await;
    assert_eq!(r.status, 200);
    let v = &r.body;
    assert_eq!(
        (
            v["uuid"].as_str(),
            v["project_id"].as_str(),
            v["region_id"].as_str(),
            v["hostname"].as_str(),
            v["name"].as_str(),
        ),
        (
            Some(INSTANCE),
            Some(PROJECT),
            Some("cn-north-4"),
            Some("web-1"),
            Some("web-1")
        )
    );
    assert!(
        v["availability_zone"]
            .as_str()
            .is_some_and(|z| z.starts_with("cn-north-4"))
    );
    assert!(v["meta"].is_object());
    let r = md(&sim, "/latest/meta-data/local-ipv4", None).await;
    assert_eq!((r.status, r.raw.as_str()), (200, "127.0.1.1"));
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain"))
    );
    let r = md(&sim, "/openstack/latest/network_data.json", None).await;
    assert_eq!(r.body["links"][0]["local_ipv4"], "127.0.1.1");
    // Not served: the EC2 instance-id is documented as meaningless; unknown paths are 404; writes 405.
    assert_eq!(
        md(&sim, "/latest/meta-data/instance-id", None).await.status,
        404
    );
    assert_eq!(
        md(&sim, "/openstack/latest/nothing", None).await.status,
        404
    );
    let r = simkit::client(&sim)
        .post(format!(
            "{}/openstack/latest/meta_data.json",
            sim.metadata_url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);

    // An older platform without project_id/region_id in meta_data.json.
    let mut s = scenario(Duration::from_secs(3600), "ABANDON");
    s.instance[0].region_id = None;
    let sim = Sim::start(s).await.unwrap();
    let r = md(&sim, "/openstack/latest/meta_data.json", None).await;
    assert!(r.body.get("region_id").is_none(), "{}", r.raw);
    // The metadata listener can describe another server.
    let mut s = scenario(Duration::from_secs(3600), "ABANDON");
    s.metadata.instance = Some(PEER.into());
    let sim = Sim::start(s).await.unwrap();
    let r = md(&sim, "/latest/meta-data/local-ipv4", None).await;
    assert_eq!(r.raw, "127.0.1.2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn securitykey_hands_out_temporary_keys_the_api_accepts() {
    let lifetime = Duration::from_secs(2);
    let sim = Sim::start(
        scenario(Duration::from_secs(3600), "ABANDON").settings(|s| s.temp_key_lifetime = lifetime),
    )
    .await
    .unwrap();
    let before = SystemTime::now();
    let r = md(&sim, "/openstack/latest/securitykey", None).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    let c = &r.body["credential"];
    for f in ["access", "secret", "securitytoken", "expires_at"] {
        assert!(
            c[f].as_str().is_some_and(|s| !s.is_empty()),
            "{f}: {}",
            r.raw
        );
    }
    let expires = humantime::parse_rfc3339(c["expires_at"].as_str().unwrap()).unwrap();
    let ahead = expires.duration_since(before).unwrap();
    assert!(
        ahead >= lifetime && ahead < lifetime + Duration::from_secs(2),
        "{ahead:?}"
    );
    let first = c["access"].as_str().unwrap().to_owned();

    // Accepted by the signature check with its security token, as the instance's project.
    let key = Key::from_metadata(&sim).await;
    assert_eq!(key.ak, first, "the same key until half its life has passed");
    let r = Signed::new(
        Method::GET,
        &format!("/v3/{PROJECT}/elb/pools/{POOL}/members"),
        &key,
    )
    .project(PROJECT)
    .send(&sim)
    .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(
        sim.request_log().last().unwrap().auth,
        AuthKind::AkskTemporary
    );
    let mut without = key.clone();
    without.security_token = None;
    let r = Signed::new(
        Method::GET,
        &format!("/v3/{PROJECT}/elb/pools/{POOL}/members"),
        &without,
    )
    .send(&sim)
    .await;
    r.assert_error(401, "APIGW.0301");

    // Rotated early: after half its lifetime a new key comes, and the old one still works meanwhile.
    assert!(
        eventually(Duration::from_secs(5), || async {
            Key::from_metadata(&sim).await.ak != first
        })
        .await,
        "the key was never rotated"
    );
    let rotated = Key::from_metadata(&sim).await;
    for k in [&key, &rotated] {
        let r = Signed::new(Method::GET, &format!("/v3/{PROJECT}/elb/pools/{POOL}"), k)
            .send(&sim)
            .await;
        if k.ak == first && SystemTime::now() >= expires {
            continue; // rotated so late that the old one just expired: nothing to compare
        }
        assert_eq!(r.status, 200, "{}: {}", k.ak, r.raw);
    }

    // No agency, no keys: a 401 telling what to configure.
    let mut s = scenario(Duration::from_secs(3600), "ABANDON");
    s.instance[0].agency = false;
    let sim = Sim::start(s).await.unwrap();
    let r = md(&sim, "/openstack/latest/securitykey", None).await;
    assert_eq!(r.status, 401);
    assert!(
        r.raw
            .contains("Please configure Cloud Service Agency first"),
        "{}",
        r.raw
    );
    assert!(sim.issued_secrets().is_empty());
}

fn hooks_path() -> String {
    format!("/autoscaling-api/v1/{PROJECT}/scaling_instance_hook/{GROUP}")
}

async fn callback(api: &Api, body: Value) -> Reply {
    api.put(&format!("{}/callback", hooks_path()), body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_in_deletes_the_members_first_then_hangs_the_hook() {
    let sim = Sim::start(scenario(Duration::from_secs(3600), "ABANDON"))
        .await
        .unwrap();
    let api = login(&sim, "alice", "acme", "pw", PROJECT).await;
    let list = format!("{}/list?instance_id={INSTANCE}", hooks_path());
    let r = api.get(&list).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(r.body["instance_hanging_info"], json!([]));

    // An observer polls hooks and then members: once it sees the hook HANGING, the members it reads
    // next must already be gone. Scale-in starts through the admin API while it watches.
    let observer = {
        let api = Api::with_token(&sim, api.token.as_deref().unwrap());
        let list = list.clone();
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            let mut polls = 0;
            while tokio::time::Instant::now() < deadline {
                polls += 1;
                let hanging = api.get(&list).await.body["instance_hanging_info"]
                    .as_array()
                    .is_some_and(|a| !a.is_empty());
                let ours = api
                    .get(&format!(
                        "/v3/{PROJECT}/elb/pools/{POOL}/members?address=127.0.1.1"
                    ))
                    .await
                    .ids("members");
                if hanging {
                    return (ours, polls);
                }
            }
            panic!("the hook never hung");
        })
    };
    let r = simkit::client(&sim)
        .post(format!("{}/scale-in", sim.admin_url()))
        .json(&json!({"instance_id": INSTANCE}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (seen_members, polls) = observer.await.unwrap();
    assert!(polls >= 1);
    assert_eq!(
        seen_members,
        Vec::<String>::new(),
        "a HANGING hook with members still in place"
    );

    // By instance id and by address, in every pool; the peer stays.
    assert!(!sim.member_exists(POOL, &m(1)) && !sim.member_exists(POOL, &m(2)));
    assert!(!sim.member_exists(POOL2, &m(4)));
    assert!(sim.member_exists(POOL, &m(3)));
    // The agent's own DELETE now answers 404 naming the member: success for it.
    let r = api
        .delete(&format!("/v3/{PROJECT}/elb/pools/{POOL}/members/{}", m(1)))
        .await;
    assert!(r.assert_error(404, "ELB.8904").starts_with("Member "));

    let r = api.get(&list).await;
    let hooks = r.body["instance_hanging_info"].as_array().unwrap();
    assert_eq!(hooks.len(), 1);
    let h = &hooks[0];
    assert_eq!(
        (
            h["lifecycle_hook_name"].as_str(),
            h["instance_id"].as_str(),
            h["scaling_group_id"].as_str(),
            h["lifecycle_hook_status"].as_str(),
            h["default_result"].as_str(),
        ),
        (
            Some("drain-hook"),
            Some(INSTANCE),
            Some(GROUP),
            Some("HANGING"),
            Some("ABANDON")
        )
    );
    assert!(
        h["lifecycle_action_key"]
            .as_str()
            .is_some_and(|k| !k.is_empty())
    );
    let timeout = humantime::parse_rfc3339(h["timeout"].as_str().unwrap()).unwrap();
    assert!(
        timeout > SystemTime::now() + Duration::from_secs(3500),
        "{h}"
    );
    // Listing without instance_id shows the group's hooks; another instance has none.
    assert_eq!(
        api.get(&format!("{}/list", hooks_path())).await.body["instance_hanging_info"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let r = api
        .get(&format!("{}/list?instance_id={PEER}", hooks_path()))
        .await;
    assert_eq!(r.body["instance_hanging_info"], json!([]));
    // The Rust API sees the same hook; scale-in of an unknown instance is refused.
    assert_eq!(
        sim.hooks(GROUP)[0].lifecycle_action_key,
        h["lifecycle_action_key"].as_str().unwrap()
    );
    assert!(sim.start_scale_in("no-such-instance").is_err());
    let r = simkit::client(&sim)
        .post(format!("{}/scale-in", sim.admin_url()))
        .json(&json!({"instance_id": "no-such-instance"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_continue_abandon_and_a_second_answer() {
    let sim = Sim::start(scenario(Duration::from_secs(3600), "ABANDON"))
        .await
        .unwrap();
    let api = login(&sim, "alice", "acme", "pw", PROJECT).await;
    sim.start_scale_in(INSTANCE).unwrap();
    let key = sim.hooks(GROUP)[0].lifecycle_action_key.clone();

    // Refused answers change nothing.
    let r = callback(
        &api,
        json!({"lifecycle_action_key": key, "lifecycle_action_result": "MAYBE"}),
    )
    .await;
    r.assert_error(400, "AS.0001");
    let r = callback(
        &api,
        json!({"lifecycle_action_key": "no-such-key", "lifecycle_action_result": "CONTINUE"}),
    )
    .await;
    r.assert_error(404, "AS.7041");
    let r = api
        .put(
            &format!("/autoscaling-api/v1/{PROJECT}/scaling_instance_hook/no-such-group/callback"),
            json!({"lifecycle_action_key": key, "lifecycle_action_result": "CONTINUE"}),
        )
        .await;
    r.assert_error(404, "AS.2007");
    assert_eq!(sim.hooks(GROUP)[0].status, "HANGING");

    // CONTINUE by key: 204, empty body; the hook is done.
    let r = callback(
        &api,
        json!({"lifecycle_action_key": key, "lifecycle_action_result": "CONTINUE"}),
    )
    .await;
    assert_eq!((r.status, r.raw.as_str()), (204, ""));
    assert!(r.header("x-request-id").is_some(), "{:?}", r.headers);
    let h = &sim.hooks(GROUP)[0];
    assert_eq!((h.status.as_str(), h.timed_out), ("CONTINUE", false));
    let r = api
        .get(&format!("{}/list?instance_id={INSTANCE}", hooks_path()))
        .await;
    assert_eq!(
        r.body["instance_hanging_info"][0]["lifecycle_hook_status"],
        "CONTINUE"
    );
    // A second answer, by instance and hook name this time: 400 AS.7042, and the result stands.
    for result in ["ABANDON", "EXTEND", "CONTINUE"] {
        let r = callback(
            &api,
            json!({"instance_id": INSTANCE, "lifecycle_hook_name": "drain-hook", "lifecycle_action_result": result}),
        )
        .await;
        r.assert_error(400, "AS.7042");
    }
    let h = &sim.hooks(GROUP)[0];
    assert_eq!(h.status, "CONTINUE");
    let results: Vec<&str> = h.callbacks.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(
        results,
        ["CONTINUE", "ABANDON", "EXTEND", "CONTINUE"],
        "every answer is recorded"
    );

    // ABANDON by instance and name, signed with AK/SK this time.
    let sim = Sim::start(scenario(Duration::from_secs(3600), "CONTINUE"))
        .await
        .unwrap();
    sim.start_scale_in(INSTANCE).unwrap();
    let r = Signed::new(
        Method::PUT,
        &format!("{}/callback", hooks_path()),
        &Key::permanent("AKPERMANENT000000000", "permanent-sk"),
    )
    .body(json!({"instance_id": INSTANCE, "lifecycle_hook_name": "drain-hook", "lifecycle_action_result": "ABANDON"}))
    .send(&sim)
    .await;
    assert_eq!(r.status, 204, "{}", r.raw);
    assert_eq!(sim.hooks(GROUP)[0].status, "ABANDON");
    assert_eq!(sim.request_log().last().unwrap().service, "as");
    // AS checks credentials like every service.
    let r = Api::anonymous(&sim)
        .get(&format!("{}/list", hooks_path()))
        .await;
    r.assert_error(401, "APIGW.0301");
}

/// A group with three terminating hooks: a scale-in hangs them together, the group's own hook listed
/// last. As the service documents it, CONTINUE ends one hook and lets the others finish, ABANDON ends
/// the instance's other hooks too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_hooks_hang_together_and_abandon_ends_them_all() {
    let mut sc = scenario(Duration::from_secs(3600), "ABANDON");
    sc.scaling_group[0].other_hooks = vec!["ship-logs".into(), "backup".into()];
    let sim = Sim::start(sc).await.unwrap();
    let api = login(&sim, "alice", "acme", "pw", PROJECT).await;
    sim.start_scale_in(INSTANCE).unwrap();
    let listed = |r: &Reply| -> Vec<(String, String)> {
        r.body["instance_hanging_info"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                (
                    h["lifecycle_hook_name"].as_str().unwrap().to_owned(),
                    h["lifecycle_hook_status"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let list = format!("{}/list?instance_id={INSTANCE}", hooks_path());
    let answer = |name: &str, result: &str| json!({"instance_id": INSTANCE, "lifecycle_hook_name": name, "lifecycle_action_result": result});
    let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    assert_eq!(
        listed(&api.get(&list).await),
        pairs(&[
            ("ship-logs", "HANGING"),
            ("backup", "HANGING"),
            ("drain-hook", "HANGING")
        ])
    );
    let keys: std::collections::HashSet<String> = sim
        .hooks(GROUP)
        .iter()
        .map(|h| h.lifecycle_action_key.clone())
        .collect();
    assert_eq!(keys.len(), 3, "each hook has its own action key");
    let r = callback(&api, answer("ship-logs", "CONTINUE")).await;
    assert_eq!(r.status, 204, "{}", r.raw);
    assert_eq!(
        listed(&api.get(&list).await),
        pairs(&[
            ("ship-logs", "CONTINUE"),
            ("backup", "HANGING"),
            ("drain-hook", "HANGING")
        ])
    );
    let r = callback(&api, answer("backup", "ABANDON")).await;
    assert_eq!(r.status, 204, "{}", r.raw);
    assert_eq!(
        listed(&api.get(&list).await),
        pairs(&[
            ("ship-logs", "CONTINUE"),
            ("backup", "ABANDON"),
            ("drain-hook", "ABANDON")
        ])
    );
    let ended = sim
        .hooks(GROUP)
        .into_iter()
        .find(|h| h.lifecycle_hook_name == "drain-hook")
        .unwrap();
    assert!(ended.callbacks.is_empty() && !ended.timed_out, "{ended:?}");
    let r = callback(&api, answer("drain-hook", "CONTINUE")).await;
    r.assert_error(400, "AS.7042");

    // A hook that times out with ABANDON ends the others as an answer does: `drain-hook`, extended
    // past the others' deadline, is ended when theirs passes.
    let mut sc = scenario(Duration::from_millis(300), "ABANDON");
    sc.scaling_group[0].other_hooks = vec!["ship-logs".into()];
    sc.scaling_group[0].launching_hooks = vec!["warm-up".into(), "config".into()];
    let sim = Sim::start(sc).await.unwrap();
    let api = login(&sim, "alice", "acme", "pw", PROJECT).await;
    sim.start_scale_in(INSTANCE).unwrap();
    let r = callback(&api, answer("drain-hook", "EXTEND")).await;
    assert_eq!(r.status, 204, "{}", r.raw);
    let hook = |name: &str| {
        sim.hooks(GROUP)
            .into_iter()
            .find(|h| h.lifecycle_hook_name == name)
            .unwrap()
    };
    assert!(
        eventually(Duration::from_secs(3), || async {
            hook("ship-logs").status != "HANGING"
        })
        .await,
        "{:?}",
        sim.hooks(GROUP)
    );
    let (logs, ours) = (hook("ship-logs"), hook("drain-hook"));
    assert_eq!((logs.status.as_str(), logs.timed_out), ("ABANDON", true));
    assert_eq!(
        (ours.status.as_str(), ours.timed_out),
        ("ABANDON", false),
        "{ours:?}"
    );
    // Launching hooks are not a leaving instance's: ABANDON on one ends no other.
    sim.shared().lock_for_tests(|inner| inner.hooks.clear());
    sim.shared()
        .lock_for_tests(|inner| inner.groups[0].hook_timeout = Duration::from_secs(3600));
    sim.start_launch(INSTANCE).unwrap();
    let r = callback(&api, answer("warm-up", "ABANDON")).await;
    assert_eq!(r.status, 204, "{}", r.raw);
    assert_eq!(hook("config").status, "HANGING");
    assert!(hook("warm-up").launching && hook("config").launching);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extend_pushes_the_deadline_by_hook_extend() {
    let sim = Sim::start(scenario(Duration::from_millis(500), "ABANDON"))
        .await
        .unwrap();
    let api = login(&sim, "alice", "acme", "pw", PROJECT).await;
    sim.start_scale_in(INSTANCE).unwrap();
    let original = sim.hooks(GROUP)[0].deadline;
    let key = sim.hooks(GROUP)[0].lifecycle_action_key.clone();
    let r = callback(
        &api,
        json!({"lifecycle_action_key": key, "lifecycle_action_result": "EXTEND"}),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.raw);
    let extended = sim.hooks(GROUP)[0].deadline;
    assert_eq!(
        extended,
        original + Duration::from_millis(1500),
        "one hook_extend"
    );
    let r = api
        .get(&format!("{}/list?instance_id={INSTANCE}", hooks_path()))
        .await;
    let shown = humantime::parse_rfc3339(
        r.body["instance_hanging_info"][0]["timeout"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert!(shown > original, "the listed timeout moved too");
    // Still HANGING past the original deadline ...
    assert!(
        eventually(Duration::from_secs(5), || async {
            SystemTime::now() > original + Duration::from_millis(300)
        })
        .await
    );
    assert_eq!(
        sim.hooks(GROUP)[0].status,
        "HANGING",
        "EXTEND kept it alive"
    );
    // ... and it takes its default result only at the extended one.
    assert!(
        eventually(Duration::from_secs(5), || async {
            sim.hooks(GROUP)[0].status != "HANGING"
        })
        .await
    );
    assert!(SystemTime::now() >= extended);
    let h = &sim.hooks(GROUP)[0];
    assert_eq!((h.status.as_str(), h.timed_out), ("ABANDON", true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_hook_takes_its_default_result_at_the_timeout() {
    for default in ["ABANDON", "CONTINUE"] {
        let sim = Sim::start(scenario(Duration::from_millis(300), default))
            .await
            .unwrap();
        let api = login(&sim, "alice", "acme", "pw", PROJECT).await;
        sim.start_scale_in(INSTANCE).unwrap();
        let deadline = sim.hooks(GROUP)[0].deadline;
        assert!(
            eventually(Duration::from_secs(5), || async {
                sim.hooks(GROUP)[0].status != "HANGING"
            })
            .await,
            "{default}: the hook never timed out"
        );
        assert!(SystemTime::now() >= deadline);
        let h = &sim.hooks(GROUP)[0];
        assert_eq!((h.status.as_str(), h.timed_out), (default, true));
        assert!(h.callbacks.is_empty());
        let r = api
            .get(&format!("{}/list?instance_id={INSTANCE}", hooks_path()))
            .await;
        assert_eq!(
            r.body["instance_hanging_info"][0]["lifecycle_hook_status"],
            default
        );
        // Too late to answer.
        let r = callback(
            &api,
            json!({"lifecycle_action_key": h.lifecycle_action_key, "lifecycle_action_result": "CONTINUE"}),
        )
        .await;
        r.assert_error(400, "AS.7042");
    }
}
