//! What the backup will not do, recorded where a person looks: an ImageBackup applied by
//! hand that asks for a target the naming does not give (a Failed status once, an Event, a
//! counter), and a Kubernetes API call refused for good (a counter, an `ApiRefused` Event).
//! Nothing is retried until the cluster changes.

use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::jiff::Timestamp;
use kube::Resource as _;
use kube::runtime::events::EventType;
use shared::crd::{ImageBackup, Phase};

use super::{Context, ImageResult};
use crate::ports::{Cluster, Registry};
use crate::status;

impl<C: Cluster, R: Registry> Context<C, R> {
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
    pub(super) async fn refuse(
        &self,
        ib: &ImageBackup,
        reason: crate::admit::RejectReason,
        message: &str,
    ) {
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

    /// Records an API call refused for good: the metric, a warning, and a Warning Event
    /// `ApiRefused` on `about` naming what was being done and the API server's answer.
    pub(super) async fn api_refused(
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
}
