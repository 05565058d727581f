//! The `ImageBackup` custom resource (k8slab.io/v1alpha1, cluster-scoped, short name `ib`): one
//! object per source image, the record of its backup. `crds/imagebackup.yaml` is generated from
//! these types by `crdgen`; a test fails when the committed file is stale.
//!
//! This module only defines the shape and pure helpers on it; reading and writing objects is the
//! job of the functions through `kube::Api`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::naming::image_backup_name;
use crate::reference::Reference;

/// What to back up and where: the desired state of one backup.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "k8slab.io",
    version = "v1alpha1",
    kind = "ImageBackup",
    plural = "imagebackups",
    shortname = "ib",
    status = "ImageBackupStatus",
    category = "all",
    printcolumn = r#"{"name":"Source","type":"string","jsonPath":".spec.source"}"#,
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.target"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Progress","type":"string","jsonPath":".status.progress"}"#,
    printcolumn = r#"{"name":"Digest","type":"string","priority":1,"jsonPath":".status.digest"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ImageBackupSpec {
    /// The normalized source reference (`docker.io/library/nginx:1.14.0`); the object name is
    /// derived from it.
    pub source: String,
    /// The backup reference without digest (`<registry>/<prefix>/library_nginx:1.14.0`).
    /// Optional when applied by hand: the backup derives it from the source with its naming,
    /// and refuses an object whose `target` says anything else.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target: String,
    /// Pull secrets (`namespace/name` of `kubernetes.io/dockerconfigjson` Secrets) to read the
    /// source with. Only the references are stored, never the contents.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pull_secrets: Vec<SecretRef>,
}

/// A reference to a Secret in some namespace (ImageBackups are cluster-scoped).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct SecretRef {
    /// The Secret's namespace.
    pub namespace: String,
    /// The Secret's name.
    pub name: String,
}

/// Where a backup stands.
// As a metric label it is the variant's name.
#[derive(
    Deserialize,
    Serialize,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    Default,
    JsonSchema,
    prometheus_client::encoding::EncodeLabelValue,
)]
pub enum Phase {
    /// Created, not yet claimed by a worker.
    #[default]
    Pending,
    /// A worker holds the claim and is copying.
    Copying,
    /// Every blob and manifest is at the target, verified; `status.digest` is set.
    Completed,
    /// The last attempt failed with a permanent error; `status.lastError` says why.
    Failed,
}

/// The observed state of a backup, written only through the status subresource.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageBackupStatus {
    /// Where the backup stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Digest of the top manifest or index at the target (identical to the source's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The platforms copied (`linux/amd64`, `linux/arm64/v8`, `unknown/unknown`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<String>,
    /// Bytes of all blobs of the image.
    #[serde(default)]
    pub bytes_total: u64,
    /// Bytes moved or found present so far.
    #[serde(default)]
    pub bytes_copied: u64,
    /// Number of distinct blobs of the image.
    #[serde(default)]
    pub blobs_total: u32,
    /// Blobs uploaded or mounted so far.
    #[serde(default)]
    pub blobs_copied: u32,
    /// Blobs that were already at the target.
    #[serde(default)]
    pub blobs_skipped: u32,
    /// Referrers (signatures, attestations, SBOMs) at the target with the image: copied or
    /// found there.
    #[serde(default)]
    pub referrers: u32,
    /// Human summary for `kubectl get` (`12/30 blobs, 41%`), derived from the numbers above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// How many copy attempts were started.
    #[serde(default)]
    pub attempts: u32,
    /// The last failure, with its class; never contains credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The lease of the worker copying this image, so two workers never copy it at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<Claim>,
    /// When the current or last attempt started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When the copy completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
    /// When this completed object will be deleted (the copy stays).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// When a transiently failed backup is tried again (set while Pending after a failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<Time>,
    /// `Ready` and `Failed` conditions, in metav1.Condition form.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A worker's lease on one ImageBackup.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Claim {
    /// Identity of the holder (pod name and a per-process id).
    pub holder: String,
    /// Last renewal; the claim is stale after `leaseSeconds` without one.
    pub renew_time: Time,
    /// How long the claim lasts without renewal.
    pub lease_seconds: u32,
}

// === impl ImageBackup ===

impl ImageBackup {
    /// A new object for `source` backed up to `target`, named deterministically.
    pub fn for_source(source: &Reference, target: &Reference) -> Self {
        let mut ib = ImageBackup::new(
            &image_backup_name(source),
            ImageBackupSpec {
                source: source.to_string(),
                target: target.to_string(),
                pull_secrets: Vec::new(),
            },
        );
        ib.metadata.labels = Some(
            [(
                "app.kubernetes.io/managed-by".to_string(),
                "image-backup".to_string(),
            )]
            .into(),
        );
        ib
    }

    /// The phase, `Pending` when no status was written yet.
    pub fn phase(&self) -> Phase {
        self.status
            .as_ref()
            .and_then(|s| s.phase)
            .unwrap_or_default()
    }
}

/// The summary shown in the Progress column.
pub fn progress_summary(s: &ImageBackupStatus) -> String {
    let done = s.blobs_copied + s.blobs_skipped;
    let percent = match s
        .bytes_copied
        .saturating_mul(100)
        .checked_div(s.bytes_total)
    {
        Some(p) => p.min(100),
        None if s.blobs_total > 0 && done >= s.blobs_total => 100,
        None => 0,
    };
    format!("{done}/{} blobs, {percent}%", s.blobs_total)
}

/// The OpenAPI formats kube-apiserver recognises; any other in a CRD draws
/// `Warning: unrecognized format`. (The test API server warns from this same list.)
pub const KNOWN_FORMATS: [&str; 25] = [
    "int32",
    "int64",
    "float",
    "double",
    "byte",
    "binary",
    "date",
    "date-time",
    "datetime",
    "password",
    "bsonobjectid",
    "uri",
    "email",
    "hostname",
    "ipv4",
    "ipv6",
    "cidr",
    "mac",
    "uuid",
    "uuid3",
    "uuid4",
    "uuid5",
    "duration",
    "hexcolor",
    "rgbcolor",
];

/// Integer formats kube-apiserver knows; schemars' `uint32`/`uint64` draw a warning on every
/// `kubectl apply` of the CRD, so unsigned integers become `int64` with `minimum: 0`.
const KNOWN_INTEGER_FORMATS: [&str; 2] = ["int32", "int64"];

fn kube_formats(schema: &mut serde_json::Value) {
    match schema {
        serde_json::Value::Object(map) => {
            let unsigned = map
                .get("format")
                .and_then(|f| f.as_str())
                .is_some_and(|f| f.starts_with("uint"));
            if unsigned {
                map.insert("format".into(), "int64".into());
                map.insert("minimum".into(), 0.into());
            }
            if let Some(f) = map.get("format").and_then(|f| f.as_str())
                && map.get("type").and_then(|t| t.as_str()) == Some("integer")
                && !KNOWN_INTEGER_FORMATS.contains(&f)
            {
                map.remove("format");
            }
            map.values_mut().for_each(kube_formats);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(kube_formats),
        _ => {}
    }
}

/// The CustomResourceDefinition: generated from the Rust types, with only formats
/// kube-apiserver recognises (it applies without a warning).
pub fn crd()
-> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    let mut crd = ImageBackup::crd();
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
            && let Ok(mut value) = serde_json::to_value(&*schema)
        {
            kube_formats(&mut value);
            if let Ok(fixed) = serde_json::from_value(value) {
                *schema = fixed;
            }
        }
    }
    crd
}

/// The CustomResourceDefinition as YAML: what `crdgen` prints and `crds/imagebackup.yaml` holds.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(&crd())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_crd_is_current() {
        let committed = include_str!("../../crds/imagebackup.yaml");
        let generated = crd_yaml().unwrap();
        assert!(
            committed == generated,
            "crds/imagebackup.yaml is stale: run `cargo run -q -p crdgen > crds/imagebackup.yaml`"
        );
    }

    #[test]
    fn the_crd_uses_only_formats_kube_apiserver_knows() {
        let yaml = crd_yaml().unwrap();
        for line in yaml
            .lines()
            .filter(|l| l.trim_start().starts_with("format:"))
        {
            let f = line.trim_start().trim_start_matches("format:").trim();
            assert!(
                KNOWN_FORMATS.contains(&f),
                "kube-apiserver warns about format {f:?}"
            );
        }
        assert!(
            yaml.contains("minimum: 0"),
            "unsigned integers keep their lower bound"
        );
    }

    #[test]
    fn crd_has_the_contract_shape() {
        let crd = crd();
        assert_eq!(crd.spec.group, "k8slab.io");
        assert_eq!(crd.spec.scope, "Cluster");
        assert_eq!(crd.spec.names.short_names, Some(vec!["ib".to_string()]));
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, "v1alpha1");
        assert!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some()
        );
        let columns: Vec<_> = v
            .additional_printer_columns
            .iter()
            .flatten()
            .filter(|c| c.priority.unwrap_or(0) == 0)
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(columns, ["Source", "Target", "Phase", "Progress", "Age"]);
    }

    #[test]
    fn names_are_deterministic_and_status_serializes_camel_case() {
        let src = Reference::parse_normalized("nginx:1.14.0").unwrap();
        let tgt = Reference::parse_normalized("localhost:5000/library_nginx:1.14.0").unwrap();
        let a = ImageBackup::for_source(&src, &tgt);
        let b = ImageBackup::for_source(&src, &tgt);
        assert_eq!(a.metadata.name, b.metadata.name);
        assert_eq!(a.spec.source, "docker.io/library/nginx:1.14.0");
        assert_eq!(a.phase(), Phase::Pending);
        let status = ImageBackupStatus {
            phase: Some(Phase::Copying),
            bytes_total: 200,
            bytes_copied: 50,
            blobs_total: 4,
            blobs_copied: 1,
            ..Default::default()
        };
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["phase"], "Copying");
        assert_eq!(json["bytesCopied"], 50);
        assert_eq!(progress_summary(&status), "1/4 blobs, 25%");
    }
}
