//! The StatefulSet controller: Pods `<name>-<ordinal>`, replaced when the template changes.

use super::*;

/// The StatefulSet controller and the kubelets: Pods `<name>-0` … `<name>-<replicas-1>`, each
/// with its ordinal's identity (`statefulset.kubernetes.io/pod-name`, the revision hash), a
/// Pod of an older template replaced, extra ordinals removed; the status with both revisions.
pub(super) fn settle_statefulset(
    store: &mut Store,
    resource: &Resource,
    key: &Key,
    sts: Value,
    settings: &Settings,
) {
    let want = sts["spec"]["replicas"].as_i64().unwrap_or(1).max(0);
    let hash = template_hash(&normalized(&sts["spec"]["template"]));
    let revision = format!("{}-{hash}", key.name);
    let mut ready = 0;
    if settings.pods
        && let (Some(uid), Some(pod_resource)) = (sts["metadata"]["uid"].as_str(), builtin("pods"))
    {
        let nodes = settings.nodes.max(1);
        let pods = owned(store, "/pods", &key.namespace, uid);
        for pod in &pods {
            let ordinal = pod["metadata"]["name"]
                .as_str()
                .and_then(|n| n.strip_prefix(&format!("{}-", key.name)))
                .and_then(|o| o.parse::<i64>().ok());
            let stale =
                pod["metadata"]["labels"][REVISION_HASH].as_str() != Some(revision.as_str());
            if stale || ordinal.is_none_or(|o| o >= want) {
                let _ = store.delete(&pod_resource, &Key::of(&pod_resource, pod), false);
            }
        }
        for ordinal in 0..want {
            let name = format!("{}-{ordinal}", key.name);
            let pod_key = Key::new(&pod_resource, &key.namespace, &name);
            if store.get(&pod_key).is_none() {
                let node = format!("node-{}", ordinal % nodes + 1);
                let mut labels = sts["spec"]["template"]["metadata"]["labels"].clone();
                labels[REVISION_HASH] = revision.clone().into();
                labels["statefulset.kubernetes.io/pod-name"] = name.clone().into();
                labels["apps.kubernetes.io/pod-index"] = ordinal.to_string().into();
                let mut spec = sts["spec"]["template"]["spec"].clone();
                spec["nodeName"] = node.into();
                spec["hostname"] = name.clone().into();
                if let Some(service) = sts["spec"]["serviceName"].as_str() {
                    spec["subdomain"] = service.into();
                }
                let pod = json!({"metadata": {"name": name, "namespace": key.namespace, "labels": labels,
                    "ownerReferences": [owner_reference(&sts)]}, "spec": spec});
                if store.create(&pod_resource, pod_key.clone(), pod).is_err() {
                    continue;
                }
                let message = format!("create Pod {name} in StatefulSet {} successful", key.name);
                record_event(store, &sts, "SuccessfulCreate", message);
            }
            if let Some(pod) = store.get(&pod_key).cloned() {
                let (status, health) = pod_status(store, &pod, settings, 0);
                write_status(store, &pod_resource, &pod_key, status);
                record_pull_events(store, &pod);
                ready += i64::from(health.ready);
            }
        }
    } else if !settings.held {
        ready = want;
    }
    let status = json!({
        "observedGeneration": sts["metadata"]["generation"].as_i64().unwrap_or(1),
        "replicas": want, "readyReplicas": ready, "availableReplicas": ready,
        "currentReplicas": want, "updatedReplicas": want,
        "currentRevision": revision, "updateRevision": revision, "collisionCount": 0,
    });
    write_status(store, resource, key, status);
}
