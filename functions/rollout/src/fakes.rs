//! In-memory [`Ports`] for the rollout's unit tests: workloads kept as JSON and patched with
//! the JSON patch the rollout sends (a failed `test` is a 422, as kube-apiserver answers), Events
//! and Pods in memory, backups' digests in a map, pull access and pacing slots as the test sets
//! them; and a publisher that keeps what it was given.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::runtime::events::EventType;
use shared::events::{Payload, WorkloadRef};
use shared::kube_events::Events;
use shared::publish::{EventPublisher, PublishError, Published};
use shared::reference::Reference;
use shared::registry::CopyError;
use shared::workload::Workload;

use crate::pacing::{Slot, SlotError};
use crate::ports::Ports;
use crate::pull_access::Need;

/// A Kubernetes API error answer with `code`.
pub fn api_error(code: u16, reason: &str) -> kube::Error {
    kube::Error::Api(
        kube::core::Status::failure(&format!("{reason} (from the fake)"), reason)
            .with_code(code)
            .boxed(),
    )
}

/// `deployment/ns/name`.
pub fn key(r: &WorkloadRef) -> String {
    format!("{}/{}/{}", r.kind.token(), r.namespace, r.name)
}

/// What the fake holds and was asked.
pub struct State {
    /// The workloads as the cluster has them, by [`key`].
    pub objects: BTreeMap<String, serde_json::Value>,
    /// The next patches fail with these.
    pub patch_failures: VecDeque<kube::Error>,
    /// Patches applied: (key, patch).
    pub patches: Vec<(String, serde_json::Value)>,
    /// Events recorded: (reason, note).
    pub events: Vec<(String, String)>,
    /// The Pods the gate lists.
    pub pods: Vec<Pod>,
    /// What each backup (target without digest) resolves to.
    pub digests: HashMap<String, String>,
    /// What pull access says.
    pub need: Need,
    /// Pacing slots (0: not paced) and who holds them.
    pub slots: usize,
    /// Keys holding a slot.
    pub taken: BTreeSet<String>,
    /// Namespaces the pull Secret was synced into, per resync.
    pub synced: Vec<Vec<String>>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            objects: BTreeMap::new(),
            patch_failures: VecDeque::new(),
            patches: Vec::new(),
            events: Vec::new(),
            pods: Vec::new(),
            digests: HashMap::new(),
            need: Need::Ready,
            slots: 0,
            taken: BTreeSet::new(),
            synced: Vec::new(),
        }
    }
}

/// The fake ports; clones share one state.
#[derive(Clone, Default)]
pub struct FakePorts(Arc<Mutex<State>>);

impl FakePorts {
    /// Its state, to arrange or inspect.
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap()
    }

    /// The workload as the cluster has it now.
    pub fn workload(&self, r: &WorkloadRef) -> Option<Workload> {
        let value = self.state().objects.get(&key(r)).cloned()?;
        Some(match r.kind {
            shared::events::WorkloadKind::Deployment => {
                Workload::Deployment(Box::new(serde_json::from_value(value).ok()?))
            }
            shared::events::WorkloadKind::DaemonSet => {
                Workload::DaemonSet(Box::new(serde_json::from_value(value).ok()?))
            }
        })
    }

    /// The reasons of the Events recorded, in order.
    pub fn event_reasons(&self) -> Vec<String> {
        self.state().events.iter().map(|(r, _)| r.clone()).collect()
    }
}

impl Events for FakePorts {
    async fn record(&self, _: &ObjectReference, _: EventType, reason: &str, note: &str) {
        self.state().events.push((reason.into(), note.into()));
    }
}

impl Ports for FakePorts {
    async fn patch(&self, r: &WorkloadRef, patch: json_patch::Patch) -> Result<i64, kube::Error> {
        let mut s = self.state();
        if let Some(e) = s.patch_failures.pop_front() {
            return Err(e);
        }
        let k = key(r);
        let recorded = serde_json::to_value(&patch).unwrap_or_default();
        let Some(object) = s.objects.get_mut(&k) else {
            return Err(api_error(404, "NotFound"));
        };
        let mut changed = object.clone();
        if json_patch::patch(&mut changed, &patch).is_err() {
            return Err(api_error(422, "Invalid"));
        }
        let generation = changed["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
        changed["metadata"]["generation"] = generation.into();
        *object = changed;
        s.patches.push((k, recorded));
        Ok(generation)
    }

    async fn pods(&self, _namespace: &str, _selector: &str) -> Result<Vec<Pod>, kube::Error> {
        Ok(self.state().pods.clone())
    }

    async fn backup_digest(&self, target: &Reference) -> Result<Option<String>, CopyError> {
        Ok(self.state().digests.get(&target.to_string()).cloned())
    }

    async fn pull_access(&self, _w: &Workload, _targets: &[String]) -> Need {
        self.state().need.clone()
    }

    fn pull_secret_name(&self) -> Option<&str> {
        None
    }

    async fn sync_pull_secrets(&self, namespaces: Vec<String>) {
        self.state().synced.push(namespaces);
    }

    fn paced(&self) -> bool {
        self.state().slots > 0
    }

    async fn acquire_slot(
        &self,
        key: &str,
        _in_flight: &(dyn Fn(&str) -> bool + Send + Sync),
    ) -> Result<Slot, SlotError> {
        let mut s = self.state();
        if s.taken.contains(key) {
            return Ok(Slot::Held);
        }
        if s.taken.len() >= s.slots {
            return Ok(Slot::Full);
        }
        s.taken.insert(key.to_string());
        Ok(Slot::Taken)
    }

    async fn release_slot(&self, key: &str) -> Result<(), SlotError> {
        self.state().taken.remove(key);
        Ok(())
    }
}

/// A publisher that keeps every event it is given.
#[derive(Clone, Default)]
pub struct Collected(Arc<Mutex<Vec<Payload>>>);

impl Collected {
    /// What was published, in order.
    pub fn events(&self) -> Vec<Payload> {
        self.0.lock().unwrap().clone()
    }
}

impl EventPublisher for Collected {
    async fn publish(&self, payload: &Payload) -> Result<Published, PublishError> {
        self.0.lock().unwrap().push(payload.clone());
        Ok(Published::Stored)
    }
}
