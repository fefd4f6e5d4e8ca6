//! A small filesystem for the state file, misbehaving: a tmpfs mounted in a mount namespace of its own,
//! which a holder process keeps alive. [`PrivateFs::full`] is full; [`PrivateFs::hangable`] works until
//! [`PrivateFs::hang`] mounts over it a FUSE filesystem whose server never answers, which is what a
//! hung NFS server looks like to a writer (every access sleeps in the kernel; SIGKILL ends it).
//! Nothing of it reaches the machine's own mount table (the namespace is private), and it is gone when
//! the holder is killed (by the guard, also when the test fails) or after 10 minutes at most.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{ProcGuard, wait_until};

pub struct PrivateFs {
    holder: ProcGuard,
    /// Where it is mounted, in the holder's namespace (on the machine: an ordinary empty directory).
    pub dir: PathBuf,
    /// For a hangable one: the file whose creation tells the holder to hang it.
    trigger: Option<PathBuf>,
}

impl PrivateFs {
    /// Mounts it at `dir` (created if needed), copies in what `stage` holds, then fills it up.
    /// `None` when this machine does not let a test do that (not root, no namespaces): the caller
    /// skips, saying so.
    pub fn full(dir: &Path, stage: &Path) -> Option<PrivateFs> {
        // The filler's write fails when the filesystem is full: that is the point.
        let fill =
            "head -c 1048576 /dev/zero > \"$1/filler\" 2>/dev/null; echo ready; exec sleep 600";
        PrivateFs::mount(dir, stage, "size=16k,mode=0755", fill, None)
    }

    /// Mounts it at `dir` and copies in what `stage` holds; it works until [`PrivateFs::hang`].
    pub fn hangable(dir: &Path, stage: &Path) -> Option<PrivateFs> {
        if !Path::new("/dev/fuse").exists() {
            eprintln!("SKIPPED: no /dev/fuse here, so no filesystem that stops answering");
            return None;
        }
        let trigger = dir.with_extension("hang-now");
        let _ = std::fs::remove_file(&trigger);
        // /dev/fuse opened and mounted (mount(8) makes the mount(2) call itself when no mount.fuse
        // helper is installed), and never read: no request, the first (INIT) included, is answered.
        let hang = "echo ready; while [ ! -e \"$2\" ]; do sleep 0.02; done; \
                    exec 3<>/dev/fuse && mount -t fuse -o fd=3,rootmode=40000,user_id=0,group_id=0 \
                    elb-drain-hung \"$1\" && echo hung; exec sleep 600";
        PrivateFs::mount(dir, stage, "size=1m,mode=0755", hang, Some(trigger))
    }

    /// From now on every access to it sleeps until the process is killed.
    pub fn hang(&self) {
        let trigger = self.trigger.as_ref().expect("made by PrivateFs::hangable");
        std::fs::write(trigger, "").unwrap();
        assert!(
            wait_until(Duration::from_secs(10), || self
                .holder
                .stdout()
                .contains("hung")),
            "the FUSE mount was not made: {}",
            self.holder.stderr()
        );
    }

    fn mount(
        dir: &Path,
        stage: &Path,
        options: &str,
        then: &str,
        trigger: Option<PathBuf>,
    ) -> Option<PrivateFs> {
        std::fs::create_dir_all(dir).unwrap();
        let c = |s: &str| std::ffi::CString::new(s).unwrap();
        let (root, target, tmpfs, options) =
            (c("/"), c(dir.to_str().unwrap()), c("tmpfs"), c(options));
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &format!("cp -a \"$0/.\" \"$1/\" && {{ {then}; }}")])
            .arg(stage)
            .arg(dir)
            .arg(trigger.as_deref().unwrap_or(Path::new("")));
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
                        options.as_ptr().cast(),
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
        if !wait_until(Duration::from_secs(10), || {
            holder.stdout().contains("ready")
        }) {
            eprintln!(
                "SKIPPED: the filesystem was not set up: {}",
                holder.stderr()
            );
            return None;
        }
        Some(PrivateFs {
            holder,
            dir: dir.to_owned(),
            trigger,
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
