//! Values that must never reach a log, an event or a CR status, in types whose `Debug` and
//! `Display` cannot print them: a URL that may carry `user:password@` (a NATS URL), and the
//! helper that strips credentials from any URL before it is shown.
//!
//! The secret itself is only reachable through an explicit `expose()`, so a careless
//! `{:?}` of a config or an error shows the redacted form.

use std::fmt;
use std::str::FromStr;

/// What stands in for a credential wherever one is shown.
pub const REDACTED: &str = "***";

/// A URL (or a comma-separated list of URLs, as NATS accepts) that may carry credentials in
/// its user-info part. `Debug` and `Display` show it with the credentials replaced by `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

// === impl SecretUrl ===

impl SecretUrl {
    /// The URL as given, credentials included: only for handing to a client library.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for SecretUrl {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_string()))
    }
}

impl From<&str> for SecretUrl {
    fn from(s: &str) -> Self {
        Self(s.to_string())
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", redact_urls(&self.0))
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_urls(&self.0))
    }
}

/// `scheme://user:pass@host/…` → `scheme://***@host/…`, for each comma-separated URL; text
/// without user-info is returned unchanged. Never fails: a string that is not a URL at all is
/// cut at its first `@` (everything before it could be a secret).
pub fn redact_urls(urls: &str) -> String {
    urls.split(',')
        .map(|u| redact_url(u.trim()))
        .collect::<Vec<_>>()
        .join(",")
}

fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, url),
    };
    // User-info ends at the last '@' before the first '/', '?' or '#'.
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let redacted = match rest[..authority_end].rfind('@') {
        Some(at) => format!("{REDACTED}{}", &rest[at..]),
        None => rest.to_string(),
    };
    match scheme {
        Some(s) => format!("{s}://{redacted}"),
        None => redacted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_redacted_everywhere_they_are_shown() {
        let url: SecretUrl = "nats://alice:s3cret@nats-1:4222, tls://tok3n@nats-2:4222"
            .parse()
            .unwrap();
        for shown in [format!("{url}"), format!("{url:?}")] {
            assert!(!shown.contains("s3cret"), "{shown}");
            assert!(!shown.contains("alice"), "{shown}");
            assert!(!shown.contains("tok3n"), "{shown}");
            assert!(shown.contains("nats://***@nats-1:4222"), "{shown}");
        }
        assert!(url.expose().contains("s3cret"));
        assert_eq!(
            redact_urls("nats://127.0.0.1:4222"),
            "nats://127.0.0.1:4222"
        );
        assert_eq!(
            redact_urls("https://u:p@h/path@x?q=a@b"),
            "https://***@h/path@x?q=a@b"
        );
        assert_eq!(redact_urls("user:pw@host"), "***@host");
    }
}
