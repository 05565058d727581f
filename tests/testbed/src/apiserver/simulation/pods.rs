//! Pods as healthy kubelets run them: created for an owner, Running with a status per
//! container (not Ready while held; waiting with a pull error where an image cannot be pulled),
//! the counts an owner's status is made of, and the pull Events.

use super::*;

/// Whether a Pod's stored status shows it Ready.
pub(super) fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// Makes `owner` have `want` Pods of its template: Pods of another template (`revision_hash`
/// differs, DaemonSets; at most `max_replaced` of them per call, besides those not Ready, which
/// the controller replaces at once) or beyond `want` are deleted, missing ones created, their
/// statuses set as the kubelet reports them. Returns how the kept Pods stand.
#[allow(clippy::too_many_arguments)]
pub(super) fn reconcile_pods(
    store: &mut Store,
    owner: &Value,
    pods: Vec<Value>,
    want: usize,
    revision_hash: Option<&str>,
    max_replaced: usize,
    settings: &Settings,
    min_ready: i64,
) -> Counts {
    let mut counts = Counts::default();
    let Some(pod_resource) = builtin("pods") else {
        return counts;
    };
    let mut keep = Vec::new();
    let mut replaced = 0;
    for pod in pods {
        let stale = revision_hash
            .is_some_and(|h| pod["metadata"]["labels"][REVISION_HASH].as_str() != Some(h));
        let replace = stale && (!is_ready(&pod) || replaced < max_replaced);
        replaced += usize::from(replace && is_ready(&pod));
        if replace || keep.len() >= want {
            let _ = store.delete(&pod_resource, &Key::of(&pod_resource, &pod), false);
        } else {
            keep.push(pod);
        }
    }
    let mut used_nodes: Vec<String> = keep
        .iter()
        .filter_map(|p| p["spec"]["nodeName"].as_str().map(str::to_string))
        .collect();
    let nodes = usize::try_from(settings.nodes.max(1)).unwrap_or(1);
    while keep.len() < want {
        // DaemonSets: one Pod per node; ReplicaSets: spread round-robin.
        let node = if revision_hash.is_some() {
            (1..=nodes)
                .map(|n| format!("node-{n}"))
                .find(|n| !used_nodes.contains(n))
                .unwrap_or_else(|| "node-1".into())
        } else {
            format!("node-{}", keep.len() % nodes + 1)
        };
        used_nodes.push(node.clone());
        let Some(pod) = create_pod(store, &pod_resource, owner, &node, revision_hash) else {
            return counts;
        };
        let message = format!(
            "Created pod: {}",
            pod["metadata"]["name"].as_str().unwrap_or("")
        );
        record_event(store, owner, "SuccessfulCreate", message);
        keep.push(pod);
    }
    for pod in keep {
        let key = Key::of(&pod_resource, &pod);
        let (status, health) = pod_status(store, &pod, settings, min_ready);
        write_status(store, &pod_resource, &key, status);
        record_pull_events(store, &pod);
        counts.add(health);
    }
    counts
}

pub(super) fn create_pod(
    store: &mut Store,
    pod_resource: &Resource,
    owner: &Value,
    node: &str,
    revision_hash: Option<&str>,
) -> Option<Value> {
    let namespace = owner["metadata"]["namespace"].as_str()?;
    let owner_name = owner["metadata"]["name"].as_str()?;
    let template = &owner["spec"]["template"];
    let name = format!("{owner_name}-{}", random_suffix());
    let mut labels = template["metadata"]["labels"].clone();
    if let Some(hash) = revision_hash {
        labels[REVISION_HASH] = hash.into();
        labels["pod-template-generation"] = owner["metadata"]["generation"]
            .as_i64()
            .unwrap_or(1)
            .to_string()
            .into();
    }
    let mut spec = template["spec"].clone();
    spec["nodeName"] = node.into();
    let mut metadata = json!({
        "name": name, "generateName": format!("{owner_name}-"), "namespace": namespace,
        "ownerReferences": [owner_reference(owner)],
    });
    if labels.is_object() {
        metadata["labels"] = labels;
    }
    if let Some(a) = template["metadata"]["annotations"].as_object() {
        metadata["annotations"] = Value::Object(a.clone());
    }
    let pod = json!({"metadata": metadata, "spec": spec});
    store
        .create(pod_resource, Key::new(pod_resource, namespace, &name), pod)
        .ok()
}

/// How a Pod stands after a settle.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Health {
    /// Every container runs and the Pod is Ready.
    pub(super) ready: bool,
    /// Ready for at least its owner's `minReadySeconds`.
    pub(super) available: bool,
}

/// Counts of Pods by health.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Counts {
    pub(super) total: i64,
    pub(super) ready: i64,
    pub(super) available: i64,
}

/// The state of one container as the kubelet reports it: running (or, for an init container,
/// completed), or waiting with kube's reason while its image cannot be pulled.
pub(super) fn container_state(
    store: &Store,
    pod: &Value,
    container: &Value,
    before: Option<&Value>,
    settings: &Settings,
) -> Result<(), (String, String)> {
    let was = before.map(|b| &b["state"]);
    if was.is_some_and(|s| s.get("running").is_some() || s.get("terminated").is_some()) {
        return Ok(()); // a started container is not pulled again
    }
    let Some(pulls) = &settings.pulls else {
        return Ok(());
    };
    let image = container["image"].as_str().unwrap_or("");
    let namespace = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let key = kubelet::pull_key(store, namespace, &pod["spec"], image);
    let waiting = was.and_then(|s| s.get("waiting"));
    let waiting_reason = waiting.and_then(|w| w["reason"].as_str()).unwrap_or("");
    match pulls.get(&key) {
        Some(Verdict::Pulled) => Ok(()),
        Some(Verdict::Invalid(m)) => Err(("InvalidImageName".into(), m.clone())),
        Some(Verdict::Failed(m)) => {
            if matches!(waiting_reason, "ErrImagePull" | "ImagePullBackOff") {
                Err((
                    "ImagePullBackOff".into(),
                    format!("Back-off pulling image \"{image}\": ErrImagePull: {m}"),
                ))
            } else {
                Err(("ErrImagePull".into(), m.clone()))
            }
        }
        // Not checked yet (a template newer than this settle's pulls): as it was.
        None => match waiting {
            Some(w) => Err((
                w["reason"].as_str().unwrap_or("ContainerCreating").into(),
                w["message"].as_str().unwrap_or("").into(),
            )),
            None => Err(("ContainerCreating".into(), String::new())),
        },
    }
}

pub(super) fn seconds_since(time: &Value) -> i64 {
    time.as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map_or(i64::MAX, |t| {
            (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds()
        })
}

/// A Pod's status as its kubelet reports it: Running and Ready once every image is pulled
/// (Ready unless held), Pending with waiting containers otherwise; conditions, IPs and one
/// status per container. Available once Ready for `min_ready` seconds.
pub(super) fn pod_status(
    store: &Store,
    pod: &Value,
    settings: &Settings,
    min_ready: i64,
) -> (Value, Health) {
    let since = pod["metadata"]["creationTimestamp"].clone();
    let node: u32 = pod["spec"]["nodeName"]
        .as_str()
        .and_then(|n| n.strip_prefix("node-"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    let digest = sha2::Sha256::digest(pod["metadata"]["uid"].as_str().unwrap_or("").as_bytes());
    let ip = format!("10.244.{}.{}", node % 250, 2 + u32::from(digest[0]) % 250);
    let before = |field: &str, name: &Value| {
        pod["status"][field]
            .as_array()
            .and_then(|a| a.iter().find(|c| &c["name"] == name))
    };
    let mut init_done = true;
    let mut init = Vec::new();
    for c in pod["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let state = if init_done {
            container_state(
                store,
                pod,
                c,
                before("initContainerStatuses", &c["name"]),
                settings,
            )
        } else {
            Err(("PodInitializing".into(), String::new()))
        };
        let state = match state {
            Ok(()) => {
                json!({"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": since, "finishedAt": since}})
            }
            Err((reason, message)) => {
                init_done = false;
                json!({"waiting": {"reason": reason, "message": message}})
            }
        };
        let done = state.get("terminated").is_some();
        init.push(
            json!({"name": c["name"], "image": c["image"], "imageID": "", "ready": done,
            "started": false, "restartCount": 0, "state": state}),
        );
    }
    let mut running = init_done;
    let mut main = Vec::new();
    for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
        let state = if init_done {
            container_state(
                store,
                pod,
                c,
                before("containerStatuses", &c["name"]),
                settings,
            )
        } else {
            Err(("PodInitializing".into(), String::new()))
        };
        let (state, started) = match state {
            Ok(()) => (json!({"running": {"startedAt": since}}), true),
            Err((reason, message)) => {
                running = false;
                (
                    json!({"waiting": {"reason": reason, "message": message}}),
                    false,
                )
            }
        };
        main.push(json!({"name": c["name"], "image": c["image"], "imageID": "",
            "ready": started && !settings.held, "started": started, "restartCount": 0, "state": state}));
    }
    let ready = running && !settings.held;
    // Ready since: kept from the status before, or now.
    let was_ready = pod["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .filter(|c| c["status"] == "True")
        .map(|c| c["lastTransitionTime"].clone());
    let ready_since = match (&was_ready, ready) {
        (Some(t), true) => t.clone(),
        (None, true) => json!(now()),
        _ => since.clone(),
    };
    let available = ready && seconds_since(&ready_since) >= min_ready;
    let flag = if ready { "True" } else { "False" };
    let mut status = json!({
        "phase": if running { "Running" } else { "Pending" }, "hostIP": format!("10.0.0.{node}"),
        "podIP": ip, "podIPs": [{"ip": ip}], "startTime": since, "qosClass": "BestEffort",
        "conditions": [
            {"type": "Initialized", "status": if init_done { "True" } else { "False" }, "lastTransitionTime": since},
            {"type": "Ready", "status": flag, "lastTransitionTime": ready_since},
            {"type": "ContainersReady", "status": flag, "lastTransitionTime": ready_since},
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": since},
        ],
        "containerStatuses": main,
    });
    if !init.is_empty() {
        status["initContainerStatuses"] = init.into();
    }
    (status, Health { ready, available })
}

/// The kubelet's Events for containers that began waiting on a pull (`Failed`, then
/// `BackOff`), recorded once per reason on the Pod as `kubectl describe pod` shows them.
pub(super) fn record_pull_events(store: &mut Store, before: &Value) {
    let Some(pods) = builtin("pods") else {
        return;
    };
    let Some(after) = store.get(&Key::of(&pods, before)).cloned() else {
        return;
    };
    for field in ["initContainerStatuses", "containerStatuses"] {
        for c in after["status"][field].as_array().into_iter().flatten() {
            let reason = c["state"]["waiting"]["reason"].as_str().unwrap_or("");
            let was = before["status"][field]
                .as_array()
                .and_then(|a| a.iter().find(|b| b["name"] == c["name"]))
                .and_then(|b| b["state"]["waiting"]["reason"].as_str())
                .unwrap_or("");
            if reason == was {
                continue;
            }
            let image = c["image"].as_str().unwrap_or("");
            let message = c["state"]["waiting"]["message"].as_str().unwrap_or("");
            match reason {
                "ErrImagePull" => record_event(
                    store,
                    &after,
                    "Failed",
                    format!("Failed to pull image \"{image}\": {message}"),
                ),
                "ImagePullBackOff" => record_event(
                    store,
                    &after,
                    "BackOff",
                    format!("Back-off pulling image \"{image}\""),
                ),
                "InvalidImageName" => {
                    record_event(store, &after, "InspectFailed", message.to_string())
                }
                _ => {}
            }
        }
    }
}
