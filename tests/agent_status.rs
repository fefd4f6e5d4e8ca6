//! The daemon's live status over its Unix socket (`elb-drain status`), and the progress bar that
//! `elb-drain drain` shows on a terminal (and only there).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use common::*;

fn status_json(config: &std::path::Path) -> serde_json::Value {
    let mut st = ProcGuard::spawn(agent(config, &["status", "--json"]));
    assert_eq!(
        st.wait_timeout(Duration::from_secs(10))
            .expect("exits")
            .code(),
        Some(0),
        "{}",
        st.stderr()
    );
    serde_json::from_str(&st.stdout()).expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_daemon_serving_then_draining() {
    let s = setup().await;
    let sock = s.dir.path().join("run/status.sock");
    let config = s.config("settle = \"100ms\"\npoll_interval = \"20ms\"\ntimeout = \"30s\"");
    let text = std::fs::read_to_string(&config).unwrap()
        + &format!("[status]\nsocket = \"{}\"\n", sock.display());
    std::fs::write(&config, text).unwrap();

    let v = status_json(&config);
    assert!(v["daemon"].is_null(), "no daemon yet: {v}");
    let mut agent = ProcGuard::spawn(agent(&config, &["run"]));
    assert!(
        agent.wait_stderr("status socket ready", Duration::from_secs(10)),
        "{}",
        agent.stderr()
    );
    assert_eq!(
        std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
        0o660
    );
    let v = status_json(&config);
    assert_eq!(v["daemon"]["phase"], "serving", "{v}");
    assert_eq!(v["daemon"]["memberships"][0]["member_id"], MEMBER);
    assert_eq!(v["memberships"][0]["health"], "ONLINE", "{v}");

    let held = s.connections_to_us(1);
    agent.signal(libc::SIGTERM);
    assert!(wait_until(Duration::from_secs(5), || !s
        .sim
        .member_exists(POOL, MEMBER)));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let v = status_json(&config);
        if v["daemon"]["phase"] == "draining" {
            assert_eq!(
                (
                    v["daemon"]["deregistered"].as_u64(),
                    v["daemon"]["established"].as_u64()
                ),
                (Some(1), Some(1)),
                "{v}"
            );
            assert!(
                v["daemon"]["deadline_in_s"]
                    .as_u64()
                    .is_some_and(|s| s <= 30)
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never draining: {v}");
    }
    drop(held);
    assert_eq!(
        agent
            .wait_timeout(Duration::from_secs(10))
            .expect("exits")
            .code(),
        Some(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_shows_a_progress_bar_on_a_terminal_and_plain_logs_otherwise() {
    let s = setup().await;
    let config = s.config("settle = \"100ms\"\npoll_interval = \"20ms\"\ntimeout = \"30s\"");
    let held = s.connections_to_us(2);
    // `script` gives the agent a pseudo-terminal; its output is captured in the typescript file.
    let typescript = s.dir.path().join("typescript");
    let cmdline = format!(
        "STATE_DIRECTORY={} ELB_DRAIN_LOG=warn {} --config {} drain",
        s.dir.path().display(),
        env!("CARGO_BIN_EXE_elb-drain"),
        config.display()
    );
    let mut cmd = Command::new("script");
    cmd.args(["-q", "-e", "-f", "-c", &cmdline])
        .arg(&typescript);
    let mut tty = ProcGuard::spawn(cmd);
    let shown = || std::fs::read_to_string(&typescript).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(10), || shown()
            .contains("] 2 connections left")),
        "{}",
        shown()
    );
    drop(held);
    assert_eq!(
        tty.wait_timeout(Duration::from_secs(10))
            .expect("exits")
            .code(),
        Some(0)
    );
    let screen = std::fs::read_to_string(&typescript).unwrap();
    assert!(screen.contains("] 2 connections left"), "{screen}");
    assert!(
        screen.contains("[##############################] 0 connections left"),
        "{screen}"
    );
    assert!(screen.contains("\rdrained"), "{screen}");

    // Not a terminal: no bar, log lines only.
    let mut plain = ProcGuard::spawn(agent(&config, &["drain"]));
    plain.wait_timeout(Duration::from_secs(10)).expect("exits");
    assert!(
        !plain.stderr().contains("connections left, ") && !plain.stderr().contains("\r"),
        "{}",
        plain.stderr()
    );
    assert!(
        plain.stderr().contains("drained: no connections left"),
        "{}",
        plain.stderr()
    );
}
