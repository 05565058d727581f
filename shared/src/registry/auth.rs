//! Registry credentials and the token dance, as Docker does them.
//!
//! - [`DockerConfig`] reads a docker `config.json` (also the payload of a
//!   `kubernetes.io/dockerconfigjson` Secret): `auth` (base64 `user:password`), `username` /
//!   `password`, `identitytoken`; keys matched by registry host the way Docker does, including
//!   `https://index.docker.io/v1/` for Docker Hub.
//! - [`Challenge`] parses `WWW-Authenticate` (`Basic realm=…`, `Bearer realm=…,service=…,scope=…`).
//! - [`TokenCache`] keeps bearer tokens per registry and scope until shortly before they expire.
//!
//! Secrets live in [`Credential`], whose `Debug` redacts them; nothing here logs.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::reference::canonical_host;
use base64::Engine as _;
use serde::Deserialize;

/// A credential for one registry. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// User name and password (HTTP basic, or the token service's basic auth).
    Basic {
        /// The user.
        username: String,
        /// The password or personal access token.
        password: String,
    },
    /// An OAuth2 refresh token from `docker login` against some registries (`identitytoken`).
    IdentityToken(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Credential::IdentityToken(_) => f.write_str("IdentityToken(<redacted>)"),
        }
    }
}

impl Credential {
    /// The `Authorization: Basic …` value, for Basic credentials.
    pub fn basic_header(&self) -> Option<String> {
        match self {
            Credential::Basic { username, password } => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
            )),
            Credential::IdentityToken(_) => None,
        }
    }
}

/// Why a docker config could not be used. Never quotes the file's contents.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read docker config {path}: {source}")]
    Read {
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a docker config.json.
    #[error(
        "docker config {path} is not valid JSON of the config.json shape (line {line}, column {column})"
    )]
    Parse {
        /// The path.
        path: String,
        /// Where.
        line: usize,
        /// Where.
        column: usize,
    },
    /// An `auth` entry is not base64 of `user:password`.
    #[error("docker config entry for {registry} has an `auth` that is not base64 of user:password")]
    BadAuth {
        /// The registry key.
        registry: String,
    },
}

#[derive(Deserialize, Default)]
struct RawConfig {
    #[serde(default)]
    auths: HashMap<String, RawAuth>,
}

#[derive(Deserialize, Default)]
struct RawAuth {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// Credentials by registry host, from one or more docker configs.
#[derive(Debug, Clone, Default)]
pub struct DockerConfig {
    by_host: HashMap<String, Credential>,
}

impl DockerConfig {
    /// Reads a config.json file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json(&text, &path.display().to_string())
    }

    /// Parses config.json bytes (`origin` names them in errors).
    pub fn from_json(bytes: &[u8], origin: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = serde_json::from_slice(bytes).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            line: e.line(),
            column: e.column(),
        })?;
        let mut by_host = HashMap::new();
        for (key, entry) in raw.auths {
            let credential = if let Some(token) = entry.identitytoken.filter(|t| !t.is_empty()) {
                Credential::IdentityToken(token)
            } else if let (Some(username), Some(password)) =
                (entry.username.clone(), entry.password.clone())
            {
                Credential::Basic { username, password }
            } else if let Some(auth) = entry.auth.filter(|a| !a.is_empty()) {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(auth.trim())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| ConfigError::BadAuth {
                        registry: key.clone(),
                    })?;
                let (username, password) =
                    decoded
                        .split_once(':')
                        .ok_or_else(|| ConfigError::BadAuth {
                            registry: key.clone(),
                        })?;
                Credential::Basic {
                    username: username.to_string(),
                    password: password.to_string(),
                }
            } else {
                continue;
            };
            by_host.insert(canonical_host(&key), credential);
        }
        Ok(Self { by_host })
    }

    /// Sets a user name and password for `host`.
    pub fn insert_basic(&mut self, host: &str, username: &str, password: &str) {
        self.by_host.insert(
            canonical_host(host),
            Credential::Basic {
                username: username.into(),
                password: password.into(),
            },
        );
    }

    /// Adds another config's entries; hosts already present keep their credential.
    pub fn merge(&mut self, other: DockerConfig) {
        for (k, v) in other.by_host {
            self.by_host.entry(k).or_insert(v);
        }
    }

    /// The credential for a reference's registry domain (`docker.io`, `quay.io`, `host:5000`).
    pub fn credential_for(&self, domain: &str) -> Option<&Credential> {
        self.by_host.get(&canonical_host(domain))
    }

    /// Whether any credential is configured.
    pub fn is_empty(&self) -> bool {
        self.by_host.is_empty()
    }
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm="…"`.
    Basic,
    /// `Bearer realm="…",service="…",scope="…"`.
    Bearer {
        /// Token endpoint.
        realm: String,
        /// The service name to ask the token for.
        service: Option<String>,
        /// The scope the registry wants.
        scope: Option<String>,
    },
}

impl Challenge {
    /// Parses the header value; `None` for schemes we do not speak.
    pub fn parse(header: &str) -> Option<Self> {
        let header = header.trim();
        let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Some(Challenge::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let params = parse_params(rest);
        Some(Challenge::Bearer {
            realm: params.get("realm")?.clone(),
            service: params.get("service").cloned(),
            scope: params.get("scope").cloned(),
        })
    }
}

/// `k="v", k2=v2` with quoted values that may hold commas.
fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => break,
                    _ => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek() {
                if *c == ',' {
                    break;
                }
                value.push(*c);
                chars.next();
            }
        }
        out.insert(key.trim().to_lowercase(), value.trim().to_string());
    }
    out
}

/// The longest token lifetime we believe: a token service may claim anything (2^64-1 s
/// overflowed `Instant` arithmetic once); past a day we ask again anyway.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// The shortest time a token is reused: a token service answering `expires_in: 0` gets asked
/// again at most once a second per scope set, not once per request.
pub const MIN_TOKEN_REUSE: Duration = Duration::from_secs(1);

/// Bearer tokens by (realm, service, scope), reused for the lifetime the token service gave
/// less a margin (a quarter of it, at most 30 s), so a token is renewed before the registry
/// refuses it: a 300 s token for 270 s, a 2 s token for 1.5 s. `Debug` shows how many tokens
/// are held, never a token.
#[derive(Default)]
pub struct TokenCache {
    tokens: Mutex<HashMap<String, (String, Instant)>>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held = self.tokens.lock().map(|t| t.len()).unwrap_or(0);
        f.debug_struct("TokenCache").field("tokens", &held).finish()
    }
}

impl TokenCache {
    /// The cached token for `key`, if still fresh.
    pub fn get(&self, key: &str) -> Option<String> {
        let tokens = self.tokens.lock().ok()?;
        tokens
            .get(key)
            .filter(|(_, expires)| *expires > Instant::now())
            .map(|(t, _)| t.clone())
    }

    /// Stores a token valid for `expires_in` as the token service says (at most
    /// [`MAX_TOKEN_LIFETIME`], whatever it claims), to be reused until the margin before that
    /// ([`TokenCache`]), and at least [`MIN_TOKEN_REUSE`]. Short-lived tokens are honoured: a
    /// registry refuses an expired one, and the token spec's "at least 60 s" binds servers.
    pub fn put(&self, key: String, token: String, expires_in: Duration) {
        let ttl = expires_in.min(MAX_TOKEN_LIFETIME);
        let margin = (ttl / 4).min(Duration::from_secs(30));
        let reuse = ttl.saturating_sub(margin).max(MIN_TOKEN_REUSE);
        let now = Instant::now();
        let expires = now.checked_add(reuse).unwrap_or(now);
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.insert(key, (token, expires));
        }
    }

    /// Forgets a token the registry refused.
    pub fn remove(&self, key: &str) {
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.remove(key);
        }
    }
}

/// The token endpoint's answer.
#[derive(Deserialize)]
pub struct TokenResponse {
    /// Docker's field.
    #[serde(default)]
    pub token: Option<String>,
    /// OAuth2's field.
    #[serde(default)]
    pub access_token: Option<String>,
    /// Seconds of validity.
    #[serde(default)]
    pub expires_in: Option<u64>,
}

impl TokenResponse {
    /// Reads a token service's answer: the token (Docker's `token` or OAuth2's
    /// `access_token`), which must be a valid header value, and its lifetime (60 s when not
    /// given). The error names what is wrong and never quotes the body (it may hold a token).
    pub fn parse(body: &[u8]) -> Result<(String, Duration), String> {
        // Only where, never serde's message: it quotes strings and numbers of the input ("invalid
        // type: string \"<token>\"") and a token must not reach an error (found by fuzzing).
        let body: TokenResponse = serde_json::from_slice(body).map_err(|e| {
            format!(
                "token answer is not the token JSON (line {}, column {})",
                e.line(),
                e.column()
            )
        })?;
        let token = body
            .token
            .or(body.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| "token answer has no token".to_string())?;
        if http::HeaderValue::from_str(&format!("Bearer {token}")).is_err() {
            return Err("token is not a valid header value".into());
        }
        Ok((token, Duration::from_secs(body.expires_in.unwrap_or(60))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_answer_error_never_quotes_the_answer() {
        // A token service answering a bare JSON string or number: serde would quote it.
        for body in [
            &br#""eyJhbGciOiJFUzI1NiJ9.secret""#[..],
            b"12345678901234",
            b"{\"token\": 5}",
        ] {
            let reason = TokenResponse::parse(body).expect_err("not the token JSON");
            assert!(
                !reason.contains("secret") && !reason.contains("12345678"),
                "{reason}"
            );
        }
        let (token, ttl) = TokenResponse::parse(br#"{"access_token": "t0k", "expires_in": 300}"#)
            .expect("an OAuth2 answer");
        assert_eq!((token.as_str(), ttl), ("t0k", Duration::from_secs(300)));
        assert!(
            TokenResponse::parse(br#"{"token": "a\nb"}"#).is_err(),
            "not a header value"
        );
    }

    #[test]
    fn docker_config_forms_and_host_matching() {
        let json = br#"{"auths": {
            "https://index.docker.io/v1/": {"auth": "aHViOmh1YnBhc3M="},
            "quay.io": {"username": "q", "password": "qp"},
            "http://localhost:5000": {"auth": "bG9jYWw6bHA="},
            "ghcr.io": {"identitytoken": "refresh-me"},
            "empty.io": {}
        }}"#;
        let c = DockerConfig::from_json(json, "test").unwrap();
        assert_eq!(
            c.credential_for("docker.io"),
            Some(&Credential::Basic {
                username: "hub".into(),
                password: "hubpass".into()
            })
        );
        assert_eq!(
            c.credential_for("QUAY.io"),
            Some(&Credential::Basic {
                username: "q".into(),
                password: "qp".into()
            })
        );
        assert_eq!(
            c.credential_for("localhost:5000"),
            Some(&Credential::Basic {
                username: "local".into(),
                password: "lp".into()
            })
        );
        assert_eq!(
            c.credential_for("ghcr.io"),
            Some(&Credential::IdentityToken("refresh-me".into()))
        );
        assert_eq!(c.credential_for("empty.io"), None);
        assert_eq!(c.credential_for("localhost:5001"), None);
    }

    #[test]
    fn errors_and_debug_never_show_secrets() {
        let err =
            DockerConfig::from_json(br#"{"auths": {"x.io": {"auth": "!!!"}}}"#, "f").unwrap_err();
        assert!(matches!(err, ConfigError::BadAuth { .. }));
        let err = DockerConfig::from_json(br#"{"auths": {"x.io": {"password": "hunter2"#, "f")
            .unwrap_err();
        assert!(!err.to_string().contains("hunter2"));
        let c = Credential::Basic {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!format!("{:?}", Credential::IdentityToken("tok".into())).contains("tok"));
    }

    #[test]
    fn challenges() {
        assert_eq!(
            Challenge::parse(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            Challenge::parse(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/nginx:pull,push".into()),
            })
        );
        assert_eq!(Challenge::parse("Negotiate abc"), None);
        assert_eq!(Challenge::parse("Bearer service=x"), None);
    }

    #[test]
    fn token_cache_expires() {
        let c = TokenCache::default();
        c.put("k".into(), "t".into(), Duration::from_secs(300));
        assert_eq!(c.get("k").as_deref(), Some("t"));
        c.remove("k");
        assert_eq!(c.get("k"), None);
    }

    #[test]
    fn a_short_lived_token_is_renewed_before_it_expires_not_kept_a_minute() {
        let c = TokenCache::default();
        c.put("short".into(), "t".into(), Duration::from_secs(2));
        c.put("long".into(), "u".into(), Duration::from_secs(300));
        assert_eq!(c.get("short").as_deref(), Some("t"));
        // Reused for 1.5 s of its 2 s: gone well before the registry would refuse it.
        std::thread::sleep(Duration::from_millis(1_700));
        assert_eq!(c.get("short"), None, "a 2 s token is not kept past 1.5 s");
        assert_eq!(c.get("long").as_deref(), Some("u"));
    }

    #[test]
    fn absurd_token_lifetimes_neither_overflow_nor_show_in_debug() {
        let c = TokenCache::default();
        c.put(
            "k".into(),
            "s3cret-token".into(),
            Duration::from_secs(u64::MAX),
        );
        assert_eq!(c.get("k").as_deref(), Some("s3cret-token"));
        c.put("z".into(), "t".into(), Duration::ZERO);
        assert_eq!(c.get("z").as_deref(), Some("t"), "reused at least a second");
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("tokens: 2"), "{shown}");
    }

    proptest::proptest! {
        /// `WWW-Authenticate` comes from the registry: any value parses or is refused, never a
        /// panic.
        #[test]
        fn arbitrary_challenges_never_panic(header in "\\PC{0,300}") {
            let _ = Challenge::parse(&header);
            let _ = Challenge::parse(&format!("Bearer {header}"));
        }

        /// A docker config from a Secret may hold anything.
        #[test]
        fn arbitrary_docker_configs_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = DockerConfig::from_json(&bytes, "fuzz");
        }
    }
}
