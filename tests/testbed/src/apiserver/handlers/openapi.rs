//! OpenAPI v2 and v3 documents: CRDs with their own schemas, built-ins with k8s-openapi's (v3
//! per group with each kind's schema inlined, as `kubectl explain` reads it; v2 with every
//! definition, references between them as kube-apiserver writes them), and the
//! `fieldValidation` parameter kubectl looks for before it relies on server-side validation.

use super::*;

pub(super) fn served_gvks(state: &ApiState) -> Vec<(Resource, String)> {
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

pub(super) fn schema_name(r: &Resource) -> String {
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

pub(super) fn gvk_extension(r: &Resource) -> Value {
    json!([{"group": r.group, "version": r.version, "kind": r.kind}])
}

pub(super) fn operations(r: &Resource) -> Value {
    let params = json!([
        {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}, "type": "string", "uniqueItems": true},
        {"name": "fieldManager", "in": "query", "schema": {"type": "string"}, "type": "string", "uniqueItems": true},
        {"name": "dryRun", "in": "query", "schema": {"type": "string"}, "type": "string", "uniqueItems": true}
    ]);
    let op = |verb: &str| json!({"operationId": format!("{verb}{}", r.kind), "parameters": params.clone(), "x-kubernetes-group-version-kind": {"group": r.group, "version": r.version, "kind": r.kind}, "responses": {"200": {"description": "OK"}}});
    json!({"get": op("read"), "put": op("replace"), "patch": op("patch"), "delete": op("delete")})
}

pub(super) fn object_schema(r: &Resource) -> Value {
    object_schema_with(r, false)
}

fn object_schema_with(r: &Resource, builtin_schemas: bool) -> Value {
    let generated = builtin_schemas.then(|| r.schema_fn.map(|f| f())).flatten();
    if let Some(schema) = r.schema.as_ref().or(generated.as_ref()) {
        let mut schema = schema.clone();
        schema["x-kubernetes-group-version-kind"] = gvk_extension(r);
        return schema;
    }
    json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true, "x-kubernetes-group-version-kind": gvk_extension(r),
           "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}})
}

pub(super) fn named_path(r: &Resource, gv: &str) -> String {
    if r.namespaced {
        format!("/{gv}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
    } else {
        format!("/{gv}/{}/{{name}}", r.plural)
    }
}

/// OpenAPI v2: every built-in type with k8s-openapi's definition (a kind's marked with its
/// group/version/kind, as kube-apiserver marks them), and each CRD version with its schema.
pub(super) fn openapi_v2(state: &ApiState) -> Value {
    let mut paths = serde_json::Map::new();
    let mut definitions = resources::definitions().clone();
    for (r, gv) in served_gvks(state) {
        paths.insert(named_path(&r, &gv), operations(&r));
        match r.definition.as_ref().and_then(|n| definitions.get_mut(n)) {
            Some(definition) => definition["x-kubernetes-group-version-kind"] = gvk_extension(&r),
            None => {
                definitions.insert(schema_name(&r), object_schema(&r));
            }
        }
    }
    json!({"swagger": "2.0", "info": {"title": "testbed", "version": "v1.33.0"}, "paths": paths, "definitions": definitions})
}

pub(super) fn openapi_v3_root(state: &ApiState) -> Value {
    let mut paths = serde_json::Map::new();
    for (_, gv) in served_gvks(state) {
        paths.insert(
            gv.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{gv}?hash=testbed")}),
        );
    }
    json!({"paths": paths})
}

pub(super) fn openapi_v3_group(state: &ApiState, rest: &[&str]) -> Result<Response> {
    let gv = rest.join("/");
    let mut paths = serde_json::Map::new();
    let mut schemas = serde_json::Map::new();
    for (r, path_gv) in served_gvks(state) {
        if path_gv != gv {
            continue;
        }
        paths.insert(named_path(&r, &gv), operations(&r));
        schemas.insert(schema_name(&r), object_schema_with(&r, true));
    }
    if paths.is_empty() {
        return Err(ApiError::no_route(&format!("/openapi/v3/{gv}")));
    }
    Ok(json_response(
        StatusCode::OK,
        json!({"openapi": "3.0.0", "info": {"title": "testbed", "version": "v1.33.0"}, "paths": paths, "components": {"schemas": schemas}}),
    ))
}
