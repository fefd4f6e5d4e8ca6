//! The configuration's validation, field by field: a valid file of one of the four auth methods with
//! fields replaced, removed or repeated, values of every shape a field could be given, and the
//! environment the parse reads.
//!
//! Why beside `config`: fuzzing TOML text spends nearly all its time in the TOML parser (in a minute,
//! 86% of what it kept was syntax errors, and most fields' checks were never reached), while every
//! input here is well-formed TOML, so each execution reaches `Config::parse`'s validation and a bad
//! value in one field cannot hide behind a typo in another.
//!
//! Checked: as in `config`, no panic; a refusal names a field (and, when one field alone was edited
//! with a value of the right TOML type, that field); what is accepted keeps the drain's invariants.
//! Secret files are real files in a scratch directory (empty, blank, private, shared, a directory,
//! binary, missing, endless), so reading them is fuzzed too.

#![no_main]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use elb_drain::config::{Config, ConfigError};
use libfuzzer_sys::fuzz_target;

#[path = "clock.rs"]
mod clock;

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Field {
    Region,
    ProjectId,
    ElbEndpoint,
    IamEndpoint,
    AsEndpoint,
    MetadataEndpoint,
    InstanceId,
    CloudAddress,
    ConnectTimeout,
    RequestTimeout,
    RetryDeadline,
    DiscoveryInterval,
    PageSize,
    RetryJitter,
    CaFile,
    AllowInsecureHttp,
    Method,
    TokenFile,
    User,
    Domain,
    PasswordFile,
    Ak,
    SkFile,
    SecurityTokenFile,
    PoolId(Slot),
    MemberId(Slot),
    MemberAddress(Slot),
    ProtocolPort(Slot),
    SubnetCidrId(Slot),
    Weight(Slot),
    MinHealthy(Slot),
    Ports,
    Timeout,
    Settle,
    PollInterval,
    ExcludePeers,
    Mode,
    StateFile,
    MinHealthyWait,
    ScalingGroupId,
    AsPollInterval,
    OnFailure,
    ExtendMargin,
    OnStart,
    WaitListening,
    HealthyTimeout,
    Socket,
    /// A key no section has: `deny_unknown_fields` must refuse it.
    Unknown,
}

/// Which `[[member]]` table a member field is in.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Slot {
    First,
    Second,
    Third,
}

impl Field {
    /// The table and key, and the name a refusal of this field must carry.
    fn place(self) -> (&'static str, &'static str, String) {
        use Field::*;
        let (table, key) = match self {
            Region => ("cloud", "region"),
            ProjectId => ("cloud", "project_id"),
            ElbEndpoint => ("cloud", "elb_endpoint"),
            IamEndpoint => ("cloud", "iam_endpoint"),
            AsEndpoint => ("cloud", "as_endpoint"),
            MetadataEndpoint => ("cloud", "metadata_endpoint"),
            InstanceId => ("cloud", "instance_id"),
            CloudAddress => ("cloud", "address"),
            ConnectTimeout => ("cloud", "connect_timeout"),
            RequestTimeout => ("cloud", "request_timeout"),
            RetryDeadline => ("cloud", "retry_deadline"),
            DiscoveryInterval => ("cloud", "discovery_interval"),
            PageSize => ("cloud", "page_size"),
            RetryJitter => ("cloud", "retry_jitter"),
            CaFile => ("cloud", "ca_file"),
            AllowInsecureHttp => ("cloud", "allow_insecure_http"),
            Method => ("auth", "method"),
            TokenFile => ("auth", "token_file"),
            User => ("auth", "user"),
            Domain => ("auth", "domain"),
            PasswordFile => ("auth", "password_file"),
            Ak => ("auth", "ak"),
            SkFile => ("auth", "sk_file"),
            SecurityTokenFile => ("auth", "security_token_file"),
            PoolId(_) => ("member", "pool_id"),
            MemberId(_) => ("member", "member_id"),
            MemberAddress(_) => ("member", "address"),
            ProtocolPort(_) => ("member", "protocol_port"),
            SubnetCidrId(_) => ("member", "subnet_cidr_id"),
            Weight(_) => ("member", "weight"),
            MinHealthy(_) => ("member", "min_healthy"),
            Ports => ("drain", "ports"),
            Timeout => ("drain", "timeout"),
            Settle => ("drain", "settle"),
            PollInterval => ("drain", "poll_interval"),
            ExcludePeers => ("drain", "exclude_peers"),
            Mode => ("drain", "mode"),
            StateFile => ("drain", "state_file"),
            MinHealthyWait => ("drain", "min_healthy_wait"),
            ScalingGroupId => ("autoscaling", "scaling_group_id"),
            AsPollInterval => ("autoscaling", "poll_interval"),
            OnFailure => ("autoscaling", "on_failure"),
            ExtendMargin => ("autoscaling", "extend_margin"),
            OnStart => ("register", "on_start"),
            WaitListening => ("register", "wait_listening"),
            HealthyTimeout => ("register", "healthy_timeout"),
            Socket => ("status", "socket"),
            Unknown => ("drain", "tiemout"),
        };
        let name = match self.slot() {
            Some(s) => format!("[[member]] #{}: {key}", s as usize + 1),
            None => format!("{table}.{key}"),
        };
        (table, key, name)
    }

    fn slot(self) -> Option<Slot> {
        use Field::*;
        match self {
            PoolId(s) | MemberId(s) | MemberAddress(s) | ProtocolPort(s) | SubnetCidrId(s)
            | Weight(s) | MinHealthy(s) => Some(s),
            _ => None,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Unit {
    Ns,
    Ms,
    S,
    M,
    H,
    Days,
    Weeks,
    Years,
}

/// Files a path setting may point at, made once per process in a scratch directory.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum File {
    Private,
    Shared,
    Empty,
    Blank,
    Binary,
    Directory,
    Missing,
    Null,
    Endless,
}

impl File {
    fn path(self) -> PathBuf {
        let dir = scratch();
        match self {
            File::Private => dir.join("private"),
            File::Shared => dir.join("shared"),
            File::Empty => dir.join("empty"),
            File::Blank => dir.join("blank"),
            File::Binary => dir.join("binary"),
            File::Directory => dir.to_owned(),
            File::Missing => dir.join("missing"),
            File::Null => PathBuf::from("/dev/null"),
            File::Endless => PathBuf::from("/dev/zero"),
        }
    }
}

fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("elb-drain-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        for (name, content, mode) in [
            ("private", &b"s3cret\n"[..], 0o600),
            ("shared", b"s3cret", 0o644),
            ("empty", b"", 0o600),
            ("blank", b" \n\t\n", 0o600),
            ("binary", b"\xff\xfe\0s3cret", 0o600),
        ] {
            let path = dir.join(name);
            std::fs::write(&path, content).expect("a scratch file");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .expect("its mode");
        }
        dir
    })
}

/// A value as written in the file. Each shape some field takes, and the near misses around it.
#[derive(Arbitrary, Debug, Clone)]
enum Value {
    /// The line is left out: the default, or "missing".
    Remove,
    Text(String),
    Int(i64),
    Bool(bool),
    Duration {
        amount: u64,
        unit: Unit,
        negative: bool,
        /// A second component, as in "1m 30s".
        and: Option<(u32, Unit)>,
    },
    /// A UUID from its 128 bits, upper-cased or cut short on request.
    Uuid {
        bits: u128,
        upper: bool,
        cut: u8,
    },
    ProjectId(u128),
    Ipv4([u8; 4]),
    Ipv6([u16; 8]),
    Cidr {
        v4: [u8; 4],
        prefix: u8,
    },
    Url {
        scheme: Scheme,
        host: Host,
        port: Option<u16>,
        path: String,
    },
    Path(File),
    Ports(Vec<i64>),
    Texts(Vec<String>),
    /// One of the words some field takes (method, mode, on_failure).
    Word(Word),
    /// A table where a scalar belongs: a type error the TOML layer reports.
    Table,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Scheme {
    Https,
    Http,
    Ftp,
    None,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Host {
    Loopback,
    Loopback6,
    Localhost,
    Metadata,
    Domain,
    Private,
    Empty,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Word {
    Token,
    Password,
    Aksk,
    Metadata,
    Delete,
    Weight0,
    Abandon,
    Continue,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Base {
    Token,
    TokenFile,
    Password,
    AkSk,
    Metadata,
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum EnvName {
    Token,
    Ak,
    Sk,
    SecurityToken,
    ProjectId,
    StateDirectory,
    RuntimeDirectory,
}

impl EnvName {
    fn name(self) -> &'static str {
        match self {
            EnvName::Token => "ELB_DRAIN_TOKEN",
            EnvName::Ak => "HUAWEICLOUD_SDK_AK",
            EnvName::Sk => "HUAWEICLOUD_SDK_SK",
            EnvName::SecurityToken => "HUAWEICLOUD_SDK_SECURITY_TOKEN",
            EnvName::ProjectId => "HUAWEICLOUD_SDK_PROJECT_ID",
            EnvName::StateDirectory => "STATE_DIRECTORY",
            EnvName::RuntimeDirectory => "RUNTIME_DIRECTORY",
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    base: Base,
    autoscaling: bool,
    edits: Vec<(Field, Value)>,
    env: Vec<(EnvName, String)>,
}

/// A TOML basic string.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn unit(u: Unit) -> &'static str {
    match u {
        Unit::Ns => "ns",
        Unit::Ms => "ms",
        Unit::S => "s",
        Unit::M => "m",
        Unit::H => "h",
        Unit::Days => "days",
        Unit::Weeks => "weeks",
        Unit::Years => "years",
    }
}

impl Value {
    /// The right-hand side of `key = …`, or `None` to leave the line out.
    fn render(&self) -> Option<String> {
        Some(match self {
            Value::Remove => return None,
            Value::Text(s) => quote(s),
            Value::Int(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Duration {
                amount,
                unit: u,
                negative,
                and,
            } => {
                let mut s = format!("{}{amount}{}", if *negative { "-" } else { "" }, unit(*u));
                if let Some((n, u)) = and {
                    let _ = write!(s, " {n}{}", unit(*u));
                }
                quote(&s)
            }
            Value::Uuid { bits, upper, cut } => {
                let h = format!("{bits:032x}");
                let mut s = format!(
                    "{}-{}-{}-{}-{}",
                    &h[..8],
                    &h[8..12],
                    &h[12..16],
                    &h[16..20],
                    &h[20..]
                );
                if *upper {
                    s.make_ascii_uppercase();
                }
                if *cut > 0 && *cut < 36 {
                    s.truncate(36 - usize::from(*cut));
                }
                quote(&s)
            }
            Value::ProjectId(bits) => quote(&format!("{bits:032x}")),
            Value::Ipv4(a) => quote(&std::net::Ipv4Addr::from(*a).to_string()),
            Value::Ipv6(a) => quote(&std::net::Ipv6Addr::from(*a).to_string()),
            Value::Cidr { v4, prefix } => {
                quote(&format!("{}/{prefix}", std::net::Ipv4Addr::from(*v4)))
            }
            Value::Url {
                scheme,
                host,
                port,
                path,
            } => {
                let scheme = match scheme {
                    Scheme::Https => "https://",
                    Scheme::Http => "http://",
                    Scheme::Ftp => "ftp://",
                    Scheme::None => "",
                };
                let host = match host {
                    Host::Loopback => "127.0.0.1",
                    Host::Loopback6 => "[::1]",
                    Host::Localhost => "localhost",
                    Host::Metadata => "169.254.169.254",
                    Host::Domain => "elb.cn-north-4.myhuaweicloud.com",
                    Host::Private => "10.0.0.1",
                    Host::Empty => "",
                };
                let port = port.map(|p| format!(":{p}")).unwrap_or_default();
                quote(&format!("{scheme}{host}{port}{path}"))
            }
            Value::Path(f) => quote(&f.path().display().to_string()),
            Value::Ports(p) => format!(
                "[{}]",
                p.iter().map(i64::to_string).collect::<Vec<_>>().join(", ")
            ),
            Value::Texts(t) => format!(
                "[{}]",
                t.iter().map(|s| quote(s)).collect::<Vec<_>>().join(", ")
            ),
            Value::Word(w) => quote(match w {
                Word::Token => "token",
                Word::Password => "password",
                Word::Aksk => "aksk",
                Word::Metadata => "metadata",
                Word::Delete => "delete",
                Word::Weight0 => "weight0",
                Word::Abandon => "abandon",
                Word::Continue => "continue",
            }),
            Value::Table => "{ a = 1 }".to_owned(),
        })
    }
}

const POOL: &str = "\"36ce7086-a496-4666-9064-5ba0e6840c75\"";

/// The valid file edits start from, as (table, key, value) lines; members have their own tables.
fn base(b: Base, autoscaling: bool) -> Vec<(&'static str, &'static str, String)> {
    let mut lines: Vec<(&str, &str, String)> = vec![
        ("cloud", "region", "\"cn-north-4\"".into()),
        ("cloud", "elb_endpoint", "\"https://127.0.0.1:8443\"".into()),
        (
            "cloud",
            "metadata_endpoint",
            "\"http://127.0.0.1:1\"".into(),
        ),
        ("drain", "ports", "[8080]".into()),
        ("drain", "timeout", "\"5m\"".into()),
        ("drain", "settle", "\"2s\"".into()),
        (
            "drain",
            "state_file",
            quote(&scratch().join("state.json").display().to_string()),
        ),
        (
            "status",
            "socket",
            quote(&scratch().join("status.sock").display().to_string()),
        ),
    ];
    let secret = quote(&File::Private.path().display().to_string());
    match b {
        Base::Token => lines.push(("auth", "method", "\"token\"".into())),
        Base::TokenFile => lines.push(("auth", "token_file", secret)),
        Base::Password => {
            lines.push(("auth", "method", "\"password\"".into()));
            lines.push(("auth", "user", "\"ops\"".into()));
            lines.push(("auth", "domain", "\"acme\"".into()));
            lines.push(("auth", "password_file", secret));
        }
        Base::AkSk => {
            lines.push(("auth", "method", "\"aksk\"".into()));
            lines.push(("auth", "ak", "\"AKTESTEXAMPLE0000000\"".into()));
            lines.push(("auth", "sk_file", secret));
        }
        Base::Metadata => lines.push(("auth", "method", "\"metadata\"".into())),
    }
    if autoscaling {
        lines.push((
            "autoscaling",
            "scaling_group_id",
            "\"ab9d0a2f-5c2e-4b0a-9a4e-0c1c2c3c4c5c\"".into(),
        ));
    }
    lines
}

fn render(lines: &[(&str, &str, String)], members: &[Vec<(&str, String)>]) -> String {
    let mut out = String::new();
    for table in [
        "cloud",
        "auth",
        "drain",
        "autoscaling",
        "register",
        "status",
    ] {
        let mine: Vec<_> = lines.iter().filter(|(t, _, _)| *t == table).collect();
        if mine.is_empty() {
            continue;
        }
        let _ = writeln!(out, "[{table}]");
        for (_, k, v) in mine {
            let _ = writeln!(out, "{k} = {v}");
        }
    }
    for m in members {
        out.push_str("[[member]]\n");
        for (k, v) in m {
            let _ = writeln!(out, "{k} = {v}");
        }
    }
    out
}

fuzz_target!(|input: Input| {
    let mut lines = base(input.base, input.autoscaling);
    let mut members: Vec<Vec<(&str, String)>> = vec![vec![("pool_id", POOL.to_owned())]];
    // A later edit of a key replaces an earlier one: TOML refuses a key given twice.
    for (field, value) in input.edits.iter().take(16) {
        let (table, key, _) = field.place();
        let rendered = value.render();
        if let Some(slot) = field.slot() {
            let i = slot as usize;
            while members.len() <= i {
                members.push(vec![("pool_id", POOL.to_owned())]);
            }
            members[i].retain(|(k, _)| *k != key);
            if let Some(v) = rendered {
                members[i].push((key, v));
            }
        } else {
            lines.retain(|(t, k, _)| !(*t == table && *k == key));
            if let Some(v) = rendered {
                lines.push((table, key, v));
            }
        }
    }
    let text = render(&lines, &members);

    let mut env: HashMap<&str, &str> = HashMap::from([("ELB_DRAIN_TOKEN", "tok")]);
    for (name, value) in input.env.iter().take(8) {
        env.insert(name.name(), value.as_str());
    }
    let lookup = |name: &str| {
        env.get(name)
            .filter(|v| !v.is_empty())
            .map(|v| (*v).to_owned())
    };

    match Config::parse(&text, Path::new("fuzz.toml"), &lookup) {
        Ok(config) => {
            assert!(config.drain.settle < config.drain.timeout, "{text}");
            assert!(!config.drain.poll_interval.is_zero());
            assert!((1..=2000).contains(&config.cloud.page_size));
            assert!(!config.drain_ports().contains(&0));
            assert!(
                config
                    .members
                    .iter()
                    .all(|m| m.weight.is_none_or(|w| w <= 100))
            );
            clock::assert_durations_fit(&config);
        }
        Err(ConfigError::Syntax { message, .. }) => {
            assert!(message.contains("line "), "no position: {message}");
        }
        Err(ConfigError::Invalid { field, reason }) => {
            assert!(!field.trim().is_empty(), "no field: {reason}");
            assert!(!reason.trim().is_empty(), "no reason: {field}");
            // One edit of a string field with a string: a refusal is that field's, or (for settings
            // checked against another) one of the pair, or the auth method's own requirements.
            if let [(edited, Value::Text(_))] = input.edits.as_slice()
                && input.env.is_empty()
            {
                let (table, _, name) = edited.place();
                let related = (matches!(edited, Field::Timeout | Field::Settle)
                    && field == "drain.settle")
                    // A lone [autoscaling] setting also needs scaling_group_id.
                    || (table == "autoscaling" && field.starts_with("autoscaling."));
                assert!(
                    field == name || related || field.starts_with("auth."),
                    "edited {name}, refused naming {field}: {reason}\n{text}"
                );
            }
        }
        Err(e @ ConfigError::Read { .. }) => panic!("parse never reads the file: {e}"),
    }
});
