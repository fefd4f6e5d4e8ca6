//! The state file: exactly which memberships this server had, and what a stop did to them, so
//! `register` can put them back as they were, also after a crash or a reboot, and a second stop is a
//! no-op. Written atomically (a temporary file per write, fsync, rename) under systemd's
//! `StateDirectory=`.
//!
//! Crash safety rests on it and on the API together: the removals are recorded right after the
//! DELETEs are answered, so an agent SIGKILLed mid-drain and started again knows its memberships are
//! gone without asking; one killed before the record asks the API again, and a DELETE of a member
//! already gone is a 404, i.e. success. The file is a memory, not a source of truth: one that cannot
//! be parsed is moved aside with a warning ([`State::load_or_warn`]) and the API is asked instead.
//!
//! A full disk only costs that memory: the temporary file cannot be written (ENOSPC, at once), is
//! removed, and the file from before is left whole; the caller logs it and the stop goes on.
//!
//! A disk that stops answering (a hung NFS server, a dead disk, a frozen filesystem) is another
//! matter: the write sleeps in the kernel, and on the runtime's one thread it would hold the whole
//! stop, deadline included. So the agent reads and writes through [`State::load_within`] and
//! [`State::save_within`]: on a thread of its own, waited for at most [`ACCESS_BOUND`], after which
//! the stop goes on without that memory (`drain`, an `ExecStop=`, reads the file at the stop).

use std::collections::HashSet;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::Mode;
use crate::ids::{MemberId, PoolId};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub pool_id: PoolId,
    pub member_id: MemberId,
    pub address: Option<IpAddr>,
    pub protocol_port: Option<u16>,
    /// The weight before the stop: what `register` restores.
    pub weight: Option<u32>,
    pub subnet_cidr_id: Option<String>,
    /// How the last stop took it out, if it did.
    pub removed: Option<Mode>,
    /// When (RFC 3339).
    pub removed_at: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub memberships: Vec<Record>,
}

/// The most a state file may hold: a record is about 300 bytes, so this is thousands of memberships.
const MAX_STATE_FILE: u64 = 4 * 1024 * 1024;

/// How long the agent waits for a read or write of the state file. One takes milliseconds (an fsync
/// on a busy disk, tens of them); one that takes seconds is on a filesystem that stopped answering.
pub const ACCESS_BOUND: Duration = Duration::from_secs(5);

/// State files with a read or write under way on a thread of its own ([`State::save_within`]).
static UNDER_WAY: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// It cannot be read or written (permissions, not a regular file, a full disk).
    #[error("state file {path}: {reason}")]
    Io { path: String, reason: String },
    /// It was read, and is not a state file (not valid JSON, or far too large to be one).
    #[error("state file {path}: {reason}")]
    Corrupt { path: String, reason: String },
}

impl State {
    /// The state at `path`; an absent file is an empty state.
    pub fn load(path: &Path) -> Result<State, StateError> {
        let path_text = || path.display().to_string();
        let corrupt = |reason: String| StateError::Corrupt {
            path: path_text(),
            reason,
        };
        match crate::files::read_small(path, MAX_STATE_FILE) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("not valid JSON ({e})")))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Err(corrupt(e.to_string())),
            Err(e) => Err(StateError::Io {
                path: path_text(),
                reason: e.to_string(),
            }),
        }
    }

    /// The state at `path`, never failing: the state file is a memory, not a source of truth, so a
    /// file that cannot be used costs only that memory. The agent then asks the API (a DELETE of a
    /// member already gone answers 404, which is success) and `register` falls back to the
    /// configuration. A file that is not valid JSON (truncated by a full disk, edited by hand) is moved
    /// aside to `<file>.corrupt`, for a person to look at, so the next save does not destroy it and the
    /// warning is given once; one that cannot be read is left alone. Either way the warning names the
    /// file and says what is done instead.
    pub fn load_or_warn(path: &Path) -> State {
        match State::load(path) {
            Ok(state) => state,
            Err(e @ StateError::Io { .. }) => {
                tracing::warn!(error = %e, "state file ignored: asking the API instead");
                State::default()
            }
            Err(e @ StateError::Corrupt { .. }) => {
                let mut aside = path.as_os_str().to_owned();
                aside.push(".corrupt");
                let aside = std::path::PathBuf::from(aside);
                match std::fs::rename(path, &aside) {
                    Ok(()) => tracing::warn!(
                        error = %e,
                        moved_to = %aside.display(),
                        "state file ignored (moved aside): asking the API instead"
                    ),
                    Err(re) => tracing::warn!(
                        error = %e,
                        rename_error = %re,
                        "state file ignored (could not move it aside): asking the API instead"
                    ),
                }
                State::default()
            }
        }
    }

    /// Writes atomically: readers see the old file or the new one, never half of one.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let err = |reason: String| StateError::Io {
            path: path.display().to_string(),
            reason,
        };
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        // One temporary file per writer: two agents (the daemon and a `drain` from a deploy script),
        // or two threads, sharing one name would write into the same inode and rename a mix.
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let tmp = dir.join(format!(
            ".{}.{}.{}.tmp",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("state"),
            std::process::id(),
            WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let mut f = std::fs::File::create(&tmp).map_err(|e| err(e.to_string()))?;
        let text = serde_json::to_vec_pretty(self).map_err(|e| err(e.to_string()))?;
        let written = f
            .write_all(&text)
            .and_then(|()| f.sync_all())
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(err(e.to_string()));
        }
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// [`State::save`] on a thread of its own, waited for at most `bound`. A write still under way
    /// then (the filesystem does not answer) is an error the caller logs and goes on from; the thread
    /// is left to finish, or to end with the process (a hung NFS or FUSE request gives way to the
    /// exit's SIGKILL). While it is under way, later saves of the same file are not begun (said as an
    /// error too), so stuck threads do not pile up: the agent's saves of a file follow one another,
    /// so one still running when the next comes is one that hung.
    pub async fn save_within(&self, path: &Path, bound: Duration) -> Result<(), StateError> {
        let state = self.clone();
        bounded(path, bound, "written", move |path| state.save(path)).await
    }

    /// [`State::load_or_warn`] on a thread of its own, waited for at most `bound`, as
    /// [`State::save_within`] writes: a file that cannot be read in time is an empty state, said in
    /// a warning, and the API is asked instead. `drain` (an `ExecStop=`) reads it at the stop.
    pub async fn load_within(path: &Path, bound: Duration) -> State {
        match bounded(path, bound, "read", |path| Ok(State::load_or_warn(path))).await {
            Ok(state) => state,
            Err(e) => {
                tracing::warn!(error = %e, "state file ignored: asking the API instead");
                State::default()
            }
        }
    }

    /// Takes in the memberships just resolved, keeping what an earlier stop removed and nobody has put
    /// back yet (it is gone from the pools, so discovery no longer sees it).
    pub fn merge(&mut self, current: Vec<Record>) {
        let same_place = |a: &Record, b: &Record| {
            a.pool_id == b.pool_id && a.address == b.address && a.protocol_port == b.protocol_port
        };
        let old = std::mem::take(&mut self.memberships);
        let mut merged: Vec<Record> = old
            .iter()
            .filter(|o| {
                o.removed.is_some()
                    && !current
                        .iter()
                        .any(|c| same_place(c, o) || c.member_id == o.member_id)
            })
            .cloned()
            .collect();
        for mut c in current {
            if let Some(o) = old
                .iter()
                .find(|o| o.pool_id == c.pool_id && o.member_id == c.member_id)
            {
                c.removed = c.removed.or(o.removed);
                c.removed_at = c.removed_at.take().or(o.removed_at.clone());
                // A weight0 stop leaves 0 in the cloud: the weight before it is the one to restore.
                c.weight = c.weight.filter(|w| *w > 0).or(o.weight);
            }
            merged.push(c);
        }
        self.memberships = merged;
    }

    /// The member is in its pool and taking traffic again (someone put it back): not removed any more.
    pub fn mark_present(&mut self, pool: &PoolId, member: &MemberId) {
        if let Some(r) = self
            .memberships
            .iter_mut()
            .find(|r| &r.pool_id == pool && &r.member_id == member)
        {
            r.removed = None;
            r.removed_at = None;
        }
    }

    pub fn record(&self, pool: &PoolId, member: &MemberId) -> Option<&Record> {
        self.memberships
            .iter()
            .find(|r| &r.pool_id == pool && &r.member_id == member)
    }

    pub fn mark_removed(&mut self, pool: &PoolId, member: &MemberId, mode: Mode) {
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        if let Some(r) = self
            .memberships
            .iter_mut()
            .find(|r| &r.pool_id == pool && &r.member_id == member)
        {
            r.removed = Some(mode);
            r.removed_at = Some(now);
        }
    }
}

/// Runs `access(path)` (a read or a write) on a thread of its own and waits for it at most `bound`
/// (see [`State::save_within`]).
async fn bounded<T: Send + 'static>(
    path: &Path,
    bound: Duration,
    what: &str,
    access: impl FnOnce(&Path) -> Result<T, StateError> + Send + 'static,
) -> Result<T, StateError> {
    let io = |reason: String| StateError::Io {
        path: path.display().to_string(),
        reason,
    };
    let under_way = || UNDER_WAY.lock().unwrap_or_else(|p| p.into_inner());
    if !under_way()
        .get_or_insert_with(HashSet::new)
        .insert(path.to_owned())
    {
        return Err(io(
            "not used: an earlier read or write of it has not finished (the filesystem does not answer)"
                .to_owned(),
        ));
    }
    /// Takes the file off [`UNDER_WAY`] when the access ends, however it ends.
    struct Done(PathBuf);
    impl Drop for Done {
        fn drop(&mut self) {
            if let Some(set) = UNDER_WAY.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                set.remove(&self.0);
            }
        }
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let done = Done(path.to_owned());
    // Not the runtime's blocking pool: the runtime waits for those at its end, and an access that
    // never returns would hold the exit.
    let spawned = std::thread::Builder::new()
        .name("state-file".to_owned())
        .spawn(move || {
            let result = access(&done.0);
            drop(done);
            let _ = tx.send(result);
        });
    if let Err(e) = spawned {
        // The closure, and `done` with it, was dropped: the file is off UNDER_WAY again.
        return Err(io(format!("cannot start a thread for it: {e}")));
    }
    match tokio::time::timeout(bound, rx).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(io(format!(
            "not {what}: the thread that did it ended without a result (it panicked)"
        ))),
        Err(_) => Err(io(format!(
            "not {what} within {}: the filesystem does not answer (a hung network filesystem or \
             disk?); going on without it",
            humantime::format_duration(bound)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(member: &str, removed: Option<Mode>) -> Record {
        Record {
            pool_id: PoolId::parse("36ce7086-a496-4666-9064-5ba0e6840c75").unwrap(),
            member_id: MemberId::parse(member).unwrap(),
            address: Some("10.0.0.1".parse().unwrap()),
            protocol_port: Some(80),
            weight: Some(5),
            subnet_cidr_id: None,
            removed,
            removed_at: None,
        }
    }

    const M1: &str = "1923923e-fe8a-484f-bdbc-e11559b1f48f";
    const M2: &str = "2923923e-fe8a-484f-bdbc-e11559b1f48f";

    #[test]
    fn saves_atomically_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.json");
        assert_eq!(State::load(&path).unwrap(), State::default());
        let s = State {
            memberships: vec![rec(M1, Some(Mode::Weight0))],
        };
        s.save(&path).unwrap();
        assert_eq!(State::load(&path).unwrap(), s);
        let left: Vec<_> = std::fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["state.json"], "no temporary file left behind");
        std::fs::write(&path, "{broken").unwrap();
        assert!(
            State::load(&path)
                .unwrap_err()
                .to_string()
                .contains("not valid JSON")
        );
    }

    #[test]
    fn a_state_file_that_is_not_a_regular_file_is_left_alone_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("state.json");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo(3) on a path in our own temporary directory.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // No writer: reading it would block for ever. It is ignored at once, and not moved aside.
        assert_eq!(State::load_or_warn(&fifo), State::default());
        assert!(std::fs::symlink_metadata(&fifo).is_ok());
        assert!(!dir.path().join("state.json.corrupt").exists());
        assert_eq!(
            State::load_or_warn(Path::new("/dev/zero")),
            State::default()
        );

        // Not JSON: moved aside for a person to look at.
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{broken").unwrap();
        assert_eq!(State::load_or_warn(&bad), State::default());
        assert!(!bad.exists() && dir.path().join("bad.json.corrupt").exists());
    }

    #[test]
    fn concurrent_writers_never_leave_a_file_that_does_not_parse() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let mut s = State {
                        memberships: (0..50).map(|_| rec(M1, Some(Mode::Delete))).collect(),
                    };
                    s.memberships[0].weight = Some(w);
                    for _ in 0..100 {
                        s.save(&path).unwrap();
                        State::load(&path).expect("always a whole file");
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
    }

    #[test]
    fn a_corrupt_file_is_moved_aside_and_read_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, "{\"memberships\": [{\"pool_id\": \"36ce").unwrap();
        assert_eq!(State::load_or_warn(&path), State::default());
        assert!(
            !path.exists(),
            "moved aside, so the next save cannot lose it"
        );
        assert!(
            std::fs::read_to_string(dir.path().join("state.json.corrupt"))
                .unwrap()
                .starts_with("{\"memberships\"")
        );
        // Absent now: empty, silently.
        assert_eq!(State::load_or_warn(&path), State::default());
    }

    #[test]
    fn a_removed_membership_is_remembered_until_it_is_back() {
        let mut s = State {
            memberships: vec![rec(M1, Some(Mode::Delete))],
        };
        s.merge(vec![]);
        assert_eq!(
            s.memberships.len(),
            1,
            "still gone from the pool: remembered"
        );
        let mut back = rec(M2, None);
        back.weight = Some(1);
        s.merge(vec![back.clone()]);
        assert_eq!(
            s.memberships,
            vec![back],
            "re-registered (same place, new ID): the old record is done"
        );
    }

    /// A write that does not return (the filesystem stopped answering) costs the caller `bound`,
    /// once: the next save of that file is not begun while it is stuck, and saving works again once
    /// it has ended.
    #[tokio::test]
    async fn a_write_that_hangs_costs_its_bound_once_and_piles_up_no_threads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let (release, stuck) = std::sync::mpsc::channel::<()>();
        let begun = std::time::Instant::now();
        let first = bounded(&path, Duration::from_millis(100), "written", move |_| {
            let _ = stuck.recv();
            Ok(())
        })
        .await;
        let waited = begun.elapsed();
        let e = first.expect_err("still writing at the bound").to_string();
        assert!(
            e.contains("not written within 100ms") && e.contains("state.json"),
            "{e}"
        );
        assert!(waited >= Duration::from_millis(100), "{waited:?}");

        let called = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let c = called.clone();
        let second = bounded(&path, Duration::from_secs(10), "written", move |_| {
            c.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        })
        .await;
        let e = second.expect_err("the first is still stuck").to_string();
        assert!(
            e.contains("an earlier read or write of it has not finished"),
            "{e}"
        );
        assert!(
            !called.load(std::sync::atomic::Ordering::SeqCst),
            "not begun"
        );

        // Another file is not held up by this one.
        let other = dir.path().join("other.json");
        State::default()
            .save_within(&other, ACCESS_BOUND)
            .await
            .unwrap();

        release.send(()).unwrap();
        let state = State {
            memberships: vec![rec(M1, None)],
        };
        let freed = std::time::Instant::now();
        loop {
            match state.save_within(&path, ACCESS_BOUND).await {
                Ok(()) => break,
                Err(e) => assert!(
                    freed.elapsed() < Duration::from_secs(5),
                    "the stuck write ended, saving works again: {e}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(State::load(&path).unwrap(), state);
    }

    /// An access that panics is an error like any other, and leaves the file free for the next.
    #[tokio::test]
    async fn an_access_that_panics_leaves_the_file_free() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let e = bounded(
            &path,
            ACCESS_BOUND,
            "written",
            |_| -> Result<(), StateError> { panic!("a bug in the writer") },
        )
        .await
        .expect_err("it panicked")
        .to_string();
        assert!(e.contains("panicked"), "{e}");
        State::default()
            .save_within(&path, ACCESS_BOUND)
            .await
            .unwrap();
    }
}
