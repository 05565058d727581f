//! After a write: the simulated controllers hear of it, and a CustomResourceDefinition written
//! starts (or stops) serving its resource.

use super::*;

/// What happens after any successful write: CRDs start or stop serving, workloads are simulated.
pub(super) fn after_write(state: &Arc<ApiState>, resource: &Resource, object: &Value) {
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
        crate::apiserver::policy::aggregate(&mut store);
    }
}

/// Re-derives the served custom resources from the stored CRDs, and marks them Established.
pub(super) fn refresh_crds(state: &Arc<ApiState>) {
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
