//! Workloads parsed leanly: the watcher's and the rollout's lists, watch events and resyncs
//! decode a Deployment or DaemonSet into only what [`crate::cache::Trim`] keeps, skipping
//! `managedFields`, labels, the pod template's metadata, probes, env, resources, volumes and
//! the rest while parsing (serde passes over them without building them), instead of building
//! the whole object and trimming it after. On a real cluster every object carries its
//! `managedFields` tree; parsing it into `serde_json::Value`s was most of the two functions'
//! time and memory at 6,000 workloads.
//!
//! [`Decoded<K>`] is `K` as the API returns it, through [`Lean::Wire`]; kube's `Api` and
//! watcher work on it as on `K` (it is a [`kube::Resource`] of the same kind), and
//! [`crate::cache::reflect`] hands the caches plain `K`s. Workloads are parsed straight into
//! their [slim](crate::slim) form, the one the caches hold. A unit test pins that the lean
//! parse keeps exactly what parsing everything and trimming keeps.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde::Deserialize;

/// A type with a lean wire form: what is parsed off the API, turned into `Self`.
pub trait Lean: Sized {
    /// What is parsed: only the fields the functions read (serde skips the others unbuilt).
    type Wire: serde::de::DeserializeOwned;
    /// The object made of what was parsed.
    fn from_wire(wire: Self::Wire) -> Self;
}

/// `K` decoded through its [`Lean::Wire`] form: use `Api<Decoded<K>>` where `Api<K>` would
/// parse whole objects only to drop most of them.
#[derive(Debug, Clone)]
pub struct Decoded<K>(pub K);

impl<'de, K: Lean> Deserialize<'de> for Decoded<K> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        K::Wire::deserialize(d).map(|wire| Decoded(K::from_wire(wire)))
    }
}

/// Implements [`kube::Resource`] for `$wrapper<K>`, a form of `K` that is the same
/// Kubernetes kind (its kind, group, version and plural are `K`'s), whose metadata the two
/// closures reach: kube's `Api` and watcher then work on it as on `K`.
macro_rules! same_kind {
    ($wrapper:ident<K: $bound:path>, |$o:ident| $meta:expr, |$m:ident| $meta_mut:expr) => {
        impl<K: $bound> kube::Resource for $wrapper<K> {
            type DynamicType = ();
            type Scope = K::Scope;

            fn kind(dt: &()) -> std::borrow::Cow<'_, str> {
                K::kind(dt)
            }
            fn group(dt: &()) -> std::borrow::Cow<'_, str> {
                K::group(dt)
            }
            fn version(dt: &()) -> std::borrow::Cow<'_, str> {
                K::version(dt)
            }
            fn plural(dt: &()) -> std::borrow::Cow<'_, str> {
                K::plural(dt)
            }
            fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                let $o = self;
                $meta
            }
            fn meta_mut(
                &mut self,
            ) -> &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                let $m = self;
                $meta_mut
            }
        }
    };
}
pub(crate) use same_kind;

same_kind!(Decoded<K: kube::Resource<DynamicType = ()>>, |o| o.0.meta(), |o| o.0.meta_mut());

/// A type parsed whole (small objects the caches also hold: Namespaces, ServiceAccounts,
/// ImageBackups).
macro_rules! whole {
    ($($t:ty),*) => {$(
        impl Lean for $t {
            type Wire = $t;
            fn from_wire(wire: $t) -> $t {
                wire
            }
        }
    )*};
}

whole!(
    k8s_openapi::api::core::v1::Namespace,
    k8s_openapi::api::core::v1::ServiceAccount,
    crate::crd::ImageBackup
);

/// A workload's metadata without `managedFields`, labels, owners and finalizers.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireMeta {
    #[serde(default, deserialize_with = "kept_annotations")]
    annotations: Option<BTreeMap<String, String>>,
    creation_timestamp: Option<Time>,
    deletion_grace_period_seconds: Option<i64>,
    deletion_timestamp: Option<Time>,
    generate_name: Option<String>,
    generation: Option<i64>,
    name: Option<String>,
    namespace: Option<String>,
    resource_version: Option<String>,
    self_link: Option<String>,
    uid: Option<String>,
}

/// `annotations`, of which only those a cache keeps ([`crate::cache::kept_annotation`]) are
/// built; the others' values are skipped unparsed.
fn kept_annotations<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    struct Kept;
    impl<'de> serde::de::Visitor<'de> for Kept {
        type Value = Option<BTreeMap<String, String>>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a map of annotations")
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
        fn visit_map<M: serde::de::MapAccess<'de>>(
            self,
            mut map: M,
        ) -> Result<Self::Value, M::Error> {
            let mut kept = BTreeMap::new();
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if crate::cache::kept_annotation(&key) {
                    kept.insert(key.into_owned(), map.next_value()?);
                } else {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
            Ok(Some(kept))
        }
    }
    d.deserialize_option(Kept)
}

impl From<WireMeta> for ObjectMeta {
    fn from(w: WireMeta) -> Self {
        ObjectMeta {
            annotations: w.annotations,
            creation_timestamp: w.creation_timestamp,
            deletion_grace_period_seconds: w.deletion_grace_period_seconds,
            deletion_timestamp: w.deletion_timestamp,
            generate_name: w.generate_name,
            generation: w.generation,
            name: w.name,
            namespace: w.namespace,
            resource_version: w.resource_version,
            self_link: w.self_link,
            uid: w.uid,
            ..Default::default()
        }
    }
}

/// A workload (Deployment or DaemonSet, with status `S`) as parsed off the API: the metadata
/// without what no function reads, the spec already [slim](crate::slim::SlimSpec) (the pod
/// template's metadata, probes, env, resources, volumes and the rest skipped unbuilt).
#[derive(Deserialize)]
pub struct WireWorkload<S> {
    pub(crate) metadata: WireMeta,
    pub(crate) spec: Option<crate::slim::SlimSpec>,
    pub(crate) status: Option<S>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Trim;
    use crate::slim::Slim;
    use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};

    /// Everything an API server sends about a workload: `managedFields`, labels, owners,
    /// finalizers, template metadata, probes, env, resources, volumes, condition messages.
    fn rich(kind: &str) -> serde_json::Value {
        let pod = serde_json::json!({
            "serviceAccountName": "bot", "serviceAccount": "bot",
            "imagePullSecrets": [{"name": "regcred"}],
            "volumes": [{"name": "v", "emptyDir": {}}],
            "initContainers": [{"name": "init", "image": "busybox:1.36", "command": ["true"]}],
            "containers": [
                {"name": "a", "image": "nginx:1.25", "env": [{"name": "X", "value": "1"}],
                 "readinessProbe": {"httpGet": {"path": "/", "port": 80}},
                 "resources": {"limits": {"cpu": "1"}}},
                {"name": "b", "image": "redis:7", "ports": [{"containerPort": 6379}]}
            ]
        });
        let mut spec = serde_json::json!({
            "selector": {"matchLabels": {"app": "web"}}, "revisionHistoryLimit": 5,
            "minReadySeconds": 3,
            "template": {"metadata": {"labels": {"app": "web"}, "annotations": {"a": "b"}},
                         "spec": pod}
        });
        let status = if kind == "Deployment" {
            spec["replicas"] = 2.into();
            spec["paused"] = false.into();
            spec["progressDeadlineSeconds"] = 600.into();
            spec["strategy"] =
                serde_json::json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}});
            serde_json::json!({"observedGeneration": 3, "readyReplicas": 2, "updatedReplicas": 2,
                "availableReplicas": 2, "replicas": 2,
                "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
                                "message": "Deployment has minimum availability.",
                                "lastUpdateTime": "2026-01-01T00:00:00Z", "lastTransitionTime": "2026-01-01T00:00:00Z"}]})
        } else {
            spec["updateStrategy"] = serde_json::json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}});
            serde_json::json!({"currentNumberScheduled": 3, "desiredNumberScheduled": 3, "numberMisscheduled": 0,
                "numberReady": 3, "observedGeneration": 3, "updatedNumberScheduled": 3, "numberAvailable": 3,
                "conditions": [{"type": "X", "status": "True", "message": "m"}]})
        };
        serde_json::json!({
            "apiVersion": "apps/v1", "kind": kind,
            "metadata": {"name": "web", "namespace": "shop", "uid": "u-1", "generation": 3,
                         "resourceVersion": "42", "creationTimestamp": "2026-01-01T00:00:00Z",
                         "labels": {"app": "web"}, "finalizers": ["f"],
                         "ownerReferences": [{"apiVersion": "v1", "kind": "X", "name": "o", "uid": "o-1"}],
                         "annotations": {"k8slab.io/image-backup": "disabled",
                                         "kubectl.kubernetes.io/last-applied-configuration": "{\"kind\":\"Deployment\"}"},
                         "managedFields": [{"manager": "kubectl", "operation": "Apply", "apiVersion": "apps/v1",
                                            "fieldsType": "FieldsV1",
                                            "fieldsV1": {"f:spec": {"f:replicas": {}, "f:template": {"f:spec": {}}}}}]},
            "spec": spec,
            "status": status
        })
    }

    #[test]
    fn the_lean_parse_keeps_exactly_what_parsing_everything_and_trimming_keeps() {
        let json = rich("Deployment").to_string();
        let Decoded(lean) = serde_json::from_str::<Decoded<Slim<Deployment>>>(&json).expect("lean");
        let lean = lean.full();
        let mut whole: Deployment = serde_json::from_str(&json).expect("whole");
        assert!(whole.metadata.managed_fields.is_some());
        whole.trim();
        assert_eq!(lean, whole);
        assert_eq!(lean.metadata.resource_version.as_deref(), Some("42"));

        let json = rich("DaemonSet").to_string();
        let Decoded(lean) = serde_json::from_str::<Decoded<Slim<DaemonSet>>>(&json).expect("lean");
        let lean = lean.full();
        let mut whole: DaemonSet = serde_json::from_str(&json).expect("whole");
        whole.trim();
        assert_eq!(lean, whole);
        assert_eq!(
            lean.spec
                .and_then(|s| s.update_strategy)
                .and_then(|u| u.type_)
                .as_deref(),
            Some("RollingUpdate")
        );
    }

    #[test]
    fn a_decoded_workload_is_the_same_kubernetes_resource() {
        use kube::Resource as _;
        assert_eq!(
            Decoded::<Slim<Deployment>>::url_path(&(), Some("shop")),
            Deployment::url_path(&(), Some("shop"))
        );
        assert_eq!(Decoded::<Slim<DaemonSet>>::kind(&()), "DaemonSet");
    }
}
