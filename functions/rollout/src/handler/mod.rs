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
//!
//! Here: the context and the decision for one workload. The event handler is in `events.rs`,
//! one attempt's checks and patch in `patch.rs`, the pacer's queue in `pacer.rs`, the resync in
//! `resync.rs`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::Resource as _;
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};
use shared::NamingPolicy;
use shared::cache::WorkloadCache;
use shared::crd::ImageBackup;
use shared::error::ErrorClass;
use shared::events::Payload;
use shared::handler::Classified;
use shared::kube_events::KubeEvents;
use shared::naming::image_backup_name;
use shared::reference::Reference;
use shared::registry::RegistryClient;
use shared::workload::Workload;

use crate::decide::{self, Decision, Pin};
use crate::metrics::Metrics;
use crate::pacing::Slots;
use crate::ports::{KubePorts, Ports};
use crate::pull_access::PullAccess;

mod events;
mod pacer;
mod patch;
mod resync;

pub use events::RolloutEvent;
use pacer::Queue;
pub use patch::Attempt;

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
    /// Workloads this process patched, with the generation each patch produced and when: until
    /// the cache shows that generation, an evaluation of the older one is left out (its patch
    /// could only fail the guard).
    patched: Arc<Mutex<HashMap<String, (i64, Instant)>>>,
    /// When a failure to reach the pacing Lease was last logged.
    slot_warned: Arc<Mutex<Option<Instant>>>,
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
            patched: self.patched.clone(),
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
        events: KubeEvents,
        metrics: Metrics,
        safety: Safety,
    ) -> Self {
        let ports = KubePorts::new(client, events, registry, safety.pull, safety.slots);
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
            patched: Arc::default(),
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

    /// The cached ImageBackups of the external images `w` runs, by normalized source: only the
    /// ImageBackup of that very source (one applied by hand may spell it unnormalized,
    /// `nginx:1.14.0`, and is not this image's).
    fn backups_of(&self, w: &Workload) -> HashMap<String, Arc<ImageBackup>> {
        w.images()
            .iter()
            .filter_map(|c| {
                shared::workload::needs_backup(&c.image, &self.naming)
                    .ok()
                    .flatten()
            })
            .filter_map(|source| {
                let ib = self
                    .backups
                    .get(&ObjectRef::new(&image_backup_name(&source)))?;
                let same = Reference::parse_normalized(&ib.spec.source)
                    .map(Reference::with_default_tag)
                    .is_ok_and(|r| r == source);
                same.then(|| (source.to_string(), ib))
            })
            .collect()
    }

    fn decide(&self, w: &Workload) -> Decision {
        let found = self.backups_of(w);
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
                let note: Vec<String> = failed
                    .iter()
                    .map(|f| format!("{}: {}", f.source, f.error))
                    .collect();
                let sources = failed.iter().map(|f| f.source.clone()).collect();
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
}
