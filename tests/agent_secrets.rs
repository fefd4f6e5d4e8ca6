//! No secret in any output: every command, at the most verbose log level, in both log formats, with a
//! password, an IAM token, an SK and a security token in play. The secrets are grepped for in stdout
//! and stderr; none may appear.

mod common;

use std::time::Duration;

use common::*;

const PASSWORD: &str = "correct horse";
const SK: &str = "SKsecretVALUE0123456789abcdefghijklmnop";
const SECURITY_TOKEN: &str = "STsecurityTOKENvalue+/==";
const AK: &str = "AKSECRETSTEST0000000";

fn outputs(config: &std::path::Path, env: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut all = Vec::new();
    for format in ["text", "json"] {
        for command in [
            &["check"][..],
            &["check", "--json"],
            &["status", "--json"],
            &["connections"],
            &["drain"],
        ] {
            let mut args = vec!["--log-format", format];
            args.extend_from_slice(command);
            let mut cmd = agent(config, &args);
            cmd.env("ELB_DRAIN_LOG", "trace");
            for (k, v) in env {
                cmd.env(k, v);
            }
            let mut p = ProcGuard::spawn(cmd);
            let exit = p.wait_timeout(Duration::from_secs(20)).expect("exits");
            assert!(exit.code().is_some(), "{args:?}");
            all.push((
                format!("{args:?}"),
                format!("{}\n{}", p.stdout(), p.stderr()),
            ));
        }
        // The daemon, through a whole stop.
        let mut cmd = agent(config, &["--log-format", format, "run"]);
        cmd.env("ELB_DRAIN_LOG", "trace");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut p = ProcGuard::spawn(cmd);
        assert!(
            p.wait_stderr("ready", Duration::from_secs(10)),
            "{}",
            p.stderr()
        );
        p.signal(libc::SIGTERM);
        p.wait_timeout(Duration::from_secs(20)).expect("exits");
        all.push((
            format!("run {format}"),
            format!("{}\n{}", p.stdout(), p.stderr()),
        ));
    }
    all
}

fn assert_clean(outputs: &[(String, String)], secrets: &[String]) {
    let mut lines = 0;
    for (what, text) in outputs {
        lines += text.lines().count();
        for secret in secrets {
            assert!(
                !text.contains(secret.as_str()),
                "{what} printed a secret ({} chars):\n{text}",
                secret.len()
            );
        }
    }
    assert!(
        lines > 100,
        "trace logs are expected to be long; got {lines} lines"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_and_token_never_appear() {
    let s = setup().await;
    let config = s.config("settle = \"50ms\"\npoll_interval = \"20ms\"\ntimeout = \"10s\"");
    let out = outputs(&config, &[]);
    assert!(
        s.sim
            .request_log()
            .iter()
            .any(|r| r.method == "DELETE" && r.status == 204),
        "the drain really ran"
    );
    let mut secrets = s.sim.issued_secrets();
    assert!(!secrets.is_empty(), "tokens were issued");
    secrets.push(PASSWORD.to_owned());
    assert_clean(&out, &secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ak_sk_and_security_token_never_appear() {
    let s = setup_with(|sc| sc.access_key(AK, SK, PROJECT)).await;
    let api = s.sim.api_url();
    let config = write_file(
        s.dir.path(),
        "aksk.toml",
        &format!(
            "[cloud]\nproject_id = \"{PROJECT}\"\nelb_endpoint = \"{api}\"\n[auth]\nmethod = \"aksk\"\n\
             [[member]]\npool_id = \"{POOL}\"\nmember_id = \"{MEMBER}\"\nprotocol_port = {}\n\
             [drain]\nexclude_peers = []\nsettle = \"50ms\"\npoll_interval = \"20ms\"\n",
            s.app.addr.port()
        ),
    );
    let env = [
        ("HUAWEICLOUD_SDK_AK", AK),
        ("HUAWEICLOUD_SDK_SK", SK),
        ("HUAWEICLOUD_SDK_SECURITY_TOKEN", SECURITY_TOKEN),
    ];
    let out = outputs(&config, &env);
    assert!(
        s.sim
            .request_log()
            .iter()
            .any(|r| r.auth == elb_sim::AuthKind::Aksk && r.status == 204),
        "signed DELETE accepted"
    );
    assert_clean(&out, &[SK.to_owned(), SECURITY_TOKEN.to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_from_the_environment_never_appears() {
    let s = setup().await;
    // Get a token the way an operator's tooling would, and hand it over through ELB_DRAIN_TOKEN.
    let resp = http()
        .post(format!("{}/v3/auth/tokens", s.sim.api_url()))
        .json(&serde_json::json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": "alice", "password": PASSWORD, "domain": {"name": "acme"}}}},
            "scope": {"project": {"id": PROJECT}}}}))
        .send()
        .await
        .unwrap();
    let token = resp.headers()["x-subject-token"]
        .to_str()
        .unwrap()
        .to_owned();
    let api = s.sim.api_url();
    let config = write_file(
        s.dir.path(),
        "token.toml",
        &format!(
            "[cloud]\nproject_id = \"{PROJECT}\"\nelb_endpoint = \"{api}\"\n\
             [[member]]\npool_id = \"{POOL}\"\nmember_id = \"{MEMBER}\"\nprotocol_port = {}\n\
             [drain]\nexclude_peers = []\nsettle = \"50ms\"\npoll_interval = \"20ms\"\n",
            s.app.addr.port()
        ),
    );
    let out = outputs(&config, &[("ELB_DRAIN_TOKEN", &token)]);
    assert!(
        s.sim
            .request_log()
            .iter()
            .any(|r| r.auth == elb_sim::AuthKind::Token && r.method == "DELETE")
    );
    assert_clean(&out, &[token]);
}
