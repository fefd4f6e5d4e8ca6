//! Configuration: the TOML file plus the environment, parsed once into typed values.
//!
//! Everything downstream receives durations, IDs, CIDRs and URLs, never strings to re-parse. Every error
//! names the field it came from and says what was wrong, and all of it happens before any API call, so a
//! bad configuration exits 78 having touched nothing. Secrets are read from files or the environment here
//! (never from the command line) and wrapped in [`Secret`] at once.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use reqwest::Url;
use serde::Deserialize;

use crate::ids::{InstanceId, MemberId, PoolId, ProjectId, ScalingGroupId};
use crate::secret::Secret;

/// Where the configuration is read from when neither `--config` nor `ELB_DRAIN_CONFIG` says otherwise.
pub const DEFAULT_PATH: &str = "/etc/elb-drain/elb-drain.toml";

/// The default address of the ECS metadata service (link-local, so plain HTTP is expected there).
pub const METADATA_ENDPOINT: &str = "http://169.254.169.254";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config: cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config: {}: {message}", path.display())]
    Syntax { path: PathBuf, message: String },
    #[error("config: {field}: {reason}")]
    Invalid { field: String, reason: String },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The whole, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub cloud: Cloud,
    pub auth: Auth,
    pub members: Vec<MemberSpec>,
    pub drain: Drain,
    pub autoscaling: Option<Autoscaling>,
    pub register: Register,
    /// The daemon's status socket.
    pub status_socket: PathBuf,
    /// Things worth telling the operator that are not errors (e.g. a secret file readable by others).
    /// Printed once logging is up.
    pub warnings: Vec<String>,
}

/// `[cloud]`: where the APIs are and how to talk to them.
#[derive(Debug, Clone)]
pub struct Cloud {
    /// Endpoints default from it; may also come from the metadata service.
    pub region: Option<String>,
    /// Else read from the metadata service (or `HUAWEICLOUD_SDK_PROJECT_ID`).
    pub project_id: Option<ProjectId>,
    pub elb_endpoint: Option<Url>,
    pub iam_endpoint: Option<Url>,
    pub as_endpoint: Option<Url>,
    pub metadata_endpoint: Url,
    /// This server's instance ID, for discovery by `member_instance_id`; else from metadata.
    pub instance_id: Option<InstanceId>,
    /// This server's address in the pools, for discovery by `member_address`; else from metadata.
    pub address: Option<IpAddr>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// How long deregistration may keep retrying before it is declared failed (exit 69).
    pub retry_deadline: Duration,
    pub ca_file: Option<PathBuf>,
    pub allow_insecure_http: bool,
    /// How often `run` re-discovers memberships (only when some are discovered rather than listed).
    pub discovery_interval: Duration,
    /// Items per page when listing pools and members (the API allows 1-2000).
    pub page_size: usize,
    /// Jittered backoff (default). `false` only to measure what lock-step retries do to a fleet.
    pub retry_jitter: bool,
}

impl Cloud {
    /// The ELB endpoint: configured, or derived from the region.
    pub fn elb_endpoint(&self, region: Option<&str>) -> Option<Url> {
        self.elb_endpoint
            .clone()
            .or_else(|| regional("elb", region.or(self.region.as_deref())))
    }

    pub fn iam_endpoint(&self, region: Option<&str>) -> Option<Url> {
        self.iam_endpoint
            .clone()
            .or_else(|| regional("iam", region.or(self.region.as_deref())))
    }

    pub fn as_endpoint(&self, region: Option<&str>) -> Option<Url> {
        self.as_endpoint
            .clone()
            .or_else(|| regional("as", region.or(self.region.as_deref())))
    }
}

fn regional(service: &str, region: Option<&str>) -> Option<Url> {
    Url::parse(&format!("https://{service}.{}.myhuaweicloud.com", region?)).ok()
}

/// `[auth]`: how requests are authenticated.
#[derive(Debug, Clone)]
pub enum Auth {
    /// A ready IAM token; `file` is re-read when the token is refused.
    Token {
        token: Secret,
        file: Option<PathBuf>,
    },
    /// IAM password authentication; the token is fetched and refreshed by the agent.
    Password {
        user: String,
        domain: String,
        password: Secret,
    },
    /// A permanent (or, with a security token, temporary) access key pair; requests are signed.
    AkSk {
        ak: String,
        sk: Secret,
        security_token: Option<Secret>,
    },
    /// Temporary keys of the server's agency, from the metadata service. No secret on disk.
    Metadata,
}

impl Auth {
    pub fn kind(&self) -> &'static str {
        match self {
            Auth::Token { .. } => "token",
            Auth::Password { .. } => "password",
            Auth::AkSk { .. } => "aksk",
            Auth::Metadata => "metadata",
        }
    }
}

/// One `[[member]]`: a pool this server is in, and optionally which membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSpec {
    pub pool_id: PoolId,
    /// Omitted: discovered in this pool by address (and port) or instance ID.
    pub member_id: Option<MemberId>,
    pub address: Option<IpAddr>,
    pub protocol_port: Option<u16>,
    pub subnet_cidr_id: Option<String>,
    pub weight: Option<u8>,
    /// Before taking this membership out, wait (at most `drain.min_healthy_wait`) until at least this
    /// many *other* members of the pool are healthy, so a fleet-wide stop cannot empty the pool.
    pub min_healthy: Option<u32>,
}

/// `[drain]`: what counts as a live connection, and how long to wait for them.
#[derive(Debug, Clone, PartialEq)]
pub struct Drain {
    /// Local ports whose established connections count; empty means "the members' ports".
    pub ports: Vec<u16>,
    pub timeout: Duration,
    pub settle: Duration,
    pub poll_interval: Duration,
    pub exclude_peers: Vec<IpNet>,
    /// How a membership is taken out: deleted, or its weight set to 0 (reversible with one update).
    pub mode: Mode,
    /// What was removed or changed, so `register` can put it back exactly (also after a crash).
    pub state_file: PathBuf,
    /// The longest a `min_healthy` guard may hold a deregistration back.
    pub min_healthy_wait: Duration,
    /// Under systemd, how long a drain may go without progress and still be given more stop time
    /// (`EXTEND_TIMEOUT_USEC`): each extension reaches this far ahead and is renewed only after progress.
    pub stall_timeout: Duration,
}

/// `[drain] mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Delete,
    Weight0,
}

/// `[register]`: putting this server back into its pools (rolling deploys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Register {
    /// `run` registers before reporting ready.
    pub on_start: bool,
    /// Wait until the application's port is listening before registering.
    pub wait_listening: bool,
    /// Wait until the load balancer reports the member ONLINE, at most this long (0: do not wait).
    pub healthy_timeout: Duration,
}

impl Default for Register {
    fn default() -> Self {
        Register {
            on_start: false,
            wait_listening: true,
            healthy_timeout: Duration::from_secs(120),
        }
    }
}

/// The state file: systemd's `StateDirectory=` when set, else /var/lib/elb-drain.
pub fn default_state_file(env: Env<'_>) -> PathBuf {
    let dir = env("STATE_DIRECTORY")
        .and_then(|d| d.split(':').next().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/var/lib/elb-drain"));
    dir.join("state.json")
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            mode: Mode::Delete,
            state_file: PathBuf::from("/var/lib/elb-drain/state.json"),
            min_healthy_wait: Duration::from_secs(60),
            stall_timeout: Duration::from_secs(30),
            ports: Vec::new(),
            timeout: Duration::from_secs(300),
            settle: Duration::from_secs(2),
            poll_interval: Duration::from_millis(200),
            exclude_peers: vec![
                "127.0.0.0/8".parse().expect("valid"),
                "::1/128".parse().expect("valid"),
            ],
        }
    }
}

/// `[autoscaling]`: answer this instance's scale-in lifecycle hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Autoscaling {
    pub scaling_group_id: ScalingGroupId,
    pub poll_interval: Duration,
    pub on_failure: HookResult,
    /// Send EXTEND when the hook would time out within this while the drain is still progressing.
    pub extend_margin: Duration,
    /// The hook elb-drain drains for and answers; without it a lone hanging hook is taken as its own
    /// (see [`crate::hook`]).
    pub hook_name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookResult {
    Continue,
    Abandon,
}

// ---- the file as written -------------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// `example = true` marks the documented example as installed by the package: not a
    /// configuration of this server (see [`is_example`]).
    #[serde(default)]
    example: bool,
    #[serde(default)]
    cloud: RawCloud,
    #[serde(default)]
    auth: RawAuth,
    #[serde(default)]
    member: Vec<RawMember>,
    #[serde(default)]
    drain: RawDrain,
    autoscaling: Option<RawAutoscaling>,
    #[serde(default)]
    register: RawRegister,
    #[serde(default)]
    status: RawStatus,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStatus {
    socket: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRegister {
    on_start: Option<bool>,
    wait_listening: Option<bool>,
    healthy_timeout: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCloud {
    region: Option<String>,
    project_id: Option<String>,
    elb_endpoint: Option<String>,
    iam_endpoint: Option<String>,
    as_endpoint: Option<String>,
    metadata_endpoint: Option<String>,
    instance_id: Option<String>,
    address: Option<String>,
    connect_timeout: Option<String>,
    request_timeout: Option<String>,
    retry_deadline: Option<String>,
    discovery_interval: Option<String>,
    page_size: Option<i64>,
    retry_jitter: Option<bool>,
    ca_file: Option<PathBuf>,
    #[serde(default)]
    allow_insecure_http: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    method: Option<String>,
    token_file: Option<PathBuf>,
    user: Option<String>,
    domain: Option<String>,
    password_file: Option<PathBuf>,
    ak: Option<String>,
    sk_file: Option<PathBuf>,
    security_token_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMember {
    pool_id: Option<String>,
    member_id: Option<String>,
    address: Option<String>,
    protocol_port: Option<i64>,
    subnet_cidr_id: Option<String>,
    weight: Option<i64>,
    min_healthy: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDrain {
    ports: Option<Vec<i64>>,
    timeout: Option<String>,
    settle: Option<String>,
    poll_interval: Option<String>,
    exclude_peers: Option<Vec<String>>,
    mode: Option<String>,
    state_file: Option<PathBuf>,
    min_healthy_wait: Option<String>,
    stall_timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAutoscaling {
    scaling_group_id: Option<String>,
    hook_name: Option<String>,
    poll_interval: Option<String>,
    on_failure: Option<String>,
    extend_margin: Option<String>,
}

/// Reads environment variables; a function so tests can hand in their own environment.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment, with empty values treated as unset.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path, env: Env<'_>) -> Result<Config, ConfigError> {
        let text = crate::files::read_small_text(path, MAX_CONFIG_FILE).map_err(|source| {
            ConfigError::Read {
                path: path.to_owned(),
                source,
            }
        })?;
        Self::parse(&text, path, env)
    }

    /// Validates configuration text; `origin` names it in errors. Relative file paths inside are taken
    /// relative to the current directory, as a shell user would expect.
    pub fn parse(text: &str, origin: &Path, env: Env<'_>) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: origin.to_owned(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        if raw.example {
            // Before anything else is validated: the example's placeholder IDs and region must never
            // reach a cloud, and "describe this server" is the one fix worth saying.
            return Err(invalid("example", EXAMPLE_REASON));
        }
        let mut warnings = Vec::new();
        let cloud = cloud(raw.cloud, env)?;
        let auth = auth(raw.auth, env, &mut warnings)?;
        let members = raw
            .member
            .into_iter()
            .enumerate()
            .map(|(i, m)| member(i + 1, m))
            .collect::<Result<Vec<_>, _>>()?;
        let mut seen = BTreeSet::new();
        for (i, m) in members.iter().enumerate() {
            if let Some(id) = &m.member_id
                && !seen.insert((m.pool_id.clone(), id.clone()))
            {
                return Err(invalid(
                    format!("[[member]] #{}", i + 1),
                    format!("pool {} member {id} is listed twice", m.pool_id),
                ));
            }
        }
        let drain = drain(raw.drain)?;
        let autoscaling = raw.autoscaling.map(autoscaling).transpose()?;
        if matches!(auth, Auth::Password { .. })
            && cloud.project_id.is_none()
            && cloud.iam_endpoint.is_none()
            && cloud.region.is_none()
        {
            return Err(invalid(
                "cloud.region",
                "password authentication needs a region or cloud.iam_endpoint",
            ));
        }
        let defaults = Register::default();
        let register = Register {
            on_start: raw.register.on_start.unwrap_or(defaults.on_start),
            wait_listening: raw
                .register
                .wait_listening
                .unwrap_or(defaults.wait_listening),
            healthy_timeout: duration(
                "register.healthy_timeout",
                raw.register.healthy_timeout,
                defaults.healthy_timeout,
            )?,
        };
        if register.on_start
            && members
                .iter()
                .any(|m| m.address.is_none() || m.protocol_port.is_none())
        {
            return Err(invalid(
                "register.on_start",
                "every [[member]] needs address and protocol_port to be registered",
            ));
        }
        let mut drain = drain;
        if drain.state_file.as_os_str().is_empty() {
            drain.state_file = default_state_file(env);
        }
        Ok(Config {
            cloud,
            auth,
            members,
            drain,
            autoscaling,
            register,
            status_socket: raw
                .status
                .socket
                .unwrap_or_else(|| crate::status::default_socket(env)),
            warnings,
        })
    }

    /// The ports whose connections count: `[drain] ports`, else every configured member's port.
    pub fn drain_ports(&self) -> Vec<u16> {
        if !self.drain.ports.is_empty() {
            return self.drain.ports.clone();
        }
        let ports: BTreeSet<u16> = self
            .members
            .iter()
            .filter_map(|m| m.protocol_port)
            .collect();
        ports.into_iter().collect()
    }
}

fn duration(
    field: &str,
    value: Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let Some(text) = value else {
        return Ok(default);
    };
    let text = text.trim();
    if text.starts_with('-') {
        return Err(invalid(
            field,
            format!("{text:?} is negative; give a duration such as \"30s\""),
        ));
    }
    let d = humantime::parse_duration(text).map_err(|e| {
        invalid(
            field,
            format!("{text:?} is not a duration ({e}); use e.g. \"200ms\", \"30s\", \"5m\""),
        )
    })?;
    if d > MAX_DURATION {
        return Err(invalid(
            field,
            format!("{text:?} is too long (at most 10 years)"),
        ));
    }
    Ok(d)
}

/// The longest duration any setting takes. Deadlines are `Instant::now() + duration`, which panics past
/// the clock's range (about 292 years of seconds), and humantime accepts up to 2^64 seconds: a bound
/// here keeps every sum of settings far inside the clock.
const MAX_DURATION: Duration = Duration::from_secs(10 * 366 * 24 * 3600);

fn positive(field: &str, d: Duration) -> Result<Duration, ConfigError> {
    if d.is_zero() {
        Err(invalid(field, "must be greater than zero"))
    } else {
        Ok(d)
    }
}

fn port(field: &str, value: i64) -> Result<u16, ConfigError> {
    u16::try_from(value)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| invalid(field, format!("{value} is not a TCP port (1-65535)")))
}

fn endpoint(field: &str, value: &str, allow_insecure_http: bool) -> Result<Url, ConfigError> {
    let url =
        Url::parse(value).map_err(|e| invalid(field, format!("{value:?} is not a URL ({e})")))?;
    match url.scheme() {
        "https" => {}
        "http" if allow_insecure_http || is_trusted_plain_http_host(field, &url) => {}
        "http" => {
            return Err(invalid(
                field,
                format!(
                    "{value:?} uses plain http to a non-loopback host; use https, or set \
                     cloud.allow_insecure_http = true if you really mean it"
                ),
            ));
        }
        other => {
            return Err(invalid(
                field,
                format!("{value:?}: unsupported scheme {other:?} (use https)"),
            ));
        }
    }
    if url.host().is_none() {
        return Err(invalid(field, format!("{value:?} has no host")));
    }
    Ok(url)
}

/// Plain http is trusted to loopback, and to the link-local metadata service for the metadata
/// endpoint only (the one service that speaks nothing else; no cloud API lives there).
fn is_trusted_plain_http_host(field: &str, url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => {
            ip.is_loopback()
                || (field == "cloud.metadata_endpoint"
                    && ip == std::net::Ipv4Addr::new(169, 254, 169, 254))
        }
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

fn cloud(raw: RawCloud, env: Env<'_>) -> Result<Cloud, ConfigError> {
    let insecure = raw.allow_insecure_http;
    let opt_endpoint =
        |field: &str, v: Option<String>| v.map(|v| endpoint(field, &v, insecure)).transpose();
    let region = raw.region.map(|r| r.trim().to_owned());
    if let Some(r) = &region
        && (r.is_empty() || !r.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-'))
    {
        return Err(invalid(
            "cloud.region",
            format!("{r:?} is not a region name such as \"cn-north-4\""),
        ));
    }
    let project_id = match raw.project_id {
        Some(p) => {
            Some(ProjectId::parse(&p).map_err(|e| invalid("cloud.project_id", e.to_string()))?)
        }
        None => match env("HUAWEICLOUD_SDK_PROJECT_ID") {
            Some(p) => Some(
                ProjectId::parse(&p)
                    .map_err(|e| invalid("HUAWEICLOUD_SDK_PROJECT_ID", e.to_string()))?,
            ),
            None => None,
        },
    };
    let metadata_endpoint = endpoint(
        "cloud.metadata_endpoint",
        raw.metadata_endpoint
            .as_deref()
            .unwrap_or(METADATA_ENDPOINT),
        insecure,
    )?;
    let instance_id = raw
        .instance_id
        .map(|i| InstanceId::parse(&i).map_err(|e| invalid("cloud.instance_id", e.to_string())))
        .transpose()?;
    let address = raw
        .address
        .map(|a| {
            a.parse::<IpAddr>()
                .map_err(|_| invalid("cloud.address", format!("{a:?} is not an IP address")))
        })
        .transpose()?;
    let ca_file = match raw.ca_file {
        Some(path) => {
            std::fs::metadata(&path).map_err(|e| {
                invalid(
                    "cloud.ca_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            Some(path)
        }
        None => None,
    };
    Ok(Cloud {
        region,
        project_id,
        elb_endpoint: opt_endpoint("cloud.elb_endpoint", raw.elb_endpoint)?,
        iam_endpoint: opt_endpoint("cloud.iam_endpoint", raw.iam_endpoint)?,
        as_endpoint: opt_endpoint("cloud.as_endpoint", raw.as_endpoint)?,
        metadata_endpoint,
        instance_id,
        address,
        connect_timeout: positive(
            "cloud.connect_timeout",
            duration(
                "cloud.connect_timeout",
                raw.connect_timeout,
                Duration::from_secs(3),
            )?,
        )?,
        request_timeout: positive(
            "cloud.request_timeout",
            duration(
                "cloud.request_timeout",
                raw.request_timeout,
                Duration::from_secs(10),
            )?,
        )?,
        retry_deadline: positive(
            "cloud.retry_deadline",
            duration(
                "cloud.retry_deadline",
                raw.retry_deadline,
                Duration::from_secs(60),
            )?,
        )?,
        ca_file,
        allow_insecure_http: insecure,
        discovery_interval: positive(
            "cloud.discovery_interval",
            duration(
                "cloud.discovery_interval",
                raw.discovery_interval,
                Duration::from_secs(60),
            )?,
        )?,
        page_size: match raw.page_size {
            None => 2000,
            Some(n @ 1..=2000) => n as usize,
            Some(n) => {
                return Err(invalid(
                    "cloud.page_size",
                    format!("{n} is not a page size (1-2000)"),
                ));
            }
        },
        retry_jitter: raw.retry_jitter.unwrap_or(true),
    })
}

/// The most a configuration file may hold: a documented example is 6 KiB, a thousand `[[member]]`s
/// are 150 KiB.
const MAX_CONFIG_FILE: u64 = 4 * 1024 * 1024;

const EXAMPLE_REASON: &str = "this is still the example configuration (`example = true`): describe this \
     server in it (cloud, auth, members), then delete that line";

/// Whether `path` is not yet a configuration of this server: absent, or still the documented example
/// (`example = true`, as the package installs it). The packaged unit's `ExecCondition=` asks this so that
/// a fresh install starts nothing, neither failing at boot nor sending the example's placeholders to a
/// cloud. Any other file counts as a configuration, even one that does not parse: `run` then fails
/// loudly on it (78) instead of the unit being skipped quietly.
pub fn is_example(path: &Path) -> Result<bool, ConfigError> {
    let text = match crate::files::read_small_text(path, MAX_CONFIG_FILE) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    let example = toml::from_str::<toml::Table>(&text)
        .ok()
        .and_then(|t| t.get("example")?.as_bool());
    Ok(example == Some(true))
}

/// The most a secret file may hold. The largest secret, an IAM token, is a few KiB; a path to a device
/// such as `/dev/zero` or to a runaway log would otherwise be read until memory runs out.
pub(crate) const MAX_SECRET_FILE: u64 = 1024 * 1024;

/// Reads a secret file: whole content, surrounding white space trimmed, must not be empty. A file that
/// group or others may read is accepted with a warning naming it.
fn secret_file(
    field: &str,
    path: &Path,
    warnings: &mut Vec<String>,
) -> Result<Secret, ConfigError> {
    let text =
        crate::files::read_small_text(path, MAX_SECRET_FILE).map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData => {
                invalid(field, format!("{} {e}: not a secret file", path.display()))
            }
            _ => invalid(field, format!("cannot read {}: {e}", path.display())),
        })?;
    let value = text.trim();
    if value.is_empty() {
        return Err(invalid(field, format!("{} is empty", path.display())));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            warnings.push(format!(
                "{field}: {} is readable by group or others (mode {:o}); chmod 600 it",
                path.display(),
                meta.permissions().mode() & 0o777
            ));
        }
    }
    Ok(Secret::new(value))
}

fn required(field: &str, value: Option<String>, why: &str) -> Result<String, ConfigError> {
    match value.map(|v| v.trim().to_owned()) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(invalid(field, format!("missing; {why}"))),
    }
}

fn auth(raw: RawAuth, env: Env<'_>, warnings: &mut Vec<String>) -> Result<Auth, ConfigError> {
    let method = raw.method.as_deref().unwrap_or("token");
    let unused = |field: &str, set: bool| {
        if set {
            Err(invalid(
                format!("auth.{field}"),
                format!("does not apply to method {method:?}"),
            ))
        } else {
            Ok(())
        }
    };
    match method {
        "token" => {
            unused("user", raw.user.is_some())?;
            unused("password_file", raw.password_file.is_some())?;
            unused("ak", raw.ak.is_some())?;
            unused("sk_file", raw.sk_file.is_some())?;
            if let Some(file) = raw.token_file {
                let token = secret_file("auth.token_file", &file, warnings)?;
                Ok(Auth::Token {
                    token,
                    file: Some(file),
                })
            } else if let Some(token) = env("ELB_DRAIN_TOKEN") {
                Ok(Auth::Token {
                    token: Secret::new(token.trim()),
                    file: None,
                })
            } else {
                Err(invalid(
                    "auth.token_file",
                    "missing; method \"token\" needs auth.token_file or ELB_DRAIN_TOKEN",
                ))
            }
        }
        "password" => {
            unused("token_file", raw.token_file.is_some())?;
            unused("ak", raw.ak.is_some())?;
            unused("sk_file", raw.sk_file.is_some())?;
            let user = required(
                "auth.user",
                raw.user,
                "method \"password\" needs the IAM user name",
            )?;
            let domain = required(
                "auth.domain",
                raw.domain,
                "method \"password\" needs the account (domain) name",
            )?;
            let file = raw.password_file.ok_or_else(|| {
                invalid(
                    "auth.password_file",
                    "missing; method \"password\" reads it from a file",
                )
            })?;
            let password = secret_file("auth.password_file", &file, warnings)?;
            Ok(Auth::Password {
                user,
                domain,
                password,
            })
        }
        "aksk" => {
            unused("token_file", raw.token_file.is_some())?;
            unused("password_file", raw.password_file.is_some())?;
            let ak = match raw.ak.or_else(|| env("HUAWEICLOUD_SDK_AK")) {
                Some(ak) if !ak.trim().is_empty() => ak.trim().to_owned(),
                _ => {
                    return Err(invalid(
                        "auth.ak",
                        "missing; set auth.ak or HUAWEICLOUD_SDK_AK",
                    ));
                }
            };
            if !ak.bytes().all(|c| c.is_ascii_alphanumeric()) {
                return Err(invalid(
                    "auth.ak",
                    "an access key is letters and digits only",
                ));
            }
            let sk = match raw.sk_file {
                Some(file) => secret_file("auth.sk_file", &file, warnings)?,
                None => Secret::new(env("HUAWEICLOUD_SDK_SK").ok_or_else(|| {
                    invalid(
                        "auth.sk_file",
                        "missing; set auth.sk_file or HUAWEICLOUD_SDK_SK",
                    )
                })?),
            };
            let security_token = match raw.security_token_file {
                Some(file) => Some(secret_file("auth.security_token_file", &file, warnings)?),
                None => env("HUAWEICLOUD_SDK_SECURITY_TOKEN").map(Secret::new),
            };
            Ok(Auth::AkSk {
                ak,
                sk,
                security_token,
            })
        }
        "metadata" => {
            for (field, set) in [
                ("token_file", raw.token_file.is_some()),
                ("user", raw.user.is_some()),
                ("password_file", raw.password_file.is_some()),
                ("ak", raw.ak.is_some()),
                ("sk_file", raw.sk_file.is_some()),
            ] {
                unused(field, set)?;
            }
            Ok(Auth::Metadata)
        }
        other => Err(invalid(
            "auth.method",
            format!(
                "unknown method {other:?}; expected one of \"token\", \"password\", \"aksk\", \"metadata\""
            ),
        )),
    }
}

fn member(n: usize, raw: RawMember) -> Result<MemberSpec, ConfigError> {
    let field = |name: &str| format!("[[member]] #{n}: {name}");
    let pool_id = raw
        .pool_id
        .ok_or_else(|| invalid(field("pool_id"), "missing"))?;
    let pool_id = PoolId::parse(&pool_id).map_err(|e| invalid(field("pool_id"), e.to_string()))?;
    let member_id = raw
        .member_id
        .map(|m| MemberId::parse(&m).map_err(|e| invalid(field("member_id"), e.to_string())))
        .transpose()?;
    let address = raw
        .address
        .map(|a| {
            a.parse::<IpAddr>()
                .map_err(|_| invalid(field("address"), format!("{a:?} is not an IP address")))
        })
        .transpose()?;
    let protocol_port = raw
        .protocol_port
        .map(|p| port(&field("protocol_port"), p))
        .transpose()?;
    let weight = raw
        .weight
        .map(|w| {
            u8::try_from(w)
                .ok()
                .filter(|w| *w <= 100)
                .ok_or_else(|| invalid(field("weight"), format!("{w} is not a weight (0-100)")))
        })
        .transpose()?;
    Ok(MemberSpec {
        pool_id,
        member_id,
        address,
        protocol_port,
        subnet_cidr_id: raw.subnet_cidr_id,
        weight,
        min_healthy: raw.min_healthy,
    })
}

fn drain(raw: RawDrain) -> Result<Drain, ConfigError> {
    let defaults = Drain::default();
    let ports = raw
        .ports
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, p)| port(&format!("drain.ports[{i}]"), p))
        .collect::<Result<BTreeSet<u16>, _>>()?
        .into_iter()
        .collect();
    let exclude_peers = match raw.exclude_peers {
        None => defaults.exclude_peers,
        Some(list) => list
            .iter()
            .enumerate()
            .map(|(i, c)| {
                c.parse::<IpNet>()
                    .or_else(|_| c.parse::<IpAddr>().map(IpNet::from))
                    .map(|n| n.trunc())
                    .map_err(|_| {
                        invalid(
                            format!("drain.exclude_peers[{i}]"),
                            format!("{c:?} is not a CIDR"),
                        )
                    })
            })
            .collect::<Result<_, _>>()?,
    };
    let timeout = positive(
        "drain.timeout",
        duration("drain.timeout", raw.timeout, defaults.timeout)?,
    )?;
    let settle = duration("drain.settle", raw.settle, defaults.settle)?;
    let poll_interval = positive(
        "drain.poll_interval",
        duration(
            "drain.poll_interval",
            raw.poll_interval,
            defaults.poll_interval,
        )?,
    )?;
    if settle >= timeout {
        return Err(invalid(
            "drain.settle",
            "must be shorter than drain.timeout",
        ));
    }
    let stall_timeout = duration(
        "drain.stall_timeout",
        raw.stall_timeout,
        defaults.stall_timeout,
    )?;
    // Extensions are renewed at most once a second: a shorter window would lapse between renewals.
    if stall_timeout < Duration::from_secs(1) {
        return Err(invalid("drain.stall_timeout", "must be at least 1s"));
    }
    let mode = match raw.mode.as_deref().unwrap_or("delete") {
        "delete" => Mode::Delete,
        "weight0" => Mode::Weight0,
        other => {
            return Err(invalid(
                "drain.mode",
                format!("{other:?}: expected \"delete\" or \"weight0\""),
            ));
        }
    };
    Ok(Drain {
        ports,
        timeout,
        settle,
        poll_interval,
        exclude_peers,
        mode,
        // Empty: resolved against the environment (STATE_DIRECTORY) by the caller.
        state_file: raw.state_file.unwrap_or_default(),
        min_healthy_wait: duration(
            "drain.min_healthy_wait",
            raw.min_healthy_wait,
            defaults.min_healthy_wait,
        )?,
        stall_timeout,
    })
}

fn autoscaling(raw: RawAutoscaling) -> Result<Autoscaling, ConfigError> {
    let id = required(
        "autoscaling.scaling_group_id",
        raw.scaling_group_id,
        "no metadata key exposes it; copy it from the AS console",
    )?;
    let scaling_group_id = ScalingGroupId::parse(&id)
        .map_err(|e| invalid("autoscaling.scaling_group_id", e.to_string()))?;
    let poll_interval = positive(
        "autoscaling.poll_interval",
        duration(
            "autoscaling.poll_interval",
            raw.poll_interval,
            Duration::from_secs(5),
        )?,
    )?;
    let on_failure = match raw.on_failure.as_deref().unwrap_or("abandon") {
        "abandon" => HookResult::Abandon,
        "continue" => HookResult::Continue,
        other => {
            return Err(invalid(
                "autoscaling.on_failure",
                format!("{other:?}: expected \"abandon\" or \"continue\""),
            ));
        }
    };
    let extend_margin = positive(
        "autoscaling.extend_margin",
        duration(
            "autoscaling.extend_margin",
            raw.extend_margin,
            Duration::from_secs(300),
        )?,
    )?;
    let hook_name = raw
        .hook_name
        .map(|n| hook_name(&n).map(|()| n))
        .transpose()?;
    Ok(Autoscaling {
        scaling_group_id,
        poll_interval,
        on_failure,
        extend_margin,
        hook_name,
    })
}

/// A lifecycle hook's name as Auto Scaling allows it (1 to 32 letters, digits, `_` and `-`), so a
/// name pasted with a space or quotes is refused at start, not waited for in vain at a scale-in.
fn hook_name(name: &str) -> Result<(), ConfigError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if name.is_empty() || name.len() > 32 || !name.chars().all(allowed) {
        return Err(invalid(
            "autoscaling.hook_name",
            format!("{name:?}: a lifecycle hook's name is 1 to 32 letters, digits, '_' and '-'"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const POOL: &str = "36ce7086-a496-4666-9064-5ba0e6840c75";
    const MEMBER: &str = "1923923e-fe8a-484f-bdbc-e11559b1f48f";

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"), &no_env)
    }

    fn token_env(name: &str) -> Option<String> {
        (name == "ELB_DRAIN_TOKEN").then(|| "tok".to_owned())
    }

    fn with_token(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"), &token_env)
    }

    #[test]
    fn a_hook_name_is_taken_as_auto_scaling_spells_one_and_refused_otherwise() {
        let with_name = |name: &str| {
            with_token(&format!(
                "[[member]]\npool_id = \"{POOL}\"\n[autoscaling]\nscaling_group_id = \"{MEMBER}\"\n\
                 hook_name = \"{name}\"\n"
            ))
        };
        for good in ["drain-hook", "elb_drain_1", &"h".repeat(32)] {
            let c = with_name(good).expect(good);
            assert_eq!(c.autoscaling.unwrap().hook_name.as_deref(), Some(good));
        }
        for bad in [
            "",
            "drain hook",
            " drain-hook",
            "drain-hook\\n",
            "ünïcode",
            &"h".repeat(33),
        ] {
            let e = with_name(bad).expect_err(bad).to_string();
            assert!(e.contains("autoscaling.hook_name"), "{bad:?}: {e}");
        }
        let c = with_token(&format!(
            "[[member]]\npool_id = \"{POOL}\"\n[autoscaling]\nscaling_group_id = \"{MEMBER}\"\n"
        ))
        .expect("no name");
        assert_eq!(c.autoscaling.unwrap().hook_name, None);
    }

    /// Found while reviewing what the fuzzed config reaches: `timeout = "300000000000years"` parsed, and
    /// the drain engine's `now + timeout` then panicked when the server stopped.
    #[test]
    fn a_duration_past_the_clock_is_refused_naming_its_field() {
        for (section, key) in [
            ("cloud", "connect_timeout"),
            ("cloud", "request_timeout"),
            ("cloud", "retry_deadline"),
            ("cloud", "discovery_interval"),
            ("drain", "timeout"),
            ("drain", "settle"),
            ("drain", "poll_interval"),
            ("drain", "min_healthy_wait"),
            ("drain", "stall_timeout"),
            ("register", "healthy_timeout"),
        ] {
            let text = format!(
                "[[member]]\npool_id = \"{POOL}\"\n[{section}]\n{key} = \"300000000000years\"\n"
            );
            let e = with_token(&text).expect_err(key).to_string();
            assert!(
                e.contains(&format!("{section}.{key}")) && e.contains("too long"),
                "{e}"
            );
        }
        let e = with_token(&format!(
            "[[member]]\npool_id = \"{POOL}\"\n[autoscaling]\nscaling_group_id = \"{MEMBER}\"\n\
             extend_margin = \"300000000000years\"\n"
        ))
        .expect_err("extend_margin")
        .to_string();
        assert!(e.contains("autoscaling.extend_margin"), "{e}");
        // The longest accepted value still fits the clock, with room for sums of settings.
        let c = with_token(&format!(
            "[[member]]\npool_id = \"{POOL}\"\n[drain]\ntimeout = \"10years\"\n"
        ))
        .expect("10 years is accepted");
        assert!(
            std::time::Instant::now()
                .checked_add(c.drain.timeout * 4)
                .is_some()
        );
    }

    #[test]
    fn a_minimal_config_gets_the_documented_defaults() {
        let cfg = with_token(&format!(
            "[cloud]\nregion = \"cn-north-4\"\nproject_id = \"99a3fff0d03c428eac3678da6a7d0f24\"\n\
             [[member]]\npool_id = \"{POOL}\"\nmember_id = \"{MEMBER}\"\nprotocol_port = 8080\n"
        ))
        .unwrap();
        assert_eq!(cfg.drain, Drain { ..Drain::default() });
        assert_eq!(cfg.drain_ports(), vec![8080]);
        assert_eq!(
            cfg.cloud.elb_endpoint(None).unwrap().as_str(),
            "https://elb.cn-north-4.myhuaweicloud.com/"
        );
        assert_eq!(
            cfg.cloud.metadata_endpoint.as_str(),
            "http://169.254.169.254/"
        );
        assert!(matches!(cfg.auth, Auth::Token { file: None, .. }));
    }

    #[test]
    fn durations_ports_and_cidrs_are_typed() {
        let cfg = with_token(
            "[drain]\nports = [443, 80, 443]\ntimeout = \"90s\"\nsettle = \"500ms\"\npoll_interval = \"50ms\"\n\
             exclude_peers = [\"10.0.0.0/8\", \"fd00::1\"]\n",
        )
        .unwrap();
        assert_eq!(cfg.drain.ports, vec![80, 443]);
        assert_eq!(cfg.drain.timeout, Duration::from_secs(90));
        assert_eq!(cfg.drain.settle, Duration::from_millis(500));
        assert_eq!(cfg.drain.exclude_peers[1].to_string(), "fd00::1/128");
    }

    /// Every malformed configuration names its field.
    #[test]
    fn errors_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let cases: Vec<(String, &str)> = vec![
            (
                "[[member]]\nmember_id = \"x\"\n".into(),
                "[[member]] #1: pool_id",
            ),
            (
                "[[member]]\npool_id = \"abc\"\n".into(),
                "[[member]] #1: pool_id",
            ),
            (
                format!("[[member]]\npool_id = \"{POOL}\"\nmember_id = \"zz\"\n"),
                "member_id",
            ),
            (
                format!("[[member]]\npool_id = \"{POOL}\"\nprotocol_port = 70000\n"),
                "protocol_port",
            ),
            ("[drain]\ntimeout = \"-5s\"\n".into(), "drain.timeout"),
            ("[drain]\ntimeout = \"soon\"\n".into(), "drain.timeout"),
            (
                "[drain]\npoll_interval = \"0s\"\n".into(),
                "drain.poll_interval",
            ),
            (
                "[drain]\nexclude_peers = [\"10.0.0.0/33\"]\n".into(),
                "drain.exclude_peers[0]",
            ),
            ("[auth]\nmethod = \"kerberos\"\n".into(), "auth.method"),
            (
                format!("[auth]\ntoken_file = \"{}\"\n", missing.display()),
                "auth.token_file",
            ),
            (
                "[cloud]\nproject_id = \"nope\"\n".into(),
                "cloud.project_id",
            ),
            (
                "[cloud]\nelb_endpoint = \"http://elb.example.com\"\n".into(),
                "cloud.elb_endpoint",
            ),
            (
                "[cloud]\nelb_endpoint = \"ftp://x\"\n".into(),
                "cloud.elb_endpoint",
            ),
            ("[cloud]\nregoin = \"x\"\n".into(), "regoin"),
            (
                "[auth]\nmethod = \"password\"\nuser = \"u\"\n".into(),
                "auth.domain",
            ),
            ("[auth]\nmethod = \"aksk\"\n".into(), "auth.ak"),
            (
                "[autoscaling]\npoll_interval = \"1s\"\n".into(),
                "autoscaling.scaling_group_id",
            ),
            (
                "[drain]\nsettle = \"10m\"\ntimeout = \"1m\"\n".into(),
                "drain.settle",
            ),
            (
                "[drain]\nstall_timeout = \"500ms\"\n".into(),
                "drain.stall_timeout",
            ),
            ("[drain\n".into(), "test.toml"),
        ];
        for (text, field) in cases {
            let err = with_token(&text).expect_err(&text).to_string();
            assert!(
                err.contains(field),
                "{text:?}: error {err:?} does not name {field:?}"
            );
        }
    }

    /// The documented example is a valid configuration once its `example = true` line is gone (and its
    /// token file swapped for the env var); with that line it is refused, naming it, whatever else is wrong.
    #[test]
    fn the_documented_example_parses_once_it_is_no_longer_marked_as_the_example() {
        let example = include_str!("../config/elb-drain.toml");
        let err = parse(example).unwrap_err().to_string();
        assert!(err.starts_with("config: example: "), "{err}");
        let marker = "\nexample = true\n";
        assert_eq!(example.matches(marker).count(), 1, "one marker line");
        let text = example.replace(marker, "\n").replace(
            "token_file = \"/run/credentials/elb-drain.service/token\"\n",
            "",
        );
        let cfg = with_token(&text).unwrap();
        assert_eq!(cfg.members.len(), 1);
        assert_eq!(cfg.drain.ports, vec![8080]);
        assert_eq!(cfg.drain.timeout, Duration::from_secs(300));
    }

    /// What the packaged unit's `ExecCondition=` (`elb-drain is-configured`) decides on.
    #[test]
    fn only_an_absent_file_or_the_marked_example_is_not_a_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let example = include_str!("../config/elb-drain.toml");
        assert!(is_example(&dir.path().join("absent.toml")).unwrap());
        assert!(is_example(&file("example.toml", example)).unwrap());
        // Edited: the marker line gone, or set to false, or anything else at all (even broken TOML,
        // which `run` then refuses loudly rather than the unit being skipped).
        for (name, text) in [
            ("edited.toml", example.replace("\nexample = true\n", "\n")),
            (
                "false.toml",
                example.replace("example = true", "example = false"),
            ),
            ("empty.toml", String::new()),
            ("broken.toml", "example = true\n[cloud\n".to_owned()),
        ] {
            assert!(!is_example(&file(name, &text)).unwrap(), "{name}");
        }
        let err = is_example(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
    }

    #[test]
    fn token_method_without_a_token_is_an_error() {
        let err = parse("").unwrap_err().to_string();
        assert!(
            err.contains("auth.token_file") && err.contains("ELB_DRAIN_TOKEN"),
            "{err}"
        );
    }

    #[test]
    fn plain_http_is_allowed_to_loopback_metadata_or_by_opt_in() {
        for ok in [
            "http://127.0.0.1:1",
            "http://[::1]:80",
            "http://localhost:9",
        ] {
            with_token(&format!("[cloud]\nelb_endpoint = \"{ok}\"\n")).unwrap();
        }
        with_token("[cloud]\nelb_endpoint = \"http://10.1.2.3\"\nallow_insecure_http = true\n")
            .unwrap();
    }

    /// Every endpoint field is held to the same rule, and the refusal names the field. Parse level
    /// only: nothing here opens a connection.
    #[test]
    fn plain_http_to_a_remote_host_is_refused_for_every_endpoint_unless_opted_in() {
        for field in [
            "elb_endpoint",
            "iam_endpoint",
            "as_endpoint",
            "metadata_endpoint",
        ] {
            let err = with_token(&format!("[cloud]\n{field} = \"http://10.1.2.3\"\n"))
                .expect_err(field)
                .to_string();
            assert!(
                err.contains(&format!("cloud.{field}"))
                    && err.contains("cloud.allow_insecure_http"),
                "{err}"
            );
            with_token(&format!("[cloud]\n{field} = \"https://10.1.2.3\"\n")).unwrap();
            let opted_in = with_token(&format!(
                "[cloud]\n{field} = \"http://10.1.2.3\"\nallow_insecure_http = true\n"
            ))
            .unwrap();
            assert!(opted_in.cloud.allow_insecure_http);
        }
        // The metadata service only speaks http, at its link-local address: the default, no opt-in.
        let cfg = with_token("[cloud]\nmetadata_endpoint = \"http://169.254.169.254\"\n").unwrap();
        assert_eq!(
            cfg.cloud.metadata_endpoint.as_str(),
            "http://169.254.169.254/"
        );
        assert!(!cfg.cloud.allow_insecure_http);
        // The metadata address is trusted for the metadata service only; its neighbours never.
        for near in [
            "http://169.254.169.254",
            "http://169.254.169.253",
            "http://127.0.0.1.example.com",
        ] {
            with_token(&format!("[cloud]\nelb_endpoint = \"{near}\"\n")).expect_err(near);
        }
    }

    #[test]
    fn secret_files_are_read_trimmed_and_checked_for_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let cfg = parse(&format!(
            "[cloud]\nregion = \"r1\"\n[auth]\nmethod = \"password\"\nuser = \"u\"\ndomain = \"d\"\n\
             password_file = \"{}\"\n",
            path.display()
        ))
        .unwrap();
        let Auth::Password { password, .. } = &cfg.auth else {
            panic!("{:?}", cfg.auth)
        };
        assert_eq!(password.expose(), "s3cret");
        assert!(
            cfg.warnings[0].contains("readable by group or others"),
            "{:?}",
            cfg.warnings
        );
        assert!(!format!("{cfg:?}").contains("s3cret"));
    }

    #[test]
    fn aksk_comes_from_the_sdk_environment() {
        let env = |n: &str| match n {
            "HUAWEICLOUD_SDK_AK" => Some("AKEXAMPLE".to_owned()),
            "HUAWEICLOUD_SDK_SK" => Some("sk".to_owned()),
            "HUAWEICLOUD_SDK_SECURITY_TOKEN" => Some("st".to_owned()),
            "HUAWEICLOUD_SDK_PROJECT_ID" => Some("99a3fff0d03c428eac3678da6a7d0f24".to_owned()),
            _ => None,
        };
        let cfg = Config::parse("[auth]\nmethod = \"aksk\"\n", Path::new("t"), &env).unwrap();
        assert!(
            matches!(&cfg.auth, Auth::AkSk { ak, security_token: Some(_), .. } if ak == "AKEXAMPLE")
        );
        assert_eq!(
            cfg.cloud.project_id.unwrap().as_str(),
            "99a3fff0d03c428eac3678da6a7d0f24"
        );
    }
}
