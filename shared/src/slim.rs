//! Workloads as the caches hold them: [`Slim`], sized by what it holds. A k8s-openapi
//! `Container` is 2,120 bytes even when only its name and image are set (every optional field
//! is stored inline), a `PodSpec` 1,416 and a `Deployment` 2,400: at 10,000 workloads the
//! rollout's caches of trimmed k8s-openapi objects were about 92 MB of its heap. A [`Slim`]
//! keeps the workload's metadata and status as they are, and of its spec the fields the
//! functions read (what [`crate::cache::Trim`] keeps) in small types; [`Slim::full`] builds the
//! k8s-openapi object again when one workload is read, so every rule keeps working on
//! [`crate::workload::Workload`]. Its two string maps (the selector's labels, image-backup's
//! own annotations) are [`SlimMap`]s: a `BTreeMap` allocates a node for eleven entries, about
//! 550 bytes, even when it holds one. Images, container names and map keys, which many
//! workloads hold the same, are [interned](crate::intern).

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetSpec, DaemonSetStatus, DaemonSetUpdateStrategy, Deployment, DeploymentSpec,
    DeploymentStatus,
};
use k8s_openapi::api::core::v1::{Container, LocalObjectReference, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};

use serde::{Deserialize, Deserializer};

use crate::cache::Trim;
use crate::lean::{Lean, WireWorkload};

/// A string map as a cache keeps it: its pairs in key order, in one allocation, the keys
/// interned.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SlimMap(Box<[(Arc<str>, String)]>);

impl SlimMap {
    /// What a cache keeps of `map` (all of it, in less memory).
    fn of(map: BTreeMap<String, String>) -> Self {
        Self(
            map.into_iter()
                .map(|(k, v)| (crate::intern::intern(&k), v))
                .collect(),
        )
    }

    /// The map again.
    fn full(&self) -> BTreeMap<String, String> {
        self.0
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        let at = self.0.binary_search_by(|(k, _)| (**k).cmp(key)).ok()?;
        Some(self.0[at].1.as_str())
    }
}

/// A label selector as a cache keeps it: the labels in a [`SlimMap`], the expressions (rare)
/// as they are.
#[derive(Debug, Clone, PartialEq, Default)]
struct SlimSelector {
    match_labels: Option<SlimMap>,
    match_expressions: Option<Vec<LabelSelectorRequirement>>,
}

impl SlimSelector {
    fn of(selector: LabelSelector) -> Self {
        Self {
            match_labels: selector.match_labels.map(SlimMap::of),
            match_expressions: selector.match_expressions,
        }
    }

    fn full(&self) -> LabelSelector {
        LabelSelector {
            match_labels: self.match_labels.as_ref().map(SlimMap::full),
            match_expressions: self.match_expressions.clone(),
        }
    }
}

/// `selector` → a [`SlimSelector`].
fn selector<'de, D: Deserializer<'de>>(d: D) -> Result<SlimSelector, D::Error> {
    LabelSelector::deserialize(d).map(SlimSelector::of)
}

/// A container as a cache keeps it: its name and image, both interned.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
struct SlimContainer {
    #[serde(default, deserialize_with = "crate::intern::deserialize")]
    name: Arc<str>,
    #[serde(default, deserialize_with = "crate::intern::deserialize_option")]
    image: Option<Arc<str>>,
}

/// A pod template's spec as a cache keeps it: the containers' names and images (in order: the
/// rollout's patch addresses containers by index), the pull secrets and the service account.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlimPod {
    #[serde(default)]
    containers: Vec<SlimContainer>,
    init_containers: Option<Vec<SlimContainer>>,
    image_pull_secrets: Option<Vec<LocalObjectReference>>,
    service_account_name: Option<String>,
    service_account: Option<String>,
}

impl SlimPod {
    /// What a cache keeps of `spec`.
    pub(crate) fn of(spec: PodSpec) -> Self {
        let slim = |list: Vec<Container>| {
            list.into_iter()
                .map(|c| SlimContainer {
                    name: crate::intern::intern(&c.name),
                    image: c.image.as_deref().map(crate::intern::intern),
                })
                .collect()
        };
        Self {
            containers: slim(spec.containers),
            init_containers: spec.init_containers.map(slim),
            image_pull_secrets: spec.image_pull_secrets,
            service_account_name: spec.service_account_name,
            service_account: spec.service_account,
        }
    }

    /// The k8s-openapi pod spec holding what was kept.
    pub(crate) fn full(&self) -> PodSpec {
        let full = |list: &[SlimContainer]| {
            list.iter()
                .map(|c| Container {
                    name: c.name.to_string(),
                    image: c.image.as_deref().map(str::to_string),
                    ..Default::default()
                })
                .collect()
        };
        PodSpec {
            containers: full(&self.containers),
            init_containers: self.init_containers.as_deref().map(full),
            image_pull_secrets: self.image_pull_secrets.clone(),
            service_account_name: self.service_account_name.clone(),
            service_account: self.service_account.clone(),
            ..Default::default()
        }
    }

    /// Every container's image that is set, initContainers first (as
    /// [`crate::workload::Workload::images`] orders them).
    pub fn images(&self) -> impl Iterator<Item = &str> {
        self.init_containers
            .iter()
            .flatten()
            .chain(&self.containers)
            .filter_map(|c| c.image.as_deref())
    }
}

/// A workload's spec as a cache keeps it: the scalars, selector and update strategy's type
/// of a Deployment's or DaemonSet's spec (each kind has its own), and the pod spec. Parsed
/// straight off the API (see [`crate::lean`]): of the pod template only its spec, of a
/// DaemonSet's update strategy only its type; a Deployment's `strategy` is not read.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlimSpec {
    min_ready_seconds: Option<i32>,
    paused: Option<bool>,
    progress_deadline_seconds: Option<i32>,
    replicas: Option<i32>,
    revision_history_limit: Option<i32>,
    /// The type of a DaemonSet's update strategy (`Some("")`: a strategy without one).
    #[serde(default, deserialize_with = "strategy_type")]
    update_strategy: Option<String>,
    #[serde(default, deserialize_with = "selector")]
    selector: SlimSelector,
    #[serde(default, rename = "template", deserialize_with = "template_spec")]
    pod: Option<SlimPod>,
}

/// `updateStrategy` → its `type` (`""` when it has none).
fn strategy_type<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    struct Strategy {
        #[serde(rename = "type")]
        type_: Option<String>,
    }
    Ok(Option::<Strategy>::deserialize(d)?.map(|s| s.type_.unwrap_or_default()))
}

/// `template` → its `spec` (the template's metadata is skipped).
fn template_spec<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SlimPod>, D::Error> {
    #[derive(Deserialize)]
    struct Template {
        spec: Option<SlimPod>,
    }
    Ok(Option::<Template>::deserialize(d)?.and_then(|t| t.spec))
}

/// A workload kind a [`Slim`] can hold: split into metadata, slim spec and status, and built
/// again from them.
pub trait Slimmable: kube::Resource<DynamicType = ()> + Trim + Sized {
    /// The kind's status, kept as it is (a few counters and conditions).
    type Status: Clone + std::fmt::Debug + PartialEq + Send + Sync + 'static;
    /// The object's parts (after [`Trim`]).
    fn split(self) -> (ObjectMeta, Option<SlimSpec>, Option<Self::Status>);
    /// The object made of `split`'s parts (the spec's copied: a cache keeps its own).
    fn join(metadata: ObjectMeta, spec: Option<&SlimSpec>, status: Option<Self::Status>) -> Self;
}

impl Slimmable for Deployment {
    type Status = DeploymentStatus;

    fn split(self) -> (ObjectMeta, Option<SlimSpec>, Option<DeploymentStatus>) {
        let spec = self.spec.map(|s| SlimSpec {
            min_ready_seconds: s.min_ready_seconds,
            paused: s.paused,
            progress_deadline_seconds: s.progress_deadline_seconds,
            replicas: s.replicas,
            revision_history_limit: s.revision_history_limit,
            update_strategy: None,
            selector: SlimSelector::of(s.selector),
            pod: s.template.spec.map(SlimPod::of),
        });
        (self.metadata, spec, self.status)
    }

    fn join(
        metadata: ObjectMeta,
        spec: Option<&SlimSpec>,
        status: Option<DeploymentStatus>,
    ) -> Self {
        Deployment {
            metadata,
            spec: spec.map(|s| DeploymentSpec {
                min_ready_seconds: s.min_ready_seconds,
                paused: s.paused,
                progress_deadline_seconds: s.progress_deadline_seconds,
                replicas: s.replicas,
                revision_history_limit: s.revision_history_limit,
                selector: s.selector.full(),
                strategy: None,
                template: PodTemplateSpec {
                    metadata: None,
                    spec: s.pod.as_ref().map(SlimPod::full),
                },
            }),
            status,
        }
    }
}

impl Slimmable for DaemonSet {
    type Status = DaemonSetStatus;

    fn split(self) -> (ObjectMeta, Option<SlimSpec>, Option<DaemonSetStatus>) {
        let spec = self.spec.map(|s| SlimSpec {
            min_ready_seconds: s.min_ready_seconds,
            revision_history_limit: s.revision_history_limit,
            // Kept as `Some("")` when the strategy is there without a type, so `join` gives
            // back exactly what was split.
            update_strategy: s.update_strategy.map(|u| u.type_.unwrap_or_default()),
            selector: SlimSelector::of(s.selector),
            pod: s.template.spec.map(SlimPod::of),
            ..SlimSpec::default()
        });
        (self.metadata, spec, self.status)
    }

    fn join(
        metadata: ObjectMeta,
        spec: Option<&SlimSpec>,
        status: Option<DaemonSetStatus>,
    ) -> Self {
        DaemonSet {
            metadata,
            spec: spec.map(|s| DaemonSetSpec {
                min_ready_seconds: s.min_ready_seconds,
                revision_history_limit: s.revision_history_limit,
                selector: s.selector.full(),
                template: PodTemplateSpec {
                    metadata: None,
                    spec: s.pod.as_ref().map(SlimPod::full),
                },
                update_strategy: s.update_strategy.as_ref().map(|t| DaemonSetUpdateStrategy {
                    rolling_update: None,
                    type_: (!t.is_empty()).then(|| t.clone()),
                }),
            }),
            status,
        }
    }
}

/// A workload `K` as a cache holds it (see the module docs): the same Kubernetes resource,
/// a fraction of the memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Slim<K: Slimmable> {
    /// Without its annotations: those are in `annotations`.
    metadata: ObjectMeta,
    /// The annotations a cache keeps ([`crate::cache::kept_annotation`]).
    annotations: Option<SlimMap>,
    spec: Option<SlimSpec>,
    status: Option<K::Status>,
}

impl<K: Slimmable> From<K> for Slim<K> {
    /// `object` [trimmed](Trim), then slimmed.
    fn from(mut object: K) -> Self {
        object.trim();
        let (metadata, spec, status) = object.split();
        Self::new(metadata, spec, status)
    }
}

impl<K: Slimmable> Slim<K> {
    /// Of trimmed parts: the annotations moved out of `metadata` into a [`SlimMap`].
    fn new(mut metadata: ObjectMeta, spec: Option<SlimSpec>, status: Option<K::Status>) -> Self {
        Self {
            annotations: metadata.annotations.take().map(SlimMap::of),
            metadata,
            spec,
            status,
        }
    }

    /// The k8s-openapi object again, as [`Trim`] leaves it.
    pub fn full(&self) -> K {
        let mut metadata = self.metadata.clone();
        metadata.annotations = self.annotations.as_ref().map(SlimMap::full);
        K::join(metadata, self.spec.as_ref(), self.status.clone())
    }

    /// The value of annotation `key`, when it is one a cache keeps (the workload's
    /// `metadata()` holds none: see [`Slim::full`]).
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key)
    }

    /// The pod template's spec, slim (`None` without a spec or a template spec).
    pub fn pod(&self) -> Option<&SlimPod> {
        self.spec.as_ref()?.pod.as_ref()
    }
}

crate::lean::same_kind!(Slim<K: Slimmable>, |o| &o.metadata, |o| &mut o.metadata);

impl<K: Slimmable> Lean for Slim<K>
where
    K::Status: serde::de::DeserializeOwned,
{
    type Wire = WireWorkload<K::Status>;

    /// Straight from the wire form: the status [trimmed](Trim) by `K`'s own rule, the rest
    /// already what the cache keeps.
    fn from_wire(wire: Self::Wire) -> Self {
        let mut object = K::join(wire.metadata.into(), None, wire.status);
        object.trim();
        let (metadata, _, status) = object.split();
        Self::new(metadata, wire.spec, status)
    }
}

impl<K: Slimmable> Trim for Slim<K> {}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment() -> Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop", "generation": 3, "resourceVersion": "7",
                         "annotations": {"k8slab.io/image-backup": "disabled"},
                         "labels": {"app": "web"}},
            "spec": {"replicas": 2, "paused": false, "minReadySeconds": 1, "progressDeadlineSeconds": 600,
                     "revisionHistoryLimit": 4, "selector": {"matchLabels": {"app": "web"}},
                     "strategy": {"type": "Recreate"},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"serviceAccountName": "bot", "serviceAccount": "bot",
                                           "imagePullSecrets": [{"name": "regcred"}],
                                           "initContainers": [{"name": "init", "image": "busybox:1.36"}],
                                           "containers": [{"name": "a", "image": "nginx:1.25", "env": [{"name": "X", "value": "1"}]},
                                                          {"name": "b"}]}}},
            "status": {"observedGeneration": 3, "readyReplicas": 2, "updatedReplicas": 2, "replicas": 2,
                       "conditions": [{"type": "Available", "status": "True"}]}
        }))
        .expect("deployment")
    }

    fn daemonset(strategy: serde_json::Value) -> DaemonSet {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "agent", "namespace": "ops", "generation": 2},
            "spec": {"selector": {"matchLabels": {"app": "agent"}}, "minReadySeconds": 5,
                     "revisionHistoryLimit": 3, "updateStrategy": strategy,
                     "template": {"spec": {"containers": [{"name": "a", "image": "fluentd:1"}]}}},
            "status": {"currentNumberScheduled": 3, "desiredNumberScheduled": 3, "numberMisscheduled": 0,
                       "numberReady": 3, "observedGeneration": 2, "updatedNumberScheduled": 3}
        }))
        .expect("daemonset")
    }

    #[test]
    fn a_slim_workload_gives_back_exactly_the_trimmed_object() {
        let mut trimmed = deployment();
        trimmed.trim();
        assert_eq!(Slim::from(deployment()).full(), trimmed);
        for strategy in [
            serde_json::json!({"type": "OnDelete"}),
            serde_json::json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}),
            serde_json::json!({}),
            serde_json::Value::Null,
        ] {
            let mut trimmed = daemonset(strategy.clone());
            trimmed.trim();
            assert_eq!(Slim::from(daemonset(strategy)).full(), trimmed);
        }
        let bare = Deployment {
            metadata: ObjectMeta {
                name: Some("bare".into()),
                ..ObjectMeta::default()
            },
            ..Deployment::default()
        };
        assert_eq!(Slim::from(bare.clone()).full(), bare);
    }

    #[test]
    fn a_slim_workload_answers_for_the_annotations_it_keeps() {
        use kube::Resource as _;
        let mut with_two = deployment();
        with_two.metadata.annotations = Some(
            [
                ("k8slab.io/z", "last"),
                ("k8slab.io/image-backup", "disabled"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into(),
        );
        let slim = Slim::from(with_two);
        assert_eq!(slim.annotation("k8slab.io/image-backup"), Some("disabled"));
        assert_eq!(slim.annotation("k8slab.io/z"), Some("last"));
        assert_eq!(slim.annotation("k8slab.io/a"), None);
        assert_eq!(slim.meta().annotations, None, "held once, in its slim map");
        let bare = Slim::from(Deployment::default());
        assert_eq!(bare.annotation("k8slab.io/image-backup"), None);
        assert_eq!(bare.full().metadata.annotations, None, "no map made up");
    }

    #[test]
    fn a_slim_pod_lists_the_images_init_containers_first() {
        let slim = Slim::from(deployment());
        let images: Vec<&str> = slim.pod().expect("pod").images().collect();
        assert_eq!(
            images,
            ["busybox:1.36", "nginx:1.25"],
            "a container without an image is left out"
        );
    }

    #[test]
    fn a_slim_workload_is_a_fraction_of_the_k8s_openapi_object() {
        use kube::Resource as _;
        // What one workload costs a cache, not counting its strings.
        let slim = size_of::<Slim<Deployment>>();
        let fat = size_of::<Deployment>() + 3 * size_of::<Container>();
        assert!(slim * 5 < fat, "slim {slim} bytes, k8s-openapi {fat} bytes");
        assert_eq!(Slim::<Deployment>::kind(&()), "Deployment");
        assert_eq!(
            Slim::<DaemonSet>::url_path(&(), Some("ops")),
            DaemonSet::url_path(&(), Some("ops"))
        );
    }
}
