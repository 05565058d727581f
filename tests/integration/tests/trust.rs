//! The bus is a hint, the cluster is the truth. Anyone who can reach NATS can publish a
//! well-formed CloudEvent; these tests publish the forgeries an attacker inside the cluster would
//! and check that nothing changes: the existing backup keeps its digest, nothing is written
//! outside the naming, no ImageBackup is created, and the rejection counter says why. The other
//! way in is Kubernetes RBAC: an ImageBackup applied with kubectl is backed up like one the
//! backup made, a bad one is refused with a clear status, and a request whose message was lost
//! from the stream is still carried out.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use serde_json::json;
use shared::crd::{ImageBackup, Phase};
use shared::events::{
    ImageCompleted, Payload, WorkloadChanged, WorkloadImage, WorkloadKind, WorkloadRef,
};
use shared::naming::image_backup_name;
use shared::workload::Workload;
use shared::{NamingPolicy, Reference};
use testbed::cluster::Cluster;
use testbed::function::FunctionProcess;
use testbed::{FaultProxy, Format, ImageSpec, Pusher};

/// The bound on anything the tests wait for (a hang, not a timing goal).
const LIMIT: Duration = Duration::from_secs(90);

fn naming(c: &Cluster) -> NamingPolicy {
    NamingPolicy::flat(c.backup_registry().parse().expect("backup registry"))
}

fn reference(s: &str) -> Reference {
    Reference::parse_normalized(s)
        .expect("reference")
        .with_default_tag()
}

fn changed(
    namespace: &str,
    name: &str,
    source: &str,
    target: &str,
    pull_secrets: &[&str],
) -> Payload {
    Payload::WorkloadChanged(WorkloadChanged {
        workload: WorkloadRef {
            kind: WorkloadKind::Deployment,
            namespace: namespace.into(),
            name: name.into(),
        },
        uid: format!("forged-{name}-{target}"),
        generation: 1,
        images: vec![WorkloadImage {
            container: "main".into(),
            init: false,
            source: source.into(),
            target: target.into(),
        }],
        pull_secrets: pull_secrets.iter().map(|s| s.to_string()).collect(),
    })
}

async fn publish(c: &Cluster, payload: &Payload) {
    shared::nats::Publisher::new(c.js.clone(), "/attacker")
        .publish(payload)
        .await
        .expect("publish");
}

async fn wait_phase(
    c: &Cluster,
    name: &str,
    phase: Phase,
    procs: &[&FunctionProcess],
) -> ImageBackup {
    let api = Api::<ImageBackup>::all(c.client.clone());
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        if let Ok(Some(ib)) = api.get_opt(name).await
            && ib.phase() == phase
        {
            return ib;
        }
        if tokio::time::Instant::now() > deadline {
            let now = api.get_opt(name).await.ok().flatten().map(|i| i.status);
            let logs: Vec<String> = procs.iter().map(|p| p.log()).collect();
            panic!(
                "{name} never reached {phase:?} (now {now:?}); logs:\n{}",
                logs.join("\n---\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `/metrics` of `p` contains every line of `want`.
async fn wait_metrics(p: &FunctionProcess, want: &[String]) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let (_, metrics) = p.admin_get("/metrics").await.unwrap_or_default();
        if want.iter().all(|w| metrics.contains(w.as_str())) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "metrics never showed {want:?}:\n{metrics}\nlog:\n{}",
            p.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The digest `reference` resolves to at the backup registry, if it exists.
async fn backup_digest(c: &Cluster, reference: &Reference) -> Option<String> {
    let tag = reference.tag().expect("a tag");
    Pusher::new(&c.backup.host(), None)
        .get_manifest(reference.path(), tag)
        .await
        .expect("read the backup registry")
        .map(|(_, bytes)| testbed::image::sha256_digest(&bytes))
}

#[tokio::test]
async fn forged_workload_changed_events_change_nothing_and_are_counted() {
    let c = Cluster::start().await.expect("cluster");
    let src = c.source.host();
    let pusher = c.source_pusher();
    let nginx = pusher
        .push_image(
            "library/nginx",
            "1.14.0",
            &ImageSpec::multi_arch(Format::Docker, 1, 8 * 1024, 1),
        )
        .await
        .expect("push");
    pusher
        .push_image(
            "evil/app",
            "1",
            &ImageSpec::single(Format::Docker, 1, 8 * 1024, 66),
        )
        .await
        .expect("push");
    let naming = naming(&c);
    let nginx_source = reference(&format!("{src}/library/nginx:1.14.0"));
    let nginx_target = naming.target(&nginx_source).expect("target");
    let evil_source = reference(&format!("{src}/evil/app:1"));
    let evil_target = naming.target(&evil_source).expect("target");
    let elsewhere = reference(&format!("{}/elsewhere/x:1", c.backup.host()));

    // A workload running nginx, backed up the normal way.
    c.deployment("shop", "web", &nginx_source.to_string())
        .await
        .expect("deployment");
    c.namespace("vault").await.expect("namespace");
    c.pull_secret("vault", "regcred", &src, "admin", "hunter2")
        .await
        .expect("secret");
    let watcher = c.spawn("watcher", &["run"], &[]).await.expect("watcher");
    let backup = c.spawn("backup", &["run"], &[]).await.expect("backup");
    wait_phase(
        &c,
        &image_backup_name(&nginx_source),
        Phase::Completed,
        &[&backup],
    )
    .await;
    assert_eq!(
        backup_digest(&c, &nginx_target).await.as_deref(),
        Some(nginx.digest.as_str())
    );

    let evil = evil_source.to_string();
    // 1. Overwrite the existing backup: the attacker's image to nginx's backup tag.
    publish(
        &c,
        &changed("shop", "web", &evil, &nginx_target.to_string(), &[]),
    )
    .await;
    // 2. Write outside the naming, wherever the backup's credentials reach.
    publish(
        &c,
        &changed("shop", "web", &evil, &elsewhere.to_string(), &[]),
    )
    .await;
    // 3. An image no workload runs, for a workload that runs something else...
    publish(
        &c,
        &changed("shop", "web", &evil, &evil_target.to_string(), &[]),
    )
    .await;
    // ... and for one that does not exist, with another namespace's pull secret.
    publish(
        &c,
        &changed(
            "vault",
            "ghost",
            &evil,
            &evil_target.to_string(),
            &["regcred"],
        ),
    )
    .await;
    // Names that could never be Kubernetes names do not reach a URL.
    publish(
        &c,
        &changed(
            "shop",
            "../../api/v1/secrets",
            &evil,
            &evil_target.to_string(),
            &[],
        ),
    )
    .await;

    wait_metrics(
        &backup,
        &[
            "imagebackup_backup_events_rejected_total{reason=\"TargetMismatch\"} 2".into(),
            "imagebackup_backup_events_rejected_total{reason=\"ImageNotInWorkload\"} 1".into(),
            "imagebackup_backup_events_rejected_total{reason=\"WorkloadNotFound\"} 2".into(),
        ],
    )
    .await;
    assert_eq!(
        backup_digest(&c, &nginx_target).await.as_deref(),
        Some(nginx.digest.as_str()),
        "the existing backup is unchanged"
    );
    assert_eq!(
        backup_digest(&c, &elsewhere).await,
        None,
        "nothing outside the naming"
    );
    assert_eq!(
        backup_digest(&c, &evil_target).await,
        None,
        "the evil image is not copied"
    );
    let backups = Api::<ImageBackup>::all(c.client.clone())
        .list(&Default::default())
        .await
        .expect("list")
        .items;
    assert_eq!(backups.len(), 1, "no ImageBackup created: {backups:?}");
    assert!(
        backup.log().contains("event refused for this image"),
        "a warning says why"
    );
    drop(watcher);
}

#[tokio::test]
async fn a_forged_image_completed_patches_nothing() {
    let c = Cluster::start().await.expect("cluster");
    let src = c.source.host();
    let image = c.push_small("team/app", "1", 7).await.expect("push");
    let source = reference(&format!("{src}/team/app:1"));
    let target = naming(&c).target(&source).expect("target");
    // The bytes really are at the backup target (copied out of band), so only the missing
    // Completed ImageBackup stands between the forgery and a patch.
    let out = std::process::Command::new(testbed::workspace_binary("backup"))
        .args(["copy", &source.to_string(), &target.to_string(), "--quiet"])
        .args(["--insecure-registry", &format!("{src},{}", c.backup.host())])
        .output()
        .expect("backup copy");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.deployment("shop", "web", &source.to_string())
        .await
        .expect("deployment");
    let rollout = c.spawn("rollout", &["run"], &[]).await.expect("rollout");
    publish(
        &c,
        &Payload::ImageCompleted(ImageCompleted {
            name: image_backup_name(&source),
            source: source.to_string(),
            target: target.to_string(),
            digest: image.digest.clone(),
            platforms: Vec::new(),
            bytes: 1,
            duration_seconds: 0.1,
        }),
    )
    .await;
    // Wait until the rollout has handled it (acked), then look.
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let mut consumer =
            c.js.get_stream(shared::nats::STREAM_NAME)
                .await
                .expect("stream")
                .get_consumer::<async_nats::jetstream::consumer::pull::Config>("rollout")
                .await
                .expect("consumer");
        let info = consumer.info().await.expect("info");
        if info.delivered.stream_sequence >= 1 && info.num_ack_pending == 0 && info.num_pending == 0
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rollout never acked:\n{}",
            rollout.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        c.image_of::<Deployment>("shop", "web").await.as_deref(),
        Some(source.to_string().as_str()),
        "not patched:\n{}",
        rollout.log()
    );
}

/// `kubectl apply -f -` of `manifest`. Async: the test API server runs on this test's runtime.
async fn kubectl_apply(c: &Cluster, manifest: &serde_json::Value) {
    use tokio::io::AsyncWriteExt as _;
    let mut child = tokio::process::Command::new("kubectl")
        .args(["apply", "-f", "-"])
        .env("KUBECONFIG", c.kubeconfig.path())
        .env(
            "KUBECACHEDIR",
            testbed::process::kubectl_cache_dir(c.kubeconfig.path()),
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(manifest.to_string().as_bytes())
        .await
        .expect("write");
    drop(stdin);
    let out = child.wait_with_output().await.expect("kubectl");
    assert!(
        out.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn request(name: &str, source: &str, target: Option<&str>) -> serde_json::Value {
    let mut spec = json!({"source": source});
    if let Some(t) = target {
        spec["target"] = json!(t);
    }
    json!({"apiVersion": "k8slab.io/v1alpha1", "kind": "ImageBackup",
           "metadata": {"name": name}, "spec": spec})
}

#[tokio::test]
async fn an_imagebackup_applied_with_kubectl_is_backed_up_and_a_bad_one_refused() {
    let c = Cluster::start().await.expect("cluster");
    let src = c.source.host();
    let pusher = c.source_pusher();
    let image = pusher
        .push_image(
            "hand/made",
            "1",
            &ImageSpec::multi_arch(Format::Oci, 2, 8 * 1024, 3),
        )
        .await
        .expect("push");
    c.push_small("hand/other", "1", 4).await.expect("push");
    let backup = c.spawn("backup", &["run"], &[]).await.expect("backup");
    let naming = naming(&c);

    // No workload runs it: RBAC on ImageBackups, not the bus, decided this request.
    let source = reference(&format!("{src}/hand/made:1"));
    let name = image_backup_name(&source);
    kubectl_apply(&c, &request(&name, &source.to_string(), None)).await;
    let ib = wait_phase(&c, &name, Phase::Completed, &[&backup]).await;
    assert_eq!(
        ib.status.and_then(|s| s.digest).as_deref(),
        Some(image.digest.as_str())
    );
    let target = naming.target(&source).expect("target");
    Pusher::new(&c.backup.host(), None)
        .check_identical(target.path(), &image)
        .await
        .expect("byte-identical at the backup");

    // A target outside the naming: refused with a clear status, nothing written there.
    let other = reference(&format!("{src}/hand/other:1"));
    let other_name = image_backup_name(&other);
    let elsewhere = format!("{}/elsewhere/x:1", c.backup.host());
    kubectl_apply(
        &c,
        &request(&other_name, &other.to_string(), Some(&elsewhere)),
    )
    .await;
    let refused = wait_phase(&c, &other_name, Phase::Failed, &[&backup]).await;
    let last_error = refused
        .status
        .and_then(|s| s.last_error)
        .unwrap_or_default();
    assert!(
        last_error.starts_with("Invalid: spec.target")
            && last_error.contains(&naming.target(&other).unwrap().to_string()),
        "{last_error}"
    );
    assert_eq!(backup_digest(&c, &reference(&elsewhere)).await, None);

    // Under a name that is not its source's: refused, naming the right one.
    kubectl_apply(&c, &request("my-backup", &other.to_string(), None)).await;
    let renamed = wait_phase(&c, "my-backup", Phase::Failed, &[&backup]).await;
    let last_error = renamed
        .status
        .and_then(|s| s.last_error)
        .unwrap_or_default();
    assert!(
        last_error.contains(&format!("must be named {other_name}")),
        "{last_error}"
    );
    assert_eq!(
        backup_digest(&c, &naming.target(&other).unwrap()).await,
        None
    );

    wait_metrics(
        &backup,
        &[
            "imagebackup_backup_requests_refused_total{reason=\"TargetMismatch\"} 1".into(),
            "imagebackup_backup_requests_refused_total{reason=\"NameMismatch\"} 1".into(),
        ],
    )
    .await;
}

#[tokio::test]
async fn a_request_whose_message_was_lost_from_the_stream_is_still_carried_out() {
    let c = Cluster::start().await.expect("cluster");
    let proxy = FaultProxy::start(&c.source.host()).await.expect("proxy");
    let image = c.push_small("lost/msg", "1", 9).await.expect("push");
    // The workload pulls through the proxy, which fails every request for now: the first
    // attempt ends Pending with a retry time, its message Nak'ed for later.
    let image_ref = format!("{}/lost/msg:1", proxy.host());
    let d = c
        .deployment("shop", "lost", &image_ref)
        .await
        .expect("deployment");
    proxy.fail_for(503, Duration::from_secs(3600));
    let env = [
        (
            "INSECURE_REGISTRIES",
            format!("{},{},{}", c.source.host(), c.backup.host(), proxy.host()),
        ),
        ("MAX_RETRY_DELAY_SECONDS", "2".to_string()),
    ];
    let backup = c.spawn("backup", &["run"], &env).await.expect("backup");
    let event = Workload::Deployment(Box::new(d)).plan(&naming(&c)).event;
    publish(&c, &Payload::WorkloadChanged(event)).await;
    let source = reference(&image_ref);
    let name = image_backup_name(&source);
    let api = Api::<ImageBackup>::all(c.client.clone());
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let pending = api
            .get_opt(&name)
            .await
            .ok()
            .flatten()
            .and_then(|ib| ib.status);
        if pending
            .as_ref()
            .is_some_and(|s| s.phase == Some(Phase::Pending) && s.retry_at.is_some())
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never Pending: {pending:?}\n{}",
            backup.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The worker dies and the message is gone from the stream before anyone handles it again
    // (a purge, as JetStream losing an acknowledged write would); the registry recovers.
    drop(backup);
    c.js.get_stream(shared::nats::STREAM_NAME)
        .await
        .expect("stream")
        .purge()
        .filter("imagebackup.workload.changed.>")
        .await
        .expect("purge");
    proxy.fail_for(503, Duration::ZERO);
    // A new worker has no message to act on: only the ImageBackup in the cluster.
    let backup = c.spawn("backup", &["run"], &env).await.expect("backup");
    let ib = wait_phase(&c, &name, Phase::Completed, &[&backup]).await;
    assert_eq!(
        ib.status.and_then(|s| s.digest).as_deref(),
        Some(image.digest.as_str())
    );
    assert!(
        backup
            .log()
            .contains("taking up an ImageBackup no event carries"),
        "{}",
        backup.log()
    );
}
