//! elb-sim: the Huawei Cloud side of elb-drain's world, as a local program.
//!
//! * [`scenario`]: what the simulated cloud starts with (TOML or a Rust builder);
//! * [`state`]: the data, faults, request log and rate limits behind one mutex;
//! * [`api`]: ELB v3, IAM and Auto Scaling over HTTP, with the real paths, bodies and error codes;
//! * [`auth`]: server-side verification of AK/SK (`SDK-HMAC-SHA256`) signatures;
//! * [`metadata`]: the ECS metadata service of one server;
//! * [`admin`]: the admin API for tests and demos (faults, log, scale-in, ...);
//! * [`dataplane`]: a real TCP load balancer in front of the members;
//! * [`health`]: TCP health checks that drive `operating_status`;
//! * [`demo`]: `elb-sim demo`, a stop with and without elb-drain, side by side;
//! * [`nested_cargo`]: a `cargo` command for builds started from under cargo (the demo, benches, xtask);
//! * [`tls`]: optional https on the API listener, with a throwaway CA for tests.
//!
//! [`Sim::start`] runs it all in-process on `127.0.0.1:0` ports; the `elb-sim` binary runs it as a
//! process. Nothing here ever talks to a real cloud.

// Handlers return an HTTP error answer as their `Err`: the idiomatic axum shape, cold paths only.
#![allow(clippy::result_large_err)]

pub mod admin;
pub mod api;
pub mod auth;
pub mod dataplane;
pub mod demo;
pub mod health;
pub mod metadata;
pub mod nested_cargo;
pub mod scenario;
pub mod state;
pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use scenario::{MetadataPatch, PoolPatch, Scenario, Seed, SettingsPatch};
pub use state::{AuthKind, Fault, FaultAction, HookState, LoggedRequest};
pub use tls::{SelfSigned, TlsConfig, TlsError};

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("elb-sim: scenario: {0}")]
    Scenario(String),
    #[error("elb-sim: cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("elb-sim: {0}")]
    Tls(#[from] TlsError),
}

/// What the HTTP handlers share.
pub struct Shared {
    inner: Mutex<state::Inner>,
    listeners: Mutex<HashMap<String, dataplane::Listener>>,
    /// CLOCK_MONOTONIC at start, the origin of [`LoggedRequest::sim_ns`].
    started_mono_ns: u64,
    /// Ends every listener and task, also those added while running.
    cancel: CancellationToken,
    /// TLS handshakes on the API listener that failed or timed out (a client refusing the
    /// certificate, most often).
    tls_failures: Arc<AtomicU64>,
}

impl Shared {
    /// Nanoseconds since the simulator started, for a request that arrived at CLOCK_MONOTONIC `mono_ns`.
    pub(crate) fn since_start(&self, mono_ns: u64) -> u64 {
        mono_ns.saturating_sub(self.started_mono_ns)
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, state::Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn log(&self, entry: LoggedRequest) {
        tracing::debug!(service = %entry.service, method = %entry.method, path = %entry.path, status = entry.status, "request");
        self.lock().log.push(entry);
    }

    pub fn request_log(&self) -> Vec<LoggedRequest> {
        self.lock().log.clone()
    }

    /// TLS handshakes on the API listener that did not complete (0 without TLS).
    pub fn tls_handshake_failures(&self) -> u64 {
        self.tls_failures.load(Ordering::Relaxed)
    }

    pub fn inject_fault(&self, fault: Fault) {
        self.lock().faults.push(fault);
    }

    pub fn set_rate_limit(&self, project_id: &str, per_second: f64, burst: u32) {
        let burst = f64::from(burst.max(1));
        self.lock().buckets.insert(
            project_id.into(),
            state::Bucket {
                per_second,
                burst,
                tokens: burst,
                at: std::time::Instant::now(),
            },
        );
    }

    pub fn clear_rate_limits(&self) {
        self.lock().buckets.clear();
    }

    pub fn expire_tokens(&self) {
        let past = SystemTime::now() - Duration::from_secs(1);
        for t in self.lock().tokens.values_mut() {
            t.expires = past;
        }
    }

    pub fn members(&self, pool_id: &str) -> Vec<serde_json::Value> {
        let inner = self.lock();
        let Some(pool) = inner.pool(pool_id) else {
            return Vec::new();
        };
        inner
            .members
            .iter()
            .filter(|m| m.pool_id == pool_id)
            .map(|m| m.to_json(pool))
            .collect()
    }

    /// Direct access to the state, for tests that need to do what no API offers (someone else's
    /// change behind the agent's back).
    pub fn lock_for_tests<R>(&self, f: impl FnOnce(&mut state::Inner) -> R) -> R {
        let mut inner = self.lock();
        let r = f(&mut inner);
        inner.publish();
        r
    }

    /// Adds `seed` to the running simulator (all or nothing for the state), then binds its listeners.
    pub async fn seed(&self, seed: &Seed) -> Result<Seeded, SimError> {
        let members = {
            let mut inner = self.lock();
            let ids = inner.apply_seed(seed).map_err(SimError::Scenario)?;
            inner.publish();
            ids
        };
        let mut listeners = HashMap::new();
        for l in &seed.listener {
            listeners.insert(l.id.clone(), self.bind_listener(l).await?);
        }
        Ok(Seeded { members, listeners })
    }

    /// Starts the data plane of one listener; its pool must exist.
    async fn bind_listener(&self, l: &scenario::ListenerConfig) -> Result<SocketAddr, SimError> {
        let addr: SocketAddr = l.listen.parse().map_err(|_| {
            SimError::Scenario(format!("listener {}: bad listen {:?}", l.id, l.listen))
        })?;
        let view = {
            let mut inner = self.lock();
            let current = inner.view(&l.pool_id);
            // Every listener of a pool follows the same view.
            match inner.views.get(&l.pool_id) {
                Some(tx) => tx.subscribe(),
                None => {
                    let (tx, rx) = watch::channel(current);
                    inner.views.insert(l.pool_id.clone(), tx);
                    rx
                }
            }
        };
        let dp = dataplane::Listener::bind(addr, view, self.cancel.clone())
            .await
            .map_err(|source| SimError::Bind {
                addr: l.listen.clone(),
                source,
            })?;
        let local = dp.local_addr();
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(l.id.clone(), dp);
        Ok(local)
    }

    /// Every data-plane listener's address, by listener id.
    pub fn listener_addrs(&self) -> HashMap<String, SocketAddr> {
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(id, l)| (id.clone(), l.local_addr()))
            .collect()
    }

    pub fn update_pool(&self, pool_id: &str, patch: &PoolPatch) -> Result<(), SimError> {
        self.lock()
            .update_pool(pool_id, patch)
            .map_err(SimError::Scenario)
    }

    pub fn set_metadata(&self, patch: &MetadataPatch) -> Result<(), SimError> {
        self.lock()
            .update_metadata(patch)
            .map_err(SimError::Scenario)
    }

    /// Applies `patch` whole, or nothing of it when a value is out of range.
    pub fn update_settings(&self, patch: &scenario::SettingsPatch) -> Result<(), SimError> {
        if let Some(cap) = patch.page_size_cap {
            scenario::check_page_size_cap(cap).map_err(SimError::Scenario)?;
        }
        let mut inner = self.lock();
        if let Some(d) = patch.propagation_delay {
            inner.settings.propagation_delay = d;
        }
        if let Some(cap) = patch.page_size_cap {
            inner.settings.page_size_cap = cap;
        }
        inner.publish();
        Ok(())
    }

    pub fn connection_stats(&self) -> Vec<(String, usize, u64)> {
        let listeners = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: HashMap<String, (usize, u64)> = HashMap::new();
        for l in listeners.values() {
            for (id, live, accepted) in l.stats() {
                let e = all.entry(id).or_default();
                e.0 += live;
                e.1 += accepted;
            }
        }
        let mut out: Vec<_> = all.into_iter().map(|(id, (l, a))| (id, l, a)).collect();
        out.sort();
        out
    }
}

/// What [`Sim::seed`] added that the caller could not know in advance.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Seeded {
    /// The ids of the seed's members, in its order (generated where it gave none).
    pub members: Vec<String>,
    /// Where each of the seed's listeners listens.
    pub listeners: HashMap<String, SocketAddr>,
}

/// A running simulator. Dropping it stops every listener and task.
pub struct Sim {
    shared: Arc<Shared>,
    api: SocketAddr,
    metadata: SocketAddr,
    admin: SocketAddr,
    /// The API listener speaks TLS.
    api_tls: bool,
    /// The CA that signed the API's certificate, when the simulator made it.
    tls_ca_pem: Option<String>,
    cancel: CancellationToken,
    /// The HTTP servers and the clocks, awaited by [`Sim::shutdown`].
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

async fn bind(addr: &str) -> Result<TcpListener, SimError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| SimError::Bind {
            addr: addr.into(),
            source,
        })
}

fn serve<L>(
    listener: L,
    router: axum::Router,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(cancel.cancelled_owned())
            .await;
    })
}

impl Sim {
    pub async fn start(scenario: Scenario) -> Result<Sim, SimError> {
        let inner = state::Inner::from_scenario(&scenario).map_err(SimError::Scenario)?;
        // Before any port is bound: a bad certificate is a scenario error, not a half-started sim.
        let tls = scenario
            .tls
            .as_ref()
            .map(tls::Tls::from_config)
            .transpose()?;
        let cancel = CancellationToken::new();
        let shared = Arc::new(Shared {
            inner: Mutex::new(inner),
            listeners: Mutex::new(HashMap::new()),
            started_mono_ns: state::monotonic_ns(),
            cancel: cancel.clone(),
            tls_failures: Arc::new(AtomicU64::new(0)),
        });
        let s = &scenario.settings;
        let api = bind(&s.api_listen).await?;
        let metadata = bind(&s.metadata_listen).await?;
        let admin = bind(&s.admin_listen).await?;
        let (api_addr, metadata_addr, admin_addr) = (
            api.local_addr().map_err(|e| SimError::Bind {
                addr: s.api_listen.clone(),
                source: e,
            })?,
            metadata.local_addr().map_err(|e| SimError::Bind {
                addr: s.metadata_listen.clone(),
                source: e,
            })?,
            admin.local_addr().map_err(|e| SimError::Bind {
                addr: s.admin_listen.clone(),
                source: e,
            })?,
        );
        let router = |r: axum::Router<Arc<Shared>>| r.with_state(shared.clone());
        let api_router = router(axum::Router::new().fallback(api::handle));
        let api_tls = tls.is_some();
        let (api_task, tls_ca_pem) = match tls {
            Some(tls) => {
                let listener = tls::TlsListener::start(
                    api,
                    tls.acceptor,
                    shared.tls_failures.clone(),
                    cancel.clone(),
                )
                .map_err(|source| SimError::Bind {
                    addr: s.api_listen.clone(),
                    source,
                })?;
                (serve(listener, api_router, cancel.clone()), tls.ca_pem)
            }
            None => (serve(api, api_router, cancel.clone()), None),
        };
        let tasks = vec![
            api_task,
            serve(
                metadata,
                router(axum::Router::new().fallback(metadata::handle)),
                cancel.clone(),
            ),
            serve(
                admin,
                router(axum::Router::new().fallback(admin::handle)),
                cancel.clone(),
            ),
            tokio::spawn(health::run(shared.clone(), cancel.clone())),
            tokio::spawn(hook_clock(shared.clone(), cancel.clone())),
        ];
        // From here on a failure drops the Sim, which stops what already runs.
        let sim = Sim {
            shared,
            api: api_addr,
            metadata: metadata_addr,
            admin: admin_addr,
            api_tls,
            tls_ca_pem,
            cancel,
            tasks,
        };
        for l in &scenario.listener {
            sim.shared.bind_listener(l).await?;
        }
        Ok(sim)
    }

    /// `https://…` with `[tls]`, else `http://…`. With a self-signed certificate, connect to it as
    /// `127.0.0.1`, `[::1]` or `localhost`: the names the certificate is for.
    pub fn api_url(&self) -> String {
        let scheme = if self.api_tls { "https" } else { "http" };
        format!("{scheme}://{}", self.api)
    }

    /// The CA that signed the API's certificate, PEM, when the simulator generated it
    /// ([`TlsConfig::self_signed`]).
    pub fn tls_ca_pem(&self) -> Option<&str> {
        self.tls_ca_pem.as_deref()
    }

    /// TLS handshakes on the API listener that did not complete: a client that refused the
    /// certificate shows here, and never in [`Sim::request_log`].
    pub fn tls_handshake_failures(&self) -> u64 {
        self.shared.tls_handshake_failures()
    }

    pub fn metadata_url(&self) -> String {
        format!("http://{}", self.metadata)
    }

    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    pub fn listener_addr(&self, listener_id: &str) -> Option<SocketAddr> {
        self.shared.listener_addrs().get(listener_id).copied()
    }

    /// Every data-plane listener's address, by listener id (also those seeded while running).
    pub fn listeners(&self) -> HashMap<String, SocketAddr> {
        self.shared.listener_addrs()
    }

    /// Adds projects, users, keys, pools, listeners, members, instances or scaling groups to the
    /// running simulator, as the admin API's `POST /seed` does.
    pub async fn seed(&self, seed: Seed) -> Result<Seeded, SimError> {
        self.shared.seed(&seed).await
    }

    /// Changes a pool as the console would (deletion protection, connection drain, health monitor).
    pub fn update_pool(&self, pool_id: &str, patch: PoolPatch) -> Result<(), SimError> {
        self.shared.update_pool(pool_id, &patch)
    }

    /// Changes how the simulator behaves from now on (the propagation delay of removals).
    pub fn update_settings(&self, patch: SettingsPatch) -> Result<(), SimError> {
        self.shared.update_settings(&patch)
    }

    /// Switches what the metadata service describes, or how it treats session tokens.
    pub fn set_metadata(&self, patch: MetadataPatch) -> Result<(), SimError> {
        self.shared.set_metadata(&patch)
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The pool's members, as the API would show them.
    pub fn members(&self, pool_id: &str) -> Vec<serde_json::Value> {
        self.shared.members(pool_id)
    }

    pub fn member_exists(&self, pool_id: &str, member_id: &str) -> bool {
        self.shared
            .lock()
            .members
            .iter()
            .any(|m| m.pool_id == pool_id && m.id == member_id)
    }

    pub fn request_log(&self) -> Vec<LoggedRequest> {
        self.shared.request_log()
    }

    pub fn inject_fault(&self, fault: Fault) {
        self.shared.inject_fault(fault);
    }

    pub fn set_rate_limit(&self, project_id: &str, per_second: f64, burst: u32) {
        self.shared.set_rate_limit(project_id, per_second, burst);
    }

    /// Lifts every project's rate limit.
    pub fn clear_rate_limits(&self) {
        self.shared.clear_rate_limits();
    }

    pub fn expire_tokens(&self) {
        self.shared.expire_tokens();
    }

    /// Every IAM token and temporary secret this simulator has handed out: tests look for them in
    /// places they must never appear (logs, status output).
    pub fn issued_secrets(&self) -> Vec<String> {
        let inner = self.shared.lock();
        let mut out: Vec<String> = inner.tokens.keys().cloned().collect();
        for key in inner.keys.values().filter(|k| k.security_token.is_some()) {
            out.push(key.sk.clone());
            out.extend(key.security_token.clone());
        }
        out
    }

    pub fn start_scale_in(&self, instance_id: &str) -> Result<(), SimError> {
        api::start_scale_in(&mut self.shared.lock(), instance_id).map_err(SimError::Scenario)
    }

    /// Hangs the instance's launching hooks, as a scale-out does while the new instance is set up.
    pub fn start_launch(&self, instance_id: &str) -> Result<(), SimError> {
        api::start_launch(&mut self.shared.lock(), instance_id).map_err(SimError::Scenario)
    }

    pub fn hooks(&self, scaling_group_id: &str) -> Vec<HookState> {
        self.shared
            .lock()
            .hooks
            .iter()
            .filter(|h| h.scaling_group_id == scaling_group_id)
            .cloned()
            .collect()
    }

    /// Connections the data plane has open to this member now.
    pub fn live_connections(&self, member_id: &str) -> usize {
        self.shared
            .connection_stats()
            .into_iter()
            .find(|(id, _, _)| id == member_id)
            .map_or(0, |(_, l, _)| l)
    }

    /// Connections the data plane ever sent to this member.
    pub fn accepted_connections(&self, member_id: &str) -> u64 {
        self.shared
            .connection_stats()
            .into_iter()
            .find(|(id, _, _)| id == member_id)
            .map_or(0, |(_, _, a)| a)
    }

    /// Stops everything and waits (at most two seconds) until the HTTP servers have closed their
    /// ports and the clocks have stopped.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        let tasks = std::mem::take(&mut self.tasks);
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            futures_util::future::join_all(tasks),
        )
        .await;
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Times out hanging lifecycle hooks: at its deadline a hook takes its default result.
async fn hook_clock(shared: Arc<Shared>, cancel: CancellationToken) {
    loop {
        {
            let mut inner = shared.lock();
            let now = SystemTime::now();
            for i in 0..inner.hooks.len() {
                let h = &inner.hooks[i];
                if h.status == "HANGING" && h.deadline <= now {
                    let result = h.default_result.clone();
                    tracing::info!(instance = %h.instance_id, hook = %h.lifecycle_hook_name, %result, "lifecycle hook timed out");
                    inner.end_hook(i, &result, true);
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = cancel.cancelled() => return,
        }
    }
}
