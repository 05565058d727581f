//! What a failed Kubernetes API call means for the work that made it, decided once for every
//! function: a conflict is retried at once against fresh state; 429, 5xx, timeouts and
//! connection failures heal on their own and are retried with a growing pause; anything else
//! (403 Forbidden, 404 of a kind or namespace, 422 Invalid, 400, 401) will not heal by retrying
//! — it needs a person (RBAC, a CRD, a webhook) — so it is recorded and the work stops until
//! the cluster changes and a resync brings it back.

/// `409 Conflict`: another writer changed the object first.
pub const CONFLICT: u16 = 409;
/// `404 Not Found`.
pub const NOT_FOUND: u16 = 404;
/// `422 Unprocessable Entity`: the object (or a JSON patch's `test`) was refused.
pub const INVALID: u16 = 422;

/// The meaning of a failed API call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiFailure {
    /// 409: read again and retry.
    Conflict,
    /// 429, 5xx, timeouts, connection failures: retry with backoff.
    Transient,
    /// Refused for a reason retrying will not change.
    Refused {
        /// The HTTP status.
        code: u16,
        /// The API server's reason (`Forbidden`, `Invalid`, `NotFound`, …), bounded.
        reason: String,
        /// Its message, bounded and without control characters.
        message: String,
    },
}

impl ApiFailure {
    /// Classifies `error`.
    pub fn of(error: &kube::Error) -> Self {
        match error {
            kube::Error::Api(status) => {
                let code = status.code;
                match code {
                    CONFLICT => ApiFailure::Conflict,
                    408 | 429 | 500..=599 => ApiFailure::Transient,
                    _ => ApiFailure::Refused {
                        code,
                        reason: bounded(&status.reason, 64),
                        message: bounded(&status.message, 500),
                    },
                }
            }
            // Decoding an answer we did not expect is a defect of one of the sides, not
            // something a retry fixes.
            kube::Error::SerdeError(e) => ApiFailure::Refused {
                code: 0,
                reason: "UndecodableAnswer".into(),
                message: bounded(&e.to_string(), 500),
            },
            // Connection, TLS, timeouts, auth-exec refreshes: the network or the API server
            // is away for now.
            _ => ApiFailure::Transient,
        }
    }

    /// True for a 409.
    pub fn is_conflict(error: &kube::Error) -> bool {
        matches!(error, kube::Error::Api(s) if s.code == CONFLICT)
    }

    /// True for a 404 (the object is gone).
    pub fn is_not_found(error: &kube::Error) -> bool {
        matches!(error, kube::Error::Api(s) if s.code == NOT_FOUND)
    }

    /// True for a 422 (refused as invalid, or a JSON patch `test` that failed).
    pub fn is_invalid(error: &kube::Error) -> bool {
        matches!(error, kube::Error::Api(s) if s.code == INVALID)
    }
}

fn bounded(text: &str, max: usize) -> String {
    text.chars().filter(|c| !c.is_control()).take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16, reason: &str) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure(&format!("refused\n{}", "x".repeat(2000)), reason)
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn conflicts_retry_at_once_outages_back_off_refusals_stop() {
        assert_eq!(ApiFailure::of(&api(409, "Conflict")), ApiFailure::Conflict);
        for code in [408, 429, 500, 503, 504] {
            assert_eq!(
                ApiFailure::of(&api(code, "x")),
                ApiFailure::Transient,
                "{code}"
            );
        }
        for (code, reason) in [
            (403, "Forbidden"),
            (404, "NotFound"),
            (422, "Invalid"),
            (400, "BadRequest"),
            (401, "Unauthorized"),
        ] {
            match ApiFailure::of(&api(code, reason)) {
                ApiFailure::Refused {
                    code: c,
                    reason: r,
                    message,
                } => {
                    assert_eq!((c, r.as_str()), (code, reason));
                    assert!(message.chars().count() <= 500 && !message.contains('\n'));
                }
                other => panic!("{code}: {other:?}"),
            }
        }
        let decode = serde_json::from_str::<u8>("x").unwrap_err();
        assert!(matches!(
            ApiFailure::of(&kube::Error::SerdeError(decode)),
            ApiFailure::Refused { code: 0, .. }
        ));
        assert!(ApiFailure::is_conflict(&api(409, "Conflict")));
        assert!(ApiFailure::is_not_found(&api(404, "NotFound")));
        assert!(ApiFailure::is_invalid(&api(422, "Invalid")));
        assert!(!ApiFailure::is_invalid(&api(409, "Conflict")));
    }
}
