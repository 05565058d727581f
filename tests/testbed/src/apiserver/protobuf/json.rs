//! A message between protobuf and the JSON the server stores: fields by their JSON names, and
//! the types with a JSON form of their own ([`super::special`]) in that form.

use serde_json::{Map, Value};

use super::schema::{Message, names};
use super::special;
use super::wire;

type Result<T> = std::result::Result<T, String>;

/// How deep messages may nest (kube-apiserver's objects stay far below; a hostile body does not).
const MAX_DEPTH: usize = 64;

/// Numbers and booleans of common kinds that are no pointers in Go (so protobuf carries their
/// zero whether set or not) and `omitempty` in JSON, by message: their zeros are left out, as
/// kube-apiserver's JSON leaves them out. Every other zero number or `false` is kept, because
/// for a pointer (`replicas: 0`, `runAsUser: 0`, `automountServiceAccountToken: false`) it is
/// meaningful, and protobuf does not say which fields are pointers.
const OMITTED_ZEROS: &[(&str, &[&str])] = &[
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        &["generation"],
    ),
    (
        "io.k8s.api.core.v1.Container",
        &["stdin", "stdin_once", "tty"],
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainerCommon",
        &["stdin", "stdin_once", "tty"],
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        &["host_network", "host_pid", "host_ipc"],
    ),
    ("io.k8s.api.core.v1.ContainerPort", &["host_port"]),
    ("io.k8s.api.core.v1.ServicePort", &["node_port"]),
    ("io.k8s.api.core.v1.VolumeMount", &["read_only"]),
    (
        "io.k8s.api.core.v1.Probe",
        &[
            "initial_delay_seconds",
            "timeout_seconds",
            "period_seconds",
            "success_threshold",
            "failure_threshold",
        ],
    ),
    (
        "io.k8s.api.core.v1.ServiceSpec",
        &["publish_not_ready_addresses", "health_check_node_port"],
    ),
    (
        "io.k8s.api.apps.v1.DeploymentSpec",
        &["min_ready_seconds", "paused"],
    ),
    ("io.k8s.api.apps.v1.ReplicaSetSpec", &["min_ready_seconds"]),
    ("io.k8s.api.apps.v1.DaemonSetSpec", &["min_ready_seconds"]),
    ("io.k8s.api.apps.v1.StatefulSetSpec", &["min_ready_seconds"]),
];

fn omitted_zero(m: &Message, field: &str, v: &Value) -> bool {
    (v.as_i64() == Some(0) || v.as_bool() == Some(false))
        && OMITTED_ZEROS
            .iter()
            .any(|(name, fields)| *name == m.name && fields.contains(&field))
}

/// Decodes `bytes` as `m` into its JSON form.
///
/// Go writes every field that is not a pointer, so an unset string arrives as `""`; those are
/// left out, as Go's JSON encoder leaves out empty `omitempty` strings, and so are the zeros
/// of [`OMITTED_ZEROS`].
pub(super) fn to_json(m: &'static Message, bytes: &[u8], depth: usize) -> Result<Value> {
    if depth > MAX_DEPTH {
        return Err(format!("messages nest deeper than {MAX_DEPTH}"));
    }
    let fields = wire::decode(m, bytes, depth)?;
    if let Some(v) = special::to_json(m, &fields)? {
        return Ok(v);
    }
    let names = names(m);
    let mut object = Map::new();
    for (tag, v) in fields {
        if v.is_null() || v.as_str() == Some("") {
            continue;
        }
        let name = m
            .fields
            .iter()
            .find(|f| f.tag == tag)
            .map_or("", |f| f.name);
        if omitted_zero(m, name, &v) {
            continue;
        }
        if names.is_inline(tag) {
            if let Value::Object(inner) = v {
                object.extend(inner);
            }
            continue;
        }
        if let Some(json) = names.json(tag) {
            object.insert(json.to_string(), v);
        }
    }
    Ok(Value::Object(object))
}

/// Encodes the JSON form `v` as `m`. Properties the message has no field for (an object's
/// `apiVersion` and `kind`, which travel in the envelope) are left out.
pub(super) fn from_json(m: &'static Message, v: &Value, depth: usize) -> Result<Vec<u8>> {
    if depth > MAX_DEPTH {
        return Err(format!("objects nest deeper than {MAX_DEPTH}"));
    }
    let fields = match special::from_json(m, v)? {
        Some(fields) => fields,
        None => {
            let object = v
                .as_object()
                .ok_or_else(|| format!("{}: {v} is not an object", m.name))?;
            let names = names(m);
            let mut fields: wire::Fields = object
                .iter()
                .filter(|(_, v)| !v.is_null())
                .filter_map(|(k, v)| names.field(k).map(|i| (m.fields[i].tag, v.clone())))
                .filter(|(tag, _)| !names.is_inline(*tag))
                .collect();
            // An embedded struct takes its properties from this same object (it has no field
            // for the others).
            for tag in names.inline() {
                fields.insert(*tag, v.clone());
            }
            fields
        }
    };
    wire::encode(m, &fields, depth)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::protobuf::schema::message;

    #[test]
    fn every_omitted_zero_names_a_field_that_exists() {
        for (name, fields) in OMITTED_ZEROS {
            let m = message(name).unwrap_or_else(|| panic!("{name} is a message"));
            for field in *fields {
                assert!(
                    m.fields.iter().any(|f| f.name == *field),
                    "{name} has a field {field}"
                );
            }
        }
    }
}
