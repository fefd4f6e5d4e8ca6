//! Benchmarks of elb-drain, each side by side with its peer in the same run, on loopback only.
//!
//! ```text
//! cargo bench --bench elb_drain -- all              # everything (a few minutes, ~250k sockets at peak)
//! cargo bench --bench elb_drain -- reaction census detect footprint loss fleet
//! ```
//!
//! Prints Markdown tables (the numbers in BENCHMARKS.md come from here). Every loop is bounded in count
//! and time; every process started is killed by PID when done.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use elb_drain::census::{Census, CensusSpec, NetlinkCensus, ProcCensus};
use elb_sim::{Scenario, Sim};

const PROJECT: &str = "99a3fff0d03c428eac3678da6a7d0f24";
const POOL: &str = "36ce7086-a496-4666-9064-5ba0e6840c75";
const MEMBER: &str = "1923923e-fe8a-484f-bdbc-e11559b1f48f";
const AK: &str = "AKBENCH0000000000000";
const SK: &str = "bench-secret-key";

fn agent_bin() -> &'static str {
    env!("CARGO_BIN_EXE_elb-drain")
}

fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills our timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

fn p90(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        f64::NAN
    } else {
        v[(v.len() * 9 / 10).min(v.len() - 1)]
    }
}

/// A child process killed by PID when dropped.
struct Proc {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Proc {
    fn spawn(mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn");
        let stderr = Arc::new(Mutex::new(String::new()));
        let into = stderr.clone();
        let pipe = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { return };
                let mut s = into.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Proc { child, stderr }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn wait_for(&self, needle: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.stderr.lock().unwrap().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.pid(), sig) };
    }

    fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.code();
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        None
    }

    /// utime + stime in clock ticks, from /proc/PID/stat.
    fn cpu_ticks(&self) -> u64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
            + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
    }

    fn status_field(&self, key: &str) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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

/// 1. SIGTERM -> DELETE at elb-sim: elb-drain `run` vs a one-shot script with the official Python SDK.
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
        let mut a = Proc::spawn(agent(&cfg, dir.path(), &["run"]));
        assert!(
            a.wait_for("ready", Duration::from_secs(10)),
            "{}",
            a.stderr.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(100)); // let it go idle, as a real daemon would be
        let before = sim.request_log().len();
        let t = mono_ns();
        a.signal(libc::SIGTERM);
        a.wait_exit(Duration::from_secs(10));
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
            let status = Command::new(&python)
                .args(["-c", &script])
                .stderr(Stdio::null())
                .status()
                .unwrap();
            if status.success()
                && let Some(d) = last_delete_ns(&sim, before)
            {
                sdk.push((d - t) as f64 / 1e6);
            }
        }
    }
    let (m, p) = (median(&mut ours.clone()), p90(&mut ours));
    let s = median(&mut sdk);
    println!("\n### 1. Reaction: stop signal -> DELETE arriving at elb-sim\n");
    println!("| | median | p90 | runs |\n|---|---|---|---|");
    println!(
        "| elb-drain `run` (SIGTERM) | {m:.2} ms | {p:.2} ms | {} |",
        ours.len()
    );
    println!(
        "| Python SDK one-shot (`huaweicloudsdkelb`, process start) | {s:.1} ms | {:.1} ms | {} |",
        p90(&mut sdk),
        sdk.len()
    );
    println!("\nratio: elb-drain is {:.0}x faster", s / m);
}

/// Connections held open by helper processes (one process may hold only ~20k descriptors here): server
/// holders share the port with SO_REUSEPORT and accept; client holders connect from 127.x.y.z sources so
/// the count is not limited by one source address's ephemeral ports. Dropping the pile kills them all.
struct Pile {
    addr: SocketAddr,
    servers: Vec<Holder>,
    clients: Vec<Holder>,
    total: usize,
}

struct Holder(Child);

impl Holder {
    fn spawn(env: &[(&str, String)]) -> Holder {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("holder");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "holder failed to start");
        Holder(child)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const SERVER_CAP: usize = 18_000;
const PER_SERVER: usize = 12_000;
const PER_CLIENT: usize = 15_000;

impl Pile {
    fn new(holder_base: u8) -> Pile {
        // Find a free port, then let the first server holder take it.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut pile = Pile {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            servers: Vec::new(),
            clients: Vec::new(),
            total: 0,
        };
        pile.add_server();
        pile.total = 0;
        let _ = holder_base;
        pile
    }

    fn add_server(&mut self) {
        self.servers.push(Holder::spawn(&[
            ("ELB_BENCH_HOLDER", "server".into()),
            ("ELB_BENCH_PORT", self.addr.port().to_string()),
        ]));
    }

    fn grow_to(&mut self, n: usize, octet: &mut u8) {
        while self.servers.len() * PER_SERVER < n {
            self.add_server();
        }
        while self.total < n {
            let count = PER_CLIENT.min(n - self.total);
            *octet += 1;
            self.clients.push(Holder::spawn(&[
                ("ELB_BENCH_HOLDER", "client".into()),
                ("ELB_BENCH_CONNECT", self.addr.to_string()),
                ("ELB_BENCH_COUNT", count.to_string()),
                ("ELB_BENCH_SRC", octet.to_string()),
            ]));
            self.total += count;
        }
    }

    fn close_all(&mut self) {
        // SIGKILL every holder at once: the kernel closes all their sockets.
        for h in self.clients.iter().chain(&self.servers) {
            // SAFETY: kill(2) on our own children.
            unsafe { libc::kill(h.0.id() as i32, libc::SIGKILL) };
        }
        self.clients.clear();
        self.servers.clear();
        self.total = 0;
    }
}

/// The helper-process side of [`Pile`]: hold sockets until the parent closes our stdin.
fn holder(mode: &str) {
    let env = |k: &str| std::env::var(k).unwrap();
    let mut held: Vec<std::os::fd::OwnedFd> = Vec::new();
    match mode {
        "server" => {
            use std::os::fd::FromRawFd;
            let port: u16 = env("ELB_BENCH_PORT").parse().unwrap();
            // SAFETY: a listening socket with SO_REUSEPORT, built by hand (std has no reuseport).
            let fd = unsafe {
                let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
                let one: libc::c_int = 1;
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_REUSEADDR,
                    (&one as *const libc::c_int).cast(),
                    4,
                );
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_REUSEPORT,
                    (&one as *const libc::c_int).cast(),
                    4,
                );
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as u16,
                    sin_port: port.to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be(),
                    },
                    sin_zero: [0; 8],
                };
                assert_eq!(
                    libc::bind(fd, (&sin as *const libc::sockaddr_in).cast(), 16),
                    0,
                    "bind"
                );
                assert_eq!(libc::listen(fd, 4096), 0, "listen");
                fd
            };
            println!("ready");
            let _ = std::io::stdout().flush();
            let listener = unsafe { TcpListener::from_raw_fd(fd) };
            std::thread::spawn(move || {
                let mut sink = Vec::new();
                for c in listener.incoming().take(SERVER_CAP) {
                    match c {
                        Ok(c) => sink.push(c),
                        Err(_) => break,
                    }
                }
                std::mem::forget(sink);
                std::thread::park();
            });
        }
        _ => {
            let to: SocketAddr = env("ELB_BENCH_CONNECT").parse().unwrap();
            let count: usize = env("ELB_BENCH_COUNT").parse().unwrap();
            let second: u8 = env("ELB_BENCH_SRC").parse().unwrap();
            for i in 0..count {
                let src = Ipv4Addr::new(127, second, (i / 250) as u8, 1 + (i % 250) as u8);
                held.push(socket2_connect(src, to).into());
            }
            println!("ready");
            let _ = std::io::stdout().flush();
        }
    }
    // Hold until the parent goes away.
    let mut buf = String::new();
    let _ = std::io::stdin().read_line(&mut buf);
    drop(held);
}

/// connect(2) from a chosen source address (bind with port 0 first).
fn socket2_connect(src: Ipv4Addr, to: SocketAddr) -> TcpStream {
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
    let mut v: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    median(&mut v)
}

fn ss_ms(port: u16) -> f64 {
    time_ms(
        || {
            Command::new("ss")
                .args([
                    "-Htn",
                    "state",
                    "established",
                    &format!("( sport = :{port} )"),
                ])
                .stdout(Stdio::null())
                .status()
                .unwrap();
        },
        5,
    )
}

/// 2. One census at 1k / 10k / 100k sockets on the port (plus 20k noise): ours vs ss vs /proc.
fn census(target: &mut Pile, sizes: &[usize], octet: &mut u8) {
    let mut noise = Pile::new(0);
    noise.grow_to(20_000, octet);
    println!(
        "\n### 2. Census cost (one count; 20k noise connections on another port; medians of 5)\n"
    );
    println!(
        "| sockets on the port | elb-drain netlink | `ss -Htn state established '( sport = :P )'` | /proc fallback | netlink / ss |"
    );
    println!("|---|---|---|---|---|");
    let port = target.addr.port();
    let spec = CensusSpec {
        ports: vec![port],
        exclude_peers: vec![],
    };
    for &n in sizes {
        target.grow_to(n, octet);
        let settle = Instant::now();
        let mut probe = NetlinkCensus::new(spec.clone()).unwrap();
        while probe.count().unwrap().established != n && settle.elapsed() < Duration::from_secs(60)
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut nl = NetlinkCensus::new(spec.clone()).unwrap();
        assert_eq!(nl.count().unwrap().established, n, "netlink counts exactly");
        let nl_ms = time_ms(|| assert_eq!(nl.count().unwrap().established, n), 5);
        let mut pc = ProcCensus::new(spec.clone());
        assert_eq!(pc.count().unwrap().established, n, "/proc counts exactly");
        let pc_ms = time_ms(|| assert_eq!(pc.count().unwrap().established, n), 3);
        let ss = ss_ms(port);
        println!(
            "| {n} | {nl_ms:.1} ms | {ss:.1} ms | {pc_ms:.1} ms | {:.2} |",
            nl_ms / ss
        );
    }
    std::mem::forget(noise); // kept open for the detection benchmark; freed at exit
}

/// 3. Last close -> agent exit, and the agent's CPU while it waits on `n` connections.
fn detect(target: &mut Pile, wait: Duration) {
    let n = target.total;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sim = rt
        .block_on(Sim::start(scenario(target.addr.port()).build()))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &sim,
        target.addr.port(),
        "settle = \"100ms\"\npoll_interval = \"200ms\"\ntimeout = \"10m\"",
    );
    let mut a = Proc::spawn(agent(&cfg, dir.path(), &["drain"]));
    assert!(
        a.wait_for("drain: draining", Duration::from_secs(60)),
        "{}",
        a.stderr.lock().unwrap()
    );
    let t0 = (Instant::now(), a.cpu_ticks());
    std::thread::sleep(wait);
    let ticks = a.cpu_ticks() - t0.1;
    let hz = 100.0; // USER_HZ
    let cpu = ticks as f64 / hz / t0.0.elapsed().as_secs_f64() * 100.0;
    let rss = a.status_field("VmRSS:");
    let closed = Instant::now();
    target.close_all();
    // The kernel closes the killed holders' sockets asynchronously: the last close is when the census
    // of the port first reads zero.
    let spec = CensusSpec {
        ports: vec![target.addr.port()],
        exclude_peers: vec![],
    };
    let mut census = NetlinkCensus::new(spec).unwrap();
    while census.count().unwrap().established > 0 && closed.elapsed() < Duration::from_secs(60) {}
    let close_ms = closed.elapsed().as_secs_f64() * 1e3;
    let last_close = Instant::now();
    let code = a.wait_exit(Duration::from_secs(120));
    let exit_ms = closed.elapsed().as_secs_f64() * 1e3;
    let after_last_ms = last_close.elapsed().as_secs_f64() * 1e3;
    let log = a.stderr.lock().unwrap().clone();
    let countdown = !log.contains("destroy notifications unavailable");
    println!(
        "\n### 3. Drain detection with {n} connections (+20k noise), agent `drain`, poll_interval 200 ms\n"
    );
    println!("| | value |\n|---|---|");
    println!(
        "| CPU of the agent while waiting ({:.0} s) | {cpu:.2} % of one core |",
        wait.as_secs_f64()
    );
    println!(
        "| agent RSS while draining | {:.1} MiB |",
        rss as f64 / 1024.0
    );
    println!(
        "| killing the holders until the port's census reads 0 (the last close) | {close_ms:.0} ms |"
    );
    println!(
        "| last close -> agent exited | {after_last_ms:.0} ms (upper bound: includes one census) |"
    );
    println!("| start of the close -> agent exited (code {code:?}) | {exit_ms:.0} ms |");
    println!(
        "| count-down on socket-destroy events | {} |",
        if countdown { "yes" } else { "no (polling)" }
    );
}

/// 4. Idle RSS, wakeups while idle, binary size.
async fn footprint() {
    let app = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = app.local_addr().unwrap().port();
    let sim = Sim::start(scenario(port).build()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &sim, port, "");
    let a = Proc::spawn(agent(&cfg, dir.path(), &["run"]));
    assert!(a.wait_for("ready", Duration::from_secs(10)));
    std::thread::sleep(Duration::from_secs(1));
    let rss = a.status_field("VmRSS:");
    let (v0, n0) = (
        a.status_field("voluntary_ctxt_switches:"),
        a.status_field("nonvoluntary_ctxt_switches:"),
    );
    let idle = Duration::from_secs(10);
    std::thread::sleep(idle);
    let (v1, n1) = (
        a.status_field("voluntary_ctxt_switches:"),
        a.status_field("nonvoluntary_ctxt_switches:"),
    );
    let threads = a.status_field("Threads:");
    let size = std::fs::metadata(agent_bin()).map(|m| m.len()).unwrap_or(0);
    println!(
        "\n### 4. Footprint of `run` (credentials fetched, memberships resolved, API connection warm)\n"
    );
    println!("| | value |\n|---|---|");
    println!("| idle RSS | {:.1} MiB |", rss as f64 / 1024.0);
    println!(
        "| context switches while idle for {} s | {} voluntary, {} involuntary |",
        idle.as_secs(),
        v1 - v0,
        n1 - n0
    );
    println!("| threads | {threads} |");
    println!(
        "| binary size (release profile: lto, strip, opt-level s, panic abort) | {:.2} MiB |",
        size as f64 / 1048576.0
    );
}

/// 5. Zero loss under load: the demo's two acts (short requests + long streams through the LB).
async fn loss() {
    let with = elb_sim::demo::act(Path::new(agent_bin()), elb_sim::demo::Stop::ElbDrain, true)
        .await
        .unwrap();
    let naive = elb_sim::demo::act(Path::new(agent_bin()), elb_sim::demo::Stop::Naive, true)
        .await
        .unwrap();
    println!(
        "\n### 5. Zero loss under load (elb-sim data plane; ~50 req/s + 4 long streams over two members)\n"
    );
    println!(
        "| | served | failed | long streams cut | requests to A after its DELETE |\n|---|---|---|---|---|"
    );
    println!(
        "| stop with elb-drain | {} | {} | {} | {} |",
        with.served, with.failed, with.streams_cut, with.after_stop[0]
    );
    println!(
        "| naive stop (app killed) | {} | {} | {} | - |",
        naive.served, naive.failed, naive.streams_cut
    );
}

/// 6. 200 agents stopped at once against a per-project rate limit of 50 req/s.
async fn fleet(agents: usize, jitter: bool) -> (f64, f64, usize, usize) {
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
        procs.push(Proc::spawn(cmd));
    }
    for p in &procs {
        assert!(
            p.wait_for("ready", Duration::from_secs(60)),
            "{}",
            p.stderr.lock().unwrap()
        );
    }
    sim.set_rate_limit(PROJECT, 50.0, 50);
    let before = sim.request_log().len();
    let t = Instant::now();
    for p in &procs {
        p.signal(libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while ids.iter().any(|id| sim.member_exists(POOL, id)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let all_gone = t.elapsed().as_secs_f64();
    let mut bad = 0;
    for p in &mut procs {
        if p.wait_exit(Duration::from_secs(120)) != Some(0) {
            bad += 1;
        }
    }
    let deletes = sim.request_log()[before..]
        .iter()
        .filter(|r| r.method == "DELETE")
        .count();
    let throttled = sim.request_log()[before..]
        .iter()
        .filter(|r| r.status == 429)
        .count();
    (all_gone, deletes as f64 / agents as f64, bad, throttled)
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "elb-drain benchmarks ({} cores; loopback only)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if want("footprint") {
        rt.block_on(footprint());
    }
    if want("reaction") {
        rt.block_on(reaction());
    }
    if want("loss") {
        rt.block_on(loss());
    }
    if want("census") || want("detect") {
        let max = 100_000;
        let mut octet = 0u8;
        let mut target = Pile::new(0);
        let sizes = [1_000, 10_000, 100_000];
        if want("census") {
            census(&mut target, &sizes, &mut octet);
        } else {
            target.grow_to(max, &mut octet);
        }
        if want("detect") {
            detect(&mut target, Duration::from_secs(30));
        }
    }
    if want("fleet") {
        let (t1, per1, bad1, thr1) = rt.block_on(fleet(200, true));
        let (t2, per2, bad2, thr2) = rt.block_on(fleet(200, false));
        println!(
            "\n### 6. Fleet stop: 200 agents, SIGTERM at once, API rate limit 50 req/s (burst 50)\n"
        );
        println!(
            "| retries | all members gone after | DELETE attempts per member | 429 answers | agents not exiting 0 |\n|---|---|---|---|---|"
        );
        println!(
            "| exponential backoff with full jitter | {t1:.2} s | {per1:.2} | {thr1} | {bad1} |"
        );
        println!("| exponential backoff, no jitter | {t2:.2} s | {per2:.2} | {thr2} | {bad2} |");
    }
    let _ = std::io::stdout().flush();
}
