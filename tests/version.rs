//! `elb-drain --version` names the version and the commit the binary was built from (`build.rs`), so a
//! binary found on a server, from the .deb or the static build, says which source it is. The static
//! build is checked too when `ELB_DRAIN_STATIC_BIN` names it (`.ci/run` builds it): the same version
//! line, and no dynamic loader. The package's binary is checked against this one in `systemd_boot.rs`.

use std::path::Path;
use std::process::Command;

#[path = "../build/commit.rs"]
mod commit;

fn version_of(binary: &Path) -> String {
    let out = Command::new(binary)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", binary.display()));
    assert!(out.status.success(), "{}: {}", binary.display(), out.status);
    String::from_utf8(out.stdout).expect("UTF-8")
}

#[test]
fn version_names_the_version_and_the_commit_of_this_source_tree() {
    let version = version_of(Path::new(env!("CARGO_BIN_EXE_elb-drain")));
    // An explicit ELB_DRAIN_COMMIT at build time wins over git (a packager's choice); CI sets none.
    let commit = match std::env::var("ELB_DRAIN_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_owned(),
        _ => commit::head(Path::new(env!("CARGO_MANIFEST_DIR")))
            .unwrap_or_else(|| "unknown".to_owned()),
    };
    assert_eq!(
        version,
        format!(
            "elb-drain {} (commit {commit})\n",
            env!("CARGO_PKG_VERSION")
        )
    );
}

#[test]
fn without_git_the_commit_comes_from_the_environment_else_it_is_unknown() {
    let git = || Some("0123456789ab".to_owned());
    let no_git = || None;
    assert_eq!(commit::resolve(None, git), "0123456789ab");
    assert_eq!(
        commit::resolve(Some("v0.1.0-tarball"), git),
        "v0.1.0-tarball"
    );
    assert_eq!(commit::resolve(Some(" 89abcdef "), no_git), "89abcdef");
    assert_eq!(commit::resolve(Some(""), no_git), "unknown");
    assert_eq!(commit::resolve(None, no_git), "unknown");
}

#[test]
fn the_static_build_reports_the_same_version_and_needs_no_loader() {
    // The check below can fail: this (glibc) build does ask for a loader.
    let ours = std::fs::read(env!("CARGO_BIN_EXE_elb-drain")).expect("this build");
    assert!(program_headers(&ours).contains(&PT_INTERP));
    let Some(binary) = std::env::var_os("ELB_DRAIN_STATIC_BIN") else {
        eprintln!(
            "SKIPPED the static build: ELB_DRAIN_STATIC_BIN is unset (cargo build --release -p \
             elb-drain --target x86_64-unknown-linux-musl; .ci/run builds and sets it)"
        );
        return;
    };
    let binary = Path::new(&binary);
    assert_eq!(
        version_of(binary),
        version_of(Path::new(env!("CARGO_BIN_EXE_elb-drain")))
    );
    let elf = std::fs::read(binary).expect("the static binary");
    assert!(
        !program_headers(&elf).contains(&PT_INTERP),
        "{} asks for a dynamic loader (PT_INTERP): not a static build",
        binary.display()
    );
}

const PT_INTERP: u32 = 3;

/// The `p_type` of each program header of a little-endian ELF64 file.
fn program_headers(elf: &[u8]) -> Vec<u32> {
    assert!(
        elf.len() > 64 && elf[..4] == *b"\x7fELF" && elf[4] == 2 && elf[5] == 1,
        "not a little-endian ELF64 file"
    );
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().expect("8 bytes")) as usize;
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    (0..count)
        .map(|i| {
            let at = phoff + i * size;
            u32::from_le_bytes(elf[at..at + 4].try_into().expect("4 bytes"))
        })
        .collect()
}
