//! Credentials over a whole run, end to end against elb-sim: an IAM token from a password renewed in
//! the background ahead of its `expires_at` across several lifetimes (no request ever refused), and a
//! server without an agency told, before any ELB request, what to do about it.

mod common;

use std::time::Duration;

use common::*;
use elb_sim::scenario::Instance;
use elb_sim::{AuthKind, Scenario, Sim};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_tokens_are_renewed_in_the_background_ahead_of_expiry() {
    const LIFETIME: Duration = Duration::from_secs(2);
    let s = setup_with(|mut sc| {
        sc.settings.token_lifetime = LIFETIME;
        sc
    })
    .await;
    // Members by ID: nothing to re-discover, so while serving no API call needs a token.
    let config = s.config("settle = \"100ms\"\npoll_interval = \"20ms\"");

    let mut agent = ProcGuard::spawn(agent(&config, &["run"]));
    let tokens = || issued_tokens(&s.sim, LIFETIME);
    let run = serve_across_lifetimes(&mut agent, &s.sim, LIFETIME, tokens, "/auth/tokens", 201);
    let (log, stop) = (s.sim.request_log(), run.stop);
    assert_eq!(run.fetches.len(), tokens().len(), "one token per request");
    let calls: Vec<_> = log
        .iter()
        .filter(|r| r.service == "elb" && run.serving(r.at))
        .collect();
    assert!(calls.is_empty(), "ELB calls while serving: {calls:?}");
    let after: Vec<_> = log.iter().filter(|r| r.at > stop).collect();
    assert_eq!(
        after.first().map(|r| r.method.as_str()),
        Some("DELETE"),
        "the DELETE first: {after:#?}"
    );
    let delete = after.first().expect("a DELETE");
    assert_eq!((delete.status, delete.auth), (204, AuthKind::Token));
    let token = held_at(&tokens(), delete.at).expect("a token before the DELETE");
    assert!(
        delete.at < token.until,
        "DELETE with an expired token: {delete:?} {token:?}"
    );
}

const INSTANCE: &str = "6a7bd0c6-9e22-4d9f-a9c2-0d11ee3c0e55";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_an_agency_is_told_what_to_do_before_any_elb_request() {
    let scenario = Scenario::builder()
        .project(PROJECT)
        .instance(Instance {
            uuid: INSTANCE.into(),
            project_id: PROJECT.into(),
            local_ipv4: "127.0.0.2".into(),
            region_id: Some("cn-north-4".into()),
            hostname: "web-1".into(),
            name: "web-1".into(),
            agency: false,
            scaling_group_id: None,
        })
        .pool(POOL, |p| p)
        .member(POOL, MEMBER, "127.0.0.2", 8080)
        .build();
    let sim = Sim::start(scenario).await.expect("elb-sim");
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(
        dir.path(),
        "elb-drain.toml",
        &format!(
            "[cloud]\nelb_endpoint = \"{}\"\nmetadata_endpoint = \"{}\"\n[auth]\nmethod = \"metadata\"\n",
            sim.api_url(),
            sim.metadata_url()
        ),
    );
    for command in ["check", "run"] {
        let mut cmd = agent(&config, &[command]);
        cmd.env_remove("ELB_DRAIN_LOG");
        let mut agent = ProcGuard::spawn(cmd);
        let exit = agent
            .wait_timeout(Duration::from_secs(20))
            .expect("exits at start-up");
        let stderr = agent.stderr();
        assert_eq!(exit.code(), Some(78), "{command}: {stderr}");
        let line = stderr
            .lines()
            .find(|l| l.starts_with("elb-drain: "))
            .unwrap_or_else(|| panic!("{command}: no error line: {stderr}"));
        assert_eq!(
            line,
            "elb-drain: config: auth.method = \"metadata\": this server has no agency (the metadata \
             service answered \"Please configure Cloud Service Agency first\"); attach an agency with \
             ELB permissions to this ECS server, or set another auth.method",
            "{command}"
        );
    }
    let log = sim.request_log();
    assert!(
        log.iter()
            .any(|r| r.path.ends_with("/securitykey") && r.status == 401),
        "{log:?}"
    );
    assert!(
        log.iter().all(|r| r.service == "metadata"),
        "no request but to the metadata service: {log:?}"
    );
}
