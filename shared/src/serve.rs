//! The `serve` adapter (Knative): the same transport-free [`Handler`] behind an HTTP endpoint
//! that accepts CloudEvents (binary and structured mode) and answers with the produced event in
//! binary mode.
//!
//! Answers: the first produced event as the reply (200), further ones to `K_SINK`; no event:
//! 202. Work that outlives the reply timeout answers 202 and goes on; its events go to
//! `K_SINK` when done (without a sink they are logged and dropped: the cluster state still
//! records them and the resync heals). Work that must be tried again later (an image claimed by
//! another worker, a cache behind the event, a workload not Ready yet) answers 503 with
//! `Retry-After`, its events already sent to `K_SINK`, so the broker redelivers instead of the
//! request being dropped; transient failures answer 503 with a `Retry-After` that grows with
//! each delivery of the same event. An invalid event answers 400. Bodies are capped at 1 MiB.
//!
//! A broker does not say how many times it delivered an event, so the adapter counts the
//! deliveries of each event id it has seen (the last [`DELIVERIES_REMEMBERED`]) and hands the
//! count to the handler as a JetStream redelivery count would be.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::error::Disposition;
use crate::events::{Payload, from_http, to_http_binary};
use crate::handler::{Classified, Delivered, Handler, Outcome};
use crate::publish::{EventPublisher, Publisher};
use crate::shutdown::Shutdown;
use tracing::Instrument as _;

/// The largest request body accepted.
const MAX_BODY: usize = 1024 * 1024;
/// How many event ids the delivery count remembers (the oldest is forgotten first).
pub const DELIVERIES_REMEMBERED: usize = 10_000;
/// The longest `Retry-After` a transient failure asks for.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// How many times each recent event id was delivered, bounded.
#[derive(Default)]
struct Deliveries {
    counts: HashMap<String, u64>,
    order: VecDeque<String>,
}

impl Deliveries {
    /// Counts one more delivery of `id` and returns the count (1 the first time).
    fn seen(&mut self, id: &str) -> u64 {
        if let Some(n) = self.counts.get_mut(id) {
            *n = n.saturating_add(1);
            return *n;
        }
        if self.order.len() >= DELIVERIES_REMEMBERED
            && let Some(oldest) = self.order.pop_front()
        {
            self.counts.remove(&oldest);
        }
        self.order.push_back(id.to_string());
        self.counts.insert(id.to_string(), 1);
        1
    }
}

/// `Retry-After` in whole seconds (at least 1) for `delay`.
fn retry_after_seconds(delay: Duration) -> u64 {
    delay.as_secs() + u64::from(delay.subsec_nanos() > 0)
}

/// A 503 asking the sender to deliver again after `delay`.
fn retry_later(delay: Duration, why: String) -> Response {
    let mut response = (StatusCode::SERVICE_UNAVAILABLE, why).into_response();
    response.headers_mut().insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from(retry_after_seconds(delay).max(1)),
    );
    response
}

/// Settings of the HTTP adapter.
#[derive(Clone)]
pub struct ServeSettings {
    /// Where to listen.
    pub listen: SocketAddr,
    /// How long a request waits for its result before answering 202.
    pub reply_timeout: Duration,
    /// Where late and extra events go (`K_SINK`).
    pub sink: Option<Publisher>,
    /// The CloudEvents `source` of replies.
    pub source: String,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct ServeError {
    /// The address.
    pub addr: SocketAddr,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// Serves until `shutdown` drains; returns the bound address once listening via `bound`.
pub async fn run<H: Handler>(
    handler: H,
    settings: ServeSettings,
    mut shutdown: Shutdown,
    bound: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> Result<(), ServeError> {
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|source| ServeError {
            addr: settings.listen,
            source,
        })?;
    if let (Some(tx), Ok(addr)) = (bound, listener.local_addr()) {
        let _ = tx.send(addr);
    }
    let addr = settings.listen;
    let deliveries = Arc::new(Mutex::new(Deliveries::default()));
    let app = axum::Router::new()
        .fallback(move |headers: HeaderMap, body: Bytes| {
            let (handler, settings) = (handler.clone(), settings.clone());
            let delivered = deliveries.clone();
            async move { receive(handler, settings, delivered, headers, body).await }
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY));
    let stop = async move { shutdown.wait().await };
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
        .map_err(|source| ServeError { addr, source })
}

async fn receive<H: Handler>(
    handler: H,
    settings: ServeSettings,
    deliveries: Arc<Mutex<Deliveries>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let payload = match from_http(&headers, &body).and_then(|e| Payload::from_cloudevent(&e)) {
        Ok(p) => p,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let delivered = deliveries
        .lock()
        .map(|mut d| d.seen(payload.id().as_str()))
        .unwrap_or(1);
    let span = tracing::info_span!("event", subject = %payload.subject(), event_id = %payload.id(), delivered);
    let Some(event) = H::accept(payload) else {
        // Not for this function: nothing to do, nothing to send back.
        return StatusCode::ACCEPTED.into_response();
    };
    let mut work = tokio::spawn(
        async move { handler.handle(event, Delivered(delivered)).await }.instrument(span),
    );
    match tokio::time::timeout(settings.reply_timeout, &mut work).await {
        Ok(Ok(Ok(outcome))) => match outcome.retry_after {
            // Part of the work is for later: every event goes to the sink (a 503's body is
            // not a reply) and the broker is asked to deliver again.
            Some(delay) => {
                send_all(&outcome.events, settings.sink.as_ref()).await;
                retry_later(delay, "part of the work is to be retried".into())
            }
            None => reply(outcome, &settings).await,
        },
        Ok(Ok(Err(e))) => match e.class().disposition() {
            Disposition::Transient => retry_later(
                crate::delivery::redelivery_delay(delivered, MAX_RETRY_AFTER),
                e.to_string(),
            ),
            Disposition::Permanent => StatusCode::ACCEPTED.into_response(),
            Disposition::Invalid => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
        },
        Ok(Err(join)) => (StatusCode::INTERNAL_SERVER_ERROR, join.to_string()).into_response(),
        Err(_) => {
            // Outlived the reply timeout: answer now, send the result to the sink later.
            let sink = settings.sink.clone();
            tokio::spawn(async move {
                if let Ok(Ok(outcome)) = work.await {
                    send_all(&outcome.events, sink.as_ref()).await;
                    if outcome.retry_after.is_some() {
                        tracing::info!(
                            "a retry was asked after the reply was sent; the resync takes it up"
                        );
                    }
                }
            });
            StatusCode::ACCEPTED.into_response()
        }
    }
}

async fn reply(outcome: Outcome, settings: &ServeSettings) -> Response {
    let mut events = outcome.events.into_iter();
    let Some(first) = events.next() else {
        return StatusCode::ACCEPTED.into_response();
    };
    let rest: Vec<Payload> = events.collect();
    send_all(&rest, settings.sink.as_ref()).await;
    match to_http_binary(&first, &settings.source) {
        Ok(binary) => {
            let mut response = Response::new(axum::body::Body::from(binary.body));
            for (k, v) in binary.headers {
                if let (Ok(k), Ok(v)) = (
                    http::HeaderName::from_bytes(k.as_bytes()),
                    http::HeaderValue::from_str(&v),
                ) {
                    response.headers_mut().insert(k, v);
                }
            }
            response
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn send_all(events: &[Payload], sink: Option<&Publisher>) {
    for event in events {
        match sink {
            Some(sink) => {
                if let Err(e) = sink.publish(event).await {
                    tracing::warn!(error = %e, subject = %event.subject(), "event not delivered to the sink");
                }
            }
            None => tracing::info!(subject = %event.subject(), "no K_SINK: event not forwarded"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorClass;
    use crate::events::{WorkloadChanged, WorkloadKind, WorkloadRef};

    #[derive(Debug)]
    struct Failed(ErrorClass);

    impl std::fmt::Display for Failed {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "failed: {}", self.0)
        }
    }

    impl Classified for Failed {
        fn class(&self) -> ErrorClass {
            self.0
        }
    }

    /// Answers each event as told, recording the delivery count it was given.
    #[derive(Clone)]
    struct Fake {
        answer: Arc<dyn Fn() -> Result<Outcome, Failed> + Send + Sync>,
        delivered: Arc<Mutex<Vec<u64>>>,
    }

    impl Handler for Fake {
        type Event = Payload;
        type Error = Failed;

        fn accept(payload: Payload) -> Option<Payload> {
            Some(payload)
        }

        async fn handle(&self, _event: Payload, delivered: Delivered) -> Result<Outcome, Failed> {
            if let Ok(mut d) = self.delivered.lock() {
                d.push(delivered.0);
            }
            (self.answer)()
        }
    }

    fn event(name: &str) -> Payload {
        Payload::WorkloadChanged(WorkloadChanged {
            workload: WorkloadRef {
                kind: WorkloadKind::Deployment,
                namespace: "shop".into(),
                name: name.into(),
            },
            uid: format!("uid-{name}"),
            generation: 1,
            images: Vec::new(),
            pull_secrets: Vec::new(),
        })
    }

    /// Serves `fake` on a free port; POSTs are sent with [`post`].
    async fn serve(fake: Fake) -> (SocketAddr, crate::shutdown::Trigger) {
        let (trigger, shutdown) = Shutdown::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let settings = ServeSettings {
            listen: "127.0.0.1:0".parse().unwrap(),
            reply_timeout: Duration::from_secs(5),
            sink: None,
            source: "/test".into(),
        };
        tokio::spawn(run(fake, settings, shutdown, Some(tx)));
        (rx.await.unwrap(), trigger)
    }

    async fn post(addr: SocketAddr, payload: &Payload) -> reqwest::Response {
        let binary = to_http_binary(payload, "/test").unwrap();
        crate::tls::ensure_crypto_provider();
        let mut request = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .post(format!("http://{addr}/"))
            .body(binary.body);
        for (k, v) in binary.headers {
            request = request.header(k, v);
        }
        request.send().await.unwrap()
    }

    fn retry_after(r: &reqwest::Response) -> Option<u64> {
        r.headers()
            .get(http::header::RETRY_AFTER)?
            .to_str()
            .ok()?
            .parse()
            .ok()
    }

    #[tokio::test]
    async fn work_for_later_asks_the_broker_to_redeliver_and_counts_deliveries() {
        let delivered = Arc::new(Mutex::new(Vec::new()));
        let fake = Fake {
            answer: Arc::new(|| {
                Ok(Outcome {
                    events: Vec::new(),
                    retry_after: Some(Duration::from_millis(1500)),
                })
            }),
            delivered: delivered.clone(),
        };
        let (addr, _stop) = serve(fake).await;
        let (web, api) = (event("web"), event("api"));
        for _ in 0..3 {
            let r = post(addr, &web).await;
            assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(retry_after(&r), Some(2), "rounded up to whole seconds");
        }
        post(addr, &api).await;
        assert_eq!(*delivered.lock().unwrap(), [1, 2, 3, 1]);
    }

    #[tokio::test]
    async fn transient_failures_back_off_and_the_rest_answer_as_before() {
        let class = Arc::new(Mutex::new(ErrorClass::Unavailable));
        let fake = Fake {
            answer: {
                let class = class.clone();
                Arc::new(move || Err(Failed(*class.lock().unwrap())))
            },
            delivered: Arc::default(),
        };
        let (addr, _stop) = serve(fake).await;
        let web = event("web");
        let waits: Vec<Option<u64>> = {
            let mut w = Vec::new();
            for _ in 0..4 {
                let r = post(addr, &web).await;
                assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
                w.push(retry_after(&r));
            }
            w
        };
        assert_eq!(waits, [Some(1), Some(2), Some(4), Some(8)]);
        *class.lock().unwrap() = ErrorClass::Unauthorized;
        let r = post(addr, &event("db")).await;
        assert_eq!(
            r.status(),
            StatusCode::ACCEPTED,
            "permanent: recorded, not retried"
        );
        assert!(retry_after(&r).is_none());
        *class.lock().unwrap() = ErrorClass::Invalid;
        assert_eq!(
            post(addr, &event("x")).await.status(),
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn the_delivery_count_is_bounded() {
        let mut d = Deliveries::default();
        for i in 0..DELIVERIES_REMEMBERED + 10 {
            assert_eq!(d.seen(&format!("id-{i}")), 1);
        }
        assert_eq!(d.counts.len(), DELIVERIES_REMEMBERED);
        assert_eq!(d.seen("id-0"), 1, "the oldest was forgotten");
        assert_eq!(d.seen(&format!("id-{}", DELIVERIES_REMEMBERED + 9)), 2);
    }
}
