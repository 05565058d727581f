//! Error classes: the one vocabulary every failure is sorted into, so that the CR status, the
//! `image.failed` event, the metrics and the ack decision agree on what happened. Each crate's own
//! thiserror enum maps its variants here with a `class()` method; nothing else decides a class.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What kind of failure happened, in terms a user can act on.
// As a metric label it is the variant's name, as in the CR status.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    JsonSchema,
    prometheus_client::encoding::EncodeLabelValue,
)]
pub enum ErrorClass {
    /// The image, tag, manifest or blob does not exist at the source (404).
    NotFound,
    /// The registry refused the credentials, or there were none and it wants some (401/403).
    Unauthorized,
    /// The registry asked us to slow down (429) and the retry budget ran out.
    RateLimited,
    /// The registry or network failed (5xx, refused or cut connections, timeouts).
    Unavailable,
    /// Bytes did not match their digest: nothing was tagged at the target.
    Corrupt,
    /// A manifest kind we will not copy (schema1, unknown media types).
    Unsupported,
    /// The registry answered what the distribution protocol does not allow: another 4xx, a
    /// malformed or oversize manifest, an invalid digest or size. Retrying will not fix it.
    Protocol,
    /// The request itself is malformed (bad reference, undecodable event).
    Invalid,
    /// A bug or an unexpected state on our side.
    Internal,
}

/// What a consumer does with a message whose handling failed with a class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Try again later: Nak with a delay that grows with the delivery count.
    Transient,
    /// Record the failure (status, `image.failed`), then Ack: retrying will not help.
    Permanent,
    /// The message itself is bad: dead-letter it, then Term.
    Invalid,
}

// === impl ErrorClass ===

impl ErrorClass {
    /// The stable name used in events, CR status and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::NotFound => "NotFound",
            ErrorClass::Unauthorized => "Unauthorized",
            ErrorClass::RateLimited => "RateLimited",
            ErrorClass::Unavailable => "Unavailable",
            ErrorClass::Corrupt => "Corrupt",
            ErrorClass::Unsupported => "Unsupported",
            ErrorClass::Protocol => "Protocol",
            ErrorClass::Invalid => "Invalid",
            ErrorClass::Internal => "Internal",
        }
    }

    /// How a consumer treats a failure of this class.
    pub fn disposition(self) -> Disposition {
        match self {
            ErrorClass::RateLimited | ErrorClass::Unavailable | ErrorClass::Internal => {
                Disposition::Transient
            }
            ErrorClass::NotFound
            | ErrorClass::Unauthorized
            | ErrorClass::Corrupt
            | ErrorClass::Unsupported
            | ErrorClass::Protocol => Disposition::Permanent,
            ErrorClass::Invalid => Disposition::Invalid,
        }
    }
}

impl std::fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
