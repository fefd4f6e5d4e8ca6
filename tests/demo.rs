//! The README's first command, `elb-sim demo`, as a test: with elb-drain a stop loses nothing; the
//! naive stop next to it does cut connections. Once in-process (the counts in detail), once as the real
//! command a newcomer types (what it prints, that it ends by itself, that it leaves no process behind).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::ProcGuard;
use elb_sim::demo::Stop;

/// The two tests each run the whole demo: one at a time, so neither measures the other's load.
static ONE_DEMO_AT_A_TIME: Mutex<()> = Mutex::new(());

#[test]
fn the_demo_loses_nothing_with_elb_drain_and_shows_the_naive_stop_failing() {
    let _one = ONE_DEMO_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let agent = Path::new(env!("CARGO_BIN_EXE_elb-drain"));
    let with = rt
        .block_on(elb_sim::demo::act(agent, Stop::ElbDrain, false))
        .expect("act 1");
    assert_eq!(with.agent_exit, Some(0), "{with:?}");
    assert_eq!(
        (
            with.failed,
            with.resets,
            with.streams_cut,
            with.after_stop[0]
        ),
        (0, 0, 0, 0),
        "{with:?}"
    );
    assert!(with.served > 50, "{with:?}");
    assert!(
        with.after_stop[1] > 0,
        "B took the new connections: {with:?}"
    );
    assert!(
        with.delete_after_ms.is_some_and(|ms| ms < 1000.0),
        "{with:?}"
    );
    // The agent waits for A's streams: it exits after the last one A served closed, not before.
    assert!(
        with.drain_overhead_ms().is_some_and(|ms| ms >= 0.0),
        "{with:?}"
    );
    let naive = rt
        .block_on(elb_sim::demo::act(agent, Stop::Naive, false))
        .expect("act 2");
    assert!(
        naive.streams_cut > 0 || naive.failed > 0 || naive.resets > 0,
        "the naive stop should hurt: {naive:?}"
    );
}

/// `elb-sim demo` as built by `cargo build` (the resolve `cargo run --bin elb-sim` uses), so that the
/// demo's own up-to-date check of the agent finds it fresh.
fn elb_sim_binary() -> PathBuf {
    let mut build = elb_sim::demo::cargo();
    build
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "build",
            "--quiet",
            "--message-format=json-render-diagnostics",
        ])
        .args(["--bin", "elb-sim", "--bin", "elb-drain"]);
    let mut cargo = ProcGuard::spawn(build);
    let status = cargo
        .wait_timeout(Duration::from_secs(900))
        .expect("cargo build of elb-sim finishes");
    assert!(status.success(), "cargo build: {}", cargo.stderr());
    elb_sim::demo::built_executable(&cargo.stdout(), "elb-sim")
        .expect("cargo names the elb-sim executable")
}

/// Processes in process group `pgid`: the demo's own group, so anything it started and left behind.
fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Field 5 (pgrp), counted after the parenthesised command name.
            let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
            after.split_whitespace().nth(2) == Some(&pgid.to_string())
        })
        .collect()
}

/// A totals line's number after `label` (e.g. "failed ").
fn count_after(line: &str, label: &str) -> Option<u64> {
    let rest = &line[line.find(label)? + label.len()..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Kills, by PID, whatever is left in the demo's process group when dropped (also when the test fails).
struct Group(i32);

impl Drop for Group {
    fn drop(&mut self) {
        for pid in group_members(self.0) {
            // SAFETY: kill(2) on a process of the group this test created for the demo.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

#[test]
fn the_demo_command_prints_its_totals_ends_by_itself_and_leaves_no_process() {
    let sim = elb_sim_binary();
    let _one = ONE_DEMO_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let mut cmd = Command::new(&sim);
    // Its own process group, so that whatever it starts can be found again after it exits. The
    // inherited CARGO makes it check the agent with cargo, as under `cargo run`; the working directory
    // is not the workspace root, which it must not need.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd.current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("elb-sim"))
        .arg("demo");
    let started = Instant::now();
    let mut demo = ProcGuard::spawn(cmd);
    let group = Group(demo.pid());
    let ended = common::wait_until(Duration::from_secs(60), || !demo.is_running());
    let took = started.elapsed();
    // The leader is reaped; anything still in its group was left behind by it.
    let left = group_members(group.0);
    drop(group);
    let status = demo.wait_timeout(Duration::from_secs(10));
    let out = demo.stdout();
    assert!(
        ended,
        "the demo did not end by itself within a minute:\n{out}\n{}",
        demo.stderr()
    );
    assert!(left.is_empty(), "the demo left processes behind: {left:?}");
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{out}\n{}",
        demo.stderr()
    );
    let (act1, act2) = out
        .split_once("== naive stop")
        .expect("two acts, the naive stop second");
    let totals = |act: &'static str, text: &str| -> String {
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("totals:")).collect();
        assert_eq!(lines.len(), 1, "one totals line in {act}:\n{out}");
        lines[0].to_owned()
    };
    let (with, naive) = (totals("act 1", act1), totals("act 2", act2));
    for label in [
        "failed ",
        "resets ",
        "long streams cut ",
        "after the stop: A ",
    ] {
        assert_eq!(
            count_after(&with, label),
            Some(0),
            "{label}with elb-drain:\n{out}"
        );
    }
    assert!(
        count_after(&with, "served ").is_some_and(|n| n > 50),
        "{with}"
    );
    assert!(
        ["failed ", "resets ", "long streams cut "]
            .iter()
            .any(|l| count_after(&naive, l).is_some_and(|n| n > 0)),
        "the naive stop should hurt:\n{out}"
    );
    for shown in [
        "SIGTERM to server A's elb-drain",
        "DELETE of member A arrived at the API",
        "last long stream on A closed by its client",
        "server A's elb-drain exited (code 0)",
    ] {
        assert!(act1.contains(shown), "the timeline shows {shown:?}:\n{out}");
    }
    // Counted, not said: the line comes once at least 10 new connections were served (the count may
    // have passed 10 by the time the timeline looks).
    assert!(
        act1.lines()
            .any(|l| l.contains("new connections since the DELETE: all ")
                && l.ends_with(" on B, 0 on A")),
        "the timeline counts the new connections, all on B:\n{out}"
    );
    println!("the demo took {took:?}");
}
