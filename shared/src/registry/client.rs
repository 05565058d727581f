//! The registry HTTP client the copy engine stands on: the distribution API calls it needs
//! (manifests as exact bytes, blob HEAD/GET, upload sessions with cross-repository mount, cancel),
//! each sent with authentication ([`super::handshake`]) and retries ([`super::retry`]), every
//! answer read under a cap ([`super::response`]). One `reqwest::Client` (one connection pool)
//! serves every request of a [`RegistryClient`].
//!
//! Why not `oci-client`'s `Client` (0.18 has raw manifest pull/push, blob streams and mount): its
//! calls retry nothing and hide the status and `Retry-After` a retry needs; a 202 answer to a
//! mount request is not told apart from a 201; upload sessions cannot be cancelled; and its
//! token handling has no OAuth2 refresh-token grant (`identitytoken`). We use its manifest types
//! and media-type constants, and the same HTTP stack (reqwest).
//!
//! Over 400 lines: one short method per distribution API call; split, one protocol would be
//! scattered. Below it: `transport.rs` (pools, retries) and the handshake it owns.

use std::time::Duration;

use crate::reference::validate_digest;
use reqwest::{Method, RequestBuilder, Response, StatusCode, header};
use sha2::{Digest as _, Sha256};

use super::error::CopyError;
use super::handshake::{Authenticator, scopes};
use super::response::{
    Capped, MAX_ERROR_BYTES, MAX_MANIFEST_BYTES, content_type, header_str, read_capped,
    status_error, transport_cause, transport_error,
};
use super::retry::RetryPolicy;
use super::stall::StallPolicy;
use super::transport::Transport;

pub use super::repo::{Access, Repo};
pub use super::transport::ClientOptions;

/// Media types we ask registries for. Schema1 is included so it can be refused with a clear
/// error instead of a confusing 404.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.v1+prettyjws;q=0.1, \
application/vnd.docker.distribution.manifest.v1+json;q=0.1";

/// The OCI image index media type: what the referrers API answers.
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

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

/// Talks the distribution API to any number of registries. Cheap to clone.
#[derive(Clone)]
pub struct RegistryClient {
    /// The connection pools, options and retries.
    transport: Transport,
    /// Schemes learned and tokens fetched ([`super::handshake`]).
    auth: Authenticator,
}

// === impl RegistryClient ===

impl RegistryClient {
    /// A client with its own connection pools.
    pub fn new(options: ClientOptions) -> Result<Self, CopyError> {
        let transport = Transport::new(options)?;
        Ok(Self {
            auth: Authenticator::new(transport.clone()),
            transport,
        })
    }

    /// The options this client was built with.
    pub fn options(&self) -> &ClientOptions {
        self.transport.options()
    }

    /// The retry policy in force.
    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.transport.options().retry
    }

    /// The stall policy in force.
    pub fn stall_policy(&self) -> &StallPolicy {
        &self.transport.options().stall
    }

    fn url(&self, repo: &Repo, tail: &str) -> String {
        format!(
            "{}/v2/{}/{tail}",
            self.transport.base(&repo.registry),
            repo.path
        )
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
        let scopes = scopes(repo, access, mount_from);
        let registry = repo.registry.as_str();
        let authorization = self.auth.authorization(registry, &scopes, what).await?;
        let http = self.transport.http(&self.transport.base(registry));
        let build = &build;
        let send = |authorization: Option<String>| {
            self.transport.with_retries(registry, what, move || {
                let request = build(http);
                match &authorization {
                    Some(a) => request.header(header::AUTHORIZATION, a),
                    None => request,
                }
            })
        };
        let rejected = authorization.clone();
        let mut resp = send(authorization).await?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            // One answer to the challenge: learn the scheme, get a token or use basic auth.
            let challenge = resp
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            match self
                .auth
                .authorize(
                    registry,
                    &scopes,
                    challenge.as_deref(),
                    what,
                    rejected.as_deref(),
                )
                .await?
            {
                Some(a) => resp = send(Some(a)).await?,
                None => return Err(self.auth.unauthorized(registry, what, resp.status())),
            }
        }
        if matches!(
            resp.status(),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
        ) {
            return Err(self.auth.unauthorized(registry, what, resp.status()));
        }
        Ok(resp)
    }

    /// The registries a pull of `registry`'s images reads from, in order (its mirrors first;
    /// just `registry` when it has none).
    pub fn pull_hosts(&self, registry: &str) -> Vec<String> {
        self.transport.options().mirrors.hosts_for(registry)
    }

    /// Reads the manifest `reference` of `repo` where a pull would: at each of
    /// [`RegistryClient::pull_hosts`] in turn, a mirror's miss or error moving on to the next,
    /// the last host's answer final. Returns the repository that served it, which then serves
    /// every other read of the image (its blobs, children and referrers), so an image is read
    /// from one place and lookups of what it may lack (signatures) never reach past the mirror
    /// that has it. `None` when no host has it.
    pub async fn locate_manifest(
        &self,
        repo: &Repo,
        reference: &str,
    ) -> Result<Option<(Repo, RawManifest)>, CopyError> {
        let hosts = self.pull_hosts(&repo.registry);
        let last = hosts.len().saturating_sub(1);
        for (i, host) in hosts.into_iter().enumerate() {
            let at = Repo {
                registry: host,
                path: repo.path.clone(),
            };
            match self.get_manifest(&at, reference).await {
                Ok(Some(manifest)) => return Ok(Some((at, manifest))),
                Ok(None) if i == last => return Ok(None),
                Err(e) if i == last => return Err(e),
                Ok(None) => {
                    tracing::debug!(registry = %repo.registry, mirror = %at.registry, "not at the mirror; trying the next host");
                }
                Err(e) => {
                    tracing::debug!(registry = %repo.registry, mirror = %at.registry, error = %e, "mirror failed; trying the next host");
                }
            }
        }
        Ok(None)
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
        let requested_digest = digest_reference(reference, &what)?;
        let Some(resp) = self
            .manifest_request(repo, reference, Method::GET, Access::Pull, &what)
            .await?
        else {
            return Ok(None);
        };
        let media_type = content_type(&resp);
        let header_digest = header_str(&resp, "docker-content-digest");
        let bytes = match read_capped(resp, MAX_MANIFEST_BYTES)
            .await
            .map_err(|e| transport_error(repo.registry.as_str(), what.as_str(), 1, &e))?
        {
            Capped::Complete(bytes) => bytes,
            Capped::TooLarge => {
                return Err(CopyError::Malformed {
                    registry: repo.registry.clone(),
                    what,
                    reason: format!("larger than {MAX_MANIFEST_BYTES} bytes"),
                });
            }
        };
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        let expected = requested_digest.or(header_digest);
        if let Some(expected) = expected.filter(|e| e.starts_with("sha256:"))
            && expected != digest
        {
            return Err(CopyError::Corrupt {
                what,
                expected: expected.chars().take(80).collect(),
                actual: digest,
            });
        }
        Ok(Some(RawManifest {
            media_type,
            bytes,
            digest,
        }))
    }

    /// The OCI 1.1 referrers of `digest` from the referrers API (`GET /v2/<name>/referrers/
    /// <digest>`): the image index it answers, read capped as a manifest is. `None` when the
    /// registry does not offer the API (404, 400, 405: distribution 2.8 answers 404), so the
    /// caller falls back to the referrers tag schema.
    pub async fn referrers(
        &self,
        repo: &Repo,
        digest: &str,
        access: Access,
    ) -> Result<Option<Vec<u8>>, CopyError> {
        let what = format!("referrers of {}@{digest}", repo.path);
        validate_digest(digest).map_err(|e| CopyError::Invalid {
            what: what.clone(),
            reason: e.to_string(),
        })?;
        let resp = self.referrers_request(repo, digest, access, &what).await?;
        match resp.status() {
            s if s.is_success() => {}
            StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST | StatusCode::METHOD_NOT_ALLOWED => {
                return Ok(None);
            }
            _ => return Err(status_error(&repo.registry, &what, resp, 1).await),
        }
        match read_capped(resp, MAX_MANIFEST_BYTES)
            .await
            .map_err(|e| transport_error(repo.registry.as_str(), what.as_str(), 1, &e))?
        {
            Capped::Complete(bytes) => Ok(Some(bytes)),
            Capped::TooLarge => Err(CopyError::Malformed {
                registry: repo.registry.clone(),
                what,
                reason: format!("larger than {MAX_MANIFEST_BYTES} bytes"),
            }),
        }
    }

    /// The repository's tags from one `GET /v2/<name>/tags/list`, read capped as a manifest
    /// is. `None` when that one answer is not the whole list: the registry paginates (a `Link`
    /// header names a next page) or the list is larger than the cap. The copy reads it to know
    /// which of the referrer tags it would otherwise ask for one by one exist.
    pub async fn list_tags(
        &self,
        repo: &Repo,
        access: Access,
    ) -> Result<Option<Vec<String>>, CopyError> {
        #[derive(serde::Deserialize)]
        struct TagList {
            tags: Option<Vec<String>>,
        }
        let what = format!("tags of {}", repo.path);
        let url = self.url(repo, "tags/list");
        let resp = self
            .send(repo, access, None, &what, |c| {
                c.get(&url).timeout(Duration::from_secs(30))
            })
            .await?;
        if !resp.status().is_success() {
            return Err(status_error(&repo.registry, &what, resp, 1).await);
        }
        if resp.headers().contains_key(header::LINK) {
            return Ok(None);
        }
        let bytes = match read_capped(resp, MAX_MANIFEST_BYTES)
            .await
            .map_err(|e| transport_error(repo.registry.as_str(), what.as_str(), 1, &e))?
        {
            Capped::Complete(bytes) => bytes,
            Capped::TooLarge => return Ok(None),
        };
        let list: TagList = serde_json::from_slice(&bytes).map_err(|e| CopyError::Malformed {
            registry: repo.registry.clone(),
            what,
            reason: format!("not a tag list (line {}, column {})", e.line(), e.column()),
        })?;
        Ok(Some(list.tags.unwrap_or_default()))
    }

    /// Whether the registry offers the referrers API for `repo`, asked as OCI clients (oras,
    /// notation) ask: the referrers of the all-zero digest. A registry with the API answers
    /// any digest with an image index (distribution spec 1.1: it "MUST NOT return a 404"); one
    /// without answers 404 (distribution 2.8) or 405. `None` when the answer says neither (a
    /// 404 for a repository it does not know, a 200 that is not an index, another status).
    pub async fn offers_referrers_api(
        &self,
        repo: &Repo,
        access: Access,
    ) -> Result<Option<bool>, CopyError> {
        const ZERO: &str =
            "sha256:0000000000000000000000000000000000000000000000000000000000000000";
        let what = format!("referrers API of {}", repo.path);
        let resp = self.referrers_request(repo, ZERO, access, &what).await?;
        Ok(match resp.status() {
            // Another type is no sure answer: asked per manifest, as without the ping.
            s if s.is_success() => (content_type(&resp) == OCI_INDEX).then_some(true),
            StatusCode::METHOD_NOT_ALLOWED => Some(false),
            StatusCode::NOT_FOUND => {
                let body = read_capped(resp, MAX_ERROR_BYTES).await.ok();
                let unknown_repository = matches!(
                    &body,
                    Some(Capped::Complete(b)) if String::from_utf8_lossy(b).contains("NAME_UNKNOWN")
                );
                (!unknown_repository).then_some(false)
            }
            _ => None,
        })
    }

    /// `GET /v2/<name>/referrers/<digest>` (a validated digest), answered whatever its status.
    async fn referrers_request(
        &self,
        repo: &Repo,
        digest: &str,
        access: Access,
        what: &str,
    ) -> Result<Response, CopyError> {
        let url = self.url(repo, &format!("referrers/{digest}"));
        self.send(repo, access, None, what, |c| {
            c.get(&url)
                .header(header::ACCEPT, OCI_INDEX)
                .timeout(Duration::from_secs(30))
        })
        .await
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
        digest_reference(reference, &what)?;
        let Some(resp) = self
            .manifest_request(repo, reference, Method::HEAD, access, &what)
            .await?
        else {
            return Ok(None);
        };
        // A digest we cannot read is no match: the caller then copies, which is always safe.
        Ok(header_str(&resp, "docker-content-digest").filter(|d| validate_digest(d).is_ok()))
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
        if let Some(d) = header_str(&resp, "docker-content-digest")
            && d != manifest.digest
        {
            return Err(CopyError::Corrupt {
                what,
                expected: manifest.digest.clone(),
                actual: d.chars().take(80).collect(),
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
            // The header, not `content_length()`: a HEAD answer's body is empty by definition.
            // No readable length is reported as 0, which matches no descriptor: not skipped.
            s if s.is_success() => Ok(Some(
                header_str(&resp, "content-length")
                    .and_then(|l| l.trim().parse().ok())
                    .unwrap_or(0),
            )),
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
        let base = url::Url::parse(&self.transport.base(&repo.registry)).map_err(|e| {
            CopyError::Invalid {
                what: format!("registry {}", repo.registry),
                reason: e.to_string(),
            }
        })?;
        let protocol = |message: String| CopyError::Protocol {
            registry: repo.registry.clone(),
            what: what.into(),
            status: resp.status().as_u16(),
            message,
        };
        let location = base
            .join(raw)
            .map_err(|e| protocol(format!("bad Location: {e}")))?;
        // Our push credential goes with the upload: only ever to the registry itself.
        if location.origin() != base.origin() {
            return Err(protocol(
                "Location points at another host; not sending credentials there".into(),
            ));
        }
        Ok(location.to_string())
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
            .transport
            .http(&url)
            .put(&url)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            // Known length: the registry reads a plain body instead of chunks, and a body that
            // ends early (a held-back corrupt chunk) can never look complete.
            .header(header::CONTENT_LENGTH, size)
            .body(body);
        let resp = self
            .with_push_authorization(repo, request, &what)
            .await?
            .send()
            .await
            .map_err(|e| transport_error(repo.registry.as_str(), what.as_str(), 1, &e))?;
        if resp.status().is_success() {
            return Ok(());
        }
        if resp.status() == StatusCode::UNAUTHORIZED {
            // The token was refused after the session opened (it expired or was revoked in
            // between): forget it; the caller's retry opens a new session with a new token.
            self.auth
                .forget(&repo.registry, &scopes(repo, Access::Push, None));
            return Err(CopyError::TokenRefused {
                registry: repo.registry.clone(),
                what,
            });
        }
        Err(status_error(&repo.registry, &what, resp, 1).await)
    }

    /// Adds a fresh push credential for `repo` to a request that cannot go through
    /// [`RegistryClient::send`] (a streamed body cannot be replayed after a 401): the cached
    /// one, or a new token when it has expired since the upload session opened (a session
    /// opened for a mount carries another scope set's token).
    async fn with_push_authorization(
        &self,
        repo: &Repo,
        request: RequestBuilder,
        what: &str,
    ) -> Result<RequestBuilder, CopyError> {
        let scopes = scopes(repo, Access::Push, None);
        let authorization = self
            .auth
            .authorization(&repo.registry, &scopes, what)
            .await?;
        Ok(match authorization {
            Some(a) => request.header(header::AUTHORIZATION, a),
            None => request,
        })
    }

    /// Cancels an upload session (best effort: the registry purges stale sessions anyway).
    pub async fn cancel_upload(&self, repo: &Repo, location: &str) {
        let request = self
            .transport
            .http(location)
            .delete(location)
            .timeout(Duration::from_secs(10));
        let request = match self
            .with_push_authorization(repo, request, "cancel upload")
            .await
        {
            Ok(request) => request,
            Err(e) => {
                tracing::debug!(registry = %repo.registry, error = %e, "cancel upload failed");
                return;
            }
        };
        if let Err(e) = request.send().await {
            tracing::debug!(registry = %repo.registry, error = %transport_cause(&e), "cancel upload failed");
        }
    }
}

/// A manifest reference that is a digest (has `:`) must be a valid one before it goes into a
/// URL; returns it, or `None` for a tag.
fn digest_reference(reference: &str, what: &str) -> Result<Option<String>, CopyError> {
    if !reference.contains(':') {
        return Ok(None);
    }
    validate_digest(reference)
        .map(Some)
        .map_err(|e| CopyError::Invalid {
            what: what.into(),
            reason: e.to_string(),
        })
}
