//! Where events go: one [`EventPublisher`] trait with two implementations, chosen at start-up.
//!
//! - [`JetStreamPublisher`]: binary-mode CloudEvents on the `IMAGEBACKUP` stream with
//!   `Nats-Msg-Id` set to the event id, awaiting the PubAck; retried with backoff. An `Ok` means
//!   stored (or recognised as a duplicate of a stored message) — the delivery guarantee the
//!   functions build on.
//! - [`HttpSink`]: POSTs the CloudEvent in binary mode to `--sink URL` / `K_SINK` (what Knative's
//!   SinkBinding injects); 5xx, 429 and transport errors are retried with backoff, other answers
//!   are final. An `Ok` means the sink answered 2xx.
//!
//! [`Publisher`] is the enum a function holds, so handlers stay generic over nothing.

use std::time::Duration;

use rand::Rng as _;

use crate::events::Payload;
use crate::nats::NatsError;

/// What a successful publish achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// Stored (JetStream) or accepted (HTTP sink).
    Stored,
    /// JetStream already held a message with this id (within the duplicate window).
    Duplicate,
}

/// Why an event could not be published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// JetStream did not store it (unreachable, no ack in time, stream error) after retries.
    #[error("JetStream publish failed after {attempts} attempts: {source}")]
    JetStream {
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        #[source]
        source: NatsError,
    },
    /// The HTTP sink failed with a retryable answer or transport error after retries.
    #[error("sink {sink} unavailable after {attempts} attempts: {cause}")]
    SinkUnavailable {
        /// The sink URL (credentials redacted).
        sink: String,
        /// Attempts made.
        attempts: u32,
        /// The last cause.
        cause: String,
    },
    /// The HTTP sink refused the event (a 4xx other than 429): retrying will not help.
    #[error("sink {sink} refused the event with HTTP {status}")]
    SinkRefused {
        /// The sink URL (credentials redacted).
        sink: String,
        /// The status.
        status: u16,
    },
    /// The event could not be encoded.
    #[error(transparent)]
    Event(#[from] crate::events::EventError),
}

/// Publishes events. Implementations document their delivery guarantee.
pub trait EventPublisher: Send + Sync {
    /// Publishes one event; `Ok` only once the event is safely handed over.
    fn publish(
        &self,
        payload: &Payload,
    ) -> impl Future<Output = Result<Published, PublishError>> + Send;
}

/// Backoff between publish attempts.
#[derive(Debug, Clone)]
pub struct PublishRetry {
    /// Attempts in all.
    pub attempts: u32,
    /// First delay, doubled each attempt, with jitter.
    pub base_delay: Duration,
    /// Longest delay.
    pub max_delay: Duration,
}

impl Default for PublishRetry {
    fn default() -> Self {
        Self {
            attempts: 3,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(2),
        }
    }
}

impl PublishRetry {
    /// For JetStream: long enough to ride out a stream leader election in a NATS cluster (a
    /// few seconds without a leader) — 8 attempts, 250 ms doubling to 4 s, about 8–16 s in
    /// all. Retried publishes carry the same `Nats-Msg-Id`, so none is stored twice.
    pub fn jetstream() -> Self {
        Self {
            attempts: 8,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(4),
        }
    }

    fn delay(&self, attempt: u32) -> Duration {
        let exp = self.base_delay.saturating_mul(1u32 << attempt.min(16));
        exp.min(self.max_delay)
            .mul_f64(rand::rng().random_range(0.5..=1.0))
    }
}

/// JetStream with retries (see the module docs).
#[derive(Clone)]
pub struct JetStreamPublisher {
    inner: crate::nats::Publisher,
    retry: PublishRetry,
}

impl JetStreamPublisher {
    /// Wraps the stream publisher with `retry`.
    pub fn new(inner: crate::nats::Publisher, retry: PublishRetry) -> Self {
        Self { inner, retry }
    }
}

impl EventPublisher for JetStreamPublisher {
    async fn publish(&self, payload: &Payload) -> Result<Published, PublishError> {
        let mut attempt = 0;
        loop {
            match self.inner.publish(payload).await {
                Ok(ack) if ack.duplicate => return Ok(Published::Duplicate),
                Ok(_) => return Ok(Published::Stored),
                Err(NatsError::Event(e)) => return Err(PublishError::Event(e)),
                Err(source) => {
                    attempt += 1;
                    if attempt >= self.retry.attempts {
                        return Err(PublishError::JetStream {
                            attempts: attempt,
                            source,
                        });
                    }
                    tracing::debug!(error = %source, attempt, "publish failed; retrying");
                    tokio::time::sleep(self.retry.delay(attempt - 1)).await;
                }
            }
        }
    }
}

/// An HTTP CloudEvents sink (see the module docs).
#[derive(Clone)]
pub struct HttpSink {
    http: reqwest::Client,
    url: url::Url,
    shown: String,
    source: String,
    retry: PublishRetry,
}

impl HttpSink {
    /// A sink at `url`; `source` is the CloudEvents source of our events.
    pub fn new(url: url::Url, source: impl Into<String>, retry: PublishRetry) -> Self {
        crate::tls::ensure_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(10))
            .no_proxy()
            .build()
            .unwrap_or_default();
        Self {
            shown: crate::secret::redact_urls(url.as_str()),
            http,
            url,
            source: source.into(),
            retry,
        }
    }
}

impl EventPublisher for HttpSink {
    async fn publish(&self, payload: &Payload) -> Result<Published, PublishError> {
        let request = crate::events::to_http_binary(payload, &self.source)?;
        let mut attempt = 0;
        loop {
            let mut builder = self.http.post(self.url.clone()).body(request.body.clone());
            for (k, v) in &request.headers {
                builder = builder.header(k.as_str(), v.as_str());
            }
            let cause = match builder.send().await {
                Ok(resp) if resp.status().is_success() => return Ok(Published::Stored),
                Ok(resp) => {
                    let status = resp.status();
                    if !(status.is_server_error() || status.as_u16() == 429) {
                        return Err(PublishError::SinkRefused {
                            sink: self.shown.clone(),
                            status: status.as_u16(),
                        });
                    }
                    format!("HTTP {}", status.as_u16())
                }
                Err(e) => {
                    if e.is_timeout() {
                        "timed out".to_string()
                    } else {
                        "connection failed".to_string()
                    }
                }
            };
            attempt += 1;
            if attempt >= self.retry.attempts {
                return Err(PublishError::SinkUnavailable {
                    sink: self.shown.clone(),
                    attempts: attempt,
                    cause,
                });
            }
            tracing::debug!(sink = %self.shown, cause, attempt, "sink publish failed; retrying");
            tokio::time::sleep(self.retry.delay(attempt - 1)).await;
        }
    }
}

/// The publisher a function holds: JetStream, or an HTTP sink when `--sink`/`K_SINK` is set.
#[derive(Clone)]
pub enum Publisher {
    /// Plain mode.
    JetStream(JetStreamPublisher),
    /// Knative mode.
    Http(HttpSink),
}

impl Publisher {
    /// The HTTP sink publisher for `sink` (`--sink`/`K_SINK`), if one is set: events POSTed
    /// as binary-mode CloudEvents from `source`, retried by the default policy.
    pub fn sink(sink: Option<&url::Url>, source: &str) -> Option<Self> {
        sink.map(|url| Publisher::Http(HttpSink::new(url.clone(), source, PublishRetry::default())))
    }

    /// The JetStream publisher over `js`, events from `source`, with the retries that ride
    /// out a stream leader election ([`PublishRetry::jetstream`]).
    pub fn jetstream(js: async_nats::jetstream::Context, source: &str) -> Self {
        Publisher::JetStream(JetStreamPublisher::new(
            crate::nats::Publisher::new(js, source),
            PublishRetry::jetstream(),
        ))
    }
}

impl EventPublisher for Publisher {
    async fn publish(&self, payload: &Payload) -> Result<Published, PublishError> {
        match self {
            Publisher::JetStream(p) => p.publish(payload).await,
            Publisher::Http(p) => p.publish(payload).await,
        }
    }
}
