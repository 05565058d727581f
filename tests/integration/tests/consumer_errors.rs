//! The JetStream adapter's error paths that used to strand a message, on a real nats-server: a
//! handler that panics must not leave its heartbeat keeping the message alive forever (it is
//! redelivered after the ack wait, and handled).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use shared::consumer::ConsumerSettings;
use shared::events::Payload;
use shared::handler::{Classified, Delivered, Handler, Outcome};
use shared::publish::{JetStreamPublisher, PublishRetry, Publisher};
use testbed::NatsServer;

/// The bound on anything the tests wait for (a hang, not a timing goal).
const LIMIT: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Never;

impl std::fmt::Display for Never {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("never")
    }
}

impl Classified for Never {
    fn class(&self) -> shared::ErrorClass {
        shared::ErrorClass::Internal
    }
}

/// Panics on the first delivery of each event, handles the later ones; counts calls.
#[derive(Clone, Default)]
struct PanicsFirst {
    calls: Arc<AtomicU64>,
}

impl Handler for PanicsFirst {
    type Event = Payload;
    type Error = Never;

    fn accept(payload: Payload) -> Option<Payload> {
        Some(payload)
    }

    async fn handle(&self, _event: Payload, delivered: Delivered) -> Result<Outcome, Never> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if !delivered.is_redelivery() {
            // Long enough that the heartbeat has started before the crash.
            tokio::time::sleep(Duration::from_millis(700)).await;
            panic!("handler crashed on purpose");
        }
        Ok(Outcome::default())
    }
}

async fn consumer_of(
    js: &jetstream::Context,
    ack_wait: Duration,
) -> jetstream::consumer::PullConsumer {
    let stream = shared::nats::ensure_stream(js).await.expect("stream");
    shared::nats::ensure_consumer_with(
        &stream,
        shared::nats::ConsumerName::Backup,
        Some(ack_wait),
        1,
    )
    .await
    .expect("consumer")
}

fn settings(ack_wait: Duration) -> ConsumerSettings {
    ConsumerSettings {
        concurrency: 2,
        ack_wait,
        max_redelivery_delay: Duration::from_secs(1),
    }
}

fn publisher(js: &jetstream::Context) -> Publisher {
    Publisher::JetStream(JetStreamPublisher::new(
        shared::nats::Publisher::new(js.clone(), "/test"),
        PublishRetry::default(),
    ))
}

#[tokio::test]
async fn a_handler_that_panics_stops_its_heartbeat_and_the_message_comes_back() {
    let nats = NatsServer::start().await.expect("nats");
    let js = jetstream::new(shared::nats::connect(&nats.url(), "t").await.expect("nats"));
    let ack_wait = Duration::from_secs(2);
    let consumer = consumer_of(&js, ack_wait).await;
    let handler = PanicsFirst::default();
    let calls = handler.calls.clone();
    let (trigger, shutdown) = shared::shutdown::Shutdown::new();
    let run = tokio::spawn(shared::consumer::run(
        consumer,
        js.clone(),
        handler,
        publisher(&js),
        settings(ack_wait),
        shutdown,
    ));
    let event = Payload::WorkloadChanged(shared::events::WorkloadChanged {
        workload: shared::events::WorkloadRef {
            kind: shared::events::WorkloadKind::Deployment,
            namespace: "shop".into(),
            name: "web".into(),
        },
        uid: "u".into(),
        generation: 1,
        images: Vec::new(),
        pull_secrets: Vec::new(),
    });
    shared::nats::Publisher::new(js.clone(), "/test")
        .publish(&event)
        .await
        .expect("publish");
    // First delivery panics; with the heartbeat stopped, the ack wait (2 s) runs out and the
    // message is delivered again, and handled.
    let deadline = tokio::time::Instant::now() + LIMIT;
    while calls.load(Ordering::SeqCst) < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never redelivered after the handler panicked"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    trigger.start();
    let _ = tokio::time::timeout(LIMIT, run).await;
}

/// The rollout reports ready only once its consumer is bound: while a push consumer squats on
/// its durable name (a pull consumer cannot replace it), it stays unready and keeps trying —
/// it used to report ready first and then exit on the error — and it becomes ready as soon as
/// the name is free.
#[tokio::test]
async fn the_rollout_is_ready_only_once_its_consumer_is_bound() {
    let c = testbed::cluster::Cluster::start().await.expect("cluster");
    let stream =
        c.js.get_stream(shared::nats::STREAM_NAME)
            .await
            .expect("stream");
    stream
        .create_consumer(jetstream::consumer::push::Config {
            durable_name: Some("rollout".into()),
            deliver_subject: "squatter.inbox".into(),
            ..Default::default()
        })
        .await
        .expect("push consumer");
    let mut env = c.env();
    env.push(("RESYNC_SECONDS", "3600".into()));
    let mut rollout =
        testbed::function::FunctionProcess::spawn("rollout", &["run".into()], &env).expect("spawn");
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut answered = false;
    while tokio::time::Instant::now() < until {
        if let Some((status, _)) = rollout.admin_get("/readyz").await {
            answered = true;
            assert_ne!(status, 200, "ready without a consumer:\n{}", rollout.log());
        }
        assert!(rollout.is_running(), "it gave up:\n{}", rollout.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        answered,
        "the admin server answers meanwhile:\n{}",
        rollout.log()
    );
    assert!(
        rollout.log().contains("consumer not ready"),
        "{}",
        rollout.log()
    );
    stream.delete_consumer("rollout").await.expect("delete");
    rollout
        .wait_ready(LIMIT)
        .await
        .expect("ready once the consumer is bound");
}
