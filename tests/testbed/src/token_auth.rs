//! A registry behind distribution's `auth: token` with a test token issuer, the flow Docker Hub,
//! GHCR and quay.io use: the registry answers 401 with `WWW-Authenticate: Bearer realm,service,
//! scope`; the client asks the issuer (with basic credentials) for a JWT granting the scope.
//!
//! The issuer signs RS256 JWTs with an RSA key made per run (`openssl genpkey`: ring signs RSA
//! but cannot make RSA keys) and a self-signed certificate for it (rcgen) that it hands the
//! registry as `rootcertbundle`, and puts the certificate in the token's `x5c` header, which
//! distribution 2.8 verifies against that bundle. It counts the tokens it issues and the scopes
//! each was asked for, so tests can check caching.
//!
//! [`TokenOptions`] make it look like an internet registry: HTTPS for the registry and the token
//! service (one per-run test CA, [`Registry::ca_pem`]), anonymous pull tokens, and tokens with a
//! short lifetime that the registry really refuses once it has passed.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context as _;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use base64::Engine as _;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};

use crate::registry::{Credentials, Registry, RegistryOptions};

const SERVICE: &str = "testbed-registry";
const ISSUER: &str = "testbed-issuer";
/// How long past `exp` distribution 2.8 still accepts a token (its `token.Leeway`, for clock
/// skew). The issuer writes `exp` this much early, so the registry refuses a token exactly
/// `lifetime` after it was issued, as a registry without leeway would.
const REGISTRY_LEEWAY_SECONDS: u64 = 60;

struct IssuerState {
    key: RsaKeyPair,
    cert_der: Vec<u8>,
    credentials: Credentials,
    options: TokenOptions,
    issued: AtomicUsize,
    refused: AtomicUsize,
    /// The scopes each issued token was asked for (space-joined, sorted), in order.
    scopes: std::sync::Mutex<Vec<String>>,
    /// Every token issued, for the credential sweep to look for.
    tokens: std::sync::Mutex<Vec<String>>,
}

/// How the token registry behaves.
#[derive(Debug, Clone)]
pub struct TokenOptions {
    /// Registry and token service over HTTPS (a test CA made for this registry).
    pub https: bool,
    /// Requests without credentials get tokens for `pull` (public repositories).
    pub anonymous_pull: bool,
    /// The lifetime of a token: `expires_in` says it, and the registry refuses the token once
    /// it has passed (`exp` is written early by the registry's leeway, see
    /// [`REGISTRY_LEEWAY_SECONDS`]).
    pub lifetime: std::time::Duration,
}

impl Default for TokenOptions {
    fn default() -> Self {
        Self {
            https: false,
            anonymous_pull: false,
            lifetime: std::time::Duration::from_secs(300),
        }
    }
}

/// A running token issuer; stops when dropped.
pub struct TokenIssuer {
    state: Arc<IssuerState>,
    _server: crate::process::ServerTask,
}

impl TokenIssuer {
    /// Tokens issued so far.
    pub fn issued(&self) -> usize {
        self.state.issued.load(Ordering::SeqCst)
    }

    /// The scopes each token issued so far was asked for (space-joined, sorted), in order.
    pub fn scopes(&self) -> Vec<String> {
        self.state
            .scopes
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// Every token issued so far (secrets: for tests that check none reached a log).
    pub fn tokens(&self) -> Vec<String> {
        self.state
            .tokens
            .lock()
            .map(|t| t.clone())
            .unwrap_or_default()
    }

    /// Token requests refused (bad credentials).
    pub fn refused(&self) -> usize {
        self.state.refused.load(Ordering::SeqCst)
    }
}

/// A fresh 2048-bit RSA key, for rcgen (the certificate) and ring (the tokens' signatures).
async fn rsa_key() -> anyhow::Result<(rcgen::KeyPair, RsaKeyPair)> {
    let out = tokio::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .kill_on_drop(true)
        .output()
        .await
        .context("run openssl genpkey (the `openssl` package; ./dev setup installs it)")?;
    anyhow::ensure!(
        out.status.success(),
        "openssl genpkey: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pem = String::from_utf8(out.stdout).context("openssl's key is not PEM")?;
    let key_pair = rcgen::KeyPair::from_pkcs8_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256)
        .context("RSA key for rcgen")?;
    let key = RsaKeyPair::from_pkcs8(&key_pair.serialize_der())
        .map_err(|e| anyhow::anyhow!("RSA key for ring: {e}"))?;
    Ok((key_pair, key))
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Starts an issuer that accepts `credentials`, and a registry that trusts it.
pub async fn start_token_registry(
    credentials: Credentials,
) -> anyhow::Result<(Registry, TokenIssuer)> {
    start_token_registry_with(credentials, TokenOptions::default()).await
}

/// [`start_token_registry`] with options: HTTPS, anonymous pulls, the tokens' lifetime.
pub async fn start_token_registry_with(
    credentials: Credentials,
    options: TokenOptions,
) -> anyhow::Result<(Registry, TokenIssuer)> {
    let (key_pair, key) = rsa_key().await?;
    let params =
        rcgen::CertificateParams::new(vec!["testbed-issuer".to_string()]).context("cert params")?;
    let cert = params.self_signed(&key_pair).context("self-signed cert")?;
    let state = Arc::new(IssuerState {
        key,
        cert_der: cert.der().to_vec(),
        credentials,
        options: options.clone(),
        issued: AtomicUsize::new(0),
        refused: AtomicUsize::new(0),
        scopes: std::sync::Mutex::default(),
        tokens: std::sync::Mutex::default(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new()
        .route("/token", axum::routing::get(token))
        .with_state(state.clone());
    let dir = tempfile::tempdir()?;
    let bundle = dir.path().join("issuer.pem");
    std::fs::write(&bundle, cert.pem())?;
    let auth_yaml = format!(
        "auth:\n  token:\n    realm: {scheme}://{addr}/token\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
        bundle.display(),
        scheme = if options.https { "https" } else { "http" },
    );
    let mut registry = Registry::start_with(RegistryOptions {
        auth_yaml: Some(auth_yaml),
        https: options.https,
        ..Default::default()
    })
    .await?;
    // The token service shares the registry's certificate (one CA to trust for both).
    let server = match registry.tls_config() {
        Some(config) => crate::process::ServerTask::spawn_tls(listener, app, config),
        None => crate::process::ServerTask::spawn(listener, app),
    };
    // The bundle must outlive the registry's start-up only; the registry has read it.
    drop(dir);
    // Its user, as an htpasswd registry's: what the docker configs of a test hold for it.
    registry.credentials = Some(state.credentials.clone());
    Ok((
        registry,
        TokenIssuer {
            state,
            _server: server,
        },
    ))
}

async fn token(
    State(state): State<Arc<IssuerState>>,
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
) -> axum::response::Response {
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            state.credentials.username, state.credentials.password
        ))
    );
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let anonymous = given.is_empty() && state.options.anonymous_pull;
    if given != expected && !anonymous {
        state.refused.fetch_add(1, Ordering::SeqCst);
        return (StatusCode::UNAUTHORIZED, "bad credentials").into_response();
    }
    let mut access: HashMap<String, Vec<String>> = HashMap::new();
    for (k, v) in &query {
        if k != "scope" {
            continue;
        }
        for scope in v.split(' ') {
            let parts: Vec<&str> = scope.split(':').collect();
            if parts.len() == 3 && parts[0] == "repository" {
                // Without credentials: pull only, whatever was asked.
                let actions = parts[2]
                    .split(',')
                    .filter(|a| !anonymous || *a == "pull")
                    .map(str::to_string);
                access
                    .entry(parts[1].to_string())
                    .or_default()
                    .extend(actions);
            }
        }
    }
    let lifetime = state.options.lifetime.as_secs().max(1);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let header = serde_json::json!({
        "typ": "JWT", "alg": "RS256",
        "x5c": [base64::engine::general_purpose::STANDARD.encode(&state.cert_der)],
    });
    let claims = serde_json::json!({
        "iss": ISSUER,
        "sub": if anonymous { "" } else { state.credentials.username.as_str() },
        "aud": SERVICE,
        "exp": (now + lifetime).saturating_sub(REGISTRY_LEEWAY_SECONDS), "nbf": now - 10, "iat": now - 10,
        "jti": format!("{now}-{}", state.issued.load(Ordering::SeqCst)),
        "access": access.iter().map(|(name, actions)| serde_json::json!({"type": "repository", "name": name, "actions": actions})).collect::<Vec<_>>(),
    });
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let rng = ring::rand::SystemRandom::new();
    let mut signature = vec![0; state.key.public().modulus_len()];
    if state
        .key
        .sign(
            &RSA_PKCS1_SHA256,
            &rng,
            signing_input.as_bytes(),
            &mut signature,
        )
        .is_err()
    {
        return (StatusCode::INTERNAL_SERVER_ERROR, "sign").into_response();
    }
    state.issued.fetch_add(1, Ordering::SeqCst);
    let mut asked: Vec<&str> = query
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' '))
        .collect();
    asked.sort_unstable();
    if let Ok(mut scopes) = state.scopes.lock() {
        scopes.push(asked.join(" "));
    }
    let jwt = format!("{signing_input}.{}", b64url(&signature));
    if let Ok(mut tokens) = state.tokens.lock() {
        tokens.push(jwt.clone());
    }
    axum::Json(serde_json::json!({"token": jwt, "expires_in": lifetime})).into_response()
}
