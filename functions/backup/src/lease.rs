//! Holding a claim while work runs under it: [`hold`] drives a copy and, alongside, renews the
//! claim (with the copy's progress) in guarded status writes. It ends the work early in two
//! cases, so a copy never overlaps a successor's:
//! - the claim was taken over (a write conflicts and the re-read shows another holder):
//!   [`LeaseEnd::Lost`];
//! - it could not be renewed for three quarters of the lease (the API failing or slow), before
//!   any other worker may take it: [`LeaseEnd::Fenced`].
//!
//! The claim rules themselves are in [`crate::claim`]; the handler decides what follows.

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use shared::api_error::ApiFailure;
use shared::crd::ImageBackup;
use tokio::sync::watch;

use crate::claim;
use crate::copy::Progress;
use crate::ports::Cluster;
use crate::status;

/// Why work under a claim was stopped before it finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseEnd {
    /// Another worker holds the claim now.
    Lost,
    /// Not renewed in time: stopped before anyone else could take it.
    Fenced,
}

/// Runs `work` while holding the claim of `ib` (held by `me` for `lease`), renewing it and
/// writing `progress` along the way. Returns the work's result and the ImageBackup as last
/// written, or why it was stopped (the work is dropped then).
pub async fn hold<C: Cluster, T>(
    cluster: &C,
    mut ib: ImageBackup,
    me: &str,
    lease: Duration,
    progress: watch::Receiver<Progress>,
    work: impl Future<Output = T>,
) -> Result<(T, ImageBackup), LeaseEnd> {
    let name = ib.metadata.name.clone().unwrap_or_default();
    tokio::pin!(work);
    let renew_every = (lease / 3).max(Duration::from_millis(200));
    // Other workers see the claim expire `lease` after the renewal time it carries, which is
    // older than `last_write`. A worker that could not renew by three quarters of the lease
    // stops, so its work never overlaps a successor's.
    let fence = lease.mul_f64(0.75);
    let mut ticks = tokio::time::interval(Duration::from_millis(500).min(renew_every));
    // The claim was renewed when it was taken, before waiting for a registry permit.
    let claim_age = ib
        .status
        .as_ref()
        .and_then(|s| s.claim.as_ref())
        .map(|c| {
            let left = claim::remaining(c, Timestamp::now()).unwrap_or_default();
            lease.saturating_sub(left)
        })
        .unwrap_or_default();
    let mut last_write = Instant::now()
        .checked_sub(claim_age)
        .unwrap_or_else(Instant::now);
    let mut last_quarter = 0u64;
    loop {
        tokio::select! {
            r = &mut work => return Ok((r, ib)),
            _ = ticks.tick() => {
                if last_write.elapsed() >= fence {
                    tracing::warn!(%name, "claim not renewed in time; copy stopped before another worker may take it over");
                    return Err(LeaseEnd::Fenced);
                }
                let p = progress.borrow().clone();
                let quarter = p.bytes_done.saturating_mul(4).checked_div(p.bytes_total).unwrap_or(0);
                let due = last_write.elapsed() >= renew_every
                    || (quarter > last_quarter && last_write.elapsed() >= Duration::from_secs(1));
                if !due {
                    continue;
                }
                let Some(prev) = ib.status.clone() else { continue };
                // The renewal time written is now, not when the write returns.
                let attempt = Instant::now();
                ib.status = Some(status::progressed(&prev, &p, Timestamp::now()));
                match cluster.replace_status(&ib).await {
                    Ok(updated) => {
                        ib = updated;
                        last_write = attempt;
                        last_quarter = quarter;
                    }
                    Err(e) if ApiFailure::is_conflict(&e) => match cluster.get(&name).await {
                        Ok(fresh) if claim::held_by(&fresh, me) => ib = fresh,
                        Ok(_) => {
                            tracing::warn!(%name, "claim taken over by another worker; copy cancelled");
                            return Err(LeaseEnd::Lost);
                        }
                        Err(e) => tracing::debug!(%name, error = %e, "cannot re-read after a conflict"),
                    },
                    Err(e) => tracing::debug!(%name, error = %e, "progress not written"),
                }
            }
        }
    }
}
