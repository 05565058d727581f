//! The end-to-end scale benchmark (`testbed bench-scale`): Deployments and DaemonSets spread
//! over 50 namespaces referencing 100 distinct small images, with watcher, backup and rollout
//! running as processes; measures the seconds until every workload runs its backup, the copies
//! made (must equal the distinct images), Kubernetes API requests and NATS messages per workload,
//! the peak RSS and CPU seconds of each function, and the most workloads seen rolling out at
//! once (patched, not yet Ready; sampled every 250 ms) under the rollout's
//! `MAX_CONCURRENT_ROLLOUTS`. Workloads look as a real cluster holds them unless asked for bare
//! ones.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use kube::Api;
use kube::api::PostParams;
use serde_json::json;

use crate::cluster::Cluster;
use crate::image::{Format, ImageSpec};

/// The benchmark's shape.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Workloads (every fourth a DaemonSet).
    pub workloads: usize,
    /// Namespaces.
    pub namespaces: usize,
    /// Distinct images.
    pub images: usize,
    /// The rollout's `MAX_CONCURRENT_ROLLOUTS` (0: no limit).
    pub max_concurrent_rollouts: usize,
    /// Workloads as a real cluster holds them ([`realistic_workload`]) instead of one bare
    /// container each.
    pub realistic: bool,
    /// How the functions get their caches' initial state (`INITIAL_LIST`).
    pub initial_list: shared::initial_list::InitialList,
    /// Whether the test API server serves streaming lists (off: refused, as by kube-apiserver
    /// with its WatchList feature off).
    pub watch_list: bool,
}

impl Shape {
    /// The functions' `INITIAL_LIST`.
    fn told(&self) -> String {
        use clap::ValueEnum as _;
        self.initial_list
            .to_possible_value()
            .map(|v| v.get_name().to_string())
            .unwrap_or_default()
    }

    /// How the functions got their initial lists, for the table: what they were told, and
    /// whether the server refused streaming lists.
    fn lists(&self) -> String {
        if self.watch_list {
            self.told()
        } else {
            format!("{}, WatchList off", self.told())
        }
    }
}

/// A workload as clusters hold them: labels and annotations (Helm's among them), an app
/// container and a sidecar (another of the images) with ports, env, probes, resources and a
/// volume mount, a ConfigMap volume, a security context. About 2.5 KB of JSON before the API
/// server adds `managedFields` and a status.
pub fn realistic_workload(
    name: &str,
    namespace: &str,
    image: &str,
    sidecar: &str,
) -> serde_json::Value {
    let labels = json!({"app.kubernetes.io/name": name, "app.kubernetes.io/instance": name,
        "app.kubernetes.io/part-of": "shop", "app.kubernetes.io/managed-by": "Helm",
        "app.kubernetes.io/version": "1.4.2"});
    let probe = |path: &str| {
        json!({"httpGet": {"path": path, "port": "http"},
        "initialDelaySeconds": 5, "periodSeconds": 10, "timeoutSeconds": 2, "failureThreshold": 3})
    };
    let env: Vec<serde_json::Value> = [
        "LOG_LEVEL",
        "PORT",
        "REGION",
        "FEATURE_FLAGS",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .map(|k| json!({"name": k, "value": format!("value-of-{}", k.to_lowercase())}))
    .collect();
    json!({
        "metadata": {"name": name, "namespace": namespace, "labels": labels,
                     "annotations": {"meta.helm.sh/release-name": name, "meta.helm.sh/release-namespace": namespace,
                                     "deployment.kubernetes.io/revision": "1"}},
        "spec": {"selector": {"matchLabels": {"app.kubernetes.io/name": name, "app.kubernetes.io/instance": name}},
                 "template": {"metadata": {"labels": labels, "annotations": {"checksum/config": "4f1c2a7e9b0d3e6f8a1b2c3d4e5f60718293a4b5c6d7e8f9"}},
                              "spec": {"serviceAccountName": "default",
                                       "securityContext": {"runAsNonRoot": true, "runAsUser": 10001, "fsGroup": 10001},
                                       "volumes": [{"name": "config", "configMap": {"name": format!("{name}-config")}}],
                                       "containers": [
                                           {"name": "app", "image": image, "imagePullPolicy": "IfNotPresent",
                                            "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                                            "env": env, "readinessProbe": probe("/readyz"), "livenessProbe": probe("/healthz"),
                                            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}},
                                            "volumeMounts": [{"name": "config", "mountPath": "/etc/app", "readOnly": true}],
                                            "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                                                "capabilities": {"drop": ["ALL"]}}},
                                           {"name": "proxy", "image": sidecar,
                                            "ports": [{"name": "proxy", "containerPort": 15001}],
                                            "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}}}
                                       ]}}}
    })
}

/// The most intervals (closed) that hold at one instant.
fn peak_overlap(intervals: impl Iterator<Item = (Instant, Instant)>) -> usize {
    let mut edges: Vec<(Instant, i64)> = intervals
        .flat_map(|(start, end)| [(start, 1), (end, -1)])
        .collect();
    // At one instant, starts before ends: closed intervals that touch overlap.
    edges.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    let (mut now, mut peak) = (0i64, 0i64);
    for (_, delta) in edges {
        now += delta;
        peak = peak.max(now);
    }
    usize::try_from(peak).unwrap_or(0)
}

/// Whether a workload (JSON) runs its first container pinned by digest (rolled out).
fn pinned(o: &serde_json::Value) -> bool {
    o["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .is_some_and(|i| i.contains("@sha256:"))
}

/// What the benchmark knows of every workload, kept from the store's changes.
#[derive(Default)]
struct Follower {
    /// `d|s/namespace/name` → (rolled out, in flight), as last seen.
    state: std::collections::HashMap<String, (bool, bool)>,
    /// How many are rolled out.
    rolled_out: usize,
    /// Each workload's first and last moment seen in flight: the peak counts only moments
    /// that overlap, so it never counts two workloads together that were not in flight
    /// together.
    seen: std::collections::HashMap<String, (Instant, Instant)>,
}

impl Follower {
    /// Takes in one workload as it is now (`kind`: `d` or `s`), or its deletion.
    fn observe(&mut self, kind: &str, o: &serde_json::Value, deleted: bool, at: Instant) {
        let key = format!(
            "{kind}/{}/{}",
            o["metadata"]["namespace"].as_str().unwrap_or(""),
            o["metadata"]["name"].as_str().unwrap_or("")
        );
        let now = (!deleted && pinned(o), !deleted && in_flight(o));
        let before = if deleted {
            self.state.remove(&key)
        } else {
            self.state.insert(key.clone(), now)
        }
        .unwrap_or_default();
        self.rolled_out =
            (self.rolled_out + usize::from(now.0)).saturating_sub(usize::from(before.0));
        // In flight until the change that ends it.
        if now.1 || before.1 {
            self.seen.entry(key).or_insert((at, at)).1 = at;
        }
    }

    /// Takes in one change of the store (only workloads matter).
    fn follow(&mut self, change: &crate::apiserver::store::Change, at: Instant) {
        let kind = match change.storage_key.as_str() {
            "apps/deployments" => "d",
            "apps/daemonsets" => "s",
            _ => return,
        };
        let deleted = change.kind == crate::apiserver::store::ChangeType::Deleted;
        self.observe(kind, &change.object, deleted, at);
    }

    /// Reads every workload in place (at the start, and after falling behind the changes).
    fn read_all(&mut self, c: &Cluster, at: Instant) {
        for (plural, kind) in [("deployments", "d"), ("daemonsets", "s")] {
            c.api
                .inspect("apps", plural, |o| self.observe(kind, o, false, at));
        }
    }
}

/// Whether a workload (JSON) is patched to a digest and not yet Ready at its generation.
fn in_flight(o: &serde_json::Value) -> bool {
    let patched = pinned(o);
    let st = &o["status"];
    let generation = o["metadata"]["generation"].as_i64().unwrap_or(0);
    let observed = st["observedGeneration"].as_i64().unwrap_or(0) >= generation;
    let ready =
        if o["spec"]["updateStrategy"].is_object() || st.get("desiredNumberScheduled").is_some() {
            let want = st["desiredNumberScheduled"].as_i64().unwrap_or(0);
            st["updatedNumberScheduled"].as_i64() == Some(want)
                && st["numberAvailable"].as_i64() == Some(want)
        } else {
            let want = o["spec"]["replicas"].as_i64().unwrap_or(1);
            st["updatedReplicas"].as_i64() == Some(want)
                && st["availableReplicas"].as_i64() == Some(want)
                && st["replicas"].as_i64() == Some(want)
        };
    patched && !(observed && ready)
}

/// The ImageBackups that are Completed (read in place, like the workloads).
fn completed_copies(c: &Cluster) -> usize {
    let mut completed = 0;
    c.api.inspect("k8slab.io", "imagebackups", |o| {
        if o["status"]["phase"] == "Completed" {
            completed += 1;
        }
    });
    completed
}

/// Runs one size; returns a Markdown table row.
pub async fn run(shape: Shape) -> anyhow::Result<String> {
    let c = Cluster::start().await?;
    c.api.watch_list(shape.watch_list);
    // Statuses only: ReplicaSets and Pods would measure the simulation, not the functions
    // (the API server runs in this process, on the same two cores).
    c.api.simulate_pods(false);
    let pusher = c.source_pusher();
    eprintln!(
        "bench-scale: {} images, {} workloads",
        shape.images, shape.workloads
    );
    for i in 0..shape.images {
        pusher
            .push_image(
                &format!("scale/app{i}"),
                "1",
                &ImageSpec::single(Format::Oci, 1, 4096, 5000 + i as u64),
            )
            .await?;
    }
    for n in 0..shape.namespaces {
        c.namespace(&format!("ns-{n}")).await?;
    }
    let src = c.source.host();
    for i in 0..shape.workloads {
        let ns = format!("ns-{}", i % shape.namespaces);
        let image = |k: usize| format!("{src}/scale/app{}:1", k % shape.images);
        let spec = if shape.realistic {
            realistic_workload(&format!("w-{i}"), &ns, &image(i), &image(i + 1))
        } else {
            json!({
                "metadata": {"name": format!("w-{i}"), "namespace": ns},
                "spec": {"selector": {"matchLabels": {"app": "w"}},
                         "template": {"metadata": {"labels": {"app": "w"}},
                                      "spec": {"containers": [{"name": "main", "image": image(i)}]}}}
            })
        };
        if i % 4 == 3 {
            let ds: DaemonSet = serde_json::from_value(spec)?;
            Api::<DaemonSet>::namespaced(c.client.clone(), &ns)
                .create(&PostParams::default(), &ds)
                .await?;
        } else {
            let d: Deployment = serde_json::from_value(spec)?;
            Api::<Deployment>::namespaced(c.client.clone(), &ns)
                .create(&PostParams::default(), &d)
                .await?;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.api.reset_requests();
    c.api.reset_audit_log();
    let own_cpu = || crate::function::cpu_seconds_of(std::process::id()).unwrap_or(0.0);
    let own_cpu_before = own_cpu();
    let started = Instant::now();
    c.namespace("image-backup").await?;
    let quiet = [
        ("LOG_LEVEL", "warn".to_string()),
        ("INITIAL_LIST", shape.told()),
    ];
    // The three start together, as a cluster starts them.
    let mut watcher = c.start_function("watcher", &["run"], &quiet)?;
    let mut backup = c.start_function("backup", &["run"], &quiet)?;
    let rollout_env = [
        ("LOG_LEVEL", "warn".to_string()),
        ("INITIAL_LIST", shape.told()),
        ("POD_NAMESPACE", "image-backup".to_string()),
        (
            "MAX_CONCURRENT_ROLLOUTS",
            shape.max_concurrent_rollouts.to_string(),
        ),
    ];
    let mut rollout = c.start_function("rollout", &["run"], &rollout_env)?;
    // Ready means every cache listed: on two cores shared with the test API server, about
    // 100 s at 20,000 workloads; allowed 120 s, or 20 ms a workload.
    let ready_within = Duration::from_millis(120_000.max(20 * shape.workloads as u64));
    for p in [&mut watcher, &mut backup, &mut rollout] {
        p.wait_ready(ready_within).await?;
    }
    eprintln!(
        "bench-scale: all three ready (caches listed) at {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut rss = [0u64; 3];
    // Where the time goes (stderr, every 5 s): copies completed and workloads rolled out.
    let mut reported = Instant::now();
    let mut copies_done: Option<f64> = None;
    // The workloads are followed through the store's changes (subscribed before the one whole
    // read, so nothing falls between): reading 10,000 of them every few hundred milliseconds
    // held the store's lock for 65 ms each time, 7 of a run's 43 s, stalling every request.
    let mut changes = c
        .api
        .changes()
        .context("subscribing to the test API server's changes")?;
    let mut follower = Follower::default();
    follower.read_all(&c, Instant::now());
    // The time spent following.
    let (mut sampled, mut samples) = (Duration::ZERO, 0u32);
    loop {
        for (slot, p) in rss.iter_mut().zip([&watcher, &backup, &rollout]) {
            *slot = (*slot).max(p.peak_rss_kib().unwrap_or(0));
        }
        let at = Instant::now();
        loop {
            use tokio::sync::broadcast::error::TryRecvError;
            match changes.try_recv() {
                Ok(change) => follower.follow(&change, at),
                Err(TryRecvError::Empty) => break,
                // Fell behind the change broadcast: read everything again, then go on.
                Err(TryRecvError::Lagged(_)) => follower.read_all(&c, at),
                Err(TryRecvError::Closed) => bail!("the test API server stopped"),
            }
        }
        let done = follower.rolled_out;
        sampled += at.elapsed();
        samples += 1;
        if copies_done.is_none() || reported.elapsed() >= Duration::from_secs(5) {
            let completed = completed_copies(&c);
            if copies_done.is_none() && completed >= shape.images {
                copies_done = Some(started.elapsed().as_secs_f64());
            }
            if reported.elapsed() >= Duration::from_secs(5) {
                reported = Instant::now();
                eprintln!(
                    "bench-scale: {:>6.1} s: {completed} copies completed, {done} of {} rolled out",
                    started.elapsed().as_secs_f64(),
                    shape.workloads
                );
            }
        }
        if done == shape.workloads {
            break;
        }
        if Instant::now() > deadline {
            bail!("{done} of {} rolled out after 900 s", shape.workloads);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu: Vec<f64> = [&watcher, &backup, &rollout]
        .iter()
        .map(|p| p.cpu_seconds().unwrap_or(0.0))
        .collect();
    // This process: the test API server (and the benchmark, which follows its changes).
    eprintln!(
        "bench-scale: the test API server used {:.1} CPU seconds (following the workloads took {:.2} s in {samples} samples)",
        own_cpu() - own_cpu_before,
        sampled.as_secs_f64()
    );
    let peak_in_flight = peak_overlap(follower.seen.values().copied());
    for (slot, p) in rss.iter_mut().zip([&watcher, &backup, &rollout]) {
        *slot = (*slot).max(p.peak_rss_kib().unwrap_or(0));
    }
    let mut copies = 0;
    c.api.inspect("k8slab.io", "imagebackups", |_| copies += 1);
    // The sampler reads in place: every request logged is a function's.
    let requests = c.api.requests().len();
    if let Some(at) = copies_done {
        eprintln!(
            "bench-scale: all {} copies completed at {at:.1} s",
            shape.images
        );
    }
    // Where the requests go, and which were refused (failed guards, not found: work done for
    // nothing), by verb and resource as the test API server resolved them (its audit log).
    let mut by_kind: std::collections::BTreeMap<String, usize> = Default::default();
    let mut refused: std::collections::BTreeMap<String, usize> = Default::default();
    for e in c.api.audit_log() {
        let a = &e.attributes;
        let sub = if a.subresource.is_empty() {
            String::new()
        } else {
            format!("/{}", a.subresource)
        };
        let what = format!("{} {}{sub}", a.verb, a.resource);
        if e.code >= 400 {
            *refused.entry(format!("{what} {}", e.code)).or_default() += 1;
        }
        *by_kind.entry(what).or_default() += 1;
    }
    let mut by_kind: Vec<_> = by_kind.into_iter().collect();
    by_kind.sort_by_key(|k| std::cmp::Reverse(k.1));
    for (kind, n) in by_kind.iter().take(10) {
        eprintln!("bench-scale: {n:>7} {kind}");
    }
    for (what, n) in refused {
        eprintln!("bench-scale: refused {n:>7} {what}");
    }
    let mut stream = c.js.get_stream(shared::nats::STREAM_NAME).await?;
    let messages = stream.info().await?.state.messages;
    let per = |n: f64| n / shape.workloads as f64;
    let mib = |k: u64| k as f64 / 1024.0;
    let limit = match shape.max_concurrent_rollouts {
        0 => "none".to_string(),
        n => n.to_string(),
    };
    Ok(format!(
        "| {} | {} | {limit} | {} | {seconds:.1} | {peak_in_flight} | {copies} | {:.2} | {:.2} | {:.1} / {:.1} / {:.1} | {:.1} / {:.1} / {:.1} |\n",
        shape.workloads,
        shape.images,
        shape.lists(),
        per(requests as f64),
        per(messages as f64),
        mib(rss[0]),
        mib(rss[1]),
        mib(rss[2]),
        cpu[0],
        cpu[1],
        cpu[2],
    ))
}
