//! The health gate: every workload the rollout patched carries an in-flight marker
//! ([`ROLLOUT_ANNOTATION`]) until it is Ready on its backups. Each pass over the marked
//! workloads (every replica runs it; the patches are guarded, so one wins):
//!
//! - Ready at its new generation: the marker goes (the pacing slot frees).
//! - Someone changed the images since (`kubectl rollout undo`, a new tag): the marker goes; the
//!   user's change wins.
//! - A Pod of it waits on a backup image with `ErrImagePull`, `ImagePullBackOff` or
//!   `InvalidImageName`, or (unless its owner holds the rollout) it is not Ready within the
//!   timeout: the original images are put back ([`decide::revert_patch`]), a `RolloutReverted`
//!   Event and `workload.reverted` say why, and the same rollout is not tried again.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use kube::runtime::events::EventType;
use shared::api_error::ApiFailure;
use shared::events::{Payload, WorkloadReverted};
use shared::publish::EventPublisher;
use shared::workload::Workload;

use crate::decide::{self, InFlight, ROLLOUT_ANNOTATION, annotation};
use crate::handler::Context;
use crate::metrics::RevertReason;
use crate::ports::Ports;

/// The Pod waiting reasons that mean the backup cannot be pulled.
const PULL_FAILURES: [&str; 3] = ["ErrImagePull", "ImagePullBackOff", "InvalidImageName"];
/// How soon after the patch Pods are first looked at, and how often after.
const POD_CHECK_EVERY: Duration = Duration::from_secs(3);
/// The bound on one Pod list.
const POD_LIST_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest Pod message carried into an Event or event.
const MESSAGE_CAP: usize = 300;

/// How long ago an RFC 3339 time was (`None` when unreadable).
pub fn age(time: &str) -> Option<Duration> {
    let t = chrono::DateTime::parse_from_rfc3339(time).ok()?;
    (chrono::Utc::now() - t.with_timezone(&chrono::Utc))
        .to_std()
        .ok()
        .or(Some(Duration::ZERO))
}

/// Whether the workload's controller has acted on its current spec (until then no Pod of the
/// new template exists to look at).
fn observed(w: &Workload) -> bool {
    let (generation, observed) = match w {
        Workload::Deployment(d) => (
            d.metadata.generation,
            d.status.as_ref().and_then(|s| s.observed_generation),
        ),
        Workload::DaemonSet(d) => (
            d.metadata.generation,
            d.status.as_ref().and_then(|s| s.observed_generation),
        ),
    };
    observed.unwrap_or(0) >= generation.unwrap_or(0)
}

/// `matchLabels` of a workload's selector as a label selector string.
fn selector(w: &Workload) -> Option<String> {
    let labels = match w {
        Workload::Deployment(d) => d.spec.as_ref()?.selector.match_labels.clone(),
        Workload::DaemonSet(d) => d.spec.as_ref()?.selector.match_labels.clone(),
    }?;
    let s: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    (!s.is_empty()).then(|| s.join(","))
}

impl<P: Ports> Context<P> {
    /// One pass of the gate over the in-flight workloads; publishes `workload.reverted`.
    pub async fn gate(&self, publisher: &impl EventPublisher) {
        let mut in_flight = 0;
        for w in self.workloads.annotated(ROLLOUT_ANNOTATION) {
            in_flight += i64::from(self.gate_one(&w, publisher).await);
        }
        self.metrics.in_flight.set(in_flight);
    }

    /// The gate for one workload (also run on every change the cache sees, so a slot frees as
    /// soon as the workload is Ready); `true` while it is in flight and counted.
    pub async fn gate_one(&self, w: &Workload, publisher: &impl EventPublisher) -> bool {
        let Some(raw) = annotation(w, ROLLOUT_ANNOTATION).map(str::to_string) else {
            return false;
        };
        let Ok(marker) = serde_json::from_str::<InFlight>(&raw) else {
            self.end_flight(w, &raw, "unreadable marker").await;
            return false;
        };
        if !decide::still_ours(w, &marker) {
            self.end_flight(w, &raw, "its images changed since").await;
            return false;
        }
        if w.is_ready() {
            self.end_flight(w, &raw, "Ready on its backups").await;
            return false;
        }
        let age = age(&marker.started_at).unwrap_or(Duration::MAX);
        if age >= POD_CHECK_EVERY
            && observed(w)
            && self.pod_check_due(w)
            && let Some((reason, message)) = self.pull_failure(w, &marker).await
        {
            self.revert(w, &raw, &marker, &reason, &message, publisher)
                .await;
            return false;
        }
        let timeout = self.timeout_for(w);
        if marker.held.is_none() && age > timeout {
            let message = format!("not Ready within {}s of the rollout", timeout.as_secs());
            self.revert(w, &raw, &marker, "Timeout", &message, publisher)
                .await;
            return false;
        }
        marker.held.is_none()
    }

    /// `--rollout-timeout-seconds`, else the Deployment's `progressDeadlineSeconds` (600 when
    /// unset and for a DaemonSet).
    fn timeout_for(&self, w: &Workload) -> Duration {
        if let Some(t) = self.timeout {
            return t;
        }
        let seconds = match w {
            Workload::Deployment(d) => d
                .spec
                .as_ref()
                .and_then(|s| s.progress_deadline_seconds)
                .unwrap_or(600),
            Workload::DaemonSet(_) => 600,
        };
        Duration::from_secs(u64::try_from(seconds.max(1)).unwrap_or(600))
    }

    fn pod_check_due(&self, w: &Workload) -> bool {
        let key = Self::key(w);
        let Ok(mut checked) = self.pod_checks.lock() else {
            return true;
        };
        match checked.get(&key) {
            Some(at) if at.elapsed() < POD_CHECK_EVERY => false,
            _ => {
                checked.insert(key, Instant::now());
                true
            }
        }
    }

    /// A Pod of `w` waiting on one of the backup images with a pull failure: (reason, message).
    async fn pull_failure(&self, w: &Workload, marker: &InFlight) -> Option<(String, String)> {
        let selector = selector(w)?;
        let r = w.reference();
        let list = self.ports.pods(&r.namespace, &selector);
        let pods = match tokio::time::timeout(POD_LIST_TIMEOUT, list).await {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                tracing::debug!(namespace = %r.namespace, workload = %r.name, error = %e, "cannot list Pods for the health gate");
                return None;
            }
            Err(e) => {
                tracing::debug!(namespace = %r.namespace, workload = %r.name, error = %e, "cannot list Pods for the health gate");
                return None;
            }
        };
        let backups: BTreeSet<&str> = marker.images.values().map(String::as_str).collect();
        for pod in pods {
            let Some(status) = pod.status else { continue };
            let statuses = status
                .init_container_statuses
                .into_iter()
                .flatten()
                .chain(status.container_statuses.into_iter().flatten());
            for cs in statuses {
                let Some(waiting) = cs.state.and_then(|s| s.waiting) else {
                    continue;
                };
                let reason = waiting.reason.unwrap_or_default();
                if PULL_FAILURES.contains(&reason.as_str()) && backups.contains(cs.image.as_str()) {
                    let message: String = waiting
                        .message
                        .unwrap_or_default()
                        .chars()
                        .take(MESSAGE_CAP)
                        .collect();
                    let pod = pod.metadata.name.unwrap_or_default();
                    return Some((reason, format!("Pod {pod}: {message}")));
                }
            }
        }
        None
    }

    /// Removes the in-flight marker (guarded: only if it is still `raw`).
    async fn end_flight(&self, w: &Workload, raw: &str, why: &str) {
        let r = w.reference();
        match self.json_patch(w, decide::end_flight_patch(raw)).await {
            Ok(_) => {
                tracing::info!(namespace = %r.namespace, workload = %r.name, why, "rollout finished");
                self.free_slot(w).await;
            }
            Err(e)
                if ApiFailure::is_invalid(&e)
                    || ApiFailure::is_conflict(&e)
                    || ApiFailure::is_not_found(&e) => {}
            Err(e) => {
                tracing::warn!(namespace = %r.namespace, workload = %r.name, error = %e, "cannot end the rollout's flight; next pass retries")
            }
        }
    }

    /// Puts the original images back and says why.
    async fn revert(
        &self,
        w: &Workload,
        raw: &str,
        marker: &InFlight,
        reason: &str,
        message: &str,
        publisher: &impl EventPublisher,
    ) {
        let r = w.reference();
        let Some((patch, changes)) = decide::revert_patch(w, raw, marker, reason) else {
            self.end_flight(w, raw, "nothing left to revert").await;
            return;
        };
        match self.json_patch(w, patch).await {
            Ok(generation) => {
                self.metrics.revert(RevertReason::of(reason));
                let note = format!("reverted to the original images: {reason}: {message}");
                tracing::warn!(namespace = %r.namespace, workload = %r.name, reason, message, "rollout reverted");
                self.record(w, EventType::Warning, "RolloutReverted", &note)
                    .await;
                self.free_slot(w).await;
                let event = Payload::WorkloadReverted(WorkloadReverted {
                    workload: r.clone(),
                    uid: w.uid(),
                    generation,
                    reason: reason.to_string(),
                    message: message.to_string(),
                    changes,
                });
                if let Err(e) = publisher.publish(&event).await {
                    tracing::warn!(error = %e, "reverted event not published");
                }
            }
            Err(e)
                if ApiFailure::is_invalid(&e)
                    || ApiFailure::is_conflict(&e)
                    || ApiFailure::is_not_found(&e) =>
            {
                tracing::info!(namespace = %r.namespace, workload = %r.name, "changed in between; not reverted by this replica");
            }
            Err(e) => {
                tracing::warn!(namespace = %r.namespace, workload = %r.name, error = %e, "revert failed; next pass retries")
            }
        }
    }

    /// Gives the pacing slot of a workload whose flight ended back at once (a replica that dies
    /// first leaves it to be pruned) and wakes the pacer.
    async fn free_slot(&self, w: &Workload) {
        if let Err(e) = self.ports.release_slot(&Self::key(w)).await {
            tracing::debug!(error = %e, "slot not given back now; it is pruned later");
        }
        self.wake.notify_one();
    }
}
