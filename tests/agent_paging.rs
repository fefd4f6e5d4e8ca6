//! Discovery against a server that pages below what it documents. The agent asks for 2000 items a page
//! (the documented maximum); elb-sim is told through its admin API (`PATCH /settings`
//! `{"page_size_cap": 2}`) to serve at most 2, still naming each next page. This server's memberships
//! sit on the last pages: of ListPools (by `member_address`, and by `member_instance_id`), of ListMembers
//! in a pool where it has three members, of the unfiltered ListMembers that `min_healthy` counts, and of
//! the listings re-discovery makes after someone registers it somewhere else. A client that takes a page
//! shorter than its `limit` for the last one finds two memberships of five, drains and exits 0, and
//! leaves the pools routing to a stopped server: every membership must be DELETEd here, and nothing else.

mod common;

use std::time::Duration;

use common::*;
use elb_sim::scenario::{Instance, MemberConfig, Seed};
use elb_sim::{Scenario, Sim};

const INSTANCE: &str = "6a7bd0c6-9e22-4d9f-a9c2-0d11ee3c0e55";
const US: &str = "127.0.0.2";
/// Listed in this order. Ours are the last three: with 2 a page, the third is alone on the last page.
const POOLS: [&str; 6] = [
    "11111111-1111-4111-8111-111111111111",
    "22222222-2222-4222-8222-222222222222",
    "33333333-3333-4333-8333-333333333333",
    "44444444-4444-4444-8444-444444444444",
    "55555555-5555-4555-8555-555555555555",
    "66666666-6666-4666-8666-666666666666",
];
const OURS: [usize; 3] = [1, 3, 5];
/// Our ports in the last pool: three memberships of this server there, the third on the second page.
const PORTS: [u16; 3] = [9000, 9001, 9002];

fn member_id(pool: usize, n: usize) -> String {
    format!("{pool:08x}-0000-4000-8000-{n:012x}")
}

fn member(pool: usize, n: usize, address: &str, port: u16, instance: Option<&str>) -> MemberConfig {
    MemberConfig {
        id: Some(member_id(pool, n)),
        pool_id: POOLS[pool].into(),
        address: address.into(),
        protocol_port: port,
        weight: 1,
        instance_id: instance.map(str::to_owned),
        name: String::new(),
        subnet_cidr_id: None,
    }
}

/// Our memberships as (pool, member, port): one in pools 1 and 3, three (ports 9000-9002) in pool 5.
fn ours() -> Vec<(usize, String, u16)> {
    let mut out = Vec::new();
    for &p in &OURS {
        let ports = if p == 5 { &PORTS[..] } else { &PORTS[..1] };
        out.extend(
            ports
                .iter()
                .enumerate()
                .map(|(i, &port)| (p, member_id(p, 10 + i), port)),
        );
    }
    out
}

/// Six pools, three other servers in each, ours as [`ours`]; then the page cap, set the way a test of
/// someone else's client would set it, through the admin API.
async fn capped_cloud() -> Sim {
    let mut s = Scenario::builder()
        .project(PROJECT)
        .user("alice", "acme", "correct horse")
        .instance(Instance {
            uuid: INSTANCE.into(),
            project_id: PROJECT.into(),
            local_ipv4: US.into(),
            region_id: Some("cn-north-4".into()),
            hostname: "web-1".into(),
            name: "web-1".into(),
            agency: true,
            scaling_group_id: None,
        });
    for pool in POOLS {
        s = s.pool(pool, |p| p);
    }
    let mut scenario = s.build();
    for (p, _) in POOLS.iter().enumerate() {
        // Others first, so that ours come last in every unfiltered listing too.
        for other in 3..6 {
            let address = format!("127.0.0.{other}");
            let instance = format!("{other:08x}-9e22-4d9f-a9c2-0d11ee3c0e55");
            scenario
                .member
                .push(member(p, other, &address, 8000, Some(&instance)));
        }
    }
    for (p, id, port) in ours() {
        let mut m = member(p, 0, US, port, Some(INSTANCE));
        m.id = Some(id);
        scenario.member.push(m);
    }
    let sim = Sim::start(scenario).await.expect("elb-sim");
    let r = http()
        .patch(format!("{}/settings", sim.admin_url()))
        .json(&serde_json::json!({"page_size_cap": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    sim
}

/// Password auth; `cloud`, `members` and `drain` lines as each test needs. `page_size` is left at its
/// default: the agent asks for 2000 a page and gets 2.
fn config(
    dir: &std::path::Path,
    sim: &Sim,
    cloud: &str,
    members: &str,
    drain: &str,
) -> std::path::PathBuf {
    let password = write_file(dir, "password", "correct horse");
    std::fs::set_permissions(
        &password,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let api = sim.api_url();
    write_file(
        dir,
        "elb-drain.toml",
        &format!(
            "[cloud]\nproject_id = \"{PROJECT}\"\nelb_endpoint = \"{api}\"\niam_endpoint = \"{api}\"\n\
             metadata_endpoint = \"{}\"\n{cloud}\n\
             [auth]\nmethod = \"password\"\nuser = \"alice\"\ndomain = \"acme\"\npassword_file = \"{}\"\n\
             {members}\n\
             [drain]\nexclude_peers = []\nsettle = \"100ms\"\npoll_interval = \"20ms\"\n{drain}\n",
            sim.metadata_url(),
            password.display(),
        ),
    )
}

/// `check --json`: the memberships it found, as (pool, member).
fn checked(config: &std::path::Path) -> Vec<(String, String)> {
    let mut check = ProcGuard::spawn(agent(config, &["check", "--json"]));
    let exit = check
        .wait_timeout(Duration::from_secs(20))
        .expect("check exits");
    assert_eq!(exit.code(), Some(0), "{}", check.stderr());
    let report: serde_json::Value = serde_json::from_str(&check.stdout()).expect("JSON");
    let mut found: Vec<(String, String)> = report["memberships"]
        .as_array()
        .expect("memberships")
        .iter()
        .map(|m| {
            (
                m["pool_id"].as_str().unwrap().to_owned(),
                m["member_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    found.sort();
    found
}

fn expected(ours: &[(usize, String, u16)]) -> Vec<(String, String)> {
    let mut e: Vec<(String, String)> = ours
        .iter()
        .map(|(p, id, _)| (POOLS[*p].to_owned(), id.clone()))
        .collect();
    e.sort();
    e
}

/// The (pool, member) of every DELETE the agent sent, all of them 204.
fn deleted(sim: &Sim) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = deletes(sim)
        .iter()
        .map(|r| {
            assert_eq!(r.status, 204, "{r:?}");
            let parts: Vec<&str> = r.path.split('/').collect();
            let n = parts.len();
            (parts[n - 3].to_owned(), parts[n - 1].to_owned())
        })
        .collect();
    out.sort();
    out
}

/// How many listing requests of `path_end` asked for a page after the first (a `marker`).
fn later_pages(sim: &Sim, path_end: &str) -> usize {
    sim.request_log()
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with(path_end) && r.query.contains("marker="))
        .count()
}

/// One-shot `drain`, no connections: exits 0 once every DELETE is done.
fn drain(config: &std::path::Path) {
    let mut drain = ProcGuard::spawn(agent(config, &["drain"]));
    let exit = drain
        .wait_timeout(Duration::from_secs(20))
        .expect("drain exits");
    assert_eq!(exit.code(), Some(0), "{}", drain.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_by_address_follows_every_page_of_a_capped_server() {
    let sim = capped_cloud().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &sim, &format!("address = \"{US}\""), "", "");

    assert_eq!(checked(&config), expected(&ours()), "check finds all five");
    assert!(
        sim.request_log()
            .iter()
            .any(|r| r.path.ends_with("/elb/pools") && r.query.contains("member_address=127.0.0.2")),
        "discovered by address"
    );
    assert!(later_pages(&sim, "/elb/pools") >= 1, "ListPools page 2");
    assert!(
        later_pages(&sim, &format!("/pools/{}/members", POOLS[5])) >= 1,
        "ListMembers page 2 in the pool holding three of ours"
    );
    drain(&config);
    assert_eq!(
        deleted(&sim),
        expected(&ours()),
        "every membership, nothing else"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_by_instance_follows_every_page_and_so_does_rediscovery() {
    let sim = capped_cloud().await;
    let dir = tempfile::tempdir().unwrap();
    // No address anywhere: the instance ID is all discovery has (ListPools by member_instance_id,
    // ListMembers by instance_id).
    let config = config(
        dir.path(),
        &sim,
        &format!("instance_id = \"{INSTANCE}\"\ndiscovery_interval = \"300ms\""),
        "",
        "",
    );
    assert_eq!(checked(&config), expected(&ours()), "check finds all five");
    assert!(
        sim.request_log()
            .iter()
            .any(|r| r.path.ends_with("/elb/pools") && r.query.contains("member_instance_id=")),
        "discovered by instance"
    );
    assert!(later_pages(&sim, "/elb/pools") >= 1, "ListPools page 2");
    assert!(later_pages(&sim, &format!("/pools/{}/members", POOLS[5])) >= 1);

    let mut agent = ProcGuard::spawn(agent(&config, &["run"]));
    assert!(
        agent.wait_stderr("ready", Duration::from_secs(10)),
        "{}",
        agent.stderr()
    );
    // Someone registers this server twice more after the start: in a pool it was not in (the last on
    // ListPools' last page), and a fourth time in the last pool (ListMembers' last page).
    let mut later = vec![
        member(4, 10, US, PORTS[0], Some(INSTANCE)),
        member(5, 13, US, 9003, Some(INSTANCE)),
    ];
    later[1].id = Some(member_id(5, 13));
    sim.seed(Seed {
        member: later,
        ..Seed::default()
    })
    .await
    .expect("seeded");
    assert!(
        agent.wait_stderr("memberships changed", Duration::from_secs(10)),
        "{}",
        agent.stderr()
    );
    agent.signal(libc::SIGTERM);
    let exit = agent.wait_timeout(Duration::from_secs(20)).expect("exits");
    assert_eq!(exit.code(), Some(0), "{}", agent.stderr());
    let mut all = ours();
    all.push((4, member_id(4, 10), PORTS[0]));
    all.push((5, member_id(5, 13), 9003));
    assert_eq!(
        deleted(&sim),
        expected(&all),
        "every membership, nothing else"
    );
}

/// `[[member]]` with a pool but no member ID: discovered in that pool only, across its pages. And
/// `min_healthy` counts the pool's healthy members across every page of the unfiltered listing, this
/// server's own other memberships (going down with it) not among them: 5 others are healthy, so a
/// `min_healthy = 6` holds the stop, saying 5. With the first page only it would say 2; counting our
/// own other ports, 7, and not hold at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_given_without_member_ids_and_min_healthy_read_every_page() {
    let sim = capped_cloud().await;
    let dir = tempfile::tempdir().unwrap();
    let last = POOLS[5];
    // Two more others in the last pool, listed after ours. No health monitor: NO_MONITOR is healthy.
    let more: Vec<MemberConfig> = (6..8)
        .map(|n| member(5, n, &format!("127.0.0.{n}"), 8000, None))
        .collect();
    sim.seed(Seed {
        member: more,
        ..Seed::default()
    })
    .await
    .expect("seeded");
    let config = config(
        dir.path(),
        &sim,
        "",
        &format!("[[member]]\npool_id = \"{last}\"\naddress = \"{US}\"\nmin_healthy = 6"),
        "min_healthy_wait = \"1s\"",
    );

    let in_last: Vec<(usize, String, u16)> =
        ours().into_iter().filter(|(p, _, _)| *p == 5).collect();
    assert_eq!(
        checked(&config),
        expected(&in_last),
        "all three in the pool"
    );
    let mut drain = ProcGuard::spawn(agent(&config, &["drain"]));
    let exit = drain
        .wait_timeout(Duration::from_secs(20))
        .expect("drain exits");
    assert_eq!(exit.code(), Some(0), "{}", drain.stderr());
    let err = drain.stderr();
    assert!(
        err.contains("only 5 other members are healthy (need 6)"),
        "min_healthy counted every page and not our own ports: {err}"
    );
    assert!(
        !err.contains("only 2 other") && !err.contains("only 7 other"),
        "{err}"
    );
    assert_eq!(deleted(&sim), expected(&in_last));
}
