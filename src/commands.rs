//! One function per command of the CLI. Each returns the documented exit code, having printed what the
//! person or script asked for (stdout) and why it failed (stderr, one line).

use tokio::time::Instant;

use crate::agent::{Agent, LocalAddresses, Membership, PrepareError};
use crate::census::{self, Backend, CensusSpec};
use crate::cli::{Args, load_config};
use crate::config::Config;
use crate::drain::{Fanout, Sink};
use crate::exit::Exit;
use crate::hook::{Hanging, ProgressClock};
use crate::logging::eprintln;
use crate::notify::Notifier;
use crate::report::LogSink;
use crate::signals::{self, Signals};

fn install_signals() -> Result<Signals, Exit> {
    Signals::install().map_err(|e| {
        eprintln!("elb-drain: cannot install signal handlers: {e}");
        Exit::Failure
    })
}

fn prepare_failed(e: PrepareError) -> Exit {
    eprintln!("elb-drain: {e}");
    match e {
        PrepareError::Config(_) => Exit::Config,
        PrepareError::Unavailable(_) => Exit::Unavailable,
    }
}

/// `connections`: the census, now.
pub fn connections(args: &Args, ports: &[u16], json: bool) -> Result<Exit, Exit> {
    let spec = if ports.is_empty() {
        let cfg = load_config(args)?;
        if cfg.drain_ports().is_empty() {
            eprintln!(
                "elb-drain: config: drain.ports: no ports configured and no [[member]] protocol_port; use --ports"
            );
            return Err(Exit::Config);
        }
        CensusSpec {
            ports: cfg.drain_ports(),
            exclude_peers: cfg.drain.exclude_peers.clone(),
        }
    } else {
        CensusSpec {
            ports: ports.to_vec(),
            exclude_peers: Vec::new(),
        }
    };
    let mut census = census::open(&spec);
    let count = census.count().map_err(|e| {
        eprintln!("elb-drain: {e}");
        Exit::Failure
    })?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "ports": spec.ports,
                "established": count.established,
                "backend": format!("{:?}", census.backend()).to_lowercase(),
            })
        );
    } else {
        let ports: Vec<String> = spec.ports.iter().map(u16::to_string).collect();
        println!(
            "{} established connections on port {}",
            count.established,
            ports.join(",")
        );
    }
    Ok(Exit::Ok)
}

/// `run`: get ready, wait for the stop, drain.
///
/// A stop that arrives while starting (resolving credentials and memberships) is not lost and does
/// not kill the process: start-up finishes (it is bounded by its own retry deadlines), and the drain
/// follows at once, without registering on start and without reporting ready, so a server stopped
/// moments after boot still leaves its pools. A stop while registering on start cuts the waits of the
/// registration short and drains what was registered. A second SIGINT meanwhile exits 130 at once.
pub async fn run(args: &Args) -> Result<Exit, Exit> {
    // Signals first: from here on a SIGTERM starts a drain instead of killing us mid-start-up.
    let mut signals = install_signals()?;
    let cfg = load_config(args)?;
    let notifier: &'static Notifier = Box::leak(Box::new(Notifier::from_env(
        cfg.drain.stall_timeout,
        cfg.drain.poll_interval,
    )));
    notifier.status("starting: resolving memberships");
    let prepare = Agent::prepare(cfg);
    tokio::pin!(prepare);
    let (agent, mut early_stop) = tokio::select! {
        agent = &mut prepare => (agent.map_err(prepare_failed)?, None),
        sig = signals.stop() => {
            let started = Instant::now();
            tracing::warn!(
                signal = signals::name(sig),
                "stop signal while starting: finishing start-up, then deregistering and draining"
            );
            notifier.status("stopping: resolving memberships to deregister");
            let agent = tokio::select! {
                agent = &mut prepare => agent.map_err(prepare_failed)?,
                () = signals.abort() => {
                    eprintln!("elb-drain: abandoned while starting; nothing was deregistered");
                    return Err(Exit::Interrupted);
                }
            };
            (agent, Some(started))
        }
    };
    if agent.config.register.on_start && early_stop.is_none() {
        notifier.status("starting: registering");
        // A stop here cuts the waits short (for the port, for ONLINE: up to healthy_timeout), never a
        // create in flight; what was registered is then drained at once.
        let (done, stopped) = crate::register::register_unless(&agent, signals.stop())
            .await
            .map_err(register_failed)?;
        tracing::info!(registered = done.len(), "registered on start");
        agent.rediscover().await.map_err(prepare_failed)?;
        if let Some(sig) = stopped {
            tracing::warn!(
                signal = signals::name(sig),
                "stop signal while registering: deregistering and draining what is registered"
            );
            early_stop = Some(Instant::now());
        }
    }
    agent.snapshot_state().await;
    let board =
        crate::status::Board::new(serde_json::to_value(agent.memberships()).unwrap_or_default());
    let (started, hook) = match early_stop {
        Some(started) => (started, None),
        None => {
            let memberships: Vec<String> = agent
                .memberships()
                .iter()
                .map(|m| format!("{}/{}", m.pool_id, m.member_id))
                .collect();
            tracing::info!(memberships = ?memberships, credential = agent.credential.describe().kind, "ready: waiting for SIGTERM or SIGINT");
            notifier.ready(&format!(
                "serving; {} memberships",
                agent.memberships().len()
            ));
            notifier.spawn_watchdog();
            board.set("phase", "serving".into());
            match board.serve(&agent.config.status_socket) {
                Ok(()) => {
                    tracing::info!(socket = %agent.config.status_socket.display(), "status socket ready")
                }
                Err(e) => {
                    tracing::warn!(socket = %agent.config.status_socket.display(), error = %e, "no status socket")
                }
            }
            let rediscovery = agent.spawn_rediscovery(agent.config.cloud.discovery_interval);
            let hook = tokio::select! {
                sig = signals.stop() => {
                    tracing::info!(signal = signals::name(sig), "stop signal received");
                    None
                }
                hook = wait_hook(&agent) => Some(hook),
            };
            if let Some(task) = rediscovery {
                task.abort();
            }
            (Instant::now(), hook)
        }
    };
    notifier.stopping(agent.memberships().len());
    board.set("phase", "deregistering".into());
    Ok(drain_with_abort(
        &agent,
        started,
        &mut signals,
        hook,
        Outputs {
            notifier,
            extra: vec![Box::new(board.clone())],
            board: Some(board),
        },
    )
    .await)
}

/// `exec -- CMD...`: CMD under supervision. It is started first, so the application comes up while the
/// agent resolves its memberships.
pub async fn exec(
    args: &Args,
    command: &[String],
    stop_signal: i32,
    grace: std::time::Duration,
) -> Result<Exit, Exit> {
    use crate::supervise::{FORWARDED, Supervised, exit_code};
    // SIGHUP is the application's (its usual "reload"), not a stop: it is forwarded with the others.
    let (mut signals, mut forwarded) = Signals::install_supervising(FORWARDED).map_err(|e| {
        eprintln!("elb-drain: cannot install signal handlers: {e}");
        Exit::Failure
    })?;
    let cfg = load_config(args)?;
    let mut child = Supervised::spawn(command).map_err(|e| {
        eprintln!("elb-drain: exec: {e}");
        Exit::Failure
    })?;
    tracing::info!(pid = child.pid(), command = ?command, "started");
    let notifier: &'static Notifier = Box::leak(Box::new(Notifier::from_env(
        cfg.drain.stall_timeout,
        cfg.drain.poll_interval,
    )));
    let prepare = Agent::prepare(cfg);
    tokio::pin!(prepare);
    let agent = tokio::select! {
        agent = &mut prepare => match agent {
            Ok(a) => a,
            Err(e) => {
                let code = prepare_failed(e);
                let _ = child.stop(stop_signal, grace).await;
                return Err(code);
            }
        },
        status = child.wait() => {
            // A server whose application died while starting is as dead as one that died later: take
            // it out as soon as its memberships are known (preparing is bounded by its own deadlines).
            let code = status.map(exit_code).unwrap_or(1);
            tracing::warn!(code, "the child exited before the agent was ready: deregistering once the memberships are resolved");
            match prepare.await {
                Ok(agent) => deregister_after_child_died(&agent).await,
                Err(e) => {
                    prepare_failed(e);
                }
            }
            return Ok(Exit::from_code(code));
        }
    };
    // What a stop will remove, with its weight and subnet, so `register` after a crash restores it.
    // Taken while supervising: a slow API must not delay what a dying child or a signal needs.
    let snapshot = agent.snapshot_state();
    tokio::pin!(snapshot);
    let mut snapshot_done = false;
    notifier.ready(&format!(
        "serving; {} memberships; supervising pid {}",
        agent.memberships().len(),
        child.pid()
    ));
    // The unit's main process is this supervisor: its watchdog is ours to feed, as under `run`.
    notifier.spawn_watchdog();
    tracing::info!(
        memberships = agent.memberships().len(),
        "ready: supervising"
    );
    loop {
        tokio::select! {
            sig = signals.stop() => {
                let started = Instant::now();
                tracing::info!(signal = signals::name(sig), "stop signal: draining before stopping the child");
                notifier.stopping(agent.memberships().len());
                // The child still serves while its connections drain, so it still gets its signals.
                let verdict = {
                    let drain = drain_with_abort(
                        &agent,
                        started,
                        &mut signals,
                        None,
                        Outputs { notifier, extra: vec![], board: None },
                    );
                    tokio::pin!(drain);
                    loop {
                        tokio::select! {
                            verdict = &mut drain => break verdict,
                            sig = forwarded.next() => forward(&mut child, sig),
                        }
                    }
                };
                tracing::info!(?verdict, "drain over; stopping the child");
                notifier.stopping_child(child.pid(), signals::name(stop_signal), grace);
                // Stop signals now only concern the child's stop: SIGTERMs are ignored, so a storm
                // cannot stop it twice; a SIGINT cuts its grace period short. Signals to forward wait
                // (and end with the process): the child is on its way out.
                let stopped = tokio::select! {
                    status = child.stop(stop_signal, grace) => status,
                    () = signals.next_interrupt() => {
                        tracing::warn!(pid = child.pid(), "SIGINT while the child was stopping: SIGKILL now");
                        child.signal(libc::SIGKILL);
                        child.wait().await
                    }
                };
                let status = stopped.map_err(|e| {
                    eprintln!("elb-drain: exec: {e}");
                    Exit::Failure
                })?;
                return Ok(Exit::from_code(exit_code(status)));
            }
            status = child.wait() => {
                let code = status.map(exit_code).unwrap_or(1);
                tracing::warn!(code, "the child exited on its own: deregistering now");
                deregister_after_child_died(&agent).await;
                return Ok(Exit::from_code(code));
            }
            sig = forwarded.next() => forward(&mut child, sig),
            () = &mut snapshot, if !snapshot_done => snapshot_done = true,
        }
    }
}

fn forward(child: &mut crate::supervise::Supervised, sig: i32) {
    tracing::info!(
        signal = signals::name(sig),
        pid = child.pid(),
        "forwarding the signal to the child"
    );
    child.signal(sig);
}

/// Takes a dead child's server out of its pools. The exit code stays the child's (the contract of
/// `exec`), so a failure here is only logged.
async fn deregister_after_child_died(agent: &Agent) {
    let failed = agent
        .deregister(&|_, _| {})
        .await
        .iter()
        .any(|r| r.is_err());
    if failed {
        tracing::error!("deregistration failed after the child died");
    }
}

/// `register`: back into the pools.
pub async fn register(args: &Args, json: bool) -> Result<Exit, Exit> {
    let cfg = load_config(args)?;
    let agent = Agent::prepare(cfg).await.map_err(prepare_failed)?;
    let done = crate::register::register(&agent)
        .await
        .map_err(register_failed)?;
    if json {
        println!("{:#}", serde_json::json!({ "registered": done }));
    } else {
        for r in &done {
            println!(
                "pool {} member {} {}:{} {}",
                r.pool_id, r.member_id, r.address, r.protocol_port, r.action
            );
        }
    }
    Ok(Exit::Ok)
}

fn register_failed(e: crate::register::RegisterError) -> Exit {
    use crate::register::RegisterError;
    eprintln!("elb-drain: {e}");
    match e {
        RegisterError::Config(_) => Exit::Config,
        RegisterError::Cloud(c) if c.is_configuration() => Exit::Config,
        RegisterError::Cloud(_) => Exit::Unavailable,
        RegisterError::Timeout { .. } => Exit::TimedOut,
    }
}

/// `drain`: the same stop sequence, now.
pub async fn drain(args: &Args) -> Result<Exit, Exit> {
    let started = Instant::now();
    let mut signals = install_signals()?;
    let cfg = load_config(args)?;
    let notifier: &'static Notifier = Box::leak(Box::new(Notifier::from_env(
        cfg.drain.stall_timeout,
        cfg.drain.poll_interval,
    )));
    // Preparing (credentials, discovery, the pools' connection_drain) and the state snapshot are
    // part of the stop here, so they end at the stop's deadline too: with the API unreachable each
    // call would otherwise retry for a whole cloud.retry_deadline, one after the other, long past
    // drain.timeout.
    let deadline = started + cfg.drain.timeout;
    let prepared = tokio::select! {
        prepared = tokio::time::timeout_at(deadline, Agent::prepare(cfg.clone())) => prepared,
        _ = signals.abort() => return Ok(Exit::Interrupted),
    };
    let agent = match prepared {
        Ok(Ok(agent)) => agent,
        Ok(Err(e)) => return Ok(drain_unprepared(&cfg, e, started, &mut signals).await),
        Err(_) => {
            let e = PrepareError::Unavailable(format!(
                "memberships not resolved within drain.timeout ({})",
                humantime::format_duration(cfg.drain.timeout)
            ));
            return Ok(drain_unprepared(&cfg, e, started, &mut signals).await);
        }
    };
    if tokio::time::timeout_at(deadline, agent.snapshot_state())
        .await
        .is_err()
    {
        tracing::warn!("state snapshot not done by the drain deadline; deregistering without it");
    }
    notifier.stopping(agent.memberships().len());
    let progress: Vec<Box<dyn Sink>> = vec![Box::new(crate::status::Progress::new())];
    Ok(drain_with_abort(
        &agent,
        started,
        &mut signals,
        None,
        Outputs {
            notifier,
            extra: progress,
            board: None,
        },
    )
    .await)
}

/// A `drain` whose memberships could not be resolved (the cloud unreachable or refusing): nothing can
/// be deregistered, but the server is stopping all the same, so the connections on the configured
/// drain ports are still waited out (exiting now would only cut them) before the exit code says why
/// nothing was deregistered. A second SIGINT abandons the wait, as in any drain.
async fn drain_unprepared(
    cfg: &Config,
    e: PrepareError,
    started: Instant,
    signals: &mut Signals,
) -> Exit {
    let code = prepare_failed(e);
    let spec = CensusSpec {
        ports: cfg.drain_ports(),
        exclude_peers: cfg.drain.exclude_peers.clone(),
    };
    if spec.ports.is_empty() {
        return code;
    }
    tracing::warn!(ports = ?spec.ports, "nothing deregistered; still waiting out the connections on the drain ports");
    let plan = crate::drain::Plan {
        settle: cfg.drain.settle,
        timeout: cfg.drain.timeout,
        poll_interval: cfg.drain.poll_interval,
    };
    let deregistration = async {
        crate::drain::Deregistration {
            failed: true,
            lb_drain: Vec::new(),
        }
    };
    let setup = move || census::open_with_destroy(&spec);
    let sink = Fanout(vec![
        Box::new(LogSink::default()),
        Box::new(crate::status::Progress::new()),
    ]);
    tokio::select! {
        _ = crate::drain::drive(plan, started, deregistration, setup, &sink) => code,
        _ = signals.abort() => Exit::Interrupted,
    }
}

/// Deregisters and drains until the verdict, a second SIGINT, or (with Auto Scaling configured) also
/// watches for this instance's scale-in hook, keeps it alive while the drain progresses and answers it
/// at the end. `known_hook` is the hook that started the drain, if one did.
async fn drain_with_abort(
    agent: &Agent,
    started: Instant,
    signals: &mut Signals,
    known_hook: Option<Hanging>,
    out: Outputs,
) -> Exit {
    let Outputs {
        notifier,
        extra,
        board,
    } = out;
    let progress = ProgressClock::default();
    let mut sinks: Vec<Box<dyn Sink>> = vec![
        Box::new(LogSink::default()),
        Box::new(NotifierRef(notifier)),
        Box::new(progress.clone()),
    ];
    sinks.extend(extra);
    let sink = Fanout(sinks);
    // The status document lists what is deregistered: memberships the stop's last discovery found
    // join the list (once, as the first of them is answered).
    let listed = std::sync::atomic::AtomicUsize::new(agent.memberships().len());
    let on_deregistered = |n: usize, total: usize| {
        notifier.deregistered(n, total);
        if let Some(b) = &board {
            if listed.swap(total, std::sync::atomic::Ordering::Relaxed) < total {
                b.set(
                    "memberships",
                    serde_json::to_value(agent.memberships()).unwrap_or_default(),
                );
            }
            b.set("deregistered", n.into());
        }
    };
    let hook: std::sync::Mutex<Option<Hanging>> = std::sync::Mutex::new(known_hook.clone());
    let drain_deadline = started + agent.config.drain.timeout;
    let hook_side = async {
        let Some(watch) = &agent.hooks else {
            return std::future::pending().await;
        };
        let found = match known_hook {
            Some(found) => found,
            None => watch.wait_hanging().await,
        };
        *hook.lock().unwrap_or_else(|p| p.into_inner()) = Some(found.clone());
        match found {
            Hanging::Ours(h) => watch.heartbeat(h, &progress, drain_deadline).await,
            // Nothing of ours to keep alive.
            Hanging::Unclear(_) => std::future::pending().await,
        }
    };
    let verdict = tokio::select! {
        verdict = agent.drain(started, &sink, &on_deregistered) => verdict,
        () = signals.abort() => return Exit::Interrupted,
        () = hook_side => unreachable!("the heartbeat never ends on its own"),
    };
    let mut exit: Exit = verdict.into();
    let pending = hook.lock().unwrap_or_else(|p| p.into_inner()).take();
    let unanswered = match (&agent.hooks, pending) {
        (Some(watch), Some(Hanging::Ours(h))) => match watch.finish(&h, verdict).await {
            Ok(()) => false,
            Err(e) => {
                tracing::error!(error = %e, hook = %h.name, "could not answer the lifecycle hook; it will take its default result");
                true
            }
        },
        (_, Some(Hanging::Unclear(names))) => {
            tracing::error!(hooks = ?names, "answered none of the lifecycle hooks holding this instance: set [autoscaling] hook_name to the one elb-drain answers; they take their default results");
            true
        }
        _ => false,
    };
    if unanswered && exit == Exit::Ok {
        exit = Exit::Unavailable;
    }
    exit
}

/// Where a drain reports to, besides the log.
struct Outputs {
    notifier: &'static Notifier,
    /// More sinks: the status board, the terminal progress bar.
    extra: Vec<Box<dyn Sink>>,
    /// The status board, also told how many memberships are out.
    board: Option<crate::status::Board>,
}

/// The scale-in hook as a trigger; never resolves without Auto Scaling configured.
async fn wait_hook(agent: &Agent) -> Hanging {
    match &agent.hooks {
        Some(watch) => watch.wait_hanging().await,
        None => std::future::pending().await,
    }
}

struct NotifierRef(&'static Notifier);

impl Sink for NotifierRef {
    fn emit(&self, event: &crate::drain::Event) {
        self.0.emit(event);
    }
}

/// `check`: everything a stop would need, verified without changing anything. A problem is anything
/// that would make a stop go wrong: a membership that is gone, an address that is not this machine's
/// (the pool would lose this address while the drain watches this machine's connections), a
/// membership port the census does not count (its connections would be cut), no census that works
/// here. Each is one line on stderr, and the exit code is 78.
pub async fn check(args: &Args, json: bool) -> Result<Exit, Exit> {
    let cfg = load_config(args)?;
    let agent = Agent::prepare(cfg).await.map_err(prepare_failed)?;
    let spec = agent.census_spec();
    let ports_configured = !agent.config.drain.ports.is_empty();
    let info = agent.credential.describe();
    let memberships = agent.memberships_with_health().await;
    let local = LocalAddresses::scan();
    let census = CensusProbe::run(&spec);
    let own_address = agent.identity.as_ref().and_then(|i| i.address);
    let interface = |a: Option<std::net::IpAddr>| a.and_then(|a| local.interface_of(a));
    // A port nobody knows (no protocol_port, and the API did not say) is counted only through
    // drain.ports, which the user then vouches for.
    let counted = |m: &Membership| {
        m.protocol_port
            .map_or(ports_configured, |p| spec.ports.contains(&p))
    };

    let mut problems: Vec<String> = memberships
        .iter()
        .filter(|m| m.health.as_deref() == Some("MISSING"))
        .map(|m| format!("pool {} member {}: not found", m.pool_id, m.member_id))
        .collect();
    // One line per address, naming everything that uses it.
    let foreign = grouped(
        own_address
            .map(|a| (a, "this server's address".to_owned()))
            .into_iter()
            .chain(memberships.iter().filter_map(|m| {
                Some((
                    m.address?,
                    format!("pool {} member {}", m.pool_id, m.member_id),
                ))
            }))
            .filter(|(a, _)| local.interface_of(*a).is_none()),
    );
    problems.extend(foreign.iter().map(|(address, users)| {
        format!(
            "address {address} ({}) is on no interface of this machine: a stop would take it out of the \
             pool but wait for this machine's connections; check cloud.address and [[member]] address",
            users.join(", ")
        )
    }));
    // One line per port the census would not count.
    let uncounted = grouped(memberships.iter().filter(|m| !counted(m)).filter_map(|m| {
        Some((
            m.protocol_port?,
            format!("pool {} member {}", m.pool_id, m.member_id),
        ))
    }));
    let listed: Vec<String> = spec.ports.iter().map(u16::to_string).collect();
    problems.extend(uncounted.iter().map(|(port, users)| {
        if ports_configured {
            format!(
                "drain.ports [{}] do not include port {port} ({}): its connections would not be waited \
                 for; add {port} to drain.ports (behind a port translation, e.g. into a container, list both)",
                listed.join(", "),
                users.join(", ")
            )
        } else {
            format!(
                "port {port} ({}) is not counted: its [[member]] has no protocol_port; set protocol_port = \
                 {port} there, or drain.ports",
                users.join(", ")
            )
        }
    }));
    problems.extend(
        memberships
            .iter()
            .filter(|m| m.protocol_port.is_none() && !counted(m) && m.health.as_deref() != Some("MISSING"))
            .map(|m| {
                format!(
                    "pool {} member {}: its port is unknown (no protocol_port, and the API did not say): \
                     its connections would not be counted; set protocol_port there, or drain.ports",
                    m.pool_id, m.member_id
                )
            }),
    );
    if spec.ports.is_empty() {
        problems.push(
            "drain.ports: nothing to count (no ports configured or known from members)".into(),
        );
    }
    if census.backend.is_none() {
        let none = || "-".to_owned();
        problems.push(format!(
            "census: neither netlink sock_diag ({}) nor /proc/net/tcp ({}) can be read here: a drain \
             could not count connections",
            census.netlink_error.clone().unwrap_or_else(none),
            census.procfs_error.clone().unwrap_or_else(none),
        ));
    }
    if memberships.is_empty() {
        problems.push("no membership of this server found in any pool".to_owned());
    }
    let hooks = match &agent.hooks {
        Some(watch) => Some((watch, watch.audit().await)),
        None => None,
    };
    if let Some((_, audit)) = &hooks {
        problems.extend(audit.problems.iter().cloned());
    }

    if json {
        let mut identity = serde_json::to_value(&agent.identity).unwrap_or_default();
        if let Some(id) = identity.as_object_mut() {
            id.insert("address_interface".into(), interface(own_address).into());
        }
        let memberships: Vec<serde_json::Value> = memberships
            .iter()
            .map(|m| {
                let mut v = serde_json::to_value(m).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.insert("address_interface".into(), interface(m.address).into());
                    o.insert("port_counted".into(), counted(m).into());
                }
                v
            })
            .collect();
        let out = serde_json::json!({
            "ok": problems.is_empty(),
            "problems": problems,
            "project_id": agent.elb.project_id().as_str(),
            "identity": identity,
            "credential": { "kind": info.kind, "expires_at": info.expires_at_rfc3339() },
            "memberships": memberships,
            "drain_ports": spec.ports,
            "drain_ports_from": if ports_configured { "drain.ports" } else { "memberships" },
            "exclude_peers": spec.exclude_peers.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            "census": {
                "backend": census.backend.map(backend_name),
                "established": census.established,
                "netlink_error": census.netlink_error,
                "procfs_error": census.procfs_error,
            },
            "connection_drain": agent.lb_drain.iter().map(|(p, t)| serde_json::json!({"pool_id": p.as_str(), "timeout_s": t.as_secs()})).collect::<Vec<_>>(),
            "autoscaling": hooks.as_ref().map(|(watch, audit)| serde_json::json!({
                "scaling_group_id": watch.group.as_str(),
                "hook_name": watch.name,
                "group_hooks": audit.group_hooks.as_ref().ok().map(|hooks| hooks
                    .iter()
                    .map(|(n, k)| serde_json::json!({"name": n, "kind": k.as_str()}))
                    .collect::<Vec<_>>()),
                "group_hooks_error": audit.group_hooks.as_ref().err(),
                "listing_error": audit.listing_error,
            })),
        });
        println!("{out:#}");
    } else {
        let on = |a: Option<std::net::IpAddr>| match (a, interface(a)) {
            (None, _) => String::new(),
            (Some(_), Some(i)) => format!(" (on {i})"),
            (Some(_), None) => " (NOT on this machine)".into(),
        };
        println!("project:      {}", agent.elb.project_id());
        if let Some(id) = &agent.identity {
            println!(
                "server:       instance {} address {}{} region {}",
                id.instance_id.as_deref().unwrap_or("?"),
                id.address.map_or("?".into(), |a| a.to_string()),
                on(id.address),
                id.region.as_deref().unwrap_or("?")
            );
        }
        println!(
            "credential:   {} (expires {})",
            info.kind,
            info.expires_at_rfc3339().unwrap_or_else(|| "never".into())
        );
        println!("memberships:  {}", memberships.len());
        for m in &memberships {
            let at = match (m.address, m.protocol_port) {
                (Some(a), Some(p)) => format!(" {a}:{p}"),
                _ => String::new(),
            };
            println!(
                "  pool {} member {}{at} {}{}{}",
                m.pool_id,
                m.member_id,
                m.health.as_deref().unwrap_or("?"),
                on(m.address),
                if counted(m) { "" } else { ", port NOT counted" }
            );
        }
        for (p, t) in &agent.lb_drain {
            println!(
                "  pool {p}: connection_drain {} s (the load balancer cuts what is left then)",
                t.as_secs()
            );
        }
        println!(
            "drain ports:  {} ({})",
            listed.join(","),
            if ports_configured {
                "drain.ports"
            } else {
                "the memberships' ports"
            }
        );
        if let Some((watch, audit)) = &hooks {
            let group_hooks = match &audit.group_hooks {
                Ok(h) => crate::hook::describe(h),
                Err(e) => format!("not readable ({e})"),
            };
            println!(
                "autoscaling:  group {}, hook_name {}, hooks: {group_hooks}",
                watch.group,
                watch
                    .name
                    .as_deref()
                    .unwrap_or("- (a lone terminating hook)")
            );
        }
        match (census.backend, census.established) {
            (Some(b), Some(n)) if !spec.ports.is_empty() => {
                println!("census:       {}, {n} established now", backend_label(b))
            }
            (Some(b), _) => println!("census:       {}", backend_label(b)),
            (None, _) => println!("census:       NONE works here"),
        }
        println!(
            "result:       {}",
            if problems.is_empty() {
                "ok"
            } else {
                "PROBLEMS"
            }
        );
    }
    for p in &problems {
        eprintln!("elb-drain: check: {p}");
    }
    Ok(if problems.is_empty() {
        Exit::Ok
    } else {
        Exit::Config
    })
}

/// (key, user) pairs grouped by key, in the order the keys first appear: one problem line per
/// address or port, naming everything that uses it.
fn grouped<K: PartialEq>(pairs: impl IntoIterator<Item = (K, String)>) -> Vec<(K, Vec<String>)> {
    let mut out: Vec<(K, Vec<String>)> = Vec::new();
    for (key, user) in pairs {
        match out.iter_mut().find(|(k, _)| *k == key) {
            Some((_, users)) => users.push(user),
            None => out.push((key, vec![user])),
        }
    }
    out
}

/// Which census works in this process, tried the way a drain tries them: netlink sock_diag, else
/// /proc/net/tcp{,6}; with each one's error when it does not.
struct CensusProbe {
    backend: Option<Backend>,
    established: Option<usize>,
    netlink_error: Option<String>,
    procfs_error: Option<String>,
}

impl CensusProbe {
    /// The census a drain would use here ([`census::choose`]), and one count with it.
    fn run(spec: &CensusSpec) -> CensusProbe {
        let (mut chosen, refused) = census::choose(spec);
        let netlink_error = refused.map(|e| e.to_string());
        match chosen.count() {
            Ok(count) => CensusProbe {
                backend: Some(chosen.backend()),
                established: Some(count.established),
                netlink_error,
                procfs_error: None,
            },
            Err(e) => {
                let (netlink_error, procfs_error) = match chosen.backend() {
                    Backend::Procfs => (netlink_error, Some(e.to_string())),
                    // Probed fine, then failed: say so as netlink's error.
                    Backend::Netlink => (Some(e.to_string()), None),
                };
                CensusProbe {
                    backend: None,
                    established: None,
                    netlink_error,
                    procfs_error,
                }
            }
        }
    }
}

fn backend_name(b: Backend) -> &'static str {
    match b {
        Backend::Netlink => "netlink",
        Backend::Procfs => "procfs",
    }
}

fn backend_label(b: Backend) -> &'static str {
    match b {
        Backend::Netlink => "netlink sock_diag",
        Backend::Procfs => "/proc/net/tcp (netlink sock_diag refused here)",
    }
}

/// `status`: the running daemon's state (from its socket), the API's view of the memberships, and the
/// live connection count.
pub async fn status(args: &Args, json: bool) -> Result<Exit, Exit> {
    let cfg = load_config(args)?;
    let socket = cfg.status_socket.clone();
    let daemon = crate::status::read(&socket).await.ok();
    let agent = Agent::prepare(cfg).await.map_err(prepare_failed)?;
    let spec = agent.census_spec();
    let count = census::open(&spec).count().map_err(|e| {
        eprintln!("elb-drain: {e}");
        Exit::Failure
    })?;
    let memberships = agent.memberships_with_health().await;
    if json {
        println!(
            "{:#}",
            serde_json::json!({
                "daemon": daemon,
                "memberships": memberships,
                "drain_ports": spec.ports,
                "established": count.established,
            })
        );
    } else {
        match &daemon {
            Some(d) => println!(
                "daemon:      pid {} {} (deregistered {}, connections {}, deadline in {} s)",
                d["pid"],
                d["phase"].as_str().unwrap_or("?"),
                d["deregistered"],
                d["established"],
                d["deadline_in_s"]
            ),
            None => println!(
                "daemon:      not running (no status socket at {})",
                socket.display()
            ),
        }
        for m in &memberships {
            println!(
                "membership:  pool {} member {} {}",
                m.pool_id,
                m.member_id,
                m.health.as_deref().unwrap_or("?")
            );
        }
        println!("connections: {} established", count.established);
    }
    Ok(Exit::Ok)
}
