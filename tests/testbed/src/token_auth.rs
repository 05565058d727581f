//! A registry behind distribution's `auth: token` with a test token issuer, the flow Docker Hub,
//! GHCR and quay.io use: the registry answers 401 with `WWW-Authenticate: Bearer realm,service,
//! scope`; the client asks the issuer (with basic credentials) for a JWT granting the scope.
//!
//! The issuer signs ES256 JWTs with a self-signed certificate (rcgen) that it hands the registry
//! as `rootcertbundle`, and puts the certificate in the token's `x5c` header, which distribution
//! 2.8 verifies against that bundle. It counts the tokens it issues, so tests can check caching.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context as _;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use base64::Engine as _;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};

use crate::registry::{Credentials, Registry, RegistryOptions};

const SERVICE: &str = "testbed-registry";
const ISSUER: &str = "testbed-issuer";

struct IssuerState {
    key: EcdsaKeyPair,
    cert_der: Vec<u8>,
    credentials: Credentials,
    issued: AtomicUsize,
    refused: AtomicUsize,
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

    /// Token requests refused (bad credentials).
    pub fn refused(&self) -> usize {
        self.state.refused.load(Ordering::SeqCst)
    }
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Starts an issuer that accepts `credentials`, and a registry that trusts it.
pub async fn start_token_registry(
    credentials: Credentials,
) -> anyhow::Result<(Registry, TokenIssuer)> {
    let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).context("key")?;
    let params =
        rcgen::CertificateParams::new(vec!["testbed-issuer".to_string()]).context("cert params")?;
    let cert = params.self_signed(&key_pair).context("self-signed cert")?;
    let rng = ring::rand::SystemRandom::new();
    let key = EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        &key_pair.serialize_der(),
        &rng,
    )
    .map_err(|e| anyhow::anyhow!("key: {e}"))?;
    let state = Arc::new(IssuerState {
        key,
        cert_der: cert.der().to_vec(),
        credentials,
        issued: AtomicUsize::new(0),
        refused: AtomicUsize::new(0),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new()
        .route("/token", axum::routing::get(token))
        .with_state(state.clone());
    let server = crate::process::ServerTask::spawn(listener, app);
    let dir = tempfile::tempdir()?;
    let bundle = dir.path().join("issuer.pem");
    std::fs::write(&bundle, cert.pem())?;
    let auth_yaml = format!(
        "auth:\n  token:\n    realm: http://{addr}/token\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
        bundle.display()
    );
    let registry = Registry::start_with(RegistryOptions {
        auth_yaml: Some(auth_yaml),
        ..Default::default()
    })
    .await?;
    // The bundle must outlive the registry's start-up only; the registry has read it.
    drop(dir);
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
    if given != expected {
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
                access
                    .entry(parts[1].to_string())
                    .or_default()
                    .extend(parts[2].split(',').map(str::to_string));
            }
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let header = serde_json::json!({
        "typ": "JWT", "alg": "ES256",
        "x5c": [base64::engine::general_purpose::STANDARD.encode(&state.cert_der)],
    });
    let claims = serde_json::json!({
        "iss": ISSUER, "sub": state.credentials.username, "aud": SERVICE,
        "exp": now + 300, "nbf": now - 10, "iat": now - 10,
        "jti": format!("{now}-{}", state.issued.load(Ordering::SeqCst)),
        "access": access.iter().map(|(name, actions)| serde_json::json!({"type": "repository", "name": name, "actions": actions})).collect::<Vec<_>>(),
    });
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let rng = ring::rand::SystemRandom::new();
    let Ok(signature) = state.key.sign(&rng, signing_input.as_bytes()) else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "sign").into_response();
    };
    state.issued.fetch_add(1, Ordering::SeqCst);
    let jwt = format!("{signing_input}.{}", b64url(signature.as_ref()));
    axum::Json(serde_json::json!({"token": jwt, "expires_in": 300})).into_response()
}
