//! Pull access to the backups: before a workload is patched, its Pods must be able to pull
//! from the backup registry.
//!
//! - The template or its ServiceAccount already names a pull secret with credentials for the
//!   backup registry: nothing to add.
//! - `--backup-pull-secret [NAMESPACE/]NAME`: a copy of that `kubernetes.io/dockerconfigjson`
//!   Secret is made in the workload's namespace (same name, labelled
//!   `app.kubernetes.io/managed-by: image-backup`, updated when the source changes, never
//!   overwriting a Secret it did not create) and added to the template's `imagePullSecrets` in
//!   the rollout's guarded patch.
//! - Neither: the backup registry must serve the backups anonymously, or the workload is not
//!   patched (`BackupNotPullable`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::PostParams;
use shared::api_error::ApiFailure;
use shared::error::ErrorClass;
use shared::recent::Resolved;
use shared::reference::Reference;
use shared::registry::{Access as Scope, RegistryClient, Repo};
use shared::service_accounts::ServiceAccounts;
use shared::workload::Workload;

/// The label on the copies the rollout makes (and the only Secrets it ever updates).
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "image-backup");
/// How long the source Secret is reused before it is read again.
const SOURCE_TTL: Duration = Duration::from_secs(10);

/// `--backup-pull-secret`: where the source Secret is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretName {
    /// Its namespace.
    pub namespace: String,
    /// Its name (also the copies' name).
    pub name: String,
}

impl SecretName {
    /// `[NAMESPACE/]NAME`, the namespace defaulting to `own`.
    pub fn parse(value: &str, own: &str) -> Result<Self, String> {
        let (namespace, name) = match value.split_once('/') {
            Some((ns, name)) => (ns, name),
            None => (own, value),
        };
        let dns = |s: &str| {
            !s.is_empty()
                && s.len() <= 253
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        };
        if !dns(namespace) || !dns(name) || name.contains('/') {
            return Err(format!(
                "--backup-pull-secret {value:?}: expected [NAMESPACE/]NAME of a Secret"
            ));
        }
        Ok(Self {
            namespace: namespace.into(),
            name: name.into(),
        })
    }
}

/// What a workload needs before its patch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// Its Pods can pull the backups already.
    Ready,
    /// Add this Secret (copied into its namespace) to the template's `imagePullSecrets`.
    AddSecret(String),
    /// Its Pods could not pull the backups: not patched (why).
    NotPullable(String),
    /// A Secret of that name exists in the namespace and is not ours: not patched (why).
    Conflict(String),
    /// The check itself failed (API or registry down): not patched now, tried again later.
    Unknown(String),
}

/// The pull-access check and the copies.
#[derive(Clone)]
pub struct PullAccess {
    client: kube::Client,
    accounts: ServiceAccounts,
    source: Option<SecretName>,
    backup_host: String,
    /// For the anonymous pull check (no credentials at all).
    anonymous: RegistryClient,
    /// Backups served to anonymous pulls moments ago.
    anonymously_resolved: Resolved,
    cached: Arc<Mutex<Option<(Instant, Secret)>>>,
}

impl PullAccess {
    /// The check for backups at `backup_host`, copying `source` when given.
    pub fn new(
        client: kube::Client,
        source: Option<SecretName>,
        backup_host: &str,
        anonymous: RegistryClient,
    ) -> Self {
        Self {
            accounts: ServiceAccounts::new(client.clone()),
            client,
            source,
            backup_host: backup_host.to_string(),
            anonymous,
            anonymously_resolved: Resolved::new(),
            cached: Arc::default(),
        }
    }

    /// The configured source Secret's name, if any.
    pub fn secret_name(&self) -> Option<&str> {
        self.source.as_ref().map(|s| s.name.as_str())
    }

    /// What `w` needs before it is patched to `targets` (backup references).
    pub async fn prepare(&self, w: &Workload, targets: &[String]) -> Need {
        let namespace = w.reference().namespace;
        // Already pullable with the workload's own secrets?
        let sa = match self
            .accounts
            .get(&namespace, &w.service_account_name())
            .await
        {
            Ok(sa) => sa,
            Err(e) => return Need::Unknown(format!("cannot read the ServiceAccount: {e}")),
        };
        let names = w.pull_secret_names(sa.as_ref());
        if !names.is_empty() {
            let config = shared::pull_secrets::pull_secrets(&self.client, &namespace, &names).await;
            if config.credential_for(&self.backup_host).is_some() {
                return Need::Ready;
            }
        }
        match &self.source {
            Some(source) => self.copy_into(&namespace, source).await,
            None => self.anonymous_pull(targets).await,
        }
    }

    async fn anonymous_pull(&self, targets: &[String]) -> Need {
        for target in targets {
            let Ok(r) = Reference::parse(target) else {
                return Need::NotPullable(format!("{target} is not a valid reference"));
            };
            let repo = Repo::from(&r);
            let ask = self
                .anonymous
                .manifest_digest(&repo, r.pull_reference(), Scope::Pull);
            match self.anonymously_resolved.resolve(target, ask).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    return Need::NotPullable(format!(
                        "{target} is not served to anonymous pulls (not found); set --backup-pull-secret"
                    ));
                }
                Err(e) if e.class() == ErrorClass::Unauthorized => {
                    return Need::NotPullable(format!(
                        "{} refuses anonymous pulls of {target}: Pods could not pull it; set --backup-pull-secret to a Secret with pull credentials",
                        self.backup_host
                    ));
                }
                Err(e) => return Need::Unknown(e.to_string()),
            }
        }
        Need::Ready
    }

    async fn source_secret(&self, source: &SecretName) -> Result<Secret, String> {
        if let Ok(cached) = self.cached.lock()
            && let Some((at, s)) = cached.as_ref()
            && at.elapsed() < SOURCE_TTL
        {
            return Ok(s.clone());
        }
        let secret = Api::<Secret>::namespaced(self.client.clone(), &source.namespace)
            .get_opt(&source.name)
            .await
            .map_err(|e| {
                format!(
                    "cannot read --backup-pull-secret {}/{}: {e}",
                    source.namespace, source.name
                )
            })?
            .ok_or_else(|| {
                format!(
                    "--backup-pull-secret {}/{} does not exist",
                    source.namespace, source.name
                )
            })?;
        if secret.type_.as_deref() != Some("kubernetes.io/dockerconfigjson") {
            return Err(format!(
                "--backup-pull-secret {}/{} is not of type kubernetes.io/dockerconfigjson",
                source.namespace, source.name
            ));
        }
        if let Ok(mut cached) = self.cached.lock() {
            *cached = Some((Instant::now(), secret.clone()));
        }
        Ok(secret)
    }

    /// Makes sure `namespace` has an up-to-date copy of the source Secret.
    async fn copy_into(&self, namespace: &str, source: &SecretName) -> Need {
        let secret = match self.source_secret(source).await {
            Ok(s) => s,
            Err(e) => return Need::Unknown(e),
        };
        if namespace == source.namespace {
            return Need::AddSecret(source.name.clone());
        }
        match self.sync_copy(namespace, source, &secret, true).await {
            Ok(true) => Need::AddSecret(source.name.clone()),
            Ok(false) => Need::Conflict(format!(
                "Secret {namespace}/{} exists and was not made by image-backup (no label {}={}); not overwritten",
                source.name, MANAGED_BY.0, MANAGED_BY.1
            )),
            Err(e) => Need::Unknown(format!("cannot copy the pull secret into {namespace}: {e}")),
        }
    }

    /// Creates (when `create`) or updates the copy in `namespace`; `false` when a Secret of
    /// that name is not ours.
    async fn sync_copy(
        &self,
        namespace: &str,
        source: &SecretName,
        secret: &Secret,
        create: bool,
    ) -> Result<bool, kube::Error> {
        let api = Api::<Secret>::namespaced(self.client.clone(), namespace);
        let labels = BTreeMap::from([(MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string())]);
        match api.get_opt(&source.name).await? {
            None if create => {
                let copy = Secret {
                    metadata: kube::api::ObjectMeta {
                        name: Some(source.name.clone()),
                        namespace: Some(namespace.to_string()),
                        labels: Some(labels),
                        ..Default::default()
                    },
                    type_: secret.type_.clone(),
                    data: secret.data.clone(),
                    ..Default::default()
                };
                match api.create(&PostParams::default(), &copy).await {
                    Ok(_) => Ok(true),
                    // Another replica made it in between: check it next time.
                    Err(e) if ApiFailure::is_conflict(&e) => Ok(true),
                    Err(e) => Err(e),
                }
            }
            None => Ok(true),
            Some(existing) => {
                let ours = existing
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(MANAGED_BY.0))
                    .is_some_and(|v| v == MANAGED_BY.1);
                if !ours {
                    return Ok(false);
                }
                if existing.data == secret.data && existing.type_ == secret.type_ {
                    return Ok(true);
                }
                let mut updated = existing;
                updated.data = secret.data.clone();
                updated.type_ = secret.type_.clone();
                api.replace(&source.name, &PostParams::default(), &updated)
                    .await?;
                tracing::info!(namespace, name = %source.name, "copy of the pull Secret updated from its source");
                Ok(true)
            }
        }
    }

    /// Brings the copies in `namespaces` up to date with the source Secret (the resync calls
    /// this with the namespaces of workloads that list it). Creates nothing.
    pub async fn sync(&self, namespaces: impl IntoIterator<Item = String>) {
        let Some(source) = &self.source else {
            return;
        };
        let secret = match self.source_secret(source).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "copies of the pull Secret not synced");
                return;
            }
        };
        for namespace in namespaces {
            if namespace == source.namespace {
                continue;
            }
            if let Err(e) = self.sync_copy(&namespace, source, &secret, false).await {
                tracing::warn!(namespace, error = %e, "copy of the pull Secret not synced");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_name_defaults_to_the_functions_namespace_and_is_checked() {
        assert_eq!(
            SecretName::parse("backup-pull", "image-backup"),
            Ok(SecretName {
                namespace: "image-backup".into(),
                name: "backup-pull".into()
            })
        );
        assert_eq!(
            SecretName::parse("ops/pull", "image-backup").map(|s| s.namespace),
            Ok("ops".into())
        );
        for bad in ["", "a/b/c", "Upper", "ns/", "/name", "a b"] {
            assert!(SecretName::parse(bad, "image-backup").is_err(), "{bad}");
        }
    }
}
