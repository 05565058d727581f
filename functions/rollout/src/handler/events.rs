//! The events the rollout takes (`image.completed`, `workload.changed`) and how each is
//! handled: wait (bounded) for the caches to show what the event says, then evaluate the
//! workloads it concerns; a workload not Ready is looked at again shortly.

use std::time::Duration;

use futures::StreamExt as _;

use kube::runtime::reflector::ObjectRef;
use shared::events::{ImageCompleted, Payload, WorkloadChanged, WorkloadRef};
use shared::handler::{Delivered, Handler, Outcome};
use shared::reference::Reference;
use shared::workload::Workload;

use super::{Context, RolloutError};
use crate::decide::Decision;
use crate::ports::Ports;

/// How long a handler waits for its caches to show what an event says happened.
const CACHE_CATCH_UP: Duration = Duration::from_secs(5);
/// Deliveries after which an event the caches never catch up with is left to the resync
/// (a workload deleted since, an ImageBackup expired since).
const MAX_CATCH_UP_DELIVERIES: u64 = 5;

/// Workloads of one event evaluated at once.
const EVALUATIONS_AT_ONCE: usize = 16;

/// How long before a workload that was not Ready is looked at again.
const NOT_READY_RETRY: Duration = Duration::from_secs(10);
/// Deliveries after which a workload that stays not Ready is left to the resync.
const MAX_NOT_READY_DELIVERIES: u64 = 30;

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
        let images = w.images();
        self.external_sources(images.iter().map(|c| c.image.as_str()))
            .next()
            .is_some()
    }

    /// The external sources (normalized) among `images`, by the shared needs-backup rule.
    pub(super) fn external_sources<'s>(
        &'s self,
        images: impl Iterator<Item = &'s str> + 's,
    ) -> impl Iterator<Item = Reference> + 's {
        images.filter_map(|image| {
            shared::workload::needs_backup(image, &self.naming)
                .ok()
                .flatten()
        })
    }

    /// The cached workloads that run `source` (normalized), by reference.
    fn users_of(&self, source: &str) -> Vec<WorkloadRef> {
        self.workloads.refs(|pod| {
            self.external_sources(pod.images())
                .any(|s| s.to_string() == source)
        })
    }
}

/// The events the rollout takes.
#[derive(Debug, Clone)]
pub enum RolloutEvent {
    /// `image.completed`: every cached workload that runs that source is evaluated.
    Completed(ImageCompleted),
    /// `workload.changed`: that workload is evaluated.
    Changed(WorkloadChanged),
}

impl<P: Ports> Handler for Context<P> {
    type Event = RolloutEvent;
    type Error = RolloutError;

    fn accept(payload: Payload) -> Option<RolloutEvent> {
        match payload {
            Payload::ImageCompleted(c) => Some(RolloutEvent::Completed(c)),
            Payload::WorkloadChanged(c) => Some(RolloutEvent::Changed(c)),
            _ => None,
        }
    }

    async fn handle(
        &self,
        event: RolloutEvent,
        delivered: Delivered,
    ) -> Result<Outcome, RolloutError> {
        let mut outcome = Outcome::default();
        let caught_up = match &event {
            RolloutEvent::Completed(c) => {
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
            RolloutEvent::Changed(c) => {
                self.caught_up(|| {
                    self.workloads
                        .get(&c.workload)
                        .is_some_and(|w| w.uid() == c.uid && w.generation() >= c.generation)
                })
                .await
            }
        };
        if !caught_up && delivered.0 < MAX_CATCH_UP_DELIVERIES {
            tracing::debug!("caches behind the event; redelivery asked");
            outcome.retry_after = Some(Duration::from_secs(2));
            return Ok(outcome);
        }
        let targets: Vec<WorkloadRef> = match &event {
            RolloutEvent::Completed(c) => self.users_of(&c.source),
            RolloutEvent::Changed(c) => vec![c.workload.clone()],
        };
        // The hundreds of workloads of one image are evaluated a few at a time (each built
        // from the cache only then, as it is now): each waits on its registry checks and its
        // patch, not on the others (each patch is guarded alone).
        let mut evaluations = futures::stream::iter(targets)
            .filter_map(|r| std::future::ready(self.workloads.get(&r)))
            .map(|w| async move {
                // A workload not Ready now (mid-rollout, scaling) is looked at again shortly
                // rather than at the next resync.
                if self.decide(&w) == Decision::NotReady && delivered.0 < MAX_NOT_READY_DELIVERIES {
                    return Err(NOT_READY_RETRY);
                }
                Ok(self.evaluate(&w).await)
            })
            .buffer_unordered(EVALUATIONS_AT_ONCE);
        while let Some(evaluated) = evaluations.next().await {
            match evaluated {
                Ok(event) => outcome.events.extend(event),
                Err(retry) => outcome.retry_after = Some(retry),
            }
        }
        Ok(outcome)
    }
}
