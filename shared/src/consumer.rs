//! The `run` adapter: a durable JetStream pull consumer driving a transport-free [`Handler`].
//!
//! Each message is decoded inside the loop; one that is not one of our events goes to
//! `imagebackup.deadletter.<reason>` (original headers and body kept, the reason in a header)
//! and is terminated, and the loop carries on. Each decoded event takes a semaphore permit (the
//! process's bound on concurrent work), runs in its own task and span, and is kept alive with
//! in-progress signals every third of the ack wait. The handler's output events are published
//! (and acknowledged by the stream) **before** the input is acked, so a crash in between
//! redelivers the input instead of losing the output. Errors decide the acknowledgement by
//! class: transient → Nak with a delay that grows with the delivery count; permanent → Ack (the
//! handler recorded the failure); invalid → dead-letter and Term.
//!
//! Shutdown: the first signal stops pulling; in-flight work finishes; then `run` returns.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer};
use futures::StreamExt;
use tracing::Instrument as _;

use crate::delivery::{Delivery, redelivery_delay};
use crate::error::Disposition;
use crate::events::{DEADLETTER_PREFIX, Payload, from_nats_message};
use crate::handler::{Classified as _, Delivered, Handler};
use crate::publish::{EventPublisher, Publisher};
use crate::shutdown::Shutdown;

/// How long a quiet pull subscription is kept before it is renewed.
const IDLE_RESUBSCRIBE: Duration = Duration::from_secs(20);

/// Settings of the adapter.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// Events handled at once by this process.
    pub concurrency: usize,
    /// The consumer's ack wait (in-progress is sent every third of it).
    pub ack_wait: Duration,
    /// The longest Nak delay.
    pub max_redelivery_delay: Duration,
}

/// Why the adapter could not run.
#[derive(Debug, thiserror::Error)]
#[error("cannot pull from consumer {consumer}: {message}")]
pub struct ConsumerError {
    /// The durable name.
    pub consumer: String,
    /// Why.
    pub message: String,
}

/// Pulls and handles messages until `shutdown` drains (see the module docs).
pub async fn run<H: Handler>(
    consumer: PullConsumer,
    js: jetstream::Context,
    handler: H,
    publisher: Publisher,
    settings: ConsumerSettings,
    mut shutdown: Shutdown,
) -> Result<(), ConsumerError> {
    let name = consumer.cached_info().name.clone();
    let mut messages = consumer.messages().await.map_err(|e| ConsumerError {
        consumer: name.clone(),
        message: e.to_string(),
    })?;
    let permits = Arc::new(tokio::sync::Semaphore::new(settings.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            biased;
            _ = shutdown.wait() => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let message = tokio::select! {
            biased;
            _ = shutdown.wait() => break,
            m = tokio::time::timeout(IDLE_RESUBSCRIBE, messages.next()) => m,
        };
        let message = match message {
            // Quiet for a while: pull afresh. After a server restart a pull subscription can
            // stay silent without an error; a new one costs one request.
            Err(_) => {
                drop(permit);
                match resubscribe(&consumer, &name, &mut shutdown).await {
                    Some(m) => messages = m,
                    None => break,
                }
                continue;
            }
            Ok(m) => m,
        };
        let message = match message {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                tracing::warn!(consumer = %name, error = %e, "pull failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            None => {
                tracing::warn!(consumer = %name, "message stream ended; re-subscribing");
                match resubscribe(&consumer, &name, &mut shutdown).await {
                    Some(m) => messages = m,
                    None => break,
                }
                continue;
            }
        };
        let (handler, publisher, js, settings) = (
            handler.clone(),
            publisher.clone(),
            js.clone(),
            settings.clone(),
        );
        tasks.spawn(async move {
            handle_one(message, &handler, &publisher, &js, &settings).await;
            drop(permit);
        });
        // Reap finished tasks so the set does not grow.
        while tasks.try_join_next().is_some() {}
    }
    tracing::info!(consumer = %name, in_flight = tasks.len(), "draining");
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// A new pull subscription, retried with a pause while the server is unreachable (never an
/// exit: a function outlives its NATS server's restarts); `None` once shutdown drains.
async fn resubscribe(
    consumer: &PullConsumer,
    name: &str,
    shutdown: &mut Shutdown,
) -> Option<jetstream::consumer::pull::Stream> {
    let mut pause = Duration::from_millis(500);
    loop {
        match consumer.messages().await {
            Ok(m) => return Some(m),
            Err(e) => {
                tracing::warn!(consumer = %name, error = %e, retry_in = ?pause, "cannot pull; retrying")
            }
        }
        tokio::select! {
            _ = shutdown.wait() => return None,
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(10));
    }
}

async fn handle_one<H: Handler>(
    message: jetstream::Message,
    handler: &H,
    publisher: &Publisher,
    js: &jetstream::Context,
    settings: &ConsumerSettings,
) {
    let decoded = from_nats_message(message.headers.as_ref(), &message.payload)
        .and_then(|e| Payload::from_cloudevent(&e));
    let payload = match decoded {
        Ok(p) => p,
        Err(e) => {
            let mut delivery = Delivery::new(message.clone(), ());
            let backoff = redelivery_delay(delivery.delivered, settings.max_redelivery_delay);
            if dead_letter(js, &message, "undecodable", &e.to_string()).await {
                delivery.term().await;
            } else {
                // Never Term what is not kept elsewhere: it comes back and is tried again.
                delivery.nak(backoff).await;
            }
            return;
        }
    };
    let mut delivery = Delivery::new(message.clone(), payload.clone());
    let span = tracing::info_span!(
        "event",
        subject = %delivery.subject,
        event_id = %payload.id(),
        delivered = delivery.delivered
    );
    async {
        let Some(event) = H::accept(payload.clone()) else {
            tracing::debug!("not an event this function takes; acknowledged");
            delivery.ack().await;
            return;
        };
        // Aborted when dropped: also when the handler panics, so a crashed handler's message
        // stops being kept alive and is redelivered after the ack wait.
        let heartbeat = delivery.progress_handle().map(|h| {
            let every = (settings.ack_wait / 3).max(Duration::from_millis(100));
            AbortOnDrop(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    h.in_progress().await;
                }
            }))
        });
        let result = handler
            .handle(event, Delivered(delivery.delivered))
            .await;
        drop(heartbeat);
        let backoff = redelivery_delay(delivery.delivered, settings.max_redelivery_delay);
        match result {
            Ok(outcome) => {
                for event in &outcome.events {
                    if let Err(e) = publisher.publish(event).await {
                        tracing::warn!(error = %e, subject = %event.subject(), "output not published; the input will be redelivered");
                        delivery.nak(backoff).await;
                        return;
                    }
                }
                match outcome.retry_after {
                    Some(delay) => delivery.nak(delay).await,
                    None => delivery.ack().await,
                }
            }
            Err(e) => match e.class().disposition() {
                Disposition::Transient => {
                    tracing::info!(error = %e, class = %e.class(), retry_in = ?backoff, "transient failure; will retry");
                    delivery.nak(backoff).await;
                }
                Disposition::Permanent => {
                    tracing::warn!(error = %e, class = %e.class(), "permanent failure recorded");
                    delivery.ack().await;
                }
                Disposition::Invalid => {
                    if dead_letter(js, &message, "invalid", &e.to_string()).await {
                        delivery.term().await;
                    } else {
                        delivery.nak(backoff).await;
                    }
                }
            },
        }
    }
    .instrument(span)
    .await;
}

/// A task aborted when this is dropped (a `JoinHandle` alone lets it run on).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Copies a message that cannot be handled to `imagebackup.deadletter.<reason>`, with the
/// original subject and the reason in headers. True only once the stream acknowledged the copy:
/// then, and only then, may the original be terminated.
async fn dead_letter(
    js: &jetstream::Context,
    message: &jetstream::Message,
    reason: &str,
    why: &str,
) -> bool {
    let subject = format!("{DEADLETTER_PREFIX}{reason}");
    let original = message.headers.clone().unwrap_or_default();
    // Copied without the original's Nats-Msg-Id: the stream would drop the copy as a
    // duplicate of the message it copies.
    let mut headers = async_nats::HeaderMap::new();
    for (name, values) in original.iter() {
        if name.to_string().eq_ignore_ascii_case("Nats-Msg-Id") {
            continue;
        }
        for v in values {
            headers.append(name.clone(), v.clone());
        }
    }
    if let Some(id) = original.get("Nats-Msg-Id") {
        headers.insert("Nats-Msg-Id", format!("deadletter/{id}").as_str());
    }
    let clean = |s: &str| -> String { s.chars().filter(|c| !c.is_control()).take(500).collect() };
    headers.insert(
        "Imagebackup-Original-Subject",
        clean(&message.subject).as_str(),
    );
    headers.insert("Imagebackup-Deadletter-Reason", clean(why).as_str());
    tracing::warn!(subject = %message.subject, reason, error = why, "dead-lettered");
    let sent = tokio::time::timeout(
        crate::nats::REQUEST_TIMEOUT,
        js.publish_with_headers(subject, headers, message.payload.clone()),
    )
    .await;
    let stored = match sent {
        Ok(Ok(ack)) => matches!(
            tokio::time::timeout(crate::nats::REQUEST_TIMEOUT, ack.into_future()).await,
            Ok(Ok(_))
        ),
        _ => false,
    };
    if !stored {
        tracing::warn!(subject = %message.subject, "the dead letter was not stored; the message will be redelivered");
    }
    stored
}
