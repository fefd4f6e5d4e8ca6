//! `elb-drain check` says when a stop would not work, and exits 78 then: a member address that is not
//! this machine's (the pool loses it while the drain watches this machine), a member port the census
//! does not count (its connections would be cut), no census that works in this process. Each case runs
//! the real binary against elb-sim and asserts the exit code, the text and the JSON.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::confine::{Confine, can_confine, confine};
use common::*;
use elb_sim::{Fault, FaultAction, Scenario, Sim};

const LOCAL: &str = "a1a1a1a1-0000-4000-8000-000000000001";
const PREFIX: &str = "a2a2a2a2-0000-4000-8000-000000000002";
const FOREIGN: &str = "a3a3a3a3-0000-4000-8000-000000000003";
/// TEST-NET-1: on no machine. elb-sim probes only loopback members and the pool has no monitor, so
/// no packet is ever sent to it.
const ELSEWHERE: &str = "192.0.2.10";

/// One pool: a member on 127.0.0.1 (held by lo), one on 127.0.0.2 (in lo's 127.0.0.0/8, held by no
/// interface) and one on an address of no machine, all on `port`.
async fn cloud(port: u16) -> Sim {
    let scenario = Scenario::builder()
        .project(PROJECT)
        .user("alice", "acme", "pw")
        .pool(POOL, |p| p)
        .member(POOL, LOCAL, "127.0.0.1", port)
        .member(POOL, PREFIX, "127.0.0.2", port)
        .member(POOL, FOREIGN, ELSEWHERE, port)
        .build();
    Sim::start(scenario).await.expect("elb-sim")
}

/// Password auth, the given `[[member]]`s by ID (with their `protocol_port` when given), and `drain`
/// lines for `[drain]`.
fn config(dir: &Path, sim: &Sim, members: &[(&str, Option<u16>)], drain: &str) -> PathBuf {
    let password = write_file(dir, "password", "pw");
    std::fs::set_permissions(
        &password,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let api = sim.api_url();
    let mut text = format!(
        "[cloud]\nproject_id = \"{PROJECT}\"\nelb_endpoint = \"{api}\"\niam_endpoint = \"{api}\"\n\
         metadata_endpoint = \"{}\"\nretry_deadline = \"3s\"\n\
         [auth]\nmethod = \"password\"\nuser = \"alice\"\ndomain = \"acme\"\npassword_file = \"{}\"\n\
         [drain]\nexclude_peers = []\nsettle = \"100ms\"\npoll_interval = \"20ms\"\n{drain}\n",
        sim.metadata_url(),
        password.display()
    );
    for (id, port) in members {
        text += &format!("[[member]]\npool_id = \"{POOL}\"\nmember_id = \"{id}\"\n");
        if let Some(p) = port {
            text += &format!("protocol_port = {p}\n");
        }
    }
    write_file(dir, "elb-drain.toml", &text)
}

struct Checked {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run_check(mut cmd: Command) -> Checked {
    let mut check = ProcGuard::spawn({
        cmd.env_remove("ELB_DRAIN_LOG");
        cmd
    });
    let exit = check
        .wait_timeout(Duration::from_secs(20))
        .expect("check exits");
    Checked {
        code: exit.code(),
        stdout: check.stdout(),
        stderr: check.stderr(),
    }
}

/// `check` and `check --json` on one config.
fn check_both(config: &Path) -> (Checked, serde_json::Value) {
    let text = run_check(agent(config, &["check"]));
    let json = run_check(agent(config, &["check", "--json"]));
    assert_eq!(text.code, json.code, "{}\n{}", text.stderr, json.stderr);
    let report = serde_json::from_str(&json.stdout).expect("JSON on stdout");
    (text, report)
}

fn membership<'a>(report: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    report["memberships"]
        .as_array()
        .expect("memberships")
        .iter()
        .find(|m| m["member_id"] == id)
        .unwrap_or_else(|| panic!("no membership {id} in {report:#}"))
}

fn problem_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("elb-drain: check: "))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_address_elsewhere_fails_check_and_is_warned_about_by_run() {
    let app = EchoServer::start();
    let port = app.addr.port();
    let sim = cloud(port).await;
    let dir = tempfile::tempdir().unwrap();

    // 127.0.0.1 is held by lo; 127.0.0.2 only lies in lo's prefix, which Linux routes locally.
    let here = config(
        dir.path(),
        &sim,
        &[(LOCAL, Some(port)), (PREFIX, Some(port))],
        "",
    );
    let (text, report) = check_both(&here);
    assert_eq!(text.code, Some(0), "{}", text.stderr);
    assert_eq!(report["ok"], true, "{report:#}");
    for id in [LOCAL, PREFIX] {
        assert_eq!(membership(&report, id)["address_interface"], "lo");
    }
    assert!(
        text.stdout
            .contains(&format!("{LOCAL} 127.0.0.1:{port} NO_MONITOR (on lo)")),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout
            .contains(&format!("{PREFIX} 127.0.0.2:{port} NO_MONITOR (on lo)")),
        "{}",
        text.stdout
    );
    assert!(text.stdout.contains("result:       ok"), "{}", text.stdout);

    // The address comes from the API (no address in the config): a member ID copied from another server.
    let elsewhere = config(
        dir.path(),
        &sim,
        &[(LOCAL, Some(port)), (FOREIGN, Some(port))],
        "",
    );
    let (text, report) = check_both(&elsewhere);
    assert_eq!(text.code, Some(78), "{}", text.stderr);
    assert_eq!(report["ok"], false);
    assert_eq!(membership(&report, LOCAL)["address_interface"], "lo");
    assert!(membership(&report, FOREIGN)["address_interface"].is_null());
    assert!(
        text.stdout.contains(&format!(
            "{FOREIGN} {ELSEWHERE}:{port} NO_MONITOR (NOT on this machine)"
        )),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout.contains("result:       PROBLEMS"),
        "{}",
        text.stdout
    );
    assert_eq!(
        problem_lines(&text.stderr),
        [format!(
            "elb-drain: check: address {ELSEWHERE} (pool {POOL} member {FOREIGN}) is on no interface of \
             this machine: a stop would take it out of the pool but wait for this machine's connections; \
             check cloud.address and [[member]] address"
        )],
        "{}",
        text.stderr
    );
    assert_eq!(report["problems"].as_array().map(Vec::len), Some(1));
    assert!(
        sim.request_log()
            .iter()
            .all(|r| r.method == "GET" || r.path.ends_with("/auth/tokens")),
        "check changes nothing: {:?}",
        sim.request_log()
    );

    // `run` says so in its log, but drains: the operator may know better (a NAT), and a server that
    // refused to start would never leave its pools.
    let mut run = ProcGuard::spawn(agent(&elsewhere, &["run"]));
    assert!(
        run.wait_stderr("ready", Duration::from_secs(10)),
        "{}",
        run.stderr()
    );
    let warning = run
        .stderr()
        .lines()
        .find(|l| l.contains("WARN") && l.contains(ELSEWHERE))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no warning about {ELSEWHERE}: {}", run.stderr()));
    assert!(
        warning.contains("no interface of this machine"),
        "{warning}"
    );
    assert!(
        !run.stderr()
            .lines()
            .any(|l| l.contains("WARN") && l.contains("address=127.0.0.1")),
        "{}",
        run.stderr()
    );
    run.signal(libc::SIGTERM);
    let exit = run.wait_timeout(Duration::from_secs(20)).expect("exits");
    assert_eq!(exit.code(), Some(0), "{}", run.stderr());
    assert!(!sim.member_exists(POOL, LOCAL) && !sim.member_exists(POOL, FOREIGN));
    assert!(sim.member_exists(POOL, PREFIX), "not in the config");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_ports_that_miss_a_members_port_fail_check() {
    let app = EchoServer::start();
    let port = app.addr.port();
    let sim = cloud(port).await;
    let dir = tempfile::tempdir().unwrap();
    let other = unclaimed_port();

    // Explicit ports that leave the member's out: its connections would be cut at the stop.
    let missing = config(
        dir.path(),
        &sim,
        &[(LOCAL, Some(port))],
        &format!("ports = [{other}]"),
    );
    let (text, report) = check_both(&missing);
    assert_eq!(text.code, Some(78), "{}", text.stderr);
    assert_eq!(membership(&report, LOCAL)["port_counted"], false);
    assert_eq!(report["drain_ports"], serde_json::json!([other]));
    assert_eq!(report["drain_ports_from"], "drain.ports");
    assert!(
        text.stdout.contains(&format!(
            "127.0.0.1:{port} NO_MONITOR (on lo), port NOT counted"
        )),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout
            .contains(&format!("drain ports:  {other} (drain.ports)")),
        "{}",
        text.stdout
    );
    assert_eq!(
        problem_lines(&text.stderr),
        [format!(
            "elb-drain: check: drain.ports [{other}] do not include port {port} (pool {POOL} member \
             {LOCAL}): its connections would not be waited for; add {port} to drain.ports (behind a \
             port translation, e.g. into a container, list both)"
        )],
        "{}",
        text.stderr
    );

    // Listing both (the documented way to keep a translated port) passes.
    let both = config(
        dir.path(),
        &sim,
        &[(LOCAL, Some(port))],
        &format!("ports = [{other}, {port}]"),
    );
    let (text, report) = check_both(&both);
    assert_eq!(text.code, Some(0), "{}", text.stderr);
    assert_eq!(membership(&report, LOCAL)["port_counted"], true);

    // No drain.ports: the members' ports count, and a [[member]] without protocol_port counts the
    // port the API knows for it (it used to add none, so a drain would not wait for its connections).
    let unknown = config(
        dir.path(),
        &sim,
        &[(LOCAL, None), (PREFIX, Some(other))],
        "",
    );
    let (text, report) = check_both(&unknown);
    assert_eq!(text.code, Some(0), "{}", text.stderr);
    assert_eq!(report["drain_ports_from"], "memberships");
    assert_eq!(membership(&report, LOCAL)["protocol_port"], port);
    assert_eq!(membership(&report, LOCAL)["port_counted"], true);
    assert!(problem_lines(&text.stderr).is_empty(), "{}", text.stderr);
    let mut both = [port, other];
    both.sort_unstable();
    assert!(
        text.stdout.contains(&format!(
            "drain ports:  {},{} (the memberships' ports)",
            both[0], both[1]
        )),
        "{}",
        text.stdout
    );

    // The API will not say either (ShowMember refused): nobody knows that member's port, so its
    // connections would not be counted.
    sim.inject_fault(
        Fault::new(
            "GET",
            &format!("/v3/{PROJECT}/elb/pools/{POOL}/members/{LOCAL}"),
            vec![FaultAction::Status {
                status: 403,
                retry_after: None,
            }],
        )
        .repeating(),
    );
    let (text, report) = check_both(&unknown);
    assert_eq!(text.code, Some(78), "{}", text.stderr);
    assert_eq!(membership(&report, LOCAL)["port_counted"], false);
    assert_eq!(
        problem_lines(&text.stderr),
        [format!(
            "elb-drain: check: pool {POOL} member {LOCAL}: its port is unknown (no protocol_port, and \
             the API did not say): its connections would not be counted; set protocol_port there, or \
             drain.ports"
        )],
        "{}",
        text.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_the_census_that_works_and_fails_when_none_does() {
    let app = EchoServer::start();
    let port = app.addr.port();
    let sim = cloud(port).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &sim, &[(LOCAL, Some(port))], "");
    // One connection to the application, so the census line shows a count that was really taken.
    let _conn = std::net::TcpStream::connect(app.addr).expect("connect");

    let (text, report) = check_both(&config);
    assert_eq!(text.code, Some(0), "{}", text.stderr);
    assert_eq!(report["census"]["backend"], "netlink", "{report:#}");
    assert_eq!(report["census"]["established"], 1, "{report:#}");
    assert!(
        text.stdout
            .contains("census:       netlink sock_diag, 1 established now"),
        "{}",
        text.stdout
    );

    // sock_diag refused (a locked-down container): /proc/net/tcp works, so a stop would too.
    assert!(
        can_confine(Confine::NoNetlink),
        "seccomp needs no privilege: this must work everywhere"
    );
    let confined = |how| {
        let mut text = agent(&config, &["check"]);
        confine(&mut text, how);
        let mut json = agent(&config, &["check", "--json"]);
        confine(&mut json, how);
        let text = run_check(text);
        let json = run_check(json);
        let report: serde_json::Value = serde_json::from_str(&json.stdout).expect("JSON");
        (text, report)
    };
    let (text, report) = confined(Confine::NoNetlink);
    assert_eq!(text.code, Some(0), "{}", text.stderr);
    assert_eq!(report["census"]["backend"], "procfs", "{report:#}");
    assert_eq!(report["census"]["established"], 1, "{report:#}");
    assert!(
        report["census"]["netlink_error"]
            .as_str()
            .is_some_and(|e| e.contains("Permission denied")),
        "{report:#}"
    );
    assert!(
        text.stdout.contains(
            "census:       /proc/net/tcp (netlink sock_diag refused here), 1 established now"
        ),
        "{}",
        text.stdout
    );

    // Neither: a drain could not count anything, so a stop would not wait for anyone.
    if !can_confine(Confine::NoNetlinkNoProc) {
        return;
    }
    let (text, report) = confined(Confine::NoNetlinkNoProc);
    assert_eq!(text.code, Some(78), "{}", text.stderr);
    assert!(report["census"]["backend"].is_null(), "{report:#}");
    assert!(
        text.stdout.contains("census:       NONE works here"),
        "{}",
        text.stdout
    );
    let problems = problem_lines(&text.stderr);
    assert_eq!(problems.len(), 1, "{}", text.stderr);
    assert!(
        problems[0].starts_with("elb-drain: check: census: neither netlink sock_diag (")
            && problems[0].contains("Permission denied")
            && problems[0].contains("nor /proc/net/tcp (census: /proc/net/tcp: No such file")
            && problems[0].ends_with("a drain could not count connections"),
        "{}",
        problems[0]
    );
    assert_eq!(report["ok"], false);
}
