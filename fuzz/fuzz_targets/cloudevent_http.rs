//! An HTTP request of any headers and body to `serve`: a CloudEvent (binary or structured
//! mode) and a payload, or an error (400), never a panic.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use shared::events::{Payload, from_http};

#[derive(Arbitrary, Debug)]
struct Request {
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

fuzz_target!(|r: Request| {
    let mut headers = http::HeaderMap::new();
    for (name, value) in r.headers {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_bytes(&value),
        ) {
            headers.append(n, v);
        }
    }
    if let Ok(event) = from_http(&headers, &r.body) {
        let _ = Payload::from_cloudevent(&event);
    }
});
