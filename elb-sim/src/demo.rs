//! `elb-sim demo`: the whole story in under a minute, on loopback.
//!
//! elb-sim with a load balancer and two backend servers (small echo servers that say who served a
//! request), one `elb-drain run` per server, client traffic through the load balancer (short requests
//! and a few long streams), then server A is stopped the way systemd would stop it: SIGTERM to its
//! agent. The timeline shows the DELETE, new connections moving to B, the long streams draining, the
//! agent's exit, and the totals. Then the same with a naive stop (the application killed without
//! elb-drain), so the difference is visible.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::{Scenario, Sim};

const PROJECT: &str = "99a3fff0d03c428eac3678da6a7d0f24";
const POOL: &str = "36ce7086-a496-4666-9064-5ba0e6840c75";
const LISTENER: &str = "0b5c5a2e-8f37-4a57-8b7e-4c2f1b0d9e11";
const MEMBERS: [(&str, &str, &str); 2] = [
    ("A", "127.0.0.2", "1923923e-fe8a-484f-bdbc-e11559b1f48f"),
    ("B", "127.0.0.3", "5d0b7f53-2c3e-4d61-9a8e-0d9d4b1c2a77"),
];
const LONG_STREAMS: usize = 4;

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

#[derive(Default)]
struct Totals {
    served: [AtomicU64; 2],
    failed: AtomicU64,
    streams_cut: AtomicU64,
    /// Short requests that reached A after its DELETE was answered.
    late_on_a: AtomicU64,
}

/// One request-response over a fresh connection; which server answered.
async fn request(lb: std::net::SocketAddr, n: u64) -> Option<usize> {
    let mut c = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(lb))
        .await
        .ok()?
        .ok()?;
    c.write_all(format!("req {n}\n").as_bytes()).await.ok()?;
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(2),
        BufReader::new(&mut c).read_line(&mut line),
    )
    .await
    .ok()?
    .ok()?;
    match line.split(' ').next() {
        Some("A") => Some(0),
        Some("B") => Some(1),
        _ => None,
    }
}

/// A long stream: a message every 100 ms until `until`; false if it was cut before.
async fn stream(lb: std::net::SocketAddr, until: Instant) -> (bool, Option<usize>) {
    let Ok(c) = TcpStream::connect(lb).await else {
        return (false, None);
    };
    let (r, mut w) = c.into_split();
    let mut lines = BufReader::new(r).lines();
    let mut server = None;
    while Instant::now() < until {
        if w.write_all(b"tick\n").await.is_err() {
            return (false, server);
        }
        match tokio::time::timeout(Duration::from_secs(2), lines.next_line()).await {
            Ok(Ok(Some(l))) => {
                server = server.or(if l.starts_with('A') { Some(0) } else { Some(1) })
            }
            _ => return (false, server),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (true, server)
}

fn agent_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let beside = exe.with_file_name("elb-drain");
    if beside.exists() {
        return Ok(beside);
    }
    let release = exe.parent().is_some_and(|d| d.ends_with("release"));
    println!(
        "building elb-drain (cargo build{} --bin elb-drain) ...",
        if release { " --release" } else { "" }
    );
    let mut cmd =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["build", "--quiet", "--bin", "elb-drain"]);
    if release {
        cmd.arg("--release");
    }
    let ok = cmd
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?
        .success();
    if ok && beside.exists() {
        Ok(beside)
    } else {
        Err("could not build elb-drain".into())
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

struct Agent(tokio::process::Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

fn ms(since: Instant) -> u128 {
    since.elapsed().as_millis()
}

/// What one act of the demo counted.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub served: u64,
    pub failed: u64,
    pub streams_cut: u64,
    /// Short requests that reached A after its DELETE was answered (must be 0).
    pub late_on_a: u64,
    /// Milliseconds from SIGTERM to the DELETE arriving at the API.
    pub delete_after_ms: Option<f64>,
    /// Server A's agent: exit code.
    pub agent_exit: Option<i32>,
}

/// Runs one act of the demo; `with_agent` false is the naive stop.
pub async fn act(agent_bin: &Path, with_agent: bool) -> Result<Summary, String> {
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
    let dir = tempfile_dir()?;
    let mut agents = Vec::new();
    if with_agent {
        for (i, (name, _, id)) in MEMBERS.iter().enumerate() {
            let config = write_config(&dir, &sim, name, id, ports[i]).map_err(e)?;
            let child = tokio::process::Command::new(agent_bin)
                .arg("--config")
                .arg(&config)
                .arg("run")
                .env("ELB_DRAIN_LOG", "warn")
                // The demo keeps everything in its own temporary directory: state file, status socket.
                .env("STATE_DIRECTORY", dir.join(name))
                .env("RUNTIME_DIRECTORY", dir.join(name))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .map_err(e)?;
            agents.push(Agent(child));
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
                return Err("agents did not get ready".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Long streams first (so round robin puts half of them on A), opened before the stop, ending 1.5 to 4.5 s after it.
    let t0 = Instant::now() + Duration::from_millis(1500);
    let mut streams = Vec::new();
    for k in 0..LONG_STREAMS {
        let until = t0 + Duration::from_millis(1500 + 1000 * k as u64);
        streams.push(tokio::spawn(stream(lb, until)));
    }
    let totals = Arc::new(Totals::default());
    let stop = CancellationToken::new();
    // Short requests, about 50 per second, until the act ends.
    let short = {
        let (totals, stop) = (totals.clone(), stop.clone());
        let sim_deleted = Arc::new(AtomicU64::new(0));
        let flag = sim_deleted.clone();
        let handle = tokio::spawn(async move {
            let mut n = 0;
            while !stop.is_cancelled() {
                n += 1;
                match request(lb, n).await {
                    Some(i) => {
                        totals.served[i].fetch_add(1, Ordering::Relaxed);
                        if i == 0 && flag.load(Ordering::Relaxed) == 1 {
                            totals.late_on_a.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    None => {
                        totals.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        (handle, sim_deleted)
    };
    tokio::time::sleep_until(t0.into()).await;
    let on_a = sim.live_connections(MEMBERS[0].2);
    let title = if with_agent {
        "with elb-drain"
    } else {
        "naive stop (no elb-drain)"
    };
    println!(
        "\n== {title}: {} long streams open, {on_a} of them on server A",
        LONG_STREAMS
    );
    let start = Instant::now();
    let mono_start = crate::state::monotonic_ns();
    if with_agent {
        let pid = agents[0].0.id().ok_or("agent gone")? as i32;
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        println!("t=0 ms      SIGTERM to server A's elb-drain");
    } else {
        kills[0].cancel();
        println!("t=0 ms      server A's application killed (no elb-drain)");
    }
    let mut deleted_at = None;
    let mut last_live = usize::MAX;
    let mut agent_exit = None;
    let end = start + Duration::from_secs(8);
    while Instant::now() < end {
        if deleted_at.is_none()
            && let Some(d) = sim
                .request_log()
                .iter()
                .find(|r| r.method == "DELETE" && r.status == 204)
        {
            let after = d.mono_ns.saturating_sub(mono_start) as f64 / 1e6;
            deleted_at = Some(after);
            short.1.store(1, Ordering::Relaxed);
            println!(
                "t={after:<8.2}ms DELETE of member A arrived at the API: no new connections to A from here on"
            );
        }
        let live = sim.live_connections(MEMBERS[0].2);
        if live != last_live {
            println!("t={:<8} ms connections still open on A: {live}", ms(start));
            last_live = live;
        }
        if with_agent
            && agent_exit.is_none()
            && let Ok(Some(status)) = agents[0].0.try_wait()
        {
            agent_exit = Some((ms(start), status.code()));
            println!(
                "t={:<8} ms server A's elb-drain exited with {:?}: A may stop now",
                ms(start),
                status.code()
            );
            kills[0].cancel();
        }
        if streams.iter().all(|s| s.is_finished()) && (!with_agent || agent_exit.is_some()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    let _ = short.0.await;
    for s in streams {
        if let Ok((complete, _)) = s.await
            && !complete
        {
            totals.streams_cut.fetch_add(1, Ordering::Relaxed);
        }
    }
    println!(
        "totals: requests served {} (A {}, B {}), failed {}, long streams cut {}, requests to A after its DELETE {}",
        totals.served[0].load(Ordering::Relaxed) + totals.served[1].load(Ordering::Relaxed),
        totals.served[0].load(Ordering::Relaxed),
        totals.served[1].load(Ordering::Relaxed),
        totals.failed.load(Ordering::Relaxed),
        totals.streams_cut.load(Ordering::Relaxed),
        totals.late_on_a.load(Ordering::Relaxed),
    );
    for k in &kills {
        k.cancel();
    }
    drop(agents);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Summary {
        served: totals.served[0].load(Ordering::Relaxed) + totals.served[1].load(Ordering::Relaxed),
        failed: totals.failed.load(Ordering::Relaxed),
        streams_cut: totals.streams_cut.load(Ordering::Relaxed),
        late_on_a: totals.late_on_a.load(Ordering::Relaxed),
        delete_after_ms: deleted_at,
        agent_exit: agent_exit.and_then(|(_, code)| code),
    })
}

fn tempfile_dir() -> Result<PathBuf, String> {
    let dir = std::env::temp_dir().join(format!(
        "elb-sim-demo-{}-{}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    Ok(dir)
}

/// The demo: both acts. Returns an error line for the binary to print.
pub async fn run() -> Result<(), String> {
    let agent = agent_binary()?;
    println!(
        "elb-sim demo: a load balancer, servers A and B behind it, each with its own elb-drain (all on loopback)"
    );
    act(&agent, true).await?;
    act(&agent, false).await?;
    Ok(())
}
