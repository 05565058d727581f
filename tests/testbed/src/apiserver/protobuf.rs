//! Protobuf request bodies (`application/vnd.kubernetes.protobuf`), as kubectl's imperative
//! commands send them (`kubectl create namespace|configmap|secret|deployment|serviceaccount|
//! service|role|clusterrole|rolebinding|clusterrolebinding`, `kubectl auth can-i`): the `k8s\0` envelope around a `runtime.Unknown`, whose `raw` bytes are
//! decoded with the kube-rs project's k8s-pb types and turned into the JSON object the rest of
//! the server works with. Answers stay JSON, which kubectl accepts.
//!
//! Conversion is by hand for the kinds and fields those commands set. Every conversion takes the
//! fields it understands out of the decoded message and then checks that nothing is left, so a
//! field this server does not convert is a clear 415 naming the kind, never silently dropped.
//! Go's encoder writes zero values of optional fields (`""`, `0`, `false`, empty messages); those
//! count as unset, as they do for kube-apiserver.

use std::collections::BTreeMap;

use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_pb::apimachinery::pkg::runtime::Unknown;
use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;
use prost::Message;
use serde_json::{Map, Value, json};

use super::error::ApiError;

/// The media type.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";
const MAGIC: &[u8] = b"k8s\0";

type Result<T> = std::result::Result<T, ApiError>;

fn unsupported(what: &str) -> ApiError {
    ApiError::unsupported_media_type(format!(
        "the test API server decodes protobuf for the fields kubectl's imperative commands set; {what} is not among them: send it as JSON (kubectl apply -f / create -f)"
    ))
}

fn malformed(e: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("protobuf body is not valid: {e}"))
}

/// Fails when `message` still has fields set (to other than zero values) after the converted
/// ones were taken out.
fn nothing_left<M: Message>(message: &M, what: &str) -> Result<()> {
    if all_zero(&message.encode_to_vec(), 0) {
        Ok(())
    } else {
        Err(unsupported(&format!("a field of {what}")))
    }
}

/// Whether encoded protobuf holds only zero values: varints 0, fixed 0, empty strings, and
/// nested messages (length-delimited fields that parse as messages) of zero values.
fn all_zero(mut bytes: &[u8], depth: usize) -> bool {
    use prost::encoding::{WireType, decode_key, decode_varint};
    if depth > 32 {
        return false;
    }
    while !bytes.is_empty() {
        let Ok((_, wire_type)) = decode_key(&mut bytes) else {
            return false;
        };
        let zero = match wire_type {
            WireType::Varint => decode_varint(&mut bytes).is_ok_and(|v| v == 0),
            WireType::SixtyFourBit | WireType::ThirtyTwoBit => {
                let n = if wire_type == WireType::SixtyFourBit {
                    8
                } else {
                    4
                };
                match bytes.split_at_checked(n) {
                    Some((value, rest)) => {
                        bytes = rest;
                        value.iter().all(|b| *b == 0)
                    }
                    None => false,
                }
            }
            WireType::LengthDelimited => {
                let Ok(len) = decode_varint(&mut bytes) else {
                    return false;
                };
                match usize::try_from(len)
                    .ok()
                    .and_then(|l| bytes.split_at_checked(l))
                {
                    Some((value, rest)) => {
                        bytes = rest;
                        all_zero(value, depth + 1)
                    }
                    None => false,
                }
            }
            _ => false,
        };
        if !zero {
            return false;
        }
    }
    true
}

/// Decodes a protobuf request body into the JSON form of the object.
pub fn decode(body: &[u8]) -> Result<Value> {
    let Some(rest) = body.strip_prefix(MAGIC) else {
        return Err(malformed("missing the k8s\\0 prefix"));
    };
    let unknown = Unknown::decode(rest).map_err(malformed)?;
    let type_meta = unknown.type_meta.unwrap_or_default();
    let api_version = type_meta.api_version.unwrap_or_default();
    let kind = type_meta.kind.unwrap_or_default();
    let raw = unknown.raw.unwrap_or_default();
    let mut object = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => namespace(decode_as(&raw)?)?,
        ("v1", "ConfigMap") => config_map(decode_as(&raw)?)?,
        ("v1", "Secret") => secret(decode_as(&raw)?)?,
        ("v1", "ServiceAccount") => service_account(decode_as(&raw)?)?,
        ("apps/v1", "Deployment") => deployment(decode_as(&raw)?)?,
        ("v1", "Service") => service(decode_as(&raw)?)?,
        ("rbac.authorization.k8s.io/v1", "Role") => {
            let mut r: k8s_pb::api::rbac::v1::Role = decode_as(&raw)?;
            let metadata = object_meta(r.metadata.take())?;
            let rules = policy_rules(std::mem::take(&mut r.rules))?;
            nothing_left(&r, "Role")?;
            json!({"metadata": metadata, "rules": rules})
        }
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
            let mut r: k8s_pb::api::rbac::v1::ClusterRole = decode_as(&raw)?;
            let metadata = object_meta(r.metadata.take())?;
            let rules = policy_rules(std::mem::take(&mut r.rules))?;
            nothing_left(&r, "ClusterRole")?;
            json!({"metadata": metadata, "rules": rules})
        }
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
            let mut b: k8s_pb::api::rbac::v1::RoleBinding = decode_as(&raw)?;
            let metadata = object_meta(b.metadata.take())?;
            let (subjects, role_ref) = binding(std::mem::take(&mut b.subjects), b.role_ref.take())?;
            nothing_left(&b, "RoleBinding")?;
            json!({"metadata": metadata, "subjects": subjects, "roleRef": role_ref})
        }
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            let mut b: k8s_pb::api::rbac::v1::ClusterRoleBinding = decode_as(&raw)?;
            let metadata = object_meta(b.metadata.take())?;
            let (subjects, role_ref) = binding(std::mem::take(&mut b.subjects), b.role_ref.take())?;
            nothing_left(&b, "ClusterRoleBinding")?;
            json!({"metadata": metadata, "subjects": subjects, "roleRef": role_ref})
        }
        ("authorization.k8s.io/v1", "SelfSubjectAccessReview") => access_review(decode_as(&raw)?)?,
        ("authorization.k8s.io/v1", "SelfSubjectRulesReview") => rules_review(decode_as(&raw)?)?,
        _ => return Err(unsupported(&format!("{api_version} {kind}"))),
    };
    object["apiVersion"] = api_version.into();
    object["kind"] = kind.into();
    Ok(object)
}

fn decode_as<M: Message + Default>(raw: &[u8]) -> Result<M> {
    M::decode(raw).map_err(malformed)
}

fn string_map(map: BTreeMap<String, String>) -> Value {
    Value::Object(
        map.into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect(),
    )
}

/// Inserts a converted field; Go's zero-value strings count as unset.
fn insert(out: &mut Map<String, Value>, key: &str, value: Option<Value>) {
    match value {
        None => {}
        Some(Value::String(s)) if s.is_empty() => {}
        Some(v) => {
            out.insert(key.into(), v);
        }
    }
}

fn strings(list: Vec<String>) -> Option<Value> {
    (!list.is_empty()).then(|| list.into())
}

fn object_meta(m: Option<meta::ObjectMeta>) -> Result<Value> {
    let Some(mut m) = m else {
        return Ok(json!({}));
    };
    let mut out = Map::new();
    insert(&mut out, "name", m.name.take().map(Value::from));
    insert(
        &mut out,
        "generateName",
        m.generate_name.take().map(Value::from),
    );
    insert(&mut out, "namespace", m.namespace.take().map(Value::from));
    insert(
        &mut out,
        "resourceVersion",
        m.resource_version.take().map(Value::from),
    );
    let labels = std::mem::take(&mut m.labels);
    insert(
        &mut out,
        "labels",
        (!labels.is_empty()).then(|| string_map(labels)),
    );
    let annotations = std::mem::take(&mut m.annotations);
    insert(
        &mut out,
        "annotations",
        (!annotations.is_empty()).then(|| string_map(annotations)),
    );
    insert(
        &mut out,
        "finalizers",
        strings(std::mem::take(&mut m.finalizers)),
    );
    // Server-owned fields a client may echo back; the store sets its own.
    m.uid = None;
    m.creation_timestamp = None;
    m.generation = None;
    m.self_link = None;
    m.managed_fields.clear();
    nothing_left(&m, "ObjectMeta")?;
    Ok(Value::Object(out))
}

fn namespace(mut ns: k8s_pb::api::core::v1::Namespace) -> Result<Value> {
    let metadata = object_meta(ns.metadata.take())?;
    let finalizers = ns.spec.take().map(|s| s.finalizers).unwrap_or_default();
    ns.status = None;
    nothing_left(&ns, "Namespace")?;
    let mut out = json!({"metadata": metadata});
    if !finalizers.is_empty() {
        out["spec"] = json!({"finalizers": finalizers});
    }
    Ok(out)
}

fn config_map(mut cm: k8s_pb::api::core::v1::ConfigMap) -> Result<Value> {
    use base64::Engine as _;
    let mut out = Map::new();
    out.insert("metadata".into(), object_meta(cm.metadata.take())?);
    let data = std::mem::take(&mut cm.data);
    insert(
        &mut out,
        "data",
        (!data.is_empty()).then(|| string_map(data)),
    );
    let binary = std::mem::take(&mut cm.binary_data);
    insert(
        &mut out,
        "binaryData",
        (!binary.is_empty()).then(|| {
            Value::Object(
                binary
                    .into_iter()
                    .map(|(k, v)| {
                        (
                            k,
                            base64::engine::general_purpose::STANDARD.encode(v).into(),
                        )
                    })
                    .collect(),
            )
        }),
    );
    insert(&mut out, "immutable", cm.immutable.take().map(Value::from));
    nothing_left(&cm, "ConfigMap")?;
    Ok(Value::Object(out))
}

fn secret(mut s: k8s_pb::api::core::v1::Secret) -> Result<Value> {
    use base64::Engine as _;
    let mut out = Map::new();
    out.insert("metadata".into(), object_meta(s.metadata.take())?);
    let data = std::mem::take(&mut s.data);
    insert(
        &mut out,
        "data",
        (!data.is_empty()).then(|| {
            Value::Object(
                data.into_iter()
                    .map(|(k, v)| {
                        (
                            k,
                            base64::engine::general_purpose::STANDARD.encode(v).into(),
                        )
                    })
                    .collect(),
            )
        }),
    );
    let string_data = std::mem::take(&mut s.string_data);
    insert(
        &mut out,
        "stringData",
        (!string_data.is_empty()).then(|| string_map(string_data)),
    );
    insert(&mut out, "type", s.r#type.take().map(Value::from));
    insert(&mut out, "immutable", s.immutable.take().map(Value::from));
    nothing_left(&s, "Secret")?;
    Ok(Value::Object(out))
}

fn local_refs(refs: Vec<k8s_pb::api::core::v1::LocalObjectReference>) -> Option<Value> {
    (!refs.is_empty()).then(|| {
        refs.into_iter()
            .map(|r| json!({"name": r.name.unwrap_or_default()}))
            .collect::<Vec<_>>()
            .into()
    })
}

fn service_account(mut sa: k8s_pb::api::core::v1::ServiceAccount) -> Result<Value> {
    let mut out = Map::new();
    out.insert("metadata".into(), object_meta(sa.metadata.take())?);
    insert(
        &mut out,
        "imagePullSecrets",
        local_refs(std::mem::take(&mut sa.image_pull_secrets)),
    );
    insert(
        &mut out,
        "automountServiceAccountToken",
        sa.automount_service_account_token.take().map(Value::from),
    );
    nothing_left(&sa, "ServiceAccount")?;
    Ok(Value::Object(out))
}

fn int_or_string(v: Option<IntOrString>) -> Option<Value> {
    let v = v?;
    match v.r#type {
        Some(1) => v.str_val.map(Value::from),
        _ => v.int_val.map(Value::from),
    }
}

fn label_selector(s: Option<meta::LabelSelector>) -> Result<Option<Value>> {
    let Some(mut s) = s else {
        return Ok(None);
    };
    let mut out = Map::new();
    let labels = std::mem::take(&mut s.match_labels);
    insert(
        &mut out,
        "matchLabels",
        (!labels.is_empty()).then(|| string_map(labels)),
    );
    let expressions: Vec<Value> = std::mem::take(&mut s.match_expressions)
        .into_iter()
        .map(|e| json!({"key": e.key, "operator": e.operator, "values": e.values}))
        .collect();
    insert(
        &mut out,
        "matchExpressions",
        (!expressions.is_empty()).then(|| expressions.into()),
    );
    nothing_left(&s, "LabelSelector")?;
    Ok(Some(Value::Object(out)))
}

fn container(mut c: k8s_pb::api::core::v1::Container) -> Result<Value> {
    let mut out = Map::new();
    insert(&mut out, "name", c.name.take().map(Value::from));
    insert(&mut out, "image", c.image.take().map(Value::from));
    insert(&mut out, "command", strings(std::mem::take(&mut c.command)));
    insert(&mut out, "args", strings(std::mem::take(&mut c.args)));
    let ports: Vec<Value> = std::mem::take(&mut c.ports)
        .into_iter()
        .map(|p| {
            let mut v = json!({"containerPort": p.container_port.unwrap_or(0)});
            if let Some(n) = p.name {
                v["name"] = n.into();
            }
            if let Some(proto) = p.protocol {
                v["protocol"] = proto.into();
            }
            v
        })
        .collect();
    insert(&mut out, "ports", (!ports.is_empty()).then(|| ports.into()));
    let mut env = Vec::new();
    for mut e in std::mem::take(&mut c.env) {
        let mut v = json!({"name": e.name.take().unwrap_or_default()});
        if let Some(value) = e.value.take() {
            v["value"] = value.into();
        }
        nothing_left(&e, "EnvVar")?;
        env.push(v);
    }
    insert(&mut out, "env", (!env.is_empty()).then(|| env.into()));
    if let Some(mut r) = c.resources.take() {
        let quantities =
            |m: BTreeMap<String, k8s_pb::apimachinery::pkg::api::resource::Quantity>| {
                Value::Object(
                    m.into_iter()
                        .map(|(k, q)| (k, q.string.unwrap_or_default().into()))
                        .collect(),
                )
            };
        let mut res = Map::new();
        let limits = std::mem::take(&mut r.limits);
        insert(
            &mut res,
            "limits",
            (!limits.is_empty()).then(|| quantities(limits)),
        );
        let requests = std::mem::take(&mut r.requests);
        insert(
            &mut res,
            "requests",
            (!requests.is_empty()).then(|| quantities(requests)),
        );
        nothing_left(&r, "ResourceRequirements")?;
        out.insert("resources".into(), Value::Object(res));
    }
    insert(
        &mut out,
        "imagePullPolicy",
        c.image_pull_policy.take().map(Value::from),
    );
    nothing_left(&c, "Container")?;
    Ok(Value::Object(out))
}

fn pod_template(t: Option<k8s_pb::api::core::v1::PodTemplateSpec>) -> Result<Value> {
    let Some(mut t) = t else {
        return Ok(json!({}));
    };
    let metadata = object_meta(t.metadata.take())?;
    let mut spec = Map::new();
    if let Some(mut s) = t.spec.take() {
        let containers = std::mem::take(&mut s.containers)
            .into_iter()
            .map(container)
            .collect::<Result<Vec<_>>>()?;
        spec.insert("containers".into(), containers.into());
        let init = std::mem::take(&mut s.init_containers)
            .into_iter()
            .map(container)
            .collect::<Result<Vec<_>>>()?;
        insert(
            &mut spec,
            "initContainers",
            (!init.is_empty()).then(|| init.into()),
        );
        insert(
            &mut spec,
            "restartPolicy",
            s.restart_policy.take().map(Value::from),
        );
        insert(
            &mut spec,
            "serviceAccountName",
            s.service_account_name.take().map(Value::from),
        );
        insert(
            &mut spec,
            "imagePullSecrets",
            local_refs(std::mem::take(&mut s.image_pull_secrets)),
        );
        nothing_left(&s, "PodSpec")?;
    }
    nothing_left(&t, "PodTemplateSpec")?;
    Ok(json!({"metadata": metadata, "spec": spec}))
}

fn deployment(mut d: k8s_pb::api::apps::v1::Deployment) -> Result<Value> {
    let metadata = object_meta(d.metadata.take())?;
    let mut spec = Map::new();
    if let Some(mut s) = d.spec.take() {
        insert(&mut spec, "replicas", s.replicas.take().map(Value::from));
        insert(&mut spec, "selector", label_selector(s.selector.take())?);
        spec.insert("template".into(), pod_template(s.template.take())?);
        if let Some(mut strategy) = s.strategy.take() {
            let mut st = Map::new();
            insert(&mut st, "type", strategy.r#type.take().map(Value::from));
            if let Some(mut ru) = strategy.rolling_update.take() {
                let mut r = Map::new();
                insert(
                    &mut r,
                    "maxUnavailable",
                    int_or_string(ru.max_unavailable.take()),
                );
                insert(&mut r, "maxSurge", int_or_string(ru.max_surge.take()));
                nothing_left(&ru, "RollingUpdateDeployment")?;
                st.insert("rollingUpdate".into(), Value::Object(r));
            }
            nothing_left(&strategy, "DeploymentStrategy")?;
            spec.insert("strategy".into(), Value::Object(st));
        }
        insert(
            &mut spec,
            "revisionHistoryLimit",
            s.revision_history_limit.take().map(Value::from),
        );
        insert(&mut spec, "paused", s.paused.take().map(Value::from));
        nothing_left(&s, "DeploymentSpec")?;
    }
    d.status = None;
    nothing_left(&d, "Deployment")?;
    Ok(json!({"metadata": metadata, "spec": spec}))
}

fn policy_rules(rules: Vec<k8s_pb::api::rbac::v1::PolicyRule>) -> Result<Value> {
    let mut out = Vec::new();
    for mut r in rules {
        let mut rule = Map::new();
        rule.insert("verbs".into(), std::mem::take(&mut r.verbs).into());
        insert(
            &mut rule,
            "apiGroups",
            Some(std::mem::take(&mut r.api_groups).into()),
        );
        insert(
            &mut rule,
            "resources",
            strings(std::mem::take(&mut r.resources)),
        );
        insert(
            &mut rule,
            "resourceNames",
            strings(std::mem::take(&mut r.resource_names)),
        );
        insert(
            &mut rule,
            "nonResourceURLs",
            strings(std::mem::take(&mut r.non_resource_ur_ls)),
        );
        nothing_left(&r, "PolicyRule")?;
        out.push(Value::Object(rule));
    }
    Ok(out.into())
}

fn binding(
    subjects: Vec<k8s_pb::api::rbac::v1::Subject>,
    role_ref: Option<k8s_pb::api::rbac::v1::RoleRef>,
) -> Result<(Value, Value)> {
    let mut list = Vec::new();
    for mut s in subjects {
        let mut subject = Map::new();
        insert(&mut subject, "kind", s.kind.take().map(Value::from));
        insert(
            &mut subject,
            "apiGroup",
            s.api_group.take().map(Value::from),
        );
        insert(&mut subject, "name", s.name.take().map(Value::from));
        insert(
            &mut subject,
            "namespace",
            s.namespace.take().map(Value::from),
        );
        nothing_left(&s, "Subject")?;
        list.push(Value::Object(subject));
    }
    let mut r = role_ref.unwrap_or_default();
    let role_ref = json!({
        "apiGroup": r.api_group.take().unwrap_or_default(),
        "kind": r.kind.take().unwrap_or_default(),
        "name": r.name.take().unwrap_or_default(),
    });
    nothing_left(&r, "RoleRef")?;
    Ok((list.into(), role_ref))
}

fn service(mut svc: k8s_pb::api::core::v1::Service) -> Result<Value> {
    let metadata = object_meta(svc.metadata.take())?;
    let mut spec = Map::new();
    if let Some(mut s) = svc.spec.take() {
        let mut ports = Vec::new();
        for mut p in std::mem::take(&mut s.ports) {
            let mut port = Map::new();
            insert(&mut port, "name", p.name.take().map(Value::from));
            insert(&mut port, "protocol", p.protocol.take().map(Value::from));
            insert(&mut port, "port", p.port.take().map(Value::from));
            insert(&mut port, "targetPort", int_or_string(p.target_port.take()));
            insert(
                &mut port,
                "nodePort",
                p.node_port.take().filter(|n| *n != 0).map(Value::from),
            );
            nothing_left(&p, "ServicePort")?;
            ports.push(Value::Object(port));
        }
        insert(
            &mut spec,
            "ports",
            (!ports.is_empty()).then(|| ports.into()),
        );
        let selector = std::mem::take(&mut s.selector);
        insert(
            &mut spec,
            "selector",
            (!selector.is_empty()).then(|| string_map(selector)),
        );
        insert(&mut spec, "type", s.r#type.take().map(Value::from));
        insert(&mut spec, "clusterIP", s.cluster_ip.take().map(Value::from));
        insert(
            &mut spec,
            "externalName",
            s.external_name.take().map(Value::from),
        );
        nothing_left(&s, "ServiceSpec")?;
    }
    svc.status = None;
    nothing_left(&svc, "Service")?;
    Ok(json!({"metadata": metadata, "spec": spec}))
}

fn access_review(mut r: k8s_pb::api::authorization::v1::SelfSubjectAccessReview) -> Result<Value> {
    let metadata = object_meta(r.metadata.take())?;
    let mut spec = json!({});
    if let Some(mut s) = r.spec.take() {
        if let Some(mut a) = s.resource_attributes.take() {
            let mut attrs = Map::new();
            for (name, value) in [
                ("namespace", a.namespace.take()),
                ("verb", a.verb.take()),
                ("group", a.group.take()),
                ("version", a.version.take()),
                ("resource", a.resource.take()),
                ("subresource", a.subresource.take()),
                ("name", a.name.take()),
            ] {
                insert(&mut attrs, name, value.map(Value::from));
            }
            nothing_left(&a, "ResourceAttributes")?;
            spec["resourceAttributes"] = Value::Object(attrs);
        }
        if let Some(n) = s.non_resource_attributes.take() {
            spec["nonResourceAttributes"] = json!({"path": n.path, "verb": n.verb});
        }
        nothing_left(&s, "SelfSubjectAccessReviewSpec")?;
    }
    r.status = None;
    nothing_left(&r, "SelfSubjectAccessReview")?;
    Ok(json!({"metadata": metadata, "spec": spec}))
}

fn rules_review(mut r: k8s_pb::api::authorization::v1::SelfSubjectRulesReview) -> Result<Value> {
    let metadata = object_meta(r.metadata.take())?;
    let namespace = r.spec.take().and_then(|s| s.namespace);
    r.status = None;
    nothing_left(&r, "SelfSubjectRulesReview")?;
    Ok(json!({"metadata": metadata, "spec": {"namespace": namespace}}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let unknown = Unknown {
            type_meta: Some(k8s_pb::apimachinery::pkg::runtime::TypeMeta {
                api_version: Some(api_version.into()),
                kind: Some(kind.into()),
            }),
            raw: Some(raw),
            content_encoding: Some(String::new()),
            content_type: Some(String::new()),
        };
        let mut body = MAGIC.to_vec();
        body.extend(unknown.encode_to_vec());
        body
    }

    #[test]
    fn a_configmap_round_trips_through_k8s_pb() {
        let cm = k8s_pb::api::core::v1::ConfigMap {
            metadata: Some(meta::ObjectMeta {
                name: Some("settings".into()),
                labels: [("app".to_string(), "web".to_string())].into(),
                ..Default::default()
            }),
            data: [("mode".to_string(), "fast".to_string())].into(),
            ..Default::default()
        };
        let object = decode(&envelope("v1", "ConfigMap", cm.encode_to_vec())).expect("decodes");
        assert_eq!(object["kind"], "ConfigMap");
        assert_eq!(object["metadata"]["name"], "settings");
        assert_eq!(object["metadata"]["labels"]["app"], "web");
        assert_eq!(object["data"]["mode"], "fast");
    }

    #[test]
    fn a_field_it_does_not_convert_is_refused_not_dropped() {
        let mut c = k8s_pb::api::core::v1::Container {
            name: Some("web".into()),
            image: Some("nginx".into()),
            ..Default::default()
        };
        c.working_dir = Some("/srv".into());
        let d = k8s_pb::api::apps::v1::Deployment {
            metadata: Some(meta::ObjectMeta {
                name: Some("web".into()),
                ..Default::default()
            }),
            spec: Some(k8s_pb::api::apps::v1::DeploymentSpec {
                template: Some(k8s_pb::api::core::v1::PodTemplateSpec {
                    metadata: None,
                    spec: Some(k8s_pb::api::core::v1::PodSpec {
                        containers: vec![c],
                        ..Default::default()
                    }),
                }),
                ..Default::default()
            }),
            status: None,
        };
        let err =
            decode(&envelope("apps/v1", "Deployment", d.encode_to_vec())).expect_err("refused");
        assert_eq!(err.code, 415);
        assert!(err.message.contains("Container"), "{}", err.message);
    }

    #[test]
    fn garbage_is_a_bad_request() {
        assert_eq!(decode(b"k8s\0\xff\xff\xff").expect_err("garbage").code, 400);
        assert_eq!(decode(b"{}").expect_err("no magic").code, 400);
        assert_eq!(
            decode(&envelope("batch/v1", "Job", Vec::new()))
                .expect_err("kind")
                .code,
            415
        );
    }
}
