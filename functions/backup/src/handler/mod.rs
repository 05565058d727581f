//! The backup handler: `workload.changed` in, one verified copy per image and `image.completed`
//! / `image.failed` out. Transport-free: the `run` (JetStream) and `serve` (HTTP) adapters drive
//! the same [`Context::handle`].
//!
//! An event all of whose images are backed up already (Completed as the watch on ImageBackups
//! shows, the digest still at the target) changes nothing and is answered at once, without a
//! read; one whose other images are being copied right now comes back after a delay, also
//! without a read. Otherwise the event is checked against the cluster ([`crate::admit`]): the workload it
//! names is read (one GET; its ServiceAccount is read at most every few seconds,
//! [`shared::service_accounts`]), and only images that workload runs, with the
//! target this backup's naming derives, are backed up, with that workload's pull secrets.
//! Refused images are counted (`events_rejected_total{reason}`) and logged; nothing is created
//! for them. Then for each admitted image, independently:
//! 1. make sure its ImageBackup exists under the deterministic name (409: it does; read it);
//! 2. Completed and the target still resolves to the recorded digest: nothing to do, nothing
//!    published again;
//! 3. a live claim held by another worker: leave it, and look again when the lease would run
//!    out (the message is Nak'ed with that delay, so the request is never lost);
//! 4. take the claim with a status write guarded by `resourceVersion` (409: another worker
//!    won; back off), copy, renew the claim and write progress a few times along the way;
//!    losing the claim (another worker took over an expired lease) cancels the copy, and so
//!    does failing to renew it for three quarters of the lease (before anyone else can take it);
//! 5. record Completed (digest, expiry, Ready) and emit `image.completed`, or record the
//!    failure: transient classes retry with a growing delay up to `max_attempts`, permanent
//!    ones (or exhausted attempts) end Failed with `image.failed` and a Kubernetes Event.
//!
//! Steps 4 and 5 are in `record.rs` (the claim held by [`crate::lease`]); what is refused and
//! recorded is in `refusals.rs`. This file is over 400 lines because steps 1–3 and the fan-out
//! read as one sequence; the ports it calls are in [`crate::ports`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ObjectReference, ServiceAccount};
use k8s_openapi::jiff::Timestamp;
use kube::Resource as _;
use kube::runtime::events::EventType;
use shared::NamingPolicy;
use shared::api_error::ApiFailure;
use shared::crd::{ImageBackup, Phase, SecretRef};
use shared::error::ErrorClass;
use shared::events::{Payload, WorkloadChanged, WorkloadRef};
use shared::handler::{Classified, Delivered, Handler, Outcome};
use shared::kube_events::KubeEvents;
use shared::naming::image_backup_name;
use shared::reference::Reference;
use shared::registry::auth::DockerConfig;
use shared::workload::Workload;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument as _;

use crate::claim;
use crate::copy::Copier;
use crate::metrics::{ClaimResult, CopyOutcome, Metrics};
use crate::ports::{Cluster, KubeCluster, Registry};
use crate::status;

mod record;
mod refusals;

/// How the handler behaves.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This worker's identity in claims (pod name and a per-process id).
    pub holder: String,
    /// How long a claim lasts without renewal.
    pub lease: Duration,
    /// How long a Completed ImageBackup is kept (`None`: forever).
    pub ttl: Option<Duration>,
    /// Copy attempts before a transiently failing image is marked Failed.
    pub max_attempts: u32,
    /// Copies at once in this process (any registry).
    pub max_copies: usize,
    /// Copies from one source registry at once in this process.
    pub per_registry: usize,
    /// The longest pause before a retried image is looked at again.
    pub max_retry_delay: Duration,
    /// The backup naming: the only source of targets (an event's target is checked against it).
    pub naming: NamingPolicy,
}

/// Why an event could not be handled as a whole.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The event names an image that is not a valid reference (not from our watcher).
    #[error("event image {field} {value:?} is invalid: {reason}")]
    InvalidImage {
        /// `source` or `target`.
        field: &'static str,
        /// The value.
        value: String,
        /// Why.
        reason: String,
    },
}

impl Classified for HandlerError {
    fn class(&self) -> ErrorClass {
        match self {
            HandlerError::InvalidImage { .. } => ErrorClass::Invalid,
        }
    }
}

/// Everything the handler needs. Cheap to clone (one `Arc`). `C` and `R` are its ports
/// ([`crate::ports`]): the cluster and the copy engine, real ones by default.
pub struct Context<C = KubeCluster, R = Copier> {
    inner: Arc<Inner<C, R>>,
}

impl<C, R> Clone for Context<C, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<C, R> {
    /// The workloads, ImageBackups, pull secrets and Events.
    cluster: C,
    /// The copy engine with the target's credentials.
    registry: R,
    settings: Settings,
    metrics: Metrics,
    /// One semaphore per source registry (the per-registry bound).
    registries: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// The process-wide bound on copies.
    copies: Arc<Semaphore>,
    /// ImageBackups this process is working on: the claim tells workers apart, not two
    /// events handled at once in one worker (same holder), so those meet here.
    local: Arc<Mutex<std::collections::HashSet<String>>>,
}

/// This process works on one ImageBackup; released on drop.
struct LocalClaim {
    name: String,
    set: Arc<Mutex<std::collections::HashSet<String>>>,
}

impl Drop for LocalClaim {
    fn drop(&mut self) {
        if let Ok(mut set) = self.set.lock() {
            set.remove(&self.name);
        }
    }
}

/// One image's result: what the adapter (an event) or the requests controller does next.
#[derive(Debug)]
pub enum ImageResult {
    /// Handled; maybe an event to publish.
    Done(Option<Payload>),
    /// Look again after this delay (claimed elsewhere, transient failure).
    Later(Duration),
}

// === impl Context ===

impl Context {
    /// A handler context over a real cluster and the copy engine.
    pub fn new(
        client: kube::Client,
        copier: Copier,
        settings: Settings,
        metrics: Metrics,
        events: KubeEvents,
    ) -> Self {
        Self::with_ports(KubeCluster::new(client, events), copier, settings, metrics)
    }

    /// Lets the event path see ImageBackups through `store` ([`KubeCluster::share_store`]).
    pub fn share_store(&self, store: kube::runtime::reflector::Store<ImageBackup>) {
        self.inner.cluster.share_store(store);
    }
}

impl<C: Cluster, R: Registry> Context<C, R> {
    /// A handler context over any ports (the unit tests' fakes).
    pub fn with_ports(cluster: C, registry: R, settings: Settings, metrics: Metrics) -> Self {
        let copies = Arc::new(Semaphore::new(settings.max_copies.max(1)));
        Self {
            inner: Arc::new(Inner {
                cluster,
                registry,
                settings,
                metrics,
                registries: Mutex::new(HashMap::new()),
                copies,
                local: Arc::default(),
            }),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    async fn backup_workload(
        &self,
        w: WorkloadChanged,
        delivered: u64,
    ) -> Result<Outcome, HandlerError> {
        // A malformed reference is a malformed event: dead-lettered, as before any check.
        for i in &w.images {
            for (field, value) in [("source", &i.source), ("target", &i.target)] {
                if let Err(e) = Reference::parse_normalized(value) {
                    return Err(HandlerError::InvalidImage {
                        field,
                        value: value.chars().take(300).collect(),
                        reason: e.to_string(),
                    });
                }
            }
        }
        let retry =
            shared::delivery::redelivery_delay(delivered, self.inner.settings.max_retry_delay);
        if let Some(outcome) = self.without_reading(&w, retry).await {
            return Ok(outcome);
        }
        let about = w.workload.object_reference();
        let (workload, account) = match self.read_workload(&w.workload).await {
            Ok(found) => found,
            Err(e) => {
                if let ApiFailure::Refused {
                    code,
                    reason,
                    message,
                } = ApiFailure::of(&e)
                {
                    self.api_refused(&about, "read the workload", code, &reason, &message)
                        .await;
                    return Ok(Outcome::default());
                }
                tracing::warn!(error = %e, retry_in = ?retry, "cannot read the workload the event names; will retry");
                return Ok(Outcome {
                    events: Vec::new(),
                    retry_after: Some(retry),
                });
            }
        };
        let admission = crate::admit::admit(
            &w,
            workload.as_ref(),
            account.as_ref(),
            &self.inner.settings.naming,
        );
        for r in &admission.rejected {
            self.inner.metrics.reject(r.reason);
            tracing::warn!(
                namespace = %w.workload.namespace.chars().take(253).collect::<String>(),
                workload = %w.workload.name.chars().take(253).collect::<String>(),
                source = %r.source,
                reason = ?r.reason,
                why = r.reason.describe(),
                "event refused for this image"
            );
        }
        let secrets = admission.pull_secrets;
        let results =
            futures::future::join_all(admission.images.iter().map(|(source, target)| {
                self.backup_image(source, target, &secrets, &about, retry)
            }))
            .await;
        let mut outcome = Outcome::default();
        for r in results {
            match r {
                ImageResult::Done(Some(event)) => outcome.events.push(event),
                ImageResult::Done(None) => {}
                ImageResult::Later(d) => {
                    outcome.retry_after = Some(outcome.retry_after.map_or(d, |o| o.min(d)));
                }
            }
        }
        Ok(outcome)
    }

    /// The answer to `w` when it needs no read of the workload, because it would change
    /// nothing now: every image it names is backed up already (its target is the naming's, the
    /// watch on ImageBackups shows it Completed, the backup registry still has that digest under
    /// the target): done; or each is either that or being copied right now (by this process,
    /// or under another worker's live claim as the watch shows): look again after `retry`
    /// (at least 2 s; the claim's time left). At scale most events are one or the other (the
    /// hundreds of workloads of one image, their redeliveries while it is copied). Nothing is
    /// created, claimed or copied on this path and the event's pull secrets are not used, so it
    /// trusts the event no further than the full path does. `None`: the full path.
    async fn without_reading(&self, w: &WorkloadChanged, retry: Duration) -> Option<Outcome> {
        let inner = &self.inner;
        let me = inner.settings.holder.as_str();
        let mut verified = Vec::with_capacity(w.images.len());
        let mut later: Option<Duration> = None;
        let mut wait = |d: Duration| later = Some(later.map_or(d, |l| l.min(d)));
        for image in &w.images {
            let (source, target) = crate::admit::event_image(image, &inner.settings.naming).ok()?;
            let name = image_backup_name(&source);
            if self.copying_here(&name) {
                wait(retry.max(Duration::from_secs(2)));
                continue;
            }
            let ib = inner.cluster.known(&name)?;
            if let Some(left) = claim::held_by_other(&ib, me, Timestamp::now()) {
                inner.metrics.claim(ClaimResult::Busy);
                wait(left + Duration::from_secs(1));
                continue;
            }
            let digest = ib.status.as_ref().and_then(|s| s.digest.clone())?;
            if ib.phase() != Phase::Completed
                || crate::admit::request(&ib, &inner.settings.naming).is_err()
            {
                return None;
            }
            verified.push((target, digest));
        }
        if later.is_some() {
            return Some(Outcome {
                events: Vec::new(),
                retry_after: later,
            });
        }
        for (target, digest) in &verified {
            match inner.registry.target_digest(target).await {
                Ok(Some(d)) if d == *digest => {}
                _ => return None,
            }
        }
        for _ in &verified {
            inner.metrics.copy(CopyOutcome::AlreadyCompleted, None);
        }
        Some(Outcome::default())
    }

    /// Whether this process is working on the ImageBackup `name` right now.
    fn copying_here(&self, name: &str) -> bool {
        self.inner.local.lock().is_ok_and(|set| set.contains(name))
    }

    /// Backs up one image; a failed API call is retried after `retry` (a conflict after 2 s),
    /// unless the API server refused it for good: then it is recorded on `about` and dropped
    /// (the resync brings it back once someone fixed the cause).
    async fn backup_image(
        &self,
        source: &Reference,
        target: &Reference,
        secrets: &[SecretRef],
        about: &ObjectReference,
        retry: Duration,
    ) -> ImageResult {
        let span =
            tracing::info_span!("image", source = %source, name = %image_backup_name(source));
        async {
            match self.try_backup_image(source, target, secrets, retry).await {
                Ok(r) => r,
                Err(e) => match ApiFailure::of(&e) {
                    ApiFailure::Conflict => ImageResult::Later(Duration::from_secs(2)),
                    ApiFailure::Transient => {
                        tracing::warn!(error = %e, retry_in = ?retry, "Kubernetes API failed; will retry");
                        ImageResult::Later(retry)
                    }
                    ApiFailure::Refused {
                        code,
                        reason,
                        message,
                    } => {
                        let what = format!("back up {source}");
                        self.api_refused(about, &what, code, &reason, &message)
                            .await;
                        ImageResult::Done(None)
                    }
                },
            }
        }
        .instrument(span)
        .await
    }

    async fn try_backup_image(
        &self,
        source: &Reference,
        target: &Reference,
        secrets: &[SecretRef],
        retry: Duration,
    ) -> Result<ImageResult, kube::Error> {
        let inner = &self.inner;
        let me = inner.settings.holder.as_str();
        let Some(_local) = self.local_claim(&image_backup_name(source)) else {
            // Another event handled by this process right now covers the image: look again
            // after it, waiting longer at each delivery (2 s, 2 s, 4 s, 8 s … up to the retry
            // cap), so the hundred workloads of one image do not each read their workload
            // again every 2 s while it is copied. Nothing waits on this event: the rollout
            // reacts to the image's completion.
            return Ok(ImageResult::Later(retry.max(Duration::from_secs(2))));
        };
        let mut ib = self.ensure(source, target, secrets).await?;
        let name = ib.metadata.name.clone().unwrap_or_default();
        // An object applied by hand under this image's name must ask for what the naming says.
        if let Err((reason, message)) = crate::admit::request(&ib, &inner.settings.naming) {
            self.refuse(&ib, reason, &message).await;
            return Ok(ImageResult::Done(None));
        }
        if ib.phase() == Phase::Completed
            && let Some(digest) = ib.status.as_ref().and_then(|s| s.digest.clone())
        {
            match inner.registry.target_digest(target).await {
                Ok(Some(d)) if d == digest => {
                    inner.metrics.copy(CopyOutcome::AlreadyCompleted, None);
                    return Ok(ImageResult::Done(None));
                }
                Ok(_) => {
                    tracing::info!(%name, "completed backup no longer at the target; copying again")
                }
                Err(e) => {
                    tracing::info!(%name, error = %e, "cannot check the completed backup; will retry");
                    return Ok(ImageResult::Later(Duration::from_secs(10)));
                }
            }
        }
        // A copy slot (this source registry's, then the process's) before the claim: a claim
        // is taken only when its copy can start, so none waits unrenewed behind other copies,
        // and events about images already backed up are never held up behind copies.
        let _slots = self.copy_slots(source).await;
        let now = Timestamp::now();
        if let Some(left) = claim::held_by_other(&ib, me, now) {
            inner.metrics.claim(ClaimResult::Busy);
            tracing::info!(%name, retry_in = ?left, "claimed by another worker");
            return Ok(ImageResult::Later(left + Duration::from_secs(1)));
        }
        // A later change that references a Failed image retries it from scratch.
        if ib.phase() == Phase::Failed
            && let Some(s) = ib.status.as_mut()
        {
            s.attempts = 0;
        }
        let generation = ib.metadata.generation;
        ib.status = Some(status::copying(
            ib.status.as_ref(),
            claim::claim(me, inner.settings.lease, now),
            now,
            generation,
        ));
        let ib = match inner.cluster.replace_status(&ib).await {
            Ok(ib) => ib,
            Err(e) if ApiFailure::is_conflict(&e) => {
                inner.metrics.claim(ClaimResult::Lost);
                return Ok(ImageResult::Later(Duration::from_secs(2)));
            }
            // Deleted between the read and the claim: start over (it is created again).
            Err(e) if ApiFailure::is_not_found(&e) => {
                return Ok(ImageResult::Later(Duration::from_secs(2)));
            }
            Err(e) => return Err(e),
        };
        inner.metrics.claim(ClaimResult::Taken);
        Ok(self.copy_and_record(ib, source, target, secrets).await)
    }

    /// The workload `r` names as the cluster has it now (one GET; `None` when it does not
    /// exist or its name could not be one), and the ServiceAccount its pods run as.
    async fn read_workload(
        &self,
        r: &WorkloadRef,
    ) -> Result<(Option<Workload>, Option<ServiceAccount>), kube::Error> {
        // Names from a message go into a URL: only what Kubernetes could have named.
        if !shared::workload::is_valid_reference(r) {
            return Ok((None, None));
        }
        self.inner.cluster.workload(r).await
    }

    fn local_claim(&self, name: &str) -> Option<LocalClaim> {
        let mut set = self.inner.local.lock().ok()?;
        set.insert(name.to_string()).then(|| LocalClaim {
            name: name.to_string(),
            set: self.inner.local.clone(),
        })
    }

    /// Reads the ImageBackup, or creates it when it does not exist (and reads it when another
    /// worker created it in between: 409). Read first: all but the first of the many workloads
    /// that run one image find it there, one request instead of a refused create and a read;
    /// and no read at all when the watch shows it Completed.
    async fn ensure(
        &self,
        source: &Reference,
        target: &Reference,
        secrets: &[SecretRef],
    ) -> Result<ImageBackup, kube::Error> {
        let name = image_backup_name(source);
        // Completed as the watch shows it: the registry check that follows is what decides,
        // so an old copy is as good as a read.
        if let Some(ib) = self.inner.cluster.known(&name)
            && ib.phase() == Phase::Completed
        {
            return Ok(ib);
        }
        match self.inner.cluster.get(&name).await {
            Err(e) if ApiFailure::is_not_found(&e) => {}
            found => return found,
        }
        let mut ib = ImageBackup::for_source(source, target);
        ib.spec.pull_secrets = secrets.to_vec();
        match self.inner.cluster.create(&ib).await {
            Ok(created) => Ok(created),
            Err(e) if ApiFailure::is_conflict(&e) => self.inner.cluster.get(&name).await,
            Err(e) => Err(e),
        }
    }

    /// Waits for a copy slot from `source`'s registry, then one of the process's (always in
    /// that order, so two waits never hold each other up); released on drop.
    async fn copy_slots(&self, source: &Reference) -> Option<[OwnedSemaphorePermit; 2]> {
        let registry = {
            let mut map = match self.inner.registries.lock() {
                Ok(m) => m,
                Err(poisoned) => poisoned.into_inner(),
            };
            map.entry(source.domain().to_string())
                .or_insert_with(|| {
                    Arc::new(Semaphore::new(self.inner.settings.per_registry.max(1)))
                })
                .clone()
        };
        let registry = registry.acquire_owned().await.ok()?;
        let process = self.inner.copies.clone().acquire_owned().await.ok()?;
        Some([registry, process])
    }

    /// The credentials in the image's pull secrets (all in the workload's namespace).
    async fn pull_credentials(&self, secrets: &[SecretRef]) -> DockerConfig {
        let Some(first) = secrets.first() else {
            return DockerConfig::default();
        };
        let names: Vec<String> = secrets.iter().map(|s| s.name.clone()).collect();
        self.inner
            .cluster
            .pull_secrets(&first.namespace, &names)
            .await
    }

    async fn record(&self, ib: &ImageBackup, type_: EventType, reason: &str, note: &str) {
        self.record_on(&ib.object_ref(&()), type_, reason, note)
            .await;
    }

    async fn record_on(&self, about: &ObjectReference, type_: EventType, reason: &str, note: &str) {
        self.inner.cluster.record(about, type_, reason, note).await;
    }
}

impl<C: Cluster, R: Registry> Handler for Context<C, R> {
    type Event = WorkloadChanged;
    type Error = HandlerError;

    fn accept(payload: Payload) -> Option<WorkloadChanged> {
        match payload {
            Payload::WorkloadChanged(w) => Some(w),
            _ => None,
        }
    }

    async fn handle(
        &self,
        event: WorkloadChanged,
        delivered: Delivered,
    ) -> Result<Outcome, HandlerError> {
        if delivered.is_redelivery() {
            self.inner.metrics.redeliveries.inc();
        }
        self.backup_workload(event, delivered.0).await
    }
}
