//! Putting the server back: `register` (idempotent, waits for health), `drain.mode = "weight0"` undone
//! by one update, the state file that makes it exact, and `[register] on_start` before READY.

mod common;

use std::time::Duration;

use common::*;
use elb_sim::{Fault, FaultAction};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_after_a_stop_recreates_the_member_once_and_waits_until_it_is_online() {
    let s =
        setup_with(|sc| sc.settings(|st| st.health_interval = Duration::from_millis(100))).await;
    let port = s.app.addr.port();
    // A config without member IDs: the membership is discovered by address and port.
    let config = s.config_by_address(
        &format!("settle = \"100ms\"\npoll_interval = \"20ms\"\nports = [{port}]"),
        "",
    );

    let mut drain = ProcGuard::spawn(agent(&config, &["drain"]));
    assert_eq!(
        drain
            .wait_timeout(Duration::from_secs(15))
            .expect("exits")
            .code(),
        Some(0),
        "{}",
        drain.stderr()
    );
    assert!(s.ours().is_empty(), "deregistered");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(s.dir.path().join("state.json")).unwrap())
            .unwrap();
    assert_eq!(state["memberships"][0]["removed"], "delete", "{state}");

    for round in 0..2 {
        let mut reg = ProcGuard::spawn(agent(&config, &["register", "--json"]));
        assert_eq!(
            reg.wait_timeout(Duration::from_secs(15))
                .expect("exits")
                .code(),
            Some(0),
            "{}",
            reg.stderr()
        );
        let out: serde_json::Value = serde_json::from_str(&reg.stdout()).unwrap();
        let action = out["registered"][0]["action"].as_str().unwrap().to_owned();
        assert_eq!(action, if round == 0 { "created" } else { "reused" });
        let members = s.ours();
        assert_eq!(
            members.len(),
            1,
            "no duplicate after round {round}: {members:?}"
        );
        assert_eq!(
            members[0]["operating_status"], "ONLINE",
            "register waited for health"
        );
    }
    assert!(
        s.sim
            .request_log()
            .iter()
            .filter(|r| r.method == "POST" && r.service == "elb")
            .count()
            == 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight0_mode_keeps_the_membership_and_register_restores_the_weight() {
    let s = setup_with(|mut sc| {
        sc.member
            .iter_mut()
            .find(|m| m.id.as_deref() == Some(MEMBER))
            .unwrap()
            .weight = 7;
        sc
    })
    .await;
    let config = s.config("settle = \"100ms\"\npoll_interval = \"20ms\"\nmode = \"weight0\"");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "protocol_port =",
        "address = \"127.0.0.1\"\nprotocol_port =",
    );
    std::fs::write(&config, text).unwrap();
    let held = s.connections_to_us(1);
    let mut drain = ProcGuard::spawn(agent(&config, &["drain"]));
    assert!(wait_until(Duration::from_secs(5), || s
        .ours()
        .first()
        .is_some_and(|m| m["weight"] == 0)));
    // Weight 0: no new connections to us, the old one keeps flowing.
    let before = *s.app.accepted.lock().unwrap();
    for i in 0..4 {
        let mut c = s.lb();
        echo(&mut c, &format!("{i}")).unwrap();
    }
    assert_eq!(*s.app.accepted.lock().unwrap(), before);
    drop(held);
    assert_eq!(
        drain
            .wait_timeout(Duration::from_secs(15))
            .expect("exits")
            .code(),
        Some(0),
        "{}",
        drain.stderr()
    );
    assert!(s.sim.member_exists(POOL, MEMBER), "the membership is kept");
    assert!(s.sim.request_log().iter().all(|r| r.method != "DELETE"));

    let mut reg = ProcGuard::spawn(agent(&config, &["register"]));
    assert_eq!(
        reg.wait_timeout(Duration::from_secs(15))
            .expect("exits")
            .code(),
        Some(0),
        "{}",
        reg.stderr()
    );
    assert!(reg.stdout().contains("weight restored"), "{}", reg.stdout());
    assert_eq!(s.ours()[0]["weight"], 7, "exactly the weight it had");
    assert_eq!(s.ours()[0]["id"], MEMBER, "one UPDATE, same membership");
}

/// elb-sim without our membership, health-checking every 100 ms, and a config that registers us on
/// `port` (where nothing listens until the test starts the application there), with `register` lines.
async fn unregistered_on(port: u16, register: &str) -> (Setup, std::path::PathBuf) {
    let s = setup_with(|mut sc| {
        sc.member.retain(|m| m.id.as_deref() != Some(MEMBER));
        sc.settings(|st| st.health_interval = Duration::from_millis(100))
    })
    .await;
    let config = s.config_by_address(
        &format!("settle = \"100ms\"\npoll_interval = \"20ms\"\nports = [{port}]"),
        &format!("[register]\n{register}\n"),
    );
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("protocol_port = {}\n", s.app.addr.port()),
        &format!("protocol_port = {port}\n"),
    );
    std::fs::write(&config, text).unwrap();
    (s, config)
}

/// The members at `port`.
fn at_port(s: &Setup, port: u16) -> Vec<serde_json::Value> {
    s.sim
        .members(POOL)
        .into_iter()
        .filter(|m| m["protocol_port"] == port)
        .collect()
}

/// The agent's ShowMember requests for `member`, as elb-sim logged them.
fn shows(s: &Setup, member: &str) -> Vec<elb_sim::LoggedRequest> {
    s.sim
        .request_log()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.ends_with(&format!("/members/{member}")))
        .collect()
}

/// `[register] on_start` with a real NOTIFY_SOCKET: the membership is created while the application is
/// still down, so elb-sim reports it OFFLINE and the agent keeps asking, without READY; READY=1 comes
/// only after the application listens and elb-sim's health check has made the member ONLINE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_on_start_reports_ready_only_once_the_member_is_online() {
    let port = unclaimed_port();
    let (s, config) = unregistered_on(
        port,
        "on_start = true\nwait_listening = false\nhealthy_timeout = \"20s\"",
    )
    .await;
    let notify = NotifySocket::bind(s.dir.path());
    let mut cmd = agent(&config, &["run"]);
    cmd.env("NOTIFY_SOCKET", &notify.path);
    let mut agent = ProcGuard::spawn(cmd);
    assert!(
        wait_until(Duration::from_secs(15), || at_port(&s, port).len() == 1),
        "{}",
        agent.stderr()
    );
    let member = at_port(&s, port)[0]["id"].as_str().unwrap().to_owned();
    // Health-checked (OFFLINE: nothing listens), and asked about again after that: still no READY.
    assert!(
        wait_until(
            Duration::from_secs(10),
            || at_port(&s, port)[0]["operating_status"] == "OFFLINE"
        ),
        "{:?}",
        at_port(&s, port)
    );
    let asked = shows(&s, &member).len();
    assert!(
        wait_until(Duration::from_secs(10), || shows(&s, &member).len() > asked),
        "{}",
        agent.stderr()
    );
    assert_eq!(at_port(&s, port)[0]["operating_status"], "OFFLINE");
    assert!(!notify.has("READY=1"), "{:?}", notify.all());

    let listening = mono_ns();
    let _app = EchoServer::start_at("127.0.0.1", port);
    assert!(
        wait_until(Duration::from_secs(15), || notify.has("READY=1")),
        "{:?}\n{}",
        notify.all(),
        agent.stderr()
    );
    let ready = notify.sent_at("READY=1").unwrap();
    assert_eq!(at_port(&s, port)[0]["operating_status"], "ONLINE");
    // The answer READY followed was to a ShowMember asked after the application listened: none before
    // could have said ONLINE.
    let last_show = shows(&s, &member)
        .into_iter()
        .filter(|r| r.mono_ns < ready)
        .map(|r| r.mono_ns)
        .max()
        .unwrap();
    assert!(
        listening < last_show && last_show < ready,
        "listening at {listening}, last ShowMember at {last_show}, READY at {ready} (ns)"
    );
    assert_eq!(
        notify.all(),
        [
            "STATUS=starting: resolving memberships\n",
            "STATUS=starting: registering\n",
            "READY=1\nSTATUS=serving; 1 memberships\n",
        ]
    );
    // Log lines reach stderr through the agent's log thread, READY=1 the socket at once: the line
    // logged before READY can arrive after it (seen in CI with the machine loaded).
    assert!(
        agent.wait_stderr("ready: waiting", Duration::from_secs(5)),
        "{}",
        agent.stderr()
    );
    let err = agent.stderr();
    assert!(
        err.find("member is healthy").unwrap() < err.find("ready: waiting").unwrap(),
        "{err}"
    );
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
    assert!(
        at_port(&s, port).is_empty(),
        "the registered member is the one drained"
    );
}

/// `[register] wait_listening` (the default): the CreateMember reaches the API only once the
/// application listens on its port; none is sent while it does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_creates_the_member_only_once_the_application_listens() {
    let port = unclaimed_port();
    let (s, config) = unregistered_on(port, "healthy_timeout = \"10s\"").await;
    let mut reg = ProcGuard::spawn(agent(&config, &["register", "--json"]));
    assert!(
        reg.wait_stderr(
            "waiting for the application to listen",
            Duration::from_secs(15)
        ),
        "{}",
        reg.stderr()
    );
    let creates = || -> Vec<elb_sim::LoggedRequest> {
        s.sim
            .request_log()
            .into_iter()
            .filter(|r| r.method == "POST" && r.service == "elb")
            .collect()
    };
    // Nothing listens: nothing is created, however long it waits.
    assert!(
        !wait_until(Duration::from_millis(1500), || !creates().is_empty()),
        "created before the application listened: {}",
        reg.stderr()
    );
    assert!(reg.is_running(), "{}", reg.stderr());

    let listening = mono_ns();
    let _app = EchoServer::start_at("127.0.0.1", port);
    assert_eq!(
        reg.wait_timeout(Duration::from_secs(15))
            .expect("exits")
            .code(),
        Some(0),
        "{}",
        reg.stderr()
    );
    let created = creates();
    assert_eq!(created.len(), 1, "{}", reg.stderr());
    assert!(
        created[0].mono_ns > listening,
        "CreateMember after the listen"
    );
    let out: serde_json::Value = serde_json::from_str(&reg.stdout()).unwrap();
    assert_eq!(out["registered"][0]["action"], "created", "{out}");
    assert_eq!(at_port(&s, port)[0]["operating_status"], "ONLINE");
}

/// A member that never gets healthy: `register` gives up after `healthy_timeout`, exits 75 and says
/// which member did not come ONLINE. The membership it made stays (the next `register` reuses it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_never_gets_healthy_fails_register_with_75_naming_it() {
    let port = unclaimed_port();
    let (s, config) =
        unregistered_on(port, "wait_listening = false\nhealthy_timeout = \"2s\"").await;
    let mut reg = ProcGuard::spawn(agent(&config, &["register"]));
    let exit = reg.wait_timeout(Duration::from_secs(15)).expect("exits");
    assert_eq!(exit.code(), Some(75), "{}", reg.stderr());
    let members = at_port(&s, port);
    assert_eq!(members.len(), 1, "{members:?}");
    assert_ne!(members[0]["operating_status"], "ONLINE");
    let id = members[0]["id"].as_str().unwrap();
    let err = reg.stderr();
    let line = err
        .lines()
        .find(|l| l.starts_with("elb-drain: register:"))
        .unwrap_or_else(|| panic!("no error line: {err}"));
    assert!(
        line.contains(&format!("member {id} ONLINE not within 2s")),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_healthy_holds_the_deregistration_until_another_member_is_healthy() {
    let dead = unclaimed_port();
    let s = setup_with(|mut sc| {
        // The other server is down: its member points at a port nobody listens on.
        sc.member
            .iter_mut()
            .find(|m| m.id.as_deref() == Some(OTHER))
            .unwrap()
            .protocol_port = dead;
        sc.settings(|st| st.health_interval = Duration::from_millis(100))
    })
    .await;
    assert!(wait_until(Duration::from_secs(5), || {
        s.sim
            .members(POOL)
            .iter()
            .any(|m| m["id"] == OTHER && m["operating_status"] == "OFFLINE")
    }));
    let config =
        s.config("settle = \"100ms\"\npoll_interval = \"20ms\"\nmin_healthy_wait = \"20s\"");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("protocol_port =", "min_healthy = 1\nprotocol_port =");
    std::fs::write(&config, text).unwrap();
    let mut agent = ProcGuard::spawn(agent(&config, &["drain"]));
    assert!(
        agent.wait_stderr("holding the deregistration", Duration::from_secs(10)),
        "{}",
        agent.stderr()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        s.sim.member_exists(POOL, MEMBER),
        "not deregistered while it would empty the pool"
    );
    // The other server comes back.
    let other_port = s.other_app.addr.port();
    s.sim.shared().lock_for_tests(|inner| {
        inner
            .members
            .iter_mut()
            .find(|m| m.id == OTHER)
            .unwrap()
            .protocol_port = other_port
    });
    assert_eq!(
        agent
            .wait_timeout(Duration::from_secs(15))
            .expect("exits")
            .code(),
        Some(0),
        "{}",
        agent.stderr()
    );
    assert!(!s.sim.member_exists(POOL, MEMBER));
    assert_eq!(deletes(&s.sim).len(), 1);
}

/// The cloud made the membership but its answer was lost (cut short, or garbled): the retry is refused
/// as a duplicate, the agent finds the membership it made and reuses it. One membership, exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_whose_answer_was_lost_is_not_made_twice() {
    for lost in [FaultAction::Truncated, FaultAction::Malformed] {
        let s = setup_with(|mut sc| {
            sc.member.retain(|m| m.id.as_deref() != Some(MEMBER));
            sc
        })
        .await;
        let config = s.config_by_address("settle = \"100ms\"\npoll_interval = \"20ms\"", "");
        s.sim.inject_fault(Fault::new(
            "POST",
            "/v3/*/elb/pools/*/members",
            vec![FaultAction::Applied {
                then: Box::new(lost.clone()),
            }],
        ));
        let mut reg = ProcGuard::spawn(agent(&config, &["register", "--json"]));
        let exit = reg.wait_timeout(Duration::from_secs(15)).expect("exits");
        assert_eq!(exit.code(), Some(0), "{lost:?}: {}", reg.stderr());
        let members = s.ours();
        assert_eq!(members.len(), 1, "{lost:?}: {members:?}");
        let out: serde_json::Value = serde_json::from_str(&reg.stdout()).unwrap();
        assert_eq!(out["registered"][0]["member_id"], members[0]["id"], "{out}");
        let creates: Vec<u16> = s
            .sim
            .request_log()
            .iter()
            .filter(|r| r.method == "POST" && r.service == "elb")
            .map(|r| r.status)
            .collect();
        assert_eq!(creates, [200, 409], "{lost:?}: the retry met the duplicate");
    }
}

/// `register`, then `run` registering on start, with a NOTIFY_SOCKET nobody reads at all (a manager
/// stalled before the service started): both register as usual, READY is given up after its retries
/// (said once in the log, not per message), and the stop ends in the usual time with exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_under_a_notify_socket_never_read_registers_and_stops_as_usual() {
    let port = unclaimed_port();
    let (s, config) = unregistered_on(
        port,
        "on_start = true\nwait_listening = false\nhealthy_timeout = \"20s\"",
    )
    .await;
    let _app = EchoServer::start_at("127.0.0.1", port);
    let notify = NotifySocket::bind_stalling(s.dir.path(), "");
    assert!(wait_until(Duration::from_secs(5), || notify.stalled()));

    let mut reg = agent(&config, &["register"]);
    reg.env("NOTIFY_SOCKET", &notify.path);
    let mut reg = ProcGuard::spawn(reg);
    let exit = reg.wait_timeout(Duration::from_secs(15)).expect("exits");
    assert_eq!(exit.code(), Some(0), "{}", reg.stderr());
    assert_eq!(at_port(&s, port).len(), 1);

    let mut cmd = agent(&config, &["run"]);
    cmd.env("NOTIFY_SOCKET", &notify.path);
    let mut agent = ProcGuard::spawn(cmd);
    assert!(
        agent.wait_stderr("ready: waiting", Duration::from_secs(15)),
        "{}",
        agent.stderr()
    );
    agent.signal(libc::SIGTERM);
    let exit = agent.wait_timeout(Duration::from_secs(10)).expect("exits");
    assert_eq!(exit.code(), Some(0), "{}", agent.stderr());
    assert!(at_port(&s, port).is_empty(), "drained");
    let err = agent.stderr();
    assert_eq!(
        err.matches("notify socket: messages to the service manager were dropped")
            .count(),
        1,
        "{err}"
    );
    assert!(notify.all().is_empty(), "nothing was read");
}
