//! ServiceAccounts as the backup and the rollout read them: only for the pull secrets a
//! workload's Pods get from theirs ([`crate::workload::Workload::pull_secret_names`]). Every
//! event the backup handles and every workload the rollout patches needs its ServiceAccount,
//! and a cluster's thousands of workloads share a few of them (one `default` per namespace,
//! mostly): read each time, they were the largest share of the API requests at scale (10,000
//! workloads: 50,443 GETs of 50 ServiceAccounts). So each one read is reused for [`TTL`]: a
//! change to a ServiceAccount's `imagePullSecrets` is seen within that long, as a Pod created at
//! that moment would see it. Failed reads are never kept (the next caller reads again); "not
//! found" is kept like an answer. Only the name and the pull secrets are held, and at most
//! [`CAPACITY`] entries: a full cache forgets what has expired, then everything.
//!
//! A read, not a watch, so the functions need only `get` on ServiceAccounts.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Api;
use kube::api::ObjectMeta;

use crate::recent::Recent;

/// How long a ServiceAccount read is reused.
pub const TTL: Duration = Duration::from_secs(10);
/// The most ServiceAccounts held at once.
pub const CAPACITY: usize = 4096;

type Key = (String, String);

/// ServiceAccounts by namespace and name, each read at most once per [`TTL`]. Cheap to clone
/// (one `Arc`): clones share the entries.
#[derive(Clone)]
pub struct ServiceAccounts {
    client: kube::Client,
    /// What was read (`None`: not found), by namespace and name.
    entries: Arc<Mutex<Recent<Key, Option<ServiceAccount>>>>,
}

impl ServiceAccounts {
    /// ServiceAccounts read through `client`.
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            entries: Arc::new(Mutex::new(Recent::new(TTL, CAPACITY))),
        }
    }

    /// The ServiceAccount `name` of `namespace` as read at most [`TTL`] ago (`None`: it does
    /// not exist), holding only its name, namespace and `imagePullSecrets`.
    pub async fn get(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<ServiceAccount>, kube::Error> {
        let key = (namespace.to_string(), name.to_string());
        if let Some(found) = self.fresh(&key, Instant::now()) {
            return Ok(found);
        }
        let read = Api::<ServiceAccount>::namespaced(self.client.clone(), namespace)
            .get_opt(name)
            .await?
            .map(pull_secrets_only);
        self.keep(key, read.clone(), Instant::now());
        Ok(read)
    }

    fn fresh(&self, key: &Key, now: Instant) -> Option<Option<ServiceAccount>> {
        self.entries.lock().ok()?.get(key, now).cloned()
    }

    fn keep(&self, key: Key, sa: Option<ServiceAccount>, now: Instant) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.insert(key, sa, now);
        }
    }
}

/// What the functions read of a ServiceAccount: its name, namespace and pull secrets.
fn pull_secrets_only(sa: ServiceAccount) -> ServiceAccount {
    ServiceAccount {
        metadata: ObjectMeta {
            name: sa.metadata.name,
            namespace: sa.metadata.namespace,
            ..ObjectMeta::default()
        },
        image_pull_secrets: sa.image_pull_secrets,
        ..ServiceAccount::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accounts() -> ServiceAccounts {
        // Never contacted: these tests use the entries alone.
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        ServiceAccounts::new(kube::Client::try_from(config).unwrap())
    }

    fn sa(secret: &str) -> ServiceAccount {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "default", "namespace": "shop", "labels": {"a": "b"}},
            "imagePullSecrets": [{"name": secret}],
            "secrets": [{"name": "token"}],
        }))
        .unwrap()
    }

    fn key() -> Key {
        ("shop".into(), "default".into())
    }

    #[tokio::test]
    async fn a_read_is_reused_until_the_ttl_and_holds_only_the_pull_secrets() {
        let a = accounts();
        let t0 = Instant::now();
        a.keep(key(), Some(pull_secrets_only(sa("hub"))), t0);
        let kept = a.fresh(&key(), t0 + TTL / 2).unwrap().unwrap();
        assert_eq!(kept.image_pull_secrets.unwrap()[0].name, "hub");
        assert_eq!(kept.metadata.labels, None);
        assert_eq!(kept.secrets, None);
        assert!(a.fresh(&key(), t0 + TTL).is_none(), "expired");
        // Not found is an answer too.
        a.keep(key(), None, t0);
        assert_eq!(a.fresh(&key(), t0), Some(None));
    }

    #[tokio::test]
    async fn a_full_cache_forgets_what_expired_then_everything() {
        let a = accounts();
        let t0 = Instant::now();
        for i in 0..CAPACITY - 1 {
            a.keep((format!("ns-{i}"), "default".into()), None, t0);
        }
        a.keep(key(), None, t0 + TTL);
        assert_eq!(a.entries.lock().unwrap().len(), CAPACITY);
        // Full: the old ones have expired by now and go; the fresh one stays.
        a.keep(("other".into(), "x".into()), None, t0 + TTL + TTL / 2);
        assert_eq!(a.entries.lock().unwrap().len(), 2);
        for i in 0..CAPACITY {
            a.keep(
                (format!("n-{i}"), "default".into()),
                None,
                t0 + TTL + TTL / 2,
            );
        }
        assert!(a.entries.lock().unwrap().len() <= CAPACITY);
        // A failed read (no server here) is an error and is not kept.
        assert!(a.get("unreachable", "default").await.is_err());
        assert!(
            a.fresh(&("unreachable".into(), "default".into()), Instant::now())
                .is_none()
        );
    }
}
