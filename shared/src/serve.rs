//! The `serve` adapter (Knative): the same transport-free [`Handler`] behind an HTTP endpoint
//! that accepts CloudEvents (binary and structured mode) and answers with the produced event in
//! binary mode.
//!
//! Answers: the first produced event as the reply (200), further ones to `K_SINK`; no event:
//! 202. Work that outlives the reply timeout answers 202 and goes on; its events go to
//! `K_SINK` when done (without a sink they are logged and dropped: the cluster state still
//! records them and the resync heals). A request that must be retried later (e.g. the image is
//! claimed by another worker) answers 202 and waits for nothing. Transient failures answer 503
//! so the broker redelivers; an invalid event answers 400. Bodies are capped at 1 MiB.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::consumer::{Classified, Handler, Outcome};
use crate::error::Disposition;
use crate::events::{Payload, from_http, to_http_binary};
use crate::publish::{EventPublisher, Publisher};
use crate::shutdown::Shutdown;
use tracing::Instrument as _;

/// The largest request body accepted.
const MAX_BODY: usize = 1024 * 1024;

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
    let app = axum::Router::new()
        .fallback(move |headers: HeaderMap, body: Bytes| {
            let (handler, settings) = (handler.clone(), settings.clone());
            async move { receive(handler, settings, headers, body).await }
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
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let payload = match from_http(&headers, &body).and_then(|e| Payload::from_cloudevent(&e)) {
        Ok(p) => p,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let span = tracing::info_span!("event", subject = %payload.subject(), event_id = %payload.id());
    let mut work = tokio::spawn(async move { handler.handle(payload, 1).await }.instrument(span));
    match tokio::time::timeout(settings.reply_timeout, &mut work).await {
        Ok(Ok(Ok(outcome))) => reply(outcome, &settings).await,
        Ok(Ok(Err(e))) => match e.class().disposition() {
            Disposition::Transient => {
                (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response()
            }
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
