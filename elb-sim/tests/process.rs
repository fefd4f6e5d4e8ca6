//! elb-sim as a user runs it: the binary with the sample scenario (ports moved to 127.0.0.1:0), the
//! ready line on stdout, a working API, and a clean exit on SIGTERM and on Ctrl-C (SIGINT).

mod proc;

use std::io::Read;
use std::process::Command;
use std::time::Duration;

use proc::*;

const PROJECT: &str = "99a3fff0d03c428eac3678da6a7d0f24";

#[test]
fn the_sample_scenario_parses() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/elb-sim.toml"
    ))
    .unwrap();
    let s = elb_sim::Scenario::from_toml(&text).expect("config/elb-sim.toml is valid");
    assert_eq!(
        (
            s.pool.len(),
            s.member.len(),
            s.listener.len(),
            s.instance.len()
        ),
        (1, 2, 1, 1)
    );
}

#[test]
fn the_binary_prints_its_addresses_serves_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/elb-sim.toml"
    ))
    .unwrap()
    .replace("127.0.0.1:8443", "127.0.0.1:0")
    .replace("127.0.0.1:8775", "127.0.0.1:0")
    .replace("127.0.0.1:8776", "127.0.0.1:0")
    .replace("127.0.0.1:8080", "127.0.0.1:0");
    let config = write_file(dir.path(), "sim.toml", &text);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_elb-sim"));
    cmd.arg("--config").arg(&config);
    let mut sim = Proc::spawn(cmd);
    assert!(
        wait_until(Duration::from_secs(10), || sim.stdout().contains('\n')),
        "{}",
        sim.stderr()
    );
    let ready: serde_json::Value =
        serde_json::from_str(sim.stdout().lines().next().unwrap()).unwrap();
    let api = ready["api"].as_str().unwrap();
    assert!(ready["listeners"]["0b5c5a2e-8f37-4a57-8b7e-4c2f1b0d9e11"].is_string());
    // A plain HTTP/1.1 request over a socket: the status line is all this test needs.
    let body =
        serde_json::json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": "deployer", "password": "change-me", "domain": {"name": "acme"}}}},
        "scope": {"project": {"id": PROJECT}}}})
        .to_string();
    let host = api.trim_start_matches("http://");
    let mut conn = std::net::TcpStream::connect(host).unwrap();
    use std::io::Write;
    write!(
        conn,
        "POST /v3/auth/tokens HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("x-subject-token:"),
        "{answer}"
    );
    sim.signal(libc::SIGTERM);
    let exit = sim
        .wait_timeout(Duration::from_secs(10))
        .expect("stops on SIGTERM");
    assert_eq!(exit.code(), Some(0), "{}", sim.stderr());
}

/// Ctrl-C at a terminal: SIGINT, sent the moment the ready line is out (the handlers are installed
/// before it is printed), is a clean shutdown too: exit 0 after the simulator's shutdown ran to its end.
#[test]
fn ctrl_c_stops_it_cleanly_from_the_ready_line_on() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/elb-sim.toml");
    let mut sim = Proc::sim(&["--config", config, "--any-port"]);
    let ready = sim.ready();
    sim.signal(libc::SIGINT);
    let exit = sim
        .wait_timeout(Duration::from_secs(10))
        .expect("stops on SIGINT");
    assert_eq!(
        exit.code(),
        Some(0),
        "a clean exit, not death by the signal ({exit:?}):\n{}",
        sim.stderr()
    );
    let err = sim.stderr();
    assert!(
        err.contains("elb-sim stopping") && err.contains("SIGINT"),
        "{err}"
    );
    assert!(
        err.contains("elb-sim stopped"),
        "the shutdown ran to its end:\n{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(ready["api"].is_string(), "{ready}");
}

#[test]
fn a_bad_scenario_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(dir.path(), "bad.toml", "[[pool]]\nname = \"no id\"\n");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_elb-sim"));
    cmd.arg("--config").arg(&config);
    let mut sim = Proc::spawn(cmd);
    let exit = sim.wait_timeout(Duration::from_secs(10)).expect("exits");
    assert_eq!(exit.code(), Some(78));
    assert!(
        sim.stderr().contains("missing field `id`"),
        "{}",
        sim.stderr()
    );
}

/// One HTTP/1.1 request over a plain socket; returns the whole answer (status line, headers, body).
fn http(host: &str, method: &str, path: &str, body: &str) -> String {
    use std::io::Write;
    let mut conn = std::net::TcpStream::connect(host).unwrap();
    write!(
        conn,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    answer
}

#[test]
fn flags_override_the_scenario() {
    // The sample scenario's fixed ports, all moved by one flag; two simulators side by side prove it.
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/elb-sim.toml");
    let spawn = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_elb-sim"));
        cmd.args(["--config", config, "--any-port", "--token-lifetime", "90s"])
            .args(["--metadata-tokens", "required"]);
        Proc::spawn(cmd)
    };
    let (a, b) = (spawn(), spawn());
    let mut ready = Vec::new();
    for sim in [&a, &b] {
        assert!(
            wait_until(Duration::from_secs(10), || sim.stdout().contains('\n')),
            "{}",
            sim.stderr()
        );
        let line: serde_json::Value =
            serde_json::from_str(sim.stdout().lines().next().unwrap()).unwrap();
        ready.push(line);
    }
    assert_ne!(ready[0]["api"], ready[1]["api"]);
    let listener = ready[0]["listeners"]["0b5c5a2e-8f37-4a57-8b7e-4c2f1b0d9e11"]
        .as_str()
        .unwrap();
    assert!(!listener.ends_with(":8080"), "{listener}");
    for key in ["api", "metadata", "admin"] {
        let url = ready[0][key].as_str().unwrap();
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        assert!(!url.ends_with(":8443") && !url.ends_with(":8775") && !url.ends_with(":8776"));
    }
    // --token-lifetime: expires_at - issued_at is 90 s.
    let body =
        serde_json::json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": "deployer", "password": "change-me", "domain": {"name": "acme"}}}},
        "scope": {"project": {"id": PROJECT}}}})
        .to_string();
    let api = ready[0]["api"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://");
    let answer = http(api, "POST", "/v3/auth/tokens", &body);
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    let json: serde_json::Value =
        serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let at = |k: &str| humantime::parse_rfc3339(json["token"][k].as_str().unwrap()).unwrap();
    let lifetime = at("expires_at").duration_since(at("issued_at")).unwrap();
    assert_eq!(lifetime.as_secs(), 90, "{json}");
    // --metadata-tokens required: a read without a session token is refused.
    let md = ready[0]["metadata"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://");
    let answer = http(md, "GET", "/openstack/latest/meta_data.json", "");
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
}
