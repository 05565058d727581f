//! The workload caches the watcher and the rollout read instead of the API: reflector stores of
//! Deployments and DaemonSets, seen as [`Workload`]s. Reading a cache never calls the API.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::PodSpec;
use kube::runtime::reflector::{ObjectRef, Store};

use crate::events::{WorkloadKind, WorkloadRef};
use crate::workload::Workload;

/// A cluster-wide reflector over every `K` into `writer`, with kube-runtime's default backoff:
/// the watch every cache of the functions is built on. The stream must be polled for the store
/// to fill.
pub fn reflect<K>(
    client: &kube::Client,
    writer: kube::runtime::reflector::store::Writer<K>,
) -> impl futures::Stream<Item = Result<kube::runtime::watcher::Event<K>, kube::runtime::watcher::Error>>
+ Send
+ 'static
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    use kube::runtime::WatchStreamExt as _;
    kube::runtime::watcher(
        kube::Api::<K>::all(client.clone()),
        kube::runtime::watcher::Config::default(),
    )
    .default_backoff()
    .reflect(writer)
}

/// Reflector stores of Deployments and DaemonSets. Cheap to clone.
#[derive(Clone)]
pub struct WorkloadCache {
    /// The Deployments store.
    pub deployments: Store<Deployment>,
    /// The DaemonSets store.
    pub daemonsets: Store<DaemonSet>,
}

impl WorkloadCache {
    /// One workload, if cached.
    pub fn get(&self, r: &WorkloadRef) -> Option<Workload> {
        match r.kind {
            WorkloadKind::Deployment => self
                .deployments
                .get(&ObjectRef::new(&r.name).within(&r.namespace))
                .map(|d| Workload::Deployment(Box::new(d.as_ref().clone()))),
            WorkloadKind::DaemonSet => self
                .daemonsets
                .get(&ObjectRef::new(&r.name).within(&r.namespace))
                .map(|d| Workload::DaemonSet(Box::new(d.as_ref().clone()))),
        }
    }

    /// Every cached workload.
    pub fn all(&self) -> Vec<Workload> {
        let d = self
            .deployments
            .state()
            .into_iter()
            .map(|d| Workload::Deployment(Box::new(d.as_ref().clone())));
        let s = self
            .daemonsets
            .state()
            .into_iter()
            .map(|d| Workload::DaemonSet(Box::new(d.as_ref().clone())));
        d.chain(s).collect()
    }

    /// The cached workloads whose pod spec satisfies `keep`, cloning only those (an event that
    /// concerns a few workloads of thousands must not copy them all).
    pub fn filter(&self, keep: impl Fn(&PodSpec) -> bool) -> Vec<Workload> {
        let d = self.deployments.state().into_iter().filter_map(|d| {
            let spec = d.spec.as_ref()?.template.spec.as_ref()?;
            keep(spec).then(|| Workload::Deployment(Box::new(d.as_ref().clone())))
        });
        let s = self.daemonsets.state().into_iter().filter_map(|d| {
            let spec = d.spec.as_ref()?.template.spec.as_ref()?;
            keep(spec).then(|| Workload::DaemonSet(Box::new(d.as_ref().clone())))
        });
        d.chain(s).collect()
    }

    /// How many workloads are cached.
    pub fn len(&self) -> usize {
        self.deployments.state().len() + self.daemonsets.state().len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
