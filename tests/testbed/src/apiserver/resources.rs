//! The resource types the test API server serves: the built-in kinds of core, apps, batch,
//! autoscaling, networking, discovery, storage, scheduling, node, policy, rbac,
//! admissionregistration, certificates, flowcontrol, coordination, events.k8s.io and
//! apiextensions, each described by k8s-openapi's own metadata (group, version, kind, plural,
//! scope, schema), and every version of every CustomResourceDefinition created at run time.

use serde_json::Value;

/// One served resource (a group/version/resource triple and what the server knows of it).
#[derive(Debug, Clone)]
pub struct Resource {
    /// API group; empty for core.
    pub group: String,
    /// Version.
    pub version: String,
    /// Plural name used in URLs.
    pub plural: String,
    /// Singular name.
    pub singular: String,
    /// Kind.
    pub kind: String,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Whether `/status` is a subresource (then main writes ignore `status` and vice versa).
    pub status_subresource: bool,
    /// Short names (`ib`, `deploy`).
    pub short_names: Vec<String>,
    /// Categories (`all`).
    pub categories: Vec<String>,
    /// Extra Table columns (CRD additionalPrinterColumns).
    pub printer_columns: Vec<PrinterColumn>,
    /// Whether spec changes bump `metadata.generation` (all but a few core kinds).
    pub tracks_generation: bool,
    /// The OpenAPI v3 schema (CRDs: their `openAPIV3Schema`), served for `kubectl explain`.
    pub schema: Option<Value>,
    /// Built-ins: k8s-openapi's schema of the kind, generated when OpenAPI is asked for.
    pub schema_fn: Option<fn() -> Value>,
    /// Built-ins: the name of k8s-openapi's definition of the kind
    /// (`io.k8s.api.apps.v1.Deployment`), as OpenAPI v2 lists it.
    pub definition: Option<String>,
}

/// The OpenAPI v3 schema of a built-in kind from k8s-openapi's `schemars` support, with its
/// definitions inlined so one document describes the kind.
fn schema_of<K: schemars::JsonSchema>() -> Value {
    let generator = schemars::generate::SchemaSettings::openapi3()
        .with(|s| s.inline_subschemas = true)
        .into_generator();
    let mut schema =
        serde_json::to_value(generator.into_root_schema_for::<K>()).unwrap_or_default();
    if let Some(m) = schema.as_object_mut() {
        m.remove("$schema");
        m.remove("title");
    }
    schema
}

/// A Table column evaluated from a simple JSONPath.
#[derive(Debug, Clone, PartialEq)]
pub struct PrinterColumn {
    /// Header.
    pub name: String,
    /// OpenAPI type (`string`, `integer`, `date`, ...).
    pub type_: String,
    /// `.spec.source`-style path.
    pub json_path: String,
    /// 0 shows by default; higher only with `-o wide`.
    pub priority: i64,
    /// Column description.
    pub description: String,
}

impl Resource {
    /// `apiVersion` of objects of this resource.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Whether `/scale` is served (the workloads with `spec.replicas`).
    pub fn scale_subresource(&self) -> bool {
        self.group == "apps"
            && matches!(
                self.plural.as_str(),
                "deployments" | "replicasets" | "statefulsets"
            )
    }

    /// The key objects are stored under (all versions of a group/resource share storage).
    pub fn storage_key(&self) -> String {
        // events.k8s.io Events are a view of the core Events.
        if self.group == "events.k8s.io" && self.plural == "events" {
            return "/events".into();
        }
        format!("{}/{}", self.group, self.plural)
    }

    /// Discovery entry (`APIResource`).
    pub fn api_resource(&self) -> Value {
        let mut verbs = vec![
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ];
        verbs.sort_unstable();
        let mut v = serde_json::json!({
            "name": self.plural, "singularName": self.singular, "namespaced": self.namespaced,
            "kind": self.kind, "verbs": verbs,
        });
        if !self.short_names.is_empty() {
            v["shortNames"] = serde_json::json!(self.short_names);
        }
        if !self.categories.is_empty() {
            v["categories"] = serde_json::json!(self.categories);
        }
        v
    }
}

fn builtin(
    group: &str,
    version: &str,
    plural: &str,
    kind: &str,
    namespaced: bool,
    status: bool,
    short: &[&str],
) -> Resource {
    Resource {
        group: group.into(),
        version: version.into(),
        plural: plural.into(),
        singular: kind.to_lowercase(),
        kind: kind.into(),
        namespaced,
        status_subresource: status,
        short_names: short.iter().map(|s| s.to_string()).collect(),
        categories: if matches!(
            kind,
            "Deployment"
                | "DaemonSet"
                | "ReplicaSet"
                | "StatefulSet"
                | "Pod"
                | "Service"
                | "Job"
                | "CronJob"
                | "ReplicationController"
                | "HorizontalPodAutoscaler"
        ) {
            vec!["all".into()]
        } else {
            vec![]
        },
        printer_columns: Vec::new(),
        tracks_generation: !matches!(
            kind,
            "Namespace"
                | "Secret"
                | "Event"
                | "Lease"
                | "ServiceAccount"
                | "ConfigMap"
                | "Service"
                | "Pod"
                | "Node"
                | "ClusterRole"
                | "ClusterRoleBinding"
                | "Role"
                | "RoleBinding"
        ),
        schema: None,
        schema_fn: None,
        definition: None,
    }
}

/// A built-in resource described by k8s-openapi's own metadata (group, version, kind, plural,
/// scope, schema, whether it has a status); its short names are kube-apiserver's, which
/// k8s-openapi does not carry.
fn of<K>(status: bool) -> Resource
where
    K: k8s_openapi::Resource + schemars::JsonSchema + 'static,
    K::Scope: 'static,
{
    let namespaced = std::any::TypeId::of::<K::Scope>()
        == std::any::TypeId::of::<k8s_openapi::NamespaceResourceScope>();
    let mut r = builtin(
        K::GROUP,
        K::VERSION,
        K::URL_PATH_SEGMENT,
        K::KIND,
        namespaced,
        status,
        short_names(K::GROUP, K::URL_PATH_SEGMENT),
    );
    r.schema_fn = Some(schema_of::<K>);
    r.definition = Some(K::schema_name().into_owned());
    r
}

/// kube-apiserver's short names.
fn short_names(group: &str, plural: &str) -> &'static [&'static str] {
    match (group, plural) {
        ("", "componentstatuses") => &["cs"],
        ("", "configmaps") => &["cm"],
        ("", "endpoints") => &["ep"],
        ("", "events") => &["ev"],
        ("", "limitranges") => &["limits"],
        ("", "namespaces") => &["ns"],
        ("", "nodes") => &["no"],
        ("", "persistentvolumeclaims") => &["pvc"],
        ("", "persistentvolumes") => &["pv"],
        ("", "pods") => &["po"],
        ("", "replicationcontrollers") => &["rc"],
        ("", "resourcequotas") => &["quota"],
        ("", "serviceaccounts") => &["sa"],
        ("", "services") => &["svc"],
        ("apps", "daemonsets") => &["ds"],
        ("apps", "deployments") => &["deploy"],
        ("apps", "replicasets") => &["rs"],
        ("apps", "statefulsets") => &["sts"],
        ("autoscaling", "horizontalpodautoscalers") => &["hpa"],
        ("batch", "cronjobs") => &["cj"],
        ("certificates.k8s.io", "certificatesigningrequests") => &["csr"],
        ("networking.k8s.io", "ingresses") => &["ing"],
        ("networking.k8s.io", "networkpolicies") => &["netpol"],
        ("policy", "poddisruptionbudgets") => &["pdb"],
        ("scheduling.k8s.io", "priorityclasses") => &["pc"],
        ("storage.k8s.io", "storageclasses") => &["sc"],
        ("apiextensions.k8s.io", "customresourcedefinitions") => &["crd", "crds"],
        _ => &[],
    }
}

// `generated_builtins()`: one `of::<K>(has_status)` per listable, stable resource type of
// k8s-openapi, read from its sources by the build script (build/k8s_openapi.rs).
include!(concat!(env!("OUT_DIR"), "/k8s_openapi_resources.rs"));

/// The OpenAPI definitions of every type k8s-openapi knows, keyed by their OpenAPI names
/// (`io.k8s.api.apps.v1.Deployment`), their references pointing under `/definitions` as in
/// OpenAPI v2 (generated once: OpenAPI v2 and the protobuf field names both read them).
pub fn definitions() -> &'static serde_json::Map<String, Value> {
    static DEFINITIONS: std::sync::OnceLock<serde_json::Map<String, Value>> =
        std::sync::OnceLock::new();
    DEFINITIONS.get_or_init(|| {
        let mut generator = schemars::generate::SchemaSettings::openapi3()
            .with(|s| s.definitions_path = "/definitions".into())
            .into_generator();
        generated_definitions(&mut generator);
        generator.take_definitions(true)
    })
}

/// One built-in resource by group and plural (from a list built once).
pub fn find_builtin(group: &str, plural: &str) -> Option<Resource> {
    builtins_once()
        .iter()
        .find(|r| r.group == group && r.plural == plural)
        .cloned()
}

fn builtins_once() -> &'static [Resource] {
    static BUILTINS: std::sync::OnceLock<Vec<Resource>> = std::sync::OnceLock::new();
    BUILTINS.get_or_init(builtins)
}

/// The built-in resources: every listable resource of a stable version that k8s-openapi knows.
pub fn builtins() -> Vec<Resource> {
    let mut all = generated_builtins();
    for r in &mut all {
        // The CRD schema is recursive (JSONSchemaProps) and cannot be inlined; it stays
        // loosely described.
        if r.group == "apiextensions.k8s.io" {
            r.schema_fn = None;
        }
    }
    all
}

/// The resources a CustomResourceDefinition object defines (one per served version).
pub fn from_crd(crd: &Value) -> Vec<Resource> {
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap_or_default().to_string();
    let names = &spec["names"];
    let plural = names["plural"].as_str().unwrap_or_default().to_string();
    let kind = names["kind"].as_str().unwrap_or_default().to_string();
    let singular = names["singular"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| kind.to_lowercase());
    let strings = |v: &Value| {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let namespaced = spec["scope"].as_str() != Some("Cluster");
    spec["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["served"].as_bool().unwrap_or(true))
        .map(|v| Resource {
            group: group.clone(),
            version: v["name"].as_str().unwrap_or_default().to_string(),
            plural: plural.clone(),
            singular: singular.clone(),
            kind: kind.clone(),
            namespaced,
            status_subresource: v["subresources"]["status"].is_object(),
            short_names: strings(&names["shortNames"]),
            categories: strings(&names["categories"]),
            printer_columns: v["additionalPrinterColumns"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| PrinterColumn {
                    name: c["name"].as_str().unwrap_or_default().to_string(),
                    type_: c["type"].as_str().unwrap_or("string").to_string(),
                    json_path: c["jsonPath"].as_str().unwrap_or_default().to_string(),
                    priority: c["priority"].as_i64().unwrap_or(0),
                    description: c["description"].as_str().unwrap_or_default().to_string(),
                })
                .collect(),
            tracks_generation: true,
            schema_fn: None,
            definition: None,
            schema: v["schema"]["openAPIV3Schema"]
                .as_object()
                .map(|o| Value::Object(o.clone())),
        })
        .collect()
}

/// Evaluates a simple JSONPath (`.spec.source`, `.status.conditions[0].type`, `.metadata.name`).
pub fn json_path<'a>(object: &'a Value, path: &str) -> Option<&'a Value> {
    let mut current = object;
    let path = path
        .trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .trim_start_matches('$');
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (name, index) = match part.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        if !name.is_empty() {
            current = current.get(name)?;
        }
        if let Some(i) = index {
            current = current.get(i)?;
        }
    }
    Some(current)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_paths() {
        let v = serde_json::json!({"spec": {"source": "s"}, "status": {"conditions": [{"type": "Ready"}]}});
        assert_eq!(json_path(&v, ".spec.source"), Some(&serde_json::json!("s")));
        assert_eq!(
            json_path(&v, ".status.conditions[0].type"),
            Some(&serde_json::json!("Ready"))
        );
        assert_eq!(json_path(&v, ".status.phase"), None);
    }
}
