//! The defaults kube-apiserver fills into built-in workloads when it decodes them (its
//! `SetDefaults_*` functions), so what a client reads back — and what `kubectl diff` compares —
//! looks as it would on a cluster: a Deployment's strategy, revisionHistoryLimit and
//! progressDeadlineSeconds, a DaemonSet's updateStrategy, and in every pod template the restart
//! and DNS policies, scheduler, grace period, and per container the pull policy, termination
//! message settings and port protocol; a StatefulSet's update strategy, pod management and
//! retention policies; a Job's completions, parallelism and backoff limit and a
//! CronJob's policies and history limits; a Service's cluster IP and node ports.

use serde_json::{Value, json};

use super::resources::Resource;

fn default(object: &mut Value, field: &str, value: Value) {
    if object.get(field).is_none_or(Value::is_null)
        && let Some(map) = object.as_object_mut()
    {
        map.insert(field.to_string(), value);
    }
}

/// Removes `field` when it is `0` or `""`: a Go field that is no pointer has no "unset" but its
/// zero, which protobuf carries and `omitempty` JSON leaves out.
fn unset_zero(object: &mut Value, field: &str) {
    if let Some(map) = object.as_object_mut()
        && map
            .get(field)
            .is_some_and(|v| v.as_i64() == Some(0) || v.as_str() == Some(""))
    {
        map.remove(field);
    }
}

/// `Always` for `:latest` or untagged images, else `IfNotPresent` (kube-apiserver's rule).
fn pull_policy(image: &str) -> &'static str {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    match last.split_once(':') {
        _ if image.contains('@') => "IfNotPresent",
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn pod_spec(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    default(spec, "restartPolicy", json!("Always"));
    default(spec, "terminationGracePeriodSeconds", json!(30));
    default(spec, "dnsPolicy", json!("ClusterFirst"));
    default(spec, "securityContext", json!({}));
    default(spec, "schedulerName", json!("default-scheduler"));
    for list in ["initContainers", "containers"] {
        let containers = spec.get_mut(list).and_then(Value::as_array_mut);
        for c in containers.into_iter().flatten() {
            let image = c["image"].as_str().unwrap_or("").to_string();
            default(c, "imagePullPolicy", json!(pull_policy(&image)));
            default(c, "terminationMessagePath", json!("/dev/termination-log"));
            default(c, "terminationMessagePolicy", json!("File"));
            default(c, "resources", json!({}));
            let ports = c.get_mut("ports").and_then(Value::as_array_mut);
            for p in ports.into_iter().flatten() {
                default(p, "protocol", json!("TCP"));
            }
        }
    }
}

/// A Service's type, session affinity, an allocated cluster IP (from 10.96.0.0/16) and, for
/// NodePort and LoadBalancer Services, node ports (30000–32767), as kube-apiserver's allocators
/// give them.
fn service(spec: &mut Value) {
    default(spec, "type", json!("ClusterIP"));
    default(spec, "sessionAffinity", json!("None"));
    let kind = spec["type"].as_str().unwrap_or("ClusterIP").to_string();
    if kind != "ExternalName" {
        let ip = format!(
            "10.96.{}.{}",
            rand::random_range(0..=255u8),
            rand::random_range(1..=254u8)
        );
        default(spec, "clusterIP", json!(ip));
        let assigned = spec["clusterIP"].clone();
        default(spec, "clusterIPs", json!([assigned]));
        default(spec, "ipFamilies", json!(["IPv4"]));
        default(spec, "ipFamilyPolicy", json!("SingleStack"));
        default(spec, "internalTrafficPolicy", json!("Cluster"));
    }
    let node_ports = matches!(kind.as_str(), "NodePort" | "LoadBalancer");
    let ports = spec.get_mut("ports").and_then(Value::as_array_mut);
    for p in ports.into_iter().flatten() {
        default(p, "protocol", json!("TCP"));
        // Neither is a pointer in Go: a zero (as protobuf carries an unset one) is unset.
        unset_zero(p, "nodePort");
        unset_zero(p, "targetPort");
        let port = p["port"].clone();
        default(p, "targetPort", port);
        if node_ports {
            default(p, "nodePort", json!(rand::random_range(30000..=32767u16)));
        }
    }
    if node_ports {
        default(spec, "externalTrafficPolicy", json!("Cluster"));
    }
}

/// On an update that leaves them out, a Service keeps what was allocated to it (cluster IPs,
/// node ports by port number), as kube-apiserver's Service storage does.
pub fn keep_allocated(resource: &Resource, object: &mut Value, old: Option<&Value>) {
    let Some(old) = old.filter(|_| resource.group.is_empty() && resource.kind == "Service") else {
        return;
    };
    if !object["spec"].is_object() {
        return;
    }
    for field in ["clusterIP", "clusterIPs"] {
        if !old["spec"][field].is_null() {
            default(&mut object["spec"], field, old["spec"][field].clone());
        }
    }
    let old_ports = old["spec"]["ports"].as_array().cloned().unwrap_or_default();
    let ports = object["spec"]
        .get_mut("ports")
        .and_then(Value::as_array_mut);
    for p in ports.into_iter().flatten() {
        if let Some(node_port) = old_ports
            .iter()
            .find(|o| o["port"] == p["port"])
            .map(|o| o["nodePort"].clone())
            .filter(|n| !n.is_null())
        {
            default(p, "nodePort", node_port);
        }
    }
}

/// A strategy field defaulted to RollingUpdate with these limits (each part defaulted apart, as
/// `kubectl create deployment` sends an empty strategy).
fn rolling_update(spec: &mut Value, field: &str, max_unavailable: Value, max_surge: Value) {
    default(spec, field, json!({}));
    let strategy = &mut spec[field];
    default(strategy, "type", json!("RollingUpdate"));
    if strategy["type"] == "RollingUpdate" {
        default(strategy, "rollingUpdate", json!({}));
        let rolling = &mut strategy["rollingUpdate"];
        default(rolling, "maxUnavailable", max_unavailable);
        default(rolling, "maxSurge", max_surge);
    }
}

/// A Job's completions, parallelism, backoff limit and completion mode, and its pod template.
fn job(spec: &mut Value) {
    default(spec, "completions", json!(1));
    default(spec, "parallelism", json!(1));
    default(spec, "backoffLimit", json!(6));
    default(spec, "completionMode", json!("NonIndexed"));
    default(spec, "suspend", json!(false));
    if spec["template"]["spec"].is_object() {
        pod_spec(&mut spec["template"]["spec"]);
    }
}

/// Fills in the defaults of `object` (of `resource`) in place.
pub fn apply(resource: &Resource, object: &mut Value) {
    if !object.is_object() {
        return;
    }
    match (resource.group.as_str(), resource.kind.as_str()) {
        ("apps", "Deployment") => {
            let spec = &mut object["spec"];
            if !spec.is_object() {
                return;
            }
            default(spec, "replicas", json!(1));
            rolling_update(spec, "strategy", json!("25%"), json!("25%"));
            default(spec, "revisionHistoryLimit", json!(10));
            default(spec, "progressDeadlineSeconds", json!(600));
            pod_spec(&mut spec["template"]["spec"]);
        }
        ("apps", "DaemonSet") => {
            let spec = &mut object["spec"];
            if !spec.is_object() {
                return;
            }
            rolling_update(spec, "updateStrategy", json!(1), json!(0));
            default(spec, "revisionHistoryLimit", json!(10));
            pod_spec(&mut spec["template"]["spec"]);
        }
        ("apps", "ReplicaSet") if object["spec"].is_object() => {
            pod_spec(&mut object["spec"]["template"]["spec"]);
        }
        ("apps", "StatefulSet") if object["spec"].is_object() => {
            let spec = &mut object["spec"];
            default(spec, "replicas", json!(1));
            default(spec, "podManagementPolicy", json!("OrderedReady"));
            default(spec, "revisionHistoryLimit", json!(10));
            default(
                spec,
                "updateStrategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}),
            );
            default(
                spec,
                "persistentVolumeClaimRetentionPolicy",
                json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
            );
            pod_spec(&mut spec["template"]["spec"]);
        }
        ("batch", "Job") if object["spec"].is_object() => job(&mut object["spec"]),
        ("batch", "CronJob") if object["spec"].is_object() => {
            let spec = &mut object["spec"];
            default(spec, "concurrencyPolicy", json!("Allow"));
            default(spec, "suspend", json!(false));
            default(spec, "successfulJobsHistoryLimit", json!(3));
            default(spec, "failedJobsHistoryLimit", json!(1));
            if spec["jobTemplate"]["spec"].is_object() {
                job(&mut spec["jobTemplate"]["spec"]);
            }
        }
        ("", "Pod") => pod_spec(&mut object["spec"]),
        ("", "Service") if object["spec"].is_object() => service(&mut object["spec"]),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_policies_follow_the_tag() {
        assert_eq!(pull_policy("nginx"), "Always");
        assert_eq!(pull_policy("nginx:latest"), "Always");
        assert_eq!(pull_policy("nginx:1.25"), "IfNotPresent");
        assert_eq!(pull_policy("localhost:5000/nginx"), "Always");
        assert_eq!(pull_policy("nginx@sha256:abc"), "IfNotPresent");
    }
}
