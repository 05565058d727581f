//! Field ownership (`metadata.managedFields`), as kube-apiserver's structured-merge-diff keeps
//! it, for the cases people meet:
//!
//! - every write records who set what: an update (create, update, patch) makes its manager
//!   (`?fieldManager=`, else the User-Agent's product name) own the fields it changed, taking
//!   them from other managers; server-side apply makes its manager own exactly the fields of the
//!   applied configuration;
//! - apply reports a conflict (409, `Apply failed with N conflicts: conflict with "kubectl-create"
//!   using apps/v1: .spec.replicas`) when it would change a field another manager owns, unless
//!   `force=true`, which takes the field over;
//! - apply removes the fields its manager applied before and no longer applies, unless another
//!   manager owns them too;
//! - the sets are written as kube-apiserver writes them (`FieldsV1`: `f:` fields, `k:` list items
//!   by merge key, `v:` set members, `.` for an item itself).
//!
//! Lists are owned as the types' markers say (`+listType=map` items by their `+listMapKey`s,
//! `+listType=set` members one by one, everything else as a whole); objects of unknown type
//! (custom resources) key the pod-template lists by name and treat `finalizers` as a set.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use super::error::ApiError;
use super::patch::{self, Shape};
use super::protobuf::{ListRules, ListType, Property};

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    /// An object's field.
    Field(String),
    /// A list item by its key (`{"name":"nginx"}`, as JSON).
    Key(String),
    /// A member of a set (the value as JSON).
    Member(String),
}

type Path = Vec<Step>;
type Fields = BTreeSet<Path>;
/// Fields with the values they have in one object.
type Leaves<'a> = std::collections::BTreeMap<Path, &'a Value>;

/// Metadata the server sets; nobody owns it.
const SERVER_METADATA: [&str; 10] = [
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
];

/// The part of `object` a write to `subresource` ("" or "status") manages.
fn managed_part(object: &Value, subresource: &str, has_status: bool) -> Value {
    let Some(map) = object.as_object() else {
        return Value::Null;
    };
    let mut part = Map::new();
    for (k, v) in map {
        let keep = match (subresource, k.as_str()) {
            (_, "apiVersion" | "kind") => false,
            ("status", field) => field == "status",
            (_, "status") => !has_status,
            _ => true,
        };
        if !keep {
            continue;
        }
        if k == "metadata" {
            let mut meta = v.as_object().cloned().unwrap_or_default();
            meta.retain(|f, _| !SERVER_METADATA.contains(&f.as_str()));
            if !meta.is_empty() {
                part.insert(k.clone(), Value::Object(meta));
            }
        } else {
            part.insert(k.clone(), v.clone());
        }
    }
    Value::Object(part)
}

/// How a list's items are owned.
enum Items {
    /// By these key fields (`+listType=map`, or the merge key).
    Keyed(Vec<&'static str>),
    /// Each scalar on its own (`+listType=set`).
    Members,
    /// The list as a whole.
    Atomic,
}

fn items_of(parent: &Shape, field: &str, property: Option<Property>) -> Items {
    match property.map(|p| p.list) {
        Some(ListRules {
            list_type: ListType::Map(keys),
            ..
        }) => Items::Keyed(keys.to_vec()),
        Some(ListRules {
            list_type: ListType::Set,
            ..
        }) => Items::Members,
        Some(ListRules {
            list_type: ListType::Atomic,
            ..
        }) => Items::Atomic,
        Some(ListRules {
            merge_key: Some(k), ..
        }) => Items::Keyed(vec![k]),
        Some(ListRules { merge: true, .. }) => Items::Members,
        Some(_) => Items::Atomic,
        None if parent.is_typed() => Items::Atomic,
        None if field == "finalizers" => Items::Members,
        None => patch::merge_key(field).map_or(Items::Atomic, |k| Items::Keyed(vec![k])),
    }
}

/// An item's key: the key fields it has, as JSON (`{"containerPort":80,"protocol":"TCP"}`).
fn item_key(item: &Value, keys: &[&str]) -> Option<String> {
    let present: Map<String, Value> = keys
        .iter()
        .filter_map(|k| item.get(*k).map(|v| ((*k).to_string(), v.clone())))
        .collect();
    (!present.is_empty()).then(|| Value::Object(present).to_string())
}

/// Where a value sits: its shape, its parent's shape, its field name, and what the parent's
/// type says of that field.
type Place<'s> = (Shape, &'s Shape, &'s str, Option<Property>);

/// The leaves of `value`, and, for keyed list items and set members, the items themselves,
/// with their values.
fn leaves<'a>(value: &'a Value, path: &mut Path, place: Place<'_>, out: &mut Leaves<'a>) {
    let (shape, parent, field, property) = place;
    match value {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                let (child, p) = shape.child(k);
                path.push(Step::Field(k.clone()));
                leaves(v, path, (child, &shape, k, p), out);
                path.pop();
            }
        }
        Value::Array(items) => {
            let rule = items_of(parent, field, property);
            let keyed: Option<Vec<String>> = match &rule {
                Items::Keyed(keys) => items.iter().map(|i| item_key(i, keys)).collect(),
                _ => None,
            };
            let scalars = items.iter().all(|i| !i.is_object() && !i.is_array());
            if let Some(keys) = keyed {
                for (item, key) in items.iter().zip(keys) {
                    path.push(Step::Key(key));
                    out.insert(path.clone(), item);
                    leaves(item, path, (shape, &Shape::Untyped, "", None), out);
                    path.pop();
                }
            } else if matches!(rule, Items::Members) && scalars {
                for item in items {
                    path.push(Step::Member(item.to_string()));
                    out.insert(path.clone(), item);
                    path.pop();
                }
            } else {
                out.insert(path.clone(), value);
            }
        }
        _ => {
            out.insert(path.clone(), value);
        }
    }
}

fn leaves_of(part: &Value, shape: Shape) -> Leaves<'_> {
    let mut out = Leaves::new();
    leaves(
        part,
        &mut Vec::new(),
        (shape, &Shape::Untyped, "", None),
        &mut out,
    );
    out.remove(&Vec::new());
    out
}

#[cfg(test)]
fn fields_of(part: &Value, shape: Shape) -> Fields {
    leaves_of(part, shape).into_keys().collect()
}

/// Whether the field `p` changes from `old` to `new`: an item or member that appears, or a
/// leaf whose value differs.
fn changes(p: &Path, old: &Leaves<'_>, new: &Leaves<'_>) -> bool {
    match p.last() {
        Some(Step::Key(_)) | Some(Step::Member(_)) => !old.contains_key(p),
        _ => old.get(p) != new.get(p),
    }
}

/// Removes what `path` names from `value`.
fn remove_at(value: &mut Value, path: &[Step]) {
    let Some((last, parent_path)) = path.split_last() else {
        return;
    };
    let mut parent = value;
    for step in parent_path {
        let next = match step {
            Step::Field(f) => parent.get_mut(f),
            Step::Key(k) => {
                let Ok(key) = serde_json::from_str::<Map<String, Value>>(k) else {
                    return;
                };
                parent.as_array_mut().and_then(|items| {
                    items
                        .iter_mut()
                        .find(|item| key.iter().all(|(kk, kv)| item.get(kk) == Some(kv)))
                })
            }
            Step::Member(_) => None,
        };
        match next {
            Some(n) => parent = n,
            None => return,
        }
    }
    match last {
        Step::Field(f) => {
            if let Some(m) = parent.as_object_mut() {
                m.remove(f);
            }
        }
        Step::Key(k) => {
            if let (Ok(key), Some(items)) = (
                serde_json::from_str::<Map<String, Value>>(k),
                parent.as_array_mut(),
            ) {
                items.retain(|item| !key.iter().all(|(kk, kv)| item.get(kk) == Some(kv)));
            }
        }
        Step::Member(m) => {
            if let (Ok(member), Some(items)) =
                (serde_json::from_str::<Value>(m), parent.as_array_mut())
            {
                items.retain(|item| *item != member);
            }
        }
    }
}

/// `FieldsV1` of a set.
fn to_fields_v1(fields: &Fields) -> Value {
    fn insert(node: &mut Map<String, Value>, path: &[Step], item: bool) {
        let Some((step, rest)) = path.split_first() else {
            if item {
                node.insert(".".into(), json!({}));
            }
            return;
        };
        let name = match step {
            Step::Field(f) => format!("f:{f}"),
            Step::Key(k) => format!("k:{k}"),
            Step::Member(m) => format!("v:{m}"),
        };
        if let Value::Object(child) = node.entry(name).or_insert_with(|| json!({})) {
            insert(child, rest, item);
        }
    }
    let mut root = Map::new();
    for path in fields {
        insert(&mut root, path, matches!(path.last(), Some(Step::Key(_))));
    }
    Value::Object(root)
}

/// The set a `FieldsV1` value names.
fn from_fields_v1(value: &Value) -> Fields {
    fn walk(node: &Map<String, Value>, path: &mut Path, out: &mut Fields) {
        if node.is_empty() || node.contains_key(".") {
            out.insert(path.clone());
        }
        for (name, child) in node {
            let step = if let Some(f) = name.strip_prefix("f:") {
                Step::Field(f.to_string())
            } else if let Some(k) = name.strip_prefix("k:") {
                Step::Key(k.to_string())
            } else if let Some(v) = name.strip_prefix("v:") {
                Step::Member(v.to_string())
            } else {
                continue;
            };
            path.push(step);
            walk(child.as_object().unwrap_or(&Map::new()), path, out);
            path.pop();
        }
    }
    let mut out = Fields::new();
    if let Some(root) = value.as_object()
        && !root.is_empty()
    {
        walk(root, &mut Vec::new(), &mut out);
        out.remove(&Vec::new());
    }
    out
}

/// A path as kube-apiserver prints it in conflicts (`.spec.template.spec.containers[name="web"].image`).
fn display(path: &[Step]) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Field(f) => {
                out.push('.');
                out.push_str(f);
            }
            Step::Key(k) => {
                let key: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
                let inner: Vec<String> = key.iter().map(|(k, v)| format!("{k}={v}")).collect();
                out.push_str(&format!("[{}]", inner.join(",")));
            }
            Step::Member(m) => out.push_str(&format!("[={m}]")),
        }
    }
    out
}

/// One `managedFields` entry.
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    subresource: String,
    time: String,
    fields: Fields,
}

fn entries(object: &Value) -> Vec<Entry> {
    object["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let s = |f: &str| e[f].as_str().unwrap_or_default().to_string();
            Entry {
                manager: s("manager"),
                operation: s("operation"),
                api_version: s("apiVersion"),
                subresource: s("subresource"),
                time: s("time"),
                fields: from_fields_v1(&e["fieldsV1"]),
            }
        })
        .collect()
}

fn write_entries(object: &mut Value, entries: Vec<Entry>) {
    let list: Vec<Value> = entries
        .into_iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut v = json!({"manager": e.manager, "operation": e.operation, "apiVersion": e.api_version,
                "time": e.time, "fieldsType": "FieldsV1", "fieldsV1": to_fields_v1(&e.fields)});
            if !e.subresource.is_empty() {
                v["subresource"] = e.subresource.into();
            }
            v
        })
        .collect();
    if let Some(meta) = object["metadata"].as_object_mut() {
        if list.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(list));
        }
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Who manages a write: `?fieldManager=`, else the product name of the User-Agent
/// (`kubectl/v1.33.1 (linux/amd64)` is `kubectl`), as kube-apiserver names it.
pub fn manager_name(field_manager: Option<&str>, user_agent: Option<&str>) -> String {
    match field_manager.filter(|m| !m.is_empty()) {
        Some(m) => m.to_string(),
        None => user_agent
            .and_then(|ua| ua.split('/').next())
            .filter(|p| !p.is_empty())
            .unwrap_or("unknown")
            .to_string(),
    }
}

/// What a write is about.
pub struct Write<'a> {
    /// The manager's name.
    pub manager: &'a str,
    /// `apiVersion` the write used.
    pub api_version: &'a str,
    /// "" or "status".
    pub subresource: &'a str,
    /// Whether the resource has a status subresource (then main writes do not manage status).
    pub has_status: bool,
    /// The kind's type, whose markers say how its lists are owned.
    pub shape: Shape,
}

/// Records an update (create, update, non-apply patch) of `new` over `old`: the manager owns the
/// fields it changed, which other managers no longer own. `new` keeps `old`'s entries
/// (clients cannot rewrite them here).
pub fn record_update(old: Option<&Value>, new: &mut Value, write: &Write<'_>) {
    let new_part = managed_part(new, write.subresource, write.has_status);
    let new_leaves = leaves_of(&new_part, write.shape);
    let (mut all, changed, removed): (Vec<Entry>, Fields, Fields) = match old {
        None => (
            Vec::new(),
            new_leaves.keys().cloned().collect(),
            Fields::new(),
        ),
        Some(old) => {
            let old_part = managed_part(old, write.subresource, write.has_status);
            let old_leaves = leaves_of(&old_part, write.shape);
            let changed = new_leaves
                .keys()
                .filter(|p| changes(p, &old_leaves, &new_leaves))
                .cloned()
                .collect();
            let removed = old_leaves
                .keys()
                .filter(|p| !new_leaves.contains_key(*p))
                .cloned()
                .collect();
            (entries(old), changed, removed)
        }
    };
    for e in &mut all {
        e.fields
            .retain(|p| !changed.contains(p) && !removed.contains(p));
    }
    let mine = all.iter().position(|e| {
        e.manager == write.manager && e.operation == "Update" && e.subresource == write.subresource
    });
    if changed.is_empty() && mine.is_none() {
        write_entries(new, all);
        return;
    }
    let entry = match mine {
        Some(i) => &mut all[i],
        None => {
            all.push(Entry {
                manager: write.manager.to_string(),
                operation: "Update".into(),
                api_version: write.api_version.to_string(),
                subresource: write.subresource.to_string(),
                time: now(),
                fields: Fields::new(),
            });
            let last = all.len() - 1;
            &mut all[last]
        }
    };
    if !changed.is_empty() {
        entry.time = now();
        entry.api_version = write.api_version.to_string();
    }
    entry.fields.extend(changed);
    write_entries(new, all);
}

/// Server-side apply of `applied` onto `live` (the object as stored; `None` when the apply
/// creates it): the merged object with the manager's entry, or a 409 listing the conflicts.
pub fn apply(
    live: &Value,
    applied: &Value,
    write: &Write<'_>,
    force: bool,
) -> Result<Value, ApiError> {
    let applied_part = managed_part(applied, write.subresource, write.has_status);
    let applied_leaves = leaves_of(&applied_part, write.shape);
    let applied_fields: Fields = applied_leaves.keys().cloned().collect();
    let live_part = managed_part(live, write.subresource, write.has_status);
    let live_leaves = leaves_of(&live_part, write.shape);
    let mut all = entries(live);
    // Only a field that exists with another value can conflict.
    let differs = |p: &Path| match p.last() {
        Some(Step::Key(_)) | Some(Step::Member(_)) => !live_leaves.contains_key(p),
        _ => live_leaves.contains_key(p) && changes(p, &live_leaves, &applied_leaves),
    };
    // A manager is its name, operation and subresource: `kubectl scale`'s Update of /scale is
    // another manager than `kubectl apply --server-side`, though both are "kubectl".
    let others = |e: &Entry| {
        !(e.manager == write.manager
            && e.operation == "Apply"
            && e.subresource == write.subresource)
    };
    let mut conflicts: Vec<(String, String, String)> = Vec::new();
    for p in applied_fields.iter().filter(|p| differs(p)) {
        for e in all.iter().filter(|e| others(e) && e.fields.contains(p)) {
            let who = if e.subresource.is_empty() {
                format!("\"{}\"", e.manager)
            } else {
                format!("\"{}\" with subresource \"{}\"", e.manager, e.subresource)
            };
            conflicts.push((who, e.api_version.clone(), display(p)));
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(ApiError::apply_conflicts(&conflicts));
    }
    // Taken over (forced) or newly set: other managers no longer own what changed.
    for p in applied_fields.iter().filter(|p| differs(p)) {
        for e in all.iter_mut().filter(|e| others(e)) {
            e.fields.remove(p);
        }
    }
    // What this manager applied before and applies no more goes, unless someone else owns it.
    let mine = all.iter().position(|e| {
        e.manager == write.manager && e.operation == "Apply" && e.subresource == write.subresource
    });
    let mut merged = live.clone();
    if let Some(i) = mine {
        let dropped: Vec<Path> = all[i].fields.difference(&applied_fields).cloned().collect();
        for p in dropped.iter().rev() {
            let owned_elsewhere = all
                .iter()
                .enumerate()
                .any(|(j, e)| j != i && e.fields.contains(p));
            if !owned_elsewhere {
                remove_at(&mut merged, p);
            }
        }
    }
    patch::strategic_merge_as(&mut merged, applied, write.shape);
    let entry = Entry {
        manager: write.manager.to_string(),
        operation: "Apply".into(),
        api_version: write.api_version.to_string(),
        subresource: write.subresource.to_string(),
        time: now(),
        fields: applied_fields,
    };
    match mine {
        Some(i) => all[i] = entry,
        None => all.push(entry),
    }
    write_entries(&mut merged, all);
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(replicas: i64, image: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "web", "uid": "u", "labels": {"app": "web"}},
               "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"name": "web", "image": image}]}}},
               "status": {"replicas": 1}})
    }

    const MAIN: Write<'static> = Write {
        manager: "kubectl-create",
        api_version: "apps/v1",
        subresource: "",
        has_status: true,
        shape: Shape::Untyped,
    };

    #[test]
    fn fields_round_trip_through_fields_v1() {
        let fields = fields_of(
            &managed_part(&deployment(2, "nginx"), "", true),
            Shape::of("apps/v1", "Deployment"),
        );
        let v1 = to_fields_v1(&fields);
        assert_eq!(
            v1["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"web\"}"],
            json!({".": {}, "f:image": {}, "f:name": {}})
        );
        assert!(
            v1["f:metadata"].get("f:uid").is_none(),
            "server metadata is nobody's"
        );
        assert!(
            v1.get("f:status").is_none(),
            "status is the status subresource's"
        );
        assert_eq!(from_fields_v1(&v1), fields);
    }

    #[test]
    fn an_update_takes_the_fields_it_changes() {
        let mut created = deployment(2, "nginx");
        record_update(None, &mut created, &MAIN);
        let mut scaled = created.clone();
        scaled["spec"]["replicas"] = 3.into();
        let scale = Write {
            manager: "kubectl-scale",
            ..MAIN
        };
        record_update(Some(&created), &mut scaled, &scale);
        let entries = entries(&scaled);
        assert_eq!(entries.len(), 2);
        let replicas = vec![Step::Field("spec".into()), Step::Field("replicas".into())];
        assert!(
            !entries[0].fields.contains(&replicas),
            "kubectl-create lost it"
        );
        assert_eq!(entries[1].manager, "kubectl-scale");
        assert_eq!(entries[1].fields, [replicas].into_iter().collect());
    }

    #[test]
    fn apply_conflicts_forces_and_removes_what_it_stops_applying() {
        let mut live = deployment(2, "nginx");
        record_update(None, &mut live, &MAIN);
        let ssa = Write {
            manager: "deployer",
            ..MAIN
        };
        // Same values: shared, no conflict.
        let same = json!({"spec": {"replicas": 2}});
        let live = apply(&live, &same, &ssa, false).expect("no conflict");
        // A different value of a field kubectl-create owns: a conflict naming it.
        let other = json!({"spec": {"replicas": 5}});
        let err = apply(&live, &other, &ssa, false).expect_err("conflict");
        assert_eq!(err.code, 409);
        assert!(
            err.message
                .contains("conflict with \"kubectl-create\" using apps/v1: .spec.replicas"),
            "{}",
            err.message
        );
        // Forced: taken over.
        let live = apply(&live, &other, &ssa, true).expect("forced");
        assert_eq!(live["spec"]["replicas"], 5);
        // Applying without a field it alone owned removes it.
        let with_label = json!({"metadata": {"labels": {"tier": "web"}}, "spec": {"replicas": 5}});
        let live = apply(&live, &with_label, &ssa, false).expect("apply");
        assert_eq!(live["metadata"]["labels"]["tier"], "web");
        let without = json!({"spec": {"replicas": 5}});
        let live = apply(&live, &without, &ssa, false).expect("apply");
        assert!(live["metadata"]["labels"].get("tier").is_none(), "{live}");
        assert_eq!(
            live["metadata"]["labels"]["app"], "web",
            "kubectl-create's stays"
        );
    }

    #[test]
    fn list_items_are_owned_by_the_keys_the_types_mark() {
        let pod = json!({"spec": {"containers": [{"name": "web", "image": "nginx",
            "ports": [{"containerPort": 80, "protocol": "TCP"}], "args": ["-v"]}],
            "tolerations": [{"key": "a"}]}, "metadata": {"finalizers": ["x"]}});
        let v1 = to_fields_v1(&fields_of(&pod, Shape::of("v1", "Pod")));
        let container = &v1["f:spec"]["f:containers"]["k:{\"name\":\"web\"}"];
        assert!(
            container["f:ports"]
                .get("k:{\"containerPort\":80,\"protocol\":\"TCP\"}")
                .is_some(),
            "{v1}"
        );
        assert_eq!(container["f:args"], json!({}), "atomic");
        assert_eq!(v1["f:spec"]["f:tolerations"], json!({}), "atomic");
        assert!(
            v1["f:metadata"]["f:finalizers"].get("v:\"x\"").is_some(),
            "a set"
        );
    }

    #[test]
    fn managers_are_named_as_kube_apiserver_names_them() {
        assert_eq!(manager_name(Some("helm"), Some("kubectl/v1.33")), "helm");
        assert_eq!(
            manager_name(None, Some("kubectl/v1.33.1 (linux/amd64)")),
            "kubectl"
        );
        assert_eq!(manager_name(Some(""), None), "unknown");
    }
}
