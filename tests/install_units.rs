//! The static binary's install (`elb-drain install-units --root DIR`, as an image bake runs it): the unit
//! and the example where the package would not put them, enabled, and an administrator's configuration
//! never replaced; `is-configured` tells the example from a configuration. Under a real systemd, with
//! the binary in /usr/local/bin, `systemd_boot.rs` runs what this writes.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn elb_drain(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_elb-drain"))
        .args(args)
        .output()
        .expect("elb-drain runs")
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
    if Command::new("systemctl").arg("--version").output().is_err() {
        eprintln!(
            "SKIPPED install_units: no systemctl here (apt-get install systemd; .ci/run does)"
        );
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let root_arg = format!("--root={}", root.path().display());
    let out = elb_drain(&["install-units", &root_arg]);
    assert!(out.status.success(), "{out:?}");

    let unit = root
        .path()
        .join("usr/local/lib/systemd/system/elb-drain.service");
    let config = root.path().join("etc/elb-drain/elb-drain.toml");
    assert_eq!(
        std::fs::read_to_string(&unit).unwrap(),
        include_str!("../systemd/elb-drain.service")
    );
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
    let out = elb_drain(&["install-units", &root_arg]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("kept"),
        "{out:?}"
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), edited);
    assert_eq!(
        std::fs::read_to_string(&unit).unwrap(),
        include_str!("../systemd/elb-drain.service")
    );
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
