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
    /// The backup registry refuses anonymous pulls and no pull secret is configured.
    NotPullable,
    /// A Secret named like `--backup-pull-secret` exists in the namespace and is not ours.
    PullSecretConflict,
}

/// Why a rollout was reverted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
pub enum RevertReason {
    /// A Pod could not pull a backup.
    ErrImagePull,
    /// A Pod backs off pulling a backup.
    ImagePullBackOff,
    /// A backup reference the kubelet cannot parse.
    InvalidImageName,
    /// Not Ready within the timeout.
    Timeout,
}

impl RevertReason {
    /// The label for a reason string (the gate's reasons; anything else is `Timeout`).
    pub fn of(reason: &str) -> Self {
        match reason {
            "ErrImagePull" => Self::ErrImagePull,
            "ImagePullBackOff" => Self::ImagePullBackOff,
            "InvalidImageName" => Self::InvalidImageName,
            _ => Self::Timeout,
        }
    }
}

/// `reason` label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RevertLabels {
    /// Why.
    pub reason: RevertReason,
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
    /// `reverts_total{reason}`: rollouts put back to their original images.
    pub reverts: Family<RevertLabels, Counter>,
    /// `rollouts_in_flight`: patched workloads not yet Ready (counted for pacing).
    pub in_flight: Gauge,
    /// `rollouts_queued`: workloads ready to patch, waiting for a pacing slot.
    pub queued: Gauge,
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
        registry.register(
            "reverts",
            "rollouts reverted to the original images, by reason",
            self.reverts.clone(),
        );
        registry.register(
            "rollouts_in_flight",
            "patched workloads not yet Ready on their backups",
            self.in_flight.clone(),
        );
        registry.register(
            "rollouts_queued",
            "workloads waiting for a pacing slot",
            self.queued.clone(),
        );
        self
    }

    /// Counts a revert.
    pub fn revert(&self, reason: RevertReason) {
        self.reverts.get_or_create(&RevertLabels { reason }).inc();
    }

    /// Counts a patch outcome.
    pub fn patch(&self, outcome: PatchOutcome) {
        self.patches.get_or_create(&PatchLabels { outcome }).inc();
        if outcome == PatchOutcome::Conflict {
            self.guard_conflicts.inc();
        }
    }
}
