//! Expiry: a small kube-runtime controller that deletes Completed ImageBackups at their
//! `expiresAt` (the copy stays in the backup registry; only the record goes). Failed ones stay
//! until a later attempt succeeds or a user deletes them. Every replica runs it; a second
//! delete of the same object is a harmless 404. It also keeps the `imagebackups{phase}` gauge.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{DeleteParams, Preconditions};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use shared::api_error::ApiFailure;
use shared::crd::{ImageBackup, Phase};
use shared::shutdown::Shutdown;

use crate::metrics::Metrics;

struct Ctx {
    api: Api<ImageBackup>,
}

/// Why a reconcile failed (then retried after a pause).
#[derive(Debug, thiserror::Error)]
#[error("cannot delete expired ImageBackup: {0}")]
pub struct ExpiryError(#[source] kube::Error);

async fn reconcile(ib: Arc<ImageBackup>, ctx: Arc<Ctx>) -> Result<Action, ExpiryError> {
    let Some(expires) = ib.status.as_ref().and_then(|s| s.expires_at.as_ref()) else {
        return Ok(Action::await_change());
    };
    if ib.phase() != Phase::Completed {
        return Ok(Action::await_change());
    }
    let left = expires
        .0
        .as_millisecond()
        .saturating_sub(k8s_openapi::jiff::Timestamp::now().as_millisecond());
    if left > 0 {
        return Ok(Action::requeue(Duration::from_millis(left.unsigned_abs())));
    }
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: ib.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match ctx.api.delete(&ib.name_any(), &params).await {
        Ok(_) => {
            tracing::info!(name = %ib.name_any(), "expired ImageBackup deleted (the copy stays)")
        }
        Err(e) if ApiFailure::is_not_found(&e) || ApiFailure::is_conflict(&e) => {}
        Err(e) => return Err(ExpiryError(e)),
    }
    Ok(Action::await_change())
}

fn error_policy(_: Arc<ImageBackup>, e: &ExpiryError, _: Arc<Ctx>) -> Action {
    tracing::warn!(error = %e, "expiry failed; retrying");
    Action::requeue(Duration::from_secs(10))
}

/// Runs until `shutdown` drains, its watch getting its initial state as `initial` says.
pub async fn run(
    client: kube::Client,
    metrics: Metrics,
    initial: shared::initial_list::InitialList,
    mut shutdown: Shutdown,
) {
    let api: Api<ImageBackup> = Api::all(client);
    let controller = shared::initial_list::controller(api.clone(), initial);
    let store = controller.store();
    let mut stop = shutdown.clone();
    let gauges = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = stop.wait() => break,
                _ = tick.tick() => {
                    let mut counts = [(Phase::Pending, 0), (Phase::Copying, 0), (Phase::Completed, 0), (Phase::Failed, 0)];
                    for ib in store.state() {
                        let phase = ib.phase();
                        if let Some(c) = counts.iter_mut().find(|(p, _)| *p == phase) {
                            c.1 += 1;
                        }
                    }
                    metrics.set_phases(&counts);
                }
            }
        }
    });
    controller
        .graceful_shutdown_on(async move { shutdown.wait().await })
        .run(reconcile, error_policy, Arc::new(Ctx { api }))
        .for_each(|_| futures::future::ready(()))
        .await;
    gauges.abort();
}
