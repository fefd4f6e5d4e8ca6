//! Crash safety: the agent SIGKILLed in the middle of a stop (or of a registration) and started again
//! must finish the job exactly once. What makes that work is the state file (written atomically after
//! the DELETEs, under the test's own STATE_DIRECTORY) and the API's own answers (404 for a member
//! already gone, ListMembers by address and port before creating one). Each test says which of the two
//! the restart relied on, from the simulator's request log.

mod common;
mod simkit;

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use common::*;
use elb_sim::{Fault, FaultAction, LoggedRequest};

const DELETE_PATH: &str = "/v3/*/elb/pools/*/members/*";
const CREATE_PATH: &str = "/v3/*/elb/pools/*/members";
const QUICK: &str = "settle = \"100ms\"\npoll_interval = \"20ms\"\ntimeout = \"20s\"";
const LIMIT: Duration = Duration::from_secs(15);

/// SIGKILL, and the proof that it was the SIGKILL that ended the process (not an exit of its own).
fn kill9(agent: &mut ProcGuard) {
    agent.signal(libc::SIGKILL);
    let status = agent.wait_timeout(LIMIT).expect("dies");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{}", agent.stderr());
}

fn exits(agent: &mut ProcGuard) -> Option<i32> {
    agent.wait_timeout(LIMIT).expect("exits").code()
}

fn state(s: &Setup) -> serde_json::Value {
    std::fs::read_to_string(s.dir.path().join("state.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// How the state file says our membership was removed ("delete", "weight0"), if it says.
fn removed(s: &Setup) -> Option<String> {
    state(s)["memberships"]
        .as_array()?
        .iter()
        .find(|m| m["member_id"] == MEMBER)?["removed"]
        .as_str()
        .map(str::to_owned)
}

fn requests(sim: &elb_sim::Sim, method: &str, from: usize) -> Vec<LoggedRequest> {
    sim.request_log()
        .into_iter()
        .skip(from)
        .filter(|r| r.method == method && r.service == "elb")
        .collect()
}

/// An injected fault has been taken by a request: that request is now in the simulator, delayed.
fn fault_taken(s: &Setup) -> bool {
    s.sim
        .shared()
        .lock_for_tests(|inner| inner.faults.is_empty())
}

fn delay(ms: u64) -> Vec<FaultAction> {
    vec![FaultAction::Delay { ms }]
}

/// Starts `drain` again after a crash and checks it waits for `held` and exits 0 once it closes.
fn restart_drain_and_finish(s: &Setup, config: &std::path::Path, held: Vec<std::net::TcpStream>) {
    let mut second = ProcGuard::spawn(agent(config, &["drain"]));
    assert!(
        second.wait_stderr("drain: draining", LIMIT),
        "{}",
        second.stderr()
    );
    assert!(
        second.wait_stderr("draining: 1 connections open", LIMIT),
        "{}",
        second.stderr()
    );
    assert!(
        second.is_running(),
        "the restarted drain waits for the held connection:\n{}",
        second.stderr()
    );
    drop(held);
    assert_eq!(exits(&mut second), Some(0), "{}", second.stderr());
    assert!(!s.sim.member_exists(POOL, MEMBER));
}

/// With discovery and no ports configured, the ports to count come from the memberships; after a
/// crash the restarted drain discovers none (they are out of the pool), and must take the ports from
/// what the state file says was removed, or it would count nothing and exit 0 with connections open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_discovered_memberships_still_counts_their_port() {
    let s = setup_with(|mut sc| {
        // Alone at 127.0.0.1 in the pool, so that discovery by address finds only us.
        sc.member.retain(|m| m.id.as_deref() != Some(OTHER));
        sc
    })
    .await;
    let config = s.config(QUICK);
    let port = s.app.addr.port();
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("member_id = \"{MEMBER}\"\nprotocol_port = {port}\n"),
        "address = \"127.0.0.1\"\n",
    );
    assert!(!text.contains("protocol_port"), "{text}");
    std::fs::write(&config, text).unwrap();
    let held = s.connections_to_us(1);
    let mut first = ProcGuard::spawn(agent(&config, &["drain"]));
    assert!(
        wait_until(LIMIT, || removed(&s).as_deref() == Some("delete")),
        "{}",
        first.stderr()
    );
    kill9(&mut first);
    restart_drain_and_finish(&s, &config, held);
    assert_eq!(requests(&s.sim, "DELETE", 0).len(), 1);
}

/// `drain` (or `run` after SIGTERM) killed after its DELETE, with a connection held: the restarted
/// `drain` knows from the state file that the member is gone, sends no DELETE, and still waits for the
/// connection.
async fn killed_after_the_delete(start: &[&str], sigterm: bool) {
    let s = setup().await;
    let config = s.config(QUICK);
    let held = s.connections_to_us(1);
    let mut first = ProcGuard::spawn(agent(&config, start));
    if sigterm {
        assert!(
            first.wait_stderr("ready: waiting", LIMIT),
            "{}",
            first.stderr()
        );
        first.signal(libc::SIGTERM);
    }
    assert!(
        wait_until(LIMIT, || removed(&s).as_deref() == Some("delete")),
        "the DELETE is recorded:\n{}",
        first.stderr()
    );
    assert!(
        first.wait_stderr("draining: 1 connections open", LIMIT),
        "{}",
        first.stderr()
    );
    kill9(&mut first);
    assert!(!s.sim.member_exists(POOL, MEMBER));
    let before = s.sim.request_log().len();

    restart_drain_and_finish(&s, &config, held);
    assert!(
        s.sim.member_exists(POOL, OTHER),
        "the other server's member is untouched"
    );
    assert!(
        requests(&s.sim, "DELETE", before).is_empty(),
        "the state file said it was gone: no second DELETE"
    );
    // The restart looked at the member (ShowMember, recording it for `register`): 404, gone.
    let shows: Vec<u16> = requests(&s.sim, "GET", before)
        .iter()
        .filter(|r| r.path.ends_with(&format!("/members/{MEMBER}")))
        .map(|r| r.status)
        .collect();
    assert_eq!(shows, [404]);
    assert_eq!(requests(&s.sim, "DELETE", 0).len(), 1, "one DELETE in all");
    assert_eq!(
        removed(&s).as_deref(),
        Some("delete"),
        "still remembered for register"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_killed_mid_drain_restarts_from_the_state_file_and_exits_0() {
    killed_after_the_delete(&["drain"], false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_killed_mid_drain_after_sigterm_restarts_from_the_state_file_and_exits_0() {
    killed_after_the_delete(&["run"], true).await;
}

/// Killed while its DELETE is in flight (held in the simulator by a delay): nothing was recorded, so
/// the restart asks the API again. Whether the first DELETE reached the pool depends on the server
/// (the simulator, like many HTTP servers, may drop a request whose client went away); either way the
/// restart ends with the member gone once, and exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_killed_during_the_delete_deletes_on_restart_or_finds_it_gone() {
    let s = setup().await;
    let config = s.config(QUICK);
    s.sim
        .inject_fault(Fault::new("DELETE", DELETE_PATH, delay(1500)));
    let held = s.connections_to_us(1);
    let mut first = ProcGuard::spawn(agent(&config, &["drain"]));
    assert!(
        wait_until(LIMIT, || fault_taken(&s)),
        "DELETE never arrived:\n{}",
        first.stderr()
    );
    kill9(&mut first);
    assert_eq!(removed(&s), None, "killed before anything was recorded");

    restart_drain_and_finish(&s, &config, held);
    let statuses: Vec<u16> = requests(&s.sim, "DELETE", 0)
        .iter()
        .map(|r| r.status)
        .collect();
    // The restart's DELETE is 204, or 404 if the killed one got through first; a killed one that got
    // through after the restart's shows as a 404 of its own. Never two deletions.
    assert!(
        matches!(
            statuses.as_slice(),
            [204] | [204, 204] | [404, 204] | [204, 404]
        ),
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 204).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        s.sim.members(POOL).len(),
        1,
        "only the other server is left"
    );
    assert_eq!(removed(&s).as_deref(), Some("delete"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight0_killed_mid_drain_keeps_weight_0_and_register_restores_the_original_weight() {
    let s = setup_with(|mut sc| {
        if let Some(m) = sc
            .member
            .iter_mut()
            .find(|m| m.id.as_deref() == Some(MEMBER))
        {
            m.weight = 7;
        }
        sc
    })
    .await;
    let config = s.config(&format!("{QUICK}\nmode = \"weight0\""));
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "protocol_port =",
        "address = \"127.0.0.1\"\nprotocol_port =",
    );
    std::fs::write(&config, text).unwrap();
    let held = s.connections_to_us(1);
    let mut first = ProcGuard::spawn(agent(&config, &["drain"]));
    assert!(
        wait_until(LIMIT, || removed(&s).as_deref() == Some("weight0")),
        "{}",
        first.stderr()
    );
    assert_eq!(s.ours()[0]["weight"], 0);
    kill9(&mut first);
    let before = s.sim.request_log().len();

    restart_drain_and_finish_weight0(&s, &config, held);
    assert!(
        requests(&s.sim, "PUT", before).is_empty(),
        "the state file said it was at weight 0 already: no second update"
    );
    assert_eq!(requests(&s.sim, "PUT", 0).len(), 1);
    assert_eq!(s.ours()[0]["weight"], 0, "weight stays 0 after the restart");
    assert_eq!(
        state(&s)["memberships"][0]["weight"],
        7,
        "the weight before the stop is still known: {}",
        state(&s)
    );

    let mut reg = ProcGuard::spawn(agent(&config, &["register"]));
    assert_eq!(exits(&mut reg), Some(0), "{}", reg.stderr());
    assert!(reg.stdout().contains("weight restored"), "{}", reg.stdout());
    let members = s.ours();
    assert_eq!(members.len(), 1, "{members:?}");
    assert_eq!(members[0]["weight"], 7, "exactly the weight it had");
    assert_eq!(members[0]["id"], MEMBER, "same membership, updated");
    assert!(requests(&s.sim, "POST", 0).is_empty(), "nothing created");
}

/// Like [`restart_drain_and_finish`], for `weight0`, where the member stays in the pool.
fn restart_drain_and_finish_weight0(
    s: &Setup,
    config: &std::path::Path,
    held: Vec<std::net::TcpStream>,
) {
    let mut second = ProcGuard::spawn(agent(config, &["drain"]));
    assert!(
        second.wait_stderr("draining: 1 connections open", LIMIT),
        "{}",
        second.stderr()
    );
    assert!(
        second.wait_stderr("drain: draining", LIMIT),
        "{}",
        second.stderr()
    );
    assert!(second.is_running(), "{}", second.stderr());
    assert!(
        second.stderr().contains("AlreadyGone"),
        "{}",
        second.stderr()
    );
    drop(held);
    assert_eq!(exits(&mut second), Some(0), "{}", second.stderr());
    assert!(
        s.sim.member_exists(POOL, MEMBER),
        "weight0 keeps the membership"
    );
}

/// A config for `run` with `[register] on_start`, finding the membership by address and port.
fn register_on_start_config(s: &Setup) -> std::path::PathBuf {
    let port = s.app.addr.port();
    s.config_by_address(
        &format!("{QUICK}\nports = [{port}]"),
        "[register]\non_start = true\nhealthy_timeout = \"0s\"\n",
    )
}

async fn without_our_member() -> Setup {
    setup_with(|mut sc| {
        sc.member.retain(|m| m.id.as_deref() != Some(MEMBER));
        sc
    })
    .await
}

/// A stopped server (no membership) starts with `register_on_start`: it registers once. Killed after
/// that and started again, it finds the membership it made (ListMembers by address and port) and
/// reuses it: one CreateMember in all, one membership.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_on_start_killed_after_registering_does_not_register_twice() {
    let s = without_our_member().await;
    let config = register_on_start_config(&s);
    assert!(s.ours().is_empty());
    let mut first = ProcGuard::spawn(agent(&config, &["run"]));
    assert!(
        first.wait_stderr("ready: waiting", LIMIT),
        "{}",
        first.stderr()
    );
    assert_eq!(s.ours().len(), 1);
    kill9(&mut first);

    let mut second = ProcGuard::spawn(agent(&config, &["run"]));
    assert!(
        second.wait_stderr("ready: waiting", LIMIT),
        "{}",
        second.stderr()
    );
    assert!(second.stderr().contains("reused"), "{}", second.stderr());
    let members = s.ours();
    assert_eq!(members.len(), 1, "no duplicate: {members:?}");
    // The first start's CreateMember; the second found that membership and created nothing.
    assert_eq!(requests(&s.sim, "POST", 0).len(), 1);

    // And it is that membership the restarted daemon drains.
    second.signal(libc::SIGTERM);
    assert_eq!(exits(&mut second), Some(0), "{}", second.stderr());
    assert!(s.ours().is_empty());
    assert_eq!(requests(&s.sim, "DELETE", 0).len(), 1);
}

/// Killed while its CreateMember is in flight: the restart registers or finds the membership, and the
/// pool ends with exactly one membership for our address and port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_on_start_killed_during_create_member_ends_with_exactly_one_membership() {
    let s = without_our_member().await;
    let config = register_on_start_config(&s);
    s.sim
        .inject_fault(Fault::new("POST", CREATE_PATH, delay(1500)));
    let mut first = ProcGuard::spawn(agent(&config, &["run"]));
    assert!(
        wait_until(LIMIT, || fault_taken(&s)),
        "CreateMember never arrived:\n{}",
        first.stderr()
    );
    kill9(&mut first);

    let mut second = ProcGuard::spawn(agent(&config, &["run"]));
    assert!(
        second.wait_stderr("ready: waiting", LIMIT),
        "{}",
        second.stderr()
    );
    let creates: Vec<u16> = requests(&s.sim, "POST", 0)
        .iter()
        .map(|r| r.status)
        .collect();
    let members = s.ours();
    assert_eq!(members.len(), 1, "{members:?} after creates {creates:?}");
    assert_eq!(creates, [201], "{}", second.stderr());
    second.signal(libc::SIGTERM);
    assert_eq!(exits(&mut second), Some(0), "{}", second.stderr());
    assert!(s.ours().is_empty());
}

/// Killed after the cloud made the membership but before its answer came back (elb-sim commits the
/// create, then holds the answer): the restart finds the membership by address and port and reuses
/// it instead of making a second one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_on_start_killed_after_the_create_landed_reuses_it() {
    let s = without_our_member().await;
    let config = register_on_start_config(&s);
    s.sim.inject_fault(Fault::new(
        "POST",
        CREATE_PATH,
        vec![FaultAction::Applied {
            then: Box::new(FaultAction::Delay { ms: 5_000 }),
        }],
    ));
    let mut first = ProcGuard::spawn(agent(&config, &["run"]));
    assert!(
        wait_until(LIMIT, || s.ours().len() == 1),
        "the create never landed:\n{}",
        first.stderr()
    );
    kill9(&mut first);

    let mut second = ProcGuard::spawn(agent(&config, &["run"]));
    assert!(
        second.wait_stderr("ready: waiting", LIMIT),
        "{}",
        second.stderr()
    );
    assert!(second.stderr().contains("reused"), "{}", second.stderr());
    assert_eq!(s.ours().len(), 1, "no duplicate: {:?}", s.ours());
    second.signal(libc::SIGTERM);
    assert_eq!(exits(&mut second), Some(0), "{}", second.stderr());
    assert!(s.ours().is_empty());
}

/// A corrupt state file (truncated JSON): the agent says so naming the file, moves it aside, asks the
/// API instead (the member it no longer remembers removing answers 404: already gone) and drains to
/// exit 0. A bad memory is never a crash nor exit 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_state_file_is_set_aside_with_a_warning_and_the_api_asked() {
    let s = setup().await;
    let config = s.config(QUICK);
    let mut first = ProcGuard::spawn(agent(&config, &["drain"]));
    assert_eq!(exits(&mut first), Some(0), "{}", first.stderr());
    assert_eq!(removed(&s).as_deref(), Some("delete"));

    let path = s.dir.path().join("state.json");
    let truncated = "{\n  \"memberships\": [\n    {\n      \"pool_id\": \"36ce70";
    std::fs::write(&path, truncated).unwrap();
    let before = s.sim.request_log().len();
    let mut second = ProcGuard::spawn(agent(&config, &["drain"]));
    assert_eq!(exits(&mut second), Some(0), "{}", second.stderr());
    let err = second.stderr();
    let warning = err
        .lines()
        .find(|l| l.contains("state file ignored"))
        .unwrap_or_else(|| panic!("no warning:\n{err}"));
    assert!(
        warning.contains(&path.display().to_string()) && warning.contains("not valid JSON"),
        "{warning}"
    );
    assert!(err.contains("AlreadyGone"), "{err}");
    assert_eq!(
        requests(&s.sim, "DELETE", before)
            .iter()
            .map(|r| r.status)
            .collect::<Vec<_>>(),
        [404],
        "without its memory the agent asked the API"
    );
    assert_eq!(
        std::fs::read_to_string(s.dir.path().join("state.json.corrupt")).unwrap(),
        truncated,
        "kept for a person to look at"
    );
    assert_eq!(
        removed(&s).as_deref(),
        Some("delete"),
        "a fresh, valid state file: {}",
        state(&s)
    );
}

/// A membership this server gained after the daemon started (found by re-discovery) is recorded in
/// the state file when the stop removes it, so `register` after a reboot puts back both, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_membership_found_after_start_is_remembered_and_registered_back() {
    const SUBNET: &str = "4d4b5e8e-7c1a-4c67-9d5e-2a6f0b1c3d4e";
    let s = setup_with(|mut sc| {
        // Alone at 127.0.0.1 in the pool, so that discovery by address finds only us.
        sc.member.retain(|m| m.id.as_deref() != Some(OTHER));
        sc
    })
    .await;
    let port = s.app.addr.port();
    let second_port = s.other_app.addr.port();
    let config = s.config(&format!("{QUICK}\nports = [{port}, {second_port}]"));
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[cloud]\n", "[cloud]\ndiscovery_interval = \"100ms\"\n")
        .replace(
            &format!("member_id = \"{MEMBER}\"\nprotocol_port = {port}\n"),
            "address = \"127.0.0.1\"\n",
        );
    std::fs::write(&config, text).unwrap();
    let mut daemon = ProcGuard::spawn(agent(&config, &["run"]));
    assert!(
        daemon.wait_stderr("ready: waiting", LIMIT),
        "{}",
        daemon.stderr()
    );
    // Someone adds this server to the pool on a second port while the daemon serves.
    let added = s.sim.shared().lock_for_tests(|inner| {
        inner
            .add_member(&elb_sim::scenario::MemberConfig {
                id: None,
                pool_id: POOL.into(),
                address: "127.0.0.1".into(),
                protocol_port: second_port,
                weight: 3,
                instance_id: None,
                name: String::new(),
                subnet_cidr_id: Some(SUBNET.into()),
            })
            .unwrap()
    });
    assert!(
        daemon.wait_stderr("memberships changed", LIMIT),
        "{}",
        daemon.stderr()
    );
    daemon.signal(libc::SIGTERM);
    assert_eq!(exits(&mut daemon), Some(0), "{}", daemon.stderr());
    assert!(s.sim.members(POOL).is_empty(), "both deleted");
    let recorded: Vec<(String, String)> = state(&s)["memberships"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["member_id"].as_str().unwrap_or("").to_owned(),
                m["removed"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert!(
        recorded.contains(&(added.clone(), "delete".into())),
        "{recorded:?}"
    );
    assert!(
        recorded.contains(&(MEMBER.into(), "delete".into())),
        "{recorded:?}"
    );

    let mut reg = ProcGuard::spawn(agent(&config, &["register"]));
    assert_eq!(exits(&mut reg), Some(0), "{}", reg.stderr());
    let mut ports: Vec<u64> = s
        .sim
        .members(POOL)
        .iter()
        .filter_map(|m| m["protocol_port"].as_u64())
        .collect();
    ports.sort_unstable();
    let mut want = vec![u64::from(port), u64::from(second_port)];
    want.sort_unstable();
    assert_eq!(ports, want, "both put back, once each");
    // Put back as it was, not at the default weight: read back through the API, as a console would.
    let api = simkit::login(&s.sim, "alice", "acme", "correct horse", PROJECT).await;
    let listed = api
        .get(&format!("/v3/{PROJECT}/elb/pools/{POOL}/members"))
        .await;
    assert_eq!(listed.status, 200, "{}", listed.raw);
    let back = listed.body["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["protocol_port"] == second_port)
        .cloned()
        .unwrap();
    assert_ne!(back["id"], added.as_str(), "recreated: a new membership");
    assert_eq!(
        (&back["weight"], &back["subnet_cidr_id"]),
        (&serde_json::json!(3), &serde_json::json!(SUBNET)),
        "{back}"
    );
}
