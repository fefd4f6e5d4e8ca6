//! Hostile input, in the ordinary test run: the four surfaces the fuzz targets in `fuzz/` cover (the
//! configuration, the cloud's answers, the kernel's socket tables, the request signer), as property tests
//! small enough for CI. Each asserts more than "no panic": a bad value in a field gives an error naming
//! that field (or the operation, file and line), and what is valid round-trips to what was meant.
//!
//! Nothing here opens a socket: every parser is a pure function over bytes (or a temporary file).

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use elb_drain::census::{Census, CensusError, CensusSpec, ProcCensus, netlink, procfs};
use elb_drain::cloud::{CloudError, api_error, autoscaling, elb, iam, metadata};
use elb_drain::config::{Config, ConfigError};
use elb_drain::ids::PoolId;
use elb_drain::secret::Secret;
use elb_drain::sign::{self, SigningKey};
use proptest::prelude::*;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

const POOL: &str = "36ce7086-a496-4666-9064-5ba0e6840c75";
const MEMBER: &str = "1923923e-fe8a-484f-bdbc-e11559b1f48f";
const INSTANCE: &str = "6a7bd0c6-9e22-4d9f-a9c2-0d11ee3c0e55";

fn cases(n: u32) -> ProptestConfig {
    ProptestConfig {
        cases: n,
        // Shrunk failures are reported in the test output; no regression file is written beside the test.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---- configuration -----------------------------------------------------------------------------------

fn token_env(name: &str) -> Option<String> {
    (name == "ELB_DRAIN_TOKEN").then(|| "tok".to_owned())
}

fn parse_config(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("hostile.toml"), &token_env)
}

/// A TOML basic string holding `s` (JSON's escapes are TOML's).
fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

/// Every section of a valid configuration, one line per field, so one line can be replaced.
fn base_config() -> Vec<(&'static str, &'static str, String)> {
    [
        ("cloud", "region", "\"cn-north-4\""),
        (
            "cloud",
            "project_id",
            "\"99a3fff0d03c428eac3678da6a7d0f24\"",
        ),
        ("cloud", "elb_endpoint", "\"https://elb.example.com\""),
        ("cloud", "iam_endpoint", "\"https://iam.example.com\""),
        ("cloud", "as_endpoint", "\"https://as.example.com\""),
        ("cloud", "metadata_endpoint", "\"http://127.0.0.1:1\""),
        ("cloud", "address", "\"192.168.0.10\""),
        (
            "cloud",
            "instance_id",
            "\"6a7bd0c6-9e22-4d9f-a9c2-0d11ee3c0e55\"",
        ),
        ("cloud", "connect_timeout", "\"3s\""),
        ("cloud", "request_timeout", "\"10s\""),
        ("cloud", "retry_deadline", "\"60s\""),
        ("cloud", "discovery_interval", "\"60s\""),
        ("cloud", "page_size", "2000"),
        ("auth", "method", "\"token\""),
        (
            "member",
            "pool_id",
            "\"36ce7086-a496-4666-9064-5ba0e6840c75\"",
        ),
        (
            "member",
            "member_id",
            "\"1923923e-fe8a-484f-bdbc-e11559b1f48f\"",
        ),
        ("member", "address", "\"192.168.0.10\""),
        ("member", "protocol_port", "8080"),
        ("member", "weight", "1"),
        ("drain", "ports", "[8080]"),
        ("drain", "timeout", "\"5m\""),
        ("drain", "settle", "\"2s\""),
        ("drain", "poll_interval", "\"200ms\""),
        ("drain", "exclude_peers", "[\"127.0.0.0/8\"]"),
        ("drain", "mode", "\"delete\""),
        ("drain", "min_healthy_wait", "\"1m\""),
        (
            "autoscaling",
            "scaling_group_id",
            "\"ab9d0a2f-5c2e-4b0a-9a4e-0c1c2c3c4c5c\"",
        ),
        ("autoscaling", "poll_interval", "\"5s\""),
        ("autoscaling", "on_failure", "\"abandon\""),
        ("autoscaling", "extend_margin", "\"5m\""),
        ("register", "healthy_timeout", "\"2m\""),
    ]
    .into_iter()
    .map(|(s, k, v)| (s, k, v.to_owned()))
    .collect()
}

fn render(lines: &[(&str, &str, String)]) -> String {
    let mut out = String::new();
    let mut section = "";
    for (s, k, v) in lines {
        if *s != section {
            section = s;
            out.push_str(&if *s == "member" {
                "[[member]]\n".to_owned()
            } else {
                format!("[{s}]\n")
            });
        }
        out.push_str(&format!("{k} = {v}\n"));
    }
    out
}

fn not_a_duration() -> impl Strategy<Value = String> {
    prop_oneof![
        "-[0-9]{1,6}(ms|s|m|h)",
        "[a-z ]{0,8}",
        "[0-9]{1,4}(qs|zz|x)",
        "[0-9]{25,30}s",
    ]
    .prop_filter("a duration after all", |s| {
        s.trim().starts_with('-') || humantime::parse_duration(s.trim()).is_err()
    })
}

fn not_a_uuid() -> impl Strategy<Value = String> {
    "[0-9a-fA-F-]{0,40}|[ -~]{0,20}".prop_filter("a uuid after all", |s| {
        elb_drain::ids::PoolId::parse(s).is_err()
    })
}

fn not_an_ip() -> impl Strategy<Value = String> {
    "[0-9.:a-z]{0,20}".prop_filter("an address after all", |s| s.parse::<IpAddr>().is_err())
}

/// A field and a value it must refuse, with the name its error has to carry.
fn bad_field() -> impl Strategy<Value = (&'static str, &'static str, String, &'static str)> {
    let s = |st: BoxedStrategy<String>| st.prop_map(|v| toml_str(&v)).boxed();
    prop_oneof![
        s("[a-z]{1,3}[ _./!]{1,3}[a-z0-9]{1,5}".boxed()).prop_map(|v| (
            "cloud",
            "region",
            v,
            "cloud.region"
        )),
        s("[0-9a-f]{0,31}|[0-9a-f]{33,40}|[g-z]{32}".boxed()).prop_map(|v| (
            "cloud",
            "project_id",
            v,
            "cloud.project_id"
        )),
        s("(ftp|file|gopher)://[a-z]{1,8}|[a-z]{1,8}|http://[a-z]{1,8}\\.example".boxed())
            .prop_map(|v| ("cloud", "elb_endpoint", v, "cloud.elb_endpoint")),
        s(not_an_ip().boxed()).prop_map(|v| ("cloud", "address", v, "cloud.address")),
        s(not_a_uuid().boxed()).prop_map(|v| ("cloud", "instance_id", v, "cloud.instance_id")),
        s(not_a_duration().boxed()).prop_map(|v| (
            "cloud",
            "connect_timeout",
            v,
            "cloud.connect_timeout"
        )),
        s(not_a_duration().boxed()).prop_map(|v| (
            "cloud",
            "retry_deadline",
            v,
            "cloud.retry_deadline"
        )),
        prop_oneof![i64::MIN..=0, 2001..=i64::MAX].prop_map(|n| (
            "cloud",
            "page_size",
            n.to_string(),
            "cloud.page_size"
        )),
        s("[a-z]{1,10}"
            .prop_filter("a method", |m| {
                !["token", "password", "aksk", "metadata"].contains(&m.as_str())
            })
            .boxed())
        .prop_map(|v| ("auth", "method", v, "auth.method")),
        s(not_a_uuid().boxed()).prop_map(|v| ("member", "pool_id", v, "[[member]] #1: pool_id")),
        s(not_a_uuid().boxed()).prop_map(|v| (
            "member",
            "member_id",
            v,
            "[[member]] #1: member_id"
        )),
        s(not_an_ip().boxed()).prop_map(|v| ("member", "address", v, "[[member]] #1: address")),
        prop_oneof![i64::MIN..=0, 65536..=i64::MAX].prop_map(|n| (
            "member",
            "protocol_port",
            n.to_string(),
            "[[member]] #1: protocol_port"
        )),
        prop_oneof![i64::MIN..0, 101..=i64::MAX].prop_map(|n| (
            "member",
            "weight",
            n.to_string(),
            "[[member]] #1: weight"
        )),
        prop_oneof![i64::MIN..=0, 65536..=i64::MAX].prop_map(|n| (
            "drain",
            "ports",
            format!("[{n}]"),
            "drain.ports[0]"
        )),
        s(not_a_duration().boxed()).prop_map(|v| ("drain", "timeout", v, "drain.timeout")),
        s(not_a_duration().boxed()).prop_map(|v| (
            "drain",
            "poll_interval",
            v,
            "drain.poll_interval"
        )),
        s("[a-z0-9./:]{1,12}"
            .prop_filter("a cidr", |c| {
                c.parse::<ipnet::IpNet>().is_err() && c.parse::<IpAddr>().is_err()
            })
            .boxed())
        .prop_map(|v| (
            "drain",
            "exclude_peers",
            format!("[\"10.0.0.0/8\", {v}]"),
            "drain.exclude_peers[1]"
        )),
        s("[a-z0-9]{0,10}"
            .prop_filter("a mode", |m| m != "delete" && m != "weight0")
            .boxed())
        .prop_map(|v| ("drain", "mode", v, "drain.mode")),
        s(not_a_uuid().boxed()).prop_map(|v| (
            "autoscaling",
            "scaling_group_id",
            v,
            "autoscaling.scaling_group_id"
        )),
        s("[a-z]{0,10}"
            .prop_filter("an answer", |m| m != "abandon" && m != "continue")
            .boxed())
        .prop_map(|v| ("autoscaling", "on_failure", v, "autoscaling.on_failure")),
        s(not_a_duration().boxed()).prop_map(|v| (
            "register",
            "healthy_timeout",
            v,
            "register.healthy_timeout"
        )),
    ]
}

#[test]
fn the_base_configuration_is_valid() {
    // Without this, every "error names the field" case below could pass on an unrelated error.
    let config = parse_config(&render(&base_config())).expect("the base configuration is valid");
    assert_eq!(config.members.len(), 1);
    assert!(config.autoscaling.is_some());
}

proptest! {
    #![proptest_config(cases(256))]

    /// One bad value anywhere in an otherwise valid file: refused, and the error names that field.
    #[test]
    fn a_bad_value_is_refused_naming_its_field((section, key, value, name) in bad_field()) {
        let mut lines = base_config();
        let line = lines
            .iter_mut()
            .find(|(s, k, _)| *s == section && *k == key)
            .expect("the field is in the base configuration");
        line.2 = value.clone();
        let text = render(&lines);
        match parse_config(&text) {
            Ok(_) => prop_assert!(false, "{key} = {value} was accepted"),
            Err(e) => {
                let message = e.to_string();
                prop_assert!(
                    message.contains(name),
                    "{key} = {value}: {message:?} does not name {name:?}"
                );
            }
        }
    }

    /// A value of a TOML type no field takes (a table, a date) is a syntax error pointing at the line
    /// of the field.
    #[test]
    fn a_value_of_the_wrong_type_points_at_its_line(
        index in 0..31usize,
        value in prop_oneof![Just("{ a = 1 }".to_owned()), Just("1979-05-27".to_owned()), Just("{}".to_owned())],
    ) {
        let mut lines = base_config();
        let index = index % lines.len();
        lines[index].2 = value;
        let text = render(&lines);
        let line_no = text
            .lines()
            .position(|l| l.starts_with(&format!("{} = ", lines[index].1)) && l.ends_with(&lines[index].2))
            .expect("the line is there")
            + 1;
        match parse_config(&text) {
            Err(ConfigError::Syntax { message, .. }) => prop_assert!(
                message.contains(&format!("line {line_no}")),
                "{} = {}: {message:?} does not point at line {line_no}", lines[index].1, lines[index].2
            ),
            other => prop_assert!(false, "{} = {}: {other:?}", lines[index].1, lines[index].2),
        }
    }

    /// Anything at all: a configuration or an error that names a field or a position, never a panic.
    #[test]
    fn any_text_is_a_configuration_or_a_located_error(
        text in prop_oneof![
            ".{0,200}",
            // Plausible keys and values in plausible sections, so validation is reached too.
            proptest::collection::vec(
                ("(cloud|auth|drain|autoscaling|register|status|\\[member\\])",
                 "(region|ports|timeout|settle|mode|pool_id|method|page_size|address|socket|weight)",
                 "(\"[ -~]{0,12}\"|-?[0-9]{1,6}|\\[[0-9, ]{0,10}\\]|true|\"[0-9]{1,3}[a-z]{0,2}\")"),
                0..8,
            ).prop_map(|v| v.into_iter().map(|(s, k, val)| format!("[{s}]\n{k} = {val}\n")).collect()),
        ]
    ) {
        match parse_config(&text) {
            Ok(config) => {
                prop_assert!(config.drain.settle < config.drain.timeout);
                prop_assert!(fits_the_clock(&config));
            }
            Err(ConfigError::Syntax { message, .. }) => {
                prop_assert!(message.contains("line "), "no position: {message:?}")
            }
            Err(ConfigError::Invalid { field, reason }) => {
                prop_assert!(!field.trim().is_empty() && !reason.trim().is_empty())
            }
            Err(e @ ConfigError::Read { .. }) => prop_assert!(false, "parse read a file: {e}"),
        }
    }
}

/// Every duration setting can be added to the clock, with room for sums (deadlines are `now + d`).
fn fits_the_clock(c: &Config) -> bool {
    let now = std::time::Instant::now();
    [
        c.cloud.connect_timeout,
        c.cloud.request_timeout,
        c.cloud.retry_deadline,
        c.cloud.discovery_interval,
        c.drain.timeout,
        c.drain.settle,
        c.drain.poll_interval,
        c.drain.min_healthy_wait,
        c.register.healthy_timeout,
    ]
    .into_iter()
    .chain(
        c.autoscaling
            .iter()
            .flat_map(|a| [a.poll_interval, a.extend_margin]),
    )
    .all(|d| now.checked_add(d * 4).is_some())
}

proptest! {
    #![proptest_config(cases(128))]

    /// Durations as long as humantime can spell: refused past the clock, naming the field, instead of
    /// a panic at `now + timeout` when the server stops.
    #[test]
    fn a_duration_past_the_clock_is_refused(
        index in 0..16usize,
        amount in prop_oneof![1u64..=u64::MAX, Just(u64::MAX), 10u64..1_000_000],
        unit in prop_oneof![Just("s"), Just("h"), Just("days"), Just("years")],
    ) {
        let durations: Vec<_> = base_config()
            .into_iter()
            .enumerate()
            .filter(|(_, (_, k, _))| {
                k.ends_with("timeout")
                    || k.ends_with("interval")
                    || ["retry_deadline", "settle", "min_healthy_wait", "extend_margin"].contains(k)
            })
            .map(|(i, _)| i)
            .collect();
        let mut lines = base_config();
        let at = durations[index % durations.len()];
        lines[at].2 = toml_str(&format!("{amount}{unit}"));
        let name = format!("{}.{}", lines[at].0, lines[at].1);
        match parse_config(&render(&lines)) {
            Ok(config) => prop_assert!(fits_the_clock(&config)),
            Err(e) => prop_assert!(e.to_string().contains(&name), "{e}"),
        }
    }
}

/// A secret file that never ends is refused naming its field, not read until memory runs out: the
/// `config_fields` fuzz target found `token_file = "/dev/zero"` making the parse allocate 2 GiB and
/// abort (see FUZZING.md). A huge regular file is refused the same way; one at the limit is a secret.
#[test]
fn an_endless_or_huge_secret_file_is_refused_naming_its_field() {
    const LIMIT: usize = 1024 * 1024;
    let file_of = |n: usize| {
        let mut f = tempfile::NamedTempFile::new().expect("a temporary file");
        f.write_all(&vec![b'k'; n]).expect("written");
        f
    };
    let (huge, fits) = (file_of(LIMIT + 1), file_of(LIMIT));
    let quoted = |p: &Path| toml_str(&p.display().to_string());
    let zero = Path::new("/dev/zero");
    let auth =
        |method: &str, field: &str, path: &Path| -> Vec<(&'static str, &'static str, String)> {
            let mut lines = vec![("auth", "method", toml_str(method))];
            match method {
                "password" => {
                    lines.push(("auth", "user", toml_str("ops")));
                    lines.push(("auth", "domain", toml_str("acme")));
                }
                "aksk" => lines.push(("auth", "ak", toml_str("AKTESTEXAMPLE0000000"))),
                _ => {}
            }
            if field == "security_token_file" {
                lines.push(("auth", "sk_file", quoted(fits.path())));
            }
            let key = match field {
                "token_file" => "token_file",
                "password_file" => "password_file",
                "sk_file" => "sk_file",
                _ => "security_token_file",
            };
            lines.push(("auth", key, quoted(path)));
            lines
        };
    let with_auth = |auth_lines: Vec<(&'static str, &'static str, String)>| {
        let mut lines: Vec<_> = base_config()
            .into_iter()
            .filter(|(s, _, _)| *s != "auth")
            .collect();
        lines.extend(auth_lines);
        render(&lines)
    };
    for (method, field) in [
        ("token", "token_file"),
        ("password", "password_file"),
        ("aksk", "sk_file"),
        ("aksk", "security_token_file"),
    ] {
        let name = format!("auth.{field}");
        // The huge file first: on a parser without the bound, the test fails there instead of
        // reading /dev/zero until memory runs out.
        for path in [huge.path(), zero] {
            let started = std::time::Instant::now();
            let e = parse_config(&with_auth(auth(method, field, path)))
                .expect_err("an endless secret is refused");
            let text = e.to_string();
            assert!(
                text.contains(&name) && text.contains(&path.display().to_string()),
                "{field} = {}: {text:?} does not name the field and the file",
                path.display()
            );
            let why = if path == zero {
                "is a device, not a regular file"
            } else {
                "holds more than 1024 KiB"
            };
            assert!(text.contains(why), "{text}");
            // Reading 1 MiB takes milliseconds; reading until the allocator fails took seconds.
            assert!(
                started.elapsed() < std::time::Duration::from_secs(2),
                "{:?}",
                started.elapsed()
            );
        }
        let config = parse_config(&with_auth(auth(method, field, fits.path())))
            .expect("a secret at the limit is accepted");
        assert_eq!(config.auth.kind(), method);
    }
}

// ---- the cloud's answers -----------------------------------------------------------------------------

/// Every parser the cloud client has, over the same bytes: the operations whose errors failed to name
/// themselves (empty when all did).
fn every_parser(body: &[u8]) -> Vec<String> {
    let pool = PoolId::parse(POOL).expect("valid");
    let mut unnamed = Vec::new();
    let mut check = |op: &str, r: Result<(), CloudError>| {
        if let Err(e) = r
            && !(matches!(e, CloudError::Decode { .. }) && e.to_string().contains(op))
        {
            unnamed.push(format!("{op}: {e}"));
        }
    };
    check(
        "ShowMember",
        elb::parse_member("ShowMember", body)
            .and_then(|m| elb::membership(&pool, "ShowMember", &m))
            .map(drop),
    );
    check("ShowPool", elb::parse_pool("ShowPool", body).map(drop));
    check(
        "ListMembers",
        elb::parse_members_page("ListMembers", body).map(drop),
    );
    check(
        "ListPools",
        elb::parse_pools_page("ListPools", body).map(drop),
    );
    check(
        "ListHookInstances",
        autoscaling::parse_hooks("ListHookInstances", body).map(drop),
    );
    check(
        "ListLifeCycleHooks",
        autoscaling::parse_hook_kinds("ListLifeCycleHooks", body).map(drop),
    );
    let mut headers = HeaderMap::new();
    headers.insert("x-subject-token", "tok".parse().expect("valid"));
    check(
        "CreateToken",
        iam::parse_token("CreateToken", &headers, body).map(drop),
    );
    check("meta_data.json", metadata::parse_identity(body).map(drop));
    check("local-ipv4", metadata::parse_local_ipv4(body).map(drop));
    check(
        "network_data.json",
        metadata::parse_local_ipv4s(body).map(drop),
    );
    check("securitykey", metadata::parse_security_key(body).map(drop));
    unnamed
}

fn member_json() -> Value {
    json!({
        "id": MEMBER, "name": "web-1", "address": "192.168.0.10", "protocol_port": 8080, "weight": 1,
        "admin_state_up": true, "operating_status": "ONLINE", "instance_id": INSTANCE,
        "status": [{"listener_id": "l1", "operating_status": "ONLINE"}]
    })
}

/// A JSON value of any shape, for answers that are JSON but not what was expected.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "[ -~]{0,10}".prop_map(Value::from),
        Just(Value::from(MEMBER)),
        Just(Value::from("2026-11-29T12:00:00Z")),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map(
                prop_oneof![
                    "[a-z_]{1,8}",
                    Just("member".to_owned()),
                    Just("members".to_owned()),
                    Just("pool".to_owned()),
                    Just("token".to_owned()),
                    Just("credential".to_owned()),
                    Just("uuid".to_owned()),
                    Just("links".to_owned()),
                    Just("instance_hanging_info".to_owned()),
                    Just("lifecycle_hooks".to_owned()),
                    Just("page_info".to_owned()),
                ],
                inner,
                0..4,
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A member with a required field missing: the error says which field. Three inputs, so a loop rather
/// than a property test that would draw the same three 256 times.
#[test]
fn a_member_without_a_required_field_is_refused_naming_it() {
    for field in ["id", "address", "protocol_port"] {
        let mut m = member_json();
        m.as_object_mut().expect("an object").remove(field);
        let body = json!({"member": m}).to_string();
        let e = elb::parse_member("ShowMember", body.as_bytes()).expect_err("refused");
        assert!(e.to_string().contains(field), "{e}");
        assert!(e.to_string().contains("ShowMember"), "{e}");
    }
}

proptest! {
    #![proptest_config(cases(256))]

    /// Bytes, or JSON of the wrong shape: every parser answers, and a refusal names its operation.
    #[test]
    fn any_answer_is_parsed_or_refused_naming_the_operation(
        body in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..200),
            any_json().prop_map(|v| v.to_string().into_bytes()),
        ]
    ) {
        let unnamed = every_parser(&body);
        prop_assert!(unnamed.is_empty(), "{unnamed:?}");
    }

    /// A listed member whose ID or address is not one is refused before anything is deleted with it.
    #[test]
    fn a_member_with_a_bad_id_or_address_is_no_membership(
        id in prop_oneof![Just(MEMBER.to_owned()), not_a_uuid()],
        address in prop_oneof![Just("192.168.0.10".to_owned()), not_an_ip()],
    ) {
        let mut m = member_json();
        m["id"] = id.clone().into();
        m["address"] = address.clone().into();
        let member = elb::parse_member("ShowMember", json!({"member": m}).to_string().as_bytes())
            .expect("well-typed");
        let pool = PoolId::parse(POOL).expect("valid");
        match elb::membership(&pool, "ListMembers", &member) {
            Ok(found) => {
                prop_assert_eq!(found.member_id.as_str(), MEMBER);
                prop_assert_eq!(found.address, "192.168.0.10".parse::<IpAddr>().expect("valid"));
            }
            Err(e) => {
                let text = e.to_string();
                prop_assert!(text.contains("ListMembers"), "{}", text);
                prop_assert!(id != MEMBER || text.contains("address"), "{}", text);
            }
        }
    }

    /// A pool's `connection_drain.timeout` is whatever u64 the cloud sends: handed to the drain engine
    /// (as the agent does after ShowPool) it can lower the deadline, never panic past the clock.
    #[test]
    fn any_pool_drain_timeout_is_safe_for_the_engine(
        timeout in prop_oneof![any::<u64>(), Just(u64::MAX), 0..5000u64],
        enable in any::<bool>(),
    ) {
        use elb_drain::drain::{Engine, Plan};
        let body = json!({"pool": {"id": POOL, "connection_drain": {"enable": enable, "timeout": timeout}}});
        let pool = elb::parse_pool("ShowPool", body.to_string().as_bytes()).expect("a valid pool");
        let plan = Plan {
            settle: std::time::Duration::from_secs(2),
            timeout: std::time::Duration::from_secs(300),
            poll_interval: std::time::Duration::from_millis(200),
        };
        let t0 = tokio::time::Instant::now();
        let mut engine = Engine::new(plan, t0);
        engine.deregistered(t0, false);
        if let Some(t) = pool.connection_drain_timeout() {
            prop_assert!(enable && t.as_secs() == timeout);
            engine.lb_connection_drain(POOL, t, t0);
        }
        let expected = if enable && timeout > 0 && timeout < 300 {
            t0 + std::time::Duration::from_secs(timeout)
        } else {
            t0 + plan.timeout
        };
        prop_assert_eq!(engine.deadline(), expected);
    }

    /// Paging follows `next_marker` whatever the page's size and whatever `current_count` claims: a
    /// page names its successor exactly when it has items and a non-empty marker.
    #[test]
    fn paging_follows_the_marker_not_the_page_size(
        n in 0..5usize,
        marker in proptest::option::of("[a-z0-9-]{0,8}"),
        count in proptest::option::of(0..10usize),
    ) {
        let mut info = serde_json::Map::new();
        if let Some(m) = &marker {
            info.insert("next_marker".into(), m.clone().into());
        }
        if let Some(c) = count {
            info.insert("current_count".into(), c.into());
        }
        let body = json!({"members": vec![member_json(); n], "page_info": info}).to_string();
        let (members, next) =
            elb::parse_members_page("ListMembers", body.as_bytes()).expect("a valid page");
        prop_assert_eq!(members.len(), n);
        let expected = marker.filter(|m| !m.is_empty() && n > 0);
        prop_assert_eq!(next, expected);
    }

    /// Error bodies in every shape the cloud uses: the code and message come out as they went in.
    #[test]
    fn error_bodies_keep_their_code_and_message(
        code in "[A-Z]{2,5}\\.[0-9]{4}",
        message in "[ -~]{1,40}",
        shape in 0..4usize,
        status in prop_oneof![Just(400u16), Just(401), Just(403), Just(404), Just(409), Just(429), Just(500), Just(503)],
    ) {
        let body = match shape {
            0 => json!({"error_code": code, "error_msg": message, "request_id": "r1"}),
            1 => json!({"errorCode": code, "errorMsg": message, "requestId": "r1"}),
            2 => json!({"error": {"code": code, "message": message, "request_id": "r1"}}),
            _ => json!({"code": code, "message": message, "request_id": "r1"}),
        };
        let e = api_error(
            "CompleteLifecycleAction",
            StatusCode::from_u16(status).expect("valid"),
            &HeaderMap::new(),
            body.to_string().as_bytes(),
        );
        prop_assert_eq!(e.status(), Some(status));
        prop_assert_eq!(e.code(), Some(code.as_str()));
        prop_assert_eq!(e.message(), Some(message.as_str()));
        prop_assert_eq!(e.request_id(), Some("r1"));
    }

    /// An error body that is not JSON keeps (the start of) its text as the message, never a panic on a
    /// multi-byte character cut at the limit.
    #[test]
    fn error_bodies_that_are_not_json_keep_their_text(text in "\\PC{1,300}") {
        let e = api_error(
            "DeleteMember",
            StatusCode::BAD_GATEWAY,
            &HeaderMap::new(),
            text.as_bytes(),
        );
        prop_assert_eq!(e.status(), Some(502));
        if serde_json::from_str::<Value>(&text).is_err() && !text.trim().is_empty() {
            let message = e.message().expect("the text is kept");
            prop_assert!(!message.is_empty());
        }
    }
}

// ---- the kernel's socket tables ----------------------------------------------------------------------

/// An address as `/proc/net/tcp{,6}` prints it: each 32-bit word in host order, `%08X`.
fn proc_address(ip: IpAddr, port: u16) -> String {
    let words: Vec<[u8; 4]> = match ip {
        IpAddr::V4(a) => vec![a.octets()],
        IpAddr::V6(a) => a
            .octets()
            .chunks(4)
            .map(|c| [c[0], c[1], c[2], c[3]])
            .collect(),
    };
    let hex: String = words
        .iter()
        .map(|w| format!("{:08X}", u32::from_ne_bytes(*w)))
        .collect();
    format!("{hex}:{port:04X}")
}

fn proc_line(slot: usize, local: (IpAddr, u16), peer: (IpAddr, u16), state: u8) -> String {
    format!(
        "{slot:4}: {} {} {state:02X} 00000000:00000000 00:00000000 00000000  1000        0 {} 1 0000000000000000 20 4 30 10 -1",
        proc_address(local.0, local.1),
        proc_address(peer.0, peer.1),
        30000 + slot
    )
}

/// Two endpoints of one family, as in one line of one file.
fn endpoints() -> impl Strategy<Value = ((IpAddr, u16), (IpAddr, u16))> {
    prop_oneof![
        (
            any::<[u8; 4]>(),
            any::<u16>(),
            any::<[u8; 4]>(),
            any::<u16>()
        )
            .prop_map(|(a, p, b, q)| (
                (IpAddr::V4(Ipv4Addr::from(a)), p),
                (IpAddr::V4(Ipv4Addr::from(b)), q)
            )),
        (
            any::<[u8; 16]>(),
            any::<u16>(),
            any::<[u8; 16]>(),
            any::<u16>()
        )
            .prop_map(|(a, p, b, q)| (
                (IpAddr::V6(Ipv6Addr::from(a)), p),
                (IpAddr::V6(Ipv6Addr::from(b)), q)
            )),
    ]
}

proptest! {
    #![proptest_config(cases(256))]

    /// A line as the kernel prints it parses back to the addresses, port and state it was made of.
    #[test]
    fn kernel_lines_round_trip((local, peer) in endpoints(), state in 1..=12u8, slot in 0..5000usize) {
        let line = proc_line(slot, local, peer, state);
        let entry = procfs::parse_line(&line).expect("a kernel line parses");
        prop_assert_eq!(entry.local, local.0);
        prop_assert_eq!(entry.local_port, local.1);
        prop_assert_eq!(entry.peer, peer.0);
        prop_assert_eq!(entry.state, state);
    }

    /// One field of a line damaged: refused, and the reason names the field that was damaged.
    #[test]
    fn a_damaged_field_is_named(
        (local, peer) in endpoints(),
        field in 1..4usize,
        junk in prop_oneof!["[G-Zg-z]{1,8}", "[0-9A-F]{1,7}", "[0-9A-F]{9,12}", "[0-9A-F]{8}:[0-9A-F]{5,6}", "[0-9A-F]{8}"],
    ) {
        let line = proc_line(3, local, peer, 1);
        let mut fields: Vec<String> = line.split_ascii_whitespace().map(str::to_owned).collect();
        fields[field] = junk.clone();
        let damaged = fields.join(" ");
        let name = ["", "local address", "remote address", "state"][field];
        match procfs::parse_line(&damaged) {
            // A state of two hex digits is still a state.
            Ok(_) => prop_assert!(field == 3 && junk.len() == 2 && u8::from_str_radix(&junk, 16).is_ok(), "{damaged}"),
            Err(reason) => prop_assert!(reason.contains(name), "{damaged}: {reason:?} does not name {name:?}"),
        }
    }

    /// Any text: parsed or refused with a reason, never a panic.
    #[test]
    fn any_line_is_parsed_or_refused(line in prop_oneof![".{0,160}", "[ 0-9A-F:]{0,120}"]) {
        if let Err(reason) = procfs::parse_line(&line) {
            prop_assert!(!reason.trim().is_empty());
        }
    }

    /// The census's own reading of a file (which skips most of each line it does not count) agrees
    /// with parsing every line, and a bad line anywhere is an error naming the file and the line.
    #[test]
    fn the_census_counts_what_the_lines_say(
        lines in proptest::collection::vec((endpoints(), prop_oneof![Just(1u8), Just(10), 1..=12u8], any::<bool>()), 0..30),
        bad_at in proptest::option::of(0..30usize),
    ) {
        let spec = CensusSpec { ports: vec![8080, 443], exclude_peers: vec!["10.0.0.0/8".parse().expect("valid")] };
        let mut text = String::from("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n");
        let mut expected = 0;
        let mut rows = Vec::new();
        for (i, ((local, peer), state, on_port)) in lines.iter().enumerate() {
            let local = (local.0, if *on_port { 8080 } else { local.1 });
            let row = proc_line(i, local, *peer, *state);
            let entry = procfs::parse_line(&row).expect("valid");
            if entry.state == 1 && spec.counts(entry.local_port, entry.peer) {
                expected += 1;
            }
            rows.push(row);
        }
        let bad_at = bad_at.filter(|b| *b < rows.len());
        if let Some(b) = bad_at {
            // A counted line whose peer is garbage: the census must not skip it as "no connection".
            rows[b] = format!("{:4}: 0100007F:1F90 NOT-AN-ADDRESS 01 00000000:00000000", b);
        }
        for row in &rows {
            text.push_str(row);
            text.push('\n');
        }
        let mut file = tempfile::NamedTempFile::new().expect("a temporary file");
        file.write_all(text.as_bytes()).expect("written");
        let mut census = ProcCensus::with_files(spec.clone(), vec![file.path().to_owned()]);
        match (census.count(), bad_at) {
            (Ok(count), None) => prop_assert_eq!(count.established, expected),
            (Err(CensusError::ProcLine { file: name, line, reason }), Some(b)) => {
                prop_assert_eq!(name, file.path().display().to_string());
                prop_assert_eq!(line, b + 2, "header is line 1");
                prop_assert!(reason.contains("remote address"), "{}", reason);
            }
            (other, b) => prop_assert!(false, "bad line {b:?}: {other:?}"),
        }
    }
}

/// A netlink message: header (length, type, flags, seq, pid) and payload, padded to 4 bytes.
fn nl_message(kind: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&((16 + payload.len()) as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&2u16.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(payload);
    while m.len() % 4 != 0 {
        m.push(0);
    }
    m
}

/// An `inet_diag_msg` (72 bytes) for a socket.
fn diag_msg(local: (IpAddr, u16), peer: (IpAddr, u16), state: u8, cookie: u64) -> Vec<u8> {
    let family = if local.0.is_ipv4() { 2u8 } else { 10 };
    let mut m = vec![family, state, 0, 0];
    m.extend_from_slice(&local.1.to_be_bytes());
    m.extend_from_slice(&peer.1.to_be_bytes());
    let addr = |ip: IpAddr| {
        let mut a = [0u8; 16];
        match ip {
            IpAddr::V4(v) => a[..4].copy_from_slice(&v.octets()),
            IpAddr::V6(v) => a = v.octets(),
        }
        a
    };
    m.extend_from_slice(&addr(local.0));
    m.extend_from_slice(&addr(peer.0));
    m.extend_from_slice(&0u32.to_ne_bytes()); // interface
    m.extend_from_slice(&(cookie as u32).to_ne_bytes());
    m.extend_from_slice(&((cookie >> 32) as u32).to_ne_bytes());
    m.extend_from_slice(&[0u8; 20]); // expires, rqueue, wqueue, uid, inode
    assert_eq!(m.len(), 72);
    m
}

proptest! {
    #![proptest_config(cases(256))]

    /// A dump datagram decodes to the sockets it was made of, and ends where NLMSG_DONE is.
    #[test]
    fn netlink_datagrams_round_trip(
        socks in proptest::collection::vec((endpoints(), 1..=12u8, any::<u64>()), 0..8),
        done in any::<bool>(),
    ) {
        let mut buf = Vec::new();
        for ((local, peer), state, cookie) in &socks {
            buf.extend(nl_message(20, 7, &diag_msg(*local, *peer, *state, *cookie)));
        }
        if done {
            buf.extend(nl_message(3, 7, &0i32.to_ne_bytes()));
        }
        let (decoded, ended) = netlink::decode_datagram(&buf, Some(7)).expect("a valid datagram");
        prop_assert_eq!(ended, done);
        prop_assert_eq!(decoded.len(), socks.len());
        for (d, ((local, peer), state, cookie)) in decoded.iter().zip(&socks) {
            prop_assert_eq!((d.local, d.local_port, d.peer, d.state, d.cookie), (local.0, local.1, peer.0, *state, *cookie));
        }
        // Another dump's messages are not ours.
        let (others, _) = netlink::decode_datagram(&buf, Some(8)).expect("a valid datagram");
        prop_assert!(others.is_empty());
    }

    /// A datagram cut anywhere, or bytes of any kind: sockets, the end, or an error; never a panic.
    #[test]
    fn damaged_datagrams_are_refused_not_misread(
        socks in proptest::collection::vec((endpoints(), 1..=12u8, any::<u64>()), 1..4),
        cut in any::<prop::sample::Index>(),
        noise in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut buf = Vec::new();
        for ((local, peer), state, cookie) in &socks {
            buf.extend(nl_message(20, 1, &diag_msg(*local, *peer, *state, *cookie)));
        }
        let at = cut.index(buf.len());
        if at % 88 != 0 {
            // Cut inside a message: truncated, an error; never a shorter list passed off as complete.
            let e = netlink::decode_datagram(&buf[..at], None).expect_err("truncated");
            prop_assert!(e.to_string().contains("truncated"), "{e}");
        }
        let _ = netlink::decode_datagram(&noise, None);
    }
}

// ---- the signer --------------------------------------------------------------------------------------

fn key(ak: &str, sk: &str) -> SigningKey {
    SigningKey {
        ak: ak.to_owned(),
        sk: Secret::new(sk),
        security_token: None,
    }
}

fn pairs() -> impl Strategy<Value = Vec<(String, String)>> {
    proptest::collection::vec(("\\PC{0,8}", "\\PC{0,12}"), 0..6)
}

proptest! {
    #![proptest_config(cases(256))]

    /// Any request signs without a panic, twice alike, and alike whatever order headers and query
    /// pairs are given in; header names are case-insensitive.
    #[test]
    fn signing_is_deterministic_and_order_free(
        method in "\\PC{0,8}",
        path in "\\PC{0,40}",
        query in pairs(),
        headers in pairs(),
        body in proptest::collection::vec(any::<u8>(), 0..64),
        ak in "[A-Z0-9]{0,20}",
        sk in "\\PC{0,40}",
    ) {
        let k = key(&ak, &sk);
        let first = sign::sign(&method, &path, &query, &headers, &body, &k);
        prop_assert_eq!(&first, &sign::sign(&method, &path, &query, &headers, &body, &k));
        let mut q = query.clone();
        q.reverse();
        let mut h: Vec<(String, String)> =
            headers.iter().map(|(n, v)| (n.to_ascii_uppercase(), v.clone())).collect();
        h.reverse();
        prop_assert_eq!(&first, &sign::sign(&method, &path, &q, &h, &body, &k));
        let expected_prefix = format!("{} Access={ak}, SignedHeaders=", sign::ALGORITHM);
        prop_assert!(first.authorization.starts_with(&expected_prefix));
        prop_assert!(sign::canonical_uri(&path).ends_with('/'));
    }

    /// What the signature covers changes it: the body (unless UNSIGNED-PAYLOAD), the path, the key.
    #[test]
    fn the_signature_covers_the_request(
        path in "(/[a-z0-9]{1,8}){1,4}",
        body in proptest::collection::vec(any::<u8>(), 0..64),
        other_body in proptest::collection::vec(any::<u8>(), 0..64),
        unsigned in any::<bool>(),
    ) {
        let mut headers = vec![
            ("Host".to_owned(), "127.0.0.1:8443".to_owned()),
            ("X-Sdk-Date".to_owned(), "20261128T120000Z".to_owned()),
        ];
        if unsigned {
            headers.push(("X-Sdk-Content-Sha256".to_owned(), "UNSIGNED-PAYLOAD".to_owned()));
        }
        let k = key("AK", "SK");
        let a = sign::sign("DELETE", &path, &[], &headers, &body, &k);
        let b = sign::sign("DELETE", &path, &[], &headers, &other_body, &k);
        prop_assert_eq!(a == b, body == other_body || unsigned);
        let moved = sign::sign("DELETE", &format!("{path}/x"), &[], &headers, &body, &k);
        prop_assert_ne!(&a.authorization, &moved.authorization);
        let rekeyed = sign::sign("DELETE", &path, &[], &headers, &body, &key("AK", "SK2"));
        prop_assert_ne!(&a.authorization, &rekeyed.authorization);
    }

    /// A path segment and its percent-encoded form (what goes on the wire) canonicalise alike.
    #[test]
    fn encoded_and_raw_paths_sign_alike(segments in proptest::collection::vec("[^/%]{0,10}", 1..4)) {
        let raw = format!("/{}", segments.join("/"));
        let encoded = format!(
            "/{}",
            segments.iter().map(|s| sign::encode(s)).collect::<Vec<_>>().join("/")
        );
        prop_assert_eq!(sign::canonical_uri(&raw), sign::canonical_uri(&encoded));
    }
}
