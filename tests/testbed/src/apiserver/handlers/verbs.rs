//! The write verbs: create (with `generateName`, defaulting and admission), update, patch (JSON,
//! merge, strategic merge, apply), delete and deletecollection (with finalizers, orphaning and
//! the namespace lifecycle), each guarded by `resourceVersion` where kube-apiserver guards it.

use super::*;

pub(super) fn create(
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
    crate::apiserver::managed::record_update(
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
pub(super) fn default_and_admit(
    target: &Target,
    object: &mut Value,
    old: Option<&Value>,
    query: &BTreeMap<String, String>,
) -> Result<Vec<String>> {
    if !target.status {
        crate::apiserver::defaults::keep_allocated(&target.resource, object, old);
        crate::apiserver::defaults::apply(&target.resource, object);
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
pub(super) struct Writer {
    pub(super) manager: String,
    pub(super) api_version: String,
    pub(super) subresource: &'static str,
    pub(super) has_status: bool,
    pub(super) shape: patch::Shape,
}

impl Writer {
    pub(super) fn of(
        target: &Target,
        headers: &HeaderMap,
        query: &BTreeMap<String, String>,
    ) -> Self {
        let user_agent = headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok());
        Self {
            manager: crate::apiserver::managed::manager_name(
                query.get("fieldManager").map(String::as_str),
                user_agent,
            ),
            api_version: target.resource.api_version(),
            subresource: target.subresource(),
            has_status: target.resource.status_subresource,
            shape: patch::Shape::of(&target.resource.api_version(), &target.resource.kind),
        }
    }

    pub(super) fn write(&self) -> crate::apiserver::managed::Write<'_> {
        crate::apiserver::managed::Write {
            manager: &self.manager,
            api_version: &self.api_version,
            subresource: self.subresource,
            has_status: self.has_status,
            shape: self.shape,
        }
    }
}

/// Adds a `Warning: 299 - "…"` header per warning, as kube-apiserver does.
pub(super) fn with_warnings(mut response: Response, warnings: &[String]) -> Response {
    for w in warnings {
        let value = format!("299 - \"{}\"", w.replace('"', "\\\""));
        if let Ok(v) = axum::http::HeaderValue::from_str(&value) {
            response.headers_mut().append("warning", v);
        }
    }
    response
}

pub(super) fn validate_name(resource: &Resource, name: &str) -> Result<()> {
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

pub(super) fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}

pub(super) fn update(
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
    crate::apiserver::managed::record_update(
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

pub(super) fn patch_object(
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
    let request = PatchRequest {
        target,
        name,
        headers,
        body,
        query,
        content_type: &ct,
        is_crd_object,
        key: &k,
    };
    // Read under the store's lock, patch without it, write under it only if nothing changed
    // meanwhile, else start again from the new object: kube-apiserver's GuaranteedUpdate. The
    // store is not held while a patch is applied, defaulted, admitted and its managedFields
    // recorded, so patches of different objects run side by side.
    for _ in 0..=PATCH_RETRIES {
        let current = state.store()?.get(&k).cloned();
        if let Some(response) = patch_from(state, &request, current)? {
            return Ok(response);
        }
    }
    Err(ApiError::conflict(&target.resource, name))
}

/// How often a patch starts again when its object changed between its read and its write
/// (kube-apiserver's `maxRetryWhenPatchConflicts`).
const PATCH_RETRIES: usize = 5;

/// One patch request, as read from the wire.
struct PatchRequest<'a> {
    target: &'a Target,
    name: &'a str,
    headers: &'a HeaderMap,
    body: &'a [u8],
    query: &'a BTreeMap<String, String>,
    content_type: &'a str,
    is_crd_object: bool,
    key: &'a Key,
}

/// The patch applied to `current` (the object as read) and written: the response, or `None`
/// when another write changed the object after it was read.
fn patch_from(
    state: &Arc<ApiState>,
    request: &PatchRequest<'_>,
    current: Option<Value>,
) -> Result<Option<Response>> {
    let PatchRequest {
        target,
        name,
        headers,
        body,
        query,
        content_type: ct,
        is_crd_object,
        key: k,
    } = *request;
    let read_rv = current
        .as_ref()
        .map(|c| c["metadata"]["resourceVersion"].clone());
    let old = current
        .as_ref()
        .map(|o| with_version(o.clone(), &target.resource));
    let (mut object, creating) = match (current, ct) {
        (Some(c), _) => (with_version(c, &target.resource), false),
        (None, "application/apply-patch+yaml") => (json!({"metadata": {"name": name}}), true),
        (None, _) => return Err(ApiError::not_found(&target.resource, name)),
    };
    let current_rv = object["metadata"]["resourceVersion"].clone();
    match ct {
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
            object = crate::apiserver::managed::apply(
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
    let warnings = default_and_admit(target, &mut object, old.as_ref(), query)?;
    if ct != "application/apply-patch+yaml" {
        crate::apiserver::managed::record_update(
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
        return Ok(Some(with_warnings(
            json_response(code, with_version(object, &target.resource)),
            &warnings,
        )));
    }
    let mut store = state.store()?;
    if store
        .get(k)
        .map(|o| o["metadata"]["resourceVersion"].clone())
        != read_rv
    {
        return Ok(None);
    }
    let result = if creating {
        if let Some(ns) = target
            .namespace
            .as_deref()
            .filter(|_| target.resource.namespaced)
        {
            store.require_namespace(ns)?;
        }
        store.create(
            &target.resource,
            k.clone(),
            stored_form(object, &target.resource),
        )?
    } else {
        store.update(
            &target.resource,
            k,
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
    Ok(Some(with_warnings(
        json_response(code, with_version(result, &target.resource)),
        &warnings,
    )))
}

/// `propagationPolicy=Orphan` from the query or the DeleteOptions body (`--cascade=orphan`).
pub(super) fn orphans(body: &[u8], query: &BTreeMap<String, String>) -> bool {
    let from_body = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|o| o["propagationPolicy"].as_str().map(str::to_string));
    from_body
        .as_deref()
        .or(query.get("propagationPolicy").map(String::as_str))
        == Some("Orphan")
}

/// A Terminating namespace waits for its objects' finalizers; this finishes it when they go.
pub(super) fn finish_namespace_later(state: &Arc<ApiState>, name: &str) {
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

pub(super) fn delete(
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

pub(super) fn delete_collection(
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
