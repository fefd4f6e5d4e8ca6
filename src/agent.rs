//! The agent: turns a validated [`Config`] into a ready-to-fire drain.
//!
//! [`Agent::prepare`] does every slow thing up front: builds the one HTTP client, fetches the
//! credential, learns the project and this server's identity, resolves the memberships and reads the
//! pools' `connection_drain`. After that, [`Agent::drain`] puts nothing on the wire but the DELETEs
//! themselves, all memberships in parallel, and hands the rest to the drain engine.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::time::Instant;

use crate::census::{self, CensusSpec};
use crate::cloud::{self, CloudError, DeleteOutcome, Elb};
use crate::config::Config;
use crate::credentials;
use crate::drain::{self, Deregistration, Plan, Sink, Verdict};
use crate::ids::{MemberId, PoolId};

/// One membership of this server: what a DELETE needs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Membership {
    pub pool_id: PoolId,
    pub member_id: MemberId,
    pub address: Option<IpAddr>,
    pub protocol_port: Option<u16>,
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
    pub memberships: Vec<Membership>,
    /// Pools with `connection_drain` enabled, and its timeout.
    pub lb_drain: Vec<(PoolId, Duration)>,
    pub credential: Arc<dyn credentials::Credential>,
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
        let metadata =
            cloud::metadata::Metadata::new(http.clone(), config.cloud.metadata_endpoint.clone());
        let project_id = match &config.cloud.project_id {
            Some(p) => p.clone(),
            None => metadata.identity().await?.project_id.ok_or_else(|| {
                PrepareError::Config(
                    "cloud.project_id: not configured and the metadata service has none".into(),
                )
            })?,
        };
        let elb_endpoint = config.cloud.elb_endpoint(None).ok_or_else(|| {
            PrepareError::Config("cloud.region: needed to find the ELB endpoint".into())
        })?;
        let credential =
            credentials::from_config(&config, &http, &project_id, metadata.clone(), None).await?;
        let retry = cloud::RetryPolicy::within(config.cloud.retry_deadline);
        let elb = Elb::new(http, elb_endpoint, project_id, credential.clone(), retry);
        let memberships = resolve(&config, &elb, &metadata).await?;
        let lb_drain = connection_drain(&elb, &memberships).await?;
        Ok(Agent {
            config,
            elb,
            memberships,
            lb_drain,
            credential,
        })
    }

    pub fn plan(&self) -> Plan {
        Plan {
            settle: self.config.drain.settle,
            timeout: self.config.drain.timeout,
            poll_interval: self.config.drain.poll_interval,
        }
    }

    /// What the census counts: the configured ports, else the memberships' ports.
    pub fn census_spec(&self) -> CensusSpec {
        let mut ports = self.config.drain_ports();
        if ports.is_empty() {
            ports = self
                .memberships
                .iter()
                .filter_map(|m| m.protocol_port)
                .collect();
            ports.sort_unstable();
            ports.dedup();
        }
        CensusSpec {
            ports,
            exclude_peers: self.config.drain.exclude_peers.clone(),
        }
    }

    /// Deletes every membership in parallel. One result per membership, in order.
    pub async fn deregister(
        &self,
        on_each: &(dyn Fn(usize) + Sync),
    ) -> Vec<Result<DeleteOutcome, CloudError>> {
        let done = std::sync::atomic::AtomicUsize::new(0);
        join_all(self.memberships.iter().map(|m| async {
            let started = Instant::now();
            let result = self.elb.delete_member(&m.pool_id, &m.member_id).await;
            let elapsed_ms = started.elapsed().as_millis() as u64;
            match &result {
                Ok(outcome) => tracing::info!(
                    pool = %m.pool_id, member = %m.member_id, elapsed_ms, outcome = ?outcome,
                    "deregistered"
                ),
                Err(e) => tracing::error!(pool = %m.pool_id, member = %m.member_id, elapsed_ms, error = %e,
                    "deregistration failed"),
            }
            on_each(done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1);
            result
        }))
        .await
    }

    /// Deregisters and drains, from the moment the stop began.
    pub async fn drain(
        &self,
        started: Instant,
        sink: &dyn Sink,
        on_deregistered: &(dyn Fn(usize) + Sync),
    ) -> Verdict {
        let spec = self.census_spec();
        tracing::info!(
            members = self.memberships.len(),
            ports = ?spec.ports,
            "stop: deregistering {} memberships, then draining",
            self.memberships.len()
        );
        // Subscribe to socket-destroy notifications before the first census so none is missed.
        let destroyed = census::destroy_channel(&spec);
        let census = census::open(&spec);
        let deregistration = async {
            let results = self.deregister(on_deregistered).await;
            Deregistration {
                failed: results.iter().any(|r| r.is_err()),
                lb_drain: self
                    .lb_drain
                    .iter()
                    .map(|(p, t)| (p.to_string(), *t))
                    .collect(),
            }
        };
        drain::drive(
            self.plan(),
            started,
            deregistration,
            census,
            destroyed,
            sink,
        )
        .await
    }
}

/// Membership IDs from the configuration, else discovered: per pool by address (and port) or instance
/// ID, or, with no `[[member]]` at all, across every pool this server is in.
async fn resolve(
    config: &Config,
    elb: &Elb,
    metadata: &cloud::metadata::Metadata,
) -> Result<Vec<Membership>, PrepareError> {
    let mut out = Vec::new();
    let needs_discovery =
        config.members.is_empty() || config.members.iter().any(|m| m.member_id.is_none());
    let identity = if needs_discovery {
        Some(identity(config, metadata).await?)
    } else {
        None
    };
    if config.members.is_empty() {
        let (address, instance) = identity.clone().expect("resolved above");
        let found = elb.discover(address, instance.as_ref(), None).await?;
        if found.is_empty() {
            tracing::warn!(?address, "no membership found for this server in any pool");
        }
        out.extend(found.into_iter().map(|m| Membership {
            pool_id: m.pool_id,
            member_id: m.member_id,
            address: Some(m.address),
            protocol_port: Some(m.protocol_port),
        }));
    }
    for spec in &config.members {
        match &spec.member_id {
            Some(id) => out.push(Membership {
                pool_id: spec.pool_id.clone(),
                member_id: id.clone(),
                address: spec.address,
                protocol_port: spec.protocol_port,
            }),
            None => {
                let (address, instance) = identity.clone().expect("resolved above");
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
                    return Err(PrepareError::Config(format!(
                        "[[member]] pool {}: no member with address {address:?} port {:?} in this pool",
                        spec.pool_id, spec.protocol_port
                    )));
                }
                out.extend(found.into_iter().map(|m| Membership {
                    pool_id: m.pool_id,
                    member_id: m.member_id,
                    address: Some(m.address),
                    protocol_port: Some(m.protocol_port),
                }));
            }
        }
    }
    out.sort_by(|a, b| (&a.pool_id, &a.member_id).cmp(&(&b.pool_id, &b.member_id)));
    out.dedup();
    Ok(out)
}

async fn identity(
    config: &Config,
    metadata: &cloud::metadata::Metadata,
) -> Result<(Option<IpAddr>, Option<crate::ids::InstanceId>), PrepareError> {
    if config.cloud.address.is_some() || config.cloud.instance_id.is_some() {
        return Ok((config.cloud.address, config.cloud.instance_id.clone()));
    }
    let address = metadata.local_ipv4().await?;
    Ok((Some(IpAddr::V4(address)), None))
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
    let mut out = Vec::new();
    for (pool, result) in pools.into_iter().zip(shown) {
        match result {
            Ok(p) => out.extend(p.connection_drain_timeout().map(|t| (pool.clone(), t))),
            Err(CloudError::Api { status: 404, .. }) => {
                return Err(PrepareError::Config(format!(
                    "config: [[member]] pool_id {pool}: no such pool in this project (ShowPool answered 404)"
                )));
            }
            Err(e) => {
                tracing::warn!(pool = %pool, error = %e, "could not read the pool's connection_drain")
            }
        }
    }
    Ok(out)
}
