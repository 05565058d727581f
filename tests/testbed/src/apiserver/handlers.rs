//! HTTP routing: a Kubernetes path parsed into its target, the verb, authorization and audit,
//! and the dispatch to the verbs (`verbs`: create, update, patch, delete, deletecollection, the
//! status subresource), lists and their pages (`paging`), the CRDs a write serves (`crds`),
//! discovery, selectors, Tables, watch and OpenAPI.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::ApiState;
use super::auth::{self, Attributes, AuditEntry, User};
use super::error::ApiError;
use super::events;
use super::patch;
use super::resources::{self, Resource, json_path};
use super::simulation;
use super::store::{ChangeType, Key};
use super::validation::{FieldValidation, admit};

mod crds;
mod discovery;
mod openapi;
mod paging;
mod scale;
mod selectors;
mod table;
mod verbs;
mod watch;

use crds::*;
use discovery::*;
use openapi::*;
use paging::*;
use scale::*;
use selectors::*;
use table::*;
use verbs::*;
use watch::*;

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
        .ok_or_else(|| anyhow::anyhow!("namespaces is a built-in resource"))?;
    let mut store = state.store().map_err(|e| anyhow::anyhow!(e.message))?;
    let nodes = state.simulation.lock().map(|s| s.nodes).unwrap_or(2);
    if let Some(node) = resources::builtins()
        .into_iter()
        .find(|r| r.plural == "nodes")
    {
        for n in 1..=nodes {
            let name = format!("node-{n}");
            let key = Key::new(&node, "", &name);
            let object = json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}}, "spec": {"podCIDR": format!("10.244.{n}.0/24")}});
            store
                .create(&node, key.clone(), object)
                .map_err(|e| anyhow::anyhow!(e.message))?;
            let mut with_status = store.get(&key).cloned().unwrap_or_default();
            with_status["status"] = json!({
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status"}],
                "addresses": [{"type": "InternalIP", "address": format!("10.0.0.{n}")}, {"type": "Hostname", "address": name}],
                "nodeInfo": {"kubeletVersion": "v1.33.0-testbed", "kubeProxyVersion": "v1.33.0-testbed", "containerRuntimeVersion": "containerd://2.0.0", "osImage": "testbed", "kernelVersion": "6.1.0", "operatingSystem": "linux", "architecture": "amd64", "machineID": "", "systemUUID": "", "bootID": ""},
                "capacity": {"cpu": "2", "memory": "8Gi", "pods": "110"},
                "allocatable": {"cpu": "2", "memory": "8Gi", "pods": "110"},
            });
            store
                .update(&node, &key, with_status, true)
                .map_err(|e| anyhow::anyhow!(e.message))?;
        }
    }
    for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let key = Key::new(&ns, "", name);
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
    super::policy::bootstrap(&mut store).map_err(|e| anyhow::anyhow!(e.message))?;
    // An APIService per built-in group version, served locally, as kube-apiserver registers them.
    if let Some(apiservices) = resources::find_builtin("apiregistration.k8s.io", "apiservices") {
        let mut group_versions: Vec<(String, String)> = resources::builtins()
            .into_iter()
            .map(|r| (r.group, r.version))
            .collect();
        group_versions.sort();
        group_versions.dedup();
        for (group, version) in group_versions {
            let name = format!("{version}.{group}");
            let key = Key::new(&apiservices, "", &name);
            let object = json!({"metadata": {"name": name, "labels": {"kube-aggregator.kubernetes.io/automanaged": "onstart"}},
                "spec": {"group": group, "version": version, "groupPriorityMinimum": 1000, "versionPriority": 15}});
            let mut created = store
                .create(&apiservices, key.clone(), object)
                .map_err(|e| anyhow::anyhow!(e.message))?;
            created["status"] = json!({"conditions": [{"type": "Available", "status": "True", "reason": "Local", "message": "Local APIServices are always available", "lastTransitionTime": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)}]});
            store
                .update(&apiservices, &key, created, true)
                .map_err(|e| anyhow::anyhow!(e.message))?;
        }
    }
    Ok(())
}

/// A parsed resource path.
struct Target {
    resource: Resource,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
    /// The `scale` subresource (Deployments, ReplicaSets, StatefulSets).
    scale: bool,
}

impl Target {
    fn subresource(&self) -> &'static str {
        match (self.status, self.scale) {
            (true, _) => "status",
            (_, true) => "scale",
            _ => "",
        }
    }
}

/// The RBAC verb of a request.
fn verb_of(method: &Method, target: &Target, query: &BTreeMap<String, String>) -> &'static str {
    match (method, target.name.is_some()) {
        (&Method::GET, false) if is_true(query.get("watch")) => "watch",
        (&Method::GET, false) => "list",
        (&Method::GET, true) => "get",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, true) => "delete",
        (&Method::DELETE, false) => "deletecollection",
        _ => "unknown",
    }
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
    if let Ok(mut log) = state.requests.lock() {
        if log.len() >= 1_000_000 {
            log.clear();
        }
        log.push(format!("{method} {uri}"));
    }
    let headers = request.headers().clone();
    let user = {
        let authorization = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        match state.identities.lock() {
            Ok(ids) => ids.authenticate(authorization),
            Err(_) => Err(auth::Unauthenticated::UnknownToken),
        }
    };
    let Ok(user) = user else {
        return ApiError::unauthorized().into_response();
    };
    let user = match auth::impersonated(user, &headers) {
        Ok(user) => user,
        Err(message) => {
            return ApiError::forbidden(message, "", "users", "").into_response();
        }
    };
    let body = match axum::body::to_bytes(request.into_body(), 64 * 1024 * 1024).await {
        Ok(b) => b,
        Err(e) => return ApiError::bad_request(format!("cannot read body: {e}")).into_response(),
    };
    let mut attributes = None;
    let response = match route(
        &state,
        &user,
        &mut attributes,
        &method,
        &uri,
        &headers,
        body,
    )
    .await
    {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    let wanted = super::protobuf::wanted(&headers);
    let response =
        if wanted == super::protobuf::Wanted::Json || is_true(query_map(&uri).get("watch")) {
            response
        } else {
            in_protobuf(response, wanted).await
        };
    if let (Some(attributes), Ok(mut audit)) = (attributes, state.audit.lock()) {
        if audit.len() >= 1_000_000 {
            audit.clear();
        }
        audit.push(AuditEntry {
            user: user.name.clone(),
            attributes,
            code: response.status().as_u16(),
        });
    }
    response
}

/// Re-encodes a JSON answer (object, list, `Status`) in protobuf for a client that prefers it;
/// kinds without a protobuf form stay JSON, or are a 406 for a client that takes only protobuf.
async fn in_protobuf(response: Response, wanted: super::protobuf::Wanted) -> Response {
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|c| c.as_bytes().starts_with(b"application/json"));
    if !is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 1024 * 1024 * 1024).await else {
        return ApiError::internal("the answer could not be read").into_response();
    };
    let Ok(value) = serde_json::from_slice::<Value>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    // Answers that are no API objects (`/version`) are JSON whatever is asked, as kube-apiserver
    // answers them.
    if value["kind"].as_str().is_none() {
        return Response::from_parts(parts, Body::from(bytes));
    }
    match super::protobuf::encode(&value) {
        Some(protobuf) => {
            parts.headers.insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(super::protobuf::MEDIA_TYPE),
            );
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, Body::from(protobuf))
        }
        None if wanted == super::protobuf::Wanted::OnlyProtobuf => ApiError::not_acceptable(
            "only application/vnd.kubernetes.protobuf is accepted, and this answer has no protobuf form (custom resources and Tables have none)",
        )
        .into_response(),
        None => Response::from_parts(parts, Body::from(bytes)),
    }
}

async fn route(
    state: &Arc<ApiState>,
    user: &User,
    audited: &mut Option<Attributes>,
    method: &Method,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let path = uri.path().trim_end_matches('/');
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let query = query_map(uri);
    // Everything but /api/v1/<resource>... and /apis/<group>/<version>/<resource>... is a
    // non-resource URL, authorized by the rules' nonResourceURLs.
    let resource_request = matches!(
        segments.as_slice(),
        ["api", "v1", _, ..] | ["apis", _, _, _, ..]
    );
    if !resource_request {
        let verb = method.as_str().to_ascii_lowercase();
        let url = if path.is_empty() { "/" } else { path };
        if !auth::authorize_path(&*state.store()?, user, &verb, url) {
            return Err(ApiError::forbidden(
                auth::forbidden_path_message(user, &verb, url),
                "",
                "",
                "",
            ));
        }
    }
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
        // Reviews: `kubectl auth can-i` (self access and rules reviews), and what a server that
        // delegates authentication and authorization asks (the functions' `--metrics-auth
        // kubernetes`): who a token is, and what a user may do.
        [
            "apis",
            group @ ("authentication.k8s.io" | "authorization.k8s.io"),
            "v1",
            review @ ("selfsubjectaccessreviews"
            | "selfsubjectrulesreviews"
            | "tokenreviews"
            | "subjectaccessreviews"),
        ] if method == Method::POST
            && (*group == "authentication.k8s.io") == (*review == "tokenreviews") =>
        {
            let attributes = Attributes {
                verb: "create".into(),
                group: (*group).into(),
                resource: (*review).into(),
                ..Attributes::default()
            };
            *audited = Some(attributes.clone());
            if !auth::authorize(&*state.store()?, user, &attributes) {
                return Err(ApiError::forbidden(
                    auth::forbidden_message(user, &attributes),
                    &attributes.group,
                    &attributes.resource,
                    "",
                ));
            }
            let request = parse_body(headers, &body)?;
            let answer = match *review {
                "tokenreviews" => {
                    let token = request["spec"]["token"].as_str().unwrap_or_default();
                    let who =
                        state.identities.lock().ok().and_then(|ids| {
                            ids.authenticate(Some(&format!("Bearer {token}"))).ok()
                        });
                    auth::token_review(&request, who.as_ref())
                }
                "subjectaccessreviews" => auth::subject_access_review(&*state.store()?, &request),
                "selfsubjectaccessreviews" => auth::access_review(&*state.store()?, user, &request),
                _ => auth::rules_review(&*state.store()?, user, &request),
            };
            return Ok(json_response(StatusCode::CREATED, answer));
        }
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
    let attributes = Attributes {
        verb: verb_of(method, &target, &query).into(),
        group: target.resource.group.clone(),
        resource: target.resource.plural.clone(),
        subresource: target.subresource().into(),
        namespace: target.namespace.clone().unwrap_or_default(),
        name: target.name.clone().unwrap_or_default(),
    };
    *audited = Some(attributes.clone());
    if !auth::authorize(&*state.store()?, user, &attributes) {
        return Err(ApiError::forbidden(
            auth::forbidden_message(user, &attributes),
            &attributes.group,
            &attributes.resource,
            &attributes.name,
        ));
    }
    if target.scale {
        return scale(state, &target, method, headers, &body, &query);
    }
    let table = headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"));
    match (method, &target.name) {
        (&Method::GET, None) if is_true(query.get("watch")) => {
            let protobuf = super::protobuf::wanted(headers) != super::protobuf::Wanted::Json;
            watch(state, &target, &query, table, protobuf).await
        }
        (&Method::GET, None) => list(state, &target, &query, table),
        (&Method::GET, Some(name)) => {
            let object = with_version(get(state, &target, name)?, &target.resource);
            if table {
                return Ok(json_response(
                    StatusCode::OK,
                    to_table(&target.resource, &[object], &query, None),
                ));
            }
            Ok(json_response(StatusCode::OK, object))
        }
        (&Method::POST, None) => create(state, &target, headers, &body, &query),
        (&Method::PUT, Some(name)) => update(state, &target, name, headers, &body, &query),
        (&Method::PATCH, Some(name)) => patch_object(state, &target, name, headers, &body, &query),
        (&Method::DELETE, Some(name)) => delete(state, &target, name, &body, &query),
        (&Method::DELETE, None) => delete_collection(state, &target, &query, &body),
        _ => Err(ApiError::method_not_allowed(format!(
            "{method} is not supported on {path}"
        ))),
    }
}

/// `dryRun=All`: the request is admitted and answered, nothing is persisted.
fn is_dry_run(query: &BTreeMap<String, String>) -> bool {
    query.get("dryRun").is_some_and(|d| d == "All")
}

fn is_true(v: Option<&String>) -> bool {
    v.is_some_and(|v| v == "true" || v == "1")
}

fn parse_target(state: &ApiState, group: &str, version: &str, rest: &[&str]) -> Option<Target> {
    // Only the resource found is cloned (a request used to clone the whole list).
    let find = |plural: &str| {
        state
            .resources
            .read()
            .ok()?
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
            .cloned()
    };
    if rest.first() == Some(&"namespaces")
        && rest.len() >= 3
        && let Some(r) = find(rest[2]).filter(|r| r.namespaced)
    {
        let status = rest.get(4) == Some(&"status");
        let scale = rest.get(4) == Some(&"scale");
        // `/status` and `/scale` exist only where the resource has them.
        if rest.len() > 5
            || (rest.len() == 5
                && !(status && r.status_subresource)
                && !(scale && r.scale_subresource()))
        {
            return None;
        }
        return Some(Target {
            resource: r,
            namespace: Some(rest[1].to_string()),
            name: rest.get(3).map(|s| s.to_string()),
            status,
            scale,
        });
    }
    let r = find(rest.first()?)?;
    let status = rest.get(2) == Some(&"status");
    if rest.len() > 3 || (rest.len() == 3 && (!status || !r.status_subresource)) {
        return None;
    }
    Some(Target {
        resource: r,
        namespace: None,
        name: rest.get(1).map(|s| s.to_string()),
        status,
        scale: false,
    })
}

fn key(target: &Target, name: &str) -> Key {
    Key::new(
        &target.resource,
        target.namespace.as_deref().unwrap_or_default(),
        name,
    )
}

fn json_response(status: StatusCode, v: Value) -> Response {
    (status, axum::Json(v)).into_response()
}

fn parse_body(headers: &HeaderMap, body: &[u8]) -> Result<Value> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    if ct.starts_with(super::protobuf::MEDIA_TYPE) {
        super::protobuf::decode(body)
    } else if ct.contains("yaml") {
        serde_yaml::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("body is not valid YAML: {e}")))
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("body is not valid JSON: {e}")))
    }
}

fn get(state: &ApiState, target: &Target, name: &str) -> Result<Value> {
    let store = state.store()?;
    store
        .get(&key(target, name))
        .cloned()
        .ok_or_else(|| ApiError::not_found(&target.resource, name))
}

/// Objects are stored once per group/resource; they are served under the requested version
/// (events.k8s.io Events converted from the stored core form).
fn with_version(mut object: Value, resource: &Resource) -> Value {
    if events::is_events_v1(resource) {
        object = events::from_core(object);
    }
    object["apiVersion"] = resource.api_version().into();
    object
}

/// The form an object is stored in (events.k8s.io Events become core Events).
fn stored_form(object: Value, resource: &Resource) -> Value {
    if events::is_events_v1(resource) {
        let mut core = events::to_core(object);
        core["apiVersion"] = "v1".into();
        core
    } else {
        object
    }
}
