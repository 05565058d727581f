//! A test Kubernetes API server that speaks the real REST protocol over plain HTTP, so
//! `kube::Client` and a real `kubectl` work against it unchanged. It keeps state and applies the
//! rules of kube-apiserver that image-backup and its tests rely on; it is not a mock that returns
//! canned answers.
//!
//! # What it does
//! - Discovery (`/version`, `/api`, `/apis`, group versions) for core/v1 (namespaces, secrets,
//!   events, configmaps, serviceaccounts, services, pods, PVCs), apps/v1 (deployments,
//!   daemonsets, statefulsets, replicasets), batch/v1, policy/v1 (PDBs), networking.k8s.io/v1
//!   (network policies), rbac.authorization.k8s.io/v1, events.k8s.io/v1,
//!   coordination.k8s.io/v1 (leases), apiextensions.k8s.io/v1 (CRDs). Creating a CRD starts
//!   serving its group/version/resource, cluster- or namespace-scoped, with or without status.
//! - Admission ([`validation`]): custom resources against their CRD's structural schema (types,
//!   required, enum, pattern, lengths, bounds, date-time, nullable, preserve-unknown-fields,
//!   int-or-string, defaults), unknown fields pruned or refused/warned per `fieldValidation`;
//!   kube-apiserver's rules for Deployments/DaemonSets/StatefulSets/ReplicaSets (containers,
//!   names, images, selector matches labels, immutable selector), Namespaces, ConfigMap and
//!   Secret keys, RBAC roles and bindings, core and events.k8s.io Events; `Warning` headers
//!   (unknown fields, CRD formats kube-apiserver does not know); `dryRun=All` on create.
//! - get, list (label and field selectors, all namespaces), create (generateName, 409),
//!   update (resourceVersion precondition, 409), delete (finalizers), deletecollection, the four
//!   patch types ([`patch`]), the status subresource, and watch with resourceVersion, BOOKMARKs,
//!   `sendInitialEvents`, and 410 Gone as an ERROR event for compacted history.
//! - Tables (`Accept: application/json;as=Table;g=meta.k8s.io;v=v1`) with a CRD's
//!   additionalPrinterColumns evaluated, in lists and in watches.
//! - Workload simulation: Deployments and DaemonSets become Ready shortly after each spec change
//!   (switchable; a workload can be held not-ready).
//! - Faults: latency, the next N requests answering 429/500/503, watches cut after N events,
//!   history compaction.
//!
//! # What it simplifies (compared with kube-apiserver)
//! - No authentication or authorization, no TLS, no admission webhooks; built-in kinds are not
//!   validated against their full OpenAPI schemas (only the rules listed above) and get no
//!   defaults (strategy, imagePullPolicy, ...); no CEL (`x-kubernetes-validations`);
//!   `dryRun` only on create.
//! - Server-side apply merges the applied configuration with strategic-merge rules; there is no
//!   field ownership (no conflicts, no removal of fields a manager stopped applying).
//! - Strategic merge patch knows the merge keys of the pod template lists only.
//! - `limit`/`continue` are ignored: lists return everything in one page (allowed by the API).
//! - Deleting a namespace does not delete its contents; there is no garbage collector
//!   (ownerReferences are stored, not acted on); finalizers are honoured.
//! - Tables: kube-apiserver's columns for Deployments (with `-o wide` containers, images,
//!   selector), DaemonSets, StatefulSets, Namespaces, Services, ConfigMaps and Secrets; other
//!   built-ins print Name and Age (CRDs print their own columns).
//! - Request bodies are JSON (and YAML for apply); kubectl's imperative `create namespace`,
//!   `create configmap` and the like send protobuf, which is refused (400).
//! - OpenAPI v2/v3 documents describe the served kinds loosely (objects with any fields),
//!   enough for kubectl's discovery of server-side field validation.

pub mod error;
mod handlers;
pub mod patch;
pub mod resources;
mod simulation;
pub mod store;
pub mod validation;

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context as _;

use resources::Resource;
use store::Store;

/// Faults a test can switch on.
#[derive(Debug, Default)]
pub struct Faults {
    /// Added to every request.
    pub latency: Duration,
    /// The next requests answer these codes (429, 500, 503) instead of being served.
    pub fail_next: VecDeque<u16>,
    /// Watches end after sending this many events.
    pub cut_watches_after: Option<usize>,
}

/// Workload simulation settings.
#[derive(Debug, Clone)]
pub struct Simulation {
    /// Whether Deployments and DaemonSets become Ready by themselves.
    pub enabled: bool,
    /// How long after a spec change they become Ready.
    pub delay: Duration,
    /// `namespace/name` of workloads held not-ready.
    pub held: HashSet<String>,
    /// Nodes a DaemonSet runs on.
    pub nodes: i64,
}

impl Default for Simulation {
    fn default() -> Self {
        Self {
            enabled: true,
            delay: Duration::from_millis(100),
            held: HashSet::new(),
            nodes: 2,
        }
    }
}

/// Shared server state.
pub(crate) struct ApiState {
    pub(crate) store: Mutex<Store>,
    pub(crate) resources: RwLock<Vec<Resource>>,
    pub(crate) faults: Mutex<Faults>,
    pub(crate) simulation: Mutex<Simulation>,
    pub(crate) addr: SocketAddr,
    /// Every request as `METHOD path?query`, for tests and benchmarks that count API calls.
    pub(crate) requests: Mutex<Vec<String>>,
}

impl ApiState {
    /// The store, locked. A poisoned lock (a panic while holding it) is a 500.
    pub(crate) fn store(&self) -> Result<std::sync::MutexGuard<'_, Store>, error::ApiError> {
        self.store
            .lock()
            .map_err(|_| error::ApiError::internal("store lock poisoned"))
    }
}

/// A running test API server; stops when dropped.
pub struct ApiServer {
    state: Arc<ApiState>,
    _server: crate::process::ServerTask,
}

impl ApiServer {
    /// Starts a server on a free loopback port.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_on("127.0.0.1:0".parse()?).await
    }

    /// Starts a server on `addr`.
    pub async fn start_on(addr: SocketAddr) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("bind {addr}"))?;
        let addr = listener.local_addr()?;
        let state = Arc::new(ApiState {
            store: Mutex::new(Store::default()),
            resources: RwLock::new(resources::builtins()),
            faults: Mutex::new(Faults::default()),
            simulation: Mutex::new(Simulation::default()),
            addr,
            requests: Mutex::new(Vec::new()),
        });
        handlers::bootstrap(&state)?;
        let app = handlers::router(state.clone());
        let server = crate::process::ServerTask::spawn(listener, app);
        Ok(Self {
            state,
            _server: server,
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.state.addr)
    }

    /// A kubeconfig for this server (no credentials: the server has no auth).
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: testbed\n  cluster:\n    server: {}\ncontexts:\n- name: testbed\n  context:\n    cluster: testbed\n    user: testbed\n    namespace: default\ncurrent-context: testbed\nusers:\n- name: testbed\n  user: {{}}\npreferences: {{}}\n",
            self.url()
        )
    }

    /// Writes [`ApiServer::kubeconfig`] to `path`.
    pub fn write_kubeconfig(&self, path: &std::path::Path) -> anyhow::Result<()> {
        std::fs::write(path, self.kubeconfig()).with_context(|| format!("write {}", path.display()))
    }

    /// A kube-rs client for this server.
    pub fn client(&self) -> anyhow::Result<kube::Client> {
        shared::tls::ensure_crypto_provider();
        let config = kube::Config::new(self.url().parse()?);
        Ok(kube::Client::try_from(config)?)
    }

    /// Creates the ImageBackup CRD (from the Rust type, as `crds/imagebackup.yaml` is) through
    /// the API, as `kubectl apply -f crds/imagebackup.yaml` would.
    pub async fn install_imagebackup_crd(&self) -> anyhow::Result<()> {
        let crd = shared::crd::crd();
        let api = kube::Api::all(self.client()?);
        api.create(&kube::api::PostParams::default(), &crd).await?;
        Ok(())
    }

    /// Adds latency to every request.
    pub fn set_latency(&self, latency: Duration) {
        if let Ok(mut f) = self.state.faults.lock() {
            f.latency = latency;
        }
    }

    /// The next requests answer these codes (429, 500, 503).
    pub fn fail_next(&self, codes: &[u16]) {
        if let Ok(mut f) = self.state.faults.lock() {
            f.fail_next.extend(codes);
        }
    }

    /// Watches started from now end after `events` events (`None`: never).
    pub fn cut_watches_after(&self, events: Option<usize>) {
        if let Ok(mut f) = self.state.faults.lock() {
            f.cut_watches_after = events;
        }
    }

    /// Forgets the change history: every earlier resourceVersion now answers 410 Gone.
    pub fn compact(&self) {
        if let Ok(mut s) = self.state.store.lock() {
            s.compact();
        }
    }

    /// Switches the workload simulation on or off.
    pub fn simulate_workloads(&self, enabled: bool) {
        if let Ok(mut s) = self.state.simulation.lock() {
            s.enabled = enabled;
        }
    }

    /// Holds a workload not-ready (its status shows no ready replicas) until released.
    pub fn hold_not_ready(&self, namespace: &str, name: &str) {
        if let Ok(mut s) = self.state.simulation.lock() {
            s.held.insert(format!("{namespace}/{name}"));
        }
    }

    /// Releases a held workload; it becomes Ready shortly.
    pub fn release(&self, namespace: &str, name: &str) {
        if let Ok(mut s) = self.state.simulation.lock() {
            s.held.remove(&format!("{namespace}/{name}"));
        }
        simulation::reconcile_all(&self.state);
    }

    /// The requests served so far, as `METHOD path?query` (at most the last million).
    pub fn requests(&self) -> Vec<String> {
        self.state
            .requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Forgets the request log.
    pub fn reset_requests(&self) {
        if let Ok(mut r) = self.state.requests.lock() {
            r.clear();
        }
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.state
            .store
            .lock()
            .map(|s| s.resource_version())
            .unwrap_or(0)
    }
}
