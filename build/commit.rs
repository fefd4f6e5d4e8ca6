//! Which commit `elb-drain --version` names. Shared by `build.rs` (which asks git) and the tests
//! (which hand in their own answers).

/// The commit to report: `ELB_DRAIN_COMMIT` when it is set (a build from a source tarball, a
/// distribution's package), else what git says about this very source tree, else "unknown".
pub fn resolve(env: Option<&str>, git: impl FnOnce() -> Option<String>) -> String {
    if let Some(commit) = env.map(str::trim).filter(|c| !c.is_empty()) {
        return commit.to_owned();
    }
    git().unwrap_or_else(|| "unknown".to_owned())
}
