//! API errors as `metav1.Status` objects with the reasons and codes kube-apiserver uses, so
//! clients (kube-rs `ErrorResponse`, kubectl) react to them as they would in a cluster.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::resources::Resource;

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP code.
    pub code: u16,
    /// `reason` (NotFound, AlreadyExists, Conflict, Invalid, Gone, ...).
    pub reason: &'static str,
    /// Human message.
    pub message: String,
    /// `details`.
    pub details: Option<Value>,
}

fn details(resource: &Resource, name: &str) -> Value {
    json!({"name": name, "group": resource.group, "kind": resource.plural})
}

fn qualified(resource: &Resource) -> String {
    if resource.group.is_empty() {
        resource.plural.clone()
    } else {
        format!("{}.{}", resource.plural, resource.group)
    }
}

impl ApiError {
    /// 404 NotFound.
    pub fn not_found(resource: &Resource, name: &str) -> Self {
        Self {
            code: 404,
            reason: "NotFound",
            message: format!("{} \"{name}\" not found", qualified(resource)),
            details: Some(details(resource, name)),
        }
    }
    /// 404 for an unknown path or resource type.
    pub fn no_route(path: &str) -> Self {
        Self {
            code: 404,
            reason: "NotFound",
            message: format!("the server could not find the requested resource ({path})"),
            details: None,
        }
    }
    /// 409 AlreadyExists.
    pub fn already_exists(resource: &Resource, name: &str) -> Self {
        Self {
            code: 409,
            reason: "AlreadyExists",
            message: format!("{} \"{name}\" already exists", qualified(resource)),
            details: Some(details(resource, name)),
        }
    }
    /// 409 Conflict (stale resourceVersion).
    pub fn conflict(resource: &Resource, name: &str) -> Self {
        Self {
            code: 409,
            reason: "Conflict",
            message: format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                qualified(resource)
            ),
            details: Some(details(resource, name)),
        }
    }
    /// 422 Invalid.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self {
            code: 422,
            reason: "Invalid",
            message: message.into(),
            details: None,
        }
    }
    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            code: 400,
            reason: "BadRequest",
            message: message.into(),
            details: None,
        }
    }
    /// 405 MethodNotAllowed.
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self {
            code: 405,
            reason: "MethodNotAllowed",
            message: message.into(),
            details: None,
        }
    }
    /// 415 UnsupportedMediaType.
    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self {
            code: 415,
            reason: "UnsupportedMediaType",
            message: message.into(),
            details: None,
        }
    }
    /// 409 Conflict of a server-side apply: (manager as quoted, apiVersion, field) per conflict,
    /// worded as kube-apiserver words it.
    pub fn apply_conflicts(conflicts: &[(String, String, String)]) -> Self {
        let n = conflicts.len();
        let plural = if n == 1 { "" } else { "s" };
        let list: Vec<String> = conflicts
            .iter()
            .map(|(manager, api_version, field)| {
                format!("conflict with {manager} using {api_version}: {field}")
            })
            .collect();
        let causes: Vec<Value> = conflicts
            .iter()
            .map(|(manager, api_version, field)| {
                json!({"type": "FieldManagerConflict", "message": format!("conflict with {manager} using {api_version}"), "field": field})
            })
            .collect();
        let message = if n == 1 {
            format!("Apply failed with 1 conflict: {}", list[0])
        } else {
            format!(
                "Apply failed with {n} conflict{plural}: {}",
                list.join("\n")
            )
        };
        Self {
            code: 409,
            reason: "Conflict",
            message,
            details: Some(json!({"causes": causes})),
        }
    }
    /// 406 NotAcceptable (the client accepts only a form this answer does not have).
    pub fn not_acceptable(message: impl Into<String>) -> Self {
        Self {
            code: 406,
            reason: "NotAcceptable",
            message: message.into(),
            details: None,
        }
    }
    /// 410 Gone (resourceVersion too old), reason Expired as kube-apiserver says it.
    pub fn gone(rv: u64) -> Self {
        Self {
            code: 410,
            reason: "Expired",
            message: format!("too old resource version: {rv}"),
            details: None,
        }
    }
    /// 404 for a namespace that does not exist (creating into it).
    pub fn namespace_not_found(namespace: &str) -> Self {
        Self {
            code: 404,
            reason: "NotFound",
            message: format!("namespaces \"{namespace}\" not found"),
            details: Some(json!({"name": namespace, "kind": "namespaces"})),
        }
    }
    /// 401 Unauthorized: no user could be established.
    pub fn unauthorized() -> Self {
        Self {
            code: 401,
            reason: "Unauthorized",
            message: "Unauthorized".into(),
            details: None,
        }
    }
    /// 403 Forbidden, with kube-apiserver's message (who cannot do what where).
    pub fn forbidden(message: impl Into<String>, group: &str, plural: &str, name: &str) -> Self {
        Self {
            code: 403,
            reason: "Forbidden",
            message: message.into(),
            details: Some(json!({"name": name, "group": group, "kind": plural})),
        }
    }
    /// 410 for a `continue` token whose snapshot was compacted away.
    pub fn continue_expired() -> Self {
        Self {
            code: 410,
            reason: "Expired",
            message: "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.".into(),
            details: None,
        }
    }
    /// 500 InternalError: a defect in the server itself (a poisoned lock).
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            code: 500,
            reason: "InternalError",
            message: message.into(),
            details: None,
        }
    }
    /// An injected fault (429/500/503).
    pub fn injected(code: u16) -> Self {
        let reason = match code {
            429 => "TooManyRequests",
            503 => "ServiceUnavailable",
            _ => "InternalError",
        };
        Self {
            code,
            reason,
            message: format!("injected fault {code}"),
            details: None,
        }
    }

    /// The `metav1.Status` object.
    pub fn status(&self) -> Value {
        let mut v = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code,
        });
        if let Some(d) = &self.details {
            v["details"] = d.clone();
        }
        v
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, axum::Json(self.status())).into_response();
        if self.code == 429 {
            resp.headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("1"));
        }
        resp
    }
}
