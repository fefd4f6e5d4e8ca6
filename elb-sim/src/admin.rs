//! The admin API, on its own listener: what tests and demos use to set the stage and to look behind
//! it. JSON in and out.
//!
//! | route | what |
//! |---|---|
//! | `GET /log`, `DELETE /log` | the request log (method, path, query, auth kind, status, arrival times) |
//! | `POST /faults` (a [`Fault`]), `DELETE /faults` | inject faults per route |
//! | `POST /rate-limit` `{"project_id", "per_second", "burst"}`, `DELETE /rate-limit` | a per-project token bucket (429 `APIGW.0308`); lift them all |
//! | `POST /tokens/expire` | every IAM token expires now |
//! | `POST /scale-in` `{"instance_id"}` | delete the instance's members, then hang its terminating hooks |
//! | `POST /launch` `{"instance_id"}` | hang the instance's launching hooks, as while a new instance is set up |
//! | `GET /hooks` | lifecycle hooks with their callbacks |
//! | `GET /pools/{pool}/members` | the members of a pool as stored |
//! | `POST /members` (a `MemberConfig`) | add a member behind the API's back (someone else registering) |
//! | `GET /connections` | per-member live and total connections on the data plane |
//! | `POST /seed` (a [`Seed`]: `project`, `user`, `access_key`, `pool`, `listener`, `member`, `instance`, `scaling_group` lists) | add to the running world, all or nothing; answers the new members' ids and listeners' addresses |
//! | `PATCH /pools/{pool}` (a [`PoolPatch`]) | deletion protection, connection drain, health monitor, name |
//! | `PUT /metadata` (a [`MetadataPatch`]) | which instance the metadata service describes, its token mode, its agency |
//! | `PATCH /settings` (a [`SettingsPatch`]: `{"propagation_delay": "2s", "page_size_cap": 2}`) | how long a removed or weight-0 member still gets new connections; the most items a list page holds, whatever `limit` asked (`null` lifts it) |
//! | `GET /listeners` | data-plane listeners' addresses by id |
//!
//! Refusals are `400 {"error": "<reason>"}`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::Shared;
use crate::scenario::{MetadataPatch, PoolPatch, Seed, SettingsPatch};
use crate::state::Fault;

fn ok(v: Value) -> Response {
    (StatusCode::OK, axum::Json(v)).into_response()
}

fn bad(msg: String) -> Response {
    (StatusCode::BAD_REQUEST, axum::Json(json!({"error": msg}))).into_response()
}

pub async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let body = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let parse =
        |b: &[u8]| serde_json::from_slice::<Value>(b).map_err(|e| bad(format!("body: {e}")));
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    // Seeding binds listeners, which awaits: it cannot live in the synchronous match below.
    if method == Method::POST && segments == ["seed"] {
        let seed: Seed = match serde_json::from_slice(&body) {
            Ok(s) => s,
            Err(e) => return bad(format!("seed: {e}")),
        };
        return match shared.seed(&seed).await {
            Ok(seeded) => ok(serde_json::to_value(seeded).unwrap_or_default()),
            Err(e) => bad(e.to_string()),
        };
    }
    let result: Result<Response, Response> = (|| match (method.clone(), segments.as_slice()) {
        (Method::GET, ["log"]) => Ok(ok(
            serde_json::to_value(shared.request_log()).unwrap_or_default()
        )),
        (Method::DELETE, ["log"]) => {
            shared.lock().log.clear();
            Ok(ok(json!({})))
        }
        (Method::POST, ["faults"]) => {
            let fault: Fault =
                serde_json::from_slice(&body).map_err(|e| bad(format!("fault: {e}")))?;
            shared.inject_fault(fault);
            Ok(ok(json!({})))
        }
        (Method::DELETE, ["faults"]) => {
            shared.lock().faults.clear();
            Ok(ok(json!({})))
        }
        (Method::POST, ["rate-limit"]) => {
            let v = parse(&body)?;
            let project = v["project_id"]
                .as_str()
                .ok_or_else(|| bad("project_id".into()))?;
            let rate = v["per_second"]
                .as_f64()
                .filter(|r| *r > 0.0 && r.is_finite())
                .ok_or_else(|| bad("per_second: a positive number".into()))?;
            let burst = v["burst"].as_f64().unwrap_or(rate);
            shared.set_rate_limit(project, rate, burst as u32);
            Ok(ok(json!({})))
        }
        (Method::DELETE, ["rate-limit"]) => {
            shared.clear_rate_limits();
            Ok(ok(json!({})))
        }
        (Method::POST, ["tokens", "expire"]) => {
            shared.expire_tokens();
            Ok(ok(json!({})))
        }
        (Method::POST, [op @ ("scale-in" | "launch")]) => {
            let v = parse(&body)?;
            let id = v["instance_id"]
                .as_str()
                .ok_or_else(|| bad("instance_id".into()))?;
            let start = match *op {
                "scale-in" => crate::api::start_scale_in,
                _ => crate::api::start_launch,
            };
            start(&mut shared.lock(), id).map_err(bad)?;
            Ok(ok(json!({})))
        }
        (Method::GET, ["hooks"]) => Ok(ok(
            serde_json::to_value(shared.lock().hooks.clone()).unwrap_or_default()
        )),
        (Method::GET, ["pools", pool, "members"]) => Ok(ok(Value::Array(shared.members(pool)))),
        (Method::POST, ["members"]) => {
            let m: crate::scenario::MemberConfig =
                serde_json::from_slice(&body).map_err(|e| bad(format!("member: {e}")))?;
            let mut inner = shared.lock();
            let id = inner.add_member(&m).map_err(bad)?;
            inner.publish();
            Ok(ok(json!({"id": id})))
        }
        (Method::PATCH, ["pools", pool]) => {
            let patch: PoolPatch =
                serde_json::from_slice(&body).map_err(|e| bad(format!("pool: {e}")))?;
            shared
                .update_pool(pool, &patch)
                .map_err(|e| bad(e.to_string()))?;
            Ok(ok(json!({})))
        }
        (Method::PUT, ["metadata"]) => {
            let patch: MetadataPatch =
                serde_json::from_slice(&body).map_err(|e| bad(format!("metadata: {e}")))?;
            shared
                .set_metadata(&patch)
                .map_err(|e| bad(e.to_string()))?;
            Ok(ok(json!({})))
        }
        (Method::PATCH, ["settings"]) => {
            let patch: SettingsPatch =
                serde_json::from_slice(&body).map_err(|e| bad(format!("settings: {e}")))?;
            shared
                .update_settings(&patch)
                .map_err(|e| bad(e.to_string()))?;
            Ok(ok(json!({})))
        }
        (Method::GET, ["listeners"]) => Ok(ok(
            serde_json::to_value(shared.listener_addrs()).unwrap_or_default()
        )),
        (Method::GET, ["connections"]) => {
            let stats: Vec<Value> = shared
                .connection_stats()
                .into_iter()
                .map(|(id, live, accepted)| json!({"member_id": id, "live": live, "accepted": accepted}))
                .collect();
            Ok(ok(Value::Array(stats)))
        }
        _ => Err((StatusCode::NOT_FOUND, "no such admin route").into_response()),
    })();
    result.unwrap_or_else(|r| r)
}
