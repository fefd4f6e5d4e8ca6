//! The agent: turns a validated [`Config`] into a ready-to-fire drain.
//!
//! [`Agent::prepare`] does every slow thing up front: builds the one HTTP client, fetches the
//! credential, learns the project and this server's identity, resolves the memberships and reads the
//! pools' `connection_drain`. After that, [`Agent::drain`] puts nothing on the wire but the DELETEs
//! themselves, all memberships in parallel, and hands the rest to the drain engine.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::future::join_all;
use tokio::time::Instant;

use crate::census::{self, CensusSpec};
use crate::cloud::elb::Member;
use crate::cloud::metadata::Metadata;
use crate::cloud::{self, CloudError, DeleteOutcome, Elb};
use crate::config::{Config, Mode};
use crate::credentials;
use crate::drain::{self, Deregistration, Plan, Sink, Verdict};
use crate::ids::{MemberId, PoolId};
use crate::state::{Record, State};

/// One membership of this server: what a DELETE needs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Membership {
    pub pool_id: PoolId,
    pub member_id: MemberId,
    pub address: Option<IpAddr>,
    pub protocol_port: Option<u16>,
    /// As the load balancer sees it, when known (discovered, or asked by `check`).
    pub health: Option<String>,
    /// As discovery listed them: what `register` must recreate a membership with when no state
    /// snapshot recorded it (one found by re-discovery after start).
    #[serde(skip)]
    pub weight: Option<u32>,
    #[serde(skip)]
    pub subnet_cidr_id: Option<String>,
}

/// Why the agent could not get ready. The binary maps the class to an exit code.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The configuration cannot work (a pool that does not exist, no agency, a missing identity): 78.
    #[error("{0}")]
    Config(String),
    /// The cloud could not be reached or refused after retries: 69.
    #[error("{0}")]
    Unavailable(String),
}

impl From<CloudError> for PrepareError {
    fn from(e: CloudError) -> Self {
        if e.is_configuration() {
            PrepareError::Config(e.to_string())
        } else {
            PrepareError::Unavailable(e.to_string())
        }
    }
}

pub struct Agent {
    pub config: Config,
    pub elb: Elb,
    /// This server as the metadata service describes it, when it was asked.
    pub identity: Option<Identity>,
    memberships: Arc<RwLock<Vec<Membership>>>,
    /// When `memberships` was last resolved (at start, or by a re-discovery that succeeded).
    resolved_at: Arc<std::sync::Mutex<std::time::Instant>>,
    /// The load balancers' cut that bounds the drain (`binding_cut`): none, or the pool whose
    /// `connection_drain` timeout is the latest, when every pool has one.
    pub lb_drain: Vec<(PoolId, Duration)>,
    pub credential: Arc<dyn credentials::Credential>,
    metadata: Metadata,
    /// The scale-in hook watch, with `[autoscaling]` configured.
    pub hooks: Option<crate::hook::HookWatch>,
    state: std::sync::Mutex<State>,
    /// ShowMember answers start-up already had (`learn_ports`; `None`: 404), for the state snapshot to
    /// use instead of asking again before a stop's DELETEs.
    shown: std::sync::Mutex<HashMap<(PoolId, MemberId), Option<Member>>>,
}

/// Memberships resolved this recently are not discovered again at the stop: `drain` resolved them a
/// moment before.
const FRESH: Duration = Duration::from_secs(1);

/// The discovery at the stop ([`Agent::deregister`]) gives up after this. The DELETEs of the
/// memberships known never wait for it (it follows them); the drain's deregistration phase does, so an
/// API that stopped answering lists costs a stop at most this.
pub const STOP_DISCOVERY_BOUND: Duration = Duration::from_secs(5);

/// Who this server is, for discovery and for `check`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Identity {
    pub instance_id: Option<String>,
    pub region: Option<String>,
    pub address: Option<IpAddr>,
}

impl Agent {
    /// Resolves everything a drain will need. Nothing is changed in the cloud.
    pub async fn prepare(config: Config) -> Result<Agent, PrepareError> {
        let http = cloud::http_client(&cloud::HttpSettings {
            connect_timeout: config.cloud.connect_timeout,
            request_timeout: config.cloud.request_timeout,
            ca_file: config.cloud.ca_file.clone(),
            allow_insecure_http: config.cloud.allow_insecure_http,
        })?;
        let metadata = Metadata::new(http.clone(), config.cloud.metadata_endpoint.clone());
        // The metadata service is asked only for what the configuration leaves open.
        let discovering =
            config.members.is_empty() || config.members.iter().any(|m| m.member_id.is_none());
        // Discovery needs this server's address or instance ID: from the config if it says, else metadata.
        let knows_itself = config.cloud.address.is_some()
            || config.cloud.instance_id.is_some()
            || (!config.members.is_empty()
                && config
                    .members
                    .iter()
                    .all(|m| m.member_id.is_some() || m.address.is_some()));
        let needs_region = config.cloud.region.is_none() && config.cloud.elb_endpoint.is_none();
        let needs_instance = config.autoscaling.is_some() && config.cloud.instance_id.is_none();
        let from_metadata = if config.cloud.project_id.is_none()
            || needs_region
            || (discovering && !knows_itself)
            || needs_instance
        {
            Some(metadata.identity().await?)
        } else {
            None
        };
        let project_id = match (&config.cloud.project_id, &from_metadata) {
            (Some(p), _) => p.clone(),
            (None, Some(m)) => m.project_id.clone().ok_or_else(|| {
                PrepareError::Config(
                    "config: cloud.project_id: not configured and the metadata service has none"
                        .into(),
                )
            })?,
            (None, None) => unreachable!("asked above"),
        };
        let region = config
            .cloud
            .region
            .clone()
            .or_else(|| from_metadata.as_ref().and_then(|m| m.region.clone()));
        let elb_endpoint = config
            .cloud
            .elb_endpoint(region.as_deref())
            .ok_or_else(|| {
                PrepareError::Config(
                    "config: cloud.region: not configured and not known to the metadata service"
                        .into(),
                )
            })?;
        let credential = credentials::from_config(
            &config,
            &http,
            &project_id,
            metadata.clone(),
            region.as_deref(),
        )
        .await?;
        let retry = cloud::RetryPolicy {
            jitter: config.cloud.retry_jitter,
            ..cloud::RetryPolicy::within(config.cloud.retry_deadline)
        };
        let hooks = match &config.autoscaling {
            Some(a) => {
                let endpoint = config.cloud.as_endpoint(region.as_deref()).ok_or_else(|| {
                    PrepareError::Config(
                        "config: cloud.as_endpoint: needed (or cloud.region) for [autoscaling]"
                            .into(),
                    )
                })?;
                let instance = match (&config.cloud.instance_id, &from_metadata) {
                    (Some(i), _) => i.clone(),
                    (None, Some(m)) => m.instance_id.clone(),
                    (None, None) => unreachable!("asked above"),
                };
                Some(crate::hook::HookWatch {
                    api: cloud::autoscaling::AutoScaling::new(
                        cloud::Service::new(http.clone(), endpoint, credential.clone(), retry),
                        project_id.clone(),
                    ),
                    group: a.scaling_group_id.clone(),
                    instance,
                    poll_interval: a.poll_interval,
                    extend_margin: a.extend_margin,
                    on_failure: a.on_failure,
                    name: a.hook_name.clone(),
                })
            }
            None => None,
        };
        let elb = Elb::new(http, elb_endpoint, project_id, credential.clone(), retry)
            .with_page_size(config.cloud.page_size);
        let identity = match from_metadata {
            Some(m) if discovering && !knows_itself => {
                let address = match config.cloud.address {
                    Some(a) => Some(a),
                    None => Some(IpAddr::V4(metadata.local_ipv4().await?)),
                };
                Some(Identity {
                    instance_id: Some(m.instance_id.to_string()),
                    region: region.clone(),
                    address,
                })
            }
            Some(m) => Some(Identity {
                instance_id: Some(m.instance_id.to_string()),
                region: region.clone(),
                address: config.cloud.address,
            }),
            None => None,
        };
        let mut memberships = resolve(&config, &elb, identity.as_ref()).await?;
        let resolved_at = std::time::Instant::now();
        let shown = if config.drain.ports.is_empty() {
            learn_ports(&elb, &mut memberships).await
        } else {
            HashMap::new()
        };
        warn_if_not_local(
            identity
                .as_ref()
                .and_then(|i| i.address)
                .or(config.cloud.address)
                .into_iter()
                .chain(memberships.iter().filter_map(|m| m.address)),
        );
        let lb_drain = connection_drain(&elb, &memberships).await?;
        let config_state_file = config.drain.state_file.clone();
        Ok(Agent {
            config,
            elb,
            identity,
            memberships: Arc::new(RwLock::new(memberships)),
            resolved_at: Arc::new(std::sync::Mutex::new(resolved_at)),
            lb_drain,
            credential,
            metadata,
            hooks,
            state: std::sync::Mutex::new(
                State::load_within(&config_state_file, crate::state::ACCESS_BOUND).await,
            ),
            shown: std::sync::Mutex::new(shown),
        })
    }

    /// The memberships as last resolved.
    pub fn memberships(&self) -> Vec<Membership> {
        self.memberships
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether memberships are discovered (no `member_id` somewhere), so worth re-discovering.
    pub fn discovers(&self) -> bool {
        self.config.members.is_empty() || self.config.members.iter().any(|m| m.member_id.is_none())
    }

    /// Resolves the memberships again now (after registering, the member IDs are new).
    pub async fn rediscover(&self) -> Result<(), PrepareError> {
        let found = resolve(&self.config, &self.elb, self.identity.as_ref()).await?;
        *self.resolved_at.lock().unwrap_or_else(|p| p.into_inner()) = std::time::Instant::now();
        *self.memberships.write().unwrap_or_else(|p| p.into_inner()) = found;
        Ok(())
    }

    /// Re-discovers the memberships every `every` while the daemon serves, so a membership added by
    /// someone else after start is drained too. Only runs when discovery is in use.
    pub fn spawn_rediscovery(&self, every: Duration) -> Option<tokio::task::JoinHandle<()>> {
        if !self.discovers() {
            return None;
        }
        let (config, elb, identity, live, resolved_at) = (
            self.config.clone(),
            self.elb.clone(),
            self.identity.clone(),
            self.memberships.clone(),
            self.resolved_at.clone(),
        );
        Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match resolve(&config, &elb, identity.as_ref()).await {
                    Ok(found) => {
                        *resolved_at.lock().unwrap_or_else(|p| p.into_inner()) =
                            std::time::Instant::now();
                        let mut current = live.write().unwrap_or_else(|p| p.into_inner());
                        if *current != found {
                            tracing::info!(
                                before = current.len(),
                                now = found.len(),
                                "memberships changed"
                            );
                            warn_if_not_local(found.iter().filter_map(|m| m.address));
                            *current = found;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "re-discovery failed; keeping the memberships known")
                    }
                }
            }
        }))
    }

    /// The memberships with their current health, asking ShowMember where it is not known. A member
    /// that no longer exists shows `MISSING`.
    pub async fn memberships_with_health(&self) -> Vec<Membership> {
        let memberships = self.memberships();
        join_all(memberships.iter().map(|m| async {
            if m.health.is_some() {
                return m.clone();
            }
            let mut m = m.clone();
            m.health = Some(match self.elb.show_member(&m.pool_id, &m.member_id).await {
                Ok(member) => {
                    m.address = m.address.or(member.address.parse().ok());
                    m.protocol_port = m.protocol_port.or(Some(member.protocol_port));
                    member.health()
                }
                Err(CloudError::Api { status: 404, .. }) => "MISSING".into(),
                Err(e) => format!("unknown ({e})"),
            });
            m
        }))
        .await
    }

    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    pub fn plan(&self) -> Plan {
        Plan {
            settle: self.config.drain.settle,
            timeout: self.config.drain.timeout,
            poll_interval: self.config.drain.poll_interval,
        }
    }

    /// What the census counts: `drain.ports`, else every membership's port (configured, discovered or
    /// learned from the API), including those an earlier stop already removed (a drain restarted after
    /// a crash no longer discovers them, but their connections are still the ones to wait for).
    pub fn census_spec(&self) -> CensusSpec {
        let mut ports = self.config.drain.ports.clone();
        if ports.is_empty() {
            let removed: Vec<u16> = self
                .state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .memberships
                .iter()
                .filter(|r| r.removed.is_some())
                .filter_map(|r| r.protocol_port)
                .collect();
            // The configured members' ports too: one not (or no longer) in its pool may still have
            // connections open.
            ports = self
                .memberships()
                .iter()
                .filter_map(|m| m.protocol_port)
                .chain(removed)
                .chain(self.config.drain_ports())
                .collect();
            ports.sort_unstable();
            ports.dedup();
        }
        CensusSpec {
            ports,
            exclude_peers: self.config.drain.exclude_peers.clone(),
        }
    }

    /// Deletes every membership in parallel: those known at once, then, where memberships are
    /// discovered, those a discovery run right after them finds that were not known (given up after
    /// [`STOP_DISCOVERY_BOUND`]; none when the list is under a second old as the stop begins). One
    /// result per membership, in the order of [`Agent::memberships`] afterwards; `on_each(done,
    /// total)` as each is answered.
    pub async fn deregister(
        &self,
        on_each: &(dyn Fn(usize, usize) + Sync),
    ) -> Vec<Result<DeleteOutcome, CloudError>> {
        let known = self.memberships();
        // How old the list is as the stop begins, not once its DELETEs are answered.
        let age = self
            .resolved_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed();
        let done = std::sync::atomic::AtomicUsize::new(0);
        let mut results = self
            .deregister_these(&known, known.len(), &done, on_each)
            .await;
        // After the DELETEs, not beside them: a listing paged while our own DELETEs take this server
        // out of pools is a listing of a changing set (a marker naming a pool it just left is
        // refused, or pages shift), and the DELETEs of what is known never wait for a listing.
        let late = if !self.discovers() || age < FRESH {
            Vec::new()
        } else {
            self.discover_at_stop(&known).await
        };
        if !late.is_empty() {
            self.memberships
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .extend(late.iter().cloned());
            let total = known.len() + late.len();
            results.extend(self.deregister_these(&late, total, &done, on_each).await);
        }
        results
    }

    /// One more discovery at the stop, run once the DELETEs of the memberships known are answered
    /// (where memberships are discovered, and were resolved at least [`FRESH`] before the stop: not
    /// for `drain`, which just did): the memberships it finds that were not known (added since the
    /// latest re-discovery, up to `cloud.discovery_interval` ago). None when it fails or takes longer
    /// than [`STOP_DISCOVERY_BOUND`] (said: the stop goes on with what was known).
    async fn discover_at_stop(&self, known: &[Membership]) -> Vec<Membership> {
        let found = tokio::time::timeout(
            STOP_DISCOVERY_BOUND,
            resolve(&self.config, &self.elb, self.identity.as_ref()),
        )
        .await;
        let found = match found {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "discovery at the stop failed; the memberships known are deregistered");
                return Vec::new();
            }
            Err(_) => {
                tracing::warn!(
                    bound_s = STOP_DISCOVERY_BOUND.as_secs(),
                    "discovery at the stop did not finish in time; the memberships known are deregistered"
                );
                return Vec::new();
            }
        };
        let late: Vec<Membership> = found
            .into_iter()
            .filter(|f| {
                !known
                    .iter()
                    .any(|k| k.pool_id == f.pool_id && k.member_id == f.member_id)
            })
            .collect();
        if !late.is_empty() {
            let ids: Vec<String> = late
                .iter()
                .map(|m| format!("{}/{}", m.pool_id, m.member_id))
                .collect();
            tracing::warn!(memberships = ?ids, "memberships added since the latest discovery: deregistering them too");
            let counted = self.census_spec().ports;
            let uncounted: Vec<u16> = late
                .iter()
                .filter_map(|m| m.protocol_port)
                .filter(|p| !counted.contains(p))
                .collect();
            if !uncounted.is_empty() {
                tracing::warn!(ports = ?uncounted, counted = ?counted, "a membership found at the stop serves a port the drain does not count: its connections are not waited for (set drain.ports)");
            }
        }
        late
    }

    /// Deregisters `memberships`, calling `on_each(done, total)` as each is answered (`done` counts
    /// across calls), and records what was done in the state file.
    async fn deregister_these(
        &self,
        memberships: &[Membership],
        total: usize,
        done: &std::sync::atomic::AtomicUsize,
        on_each: &(dyn Fn(usize, usize) + Sync),
    ) -> Vec<Result<DeleteOutcome, CloudError>> {
        let mode = self.config.drain.mode;
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let results = join_all(memberships.iter().map(|m| async {
            let started = Instant::now();
            let result = if state.record(&m.pool_id, &m.member_id).is_some_and(|r| r.removed.is_some()) {
                // An earlier stop already took it out: a second stop is a no-op.
                Ok(DeleteOutcome::AlreadyGone)
            } else {
                self.min_healthy_guard(m).await;
                match mode {
                    Mode::Delete => self.elb.delete_member(&m.pool_id, &m.member_id).await,
                    Mode::Weight0 => self.elb.update_weight(&m.pool_id, &m.member_id, 0).await.map(|_| DeleteOutcome::Deleted),
                }
            };
            let elapsed_ms = started.elapsed().as_millis() as u64;
            match &result {
                Ok(outcome) => tracing::info!(
                    pool = %m.pool_id, member = %m.member_id, elapsed_ms, outcome = ?outcome, mode = ?mode,
                    "deregistered"
                ),
                Err(e) => tracing::error!(pool = %m.pool_id, member = %m.member_id, elapsed_ms, error = %e,
                    "deregistration failed"),
            }
            on_each(done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1, total);
            result
        }))
        .await;
        // Record what was done, after the fact: the DELETEs were not delayed by a disk write.
        let state = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            Self::record_removals(&mut state, memberships, &results, mode);
            state.clone()
        };
        // Off the runtime's thread, within a bound: a filesystem that stopped answering holds
        // neither the drain nor its deadline.
        if let Err(e) = state
            .save_within(&self.config.drain.state_file, crate::state::ACCESS_BOUND)
            .await
        {
            tracing::warn!(error = %e, "could not write the state file");
        }
        results
    }

    /// Marks in `state` the memberships whose deregistration succeeded as removed by `mode`.
    fn record_removals(
        state: &mut State,
        memberships: &[Membership],
        results: &[Result<DeleteOutcome, CloudError>],
        mode: Mode,
    ) {
        for (m, r) in memberships.iter().zip(results) {
            if r.is_err() {
                continue;
            }
            // A membership found by re-discovery after the start-up snapshot has no record yet: it is
            // recorded now, with the weight and subnet its listing showed (a weight of 0 is what a
            // stop leaves, not one to restore), or `register` after a reboot would not know to put it
            // back, or would put it back at the default weight.
            if state.record(&m.pool_id, &m.member_id).is_none() {
                state.memberships.push(Record {
                    pool_id: m.pool_id.clone(),
                    member_id: m.member_id.clone(),
                    address: m.address,
                    protocol_port: m.protocol_port,
                    weight: m.weight.filter(|w| *w > 0),
                    subnet_cidr_id: m.subnet_cidr_id.clone(),
                    removed: None,
                    removed_at: None,
                });
            }
            if state
                .record(&m.pool_id, &m.member_id)
                .is_some_and(|r| r.removed.is_none())
            {
                state.mark_removed(&m.pool_id, &m.member_id, mode);
            }
        }
    }

    /// With `min_healthy` on this pool's `[[member]]`: holds the deregistration back (at most
    /// `drain.min_healthy_wait`) until enough *other* members are healthy, saying why. This server's own
    /// other memberships of the pool (other ports) are going down with it: they are not counted.
    async fn min_healthy_guard(&self, m: &Membership) {
        let Some(need) = self
            .config
            .members
            .iter()
            .filter(|s| s.pool_id == m.pool_id)
            .find_map(|s| s.min_healthy)
        else {
            return;
        };
        let ours: Vec<MemberId> = self
            .memberships()
            .into_iter()
            .filter(|o| o.pool_id == m.pool_id)
            .map(|o| o.member_id)
            .chain([m.member_id.clone()])
            .collect();
        let deadline = Instant::now() + self.config.drain.min_healthy_wait;
        loop {
            let healthy = match self.elb.list_members(&m.pool_id, &[]).await {
                Ok(members) => members
                    .iter()
                    .filter(|o| !ours.iter().any(|id| id.as_str() == o.id) && o.weight != Some(0))
                    .filter(|o| matches!(o.health().as_str(), "ONLINE" | "NO_MONITOR"))
                    .count(),
                Err(e) => {
                    tracing::warn!(pool = %m.pool_id, error = %e, "min_healthy: cannot list the pool; not waiting");
                    return;
                }
            };
            if healthy as u32 >= need {
                return;
            }
            if Instant::now() >= deadline {
                tracing::warn!(pool = %m.pool_id, healthy, need, "min_healthy: waited long enough; deregistering anyway");
                return;
            }
            tracing::warn!(
                pool = %m.pool_id, healthy, need,
                "min_healthy: only {healthy} other members are healthy (need {need}); holding the deregistration"
            );
            tokio::time::sleep(
                Duration::from_secs(1).min(deadline.saturating_duration_since(Instant::now())),
            )
            .await;
        }
    }

    /// Records the memberships (with their weight and subnet, for `register`) in the state file.
    pub async fn snapshot_state(&self) {
        let path = &self.config.drain.state_file;
        let mut state = State::load_within(path, crate::state::ACCESS_BOUND).await;
        let memberships = self.memberships();
        let mut known = std::mem::take(&mut *self.shown.lock().unwrap_or_else(|p| p.into_inner()));
        let shown = join_all(memberships.iter().map(|m| {
            let known = known.remove(&(m.pool_id.clone(), m.member_id.clone()));
            async move {
                if let Some(known) = known {
                    return known;
                }
                match self.elb.show_member(&m.pool_id, &m.member_id).await {
                    Ok(shown) => Some(shown),
                    Err(CloudError::Api { status: 404, .. }) => None,
                    Err(e) => {
                        tracing::warn!(
                            pool = %m.pool_id, member = %m.member_id, error = %e,
                            "cannot read this member for the state file; register after a crash will use the configured weight"
                        );
                        None
                    }
                }
            }
        }))
        .await;
        let mut present = Vec::new();
        let mut learned = Vec::new();
        let records = memberships
            .iter()
            .zip(shown)
            .map(|(m, shown)| {
                if m.address.is_none() {
                    learned.extend(
                        shown
                            .as_ref()
                            .and_then(|s| s.address.parse::<IpAddr>().ok()),
                    );
                }
                if shown.as_ref().is_some_and(|s| s.weight != Some(0)) {
                    present.push((m.pool_id.clone(), m.member_id.clone()));
                }
                Record {
                    pool_id: m.pool_id.clone(),
                    member_id: m.member_id.clone(),
                    address: m
                        .address
                        .or(shown.as_ref().and_then(|s| s.address.parse().ok())),
                    protocol_port: m.protocol_port.or(shown.as_ref().map(|s| s.protocol_port)),
                    weight: shown.as_ref().and_then(|s| s.weight),
                    subnet_cidr_id: shown
                        .and_then(|s| s.subnet_cidr_id)
                        .filter(|s| !s.is_empty()),
                    removed: None,
                    removed_at: None,
                }
            })
            .collect();
        warn_if_not_local(learned);
        state.merge(records);
        for (pool, member) in &present {
            state.mark_present(pool, member);
        }
        if let Err(e) = state.save_within(path, crate::state::ACCESS_BOUND).await {
            tracing::warn!(error = %e, "could not write the state file; register after a crash will rely on the config");
        }
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = state;
    }

    /// Deregisters and drains, from the moment the stop began.
    pub async fn drain(
        &self,
        started: Instant,
        sink: &dyn Sink,
        on_deregistered: &(dyn Fn(usize, usize) + Sync),
    ) -> Verdict {
        let spec = self.census_spec();
        let n = self.memberships().len();
        tracing::info!(members = n, ports = ?spec.ports, "stop: deregistering {n} memberships, then draining");
        let setup_spec = spec.clone();
        // Socket-destroy notifications subscribed before the first census (none is missed), and
        // counting only the sockets the latest census counted (by cookie).
        let setup = move || census::open_with_destroy(&setup_spec);
        let deregistration = async {
            let known = n;
            let results = self.deregister(on_deregistered).await;
            // The load balancers' cut binds only when every pool has one; a pool found at the stop
            // was never asked (ShowPool), so then none is known to bind and drain.timeout applies.
            let late = results.len() > known;
            if late && !self.lb_drain.is_empty() {
                tracing::info!(
                    "a membership found at the stop is in a pool whose connection_drain is not known: drain.timeout bounds the drain"
                );
            }
            Deregistration {
                failed: results.iter().any(|r| r.is_err()),
                lb_drain: if late {
                    Vec::new()
                } else {
                    self.lb_drain
                        .iter()
                        .map(|(p, t)| (p.to_string(), *t))
                        .collect()
                },
            }
        };
        drain::drive(self.plan(), started, deregistration, setup, sink).await
    }
}

/// A `[[member]]` given by ID alone, without `drain.ports`: the memberships' ports are what the census
/// counts, so one the API knows but the configuration does not would have its connections cut. One
/// ShowMember each, concurrently, only for those; a failure leaves it as configured, with a line that
/// says what that costs. (Addresses are learned later, by `snapshot_state`, where it reads them anyway.)
async fn learn_ports(
    elb: &Elb,
    memberships: &mut [Membership],
) -> HashMap<(PoolId, MemberId), Option<Member>> {
    let unknown = memberships.iter_mut().filter(|m| m.protocol_port.is_none());
    join_all(unknown.map(|m| async move {
        let key = (m.pool_id.clone(), m.member_id.clone());
        match elb.show_member(&m.pool_id, &m.member_id).await {
            Ok(shown) => {
                m.address = m.address.or(shown.address.parse().ok());
                m.protocol_port = Some(shown.protocol_port);
                Some((key, Some(shown)))
            }
            // Already gone: nothing of it to wait for, and its DELETE will say so.
            Err(CloudError::Api { status: 404, .. }) => Some((key, None)),
            Err(e) => {
                tracing::warn!(
                    pool = %m.pool_id, member = %m.member_id, error = %e,
                    "cannot learn this member's port; without protocol_port (or drain.ports) its connections are not counted"
                );
                None
            }
        }
    }))
    .await
    .into_iter()
    .flatten()
    .collect()
}

/// Membership IDs from the configuration, else discovered: per pool by address (and port) or instance
/// ID, or, with no `[[member]]` at all, across every pool this server is in.
async fn resolve(
    config: &Config,
    elb: &Elb,
    identity: Option<&Identity>,
) -> Result<Vec<Membership>, PrepareError> {
    let address = identity.and_then(|i| i.address).or(config.cloud.address);
    let instance = match (
        &config.cloud.instance_id,
        identity.and_then(|i| i.instance_id.as_deref()),
    ) {
        (Some(i), _) => Some(i.clone()),
        (None, Some(i)) => crate::ids::InstanceId::parse(i).ok(),
        (None, None) => None,
    };
    let found_to_membership = |m: cloud::elb::Found| Membership {
        pool_id: m.pool_id,
        member_id: m.member_id,
        address: Some(m.address),
        protocol_port: Some(m.protocol_port),
        health: Some(m.health),
        weight: m.weight,
        subnet_cidr_id: m.subnet_cidr_id,
    };
    let mut out = Vec::new();
    if config.members.is_empty() {
        if address.is_none() && instance.is_none() {
            return Err(PrepareError::Config(
                "config: [[member]]: none configured, and this server's address and instance ID are unknown".into(),
            ));
        }
        let found = elb.discover(address, instance.as_ref(), None).await?;
        if found.is_empty() {
            tracing::warn!(?address, "no membership found for this server in any pool");
        }
        out.extend(found.into_iter().map(found_to_membership));
    }
    for spec in &config.members {
        match &spec.member_id {
            Some(id) => out.push(Membership {
                pool_id: spec.pool_id.clone(),
                member_id: id.clone(),
                address: spec.address,
                protocol_port: spec.protocol_port,
                health: None,
                weight: None,
                subnet_cidr_id: None,
            }),
            None => {
                let address = spec.address.or(address);
                let found = elb
                    .discover_in_pool(
                        &spec.pool_id,
                        address,
                        instance.as_ref(),
                        spec.protocol_port,
                    )
                    .await?;
                if found.is_empty() {
                    // Not (or no longer) registered: nothing to deregister there. A stop after a stop,
                    // or before `register`; `check` reports it.
                    tracing::warn!(
                        pool = %spec.pool_id,
                        address = address.map_or("?".into(), |a| a.to_string()),
                        port = spec.protocol_port.map_or("any".into(), |p| p.to_string()),
                        "no membership of this server in the pool"
                    );
                }
                out.extend(found.into_iter().map(found_to_membership));
            }
        }
    }
    out.sort_by(|a, b| (&a.pool_id, &a.member_id).cmp(&(&b.pool_id, &b.member_id)));
    out.dedup_by(|a, b| a.pool_id == b.pool_id && a.member_id == b.member_id);
    Ok(out)
}

/// This machine's interface addresses (from sysinfo), to tell whether a membership's address is
/// really this server: a wrong `cloud.address` or `[[member]] address` means the drain would watch a
/// server other than the one taken out of the pool.
#[derive(Debug, Clone, Default)]
pub struct LocalAddresses {
    /// (interface, address with its prefix)
    networks: Vec<(String, ipnet::IpNet)>,
}

impl LocalAddresses {
    /// The addresses of every interface, now.
    pub fn scan() -> LocalAddresses {
        let networks = sysinfo::Networks::new_with_refreshed_list();
        LocalAddresses::from_interfaces(networks.iter().flat_map(|(name, data)| {
            data.ip_networks()
                .iter()
                .filter_map(|n| ipnet::IpNet::new(n.addr, n.prefix).ok())
                .map(move |net| (name.clone(), net))
        }))
    }

    pub fn from_interfaces(networks: impl IntoIterator<Item = (String, ipnet::IpNet)>) -> Self {
        LocalAddresses {
            networks: networks.into_iter().collect(),
        }
    }

    /// The interface `address` is local on, if any. An address is local when an interface holds it,
    /// or when it lies in the prefix of an address on the loopback interface: Linux routes such a
    /// prefix locally as a whole, so `127.0.0.1/8` on `lo` makes every 127.x.y.z this machine. On any
    /// other interface the prefix is the subnet, whose other addresses are other servers.
    pub fn interface_of(&self, address: IpAddr) -> Option<&str> {
        let address = census::unmap(address);
        let loopback = |name: &str| {
            self.networks
                .iter()
                .any(|(n, net)| n == name && net.addr().is_loopback())
        };
        self.networks
            .iter()
            .find(|(_, net)| net.addr() == address)
            .or_else(|| {
                self.networks
                    .iter()
                    .find(|(name, net)| net.contains(&address) && loopback(name))
            })
            .map(|(name, _)| name.as_str())
    }
}

/// Says, for each address this server is known by (its own, and every membership's), when it is on
/// no interface of this machine. Only a warning here: `check` makes it a problem, but a running agent
/// cannot know better than its operator (a NAT, a container's network namespace), and refusing to start
/// would leave a server that never drains.
fn warn_if_not_local(addresses: impl IntoIterator<Item = IpAddr>) {
    let local = LocalAddresses::scan();
    let mut seen = Vec::new();
    for address in addresses {
        if seen.contains(&address) {
            continue;
        }
        seen.push(address);
        match local.interface_of(address) {
            Some(interface) => tracing::debug!(%address, interface, "member address is local"),
            None => tracing::warn!(
                %address,
                "this server's member address is on no interface of this machine: the drain would \
                 watch the wrong server; check cloud.address and [[member]] address (elb-drain check)"
            ),
        }
    }
}

/// Each pool's `connection_drain`, read ahead of time. This also proves every configured pool exists,
/// so a wrong pool ID is a configuration error at start-up rather than a failed DELETE at stop time.
/// Other failures only cost the lowered deadline.
async fn connection_drain(
    elb: &Elb,
    memberships: &[Membership],
) -> Result<Vec<(PoolId, Duration)>, PrepareError> {
    let mut pools: Vec<&PoolId> = memberships.iter().map(|m| &m.pool_id).collect();
    pools.sort();
    pools.dedup();
    let shown = join_all(pools.iter().map(|p| elb.show_pool(p))).await;
    let mut cuts = Vec::new();
    let mut all_cut = true;
    for (pool, result) in pools.into_iter().zip(shown) {
        match result {
            Ok(p) => match p.connection_drain_timeout() {
                Some(t) => cuts.push((pool.clone(), t)),
                None => all_cut = false,
            },
            Err(CloudError::Api { status: 404, .. }) => {
                return Err(PrepareError::Config(format!(
                    "config: [[member]] pool_id {pool}: no such pool in this project (ShowPool answered 404)"
                )));
            }
            Err(e) => {
                all_cut = false;
                tracing::warn!(pool = %pool, error = %e, "could not read the pool's connection_drain")
            }
        }
    }
    Ok(binding_cut(cuts, all_cut))
}

/// The load balancers' cut that bounds the drain, if any. A connection cannot be told apart by pool
/// (one port may serve several), so the cut binds only when every pool cuts, and then at the latest
/// of them: a pool without `connection_drain` keeps its connections until they close.
fn binding_cut(cuts: Vec<(PoolId, Duration)>, all_cut: bool) -> Vec<(PoolId, Duration)> {
    if !all_cut {
        if !cuts.is_empty() {
            tracing::info!(
                pools = cuts.len(),
                "some pools cut their connections at their connection_drain timeout, not all: drain.timeout applies"
            );
        }
        return Vec::new();
    }
    cuts.into_iter()
        .max_by_key(|(_, t)| *t)
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_load_balancers_cut_binds_only_when_every_pool_cuts_and_then_the_latest() {
        let pool =
            |n: u8| PoolId::parse(&format!("36ce7086-a496-4666-9064-5ba0e6840c7{n}")).unwrap();
        let s = Duration::from_secs;
        let cuts = vec![(pool(1), s(30)), (pool(2), s(10)), (pool(3), s(20))];
        assert_eq!(binding_cut(cuts.clone(), true), vec![(pool(1), s(30))]);
        assert_eq!(binding_cut(cuts, false), vec![]);
        assert_eq!(binding_cut(vec![], true), vec![]);
    }

    fn local() -> LocalAddresses {
        let net = |s: &str| s.parse::<ipnet::IpNet>().unwrap();
        LocalAddresses::from_interfaces([
            ("lo".to_owned(), net("127.0.0.1/8")),
            ("lo".to_owned(), net("::1/128")),
            ("eth0".to_owned(), net("10.0.0.5/24")),
            ("eth0".to_owned(), net("fd00::5/64")),
        ])
    }

    fn on(address: &str) -> Option<String> {
        local()
            .interface_of(address.parse().unwrap())
            .map(str::to_owned)
    }

    #[test]
    fn the_whole_loopback_prefix_is_local_but_not_a_nics_subnet() {
        assert_eq!(on("127.0.0.1").as_deref(), Some("lo"));
        // Not held by lo, but 127.0.0.1/8 routes all of 127/8 locally (elb-sim's "other servers").
        assert_eq!(on("127.0.0.2").as_deref(), Some("lo"));
        assert_eq!(on("::1").as_deref(), Some("lo"));
        assert_eq!(on("10.0.0.5").as_deref(), Some("eth0"));
        assert_eq!(on("::ffff:10.0.0.5").as_deref(), Some("eth0"));
        assert_eq!(on("fd00::5").as_deref(), Some("eth0"));
        // The same subnet is another server.
        assert_eq!(on("10.0.0.50"), None);
        assert_eq!(on("fd00::6"), None);
        assert_eq!(on("192.0.2.10"), None);
    }

    #[test]
    fn this_machine_has_loopback() {
        let here = LocalAddresses::scan();
        assert_eq!(
            here.interface_of("127.0.0.1".parse().unwrap()),
            here.interface_of("127.0.0.9".parse().unwrap())
        );
        assert!(here.interface_of("127.0.0.9".parse().unwrap()).is_some());
        assert!(here.interface_of("192.0.2.10".parse().unwrap()).is_none());
    }
}
