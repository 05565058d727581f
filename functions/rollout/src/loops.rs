//! The rollout's background work, started by `main` and driven until it drains: the reflector
//! caches (Deployments and DaemonSets also report each change), the resync, the reaction to
//! each workload change, the pacer and the health gate. Each loop only calls into the
//! [`Context`]; the decisions are there.

use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use kube::runtime::reflector;
use shared::crd::ImageBackup;
use shared::events::{WorkloadKind, WorkloadRef};
use shared::publish::{EventPublisher as _, Publisher};
use shared::shutdown::Shutdown;
use shared::slim::Slim;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::handler::Context;

/// Where a cache sends the workloads it sees change (by reference: built from the cache when
/// taken, so a full queue holds names, not objects), and their kind.
type Changes = (mpsc::Sender<WorkloadRef>, WorkloadKind);

/// A reflector over every `K`, driven until the process ends. Objects applied after the
/// initial list go to `changes` as workloads (when `as_workload` makes one), so the rollout acts
/// on a change it sees itself: a change back to images seen before publishes a
/// `workload.changed` the stream drops as a duplicate, and must not wait for the resync.
fn cache<K>(
    client: &kube::Client,
    initial: shared::initial_list::InitialList,
    changes: Option<Changes>,
) -> reflector::Store<K>
where
    K: shared::cache::Cached,
{
    let (store, writer) = reflector::store::<K>();
    let stream = shared::cache::reflect(client, writer, initial);
    tokio::spawn(stream.for_each(move |event| {
        let changes = changes.clone();
        async move {
            match event {
                Err(e) => tracing::warn!(error = %e, "watch failed; retrying with backoff"),
                Ok(kube::runtime::watcher::Event::Apply(object)) => {
                    if let Some((tx, kind)) = changes {
                        let meta = object.meta();
                        // Full: the resync sees it anyway.
                        let _ = tx.try_send(WorkloadRef {
                            kind,
                            namespace: meta.namespace.clone().unwrap_or_default(),
                            name: meta.name.clone().unwrap_or_default(),
                        });
                    }
                }
                Ok(_) => {}
            }
        }
    }));
    store
}

/// The caches the rollout reads, and the workloads they see change.
pub struct Caches {
    /// Deployments.
    pub deployments: reflector::Store<Slim<Deployment>>,
    /// DaemonSets.
    pub daemonsets: reflector::Store<Slim<DaemonSet>>,
    /// ImageBackups.
    pub backups: reflector::Store<ImageBackup>,
    /// Workloads as they change after the initial list (bounded; a full queue is left to the
    /// resync).
    pub changed: mpsc::Receiver<WorkloadRef>,
}

impl Caches {
    /// Starts the three reflectors, each getting its initial state as `initial` says (they
    /// fill in the background; wait for their stores).
    pub fn start(client: &kube::Client, initial: shared::initial_list::InitialList) -> Self {
        let (changes, changed) = mpsc::channel::<WorkloadRef>(1024);
        let deployments = cache::<Slim<Deployment>>(
            client,
            initial,
            Some((changes.clone(), WorkloadKind::Deployment)),
        );
        let daemonsets =
            cache::<Slim<DaemonSet>>(client, initial, Some((changes, WorkloadKind::DaemonSet)));
        let backups = cache::<ImageBackup>(client, initial, None);
        Self {
            deployments,
            daemonsets,
            backups,
            changed,
        }
    }
}

/// The running loops; [`Loops::abort`] stops them.
pub struct Loops(Vec<JoinHandle<()>>);

impl Loops {
    /// Stops every loop.
    pub fn abort(self) {
        for handle in self.0 {
            handle.abort();
        }
    }
}

/// Starts the resync (every `resync_every`), the reaction to `changed`, the pacer and the
/// health gate, each publishing through `publisher` and ending when `shutdown` drains.
pub fn spawn(
    ctx: &Context,
    publisher: &Publisher,
    mut changed: mpsc::Receiver<WorkloadRef>,
    resync_every: Duration,
    shutdown: &Shutdown,
) -> Loops {
    // The resync: every workload against the ImageBackups, at start and then periodically.
    let resync = {
        let (ctx, publisher, mut stop) = (ctx.clone(), publisher.clone(), shutdown.clone());
        let every = resync_every;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = stop.wait() => break,
                    _ = tick.tick() => ctx.resync(&publisher).await,
                }
            }
        })
    };
    // Every change a workload goes through while it still runs external images (a new tag, a
    // rollout undo, becoming Ready) is evaluated at once.
    let on_change = {
        let (ctx, publisher, mut stop) = (ctx.clone(), publisher.clone(), shutdown.clone());
        tokio::spawn(async move {
            loop {
                let r = tokio::select! {
                    _ = stop.wait() => break,
                    r = changed.recv() => match r {
                        Some(r) => r,
                        None => break,
                    },
                };
                // As the cache shows it now (gone since: nothing to do).
                let Some(w) = ctx.workloads.get(&r) else {
                    continue;
                };
                // A workload in flight: Ready now (its slot frees at once), or not yet.
                if crate::decide::annotation(&w, crate::decide::ROLLOUT_ANNOTATION).is_some() {
                    ctx.gate_one(&w, &publisher).await;
                }
                if !ctx.runs_external_images(&w) {
                    continue;
                }
                if let Some(event) = ctx.evaluate(&w).await
                    && let Err(e) = publisher.publish(&event).await
                {
                    tracing::warn!(error = %e, "rolledout event not published");
                }
            }
        })
    };
    // The pacer: queued workloads take free slots, oldest completion first.
    let pacer = {
        let (ctx, publisher, mut stop) = (ctx.clone(), publisher.clone(), shutdown.clone());
        let wake = ctx.waker();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.wait() => break,
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                ctx.pace(&publisher).await;
            }
        })
    };
    // The health gate: in-flight workloads become Ready, or are reverted.
    let gate = {
        let (ctx, publisher, mut stop) = (ctx.clone(), publisher.clone(), shutdown.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.wait() => break,
                    _ = tick.tick() => ctx.gate(&publisher).await,
                }
            }
        })
    };
    Loops(vec![resync, on_change, pacer, gate])
}
