//! The end of one image's backup: the copy run under its claim ([`crate::lease::hold`]), then
//! recorded — Completed with the digest, a retry after a transient failure, or Failed — in a
//! status write that survives conflicts, with the metrics, an Event and the event to publish.

use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::EventType;
use shared::api_error::ApiFailure;
use shared::crd::{ImageBackup, SecretRef};
use shared::error::Disposition;
use shared::events::{ImageCompleted, ImageFailed, Payload};
use shared::reference::Reference;
use tokio::sync::watch;

use super::{Context, ImageResult};
use crate::copy::{CopyError, Progress};
use crate::lease::LeaseEnd;
use crate::metrics::{ClaimResult, CopyOutcome};
use crate::ports::{Cluster, Registry};
use crate::status;

impl<C: Cluster, R: Registry> Context<C, R> {
    /// Copies under the claim held in `ib`, renewing it and writing progress; records the end.
    /// The caller holds the copy slots.
    pub(super) async fn copy_and_record(
        &self,
        ib: ImageBackup,
        source: &Reference,
        target: &Reference,
        secrets: &[SecretRef],
    ) -> ImageResult {
        let inner = &self.inner;
        let name = ib.metadata.name.clone().unwrap_or_default();
        let extra = self.pull_credentials(secrets).await;
        let (tx, rx) = watch::channel(Progress::default());
        inner.metrics.in_flight.inc();
        let started = Instant::now();
        let copy = inner.registry.copy(source, target, extra, tx);
        let held = crate::lease::hold(
            &inner.cluster,
            ib,
            &inner.settings.holder,
            inner.settings.lease,
            rx,
            copy,
        )
        .await;
        inner.metrics.in_flight.dec();
        let (result, mut ib) = match held {
            Ok(done) => done,
            Err(LeaseEnd::Lost) => {
                inner.metrics.claim(ClaimResult::Lost);
                return ImageResult::Later(inner.settings.lease);
            }
            Err(LeaseEnd::Fenced) => {
                inner.metrics.claim(ClaimResult::Expired);
                return ImageResult::Later(Duration::from_secs(1));
            }
        };
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
}
