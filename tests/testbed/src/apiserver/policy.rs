//! The RBAC policy a fresh cluster has, and the ClusterRole aggregation controller:
//!
//! - `cluster-admin` (everything) bound to `system:masters`;
//! - `admin`, `edit` and `view`, whose rules are aggregated from every ClusterRole labelled
//!   `rbac.authorization.k8s.io/aggregate-to-{admin,edit,view}: "true"` (the built-in
//!   `system:aggregate-to-*` roles, and any a user adds for their CRDs);
//! - `system:discovery`, `system:basic-user` and `system:public-info-viewer`, bound to every
//!   authenticated user, so discovery, `/version` and `kubectl auth can-i` work for all.
//!
//! The rules are a condensed form of kube-apiserver's bootstrap policy: the same resources and
//! verbs for the kinds people bind these roles for.

use serde_json::{Value, json};

use super::error::ApiError;
use super::resources;
use super::store::{Key, Store};

const AGGREGATE: &str = "rbac.authorization.k8s.io/aggregate-to-";
const READ: [&str; 3] = ["get", "list", "watch"];
const WRITE: [&str; 5] = ["create", "delete", "deletecollection", "patch", "update"];

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
}

/// What `view` may read.
fn view_rules() -> Vec<Value> {
    vec![
        rule(
            &[""],
            &[
                "configmaps",
                "endpoints",
                "persistentvolumeclaims",
                "persistentvolumeclaims/status",
                "pods",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "serviceaccounts",
                "services",
                "services/status",
                "bindings",
                "events",
                "limitranges",
                "namespaces/status",
                "pods/log",
                "pods/status",
                "replicationcontrollers/status",
                "resourcequotas",
                "resourcequotas/status",
                "namespaces",
            ],
            &READ,
        ),
        rule(&["discovery.k8s.io"], &["endpointslices"], &READ),
        rule(
            &["apps"],
            &[
                "controllerrevisions",
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "statefulsets",
                "statefulsets/scale",
                "statefulsets/status",
            ],
            &READ,
        ),
        rule(
            &["autoscaling"],
            &[
                "horizontalpodautoscalers",
                "horizontalpodautoscalers/status",
            ],
            &READ,
        ),
        rule(
            &["batch"],
            &["cronjobs", "cronjobs/status", "jobs", "jobs/status"],
            &READ,
        ),
        rule(
            &["policy"],
            &["poddisruptionbudgets", "poddisruptionbudgets/status"],
            &READ,
        ),
        rule(
            &["networking.k8s.io"],
            &["ingresses", "ingresses/status", "networkpolicies"],
            &READ,
        ),
    ]
}

/// What `edit` may change (and the secrets it may read, which `view` may not).
fn edit_rules() -> Vec<Value> {
    vec![
        rule(
            &[""],
            &[
                "pods/attach",
                "pods/exec",
                "pods/portforward",
                "pods/proxy",
                "secrets",
                "services/proxy",
            ],
            &READ,
        ),
        rule(&[""], &["serviceaccounts"], &["impersonate"]),
        rule(
            &[""],
            &[
                "pods",
                "pods/attach",
                "pods/exec",
                "pods/portforward",
                "pods/proxy",
                "configmaps",
                "endpoints",
                "persistentvolumeclaims",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "secrets",
                "serviceaccounts",
                "services",
                "services/proxy",
            ],
            &WRITE,
        ),
        rule(&[""], &["serviceaccounts/token"], &["create"]),
        rule(
            &["apps"],
            &[
                "daemonsets",
                "deployments",
                "deployments/rollback",
                "deployments/scale",
                "replicasets",
                "replicasets/scale",
                "statefulsets",
                "statefulsets/scale",
            ],
            &WRITE,
        ),
        rule(&["autoscaling"], &["horizontalpodautoscalers"], &WRITE),
        rule(&["batch"], &["cronjobs", "jobs"], &WRITE),
        rule(
            &["networking.k8s.io"],
            &["ingresses", "networkpolicies"],
            &WRITE,
        ),
        rule(&["policy"], &["poddisruptionbudgets"], &WRITE),
        rule(&["discovery.k8s.io"], &["endpointslices"], &WRITE),
    ]
}

/// What `admin` adds: the namespace's RBAC.
fn admin_rules() -> Vec<Value> {
    let all: Vec<&str> = READ.iter().chain(WRITE.iter()).copied().collect();
    vec![
        rule(
            &["rbac.authorization.k8s.io"],
            &["rolebindings", "roles"],
            &all,
        ),
        rule(
            &["authorization.k8s.io"],
            &["localsubjectaccessreviews"],
            &["create"],
        ),
    ]
}

fn cluster_role(name: &str, labels: Value, body: Value) -> Value {
    let mut role = json!({"metadata": {"name": name, "labels": labels, "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"}}});
    if let (Some(role), Some(body)) = (role.as_object_mut(), body.as_object()) {
        role.extend(body.clone());
    }
    role
}

fn binding(name: &str, role: &str, groups: &[&str]) -> Value {
    let subjects: Vec<Value> = groups
        .iter()
        .map(|g| json!({"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": g}))
        .collect();
    json!({"metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
           "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
           "subjects": subjects})
}

/// Creates the bootstrap ClusterRoles and ClusterRoleBindings, then aggregates.
pub fn bootstrap(store: &mut Store) -> Result<(), ApiError> {
    let roles = resources::find_builtin("rbac.authorization.k8s.io", "clusterroles")
        .ok_or_else(|| ApiError::internal("clusterroles are a built-in resource"))?;
    let bindings = resources::find_builtin("rbac.authorization.k8s.io", "clusterrolebindings")
        .ok_or_else(|| ApiError::internal("clusterrolebindings are a built-in resource"))?;
    let defaults = json!({"kubernetes.io/bootstrapping": "rbac-defaults"});
    let aggregated = |to: &str| json!({"aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {format!("{AGGREGATE}{to}"): "true"}}]}, "rules": []});
    let labelled = |to: &str| {
        let mut labels = defaults.clone();
        labels[format!("{AGGREGATE}{to}")] = "true".into();
        labels
    };
    let everything = json!({"rules": [
        {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
        {"nonResourceURLs": ["*"], "verbs": ["*"]},
    ]});
    let discovery = json!({"rules": [{"nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/openapi", "/openapi/*", "/readyz", "/version", "/version/"], "verbs": ["get"]}]});
    let public_info = json!({"rules": [{"nonResourceURLs": ["/healthz", "/livez", "/readyz", "/version", "/version/"], "verbs": ["get"]}]});
    let basic_user = json!({"rules": [
        {"apiGroups": ["authorization.k8s.io"], "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"], "verbs": ["create"]},
        {"apiGroups": ["authentication.k8s.io"], "resources": ["selfsubjectreviews"], "verbs": ["create"]},
    ]});
    let mut all_roles = vec![
        cluster_role("cluster-admin", defaults.clone(), everything),
        cluster_role("system:discovery", defaults.clone(), discovery),
        cluster_role("system:public-info-viewer", defaults.clone(), public_info),
        cluster_role("system:basic-user", defaults.clone(), basic_user),
        cluster_role(
            "system:aggregate-to-view",
            labelled("view"),
            json!({"rules": view_rules()}),
        ),
        cluster_role(
            "system:aggregate-to-edit",
            labelled("edit"),
            json!({"rules": edit_rules()}),
        ),
        cluster_role(
            "system:aggregate-to-admin",
            labelled("admin"),
            json!({"rules": admin_rules()}),
        ),
    ];
    // admin has what edit has, edit what view has (labelled to aggregate up, as upstream).
    all_roles.push(cluster_role("view", labelled("edit"), aggregated("view")));
    all_roles.push(cluster_role("edit", labelled("admin"), aggregated("edit")));
    all_roles.push(cluster_role("admin", defaults.clone(), aggregated("admin")));
    for role in all_roles {
        let name = role["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        store.create(&roles, Key::new(&roles, "", &name), role)?;
    }
    for b in [
        binding("cluster-admin", "cluster-admin", &["system:masters"]),
        binding(
            "system:discovery",
            "system:discovery",
            &["system:authenticated"],
        ),
        binding(
            "system:basic-user",
            "system:basic-user",
            &["system:authenticated"],
        ),
        binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            &["system:authenticated", "system:unauthenticated"],
        ),
    ] {
        let name = b["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        store.create(&bindings, Key::new(&bindings, "", &name), b)?;
    }
    aggregate(store);
    Ok(())
}

/// Whether `labels` satisfy a label selector (matchLabels and matchExpressions).
fn selects(selector: &Value, labels: &Value) -> bool {
    let label = |k: &str| labels[k].as_str();
    let labels_ok = selector["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| label(k) == v.as_str());
    let expressions_ok = selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|e| {
            let key = e["key"].as_str().unwrap_or_default();
            let values: Vec<&str> = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            match (e["operator"].as_str(), label(key)) {
                (Some("In"), Some(v)) => values.contains(&v),
                (Some("NotIn"), v) => v.is_none_or(|v| !values.contains(&v)),
                (Some("Exists"), v) => v.is_some(),
                (Some("DoesNotExist"), v) => v.is_none(),
                _ => false,
            }
        });
    labels_ok && expressions_ok
}

/// The aggregation controller: every ClusterRole with an `aggregationRule` gets the rules of
/// the ClusterRoles its selectors pick (repeated until nothing changes, so aggregates of
/// aggregates settle).
pub fn aggregate(store: &mut Store) {
    let Some(resource) = resources::find_builtin("rbac.authorization.k8s.io", "clusterroles")
    else {
        return;
    };
    for _ in 0..4 {
        let roles = store.list(&resource.storage_key(), None);
        let mut changed = false;
        for role in roles.iter().filter(|r| r["aggregationRule"].is_object()) {
            let selectors = role["aggregationRule"]["clusterRoleSelectors"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let mut rules: Vec<Value> = Vec::new();
            for other in &roles {
                if other["metadata"]["name"] == role["metadata"]["name"]
                    || !selectors
                        .iter()
                        .any(|s| selects(s, &other["metadata"]["labels"]))
                {
                    continue;
                }
                for r in other["rules"].as_array().into_iter().flatten() {
                    if !rules.contains(r) {
                        rules.push(r.clone());
                    }
                }
            }
            if role["rules"].as_array() != Some(&rules) {
                let mut updated = role.clone();
                updated["rules"] = Value::Array(rules);
                let key = Key::of(&resource, role);
                changed |= store.update(&resource, &key, updated, false).is_ok();
            }
        }
        if !changed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_match_labels_and_expressions() {
        let labels = json!({"a": "1", "b": "2"});
        assert!(selects(&json!({"matchLabels": {"a": "1"}}), &labels));
        assert!(!selects(&json!({"matchLabels": {"a": "2"}}), &labels));
        assert!(selects(
            &json!({"matchExpressions": [{"key": "b", "operator": "In", "values": ["2", "3"]}, {"key": "c", "operator": "DoesNotExist"}]}),
            &labels
        ));
        assert!(!selects(
            &json!({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}),
            &labels
        ));
    }
}
