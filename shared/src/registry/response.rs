//! Reading a registry's answers as if the registry were hostile: every body read has a cap
//! (manifests 4 MiB, token answers 64 KiB, error bodies 4 KiB, of which 300 characters are
//! quoted) and error bodies a deadline, so an endless or drip-fed body costs bounded memory and
//! time. Final answers become a classified [`CopyError`]; transport errors lose their URL (which
//! can carry an upload session id) on the way.

use std::time::Duration;

use reqwest::{Response, StatusCode, header};

use super::error::CopyError;

/// The largest manifest we read (the OCI distribution spec suggests registries accept at least
/// 4 MiB).
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;
/// The largest token-service answer we read: a JWT is a few KiB.
pub const MAX_TOKEN_BYTES: usize = 64 * 1024;
/// How much of an error body we read; the registry's JSON `errors` fit in far less.
pub const MAX_ERROR_BYTES: usize = 4 * 1024;
/// How much of an error message we quote.
const QUOTED_CHARS: usize = 300;
/// How long we wait for an error body before giving up on it (it is only for the message).
const ERROR_BODY_DEADLINE: Duration = Duration::from_secs(5);

/// A body read under a cap.
#[derive(Debug)]
pub enum Capped {
    /// The whole body, within the cap.
    Complete(Vec<u8>),
    /// The body (declared or as sent) is longer than the cap; reading stopped there.
    TooLarge,
}

/// Reads `resp`'s body, stopping as soon as it passes `cap` bytes (or declares more in
/// `Content-Length`), so a body sent chunked without a length cannot grow memory unbounded.
pub async fn read_capped(mut resp: Response, cap: usize) -> Result<Capped, reqwest::Error> {
    if resp.content_length().is_some_and(|l| l > cap as u64) {
        return Ok(Capped::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if body.len().saturating_add(chunk.len()) > cap {
            return Ok(Capped::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Capped::Complete(body))
}

/// Content-Type without parameters.
pub fn content_type(resp: &Response) -> String {
    resp.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_string())
        .unwrap_or_default()
}

/// A header's value as text, if present and readable.
pub fn header_str(resp: &Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// `Unavailable` for a transport error after `attempts` attempts.
pub fn transport_error(
    registry: impl Into<String>,
    what: impl Into<String>,
    attempts: u32,
    e: &reqwest::Error,
) -> CopyError {
    CopyError::Unavailable {
        registry: registry.into(),
        what: what.into(),
        attempts,
        cause: transport_cause(e),
    }
}

/// The TLS verifier's complaint when `e` is a certificate the client does not trust (unknown
/// issuer, expired, another name): a configuration problem, not an outage.
pub fn untrusted_certificate(e: &reqwest::Error) -> Option<String> {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        // The TLS error travels inside `io::Error`s (nested), whose `source` skips it.
        let mut inner: &(dyn std::error::Error + 'static) = s;
        loop {
            if let Some(rustls::Error::InvalidCertificate(why)) =
                inner.downcast_ref::<rustls::Error>()
            {
                return Some(format!("{why:?}"));
            }
            match inner
                .downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
            {
                Some(next) => inner = next,
                None => break,
            }
        }
        source = s.source();
    }
    None
}

/// A transport error's cause without the URL (which may carry an upload session id).
pub fn transport_cause(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "connection cut while transferring"
    } else if e.is_request() {
        "request failed"
    } else {
        "transport error"
    };
    let mut source = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {detail}")
    }
}

/// The registry's message from an error body: its JSON `errors` (`CODE: message; …`), else the
/// text, cut to a few hundred characters. Reads at most [`MAX_ERROR_BYTES`] for at most a few
/// seconds: an endless or drip-fed error body is not waited for.
async fn error_message(resp: Response) -> String {
    match tokio::time::timeout(ERROR_BODY_DEADLINE, read_capped_prefix(resp)).await {
        Ok(text) => describe_error_body(&text),
        Err(_) => "(error body not received in time)".into(),
    }
}

/// The message quoted from a registry's error body: its JSON `errors` as `CODE: message; …`,
/// else the text, without control characters and cut to a few hundred characters.
pub fn describe_error_body(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| {
            v["errors"].as_array().map(|errs| {
                errs.iter()
                    .map(|e| {
                        format!(
                            "{}: {}",
                            e["code"].as_str().unwrap_or("?"),
                            e["message"].as_str().unwrap_or("")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            })
        })
        .unwrap_or_else(|| text.to_string())
        .chars()
        .filter(|c| !c.is_control())
        .take(QUOTED_CHARS)
        .collect()
}

/// Up to [`MAX_ERROR_BYTES`] of a body as lossy text (what fits is enough for a message).
async fn read_capped_prefix(mut resp: Response) -> String {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        let room = MAX_ERROR_BYTES.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_ERROR_BYTES {
            break;
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}

/// Maps a final non-success answer to an error, quoting (part of) the registry's message.
pub async fn status_error(registry: &str, what: &str, resp: Response, attempts: u32) -> CopyError {
    let status = resp.status();
    match status {
        StatusCode::NOT_FOUND => CopyError::NotFound {
            what: what.into(),
            registry: registry.into(),
        },
        StatusCode::TOO_MANY_REQUESTS => CopyError::RateLimited {
            registry: registry.into(),
            what: what.into(),
            attempts,
        },
        s if s.is_server_error() || s == StatusCode::REQUEST_TIMEOUT => CopyError::Unavailable {
            registry: registry.into(),
            what: what.into(),
            attempts,
            cause: format!("HTTP {}: {}", s.as_u16(), error_message(resp).await),
        },
        s => CopyError::Protocol {
            registry: registry.into(),
            what: what.into(),
            status: s.as_u16(),
            message: error_message(resp).await,
        },
    }
}
