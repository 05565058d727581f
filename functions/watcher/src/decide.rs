//! What the watcher decides for one workload, as a pure function of the cluster state it sees:
//! excluded or opted-out workloads are left alone, the backup plan (the shared needs-backup and
//! naming rules, [`Workload::plan`]) is made, and a `workload.changed` is published only for a
//! Ready workload that runs at least one image not in the backup registry.
//!
//! `watcher plan` and `watcher run` both plan through [`Workload::plan_with_secrets`], so they
//! decide the same for the same workload. Nothing here does I/O.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use prometheus_client::encoding::EncodeLabelValue;
use shared::NamingPolicy;
use shared::events::WorkloadChanged;
use shared::workload::{InvalidImage, Workload};

/// The annotation (on a workload or its namespace) that opts out of image-backup.
pub const OPT_OUT_ANNOTATION: &str = "k8slab.io/image-backup";
/// Its value that opts out.
pub const OPT_OUT_VALUE: &str = "disabled";
/// Namespaces left alone unless told otherwise (the function's own is added at start-up).
pub const DEFAULT_EXCLUDED: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

/// What the watcher watches and where backups go.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The backup naming policy (and so the needs-backup rule).
    pub naming: NamingPolicy,
    /// Namespaces never looked at.
    pub excluded_namespaces: BTreeSet<String>,
    /// When not empty, the only namespaces looked at.
    pub namespaces: BTreeSet<String>,
}

/// Why a workload published nothing (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
pub enum SkipReason {
    /// Its namespace is excluded or not in the watched list.
    ExcludedNamespace,
    /// It or its namespace carries `k8slab.io/image-backup: disabled`.
    OptedOut,
    /// It is not Ready (the shared Ready rule): a broken rollout is not piled on.
    NotReady,
    /// Every image is already in the backup registry (or none is valid).
    NothingToBackUp,
    /// The same images were already published for it.
    Unchanged,
}

/// The watcher's decision for one workload.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Publish this `workload.changed`.
    Publish(WorkloadChanged),
    /// Publish nothing, for this reason.
    Skip(SkipReason),
}

/// A decision and the images that could not be planned (reported whatever the decision).
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// What to do.
    pub decision: Decision,
    /// Images whose reference is invalid.
    pub invalid: Vec<InvalidImage>,
}

fn opted_out(meta: &ObjectMeta) -> bool {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(OPT_OUT_ANNOTATION))
        .is_some_and(|v| v == OPT_OUT_VALUE)
}

fn workload_meta(w: &Workload) -> &ObjectMeta {
    match w {
        Workload::Deployment(d) => &d.metadata,
        Workload::DaemonSet(d) => &d.metadata,
    }
}

/// Decides for one workload (see the module docs).
pub fn evaluate(
    w: &Workload,
    namespace: Option<&Namespace>,
    sa: Option<&ServiceAccount>,
    policy: &Policy,
) -> Evaluation {
    let skip = |reason| Evaluation {
        decision: Decision::Skip(reason),
        invalid: Vec::new(),
    };
    let ns = w.reference().namespace;
    if policy.excluded_namespaces.contains(&ns)
        || (!policy.namespaces.is_empty() && !policy.namespaces.contains(&ns))
    {
        return skip(SkipReason::ExcludedNamespace);
    }
    if opted_out(workload_meta(w)) || namespace.is_some_and(|n| opted_out(&n.metadata)) {
        return skip(SkipReason::OptedOut);
    }
    let plan = w.plan_with_secrets(sa, &policy.naming);
    let decision = if !w.is_ready() {
        Decision::Skip(SkipReason::NotReady)
    } else if plan.event.images.is_empty() {
        Decision::Skip(SkipReason::NothingToBackUp)
    } else {
        Decision::Publish(plan.event)
    };
    Evaluation {
        decision,
        invalid: plan.invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            naming: NamingPolicy::flat("localhost:5000/backup".parse().unwrap()),
            excluded_namespaces: DEFAULT_EXCLUDED.iter().map(|s| s.to_string()).collect(),
            namespaces: BTreeSet::new(),
        }
    }

    fn deployment(ns: &str, images: &[&str], ready: bool, annotations: &str) -> Workload {
        let containers: Vec<_> = images
            .iter()
            .enumerate()
            .map(|(i, im)| format!("{{name: c{i}, image: \"{im}\"}}"))
            .collect();
        let status = if ready {
            "status: {observedGeneration: 1, replicas: 1, updatedReplicas: 1, readyReplicas: 1, availableReplicas: 1, conditions: [{type: Available, status: \"True\"}]}"
        } else {
            ""
        };
        let yaml = format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web, namespace: {ns}, uid: u, generation: 1, annotations: {{{annotations}}}}}\nspec:\n  replicas: 1\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec:\n      serviceAccountName: builder\n      imagePullSecrets: [{{name: hub}}]\n      containers: [{}]\n{status}\n",
            containers.join(", ")
        );
        let (mut w, _) = Workload::from_yaml(&yaml);
        w.remove(0).unwrap()
    }

    fn namespace(annotated: bool) -> Namespace {
        let mut ns = Namespace::default();
        if annotated {
            ns.metadata.annotations =
                Some([(OPT_OUT_ANNOTATION.to_string(), OPT_OUT_VALUE.to_string())].into());
        }
        ns
    }

    #[test]
    fn a_ready_workload_with_an_external_image_is_published_with_its_pull_secrets() {
        let w = deployment("web", &["nginx:1.14.0"], true, "");
        let secret =
            |name: &str| k8s_openapi::api::core::v1::LocalObjectReference { name: name.into() };
        let sa = ServiceAccount {
            image_pull_secrets: Some(vec![secret("quay"), secret("hub")]),
            ..Default::default()
        };
        assert_eq!(w.service_account_name(), "builder");
        let e = evaluate(&w, Some(&namespace(false)), Some(&sa), &policy());
        let Decision::Publish(event) = e.decision else {
            panic!("{e:?}")
        };
        assert_eq!(event.images[0].source, "docker.io/library/nginx:1.14.0");
        assert_eq!(event.pull_secrets, ["hub", "quay"]);
    }

    #[test]
    fn skips_say_why() {
        let p = policy();
        let cases = [
            (
                deployment("kube-system", &["nginx"], true, ""),
                false,
                SkipReason::ExcludedNamespace,
            ),
            (
                deployment("web", &["nginx"], true, "k8slab.io/image-backup: disabled"),
                false,
                SkipReason::OptedOut,
            ),
            (
                deployment("web", &["nginx"], true, ""),
                true,
                SkipReason::OptedOut,
            ),
            (
                deployment("web", &["nginx"], false, ""),
                false,
                SkipReason::NotReady,
            ),
            (
                deployment("web", &["localhost:5000/backup/library_nginx:1"], true, ""),
                false,
                SkipReason::NothingToBackUp,
            ),
        ];
        for (w, ns_opt_out, reason) in cases {
            let e = evaluate(&w, Some(&namespace(ns_opt_out)), None, &p);
            assert_eq!(e.decision, Decision::Skip(reason));
        }
        let mut only = policy();
        only.namespaces.insert("other".into());
        let e = evaluate(&deployment("web", &["nginx"], true, ""), None, None, &only);
        assert_eq!(e.decision, Decision::Skip(SkipReason::ExcludedNamespace));
    }

    #[test]
    fn invalid_images_are_reported_and_the_others_still_proceed() {
        let w = deployment("web", &["Nginx:latest", "redis:7"], true, "");
        let e = evaluate(&w, None, None, &policy());
        assert_eq!(e.invalid.len(), 1);
        let Decision::Publish(event) = e.decision else {
            panic!("{e:?}")
        };
        assert_eq!(event.images.len(), 1);
        assert_eq!(event.images[0].source, "docker.io/library/redis:7");
    }
}
