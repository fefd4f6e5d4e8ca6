//! Getting onto a server without the Debian package: the static binary carries what the package would
//! install for it to run (the systemd unit and the documented example configuration, a few KiB of
//! text), so one file from an artifact store is enough. `install-units` puts them where an
//! administrator's own units and configuration go and enables the unit, as the package does;
//! `is-configured` is the condition under which that unit starts, on either route.
//!
//! The unit is the same text on both routes but for the binary its Exec lines name: the package's
//! `/usr/bin/elb-drain`, or the binary `install-units` runs from. Always a full path: systemd looks a
//! bare name up in /usr/local/bin before /usr/bin, so an older copy left in /usr/local/bin would run in
//! place of the package's, and one too old to know `is-configured` would have the unit skipped on a
//! configured server.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cli::Args;
use crate::config;
use crate::exit::Exit;
use crate::logging::eprintln;

/// `systemd/elb-drain.service`, byte for byte: what the package installs.
pub const UNIT: &str = include_str!("../systemd/elb-drain.service");
/// The binary [`UNIT`]'s Exec lines name: the package's.
pub const PACKAGE_BINARY: &str = "/usr/bin/elb-drain";
/// Where the package puts [`UNIT`].
const PACKAGE_UNIT: &str = "/usr/lib/systemd/system/elb-drain.service";
/// `config/elb-drain.toml`, byte for byte: still marked `example = true`.
pub const EXAMPLE: &str = include_str!("../config/elb-drain.toml");

const UNIT_NAME: &str = "elb-drain.service";
/// Where systemd looks for units an administrator installed: before /usr/lib/systemd/system (the
/// package's), after /etc/systemd/system (left to the administrator's own drop-ins).
const UNIT_DIR: &str = "usr/local/lib/systemd/system";

/// `is-configured`: 0 when the configuration file describes a server, 1 while it is absent or still the
/// example. For the unit's `ExecCondition=`, which skips the start on 1 and fails it on anything else
/// (see the unit), so 1 means this and nothing else: `cli::main` runs it before it builds a runtime,
/// whose failure would exit 1 too. A file that is there but cannot be read here (uid 0 without
/// capabilities: it may belong to someone else) is not known to be the example: 0, so that the start
/// goes ahead and either works (systemd, fully root, hands the agent a copy) or fails where it is seen.
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

/// `install-units`: the unit naming this binary (always: it belongs to this binary, like a package's),
/// the example configuration (only where there is none: an administrator's file is never replaced),
/// then `systemctl enable`, which also makes a running systemd reload.
pub fn install_units(root: &Path) -> Result<Exit, Exit> {
    let binary = std::env::current_exe()
        .map_err(BinaryError::CurrentExe)
        .and_then(|exe| UnitBinary::find(&exe, root))
        .and_then(|binary| binary.not_packaged(root))
        .map_err(|e| {
            eprintln!("elb-drain: install-units: {e}");
            Exit::Failure
        })?;
    let unit = root.join(UNIT_DIR).join(UNIT_NAME);
    replace(&unit, &unit_for(&binary)).map_err(|e| failed(&unit, e))?;
    println!("wrote {} (it runs {})", unit.display(), binary.0);

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

/// A path to this binary that the unit can name: as the system the unit is for sees it (inside
/// `--root`), visible in the unit's sandbox, and needing no quoting in a unit or a shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitBinary(String);

/// Why this binary cannot be named by the unit where it is. Each says what to do instead.
#[derive(Debug, thiserror::Error)]
pub enum BinaryError {
    #[error("cannot tell where this binary is: {0}")]
    CurrentExe(std::io::Error),
    #[error(
        "{path}: the unit's sandbox hides {under} from the agent ({why}), so the unit could not run this \
         binary; install it first (`sudo install -m 0755 {path} /usr/local/bin/`) and run install-units \
         from there"
    )]
    Hidden {
        path: PathBuf,
        under: &'static str,
        why: &'static str,
    },
    #[error(
        "{0}: the unit would have to quote this path; install the binary where its path has only \
         letters, digits and / . _ - + (`sudo install -m 0755 ... /usr/local/bin/`), and run \
         install-units from there"
    )]
    Unquotable(PathBuf),
    #[error(
        "this binary ({exe}) is not in {root}, and {in_root} is not a copy of it: the unit would run \
         another binary; copy this one to {in_root} first, or run install-units from a copy inside \
         {root}"
    )]
    NotInRoot {
        exe: PathBuf,
        root: PathBuf,
        in_root: PathBuf,
    },
    #[error(
        "{binary} and {unit} are the Debian package's, which installed and enabled the unit already; \
         install-units is for the static binary (a unit of its own would override the package's, and \
         its upgrades)"
    )]
    Packaged { binary: String, unit: PathBuf },
}

/// Where the unit's sandbox (PrivateTmp=, ProtectHome=, PrivateDevices=) puts something else, and why.
const HIDDEN: [(&str, &str); 6] = [
    ("/tmp", "PrivateTmp=yes"),
    ("/var/tmp", "PrivateTmp=yes"),
    ("/home", "ProtectHome=yes"),
    ("/root", "ProtectHome=yes"),
    ("/run/user", "ProtectHome=yes"),
    ("/dev", "PrivateDevices=yes"),
];

impl UnitBinary {
    /// The binary at `exe` (this process's, symbolic links resolved), for a unit installed into
    /// `root`: its path inside `root` when it lies there (an image bake runs the copy it put in the
    /// image); else the same path, which must then hold a copy of it in `root` too.
    pub fn find(exe: &Path, root: &Path) -> Result<UnitBinary, BinaryError> {
        let root = root.canonicalize().unwrap_or_else(|_| root.to_owned());
        let path = match exe.strip_prefix(&root) {
            Ok(inside) => Path::new("/").join(inside),
            Err(_) => {
                let in_root = root.join(exe.strip_prefix("/").unwrap_or(exe));
                let same = match (std::fs::read(exe), std::fs::read(&in_root)) {
                    (Ok(a), Ok(b)) => a == b,
                    _ => false,
                };
                if !same {
                    return Err(BinaryError::NotInRoot {
                        exe: exe.to_owned(),
                        root,
                        in_root,
                    });
                }
                exe.to_owned()
            }
        };
        if let Some((under, why)) = HIDDEN.iter().find(|(dir, _)| path.starts_with(dir)) {
            return Err(BinaryError::Hidden { path, under, why });
        }
        let text = path.to_str().unwrap_or_default();
        let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+".contains(c);
        if text.is_empty() || !text.chars().all(plain) {
            return Err(BinaryError::Unquotable(path));
        }
        Ok(UnitBinary(text.to_owned()))
    }
}

impl UnitBinary {
    /// Refuses the package's own binary where the package's unit is installed: install-units would put
    /// a copy of that unit where systemd prefers it to the package's, and the package's next versions
    /// of it would never run.
    fn not_packaged(self, root: &Path) -> Result<UnitBinary, BinaryError> {
        let unit = root.join(PACKAGE_UNIT.trim_start_matches('/'));
        if self.0 == PACKAGE_BINARY && unit.exists() {
            return Err(BinaryError::Packaged {
                binary: self.0,
                unit,
            });
        }
        Ok(self)
    }
}

/// [`UNIT`] with its Exec lines naming `binary` in place of the package's; comments unchanged.
pub fn unit_for(binary: &UnitBinary) -> String {
    UNIT.split_inclusive('\n')
        .map(|line| {
            if line.starts_with("Exec") {
                line.replace(PACKAGE_BINARY, &binary.0)
            } else {
                line.to_owned()
            }
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn exec_lines(unit: &str) -> Vec<&str> {
        unit.lines().filter(|l| l.starts_with("Exec")).collect()
    }

    /// Every Exec line of the unit names the binary by its full path, never by a bare `elb-drain`,
    /// which systemd would look up in /usr/local/bin first.
    #[test]
    fn the_unit_names_the_binary_by_its_full_path_only() {
        let lines = exec_lines(UNIT);
        assert!(lines.len() >= 2, "{lines:?}");
        for line in lines {
            assert!(line.contains(PACKAGE_BINARY), "{line}");
            let bare = line.replace(PACKAGE_BINARY, "");
            assert!(
                !bare.contains("elb-drain --") && !bare.contains("elb-drain "),
                "a bare elb-drain in {line}"
            );
        }
    }

    #[test]
    fn the_installed_unit_names_the_installing_binary_in_every_exec_line() {
        let binary = UnitBinary("/opt/elb-drain/bin/elb-drain".to_owned());
        let unit = unit_for(&binary);
        for line in exec_lines(&unit) {
            assert!(!line.contains(PACKAGE_BINARY), "{line}");
            assert!(line.contains(&binary.0), "{line}");
        }
        let changed: Vec<_> = UNIT
            .lines()
            .zip(unit.lines())
            .filter(|(a, b)| a != b)
            .collect();
        assert_eq!(changed.len(), exec_lines(UNIT).len(), "{changed:#?}");
        assert_eq!(unit.lines().count(), UNIT.lines().count());
    }

    #[test]
    fn a_binary_in_the_root_is_named_by_its_path_inside() {
        let root = tempfile::tempdir().unwrap();
        let exe = root.path().join("usr/local/bin/elb-drain");
        std::fs::create_dir_all(exe.parent().unwrap()).unwrap();
        std::fs::write(&exe, "binary").unwrap();
        let found = UnitBinary::find(&exe, root.path()).unwrap();
        assert_eq!(found.0, "/usr/local/bin/elb-drain");
    }

    #[test]
    fn a_binary_outside_the_root_needs_its_copy_at_the_same_path_inside() {
        let host = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let exe = host.path().join("elb-drain");
        std::fs::write(&exe, "this binary").unwrap();
        let err = UnitBinary::find(&exe, root.path()).unwrap_err();
        assert!(matches!(err, BinaryError::NotInRoot { .. }), "{err}");
        assert!(err.to_string().contains("copy this one to"), "{err}");

        let in_root = root.path().join(exe.strip_prefix("/").unwrap());
        std::fs::create_dir_all(in_root.parent().unwrap()).unwrap();
        std::fs::write(&in_root, "an older binary").unwrap();
        assert!(matches!(
            UnitBinary::find(&exe, root.path()),
            Err(BinaryError::NotInRoot { .. })
        ));
        std::fs::write(&in_root, "this binary").unwrap();
        // The tempdir lives under /tmp here, which the sandbox hides: found, and then refused as such.
        match UnitBinary::find(&exe, root.path()) {
            Ok(found) => assert_eq!(found.0, exe.to_str().unwrap()),
            Err(BinaryError::Hidden { under, .. }) => assert!(exe.starts_with(under)),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn a_binary_the_sandbox_hides_or_a_path_that_needs_quoting_is_refused() {
        let root = Path::new("/");
        for (path, under) in [
            ("/tmp/elb-drain", "/tmp"),
            ("/var/tmp/x/elb-drain", "/var/tmp"),
            ("/root/elb-drain", "/root"),
            ("/home/ops/bin/elb-drain", "/home"),
            ("/run/user/0/elb-drain", "/run/user"),
            ("/dev/shm/elb-drain", "/dev"),
        ] {
            match UnitBinary::find(Path::new(path), root) {
                Err(BinaryError::Hidden { under: u, .. }) => assert_eq!(u, under, "{path}"),
                other => panic!("{path}: {other:?}"),
            }
        }
        // Not hidden: a directory that only starts like one.
        assert_eq!(
            UnitBinary::find(Path::new("/tmpfs-bin/elb-drain"), root)
                .unwrap()
                .0,
            "/tmpfs-bin/elb-drain"
        );
        for path in [
            "/opt/my tools/elb-drain",
            "/opt/100%/elb-drain",
            "/opt/$x/elb-drain",
            "/opt/it's/elb-drain",
        ] {
            assert!(
                matches!(
                    UnitBinary::find(Path::new(path), root),
                    Err(BinaryError::Unquotable(_))
                ),
                "{path}"
            );
        }
    }
}
