//! Reading what an image is made of from the source: the top manifest's children (an index's
//! platforms, each fetched by digest and verified, at most [`MAX_INDEX_CHILDREN`]) and the
//! distinct blobs of the whole tree.

use std::collections::HashSet;

use futures::{StreamExt as _, TryStreamExt as _};

use super::client::RawManifest;
use super::manifest::{self, BlobRef, Content, Origin};
use super::{Copier, CopyError, MAX_INDEX_CHILDREN, Repo};

/// The tree read from the source.
pub(super) struct Tree {
    pub(super) top: RawManifest,
    pub(super) top_media_type: String,
    pub(super) children: Vec<RawManifest>,
    pub(super) platforms: Vec<String>,
    pub(super) blobs: Vec<BlobRef>,
}

impl Copier {
    /// Reads every child manifest of an index (by digest, verified) and collects the distinct
    /// blobs of the whole tree.
    pub(super) async fn read_tree(
        &self,
        src: &Repo,
        top: RawManifest,
        top_media_type: String,
        content: Content,
    ) -> Result<Tree, CopyError> {
        let mut blobs = Vec::new();
        let mut children = Vec::new();
        let mut platforms = Vec::new();
        match content {
            Content::Image(b) => blobs.extend(b),
            Content::Index(mut refs) => {
                // One GET per distinct child, however often the index lists it.
                let mut seen = HashSet::new();
                refs.retain(|r| seen.insert(r.digest.clone()));
                if refs.len() > MAX_INDEX_CHILDREN {
                    return Err(CopyError::Malformed {
                        registry: src.registry.clone(),
                        what: format!("index {}@{}", src.path, top.digest),
                        reason: format!(
                            "lists {} distinct manifests; at most {MAX_INDEX_CHILDREN} are copied",
                            refs.len()
                        ),
                    });
                }
                let fetches: Vec<_> =
                    refs.iter()
                        .map(|r| async move {
                            let what = format!("manifest {}@{}", src.path, r.digest);
                            let m = self.client.get_manifest(src, &r.digest).await?.ok_or_else(
                                || CopyError::NotFound {
                                    what: what.clone(),
                                    registry: src.registry.clone(),
                                },
                            )?;
                            let content = manifest::parse(
                                &m,
                                Origin {
                                    registry: &src.registry,
                                    what: &what,
                                },
                            )?;
                            if matches!(content, Content::Index(_)) {
                                return Err(CopyError::Unsupported {
                                    media_type: manifest::effective_media_type(&m),
                                    what,
                                    hint: " (an index inside an index is not copied)",
                                });
                            }
                            Ok((m, content))
                        })
                        .collect();
                let fetched: Vec<(RawManifest, Content)> = futures::stream::iter(fetches)
                    .buffered(self.concurrency)
                    .try_collect()
                    .await?;
                for (r, (m, content)) in refs.iter().zip(fetched) {
                    platforms.push(r.platform.clone());
                    if let Content::Image(b) = content {
                        blobs.extend(b);
                    }
                    children.push(m);
                }
            }
        }
        let mut seen = HashSet::new();
        blobs.retain(|b| seen.insert(b.digest.clone()));
        Ok(Tree {
            top,
            top_media_type,
            children,
            platforms,
            blobs,
        })
    }
}
