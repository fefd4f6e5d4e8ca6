//! The simulated cloud's state: one mutex around plain data, changed by the API handlers, the admin
//! API, the health checker and the hook clock. Every member change republishes the affected data-plane
//! views, so the load balancer follows the API immediately; a removal (or weight 0) reaches it only
//! `settings.propagation_delay` later, as on the real ELB.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::dataplane::{Backend, PoolView};
use crate::scenario::{
    ConnectionDrain, MetadataPatch, PoolPatch, Scenario, Seed, Settings, TokenMode,
};

pub fn now_rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

pub fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", fastrand::u8(..)))
        .collect()
}

#[derive(Debug, Clone)]
pub struct Pool {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub protocol: String,
    pub loadbalancer_id: Option<String>,
    pub health_monitor: bool,
    pub connection_drain: Option<ConnectionDrain>,
    pub member_deletion_protection: bool,
    /// CreateMember past this many members is 409 `ELB.8905` (quota exceeded).
    pub members_per_pool: Option<usize>,
    pub listeners: Vec<String>,
    pub created_at: SystemTime,
}

#[derive(Debug, Clone)]
pub struct Member {
    pub id: String,
    pub pool_id: String,
    pub project_id: String,
    pub name: String,
    pub address: String,
    pub protocol_port: u16,
    pub weight: u32,
    pub admin_state_up: bool,
    pub subnet_cidr_id: Option<String>,
    pub instance_id: Option<String>,
    pub operating_status: String,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
}

impl Member {
    /// The v3 member object: no `pool_id`, no `provisioning_status`.
    pub fn to_json(&self, pool: &Pool) -> Value {
        let status = self.operating_status.as_str();
        // A failed TCP check: the connect did not succeed (refused or timed out alike).
        let reason = (status == "OFFLINE").then(|| {
            json!({"reason_code": "CONNECT_FAILED", "expected_response": "", "healthcheck_response": ""})
        });
        json!({
            "id": self.id,
            "name": self.name,
            "project_id": self.project_id,
            "address": self.address,
            "protocol_port": self.protocol_port,
            "weight": self.weight,
            "admin_state_up": self.admin_state_up,
            "subnet_cidr_id": self.subnet_cidr_id,
            "ip_version": if self.address.contains(':') { "v6" } else { "v4" },
            "operating_status": status,
            "status": pool.listeners.iter().map(|l| json!({
                "listener_id": l, "operating_status": status, "reason": reason
            })).collect::<Vec<_>>(),
            "reason": reason,
            "member_type": if self.instance_id.is_some() { "instance" } else { "ip" },
            "instance_id": self.instance_id.clone().unwrap_or_default(),
            "availability_zone": "",
            "created_at": now_rfc3339(self.created_at),
            "updated_at": now_rfc3339(self.updated_at),
        })
    }

    pub fn addr(&self) -> Option<SocketAddr> {
        let ip: std::net::IpAddr = self.address.parse().ok()?;
        Some(SocketAddr::new(ip, self.protocol_port))
    }
}

impl Pool {
    pub fn to_json(&self, members: &[Member]) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "description": "",
            "project_id": self.project_id,
            "protocol": self.protocol,
            "lb_algorithm": "ROUND_ROBIN",
            "admin_state_up": true,
            "ip_version": "dualstack",
            "loadbalancers": self.loadbalancer_id.iter().map(|l| json!({"id": l})).collect::<Vec<_>>(),
            "listeners": self.listeners.iter().map(|l| json!({"id": l})).collect::<Vec<_>>(),
            "members": members.iter().filter(|m| m.pool_id == self.id).map(|m| json!({"id": m.id})).collect::<Vec<_>>(),
            "healthmonitor_id": if self.health_monitor { format!("hm-{}", self.id) } else { String::new() },
            "session_persistence": null,
            "slow_start": null,
            "member_deletion_protection_enable": self.member_deletion_protection,
            "connection_drain": self.connection_drain.map(|d| json!({"enable": d.enable, "timeout": d.timeout}))
                .unwrap_or(json!({"enable": false, "timeout": 300})),
            "type": "",
            "vpc_id": "",
            "enterprise_project_id": "0",
            "protection_status": "nonProtection",
            "protection_reason": "",
            "any_port_enable": false,
            "pool_health": {"minimum_healthy_member_count": 0},
            "public_border_group": "center",
            "quic_cid_hash_strategy": null,
            "az_affinity": null,
            "created_at": now_rfc3339(self.created_at),
            "updated_at": now_rfc3339(self.created_at),
        })
    }
}

/// Who made an API call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthKind {
    None,
    Token,
    Aksk,
    AkskTemporary,
}

/// One API request as elb-sim saw it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoggedRequest {
    /// "elb", "iam", "as" or "metadata".
    pub service: String,
    pub method: String,
    pub path: String,
    pub query: String,
    pub auth: AuthKind,
    /// 0 when the connection was reset without an answer.
    pub status: u16,
    #[serde(with = "system_time_secs")]
    pub at: SystemTime,
    /// CLOCK_MONOTONIC at arrival, in nanoseconds: comparable with other processes' monotonic clocks.
    pub mono_ns: u64,
    /// Nanoseconds from the simulator's start to the arrival: small numbers for reading a log.
    #[serde(default)]
    pub sim_ns: u64,
}

mod system_time_secs {
    use std::time::{Duration, SystemTime};

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(
            t.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64(),
        )
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        Ok(SystemTime::UNIX_EPOCH + Duration::from_secs_f64(f64::deserialize(d)?))
    }
}

/// CLOCK_MONOTONIC now, in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One injected fault action, consumed per matching request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FaultAction {
    /// Answer with this status and the error body the real API would use for it.
    Status {
        status: u16,
        #[serde(default)]
        retry_after: Option<u64>,
    },
    /// Wait, then handle normally.
    Delay { ms: u64 },
    /// Drop the connection without a complete answer.
    Reset,
    /// 200 with a body that is not JSON.
    Malformed,
    /// A body shorter than its Content-Length.
    Truncated,
    /// A 200 body of this many bytes.
    Oversized { bytes: usize },
    /// A 200 with its headers and the first bytes of a longer body, then a TCP reset (RST, not FIN):
    /// the connection aborted mid-body, as a crashing gateway or a middlebox does it.
    ResetMidBody,
    /// Handle the request (its change takes effect), then answer with `then` instead of the real
    /// answer: the answer lost after the change was made, as when a gateway fails after the backend
    /// committed. A client that retries a create sees a duplicate.
    Applied { then: Box<FaultAction> },
    /// Handle normally.
    Pass,
}

/// Faults for the requests matching `method` (any when absent) and `path` (`*` matches one segment).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    #[serde(default)]
    pub method: Option<String>,
    pub path: String,
    pub actions: Vec<FaultAction>,
    /// Keep applying the last action instead of passing once the list is used up.
    #[serde(default)]
    pub repeat: bool,
}

impl Fault {
    pub fn new(method: &str, path: &str, actions: Vec<FaultAction>) -> Fault {
        Fault {
            method: Some(method.into()),
            path: path.into(),
            actions,
            repeat: false,
        }
    }

    pub fn repeating(mut self) -> Fault {
        self.repeat = true;
        self
    }

    pub fn matches(&self, method: &str, path: &str) -> bool {
        if self
            .method
            .as_deref()
            .is_some_and(|m| !m.eq_ignore_ascii_case(method))
        {
            return false;
        }
        glob(&self.path, path)
    }
}

/// `*` matches exactly one path segment; a trailing `**` matches the rest.
fn glob(pattern: &str, path: &str) -> bool {
    let p: Vec<&str> = pattern.trim_end_matches('/').split('/').collect();
    let s: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    if p.last() == Some(&"**") {
        return s.len() >= p.len() - 1
            && p[..p.len() - 1]
                .iter()
                .zip(&s)
                .all(|(a, b)| *a == "*" || a == b);
    }
    p.len() == s.len() && p.iter().zip(&s).all(|(a, b)| *a == "*" || a == b)
}

#[derive(Debug, Clone)]
pub struct Bucket {
    pub per_second: f64,
    pub burst: f64,
    pub tokens: f64,
    pub at: Instant,
}

impl Bucket {
    /// Takes a token; `Err(seconds until one is available)` when empty.
    pub fn take(&mut self, now: Instant) -> Result<(), f64> {
        self.tokens =
            (self.tokens + (now - self.at).as_secs_f64() * self.per_second).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err((1.0 - self.tokens) / self.per_second)
        }
    }
}

#[derive(Debug, Clone)]
pub struct TokenRecord {
    pub project_id: String,
    pub user: String,
    pub expires: SystemTime,
    pub deny: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct KeyRecord {
    pub sk: String,
    pub project_id: String,
    pub security_token: Option<String>,
    pub expires: Option<SystemTime>,
    pub deny: Vec<String>,
}

/// A terminating lifecycle hook of one instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HookState {
    pub scaling_group_id: String,
    pub instance_id: String,
    pub lifecycle_hook_name: String,
    pub lifecycle_action_key: String,
    /// HANGING, CONTINUE or ABANDON.
    pub status: String,
    pub default_result: String,
    #[serde(with = "system_time_secs")]
    pub deadline: SystemTime,
    /// Every callback received: (result, wall time in seconds).
    pub callbacks: Vec<(String, f64)>,
    /// The hook ended by timing out (its default result applied), not by an answer.
    pub timed_out: bool,
    /// An INSTANCE_LAUNCHING hook (a launch hung it), not a terminating one.
    #[serde(default)]
    pub launching: bool,
}

pub struct Inner {
    pub settings: Settings,
    pub projects: Vec<String>,
    pub users: Vec<crate::scenario::User>,
    pub keys: HashMap<String, KeyRecord>,
    pub tokens: HashMap<String, TokenRecord>,
    pub pools: Vec<Pool>,
    pub members: Vec<Member>,
    pub views: HashMap<String, watch::Sender<PoolView>>,
    pub instances: Vec<crate::scenario::Instance>,
    pub groups: Vec<crate::scenario::ScalingGroup>,
    pub hooks: Vec<HookState>,
    pub faults: Vec<Fault>,
    pub log: Vec<LoggedRequest>,
    pub buckets: HashMap<String, Bucket>,
    /// Failed signatures in a row per access key, and until when a key is locked.
    pub signature_failures: HashMap<String, (u32, Option<SystemTime>)>,
    pub metadata_instance: Option<String>,
    pub metadata_tokens: TokenMode,
    /// Metadata session tokens and when each expires.
    pub metadata_sessions: Vec<(String, SystemTime)>,
    /// The metadata instance's current temporary key: (ak, issued).
    pub temp_key: Option<(String, SystemTime)>,
}

impl Inner {
    /// Ends the hook at `index` with `result` (CONTINUE or ABANDON), by an answer or by its timeout.
    /// As the service documents it, on a terminating instance ABANDON ends the instance's other
    /// terminating hooks too, where CONTINUE lets them finish.
    pub fn end_hook(&mut self, index: usize, result: &str, timed_out: bool) {
        let hook = &mut self.hooks[index];
        hook.status = result.into();
        hook.timed_out = timed_out;
        if result != "ABANDON" || hook.launching {
            return;
        }
        let instance = hook.instance_id.clone();
        for other in self
            .hooks
            .iter_mut()
            .filter(|h| h.instance_id == instance && !h.launching && h.status == "HANGING")
        {
            other.status = "ABANDON".into();
        }
    }

    pub fn from_scenario(s: &Scenario) -> Result<Inner, String> {
        crate::scenario::check_page_size_cap(s.settings.page_size_cap)
            .map_err(|e| format!("settings.{e}"))?;
        let mut inner = Inner {
            settings: s.settings.clone(),
            projects: Vec::new(),
            users: Vec::new(),
            keys: HashMap::new(),
            tokens: HashMap::new(),
            pools: Vec::new(),
            members: Vec::new(),
            views: HashMap::new(),
            instances: Vec::new(),
            groups: Vec::new(),
            hooks: Vec::new(),
            faults: Vec::new(),
            log: Vec::new(),
            buckets: HashMap::new(),
            signature_failures: HashMap::new(),
            metadata_instance: s.metadata.instance.clone(),
            metadata_tokens: s.metadata.tokens,
            metadata_sessions: Vec::new(),
            temp_key: None,
        };
        inner.apply_seed(&s.seed())?;
        Ok(inner)
    }

    /// Adds everything in `seed`, after checking all of it: on an error nothing has changed.
    /// Returns the ids of the members added (generated where the seed gives none). The caller binds
    /// the seed's listeners (they need the runtime) and publishes the views.
    pub fn apply_seed(&mut self, seed: &Seed) -> Result<Vec<String>, String> {
        self.check_seed(seed)?;
        for p in &seed.project {
            if !self.projects.contains(&p.id) {
                self.projects.push(p.id.clone());
            }
        }
        self.users.extend(seed.user.iter().cloned());
        for k in &seed.access_key {
            self.keys.insert(
                k.ak.clone(),
                KeyRecord {
                    sk: k.sk.clone(),
                    project_id: k.project_id.clone(),
                    security_token: None,
                    expires: None,
                    deny: k.deny.clone(),
                },
            );
        }
        let default_project = self.projects.first().cloned().unwrap_or_default();
        let now = SystemTime::now();
        for p in &seed.pool {
            self.pools.push(Pool {
                id: p.id.clone(),
                project_id: p
                    .project_id
                    .clone()
                    .unwrap_or_else(|| default_project.clone()),
                name: p.name.clone(),
                protocol: p.protocol.clone(),
                loadbalancer_id: p.loadbalancer_id.clone(),
                health_monitor: p.health_monitor,
                connection_drain: p.connection_drain,
                member_deletion_protection: p.member_deletion_protection,
                members_per_pool: p.members_per_pool,
                listeners: Vec::new(),
                created_at: now,
            });
        }
        for l in &seed.listener {
            if let Some(p) = self.pools.iter_mut().find(|p| p.id == l.pool_id) {
                p.listeners.push(l.id.clone());
            }
        }
        let mut ids = Vec::new();
        for m in &seed.member {
            ids.push(self.add_member(m)?);
        }
        self.instances.extend(seed.instance.iter().cloned());
        self.groups.extend(seed.scaling_group.iter().cloned());
        if self.metadata_instance.is_none() {
            self.metadata_instance = self.instances.first().map(|i| i.uuid.clone());
        }
        Ok(ids)
    }

    /// Every reason `seed` cannot be added, as one message naming the first.
    fn check_seed(&self, seed: &Seed) -> Result<(), String> {
        fn unique<'a>(
            what: &str,
            existing: impl Iterator<Item = &'a str>,
            new: impl Iterator<Item = &'a str>,
        ) -> Result<(), String> {
            let mut seen: std::collections::HashSet<&str> = existing.collect();
            for id in new {
                if !seen.insert(id) {
                    return Err(format!("{what} {id} already exists"));
                }
            }
            Ok(())
        }
        unique(
            "access key",
            self.keys.keys().map(String::as_str),
            seed.access_key.iter().map(|k| k.ak.as_str()),
        )?;
        unique(
            "pool",
            self.pools.iter().map(|p| p.id.as_str()),
            seed.pool.iter().map(|p| p.id.as_str()),
        )?;
        unique(
            "listener",
            self.pools
                .iter()
                .flat_map(|p| p.listeners.iter().map(String::as_str)),
            seed.listener.iter().map(|l| l.id.as_str()),
        )?;
        unique(
            "member",
            self.members.iter().map(|m| m.id.as_str()),
            seed.member.iter().filter_map(|m| m.id.as_deref()),
        )?;
        unique(
            "instance",
            self.instances.iter().map(|i| i.uuid.as_str()),
            seed.instance.iter().map(|i| i.uuid.as_str()),
        )?;
        unique(
            "scaling group",
            self.groups.iter().map(|g| g.id.as_str()),
            seed.scaling_group.iter().map(|g| g.id.as_str()),
        )?;
        let pool_exists = |id: &str| {
            self.pools.iter().any(|p| p.id == id) || seed.pool.iter().any(|p| p.id == id)
        };
        for l in &seed.listener {
            if !pool_exists(&l.pool_id) {
                return Err(format!(
                    "listener {}: pool {} does not exist",
                    l.id, l.pool_id
                ));
            }
            if l.listen.parse::<SocketAddr>().is_err() {
                return Err(format!(
                    "listener {}: listen {:?} is not an address:port",
                    l.id, l.listen
                ));
            }
        }
        for m in &seed.member {
            if !pool_exists(&m.pool_id) {
                return Err(format!("member: pool {} does not exist", m.pool_id));
            }
        }
        for g in &seed.scaling_group {
            if !matches!(g.default_result.as_str(), "CONTINUE" | "ABANDON") {
                return Err(format!(
                    "scaling group {}: default_result {:?} is not CONTINUE or ABANDON",
                    g.id, g.default_result
                ));
            }
        }
        Ok(())
    }

    /// Applies a console-style change to a pool; members follow a health monitor switched on or off.
    pub fn update_pool(&mut self, id: &str, patch: &PoolPatch) -> Result<(), String> {
        let pool = self
            .pools
            .iter_mut()
            .find(|p| p.id == id)
            .ok_or_else(|| format!("pool {id} does not exist"))?;
        if let Some(name) = &patch.name {
            pool.name = name.clone();
        }
        if let Some(d) = patch.connection_drain {
            pool.connection_drain = Some(d);
        }
        if let Some(on) = patch.member_deletion_protection {
            pool.member_deletion_protection = on;
        }
        if let Some(on) = patch.health_monitor
            && on != pool.health_monitor
        {
            pool.health_monitor = on;
            let status = if on { "INITIAL" } else { "NO_MONITOR" };
            for m in self.members.iter_mut().filter(|m| m.pool_id == id) {
                m.operating_status = status.into();
            }
        }
        self.publish();
        Ok(())
    }

    /// Points the metadata service at another instance, or changes its token mode or agency.
    pub fn update_metadata(&mut self, patch: &MetadataPatch) -> Result<(), String> {
        let target = patch
            .instance
            .clone()
            .or_else(|| self.metadata_instance.clone());
        if let Some(id) = &patch.instance
            && !self.instances.iter().any(|i| i.uuid == *id)
        {
            return Err(format!("instance {id} does not exist"));
        }
        if let Some(agency) = patch.agency {
            let i = self
                .instances
                .iter_mut()
                .find(|i| Some(&i.uuid) == target.as_ref())
                .ok_or("the metadata service describes no instance: agency needs one")?;
            i.agency = agency;
        }
        if patch.instance.is_some() && patch.instance != self.metadata_instance {
            // Another server's metadata: its agency's keys, not the previous one's.
            self.temp_key = None;
        }
        self.metadata_instance = target;
        if let Some(t) = patch.tokens {
            self.metadata_tokens = t;
        }
        Ok(())
    }

    pub fn pool(&self, id: &str) -> Option<&Pool> {
        self.pools.iter().find(|p| p.id == id)
    }

    pub fn add_member(&mut self, m: &crate::scenario::MemberConfig) -> Result<String, String> {
        let pool = self
            .pool(&m.pool_id)
            .ok_or_else(|| format!("member: pool {} does not exist", m.pool_id))?;
        let project_id = pool.project_id.clone();
        let status = if pool.health_monitor {
            "INITIAL"
        } else {
            "NO_MONITOR"
        };
        let now = SystemTime::now();
        let id = m.id.clone().unwrap_or_else(new_id);
        self.members.push(Member {
            id: id.clone(),
            pool_id: m.pool_id.clone(),
            project_id,
            name: m.name.clone(),
            address: m.address.clone(),
            protocol_port: m.protocol_port,
            weight: m.weight,
            admin_state_up: true,
            subnet_cidr_id: m.subnet_cidr_id.clone(),
            instance_id: m.instance_id.clone(),
            operating_status: status.into(),
            created_at: now,
            updated_at: now,
        });
        Ok(id)
    }

    /// What the data plane of `pool_id` should route to now.
    pub fn view(&self, pool_id: &str) -> PoolView {
        let pool = self.pool(pool_id);
        PoolView {
            backends: self
                .members
                .iter()
                .filter(|m| m.pool_id == pool_id && m.admin_state_up)
                .filter_map(|m| {
                    Some(Backend {
                        member_id: m.id.clone(),
                        addr: m.addr()?,
                        weight: m.weight,
                        healthy: m.operating_status != "OFFLINE",
                    })
                })
                .collect(),
            drain_timeout: pool
                .and_then(|p| p.connection_drain)
                .filter(|d| d.enable)
                .map(|d| std::time::Duration::from_secs(d.timeout)),
            lingering: Vec::new(),
        }
    }

    /// Pushes the current membership of every pool to its listeners. A member that was in service
    /// and is now removed or at weight 0 keeps receiving new connections for
    /// `settings.propagation_delay` (see [`crate::dataplane`]).
    pub fn publish(&self) {
        let now = tokio::time::Instant::now();
        let delay = self.settings.propagation_delay;
        for (pool_id, tx) in &self.views {
            let mut view = self.view(pool_id);
            tx.send_if_modified(|current| {
                view.lingering = current.lingering_after(&view, now, delay);
                if *current == view {
                    false
                } else {
                    *current = view;
                    true
                }
            });
        }
    }

    /// The fault action for this request, if any, consuming it.
    pub fn next_fault(&mut self, method: &str, path: &str) -> Option<FaultAction> {
        let i = self.faults.iter().position(|f| f.matches(method, path))?;
        let fault = &mut self.faults[i];
        if fault.actions.len() > 1 || !fault.repeat {
            let action = fault.actions.remove(0);
            if fault.actions.is_empty() {
                self.faults.remove(i);
            }
            Some(action)
        } else {
            fault.actions.first().cloned()
        }
    }
}
