//! Putting this server back into its pools: `elb-drain register` and `[register] on_start`.
//!
//! The targets are what the state file says this server had (so a crash or reboot after a stop is
//! undone exactly) plus every `[[member]]` with an address and port. Each is made idempotently: an
//! existing membership at the same address and port is reused (its weight restored if a `weight0` stop
//! zeroed it), otherwise it is created. Optionally it waits until the application listens first, and
//! until the load balancer reports the member ONLINE after.

use std::net::IpAddr;
use std::time::Duration;

use tokio::time::Instant;

use crate::agent::Agent;
use crate::cloud::CloudError;
use crate::ids::{MemberId, PoolId};
use crate::state::{Record, State};

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("register: {0}")]
    Config(String),
    #[error("register: {0}")]
    Cloud(#[from] CloudError),
    #[error("register: {what} not within {timeout:?}")]
    Timeout { what: String, timeout: Duration },
}

/// One membership, as registered.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Registered {
    pub pool_id: PoolId,
    pub member_id: MemberId,
    pub address: IpAddr,
    pub protocol_port: u16,
    /// "created", "reused" or "weight restored".
    pub action: &'static str,
}

struct Target {
    pool: PoolId,
    address: IpAddr,
    port: u16,
    weight: Option<u32>,
    subnet: Option<String>,
}

fn targets(agent: &Agent, state: &State) -> Vec<Target> {
    let mut out: Vec<Target> = Vec::new();
    let mut add = |t: Target| {
        if !out
            .iter()
            .any(|o| o.pool == t.pool && o.address == t.address && o.port == t.port)
        {
            out.push(t);
        }
    };
    for r in &state.memberships {
        if let (Some(address), Some(port)) = (r.address, r.protocol_port) {
            add(Target {
                pool: r.pool_id.clone(),
                address,
                port,
                weight: r.weight,
                subnet: r.subnet_cidr_id.clone(),
            });
        }
    }
    for m in &agent.config.members {
        let address = m
            .address
            .or(agent.identity.as_ref().and_then(|i| i.address));
        if let (Some(address), Some(port)) = (address, m.protocol_port) {
            add(Target {
                pool: m.pool_id.clone(),
                address,
                port,
                weight: m.weight.map(u32::from),
                subnet: m.subnet_cidr_id.clone(),
            });
        }
    }
    out
}

async fn wait(
    what: String,
    timeout: Duration,
    mut ok: impl AsyncFnMut() -> bool,
) -> Result<(), RegisterError> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(50);
    loop {
        if ok().await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(RegisterError::Timeout { what, timeout });
        }
        tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// Registers every target; returns what was done, in order.
pub async fn register(agent: &Agent) -> Result<Vec<Registered>, RegisterError> {
    let (done, _) = register_unless(agent, std::future::pending()).await?;
    Ok(done)
}

/// [`register`], giving up the *waits* (for the application to listen, for the load balancer to
/// report ONLINE) as soon as `stop` resolves, with what it says (a signal number), for `run` stopped
/// while registering on start. A create or update already sent is always seen through: cut off in
/// flight it could still land, and the membership it made would be one nobody knows the ID of.
/// What was registered before the stop is returned, and recorded in the state file, either way.
pub async fn register_unless(
    agent: &Agent,
    stop: impl std::future::Future<Output = i32>,
) -> Result<(Vec<Registered>, Option<i32>), RegisterError> {
    tokio::pin!(stop);
    let path = &agent.config.drain.state_file;
    let state = State::load_within(path, crate::state::ACCESS_BOUND).await;
    let targets = targets(agent, &state);
    if targets.is_empty() {
        return Err(RegisterError::Config(
            "nothing to register: no state file entries and no [[member]] with address and protocol_port".into(),
        ));
    }
    let settings = &agent.config.register;
    let mut done = Vec::new();
    for t in &targets {
        if settings.wait_listening {
            tracing::info!(port = t.port, "waiting for the application to listen");
            let port = t.port;
            let listening = wait(
                format!("port {port} listening"),
                settings.healthy_timeout.max(Duration::from_secs(1)),
                async || crate::census::procfs::listening(port),
            );
            tokio::select! {
                waited = listening => waited?,
                sig = &mut stop => {
                    record(path, &done, &targets, &state).await;
                    return Ok((done, Some(sig)));
                }
            }
        }
        done.push(put_back(agent, t).await?);
    }
    record(path, &done, &targets, &state).await;
    if !settings.healthy_timeout.is_zero() {
        for r in &done {
            let (elb, pool, member) = (&agent.elb, &r.pool_id, &r.member_id);
            let online = wait(
                format!("member {member} ONLINE"),
                settings.healthy_timeout,
                async || {
                    matches!(
                        elb.show_member(pool, member)
                            .await
                            .map(|m| m.health())
                            .as_deref(),
                        Ok("ONLINE" | "NO_MONITOR")
                    )
                },
            );
            tokio::select! {
                waited = online => waited?,
                sig = &mut stop => return Ok((done, Some(sig))),
            }
            tracing::info!(pool = %pool, member = %member, "member is healthy");
        }
    }
    Ok((done, None))
}

/// One target back in its pool: the membership at its address and port reused (its weight restored
/// if a `weight0` stop zeroed it), else created.
async fn put_back(agent: &Agent, t: &Target) -> Result<Registered, RegisterError> {
    let filters = [
        ("address", t.address.to_string()),
        ("protocol_port", t.port.to_string()),
    ];
    let existing = agent.elb.list_members(&t.pool, &filters).await?;
    let registered = match existing.into_iter().next() {
        Some(m) => {
            let id = MemberId::parse(&m.id).map_err(|e| {
                RegisterError::Cloud(CloudError::Decode {
                    op: "ListMembers".into(),
                    reason: e.to_string(),
                })
            })?;
            let restore = t.weight.filter(|w| *w > 0).unwrap_or(1);
            let action = if m.weight == Some(0) {
                agent.elb.update_weight(&t.pool, &id, restore).await?;
                "weight restored"
            } else {
                "reused"
            };
            Registered {
                pool_id: t.pool.clone(),
                member_id: id,
                address: t.address,
                protocol_port: t.port,
                action,
            }
        }
        None => {
            let created = agent
                .elb
                .create_member(&t.pool, t.address, t.port, t.subnet.as_deref(), t.weight)
                .await;
            let m = match created {
                Ok(m) => m,
                // The create may have landed though its answer was lost (cut, garbled), and the
                // retry was then refused as a duplicate: the membership is there, reuse it.
                Err(e) => match agent
                    .elb
                    .list_members(&t.pool, &filters)
                    .await?
                    .into_iter()
                    .next()
                {
                    Some(m) => {
                        tracing::info!(pool = %t.pool, error = %e, "CreateMember failed, but the membership exists: reusing it");
                        m
                    }
                    None => return Err(e.into()),
                },
            };
            let id = MemberId::parse(&m.id).map_err(|e| {
                RegisterError::Cloud(CloudError::Decode {
                    op: "CreateMember".into(),
                    reason: e.to_string(),
                })
            })?;
            Registered {
                pool_id: t.pool.clone(),
                member_id: id,
                address: t.address,
                protocol_port: t.port,
                action: "created",
            }
        }
    };
    tracing::info!(pool = %registered.pool_id, member = %registered.member_id, action = registered.action, "registered");
    Ok(registered)
}

/// What is registered now replaces what was removed. `done` is a prefix of `targets`, in order; the
/// targets after it (a stop cut the registration short) are still out of their pools, so what
/// `previous` says about them is kept for the next `register`.
async fn record(path: &std::path::Path, done: &[Registered], targets: &[Target], previous: &State) {
    let mut state = State::default();
    state.merge(
        done.iter()
            .zip(targets)
            .map(|(r, t)| Record {
                pool_id: r.pool_id.clone(),
                member_id: r.member_id.clone(),
                address: Some(r.address),
                protocol_port: Some(r.protocol_port),
                weight: t.weight,
                subnet_cidr_id: t.subnet.clone(),
                removed: None,
                removed_at: None,
            })
            .collect(),
    );
    for t in &targets[done.len()..] {
        state.memberships.extend(
            previous
                .memberships
                .iter()
                .filter(|r| {
                    r.removed.is_some()
                        && r.pool_id == t.pool
                        && r.address == Some(t.address)
                        && r.protocol_port == Some(t.port)
                })
                .cloned(),
        );
    }
    if let Err(e) = state.save_within(path, crate::state::ACCESS_BOUND).await {
        tracing::warn!(error = %e, "could not write the state file");
    }
}
