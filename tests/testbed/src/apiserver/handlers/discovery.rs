//! Discovery: `/version`, `/api`, `/apis` and the group-version resource lists kubectl and
//! kube-rs read to map kinds to URLs.

use super::*;

pub(super) fn version() -> Value {
    json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-testbed", "gitCommit": "testbed", "gitTreeState": "clean",
           "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64"})
}

pub(super) fn resources_of(state: &ApiState) -> Vec<Resource> {
    state
        .resources
        .read()
        .map(|r| r.clone())
        .unwrap_or_default()
}

pub(super) fn resource_list(state: &ApiState, group: &str, version: &str) -> Value {
    let mut list = Vec::new();
    for r in resources_of(state)
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        list.push(r.api_resource());
        if r.status_subresource {
            list.push(json!({"name": format!("{}/status", r.plural), "singularName": "", "namespaced": r.namespaced, "kind": r.kind, "verbs": ["get", "patch", "update"]}));
        }
        if r.scale_subresource() {
            list.push(json!({"name": format!("{}/scale", r.plural), "singularName": "", "namespaced": r.namespaced, "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]}));
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list})
}

pub(super) fn group_list(state: &ApiState) -> Value {
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
