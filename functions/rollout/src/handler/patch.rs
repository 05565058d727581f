//! One rollout attempt: at most one per workload at a time in this process, within a pacing
//! slot when paced, every backup verified at the registry, pull access prepared, then one
//! guarded JSON patch that also marks the workload in flight for the health gate.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::runtime::events::EventType;
use shared::api_error::ApiFailure;
use shared::events::{Payload, WorkloadRolledOut};
use shared::reference::Reference;
use shared::workload::Workload;

use super::Context;
use crate::decide::{self, Change, InFlight};
use crate::metrics::PatchOutcome;
use crate::pacing::Slot;
use crate::ports::Ports;
use crate::pull_access::Need;

/// How a paced rollout attempt ended.
#[derive(Debug, PartialEq)]
pub enum Attempt {
    /// Done (patched, or not, for a reason recorded): the event to publish, if any.
    Done(Option<Payload>),
    /// Every slot is taken: try again when one frees.
    NoSlot,
}

/// A workload marked busy in [`Context::busy`] until dropped.
struct Busy {
    set: Arc<Mutex<std::collections::HashSet<String>>>,
    key: String,
}

impl Busy {
    fn take(set: &Arc<Mutex<std::collections::HashSet<String>>>, key: &str) -> Option<Self> {
        let mut s = set.lock().ok()?;
        s.insert(key.to_string()).then(|| Self {
            set: set.clone(),
            key: key.to_string(),
        })
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Ok(mut s) = self.set.lock() {
            s.remove(&self.key);
        }
    }
}

/// How long a patch this process made is remembered: the cache shows it well before.
const PATCH_MEMORY: Duration = Duration::from_secs(60);

impl<P: Ports> Context<P> {
    /// Whether this process patched `key` to a generation after `cached` (within
    /// [`PATCH_MEMORY`]).
    fn patched_since(&self, key: &str, cached: i64) -> bool {
        self.patched.lock().is_ok_and(|p| {
            p.get(key)
                .is_some_and(|(g, at)| *g > cached && at.elapsed() < PATCH_MEMORY)
        })
    }

    /// Remembers that `key` was patched to `generation` (what has expired goes first).
    fn remember_patch(&self, key: &str, generation: i64) {
        if let Ok(mut p) = self.patched.lock() {
            if p.len() >= 1024 {
                p.retain(|_, (_, at)| at.elapsed() < PATCH_MEMORY);
            }
            p.insert(key.to_string(), (generation, Instant::now()));
        }
    }

    /// The backups must still be at the registry, at their digests, before anything points at
    /// them.
    pub(super) async fn verified(&self, changes: &[Change]) -> bool {
        for c in changes {
            let Ok(target) = Reference::parse(&c.target) else {
                return false;
            };
            match self.ports.backup_digest(&target).await {
                Ok(Some(d)) if d == c.digest => {}
                other => {
                    tracing::warn!(target = %c.target, expected = %c.digest, found = ?other.as_ref().ok(), "backup does not resolve to its digest; not rolling out");
                    return false;
                }
            }
        }
        true
    }

    /// Patches `w` onto its backups: within a slot when `paced` (taken first, so a workload
    /// waiting for one costs one Lease read per pass and nothing else), verified at the
    /// registry, pullable by its Pods, in one guarded patch that also marks it in flight.
    pub(super) async fn roll_out(
        &self,
        w: &Workload,
        changes: Vec<Change>,
        paced: bool,
    ) -> Attempt {
        let held = decide::holder(w);
        let key = Self::key(w);
        // One attempt per workload at a time in this process (an event, a cache change, the
        // pacer and the resync can all reach it at once; the later ones would only meet the
        // guard).
        let Some(_busy) = Busy::take(&self.busy, &key) else {
            return Attempt::Done(None);
        };
        // This process patched it moments ago and the cache has not caught up: `w` is the
        // workload before that patch (an image's other completion, a redelivery).
        if self.patched_since(&key, w.generation()) {
            return Attempt::Done(None);
        }
        let slotted = paced && held.is_none() && !self.dry_run && self.ports.paced();
        if slotted {
            match self
                .ports
                .acquire_slot(&key, &|k| self.counted_in_flight(k))
                .await
            {
                Ok(Slot::Taken) => {}
                Ok(Slot::Full) => return Attempt::NoSlot,
                // Another replica is rolling it out: its cache is ahead of ours.
                Ok(Slot::Held) => return Attempt::Done(None),
                Err(e) => {
                    // Retried every pass; said once a minute (a missing namespace or Lease
                    // RBAC holds every rollout until fixed).
                    let due = self.slot_warned.lock().is_ok_and(|mut at| {
                        let due = at.is_none_or(|t| t.elapsed() >= Duration::from_secs(60));
                        if due {
                            *at = Some(Instant::now());
                        }
                        due
                    });
                    if due {
                        tracing::warn!(error = %e, "no pacing slot: rollouts wait until the Lease can be written");
                    }
                    return Attempt::NoSlot;
                }
            }
        }
        let attempt = self.checked_patch(w, changes, held).await;
        if slotted
            && !matches!(&attempt, Attempt::Done(Some(_)))
            && let Err(e) = self.ports.release_slot(&key).await
        {
            tracing::warn!(error = %e, "slot not given back; it frees after its grace");
        }
        attempt
    }

    /// The checks and the patch of [`Self::roll_out`].
    pub(super) async fn checked_patch(
        &self,
        w: &Workload,
        changes: Vec<Change>,
        held: Option<&'static str>,
    ) -> Attempt {
        let r = w.reference();
        if !self.verified(&changes).await {
            self.metrics.patch(PatchOutcome::Unverified);
            return Attempt::Done(None);
        }
        let event = |generation| {
            Payload::WorkloadRolledOut(WorkloadRolledOut {
                workload: r.clone(),
                uid: w.uid(),
                generation,
                changes: changes.iter().map(|c| c.change.clone()).collect(),
                dry_run: self.dry_run,
            })
        };
        if self.dry_run {
            self.metrics.patch(PatchOutcome::DryRun);
            tracing::info!(namespace = %r.namespace, workload = %r.name, "dry run: would roll out");
            return Attempt::Done(Some(event(w.generation())));
        }
        let images: Vec<String> = changes.iter().map(|c| c.change.to.clone()).collect();
        let pull_secret = match self.ports.pull_access(w, &images).await {
            Need::Ready => None,
            Need::AddSecret(name) => Some(name),
            need @ (Need::NotPullable(_) | Need::Conflict(_)) => {
                let (outcome, reason, why) = match need {
                    Need::NotPullable(why) => (PatchOutcome::NotPullable, "BackupNotPullable", why),
                    Need::Conflict(why) => {
                        (PatchOutcome::PullSecretConflict, "PullSecretConflict", why)
                    }
                    _ => return Attempt::Done(None),
                };
                self.metrics.patch(outcome);
                self.report_once(w, images, reason, &format!("not rolled out: {why}"))
                    .await;
                return Attempt::Done(None);
            }
            Need::Unknown(why) => {
                self.metrics.patch(PatchOutcome::Failed);
                tracing::warn!(namespace = %r.namespace, workload = %r.name, error = %why, "pull access unknown; the next event or resync retries");
                return Attempt::Done(None);
            }
        };
        let marker = InFlight {
            started_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            images: changes
                .iter()
                .map(|c| (c.change.container.clone(), c.change.to.clone()))
                .collect(),
            held: held.map(str::to_string),
        };
        let patch = decide::json_patch(w, &changes, &marker, pull_secret.as_deref());
        match self.json_patch(w, patch).await {
            Ok(generation) => {
                self.metrics.patch(PatchOutcome::Patched);
                self.remember_patch(&Self::key(w), generation);
                let mut summary: Vec<String> = changes
                    .iter()
                    .map(|c| {
                        format!(
                            "{}: {} -> {}",
                            c.change.container, c.change.from, c.change.to
                        )
                    })
                    .collect();
                if let Some(name) = &pull_secret {
                    summary.push(format!("imagePullSecrets += {name}"));
                }
                tracing::info!(namespace = %r.namespace, workload = %r.name, changes = %summary.join("; "), "rolled out to backups");
                let mut note = summary.join("; ");
                if let Some(h) = held {
                    note.push_str(&format!(
                        " ({h}: its owner holds the rollout; not waited on or paced, reverted only for Pod pull errors)"
                    ));
                }
                self.record(w, EventType::Normal, "RolledOut", &note).await;
                Attempt::Done(Some(event(generation)))
            }
            Err(e) => {
                match e {
                    e if ApiFailure::is_invalid(&e) || ApiFailure::is_conflict(&e) => {
                        // The guard: the workload changed since the cache saw it. Its new state
                        // comes back as a watch event (and from the watcher) and is evaluated then.
                        self.metrics.patch(PatchOutcome::Conflict);
                        tracing::info!(namespace = %r.namespace, workload = %r.name, "workload changed in between; not overwritten");
                    }
                    e => {
                        self.metrics.patch(PatchOutcome::Failed);
                        tracing::warn!(namespace = %r.namespace, workload = %r.name, error = %e, "patch failed; the next event or resync retries");
                    }
                }
                Attempt::Done(None)
            }
        }
    }

    /// Applies a JSON patch to `w`; returns the generation it produced.
    pub(crate) async fn json_patch(
        &self,
        w: &Workload,
        patch: serde_json::Value,
    ) -> Result<i64, kube::Error> {
        let patch: json_patch::Patch =
            serde_json::from_value(patch).map_err(kube::Error::SerdeError)?;
        self.ports.patch(&w.reference(), patch).await
    }
}
