//! The admin server every function runs: `/healthz` (the process answers), `/readyz` (earned:
//! false until the function's start-up work is done, false again from the first SIGTERM) and
//! `/metrics` (OpenMetrics text from `prometheus-client`, each function under its own prefix).
//!
//! It reads only the metrics registry and the readiness flag, and never a NATS client; with
//! `--metrics-auth kubernetes` it asks the Kubernetes API who a `/metrics` caller is
//! ([`crate::metrics_auth`]), and nothing else.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use prometheus_client::registry::Registry;

use crate::metrics_auth::{MetricsAuth, Verdict};
use crate::shutdown::Shutdown;

/// Whether the function is ready for work. Starts false. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Sets the flag.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    /// Reads the flag.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Why the admin server could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} for the admin server: {source}")]
pub struct BindError {
    /// The address.
    pub addr: SocketAddr,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// Binds `addr` and serves until `shutdown` drains (a few more seconds of `/readyz = 503`
/// would not help anyone: the process is ending). Returns the bound address (port 0 picks one).
pub async fn serve(
    addr: SocketAddr,
    registry: Arc<Registry>,
    readiness: Readiness,
    mut shutdown: Shutdown,
    metrics_auth: Option<MetricsAuth>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), BindError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| BindError { addr, source })?;
    let ready = readiness.clone();
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route(
            "/readyz",
            axum::routing::get(move || {
                let ready = ready.get();
                async move {
                    if ready {
                        (StatusCode::OK, "ready")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                    }
                }
            }),
        )
        .route(
            "/metrics",
            axum::routing::get(move |headers: HeaderMap| {
                let registry = registry.clone();
                let auth = metrics_auth.clone();
                async move {
                    let verdict = match &auth {
                        None => Verdict::Allowed,
                        Some(auth) => {
                            let authorization = headers
                                .get(header::AUTHORIZATION)
                                .and_then(|v| v.to_str().ok());
                            auth.check(authorization).await
                        }
                    };
                    match verdict {
                        Verdict::Allowed => metrics(&registry),
                        Verdict::Unauthenticated => (
                            StatusCode::UNAUTHORIZED,
                            [(header::WWW_AUTHENTICATE, "Bearer")],
                            "a bearer token Kubernetes knows is needed\n",
                        )
                            .into_response(),
                        Verdict::Forbidden => (
                            StatusCode::FORBIDDEN,
                            "this user may not get /metrics (bind it to image-backup-metrics-reader)\n",
                        )
                            .into_response(),
                        Verdict::Unavailable => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "cannot ask Kubernetes who you are\n",
                        )
                            .into_response(),
                    }
                }
            }),
        );
    let task = tokio::spawn(async move {
        let stop = async move { shutdown.wait().await };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::warn!(error = %e, "admin server stopped");
        }
    });
    Ok((bound, task))
}

fn metrics(registry: &Registry) -> axum::response::Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
