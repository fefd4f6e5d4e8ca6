//! A `cargo` command for a build started from inside a program that cargo runs (`cargo run`, a test,
//! a bench): the demo and the benches build the agent this way, and so does `cargo xtask deb`, which
//! includes this file (`#[path]`) so as not to depend on elb-sim for these few lines. Keep it to std.

/// `cargo` (the one running this program under cargo, else the one on PATH), without the variables
/// cargo sets for a program it runs. A build script that tracks one of them (ring tracks
/// `CARGO_MANIFEST_DIR`) would otherwise be rebuilt by this nested build and again by the next plain
/// one, every time: a minute each.
pub fn cargo() -> std::process::Command {
    let mut cmd =
        std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        let set_by_cargo = ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_BIN_EXE_"]
            .iter()
            .any(|p| name.starts_with(p))
            || [
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
                "OUT_DIR",
            ]
            .contains(&name);
        if set_by_cargo {
            cmd.env_remove(name);
        }
    }
    cmd
}
