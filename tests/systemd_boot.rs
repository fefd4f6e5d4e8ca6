//! The project's systemd unit under a real systemd, installed the two ways an operator installs it: the
//! Debian package (`dpkg -i`, never a copy of its files) and the static binary (`elb-drain
//! install-units`). systemd boots as PID 1 in a container of its own (systemd-nspawn, private PID, mount
//! and network namespaces, loopback only) from a cached Debian root built by
//! `tests/systemd/build-root.sh`, never from the machine's own root. Inside run elb-sim (the cloud and
//! the load balancer; copied in, it is not part of the package), a demo app (`socat` echo server) from
//! `systemd/examples/app.service`, and the agent from the installed unit and configuration, bound to the
//! app by the drop-in the README documents, and given a short `TimeoutStopSec=` by one of the test's own.
//!
//! The package's life, in one container: `dpkg -i` over a stale `/usr/local/bin/elb-drain` warns of it,
//! enables the unit and starts nothing; a start (what boot does) is skipped, not failed, while the
//! configuration is still the example; once configured, the unit runs the package's binary, not the
//! stale one, and one `systemctl stop app` shows what `agent_systemd.rs` can only show with a fake notify
//! socket: the stop blocks until the drain finished, `systemctl status` shows the agent's live `STATUS=`
//! line, and `EXTEND_TIMEOUT_USEC` keeps a 3 s `TimeoutStopSec` from killing a longer drain; an upgrade
//! under a running agent keeps the edited configuration, the agent (no drain) and a disabled unit
//! disabled; `dpkg -r` of a running agent drains before the files go; `dpkg --purge` takes the
//! configuration and the state; installed again over another unit that overrides its own, it says so.
//! The static binary: the same unit text from /usr/local naming /usr/local/bin/elb-drain, skipped until
//! configured; configured, a start whose check cannot run (an older binary, none) fails rather than
//! being skipped; then a stop that drains.
//!
//! Runs when `ELB_DRAIN_SYSTEMD_ROOT` names the cache directory; it then fails if anything is missing,
//! including the package, which `ELB_DRAIN_DEB` names (`cargo xtask deb` builds it; `.ci/run` builds the
//! root and the package and sets both). Without the root the tests skip with a printed reason. Needs
//! root, `systemd-nspawn`, `nsenter`, `unshare`, and the `elb-sim` binary beside `elb-drain` (built by
//! `cargo test --workspace`, or `cargo build -p elb-sim`). The static route installs
//! `ELB_DRAIN_STATIC_BIN` when set (the musl build), else this build's `elb-drain`.
//!
//! Isolation: nspawn runs inside `unshare --mount --pid` with a private tmpfs on `/run` (nspawn's own
//! state never reaches the host's `/run`) and an overlay of the cached root (the cache stays read-only)
//! under the target directory; `--register=no --keep-unit` keeps it off the host's bus; the container's
//! cgroups live in a per-run cgroup. [`Container`]'s `Drop` kills the container's PID 1 through a pidfd,
//! waits for nspawn, removes the per-run cgroups and directory, also when the test panics; if the test
//! process itself is killed, `PR_SET_PDEATHSIG` and `unshare --kill-child` still end the container.

mod common;
#[path = "../xtask/src/coverage.rs"]
mod coverage;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use clap::CommandFactory;
use common::{ProcGuard, echo, wait_until};

// From config/elb-sim.toml, which the simulator in the container runs unchanged.
const PROJECT: &str = "99a3fff0d03c428eac3678da6a7d0f24";
const POOL: &str = "36ce7086-a496-4666-9064-5ba0e6840c75";
const MEMBER: &str = "1923923e-fe8a-484f-bdbc-e11559b1f48f";
const APP: &str = "127.0.0.2:9000";
const LB: &str = "127.0.0.1:8080";
const ADMIN: &str = "127.0.0.1:8776";

/// The unit's stop timeout in the test's drop-in, and how long the test keeps its connection open once
/// the stop began: well past the timeout, so only the agent's `EXTEND_TIMEOUT_USEC` can save the unit.
const TIMEOUT_STOP: Duration = Duration::from_secs(3);
const HOLD: Duration = Duration::from_secs(7);
/// How long the connection is held once `dpkg -r`'s drain deleted the membership.
const HOLD_REMOVE: Duration = Duration::from_secs(3);

const CONFIG: &str = "/etc/elb-drain/elb-drain.toml";
/// The operator's configuration, staged beside the example until the test puts it in place.
const CONFIGURED: &str = "/root/configured.toml";

#[test]
fn the_package_starts_nothing_unconfigured_drains_on_stop_survives_an_upgrade_and_drains_before_removal()
 {
    let Some((cache, _shared)) = root_cache() else {
        return;
    };
    let deb = package();
    let elb_sim = sim_binary();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let c = Container::boot(
        &cache.join("rootfs"),
        |upper| {
            stage(upper, repo);
            // Where the binary went before the package, left behind: it comes first on systemd's
            // search path, so a unit naming a bare `elb-drain` would run it.
            put(&upper.join("usr/local/bin/elb-drain"), 0o755, STALE_BINARY);
        },
        &[
            (deb.as_path(), "/root/elb-drain.deb"),
            (elb_sim.as_path(), "/usr/local/bin/elb-sim"),
            (
                &repo.join("config/elb-sim.toml"),
                "/etc/elb-sim/elb-sim.toml",
            ),
        ],
    );
    let version = format!("{}-1", env!("CARGO_PKG_VERSION"));

    // Installed: the agent, the unit enabled, the example as a conffile; nothing started. The stale
    // copy in /usr/local/bin is pointed out (it is the administrator's to remove).
    let (status, out, err) = c.run(
        &["dpkg", "-i", "/root/elb-drain.deb"],
        Duration::from_secs(120),
    );
    assert!(status.success(), "dpkg -i: {status}\n{out}{err}");
    assert!(
        err.contains("warning: /usr/local/bin/elb-drain is there too")
            && err.contains("runs /usr/bin/elb-drain"),
        "dpkg -i says nothing of the stale binary:\n{out}{err}"
    );
    assert_eq!(
        c.sh("dpkg-query -W -f '${Status} ${Version}' elb-drain"),
        format!("install ok installed {version}")
    );
    assert_packaged_files(&c);
    assert_eq!(
        c.sh("elb-drain --version"),
        built_version(Path::new(env!("CARGO_BIN_EXE_elb-drain"))),
        "the package holds another build than this test's (`cargo xtask deb` rebuilds it)"
    );
    // Debian's systemd names /usr/lib by its /lib link (merged /usr).
    assert_eq!(
        c.sh("readlink -f \"$(systemctl show --value -p FragmentPath elb-drain)\""),
        "/usr/lib/systemd/system/elb-drain.service"
    );
    assert_installed_idle(&c);

    // Configured: the operator's own file in place of the example (an edited conffile), then the stop.
    c.sh(&format!("install -m 0640 {CONFIGURED} {CONFIG}"));
    start_sim(&c);
    c.systemctl(&["start", "app", "elb-drain"]);
    // The package's binary, not the stale one before it on the search path (which, run as the
    // condition, would have had the start skipped: MainPID 0).
    assert_eq!(c.main_exe("elb-drain"), "/usr/bin/elb-drain");
    stop_app_waits_for_the_drain_shows_status_and_extends_a_short_timeout(&c);

    // An upgrade under a running agent: the same agent keeps serving (a restart would drain the server),
    // and the operator's configuration stays, the new example set aside. The unit disabled, as the
    // README says to where the application runs the agent itself, stays disabled.
    c.systemctl(&["restart", "elb-sim"]);
    start_sim(&c);
    c.systemctl(&["start", "app", "elb-drain"]);
    let pid = c.show("elb-drain", "MainPID");
    c.systemctl(&["disable", "elb-drain"]);
    let next = format!("{}-2", env!("CARGO_PKG_VERSION"));
    c.sh(&format!(
        "dpkg-deb -R /root/elb-drain.deb /root/next && \
         sed -i 's/^Version: .*/Version: {next}/' /root/next/DEBIAN/control && \
         echo '# a comment the next version added' >> /root/next{CONFIG} && \
         dpkg-deb -b /root/next /root/elb-drain-next.deb >/dev/null"
    ));
    // unattended-upgrades' choice at a conffile prompt: keep the administrator's file.
    c.sh("dpkg -i --force-confdef --force-confold /root/elb-drain-next.deb");
    assert_eq!(
        c.sh("dpkg-query -W -f '${Version}' elb-drain"),
        next,
        "upgraded"
    );
    assert_eq!(
        (
            c.show("elb-drain", "ActiveState"),
            c.show("elb-drain", "MainPID")
        ),
        ("active".to_owned(), pid),
        "the upgrade restarted the agent; journal:\n{}",
        c.journal("elb-drain")
    );
    assert!(
        deletes(&c.requests()).is_empty(),
        "the upgrade drained the server"
    );
    assert_eq!(
        c.show("elb-drain", "UnitFileState"),
        "disabled",
        "the upgrade enabled the unit again"
    );
    c.systemctl(&["enable", "elb-drain"]);
    assert_eq!(
        c.sh(&format!("cat {CONFIG}")),
        c.sh(&format!("cat {CONFIGURED}"))
    );
    assert!(
        c.sh(&format!("cat {CONFIG}.dpkg-dist"))
            .ends_with("# a comment the next version added"),
        "the new version's example is kept beside it"
    );

    // `dpkg -r` of the running agent: its stop drains (the DELETE, then waiting for the held connection)
    // while the package's files are still there, and only then are they removed.
    let mut held = hold_a_connection(&c);
    let remove_began_us = monotonic_us();
    let mut remove = ProcGuard::spawn(c.command(&["dpkg", "-r", "elb-drain"]));
    let delete = wait_for_delete(&c);
    let deleted = Instant::now();
    while deleted.elapsed() < HOLD_REMOVE {
        let running = remove.is_running();
        let agent = c.show("elb-drain", "ActiveState");
        let binary = c
            .run(
                &["test", "-x", "/usr/bin/elb-drain"],
                Duration::from_secs(10),
            )
            .0;
        assert!(
            running && agent == "deactivating" && binary.success(),
            "{:?} after the DELETE: dpkg -r running: {running}, elb-drain {agent}, /usr/bin/elb-drain \
             there: {}; dpkg: {}{}",
            deleted.elapsed(),
            binary.success(),
            remove.stdout(),
            remove.stderr()
        );
        // The pace of these checks, not a synchronisation: the drain lasts as long as the test holds.
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(echo(&mut held, "still served").unwrap(), "still served");
    drop(held);
    let done = remove
        .wait_timeout(Duration::from_secs(20))
        .expect("dpkg -r returns once the connection closed");
    assert!(
        done.success(),
        "dpkg -r: {}{}",
        remove.stdout(),
        remove.stderr()
    );
    assert!(remove_began_us < delete.mono_ns / 1_000);
    let journal = c.journal_since("elb-drain", remove_began_us);
    assert!(journal.contains("drained"), "{journal}");
    for bad in ["timed out", "SIGKILL", "Killing process"] {
        assert!(!journal.contains(bad), "{bad:?} in the journal:\n{journal}");
    }
    assert!(
        !c.run(
            &["test", "-e", "/usr/bin/elb-drain"],
            Duration::from_secs(10)
        )
        .0
        .success()
    );
    assert!(
        !c.run(
            &["test", "-e", "/usr/lib/systemd/system/elb-drain.service"],
            Duration::from_secs(10)
        )
        .0
        .success()
    );
    assert_eq!(
        c.show("app", "ActiveState"),
        "active",
        "removing the agent stopped the app"
    );
    assert_eq!(
        c.sh("dpkg-query -W -f '${Status}' elb-drain"),
        "deinstall ok config-files"
    );
    assert_eq!(
        c.sh(&format!("cat {CONFIG}")),
        c.sh(&format!("cat {CONFIGURED}"))
    );

    // `dpkg --purge`: the configuration (and the set-aside example) and the state go; the
    // administrator's own secret stays theirs.
    c.sh("test -f /var/lib/private/elb-drain/state.json && test -L /var/lib/elb-drain");
    c.sh("dpkg --purge elb-drain");
    for gone in [
        CONFIG.to_owned(),
        format!("{CONFIG}.dpkg-dist"),
        "/var/lib/elb-drain".to_owned(),
        "/var/lib/private/elb-drain".to_owned(),
        "/etc/systemd/system/multi-user.target.wants/elb-drain.service".to_owned(),
    ] {
        let (status, ..) = c.run(&["test", "-e", &gone], Duration::from_secs(10));
        assert!(!status.success(), "{gone} is still there after the purge");
    }
    c.sh("test -f /etc/elb-drain/password");

    // The package over what the static route installed: install-units' unit in /usr/local/lib comes
    // before the package's, and dpkg -i says so.
    c.sh("mkdir -p /usr/local/lib/systemd/system && \
         cp /root/next/usr/lib/systemd/system/elb-drain.service /usr/local/lib/systemd/system/");
    let (status, out, err) = c.run(
        &["dpkg", "-i", "/root/elb-drain.deb"],
        Duration::from_secs(120),
    );
    assert!(status.success(), "dpkg -i: {status}\n{out}{err}");
    assert!(
        err.contains(
            "warning: /usr/local/lib/systemd/system/elb-drain.service overrides this package's unit"
        ),
        "dpkg -i says nothing of the unit that overrides its own:\n{out}{err}"
    );
    assert_eq!(
        c.show("elb-drain", "FragmentPath"),
        "/usr/local/lib/systemd/system/elb-drain.service"
    );
}

/// An elb-drain from before `is-configured` existed, as clap answers a command it does not know; any
/// other use of it is a test failure that names it.
const STALE_BINARY: &str = "#!/bin/sh\n\
    # An elb-drain older than is-configured, left where the binary used to be installed.\n\
    for a; do case $a in is-configured|install-units)\n\
      echo \"error: unrecognized subcommand '$a'\" >&2; exit 2;; esac; done\n\
    echo \"a stale elb-drain was run: $*\" >&2\n\
    exit 1\n";

#[test]
fn the_static_binary_installs_the_same_unit_which_runs_it_from_usr_local_bin() {
    let Some((cache, _shared)) = root_cache() else {
        return;
    };
    let binary = std::env::var_os("ELB_DRAIN_STATIC_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_elb-drain")),
        PathBuf::from,
    );
    let elb_sim = sim_binary();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let c = Container::boot(
        &cache.join("rootfs"),
        |upper| stage(upper, repo),
        &[
            (binary.as_path(), "/root/elb-drain"),
            (elb_sim.as_path(), "/usr/local/bin/elb-sim"),
            (
                &repo.join("config/elb-sim.toml"),
                "/etc/elb-sim/elb-sim.toml",
            ),
        ],
    );

    // What an image bake or cloud-init does with the one file from the artifact store.
    c.sh("install -m 0755 /root/elb-drain /usr/local/bin/elb-drain && /usr/local/bin/elb-drain install-units");
    assert_eq!(
        c.sh("/usr/local/bin/elb-drain --version"),
        built_version(&binary)
    );
    // One unit text for both routes, naming the binary that installed it in place of the package's.
    let unit: String = include_str!("../systemd/elb-drain.service")
        .lines()
        .map(|l| {
            if l.starts_with("Exec") {
                l.replace("/usr/bin/elb-drain", "/usr/local/bin/elb-drain") + "\n"
            } else {
                l.to_owned() + "\n"
            }
        })
        .collect();
    assert_eq!(
        c.sh("cat /usr/local/lib/systemd/system/elb-drain.service"),
        unit.trim_end()
    );
    assert_eq!(
        c.show("elb-drain", "FragmentPath"),
        "/usr/local/lib/systemd/system/elb-drain.service"
    );
    assert_installed_idle(&c);

    c.sh(&format!("install -m 0640 {CONFIGURED} {CONFIG}"));
    // Configured, but the binary the unit names cannot answer: replaced by an old one, then gone.
    // Either must fail the start where it is seen, not skip it as the example is skipped.
    c.sh(&format!(
        "cat > /usr/local/bin/elb-drain <<'EOF'\n{STALE_BINARY}EOF"
    ));
    assert_start_fails_loudly(&c, "exited 2");
    c.sh("rm /usr/local/bin/elb-drain");
    assert_start_fails_loudly(&c, "exited 127");
    c.sh("install -m 0755 /root/elb-drain /usr/local/bin/elb-drain");

    start_sim(&c);
    c.systemctl(&["start", "app", "elb-drain"]);
    assert_eq!(c.main_exe("elb-drain"), "/usr/local/bin/elb-drain");
    c.systemctl(&["stop", "app"]);
    let delete = wait_for_delete(&c);
    assert_eq!(delete.status, 204);
    for unit in ["elb-drain", "app"] {
        assert_eq!(
            (c.show(unit, "ActiveState"), c.show(unit, "Result")),
            ("inactive".to_owned(), "success".to_owned()),
            "{unit}:\n{}",
            c.journal(unit)
        );
    }
    assert_eq!(c.show("elb-drain", "ExecMainStatus"), "0");
}

/// Just installed (either route): the unit is enabled for boot and not running, and a start, which is
/// what boot does, is skipped rather than failed while the configuration is the example. The agent
/// itself never ran, so nothing reached for a cloud.
fn assert_installed_idle(c: &Container) {
    let journal = c.journal_since("elb-drain", 0);
    assert!(
        journal.is_empty(),
        "the install started the unit:\n{journal}"
    );
    assert_eq!(c.show("elb-drain", "UnitFileState"), "enabled");
    let wanted_by = c.show("elb-drain", "WantedBy");
    assert!(
        wanted_by.split(' ').any(|u| u == "multi-user.target"),
        "WantedBy={wanted_by}"
    );
    assert_eq!(c.show("elb-drain", "ActiveState"), "inactive");
    assert!(
        c.sh(&format!("cat {CONFIG}"))
            .contains("\nexample = true\n")
    );
    assert_eq!(
        c.sh(&format!("stat -c '%a %U:%G' {CONFIG}")),
        "640 root:root"
    );

    c.systemctl(&["start", "elb-drain"]);
    let state =
        ["ActiveState", "Result", "ExecMainPID", "NRestarts"].map(|p| c.show("elb-drain", p));
    assert_eq!(
        state,
        ["inactive", "exec-condition", "0", "0"],
        "[ActiveState, Result, ExecMainPID, NRestarts] after a start of the example; journal:\n{}",
        c.journal("elb-drain")
    );
    let journal = c.journal("elb-drain");
    assert!(journal.contains("still the example"), "{journal}");
    let (_, failed, _) = c.run(
        &[
            "systemctl",
            "list-units",
            "--failed",
            "--plain",
            "--no-legend",
        ],
        Duration::from_secs(30),
    );
    assert!(!failed.contains("elb-drain"), "failed units: {failed}");
}

/// A configured server whose unit cannot run its check (`why`: how the check ended): `systemctl start`
/// fails, the unit's result is a failure and not a skip, and the journal says why. Then stopped (its
/// `Restart=` would try again) and reset, leaving it as it was.
fn assert_start_fails_loudly(c: &Container, why: &str) {
    let since = monotonic_us();
    let (status, out, err) = c.run(
        &["systemctl", "start", "elb-drain"],
        Duration::from_secs(60),
    );
    let journal = c.journal_since("elb-drain", since);
    assert!(
        !status.success(),
        "`systemctl start elb-drain` succeeded with a check that {why}: {out}{err}\njournal:\n{journal}"
    );
    assert_eq!(
        c.show("elb-drain", "Result"),
        "exit-code",
        "check {why}; journal:\n{journal}"
    );
    assert!(
        journal.contains(&format!("is-configured {why}")) && journal.contains("failing the start"),
        "check {why}; journal:\n{journal}"
    );
    c.systemctl(&["stop", "elb-drain"]);
    c.systemctl(&["reset-failed", "elb-drain"]);
}

/// What the package holds: the agent and not elb-sim, the unit, the example as a conffile, a man page
/// for every command this build's CLI has, completions for bash and zsh that know every command and
/// option (checked as xtask's tests check the files it generates).
fn assert_packaged_files(c: &Container) {
    let files = c.sh("dpkg -L elb-drain");
    let files: Vec<&str> = files.lines().collect();
    let mut want = vec![
        "/usr/bin/elb-drain".to_owned(),
        "/usr/lib/systemd/system/elb-drain.service".to_owned(),
        CONFIG.to_owned(),
        "/usr/share/man/man1/elb-drain.1.gz".to_owned(),
        "/usr/share/bash-completion/completions/elb-drain".to_owned(),
        "/usr/share/zsh/vendor-completions/_elb-drain".to_owned(),
    ];
    let cli = elb_drain::cli::Args::command();
    let commands: Vec<String> = cli
        .get_subcommands()
        .filter(|c| !c.is_hide_set())
        .map(|c| c.get_name().to_owned())
        .collect();
    want.extend(
        commands
            .iter()
            .map(|name| format!("/usr/share/man/man1/elb-drain-{name}.1.gz")),
    );
    for path in &want {
        assert!(
            files.contains(&path.as_str()),
            "{path} is not in the package:\n{files:#?}"
        );
    }
    assert!(
        !files.iter().any(|f| f.contains("elb-sim")),
        "elb-sim in the package:\n{files:#?}"
    );
    assert_eq!(
        c.sh("dpkg-query -W -f '${Conffiles}' elb-drain")
            .split_whitespace()
            .next(),
        Some(CONFIG)
    );
    coverage::assert_covers(
        &cli,
        &coverage::Assets {
            main_page: &c.sh("zcat /usr/share/man/man1/elb-drain.1.gz"),
            command_page: &|name| c.sh(&format!("zcat /usr/share/man/man1/elb-drain-{name}.1.gz")),
            bash: &c.sh("cat /usr/share/bash-completion/completions/elb-drain"),
            zsh: &c.sh("cat /usr/share/zsh/vendor-completions/_elb-drain"),
        },
    );
}

/// The test's part of stopping the app with a configured agent: one connection held through the load
/// balancer for [`HOLD`] while `systemctl stop app` runs.
fn stop_app_waits_for_the_drain_shows_status_and_extends_a_short_timeout(c: &Container) {
    // The drop-in is in effect: without the agent's extensions systemd would kill it after 3 s.
    assert_eq!(
        c.show("elb-drain", "TimeoutStopUSec"),
        format!("{}s", TIMEOUT_STOP.as_secs())
    );
    assert_eq!(c.show("elb-drain", "ActiveState"), "active");
    assert!(
        c.show("elb-drain", "StatusText").contains("serving"),
        "ready status: {}",
        c.show("elb-drain", "StatusText")
    );
    let mut held = hold_a_connection(c);

    let stop_began = Instant::now();
    let stop_began_us = monotonic_us();
    let mut stop = ProcGuard::spawn(c.command(&["systemctl", "stop", "app"]));

    // The DELETE goes out first, while the app still serves the held connection.
    let delete = wait_for_delete(c);

    // (b) `systemctl status` shows the agent's live STATUS= line during the drain.
    let mut status = String::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            status = c.systemctl(&["status", "--no-pager", "--lines=0", "elb-drain"]);
            status.contains("Status: \"deregistered 1/1, draining: 1 connections")
        }),
        "systemctl status during the drain:\n{status}"
    );

    // (a) and (c): the stop waits as long as the connection is open, past the 3 s stop timeout,
    // and the app keeps serving meanwhile (its stop is ordered after the agent's).
    while stop_began.elapsed() < HOLD {
        let running = stop.is_running();
        let agent = c.show("elb-drain", "ActiveState");
        let app = c.show("app", "ActiveState");
        assert!(
            running && agent == "deactivating" && app == "active",
            "{:?} into the stop: systemctl stop running: {running}, elb-drain {agent}, app {app}; \
             agent journal:\n{}",
            stop_began.elapsed(),
            c.journal("elb-drain")
        );
        // The pace of these checks, not a synchronisation: the drain lasts as long as the test holds.
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(echo(&mut held, "still served").unwrap(), "still served");
    assert!(stop.is_running(), "stop returned before the drain ended");
    let closed_at = monotonic_us();
    drop(held);
    let closed = Instant::now();

    let done = stop
        .wait_timeout(Duration::from_secs(20))
        .expect("systemctl stop returns once the connection closed");
    assert!(done.success(), "systemctl stop app: {}", stop.stderr());
    let stopped_after = stop_began.elapsed();
    assert!(stopped_after > HOLD && stopped_after > TIMEOUT_STOP * 2);
    assert!(
        closed.elapsed() < Duration::from_secs(10),
        "the stop took {:?} after the close",
        closed.elapsed()
    );

    // The order on one clock (CLOCK_MONOTONIC, shared by the container, systemd, journald and elb-sim):
    // the test asked for the stop -> DELETE -> the test closed its connection -> systemd began
    // stopping the app (it logs "Stopping" before it sends the signal). The units' own
    // ActiveExitTimestamp is gone by now: a stopped unit nothing refers to is unloaded.
    let app_stop = c.stopping_logged("app", stop_began_us);
    let delete_at = delete.mono_ns / 1_000;
    assert!(
        stop_began_us < delete_at && delete_at < closed_at && closed_at <= app_stop,
        "stop {stop_began_us} DELETE {delete_at} close {closed_at} app stopping {app_stop} (usec)"
    );
    let agent_stop = c.stopping_logged("elb-drain", stop_began_us);

    // (c) A clean stop: no timeout, no SIGKILL, the agent exited 0 (drained).
    for unit in ["elb-drain", "app"] {
        assert_eq!(
            (c.show(unit, "ActiveState"), c.show(unit, "Result")),
            ("inactive".to_owned(), "success".to_owned()),
            "{unit}:\n{}",
            c.journal(unit)
        );
    }
    assert_eq!(c.show("elb-drain", "ExecMainStatus"), "0");
    let journal = c.journal_since("elb-drain", stop_began_us);
    for bad in ["timed out", "SIGKILL", "Killing process"] {
        assert!(!journal.contains(bad), "{bad:?} in the journal:\n{journal}");
    }
    assert!(journal.contains("drained"), "{journal}");
    eprintln!(
        "systemd_boot: stop took {stopped_after:?} (TimeoutStopSec={TIMEOUT_STOP:?}, connection held \
         {HOLD:?}); from `systemctl stop app`: journald stamped \"Stopping elb-drain.service\" at \
         +{} us, elb-sim received the DELETE at +{} us",
        agent_stop.saturating_sub(stop_began_us),
        delete_at - stop_began_us
    );
}

/// Starts elb-sim (or waits for the one just restarted) until its admin API answers.
fn start_sim(c: &Container) {
    c.systemctl(&["start", "elb-sim"]);
    assert!(
        wait_until(Duration::from_secs(20), || c
            .http_get(ADMIN, "/log")
            .is_ok()),
        "elb-sim's admin API never answered; journal:\n{}",
        c.journal("elb-sim")
    );
}

/// A long connection through the load balancer to the app. The scenario's other member has no
/// server, so retry until one reaches our app (before the health check marks the other down).
fn hold_a_connection(c: &Container) -> TcpStream {
    let mut held = None;
    assert!(
        wait_until(Duration::from_secs(15), || {
            held = c
                .connect(LB)
                .ok()
                .and_then(|mut s| (echo(&mut s, "hello").ok()? == "hello").then_some(s));
            held.is_some()
        }),
        "no echo through the load balancer"
    );
    held.expect("a held connection")
}

/// The DELETE of our membership, once elb-sim has logged it (answered 204, in our project).
fn wait_for_delete(c: &Container) -> elb_sim::LoggedRequest {
    let mut delete = None;
    assert!(
        wait_until(Duration::from_secs(15), || {
            delete = deletes(&c.requests()).into_iter().next();
            delete.is_some()
        }),
        "no DELETE of our membership; agent journal:\n{}",
        c.journal("elb-drain")
    );
    let delete = delete.expect("the DELETE");
    assert_eq!(delete.status, 204);
    assert!(delete.path.contains(PROJECT));
    delete
}

fn deletes(log: &[elb_sim::LoggedRequest]) -> Vec<elb_sim::LoggedRequest> {
    log.iter()
        .filter(|r| r.method == "DELETE" && r.path.contains(POOL) && r.path.contains(MEMBER))
        .cloned()
        .collect()
}

/// What `BINARY --version` prints.
fn built_version(binary: &Path) -> String {
    let out = Command::new(binary)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", binary.display()));
    String::from_utf8(out.stdout)
        .expect("UTF-8")
        .trim()
        .to_owned()
}

/// The package under test: `ELB_DRAIN_DEB`, required once the root is there.
fn package() -> PathBuf {
    let deb = std::env::var_os("ELB_DRAIN_DEB").map(PathBuf::from);
    match deb {
        Some(deb) if deb.is_file() => deb,
        _ => panic!(
            "ELB_DRAIN_DEB={deb:?} names no package: build it with `cargo xtask deb` and set \
             ELB_DRAIN_DEB=target/debian/elb-drain_..._amd64.deb (.ci/run does both)"
        ),
    }
}

fn sim_binary() -> PathBuf {
    let elb_sim = PathBuf::from(env!("CARGO_BIN_EXE_elb-drain")).with_file_name("elb-sim");
    assert!(
        elb_sim.is_file(),
        "{} is missing: `cargo build -p elb-sim` (cargo test --workspace builds it)",
        elb_sim.display()
    );
    elb_sim
}

/// The cached root's directory, with a shared lock on it that keeps `build-root.sh` from replacing the
/// tree under a running container; `None` (the test skips) when `ELB_DRAIN_SYSTEMD_ROOT` is unset.
/// When it is set (CI), everything the test needs must be there.
fn root_cache() -> Option<(PathBuf, File)> {
    let Some(cache) = std::env::var_os("ELB_DRAIN_SYSTEMD_ROOT") else {
        eprintln!(
            "\n!!!!!!!! SKIPPED systemd_boot: ELB_DRAIN_SYSTEMD_ROOT is unset (as root: \
             tests/systemd/build-root.sh, then set it to the cache directory, \
             /var/cache/elb-drain/systemd-root by default; .ci/run does both) !!!!!!!!\n"
        );
        return None;
    };
    let cache = PathBuf::from(cache);
    let lock = File::open(cache.join(".lock")).unwrap_or_else(|e| {
        panic!(
            "ELB_DRAIN_SYSTEMD_ROOT={}: {e} (tests/systemd/build-root.sh builds it)",
            cache.display()
        )
    });
    // A build in progress holds it exclusively for a minute or two.
    assert!(
        wait_until(Duration::from_secs(600), || {
            // SAFETY: flock(2) on a descriptor we own.
            unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) == 0 }
        }),
        "the root stayed locked by a build for 10 minutes"
    );
    assert!(
        cache.join("rootfs/usr/lib/systemd/systemd").is_file(),
        "ELB_DRAIN_SYSTEMD_ROOT={}: no built root there (tests/systemd/build-root.sh)",
        cache.display()
    );
    // SAFETY: geteuid(2) has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "booting systemd needs root");
    for tool in ["systemd-nspawn", "nsenter", "unshare"] {
        let found = Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "{tool} is not installed (apt-get install systemd-container util-linux)"
        );
    }
    Some((cache, lock))
}

/// Writes the container's own files into the overlay's upper layer before it is mounted: what the
/// operator adds to the package (the drop-in binding the agent to the app and handing over the password,
/// the password itself, their configuration, staged until the test puts it in place), the test's
/// drop-in, the demo app from the example unit, elb-sim's unit.
fn stage(upper: &Path, repo: &Path) {
    let units = upper.join("etc/systemd/system");
    put(
        &units.join("elb-drain.service.d/app.conf"),
        0o644,
        "# The binding README.md documents: after the app, stopped with it (and first).\n\
         [Unit]\nAfter=app.service\nPartOf=app.service\n\
         [Service]\nLoadCredential=password:/etc/elb-drain/password\n",
    );
    put(
        &units.join("elb-drain.service.d/test.conf"),
        0o644,
        "# Short on purpose: only the agent's EXTEND_TIMEOUT_USEC keeps a longer drain alive.\n\
         [Service]\nTimeoutStopSec=3s\n",
    );
    copy(
        &repo.join("systemd/examples/app.service"),
        &units.join("app.service"),
    );
    put(
        &units.join("app.service.d/test.conf"),
        0o644,
        &format!(
            "# The member's address in config/elb-sim.toml (the load balancer itself has :8080).\n\
             [Service]\nExecStart=\nExecStart=/usr/local/bin/my-app --listen {APP}\n"
        ),
    );
    put(
        &units.join("elb-sim.service"),
        0o644,
        "[Unit]\nDescription=elb-sim: the cloud side and the load balancer, for the test\n\
         [Service]\nExecStart=/usr/local/bin/elb-sim --config /etc/elb-sim/elb-sim.toml\n",
    );
    put(
        &upper.join("usr/local/bin/my-app"),
        0o755,
        "#!/bin/sh\n# The demo application: an echo server on --listen ADDR:PORT that exits 0 on SIGTERM,\n\
         # as a well-behaved service does (socat alone exits 143).\n\
         [ \"$1\" = --listen ] || exit 2\n\
         socat \"TCP-LISTEN:${2##*:},bind=${2%:*},reuseaddr,fork\" EXEC:cat &\n\
         trap 'kill $! 2>/dev/null; exit 0' TERM\n\
         wait\n",
    );
    put(&upper.join("etc/elb-drain/password"), 0o600, "change-me");
    put(
        &upper.join(CONFIGURED.trim_start_matches('/')),
        0o640,
        &format!(
            "[cloud]\nproject_id = \"{PROJECT}\"\n\
             elb_endpoint = \"http://127.0.0.1:8443\"\niam_endpoint = \"http://127.0.0.1:8443\"\n\
             metadata_endpoint = \"http://127.0.0.1:8775\"\n\
             [auth]\nmethod = \"password\"\nuser = \"deployer\"\ndomain = \"acme\"\n\
             password_file = \"/run/credentials/elb-drain.service/password\"\n\
             [[member]]\npool_id = \"{POOL}\"\nmember_id = \"{MEMBER}\"\nprotocol_port = 9000\n\
             [drain]\n# The load balancer's connections come from loopback, as everything here.\n\
             exclude_peers = []\nsettle = \"200ms\"\n"
        ),
    );
}

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().expect("a parent")).expect("mkdir");
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
}

fn put(path: &Path, mode: u32, text: &str) {
    std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// CLOCK_MONOTONIC in microseconds: the clock of systemd's `*TimestampMonotonic` and elb-sim's `mono_ns`.
fn monotonic_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime(2) writes into the timespec we pass.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0);
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// A booted systemd container; dropping it tears everything down.
struct Container {
    /// `unshare`, which became (the PID namespace around) systemd-nspawn.
    nspawn: Option<ProcGuard>,
    /// The container's PID 1, as a pidfd: signalling it cannot hit a recycled PID.
    init: Option<OwnedFd>,
    init_pid: i32,
    cgroups: Vec<PathBuf>,
    dir: Option<tempfile::TempDir>,
}

impl Container {
    /// Boots systemd on an overlay of `root` whose upper layer `stage` filled, with `binds` (host file,
    /// container path) mounted read-only. Returns once `systemctl is-system-running --wait` settled.
    fn boot(root: &Path, stage: impl FnOnce(&Path), binds: &[(&Path, &str)]) -> Container {
        let dir = tempfile::Builder::new()
            .prefix("systemd-boot-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("per-run dir");
        let (upper, work, merged) = (
            dir.path().join("upper"),
            dir.path().join("work"),
            dir.path().join("merged"),
        );
        for d in [&upper, &work, &merged] {
            std::fs::create_dir(d).expect("mkdir");
        }
        stage(&upper);

        let name = dir
            .path()
            .file_name()
            .expect("a name")
            .to_string_lossy()
            .into_owned();
        let mut c = Container {
            nspawn: None,
            init: None,
            init_pid: 0,
            cgroups: cgroup_parents()
                .into_iter()
                .map(|p| p.join(format!("elb-drain-{name}")))
                .collect(),
            dir: Some(dir),
        };
        for cg in &c.cgroups {
            std::fs::create_dir(cg).unwrap_or_else(|e| panic!("{}: {e}", cg.display()));
        }

        // Overlay options and nspawn's --bind-ro separate fields with ',' and ':'.
        let paths = [root, &upper, &work, &merged]
            .into_iter()
            .chain(binds.iter().map(|(host, _)| *host))
            .map(|p| p.to_str().expect("a UTF-8 path").to_owned())
            .collect::<Vec<_>>();
        assert!(
            paths.iter().all(|p| !p.contains([',', ':'])),
            "paths: {paths:?}"
        );

        // In mount and PID namespaces of its own: join the per-run cgroups, hide the host's /run,
        // mount the overlay, then become nspawn. `unshare` is the guard's process; should the test
        // process die without its Drop (SIGKILL, a harness timeout), PDEATHSIG kills unshare,
        // --kill-child then nspawn, the init of that PID namespace, and with it the container's
        // namespace nested in it (nspawn alone leaves its container running when killed).
        let script = "set -e\n\
            for cg in $CGROUPS; do echo $$ > \"$cg/cgroup.procs\"; done\n\
            mount -t tmpfs -o mode=0755 tmpfs /run\n\
            mount -t overlay overlay -o \"lowerdir=$1,upperdir=$2,workdir=$3\" \"$4\"\n\
            dir=$4; shift 4\n\
            exec systemd-nspawn --quiet --boot --register=no --keep-unit --private-network \
              --console=passive --resolv-conf=off --timezone=off --link-journal=no \
              --machine=elb-drain-test --directory=\"$dir\" \"$@\"\n";
        let mut cmd = Command::new("unshare");
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env(
                "CGROUPS",
                c.cgroups
                    .iter()
                    .map(|p| p.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join(" "),
            )
            .args([
                "--mount",
                "--propagation=private",
                "--pid",
                "--fork",
                "--mount-proc",
            ])
            .args(["--kill-child=SIGKILL", "--", "/bin/sh", "-c"])
            .arg(script)
            .arg("sh")
            .args(&paths[..4]);
        for (host, inside) in binds {
            cmd.arg(format!("--bind-ro={}:{inside}", host.display()));
        }
        // SAFETY: prctl(2) between fork and exec, async-signal-safe, touches no memory of ours.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let unshare = ProcGuard::spawn(cmd);
        let unshare_pid = unshare.pid();
        c.nspawn = Some(unshare);

        let mut init = None;
        assert!(
            wait_until(Duration::from_secs(20), || {
                init = child_named(unshare_pid, "systemd-nspawn")
                    .and_then(|nspawn| child_named(nspawn, "systemd"));
                init.is_some()
            }),
            "no systemd under nspawn; its output:\n{}",
            c.nspawn_output()
        );
        c.init_pid = init.expect("PID 1");
        // SAFETY: pidfd_open(2) on the PID we just found; the result is checked before use.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, c.init_pid, 0) };
        assert!(fd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
        // SAFETY: a fresh descriptor that nothing else owns.
        c.init = Some(unsafe { OwnedFd::from_raw_fd(fd as i32) });

        // Until PID 1 listens on its private socket, systemctl cannot connect: it says "offline" or nothing.
        let mut state = String::new();
        let mut err = String::new();
        assert!(
            wait_until(Duration::from_secs(90), || {
                let (_, out, e) = c.run(
                    &["systemctl", "is-system-running", "--wait"],
                    Duration::from_secs(90),
                );
                (state, err) = (out.trim().to_owned(), e);
                !state.is_empty() && state != "offline"
            }),
            "systemctl never answered: {err}\n{}",
            c.nspawn_output()
        );
        if state == "degraded" {
            eprintln!(
                "systemd_boot: the container booted degraded:\n{}",
                c.run(
                    &["systemctl", "--failed", "--no-pager"],
                    Duration::from_secs(10)
                )
                .1
            );
        } else {
            assert_eq!(state, "running", "boot:\n{}", c.nspawn_output());
        }
        c
    }

    fn nspawn_output(&self) -> String {
        self.nspawn
            .as_ref()
            .map(|g| format!("{}{}", g.stdout(), g.stderr()))
            .unwrap_or_default()
    }

    /// `args` run inside the container: its namespaces and root.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("SYSTEMD_COLORS", "0")
            .arg(format!("--target={}", self.init_pid))
            .args(["--all", "--root", "--wd", "--"])
            .args(args);
        cmd
    }

    /// Runs `args` inside the container, at most `limit`; (status, stdout, stderr).
    fn run(&self, args: &[&str], limit: Duration) -> (ExitStatus, String, String) {
        let mut g = ProcGuard::spawn(self.command(args));
        let status = g
            .wait_timeout(limit)
            .unwrap_or_else(|| panic!("`{}` still running after {limit:?}", args.join(" ")));
        (status, g.stdout(), g.stderr())
    }

    /// `systemctl ARGS` inside; its stdout. Fails the test on a failure, except for `status` (whose
    /// exit code tells the unit's state).
    fn systemctl(&self, args: &[&str]) -> String {
        let all = [&["systemctl"][..], args].concat();
        let (status, out, err) = self.run(&all, Duration::from_secs(60));
        assert!(
            status.success() || args.first() == Some(&"status"),
            "systemctl {}: {status}\n{out}{err}\nagent journal:\n{}",
            args.join(" "),
            self.journal("elb-drain")
        );
        out
    }

    fn show(&self, unit: &str, property: &str) -> String {
        self.systemctl(&["show", "--value", "-p", property, unit])
            .trim()
            .to_owned()
    }

    fn journal(&self, unit: &str) -> String {
        self.run(
            &["journalctl", "--no-pager", "-o", "cat", "-u", unit],
            Duration::from_secs(30),
        )
        .1
    }

    /// `UNIT`'s journal entries stamped at or after `since` (CLOCK_MONOTONIC, usec): (stamp, message).
    fn journal_entries(&self, unit: &str, since: u64) -> Vec<(u64, String)> {
        let journal = self
            .run(
                &["journalctl", "--no-pager", "-o", "json", "-u", unit],
                Duration::from_secs(30),
            )
            .1;
        journal
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|e| {
                let at = e["__MONOTONIC_TIMESTAMP"].as_str()?.parse().ok()?;
                Some((at, e["MESSAGE"].as_str()?.to_owned()))
            })
            .filter(|(at, _)| *at >= since)
            .collect()
    }

    /// `UNIT`'s journal since `since` (CLOCK_MONOTONIC, usec), one message a line.
    fn journal_since(&self, unit: &str, since: u64) -> String {
        self.journal_entries(unit, since)
            .into_iter()
            .map(|(_, m)| m + "\n")
            .collect()
    }

    /// When systemd first logged "Stopping UNIT.service" at or after `since` (journald's
    /// CLOCK_MONOTONIC stamp, in usec).
    fn stopping_logged(&self, unit: &str, since: u64) -> u64 {
        let stopping = format!("Stopping {unit}.service");
        self.journal_entries(unit, since)
            .into_iter()
            .find(|(_, m)| m.starts_with(&stopping))
            .map(|(at, _)| at)
            .unwrap_or_else(|| {
                panic!(
                    "no \"{stopping}\" in the journal since {since}:\n{}",
                    self.journal(unit)
                )
            })
    }

    /// `sh -c SCRIPT` inside, which must succeed; its stdout, trimmed.
    fn sh(&self, script: &str) -> String {
        let (status, out, err) = self.run(&["sh", "-c", script], Duration::from_secs(120));
        assert!(status.success(), "`{script}`: {status}\n{out}{err}");
        out.trim().to_owned()
    }

    /// The executable of UNIT's main process.
    fn main_exe(&self, unit: &str) -> String {
        let pid = self.show(unit, "MainPID");
        self.sh(&format!("readlink /proc/{pid}/exe"))
    }

    /// A TCP connection to `addr` inside the container's network namespace (its loopback).
    fn connect(&self, addr: &str) -> std::io::Result<TcpStream> {
        let addr: SocketAddr = addr.parse().expect("an address");
        let netns = File::open(format!("/proc/{}/ns/net", self.init_pid))?;
        std::thread::spawn(move || {
            // SAFETY: setns(2) with a descriptor we hold; CLONE_NEWNET moves only this short-lived
            // thread, which makes the socket (the socket keeps its namespace) and ends.
            if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    }

    /// GET `path` on an HTTP server inside; the body of a 200.
    fn http_get(&self, addr: &str, path: &str) -> std::io::Result<String> {
        let mut s = self.connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
        let mut response = String::new();
        s.read_to_string(&mut response)?;
        let (head, body) = response
            .split_once("\r\n\r\n")
            .ok_or_else(|| std::io::Error::other("no HTTP head"))?;
        if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
            return Err(std::io::Error::other(head.to_owned()));
        }
        Ok(body.to_owned())
    }

    /// elb-sim's request log.
    fn requests(&self) -> Vec<elb_sim::LoggedRequest> {
        let body = self.http_get(ADMIN, "/log").expect("elb-sim's request log");
        serde_json::from_str(&body).expect("the request log's JSON")
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // SIGKILL to PID 1 of a PID namespace ends every process in it: systemd, the units, nsenters.
        if let Some(init) = self.init.take() {
            // SAFETY: pidfd_send_signal(2) on our pidfd; no siginfo.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    init.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                );
            }
        }
        if let Some(mut nspawn) = self.nspawn.take() {
            // nspawn exits once its container is gone; the guard's own drop kills it otherwise. With
            // it ends the mount namespace, and with that the overlay and the /run tmpfs.
            if nspawn.wait_timeout(Duration::from_secs(15)).is_none() {
                eprintln!("systemd_boot: nspawn outlived its container; killing it");
            }
        }
        for cg in &self.cgroups {
            // The kernel frees a cgroup a moment after its last process exited.
            let removed = wait_until(Duration::from_secs(10), || remove_cgroup(cg));
            if !removed {
                eprintln!("systemd_boot: could not remove cgroup {}", cg.display());
            }
        }
        if let Some(dir) = self.dir.take()
            && let Err(e) = dir.close()
        {
            eprintln!("systemd_boot: removing the per-run dir: {e}");
        }
    }
}

/// Removes a cgroup tree, deepest first; true once it is gone.
fn remove_cgroup(cg: &Path) -> bool {
    if !cg.exists() {
        return true;
    }
    if let Ok(entries) = std::fs::read_dir(cg) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&e.path());
            }
        }
    }
    std::fs::remove_dir(cg).is_ok()
}

/// The test's own cgroup in the hierarchies systemd uses: the named v1 `systemd` one and the v2 one.
/// The container's cgroups go below, in a per-run cgroup, so that runs never share one.
fn cgroup_parents() -> Vec<PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").expect("/proc/self/cgroup");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let mut parents = Vec::new();
    for line in mountinfo.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let mount_point = pre.split(' ').nth(4).unwrap_or_default();
        let mut post = post.split(' ');
        let (fstype, options) = (post.next(), post.nth(1).unwrap_or_default());
        let prefix = match fstype {
            Some("cgroup2") => "0::",
            Some("cgroup") if options.split(',').any(|o| o == "name=systemd") => "1:name=systemd:",
            _ => continue,
        };
        let path = own.lines().find_map(|l| {
            // "N:name=systemd:/path" has a hierarchy number of its own; match on what follows it.
            if prefix == "0::" {
                l.strip_prefix("0::")
            } else {
                l.split_once(':')
                    .and_then(|(_, rest)| rest.strip_prefix("name=systemd:"))
            }
        });
        if let Some(path) = path {
            parents.push(Path::new(mount_point).join(path.trim_start_matches('/')));
        }
    }
    assert!(!parents.is_empty(), "no cgroup hierarchy for systemd found");
    parents
}

/// A child of `parent` whose command name is `name`.
fn child_named(parent: i32, name: &str) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
        let (comm, rest) = stat.split_once(" (")?.1.rsplit_once(") ")?;
        let ppid: i32 = rest.split(' ').nth(1)?.parse().ok()?;
        (ppid == parent && comm == name).then_some(pid)
    })
}
