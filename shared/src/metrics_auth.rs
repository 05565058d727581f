//! `/metrics` only for callers Kubernetes vouches for (`--metrics-auth kubernetes`), as
//! controller-runtime's secure metrics serve them: the bearer token must pass a TokenReview, and
//! a SubjectAccessReview must allow its user `get` on the non-resource URL `/metrics` (grant it
//! with the `image-backup-metrics-reader` ClusterRole). `/healthz` and `/readyz` stay open:
//! kubelet probes carry no token.
//!
//! Every answer is cached for a minute by the token's SHA-256 (never the token itself), so a
//! scraper costs the API server two requests a minute, not two a scrape. Each review is bounded
//! by a timeout; an API server that does not answer gives 503, not a guess.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::Api;
use kube::api::PostParams;
use sha2::{Digest as _, Sha256};

/// Who may read `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum MetricsAuthMode {
    /// Anyone who can reach the port (a NetworkPolicy may still restrict that).
    #[default]
    None,
    /// Callers whose bearer token Kubernetes authenticates and authorizes (TokenReview and
    /// SubjectAccessReview for `get` on `/metrics`).
    Kubernetes,
}

/// The answer to one `/metrics` request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Serve the metrics.
    Allowed,
    /// No token, or one Kubernetes does not know: 401.
    Unauthenticated,
    /// A known user without `get` on `/metrics`: 403.
    Forbidden,
    /// The API server did not answer in time: 503 (not cached).
    Unavailable,
}

/// How long an answer is reused.
const CACHE_FOR: Duration = Duration::from_secs(60);
/// The most answers kept (then the cache starts over).
const CACHE_ENTRIES: usize = 1024;
/// The longest Authorization header looked at (service account tokens are ~1 KiB).
const MAX_HEADER: usize = 16 * 1024;
/// The bound on each review.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);

/// Verdicts by the SHA-256 of the token, with when they were made.
type Cache = HashMap<[u8; 32], (Instant, Verdict)>;

/// Checks `/metrics` callers against the Kubernetes API. Cheap to clone.
#[derive(Clone)]
pub struct MetricsAuth {
    client: kube::Client,
    cache: Arc<Mutex<Cache>>,
}

impl MetricsAuth {
    /// Checks callers with `client` (its ServiceAccount needs `create` on tokenreviews and
    /// subjectaccessreviews: the `image-backup-metrics-auth` ClusterRole).
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            cache: Arc::default(),
        }
    }

    /// The verdict for a request with this `Authorization` header value.
    pub async fn check(&self, authorization: Option<&str>) -> Verdict {
        let Some(token) = authorization
            .filter(|v| v.len() <= MAX_HEADER)
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
        else {
            return Verdict::Unauthenticated;
        };
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Ok(cache) = self.cache.lock()
            && let Some((at, verdict)) = cache.get(&key)
            && at.elapsed() < CACHE_FOR
        {
            return *verdict;
        }
        let verdict = match tokio::time::timeout(REVIEW_TIMEOUT, self.review(token)).await {
            Ok(Ok(verdict)) => verdict,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot review a /metrics caller");
                return Verdict::Unavailable;
            }
            Err(_) => {
                tracing::warn!("reviewing a /metrics caller timed out");
                return Verdict::Unavailable;
            }
        };
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
            cache.insert(key, (Instant::now(), verdict));
        }
        verdict
    }

    async fn review(&self, token: &str) -> Result<Verdict, kube::Error> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                ..Default::default()
            },
            ..Default::default()
        };
        let reviewed = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await?;
        let status = reviewed.status.unwrap_or_default();
        let user = status.user.unwrap_or_default();
        if status.authenticated != Some(true) || user.username.is_none() {
            return Ok(Verdict::Unauthenticated);
        }
        let access = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username,
                groups: user.groups,
                uid: user.uid,
                extra: user.extra,
                non_resource_attributes: Some(NonResourceAttributes {
                    path: Some("/metrics".into()),
                    verb: Some("get".into()),
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let decided = Api::<SubjectAccessReview>::all(self.client.clone())
            .create(&PostParams::default(), &access)
            .await?;
        Ok(if decided.status.is_some_and(|s| s.allowed) {
            Verdict::Allowed
        } else {
            Verdict::Forbidden
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn no_token_is_unauthenticated_without_asking_anyone() {
        // A client pointed nowhere: a request would fail as Unavailable, not Unauthenticated.
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        crate::tls::ensure_crypto_provider();
        let auth = MetricsAuth::new(kube::Client::try_from(config).unwrap());
        for header in [None, Some("Basic dTpw"), Some("Bearer "), Some("Bearer  ")] {
            assert_eq!(
                auth.check(header).await,
                Verdict::Unauthenticated,
                "{header:?}"
            );
        }
        let huge = format!("Bearer {}", "a".repeat(MAX_HEADER));
        assert_eq!(auth.check(Some(&huge)).await, Verdict::Unauthenticated);
        assert_eq!(
            auth.check(Some("Bearer some-token")).await,
            Verdict::Unavailable,
            "an API server that does not answer is not a verdict"
        );
    }
}
