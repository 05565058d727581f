//! The data of the four event types, as they travel in CloudEvents `data` (JSON, camelCase).
//! Pure data: no transport, no I/O.

use serde::{Deserialize, Serialize};

use crate::error::ErrorClass;

/// The workload kinds image-backup watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WorkloadKind {
    /// apps/v1 Deployment.
    Deployment,
    /// apps/v1 DaemonSet.
    DaemonSet,
}

impl WorkloadKind {
    /// The lower-case token used in subjects (`deployment`, `daemonset`).
    pub fn token(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "deployment",
            WorkloadKind::DaemonSet => "daemonset",
        }
    }
}

/// Which workload an event is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadRef {
    /// Deployment or DaemonSet.
    pub kind: WorkloadKind,
    /// The workload's namespace.
    pub namespace: String,
    /// The workload's name.
    pub name: String,
}

impl WorkloadRef {
    /// The object reference Kubernetes Events about this workload name (`apps/v1`, its kind,
    /// namespace and name, each cut to 253 characters: the names may come from a message).
    pub fn object_reference(&self) -> k8s_openapi::api::core::v1::ObjectReference {
        let kind = match self.kind {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::DaemonSet => "DaemonSet",
        };
        k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some("apps/v1".into()),
            kind: Some(kind.into()),
            namespace: Some(self.namespace.chars().take(253).collect()),
            name: Some(self.name.chars().take(253).collect()),
            ..Default::default()
        }
    }
}

/// One image of a workload that needs a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadImage {
    /// The container's name.
    pub container: String,
    /// True for an initContainer.
    pub init: bool,
    /// The normalized source reference (`docker.io/library/nginx:1.14.0`).
    pub source: String,
    /// The backup reference, without digest.
    pub target: String,
}

/// `io.k8slab.imagebackup.workload.changed`: a Ready workload runs images not yet backed up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadChanged {
    /// The workload.
    pub workload: WorkloadRef,
    /// Its `metadata.uid` (empty when planned from a file).
    pub uid: String,
    /// Its `metadata.generation` (0 when planned from a file).
    pub generation: i64,
    /// Every image of the workload that is not in the backup registry.
    pub images: Vec<WorkloadImage>,
    /// Names of the pull secrets (in the workload's namespace) its pods use: the pod template's
    /// `imagePullSecrets` and those of its ServiceAccount, as admission would add them. Names
    /// only, never contents.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pull_secrets: Vec<String>,
}

impl WorkloadChanged {
    /// 16 hex of SHA-256 over what a backup depends on: every image (container, init flag,
    /// source, target) and the pull secrets, in order. Equal fingerprints mean nothing a backup
    /// cares about changed, whatever else (replicas, labels, status) did.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest as _, Sha256};
        let mut h = Sha256::new();
        for i in &self.images {
            h.update(format!(
                "{}\0{}\0{}\0{}\n",
                i.container, i.init, i.source, i.target
            ));
        }
        for s in &self.pull_secrets {
            h.update(format!("secret\0{s}\n"));
        }
        hex::encode(h.finalize())[..16].to_string()
    }
}

/// `io.k8slab.imagebackup.image.completed`: the image is at the target, every blob verified.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageCompleted {
    /// The ImageBackup object's name.
    pub name: String,
    /// The normalized source reference.
    pub source: String,
    /// The backup reference, without digest.
    pub target: String,
    /// Digest of the top manifest or index, identical at source and target.
    pub digest: String,
    /// The platforms copied.
    pub platforms: Vec<String>,
    /// Bytes of all blobs of the image.
    pub bytes: u64,
    /// How long the copy took, in seconds.
    pub duration_seconds: f64,
}

/// `io.k8slab.imagebackup.image.failed`: an attempt failed for a reason retrying will not fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageFailed {
    /// The ImageBackup object's name.
    pub name: String,
    /// The normalized source reference.
    pub source: String,
    /// The backup reference, without digest.
    pub target: String,
    /// The class of the failure.
    pub error_class: ErrorClass,
    /// What went wrong, without credentials.
    pub message: String,
    /// How many attempts were made.
    pub attempts: u32,
}

/// One container moved to its backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerChange {
    /// The container's name.
    pub container: String,
    /// True for an initContainer.
    pub init: bool,
    /// The image before.
    pub from: String,
    /// The image after: `target@digest`.
    pub to: String,
}

/// `io.k8slab.imagebackup.workload.rolledout`: the workload now runs its backups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadRolledOut {
    /// The workload.
    pub workload: WorkloadRef,
    /// Its `metadata.uid`.
    pub uid: String,
    /// The generation the patch produced.
    pub generation: i64,
    /// What changed.
    pub changes: Vec<ContainerChange>,
    /// True when the rollout ran with `--dry-run`: this is what it would have done; nothing
    /// was patched.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

/// `io.k8slab.imagebackup.workload.reverted`: a rolled-out workload did not become healthy on
/// its backups (Pods could not pull them, or it was not Ready in time), so its original images
/// were put back. It is not rolled out again until its images or its backups change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadReverted {
    /// The workload.
    pub workload: WorkloadRef,
    /// Its `metadata.uid`.
    pub uid: String,
    /// The generation the revert produced.
    pub generation: i64,
    /// Why: a Pod's waiting reason (`ErrImagePull`, `ImagePullBackOff`, `InvalidImageName`) or
    /// `Timeout`.
    pub reason: String,
    /// What was seen, for people (a Pod's message, or how long it waited).
    pub message: String,
    /// What was put back: `from` the backup `to` the original image.
    pub changes: Vec<ContainerChange>,
}
