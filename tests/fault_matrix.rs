//! The fault matrix (issue 8): every call the agent makes × every way the cloud side can fail, each
//! cell its own test running the real `elb-drain` binary against elb-sim.
//!
//! A cell passes when the agent exits with the code the [`expected`] table names, within a bound
//! computed from its configured deadlines ([`Call::budget`]), without a panic, with a peak RSS under
//! [`RSS_LIMIT_KIB`] (so no response body is buffered without limit), and, on the stop path, only
//! after the connection held through the load balancer was closed: a failing cloud never cuts the
//! drain short.
//!
//! Two of the calls only inform the stop: ShowPool (the pool's `connection_drain`) and ShowMember (the
//! state snapshot for a later `register`). When they fail for good the agent deregisters all the same
//! (a ShowPool failure is logged as a warning), so those cells end 0 without any 2xx of the call; a
//! pool that ShowPool says does not exist is the exception: 78, and no DELETE. Connection refused on
//! any ELB call means the ELB endpoint is dead, the DELETE included: 69.
//!
//! Peak RSS is the kernel's `VmHWM` (the high-water mark of the agent's own address space since its
//! `exec`), sampled every 2 ms up to the moment the process is reaped. `wait4`'s `ru_maxrss` would
//! be exact at reaping, but Linux seeds it from the address space the child had before `exec`: with
//! `posix_spawn` (vfork) that is this test process's, with all its simulators, so it measures the
//! wrong process. `VmHWM` is monotonic, so a late sample still sees an earlier peak; only the last
//! 2 ms before the exit go unseen, far less than it takes to read 64 MiB from a socket.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use elb_sim::scenario::{Instance, ScalingGroup};
use elb_sim::{FaultAction, LoggedRequest};

const INSTANCE: &str = "6a7bd0c6-9e22-4d9f-a9c2-0d11ee3c0e55";
const GROUP: &str = "7b8bd0c6-9e22-4d9f-a9c2-0d11ee3c0e55";

/// `[cloud]` timings of every cell's agent: small, so the whole file runs in seconds.
const RETRY_DEADLINE: Duration = Duration::from_millis(1500);
const REQUEST_TIMEOUT: Duration = Duration::from_millis(500);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(200);
const SETTLE: Duration = Duration::from_millis(50);
const POLL: Duration = Duration::from_millis(20);
/// Never reached: every cell closes its connection long before (a 75 would say the agent hung).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Longer than the request timeout: the agent must give up on the request, not wait it out.
const DELAY_MS: u64 = 2_000;
const OVERSIZED: usize = 100 * 1024 * 1024;
/// The agent's peak RSS bound; it reads at most 4 MiB of any body (`cloud::MAX_BODY`).
const RSS_LIMIT_KIB: u64 = 64 * 1024;
/// Process start, a loaded 2-core CI machine: added once to every computed bound.
const SLACK: Duration = Duration::from_secs(5);

/// One `Service::send` at worst: attempts start until the retry deadline has passed (the backoff is
/// capped at what is left of it, a `Retry-After` too), and the last one may take a whole request
/// timeout (connect, headers and the bounded body).
const SEND: Duration = RETRY_DEADLINE.saturating_add(REQUEST_TIMEOUT);
/// One metadata read at worst (`cloud::metadata::Metadata::get`): 4 attempts of a session-token PUT
/// and a GET, the 100/200/400 ms pauses between them, and one more after a 401.
const METADATA_GET: Duration = Duration::from_millis(5 * 2 * 500 + 700);

/// The calls the agent makes, each reached by the command and configuration [`Call::config`] picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    /// IAM `POST /v3/auth/tokens` (`auth.method = "password"`), fetched by `drain` before the DELETE.
    IamToken,
    /// Metadata `GET /openstack/latest/securitykey` (`auth.method = "metadata"`), by `drain`.
    Metadata,
    /// Metadata `GET /openstack/latest/meta_data.json`: this server's identity, asked by `drain` for
    /// the project ID the configuration leaves out.
    MetadataIdentity,
    /// ELB ListPools with `member_address`: discovery of every pool this server is in, by `drain` with
    /// no `[[member]]` at all (`cloud.address` set, `drain.ports` naming the application's port).
    ListPools,
    /// ELB ListMembers with `address`/`protocol_port` filters: discovery of a `[[member]]` without
    /// `member_id`, by `drain`. (The agent finds memberships per pool, never with ListAllMembers,
    /// which cannot say which pool a member is in.)
    ListMembers,
    /// ELB ShowPool: the pool's `connection_drain`, read by `drain` before the DELETE.
    ShowPool,
    /// ELB ShowMember: the state snapshot (weight, address) taken by `drain` before the DELETE.
    ShowMember,
    /// ELB DeleteMember, by `drain`.
    Delete,
    /// ELB CreateMember, by `register` (the member is not in the pool yet).
    CreateMember,
    /// AS `PUT .../callback`: `run` with `[autoscaling]`, answering the scale-in hook after the drain.
    AsCallback,
}

/// The faults, each applied to [`Call`]'s requests only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Every request (the API is down for longer than the retry budget).
    Http500,
    /// The first two requests (a hiccup); retries get through.
    Http503,
    /// The first two requests, no `Retry-After`.
    Http429,
    /// The first request, `Retry-After: 1`: the retry waits at least that long.
    Http429RetryAfter,
    /// The first two requests (`ELB.8907`, resource busy).
    Http409,
    /// The first request: the credential is refreshed (token re-fetched, keys re-read) once.
    Http401Once,
    /// Every request.
    Http403,
    /// Every request.
    Http404,
    /// The call's endpoint is a loopback port nothing listens on.
    ConnectRefused,
    /// The first request is answered after `DELAY_MS`, longer than the request timeout.
    DelayPastTimeout,
    /// The first two requests: 200, headers and a few bytes of the body, then an RST.
    ResetMidBody,
    /// The first two requests: 200, a body shorter than its Content-Length.
    TruncatedJson,
    /// The first two requests: 200 with a body that is not JSON.
    MalformedJson,
    /// Every request: 200 with a 100 MiB body.
    Oversized100MiB,
}

/// How a cell ends: the exit code.
fn expected(call: Call, fault: Fault) -> i32 {
    use Call::*;
    use Fault::*;
    match (call, fault) {
        // Transient faults that pass are retried to success, whatever the call.
        (
            _,
            Http503 | Http429 | Http429RetryAfter | Http409 | Http401Once | DelayPastTimeout
            | ResetMidBody | TruncatedJson | MalformedJson,
        ) => 0,
        // A pool that ShowPool says does not exist is a configuration error, found before the DELETE.
        (ShowPool, Http404) => 78,
        // The calls that only inform the stop: their failure for good is said, and the DELETE follows.
        (ShowPool | ShowMember, Http500 | Http403 | Http404 | Oversized100MiB) => 0,
        // Down for the whole retry budget: 69, after the drain on the stop path.
        (_, Http500) => 69,
        // No endpoint at all: 69; without the AS endpoint the hook cannot be seen, and a SIGTERM
        // drains as without Auto Scaling.
        (AsCallback, ConnectRefused) => 0,
        (_, ConnectRefused) => 69,
        // A refusal before anything changed is a configuration (or permission) problem: 78.
        (
            IamToken | Metadata | MetadataIdentity | ListPools | ListMembers | CreateMember,
            Http403 | Http404,
        ) => 78,
        // A refused DELETE could not deregister: 69. A 404 is a member already gone: success.
        (Delete, Http403) => 69,
        (Delete, Http404) => 0,
        // An unanswerable hook takes its default result: the exit code says so.
        (AsCallback, Http403 | Http404) => 69,
        // A 2xx whose body is never needed is success however large; a body that is needed and too
        // large is not retried (it would be downloaded again): 69.
        (Delete | AsCallback, Oversized100MiB) => 0,
        (_, Oversized100MiB) => 69,
    }
}

impl Fault {
    fn actions(self) -> Option<(Vec<FaultAction>, bool)> {
        let status = |status: u16| FaultAction::Status {
            status,
            retry_after: None,
        };
        let twice = |a: FaultAction| Some((vec![a.clone(), a], false));
        match self {
            Fault::Http500 => Some((vec![status(500)], true)),
            Fault::Http503 => twice(status(503)),
            Fault::Http429 => twice(status(429)),
            Fault::Http429RetryAfter => Some((
                vec![FaultAction::Status {
                    status: 429,
                    retry_after: Some(1),
                }],
                false,
            )),
            Fault::Http409 => twice(status(409)),
            Fault::Http401Once => Some((vec![status(401)], false)),
            Fault::Http403 => Some((vec![status(403)], true)),
            Fault::Http404 => Some((vec![status(404)], true)),
            Fault::ConnectRefused => None,
            Fault::DelayPastTimeout => Some((vec![FaultAction::Delay { ms: DELAY_MS }], false)),
            Fault::ResetMidBody => twice(FaultAction::ResetMidBody),
            Fault::TruncatedJson => twice(FaultAction::Truncated),
            Fault::MalformedJson => twice(FaultAction::Malformed),
            Fault::Oversized100MiB => {
                Some((vec![FaultAction::Oversized { bytes: OVERSIZED }], true))
            }
        }
    }
}

impl Call {
    /// The faulted request: method, path glob (as elb-sim matches it), and the log's service.
    fn route(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Call::IamToken => ("POST", "/v3/auth/tokens", "iam"),
            Call::Metadata => ("GET", "/openstack/latest/securitykey", "metadata"),
            Call::MetadataIdentity => ("GET", "/openstack/latest/meta_data.json", "metadata"),
            Call::ListPools => ("GET", "/v3/*/elb/pools", "elb"),
            Call::ListMembers => ("GET", "/v3/*/elb/pools/*/members", "elb"),
            Call::ShowPool => ("GET", "/v3/*/elb/pools/*", "elb"),
            Call::ShowMember => ("GET", "/v3/*/elb/pools/*/members/*", "elb"),
            Call::Delete => ("DELETE", "/v3/*/elb/pools/*/members/*", "elb"),
            Call::CreateMember => ("POST", "/v3/*/elb/pools/*/members", "elb"),
            Call::AsCallback => (
                "PUT",
                "/autoscaling-api/v1/*/scaling_instance_hook/*/callback",
                "as",
            ),
        }
    }

    fn is(self, r: &LoggedRequest) -> bool {
        let (method, glob, service) = self.route();
        r.method == method && r.service == service && glob_matches(glob, &r.path)
    }

    /// Whether the command is a stop (a drain the agent must wait out), rather than `register`.
    fn stops(self) -> bool {
        self != Call::CreateMember
    }

    /// A metadata read, retried by the metadata client's own short loop (it ignores `Retry-After`).
    fn is_metadata(self) -> bool {
        matches!(self, Call::Metadata | Call::MetadataIdentity)
    }

    /// Whether the call only informs the stop: a lasting failure of it is no reason not to deregister.
    fn informs_only(self) -> bool {
        matches!(self, Call::ShowPool | Call::ShowMember)
    }

    /// The bound on the time from the agent's start (for `run`: from the scale-in) until it is
    /// draining (or, for `register`, has exited): the sequential requests on the way, each at its
    /// worst, plus a 401's refresh, plus the settle window and [`SLACK`].
    fn budget(self) -> Duration {
        // IAM token; ShowPool (connection_drain); ShowMember (state snapshot); DELETE; ShowPool
        // after a bare 404; one credential refresh and the retry after a 401.
        let drain_path = SEND * 6;
        let path = match self {
            Call::IamToken | Call::Delete | Call::ShowPool | Call::ShowMember => drain_path,
            // Keys instead of the token (a 401 reads them again), the rest as above.
            Call::Metadata => METADATA_GET * 2 + SEND * 5,
            // The identity (read again after a 401) before the rest.
            Call::MetadataIdentity => METADATA_GET * 2 + drain_path,
            // ListPools, then ListMembers in the pool found, before the rest.
            Call::ListPools => drain_path + SEND * 2,
            // ListMembers before the rest.
            Call::ListMembers => drain_path + SEND,
            // Token, ListMembers (discovery), ShowPool, ListMembers (register), CreateMember, a
            // refresh.
            Call::CreateMember => SEND * 6,
            // A poll of the hooks, then the drain path with its token fetched long ago.
            Call::AsCallback => SEND * 5 + POLL * 5,
        };
        path + SETTLE + SLACK
    }

    /// The bound from closing the last connection to the exit: a census or two, and the hook's
    /// answer (with a refresh) for `run` with Auto Scaling.
    fn after_close_budget(self) -> Duration {
        let answer = if self == Call::AsCallback {
            SEND * 3
        } else {
            Duration::ZERO
        };
        POLL * 10 + answer + SLACK
    }
}

/// elb-sim's path glob: `*` is one segment.
fn glob_matches(glob: &str, path: &str) -> bool {
    let g: Vec<&str> = glob.trim_matches('/').split('/').collect();
    let p: Vec<&str> = path.trim_matches('/').split('/').collect();
    g.len() == p.len() && g.iter().zip(&p).all(|(g, p)| *g == "*" || g == p)
}

/// The simulator for a call: our member is absent for CreateMember, the server has an agency for
/// metadata keys, is described by the metadata service for its identity, is the only member at its
/// address for discovery through ListPools (the other member moves to another loopback address), and
/// belongs to a scaling group (with a hook that will not time out during the test, so the only
/// callback is the final answer) for the AS callback.
async fn start(call: Call) -> Setup {
    setup_with(move |mut sc| {
        match call {
            Call::CreateMember => sc.member.retain(|m| m.id.as_deref() != Some(MEMBER)),
            Call::Metadata => {
                sc = sc.instance(instance(true, None));
            }
            Call::MetadataIdentity => {
                sc = sc.instance(instance(false, None));
            }
            Call::ListPools => {
                if let Some(m) = sc
                    .member
                    .iter_mut()
                    .find(|m| m.id.as_deref() == Some(OTHER))
                {
                    m.address = "127.0.0.2".into();
                }
            }
            Call::AsCallback => {
                if let Some(m) = sc
                    .member
                    .iter_mut()
                    .find(|m| m.id.as_deref() == Some(MEMBER))
                {
                    m.instance_id = Some(INSTANCE.into());
                }
                sc = sc
                    .instance(instance(false, Some(GROUP)))
                    .scaling_group(ScalingGroup {
                        id: GROUP.into(),
                        project_id: PROJECT.into(),
                        hook_name: "drain-hook".into(),
                        default_result: "ABANDON".into(),
                        hook_timeout: Duration::from_secs(600),
                        other_hooks: Vec::new(),
                        launching_hooks: Vec::new(),
                    });
            }
            _ => {}
        }
        sc
    })
    .await
}

fn instance(agency: bool, group: Option<&str>) -> Instance {
    Instance {
        uuid: INSTANCE.into(),
        project_id: PROJECT.into(),
        local_ipv4: "127.0.0.1".into(),
        region_id: None,
        hostname: "web-1".into(),
        name: "web-1".into(),
        agency,
        scaling_group_id: group.map(str::to_owned),
    }
}

fn ms(d: Duration) -> String {
    format!("\"{}ms\"", d.as_millis())
}

/// The agent's configuration for a call; with `ConnectRefused`, the call's endpoint is dead.
fn config(s: &Setup, call: Call, fault: Fault) -> PathBuf {
    let api = s.sim.api_url();
    let dead = format!("http://127.0.0.1:{}", unclaimed_port());
    let refused = |c: Call| {
        if fault == Fault::ConnectRefused && call == c {
            dead.clone()
        } else {
            api.clone()
        }
    };
    let elb = match call {
        Call::ListPools
        | Call::ListMembers
        | Call::ShowPool
        | Call::ShowMember
        | Call::Delete
        | Call::CreateMember => refused(call),
        _ => api.clone(),
    };
    let metadata = if fault == Fault::ConnectRefused && call.is_metadata() {
        dead.clone()
    } else {
        s.sim.metadata_url()
    };
    let password = write_file(s.dir.path(), "password", "correct horse");
    std::fs::set_permissions(
        &password,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let auth = if call == Call::Metadata {
        "method = \"metadata\"\n".to_owned()
    } else {
        format!(
            "method = \"password\"\nuser = \"alice\"\ndomain = \"acme\"\npassword_file = \"{}\"\n",
            password.display()
        )
    };
    let port = s.app.addr.port();
    // Discovery through ListPools: no `[[member]]`, this server's address given, the drain ports too
    // (there are no members' ports to take them from when discovery fails).
    let (member, discovery) = match call {
        Call::ListPools => (
            String::new(),
            (
                String::from("address = \"127.0.0.1\"\n"),
                format!("ports = [{port}]\n"),
            ),
        ),
        Call::ListMembers | Call::CreateMember => (
            format!(
                "[[member]]\npool_id = \"{POOL}\"\naddress = \"127.0.0.1\"\nprotocol_port = {port}\n"
            ),
            Default::default(),
        ),
        _ => (
            format!(
                "[[member]]\npool_id = \"{POOL}\"\nmember_id = \"{MEMBER}\"\nprotocol_port = {port}\n"
            ),
            Default::default(),
        ),
    };
    // Without it, the project ID comes from the metadata service's identity document.
    let project = if call == Call::MetadataIdentity {
        String::new()
    } else {
        format!("project_id = \"{PROJECT}\"\n")
    };
    let mut text = format!(
        "[cloud]\n{project}{}elb_endpoint = \"{elb}\"\niam_endpoint = \"{}\"\n\
         metadata_endpoint = \"{metadata}\"\nretry_deadline = {}\nrequest_timeout = {}\n\
         connect_timeout = {}\n",
        discovery.0,
        refused(Call::IamToken),
        ms(RETRY_DEADLINE),
        ms(REQUEST_TIMEOUT),
        ms(CONNECT_TIMEOUT),
    );
    if call == Call::AsCallback {
        text += &format!(
            "as_endpoint = \"{}\"\ninstance_id = \"{INSTANCE}\"\n",
            refused(Call::AsCallback)
        );
    }
    text += &format!(
        "[auth]\n{auth}{member}\
         [drain]\nexclude_peers = []\n{}settle = {}\npoll_interval = {}\ntimeout = {}\n\
         [register]\nwait_listening = false\nhealthy_timeout = \"0s\"\n",
        discovery.1,
        ms(SETTLE),
        ms(POLL),
        ms(DRAIN_TIMEOUT),
    );
    if call == Call::AsCallback {
        text += &format!(
            "[autoscaling]\nscaling_group_id = \"{GROUP}\"\npoll_interval = {}\nextend_margin = \"1s\"\n",
            ms(POLL * 5)
        );
    }
    write_file(s.dir.path(), "elb-drain.toml", &text)
}

/// The peak resident set of a live process, in KiB (`None` once it has exited).
fn vm_hwm_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

struct Exited {
    code: Option<i32>,
    at: Instant,
    peak_rss_kib: u64,
}

/// Waits (at most `limit`) for the agent to exit, sampling its peak RSS every 2 ms until it is
/// reaped. Sampling and reaping happen in this one thread, so a sample never reads a reused PID.
fn wait_exit(agent: &mut ProcGuard, limit: Duration, peak: &mut u64) -> Option<Exited> {
    let pid = agent.pid();
    let deadline = Instant::now() + limit;
    loop {
        if let Some(k) = vm_hwm_kib(pid) {
            *peak = (*peak).max(k);
        }
        if let Some(status) = agent.wait_timeout(Duration::ZERO) {
            return Some(Exited {
                code: status.code(),
                at: Instant::now(),
                peak_rss_kib: *peak,
            });
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Waits until stderr shows `needle` or the agent exits, sampling the peak RSS meanwhile.
fn wait_log_or_exit(agent: &mut ProcGuard, needle: &str, limit: Duration, peak: &mut u64) -> bool {
    let pid = agent.pid();
    wait_until(limit, || {
        if let Some(k) = vm_hwm_kib(pid) {
            *peak = (*peak).max(k);
        }
        agent.stderr().contains(needle) || !agent.is_running()
    });
    agent.stderr().contains(needle)
}

/// One cell of the matrix.
fn cell(call: Call, fault: Fault) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let _in_runtime = rt.enter();
    let s = rt.block_on(start(call));
    let (method, path, _) = call.route();
    if let Some((actions, repeat)) = fault.actions() {
        let f = elb_sim::Fault::new(method, path, actions);
        s.sim.inject_fault(if repeat { f.repeating() } else { f });
    }
    let config = config(&s, call, fault);
    let want = expected(call, fault);
    let mut peak = 0u64;

    let held = call.stops().then(|| s.connections_to_us(1));
    let (mut agent, began) = match call {
        Call::AsCallback => {
            let mut agent = ProcGuard::spawn(agent(&config, &["run"]));
            assert!(
                wait_log_or_exit(&mut agent, "ready", Duration::from_secs(10), &mut peak),
                "{}",
                agent.stderr()
            );
            let began = Instant::now();
            if fault == Fault::ConnectRefused {
                // Without the AS endpoint no hook is seen: the stop comes as a signal.
                agent.signal(libc::SIGTERM);
            } else {
                s.sim.start_scale_in(INSTANCE).expect("scale-in");
            }
            (agent, began)
        }
        Call::CreateMember => (
            ProcGuard::spawn(agent(&config, &["register"])),
            Instant::now(),
        ),
        _ => (ProcGuard::spawn(agent(&config, &["drain"])), Instant::now()),
    };

    let exit = if let Some(held) = held {
        // The drain is waited out: the agent reaches the draining phase (deregistered, or given
        // up on it) and stays there while our connection is open.
        assert!(
            wait_log_or_exit(&mut agent, "drain: draining", call.budget(), &mut peak),
            "{call:?} × {fault:?}: not draining within {:?} (running: {}):\n{}",
            call.budget(),
            agent.is_running(),
            agent.stderr()
        );
        assert!(
            agent.is_running(),
            "{call:?} × {fault:?}: exited with a connection open:\n{}",
            agent.stderr()
        );
        // The application's connection is still served after the fault, and closing it is what ends
        // the drain.
        let mut held = held;
        assert_eq!(
            echo(&mut held[0], "still served").expect("the held connection works"),
            "still served",
            "{call:?} × {fault:?}"
        );
        let closed = Instant::now();
        drop(held);
        let exit = wait_exit(&mut agent, call.after_close_budget(), &mut peak).unwrap_or_else(
            || {
                panic!(
                    "{call:?} × {fault:?}: still running {:?} after the last connection closed:\n{}",
                    call.after_close_budget(),
                    agent.stderr()
                )
            },
        );
        assert!(exit.at >= closed);
        exit
    } else {
        wait_exit(&mut agent, call.budget(), &mut peak).unwrap_or_else(|| {
            panic!(
                "{call:?} × {fault:?}: still running after {:?}:\n{}",
                call.budget(),
                agent.stderr()
            )
        })
    };
    let stderr = agent.stderr();
    let log = s.sim.request_log();
    let calls: Vec<&LoggedRequest> = log.iter().filter(|r| call.is(r)).collect();
    let trace: Vec<String> = log
        .iter()
        .map(|r| format!("{} {} {} {}", r.service, r.method, r.path, r.status))
        .collect();
    let context = format!(
        "{call:?} × {fault:?} after {:?}\nrequests: {trace:#?}\nstderr:\n{stderr}",
        exit.at - began
    );
    assert_eq!(exit.code, Some(want), "exit code: {context}");
    assert!(!stderr.contains("panicked"), "a panic: {context}");
    assert!(
        exit.peak_rss_kib > 0 && exit.peak_rss_kib < RSS_LIMIT_KIB,
        "peak RSS {} KiB (limit {RSS_LIMIT_KIB}): {context}",
        exit.peak_rss_kib
    );

    // The fault was met where it was meant to be.
    match fault {
        Fault::ConnectRefused => {
            let (_, _, service) = call.route();
            assert!(
                !log.iter().any(|r| r.service == service),
                "the endpoint was dead: {context}"
            );
            if call != Call::AsCallback {
                assert!(
                    stderr.contains("Connection refused") || stderr.contains("connection refused"),
                    "{context}"
                );
            }
        }
        _ => assert!(!calls.is_empty(), "the call was made: {context}"),
    }
    match fault {
        Fault::Http401Once => {
            let refreshed = match call {
                Call::Metadata | Call::MetadataIdentity => {
                    log.iter()
                        .filter(|r| r.service == "metadata" && r.method == "PUT")
                        .count()
                        >= 2
                }
                _ => {
                    log.iter()
                        .filter(|r| r.service == "iam" && r.status == 201)
                        .count()
                        >= if call == Call::IamToken { 1 } else { 2 }
                }
            };
            assert!(refreshed, "credential refreshed after the 401: {context}");
            assert_eq!(calls[0].status, 401, "{context}");
            assert!(calls.len() >= 2, "retried after the refresh: {context}");
        }
        Fault::Http429RetryAfter if !call.is_metadata() => {
            assert!(calls.len() >= 2, "{context}");
            let gap = Duration::from_nanos(calls[1].mono_ns - calls[0].mono_ns);
            assert!(
                gap >= Duration::from_secs(1),
                "Retry-After: 1 honoured, retried after {gap:?}: {context}"
            );
        }
        Fault::Http500 => assert!(calls.len() >= 2, "retried until the deadline: {context}"),
        Fault::Oversized100MiB | Fault::Http403 => {
            assert_eq!(calls.len(), 1, "not retried: {context}")
        }
        _ => {}
    }
    // A member already gone (404) is success without a 2xx, and so is a lasting failure of a call
    // that only informs the stop.
    let lasting = matches!(fault, Fault::Http500 | Fault::Http403 | Fault::Http404);
    if want == 0
        && fault != Fault::ConnectRefused
        && (call, fault) != (Call::Delete, Fault::Http404)
        && !(call.informs_only() && lasting)
    {
        assert!(
            calls.iter().any(|r| (200..300).contains(&r.status)),
            "answered at last: {context}"
        );
    }
    // A call that only informs the stop does not hold it back; a pool that does not exist does.
    let deleted = log
        .iter()
        .any(|r| r.method == "DELETE" && r.service == "elb" && r.status == 204);
    if call.informs_only() {
        assert_eq!(deleted, want == 0, "deregistered iff exit 0: {context}");
    }
    if call == Call::ShowPool && want == 0 && (lasting || fault == Fault::Oversized100MiB) {
        assert!(
            stderr.contains("could not read the pool's connection_drain"),
            "the failure is said: {context}"
        );
    }
    if fault == Fault::ResetMidBody && !matches!(call, Call::Delete | Call::AsCallback) {
        // The body was needed and cut by the reset: the agent saw the reset, and retried.
        assert!(
            stderr
                .lines()
                .any(|l| l.contains("retrying") && l.to_ascii_lowercase().contains("reset")),
            "{context}"
        );
    }
    if fault == Fault::DelayPastTimeout {
        // The delayed request was made (the fault is used up), and the agent gave up on it at its
        // request timeout and retried. (The simulator never logs it: the agent's disconnect cancels
        // the answer.)
        assert_eq!(
            s.sim.shared().lock_for_tests(|inner| inner.faults.len()),
            0,
            "{context}"
        );
        assert!(
            stderr
                .lines()
                .any(|l| l.contains("retrying") && l.contains("timed out")),
            "{context}"
        );
    }

    // One line per cell (`-- --nocapture` shows them): the table the README's counts come from.
    println!(
        "cell {call:?} {fault:?}: exit {want} in {:?}, peak RSS {} KiB, {} requests of the call",
        exit.at - began,
        exit.peak_rss_kib,
        calls.len()
    );
    drop(agent);
    drop(s);
}

/// One module per call, one test per fault: `cargo test --test fault_matrix delete::` runs a row,
/// `-- http_503` a column.
macro_rules! row {
    ($module:ident, $call:expr) => {
        mod $module {
            use super::{Call, Fault, cell};
            #[test]
            fn http_500() {
                cell($call, Fault::Http500)
            }
            #[test]
            fn http_503() {
                cell($call, Fault::Http503)
            }
            #[test]
            fn http_429() {
                cell($call, Fault::Http429)
            }
            #[test]
            fn http_429_retry_after() {
                cell($call, Fault::Http429RetryAfter)
            }
            #[test]
            fn http_409() {
                cell($call, Fault::Http409)
            }
            #[test]
            fn http_401_once() {
                cell($call, Fault::Http401Once)
            }
            #[test]
            fn http_403() {
                cell($call, Fault::Http403)
            }
            #[test]
            fn http_404() {
                cell($call, Fault::Http404)
            }
            #[test]
            fn connect_refused() {
                cell($call, Fault::ConnectRefused)
            }
            #[test]
            fn delay_past_timeout() {
                cell($call, Fault::DelayPastTimeout)
            }
            #[test]
            fn reset_mid_body() {
                cell($call, Fault::ResetMidBody)
            }
            #[test]
            fn truncated_json() {
                cell($call, Fault::TruncatedJson)
            }
            #[test]
            fn malformed_json() {
                cell($call, Fault::MalformedJson)
            }
            #[test]
            fn oversized_100mib() {
                cell($call, Fault::Oversized100MiB)
            }
        }
    };
}

row!(iam_token, Call::IamToken);
row!(metadata, Call::Metadata);
row!(metadata_identity, Call::MetadataIdentity);
row!(list_pools, Call::ListPools);
row!(list_members, Call::ListMembers);
row!(show_pool, Call::ShowPool);
row!(show_member, Call::ShowMember);
row!(delete, Call::Delete);
row!(create_member, Call::CreateMember);
row!(as_callback, Call::AsCallback);

/// The reset fault is what it says: the headers and the first bytes of the body arrive, then the
/// connection is reset (ECONNRESET), not closed.
#[test]
fn reset_mid_body_is_an_rst_after_part_of_the_body() {
    use std::io::{Read, Write};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let _in_runtime = rt.enter();
    let s = rt.block_on(setup());
    s.sim.inject_fault(elb_sim::Fault::new(
        "GET",
        "/v3/*/elb/pools",
        vec![FaultAction::ResetMidBody],
    ));
    let addr = s.sim.api_url().trim_start_matches("http://").to_owned();
    let mut conn = std::net::TcpStream::connect(&addr).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        conn,
        "GET /v3/{PROJECT}/elb/pools HTTP/1.1\r\nHost: {addr}\r\n\r\n"
    )
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        match conn.read(&mut buf) {
            Ok(0) => break None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break Some(e.kind()),
        }
    };
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(text.contains("content-length: 4096"), "{text}");
    let body = &text[text.find("\r\n\r\n").expect("headers end") + 4..];
    assert!(
        !body.is_empty() && body.len() < 4096,
        "part of the body: {body:?}"
    );
    assert_eq!(end, Some(std::io::ErrorKind::ConnectionReset), "{text}");
}

/// A `drain` with the ELB API unreachable ends at `drain.timeout`, not after one full retry budget per
/// call on the way (ShowPool, ShowMember, then the DELETE: three budgets, one after the other).
#[test]
fn a_drain_with_the_api_unreachable_ends_at_its_deadline_not_after_every_retry_budget() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let _in_runtime = rt.enter();
    let s = rt.block_on(start(Call::Delete));
    let retry_deadline = Duration::from_secs(10);
    let drain_timeout = Duration::from_secs(1);
    let path = config(&s, Call::Delete, Fault::ConnectRefused);
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(
            &format!("retry_deadline = {}", ms(RETRY_DEADLINE)),
            &format!("retry_deadline = {}", ms(retry_deadline)),
        )
        .replace(
            &format!("timeout = {}", ms(DRAIN_TIMEOUT)),
            &format!("timeout = {}", ms(drain_timeout)),
        );
    std::fs::write(&path, text).unwrap();
    let _held = s.connections_to_us(1);
    let mut agent = ProcGuard::spawn(agent(&path, &["drain"]));
    let began = Instant::now();
    let mut peak = 0;
    let exit = wait_exit(&mut agent, retry_deadline * 3 + SLACK, &mut peak).expect("exits");
    let took = exit.at - began;
    assert_eq!(exit.code, Some(69), "{}", agent.stderr());
    assert!(
        took >= drain_timeout && took < drain_timeout + SLACK && took < retry_deadline,
        "exited after {took:?} (drain.timeout {drain_timeout:?}, retry_deadline {retry_deadline:?}):\n{}",
        agent.stderr()
    );
}
