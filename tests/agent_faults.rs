//! The agent against an unreliable cloud: retries, already-deleted members, expired tokens, an API
//! that never answers, and signals in the middle of a drain.

mod common;

use std::time::{Duration, Instant};

use common::*;
use elb_sim::{Fault, FaultAction};

const DELETE_PATH: &str = "/v3/*/elb/pools/*/members/*";
const QUICK: &str = "settle = \"100ms\"\npoll_interval = \"20ms\"\ntimeout = \"20s\"";

fn status(code: u16) -> FaultAction {
    FaultAction::Status {
        status: code,
        retry_after: None,
    }
}

fn statuses(sim: &elb_sim::Sim, method: &str) -> Vec<u16> {
    sim.request_log()
        .into_iter()
        .filter(|r| r.method == method)
        .map(|r| r.status)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deregistration_retries_through_503s() {
    let s = setup().await;
    s.sim.inject_fault(Fault::new(
        "DELETE",
        DELETE_PATH,
        vec![status(503), status(503)],
    ));
    let mut agent = ProcGuard::spawn(agent(&s.config(QUICK), &["drain"]));
    let exit = agent.wait_timeout(Duration::from_secs(15)).expect("exits");
    assert_eq!(exit.code(), Some(0), "{}", agent.stderr());
    assert_eq!(statuses(&s.sim, "DELETE"), [503, 503, 204]);
    assert!(!s.sim.member_exists(POOL, MEMBER));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_already_gone_is_success() {
    let s = setup().await;
    // A bare 404 whose message names nothing: the agent asks whether the pool exists, and it does.
    s.sim
        .inject_fault(Fault::new("DELETE", DELETE_PATH, vec![status(404)]));
    let mut agent = ProcGuard::spawn(agent(&s.config(QUICK), &["drain"]));
    assert_eq!(
        agent
            .wait_timeout(Duration::from_secs(15))
            .expect("exits")
            .code(),
        Some(0),
        "{}",
        agent.stderr()
    );
    assert!(agent.stderr().contains("AlreadyGone"), "{}", agent.stderr());
    // The member is in fact still there (the 404 was injected): the next stop sees it and deletes it;
    // the stop after that knows from its state file that it is gone, and is a no-op on the API.
    for _ in 0..2 {
        let mut again = ProcGuard::spawn(common::agent(&s.config(QUICK), &["drain"]));
        assert_eq!(
            again
                .wait_timeout(Duration::from_secs(15))
                .expect("exits")
                .code(),
            Some(0),
            "{}",
            again.stderr()
        );
    }
    assert_eq!(statuses(&s.sim, "DELETE"), [404, 204]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_that_does_not_exist_is_a_configuration_error() {
    let s = setup().await;
    let config = s.config(QUICK);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(POOL, "00000000-0000-4000-8000-000000000000");
    std::fs::write(&config, text).unwrap();
    let mut agent = ProcGuard::spawn(agent(&config, &["run"]));
    let exit = agent
        .wait_timeout(Duration::from_secs(15))
        .expect("exits at start-up");
    assert_eq!(exit.code(), Some(78), "{}", agent.stderr());
    assert!(
        agent
            .stderr()
            .contains("00000000-0000-4000-8000-000000000000"),
        "{}",
        agent.stderr()
    );
    assert!(statuses(&s.sim, "DELETE").is_empty(), "nothing deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refreshed_once_and_the_delete_retried() {
    let s = setup().await;
    let mut agent = ProcGuard::spawn(agent(&s.config(QUICK), &["run"]));
    assert!(
        agent.wait_stderr("ready", Duration::from_secs(10)),
        "{}",
        agent.stderr()
    );
    s.sim.expire_tokens();
    let before = s.sim.request_log().len();
    agent.signal(libc::SIGTERM);
    assert_eq!(
        agent
            .wait_timeout(Duration::from_secs(15))
            .expect("exits")
            .code(),
        Some(0),
        "{}",
        agent.stderr()
    );
    let after: Vec<(String, u16)> = s.sim.request_log()[before..]
        .iter()
        .map(|r| (format!("{} {}", r.method, r.service), r.status))
        .collect();
    assert_eq!(
        after[..3],
        [
            ("DELETE elb".to_owned(), 401),
            ("POST iam".to_owned(), 201),
            ("DELETE elb".to_owned(), 204)
        ],
        "{after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_down_for_the_whole_retry_budget_exits_69_after_the_drain() {
    let s = setup().await;
    s.sim
        .inject_fault(Fault::new("DELETE", DELETE_PATH, vec![status(503)]).repeating());
    let held = s.connections_to_us(1);
    // retry_deadline is 3 s in the test config.
    let mut agent = ProcGuard::spawn(agent(&s.config(QUICK), &["drain"]));
    let started = Instant::now();
    assert!(wait_until(Duration::from_secs(10), || statuses(
        &s.sim, "DELETE"
    )
    .len()
        >= 3));
    assert!(
        agent.wait_stderr("deregistration failed", Duration::from_secs(10)),
        "{}",
        agent.stderr()
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        agent.is_running(),
        "the drain is still waited out after the API failed:\n{}",
        agent.stderr()
    );
    drop(held);
    let exit = agent
        .wait_timeout(Duration::from_secs(10))
        .expect("exits once drained");
    assert_eq!(exit.code(), Some(69), "{}", agent.stderr());
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "not before the retry budget: {:?}",
        started.elapsed()
    );
    assert!(s.sim.member_exists(POOL, MEMBER));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_is_honoured() {
    let s = setup().await;
    s.sim.inject_fault(Fault::new(
        "DELETE",
        DELETE_PATH,
        vec![FaultAction::Status {
            status: 429,
            retry_after: Some(1),
        }],
    ));
    let mut agent = ProcGuard::spawn(agent(&s.config(QUICK), &["drain"]));
    assert_eq!(
        agent
            .wait_timeout(Duration::from_secs(15))
            .expect("exits")
            .code(),
        Some(0),
        "{}",
        agent.stderr()
    );
    let deletes: Vec<_> = s
        .sim
        .request_log()
        .into_iter()
        .filter(|r| r.method == "DELETE")
        .collect();
    assert_eq!(
        deletes.iter().map(|r| r.status).collect::<Vec<_>>(),
        [429, 204]
    );
    let gap = deletes[1].mono_ns - deletes[0].mono_ns;
    assert!(
        gap >= 1_000_000_000,
        "retried {gap} ns after a Retry-After of 1 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigint_abandons_the_drain_and_sighup_is_ignored() {
    let s = setup().await;
    let _held = s.connections_to_us(1);
    let mut agent = ProcGuard::spawn(agent(&s.config(QUICK), &["run"]));
    assert!(
        agent.wait_stderr("ready", Duration::from_secs(10)),
        "{}",
        agent.stderr()
    );
    agent.signal(libc::SIGHUP);
    assert!(
        agent.wait_stderr("SIGHUP", Duration::from_secs(5)),
        "{}",
        agent.stderr()
    );
    assert!(agent.is_running());
    assert!(deletes(&s.sim).is_empty(), "SIGHUP does not drain");
    agent.signal(libc::SIGINT);
    assert!(wait_until(Duration::from_secs(5), || !s
        .sim
        .member_exists(POOL, MEMBER)));
    agent.signal(libc::SIGTERM); // joins the drain
    assert!(
        agent.wait_stderr("already draining", Duration::from_secs(5)),
        "{}",
        agent.stderr()
    );
    assert!(agent.is_running(), "a connection is still open");
    agent.signal(libc::SIGINT);
    let exit = agent
        .wait_timeout(Duration::from_secs(5))
        .expect("abandons");
    assert_eq!(exit.code(), Some(130), "{}", agent.stderr());
    assert_eq!(deletes(&s.sim).len(), 1, "exactly one drain");
}
