//! Workloads (Deployments and DaemonSets) as image-backup sees them: their images, whether they
//! are Ready, and the plan of what needs a backup. The Ready and needs-backup rules live here and
//! in [`crate::naming::NamingPolicy::is_backup`], nowhere else.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{PodSpec, ServiceAccount};
use serde::{Deserialize, Serialize};

use crate::events::{WorkloadChanged, WorkloadImage, WorkloadKind, WorkloadRef};
use crate::naming::NamingPolicy;
use crate::reference::{Reference, ReferenceError};

/// A workload image-backup manages.
#[derive(Debug, Clone, PartialEq)]
pub enum Workload {
    /// An apps/v1 Deployment.
    Deployment(Box<Deployment>),
    /// An apps/v1 DaemonSet.
    DaemonSet(Box<DaemonSet>),
}

/// Why a YAML document could not be read as a workload.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    /// The text is not YAML.
    #[error("document {index} is not valid YAML: {source}")]
    Yaml {
        /// 0-based position in the file.
        index: usize,
        /// The parser's message.
        #[source]
        source: serde_yaml::Error,
    },
    /// The document is a Deployment or DaemonSet whose fields do not match the API schema.
    #[error("document {index} ({kind} {name}) does not match apps/v1: {source}")]
    Schema {
        /// 0-based position in the file.
        index: usize,
        /// Its kind.
        kind: String,
        /// Its name, if it had one.
        name: String,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
}

/// One container's image, as written in the pod template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerImage {
    /// The container's name.
    pub container: String,
    /// True for an initContainer.
    pub init: bool,
    /// The image field (empty when missing).
    pub image: String,
}

/// An image that could not be planned, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InvalidImage {
    /// The container's name.
    pub container: String,
    /// True for an initContainer.
    pub init: bool,
    /// The image as written.
    pub image: String,
    /// What is wrong with it.
    pub error: String,
}

/// What the watcher would publish for a workload, and what it had to leave out.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The workload.changed data (its `images` hold only images that need a backup).
    pub event: WorkloadChanged,
    /// Images that are not valid references.
    pub invalid: Vec<InvalidImage>,
}

// === impl Workload ===

impl Workload {
    /// Reads every Deployment and DaemonSet of a multi-document YAML (or JSON) text, descending
    /// into `List`s. Other kinds are skipped and returned by kind and name in the second vector,
    /// so a caller can say what it ignored.
    pub fn from_yaml(text: &str) -> (Vec<Result<Workload, DocumentError>>, Vec<String>) {
        let mut workloads = Vec::new();
        let mut skipped = Vec::new();
        for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let value = match serde_yaml::Value::deserialize(doc) {
                Ok(serde_yaml::Value::Null) => continue,
                Ok(v) => v,
                Err(source) => {
                    workloads.push(Err(DocumentError::Yaml { index, source }));
                    // A syntax error ends the stream: the parser cannot resynchronize.
                    break;
                }
            };
            match serde_json::to_value(value) {
                Ok(json) => collect(index, json, &mut workloads, &mut skipped),
                Err(source) => workloads.push(Err(DocumentError::Schema {
                    index,
                    kind: "?".into(),
                    name: "?".into(),
                    source,
                })),
            }
        }
        (workloads, skipped)
    }

    /// Kind, namespace (`default` when unset) and name.
    pub fn reference(&self) -> WorkloadRef {
        let (kind, meta) = match self {
            Workload::Deployment(d) => (WorkloadKind::Deployment, &d.metadata),
            Workload::DaemonSet(d) => (WorkloadKind::DaemonSet, &d.metadata),
        };
        WorkloadRef {
            kind,
            namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
            name: meta.name.clone().unwrap_or_default(),
        }
    }

    fn metadata(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        match self {
            Workload::Deployment(d) => &d.metadata,
            Workload::DaemonSet(d) => &d.metadata,
        }
    }

    /// `metadata.uid`, empty when unknown.
    pub fn uid(&self) -> String {
        self.metadata().uid.clone().unwrap_or_default()
    }

    /// `metadata.generation`, 0 when unknown.
    pub fn generation(&self) -> i64 {
        self.metadata().generation.unwrap_or(0)
    }

    /// The pod template's spec.
    pub fn pod_spec(&self) -> Option<&PodSpec> {
        match self {
            Workload::Deployment(d) => d.spec.as_ref()?.template.spec.as_ref(),
            Workload::DaemonSet(d) => d.spec.as_ref()?.template.spec.as_ref(),
        }
    }

    /// Every container's image, initContainers first (the order they run in).
    pub fn images(&self) -> Vec<ContainerImage> {
        let Some(spec) = self.pod_spec() else {
            return Vec::new();
        };
        let init = spec.init_containers.iter().flatten().map(|c| (c, true));
        let main = spec.containers.iter().map(|c| (c, false));
        init.chain(main)
            .map(|(c, init)| ContainerImage {
                container: c.name.clone(),
                init,
                image: c.image.clone().unwrap_or_default(),
            })
            .collect()
    }

    /// The Ready rule: the controller has seen the current spec and every replica (or every
    /// scheduled pod of a DaemonSet) is updated and ready. Only Ready workloads are backed up and
    /// rolled out, so a broken rollout is never piled on.
    pub fn is_ready(&self) -> bool {
        match self {
            Workload::Deployment(d) => {
                let generation = d.metadata.generation.unwrap_or(0);
                let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                let Some(st) = &d.status else { return false };
                let available = st
                    .conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == "Available" && c.status == "True");
                // `replicas` counts the Pods of old templates too: a rolling update whose new
                // Pods never start keeps the old ones Ready, and is not done.
                st.observed_generation.unwrap_or(0) >= generation
                    && st.replicas.unwrap_or(0) == want
                    && st.updated_replicas.unwrap_or(0) == want
                    && st.ready_replicas.unwrap_or(0) == want
                    && st.available_replicas.unwrap_or(0) == want
                    && (available || want == 0)
            }
            Workload::DaemonSet(d) => {
                let generation = d.metadata.generation.unwrap_or(0);
                let Some(st) = &d.status else { return false };
                st.observed_generation.unwrap_or(0) >= generation
                    && st.updated_number_scheduled.unwrap_or(0) == st.desired_number_scheduled
                    && st.number_ready == st.desired_number_scheduled
                    && st.number_available.unwrap_or(0) == st.desired_number_scheduled
            }
        }
    }

    /// The name of the ServiceAccount its pods run as (`default` when unset).
    pub fn service_account_name(&self) -> String {
        self.pod_spec()
            .and_then(|s| s.service_account_name.clone())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into())
    }

    /// The pull secrets its pods use, by name: the pod template's `imagePullSecrets`, then
    /// those of its ServiceAccount `sa` (as admission adds them), without repeats. The one rule
    /// for which Secrets may pull a workload's images: the watcher names them, the backup reads
    /// only these.
    pub fn pull_secret_names(&self, sa: Option<&ServiceAccount>) -> Vec<String> {
        let template = self
            .pod_spec()
            .and_then(|s| s.image_pull_secrets.as_ref())
            .into_iter()
            .flatten();
        let account = sa
            .and_then(|sa| sa.image_pull_secrets.as_ref())
            .into_iter()
            .flatten();
        let mut seen = std::collections::BTreeSet::new();
        template
            .chain(account)
            .map(|r| r.name.clone())
            .filter(|n| !n.is_empty() && seen.insert(n.clone()))
            .collect()
    }

    /// [`Workload::plan`] with the pull secrets its pods use ([`Workload::pull_secret_names`]).
    pub fn plan_with_secrets(&self, sa: Option<&ServiceAccount>, naming: &NamingPolicy) -> Plan {
        let mut plan = self.plan(naming);
        plan.event.pull_secrets = self.pull_secret_names(sa);
        plan
    }

    /// The plan: every image normalized, those already in the backup registry left out, the
    /// rest paired with their backup target; invalid references reported, not dropped.
    pub fn plan(&self, naming: &NamingPolicy) -> Plan {
        let mut images = Vec::new();
        let mut invalid = Vec::new();
        for c in self.images() {
            let planned = needs_backup(&c.image, naming).map_err(|e| e.to_string());
            let planned = planned.and_then(|source| match source {
                Some(source) => naming
                    .target(&source)
                    .map(|target| Some((source, target)))
                    .map_err(|e| e.to_string()),
                None => Ok(None),
            });
            match planned {
                Ok(Some((source, target))) => images.push(WorkloadImage {
                    container: c.container,
                    init: c.init,
                    target: target.to_string(),
                    source: source.to_string(),
                }),
                Ok(None) => {}
                Err(error) => invalid.push(InvalidImage {
                    container: c.container,
                    init: c.init,
                    image: c.image,
                    error,
                }),
            }
        }
        Plan {
            event: WorkloadChanged {
                workload: self.reference(),
                uid: self.uid(),
                generation: self.generation(),
                images,
                pull_secrets: Vec::new(),
            },
            invalid,
        }
    }
}

/// True when `r` could name a real workload: the namespace a DNS-1123 label, the name a DNS-1123
/// subdomain (what kube-apiserver accepts for Deployments and DaemonSets). Names that arrive in
/// a message are checked with this before they reach a URL.
pub fn is_valid_reference(r: &WorkloadRef) -> bool {
    fn label(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    }
    label(&r.namespace) && r.name.len() <= 253 && r.name.split('.').all(label)
}

/// The needs-backup rule: `Some(normalized source with default tag)` when the image is not in
/// the backup registry, `None` when it already is.
pub fn needs_backup(
    image: &str,
    naming: &NamingPolicy,
) -> Result<Option<Reference>, ReferenceError> {
    let reference = Reference::parse_normalized(image)?;
    if naming.is_backup(&reference) {
        return Ok(None);
    }
    Ok(Some(reference.with_default_tag()))
}

fn collect(
    index: usize,
    mut json: serde_json::Value,
    out: &mut Vec<Result<Workload, DocumentError>>,
    skipped: &mut Vec<String>,
) {
    let kind = json
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or("")
        .to_string();
    let name = json
        .pointer("/metadata/name")
        .and_then(|n| n.as_str())
        .unwrap_or("")
        .to_string();
    let schema = |source| DocumentError::Schema {
        index,
        kind: kind.clone(),
        name: name.clone(),
        source,
    };
    match kind.as_str() {
        "Deployment" => out.push(
            serde_json::from_value(json)
                .map(|d| Workload::Deployment(Box::new(d)))
                .map_err(schema),
        ),
        "DaemonSet" => out.push(
            serde_json::from_value(json)
                .map(|d| Workload::DaemonSet(Box::new(d)))
                .map_err(schema),
        ),
        k if k == "List" || k.ends_with("List") => {
            if let Some(serde_json::Value::Array(items)) =
                json.get_mut("items").map(serde_json::Value::take)
            {
                for item in items {
                    collect(index, item, out, skipped);
                }
            }
        }
        _ => skipped.push(format!("{kind} {name}")),
    }
}

#[cfg(test)]
mod reference_tests {
    use super::*;

    fn r(namespace: &str, name: &str) -> WorkloadRef {
        WorkloadRef {
            kind: WorkloadKind::Deployment,
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    #[test]
    fn only_names_kubernetes_could_give_reach_a_url() {
        assert!(is_valid_reference(&r("shop", "web")));
        assert!(is_valid_reference(&r("a-1", "web.v2-0")));
        for (ns, name) in [
            ("shop", "../../secrets"),
            ("shop", "a/b"),
            ("", "web"),
            ("Shop", "web"),
            ("shop", "web?x=1"),
            ("shop", "-web"),
            ("shop", "web..v2"),
            ("shop", ""),
        ] {
            assert!(!is_valid_reference(&r(ns, name)), "{ns}/{name}");
        }
        assert!(!is_valid_reference(&r(&"a".repeat(64), "web")));
        assert!(!is_valid_reference(&r("shop", &"a".repeat(254))));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NGINX: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: nginx, namespace: web, uid: u1, generation: 2}
spec:
  replicas: 2
  selector: {matchLabels: {app: nginx}}
  template:
    metadata: {labels: {app: nginx}}
    spec:
      initContainers: [{name: init, image: "busybox:1.36"}]
      containers:
      - {name: nginx, image: "nginx:1.14.0"}
      - {name: sidecar, image: "localhost:5000/backup/library_envoy:1"}
      - {name: bad, image: "Nginx:latest"}
status:
  observedGeneration: 2
  replicas: 2
  updatedReplicas: 2
  readyReplicas: 2
  availableReplicas: 2
  conditions: [{type: Available, status: "True"}]
---
apiVersion: v1
kind: List
items:
- apiVersion: apps/v1
  kind: DaemonSet
  metadata: {name: fluentd}
  spec:
    selector: {matchLabels: {app: f}}
    template:
      metadata: {labels: {app: f}}
      spec: {containers: [{name: fluentd, image: "fluent/fluentd:v1.16"}]}
- apiVersion: v1
  kind: Service
  metadata: {name: svc}
"#;

    #[test]
    fn reads_documents_and_lists() {
        let (workloads, skipped) = Workload::from_yaml(NGINX);
        assert_eq!(workloads.len(), 2);
        assert_eq!(skipped, vec!["Service svc".to_string()]);
        let ds = workloads[1].as_ref().unwrap();
        assert_eq!(ds.reference().namespace, "default");
        assert_eq!(ds.reference().kind, WorkloadKind::DaemonSet);
    }

    #[test]
    fn plans_images_and_reports_invalid_ones() {
        let (workloads, _) = Workload::from_yaml(NGINX);
        let d = workloads[0].as_ref().unwrap();
        let naming = NamingPolicy::flat("localhost:5000/backup".parse().unwrap());
        let plan = d.plan(&naming);
        let pairs: Vec<_> = plan
            .event
            .images
            .iter()
            .map(|i| {
                (
                    i.container.as_str(),
                    i.init,
                    i.source.as_str(),
                    i.target.as_str(),
                )
            })
            .collect();
        assert_eq!(
            pairs,
            vec![
                (
                    "init",
                    true,
                    "docker.io/library/busybox:1.36",
                    "localhost:5000/backup/library_busybox:1.36"
                ),
                (
                    "nginx",
                    false,
                    "docker.io/library/nginx:1.14.0",
                    "localhost:5000/backup/library_nginx:1.14.0"
                ),
            ]
        );
        assert_eq!(plan.invalid.len(), 1);
        assert_eq!(plan.invalid[0].container, "bad");
        assert!(
            plan.invalid[0].error.contains("lowercase"),
            "{}",
            plan.invalid[0].error
        );
        assert_eq!((plan.event.uid.as_str(), plan.event.generation), ("u1", 2));
    }

    #[test]
    fn ready_rule() {
        let (workloads, _) = Workload::from_yaml(NGINX);
        let Workload::Deployment(mut d) = workloads[0].as_ref().unwrap().clone() else {
            panic!("not a deployment")
        };
        assert!(Workload::Deployment(d.clone()).is_ready());
        d.metadata.generation = Some(3);
        assert!(
            !Workload::Deployment(d.clone()).is_ready(),
            "status is of an older spec"
        );
        d.metadata.generation = Some(2);
        d.status.as_mut().unwrap().ready_replicas = Some(1);
        assert!(!Workload::Deployment(d).is_ready());
        let ds = workloads[1].as_ref().unwrap();
        assert!(!ds.is_ready(), "no status yet");
    }

    #[test]
    fn bad_yaml_and_schema_are_errors() {
        let (w, _) = Workload::from_yaml("kind: Deployment\nspec: {replicas: notanumber}\n");
        assert!(matches!(w[0], Err(DocumentError::Schema { .. })));
        let (w, _) = Workload::from_yaml("a: [unclosed\n");
        assert!(matches!(w[0], Err(DocumentError::Yaml { .. })));
    }
}
