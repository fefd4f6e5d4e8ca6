//! Getting onto a server without the Debian package: the static binary carries what the package would
//! install for it to run (the systemd unit and the documented example configuration, a few KiB of
//! text), so one file from an artifact store is enough. `install-units` puts them where an
//! administrator's own units and configuration go and enables the unit, as the package does;
//! `is-configured` is the condition under which that unit starts, on either route.
//!
//! The unit is the same text on both routes: its `ExecStart=` names `elb-drain` without a directory,
//! which systemd looks up in /usr/local/bin before /usr/bin, as a shell does.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cli::Args;
use crate::config;
use crate::exit::Exit;

/// `systemd/elb-drain.service`, byte for byte.
pub const UNIT: &str = include_str!("../systemd/elb-drain.service");
/// `config/elb-drain.toml`, byte for byte: still marked `example = true`.
pub const EXAMPLE: &str = include_str!("../config/elb-drain.toml");

const UNIT_NAME: &str = "elb-drain.service";
/// Where systemd looks for units an administrator installed: before /usr/lib/systemd/system (the
/// package's), after /etc/systemd/system (left to the administrator's own drop-ins).
const UNIT_DIR: &str = "usr/local/lib/systemd/system";

/// `is-configured`: 0 when the configuration file describes a server, 1 while it is absent or still the
/// example. For the unit's `ExecCondition=`, which skips the start (not fails it) on 1. A file that is
/// there but cannot be read here is not known to be the example: 0, so that the start goes ahead and
/// fails loudly if systemd or the agent cannot read it either, instead of being skipped quietly.
pub fn is_configured(args: &Args) -> Result<Exit, Exit> {
    match config::is_example(&args.config) {
        Ok(false) => Ok(Exit::Ok),
        Ok(true) => {
            let why = if args.config.exists() {
                "still the example (`example = true`)"
            } else {
                "absent"
            };
            eprintln!(
                "elb-drain: {}: {why}: not a configuration of this server yet, nothing to run",
                args.config.display()
            );
            Err(Exit::Failure)
        }
        Err(e) => {
            eprintln!(
                "elb-drain: {e}: not known to be the example, so it counts as a configuration"
            );
            Ok(Exit::Ok)
        }
    }
}

/// `install-units`: the unit (always: it belongs to this binary, like a package's), the example
/// configuration (only where there is none: an administrator's file is never replaced), then
/// `systemctl enable`, which also makes a running systemd reload.
pub fn install_units(root: &Path) -> Result<Exit, Exit> {
    let unit = root.join(UNIT_DIR).join(UNIT_NAME);
    replace(&unit, UNIT).map_err(|e| failed(&unit, e))?;
    println!("wrote {}", unit.display());

    let config = root.join(config::DEFAULT_PATH.trim_start_matches('/'));
    match create(&config, EXAMPLE, 0o640) {
        Ok(true) => println!(
            "wrote {} (the example: nothing starts until it describes this server)",
            config.display()
        ),
        Ok(false) => println!("kept {} (already there)", config.display()),
        Err(e) => return Err(failed(&config, e)),
    }

    let mut systemctl = Command::new("systemctl");
    if root != Path::new("/") {
        systemctl.arg(format!("--root={}", root.display()));
    }
    systemctl.args(["--quiet", "enable", UNIT_NAME]);
    match systemctl.status() {
        Ok(s) if s.success() => {}
        Ok(s) => {
            eprintln!("elb-drain: systemctl enable {UNIT_NAME}: {s}");
            return Err(Exit::Failure);
        }
        Err(e) => {
            eprintln!(
                "elb-drain: systemctl: {e}; the files are in place, enable {UNIT_NAME} yourself"
            );
            return Err(Exit::Failure);
        }
    }
    println!(
        "enabled {UNIT_NAME}: it starts at boot (or with `systemctl start elb-drain`) once {} is \
         configured; bind it to your application with `systemctl edit elb-drain`",
        config::DEFAULT_PATH
    );
    Ok(Exit::Ok)
}

fn failed(path: &Path, e: std::io::Error) -> Exit {
    eprintln!("elb-drain: {}: {e}", path.display());
    Exit::Failure
}

/// Writes `text` to `path` through a temporary file and a rename: a unit is never seen half-written.
fn replace(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path.parent().expect("a unit path has a directory");
    std::fs::create_dir_all(dir)?;
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Creates `path` with `text` and `mode` unless something is there already; whether it did. The file
/// has its mode from the start, so it is never readable by others for a moment.
fn create(path: &Path, text: &str, mode: u32) -> std::io::Result<bool> {
    std::fs::create_dir_all(path.parent().expect("a config path has a directory"))?;
    let mut file = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(e),
    };
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    Ok(true)
}
