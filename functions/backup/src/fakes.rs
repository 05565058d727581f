//! In-memory [`Cluster`] and [`Registry`] for the handler's unit tests: the cluster keeps
//! ImageBackups with `resourceVersion`s and answers 409/404 as the API server does, and either
//! port can be told to fail its next calls; the registry copies instantly (or never, to test
//! what happens during a copy) and remembers what it was asked.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use k8s_openapi::api::core::v1::{ObjectReference, ServiceAccount};
use kube::runtime::events::EventType;
use shared::crd::ImageBackup;
use shared::events::{WorkloadChanged, WorkloadImage, WorkloadKind, WorkloadRef};
use shared::kube_events::Events;
use shared::reference::Reference;
use shared::registry::auth::DockerConfig;
use shared::workload::Workload;
use tokio::sync::{Notify, watch};

use crate::copy::{CopyError, CopySummary, Progress};
use crate::ports::{Cluster, Registry};

/// The Deployment `shop/web` (uid `u-1`) running `images`, with an init container
/// `busybox:1.36`, pull secrets `secrets` and ServiceAccount `sa`.
pub fn deployment(images: &[&str], secrets: &[&str], sa: Option<&str>) -> Workload {
    let containers: Vec<serde_json::Value> = images
        .iter()
        .enumerate()
        .map(|(i, image)| serde_json::json!({"name": format!("c{i}"), "image": image}))
        .collect();
    let secrets: Vec<serde_json::Value> = secrets
        .iter()
        .map(|n| serde_json::json!({"name": n}))
        .collect();
    Workload::Deployment(Box::new(
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "u-1"},
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"spec": {
                    "initContainers": [{"name": "init", "image": "busybox:1.36"}],
                    "containers": containers,
                    "imagePullSecrets": secrets,
                    "serviceAccountName": sa,
                }},
            },
        }))
        .unwrap(),
    ))
}

/// A `workload.changed` for `shop/web` (uid `u-1`) naming `images` (source, target) and
/// the pull secrets `secrets`.
pub fn event(images: &[(&str, &str)], secrets: &[&str]) -> WorkloadChanged {
    WorkloadChanged {
        workload: WorkloadRef {
            kind: WorkloadKind::Deployment,
            namespace: "shop".into(),
            name: "web".into(),
        },
        uid: "u-1".into(),
        generation: 1,
        images: images
            .iter()
            .map(|(source, target)| WorkloadImage {
                container: "c".into(),
                init: false,
                source: (*source).into(),
                target: (*target).into(),
            })
            .collect(),
        pull_secrets: secrets.iter().map(|s| s.to_string()).collect(),
    }
}

/// A Kubernetes API error answer with `code`.
pub fn api_error(code: u16, reason: &str) -> kube::Error {
    kube::Error::Api(
        kube::core::Status::failure(&format!("{reason} (from the fake)"), reason)
            .with_code(code)
            .boxed(),
    )
}

/// A call the fake cluster answers (to script failures and count calls).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Call {
    Workload,
    Create,
    Get,
    ReplaceStatus,
}

/// What the fake cluster holds.
#[derive(Default)]
pub struct ClusterState {
    pub workloads: Vec<Workload>,
    pub accounts: Vec<ServiceAccount>,
    /// Pull secrets by (namespace, name).
    pub secrets: HashMap<(String, String), DockerConfig>,
    pub backups: BTreeMap<String, ImageBackup>,
    /// What the watch on ImageBackups shows ([`Cluster::known`]); nothing unless a test puts
    /// something there.
    pub watched: BTreeMap<String, ImageBackup>,
    version: u64,
    /// Events recorded: (reason, note).
    pub events: Vec<(String, String)>,
    /// The next calls of a kind fail with these, in order.
    pub failures: HashMap<Call, VecDeque<kube::Error>>,
    /// Every call made, in order.
    pub calls: Vec<Call>,
}

/// The fake cluster; clones share one state.
#[derive(Clone, Default)]
pub struct FakeCluster(Arc<Mutex<ClusterState>>);

impl FakeCluster {
    /// Its state, to arrange or inspect.
    pub fn state(&self) -> MutexGuard<'_, ClusterState> {
        self.0.lock().unwrap()
    }

    /// Adds a workload.
    pub fn with_workload(self, w: Workload) -> Self {
        self.state().workloads.push(w);
        self
    }

    /// The next `n` calls of `call` fail with `code`.
    pub fn fail(&self, call: Call, code: u16, n: usize) {
        let mut s = self.state();
        let queue = s.failures.entry(call).or_default();
        for _ in 0..n {
            queue.push_back(api_error(code, "Scripted"));
        }
    }

    /// The ImageBackup `name` as stored.
    pub fn backup(&self, name: &str) -> Option<ImageBackup> {
        self.state().backups.get(name).cloned()
    }

    /// Stores `ib` as if someone else wrote it (a new `resourceVersion`).
    pub fn put(&self, mut ib: ImageBackup) {
        let mut s = self.state();
        s.version += 1;
        ib.metadata.resource_version = Some(s.version.to_string());
        ib.metadata.generation.get_or_insert(1);
        let name = ib.metadata.name.clone().unwrap_or_default();
        s.backups.insert(name, ib);
    }

    /// The reasons of the Events recorded, in order.
    pub fn event_reasons(&self) -> Vec<String> {
        self.state().events.iter().map(|(r, _)| r.clone()).collect()
    }

    fn enter(&self, call: Call) -> Result<MutexGuard<'_, ClusterState>, kube::Error> {
        let mut s = self.state();
        s.calls.push(call);
        match s.failures.get_mut(&call).and_then(VecDeque::pop_front) {
            Some(e) => Err(e),
            None => Ok(s),
        }
    }
}

impl Cluster for FakeCluster {
    async fn workload(
        &self,
        r: &WorkloadRef,
    ) -> Result<(Option<Workload>, Option<ServiceAccount>), kube::Error> {
        let s = self.enter(Call::Workload)?;
        let workload = s.workloads.iter().find(|w| w.reference() == *r).cloned();
        let account = workload.as_ref().and_then(|w| {
            let name = w.service_account_name();
            s.accounts
                .iter()
                .find(|a| {
                    a.metadata.name.as_deref() == Some(name.as_str())
                        && a.metadata.namespace.as_deref() == Some(r.namespace.as_str())
                })
                .cloned()
        });
        Ok((workload, account))
    }

    async fn create(&self, ib: &ImageBackup) -> Result<ImageBackup, kube::Error> {
        let mut s = self.enter(Call::Create)?;
        let name = ib.metadata.name.clone().unwrap_or_default();
        if s.backups.contains_key(&name) {
            return Err(api_error(409, "AlreadyExists"));
        }
        s.version += 1;
        let mut created = ib.clone();
        created.metadata.resource_version = Some(s.version.to_string());
        created.metadata.generation = Some(1);
        created.metadata.uid = Some(format!("uid-{name}"));
        s.backups.insert(name, created.clone());
        Ok(created)
    }

    fn known(&self, name: &str) -> Option<ImageBackup> {
        self.state().watched.get(name).cloned()
    }

    async fn get(&self, name: &str) -> Result<ImageBackup, kube::Error> {
        let s = self.enter(Call::Get)?;
        s.backups
            .get(name)
            .cloned()
            .ok_or_else(|| api_error(404, "NotFound"))
    }

    async fn replace_status(&self, ib: &ImageBackup) -> Result<ImageBackup, kube::Error> {
        let mut s = self.enter(Call::ReplaceStatus)?;
        let name = ib.metadata.name.clone().unwrap_or_default();
        let version = s.version + 1;
        let Some(stored) = s.backups.get_mut(&name) else {
            return Err(api_error(404, "NotFound"));
        };
        if stored.metadata.resource_version != ib.metadata.resource_version {
            return Err(api_error(409, "Conflict"));
        }
        stored.status = ib.status.clone();
        stored.metadata.resource_version = Some(version.to_string());
        let updated = stored.clone();
        s.version = version;
        Ok(updated)
    }

    async fn pull_secrets(&self, namespace: &str, names: &[String]) -> DockerConfig {
        let s = self.state();
        let mut all = DockerConfig::default();
        for name in names {
            if let Some(c) = s.secrets.get(&(namespace.to_string(), name.clone())) {
                all.merge(c.clone());
            }
        }
        all
    }
}

impl Events for FakeCluster {
    async fn record(&self, _: &ObjectReference, _: EventType, reason: &str, note: &str) {
        self.state().events.push((reason.into(), note.into()));
    }
}

/// What the fake registry holds and was asked.
#[derive(Default)]
pub struct RegistryState {
    /// What each target tag resolves to.
    pub digests: HashMap<String, String>,
    /// The next copies end with these (then: success).
    pub results: VecDeque<Result<(), CopyError>>,
    /// Copies never finish (until dropped).
    pub hang: bool,
    /// Copies asked for: (source, target, whether extra credentials came along).
    pub copies: Vec<(String, String, bool)>,
    /// Copies dropped before they finished.
    pub cancelled: usize,
}

/// The fake registry; clones share one state.
#[derive(Clone, Default)]
pub struct FakeRegistry {
    state: Arc<Mutex<RegistryState>>,
    /// Notified when a copy starts.
    pub started: Arc<Notify>,
}

/// The digest every fake copy produces.
pub const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

impl FakeRegistry {
    /// Its state, to arrange or inspect.
    pub fn state(&self) -> MutexGuard<'_, RegistryState> {
        self.state.lock().unwrap()
    }
}

/// Counts a copy dropped before it finished.
struct Cancelled(Arc<Mutex<RegistryState>>, bool);

impl Drop for Cancelled {
    fn drop(&mut self) {
        if !self.1 {
            self.0.lock().unwrap().cancelled += 1;
        }
    }
}

impl Registry for FakeRegistry {
    async fn target_digest(&self, target: &Reference) -> Result<Option<String>, CopyError> {
        Ok(self.state().digests.get(&target.to_string()).cloned())
    }

    async fn copy(
        &self,
        source: &Reference,
        target: &Reference,
        extra: DockerConfig,
        progress: watch::Sender<Progress>,
    ) -> Result<CopySummary, CopyError> {
        let (hang, result) = {
            let mut s = self.state();
            s.copies
                .push((source.to_string(), target.to_string(), !extra.is_empty()));
            (s.hang, s.results.pop_front())
        };
        let mut guard = Cancelled(self.state.clone(), false);
        progress.send_replace(Progress {
            blobs_total: 2,
            bytes_total: 100,
            ..Progress::default()
        });
        self.started.notify_one();
        if hang {
            std::future::pending::<()>().await;
        }
        guard.1 = true;
        result.unwrap_or(Ok(()))?;
        self.state()
            .digests
            .insert(target.to_string(), DIGEST.into());
        Ok(CopySummary {
            source: source.to_string(),
            target: target.to_string(),
            digest: DIGEST.into(),
            media_type: "application/vnd.oci.image.index.v1+json".into(),
            platforms: vec!["linux/amd64".into()],
            manifests: 2,
            blobs_total: 2,
            blobs_copied: 2,
            blobs_skipped: 0,
            blobs_mounted: 0,
            bytes_total: 100,
            bytes_uploaded: 100,
            already_complete: false,
            referrers_copied: 0,
            referrers_present: 0,
            referrers_skipped: Vec::new(),
            seconds: 0.0,
        })
    }
}
