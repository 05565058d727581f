//! Why a copy failed: one variant per cause a user can act on, each mapped to an
//! [`ErrorClass`] that drives the CR status, the `image.failed` event, metrics and retries.
//! Messages name registries, repositories and digests, never credentials or tokens.

use shared::ErrorClass;

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
    /// The registry kept answering 429 past the retry budget.
    #[error("{registry} kept rate-limiting (429) {what} after {attempts} attempts")]
    RateLimited {
        /// The registry host.
        registry: String,
        /// What was asked for.
        what: String,
        /// Attempts made.
        attempts: u32,
    },
    /// 5xx answers, refused or cut connections, or timeouts past the retry budget.
    #[error("{registry} unavailable for {what} after {attempts} attempts: {cause}")]
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
    /// A manifest kind we do not copy (schema1, unknown media types).
    #[error("unsupported manifest media type {media_type:?} for {what}{hint}")]
    Unsupported {
        /// The media type.
        media_type: String,
        /// Which manifest.
        what: String,
        /// Extra advice.
        hint: &'static str,
    },
    /// A reference, manifest or answer that cannot be valid.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What.
        what: String,
        /// Why.
        reason: String,
    },
    /// The registry answered something the protocol does not allow (e.g. 2xx without Location).
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
}

impl CopyError {
    /// The class that decides what happens next.
    pub fn class(&self) -> ErrorClass {
        match self {
            CopyError::NotFound { .. } => ErrorClass::NotFound,
            CopyError::Unauthorized { .. } => ErrorClass::Unauthorized,
            CopyError::RateLimited { .. } => ErrorClass::RateLimited,
            CopyError::Unavailable { .. } => ErrorClass::Unavailable,
            CopyError::Corrupt { .. } => ErrorClass::Corrupt,
            CopyError::Unsupported { .. } => ErrorClass::Unsupported,
            CopyError::Invalid { .. } => ErrorClass::Invalid,
            CopyError::Protocol { .. } => ErrorClass::Unavailable,
        }
    }

    /// The variant's name, for metric labels (never data-dependent).
    pub fn label(&self) -> &'static str {
        match self {
            CopyError::NotFound { .. } => "not_found",
            CopyError::Unauthorized { .. } => "unauthorized",
            CopyError::RateLimited { .. } => "rate_limited",
            CopyError::Unavailable { .. } => "unavailable",
            CopyError::Corrupt { .. } => "corrupt",
            CopyError::Unsupported { .. } => "unsupported",
            CopyError::Invalid { .. } => "invalid",
            CopyError::Protocol { .. } => "protocol",
        }
    }
}
