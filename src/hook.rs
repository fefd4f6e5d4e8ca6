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
//! listing of an instance's hooks says neither whose a hook is nor what it holds, and answering another
//! tool's hook cuts its work short. With `hook_name` configured only that hook starts a drain and only
//! it is extended and answered; others are logged once and left to their owners. Without it, the
//! group's hooks are looked up (ListLifeCycleHooks, when a hook not seen before hangs; given up after
//! [`KINDS_BOUND`], since it stands between the hook and the drain) and launching hooks are left
//! alone; one terminating hook hanging, in a group that has one, is taken as elb-drain's; several
//! hanging, or one of a group known to have several, start the drain but none is answered, and the
//! agent says which and exits 69: they take their default results. Where the group's hooks cannot
//! be read, a hook that appeared while the agent served is taken for a scale-in at once (said once);
//! one already hanging when the agent started (which is how a launching hook looks at boot) waits for
//! the lookup to answer, for at most [`START_PATIENCE`], unless the lookup is refused (403).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::cloud::autoscaling::{Answered, AutoScaling, Hook, HookAnswer, HookKind};
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

/// The lookup of the group's hooks ([`HookWatch::wait_hanging`] without `hook_name`) gives up after
/// this, within `cloud.retry_deadline`: it stands between a hanging hook and the drain.
pub const KINDS_BOUND: Duration = Duration::from_secs(5);

/// How long a hook already hanging when the agent started (a launching hook at boot looks like that)
/// waits for the group's hooks to be read, when that fails for a reason that may pass, before it is
/// taken for a scale-in anyway.
pub const START_PATIENCE: Duration = Duration::from_secs(30);

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
    /// Which hooks of one listing start a drain: the one named `name` if it hangs. Without a name,
    /// those hanging and not in `not_leaving` (the group's launching hooks, and hooks not yet told
    /// apart): the one, or all of them, unclear, when several do or when the group is known to have
    /// several terminating hooks (`terminating`), whichever of them hangs.
    pub fn pick(
        hooks: Vec<Hook>,
        name: Option<&str>,
        not_leaving: &HashSet<String>,
        terminating: usize,
    ) -> Option<Hanging> {
        let mut hanging = hooks.into_iter().filter(Hook::is_hanging);
        if let Some(name) = name {
            return hanging.find(|h| h.name == name).map(Hanging::Ours);
        }
        let mut leaving: Vec<Hook> = hanging.filter(|h| !not_leaving.contains(&h.name)).collect();
        match leaving.len() {
            0 => None,
            1 if terminating < 2 => leaving.pop().map(Hanging::Ours),
            _ => {
                let mut names: Vec<String> = leaving.into_iter().map(|h| h.name).collect();
                names.sort();
                Some(Hanging::Unclear(names))
            }
        }
    }
}

/// What the agent knows of the group's hooks (without `hook_name`), from ListLifeCycleHooks.
#[derive(Debug, Default)]
struct Kinds {
    launching: HashSet<String>,
    /// How many terminating hooks the group has, once read.
    terminating: usize,
    /// Names told apart, or given up on (then taken for terminating hooks).
    known: HashSet<String>,
    /// Hooks already hanging at the agent's first listing whose lookup failed for a reason that may
    /// pass, and since when. A launching hook hangs at boot, a scale-in's hook appears while the
    /// agent serves: these are not taken for a scale-in until the lookup answers, or for at most
    /// [`START_PATIENCE`].
    undecided: HashMap<String, std::time::Instant>,
    /// The names hanging at the first listing (`None` before it).
    at_start: Option<HashSet<String>>,
}

impl Kinds {
    /// Hooks that do not start a drain: launching ones, and those not yet told apart.
    fn not_leaving(&self) -> HashSet<String> {
        self.launching
            .iter()
            .chain(self.undecided.keys())
            .cloned()
            .collect()
    }

    /// Takes in what a lookup for the hanging hooks `need` answered, at `now`.
    fn learn(
        &mut self,
        need: &[String],
        answer: Result<Vec<(String, HookKind)>, (bool, String)>,
        now: std::time::Instant,
    ) {
        let (fatal, error) = match answer {
            Ok(kinds) => {
                self.terminating = kinds
                    .iter()
                    .filter(|(_, k)| *k == HookKind::Terminating)
                    .count();
                for (name, kind) in kinds {
                    if kind == HookKind::Launching {
                        self.launching.insert(name.clone());
                    }
                    self.known.insert(name);
                }
                self.known.extend(need.iter().cloned());
                self.undecided.clear();
                return;
            }
            Err(e) => e,
        };
        for name in need {
            let since = self.undecided.get(name).copied();
            let waiting = !fatal
                && self.at_start.as_ref().is_some_and(|s| s.contains(name))
                && since.is_none_or(|t| now.duration_since(t) < START_PATIENCE);
            if waiting {
                if since.is_none() {
                    tracing::warn!(hook = %name, %error, patience_s = START_PATIENCE.as_secs(), "lifecycle hook HANGING since the agent started, and the scaling group's hooks cannot be read to tell a launching hook from a scale-in: not taken for a scale-in until they can, or for at most {} s", START_PATIENCE.as_secs());
                    self.undecided.insert(name.clone(), now);
                }
            } else {
                self.undecided.remove(name);
                self.known.insert(name.clone());
                tracing::warn!(hook = %name, %error, "could not read the scaling group's lifecycle hooks to tell launching hooks from terminating ones: the hook is taken for a scale-in (set [autoscaling] hook_name to need no lookup)");
            }
        }
    }
}

/// What `check` learns of the hooks: the group's hooks and what each holds (or why they could not be
/// read), and what a scale-in would run into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookAudit {
    pub group_hooks: Result<Vec<(String, HookKind)>, String>,
    /// Why this instance's hooks could not be listed, which is how a scale-in is noticed.
    pub listing_error: Option<String>,
    pub problems: Vec<String>,
}

impl HookAudit {
    /// The problems a scale-in would run into, given the configured `hook_name`.
    pub fn new(
        name: Option<&str>,
        group_hooks: Result<Vec<(String, HookKind)>, String>,
        listing_error: Option<String>,
    ) -> HookAudit {
        let mut problems = Vec::new();
        if let Some(e) = &listing_error {
            problems.push(format!(
                "autoscaling: this instance's lifecycle hooks cannot be listed ({e}): a scale-in would not be noticed"
            ));
        }
        match (&group_hooks, name) {
            (Ok(hooks), Some(name)) => match hooks.iter().find(|(n, _)| n == name) {
                None => problems.push(format!(
                    "autoscaling.hook_name {name:?}: the scaling group has no such hook (it has: {}); a scale-in would not be answered",
                    describe(hooks)
                )),
                Some((_, HookKind::Launching)) => problems.push(format!(
                    "autoscaling.hook_name {name:?} is a launching hook (INSTANCE_LAUNCHING): it holds new instances, not leaving ones; name the terminating hook"
                )),
                Some((_, HookKind::Terminating)) => {}
            },
            (Ok(hooks), None) => {
                let leaving: Vec<&str> = hooks
                    .iter()
                    .filter(|(_, k)| *k == HookKind::Terminating)
                    .map(|(n, _)| n.as_str())
                    .collect();
                match leaving.len() {
                    0 => problems.push(format!(
                        "autoscaling: the scaling group has no terminating lifecycle hook (INSTANCE_TERMINATING; it has: {}): a scale-in holds nothing for elb-drain to answer",
                        describe(hooks)
                    )),
                    1 => {}
                    n => problems.push(format!(
                        "autoscaling: the scaling group has {n} terminating hooks ({}): set autoscaling.hook_name to elb-drain's, or a scale-in drains but answers none",
                        leaving.join(", ")
                    )),
                }
            }
            (Err(e), None) => problems.push(format!(
                "autoscaling: the scaling group's lifecycle hooks cannot be read ({e}): without autoscaling.hook_name a launching hook would be taken for a scale-in; set hook_name, or allow as:lifecycleHooks:list"
            )),
            // With a name they are not needed at the stop.
            (Err(_), Some(_)) => {}
        }
        HookAudit {
            group_hooks,
            listing_error,
            problems,
        }
    }
}

/// `a (terminating), b (launching)`, or `none`.
pub fn describe(hooks: &[(String, HookKind)]) -> String {
    if hooks.is_empty() {
        return "none".into();
    }
    hooks
        .iter()
        .map(|(n, k)| format!("{n} ({})", k.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
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
        let mut kinds = Kinds::default();
        let mut told: HashSet<String> = HashSet::new();
        loop {
            match self.api.hooks(&self.group, &self.instance).await {
                Ok(hooks) => {
                    let hanging: Vec<String> = hooks
                        .iter()
                        .filter(|h| h.is_hanging())
                        .map(|h| h.name.clone())
                        .collect();
                    if kinds.at_start.is_none() {
                        kinds.at_start = Some(hanging.iter().cloned().collect());
                    }
                    let need: Vec<String> = hanging
                        .iter()
                        .filter(|n| !kinds.known.contains(*n))
                        .cloned()
                        .collect();
                    if self.name.is_none() && !need.is_empty() {
                        let answer = self.hook_kinds().await;
                        kinds.learn(&need, answer, std::time::Instant::now());
                    }
                    for h in hooks.iter().filter(|h| h.is_hanging()) {
                        let whose = match &self.name {
                            Some(ours) if h.name != *ours => "not elb-drain's (hook_name)",
                            None if kinds.launching.contains(&h.name) => {
                                "a launching hook (INSTANCE_LAUNCHING), not a scale-in"
                            }
                            _ => continue,
                        };
                        if told.insert(h.action_key.clone()) {
                            tracing::info!(hook = %h.name, "lifecycle hook HANGING is {whose}: left to its owner");
                        }
                    }
                    let pick = Hanging::pick(
                        hooks,
                        self.name.as_deref(),
                        &kinds.not_leaving(),
                        kinds.terminating,
                    );
                    match pick {
                        Some(Hanging::Ours(h)) => {
                            tracing::info!(hook = %h.name, action_key = %h.action_key, "lifecycle hook HANGING: scale-in, draining");
                            return Hanging::Ours(h);
                        }
                        Some(Hanging::Unclear(names)) => {
                            tracing::warn!(hooks = ?names, terminating = kinds.terminating, "lifecycle hooks HANGING: scale-in, draining; the scaling group has several terminating hooks and no [autoscaling] hook_name says which is elb-drain's, so none will be answered");
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

    /// For `check`: lists this instance's hooks and reads the group's, changing nothing.
    pub async fn audit(&self) -> HookAudit {
        let (listing, kinds) = tokio::join!(
            self.api.hooks(&self.group, &self.instance),
            self.api.hook_kinds(&self.group)
        );
        HookAudit::new(
            self.name.as_deref(),
            kinds.map_err(|e| e.to_string()),
            listing.err().map(|e| e.to_string()),
        )
    }

    /// The group's hooks, within [`KINDS_BOUND`]; an error says whether it is final (the lookup is
    /// refused: asking again will not help) and what it was.
    async fn hook_kinds(&self) -> Result<Vec<(String, HookKind)>, (bool, String)> {
        match tokio::time::timeout(KINDS_BOUND, self.api.hook_kinds(&self.group)).await {
            Ok(Ok(kinds)) => Ok(kinds),
            Ok(Err(e)) => Err((
                e.is_auth() || e.is_not_found() || e.status() == Some(400),
                e.to_string(),
            )),
            Err(_) => Err((
                false,
                format!(
                    "ListLifeCycleHooks: no answer within {} s",
                    KINDS_BOUND.as_secs()
                ),
            )),
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

    #[test]
    fn a_group_known_to_have_several_terminating_hooks_is_unclear_whichever_hangs() {
        let one = vec![hook("drain", "HANGING")];
        assert_eq!(
            Hanging::pick(one.clone(), None, &HashSet::new(), 2),
            Some(Hanging::Unclear(vec!["drain".into()]))
        );
        assert_eq!(
            Hanging::pick(one, Some("drain"), &HashSet::new(), 2),
            Some(Hanging::Ours(hook("drain", "HANGING")))
        );
    }

    #[test]
    fn a_hook_hanging_at_start_waits_for_the_lookup_a_later_one_does_not() {
        let t0 = std::time::Instant::now();
        let failing = || Err((false, "503".to_owned()));
        let mut kinds = Kinds {
            at_start: Some(["warm-up".to_owned()].into()),
            ..Kinds::default()
        };
        // Hanging since the start, the lookup failing for a reason that may pass: not a scale-in yet.
        kinds.learn(&["warm-up".into()], failing(), t0);
        assert!(kinds.not_leaving().contains("warm-up"));
        kinds.learn(&["warm-up".into()], failing(), t0 + START_PATIENCE / 2);
        assert!(kinds.not_leaving().contains("warm-up"));
        // Past the patience: taken for a scale-in.
        kinds.learn(&["warm-up".into()], failing(), t0 + START_PATIENCE);
        assert!(!kinds.not_leaving().contains("warm-up") && kinds.known.contains("warm-up"));
        // A hook that appears while serving is a scale-in's: taken at once.
        kinds.learn(&["drain".into()], failing(), t0);
        assert!(!kinds.not_leaving().contains("drain") && kinds.known.contains("drain"));
        // A refusal is final, also for a hook hanging at the start.
        let mut kinds = Kinds {
            at_start: Some(["warm-up".to_owned()].into()),
            ..Kinds::default()
        };
        kinds.learn(&["warm-up".into()], Err((true, "403".into())), t0);
        assert!(!kinds.not_leaving().contains("warm-up"));
        // An answer tells them apart and ends the waiting.
        let mut kinds = Kinds {
            at_start: Some(["warm-up".to_owned()].into()),
            ..Kinds::default()
        };
        kinds.learn(&["warm-up".into()], failing(), t0);
        let group = vec![
            ("warm-up".to_owned(), HookKind::Launching),
            ("drain".to_owned(), HookKind::Terminating),
        ];
        kinds.learn(&["warm-up".into()], Ok(group), t0);
        assert!(kinds.undecided.is_empty() && kinds.launching.contains("warm-up"));
        assert_eq!(kinds.terminating, 1);
        assert!(kinds.known.contains("drain"));
    }

    #[test]
    fn check_names_a_hook_name_that_is_missing_or_launching_and_an_unclear_group() {
        let group = |hooks: &[(&str, HookKind)]| -> Result<Vec<(String, HookKind)>, String> {
            Ok(hooks.iter().map(|(n, k)| (n.to_string(), *k)).collect())
        };
        let (t, l) = (HookKind::Terminating, HookKind::Launching);
        let problems = |name, hooks, listing: Option<&str>| {
            HookAudit::new(name, hooks, listing.map(str::to_owned)).problems
        };
        // Fine: the named terminating hook; a lone terminating hook beside a launching one.
        assert!(problems(Some("drain"), group(&[("warm-up", l), ("drain", t)]), None).is_empty());
        assert!(problems(None, group(&[("warm-up", l), ("drain", t)]), None).is_empty());
        // With a name the group's hooks are not needed at the stop.
        assert!(problems(Some("drain"), Err("403".into()), None).is_empty());
        type Group = Result<Vec<(String, HookKind)>, String>;
        let cases: [(Option<&str>, Group, Option<&str>, &str); 6] = [
            (
                Some("drian"),
                group(&[("drain", t)]),
                None,
                "has no such hook (it has: drain (terminating))",
            ),
            (
                Some("warm-up"),
                group(&[("warm-up", l)]),
                None,
                "is a launching hook",
            ),
            (
                None,
                group(&[("warm-up", l)]),
                None,
                "no terminating lifecycle hook",
            ),
            (
                None,
                group(&[("logs", t), ("drain", t)]),
                None,
                "2 terminating hooks (logs, drain)",
            ),
            (
                None,
                Err("403 AS.0001".into()),
                None,
                "cannot be read (403 AS.0001)",
            ),
            (
                Some("drain"),
                group(&[("drain", t)]),
                Some("timed out"),
                "cannot be listed (timed out)",
            ),
        ];
        for (name, hooks, listing, want) in cases {
            let got = problems(name, hooks, listing);
            assert!(
                got.len() == 1 && got[0].contains(want),
                "{name:?} {listing:?}: {got:?} should say {want:?}"
            );
        }
    }

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
        let none = HashSet::new();
        for (hooks, name, want) in cases {
            assert_eq!(
                Hanging::pick(listing(hooks), name, &none, 0),
                want,
                "{hooks:?} {name:?}"
            );
        }
        // A launching hook never starts a drain without a name, and is not counted among several.
        let launching: HashSet<String> = ["warm-up".to_owned()].into();
        let cases: [(Listing, Option<&str>, Option<Hanging>); 3] = [
            (&[("warm-up", "HANGING")], None, None),
            (
                &[("warm-up", "HANGING"), ("drain", "HANGING")],
                None,
                ours(),
            ),
            (&[("drain", "HANGING")], Some("drain"), ours()),
        ];
        for (hooks, name, want) in cases {
            assert_eq!(
                Hanging::pick(listing(hooks), name, &launching, 1),
                want,
                "{hooks:?} {name:?}"
            );
        }
    }
}
