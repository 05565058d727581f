//! Admission as kube-apiserver does it, for what image-backup and its users write: custom
//! resources against their CRD's structural schema (types, required, enum, pattern, lengths,
//! bounds, known formats, `nullable`, `x-kubernetes-preserve-unknown-fields`,
//! `x-kubernetes-int-or-string`; unknown fields pruned, or refused/warned per `fieldValidation`)
//! and the validation rules of the built-in kinds the product and its users write most
//! (Deployment, DaemonSet, Namespace, ConfigMap, Secret, ServiceAccount, RBAC, Events).
//! Errors are 422 Invalid with one cause per field, worded as the real server words them, so a
//! write that a cluster refuses is refused here too.

use serde_json::{Map, Value, json};

use super::error::ApiError;
use super::resources::Resource;

/// How unknown fields are treated (`?fieldValidation=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    /// 400 BadRequest naming the unknown fields.
    Strict,
    /// Dropped, with a `Warning` header each (the server's default).
    Warn,
    /// Dropped silently.
    Ignore,
}

impl FieldValidation {
    /// From the query parameter (default: Warn, as kube-apiserver).
    pub fn from_query(v: Option<&String>) -> Self {
        match v.map(String::as_str) {
            Some("Strict") => FieldValidation::Strict,
            Some("Ignore") => FieldValidation::Ignore,
            _ => FieldValidation::Warn,
        }
    }
}

/// One invalid field: `(reason, field, message)` as `metav1.StatusCause`.
#[derive(Debug, Clone)]
struct Cause {
    reason: &'static str,
    field: String,
    message: String,
}

/// Formats kube-apiserver knows; any other draws a warning on the CRD (the list lives with the
/// CRD the product generates, which must use only these).
pub use shared::crd::KNOWN_FORMATS;

/// Validates (and prunes) `object` about to be stored for `resource`; `old` is the stored
/// object on updates. Returns the warnings to send back.
pub fn admit(
    resource: &Resource,
    object: &mut Value,
    old: Option<&Value>,
    status_write: bool,
    mode: FieldValidation,
) -> Result<Vec<String>, ApiError> {
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let mut causes = Vec::new();
    let mut unknown = Vec::new();
    let mut warnings = Vec::new();
    if let Some(schema) = &resource.schema {
        let mut body = object.clone();
        if let Some(map) = body.as_object_mut() {
            // apiVersion, kind and metadata are the server's; only the rest follows the schema.
            for k in ["apiVersion", "kind", "metadata"] {
                map.remove(k);
            }
        }
        check(schema, &mut body, "", &mut causes, &mut unknown);
        if !unknown.is_empty() {
            match (mode, status_write) {
                (FieldValidation::Strict, false) => {
                    let list: Vec<String> = unknown
                        .iter()
                        .map(|u| format!("unknown field \"{u}\""))
                        .collect();
                    return Err(ApiError::bad_request(format!(
                        "strict decoding error: {}",
                        list.join(", ")
                    )));
                }
                (FieldValidation::Warn, false) => {
                    warnings.extend(unknown.iter().map(|u| format!("unknown field \"{u}\"")));
                }
                _ => {}
            }
        }
        if let (Some(map), Some(pruned)) = (object.as_object_mut(), body.as_object()) {
            map.retain(|k, _| matches!(k.as_str(), "apiVersion" | "kind" | "metadata"));
            for (k, v) in pruned {
                map.insert(k.clone(), v.clone());
            }
        }
    } else {
        builtin_rules(resource, object, old, &mut causes);
        if resource.plural == "customresourcedefinitions" {
            for version in object["spec"]["versions"].as_array().into_iter().flatten() {
                unknown_formats(&version["schema"]["openAPIV3Schema"], &mut warnings);
            }
        }
    }
    if causes.is_empty() {
        return Ok(warnings);
    }
    let kind = if resource.group.is_empty() {
        resource.kind.clone()
    } else {
        format!("{}.{}", resource.kind, resource.group)
    };
    let detail: Vec<String> = causes
        .iter()
        .map(|c| format!("{}: {}", c.field, c.message))
        .collect();
    let mut e = ApiError::invalid(format!("{kind} \"{name}\" is invalid: {}", join(&detail)));
    e.details = Some(json!({
        "name": name, "group": resource.group, "kind": resource.kind,
        "causes": causes.iter().map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field})).collect::<Vec<_>>(),
    }));
    Err(e)
}

/// A watch's list options, checked as kube-apiserver's `validateWatchOptions` does:
/// `sendInitialEvents` needs `resourceVersionMatch=NotOlderThan` and the WatchList feature
/// (`watch_list`: off, the server refuses every streaming list as kube-apiserver with the gate
/// off does, 422 Invalid on `ListOptions.meta.k8s.io`), and `resourceVersionMatch` on a watch
/// needs `sendInitialEvents`.
pub fn watch_options(
    query: &std::collections::BTreeMap<String, String>,
    watch_list: bool,
) -> Result<(), ApiError> {
    let forbidden = |field: &str, message: &str| Cause {
        reason: "FieldValueForbidden",
        field: field.into(),
        message: format!("Forbidden: {message}"),
    };
    let initial = query.get("sendInitialEvents");
    let matching = query.get("resourceVersionMatch").filter(|m| !m.is_empty());
    let mut causes = Vec::new();
    if initial.is_some() {
        if matching.map(String::as_str) != Some("NotOlderThan") {
            causes.push(forbidden(
                "resourceVersionMatch",
                "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            ));
        }
        if !watch_list {
            causes.push(forbidden(
                "sendInitialEvents",
                "sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled",
            ));
        }
    }
    if let Some(m) = matching {
        if initial.is_none() {
            causes.push(forbidden(
                "resourceVersionMatch",
                "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
            ));
        }
        if m != "NotOlderThan" {
            causes.push(Cause {
                reason: "FieldValueNotSupported",
                field: "resourceVersionMatch".into(),
                message: format!("Unsupported value: {m:?}: supported values: \"NotOlderThan\""),
            });
        }
    }
    if causes.is_empty() {
        return Ok(());
    }
    let detail: Vec<String> = causes
        .iter()
        .map(|c| format!("{}: {}", c.field, c.message))
        .collect();
    let mut e = ApiError::invalid(format!(
        "ListOptions.meta.k8s.io \"\" is invalid: {}",
        join(&detail)
    ));
    e.details = Some(json!({
        "group": "meta.k8s.io", "kind": "ListOptions",
        "causes": causes.iter().map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field})).collect::<Vec<_>>(),
    }));
    Err(e)
}

fn join(parts: &[String]) -> String {
    if parts.len() == 1 {
        parts[0].clone()
    } else {
        format!("[{}]", parts.join(", "))
    }
}

fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => format!("\"{s}\""),
        other => other.to_string(),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn join_path(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Validates `value` at `path` against `schema`, pruning unknown fields (recorded in `unknown`).
fn check(
    schema: &Value,
    value: &mut Value,
    path: &str,
    causes: &mut Vec<Cause>,
    unknown: &mut Vec<String>,
) {
    let invalid = |causes: &mut Vec<Cause>, message: String| {
        causes.push(Cause {
            reason: "FieldValueInvalid",
            field: path.to_string(),
            message,
        })
    };
    if value.is_null() {
        if schema["nullable"].as_bool() != Some(true) && !schema["type"].is_null() {
            invalid(
                causes,
                format!(
                    "Invalid value: \"null\": {path} in body must be of type {}: \"null\"",
                    schema["type"].as_str().unwrap_or("object")
                ),
            );
        }
        return;
    }
    if schema["x-kubernetes-int-or-string"].as_bool() == Some(true) {
        if !(value.is_string() || value.is_i64() || value.is_u64()) {
            invalid(
                causes,
                format!(
                    "Invalid value: \"{}\": {path} in body must be of type integer or string: \"{}\"",
                    type_name(value),
                    type_name(value)
                ),
            );
        }
        return;
    }
    if let Some(ty) = schema["type"].as_str() {
        let actual = type_name(value);
        let fits = actual == ty || (ty == "number" && actual == "integer");
        if !fits {
            invalid(
                causes,
                format!(
                    "Invalid value: \"{actual}\": {path} in body must be of type {ty}: \"{actual}\""
                ),
            );
            return;
        }
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        let list: Vec<String> = allowed.iter().map(shown).collect();
        causes.push(Cause {
            reason: "FieldValueNotSupported",
            field: path.to_string(),
            message: format!(
                "Unsupported value: {}: supported values: {}",
                shown(value),
                list.join(", ")
            ),
        });
    }
    match value {
        Value::Object(map) => check_object(schema, map, path, causes, unknown),
        Value::Array(items) => {
            if let Some(min) = schema["minItems"].as_u64()
                && (items.len() as u64) < min
            {
                invalid(
                    causes,
                    format!(
                        "Invalid value: {}: {path} in body should have at least {min} items",
                        items.len()
                    ),
                );
            }
            if let Some(max) = schema["maxItems"].as_u64()
                && (items.len() as u64) > max
            {
                causes.push(Cause {
                    reason: "FieldValueTooMany",
                    field: path.to_string(),
                    message: format!("Too many: {}: must have at most {max} items", items.len()),
                });
            }
            let item_schema = &schema["items"];
            if item_schema.is_object() {
                for (i, item) in items.iter_mut().enumerate() {
                    check(item_schema, item, &format!("{path}[{i}]"), causes, unknown);
                }
            }
        }
        Value::String(s) => {
            let len = s.chars().count() as u64;
            if let Some(max) = schema["maxLength"].as_u64()
                && len > max
            {
                causes.push(Cause {
                    reason: "FieldValueTooLong",
                    field: path.to_string(),
                    message: format!("Too long: may not be more than {max} bytes"),
                });
            }
            if let Some(min) = schema["minLength"].as_u64()
                && len < min
            {
                invalid(
                    causes,
                    format!(
                        "Invalid value: \"{s}\": {path} in body should be at least {min} chars long"
                    ),
                );
            }
            if let Some(pattern) = schema["pattern"].as_str()
                && regex::Regex::new(pattern).is_ok_and(|r| !r.is_match(s))
            {
                invalid(
                    causes,
                    format!("Invalid value: \"{s}\": {path} in body should match '{pattern}'"),
                );
            }
            if schema["format"].as_str() == Some("date-time")
                && chrono::DateTime::parse_from_rfc3339(s).is_err()
            {
                invalid(
                    causes,
                    format!(
                        "Invalid value: \"{s}\": {path} in body must be of type date-time: \"{s}\""
                    ),
                );
            }
        }
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(0.0);
            if let Some(min) = schema["minimum"].as_f64()
                && x < min
            {
                invalid(
                    causes,
                    format!(
                        "Invalid value: {n}: {path} in body should be greater than or equal to {min}"
                    ),
                );
            }
            if let Some(max) = schema["maximum"].as_f64()
                && x > max
            {
                invalid(
                    causes,
                    format!(
                        "Invalid value: {n}: {path} in body should be less than or equal to {max}"
                    ),
                );
            }
            if schema["format"].as_str() == Some("int32")
                && (x < i32::MIN as f64 || x > i32::MAX as f64)
            {
                invalid(
                    causes,
                    format!("Invalid value: {n}: {path} in body must be of type int32"),
                );
            }
        }
        _ => {}
    }
}

fn check_object(
    schema: &Value,
    map: &mut Map<String, Value>,
    path: &str,
    causes: &mut Vec<Cause>,
    unknown: &mut Vec<String>,
) {
    let properties = schema["properties"].as_object();
    // Defaults from the schema, as the server applies them before validating.
    for (key, property) in properties.into_iter().flatten() {
        if let Some(default) = property.get("default")
            && !map.contains_key(key)
        {
            map.insert(key.clone(), default.clone());
        }
    }
    let preserve = schema["x-kubernetes-preserve-unknown-fields"].as_bool() == Some(true);
    let additional = &schema["additionalProperties"];
    let keys: Vec<String> = map.keys().cloned().collect();
    for key in keys {
        let child_path = join_path(path, &key);
        let child_schema = properties
            .and_then(|p| p.get(&key))
            .or_else(|| additional.is_object().then_some(additional));
        match child_schema {
            Some(s) => {
                // A null in a field that is not nullable is dropped, as the server prunes it.
                if map.get(&key).is_some_and(Value::is_null)
                    && s["nullable"].as_bool() != Some(true)
                {
                    map.remove(&key);
                    continue;
                }
                if let Some(v) = map.get_mut(&key) {
                    check(s, v, &child_path, causes, unknown);
                }
            }
            None if preserve || additional.as_bool() == Some(true) => {}
            None => {
                unknown.push(child_path);
                map.remove(&key);
            }
        }
    }
    for required in schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if !map.contains_key(required) {
            causes.push(Cause {
                reason: "FieldValueRequired",
                field: join_path(path, required),
                message: "Required value".into(),
            });
        }
    }
}

/// `unrecognized format "uint32"` for every format kube-apiserver does not know.
fn unknown_formats(schema: &Value, warnings: &mut Vec<String>) {
    match schema {
        Value::Object(map) => {
            if let Some(f) = map.get("format").and_then(Value::as_str)
                && !KNOWN_FORMATS.contains(&f)
            {
                let w = format!("unrecognized format \"{f}\"");
                if !warnings.contains(&w) {
                    warnings.push(w);
                }
            }
            for v in map.values() {
                unknown_formats(v, warnings);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| unknown_formats(v, warnings)),
        _ => {}
    }
}

/// kube-apiserver's rules for the built-in kinds image-backup and its users write most.
fn builtin_rules(
    resource: &Resource,
    object: &Value,
    old: Option<&Value>,
    causes: &mut Vec<Cause>,
) {
    let mut required = |field: &str| {
        causes.push(Cause {
            reason: "FieldValueRequired",
            field: field.into(),
            message: "Required value".into(),
        });
    };
    let missing = |v: &Value| v.is_null() || v.as_str() == Some("");
    match (resource.group.as_str(), resource.kind.as_str()) {
        ("apps", "Deployment" | "DaemonSet" | "StatefulSet" | "ReplicaSet") => {
            let spec = &object["spec"];
            if spec["selector"].is_null() {
                required("spec.selector");
            }
            let template = &spec["template"];
            let containers = template["spec"]["containers"].as_array();
            if containers.is_none_or(|c| c.is_empty()) {
                required("spec.template.spec.containers");
            }
            // Container names are unique across init and regular containers.
            let mut names = std::collections::HashSet::new();
            let mut duplicates = Vec::new();
            for (field, list) in [
                (
                    "initContainers",
                    template["spec"]["initContainers"].as_array(),
                ),
                ("containers", containers),
            ] {
                for (i, c) in list.into_iter().flatten().enumerate() {
                    if missing(&c["name"]) {
                        required(&format!("spec.template.spec.{field}[{i}].name"));
                    } else if let Some(name) = c["name"].as_str()
                        && !names.insert(name)
                    {
                        duplicates.push(Cause {
                            reason: "FieldValueDuplicate",
                            field: format!("spec.template.spec.{field}[{i}].name"),
                            message: format!("Duplicate value: \"{name}\""),
                        });
                    }
                    if missing(&c["image"]) {
                        required(&format!("spec.template.spec.{field}[{i}].image"));
                    }
                }
            }
            if let Some(n) = spec["replicas"].as_i64()
                && n < 0
            {
                causes.push(Cause {
                    reason: "FieldValueInvalid",
                    field: "spec.replicas".into(),
                    message: format!("Invalid value: {n}: must be greater than or equal to 0"),
                });
            }
            causes.extend(duplicates);
            let labels = template["metadata"]["labels"].as_object();
            if let Some(wanted) = spec["selector"]["matchLabels"].as_object() {
                let matches = wanted
                    .iter()
                    .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v));
                if !matches {
                    causes.push(Cause {
                        reason: "FieldValueInvalid",
                        field: "spec.template.metadata.labels".into(),
                        message: format!(
                            "Invalid value: {}: `selector` does not match template `labels`",
                            serde_json::to_string(&template["metadata"]["labels"])
                                .unwrap_or_default()
                        ),
                    });
                }
            }
            if let Some(old) = old
                && !old["spec"]["selector"].is_null()
                && old["spec"]["selector"] != spec["selector"]
            {
                causes.push(Cause {
                    reason: "FieldValueInvalid",
                    field: "spec.selector".into(),
                    message: format!(
                        "Invalid value: {}: field is immutable",
                        serde_json::to_string(&spec["selector"]).unwrap_or_default()
                    ),
                });
            }
        }
        ("", "Namespace") => {
            let name = object["metadata"]["name"].as_str().unwrap_or("");
            let label = !name.is_empty()
                && name.len() <= 63
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && name.starts_with(|c: char| c.is_ascii_alphanumeric())
                && name.ends_with(|c: char| c.is_ascii_alphanumeric());
            if !label {
                causes.push(Cause {
                    reason: "FieldValueInvalid",
                    field: "metadata.name".into(),
                    message: format!("Invalid value: \"{name}\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"),
                });
            }
        }
        ("", "ConfigMap" | "Secret") => {
            for field in ["data", "stringData", "binaryData"] {
                for key in object[field]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, _)| k)
                {
                    let ok = !key.is_empty()
                        && key.len() <= 253
                        && key
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
                    if !ok {
                        causes.push(Cause {
                            reason: "FieldValueInvalid",
                            field: format!("{field}[{key}]"),
                            message: format!("Invalid value: \"{key}\": a valid config key must consist of alphanumeric characters, '-', '_' or '.'"),
                        });
                    }
                }
            }
        }
        ("rbac.authorization.k8s.io", "ClusterRoleBinding" | "RoleBinding") => {
            for f in ["apiGroup", "kind", "name"] {
                if missing(&object["roleRef"][f]) {
                    required(&format!("roleRef.{f}"));
                }
            }
            for (i, s) in object["subjects"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                if missing(&s["kind"]) {
                    required(&format!("subjects[{i}].kind"));
                }
                if missing(&s["name"]) {
                    required(&format!("subjects[{i}].name"));
                }
                if s["kind"] == "ServiceAccount" && missing(&s["namespace"]) {
                    required(&format!("subjects[{i}].namespace"));
                }
            }
        }
        ("rbac.authorization.k8s.io", "ClusterRole" | "Role") => {
            for (i, r) in object["rules"].as_array().into_iter().flatten().enumerate() {
                if r["verbs"].as_array().is_none_or(|v| v.is_empty()) {
                    required(&format!("rules[{i}].verbs"));
                }
            }
        }
        ("events.k8s.io", "Event") => {
            for f in [
                "eventTime",
                "reportingController",
                "reportingInstance",
                "action",
                "reason",
            ] {
                if missing(&object[f]) {
                    required(f);
                }
            }
            let series = &object["series"];
            if !series.is_null() && missing(&series["lastObservedTime"]) {
                required("series.lastObservedTime");
            }
            if !matches!(object["type"].as_str(), Some("Normal" | "Warning")) {
                causes.push(Cause {
                    reason: "FieldValueNotSupported",
                    field: "type".into(),
                    message: format!(
                        "Unsupported value: {}: supported values: \"Normal\", \"Warning\"",
                        shown(&object["type"])
                    ),
                });
            }
            if !series.is_null() && series["count"].as_i64().is_none_or(|c| c < 2) {
                causes.push(Cause {
                    reason: "FieldValueInvalid",
                    field: "series.count".into(),
                    message: "Invalid value: should be at least 2".into(),
                });
            }
            if object["note"].as_str().is_some_and(|n| n.len() > 1024) {
                causes.push(Cause {
                    reason: "FieldValueTooLong",
                    field: "note".into(),
                    message: "Too long: may not be more than 1024 bytes".into(),
                });
            }
        }
        ("", "Event") if object["involvedObject"].is_null() => required("involvedObject"),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Value {
        json!({"type": "object", "required": ["spec"], "properties": {
            "spec": {"type": "object", "required": ["source"], "properties": {
                "source": {"type": "string"}, "n": {"type": "integer", "format": "int32", "minimum": 0},
                "retries": {"type": "integer", "default": 3},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}},
            "status": {"type": "object", "nullable": true, "properties": {
                "phase": {"type": "string", "enum": ["Pending", "Completed"]}}}}})
    }

    fn resource() -> Resource {
        Resource {
            group: "k8slab.io".into(),
            version: "v1".into(),
            plural: "things".into(),
            singular: "thing".into(),
            kind: "Thing".into(),
            namespaced: false,
            status_subresource: true,
            short_names: vec![],
            categories: vec![],
            printer_columns: vec![],
            tracks_generation: true,
            schema: Some(schema()),
            schema_fn: None,
            definition: None,
        }
    }

    #[test]
    fn custom_resources_follow_their_schema() {
        let r = resource();
        let mut ok = json!({"metadata": {"name": "a"}, "spec": {"source": "s", "free": {"x": 1}}});
        assert!(admit(&r, &mut ok, None, false, FieldValidation::Strict).is_ok());
        assert_eq!(ok["spec"]["retries"], 3, "defaults applied");
        assert_eq!(ok["spec"]["free"]["x"], 1, "preserved");
        let mut wrong_type = json!({"metadata": {"name": "a"}, "spec": {"source": 123}});
        let e = admit(&r, &mut wrong_type, None, false, FieldValidation::Warn).unwrap_err();
        assert_eq!((e.code, e.reason), (422, "Invalid"));
        assert!(e.message.contains("spec.source: Invalid value: \"integer\": spec.source in body must be of type string"), "{}", e.message);
        let mut missing = json!({"metadata": {"name": "a"}, "spec": {}});
        let e = admit(&r, &mut missing, None, false, FieldValidation::Warn).unwrap_err();
        assert!(
            e.message.contains("spec.source: Required value"),
            "{}",
            e.message
        );
        let mut bad_enum = json!({"metadata": {"name": "a"}, "spec": {"source": "s"}, "status": {"phase": "Sleeping"}});
        let e = admit(&r, &mut bad_enum, None, true, FieldValidation::Warn).unwrap_err();
        assert!(
            e.message.contains("Unsupported value: \"Sleeping\""),
            "{}",
            e.message
        );
        let mut negative = json!({"metadata": {"name": "a"}, "spec": {"source": "s", "n": -1}});
        assert!(admit(&r, &mut negative, None, false, FieldValidation::Warn).is_err());
    }

    #[test]
    fn unknown_fields_are_refused_warned_or_pruned() {
        let r = resource();
        let obj = || json!({"metadata": {"name": "a"}, "spec": {"source": "s", "extra": 1}, "status": {"phase": "Pending", "junk": true}});
        let e = admit(&r, &mut obj(), None, false, FieldValidation::Strict).unwrap_err();
        assert_eq!(e.code, 400);
        assert!(
            e.message.contains("unknown field \"spec.extra\""),
            "{}",
            e.message
        );
        let mut o = obj();
        let warnings = admit(&r, &mut o, None, false, FieldValidation::Warn).unwrap();
        assert!(
            warnings.contains(&"unknown field \"spec.extra\"".to_string()),
            "{warnings:?}"
        );
        assert!(o["spec"].get("extra").is_none() && o["status"].get("junk").is_none());
        let mut o = obj();
        assert!(
            admit(&r, &mut o, None, true, FieldValidation::Strict)
                .unwrap()
                .is_empty(),
            "status writes prune silently"
        );
        assert!(o["status"].get("junk").is_none());
    }

    #[test]
    fn negative_replicas_and_two_containers_of_one_name_are_refused() {
        let r = super::super::resources::find_builtin("apps", "deployments").expect("deployments");
        let deployment = |replicas: i64, init: &str| {
            json!({"metadata": {"name": "a", "namespace": "b"},
                   "spec": {"replicas": replicas, "selector": {"matchLabels": {"a": "b"}},
                            "template": {"metadata": {"labels": {"a": "b"}},
                                         "spec": {"initContainers": [{"name": init, "image": "x"}],
                                                  "containers": [{"name": "web", "image": "x"}, {"name": "side", "image": "y"}]}}}})
        };
        let mut causes = Vec::new();
        builtin_rules(&r, &deployment(1, "init"), None, &mut causes);
        assert!(causes.is_empty(), "{causes:?}");
        builtin_rules(&r, &deployment(-1, "web"), None, &mut causes);
        let found: Vec<(&str, &str)> = causes
            .iter()
            .map(|c| (c.reason, c.field.as_str()))
            .collect();
        assert_eq!(
            found,
            [
                ("FieldValueInvalid", "spec.replicas"),
                (
                    "FieldValueDuplicate",
                    "spec.template.spec.containers[0].name"
                ),
            ]
        );
        assert_eq!(
            causes[0].message,
            "Invalid value: -1: must be greater than or equal to 0"
        );
    }
}

#[cfg(test)]
mod event_tests {
    use super::*;

    #[test]
    fn an_event_series_counts_from_two_and_has_a_last_observed_time() {
        let r = super::super::resources::find_builtin("events.k8s.io", "events").expect("events");
        let event = |series: Value| {
            json!({"metadata": {"name": "e", "namespace": "d"}, "eventTime": "2026-01-01T00:00:00.000000Z",
                   "reportingController": "c", "reportingInstance": "i", "action": "A", "reason": "R",
                   "type": "Normal", "series": series})
        };
        let fields = |series: Value| {
            let mut causes = Vec::new();
            builtin_rules(&r, &event(series), None, &mut causes);
            causes.into_iter().map(|c| c.field).collect::<Vec<_>>()
        };
        assert!(fields(Value::Null).is_empty());
        assert!(
            fields(json!({"count": 2, "lastObservedTime": "2026-01-01T00:00:01.000000Z"}))
                .is_empty()
        );
        assert_eq!(
            fields(json!({"count": 1, "lastObservedTime": "2026-01-01T00:00:01.000000Z"})),
            ["series.count"]
        );
        assert_eq!(fields(json!({"count": 3})), ["series.lastObservedTime"]);
    }
}
