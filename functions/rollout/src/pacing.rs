//! Pacing: at most N workloads roll out at once, cluster-wide. The slots live in the cluster,
//! on one coordination Lease in the rollout's namespace (annotation [`SLOTS_ANNOTATION`]: JSON
//! `{"deployment/ns/name": "<taken at>"}`), written with optimistic concurrency
//! (`resourceVersion`), so every rollout replica and a restarted one see the same count.
//!
//! A slot is taken before a workload is patched and given back when its patch fails; it frees
//! itself once the workload's in-flight marker is gone (Ready, reverted, changed by its user)
//! or the workload is gone: whoever takes a slot next prunes, using its own cache. A slot is
//! kept for [`GRACE`] whatever the cache says, because the patch that sets the marker may not
//! have reached the cache yet. At most N entries: the object stays small.

use shared::api_error::ApiFailure;
use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::PostParams;

/// The Lease's annotation holding the slots.
pub const SLOTS_ANNOTATION: &str = "k8slab.io/slots";
/// The Lease's name.
pub const LEASE_NAME: &str = "image-backup-rollout-slots";
/// How long a taken slot is kept regardless of the cache (patch and watch latency).
pub const GRACE: Duration = Duration::from_secs(30);
/// Attempts at a write that met another replica's write (409).
const ATTEMPTS: usize = 8;

/// Why a slot could not be taken or given back.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    /// The API refused or failed (RBAC on leases, the server down).
    #[error("the pacing Lease {namespace}/{LEASE_NAME}: {source}")]
    Api {
        /// The rollout's namespace.
        namespace: String,
        /// What the API said.
        #[source]
        source: kube::Error,
    },
    /// Other replicas kept writing the Lease in between.
    #[error("the pacing Lease {0}/{LEASE_NAME} kept changing; retried {ATTEMPTS} times")]
    Contended(String),
}

/// What [`Slots::acquire`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// A slot, taken for the caller: give it back if the patch fails.
    Taken,
    /// The workload holds a slot already: another replica is rolling it out (or did, and its
    /// cache is ahead of the caller's). Leave it alone.
    Held,
    /// Every slot is taken.
    Full,
}

/// The cluster-wide slots.
#[derive(Clone)]
pub struct Slots {
    api: Api<Lease>,
    namespace: String,
    limit: usize,
}

fn parse(lease: &Lease) -> BTreeMap<String, String> {
    lease
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SLOTS_ANNOTATION))
        .and_then(|v| serde_json::from_str(v).ok())
        .unwrap_or_default()
}

fn age(taken: &str) -> Duration {
    chrono::DateTime::parse_from_rfc3339(taken)
        .ok()
        .and_then(|t| {
            (chrono::Utc::now() - t.with_timezone(&chrono::Utc))
                .to_std()
                .ok()
        })
        .unwrap_or(Duration::MAX)
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Slots {
    /// `limit` slots (0: no limit, nothing is written) on the Lease in `namespace`.
    pub fn new(client: kube::Client, namespace: &str, limit: usize) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            limit,
        }
    }

    /// Whether rollouts are paced at all.
    pub fn limited(&self) -> bool {
        self.limit > 0
    }

    /// The limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    fn api_error(&self, source: kube::Error) -> SlotError {
        SlotError::Api {
            namespace: self.namespace.clone(),
            source,
        }
    }

    /// Takes a slot for `key`. `in_flight(key)` says whether the cache still shows that
    /// workload in flight (entries it does not, past [`GRACE`], are pruned).
    pub async fn acquire(
        &self,
        key: &str,
        in_flight: impl Fn(&str) -> bool,
    ) -> Result<Slot, SlotError> {
        if !self.limited() {
            return Ok(Slot::Taken);
        }
        for _ in 0..ATTEMPTS {
            let Some(lease) = self.read().await? else {
                let lease: Lease = match serde_json::from_value(serde_json::json!({
                    "metadata": {"name": LEASE_NAME, "annotations": {
                        SLOTS_ANNOTATION: serde_json::to_string(&BTreeMap::from([(key, now())])).unwrap_or_default()
                    }},
                    "spec": {},
                })) {
                    Ok(l) => l,
                    Err(_) => return Ok(Slot::Full),
                };
                match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => return Ok(Slot::Taken),
                    Err(e) if ApiFailure::is_conflict(&e) => continue,
                    Err(e) => return Err(self.api_error(e)),
                }
            };
            let before = parse(&lease);
            // Pruned first: a slot its taker never used (it died before the patch) is free
            // after the grace, for this workload too.
            let mut slots: BTreeMap<String, String> = before
                .iter()
                .filter(|(k, taken)| age(taken) < GRACE || in_flight(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if slots.contains_key(key) {
                return Ok(Slot::Held);
            }
            let full = slots.len() >= self.limit;
            if full && slots.len() == before.len() {
                return Ok(Slot::Full);
            }
            if !full {
                slots.insert(key.to_string(), now());
            }
            if self.write(lease, &slots).await? {
                return Ok(if full { Slot::Full } else { Slot::Taken });
            }
        }
        Err(SlotError::Contended(self.namespace.clone()))
    }

    /// The Lease, if it exists yet.
    async fn read(&self) -> Result<Option<Lease>, SlotError> {
        self.api
            .get_opt(LEASE_NAME)
            .await
            .map_err(|e| self.api_error(e))
    }

    /// Writes `slots` onto `lease` as read (its resourceVersion the precondition); `false`
    /// when another replica wrote it in between (read again and retry).
    async fn write(
        &self,
        mut lease: Lease,
        slots: &BTreeMap<String, String>,
    ) -> Result<bool, SlotError> {
        lease.metadata.annotations.get_or_insert_default().insert(
            SLOTS_ANNOTATION.into(),
            serde_json::to_string(slots).unwrap_or_default(),
        );
        match self
            .api
            .replace(LEASE_NAME, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if ApiFailure::is_conflict(&e) => Ok(false),
            Err(e) => Err(self.api_error(e)),
        }
    }

    /// Gives `key`'s slot back (its patch failed, or its flight ended).
    pub async fn release(&self, key: &str) -> Result<(), SlotError> {
        if !self.limited() {
            return Ok(());
        }
        for _ in 0..ATTEMPTS {
            let Some(lease) = self.read().await? else {
                return Ok(());
            };
            let mut slots = parse(&lease);
            if slots.remove(key).is_none() {
                return Ok(());
            }
            if self.write(lease, &slots).await? {
                return Ok(());
            }
        }
        Err(SlotError::Contended(self.namespace.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_is_young_for_the_grace_and_old_after() {
        assert!(age(&now()) < GRACE);
        assert!(age("2020-01-01T00:00:00Z") > GRACE);
        assert_eq!(age("not a time"), Duration::MAX);
    }
}
