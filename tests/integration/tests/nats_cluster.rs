//! On a real 3-node JetStream cluster: the stream and the consumers get `--stream-replicas`
//! copies (an existing stream is scaled in place, its messages kept), publishes ride out the
//! loss of the stream's leader, and a flow of 50 workloads rolls out although the leader is
//! SIGKILLed while copies are in flight — and again after that node came back with an empty
//! store and the next leader was killed (so the emptied node had to catch up from its peers to
//! keep a quorum). No function restarts; no image is written by two workers at once.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;
use shared::events::{Payload, WorkloadChanged, WorkloadRef};
use shared::nats::{ConsumerName, STREAM_NAME};
use shared::publish::{EventPublisher, Publisher};
use testbed::cluster::Cluster;
use testbed::function::FunctionProcess;
use testbed::{FaultProxy, Format, ImageSpec, NatsCluster};

/// The bound on anything the tests wait for (a hang, not a timing goal).
const LIMIT: Duration = Duration::from_secs(120);

async fn until<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} within {LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn event(i: usize) -> Payload {
    Payload::WorkloadChanged(WorkloadChanged {
        workload: WorkloadRef {
            kind: shared::events::WorkloadKind::Deployment,
            namespace: "ns".into(),
            name: format!("w{i}"),
        },
        uid: format!("uid-{i}"),
        generation: 1,
        images: Vec::new(),
        pull_secrets: Vec::new(),
    })
}

#[tokio::test]
async fn the_stream_is_replicated_scaled_in_place_and_survives_its_leader() {
    let mut nats = NatsCluster::start(3).await.expect("cluster");
    let js = jetstream::new(
        shared::nats::connect(&nats.url(), "test")
            .await
            .expect("connect"),
    );
    // Created with one copy, as a single-node install would have left it.
    let stream = until("the stream created", || async {
        shared::nats::ensure_stream_with(&js, 1).await.ok()
    })
    .await;
    assert_eq!(stream.cached_info().config.num_replicas, 1);
    shared::nats::ensure_consumer_with(&stream, ConsumerName::Backup, None, 1)
        .await
        .expect("consumer");
    let publisher = Publisher::jetstream(js.clone(), "/test");
    for i in 0..10 {
        publisher.publish(&event(i)).await.expect("publish");
    }
    // Scaled to three in place: same stream, same messages, two followers.
    let mut stream = shared::nats::ensure_stream_with(&js, 3)
        .await
        .expect("scale up");
    let info = stream.info().await.expect("info");
    assert_eq!(info.config.num_replicas, 3);
    assert_eq!(info.state.messages, 10, "scaling kept the messages");
    let consumer = backup_consumer(&stream, 3).await;
    assert_eq!(consumer.cached_info().config.num_replicas, 3);
    until("both followers current", || followers_current(&js)).await;
    // The leader dies; publishing goes on through the election with no duplicate stored.
    let first = leader(&nats, &js).await;
    nats.kill(first);
    for i in 10..20 {
        publisher
            .publish(&event(i))
            .await
            .expect("publish during the election");
    }
    publisher
        .publish(&event(5))
        .await
        .expect("a retried publish");
    let new_leader = leader(&nats, &js).await;
    assert_ne!(new_leader, first);
    let info = js
        .get_stream(STREAM_NAME)
        .await
        .expect("stream")
        .info()
        .await
        .expect("info")
        .clone();
    assert_eq!(info.state.messages, 20, "every event stored once");
    // Scaling back down (the node back) is in place too, and its consumer follows.
    nats.restart(first).await.expect("restart");
    let mut stream = until("scaled down", || async {
        shared::nats::ensure_stream_with(&js, 1).await.ok()
    })
    .await;
    let info = stream.info().await.expect("info").clone();
    assert_eq!((info.config.num_replicas, info.state.messages), (1, 20));
    let consumer = backup_consumer(&stream, 1).await;
    assert_eq!(consumer.cached_info().config.num_replicas, 1);
}

/// The backup consumer with `replicas` copies, retried: the stream's new count reaches the
/// consumers' checks a moment after it changes (the functions bind with retries for this).
async fn backup_consumer(
    stream: &jetstream::stream::Stream,
    replicas: usize,
) -> jetstream::consumer::Consumer<jetstream::consumer::pull::Config> {
    until("the consumer created or scaled", || async {
        shared::nats::ensure_consumer_with(stream, ConsumerName::Backup, None, replicas)
            .await
            .ok()
    })
    .await
}

/// `Some` once the stream has two followers, both current and not lagging.
async fn followers_current(js: &jetstream::Context) -> Option<()> {
    let mut stream = js.get_stream(STREAM_NAME).await.ok()?;
    let info = stream.info().await.ok()?.clone();
    let peers = info.cluster?.replicas;
    (peers.len() == 2 && peers.iter().all(|p| p.current && p.lag.unwrap_or(0) == 0)).then_some(())
}

fn deployment(name: &str, image: &str) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "flow"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "main", "image": image}]}}}
    }))
    .expect("deployment")
}

/// Creates workload `w{n}` on `image.0` (its source) and expects it on `image.1` (its backup).
async fn create(
    api: &Api<Deployment>,
    wanted: &mut HashMap<String, String>,
    n: usize,
    image: &(String, String),
) {
    let name = format!("w{n}");
    api.create(&PostParams::default(), &deployment(&name, &image.0))
        .await
        .expect("create");
    wanted.insert(name, image.1.clone());
}

/// The node leading the stream, once there is one.
async fn leader(cluster: &NatsCluster, js: &jetstream::Context) -> usize {
    until("a stream leader", || cluster.stream_leader(js, STREAM_NAME)).await
}

/// Waits until every workload of `wanted` runs the backup of its image, pinned; fails with the
/// logs otherwise.
async fn all_rolled_out(
    c: &Cluster,
    wanted: &HashMap<String, String>,
    procs: &[FunctionProcess],
    what: &str,
) {
    let api: Api<Deployment> = Api::namespaced(c.client.clone(), "flow");
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let list = api.list(&Default::default()).await.map(|l| l.items);
        let wrong: Vec<String> = list
            .iter()
            .flatten()
            .filter_map(|d| {
                let name = d.metadata.name.clone().unwrap_or_default();
                let image = d.spec.as_ref()?.template.spec.as_ref()?.containers[0]
                    .image
                    .clone()?;
                (wanted.get(&name) != Some(&image)).then(|| format!("{name}: {image}"))
            })
            .collect();
        if wrong.is_empty() && list.as_ref().is_ok_and(|l| l.len() == wanted.len()) {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            let logs: Vec<String> = procs.iter().map(FunctionProcess::log).collect();
            panic!(
                "{what}: {} workloads not on their backups: {wrong:?}\n{}\n{}",
                wrong.len(),
                logs.join("\n"),
                c.nats.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn fifty_workloads_roll_out_through_a_leader_killed_and_a_node_wiped() {
    let mut c = Cluster::start_on_nats_cluster(3).await.expect("cluster");
    // Every write to the backup registry goes through a proxy that logs who wrote when.
    let writes = FaultProxy::start(&c.backup.host())
        .await
        .expect("backup proxy");
    let backup_registry = format!("{}/{}", writes.host(), testbed::cluster::BACKUP_PREFIX);
    let extra = [
        (
            "INSECURE_REGISTRIES",
            format!("{},{}", c.source.host(), writes.host()),
        ),
        ("BACKUP_REGISTRY", backup_registry.clone()),
        ("ACK_WAIT_SECONDS", "5".to_string()),
        ("CLAIM_LEASE_SECONDS", "5".to_string()),
        ("RESYNC_SECONDS", "3600".to_string()),
    ];
    let pusher = c.source_pusher();
    let mut images = Vec::new();
    for i in 0..15 {
        let pushed = pusher
            .push_image(
                &format!("flow/app{i}"),
                "1",
                &ImageSpec::single(Format::Oci, 2, 256 * 1024, 7000 + i as u64),
            )
            .await
            .expect("push");
        let source = format!("{}/flow/app{i}:1", c.source.host());
        let backup = format!(
            "{backup_registry}/{}_flow_app{i}:1@{}",
            c.source.host().replace(':', "__"),
            pushed.digest
        );
        images.push((source, backup));
    }
    let mut procs = Vec::new();
    for kind in ["watcher", "backup", "rollout"] {
        for _ in 0..2 {
            procs.push(c.spawn(kind, &["run"], &extra).await.expect("spawn"));
        }
    }
    c.namespace("flow").await.expect("namespace");
    let api: Api<Deployment> = Api::namespaced(c.client.clone(), "flow");
    let mut wanted = HashMap::new();
    for w in 0..50 {
        create(&api, &mut wanted, w, &images[w % 10]).await;
    }
    // Mid-flow: the first uploads have started; the stream's leader dies.
    until("the first upload", || async {
        writes
            .forwarded()
            .iter()
            .any(|w| w.is_write())
            .then_some(())
    })
    .await;
    let js = c.js.clone();
    let cluster = c.nats.cluster().expect("a NATS cluster");
    let first = leader(cluster, &js).await;
    cluster.kill(first);
    all_rolled_out(&c, &wanted, &procs, "after the leader was killed").await;

    // The killed node comes back with an empty store and catches up; then the leader of the
    // moment dies too, so the stream's quorum needs the node that was emptied.
    let cluster = c.nats.cluster().expect("a NATS cluster");
    cluster.restart_wiped(first).await.expect("wiped restart");
    until("the emptied node current again", || followers_current(&js)).await;
    let cluster = c.nats.cluster().expect("a NATS cluster");
    let second = leader(cluster, &js).await;
    for w in 50..70 {
        create(&api, &mut wanted, w, &images[10 + w % 5]).await;
    }
    cluster.kill(second);
    all_rolled_out(&c, &wanted, &procs, "after the emptied node had to serve").await;

    let overlaps = writes.concurrent_writers();
    assert!(
        overlaps.is_empty(),
        "written by two workers at once: {overlaps:?}"
    );
    for p in &mut procs {
        assert!(p.is_running(), "no function restarts:\n{}", p.log());
        assert!(!p.log().contains("panicked"), "{}", p.log());
    }
}
