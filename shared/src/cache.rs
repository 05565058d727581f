//! The workload caches the watcher and the rollout read instead of the API: reflector stores of
//! Deployments and DaemonSets, seen as [`Workload`]s. Reading a cache never calls the API.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::PodSpec;
use kube::runtime::reflector::{ObjectRef, Store};

use crate::events::{WorkloadKind, WorkloadRef};
use crate::lean::{Decoded, Lean};
use crate::slim::{Slim, SlimPod};
use crate::workload::Workload;

/// What a cache keeps of an object: everything the functions read, nothing they do not.
///
/// A workload keeps its name, namespace, uid, generation and image-backup's own annotations
/// (see [`kept_annotation`]), replicas, selector, its status counts and (a Deployment) the type
/// and status of its `Available` condition, and of its pod template the service account, pull
/// secrets and each container's name and image, in their order (the rollout's patch addresses
/// containers by index). Labels, the template's metadata, the other conditions, condition
/// messages, probes, env, resources, volumes, affinity and the rest go, and so do
/// `managedFields`: at 6,000 workloads they were most of the rollout's memory.
pub trait Trim {
    /// Drops what no function reads.
    fn trim(&mut self) {}
}

fn trim_meta(meta: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) {
    meta.managed_fields = None;
}

/// Whether a cache keeps a workload's annotation `key`: only image-backup's own (`k8slab.io/`:
/// the opt-out, the rollout's marker and original images) are read. The others — often
/// `kubectl.kubernetes.io/last-applied-configuration`, a copy of the whole object — go; the map
/// itself stays, empty, so the rollout's patch still knows it exists and adds to it.
pub fn kept_annotation(key: &str) -> bool {
    key.starts_with("k8slab.io/")
}

/// A workload's metadata: also without labels, owners, finalizers and other tools'
/// annotations (no function reads them).
fn trim_workload_meta(meta: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) {
    trim_meta(meta);
    meta.labels = None;
    meta.owner_references = None;
    meta.finalizers = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.retain(|k, _| kept_annotation(k));
    }
}

/// A pod spec as a cache keeps it: what [`SlimPod`] holds (the one place that says which
/// fields those are).
fn trim_pod_spec(spec: &mut PodSpec) {
    *spec = SlimPod::of(std::mem::take(spec)).full();
}

/// A workload's pod template: no metadata, the pod spec trimmed.
fn trim_template(template: &mut k8s_openapi::api::core::v1::PodTemplateSpec) {
    template.metadata = None;
    if let Some(pod) = template.spec.as_mut() {
        trim_pod_spec(pod);
    }
}

impl Trim for Deployment {
    fn trim(&mut self) {
        trim_workload_meta(&mut self.metadata);
        if let Some(spec) = self.spec.as_mut() {
            // The selector stays: the rollout's health gate finds the Pods by it.
            spec.strategy = None;
            trim_template(&mut spec.template);
        }
        if let Some(status) = self.status.as_mut() {
            // Of the conditions only `Available` is read (the Ready rule), and only its type
            // and status.
            if let Some(conditions) = status.conditions.as_mut() {
                conditions.retain(|c| c.type_ == "Available");
                for c in conditions.iter_mut() {
                    *c = k8s_openapi::api::apps::v1::DeploymentCondition {
                        type_: std::mem::take(&mut c.type_),
                        status: std::mem::take(&mut c.status),
                        ..Default::default()
                    };
                }
                conditions.shrink_to_fit();
            }
        }
    }
}

impl Trim for DaemonSet {
    fn trim(&mut self) {
        trim_workload_meta(&mut self.metadata);
        if let Some(spec) = self.spec.as_mut() {
            // The strategy's type (`OnDelete` holds a rollout) and the selector (the Pods) stay.
            if let Some(u) = spec.update_strategy.as_mut() {
                u.rolling_update = None;
            }
            trim_template(&mut spec.template);
        }
        if let Some(status) = self.status.as_mut() {
            status.conditions = None;
        }
    }
}

impl Trim for k8s_openapi::api::core::v1::Namespace {
    fn trim(&mut self) {
        trim_meta(&mut self.metadata);
    }
}

impl Trim for k8s_openapi::api::core::v1::ServiceAccount {
    fn trim(&mut self) {
        trim_meta(&mut self.metadata);
    }
}

impl Trim for crate::crd::ImageBackup {
    fn trim(&mut self) {
        self.metadata.managed_fields = None;
    }
}

/// What a cache can hold: a Kubernetes object the reflector can decode (leanly, through
/// [`Lean`]), trim and share between tasks (every `K` the functions watch).
pub trait Cached:
    kube::Resource<DynamicType = ()> + Lean + Trim + Clone + std::fmt::Debug + Send + Sync + 'static
{
}

impl<K> Cached for K where
    K: kube::Resource<DynamicType = ()>
        + Lean
        + Trim
        + Clone
        + std::fmt::Debug
        + Send
        + Sync
        + 'static
{
}

/// A cluster-wide reflector over every `K` into `writer`, with kube-runtime's default backoff,
/// its initial state got as `initial` says, each object parsed [leanly](Lean) and
/// [trimmed](Trim) before it is stored: the watch every cache of the functions is built on. The
/// stream must be polled for the store to fill.
pub fn reflect<K>(
    client: &kube::Client,
    writer: kube::runtime::reflector::store::Writer<K>,
    initial: crate::initial_list::InitialList,
) -> impl futures::Stream<Item = Result<kube::runtime::watcher::Event<K>, kube::runtime::watcher::Error>>
+ Send
+ 'static
where
    K: Cached,
{
    use futures::TryStreamExt as _;
    use kube::runtime::WatchStreamExt as _;
    use kube::runtime::watcher::Event;
    crate::initial_list::watch(kube::Api::<Decoded<K>>::all(client.clone()), initial)
        .map_ok(|event| match event {
            Event::Apply(Decoded(o)) => Event::Apply(o),
            Event::Delete(Decoded(o)) => Event::Delete(o),
            Event::Init => Event::Init,
            Event::InitApply(Decoded(o)) => Event::InitApply(o),
            Event::InitDone => Event::InitDone,
        })
        .default_backoff()
        .modify(Trim::trim)
        .reflect(writer)
}

/// Reflector stores of Deployments and DaemonSets, each held [slim](Slim) and built whole
/// only when read. Cheap to clone.
#[derive(Clone)]
pub struct WorkloadCache {
    /// The Deployments store.
    pub deployments: Store<Slim<Deployment>>,
    /// The DaemonSets store.
    pub daemonsets: Store<Slim<DaemonSet>>,
}

impl WorkloadCache {
    /// One workload, if cached.
    pub fn get(&self, r: &WorkloadRef) -> Option<Workload> {
        match r.kind {
            WorkloadKind::Deployment => self
                .deployments
                .get(&ObjectRef::new(&r.name).within(&r.namespace))
                .map(|d| Workload::Deployment(Box::new(d.full()))),
            WorkloadKind::DaemonSet => self
                .daemonsets
                .get(&ObjectRef::new(&r.name).within(&r.namespace))
                .map(|d| Workload::DaemonSet(Box::new(d.full()))),
        }
    }

    /// Every cached workload, each built only when the iterator reaches it: a pass over
    /// thousands of workloads holds one at a time, not a copy of the cache (at 6,000
    /// workloads the rollout's resync held 26 MiB of copies at its peak).
    pub fn each(&self) -> impl Iterator<Item = Workload> + Send + use<> {
        let d = self
            .deployments
            .state()
            .into_iter()
            .map(|d| Workload::Deployment(Box::new(d.full())));
        let s = self
            .daemonsets
            .state()
            .into_iter()
            .map(|d| Workload::DaemonSet(Box::new(d.full())));
        d.chain(s)
    }

    /// The cached workloads whose pod spec satisfies `keep` (it sees the slim pod spec: the
    /// images, pull secrets, service account), by reference: the caller builds each with
    /// [`WorkloadCache::get`] when it comes to it, so an image that thousands of workloads run
    /// (or a pass over every workload) never holds them all built at once.
    pub fn refs(&self, keep: impl Fn(&SlimPod) -> bool) -> Vec<WorkloadRef> {
        use kube::Resource as _;
        let reference =
            |kind: WorkloadKind,
             meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
                WorkloadRef {
                    kind,
                    namespace: meta.namespace.clone().unwrap_or_default(),
                    name: meta.name.clone().unwrap_or_default(),
                }
            };
        let d =
            self.deployments.state().into_iter().filter_map(|d| {
                keep(d.pod()?).then(|| reference(WorkloadKind::Deployment, d.meta()))
            });
        let s =
            self.daemonsets.state().into_iter().filter_map(|d| {
                keep(d.pod()?).then(|| reference(WorkloadKind::DaemonSet, d.meta()))
            });
        d.chain(s).collect()
    }

    /// The cached workloads that carry annotation `key`, each built only when the iterator
    /// reaches it (the rollout's in-flight workloads among thousands; after a rollout, every
    /// workload it moved carries its original images).
    pub fn annotated(&self, key: &str) -> impl Iterator<Item = Workload> + Send + use<> {
        let (key, also) = (key.to_string(), key.to_string());
        let d = self.deployments.state().into_iter().filter_map(move |d| {
            d.annotation(&key)
                .is_some()
                .then(|| Workload::Deployment(Box::new(d.full())))
        });
        let s = self.daemonsets.state().into_iter().filter_map(move |d| {
            d.annotation(&also)
                .is_some()
                .then(|| Workload::DaemonSet(Box::new(d.full())))
        });
        d.chain(s)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trimmed_workload_keeps_what_the_functions_read() {
        let mut d: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop", "generation": 3,
                         "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}", "k8slab.io/image-backup": "disabled"},
                         "managedFields": [{"manager": "kubectl", "operation": "Apply"}]},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                     "strategy": {"type": "RollingUpdate"},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"serviceAccountName": "bot", "imagePullSecrets": [{"name": "regcred"}],
                                           "volumes": [{"name": "v", "emptyDir": {}}],
                                           "initContainers": [{"name": "init", "image": "busybox:1.36", "command": ["true"]}],
                                           "containers": [{"name": "a", "image": "nginx:1.25", "env": [{"name": "X", "value": "1"}]},
                                                          {"name": "b", "image": "redis:7", "ports": [{"containerPort": 6379}]}]}}},
            "status": {"observedGeneration": 3, "readyReplicas": 2, "updatedReplicas": 2, "availableReplicas": 2, "replicas": 2}
        }))
        .expect("deployment");
        let before = Workload::Deployment(Box::new(d.clone()));
        d.trim();
        let after = Workload::Deployment(Box::new(d.clone()));
        assert_eq!(
            after.images(),
            before.images(),
            "containers in order, init containers too"
        );
        assert_eq!(after.is_ready(), before.is_ready());
        let pod = d
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.clone())
            .expect("pod spec");
        assert_eq!(pod.service_account_name.as_deref(), Some("bot"));
        assert_eq!(pod.image_pull_secrets.map(|s| s.len()), Some(1));
        assert!(
            pod.volumes.is_none()
                && pod.containers[0].env.is_none()
                && pod.containers[1].ports.is_none()
        );
        assert!(d.metadata.managed_fields.is_none());
        assert_eq!(
            d.metadata.annotations,
            Some([("k8slab.io/image-backup".to_string(), "disabled".to_string())].into()),
            "image-backup's annotations stay, last-applied-configuration goes"
        );
        let mut other_tools_only: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "annotations": {"meta.helm.sh/release-name": "web"}}
        }))
        .expect("deployment");
        other_tools_only.trim();
        assert_eq!(
            other_tools_only.metadata.annotations,
            Some(Default::default()),
            "the map stays, empty: the rollout's patch adds to it"
        );
    }

    #[test]
    fn a_trimmed_deployment_keeps_only_its_available_condition_and_its_readiness() {
        for available in ["True", "False"] {
            let mut d: Deployment = serde_json::from_value(serde_json::json!({
                "metadata": {"name": "web", "generation": 1},
                "spec": {"replicas": 1},
                "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1,
                           "readyReplicas": 1, "availableReplicas": 1, "conditions": [
                    {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
                     "message": "ReplicaSet \"web-1\" has successfully progressed."},
                    {"type": "Available", "status": available, "reason": "MinimumReplicasAvailable",
                     "message": "Deployment has minimum availability."},
                    {"type": "ReplicaFailure", "status": "False"}]}
            }))
            .expect("deployment");
            let ready = Workload::Deployment(Box::new(d.clone())).is_ready();
            assert_eq!(ready, available == "True");
            d.trim();
            let conditions = d.status.as_ref().and_then(|s| s.conditions.clone());
            assert_eq!(
                conditions,
                Some(vec![k8s_openapi::api::apps::v1::DeploymentCondition {
                    type_: "Available".into(),
                    status: available.into(),
                    ..Default::default()
                }])
            );
            assert_eq!(Workload::Deployment(Box::new(d)).is_ready(), ready);
        }
    }
}
