//! The cloud client against elb-sim, the emulated ELB/IAM/metadata/AS APIs over loopback: every
//! credential kind accepted by the server side, deletion outcomes, paging and discovery, member
//! updates, metadata identity and token modes, and lifecycle hooks.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use elb_drain::cloud::autoscaling::{Answered, AutoScaling, HookAnswer};
use elb_drain::cloud::elb::{MemberUpdate, NewMember};
use elb_drain::cloud::iam::Iam;
use elb_drain::cloud::metadata::Metadata;
use elb_drain::cloud::{self, CloudError, DeleteOutcome, Elb, HttpSettings, RetryPolicy, Service};
use elb_drain::credentials::{AgencyKeys, Credential, PasswordToken};
use elb_drain::ids::{InstanceId, MemberId, PoolId, ProjectId, ScalingGroupId};
use elb_drain::secret::Secret;
use elb_sim::scenario::{Instance, ScalingGroup, TokenMode};
use elb_sim::{AuthKind, Fault, FaultAction, Scenario, Sim};

const PROJECT: &str = "99a3fff0d03c428eac3678da6a7d0f24";
const INSTANCE: &str = "6a7bd0c6-9e22-4d9f-a9c2-0d11ee3c0e55";
const OTHER_INSTANCE: &str = "7a7bd0c6-9e22-4d9f-a9c2-0d11ee3c0e55";
const GROUP: &str = "7b8bd0c6-9e22-4d9f-a9c2-0d11ee3c0e55";
const ME: &str = "127.0.0.2";

fn pool(n: usize) -> String {
    format!("{n:08}-1111-4111-8111-111111111111")
}

fn member(pool: usize, n: usize) -> String {
    format!("{pool:08}-0000-4000-8000-{n:012}")
}

fn instance(uuid: &str, ip: &str, agency: bool) -> Instance {
    Instance {
        uuid: uuid.into(),
        project_id: PROJECT.into(),
        local_ipv4: ip.into(),
        region_id: Some("cn-north-4".into()),
        hostname: "web-1".into(),
        name: "web-1".into(),
        agency,
        scaling_group_id: Some(GROUP.into()),
    }
}

/// Five pools. This server (`ME`, INSTANCE) is a member of pools 0-2 on port 8080, and of pool 0
/// on 9090 too; four other servers are in every pool.
fn scenario() -> Scenario {
    let mut s = Scenario::builder()
        .project(PROJECT)
        .user("alice", "acme", "pw")
        .instance(instance(INSTANCE, ME, true))
        .instance(instance(OTHER_INSTANCE, "127.0.0.3", false));
    for p in 0..5 {
        s = s.pool(&pool(p), |c| c.connection_drain(30));
        for other in 3..7 {
            s = s.member(
                &pool(p),
                &member(p, other),
                &format!("127.0.0.{other}"),
                8080,
            );
        }
        if p < 3 {
            s = s.member_of_instance(&pool(p), &member(p, 2), ME, 8080, INSTANCE);
        }
    }
    s.member_of_instance(&pool(0), &member(0, 9), ME, 9090, INSTANCE)
}

fn http() -> reqwest::Client {
    cloud::http_client(&HttpSettings {
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(10),
        ca_file: None,
        allow_insecure_http: false,
    })
    .expect("client")
}

fn retry() -> RetryPolicy {
    RetryPolicy {
        deadline: Duration::from_secs(5),
        base: Duration::from_millis(5),
        max_delay: Duration::from_millis(100),
        jitter: true,
    }
}

fn url(s: &str) -> reqwest::Url {
    s.parse().expect("url")
}

fn project() -> ProjectId {
    ProjectId::parse(PROJECT).unwrap()
}

async fn password(sim: &Sim) -> Arc<dyn Credential> {
    let iam = Iam::new(http(), url(&sim.api_url()), retry());
    let credential = Arc::new(PasswordToken::new(
        iam,
        "alice".into(),
        "acme".into(),
        Secret::new("pw"),
        project(),
    ));
    credential.refresh().await.expect("a token");
    credential
}

async fn elb(sim: &Sim) -> Elb {
    Elb::new(
        http(),
        url(&sim.api_url()),
        project(),
        password(sim).await,
        retry(),
    )
}

fn count(sim: &Sim, service: &str, method: &str) -> usize {
    sim.request_log()
        .iter()
        .filter(|r| r.service == service && r.method == method)
        .count()
}

fn ids(p: usize, m: usize) -> (PoolId, MemberId) {
    (
        PoolId::parse(&pool(p)).unwrap(),
        MemberId::parse(&member(p, m)).unwrap(),
    )
}

#[tokio::test]
async fn delete_then_already_gone_and_a_pool_that_does_not_exist() {
    let sim = Sim::start(scenario()).await.expect("sim");
    let elb = elb(&sim).await;
    let (p, m) = ids(0, 2);
    assert_eq!(
        elb.delete_member(&p, &m).await.expect("deleted"),
        DeleteOutcome::Deleted
    );
    assert!(!sim.member_exists(&pool(0), &member(0, 2)));
    assert_eq!(
        elb.delete_member(&p, &m).await.expect("idempotent"),
        DeleteOutcome::AlreadyGone
    );
    let nowhere = PoolId::parse("00000000-0000-4000-8000-000000000000").unwrap();
    let err = elb.delete_member(&nowhere, &m).await.unwrap_err();
    assert!(
        matches!(err, CloudError::PoolNotFound { ref pool, .. } if *pool == nowhere.to_string()),
        "{err}"
    );
    assert!(err.is_configuration());
    let deletes: Vec<u16> = sim
        .request_log()
        .iter()
        .filter(|r| r.method == "DELETE")
        .map(|r| r.status)
        .collect();
    assert_eq!(deletes, [204, 404, 404]);
    assert!(
        sim.request_log()
            .iter()
            .filter(|r| r.service == "elb")
            .all(|r| r.auth == AuthKind::Token)
    );
}

#[tokio::test]
async fn a_wrong_endpoint_is_not_mistaken_for_a_member_already_gone() {
    let sim = Sim::start(scenario()).await.expect("sim");
    let elb = Elb::new(
        http(),
        url(&format!("{}/elb-api", sim.api_url())),
        project(),
        password(&sim).await,
        retry(),
    );
    let (p, m) = ids(0, 2);
    let err = elb.delete_member(&p, &m).await.unwrap_err();
    assert_eq!((err.status(), err.code()), (Some(404), Some("APIGW.0101")));
    assert!(!matches!(err, CloudError::PoolNotFound { .. }), "{err}");
    assert!(sim.member_exists(&pool(0), &member(0, 2)));
}

#[tokio::test]
async fn a_burst_of_refused_requests_costs_one_new_token() {
    let sim = Sim::start(scenario()).await.expect("sim");
    let elb = elb(&sim).await;
    assert_eq!(count(&sim, "iam", "POST"), 1);
    sim.expire_tokens();
    let (p, _) = ids(0, 0);
    let shows = (3..7).map(|n| {
        let (elb, p) = (elb.clone(), p.clone());
        async move {
            elb.show_member(&p, &MemberId::parse(&member(0, n)).unwrap())
                .await
        }
    });
    for shown in futures_util::future::join_all(shows).await {
        shown.expect("shown after one refresh");
    }
    let refused = sim
        .request_log()
        .iter()
        .filter(|r| r.service == "elb" && r.status == 401)
        .count();
    assert!(refused >= 1, "the expiry was seen");
    assert_eq!(
        count(&sim, "iam", "POST"),
        2,
        "{refused} requests refused, one token fetched for all of them"
    );
}

#[tokio::test]
async fn paging_and_discovery_by_address_and_by_instance() {
    let sim = Sim::start(scenario()).await.expect("sim");
    let elb = elb(&sim).await.with_page_size(2);
    let (p0, _) = ids(0, 0);
    let all = elb.list_members(&p0, &[]).await.expect("listed");
    assert_eq!(all.len(), 6, "4 others + 2 of this server");
    let pages = sim
        .request_log()
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with(&format!("{}/members", pool(0))))
        .count();
    assert_eq!(pages, 3, "6 members, 2 per page");

    let mut found = elb
        .discover(Some(IpAddr::V4(ME.parse().unwrap())), None, None)
        .await
        .expect("discovered");
    found.sort_by(|a, b| (&a.pool_id, a.protocol_port).cmp(&(&b.pool_id, b.protocol_port)));
    let got: Vec<(String, String, u16)> = found
        .iter()
        .map(|f| {
            (
                f.pool_id.to_string(),
                f.member_id.to_string(),
                f.protocol_port,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (pool(0), member(0, 2), 8080),
            (pool(0), member(0, 9), 9090),
            (pool(1), member(1, 2), 8080),
            (pool(2), member(2, 2), 8080),
        ]
    );
    assert!(
        found
            .iter()
            .all(|f| f.address == IpAddr::V4(ME.parse().unwrap()))
    );

    let by_port = elb
        .discover(Some(IpAddr::V4(ME.parse().unwrap())), None, Some(9090))
        .await
        .expect("discovered");
    assert_eq!(by_port.len(), 1);
    assert_eq!(by_port[0].member_id.to_string(), member(0, 9));

    let instance = InstanceId::parse(INSTANCE).unwrap();
    let by_instance = elb
        .discover(None, Some(&instance), None)
        .await
        .expect("discovered");
    assert_eq!(by_instance.len(), 4, "{by_instance:?}");
    let queries: Vec<String> = sim
        .request_log()
        .iter()
        .filter(|r| r.path.ends_with("/elb/pools"))
        .map(|r| r.query.clone())
        .collect();
    assert!(
        queries
            .iter()
            .any(|q| q.contains(&format!("member_instance_id={INSTANCE}"))),
        "{queries:?}"
    );
}

#[tokio::test]
async fn discovery_asks_the_pools_concurrently() {
    let sim = Sim::start(scenario()).await.expect("sim");
    let elb = elb(&sim).await;
    let delay = Duration::from_millis(500);
    sim.inject_fault(
        Fault::new(
            "GET",
            "/v3/*/elb/pools/*/members",
            vec![FaultAction::Delay {
                ms: delay.as_millis() as u64,
            }],
        )
        .repeating(),
    );
    let started = Instant::now();
    let found = elb
        .discover(Some(IpAddr::V4(ME.parse().unwrap())), None, None)
        .await
        .expect("discovered");
    let took = started.elapsed();
    assert_eq!(found.len(), 4);
    assert!(
        took >= delay && took < delay * 2,
        "3 pools of {delay:?} each took {took:?}: one after the other would be 1.5 s"
    );
}

#[tokio::test]
async fn create_update_and_show() {
    let sim = Sim::start(scenario()).await.expect("sim");
    let elb = elb(&sim).await;
    let p = PoolId::parse(&pool(4)).unwrap();
    let created = elb
        .create(
            &p,
            &NewMember {
                address: IpAddr::V4(ME.parse().unwrap()),
                protocol_port: 8443,
                subnet_cidr_id: None,
                weight: Some(7),
                name: Some("web-1-8443".into()),
            },
        )
        .await
        .expect("created");
    assert_eq!(
        (created.name.as_str(), created.weight, created.protocol_port),
        ("web-1-8443", Some(7), 8443)
    );
    let created_status = sim
        .request_log()
        .iter()
        .find(|r| r.method == "POST" && r.service == "elb")
        .map(|r| r.status);
    assert_eq!(created_status, Some(201));
    let id = MemberId::parse(&created.id).expect("a UUID");
    let updated = elb
        .update_member(
            &p,
            &id,
            &MemberUpdate {
                weight: Some(0),
                admin_state_up: Some(false),
                name: None,
            },
        )
        .await
        .expect("updated");
    assert_eq!(
        (
            updated.weight,
            updated.admin_state_up,
            updated.name.as_str()
        ),
        (Some(0), Some(false), "web-1-8443")
    );
    let shown = elb.show_member(&p, &id).await.expect("shown");
    assert_eq!((shown.weight, shown.admin_state_up), (Some(0), Some(false)));
    let pool = elb.show_pool(&p).await.expect("pool");
    assert_eq!(
        pool.connection_drain_timeout(),
        Some(Duration::from_secs(30))
    );
}

#[tokio::test]
async fn metadata_identity_agency_keys_and_a_platform_without_session_tokens() {
    let sim = Sim::start(scenario().build()).await.expect("sim");
    let metadata = Metadata::new(http(), url(&sim.metadata_url()));
    let me = metadata.identity().await.expect("identity");
    assert_eq!(me.instance_id.to_string(), INSTANCE);
    assert_eq!(me.project_id, Some(project()));
    assert_eq!(me.region.as_deref(), Some("cn-north-4"));
    assert_eq!(me.availability_zone.as_deref(), Some("cn-north-4a"));
    assert_eq!(
        metadata.local_ipv4().await.expect("ip"),
        ME.parse::<Ipv4Addr>().unwrap()
    );
    assert_eq!(
        metadata.local_ipv4s().await.expect("ips"),
        [ME.parse::<Ipv4Addr>().unwrap()]
    );

    // Agency keys sign ELB calls; the sim accepts them only with their security token.
    let keys = Arc::new(AgencyKeys::new(metadata.clone(), Some(project())));
    keys.refresh().await.expect("agency keys");
    assert!(keys.describe().expires_at.is_some());
    let elb = Elb::new(http(), url(&sim.api_url()), project(), keys, retry());
    let (p, m) = ids(1, 2);
    assert_eq!(
        elb.delete_member(&p, &m).await.expect("deleted"),
        DeleteOutcome::Deleted
    );
    let delete = sim
        .request_log()
        .into_iter()
        .find(|r| r.method == "DELETE")
        .expect("logged");
    assert_eq!((delete.auth, delete.status), (AuthKind::AkskTemporary, 204));

    // One session token for every read.
    assert_eq!(count(&sim, "metadata", "PUT"), 1);

    for mode in [TokenMode::Unsupported, TokenMode::Required] {
        let mut s = scenario();
        s.metadata.tokens = mode;
        let sim = Sim::start(s).await.expect("sim");
        let metadata = Metadata::new(http(), url(&sim.metadata_url()));
        metadata.identity().await.expect("identity");
        metadata.local_ipv4().await.expect("ip");
        metadata.security_key().await.expect("keys");
        assert_eq!(
            count(&sim, "metadata", "PUT"),
            1,
            "{mode:?}: asked for a session token once"
        );
    }
}

/// A token request answered 405 (a proxy that only passes GET) or 503 (the token service down) means:
/// read without a session token, as on a platform without them (404, above); asked once, not per read.
#[tokio::test]
async fn a_token_request_refused_with_405_or_503_falls_back_to_reads_without_a_token() {
    for status in [405, 503] {
        let sim = Sim::start(scenario().build()).await.expect("sim");
        sim.inject_fault(
            Fault::new(
                "PUT",
                "/meta-data/latest/api/token",
                vec![FaultAction::Status {
                    status,
                    retry_after: None,
                }],
            )
            .repeating(),
        );
        let metadata = Metadata::new(http(), url(&sim.metadata_url()));
        let me = metadata
            .identity()
            .await
            .unwrap_or_else(|e| panic!("{status}: {e}"));
        assert_eq!(me.instance_id.to_string(), INSTANCE);
        metadata.local_ipv4().await.expect("ip");
        metadata.security_key().await.expect("keys");
        let log = sim.request_log();
        let puts: Vec<u16> = log
            .iter()
            .filter(|r| r.method == "PUT")
            .map(|r| r.status)
            .collect();
        assert_eq!(puts, [status], "asked for a session token once");
        assert!(
            log.iter()
                .filter(|r| r.method == "GET")
                .all(|r| r.status == 200),
            "{status}: {log:?}"
        );
    }
}

/// A throttled metadata read waits out the service's `Retry-After` before it asks again, instead of
/// its own short backoff (tens of milliseconds), which would only be refused again.
#[tokio::test]
async fn a_throttled_metadata_read_waits_for_retry_after() {
    let sim = Sim::start(scenario().build()).await.expect("sim");
    sim.inject_fault(Fault::new(
        "GET",
        "/openstack/latest/meta_data.json",
        vec![FaultAction::Status {
            status: 429,
            retry_after: Some(1),
        }],
    ));
    let metadata = Metadata::new(http(), url(&sim.metadata_url()));
    let me = metadata.identity().await.expect("identity after the wait");
    assert_eq!(me.instance_id.to_string(), INSTANCE);
    let reads: Vec<(u16, u64)> = sim
        .request_log()
        .iter()
        .filter(|r| r.method == "GET")
        .map(|r| (r.status, r.mono_ns))
        .collect();
    assert_eq!(
        reads.iter().map(|r| r.0).collect::<Vec<_>>(),
        [429, 200],
        "{reads:?}"
    );
    let waited = Duration::from_nanos(reads[1].1 - reads[0].1);
    assert!(
        waited >= Duration::from_secs(1),
        "Retry-After: 1 honoured, waited {waited:?}"
    );
}

/// A 503 that was only a hiccup, on a platform that requires tokens: the reads without a token are
/// refused (401), and the client asks for a session token again instead of failing for good.
#[tokio::test]
async fn a_passing_503_on_a_platform_requiring_tokens_costs_one_refused_read() {
    let mut s = scenario();
    s.metadata.tokens = TokenMode::Required;
    let sim = Sim::start(s).await.expect("sim");
    sim.inject_fault(Fault::new(
        "PUT",
        "/meta-data/latest/api/token",
        vec![FaultAction::Status {
            status: 503,
            retry_after: None,
        }],
    ));
    let metadata = Metadata::new(http(), url(&sim.metadata_url()));
    metadata
        .identity()
        .await
        .expect("identity after a new token");
    metadata.security_key().await.expect("keys");
    let answers: Vec<(String, u16)> = sim
        .request_log()
        .iter()
        .map(|r| (r.method.clone(), r.status))
        .collect();
    let want: Vec<(String, u16)> = [
        ("PUT", 503),
        ("GET", 401),
        ("PUT", 200),
        ("GET", 200),
        ("GET", 200),
    ]
    .iter()
    .map(|(m, s)| (m.to_string(), *s))
    .collect();
    assert_eq!(answers, want);
}

#[tokio::test]
async fn a_server_without_an_agency_is_a_configuration_error() {
    let mut s = scenario();
    s.metadata.instance = Some(OTHER_INSTANCE.into());
    let sim = Sim::start(s).await.expect("sim");
    let metadata = Metadata::new(http(), url(&sim.metadata_url()));
    let keys = AgencyKeys::new(metadata, Some(project()));
    let err = keys.refresh().await.unwrap_err();
    assert!(matches!(err, CloudError::NoAgency), "{err}");
    assert!(err.is_configuration());
}

#[tokio::test]
async fn lifecycle_hooks_are_listed_extended_and_answered_once() {
    let mut s = scenario().scaling_group(ScalingGroup {
        id: GROUP.into(),
        project_id: PROJECT.into(),
        hook_name: "drain-hook".into(),
        default_result: "ABANDON".into(),
        hook_timeout: Duration::from_secs(60),
        other_hooks: Vec::new(),
        launching_hooks: Vec::new(),
    });
    s.settings.hook_extend = Duration::from_secs(30);
    let sim = Sim::start(s).await.expect("sim");
    let autoscaling = AutoScaling::new(
        Service::new(http(), url(&sim.api_url()), password(&sim).await, retry()),
        project(),
    );
    let group = ScalingGroupId::parse(GROUP).unwrap();
    let me = InstanceId::parse(INSTANCE).unwrap();
    assert!(
        autoscaling
            .hooks(&group, &me)
            .await
            .expect("listed")
            .iter()
            .all(|h| !h.is_hanging())
    );
    sim.start_scale_in(INSTANCE).expect("scale-in");
    let hooks = autoscaling.hooks(&group, &me).await.expect("listed");
    let hook = hooks
        .iter()
        .find(|h| h.is_hanging())
        .expect("a hanging hook");
    assert_eq!(
        (hook.name.as_str(), hook.default_result.as_str()),
        ("drain-hook", "ABANDON")
    );
    let deadline = hook.deadline.expect("a deadline");
    assert_eq!(
        autoscaling
            .answer(&group, hook, HookAnswer::Extend)
            .await
            .expect("extended"),
        Answered::Accepted
    );
    let later = autoscaling.hooks(&group, &me).await.expect("listed");
    assert!(
        later[0].deadline.expect("a deadline") > deadline,
        "EXTEND moved the deadline"
    );
    assert_eq!(
        autoscaling
            .answer(&group, hook, HookAnswer::Continue)
            .await
            .expect("answered"),
        Answered::Accepted
    );
    assert_eq!(
        autoscaling
            .answer(&group, hook, HookAnswer::Continue)
            .await
            .expect("AS.7042 is not an error"),
        Answered::AlreadyAnswered
    );
    let state = &sim.hooks(GROUP)[0];
    assert_eq!(state.status, "CONTINUE");
    let puts: Vec<u16> = sim
        .request_log()
        .iter()
        .filter(|r| r.service == "as" && r.method == "PUT")
        .map(|r| r.status)
        .collect();
    assert_eq!(
        puts,
        [204, 204, 400],
        "the late answer was refused (AS.7042)"
    );
}
