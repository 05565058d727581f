//! The watcher's metrics, registered under `imagebackup_watcher_*`. Labels are fixed words
//! (outcomes, skip reasons), never names or references.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::decide::SkipReason;

/// How a publish ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
pub enum Outcome {
    /// Stored in the stream (or accepted by the sink).
    Stored,
    /// The stream already held this change (another replica or an earlier run published it).
    Duplicate,
    /// Not published; the workload stays queued and is retried.
    Failed,
}

/// `outcome` label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// How it ended.
    pub outcome: Outcome,
}

/// `reason` label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Why nothing was published.
    pub reason: SkipReason,
}

/// Every metric of the watcher. Cheap to clone (the metrics are shared handles).
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// `events_published_total{outcome}`.
    pub published: Family<OutcomeLabels, Counter>,
    /// `workloads_skipped_total{reason}`.
    pub skipped: Family<ReasonLabels, Counter>,
    /// `publish_errors_total`.
    pub publish_errors: Counter,
    /// `invalid_images_total`.
    pub invalid_images: Counter,
    /// `resyncs_total`.
    pub resyncs: Counter,
    /// `cache_workloads`: Deployments and DaemonSets in the watcher's cache.
    pub cache_workloads: Gauge,
}

impl Metrics {
    /// Registers every metric in `registry` (give it the `watcher` sub-registry).
    #[must_use]
    pub fn register(self, registry: &mut Registry) -> Self {
        registry.register(
            "events_published",
            "workload.changed events by outcome",
            self.published.clone(),
        );
        registry.register(
            "workloads_skipped",
            "workload evaluations that published nothing, by reason",
            self.skipped.clone(),
        );
        registry.register(
            "publish_errors",
            "publishes that failed after retries",
            self.publish_errors.clone(),
        );
        registry.register(
            "invalid_images",
            "image references that could not be parsed",
            self.invalid_images.clone(),
        );
        registry.register(
            "resyncs",
            "periodic re-evaluations of every workload",
            self.resyncs.clone(),
        );
        registry.register(
            "cache_workloads",
            "Deployments and DaemonSets in the cache",
            self.cache_workloads.clone(),
        );
        self
    }

    /// Counts a publish outcome.
    pub fn publish(&self, outcome: Outcome) {
        self.published
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        if outcome == Outcome::Failed {
            self.publish_errors.inc();
        }
    }

    /// Counts a skip.
    pub fn skip(&self, reason: SkipReason) {
        self.skipped.get_or_create(&ReasonLabels { reason }).inc();
    }
}
