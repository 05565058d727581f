//! A test Kubernetes API server that speaks the real REST protocol over plain HTTP, so
//! `kube::Client` and a real `kubectl` work against it unchanged. It keeps state and applies the
//! rules of kube-apiserver that image-backup and its tests rely on; it is not a mock that returns
//! canned answers.
//!
//! # What it does
//! - Plain HTTP and HTTPS (a fresh test CA per server; the kubeconfigs point at HTTPS, because
//!   kubectl sends bearer tokens only over TLS).
//! - Identity, authorization and audit ([`auth`]): bearer tokens naming users and service
//!   accounts (an admin in `system:masters` for the default kubeconfig), RBAC from the stored
//!   Roles/ClusterRoles and their bindings (resource and non-resource URL rules), the default
//!   policy of a fresh cluster ([`policy`]: cluster-admin, admin/edit/view aggregated from the
//!   `aggregate-to-*` roles, discovery for every authenticated user) with the aggregation
//!   controller, `kubectl auth can-i` (SelfSubjectAccessReview and SelfSubjectRulesReview),
//!   impersonation by the admin (`kubectl --as`), and an audit log of (user, verb, resource,
//!   namespace, name, code).
//! - Discovery (`/version`, `/api`, `/apis`, group versions, `status` and `scale` subresources)
//!   for every listable built-in kind of a stable version that k8s-openapi knows (56 in
//!   Kubernetes 1.33; read from its sources by the build script, `build/k8s_openapi.rs`), with
//!   kube-apiserver's short names and categories; creating a CRD starts serving its
//!   group/version/resource, cluster- or namespace-scoped, with or without status.
//! - OpenAPI v2 (every k8s-openapi definition) and v3 (per group, each kind's schema inlined)
//!   with the CRDs' own schemas, so `kubectl explain` knows every field.
//! - Request bodies in JSON, YAML (apply) and protobuf, and answers and watch streams in
//!   protobuf for a client that prefers it ([`protobuf`]: every built-in kind, generically, from
//!   the protobuf schema in k8s-pb's sources; custom resources stay JSON).
//! - Defaults of built-in workloads as kube-apiserver fills them in, and a Service's cluster IP
//!   and node ports, kept across updates ([`defaults`]).
//! - Admission ([`validation`]): custom resources against their CRD's structural schema (types,
//!   required, enum, pattern, lengths, bounds, date-time, nullable, preserve-unknown-fields,
//!   int-or-string, defaults), unknown fields pruned or refused/warned per `fieldValidation`;
//!   kube-apiserver's rules for Deployments/DaemonSets/StatefulSets/ReplicaSets (containers,
//!   names, images, selector matches labels, immutable selector), Namespaces, ConfigMap and
//!   Secret keys, RBAC roles and bindings, core and events.k8s.io Events; `Warning` headers
//!   (unknown fields, CRD formats kube-apiserver does not know); `dryRun=All` on every write.
//! - get, list (label selectors; field selectors `metadata.*` and the per-kind fields
//!   kube-apiserver supports, such as an Event's `involvedObject.*`; all namespaces;
//!   `limit`/`continue` paging with 410 for a token older than the history), create
//!   (generateName, 409), update (resourceVersion precondition, 409), delete (finalizers,
//!   `propagationPolicy=Orphan`), deletecollection, the four patch types ([`patch`]; server-side
//!   apply with field ownership, conflicts and `force`, [`managed`]), the status
//!   and scale subresources, and watch with resourceVersion, BOOKMARKs, `sendInitialEvents`,
//!   410 Gone as an ERROR event for compacted history, and a watch that cannot keep up closed
//!   without an error (kube-apiserver's unresponsive-watcher close: the client resumes).
//! - The garbage collector (owned objects go with their owner) and namespace deletion
//!   (Terminating, its objects deleted, then the namespace).
//! - core/v1 and events.k8s.io/v1 Events as two views of one store ([`events`]).
//! - Tables (`Accept: application/json;as=Table;g=meta.k8s.io;v=v1`) with kube-apiserver's
//!   columns for the common kinds (Deployment, DaemonSet, StatefulSet, ReplicaSet, Pod, Node,
//!   Namespace, Service, ConfigMap, Secret, Event) and a CRD's additionalPrinterColumns, in lists
//!   and in watches.
//! - Workload simulation (module `simulation`): Deployments own ReplicaSets per pod template (with
//!   revisions, so `kubectl rollout history/undo` work, and rolling updates in steps within
//!   maxSurge/maxUnavailable), ReplicaSets, DaemonSets and StatefulSets own Pods
//!   Running on simulated nodes, a Pod nobody owns is scheduled and runs, statuses and
//!   controller Events follow; a workload can be held not-ready.
//! - Faults: latency, the next N requests answering 429/500/503, watches cut after N events,
//!   history compaction, streaming lists refused (WatchList off).
//!
//! # What it simplifies (compared with kube-apiserver)
//! - Anonymous requests act as the admin unless [`ApiServer::require_authentication`] is on; no
//!   client certificates; the default roles are condensed (the common kinds' resources); the
//!   audit log records resource requests only.
//! - No admission webhooks; built-in kinds are not validated against their full OpenAPI schemas
//!   (only the rules listed above); no CEL (`x-kubernetes-validations`).
//! - Alpha and beta API versions are not served (kube-apiserver serves them only when enabled).
//! - Protobuf does not say which Go fields are pointers: a zero number or `false` that Go wrote
//!   for a field that is no pointer stays in the object (kube-apiserver's JSON would leave it
//!   out), except the common ones listed in `protobuf/json.rs`. Tables are answered in JSON
//!   only.
//! - Strategic merge and field ownership follow the built-in types' list markers (read from
//!   k8s-pb's sources); custom resources' `x-kubernetes-list-type` markers are not read (their
//!   lists fall back to the pod-template keys by field name), and the simulated controllers'
//!   writes are not recorded as kube-controller-manager's in `managedFields`.
//! - A continued list reads the current objects after the token's position, not a snapshot at
//!   the token's resourceVersion.
//! - The simulation's Pods are Ready as soon as they exist (no probes, no image pulls, no
//!   `imageID`); Deployments and DaemonSets roll out in steps (maxSurge/maxUnavailable), but a
//!   held one and a StatefulSet replace their Pods at once; Jobs complete without Pods;
//!   CronJobs never fire.
//! - OpenAPI v3 describes the CRD kind itself loosely (its schema is recursive and v3 documents
//!   inline each kind's schema; v2 has it).

pub mod auth;
pub mod defaults;
pub mod error;
pub mod events;
mod handlers;
mod kubelet;
pub mod managed;
pub mod patch;
pub mod policy;
pub mod protobuf;
pub mod resources;
mod simulation;

pub use kubelet::PullSettings;
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
    /// Streaming lists (`sendInitialEvents`) refused with 422, as by kube-apiserver with its
    /// WatchList feature off (before 1.32, or by choice) and by aggregated API servers.
    pub no_watch_list: bool,
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
    /// Nodes a DaemonSet runs on (`node-1` ... `node-<n>`).
    pub nodes: i64,
    /// Whether Deployments get ReplicaSets and ReplicaSets and DaemonSets get Pods (off:
    /// statuses only, for benchmarks that measure the functions rather than the simulation).
    pub pods: bool,
}

impl Default for Simulation {
    fn default() -> Self {
        Self {
            enabled: true,
            delay: Duration::from_millis(100),
            held: HashSet::new(),
            nodes: 2,
            pods: true,
        }
    }
}

/// Shared server state.
pub(crate) struct ApiState {
    pub(crate) store: Mutex<Store>,
    pub(crate) resources: RwLock<Vec<Resource>>,
    pub(crate) faults: Mutex<Faults>,
    pub(crate) simulation: Mutex<Simulation>,
    /// The simulated kubelet's image pulls.
    pub(crate) kubelet: Arc<kubelet::Kubelet>,
    pub(crate) addr: SocketAddr,
    /// Every request as `METHOD path?query`, for tests and benchmarks that count API calls.
    pub(crate) requests: Mutex<Vec<String>>,
    /// Bearer tokens and the users they name.
    pub(crate) identities: Mutex<auth::Identities>,
    /// The audit log: every resource request with its user and answer.
    pub(crate) audit: Mutex<Vec<auth::AuditEntry>>,
    /// The admin's token (the default kubeconfig's user).
    pub(crate) admin_token: String,
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
    _tls_server: crate::process::ServerTask,
    tls_addr: SocketAddr,
    ca_pem: String,
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
        let mut identities = auth::Identities::default();
        let admin_token = identities.issue(auth::User::admin());
        let state = Arc::new(ApiState {
            store: Mutex::new(Store::default()),
            resources: RwLock::new(resources::builtins()),
            faults: Mutex::new(Faults::default()),
            simulation: Mutex::new(Simulation::default()),
            kubelet: Arc::default(),
            addr,
            requests: Mutex::new(Vec::new()),
            identities: Mutex::new(identities),
            audit: Mutex::new(Vec::new()),
            admin_token,
        });
        handlers::bootstrap(&state)?;
        let app = handlers::router(state.clone());
        let server = crate::process::ServerTask::spawn(listener, app.clone());
        // The same API over HTTPS: kubectl sends bearer tokens only over TLS.
        let tls = crate::tls::TestTls::generate()?;
        let tls_listener = tokio::net::TcpListener::bind(SocketAddr::new(addr.ip(), 0))
            .await
            .context("bind the HTTPS port")?;
        let tls_addr = tls_listener.local_addr()?;
        let tls_server =
            crate::process::ServerTask::spawn_tls(tls_listener, app, tls.server_config);
        Ok(Self {
            state,
            _server: server,
            _tls_server: tls_server,
            tls_addr,
            ca_pem: tls.ca_pem,
        })
    }

    /// `http://127.0.0.1:<port>` (anonymous requests act as the admin unless authentication
    /// is required).
    pub fn url(&self) -> String {
        format!("http://{}", self.state.addr)
    }

    /// `https://127.0.0.1:<port>`: the same API over TLS, with a certificate signed by
    /// [`ApiServer::ca_pem`]. The kubeconfigs point here.
    pub fn https_url(&self) -> String {
        format!("https://{}", self.tls_addr)
    }

    /// The CA certificate (PEM) that signed the HTTPS endpoint's certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A kubeconfig for this server as the admin (`system:masters`).
    pub fn kubeconfig(&self) -> String {
        self.kubeconfig_with_token(&self.state.admin_token)
    }

    /// A kubeconfig for this server's HTTPS endpoint that authenticates with `token` (see
    /// [`ApiServer::issue_token`]).
    pub fn kubeconfig_with_token(&self, token: &str) -> String {
        use base64::Engine as _;
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: testbed\n  cluster:\n    server: {}\n    certificate-authority-data: {ca}\ncontexts:\n- name: testbed\n  context:\n    cluster: testbed\n    user: testbed\n    namespace: default\ncurrent-context: testbed\nusers:\n- name: testbed\n  user:\n    token: {token}\npreferences: {{}}\n",
            self.https_url()
        )
    }

    /// Issues a bearer token that names `user` (authorized by RBAC unless it is in
    /// `system:masters`).
    pub fn issue_token(&self, user: auth::User) -> String {
        match self.state.identities.lock() {
            Ok(mut ids) => ids.issue(user),
            Err(_) => String::new(),
        }
    }

    /// Refuses anonymous requests (401) instead of letting them act as the admin.
    pub fn require_authentication(&self, required: bool) {
        if let Ok(mut ids) = self.state.identities.lock() {
            ids.require_authentication(required);
        }
    }

    /// The audit log so far: every resource request with its user and status code.
    pub fn audit_log(&self) -> Vec<auth::AuditEntry> {
        self.state
            .audit
            .lock()
            .map(|a| a.clone())
            .unwrap_or_default()
    }

    /// Forgets the audit log.
    pub fn reset_audit_log(&self) {
        if let Ok(mut a) = self.state.audit.lock() {
            a.clear();
        }
    }

    /// Writes [`ApiServer::kubeconfig`] to `path`.
    pub fn write_kubeconfig(&self, path: &std::path::Path) -> anyhow::Result<()> {
        std::fs::write(path, self.kubeconfig()).with_context(|| format!("write {}", path.display()))
    }

    /// A kube-rs client for this server.
    pub fn client(&self) -> anyhow::Result<kube::Client> {
        shared::tls::ensure_crypto_provider();
        let mut config = kube::Config::new(self.url().parse()?);
        config.auth_info.token = Some(self.state.admin_token.clone().into());
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

    /// Refuses streaming lists from now on (`false`) or serves them again (`true`, the default),
    /// as kube-apiserver with its WatchList feature off or on.
    pub fn watch_list(&self, enabled: bool) {
        if let Ok(mut f) = self.state.faults.lock() {
            f.no_watch_list = !enabled;
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

    /// Switches the ReplicaSet and Pod simulation on or off (statuses are simulated either way).
    pub fn simulate_pods(&self, enabled: bool) {
        if let Ok(mut s) = self.state.simulation.lock() {
            s.pods = enabled;
        }
    }

    /// Makes the simulated kubelet pull (see [`PullSettings`]): from now on a container runs
    /// only once its image resolves at its registry with the Pod's pull credentials.
    pub fn simulate_pulls(&self, settings: PullSettings) {
        if let Ok(mut s) = self.state.kubelet.settings.lock() {
            *s = settings;
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

    /// From the request log: how many streaming lists (`sendInitialEvents=true` watches) and
    /// how many pages of paged lists (`limit=500`, what kube-runtime asks) of `plural` were
    /// asked for.
    pub fn initial_lists(&self, plural: &str) -> (usize, usize) {
        let requests = self.requests();
        let of = |f: &dyn Fn(&str) -> bool| {
            requests
                .iter()
                .filter(|r| r.starts_with("GET ") && r.contains(&format!("/{plural}?")) && f(r))
                .count()
        };
        (
            of(&|r| r.contains("watch=true") && r.contains("sendInitialEvents=true")),
            of(&|r| !r.contains("watch=") && r.contains("limit=500")),
        )
    }

    /// Forgets the request log.
    pub fn reset_requests(&self) {
        if let Ok(mut r) = self.state.requests.lock() {
            r.clear();
        }
    }

    /// Calls `f` with every stored object of `group`/`plural` (`""` for the core group), in
    /// place under the store's lock: what a benchmark's sampler reads without a request, so
    /// sampling neither costs the server serialization nor counts among the requests.
    pub fn inspect(&self, group: &str, plural: &str, f: impl FnMut(&serde_json::Value)) {
        if let Ok(store) = self.state.store.lock() {
            store.each(&format!("{group}/{plural}"), f);
        }
    }

    /// Every change the store makes from now on, as its watches are fed: for a benchmark that
    /// follows the objects instead of reading them all again (which holds the store's lock and
    /// stalls every request meanwhile).
    pub fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<Arc<store::Change>>> {
        self.state.store.lock().ok().map(|s| s.subscribe())
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
