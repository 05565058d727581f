//! The backup function's metrics, under `imagebackup_backup_*`. Labels are fixed words.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use shared::crd::Phase;

use crate::admit::RejectReason;

/// How one image's handling ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
pub enum CopyOutcome {
    /// Copied and verified.
    Completed,
    /// Already completed and still at the target: nothing done.
    AlreadyCompleted,
    /// Failed for good.
    Failed,
    /// Failed transiently; will be retried.
    Retried,
}

/// `outcome`, `class` and `reason` labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CopyLabels {
    /// How it ended.
    pub outcome: CopyOutcome,
    /// The error class (empty for successes).
    pub class: Option<shared::ErrorClass>,
    /// The cause within the class ([`crate::copy::CopyError::label`], e.g. `stalled` within
    /// `Unavailable`; empty for successes).
    pub reason: Option<&'static str>,
}

/// What happened to a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
pub enum ClaimResult {
    /// Taken.
    Taken,
    /// Another worker held a live claim.
    Busy,
    /// Another worker won the race (409) or took over during the copy.
    Lost,
    /// This worker could not renew its claim before the lease could run out (the API did not
    /// answer), so it stopped copying rather than risk a second worker copying too.
    Expired,
}

/// `result` label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ClaimLabels {
    /// What happened.
    pub result: ClaimResult,
}

/// `reason` label of refused events and requests.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RejectLabels {
    /// Why.
    pub reason: RejectReason,
}

/// `code` label: the HTTP status of an API refusal (0: an answer that could not be decoded).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CodeLabels {
    /// The status.
    pub code: u16,
}

/// `phase` label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct PhaseLabels {
    /// The phase.
    pub phase: Phase,
}

/// Every metric of the backup function. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// `copies_total{outcome,class,reason}`.
    pub copies: Family<CopyLabels, Counter>,
    /// `copy_duration_seconds`.
    pub duration: Histogram,
    /// `bytes_copied_total`: bytes uploaded to the backup registry.
    pub bytes_copied: Counter,
    /// `blobs_skipped_total`.
    pub blobs_skipped: Counter,
    /// `blobs_mounted_total`.
    pub blobs_mounted: Counter,
    /// `claims_total{result}`.
    pub claims: Family<ClaimLabels, Counter>,
    /// `redeliveries_total`: events handled more than once.
    pub redeliveries: Counter,
    /// `imagebackups{phase}`.
    pub phases: Family<PhaseLabels, Gauge>,
    /// `copies_in_flight`.
    pub in_flight: Gauge,
    /// `events_rejected_total{reason}`: images of `workload.changed` events refused because
    /// the cluster does not back them ([`crate::admit`]).
    pub rejected: Family<RejectLabels, Counter>,
    /// `requests_refused_total{reason}`: ImageBackups applied by hand that ask for a target
    /// outside the naming (or under another image's name).
    pub refused: Family<RejectLabels, Counter>,
    /// `api_refused_total{code}`: Kubernetes API calls refused for a reason retrying does not
    /// change (403, 404, 422, …): recorded, not retried; a person must act (RBAC, the CRD).
    pub api_refused: Family<CodeLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            copies: Family::default(),
            duration: Histogram::new([
                0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0,
            ]),
            bytes_copied: Counter::default(),
            blobs_skipped: Counter::default(),
            blobs_mounted: Counter::default(),
            claims: Family::default(),
            redeliveries: Counter::default(),
            phases: Family::default(),
            in_flight: Gauge::default(),
            rejected: Family::default(),
            refused: Family::default(),
            api_refused: Family::default(),
        }
    }
}

impl Metrics {
    /// Registers every metric in `registry` (give it the `backup` sub-registry).
    #[must_use]
    pub fn register(self, registry: &mut Registry) -> Self {
        registry.register(
            "copies",
            "image backups handled, by outcome and error class",
            self.copies.clone(),
        );
        registry.register(
            "copy_duration_seconds",
            "duration of copies that moved data",
            self.duration.clone(),
        );
        registry.register(
            "bytes_copied",
            "bytes uploaded to the backup registry",
            self.bytes_copied.clone(),
        );
        registry.register(
            "blobs_skipped",
            "blobs already in the backup registry",
            self.blobs_skipped.clone(),
        );
        registry.register(
            "blobs_mounted",
            "blobs mounted from another backup repository",
            self.blobs_mounted.clone(),
        );
        registry.register("claims", "claim attempts, by result", self.claims.clone());
        registry.register(
            "redeliveries",
            "events handled more than once",
            self.redeliveries.clone(),
        );
        registry.register("imagebackups", "ImageBackups by phase", self.phases.clone());
        registry.register(
            "copies_in_flight",
            "copies running in this process",
            self.in_flight.clone(),
        );
        registry.register(
            "events_rejected",
            "images of workload.changed events refused because the cluster does not back them",
            self.rejected.clone(),
        );
        registry.register(
            "requests_refused",
            "ImageBackups applied by hand that ask for a target outside the naming",
            self.refused.clone(),
        );
        registry.register(
            "api_refused",
            "Kubernetes API calls refused for a reason retrying does not change, by status",
            self.api_refused.clone(),
        );
        self
    }

    /// Counts one refused image of an event.
    pub fn reject(&self, reason: RejectReason) {
        self.rejected.get_or_create(&RejectLabels { reason }).inc();
    }

    /// Counts one refused hand-made request.
    pub fn refuse(&self, reason: RejectReason) {
        self.refused.get_or_create(&RejectLabels { reason }).inc();
    }

    /// Counts one image's outcome; `failure` is the error's class and cause for the failed and
    /// retried ones.
    pub fn copy(&self, outcome: CopyOutcome, failure: Option<(shared::ErrorClass, &'static str)>) {
        let (class, reason) = failure.unzip();
        self.copies
            .get_or_create(&CopyLabels {
                outcome,
                class,
                reason,
            })
            .inc();
    }

    /// Counts a claim attempt.
    pub fn claim(&self, result: ClaimResult) {
        self.claims.get_or_create(&ClaimLabels { result }).inc();
    }

    /// Sets the phase gauges from a count per phase.
    pub fn set_phases(&self, counts: &[(Phase, i64)]) {
        for (phase, n) in counts {
            self.phases
                .get_or_create(&PhaseLabels { phase: *phase })
                .set(*n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_the_words_of_the_status_and_the_cause() {
        let metrics = Metrics::default();
        let mut registry = Registry::default();
        let metrics = metrics.register(registry.sub_registry_with_prefix("backup"));
        metrics.copy(CopyOutcome::Completed, None);
        metrics.copy(
            CopyOutcome::Failed,
            Some((shared::ErrorClass::Unavailable, "stalled")),
        );
        metrics.set_phases(&[(Phase::Completed, 3)]);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "backup_copies_total{outcome=\"Completed\",class=\"\",reason=\"\"} 1",
            "backup_copies_total{outcome=\"Failed\",class=\"Unavailable\",reason=\"stalled\"} 1",
            "backup_imagebackups{phase=\"Completed\"} 3",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }
}
