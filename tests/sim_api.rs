//! elb-sim's control plane over real HTTP: every ELB route, paging, error bodies, IAM tokens and their
//! expiry, AK/SK signatures (accepted and refused), the metadata service, Auto Scaling hooks, faults,
//! rate limits and the request log.

mod common;

use std::time::{Duration, SystemTime};

use common::{PROJECT, http, wait_until};
use elb_sim::scenario::{Instance, ScalingGroup, TokenMode};
use elb_sim::{AuthKind, Fault, FaultAction, Scenario, Sim};
use serde_json::{Value, json};

const POOL: &str = "36ce7086-a496-4666-9064-5ba0e6840c75";
const POOL2: &str = "46ce7086-a496-4666-9064-5ba0e6840c75";
const OTHER_PROJECT: &str = "00a3fff0d03c428eac3678da6a7d0f24";
const INSTANCE: &str = "6a7bd0c6-9e22-4d9f-a9c2-0d11ee3c0e55";
const GROUP: &str = "7b8bd0c6-9e22-4d9f-a9c2-0d11ee3c0e55";

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

/// A tiny client: token auth unless told otherwise.
struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Reply {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.header("X-Auth-Token", t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap_or_default();
        Reply {
            status,
            headers,
            body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
        }
    }

    async fn get(&self, path: &str) -> Reply {
        self.send(reqwest::Method::GET, path, None).await
    }
}

fn scenario() -> Scenario {
    Scenario::builder()
        .project(PROJECT)
        .project(OTHER_PROJECT)
        .user("alice", "acme", "pw")
        .user_denied("bob", "acme", "pw2", &["elb:members:delete"])
        .access_key("AKPERMANENT000000000", "permanent-sk", PROJECT)
        .pool(POOL, |p| p.health_monitor(true).connection_drain(60))
        .pool(POOL2, |p| p.deletion_protection(true))
        .member_of_instance(
            POOL,
            "00000000-0000-4000-8000-000000000001",
            "10.0.0.1",
            80,
            INSTANCE,
        )
        .member(POOL, "00000000-0000-4000-8000-000000000002", "10.0.0.2", 80)
        .member(POOL, "00000000-0000-4000-8000-000000000003", "10.0.0.3", 80)
        .member(POOL, "00000000-0000-4000-8000-000000000004", "10.0.0.1", 81)
        .member(POOL, "00000000-0000-4000-8000-000000000005", "10.0.0.5", 80)
        .member(
            POOL2,
            "00000000-0000-4000-8000-000000000006",
            "10.0.0.1",
            80,
        )
        .instance(Instance {
            uuid: INSTANCE.into(),
            project_id: PROJECT.into(),
            local_ipv4: "10.0.0.1".into(),
            region_id: Some("cn-north-4".into()),
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
            hook_timeout: Duration::from_secs(2),
        })
        .settings(|s| {
            s.hook_extend = Duration::from_secs(2);
            s.health_interval = Duration::from_millis(100);
        })
}

async fn token(sim: &Sim, user: &str, password: &str, project: &str) -> Reply {
    let c = Client {
        http: http(),
        base: sim.api_url(),
        token: None,
    };
    c.send(
        reqwest::Method::POST,
        "/v3/auth/tokens?nocatalog=true",
        Some(
            json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": user, "password": password, "domain": {"name": "acme"}}}},
            "scope": {"project": {"id": project}}}}),
        ),
    )
    .await
}

async fn client(sim: &Sim) -> Client {
    let r = token(sim, "alice", "pw", PROJECT).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let t = r.headers["x-subject-token"].to_str().unwrap().to_owned();
    Client {
        http: http(),
        base: sim.api_url(),
        token: Some(t),
    }
}

fn elb(path: &str) -> String {
    format!("/v3/{PROJECT}/elb{path}")
}

fn ids(v: &Value, key: &str) -> Vec<String> {
    v[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_and_pools_routes() {
    let sim = Sim::start(scenario()).await.unwrap();
    let c = client(&sim).await;

    // ListMembers with filters: repeated keys are OR-ed, different keys AND-ed.
    let r = c
        .get(&elb(&format!(
            "/pools/{POOL}/members?address=10.0.0.1&address=10.0.0.2&protocol_port=80"
        )))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        ids(&r.body, "members"),
        [
            "00000000-0000-4000-8000-000000000001",
            "00000000-0000-4000-8000-000000000002"
        ]
    );
    let r = c
        .get(&elb(&format!(
            "/pools/{POOL}/members?instance_id={INSTANCE}"
        )))
        .await;
    assert_eq!(
        ids(&r.body, "members"),
        ["00000000-0000-4000-8000-000000000001"]
    );
    // The v3 member object: its fields, and no pool_id or provisioning_status.
    let m = &r.body["members"][0];
    for field in [
        "id",
        "name",
        "project_id",
        "address",
        "protocol_port",
        "weight",
        "admin_state_up",
        "subnet_cidr_id",
        "ip_version",
        "operating_status",
        "status",
        "member_type",
        "instance_id",
        "created_at",
        "updated_at",
    ] {
        assert!(m.get(field).is_some(), "member field {field} missing: {m}");
    }
    assert!(
        m.get("pool_id").is_none() && m.get("provisioning_status").is_none(),
        "{m}"
    );
    assert_eq!(m["member_type"], "instance");
    assert!(r.body["request_id"].is_string() && r.headers.contains_key("x-request-id"));

    // ListAllMembers: its own filters, no pool_id in the answer, instance_id refused.
    let r = c.get(&elb("/members?address=10.0.0.1")).await;
    assert_eq!(ids(&r.body, "members").len(), 3);
    assert!(
        r.body["members"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m.get("pool_id").is_none())
    );
    let r = c.get(&elb(&format!("/members?pool_id={POOL2}"))).await;
    assert_eq!(
        ids(&r.body, "members"),
        ["00000000-0000-4000-8000-000000000006"]
    );
    let r = c
        .get(&elb(&format!("/members?instance_id={INSTANCE}")))
        .await;
    assert_eq!(
        (r.status, r.body["error_code"].as_str()),
        (400, Some("ELB.8902"))
    );

    // ListPools by member address and instance; ShowPool.
    let r = c.get(&elb("/pools?member_address=10.0.0.1")).await;
    assert_eq!(ids(&r.body, "pools"), [POOL, POOL2]);
    let r = c
        .get(&elb(&format!("/pools?member_instance_id={INSTANCE}")))
        .await;
    assert_eq!(ids(&r.body, "pools"), [POOL]);
    let r = c.get(&elb(&format!("/pools/{POOL}"))).await;
    assert_eq!(
        r.body["pool"]["connection_drain"],
        json!({"enable": true, "timeout": 60})
    );
    assert_eq!(r.body["pool"]["member_deletion_protection_enable"], false);
    assert_eq!(r.body["pool"]["members"].as_array().unwrap().len(), 5);

    // CreateMember 201, duplicate 409, bad input 400.
    let body = json!({"member": {"address": "10.0.0.9", "protocol_port": 8080, "weight": 3}});
    let r = c
        .send(
            reqwest::Method::POST,
            &elb(&format!("/pools/{POOL}/members")),
            Some(body.clone()),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let new_id = r.body["member"]["id"].as_str().unwrap().to_owned();
    assert_eq!(r.body["member"]["operating_status"], "INITIAL");
    let r = c
        .send(
            reqwest::Method::POST,
            &elb(&format!("/pools/{POOL}/members")),
            Some(body),
        )
        .await;
    assert_eq!(r.status, 409);
    let r = c
        .send(
            reqwest::Method::POST,
            &elb(&format!("/pools/{POOL}/members")),
            Some(json!({"member": {"address": "x"}})),
        )
        .await;
    assert_eq!(
        (r.status, r.body["error_code"].as_str()),
        (400, Some("ELB.8902"))
    );

    // ShowMember, UpdateMember.
    let r = c
        .get(&elb(&format!("/pools/{POOL}/members/{new_id}")))
        .await;
    assert_eq!(
        (r.status, r.body["member"]["weight"].as_u64()),
        (200, Some(3))
    );
    let r = c
        .send(
            reqwest::Method::PUT,
            &elb(&format!("/pools/{POOL}/members/{new_id}")),
            Some(json!({"member": {"weight": 0, "admin_state_up": false}})),
        )
        .await;
    assert_eq!(
        (
            r.body["member"]["weight"].as_u64(),
            r.body["member"]["admin_state_up"].as_bool()
        ),
        (Some(0), Some(false))
    );

    // DeleteMember 204; then 404 naming the member; a missing pool is named as the pool.
    let r = c
        .send(
            reqwest::Method::DELETE,
            &elb(&format!("/pools/{POOL}/members/{new_id}")),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    let r = c
        .send(
            reqwest::Method::DELETE,
            &elb(&format!("/pools/{POOL}/members/{new_id}")),
            None,
        )
        .await;
    assert_eq!(
        (r.status, r.body["error_code"].as_str()),
        (404, Some("ELB.8904"))
    );
    assert_eq!(
        r.body["error_msg"],
        format!("Member {new_id} could not be found.")
    );
    let missing_pool = "00000000-0000-4000-8000-00000000ffff";
    let r = c
        .send(
            reqwest::Method::DELETE,
            &elb(&format!("/pools/{missing_pool}/members/{new_id}")),
            None,
        )
        .await;
    assert_eq!(
        r.body["error_msg"],
        format!("Pool {missing_pool} could not be found.")
    );

    // Deletion protection refuses DELETE.
    let r = c
        .send(
            reqwest::Method::DELETE,
            &elb(&format!(
                "/pools/{POOL2}/members/00000000-0000-4000-8000-000000000006"
            )),
            None,
        )
        .await;
    assert_eq!(
        (r.status, r.body["error_code"].as_str()),
        (403, Some("ELB.8916"))
    );

    // BatchDeleteMembers: per-item ret_status.
    let r = c.send(reqwest::Method::POST, &elb(&format!("/pools/{POOL}/members/batch-delete")), Some(json!({"members": [
        {"id": "00000000-0000-4000-8000-000000000005"}, {"id": "00000000-0000-4000-8000-00000000dead"},
        {"address": "10.0.0.3", "protocol_port": 80}]}))).await;
    assert_eq!(r.status, 200);
    let statuses: Vec<&str> = r.body["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["ret_status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["successful", "not found", "successful"]);

    // Unknown routes answer like the gateway.
    let r = c.get(&elb("/nothing-here")).await;
    assert_eq!(
        (r.status, r.body["error_code"].as_str()),
        (404, Some("APIGW.0101"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_follows_markers_to_the_last_page() {
    let mut s = scenario();
    for i in 10..17 {
        s = s.member(
            POOL,
            &format!("00000000-0000-4000-8000-0000000000{i}"),
            &format!("10.0.1.{i}"),
            80,
        );
    }
    let sim = Sim::start(s).await.unwrap();
    let c = client(&sim).await;
    let (mut all, mut marker, mut pages) = (Vec::new(), None::<String>, 0);
    loop {
        let q = marker
            .as_ref()
            .map(|m| format!("&marker={m}"))
            .unwrap_or_default();
        let r = c
            .get(&elb(&format!("/pools/{POOL}/members?limit=5{q}")))
            .await;
        pages += 1;
        let page = ids(&r.body, "members");
        assert_eq!(
            r.body["page_info"]["current_count"].as_u64(),
            Some(page.len() as u64)
        );
        all.extend(page);
        match r.body["page_info"]["next_marker"].as_str() {
            Some(m) => marker = Some(m.to_owned()),
            None => break,
        }
    }
    assert_eq!((all.len(), pages), (12, 3));
    let mut sorted = all.clone();
    sorted.dedup();
    assert_eq!(sorted.len(), 12, "no duplicates across pages");
    let r = c
        .get(&elb(&format!("/pools/{POOL}/members?limit=2001")))
        .await;
    assert_eq!(r.status, 400);
    let r = c
        .get(&elb(&format!("/pools/{POOL}/members?limit=2&marker=nope")))
        .await;
    assert_eq!(r.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_expire_and_permissions_are_enforced() {
    let sim = Sim::start(scenario().settings(|s| s.token_lifetime = Duration::from_millis(800)))
        .await
        .unwrap();
    let r = token(&sim, "alice", "wrong", PROJECT).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.body["error"]["title"], "Unauthorized",
        "IAM's own error shape"
    );
    let r = token(&sim, "alice", "pw", PROJECT).await;
    let expires = r.body["token"]["expires_at"].as_str().unwrap().to_owned();
    assert!(expires.ends_with('Z') && expires.contains('.'), "{expires}");
    let c = client(&sim).await;
    let path = elb(&format!("/pools/{POOL}"));
    assert_eq!(c.get(&path).await.status, 200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while c.get(&path).await.status != 401 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the token never expired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = c.get(&path).await;
    assert_eq!(r.body["error_code"], "APIGW.0301");
    // No credential at all; a made-up token.
    let anon = Client {
        http: http(),
        base: sim.api_url(),
        token: None,
    };
    assert_eq!(anon.get(&path).await.status, 401);
    let bogus = Client {
        http: http(),
        base: sim.api_url(),
        token: Some("MIIbogus".into()),
    };
    assert_eq!(bogus.get(&path).await.body["error_code"], "APIGW.0301");

    let sim = Sim::start(scenario()).await.unwrap();
    // A token of another project: 403.
    let r = token(&sim, "alice", "pw", OTHER_PROJECT).await;
    let other = Client {
        http: http(),
        base: sim.api_url(),
        token: Some(r.headers["x-subject-token"].to_str().unwrap().into()),
    };
    assert_eq!(other.get(&elb(&format!("/pools/{POOL}"))).await.status, 403);
    // A user whose policy denies deleting members.
    let r = token(&sim, "bob", "pw2", PROJECT).await;
    let bob = Client {
        http: http(),
        base: sim.api_url(),
        token: Some(r.headers["x-subject-token"].to_str().unwrap().into()),
    };
    let r = bob
        .send(
            reqwest::Method::DELETE,
            &elb(&format!(
                "/pools/{POOL}/members/00000000-0000-4000-8000-000000000002"
            )),
            None,
        )
        .await;
    assert_eq!(
        (r.status, r.body["error_code"].as_str()),
        (403, Some("ELB.9802"))
    );
    assert!(
        r.body["error_msg"]
            .as_str()
            .unwrap()
            .contains("elb:members:delete")
    );
    sim.expire_tokens();
    assert_eq!(bob.get(&elb("/pools")).await.status, 401);
}

/// Sends a request signed with `elb_drain::sign`, optionally tampered with.
async fn signed(
    sim: &Sim,
    ak: &str,
    sk: &str,
    token: Option<&str>,
    date: SystemTime,
    path: &str,
) -> u16 {
    let url: reqwest::Url = format!("{}{path}", sim.api_url()).parse().unwrap();
    let host = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap());
    let mut headers = vec![
        ("Host".to_owned(), host),
        ("X-Sdk-Date".to_owned(), elb_drain::sign::sdk_date(date)),
        ("X-Project-Id".to_owned(), PROJECT.to_owned()),
    ];
    if let Some(t) = token {
        headers.push(("X-Security-Token".to_owned(), t.to_owned()));
    }
    let key = elb_drain::sign::SigningKey {
        ak: ak.into(),
        sk: elb_drain::secret::Secret::new(sk),
        security_token: token.map(elb_drain::secret::Secret::new),
    };
    let query: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let s = elb_drain::sign::sign("GET", url.path(), &query, &headers, b"", &key);
    let mut req = http().get(url);
    for (k, v) in headers.iter().filter(|(k, _)| k != "Host") {
        req = req.header(k.as_str(), v.as_str());
    }
    req.header("Authorization", s.authorization)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ak_sk_signatures_are_verified() {
    let sim = Sim::start(scenario()).await.unwrap();
    let now = SystemTime::now();
    let path = elb(&format!("/pools/{POOL}/members?address=10.0.0.1&limit=10"));
    assert_eq!(
        signed(
            &sim,
            "AKPERMANENT000000000",
            "permanent-sk",
            None,
            now,
            &path
        )
        .await,
        200
    );
    assert_eq!(
        signed(&sim, "AKPERMANENT000000000", "wrong-sk", None, now, &path).await,
        401
    );
    assert_eq!(
        signed(
            &sim,
            "AKUNKNOWN00000000000",
            "permanent-sk",
            None,
            now,
            &path
        )
        .await,
        401
    );
    let stale = now - Duration::from_secs(16 * 60);
    assert_eq!(
        signed(
            &sim,
            "AKPERMANENT000000000",
            "permanent-sk",
            None,
            stale,
            &path
        )
        .await,
        401
    );
    let log = sim.request_log();
    assert_eq!(log[0].auth, AuthKind::Aksk);

    // Temporary keys from the metadata service: valid only with their security token.
    let md = http()
        .get(format!(
            "{}/openstack/latest/securitykey",
            sim.metadata_url()
        ))
        .send()
        .await
        .unwrap();
    let cred: Value = md.json().await.unwrap();
    let (ak, sk, st) = (
        cred["credential"]["access"].as_str().unwrap(),
        cred["credential"]["secret"].as_str().unwrap(),
        cred["credential"]["securitytoken"].as_str().unwrap(),
    );
    assert_eq!(signed(&sim, ak, sk, Some(st), now, &path).await, 200);
    assert_eq!(signed(&sim, ak, sk, None, now, &path).await, 401);
    assert_eq!(signed(&sim, ak, sk, Some("forged"), now, &path).await, 401);
    assert!(
        sim.request_log()
            .iter()
            .any(|r| r.auth == AuthKind::AkskTemporary && r.status == 200)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metadata_service_and_its_token_modes() {
    for mode in [
        TokenMode::Optional,
        TokenMode::Required,
        TokenMode::Unsupported,
    ] {
        let mut s = scenario();
        s.metadata.tokens = mode;
        let sim = Sim::start(s).await.unwrap();
        let base = sim.metadata_url();
        let put = http()
            .put(format!("{base}/meta-data/latest/api/token"))
            .header("X-Metadata-Token-Ttl-Seconds", "21600")
            .send()
            .await
            .unwrap();
        let plain = http()
            .get(format!("{base}/openstack/latest/meta_data.json"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        match mode {
            TokenMode::Unsupported => {
                assert_eq!(put.status(), 404);
                assert_eq!(plain, 200);
            }
            _ => {
                assert_eq!(put.status(), 200);
                let t = put.text().await.unwrap();
                assert_eq!(
                    plain,
                    if mode == TokenMode::Required {
                        401
                    } else {
                        200
                    }
                );
                let with = http()
                    .get(format!("{base}/openstack/latest/meta_data.json"))
                    .header("X-Metadata-Token", t)
                    .send()
                    .await
                    .unwrap();
                let v: Value = with.json().await.unwrap();
                assert_eq!(
                    (
                        v["uuid"].as_str(),
                        v["project_id"].as_str(),
                        v["region_id"].as_str()
                    ),
                    (Some(INSTANCE), Some(PROJECT), Some("cn-north-4"))
                );
            }
        }
    }
    let sim = Sim::start(scenario()).await.unwrap();
    let base = sim.metadata_url();
    let ip = http()
        .get(format!("{base}/latest/meta-data/local-ipv4"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(ip, "10.0.0.1");
    let net: Value = http()
        .get(format!("{base}/openstack/latest/network_data.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(net["links"][0]["local_ipv4"], "10.0.0.1");
    // Without an agency there are no keys.
    let mut s = scenario();
    s.instance[0].agency = false;
    let sim = Sim::start(s).await.unwrap();
    let r = http()
        .get(format!(
            "{}/openstack/latest/securitykey",
            sim.metadata_url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("Please configure Cloud Service Agency first")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_in_removes_members_first_then_hangs_the_hook() {
    let sim = Sim::start(scenario()).await.unwrap();
    let c = client(&sim).await;
    assert!(sim.hooks(GROUP).is_empty());
    sim.start_scale_in(INSTANCE).unwrap();
    // Members of the instance (by instance ID or its address) are gone from every pool.
    for (pool, id) in [
        (POOL, "00000000-0000-4000-8000-000000000001"),
        (POOL, "00000000-0000-4000-8000-000000000004"),
        (POOL2, "00000000-0000-4000-8000-000000000006"),
    ] {
        assert!(!sim.member_exists(pool, id), "{id}");
    }
    assert!(sim.member_exists(POOL, "00000000-0000-4000-8000-000000000002"));
    let path = format!("/autoscaling-api/v1/{PROJECT}/scaling_instance_hook/{GROUP}");
    let r = c.get(&format!("{path}/list?instance_id={INSTANCE}")).await;
    let hook = &r.body["instance_hanging_info"][0];
    assert_eq!(
        (
            hook["lifecycle_hook_status"].as_str(),
            hook["default_result"].as_str()
        ),
        (Some("HANGING"), Some("ABANDON"))
    );
    let key = hook["lifecycle_action_key"].as_str().unwrap().to_owned();
    let deadline = sim.hooks(GROUP)[0].deadline;
    // EXTEND pushes the deadline by hook_extend.
    let r = c
        .send(
            reqwest::Method::PUT,
            &format!("{path}/callback"),
            Some(json!({"lifecycle_action_key": key, "lifecycle_action_result": "EXTEND"})),
        )
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(
        sim.hooks(GROUP)[0].deadline,
        deadline + Duration::from_secs(2)
    );
    // CONTINUE by instance and hook name; a second answer is refused with AS.7042.
    let by_name = json!({"instance_id": INSTANCE, "lifecycle_hook_name": "drain-hook", "lifecycle_action_result": "CONTINUE"});
    assert_eq!(
        c.send(
            reqwest::Method::PUT,
            &format!("{path}/callback"),
            Some(by_name.clone())
        )
        .await
        .status,
        204
    );
    let r = c
        .send(
            reqwest::Method::PUT,
            &format!("{path}/callback"),
            Some(by_name),
        )
        .await;
    assert_eq!(
        (r.status, r.body["error_code"].as_str()),
        (400, Some("AS.7042"))
    );
    let h = &sim.hooks(GROUP)[0];
    assert_eq!(
        (h.status.as_str(), h.timed_out, h.callbacks.len()),
        ("CONTINUE", false, 3)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_hook_takes_its_default_result() {
    let sim = Sim::start(scenario()).await.unwrap();
    sim.start_scale_in(INSTANCE).unwrap();
    assert!(wait_until(Duration::from_secs(5), || sim.hooks(GROUP)[0]
        .status
        != "HANGING"));
    let h = &sim.hooks(GROUP)[0];
    assert_eq!((h.status.as_str(), h.timed_out), ("ABANDON", true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_rate_limits_and_the_request_log() {
    let sim = Sim::start(scenario()).await.unwrap();
    let c = client(&sim).await;
    let path = elb(&format!("/pools/{POOL}"));
    sim.inject_fault(Fault::new(
        "GET",
        "/v3/*/elb/pools/*",
        vec![
            FaultAction::Status {
                status: 503,
                retry_after: None,
            },
            FaultAction::Status {
                status: 429,
                retry_after: Some(7),
            },
            FaultAction::Delay { ms: 200 },
            FaultAction::Malformed,
        ],
    ));
    let r = c.get(&path).await;
    assert_eq!(
        (r.status, r.body["error_code"].as_str()),
        (503, Some("ELB.8906"))
    );
    let r = c.get(&path).await;
    assert_eq!(
        (r.status, r.headers["retry-after"].to_str().unwrap()),
        (429, "7")
    );
    let t = std::time::Instant::now();
    assert_eq!(c.get(&path).await.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(200));
    let r = c.get(&path).await;
    assert!(
        r.status == 200 && r.body.is_string(),
        "a body that is not JSON: {:?}",
        r.body
    );
    assert_eq!(c.get(&path).await.status, 200, "the sequence is used up");

    // Reset, truncated and oversized bodies, set through the admin API.
    for action in [
        json!({"kind": "reset"}),
        json!({"kind": "truncated"}),
        json!({"kind": "oversized", "bytes": 3_000_000}),
    ] {
        let admin = http()
            .post(format!("{}/faults", sim.admin_url()))
            .json(
                &json!({"method": "GET", "path": "/v3/*/elb/pools/*", "actions": [action.clone()]}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(admin.status(), 200);
        let resp = c
            .http
            .get(format!("{}{path}", sim.api_url()))
            .header("X-Auth-Token", c.token.clone().unwrap())
            .send()
            .await;
        match action["kind"].as_str().unwrap() {
            "oversized" => assert_eq!(resp.unwrap().bytes().await.unwrap().len(), 3_000_000),
            _ => assert!(
                resp.is_err() || resp.unwrap().bytes().await.is_err(),
                "{action}: the body must fail"
            ),
        }
    }

    // A per-project token bucket: burst 3 at 1/s -> the 4th call is throttled with Retry-After.
    sim.set_rate_limit(PROJECT, 1.0, 3);
    let codes: Vec<u16> = futures_util::future::join_all((0..4).map(|_| c.get(&path)))
        .await
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(codes.iter().filter(|s| **s == 429).count(), 1, "{codes:?}");

    // The log: every call with its auth kind, status and increasing monotonic arrival times.
    let log: Vec<Value> = http()
        .get(format!("{}/log", sim.admin_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(log.len() >= 12);
    assert_eq!(log[0]["service"], "iam");
    assert!(
        log.iter()
            .skip(1)
            .any(|r| r["auth"] == "token" && r["status"] == 200)
    );
    let mono: Vec<u64> = log.iter().map(|r| r["mono_ns"].as_u64().unwrap()).collect();
    assert!(mono.windows(2).all(|w| w[0] <= w[1]), "{mono:?}");
    assert!(log.iter().all(|r| r["at"].as_f64().unwrap() > 1.7e9));
}
