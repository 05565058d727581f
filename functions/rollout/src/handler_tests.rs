//! The rollout's decisions — the handler, the pacer and the health gate — over the in-memory
//! ports of [`crate::fakes`] and reflector stores filled by hand: no API server, registry or
//! NATS. The fake applies the rollout's own JSON patches, so a guard that would not hold on a
//! real API server does not hold here either.

use shared::slim::Slim;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use shared::NamingPolicy;
use shared::cache::WorkloadCache;
use shared::crd::{ImageBackup, ImageBackupStatus, Phase};
use shared::events::{ImageCompleted, Payload, WorkloadChanged, WorkloadKind, WorkloadRef};
use shared::handler::{Delivered, Handler as _, Outcome};
use shared::naming::image_backup_name;
use shared::reference::Reference;
use shared::workload::Workload;

use crate::decide::{self, Pin, ROLLOUT_ANNOTATION};
use crate::fakes::{Collected, FakePorts, api_error, key};
use crate::handler::{Context, RolloutEvent};
use crate::metrics::{Metrics, PatchLabels, PatchOutcome, RevertLabels, RevertReason};
use crate::pull_access::Need;

const NGINX: &str = "docker.io/library/nginx:1.14.0";
const REDIS: &str = "docker.io/library/redis:7.2";
const NGINX_DIGEST: &str =
    "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const REDIS_DIGEST: &str =
    "sha256:2222222222222222222222222222222222222222222222222222222222222222";

fn naming() -> NamingPolicy {
    NamingPolicy::flat("registry.local/backup".parse().unwrap())
}

fn target(source: &str) -> Reference {
    naming()
        .target(&Reference::parse_normalized(source).unwrap())
        .unwrap()
}

/// A Ready Deployment `shop/<name>` running `images` (one container each).
fn deployment(name: &str, images: &[&str]) -> serde_json::Value {
    let containers: Vec<serde_json::Value> = images
        .iter()
        .enumerate()
        .map(|(i, image)| serde_json::json!({"name": format!("c{i}"), "image": image}))
        .collect();
    serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"), "generation": 1},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": containers}},
        },
        "status": {
            "observedGeneration": 1, "replicas": 1, "updatedReplicas": 1,
            "readyReplicas": 1, "availableReplicas": 1,
            "conditions": [{"type": "Available", "status": "True"}],
        },
    })
}

fn reference(name: &str) -> WorkloadRef {
    WorkloadRef {
        kind: WorkloadKind::Deployment,
        namespace: "shop".into(),
        name: name.into(),
    }
}

struct World {
    ports: FakePorts,
    deployments: Writer<Slim<Deployment>>,
    backups: Writer<ImageBackup>,
    metrics: Metrics,
    published: Collected,
    ctx: Context<FakePorts>,
}

fn world() -> World {
    world_with(false)
}

fn world_with(dry_run: bool) -> World {
    let (deployment_store, deployments) = reflector::store::<Slim<Deployment>>();
    let (daemonsets, _) = reflector::store::<Slim<DaemonSet>>();
    let (backup_store, backups) = reflector::store::<ImageBackup>();
    let ports = FakePorts::default();
    let metrics = Metrics::default();
    let ctx = Context::with_ports(
        ports.clone(),
        WorkloadCache {
            deployments: deployment_store,
            daemonsets,
        },
        backup_store,
        naming(),
        Pin::Digest,
        dry_run,
        metrics.clone(),
        None,
    );
    World {
        ports,
        deployments,
        backups,
        metrics,
        published: Collected::default(),
        ctx,
    }
}

impl World {
    /// A workload in the cluster and in the cache.
    fn run(&mut self, name: &str, images: &[&str]) {
        self.ports
            .state()
            .objects
            .insert(key(&reference(name)), deployment(name, images));
        self.refresh();
    }

    /// The cache catches up with the cluster.
    fn refresh(&mut self) {
        let objects: Vec<serde_json::Value> =
            self.ports.state().objects.values().cloned().collect();
        for o in objects {
            let d: Deployment = serde_json::from_value(o).unwrap();
            self.deployments
                .apply_watcher_event(&watcher::Event::Apply(Slim::from(d)));
        }
    }

    /// `source` backed up (Completed at `digest`, `seconds_ago`), and at the registry.
    fn backed_up(&mut self, source: &str, digest: &str, seconds_ago: i64) {
        let src = Reference::parse_normalized(source).unwrap();
        let mut ib = ImageBackup::for_source(&src, &target(source));
        let at = Timestamp::from_second(Timestamp::now().as_second() - seconds_ago).unwrap();
        ib.status = Some(ImageBackupStatus {
            phase: Some(Phase::Completed),
            digest: Some(digest.into()),
            completed_at: Some(Time(at)),
            ..Default::default()
        });
        self.backups.apply_watcher_event(&watcher::Event::Apply(ib));
        self.ports
            .state()
            .digests
            .insert(target(source).to_string(), digest.into());
    }

    /// `source` failed to back up.
    fn failed(&mut self, source: &str, error: &str) {
        let src = Reference::parse_normalized(source).unwrap();
        let mut ib = ImageBackup::for_source(&src, &target(source));
        ib.status = Some(ImageBackupStatus {
            phase: Some(Phase::Failed),
            last_error: Some(error.into()),
            ..Default::default()
        });
        self.backups.apply_watcher_event(&watcher::Event::Apply(ib));
    }

    async fn completed(&self, source: &str, digest: &str, delivered: u64) -> Outcome {
        let event = RolloutEvent::Completed(ImageCompleted {
            name: image_backup_name(&Reference::parse_normalized(source).unwrap()),
            source: source.into(),
            target: target(source).to_string(),
            digest: digest.into(),
            platforms: vec!["linux/amd64".into()],
            bytes: 1,
            duration_seconds: 0.1,
        });
        self.ctx.handle(event, Delivered(delivered)).await.unwrap()
    }

    fn images(&self, name: &str) -> Vec<String> {
        self.ports
            .workload(&reference(name))
            .unwrap()
            .images()
            .into_iter()
            .map(|c| c.image)
            .collect()
    }

    /// Changes the workload as the cluster has it (the cache sees it at the next refresh).
    fn edit(&self, name: &str, change: impl FnOnce(&mut serde_json::Value)) {
        change(
            self.ports
                .state()
                .objects
                .get_mut(&key(&reference(name)))
                .unwrap(),
        );
    }

    fn cached(&self, name: &str) -> Workload {
        self.ctx.workloads.get(&reference(name)).unwrap()
    }

    fn patches(&self, outcome: PatchOutcome) -> u64 {
        self.metrics
            .patches
            .get_or_create(&PatchLabels { outcome })
            .get()
    }

    /// The rollout of `name` started `seconds` ago, and its controller has seen the patch.
    fn age_flight(&mut self, name: &str, seconds: i64) {
        {
            let mut s = self.ports.state();
            let o = s.objects.get_mut(&key(&reference(name))).unwrap();
            let raw = o["metadata"]["annotations"][ROLLOUT_ANNOTATION]
                .as_str()
                .unwrap()
                .to_string();
            let mut marker: decide::InFlight = serde_json::from_str(&raw).unwrap();
            marker.started_at = (chrono::Utc::now() - chrono::Duration::seconds(seconds))
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            o["metadata"]["annotations"][ROLLOUT_ANNOTATION] =
                serde_json::to_string(&marker).unwrap().into();
            o["status"]["observedGeneration"] = o["metadata"]["generation"].clone();
        }
        self.refresh();
    }
}

fn rolled_out(outcome: &Outcome) -> Vec<String> {
    match outcome.events.as_slice() {
        [Payload::WorkloadRolledOut(r)] => r.changes.iter().map(|c| c.to.clone()).collect(),
        _ => Vec::new(),
    }
}

#[tokio::test]
async fn a_workload_is_patched_once_onto_its_backups_pinned_by_digest_when_all_are_done() {
    let mut w = world();
    w.run("web", &["nginx:1.14.0", "redis:7.2"]);
    w.backed_up(NGINX, NGINX_DIGEST, 10);
    // One of two backed up: it waits.
    let waiting = w.completed(NGINX, NGINX_DIGEST, 1).await;
    assert!(waiting.events.is_empty() && waiting.retry_after.is_none());
    assert!(w.ports.state().patches.is_empty());

    w.backed_up(REDIS, REDIS_DIGEST, 5);
    let outcome = w.completed(REDIS, REDIS_DIGEST, 1).await;
    let expected = vec![
        format!("registry.local/backup/library_nginx:1.14.0@{NGINX_DIGEST}"),
        format!("registry.local/backup/library_redis:7.2@{REDIS_DIGEST}"),
    ];
    assert_eq!(rolled_out(&outcome), expected);
    assert_eq!(w.images("web"), expected, "one patch, both images");
    let patched = w.ports.workload(&reference("web")).unwrap();
    let originals = decide::annotation(&patched, decide::ORIGINAL_IMAGES_ANNOTATION).unwrap();
    assert!(originals.contains("nginx:1.14.0") && originals.contains("redis:7.2"));
    assert!(decide::annotation(&patched, ROLLOUT_ANNOTATION).is_some());
    assert_eq!(w.ports.event_reasons(), vec!["RolledOut"]);
    assert_eq!(w.patches(PatchOutcome::Patched), 1);

    // Redelivered after the cache saw the patch: nothing external left, no second patch.
    w.refresh();
    let again = w.completed(REDIS, REDIS_DIGEST, 2).await;
    assert!(again.events.is_empty());
    assert_eq!(w.ports.state().patches.len(), 1);
}

#[tokio::test]
async fn a_failed_backup_blocks_the_rollout_and_is_reported_once() {
    let mut w = world();
    w.run("web", &["nginx:1.14.0", "redis:7.2"]);
    w.backed_up(NGINX, NGINX_DIGEST, 10);
    w.failed(REDIS, "not found at docker.io");
    for _ in 0..3 {
        assert!(w.completed(NGINX, NGINX_DIGEST, 1).await.events.is_empty());
    }
    assert!(w.ports.state().patches.is_empty());
    assert_eq!(w.ports.event_reasons(), vec!["BackupFailed"]);
    assert!(
        w.ports.state().events[0]
            .1
            .contains("not found at docker.io")
    );
}

#[tokio::test]
async fn a_backup_that_no_longer_resolves_to_its_digest_is_not_rolled_out() {
    let mut w = world();
    w.run("web", &["nginx:1.14.0"]);
    w.backed_up(NGINX, NGINX_DIGEST, 10);
    w.ports
        .state()
        .digests
        .insert(target(NGINX).to_string(), REDIS_DIGEST.into());
    assert!(w.completed(NGINX, NGINX_DIGEST, 1).await.events.is_empty());
    w.ports.state().digests.clear();
    assert!(w.completed(NGINX, NGINX_DIGEST, 1).await.events.is_empty());
    assert!(w.ports.state().patches.is_empty());
    assert_eq!(w.patches(PatchOutcome::Unverified), 2);
    assert_eq!(w.images("web"), vec!["nginx:1.14.0"]);
}

#[tokio::test]
async fn a_workload_changed_since_the_cache_saw_it_is_not_overwritten() {
    let mut w = world();
    w.run("web", &["nginx:1.14.0"]);
    w.backed_up(NGINX, NGINX_DIGEST, 10);
    // A user sets another image; the cache has not seen it yet.
    w.edit("web", |o| {
        o["spec"]["template"]["spec"]["containers"][0]["image"] = "nginx:1.15.0".into()
    });
    assert!(w.completed(NGINX, NGINX_DIGEST, 1).await.events.is_empty());
    assert_eq!(
        w.images("web"),
        vec!["nginx:1.15.0"],
        "the user's change stays"
    );
    assert_eq!(w.patches(PatchOutcome::Conflict), 1);
    assert!(w.ports.event_reasons().is_empty());

    // Any other API failure: not patched now, tried again at the next event or resync.
    w.refresh();
    w.ports.state().objects.clear();
    w.run("web", &["nginx:1.14.0"]);
    w.ports
        .state()
        .patch_failures
        .push_back(api_error(503, "ServiceUnavailable"));
    assert!(w.completed(NGINX, NGINX_DIGEST, 1).await.events.is_empty());
    assert_eq!(w.patches(PatchOutcome::Failed), 1);
    assert_eq!(
        rolled_out(&w.completed(NGINX, NGINX_DIGEST, 2).await).len(),
        1
    );
}

#[tokio::test]
async fn backups_its_pods_cannot_pull_are_not_rolled_out_and_a_foreign_secret_is_not_used() {
    let mut w = world();
    w.run("web", &["nginx:1.14.0"]);
    w.backed_up(NGINX, NGINX_DIGEST, 10);
    w.ports.state().need = Need::NotPullable("the registry refuses anonymous pulls".into());
    assert!(w.completed(NGINX, NGINX_DIGEST, 1).await.events.is_empty());
    w.ports.state().need = Need::Conflict("a Secret of that name is not ours".into());
    assert!(w.completed(NGINX, NGINX_DIGEST, 1).await.events.is_empty());
    w.ports.state().need = Need::Unknown("API down".into());
    assert!(w.completed(NGINX, NGINX_DIGEST, 1).await.events.is_empty());
    assert!(w.ports.state().patches.is_empty());
    assert_eq!(
        w.ports.event_reasons(),
        vec!["BackupNotPullable", "PullSecretConflict"]
    );
    assert_eq!(w.patches(PatchOutcome::NotPullable), 1);
    assert_eq!(w.patches(PatchOutcome::PullSecretConflict), 1);
}

#[tokio::test]
async fn the_pull_secret_its_pods_need_is_added_in_the_same_patch() {
    let mut w = world();
    w.run("web", &["nginx:1.14.0"]);
    w.backed_up(NGINX, NGINX_DIGEST, 10);
    w.ports.state().need = Need::AddSecret("image-backup-pull".into());
    assert_eq!(
        rolled_out(&w.completed(NGINX, NGINX_DIGEST, 1).await).len(),
        1
    );
    let patched = w.ports.workload(&reference("web")).unwrap();
    let secrets: Vec<String> = patched
        .pod_spec()
        .and_then(|s| s.image_pull_secrets.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(secrets, ["image-backup-pull"]);
    assert_eq!(w.ports.state().patches.len(), 1);
}

#[tokio::test]
async fn a_dry_run_announces_the_rollout_and_patches_nothing() {
    let mut w = world_with(true);
    w.run("web", &["nginx:1.14.0"]);
    w.backed_up(NGINX, NGINX_DIGEST, 10);
    let outcome = w.completed(NGINX, NGINX_DIGEST, 1).await;
    match outcome.events.as_slice() {
        [Payload::WorkloadRolledOut(r)] => assert!(r.dry_run),
        other => panic!("{other:?}"),
    }
    assert!(w.ports.state().patches.is_empty());
    assert_eq!(w.images("web"), vec!["nginx:1.14.0"]);
}

#[tokio::test]
async fn a_workload_not_ready_is_looked_at_again_soon_then_left_to_the_resync() {
    let mut w = world();
    let mut d = deployment("web", &["nginx:1.14.0"]);
    d["status"]["readyReplicas"] = 0.into();
    w.ports.state().objects.insert(key(&reference("web")), d);
    w.refresh();
    w.backed_up(NGINX, NGINX_DIGEST, 10);
    let soon = w.completed(NGINX, NGINX_DIGEST, 1).await;
    assert_eq!(soon.retry_after, Some(Duration::from_secs(10)));
    let given_up = w.completed(NGINX, NGINX_DIGEST, 30).await;
    assert_eq!(given_up.retry_after, None);
    assert!(w.ports.state().patches.is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_event_ahead_of_the_caches_is_redelivered_a_few_times_then_left_to_the_resync() {
    let mut w = world();
    w.run("web", &["nginx:1.14.0"]);
    // image.completed arrives; the ImageBackup's status has not reached the cache.
    let ahead = w.completed(NGINX, NGINX_DIGEST, 1).await;
    assert_eq!(ahead.retry_after, Some(Duration::from_secs(2)));
    let last = w.completed(NGINX, NGINX_DIGEST, 5).await;
    assert_eq!(last.retry_after, None);
    // A workload.changed for a generation the cache has not seen: the same.
    let changed = RolloutEvent::Changed(WorkloadChanged {
        workload: reference("web"),
        uid: "uid-web".into(),
        generation: 7,
        images: Vec::new(),
        pull_secrets: Vec::new(),
    });
    let outcome = w.ctx.handle(changed, Delivered::FIRST).await.unwrap();
    assert_eq!(outcome.retry_after, Some(Duration::from_secs(2)));
    assert!(w.ports.state().patches.is_empty());
}

#[tokio::test]
async fn paced_rollouts_wait_for_a_slot_and_go_oldest_completion_first() {
    let mut w = world();
    w.ports.state().slots = 1;
    w.run("api", &["redis:7.2"]);
    w.run("web", &["nginx:1.14.0"]);
    w.backed_up(REDIS, REDIS_DIGEST, 5);
    w.backed_up(NGINX, NGINX_DIGEST, 50);
    // The events queue them; the pacer patches.
    assert!(w.completed(REDIS, REDIS_DIGEST, 1).await.events.is_empty());
    assert!(w.completed(NGINX, NGINX_DIGEST, 1).await.events.is_empty());
    assert!(w.ports.state().patches.is_empty());
    assert_eq!(w.metrics.queued.get(), 2);

    w.ctx.pace(&w.published).await;
    let patched: Vec<String> = w
        .ports
        .state()
        .patches
        .iter()
        .map(|p| p.0.clone())
        .collect();
    assert_eq!(patched, ["deployment/shop/web"], "nginx completed first");
    assert_eq!(w.published.events().len(), 1);
    assert_eq!(w.metrics.queued.get(), 1);

    // The slot frees (the gate saw web Ready): api goes next.
    w.ports.state().taken.clear();
    w.ctx.pace(&w.published).await;
    assert_eq!(w.ports.state().patches.len(), 2);
    assert_eq!(w.published.events().len(), 2);
    assert_eq!(w.metrics.queued.get(), 0);
}

#[tokio::test]
async fn a_rollout_whose_pods_cannot_pull_a_backup_is_reverted_and_not_tried_again() {
    let mut w = world();
    w.run("web", &["nginx:1.14.0"]);
    w.backed_up(NGINX, NGINX_DIGEST, 10);
    let backup = rolled_out(&w.completed(NGINX, NGINX_DIGEST, 1).await)[0].clone();
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web-1", "namespace": "shop"},
        "status": {"containerStatuses": [{
            "name": "c0", "image": backup, "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ErrImagePull", "message": "pull access denied"}},
        }]},
    }))
    .unwrap();
    w.ports.state().pods.push(pod);
    // Not Ready (its new Pods cannot start), looked at after the first wait.
    w.edit("web", |o| o["status"]["readyReplicas"] = 0.into());
    w.age_flight("web", 10);
    let still = w.ctx.gate_one(&w.cached("web"), &w.published).await;
    assert!(!still, "no longer in flight");
    assert_eq!(
        w.images("web"),
        vec!["nginx:1.14.0"],
        "the original is back"
    );
    match w.published.events().as_slice() {
        [Payload::WorkloadReverted(r)] => {
            assert_eq!(r.reason, "ErrImagePull");
            assert!(r.message.contains("pull access denied"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        w.metrics
            .reverts
            .get_or_create(&RevertLabels {
                reason: RevertReason::ErrImagePull
            })
            .get(),
        1
    );
    assert_eq!(
        w.ports.event_reasons(),
        vec!["RolledOut", "RolloutReverted"]
    );

    // The same backups again: not rolled out a second time.
    w.ports.state().pods.clear();
    w.edit("web", |o| o["status"]["readyReplicas"] = 1.into());
    w.refresh();
    assert!(w.completed(NGINX, NGINX_DIGEST, 1).await.events.is_empty());
    assert_eq!(
        w.ports.state().patches.len(),
        2,
        "the rollout and the revert"
    );
}

#[tokio::test]
async fn a_rollout_not_ready_within_its_timeout_is_reverted() {
    let mut w = world();
    w.run("web", &["nginx:1.14.0"]);
    w.backed_up(NGINX, NGINX_DIGEST, 10);
    assert_eq!(
        rolled_out(&w.completed(NGINX, NGINX_DIGEST, 1).await).len(),
        1
    );
    w.edit("web", |o| o["status"]["readyReplicas"] = 0.into());
    // Within progressDeadlineSeconds' default (600 s): still in flight.
    w.age_flight("web", 300);
    assert!(w.ctx.gate_one(&w.cached("web"), &w.published).await);
    assert_eq!(w.images("web").len(), 1);
    assert!(w.images("web")[0].starts_with("registry.local/backup/"));
    w.age_flight("web", 700);
    assert!(!w.ctx.gate_one(&w.cached("web"), &w.published).await);
    assert_eq!(w.images("web"), vec!["nginx:1.14.0"]);
    match w.published.events().as_slice() {
        [Payload::WorkloadReverted(r)] => assert_eq!(r.reason, "Timeout"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_rollout_ready_on_its_backups_ends_its_flight_and_frees_its_slot() {
    let mut w = world();
    w.ports.state().slots = 1;
    w.run("web", &["nginx:1.14.0"]);
    w.backed_up(NGINX, NGINX_DIGEST, 10);
    w.completed(NGINX, NGINX_DIGEST, 1).await;
    w.ctx.pace(&w.published).await;
    assert_eq!(w.ports.state().taken.len(), 1);
    w.age_flight("web", 30);
    assert!(!w.ctx.gate_one(&w.cached("web"), &w.published).await);
    let now = w.ports.workload(&reference("web")).unwrap();
    assert!(decide::annotation(&now, ROLLOUT_ANNOTATION).is_none());
    assert!(w.images("web")[0].starts_with("registry.local/backup/"));
    assert!(w.ports.state().taken.is_empty(), "the slot is given back");
    assert!(w.published.events().len() == 1, "only the rolledout event");
}

#[tokio::test]
async fn a_users_change_after_the_rollout_wins_over_the_gate() {
    let mut w = world();
    w.run("web", &["nginx:1.14.0"]);
    w.backed_up(NGINX, NGINX_DIGEST, 10);
    w.completed(NGINX, NGINX_DIGEST, 1).await;
    w.edit("web", |o| {
        o["spec"]["template"]["spec"]["containers"][0]["image"] = "nginx:1.16.0".into();
        o["status"]["readyReplicas"] = 0.into();
    });
    w.age_flight("web", 700);
    assert!(!w.ctx.gate_one(&w.cached("web"), &w.published).await);
    assert_eq!(w.images("web"), vec!["nginx:1.16.0"], "not reverted");
    assert!(w.published.events().is_empty());
    let now = w.ports.workload(&reference("web")).unwrap();
    assert!(decide::annotation(&now, ROLLOUT_ANNOTATION).is_none());
}

#[tokio::test]
async fn the_resync_rolls_out_what_an_event_never_announced_and_counts_what_waits() {
    let mut w = world();
    w.run("web", &["nginx:1.14.0"]);
    w.run("api", &["redis:7.2"]);
    w.run("db", &["docker.io/library/postgres:16"]);
    w.backed_up(NGINX, NGINX_DIGEST, 10);
    w.failed(REDIS, "unauthorized");
    w.ctx.resync(&w.published).await;
    assert_eq!(w.published.events().len(), 1);
    assert!(w.images("web")[0].starts_with("registry.local/backup/"));
    assert_eq!(w.metrics.waiting.get(), 1, "postgres is not backed up yet");
    assert_eq!(w.metrics.blocked.get(), 1, "redis failed");
    assert_eq!(w.metrics.resyncs.get(), 1);
}

#[tokio::test]
async fn a_second_completion_before_the_cache_shows_the_patch_patches_nothing() {
    let mut w = world();
    w.run("web", &["nginx:1.14.0", "redis:7.2"]);
    w.backed_up(NGINX, NGINX_DIGEST, 10);
    w.backed_up(REDIS, REDIS_DIGEST, 5);
    assert_eq!(
        rolled_out(&w.completed(REDIS, REDIS_DIGEST, 1).await).len(),
        2
    );
    // The other image's completion, handled while the cache still holds the workload as it
    // was before the patch: no second attempt (it could only fail the guard).
    let other = w.completed(NGINX, NGINX_DIGEST, 1).await;
    assert!(other.events.is_empty(), "{other:?}");
    assert_eq!(w.ports.state().patches.len(), 1);
    assert_eq!(w.patches(PatchOutcome::Conflict), 0);

    // A user's change after the patch (a newer generation in the cache) is evaluated again.
    w.edit("web", |o| {
        o["spec"]["template"]["spec"]["containers"][0]["image"] = "nginx:1.15.0".into();
        o["metadata"]["generation"] = 3.into();
        o["status"]["observedGeneration"] = 3.into();
        // The flight ended (the gate took its marker away).
        o["metadata"]["annotations"]
            .as_object_mut()
            .unwrap()
            .remove(ROLLOUT_ANNOTATION);
    });
    w.refresh();
    w.backed_up("docker.io/library/nginx:1.15.0", NGINX_DIGEST, 1);
    let changed = w
        .completed("docker.io/library/nginx:1.15.0", NGINX_DIGEST, 1)
        .await;
    assert_eq!(rolled_out(&changed).len(), 1, "{changed:?}");
    assert_eq!(w.ports.state().patches.len(), 2);
}
