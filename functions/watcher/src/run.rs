//! `watcher run`: cluster state in, `workload.changed` events out.
//!
//! Four reflectors (Deployments, DaemonSets, Namespaces, ServiceAccounts; the initial lists and
//! watches are the only API reads) feed one loop. A watch event only marks its workload dirty;
//! once every cache has synced (then `/readyz` turns true), dirty workloads are evaluated
//! ([`crate::decide`]) and what needs a backup is published, a batch at a time.
//!
//! Level-triggered: what was published is remembered per workload only to skip unchanged ones.
//! A failed publish keeps the workload dirty and the loop retries with a growing pause (a
//! failed batch stops the flush, so an unreachable NATS costs one batch per pause, not one
//! timeout per workload); a periodic resync forgets what was published and re-evaluates every
//! workload, so a message JetStream acknowledged and then lost cannot leave one behind. A
//! re-list after a 410 or a cut watch marks everything dirty again; unchanged workloads are then
//! skipped, and whatever is published twice carries the same `Nats-Msg-Id`.

use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::Resource;
use kube::runtime::reflector;
use kube::runtime::watcher;
use shared::cache::WorkloadCache;
use shared::initial_list::InitialList;
use shared::kube_events::Events;
use shared::publish::EventPublisher;
use shared::shutdown::Shutdown;
use tokio::time::Instant;

pub use crate::state::Context;
use crate::state::{Cache, KindKey, Signal, Watcher, key_of};

/// A reflector over every `K` (its initial state got as `initial` says), mapped to signals by
/// `to_signal`.
fn watch<K, F>(
    client: &kube::Client,
    writer: reflector::store::Writer<K>,
    initial: InitialList,
    to_signal: F,
) -> impl Stream<Item = Signal> + Send + 'static
where
    K: shared::cache::Cached,
    F: Fn(watcher::Event<K>) -> Signal + Send + 'static,
{
    shared::cache::reflect(client, writer, initial).map(move |event| match event {
        Ok(event) => to_signal(event),
        Err(e) => Signal::Error(e.to_string()),
    })
}

fn workload_signal<K: Resource>(kind: KindKey, cache: Cache, e: watcher::Event<K>) -> Signal {
    match e {
        watcher::Event::Apply(o) | watcher::Event::InitApply(o) => {
            Signal::Touched(key_of(kind, &o))
        }
        watcher::Event::Delete(o) => Signal::Deleted(key_of(kind, &o)),
        watcher::Event::InitDone => Signal::Synced(cache),
        watcher::Event::Init => Signal::Nothing,
    }
}

fn namespaced_signal<K: Resource>(
    cache: Cache,
    e: watcher::Event<K>,
    ns: fn(&K) -> String,
) -> Signal {
    match e {
        watcher::Event::Apply(o) | watcher::Event::InitApply(o) | watcher::Event::Delete(o) => {
            Signal::NamespaceChanged(ns(&o))
        }
        watcher::Event::InitDone => Signal::Synced(cache),
        watcher::Event::Init => Signal::Nothing,
    }
}

/// Runs until `shutdown` drains, its caches getting their initial state as `initial` says.
/// Errors of the API or of publishing are logged, counted and retried, never returned: the
/// loop only ends on shutdown.
pub async fn run<P: EventPublisher, E: Events>(
    client: kube::Client,
    ctx: Context<P, E>,
    initial: InitialList,
    mut shutdown: Shutdown,
) {
    let (deployments, dw) = reflector::store();
    let (daemonsets, sw) = reflector::store();
    let (namespaces, nw) = reflector::store();
    let (accounts, aw) = reflector::store();
    let mut signals = futures::stream::select_all([
        watch::<shared::slim::Slim<Deployment>, _>(&client, dw, initial, |e| {
            workload_signal(KindKey::Deployment, Cache::Deployments, e)
        })
        .boxed(),
        watch::<shared::slim::Slim<DaemonSet>, _>(&client, sw, initial, |e| {
            workload_signal(KindKey::DaemonSet, Cache::DaemonSets, e)
        })
        .boxed(),
        watch::<Namespace, _>(&client, nw, initial, |e| {
            namespaced_signal(Cache::Namespaces, e, |n: &Namespace| {
                n.metadata.name.clone().unwrap_or_default()
            })
        })
        .boxed(),
        watch::<ServiceAccount, _>(&client, aw, initial, |e| {
            namespaced_signal(Cache::ServiceAccounts, e, |a: &ServiceAccount| {
                a.metadata.namespace.clone().unwrap_or_default()
            })
        })
        .boxed(),
    ]);
    let workloads = WorkloadCache {
        deployments,
        daemonsets,
    };
    let mut w = Watcher::new(ctx, workloads, namespaces, accounts);
    let resync_every = w.ctx.resync.max(Duration::from_secs(1));
    let mut resync = tokio::time::interval_at(Instant::now() + resync_every, resync_every);
    loop {
        let can_flush = w.can_flush();
        tokio::select! {
            biased;
            _ = shutdown.wait() => break,
            Some(signal) = signals.next() => w.on_signal(signal),
            _ = resync.tick() => w.resync(),
            _ = tokio::time::sleep_until(w.next_flush), if can_flush => w.flush().await,
        }
    }
    tracing::info!("watcher stopped");
}
