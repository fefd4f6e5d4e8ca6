//! `elb-sim demo`: the whole story in under a minute, on loopback.
//!
//! elb-sim with a load balancer and two backend servers (small echo servers that say who served a
//! request), one `elb-drain run` per server, client traffic through the load balancer (short requests
//! and a few long streams), then server A is stopped the way systemd would stop it: SIGTERM to its
//! agent. The timeline shows the DELETE, new connections going to B only (counted), the long streams
//! draining, the agent's exit, and the totals the client side counted: served, failed, resets. Then the
//! same with a naive stop (the application killed without elb-drain), so the difference is visible.
//!
//! The demo runs the agent it finds built from this workspace, and rebuilds it first when the workspace
//! is still there: a demo of a stale agent would show the wrong program.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::state::monotonic_ns;
use crate::{Scenario, Sim};

const PROJECT: &str = "99a3fff0d03c428eac3678da6a7d0f24";
const POOL: &str = "36ce7086-a496-4666-9064-5ba0e6840c75";
const LISTENER: &str = "0b5c5a2e-8f37-4a57-8b7e-4c2f1b0d9e11";
const MEMBERS: [(&str, &str, &str); 2] = [
    ("A", "127.0.0.2", "1923923e-fe8a-484f-bdbc-e11559b1f48f"),
    ("B", "127.0.0.3", "5d0b7f53-2c3e-4d61-9a8e-0d9d4b1c2a77"),
];
const LONG_STREAMS: usize = 4;
/// How many short requests after the stop the timeline waits for before it says where they went.
const AFTER_STOP_SAMPLE: u64 = 10;
/// An act ends at the latest this long after the stop (the longest stream ends 4.5 s after it).
const ACT_LIMIT: Duration = Duration::from_secs(8);

/// How server A is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM to A's `elb-drain run`; A's application is stopped once the agent has exited.
    ElbDrain,
    /// A's application is killed, with no elb-drain at all.
    Naive,
}

/// An application server: answers every line with "NAME <line>". Cancelling it kills it abruptly.
async fn app(name: &'static str, ip: &str, kill: CancellationToken) -> std::io::Result<u16> {
    let listener = TcpListener::bind((ip, 0)).await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        loop {
            let (conn, _) = tokio::select! {
                c = listener.accept() => match c { Ok(c) => c, Err(_) => continue },
                _ = kill.cancelled() => return,
            };
            let kill = kill.clone();
            tokio::spawn(async move {
                let (r, mut w) = conn.into_split();
                let mut lines = BufReader::new(r).lines();
                loop {
                    let line = tokio::select! {
                        l = lines.next_line() => l,
                        _ = kill.cancelled() => return,
                    };
                    match line {
                        Ok(Some(l)) => {
                            if w.write_all(format!("{name} {l}\n").as_bytes())
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                        _ => return,
                    }
                }
            });
        }
    });
    Ok(port)
}

/// What the clients counted, updated as the act runs.
#[derive(Default)]
struct Totals {
    served: [AtomicU64; 2],
    failed: AtomicU64,
    resets: AtomicU64,
    /// Short requests begun after the stop took effect (the DELETE answered, or A killed), by server.
    after_stop: [AtomicU64; 2],
}

impl Totals {
    fn get(a: &AtomicU64) -> u64 {
        a.load(Ordering::Relaxed)
    }
}

/// Whether an I/O error is the peer resetting the connection (as opposed to a timeout or a clean EOF).
fn is_reset(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
    )
}

/// How one short request ended.
enum Outcome {
    Served(usize),
    Failed { reset: bool },
}

/// One request-response over a fresh connection: which server answered.
async fn request(lb: SocketAddr, n: u64) -> Outcome {
    let failed = |e: std::io::Error| Outcome::Failed {
        reset: is_reset(&e),
    };
    let exchange = async {
        let mut c = TcpStream::connect(lb).await?;
        c.write_all(format!("req {n}\n").as_bytes()).await?;
        let mut line = String::new();
        BufReader::new(&mut c).read_line(&mut line).await?;
        Ok::<_, std::io::Error>(line)
    };
    match tokio::time::timeout(Duration::from_secs(2), exchange).await {
        Ok(Ok(line)) => match line.split(' ').next() {
            Some("A") => Outcome::Served(0),
            Some("B") => Outcome::Served(1),
            // EOF without an answer: the load balancer had no member to give us.
            _ => Outcome::Failed { reset: false },
        },
        Ok(Err(e)) => failed(e),
        Err(_) => Outcome::Failed { reset: false },
    }
}

/// How one long stream ended.
#[derive(Debug, Clone, Copy)]
struct StreamEnd {
    /// It ran until its planned end.
    complete: bool,
    /// It ended with a reset.
    reset: bool,
    /// The server that answered it.
    server: Option<usize>,
    /// CLOCK_MONOTONIC just after the client closed its socket.
    closed_ns: u64,
}

/// The server of each long stream, once it answered: 0 unknown, 1 for A, 2 for B.
type StreamServers = Arc<[AtomicUsize; LONG_STREAMS]>;

/// Long stream `k`: a message every 100 ms until `until`, then the client closes. Its end goes to
/// `ended` as well, for the timeline.
async fn stream(
    lb: SocketAddr,
    until: Instant,
    k: usize,
    servers: StreamServers,
    ended: mpsc::UnboundedSender<StreamEnd>,
) -> StreamEnd {
    let end = stream_until(lb, until, |i| servers[k].store(i + 1, Ordering::Relaxed)).await;
    let _ = ended.send(end);
    end
}

async fn stream_until(lb: SocketAddr, until: Instant, answered_by: impl Fn(usize)) -> StreamEnd {
    let mut end = StreamEnd {
        complete: false,
        reset: false,
        server: None,
        closed_ns: 0,
    };
    let Ok(c) = TcpStream::connect(lb).await else {
        end.closed_ns = monotonic_ns();
        return end;
    };
    let (r, mut w) = c.into_split();
    let mut lines = BufReader::new(r).lines();
    end.complete = loop {
        if Instant::now() >= until {
            break true;
        }
        if let Err(e) = w.write_all(b"tick\n").await {
            end.reset = is_reset(&e);
            break false;
        }
        match tokio::time::timeout(Duration::from_secs(2), lines.next_line()).await {
            Ok(Ok(Some(l))) => {
                if end.server.is_none() {
                    let i = usize::from(!l.starts_with('A'));
                    end.server = Some(i);
                    answered_by(i);
                }
            }
            Ok(Err(e)) => {
                end.reset = is_reset(&e);
                break false;
            }
            // EOF (the server went away) or silence.
            _ => break false,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    drop((lines, w));
    end.closed_ns = monotonic_ns();
    end
}

/// The agent to run. Built from this binary's workspace with its profile when the workspace is still on
/// disk (cargo finds it up to date in a fraction of a second), so `cargo run --release --bin elb-sim --
/// demo` from a fresh clone builds it and a later run never uses a stale one; without a workspace or
/// cargo, the `elb-drain` beside this executable.
fn agent_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let beside = exe.with_file_name("elb-drain");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|p| p.join("Cargo.toml"))
        .filter(|m| m.is_file());
    let Some(manifest) = workspace else {
        return found(beside);
    };
    // `target/debug` holds the dev profile; everything else here is built with release.
    let profile = match exe.parent().and_then(Path::file_name) {
        Some(d) if d == "debug" => "dev",
        _ => "release",
    };
    println!(
        "elb-drain: cargo build --profile {profile} --bin elb-drain (up to date after the first run)"
    );
    let mut build = cargo();
    build
        .args([
            "build",
            "--quiet",
            "--message-format=json-render-diagnostics",
        ])
        .args([
            "--profile",
            profile,
            "--bin",
            "elb-drain",
            "--manifest-path",
        ])
        .arg(&manifest)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    let out = match build.output() {
        Ok(out) => out,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            println!("(no cargo to build with: using {})", beside.display());
            return found(beside);
        }
        Err(e) => return Err(format!("cannot run {:?}: {e}", build.get_program())),
    };
    if !out.status.success() {
        return Err(format!(
            "cargo build of elb-drain failed ({}): see above",
            out.status
        ));
    }
    built_executable(&String::from_utf8_lossy(&out.stdout), "elb-drain")
        .ok_or_else(|| "cargo built elb-drain but named no executable".into())
}

/// `cargo` for a build nested in a program cargo runs: see [`crate::nested_cargo`].
pub use crate::nested_cargo::cargo;

/// The executable cargo built (or found fresh) for binary `bin`, from the compiler-artifact messages
/// of its `--message-format=json` output.
pub fn built_executable(json_lines: &str, bin: &str) -> Option<PathBuf> {
    json_lines
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == bin)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
}

fn found(path: PathBuf) -> Result<PathBuf, String> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "no elb-drain at {}: build it with `cargo build --release --bin elb-drain`",
            path.display()
        ))
    }
}

fn write_config(
    dir: &Path,
    sim: &Sim,
    name: &str,
    member: &str,
    port: u16,
) -> std::io::Result<PathBuf> {
    let pw = dir.join("password");
    std::fs::write(&pw, "demo-password")?;
    std::fs::set_permissions(&pw, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "[cloud]\nproject_id = \"{PROJECT}\"\nelb_endpoint = \"{api}\"\niam_endpoint = \"{api}\"\n\
             [auth]\nmethod = \"password\"\nuser = \"demo\"\ndomain = \"demo\"\npassword_file = \"{}\"\n\
             [[member]]\npool_id = \"{POOL}\"\nmember_id = \"{member}\"\nprotocol_port = {port}\n\
             [drain]\nexclude_peers = []\nsettle = \"500ms\"\npoll_interval = \"50ms\"\ntimeout = \"30s\"\n",
            pw.display(),
            api = sim.api_url()
        ),
    )?;
    Ok(path)
}

/// The demo's temporary directory (configs, state files, status sockets), removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir, String> {
        let dir = std::env::temp_dir().join(format!(
            "elb-sim-demo-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Kills (SIGKILL, by PID) and reaps every agent still running: the demo leaves no process behind.
/// `kill_on_drop` covers an early return; this is the orderly end.
async fn reap(agents: &mut [tokio::process::Child]) {
    for child in agents {
        let _ = child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    }
}

/// Waits for the first agent (server A's) to exit; never, without agents.
async fn first_exit(
    agents: &mut [tokio::process::Child],
) -> std::io::Result<std::process::ExitStatus> {
    match agents.first_mut() {
        Some(a) => a.wait().await,
        None => std::future::pending().await,
    }
}

/// Prints timeline lines, or nothing when the act runs inside a benchmark.
struct Timeline {
    start: Instant,
    show: bool,
}

impl Timeline {
    fn at(&self, ms: f64, what: &str) {
        if self.show {
            println!("t={ms:>7.1} ms  {what}");
        }
    }

    fn now(&self, what: &str) {
        self.at(self.start.elapsed().as_secs_f64() * 1e3, what);
    }
}

/// What one act of the demo counted.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub stop: Stop,
    /// Short requests answered.
    pub served: u64,
    /// Short requests that got no answer (a reset, a timeout, or no member to go to).
    pub failed: u64,
    /// Connections, short or long, that the client saw reset.
    pub resets: u64,
    /// Long streams that ended before their planned end.
    pub streams_cut: u64,
    /// Short requests begun after the stop took effect (A's DELETE answered, or A killed), by server:
    /// `[A, B]`. With elb-drain, A's count must be 0.
    pub after_stop: [u64; 2],
    /// Milliseconds from SIGTERM to the DELETE arriving at the API.
    pub delete_after_ms: Option<f64>,
    /// Server A's agent: exit code.
    pub agent_exit: Option<i32>,
    /// Milliseconds from SIGTERM to A's agent exiting (reaped): the total drain time.
    pub drain_ms: Option<f64>,
    /// Milliseconds from SIGTERM to the client closing the last long stream that A served: what the
    /// drain had to wait for.
    pub longest_on_a_ms: Option<f64>,
}

impl Summary {
    /// The drain's own share of the stop: total drain time minus the longest stream's remaining time
    /// (the agent exit after A's last stream closed, in ms; the target is at most 100).
    pub fn drain_overhead_ms(&self) -> Option<f64> {
        Some(self.drain_ms? - self.longest_on_a_ms?)
    }
}

/// Runs one act of the demo and, when `show`, prints its timeline and totals.
pub async fn act(agent_bin: &Path, stop: Stop, show: bool) -> Result<Summary, String> {
    let e = |e: std::io::Error| e.to_string();
    let kills = [CancellationToken::new(), CancellationToken::new()];
    let mut ports = [0u16; 2];
    for (i, (name, ip, _)) in MEMBERS.iter().enumerate() {
        ports[i] = app(name, ip, kills[i].clone()).await.map_err(e)?;
    }
    let mut scenario = Scenario::builder()
        .project(PROJECT)
        .user("demo", "demo", "demo-password")
        .pool(POOL, |p| p.health_monitor(true))
        .listener(LISTENER, POOL)
        .settings(|s| s.health_interval = Duration::from_millis(500));
    for (i, (_, ip, id)) in MEMBERS.iter().enumerate() {
        scenario = scenario.member(POOL, id, ip, ports[i]);
    }
    let sim = Sim::start(scenario.build())
        .await
        .map_err(|e| e.to_string())?;
    let lb = sim.listener_addr(LISTENER).ok_or("no listener")?;
    let dir = TempDir::new()?;
    let mut agents = Vec::new();
    if stop == Stop::ElbDrain {
        for (i, (name, _, id)) in MEMBERS.iter().enumerate() {
            let config = write_config(&dir.0, &sim, name, id, ports[i]).map_err(e)?;
            let child = tokio::process::Command::new(agent_bin)
                .arg("--config")
                .arg(&config)
                .arg("run")
                .env("ELB_DRAIN_LOG", "warn")
                // The demo keeps everything in its own temporary directory: state file, status socket.
                .env("STATE_DIRECTORY", dir.0.join(name))
                .env("RUNTIME_DIRECTORY", dir.0.join(name))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("{}: {e}", agent_bin.display()))?;
            agents.push(child);
        }
        // Ready when both have fetched their token (the agents log only warnings here).
        let deadline = Instant::now() + Duration::from_secs(10);
        while sim
            .request_log()
            .iter()
            .filter(|r| r.service == "iam" && r.status == 201)
            .count()
            < 2
        {
            if Instant::now() > deadline {
                reap(&mut agents).await;
                return Err("agents did not get ready".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Long streams first (so round robin puts half of them on A), opened before the stop, ending 1.5 to
    // 4.5 s after it.
    let t0 = Instant::now() + Duration::from_millis(1500);
    let mut streams = Vec::new();
    let servers: StreamServers = Arc::new(Default::default());
    let (ended, mut ends) = mpsc::unbounded_channel();
    for k in 0..LONG_STREAMS {
        let until = t0 + Duration::from_millis(1500 + 1000 * k as u64);
        let (servers, ended) = (servers.clone(), ended.clone());
        streams.push(tokio::spawn(stream(lb, until, k, servers, ended)));
    }
    let totals = Arc::new(Totals::default());
    let stopped = Arc::new(AtomicBool::new(false));
    let quit = CancellationToken::new();
    // Short requests, about 50 per second, until the act ends.
    let short = {
        let (totals, stopped, quit) = (totals.clone(), stopped.clone(), quit.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !quit.is_cancelled() {
                n += 1;
                // Read before connecting: a request begun after the stop took effect.
                let after = stopped.load(Ordering::Acquire);
                match request(lb, n).await {
                    Outcome::Served(i) => {
                        totals.served[i].fetch_add(1, Ordering::Relaxed);
                        if after {
                            totals.after_stop[i].fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Outcome::Failed { reset } => {
                        totals.failed.fetch_add(1, Ordering::Relaxed);
                        if reset {
                            totals.resets.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    tokio::time::sleep_until(t0.into()).await;
    // Each stream has had about 15 answers by now.
    let mut open_on_a = servers
        .iter()
        .filter(|s| s.load(Ordering::Relaxed) == 1)
        .count();
    if show {
        let title = match stop {
            Stop::ElbDrain => "stop with elb-drain",
            Stop::Naive => "naive stop (no elb-drain)",
        };
        println!("\n== {title}: {LONG_STREAMS} long streams open, {open_on_a} of them on server A");
    }
    let timeline = Timeline {
        start: Instant::now(),
        show,
    };
    let stop_ns = monotonic_ns();
    let ms_since_stop = |ns: u64| ns.saturating_sub(stop_ns) as f64 / 1e6;
    match stop {
        Stop::ElbDrain => {
            let pid = agents[0]
                .id()
                .ok_or("server A's agent exited before the stop")?;
            // SAFETY: kill(2) on our own child, not yet reaped (we hold its Child).
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            timeline.at(0.0, "SIGTERM to server A's elb-drain");
        }
        Stop::Naive => {
            kills[0].cancel();
            stopped.store(true, Ordering::Release);
            timeline.at(0.0, "server A's application killed (no elb-drain)");
        }
    }
    let mut deleted_at = None;
    let mut sampled = false;
    let mut streams_ended = 0;
    let mut agent_exit = None;
    let end = timeline.start + ACT_LIMIT;
    while Instant::now() < end {
        if stop == Stop::ElbDrain
            && deleted_at.is_none()
            && let Some(d) = sim
                .request_log()
                .iter()
                .find(|r| r.method == "DELETE" && r.status == 204)
        {
            // Logged with its answer, so the data plane has already dropped A from the pool.
            stopped.store(true, Ordering::Release);
            let after = ms_since_stop(d.mono_ns);
            deleted_at = Some(after);
            timeline.at(after, "DELETE of member A arrived at the API");
        }
        let after = [0, 1].map(|i| Totals::get(&totals.after_stop[i]));
        if !sampled && after[0] + after[1] >= AFTER_STOP_SAMPLE {
            sampled = true;
            let since = match stop {
                Stop::ElbDrain => "the DELETE",
                Stop::Naive => "the kill",
            };
            timeline.now(&if after[0] == 0 {
                format!(
                    "new connections since {since}: all {} on B, 0 on A",
                    after[1]
                )
            } else {
                format!(
                    "new connections since {since}: {} on A, {} on B",
                    after[0], after[1]
                )
            });
        }
        if streams_ended == LONG_STREAMS && (stop == Stop::Naive || agent_exit.is_some()) {
            break;
        }
        tokio::select! {
            // Stream ends first: each happened before anything this loop learns in the same round.
            biased;
            Some(end) = ends.recv() => {
                streams_ended += 1;
                if end.server == Some(0) {
                    open_on_a = open_on_a.saturating_sub(1);
                    let how = if end.complete {
                        "closed by its client"
                    } else if end.reset {
                        "cut by a reset"
                    } else {
                        "cut (the server closed it)"
                    };
                    let at = ms_since_stop(end.closed_ns);
                    if open_on_a == 0 {
                        timeline.at(at, &format!("last long stream on A {how}"));
                    } else {
                        timeline.at(at, &format!("a long stream on A {how}, {open_on_a} still open on A"));
                    }
                }
            }
            status = first_exit(&mut agents), if agent_exit.is_none() => {
                let at = ms_since_stop(monotonic_ns());
                let code = status.ok().and_then(|s| s.code());
                agent_exit = Some((at, code));
                timeline.at(at, &format!(
                    "server A's elb-drain exited ({}): A may stop now",
                    code.map_or("killed".into(), |c| format!("code {c}"))
                ));
                kills[0].cancel();
            }
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
    }
    quit.cancel();
    let _ = short.await;
    let mut cut = 0;
    let mut longest_on_a = None;
    for s in streams {
        let Ok(end) = s.await else { continue };
        if !end.complete {
            cut += 1;
        }
        if end.reset {
            totals.resets.fetch_add(1, Ordering::Relaxed);
        }
        if end.complete && end.server == Some(0) {
            let closed = ms_since_stop(end.closed_ns);
            longest_on_a = Some(longest_on_a.map_or(closed, |l: f64| l.max(closed)));
        }
    }
    for k in &kills {
        k.cancel();
    }
    reap(&mut agents).await;
    let served = [0, 1].map(|i| Totals::get(&totals.served[i]));
    let summary = Summary {
        stop,
        served: served[0] + served[1],
        failed: Totals::get(&totals.failed),
        resets: Totals::get(&totals.resets),
        streams_cut: cut,
        after_stop: [0, 1].map(|i| Totals::get(&totals.after_stop[i])),
        delete_after_ms: deleted_at,
        agent_exit: agent_exit.and_then(|(_, code)| code),
        drain_ms: agent_exit.map(|(at, _)| at),
        longest_on_a_ms: longest_on_a,
    };
    if show {
        if let (Some(total), Some(longest), Some(overhead)) = (
            summary.drain_ms,
            summary.longest_on_a_ms,
            summary.drain_overhead_ms(),
        ) {
            println!(
                "drain: {total:.0} ms in all = A's longest stream ({longest:.0} ms after SIGTERM) + {overhead:.1} ms"
            );
        }
        println!(
            "totals: requests served {} (A {}, B {}), failed {}, resets {}, long streams cut {}, \
             new connections after the stop: A {}, B {}",
            summary.served,
            served[0],
            served[1],
            summary.failed,
            summary.resets,
            summary.streams_cut,
            summary.after_stop[0],
            summary.after_stop[1],
        );
    }
    Ok(summary)
}

/// The demo: both acts, then the two side by side. Returns an error line for the binary to print.
pub async fn run() -> Result<(), String> {
    let agent = agent_binary()?;
    println!(
        "elb-sim demo: a load balancer, servers A and B behind it, each with its own elb-drain (all on loopback)"
    );
    let with = act(&agent, Stop::ElbDrain, true).await?;
    let naive = act(&agent, Stop::Naive, true).await?;
    println!("\n| stop of server A | requests served | failed | resets | long streams cut |");
    println!("|---|---|---|---|---|");
    for (name, s) in [("with elb-drain", &with), ("naive (no elb-drain)", &naive)] {
        println!(
            "| {name} | {} | {} | {} | {} |",
            s.served, s.failed, s.resets, s.streams_cut
        );
    }
    Ok(())
}
