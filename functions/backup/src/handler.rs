//! The backup handler: `workload.changed` in, one verified copy per image and `image.completed`
//! / `image.failed` out. Transport-free: the `run` (JetStream) and `serve` (HTTP) adapters drive
//! the same [`Context::handle`].
//!
//! First the event is checked against the cluster ([`crate::admit`]): the workload it names is
//! read (one GET, and one for its ServiceAccount), and only images that workload runs, with the
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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ObjectReference, ServiceAccount};
use k8s_openapi::jiff::Timestamp;
use kube::Resource as _;
use kube::runtime::events::{EventType, Recorder};
use shared::NamingPolicy;
use shared::api_error::ApiFailure;
use shared::crd::{ImageBackup, Phase, SecretRef};
use shared::error::{Disposition, ErrorClass};
use shared::events::{ImageCompleted, ImageFailed, Payload, WorkloadChanged, WorkloadRef};
use shared::handler::{Classified, Handler, Outcome};
use shared::naming::image_backup_name;
use shared::reference::Reference;
use shared::registry::auth::DockerConfig;
use shared::workload::Workload;
use tokio::sync::{Semaphore, watch};
use tracing::Instrument as _;

use crate::claim;
use crate::copy::{Copier, CopyError, Progress};
use crate::metrics::{ClaimResult, CopyOutcome, Metrics};
use crate::ports::{Cluster, KubeCluster, Registry};
use crate::status;

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
        recorder: Recorder,
    ) -> Self {
        Self::with_ports(
            KubeCluster::new(client, recorder),
            copier,
            settings,
            metrics,
        )
    }
}

impl<C: Cluster, R: Registry> Context<C, R> {
    /// A handler context over any ports (the unit tests' fakes).
    pub fn with_ports(cluster: C, registry: R, settings: Settings, metrics: Metrics) -> Self {
        Self {
            inner: Arc::new(Inner {
                cluster,
                registry,
                settings,
                metrics,
                registries: Mutex::new(HashMap::new()),
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
        let about = w.workload.object_reference();
        let retry =
            shared::delivery::redelivery_delay(delivered, self.inner.settings.max_retry_delay);
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
            match self.try_backup_image(source, target, secrets).await {
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

    /// Records an API call refused for good: the metric, a warning, and a Warning Event
    /// `ApiRefused` on `about` naming what was being done and the API server's answer.
    async fn api_refused(
        &self,
        about: &ObjectReference,
        doing: &str,
        code: u16,
        reason: &str,
        message: &str,
    ) {
        self.inner
            .metrics
            .api_refused
            .get_or_create(&crate::metrics::CodeLabels { code })
            .inc();
        tracing::warn!(
            code,
            reason,
            message,
            doing,
            "the Kubernetes API refused; not retried (fix the cause; the resync tries again)"
        );
        let note = format!(
            "cannot {doing}: the API server answered {code} {reason}: {message}; not retried until the cluster changes"
        );
        self.record_on(about, EventType::Warning, "ApiRefused", &note)
            .await;
    }

    async fn try_backup_image(
        &self,
        source: &Reference,
        target: &Reference,
        secrets: &[SecretRef],
    ) -> Result<ImageResult, kube::Error> {
        let inner = &self.inner;
        let me = inner.settings.holder.as_str();
        let Some(_local) = self.local_claim(&image_backup_name(source)) else {
            // Another event handled by this process right now covers the image.
            return Ok(ImageResult::Later(Duration::from_secs(2)));
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

    /// Takes up an ImageBackup found in the cluster rather than carried by an event (applied
    /// with kubectl, or left behind by a lost message or a dead worker): refused with a recorded
    /// status if it asks for anything the naming does not give, else backed up like an image of
    /// an event, with the pull secrets its spec names.
    pub async fn take_up(&self, ib: &ImageBackup) -> ImageResult {
        match crate::admit::request(ib, &self.inner.settings.naming) {
            Err((reason, message)) => {
                self.refuse(ib, reason, &message).await;
                ImageResult::Done(None)
            }
            Ok((source, target)) => {
                self.backup_image(
                    &source,
                    &target,
                    &ib.spec.pull_secrets,
                    &ib.object_ref(&()),
                    Duration::from_secs(5),
                )
                .await
            }
        }
    }

    /// Records that `ib` will not be carried out: a Failed status saying why (once), a
    /// Warning Event, the `requests_refused_total{reason}` counter. Nothing is copied.
    async fn refuse(&self, ib: &ImageBackup, reason: crate::admit::RejectReason, message: &str) {
        let name = ib.metadata.name.clone().unwrap_or_default();
        let generation = ib.metadata.generation;
        let refused = status::refused(ib.status.as_ref(), message, Timestamp::now(), generation);
        let already = ib.status.as_ref().is_some_and(|s| {
            s.phase == Some(Phase::Failed)
                && s.last_error == refused.last_error
                && s.observed_generation == generation
        });
        if already {
            return;
        }
        self.inner.metrics.refuse(reason);
        tracing::warn!(%name, reason = ?reason, message, "ImageBackup refused");
        let mut ib = ib.clone();
        ib.status = Some(refused);
        match self.inner.cluster.replace_status(&ib).await {
            Ok(updated) => {
                self.record(&updated, EventType::Warning, "Refused", message)
                    .await;
            }
            // Changed meanwhile: whoever looks next decides again on the new object.
            Err(e) => tracing::debug!(%name, error = %e, "refusal not written"),
        }
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

    /// Creates the ImageBackup, or reads it if it exists (409).
    async fn ensure(
        &self,
        source: &Reference,
        target: &Reference,
        secrets: &[SecretRef],
    ) -> Result<ImageBackup, kube::Error> {
        let mut ib = ImageBackup::for_source(source, target);
        ib.spec.pull_secrets = secrets.to_vec();
        let name = image_backup_name(source);
        match self.inner.cluster.create(&ib).await {
            Ok(created) => Ok(created),
            Err(e) if ApiFailure::is_conflict(&e) => self.inner.cluster.get(&name).await,
            Err(e) => Err(e),
        }
    }

    fn registry_permits(&self, registry: &str) -> Arc<Semaphore> {
        let mut map = match self.inner.registries.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.entry(registry.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.inner.settings.per_registry.max(1))))
            .clone()
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

    /// Copies under the claim held in `ib`, renewing it and writing progress; records the end.
    async fn copy_and_record(
        &self,
        mut ib: ImageBackup,
        source: &Reference,
        target: &Reference,
        secrets: &[SecretRef],
    ) -> ImageResult {
        let inner = &self.inner;
        let me = inner.settings.holder.clone();
        let name = ib.metadata.name.clone().unwrap_or_default();
        let permits = self.registry_permits(source.domain());
        let _permit = permits.acquire_owned().await;
        let extra = self.pull_credentials(secrets).await;
        let (tx, rx) = watch::channel(Progress::default());
        inner.metrics.in_flight.inc();
        let started = Instant::now();
        let copy = inner.registry.copy(source, target, extra, tx);
        tokio::pin!(copy);
        let renew_every = (inner.settings.lease / 3).max(Duration::from_millis(200));
        // Other workers see the claim expire `lease` after the renewal time it carries, which is
        // older than `last_write`. A worker that could not renew by three quarters of the lease
        // (the API failing or slow) stops, so its copy never overlaps a successor's.
        let fence = inner.settings.lease.mul_f64(0.75);
        let mut ticks = tokio::time::interval(Duration::from_millis(500).min(renew_every));
        // The claim was renewed when it was taken, before waiting for a registry permit.
        let claim_age = ib
            .status
            .as_ref()
            .and_then(|s| s.claim.as_ref())
            .map(|c| {
                let left = claim::remaining(c, Timestamp::now()).unwrap_or_default();
                inner.settings.lease.saturating_sub(left)
            })
            .unwrap_or_default();
        let mut last_write = Instant::now()
            .checked_sub(claim_age)
            .unwrap_or_else(Instant::now);
        let mut last_quarter = 0u64;
        let result = loop {
            tokio::select! {
                r = &mut copy => break r,
                _ = ticks.tick() => {
                    if last_write.elapsed() >= fence {
                        inner.metrics.claim(ClaimResult::Expired);
                        inner.metrics.in_flight.dec();
                        tracing::warn!(%name, "claim not renewed in time; copy stopped before another worker may take it over");
                        return ImageResult::Later(Duration::from_secs(1));
                    }
                    let p = rx.borrow().clone();
                    let quarter = p.bytes_done.saturating_mul(4).checked_div(p.bytes_total).unwrap_or(0);
                    let due = last_write.elapsed() >= renew_every
                        || (quarter > last_quarter && last_write.elapsed() >= Duration::from_secs(1));
                    if !due {
                        continue;
                    }
                    let Some(prev) = ib.status.clone() else { continue };
                    // The renewal time written is now, not when the write returns.
                    let attempt = Instant::now();
                    ib.status = Some(status::progressed(&prev, &p, Timestamp::now()));
                    match inner.cluster.replace_status(&ib).await {
                        Ok(updated) => {
                            ib = updated;
                            last_write = attempt;
                            last_quarter = quarter;
                        }
                        Err(e) if ApiFailure::is_conflict(&e) => match inner.cluster.get(&name).await {
                            Ok(fresh) if claim::held_by(&fresh, &me) => ib = fresh,
                            Ok(_) => {
                                inner.metrics.claim(ClaimResult::Lost);
                                inner.metrics.in_flight.dec();
                                tracing::warn!(%name, "claim taken over by another worker; copy cancelled");
                                return ImageResult::Later(inner.settings.lease);
                            }
                            Err(e) => tracing::debug!(%name, error = %e, "cannot re-read after a conflict"),
                        },
                        Err(e) => tracing::debug!(%name, error = %e, "progress not written"),
                    }
                }
            }
        };
        inner.metrics.in_flight.dec();
        let generation = ib.metadata.generation;
        let now = Timestamp::now();
        let prev = ib.status.clone().unwrap_or_default();
        match result {
            Ok(summary) => {
                let seconds = started.elapsed().as_secs_f64();
                if !summary.already_complete {
                    inner.metrics.duration.observe(seconds);
                }
                inner.metrics.bytes_copied.inc_by(summary.bytes_uploaded);
                inner
                    .metrics
                    .blobs_skipped
                    .inc_by(u64::from(summary.blobs_skipped));
                inner
                    .metrics
                    .blobs_mounted
                    .inc_by(u64::from(summary.blobs_mounted));
                inner.metrics.copy(CopyOutcome::Completed, None);
                let done = status::completed(&prev, &summary, now, inner.settings.ttl, generation);
                self.write_final(&mut ib, done).await;
                tracing::info!(%name, digest = %summary.digest, seconds, "backup completed");
                self.record(
                    &ib,
                    EventType::Normal,
                    "Completed",
                    &format!("backed up to {} as {}", target, summary.digest),
                )
                .await;
                ImageResult::Done(Some(Payload::ImageCompleted(ImageCompleted {
                    name,
                    source: source.to_string(),
                    target: target.to_string(),
                    digest: summary.digest,
                    platforms: summary.platforms,
                    bytes: summary.bytes_total,
                    duration_seconds: seconds,
                })))
            }
            Err(e) => self.record_failure(ib, prev, e, source, target).await,
        }
    }

    async fn record_failure(
        &self,
        mut ib: ImageBackup,
        prev: shared::crd::ImageBackupStatus,
        e: CopyError,
        source: &Reference,
        target: &Reference,
    ) -> ImageResult {
        let inner = &self.inner;
        let name = ib.metadata.name.clone().unwrap_or_default();
        let generation = ib.metadata.generation;
        let now = Timestamp::now();
        let class = e.class();
        let attempts = prev.attempts;
        let transient = class.disposition() == Disposition::Transient;
        if transient && attempts < inner.settings.max_attempts {
            inner
                .metrics
                .copy(CopyOutcome::Retried, Some((class, e.label())));
            let delay = shared::delivery::redelivery_delay(
                u64::from(attempts).saturating_mul(2),
                inner.settings.max_retry_delay,
            );
            tracing::info!(%name, error = %e, attempts, retry_in = ?delay, "copy failed transiently");
            self.write_final(&mut ib, status::retrying(&prev, &e, now, delay, generation))
                .await;
            return ImageResult::Later(delay);
        }
        inner
            .metrics
            .copy(CopyOutcome::Failed, Some((class, e.label())));
        tracing::warn!(%name, error = %e, %class, attempts, "backup failed");
        self.write_final(&mut ib, status::failed(&prev, &e, now, generation))
            .await;
        self.record(&ib, EventType::Warning, "Failed", &status::last_error(&e))
            .await;
        ImageResult::Done(Some(Payload::ImageFailed(ImageFailed {
            name,
            source: source.to_string(),
            target: target.to_string(),
            error_class: class,
            message: e.to_string().chars().take(1000).collect(),
            attempts,
        })))
    }

    /// Writes a final status; on a conflict re-reads and writes again (the outcome is the
    /// truth whoever holds the claim now: the copy verified or it did not).
    async fn write_final(&self, ib: &mut ImageBackup, status: shared::crd::ImageBackupStatus) {
        let name = ib.metadata.name.clone().unwrap_or_default();
        for _ in 0..3 {
            ib.status = Some(status.clone());
            match self.inner.cluster.replace_status(ib).await {
                Ok(updated) => {
                    *ib = updated;
                    return;
                }
                Err(e) if ApiFailure::is_conflict(&e) => {
                    match self.inner.cluster.get(&name).await {
                        Ok(fresh) => *ib = fresh,
                        Err(e) => tracing::warn!(%name, error = %e, "cannot re-read"),
                    }
                }
                Err(e) => {
                    tracing::warn!(%name, error = %e, "status not written");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        tracing::warn!(%name, "final status not written; the next event or resync heals it");
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
    type Error = HandlerError;

    async fn handle(&self, event: Payload, delivered: u64) -> Result<Outcome, HandlerError> {
        if delivered > 1 {
            self.inner.metrics.redeliveries.inc();
        }
        match event {
            Payload::WorkloadChanged(w) => self.backup_workload(w, delivered).await,
            // Not for us (the consumer filters these out; an HTTP sender may not).
            _ => Ok(Outcome::default()),
        }
    }
}
