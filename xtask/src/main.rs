//! Release chores, run as `cargo xtask COMMAND` (an alias in `.cargo/config.toml`).
//!
//! * `assets [DIR]`: the man pages (one per command, clap_mangen) and the bash and zsh completions
//!   (clap_complete), generated from `elb_drain::cli::Args`, the type the agent itself parses its command
//!   line with, so they cannot drift from it. Into `target/assets` by default, where the Debian package's
//!   assets (Cargo.toml, `[package.metadata.deb]`) take them from. They live here, not in the agent or its
//!   build script: the agent would carry two more crates, and its build script cannot use its own CLI.
//! * `deb [ARGS]`: `assets`, `cargo build --release -p elb-drain`, then `cargo deb -p elb-drain --no-build
//!   ARGS` (needs cargo-deb: `cargo install cargo-deb --locked`), so the package never holds pages from
//!   another build. The build is the agent's alone, as BENCHMARKS.md measures it: cargo-deb's own build
//!   (`--bin elb-drain` of the workspace's default members) unifies features with elb-sim's and makes a
//!   larger binary. `--target T` among ARGS goes to the build too.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use clap::CommandFactory;
use clap_complete::Shell;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let result = match args.next().as_deref() {
        Some("assets") => {
            let dir = args.next().map_or_else(default_assets_dir, PathBuf::from);
            assets(&dir)
        }
        Some("deb") => assets(&default_assets_dir()).and_then(|()| deb(args.collect())),
        _ => Err("usage: cargo xtask assets [DIR] | cargo xtask deb [CARGO-DEB ARGS...]".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `target/assets` of the workspace: the path the package's assets name (cargo-deb reads it relative
/// to the crate, whatever CARGO_TARGET_DIR says).
fn default_assets_dir() -> PathBuf {
    workspace().join("target/assets")
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask/ sits in the workspace")
        .to_owned()
}

/// Writes `DIR/man/*.1` and `DIR/completions/{elb-drain.bash,_elb-drain}`, replacing what was there.
fn assets(dir: &Path) -> Result<(), String> {
    let man = dir.join("man");
    let completions = dir.join("completions");
    for d in [&man, &completions] {
        // A page of a command that no longer exists must not be packaged.
        match std::fs::remove_dir_all(d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", d.display())),
        }
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    clap_mangen::generate_to(elb_drain::cli::Args::command(), &man)
        .map_err(|e| format!("man pages: {e}"))?;
    for (shell, file) in [(Shell::Bash, "elb-drain.bash"), (Shell::Zsh, "_elb-drain")] {
        let mut script = Vec::new();
        clap_complete::generate(
            shell,
            &mut elb_drain::cli::Args::command(),
            "elb-drain",
            &mut script,
        );
        let mut script = String::from_utf8(script).map_err(|e| format!("{file}: {e}"))?;
        if shell == Shell::Bash {
            // clap_complete 4.6 names the per-command branches of a binary with a '-' in its name
            // inconsistently: the word loop sets cmd="elb__drain__subcmd__exec", the branch is labelled
            // "elb__subcmd__drain__subcmd__exec)", and no command's options would ever complete.
            // `bash_completes_every_command_and_its_options` below runs the script in bash.
            script = script.replace("elb__subcmd__drain", "elb__drain");
        }
        let path = completions.join(file);
        std::fs::write(&path, script).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    eprintln!("xtask: man pages and completions in {}", dir.display());
    Ok(())
}

fn deb(args: Vec<String>) -> Result<(), String> {
    let target = args
        .iter()
        .position(|a| a == "--target")
        .and_then(|i| args.get(i + 1));
    let mut build = cargo();
    build.args(["build", "--release", "-p", "elb-drain"]);
    if let Some(target) = target {
        build.args(["--target", target]);
    }
    run(build, "cargo build")?;
    let mut deb = cargo();
    deb.args(["deb", "-p", "elb-drain", "--no-build"])
        .args(&args);
    run(
        deb,
        "cargo deb (not installed? `cargo install cargo-deb --locked`)",
    )
}

/// elb-sim's, shared as a file rather than a dependency: xtask needs only these few lines of it.
#[path = "../../elb-sim/src/nested_cargo.rs"]
mod nested_cargo;

/// `cargo` in the workspace, without the variables `cargo run` set for this program: with them the
/// release build here and every plain one after it would each rebuild ring and what depends on it.
fn cargo() -> Command {
    let mut cmd = nested_cargo::cargo();
    cmd.current_dir(workspace());
    cmd
}

fn run(mut cmd: Command, what: &str) -> Result<(), String> {
    match cmd.status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("{what}: {s}")),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

#[cfg(test)]
mod coverage;

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command a user can type is in the main page, has a page of its own listing each of its
    /// options, and is completed by both shells.
    #[test]
    fn the_pages_and_completions_cover_every_command_and_option() {
        let dir = tempfile::tempdir().unwrap();
        assets(dir.path()).unwrap();
        let read = |p: &str| std::fs::read_to_string(dir.path().join(p)).unwrap();
        coverage::assert_covers(
            &elb_drain::cli::Args::command(),
            &coverage::Assets {
                main_page: &read("man/elb-drain.1"),
                command_page: &|name| read(&format!("man/elb-drain-{name}.1")),
                bash: &read("completions/elb-drain.bash"),
                zsh: &read("completions/_elb-drain"),
            },
        );
    }

    /// The bash script, run by bash the way bash-completion runs it: `elb-drain <TAB>` offers every
    /// command, and `elb-drain COMMAND --<TAB>` every long option of that command.
    #[test]
    fn bash_completes_every_command_and_its_options() {
        let dir = tempfile::tempdir().unwrap();
        assets(dir.path()).unwrap();
        let script = dir.path().join("completions/elb-drain.bash");
        // What bash-completion would call for the words typed so far: the function `complete -p`
        // names, with the command, the current word and the previous one.
        let complete = |words: &[&str]| -> Vec<String> {
            let cword = words.len() - 1;
            let shell = format!(
                "source {script}; COMP_WORDS=({words}); COMP_CWORD={cword}; \
                 f=$(complete -p elb-drain | sed -E 's/.*-F ([^ ]+) .*/\\1/'); \
                 \"$f\" elb-drain {cur} {prev}; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
                script = script.display(),
                words = words
                    .iter()
                    .map(|w| format!("'{w}'"))
                    .collect::<Vec<_>>()
                    .join(" "),
                cur = format_args!("'{}'", words[cword]),
                prev = format_args!("'{}'", words[cword - 1]),
            );
            let out = Command::new("bash")
                .args(["--norc", "-c", &shell])
                .output()
                .expect("bash");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout)
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect()
        };
        let cli = elb_drain::cli::Args::command();
        let top = complete(&["elb-drain", ""]);
        for cmd in cli.get_subcommands().filter(|c| !c.is_hide_set()) {
            let name = cmd.get_name();
            assert!(
                top.iter().any(|w| w == name),
                "elb-drain <TAB>: {top:?} lacks {name}"
            );
            let offered = complete(&["elb-drain", name, "--"]);
            for long in cmd.get_arguments().filter_map(|a| a.get_long()) {
                assert!(
                    offered.iter().any(|w| *w == format!("--{long}")),
                    "elb-drain {name} --<TAB>: {offered:?} lacks --{long}"
                );
            }
        }
    }

    /// A second run replaces the first: a page of a command that was removed does not linger to be
    /// packaged.
    #[test]
    fn a_rerun_leaves_no_stale_page() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("man")).unwrap();
        std::fs::write(dir.path().join("man/elb-drain-gone.1"), "stale").unwrap();
        assets(dir.path()).unwrap();
        assert!(!dir.path().join("man/elb-drain-gone.1").exists());
        assert!(dir.path().join("man/elb-drain-run.1").exists());
    }
}
