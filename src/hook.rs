//! The Auto Scaling scale-in hook as a drain trigger.
//!
//! On a scale-in, Auto Scaling first removes the instance from its pools, then holds it in a HANGING
//! lifecycle hook until someone answers (or the hook times out with its default result). This module
//! watches for that hook, keeps it alive with EXTEND while the drain is progressing, and answers it
//! once the drain is over: CONTINUE when drained (or at the drain deadline), the configured result when
//! deregistration failed. Every decision is logged.
//!
//! **Which hook.** A scaling group can have several lifecycle hooks: a launching hook that holds a new
//! instance while it is set up, another tool's terminating hook (logs shipped, a backup taken). The
//! listing of an instance's hooks does not say which is whose, and answering another tool's hook cuts
//! its work short. With `hook_name` configured only that hook starts a drain and only it is extended and
//! answered; others are logged once and left to their owners. Without it, one hook hanging is taken
//! as elb-drain's (a group with one hook needs no name); several hanging at once start the drain but
//! none is answered, and the agent says which and exits 69: they take their default results.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::cloud::autoscaling::{Answered, AutoScaling, Hook, HookAnswer};
use crate::config::HookResult;
use crate::drain::{Event, Sink, Verdict};
use crate::ids::{InstanceId, ScalingGroupId};

pub struct HookWatch {
    pub api: AutoScaling,
    pub group: ScalingGroupId,
    pub instance: InstanceId,
    pub poll_interval: Duration,
    pub extend_margin: Duration,
    pub on_failure: HookResult,
    /// `hook_name`: the only hook this agent drains for and answers; `None` takes a lone one.
    pub name: Option<String>,
}

/// What a listing of the instance's hooks means for the drain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hanging {
    /// elb-drain's hook holds the instance: drain, keep it alive, answer it.
    Ours(Hook),
    /// Several hooks hold the instance (their names) and no `hook_name` says which is elb-drain's:
    /// drain, and answer none.
    Unclear(Vec<String>),
}

impl Hanging {
    /// Which hooks of one listing start a drain: the one named `name` if it hangs; without a name, the
    /// one hanging, or all of them, unclear, when several do.
    pub fn pick(hooks: Vec<Hook>, name: Option<&str>) -> Option<Hanging> {
        let mut hanging: Vec<Hook> = hooks.into_iter().filter(Hook::is_hanging).collect();
        if let Some(name) = name {
            return hanging
                .into_iter()
                .find(|h| h.name == name)
                .map(Hanging::Ours);
        }
        match hanging.len() {
            0 => None,
            1 => hanging.pop().map(Hanging::Ours),
            _ => {
                let mut names: Vec<String> = hanging.into_iter().map(|h| h.name).collect();
                names.sort();
                Some(Hanging::Unclear(names))
            }
        }
    }
}

/// When the drain last made progress (a phase change, fewer connections, new arrivals while settling).
#[derive(Clone)]
pub struct ProgressClock(Arc<Mutex<(Instant, Option<usize>)>>);

impl Default for ProgressClock {
    fn default() -> Self {
        ProgressClock(Arc::new(Mutex::new((Instant::now(), None))))
    }
}

impl ProgressClock {
    pub fn last(&self) -> Instant {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).0
    }
}

impl Sink for ProgressClock {
    fn emit(&self, event: &Event) {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            Event::PhaseChanged { .. } | Event::NewConnections { .. } => g.0 = Instant::now(),
            Event::Progress { established, .. } => {
                if g.1.is_none_or(|prev| *established < prev) {
                    g.0 = Instant::now();
                }
                g.1 = Some(*established);
            }
            _ => {}
        }
    }
}

impl HookWatch {
    /// Polls until a hook that starts a drain holds this instance (see [`Hanging::pick`]). Hooks
    /// hanging that are not this agent's are logged once each. API errors are logged and polling
    /// goes on.
    pub async fn wait_hanging(&self) -> Hanging {
        let mut told: HashSet<String> = HashSet::new();
        loop {
            match self.api.hooks(&self.group, &self.instance).await {
                Ok(hooks) => {
                    if let Some(ours) = &self.name {
                        for h in hooks.iter().filter(|h| h.is_hanging() && h.name != *ours) {
                            if told.insert(h.action_key.clone()) {
                                tracing::info!(hook = %h.name, hook_name = %ours, "lifecycle hook HANGING is not elb-drain's (hook_name): left to its owner");
                            }
                        }
                    }
                    match Hanging::pick(hooks, self.name.as_deref()) {
                        Some(Hanging::Ours(h)) => {
                            tracing::info!(hook = %h.name, action_key = %h.action_key, "lifecycle hook HANGING: scale-in, draining");
                            return Hanging::Ours(h);
                        }
                        Some(Hanging::Unclear(names)) => {
                            tracing::warn!(hooks = ?names, "lifecycle hooks HANGING: scale-in, draining; several hold this instance and no [autoscaling] hook_name says which is elb-drain's, so none will be answered");
                            return Hanging::Unclear(names);
                        }
                        None => {}
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not list lifecycle hooks; will retry"),
            }
            tokio::time::sleep(self.poll_interval).await;
        }
    }

    /// Keeps `hook` alive while the drain runs: EXTEND when it would time out within the margin, only
    /// while the drain is progressing and only when the drain's own deadline lies beyond the hook's.
    /// Never returns; the caller drops it when the drain ends.
    pub async fn heartbeat(
        &self,
        mut hook: Hook,
        progress: &ProgressClock,
        drain_deadline: Instant,
    ) {
        loop {
            let left = hook
                .deadline
                .and_then(|d| d.duration_since(SystemTime::now()).ok())
                .unwrap_or_default();
            let wake = left
                .saturating_sub(self.extend_margin)
                .max(self.poll_interval.min(self.extend_margin));
            tokio::time::sleep(wake).await;
            let left = hook
                .deadline
                .and_then(|d| d.duration_since(SystemTime::now()).ok())
                .unwrap_or_default();
            if left > self.extend_margin {
                continue;
            }
            if drain_deadline <= Instant::now() + left {
                tracing::info!(hook = %hook.name, left_s = left.as_secs(), "hook outlasts the drain deadline: no EXTEND needed");
                tokio::time::sleep(self.poll_interval.max(left)).await;
                continue;
            }
            if progress.last().elapsed() > self.extend_margin.max(Duration::from_secs(60)) {
                tracing::warn!(hook = %hook.name, "drain is not progressing: not extending the hook");
                tokio::time::sleep(self.poll_interval).await;
                continue;
            }
            match self
                .api
                .answer(&self.group, &hook, HookAnswer::Extend)
                .await
            {
                Ok(Answered::Accepted) => {
                    tracing::info!(hook = %hook.name, "lifecycle hook extended (EXTEND)")
                }
                Ok(Answered::AlreadyAnswered) => {
                    tracing::warn!(hook = %hook.name, "hook already answered by someone else (AS.7042); not extending");
                    return std::future::pending().await;
                }
                Err(e) => {
                    tracing::warn!(hook = %hook.name, error = %e, "EXTEND failed; will retry")
                }
            }
            // Learn the new deadline.
            match self.api.hooks(&self.group, &self.instance).await {
                Ok(hooks) => {
                    if let Some(h) = hooks.into_iter().find(|h| h.action_key == hook.action_key) {
                        hook = h;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not re-read the hook after EXTEND"),
            }
        }
    }

    /// Answers the hook once the drain is over. `Err` when the answer could not be delivered.
    pub async fn finish(
        &self,
        hook: &Hook,
        verdict: Verdict,
    ) -> Result<(), crate::cloud::CloudError> {
        let answer = match verdict {
            Verdict::Drained | Verdict::TimedOut { .. } => HookAnswer::Continue,
            Verdict::DeregistrationFailed { .. } => match self.on_failure {
                HookResult::Continue => HookAnswer::Continue,
                HookResult::Abandon => HookAnswer::Abandon,
            },
        };
        match self.api.answer(&self.group, hook, answer).await? {
            Answered::Accepted => {
                tracing::info!(hook = %hook.name, result = answer.as_str(), ?verdict, "lifecycle hook answered")
            }
            Answered::AlreadyAnswered => tracing::warn!(
                hook = %hook.name,
                result = answer.as_str(),
                "lifecycle hook was already answered (AS.7042): someone else or its timeout decided; nothing sent"
            ),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(name: &str, status: &str) -> Hook {
        Hook {
            name: name.into(),
            action_key: format!("{name}-key"),
            status: status.into(),
            deadline: None,
            default_result: "ABANDON".into(),
        }
    }

    #[test]
    fn the_named_hook_or_a_lone_one_starts_a_drain_and_several_unnamed_are_unclear() {
        let ours = || Some(Hanging::Ours(hook("drain", "HANGING")));
        let listing = |hooks: &[(&str, &str)]| -> Vec<Hook> {
            hooks.iter().map(|(n, s)| hook(n, s)).collect()
        };
        type Listing<'a> = &'a [(&'a str, &'a str)];
        let cases: [(Listing, Option<&str>, Option<Hanging>); 9] = [
            (&[], None, None),
            (&[], Some("drain"), None),
            (&[("drain", "HANGING")], None, ours()),
            (&[("drain", "HANGING")], Some("drain"), ours()),
            // Another tool's hook, before ours in the listing or alone (a launching hook at boot).
            (
                &[("logs", "HANGING"), ("drain", "HANGING")],
                Some("drain"),
                ours(),
            ),
            (&[("warm-up", "HANGING")], Some("drain"), None),
            // Answered hooks of earlier scale-ins stay listed; they are not candidates.
            (&[("logs", "CONTINUE"), ("drain", "HANGING")], None, ours()),
            (&[("drain", "CONTINUE")], Some("drain"), None),
            (
                &[("logs", "HANGING"), ("drain", "HANGING")],
                None,
                Some(Hanging::Unclear(vec!["drain".into(), "logs".into()])),
            ),
        ];
        for (hooks, name, want) in cases {
            assert_eq!(
                Hanging::pick(listing(hooks), name),
                want,
                "{hooks:?} {name:?}"
            );
        }
    }
}
