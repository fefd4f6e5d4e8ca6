//! elb-sim's ELB v3 API over real HTTP, route by route: members (create, show, list with filters,
//! update, delete, batch delete), ListAllMembers, pools (list with member filters, show), deletion
//! protection, `limit`/`marker` paging with `page_info` (also under `settings.page_size_cap`), and the
//! error body every failure carries: unknown pools and members, wrong JSON types, actions a user's
//! policy denies, the members-per-pool quota. What the agent relies on is exactly what is pinned here.

mod common;
mod simkit;

use std::time::Duration;

use common::PROJECT;
use elb_sim::{Scenario, Sim};
use serde_json::{Value, json};
use simkit::{Api, Reply, login};

const POOL: &str = "36ce7086-a496-4666-9064-5ba0e6840c75";
/// Member deletion protection on.
const PROTECTED: &str = "46ce7086-a496-4666-9064-5ba0e6840c75";
/// Has a health monitor, checked only once an hour: a new member stays INITIAL.
const MONITORED: &str = "56ce7086-a496-4666-9064-5ba0e6840c75";
/// In another project: invisible to ours.
const FOREIGN: &str = "66ce7086-a496-4666-9064-5ba0e6840c75";
const OTHER_PROJECT: &str = "00a3fff0d03c428eac3678da6a7d0f24";
const LB: &str = "a1b2c3d4-0000-4000-8000-0000000000lb";
const LISTENER: &str = "b1b2c3d4-0000-4000-8000-000000000011";
const INSTANCE: &str = "6a7bd0c6-9e22-4d9f-a9c2-0d11ee3c0e55";
const INSTANCE2: &str = "7a7bd0c6-9e22-4d9f-a9c2-0d11ee3c0e55";
const MISSING: &str = "00000000-0000-4000-8000-00000000ffff";

fn m(n: u32) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

/// Addresses are loopback ones, though nothing connects to them but the health checker of
/// `MONITORED`: tests never send a packet off this machine.
fn scenario() -> Scenario {
    scenario_builder().build()
}

/// [`scenario`], still open for more.
fn scenario_builder() -> Scenario {
    let mut s = Scenario::builder()
        .project(PROJECT)
        .project(OTHER_PROJECT)
        .user("alice", "acme", "pw")
        .pool(POOL, |mut p| {
            p.loadbalancer_id = Some(LB.into());
            p.name = "web".into();
            p.connection_drain(60)
        })
        .pool(PROTECTED, |p| p.deletion_protection(true).protocol_udp())
        .pool(MONITORED, |p| p.health_monitor(true))
        .pool(FOREIGN, |p| p.project(OTHER_PROJECT))
        .listener(LISTENER, POOL)
        .member_of_instance(POOL, &m(1), "127.0.1.1", 80, INSTANCE)
        .member(POOL, &m(2), "127.0.1.2", 80)
        .member(POOL, &m(3), "127.0.1.3", 80)
        .member(POOL, &m(4), "127.0.1.1", 81)
        .member_of_instance(POOL, &m(5), "127.0.1.5", 80, INSTANCE2)
        .member(PROTECTED, &m(6), "127.0.1.1", 80)
        .member(FOREIGN, &m(7), "127.0.1.1", 80)
        .settings(|s| s.health_interval = Duration::from_secs(3600));
    s.member[1].weight = 5;
    s.member[1].name = "second".into();
    s
}

trait UdpPool {
    fn protocol_udp(self) -> Self;
}

impl UdpPool for elb_sim::scenario::PoolConfig {
    fn protocol_udp(mut self) -> Self {
        self.protocol = "UDP".into();
        self
    }
}

async fn start() -> (Sim, Api) {
    start_with(scenario()).await
}

async fn start_with(s: Scenario) -> (Sim, Api) {
    let sim = Sim::start(s).await.expect("elb-sim starts");
    let api = login(&sim, "alice", "acme", "pw", PROJECT).await;
    (sim, api)
}

fn elb(path: &str) -> String {
    format!("/v3/{PROJECT}/elb{path}")
}

fn members(pool: &str) -> String {
    elb(&format!("/pools/{pool}/members"))
}

fn member(pool: &str, id: &str) -> String {
    elb(&format!("/pools/{pool}/members/{id}"))
}

/// Every field of a v3 member, and none of Octavia's that v3 does not have.
fn assert_v3_member(m: &Value) {
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
        "reason",
        "member_type",
        "instance_id",
        "availability_zone",
        "created_at",
        "updated_at",
    ] {
        assert!(m.get(field).is_some(), "member field {field} missing: {m}");
    }
    for absent in ["pool_id", "provisioning_status", "loadbalancer_id"] {
        assert!(m.get(absent).is_none(), "{absent} must not be there: {m}");
    }
    assert!(m["status"].is_array(), "{m}");
    for t in ["created_at", "updated_at"] {
        let s = m[t].as_str().expect("time string");
        assert!(humantime::parse_rfc3339(s).is_ok(), "{t} = {s}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_show_update_and_delete_a_member() {
    let (sim, api) = start().await;

    let r = api
        .post(
            &members(POOL),
            json!({"member": {"address": "127.0.1.9", "protocol_port": 8080, "weight": 3,
                "name": "new", "subnet_cidr_id": "c0ffee00-0000-4000-8000-000000000000"}}),
        )
        .await;
    assert_eq!(r.status, 201, "CreateMember answers 201: {}", r.raw);
    let created = &r.body["member"];
    assert_v3_member(created);
    assert_eq!(
        (
            created["address"].as_str(),
            created["protocol_port"].as_u64(),
            created["weight"].as_u64(),
            created["name"].as_str(),
            created["project_id"].as_str(),
            created["ip_version"].as_str(),
            created["member_type"].as_str(),
            created["operating_status"].as_str(),
            created["admin_state_up"].as_bool(),
        ),
        (
            Some("127.0.1.9"),
            Some(8080),
            Some(3),
            Some("new"),
            Some(PROJECT),
            Some("v4"),
            Some("ip"),
            Some("NO_MONITOR"),
            Some(true)
        )
    );
    // One status per listener of the pool.
    assert_eq!(created["status"][0]["listener_id"], LISTENER);
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(sim.member_exists(POOL, &id));

    // The default weight is 1; a monitored pool's new member has no verdict yet; IPv6 is v6.
    let r = api
        .post(
            &members(MONITORED),
            json!({"member": {"address": "::1", "protocol_port": 1}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.raw);
    assert_eq!(
        (
            r.body["member"]["weight"].as_u64(),
            r.body["member"]["operating_status"].as_str(),
            r.body["member"]["ip_version"].as_str()
        ),
        (Some(1), Some("INITIAL"), Some("v6"))
    );

    let r = api.get(&member(POOL, &id)).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_v3_member(&r.body["member"]);
    assert_eq!(
        r.body["member"], *created,
        "ShowMember shows what was created"
    );
    assert!(r.body["request_id"].is_string());

    // UpdateMember: weight and admin_state_up, answered and then shown.
    let r = api
        .put(
            &member(POOL, &id),
            json!({"member": {"weight": 0, "admin_state_up": false}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_v3_member(&r.body["member"]);
    let shown = api.get(&member(POOL, &id)).await;
    for v in [&r.body["member"], &shown.body["member"]] {
        assert_eq!(
            (
                v["weight"].as_u64(),
                v["admin_state_up"].as_bool(),
                v["name"].as_str()
            ),
            (Some(0), Some(false), Some("new"))
        );
    }
    let r = api
        .put(&member(POOL, &id), json!({"member": {"weight": 100}}))
        .await;
    assert_eq!(
        (
            r.body["member"]["weight"].as_u64(),
            r.body["member"]["admin_state_up"].as_bool()
        ),
        (Some(100), Some(false)),
        "fields not sent are kept"
    );

    // DeleteMember: 204 with an empty body, then the member is gone for every route.
    let r = api.delete(&member(POOL, &id)).await;
    assert_eq!((r.status, r.raw.as_str()), (204, ""));
    assert!(
        r.header("x-request-id").is_some_and(|v| v.len() == 32),
        "a 204 carries X-Request-Id too: {:?}",
        r.headers
    );
    assert!(!sim.member_exists(POOL, &id));
    let r = api.get(&member(POOL, &id)).await;
    assert_eq!(
        r.assert_error(404, "ELB.8904"),
        format!("Member {id} could not be found.")
    );
    // Deleting it again: 404 ELB.8904 naming the member (success for a drain daemon).
    let r = api.delete(&member(POOL, &id)).await;
    assert_eq!(
        r.assert_error(404, "ELB.8904"),
        format!("Member {id} could not be found.")
    );
    // The same code naming the pool: a configuration error, told apart by the message.
    let r = api.delete(&member(MISSING, &m(2))).await;
    assert_eq!(
        r.assert_error(404, "ELB.8904"),
        format!("Pool {MISSING} could not be found.")
    );
    // A member of another pool is not found in this one.
    let r = api.delete(&member(MONITORED, &m(2))).await;
    assert_eq!(
        r.assert_error(404, "ELB.8904"),
        format!("Member {} could not be found.", m(2))
    );
    assert!(sim.member_exists(POOL, &m(2)));
    // Another project's pool does not exist for us.
    let r = api.get(&member(FOREIGN, &m(7))).await;
    assert_eq!(
        r.assert_error(404, "ELB.8904"),
        format!("Pool {FOREIGN} could not be found.")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_writes_refuse_bad_input() {
    let (sim, api) = start().await;
    for (body, why) in [
        (
            json!({"member": {"address": "not-an-ip", "protocol_port": 80}}),
            "address",
        ),
        (json!({"member": {"protocol_port": 80}}), "address"),
        (
            json!({"member": {"address": "127.0.1.9", "protocol_port": 0}}),
            "protocol_port",
        ),
        (
            json!({"member": {"address": "127.0.1.9", "protocol_port": 70000}}),
            "protocol_port",
        ),
        (
            json!({"member": {"address": "127.0.1.9", "protocol_port": 80, "weight": 101}}),
            "weight",
        ),
        (
            json!({"address": "127.0.1.9", "protocol_port": 80}),
            "member",
        ),
    ] {
        let r = api.post(&members(POOL), body.clone()).await;
        let msg = r.assert_error(400, "ELB.8902");
        assert!(msg.contains(why), "{body}: {msg}");
    }
    // Same address and port twice in a pool: a conflict.
    let r = api
        .post(
            &members(POOL),
            json!({"member": {"address": "127.0.1.2", "protocol_port": 80}}),
        )
        .await;
    r.assert_error(409, "ELB.8911");
    let r = api
        .post(
            &members(MISSING),
            json!({"member": {"address": "127.0.1.2", "protocol_port": 80}}),
        )
        .await;
    assert!(r.assert_error(404, "ELB.8904").starts_with("Pool "));
    let r = api
        .put(&member(POOL, &m(2)), json!({"member": {"weight": -1}}))
        .await;
    r.assert_error(400, "ELB.8902");
    let r = api
        .put(&member(POOL, MISSING), json!({"member": {"weight": 1}}))
        .await;
    assert_eq!(
        r.assert_error(404, "ELB.8904"),
        format!("Member {MISSING} could not be found.")
    );
    // UpdateMember in a pool that does not exist: the same code, naming the pool.
    let r = api
        .put(&member(MISSING, &m(2)), json!({"member": {"weight": 1}}))
        .await;
    assert_eq!(
        r.assert_error(404, "ELB.8904"),
        format!("Pool {MISSING} could not be found.")
    );
    // An update whose `member` is not an object, or a body that is not one at all.
    for body in [
        json!({"member": 5}),
        json!({"member": [{"weight": 1}]}),
        json!({"member": "weight=1"}),
        json!([{"member": {"weight": 1}}]),
        json!({"weight": 1}),
    ] {
        let r = api.put(&member(POOL, &m(2)), body.clone()).await;
        let msg = r.assert_error(400, "ELB.8902");
        assert!(msg.contains("member"), "{body}: {msg}");
    }
    // `admin_state_up` that is not a JSON boolean is refused, naming the field, on create and update.
    for up in [
        json!("false"),
        json!(0),
        json!(1),
        json!({"up": true}),
        json!([]),
    ] {
        let r = api
            .post(
                &members(POOL),
                json!({"member": {"address": "127.0.1.9", "protocol_port": 80, "admin_state_up": up}}),
            )
            .await;
        let msg = r.assert_error(400, "ELB.8902");
        assert!(msg.contains("admin_state_up"), "create with {up}: {msg}");
        let r = api
            .put(
                &member(POOL, &m(2)),
                json!({"member": {"admin_state_up": up, "weight": 7}}),
            )
            .await;
        let msg = r.assert_error(400, "ELB.8902");
        assert!(msg.contains("admin_state_up"), "update with {up}: {msg}");
    }
    let r = api.get(&member(POOL, &m(2))).await;
    assert_eq!(
        (
            r.body["member"]["admin_state_up"].as_bool(),
            r.body["member"]["weight"].as_u64()
        ),
        (Some(true), Some(5)),
        "a refused update changes nothing, not even its valid fields: {}",
        r.raw
    );
    let r = api
        .put(&member(POOL, &m(2)), json!({"member": {"name": 42}}))
        .await;
    assert!(r.assert_error(400, "ELB.8902").contains("member.name"));
    assert_eq!(sim.members(POOL).len(), 5, "nothing was created or lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_members_filters() {
    let (_sim, api) = start().await;
    async fn ids(api: &Api, q: String) -> Vec<String> {
        let r = api.get(&format!("{}?{q}", members(POOL))).await;
        assert_eq!(r.status, 200, "{q}: {}", r.raw);
        r.ids("members")
    }
    let list = |q: &str| ids(&api, q.to_owned());
    assert_eq!(list("").await.len(), 5, "no filter: the whole pool");
    assert_eq!(list("address=127.0.1.1").await, [m(1), m(4)]);
    assert_eq!(list("protocol_port=81").await, [m(4)]);
    assert_eq!(
        list("address=127.0.1.1&protocol_port=80").await,
        [m(1)],
        "different keys AND"
    );
    assert_eq!(
        list("address=127.0.1.1&address=127.0.1.2").await,
        [m(1), m(2), m(4)],
        "a repeated key ORs"
    );
    assert_eq!(
        list("address=127.0.1.1&address=127.0.1.2&protocol_port=80").await,
        [m(1), m(2)]
    );
    let by_instance = format!("instance_id={INSTANCE}");
    let r = api.get(&format!("{}?{by_instance}", members(POOL))).await;
    assert_eq!(r.ids("members"), [m(1)]);
    assert_eq!(r.body["members"][0]["instance_id"], INSTANCE);
    assert_eq!(r.body["members"][0]["member_type"], "instance");
    let r = api
        .get(&format!(
            "{}?instance_id={INSTANCE}&instance_id={INSTANCE2}",
            members(POOL)
        ))
        .await;
    assert_eq!(r.ids("members"), [m(1), m(5)]);
    assert_eq!(list("weight=5").await, [m(2)]);
    assert_eq!(list("name=second").await, [m(2)]);
    assert_eq!(list(&format!("id={}", m(3))).await, [m(3)]);
    assert_eq!(list("member_type=ip").await, [m(2), m(3), m(4)]);
    assert_eq!(list("operating_status=NO_MONITOR").await.len(), 5);
    assert_eq!(list("admin_state_up=true").await.len(), 5);
    assert_eq!(list("ip_version=v6").await, Vec::<String>::new());
    assert_eq!(list("address=127.0.9.9").await, Vec::<String>::new());
    // Every member of the answer is a full v3 member, and page_info is there without paging too.
    let r = api.get(&members(POOL)).await;
    r.body["members"]
        .as_array()
        .unwrap()
        .iter()
        .for_each(assert_v3_member);
    assert_eq!(r.body["page_info"]["current_count"], 5);
    // A filter this API does not have is refused, not ignored.
    let r = api.get(&format!("{}?pool_id={POOL}", members(POOL))).await;
    assert!(r.assert_error(400, "ELB.8902").contains("pool_id"));
    let r = api.get(&members(MISSING)).await;
    assert!(r.assert_error(404, "ELB.8904").starts_with("Pool "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_all_members_has_its_own_filters_and_no_pool_id() {
    let (_sim, api) = start().await;
    let r = api.get(&elb("/members")).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(
        r.ids("members"),
        [m(1), m(2), m(3), m(4), m(5), m(6)],
        "every pool of the project, none of another project"
    );
    for mem in r.body["members"].as_array().unwrap() {
        assert_v3_member(mem);
        assert!(
            mem.get("device_id").is_none(),
            "not promised, like the real service: {mem}"
        );
    }
    assert_eq!(r.body["page_info"]["current_count"], 6);
    let r = api.get(&elb("/members?address=127.0.1.1")).await;
    assert_eq!(r.ids("members"), [m(1), m(4), m(6)]);
    let r = api
        .get(&elb("/members?address=127.0.1.1&protocol_port=80"))
        .await;
    assert_eq!(r.ids("members"), [m(1), m(6)]);
    // pool_id and loadbalancer_id filter, though the answer does not carry them.
    let r = api
        .get(&elb(&format!("/members?pool_id={PROTECTED}")))
        .await;
    assert_eq!(r.ids("members"), [m(6)]);
    let r = api
        .get(&elb(&format!(
            "/members?pool_id={PROTECTED}&pool_id={POOL}&address=127.0.1.1"
        )))
        .await;
    assert_eq!(r.ids("members"), [m(1), m(4), m(6)]);
    let r = api
        .get(&elb(&format!("/members?loadbalancer_id={LB}")))
        .await;
    assert_eq!(r.ids("members"), [m(1), m(2), m(3), m(4), m(5)]);
    // ListAllMembers has no instance_id filter: refused with 400.
    let r = api
        .get(&elb(&format!("/members?instance_id={INSTANCE}")))
        .await;
    assert!(r.assert_error(400, "ELB.8902").contains("instance_id"));
    let r = api.get(&elb("/members?member_type=ip")).await;
    r.assert_error(400, "ELB.8902");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pools_by_member_and_show_pool() {
    let (_sim, api) = start().await;
    let r = api.get(&elb("/pools")).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.ids("pools"),
        [POOL, PROTECTED, MONITORED],
        "another project's pool is not listed"
    );
    assert_eq!(r.body["page_info"]["current_count"], 3);
    async fn ids(api: &Api, q: String) -> Vec<String> {
        let r = api.get(&elb(&format!("/pools?{q}"))).await;
        assert_eq!(r.status, 200, "{q}: {}", r.raw);
        r.ids("pools")
    }
    let pools = |q: String| ids(&api, q);
    assert_eq!(
        pools("member_address=127.0.1.1".into()).await,
        [POOL, PROTECTED]
    );
    assert_eq!(pools("member_address=127.0.1.2".into()).await, [POOL]);
    assert_eq!(
        pools("member_address=127.0.9.9".into()).await,
        Vec::<String>::new()
    );
    assert_eq!(
        pools(format!("member_instance_id={INSTANCE}")).await,
        [POOL]
    );
    assert_eq!(
        pools(format!(
            "member_instance_id={INSTANCE}&member_instance_id={INSTANCE2}"
        ))
        .await,
        [POOL]
    );
    assert_eq!(
        pools("member_instance_id=00000000-0000-0000-0000-000000000000".into()).await,
        Vec::<String>::new()
    );
    assert_eq!(pools(format!("loadbalancer_id={LB}")).await, [POOL]);
    assert_eq!(pools(format!("listener_id={LISTENER}")).await, [POOL]);
    assert_eq!(pools("protocol=UDP".into()).await, [PROTECTED]);
    assert_eq!(
        pools("member_address=127.0.1.1&protocol=TCP".into()).await,
        [POOL]
    );
    // The rest of the SDK's ListPools filters are accepted and mean what the pools show.
    assert_eq!(pools("connection_drain=true".into()).await, [POOL]);
    assert_eq!(
        pools("connection_drain=false".into()).await,
        [PROTECTED, MONITORED]
    );
    assert_eq!(
        pools("member_deletion_protection_enable=true".into()).await,
        [PROTECTED]
    );
    assert_eq!(pools("admin_state_up=true".into()).await.len(), 3);
    assert_eq!(
        pools("pool_health=minimum_healthy_member_count=0".into())
            .await
            .len(),
        3
    );
    assert_eq!(
        pools("protection_status=nonProtection".into()).await.len(),
        3
    );
    assert_eq!(pools("any_port_enable=false".into()).await.len(), 3);
    assert_eq!(pools("quic_cid_len=8".into()).await, Vec::<String>::new());
    assert_eq!(pools("type=ip".into()).await, Vec::<String>::new());
    let r = api.get(&elb("/pools?member_port=80")).await;
    r.assert_error(400, "ELB.8902");

    // ShowPool: connection_drain and member_deletion_protection_enable as the real API shows them.
    let r = api.get(&elb(&format!("/pools/{POOL}"))).await;
    assert_eq!(r.status, 200);
    let p = &r.body["pool"];
    assert_eq!(
        (
            p["id"].as_str(),
            p["name"].as_str(),
            p["project_id"].as_str(),
            p["protocol"].as_str()
        ),
        (Some(POOL), Some("web"), Some(PROJECT), Some("TCP"))
    );
    assert_eq!(
        p["connection_drain"],
        json!({"enable": true, "timeout": 60})
    );
    assert_eq!(p["member_deletion_protection_enable"], false);
    assert_eq!(p["loadbalancers"], json!([{"id": LB}]));
    assert_eq!(p["listeners"], json!([{"id": LISTENER}]));
    let ids: Vec<&str> = p["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 5);
    let r = api.get(&elb(&format!("/pools/{PROTECTED}"))).await;
    assert_eq!(r.body["pool"]["member_deletion_protection_enable"], true);
    assert_eq!(
        r.body["pool"]["connection_drain"],
        json!({"enable": false, "timeout": 300}),
        "both fields always present"
    );
    let r = api.get(&elb(&format!("/pools/{MONITORED}"))).await;
    assert!(
        !r.body["pool"]["healthmonitor_id"]
            .as_str()
            .unwrap()
            .is_empty()
    );
    let r = api.get(&elb(&format!("/pools/{MISSING}"))).await;
    assert_eq!(
        r.assert_error(404, "ELB.8904"),
        format!("Pool {MISSING} could not be found.")
    );
    let r = api.get(&elb(&format!("/pools/{FOREIGN}"))).await;
    r.assert_error(404, "ELB.8904");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_protection_refuses_delete_and_batch_delete() {
    let (sim, api) = start().await;
    let r = api.delete(&member(PROTECTED, &m(6))).await;
    let msg = r.assert_error(403, "ELB.8916");
    assert!(msg.contains(PROTECTED), "{msg}");
    let r = api
        .post(
            &format!("{}/batch-delete", members(PROTECTED)),
            json!({"members": [{"id": m(6)}]}),
        )
        .await;
    r.assert_error(403, "ELB.8916");
    assert!(sim.member_exists(PROTECTED, &m(6)), "still there");
    // The soft alternative stays possible: weight 0.
    let r = api
        .put(&member(PROTECTED, &m(6)), json!({"member": {"weight": 0}}))
        .await;
    assert_eq!(r.status, 200, "{}", r.raw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_delete_reports_each_item() {
    let (sim, api) = start().await;
    let batch = format!("{}/batch-delete", members(POOL));
    let r = api
        .post(
            &batch,
            json!({"members": [
                {"id": m(5)},
                {"id": MISSING},
                {"address": "127.0.1.3", "protocol_port": 80},
                {"address": "127.0.1.3", "protocol_port": 80},
                {"id": m(5)},
                {"address": "127.0.1.1", "protocol_port": 9999},
            ]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    let items = r.body["members"].as_array().unwrap();
    let statuses: Vec<&str> = items
        .iter()
        .map(|i| i["ret_status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        [
            "successful",
            "not found",
            "successful",
            "not found",
            "not found",
            "not found"
        ],
        "per item, naturally idempotent"
    );
    assert_eq!(items[0]["id"], m(5));
    assert_eq!(
        items[2]["id"],
        m(3),
        "a member named by address gets its id"
    );
    assert!(!sim.member_exists(POOL, &m(5)) && !sim.member_exists(POOL, &m(3)));
    assert_eq!(sim.members(POOL).len(), 3);
    // More than 200, or not a list: refused.
    let many: Vec<Value> = (0..201).map(|i| json!({"id": m(1000 + i)})).collect();
    let r = api.post(&batch, json!({"members": many})).await;
    assert!(r.assert_error(400, "ELB.8902").contains("200"));
    let r = api.post(&batch, json!({"member": {"id": m(1)}})).await;
    r.assert_error(400, "ELB.8902");
    assert_eq!(sim.members(POOL).len(), 3);
    // A pool that does not exist (or is another project's): 404 naming the pool, not per-item answers.
    for pool in [MISSING, FOREIGN] {
        let r = api
            .post(
                &format!("{}/batch-delete", members(pool)),
                json!({"members": [{"id": m(7)}]}),
            )
            .await;
        assert_eq!(
            r.assert_error(404, "ELB.8904"),
            format!("Pool {pool} could not be found.")
        );
    }
    assert!(sim.member_exists(FOREIGN, &m(7)));
}

/// A user whose policy denies an action gets 403 `ELB.9802` naming it, for every action the agent or
/// an operator uses, and nothing changes; the actions not denied still work for the same user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_actions_are_refused_by_name() {
    let denied = [
        "elb:members:update",
        "elb:members:get",
        "elb:members:list",
        "elb:pools:list",
        "elb:pools:get",
    ];
    let (sim, _) = start_with(scenario_builder().user_denied("bob", "acme", "pw2", &denied)).await;
    let bob = login(&sim, "bob", "acme", "pw2", PROJECT).await;
    let cases: Vec<(&str, Reply)> = vec![
        (
            "elb:members:update",
            bob.put(&member(POOL, &m(2)), json!({"member": {"weight": 0}}))
                .await,
        ),
        ("elb:members:get", bob.get(&member(POOL, &m(2))).await),
        ("elb:members:list", bob.get(&members(POOL)).await),
        ("elb:members:list", bob.get(&elb("/members")).await),
        ("elb:pools:list", bob.get(&elb("/pools")).await),
        (
            "elb:pools:list",
            bob.get(&elb("/pools?member_address=127.0.1.1")).await,
        ),
        (
            "elb:pools:get",
            bob.get(&elb(&format!("/pools/{POOL}"))).await,
        ),
    ];
    for (action, r) in &cases {
        let msg = r.assert_error(403, "ELB.9802");
        assert!(msg.contains(action), "{action}: {msg}");
    }
    let shown = sim
        .members(POOL)
        .into_iter()
        .find(|x| x["id"] == m(2).as_str())
        .expect("still there");
    assert_eq!(shown["weight"], 5, "the denied update changed nothing");
    // Not denied: create and delete.
    let r = bob
        .post(
            &members(POOL),
            json!({"member": {"address": "127.0.1.9", "protocol_port": 80}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.raw);
    let id = r.body["member"]["id"].as_str().unwrap().to_owned();
    assert_eq!(bob.delete(&member(POOL, &id)).await.status, 204);
}

/// The members-per-pool quota: CreateMember past it is 409 `ELB.8905` (the reference's "quota
/// exceeded", which a client must not retry), nothing is created, and a deletion makes room again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_member_past_the_pool_quota_is_409_elb_8905() {
    const SMALL: &str = "76ce7086-a496-4666-9064-5ba0e6840c75";
    let (sim, api) = start_with(
        scenario_builder()
            .pool(SMALL, |p| p.members_per_pool(2))
            .member(SMALL, &m(8), "127.0.1.1", 80),
    )
    .await;
    let path = members(SMALL);
    let create = |port: u16| {
        api.post(
            &path,
            json!({"member": {"address": "127.0.1.1", "protocol_port": port}}),
        )
    };
    let r = create(81).await;
    assert_eq!(r.status, 201, "the second member fits: {}", r.raw);
    let second = r.body["member"]["id"].as_str().unwrap().to_owned();
    let r = create(82).await;
    let msg = r.assert_error(409, "ELB.8905");
    assert!(
        msg.contains("Quota exceeded") && msg.contains(SMALL),
        "{msg}"
    );
    assert_eq!(
        sim.members(SMALL).len(),
        2,
        "nothing created past the quota"
    );
    // The quota is per pool: the big pool still takes members.
    let r = api
        .post(
            &members(POOL),
            json!({"member": {"address": "127.0.1.1", "protocol_port": 82}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.raw);
    assert_eq!(api.delete(&member(SMALL, &second)).await.status, 204);
    let r = create(82).await;
    assert_eq!(r.status, 201, "room again after a deletion: {}", r.raw);
}

/// Follows `next_marker` from the first page; returns the pages' ids and their `page_info`s.
async fn all_pages(api: &Api, path: &str, key: &str, limit: usize) -> Vec<(Vec<String>, Value)> {
    let sep = if path.contains('?') { '&' } else { '?' };
    let mut pages = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let q = marker
            .as_ref()
            .map(|m| format!("&marker={m}"))
            .unwrap_or_default();
        let r = api.get(&format!("{path}{sep}limit={limit}{q}")).await;
        assert_eq!(r.status, 200, "{}", r.raw);
        let ids = r.ids(key);
        let info = r.body["page_info"].clone();
        assert_eq!(
            info["current_count"].as_u64(),
            Some(ids.len() as u64),
            "current_count counts this page: {info}"
        );
        if let Some(first) = ids.first() {
            assert_eq!(info["previous_marker"].as_str(), Some(first.as_str()));
        }
        marker = info["next_marker"].as_str().map(str::to_owned);
        if let Some(next) = &marker {
            assert_eq!(Some(next), ids.last(), "next_marker is the page's last id");
        }
        pages.push((ids, info));
        assert!(pages.len() < 100, "paging never ends");
        if marker.is_none() {
            return pages;
        }
    }
}

fn with_members(n: u32) -> Scenario {
    let mut s = scenario();
    for i in 100..100 + n {
        s = s.member(POOL, &m(i), &format!("127.0.2.{}", i - 99), 80);
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_follows_markers_across_pages() {
    // 5 + 12 = 17 members in POOL.
    let (_sim, api) = start_with(with_members(12)).await;
    let everything = api.get(&members(POOL)).await.ids("members");
    assert_eq!(everything.len(), 17);

    let pages = all_pages(&api, &members(POOL), "members", 5).await;
    let sizes: Vec<usize> = pages.iter().map(|(ids, _)| ids.len()).collect();
    assert_eq!(sizes, [5, 5, 5, 2]);
    assert!(
        pages[3].1.get("next_marker").is_none(),
        "the last page has no next_marker: {}",
        pages[3].1
    );
    let joined: Vec<String> = pages.into_iter().flat_map(|(ids, _)| ids).collect();
    assert_eq!(joined, everything, "every member once, in order");

    // An exact multiple: the last page is full and still says it is the last.
    let pages = all_pages(&api, &members(POOL), "members", 17).await;
    assert_eq!(pages.len(), 1);
    let pages = all_pages(
        &api,
        &format!("{}?protocol_port=80", members(POOL)),
        "members",
        4,
    )
    .await;
    let sizes: Vec<usize> = pages.iter().map(|(ids, _)| ids.len()).collect();
    assert_eq!(sizes, [4, 4, 4, 4], "16 members on port 80");
    assert!(pages[3].1.get("next_marker").is_none());

    // page_reverse, as documented: without a marker the last page; with a page's previous_marker
    // the page before it; pages stay in ascending order.
    let mut backwards: Vec<Vec<String>> = Vec::new();
    let mut marker = String::new();
    loop {
        let r = api
            .get(&format!(
                "{}?page_reverse=true&limit=6{marker}",
                members(POOL)
            ))
            .await;
        assert_eq!(r.status, 200, "{}", r.raw);
        let ids = r.ids("members");
        let info = &r.body["page_info"];
        assert_eq!(info["current_count"].as_u64(), Some(ids.len() as u64));
        if backwards.is_empty() {
            assert!(info.get("next_marker").is_none(), "the last page: {info}");
        } else {
            assert_eq!(info["next_marker"].as_str(), ids.last().map(String::as_str));
        }
        if ids.is_empty() {
            break;
        }
        assert_eq!(info["previous_marker"].as_str(), Some(ids[0].as_str()));
        marker = format!("&marker={}", ids[0]);
        backwards.push(ids);
        assert!(backwards.len() < 10, "reverse paging never ends");
    }
    let sizes: Vec<usize> = backwards.iter().map(Vec::len).collect();
    assert_eq!(sizes, [6, 6, 5]);
    backwards.reverse();
    assert_eq!(
        backwards.concat(),
        everything,
        "the same members, page by page"
    );
    // From the middle: the page before member 8 (index 7) is members 2..7.
    let r = api
        .get(&format!(
            "{}?page_reverse=true&limit=5&marker={}",
            members(POOL),
            everything[7]
        ))
        .await;
    assert_eq!(r.ids("members"), everything[2..7]);

    // marker is ignored without limit, as the reference says.
    let r = api.get(&format!("{}?marker={}", members(POOL), m(3))).await;
    assert_eq!(r.ids("members"), everything);

    // ListAllMembers and ListPools page the same way.
    let all: Vec<String> = all_pages(&api, &elb("/members"), "members", 7)
        .await
        .into_iter()
        .flat_map(|(ids, _)| ids)
        .collect();
    assert_eq!(all.len(), 18);
    let pools = all_pages(&api, &elb("/pools"), "pools", 2).await;
    let sizes: Vec<usize> = pools.iter().map(|(ids, _)| ids.len()).collect();
    assert_eq!(sizes, [2, 1]);

    // Bad paging input is a 400, not a silent default.
    for q in [
        "limit=-1",
        "limit=2001",
        "limit=ten",
        "limit=2&marker=nope",
        "limit=2&page_reverse=yes",
    ] {
        let r = api.get(&format!("{}?{q}", members(POOL))).await;
        r.assert_error(400, "ELB.8902");
    }
    let r = api.get(&format!("{}?limit=2000", members(POOL))).await;
    assert_eq!(r.ids("members").len(), 17, "2000 is allowed");
    // limit is documented as 0-2000: 0 is the default page size (2000), and markers still work.
    let r = api
        .get(&format!(
            "{}?limit=0&marker={}",
            members(POOL),
            everything[14]
        ))
        .await;
    assert_eq!(r.ids("members"), everything[15..]);
    assert!(r.body["page_info"].get("next_marker").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_size_cap_forces_small_pages() {
    let (_sim, api) = start_with(with_members(4).settings(|s| s.page_size_cap = Some(2))).await;
    // A client asking for 500 per page gets 2 and must follow next_marker: 9 members, 5 pages.
    let pages = all_pages(&api, &members(POOL), "members", 500).await;
    let sizes: Vec<usize> = pages.iter().map(|(ids, _)| ids.len()).collect();
    assert_eq!(sizes, [2, 2, 2, 2, 1]);
    assert!(pages[0].1["next_marker"].is_string());
    let mut joined: Vec<String> = pages.into_iter().flat_map(|(ids, _)| ids).collect();
    joined.dedup();
    assert_eq!(joined.len(), 9);
    let pools = all_pages(&api, &elb("/pools?member_address=127.0.1.1"), "pools", 10).await;
    let sizes: Vec<usize> = pools.iter().map(|(ids, _)| ids.len()).collect();
    assert_eq!(
        sizes,
        [2],
        "exactly two pools: one full page, no next_marker"
    );
    let all = all_pages(&api, &elb("/members"), "members", 1000).await;
    assert_eq!(all.len(), 5, "10 members in pages of 2");
    let filtered = all_pages(
        &api,
        &format!(
            "{}?address=127.0.1.1&address=127.0.2.1&address=127.0.2.2",
            members(POOL)
        ),
        "members",
        100,
    )
    .await;
    let sizes: Vec<usize> = filtered.iter().map(|(ids, _)| ids.len()).collect();
    assert_eq!(sizes, [2, 2], "the cap applies after the filters");
}

/// The cap can be set, changed and lifted on a running simulator (admin `PATCH /settings`), so a test
/// of any client can page it below the `limit` it asks; an out-of-range cap is refused, changing
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_size_cap_is_set_and_lifted_through_the_admin_api() {
    let (sim, api) = start_with(with_members(4)).await;
    let admin = reqwest::Client::new();
    let patch = |body: Value| {
        let req = admin
            .patch(format!("{}/settings", sim.admin_url()))
            .json(&body);
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let sizes = |pages: Vec<(Vec<String>, Value)>| -> Vec<usize> {
        pages.iter().map(|(ids, _)| ids.len()).collect()
    };
    assert_eq!(
        sizes(all_pages(&api, &members(POOL), "members", 2000).await),
        [9]
    );

    assert_eq!(patch(json!({"page_size_cap": 4})).await.0, 200);
    assert_eq!(
        sizes(all_pages(&api, &members(POOL), "members", 2000).await),
        [4, 4, 1]
    );
    for bad in [json!({"page_size_cap": 0}), json!({"page_size_cap": 2001})] {
        let (status, text) = patch(bad).await;
        assert_eq!(status, 400);
        assert!(text.contains("page_size_cap"), "{text}");
    }
    let (status, text) = patch(json!({"page_size_cap": "two"})).await;
    assert_eq!(status, 400, "{text}");
    // A patch of another setting leaves the cap as it is.
    assert_eq!(patch(json!({"propagation_delay": "0s"})).await.0, 200);
    assert_eq!(
        sizes(all_pages(&api, &members(POOL), "members", 3).await),
        [3, 3, 3],
        "a limit below the cap is the page size"
    );
    assert_eq!(
        sizes(all_pages(&api, &members(POOL), "members", 2000).await),
        [4, 4, 1]
    );
    assert_eq!(patch(json!({"page_size_cap": null})).await.0, 200);
    assert_eq!(
        sizes(all_pages(&api, &members(POOL), "members", 2000).await),
        [9]
    );

    let e = Sim::start(with_members(1).settings(|s| s.page_size_cap = Some(0)))
        .await
        .err()
        .expect("a scenario with a cap of 0 is refused");
    assert!(e.to_string().contains("settings.page_size_cap"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_carries_a_request_id_and_errors_their_shape() {
    let (sim, api) = start().await;
    // Success: the request id is in the body and in X-Request-Id, and differs per request.
    let a = api.get(&members(POOL)).await;
    let b = api.get(&members(POOL)).await;
    for r in [&a, &b] {
        assert_eq!(r.header("x-request-id"), r.body["request_id"].as_str());
    }
    assert_ne!(a.header("x-request-id"), b.header("x-request-id"));

    let cases: Vec<(Reply, u16, &str)> = vec![
        (api.get(&member(POOL, MISSING)).await, 404, "ELB.8904"),
        (
            api.get(&format!("{}?limit=2001", members(POOL))).await,
            400,
            "ELB.8902",
        ),
        (
            api.post(
                &members(POOL),
                json!({"member": {"address": "127.0.1.2", "protocol_port": 80}}),
            )
            .await,
            409,
            "ELB.8911",
        ),
        (api.delete(&member(PROTECTED, &m(6))).await, 403, "ELB.8916"),
        // No such operation: the gateway's 404, also for a known path with the wrong method.
        (
            api.get(&elb("/loadbalancers-nope")).await,
            404,
            "APIGW.0101",
        ),
        (
            api.send(reqwest::Method::PATCH, &member(POOL, &m(1)), None)
                .await,
            404,
            "APIGW.0101",
        ),
        (api.get("/v2.0/lbaas/members").await, 404, "APIGW.0101"),
        (
            Api::anonymous(&sim).get(&members(POOL)).await,
            401,
            "APIGW.0301",
        ),
    ];
    for (r, status, code) in &cases {
        r.assert_error(*status, code);
    }
    // A body that is not JSON is an invalid input.
    let r = simkit::Reply::from(
        simkit::client(&sim)
            .post(format!("{}{}", api.base, members(POOL)))
            .header("X-Auth-Token", api.token.clone().unwrap())
            .header("Content-Type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap(),
    )
    .await;
    r.assert_error(400, "ELB.8902");
}
