//! What the backup handler reaches the world through, as two ports: [`Cluster`] (the Kubernetes
//! reads and writes it makes) and [`Registry`] (the copy engine). The handler decides; these
//! deliver. The real implementations are here — [`KubeCluster`] over a `kube::Client`, and the
//! [`Copier`] itself — and the handler's unit tests put in-memory fakes in their place, as
//! controller-rs's `Context::test()` does, so every decision is tested without an API server,
//! a registry or NATS.

use std::future::Future;
use std::sync::{Arc, OnceLock};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ObjectReference, ServiceAccount};
use kube::Api;
use kube::api::PostParams;
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};
use shared::crd::ImageBackup;
use shared::events::{WorkloadKind, WorkloadRef};
use shared::kube_events::{Events, KubeEvents};
use shared::reference::Reference;
use shared::registry::auth::DockerConfig;
use shared::service_accounts::ServiceAccounts;
use shared::workload::Workload;
use tokio::sync::watch;

use crate::copy::{ClientOptions, Copier, CopyError, CopySummary, Progress, RegistryClient};

/// The Kubernetes calls the backup handler makes, and its Events ([`Events`]). Errors are the
/// API's own (`kube::Error`), so the handler classifies them once
/// ([`shared::api_error::ApiFailure`]) whatever delivers them.
pub trait Cluster: Events {
    /// The workload `r` names as the cluster has it now (`None`: it does not exist), and the
    /// ServiceAccount its pods run as (`None`: not found; read at most a few seconds ago,
    /// [`shared::service_accounts`]). `r` has been validated.
    fn workload(
        &self,
        r: &WorkloadRef,
    ) -> impl Future<Output = Result<(Option<Workload>, Option<ServiceAccount>), kube::Error>> + Send;

    /// Creates an ImageBackup (409 when one of that name exists).
    fn create(
        &self,
        ib: &ImageBackup,
    ) -> impl Future<Output = Result<ImageBackup, kube::Error>> + Send;

    /// Reads the ImageBackup `name`.
    fn get(&self, name: &str) -> impl Future<Output = Result<ImageBackup, kube::Error>> + Send;

    /// The ImageBackup `name` as this process's watch on ImageBackups last saw it (`None`: not
    /// seen, or no watch yet). It may be behind the API server, so it only answers where an
    /// old copy is safe: a Completed backup whose digest the registry is then asked for.
    fn known(&self, name: &str) -> Option<ImageBackup>;

    /// Replaces `ib`'s status, guarded by its `resourceVersion` (409 when it changed).
    fn replace_status(
        &self,
        ib: &ImageBackup,
    ) -> impl Future<Output = Result<ImageBackup, kube::Error>> + Send;

    /// The registry credentials in the pull secrets `names` of `namespace` (missing or
    /// unreadable ones are left out and logged).
    fn pull_secrets(
        &self,
        namespace: &str,
        names: &[String],
    ) -> impl Future<Output = DockerConfig> + Send;
}

/// The registry work the backup handler asks for.
pub trait Registry: Send + Sync + 'static {
    /// The digest the target tag resolves to now, `None` when it does not exist.
    fn target_digest(
        &self,
        target: &Reference,
    ) -> impl Future<Output = Result<Option<String>, CopyError>> + Send;

    /// Copies `source` to `target`, verified, with `extra` credentials (a workload's pull
    /// secrets) on top of the configured ones; progress goes to `progress`.
    fn copy(
        &self,
        source: &Reference,
        target: &Reference,
        extra: DockerConfig,
        progress: watch::Sender<Progress>,
    ) -> impl Future<Output = Result<CopySummary, CopyError>> + Send;
}

/// [`Cluster`] over a real API server.
#[derive(Clone)]
pub struct KubeCluster {
    client: kube::Client,
    api: Api<ImageBackup>,
    accounts: ServiceAccounts,
    /// The requests controller's view of the ImageBackups, once it runs.
    seen: Arc<OnceLock<Store<ImageBackup>>>,
    events: KubeEvents,
}

impl KubeCluster {
    /// The cluster `client` talks to; Events are recorded through `events`.
    pub fn new(client: kube::Client, events: KubeEvents) -> Self {
        Self {
            api: Api::all(client.clone()),
            accounts: ServiceAccounts::new(client.clone()),
            seen: Arc::default(),
            client,
            events,
        }
    }

    /// Answers [`Cluster::known`] from `store` (the requests controller's reflector, which
    /// watches every ImageBackup anyway). Only the first store given is kept.
    pub fn share_store(&self, store: Store<ImageBackup>) {
        let _ = self.seen.set(store);
    }
}

impl Cluster for KubeCluster {
    async fn workload(
        &self,
        r: &WorkloadRef,
    ) -> Result<(Option<Workload>, Option<ServiceAccount>), kube::Error> {
        let client = self.client.clone();
        let workload = match r.kind {
            WorkloadKind::Deployment => Api::<Deployment>::namespaced(client.clone(), &r.namespace)
                .get_opt(&r.name)
                .await?
                .map(|d| Workload::Deployment(Box::new(d))),
            WorkloadKind::DaemonSet => Api::<DaemonSet>::namespaced(client.clone(), &r.namespace)
                .get_opt(&r.name)
                .await?
                .map(|d| Workload::DaemonSet(Box::new(d))),
        };
        let account = match &workload {
            Some(w) => {
                self.accounts
                    .get(&r.namespace, &w.service_account_name())
                    .await?
            }
            None => None,
        };
        Ok((workload, account))
    }

    async fn create(&self, ib: &ImageBackup) -> Result<ImageBackup, kube::Error> {
        self.api.create(&PostParams::default(), ib).await
    }

    async fn get(&self, name: &str) -> Result<ImageBackup, kube::Error> {
        self.api.get(name).await
    }

    fn known(&self, name: &str) -> Option<ImageBackup> {
        let store = self.seen.get()?;
        store.get(&ObjectRef::new(name)).map(|ib| (*ib).clone())
    }

    async fn replace_status(&self, ib: &ImageBackup) -> Result<ImageBackup, kube::Error> {
        let name = ib.metadata.name.as_deref().unwrap_or_default();
        self.api
            .replace_status(name, &PostParams::default(), ib)
            .await
    }

    async fn pull_secrets(&self, namespace: &str, names: &[String]) -> DockerConfig {
        shared::pull_secrets::pull_secrets(&self.client, namespace, names).await
    }
}

impl Events for KubeCluster {
    async fn record(&self, about: &ObjectReference, type_: EventType, reason: &str, note: &str) {
        self.events.record(about, type_, reason, note).await;
    }
}

impl Registry for Copier {
    async fn target_digest(&self, target: &Reference) -> Result<Option<String>, CopyError> {
        Copier::target_digest(self, target).await
    }

    async fn copy(
        &self,
        source: &Reference,
        target: &Reference,
        extra: DockerConfig,
        progress: watch::Sender<Progress>,
    ) -> Result<CopySummary, CopyError> {
        if extra.is_empty() {
            return Copier::copy(self, source, target, Some(progress)).await;
        }
        // The pull secrets first; the configured credentials fill in the other hosts.
        let base = self.client().options().clone();
        let mut credentials = extra;
        credentials.merge(base.credentials.clone());
        match RegistryClient::new(ClientOptions {
            credentials,
            ..base
        }) {
            Ok(client) => {
                self.with_client(client)
                    .copy(source, target, Some(progress))
                    .await
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot build a client with the imagePullSecrets; copying without them");
                Copier::copy(self, source, target, Some(progress)).await
            }
        }
    }
}
