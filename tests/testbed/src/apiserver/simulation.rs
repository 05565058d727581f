//! Workload simulation: a Deployment or DaemonSet becomes Ready shortly after each spec change,
//! as a cluster with healthy nodes would make it (status.observedGeneration, replica counts, the
//! Available condition; desiredNumberScheduled/numberReady for DaemonSets). A workload can be held
//! not-ready (by the test API or the annotation `testbed.k8slab.io/hold-not-ready: "true"`).

use std::sync::Arc;

use serde_json::{Value, json};

use super::ApiState;
use super::resources::Resource;
use super::store::Key;

const HOLD_ANNOTATION: &str = "testbed.k8slab.io/hold-not-ready";

/// After a write to a workload: if its status lags its generation, make it Ready after the delay.
pub(crate) fn schedule(state: &Arc<ApiState>, resource: &Resource, object: &Value) {
    let sim = match state.simulation.lock() {
        Ok(s) => s.clone(),
        Err(_) => return,
    };
    if !sim.enabled {
        return;
    }
    let generation = object["metadata"]["generation"].as_i64().unwrap_or(0);
    let observed = object["status"]["observedGeneration"].as_i64().unwrap_or(0);
    if observed >= generation && object.get("status").is_some_and(|s| !s.is_null()) {
        return;
    }
    let state = state.clone();
    let resource = resource.clone();
    let key = Key::of(&resource, object);
    tokio::spawn(async move {
        tokio::time::sleep(sim.delay).await;
        settle(&state, &resource, &key);
    });
}

/// Re-settles every workload (after a release).
pub(crate) fn reconcile_all(state: &Arc<ApiState>) {
    let resources: Vec<Resource> = state
        .resources
        .read()
        .map(|r| r.iter().filter(|r| r.group == "apps").cloned().collect())
        .unwrap_or_default();
    for resource in resources {
        let objects = state
            .store
            .lock()
            .map(|s| s.list(&resource.storage_key(), None))
            .unwrap_or_default();
        for o in objects {
            let key = Key::of(&resource, &o);
            settle(state, &resource, &key);
        }
    }
}

fn settle(state: &Arc<ApiState>, resource: &Resource, key: &Key) {
    let (enabled, held_by_api, nodes) = match state.simulation.lock() {
        Ok(s) => (
            s.enabled,
            s.held.contains(&format!("{}/{}", key.namespace, key.name)),
            s.nodes,
        ),
        Err(_) => return,
    };
    if !enabled {
        return;
    }
    let Ok(mut store) = state.store.lock() else {
        return;
    };
    let Some(mut object) = store.get(key).cloned() else {
        return;
    };
    let held =
        held_by_api || object["metadata"]["annotations"][HOLD_ANNOTATION].as_str() == Some("true");
    let generation = object["metadata"]["generation"].as_i64().unwrap_or(1);
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let status = if resource.plural == "deployments" {
        let want = object["spec"]["replicas"].as_i64().unwrap_or(1);
        let ready = if held { 0 } else { want };
        let mut s = json!({
            "observedGeneration": generation, "replicas": want, "updatedReplicas": want,
            "readyReplicas": ready, "availableReplicas": ready,
            "conditions": [
                {"type": "Available", "status": if held { "False" } else { "True" }, "reason": if held { "MinimumReplicasUnavailable" } else { "MinimumReplicasAvailable" }, "lastUpdateTime": now, "lastTransitionTime": now, "message": "simulated by the testbed"},
                {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable", "lastUpdateTime": now, "lastTransitionTime": now, "message": "simulated by the testbed"}
            ]
        });
        if held {
            s["unavailableReplicas"] = want.into();
        }
        s
    } else {
        let ready = if held { 0 } else { nodes };
        json!({
            "observedGeneration": generation, "desiredNumberScheduled": nodes, "currentNumberScheduled": nodes,
            "updatedNumberScheduled": nodes, "numberReady": ready, "numberAvailable": ready, "numberMisscheduled": 0,
        })
    };
    // Keep condition timestamps stable when nothing changed, so a re-settle is a no-op.
    let same = |a: &Value, b: &Value| {
        let strip = |v: &Value| {
            let mut v = v.clone();
            if let Some(c) = v["conditions"].as_array_mut() {
                for c in c {
                    if let Some(m) = c.as_object_mut() {
                        m.remove("lastUpdateTime");
                        m.remove("lastTransitionTime");
                    }
                }
            }
            v
        };
        strip(a) == strip(b)
    };
    if same(&object["status"], &status) {
        return;
    }
    object["status"] = status;
    let _ = store.update(resource, key, object, true);
}
