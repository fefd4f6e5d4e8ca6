//! The static binary's install (`elb-drain install-units --root DIR`, as an image bake runs it): the unit
//! naming the binary that installed it, and the example where the package would not put them, enabled,
//! and an administrator's configuration never replaced; a binary the unit could not run from where it
//! is, refused; `is-configured` tells the example from a configuration, and the unit's condition skips
//! the start on that answer only. Under a real systemd, with the binary in /usr/local/bin,
//! `systemd_boot.rs` runs what this writes.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn elb_drain(args: &[&str]) -> Output {
    run(Path::new(env!("CARGO_BIN_EXE_elb-drain")), args)
}

fn run(binary: &Path, args: &[&str]) -> Output {
    Command::new(binary)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", binary.display()))
}

/// This build's binary copied into `root` at `path` (as an image bake puts it there). By cp(1), not
/// in this process: a copy written here is open for writing for a moment, and a child another test
/// forks meanwhile holds that descriptor until its own exec, so running the copy could fail with
/// ETXTBSY (it did once in CI).
fn copy_into(root: &Path, path: &str) -> PathBuf {
    let to = root.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    let status = Command::new("cp")
        .arg(env!("CARGO_BIN_EXE_elb-drain"))
        .arg(&to)
        .status()
        .expect("cp(1)");
    assert!(status.success(), "cp to {}", to.display());
    to
}

fn has_systemctl() -> bool {
    if Command::new("systemctl").arg("--version").output().is_ok() {
        return true;
    }
    eprintln!("SKIPPED install_units: no systemctl here (apt-get install systemd; .ci/run does)");
    false
}

/// The repository's unit as install-units writes it for a binary at `binary`.
fn unit_naming(binary: &str) -> String {
    include_str!("../systemd/elb-drain.service")
        .lines()
        .map(|l| {
            if l.starts_with("Exec") {
                l.replace("/usr/bin/elb-drain", binary) + "\n"
            } else {
                l.to_owned() + "\n"
            }
        })
        .collect()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("installed")
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn install_units_writes_the_unit_and_the_example_enables_it_and_keeps_an_edited_config() {
    if !has_systemctl() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let root_arg = format!("--root={}", root.path().display());
    let binary = copy_into(root.path(), "/usr/local/bin/elb-drain");
    let out = run(&binary, &["install-units", &root_arg]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("it runs /usr/local/bin/elb-drain"),
        "{out:?}"
    );

    let unit = root
        .path()
        .join("usr/local/lib/systemd/system/elb-drain.service");
    let config = root.path().join("etc/elb-drain/elb-drain.toml");
    // The package's unit, its Exec lines naming the binary where the image has it.
    let installed_unit = unit_naming("/usr/local/bin/elb-drain");
    assert_eq!(std::fs::read_to_string(&unit).unwrap(), installed_unit);
    assert!(!installed_unit.contains("ExecStart=/usr/bin/"));
    assert_eq!(mode(&unit), 0o644);
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        include_str!("../config/elb-drain.toml")
    );
    assert_eq!(mode(&config), 0o640);
    let wants = root
        .path()
        .join("etc/systemd/system/multi-user.target.wants/elb-drain.service");
    assert_eq!(
        std::fs::read_link(&wants).expect("enabled: the wants link"),
        Path::new("/usr/local/lib/systemd/system/elb-drain.service")
    );

    // The example is not a configuration yet.
    let config_arg = format!("--config={}", config.display());
    let out = elb_drain(&[&config_arg, "is-configured"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("still the example"),
        "{out:?}"
    );

    // The administrator's edit survives a second install (a newer binary's), which still replaces
    // the unit.
    let edited = include_str!("../config/elb-drain.toml").replace("\nexample = true\n", "\n");
    std::fs::write(&config, &edited).unwrap();
    std::fs::write(&unit, "stale").unwrap();
    let out = run(&binary, &["install-units", &root_arg]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("kept"),
        "{out:?}"
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), edited);
    assert_eq!(std::fs::read_to_string(&unit).unwrap(), installed_unit);
    let out = elb_drain(&[&config_arg, "is-configured"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    // Neither the example nor absent: something that cannot be read counts as a configuration, so
    // the unit's start goes ahead and fails where it can be seen, rather than being skipped.
    let dir_arg = format!("--config={}", root.path().display());
    let out = elb_drain(&[&dir_arg, "is-configured"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a regular file"),
        "{out:?}"
    );
    let absent = format!("--config={}", root.path().join("absent.toml").display());
    let out = elb_drain(&[&absent, "is-configured"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
}

/// install-units names the binary it runs from in the unit, so it refuses to install a unit that
/// could not run it: one that is not in the image being built, or that the unit's sandbox would hide
/// (PrivateTmp=: `curl -o /tmp/elb-drain ... && sudo /tmp/elb-drain install-units`). And the package's
/// binary, whose unit the package installed. Nothing is written then.
#[test]
fn install_units_refuses_a_binary_the_unit_could_not_run() {
    let root = tempfile::tempdir().unwrap();
    let root_arg = format!("--root={}", root.path().display());

    // This build's binary, which is not in the root.
    let out = elb_drain(&["install-units", &root_arg]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a copy of it"), "{err}");

    // A download in /tmp, which the unit's PrivateTmp= replaces with an empty directory.
    let binary = copy_into(root.path(), "/tmp/elb-drain");
    let out = run(&binary, &["install-units", &root_arg]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/tmp/elb-drain: the unit's sandbox hides /tmp") && err.contains("PrivateTmp"),
        "{err}"
    );

    // The package's own binary, with the package's unit there: the unit is installed and enabled
    // already, and a copy in /usr/local/lib would override it and its upgrades.
    let binary = copy_into(root.path(), "/usr/bin/elb-drain");
    let packaged = root.path().join("usr/lib/systemd/system/elb-drain.service");
    std::fs::create_dir_all(packaged.parent().unwrap()).unwrap();
    std::fs::write(&packaged, include_str!("../systemd/elb-drain.service")).unwrap();
    let out = run(&binary, &["install-units", &root_arg]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("are the Debian package's"), "{err}");

    let unit = root
        .path()
        .join("usr/local/lib/systemd/system/elb-drain.service");
    assert!(!unit.exists());
    assert!(!root.path().join("etc/elb-drain/elb-drain.toml").exists());
}

/// The unit's ExecCondition= as systemd runs it (its `sh -c` script, `$$` unescaped), with the
/// binary and the configuration file swapped for the test's: systemd skips the start on exits 1 to
/// 254 and fails it on 255, so only the example may give 1; a binary that is gone, or too old to know
/// `is-configured`, must give 255. `systemd_boot.rs` shows the same under systemd itself.
#[test]
fn the_units_condition_skips_on_the_example_only_and_fails_on_anything_else() {
    let unit = include_str!("../systemd/elb-drain.service");
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecCondition=!/bin/sh -c '"))
        .expect("ExecCondition=!/bin/sh -c '...'");
    let script = line
        .strip_suffix('\'')
        .expect("one quoted script")
        .replace("$$", "$");
    let dir = tempfile::tempdir().unwrap();
    let condition = |binary: &Path, config: &Path| -> (Option<i32>, String) {
        let script = script
            .replace("/usr/bin/elb-drain", binary.to_str().unwrap())
            .replace("/etc/elb-drain/elb-drain.toml", config.to_str().unwrap());
        let out = Command::new("/bin/sh")
            .args(["-c", &script])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let agent = Path::new(env!("CARGO_BIN_EXE_elb-drain"));
    let example = dir.path().join("example.toml");
    std::fs::write(&example, include_str!("../config/elb-drain.toml")).unwrap();
    let configured = dir.path().join("configured.toml");
    std::fs::write(
        &configured,
        include_str!("../config/elb-drain.toml").replace("\nexample = true\n", "\n"),
    )
    .unwrap();

    assert_eq!(condition(agent, &configured).0, Some(0));
    let (code, err) = condition(agent, &example);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("still the example"), "{err}");

    // An elb-drain from before is-configured existed: clap's usage error, 2.
    let old = dir.path().join("old-elb-drain");
    std::fs::write(
        &old,
        "#!/bin/sh\necho \"error: unrecognized subcommand '$3'\" >&2\nexit 2\n",
    )
    .unwrap();
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o755)).unwrap();
    let gone = dir.path().join("gone/elb-drain");
    for (binary, why) in [(&old, "exited 2"), (&gone, "exited 127")] {
        for config in [&configured, &example] {
            let (code, err) = condition(binary, config);
            assert_eq!(code, Some(255), "{}: {err}", binary.display());
            assert!(
                err.contains(why) && err.contains("failing the start"),
                "{}: {err}",
                binary.display()
            );
        }
    }
}
