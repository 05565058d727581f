//! The rollout loop's state and its handler: reflector caches of Deployments, DaemonSets and
//! ImageBackups (so an event never lists the API), evaluation through [`crate::decide`], the
//! registry check that every backup still resolves to its digest, and the guarded patch.
//!
//! Events it reacts to: `image.completed` (every cached workload that runs that source is
//! evaluated) and `workload.changed` (that workload). A periodic resync evaluates every workload,
//! so a lost `image.completed` delays a rollout, never loses it. Duplicate or reordered events
//! cause no second patch: a rolled-out workload runs only backups, so there is nothing to do.
//!
//! Before a patch: pull access to the backups ([`crate::pull_access`]); with pacing, a slot
//! ([`crate::pacing`]) taken by the pacer in order of completion. After it: the health gate
//! ([`crate::gate`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Resource as _;
use kube::runtime::events::{EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use shared::NamingPolicy;
use shared::api_error::ApiFailure;
use shared::cache::WorkloadCache;
use shared::crd::ImageBackup;
use shared::error::ErrorClass;
use shared::events::{Payload, WorkloadRef, WorkloadRolledOut};
use shared::handler::{Classified, Handler, Outcome};
use shared::naming::image_backup_name;
use shared::publish::EventPublisher;
use shared::reference::Reference;
use shared::registry::RegistryClient;
use shared::workload::Workload;

use crate::decide::{self, Change, Decision, InFlight, Pin};
use crate::metrics::{Metrics, PatchOutcome};
use crate::pacing::{Slot, Slots};
use crate::ports::{KubePorts, Ports};
use crate::pull_access::{Need, PullAccess};

/// What makes a rollout safe: pull access, pacing and the health gate's timeout.
#[derive(Clone)]
pub struct Safety {
    /// Pull access to the backups (`--backup-pull-secret`).
    pub pull: PullAccess,
    /// Cluster-wide slots (`--max-concurrent-rollouts`).
    pub slots: Slots,
    /// `--rollout-timeout-seconds` (default: per workload, see [`crate::gate`]).
    pub timeout: Option<Duration>,
}

/// Workloads waiting for a pacing slot: key → (latest completion of their backups, workload).
type Queue = BTreeMap<String, (Option<Time>, WorkloadRef)>;

/// How a paced rollout attempt ended.
#[derive(Debug, PartialEq)]
pub enum Attempt {
    /// Done (patched, or not, for a reason recorded): the event to publish, if any.
    Done(Option<Payload>),
    /// Every slot is taken: try again when one frees.
    NoSlot,
}

/// Everything the rollout needs. Cheap to clone. `P` is how it reaches the cluster and the
/// registry ([`crate::ports`]): the real ones by default.
pub struct Context<P = KubePorts> {
    /// Patches, Events, Pods, the registry, pull access and pacing slots.
    pub(crate) ports: Arc<P>,
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
    /// The rollout's metrics.
    pub metrics: Metrics,
    /// `--rollout-timeout-seconds` (default: per workload, see [`crate::gate`]).
    pub timeout: Option<Duration>,
    /// Blocked workloads already reported (to record one Event per blocking set).
    reported: Arc<Mutex<HashMap<String, Vec<String>>>>,
    /// Workloads waiting for a slot.
    queue: Arc<Mutex<Queue>>,
    /// Wakes the pacer (a workload queued, a slot freed).
    pub(crate) wake: Arc<tokio::sync::Notify>,
    /// When each in-flight workload's Pods were last looked at.
    pub(crate) pod_checks: Arc<Mutex<HashMap<String, Instant>>>,
    /// When the pacer last looked for workloads ready to patch that no queue holds.
    refilled: Arc<Mutex<Instant>>,
    /// Workloads this process is rolling out right now.
    busy: Arc<Mutex<std::collections::HashSet<String>>>,
    /// When a failure to reach the pacing Lease was last logged.
    slot_warned: Arc<Mutex<Option<Instant>>>,
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

/// How often a pacer with an empty queue looks for workloads ready to patch.
const REFILL_EVERY: Duration = Duration::from_secs(5);

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

impl<P> Clone for Context<P> {
    fn clone(&self) -> Self {
        Self {
            ports: self.ports.clone(),
            workloads: self.workloads.clone(),
            backups: self.backups.clone(),
            naming: self.naming.clone(),
            pin: self.pin,
            dry_run: self.dry_run,
            metrics: self.metrics.clone(),
            timeout: self.timeout,
            reported: self.reported.clone(),
            queue: self.queue.clone(),
            wake: self.wake.clone(),
            pod_checks: self.pod_checks.clone(),
            refilled: self.refilled.clone(),
            busy: self.busy.clone(),
            slot_warned: self.slot_warned.clone(),
        }
    }
}

impl Context {
    /// A context over synced caches, a real cluster and registry.
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
        safety: Safety,
    ) -> Self {
        let ports = KubePorts::new(client, recorder, registry, safety.pull, safety.slots);
        Self::with_ports(
            ports,
            workloads,
            backups,
            naming,
            pin,
            dry_run,
            metrics,
            safety.timeout,
        )
    }
}

impl<P: Ports> Context<P> {
    /// A context over synced caches and any ports (the unit tests' fakes).
    #[allow(clippy::too_many_arguments)]
    pub fn with_ports(
        ports: P,
        workloads: WorkloadCache,
        backups: Store<ImageBackup>,
        naming: NamingPolicy,
        pin: Pin,
        dry_run: bool,
        metrics: Metrics,
        timeout: Option<Duration>,
    ) -> Self {
        Self {
            ports: Arc::new(ports),
            workloads,
            backups,
            naming: Arc::new(naming),
            pin,
            dry_run,
            metrics,
            timeout,
            reported: Arc::default(),
            queue: Arc::default(),
            wake: Arc::default(),
            pod_checks: Arc::default(),
            refilled: Arc::new(Mutex::new(Instant::now())),
            busy: Arc::default(),
            slot_warned: Arc::default(),
        }
    }

    /// What wakes the pacer (a workload queued, a slot freed).
    pub fn waker(&self) -> Arc<tokio::sync::Notify> {
        self.wake.clone()
    }

    /// `deployment/ns/name`: a workload's key in the queue, the slots and the reports.
    pub(crate) fn key(w: &Workload) -> String {
        let r = w.reference();
        format!("{}/{}/{}", r.kind.token(), r.namespace, r.name)
    }

    /// Whether the cache shows the workload of `key` in flight and counted (its marker set,
    /// its owner not holding it).
    fn counted_in_flight(&self, key: &str) -> bool {
        let mut parts = key.splitn(3, '/');
        let (Some(kind), Some(namespace), Some(name)) = (parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        let kind = match kind {
            "deployment" => shared::events::WorkloadKind::Deployment,
            "daemonset" => shared::events::WorkloadKind::DaemonSet,
            _ => return false,
        };
        let r = WorkloadRef {
            kind,
            namespace: namespace.into(),
            name: name.into(),
        };
        self.workloads.get(&r).is_some_and(|w| {
            decide::annotation(&w, decide::ROLLOUT_ANNOTATION)
                .and_then(|a| serde_json::from_str::<InFlight>(a).ok())
                .is_some_and(|m| m.held.is_none())
        })
    }

    /// The latest completion time of the backups `w` waits on (the pacer's order).
    fn completed_at(&self, w: &Workload) -> Option<Time> {
        w.images()
            .iter()
            .filter_map(|c| {
                shared::workload::needs_backup(&c.image, &self.naming)
                    .ok()
                    .flatten()
            })
            .filter_map(|source| {
                self.backups
                    .get(&ObjectRef::new(&image_backup_name(&source)))?
                    .status
                    .as_ref()?
                    .completed_at
                    .clone()
            })
            .max_by_key(|t| t.0)
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

    /// Evaluates one workload and acts: the patch (and its event), or a report. With pacing,
    /// a workload ready to patch joins the queue and the pacer patches it when a slot frees.
    pub async fn evaluate(&self, w: &Workload) -> Option<Payload> {
        match self.decide(w) {
            Decision::Patch(changes) => {
                if self.ports.paced() && !self.dry_run && decide::holder(w).is_none() {
                    self.enqueue(w);
                    return None;
                }
                match self.roll_out(w, changes, false).await {
                    Attempt::Done(event) => event,
                    Attempt::NoSlot => None,
                }
            }
            Decision::Blocked(failed) => {
                let note: Vec<String> = failed.iter().map(|(s, e)| format!("{s}: {e}")).collect();
                let sources = failed.iter().map(|(s, _)| s.clone()).collect();
                self.report_once(
                    w,
                    sources,
                    "BackupFailed",
                    &format!("not rolled out: {}", note.join("; ")),
                )
                .await;
                None
            }
            Decision::NothingToDo
            | Decision::NotReady
            | Decision::Waiting(_)
            | Decision::Reverted(_) => None,
        }
    }

    fn enqueue(&self, w: &Workload) {
        let order = self.completed_at(w);
        if let Ok(mut q) = self.queue.lock() {
            q.insert(Self::key(w), (order, w.reference()));
            self.metrics
                .queued
                .set(i64::try_from(q.len()).unwrap_or(i64::MAX));
        }
        self.wake.notify_one();
    }

    /// Queues every cached workload ready to patch. The queue lives in memory: what a replica
    /// that died had queued (its events were acked) is found again here, by any replica whose
    /// queue ran empty, within [`REFILL_EVERY`].
    fn refill(&self) {
        let due = self
            .refilled
            .lock()
            .map(|mut at| {
                let due = at.elapsed() >= REFILL_EVERY;
                if due {
                    *at = Instant::now();
                }
                due
            })
            .unwrap_or(false);
        let empty = self.queue.lock().map(|q| q.is_empty()).unwrap_or(false);
        if !due || !empty {
            return;
        }
        let candidates = self
            .workloads
            .filter(|spec| self.external_sources(spec).next().is_some());
        for w in candidates {
            if decide::holder(&w).is_none() && matches!(self.decide(&w), Decision::Patch(_)) {
                let order = self.completed_at(&w);
                if let Ok(mut q) = self.queue.lock() {
                    q.insert(Self::key(&w), (order, w.reference()));
                }
            }
        }
    }

    /// The pacer's pass: queued workloads, oldest completion first, patched while slots last.
    pub async fn pace(&self, publisher: &impl EventPublisher) {
        if !self.ports.paced() {
            return;
        }
        self.refill();
        let mut order: Vec<(Option<Time>, String, WorkloadRef)> = match self.queue.lock() {
            Ok(q) => q
                .iter()
                .map(|(k, (t, r))| (t.clone(), k.clone(), r.clone()))
                .collect(),
            Err(_) => return,
        };
        order.sort_by(|a, b| {
            (a.0.as_ref().map(|t| t.0), &a.1).cmp(&(b.0.as_ref().map(|t| t.0), &b.1))
        });
        for (_, key, r) in order {
            let attempt = match self.workloads.get(&r) {
                Some(w) => match self.decide(&w) {
                    Decision::Patch(changes) => self.roll_out(&w, changes, true).await,
                    _ => Attempt::Done(None),
                },
                None => Attempt::Done(None),
            };
            match attempt {
                Attempt::NoSlot => break,
                Attempt::Done(event) => {
                    if let Ok(mut q) = self.queue.lock() {
                        q.remove(&key);
                    }
                    if let Some(event) = event
                        && let Err(e) = publisher.publish(&event).await
                    {
                        tracing::warn!(error = %e, "rolledout event not published");
                    }
                }
            }
        }
        if let Ok(q) = self.queue.lock() {
            self.metrics
                .queued
                .set(i64::try_from(q.len()).unwrap_or(i64::MAX));
        }
    }

    /// The backups must still be at the registry, at their digests, before anything points at
    /// them.
    async fn verified(&self, changes: &[Change]) -> bool {
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
    async fn roll_out(&self, w: &Workload, changes: Vec<Change>, paced: bool) -> Attempt {
        let held = decide::holder(w);
        let key = Self::key(w);
        // One attempt per workload at a time in this process (an event, a cache change, the
        // pacer and the resync can all reach it at once; the later ones would only meet the
        // guard).
        let Some(_busy) = Busy::take(&self.busy, &key) else {
            return Attempt::Done(None);
        };
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
    async fn checked_patch(
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

    /// Records a Warning Event once per (workload, reason, set of images or sources).
    async fn report_once(&self, w: &Workload, what: Vec<String>, reason: &str, note: &str) {
        let r = w.reference();
        let key = format!("{}/{reason}", Self::key(w));
        if let Ok(mut reported) = self.reported.lock() {
            if reported.get(&key) == Some(&what) {
                return;
            }
            reported.insert(key, what);
        }
        tracing::warn!(namespace = %r.namespace, workload = %r.name, reason, note, "rollout blocked");
        self.record(w, EventType::Warning, reason, note).await;
    }

    pub(crate) async fn record(&self, w: &Workload, type_: EventType, reason: &str, note: &str) {
        let reference = match w {
            Workload::Deployment(d) => d.object_ref(&()),
            Workload::DaemonSet(d) => d.object_ref(&()),
        };
        self.ports.record(&reference, type_, reason, note).await;
    }

    /// Evaluates every cached workload (the resync), publishing what it produced; updates the
    /// waiting and blocked gauges.
    pub async fn resync(&self, publisher: &impl EventPublisher) {
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
        // Pull secret copies follow their source.
        if let Some(name) = self.ports.pull_secret_name() {
            let namespaces: std::collections::BTreeSet<String> = self
                .workloads
                .annotated(decide::ORIGINAL_IMAGES_ANNOTATION)
                .iter()
                .filter(|w| {
                    w.pod_spec()
                        .and_then(|s| s.image_pull_secrets.as_ref())
                        .is_some_and(|l| l.iter().any(|r| r.name == name))
                })
                .map(|w| w.reference().namespace)
                .collect();
            self.ports
                .sync_pull_secrets(namespaces.into_iter().collect())
                .await;
        }
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

impl<P: Ports> Context<P> {
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
        w.pod_spec()
            .is_some_and(|spec| self.external_sources(spec).next().is_some())
    }

    /// The external sources (normalized) a pod spec runs, by the shared needs-backup rule.
    fn external_sources<'s>(
        &'s self,
        spec: &'s k8s_openapi::api::core::v1::PodSpec,
    ) -> impl Iterator<Item = Reference> + 's {
        spec.init_containers
            .iter()
            .flatten()
            .chain(spec.containers.iter())
            .filter_map(|c| c.image.as_deref())
            .filter_map(|image| {
                shared::workload::needs_backup(image, &self.naming)
                    .ok()
                    .flatten()
            })
    }

    /// The cached workloads that run `source` (normalized), cloning only those.
    fn users_of(&self, source: &str) -> Vec<Workload> {
        self.workloads
            .filter(|spec| self.external_sources(spec).any(|s| s.to_string() == source))
    }
}

impl<P: Ports> Handler for Context<P> {
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
