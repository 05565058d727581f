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
//!
//! Before that, alongside the image's manifest, the source is surveyed ([`Copier::survey`]):
//! its tag list says which of those tags exist, and a referrers lookup of the all-zero digest
//! says whether it offers the referrers API at all (as oras and notation ask), so the lookups
//! after it go only where an answer can be. Where the survey cannot tell (the list refused,
//! paged or too long; the ping answered neither way), everything is asked, as without it.

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

/// What the first round learnt of the source's referrer sources ([`Copier::survey`]). The
/// default knows nothing: every source is asked.
#[derive(Debug, Clone, Default)]
pub(super) struct Survey {
    /// The repository's tags of the forms the lookups would otherwise ask for one by one
    /// (`sha256-<hex>` and cosign's `sha256-<hex>.sig`, `.att`, `.sbom`), from one complete tag
    /// list; `None`: not known. Only compared with tags made here from validated digests: a
    /// listed tag never reaches a URL.
    tags: Option<HashSet<String>>,
    /// Whether the registry offers the referrers API; `None`: not known.
    api: Option<bool>,
}

impl Survey {
    /// A survey from a repository's tags (`None`: not listed whole) and the referrers API ping.
    fn of(tags: Option<Vec<String>>, api: Option<bool>) -> Self {
        Self {
            tags: tags.map(|tags| {
                tags.into_iter()
                    .filter(|t| t.starts_with("sha256-"))
                    .collect()
            }),
            api,
        }
    }

    /// Whether `tag` may exist: listed, or the tags are not known.
    fn may_exist(&self, tag: &str) -> bool {
        self.tags.as_ref().is_none_or(|t| t.contains(tag))
    }

    /// Whether the referrers API may answer: offered, or not known.
    fn may_have_api(&self) -> bool {
        self.api != Some(false)
    }
}

/// What the target holds of one subject's referrers index, read before the referrers are
/// pushed so that it costs no round trip of its own.
enum TargetIndex {
    /// The registry offers the referrers API: it indexes subjects itself.
    Api,
    /// The referrers tag schema: the index tagged `sha256-<hex>`, if there is one yet.
    Schema(Option<RawManifest>),
}

impl Copier {
    /// Surveys the source's referrer sources ([`Survey`]), asked alongside the image's
    /// manifest: its tag list and whether it offers the referrers API (both at once), so that
    /// the lookups after it ask only for tags that exist and use the API only where there is
    /// one. What cannot be learnt (the list refused, paged, too long; the ping answered neither
    /// way; a failure) stays unknown, and then everything is asked: a registry that will not
    /// tell costs requests, never a referrer. Knows nothing when referrers are not wanted.
    pub(super) async fn survey(&self, src: &Repo) -> Survey {
        if self.referrers == ReferrersMode::None {
            return Survey::default();
        }
        let (tags, api) = futures::join!(
            self.client.list_tags(src, Access::Pull),
            self.client.offers_referrers_api(src, Access::Pull),
        );
        let tags = tags.unwrap_or_else(|e| {
            tracing::debug!(repository = %src, error = %e, "no tag list; asking for each referrer tag");
            None
        });
        let api = api.unwrap_or_else(|e| {
            tracing::debug!(repository = %src, error = %e, "referrers API ping failed; asking it for each manifest");
            None
        });
        Survey::of(tags, api)
    }

    /// Copies what refers to `subjects` (digests already at, or about to be at, the target)
    /// from `src` to `dst`, as the copier's [`ReferrersMode`] says. A referrer that cannot be
    /// copied fails the copy only when it is a signature and signatures were asked for.
    ///
    /// Round trips, not requests, are what a remote registry makes slow, so each step asks
    /// everything it can at once: one level's lookups together; then, together, whether the
    /// target holds each referrer found (and copies those it lacks), the target's index of
    /// each subject, and the lookups of the next level (what refers to the referrers found:
    /// their digests are known from the listing, so this need not wait for their copies). A
    /// warm copy whose referrers have none of their own thus costs two round trips more than
    /// `--referrers none`; when nothing refers to the image, none more on a registry the
    /// `survey` ([`Copier::survey`]) found without the referrers API, one (that API) otherwise.
    pub(super) async fn copy_referrers(
        &self,
        src: &Repo,
        dst: &Repo,
        subjects: &[String],
        survey: &Survey,
    ) -> Result<ReferrersOutcome, CopyError> {
        let mut outcome = ReferrersOutcome::default();
        if self.referrers == ReferrersMode::None || subjects.is_empty() {
            return Ok(outcome);
        }
        let mut seen: HashSet<(String, Option<String>)> = HashSet::new();
        let mut level: Vec<String> = subjects.to_vec();
        let mut discovered = self.discover_all(src, &level, true, survey).await;
        for depth in 0..MAX_DEPTH {
            // What this level found that is wanted and new, per subject (in order).
            let mut wanted: Vec<(usize, Found)> = Vec::new();
            for (i, found) in discovered.into_iter().enumerate() {
                for f in found? {
                    if self.referrers.wants(&f) && seen.insert((f.digest.clone(), f.tag.clone())) {
                        wanted.push((i, f));
                    }
                }
            }
            if wanted.is_empty() {
                break;
            }
            let mut next: Vec<String> = Vec::new();
            for (_, f) in &wanted {
                if !next.contains(&f.digest) {
                    next.push(f.digest.clone());
                }
            }
            let indexed_subjects: Vec<usize> = {
                let mut v: Vec<usize> = wanted
                    .iter()
                    .filter(|(_, f)| f.descriptor.is_some())
                    .map(|(i, _)| *i)
                    .collect();
                v.dedup();
                v
            };
            let copies: Vec<_> = wanted
                .iter()
                .map(|(_, f)| self.copy_referrer(src, dst, f))
                .collect();
            let indexes: Vec<_> = indexed_subjects
                .iter()
                .map(|i| self.target_index(dst, &level[*i]))
                .collect();
            let deeper = depth + 1 < MAX_DEPTH;
            let (copied, indexes, next_discovered) = futures::join!(
                futures::stream::iter(copies)
                    .buffered(self.concurrency)
                    .collect::<Vec<_>>(),
                futures::stream::iter(indexes)
                    .buffered(self.concurrency)
                    .collect::<Vec<_>>(),
                async {
                    if deeper {
                        self.discover_all(src, &next, false, survey).await
                    } else {
                        Vec::new()
                    }
                },
            );
            let mut descriptors: Vec<Vec<Value>> = vec![Vec::new(); level.len()];
            let mut made_it: HashSet<String> = HashSet::new();
            for ((i, f), result) in wanted.into_iter().zip(copied) {
                match result {
                    Ok(copied) => {
                        if copied {
                            outcome.copied += 1;
                        } else {
                            outcome.present += 1;
                        }
                        descriptors[i].extend(f.descriptor);
                        made_it.insert(f.digest);
                    }
                    Err(e) if f.signature => return Err(e),
                    Err(e) => {
                        tracing::warn!(referrer = %f.digest, error = %e, "referrer skipped");
                        outcome.skipped.push(format!("{}: {e}", f.digest));
                    }
                }
            }
            let merges: Vec<_> = indexed_subjects
                .iter()
                .zip(indexes)
                .filter(|(i, _)| !descriptors[**i].is_empty())
                .map(|(i, index)| {
                    let descriptors = &descriptors[*i];
                    let subject = &level[*i];
                    async move {
                        self.index_referrers(dst, subject, index?, descriptors)
                            .await
                    }
                })
                .collect();
            futures::stream::iter(merges)
                .buffered(self.concurrency)
                .try_collect::<Vec<()>>()
                .await?;
            // Only what reached the target is followed further; the lookups made for the
            // others are dropped unread (an error there is not this copy's concern).
            (level, discovered) = next
                .into_iter()
                .zip(next_discovered)
                .filter(|(digest, _)| made_it.contains(digest))
                .unzip();
        }
        Ok(outcome)
    }

    /// What refers to each of `subjects` at the source, looked up at once (at most the
    /// copier's concurrency in flight); one result per subject, in order.
    async fn discover_all(
        &self,
        src: &Repo,
        subjects: &[String],
        cosign: bool,
        survey: &Survey,
    ) -> Vec<Result<Vec<Found>, CopyError>> {
        let lookups: Vec<_> = subjects
            .iter()
            .map(|subject| self.discover(src, subject, cosign, survey))
            .collect();
        futures::stream::iter(lookups)
            .buffered(self.concurrency)
            .collect()
            .await
    }

    /// What refers to `subject` at the source: the referrers API or the tag schema, and (for
    /// the image's own manifests) cosign's tags; of these, only what the `survey` does not rule
    /// out.
    async fn discover(
        &self,
        src: &Repo,
        subject: &str,
        cosign: bool,
        survey: &Survey,
    ) -> Result<Vec<Found>, CopyError> {
        let what = format!("referrers of {}@{subject}", src.path);
        let origin = Origin {
            registry: &src.registry,
            what: &what,
        };
        // Every lookup for this manifest goes out at once — the referrers API, the tag schema
        // (used only when the registry has no referrers API; asked for alongside so that case
        // costs no extra round trip) and cosign's tags: one round trip instead of up to five.
        // A tag the source's list does not hold is not asked for.
        let schema_tag = tag_schema(subject);
        let cosign_tags: Vec<(String, bool)> = if cosign {
            COSIGN_TAGS
                .iter()
                .map(|(suffix, signature)| (format!("{schema_tag}.{suffix}"), *signature))
                .filter(|(tag, _)| survey.may_exist(tag))
                .collect()
        } else {
            Vec::new()
        };
        let (api, schema, tagged) = futures::join!(
            async {
                if survey.may_have_api() {
                    self.client.referrers(src, subject, Access::Pull).await
                } else {
                    Ok(None)
                }
            },
            async {
                if survey.may_exist(&schema_tag) {
                    self.client.get_manifest(src, &schema_tag).await
                } else {
                    Ok(None)
                }
            },
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

    /// The target's index of `subject`'s referrers: whether the registry offers the
    /// referrers API, else the tag-schema index (both asked at once).
    async fn target_index(&self, dst: &Repo, subject: &str) -> Result<TargetIndex, CopyError> {
        let tag = tag_schema(subject);
        let (api, schema) = futures::join!(
            self.client.referrers(dst, subject, Access::Push),
            self.client.get_manifest(dst, &tag),
        );
        if api?.is_some() {
            return Ok(TargetIndex::Api);
        }
        Ok(TargetIndex::Schema(schema?))
    }

    /// Makes the target list `descriptors` as referrers of `subject`, given what it held
    /// ([`Copier::target_index`]): nothing to do where the registry offers the referrers API,
    /// else the tag-schema index is merged (kept entries first, new ones appended; pushed only
    /// when something was added).
    async fn index_referrers(
        &self,
        dst: &Repo,
        subject: &str,
        index: TargetIndex,
        descriptors: &[Value],
    ) -> Result<(), CopyError> {
        let TargetIndex::Schema(existing) = index else {
            return Ok(());
        };
        let tag = tag_schema(subject);
        let what = format!("referrers index {}:{tag}", dst.path);
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
    fn a_survey_rules_out_only_what_it_knows_is_not_there() {
        let listed = Survey::of(
            Some(vec![
                "1".into(),
                "latest".into(),
                "sha256-abc".into(),
                "sha256-abc.sig".into(),
            ]),
            Some(false),
        );
        assert_eq!(
            listed.tags.as_ref().map(HashSet::len),
            Some(2),
            "only referrer tags are kept: {listed:?}"
        );
        assert!(listed.may_exist("sha256-abc.sig"));
        assert!(!listed.may_exist("sha256-abc.att"));
        assert!(!listed.may_have_api());
        assert!(!Survey::of(Some(Vec::new()), None).may_exist("sha256-abc"));
        let unknown = Survey::default();
        assert!(unknown.may_exist("sha256-abc.att") && unknown.may_have_api());
        assert!(Survey::of(None, Some(true)).may_have_api());
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
