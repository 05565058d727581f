//! Protobuf bodies (`application/vnd.kubernetes.protobuf`) for every built-in kind, as
//! kube-apiserver reads and writes them: the `k8s\0` prefix and a `runtime.Unknown` envelope
//! (apiVersion, kind, the object's bytes), requests decoded into the JSON the rest of the
//! server works with, answers (objects, lists, `Status`) and watch streams encoded when the
//! client prefers protobuf. JSON stays the default.
//!
//! The conversion is generic: [`schema`] is the Kubernetes protobuf schema read from k8s-pb's
//! sources at build time, with JSON names from k8s-openapi's definitions; [`wire`] walks the
//! wire format; [`json`] maps fields to JSON properties; [`special`] has the types whose JSON
//! is not an object of their fields (times, quantities, int-or-strings, embedded JSON, ...).
//! Custom resources have no protobuf form, as in kube-apiserver: a protobuf body of one is a
//! 415, and their answers stay JSON.

mod json;
mod schema;
mod special;
mod wire;

use axum::http::{HeaderMap, header};
use k8s_pb::apimachinery::pkg::runtime::{TypeMeta, Unknown};
use prost::Message as _;
use serde_json::Value;

use super::error::ApiError;

/// The media type.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";
/// The media type of a watch stream in protobuf.
pub const WATCH_MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf;stream=watch";
const MAGIC: &[u8] = b"k8s\0";

type Result<T> = std::result::Result<T, ApiError>;

fn malformed(e: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("protobuf body is not valid: {e}"))
}

/// Decodes a protobuf request body into the JSON form of the object.
pub fn decode(body: &[u8]) -> Result<Value> {
    decode_object(body)
}

/// Decodes `k8s\0` + `Unknown` into an object with its `apiVersion` and `kind`.
fn decode_object(body: &[u8]) -> Result<Value> {
    let Some(rest) = body.strip_prefix(MAGIC) else {
        return Err(malformed("missing the k8s\\0 prefix"));
    };
    let unknown = Unknown::decode(rest).map_err(malformed)?;
    if unknown
        .content_encoding
        .as_deref()
        .is_some_and(|e| !e.is_empty())
    {
        return Err(ApiError::unsupported_media_type(
            "protobuf bodies with a content encoding are not supported",
        ));
    }
    let type_meta = unknown.type_meta.unwrap_or_default();
    let api_version = type_meta.api_version.unwrap_or_default();
    let kind = type_meta.kind.unwrap_or_default();
    let message = schema::message_for(&api_version, &kind).ok_or_else(|| {
        ApiError::unsupported_media_type(format!(
            "{api_version} {kind} has no protobuf form (custom resources have none): send it as JSON"
        ))
    })?;
    let mut object = json::to_json(message, &unknown.raw.unwrap_or_default(), 0)
        .map_err(|e| malformed(format!("{api_version} {kind}: {e}")))?;
    match object.as_object_mut() {
        Some(o) => {
            o.insert("apiVersion".into(), api_version.into());
            o.insert("kind".into(), kind.into());
        }
        None => return Err(malformed(format!("{api_version} {kind} is not an object"))),
    }
    Ok(object)
}

/// Encodes an object (with its `apiVersion` and `kind`) as `k8s\0` + `Unknown`; `None` when
/// the kind has no protobuf form or a value does not fit its field (the caller answers JSON).
pub fn encode(object: &Value) -> Option<Vec<u8>> {
    let api_version = object["apiVersion"].as_str()?;
    let kind = object["kind"].as_str()?;
    let message = schema::message_for(api_version, kind)?;
    let raw = json::from_json(message, object, 0).ok()?;
    Some(wrap(api_version, kind, raw))
}

/// `k8s\0` + `Unknown` around an encoded object.
fn wrap(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
    let unknown = Unknown {
        type_meta: Some(TypeMeta {
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

/// Whether `api_version`/`kind` has a protobuf form.
pub fn has_form(api_version: &str, kind: &str) -> bool {
    schema::message_for(api_version, kind).is_some()
}

/// One frame of a protobuf watch stream: a big-endian length, then a `WatchEvent` (type and
/// the object in its own envelope).
pub fn watch_frame(event_type: &str, object: &Value) -> Option<Vec<u8>> {
    let event = k8s_pb::apimachinery::pkg::apis::meta::v1::WatchEvent {
        r#type: Some(event_type.into()),
        object: Some(k8s_pb::apimachinery::pkg::runtime::RawExtension {
            raw: Some(encode(object)?),
        }),
    };
    let body = event.encode_to_vec();
    let mut frame = u32::try_from(body.len()).ok()?.to_be_bytes().to_vec();
    frame.extend(body);
    Some(frame)
}

pub use schema::{ListRules, ListType};

/// A built-in type, for walking an object alongside it: which type each property holds and
/// how its lists merge (strategic merge patch) and are owned (server-side apply).
#[derive(Debug, Clone, Copy)]
pub struct TypeNode(&'static schema::Message);

/// What a property of a type holds.
#[derive(Debug, Clone, Copy)]
pub struct Property {
    /// How the list merges, if it is one.
    pub list: ListRules,
    /// The type of the value (of each item of a list, each value of a map), for messages.
    pub element: Option<TypeNode>,
    /// A list.
    pub repeated: bool,
    /// A map (string keys).
    pub map: bool,
}

impl TypeNode {
    /// The type of objects of `api_version` and `kind`, if built in.
    pub fn of(api_version: &str, kind: &str) -> Option<Self> {
        schema::message_for(api_version, kind).map(Self)
    }

    /// The property `json` of this type, among its own fields or those of a struct it embeds
    /// inline.
    pub fn property(&self, json: &str) -> Option<Property> {
        let names = schema::names(self.0);
        if let Some(i) = names.field(json)
            && !names.is_inline(self.0.fields[i].tag)
        {
            let f = &self.0.fields[i];
            let element = match f.kind {
                schema::Kind::Message(name) => schema::message(name).map(Self),
                _ => None,
            };
            return Some(Property {
                list: f.list,
                element,
                repeated: f.cardinality == schema::Cardinality::Repeated,
                map: matches!(f.cardinality, schema::Cardinality::Map(_)),
            });
        }
        names.inline().iter().find_map(|tag| {
            let f = self.0.fields.iter().find(|f| f.tag == *tag)?;
            match f.kind {
                schema::Kind::Message(name) => schema::message(name).map(Self)?.property(json),
                _ => None,
            }
        })
    }
}

/// What the client asked for in `Accept`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wanted {
    /// JSON (the default, and what Tables and discovery are).
    Json,
    /// Protobuf first, JSON acceptable.
    Protobuf,
    /// Protobuf and nothing else.
    OnlyProtobuf,
}

/// Reads `Accept`: protobuf when it comes before any JSON (`application/json`, `*/*`) and
/// no Table is asked for.
pub fn wanted(headers: &HeaderMap) -> Wanted {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|a| a.to_str().ok()) else {
        return Wanted::Json;
    };
    if accept.contains("as=Table") || accept.contains("as=PartialObjectMetadata") {
        return Wanted::Json;
    }
    let types: Vec<&str> = accept
        .split(',')
        .map(|t| t.split(';').next().unwrap_or_default().trim())
        .collect();
    let json = |t: &&str| matches!(*t, "application/json" | "*/*" | "application/*");
    match types.iter().position(|t| *t == MEDIA_TYPE) {
        Some(p) if types.iter().position(json).is_none_or(|j| p < j) => {
            if types.iter().any(json) {
                Wanted::Protobuf
            } else {
                Wanted::OnlyProtobuf
            }
        }
        _ => Wanted::Json,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;

    fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
        wrap(api_version, kind, raw)
    }

    fn unwrap_envelope(body: &[u8]) -> Vec<u8> {
        let unknown = Unknown::decode(&body[MAGIC.len()..]).expect("an envelope");
        unknown.raw.unwrap_or_default()
    }

    #[test]
    fn a_pod_with_every_special_type_round_trips_through_k8s_pb() {
        use k8s_pb::api::core::v1 as core;
        use k8s_pb::apimachinery::pkg::api::resource::Quantity;
        use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;
        let pod = core::Pod {
            metadata: Some(meta::ObjectMeta {
                name: Some("web".into()),
                namespace: Some("team-a".into()),
                labels: [("app".to_string(), "web".to_string())].into(),
                creation_timestamp: Some(meta::Time {
                    seconds: Some(1_700_000_000),
                    nanos: Some(0),
                }),
                ..Default::default()
            }),
            spec: Some(core::PodSpec {
                containers: vec![core::Container {
                    name: Some("web".into()),
                    image: Some("nginx:1.14.0".into()),
                    working_dir: Some("/srv".into()),
                    resources: Some(core::ResourceRequirements {
                        limits: [(
                            "memory".to_string(),
                            Quantity {
                                string: Some("128Mi".into()),
                            },
                        )]
                        .into(),
                        ..Default::default()
                    }),
                    readiness_probe: Some(core::Probe {
                        handler: Some(core::ProbeHandler {
                            http_get: Some(core::HttpGetAction {
                                path: Some("/healthz".into()),
                                port: Some(IntOrString {
                                    r#type: Some(1),
                                    int_val: Some(0),
                                    str_val: Some("http".into()),
                                }),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                automount_service_account_token: Some(false),
                host_ipc: Some(true),
                ..Default::default()
            }),
            status: Some(core::PodStatus {
                pod_ip: Some("10.244.1.5".into()),
                ..Default::default()
            }),
        };
        let object = decode(&envelope("v1", "Pod", pod.encode_to_vec())).expect("decodes");
        assert_eq!(object["kind"], "Pod");
        assert_eq!(
            object["metadata"]["creationTimestamp"],
            "2023-11-14T22:13:20Z"
        );
        let container = &object["spec"]["containers"][0];
        assert_eq!(container["workingDir"], "/srv");
        assert_eq!(container["resources"]["limits"]["memory"], "128Mi");
        assert_eq!(container["readinessProbe"]["httpGet"]["port"], "http");
        assert_eq!(object["spec"]["automountServiceAccountToken"], false);
        assert_eq!(object["spec"]["hostIPC"], true);
        assert_eq!(object["status"]["podIP"], "10.244.1.5");

        let encoded = encode(&object).expect("encodes");
        let back =
            core::Pod::decode(unwrap_envelope(&encoded).as_slice()).expect("k8s-pb decodes it");
        assert_eq!(back, pod);
    }

    #[test]
    fn go_zero_values_of_strings_are_unset_and_numbers_stay() {
        let d = k8s_pb::api::apps::v1::Deployment {
            metadata: Some(meta::ObjectMeta {
                name: Some("web".into()),
                generate_name: Some(String::new()),
                ..Default::default()
            }),
            spec: Some(k8s_pb::api::apps::v1::DeploymentSpec {
                replicas: Some(0),
                paused: Some(false),
                min_ready_seconds: Some(0),
                revision_history_limit: Some(0),
                ..Default::default()
            }),
            status: None,
        };
        let object =
            decode(&envelope("apps/v1", "Deployment", d.encode_to_vec())).expect("decodes");
        assert!(object["metadata"].get("generateName").is_none());
        // Pointers in Go: their zeros are kept.
        assert_eq!(object["spec"]["replicas"], 0);
        assert_eq!(object["spec"]["revisionHistoryLimit"], 0);
        // No pointers, omitempty: left out as kube-apiserver's JSON leaves them out.
        assert!(object["spec"].get("paused").is_none(), "{object}");
        assert!(object["spec"].get("minReadySeconds").is_none(), "{object}");
    }

    #[test]
    fn custom_resources_and_garbage_are_refused_clearly() {
        let e = decode(&envelope("example.com/v1", "Thing", vec![])).expect_err("no form");
        assert_eq!(e.code, 415);
        assert!(e.message.contains("example.com/v1 Thing"), "{}", e.message);
        let e = decode(b"{\"kind\":\"Pod\"}").expect_err("no prefix");
        assert_eq!(e.code, 400);
        let e = decode(&envelope("v1", "Pod", vec![0x0a, 0xff, 0xff])).expect_err("truncated");
        assert_eq!(e.code, 400);
        // A message nested deeper than any object: refused, not a stack overflow.
        let mut raw = Vec::new();
        for _ in 0..200 {
            let mut outer = vec![0x0a];
            prost::encoding::encode_varint(raw.len() as u64, &mut outer);
            outer.extend(raw);
            raw = outer;
        }
        let e = decode(&envelope(
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            raw,
        ));
        assert!(e.is_err());
    }

    #[test]
    fn lists_and_status_encode() {
        let list = serde_json::json!({"apiVersion": "apps/v1", "kind": "DeploymentList",
            "metadata": {"resourceVersion": "7", "continue": "abc"},
            "items": [{"metadata": {"name": "a"}, "spec": {"replicas": 2}}]});
        let encoded = encode(&list).expect("encodes");
        let back =
            k8s_pb::api::apps::v1::DeploymentList::decode(unwrap_envelope(&encoded).as_slice())
                .expect("decodes");
        assert_eq!(
            back.metadata.and_then(|m| m.r#continue).as_deref(),
            Some("abc")
        );
        assert_eq!(
            back.items[0].spec.as_ref().and_then(|s| s.replicas),
            Some(2)
        );
        let status = serde_json::json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
            "reason": "NotFound", "code": 404, "details": {"name": "x", "kind": "pods"}});
        let back =
            meta::Status::decode(unwrap_envelope(&encode(&status).expect("encodes")).as_slice())
                .expect("decodes");
        assert_eq!(back.code, Some(404));
        assert_eq!(back.reason.as_deref(), Some("NotFound"));
        assert!(
            encode(&serde_json::json!({"apiVersion": "example.com/v1", "kind": "Thing"})).is_none()
        );
    }

    #[test]
    fn types_tell_how_their_lists_merge() {
        let pod = TypeNode::of("v1", "Pod").expect("Pod");
        let spec = pod
            .property("spec")
            .and_then(|p| p.element)
            .expect("PodSpec");
        let containers = spec.property("containers").expect("containers");
        assert!(containers.repeated && containers.list.merge);
        assert_eq!(containers.list.merge_key, Some("name"));
        let container = containers.element.expect("Container");
        let ports = container.property("ports").expect("ports");
        assert_eq!(
            ports.list.list_type,
            ListType::Map(&["containerPort", "protocol"])
        );
        assert_eq!(
            container.property("args").map(|a| a.list.list_type),
            Some(ListType::Atomic)
        );
        // Through an embedded struct: a Probe's httpGet is its ProbeHandler's.
        let probe = container
            .property("readinessProbe")
            .and_then(|p| p.element)
            .expect("Probe");
        assert!(probe.property("httpGet").is_some());
        // A Service's ports merge by port.
        let service = TypeNode::of("v1", "Service")
            .and_then(|s| s.property("spec"))
            .and_then(|p| p.element);
        let ports = service
            .and_then(|s| s.property("ports"))
            .expect("ServiceSpec.ports");
        assert_eq!(ports.list.merge_key, Some("port"));
        let labels = TypeNode::of("v1", "Pod")
            .and_then(|p| p.property("metadata"))
            .and_then(|m| m.element)
            .and_then(|m| m.property("labels"))
            .expect("labels");
        assert!(labels.map);
    }

    #[test]
    fn accept_headers() {
        let with = |accept: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT, accept.parse().expect("a header value"));
            wanted(&h)
        };
        assert_eq!(
            with("application/vnd.kubernetes.protobuf, */*"),
            Wanted::Protobuf
        );
        assert_eq!(
            with("application/vnd.kubernetes.protobuf"),
            Wanted::OnlyProtobuf
        );
        assert_eq!(
            with("application/json, application/vnd.kubernetes.protobuf"),
            Wanted::Json
        );
        assert_eq!(
            with(
                "application/json;as=Table;v=v1;g=meta.k8s.io,application/vnd.kubernetes.protobuf"
            ),
            Wanted::Json
        );
        assert_eq!(wanted(&HeaderMap::new()), Wanted::Json);
    }
}
