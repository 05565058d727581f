//! The claim: the lease in an ImageBackup's status that stops two workers copying one image at
//! once. A claim is live while its `renewTime` is younger than its `leaseSeconds`; it is taken
//! and renewed only with status writes guarded by `resourceVersion`, so of two workers racing
//! for it exactly one write succeeds (the other gets 409 and backs off).
//!
//! Pure rules only; the writes are in [`crate::handler`].

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use shared::crd::{Claim, ImageBackup};

/// Whether `ib` carries a claim, not held by `me`, that is still live at `now`; with the time
/// it has left.
pub fn held_by_other(ib: &ImageBackup, me: &str, now: Timestamp) -> Option<Duration> {
    let claim = ib.status.as_ref()?.claim.as_ref()?;
    if claim.holder == me {
        return None;
    }
    remaining(claim, now)
}

/// Time left on a claim at `now`, `None` once expired.
pub fn remaining(claim: &Claim, now: Timestamp) -> Option<Duration> {
    let expires = claim
        .renew_time
        .0
        .as_millisecond()
        .saturating_add(i64::from(claim.lease_seconds).saturating_mul(1000));
    let left = expires.saturating_sub(now.as_millisecond());
    (left > 0).then(|| Duration::from_millis(left.unsigned_abs()))
}

/// A fresh claim for `me`.
pub fn claim(me: &str, lease: Duration, now: Timestamp) -> Claim {
    Claim {
        holder: me.to_string(),
        renew_time: Time(now),
        lease_seconds: u32::try_from(lease.as_secs()).unwrap_or(u32::MAX).max(1),
    }
}

/// Whether `ib`'s claim is `me`'s.
pub fn held_by(ib: &ImageBackup, me: &str) -> bool {
    ib.status
        .as_ref()
        .and_then(|s| s.claim.as_ref())
        .is_some_and(|c| c.holder == me)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::crd::ImageBackupStatus;

    fn ib_with(claim: Option<Claim>) -> ImageBackup {
        let src = shared::Reference::parse_normalized("nginx:1").unwrap();
        let mut ib = ImageBackup::for_source(&src, &src);
        ib.status = Some(ImageBackupStatus {
            claim,
            ..Default::default()
        });
        ib
    }

    #[test]
    fn a_claim_is_live_for_its_lease_and_only_for_others() {
        let t0 = Timestamp::now();
        let later = |s: i64| Timestamp::from_millisecond(t0.as_millisecond() + s * 1000).unwrap();
        let ib = ib_with(Some(claim("a", Duration::from_secs(60), t0)));
        assert!(held_by(&ib, "a"));
        assert_eq!(held_by_other(&ib, "a", t0), None, "mine");
        let left = held_by_other(&ib, "b", later(20)).unwrap();
        assert_eq!(left, Duration::from_secs(40));
        assert_eq!(held_by_other(&ib, "b", later(60)), None);
        assert_eq!(held_by_other(&ib_with(None), "b", t0), None);
    }
}
