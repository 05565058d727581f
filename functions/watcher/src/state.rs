//! The watcher loop's state and decisions, apart from the watches that feed it: a watch
//! event only marks its workload dirty ([`Watcher::on_signal`]); a flush evaluates the dirty
//! ones ([`crate::decide`]) and publishes what needs a backup, a batch at a time; a resync
//! forgets what was published. Its effects go through two ports — any
//! [`EventPublisher`] and any [`Events`] recorder — so it is tested with fakes and stores
//! filled by hand ([`crate::run`] is the adapter that drives it from reflectors).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::Resource;
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};
use shared::admin::Readiness;
use shared::cache::WorkloadCache;
use shared::events::{Payload, WorkloadKind, WorkloadRef};
use shared::kube_events::{Events, KubeEvents};
use shared::publish::{EventPublisher, Published, Publisher};
use shared::workload::{InvalidImage, Workload};
use tokio::time::Instant;

use crate::decide::{self, Decision, Policy, SkipReason};
use crate::metrics::{Metrics, Outcome};

/// How many publishes are in flight at once; also the batch after which a failure stops a flush.
const BATCH: usize = 16;
/// The longest pause between two flushes after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Everything the loop needs, built by `main`: its ports (`P` publishes, `E` records Events;
/// the real ones by default), policy, metrics and readiness.
#[derive(Clone)]
pub struct Context<P = Publisher, E = KubeEvents> {
    /// Where `workload.changed` events go.
    pub publisher: P,
    /// What is watched and where backups go.
    pub policy: Arc<Policy>,
    /// The watcher's metrics.
    pub metrics: Metrics,
    /// Turned true once every cache has synced.
    pub readiness: Readiness,
    /// Records Kubernetes Events on workloads (invalid images).
    pub events: E,
    /// How often every workload is re-evaluated and republished if still needed.
    pub resync: Duration,
}

/// A workload's identity in the loop.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Key {
    pub(crate) kind: KindKey,
    pub(crate) namespace: String,
    pub(crate) name: String,
}

/// `WorkloadKind` with an order, for the dirty set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum KindKey {
    Deployment,
    DaemonSet,
}

/// The caches whose initial list must arrive before the first evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Cache {
    Deployments,
    DaemonSets,
    Namespaces,
    ServiceAccounts,
}

/// What a watch event means to the loop.
#[derive(Debug)]
pub(crate) enum Signal {
    Touched(Key),
    Deleted(Key),
    /// Something in this namespace that decisions read (the namespace, a ServiceAccount).
    NamespaceChanged(String),
    Synced(Cache),
    Error(String),
    Nothing,
}

pub(crate) fn key_of<K: Resource>(kind: KindKey, obj: &K) -> Key {
    let meta = obj.meta();
    Key {
        kind,
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
    }
}

/// The loop's state: the caches and what it remembers between flushes.
pub(crate) struct Watcher<P, E> {
    pub(crate) ctx: Context<P, E>,
    workloads: WorkloadCache,
    namespaces: Store<Namespace>,
    accounts: Store<ServiceAccount>,
    /// Workloads to evaluate at the next flush.
    pub(crate) dirty: BTreeSet<Key>,
    /// The fingerprint last published per workload (to skip unchanged ones).
    published: HashMap<Key, String>,
    /// The invalid images last reported per workload (to report each change once).
    reported_invalid: HashMap<Key, Vec<InvalidImage>>,
    pub(crate) synced: BTreeSet<Cache>,
    pub(crate) backoff: Duration,
    pub(crate) next_flush: Instant,
}

impl<P: EventPublisher, E: Events> Watcher<P, E> {
    /// A loop over these caches (filled by the reflectors, or by hand in tests).
    pub(crate) fn new(
        ctx: Context<P, E>,
        workloads: WorkloadCache,
        namespaces: Store<Namespace>,
        accounts: Store<ServiceAccount>,
    ) -> Self {
        Self {
            ctx,
            workloads,
            namespaces,
            accounts,
            dirty: BTreeSet::new(),
            published: HashMap::new(),
            reported_invalid: HashMap::new(),
            synced: BTreeSet::new(),
            backoff: Duration::ZERO,
            next_flush: Instant::now(),
        }
    }

    /// Whether a flush has work and may run: every cache synced, something dirty.
    pub(crate) fn can_flush(&self) -> bool {
        self.synced.len() == 4 && !self.dirty.is_empty()
    }

    pub(crate) fn on_signal(&mut self, signal: Signal) {
        match signal {
            Signal::Touched(key) => {
                self.dirty.insert(key);
            }
            Signal::Deleted(key) => {
                self.dirty.remove(&key);
                self.published.remove(&key);
                self.reported_invalid.remove(&key);
            }
            Signal::NamespaceChanged(ns) => self.mark_all(Some(&ns)),
            Signal::Synced(cache) => {
                let first = self.synced.insert(cache);
                if first && self.synced.len() == 4 {
                    tracing::info!("caches synced: evaluating every workload");
                    self.ctx.readiness.set(true);
                    self.mark_all(None);
                }
            }
            Signal::Error(e) => tracing::warn!(error = %e, "watch failed; retrying with backoff"),
            Signal::Nothing => {}
        }
    }

    /// Forgets what was published and marks every workload dirty.
    pub(crate) fn resync(&mut self) {
        self.ctx.metrics.resyncs.inc();
        tracing::info!("resync: re-evaluating every workload");
        self.published.clear();
        self.mark_all(None);
    }

    fn mark_all(&mut self, namespace: Option<&str>) {
        let in_scope = |ns: &Option<String>| namespace.is_none_or(|n| ns.as_deref() == Some(n));
        for d in self.workloads.deployments.state() {
            if in_scope(&d.meta().namespace) {
                self.dirty.insert(key_of(KindKey::Deployment, d.as_ref()));
            }
        }
        for d in self.workloads.daemonsets.state() {
            if in_scope(&d.meta().namespace) {
                self.dirty.insert(key_of(KindKey::DaemonSet, d.as_ref()));
            }
        }
    }

    fn workload(&self, key: &Key) -> Option<Workload> {
        let kind = match key.kind {
            KindKey::Deployment => WorkloadKind::Deployment,
            KindKey::DaemonSet => WorkloadKind::DaemonSet,
        };
        self.workloads.get(&WorkloadRef {
            kind,
            namespace: key.namespace.clone(),
            name: key.name.clone(),
        })
    }

    /// Evaluates every dirty workload and publishes what is needed (see the module docs).
    pub(crate) async fn flush(&mut self) {
        let keys = std::mem::take(&mut self.dirty);
        let mut wanted = Vec::new();
        for key in keys {
            let Some(workload) = self.workload(&key) else {
                self.published.remove(&key);
                continue;
            };
            let namespace = self.namespaces.get(&ObjectRef::new(&key.namespace));
            let account = self
                .accounts
                .get(&ObjectRef::new(&workload.service_account_name()).within(&key.namespace));
            let evaluation = decide::evaluate(
                &workload,
                namespace.as_deref(),
                account.as_deref(),
                &self.ctx.policy,
            );
            self.report_invalid(&key, &workload, evaluation.invalid)
                .await;
            match evaluation.decision {
                Decision::Skip(reason) => {
                    self.ctx.metrics.skip(reason);
                    if reason != SkipReason::NotReady {
                        // Back in scope later, even with the same images, it is news again.
                        self.published.remove(&key);
                    }
                }
                Decision::Publish(event) => {
                    let fingerprint = event.fingerprint();
                    if self.published.get(&key) == Some(&fingerprint) {
                        self.ctx.metrics.skip(SkipReason::Unchanged);
                    } else {
                        wanted.push((key, fingerprint, Payload::WorkloadChanged(event)));
                    }
                }
            }
        }
        let mut failed = false;
        let mut queue = wanted.into_iter();
        while !failed {
            let batch: Vec<_> = queue.by_ref().take(BATCH).collect();
            if batch.is_empty() {
                break;
            }
            let publisher = &self.ctx.publisher;
            let results = futures::future::join_all(batch.into_iter().map(
                |(key, fingerprint, payload)| async move {
                    let result = publisher.publish(&payload).await;
                    (key, fingerprint, payload, result)
                },
            ))
            .await;
            for (key, fingerprint, payload, result) in results {
                let outcome = match result {
                    Ok(Published::Stored) => Outcome::Stored,
                    Ok(Published::Duplicate) => Outcome::Duplicate,
                    Err(e) => {
                        tracing::warn!(subject = %payload.subject(), error = %e, "publish failed; will retry");
                        Outcome::Failed
                    }
                };
                self.ctx.metrics.publish(outcome);
                if outcome == Outcome::Failed {
                    failed = true;
                    self.dirty.insert(key);
                } else {
                    tracing::info!(subject = %payload.subject(), id = %payload.id(), ?outcome, "published");
                    self.published.insert(key, fingerprint);
                }
            }
        }
        // What the failed flush did not try waits for the next one.
        for (key, _, _) in queue {
            self.dirty.insert(key);
        }
        self.backoff = if failed {
            (self.backoff * 2).clamp(Duration::from_millis(500), MAX_BACKOFF)
        } else {
            Duration::ZERO
        };
        self.next_flush = Instant::now() + self.backoff;
        self.ctx
            .metrics
            .cache_workloads
            .set(self.workloads.len() as i64);
    }

    /// Logs, counts and records a Kubernetes Event for invalid images, once per change.
    async fn report_invalid(&mut self, key: &Key, workload: &Workload, invalid: Vec<InvalidImage>) {
        if invalid.is_empty() {
            self.reported_invalid.remove(key);
            return;
        }
        if self.reported_invalid.get(key) == Some(&invalid) {
            return;
        }
        self.ctx.metrics.invalid_images.inc_by(invalid.len() as u64);
        let reference = match workload {
            Workload::Deployment(d) => d.object_ref(&()),
            Workload::DaemonSet(d) => d.object_ref(&()),
        };
        for bad in &invalid {
            tracing::warn!(
                namespace = %key.namespace,
                workload = %key.name,
                container = %bad.container,
                image = %bad.image,
                error = %bad.error,
                "invalid image reference: not backed up"
            );
            let note = format!(
                "container {:?}: image {:?} is not a valid reference ({}); it is not backed up",
                bad.container, bad.image, bad.error
            );
            self.ctx
                .events
                .record(&reference, EventType::Warning, "InvalidImage", &note)
                .await;
        }
        self.reported_invalid.insert(key.clone(), invalid);
    }
}
