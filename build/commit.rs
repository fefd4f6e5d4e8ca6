//! Which commit `elb-drain --version` names. Shared by `build.rs` (which stamps it) and
//! `tests/version.rs` (which checks the stamp against the same answer, and hands `resolve` its own).

use std::path::Path;
use std::process::Command;

/// The commit to report: `ELB_DRAIN_COMMIT` when it is set (a build from a source tarball, a
/// distribution's package), else what git says about this very source tree, else "unknown".
pub fn resolve(env: Option<&str>, git: impl FnOnce() -> Option<String>) -> String {
    if let Some(commit) = env.map(str::trim).filter(|c| !c.is_empty()) {
        return commit.to_owned();
    }
    git().unwrap_or_else(|| "unknown".to_owned())
}

/// HEAD of the git work tree whose top is `dir`, abbreviated; `None` when `dir` is not the top of
/// one: a source tarball unpacked inside some other repository (a packaging repo) must not report
/// that repository's commit.
pub fn head(dir: &Path) -> Option<String> {
    is_top(dir).then(|| git(dir, &["rev-parse", "--short=12", "HEAD"]))?
}

/// Whether `dir` is the top of a git work tree.
pub fn is_top(dir: &Path) -> bool {
    let Some(top) = git(dir, &["rev-parse", "--show-toplevel"]) else {
        return false;
    };
    match (Path::new(&top).canonicalize(), dir.canonicalize()) {
        (Ok(top), Ok(dir)) => top == dir,
        _ => false,
    }
}

/// `git ARGS` in `dir`: its trimmed stdout when it succeeded.
pub fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !text.is_empty()).then_some(text)
}
