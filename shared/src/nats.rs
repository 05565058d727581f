//! NATS JetStream plumbing: connect (and refuse servers older than 2.10), create or update the
//! `IMAGEBACKUP` stream and the durable consumers from the definitions in `nats/` (compiled in,
//! so the files a user applies with the `nats` CLI and what the functions create never drift), and
//! publish events with `Nats-Msg-Id`, awaiting the stream's acknowledgement.
//!
//! It knows nothing of what the events mean: that is the handlers' job.
//!
//! Over 400 lines: connecting (servers, credentials, the version check), the stream and both
//! consumers from the shared JSON definitions, the start-up retries and the publisher share one
//! error type; they are one client's life.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, context::PublishAckFuture, stream};

use crate::events::{Payload, to_nats_message};
use crate::secret::SecretUrl;

/// The stream every event goes through.
pub const STREAM_NAME: &str = "IMAGEBACKUP";
/// The oldest nats-server we run against: 2.10 brought multiple filter subjects per consumer and
/// create-or-update consumer semantics, which the definitions rely on.
pub const MIN_SERVER_VERSION: (u64, u64, u64) = (2, 10, 0);
/// How long one JetStream API call or publish acknowledgement may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

const STREAM_DEFINITION: &str = include_str!("../../nats/stream-imagebackup.json");
const BACKUP_CONSUMER_DEFINITION: &str = include_str!("../../nats/consumer-backup.json");
const ROLLOUT_CONSUMER_DEFINITION: &str = include_str!("../../nats/consumer-rollout.json");

/// Why talking to NATS failed.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// The server could not be reached.
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        /// The URL tried, credentials redacted.
        url: SecretUrl,
        /// Why.
        #[source]
        source: async_nats::ConnectError,
    },
    /// The server is older than [`MIN_SERVER_VERSION`].
    #[error("nats-server {found} is too old: image-backup needs 2.10 or newer (JetStream enabled)")]
    ServerTooOld {
        /// The version the server reported.
        found: String,
    },
    /// A definition in `nats/` does not parse (a build defect, caught by tests).
    #[error("definition nats/{file} is invalid: {source}")]
    Definition {
        /// The file.
        file: &'static str,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
    /// Creating or updating the stream failed.
    #[error("cannot create or update stream {STREAM_NAME}: {0}")]
    Stream(String),
    /// Creating or updating a consumer failed.
    #[error("cannot create or update consumer {name}: {message}")]
    Consumer {
        /// The consumer.
        name: String,
        /// The server's answer.
        message: String,
    },
    /// A publish was not acknowledged by the stream.
    #[error("publish to {subject} was not acknowledged: {message}")]
    Publish {
        /// The subject.
        subject: String,
        /// Why.
        message: String,
    },
    /// The event could not be turned into a CloudEvent.
    #[error(transparent)]
    Event(#[from] crate::events::EventError),
    /// A call did not answer within [`REQUEST_TIMEOUT`].
    #[error("NATS did not answer within {0:?} ({1})")]
    Timeout(Duration, &'static str),
}

/// The durable consumers of the system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumerName {
    /// `backup`: workload.changed events.
    Backup,
    /// `rollout`: image.completed and workload.changed events.
    Rollout,
}

impl ConsumerName {
    /// The durable name.
    pub fn as_str(self) -> &'static str {
        match self {
            ConsumerName::Backup => "backup",
            ConsumerName::Rollout => "rollout",
        }
    }
}

/// The stream configuration from `nats/stream-imagebackup.json`.
pub fn stream_config() -> Result<stream::Config, NatsError> {
    serde_json::from_str(STREAM_DEFINITION).map_err(|source| NatsError::Definition {
        file: "stream-imagebackup.json",
        source,
    })
}

/// A consumer's configuration from `nats/consumer-<name>.json`.
pub fn consumer_config(name: ConsumerName) -> Result<pull::Config, NatsError> {
    let (file, text) = match name {
        ConsumerName::Backup => ("consumer-backup.json", BACKUP_CONSUMER_DEFINITION),
        ConsumerName::Rollout => ("consumer-rollout.json", ROLLOUT_CONSUMER_DEFINITION),
    };
    serde_json::from_str(text).map_err(|source| NatsError::Definition { file, source })
}

/// Parses `major.minor.patch` (ignoring any `-suffix`) and compares it with the minimum.
pub fn check_server_version(version: &str) -> Result<(), NatsError> {
    let core = version
        .trim_start_matches('v')
        .split(['-', '+'])
        .next()
        .unwrap_or("");
    let mut parts = core.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    let found = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    if found < MIN_SERVER_VERSION {
        return Err(NatsError::ServerTooOld {
            found: version.to_string(),
        });
    }
    Ok(())
}

/// Connects to `url` and checks the server version.
pub async fn connect(url: &str, name: &str) -> Result<async_nats::Client, NatsError> {
    let servers = Servers::parse(url);
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(REQUEST_TIMEOUT)
        .request_timeout(Some(REQUEST_TIMEOUT))
        .retry_on_initial_connect()
        .max_reconnects(None);
    match servers.credentials {
        Some(NatsCredentials::UserPassword(user, password)) => {
            options = options.user_and_password(user, password);
        }
        Some(NatsCredentials::Token(token)) => options = options.token(token),
        None => {}
    }
    let client = options
        .connect(servers.urls)
        .await
        .map_err(|source| NatsError::Connect {
            url: SecretUrl::from(url),
            source,
        })?;
    // With retry_on_initial_connect the first INFO may not have arrived yet.
    let mut info = client.server_info();
    for _ in 0..100 {
        if !info.version.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        info = client.server_info();
    }
    if info.version.is_empty() {
        return Err(NatsError::Timeout(Duration::from_secs(5), "server INFO"));
    }
    check_server_version(&info.version)?;
    Ok(client)
}

/// Credentials given in a NATS URL's user-info.
#[derive(Clone, PartialEq, Eq)]
enum NatsCredentials {
    /// `nats://user:password@host`.
    UserPassword(String, String),
    /// `nats://token@host`.
    Token(String),
}

impl std::fmt::Debug for NatsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NatsCredentials::UserPassword(user, _) => write!(f, "UserPassword({user:?}, ***)"),
            NatsCredentials::Token(_) => f.write_str("Token(***)"),
        }
    }
}

/// A `--nats-url` value taken apart: the server URLs (comma-separated in the value) without
/// user-info, and the credentials the user-info held. async-nats takes neither a list in one
/// string nor credentials from a URL, so both are handed to it this way.
#[derive(Debug, PartialEq, Eq)]
struct Servers {
    urls: Vec<String>,
    credentials: Option<NatsCredentials>,
}

impl Servers {
    fn parse(value: &str) -> Self {
        let mut credentials = None;
        let urls = value
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| {
                let with_scheme = if u.contains("://") {
                    u.to_string()
                } else {
                    format!("nats://{u}")
                };
                let Ok(mut parsed) = url::Url::parse(&with_scheme) else {
                    // async-nats reports what it cannot parse (credentials redacted by us).
                    return u.to_string();
                };
                if !parsed.username().is_empty() && credentials.is_none() {
                    // A password may hold `@` or `:` written as `%40`, `%3A`.
                    let decode = |s: &str| {
                        percent_encoding::percent_decode_str(s)
                            .decode_utf8_lossy()
                            .into_owned()
                    };
                    let user = decode(parsed.username());
                    credentials = Some(match parsed.password() {
                        Some(p) => NatsCredentials::UserPassword(user, decode(p)),
                        None => NatsCredentials::Token(user),
                    });
                }
                let _ = parsed.set_username("");
                let _ = parsed.set_password(None);
                parsed.as_str().trim_end_matches('/').to_string()
            })
            .collect();
        Self { urls, credentials }
    }
}

/// Retries `attempt` with a growing pause (500 ms doubling up to `max_pause`) until it works or
/// `shutdown` drains (`None`); each failure is logged with its cause under `what`.
async fn until_ready<T, F, Fut>(
    what: &'static str,
    max_pause: Duration,
    shutdown: &mut crate::shutdown::Shutdown,
    mut attempt: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, NatsError>>,
{
    let mut pause = Duration::from_millis(500);
    loop {
        match attempt().await {
            Ok(ready) => return Some(ready),
            Err(e) => tracing::warn!(error = %e, retry_in = ?pause, "{what}"),
        }
        tokio::select! {
            _ = shutdown.wait() => return None,
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(max_pause);
    }
}

/// Connects and makes sure the stream exists with `replicas` copies, retrying with a growing
/// pause (up to 30 s) until it works or `shutdown` drains (`None`): a function started before
/// NATS, or while a cluster elects a leader, waits instead of crash-looping. Each failure is
/// logged with its cause.
pub async fn connect_until_ready(
    url: &str,
    name: &str,
    replicas: usize,
    shutdown: &mut crate::shutdown::Shutdown,
) -> Option<(async_nats::Client, jetstream::Context, stream::Stream)> {
    until_ready(
        "NATS not ready",
        Duration::from_secs(30),
        shutdown,
        || async {
            let client = connect(url, name).await?;
            let js = jetstream::new(client.clone());
            let stream = tokio::time::timeout(REQUEST_TIMEOUT, ensure_stream_with(&js, replicas))
                .await
                .map_err(|_| NatsError::Timeout(REQUEST_TIMEOUT, "ensure stream"))??;
            Ok((client, js, stream))
        },
    )
    .await
}

/// Creates or updates the durable consumer (see [`ensure_consumer_with`]), retrying as
/// [`connect_until_ready`] does (up to 10 s between attempts): right after a stream is
/// scaled, or while a cluster elects the consumer's leader, the first attempts fail.
pub async fn bind_until_ready(
    stream: &stream::Stream,
    name: ConsumerName,
    ack_wait: Option<Duration>,
    replicas: usize,
    shutdown: &mut crate::shutdown::Shutdown,
) -> Option<jetstream::consumer::Consumer<pull::Config>> {
    until_ready(
        "consumer not ready",
        Duration::from_secs(10),
        shutdown,
        || async {
            tokio::time::timeout(
                REQUEST_TIMEOUT,
                ensure_consumer_with(stream, name, ack_wait, replicas),
            )
            .await
            .map_err(|_| NatsError::Timeout(REQUEST_TIMEOUT, "ensure consumer"))?
        },
    )
    .await
}

/// Creates the stream with one copy, or updates it to the definition (see
/// [`ensure_stream_with`]).
pub async fn ensure_stream(js: &jetstream::Context) -> Result<stream::Stream, NatsError> {
    ensure_stream_with(js, 1).await
}

/// Creates the stream with `replicas` copies, or updates an existing one to the definition and
/// that count in place (JetStream moves the data; the messages stay). A change of the count is
/// logged: every function should be given the same `--stream-replicas`.
pub async fn ensure_stream_with(
    js: &jetstream::Context,
    replicas: usize,
) -> Result<stream::Stream, NatsError> {
    let mut config = stream_config()?;
    config.num_replicas = replicas.max(1);
    if let Ok(existing) = js.get_stream(STREAM_NAME).await {
        let before = existing.cached_info().config.num_replicas;
        if before != config.num_replicas {
            tracing::warn!(
                from = before,
                to = config.num_replicas,
                "changing the stream's replicas (every function should run with the same --stream-replicas)"
            );
        }
    }
    js.create_or_update_stream(config)
        .await
        .map_err(|e| NatsError::Stream(e.to_string()))?;
    js.get_stream(STREAM_NAME)
        .await
        .map_err(|e| NatsError::Stream(e.to_string()))
}

/// Creates the durable consumer with one copy, or updates it to the definition
/// (create-or-update on 2.10+).
pub async fn ensure_consumer(
    stream: &stream::Stream,
    name: ConsumerName,
) -> Result<jetstream::consumer::Consumer<pull::Config>, NatsError> {
    ensure_consumer_with(stream, name, None, 1).await
}

/// As [`ensure_consumer`], with the ack wait overridden (`--ack-wait-seconds`) and `replicas`
/// copies (updated in place on an existing consumer). Every replica of a function must use the
/// same values: the last one to start sets them.
pub async fn ensure_consumer_with(
    stream: &stream::Stream,
    name: ConsumerName,
    ack_wait: Option<Duration>,
    replicas: usize,
) -> Result<jetstream::consumer::Consumer<pull::Config>, NatsError> {
    let mut config = consumer_config(name)?;
    if let Some(wait) = ack_wait {
        config.ack_wait = wait;
    }
    config.num_replicas = replicas.max(1);
    stream
        .create_consumer(config)
        .await
        .map_err(|e| NatsError::Consumer {
            name: name.as_str().to_string(),
            message: e.to_string(),
        })
}

/// Publishes events to JetStream: binary-mode CloudEvents with `Nats-Msg-Id` set to the event
/// id, and waits for the stream's acknowledgement, so a returned `Ok` means stored (and a retried
/// publish of the same event is stored once).
#[derive(Clone)]
pub struct Publisher {
    js: jetstream::Context,
    source: String,
}

// === impl Publisher ===

impl Publisher {
    /// A publisher that stamps events with `source` (`/image-backup/<function>`).
    pub fn new(js: jetstream::Context, source: impl Into<String>) -> Self {
        Self {
            js,
            source: source.into(),
        }
    }

    /// Publishes one event and awaits the stream's ack.
    pub async fn publish(
        &self,
        payload: &Payload,
    ) -> Result<jetstream::publish::PublishAck, NatsError> {
        let subject = payload.subject();
        let event = payload.to_cloudevent(&self.source)?;
        let (mut headers, body) = to_nats_message(&event)?;
        headers.insert("Nats-Msg-Id", payload.id().as_str());
        let fail = |message: String| NatsError::Publish {
            subject: subject.clone(),
            message,
        };
        let ack: PublishAckFuture = tokio::time::timeout(
            REQUEST_TIMEOUT,
            self.js.publish_with_headers(subject.clone(), headers, body),
        )
        .await
        .map_err(|_| NatsError::Timeout(REQUEST_TIMEOUT, "publish"))?
        .map_err(|e| fail(e.to_string()))?;
        tokio::time::timeout(REQUEST_TIMEOUT, ack.into_future())
            .await
            .map_err(|_| NatsError::Timeout(REQUEST_TIMEOUT, "publish ack"))?
            .map_err(|e| fail(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nats_url_value_is_taken_apart_into_servers_and_credentials() {
        let s = Servers::parse("nats://bot:p%40ss:w0rd@a:4222, nats://b:4222,c:4223");
        assert_eq!(s.urls, ["nats://a:4222", "nats://b:4222", "nats://c:4223"]);
        assert_eq!(
            s.credentials,
            Some(NatsCredentials::UserPassword(
                "bot".into(),
                "p@ss:w0rd".into()
            ))
        );
        assert!(
            !format!("{s:?}").contains("p@ss"),
            "Debug hides the password"
        );
        let t = Servers::parse("tls://s3cr3t-token@nats.example:4222");
        assert_eq!(t.urls, ["tls://nats.example:4222"]);
        assert_eq!(
            t.credentials,
            Some(NatsCredentials::Token("s3cr3t-token".into()))
        );
        let plain = Servers::parse("nats://127.0.0.1:4222");
        assert_eq!((plain.urls.len(), plain.credentials), (1, None));
    }

    #[test]
    fn definitions_parse_and_match_the_contract() {
        let s = stream_config().unwrap();
        assert_eq!(s.name, STREAM_NAME);
        assert_eq!(s.subjects, vec!["imagebackup.>".to_string()]);
        assert_eq!(s.storage, stream::StorageType::File);
        assert!(s.duplicate_window >= Duration::from_secs(60));
        let b = consumer_config(ConsumerName::Backup).unwrap();
        assert_eq!(b.durable_name.as_deref(), Some("backup"));
        assert_eq!(b.ack_policy, jetstream::consumer::AckPolicy::Explicit);
        let r = consumer_config(ConsumerName::Rollout).unwrap();
        assert_eq!(r.filter_subjects.len(), 2);
    }

    #[test]
    fn server_versions() {
        assert!(check_server_version("2.15.1").is_ok());
        assert!(check_server_version("2.10.0").is_ok());
        assert!(check_server_version("v2.11.0-beta.1").is_ok());
        assert!(matches!(
            check_server_version("2.9.10"),
            Err(NatsError::ServerTooOld { .. })
        ));
        assert!(check_server_version("garbage").is_err());
    }
}
