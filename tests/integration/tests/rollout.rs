//! `rollout run` end to end (watcher, backup and rollout as processes on the test cluster) and
//! its guard against the test API server.

use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use rollout::decide::{self, Decision, Pin};
use serde_json::json;
use shared::crd::{ImageBackup, ImageBackupStatus, Phase};
use shared::events::Payload;
use shared::workload::Workload;
use testbed::cluster::Cluster;
use testbed::function::FunctionProcess;
use testbed::{Format, ImageSpec};

const LIMIT: Duration = Duration::from_secs(60);

fn deployment(ns: &str, name: &str, images: &[(&str, &str)]) -> Deployment {
    let containers: Vec<_> = images
        .iter()
        .map(|(n, i)| json!({"name": n, "image": i}))
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": containers}}}
    }))
    .unwrap()
}

/// Waits until `check` holds for the Deployment (or DaemonSet, through `get`).
async fn wait_for<T, F, G>(what: &str, get: G, check: F, procs: &[&FunctionProcess]) -> T
where
    G: AsyncFn() -> Option<T>,
    F: Fn(&T) -> bool,
{
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        if let Some(v) = get().await
            && check(&v)
        {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            let logs: Vec<String> = procs.iter().map(|p| p.log()).collect();
            panic!("{what} never happened; logs:\n{}", logs.join("\n---\n"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn images_of(d: &Deployment) -> Vec<String> {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|s| {
            s.containers
                .iter()
                .map(|c| c.image.clone().unwrap_or_default())
                .collect()
        })
        .unwrap_or_default()
}

fn rolled_out(events: &[(String, Payload)], name: &str) -> usize {
    events
        .iter()
        .filter(|(_, p)| matches!(p, Payload::WorkloadRolledOut(r) if r.workload.name == name))
        .count()
}

/// The original design's seed: `library/nginx:1.14.0` and `fluent/fluentd:latest` in the
/// source registry, Deployment `nginx` in namespace nginx and DaemonSet `fluentd` in namespace
/// fluentd running them. Returns the images each must end on.
async fn seed(c: &Cluster) -> (String, String) {
    let pusher = c.source_pusher();
    let nginx = pusher
        .push_image(
            "library/nginx",
            "1.14.0",
            &ImageSpec::multi_arch(Format::Docker, 2, 32 * 1024, 1),
        )
        .await
        .unwrap();
    let fluentd = pusher
        .push_image(
            "fluent/fluentd",
            "latest",
            &ImageSpec::multi_arch(Format::Oci, 2, 32 * 1024, 2),
        )
        .await
        .unwrap();
    let src = c.source.host();
    c.namespace("nginx").await.unwrap();
    c.namespace("fluentd").await.unwrap();
    Api::<Deployment>::namespaced(c.client.clone(), "nginx")
        .create(
            &PostParams::default(),
            &deployment(
                "nginx",
                "nginx",
                &[("nginx", &format!("{src}/library/nginx:1.14.0"))],
            ),
        )
        .await
        .unwrap();
    let ds: DaemonSet = serde_json::from_value(json!({
        "metadata": {"name": "fluentd", "namespace": "fluentd"},
        "spec": {"selector": {"matchLabels": {"app": "fluentd"}},
                 "template": {"metadata": {"labels": {"app": "fluentd"}},
                              "spec": {"containers": [{"name": "fluentd", "image": format!("{src}/fluent/fluentd:latest")}]}}}
    }))
    .unwrap();
    Api::<DaemonSet>::namespaced(c.client.clone(), "fluentd")
        .create(&PostParams::default(), &ds)
        .await
        .unwrap();
    let flat = |repo: &str| format!("{}_{}", src.replace(':', "__"), repo.replace('/', "_"));
    (
        format!(
            "{}/{}:1.14.0@{}",
            c.backup_registry(),
            flat("library/nginx"),
            nginx.digest
        ),
        format!(
            "{}/{}:latest@{}",
            c.backup_registry(),
            flat("fluent/fluentd"),
            fluentd.digest
        ),
    )
}

/// Waits until both seed workloads run exactly their backups; returns the Deployment after.
async fn seed_rolled_out(
    c: &Cluster,
    want: &(String, String),
    procs: &[&FunctionProcess],
) -> Deployment {
    let deployments: Api<Deployment> = Api::namespaced(c.client.clone(), "nginx");
    let daemonsets: Api<DaemonSet> = Api::namespaced(c.client.clone(), "fluentd");
    let after = wait_for(
        "nginx rolled out",
        async || deployments.get("nginx").await.ok(),
        |d| images_of(d) == [want.0.clone()],
        procs,
    )
    .await;
    wait_for(
        "fluentd rolled out",
        async || daemonsets.get("fluentd").await.ok(),
        |d| {
            d.spec
                .as_ref()
                .and_then(|s| s.template.spec.as_ref())
                .map(|s| s.containers[0].image.clone().unwrap_or_default())
                == Some(want.1.clone())
        },
        procs,
    )
    .await;
    // Both backups Completed with the sources' digests.
    let ibs = Api::<ImageBackup>::all(c.client.clone())
        .list(&Default::default())
        .await
        .unwrap()
        .items;
    let mut digests: Vec<_> = ibs
        .iter()
        .map(|ib| {
            (
                format!("{:?}", ib.phase()),
                ib.status
                    .as_ref()
                    .and_then(|s| s.digest.clone())
                    .unwrap_or_default(),
            )
        })
        .collect();
    digests.sort();
    let digest_of = |image: &str| image.rsplit('@').next().unwrap_or("").to_string();
    let mut expected = vec![
        ("Completed".to_string(), digest_of(&want.0)),
        ("Completed".to_string(), digest_of(&want.1)),
    ];
    expected.sort();
    assert_eq!(digests, expected);
    after
}

#[tokio::test]
async fn the_original_design_scenario_ends_on_backups_pinned_by_digest() {
    let c = Cluster::start().await.expect("cluster");
    let want = seed(&c).await;
    let src = c.source.host();
    let before = Api::<Deployment>::namespaced(c.client.clone(), "nginx")
        .get("nginx")
        .await
        .unwrap();
    let watcher = c.spawn("watcher", &["run"], &[]).await.expect("watcher");
    let backup = c.spawn("backup", &["run"], &[]).await.expect("backup");
    let rollout = c.spawn("rollout", &["run"], &[]).await.expect("rollout");
    let procs = [&watcher, &backup, &rollout];
    let after = seed_rolled_out(&c, &want, &procs).await;
    // The pod template's images are the only change to the template.
    let mut t_before = serde_json::to_value(&before.spec.as_ref().unwrap().template).unwrap();
    let t_after = serde_json::to_value(&after.spec.as_ref().unwrap().template).unwrap();
    t_before["spec"]["containers"][0]["image"] = json!(want.0);
    assert_eq!(t_before, t_after);
    let original = after
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("k8slab.io/original-images"))
        .cloned();
    assert_eq!(
        original,
        Some(json!({"nginx": format!("{src}/library/nginx:1.14.0")}).to_string())
    );
    // One rolledout event each.
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let events = c.events().await.unwrap();
        if rolled_out(&events, "nginx") == 1 && rolled_out(&events, "fluentd") == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "rolledout events: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The watcher leaves the rolled-out workloads alone: their images are backups.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let changed = c
        .events()
        .await
        .unwrap()
        .iter()
        .filter(|(_, p)| matches!(p, Payload::WorkloadChanged(w) if w.workload.name == "nginx"))
        .count();
    assert_eq!(changed, 1);
    for p in procs {
        assert!(!p.log().contains("panicked"), "{}", p.log());
    }
}

/// Every function fills its caches from streaming lists where the API server serves them, and
/// from paged lists (after one refused streaming list per watch) where it refuses them, as
/// kube-apiserver with its WatchList feature off does; the flow ends the same either way.
#[tokio::test]
async fn the_flow_ends_the_same_with_streaming_lists_and_where_they_are_refused() {
    // What each function watches: the watcher namespaces and ServiceAccounts too, the backup
    // and the rollout ImageBackups.
    const KINDS: [&str; 5] = [
        "deployments",
        "daemonsets",
        "imagebackups",
        "namespaces",
        "serviceaccounts",
    ];
    const FALLBACK: &str = "using paged lists instead of streaming lists";
    for watch_list in [true, false] {
        let c = Cluster::start().await.expect("cluster");
        c.api.watch_list(watch_list);
        let want = seed(&c).await;
        let watcher = c.spawn("watcher", &["run"], &[]).await.expect("watcher");
        let backup = c.spawn("backup", &["run"], &[]).await.expect("backup");
        let rollout = c.spawn("rollout", &["run"], &[]).await.expect("rollout");
        let procs = [&watcher, &backup, &rollout];
        seed_rolled_out(&c, &want, &procs).await;
        let requests = c.api.requests();
        for plural in KINDS {
            let asked: Vec<_> = requests
                .iter()
                .filter(|r| r.contains(&format!("/{plural}?")))
                .collect();
            let (streamed, paged) = c.api.initial_lists(plural);
            assert!(
                streamed > 0,
                "{plural}: a streaming list is asked for first (WatchList {watch_list}): {asked:#?}"
            );
            if watch_list {
                assert_eq!(paged, 0, "{plural}: never paged where streamed: {asked:#?}");
            } else {
                assert!(paged > 0, "{plural}: paged after the refusal: {asked:#?}");
                // One refused streaming list per watch, not one per retry.
                assert!(
                    streamed <= 3,
                    "{plural}: streaming lists asked for again after the fallback: {asked:#?}"
                );
            }
        }
        for p in procs {
            assert_eq!(
                p.log().contains(FALLBACK),
                !watch_list,
                "the fallback is logged where (and only where) it happens:\n{}",
                p.log()
            );
            assert!(!p.log().contains("panicked"), "{}", p.log());
        }
    }
}

#[tokio::test]
async fn the_original_design_scenario_in_knative_mode() {
    let c = Cluster::start().await.expect("cluster");
    let want = seed(&c).await;
    // Knative: the watcher posts to a Broker, Triggers route by type to `serve` endpoints, and
    // their replies go back into the Broker. No JetStream on the event path.
    let broker = testbed::broker::Broker::start().await.expect("broker");
    let (backup_port, rollout_port) = (
        testbed::process::free_port().unwrap(),
        testbed::process::free_port().unwrap(),
    );
    let sink = ("K_SINK", broker.url());
    let backup = c
        .spawn(
            "backup",
            &["serve"],
            &[("LISTEN", format!("127.0.0.1:{backup_port}")), sink.clone()],
        )
        .await
        .expect("backup serve");
    let rollout = c
        .spawn(
            "rollout",
            &["serve"],
            &[
                ("LISTEN", format!("127.0.0.1:{rollout_port}")),
                sink.clone(),
            ],
        )
        .await
        .expect("rollout serve");
    let backup_url = format!("http://127.0.0.1:{backup_port}/");
    let rollout_url = format!("http://127.0.0.1:{rollout_port}/");
    broker.trigger("io.k8slab.imagebackup.workload.changed", &backup_url);
    broker.trigger("io.k8slab.imagebackup.workload.changed", &rollout_url);
    broker.trigger("io.k8slab.imagebackup.image.completed", &rollout_url);
    let watcher = c
        .spawn("watcher", &["run"], &[sink])
        .await
        .expect("watcher");
    seed_rolled_out(&c, &want, &[&watcher, &backup, &rollout]).await;
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let accepted = broker.accepted();
        let rolled = accepted
            .iter()
            .filter(|p| matches!(p, Payload::WorkloadRolledOut(_)))
            .count();
        let completed = accepted
            .iter()
            .filter(|p| matches!(p, Payload::ImageCompleted(_)))
            .count();
        if rolled >= 2 && completed >= 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "broker saw: {accepted:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        c.events().await.unwrap().is_empty(),
        "nothing went through JetStream"
    );
}

/// Pushes a small image to the source as `repo:tag` and copies it to its backup with `backup
/// copy` (no function involved); returns the source, the backup target and the digest.
async fn backed_up_by_hand(
    c: &Cluster,
    repo: &str,
    tag: &str,
    seed: u64,
) -> (shared::Reference, shared::Reference, String) {
    let src = c.source.host();
    let image = c
        .source_pusher()
        .push_image(
            repo,
            tag,
            &ImageSpec::single(Format::Oci, 1, 16 * 1024, seed),
        )
        .await
        .unwrap();
    let naming = shared::NamingPolicy::flat(c.backup_registry().parse().unwrap());
    let source = shared::Reference::parse_normalized(&format!("{src}/{repo}:{tag}")).unwrap();
    let target = naming.target(&source).unwrap();
    let out = tokio::process::Command::new(testbed::workspace_binary("backup"))
        .args([
            "copy",
            &source.to_string(),
            &target.to_string(),
            "--insecure-registry",
            &format!("{src},{}", c.backup.host()),
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (source, target, image.digest)
}

/// Creates the ImageBackup of `source` and marks it Completed at `digest`, as a backup would.
async fn completed_by_hand(
    c: &Cluster,
    source: &shared::Reference,
    target: &shared::Reference,
    digest: &str,
) {
    let ibs: Api<ImageBackup> = Api::all(c.client.clone());
    let mut ib = ibs
        .create(
            &PostParams::default(),
            &ImageBackup::for_source(source, target),
        )
        .await
        .unwrap();
    ib.status = Some(ImageBackupStatus {
        phase: Some(Phase::Completed),
        digest: Some(digest.to_string()),
        ..Default::default()
    });
    ibs.replace_status(
        &ib.metadata.name.clone().unwrap(),
        &PostParams::default(),
        &ib,
    )
    .await
    .unwrap();
}

/// Under Knative a retry the rollout asks for (its cache behind the event) is a 503 with
/// `Retry-After`, so the broker delivers again; it used to answer 202 and the completion was
/// dropped until the next resync (an hour here).
#[tokio::test]
async fn a_completion_ahead_of_the_cache_is_redelivered_by_the_broker() {
    let c = Cluster::start().await.expect("cluster");
    let (source, target, digest) = backed_up_by_hand(&c, "early/app", "1", 31).await;
    c.namespace("early").await.unwrap();
    let api: Api<Deployment> = Api::namespaced(c.client.clone(), "early");
    api.create(
        &PostParams::default(),
        &deployment("early", "app", &[("main", &source.to_string())]),
    )
    .await
    .unwrap();
    let broker = testbed::broker::Broker::start().await.expect("broker");
    let port = testbed::process::free_port().unwrap();
    let rollout = c
        .spawn(
            "rollout",
            &["serve"],
            &[
                ("LISTEN", format!("127.0.0.1:{port}")),
                ("K_SINK", broker.url()),
                ("RESYNC_SECONDS", "3600".to_string()),
            ],
        )
        .await
        .expect("rollout serve");
    let rollout_url = format!("http://127.0.0.1:{port}/");
    broker.trigger("io.k8slab.imagebackup.image.completed", &rollout_url);
    // The completion arrives before the ImageBackup exists.
    let completed = Payload::ImageCompleted(shared::events::ImageCompleted {
        name: shared::naming::image_backup_name(&source),
        source: source.to_string(),
        target: target.to_string(),
        digest: digest.clone(),
        platforms: vec!["linux/amd64".into()],
        bytes: 16 * 1024,
        duration_seconds: 0.1,
    });
    let binary = shared::events::to_http_binary(&completed, "/test").unwrap();
    let mut post = reqwest::Client::new().post(broker.url()).body(binary.body);
    for (k, v) in binary.headers {
        post = post.header(k, v);
    }
    assert!(post.send().await.unwrap().status().is_success());
    let first = wait_for(
        "the first delivery answered",
        async || broker.attempts().into_iter().next(),
        |_| true,
        &[&rollout],
    )
    .await;
    assert_eq!(
        (first.status, first.retry_after),
        (503, Some(2)),
        "a retry, with when"
    );
    // Now the ImageBackup is there and Completed: the redelivery moves the workload.
    completed_by_hand(&c, &source, &target, &digest).await;
    let pinned = format!("{target}@{digest}");
    wait_for(
        "rolled out by the redelivery",
        async || api.get("app").await.ok(),
        |d| images_of(d) == [pinned.clone()],
        &[&rollout],
    )
    .await;
    assert!(broker.attempts().len() >= 2);
}

#[tokio::test]
async fn a_failed_image_blocks_until_it_is_backed_up_then_one_patch_moves_all_three() {
    let c = Cluster::start().await.expect("cluster");
    let pusher = c.source_pusher();
    let src = c.source.host();
    for (i, repo) in ["team/a", "team/b"].iter().enumerate() {
        pusher
            .push_image(
                repo,
                "1",
                &ImageSpec::single(Format::Oci, 1, 16 * 1024, 10 + i as u64),
            )
            .await
            .unwrap();
    }
    c.namespace("web").await.unwrap();
    let api: Api<Deployment> = Api::namespaced(c.client.clone(), "web");
    let images = [
        ("a", format!("{src}/team/a:1")),
        ("b", format!("{src}/team/b:1")),
        ("c", format!("{src}/team/c:1")),
    ];
    let refs: Vec<(&str, &str)> = images.iter().map(|(n, i)| (*n, i.as_str())).collect();
    api.create(&PostParams::default(), &deployment("web", "three", &refs))
        .await
        .unwrap();
    let watcher = c
        .spawn("watcher", &["run", "--resync-seconds", "2"], &[])
        .await
        .unwrap();
    let backup = c.spawn("backup", &["run"], &[]).await.unwrap();
    let rollout = c
        .spawn("rollout", &["run", "--resync-seconds", "1"], &[])
        .await
        .unwrap();
    let procs = [&watcher, &backup, &rollout];
    // The watcher's resync must not be refused as a duplicate within this test's seconds (in
    // production the 10-minute resync outlasts the 2-minute duplicate window).
    let mut config = shared::nats::stream_config().unwrap();
    config.duplicate_window = Duration::from_secs(1);
    c.js.update_stream(config).await.unwrap();
    // team/c does not exist yet: its backup fails, and the workload is held with an Event.
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(c.client.clone(), "web");
    wait_for(
        "a BackupFailed event on the workload",
        async || events.list(&Default::default()).await.ok(),
        |l| {
            l.items
                .iter()
                .any(|e| e.reason.as_deref() == Some("BackupFailed"))
        },
        &procs,
    )
    .await;
    assert!(
        images_of(&api.get("three").await.unwrap())
            .iter()
            .all(|i| !i.contains("@sha256:"))
    );
    let generation = api.get("three").await.unwrap().metadata.generation;
    pusher
        .push_image(
            "team/c",
            "1",
            &ImageSpec::single(Format::Oci, 1, 16 * 1024, 12),
        )
        .await
        .unwrap();
    let after = wait_for(
        "three rolled out",
        async || api.get("three").await.ok(),
        |d| images_of(d).iter().all(|i| i.contains("@sha256:")),
        &procs,
    )
    .await;
    assert_eq!(
        after.metadata.generation,
        generation.map(|g| g + 1),
        "one patch for the three images"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rolled_out(&c.events().await.unwrap(), "three"), 1);
    assert_eq!(
        api.get("three").await.unwrap().metadata.generation,
        after.metadata.generation
    );
}

#[tokio::test]
async fn the_guard_keeps_a_change_a_user_made_in_between() {
    let c = Cluster::start().await.expect("cluster");
    c.namespace("web").await.unwrap();
    let api: Api<Deployment> = Api::namespaced(c.client.clone(), "web");
    api.create(
        &PostParams::default(),
        &deployment("web", "racy", &[("main", "nginx:1.14.0")]),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await; // the simulation makes it Ready
    let seen = Workload::Deployment(Box::new(api.get("racy").await.unwrap()));
    let naming = shared::NamingPolicy::flat(c.backup_registry().parse().unwrap());
    let source = shared::Reference::parse_normalized("nginx:1.14.0").unwrap();
    let mut ib = ImageBackup::for_source(&source, &naming.target(&source).unwrap());
    ib.status = Some(ImageBackupStatus {
        phase: Some(Phase::Completed),
        digest: Some(format!("sha256:{}", "a".repeat(64))),
        ..Default::default()
    });
    let Decision::Patch(changes) = decide::decide(&seen, &naming, Pin::Digest, |_| Some(&ib))
    else {
        panic!("expected a patch")
    };
    // The user changes the image between our read and our patch.
    let user = json!({"spec": {"template": {"spec": {"containers": [{"name": "main", "image": "nginx:1.16.0"}]}}}});
    api.patch("racy", &PatchParams::default(), &Patch::Strategic(&user))
        .await
        .unwrap();
    let ours: json_patch::Patch = serde_json::from_value(decide::json_patch(
        &seen,
        &changes,
        &decide::InFlight {
            started_at: "2026-01-01T00:00:00Z".into(),
            images: Default::default(),
            held: None,
        },
        None,
    ))
    .unwrap();
    let err = api
        .patch("racy", &PatchParams::default(), &Patch::Json::<()>(ours))
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref e) if e.code == 422),
        "{err}"
    );
    assert_eq!(images_of(&api.get("racy").await.unwrap()), ["nginx:1.16.0"]);
}

#[tokio::test]
async fn a_lost_completion_is_healed_by_the_resync_and_duplicates_patch_nothing() {
    let c = Cluster::start().await.expect("cluster");
    // The backup exists and is Completed, but no image.completed was ever published.
    let (source, target, digest) = backed_up_by_hand(&c, "solo/app", "2", 30).await;
    completed_by_hand(&c, &source, &target, &digest).await;
    c.namespace("web").await.unwrap();
    let api: Api<Deployment> = Api::namespaced(c.client.clone(), "web");
    api.create(
        &PostParams::default(),
        &deployment("web", "solo", &[("main", &source.to_string())]),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A dry run says what it would do and patches nothing.
    let mut dry = c
        .spawn(
            "rollout",
            &["run", "--dry-run", "--resync-seconds", "1"],
            &[],
        )
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let events = c.events().await.unwrap();
        if events
            .iter()
            .any(|(_, p)| matches!(p, Payload::WorkloadRolledOut(r) if r.dry_run))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no dry-run event:\n{}",
            dry.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        images_of(&api.get("solo").await.unwrap()),
        [source.to_string()]
    );
    assert!(dry.terminate(LIMIT).await.is_some_and(|s| s.success()));

    let rollout = c
        .spawn("rollout", &["run", "--resync-seconds", "1"], &[])
        .await
        .unwrap();
    let want = format!("{target}@{digest}");
    let after = wait_for(
        "solo rolled out",
        async || api.get("solo").await.ok(),
        |d| images_of(d) == [want.clone()],
        &[&rollout],
    )
    .await;
    // Duplicate completions afterwards patch nothing.
    let completed = Payload::ImageCompleted(shared::events::ImageCompleted {
        name: shared::naming::image_backup_name(&source),
        source: source.to_string(),
        target: target.to_string(),
        digest: digest.clone(),
        platforms: vec![],
        bytes: 0,
        duration_seconds: 0.0,
    });
    let publisher = shared::nats::Publisher::new(c.js.clone(), "/test");
    publisher.publish(&completed).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        api.get("solo").await.unwrap().metadata.generation,
        after.metadata.generation
    );
    let real = c
        .events()
        .await
        .unwrap()
        .iter()
        .filter(|(_, p)| matches!(p, Payload::WorkloadRolledOut(r) if !r.dry_run))
        .count();
    assert_eq!(real, 1);
}
