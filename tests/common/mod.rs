//! Shared helpers for the agent's end-to-end tests: a process guard that kills by PID on drop, bounded
//! waiting on observable conditions, small TCP servers and clients on loopback.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use elb_sim::{Scenario, Sim};

pub mod confine;
pub mod netns;
pub mod privfs;

pub const PROJECT: &str = "99a3fff0d03c428eac3678da6a7d0f24";

pub const POOL: &str = "36ce7086-a496-4666-9064-5ba0e6840c75";
pub const MEMBER: &str = "1923923e-fe8a-484f-bdbc-e11559b1f48f";
pub const OTHER: &str = "5d0b7f53-2c3e-4d61-9a8e-0d9d4b1c2a77";
pub const LISTENER: &str = "0b5c5a2e-8f37-4a57-8b7e-4c2f1b0d9e11";

pub struct Setup {
    pub sim: Sim,
    pub app: EchoServer,
    pub other_app: EchoServer,
    pub dir: tempfile::TempDir,
}

/// elb-sim with one pool behind a listener: our member (the echo server `app`) and another server's.
pub async fn setup() -> Setup {
    setup_with(|s| s).await
}

/// [`setup`] with the scenario adjusted by `f` before the simulator starts.
pub async fn setup_with(f: impl FnOnce(Scenario) -> Scenario) -> Setup {
    let app = EchoServer::start();
    let other_app = EchoServer::start();
    let scenario = Scenario::builder()
        .project(PROJECT)
        .user("alice", "acme", "correct horse")
        .pool(POOL, |p| p.health_monitor(true))
        .listener(LISTENER, POOL)
        .member(POOL, MEMBER, "127.0.0.1", app.addr.port())
        .member(POOL, OTHER, "127.0.0.1", other_app.addr.port())
        .build();
    let sim = Sim::start(f(scenario)).await.expect("elb-sim starts");
    Setup {
        sim,
        app,
        other_app,
        dir: tempfile::tempdir().unwrap(),
    }
}

impl Setup {
    /// The pool's members at our application's port: what `register` must keep at exactly one.
    pub fn ours(&self) -> Vec<serde_json::Value> {
        let port = self.app.addr.port();
        self.sim
            .members(POOL)
            .into_iter()
            .filter(|m| m["protocol_port"] == port)
            .collect()
    }

    /// A config for our member, password auth, with extra `[drain]` lines.
    pub fn config(&self, drain: &str) -> std::path::PathBuf {
        let password = write_file(self.dir.path(), "password", "correct horse");
        std::fs::set_permissions(
            &password,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let api = self.sim.api_url();
        write_file(
            self.dir.path(),
            "elb-drain.toml",
            &format!(
                "[cloud]\nproject_id = \"{PROJECT}\"\nelb_endpoint = \"{api}\"\niam_endpoint = \"{api}\"\n\
                 metadata_endpoint = \"{}\"\n\
                 retry_deadline = \"3s\"\nrequest_timeout = \"1s\"\n\
                 [auth]\nmethod = \"password\"\nuser = \"alice\"\ndomain = \"acme\"\npassword_file = \"{}\"\n\
                 [[member]]\npool_id = \"{POOL}\"\nmember_id = \"{MEMBER}\"\nprotocol_port = {}\n\
                 [drain]\nexclude_peers = []\n{drain}\n",
                self.sim.metadata_url(),
                password.display(),
                self.app.addr.port()
            ),
        )
    }

    /// [`Setup::config`] with our member found by address and port instead of its ID (registering
    /// makes a new ID), and `more` (further TOML tables) appended.
    pub fn config_by_address(&self, drain: &str, more: &str) -> std::path::PathBuf {
        let config = self.config(drain);
        let text = std::fs::read_to_string(&config).unwrap().replace(
            &format!("member_id = \"{MEMBER}\"\n"),
            "address = \"127.0.0.1\"\n",
        ) + more;
        std::fs::write(&config, text).unwrap();
        config
    }

    pub fn lb(&self) -> TcpStream {
        TcpStream::connect(self.sim.listener_addr(LISTENER).expect("listener"))
            .expect("connect to the LB")
    }

    /// Opens connections through the load balancer until `n` of them landed on our member.
    pub fn connections_to_us(&self, n: usize) -> Vec<TcpStream> {
        let mut ours = Vec::new();
        for i in 0..(n * 10) {
            let mut c = self.lb();
            assert_eq!(
                echo(&mut c, &format!("hello {i}")).unwrap(),
                format!("hello {i}")
            );
            if wait_until(Duration::from_secs(2), || {
                self.sim.live_connections(MEMBER) > ours.len()
            }) {
                ours.push(c);
                if ours.len() == n {
                    return ours;
                }
            }
        }
        panic!("round robin never gave us {n} connections");
    }
}

pub fn deletes(sim: &Sim) -> Vec<elb_sim::LoggedRequest> {
    sim.request_log()
        .into_iter()
        .filter(|r| r.method == "DELETE")
        .collect()
}

/// A child process that is killed (by its PID) and reaped when the guard is dropped, also when the test
/// panics.
pub struct ProcGuard {
    pub child: Option<Child>,
    pub stderr: Arc<Mutex<String>>,
    pub stdout: Arc<Mutex<String>>,
    pumps: Vec<std::thread::JoinHandle<()>>,
}

impl ProcGuard {
    pub fn spawn(cmd: Command) -> ProcGuard {
        Self::spawn_with_stderr(cmd, None)
    }

    /// [`ProcGuard::spawn`] with stderr going to `stderr_to` (nothing of it is read here), or to a
    /// pipe read into [`ProcGuard::stderr`] with `None`.
    pub fn spawn_with_stderr(cmd: Command, stderr_to: Option<Stdio>) -> ProcGuard {
        Self::try_spawn_with_stderr(cmd, stderr_to).expect("spawn")
    }

    /// [`ProcGuard::spawn_with_stderr`], for a spawn that may fail (a `pre_exec` refused here).
    pub fn try_spawn_with_stderr(
        mut cmd: Command,
        stderr_to: Option<Stdio>,
    ) -> std::io::Result<ProcGuard> {
        let own_stderr = stderr_to.is_none();
        cmd.stdout(Stdio::piped())
            .stderr(stderr_to.unwrap_or_else(Stdio::piped))
            .stdin(Stdio::null());
        let mut child = cmd.spawn()?;
        let stderr = Arc::new(Mutex::new(String::new()));
        let stdout = Arc::new(Mutex::new(String::new()));
        let mut pumps = vec![pump(child.stdout.take().expect("stdout"), stdout.clone())];
        if own_stderr {
            pumps.push(pump(child.stderr.take().expect("stderr"), stderr.clone()));
        }
        Ok(ProcGuard {
            child: Some(child),
            stderr,
            stdout,
            pumps,
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's PID; it has not been reaped (we hold the Child).
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig})", self.pid());
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait_timeout(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                // Everything it wrote is read once its pipes close.
                for pump in self.pumps.drain(..) {
                    let _ = pump.join();
                }
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .expect("running")
            .try_wait()
            .expect("try_wait")
            .is_none()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// Waits until stderr contains `needle`.
    pub fn wait_stderr(&self, needle: &str, limit: Duration) -> bool {
        wait_until(limit, || self.stderr().contains(needle))
    }
}

impl Drop for ProcGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if child.try_wait().ok().flatten().is_none() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

fn pump(
    mut from: impl Read + Send + 'static,
    into: Arc<Mutex<String>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => into
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
    })
}

/// A pipe nobody reads, for a child's stderr (a journal that has stalled): the smallest the kernel
/// allows, filled up before the child starts, so the child's first write to it would block.
pub struct StalledPipe {
    read: Option<std::fs::File>,
    /// What was read after [`StalledPipe::resume`], the filler left out.
    pub text: Arc<Mutex<String>>,
    /// The reader has read to the end: every writer has closed the pipe.
    ended: Arc<std::sync::atomic::AtomicBool>,
}

/// The filler's byte: never in the agent's output.
const STALLED_FILLER: u8 = 0;

impl StalledPipe {
    /// The pipe, and its write end for the child.
    pub fn new() -> (StalledPipe, Stdio) {
        use std::os::fd::FromRawFd;
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two descriptors into our array; each is then owned by one File.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        let (read, mut write) = unsafe {
            (
                std::fs::File::from_raw_fd(fds[0]),
                std::fs::File::from_raw_fd(fds[1]),
            )
        };
        // SAFETY: fcntl on the descriptors we own. Non-blocking only while filling: the child must
        // get a blocking pipe, as a journal's stream is.
        unsafe {
            libc::fcntl(fds[1], libc::F_SETPIPE_SZ, 4096);
            libc::fcntl(fds[1], libc::F_SETFL, libc::O_NONBLOCK);
        }
        let chunk = [STALLED_FILLER; 512];
        for _ in 0..100_000 {
            if write.write(&chunk).is_err() {
                break;
            }
        }
        unsafe {
            libc::fcntl(fds[1], libc::F_SETFL, 0);
        }
        (
            StalledPipe {
                read: Some(read),
                text: Arc::new(Mutex::new(String::new())),
                ended: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            },
            Stdio::from(write),
        )
    }

    /// The journal reads again: from now on into `text`.
    pub fn resume(&mut self) {
        if let Some(read) = self.read.take() {
            let (into, ended) = (self.text.clone(), self.ended.clone());
            std::thread::spawn(move || {
                let mut read = read;
                let mut buf = [0u8; 8192];
                while let Ok(n) = read.read(&mut buf) {
                    if n == 0 {
                        ended.store(true, std::sync::atomic::Ordering::SeqCst);
                        return;
                    }
                    let kept: Vec<u8> = buf[..n]
                        .iter()
                        .copied()
                        .filter(|b| *b != STALLED_FILLER)
                        .collect();
                    into.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&kept));
                }
            });
        }
    }

    pub fn text(&self) -> String {
        self.text.lock().unwrap().clone()
    }

    /// Everything written, once the writers have exited: waits (bounded) for the reader, a thread
    /// of its own that a loaded machine can leave behind, to reach the end of the pipe.
    pub fn text_to_end(&self) -> String {
        assert!(
            wait_until(Duration::from_secs(10), || self
                .ended
                .load(std::sync::atomic::Ordering::SeqCst)),
            "the pipe was not read to its end (is a writer still running?)"
        );
        self.text()
    }
}

/// Polls `cond` every few milliseconds until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The agent binary, with a clean environment apart from what the test sets.
pub fn agent(config: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_elb-drain"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("ELB_DRAIN_LOG", "debug")
        // Each test's state file lives beside its config, as systemd's StateDirectory= would put it.
        .env("STATE_DIRECTORY", config.parent().unwrap_or(Path::new(".")))
        .arg("--config")
        .arg(config)
        .args(args);
    cmd
}

/// `agent` as the main process of a unit with `WatchdogSec=` of `interval`: systemd sets
/// `WATCHDOG_USEC`, and `WATCHDOG_PID` to the main process, which a shell that execs the agent knows
/// (`$$`).
pub fn under_watchdog(agent: Command, interval: std::time::Duration) -> Command {
    let mut cmd = Command::new("sh");
    cmd.env_clear()
        .envs(agent.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .env("WATCHDOG_USEC", interval.as_micros().to_string())
        .args(["-c", "export WATCHDOG_PID=$$; exec \"$0\" \"$@\""])
        .arg(agent.get_program())
        .args(agent.get_args());
    cmd
}

/// An echo server on 127.0.0.1:0 that serves each connection in its own thread until the peer closes.
/// It stands for the application behind the load balancer.
pub struct EchoServer {
    pub addr: SocketAddr,
    pub accepted: Arc<Mutex<u64>>,
}

impl EchoServer {
    pub fn start() -> EchoServer {
        Self::start_on("127.0.0.1")
    }

    /// On another loopback address (127.0.0.2, ...), to stand for another server.
    pub fn start_on(ip: &str) -> EchoServer {
        Self::start_at(ip, 0)
    }

    /// On a given port: an application that starts listening when the test says so.
    pub fn start_at(ip: &str, port: u16) -> EchoServer {
        let listener = TcpListener::bind((ip, port)).expect("bind");
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(Mutex::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                *count.lock().unwrap() += 1;
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = conn.read(&mut buf) {
                        if n == 0 || conn.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        EchoServer { addr, accepted }
    }
}

/// A loopback port that nothing listens on now and that no other socket of this machine will be given
/// while the test runs: it lies below the kernel's ephemeral range (`ip_local_port_range`), which is
/// where every `bind(0)` listener and every outgoing connection of the other tests gets its port. A
/// port picked by binding 0 and closing again can be handed to the next `bind(0)` at once (seen in
/// CI: the supervised child of an `exec` test lost its port to a parallel test's listener).
pub fn unclaimed_port() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let floor = 10_000.min(low.saturating_sub(1_000));
    for _ in 0..1_000 {
        let port = fastrand::u16(floor..low);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {floor}..{low}");
}

/// [`setup`] with our member on `port`, for an application the test starts later (an `exec` child).
pub async fn setup_on_port(port: u16) -> Setup {
    setup_with(|mut sc| {
        if let Some(m) = sc
            .member
            .iter_mut()
            .find(|m| m.id.as_deref() == Some(MEMBER))
        {
            m.protocol_port = port;
        }
        sc
    })
    .await
}

/// A Python echo server on `port`, the application an `exec` test supervises. It prints `pid N` once
/// it listens, and `got NAME` for each SIGTERM, SIGQUIT, SIGUSR1 and SIGHUP it gets; after a SIGTERM it
/// exits 3, after a SIGQUIT 4, `exit_after` seconds later (an application finishing its own shutdown;
/// 0 for at once).
pub fn python_echo_app(port: u16, exit_after: f64) -> Vec<String> {
    let script = format!(
        "import os,signal,socket,threading\n\
         def note(n, *a):\n    print('got', signal.Signals(n).name[3:], flush=True)\n\
         def stop(code):\n    def h(n, *a):\n        note(n)\n        threading.Timer({exit_after}, lambda: os._exit(code)).start()\n    return h\n\
         signal.signal(signal.SIGTERM, stop(3))\n\
         signal.signal(signal.SIGQUIT, stop(4))\n\
         signal.signal(signal.SIGUSR1, note)\n\
         signal.signal(signal.SIGHUP, note)\n\
         s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('127.0.0.1',{port})); s.listen(64)\n\
         print('pid', os.getpid(), flush=True)\n\
         def serve(c):\n    while True:\n        d=c.recv(4096)\n        if not d: return\n        c.sendall(d)\n\
         while True:\n    c,_=s.accept(); threading.Thread(target=serve,args=(c,),daemon=True).start()\n"
    );
    vec!["python3".into(), "-c".into(), script]
}

/// Sends a line and reads the echo back.
pub fn echo(conn: &mut TcpStream, msg: &str) -> std::io::Result<String> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.write_all(msg.as_bytes())?;
    conn.write_all(b"\n")?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    Ok(line.trim_end().to_owned())
}

pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

/// A plain reqwest client for talking to elb-sim directly (installs the TLS provider reqwest needs).
pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// A credential elb-sim issued (an agency's temporary key, an IAM token): valid from, until.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Issued {
    pub from: std::time::SystemTime,
    pub until: std::time::SystemTime,
}

/// Every temporary agency key elb-sim handed out, oldest first.
pub fn issued_temp_keys(sim: &Sim, lifetime: Duration) -> Vec<Issued> {
    let mut keys: Vec<Issued> = sim.shared().lock_for_tests(|inner| {
        inner
            .keys
            .iter()
            .filter(|(ak, _)| ak.starts_with("TMP"))
            .filter_map(|(_, k)| k.expires)
            .map(|until| Issued {
                from: until - lifetime,
                until,
            })
            .collect()
    });
    keys.sort();
    keys
}

/// Every IAM token elb-sim handed out, oldest first.
pub fn issued_tokens(sim: &Sim, lifetime: Duration) -> Vec<Issued> {
    let mut tokens: Vec<Issued> = sim.shared().lock_for_tests(|inner| {
        inner
            .tokens
            .values()
            .map(|t| Issued {
                from: t.expires - lifetime,
                until: t.expires,
            })
            .collect()
    });
    tokens.sort();
    tokens
}

/// The credential an agent held at `t`: the last one issued before it. elb-sim issues a credential
/// while answering the request that fetched it, after that request's arrival, and an agent fetches
/// one at a time, so the last one issued before a request arrived is the one its sender held.
pub fn held_at(issued: &[Issued], t: std::time::SystemTime) -> Option<Issued> {
    issued.iter().rev().find(|c| c.from < t).copied()
}

/// Asserts that every fetch of a credential (arrival times, in order) after the first came at least
/// `lead` before the one held then expired: renewed ahead of need, never after a failure. Returns the
/// smallest lead seen.
pub fn assert_renewed_ahead(
    fetches: &[std::time::SystemTime],
    issued: &[Issued],
    lead: Duration,
) -> Duration {
    let mut smallest = Duration::MAX;
    for (n, at) in fetches.iter().enumerate().skip(1) {
        let held = held_at(issued, *at)
            .unwrap_or_else(|| panic!("fetch {n}: no credential issued before it: {issued:?}"));
        let left = held.until.duration_since(*at).unwrap_or_else(|e| {
            panic!(
                "fetch {n} came {:?} after the credential held then expired",
                e.duration()
            )
        });
        assert!(
            left >= lead,
            "fetch {n} came only {left:?} before the credential held then expired (want >= {lead:?})"
        );
        smallest = smallest.min(left);
    }
    smallest
}

/// What [`serve_across_lifetimes`] saw: when the agent was ready, when it was stopped, and every
/// request for a credential (its arrival) in between and after.
pub struct Renewals {
    pub ready: std::time::SystemTime,
    pub stop: std::time::SystemTime,
    pub fetches: Vec<std::time::SystemTime>,
}

impl Renewals {
    /// Whether `t` fell while the agent was serving.
    pub fn serving(&self, t: std::time::SystemTime) -> bool {
        t > self.ready && t < self.stop
    }
}

/// A `run` agent that is ready serves across several lifetimes of a credential elb-sim issues
/// (`issued`; requested at paths ending in `fetch_path`, answered `ok`), is stopped with SIGTERM just
/// after a renewal (so the next one is half a lifetime away from the stop's requests) and exits 0.
/// Asserts what renewal ahead of need means: no request was ever refused (401/403), every fetch after
/// the first came at least a quarter of a lifetime before the credential then held expired, and at
/// least three came while serving (the refresher's, in the background).
pub fn serve_across_lifetimes(
    agent: &mut ProcGuard,
    sim: &Sim,
    lifetime: Duration,
    issued: impl Fn() -> Vec<Issued>,
    fetch_path: &str,
    ok: u16,
) -> Renewals {
    use std::time::SystemTime;
    assert!(
        agent.wait_stderr("ready", Duration::from_secs(10)),
        "{}",
        agent.stderr()
    );
    let ready = SystemTime::now();
    let first = issued().first().copied().expect("a credential at start-up");
    // Serve until the credential of two lifetimes after the first one's expiry has expired too: one
    // that is only issued if renewal went on all along.
    let outlived = || {
        issued()
            .iter()
            .any(|c| c.until >= first.until + 2 * lifetime && c.until <= SystemTime::now())
    };
    assert!(
        wait_until(lifetime * 6 + Duration::from_secs(10), outlived),
        "issued: {:?}\n{}",
        issued(),
        agent.stderr()
    );
    // Credentials expire just as the refresher renews (half-way through the next one's life): stop
    // just after a renewal instead, so the next one cannot mingle with the stop's requests.
    let fetched = || {
        sim.request_log()
            .iter()
            .filter(|r| r.path.ends_with(fetch_path))
            .count()
    };
    let before = fetched();
    assert!(
        wait_until(lifetime, || fetched() > before),
        "renewals stopped"
    );
    let stop = SystemTime::now();
    agent.signal(libc::SIGTERM);
    let exit = agent.wait_timeout(Duration::from_secs(20)).expect("exits");
    assert_eq!(exit.code(), Some(0), "{}", agent.stderr());

    let log = sim.request_log();
    assert!(
        log.iter().all(|r| r.status != 401 && r.status != 403),
        "no request refused: {log:?}"
    );
    let fetches: Vec<SystemTime> = log
        .iter()
        .filter(|r| r.path.ends_with(fetch_path))
        .inspect(|r| assert_eq!(r.status, ok, "{r:?}"))
        .map(|r| r.at)
        .collect();
    // The refresher aims at half the lifetime; a quarter is room for a slow scheduler.
    let lead = assert_renewed_ahead(&fetches, &issued(), lifetime / 4);
    eprintln!("{} fetches, smallest lead {lead:?}", fetches.len());
    let renewals = Renewals {
        ready,
        stop,
        fetches,
    };
    assert!(
        renewals
            .fetches
            .iter()
            .filter(|t| renewals.serving(**t))
            .count()
            >= 3,
        "{:?}",
        renewals.fetches
    );
    renewals
}

/// CLOCK_MONOTONIC now, in nanoseconds: the clock elb-sim's request log stamps arrivals with, so a
/// moment seen here and a request seen there can be ordered.
pub fn mono_ns() -> u64 {
    elb_sim::state::monotonic_ns()
}

/// A thread that reads CLOCK_MONOTONIC the moment child `pid` exits. `waitid` with `WNOWAIT` leaves
/// the child for its guard to reap.
pub fn exit_clock(pid: i32) -> std::sync::mpsc::Receiver<u64> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // SAFETY: a zeroed siginfo_t is valid; waitid on our own child, without reaping it.
        let rc = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        let at = mono_ns();
        if rc == 0 {
            let _ = tx.send(at);
        }
    });
    rx
}

/// Closes `stream` with a RST: SO_LINGER {on, 0}, then close(2).
pub fn reset(stream: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a descriptor this stream owns, with a linger struct of ours.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&stream),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as u32,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
    drop(stream);
}

/// Raises this process' soft limit on open descriptors to `want` (at most the hard limit); returns
/// the soft limit in force afterwards.
pub fn raise_nofile(want: u64) -> u64 {
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 1024;
        }
        if r.rlim_cur < want {
            let old = r.rlim_cur;
            r.rlim_cur = want.min(r.rlim_max);
            if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                return old;
            }
        }
        r.rlim_cur
    }
}

/// A systemd notify socket the test binds (`NOTIFY_SOCKET` for the agent): every datagram, with the
/// monotonic time the agent sent it at. That is the kernel's stamp (`SO_TIMESTAMPNS`, taken in the
/// sender's `sendto`), so a reader thread that is scheduled late (two loaded CI cores) moves no
/// message's time, nor the gap between two messages.
pub struct NotifySocket {
    pub path: PathBuf,
    messages: Arc<Mutex<Vec<(u64, String)>>>,
    /// Whether the reader reads (a stalled manager: false), and a signal when that changes.
    reading: Arc<(Mutex<Reader>, std::sync::Condvar)>,
    /// The last of the test's own marks the reader has read (see [`NotifySocket::caught_up`]).
    marks: Arc<std::sync::atomic::AtomicU64>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Reader {
    Reading,
    /// Not reading, and the socket's queue is full: every further send would block.
    Stalled,
    /// Asked to read again.
    Resumed,
}

/// What the stalled test's own fill-up datagrams say; never counted as the agent's.
const FILLER: &str = "X_TEST_FILLER=1";

/// What [`NotifySocket::caught_up`]'s marks say, before their number; never counted either.
const MARK: &str = "X_TEST_MARK=";

impl NotifySocket {
    pub fn bind(dir: &Path) -> NotifySocket {
        Self::start(dir, None)
    }

    /// A manager that stops reading (PID 1 busy in a mass shutdown, a container runtime that reads
    /// late): the reader takes messages until one contains `until` (at once for ""), then reads no
    /// more and fills the socket's queue (`net.unix.max_dgram_qlen`) itself, so that every send after
    /// that finds it full. [`NotifySocket::resume`] reads again.
    pub fn bind_stalling(dir: &Path, until: &str) -> NotifySocket {
        Self::start(dir, Some(until.to_owned()))
    }

    fn start(dir: &Path, until: Option<String>) -> NotifySocket {
        use std::os::unix::net::UnixDatagram;
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
        stamp_arrivals(&sock);
        let messages = Arc::new(Mutex::new(Vec::new()));
        let reading = Arc::new((Mutex::new(Reader::Reading), std::sync::Condvar::new()));
        let marks = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (into, state, to, seen) = (
            messages.clone(),
            reading.clone(),
            path.clone(),
            marks.clone(),
        );
        let stall = move || {
            let filler = UnixDatagram::unbound().unwrap();
            filler.set_nonblocking(true).unwrap();
            // Bounded: the queue holds max_dgram_qlen (10 by default) datagrams.
            for _ in 0..100_000 {
                if filler.send_to(FILLER.as_bytes(), &to).is_err() {
                    break;
                }
            }
            let (lock, changed) = &*state;
            let mut r = lock.lock().unwrap();
            *r = Reader::Stalled;
            changed.notify_all();
            while *r == Reader::Stalled {
                r = changed.wait(r).unwrap();
            }
        };
        std::thread::spawn(move || {
            // Stalls once: once resumed, the manager reads for good.
            let mut until = until;
            if until.as_deref() == Some("") {
                until = None;
                stall();
            }
            let mut buf = [0u8; 4096];
            while let Ok((n, at)) = recv_stamped(&sock, &mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                if text == FILLER {
                    continue;
                }
                if let Some(n) = text.strip_prefix(MARK) {
                    let n = n.parse().expect("a mark's number");
                    seen.store(n, std::sync::atomic::Ordering::SeqCst);
                    continue;
                }
                let last = until.as_deref().is_some_and(|u| text.contains(u));
                into.lock().unwrap().push((at, text));
                if last {
                    until = None;
                    stall();
                }
            }
        });
        NotifySocket {
            path,
            messages,
            reading,
            marks,
        }
    }

    /// Returns once the reader has recorded every datagram sent before this call: for a process that
    /// has exited, everything it said. (The reader is a thread of its own, which a loaded machine
    /// can leave behind the socket's queue.) The queue is first in, first out, so a mark of the
    /// test's own, sent now, is read after all of them. A stalled reader has nothing to catch up on.
    pub fn caught_up(&self) {
        use std::os::unix::net::UnixDatagram;
        use std::sync::atomic::Ordering;
        if !matches!(
            *self.reading.0.lock().unwrap(),
            Reader::Reading | Reader::Resumed
        ) {
            return;
        }
        let n = self.marks.load(Ordering::SeqCst) + 1;
        let mark = format!("{MARK}{n}");
        let from = UnixDatagram::unbound().unwrap();
        from.set_nonblocking(true).unwrap();
        // A full queue (a reader far behind) takes the mark once it has read some.
        assert!(
            wait_until(Duration::from_secs(10), || from
                .send_to(mark.as_bytes(), &self.path)
                .is_ok()),
            "the notify socket's queue stayed full"
        );
        assert!(
            wait_until(Duration::from_secs(10), || self
                .marks
                .load(Ordering::SeqCst)
                >= n),
            "the notify socket's reader never caught up"
        );
    }

    /// Whether the reader has stopped and the queue is full.
    pub fn stalled(&self) -> bool {
        *self.reading.0.lock().unwrap() == Reader::Stalled
    }

    /// The manager reads again: what was queued, and everything after.
    pub fn resume(&self) {
        let (lock, changed) = &*self.reading;
        *lock.lock().unwrap() = Reader::Resumed;
        changed.notify_all();
    }

    /// The messages so far, in the order received.
    pub fn all(&self) -> Vec<String> {
        self.timed().into_iter().map(|(_, m)| m).collect()
    }

    /// The messages so far with the times they were sent ([`mono_ns`]).
    pub fn timed(&self) -> Vec<(u64, String)> {
        self.messages.lock().unwrap().clone()
    }

    /// Field by field (`STATUS=...`, `EXTEND_TIMEOUT_USEC=...`), with the time their datagram was
    /// sent: what is said at one moment may share a datagram.
    pub fn timed_fields(&self) -> Vec<(u64, String)> {
        self.timed()
            .into_iter()
            .flat_map(|(t, m)| m.lines().map(|l| (t, l.to_owned())).collect::<Vec<_>>())
            .collect()
    }

    pub fn fields(&self) -> Vec<String> {
        self.timed_fields().into_iter().map(|(_, f)| f).collect()
    }

    pub fn has(&self, needle: &str) -> bool {
        self.all().iter().any(|m| m.contains(needle))
    }

    /// How many datagrams carry `line` as one of their lines (`WATCHDOG=1`, alone or with others).
    pub fn count_lines(&self, line: &str) -> usize {
        self.all()
            .iter()
            .filter(|m| m.lines().any(|l| l == line))
            .count()
    }

    /// When the first message containing `needle` was sent.
    pub fn sent_at(&self, needle: &str) -> Option<u64> {
        self.timed()
            .into_iter()
            .find(|(_, m)| m.contains(needle))
            .map(|(t, _)| t)
    }
}

/// Asks the kernel to stamp each datagram queued on `sock` with the time it was sent.
fn stamp_arrivals(sock: &std::os::unix::net::UnixDatagram) {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: setsockopt on a socket we own, with a c_int option value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&raw const on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_TIMESTAMPNS: {}", std::io::Error::last_os_error());
}

/// One datagram, and when it was sent on [`mono_ns`]'s clock. The kernel stamps it on
/// CLOCK_REALTIME when the sender queues it; it is moved to CLOCK_MONOTONIC by the two clocks'
/// offset read right after the receive (they drift apart only by NTP's slew, at most 0.5 ms a
/// second). Without a stamp, the time of the receipt.
fn recv_stamped(
    sock: &std::os::unix::net::UnixDatagram,
    buf: &mut [u8],
) -> std::io::Result<(usize, u64)> {
    use std::os::fd::AsRawFd;
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // Room for one SCM_TIMESTAMPNS (a timespec), aligned for cmsghdr.
    let mut control = [0u64; 8];
    // SAFETY: a zeroed msghdr is valid; the pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: recvmsg into buffers we own, described by `msg`.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &raw mut msg, 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let received = mono_ns();
    let now_real = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i128;
    let mut at = received;
    // SAFETY: walking the control messages the kernel wrote into `control`, as `msg` describes.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&raw const msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                let sent_real = i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec);
                let ago = (now_real - sent_real).max(0);
                at = received.saturating_sub(u64::try_from(ago).unwrap_or(u64::MAX));
            }
            c = libc::CMSG_NXTHDR(&raw const msg, c);
        }
    }
    Ok((n as usize, at))
}
