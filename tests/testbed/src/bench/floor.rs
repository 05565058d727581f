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

use anyhow::{Context as _, bail};
use futures::{StreamExt as _, TryStreamExt as _};

/// Media types asked for when reading a manifest.
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// `host/repository:tag`, split; plain HTTP (the benchmark's registries).
struct Place {
    base: String,
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
            base: format!("http://{host}/v2/{repo}"),
            repo: repo.to_string(),
            tag: tag.to_string(),
        })
    }
}

/// One manifest read as bytes: its reference, media type and body.
struct Manifest {
    reference: String,
    media_type: String,
    bytes: bytes::Bytes,
}

/// Moves the image `source` (`host/repo:tag`) to `target`, moving up to `concurrency` blobs at
/// once; returns the blob bytes moved.
pub async fn move_image(source: &str, target: &str, concurrency: usize) -> anyhow::Result<u64> {
    shared::tls::ensure_crypto_provider();
    let http = reqwest::Client::new();
    let src = Place::parse(source)?;
    let dst = Place::parse(target)?;
    let top = get_manifest(&http, &src, &src.tag).await?;
    let top_json: serde_json::Value = serde_json::from_slice(&top.bytes)?;
    let mut children = Vec::new();
    for child in top_json["manifests"].as_array().into_iter().flatten() {
        let digest = child["digest"]
            .as_str()
            .context("index entry without digest")?;
        children.push(get_manifest(&http, &src, digest).await?);
    }
    let mut blobs = Vec::new();
    let images = if children.is_empty() {
        std::slice::from_ref(&top)
    } else {
        &children[..]
    };
    for image in images {
        let json: serde_json::Value = serde_json::from_slice(&image.bytes)?;
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
    let moved: u64 = futures::stream::iter(&blobs)
        .map(|(digest, size)| move_blob(&http, &src, &dst, digest, *size))
        .buffer_unordered(concurrency.max(1))
        .try_fold(0, |sum, size| async move { Ok(sum + size) })
        .await?;
    for child in &children {
        put_manifest(&http, &dst, child, &child.reference).await?;
    }
    put_manifest(&http, &dst, &top, &dst.tag).await?;
    Ok(moved)
}

async fn get_manifest(
    http: &reqwest::Client,
    place: &Place,
    reference: &str,
) -> anyhow::Result<Manifest> {
    let resp = http
        .get(format!("{}/manifests/{reference}", place.base))
        .header("Accept", ACCEPT)
        .send()
        .await?
        .error_for_status()?;
    let media_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    Ok(Manifest {
        reference: reference.to_string(),
        media_type,
        bytes: resp.bytes().await?,
    })
}

async fn put_manifest(
    http: &reqwest::Client,
    place: &Place,
    manifest: &Manifest,
    reference: &str,
) -> anyhow::Result<()> {
    http.put(format!("{}/manifests/{reference}", place.base))
        .header("Content-Type", &manifest.media_type)
        .body(manifest.bytes.clone())
        .send()
        .await?
        .error_for_status()?;
    Ok(())
}

/// One blob: a GET streamed into a monolithic PUT of a fresh upload session.
async fn move_blob(
    http: &reqwest::Client,
    src: &Place,
    dst: &Place,
    digest: &str,
    size: u64,
) -> anyhow::Result<u64> {
    let start = http
        .post(format!("{}/blobs/uploads/", dst.base))
        .send()
        .await?
        .error_for_status()?;
    let location = start
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .context("no upload location")?;
    let url = if location.starts_with('/') {
        let origin = dst
            .base
            .split_once("/v2/")
            .map_or(dst.base.as_str(), |(origin, _)| origin);
        format!("{origin}{location}")
    } else {
        location.to_string()
    };
    let sep = if url.contains('?') { '&' } else { '?' };
    let body = http
        .get(format!("{}/blobs/{digest}", src.base))
        .send()
        .await?
        .error_for_status()?;
    let put = http
        .put(format!("{url}{sep}digest={digest}"))
        .header("Content-Type", "application/octet-stream")
        .header("Content-Length", size)
        .body(reqwest::Body::wrap_stream(body.bytes_stream()))
        .send()
        .await?;
    if put.status() != reqwest::StatusCode::CREATED {
        bail!("upload of {digest} to {}: {}", dst.repo, put.status());
    }
    Ok(size)
}
