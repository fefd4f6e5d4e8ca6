//! Auto Scaling lifecycle hooks (AS v1): what is hanging on this instance, and the answer to it.

use std::time::SystemTime;

use reqwest::Method;
use serde::Deserialize;

use super::{CloudError, Request, Service};
use crate::ids::{InstanceId, ProjectId, ScalingGroupId};

/// A lifecycle hook holding this instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    pub name: String,
    pub action_key: String,
    pub status: String,
    /// When the hook times out (and takes its default result).
    pub deadline: Option<SystemTime>,
    pub default_result: String,
}

impl Hook {
    pub fn is_hanging(&self) -> bool {
        self.status == "HANGING"
    }
}

#[derive(Deserialize)]
struct RawHook {
    #[serde(default)]
    lifecycle_hook_name: String,
    #[serde(default)]
    lifecycle_action_key: String,
    #[serde(default)]
    lifecycle_hook_status: String,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    default_result: String,
}

/// What a group's hook holds: a new instance while it is set up, or a leaving one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    Launching,
    Terminating,
}

impl HookKind {
    pub fn as_str(self) -> &'static str {
        match self {
            HookKind::Launching => "launching",
            HookKind::Terminating => "terminating",
        }
    }
}

#[derive(Deserialize)]
struct RawGroupHook {
    #[serde(default)]
    lifecycle_hook_name: String,
    #[serde(default)]
    lifecycle_hook_type: String,
}

#[derive(Deserialize)]
struct GroupHooks {
    #[serde(default)]
    lifecycle_hooks: Vec<RawGroupHook>,
}

#[derive(Deserialize)]
struct HangingInfo {
    #[serde(default)]
    instance_hanging_info: Vec<RawHook>,
}

/// The answer to a hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookAnswer {
    Continue,
    Abandon,
    /// One more period (an hour in the real service) to finish.
    Extend,
}

impl HookAnswer {
    pub fn as_str(self) -> &'static str {
        match self {
            HookAnswer::Continue => "CONTINUE",
            HookAnswer::Abandon => "ABANDON",
            HookAnswer::Extend => "EXTEND",
        }
    }
}

/// How a callback ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answered {
    Accepted,
    /// `AS.7042`: the hook is no longer HANGING; someone (or the timeout) answered it already.
    AlreadyAnswered,
}

#[derive(Clone)]
pub struct AutoScaling {
    service: Service,
    project: ProjectId,
}

impl AutoScaling {
    pub fn new(service: Service, project: ProjectId) -> AutoScaling {
        AutoScaling { service, project }
    }

    fn path(&self, group: &ScalingGroupId, op: &str) -> String {
        format!(
            "/autoscaling-api/v1/{}/scaling_instance_hook/{group}/{op}",
            self.project
        )
    }

    /// The hooks holding `instance`, hanging or recently answered.
    pub async fn hooks(
        &self,
        group: &ScalingGroupId,
        instance: &InstanceId,
    ) -> Result<Vec<Hook>, CloudError> {
        let op = format!("ListHookInstances group={group} instance={instance}");
        let req =
            Request::new(&op, Method::GET, self.path(group, "list")).query("instance_id", instance);
        // Parsed inside the retry loop: a garbled answer is retried.
        self.service
            .send_then(&req, |reply| parse_hooks(&op, &reply.body))
            .await
    }

    /// The group's hooks by name, with what each holds (ListLifeCycleHooks). A type this agent does
    /// not know is left out.
    pub async fn hook_kinds(
        &self,
        group: &ScalingGroupId,
    ) -> Result<Vec<(String, HookKind)>, CloudError> {
        let op = format!("ListLifeCycleHooks group={group}");
        let path = format!(
            "/autoscaling-api/v1/{}/scaling_lifecycle_hook/{group}/list",
            self.project
        );
        let req = Request::new(&op, Method::GET, path);
        self.service
            .send_then(&req, |reply| parse_hook_kinds(&op, &reply.body))
            .await
    }

    /// Answers a hook by its action key.
    pub async fn answer(
        &self,
        group: &ScalingGroupId,
        hook: &Hook,
        answer: HookAnswer,
    ) -> Result<Answered, CloudError> {
        let op = format!(
            "CompleteLifecycleAction group={group} hook={} result={}",
            hook.name,
            answer.as_str()
        );
        let body = serde_json::json!({
            "lifecycle_action_key": hook.action_key,
            "lifecycle_action_result": answer.as_str(),
        });
        let req = Request::new(&op, Method::PUT, self.path(group, "callback"))
            .json(&body)
            .status_only();
        match self.service.send(&req).await {
            Ok(_) => Ok(Answered::Accepted),
            Err(e) if e.code() == Some("AS.7042") => Ok(Answered::AlreadyAnswered),
            Err(e) => Err(e),
        }
    }
}

/// A ListHookInstances answer (`{"instance_hanging_info": [...]}`); a `timeout` that is not a time
/// leaves the hook without a deadline rather than failing the poll.
pub fn parse_hooks(op: &str, body: &[u8]) -> Result<Vec<Hook>, CloudError> {
    let info: HangingInfo = serde_json::from_slice(body).map_err(|e| CloudError::Decode {
        op: op.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(info
        .instance_hanging_info
        .into_iter()
        .map(|h| Hook {
            name: h.lifecycle_hook_name,
            action_key: h.lifecycle_action_key,
            status: h.lifecycle_hook_status,
            deadline: h.timeout.as_deref().and_then(super::iam::parse_time),
            default_result: h.default_result,
        })
        .collect())
}

/// A ListLifeCycleHooks answer (`{"lifecycle_hooks": [...]}`): each hook's name and kind; hooks of a
/// type other than INSTANCE_LAUNCHING or INSTANCE_TERMINATING are left out.
pub fn parse_hook_kinds(op: &str, body: &[u8]) -> Result<Vec<(String, HookKind)>, CloudError> {
    let hooks: GroupHooks = serde_json::from_slice(body).map_err(|e| CloudError::Decode {
        op: op.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(hooks
        .lifecycle_hooks
        .into_iter()
        .filter_map(|h| {
            let kind = match h.lifecycle_hook_type.as_str() {
                "INSTANCE_LAUNCHING" => HookKind::Launching,
                "INSTANCE_TERMINATING" => HookKind::Terminating,
                _ => return None,
            };
            Some((h.lifecycle_hook_name, kind))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_groups_hooks_are_read_with_their_kind_and_unknown_kinds_left_out() {
        let body = br#"{"lifecycle_hooks": [
            {"lifecycle_hook_name": "warm-up", "lifecycle_hook_type": "INSTANCE_LAUNCHING", "default_timeout": 3600},
            {"lifecycle_hook_name": "elb-drain", "lifecycle_hook_type": "INSTANCE_TERMINATING"},
            {"lifecycle_hook_name": "future", "lifecycle_hook_type": "INSTANCE_HIBERNATING"}
        ]}"#;
        assert_eq!(
            parse_hook_kinds("ListLifeCycleHooks", body).unwrap(),
            [
                ("warm-up".to_owned(), HookKind::Launching),
                ("elb-drain".to_owned(), HookKind::Terminating)
            ]
        );
        assert_eq!(parse_hook_kinds("ListLifeCycleHooks", b"{}").unwrap(), []);
        let e = parse_hook_kinds("ListLifeCycleHooks", b"[").unwrap_err();
        assert!(e.to_string().contains("ListLifeCycleHooks"), "{e}");
    }
}
