//! The events image-backup publishes and consumes: one typed payload per CloudEvents type, their
//! subjects and idempotency ids, and the conversion to and from CloudEvents 1.0
//! (`cloudevents-sdk`). Transport bindings live in the submodules; this file knows no transport.

mod nats_binding;
mod payloads;

pub use nats_binding::{from_nats_message, to_nats_message};
pub use payloads::{
    ContainerChange, ImageCompleted, ImageFailed, WorkloadChanged, WorkloadImage, WorkloadKind,
    WorkloadRef, WorkloadReverted, WorkloadRolledOut,
};

use bytes::Bytes;
use cloudevents::{AttributesReader, Data, Event, EventBuilder, EventBuilderV10};

use crate::naming::subject_token;

/// Prefix of every CloudEvents `type` we emit.
pub const TYPE_PREFIX: &str = "io.k8slab.imagebackup.";
/// `type` of [`WorkloadChanged`].
pub const WORKLOAD_CHANGED: &str = "io.k8slab.imagebackup.workload.changed";
/// `type` of [`ImageCompleted`].
pub const IMAGE_COMPLETED: &str = "io.k8slab.imagebackup.image.completed";
/// `type` of [`ImageFailed`].
pub const IMAGE_FAILED: &str = "io.k8slab.imagebackup.image.failed";
/// `type` of [`WorkloadRolledOut`].
pub const WORKLOAD_ROLLED_OUT: &str = "io.k8slab.imagebackup.workload.rolledout";
/// `type` of [`WorkloadReverted`].
pub const WORKLOAD_REVERTED: &str = "io.k8slab.imagebackup.workload.reverted";
/// Subject prefix of events that could not be parsed (followed by the original subject).
pub const DEADLETTER_PREFIX: &str = "imagebackup.deadletter.";

/// Why bytes or a CloudEvent are not one of our events. Never a panic: every malformed input
/// ends here, and the consumer dead-letters it.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// The message is neither binary mode (`ce-specversion` header) nor structured mode.
    #[error(
        "not a CloudEvent: no ce-specversion header and content type is not application/cloudevents+json"
    )]
    NotACloudEvent,
    /// The CloudEvents envelope is malformed (missing attribute, bad spec version, bad JSON).
    #[error("malformed CloudEvent: {0}")]
    Envelope(#[source] cloudevents::message::Error),
    /// The event is a valid CloudEvent of a type we do not know.
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    /// The event has no data, or data that is not JSON.
    #[error("event {0:?} has no JSON data")]
    NoData(String),
    /// The JSON data does not match the type's schema.
    #[error("event data does not match {ty}: {source}")]
    Data {
        /// The event type.
        ty: String,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
    /// An attribute or extension cannot travel as a NATS header (a name with `:` or non-ASCII
    /// characters, a value with CR/LF).
    #[error("CloudEvent attribute {name:?} cannot be a NATS header: {reason}")]
    Header {
        /// The header name (cut to 64 characters).
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Building the CloudEvent failed (a bug: our attributes are always valid).
    #[error("cannot build CloudEvent: {0}")]
    Build(#[from] cloudevents::event::EventBuilderError),
}

/// A CloudEvent in binary mode, transport-neutral: `ce-*` headers plus `content-type`, and the
/// data as the body. The NATS binding and the HTTP sink both send this, so the mapping of
/// attributes to headers is written once.
#[derive(Debug, Clone, PartialEq)]
pub struct BinaryEvent {
    /// Header names and values (not yet validated for any transport).
    pub headers: Vec<(String, String)>,
    /// The data.
    pub body: Bytes,
}

/// The binary-mode form of `event`.
pub fn to_binary(event: &Event) -> BinaryEvent {
    let mut headers = Vec::new();
    for (name, value) in event.iter_attributes() {
        if name == "datacontenttype" {
            headers.push(("content-type".to_string(), value.to_string()));
        } else {
            headers.push((format!("ce-{name}"), value.to_string()));
        }
    }
    for (name, value) in event.iter_extensions() {
        headers.push((format!("ce-{name}"), value.to_string()));
    }
    if event.datacontenttype().is_none() && event.data().is_some() {
        headers.push(("content-type".to_string(), "application/json".to_string()));
    }
    let body = match event.data() {
        Some(Data::Json(v)) => Bytes::from(serde_json::to_vec(v).unwrap_or_default()),
        Some(Data::Binary(b)) => Bytes::from(b.clone()),
        Some(Data::String(s)) => Bytes::from(s.clone()),
        None => Bytes::new(),
    };
    BinaryEvent { headers, body }
}

/// Our event as an HTTP binary-mode CloudEvent (what Knative brokers and sinks accept). Header
/// names and values are checked as HTTP requires, so a request builder cannot panic on them.
pub fn to_http_binary(payload: &Payload, source: &str) -> Result<BinaryEvent, EventError> {
    let binary = to_binary(&payload.to_cloudevent(source)?);
    for (name, value) in &binary.headers {
        let bad = |reason: &'static str| EventError::Header {
            name: name.chars().take(64).collect(),
            reason,
        };
        http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| bad("not a valid header name"))?;
        http::HeaderValue::from_str(value).map_err(|_| bad("not a valid header value"))?;
    }
    Ok(binary)
}

/// Reads a CloudEvent from an HTTP request (binary mode: `ce-*` headers; structured mode:
/// `content-type: application/cloudevents+json`), through the same SDK-based binding as NATS
/// messages. Headers that are not valid there are ignored (none of them is a CloudEvents one).
pub fn from_http(headers: &http::HeaderMap, body: &[u8]) -> Result<Event, EventError> {
    use std::str::FromStr as _;
    let mut map = async_nats::HeaderMap::new();
    for (name, value) in headers {
        let (Ok(name), Ok(value)) = (
            async_nats::header::HeaderName::from_str(name.as_str()),
            value
                .to_str()
                .map_err(|_| ())
                .and_then(|v| async_nats::header::HeaderValue::from_str(v).map_err(|_| ())),
        ) else {
            continue;
        };
        map.insert(name, value);
    }
    from_nats_message(Some(&map), body)
}

/// One of our events, typed. The single `match` point for event types.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// A workload needs backups.
    WorkloadChanged(WorkloadChanged),
    /// An image was backed up.
    ImageCompleted(ImageCompleted),
    /// An image could not be backed up.
    ImageFailed(ImageFailed),
    /// A workload was moved to its backups.
    WorkloadRolledOut(WorkloadRolledOut),
    /// A workload was moved back to its original images.
    WorkloadReverted(WorkloadReverted),
}

fn workload_tokens(w: &WorkloadRef) -> String {
    format!(
        "{}.{}.{}",
        subject_token(&w.namespace),
        w.kind.token(),
        subject_token(&w.name)
    )
}

// === impl Payload ===

impl Payload {
    /// The CloudEvents `type`.
    pub fn event_type(&self) -> &'static str {
        match self {
            Payload::WorkloadChanged(_) => WORKLOAD_CHANGED,
            Payload::ImageCompleted(_) => IMAGE_COMPLETED,
            Payload::ImageFailed(_) => IMAGE_FAILED,
            Payload::WorkloadRolledOut(_) => WORKLOAD_ROLLED_OUT,
            Payload::WorkloadReverted(_) => WORKLOAD_REVERTED,
        }
    }

    /// The NATS subject (`imagebackup.workload.changed.<ns>.<kind>.<name>`, ...), also the
    /// CloudEvents `subject`.
    pub fn subject(&self) -> String {
        match self {
            Payload::WorkloadChanged(p) => {
                format!(
                    "imagebackup.workload.changed.{}",
                    workload_tokens(&p.workload)
                )
            }
            Payload::ImageCompleted(p) => format!("imagebackup.image.completed.{}", p.name),
            Payload::ImageFailed(p) => format!("imagebackup.image.failed.{}", p.name),
            Payload::WorkloadRolledOut(p) => {
                format!(
                    "imagebackup.workload.rolledout.{}",
                    workload_tokens(&p.workload)
                )
            }
            Payload::WorkloadReverted(p) => {
                format!(
                    "imagebackup.workload.reverted.{}",
                    workload_tokens(&p.workload)
                )
            }
        }
    }

    /// A deterministic id: the CloudEvents `id` and the `Nats-Msg-Id`, so a retried or repeated
    /// publish of the same fact is stored once within the stream's duplicate window.
    pub fn id(&self) -> String {
        match self {
            // Not the generation: a replicas change bumps it without changing what needs a
            // backup, and a watcher restarted after one must not store the same change again.
            Payload::WorkloadChanged(p) => format!(
                "workload.changed/{}/{}/{}",
                p.uid,
                workload_tokens(&p.workload),
                p.fingerprint()
            ),
            Payload::ImageCompleted(p) => format!("image.completed/{}/{}", p.name, p.digest),
            Payload::ImageFailed(p) => format!("image.failed/{}/{}", p.name, p.attempts),
            Payload::WorkloadRolledOut(p) => {
                format!("workload.rolledout/{}/{}", p.uid, p.generation)
            }
            Payload::WorkloadReverted(p) => {
                format!("workload.reverted/{}/{}", p.uid, p.generation)
            }
        }
    }

    fn data(&self) -> Result<serde_json::Value, serde_json::Error> {
        match self {
            Payload::WorkloadChanged(p) => serde_json::to_value(p),
            Payload::ImageCompleted(p) => serde_json::to_value(p),
            Payload::ImageFailed(p) => serde_json::to_value(p),
            Payload::WorkloadRolledOut(p) => serde_json::to_value(p),
            Payload::WorkloadReverted(p) => serde_json::to_value(p),
        }
    }

    /// The CloudEvent for this payload; `source` names the emitter (`/image-backup/backup`).
    pub fn to_cloudevent(&self, source: &str) -> Result<Event, EventError> {
        let data = self.data().map_err(|source| EventError::Data {
            ty: self.event_type().to_string(),
            source,
        })?;
        Ok(EventBuilderV10::new()
            .id(self.id())
            .source(source)
            .ty(self.event_type())
            .subject(self.subject())
            .time(chrono::Utc::now())
            .data("application/json", data)
            .build()?)
    }

    /// The typed payload of a CloudEvent, or why it is not one of ours.
    pub fn from_cloudevent(event: &Event) -> Result<Self, EventError> {
        let ty = event.ty().to_string();
        let wrap = |source| EventError::Data {
            ty: ty.clone(),
            source,
        };
        let value = match event.data() {
            Some(Data::Json(v)) => v.clone(),
            Some(Data::Binary(b)) => serde_json::from_slice(b).map_err(wrap)?,
            Some(Data::String(s)) => serde_json::from_str(s).map_err(wrap)?,
            None => return Err(EventError::NoData(ty)),
        };
        Ok(match ty.as_str() {
            WORKLOAD_CHANGED => {
                Payload::WorkloadChanged(serde_json::from_value(value).map_err(wrap)?)
            }
            IMAGE_COMPLETED => {
                Payload::ImageCompleted(serde_json::from_value(value).map_err(wrap)?)
            }
            IMAGE_FAILED => Payload::ImageFailed(serde_json::from_value(value).map_err(wrap)?),
            WORKLOAD_ROLLED_OUT => {
                Payload::WorkloadRolledOut(serde_json::from_value(value).map_err(wrap)?)
            }
            WORKLOAD_REVERTED => {
                Payload::WorkloadReverted(serde_json::from_value(value).map_err(wrap)?)
            }
            _ => return Err(EventError::UnknownType(ty)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorClass;

    pub(crate) fn changed() -> Payload {
        Payload::WorkloadChanged(WorkloadChanged {
            workload: WorkloadRef {
                kind: WorkloadKind::Deployment,
                namespace: "default".into(),
                name: "web.v2".into(),
            },
            uid: "u-1".into(),
            generation: 3,
            images: vec![WorkloadImage {
                container: "nginx".into(),
                init: false,
                source: "docker.io/library/nginx:1.14.0".into(),
                target: "localhost:5000/library_nginx:1.14.0".into(),
            }],
            pull_secrets: Vec::new(),
        })
    }

    #[test]
    fn subjects_ids_and_types() {
        let p = changed();
        assert_eq!(
            p.subject(),
            "imagebackup.workload.changed.default.deployment.web_v2"
        );
        let Payload::WorkloadChanged(data) = &p else {
            unreachable!()
        };
        assert_eq!(
            p.id(),
            format!(
                "workload.changed/u-1/default.deployment.web_v2/{}",
                data.fingerprint()
            )
        );
        // A generation bump alone keeps the id; an image change makes a new one.
        let mut bumped = data.clone();
        bumped.generation = 9;
        assert_eq!(Payload::WorkloadChanged(bumped.clone()).id(), p.id());
        bumped.images[0].source = "docker.io/library/nginx:1.15.0".into();
        assert_ne!(Payload::WorkloadChanged(bumped).id(), p.id());
        let f = Payload::ImageFailed(ImageFailed {
            name: "ib-0123".into(),
            source: "s".into(),
            target: "t".into(),
            error_class: ErrorClass::NotFound,
            message: "m".into(),
            attempts: 2,
        });
        assert_eq!(f.subject(), "imagebackup.image.failed.ib-0123");
        assert_eq!(f.event_type(), "io.k8slab.imagebackup.image.failed");
    }

    #[test]
    fn cloudevent_round_trip() {
        let p = changed();
        let ce = p.to_cloudevent("/image-backup/watcher").unwrap();
        assert_eq!(ce.ty(), WORKLOAD_CHANGED);
        assert_eq!(ce.id(), p.id());
        assert_eq!(Payload::from_cloudevent(&ce).unwrap(), p);
        let json = serde_json::to_value(&ce).unwrap();
        assert_eq!(json["data"]["images"][0]["container"], "nginx");
        assert_eq!(json["data"]["workload"]["kind"], "Deployment");
    }

    #[test]
    fn wrong_data_and_types_are_typed_errors() {
        let ce = EventBuilderV10::new()
            .id("1")
            .source("/x")
            .ty(WORKLOAD_CHANGED)
            .data("application/json", serde_json::json!({"workload": 1}))
            .build()
            .unwrap();
        assert!(matches!(
            Payload::from_cloudevent(&ce),
            Err(EventError::Data { .. })
        ));
        let ce = EventBuilderV10::new()
            .id("1")
            .source("/x")
            .ty("other")
            .build()
            .unwrap();
        assert!(matches!(
            Payload::from_cloudevent(&ce),
            Err(EventError::NoData(_))
        ));
        let ce = EventBuilderV10::new()
            .id("1")
            .source("/x")
            .ty("other")
            .data("application/json", serde_json::json!({}))
            .build()
            .unwrap();
        assert!(matches!(
            Payload::from_cloudevent(&ce),
            Err(EventError::UnknownType(_))
        ));
    }

    proptest::proptest! {
        /// What a Knative broker or any HTTP client posts to `serve`: any headers and body decode
        /// to an event or an `EventError`, never a panic.
        #[test]
        fn arbitrary_http_requests_never_panic(
            ty in "\\PC{0,40}",
            id in "\\PC{0,20}",
            content_type in proptest::sample::select(vec!["application/json", "application/cloudevents+json", "text/plain", ""]),
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
        ) {
            let mut headers = http::HeaderMap::new();
            for (k, v) in [("ce-specversion", "1.0"), ("ce-source", "/x"), ("content-type", content_type)] {
                headers.insert(k, http::HeaderValue::from_static(v));
            }
            if let Ok(v) = http::HeaderValue::from_str(&ty) {
                headers.insert("ce-type", v);
            }
            if let Ok(v) = http::HeaderValue::from_str(&id) {
                headers.insert("ce-id", v);
            }
            if let Ok(event) = from_http(&headers, &body) {
                let _ = Payload::from_cloudevent(&event);
            }
            let _ = from_http(&http::HeaderMap::new(), &body);
        }
    }
}
