//! The `scale` subresource of Deployments, ReplicaSets and StatefulSets: an `autoscaling/v1`
//! Scale view of `spec.replicas` that `kubectl scale` and autoscalers read and write.

use super::*;

/// The Scale object of a workload.
fn scale_of(object: &Value) -> Value {
    let meta = &object["metadata"];
    let selector = selector_string(object);
    json!({
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
                     "resourceVersion": meta["resourceVersion"], "creationTimestamp": meta["creationTimestamp"]},
        "spec": {"replicas": object["spec"]["replicas"].as_i64().unwrap_or(1)},
        "status": {"replicas": object["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector},
    })
}

pub(super) fn scale(
    state: &Arc<ApiState>,
    target: &Target,
    method: &Method,
    headers: &HeaderMap,
    body: &[u8],
    query: &BTreeMap<String, String>,
) -> Result<Response> {
    let Some(name) = target.name.as_deref() else {
        return Err(ApiError::method_not_allowed("scale needs an object name"));
    };
    let k = key(target, name);
    let mut store = state.store()?;
    let current = store
        .get(&k)
        .cloned()
        .ok_or_else(|| ApiError::not_found(&target.resource, name))?;
    let mut scale = scale_of(&current);
    match *method {
        Method::GET => return Ok(json_response(StatusCode::OK, scale)),
        Method::PUT => {
            let given = parse_body(headers, body)?;
            if let Some(rv) = given["metadata"]["resourceVersion"]
                .as_str()
                .filter(|r| !r.is_empty())
                && Some(rv) != current["metadata"]["resourceVersion"].as_str()
            {
                return Err(ApiError::conflict(&target.resource, name));
            }
            scale["spec"] = given["spec"].clone();
        }
        Method::PATCH => {
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let patch_body = parse_body(headers, body)?;
            if ct.starts_with("application/json-patch+json") {
                patch::json_patch(&mut scale, &patch_body)?;
            } else {
                patch::merge_patch(&mut scale, &patch_body);
            }
        }
        _ => {
            return Err(ApiError::method_not_allowed(format!(
                "{method} is not supported on scale"
            )));
        }
    }
    let replicas = scale["spec"]["replicas"].as_i64().unwrap_or(-1);
    if !(0..=i64::from(i32::MAX)).contains(&replicas) {
        return Err(ApiError::invalid(format!(
            "Scale.autoscaling \"{name}\" is invalid: spec.replicas: Invalid value: {}: must be greater than or equal to 0",
            scale["spec"]["replicas"]
        )));
    }
    let mut updated = current.clone();
    updated["spec"]["replicas"] = replicas.into();
    super::super::managed::record_update(
        Some(&current),
        &mut updated,
        &Writer::of(target, headers, query).write(),
    );
    let result = store.update(&target.resource, &k, updated, false)?;
    drop(store);
    after_write(state, &target.resource, &result);
    Ok(json_response(StatusCode::OK, scale_of(&result)))
}
