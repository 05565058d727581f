//! The Deployment controller: one ReplicaSet per pod template with revisions, rolling updates in
//! steps within `maxSurge`/`maxUnavailable` (or Recreate), the status in between; and the
//! ReplicaSet controller under it.

use super::*;

/// Settles a Deployment one step; `true` while its rolling update goes on.
pub(super) fn settle_deployment(
    store: &mut Store,
    resource: &Resource,
    key: &Key,
    mut deployment: Value,
    settings: &Settings,
) -> bool {
    let want = deployment["spec"]["replicas"].as_i64().unwrap_or(1);
    let generation = deployment["metadata"]["generation"].as_i64().unwrap_or(1);
    let ready = if settings.held { 0 } else { want };
    let mut progress = Progress {
        total: want,
        updated: want,
        ready,
        available: ready,
        done: true,
    };
    if settings.pods
        && let Some((rev, step)) = settle_replicasets(store, key, &deployment, want, settings)
    {
        progress = step;
        if revision(&deployment) != rev {
            deployment["metadata"]["annotations"][REVISION] = rev.to_string().into();
            let _ = store.update(resource, key, deployment.clone(), false);
        }
    }
    let now = now();
    // Stalled longer than progressDeadlineSeconds (the Progressing condition last changed
    // then): the controller says so, as kube-controller-manager does.
    let deadline = deployment["spec"]["progressDeadlineSeconds"]
        .as_i64()
        .unwrap_or(600);
    let progressing = deployment["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Progressing"))
        .cloned()
        .unwrap_or(Value::Null);
    let stalled = !progress.done
        && progressing["reason"] != "NewReplicaSetAvailable"
        && seconds_since(&progressing["lastUpdateTime"]) > deadline;
    let (progressing_status, reason, message) = if progress.done {
        (
            "True",
            "NewReplicaSetAvailable",
            format!("ReplicaSet \"{}\" has successfully progressed.", key.name),
        )
    } else if stalled || progressing["reason"] == "ProgressDeadlineExceeded" {
        (
            "False",
            "ProgressDeadlineExceeded",
            format!("ReplicaSet \"{}\" has timed out progressing.", key.name),
        )
    } else {
        (
            "True",
            "ReplicaSetUpdated",
            format!("ReplicaSet \"{}\" is progressing.", key.name),
        )
    };
    let max_unavailable = if deployment["spec"]["strategy"]["type"] == "Recreate" {
        want
    } else {
        resolve(
            &deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
            want,
            false,
        )
    };
    let minimum =
        progress.available >= want - max_unavailable && progress.available > 0 || want == 0;
    let mut status = json!({
        "observedGeneration": generation, "replicas": progress.total, "updatedReplicas": progress.updated,
        "readyReplicas": progress.ready, "availableReplicas": progress.available,
        "conditions": [
            {"type": "Available", "status": if minimum { "True" } else { "False" }, "reason": if minimum { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" }, "lastUpdateTime": now, "lastTransitionTime": now, "message": if minimum { "Deployment has minimum availability." } else { "Deployment does not have minimum availability." }},
            {"type": "Progressing", "status": progressing_status, "reason": reason, "lastUpdateTime": now, "lastTransitionTime": now, "message": message}
        ]
    });
    if progress.total > progress.available {
        status["unavailableReplicas"] = (progress.total - progress.available).into();
    }
    write_status(store, resource, key, status);
    !progress.done
}

/// Where a Deployment's rollout stands after a step.
pub(super) struct Progress {
    /// Pods of all its ReplicaSets.
    pub(super) total: i64,
    /// Pods of the current template.
    pub(super) updated: i64,
    /// Ready Pods of all its ReplicaSets.
    pub(super) ready: i64,
    /// Available Pods of all its ReplicaSets.
    pub(super) available: i64,
    /// Whether the current ReplicaSet has them all and the old ones none.
    pub(super) done: bool,
}

/// A `maxSurge`/`maxUnavailable` value for `want` replicas: a count, or a percentage rounded
/// up (surge) or down (unavailable) as the Deployment controller rounds them.
pub(super) fn resolve(value: &Value, want: i64, round_up: bool) -> i64 {
    match value {
        Value::Number(n) => n.as_i64().unwrap_or(0).max(0),
        Value::String(s) => {
            let percent: i64 = s.trim_end_matches('%').parse().unwrap_or(25);
            let scaled = percent.max(0).saturating_mul(want.max(0));
            if round_up {
                (scaled + 99) / 100
            } else {
                scaled / 100
            }
        }
        _ => 0,
    }
}

/// The replica counts of one rolling-update step: (new ReplicaSet, each old one's new count),
/// as the Deployment controller steps once the previous step's new Pods are available: the new
/// ReplicaSet up within `maxSurge`, the old ones down within `maxUnavailable` counting only the
/// available new Pods. Recreate, or a held (not-ready) workload, goes in one step.
pub(super) fn rollout_step(
    deployment: &Value,
    want: i64,
    new_now: i64,
    new_available: i64,
    old: &[i64],
    held: bool,
) -> (i64, Vec<i64>) {
    let strategy = &deployment["spec"]["strategy"];
    if held || strategy["type"] == "Recreate" {
        return (want, vec![0; old.len()]);
    }
    let rolling = &strategy["rollingUpdate"];
    let surge = resolve(&rolling["maxSurge"], want, true);
    let mut unavailable = resolve(&rolling["maxUnavailable"], want, false);
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    let old_total: i64 = old.iter().sum();
    // Up: never more than want + maxSurge Pods in all.
    let new_target = if new_now >= want || old_total == 0 {
        want
    } else {
        (want + surge - old_total).clamp(new_now, want)
    };
    // Down: never fewer than want - maxUnavailable available (what was there before this step;
    // new Pods count once available, so a template whose Pods never start stalls here).
    let mut scale_down = (old_total + new_available.min(new_now) - (want - unavailable)).max(0);
    let old_targets = old
        .iter()
        .map(|&replicas| {
            let cut = replicas.min(scale_down);
            scale_down -= cut;
            replicas - cut
        })
        .collect();
    (new_target, old_targets)
}

/// Sets a ReplicaSet's replica count (and revision), with the controller's Event.
pub(super) fn scale_replicaset(
    store: &mut Store,
    deployment: &Value,
    mut rs: Value,
    to: i64,
    revision_to: Option<i64>,
) {
    let Some(rs_resource) = builtin("replicasets") else {
        return;
    };
    let rs_key = Key::of(&rs_resource, &rs);
    let from = rs["spec"]["replicas"].as_i64().unwrap_or(0);
    let revision_changes = revision_to.is_some_and(|r| revision(&rs) != r);
    if from == to && !revision_changes {
        return;
    }
    if from != to {
        let verb = if to > from { "up" } else { "down" };
        let message = format!(
            "Scaled {verb} replica set {} from {from} to {to}",
            rs_key.name
        );
        record_event(store, deployment, "ScalingReplicaSet", message);
    }
    if let Some(r) = revision_to {
        rs["metadata"]["annotations"][REVISION] = r.to_string().into();
    }
    rs["spec"]["replicas"] = to.into();
    let _ = store.update(&rs_resource, &rs_key, rs, false);
}

/// The Deployment controller, one step: the ReplicaSet of the current template (with the
/// newest revision) scaled towards `want`, the others towards 0 ([`rollout_step`]), history
/// pruned at `revisionHistoryLimit`. Returns the current revision and where the rollout stands.
pub(super) fn settle_replicasets(
    store: &mut Store,
    key: &Key,
    deployment: &Value,
    want: i64,
    settings: &Settings,
) -> Option<(i64, Progress)> {
    let rs_resource = builtin("replicasets")?;
    let uid = deployment["metadata"]["uid"].as_str()?;
    let template = deployment["spec"]["template"].clone();
    let sets = owned(store, "apps/replicasets", &key.namespace, uid);
    let max = sets.iter().map(revision).max().unwrap_or(0);
    let current = sets
        .iter()
        .find(|rs| normalized(&rs["spec"]["template"]) == normalized(&template))
        .cloned();
    let current_name = current
        .as_ref()
        .and_then(|rs| rs["metadata"]["name"].as_str().map(str::to_string));
    // Old ReplicaSets, oldest first: scaled down first, pruned beyond the history limit.
    let mut old: Vec<Value> = sets
        .into_iter()
        .filter(|rs| rs["metadata"]["name"].as_str().map(str::to_string) != current_name)
        .collect();
    old.sort_by_key(revision);
    let old_counts: Vec<i64> = old
        .iter()
        .map(|rs| rs["spec"]["replicas"].as_i64().unwrap_or(0))
        .collect();
    let new_now = current
        .as_ref()
        .and_then(|rs| rs["spec"]["replicas"].as_i64())
        .unwrap_or(0);
    // The controller steps on when the new Pods are available (pulled, Ready, minReadySeconds).
    let new_available = match &current {
        Some(rs) => settle_replicaset(store, &Key::of(&rs_resource, rs), settings)
            .map_or(0, |c| c.available),
        None => 0,
    };
    let (new_target, old_targets) = rollout_step(
        deployment,
        want,
        new_now,
        new_available,
        &old_counts,
        settings.held,
    );
    let (rs_key, rev) = match current {
        Some(rs) => {
            let rev = if revision(&rs) == max { max } else { max + 1 };
            let rs_key = Key::of(&rs_resource, &rs);
            scale_replicaset(store, deployment, rs, new_target, Some(rev));
            (rs_key, rev)
        }
        None => {
            let hash = template_hash(&normalized(&template));
            let name = format!("{}-{hash}", key.name);
            let mut rs_template = template.clone();
            rs_template["metadata"]["labels"][TEMPLATE_HASH] = hash.clone().into();
            let mut selector = deployment["spec"]["selector"].clone();
            selector["matchLabels"][TEMPLATE_HASH] = hash.clone().into();
            let mut labels = template["metadata"]["labels"].clone();
            labels[TEMPLATE_HASH] = hash.into();
            let rs = json!({
                "metadata": {
                    "name": name, "namespace": key.namespace, "labels": labels,
                    "annotations": {REVISION: (max + 1).to_string(), "deployment.kubernetes.io/desired-replicas": want.to_string(), "deployment.kubernetes.io/max-replicas": (want + 1).to_string()},
                    "ownerReferences": [owner_reference(deployment)],
                },
                "spec": {"replicas": new_target, "selector": selector, "template": rs_template,
                         "minReadySeconds": deployment["spec"]["minReadySeconds"].as_i64().unwrap_or(0)},
            });
            let rs_key = Key::new(&rs_resource, &key.namespace, &name);
            store.create(&rs_resource, rs_key.clone(), rs).ok()?;
            let message = format!("Scaled up replica set {name} from 0 to {new_target}");
            record_event(store, deployment, "ScalingReplicaSet", message);
            (rs_key, max + 1)
        }
    };
    let limit = deployment["spec"]["revisionHistoryLimit"]
        .as_i64()
        .unwrap_or(10)
        .max(0);
    let excess = old
        .len()
        .saturating_sub(usize::try_from(limit).unwrap_or(0));
    let mut old_total = 0;
    let mut counts = Counts::default();
    for (i, (rs, to)) in old.into_iter().zip(old_targets).enumerate() {
        let k = Key::of(&rs_resource, &rs);
        // Only a ReplicaSet without Pods is history that can go.
        if i < excess && to == 0 {
            let _ = store.delete(&rs_resource, &k, false);
            continue;
        }
        old_total += to;
        scale_replicaset(store, deployment, rs, to, None);
        counts = counts.plus(settle_replicaset(store, &k, settings).unwrap_or_default());
    }
    let new = settle_replicaset(store, &rs_key, settings).unwrap_or_default();
    let progress = Progress {
        total: new_target + old_total,
        updated: new_target,
        ready: counts.ready + new.ready,
        available: counts.available + new.available,
        done: new_target == want && old_total == 0 && new.available >= want,
    };
    Some((rev, progress))
}

/// The ReplicaSet controller and the kubelets: `spec.replicas` Pods, Running once their images
/// are pulled, Ready unless held, available after `minReadySeconds`. Returns how they stand.
pub(super) fn settle_replicaset(
    store: &mut Store,
    key: &Key,
    settings: &Settings,
) -> Option<Counts> {
    let rs_resource = builtin("replicasets")?;
    let rs = store.get(key).cloned()?;
    let uid = rs["metadata"]["uid"].as_str()?.to_string();
    let want = usize::try_from(rs["spec"]["replicas"].as_i64().unwrap_or(1).max(0)).ok()?;
    let count = i64::try_from(want).ok()?;
    let min_ready = rs["spec"]["minReadySeconds"].as_i64().unwrap_or(0);
    let counts = if settings.pods {
        let pods = owned(store, "/pods", &key.namespace, &uid);
        reconcile_pods(
            store,
            &rs,
            pods,
            want,
            None,
            usize::MAX,
            settings,
            min_ready,
        )
    } else {
        let ready = if settings.held { 0 } else { count };
        Counts {
            total: count,
            ready,
            available: ready,
        }
    };
    let status = json!({
        "replicas": count, "fullyLabeledReplicas": count, "readyReplicas": counts.ready,
        "availableReplicas": counts.available, "observedGeneration": rs["metadata"]["generation"].as_i64().unwrap_or(1),
    });
    write_status(store, &rs_resource, key, status);
    Some(counts)
}
