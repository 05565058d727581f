//! A JetStream message of any headers and body: a CloudEvent and a payload, or an error (the
//! consumer dead-letters it), never a panic.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use shared::events::Payload;
use shared::events::from_nats_message;

#[derive(Arbitrary, Debug)]
struct Message {
    headers: Option<Vec<(String, String)>>,
    body: Vec<u8>,
}

fuzz_target!(|m: Message| {
    let headers = m.headers.map(|pairs| {
        // Only what a message from the wire can hold: async-nats parses names and values
        // fallibly there (and asserts on invalid ones given to `insert`).
        let mut h = async_nats::HeaderMap::new();
        for (k, v) in pairs {
            if let (Ok(name), Ok(value)) = (
                k.parse::<async_nats::HeaderName>(),
                v.parse::<async_nats::HeaderValue>(),
            ) {
                h.insert(name, value);
            }
        }
        h
    });
    if let Ok(event) = from_nats_message(headers.as_ref(), &m.body) {
        let _ = Payload::from_cloudevent(&event);
    }
});
