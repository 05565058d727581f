//! The authentication handshake with a registry: learn its scheme from the first 401 challenge,
//! then send basic credentials or get a bearer token for the request's scopes from the token
//! service (basic auth, or an identity token through the OAuth2 refresh grant), cached per
//! registry and scope. Credentials only ever travel to an HTTPS token service when the registry
//! itself is HTTPS.
//!
//! What it must not do: decide retries (that is [`super::retry`]) or log a credential.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{StatusCode, header};

use super::auth::{Challenge, Credential, TokenCache, TokenResponse};
use super::error::CopyError;
use super::repo::{Access, Repo};
use super::response::{Capped, MAX_TOKEN_BYTES, read_capped, status_error, transport_error};
use super::transport::Transport;

/// What we know of a registry's authentication, learned from its first challenge.
#[derive(Debug, Clone)]
pub(super) enum AuthScheme {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

/// The token scopes a request needs: the repository with the access asked for, plus pull on
/// the repository a blob is mounted from.
pub(super) fn scopes(repo: &Repo, access: Access, extra_pull: Option<&Repo>) -> Vec<String> {
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

/// Refuses a token realm our credentials should not travel to: anything but `https://`, except
/// `http://` for a registry the user declared insecure (then everything is plain HTTP anyway).
pub(super) fn check_realm(
    registry: &str,
    registry_insecure: bool,
    realm: &str,
) -> Result<(), CopyError> {
    let scheme = url::Url::parse(realm)
        .map(|u| u.scheme().to_string())
        .unwrap_or_else(|_| "unparseable".into());
    match scheme.as_str() {
        "https" => Ok(()),
        "http" if registry_insecure => Ok(()),
        _ => Err(CopyError::InsecureRealm {
            registry: registry.into(),
            realm_scheme: scheme,
        }),
    }
}

/// Authentication for one client: the scheme each registry asked for in its first
/// challenge, and bearer tokens by registry and scope. Cheap to clone.
#[derive(Clone)]
pub(super) struct Authenticator {
    transport: Transport,
    tokens: Arc<TokenCache>,
    schemes: Arc<Mutex<HashMap<String, AuthScheme>>>,
    /// One token request at a time per registry and scope set: requests that start together
    /// (a copy's blobs) wait for the first one's token instead of each asking for their own.
    fetching: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

// === impl Authenticator ===

impl Authenticator {
    /// Authentication over `transport` (its credentials, pools and retries).
    pub(super) fn new(transport: Transport) -> Self {
        Self {
            transport,
            tokens: Arc::new(TokenCache::default()),
            schemes: Arc::new(Mutex::new(HashMap::new())),
            fetching: Arc::default(),
        }
    }

    /// The scheme learned for `registry`, if any.
    pub(super) fn scheme(&self, registry: &str) -> Option<AuthScheme> {
        self.schemes.lock().ok()?.get(registry).cloned()
    }

    /// The Authorization header to send, from what we know of the registry (no network).
    fn known_authorization(&self, registry: &str, scopes: &[String]) -> Option<String> {
        match self.scheme(registry)? {
            AuthScheme::Basic => self.transport.credential(registry)?.basic_header(),
            AuthScheme::Bearer { .. } => self
                .tokens
                .get(&token_key(registry, scopes))
                .map(|t| format!("Bearer {t}")),
        }
    }

    /// The Authorization header for a request: what is known of the registry (no network), or
    /// for a registry known to use bearer tokens a token for a new scope fetched before the
    /// first request (saves the 401 round trip). `None` until the registry's scheme is known.
    pub(super) async fn authorization(
        &self,
        registry: &str,
        scopes: &[String],
        what: &str,
    ) -> Result<Option<String>, CopyError> {
        if let Some(known) = self.known_authorization(registry, scopes) {
            return Ok(Some(known));
        }
        match self.scheme(registry) {
            Some(AuthScheme::Bearer { realm, service }) => self
                .bearer(registry, &realm, service.as_deref(), scopes, what, None)
                .await
                .map(Some),
            _ => Ok(None),
        }
    }

    /// `Bearer <token>` for `scopes`, one fetch at a time per registry and scope set: requests
    /// that wait behind a fetch take its token, unless it is the one the registry just refused
    /// (`rejected`).
    async fn bearer(
        &self,
        registry: &str,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
        what: &str,
        rejected: Option<&str>,
    ) -> Result<String, CopyError> {
        let key = token_key(registry, scopes);
        let gate = self.gate(&key);
        let _one_at_a_time = gate.lock().await;
        if let Some(token) = self.tokens.get(&key) {
            let header = format!("Bearer {token}");
            if Some(header.as_str()) != rejected {
                return Ok(header);
            }
        }
        let token = self
            .fetch_token(registry, realm, service, scopes, what)
            .await?;
        Ok(format!("Bearer {token}"))
    }

    /// The lock that lets one request at a time fetch the token of `key`.
    fn gate(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut gates = match self.fetching.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        // Bounded like the token cache: by the scope sets a process uses.
        if gates.len() >= 4096 {
            gates.retain(|_, g| Arc::strong_count(g) > 1);
        }
        gates.entry(key.to_string()).or_default().clone()
    }

    /// Answers a 401: learns the scheme and gets an Authorization header, or `None` when the
    /// challenge is of a scheme we do not speak. `rejected` is the header the refused request
    /// carried: when requests that started together are all refused (their token expired), the
    /// first one fetches a new token and the others take it instead of each asking for one.
    pub(super) async fn authorize(
        &self,
        registry: &str,
        scopes: &[String],
        challenge: Option<&str>,
        what: &str,
        rejected: Option<&str>,
    ) -> Result<Option<String>, CopyError> {
        let scheme = match challenge.and_then(Challenge::parse) {
            Some(Challenge::Basic) => AuthScheme::Basic,
            Some(Challenge::Bearer { realm, service, .. }) => {
                check_realm(registry, self.transport.is_insecure(registry), &realm)?;
                AuthScheme::Bearer { realm, service }
            }
            None => return Ok(None),
        };
        if let Ok(mut schemes) = self.schemes.lock() {
            schemes.insert(registry.to_string(), scheme.clone());
        }
        match scheme {
            AuthScheme::Basic => Ok(self
                .transport
                .credential(registry)
                .and_then(Credential::basic_header)),
            AuthScheme::Bearer { realm, service } => self
                .bearer(registry, &realm, service.as_deref(), scopes, what, rejected)
                .await
                .map(Some),
        }
    }

    /// Forgets the token for `scopes` after the registry refused it (it expired early or was
    /// revoked), so the next request asks for a new one.
    pub(super) fn forget(&self, registry: &str, scopes: &[String]) {
        self.tokens.remove(&token_key(registry, scopes));
    }

    /// Gets a bearer token for `scopes` from the token service and caches it. The answer is
    /// read up to [`MAX_TOKEN_BYTES`] and its lifetime clamped by the cache.
    async fn fetch_token(
        &self,
        registry: &str,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
        what: &str,
    ) -> Result<String, CopyError> {
        let key = token_key(registry, scopes);
        self.tokens.remove(&key);
        let credential = self.transport.credential(registry).cloned();
        let what = format!("token for {what}");
        let http = self.transport.http(realm);
        let resp = self
            .transport
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
        let malformed = |reason: String| CopyError::Malformed {
            registry: registry.into(),
            what: what.clone(),
            reason,
        };
        let body = match read_capped(resp, MAX_TOKEN_BYTES)
            .await
            .map_err(|e| transport_error(registry, what.as_str(), 1, &e))?
        {
            Capped::Complete(body) => body,
            Capped::TooLarge => {
                return Err(malformed(format!(
                    "token answer larger than {MAX_TOKEN_BYTES} bytes"
                )));
            }
        };
        let (token, ttl) = TokenResponse::parse(&body).map_err(malformed)?;
        self.tokens.put(key, token.clone(), ttl);
        Ok(token)
    }

    /// The error for a refused request, with a hint about the credentials.
    pub(super) fn unauthorized(&self, registry: &str, what: &str, status: StatusCode) -> CopyError {
        CopyError::Unauthorized {
            registry: registry.into(),
            what: what.into(),
            status: status.as_u16(),
            hint: if self.transport.credential(registry).is_some() {
                "; the configured credentials were refused"
            } else {
                "; no credentials are configured for it (--docker-config)"
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_go_to_a_plain_http_realm_of_an_https_registry() {
        assert!(check_realm("r.io", false, "https://auth.r.io/token").is_ok());
        assert!(matches!(
            check_realm("r.io", false, "http://auth.r.io/token"),
            Err(CopyError::InsecureRealm { .. })
        ));
        assert!(matches!(
            check_realm("r.io", false, "ftp://auth.r.io/token"),
            Err(CopyError::InsecureRealm { .. })
        ));
        assert!(matches!(
            check_realm("r.io", true, "not a url"),
            Err(CopyError::InsecureRealm { .. })
        ));
        // A registry declared insecure is plain HTTP anyway.
        assert!(check_realm("127.0.0.1:5000", true, "http://127.0.0.1:5001/token").is_ok());
    }
}
