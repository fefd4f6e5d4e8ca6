//! systemd's notify protocol, with a real NOTIFY_SOCKET the test binds: the exact sequence of messages
//! the agent sends while starting, draining and exiting.

mod common;

use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

struct NotifySocket {
    path: std::path::PathBuf,
    messages: Arc<Mutex<Vec<String>>>,
}

impl NotifySocket {
    fn bind(dir: &std::path::Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let into = messages.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                into.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        });
        NotifySocket { path, messages }
    }

    fn all(&self) -> Vec<String> {
        self.messages.lock().unwrap().clone()
    }

    fn has(&self, needle: &str) -> bool {
        self.all().iter().any(|m| m.contains(needle))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_status_stopping_extend_and_the_final_status() {
    let s = setup().await;
    let notify = NotifySocket::bind(s.dir.path());
    let config = s.config("settle = \"200ms\"\npoll_interval = \"20ms\"\ntimeout = \"30s\"");
    let held = s.connections_to_us(2);
    let mut cmd = agent(&config, &["run"]);
    cmd.env("NOTIFY_SOCKET", &notify.path);
    let mut agent = ProcGuard::spawn(cmd);
    assert!(
        wait_until(Duration::from_secs(10), || notify.has("READY=1")),
        "{:?}\n{}",
        notify.all(),
        agent.stderr()
    );
    let ready = notify
        .all()
        .into_iter()
        .find(|m| m.contains("READY=1"))
        .unwrap();
    assert!(ready.contains("STATUS=serving; 1 memberships"), "{ready}");
    assert!(!notify.has("STOPPING=1"));
    // READY only once memberships and the credential are in hand: the token was fetched before it.
    assert!(
        s.sim
            .request_log()
            .iter()
            .any(|r| r.service == "iam" && r.status == 201)
    );

    agent.signal(libc::SIGTERM);
    assert!(wait_until(Duration::from_secs(5), || notify.has("STOPPING=1")));
    assert!(
        wait_until(Duration::from_secs(5), || notify
            .has("draining: 2 connections")),
        "{:?}",
        notify.all()
    );
    let mut held = held;
    held.pop();
    assert!(
        wait_until(Duration::from_secs(5), || notify
            .has("draining: 1 connections")),
        "{:?}",
        notify.all()
    );
    // Keep the last connection a little over a second, so the extension is renewed while progressing.
    std::thread::sleep(Duration::from_millis(1200));
    drop(held);
    assert_eq!(
        agent
            .wait_timeout(Duration::from_secs(10))
            .expect("exits")
            .code(),
        Some(0),
        "{}",
        agent.stderr()
    );

    let all = notify.all();
    let pos = |needle: &str| {
        all.iter()
            .position(|m| m.contains(needle))
            .unwrap_or_else(|| panic!("no {needle}: {all:?}"))
    };
    assert!(pos("READY=1") < pos("STOPPING=1"));
    assert!(pos("STOPPING=1") < pos("EXTEND_TIMEOUT_USEC="));
    assert!(pos("STATUS=deregistered 1/1") > pos("STOPPING=1"));
    assert!(pos("draining: 2 connections") < pos("draining: 1 connections"));
    assert_eq!(all.last().unwrap().trim_end(), "STATUS=drained", "{all:?}");
    let statuses: Vec<&String> = all.iter().filter(|m| m.starts_with("STATUS=")).collect();
    assert!(
        statuses.windows(2).all(|w| w[0] != w[1]),
        "an unchanged STATUS is not repeated: {all:?}"
    );
    let extend: Vec<u64> = all
        .iter()
        .filter_map(|m| m.strip_prefix("EXTEND_TIMEOUT_USEC="))
        .map(|v| v.trim().parse().unwrap())
        .collect();
    assert!(extend.len() >= 2, "renewed while progressing: {all:?}");
    assert!(
        extend.iter().all(|us| *us > 0 && *us <= 30_000_000),
        "{extend:?}"
    );
    let status = all.iter().find(|m| m.contains("left")).unwrap();
    assert!(status.contains("s left"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_pings_at_half_the_interval_only_when_asked() {
    let s = setup().await;
    let notify = NotifySocket::bind(s.dir.path());
    let config = s.config("settle = \"100ms\"\npoll_interval = \"20ms\"");
    // systemd sets WATCHDOG_PID to the main process: a shell that execs the agent knows it ($$).
    let base = agent(&config, &["run"]);
    let mut cmd = std::process::Command::new("sh");
    cmd.env_clear()
        .envs(base.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "200000")
        .args([
            "-c",
            "export WATCHDOG_PID=$$; exec \"$0\" \"$@\"",
            env!("CARGO_BIN_EXE_elb-drain"),
        ])
        .args(base.get_args());
    let agent = ProcGuard::spawn(cmd);
    assert!(
        wait_until(Duration::from_secs(10), || notify.has("READY=1")),
        "{}",
        agent.stderr()
    );
    let pings = || {
        notify
            .all()
            .iter()
            .filter(|m| m.trim_end() == "WATCHDOG=1")
            .count()
    };
    let start = pings();
    std::thread::sleep(Duration::from_millis(1000));
    let n = pings() - start;
    assert!(
        (5..=15).contains(&n),
        "{n} pings in 1 s at WatchdogSec=200ms (expected about 10)"
    );
    drop(agent);

    // Without WatchdogSec: no pings at all (no periodic wake-ups).
    let sub = s.dir.path().join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    let notify2 = NotifySocket::bind(&sub);
    let mut cmd = common::agent(&config, &["run"]);
    cmd.env("NOTIFY_SOCKET", &notify2.path);
    let agent = ProcGuard::spawn(cmd);
    assert!(
        wait_until(Duration::from_secs(10), || notify2.has("READY=1")),
        "{}",
        agent.stderr()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(!notify2.has("WATCHDOG=1"), "{:?}", notify2.all());
}
