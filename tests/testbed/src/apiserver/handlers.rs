//! HTTP routing and the verbs: discovery, CRUD, patch, status, list, watch, Tables, OpenAPI.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::ApiState;
use super::error::ApiError;
use super::patch;
use super::resources::{self, Resource, json_path};
use super::simulation;
use super::store::{ChangeType, Key};

type Result<T> = std::result::Result<T, ApiError>;

/// The router: everything goes through one fallback that parses Kubernetes paths.
pub(crate) fn router(state: Arc<ApiState>) -> axum::Router {
    axum::Router::new().fallback(dispatch).with_state(state)
}

/// Creates the namespaces a fresh cluster has.
pub(crate) fn bootstrap(state: &ApiState) -> anyhow::Result<()> {
    let ns = resources::builtins()
        .into_iter()
        .find(|r| r.plural == "namespaces")
        .context_ok()?;
    let mut store = state
        .store
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?;
    for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let key = Key {
            storage_key: ns.storage_key(),
            namespace: String::new(),
            name: name.into(),
        };
        let object = json!({"metadata": {"name": name}, "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}});
        let created = store
            .create(&ns, key.clone(), object)
            .map_err(|e| anyhow::anyhow!(e.message))?;
        let mut with_status = created;
        with_status["status"] = json!({"phase": "Active"});
        store
            .update(&ns, &key, with_status, true)
            .map_err(|e| anyhow::anyhow!(e.message))?;
    }
    Ok(())
}

trait ContextOk<T> {
    fn context_ok(self) -> anyhow::Result<T>;
}
impl<T> ContextOk<T> for Option<T> {
    fn context_ok(self) -> anyhow::Result<T> {
        self.ok_or_else(|| anyhow::anyhow!("missing built-in"))
    }
}

/// A parsed resource path.
struct Target {
    resource: Resource,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn query_map(uri: &axum::http::Uri) -> BTreeMap<String, String> {
    uri.query().map(url_decode_pairs).unwrap_or_default()
}

fn url_decode_pairs(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn dispatch(State(state): State<Arc<ApiState>>, request: Request) -> Response {
    let (latency, injected) = match state.faults.lock() {
        Ok(mut f) => (f.latency, f.fail_next.pop_front()),
        Err(_) => (Duration::ZERO, None),
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Some(code) = injected {
        return ApiError::injected(code).into_response();
    }
    let method = request.method().clone();
    let uri = request.uri().clone();
    let headers = request.headers().clone();
    let body = match axum::body::to_bytes(request.into_body(), 64 * 1024 * 1024).await {
        Ok(b) => b,
        Err(e) => return ApiError::bad_request(format!("cannot read body: {e}")).into_response(),
    };
    match route(&state, &method, &uri, &headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn route(
    state: &Arc<ApiState>,
    method: &Method,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let path = uri.path().trim_end_matches('/');
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let query = query_map(uri);
    match segments.as_slice() {
        ["version"] => return Ok(json_response(StatusCode::OK, version())),
        ["healthz"] | ["readyz"] | ["livez"] => return Ok((StatusCode::OK, "ok").into_response()),
        ["openapi", "v2"] => return Ok(json_response(StatusCode::OK, openapi_v2(state))),
        ["openapi", "v3"] => return Ok(json_response(StatusCode::OK, openapi_v3_root(state))),
        ["openapi", "v3", rest @ ..] => return openapi_v3_group(state, rest),
        ["api"] => {
            return Ok(json_response(
                StatusCode::OK,
                json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": state.addr.to_string()}]}),
            ));
        }
        ["api", "v1"] => {
            return Ok(json_response(
                StatusCode::OK,
                resource_list(state, "", "v1"),
            ));
        }
        ["apis"] => return Ok(json_response(StatusCode::OK, group_list(state))),
        ["apis", group] => {
            return group_list(state)["groups"]
                .as_array()
                .and_then(|g| g.iter().find(|g| g["name"] == *group).cloned())
                .map(|mut g| {
                    g["kind"] = "APIGroup".into();
                    g["apiVersion"] = "v1".into();
                    json_response(StatusCode::OK, g)
                })
                .ok_or_else(|| ApiError::no_route(path));
        }
        ["apis", group, version] => {
            let list = resource_list(state, group, version);
            if list["resources"].as_array().is_none_or(|r| r.is_empty()) {
                return Err(ApiError::no_route(path));
            }
            return Ok(json_response(StatusCode::OK, list));
        }
        _ => {}
    }
    let (group, version, rest) = match segments.as_slice() {
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(ApiError::no_route(path)),
    };
    let target =
        parse_target(state, group, version, rest).ok_or_else(|| ApiError::no_route(path))?;
    let table = headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"));
    match (method, &target.name) {
        (&Method::GET, None) if is_true(query.get("watch")) => {
            watch(state, &target, &query, table).await
        }
        (&Method::GET, None) => list(state, &target, &query, table),
        (&Method::GET, Some(name)) => {
            let object = get(state, &target, name)?;
            if table {
                return Ok(json_response(
                    StatusCode::OK,
                    to_table(&target.resource, &[object], &query, None),
                ));
            }
            Ok(json_response(StatusCode::OK, object))
        }
        (&Method::POST, None) => create(state, &target, headers, &body),
        (&Method::PUT, Some(name)) => update(state, &target, name, headers, &body),
        (&Method::PATCH, Some(name)) => patch_object(state, &target, name, headers, &body, &query),
        (&Method::DELETE, Some(name)) => delete(state, &target, name),
        (&Method::DELETE, None) => delete_collection(state, &target, &query),
        _ => Err(ApiError::method_not_allowed(format!(
            "{method} is not supported on {path}"
        ))),
    }
}

fn is_true(v: Option<&String>) -> bool {
    v.is_some_and(|v| v == "true" || v == "1")
}

fn version() -> Value {
    json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-testbed", "gitCommit": "testbed", "gitTreeState": "clean",
           "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64"})
}

fn resources_of(state: &ApiState) -> Vec<Resource> {
    state
        .resources
        .read()
        .map(|r| r.clone())
        .unwrap_or_default()
}

fn resource_list(state: &ApiState, group: &str, version: &str) -> Value {
    let mut list = Vec::new();
    for r in resources_of(state)
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        list.push(r.api_resource());
        if r.status_subresource {
            list.push(json!({"name": format!("{}/status", r.plural), "singularName": "", "namespaced": r.namespaced, "kind": r.kind, "verbs": ["get", "patch", "update"]}));
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list})
}

fn group_list(state: &ApiState) -> Value {
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in resources_of(state).iter().filter(|r| !r.group.is_empty()) {
        let versions = groups.entry(r.group.clone()).or_default();
        if !versions.contains(&r.version) {
            versions.push(r.version.clone());
        }
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(name, versions)| {
            let vs: Vec<Value> = versions
                .iter()
                .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
                .collect();
            json!({"name": name, "versions": vs.clone(), "preferredVersion": vs[0].clone()})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn parse_target(state: &ApiState, group: &str, version: &str, rest: &[&str]) -> Option<Target> {
    let all = resources_of(state);
    let find = |plural: &str| {
        all.iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
            .cloned()
    };
    if rest.first() == Some(&"namespaces")
        && rest.len() >= 3
        && let Some(r) = find(rest[2]).filter(|r| r.namespaced)
    {
        let status = rest.get(4) == Some(&"status");
        if rest.len() > 5 || (rest.len() == 5 && !status) {
            return None;
        }
        return Some(Target {
            resource: r,
            namespace: Some(rest[1].to_string()),
            name: rest.get(3).map(|s| s.to_string()),
            status,
        });
    }
    let r = find(rest.first()?)?;
    let status = rest.get(2) == Some(&"status");
    if rest.len() > 3 || (rest.len() == 3 && !status) {
        return None;
    }
    Some(Target {
        resource: r,
        namespace: None,
        name: rest.get(1).map(|s| s.to_string()),
        status,
    })
}

fn key(target: &Target, name: &str) -> Key {
    Key {
        storage_key: target.resource.storage_key(),
        namespace: if target.resource.namespaced {
            target.namespace.clone().unwrap_or_default()
        } else {
            String::new()
        },
        name: name.to_string(),
    }
}

fn json_response(status: StatusCode, v: Value) -> Response {
    (status, axum::Json(v)).into_response()
}

fn parse_body(headers: &HeaderMap, body: &[u8]) -> Result<Value> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    if ct.contains("yaml") {
        serde_yaml::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("body is not valid YAML: {e}")))
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("body is not valid JSON: {e}")))
    }
}

fn get(state: &ApiState, target: &Target, name: &str) -> Result<Value> {
    let store = state
        .store
        .lock()
        .map_err(|_| ApiError::invalid("poisoned"))?;
    store
        .get(&key(target, name))
        .cloned()
        .ok_or_else(|| ApiError::not_found(&target.resource, name))
}

/// A parsed label selector term.
enum Term {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

fn split_terms(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => {
                depth += 1;
                cur.push(c);
            }
            ')' => {
                depth -= 1;
                cur.push(c);
            }
            ',' if depth == 0 => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur);
    }
    out.into_iter()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect()
}

fn parse_label_selector(s: &str) -> Result<Vec<Term>> {
    let set = |v: &str| -> Vec<String> {
        v.trim()
            .trim_start_matches('(')
            .trim_end_matches(')')
            .split(',')
            .map(|x| x.trim().to_string())
            .collect()
    };
    split_terms(s)
        .into_iter()
        .map(|t| {
            if let Some((k, v)) = t.split_once(" notin ") {
                Ok(Term::NotIn(k.trim().into(), set(v)))
            } else if let Some((k, v)) = t.split_once(" in ") {
                Ok(Term::In(k.trim().into(), set(v)))
            } else if let Some((k, v)) = t.split_once("!=") {
                Ok(Term::Ne(k.trim().into(), v.trim().into()))
            } else if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
                Ok(Term::Eq(k.trim().into(), v.trim().into()))
            } else if let Some(k) = t.strip_prefix('!') {
                Ok(Term::NotExists(k.trim().into()))
            } else if t
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
            {
                Ok(Term::Exists(t))
            } else {
                Err(ApiError::bad_request(format!(
                    "unable to parse requirement: {t:?}"
                )))
            }
        })
        .collect()
}

fn labels_match(object: &Value, terms: &[Term]) -> bool {
    let labels = &object["metadata"]["labels"];
    let get = |k: &str| labels.get(k).and_then(Value::as_str);
    terms.iter().all(|t| match t {
        Term::Eq(k, v) => get(k) == Some(v.as_str()),
        Term::Ne(k, v) => get(k) != Some(v.as_str()),
        Term::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
        Term::NotIn(k, vs) => get(k).is_none_or(|x| !vs.iter().any(|v| v == x)),
        Term::Exists(k) => get(k).is_some(),
        Term::NotExists(k) => get(k).is_none(),
    })
}

fn parse_field_selector(s: &str) -> Result<Vec<(String, bool, String)>> {
    split_terms(s)
        .into_iter()
        .map(|t| {
            let (field, eq, value) = if let Some((f, v)) = t.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
                (f, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid field selector: {t:?}"
                )));
            };
            match field.trim() {
                "metadata.name" | "metadata.namespace" => {
                    Ok((field.trim().to_string(), eq, value.trim().to_string()))
                }
                other => Err(ApiError::bad_request(format!(
                    "field label not supported: {other}"
                ))),
            }
        })
        .collect()
}

fn fields_match(object: &Value, terms: &[(String, bool, String)]) -> bool {
    terms.iter().all(|(field, eq, value)| {
        let actual = json_path(object, field)
            .and_then(Value::as_str)
            .unwrap_or("");
        (actual == value) == *eq
    })
}

/// Label and field selectors of a list or watch.
struct Filter {
    labels: Vec<Term>,
    fields: Vec<(String, bool, String)>,
}

impl Filter {
    fn from_query(query: &BTreeMap<String, String>) -> Result<Self> {
        Ok(Self {
            labels: query
                .get("labelSelector")
                .map(|s| parse_label_selector(s))
                .transpose()?
                .unwrap_or_default(),
            fields: query
                .get("fieldSelector")
                .map(|s| parse_field_selector(s))
                .transpose()?
                .unwrap_or_default(),
        })
    }

    fn matches(&self, object: &Value) -> bool {
        labels_match(object, &self.labels) && fields_match(object, &self.fields)
    }
}

fn list(
    state: &ApiState,
    target: &Target,
    query: &BTreeMap<String, String>,
    table: bool,
) -> Result<Response> {
    let filter = Filter::from_query(query)?;
    let (items, rv) = {
        let store = state
            .store
            .lock()
            .map_err(|_| ApiError::invalid("poisoned"))?;
        let items: Vec<Value> = store
            .list(&target.resource.storage_key(), target.namespace.as_deref())
            .into_iter()
            .filter(|o| filter.matches(o))
            .map(|o| with_version(o, &target.resource))
            .collect();
        (items, store.resource_version())
    };
    if table {
        return Ok(json_response(
            StatusCode::OK,
            to_table(&target.resource, &items, query, Some(rv)),
        ));
    }
    Ok(json_response(
        StatusCode::OK,
        json!({"kind": format!("{}List", target.resource.kind), "apiVersion": target.resource.api_version(),
               "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
    ))
}

/// Objects are stored once per group/resource; they are served under the requested version.
fn with_version(mut object: Value, resource: &Resource) -> Value {
    object["apiVersion"] = resource.api_version().into();
    object
}

fn human_age(timestamp: &str) -> String {
    let Ok(t) = chrono::DateTime::parse_from_rfc3339(timestamp) else {
        return "<invalid>".into();
    };
    let secs = (chrono::Utc::now() - t.with_timezone(&chrono::Utc))
        .num_seconds()
        .max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 3600 * 2 => format!("{}m", s / 60),
        s if s < 86400 * 2 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn to_table(
    resource: &Resource,
    items: &[Value],
    query: &BTreeMap<String, String>,
    rv: Option<u64>,
) -> Value {
    let mut columns = vec![
        json!({"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace.", "priority": 0}),
    ];
    let custom = !resource.printer_columns.is_empty();
    for c in &resource.printer_columns {
        columns.push(json!({"name": c.name, "type": if c.type_ == "date" { "string" } else { c.type_.as_str() }, "format": "", "description": c.description, "priority": c.priority}));
    }
    if !custom {
        columns.push(json!({"name": "Age", "type": "string", "format": "", "description": "CreationTimestamp", "priority": 0}));
    }
    let include_object = query
        .get("includeObject")
        .map(String::as_str)
        .unwrap_or("PartialObjectMetadata");
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let mut cells = vec![o["metadata"]["name"].clone()];
            for c in &resource.printer_columns {
                let v = json_path(o, &c.json_path).cloned();
                cells.push(match (v, c.type_.as_str()) {
                    (Some(Value::String(s)), "date") => human_age(&s).into(),
                    (Some(v), _) => v,
                    (None, _) => Value::Null,
                });
            }
            if !custom {
                cells.push(human_age(o["metadata"]["creationTimestamp"].as_str().unwrap_or("")).into());
            }
            let object = match include_object {
                "None" => Value::Null,
                "Object" => o.clone(),
                _ => json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"].clone()}),
            };
            json!({"cells": cells, "object": object})
        })
        .collect();
    let mut table = json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {}, "columnDefinitions": columns, "rows": rows});
    if let Some(rv) = rv {
        table["metadata"]["resourceVersion"] = rv.to_string().into();
    }
    table
}

fn namespace_exists(state: &ApiState, namespace: &str) -> bool {
    state
        .store
        .lock()
        .map(|s| {
            s.get(&Key {
                storage_key: "/namespaces".into(),
                namespace: String::new(),
                name: namespace.into(),
            })
            .is_some()
        })
        .unwrap_or(false)
}

fn create(
    state: &Arc<ApiState>,
    target: &Target,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response> {
    if target.status {
        return Err(ApiError::method_not_allowed(
            "create is not supported on the status subresource",
        ));
    }
    let mut object = parse_body(headers, body)?;
    if !object.is_object() {
        return Err(ApiError::bad_request("body must be an object"));
    }
    if let Some(ns) = target
        .namespace
        .as_deref()
        .filter(|_| target.resource.namespaced)
    {
        if let Some(given) = object["metadata"]["namespace"].as_str()
            && given != ns
        {
            return Err(ApiError::bad_request(format!(
                "the namespace of the provided object ({given}) does not match the namespace sent on the request ({ns})"
            )));
        }
        if !namespace_exists(state, ns) {
            return Err(ApiError {
                code: 404,
                reason: "NotFound",
                message: format!("namespaces \"{ns}\" not found"),
                details: Some(json!({"name": ns, "kind": "namespaces"})),
            });
        }
    } else if target.resource.namespaced {
        return Err(ApiError::method_not_allowed(
            "create a namespaced object under /namespaces/<ns>/",
        ));
    }
    let name = match object["metadata"]["name"]
        .as_str()
        .filter(|n| !n.is_empty())
    {
        Some(n) => n.to_string(),
        None => match object["metadata"]["generateName"].as_str() {
            Some(prefix) => format!("{prefix}{}", random_suffix()),
            None => {
                return Err(ApiError::invalid(format!(
                    "{} \"\" is invalid: metadata.name: Required value: name or generateName is required",
                    target.resource.kind
                )));
            }
        },
    };
    validate_name(&target.resource, &name)?;
    if object.get("metadata").is_none_or(|m| !m.is_object()) {
        object["metadata"] = json!({});
    }
    let created = {
        let mut store = state
            .store
            .lock()
            .map_err(|_| ApiError::invalid("poisoned"))?;
        store.create(&target.resource, key(target, &name), object)?
    };
    after_write(state, &target.resource, &created);
    Ok(json_response(
        StatusCode::CREATED,
        with_version(created, &target.resource),
    ))
}

fn validate_name(resource: &Resource, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "{} \"{name}\" is invalid: metadata.name: Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'",
            resource.kind
        )))
    }
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// What happens after any successful write: CRDs start or stop serving, workloads are simulated.
fn after_write(state: &Arc<ApiState>, resource: &Resource, object: &Value) {
    if resource.plural == "customresourcedefinitions" {
        refresh_crds(state);
    }
    if resource.group == "apps" && matches!(resource.plural.as_str(), "deployments" | "daemonsets")
    {
        simulation::schedule(state, resource, object);
    }
}

/// Re-derives the served custom resources from the stored CRDs, and marks them Established.
fn refresh_crds(state: &Arc<ApiState>) {
    let crds = state
        .store
        .lock()
        .map(|s| s.list("apiextensions.k8s.io/customresourcedefinitions", None))
        .unwrap_or_default();
    let mut served = resources::builtins();
    for crd in &crds {
        if crd["metadata"].get("deletionTimestamp").is_none() {
            served.extend(resources::from_crd(crd));
        }
    }
    if let Ok(mut r) = state.resources.write() {
        *r = served;
    }
    let crd_resource = resources::builtins()
        .into_iter()
        .find(|r| r.plural == "customresourcedefinitions");
    if let (Some(res), Ok(mut store)) = (crd_resource, state.store.lock()) {
        for crd in crds {
            let established = crd["status"]["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["type"] == "Established"));
            if established {
                continue;
            }
            let mut updated = crd.clone();
            updated["status"] = json!({
                "conditions": [
                    {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)},
                    {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)}
                ],
                "acceptedNames": crd["spec"]["names"].clone(),
                "storedVersions": crd["spec"]["versions"].as_array().into_iter().flatten().filter(|v| v["storage"].as_bool() == Some(true)).map(|v| v["name"].clone()).collect::<Vec<_>>(),
            });
            let name = crd["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let k = Key {
                storage_key: res.storage_key(),
                namespace: String::new(),
                name,
            };
            let _ = store.update(&res, &k, updated, true);
        }
    }
}

fn update(
    state: &Arc<ApiState>,
    target: &Target,
    name: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response> {
    let object = parse_body(headers, body)?;
    if let Some(given) = object["metadata"]["name"].as_str()
        && given != name
    {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({given}) does not match the name on the URL ({name})"
        )));
    }
    let updated = {
        let mut store = state
            .store
            .lock()
            .map_err(|_| ApiError::invalid("poisoned"))?;
        store.update(&target.resource, &key(target, name), object, target.status)?
    };
    after_write(state, &target.resource, &updated);
    Ok(json_response(
        StatusCode::OK,
        with_version(updated, &target.resource),
    ))
}

fn patch_object(
    state: &Arc<ApiState>,
    target: &Target,
    name: &str,
    headers: &HeaderMap,
    body: &[u8],
    query: &BTreeMap<String, String>,
) -> Result<Response> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    let is_crd_object = resources::builtins()
        .iter()
        .all(|b| b.storage_key() != target.resource.storage_key());
    let k = key(target, name);
    let mut store = state
        .store
        .lock()
        .map_err(|_| ApiError::invalid("poisoned"))?;
    let current = store.get(&k).cloned();
    let (mut object, creating) = match (current, ct.as_str()) {
        (Some(c), _) => (c, false),
        (None, "application/apply-patch+yaml") => (json!({"metadata": {"name": name}}), true),
        (None, _) => return Err(ApiError::not_found(&target.resource, name)),
    };
    let current_rv = object["metadata"]["resourceVersion"].clone();
    match ct.as_str() {
        "application/merge-patch+json" => {
            patch::merge_patch(&mut object, &parse_body(headers, body)?)
        }
        "application/json-patch+json" => {
            patch::json_patch(&mut object, &parse_body(headers, body)?)?
        }
        "application/strategic-merge-patch+json" => {
            if is_crd_object {
                return Err(ApiError::unsupported_media_type("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml".to_string()));
            }
            patch::strategic_merge(&mut object, &parse_body(headers, body)?)
        }
        "application/apply-patch+yaml" => {
            if query.get("fieldManager").is_none_or(|m| m.is_empty()) {
                return Err(ApiError::bad_request(
                    "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
                ));
            }
            let applied: Value = serde_yaml::from_slice(body).map_err(|e| {
                ApiError::bad_request(format!("apply patch is not valid YAML: {e}"))
            })?;
            patch::strategic_merge(&mut object, &applied);
        }
        other => {
            return Err(ApiError::unsupported_media_type(format!(
                "unsupported patch type {other:?}"
            )));
        }
    }
    // A patch that sets a resourceVersion is a precondition on it.
    if object["metadata"]["resourceVersion"] != current_rv && !creating {
        if object["metadata"]["resourceVersion"].is_string() {
            return Err(ApiError::conflict(&target.resource, name));
        }
        object["metadata"]["resourceVersion"] = current_rv;
    }
    let result = if creating {
        if let Some(ns) = target
            .namespace
            .as_deref()
            .filter(|_| target.resource.namespaced)
        {
            drop(store);
            if !namespace_exists(state, ns) {
                return Err(ApiError {
                    code: 404,
                    reason: "NotFound",
                    message: format!("namespaces \"{ns}\" not found"),
                    details: None,
                });
            }
            store = state
                .store
                .lock()
                .map_err(|_| ApiError::invalid("poisoned"))?;
        }
        store.create(&target.resource, k, object)?
    } else {
        store.update(&target.resource, &k, object, target.status)?
    };
    drop(store);
    after_write(state, &target.resource, &result);
    let code = if creating {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json_response(code, with_version(result, &target.resource)))
}

fn delete(state: &Arc<ApiState>, target: &Target, name: &str) -> Result<Response> {
    let deleted = {
        let mut store = state
            .store
            .lock()
            .map_err(|_| ApiError::invalid("poisoned"))?;
        store.delete(&target.resource, &key(target, name))?
    };
    if target.resource.plural == "customresourcedefinitions" {
        refresh_crds(state);
    }
    let gone = deleted["metadata"].get("deletionTimestamp").is_none();
    if gone {
        Ok(json_response(
            StatusCode::OK,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                   "details": {"name": name, "group": target.resource.group, "kind": target.resource.plural, "uid": deleted["metadata"]["uid"]}}),
        ))
    } else {
        Ok(json_response(
            StatusCode::OK,
            with_version(deleted, &target.resource),
        ))
    }
}

fn delete_collection(
    state: &Arc<ApiState>,
    target: &Target,
    query: &BTreeMap<String, String>,
) -> Result<Response> {
    let filter = Filter::from_query(query)?;
    let mut store = state
        .store
        .lock()
        .map_err(|_| ApiError::invalid("poisoned"))?;
    let names: Vec<String> = store
        .list(&target.resource.storage_key(), target.namespace.as_deref())
        .iter()
        .filter(|o| filter.matches(o))
        .filter_map(|o| o["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    let mut items = Vec::new();
    for name in names {
        items.push(store.delete(&target.resource, &key(target, &name))?);
    }
    Ok(json_response(
        StatusCode::OK,
        json!({"kind": format!("{}List", target.resource.kind), "apiVersion": target.resource.api_version(), "metadata": {}, "items": items}),
    ))
}

fn watch_line(kind: &str, object: Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

async fn watch(
    state: &Arc<ApiState>,
    target: &Target,
    query: &BTreeMap<String, String>,
    table: bool,
) -> Result<Response> {
    let filter = Filter::from_query(query)?;
    let resource = target.resource.clone();
    let storage_key = resource.storage_key();
    let namespace = target.namespace.clone();
    let bookmarks = is_true(query.get("allowWatchBookmarks"));
    let initial_events = is_true(query.get("sendInitialEvents"));
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let cut_after = state.faults.lock().ok().and_then(|f| f.cut_watches_after);
    let rv_param = query.get("resourceVersion").cloned().unwrap_or_default();

    // Under the store lock: the initial events and a subscription, so nothing falls between.
    let (initial, mut live, start_rv, mut epoch) = {
        let store = state
            .store
            .lock()
            .map_err(|_| ApiError::invalid("poisoned"))?;
        let live = store.subscribe();
        let epoch = store.epoch();
        let start_rv = store.resource_version();
        let synthetic = rv_param.is_empty() || rv_param == "0" || initial_events;
        let initial: std::result::Result<Vec<(ChangeType, Value)>, ApiError> = if synthetic {
            Ok(store
                .list(&storage_key, namespace.as_deref())
                .into_iter()
                .map(|o| (ChangeType::Added, o))
                .collect())
        } else {
            match rv_param.parse::<u64>() {
                Ok(rv) => store.since(rv).map(|changes| {
                    changes
                        .into_iter()
                        .filter(|c| {
                            c.storage_key == storage_key
                                && namespace.as_ref().is_none_or(|ns| *ns == c.namespace)
                        })
                        .map(|c| (c.kind, c.object.clone()))
                        .collect()
                }),
                Err(_) => Err(ApiError::bad_request(format!(
                    "invalid resourceVersion {rv_param:?}"
                ))),
            }
        };
        (initial, live, start_rv, epoch)
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    let query = query.clone();
    let render = move |kind: ChangeType, object: Value| -> Option<Bytes> {
        if !filter.matches(&object) {
            return None;
        }
        let object = with_version(object, &resource);
        let object = if table {
            to_table(&resource, &[object], &query, None)
        } else {
            object
        };
        Some(watch_line(kind.as_str(), object))
    };
    let bookmark_kind = target.resource.kind.clone();
    let bookmark_version = target.resource.api_version();
    tokio::spawn(async move {
        let mut sent = 0usize;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last_rv = start_rv;
        let bookmark = |rv: u64, end: bool| {
            let mut meta = json!({"resourceVersion": rv.to_string()});
            if end {
                meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
            }
            watch_line(
                "BOOKMARK",
                json!({"kind": bookmark_kind, "apiVersion": bookmark_version, "metadata": meta}),
            )
        };
        match initial {
            Err(e) => {
                let _ = tx.send(watch_line("ERROR", e.status())).await;
                return;
            }
            Ok(events) => {
                for (kind, object) in events {
                    if let Some(line) = render(kind, object) {
                        if tx.send(line).await.is_err() {
                            return;
                        }
                        sent += 1;
                        if cut_after.is_some_and(|n| sent >= n) {
                            return;
                        }
                    }
                }
            }
        }
        if initial_events && bookmarks && tx.send(bookmark(start_rv, true)).await.is_err() {
            return;
        }
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                _ = epoch.changed() => return,
                _ = ticker.tick(), if bookmarks => {
                    if tx.send(bookmark(last_rv, false)).await.is_err() { return; }
                }
                change = live.recv() => {
                    let change = match change {
                        Ok(c) => c,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            let _ = tx.send(watch_line("ERROR", ApiError::gone(last_rv).status())).await;
                            return;
                        }
                        Err(_) => return,
                    };
                    last_rv = change.rv;
                    if change.rv <= start_rv || change.storage_key != storage_key || namespace.as_ref().is_some_and(|ns| *ns != change.namespace) {
                        continue;
                    }
                    if let Some(line) = render(change.kind, change.object.clone()) {
                        if tx.send(line).await.is_err() { return; }
                        sent += 1;
                        if cut_after.is_some_and(|n| sent >= n) { return; }
                    }
                }
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header("transfer-encoding", "chunked")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| ApiError::invalid("response").into_response()))
}

fn served_gvks(state: &ApiState) -> Vec<(Resource, String)> {
    resources_of(state)
        .into_iter()
        .map(|r| {
            let gv = if r.group.is_empty() {
                format!("api/{}", r.version)
            } else {
                format!("apis/{}/{}", r.group, r.version)
            };
            (r, gv)
        })
        .collect()
}

fn schema_name(r: &Resource) -> String {
    let group = if r.group.is_empty() {
        "core".to_string()
    } else {
        r.group.clone()
    };
    format!(
        "io.testbed.{}.{}.{}",
        group.replace('.', "_"),
        r.version,
        r.kind
    )
}

fn gvk_extension(r: &Resource) -> Value {
    json!([{"group": r.group, "version": r.version, "kind": r.kind}])
}

fn operations(r: &Resource, v3: bool) -> Value {
    let params = json!([
        {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}, "type": "string", "uniqueItems": true},
        {"name": "fieldManager", "in": "query", "schema": {"type": "string"}, "type": "string", "uniqueItems": true},
        {"name": "dryRun", "in": "query", "schema": {"type": "string"}, "type": "string", "uniqueItems": true}
    ]);
    let _ = v3;
    let op = |verb: &str| json!({"operationId": format!("{verb}{}", r.kind), "parameters": params.clone(), "x-kubernetes-group-version-kind": {"group": r.group, "version": r.version, "kind": r.kind}, "responses": {"200": {"description": "OK"}}});
    json!({"get": op("read"), "put": op("replace"), "patch": op("patch"), "delete": op("delete")})
}

fn object_schema(r: &Resource) -> Value {
    if let Some(schema) = &r.schema {
        let mut schema = schema.clone();
        schema["x-kubernetes-group-version-kind"] = gvk_extension(r);
        return schema;
    }
    json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true, "x-kubernetes-group-version-kind": gvk_extension(r),
           "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}})
}

fn named_path(r: &Resource, gv: &str) -> String {
    if r.namespaced {
        format!("/{gv}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
    } else {
        format!("/{gv}/{}/{{name}}", r.plural)
    }
}

fn openapi_v2(state: &ApiState) -> Value {
    let mut paths = serde_json::Map::new();
    let mut definitions = serde_json::Map::new();
    for (r, gv) in served_gvks(state) {
        paths.insert(named_path(&r, &gv), operations(&r, false));
        definitions.insert(schema_name(&r), object_schema(&r));
    }
    json!({"swagger": "2.0", "info": {"title": "testbed", "version": "v1.33.0"}, "paths": paths, "definitions": definitions})
}

fn openapi_v3_root(state: &ApiState) -> Value {
    let mut paths = serde_json::Map::new();
    for (_, gv) in served_gvks(state) {
        paths.insert(
            gv.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{gv}?hash=testbed")}),
        );
    }
    json!({"paths": paths})
}

fn openapi_v3_group(state: &ApiState, rest: &[&str]) -> Result<Response> {
    let gv = rest.join("/");
    let mut paths = serde_json::Map::new();
    let mut schemas = serde_json::Map::new();
    for (r, path_gv) in served_gvks(state) {
        if path_gv != gv {
            continue;
        }
        paths.insert(named_path(&r, &gv), operations(&r, true));
        schemas.insert(schema_name(&r), object_schema(&r));
    }
    if paths.is_empty() {
        return Err(ApiError::no_route(&format!("/openapi/v3/{gv}")));
    }
    Ok(json_response(
        StatusCode::OK,
        json!({"openapi": "3.0.0", "info": {"title": "testbed", "version": "v1.33.0"}, "paths": paths, "components": {"schemas": schemas}}),
    ))
}
