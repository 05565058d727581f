//! The DaemonSet controller: one Pod per simulated node, replaced `maxUnavailable` nodes per
//! step when the template changes, and its status.

use super::*;

/// The DaemonSet controller and the kubelets, one step: a Pod per node; a new template replaces
/// `maxUnavailable` (1) nodes' Pods per step (RollingUpdate; OnDelete replaces none, a held
/// DaemonSet all at once). `true` while Pods of an older template remain.
pub(super) fn settle_daemonset(
    store: &mut Store,
    resource: &Resource,
    key: &Key,
    ds: Value,
    settings: &Settings,
) -> bool {
    let nodes = settings.nodes;
    let mut updated = nodes;
    let ready = if settings.held { 0 } else { nodes };
    let mut counts = Counts {
        total: nodes,
        ready,
        available: ready,
    };
    if settings.pods
        && let Some(uid) = ds["metadata"]["uid"].as_str()
    {
        let hash = template_hash(&normalized(&ds["spec"]["template"]));
        let pods = owned(store, "/pods", &key.namespace, uid);
        let want = usize::try_from(nodes.max(0)).unwrap_or(0);
        let strategy = &ds["spec"]["updateStrategy"];
        // New Pods not Ready use up the budget: a template whose Pods never start stalls after
        // maxUnavailable nodes.
        let unready_new = pods
            .iter()
            .filter(|p| {
                p["metadata"]["labels"][REVISION_HASH].as_str() == Some(hash.as_str())
                    && !is_ready(p)
            })
            .count();
        let per_step = match strategy["type"].as_str() {
            _ if settings.held => usize::MAX,
            Some("OnDelete") => 0,
            _ => usize::try_from(
                resolve(&strategy["rollingUpdate"]["maxUnavailable"], nodes, false).max(1),
            )
            .unwrap_or(1)
            .saturating_sub(unready_new),
        };
        let min_ready = ds["spec"]["minReadySeconds"].as_i64().unwrap_or(0);
        counts = reconcile_pods(
            store,
            &ds,
            pods,
            want,
            Some(&hash),
            per_step,
            settings,
            min_ready,
        );
        let current = owned(store, "/pods", &key.namespace, uid)
            .iter()
            .filter(|p| p["metadata"]["labels"][REVISION_HASH].as_str() == Some(hash.as_str()))
            .count();
        updated = i64::try_from(current).unwrap_or(nodes);
    }
    let generation = ds["metadata"]["generation"].as_i64().unwrap_or(1);
    let mut status = json!({
        "observedGeneration": generation, "desiredNumberScheduled": nodes, "currentNumberScheduled": nodes,
        "updatedNumberScheduled": updated, "numberReady": counts.ready, "numberAvailable": counts.available,
        "numberMisscheduled": 0,
    });
    if nodes > counts.available {
        status["numberUnavailable"] = (nodes - counts.available).into();
    }
    write_status(store, resource, key, status);
    let unfinished = updated < nodes || (counts.available < nodes && !settings.held);
    unfinished && ds["spec"]["updateStrategy"]["type"] != "OnDelete"
}
