//! What registries and token services answer, parsed by pure functions the client uses:
//! `WWW-Authenticate` challenges, `Retry-After`, token answers, error bodies, docker configs.
//! Never a panic; a token answer's error never quotes the body; a quoted error is short and
//! has no control characters.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use shared::registry::auth::{Challenge, DockerConfig, TokenResponse};
use shared::registry::response::describe_error_body;
use shared::registry::retry::parse_retry_after;

#[derive(Arbitrary, Debug)]
struct Answers {
    challenge: String,
    retry_after: String,
    token: Vec<u8>,
    error_body: String,
    docker_config: Vec<u8>,
}

fuzz_target!(|a: Answers| {
    let _ = Challenge::parse(&a.challenge);
    let now = chrono::DateTime::from_timestamp(1_800_000_000, 0).expect("a fixed time");
    let _ = parse_retry_after(&a.retry_after, now);
    if let Err(reason) = TokenResponse::parse(&a.token) {
        let body = String::from_utf8_lossy(&a.token);
        assert!(
            body.len() < 8 || !reason.contains(body.as_ref()),
            "quoted the body"
        );
    }
    let quoted = describe_error_body(&a.error_body);
    assert!(quoted.chars().count() <= 300 && !quoted.chars().any(char::is_control));
    let _ = DockerConfig::from_json(&a.docker_config, "fuzz");
});
