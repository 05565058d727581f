//! A whole test cluster for end-to-end tests and the demo: the test API server with the
//! ImageBackup CRD, nats-server with the stream, a source ("external") registry and a backup
//! registry, and the function binaries run as processes against them with the environment a
//! user would give them.

use std::time::Duration;

use async_nats::jetstream;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::PostParams;

use crate::function::FunctionProcess;
use crate::{ApiServer, NatsServer, Pusher, Registry};

/// The backup registry's path prefix in the cluster.
pub const BACKUP_PREFIX: &str = "backup";

/// The running cluster; everything stops when it is dropped.
pub struct Cluster {
    /// The test API server.
    pub api: ApiServer,
    /// nats-server (JetStream).
    pub nats: NatsServer,
    /// A JetStream context for reading the stream.
    pub js: jetstream::Context,
    /// A client for the API server.
    pub client: kube::Client,
    /// Where the kubeconfig is.
    pub kubeconfig: tempfile::NamedTempFile,
    /// The registry images come from.
    pub source: Registry,
    /// The backup registry.
    pub backup: Registry,
}

impl Cluster {
    /// Starts everything.
    pub async fn start() -> anyhow::Result<Self> {
        let api = ApiServer::start().await?;
        api.install_imagebackup_crd().await?;
        let nats = NatsServer::start().await?;
        let js = jetstream::new(shared::nats::connect(&nats.url(), "cluster").await?);
        shared::nats::ensure_stream(&js).await?;
        let kubeconfig = tempfile::NamedTempFile::new()?;
        api.write_kubeconfig(kubeconfig.path())?;
        Ok(Self {
            client: api.client()?,
            api,
            nats,
            js,
            kubeconfig,
            source: Registry::start().await?,
            backup: Registry::start().await?,
        })
    }

    /// `host:port/backup`: the `--backup-registry` of the functions.
    pub fn backup_registry(&self) -> String {
        format!("{}/{BACKUP_PREFIX}", self.backup.host())
    }

    /// A pusher into the source registry.
    pub fn source_pusher(&self) -> Pusher {
        Pusher::new(&self.source.host(), None)
    }

    /// The environment every function gets.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("KUBECONFIG", self.kubeconfig.path().display().to_string()),
            ("NATS_URL", self.nats.url()),
            ("BACKUP_REGISTRY", self.backup_registry()),
            (
                "INSECURE_REGISTRIES",
                format!("{},{}", self.source.host(), self.backup.host()),
            ),
            ("LOG_LEVEL", "info,kube=warn,async_nats=warn".to_string()),
        ]
    }

    /// Starts `function` (`watcher`, `backup`, `rollout`) with `args` and the cluster's
    /// environment plus `extra`; waits until it is ready.
    pub async fn spawn(
        &self,
        function: &str,
        args: &[&str],
        extra: &[(&'static str, String)],
    ) -> anyhow::Result<FunctionProcess> {
        let mut env = self.env();
        env.extend(extra.iter().cloned());
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let mut p = FunctionProcess::spawn(function, &args, &env)?;
        p.wait_ready(Duration::from_secs(60)).await?;
        Ok(p)
    }

    /// Creates a namespace (an existing one is fine).
    pub async fn namespace(&self, name: &str) -> anyhow::Result<()> {
        let ns: Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))?;
        match Api::<Namespace>::all(self.client.clone())
            .create(&PostParams::default(), &ns)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Every event stored in the stream so far.
    pub async fn events(&self) -> anyhow::Result<Vec<(String, shared::events::Payload)>> {
        crate::stream::stored(&self.js).await
    }
}
