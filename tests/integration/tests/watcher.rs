//! `watcher run` as a process against the test API server and a real nats-server: what it
//! publishes, what it leaves alone, and that restarts, replicas, outages and re-lists neither
//! lose nor duplicate a change in the stream.
//!
//! "Nothing was published" is proven with a marker: after the change that must publish nothing,
//! a marker workload is changed, and once its event is stored the earlier change had its turn.

use std::time::Duration;

use async_nats::jetstream;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use shared::events::{Payload, WorkloadChanged};
use testbed::function::FunctionProcess;
use testbed::{ApiServer, NatsServer};

const BACKUP: &str = "localhost:5000/backup";
/// The bound on anything the tests wait for (a hang, not a timing goal).
const LIMIT: Duration = Duration::from_secs(30);

struct Bed {
    api: ApiServer,
    nats: NatsServer,
    client: kube::Client,
    js: jetstream::Context,
    kubeconfig: tempfile::NamedTempFile,
}

async fn bed() -> Bed {
    let api = ApiServer::start().await.expect("api server");
    let nats = NatsServer::start().await.expect("nats");
    let client = api.client().expect("client");
    let kubeconfig = tempfile::NamedTempFile::new().expect("tmp");
    api.write_kubeconfig(kubeconfig.path()).expect("kubeconfig");
    let nc = shared::nats::connect(&nats.url(), "test")
        .await
        .expect("nats");
    let js = jetstream::new(nc);
    shared::nats::ensure_stream(&js).await.expect("stream");
    Bed {
        api,
        nats,
        client,
        js,
        kubeconfig,
    }
}

impl Bed {
    fn watcher(&self, extra: &[&str]) -> FunctionProcess {
        let mut args = vec!["run".to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        FunctionProcess::spawn(
            "watcher",
            &args,
            &[
                ("KUBECONFIG", self.kubeconfig.path().display().to_string()),
                ("NATS_URL", self.nats.url()),
                ("BACKUP_REGISTRY", BACKUP.to_string()),
                ("LOG_LEVEL", "info,kube=warn".to_string()),
            ],
        )
        .expect("spawn watcher")
    }

    async fn namespace(&self, name: &str, annotations: serde_json::Value) {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": name, "annotations": annotations}}))
                .unwrap();
        match api.create(&PostParams::default(), &ns).await {
            Ok(_) => {}
            // The test API server starts with the usual namespaces (default, kube-system).
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => panic!("namespace {name}: {e}"),
        }
    }

    async fn deploy(
        &self,
        ns: &str,
        name: &str,
        spec: serde_json::Value,
        annotations: serde_json::Value,
    ) {
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), ns);
        let mut template_spec = spec;
        if template_spec.get("containers").is_none() {
            template_spec["containers"] = json!([{"name": "main", "image": "nginx:1.14.0"}]);
        }
        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns, "annotations": annotations},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}}, "spec": template_spec}}
        }))
        .unwrap();
        api.create(&PostParams::default(), &d)
            .await
            .expect("deployment");
    }

    async fn set_image(&self, ns: &str, name: &str, image: &str) {
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), ns);
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "main", "image": image}]}}}});
        api.patch(name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
            .expect("patch image");
    }

    async fn scale(&self, ns: &str, name: &str, replicas: i32) {
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), ns);
        let patch = json!({"spec": {"replicas": replicas}});
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("scale");
    }

    /// Every `workload.changed` stored, in order.
    async fn changes(&self) -> Vec<WorkloadChanged> {
        testbed::stream::stored(&self.js)
            .await
            .expect("every stored message decodes")
            .into_iter()
            .filter_map(|(_, p)| match p {
                Payload::WorkloadChanged(c) => Some(c),
                _ => None,
            })
            .collect()
    }

    /// The changes stored for workload `name`.
    async fn changes_of(&self, name: &str) -> Vec<WorkloadChanged> {
        self.changes()
            .await
            .into_iter()
            .filter(|c| c.workload.name == name)
            .collect()
    }

    /// Waits until `name` has `n` stored changes (and returns them).
    async fn wait_changes(
        &self,
        name: &str,
        n: usize,
        watchers: &[&FunctionProcess],
    ) -> Vec<WorkloadChanged> {
        let deadline = tokio::time::Instant::now() + LIMIT;
        loop {
            let got = self.changes_of(name).await;
            if got.len() >= n {
                return got;
            }
            if tokio::time::Instant::now() > deadline {
                let logs: Vec<String> = watchers.iter().map(|w| w.log()).collect();
                panic!(
                    "{name}: {} of {n} changes stored; logs:\n{}",
                    got.len(),
                    logs.join("\n---\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Changes the marker workload to a new image and waits for its event: everything changed
    /// before it has been handled by then.
    async fn barrier(&self, step: usize, watchers: &[&FunctionProcess]) {
        if step == 1 {
            self.namespace("marker", json!({})).await;
            self.deploy(
                "marker",
                "marker",
                json!({"containers": [{"name": "main", "image": "marker:1"}]}),
                json!({}),
            )
            .await;
        } else {
            self.set_image("marker", "marker", &format!("marker:{step}"))
                .await;
        }
        self.wait_changes("marker", step, watchers).await;
    }
}

#[tokio::test]
async fn publishes_each_image_change_of_ready_workloads_once_and_leaves_the_rest_alone() {
    let bed = bed().await;
    // The ServiceAccount exists before the watcher starts, so its initial list has it (created
    // later, it would reach the watcher through its own watch, in any order with the
    // Deployment's events, and the workload would be published again with the new secret).
    bed.namespace("web", json!({})).await;
    let sa: ServiceAccount = serde_json::from_value(json!({
        "metadata": {"name": "builder", "namespace": "web"},
        "imagePullSecrets": [{"name": "quay-creds"}]
    }))
    .unwrap();
    Api::<ServiceAccount>::namespaced(bed.client.clone(), "web")
        .create(&PostParams::default(), &sa)
        .await
        .expect("sa");
    bed.api.set_latency(Duration::from_millis(300));
    let mut watcher = bed.watcher(&[]);
    // Readiness is earned: the initial lists take a while at this latency.
    let early = loop {
        if let Some(answer) = watcher.admin_get("/readyz").await {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(early.0, 503, "ready before the caches synced");
    watcher.wait_ready(LIMIT).await.expect("ready");
    bed.api.set_latency(Duration::ZERO);

    bed.deploy(
        "web",
        "nginx",
        json!({
            "serviceAccountName": "builder",
            "imagePullSecrets": [{"name": "hub-creds"}],
            "initContainers": [{"name": "init", "image": "busybox:1.36"}],
            "containers": [{"name": "main", "image": "nginx:1.14.0"},
                           {"name": "backed", "image": "localhost:5000/backup/library_redis:7"}]
        }),
        json!({}),
    )
    .await;
    let first = bed.wait_changes("nginx", 1, &[&watcher]).await;
    let c = &first[0];
    assert_eq!(c.workload.namespace, "web");
    assert!(!c.uid.is_empty());
    let images: Vec<_> = c
        .images
        .iter()
        .map(|i| {
            (
                i.container.as_str(),
                i.init,
                i.source.as_str(),
                i.target.as_str(),
            )
        })
        .collect();
    assert_eq!(
        images,
        [
            (
                "init",
                true,
                "docker.io/library/busybox:1.36",
                "localhost:5000/backup/library_busybox:1.36"
            ),
            (
                "main",
                false,
                "docker.io/library/nginx:1.14.0",
                "localhost:5000/backup/library_nginx:1.14.0"
            ),
        ]
    );
    assert_eq!(c.pull_secrets, ["hub-creds", "quay-creds"]);

    // A replicas change publishes nothing; an image change publishes once.
    bed.scale("web", "nginx", 3).await;
    bed.barrier(1, &[&watcher]).await;
    assert_eq!(bed.changes_of("nginx").await.len(), 1);
    bed.set_image("web", "nginx", "nginx:1.15.0").await;
    let second = bed.wait_changes("nginx", 2, &[&watcher]).await;
    assert_eq!(second[1].images[1].source, "docker.io/library/nginx:1.15.0");

    // Left alone: an excluded namespace, opted-out workloads and namespaces, workloads whose
    // images are all backups. Held not Ready: published only once Ready.
    bed.namespace("kube-system", json!({})).await;
    bed.namespace("quiet", json!({"k8slab.io/image-backup": "disabled"}))
        .await;
    bed.deploy("kube-system", "sys", json!({}), json!({})).await;
    bed.deploy("quiet", "q", json!({}), json!({})).await;
    bed.deploy(
        "web",
        "optout",
        json!({}),
        json!({"k8slab.io/image-backup": "disabled"}),
    )
    .await;
    bed.deploy("web", "done", json!({"containers": [{"name": "main", "image": "localhost:5000/backup/library_nginx:1.14.0"}]}), json!({})).await;
    bed.api.hold_not_ready("web", "held");
    bed.deploy("web", "held", json!({}), json!({})).await;
    bed.barrier(2, &[&watcher]).await;
    for name in ["sys", "q", "optout", "done", "held"] {
        assert!(bed.changes_of(name).await.is_empty(), "{name} published");
    }
    bed.api.release("web", "held");
    bed.wait_changes("held", 1, &[&watcher]).await;

    // An invalid image is reported and the other images still proceed.
    bed.deploy(
        "web",
        "mixed",
        json!({"containers": [{"name": "main", "image": "Nginx:bad"}, {"name": "ok", "image": "redis:7"}]}),
        json!({}),
    )
    .await;
    let mixed = bed.wait_changes("mixed", 1, &[&watcher]).await;
    assert_eq!(mixed[0].images.len(), 1);
    assert_eq!(mixed[0].images[0].container, "ok");

    let (status, metrics) = watcher.admin_get("/metrics").await.expect("metrics");
    assert_eq!(status, 200);
    for line in [
        "imagebackup_watcher_events_published_total{outcome=\"Stored\"}",
        "imagebackup_watcher_workloads_skipped_total{reason=\"OptedOut\"}",
        "imagebackup_watcher_workloads_skipped_total{reason=\"ExcludedNamespace\"}",
        "imagebackup_watcher_workloads_skipped_total{reason=\"NotReady\"}",
        "imagebackup_watcher_invalid_images_total 1",
        "imagebackup_watcher_cache_workloads",
    ] {
        assert!(metrics.contains(line), "{line} missing in:\n{metrics}");
    }
    let status = watcher.terminate(LIMIT).await.expect("exits on SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(!watcher.log().contains("panicked"));
}

#[tokio::test]
async fn two_watchers_and_a_restart_store_each_change_once() {
    let bed = bed().await;
    bed.namespace("web", json!({})).await;
    let mut a = bed.watcher(&[]);
    let mut b = bed.watcher(&[]);
    a.wait_ready(LIMIT).await.expect("a ready");
    b.wait_ready(LIMIT).await.expect("b ready");
    for name in ["one", "two", "three"] {
        bed.deploy("web", name, json!({}), json!({})).await;
    }
    for name in ["one", "two", "three"] {
        bed.wait_changes(name, 1, &[&a, &b]).await;
    }
    // A restart re-lists everything: nothing new to store.
    assert!(a.terminate(LIMIT).await.is_some_and(|s| s.success()));
    let mut c = bed.watcher(&[]);
    c.wait_ready(LIMIT).await.expect("c ready");
    bed.set_image("web", "two", "nginx:1.16.0").await;
    bed.wait_changes("two", 2, &[&b, &c]).await;
    bed.barrier(1, &[&b, &c]).await;
    let all = bed.changes().await;
    let per = |n: &str| all.iter().filter(|c| c.workload.name == n).count();
    assert_eq!(
        (per("one"), per("two"), per("three")),
        (1, 2, 1),
        "{all:#?}"
    );
}

#[tokio::test]
async fn a_nats_outage_loses_nothing() {
    let mut bed = bed().await;
    bed.namespace("web", json!({})).await;
    let mut watcher = bed.watcher(&[]);
    watcher.wait_ready(LIMIT).await.expect("ready");
    bed.nats.stop();
    bed.deploy("web", "during", json!({}), json!({})).await;
    bed.deploy("web", "outage", json!({}), json!({})).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    bed.nats.restart().await.expect("restart nats");
    let nc = shared::nats::connect(&bed.nats.url(), "test")
        .await
        .expect("reconnect");
    bed.js = jetstream::new(nc);
    bed.wait_changes("during", 1, &[&watcher]).await;
    bed.wait_changes("outage", 1, &[&watcher]).await;
    assert!(!watcher.log().contains("panicked"));
}

#[tokio::test]
async fn a_forced_relist_and_cut_watches_lose_and_duplicate_nothing() {
    let bed = bed().await;
    bed.namespace("web", json!({})).await;
    let mut watcher = bed.watcher(&[]);
    watcher.wait_ready(LIMIT).await.expect("ready");
    bed.deploy("web", "a", json!({}), json!({})).await;
    bed.wait_changes("a", 1, &[&watcher]).await;
    // Every watch is cut after one event, and history is compacted (resumes get 410).
    bed.api.cut_watches_after(Some(1));
    bed.api.compact();
    bed.deploy("web", "b", json!({}), json!({})).await;
    bed.set_image("web", "a", "nginx:1.17.0").await;
    bed.wait_changes("b", 1, &[&watcher]).await;
    bed.wait_changes("a", 2, &[&watcher]).await;
    bed.api.cut_watches_after(None);
    bed.barrier(1, &[&watcher]).await;
    assert_eq!(bed.changes_of("a").await.len(), 2);
    assert_eq!(bed.changes_of("b").await.len(), 1);
}

#[tokio::test]
async fn a_periodic_resync_republishes_what_still_needs_a_backup() {
    let bed = bed().await;
    bed.namespace("web", json!({})).await;
    let mut watcher = bed.watcher(&["--resync-seconds", "2"]);
    watcher.wait_ready(LIMIT).await.expect("ready");
    // A short duplicate window, so the resync's copy is not refused as a duplicate of the
    // message the stream is about to lose (in production the resync period, 10 minutes, is
    // far longer than the 2-minute window).
    let mut config = shared::nats::stream_config().unwrap();
    config.duplicate_window = Duration::from_secs(1);
    bed.js.update_stream(config).await.expect("update stream");
    bed.deploy("web", "lost", json!({}), json!({})).await;
    bed.wait_changes("lost", 1, &[&watcher]).await;
    // As if JetStream lost the message after acknowledging it.
    let stream = bed.js.get_stream(shared::nats::STREAM_NAME).await.unwrap();
    stream.purge().await.expect("purge");
    assert!(bed.changes_of("lost").await.is_empty());
    bed.wait_changes("lost", 1, &[&watcher]).await;
    let (_, metrics) = watcher.admin_get("/metrics").await.expect("metrics");
    assert!(
        !metrics.contains("imagebackup_watcher_resyncs_total 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn sink_mode_posts_binary_cloudevents_and_rides_out_503s() {
    use std::sync::{Arc, Mutex};
    let bed = bed().await;
    bed.namespace("web", json!({})).await;
    let received: Arc<Mutex<Vec<(http::HeaderMap, String)>>> = Arc::default();
    let refusals = Arc::new(std::sync::atomic::AtomicUsize::new(2));
    let app = {
        let (received, refusals) = (received.clone(), refusals.clone());
        axum::Router::new().fallback(move |headers: http::HeaderMap, body: String| {
            let (received, refusals) = (received.clone(), refusals.clone());
            async move {
                if refusals
                    .fetch_update(
                        std::sync::atomic::Ordering::SeqCst,
                        std::sync::atomic::Ordering::SeqCst,
                        |n| n.checked_sub(1),
                    )
                    .is_ok()
                {
                    return http::StatusCode::SERVICE_UNAVAILABLE;
                }
                received.lock().unwrap().push((headers, body));
                http::StatusCode::ACCEPTED
            }
        })
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sink = format!("http://{}/", listener.local_addr().unwrap());
    let _server = testbed::process::ServerTask::spawn(listener, app);
    let mut watcher = bed.watcher(&["--sink", &sink]);
    watcher.wait_ready(LIMIT).await.expect("ready");
    bed.deploy("web", "knative", json!({}), json!({})).await;
    let deadline = tokio::time::Instant::now() + LIMIT;
    while received.lock().unwrap().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing posted:\n{}",
            watcher.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (headers, body) = received.lock().unwrap()[0].clone();
    let h = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(h("ce-type"), "io.k8slab.imagebackup.workload.changed");
    assert_eq!(h("ce-specversion"), "1.0");
    assert_eq!(
        h("ce-subject"),
        "imagebackup.workload.changed.web.deployment.knative"
    );
    assert_eq!(h("content-type"), "application/json");
    let data: WorkloadChanged = serde_json::from_str(&body).expect("data");
    assert_eq!(data.images[0].source, "docker.io/library/nginx:1.14.0");
    assert_eq!(
        refusals.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "two 503s ridden out"
    );
    // Nothing went to JetStream.
    assert!(bed.changes().await.is_empty());
}

#[tokio::test]
async fn plan_and_run_decide_the_same_for_the_same_workloads() {
    let bed = bed().await;
    let fixture = format!(
        "{}/../fixtures/fluentd-daemonset.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&fixture).expect("fixture");
    let (workloads, _) = shared::workload::Workload::from_yaml(&text);
    let ds = match workloads.into_iter().next() {
        Some(Ok(shared::workload::Workload::DaemonSet(ds))) => ds,
        other => panic!("fixture is not a DaemonSet: {other:?}"),
    };
    let ns = ds
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    bed.namespace(&ns, json!({})).await;
    Api::<k8s_openapi::api::apps::v1::DaemonSet>::namespaced(bed.client.clone(), &ns)
        .create(&PostParams::default(), &ds)
        .await
        .expect("daemonset");
    let mut watcher = bed.watcher(&[]);
    watcher.wait_ready(LIMIT).await.expect("ready");
    let name = ds.metadata.name.clone().unwrap_or_default();
    let run = bed.wait_changes(&name, 1, &[&watcher]).await;
    let out = std::process::Command::new(testbed::workspace_binary("watcher"))
        .args(["plan", "-f", &fixture, "--backup-registry", BACKUP])
        .env_remove("BACKUP_REGISTRY")
        .output()
        .expect("plan");
    let line: serde_json::Value =
        serde_json::from_slice(out.stdout.split(|b| *b == b'\n').next().unwrap_or_default())
            .expect("plan JSON");
    assert_eq!(
        line["data"]["images"],
        serde_json::to_value(&run[0].images).unwrap()
    );
}
