//! How requests reach a registry, below authentication: the two connection pools (plain HTTP
//! for registries declared insecure; HTTPS, built on first use), the base URL of a registry,
//! its configured credential, and sending with retries paced by the [`RetryPolicy`]. Both the
//! client ([`super::client`]) and the authentication handshake stand on it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use reqwest::{RequestBuilder, Response};

use super::auth::{Credential, DockerConfig};
use super::error::CopyError;
use super::mirror::Mirrors;
use super::response::{status_error, transport_cause, transport_error, untrusted_certificate};
use super::retry::{RetryPolicy, retry_after, retryable_status};
use super::stall::StallPolicy;
use crate::reference::{DEFAULT_DOMAIN, DOCKER_HUB_API_HOST, canonical_host};

/// Settings of a [`super::RegistryClient`].
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// Registries (`host:port`) spoken to over plain HTTP.
    pub insecure: HashSet<String>,
    /// Credentials by registry.
    pub credentials: DockerConfig,
    /// Retry pacing.
    pub retry: RetryPolicy,
    /// The minimum throughput of a blob transfer before it counts as stalled.
    pub stall: StallPolicy,
    /// Registry mirrors ([`super::mirror`]): where [`super::RegistryClient::locate_manifest`] looks
    /// for an image first.
    pub mirrors: Mirrors,
    /// CA certificates trusted for registries on top of the system's roots
    /// (`--registry-ca-file`).
    pub ca_certificates: Vec<reqwest::Certificate>,
    /// Who is asking, added to the User-Agent (`image-backup/<version> (<instance>)`), so a
    /// registry's access log tells which replica pushed what.
    pub instance: Option<String>,
}

/// The User-Agent of every registry request: the product, its version and the instance.
fn user_agent(instance: Option<&str>) -> String {
    let product = concat!("image-backup/", env!("CARGO_PKG_VERSION"));
    // Only characters a header value may hold; an instance name is the pod's.
    let instance: String = instance
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(128)
        .collect();
    if instance.is_empty() {
        product.to_string()
    } else {
        format!("{product} ({instance})")
    }
}

/// The connection pools and options of one client. Cheap to clone.
#[derive(Clone)]
pub(super) struct Transport {
    /// For plain-HTTP (insecure) registries: built without loading any root certificate.
    plain: reqwest::Client,
    /// For HTTPS: built on first use, because loading the system's root certificates costs
    /// ~50 ms, which a one-shot copy between local registries should not pay. HTTP/1.1 only
    /// ([`Transport::http`] says why).
    tls: Arc<std::sync::OnceLock<reqwest::Client>>,
    /// Insecure registries, credentials, retry and stall policies.
    options: Arc<ClientOptions>,
}

impl Transport {
    fn builder(options: &ClientOptions) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .user_agent(user_agent(options.instance.as_deref()))
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(32)
            .tcp_nodelay(true)
            .no_proxy()
    }

    /// A transport with its own connection pools.
    pub(super) fn new(options: ClientOptions) -> Result<Self, CopyError> {
        crate::tls::ensure_crypto_provider();
        let plain = Self::builder(&options)
            .tls_certs_only(Vec::new())
            .build()
            .map_err(|e| CopyError::Internal(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            plain,
            tls: Arc::new(std::sync::OnceLock::new()),
            options: Arc::new(options),
        })
    }

    /// The HTTP client for a URL: the plain one for `http://`, the TLS one (built now if
    /// needed, with the system's root certificates) for anything else.
    ///
    /// The TLS client speaks HTTP/1.1 only, never HTTP/2, though registries offer both: a copy
    /// is a few large blobs moved at once, and over HTTP/2 they all share one connection, cut
    /// into 16 KiB frames that are copied again and wait on one another's flow control. Each
    /// blob on its own HTTP/1.1 connection, as skopeo and containerd move them, copied 1 GiB
    /// between two HTTPS registries in 3.47 s and 1.74 s of CPU against 4.65 s and 2.63 s
    /// (docs/benchmarks.md, "Copies between HTTPS registries").
    pub(super) fn http(&self, url: &str) -> &reqwest::Client {
        if url.starts_with("http://") {
            return &self.plain;
        }
        self.tls.get_or_init(|| {
            Self::builder(&self.options)
                .tls_certs_merge(self.options.ca_certificates.iter().cloned())
                .http1_only()
                .build()
                .unwrap_or_else(|e| {
                    // Building only fails when the TLS backend cannot load; then HTTPS requests
                    // fail with a transport error that names the registry, via the plain client.
                    tracing::warn!(error = %e, "cannot build the HTTPS client");
                    self.plain.clone()
                })
        })
    }

    /// The options this client was built with.
    pub(super) fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// Whether `registry` is spoken to over plain HTTP.
    pub(super) fn is_insecure(&self, registry: &str) -> bool {
        self.options.insecure.contains(registry)
    }

    /// `scheme://host` for a registry (Docker Hub's API host is registry-1.docker.io).
    pub(super) fn base(&self, registry: &str) -> String {
        let host = if canonical_host(registry) == DEFAULT_DOMAIN {
            DOCKER_HUB_API_HOST
        } else {
            registry
        };
        let scheme = if self.is_insecure(registry) {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{host}")
    }

    pub(super) fn credential(&self, registry: &str) -> Option<&Credential> {
        self.options.credentials.credential_for(registry)
    }

    /// Sends the request `make` builds until the answer is not retryable (429, 408, 5xx,
    /// transport errors are), pacing attempts by the [`RetryPolicy`] and `Retry-After`. Returns
    /// that answer, whatever its status; `Err` when the budget is spent or `Retry-After` asks
    /// for longer than we wait.
    pub(super) async fn with_retries(
        &self,
        registry: &str,
        what: &str,
        make: impl Fn() -> RequestBuilder,
    ) -> Result<Response, CopyError> {
        let policy = &self.options.retry;
        let mut attempt: u32 = 0;
        loop {
            let last = attempt + 1 >= policy.max_attempts;
            match make().send().await {
                Ok(resp) if retryable_status(resp.status()) => {
                    let ra = retry_after(&resp);
                    if last || ra.is_some_and(|d| d > policy.max_retry_after) {
                        return Err(status_error(registry, what, resp, attempt + 1).await);
                    }
                    tracing::debug!(
                        registry,
                        what,
                        status = resp.status().as_u16(),
                        attempt,
                        "retrying"
                    );
                    tokio::time::sleep(policy.delay(attempt, ra)).await;
                }
                Ok(resp) => return Ok(resp),
                Err(e) => {
                    if let Some(cause) = untrusted_certificate(&e) {
                        // Trust is configuration: another attempt meets the same certificate.
                        return Err(CopyError::UntrustedCertificate {
                            registry: registry.into(),
                            cause,
                        });
                    } else if last {
                        return Err(transport_error(registry, what, attempt + 1, &e));
                    } else {
                        tracing::debug!(registry, what, error = %transport_cause(&e), attempt, "retrying");
                        tokio::time::sleep(policy.delay(attempt, None)).await;
                    }
                }
            }
            attempt += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::user_agent;

    #[test]
    fn the_user_agent_names_the_instance_in_header_safe_characters() {
        assert_eq!(
            user_agent(None),
            concat!("image-backup/", env!("CARGO_PKG_VERSION"))
        );
        let ua = user_agent(Some("backup-7f9c/0a1b2c3d\r\nX-Evil: 1"));
        assert!(ua.ends_with("(backup-7f9c/0a1b2c3dX-Evil: 1)"), "{ua}");
        assert!(reqwest::header::HeaderValue::from_str(&ua).is_ok());
    }
}
