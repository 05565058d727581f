//! JetStream through our definitions and CloudEvents binding, on a real nats-server.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use shared::events::{
    Payload, WorkloadChanged, WorkloadImage, WorkloadKind, WorkloadRef, from_nats_message,
};
use shared::nats::{ConsumerName, Publisher, ensure_consumer, ensure_stream};
use testbed::NatsServer;

/// A workload change; each generation runs another image (a generation bump alone is the same
/// change, deduplicated by `Nats-Msg-Id`).
fn changed(generation: i64) -> Payload {
    Payload::WorkloadChanged(WorkloadChanged {
        workload: WorkloadRef {
            kind: WorkloadKind::Deployment,
            namespace: "default".into(),
            name: "nginx".into(),
        },
        uid: "uid-1".into(),
        generation,
        images: vec![WorkloadImage {
            container: "nginx".into(),
            init: false,
            source: format!("docker.io/library/nginx:1.14.{generation}"),
            target: format!("localhost:5000/library_nginx:1.14.{generation}"),
        }],
        pull_secrets: Vec::new(),
    })
}

#[tokio::test]
async fn server_meets_the_minimum_version() {
    let server = NatsServer::start().await.expect("nats-server");
    let client = shared::nats::connect(&server.url(), "test")
        .await
        .expect("connect");
    shared::nats::check_server_version(&client.server_info().version).expect("version");
    assert!(shared::nats::check_server_version("2.9.10").is_err());
}

#[tokio::test]
async fn publish_and_consume_a_cloudevent_through_the_binding() {
    let server = NatsServer::start().await.expect("nats-server");
    let client = shared::nats::connect(&server.url(), "test")
        .await
        .expect("connect");
    let js = jetstream::new(client);
    let stream = ensure_stream(&js).await.expect("stream");
    // Idempotent: a second start-up finds everything in place.
    let stream = {
        drop(stream);
        ensure_stream(&js).await.expect("stream again")
    };
    let consumer = ensure_consumer(&stream, ConsumerName::Backup)
        .await
        .expect("consumer");
    ensure_consumer(&stream, ConsumerName::Backup)
        .await
        .expect("consumer again");
    ensure_consumer(&stream, ConsumerName::Rollout)
        .await
        .expect("rollout consumer");

    let publisher = Publisher::new(js.clone(), "/image-backup/test");
    let first = publisher.publish(&changed(1)).await.expect("publish");
    assert!(!first.duplicate);
    // The same fact published again (a retry, a resync) is stored once.
    let again = publisher.publish(&changed(1)).await.expect("publish again");
    assert!(again.duplicate);
    publisher.publish(&changed(2)).await.expect("publish gen 2");

    let mut messages = consumer.messages().await.expect("messages");
    let mut seen = Vec::new();
    for _ in 0..2 {
        let msg = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .expect("a message within 5 s")
            .expect("stream open")
            .expect("message");
        let event = from_nats_message(msg.headers.as_ref(), &msg.payload).expect("a CloudEvent");
        let payload = Payload::from_cloudevent(&event).expect("our payload");
        seen.push(payload);
        msg.ack_with(AckKind::Ack).await.expect("ack");
    }
    assert_eq!(seen, vec![changed(1), changed(2)]);
    let info = stream.get_info().await.expect("info");
    assert_eq!(info.state.messages, 2);
}

#[tokio::test]
async fn a_drifted_stream_and_consumer_are_updated_to_the_definitions() {
    let server = NatsServer::start().await.expect("nats-server");
    let client = shared::nats::connect(&server.url(), "test")
        .await
        .expect("connect");
    let js = jetstream::new(client);
    // Someone created them by hand with other settings.
    let mut drifted = shared::nats::stream_config().expect("definition");
    drifted.max_age = Duration::from_secs(3600);
    drifted.duplicate_window = Duration::from_secs(10);
    let stream = js
        .create_stream(drifted)
        .await
        .expect("create drifted stream");
    let mut consumer = shared::nats::consumer_config(ConsumerName::Backup).expect("definition");
    consumer.ack_wait = Duration::from_secs(5);
    stream
        .create_consumer(consumer)
        .await
        .expect("create drifted consumer");

    let mut stream = ensure_stream(&js).await.expect("stream");
    let want = shared::nats::stream_config().expect("definition");
    let info = stream.info().await.expect("info");
    assert_eq!(
        (info.config.max_age, info.config.duplicate_window),
        (want.max_age, want.duplicate_window)
    );
    let mut consumer = ensure_consumer(&stream, ConsumerName::Backup)
        .await
        .expect("consumer");
    let want = shared::nats::consumer_config(ConsumerName::Backup).expect("definition");
    assert_eq!(
        consumer.info().await.expect("info").config.ack_wait,
        want.ack_wait
    );
}

#[tokio::test]
async fn rollout_consumer_sees_completed_and_changed_events() {
    let server = NatsServer::start().await.expect("nats-server");
    let client = shared::nats::connect(&server.url(), "test")
        .await
        .expect("connect");
    let js = jetstream::new(client);
    let stream = ensure_stream(&js).await.expect("stream");
    let consumer = ensure_consumer(&stream, ConsumerName::Rollout)
        .await
        .expect("consumer");
    let publisher = Publisher::new(js.clone(), "/image-backup/test");
    publisher.publish(&changed(1)).await.expect("publish");
    let completed = Payload::ImageCompleted(shared::events::ImageCompleted {
        name: "ib-0123456789abcdef".into(),
        source: "docker.io/library/nginx:1.14.0".into(),
        target: "localhost:5000/library_nginx:1.14.0".into(),
        digest: format!("sha256:{}", "a".repeat(64)),
        platforms: vec!["linux/amd64".into()],
        bytes: 10,
        duration_seconds: 0.5,
    });
    publisher.publish(&completed).await.expect("publish");
    let batch = consumer
        .fetch()
        .max_messages(10)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .expect("fetch");
    let subjects: Vec<String> = batch
        .filter_map(|m| async move { m.ok().map(|m| m.subject.to_string()) })
        .collect()
        .await;
    assert_eq!(
        subjects,
        vec![
            "imagebackup.workload.changed.default.deployment.nginx".to_string(),
            "imagebackup.image.completed.ib-0123456789abcdef".to_string()
        ]
    );
}
