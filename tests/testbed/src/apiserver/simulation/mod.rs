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

mod daemonset;
mod deployment;
mod pods;
mod statefulset;

use daemonset::*;
use deployment::*;
use pods::*;
use statefulset::*;

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
