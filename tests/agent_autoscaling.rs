//! Scale-in: Auto Scaling removes the instance's members, then holds it in a HANGING lifecycle hook.
//! The agent notices the hook, drains, keeps the hook alive with EXTEND while the drain progresses, and
//! answers CONTINUE right after the last connection closed (or the configured result on failure).

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use elb_sim::scenario::{Instance, ScalingGroup};
use elb_sim::{Fault, FaultAction};

const INSTANCE: &str = "6a7bd0c6-9e22-4d9f-a9c2-0d11ee3c0e55";
const GROUP: &str = "7b8bd0c6-9e22-4d9f-a9c2-0d11ee3c0e55";

/// The hook's timeout in [`scaling_setup`].
const HOOK_TIMEOUT: Duration = Duration::from_secs(2);
/// `[autoscaling] poll_interval` in [`scaling_setup`].
const POLL: Duration = Duration::from_millis(200);

async fn scaling_setup() -> (Setup, std::path::PathBuf) {
    scaling_setup_with(
        HOOK_TIMEOUT,
        &[],
        "timeout = \"30s\"",
        "extend_margin = \"1s\"",
    )
    .await
}

/// elb-sim with our member on an instance of a scaling group whose hook (`drain-hook`, after
/// `other_hooks` in the listing) times out after `hook_timeout` (an EXTEND adds 2 s), and a config
/// with `drain` and `autoscaling` lines added.
async fn scaling_setup_with(
    hook_timeout: Duration,
    other_hooks: &[&str],
    drain: &str,
    autoscaling: &str,
) -> (Setup, std::path::PathBuf) {
    let s = setup_with(|mut sc| {
        if let Some(m) = sc
            .member
            .iter_mut()
            .find(|m| m.id.as_deref() == Some(MEMBER))
        {
            m.instance_id = Some(INSTANCE.into());
        }
        sc.settings.hook_extend = Duration::from_secs(2);
        sc.instance(Instance {
            uuid: INSTANCE.into(),
            project_id: PROJECT.into(),
            local_ipv4: "127.0.0.9".into(),
            region_id: None,
            hostname: "web-1".into(),
            name: "web-1".into(),
            agency: false,
            scaling_group_id: Some(GROUP.into()),
        })
        .scaling_group(ScalingGroup {
            id: GROUP.into(),
            project_id: PROJECT.into(),
            hook_name: "drain-hook".into(),
            default_result: "ABANDON".into(),
            hook_timeout,
            other_hooks: other_hooks.iter().map(|h| h.to_string()).collect(),
            launching_hooks: Vec::new(),
        })
    })
    .await;
    let config = s.config(&format!(
        "settle = \"200ms\"\npoll_interval = \"20ms\"\n{drain}"
    ));
    let text = std::fs::read_to_string(&config).unwrap().replacen(
        "[cloud]\n",
        &format!(
            "[cloud]\nas_endpoint = \"{}\"\ninstance_id = \"{INSTANCE}\"\n",
            s.sim.api_url()
        ),
        1,
    ) + &format!(
        "[autoscaling]\nscaling_group_id = \"{GROUP}\"\npoll_interval = \"{}\"\n{autoscaling}\n",
        humantime::format_duration(POLL)
    );
    std::fs::write(&config, text).unwrap();
    (s, config)
}

/// `run` on `config`, ready: waiting for SIGTERM or a hook.
fn serving(config: &std::path::Path) -> ProcGuard {
    let agent = ProcGuard::spawn(agent(config, &["run"]));
    assert!(
        agent.wait_stderr("ready", Duration::from_secs(10)),
        "{}",
        agent.stderr()
    );
    agent
}

/// The group gets a launching hook, `warm-up`, and our instance is launched: it hangs.
fn launch_with_warm_up_hook(s: &Setup) {
    s.sim
        .shared()
        .lock_for_tests(|inner| inner.groups[0].launching_hooks = vec!["warm-up".into()]);
    s.sim.start_launch(INSTANCE).unwrap();
}

/// From now on ListLifeCycleHooks answers 503, as a struggling API does.
fn group_hooks_unreadable(s: &Setup) {
    s.sim.inject_fault(
        Fault::new(
            "GET",
            "/autoscaling-api/v1/*/scaling_lifecycle_hook/*/list",
            vec![FaultAction::Status {
                status: 503,
                retry_after: None,
            }],
        )
        .repeating(),
    );
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_hook_drains_is_extended_and_is_continued_after_the_last_connection() {
    let (s, config) = scaling_setup().await;
    let held = s.connections_to_us(1);
    let notify = NotifySocket::bind(s.dir.path());
    let mut cmd = agent(&config, &["run"]);
    cmd.env("NOTIFY_SOCKET", &notify.path);
    let mut agent = ProcGuard::spawn(cmd);
    assert!(
        wait_until(Duration::from_secs(10), || notify.has("READY=1")),
        "{}",
        agent.stderr()
    );

    s.sim.start_scale_in(INSTANCE).unwrap();
    // When elb-sim put the hook in HANGING: its deadline is that moment plus the hook's timeout.
    let hanging_at = s.sim.hooks(GROUP)[0].deadline - HOOK_TIMEOUT;
    assert!(
        !s.sim.member_exists(POOL, MEMBER),
        "Auto Scaling removed the member first"
    );
    // Within one poll interval the agent is draining: its first act, the DELETE, reaches elb-sim no
    // later than a poll interval after the hook hung, plus a listing and the DELETE's own trip (under
    // 10 ms measured, the hook hanging just after a poll; 100 ms allowed).
    assert!(
        wait_until(Duration::from_secs(5), || !deletes(&s.sim).is_empty()),
        "{}",
        agent.stderr()
    );
    let took = deletes(&s.sim)[0]
        .at
        .duration_since(hanging_at)
        .expect("the DELETE followed the hook");
    assert!(
        took <= POLL + Duration::from_millis(100),
        "DELETE {took:?} after the hook hung (poll interval {POLL:?})\n{}",
        agent.stderr()
    );
    assert!(
        agent.wait_stderr("lifecycle hook HANGING", Duration::from_secs(1)),
        "{}",
        agent.stderr()
    );
    // systemd sees the hook's drain as any other stop.
    assert!(
        wait_until(Duration::from_secs(5), || notify
            .has("STATUS=deregistered 1/1, draining: 1 connections, ")),
        "{:?}",
        notify.all()
    );
    assert!(
        notify.sent_at("STOPPING=1").unwrap() > notify.sent_at("READY=1").unwrap(),
        "{:?}",
        notify.all()
    );
    // The hook times out after 2 s: the agent must extend it while the connection is open.
    assert!(
        wait_until(Duration::from_secs(6), || s.sim.hooks(GROUP)[0]
            .callbacks
            .iter()
            .any(|(r, _)| r == "EXTEND")),
        "never extended:\n{}",
        agent.stderr()
    );
    std::thread::sleep(Duration::from_millis(2500)); // past the original hook deadline
    assert!(agent.is_running(), "{}", agent.stderr());
    assert_eq!(
        s.sim.hooks(GROUP)[0].status,
        "HANGING",
        "still held: not answered while a connection is open"
    );
    let closed = SystemTime::now();
    drop(held);
    let exit = agent
        .wait_timeout(Duration::from_secs(10))
        .expect("exits after answering");
    assert_eq!(exit.code(), Some(0), "{}", agent.stderr());

    let hook = &s.sim.hooks(GROUP)[0];
    assert_eq!(
        (hook.status.as_str(), hook.timed_out),
        ("CONTINUE", false),
        "{hook:?}"
    );
    let (last, at) = hook.callbacks.last().unwrap();
    assert_eq!(last, "CONTINUE");
    assert!(
        *at >= unix(closed),
        "CONTINUE only after the last connection closed"
    );
    assert!(
        *at - unix(closed) < 1.5,
        "and right after it: {:.3} s",
        at - unix(closed)
    );
    assert!(
        hook.callbacks
            .iter()
            .filter(|(r, _)| r == "CONTINUE")
            .count()
            == 1,
        "answered once: {hook:?}"
    );
    let deletes = deletes(&s.sim);
    assert_eq!(
        deletes.iter().map(|r| r.status).collect::<Vec<_>>(),
        [404],
        "the member was already gone"
    );
    for needle in ["lifecycle hook extended", "lifecycle hook answered"] {
        assert!(
            agent.stderr().contains(needle),
            "logged: {needle}\n{}",
            agent.stderr()
        );
    }
    notify.caught_up();
    assert_eq!(
        notify.all().last().map(|m| m.trim_end()),
        Some("STATUS=drained"),
        "{:?}",
        notify.all()
    );
}

/// Deregistration impossible (every DELETE 503): the drain is waited out, the hook gets the configured
/// `on_failure` (the default, abandon, and continue), never its own default by timing out, and the exit
/// code is 69 either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_deregistration_fails_the_configured_result_is_sent_and_the_exit_code_says_why() {
    for (on_failure, result) in [("", "ABANDON"), ("on_failure = \"continue\"", "CONTINUE")] {
        let (s, config) = scaling_setup_with(
            HOOK_TIMEOUT,
            &[],
            "timeout = \"30s\"",
            &format!("extend_margin = \"1s\"\n{on_failure}"),
        )
        .await;
        s.sim.inject_fault(
            Fault::new(
                "DELETE",
                "/v3/*/elb/pools/*/members/*",
                vec![FaultAction::Status {
                    status: 503,
                    retry_after: None,
                }],
            )
            .repeating(),
        );
        let mut agent = serving(&config);
        s.sim.start_scale_in(INSTANCE).unwrap();
        let exit = agent.wait_timeout(Duration::from_secs(20)).expect("exits");
        assert_eq!(exit.code(), Some(69), "{result}: {}", agent.stderr());
        let hook = &s.sim.hooks(GROUP)[0];
        assert_eq!(
            (hook.status.as_str(), hook.timed_out),
            (result, false),
            "{hook:?}"
        );
        assert_eq!(hook.callbacks.last().unwrap().0, result);
        assert!(
            agent.stderr().contains("deregistration failed"),
            "{}",
            agent.stderr()
        );
    }
}

/// The drain's own deadline (3 s) comes before the hook's timeout (5 s): the hook is not extended (the
/// decision is logged, when the hook comes within the 3 s margin), and at the deadline, with the
/// connection still open, it is answered CONTINUE and the agent exits 75. (The API gives the hook's
/// deadline to the second, so the agent may see it up to 1 s early: 2 s apart keeps the case clear.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_deadline_before_the_hooks_timeout_continues_at_the_deadline_without_extending() {
    let (s, config) = scaling_setup_with(
        Duration::from_secs(5),
        &[],
        "timeout = \"3s\"",
        "extend_margin = \"3s\"",
    )
    .await;
    let held = s.connections_to_us(1);
    let mut agent = serving(&config);
    s.sim.start_scale_in(INSTANCE).unwrap();
    let hanging_at = s.sim.hooks(GROUP)[0].deadline - Duration::from_secs(5);
    let exit = agent.wait_timeout(Duration::from_secs(15)).expect("exits");
    assert_eq!(exit.code(), Some(75), "{}", agent.stderr());
    assert_eq!(s.sim.live_connections(MEMBER), 1, "still open at the end");
    let hook = &s.sim.hooks(GROUP)[0];
    assert_eq!(
        (hook.status.as_str(), hook.timed_out),
        ("CONTINUE", false),
        "{hook:?}"
    );
    let results: Vec<&str> = hook.callbacks.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(results, ["CONTINUE"], "no EXTEND: {hook:?}");
    let at = hook.callbacks[0].1;
    assert!(
        at >= unix(hanging_at) + 3.0,
        "answered at the drain deadline, not before: {:.3} s after the hook hung",
        at - unix(hanging_at)
    );
    let err = agent.stderr();
    assert!(
        err.contains("hook outlasts the drain deadline: no EXTEND needed"),
        "the decision is logged: {err}"
    );
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_already_answered_is_not_answered_again_and_sigterm_joins_the_drain() {
    let (s, config) = scaling_setup().await;
    let held = s.connections_to_us(1);
    let mut agent = serving(&config);
    s.sim.start_scale_in(INSTANCE).unwrap();
    assert!(
        agent.wait_stderr("lifecycle hook HANGING", Duration::from_secs(3)),
        "{}",
        agent.stderr()
    );
    // The scale-in shuts the server down: SIGTERM joins the drain that is already running.
    agent.signal(libc::SIGTERM);
    assert!(
        agent.wait_stderr("already draining", Duration::from_secs(3)),
        "{}",
        agent.stderr()
    );
    // Someone else answers the hook meanwhile.
    let key = s.sim.hooks(GROUP)[0].lifecycle_action_key.clone();
    s.sim
        .shared()
        .lock_for_tests(|inner| inner.hooks[0].status = "CONTINUE".into());
    drop(held);
    let exit = agent.wait_timeout(Duration::from_secs(10)).expect("exits");
    assert_eq!(exit.code(), Some(0), "{}", agent.stderr());
    assert!(agent.stderr().contains("AS.7042"), "{}", agent.stderr());
    assert_eq!(deletes(&s.sim).len(), 1, "one drain, one DELETE");
    assert_eq!(s.sim.hooks(GROUP)[0].lifecycle_action_key, key);
}

/// A scale-in under a manager that stopped reading after READY (its notify queue full): the hook's
/// drain runs, the hook is answered CONTINUE after the last close, and the agent exits 0 in the usual
/// time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scale_in_is_answered_in_time_with_a_notify_socket_no_longer_read() {
    let (s, config) = scaling_setup().await;
    let held = s.connections_to_us(1);
    let notify = NotifySocket::bind_stalling(s.dir.path(), "READY=1");
    let mut cmd = agent(&config, &["run"]);
    cmd.env("NOTIFY_SOCKET", &notify.path);
    let mut agent = ProcGuard::spawn(cmd);
    assert!(
        wait_until(Duration::from_secs(10), || notify.stalled()),
        "{}",
        agent.stderr()
    );
    s.sim.start_scale_in(INSTANCE).unwrap();
    assert!(
        agent.wait_stderr("drain: draining", Duration::from_secs(5)),
        "{}",
        agent.stderr()
    );
    drop(held);
    let exit = agent.wait_timeout(Duration::from_secs(10)).expect("exits");
    assert_eq!(exit.code(), Some(0), "{}", agent.stderr());
    let hook = &s.sim.hooks(GROUP)[0];
    assert_eq!(
        (hook.status.as_str(), hook.timed_out),
        ("CONTINUE", false),
        "{hook:?}"
    );
}

/// The hook of `name` on our instance.
fn hook_named(s: &Setup, name: &str) -> elb_sim::state::HookState {
    s.sim
        .hooks(GROUP)
        .into_iter()
        .find(|h| h.lifecycle_hook_name == name)
        .unwrap_or_else(|| panic!("no hook {name}: {:?}", s.sim.hooks(GROUP)))
}

/// A group with more hooks than elb-drain's: a launching hook that holds the instance while it is set
/// up, and another tool's terminating hook, listed before ours. With `hook_name`, the launching hook
/// starts no drain, and at the scale-in only `drain-hook` is extended and answered: the other tool's
/// hook is left hanging for its owner (answering it would cut its work short).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_hook_name_only_that_hook_is_drained_for_extended_and_answered() {
    let (s, config) = scaling_setup_with(
        HOOK_TIMEOUT,
        &["ship-logs"],
        "timeout = \"30s\"",
        "extend_margin = \"1s\"\nhook_name = \"drain-hook\"",
    )
    .await;
    // A launching hook still holds the instance when the agent starts (with a long timeout of its
    // own). At the scale-in, the other tool's hook times out with CONTINUE, which lets ours go on.
    s.sim.shared().lock_for_tests(|inner| {
        let group = &mut inner.groups[0];
        group.launching_hooks = vec!["warm-up".into()];
        group.hook_timeout = Duration::from_secs(600);
    });
    s.sim.start_launch(INSTANCE).unwrap();
    s.sim.shared().lock_for_tests(|inner| {
        let group = &mut inner.groups[0];
        group.hook_timeout = HOOK_TIMEOUT;
        group.default_result = "CONTINUE".into();
    });
    let held = s.connections_to_us(1);
    let mut agent = ProcGuard::spawn(agent(&config, &["run"]));
    assert!(
        agent.wait_stderr("warm-up", Duration::from_secs(10)),
        "the other hook is seen and said to be left alone:\n{}",
        agent.stderr()
    );
    // Two more listings: still serving, nothing deleted.
    std::thread::sleep(POLL * 2);
    assert!(agent.is_running(), "{}", agent.stderr());
    assert!(deletes(&s.sim).is_empty(), "{}", agent.stderr());
    assert!(!agent.stderr().contains("draining"), "{}", agent.stderr());
    // Its owner answers it; later the group scales in.
    s.sim
        .shared()
        .lock_for_tests(|inner| inner.hooks[0].status = "CONTINUE".into());
    s.sim.start_scale_in(INSTANCE).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || !deletes(&s.sim).is_empty()),
        "{}",
        agent.stderr()
    );
    // Our hook times out after 2 s: extended while the connection is open.
    assert!(
        wait_until(Duration::from_secs(6), || hook_named(&s, "drain-hook")
            .callbacks
            .iter()
            .any(|(r, _)| r == "EXTEND")),
        "never extended:\n{}",
        agent.stderr()
    );
    drop(held);
    let exit = agent.wait_timeout(Duration::from_secs(10)).expect("exits");
    assert_eq!(exit.code(), Some(0), "{}", agent.stderr());
    let ours = hook_named(&s, "drain-hook");
    assert_eq!(
        (ours.status.as_str(), ours.timed_out),
        ("CONTINUE", false),
        "{ours:?}"
    );
    for other in ["ship-logs", "warm-up"] {
        let h = hook_named(&s, other);
        assert!(h.callbacks.is_empty(), "{other} left to its owner: {h:?}");
    }
}

/// Two terminating hooks hang and no `hook_name` says which is elb-drain's: the scale-in still drains
/// (the DELETE goes out), but neither hook is answered, and the exit (69) and the log say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_hook_name_several_hanging_hooks_drain_and_none_is_answered() {
    let (s, config) = scaling_setup_with(
        Duration::from_secs(600),
        &["ship-logs"],
        "timeout = \"30s\"",
        "extend_margin = \"1s\"",
    )
    .await;
    let mut agent = serving(&config);
    s.sim.start_scale_in(INSTANCE).unwrap();
    let exit = agent.wait_timeout(Duration::from_secs(10)).expect("exits");
    assert_eq!(exit.code(), Some(69), "{}", agent.stderr());
    assert_eq!(deletes(&s.sim).len(), 1, "drained: {}", agent.stderr());
    for name in ["ship-logs", "drain-hook"] {
        let h = hook_named(&s, name);
        assert!(
            h.callbacks.is_empty() && h.status == "HANGING",
            "not answered: {h:?}"
        );
    }
    assert!(
        agent.stderr().contains("set [autoscaling] hook_name"),
        "{}",
        agent.stderr()
    );
}

/// No `hook_name`, and the group has a launching hook besides its terminating one. The launching hook
/// still holds the instance when the agent starts (as while a new instance is set up): the agent reads
/// the group's hooks, sees it is a launching hook and starts no drain. The scale-in after it drains and
/// answers the terminating hook; the launching hook is never answered by elb-drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_hook_name_a_launching_hook_starts_no_drain_and_the_scale_in_after_it_does() {
    let (s, config) = scaling_setup().await;
    launch_with_warm_up_hook(&s);
    let mut agent = ProcGuard::spawn(agent(&config, &["run"]));
    assert!(
        agent.wait_stderr("a launching hook", Duration::from_secs(10)),
        "{}",
        agent.stderr()
    );
    std::thread::sleep(POLL * 2);
    assert!(agent.is_running(), "{}", agent.stderr());
    assert!(deletes(&s.sim).is_empty(), "{}", agent.stderr());
    // The group's hooks were read once, not at every listing.
    let lookups = || {
        s.sim
            .request_log()
            .iter()
            .filter(|r| r.path.contains("/scaling_lifecycle_hook/"))
            .count()
    };
    assert_eq!(lookups(), 1);
    // Set up: its owner answers it. Later the group scales in.
    s.sim
        .shared()
        .lock_for_tests(|inner| inner.hooks[0].status = "CONTINUE".into());
    s.sim.start_scale_in(INSTANCE).unwrap();
    let exit = agent.wait_timeout(Duration::from_secs(10)).expect("exits");
    assert_eq!(exit.code(), Some(0), "{}", agent.stderr());
    assert_eq!(deletes(&s.sim).len(), 1, "{}", agent.stderr());
    let ours = hook_named(&s, "drain-hook");
    assert_eq!(
        (ours.status.as_str(), ours.timed_out),
        ("CONTINUE", false),
        "{ours:?}"
    );
    assert!(hook_named(&s, "warm-up").callbacks.is_empty());
    // The group's hooks, read at the launch, named the terminating hook too: no second read.
    assert_eq!(lookups(), 1);
}

/// No `hook_name`, and the credential may not read the group's hooks (403 on ListLifeCycleHooks): a
/// lone hanging hook is taken for a scale-in as before the lookup existed, drained for and answered,
/// and the log says why it could not tell.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_permission_to_read_the_groups_hooks_a_lone_hanging_hook_is_still_answered() {
    let (s, config) = scaling_setup().await;
    s.sim.shared().lock_for_tests(|inner| {
        for u in &mut inner.users {
            u.deny.push("as:lifecycleHooks:list".into());
        }
    });
    let mut agent = serving(&config);
    s.sim.start_scale_in(INSTANCE).unwrap();
    let exit = agent.wait_timeout(Duration::from_secs(10)).expect("exits");
    assert_eq!(exit.code(), Some(0), "{}", agent.stderr());
    let ours = hook_named(&s, "drain-hook");
    assert_eq!(
        (ours.status.as_str(), ours.timed_out),
        ("CONTINUE", false),
        "{ours:?}"
    );
    assert!(
        agent
            .stderr()
            .contains("could not read the scaling group's lifecycle hooks"),
        "{}",
        agent.stderr()
    );
    assert!(
        s.sim
            .request_log()
            .iter()
            .any(|r| r.path.contains("/scaling_lifecycle_hook/") && r.status == 403),
        "the lookup was refused"
    );
}

/// `check` reads the group's hooks and names what a scale-in would run into: a `hook_name` the group
/// does not have (a typo), or several terminating hooks and no name. With the right name it passes and
/// lists the hooks with what each holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_tells_a_hook_name_the_group_lacks_and_a_group_that_needs_one() {
    let check = |autoscaling: &str| {
        let autoscaling = autoscaling.to_owned();
        async move {
            let (s, config) = scaling_setup_with(
                HOOK_TIMEOUT,
                &["ship-logs"],
                "timeout = \"30s\"",
                &autoscaling,
            )
            .await;
            s.sim
                .shared()
                .lock_for_tests(|inner| inner.groups[0].launching_hooks = vec!["warm-up".into()]);
            let mut check = ProcGuard::spawn(agent(&config, &["check", "--json"]));
            let exit = check.wait_timeout(Duration::from_secs(20)).expect("exits");
            let report: serde_json::Value = serde_json::from_str(&check.stdout()).expect("JSON");
            let log = s.sim.request_log();
            assert!(
                log.iter()
                    .all(|r| r.method == "GET" || r.path.ends_with("/auth/tokens")),
                "check changes nothing: {log:?}"
            );
            (exit.code(), report)
        }
    };
    let (code, report) = check("hook_name = \"drian-hook\"").await;
    assert_eq!(code, Some(78), "{report:#}");
    assert_eq!(
        report["problems"],
        serde_json::json!([
            "autoscaling.hook_name \"drian-hook\": the scaling group has no such hook (it has: \
             ship-logs (terminating), drain-hook (terminating), warm-up (launching)); a scale-in \
             would not be answered"
        ])
    );
    let (code, report) = check("").await;
    assert_eq!(code, Some(78), "{report:#}");
    let problems = report["problems"].as_array().unwrap();
    assert!(
        problems.len() == 1
            && problems[0]
                .as_str()
                .unwrap()
                .contains("2 terminating hooks (ship-logs, drain-hook): set autoscaling.hook_name"),
        "{report:#}"
    );
    let (code, report) = check("hook_name = \"drain-hook\"").await;
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(
        report["autoscaling"]["group_hooks"],
        serde_json::json!([
            {"name": "ship-logs", "kind": "terminating"},
            {"name": "drain-hook", "kind": "terminating"},
            {"name": "warm-up", "kind": "launching"},
        ])
    );
    assert_eq!(report["autoscaling"]["hook_name"], "drain-hook");
}

/// No `hook_name`, and reading the group's hooks fails the way a struggling API does (503, retried
/// within `cloud.retry_deadline`, here its default 60 s): the lookup is given up after 5 s and the
/// hook taken for a scale-in, so the drain starts within that bound, not after the whole budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_struggling_lookup_of_the_groups_hooks_delays_the_drain_by_its_bound_at_most() {
    let (s, config) = scaling_setup_with(
        Duration::from_secs(600),
        &[],
        "timeout = \"30s\"",
        "extend_margin = \"1s\"",
    )
    .await;
    // The default retry budget (the tests' config has 3 s): without a bound of its own the lookup
    // would hold the drain for all of it.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("retry_deadline = \"3s\"", "retry_deadline = \"60s\"");
    assert!(text.contains("retry_deadline = \"60s\""));
    std::fs::write(&config, text).unwrap();
    group_hooks_unreadable(&s);
    let mut agent = serving(&config);
    s.sim.start_scale_in(INSTANCE).unwrap();
    let hung = std::time::Instant::now();
    assert!(
        wait_until(Duration::from_secs(20), || !deletes(&s.sim).is_empty()),
        "no DELETE within 20 s of the hook:\n{}",
        agent.stderr()
    );
    // About the bound (5 s) after it: well short of the retry budget (60 s), with room for a busy
    // machine.
    let took = hung.elapsed();
    assert!(
        took < Duration::from_secs(15),
        "the drain started {took:?} after the hook hung"
    );
    let exit = agent.wait_timeout(Duration::from_secs(10)).expect("exits");
    assert_eq!(exit.code(), Some(0), "{}", agent.stderr());
    assert_eq!(
        hook_named(&s, "drain-hook").status,
        "CONTINUE",
        "{}",
        agent.stderr()
    );
    assert!(
        agent
            .stderr()
            .contains("could not read the scaling group's lifecycle hooks"),
        "{}",
        agent.stderr()
    );
}

/// No `hook_name`, a launching hook hanging when the agent starts, and the group's hooks unreadable
/// for a while (503): the hook is not taken for a scale-in while the lookup may still answer (the
/// server is not drained at boot); once it answers, the hook is known for a launching one, and the
/// scale-in after it drains as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_hanging_at_start_is_not_taken_for_a_scale_in_while_the_lookup_fails() {
    let (s, config) = scaling_setup_with(
        Duration::from_secs(600),
        &[],
        "timeout = \"30s\"",
        "extend_margin = \"1s\"",
    )
    .await;
    launch_with_warm_up_hook(&s);
    group_hooks_unreadable(&s);
    let mut agent = ProcGuard::spawn(agent(&config, &["run"]));
    assert!(
        agent.wait_stderr("not taken for a scale-in until", Duration::from_secs(10)),
        "{}",
        agent.stderr()
    );
    // Several listings and failed lookups later: still serving.
    std::thread::sleep(Duration::from_secs(2));
    assert!(agent.is_running(), "{}", agent.stderr());
    assert!(
        deletes(&s.sim).is_empty(),
        "drained at boot:\n{}",
        agent.stderr()
    );
    // The lookup answers again.
    s.sim.shared().lock_for_tests(|inner| inner.faults.clear());
    assert!(
        agent.wait_stderr("a launching hook", Duration::from_secs(10)),
        "{}",
        agent.stderr()
    );
    s.sim
        .shared()
        .lock_for_tests(|inner| inner.hooks[0].status = "CONTINUE".into());
    s.sim.start_scale_in(INSTANCE).unwrap();
    let exit = agent.wait_timeout(Duration::from_secs(10)).expect("exits");
    assert_eq!(exit.code(), Some(0), "{}", agent.stderr());
    assert_eq!(hook_named(&s, "drain-hook").status, "CONTINUE");
    assert!(hook_named(&s, "warm-up").callbacks.is_empty());
}
