//! IAM: a project-scoped token from a user name and password (`POST /v3/auth/tokens`).

use std::sync::Arc;
use std::time::SystemTime;

use reqwest::Method;
use serde::Deserialize;

use super::{CloudError, Request, RetryPolicy, Service};
use crate::credentials::Anonymous;
use crate::ids::ProjectId;
use crate::secret::Secret;

#[derive(Clone)]
pub struct Iam {
    service: Service,
}

#[derive(Deserialize)]
struct TokenBody {
    token: TokenInfo,
}

#[derive(Deserialize)]
struct TokenInfo {
    expires_at: String,
}

impl Iam {
    pub fn new(http: reqwest::Client, endpoint: reqwest::Url, retry: RetryPolicy) -> Iam {
        Iam {
            service: Service::new(http, endpoint, Arc::new(Anonymous), retry),
        }
    }

    /// The token (from `X-Subject-Token`) and when it expires.
    pub async fn password_token(
        &self,
        user: &str,
        domain: &str,
        password: &Secret,
        project: &ProjectId,
    ) -> Result<(Secret, SystemTime), CloudError> {
        const OP: &str = "IAM CreateToken (password)";
        let body = serde_json::json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": user, "password": password.expose(), "domain": {"name": domain}}}},
            "scope": {"project": {"id": project.as_str()}}
        }});
        let req = Request::new(OP, Method::POST, "/v3/auth/tokens")
            .query("nocatalog", "true")
            .json(&body);
        // Parsed inside the retry loop: an answer without its token or with a garbled body is retried.
        let accept = |reply: super::Reply| parse_token(OP, &reply.headers, &reply.body);
        self.service
            .send_then(&req, accept)
            .await
            .map_err(|e| match e {
                // The request body holds the password: make sure no error path can echo it.
                CloudError::Api {
                    status,
                    code,
                    message,
                    request_id,
                    ..
                } if status == 401 => CloudError::Api {
                    op: format!("{OP} for user {user:?} in domain {domain:?}"),
                    status,
                    code,
                    message,
                    request_id,
                },
                other => other,
            })
    }
}

/// A CreateToken answer: the token from `X-Subject-Token` and `token.expires_at` from the body.
pub fn parse_token(
    op: &str,
    headers: &reqwest::header::HeaderMap,
    body: &[u8],
) -> Result<(Secret, SystemTime), CloudError> {
    let decode = |reason: String| CloudError::Decode {
        op: op.to_owned(),
        reason,
    };
    let token = headers
        .get("x-subject-token")
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| decode("no X-Subject-Token header".into()))?;
    let info: TokenBody = serde_json::from_slice(body).map_err(|e| decode(e.to_string()))?;
    let expires = parse_time(&info.token.expires_at)
        .ok_or_else(|| decode(format!("bad expires_at {:?}", info.token.expires_at)))?;
    Ok((Secret::new(token), expires))
}

/// Parses the cloud's timestamps: `2026-11-29T12:00:00.000000Z`, also without fraction or with an offset.
pub fn parse_time(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(s.trim().trim_end_matches('Z'))
        .ok()
        .or_else(|| humantime::parse_rfc3339(s.trim()).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_of_every_shape() {
        let t = parse_time("2026-11-29T12:00:00.000000Z").unwrap();
        assert_eq!(
            humantime::format_rfc3339_seconds(t).to_string(),
            "2026-11-29T12:00:00Z"
        );
        assert!(parse_time("2026-11-29T12:00:00Z").is_some());
        assert!(parse_time("tomorrow").is_none());
    }
}
