//! Benchmarks of elb-drain, each side by side with its peer in the same run, on loopback only.
//!
//! ```text
//! cargo bench --bench elb_drain -- all              # everything at full size (~20 minutes, ~250k sockets, and detect)
//! cargo bench --bench elb_drain -- reaction census detect footprint loss fleet
//! ELB_BENCH_QUICK=1 cargo bench --bench elb_drain -- all    # small sizes, short windows: checks the harness
//! ```
//!
//! Sizes, repetitions and windows come from environment variables (see [`Knobs`]), so the harness can be
//! checked in a minute or two on a busy machine and run at full size on a quiet one; the output names the
//! values it ran with. It prints Markdown tables (the numbers in BENCHMARKS.md come from here). Every loop
//! is bounded in count and time; every process started is killed by PID when done, through a guard.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use common::{ProcGuard, exit_clock, mono_ns, wait_until};
use elb_drain::census::{Census, CensusSpec, NetlinkCensus, ProcCensus};
use elb_sim::demo::{Stop, Summary};
use elb_sim::{Scenario, Sim};

const PROJECT: &str = "99a3fff0d03c428eac3678da6a7d0f24";
const POOL: &str = "36ce7086-a496-4666-9064-5ba0e6840c75";
const MEMBER: &str = "1923923e-fe8a-484f-bdbc-e11559b1f48f";
const AK: &str = "AKBENCH0000000000000";
const SK: &str = "bench-secret-key";

/// What to measure how often and how long. Each field has an environment variable; `ELB_BENCH_QUICK=1`
/// changes the defaults to small sizes and short windows (a harness check, not numbers to record).
#[derive(Debug)]
struct Knobs {
    /// `ELB_BENCH_SIZES`: connections on the port for the census table (default 1000,10000,100000).
    census_sizes: Vec<usize>,
    /// `ELB_BENCH_NOISE`: connections on another port while census and detect run (default 20000).
    noise: usize,
    /// `ELB_BENCH_DETECT_SIZES`: connections the agent drains in the detection benchmark
    /// (default 1000,100000).
    detect_sizes: Vec<usize>,
    /// `ELB_BENCH_DETECT_RUNS`: random close schedules per size and census path (default 100). The
    /// seeds start at `ELB_BENCH_DETECT_SEED` (default 1).
    detect_runs: usize,
    /// `ELB_BENCH_DETECT_PATHS`: census paths, of `countdown`, `polling`, `proc` (default all; /proc
    /// only up to 10k connections unless `ELB_BENCH_DETECT_PROC_LARGE` is set: each census of 100k
    /// takes a third of a second there, polled every seven).
    detect_paths: Vec<CensusPath>,
    /// `ELB_BENCH_DETECT_LOGS`: a directory that keeps each drain's timeline and the agent's debug
    /// log (`N-path-seed.log`), to read where the time between the last close and the exit went.
    detect_logs: Option<PathBuf>,
    /// `ELB_BENCH_DETECT_PIN`: the detection benchmark runs the agent alone on CPU 0 and everything
    /// else (this process, the holders and their closes' kernel work, elb-sim) on the other CPUs:
    /// detection when the agent does not compete for a core with the load that closes 100k
    /// connections. Off by default: a production server shares its cores.
    detect_pin: bool,
    detect_cgroup: bool,
    /// `ELB_BENCH_CPU_SECS`: how long the agent's CPU is measured while it waits on the largest detect
    /// size (default 60).
    cpu: Duration,
    /// `ELB_BENCH_IDLE_SECS`: how long idle wake-ups are counted (default 60).
    idle: Duration,
    /// `ELB_BENCH_FOOTPRINT_RUNS`: agents measured for the footprint, side by side (default 5).
    footprint_runs: usize,
    /// `ELB_BENCH_LOSS_RUNS`: runs of each stop in the zero-loss benchmark (default 3).
    loss_runs: usize,
    /// `ELB_BENCH_FLEET_AGENTS`: agents in the fleet stop (default 200).
    fleet_agents: usize,
    /// `ELB_BENCH_FLEET_RUNS`: fleet stops per retry variant (default 3).
    fleet_runs: usize,
}

impl Knobs {
    fn from_env() -> Knobs {
        let quick = std::env::var("ELB_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let list = |name: &str, full: &[usize], small: &[usize]| -> Vec<usize> {
            match std::env::var(name) {
                Ok(v) => v
                    .split(',')
                    .map(|s| {
                        s.trim()
                            .parse()
                            .unwrap_or_else(|_| panic!("{name}: {s:?} is not a count"))
                    })
                    .collect(),
                Err(_) => if quick { small } else { full }.to_vec(),
            }
        };
        let one = |name: &str, full: usize, small: usize| -> usize {
            match std::env::var(name) {
                Ok(v) => v
                    .trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{name}: {v:?} is not a count")),
                Err(_) if quick => small,
                Err(_) => full,
            }
        };
        let secs = |name: &str, full: u64, small: u64| {
            Duration::from_secs(one(name, full as usize, small as usize) as u64)
        };
        let knobs = Knobs {
            census_sizes: list("ELB_BENCH_SIZES", &[1_000, 10_000, 100_000], &[1_000]),
            noise: one("ELB_BENCH_NOISE", 20_000, 2_000),
            detect_sizes: list("ELB_BENCH_DETECT_SIZES", &[1_000, 100_000], &[1_000]),
            detect_runs: one("ELB_BENCH_DETECT_RUNS", 100, 5),
            detect_paths: std::env::var("ELB_BENCH_DETECT_PATHS")
                .unwrap_or_else(|_| "countdown,polling,proc".into())
                .split(',')
                .map(|p| match p.trim() {
                    "countdown" => CensusPath::CountDown,
                    "polling" => CensusPath::Polling,
                    "proc" => CensusPath::Proc,
                    other => panic!(
                        "ELB_BENCH_DETECT_PATHS: {other:?} is not countdown, polling or proc"
                    ),
                })
                .collect(),
            detect_logs: std::env::var_os("ELB_BENCH_DETECT_LOGS").map(PathBuf::from),
            detect_pin: std::env::var("ELB_BENCH_DETECT_PIN")
                .is_ok_and(|v| !v.is_empty() && v != "0"),
            detect_cgroup: std::env::var("ELB_BENCH_DETECT_CGROUP")
                .is_ok_and(|v| !v.is_empty() && v != "0"),
            cpu: secs("ELB_BENCH_CPU_SECS", 60, 5),
            idle: secs("ELB_BENCH_IDLE_SECS", 60, 5),
            footprint_runs: one("ELB_BENCH_FOOTPRINT_RUNS", 5, 5),
            loss_runs: one("ELB_BENCH_LOSS_RUNS", 3, 3),
            fleet_agents: one("ELB_BENCH_FLEET_AGENTS", 200, 80),
            fleet_runs: one("ELB_BENCH_FLEET_RUNS", 3, 3),
        };
        assert!(
            knobs.detect_runs > 0 && knobs.footprint_runs > 0 && knobs.loss_runs > 0,
            "repetition counts must be at least 1: {knobs:?}"
        );
        knobs
    }
}

/// The agent under test, built once at the start by [`build_agent`].
static AGENT: OnceLock<PathBuf> = OnceLock::new();

fn agent_bin() -> &'static Path {
    AGENT
        .get()
        .expect("the agent is built before any benchmark")
}

/// `cargo build --release -p elb-drain`: the binary a user installs. The one cargo built for this bench
/// (`CARGO_BIN_EXE_elb-drain`) has the features of the tests' dependencies unified in (reqwest's JSON,
/// tokio's test-util), and it shares its path with whatever variant was built last, so its size and
/// memory would depend on what ran before. Cheap when up to date.
fn build_agent() -> PathBuf {
    let mut cmd = elb_sim::demo::cargo();
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "build",
            "--quiet",
            "--message-format=json-render-diagnostics",
        ])
        .args(["--release", "-p", "elb-drain", "--bin", "elb-drain"]);
    let mut cargo = ProcGuard::spawn(cmd);
    let status = cargo
        .wait_timeout(Duration::from_secs(1800))
        .expect("cargo build of the agent finishes");
    assert!(status.success(), "cargo build: {}", cargo.stderr());
    elb_sim::demo::built_executable(&cargo.stdout(), "elb-drain")
        .expect("cargo names the elb-drain executable")
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

fn p90(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        f64::NAN
    } else {
        v[(v.len() * 9 / 10).min(v.len() - 1)]
    }
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::max)
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::min)
}

/// The values of one column, for a table cell: "1.2 / 1.5 / 1.1".
fn each(v: &[f64], decimals: usize) -> String {
    v.iter()
        .map(|x| format!("{x:.decimals$}"))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// `key` of /proc/PID/status (kB or a count), 0 when gone.
fn status_field(pid: i32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// utime + stime of the whole process (every thread, live or exited), in seconds.
fn cpu_secs(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) as f64 / hz
}

/// Context switches (voluntary, involuntary) of each live thread of `pid`, by thread ID.
fn switches(pid: i32) -> HashMap<i32, (u64, u64)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return HashMap::new();
    };
    tasks
        .filter_map(|t| t.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .map(|tid| {
            let path = format!("{pid}/task/{tid}");
            let field = |k: &str| status_field_at(&path, k);
            (
                tid,
                (
                    field("voluntary_ctxt_switches:"),
                    field("nonvoluntary_ctxt_switches:"),
                ),
            )
        })
        .collect()
}

fn status_field_at(proc_path: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{proc_path}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Whether child `pid` has exited (still unreaped).
fn has_exited(pid: i32) -> bool {
    // SAFETY: as in `exit_clock`, without blocking.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        ) == 0
            && info.si_pid() != 0
    }
}

/// Runs `cmd` with its output discarded (as `ss` would be by a script counting lines into /dev/null) until
/// it exits, killed by PID after `limit`; whether it succeeded. Waits by blocking, not polling, so the
/// time around it is the command's own.
fn run_quiet(mut cmd: Command, limit: Duration) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("spawn");
    if exit_clock(child.id() as i32).recv_timeout(limit).is_err() {
        let _ = child.kill();
    }
    child.wait().is_ok_and(|s| s.success())
}

/// Runs `cmd` to its end (killed by PID after `limit`) and returns its stdout and its peak RSS in KiB:
/// the kernel's `ru_maxrss` from wait4, which is VmHWM at exit.
fn run_for_peak_rss(mut cmd: Command, limit: Duration) -> (String, u64) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().expect("spawn");
    let pid = child.id() as i32;
    let mut out = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let ended = wait_until(limit, || has_exited(pid));
    if !ended {
        // SAFETY: kill(2) on our own child, not reaped yet.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    // SAFETY: wait4 reaps our own child and fills the rusage we own.
    let (rc, ru) = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        let mut status = 0;
        (libc::wait4(pid, &mut status, 0, &mut ru), ru)
    };
    assert_eq!(rc, pid, "wait4: {}", std::io::Error::last_os_error());
    drop(child); // reaped above; dropping a Child neither waits nor kills
    let out = reader.join().unwrap_or_default();
    assert!(ended, "{cmd:?} did not finish within {limit:?}");
    (out, ru.ru_maxrss as u64)
}

fn scenario(app_port: u16) -> Scenario {
    Scenario::builder()
        .project(PROJECT)
        .user("bench", "bench", "bench-password")
        .access_key(AK, SK, PROJECT)
        .pool(POOL, |p| p)
        .member(POOL, MEMBER, "127.0.0.1", app_port)
}

fn config(dir: &Path, sim: &Sim, port: u16, extra_drain: &str) -> PathBuf {
    let pw = dir.join("password");
    std::fs::write(&pw, "bench-password").unwrap();
    std::fs::set_permissions(&pw, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let path = dir.join("elb-drain.toml");
    std::fs::write(
        &path,
        format!(
            "[cloud]\nproject_id = \"{PROJECT}\"\nelb_endpoint = \"{api}\"\niam_endpoint = \"{api}\"\nmetadata_endpoint = \"{md}\"\n\
             [auth]\nmethod = \"password\"\nuser = \"bench\"\ndomain = \"bench\"\npassword_file = \"{}\"\n\
             [[member]]\npool_id = \"{POOL}\"\nmember_id = \"{MEMBER}\"\nprotocol_port = {port}\n\
             [drain]\nexclude_peers = []\n{extra_drain}\n",
            pw.display(),
            api = sim.api_url(),
            md = sim.metadata_url()
        ),
    )
    .unwrap();
    path
}

fn agent(config: &Path, dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(agent_bin());
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("ELB_DRAIN_LOG", "info")
        .env("STATE_DIRECTORY", dir)
        .env("RUNTIME_DIRECTORY", dir)
        .arg("--config")
        .arg(config)
        .args(args);
    cmd
}

fn restore_member(sim: &Sim, port: u16) {
    sim.shared().lock_for_tests(|inner| {
        if !inner.members.iter().any(|m| m.id == MEMBER) {
            inner
                .add_member(&elb_sim::scenario::MemberConfig {
                    id: Some(MEMBER.into()),
                    pool_id: POOL.into(),
                    address: "127.0.0.1".into(),
                    protocol_port: port,
                    weight: 1,
                    instance_id: None,
                    name: String::new(),
                    subnet_cidr_id: None,
                })
                .unwrap();
        }
    });
}

fn last_delete_ns(sim: &Sim, after: usize) -> Option<u64> {
    sim.request_log()[after..]
        .iter()
        .find(|r| r.method == "DELETE")
        .map(|r| r.mono_ns)
}

/// Benchmark 1: SIGTERM -> DELETE at elb-sim, elb-drain `run` vs a one-shot script with the official
/// Python SDK.
async fn reaction() {
    let app = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = app.local_addr().unwrap().port();
    let sim = Sim::start(scenario(port).build()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &sim,
        port,
        "settle = \"10ms\"\npoll_interval = \"10ms\"",
    );
    let mut ours = Vec::new();
    for _ in 0..15 {
        restore_member(&sim, port);
        let _ = std::fs::remove_file(dir.path().join("state.json"));
        let mut a = ProcGuard::spawn(agent(&cfg, dir.path(), &["run"]));
        assert!(
            a.wait_stderr("ready", Duration::from_secs(10)),
            "{}",
            a.stderr()
        );
        std::thread::sleep(Duration::from_millis(100)); // let it go idle, as a real daemon would be
        let before = sim.request_log().len();
        let t = mono_ns();
        a.signal(libc::SIGTERM);
        a.wait_timeout(Duration::from_secs(10));
        if let Some(d) = last_delete_ns(&sim, before) {
            ours.push((d - t) as f64 / 1e6);
        }
    }
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let script = format!(
        "from huaweicloudsdkcore.auth.credentials import BasicCredentials\n\
         from huaweicloudsdkelb.v3 import ElbClient, DeleteMemberRequest\n\
         c = ElbClient.new_builder().with_credentials(BasicCredentials('{AK}', '{SK}', '{PROJECT}')).with_endpoints(['{}']).build()\n\
         c.delete_member(DeleteMemberRequest(pool_id='{POOL}', member_id='{MEMBER}'))\n",
        sim.api_url()
    );
    let mut sdk = Vec::new();
    if python.exists() {
        for _ in 0..8 {
            restore_member(&sim, port);
            let before = sim.request_log().len();
            let t = mono_ns();
            let mut cmd = Command::new(&python);
            cmd.args(["-c", &script]);
            let mut p = ProcGuard::spawn(cmd);
            let status = p.wait_timeout(Duration::from_secs(60));
            if status.is_some_and(|s| s.success())
                && let Some(d) = last_delete_ns(&sim, before)
            {
                sdk.push((d - t) as f64 / 1e6);
            }
        }
    }
    let (m, p) = (median(&ours), p90(&ours));
    let s = median(&sdk);
    println!("\n### 1. Reaction: stop signal -> DELETE arriving at elb-sim\n");
    println!("| | median | p90 | runs |\n|---|---|---|---|");
    println!(
        "| elb-drain `run` (SIGTERM) | {m:.2} ms | {p:.2} ms | {} |",
        ours.len()
    );
    println!(
        "| Python SDK one-shot (`huaweicloudsdkelb`, process start) | {s:.1} ms | {:.1} ms | {} |",
        p90(&sdk),
        sdk.len()
    );
    println!("\nratio: elb-drain is {:.0}x faster", s / m);
}

/// Connections held open by helper processes (one process may hold only ~20k descriptors here): server
/// holders share the port with SO_REUSEPORT and accept; client holders connect from many source
/// addresses (127.x.y.z, or 10.x.y.z from the client side of a [`NetPair`]) so the count is not limited
/// by one source address's ephemeral ports. Dropping the pile kills them all.
struct Pile {
    addr: SocketAddr,
    servers: Vec<Holder>,
    clients: Vec<Holder>,
    /// Connections opened.
    total: usize,
    /// Of them, those the servers accepted (see [`Pile::grow_to`]).
    held: usize,
    /// The namespaces the servers and the clients live in, if not this process's.
    net: Option<Arc<NetPair>>,
    /// `ELB_BENCH_REACT` of every holder: how the application (and the clients) answer a close.
    react: String,
}

/// One helper process, spoken to by lines on its stdin and stdout; killed by PID when dropped.
struct Holder {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

/// How long a holder may take to answer (connecting 15k sockets included).
const HOLDER_ANSWER: Duration = Duration::from_secs(120);

impl Holder {
    fn spawn(env: &[(&str, String)]) -> Holder {
        let mut cmd = Command::new(std::env::current_exe().expect("own executable"));
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("holder");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let holder = Holder {
            child,
            stdin,
            lines,
        };
        assert_eq!(holder.reply(), "ready", "holder failed to start");
        holder
    }

    fn send(&mut self, command: &str) {
        writeln!(self.stdin, "{command}")
            .and_then(|()| self.stdin.flush())
            .expect("holder's stdin");
    }

    fn reply(&self) -> String {
        self.lines
            .recv_timeout(HOLDER_ANSWER)
            .unwrap_or_else(|e| panic!("holder {} did not answer: {e}", self.child.id()))
    }

    /// Sends `command` to every holder at once, then collects the answers.
    fn ask_all<'a>(holders: impl Iterator<Item = &'a mut Holder>, command: &str) -> Vec<String> {
        let holders: Vec<&mut Holder> = holders.collect();
        let mut asked = Vec::new();
        for h in holders {
            h.send(command);
            asked.push(h);
        }
        asked.iter().map(|h| h.reply()).collect()
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Accepted connections per server holder at most (the descriptor limit is 20k).
const SERVER_CAP: usize = 18_000;
const PER_SERVER: usize = 12_000;
const PER_CLIENT: usize = 15_000;

impl Pile {
    fn new() -> Pile {
        let port = common::unclaimed_port();
        let mut pile = Pile {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            servers: Vec::new(),
            clients: Vec::new(),
            total: 0,
            held: 0,
            net: None,
            react: "never".into(),
        };
        pile.add_server();
        pile
    }

    /// A pile on `port` of the server side of `net`, its clients on the client side. `react`: how
    /// long after its peer ended a connection each end closes its own (in ms, or "never").
    fn new_in(net: &Arc<NetPair>, port: u16, react: &str) -> Pile {
        let mut pile = Pile {
            addr: SocketAddr::from((SERVER_IP, port)),
            servers: Vec::new(),
            clients: Vec::new(),
            total: 0,
            held: 0,
            net: Some(net.clone()),
            react: react.into(),
        };
        pile.add_server();
        pile
    }

    fn add_server(&mut self) {
        let env = [
            ("ELB_BENCH_HOLDER", "server".to_owned()),
            ("ELB_BENCH_PORT", self.addr.port().to_string()),
            ("ELB_BENCH_BIND", self.addr.ip().to_string()),
            ("ELB_BENCH_REACT", self.react.clone()),
        ];
        let holder = match &self.net {
            Some(net) => net.server_side(|| Holder::spawn(&env)),
            None => Holder::spawn(&env),
        };
        self.servers.push(holder);
    }

    /// Opens connections until `n` are established and accepted. `octet` is the next free second
    /// octet of the 127.x.y.z client sources (shared by every pile, so no two piles share a source).
    fn grow_to(&mut self, n: usize, octet: &mut u8) {
        while self.servers.len() * PER_SERVER < n {
            self.add_server();
        }
        while self.total < n {
            let count = PER_CLIENT.min(n - self.total);
            *octet = octet.checked_add(1).expect("out of x.N source addresses");
            let env = [
                ("ELB_BENCH_HOLDER", "client".to_owned()),
                ("ELB_BENCH_CONNECT", self.addr.to_string()),
                ("ELB_BENCH_COUNT", count.to_string()),
                ("ELB_BENCH_SRC", octet.to_string()),
                (
                    "ELB_BENCH_SRC_BASE",
                    if self.net.is_some() { "10" } else { "127" }.into(),
                ),
                ("ELB_BENCH_REACT", self.react.clone()),
            ];
            self.clients.push(match &self.net {
                Some(net) => net.client_side(|| Holder::spawn(&env)),
                None => Holder::spawn(&env),
            });
            self.total += count;
        }
        // Connected is not accepted yet: wait until the servers hold every connection. A client can
        // see a connection established whose last ACK the server dropped (its accept queue was full
        // for a moment while 15k connects arrived at once): after the SYN-ACK retries that one stays
        // half-open, never accepted and never ESTABLISHED on the server side. A handful of those
        // (at most 1 in 1000, once the count stops moving for 10 s) are left out of the pile's count.
        let mut accepted = 0;
        let mut last_change = (0, Instant::now());
        let settled = wait_until(Duration::from_secs(120), || {
            accepted = Holder::ask_all(self.servers.iter_mut(), "count")
                .iter()
                .map(|a| a.parse::<usize>().expect("a count"))
                .sum();
            if accepted != last_change.0 {
                last_change = (accepted, Instant::now());
            }
            let short = self.total - accepted.min(self.total);
            short == 0
                || (short * 1000 <= self.total
                    && last_change.1.elapsed() >= Duration::from_secs(10))
        });
        assert!(settled, "servers accepted {accepted} of {}", self.total);
        if accepted < self.total {
            println!(
                "(note: {} of {} connections were left half-open by an accept-queue overflow; the pile \
                 holds {accepted})",
                self.total - accepted,
                self.total
            );
        }
        self.held = accepted;
    }

    /// The connections the servers really hold: what a census must count.
    fn held(&self) -> usize {
        self.held
    }
}

/// The sockets a holder keeps, by slot (a slot empties when its socket is closed), and whether the
/// bench already acted on each (an `end` takes a socket once).
#[derive(Default)]
struct Slots {
    fds: Vec<Option<OwnedFd>>,
    acted: Vec<bool>,
}

impl Slots {
    fn push(&mut self, fd: OwnedFd) -> usize {
        self.fds.push(Some(fd));
        self.acted.push(false);
        self.fds.len() - 1
    }
}

/// What an `end` command does to each socket it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EndOp {
    /// close(2): a FIN.
    Close,
    /// SO_LINGER {on, 0}, then close(2): a RST.
    Reset,
    /// shutdown(SHUT_WR): a FIN; the descriptor stays open (and reacts to the peer's close).
    ShutWr,
}

impl EndOp {
    fn name(self) -> &'static str {
        match self {
            EndOp::Close => "close",
            EndOp::Reset => "reset",
            EndOp::ShutWr => "shutwr",
        }
    }

    fn parse(s: &str) -> Option<EndOp> {
        [EndOp::Close, EndOp::Reset, EndOp::ShutWr]
            .into_iter()
            .find(|op| op.name() == s)
    }
}

/// Takes up to `n` sockets the bench has not acted on yet (the last ones first) and does `op` to
/// each. Returns how many, and CLOCK_MONOTONIC before and after the last system call: the moment
/// the last of those connections left ESTABLISHED lies between the two.
fn end(slots: &Mutex<Slots>, op: EndOp, n: usize) -> (usize, u64, u64) {
    let mut slots = slots.lock().unwrap();
    let (mut done, mut before, mut after) = (0, 0, 0);
    for i in (0..slots.fds.len()).rev() {
        if done == n {
            break;
        }
        if slots.acted[i] || slots.fds[i].is_none() {
            continue;
        }
        slots.acted[i] = true;
        let fd = std::os::fd::AsRawFd::as_raw_fd(slots.fds[i].as_ref().expect("checked"));
        if op == EndOp::Reset {
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: setsockopt on a descriptor this holder owns, with a linger struct of ours.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&linger as *const libc::linger).cast(),
                    std::mem::size_of::<libc::linger>() as u32,
                )
            };
        }
        before = mono_ns();
        match op {
            EndOp::Close | EndOp::Reset => drop(slots.fds[i].take()),
            // SAFETY: shutdown(2) on a descriptor this holder owns.
            EndOp::ShutWr => unsafe {
                libc::shutdown(fd, libc::SHUT_WR);
            },
        }
        after = mono_ns();
        done += 1;
    }
    (done, before, after)
}

/// The application's side of a connection its peer ended: each socket whose peer sent a FIN or a
/// RST is closed `delay` later (in the order the peers ended them), as a server closes on EOF. An
/// epoll set of every slot, one-shot: a socket is closed once.
fn react(slots: Arc<Mutex<Slots>>, epoll: i32, delay: Duration) {
    let mut due: std::collections::VecDeque<(Instant, u64)> = Default::default();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    loop {
        let timeout = due.front().map_or(-1, |(at, _)| {
            at.saturating_duration_since(Instant::now()).as_millis() as i32
        });
        // SAFETY: epoll_wait on our own epoll fd into a buffer we own.
        let n =
            unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), events.len() as i32, timeout) };
        let now = Instant::now();
        for e in events.iter().take(n.max(0) as usize) {
            due.push_back((now + delay, e.u64));
        }
        while due.front().is_some_and(|(at, _)| *at <= Instant::now()) {
            let (_, slot) = due.pop_front().expect("checked");
            let mut slots = slots.lock().unwrap();
            if let Some(fd) = slots.fds.get_mut(slot as usize) {
                drop(fd.take());
            }
        }
    }
}

/// The helper-process side of [`Pile`]: hold sockets; answer `count` with how many were held,
/// `close` by closing them all and answering `closed NS` (CLOCK_MONOTONIC after the last close(2)),
/// and `end OP N` by doing OP (`close`, `reset`, `shutwr`) to N sockets not acted on yet, answering
/// `ended K BEFORE AFTER` (see [`end`]). With `ELB_BENCH_REACT=MS` a socket whose peer ended the
/// connection is closed MS later (`never`, the default: kept open). Ends when stdin closes (or when
/// killed).
fn holder(mode: &str) {
    let env = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("holder: {k} not set"));
    let held: Arc<Mutex<Slots>> = Arc::default();
    // SAFETY: a new epoll set, owned by this process for its life.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(epoll >= 0, "epoll_create1");
    let reacting = match std::env::var("ELB_BENCH_REACT").as_deref() {
        Ok("never") | Err(_) => false,
        Ok(ms) => {
            let delay = Duration::from_millis(ms.parse().expect("ELB_BENCH_REACT: ms or never"));
            let slots = held.clone();
            std::thread::spawn(move || react(slots, epoll, delay));
            true
        }
    };
    let keep = move |slots: &mut Slots, fd: OwnedFd| {
        let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
        let slot = slots.push(fd);
        if reacting {
            let mut ev = libc::epoll_event {
                events: (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR | libc::EPOLLONESHOT)
                    as u32,
                u64: slot as u64,
            };
            // SAFETY: adds a descriptor this holder owns to its own epoll set.
            unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, raw, &mut ev) };
        }
    };
    match mode {
        "server" => {
            use std::os::fd::FromRawFd;
            let port: u16 = env("ELB_BENCH_PORT").parse().expect("ELB_BENCH_PORT");
            let bind: Ipv4Addr = std::env::var("ELB_BENCH_BIND")
                .map_or(Ipv4Addr::LOCALHOST, |a| a.parse().expect("ELB_BENCH_BIND"));
            // SAFETY: a listening socket with SO_REUSEPORT, built by hand (std has no reuseport).
            let fd = unsafe {
                let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
                let one: libc::c_int = 1;
                for opt in [libc::SO_REUSEADDR, libc::SO_REUSEPORT] {
                    libc::setsockopt(
                        fd,
                        libc::SOL_SOCKET,
                        opt,
                        (&one as *const libc::c_int).cast(),
                        4,
                    );
                }
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as u16,
                    sin_port: port.to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from(bind).to_be(),
                    },
                    sin_zero: [0; 8],
                };
                assert_eq!(
                    libc::bind(fd, (&sin as *const libc::sockaddr_in).cast(), 16),
                    0,
                    "bind: {}",
                    std::io::Error::last_os_error()
                );
                assert_eq!(libc::listen(fd, 4096), 0, "listen");
                fd
            };
            // SAFETY: fd is a fresh listening socket that nothing else owns.
            let listener = unsafe { TcpListener::from_raw_fd(fd) };
            let into = held.clone();
            std::thread::spawn(move || {
                for c in listener.incoming().take(SERVER_CAP) {
                    match c {
                        Ok(c) => keep(&mut into.lock().unwrap(), c.into()),
                        Err(_) => return,
                    }
                }
            });
        }
        _ => {
            let to: SocketAddr = env("ELB_BENCH_CONNECT").parse().expect("address");
            let count: usize = env("ELB_BENCH_COUNT").parse().expect("count");
            let second: u8 = env("ELB_BENCH_SRC").parse().expect("octet");
            let first: u8 = std::env::var("ELB_BENCH_SRC_BASE")
                .map_or(127, |b| b.parse().expect("ELB_BENCH_SRC_BASE"));
            let mut held = held.lock().unwrap();
            for i in 0..count {
                let src = Ipv4Addr::new(first, second, (i / 250) as u8, 1 + (i % 250) as u8);
                keep(&mut held, connect_from(src, to).into());
            }
        }
    }
    let mut out = std::io::stdout();
    let _ = writeln!(out, "ready");
    let _ = out.flush();
    for line in std::io::stdin().lines() {
        let Ok(line) = line else { return };
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["count"] => {
                let n = held.lock().unwrap().fds.len();
                let _ = writeln!(out, "{n}");
            }
            ["close"] => {
                let all = std::mem::take(&mut *held.lock().unwrap());
                drop(all);
                let _ = writeln!(out, "closed {}", mono_ns());
            }
            ["end", op, n] => {
                let op = EndOp::parse(op).expect("end: close, reset or shutwr");
                let (done, before, after) = end(&held, op, n.parse().expect("end: a count"));
                let _ = writeln!(out, "ended {done} {before} {after}");
            }
            _ => {}
        }
        let _ = out.flush();
    }
}

/// connect(2) from a chosen source address (bind with port 0 first).
fn connect_from(src: Ipv4Addr, to: SocketAddr) -> TcpStream {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket/bind/connect on a fresh fd we own; sockaddr_in built field by field.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::SOL_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            4,
        );
        let sin = |a: SocketAddrV4| libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: a.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*a.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        let local = sin(SocketAddrV4::new(src, 0));
        let rc = libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), 16);
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        let SocketAddr::V4(to) = to else {
            panic!("v4 only")
        };
        let remote = sin(to);
        let rc = libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), 16);
        assert_eq!(rc, 0, "connect: {}", std::io::Error::last_os_error());
        TcpStream::from_raw_fd(fd)
    }
}

fn time_ms(mut f: impl FnMut(), runs: usize) -> f64 {
    let v: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    median(&v)
}

fn ss_ms(port: u16) -> f64 {
    time_ms(
        || {
            let mut cmd = Command::new("ss");
            cmd.args([
                "-Htn",
                "state",
                "established",
                &format!("( sport = :{port} )"),
            ]);
            assert!(run_quiet(cmd, Duration::from_secs(60)), "ss failed");
        },
        5,
    )
}

/// Benchmark 2: one census at each size (plus the noise pile on another port), ours vs ss vs /proc, and
/// the peak memory of `elb-drain connections` doing one. Leaves `target` grown to the largest size.
fn census(target: &mut Pile, knobs: &Knobs, octet: &mut u8) {
    println!(
        "\n### 2. Census cost (one count; {} noise connections on another port; medians of 5, /proc of 3)\n",
        knobs.noise
    );
    println!(
        "| sockets on the port | elb-drain netlink | `ss -Htn state established '( sport = :P )'` | /proc fallback | netlink / ss | peak RSS of `elb-drain connections` |"
    );
    println!("|---|---|---|---|---|---|");
    let port = target.addr.port();
    let spec = CensusSpec {
        ports: vec![port],
        exclude_peers: vec![],
    };
    for &n in &knobs.census_sizes {
        target.grow_to(n, octet);
        let n = target.held();
        let mut nl = NetlinkCensus::new(spec.clone()).unwrap();
        assert_eq!(nl.count().unwrap().established, n, "netlink counts exactly");
        let nl_ms = time_ms(|| assert_eq!(nl.count().unwrap().established, n), 5);
        // /proc/net/tcp is read in pages, resuming by position: while other sockets come and go (TIME_WAIT
        // entries expiring, another program's connections) it can repeat or skip entries. What it
        // counted is shown when it is not exact, rather than failing the run.
        let mut pc = ProcCensus::new(spec.clone());
        let mut pc_counts = vec![pc.count().unwrap().established];
        let pc_ms = time_ms(|| pc_counts.push(pc.count().unwrap().established), 3);
        let pc_note = if pc_counts.iter().all(|&c| c == n) {
            String::new()
        } else {
            format!(
                " (counted {})",
                each(&pc_counts.iter().map(|&c| c as f64).collect::<Vec<_>>(), 0)
            )
        };
        let ss = ss_ms(port);
        // The agent's own census, as a process: its peak memory shows whether memory grows with N.
        let mut peaks = Vec::new();
        for _ in 0..3 {
            let mut cmd = Command::new(agent_bin());
            cmd.env_clear()
                .args(["connections", "--json", "--ports", &port.to_string()]);
            let (out, peak) = run_for_peak_rss(cmd, Duration::from_secs(60));
            let v: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON");
            assert_eq!(v["established"], n, "elb-drain connections counts exactly");
            assert_eq!(v["backend"], "netlink", "{v}");
            peaks.push(peak as f64 / 1024.0);
        }
        println!(
            "| {n} | {nl_ms:.1} ms | {ss:.1} ms | {pc_ms:.1} ms{pc_note} | {:.2} | {:.1} MiB |",
            nl_ms / ss,
            median(&peaks)
        );
    }
}

/// The server side's address on the veth pair of a [`NetPair`].
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 250, 1);

/// Two network namespaces this benchmark makes, joined by a veth pair: the server side (the agent,
/// the application's sockets, elb-sim) and the client side (the clients, from 10.0.0.0/8, routed
/// locally there). A real server's clients are other machines, so its socket table holds none of
/// their sockets, in particular not the TIME_WAIT entries of clients that closed first; with the
/// clients on the same machine the agent's census walked those too. The server side has an established
/// hash of its own (see [`NetPair::new`]): a census walks the whole hash it uses. Named
/// `elb-bench-{s,c}-PID`, deleted on drop; nothing is changed outside them.
struct NetPair {
    server: std::fs::File,
    client: std::fs::File,
    names: [String; 2],
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip(8)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetPair {
    fn new() -> NetPair {
        let pid = std::process::id();
        let names = [format!("elb-bench-s-{pid}"), format!("elb-bench-c-{pid}")];
        let [s, c] = [names[0].as_str(), names[1].as_str()];
        // Namespaces share the machine's established hash unless made from one whose
        // tcp_child_ehash_entries says otherwise, and a census walks the whole of it (skipping other
        // namespaces' sockets): so the server side is made from a throw-away namespace that asks for
        // a hash of its own, as large as the machine's. Named by attaching its process.
        let size = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_ehash_entries")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(262_144);
        let mut maker = Command::new("unshare")
            .args([
                "--net",
                "sh",
                "-c",
                &format!(
                    "echo {size} > /proc/sys/net/ipv4/tcp_child_ehash_entries && exec unshare --net sleep 600"
                ),
            ])
            .spawn()
            .expect("unshare(1)");
        let pid_of_maker = maker.id();
        let made = wait_until(Duration::from_secs(10), || {
            std::fs::read_to_string(format!("/proc/{pid_of_maker}/comm"))
                .is_ok_and(|c| c.trim() == "sleep")
        });
        assert!(made, "the server-side namespace was not made");
        ip(&["netns", "attach", s, &pid_of_maker.to_string()]);
        let _ = maker.kill();
        let _ = maker.wait();
        ip(&["netns", "add", c]);
        // From here on Drop cleans up, also when a step below fails.
        let open = |n: &str| std::fs::File::open(format!("/run/netns/{n}")).expect("netns file");
        let pair = NetPair {
            server: open(s),
            client: open(c),
            names: names.clone(),
        };
        ip(&["-n", s, "link", "set", "lo", "up"]);
        ip(&["-n", c, "link", "set", "lo", "up"]);
        ip(&[
            "link", "add", "vs", "netns", s, "type", "veth", "peer", "name", "vc", "netns", c,
        ]);
        ip(&["-n", s, "addr", "add", "192.168.250.1/30", "dev", "vs"]);
        ip(&["-n", c, "addr", "add", "192.168.250.2/30", "dev", "vc"]);
        ip(&["-n", s, "link", "set", "vs", "up"]);
        ip(&["-n", c, "link", "set", "vc", "up"]);
        ip(&["-n", c, "route", "add", "local", "10.0.0.0/8", "dev", "lo"]);
        ip(&[
            "-n",
            s,
            "route",
            "add",
            "10.0.0.0/8",
            "via",
            "192.168.250.2",
        ]);
        pair
    }

    /// Whether this machine lets the benchmark make namespaces (root, with ip(8)).
    fn possible() -> bool {
        Command::new("ip")
            .args(["netns", "list"])
            .output()
            .is_ok_and(|o| o.status.success())
            && unsafe { libc::geteuid() } == 0
    }

    /// Runs `f` on a thread in namespace `ns`: what it opens, binds or spawns lives there.
    fn within<T: Send>(ns: &std::fs::File, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    // SAFETY: setns(2) of this (new, scoped) thread into a namespace file we hold.
                    let rc = unsafe {
                        libc::setns(std::os::fd::AsRawFd::as_raw_fd(ns), libc::CLONE_NEWNET)
                    };
                    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                    f()
                })
                .join()
                .expect("thread in a namespace")
        })
    }

    fn server_side<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        Self::within(&self.server, f)
    }

    fn client_side<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        Self::within(&self.client, f)
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

/// Which end of a connection acts first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Client,
    Server,
}

/// When a wave of closes starts, from the moment the agent said it was draining: at random within two
/// census intervals, or within 3 ms of the instant the `k`-th census after that one is due.
#[derive(Debug, Clone, Copy)]
enum WaveAt {
    Random(f64),
    NearCensus { k: u32, delta_us: i64 },
}

impl WaveAt {
    fn resolve(self, interval: Duration) -> Duration {
        match self {
            WaveAt::Random(f) => interval.mul_f64(f),
            WaveAt::NearCensus { k, delta_us } => Duration::from_micros(
                (interval.as_micros() as i64 * i64::from(k) + delta_us).max(0) as u64,
            ),
        }
    }
}

/// One drain's random close schedule (see [`detect`]): which end acts first and how the other
/// answers, then waves of closes, resets or half-closes over the pile, the last wave being the
/// stragglers (1 to 3 connections) or a wave like the others.
#[derive(Debug, Clone)]
struct Closing {
    first: End,
    /// ms after its peer ended a connection that the other end closes its own; `None`: never (while
    /// the drain lasts), so the counted socket lingers out of ESTABLISHED without being freed.
    react: Option<u64>,
    /// (what, how many, when): the counts add up to the pile.
    waves: Vec<(EndOp, usize, WaveAt)>,
}

impl Closing {
    fn generate(seed: u64, n: usize, client_first_ok: bool) -> Closing {
        let mut rng = fastrand::Rng::with_seed(seed);
        let first = if client_first_ok && rng.bool() {
            End::Client
        } else {
            End::Server
        };
        let react = match rng.u8(0..20) {
            0..=8 => Some(0),
            9..=13 => Some(rng.u64(1..50)),
            14..=16 => Some(rng.u64(50..500)),
            _ => None,
        };
        let op = |rng: &mut fastrand::Rng| match rng.u8(0..4) {
            0 | 1 => EndOp::Close,
            2 => EndOp::Reset,
            _ => EndOp::ShutWr,
        };
        let at = |rng: &mut fastrand::Rng| {
            if rng.bool() {
                WaveAt::Random(rng.f64() * 2.0)
            } else {
                WaveAt::NearCensus {
                    k: rng.u32(1..=2),
                    delta_us: rng.i64(-3_000..=3_000),
                }
            }
        };
        let stragglers = if n > 1 && rng.bool() {
            rng.usize(1..=3.min(n - 1))
        } else {
            0
        };
        let waves = rng.usize(1..=3).min(n - stragglers);
        let mut cuts: Vec<usize> = (0..waves - 1)
            .map(|_| rng.usize(0..=n - stragglers))
            .collect();
        cuts.push(0);
        cuts.push(n - stragglers);
        cuts.sort_unstable();
        let mut plan: Vec<(EndOp, usize, WaveAt)> = cuts
            .windows(2)
            .map(|w| w[1] - w[0])
            .filter(|&c| c > 0)
            .map(|c| (op(&mut rng), c, at(&mut rng)))
            .collect();
        if stragglers > 0 {
            plan.push((op(&mut rng), stragglers, at(&mut rng)));
        }
        Closing {
            first,
            react,
            waves: plan,
        }
    }

    fn react_class(&self) -> &'static str {
        match self.react {
            Some(0) => "at once",
            Some(ms) if ms < 50 => "1-50 ms later",
            Some(_) => "50-500 ms later",
            None => "never",
        }
    }
}

/// The longest wait the agent scheduled between two censuses (its debug line after each census says
/// "next in N ms"), at least `floor`.
fn logged_interval(log: &str, floor: Duration) -> Duration {
    log.lines()
        .filter_map(|l| {
            let rest = &l[l.find("; next in ")? + "; next in ".len()..];
            rest.split(' ').next()?.parse::<u64>().ok()
        })
        .map(Duration::from_millis)
        .fold(floor, Duration::max)
}

/// What the agent's census and recheck debug lines in `log` say they cost (`cpu_us=`, and the idle
/// rechecks' `rechecks_us=`), in seconds.
fn logged_cpu(log: &str) -> f64 {
    let field = |l: &str, key: &str| -> u64 {
        l.find(key)
            .and_then(|i| l[i + key.len()..].split(' ').next()?.parse().ok())
            .unwrap_or(0)
    };
    log.lines()
        .filter(|l| l.contains("census: ") || l.contains("recheck: "))
        .map(|l| field(l, " cpu_us=") + field(l, " rechecks_us="))
        .sum::<u64>() as f64
        / 1e6
}

/// Census paths of the detection benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CensusPath {
    /// Netlink census, counting down on socket-destroy notifications (the agent's way as root).
    CountDown,
    /// Netlink census, polling: the destroy subscription refused (seccomp on the netlink bind).
    Polling,
    /// /proc/net/tcp: sock_diag refused (seccomp).
    Proc,
}

impl CensusPath {
    fn label(self) -> &'static str {
        match self {
            CensusPath::CountDown => "netlink, count-down",
            CensusPath::Polling => "netlink, polling",
            CensusPath::Proc => "/proc, polling",
        }
    }

    fn confine(self, cmd: &mut Command) {
        use common::confine::{Confine, confine};
        match self {
            CensusPath::CountDown => {}
            CensusPath::Polling => confine(cmd, Confine::NoDestroyEvents),
            CensusPath::Proc => confine(cmd, Confine::NoNetlink),
        }
    }

    fn taken(self, log: &str) -> bool {
        let netlink = log.contains("connection census: netlink sock_diag");
        let polls = log.contains("the drain polls");
        match self {
            CensusPath::CountDown => netlink && !polls,
            CensusPath::Polling => netlink && polls,
            CensusPath::Proc => !netlink && polls,
        }
    }
}

/// What one drain showed.
struct Detection {
    /// Agent exit − the last close (after its system call), ms; negative: an exit while a counted
    /// connection was still open (before the last close's system call began) is counted apart.
    after_ms: f64,
    early: bool,
    react: &'static str,
    interval_ms: f64,
    /// The agent's CPU from the first close to its exit, ms, and of it what its census and recheck
    /// lines say they cost: the rest is the destroy watch, the runtime and the logging.
    cpu_ms: f64,
    counted_ms: f64,
}

/// The agent on one CPU, everything else on the others (see `ELB_BENCH_DETECT_PIN`).
struct Pinning {
    agent: libc::cpu_set_t,
}

impl Pinning {
    /// Moves every thread of this process off the first CPU it may use, which the agent gets; the
    /// threads and processes started from here on inherit that.
    fn new() -> Pinning {
        let size = std::mem::size_of::<libc::cpu_set_t>();
        // SAFETY: a zeroed cpu_set_t is the empty set; the calls write only the set we own.
        let mut allowed: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::sched_getaffinity(0, size, &mut allowed) }, 0);
        let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| unsafe { libc::CPU_ISSET(c, &allowed) })
            .collect();
        assert!(
            cpus.len() >= 2,
            "ELB_BENCH_DETECT_PIN needs two CPUs; this process may use {cpus:?}"
        );
        let set = |these: &[usize]| {
            let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
            for &c in these {
                unsafe { libc::CPU_SET(c, &mut set) };
            }
            set
        };
        let rest = set(&cpus[1..]);
        for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
            let name = task.expect("/proc/self/task").file_name();
            let tid: libc::pid_t = name.to_string_lossy().parse().expect("a thread id");
            // SAFETY: as above; a thread that ended meanwhile is ESRCH, which is fine.
            let rc = unsafe { libc::sched_setaffinity(tid, size, &rest) };
            assert!(
                rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH),
                "sched_setaffinity({tid}): {}",
                std::io::Error::last_os_error()
            );
        }
        println!(
            "(pinned: the agent on CPU {}, this benchmark, its holders and elb-sim on {:?})",
            cpus[0],
            &cpus[1..]
        );
        Pinning {
            agent: set(&cpus[..1]),
        }
    }
}

/// Where the detection benchmark puts the agent apart from the rest.
trait Placement {
    /// Puts the agent `cmd` starts there.
    fn agent(&self, cmd: &mut Command);
}

impl Placement for Pinning {
    /// The agent `cmd` starts runs on the agent's CPU only.
    fn agent(&self, cmd: &mut Command) {
        use std::os::unix::process::CommandExt;
        let set = self.agent;
        // SAFETY: sched_setaffinity is a system call, safe between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }
}

/// The agent in a CPU cgroup of its own, everything else in a sibling one, both at the default weight:
/// how systemd runs a service (its own cgroup, `CPUWeight=100`) beside the application's (see
/// `ELB_BENCH_DETECT_CGROUP`). The scheduler then shares the CPUs between the two groups, not
/// between their threads: the agent's few threads are not one in dozens.
struct CpuGroups {
    /// The controller's root, where this process goes back at the end.
    root: PathBuf,
    agent: PathBuf,
    rest: PathBuf,
}

impl CpuGroups {
    fn new() -> CpuGroups {
        let unified = Path::new("/sys/fs/cgroup");
        let root = if std::fs::read_to_string(unified.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "cpu"))
        {
            // cgroup v2: the children of the root get the cpu controller from its subtree_control.
            std::fs::write(unified.join("cgroup.subtree_control"), "+cpu")
                .expect("enabling the cpu controller for the root's children");
            unified.to_owned()
        } else {
            let v1 = unified.join("cpu");
            assert!(
                v1.join("cgroup.procs").exists(),
                "ELB_BENCH_DETECT_CGROUP needs the cpu controller (cgroup v2, or v1 at /sys/fs/cgroup/cpu)"
            );
            v1
        };
        let pid = std::process::id();
        let make = |name: &str| {
            let dir = root.join(format!("elb-bench-{name}-{pid}"));
            std::fs::create_dir_all(&dir)
                .unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
            dir
        };
        let (agent, rest) = (make("agent"), make("rest"));
        // Every thread of this process; what it starts from here on (holders, elb-sim's threads) inherits it.
        std::fs::write(rest.join("cgroup.procs"), pid.to_string()).expect("moving this process");
        println!(
            "(cgroups: the agent in {}, this benchmark, its holders and elb-sim in {}, default weights)",
            agent.display(),
            rest.display()
        );
        CpuGroups { root, agent, rest }
    }
}

impl Placement for CpuGroups {
    fn agent(&self, cmd: &mut Command) {
        use std::os::unix::process::CommandExt;
        let procs =
            std::ffi::CString::new(self.agent.join("cgroup.procs").to_str().unwrap()).unwrap();
        // SAFETY: open(2) and write(2) on data prepared above, between fork and exec: "0" is the
        // writing process, the child about to become the agent.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let wrote = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if wrote == 1 { Ok(()) } else { Err(err) }
            });
        }
    }
}

impl Drop for CpuGroups {
    fn drop(&mut self) {
        // Back where it was, then the groups go (one still holding a process stays: said, not fatal).
        let _ = std::fs::write(
            self.root.join("cgroup.procs"),
            std::process::id().to_string(),
        );
        for dir in [&self.agent, &self.rest] {
            if let Err(e) = std::fs::remove_dir(dir) {
                eprintln!("(cgroup {} left: {e})", dir.display());
            }
        }
    }
}

/// One drain of `n` connections with the close schedule of `seed`, on `path`. `cpu`: measure the
/// agent's CPU for that long before the closes begin, and return it. `place`: the agent apart from
/// the rest (a CPU or a cgroup of its own).
#[allow(clippy::too_many_arguments)]
fn detect_one(
    net: &Arc<NetPair>,
    rt: &tokio::runtime::Runtime,
    port: u16,
    n: usize,
    seed: u64,
    path: CensusPath,
    octet: &mut u8,
    cpu: Option<Duration>,
    logs: Option<&Path>,
    place: Option<&dyn Placement>,
) -> (Detection, Option<(f64, u64, u64)>) {
    // Both ends react the same way: the application closes on EOF as the clients do.
    let probe = Closing::generate(seed, n, true);
    let react = probe.react.map_or("never".to_owned(), |ms| ms.to_string());
    let mut pile = Pile::new_in(net, port, &react);
    pile.grow_to(n, octet);
    // A connection the servers never accepted (see grow_to) ends nothing when its client closes:
    // then the servers act first, so every close the schedule times is a counted connection's.
    let closing = Closing::generate(seed, pile.held(), pile.held() == pile.total);
    let sim = net.server_side(|| rt.block_on(Sim::start(scenario(port).build())).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &sim,
        port,
        "settle = \"100ms\"\npoll_interval = \"200ms\"\ntimeout = \"10m\"",
    );
    let mut cmd = agent(&cfg, dir.path(), &["drain"]);
    // Its debug lines say when each census ran and when the next is due.
    cmd.env("ELB_DRAIN_LOG", "elb_drain=debug");
    path.confine(&mut cmd);
    if let Some(place) = place {
        place.agent(&mut cmd);
    }
    let mut a = net.server_side(|| ProcGuard::spawn(cmd));
    let exited = exit_clock(a.pid());
    assert!(
        a.wait_stderr("drain: draining", Duration::from_secs(300)),
        "{}",
        a.stderr()
    );
    let draining = Instant::now();
    // The census' status line can reach stderr a moment after the phase line (at 100k the census
    // that ends settling and its line come close together): wait for it rather than read once.
    let counted = format!("draining: {} connections open", pile.held());
    assert!(
        a.wait_stderr(&counted, Duration::from_secs(10)),
        "{}",
        a.stderr()
    );
    assert!(path.taken(&a.stderr()), "not on {path:?}: {}", a.stderr());
    let mut cpu_row = None;
    let draining = if let Some(window) = cpu {
        let (t, c) = (Instant::now(), cpu_secs(a.pid()));
        std::thread::sleep(window);
        let used = cpu_secs(a.pid()) - c;
        cpu_row = Some((
            used / t.elapsed().as_secs_f64() * 100.0,
            status_field(a.pid(), "VmRSS:"),
            status_field(a.pid(), "VmHWM:"),
        ));
        // Wave times count from a census, as they would right after the draining one.
        Instant::now()
    } else {
        draining
    };
    let interval = logged_interval(&a.stderr(), Duration::from_millis(200));
    let holders = match closing.first {
        End::Client => &mut pile.clients,
        End::Server => &mut pile.servers,
    };
    let mut left: Vec<usize> = Holder::ask_all(holders.iter_mut(), "count")
        .iter()
        .map(|c| c.parse().expect("a count"))
        .collect();
    let mut truth = (0u64, 0u64);
    let (cpu_from, log_from) = (cpu_secs(a.pid()), a.stderr().len());
    // (CLOCK_MONOTONIC after the wave's last system call, what it was), for the kept log.
    let mut timeline: Vec<(u64, String)> = Vec::new();
    for (op, count, at) in &closing.waves {
        let due = draining + at.resolve(interval);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        // Spread over the holders in proportion to what each has left.
        let total: usize = left.iter().sum();
        let mut rest = *count;
        let mut shares: Vec<usize> = left
            .iter()
            .map(|&l| (count * l).checked_div(total).unwrap_or(0).min(l))
            .collect();
        rest -= shares.iter().sum::<usize>();
        for (i, share) in shares.iter_mut().enumerate() {
            let more = rest.min(left[i] - *share);
            *share += more;
            rest -= more;
        }
        let asked: Vec<(usize, usize)> = shares
            .iter()
            .enumerate()
            .filter(|(_, s)| **s > 0)
            .map(|(i, s)| (i, *s))
            .collect();
        for &(i, share) in &asked {
            holders[i].send(&format!("end {} {share}", op.name()));
        }
        truth = (0, 0);
        for &(i, share) in &asked {
            let answer = holders[i].reply();
            let f: Vec<u64> = answer
                .strip_prefix("ended ")
                .unwrap_or_else(|| panic!("holder answered {answer:?}"))
                .split(' ')
                .map(|x| x.parse().expect("a number"))
                .collect();
            assert_eq!(f[0] as usize, share, "{answer}");
            left[i] -= share;
            truth = (truth.0.max(f[1]), truth.1.max(f[2]));
        }
        timeline.push((
            truth.1,
            format!(
                "BENCH wave ended: {} {count} ({:?} first, planned at {at:?})",
                op.name(),
                closing.first
            ),
        ));
    }
    assert!(
        left.iter().all(|&l| l == 0),
        "every connection ended: {left:?}"
    );
    let exit_ns = exited
        .recv_timeout(Duration::from_secs(600))
        .expect("the agent exits after the last close");
    // Still a zombie (exit_clock does not reap it): its stat has the whole process' times.
    let cpu_ms = (cpu_secs(a.pid()) - cpu_from) * 1e3;
    let status = a.wait_timeout(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}: {}",
        a.stderr()
    );
    drop(sim);
    let (before, after) = truth;
    if let Some(dir) = logs {
        timeline.push((exit_ns, "BENCH agent exited".to_owned()));
        keep_log(dir, n, path, seed, &closing, after, &timeline, &a.stderr());
    }
    (
        Detection {
            after_ms: (exit_ns as f64 - after as f64) / 1e6,
            early: exit_ns < before,
            react: closing.react_class(),
            interval_ms: logged_interval(&a.stderr(), Duration::from_millis(200)).as_secs_f64()
                * 1e3,
            cpu_ms,
            counted_ms: logged_cpu(&a.stderr()[log_from..]) * 1e3,
        },
        cpu_row,
    )
}

/// Writes one drain's timeline into the agent's log, in the log's own time format (UTC, microseconds),
/// each line also in ms from the last close: `dir/N-path-seed.log`.
#[allow(clippy::too_many_arguments)]
fn keep_log(
    dir: &Path,
    n: usize,
    path: CensusPath,
    seed: u64,
    closing: &Closing,
    last_close: u64,
    timeline: &[(u64, String)],
    log: &str,
) {
    // CLOCK_MONOTONIC to the wall clock the agent's log lines carry.
    let (wall, mono) = (std::time::SystemTime::now(), mono_ns());
    let at = |ns: u64| {
        let t = if ns <= mono {
            wall - Duration::from_nanos(mono - ns)
        } else {
            wall + Duration::from_nanos(ns - mono)
        };
        humantime::format_rfc3339_micros(t).to_string()
    };
    let close_wall = at(last_close);
    let stamp = |line: &str| line.split(' ').next().unwrap_or("").to_owned();
    let from_close = |t: &str| {
        let parse = |s: &str| humantime::parse_rfc3339(s).ok();
        match (parse(t), parse(&close_wall)) {
            (Some(t), Some(c)) => match t.duration_since(c) {
                Ok(d) => format!("{:+9.1}", d.as_secs_f64() * 1e3),
                Err(e) => format!("{:+9.1}", -e.duration().as_secs_f64() * 1e3),
            },
            _ => " ".repeat(9),
        }
    };
    let mut lines: Vec<String> = log.lines().map(str::to_owned).collect();
    lines.extend(
        timeline
            .iter()
            .map(|(ns, what)| format!("{} {what}", at(*ns))),
    );
    // One timestamp format on every line: sorting by it is sorting by time (stable for equal ones).
    lines.sort_by_key(|l| stamp(l));
    let mut out = format!(
        "# {n} connections, {}, seed {seed}\n# {closing:?}\n# first column: ms from the last close\n",
        path.label()
    );
    for l in lines {
        out.push_str(&format!("{} {l}\n", from_close(&stamp(&l))));
    }
    std::fs::create_dir_all(dir).expect("ELB_BENCH_DETECT_LOGS: a directory");
    let label = match path {
        CensusPath::CountDown => "countdown",
        CensusPath::Polling => "polling",
        CensusPath::Proc => "proc",
    };
    let file = dir.join(format!("{n}-{label}-{seed}.log"));
    std::fs::write(&file, out).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
}

fn p99(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        f64::NAN
    } else {
        v[((v.len() - 1) as f64 * 0.99).round() as usize]
    }
}

/// Benchmark 3: last close -> agent exit over `detect_runs` random close schedules at each size, on
/// each census path, and the agent's CPU while it waits on the largest.
///
/// Each drain is a fresh pile of N connections on its own port of the server side of a [`NetPair`],
/// next to `noise` idle connections on another port, and the agent's `drain`. Once the agent says it is
/// draining, the schedule of that drain's seed ends every connection (see [`Closing`]); the holders
/// report CLOCK_MONOTONIC around their last system call, and a thread blocked in waitid reads the same
/// clock when the agent exits. The same seeds run on every path.
fn detect(knobs: &Knobs, rt: &tokio::runtime::Runtime) {
    assert!(
        NetPair::possible(),
        "the detection benchmark makes network namespaces: run it as root, with ip(8)"
    );
    assert!(
        !(knobs.detect_pin && knobs.detect_cgroup),
        "ELB_BENCH_DETECT_PIN and ELB_BENCH_DETECT_CGROUP: one or the other"
    );
    let place: Option<Box<dyn Placement>> = if knobs.detect_pin {
        Some(Box::new(Pinning::new()))
    } else if knobs.detect_cgroup {
        Some(Box::new(CpuGroups::new()))
    } else {
        None
    };
    let net = Arc::new(NetPair::new());
    let mut octet = 0u8;
    let mut noise = Pile::new_in(&net, 9, "never");
    noise.grow_to(knobs.noise, &mut octet);
    let largest = knobs.detect_sizes.iter().copied().max().unwrap_or(0);
    let first_seed = std::env::var("ELB_BENCH_DETECT_SEED")
        .map_or(1, |s| s.parse().expect("ELB_BENCH_DETECT_SEED: a number"));
    println!(
        "\n### 3. Drain detection: {} random close schedules per size and path (seeds {first_seed}..), \
         +{} noise connections, clients in their own network namespace, agent `drain`, poll_interval 200 ms\n",
        knobs.detect_runs, knobs.noise
    );
    println!(
        "| connections | census | last close -> agent exited: median | p99 | max | min | exits before the last close | drains | by when the other end closes (median, max, drains): at once / 1-50 ms / 50-500 ms / never | longest census interval | agent CPU, first close -> exit: median (of it censuses and rechecks) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut port = 20_000u16;
    let mut cpu_row = None;
    for &n in &knobs.detect_sizes {
        for path in &knobs.detect_paths {
            if *path == CensusPath::Proc
                && n > 10_000
                && std::env::var("ELB_BENCH_DETECT_PROC_LARGE").is_err()
            {
                continue;
            }
            let mut runs: Vec<Detection> = Vec::new();
            for i in 0..knobs.detect_runs {
                port += 1;
                // The source octets of the clients wrap around: a pile's are free again once it is gone.
                if octet > 200 {
                    octet = 1;
                }
                let cpu =
                    (n == largest && i == 0 && *path == CensusPath::CountDown && cpu_row.is_none())
                        .then_some(knobs.cpu);
                let (d, c) = detect_one(
                    &net,
                    rt,
                    port,
                    n,
                    first_seed + i as u64,
                    *path,
                    &mut octet,
                    cpu,
                    knobs.detect_logs.as_deref(),
                    place.as_deref(),
                );
                if let Some(c) = c {
                    cpu_row = Some((n, c));
                }
                runs.push(d);
            }
            let after: Vec<f64> = runs.iter().map(|d| d.after_ms).collect();
            let by = |class: &str| {
                let v: Vec<f64> = runs
                    .iter()
                    .filter(|d| d.react == class)
                    .map(|d| d.after_ms)
                    .collect();
                if v.is_empty() {
                    "-".to_owned()
                } else {
                    format!("{:.1}, max {:.1} ({})", median(&v), max(&v), v.len())
                }
            };
            println!(
                "| {n} | {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {} | {} | {} / {} / {} / {} | {:.0} ms | {:.0} ms ({:.0} ms) |",
                path.label(),
                median(&after),
                p99(&after),
                max(&after),
                min(&after),
                runs.iter().filter(|d| d.early).count(),
                runs.len(),
                by("at once"),
                by("1-50 ms later"),
                by("50-500 ms later"),
                by("never"),
                runs.iter().map(|d| d.interval_ms).fold(0.0, f64::max),
                median(&runs.iter().map(|d| d.cpu_ms).collect::<Vec<_>>()),
                median(&runs.iter().map(|d| d.counted_ms).collect::<Vec<_>>()),
            );
        }
    }
    if let Some((n, (cpu, rss, hwm))) = cpu_row {
        println!(
            "\n| agent while {n} connections wait to drain (count-down) | value |\n|---|---|\n\
             | CPU over {} s | {cpu:.2} % of one core |\n| RSS / peak RSS (VmHWM) | {:.1} / {:.1} MiB |",
            knobs.cpu.as_secs(),
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0
        );
    }
    drop(noise);
    // After the noise' holders, which were in the rest's group: it can go now.
    drop(place);
}

/// The static build a user copies onto a server (README "Install"), built as `.ci/run` builds it: its own
/// target directory, so it does not wait for or disturb the glibc build. `None`, with the reason printed,
/// where it cannot be built (no musl target or C compiler here).
fn build_static_agent() -> Option<PathBuf> {
    let mut cmd = elb_sim::demo::cargo();
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "build",
            "--quiet",
            "--message-format=json-render-diagnostics",
        ])
        .args(["--release", "-p", "elb-drain", "--bin", "elb-drain"])
        .args(["--target", "x86_64-unknown-linux-musl"])
        .args(["--target-dir", "target/static"]);
    let mut cargo = ProcGuard::spawn(cmd);
    let status = cargo
        .wait_timeout(Duration::from_secs(1800))
        .expect("cargo build of the static agent finishes");
    if !status.success() {
        println!(
            "\n(the static build is not measured: `cargo build --target x86_64-unknown-linux-musl` failed: \
             `rustup target add x86_64-unknown-linux-musl`, `apt-get install musl-tools`)\n{}",
            cargo.stderr()
        );
        return None;
    }
    elb_sim::demo::built_executable(&cargo.stdout(), "elb-drain")
}

/// Benchmark 4: idle RSS and wake-ups of `run` (credentials fetched, memberships resolved, API
/// connection warm), `footprint_runs` agents of each build side by side (the glibc build the package
/// holds and the static musl one; each agent idle on its own, so they do not disturb each other), and
/// the binaries' sizes.
async fn footprint(knobs: &Knobs) {
    let mut builds = vec![("glibc", agent_bin().to_owned())];
    builds.extend(build_static_agent().map(|b| ("musl, static", b)));
    let app = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = app.local_addr().unwrap().port();
    let sim = Sim::start(scenario(port).build()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // (build index, agent), interleaved so that neither build always starts first.
    let mut agents = Vec::new();
    for i in 0..knobs.footprint_runs {
        for (b, (name, bin)) in builds.iter().enumerate() {
            let d = dir.path().join(format!("a{i}-{b}"));
            std::fs::create_dir_all(&d).unwrap();
            let cfg = config(&d, &sim, port, "");
            // `agent()`'s command, with this build's binary.
            let template = agent(&cfg, &d, &["run"]);
            let mut cmd = Command::new(bin);
            cmd.env_clear()
                .envs(template.get_envs().filter_map(|(k, v)| Some((k, v?))))
                .args(template.get_args());
            let a = ProcGuard::spawn(cmd);
            assert!(
                a.wait_stderr("ready", Duration::from_secs(30)),
                "{name}: {}",
                a.stderr()
            );
            agents.push((b, a));
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    let before: Vec<_> = agents.iter().map(|(_, a)| switches(a.pid())).collect();
    let rss: Vec<f64> = agents
        .iter()
        .map(|(_, a)| status_field(a.pid(), "VmRSS:") as f64 / 1024.0)
        .collect();
    std::thread::sleep(knobs.idle);
    let mut woke = Vec::new();
    let mut exited_threads = vec![0; builds.len()];
    let mut threads = Vec::new();
    for ((b, a), before) in agents.iter_mut().zip(&before) {
        assert!(a.is_running(), "{}", a.stderr());
        let after = switches(a.pid());
        threads.push(after.len() as f64);
        exited_threads[*b] += before.keys().filter(|t| !after.contains_key(t)).count();
        // A thread that is new counts in full; one that exited counted at least its last wake-up.
        let n: u64 = after
            .iter()
            .map(|(tid, (v, i))| {
                let (v0, i0) = before.get(tid).copied().unwrap_or((0, 0));
                (v - v0) + (i - i0)
            })
            .sum();
        woke.push(n as f64);
    }
    let of = |b: usize, v: &[f64]| -> Vec<f64> {
        agents
            .iter()
            .zip(v)
            .filter(|((ab, _), _)| *ab == b)
            .map(|(_, x)| *x)
            .collect()
    };
    println!(
        "\n### 4. Footprint of `run` (credentials fetched, memberships resolved, API connection warm; {} agents of each build side by side)\n",
        knobs.footprint_runs
    );
    println!("| | build | median | max | each |\n|---|---|---|---|---|");
    for (b, (name, _)) in builds.iter().enumerate() {
        let rss = of(b, &rss);
        println!(
            "| idle RSS | {name} | {:.1} MiB | {:.1} MiB | {} |",
            median(&rss),
            max(&rss),
            each(&rss, 1)
        );
    }
    for (b, (name, _)) in builds.iter().enumerate() {
        let woke = of(b, &woke);
        println!(
            "| context switches while idle for {} s | {name} | {} | {} | {} |",
            knobs.idle.as_secs(),
            median(&woke),
            max(&woke),
            each(&woke, 0)
        );
    }
    for (b, (name, _)) in builds.iter().enumerate() {
        let threads = of(b, &threads);
        println!(
            "| threads | {name} | {} | {} | {} (threads that exited while idle: {}) |",
            median(&threads),
            max(&threads),
            each(&threads, 0),
            exited_threads[b]
        );
    }
    println!();
    for (name, bin) in &builds {
        let size = std::fs::metadata(bin).map_or(0, |m| m.len());
        println!(
            "binary size, {name} (`cargo build --release -p elb-drain{}`: lto, strip, opt-level s, panic abort): {:.2} MiB",
            if bin == agent_bin() {
                ""
            } else {
                " --target x86_64-unknown-linux-musl"
            },
            size as f64 / 1048576.0
        );
    }
}

/// Benchmark 5: zero loss under load, the demo's two acts (short requests + long streams through the
/// LB), each `loss_runs` times, alternating.
async fn loss(knobs: &Knobs) {
    let mut with: Vec<Summary> = Vec::new();
    let mut naive: Vec<Summary> = Vec::new();
    for _ in 0..knobs.loss_runs {
        let bin = agent_bin();
        with.push(
            elb_sim::demo::act(bin, Stop::ElbDrain, false)
                .await
                .unwrap(),
        );
        naive.push(elb_sim::demo::act(bin, Stop::Naive, false).await.unwrap());
    }
    let col = |v: &[Summary], f: &dyn Fn(&Summary) -> Option<f64>| -> Vec<f64> {
        v.iter().filter_map(f).collect()
    };
    let counts = |v: &[Summary], f: &dyn Fn(&Summary) -> u64| -> String {
        each(&v.iter().map(|s| f(s) as f64).collect::<Vec<_>>(), 0)
    };
    println!(
        "\n### 5. Zero loss under load (elb-sim data plane; ~50 req/s + 4 long streams over two members; {} runs of each stop)\n",
        knobs.loss_runs
    );
    println!(
        "| stop of A | served | failed | resets | long streams cut | new connections to A after the stop |\n|---|---|---|---|---|---|"
    );
    for (name, v) in [
        ("with elb-drain", &with),
        ("naive (app killed, no elb-drain)", &naive),
    ] {
        println!(
            "| {name} | {} | {} | {} | {} | {} |",
            counts(v, &|s| s.served),
            counts(v, &|s| s.failed),
            counts(v, &|s| s.resets),
            counts(v, &|s| s.streams_cut),
            counts(v, &|s| s.after_stop[0]),
        );
    }
    let deleted = col(&with, &|s| s.delete_after_ms);
    let drain = col(&with, &|s| s.drain_ms);
    let longest = col(&with, &|s| s.longest_on_a_ms);
    let overhead = col(&with, &|s| s.drain_overhead_ms());
    println!(
        "\n| with elb-drain | median | max | each |\n|---|---|---|---|\n\
         | SIGTERM -> DELETE at the API | {:.2} ms | {:.2} ms | {} |\n\
         | SIGTERM -> agent exit (total drain time) | {:.0} ms | {:.0} ms | {} |\n\
         | SIGTERM -> A's longest stream closed by its client | {:.0} ms | {:.0} ms | {} |\n\
         | total drain time - longest stream (target <= 100 ms) | {:.1} ms | {:.1} ms | {} |",
        median(&deleted),
        max(&deleted),
        each(&deleted, 2),
        median(&drain),
        max(&drain),
        each(&drain, 0),
        median(&longest),
        max(&longest),
        each(&longest, 0),
        median(&overhead),
        max(&overhead),
        each(&overhead, 1),
    );
}

/// What one fleet stop measured.
struct FleetRun {
    all_gone_s: f64,
    attempts_per_member: f64,
    throttled: usize,
    not_exiting_0: usize,
}

/// Benchmark 6: `agents` agents stopped at once against a per-project rate limit of 50 req/s.
async fn fleet(agents: usize, jitter: bool) -> FleetRun {
    let app = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = app.local_addr().unwrap().port();
    let mut sc = Scenario::builder()
        .project(PROJECT)
        .access_key(AK, SK, PROJECT)
        .pool(POOL, |p| p);
    let ids: Vec<String> = (0..agents)
        .map(|i| format!("00000000-0000-4000-8000-{i:012x}"))
        .collect();
    for (i, id) in ids.iter().enumerate() {
        sc = sc.member(POOL, id, &format!("127.0.2.{}", 1 + i % 250), port);
    }
    let sim = Sim::start(sc.build()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut procs = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let d = dir.path().join(format!("a{i}"));
        std::fs::create_dir_all(&d).unwrap();
        let cfg = d.join("elb-drain.toml");
        std::fs::write(
            &cfg,
            format!(
                "[cloud]\nproject_id = \"{PROJECT}\"\nelb_endpoint = \"{api}\"\nretry_deadline = \"60s\"\nretry_jitter = {jitter}\n\
                 [auth]\nmethod = \"aksk\"\nak = \"{AK}\"\n\
                 [[member]]\npool_id = \"{POOL}\"\nmember_id = \"{id}\"\nprotocol_port = {port}\n\
                 [drain]\nexclude_peers = []\nports = [1]\nsettle = \"10ms\"\npoll_interval = \"100ms\"\ntimeout = \"90s\"\n",
                api = sim.api_url()
            ),
        )
        .unwrap();
        let mut cmd = agent(&cfg, &d, &["run"]);
        cmd.env("HUAWEICLOUD_SDK_SK", SK)
            .env("ELB_DRAIN_LOG", "warn,elb_drain=info");
        procs.push(ProcGuard::spawn(cmd));
    }
    for p in &procs {
        assert!(
            p.wait_stderr("ready", Duration::from_secs(60)),
            "{}",
            p.stderr()
        );
    }
    sim.set_rate_limit(PROJECT, 50.0, 50);
    let before = sim.request_log().len();
    let t = Instant::now();
    for p in &procs {
        p.signal(libc::SIGTERM);
    }
    wait_until(Duration::from_secs(120), || {
        !ids.iter().any(|id| sim.member_exists(POOL, id))
    });
    let all_gone_s = t.elapsed().as_secs_f64();
    let mut not_exiting_0 = 0;
    for p in &mut procs {
        if !p
            .wait_timeout(Duration::from_secs(120))
            .is_some_and(|s| s.success())
        {
            not_exiting_0 += 1;
        }
    }
    let log = sim.request_log();
    let deletes = log[before..]
        .iter()
        .filter(|r| r.method == "DELETE")
        .count();
    FleetRun {
        all_gone_s,
        attempts_per_member: deletes as f64 / agents as f64,
        throttled: log[before..].iter().filter(|r| r.status == 429).count(),
        not_exiting_0,
    }
}

fn fleet_table(knobs: &Knobs, rt: &tokio::runtime::Runtime) {
    let (mut jittered, mut lockstep) = (Vec::new(), Vec::new());
    // Alternating, so a drift of the machine during the runs weighs on both variants alike.
    for _ in 0..knobs.fleet_runs {
        jittered.push(rt.block_on(fleet(knobs.fleet_agents, true)));
        lockstep.push(rt.block_on(fleet(knobs.fleet_agents, false)));
    }
    println!(
        "\n### 6. Fleet stop: {} agents, SIGTERM at once, API rate limit 50 req/s (burst 50); medians of {} runs\n",
        knobs.fleet_agents, knobs.fleet_runs
    );
    println!(
        "| retries | all members gone after | each run | DELETE attempts per member | 429 answers | agents not exiting 0 (all runs) |\n|---|---|---|---|---|---|"
    );
    for (name, runs) in [
        ("exponential backoff with full jitter", &jittered),
        ("exponential backoff, no jitter", &lockstep),
    ] {
        let gone: Vec<f64> = runs.iter().map(|r| r.all_gone_s).collect();
        let per: Vec<f64> = runs.iter().map(|r| r.attempts_per_member).collect();
        let thr: Vec<f64> = runs.iter().map(|r| r.throttled as f64).collect();
        let bad: usize = runs.iter().map(|r| r.not_exiting_0).sum();
        println!(
            "| {name} | {:.2} s | {} s | {:.2} | {:.0} | {bad} |",
            median(&gone),
            each(&gone, 2),
            median(&per),
            median(&thr)
        );
    }
}

fn main() {
    if let Ok(mode) = std::env::var("ELB_BENCH_HOLDER") {
        return holder(&mode);
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |name: &str| args.is_empty() || args.iter().any(|a| a == name || a == "all");
    let knobs = Knobs::from_env();
    let agent = AGENT.get_or_init(build_agent);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "elb-drain benchmarks ({} cores; loopback only)\n\nagent: {}\n{knobs:?}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        agent.display()
    );
    if want("footprint") {
        rt.block_on(footprint(&knobs));
    }
    if want("reaction") {
        rt.block_on(reaction());
    }
    if want("loss") {
        rt.block_on(loss(&knobs));
    }
    if want("census") {
        let mut octet = 0u8;
        // Held until the census is done; its holders are killed by PID when it is dropped.
        let mut noise = Pile::new();
        noise.grow_to(knobs.noise, &mut octet);
        let mut pile = Pile::new();
        census(&mut pile, &knobs, &mut octet);
        drop(noise);
    }
    if want("detect") {
        detect(&knobs, &rt);
    }
    if want("fleet") {
        fleet_table(&knobs, &rt);
    }
    let _ = std::io::stdout().flush();
}
