//! The backup handler's decisions, with the in-memory ports of [`crate::fakes`]: no API server,
//! registry or NATS. Each test names the rule it holds; the integration tests run the same
//! rules against the real services.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use shared::NamingPolicy;
use shared::crd::{ImageBackup, ImageBackupStatus, Phase};
use shared::error::ErrorClass;
use shared::events::{Payload, WorkloadChanged};
use shared::handler::{Classified as _, Delivered, Handler as _, Outcome};
use shared::reference::Reference;
use shared::registry::auth::DockerConfig;
use shared::workload::Workload;

use crate::claim;
use crate::copy::CopyError;
use crate::fakes::{Call, DIGEST, FakeCluster, FakeRegistry};
use crate::handler::{Context, ImageResult, Settings};
use crate::metrics::{ClaimLabels, ClaimResult, Metrics};

const SOURCE: &str = "docker.io/library/nginx:1.14.0";
const TARGET: &str = "registry.local/backup/library_nginx:1.14.0";

fn naming() -> NamingPolicy {
    NamingPolicy::flat("registry.local/backup".parse().unwrap())
}

fn settings(lease: Duration) -> Settings {
    Settings {
        holder: "me".into(),
        lease,
        ttl: None,
        max_attempts: 3,
        max_copies: 4,
        per_registry: 2,
        max_retry_delay: Duration::from_secs(60),
        naming: naming(),
    }
}

fn deployment(images: &[&str], secrets: &[&str]) -> Workload {
    crate::fakes::deployment(images, secrets, None)
}

fn event(images: &[(&str, &str)]) -> WorkloadChanged {
    crate::fakes::event(images, &[])
}

struct World {
    cluster: FakeCluster,
    registry: FakeRegistry,
    metrics: Metrics,
    handler: Context<FakeCluster, FakeRegistry>,
}

/// The Deployment `shop/web` running nginx, with the handler over fakes.
fn world(lease: Duration) -> World {
    world_with(deployment(&["nginx:1.14.0"], &[]), lease)
}

fn world_with(workload: Workload, lease: Duration) -> World {
    let cluster = FakeCluster::default().with_workload(workload);
    let registry = FakeRegistry::default();
    let metrics = Metrics::default();
    let handler = Context::with_ports(
        cluster.clone(),
        registry.clone(),
        settings(lease),
        metrics.clone(),
    );
    World {
        cluster,
        registry,
        metrics,
        handler,
    }
}

impl World {
    async fn handle(&self, delivered: u64) -> Outcome {
        self.handler
            .handle(event(&[(SOURCE, TARGET)]), Delivered(delivered))
            .await
            .unwrap()
    }

    /// Handles the event in a task that stays in its copy (the registry hangs); returns once
    /// the copy has started.
    async fn copy_in_background(&self) -> tokio::task::JoinHandle<Outcome> {
        self.registry.state().hang = true;
        let handler = self.handler.clone();
        let running = tokio::spawn(async move {
            handler
                .handle(event(&[(SOURCE, TARGET)]), Delivered::FIRST)
                .await
                .unwrap()
        });
        self.registry.started.notified().await;
        running
    }

    fn name() -> String {
        shared::naming::image_backup_name(&Reference::parse_normalized(SOURCE).unwrap())
    }

    fn phase(&self) -> Option<Phase> {
        self.cluster.backup(&Self::name()).map(|ib| ib.phase())
    }

    fn claims(&self, result: ClaimResult) -> u64 {
        self.metrics
            .claims
            .get_or_create(&ClaimLabels { result })
            .get()
    }

    fn copies(&self) -> usize {
        self.registry.state().copies.len()
    }

    /// An ImageBackup for nginx with `status`, stored as another worker would have written it.
    fn stored(&self, status: ImageBackupStatus) {
        let source = Reference::parse_normalized(SOURCE).unwrap();
        let target = Reference::parse_normalized(TARGET).unwrap();
        let mut ib = ImageBackup::for_source(&source, &target);
        ib.status = Some(status);
        self.cluster.put(ib);
    }
}

fn completed(outcome: &Outcome) -> Option<&str> {
    match outcome.events.as_slice() {
        [Payload::ImageCompleted(c)] => Some(c.digest.as_str()),
        _ => None,
    }
}

#[tokio::test]
async fn an_admitted_image_is_claimed_copied_and_recorded_completed() {
    let w = world(Duration::from_secs(30));
    let outcome = w.handle(1).await;
    assert_eq!(completed(&outcome), Some(DIGEST), "{outcome:?}");
    assert_eq!(outcome.retry_after, None);
    let ib = w.cluster.backup(&World::name()).unwrap();
    let status = ib.status.unwrap();
    assert_eq!(status.phase, Some(Phase::Completed));
    assert_eq!(status.digest.as_deref(), Some(DIGEST));
    assert_eq!(ib.spec.target, TARGET);
    assert_eq!(
        w.registry.state().copies,
        vec![(SOURCE.to_string(), TARGET.to_string(), false)]
    );
    assert_eq!(w.claims(ClaimResult::Taken), 1);
    assert_eq!(w.cluster.event_reasons(), vec!["Completed"]);
}

#[tokio::test]
async fn an_image_completed_at_its_digest_is_not_copied_or_announced_again() {
    let w = world(Duration::from_secs(30));
    assert!(completed(&w.handle(1).await).is_some());
    let again = w.handle(2).await;
    assert!(again.events.is_empty(), "{again:?}");
    assert_eq!(again.retry_after, None);
    assert_eq!(w.copies(), 1);
    assert_eq!(w.claims(ClaimResult::Taken), 1);
    assert_eq!(w.metrics.redeliveries.get(), 1);
    // The existing ImageBackup was read, not created again (no refused create).
    let creates = w
        .cluster
        .state()
        .calls
        .iter()
        .filter(|c| **c == Call::Create)
        .count();
    assert_eq!(creates, 1);
}

#[tokio::test]
async fn a_completed_backup_gone_from_the_target_is_copied_again() {
    let w = world(Duration::from_secs(30));
    w.handle(1).await;
    w.registry.state().digests.clear();
    assert_eq!(completed(&w.handle(1).await), Some(DIGEST));
    assert_eq!(w.copies(), 2);
}

#[tokio::test]
async fn an_image_claimed_by_another_live_worker_is_looked_at_again_when_its_lease_ends() {
    let w = world(Duration::from_secs(30));
    w.stored(ImageBackupStatus {
        phase: Some(Phase::Copying),
        claim: Some(claim::claim(
            "other",
            Duration::from_secs(60),
            Timestamp::now(),
        )),
        ..Default::default()
    });
    let outcome = w.handle(1).await;
    assert!(outcome.events.is_empty());
    let retry = outcome.retry_after.unwrap();
    assert!(
        retry > Duration::from_secs(58) && retry <= Duration::from_secs(61),
        "{retry:?}"
    );
    assert_eq!(w.copies(), 0);
    assert_eq!(w.claims(ClaimResult::Busy), 1);
}

#[tokio::test]
async fn an_expired_claim_is_taken_over() {
    let w = world(Duration::from_secs(30));
    let long_ago = Timestamp::from_second(Timestamp::now().as_second() - 120).unwrap();
    w.stored(ImageBackupStatus {
        phase: Some(Phase::Copying),
        claim: Some(claim::claim("dead", Duration::from_secs(60), long_ago)),
        ..Default::default()
    });
    assert_eq!(completed(&w.handle(1).await), Some(DIGEST));
    assert_eq!(w.copies(), 1);
}

#[tokio::test]
async fn a_lost_race_for_the_claim_backs_off_without_copying() {
    let w = world(Duration::from_secs(30));
    w.cluster.fail(Call::ReplaceStatus, 409, 1);
    let outcome = w.handle(1).await;
    assert_eq!(outcome.retry_after, Some(Duration::from_secs(2)));
    assert_eq!(w.copies(), 0);
    assert_eq!(w.claims(ClaimResult::Lost), 1);
    // The next delivery takes it.
    assert_eq!(completed(&w.handle(2).await), Some(DIGEST));
}

#[tokio::test]
async fn a_backup_deleted_between_read_and_claim_starts_over() {
    let w = world(Duration::from_secs(30));
    w.cluster.fail(Call::ReplaceStatus, 404, 1);
    let outcome = w.handle(1).await;
    assert_eq!(outcome.retry_after, Some(Duration::from_secs(2)));
    assert_eq!(w.copies(), 0);
}

#[tokio::test]
async fn a_transient_copy_failure_is_retried_with_a_growing_delay_then_fails() {
    let w = world(Duration::from_secs(30));
    let unavailable = || CopyError::Unavailable {
        registry: "docker.io".into(),
        what: "manifest".into(),
        attempts: 6,
        cause: "503".into(),
    };
    for _ in 0..3 {
        w.registry.state().results.push_back(Err(unavailable()));
    }
    let first = w.handle(1).await;
    assert!(first.events.is_empty());
    let d1 = first.retry_after.unwrap();
    assert_eq!(w.phase(), Some(Phase::Pending));
    let status = w.cluster.backup(&World::name()).unwrap().status.unwrap();
    assert!(status.retry_at.is_some() && status.last_error.is_some());
    let second = w.handle(2).await;
    let d2 = second.retry_after.unwrap();
    assert!(d2 > d1, "{d1:?} then {d2:?}");
    let third = w.handle(3).await;
    assert_eq!(third.retry_after, None);
    match third.events.as_slice() {
        [Payload::ImageFailed(f)] => {
            assert_eq!(f.error_class, ErrorClass::Unavailable);
            assert_eq!(f.attempts, 3);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(w.phase(), Some(Phase::Failed));
    assert_eq!(w.copies(), 3);
    assert_eq!(w.cluster.event_reasons(), vec!["Failed"]);
}

#[tokio::test]
async fn a_permanent_copy_failure_fails_at_once_and_a_later_event_retries_it() {
    let w = world(Duration::from_secs(30));
    w.registry
        .state()
        .results
        .push_back(Err(CopyError::NotFound {
            what: "manifest library/nginx:1.14.0".into(),
            registry: "docker.io".into(),
        }));
    let outcome = w.handle(1).await;
    match outcome.events.as_slice() {
        [Payload::ImageFailed(f)] => assert_eq!(f.error_class, ErrorClass::NotFound),
        other => panic!("{other:?}"),
    }
    assert_eq!(w.phase(), Some(Phase::Failed));
    assert_eq!(completed(&w.handle(1).await), Some(DIGEST));
    assert_eq!(w.copies(), 2);
}

#[tokio::test]
async fn a_claim_taken_over_mid_copy_cancels_the_copy() {
    let w = world(Duration::from_secs(1));
    let running = w.copy_in_background().await;
    // Another worker takes the claim over (as after an expired lease).
    let mut ib = w.cluster.backup(&World::name()).unwrap();
    if let Some(s) = ib.status.as_mut() {
        s.claim = Some(claim::claim(
            "other",
            Duration::from_secs(60),
            Timestamp::now(),
        ));
    }
    w.cluster.put(ib);
    let outcome = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome.retry_after, Some(Duration::from_secs(1)));
    assert!(outcome.events.is_empty());
    assert_eq!(w.registry.state().cancelled, 1);
    assert_eq!(w.claims(ClaimResult::Lost), 1);
    assert_eq!(w.metrics.in_flight.get(), 0);
    assert!(claim::held_by(
        &w.cluster.backup(&World::name()).unwrap(),
        "other"
    ));
}

#[tokio::test]
async fn a_worker_that_cannot_renew_its_claim_stops_before_another_may_take_it() {
    let w = world(Duration::from_secs(1));
    let running = w.copy_in_background().await;
    w.cluster.fail(Call::ReplaceStatus, 503, 100);
    let outcome = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome.retry_after, Some(Duration::from_secs(1)));
    assert_eq!(w.registry.state().cancelled, 1);
    assert_eq!(w.claims(ClaimResult::Expired), 1);
    assert_eq!(w.metrics.in_flight.get(), 0);
}

#[tokio::test]
async fn a_forged_target_or_an_image_the_workload_does_not_run_creates_nothing() {
    let w = world(Duration::from_secs(30));
    let forged = event(&[
        (SOURCE, "registry.local/backup/someone_else:1"),
        (
            "docker.io/library/redis:7",
            "registry.local/backup/library_redis:7",
        ),
    ]);
    let outcome = w.handler.handle(forged, Delivered::FIRST).await.unwrap();
    assert!(outcome.events.is_empty() && outcome.retry_after.is_none());
    assert!(w.cluster.state().backups.is_empty());
    assert_eq!(w.copies(), 0);
    assert!(!w.cluster.state().calls.contains(&Call::Create));
}

#[tokio::test]
async fn an_event_for_a_workload_that_does_not_exist_creates_nothing() {
    let w = world_with(deployment(&["redis:7"], &[]), Duration::from_secs(30));
    let outcome = w.handle(1).await;
    assert!(outcome.events.is_empty() && outcome.retry_after.is_none());
    assert!(w.cluster.state().backups.is_empty());
}

#[tokio::test]
async fn an_invalid_reference_is_an_invalid_event() {
    let w = world(Duration::from_secs(30));
    let err = w
        .handler
        .handle(event(&[("UPPER CASE!!", TARGET)]), Delivered(1))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Invalid);
    assert!(
        w.cluster.state().calls.is_empty(),
        "nothing asked of the cluster"
    );
}

#[tokio::test]
async fn an_api_refusal_is_recorded_and_not_retried_an_outage_is_retried() {
    let w = world(Duration::from_secs(30));
    w.cluster.fail(Call::Workload, 403, 1);
    let refused = w.handle(1).await;
    assert!(refused.events.is_empty() && refused.retry_after.is_none());
    assert_eq!(w.cluster.event_reasons(), vec!["ApiRefused"]);
    assert!(w.cluster.state().events[0].1.contains("403"));

    w.cluster.fail(Call::Workload, 503, 1);
    let outage = w.handle(3).await;
    let first = outage.retry_after.unwrap();
    w.cluster.fail(Call::Workload, 503, 1);
    let later = w.handle(6).await.retry_after.unwrap();
    assert!(later > first, "the delay grows with the deliveries");
    assert_eq!(w.cluster.event_reasons(), vec!["ApiRefused"]);

    // Refused while creating the ImageBackup (a missing grant): recorded, not retried.
    w.cluster.fail(Call::Create, 403, 1);
    let create = w.handle(1).await;
    assert!(create.retry_after.is_none());
    assert_eq!(w.cluster.event_reasons(), vec!["ApiRefused", "ApiRefused"]);
    assert_eq!(w.copies(), 0);
}

#[tokio::test]
async fn the_workloads_own_pull_secrets_reach_the_copy() {
    let w = world_with(
        deployment(&["nginx:1.14.0"], &["hub"]),
        Duration::from_secs(30),
    );
    let mut hub = DockerConfig::default();
    hub.insert_basic("docker.io", "reader", "secret");
    w.cluster
        .state()
        .secrets
        .insert(("shop".into(), "hub".into()), hub);
    assert_eq!(completed(&w.handle(1).await), Some(DIGEST));
    assert_eq!(
        w.registry.state().copies,
        vec![(SOURCE.to_string(), TARGET.to_string(), true)]
    );
    let ib = w.cluster.backup(&World::name()).unwrap();
    let secrets: Vec<_> = ib.spec.pull_secrets.iter().map(|s| &s.name).collect();
    assert_eq!(secrets, ["hub"]);
}

#[tokio::test]
async fn an_object_applied_by_hand_with_a_target_outside_the_naming_is_refused_not_copied() {
    let w = world(Duration::from_secs(30));
    let source = Reference::parse_normalized(SOURCE).unwrap();
    let evil = Reference::parse_normalized("evil.example/loot:1").unwrap();
    w.cluster.put(ImageBackup::for_source(&source, &evil));
    let ib = w.cluster.backup(&World::name()).unwrap();
    match w.handler.take_up(&ib).await {
        ImageResult::Done(None) => {}
        other => panic!("{other:?}"),
    }
    let stored = w.cluster.backup(&World::name()).unwrap();
    assert_eq!(stored.phase(), Phase::Failed);
    assert!(stored.status.unwrap().last_error.is_some());
    assert_eq!(w.cluster.event_reasons(), vec!["Refused"]);
    assert_eq!(w.copies(), 0);
    // Refused once: looking again writes nothing more.
    w.handler
        .take_up(&w.cluster.backup(&World::name()).unwrap())
        .await;
    assert_eq!(w.cluster.event_reasons(), vec!["Refused"]);
}

#[tokio::test]
async fn two_events_for_one_image_in_one_process_copy_it_once() {
    let w = world(Duration::from_secs(30));
    let first = w.copy_in_background().await;
    let second = w.handle(1).await;
    assert_eq!(second.retry_after, Some(Duration::from_secs(2)));
    // Delivered again while the copy still runs: it waits longer each time (not every 2 s).
    let fourth = w.handle(4).await;
    assert_eq!(fourth.retry_after, Some(Duration::from_secs(8)));
    assert_eq!(w.copies(), 1);
    first.abort();
}

#[tokio::test]
async fn an_event_whose_images_the_watch_shows_backed_up_is_answered_without_a_read() {
    let w = world(Duration::from_secs(30));
    w.handle(1).await;
    assert_eq!(w.phase(), Some(Phase::Completed));
    let completed = w.cluster.backup(&World::name()).unwrap();
    w.cluster
        .state()
        .watched
        .insert(World::name(), completed.clone());
    w.cluster.state().calls.clear();

    let outcome = w.handle(2).await;
    assert!(outcome.events.is_empty() && outcome.retry_after.is_none());
    assert!(
        w.cluster.state().calls.is_empty(),
        "neither the workload nor the ImageBackup read: {:?}",
        w.cluster.state().calls
    );
    assert_eq!(w.copies(), 1, "not copied again");

    // A forged target is never answered from the watch: the full path refuses it.
    let forged = event(&[(SOURCE, "registry.local/backup/someone_else:1")]);
    w.handler.handle(forged, Delivered::FIRST).await.unwrap();
    assert_eq!(w.cluster.state().calls, vec![Call::Workload]);

    // The backup gone from the registry: the full path reads the workload and copies again.
    w.cluster.state().calls.clear();
    w.registry.state().digests.clear();
    w.handle(3).await;
    assert_eq!(w.cluster.state().calls.first(), Some(&Call::Workload));
    assert_eq!(w.copies(), 2, "copied again");
}

#[tokio::test]
async fn an_image_the_watch_shows_only_copying_is_read_from_the_api() {
    let w = world(Duration::from_secs(30));
    let mut copying = ImageBackup::for_source(
        &Reference::parse_normalized(SOURCE).unwrap(),
        &Reference::parse_normalized(TARGET).unwrap(),
    );
    copying.status = Some(ImageBackupStatus {
        phase: Some(Phase::Copying),
        ..Default::default()
    });
    w.cluster.state().watched.insert(World::name(), copying);
    w.handle(1).await;
    let calls = w.cluster.state().calls.clone();
    assert_eq!(calls[..2], [Call::Workload, Call::Get], "{calls:?}");
    assert_eq!(w.phase(), Some(Phase::Completed));
}

#[tokio::test]
async fn no_claim_is_taken_while_every_copy_slot_is_busy() {
    let cluster =
        FakeCluster::default().with_workload(deployment(&["nginx:1.14.0", "redis:7"], &[]));
    let registry = FakeRegistry::default();
    let one_copy = Settings {
        max_copies: 1,
        ..settings(Duration::from_secs(30))
    };
    let handler = Context::with_ports(
        cluster.clone(),
        registry.clone(),
        one_copy,
        Metrics::default(),
    );
    registry.state().hang = true;
    let h = handler.clone();
    let first =
        tokio::spawn(async move { h.handle(event(&[(SOURCE, TARGET)]), Delivered::FIRST).await });
    registry.started.notified().await;

    let redis = (
        "docker.io/library/redis:7",
        "registry.local/backup/library_redis:7",
    );
    let name = shared::naming::image_backup_name(&Reference::parse_normalized(redis.0).unwrap());
    let h = handler.clone();
    let second = tokio::spawn(async move { h.handle(event(&[redis]), Delivered::FIRST).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let waiting = cluster.backup(&name).expect("created while it waits");
    assert!(
        waiting
            .status
            .as_ref()
            .and_then(|s| s.claim.as_ref())
            .is_none(),
        "no claim while waiting for a copy slot: {:?}",
        waiting.status
    );
    assert_eq!(registry.state().copies.len(), 1, "one copy at once");

    // The slot frees: the second image is claimed and copied.
    registry.state().hang = false;
    first.abort();
    let outcome = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(outcome.retry_after.is_none(), "{outcome:?}");
    assert_eq!(cluster.backup(&name).unwrap().phase(), Phase::Completed);
}

#[tokio::test]
async fn an_image_being_copied_here_or_claimed_elsewhere_is_looked_at_later_without_a_read() {
    let w = world(Duration::from_secs(30));
    let running = w.copy_in_background().await;
    w.cluster.state().calls.clear();
    let outcome = w.handle(4).await;
    assert!(
        outcome
            .retry_after
            .is_some_and(|d| d >= Duration::from_secs(2)),
        "{outcome:?}"
    );
    assert!(
        w.cluster.state().calls.is_empty(),
        "{:?}",
        w.cluster.state().calls
    );
    running.abort();
    let _ = running.await;

    // Another worker's live claim, as the watch shows it: back when it would run out.
    let mut claimed = w.cluster.backup(&World::name()).unwrap();
    claimed.status.as_mut().unwrap().claim = Some(claim::claim(
        "other",
        Duration::from_secs(60),
        Timestamp::now(),
    ));
    w.cluster.state().watched.insert(World::name(), claimed);
    w.cluster.state().calls.clear();
    let outcome = w.handle(1).await;
    let after = outcome.retry_after.unwrap();
    assert!(
        after > Duration::from_secs(55) && after <= Duration::from_secs(61),
        "{after:?}"
    );
    assert!(w.cluster.state().calls.is_empty());
    assert_eq!(w.claims(ClaimResult::Busy), 1);
}
