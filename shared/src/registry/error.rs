//! Why a copy failed: one variant per cause a user can act on, each mapped to an
//! [`ErrorClass`] that drives the CR status, the `image.failed` event, metrics and retries.
//! Messages name registries, repositories and digests, never credentials or tokens.

use crate::ErrorClass;

/// `1 attempt`, `6 attempts`.
fn plural_attempts(n: &u32) -> String {
    if *n == 1 {
        "1 attempt".into()
    } else {
        format!("{n} attempts")
    }
}

/// A copy failure.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The manifest, tag or blob does not exist (404).
    #[error("{what} not found at {registry}")]
    NotFound {
        /// What was asked for (`manifest library/nginx:1.14.0`, `blob sha256:…`).
        what: String,
        /// The registry host.
        registry: String,
    },
    /// The registry refused us (401/403), after trying the configured credentials.
    #[error("{registry} refused access to {what} ({status}){hint}")]
    Unauthorized {
        /// The registry host.
        registry: String,
        /// What was asked for.
        what: String,
        /// 401 or 403.
        status: u16,
        /// A hint about credentials (whether any were configured).
        hint: &'static str,
    },
    /// An HTTPS registry sent us to a token service on plain HTTP (or to something that is not
    /// an HTTP URL): our credentials would travel in clear, so we do not go.
    #[error(
        "{registry} asks for credentials at a token service that is not HTTPS ({realm_scheme}://…): refused"
    )]
    InsecureRealm {
        /// The registry host.
        registry: String,
        /// The realm's scheme (the URL itself is not repeated).
        realm_scheme: String,
    },
    /// The registry's TLS certificate is not trusted (signed by a CA we do not know, expired,
    /// or for another name): a configuration matter no retry fixes.
    #[error(
        "{registry}'s TLS certificate is not trusted ({cause}); if it is signed by a private or corporate CA, trust that CA with --registry-ca-file (REGISTRY_CA_FILE)"
    )]
    UntrustedCertificate {
        /// The registry host.
        registry: String,
        /// What the TLS verifier said.
        cause: String,
    },
    /// The registry refused, at the start of a blob's streamed upload, the token the upload
    /// session was opened with (it expired or was revoked in between). Transient: the token is
    /// forgotten and the blob's retry opens a new session with a new one.
    #[error("{registry} refused our token for {what} (expired or revoked since the upload began)")]
    TokenRefused {
        /// The registry host.
        registry: String,
        /// The upload.
        what: String,
    },
    /// The registry kept answering 429 past the retry budget.
    #[error("{registry} kept rate-limiting (429) {what} after {}", plural_attempts(.attempts))]
    RateLimited {
        /// The registry host.
        registry: String,
        /// What was asked for.
        what: String,
        /// Attempts made.
        attempts: u32,
    },
    /// 5xx answers, refused or cut connections, or timeouts past the retry budget.
    #[error("{registry} unavailable for {what} after {}: {cause}", plural_attempts(.attempts))]
    Unavailable {
        /// The registry host.
        registry: String,
        /// What was asked for.
        what: String,
        /// Attempts made.
        attempts: u32,
        /// The last cause.
        cause: String,
    },
    /// A transfer moved fewer bytes than the minimum throughput allows (a drip-feeding source
    /// or a target that stopped reading); `side` says which end stalled.
    #[error(
        "{side} {registry} stalled on {what}: {moved} bytes in {window_seconds} s (minimum {min_bytes}), after {}",
        plural_attempts(.attempts)
    )]
    Stalled {
        /// `source` or `target`.
        side: &'static str,
        /// The registry that stalled.
        registry: String,
        /// The transfer.
        what: String,
        /// Bytes moved in the last window.
        moved: u64,
        /// The window.
        window_seconds: u64,
        /// The minimum per window.
        min_bytes: u64,
        /// Attempts made.
        attempts: u32,
    },
    /// Bytes did not match their digest (or declared size); the upload was cancelled.
    #[error("{what} is corrupt: expected {expected}, got {actual}")]
    Corrupt {
        /// What was read (`blob sha256:…`, `manifest …`).
        what: String,
        /// The digest (or size) it should have.
        expected: String,
        /// What it had.
        actual: String,
    },
    /// A manifest kind we do not copy (schema1, unknown media types, digests other than sha256).
    #[error("unsupported {media_type:?} for {what}{hint}")]
    Unsupported {
        /// The media type (or digest algorithm).
        media_type: String,
        /// Which manifest.
        what: String,
        /// Extra advice.
        hint: &'static str,
    },
    /// The registry served content that cannot be valid: a manifest that is not JSON, over the
    /// size limit, with an invalid digest or a negative size, sizes that overflow.
    #[error("{registry} served a malformed {what}: {reason}")]
    Malformed {
        /// The registry host.
        registry: String,
        /// What it served.
        what: String,
        /// Why it cannot be valid.
        reason: String,
    },
    /// What we were asked to copy cannot be valid (a target without tag, a digest mismatch
    /// between the request's target and source).
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What.
        what: String,
        /// Why.
        reason: String,
    },
    /// The registry answered something the protocol does not allow (another 4xx, a 2xx
    /// without Location).
    #[error("{registry} answered {status} to {what}: {message}")]
    Protocol {
        /// The registry host.
        registry: String,
        /// The request.
        what: String,
        /// HTTP status.
        status: u16,
        /// The registry's error message (its JSON `errors`), truncated.
        message: String,
    },
    /// A failure on our side (the HTTP client could not be built).
    #[error("internal error: {0}")]
    Internal(String),
}

// === impl CopyError ===

impl CopyError {
    /// The class that decides what happens next.
    pub fn class(&self) -> ErrorClass {
        match self {
            CopyError::NotFound { .. } => ErrorClass::NotFound,
            CopyError::Unauthorized { .. }
            | CopyError::InsecureRealm { .. }
            | CopyError::UntrustedCertificate { .. } => ErrorClass::Unauthorized,
            CopyError::RateLimited { .. } => ErrorClass::RateLimited,
            CopyError::Unavailable { .. }
            | CopyError::Stalled { .. }
            | CopyError::TokenRefused { .. } => ErrorClass::Unavailable,
            CopyError::Corrupt { .. } => ErrorClass::Corrupt,
            CopyError::Unsupported { .. } => ErrorClass::Unsupported,
            CopyError::Malformed { .. } | CopyError::Protocol { .. } => ErrorClass::Protocol,
            CopyError::Invalid { .. } => ErrorClass::Invalid,
            CopyError::Internal(_) => ErrorClass::Internal,
        }
    }

    /// The variant's name, for metric labels (never data-dependent).
    pub fn label(&self) -> &'static str {
        match self {
            CopyError::NotFound { .. } => "not_found",
            CopyError::Unauthorized { .. } => "unauthorized",
            CopyError::InsecureRealm { .. } => "insecure_realm",
            CopyError::UntrustedCertificate { .. } => "untrusted_certificate",
            CopyError::TokenRefused { .. } => "token_refused",
            CopyError::RateLimited { .. } => "rate_limited",
            CopyError::Unavailable { .. } => "unavailable",
            CopyError::Stalled { .. } => "stalled",
            CopyError::Corrupt { .. } => "corrupt",
            CopyError::Unsupported { .. } => "unsupported",
            CopyError::Malformed { .. } => "malformed",
            CopyError::Invalid { .. } => "invalid",
            CopyError::Protocol { .. } => "protocol",
            CopyError::Internal(_) => "internal",
        }
    }

    /// The same error counting `n` attempts in all (for failures retried above the request
    /// level, such as a whole blob transfer).
    #[must_use]
    pub fn with_attempts(mut self, n: u32) -> Self {
        match &mut self {
            CopyError::RateLimited { attempts, .. }
            | CopyError::Unavailable { attempts, .. }
            | CopyError::Stalled { attempts, .. } => *attempts = n.max(*attempts),
            _ => {}
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every variant, its class and its label, pinned in one table.
    #[test]
    fn every_variant_has_the_class_and_label_a_user_expects() {
        let s = String::new;
        let table: Vec<(CopyError, ErrorClass, &str)> = vec![
            (
                CopyError::NotFound {
                    what: s(),
                    registry: s(),
                },
                ErrorClass::NotFound,
                "not_found",
            ),
            (
                CopyError::Unauthorized {
                    registry: s(),
                    what: s(),
                    status: 401,
                    hint: "",
                },
                ErrorClass::Unauthorized,
                "unauthorized",
            ),
            (
                CopyError::InsecureRealm {
                    registry: s(),
                    realm_scheme: "http".into(),
                },
                ErrorClass::Unauthorized,
                "insecure_realm",
            ),
            (
                CopyError::UntrustedCertificate {
                    registry: s(),
                    cause: s(),
                },
                ErrorClass::Unauthorized,
                "untrusted_certificate",
            ),
            (
                CopyError::TokenRefused {
                    registry: s(),
                    what: s(),
                },
                ErrorClass::Unavailable,
                "token_refused",
            ),
            (
                CopyError::RateLimited {
                    registry: s(),
                    what: s(),
                    attempts: 6,
                },
                ErrorClass::RateLimited,
                "rate_limited",
            ),
            (
                CopyError::Unavailable {
                    registry: s(),
                    what: s(),
                    attempts: 6,
                    cause: s(),
                },
                ErrorClass::Unavailable,
                "unavailable",
            ),
            (
                CopyError::Stalled {
                    side: "source",
                    registry: s(),
                    what: s(),
                    moved: 1,
                    window_seconds: 30,
                    min_bytes: 65536,
                    attempts: 1,
                },
                ErrorClass::Unavailable,
                "stalled",
            ),
            (
                CopyError::Corrupt {
                    what: s(),
                    expected: s(),
                    actual: s(),
                },
                ErrorClass::Corrupt,
                "corrupt",
            ),
            (
                CopyError::Unsupported {
                    media_type: s(),
                    what: s(),
                    hint: "",
                },
                ErrorClass::Unsupported,
                "unsupported",
            ),
            (
                CopyError::Malformed {
                    registry: s(),
                    what: s(),
                    reason: s(),
                },
                ErrorClass::Protocol,
                "malformed",
            ),
            (
                CopyError::Invalid {
                    what: s(),
                    reason: s(),
                },
                ErrorClass::Invalid,
                "invalid",
            ),
            (
                CopyError::Protocol {
                    registry: s(),
                    what: s(),
                    status: 400,
                    message: s(),
                },
                ErrorClass::Protocol,
                "protocol",
            ),
            (CopyError::Internal(s()), ErrorClass::Internal, "internal"),
        ];
        for (error, class, label) in table {
            assert_eq!(error.class(), class, "{error:?}");
            assert_eq!(error.label(), label, "{error:?}");
        }
    }

    #[test]
    fn attempts_are_counted_and_worded() {
        let e = CopyError::Unavailable {
            registry: "r".into(),
            what: "blob".into(),
            attempts: 1,
            cause: "cut".into(),
        };
        assert!(e.to_string().contains("after 1 attempt:"), "{e}");
        let e = e.with_attempts(6);
        assert!(e.to_string().contains("after 6 attempts:"), "{e}");
    }
}
