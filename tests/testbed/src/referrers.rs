//! Artifacts that refer to an image, pushed as the tools that make them do: cosign's
//! signature, attestation and SBOM tags (`sha256-<hex>.sig|.att|.sbom`, an OCI manifest whose
//! layer is the payload), and OCI 1.1 artifacts with a `subject` listed in the referrers tag
//! schema (`sha256-<hex>`), which is how oras and cosign record them on registries without the
//! referrers API (distribution 2.8 here).

use serde_json::{Value, json};

use crate::image::{Pusher, sha256_digest};

/// OCI's empty config (`{}`), which artifacts use.
pub const EMPTY_CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// A pushed artifact: its manifest's digest, exact bytes and its descriptor (as a referrers
/// index lists it).
#[derive(Debug, Clone)]
pub struct Artifact {
    /// `sha256:…` of the manifest.
    pub digest: String,
    /// The manifest's exact bytes.
    pub bytes: Vec<u8>,
    /// Its descriptor, with `artifactType`.
    pub descriptor: Value,
}

/// `sha256:<hex>` → `sha256-<hex>`.
pub fn tag_schema(digest: &str) -> String {
    digest.replacen(':', "-", 1)
}

/// Pushes an OCI artifact (empty config, one layer holding `payload`) under `reference`;
/// `subject` (digest, media type, size) makes it a referrer of that manifest.
pub async fn push_artifact(
    pusher: &Pusher,
    repo: &str,
    reference: Option<&str>,
    artifact_type: &str,
    layer_media_type: &str,
    payload: &[u8],
    subject: Option<(&str, &str, u64)>,
) -> anyhow::Result<Artifact> {
    let config = pusher.push_blob(repo, b"{}".to_vec()).await?;
    let layer = pusher.push_blob(repo, payload.to_vec()).await?;
    let mut manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": EMPTY_CONFIG_MEDIA_TYPE, "digest": config.digest, "size": config.size},
        "layers": [{"mediaType": layer_media_type, "digest": layer.digest, "size": layer.size}],
        "annotations": {"org.opencontainers.image.created": "2026-11-26T00:00:00Z"},
    });
    if let Some((digest, media_type, size)) = subject {
        manifest["subject"] = json!({"mediaType": media_type, "digest": digest, "size": size});
    }
    let bytes = serde_json::to_vec(&manifest)?;
    let digest = sha256_digest(&bytes);
    pusher
        .push_manifest(repo, reference.unwrap_or(&digest), OCI_MANIFEST, &bytes)
        .await?;
    let descriptor = json!({
        "mediaType": OCI_MANIFEST, "digest": digest, "size": bytes.len(),
        "artifactType": artifact_type,
    });
    Ok(Artifact {
        digest,
        bytes,
        descriptor,
    })
}

/// cosign's convention: the artifact tagged `sha256-<hex>.<suffix>` (`sig`, `att`, `sbom`).
pub async fn push_cosign_tag(
    pusher: &Pusher,
    repo: &str,
    subject: &str,
    suffix: &str,
    payload: &[u8],
) -> anyhow::Result<Artifact> {
    let (artifact_type, layer) = match suffix {
        "sig" => (
            "application/vnd.dev.cosign.artifact.sig.v1+json",
            "application/vnd.dev.cosign.simplesigning.v1+json",
        ),
        "att" => (
            "application/vnd.dsse.envelope.v1+json",
            "application/vnd.dsse.envelope.v1+json",
        ),
        _ => ("text/spdx+json", "text/spdx+json"),
    };
    let tag = format!("{}.{suffix}", tag_schema(subject));
    push_artifact(
        pusher,
        repo,
        Some(&tag),
        artifact_type,
        layer,
        payload,
        None,
    )
    .await
}

/// Adds `descriptor` to the referrers tag-schema index of `subject` (creating it), as a
/// client does on a registry without the referrers API. Returns the index's bytes.
pub async fn add_to_tag_schema(
    pusher: &Pusher,
    repo: &str,
    subject: &str,
    descriptor: &Value,
) -> anyhow::Result<Vec<u8>> {
    let tag = tag_schema(subject);
    let mut manifests: Vec<Value> = match pusher.get_manifest(repo, &tag).await? {
        Some((_, bytes)) => serde_json::from_slice::<Value>(&bytes)?["manifests"]
            .as_array()
            .cloned()
            .unwrap_or_default(),
        None => Vec::new(),
    };
    if !manifests
        .iter()
        .any(|m| m["digest"] == descriptor["digest"])
    {
        manifests.push(descriptor.clone());
    }
    let bytes = serde_json::to_vec(
        &json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}),
    )?;
    pusher.push_manifest(repo, &tag, OCI_INDEX, &bytes).await?;
    Ok(bytes)
}

/// The descriptors the tag-schema index of `subject` lists (empty when there is none).
pub async fn listed_in_tag_schema(
    pusher: &Pusher,
    repo: &str,
    subject: &str,
) -> anyhow::Result<Vec<Value>> {
    Ok(
        match pusher.get_manifest(repo, &tag_schema(subject)).await? {
            Some((_, bytes)) => serde_json::from_slice::<Value>(&bytes)?["manifests"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
            None => Vec::new(),
        },
    )
}
