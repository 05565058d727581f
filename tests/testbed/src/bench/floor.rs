//! The raw-bytes floor of the copy benchmark: an image moved from one registry to another the
//! plainest way the same HTTP stack (`reqwest`/hyper) allows — each blob one GET streamed into
//! one monolithic PUT, up to `concurrency` blobs at once, manifests copied as bytes — and
//! nothing else: no digest verified, no existence check, no retry, no referrers, no progress.
//!
//! Why: the cold goals say "≥ 1.3× skopeo, or at the raw-bytes floor". On two
//! registries sharing the copier's two cores, the floor is set by the registries (each hashes
//! and stores every byte) and the kernel; timing this mover in the same run says how much of
//! `backup copy`'s wall and CPU time is its own work (verification, checks) and how much is
//! moving the bytes at all. A benchmark instrument only: it trusts the registries it is given.

use anyhow::Context as _;
use futures::{StreamExt as _, TryStreamExt as _};

use crate::Pusher;

/// `host/repository:tag`, split.
struct Place {
    host: String,
    repo: String,
    tag: String,
}

impl Place {
    fn parse(reference: &str) -> anyhow::Result<Self> {
        let (host, rest) = reference
            .split_once('/')
            .with_context(|| format!("{reference}: expected host/repository:tag"))?;
        let (repo, tag) = rest
            .rsplit_once(':')
            .with_context(|| format!("{reference}: expected a tag"))?;
        Ok(Self {
            host: host.to_string(),
            repo: repo.to_string(),
            tag: tag.to_string(),
        })
    }
}

/// Moves the image `source` (`host/repo:tag`) to `target`, moving up to `concurrency` blobs at
/// once; returns the blob bytes moved. Over plain HTTP, or over HTTPS (HTTP/1.1, as `backup
/// copy` speaks it) when `ca_pem` holds the CAs that signed both registries' certificates.
pub async fn move_image(
    source: &str,
    target: &str,
    concurrency: usize,
    ca_pem: Option<&str>,
) -> anyhow::Result<u64> {
    let (src, dst) = (Place::parse(source)?, Place::parse(target)?);
    // The test bed's registry client: the same reqwest/hyper stack `backup copy` uses.
    let (from, to) = (
        Pusher::trusting(&src.host, None, ca_pem)?,
        Pusher::trusting(&dst.host, None, ca_pem)?,
    );
    let manifest = |reference: String| {
        let (from, src) = (&from, &src);
        async move {
            from.get_manifest(&src.repo, &reference)
                .await?
                .with_context(|| format!("{}/{}:{reference} not found", src.host, src.repo))
                .map(|(media_type, bytes)| (reference, media_type, bytes))
        }
    };
    let top = manifest(src.tag.clone()).await?;
    let top_json: serde_json::Value = serde_json::from_slice(&top.2)?;
    let mut children = Vec::new();
    for child in top_json["manifests"].as_array().into_iter().flatten() {
        let digest = child["digest"]
            .as_str()
            .context("index entry without digest")?;
        children.push(manifest(digest.to_string()).await?);
    }
    let mut blobs = Vec::new();
    let images = if children.is_empty() {
        std::slice::from_ref(&top)
    } else {
        &children[..]
    };
    for (_, _, bytes) in images {
        let json: serde_json::Value = serde_json::from_slice(bytes)?;
        let described =
            std::iter::once(&json["config"]).chain(json["layers"].as_array().into_iter().flatten());
        for blob in described {
            let digest = blob["digest"]
                .as_str()
                .context("descriptor without digest")?;
            let size = blob["size"].as_u64().context("descriptor without size")?;
            if !blobs.iter().any(|(d, _)| d == digest) {
                blobs.push((digest.to_string(), size));
            }
        }
    }
    // Each blob: one GET streamed into one PUT.
    let moved: u64 = futures::stream::iter(&blobs)
        .map(|(digest, size)| {
            let (from, to, src, dst) = (&from, &to, &src, &dst);
            async move {
                let body = from.blob_response(&src.repo, digest).await?.bytes_stream();
                to.upload_blob(&dst.repo, digest, *size, reqwest::Body::wrap_stream(body))
                    .await?;
                anyhow::Ok(*size)
            }
        })
        .buffer_unordered(concurrency.max(1))
        .try_fold(0, |sum, size| async move { Ok(sum + size) })
        .await?;
    for (digest, media_type, bytes) in &children {
        to.push_manifest(&dst.repo, digest, media_type, bytes)
            .await?;
    }
    to.push_manifest(&dst.repo, &dst.tag, &top.1, &top.2)
        .await?;
    Ok(moved)
}
