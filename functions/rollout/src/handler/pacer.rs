//! The pacer: with `--max-concurrent-rollouts`, workloads ready to patch wait in a queue and
//! are patched oldest completion first while slots ([`crate::pacing`]) last. The queue lives in
//! memory; what a replica that died had queued is found again by [`Context::pace`]'s refill.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use shared::events::WorkloadRef;
use shared::publish::EventPublisher;
use shared::workload::Workload;

use super::Context;
use super::patch::Attempt;
use crate::decide::{self, Decision, InFlight};
use crate::ports::Ports;

/// Workloads waiting for a pacing slot: key → (latest completion of their backups, workload).
pub(super) type Queue = BTreeMap<String, (Option<Time>, WorkloadRef)>;

/// How often a pacer with an empty queue looks for workloads ready to patch.
const REFILL_EVERY: Duration = Duration::from_secs(5);

impl<P: Ports> Context<P> {
    /// Whether the cache shows the workload of `key` in flight and counted (its marker set,
    /// its owner not holding it).
    pub(super) fn counted_in_flight(&self, key: &str) -> bool {
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
    pub(super) fn completed_at(&self, w: &Workload) -> Option<Time> {
        self.backups_of(w)
            .values()
            .filter_map(|ib| ib.status.as_ref()?.completed_at.clone())
            .max_by_key(|t| t.0)
    }

    pub(super) fn enqueue(&self, w: &Workload) {
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
    pub(super) fn refill(&self) {
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
            .refs(|pod| self.external_sources(pod.images()).next().is_some());
        for w in candidates.iter().filter_map(|r| self.workloads.get(r)) {
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
}
