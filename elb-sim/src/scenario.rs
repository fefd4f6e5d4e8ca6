//! A scenario: everything the simulated cloud starts with (projects, users, keys, load balancers,
//! pools, members, servers, scaling groups) and how it behaves (token lifetimes, health-check interval,
//! hook timeouts). Loaded from TOML (`elb-sim --config`, see `config/elb-sim.toml`) or built in Rust
//! with the chaining methods below, which is what tests do.

use std::time::Duration;

use serde::{Deserialize, Serialize};

fn listen_any() -> String {
    "127.0.0.1:0".to_owned()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// ELB, IAM and AS APIs (one listener; every endpoint of the agent may point at it).
    pub api_listen: String,
    pub metadata_listen: String,
    pub admin_listen: String,
    pub region: String,
    #[serde(with = "humantime_serde_compat")]
    pub token_lifetime: Duration,
    /// Lifetime of the agency's temporary keys; a new key is issued when half of it has passed.
    #[serde(with = "humantime_serde_compat")]
    pub temp_key_lifetime: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub health_interval: Duration,
    /// What one EXTEND adds to a lifecycle hook's deadline (one hour in the real service).
    #[serde(with = "humantime_serde_compat")]
    pub hook_extend: Duration,
    /// How far `X-Sdk-Date` may be from the sim's clock (15 minutes in the real service).
    #[serde(with = "humantime_serde_compat")]
    pub max_clock_skew: Duration,
    /// Serves at most this many items a page (1-2000), whatever `limit` the client asked: a gateway or
    /// region that caps below what it documents. The page still names its `next_marker`, so only a
    /// client that follows markers (not one that stops at a page shorter than its `limit`) lists it all.
    /// Also `PATCH /settings` `{"page_size_cap": 2}` (`null` lifts it).
    pub page_size_cap: Option<usize>,
    /// Lock an access key after 5 failed signatures in a row, as the real gateway does (off by
    /// default: most tests send bad signatures on purpose and want each judged on its own).
    pub aksk_lockout: bool,
    /// How long a locked access key stays locked (5 minutes in the real service).
    #[serde(with = "humantime_serde_compat")]
    pub aksk_lockout_duration: Duration,
    /// How long the data plane still sends new connections to a member after the API removed it or
    /// set its weight to 0: the real ELB applies a change on its nodes a while after the API answered
    /// (0, the default: at once). Existing connections are unaffected either way, and a pool's
    /// connection-drain timer starts when the routing stops.
    #[serde(with = "humantime_serde_compat")]
    pub propagation_delay: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            api_listen: listen_any(),
            metadata_listen: listen_any(),
            admin_listen: listen_any(),
            region: "cn-north-4".into(),
            token_lifetime: Duration::from_secs(86_400),
            temp_key_lifetime: Duration::from_secs(86_400),
            health_interval: Duration::from_secs(1),
            hook_extend: Duration::from_secs(3600),
            max_clock_skew: Duration::from_secs(900),
            page_size_cap: None,
            aksk_lockout: false,
            aksk_lockout_duration: Duration::from_secs(300),
            propagation_delay: Duration::ZERO,
        }
    }
}

/// Durations as humantime strings ("24h", "500ms") in TOML.
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Project {
    pub id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    pub domain: String,
    pub password: String,
    /// Projects this user may get tokens for; empty: all.
    #[serde(default)]
    pub projects: Vec<String>,
    /// Actions refused with 403 (e.g. "elb:members:delete").
    #[serde(default)]
    pub deny: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessKey {
    pub ak: String,
    pub sk: String,
    pub project_id: String,
    #[serde(default)]
    pub deny: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub id: String,
    pub pool_id: String,
    /// Where the data plane listens; default 127.0.0.1:0.
    #[serde(default = "listen_any")]
    pub listen: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionDrain {
    pub enable: bool,
    pub timeout: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub id: String,
    /// Default: the first project.
    #[serde(default)]
    pub project_id: Option<String>,
    #[serde(default)]
    pub name: String,
    #[serde(default = "tcp")]
    pub protocol: String,
    #[serde(default)]
    pub loadbalancer_id: Option<String>,
    #[serde(default)]
    pub health_monitor: bool,
    #[serde(default)]
    pub connection_drain: Option<ConnectionDrain>,
    #[serde(default)]
    pub member_deletion_protection: bool,
    /// The project's `members_per_pool` quota, for this pool: a CreateMember past it is refused with
    /// 409 `ELB.8905`. Default: no limit (the real default, 1000, is never reached by a test).
    #[serde(default)]
    pub members_per_pool: Option<usize>,
}

fn tcp() -> String {
    "TCP".into()
}

impl PoolConfig {
    pub fn new(id: &str) -> PoolConfig {
        PoolConfig {
            id: id.into(),
            project_id: None,
            name: String::new(),
            protocol: tcp(),
            loadbalancer_id: None,
            health_monitor: false,
            connection_drain: None,
            member_deletion_protection: false,
            members_per_pool: None,
        }
    }

    pub fn health_monitor(mut self, on: bool) -> Self {
        self.health_monitor = on;
        self
    }

    pub fn connection_drain(mut self, timeout_s: u64) -> Self {
        self.connection_drain = Some(ConnectionDrain {
            enable: true,
            timeout: timeout_s,
        });
        self
    }

    pub fn deletion_protection(mut self, on: bool) -> Self {
        self.member_deletion_protection = on;
        self
    }

    pub fn project(mut self, id: &str) -> Self {
        self.project_id = Some(id.into());
        self
    }

    pub fn members_per_pool(mut self, quota: usize) -> Self {
        self.members_per_pool = Some(quota);
        self
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    /// Default: generated.
    #[serde(default)]
    pub id: Option<String>,
    pub pool_id: String,
    pub address: String,
    pub protocol_port: u16,
    #[serde(default = "one")]
    pub weight: u32,
    #[serde(default)]
    pub instance_id: Option<String>,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub subnet_cidr_id: Option<String>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Instance {
    pub uuid: String,
    pub project_id: String,
    pub local_ipv4: String,
    #[serde(default)]
    pub region_id: Option<String>,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub name: String,
    /// Has a Cloud Service Agency: the metadata service hands out temporary keys.
    #[serde(default)]
    pub agency: bool,
    #[serde(default)]
    pub scaling_group_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScalingGroup {
    pub id: String,
    pub project_id: String,
    #[serde(default = "hook_name")]
    pub hook_name: String,
    /// CONTINUE or ABANDON.
    #[serde(default = "abandon")]
    pub default_result: String,
    #[serde(default = "hour", with = "humantime_serde_compat")]
    pub hook_timeout: Duration,
    /// More INSTANCE_TERMINATING hooks of the group (another tool's: logs shipped, a backup taken),
    /// with the same default result and timeout. A scale-in hangs them together with `hook_name`, and
    /// they come first in the listing.
    #[serde(default)]
    pub other_hooks: Vec<String>,
    /// INSTANCE_LAUNCHING hooks of the group: a launch ([`crate::Sim::start_launch`]) hangs them on
    /// an instance while it is set up.
    #[serde(default)]
    pub launching_hooks: Vec<String>,
}

impl ScalingGroup {
    /// The group's INSTANCE_TERMINATING hooks, in the order a scale-in lists them: `other_hooks`,
    /// then `hook_name`.
    pub fn terminating_hooks(&self) -> Vec<String> {
        self.other_hooks
            .iter()
            .chain([&self.hook_name])
            .cloned()
            .collect()
    }
}

fn hook_name() -> String {
    "terminating-hook".into()
}

fn abandon() -> String {
    "ABANDON".into()
}

fn hour() -> Duration {
    Duration::from_secs(3600)
}

/// How the metadata service treats session tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenMode {
    /// Offered, not required.
    #[default]
    Optional,
    /// Reads without `X-Metadata-Token` get 401.
    Required,
    /// An older platform: the token request answers 404.
    Unsupported,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetadataConfig {
    /// The instance the metadata listener describes ("this server"); default the first.
    pub instance: Option<String>,
    pub tokens: TokenMode,
}

/// What a running simulator can be given more of (admin `POST /seed`, [`crate::Sim::seed`]): the
/// scenario's lists, without its settings. Applied whole or not at all.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Seed {
    pub project: Vec<Project>,
    pub user: Vec<User>,
    pub access_key: Vec<AccessKey>,
    pub pool: Vec<PoolConfig>,
    pub listener: Vec<ListenerConfig>,
    pub member: Vec<MemberConfig>,
    pub instance: Vec<Instance>,
    pub scaling_group: Vec<ScalingGroup>,
}

/// A change to a pool of a running simulator (admin `PATCH /pools/{id}`, [`crate::Sim::update_pool`]):
/// what the console can change under a running agent. Absent fields stay as they are.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolPatch {
    pub name: Option<String>,
    pub health_monitor: Option<bool>,
    /// `{"enable": false, ...}` turns connection drain off.
    pub connection_drain: Option<ConnectionDrain>,
    pub member_deletion_protection: Option<bool>,
}

/// A change to the behaviour of a running simulator (admin `PATCH /settings`,
/// [`crate::Sim::update_settings`]). Absent fields stay as they are.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SettingsPatch {
    /// [`Settings::propagation_delay`], as `"2s"`, `"500ms"`; applies to removals from now on.
    #[serde(with = "propagation_delay_option")]
    pub propagation_delay: Option<Duration>,
    /// [`Settings::page_size_cap`]: absent leaves it, a number (1-2000) sets it, `null` lifts it.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub page_size_cap: Option<Option<usize>>,
}

/// A field whose `null` means something: present (even as `null`) is `Some`, absent stays `None`
/// (serde's `default`).
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// A page cap is 1-2000: a cap of 0 would serve empty pages, above 2000 no page is that long.
pub fn check_page_size_cap(cap: Option<usize>) -> Result<(), String> {
    match cap {
        Some(n) if !(1..=2000).contains(&n) => Err(format!("page_size_cap: {n} is not 1-2000")),
        _ => Ok(()),
    }
}

/// [`SettingsPatch::propagation_delay`]: an optional humantime duration, named in its error (serde's
/// own message does not say which field).
mod propagation_delay_option {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(s) => humantime::parse_duration(&s)
                .map(Some)
                .map_err(|e| serde::de::Error::custom(format!("propagation_delay: {s:?}: {e}"))),
            None => Ok(None),
        }
    }
}

/// A change to the metadata service of a running simulator (admin `PUT /metadata`,
/// [`crate::Sim::set_metadata`]): which instance it describes, how it treats session tokens, whether
/// the instance has an agency. Absent fields stay as they are.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetadataPatch {
    pub instance: Option<String>,
    pub tokens: Option<TokenMode>,
    pub agency: Option<bool>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scenario {
    pub settings: Settings,
    pub project: Vec<Project>,
    pub user: Vec<User>,
    pub access_key: Vec<AccessKey>,
    pub listener: Vec<ListenerConfig>,
    pub pool: Vec<PoolConfig>,
    pub member: Vec<MemberConfig>,
    pub instance: Vec<Instance>,
    pub scaling_group: Vec<ScalingGroup>,
    pub metadata: MetadataConfig,
    /// `[tls]`: the API listener speaks https (see [`crate::tls`]); plain http without it.
    pub tls: Option<crate::tls::TlsConfig>,
}

impl Scenario {
    pub fn from_toml(text: &str) -> Result<Scenario, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Everything the scenario starts with, as one [`Seed`].
    pub fn seed(&self) -> Seed {
        Seed {
            project: self.project.clone(),
            user: self.user.clone(),
            access_key: self.access_key.clone(),
            pool: self.pool.clone(),
            listener: self.listener.clone(),
            member: self.member.clone(),
            instance: self.instance.clone(),
            scaling_group: self.scaling_group.clone(),
        }
    }

    /// An empty scenario to chain on.
    pub fn builder() -> Scenario {
        Scenario::default()
    }

    pub fn build(self) -> Scenario {
        self
    }

    /// Serves the API over TLS.
    pub fn tls(mut self, tls: crate::tls::TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    pub fn settings(mut self, f: impl FnOnce(&mut Settings)) -> Self {
        f(&mut self.settings);
        self
    }

    pub fn project(mut self, id: &str) -> Self {
        self.project.push(Project { id: id.into() });
        self
    }

    pub fn user(mut self, name: &str, domain: &str, password: &str) -> Self {
        self.user.push(User {
            name: name.into(),
            domain: domain.into(),
            password: password.into(),
            projects: vec![],
            deny: vec![],
        });
        self
    }

    pub fn user_denied(mut self, name: &str, domain: &str, password: &str, deny: &[&str]) -> Self {
        self = self.user(name, domain, password);
        self.user.last_mut().expect("just added").deny =
            deny.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn access_key(mut self, ak: &str, sk: &str, project_id: &str) -> Self {
        self.access_key.push(AccessKey {
            ak: ak.into(),
            sk: sk.into(),
            project_id: project_id.into(),
            deny: vec![],
        });
        self
    }

    /// A pool, configured by `f`.
    pub fn pool(mut self, id: &str, f: impl FnOnce(PoolConfig) -> PoolConfig) -> Self {
        self.pool.push(f(PoolConfig::new(id)));
        self
    }

    /// A listener (data-plane port) forwarding to `pool_id`.
    pub fn listener(mut self, id: &str, pool_id: &str) -> Self {
        self.listener.push(ListenerConfig {
            id: id.into(),
            pool_id: pool_id.into(),
            listen: listen_any(),
        });
        self
    }

    pub fn member(mut self, pool_id: &str, id: &str, address: &str, port: u16) -> Self {
        self.member.push(MemberConfig {
            id: Some(id.into()),
            pool_id: pool_id.into(),
            address: address.into(),
            protocol_port: port,
            weight: 1,
            instance_id: None,
            name: String::new(),
            subnet_cidr_id: None,
        });
        self
    }

    pub fn member_of_instance(
        mut self,
        pool_id: &str,
        id: &str,
        address: &str,
        port: u16,
        instance: &str,
    ) -> Self {
        self = self.member(pool_id, id, address, port);
        self.member.last_mut().expect("just added").instance_id = Some(instance.into());
        self
    }

    pub fn instance(mut self, instance: Instance) -> Self {
        self.instance.push(instance);
        self
    }

    pub fn scaling_group(mut self, group: ScalingGroup) -> Self {
        self.scaling_group.push(group);
        self
    }
}
