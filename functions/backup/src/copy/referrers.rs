//! Referrers: the signatures, attestations and SBOMs that point at an image, copied with it so
//! a backup still verifies where policy (Sigstore policy-controller, Kyverno `verifyImages`,
//! Connaisseur) demands a signature.
//!
//! What refers to a copied manifest (the index and each platform manifest) is found three ways
//! at the source: the OCI 1.1 referrers API, else the referrers tag schema (an index tagged
//! `sha256-<hex>`, what registries without the API such as distribution 2.8 carry), and
//! cosign's tags (`sha256-<hex>.sig`, `.att`, `.sbom`). Each referrer is copied byte-identical
//! (blobs verified like any other) by digest, cosign's by their tag; then what refers to a
//! referrer (a signature on an SBOM), up to [`MAX_DEPTH`]. At the target, a registry with the
//! referrers API indexes subjects itself; otherwise the tag-schema index is merged — entries
//! already there are kept, never dropped.

use std::collections::HashSet;

use futures::{StreamExt as _, TryStreamExt as _};
use serde_json::{Value, json};
use tokio::sync::watch;

use oci_client::manifest::OCI_IMAGE_INDEX_MEDIA_TYPE;
use sha2::Digest as _;

use super::client::{Access, RawManifest, Repo};
use super::manifest::{self, Content, Origin};
use super::{Copier, CopyError, Progress};

/// Which referrers a copy takes along (`--referrers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ReferrersMode {
    /// Signatures, attestations, SBOMs: everything that refers to the image.
    #[default]
    All,
    /// Nothing but the image.
    None,
    /// Only signatures (cosign `.sig`, sigstore bundles, Notary signatures).
    Signatures,
}

/// How deep referrers of referrers are followed (1: only what refers to the image).
pub const MAX_DEPTH: usize = 2;
/// At most this many referrers of one manifest are copied (a hostile index could list more).
pub const MAX_REFERRERS: usize = 128;

/// Artifact types that are signatures.
const SIGNATURE_ARTIFACT_TYPES: &[&str] = &[
    "application/vnd.dev.cosign.artifact.sig.v1+json",
    "application/vnd.dev.sigstore.bundle.v0.3+json",
    "application/vnd.dev.sigstore.bundle+json;version=0.3",
    "application/vnd.cncf.notary.signature",
];

/// cosign's tag suffixes and whether what they tag is a signature.
const COSIGN_TAGS: &[(&str, bool)] = &[("sig", true), ("att", false), ("sbom", false)];

/// What the referrers part of a copy did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReferrersOutcome {
    /// Referrers pushed to the target.
    pub copied: u32,
    /// Referrers the target already held.
    pub present: u32,
    /// Referrers that could not be copied and were not required (each with why).
    pub skipped: Vec<String>,
}

/// One referrer found at the source.
#[derive(Debug, Clone)]
struct Found {
    digest: String,
    /// cosign's tag, for referrers found by tag (copied under it).
    tag: Option<String>,
    signature: bool,
    /// The descriptor as the source listed it (for the target's tag-schema index).
    descriptor: Option<Value>,
}

/// `sha256:<hex>` → `sha256-<hex>`: the referrers tag schema's tag (and cosign's prefix).
pub fn tag_schema(digest: &str) -> String {
    digest.replacen(':', "-", 1)
}

impl ReferrersMode {
    fn wants(self, f: &Found) -> bool {
        match self {
            ReferrersMode::All => true,
            ReferrersMode::None => false,
            ReferrersMode::Signatures => f.signature,
        }
    }
}

/// The descriptors of an image index (a referrers answer or a tag-schema index), each digest
/// validated before it can reach a URL.
fn listed(bytes: &[u8], origin: Origin<'_>) -> Result<Vec<Value>, CopyError> {
    let malformed = |reason: String| CopyError::Malformed {
        registry: origin.registry.into(),
        what: origin.what.into(),
        reason,
    };
    let index: Value = serde_json::from_slice(bytes).map_err(|e| {
        malformed(format!(
            "not an image index (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    let Some(manifests) = index["manifests"].as_array() else {
        return Ok(Vec::new());
    };
    manifests
        .iter()
        .take(MAX_REFERRERS)
        .map(|d| {
            let digest = d["digest"].as_str().unwrap_or_default();
            shared::reference::validate_digest(digest)
                .map_err(|e| malformed(format!("referrer digest: {e}")))?;
            Ok(d.clone())
        })
        .collect()
}

impl Copier {
    /// Copies what refers to `subjects` (digests already at, or about to be at, the target)
    /// from `src` to `dst`, as the copier's [`ReferrersMode`] says. A referrer that cannot be
    /// copied fails the copy only when it is a signature and signatures were asked for.
    pub(super) async fn copy_referrers(
        &self,
        src: &Repo,
        dst: &Repo,
        subjects: &[String],
    ) -> Result<ReferrersOutcome, CopyError> {
        let mut outcome = ReferrersOutcome::default();
        if self.referrers == ReferrersMode::None {
            return Ok(outcome);
        }
        let mut level: Vec<String> = subjects.to_vec();
        let mut seen: HashSet<(String, Option<String>)> = HashSet::new();
        for depth in 0..MAX_DEPTH {
            if level.is_empty() {
                break;
            }
            // One level's lookups at once (each is a few small requests: round trips add up
            // on a remote registry); the copies that follow go one after another.
            let lookups: Vec<_> = level
                .iter()
                .map(|subject| self.discover(src, subject, depth == 0))
                .collect();
            let found_per_subject: Vec<Vec<Found>> = futures::stream::iter(lookups)
                .buffered(self.concurrency)
                .try_collect()
                .await?;
            let mut next = Vec::new();
            for (subject, found) in level.iter().zip(found_per_subject) {
                let mut indexed = Vec::new();
                for f in found {
                    if !self.referrers.wants(&f) || !seen.insert((f.digest.clone(), f.tag.clone()))
                    {
                        continue;
                    }
                    match self.copy_referrer(src, dst, &f).await {
                        Ok(copied) => {
                            if copied {
                                outcome.copied += 1;
                            } else {
                                outcome.present += 1;
                            }
                            indexed.extend(f.descriptor.clone());
                            next.push(f.digest.clone());
                        }
                        Err(e) if f.signature => return Err(e),
                        Err(e) => {
                            tracing::warn!(referrer = %f.digest, error = %e, "referrer skipped");
                            outcome.skipped.push(format!("{}: {e}", f.digest));
                        }
                    }
                }
                if !indexed.is_empty() {
                    self.index_referrers(dst, subject, &indexed).await?;
                }
            }
            level = next;
        }
        Ok(outcome)
    }

    /// What refers to `subject` at the source: the referrers API or the tag schema, and (for
    /// the image's own manifests) cosign's tags.
    async fn discover(
        &self,
        src: &Repo,
        subject: &str,
        cosign: bool,
    ) -> Result<Vec<Found>, CopyError> {
        let what = format!("referrers of {}@{subject}", src.path);
        let origin = Origin {
            registry: &src.registry,
            what: &what,
        };
        // Every lookup for this manifest goes out at once — the referrers API, the tag schema
        // (used only when the registry has no referrers API; asked for alongside so that case
        // costs no extra round trip) and cosign's tags: one round trip instead of up to five.
        let schema_tag = tag_schema(subject);
        let cosign_tags: Vec<(String, bool)> = if cosign {
            COSIGN_TAGS
                .iter()
                .map(|(suffix, signature)| (format!("{schema_tag}.{suffix}"), *signature))
                .collect()
        } else {
            Vec::new()
        };
        let (api, schema, tagged) = futures::join!(
            self.client.referrers(src, subject, Access::Pull),
            self.client.get_manifest(src, &schema_tag),
            futures::future::join_all(
                cosign_tags
                    .iter()
                    .map(|(tag, _)| { self.client.manifest_digest(src, tag, Access::Pull) })
            ),
        );
        let index = match api? {
            Some(bytes) => Some(bytes),
            None => schema?.map(|m| m.bytes),
        };
        let mut found: Vec<Found> = match index {
            Some(bytes) => listed(&bytes, origin)?
                .into_iter()
                .map(|d| Found {
                    digest: d["digest"].as_str().unwrap_or_default().to_string(),
                    tag: None,
                    signature: d["artifactType"]
                        .as_str()
                        .is_some_and(|t| SIGNATURE_ARTIFACT_TYPES.contains(&t)),
                    descriptor: Some(d),
                })
                .collect(),
            None => Vec::new(),
        };
        for ((tag, signature), digest) in cosign_tags.into_iter().zip(tagged) {
            if let Some(digest) = digest? {
                found.push(Found {
                    digest,
                    tag: Some(tag),
                    signature,
                    descriptor: None,
                });
            }
        }
        Ok(found)
    }

    /// Copies one referrer (its blobs, then its manifest, by digest or cosign's tag). `false`
    /// when the target already had it.
    async fn copy_referrer(&self, src: &Repo, dst: &Repo, f: &Found) -> Result<bool, CopyError> {
        let reference = f.tag.as_deref().unwrap_or(&f.digest);
        if self
            .client
            .manifest_digest(dst, reference, Access::Push)
            .await?
            .as_deref()
            == Some(f.digest.as_str())
        {
            return Ok(false);
        }
        let what = format!("referrer {}@{}", src.path, f.digest);
        let m = self
            .client
            .get_manifest(src, &f.digest)
            .await?
            .ok_or_else(|| CopyError::NotFound {
                what: what.clone(),
                registry: src.registry.clone(),
            })?;
        let origin = Origin {
            registry: &src.registry,
            what: &what,
        };
        let Content::Image(mut blobs) = manifest::parse(&m, origin)? else {
            return Err(CopyError::Unsupported {
                media_type: manifest::effective_media_type(&m),
                what,
                hint: " (a referrer that is an index is not copied)",
            });
        };
        let mut seen = HashSet::new();
        blobs.retain(|b| seen.insert(b.digest.clone()));
        let progress = watch::channel(Progress::default()).0;
        for blob in &blobs {
            self.move_blob(src, dst, blob, &progress).await?;
        }
        self.client.put_manifest(dst, reference, &m).await?;
        Ok(true)
    }

    /// Makes the target list `descriptors` as referrers of `subject`: nothing to do where the
    /// registry offers the referrers API, else the tag-schema index is merged (kept entries
    /// first, new ones appended; pushed only when something was added).
    async fn index_referrers(
        &self,
        dst: &Repo,
        subject: &str,
        descriptors: &[Value],
    ) -> Result<(), CopyError> {
        if self
            .client
            .referrers(dst, subject, Access::Push)
            .await?
            .is_some()
        {
            return Ok(());
        }
        let tag = tag_schema(subject);
        let what = format!("referrers index {}:{tag}", dst.path);
        let existing = self.client.get_manifest(dst, &tag).await?;
        let mut manifests = match &existing {
            Some(m) => listed(
                &m.bytes,
                Origin {
                    registry: &dst.registry,
                    what: &what,
                },
            )?,
            None => Vec::new(),
        };
        let before = manifests.len();
        for d in descriptors {
            if !manifests.iter().any(|m| m["digest"] == d["digest"]) {
                manifests.push(d.clone());
            }
        }
        if existing.is_some() && manifests.len() == before {
            return Ok(());
        }
        let bytes = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_IMAGE_INDEX_MEDIA_TYPE,
            "manifests": manifests,
        }))
        .map_err(|e| CopyError::Internal(format!("cannot encode the referrers index: {e}")))?;
        let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes)));
        let raw = RawManifest {
            media_type: OCI_IMAGE_INDEX_MEDIA_TYPE.into(),
            bytes,
            digest,
        };
        self.client.put_manifest(dst, &tag, &raw).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tag_schema_tag_of_a_digest() {
        assert_eq!(tag_schema("sha256:abc"), "sha256-abc");
    }

    #[test]
    fn modes_pick_what_they_say() {
        let sig = Found {
            digest: "sha256:a".into(),
            tag: None,
            signature: true,
            descriptor: None,
        };
        let sbom = Found {
            signature: false,
            ..sig.clone()
        };
        assert!(ReferrersMode::All.wants(&sig) && ReferrersMode::All.wants(&sbom));
        assert!(ReferrersMode::Signatures.wants(&sig) && !ReferrersMode::Signatures.wants(&sbom));
        assert!(!ReferrersMode::None.wants(&sig));
    }

    #[test]
    fn a_listed_digest_is_validated_before_it_reaches_a_url() {
        let origin = Origin {
            registry: "r",
            what: "referrers",
        };
        let bad = br#"{"manifests": [{"digest": "sha256:../../other/blobs/x", "size": 1}]}"#;
        assert!(listed(bad, origin).is_err());
        let many: Vec<Value> = (0..500)
            .map(|i| json!({"digest": format!("sha256:{i:064x}"), "size": 1}))
            .collect();
        let bytes = serde_json::to_vec(&json!({"manifests": many})).expect("json");
        assert_eq!(listed(&bytes, origin).expect("listed").len(), MAX_REFERRERS);
    }
}
