//! Workload simulation, as kube-controller-manager and healthy kubelets would make a cluster
//! behave, shortly after each spec change:
//!
//! - A Deployment owns one ReplicaSet per pod template, named `<deployment>-<pod-template-hash>`
//!   and labelled with the hash; the ReplicaSet of the current template carries the next
//!   `deployment.kubernetes.io/revision` (a template seen before, as after `kubectl rollout undo`,
//!   gets its ReplicaSet back with a new revision), the others are scaled to 0 and kept up to
//!   `revisionHistoryLimit` (10). The Deployment's revision annotation follows. A new template
//!   rolls out in steps, one per delay: the new ReplicaSet up within `maxSurge`, the old ones
//!   down within `maxUnavailable` (Recreate: at once), with the status in between
//!   (`updatedReplicas` below `replicas`, Progressing `ReplicaSetUpdated`).
//! - A ReplicaSet owns `spec.replicas` Pods; a DaemonSet one Pod per simulated node, replaced
//!   `maxUnavailable` nodes per step when its template changes. Pods are Running on `node-<n>`
//!   with an IP and a status per container; so is a Pod nobody owns (`kubectl run`), bound to a
//!   node by the simulated scheduler.
//! - A StatefulSet owns Pods `<name>-<ordinal>` (replaced when its template changes).
//! - A Job completes (status only: no Pods run), unless suspended or held.
//! - Statuses: observedGeneration, replica counts and the Available/Progressing conditions of a
//!   Deployment; desired/current/ready counts of a DaemonSet and a ReplicaSet.
//!
//! A workload can be held not-ready (by the test API or the annotation
//! `testbed.k8slab.io/hold-not-ready: "true"`): its Pods run but are not Ready and its status
//! shows no ready replicas. Owned objects go with their owner (the store's garbage collector).

use std::sync::Arc;

use serde_json::{Value, json};
use sha2::Digest as _;

use super::kubelet::{self, Verdict, Verdicts};
use super::resources::{self, Resource};
use super::store::{Key, Store};
use super::{ApiState, Simulation};

const HOLD_ANNOTATION: &str = "testbed.k8slab.io/hold-not-ready";
const REVISION: &str = "deployment.kubernetes.io/revision";
const TEMPLATE_HASH: &str = "pod-template-hash";
const REVISION_HASH: &str = "controller-revision-hash";

/// After a write to a workload: if its status lags its generation, settle it after the delay.
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
        settle(&state, &resource, &key).await;
    });
}

/// Runs `settle` on the stored object of `key` after the simulation's delay, as a controller
/// reacts a moment after a write (nothing when the simulation is off or the object is gone).
fn later(
    state: &Arc<ApiState>,
    sim: Simulation,
    key: Key,
    settle: impl FnOnce(&mut Store, Value, &Simulation) + Send + 'static,
) {
    let state = state.clone();
    tokio::spawn(async move {
        tokio::time::sleep(sim.delay).await;
        let Ok(mut store) = state.store.lock() else {
            return;
        };
        if let Some(object) = store.get(&key).cloned() {
            settle(&mut store, object, &sim);
        }
    });
}

/// After a Pod nobody owns is written (`kubectl run`): the scheduler binds it to a node and the
/// kubelet runs it, after the delay.
pub(crate) fn schedule_pod(state: &Arc<ApiState>, pod: &Value) {
    let sim = match state.simulation.lock() {
        Ok(s) => s.clone(),
        Err(_) => return,
    };
    let owned = pod["metadata"]["ownerReferences"]
        .as_array()
        .is_some_and(|o| !o.is_empty());
    if !sim.enabled || !sim.pods || owned || !pod["status"]["phase"].is_null() {
        return;
    }
    let Some(resource) = builtin("pods") else {
        return;
    };
    let key = Key::of(&resource, pod);
    let state = state.clone();
    tokio::spawn(async move {
        tokio::time::sleep(sim.delay).await;
        let spec = match state.store.lock() {
            Ok(store) => match store.get(&key) {
                Some(pod) => pod["spec"].clone(),
                None => return,
            },
            Err(_) => return,
        };
        let pulls = state
            .kubelet
            .verdicts(&state.store, &key.namespace, &[spec])
            .await;
        let Ok(mut store) = state.store.lock() else {
            return;
        };
        let Some(mut pod) = store.get(&key).cloned() else {
            return;
        };
        if !pod["status"]["phase"].is_null() || pod["metadata"].get("deletionTimestamp").is_some() {
            return;
        }
        if pod["spec"]["nodeName"].as_str().is_none_or(str::is_empty) {
            let digest = sha2::Sha256::digest(key.name.as_bytes());
            let nodes = u8::try_from(sim.nodes.clamp(1, 250)).unwrap_or(1);
            pod["spec"]["nodeName"] = format!("node-{}", digest[0] % nodes + 1).into();
            match store.update(&resource, &key, pod.clone(), false) {
                Ok(updated) => pod = updated,
                Err(_) => return,
            }
        }
        let settings = Settings {
            held: pod["metadata"]["annotations"][HOLD_ANNOTATION].as_str() == Some("true"),
            nodes: sim.nodes,
            pods: true,
            pulls,
        };
        let (status, _) = pod_status(&store, &pod, &settings, 0);
        write_status(&mut store, &resource, &key, status);
        record_pull_events(&mut store, &pod);
    });
}

/// After a Job is written: it runs and completes (`completions` succeeded), after the delay,
/// unless it is suspended or held (then it stays active).
pub(crate) fn schedule_job(state: &Arc<ApiState>, job: &Value) {
    let sim = match state.simulation.lock() {
        Ok(s) => s.clone(),
        Err(_) => return,
    };
    if !sim.enabled || !job["status"]["completionTime"].is_null() {
        return;
    }
    let Some(resource) = resources::find_builtin("batch", "jobs") else {
        return;
    };
    let key = Key::of(&resource, job);
    later(state, sim, key.clone(), move |store, job, _| {
        if !job["status"]["completionTime"].is_null() || job["spec"]["suspend"] == true {
            return;
        }
        let started = job["metadata"]["creationTimestamp"].clone();
        let held = job["metadata"]["annotations"][HOLD_ANNOTATION].as_str() == Some("true");
        let status = if held {
            json!({"startTime": started, "active": job["spec"]["parallelism"].as_i64().unwrap_or(1), "ready": 0, "terminating": 0})
        } else {
            let now = now();
            json!({
                "startTime": started, "completionTime": now, "ready": 0, "terminating": 0,
                "succeeded": job["spec"]["completions"].as_i64().unwrap_or(1),
                "conditions": [
                    {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached", "message": "Reached expected number of succeeded pods", "lastProbeTime": now, "lastTransitionTime": now},
                    {"type": "Complete", "status": "True", "reason": "CompletionsReached", "message": "Reached expected number of succeeded pods", "lastProbeTime": now, "lastTransitionTime": now},
                ],
            })
        };
        write_status(store, &resource, &key, status);
    });
}

/// Re-settles every workload (after a release).
pub(crate) fn reconcile_all(state: &Arc<ApiState>) {
    for plural in ["deployments", "daemonsets", "statefulsets", "replicasets"] {
        let Some(resource) = builtin(plural) else {
            continue;
        };
        let objects = state
            .store
            .lock()
            .map(|s| s.list(&resource.storage_key(), None))
            .unwrap_or_default();
        for o in objects {
            if plural == "replicasets" && controller_of(&o).is_some() {
                continue; // settled with its Deployment
            }
            let key = Key::of(&resource, &o);
            let (state, resource) = (state.clone(), resource.clone());
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { settle(&state, &resource, &key).await });
            }
        }
    }
}

fn builtin(plural: &str) -> Option<Resource> {
    let group = if plural == "pods" { "" } else { "apps" };
    resources::find_builtin(group, plural)
}

/// What the simulation needs to know of its settings for one workload.
struct Settings {
    held: bool,
    nodes: i64,
    pods: bool,
    /// The kubelet's pull results for the templates of this settle (`None`: pulls are not
    /// simulated, every image runs).
    pulls: Option<Verdicts>,
}

/// The pod templates one settle of `key` may run Pods of (its own, and for a Deployment its
/// ReplicaSets'), for the kubelet to pull before the store is locked.
fn pod_specs(state: &ApiState, resource: &Resource, key: &Key) -> Vec<Value> {
    let Ok(store) = state.store.lock() else {
        return Vec::new();
    };
    let Some(object) = store.get(key) else {
        return Vec::new();
    };
    let mut specs = vec![object["spec"]["template"]["spec"].clone()];
    if resource.plural == "deployments"
        && let Some(uid) = object["metadata"]["uid"].as_str()
    {
        specs.extend(
            owned(&store, "apps/replicasets", &key.namespace, uid)
                .iter()
                .map(|rs| rs["spec"]["template"]["spec"].clone()),
        );
    }
    specs
}

/// Settles `key` one step at a time until it no longer rolls: a rolling update goes on in
/// steps, one per delay, as the controller waits for new Pods.
async fn settle(state: &Arc<ApiState>, resource: &Resource, key: &Key) {
    loop {
        let sim = match state.simulation.lock() {
            Ok(s) => s.clone(),
            Err(_) => return,
        };
        if !sim.enabled {
            return;
        }
        // The kubelet pulls (registry round trips) before the store is locked.
        let specs = pod_specs(state, resource, key);
        let pulls = state
            .kubelet
            .verdicts(&state.store, &key.namespace, &specs)
            .await;
        if !settle_step(state, &sim, resource, key, pulls) {
            return;
        }
        tokio::time::sleep(sim.delay).await;
    }
}

/// One step of the controllers for `key`, under the store's lock; `true` while it rolls.
fn settle_step(
    state: &ApiState,
    sim: &Simulation,
    resource: &Resource,
    key: &Key,
    pulls: Option<Verdicts>,
) -> bool {
    let Ok(mut store) = state.store.lock() else {
        return false;
    };
    let Some(object) = store.get(key).cloned() else {
        return false;
    };
    if object["metadata"].get("deletionTimestamp").is_some() {
        return false;
    }
    let settings = Settings {
        held: sim
            .held
            .contains(&format!("{}/{}", key.namespace, key.name))
            || object["metadata"]["annotations"][HOLD_ANNOTATION].as_str() == Some("true"),
        nodes: sim.nodes,
        pods: sim.pods,
        pulls,
    };
    match resource.plural.as_str() {
        "deployments" => settle_deployment(&mut store, resource, key, object, &settings),
        "daemonsets" => settle_daemonset(&mut store, resource, key, object, &settings),
        "statefulsets" => {
            settle_statefulset(&mut store, resource, key, object, &settings);
            false
        }
        "replicasets" => {
            settle_replicaset(&mut store, key, &settings);
            false
        }
        _ => false,
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// kube-controller-manager's hash of a pod template, encoded with its safe alphabet.
pub fn template_hash(template: &Value) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let digest = sha2::Sha256::digest(serde_json::to_vec(template).unwrap_or_default());
    let n = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
    n.to_string()
        .bytes()
        .map(|b| ALPHABET[usize::from(b) % ALPHABET.len()] as char)
        .collect()
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// The uid of an object's controller (the owner reference with `controller: true`).
fn controller_of(object: &Value) -> Option<&str> {
    object["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|r| r["controller"].as_bool() == Some(true))
        .and_then(|r| r["uid"].as_str())
}

fn owner_reference(owner: &Value) -> Value {
    json!({
        "apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true,
    })
}

/// Objects of `storage_key` in `namespace` controlled by `uid` and not being deleted.
fn owned(store: &Store, storage_key: &str, namespace: &str, uid: &str) -> Vec<Value> {
    store
        .list(storage_key, Some(namespace))
        .into_iter()
        .filter(|o| {
            controller_of(o) == Some(uid) && o["metadata"].get("deletionTimestamp").is_none()
        })
        .collect()
}

fn revision(object: &Value) -> i64 {
    object["metadata"]["annotations"][REVISION]
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// A ReplicaSet's template without the hash label, to compare with a Deployment's template.
fn without_hash(template: &Value) -> Value {
    let mut t = template.clone();
    if let Some(labels) = t["metadata"]["labels"].as_object_mut() {
        labels.remove(TEMPLATE_HASH);
        if labels.is_empty()
            && let Some(meta) = t["metadata"].as_object_mut()
        {
            meta.remove("labels");
        }
    }
    if t["metadata"].as_object().is_some_and(|m| m.is_empty())
        && let Some(m) = t.as_object_mut()
    {
        m.remove("metadata");
    }
    t
}

/// A template as compared and hashed: without the hash label, nulls and empty values (a client
/// that round-trips a template through typed structs adds `creationTimestamp: null`,
/// `resources: {}`), as kube-controller-manager compares templates semantically.
fn normalized(template: &Value) -> Value {
    fn prune(v: &Value) -> Option<Value> {
        match v {
            Value::Null => None,
            Value::Object(m) => {
                let m: serde_json::Map<String, Value> = m
                    .iter()
                    .filter_map(|(k, v)| prune(v).map(|v| (k.clone(), v)))
                    .collect();
                (!m.is_empty()).then_some(Value::Object(m))
            }
            Value::Array(a) if a.is_empty() => None,
            Value::Array(a) => Some(Value::Array(
                a.iter().map(|v| prune(v).unwrap_or(json!({}))).collect(),
            )),
            other => Some(other.clone()),
        }
    }
    prune(&without_hash(template)).unwrap_or(json!({}))
}

/// Records a core Event about `object`, as the controllers do (`kubectl describe` shows them).
fn record_event(store: &mut Store, object: &Value, reason: &str, message: String) {
    let Some(events) = resources::find_builtin("", "events") else {
        return;
    };
    let meta = &object["metadata"];
    let namespace = meta["namespace"].as_str().unwrap_or("default");
    let name = format!(
        "{}.{:x}",
        meta["name"].as_str().unwrap_or("object"),
        rand::random::<u64>()
    );
    let now = now();
    // Pods the simulation creates carry no kind in the store.
    let pod = object["spec"]["containers"].is_array();
    let kind = object["kind"]
        .as_str()
        .unwrap_or(if pod { "Pod" } else { "" });
    let component = match kind {
        "Deployment" => "deployment-controller",
        "DaemonSet" => "daemonset-controller",
        "StatefulSet" => "statefulset-controller",
        _ if pod => "kubelet",
        _ => "replicaset-controller",
    };
    let type_ = if matches!(reason, "Failed" | "BackOff" | "InspectFailed") {
        "Warning"
    } else {
        "Normal"
    };
    let event = json!({
        "metadata": {"name": name, "namespace": namespace},
        "involvedObject": {"apiVersion": object["apiVersion"].as_str().unwrap_or("v1"), "kind": object["kind"].as_str().unwrap_or(kind), "name": meta["name"],
                           "namespace": namespace, "uid": meta["uid"], "resourceVersion": meta["resourceVersion"]},
        "reason": reason, "message": message, "type": type_, "count": 1,
        "source": {"component": component}, "reportingComponent": component, "reportingInstance": "",
        "firstTimestamp": now, "lastTimestamp": now,
    });
    let _ = store.create(&events, Key::new(&events, namespace, &name), event);
}

/// Writes a status through the status path, skipping writes that change nothing but times.
fn write_status(store: &mut Store, resource: &Resource, key: &Key, status: Value) {
    let Some(mut object) = store.get(key).cloned() else {
        return;
    };
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(c) = v["conditions"].as_array_mut() {
            for c in c {
                if let Some(m) = c.as_object_mut() {
                    m.remove("lastUpdateTime");
                    m.remove("lastTransitionTime");
                    m.remove("lastProbeTime");
                }
            }
        }
        v
    };
    if strip(&object["status"]) == strip(&status) {
        return;
    }
    object["status"] = status;
    let _ = store.update(resource, key, object, true);
}

/// Settles a Deployment one step; `true` while its rolling update goes on.
fn settle_deployment(
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
struct Progress {
    /// Pods of all its ReplicaSets.
    total: i64,
    /// Pods of the current template.
    updated: i64,
    /// Ready Pods of all its ReplicaSets.
    ready: i64,
    /// Available Pods of all its ReplicaSets.
    available: i64,
    /// Whether the current ReplicaSet has them all and the old ones none.
    done: bool,
}

/// A `maxSurge`/`maxUnavailable` value for `want` replicas: a count, or a percentage rounded
/// up (surge) or down (unavailable) as the Deployment controller rounds them.
fn resolve(value: &Value, want: i64, round_up: bool) -> i64 {
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
fn rollout_step(
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
fn scale_replicaset(
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
fn settle_replicasets(
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
fn settle_replicaset(store: &mut Store, key: &Key, settings: &Settings) -> Option<Counts> {
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

/// The DaemonSet controller and the kubelets, one step: a Pod per node; a new template replaces
/// `maxUnavailable` (1) nodes' Pods per step (RollingUpdate; OnDelete replaces none, a held
/// DaemonSet all at once). `true` while Pods of an older template remain.
fn settle_daemonset(
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

/// The StatefulSet controller and the kubelets: Pods `<name>-0` … `<name>-<replicas-1>`, each
/// with its ordinal's identity (`statefulset.kubernetes.io/pod-name`, the revision hash), a
/// Pod of an older template replaced, extra ordinals removed; the status with both revisions.
fn settle_statefulset(
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

/// Whether a Pod's stored status shows it Ready.
fn is_ready(pod: &Value) -> bool {
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
fn reconcile_pods(
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

fn create_pod(
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
struct Health {
    /// Every container runs and the Pod is Ready.
    ready: bool,
    /// Ready for at least its owner's `minReadySeconds`.
    available: bool,
}

/// Counts of Pods by health.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    total: i64,
    ready: i64,
    available: i64,
}

impl Counts {
    fn add(&mut self, h: Health) {
        self.total += 1;
        self.ready += i64::from(h.ready);
        self.available += i64::from(h.available);
    }

    fn plus(self, o: Counts) -> Counts {
        Counts {
            total: self.total + o.total,
            ready: self.ready + o.ready,
            available: self.available + o.available,
        }
    }
}

/// The state of one container as the kubelet reports it: running (or, for an init container,
/// completed), or waiting with kube's reason while its image cannot be pulled.
fn container_state(
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

fn seconds_since(time: &Value) -> i64 {
    time.as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map_or(i64::MAX, |t| {
            (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds()
        })
}

/// A Pod's status as its kubelet reports it: Running and Ready once every image is pulled
/// (Ready unless held), Pending with waiting containers otherwise; conditions, IPs and one
/// status per container. Available once Ready for `min_ready` seconds.
fn pod_status(store: &Store, pod: &Value, settings: &Settings, min_ready: i64) -> (Value, Health) {
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
fn record_pull_events(store: &mut Store, before: &Value) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_hashes_are_stable_and_safe() {
        let t = json!({"spec": {"containers": [{"name": "a", "image": "nginx"}]}});
        let h = template_hash(&t);
        assert_eq!(h, template_hash(&t.clone()));
        assert!(h.len() >= 5 && h.chars().all(|c| c.is_ascii_alphanumeric()));
        let other = json!({"spec": {"containers": [{"name": "a", "image": "nginx:2"}]}});
        assert_ne!(h, template_hash(&other));
    }

    #[test]
    fn a_rolling_update_keeps_within_surge_and_unavailability_and_finishes() {
        for (want, surge, unavailable) in [
            (3, json!("25%"), json!("25%")),
            (10, json!("25%"), json!("25%")),
            (4, json!(0), json!(1)),
            (5, json!(2), json!(0)),
            (1, json!("25%"), json!("25%")),
        ] {
            let d = json!({"spec": {"strategy": {"type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}}}});
            let max_surge = resolve(&surge, want, true);
            let max_unavailable = resolve(&unavailable, want, false).max(i64::from(max_surge == 0));
            let (mut new, mut old) = (0, vec![want]);
            let mut steps = 0;
            while !(new == want && old.iter().all(|o| *o == 0)) {
                let (n, o) = rollout_step(&d, want, new, new, &old, false);
                assert!(
                    n + o.iter().sum::<i64>() <= want + max_surge,
                    "{want} {surge}: surge exceeded"
                );
                assert!(n >= new, "the new ReplicaSet never shrinks");
                let kept_available = new.min(n) + o.iter().sum::<i64>();
                assert!(
                    kept_available >= want - max_unavailable,
                    "{want} {surge} {unavailable}: too few available"
                );
                (new, old) = (n, o);
                steps += 1;
                assert!(
                    steps <= 4 * want + 4,
                    "{want} {surge} {unavailable}: no end"
                );
            }
            assert!(steps > 1 || want == 1, "{want}: stepped, not at once");
        }
        // Recreate and a held workload: one step.
        let recreate = json!({"spec": {"strategy": {"type": "Recreate"}}});
        assert_eq!(rollout_step(&recreate, 3, 0, 0, &[3], false), (3, vec![0]));
        let rolling = json!({"spec": {"strategy": {"type": "RollingUpdate"}}});
        assert_eq!(rollout_step(&rolling, 3, 0, 0, &[3], true), (3, vec![0]));
        // New Pods that never become available: the old ones stay.
        let one = json!({"spec": {"strategy": {"type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}}});
        assert_eq!(rollout_step(&one, 1, 1, 0, &[1], false), (1, vec![1]));
    }

    #[test]
    fn a_daemonset_replaces_one_node_at_a_time() {
        let mut store = Store::default();
        let ds_resource = builtin("daemonsets").expect("daemonsets");
        let pods_resource = builtin("pods").expect("pods");
        let ns = resources::find_builtin("", "namespaces").expect("namespaces");
        store
            .create(
                &ns,
                Key::new(&ns, "", "default"),
                json!({"metadata": {"name": "default"}}),
            )
            .expect("namespace");
        let template = |image: &str| json!({"metadata": {"labels": {"app": "agent"}}, "spec": {"containers": [{"name": "a", "image": image}]}});
        let key = Key::new(&ds_resource, "default", "agent");
        let ds = store
            .create(&ds_resource, key.clone(), json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
                "metadata": {"name": "agent", "namespace": "default"},
                "spec": {"selector": {"matchLabels": {"app": "agent"}}, "template": template("agent:1"),
                         "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}}}))
            .expect("daemonset");
        let settings = Settings {
            held: false,
            nodes: 3,
            pods: true,
            pulls: None,
        };
        assert!(!settle_daemonset(
            &mut store,
            &ds_resource,
            &key,
            ds.clone(),
            &settings
        ));
        let images = |store: &Store| {
            let mut images: Vec<String> = store
                .list(&pods_resource.storage_key(), Some("default"))
                .iter()
                .filter_map(|p| {
                    p["spec"]["containers"][0]["image"]
                        .as_str()
                        .map(str::to_string)
                })
                .collect();
            images.sort();
            images
        };
        assert_eq!(images(&store), ["agent:1", "agent:1", "agent:1"]);
        let mut updated = store.get(&key).cloned().expect("stored");
        updated["spec"]["template"] = template("agent:2");
        let updated = store
            .update(&ds_resource, &key, updated, false)
            .expect("update");
        let mut steps = 0;
        while settle_daemonset(&mut store, &ds_resource, &key, updated.clone(), &settings) {
            steps += 1;
            let new = images(&store).iter().filter(|i| *i == "agent:2").count();
            assert_eq!(new, steps, "one node per step");
            assert!(steps < 10);
        }
        assert_eq!(images(&store), ["agent:2", "agent:2", "agent:2"]);
        assert_eq!(steps, 2, "the third step finishes it");
    }

    #[test]
    fn the_hash_label_is_ignored_when_templates_are_compared() {
        let t = json!({"metadata": {"labels": {"app": "a"}}, "spec": {}});
        let mut rs = t.clone();
        rs["metadata"]["labels"][TEMPLATE_HASH] = "abc".into();
        assert_eq!(normalized(&rs), normalized(&t));
    }
}
