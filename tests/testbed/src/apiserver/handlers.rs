//! HTTP routing and the verbs (get, list, create, update, patch, delete, deletecollection, the
//! status subresource); discovery, selectors, Tables, watch and OpenAPI live in the submodules.

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

mod discovery;
mod openapi;
mod scale;
mod selectors;
mod table;
mod watch;

use discovery::*;
use openapi::*;
use scale::*;
use selectors::*;
use table::*;
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

fn list(
    state: &ApiState,
    target: &Target,
    query: &BTreeMap<String, String>,
    table: bool,
) -> Result<Response> {
    let filter = Filter::from_query(query, &target.resource)?;
    let page = Page::from_query(query)?;
    let (items, rv, next) = {
        let store = state.store()?;
        let rv = match &page.after {
            Some((rv, _)) if *rv < store.compacted_to() => return Err(ApiError::continue_expired()),
            Some((rv, _)) => *rv,
            None => store.resource_version(),
        };
        let mut matching = store
            .list(&target.resource.storage_key(), target.namespace.as_deref())
            .into_iter()
            .filter(|o| {
                page.after
                    .as_ref()
                    .is_none_or(|(_, after)| position(o) > *after)
            })
            .map(|o| with_version(o, &target.resource))
            .filter(|o| filter.matches(o));
        let items: Vec<Value> = matching
            .by_ref()
            .take(page.limit.unwrap_or(usize::MAX))
            .collect();
        let remaining = matching.count();
        let next = (remaining > 0)
            .then(|| {
                items
                    .last()
                    .map(|last| (continue_token(rv, &position(last)), remaining))
            })
            .flatten();
        (items, rv, next)
    };
    if table {
        let mut t = to_table(&target.resource, &items, query, Some(rv));
        if let Some((token, _)) = &next {
            t["metadata"]["continue"] = token.clone().into();
        }
        return Ok(json_response(StatusCode::OK, t));
    }
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if let Some((token, remaining)) = next {
        metadata["continue"] = token.into();
        metadata["remainingItemCount"] = remaining.into();
    }
    Ok(json_response(
        StatusCode::OK,
        json!({"kind": format!("{}List", target.resource.kind), "apiVersion": target.resource.api_version(),
               "metadata": metadata, "items": items}),
    ))
}

/// `limit` and `continue` of a list.
struct Page {
    limit: Option<usize>,
    /// From a continue token: the list's resourceVersion and the last position served.
    after: Option<(u64, (String, String))>,
}

impl Page {
    fn from_query(query: &BTreeMap<String, String>) -> Result<Self> {
        let limit = match query.get("limit").filter(|l| !l.is_empty()) {
            Some(l) => Some(
                l.parse::<usize>()
                    .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
            )
            .filter(|l| *l > 0),
            None => None,
        };
        let after = match query.get("continue").filter(|c| !c.is_empty()) {
            Some(token) => Some(parse_continue(token).ok_or_else(|| {
                ApiError::bad_request("continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)")
            })?),
            None => None,
        };
        Ok(Self { limit, after })
    }
}

/// Where an object sits in a list (namespace, then name, as the store orders them).
fn position(object: &Value) -> (String, String) {
    let meta = &object["metadata"];
    (
        meta["namespace"].as_str().unwrap_or_default().to_string(),
        meta["name"].as_str().unwrap_or_default().to_string(),
    )
}

/// An opaque continue token: the list's resourceVersion and the last position served.
fn continue_token(rv: u64, last: &(String, String)) -> String {
    let token = json!({"v": "meta.k8s.io/v1", "rv": rv, "ns": last.0, "name": last.1});
    hex::encode(serde_json::to_vec(&token).unwrap_or_default())
}

fn parse_continue(token: &str) -> Option<(u64, (String, String))> {
    let bytes = hex::decode(token).ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    let ns = v["ns"].as_str()?.to_string();
    let name = v["name"].as_str()?.to_string();
    Some((v["rv"].as_u64()?, (ns, name)))
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

fn create(
    state: &Arc<ApiState>,
    target: &Target,
    headers: &HeaderMap,
    body: &[u8],
    query: &BTreeMap<String, String>,
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
        state.store()?.require_namespace(ns)?;
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
    object["metadata"]["name"] = json!(name);
    let warnings = default_and_admit(target, &mut object, None, query)?;
    super::managed::record_update(
        None,
        &mut object,
        &Writer::of(target, headers, query).write(),
    );
    // dryRun=All: admitted and answered, not stored.
    if is_dry_run(query) {
        return Ok(with_warnings(
            json_response(StatusCode::CREATED, with_version(object, &target.resource)),
            &warnings,
        ));
    }
    let created = {
        let mut store = state.store()?;
        store.create(
            &target.resource,
            key(target, &name),
            stored_form(object, &target.resource),
        )?
    };
    after_write(state, &target.resource, &created);
    Ok(with_warnings(
        json_response(StatusCode::CREATED, with_version(created, &target.resource)),
        &warnings,
    ))
}

/// What every write does before it is stored: a Service keeps what was allocated to it, the
/// defaults are filled in (not on `/status`), then admission; returns the warnings.
fn default_and_admit(
    target: &Target,
    object: &mut Value,
    old: Option<&Value>,
    query: &BTreeMap<String, String>,
) -> Result<Vec<String>> {
    if !target.status {
        super::defaults::keep_allocated(&target.resource, object, old);
        super::defaults::apply(&target.resource, object);
    }
    admit(
        &target.resource,
        object,
        old,
        target.status,
        FieldValidation::from_query(query.get("fieldValidation")),
    )
}

/// Who writes, for `managedFields`.
struct Writer {
    manager: String,
    api_version: String,
    subresource: &'static str,
    has_status: bool,
    shape: patch::Shape,
}

impl Writer {
    fn of(target: &Target, headers: &HeaderMap, query: &BTreeMap<String, String>) -> Self {
        let user_agent = headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok());
        Self {
            manager: super::managed::manager_name(
                query.get("fieldManager").map(String::as_str),
                user_agent,
            ),
            api_version: target.resource.api_version(),
            subresource: target.subresource(),
            has_status: target.resource.status_subresource,
            shape: patch::Shape::of(&target.resource.api_version(), &target.resource.kind),
        }
    }

    fn write(&self) -> super::managed::Write<'_> {
        super::managed::Write {
            manager: &self.manager,
            api_version: &self.api_version,
            subresource: self.subresource,
            has_status: self.has_status,
            shape: self.shape,
        }
    }
}

/// Adds a `Warning: 299 - "…"` header per warning, as kube-apiserver does.
fn with_warnings(mut response: Response, warnings: &[String]) -> Response {
    for w in warnings {
        let value = format!("299 - \"{}\"", w.replace('"', "\\\""));
        if let Ok(v) = axum::http::HeaderValue::from_str(&value) {
            response.headers_mut().append("warning", v);
        }
    }
    response
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
    if resource.group == "apps"
        && matches!(
            resource.plural.as_str(),
            "deployments" | "daemonsets" | "statefulsets" | "replicasets"
        )
    {
        simulation::schedule(state, resource, object);
    }
    if resource.group.is_empty() && resource.plural == "pods" {
        simulation::schedule_pod(state, object);
    }
    if resource.group == "batch" && resource.plural == "jobs" {
        simulation::schedule_job(state, object);
    }
    if resource.group == "rbac.authorization.k8s.io"
        && resource.plural == "clusterroles"
        && let Ok(mut store) = state.store()
    {
        super::policy::aggregate(&mut store);
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
            let _ = store.update(&res, &Key::of(&res, &crd), updated, true);
        }
    }
}

fn update(
    state: &Arc<ApiState>,
    target: &Target,
    name: &str,
    headers: &HeaderMap,
    body: &[u8],
    query: &BTreeMap<String, String>,
) -> Result<Response> {
    let mut object = parse_body(headers, body)?;
    if let Some(given) = object["metadata"]["name"].as_str()
        && given != name
    {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({given}) does not match the name on the URL ({name})"
        )));
    }
    let mut store = state.store()?;
    let old = store
        .get(&key(target, name))
        .cloned()
        .map(|o| with_version(o, &target.resource));
    if object["metadata"]["name"].is_null() {
        object["metadata"]["name"] = json!(name);
    }
    let warnings = default_and_admit(target, &mut object, old.as_ref(), query)?;
    super::managed::record_update(
        old.as_ref(),
        &mut object,
        &Writer::of(target, headers, query).write(),
    );
    if is_dry_run(query) {
        if old.is_none() {
            return Err(ApiError::not_found(&target.resource, name));
        }
        return Ok(with_warnings(
            json_response(StatusCode::OK, with_version(object, &target.resource)),
            &warnings,
        ));
    }
    let updated = store.update(
        &target.resource,
        &key(target, name),
        stored_form(object, &target.resource),
        target.status,
    )?;
    drop(store);
    after_write(state, &target.resource, &updated);
    Ok(with_warnings(
        json_response(StatusCode::OK, with_version(updated, &target.resource)),
        &warnings,
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
    let is_crd_object =
        resources::find_builtin(&target.resource.group, &target.resource.plural).is_none();
    let k = key(target, name);
    let mut store = state.store()?;
    let current = store.get(&k).cloned();
    let (mut object, creating) = match (current, ct.as_str()) {
        (Some(c), _) => (with_version(c, &target.resource), false),
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
            let shape = patch::Shape::of(&target.resource.api_version(), &target.resource.kind);
            patch::strategic_merge_as(&mut object, &parse_body(headers, body)?, shape)
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
            object = super::managed::apply(
                &object,
                &applied,
                &Writer::of(target, headers, query).write(),
                is_true(query.get("force")),
            )?;
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
    let old = (!creating)
        .then(|| store.get(&k).cloned())
        .flatten()
        .map(|o| with_version(o, &target.resource));
    let warnings = default_and_admit(target, &mut object, old.as_ref(), query)?;
    if ct != "application/apply-patch+yaml" {
        super::managed::record_update(
            old.as_ref(),
            &mut object,
            &Writer::of(target, headers, query).write(),
        );
    }
    // dryRun=All: admitted and answered as it would be stored, nothing persisted.
    if is_dry_run(query) {
        let code = if creating {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        return Ok(with_warnings(
            json_response(code, with_version(object, &target.resource)),
            &warnings,
        ));
    }
    let result = if creating {
        if let Some(ns) = target
            .namespace
            .as_deref()
            .filter(|_| target.resource.namespaced)
        {
            store.require_namespace(ns)?;
        }
        store.create(&target.resource, k, stored_form(object, &target.resource))?
    } else {
        store.update(
            &target.resource,
            &k,
            stored_form(object, &target.resource),
            target.status,
        )?
    };
    drop(store);
    after_write(state, &target.resource, &result);
    let code = if creating {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(with_warnings(
        json_response(code, with_version(result, &target.resource)),
        &warnings,
    ))
}

/// `propagationPolicy=Orphan` from the query or the DeleteOptions body (`--cascade=orphan`).
fn orphans(body: &[u8], query: &BTreeMap<String, String>) -> bool {
    let from_body = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|o| o["propagationPolicy"].as_str().map(str::to_string));
    from_body
        .as_deref()
        .or(query.get("propagationPolicy").map(String::as_str))
        == Some("Orphan")
}

/// A Terminating namespace waits for its objects' finalizers; this finishes it when they go.
fn finish_namespace_later(state: &Arc<ApiState>, name: &str) {
    let state = state.clone();
    let name = name.to_string();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let Ok(mut store) = state.store() else { return };
            if !store.terminating_namespaces().contains(&name)
                || store.finish_namespace(&name).is_some()
            {
                return;
            }
        }
    });
}

fn delete(
    state: &Arc<ApiState>,
    target: &Target,
    name: &str,
    body: &[u8],
    query: &BTreeMap<String, String>,
) -> Result<Response> {
    if is_dry_run(query) {
        let object = get(state, target, name)?;
        return Ok(json_response(
            StatusCode::OK,
            with_version(object, &target.resource),
        ));
    }
    let deleted = {
        let mut store = state.store()?;
        store.delete(&target.resource, &key(target, name), orphans(body, query))?
    };
    if target.resource.plural == "namespaces" && target.resource.group.is_empty() {
        finish_namespace_later(state, name);
    }
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
    body: &[u8],
) -> Result<Response> {
    let orphan = orphans(body, query);
    let filter = Filter::from_query(query, &target.resource)?;
    let mut store = state.store()?;
    let names: Vec<String> = store
        .list(&target.resource.storage_key(), target.namespace.as_deref())
        .into_iter()
        .map(|o| with_version(o, &target.resource))
        .filter(|o| filter.matches(o))
        .filter_map(|o| o["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    let mut items = Vec::new();
    for name in names {
        items.push(store.delete(&target.resource, &key(target, &name), orphan)?);
    }
    Ok(json_response(
        StatusCode::OK,
        json!({"kind": format!("{}List", target.resource.kind), "apiVersion": target.resource.api_version(), "metadata": {}, "items": items}),
    ))
}
