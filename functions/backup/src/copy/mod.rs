//! The copy engine: copies one image from a source registry to the backup registry so that the
//! copy is byte-identical and verified, as fast as the registries allow.
//!
//! The order of work is the safety argument:
//! 1. read the top manifest (exact bytes) and, for an index, every child manifest by digest,
//!    checking each against its digest;
//! 2. if the target tag already holds that digest, stop: the registry accepted that manifest only
//!    once every blob it references was present (the warm path costs two requests; with
//!    referrers, the survey of the source goes alongside them — its tag list and a referrers
//!    API ping — and after them only the lookups that can find something);
//! 3. move every distinct blob, several at once: skip it after one HEAD if the target repository
//!    has it, mount it if another repository of the target registry is known to have it (one
//!    this process copied it to, or the source repository when both are in one registry), else
//!    stream it source → target through a hashing adapter that refuses to finish a blob whose
//!    bytes do not match its digest (the upload is then cancelled);
//! 4. only then push manifests, children before parents, the tagged top manifest last.
//!
//! So nothing is tagged at the target unless the whole tree verified.
//!
//! Transient failures (429, 5xx, cut connections, stalls) are retried per request and per blob
//! within the client's [`RetryPolicy`]; everything else fails with a classified [`CopyError`].
//!
//! Every registry is treated as possibly hostile: descriptor digests are validated before they
//! reach a URL, declared sizes are checked (a HEAD that reports another size is not trusted, a
//! sum that would overflow is refused), index children are de-duplicated and capped, every body
//! read is capped ([`response`]) and every transfer has a minimum throughput ([`stall`]).
//!
//! Files: `tree` (reading the image's manifests), `blobs` (one blob to the target), `manifest`
//! (what a manifest references), `verify` (the hashing stream), `referrers`; the registry
//! client, its authentication, retries, capped reads and stall watchdog are
//! [`shared::registry`].

mod blobs;
pub mod manifest;
pub mod referrers;
mod tree;
pub mod verify;

// The registry client lives in `shared::registry` (the rollout uses it too).
pub use shared::registry::{auth, client, error, response, retry, stall};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use shared::Reference;
use tokio::sync::watch;

pub use client::{ClientOptions, RegistryClient, Repo};
pub use error::CopyError;
pub use retry::RetryPolicy;
pub use stall::StallPolicy;

use blobs::BlobOutcome;
use manifest::{Content, Origin};

pub use referrers::ReferrersMode;

/// How many blobs move at once by default: enough to fill a fast link, few enough for a
/// registry's connection limits.
pub const DEFAULT_CONCURRENCY: usize = 8;
/// How many blob locations the mount cache remembers.
const LOCATION_CACHE: usize = 65_536;
/// The most child manifests an index may list (after de-duplication). Real indexes have a
/// few dozen at most (platforms and their attestations).
pub const MAX_INDEX_CHILDREN: usize = 1024;

/// Progress of one copy, for the ImageBackup status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// Distinct blobs of the image.
    pub blobs_total: u32,
    /// Blobs uploaded (as in [`CopySummary::blobs_copied`]).
    pub blobs_copied: u32,
    /// Blobs mounted from another repository of the target registry.
    pub blobs_mounted: u32,
    /// Blobs already present.
    pub blobs_skipped: u32,
    /// Bytes of all blobs.
    pub bytes_total: u64,
    /// Bytes uploaded, mounted or found present.
    pub bytes_done: u64,
}

/// What a copy did: the `backup copy` summary line and the `image.completed` data.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CopySummary {
    /// The source reference.
    pub source: String,
    /// The target reference (tag).
    pub target: String,
    /// Digest of the top manifest, identical at source and target.
    pub digest: String,
    /// Media type of the top manifest.
    pub media_type: String,
    /// Platforms copied.
    pub platforms: Vec<String>,
    /// Manifests pushed (0 when the target was already complete).
    pub manifests: u32,
    /// Distinct blobs of the image (0 when the target was already complete: not inspected).
    pub blobs_total: u32,
    /// Blobs uploaded.
    pub blobs_copied: u32,
    /// Blobs already in the target repository.
    pub blobs_skipped: u32,
    /// Blobs mounted from another repository of the target registry.
    pub blobs_mounted: u32,
    /// Bytes of all blobs.
    pub bytes_total: u64,
    /// Bytes uploaded.
    pub bytes_uploaded: u64,
    /// True when the target already held this exact digest and nothing was done for the image
    /// itself (its referrers are still looked at).
    pub already_complete: bool,
    /// Referrers (signatures, attestations, SBOMs) pushed to the target.
    pub referrers_copied: u32,
    /// Referrers the target already held.
    pub referrers_present: u32,
    /// Referrers that could not be copied and were not required, each with why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub referrers_skipped: Vec<String>,
    /// Wall time.
    pub seconds: f64,
}

/// Copies images. Holds the connection pool, token cache and a map of where blobs were last
/// seen in the target registry (for cross-repository mounts), so one `Copier` should serve a
/// whole process. Cheap to clone.
#[derive(Clone)]
pub struct Copier {
    client: RegistryClient,
    concurrency: usize,
    locations: Arc<Mutex<HashMap<(String, String), String>>>,
    referrers: ReferrersMode,
    /// Target tags [`Copier::target_digest`] found moments ago: the events of every workload
    /// running an image ask whether its backup is still there.
    resolved: shared::recent::Resolved,
}

// === impl Copier ===

impl Copier {
    /// A copier over `client`, moving up to `concurrency` blobs at once.
    pub fn new(client: RegistryClient, concurrency: usize) -> Self {
        Self {
            client,
            concurrency: concurrency.max(1),
            locations: Arc::new(Mutex::new(HashMap::new())),
            referrers: ReferrersMode::default(),
            resolved: shared::recent::Resolved::new(),
        }
    }

    /// The same copier taking these referrers along (default: all).
    #[must_use]
    pub fn with_referrers(mut self, mode: ReferrersMode) -> Self {
        self.referrers = mode;
        self
    }

    /// The same copier speaking through another client (other credentials), sharing what it
    /// learnt of where blobs live.
    #[must_use]
    pub fn with_client(&self, client: RegistryClient) -> Self {
        Self {
            client,
            concurrency: self.concurrency,
            locations: self.locations.clone(),
            referrers: self.referrers,
            resolved: self.resolved.clone(),
        }
    }

    /// The client options of this copier's client, to build another with more credentials.
    pub fn client(&self) -> &RegistryClient {
        &self.client
    }

    /// The digest the target tag resolves to (HEAD), `None` if it does not exist. A digest
    /// found is reused for [`shared::recent::Resolved::TTL`]; a miss is always asked again.
    pub async fn target_digest(&self, target: &Reference) -> Result<Option<String>, CopyError> {
        let repo = Repo::from(target);
        let ask = self
            .client
            .manifest_digest(&repo, target.pull_reference(), client::Access::Push);
        self.resolved.resolve(&target.to_string(), ask).await
    }

    /// Copies `source` to `target` (which must carry a tag or a digest). Progress, if asked for,
    /// is published on `progress` as blobs move.
    pub async fn copy(
        &self,
        source: &Reference,
        target: &Reference,
        progress: Option<watch::Sender<Progress>>,
    ) -> Result<CopySummary, CopyError> {
        let started = Instant::now();
        let src = Repo::from(source);
        let dst = Repo::from(target);
        let target_ref = target
            .tag()
            .or(target.digest())
            .ok_or_else(|| CopyError::Invalid {
                what: format!("target {target}"),
                reason: "needs a tag or a digest".into(),
            })?;
        let top_what = format!("manifest {}", source.familiar());
        // Where a pull would read it (a mirror first, if one is set); every other read of the
        // image goes there too. What the target tag holds, and the survey of the first host's
        // referrer sources, are asked at the same time (one round trip before a warm copy
        // knows it is warm, and the referrer lookups after it go only where an answer can be).
        let first_host = Repo {
            registry: self
                .client
                .pull_hosts(&src.registry)
                .into_iter()
                .next()
                .unwrap_or_else(|| src.registry.clone()),
            path: src.path.clone(),
        };
        let (located, at_target, survey) = futures::join!(
            self.client.locate_manifest(&src, source.pull_reference()),
            self.client
                .manifest_digest(&dst, target_ref, client::Access::Push),
            self.survey(&first_host),
        );
        let (src, top) = located?.ok_or_else(|| CopyError::NotFound {
            what: top_what.clone(),
            registry: self.client.pull_hosts(&src.registry).join(" or "),
        })?;
        // Surveyed where the image was not found (a mirror without it): not this image's.
        let survey = if src == first_host {
            survey
        } else {
            referrers::Survey::default()
        };
        if let Some(d) = target.digest()
            && d != top.digest
        {
            return Err(CopyError::Invalid {
                what: format!("target {target}"),
                reason: format!("its digest differs from the source's {}", top.digest),
            });
        }
        let top_media_type = manifest::effective_media_type(&top);
        let content = manifest::parse(
            &top,
            Origin {
                registry: &src.registry,
                what: &top_what,
            },
        )?;

        // What referrers refer to: the top manifest and each platform manifest.
        let mut subjects = vec![top.digest.clone()];
        if let Content::Index(children) = &content {
            subjects.extend(children.iter().map(|c| c.digest.clone()));
        }

        // Warm path: the target already holds this exact manifest under the tag; referrers
        // made since (a signature added later) are still brought over.
        if at_target?.as_deref() == Some(top.digest.as_str()) {
            let platforms = match &content {
                Content::Index(children) => children.iter().map(|c| c.platform.clone()).collect(),
                Content::Image(_) => Vec::new(),
            };
            let referrers = self.copy_referrers(&src, &dst, &subjects, &survey).await?;
            return Ok(CopySummary {
                source: source.to_string(),
                target: target.to_string(),
                digest: top.digest,
                media_type: top_media_type,
                platforms,
                manifests: 0,
                blobs_total: 0,
                blobs_copied: 0,
                blobs_skipped: 0,
                blobs_mounted: 0,
                bytes_total: 0,
                bytes_uploaded: 0,
                already_complete: true,
                referrers_copied: referrers.copied,
                referrers_present: referrers.present,
                referrers_skipped: referrers.skipped,
                seconds: started.elapsed().as_secs_f64(),
            });
        }

        let tree = self.read_tree(&src, top, top_media_type, content).await?;
        let bytes_total = tree
            .blobs
            .iter()
            .try_fold(0u64, |sum, b| sum.checked_add(b.size))
            .ok_or_else(|| CopyError::Malformed {
                registry: src.registry.clone(),
                what: top_what.clone(),
                reason: "the blob sizes it declares add up past 2^64 bytes".into(),
            })?;
        let progress = progress.unwrap_or_else(|| watch::channel(Progress::default()).0);
        progress.send_modify(|p| {
            *p = Progress {
                blobs_total: tree.blobs.len() as u32,
                bytes_total,
                ..Progress::default()
            }
        });

        let outcomes: Vec<(BlobOutcome, u64)> = futures::stream::iter(tree.blobs.iter().cloned())
            .map(|blob| {
                let progress = progress.clone();
                let (src, dst) = (src.clone(), dst.clone());
                async move {
                    let outcome = self.move_blob(&src, &dst, &blob, &progress).await?;
                    progress.send_modify(|p| match outcome {
                        BlobOutcome::Skipped => {
                            p.blobs_skipped += 1;
                            p.bytes_done += blob.size;
                        }
                        BlobOutcome::Mounted => {
                            p.blobs_mounted += 1;
                            p.bytes_done += blob.size;
                        }
                        BlobOutcome::Uploaded => p.blobs_copied += 1,
                    });
                    Ok::<_, CopyError>((outcome, blob.size))
                }
            })
            .buffer_unordered(self.concurrency)
            .try_collect()
            .await?;

        // Every blob is present and verified: manifests now, children first, the tag last.
        // Futures built eagerly (not in a `map` closure): keeps the copy future `Send` for
        // callers that need it (the long-running handler).
        let pushes: Vec<_> = tree
            .children
            .iter()
            .map(|child| self.client.put_manifest(&dst, &child.digest, child))
            .collect();
        futures::stream::iter(pushes)
            .buffer_unordered(self.concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        // Referrers before the tag: once a workload can be moved onto the tag, its signatures
        // are there too.
        let referrers = self.copy_referrers(&src, &dst, &subjects, &survey).await?;
        self.client
            .put_manifest(&dst, target_ref, &tree.top)
            .await?;

        let count = |o: BlobOutcome| outcomes.iter().filter(|(x, _)| *x == o).count() as u32;
        Ok(CopySummary {
            source: source.to_string(),
            target: target.to_string(),
            digest: tree.top.digest.clone(),
            media_type: tree.top_media_type,
            platforms: tree.platforms,
            manifests: tree.children.len() as u32 + 1,
            blobs_total: tree.blobs.len() as u32,
            blobs_copied: count(BlobOutcome::Uploaded),
            blobs_skipped: count(BlobOutcome::Skipped),
            blobs_mounted: count(BlobOutcome::Mounted),
            bytes_total,
            bytes_uploaded: outcomes
                .iter()
                .filter(|(o, _)| *o == BlobOutcome::Uploaded)
                .map(|(_, s)| s)
                .sum(),
            already_complete: false,
            referrers_copied: referrers.copied,
            referrers_present: referrers.present,
            referrers_skipped: referrers.skipped,
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}
