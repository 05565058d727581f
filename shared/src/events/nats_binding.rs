//! The CloudEvents binding for `async-nats` messages (the SDK's own `nats` feature targets the
//! retired `nats` crate). Reading accepts both modes: binary (`ce-*` headers, data as body) and
//! structured (`content-type: application/cloudevents+json`, the whole event as JSON). Writing
//! uses binary mode, so subscribers can route on headers without parsing the body.
//!
//! Built on the SDK's `message` traits, the way its HTTP binding is, so attribute parsing and
//! validation are the SDK's. Never panics on any input.

use std::str::FromStr as _;

use async_nats::HeaderMap;
use async_nats::header::{HeaderName, HeaderValue};
use bytes::Bytes;
use cloudevents::Event;
use cloudevents::event::SpecVersion;
use cloudevents::message::{
    BinaryDeserializer, BinarySerializer, Encoding, MessageAttributeValue, MessageDeserializer,
    StructuredDeserializer, StructuredSerializer,
};

use super::EventError;

const SPEC_VERSION_HEADER: &str = "ce-specversion";
const CONTENT_TYPE: &str = "content-type";
const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";

/// Headers and body of a NATS message, seen as a CloudEvents message.
struct NatsMessage<'a> {
    headers: Option<&'a HeaderMap>,
    body: &'a [u8],
}

impl NatsMessage<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        let headers = self.headers?;
        headers
            .iter()
            .find(|(k, _)| AsRef::<str>::as_ref(k).eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.first())
            .map(|v| v.as_str())
    }
}

impl BinaryDeserializer for NatsMessage<'_> {
    fn deserialize_binary<R: Sized, V: BinarySerializer<R>>(
        self,
        mut visitor: V,
    ) -> cloudevents::message::Result<R> {
        let version = self
            .header(SPEC_VERSION_HEADER)
            .ok_or(cloudevents::message::Error::WrongEncoding {})?;
        let spec_version = SpecVersion::try_from(version)?;
        let attributes = spec_version.attribute_names();
        visitor = visitor.set_spec_version(spec_version)?;
        if let Some(headers) = self.headers {
            for (name, values) in headers.iter() {
                let key = AsRef::<str>::as_ref(name).to_ascii_lowercase();
                let Some(attr) = key.strip_prefix("ce-") else {
                    continue;
                };
                if attr == "specversion" {
                    continue;
                }
                let value = MessageAttributeValue::String(
                    values
                        .first()
                        .map(|v| v.as_str().to_string())
                        .unwrap_or_default(),
                );
                visitor = if attributes.contains(&attr) {
                    visitor.set_attribute(attr, value)?
                } else {
                    visitor.set_extension(attr, value)?
                };
            }
        }
        if let Some(ct) = self.header(CONTENT_TYPE) {
            visitor = visitor.set_attribute(
                "datacontenttype",
                MessageAttributeValue::String(ct.to_string()),
            )?;
        }
        if self.body.is_empty() {
            visitor.end()
        } else {
            visitor.end_with_data(self.body.to_vec())
        }
    }
}

impl StructuredDeserializer for NatsMessage<'_> {
    fn deserialize_structured<R: Sized, V: StructuredSerializer<R>>(
        self,
        visitor: V,
    ) -> cloudevents::message::Result<R> {
        visitor.set_structured_event(self.body.to_vec())
    }
}

impl MessageDeserializer for NatsMessage<'_> {
    fn encoding(&self) -> Encoding {
        let structured = self
            .header(CONTENT_TYPE)
            .is_some_and(|ct| ct.starts_with(STRUCTURED_CONTENT_TYPE));
        if structured {
            Encoding::STRUCTURED
        } else if self.header(SPEC_VERSION_HEADER).is_some() {
            Encoding::BINARY
        } else if self.headers.is_none() && self.body.first() == Some(&b'{') {
            // Structured mode without headers (core NATS publishers that cannot set any).
            Encoding::STRUCTURED
        } else {
            Encoding::UNKNOWN
        }
    }
}

/// Reads a CloudEvent from a NATS message's headers and body, in either mode.
pub fn from_nats_message(headers: Option<&HeaderMap>, body: &[u8]) -> Result<Event, EventError> {
    let message = NatsMessage { headers, body };
    if message.encoding() == Encoding::UNKNOWN {
        return Err(EventError::NotACloudEvent);
    }
    MessageDeserializer::into_event(message).map_err(EventError::Envelope)
}

/// Writes a CloudEvent as a binary-mode NATS message: `ce-*` headers, `content-type`, and the
/// data as the body.
///
/// Fallible because a CloudEvent read from outside (an HTTP sink, a structured message) may carry
/// an extension name or value that is not a valid NATS header (`:`, non-ASCII, CR/LF): async-nats
/// asserts on those, so they are refused here with [`EventError::Header`] instead.
pub fn to_nats_message(event: &Event) -> Result<(HeaderMap, Bytes), EventError> {
    let binary = super::to_binary(event);
    let mut headers = HeaderMap::new();
    for (name, value) in &binary.headers {
        let bad = |reason: &'static str| EventError::Header {
            name: name.chars().take(64).collect(),
            reason,
        };
        let name = HeaderName::from_str(name).map_err(|_| bad("not a valid header name"))?;
        let value = HeaderValue::from_str(value).map_err(|_| bad("value contains CR or LF"))?;
        headers.insert(name, value);
    }
    Ok((headers, binary.body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Payload;
    use cloudevents::AttributesReader;

    fn sample() -> Event {
        crate::events::tests::changed()
            .to_cloudevent("/image-backup/test")
            .unwrap()
    }

    #[test]
    fn binary_mode_round_trip() {
        let event = sample();
        let (headers, body) = to_nats_message(&event).unwrap();
        assert_eq!(
            headers.get("ce-specversion").map(|v| v.as_str()),
            Some("1.0")
        );
        assert_eq!(
            headers.get("ce-type").map(|v| v.as_str()),
            Some("io.k8slab.imagebackup.workload.changed")
        );
        let back = from_nats_message(Some(&headers), &body).unwrap();
        assert_eq!(
            Payload::from_cloudevent(&back).unwrap(),
            Payload::from_cloudevent(&event).unwrap()
        );
        assert_eq!(back.id(), event.id());
    }

    #[test]
    fn structured_mode_is_read() {
        let event = sample();
        let body = serde_json::to_vec(&event).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            "Content-Type",
            "application/cloudevents+json; charset=utf-8",
        );
        let back = from_nats_message(Some(&headers), &body).unwrap();
        assert_eq!(back.id(), event.id());
        // Also without any headers at all.
        let back = from_nats_message(None, &body).unwrap();
        assert_eq!(
            Payload::from_cloudevent(&back).unwrap(),
            crate::events::tests::changed()
        );
    }

    proptest::proptest! {
        /// Any headers and body: a CloudEvent or an error, never a panic (the consumer
        /// dead-letters what cannot be read).
        #[test]
        fn arbitrary_messages_never_panic(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            version in "(1\\.0|0\\.3|[ -~]{0,6})",
            id in "[ -~]{0,10}",
            ty in "(io\\.k8slab\\.imagebackup\\.(workload\\.changed|image\\.completed)|[ -~]{0,10})",
            time in "[ -~]{0,30}",
            content_type in "(application/json|application/cloudevents\\+json|text/plain|[ -~]{0,20})",
            with_headers in proptest::prelude::any::<bool>(),
        ) {
            let mut h = HeaderMap::new();
            h.insert("ce-specversion", version.as_str());
            h.insert("ce-id", id.as_str());
            h.insert("ce-source", "/x");
            h.insert("ce-type", ty.as_str());
            h.insert("ce-time", time.as_str());
            h.insert("content-type", content_type.as_str());
            let headers = with_headers.then_some(&h);
            if let Ok(event) = from_nats_message(headers, &body) {
                let _ = Payload::from_cloudevent(&event);
            }
        }
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        assert!(matches!(
            from_nats_message(None, b"hello"),
            Err(EventError::NotACloudEvent)
        ));
        assert!(from_nats_message(None, b"{not json").is_err());
        let mut h = HeaderMap::new();
        h.insert("ce-specversion", "9.9");
        assert!(matches!(
            from_nats_message(Some(&h), b"{}"),
            Err(EventError::Envelope(_))
        ));
        let mut h = HeaderMap::new();
        h.insert("ce-specversion", "1.0");
        h.insert("ce-id", "1");
        assert!(matches!(
            from_nats_message(Some(&h), b"{}"),
            Err(EventError::Envelope(_))
        ));
        let mut h = HeaderMap::new();
        h.insert("content-type", "application/cloudevents+json");
        assert!(matches!(
            from_nats_message(Some(&h), br#"{"specversion":"1.0"}"#),
            Err(EventError::Envelope(_))
        ));
    }

    #[test]
    fn extension_names_that_are_not_header_names_are_refused() {
        for bad in ["a:b", "caf\u{e9}", "x\ny"] {
            let mut event = sample();
            event.set_extension(bad, "v");
            assert!(
                matches!(to_nats_message(&event), Err(EventError::Header { .. })),
                "{bad:?}"
            );
        }
        let mut event = sample();
        event.set_extension("trace", "line\r\nInjected: yes");
        assert!(matches!(
            to_nats_message(&event),
            Err(EventError::Header { .. })
        ));
        let mut event = sample();
        event.set_extension("traceparent", "00-abc-01");
        let (headers, _) = to_nats_message(&event).unwrap();
        assert_eq!(
            headers.get("ce-traceparent").map(|v| v.as_str()),
            Some("00-abc-01")
        );
    }
}
