//! A tiny filesystem that is full, for the state file: a 16 KiB tmpfs mounted in a mount namespace of
//! its own, which a holder process keeps alive. Nothing of it reaches the machine's own mount table
//! (the namespace is private), and it is gone when the holder is killed (by the guard, also when the
//! test fails) or after 10 minutes at most.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{ProcGuard, wait_until};

pub struct FullFs {
    holder: ProcGuard,
    /// Where it is mounted, in the holder's namespace (on the machine: an ordinary empty directory).
    pub dir: PathBuf,
}

impl FullFs {
    /// Mounts it at `dir` (created if needed), copies in what `stage` holds, then fills it up.
    /// `None` when this machine does not let a test do that (not root, no namespaces): the caller
    /// skips, saying so.
    pub fn mount(dir: &Path, stage: &Path) -> Option<FullFs> {
        std::fs::create_dir_all(dir).unwrap();
        let c = |s: &str| std::ffi::CString::new(s).unwrap();
        let (root, target, tmpfs, size) = (
            c("/"),
            c(dir.to_str().unwrap()),
            c("tmpfs"),
            c("size=16k,mode=0755"),
        );
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            // The filler's write fails when the filesystem is full: that is the point.
            "cp -a \"$0/.\" \"$1/\" && { head -c 1048576 /dev/zero > \"$1/filler\" 2>/dev/null; echo full; exec sleep 600; }",
        ])
        .arg(stage)
        .arg(dir);
        // SAFETY: system calls only, on data prepared above; runs in the forked child.
        unsafe {
            cmd.pre_exec(move || {
                if libc::unshare(libc::CLONE_NEWNS) != 0
                    || libc::mount(
                        std::ptr::null(),
                        root.as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null(),
                    ) != 0
                    || libc::mount(
                        tmpfs.as_ptr(),
                        target.as_ptr(),
                        tmpfs.as_ptr(),
                        0,
                        size.as_ptr().cast(),
                    ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let holder = match ProcGuard::try_spawn_with_stderr(cmd, None) {
            Ok(guard) => guard,
            Err(e) => {
                eprintln!("SKIPPED: cannot mount a tmpfs in a mount namespace here: {e}");
                return None;
            }
        };
        if !wait_until(Duration::from_secs(10), || holder.stdout().contains("full")) {
            eprintln!(
                "SKIPPED: the full filesystem was not set up: {}",
                holder.stderr()
            );
            return None;
        }
        Some(FullFs {
            holder,
            dir: dir.to_owned(),
        })
    }

    /// Runs `cmd` in the namespace: it sees the full filesystem at [`FullFs::dir`].
    pub fn enter(&self, cmd: &mut Command) {
        let ns = std::fs::File::open(format!("/proc/{}/ns/mnt", self.holder.pid()))
            .expect("the holder's mount namespace");
        // SAFETY: setns(2) on a descriptor we hold open (moved into the closure); in the forked child.
        unsafe {
            cmd.pre_exec(move || {
                use std::os::fd::AsRawFd;
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNS) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// A path in it, as the namespace sees it (through the holder's root).
    pub fn path(&self, name: &str) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{}/root{}",
            self.holder.pid(),
            self.dir.join(name).display()
        ))
    }

    /// The names in it.
    pub fn list(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.path(""))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}
