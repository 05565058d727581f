//! The safe rollout on a cluster that behaves like one: the test API server's kubelet pulls
//! every image at its registry with the Pod's credentials, and the backup registry is private
//! (htpasswd), as it usually is.
//!
//! - With `BACKUP_PULL_SECRET`, the original design's scenario ends on the backups with every
//!   Pod running: the Secret is copied into each namespace and listed in each template.
//! - The same over HTTPS with token services for both registries (issue 28).
//! - Without it, nothing is patched and `BackupNotPullable` says why.
//! - A pull secret with wrong credentials: the Pods cannot pull, the workload is reverted once
//!   (`RolloutReverted`, `workload.reverted`) and not tried again.
//! - Pacing: 40 workloads whose images complete together, at most 5 rolling out at any sample,
//!   with one rollout and with two of which one is SIGKILLed mid-way.
//! - A user's change during a paced wait wins.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Api;
use kube::api::{ListParams, PostParams};
use serde_json::json;
use shared::events::Payload;
use testbed::cluster::Cluster;
use testbed::function::FunctionProcess;
use testbed::{Format, ImageSpec, PushedImage};

/// The bound on anything the tests wait for (a hang, not a timing goal).
const LIMIT: Duration = Duration::from_secs(150);

fn samples() -> String {
    format!(
        "{}/../testbed/samples/original-design.yaml",
        env!("CARGO_MANIFEST_DIR")
    )
}

async fn kubectl(c: &Cluster, args: &[&str]) -> String {
    let (kubeconfig, args): (std::path::PathBuf, Vec<String>) = (
        c.kubeconfig.path().to_path_buf(),
        args.iter().map(|s| s.to_string()).collect(),
    );
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        testbed::process::kubectl(&kubeconfig, &args).expect("kubectl")
    })
    .await
    .expect("kubectl task")
}

/// `kubectl set image` of container `main` of Deployment `namespace/name`, as a user does.
async fn set_image(c: &Cluster, namespace: &str, name: &str, image: &str) {
    let deployment = format!("deployment/{name}");
    let container = format!("main={image}");
    kubectl(
        c,
        &["-n", namespace, "set", "image", &deployment, &container],
    )
    .await;
}

/// Docker Hub's `library/nginx:1.14.0` and `library/fluentd:latest` in the source registry
/// (which mirrors docker.io for the functions and the kubelet).
async fn design_images(c: &Cluster) -> (PushedImage, PushedImage) {
    let publisher = crate::publish::Publisher::new(c).await;
    let nginx = publisher
        .push_image(
            "library/nginx",
            "1.14.0",
            &ImageSpec::multi_arch(Format::Docker, 2, 16 * 1024, 1),
        )
        .await;
    let fluentd = publisher
        .push_image(
            "library/fluentd",
            "latest",
            &ImageSpec::multi_arch(Format::Oci, 2, 16 * 1024, 2),
        )
        .await;
    (nginx, fluentd)
}

fn mirror(c: &Cluster) -> (&'static str, String) {
    ("REGISTRY_MIRRORS", format!("docker.io={}", c.source.url()))
}

/// Watcher, backup and rollout (with `rollout_env`), reading docker.io from the mirror.
async fn functions(
    c: &Cluster,
    rollout_env: &[(&'static str, String)],
) -> (FunctionProcess, FunctionProcess, FunctionProcess) {
    // The rollout's own namespace (its pacing Lease lives there).
    c.namespace("image-backup").await.expect("namespace");
    let m = mirror(c);
    let watcher = c.spawn("watcher", &["run"], &[]).await.expect("watcher");
    let backup = c
        .spawn("backup", &["run"], std::slice::from_ref(&m))
        .await
        .expect("backup");
    let mut env = vec![m, ("POD_NAMESPACE", "image-backup".into())];
    env.extend(rollout_env.iter().cloned());
    let rollout = c.spawn("rollout", &["run"], &env).await.expect("rollout");
    (watcher, backup, rollout)
}

/// The backup registry's pull secret `image-backup/backup-pull`, with `password`.
async fn backup_pull_secret(c: &Cluster, password: Option<&str>) {
    c.namespace("image-backup").await.expect("namespace");
    let creds = c.backup.credentials().expect("private backup registry");
    c.pull_secret(
        "image-backup",
        "backup-pull",
        &c.backup.host(),
        &creds.username,
        password.unwrap_or(&creds.password),
    )
    .await
    .expect("secret");
}

/// Every Pod of `namespace`: (all Running and Ready, their images).
async fn pods(c: &Cluster, namespace: &str) -> (bool, Vec<String>) {
    let list = Api::<Pod>::namespaced(c.client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let mut images = Vec::new();
    let mut running = !list.is_empty();
    for p in list {
        let status = p.status.unwrap_or_default();
        let ready = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        running &= ready && status.phase.as_deref() == Some("Running");
        images.extend(
            p.spec
                .into_iter()
                .flat_map(|s| s.containers)
                .filter_map(|c| c.image),
        );
    }
    (running, images)
}

/// The reasons of the Events recorded in `namespace`, with their notes.
async fn events(c: &Cluster, namespace: &str) -> Vec<(String, String)> {
    Api::<k8s_openapi::api::events::v1::Event>::namespaced(c.client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect()
}

fn logs(procs: &[&FunctionProcess]) -> String {
    procs
        .iter()
        .map(|p| p.log())
        .collect::<Vec<_>>()
        .join("\n---\n")
}

async fn wait_until<F, Fut>(what: &str, procs: &[&FunctionProcess], mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + LIMIT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {LIMIT:?}\n{}",
            logs(procs)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The design's scenario on a cluster whose pull secret lets Pods pull the backups: both
/// workloads end on their backups pinned by digest with every Pod running them, the Secret
/// copied into each namespace and listed in each template. Returns the functions.
async fn design_scenario_ends_on_backups(
    c: &Cluster,
) -> (FunctionProcess, FunctionProcess, FunctionProcess) {
    let (nginx, fluentd) = design_images(c).await;
    backup_pull_secret(c, None).await;
    kubectl(c, &["apply", "-f", &samples()]).await;
    let (watcher, backup, rollout) = functions(
        c,
        &[
            ("BACKUP_PULL_SECRET", "image-backup/backup-pull".into()),
            ("RESYNC_SECONDS", "2".into()),
        ],
    )
    .await;
    let procs = [&watcher, &backup, &rollout];
    let want_nginx = format!(
        "{}/library_nginx:1.14.0@{}",
        c.backup_registry(),
        nginx.digest
    );
    let want_fluentd = format!(
        "{}/library_fluentd:latest@{}",
        c.backup_registry(),
        fluentd.digest
    );
    wait_until(
        "both workloads on their backups, every Pod running them",
        &procs,
        || async {
            let (n_ok, n) = pods(c, "nginx").await;
            let (f_ok, f) = pods(c, "fluentd").await;
            n_ok && f_ok
                && !n.is_empty()
                && !f.is_empty()
                && n.iter().all(|i| *i == want_nginx)
                && f.iter().all(|i| *i == want_fluentd)
        },
    )
    .await;
    for (namespace, kind) in [("nginx", "deploy"), ("fluentd", "ds")] {
        let secret = Api::<Secret>::namespaced(c.client.clone(), namespace)
            .get("backup-pull")
            .await
            .expect("the pull secret copied into the workload's namespace");
        assert_eq!(
            secret
                .metadata
                .labels
                .unwrap_or_default()
                .get("app.kubernetes.io/managed-by")
                .map(String::as_str),
            Some("image-backup")
        );
        let listed = kubectl(
            c,
            &[
                "-n",
                namespace,
                "get",
                kind,
                namespace,
                "-o",
                "jsonpath={.spec.template.spec.imagePullSecrets[*].name}",
            ],
        )
        .await;
        assert_eq!(listed.trim(), "backup-pull", "{namespace}");
    }
    (watcher, backup, rollout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_backup_pull_secret_the_design_scenario_ends_on_backups_with_every_pod_running() {
    let c = Cluster::start_private_backup().await.expect("cluster");
    c.kubelet_pulls();
    let (watcher, backup, rollout) = design_scenario_ends_on_backups(&c).await;
    let procs = [&watcher, &backup, &rollout];
    // The source Secret changes (rotated credentials): the copies follow.
    let secrets = Api::<Secret>::namespaced(c.client.clone(), "image-backup");
    let mut source = secrets.get("backup-pull").await.expect("source");
    let rotated = k8s_openapi::ByteString(
        json!({"auths": {c.backup.host(): {"auth": "cm90YXRlZDpwdw=="}}})
            .to_string()
            .into_bytes(),
    );
    source
        .data
        .get_or_insert_default()
        .insert(".dockerconfigjson".into(), rotated.clone());
    secrets
        .replace("backup-pull", &PostParams::default(), &source)
        .await
        .expect("rotate");
    wait_until("the copies follow their source", &procs, || async {
        let mut synced = true;
        for namespace in ["nginx", "fluentd"] {
            let copy = Api::<Secret>::namespaced(c.client.clone(), namespace)
                .get("backup-pull")
                .await
                .expect("copy");
            synced &= copy.data.and_then(|d| d.get(".dockerconfigjson").cloned())
                == Some(rotated.clone());
        }
        synced
    })
    .await;
}

/// Issue 28: the same scenario with both registries as on the internet — HTTPS with private
/// CAs (`REGISTRY_CA_FILE` for the functions, the nodes trusting them) and token services (an
/// anonymous-pull source, a private backup registry): the backup copies through tokens, the
/// rollout's pull check and the kubelet's pulls buy tokens with the pull secret, every Pod runs
/// its backup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_https_with_token_services_the_design_scenario_ends_on_backups() {
    let c = Cluster::start_internet_like(Duration::from_secs(300))
        .await
        .expect("cluster");
    c.kubelet_pulls();
    let (watcher, backup, rollout) = design_scenario_ends_on_backups(&c).await;
    let [source_tokens, backup_tokens] = &c.token_issuers[..] else {
        panic!("two token services");
    };
    let pushed: Vec<String> = backup_tokens
        .scopes()
        .into_iter()
        .filter(|s| s.contains(":pull,push"))
        .collect();
    assert!(
        pushed.iter().any(|s| s.contains("backup/library_nginx"))
            && pushed.iter().any(|s| s.contains("backup/library_fluentd")),
        "the backup pushed with scoped tokens: {pushed:?}"
    );
    assert!(
        source_tokens.issued() > 0,
        "the source was read with (anonymous) tokens"
    );
    assert_eq!(
        (source_tokens.refused(), backup_tokens.refused()),
        (0, 0),
        "no token request was refused"
    );
    for p in [&watcher, &backup, &rollout] {
        let log = p.log();
        assert!(
            !log.contains("UnknownIssuer") && !log.contains("certificate"),
            "{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_pull_secret_a_private_backup_is_not_rolled_out_and_the_event_says_why() {
    let c = Cluster::start_private_backup().await.expect("cluster");
    c.kubelet_pulls();
    design_images(&c).await;
    kubectl(&c, &["apply", "-f", &samples()]).await;
    let (watcher, backup, rollout) = functions(&c, &[]).await;
    let procs = [&watcher, &backup, &rollout];
    wait_until("BackupNotPullable for both workloads", &procs, || async {
        let n = events(&c, "nginx").await;
        let f = events(&c, "fluentd").await;
        [n, f]
            .iter()
            .all(|e| e.iter().any(|(r, _)| r == "BackupNotPullable"))
    })
    .await;
    let notes = events(&c, "nginx").await;
    let note = &notes
        .iter()
        .find(|(r, _)| r == "BackupNotPullable")
        .expect("event")
        .1;
    assert!(
        note.contains("anonymous") && note.contains("--backup-pull-secret"),
        "{note}"
    );
    assert_eq!(
        c.image_of::<Deployment>("nginx", "nginx").await.as_deref(),
        Some("nginx:1.14.0"),
        "not patched"
    );
    let rolled = c
        .events()
        .await
        .expect("stream")
        .into_iter()
        .filter(|(_, p)| matches!(p, Payload::WorkloadRolledOut(_)))
        .count();
    assert_eq!(rolled, 0);
    let (_, metrics) = rollout.admin_get("/metrics").await.expect("metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("imagebackup_rollout_patches_total{outcome=\"NotPullable\"}")),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_the_pods_cannot_pull_is_reverted_once_and_not_tried_again() {
    let c = Cluster::start_private_backup().await.expect("cluster");
    c.kubelet_pulls();
    design_images(&c).await;
    // The Secret names the backup registry with a wrong password.
    backup_pull_secret(&c, Some("not-the-password")).await;
    c.deployment("shop", "web", "nginx:1.14.0")
        .await
        .expect("deployment");
    // Resyncs every 2 s: chances for a second attempt, which must not come.
    let (watcher, backup, rollout) = functions(
        &c,
        &[
            ("BACKUP_PULL_SECRET", "image-backup/backup-pull".into()),
            ("RESYNC_SECONDS", "2".into()),
            ("ROLLOUT_TIMEOUT_SECONDS", "600".into()),
        ],
    )
    .await;
    let procs = [&watcher, &backup, &rollout];
    wait_until("reverted to the original image", &procs, || async {
        let reverted = c
            .events()
            .await
            .unwrap_or_default()
            .iter()
            .any(|(_, p)| matches!(p, Payload::WorkloadReverted(_)));
        reverted && c.image_of::<Deployment>("shop", "web").await.as_deref() == Some("nginx:1.14.0")
    })
    .await;
    // Several resyncs and gate passes later: still once.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let stored = c.events().await.expect("stream");
    let count = |f: fn(&Payload) -> bool| stored.iter().filter(|(_, p)| f(p)).count();
    assert_eq!(
        count(|p| matches!(p, Payload::WorkloadRolledOut(_))),
        1,
        "{}",
        logs(&procs)
    );
    assert_eq!(count(|p| matches!(p, Payload::WorkloadReverted(_))), 1);
    let reverted = stored
        .iter()
        .find_map(|(_, p)| match p {
            Payload::WorkloadReverted(r) => Some(r.clone()),
            _ => None,
        })
        .expect("reverted");
    assert!(
        ["ErrImagePull", "ImagePullBackOff"].contains(&reverted.reason.as_str()),
        "{reverted:?}"
    );
    assert_eq!(reverted.changes[0].to, "nginx:1.14.0");
    let recorded: Vec<_> = events(&c, "shop")
        .await
        .into_iter()
        .filter(|(r, _)| r == "RolloutReverted")
        .collect();
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert!(recorded[0].1.contains(&reverted.reason), "{recorded:?}");
    assert_eq!(
        c.image_of::<Deployment>("shop", "web").await.as_deref(),
        Some("nginx:1.14.0")
    );
    wait_until("the original Pods running again", &procs, || async {
        let (ok, images) = pods(&c, "shop").await;
        ok && images.iter().all(|i| i == "nginx:1.14.0")
    })
    .await;
    let (_, metrics) = rollout.admin_get("/metrics").await.expect("metrics");
    assert!(
        metrics.lines().any(
            |l| l.starts_with("imagebackup_rollout_reverts_total{reason=") && l.ends_with(" 1")
        ),
        "{metrics}"
    );
}

/// Creates `count` Deployments `w-<i>` in `namespace` running `image`, each taking
/// `min_ready` seconds to become available after a change (so rollouts overlap).
async fn fleet(c: &Cluster, namespace: &str, count: usize, image: &str, min_ready: i32) {
    c.namespace(namespace).await.expect("namespace");
    let api = Api::<Deployment>::namespaced(c.client.clone(), namespace);
    for i in 0..count {
        let name = format!("w-{i}");
        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"minReadySeconds": min_ready, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "main", "image": image}]}}}
        }))
        .expect("deployment");
        api.create(&PostParams::default(), &d)
            .await
            .expect("create");
    }
}

fn ready(d: &Deployment) -> bool {
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let generation = d.metadata.generation.unwrap_or(0);
    d.status.as_ref().is_some_and(|s| {
        s.observed_generation.unwrap_or(0) >= generation
            && s.replicas.unwrap_or(0) == want
            && s.updated_replicas.unwrap_or(0) == want
            && s.available_replicas.unwrap_or(0) == want
    })
}

/// Samples `namespace` until every Deployment runs its backup (at digest `backup`) and is Ready; returns the most
/// seen at once running the backup and not yet Ready (in flight). `mid_way` runs once, when a
/// quarter are done.
async fn sample_in_flight(
    c: &Cluster,
    namespace: &str,
    backup: &str,
    logs: impl Fn() -> String,
    mut mid_way: impl FnMut(),
) -> usize {
    let api = Api::<Deployment>::namespaced(c.client.clone(), namespace);
    let deadline = tokio::time::Instant::now() + LIMIT;
    let mut most = 0;
    let mut fired = false;
    loop {
        let list = api.list(&ListParams::default()).await.expect("list").items;
        let on_backup = |d: &Deployment| {
            d.spec
                .as_ref()
                .and_then(|s| s.template.spec.as_ref())
                .and_then(|s| s.containers[0].image.as_deref())
                .is_some_and(|i| i.starts_with(&c.backup_registry()) && i.ends_with(backup))
        };
        let in_flight = list.iter().filter(|d| on_backup(d) && !ready(d)).count();
        let done = list.iter().filter(|d| on_backup(d) && ready(d)).count();
        most = most.max(in_flight);
        if !fired && done >= list.len() / 4 {
            fired = true;
            mid_way();
        }
        if done == list.len() {
            return most;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{done} of {} rolled out within {LIMIT:?}\n{}",
            list.len(),
            logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn paced(replicas: usize) {
    let c = Cluster::start().await.expect("cluster");
    let image = c.push_small("team/app", "1.0", 40).await.expect("push");
    let source = format!("{}/team/app:1.0", c.source.host());
    fleet(&c, "fleet", 40, &source, 2).await;
    c.namespace("image-backup").await.expect("namespace");
    let watcher = c.spawn("watcher", &["run"], &[]).await.expect("watcher");
    let backup = c.spawn("backup", &["run"], &[]).await.expect("backup");
    let mut rollouts: Vec<Option<FunctionProcess>> = Vec::new();
    for _ in 0..replicas {
        rollouts.push(Some(
            c.spawn(
                "rollout",
                &["run"],
                &[
                    ("MAX_CONCURRENT_ROLLOUTS", "5".into()),
                    ("POD_NAMESPACE", "image-backup".into()),
                ],
            )
            .await
            .expect("rollout"),
        ));
    }
    let want = image.digest.clone();
    let rollouts = std::sync::Mutex::new(rollouts);
    let all_logs = || {
        let mut procs = vec![watcher.log(), backup.log()];
        if let Ok(r) = rollouts.lock() {
            procs.extend(r.iter().flatten().map(FunctionProcess::log));
        }
        procs.join("\n---\n")
    };
    let most = sample_in_flight(&c, "fleet", &want, all_logs, || {
        if replicas > 1
            && let Ok(mut r) = rollouts.lock()
        {
            drop(r[0].take()); // SIGKILL one replica mid-way
        }
    })
    .await;
    assert!(most <= 5, "{most} rolling out at once with a limit of 5");
    assert!(
        most >= 2,
        "{most}: rollouts overlapped up to the limit, not one by one"
    );
    let rolled: BTreeMap<String, usize> = c
        .events()
        .await
        .expect("stream")
        .into_iter()
        .filter_map(|(_, p)| match p {
            Payload::WorkloadRolledOut(r) => Some(r.workload.name),
            _ => None,
        })
        .fold(BTreeMap::new(), |mut m, n| {
            *m.entry(n).or_default() += 1;
            m
        });
    // A replica SIGKILLed between its patch and its publish takes that one event with it (the
    // workload is rolled out all the same: sampled above).
    let lost = if replicas > 1 { 1 } else { 0 };
    assert!(rolled.len() + lost >= 40, "{rolled:?}");
    assert!(
        rolled.values().all(|n| *n == 1),
        "each patched once: {rolled:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_workloads_completing_together_roll_out_at_most_five_at_a_time() {
    paced(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_holds_across_two_rollout_replicas_when_one_is_killed_mid_way() {
    paced(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_change_during_a_paced_wait_wins() {
    let c = Cluster::start().await.expect("cluster");
    let a = c.push_small("team/app", "a", 51).await.expect("push");
    let b = c.push_small("team/app", "b", 52).await.expect("push");
    let src = c.source.host();
    // Created on B, then moved to A, so `kubectl rollout undo` has a revision to go back to.
    fleet(&c, "queue", 4, &format!("{src}/team/app:b"), 4).await;
    for i in 0..4 {
        set_image(&c, "queue", &format!("w-{i}"), &format!("{src}/team/app:a")).await;
    }
    c.namespace("image-backup").await.expect("namespace");
    let watcher = c.spawn("watcher", &["run"], &[]).await.expect("watcher");
    let backup = c.spawn("backup", &["run"], &[]).await.expect("backup");
    let rollout = c
        .spawn(
            "rollout",
            &["run"],
            &[
                ("MAX_CONCURRENT_ROLLOUTS", "1".into()),
                ("POD_NAMESPACE", "image-backup".into()),
            ],
        )
        .await
        .expect("rollout");
    let procs = [&watcher, &backup, &rollout];
    let backup_of = |image: Option<String>, digest: &str| {
        image.is_some_and(|i| i.starts_with(&c.backup_registry()) && i.ends_with(digest))
    };
    let api = Api::<Deployment>::namespaced(c.client.clone(), "queue");
    // One workload takes the only slot; the others wait in the queue.
    wait_until("the first workload patched", &procs, || async {
        let list = api.list(&ListParams::default()).await.expect("list").items;
        list.iter().any(|d| {
            backup_of(
                d.spec
                    .as_ref()
                    .and_then(|s| s.template.spec.as_ref())
                    .and_then(|s| s.containers[0].image.clone()),
                &a.digest,
            )
        })
    })
    .await;
    // Their user takes the waiting ones back to B meanwhile: the first with `kubectl rollout
    // undo`, the others with `kubectl set image`.
    let mut changed: Vec<String> = Vec::new();
    for i in 0..4 {
        let name = format!("w-{i}");
        if c.image_of::<Deployment>("queue", &name).await.as_deref()
            == Some(format!("{src}/team/app:a").as_str())
        {
            if changed.is_empty() {
                let deployment = format!("deployment/{name}");
                kubectl(&c, &["-n", "queue", "rollout", "undo", &deployment]).await;
            } else {
                set_image(&c, "queue", &name, &format!("{src}/team/app:b")).await;
            }
            changed.push(name);
        }
    }
    assert!(changed.len() >= 2, "workloads were waiting: {changed:?}");
    for name in &changed {
        wait_until(
            "the changed workload on its new image's backup",
            &procs,
            || async { backup_of(c.image_of::<Deployment>("queue", name).await, &b.digest) },
        )
        .await;
    }
}
