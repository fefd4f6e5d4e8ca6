//! The Auto Scaling scale-in hook as a drain trigger.
//!
//! On a scale-in, Auto Scaling first removes the instance from its pools, then holds it in a HANGING
//! lifecycle hook until someone answers (or the hook times out with its default result). This module
//! watches for that hook, keeps it alive with EXTEND while the drain is progressing, and answers it
//! once the drain is over: CONTINUE when drained (or at the drain deadline), the configured result when
//! deregistration failed. Every decision is logged.

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
    /// Polls until a HANGING hook holds this instance. API errors are logged and polling goes on.
    pub async fn wait_hanging(&self) -> Hook {
        loop {
            match self.api.hooks(&self.group, &self.instance).await {
                Ok(hooks) => {
                    if let Some(h) = hooks.into_iter().find(Hook::is_hanging) {
                        tracing::info!(hook = %h.name, action_key = %h.action_key, "lifecycle hook HANGING: scale-in, draining");
                        return h;
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
