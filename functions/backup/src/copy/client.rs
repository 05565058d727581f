//! The registry HTTP client the copy engine stands on: the distribution API calls it needs
//! (manifests as exact bytes, blob HEAD/GET, upload sessions with cross-repository mount, cancel),
//! authentication (anonymous, basic, bearer tokens cached per scope), and retries of 429, 5xx and
//! dropped connections with exponential backoff, jitter and `Retry-After`, within a budget.
//!
//! Why not `oci-client`'s `Client`: it hides raw manifest bytes behind parsing, uploads blobs from
//! memory, has no mount, and does not expose the retry and cancel points a verified streaming copy
//! needs. We use its manifest types and media-type constants, and the same HTTP stack (reqwest).
//! One `reqwest::Client` (one connection pool) serves every request of a [`RegistryClient`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng as _;
use reqwest::{Method, RequestBuilder, Response, StatusCode, header};
use sha2::{Digest as _, Sha256};

use super::auth::{Challenge, Credential, DockerConfig, TokenCache, TokenResponse};
use super::error::CopyError;

/// Media types we ask registries for. Schema1 is included so it can be refused with a clear
/// error instead of a confusing 404.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.v1+prettyjws;q=0.1, \
application/vnd.docker.distribution.manifest.v1+json;q=0.1";

/// The largest manifest we read (the OCI distribution spec suggests registries accept at least 4 MiB).
const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// How retries are paced.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// First backoff; doubles each attempt.
    pub base_delay: Duration,
    /// Longest backoff between two attempts.
    pub max_delay: Duration,
    /// Longest `Retry-After` we honour; a longer one ends the retries (RateLimited).
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The pause before attempt `attempt + 1`: exponential with full jitter, or `Retry-After`.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(ra) = retry_after {
            return ra;
        }
        let exp = self.base_delay.saturating_mul(1u32 << attempt.min(16));
        let cap = exp.min(self.max_delay);
        let jitter = rand::rng().random_range(0.5..=1.0);
        cap.mul_f64(jitter)
    }
}

/// Settings of a [`RegistryClient`].
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// Registries (`host:port`) spoken to over plain HTTP.
    pub insecure: HashSet<String>,
    /// Credentials by registry.
    pub credentials: DockerConfig,
    /// Retry pacing.
    pub retry: RetryPolicy,
}

/// A repository at a registry: what every call addresses.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Repo {
    /// The registry as written in references (`docker.io`, `127.0.0.1:5000`).
    pub registry: String,
    /// The repository path (`library/nginx`).
    pub path: String,
}

impl std::fmt::Display for Repo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.registry, self.path)
    }
}

/// A manifest as the registry serves it: exact bytes, media type, digest.
#[derive(Debug, Clone)]
pub struct RawManifest {
    /// Content-Type (parameters stripped).
    pub media_type: String,
    /// The bytes, untouched: pushing them again preserves the digest.
    pub bytes: Vec<u8>,
    /// `sha256:` of the bytes.
    pub digest: String,
}

/// How a blob upload started.
#[derive(Debug)]
pub enum UploadStart {
    /// The registry mounted the blob from another repository: nothing to upload.
    Mounted,
    /// An upload session to PUT the bytes to.
    Session(String),
}

/// What we know of a registry's authentication, learned from its first challenge.
#[derive(Debug, Clone)]
enum AuthScheme {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

/// Talks the distribution API to any number of registries. Cheap to clone.
#[derive(Clone)]
pub struct RegistryClient {
    /// For plain-HTTP (insecure) registries: built without loading any root certificate.
    plain: reqwest::Client,
    /// For HTTPS: built on first use, because loading the system's root certificates costs
    /// ~50 ms, which a one-shot copy between local registries should not pay.
    tls: Arc<std::sync::OnceLock<reqwest::Client>>,
    options: Arc<ClientOptions>,
    tokens: Arc<TokenCache>,
    schemes: Arc<Mutex<HashMap<String, AuthScheme>>>,
}

/// What a request does at the registry, for scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read.
    Pull,
    /// Read and write.
    Push,
}

// === impl RegistryClient ===

impl RegistryClient {
    fn builder() -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .user_agent(concat!("image-backup/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(32)
            .tcp_nodelay(true)
            .no_proxy()
    }

    /// A client with its own connection pools.
    pub fn new(options: ClientOptions) -> Result<Self, CopyError> {
        shared::tls::ensure_crypto_provider();
        let plain = Self::builder()
            .tls_certs_only(Vec::new())
            .build()
            .map_err(|e| CopyError::Invalid {
                what: "HTTP client".into(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            plain,
            tls: Arc::new(std::sync::OnceLock::new()),
            options: Arc::new(options),
            tokens: Arc::new(TokenCache::default()),
            schemes: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// The HTTP client for a URL: the plain one for `http://`, the TLS one (built now if
    /// needed, with the system's root certificates) for anything else.
    fn http(&self, url: &str) -> &reqwest::Client {
        if url.starts_with("http://") {
            return &self.plain;
        }
        self.tls.get_or_init(|| {
            Self::builder().build().unwrap_or_else(|e| {
                // Building only fails when the TLS backend cannot load; then HTTPS requests
                // fail with a transport error that names the registry, via the plain client.
                tracing::warn!(error = %e, "cannot build the HTTPS client");
                self.plain.clone()
            })
        })
    }

    /// The retry policy in force.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.options.retry
    }

    /// `scheme://host` for a registry (Docker Hub's API host is registry-1.docker.io).
    fn base(&self, registry: &str) -> String {
        let host = if registry == "docker.io" {
            "registry-1.docker.io"
        } else {
            registry
        };
        let scheme = if self.options.insecure.contains(registry) {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{host}")
    }

    fn url(&self, repo: &Repo, tail: &str) -> String {
        format!("{}/v2/{}/{tail}", self.base(&repo.registry), repo.path)
    }

    fn credential(&self, registry: &str) -> Option<&Credential> {
        self.options.credentials.credential_for(registry)
    }

    fn scopes(repo: &Repo, access: Access, extra_pull: Option<&Repo>) -> Vec<String> {
        let actions = match access {
            Access::Pull => "pull",
            Access::Push => "pull,push",
        };
        let mut scopes = vec![format!("repository:{}:{actions}", repo.path)];
        if let Some(from) = extra_pull {
            scopes.push(format!("repository:{}:pull", from.path));
        }
        scopes
    }

    fn token_key(registry: &str, scopes: &[String]) -> String {
        format!("{registry} {}", scopes.join(" "))
    }

    /// The Authorization header to send, from what we know of the registry (no network).
    fn known_authorization(&self, registry: &str, scopes: &[String]) -> Option<String> {
        let scheme = self.schemes.lock().ok()?.get(registry).cloned()?;
        match scheme {
            AuthScheme::Basic => self.credential(registry)?.basic_header(),
            AuthScheme::Bearer { .. } => self
                .tokens
                .get(&Self::token_key(registry, scopes))
                .map(|t| format!("Bearer {t}")),
        }
    }

    /// Answers a 401: learns the scheme and gets an Authorization header, or says why not.
    async fn authorize(
        &self,
        registry: &str,
        scopes: &[String],
        challenge: Option<&str>,
        what: &str,
    ) -> Result<Option<String>, CopyError> {
        let parsed = challenge.and_then(Challenge::parse);
        let scheme = match parsed {
            Some(Challenge::Basic) => AuthScheme::Basic,
            Some(Challenge::Bearer { realm, service, .. }) => AuthScheme::Bearer { realm, service },
            None => return Ok(None),
        };
        if let Ok(mut schemes) = self.schemes.lock() {
            schemes.insert(registry.to_string(), scheme.clone());
        }
        match scheme {
            AuthScheme::Basic => Ok(self.credential(registry).and_then(Credential::basic_header)),
            AuthScheme::Bearer { realm, service } => {
                let token = self
                    .fetch_token(registry, &realm, service.as_deref(), scopes, what)
                    .await?;
                Ok(Some(format!("Bearer {token}")))
            }
        }
    }

    /// Gets a bearer token for `scopes` from the token service, with the registry's credential
    /// (basic, or an identity token through OAuth2), and caches it.
    async fn fetch_token(
        &self,
        registry: &str,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
        what: &str,
    ) -> Result<String, CopyError> {
        let key = Self::token_key(registry, scopes);
        self.tokens.remove(&key);
        let credential = self.credential(registry).cloned();
        let what = format!("token for {what}");
        let http = self.http(realm);
        let resp = self
            .with_retries(registry, &what, || {
                let request = match &credential {
                    Some(Credential::IdentityToken(refresh)) => {
                        let mut form = vec![
                            ("grant_type", "refresh_token".to_string()),
                            ("refresh_token", refresh.clone()),
                            ("client_id", "image-backup".to_string()),
                            ("scope", scopes.join(" ")),
                        ];
                        if let Some(s) = service {
                            form.push(("service", s.to_string()));
                        }
                        http.post(realm).form(&form)
                    }
                    other => {
                        let mut query: Vec<(&str, &str)> =
                            scopes.iter().map(|s| ("scope", s.as_str())).collect();
                        if let Some(s) = service {
                            query.push(("service", s));
                        }
                        let r = http.get(realm).query(&query);
                        match other.as_ref().and_then(|c| c.basic_header()) {
                            Some(h) => r.header(header::AUTHORIZATION, h),
                            None => r,
                        }
                    }
                };
                request.timeout(Duration::from_secs(30))
            })
            .await?;
        if matches!(
            resp.status(),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
        ) {
            return Err(self.unauthorized(registry, &what, resp.status()));
        }
        if !resp.status().is_success() {
            return Err(status_error(registry, &what, resp, 1).await);
        }
        let protocol = |message: String| CopyError::Protocol {
            registry: registry.into(),
            what: what.clone(),
            status: 200,
            message,
        };
        let body: TokenResponse = resp
            .json()
            .await
            .map_err(|e| protocol(format!("token response is not JSON: {e}")))?;
        let token = body
            .token
            .or(body.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| protocol("token response has no token".into()))?;
        let ttl = Duration::from_secs(body.expires_in.unwrap_or(60));
        self.tokens.put(key, token.clone(), ttl);
        Ok(token)
    }

    /// Sends the request `make` builds until the answer is not retryable (429, 408, 5xx,
    /// transport errors are), pacing attempts by the [`RetryPolicy`] and `Retry-After`. Returns
    /// that answer, whatever its status; `Err` when the budget is spent or `Retry-After` asks
    /// for longer than we wait.
    async fn with_retries(
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
                Err(e) if last => {
                    return Err(transport_error(registry, what, attempt + 1, &e));
                }
                Err(e) => {
                    tracing::debug!(registry, what, error = %transport_cause(&e), attempt, "retrying");
                    tokio::time::sleep(policy.delay(attempt, None)).await;
                }
            }
            attempt += 1;
        }
    }

    fn unauthorized(&self, registry: &str, what: &str, status: StatusCode) -> CopyError {
        CopyError::Unauthorized {
            registry: registry.into(),
            what: what.into(),
            status: status.as_u16(),
            hint: if self.credential(registry).is_some() {
                "; the configured credentials were refused"
            } else {
                "; no credentials are configured for it (--docker-config)"
            },
        }
    }

    /// Sends a request built by `build` with authentication and retries. Returns any response
    /// that is not retryable (the caller maps 404 and friends); `Err` after the budget is spent
    /// or when access is refused.
    pub async fn send(
        &self,
        repo: &Repo,
        access: Access,
        mount_from: Option<&Repo>,
        what: &str,
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<Response, CopyError> {
        let scopes = Self::scopes(repo, access, mount_from);
        let registry = repo.registry.as_str();
        let mut authorization = self.known_authorization(registry, &scopes);
        // Proactively fetch a token for a new scope at a registry known to use bearer tokens.
        if authorization.is_none() {
            let known = self
                .schemes
                .lock()
                .ok()
                .and_then(|s| s.get(registry).cloned());
            if let Some(AuthScheme::Bearer { realm, service }) = known {
                let token = self
                    .fetch_token(registry, &realm, service.as_deref(), &scopes, what)
                    .await?;
                authorization = Some(format!("Bearer {token}"));
            }
        }
        let http = self.http(&self.base(registry));
        let build = &build;
        let send = |authorization: Option<String>| {
            self.with_retries(registry, what, move || {
                let request = build(http);
                match &authorization {
                    Some(a) => request.header(header::AUTHORIZATION, a),
                    None => request,
                }
            })
        };
        let mut resp = send(authorization).await?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            // One answer to the challenge: learn the scheme, get a token or use basic auth.
            let challenge = resp
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            match self
                .authorize(registry, &scopes, challenge.as_deref(), what)
                .await?
            {
                Some(a) => resp = send(Some(a)).await?,
                None => return Err(self.unauthorized(registry, what, resp.status())),
            }
        }
        if matches!(
            resp.status(),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
        ) {
            return Err(self.unauthorized(registry, what, resp.status()));
        }
        Ok(resp)
    }

    /// GET or HEAD of a manifest: `None` on 404, an error for any other failure.
    async fn manifest_request(
        &self,
        repo: &Repo,
        reference: &str,
        method: Method,
        access: Access,
        what: &str,
    ) -> Result<Option<Response>, CopyError> {
        let url = self.url(repo, &format!("manifests/{reference}"));
        let resp = self
            .send(repo, access, None, what, |c| {
                c.request(method.clone(), &url)
                    .header(header::ACCEPT, MANIFEST_ACCEPT)
                    .timeout(Duration::from_secs(30))
            })
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(status_error(&repo.registry, what, resp, 1).await);
        }
        Ok(Some(resp))
    }

    /// Reads a manifest by tag or digest (`head` only asks for its digest): `None` on 404.
    /// The bytes are checked against the requested digest and the registry's
    /// `Docker-Content-Digest`.
    pub async fn get_manifest(
        &self,
        repo: &Repo,
        reference: &str,
    ) -> Result<Option<RawManifest>, CopyError> {
        let what = format!("manifest {}:{reference}", repo.path);
        let Some(resp) = self
            .manifest_request(repo, reference, Method::GET, Access::Pull, &what)
            .await?
        else {
            return Ok(None);
        };
        let media_type = content_type(&resp);
        let header_digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if resp
            .content_length()
            .is_some_and(|l| l as usize > MAX_MANIFEST_BYTES)
        {
            return Err(CopyError::Invalid {
                what,
                reason: format!("manifest larger than {MAX_MANIFEST_BYTES} bytes"),
            });
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| transport_error(repo.registry.as_str(), what.as_str(), 1, &e))?;
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        let expected = if reference.contains(':') {
            Some(reference.to_string())
        } else {
            header_digest
        };
        if let Some(expected) = expected.filter(|e| e.starts_with("sha256:"))
            && expected != digest
        {
            return Err(CopyError::Corrupt {
                what,
                expected,
                actual: digest,
            });
        }
        Ok(Some(RawManifest {
            media_type,
            bytes: bytes.to_vec(),
            digest,
        }))
    }

    /// The digest of a manifest by tag or digest (HEAD), `None` on 404. `access` picks the
    /// token scope (a target is always spoken to with push access, so one token serves all).
    pub async fn manifest_digest(
        &self,
        repo: &Repo,
        reference: &str,
        access: Access,
    ) -> Result<Option<String>, CopyError> {
        let what = format!("manifest {}:{reference}", repo.path);
        let Some(resp) = self
            .manifest_request(repo, reference, Method::HEAD, access, &what)
            .await?
        else {
            return Ok(None);
        };
        Ok(resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string))
    }

    /// Pushes manifest bytes under a tag or digest; returns the digest the registry reports.
    pub async fn put_manifest(
        &self,
        repo: &Repo,
        reference: &str,
        manifest: &RawManifest,
    ) -> Result<(), CopyError> {
        let what = format!("push manifest {}:{reference}", repo.path);
        let url = self.url(repo, &format!("manifests/{reference}"));
        let body = bytes::Bytes::from(manifest.bytes.clone());
        let resp = self
            .send(repo, Access::Push, None, &what, |c| {
                c.put(&url)
                    .header(header::CONTENT_TYPE, &manifest.media_type)
                    .body(body.clone())
                    .timeout(Duration::from_secs(60))
            })
            .await?;
        if !resp.status().is_success() {
            return Err(status_error(&repo.registry, &what, resp, 1).await);
        }
        if let Some(d) = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            && d != manifest.digest
        {
            return Err(CopyError::Corrupt {
                what,
                expected: manifest.digest.clone(),
                actual: d.to_string(),
            });
        }
        Ok(())
    }

    /// The size of a blob if the repository has it (HEAD), `None` on 404.
    pub async fn blob_size(
        &self,
        repo: &Repo,
        digest: &str,
        access: Access,
    ) -> Result<Option<u64>, CopyError> {
        let what = format!("blob {digest} in {}", repo.path);
        let url = self.url(repo, &format!("blobs/{digest}"));
        let resp = self
            .send(repo, access, None, &what, |c| {
                c.head(&url).timeout(Duration::from_secs(30))
            })
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(Some(resp.content_length().unwrap_or(0))),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(status_error(&repo.registry, &what, resp, 1).await),
        }
    }

    /// Opens a blob for streaming (GET). A 404 is `NotFound`.
    pub async fn get_blob(&self, repo: &Repo, digest: &str) -> Result<Response, CopyError> {
        let what = format!("blob {digest} in {}", repo.path);
        let url = self.url(repo, &format!("blobs/{digest}"));
        let resp = self
            .send(repo, Access::Pull, None, &what, |c| c.get(&url))
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(resp),
            StatusCode::NOT_FOUND => Err(CopyError::NotFound {
                what: format!("blob {digest} of {}", repo.path),
                registry: repo.registry.clone(),
            }),
            _ => Err(status_error(&repo.registry, &what, resp, 1).await),
        }
    }

    /// Starts an upload, asking the registry to mount the blob from `mount` if given.
    pub async fn start_upload(
        &self,
        repo: &Repo,
        mount: Option<(&str, &Repo)>,
    ) -> Result<UploadStart, CopyError> {
        let what = format!("start upload to {}", repo.path);
        let mut url = self.url(repo, "blobs/uploads/");
        if let Some((digest, from)) = mount {
            url.push_str(&format!("?mount={digest}&from={}", from.path));
        }
        let from = mount.map(|(_, f)| f);
        let resp = self
            .send(repo, Access::Push, from, &what, |c| {
                c.post(&url).timeout(Duration::from_secs(30))
            })
            .await?;
        match resp.status() {
            StatusCode::CREATED if mount.is_some() => Ok(UploadStart::Mounted),
            StatusCode::ACCEPTED => {
                let location = self.location(repo, &resp, &what)?;
                Ok(UploadStart::Session(location))
            }
            _ => Err(status_error(&repo.registry, &what, resp, 1).await),
        }
    }

    fn location(&self, repo: &Repo, resp: &Response, what: &str) -> Result<String, CopyError> {
        let raw = resp
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| CopyError::Protocol {
                registry: repo.registry.clone(),
                what: what.into(),
                status: resp.status().as_u16(),
                message: "no Location header".into(),
            })?;
        let base = url::Url::parse(&self.base(&repo.registry)).map_err(|e| CopyError::Invalid {
            what: "registry URL".into(),
            reason: e.to_string(),
        })?;
        base.join(raw)
            .map(|u| u.to_string())
            .map_err(|e| CopyError::Protocol {
                registry: repo.registry.clone(),
                what: what.into(),
                status: resp.status().as_u16(),
                message: format!("bad Location: {e}"),
            })
    }

    /// Completes an upload session with the whole blob as one streamed PUT. Not retried here:
    /// a streamed body cannot be replayed; the caller retries the whole blob.
    pub async fn finish_upload(
        &self,
        repo: &Repo,
        location: &str,
        digest: &str,
        size: u64,
        body: reqwest::Body,
    ) -> Result<(), CopyError> {
        let what = format!("upload blob {digest} to {}", repo.path);
        let sep = if location.contains('?') { '&' } else { '?' };
        let url = format!("{location}{sep}digest={digest}");
        let request = self
            .http(&url)
            .put(&url)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            // Known length: the registry reads a plain body instead of chunks, and a body that
            // ends early (a held-back corrupt chunk) can never look complete.
            .header(header::CONTENT_LENGTH, size)
            .body(body);
        let resp = self
            .with_push_authorization(repo, request)
            .send()
            .await
            .map_err(|e| transport_error(repo.registry.as_str(), what.as_str(), 1, &e))?;
        if resp.status().is_success() {
            return Ok(());
        }
        Err(status_error(&repo.registry, &what, resp, 1).await)
    }

    /// Adds the cached push credential for `repo` to a request that cannot go through
    /// [`RegistryClient::send`] (a streamed body cannot be replayed after a 401).
    fn with_push_authorization(&self, repo: &Repo, request: RequestBuilder) -> RequestBuilder {
        let scopes = Self::scopes(repo, Access::Push, None);
        match self.known_authorization(&repo.registry, &scopes) {
            Some(a) => request.header(header::AUTHORIZATION, a),
            None => request,
        }
    }

    /// Cancels an upload session (best effort: the registry purges stale sessions anyway).
    pub async fn cancel_upload(&self, repo: &Repo, location: &str) {
        let request = self
            .http(location)
            .delete(location)
            .timeout(Duration::from_secs(10));
        if let Err(e) = self.with_push_authorization(repo, request).send().await {
            tracing::debug!(registry = %repo.registry, error = %transport_cause(&e), "cancel upload failed");
        }
    }
}

fn retryable_status(s: StatusCode) -> bool {
    s == StatusCode::TOO_MANY_REQUESTS || s == StatusCode::REQUEST_TIMEOUT || s.is_server_error()
}

fn retry_after(resp: &Response) -> Option<Duration> {
    let v = resp.headers().get(header::RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(v, chrono::Utc::now())
}

/// `Retry-After` is either delay-seconds or an HTTP-date (RFC 9110); a date in the past means
/// "now".
fn parse_retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (date.with_timezone(&chrono::Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

fn content_type(resp: &Response) -> String {
    resp.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_string())
        .unwrap_or_default()
}

/// `Unavailable` for a transport error after `attempts` attempts.
fn transport_error(
    registry: impl Into<String>,
    what: impl Into<String>,
    attempts: u32,
    e: &reqwest::Error,
) -> CopyError {
    CopyError::Unavailable {
        registry: registry.into(),
        what: what.into(),
        attempts,
        cause: transport_cause(e),
    }
}

/// A transport error's cause without the URL (which may carry an upload session id).
pub fn transport_cause(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "connection cut while transferring"
    } else if e.is_request() {
        "request failed"
    } else {
        "transport error"
    };
    let mut source = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {detail}")
    }
}

/// Maps a final non-success response to an error, with the registry's message.
pub async fn status_error(registry: &str, what: &str, resp: Response, attempts: u32) -> CopyError {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let message: String = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| {
            v["errors"].as_array().map(|errs| {
                errs.iter()
                    .map(|e| {
                        format!(
                            "{}: {}",
                            e["code"].as_str().unwrap_or("?"),
                            e["message"].as_str().unwrap_or("")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            })
        })
        .unwrap_or(text)
        .chars()
        .take(300)
        .collect();
    match status {
        StatusCode::NOT_FOUND => CopyError::NotFound {
            what: what.into(),
            registry: registry.into(),
        },
        StatusCode::TOO_MANY_REQUESTS => CopyError::RateLimited {
            registry: registry.into(),
            what: what.into(),
            attempts,
        },
        s if s.is_server_error() || s == StatusCode::REQUEST_TIMEOUT => CopyError::Unavailable {
            registry: registry.into(),
            what: what.into(),
            attempts,
            cause: format!("HTTP {}: {message}", s.as_u16()),
        },
        s => CopyError::Protocol {
            registry: registry.into(),
            what: what.into(),
            status: s.as_u16(),
            message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_and_http_dates() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-26T10:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Thu, 26 Nov 2026 10:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Thu, 26 Nov 2026 09:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy::default();
        assert!(p.delay(0, None) <= Duration::from_millis(200));
        assert!(p.delay(0, None) >= Duration::from_millis(100));
        assert!(p.delay(20, None) <= p.max_delay);
        assert_eq!(
            p.delay(3, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
    }
}
