//! The ImageBackup status at each step of a backup, as pure functions of the previous status:
//! what `kubectl get imagebackups` shows and what the rollout reads. Conditions follow
//! metav1.Condition (type, status, reason, message, lastTransitionTime, observedGeneration);
//! `lastError` is `<Class>: <message>`, never a credential (copy errors never carry one).

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use shared::crd::{Claim, ImageBackupStatus, Phase, progress_summary};

use crate::copy::{CopyError, CopySummary, Progress};

/// The longest `lastError` and condition message stored.
const MAX_MESSAGE: usize = 1000;

fn cut(s: &str) -> String {
    s.chars().take(MAX_MESSAGE).collect()
}

/// Sets condition `type_`, keeping its transition time when its status did not change.
fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    now: Timestamp,
    generation: Option<i64>,
) {
    let status = if status { "True" } else { "False" }.to_string();
    let previous = conditions.iter().find(|c| c.type_ == type_);
    let last_transition_time = match previous {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Time(now),
    };
    conditions.retain(|c| c.type_ != type_);
    conditions.push(Condition {
        type_: type_.to_string(),
        status,
        reason: reason.to_string(),
        message: cut(message),
        last_transition_time,
        observed_generation: generation,
    });
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
}

/// A copy attempt starts under `claim`: Copying, one more attempt, progress reset.
pub fn copying(
    prev: Option<&ImageBackupStatus>,
    claim: Claim,
    now: Timestamp,
    generation: Option<i64>,
) -> ImageBackupStatus {
    let prev = prev.cloned().unwrap_or_default();
    let mut s = ImageBackupStatus {
        phase: Some(Phase::Copying),
        attempts: prev.attempts.saturating_add(1),
        last_error: prev.last_error,
        claim: Some(claim),
        started_at: Some(Time(now)),
        conditions: prev.conditions,
        observed_generation: generation,
        ..Default::default()
    };
    s.progress = Some(progress_summary(&s));
    set_condition(
        &mut s.conditions,
        "Ready",
        false,
        "Copying",
        "copy in progress",
        now,
        generation,
    );
    s
}

/// Progress of the copy, and the claim renewed at `now`.
pub fn progressed(prev: &ImageBackupStatus, p: &Progress, now: Timestamp) -> ImageBackupStatus {
    let mut s = prev.clone();
    s.bytes_total = p.bytes_total;
    s.bytes_copied = p.bytes_done.min(p.bytes_total);
    s.blobs_total = p.blobs_total;
    s.blobs_copied = p.blobs_copied.saturating_add(p.blobs_mounted);
    s.blobs_skipped = p.blobs_skipped;
    s.progress = Some(progress_summary(&s));
    if let Some(c) = s.claim.as_mut() {
        c.renew_time = Time(now);
    }
    s
}

/// The copy succeeded: Completed with the digest, Ready, the claim released, expiry set.
pub fn completed(
    prev: &ImageBackupStatus,
    summary: &CopySummary,
    now: Timestamp,
    ttl: Option<Duration>,
    generation: Option<i64>,
) -> ImageBackupStatus {
    let mut s = prev.clone();
    s.phase = Some(Phase::Completed);
    s.digest = Some(summary.digest.clone());
    s.platforms = summary.platforms.clone();
    if !summary.already_complete {
        s.bytes_total = summary.bytes_total;
        s.blobs_total = summary.blobs_total;
        s.blobs_copied = summary.blobs_copied.saturating_add(summary.blobs_mounted);
        s.blobs_skipped = summary.blobs_skipped;
    }
    s.referrers = summary
        .referrers_copied
        .saturating_add(summary.referrers_present);
    s.bytes_copied = s.bytes_total;
    s.progress = Some(if s.blobs_total == 0 {
        "complete".to_string()
    } else {
        progress_summary(&s)
    });
    s.claim = None;
    s.last_error = None;
    s.completed_at = Some(Time(now));
    s.expires_at = ttl
        .and_then(|t| i64::try_from(t.as_millis()).ok())
        .and_then(|ms| Timestamp::from_millisecond(now.as_millisecond().checked_add(ms)?).ok())
        .map(Time);
    s.observed_generation = generation;
    let message = format!("backed up as {}", summary.digest);
    set_condition(
        &mut s.conditions,
        "Ready",
        true,
        "Completed",
        &message,
        now,
        generation,
    );
    set_condition(
        &mut s.conditions,
        "Failed",
        false,
        "Completed",
        "",
        now,
        generation,
    );
    s
}

/// `<Class>: <message>`.
pub fn last_error(e: &CopyError) -> String {
    cut(&format!("{}: {e}", e.class()))
}

/// An attempt ended with `e`: `phase`, the claim released, `lastError` recorded.
fn with_error(
    prev: &ImageBackupStatus,
    phase: Phase,
    e: &CopyError,
    generation: Option<i64>,
) -> ImageBackupStatus {
    let mut s = prev.clone();
    s.phase = Some(phase);
    s.claim = None;
    s.last_error = Some(last_error(e));
    s.observed_generation = generation;
    s
}

/// The attempt failed for good (a permanent class, or attempts exhausted): Failed.
pub fn failed(
    prev: &ImageBackupStatus,
    e: &CopyError,
    now: Timestamp,
    generation: Option<i64>,
) -> ImageBackupStatus {
    let mut s = with_error(prev, Phase::Failed, e, generation);
    let reason = e.class().as_str();
    set_condition(
        &mut s.conditions,
        "Ready",
        false,
        reason,
        &e.to_string(),
        now,
        generation,
    );
    set_condition(
        &mut s.conditions,
        "Failed",
        true,
        reason,
        &e.to_string(),
        now,
        generation,
    );
    s
}

/// The attempt failed transiently and will be retried after `delay`: Pending, claim released,
/// error kept, `retryAt` set (the requests controller takes it up then if no message does).
pub fn retrying(
    prev: &ImageBackupStatus,
    e: &CopyError,
    now: Timestamp,
    delay: Duration,
    generation: Option<i64>,
) -> ImageBackupStatus {
    let mut s = with_error(prev, Phase::Pending, e, generation);
    s.retry_at = Some(Time(
        now.checked_add(delay.min(Duration::from_secs(86_400)))
            .unwrap_or(now),
    ));
    set_condition(
        &mut s.conditions,
        "Ready",
        false,
        "Retrying",
        &e.to_string(),
        now,
        generation,
    );
    s
}

/// A request the backup will not carry out (an ImageBackup applied by hand that asks for a
/// target outside the naming, or is not named after its source): Failed, with `message` as
/// `lastError` (`Invalid: …`) and a Failed condition of reason `Refused`. Nothing is copied.
pub fn refused(
    prev: Option<&ImageBackupStatus>,
    message: &str,
    now: Timestamp,
    generation: Option<i64>,
) -> ImageBackupStatus {
    let mut s = prev.cloned().unwrap_or_default();
    s.phase = Some(Phase::Failed);
    s.claim = None;
    s.retry_at = None;
    s.last_error = Some(cut(&format!("Invalid: {message}")));
    s.observed_generation = generation;
    set_condition(
        &mut s.conditions,
        "Failed",
        true,
        "Refused",
        message,
        now,
        generation,
    );
    set_condition(
        &mut s.conditions,
        "Ready",
        false,
        "Refused",
        message,
        now,
        generation,
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary() -> CopySummary {
        CopySummary {
            source: "s".into(),
            target: "t".into(),
            digest: "sha256:abc".into(),
            media_type: "m".into(),
            platforms: vec!["linux/amd64".into()],
            manifests: 2,
            blobs_total: 3,
            blobs_copied: 2,
            blobs_skipped: 0,
            blobs_mounted: 1,
            bytes_total: 300,
            bytes_uploaded: 200,
            already_complete: false,
            referrers_copied: 2,
            referrers_present: 1,
            referrers_skipped: Vec::new(),
            seconds: 1.0,
        }
    }

    #[test]
    fn a_backup_moves_through_its_phases() {
        let now = Timestamp::now();
        let claim = crate::claim::claim("me", Duration::from_secs(60), now);
        let s = copying(None, claim, now, Some(1));
        assert_eq!((s.phase, s.attempts), (Some(Phase::Copying), 1));
        let p = Progress {
            blobs_total: 3,
            blobs_copied: 1,
            blobs_mounted: 0,
            blobs_skipped: 1,
            bytes_total: 300,
            bytes_done: 150,
        };
        let s = progressed(&s, &p, now);
        assert_eq!(s.progress.as_deref(), Some("2/3 blobs, 50%"));
        let done = completed(
            &s,
            &summary(),
            now,
            Some(Duration::from_secs(3600)),
            Some(1),
        );
        assert_eq!(done.phase, Some(Phase::Completed));
        assert_eq!(done.digest.as_deref(), Some("sha256:abc"));
        assert!(done.claim.is_none());
        assert_eq!(done.blobs_copied, 3);
        assert_eq!(done.referrers, 3, "copied and present");
        assert_eq!(done.progress.as_deref(), Some("3/3 blobs, 100%"));
        assert_eq!(
            done.expires_at.unwrap().0.as_millisecond() - now.as_millisecond(),
            3_600_000
        );
        let ready = done.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", "Completed")
        );
    }

    #[test]
    fn failures_record_class_and_message() {
        let now = Timestamp::now();
        let e = CopyError::NotFound {
            what: "manifest x:1".into(),
            registry: "r".into(),
        };
        let s = failed(&ImageBackupStatus::default(), &e, now, None);
        assert_eq!(s.phase, Some(Phase::Failed));
        assert_eq!(
            s.last_error.as_deref(),
            Some("NotFound: manifest x:1 not found at r")
        );
        let f = s.conditions.iter().find(|c| c.type_ == "Failed").unwrap();
        assert_eq!((f.status.as_str(), f.reason.as_str()), ("True", "NotFound"));
        let r = retrying(&s, &e, now, Duration::from_secs(8), None);
        assert_eq!(r.phase, Some(Phase::Pending));
        assert_eq!(
            r.retry_at.as_ref().map(|t| t.0),
            Some(now.checked_add(Duration::from_secs(8)).unwrap())
        );
        assert_eq!(
            copying(Some(&r), claim_for_test(now), now, None).retry_at,
            None,
            "a new attempt clears it"
        );
    }

    fn claim_for_test(now: Timestamp) -> Claim {
        Claim {
            holder: "w".into(),
            renew_time: Time(now),
            lease_seconds: 60,
        }
    }

    #[test]
    fn a_refused_request_is_failed_with_an_invalid_error() {
        let now = Timestamp::now();
        let s = refused(None, "spec.target is elsewhere", now, Some(1));
        assert_eq!(s.phase, Some(Phase::Failed));
        assert_eq!(
            s.last_error.as_deref(),
            Some("Invalid: spec.target is elsewhere")
        );
        let f = s.conditions.iter().find(|c| c.type_ == "Failed").unwrap();
        assert_eq!((f.status.as_str(), f.reason.as_str()), ("True", "Refused"));
    }
}
