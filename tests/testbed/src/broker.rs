//! A minimal Knative-style Broker for testing the `serve` mode locally: it accepts CloudEvents
//! over HTTP (binary or structured mode, as a Broker ingress does), fans each one out to the
//! subscribers whose Trigger filter matches its `type`, retries a subscriber that answers 5xx or
//! 429 (as a Trigger's delivery spec does: 10 attempts, exponential backoff, a `Retry-After`
//! honoured up to 30 s as with `retryAfterMax`), and feeds a subscriber's reply event back in,
//! as Knative's MTChannelBasedBroker does. It keeps every event it accepted and every delivery
//! attempt's answer, for assertions.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use shared::events::{Payload, from_http};

/// A Trigger: events of `event_type` go to `subscriber`.
#[derive(Debug, Clone)]
pub struct Trigger {
    /// The CloudEvent type to match exactly.
    pub event_type: String,
    /// Where to POST them.
    pub subscriber: String,
}

/// One attempt to deliver an event to a subscriber.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The subscriber.
    pub subscriber: String,
    /// The event's type.
    pub event_type: String,
    /// The HTTP status (0: no answer).
    pub status: u16,
    /// The `Retry-After` it asked for, in seconds.
    pub retry_after: Option<u64>,
}

/// The longest `Retry-After` honoured (Knative's `retryAfterMax`).
const RETRY_AFTER_MAX: Duration = Duration::from_secs(30);
/// Delivery attempts per event and subscriber.
const ATTEMPTS: usize = 10;

struct BrokerState {
    triggers: Mutex<Vec<Trigger>>,
    accepted: Mutex<Vec<Payload>>,
    attempts: Mutex<Vec<Attempt>>,
    http: reqwest::Client,
}

/// A running broker; stops when dropped.
pub struct Broker {
    addr: SocketAddr,
    state: Arc<BrokerState>,
    _server: crate::process::ServerTask,
}

impl Broker {
    /// Starts a broker on a free loopback port.
    pub async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(BrokerState {
            triggers: Mutex::new(Vec::new()),
            accepted: Mutex::new(Vec::new()),
            attempts: Mutex::new(Vec::new()),
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(300))
                .build()?,
        });
        let app = {
            let state = state.clone();
            axum::Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
                let state = state.clone();
                async move { ingest(state, headers, body) }
            })
        };
        Ok(Self {
            addr,
            state,
            _server: crate::process::ServerTask::spawn(listener, app),
        })
    }

    /// The ingress URL (what `K_SINK` points at).
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Adds a Trigger.
    pub fn trigger(&self, event_type: &str, subscriber: &str) {
        if let Ok(mut t) = self.state.triggers.lock() {
            t.push(Trigger {
                event_type: event_type.into(),
                subscriber: subscriber.into(),
            });
        }
    }

    /// Every event accepted so far, in order.
    pub fn accepted(&self) -> Vec<Payload> {
        self.state
            .accepted
            .lock()
            .map(|a| a.clone())
            .unwrap_or_default()
    }
}

impl Broker {
    /// Every delivery attempt so far, in order.
    pub fn attempts(&self) -> Vec<Attempt> {
        self.state
            .attempts
            .lock()
            .map(|a| a.clone())
            .unwrap_or_default()
    }
}

/// Accepts one event (202) and delivers it in the background.
fn ingest(state: Arc<BrokerState>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let payload = match from_http(&headers, &body).and_then(|e| Payload::from_cloudevent(&e)) {
        Ok(p) => p,
        Err(_) => return StatusCode::BAD_REQUEST,
    };
    if let Ok(mut a) = state.accepted.lock() {
        a.push(payload.clone());
    }
    let subscribers: Vec<String> = state
        .triggers
        .lock()
        .map(|t| {
            t.iter()
                .filter(|t| t.event_type == payload.event_type())
                .map(|t| t.subscriber.clone())
                .collect()
        })
        .unwrap_or_default();
    for subscriber in subscribers {
        let (state, payload) = (state.clone(), payload.clone());
        tokio::spawn(async move { deliver(state, subscriber, payload).await });
    }
    StatusCode::ACCEPTED
}

/// POSTs to a subscriber with retries ([`ATTEMPTS`], exponential backoff or the answer's
/// `Retry-After`) and feeds a reply back.
async fn deliver(state: Arc<BrokerState>, subscriber: String, payload: Payload) {
    let Ok(binary) = shared::events::to_http_binary(&payload, "/testbed/broker") else {
        return;
    };
    let mut delay = Duration::from_millis(200);
    for _ in 0..ATTEMPTS {
        let mut request = state.http.post(&subscriber).body(binary.body.clone());
        for (k, v) in &binary.headers {
            request = request.header(k.as_str(), v.as_str());
        }
        let answer = request.send().await;
        let (status, retry_after) = match &answer {
            Ok(resp) => (
                resp.status().as_u16(),
                resp.headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok()),
            ),
            Err(_) => (0, None),
        };
        if let Ok(mut a) = state.attempts.lock() {
            a.push(Attempt {
                subscriber: subscriber.clone(),
                event_type: payload.event_type().to_string(),
                status,
                retry_after,
            });
        }
        match answer {
            Ok(resp) if resp.status().is_success() => {
                let headers = resp.headers().clone();
                let body = resp.bytes().await.unwrap_or_default();
                if headers.contains_key("ce-type") {
                    // The reply is a new event: back into the broker.
                    let _ = ingest(state.clone(), headers, body);
                }
                return;
            }
            Ok(resp) if resp.status().is_client_error() && resp.status().as_u16() != 429 => return,
            _ => {
                let wait = retry_after
                    .map(|s| Duration::from_secs(s).min(RETRY_AFTER_MAX))
                    .unwrap_or(delay);
                tokio::time::sleep(wait).await;
                delay = (delay * 2).min(RETRY_AFTER_MAX);
            }
        }
    }
}
