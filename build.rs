//! Stamps the commit the agent is built from into `elb-drain --version` (env `ELB_DRAIN_COMMIT` at
//! compile time), so a binary found on a server, static or from the .deb, says what source it is.
//!
//! Git is asked only when this crate's directory is the top of a git work tree: a source tarball
//! unpacked inside some other repository (a packaging repo) must not report that repository's commit.
//! Without git the fallback is the `ELB_DRAIN_COMMIT` environment variable, then "unknown". The
//! commit is rechecked when `HEAD` or the branch it points at moves, not on every build; a work tree
//! with uncommitted changes still reports its last commit.

use std::path::{Path, PathBuf};

#[path = "build/commit.rs"]
mod commit;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=build/commit.rs");
    println!("cargo:rerun-if-env-changed=ELB_DRAIN_COMMIT");
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let env = std::env::var("ELB_DRAIN_COMMIT").ok();
    let commit = commit::resolve(env.as_deref(), || from_git(&dir));
    println!("cargo:rustc-env=ELB_DRAIN_COMMIT={commit}");
}

fn from_git(dir: &Path) -> Option<String> {
    if !commit::is_top(dir) {
        return None;
    }
    // Rerun when HEAD moves to another branch or commit, or the branch itself moves (a loose ref, or
    // packed-refs once git packed it). Only files that exist: cargo reruns a script on every build
    // while a file it watches is missing.
    let mut watch = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
    if let Some(branch) = commit::git(dir, &["symbolic-ref", "-q", "HEAD"]) {
        watch.push(branch);
    }
    for name in watch {
        if let Some(path) = commit::git(dir, &["rev-parse", "--git-path", &name]) {
            let path = dir.join(path);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    // Asked after the watches are set: a repository without a commit yet gets one later.
    commit::head(dir)
}
