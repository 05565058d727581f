//! Start-up every long-running function shares (kubert's `Runtime`, reduced to what we use):
//! signal handling, the metrics registry with the function's prefix, the admin server, and the
//! Kubernetes client from `KUBECONFIG` or the in-cluster config.

use std::sync::Arc;

use prometheus_client::registry::Registry;

use crate::admin::{BindError, Readiness};
use crate::config::AdminArgs;
use crate::metrics_auth::{MetricsAuth, MetricsAuthMode};
use crate::shutdown::Shutdown;

/// Why a function could not start.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The admin server could not listen.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// No Kubernetes client could be built. The message holds kube's whole explanation; it
    /// is not also given as the source, which printed every cause four times over.
    #[error("no Kubernetes client (set KUBECONFIG or run in a cluster): {0}")]
    Kube(kube::Error),
}

/// How a long-running function takes its events: from its durable JetStream consumer (`run`),
/// or as CloudEvents over HTTP (`serve`, Knative).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `run`: the JetStream consumer.
    Run,
    /// `serve`: an HTTP endpoint.
    Serve {
        /// Where to listen.
        listen: std::net::SocketAddr,
        /// How long a request waits for its result before answering 202.
        reply_timeout: std::time::Duration,
    },
}

impl From<&crate::config::ServeArgs> for Mode {
    fn from(args: &crate::config::ServeArgs) -> Self {
        Mode::Serve {
            listen: args.listen,
            reply_timeout: std::time::Duration::from_secs(args.reply_timeout_seconds),
        }
    }
}

/// What a running function holds from start-up.
pub struct Runtime {
    /// Turned true by the function once its start-up work is done.
    pub readiness: Readiness,
    /// The drain signal.
    pub shutdown: Shutdown,
    /// The Kubernetes client.
    pub client: kube::Client,
    admin: tokio::task::JoinHandle<()>,
}

impl Runtime {
    /// Installs the signal handlers, registers the function's metrics under
    /// `imagebackup_<function>_` with `register`, starts the admin server and builds the
    /// Kubernetes client.
    pub async fn start(
        function: &str,
        admin: &AdminArgs,
        register: impl FnOnce(&mut Registry),
    ) -> Result<Self, RuntimeError> {
        let readiness = Readiness::default();
        let shutdown = Shutdown::on_signals({
            let readiness = readiness.clone();
            move || readiness.set(false)
        });
        let mut registry = Registry::with_prefix("imagebackup");
        register(registry.sub_registry_with_prefix(function));
        let client = kube::Client::try_default()
            .await
            .map_err(RuntimeError::Kube)?;
        let metrics_auth = match admin.metrics_auth {
            MetricsAuthMode::None => None,
            MetricsAuthMode::Kubernetes => Some(MetricsAuth::new(client.clone())),
        };
        let (addr, admin) = crate::admin::serve(
            admin.metrics_listen,
            Arc::new(registry),
            readiness.clone(),
            shutdown.clone(),
            metrics_auth,
        )
        .await?;
        tracing::info!(%addr, function, "admin server listening");
        Ok(Self {
            readiness,
            shutdown,
            client,
            admin,
        })
    }

    /// Waits for the admin server to stop (after the drain).
    pub async fn finish(self) {
        let _ = self.admin.await;
    }
}

/// The process exit code for a function's result: 0, or 1 with the error logged and printed on
/// stderr as `<function>: <error>` (binaries pass anyhow's `{:#}`, the error with its causes).
pub fn exit_code(function: &str, result: Result<(), String>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "{function} failed");
            eprintln!("{function}: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
