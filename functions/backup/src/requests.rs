//! Requests the cluster holds: a kube-runtime controller on ImageBackups that takes up every one
//! no event is carrying — applied by hand with kubectl (so Kubernetes RBAC, not NATS, decides
//! who may ask for a copy), created by a worker that died before claiming it, left Pending by a
//! transient failure whose redelivery was lost, or Copying under a claim that expired. It makes
//! the backup level-triggered: a message lost from the stream never loses a request.
//!
//! [`due`] decides from the object alone when to look at it; [`Context::take_up`] does the work
//! under the same claim as the event path, so the two never copy one image twice at once. Every
//! replica runs it; the claim decides which one copies. Completion and failure events are
//! published like the event path's (best effort: the rollout also reads ImageBackups directly).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::runtime::controller::Action;
use shared::crd::{ImageBackup, Phase};
use shared::publish::{EventPublisher as _, Publisher};
use shared::shutdown::Shutdown;

use crate::claim;
use crate::handler::{Context, ImageResult};

/// How long a new ImageBackup without status is left to the worker that created it (it claims
/// it at once) before the controller takes it up.
pub const GRACE: Duration = Duration::from_secs(10);

/// When to take an ImageBackup up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Now.
    Now,
    /// Look again after this long.
    After(Duration),
    /// Nothing to do until it changes (Completed, Failed).
    Never,
}

/// Decides when `ib` needs this controller, from the object alone.
pub fn due(ib: &ImageBackup, now: Timestamp, grace: Duration) -> Due {
    let millis_until = |t: Timestamp| {
        Duration::from_millis(
            t.as_millisecond()
                .saturating_sub(now.as_millisecond())
                .max(0)
                .unsigned_abs(),
        )
    };
    let Some(status) = ib.status.as_ref() else {
        // Nobody has looked at it: give its creator the grace period to claim it.
        let created = ib
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0)
            .unwrap_or(now);
        let left = millis_until(created.checked_add(grace).unwrap_or(now));
        return if left.is_zero() {
            Due::Now
        } else {
            Due::After(left)
        };
    };
    match status.phase.unwrap_or_default() {
        Phase::Completed | Phase::Failed => Due::Never,
        Phase::Copying | Phase::Pending => {
            if let Some(left) = status.claim.as_ref().and_then(|c| claim::remaining(c, now))
                && !left.is_zero()
            {
                // A live claim: its holder works on it; look again when it would run out.
                return Due::After(left + Duration::from_secs(1));
            }
            match status.retry_at.as_ref().map(|t| millis_until(t.0)) {
                Some(left) if !left.is_zero() => Due::After(left),
                _ => Due::Now,
            }
        }
    }
}

struct Ctx {
    handler: Context,
    publisher: Option<Publisher>,
}

/// Why a reconcile failed (never: the handler records its own failures).
#[derive(Debug, thiserror::Error)]
#[error("unreachable")]
pub struct RequestError;

async fn reconcile(ib: Arc<ImageBackup>, ctx: Arc<Ctx>) -> Result<Action, RequestError> {
    match due(&ib, Timestamp::now(), GRACE) {
        Due::Never => return Ok(Action::await_change()),
        Due::After(d) => return Ok(Action::requeue(d)),
        Due::Now => {}
    }
    let name = ib.metadata.name.clone().unwrap_or_default();
    tracing::info!(%name, "taking up an ImageBackup no event carries");
    match ctx.handler.take_up(&ib).await {
        ImageResult::Done(Some(event)) => {
            if let Some(publisher) = &ctx.publisher
                && let Err(e) = publisher.publish(&event).await
            {
                // The status is the record; the rollout reads it at its resync.
                tracing::warn!(%name, error = %e, "cannot publish the result");
            }
            Ok(Action::await_change())
        }
        ImageResult::Done(None) => Ok(Action::await_change()),
        ImageResult::Later(d) => Ok(Action::requeue(d)),
    }
}

fn error_policy(_: Arc<ImageBackup>, _: &RequestError, _: Arc<Ctx>) -> Action {
    Action::requeue(Duration::from_secs(10))
}

/// Runs until `shutdown` drains, its watch getting its initial state as `initial` says.
pub async fn run(
    client: kube::Client,
    initial: shared::initial_list::InitialList,
    handler: Context,
    publisher: Option<Publisher>,
    mut shutdown: Shutdown,
) {
    let api: Api<ImageBackup> = Api::all(client);
    let controller = shared::initial_list::controller(api, initial);
    // The event path answers "already backed up?" from this watch instead of a read per event.
    handler.share_store(controller.store());
    controller
        .graceful_shutdown_on(async move { shutdown.wait().await })
        .run(
            reconcile,
            error_policy,
            Arc::new(Ctx { handler, publisher }),
        )
        .for_each(|_| futures::future::ready(()))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use shared::crd::{Claim, ImageBackupStatus};

    fn ib(status: Option<ImageBackupStatus>, created: Timestamp) -> ImageBackup {
        let mut ib = ImageBackup::for_source(
            &shared::Reference::parse_normalized("nginx:1.14.0").unwrap(),
            &shared::Reference::parse_normalized("registry.local/backup/library_nginx:1.14.0")
                .unwrap(),
        );
        ib.metadata.creation_timestamp = Some(Time(created));
        ib.status = status;
        ib
    }

    fn at(now: Timestamp, seconds: i64) -> Timestamp {
        now.checked_add(k8s_openapi::jiff::SignedDuration::from_secs(seconds))
            .unwrap()
    }

    fn status(phase: Phase) -> ImageBackupStatus {
        ImageBackupStatus {
            phase: Some(phase),
            ..Default::default()
        }
    }

    #[test]
    fn a_new_object_is_left_to_its_creator_for_the_grace_period() {
        let now = Timestamp::now();
        assert_eq!(
            due(&ib(None, at(now, -3)), now, GRACE),
            Due::After(Duration::from_secs(7))
        );
        assert_eq!(due(&ib(None, at(now, -11)), now, GRACE), Due::Now);
    }

    #[test]
    fn finished_objects_are_left_alone() {
        let now = Timestamp::now();
        for phase in [Phase::Completed, Phase::Failed] {
            assert_eq!(due(&ib(Some(status(phase)), now), now, GRACE), Due::Never);
        }
    }

    #[test]
    fn a_live_claim_is_waited_out_and_an_expired_one_taken_over() {
        let now = Timestamp::now();
        let claimed = |renewed: i64| {
            let mut s = status(Phase::Copying);
            s.claim = Some(Claim {
                holder: "other".into(),
                renew_time: Time(at(now, renewed)),
                lease_seconds: 60,
            });
            ib(Some(s), at(now, -600))
        };
        assert_eq!(
            due(&claimed(-20), now, GRACE),
            Due::After(Duration::from_secs(41))
        );
        assert_eq!(due(&claimed(-61), now, GRACE), Due::Now);
    }

    #[test]
    fn a_transient_failure_is_taken_up_at_its_retry_time() {
        let now = Timestamp::now();
        let retrying = |retry: i64| {
            let mut s = status(Phase::Pending);
            s.retry_at = Some(Time(at(now, retry)));
            ib(Some(s), at(now, -600))
        };
        assert_eq!(
            due(&retrying(30), now, GRACE),
            Due::After(Duration::from_secs(30))
        );
        assert_eq!(due(&retrying(-1), now, GRACE), Due::Now);
        // Pending with no claim and no retry time (written by an older version): now.
        assert_eq!(
            due(&ib(Some(status(Phase::Pending)), at(now, -600)), now, GRACE),
            Due::Now
        );
    }
}
