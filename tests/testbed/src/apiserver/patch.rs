//! The four patch types kube-apiserver accepts:
//! - JSON merge patch (RFC 7386) and JSON patch (RFC 6902, `test` included) via `json-patch`;
//! - strategic merge patch, simplified: maps merge, `null` deletes, lists of the pod template
//!   that Kubernetes merges by key (`containers`/`initContainers`/`volumes`/`env`/
//!   `imagePullSecrets` by `name`, `ports` by `containerPort`, `volumeMounts` by `mountPath`,
//!   `conditions` by `type`) merge element-wise (`$patch: delete` removes one), other lists are
//!   replaced, and `$setElementOrder`/`$retainKeys` directives are accepted and ignored;
//! - server-side apply: the applied configuration is merged into the live object with the
//!   strategic rules, with field ownership, conflicts and removal by [`super::managed`].

use serde_json::{Map, Value};

use super::error::ApiError;

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

/// Applies a strategic merge patch (see the module docs for what is simplified).
pub fn strategic_merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => merge_maps(t, p),
        (t, p) => *t = strip_directives(p),
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

fn merge_maps(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
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
        match (target.get_mut(key), value, merge_key(key)) {
            (Some(Value::Object(t)), Value::Object(p), _) => merge_maps(t, p),
            (Some(Value::Array(t)), Value::Array(p), Some(k)) => merge_list(t, p, k),
            _ => {
                target.insert(key.clone(), strip_directives(value));
            }
        }
    }
}

fn merge_list(target: &mut Vec<Value>, patch: &[Value], key: &str) {
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
                    merge_maps(t, p);
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
