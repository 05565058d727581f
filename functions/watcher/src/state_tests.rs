//! The watcher loop's decisions over stores filled by hand, a publisher that can be told to
//! fail, and an in-memory Event recorder: no API server or NATS.

use shared::slim::Slim;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Namespace, ObjectReference, ServiceAccount};
use kube::runtime::events::EventType;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use shared::NamingPolicy;
use shared::admin::Readiness;
use shared::cache::WorkloadCache;
use shared::events::Payload;
use shared::kube_events::Events;
use shared::publish::{EventPublisher, PublishError, Published};

use crate::decide::{Policy, SkipReason};
use crate::metrics::{Metrics, Outcome, OutcomeLabels, ReasonLabels};
use crate::state::{Cache, Context, Key, KindKey, Signal, Watcher};

/// Keeps what it publishes; fails the next `fail` publishes.
#[derive(Clone, Default)]
struct Sink {
    events: Arc<Mutex<Vec<Payload>>>,
    fail: Arc<AtomicUsize>,
    attempts: Arc<AtomicUsize>,
}

impl EventPublisher for Sink {
    async fn publish(&self, payload: &Payload) -> Result<Published, PublishError> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        let failing = self
            .fail
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            return Err(PublishError::SinkUnavailable {
                sink: "fake".into(),
                attempts: 1,
                cause: "down".into(),
            });
        }
        self.events.lock().unwrap().push(payload.clone());
        Ok(Published::Stored)
    }
}

/// Keeps the Events it records: (reason, note).
#[derive(Clone, Default)]
struct Recorded(Arc<Mutex<Vec<(String, String)>>>);

impl Events for Recorded {
    async fn record(&self, _: &ObjectReference, _: EventType, reason: &str, note: &str) {
        self.0.lock().unwrap().push((reason.into(), note.into()));
    }
}

struct World {
    deployments: Writer<Slim<Deployment>>,
    namespaces: Writer<Namespace>,
    sink: Sink,
    events: Recorded,
    metrics: Metrics,
    readiness: Readiness,
    watcher: Watcher<Sink, Recorded>,
}

fn world() -> World {
    let (deployment_store, deployments) = reflector::store::<Slim<Deployment>>();
    let (daemonsets, _) = reflector::store::<Slim<DaemonSet>>();
    let (namespace_store, namespaces) = reflector::store::<Namespace>();
    let (accounts, _) = reflector::store::<ServiceAccount>();
    let sink = Sink::default();
    let events = Recorded::default();
    let metrics = Metrics::default();
    let readiness = Readiness::default();
    let ctx = Context {
        publisher: sink.clone(),
        policy: Arc::new(Policy {
            naming: NamingPolicy::flat("registry.local/backup".parse().unwrap()),
            excluded_namespaces: BTreeSet::from(["kube-system".to_string()]),
            namespaces: BTreeSet::new(),
        }),
        metrics: metrics.clone(),
        readiness: readiness.clone(),
        events: events.clone(),
        resync: Duration::from_secs(3600),
    };
    let watcher = Watcher::new(
        ctx,
        WorkloadCache {
            deployments: deployment_store,
            daemonsets,
        },
        namespace_store,
        accounts,
    );
    World {
        deployments,
        namespaces,
        sink,
        events,
        metrics,
        readiness,
        watcher,
    }
}

/// A Deployment `<ns>/<name>` running `image`, Ready or not.
fn deployment(namespace: &str, name: &str, image: &str, ready: bool) -> Deployment {
    let n = i32::from(ready);
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{name}"), "generation": 1},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {"spec": {"containers": [{"name": "c", "image": image}]}},
        },
        "status": {
            "observedGeneration": 1, "replicas": 1, "updatedReplicas": 1,
            "readyReplicas": n, "availableReplicas": n,
            "conditions": [{"type": "Available", "status": if ready {"True"} else {"False"}}],
        },
    }))
    .unwrap()
}

fn key(namespace: &str, name: &str) -> Key {
    Key {
        kind: KindKey::Deployment,
        namespace: namespace.into(),
        name: name.into(),
    }
}

impl World {
    /// A Deployment in the cache, and its watch event.
    fn apply(&mut self, namespace: &str, name: &str, image: &str, ready: bool) {
        let d = deployment(namespace, name, image, ready);
        self.deployments
            .apply_watcher_event(&watcher::Event::Apply(Slim::from(d)));
        self.watcher
            .on_signal(Signal::Touched(key(namespace, name)));
    }

    fn sync_all(&mut self) {
        for cache in [
            Cache::Deployments,
            Cache::DaemonSets,
            Cache::Namespaces,
            Cache::ServiceAccounts,
        ] {
            self.watcher.on_signal(Signal::Synced(cache));
        }
    }

    fn published(&self) -> Vec<String> {
        self.sink
            .events
            .lock()
            .unwrap()
            .iter()
            .map(|p| match p {
                Payload::WorkloadChanged(c) => {
                    format!("{}/{}", c.workload.namespace, c.workload.name)
                }
                other => format!("{other:?}"),
            })
            .collect()
    }

    fn skipped(&self, reason: SkipReason) -> u64 {
        self.metrics
            .skipped
            .get_or_create(&ReasonLabels { reason })
            .get()
    }

    fn outcome(&self, outcome: Outcome) -> u64 {
        self.metrics
            .published
            .get_or_create(&OutcomeLabels { outcome })
            .get()
    }
}

#[tokio::test]
async fn nothing_is_evaluated_until_every_cache_has_synced_then_everything_is() {
    let mut w = world();
    w.apply("shop", "web", "nginx:1.14.0", true);
    assert!(!w.watcher.can_flush(), "caches not synced");
    assert!(!w.readiness.get());
    for cache in [Cache::Deployments, Cache::DaemonSets, Cache::Namespaces] {
        w.watcher.on_signal(Signal::Synced(cache));
    }
    assert!(!w.watcher.can_flush() && !w.readiness.get());
    w.watcher.on_signal(Signal::Synced(Cache::ServiceAccounts));
    assert!(w.readiness.get());
    assert!(w.watcher.can_flush());
    w.watcher.flush().await;
    assert_eq!(w.published(), ["shop/web"]);
    assert_eq!(w.outcome(Outcome::Stored), 1);
    match &w.sink.events.lock().unwrap()[0] {
        Payload::WorkloadChanged(c) => {
            assert_eq!(c.images.len(), 1);
            assert_eq!(c.images[0].source, "docker.io/library/nginx:1.14.0");
            assert_eq!(
                c.images[0].target,
                "registry.local/backup/library_nginx:1.14.0"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn an_unchanged_workload_is_skipped_a_changed_one_published_again() {
    let mut w = world();
    w.sync_all();
    w.apply("shop", "web", "nginx:1.14.0", true);
    w.watcher.flush().await;
    // A status-only change: same images, nothing new.
    w.apply("shop", "web", "nginx:1.14.0", true);
    w.watcher.flush().await;
    assert_eq!(w.published().len(), 1);
    assert_eq!(w.skipped(SkipReason::Unchanged), 1);
    w.apply("shop", "web", "nginx:1.15.0", true);
    w.watcher.flush().await;
    assert_eq!(w.published(), ["shop/web", "shop/web"]);
}

#[tokio::test]
async fn not_ready_excluded_and_already_backed_up_workloads_publish_nothing() {
    let mut w = world();
    w.sync_all();
    w.apply("shop", "broken", "nginx:1.14.0", false);
    w.apply("kube-system", "dns", "coredns/coredns:1.11.1", true);
    w.apply(
        "shop",
        "done",
        "registry.local/backup/library_nginx:1.14.0",
        true,
    );
    let mut opted_out = deployment("shop", "private", "redis:7", true);
    opted_out.metadata.annotations =
        Some([("k8slab.io/image-backup".to_string(), "disabled".to_string())].into());
    w.deployments
        .apply_watcher_event(&watcher::Event::Apply(Slim::from(opted_out)));
    w.watcher.on_signal(Signal::Touched(key("shop", "private")));
    w.watcher.flush().await;
    assert!(w.published().is_empty());
    assert_eq!(w.skipped(SkipReason::NotReady), 1);
    assert_eq!(w.skipped(SkipReason::ExcludedNamespace), 1);
    assert_eq!(w.skipped(SkipReason::NothingToBackUp), 1);
    assert_eq!(w.skipped(SkipReason::OptedOut), 1);
    // Ready later: published then.
    w.apply("shop", "broken", "nginx:1.14.0", true);
    w.watcher.flush().await;
    assert_eq!(w.published(), ["shop/broken"]);
}

#[tokio::test]
async fn a_failed_publish_keeps_the_workload_and_stops_the_flush_with_a_growing_pause() {
    let mut w = world();
    w.sync_all();
    for i in 0..40 {
        w.apply(
            "shop",
            &format!("web-{i:02}"),
            &format!("nginx:1.{i}"),
            true,
        );
    }
    w.sink.fail.store(1, Ordering::SeqCst);
    w.watcher.flush().await;
    // One batch tried (16), one failed; the other 24 were not tried.
    assert_eq!(w.sink.attempts.load(Ordering::SeqCst), 16);
    assert_eq!(w.published().len(), 15);
    assert_eq!(w.outcome(Outcome::Failed), 1);
    assert_eq!(w.watcher.dirty.len(), 25, "the failed one and the untried");
    assert_eq!(w.watcher.backoff, Duration::from_millis(500));
    w.sink.fail.store(16, Ordering::SeqCst);
    w.watcher.flush().await;
    assert_eq!(w.watcher.backoff, Duration::from_secs(1), "it grows");
    assert_eq!(w.published().len(), 15);
    w.watcher.flush().await;
    assert_eq!(w.watcher.backoff, Duration::ZERO, "success resets it");
    assert_eq!(w.published().len(), 40);
    assert!(w.watcher.dirty.is_empty());
    let distinct: BTreeSet<String> = w.published().into_iter().collect();
    assert_eq!(distinct.len(), 40, "each workload published once");
}

#[tokio::test]
async fn the_resync_republishes_what_was_published_before() {
    let mut w = world();
    w.sync_all();
    w.apply("shop", "web", "nginx:1.14.0", true);
    w.watcher.flush().await;
    w.watcher.resync();
    assert!(w.watcher.can_flush());
    w.watcher.flush().await;
    let events = w.sink.events.lock().unwrap().clone();
    assert_eq!(events.len(), 2);
    assert_eq!(
        events[0].id(),
        events[1].id(),
        "the same change, the same id"
    );
    assert_eq!(w.metrics.resyncs.get(), 1);
}

#[tokio::test]
async fn a_deleted_workload_is_forgotten_and_a_namespace_change_re_evaluates_its_workloads() {
    let mut w = world();
    w.sync_all();
    w.apply("shop", "web", "nginx:1.14.0", true);
    w.apply("shop", "api", "redis:7", true);
    w.watcher.flush().await;
    assert_eq!(w.published().len(), 2);
    // The namespace opts out: both are evaluated again and skipped.
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "shop", "annotations": {"k8slab.io/image-backup": "disabled"}},
    }))
    .unwrap();
    w.namespaces.apply_watcher_event(&watcher::Event::Apply(ns));
    w.watcher.on_signal(Signal::NamespaceChanged("shop".into()));
    assert_eq!(w.watcher.dirty.len(), 2);
    w.watcher.flush().await;
    assert_eq!(w.skipped(SkipReason::OptedOut), 2);
    w.watcher.on_signal(Signal::Deleted(key("shop", "web")));
    assert!(!w.watcher.dirty.contains(&key("shop", "web")));
}

#[tokio::test]
async fn an_invalid_image_is_recorded_once_per_change() {
    let mut w = world();
    w.sync_all();
    w.apply("shop", "web", "Not A Reference", true);
    w.watcher.flush().await;
    w.apply("shop", "web", "Not A Reference", true);
    w.watcher.flush().await;
    let recorded = w.events.0.lock().unwrap().clone();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].0, "InvalidImage");
    assert!(recorded[0].1.contains("Not A Reference"));
    assert_eq!(w.metrics.invalid_images.get(), 1);
    w.apply("shop", "web", "Still Not Valid", true);
    w.watcher.flush().await;
    assert_eq!(w.events.0.lock().unwrap().len(), 2);
    assert!(w.published().is_empty());
}
