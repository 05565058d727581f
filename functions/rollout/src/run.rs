//! The rollout loop's state and its handler: reflector caches of Deployments, DaemonSets and
//! ImageBackups (so an event never lists the API), evaluation through [`crate::decide`], the
//! registry check that every backup still resolves to its digest, and the guarded patch.
//!
//! Events it reacts to: `image.completed` (every cached workload that runs that source is
//! evaluated) and `workload.changed` (that workload). A periodic resync evaluates every workload,
//! so a lost `image.completed` delays a rollout, never loses it. Duplicate or reordered events
//! cause no second patch: a rolled-out workload runs only backups, so there is nothing to do.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource as _};
use shared::NamingPolicy;
use shared::cache::WorkloadCache;
use shared::consumer::{Classified, Handler, Outcome};
use shared::crd::ImageBackup;
use shared::error::ErrorClass;
use shared::events::{Payload, WorkloadKind, WorkloadRolledOut};
use shared::naming::image_backup_name;
use shared::publish::{EventPublisher, Publisher};
use shared::reference::Reference;
use shared::registry::{Access, RegistryClient, Repo};
use shared::workload::Workload;

use crate::decide::{self, Change, Decision, Pin};
use crate::metrics::{Metrics, PatchOutcome};

/// Everything the rollout needs. Cheap to clone.
#[derive(Clone)]
pub struct Context {
    /// Patches and Events.
    pub client: kube::Client,
    /// The Deployments and DaemonSets.
    pub workloads: WorkloadCache,
    /// The ImageBackups cache.
    pub backups: Store<ImageBackup>,
    /// The backup naming policy (the shared needs-backup rule).
    pub naming: Arc<NamingPolicy>,
    /// How backups are written into workloads.
    pub pin: Pin,
    /// Evaluate and publish, patch nothing.
    pub dry_run: bool,
    /// To check each backup still resolves to its digest.
    pub registry: RegistryClient,
    /// Records Events on workloads.
    pub recorder: Recorder,
    /// The rollout's metrics.
    pub metrics: Metrics,
    /// Blocked workloads already reported (to record one Event per blocking set).
    reported: Arc<Mutex<HashMap<String, Vec<String>>>>,
}

/// Why an event could not be handled (never: every failure is recorded and healed by the next
/// event or resync); kept for the adapter's contract.
#[derive(Debug, thiserror::Error)]
#[error("rollout failed: {0}")]
pub struct RolloutError(String);

impl Classified for RolloutError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Internal
    }
}

// === impl Context ===

impl Context {
    /// A context over synced caches.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: kube::Client,
        workloads: WorkloadCache,
        backups: Store<ImageBackup>,
        naming: NamingPolicy,
        pin: Pin,
        dry_run: bool,
        registry: RegistryClient,
        recorder: Recorder,
        metrics: Metrics,
    ) -> Self {
        Self {
            client,
            workloads,
            backups,
            naming: Arc::new(naming),
            pin,
            dry_run,
            registry,
            recorder,
            metrics,
            reported: Arc::default(),
        }
    }

    fn decide(&self, w: &Workload) -> Decision {
        let backups = &self.backups;
        let found: HashMap<String, Arc<ImageBackup>> = w
            .images()
            .iter()
            .filter_map(|c| {
                shared::workload::needs_backup(&c.image, &self.naming)
                    .ok()
                    .flatten()
            })
            .filter_map(|source| {
                let ib = backups.get(&ObjectRef::new(&image_backup_name(&source)))?;
                // Only the ImageBackup of this very source (one applied by hand may spell it
                // unnormalized: `nginx:1.14.0`).
                let same = Reference::parse_normalized(&ib.spec.source)
                    .map(Reference::with_default_tag)
                    .is_ok_and(|r| r == source);
                same.then(|| (source.to_string(), ib))
            })
            .collect();
        decide::decide(w, &self.naming, self.pin, |s| {
            found.get(s).map(|ib| ib.as_ref())
        })
    }

    /// Evaluates one workload and acts: the patch (and its event), or a report.
    pub async fn evaluate(&self, w: &Workload) -> Option<Payload> {
        match self.decide(w) {
            Decision::Patch(changes) => self.roll_out(w, changes).await,
            Decision::Blocked(failed) => {
                self.report_blocked(w, &failed).await;
                None
            }
            Decision::NothingToDo | Decision::NotReady | Decision::Waiting(_) => None,
        }
    }

    /// The backups must still be at the registry, at their digests, before anything points at
    /// them.
    async fn verified(&self, changes: &[Change]) -> bool {
        for c in changes {
            let Ok(target) = Reference::parse(&c.target) else {
                return false;
            };
            let repo = Repo {
                registry: target.domain().to_string(),
                path: target.path().to_string(),
            };
            match self
                .registry
                .manifest_digest(&repo, target.pull_reference(), Access::Pull)
                .await
            {
                Ok(Some(d)) if d == c.digest => {}
                other => {
                    tracing::warn!(target = %c.target, expected = %c.digest, found = ?other.as_ref().ok(), "backup does not resolve to its digest; not rolling out");
                    return false;
                }
            }
        }
        true
    }

    async fn roll_out(&self, w: &Workload, changes: Vec<Change>) -> Option<Payload> {
        let r = w.reference();
        if !self.verified(&changes).await {
            self.metrics.patch(PatchOutcome::Unverified);
            return None;
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
            return Some(event(w.generation()));
        }
        let patch: json_patch::Patch = match serde_json::from_value(decide::json_patch(w, &changes))
        {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the patch");
                self.metrics.patch(PatchOutcome::Failed);
                return None;
            }
        };
        let params = PatchParams::default();
        let result = match r.kind {
            WorkloadKind::Deployment => {
                Api::<Deployment>::namespaced(self.client.clone(), &r.namespace)
                    .patch(&r.name, &params, &Patch::Json::<()>(patch))
                    .await
                    .map(|d| d.metadata.generation)
            }
            WorkloadKind::DaemonSet => {
                Api::<DaemonSet>::namespaced(self.client.clone(), &r.namespace)
                    .patch(&r.name, &params, &Patch::Json::<()>(patch))
                    .await
                    .map(|d| d.metadata.generation)
            }
        };
        match result {
            Ok(generation) => {
                self.metrics.patch(PatchOutcome::Patched);
                let summary: Vec<String> = changes
                    .iter()
                    .map(|c| {
                        format!(
                            "{}: {} -> {}",
                            c.change.container, c.change.from, c.change.to
                        )
                    })
                    .collect();
                tracing::info!(namespace = %r.namespace, workload = %r.name, changes = %summary.join("; "), "rolled out to backups");
                self.record(w, EventType::Normal, "RolledOut", &summary.join("; "))
                    .await;
                Some(event(generation.unwrap_or_default()))
            }
            Err(kube::Error::Api(e)) if e.code == 422 || e.code == 409 => {
                // The guard: the workload changed since the cache saw it. Its new state comes
                // back as a watch event (and from the watcher) and is evaluated then.
                self.metrics.patch(PatchOutcome::Conflict);
                tracing::info!(namespace = %r.namespace, workload = %r.name, "workload changed in between; not overwritten");
                None
            }
            Err(e) => {
                self.metrics.patch(PatchOutcome::Failed);
                tracing::warn!(namespace = %r.namespace, workload = %r.name, error = %e, "patch failed; the next event or resync retries");
                None
            }
        }
    }

    async fn report_blocked(&self, w: &Workload, failed: &[(String, String)]) {
        let r = w.reference();
        let key = format!("{}/{}/{}", r.kind.token(), r.namespace, r.name);
        let sources: Vec<String> = failed.iter().map(|(s, _)| s.clone()).collect();
        if let Ok(mut reported) = self.reported.lock() {
            if reported.get(&key) == Some(&sources) {
                return;
            }
            reported.insert(key, sources);
        }
        let note: Vec<String> = failed.iter().map(|(s, e)| format!("{s}: {e}")).collect();
        tracing::warn!(namespace = %r.namespace, workload = %r.name, failed = %note.join("; "), "rollout blocked by failed backups");
        self.record(
            w,
            EventType::Warning,
            "BackupFailed",
            &format!("not rolled out: {}", note.join("; ")),
        )
        .await;
    }

    async fn record(&self, w: &Workload, type_: EventType, reason: &str, note: &str) {
        let reference = match w {
            Workload::Deployment(d) => d.object_ref(&()),
            Workload::DaemonSet(d) => d.object_ref(&()),
        };
        let event = KubeEvent {
            type_,
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: "RollOut".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &reference).await {
            tracing::debug!(error = %e, "cannot record the event");
        }
    }

    /// Evaluates every cached workload (the resync), publishing what it produced; updates the
    /// waiting and blocked gauges.
    pub async fn resync(&self, publisher: &Publisher) {
        self.metrics.resyncs.inc();
        let (mut waiting, mut blocked) = (0, 0);
        for w in self.workloads.each() {
            match self.decide(&w) {
                Decision::Waiting(_) => waiting += 1,
                Decision::Blocked(_) => blocked += 1,
                _ => {}
            }
            if let Some(event) = self.evaluate(&w).await
                && let Err(e) = publisher.publish(&event).await
            {
                tracing::warn!(error = %e, "rolledout event not published");
            }
        }
        self.metrics.waiting.set(waiting);
        self.metrics.blocked.set(blocked);
    }
}

/// How long a handler waits for its caches to show what an event says happened.
const CACHE_CATCH_UP: Duration = Duration::from_secs(5);
/// Deliveries after which an event the caches never catch up with is left to the resync
/// (a workload deleted since, an ImageBackup expired since).
const MAX_CATCH_UP_DELIVERIES: u64 = 5;

/// How long before a workload that was not Ready is looked at again.
const NOT_READY_RETRY: Duration = Duration::from_secs(10);
/// Deliveries after which a workload that stays not Ready is left to the resync.
const MAX_NOT_READY_DELIVERIES: u64 = 30;

// === impl Context (events) ===

impl Context {
    /// Waits (bounded) until `check` holds on the caches: an event can arrive before the watch
    /// update that carries the same fact (`image.completed` before the ImageBackup's status
    /// reaches this process's cache).
    async fn caught_up(&self, check: impl Fn() -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + CACHE_CATCH_UP;
        loop {
            if check() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// True when `w` runs at least one image that is not in the backup registry (the shared
    /// needs-backup rule): only such a workload can have a rollout to do.
    pub fn runs_external_images(&self, w: &Workload) -> bool {
        w.images().iter().any(|c| {
            shared::workload::needs_backup(&c.image, &self.naming)
                .ok()
                .flatten()
                .is_some()
        })
    }

    /// The cached workloads that run `source` (normalized), cloning only those.
    fn users_of(&self, source: &str) -> Vec<Workload> {
        self.workloads.filter(|spec| {
            spec.init_containers
                .iter()
                .flatten()
                .chain(spec.containers.iter())
                .filter_map(|c| c.image.as_deref())
                .any(|image| {
                    shared::workload::needs_backup(image, &self.naming)
                        .ok()
                        .flatten()
                        .is_some_and(|s| s.to_string() == source)
                })
        })
    }
}

impl Handler for Context {
    type Error = RolloutError;

    async fn handle(&self, event: Payload, delivered: u64) -> Result<Outcome, RolloutError> {
        let mut outcome = Outcome::default();
        let caught_up = match &event {
            Payload::ImageCompleted(c) => {
                self.caught_up(|| {
                    self.backups
                        .get(&ObjectRef::new(&c.name))
                        .is_some_and(|ib| {
                            ib.phase() == shared::crd::Phase::Completed
                                && ib.status.as_ref().and_then(|s| s.digest.as_deref())
                                    == Some(c.digest.as_str())
                        })
                })
                .await
            }
            Payload::WorkloadChanged(c) => {
                self.caught_up(|| {
                    self.workloads
                        .get(&c.workload)
                        .is_some_and(|w| w.uid() == c.uid && w.generation() >= c.generation)
                })
                .await
            }
            _ => true,
        };
        if !caught_up && delivered < MAX_CATCH_UP_DELIVERIES {
            tracing::debug!(subject = %event.subject(), "caches behind the event; redelivery asked");
            outcome.retry_after = Some(Duration::from_secs(2));
            return Ok(outcome);
        }
        let targets: Vec<Workload> = match &event {
            Payload::ImageCompleted(c) => self.users_of(&c.source),
            Payload::WorkloadChanged(c) => self.workloads.get(&c.workload).into_iter().collect(),
            _ => Vec::new(),
        };
        for w in targets {
            // A workload not Ready now (mid-rollout, scaling) is looked at again shortly rather
            // than at the next resync.
            if self.decide(&w) == Decision::NotReady && delivered < MAX_NOT_READY_DELIVERIES {
                outcome.retry_after = Some(NOT_READY_RETRY);
                continue;
            }
            outcome.events.extend(self.evaluate(&w).await);
        }
        Ok(outcome)
    }
}
