//! The resync: every cached workload evaluated again, what it produces published, the waiting
//! and blocked gauges set, and the pull Secret's copies brought up to date. A lost
//! `image.completed` delays a rollout until the next resync, never loses it.

use shared::publish::EventPublisher;

use super::Context;
use crate::decide::{self, Decision};
use crate::ports::Ports;

impl<P: Ports> Context<P> {
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
