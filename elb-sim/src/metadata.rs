//! The ECS metadata service of one simulated server, on its own loopback listener (never
//! 169.254.169.254): identity, addresses, session tokens, and the agency's temporary keys.
//!
//! Session tokens live for the `X-Metadata-Token-Ttl-Seconds` they were asked for (1-21600; without
//! the header, or outside that range, the PUT answers 400); a read with an expired or unknown token
//! answers 401, so a client's token refresh can be tested with a TTL of one second.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::Shared;
use crate::api::error;
use crate::scenario::TokenMode;
use crate::state::{AuthKind, KeyRecord, LoggedRequest, monotonic_ns, random_hex};

pub async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let mono_ns = monotonic_ns();
    let at = SystemTime::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    // In a block: the request body is not Sync, so no borrow of it may live across an await.
    let (token, ttl, host) = {
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        (
            header("x-metadata-token"),
            header("x-metadata-token-ttl-seconds"),
            header("host"),
        )
    };
    let fault = shared.lock().next_fault(method.as_str(), &path);
    let mut answer = None;
    if let Some(action) = fault {
        answer = crate::api::apply_fault(action, host.as_deref())
            .await
            .map(|a| a.response);
    }
    let response = match answer {
        Some(r) => r,
        None => serve(&shared, &method, &path, token.as_deref(), ttl.as_deref()),
    };
    shared.log(LoggedRequest {
        service: "metadata".into(),
        method: method.to_string(),
        path,
        query: String::new(),
        auth: AuthKind::None,
        status: response.status().as_u16(),
        at,
        mono_ns,
        sim_ns: shared.since_start(mono_ns),
    });
    response
}

fn text(body: String) -> Response {
    (StatusCode::OK, [("content-type", "text/plain")], body).into_response()
}

fn serve(
    shared: &Shared,
    method: &Method,
    path: &str,
    token: Option<&str>,
    ttl: Option<&str>,
) -> Response {
    let mut inner = shared.lock();
    let mode = inner.metadata_tokens;
    let now = SystemTime::now();
    inner
        .metadata_sessions
        .retain(|(_, expires)| *expires > now);
    if method == Method::PUT && path == "/meta-data/latest/api/token" {
        if mode == TokenMode::Unsupported {
            return (StatusCode::NOT_FOUND, "404 Not Found").into_response();
        }
        let Some(ttl) = ttl
            .and_then(|t| t.trim().parse::<u64>().ok())
            .filter(|t| (1..=21_600).contains(t))
        else {
            return (
                StatusCode::BAD_REQUEST,
                "X-Metadata-Token-Ttl-Seconds must be 1-21600",
            )
                .into_response();
        };
        let t = random_hex(24);
        inner
            .metadata_sessions
            .push((t.clone(), now + Duration::from_secs(ttl)));
        return text(t);
    }
    if method != Method::GET {
        return (StatusCode::METHOD_NOT_ALLOWED, "405").into_response();
    }
    match token {
        Some(t)
            if mode != TokenMode::Unsupported
                && !inner.metadata_sessions.iter().any(|(s, _)| s == t) =>
        {
            return (StatusCode::UNAUTHORIZED, "invalid metadata token").into_response();
        }
        None if mode == TokenMode::Required => {
            return (
                StatusCode::UNAUTHORIZED,
                "a metadata session token is required",
            )
                .into_response();
        }
        _ => {}
    }
    let Some(instance) = inner
        .metadata_instance
        .clone()
        .and_then(|id| inner.instances.iter().find(|i| i.uuid == id).cloned())
    else {
        return (StatusCode::NOT_FOUND, "no instance").into_response();
    };
    match path {
        "/openstack/latest/meta_data.json" => {
            let mut v = json!({
                "uuid": instance.uuid,
                "availability_zone": format!("{}a", inner.settings.region),
                "hostname": instance.hostname,
                "name": instance.name,
                "meta": {},
                "project_id": instance.project_id,
            });
            if let Some(r) = &instance.region_id {
                v["region_id"] = json!(r);
            }
            (StatusCode::OK, axum::Json(v)).into_response()
        }
        "/latest/meta-data/local-ipv4" => text(instance.local_ipv4.clone()),
        "/openstack/latest/network_data.json" => (
            StatusCode::OK,
            axum::Json(json!({"links": [{"id": "eth0", "type": "phy", "local_ipv4": instance.local_ipv4}], "networks": [], "services": []})),
        )
            .into_response(),
        "/openstack/latest/securitykey" => {
            if !instance.agency {
                return error(401, "Ecs.0401", "Please configure Cloud Service Agency first");
            }
            let lifetime = inner.settings.temp_key_lifetime;
            let now = SystemTime::now();
            // A new key once half of the current one's life has passed (the real service rotates early).
            let current = inner.temp_key.clone().filter(|(_, issued)| now.duration_since(*issued).unwrap_or_default() < lifetime / 2);
            let ak = match current {
                Some((ak, _)) => ak,
                None => {
                    let ak = format!("TMP{}", random_hex(10).to_uppercase());
                    inner.keys.insert(ak.clone(), KeyRecord {
                        sk: random_hex(20),
                        project_id: instance.project_id.clone(),
                        security_token: Some(format!("gQ{}==", random_hex(64))),
                        expires: Some(now + lifetime),
                        deny: vec![],
                    });
                    inner.temp_key = Some((ak.clone(), now));
                    ak
                }
            };
            let key = inner.keys[&ak].clone();
            (
                StatusCode::OK,
                axum::Json(json!({"credential": {
                    "access": ak,
                    "secret": key.sk,
                    "securitytoken": key.security_token,
                    "expires_at": humantime::format_rfc3339_micros(key.expires.unwrap_or(now)).to_string(),
                }})),
            )
                .into_response()
        }
        _ => (StatusCode::NOT_FOUND, "404 Not Found").into_response(),
    }
}
