//! The rollout's metrics, under `imagebackup_rollout_*`. Labels are fixed words.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// How a patch attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
pub enum PatchOutcome {
    /// The workload now runs its backups.
    Patched,
    /// `--dry-run`: what would have been patched.
    DryRun,
    /// The guard refused: the workload changed in between.
    Conflict,
    /// A backup no longer resolves to its digest at the registry: not patched.
    Unverified,
    /// The API refused or failed.
    Failed,
}

/// `outcome` label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct PatchLabels {
    /// How it ended.
    pub outcome: PatchOutcome,
}

/// Every metric of the rollout. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// `patches_total{outcome}`.
    pub patches: Family<PatchLabels, Counter>,
    /// `workloads_waiting`: workloads with images not yet backed up (at the last resync).
    pub waiting: Gauge,
    /// `workloads_blocked`: workloads held by a Failed backup (at the last resync).
    pub blocked: Gauge,
    /// `guard_conflicts_total`: patches refused because the workload changed in between.
    pub guard_conflicts: Counter,
    /// `resyncs_total`.
    pub resyncs: Counter,
}

impl Metrics {
    /// Registers every metric in `registry` (give it the `rollout` sub-registry).
    #[must_use]
    pub fn register(self, registry: &mut Registry) -> Self {
        registry.register(
            "patches",
            "workload patches by outcome",
            self.patches.clone(),
        );
        registry.register(
            "workloads_waiting",
            "workloads waiting for backups",
            self.waiting.clone(),
        );
        registry.register(
            "workloads_blocked",
            "workloads blocked by a Failed backup",
            self.blocked.clone(),
        );
        registry.register(
            "guard_conflicts",
            "patches refused because the workload changed",
            self.guard_conflicts.clone(),
        );
        registry.register(
            "resyncs",
            "periodic re-evaluations of every workload",
            self.resyncs.clone(),
        );
        self
    }

    /// Counts a patch outcome.
    pub fn patch(&self, outcome: PatchOutcome) {
        self.patches.get_or_create(&PatchLabels { outcome }).inc();
        if outcome == PatchOutcome::Conflict {
            self.guard_conflicts.inc();
        }
    }
}
