//! No secret in any output: every command, at the most verbose log level, in both log formats, with a
//! password, an IAM token, an SK and a security token in play. The secrets are grepped for in stdout
//! and stderr; none may appear.

mod common;

use std::time::Duration;

use common::*;
use elb_sim::Sim;
use elb_sim::scenario::Instance;

const PASSWORD: &str = "correct horse";
const SK: &str = "SKsecretVALUE0123456789abcdefghijklmnop";
const SECURITY_TOKEN: &str = "STsecurityTOKENvalue+/==";
const AK: &str = "AKSECRETSTEST0000000";

/// Adds a status socket to `config`, so the daemon's socket is one of the outputs searched.
fn with_status_socket(config: &std::path::Path) -> std::path::PathBuf {
    let sock = config.with_file_name("status.sock");
    let text = std::fs::read_to_string(config).unwrap()
        + &format!("[status]\nsocket = \"{}\"\n", sock.display());
    std::fs::write(config, text).unwrap();
    sock
}

/// Runs every command at the most verbose level, in both log formats, and returns what each printed.
/// The daemon is asked for its status over its socket while it serves. Every command really does its
/// work (the caller checks the cloud's request log), so every code path that holds a secret runs.
fn outputs(config: &std::path::Path, env: &[(&str, &str)]) -> Vec<(String, String)> {
    with_status_socket(config);
    // Registering creates a new membership ID, so the member is found by address and port instead.
    let text = std::fs::read_to_string(config).unwrap().replace(
        &format!("member_id = \"{MEMBER}\""),
        "address = \"127.0.0.1\"",
    );
    std::fs::write(config, text).unwrap();
    let spawn = |args: &[&str]| {
        let mut cmd = agent(config, args);
        cmd.env("ELB_DRAIN_LOG", "trace");
        for (k, v) in env {
            cmd.env(k, v);
        }
        ProcGuard::spawn(cmd)
    };
    let finish = |mut p: ProcGuard, what: String, all: &mut Vec<(String, String)>| {
        let exit = p.wait_timeout(Duration::from_secs(20)).expect("exits");
        assert!(exit.code().is_some(), "{what} was killed by a signal");
        all.push((what, format!("{}\n{}", p.stdout(), p.stderr())));
    };
    let mut all = Vec::new();
    for format in ["text", "json"] {
        let with_format = |command: &[&'static str]| -> Vec<&'static str> {
            let mut args = vec!["--log-format", format];
            args.extend_from_slice(command);
            args
        };
        // The daemon, asked over its socket while it serves, then through a whole stop.
        let daemon = spawn(&with_format(&["run"]));
        assert!(
            daemon.wait_stderr("status socket ready", Duration::from_secs(10)),
            "{}",
            daemon.stderr()
        );
        for command in [&["status"][..], &["status", "--json"]] {
            let args = with_format(command);
            finish(spawn(&args), format!("{args:?} (daemon up)"), &mut all);
        }
        daemon.signal(libc::SIGTERM);
        finish(daemon, format!("run {format}"), &mut all);
        // Every other command; `register` puts back what the daemon's stop removed, `drain` removes it,
        // `register` again, and `exec` supervises a child that exits at once (so it deregisters).
        for command in [
            &["check"][..],
            &["check", "--json"],
            &["status"],
            &["status", "--json"],
            &["connections"],
            &["connections", "--json"],
            &["register", "--json"],
            &["drain"],
            &["register"],
            &["exec", "--", "true"],
            &["register"],
        ] {
            let args = with_format(command);
            finish(spawn(&args), format!("{args:?}"), &mut all);
        }
    }
    all
}

/// Every command did its work: three stops (`run`, `drain`, `exec`) and three registrations per
/// log format, so the secrets were really used on every path searched.
fn assert_every_command_worked(sim: &Sim) {
    let log = sim.request_log();
    let calls: Vec<String> = log
        .iter()
        .filter(|r| r.method != "GET")
        .map(|r| {
            format!(
                "{} {} {}",
                r.method,
                r.path.rsplit('/').next().unwrap_or(""),
                r.status
            )
        })
        .collect();
    let count = |method: &str, status: u16| {
        log.iter()
            .filter(|r| r.method == method && r.path.contains("/members") && r.status == status)
            .count()
    };
    assert_eq!(count("DELETE", 204), 6, "deregistrations: {calls:?}");
    assert_eq!(count("POST", 201), 6, "registrations: {calls:?}");
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
    assert_every_command_worked(&s.sim);
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
    assert_every_command_worked(&s.sim);
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
    assert_every_command_worked(&s.sim);
    assert!(
        s.sim
            .request_log()
            .iter()
            .any(|r| r.auth == elb_sim::AuthKind::Token && r.method == "DELETE")
    );
    assert_clean(&out, &[token]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_keys_from_the_metadata_service_never_appear() {
    let s = setup_with(|sc| {
        sc.instance(Instance {
            uuid: "6a7bd0c6-9e22-4d9f-a9c2-0d11ee3c0e55".into(),
            project_id: PROJECT.into(),
            local_ipv4: "127.0.0.1".into(),
            region_id: Some("cn-north-4".into()),
            hostname: "web-1".into(),
            name: "web-1".into(),
            agency: true,
            scaling_group_id: None,
        })
    })
    .await;
    let config = write_file(
        s.dir.path(),
        "metadata.toml",
        &format!(
            "[cloud]\nelb_endpoint = \"{}\"\nmetadata_endpoint = \"{}\"\n[auth]\nmethod = \"metadata\"\n\
             [[member]]\npool_id = \"{POOL}\"\nmember_id = \"{MEMBER}\"\nprotocol_port = {}\n\
             [drain]\nexclude_peers = []\nsettle = \"50ms\"\npoll_interval = \"20ms\"\n",
            s.sim.api_url(),
            s.sim.metadata_url(),
            s.app.addr.port()
        ),
    );
    let out = outputs(&config, &[]);
    assert_every_command_worked(&s.sim);
    let secrets = s.sim.issued_secrets();
    assert!(
        secrets.len() >= 2,
        "temporary SK and security token were issued"
    );
    assert_clean(&out, &secrets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_file_readable_by_others_is_named_in_a_warning() {
    let s = setup().await;
    let config = s.config("");
    let password = s.dir.path().join("password");
    std::fs::set_permissions(
        &password,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let mut check = ProcGuard::spawn(agent(&config, &["check"]));
    let exit = check.wait_timeout(Duration::from_secs(20)).expect("exits");
    assert_eq!(
        exit.code(),
        Some(0),
        "a warning, not an error: {}",
        check.stderr()
    );
    let warning = check
        .stderr()
        .lines()
        .find(|l| l.contains("WARN") && l.contains("readable by group or others"))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no warning: {}", check.stderr()));
    assert!(
        warning.contains(&password.display().to_string()),
        "names the file: {warning}"
    );
    assert!(!check.stderr().contains(PASSWORD), "{}", check.stderr());
}

/// No option takes a secret: every command's `--help` lists none, and one given anyway is a usage
/// error that does not echo the value.
#[test]
fn no_secret_is_accepted_on_the_command_line() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_elb-drain"))
            .args(args)
            .output()
            .expect("runs");
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let commands = [
        "run",
        "drain",
        "exec",
        "register",
        "check",
        "status",
        "connections",
    ];
    let mut options = 0;
    for command in std::iter::once(None).chain(commands.iter().map(Some)) {
        let mut args: Vec<&str> = command.into_iter().copied().collect();
        args.push("--help");
        let (code, help) = run(&args);
        assert_eq!(code, Some(0), "{args:?}: {help}");
        for line in help
            .lines()
            .map(str::trim_start)
            .filter(|l| l.starts_with('-'))
        {
            options += 1;
            let option = line
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" ");
            for word in ["token", "password", "secret", "sk", "key", "credential"] {
                assert!(
                    !option.to_lowercase().contains(word),
                    "{args:?} has an option that looks like it takes a secret: {line}"
                );
            }
        }
    }
    assert!(options > 10, "the help texts were read ({options} options)");
    for flag in ["--token", "--password", "--sk", "--security-token"] {
        let (code, out) = run(&["drain", flag, "s3cr3t-VALUE"]);
        assert_eq!(code, Some(2), "{flag}: {out}");
        assert!(
            !out.contains("s3cr3t-VALUE"),
            "{flag} echoed its value: {out}"
        );
    }
}
