//! Bad input gets a clear error and loses nothing: every malformed configuration exits 78 with the
//! field named on stderr, and elb-sim sees no request at all.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_configurations_exit_78_naming_the_field_without_any_api_call() {
    let s = setup().await;
    let api = s.sim.api_url();
    let dir = s.dir.path();
    let token = write_file(dir, "token", "tok");
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    write_file(dir, "empty", "\n");
    let head = format!(
        "[cloud]\nproject_id = \"{PROJECT}\"\nelb_endpoint = \"{api}\"\niam_endpoint = \"{api}\"\n\
         metadata_endpoint = \"{api}\"\n"
    );
    let auth = format!(
        "[auth]\nmethod = \"token\"\ntoken_file = \"{}\"\n",
        token.display()
    );
    let member = format!(
        "[[member]]\npool_id = \"{POOL}\"\nmember_id = \"{MEMBER}\"\nprotocol_port = 8080\n"
    );
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "missing pool_id",
            format!("{head}{auth}[[member]]\nmember_id = \"{MEMBER}\"\n"),
            "[[member]] #1: pool_id: missing",
        ),
        (
            "bad pool UUID",
            format!("{head}{auth}[[member]]\npool_id = \"pool-1\"\n"),
            "[[member]] #1: pool_id",
        ),
        (
            "bad member UUID",
            format!("{head}{auth}[[member]]\npool_id = \"{POOL}\"\nmember_id = \"m1\"\n"),
            "member_id",
        ),
        (
            "negative timeout",
            format!("{head}{auth}{member}[drain]\ntimeout = \"-5s\"\n"),
            "drain.timeout",
        ),
        (
            "unknown auth method",
            format!("{head}[auth]\nmethod = \"kerberos\"\n{member}"),
            "auth.method",
        ),
        (
            "unreadable token file",
            format!(
                "{head}[auth]\ntoken_file = \"{}/nope\"\n{member}",
                dir.display()
            ),
            "auth.token_file",
        ),
        (
            "empty token file",
            format!(
                "{head}[auth]\ntoken_file = \"{}/empty\"\n{member}",
                dir.display()
            ),
            "auth.token_file",
        ),
        (
            "port out of range",
            format!("{head}{auth}[[member]]\npool_id = \"{POOL}\"\nprotocol_port = 0\n"),
            "protocol_port",
        ),
        (
            "typo in a key",
            format!("{head}{auth}{member}[drain]\ntimout = \"5s\"\n"),
            "timout",
        ),
        (
            "hook name pasted with a space",
            format!(
                "{head}{auth}{member}[autoscaling]\nscaling_group_id = \"{POOL}\"\n\
                 hook_name = \"drain hook\"\n"
            ),
            "autoscaling.hook_name",
        ),
        (
            "bad CIDR",
            format!("{head}{auth}{member}[drain]\nexclude_peers = [\"10.0.0.0/40\"]\n"),
            "drain.exclude_peers[0]",
        ),
        (
            "plain http to a remote host",
            format!(
                "[cloud]\nproject_id = \"{PROJECT}\"\nelb_endpoint = \"http://elb.example.com\"\n{auth}{member}"
            ),
            "cloud.elb_endpoint",
        ),
        (
            "bad project id",
            format!("[cloud]\nproject_id = \"p-1\"\nelb_endpoint = \"{api}\"\n{auth}{member}"),
            "cloud.project_id",
        ),
        (
            "password without domain",
            format!(
                "{head}[auth]\nmethod = \"password\"\nuser = \"alice\"\npassword_file = \"{}\"\n{member}",
                token.display()
            ),
            "auth.domain",
        ),
        (
            "settle longer than timeout",
            format!("{head}{auth}{member}[drain]\nsettle = \"10m\"\ntimeout = \"1m\"\n"),
            "drain.settle",
        ),
        (
            "duplicate member",
            format!("{head}{auth}{member}{member}"),
            "listed twice",
        ),
        (
            "TOML syntax",
            format!("{head}{auth}[[member]\n"),
            "elb-drain.toml",
        ),
        (
            "weight out of range",
            format!("{head}{auth}[[member]]\npool_id = \"{POOL}\"\nweight = 101\n"),
            "weight",
        ),
    ];
    assert!(cases.len() >= 10);
    for (what, text, field) in &cases {
        let path = write_file(dir, "elb-drain.toml", text);
        for command in ["check", "drain", "run"] {
            let mut agent = ProcGuard::spawn(agent(&path, &[command]));
            let exit = agent
                .wait_timeout(Duration::from_secs(10))
                .expect("exits at once");
            let stderr = agent.stderr();
            assert_eq!(exit.code(), Some(78), "{what} ({command}): {stderr}");
            assert!(
                stderr.contains(field),
                "{what} ({command}): stderr does not name {field:?}:\n{stderr}"
            );
            assert!(
                stderr.lines().any(|l| l.starts_with("elb-drain: config:")),
                "{what}: one clear line:\n{stderr}"
            );
        }
    }
    assert!(
        s.sim.request_log().is_empty(),
        "no API call for a bad config: {:?}",
        s.sim.request_log()
    );
}

#[test]
fn a_missing_config_file_is_a_configuration_error() {
    let mut agent = ProcGuard::spawn(agent(
        std::path::Path::new("/nonexistent/elb-drain.toml"),
        &["check"],
    ));
    let exit = agent.wait_timeout(Duration::from_secs(10)).expect("exits");
    assert_eq!(exit.code(), Some(78));
    assert!(
        agent
            .stderr()
            .contains("cannot read /nonexistent/elb-drain.toml"),
        "{}",
        agent.stderr()
    );
}

#[test]
fn usage_errors_exit_2() {
    let mut agent = ProcGuard::spawn(agent(std::path::Path::new("x.toml"), &["frobnicate"]));
    assert_eq!(
        agent
            .wait_timeout(Duration::from_secs(10))
            .expect("exits")
            .code(),
        Some(2)
    );
}
