//! What the rollout reaches the world through: one port, [`Ports`], for every call it makes
//! outside its caches — the guarded patch, Events, the Pods the health gate reads, the backup's
//! digest at the registry, pull access and the pacing slots. The handler, the pacer and the gate
//! decide; [`KubePorts`] delivers against a real cluster and registry, and the unit tests put an
//! in-memory fake in its place (controller-rs's `Context::test()`), so every decision is tested
//! without an API server, a registry or NATS.

use std::future::Future;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::api::{ListParams, PatchParams};
use kube::runtime::events::EventType;
use shared::events::{WorkloadKind, WorkloadRef};
use shared::kube_events::{Events, KubeEvents};
use shared::recent::Resolved;
use shared::reference::Reference;
use shared::registry::{Access, CopyError, RegistryClient, Repo};
use shared::workload::Workload;

use crate::pacing::{Slot, SlotError, Slots};
use crate::pull_access::{Need, PullAccess};

/// Every call the rollout makes outside its caches (its Events through [`Events`]).
pub trait Ports: Events {
    /// JSON-patches the workload `r` names (the patch carries its own guard); the generation
    /// it produced.
    fn patch(
        &self,
        r: &WorkloadRef,
        patch: json_patch::Patch,
    ) -> impl Future<Output = Result<i64, kube::Error>> + Send;

    /// The Pods in `namespace` matching the label `selector` (the health gate bounds the wait).
    fn pods(
        &self,
        namespace: &str,
        selector: &str,
    ) -> impl Future<Output = Result<Vec<Pod>, kube::Error>> + Send;

    /// What the backup `target` resolves to at the registry now (`None`: not there).
    fn backup_digest(
        &self,
        target: &Reference,
    ) -> impl Future<Output = Result<Option<String>, CopyError>> + Send;

    /// What `w` needs before its Pods can pull `targets` ([`PullAccess::prepare`]).
    fn pull_access(&self, w: &Workload, targets: &[String]) -> impl Future<Output = Need> + Send;

    /// The pull Secret copied into workloads' namespaces, if one is configured.
    fn pull_secret_name(&self) -> Option<&str>;

    /// Brings the pull Secret's copies in `namespaces` up to date.
    fn sync_pull_secrets(&self, namespaces: Vec<String>) -> impl Future<Output = ()> + Send;

    /// Whether rollouts are paced (`--max-concurrent-rollouts` > 0).
    fn paced(&self) -> bool;

    /// Takes a pacing slot for `key` ([`Slots::acquire`]).
    fn acquire_slot(
        &self,
        key: &str,
        in_flight: &(dyn Fn(&str) -> bool + Send + Sync),
    ) -> impl Future<Output = Result<Slot, SlotError>> + Send;

    /// Gives the slot of `key` back.
    fn release_slot(&self, key: &str) -> impl Future<Output = Result<(), SlotError>> + Send;
}

/// [`Ports`] over a real cluster and registry.
#[derive(Clone)]
pub struct KubePorts {
    client: kube::Client,
    events: KubeEvents,
    registry: RegistryClient,
    pull: PullAccess,
    slots: Slots,
    /// Backups checked moments ago: every workload running an image asks about the same one.
    resolved: Resolved,
}

impl KubePorts {
    /// The cluster `client` talks to, Events through `events`, backups checked with
    /// `registry`, pull access and pacing as configured.
    pub fn new(
        client: kube::Client,
        events: KubeEvents,
        registry: RegistryClient,
        pull: PullAccess,
        slots: Slots,
    ) -> Self {
        Self {
            client,
            events,
            registry,
            pull,
            slots,
            resolved: Resolved::new(),
        }
    }
}

/// JSON-patches the `K` that `r` names; the generation it produced.
async fn patch_object<K>(
    client: &kube::Client,
    r: &WorkloadRef,
    patch: json_patch::Patch,
) -> Result<Option<i64>, kube::Error>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let object = kube::Api::<K>::namespaced(client.clone(), &r.namespace)
        .patch(
            &r.name,
            &PatchParams::default(),
            &kube::api::Patch::Json::<()>(patch),
        )
        .await?;
    Ok(object.meta().generation)
}

impl Events for KubePorts {
    async fn record(&self, about: &ObjectReference, type_: EventType, reason: &str, note: &str) {
        self.events.record(about, type_, reason, note).await;
    }
}

impl Ports for KubePorts {
    async fn patch(&self, r: &WorkloadRef, patch: json_patch::Patch) -> Result<i64, kube::Error> {
        let generation = match r.kind {
            WorkloadKind::Deployment => patch_object::<Deployment>(&self.client, r, patch).await?,
            WorkloadKind::DaemonSet => patch_object::<DaemonSet>(&self.client, r, patch).await?,
        };
        Ok(generation.unwrap_or_default())
    }

    async fn pods(&self, namespace: &str, selector: &str) -> Result<Vec<Pod>, kube::Error> {
        let api = kube::Api::<Pod>::namespaced(self.client.clone(), namespace);
        Ok(api
            .list(&ListParams::default().labels(selector))
            .await?
            .items)
    }

    async fn backup_digest(&self, target: &Reference) -> Result<Option<String>, CopyError> {
        let repo = Repo::from(target);
        let ask = self
            .registry
            .manifest_digest(&repo, target.pull_reference(), Access::Pull);
        self.resolved.resolve(&target.to_string(), ask).await
    }

    async fn pull_access(&self, w: &Workload, targets: &[String]) -> Need {
        self.pull.prepare(w, targets).await
    }

    fn pull_secret_name(&self) -> Option<&str> {
        self.pull.secret_name()
    }

    async fn sync_pull_secrets(&self, namespaces: Vec<String>) {
        self.pull.sync(namespaces).await;
    }

    fn paced(&self) -> bool {
        self.slots.limited()
    }

    async fn acquire_slot(
        &self,
        key: &str,
        in_flight: &(dyn Fn(&str) -> bool + Send + Sync),
    ) -> Result<Slot, SlotError> {
        self.slots.acquire(key, in_flight).await
    }

    async fn release_slot(&self, key: &str) -> Result<(), SlotError> {
        self.slots.release(key).await
    }
}
