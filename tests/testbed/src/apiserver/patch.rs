//! The four patch types kube-apiserver accepts:
//! - JSON merge patch (RFC 7386) and JSON patch (RFC 6902, `test` included) via `json-patch`;
//! - strategic merge patch: maps merge, `null` deletes, a built-in kind's lists merge as its
//!   types' `+patchStrategy=merge`/`+patchMergeKey` markers say (read from k8s-pb's sources:
//!   containers by `name`, container ports by `containerPort`, Service ports by `port`,
//!   tolerations not at all, finalizers as a set, ...; `$patch: delete` removes an item), other
//!   lists are replaced; `$setElementOrder`/`$retainKeys`/`$deleteFromPrimitiveList` directives
//!   are accepted and ignored. Objects of unknown type fall back to the pod-template lists'
//!   keys by field name;
//! - server-side apply: the applied configuration is merged into the live object with the
//!   strategic rules, with field ownership, conflicts and removal by [`super::managed`].

use serde_json::{Map, Value};

use super::error::ApiError;
use super::protobuf::{Property, TypeNode};

/// The key strategic merge (and field ownership) identifies a list's items by.
pub fn merge_key(field: &str) -> Option<&'static str> {
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets" => Some("name"),
        "ports" => Some("containerPort"),
        "volumeMounts" => Some("mountPath"),
        "conditions" => Some("type"),
        _ => None,
    }
}

/// Applies a JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

/// Applies a JSON patch; a failed `test` or a bad path is 422 Invalid.
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), ApiError> {
    let p: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
    json_patch::patch(target, &p).map_err(|e| {
        ApiError::invalid(format!(
            "the server rejected our request due to an error in our request: {e}"
        ))
    })
}

/// What is known of the value being walked: a built-in type (its lists merge by Kubernetes'
/// own markers), the values of a map of that type, or nothing (lists merge by the field names
/// of [`merge_key`]; custom resources).
#[derive(Debug, Clone, Copy)]
pub enum Shape {
    /// A built-in type.
    Typed(TypeNode),
    /// A map whose values are of this type (if a message).
    MapOf(Option<TypeNode>),
    /// Nothing known.
    Untyped,
}

impl Shape {
    /// The shape of a built-in kind's objects (`Untyped` for custom resources).
    pub fn of(api_version: &str, kind: &str) -> Self {
        TypeNode::of(api_version, kind).map_or(Shape::Untyped, Shape::Typed)
    }

    /// The shape of property `key` and, for a typed object, what the type says of it.
    pub fn child(&self, key: &str) -> (Shape, Option<Property>) {
        match self {
            Shape::Typed(node) => match node.property(key) {
                Some(p) if p.map => (Shape::MapOf(p.element), Some(p)),
                Some(p) => (p.element.map_or(Shape::Untyped, Shape::Typed), Some(p)),
                None => (Shape::Untyped, None),
            },
            Shape::MapOf(element) => (element.map_or(Shape::Untyped, Shape::Typed), None),
            Shape::Untyped => (Shape::Untyped, None),
        }
    }

    /// Whether the lists here follow a type's markers (then an unmarked list is atomic).
    pub fn is_typed(&self) -> bool {
        matches!(self, Shape::Typed(_))
    }
}

/// Applies a strategic merge patch to an object of unknown type (see the module docs).
pub fn strategic_merge(target: &mut Value, patch: &Value) {
    strategic_merge_as(target, patch, Shape::Untyped);
}

/// Applies a strategic merge patch to an object of `shape`: a built-in kind's lists merge as
/// its `+patchStrategy=merge`/`+patchMergeKey` markers say (every other list is replaced).
pub fn strategic_merge_as(target: &mut Value, patch: &Value, shape: Shape) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => merge_maps(t, p, shape),
        (t, p) => *t = strip_directives(p),
    }
}

/// How a list property merges: by this key, as a set of scalars, or not at all (replaced).
enum ListMerge {
    ByKey(&'static str),
    Scalars,
    Replace,
}

fn list_merge(shape: &Shape, key: &str, property: Option<Property>) -> ListMerge {
    match property {
        Some(p) if p.list.merge => match p.list.merge_key {
            Some(k) => ListMerge::ByKey(k),
            None => ListMerge::Scalars,
        },
        Some(_) => ListMerge::Replace,
        None if shape.is_typed() => ListMerge::Replace,
        None => merge_key(key).map_or(ListMerge::Replace, ListMerge::ByKey),
    }
}

fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

fn merge_maps(target: &mut Map<String, Value>, patch: &Map<String, Value>, shape: Shape) {
    if patch.get("$patch").and_then(Value::as_str) == Some("replace") {
        *target = strip_directives(&Value::Object(patch.clone()))
            .as_object()
            .cloned()
            .unwrap_or_default();
        return;
    }
    for (key, value) in patch {
        if key.starts_with('$') {
            continue;
        }
        if value.is_null() {
            target.remove(key);
            continue;
        }
        let (child, property) = shape.child(key);
        match (target.get_mut(key), value) {
            (Some(Value::Object(t)), Value::Object(p)) => merge_maps(t, p, child),
            (Some(Value::Array(t)), Value::Array(p)) => match list_merge(&shape, key, property) {
                ListMerge::ByKey(k) => merge_list(t, p, k, child),
                ListMerge::Scalars => {
                    for item in p {
                        if !t.contains(item) {
                            t.push(strip_directives(item));
                        }
                    }
                }
                ListMerge::Replace => {
                    target.insert(key.clone(), strip_directives(value));
                }
            },
            _ => {
                target.insert(key.clone(), strip_directives(value));
            }
        }
    }
}

fn merge_list(target: &mut Vec<Value>, patch: &[Value], key: &str, shape: Shape) {
    for item in patch {
        let id = item.get(key).cloned();
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        let position = id
            .as_ref()
            .and_then(|id| target.iter().position(|t| t.get(key) == Some(id)));
        match (position, delete) {
            (Some(i), true) => {
                target.remove(i);
            }
            (Some(i), false) => {
                if let (Value::Object(t), Value::Object(p)) = (&mut target[i], item) {
                    merge_maps(t, p, shape);
                }
            }
            (None, true) => {}
            (None, false) => target.push(strip_directives(item)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merge_merges_containers_by_name() {
        let mut live = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "a:1", "ports": [{"containerPort": 80}]},
            {"name": "b", "image": "b:1"}
        ]}}}});
        strategic_merge(
            &mut live,
            &json!({"spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
                "containers": [{"name": "b", "image": "b:2"}, {"name": "c", "image": "c:1"}, {"name": "a", "$patch": "delete"}]
            }}}}),
        );
        assert_eq!(
            live["spec"]["template"]["spec"]["containers"],
            json!([{"name": "b", "image": "b:2"}, {"name": "c", "image": "c:1"}])
        );
    }

    #[test]
    fn a_built_in_kind_merges_its_lists_as_its_markers_say() {
        let shape = Shape::of("v1", "Service");
        let mut live = json!({"metadata": {"finalizers": ["a"]},
            "spec": {"ports": [{"port": 80, "name": "http"}], "externalIPs": ["1.2.3.4"]}});
        strategic_merge_as(
            &mut live,
            &json!({"metadata": {"finalizers": ["b"]},
                    "spec": {"ports": [{"port": 443, "name": "https"}], "externalIPs": ["5.6.7.8"]}}),
            shape,
        );
        // Service ports merge by port; finalizers are a set; externalIPs have no merge marker.
        assert_eq!(
            live["spec"]["ports"],
            json!([{"port": 80, "name": "http"}, {"port": 443, "name": "https"}])
        );
        assert_eq!(live["metadata"]["finalizers"], json!(["a", "b"]));
        assert_eq!(live["spec"]["externalIPs"], json!(["5.6.7.8"]));
        // Tolerations are replaced (no merge marker), containers merge by name.
        let pod = Shape::of("v1", "Pod");
        let mut live = json!({"spec": {"tolerations": [{"key": "a"}], "containers": [{"name": "a", "image": "a:1"}]}});
        strategic_merge_as(
            &mut live,
            &json!({"spec": {"tolerations": [{"key": "b"}], "containers": [{"name": "b", "image": "b:1"}]}}),
            pod,
        );
        assert_eq!(live["spec"]["tolerations"], json!([{"key": "b"}]));
        assert_eq!(live["spec"]["containers"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn other_lists_replace_and_null_deletes() {
        let mut live = json!({"a": [1, 2], "b": {"c": 1, "d": 2}});
        strategic_merge(&mut live, &json!({"a": [3], "b": {"c": null}}));
        assert_eq!(live, json!({"a": [3], "b": {"d": 2}}));
    }

    #[test]
    fn json_patch_test_failure_is_invalid() {
        let mut v = json!({"a": 1});
        let err =
            json_patch(&mut v, &json!([{"op": "test", "path": "/a", "value": 2}])).unwrap_err();
        assert_eq!((err.code, err.reason), (422, "Invalid"));
        json_patch(&mut v, &json!([{"op": "test", "path": "/a", "value": 1}, {"op": "replace", "path": "/a", "value": 5}])).unwrap();
        assert_eq!(v, json!({"a": 5}));
    }
}
