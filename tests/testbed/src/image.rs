//! Generated images pushed to a real registry: OCI image indexes or Docker manifest lists over
//! several platforms (optionally with a BuildKit-style attestation entry of platform
//! unknown/unknown), single manifests, a base layer shared between platforms and images, and
//! random layers. Tests then know every digest and byte that must arrive at the target.

use anyhow::{Context as _, bail};
use base64::Engine as _;
use sha2::{Digest as _, Sha256};

use crate::registry::Credentials;

/// Manifest format family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OCI image index / manifest / layers.
    Oci,
    /// Docker manifest list / schema2 manifest / layers.
    Docker,
}

/// What image to generate.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// OCI or Docker media types.
    pub format: Format,
    /// Platforms (`linux/amd64`, `linux/arm64/v8`); one manifest each.
    pub platforms: Vec<String>,
    /// Random layers per platform.
    pub layers: usize,
    /// Bytes per random layer.
    pub layer_size: usize,
    /// A base layer of this size, the same bytes in every platform (and in every image with the
    /// same `base_seed`).
    pub shared_base: Option<usize>,
    /// Seed of the shared base layer.
    pub base_seed: u64,
    /// Push an index / manifest list on top (else: a single manifest, first platform).
    pub index: bool,
    /// Add an attestation manifest (platform unknown/unknown) to the index.
    pub attestation: bool,
    /// Seed of the random layers (different seeds, different images).
    pub seed: u64,
}

impl ImageSpec {
    /// A small multi-arch OCI image: 2 platforms x `layers` x `layer_size`.
    pub fn multi_arch(format: Format, layers: usize, layer_size: usize, seed: u64) -> Self {
        Self {
            format,
            platforms: vec!["linux/amd64".into(), "linux/arm64/v8".into()],
            layers,
            layer_size,
            shared_base: None,
            base_seed: 1,
            index: true,
            attestation: false,
            seed,
        }
    }

    /// A single-platform image (no index).
    pub fn single(format: Format, layers: usize, layer_size: usize, seed: u64) -> Self {
        Self {
            platforms: vec!["linux/amd64".into()],
            index: false,
            ..Self::multi_arch(format, layers, layer_size, seed)
        }
    }
}

/// A blob's digest and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// `sha256:…`.
    pub digest: String,
    /// Bytes.
    pub size: u64,
}

/// What was pushed: every manifest's exact bytes and every blob, for comparison at the target.
#[derive(Debug, Clone)]
pub struct PushedImage {
    /// `host/repo:tag`.
    pub reference: String,
    /// Digest of the top manifest or index.
    pub digest: String,
    /// Media type of the top manifest.
    pub media_type: String,
    /// Every manifest (children and top) as (digest, media type, bytes).
    pub manifests: Vec<(String, String, Vec<u8>)>,
    /// Every distinct blob (configs and layers).
    pub blobs: Vec<Blob>,
}

impl PushedImage {
    /// Total bytes of all distinct blobs.
    pub fn blob_bytes(&self) -> u64 {
        self.blobs.iter().map(|b| b.size).sum()
    }
}

/// `sha256:<hex>` of bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Fast deterministic pseudo-random bytes (splitmix64): layers of hundreds of MiB in well under
/// a second, and the same seed always gives the same layer.
pub fn random_bytes(size: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; size];
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    for chunk in out.chunks_mut(8) {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let bytes = z.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
    out
}

struct MediaTypes {
    index: &'static str,
    manifest: &'static str,
    config: &'static str,
    layer: &'static str,
}

fn media_types(format: Format) -> MediaTypes {
    match format {
        Format::Oci => MediaTypes {
            index: "application/vnd.oci.image.index.v1+json",
            manifest: "application/vnd.oci.image.manifest.v1+json",
            config: "application/vnd.oci.image.config.v1+json",
            layer: "application/vnd.oci.image.layer.v1.tar+gzip",
        },
        Format::Docker => MediaTypes {
            index: "application/vnd.docker.distribution.manifest.list.v2+json",
            manifest: "application/vnd.docker.distribution.manifest.v2+json",
            config: "application/vnd.docker.container.image.v1+json",
            layer: "application/vnd.docker.image.rootfs.diff.tar.gzip",
        },
    }
}

/// The manifest media types the test bed asks a registry for (indexes and images, OCI and
/// Docker), as containerd and the copiers ask.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// Pushes generated images to one registry, over plain HTTP or (with [`Pusher::https`])
/// HTTPS.
#[derive(Debug, Clone)]
pub struct Pusher {
    http: reqwest::Client,
    base: String,
    host: String,
    authorization: Option<String>,
}

impl Pusher {
    /// A pusher for `host` (`127.0.0.1:5000`), with basic credentials if the registry needs them.
    pub fn new(host: &str, credentials: Option<&Credentials>) -> Self {
        shared::tls::ensure_crypto_provider();
        Self::with_client(reqwest::Client::new(), "http", host, credentials)
    }

    /// A pusher for the HTTPS registry `host` whose certificate a CA of `ca_pem` signed, over
    /// HTTP/1.1 as `backup copy` speaks to HTTPS registries.
    pub fn https(
        host: &str,
        credentials: Option<&Credentials>,
        ca_pem: &str,
    ) -> anyhow::Result<Self> {
        shared::tls::ensure_crypto_provider();
        let mut http = reqwest::Client::builder().no_proxy().http1_only();
        for ca in reqwest::Certificate::from_pem_bundle(ca_pem.as_bytes())? {
            http = http.add_root_certificate(ca);
        }
        Ok(Self::with_client(http.build()?, "https", host, credentials))
    }

    /// A pusher for `host` as the test bed's registries serve it: over HTTPS trusting
    /// `ca_pem` when the registry has a CA, over plain HTTP when it has none.
    pub fn trusting(
        host: &str,
        credentials: Option<&Credentials>,
        ca_pem: Option<&str>,
    ) -> anyhow::Result<Self> {
        match ca_pem {
            Some(ca) => Self::https(host, credentials, ca),
            None => Ok(Self::new(host, credentials)),
        }
    }

    fn with_client(
        http: reqwest::Client,
        scheme: &str,
        host: &str,
        credentials: Option<&Credentials>,
    ) -> Self {
        let authorization = credentials.map(|c| {
            let raw = format!("{}:{}", c.username, c.password);
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(raw)
            )
        });
        Self {
            http,
            base: format!("{scheme}://{host}"),
            host: host.to_string(),
            authorization,
        }
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, url);
        match &self.authorization {
            Some(a) => r.header("Authorization", a),
            None => r,
        }
    }

    /// Uploads one blob (monolithic), unless the registry already has it.
    pub async fn push_blob(&self, repo: &str, bytes: Vec<u8>) -> anyhow::Result<Blob> {
        let digest = sha256_digest(&bytes);
        let size = bytes.len() as u64;
        let head = self
            .request(
                reqwest::Method::HEAD,
                &format!("{}/v2/{repo}/blobs/{digest}", self.base),
            )
            .send()
            .await?;
        if head.status().is_success() {
            return Ok(Blob { digest, size });
        }
        self.upload_blob(repo, &digest, size, bytes.into()).await?;
        Ok(Blob { digest, size })
    }

    /// Uploads `body` (`size` bytes, which must hash to `digest`) into a fresh upload session
    /// with one monolithic PUT; `body` may be a stream.
    pub async fn upload_blob(
        &self,
        repo: &str,
        digest: &str,
        size: u64,
        body: reqwest::Body,
    ) -> anyhow::Result<()> {
        let start = self
            .request(
                reqwest::Method::POST,
                &format!("{}/v2/{repo}/blobs/uploads/", self.base),
            )
            .send()
            .await?;
        if start.status() != reqwest::StatusCode::ACCEPTED {
            bail!("start upload to {repo}: {}", start.status());
        }
        let location = start
            .headers()
            .get("location")
            .and_then(|l| l.to_str().ok())
            .context("no upload location")?
            .to_string();
        let url = if location.starts_with('/') {
            format!("{}{location}", self.base)
        } else {
            location
        };
        let sep = if url.contains('?') { '&' } else { '?' };
        let put = self
            .request(reqwest::Method::PUT, &format!("{url}{sep}digest={digest}"))
            .header("Content-Type", "application/octet-stream")
            .header("Content-Length", size)
            .body(body)
            .send()
            .await?;
        if put.status() != reqwest::StatusCode::CREATED {
            bail!("finish upload to {repo}: {}", put.status());
        }
        Ok(())
    }

    /// A blob's GET answer, its body not yet read (to stream it elsewhere).
    pub async fn blob_response(
        &self,
        repo: &str,
        digest: &str,
    ) -> anyhow::Result<reqwest::Response> {
        Ok(self
            .request(
                reqwest::Method::GET,
                &format!("{}/v2/{repo}/blobs/{digest}", self.base),
            )
            .send()
            .await?
            .error_for_status()?)
    }

    /// Pushes a manifest's exact bytes under `reference` (a tag or a digest).
    pub async fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> anyhow::Result<String> {
        let resp = self
            .request(
                reqwest::Method::PUT,
                &format!("{}/v2/{repo}/manifests/{reference}", self.base),
            )
            .header("Content-Type", media_type)
            .body(bytes.to_vec())
            .send()
            .await?;
        if resp.status() != reqwest::StatusCode::CREATED {
            let status = resp.status();
            bail!(
                "push manifest {repo}:{reference}: {status}: {}",
                resp.text().await.unwrap_or_default()
            );
        }
        Ok(sha256_digest(bytes))
    }

    /// Generates and pushes an image as `repo:tag`; children before the index.
    pub async fn push_image(
        &self,
        repo: &str,
        tag: &str,
        spec: &ImageSpec,
    ) -> anyhow::Result<PushedImage> {
        let mt = media_types(spec.format);
        let mut blobs: Vec<Blob> = Vec::new();
        let mut manifests = Vec::new();
        let mut descriptors = Vec::new();
        let base = match spec.shared_base {
            Some(size) => Some(
                self.push_blob(
                    repo,
                    random_bytes(size, spec.base_seed.wrapping_add(0xBA5E)),
                )
                .await?,
            ),
            None => None,
        };
        if let Some(b) = &base {
            blobs.push(b.clone());
        }
        for (p, platform) in spec.platforms.iter().enumerate() {
            let mut parts = platform.split('/');
            let os = parts.next().unwrap_or("linux");
            let arch = parts.next().unwrap_or("amd64");
            let variant = parts.next();
            let mut layers = Vec::new();
            if let Some(b) = &base {
                layers.push(b.clone());
            }
            for l in 0..spec.layers {
                let seed = spec
                    .seed
                    .wrapping_mul(1_000_003)
                    .wrapping_add((p * 1000 + l) as u64);
                let blob = self
                    .push_blob(repo, random_bytes(spec.layer_size, seed))
                    .await?;
                blobs.push(blob.clone());
                layers.push(blob);
            }
            let config = serde_json::json!({
                "architecture": arch, "os": os, "variant": variant,
                "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| &l.digest).collect::<Vec<_>>()},
                "config": {"Labels": {"seed": spec.seed.to_string()}},
            });
            let config_blob = self.push_blob(repo, serde_json::to_vec(&config)?).await?;
            blobs.push(config_blob.clone());
            let manifest = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": mt.manifest,
                "config": {"mediaType": mt.config, "digest": config_blob.digest, "size": config_blob.size},
                "layers": layers.iter().map(|l| serde_json::json!({"mediaType": mt.layer, "digest": l.digest, "size": l.size})).collect::<Vec<_>>(),
            });
            let bytes = serde_json::to_vec_pretty(&manifest)?;
            let digest = sha256_digest(&bytes);
            if !spec.index {
                let digest = self.push_manifest(repo, tag, mt.manifest, &bytes).await?;
                manifests.push((digest.clone(), mt.manifest.to_string(), bytes));
                return Ok(PushedImage {
                    reference: format!("{}/{repo}:{tag}", self.host),
                    digest,
                    media_type: mt.manifest.to_string(),
                    manifests,
                    blobs: dedup(blobs),
                });
            }
            self.push_manifest(repo, &digest, mt.manifest, &bytes)
                .await?;
            let mut platform_json = serde_json::json!({"architecture": arch, "os": os});
            if let Some(v) = variant {
                platform_json["variant"] = v.into();
            }
            descriptors.push(serde_json::json!({"mediaType": mt.manifest, "digest": digest, "size": bytes.len(), "platform": platform_json}));
            manifests.push((digest, mt.manifest.to_string(), bytes));
        }
        if spec.attestation {
            let statement = self
                .push_blob(
                    repo,
                    format!(
                        "{{\"_type\":\"https://in-toto.io/Statement/v0.1\",\"seed\":{}}}",
                        spec.seed
                    )
                    .into_bytes(),
                )
                .await?;
            let config = self.push_blob(repo, b"{}".to_vec()).await?;
            blobs.push(statement.clone());
            blobs.push(config.clone());
            let att = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.digest, "size": config.size},
                "layers": [{"mediaType": "application/vnd.in-toto+json", "digest": statement.digest, "size": statement.size}],
            });
            let bytes = serde_json::to_vec(&att)?;
            let digest = self
                .push_manifest(
                    repo,
                    &sha256_digest(&bytes),
                    "application/vnd.oci.image.manifest.v1+json",
                    &bytes,
                )
                .await?;
            descriptors.push(serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": bytes.len(),
                "platform": {"architecture": "unknown", "os": "unknown"},
                "annotations": {"vnd.docker.reference.type": "attestation-manifest", "vnd.docker.reference.digest": descriptors[0]["digest"].clone()},
            }));
            manifests.push((
                digest,
                "application/vnd.oci.image.manifest.v1+json".to_string(),
                bytes,
            ));
        }
        let index = serde_json::json!({"schemaVersion": 2, "mediaType": mt.index, "manifests": descriptors});
        let bytes = serde_json::to_vec_pretty(&index)?;
        let digest = self.push_manifest(repo, tag, mt.index, &bytes).await?;
        manifests.push((digest.clone(), mt.index.to_string(), bytes));
        Ok(PushedImage {
            reference: format!("{}/{repo}:{tag}", self.host),
            digest,
            media_type: mt.index.to_string(),
            manifests,
            blobs: dedup(blobs),
        })
    }

    /// Reads a manifest by tag or digest: (media type, exact bytes), or `None` on 404.
    pub async fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> anyhow::Result<Option<(String, Vec<u8>)>> {
        let resp = self
            .request(
                reqwest::Method::GET,
                &format!("{}/v2/{repo}/manifests/{reference}", self.base),
            )
            .header("Accept", MANIFEST_ACCEPT)
            .send()
            .await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            bail!("get manifest {repo}:{reference}: {}", resp.status());
        }
        let mt = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        Ok(Some((mt, resp.bytes().await?.to_vec())))
    }

    /// Reads a whole blob, or `None` on 404.
    pub async fn get_blob(&self, repo: &str, digest: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let resp = self
            .request(
                reqwest::Method::GET,
                &format!("{}/v2/{repo}/blobs/{digest}", self.base),
            )
            .send()
            .await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            bail!("get blob {repo}@{digest}: {}", resp.status());
        }
        Ok(Some(resp.bytes().await?.to_vec()))
    }

    /// Checks that `repo` holds every manifest (by digest, byte for byte) and every blob (its
    /// bytes hash to its digest) of `image`: a byte-identical copy.
    pub async fn check_identical(&self, repo: &str, image: &PushedImage) -> anyhow::Result<()> {
        for (digest, _, bytes) in &image.manifests {
            let Some((_, got)) = self.get_manifest(repo, digest).await? else {
                bail!("manifest {digest} is not in {repo}");
            };
            if &got != bytes {
                bail!("manifest {digest} in {repo} differs from the source's bytes");
            }
        }
        for blob in &image.blobs {
            let Some(got) = self.get_blob(repo, &blob.digest).await? else {
                bail!("blob {} is not in {repo}", blob.digest);
            };
            if sha256_digest(&got) != blob.digest {
                bail!("blob {} in {repo} does not hash to its digest", blob.digest);
            }
        }
        Ok(())
    }

    /// Lists the tags of a repository (empty when it does not exist).
    pub async fn tags(&self, repo: &str) -> anyhow::Result<Vec<String>> {
        let resp = self
            .request(
                reqwest::Method::GET,
                &format!("{}/v2/{repo}/tags/list", self.base),
            )
            .send()
            .await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(Vec::new());
        }
        let v: serde_json::Value = resp.json().await?;
        Ok(v["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str().map(str::to_string))
            .collect())
    }
}

fn dedup(mut blobs: Vec<Blob>) -> Vec<Blob> {
    let mut seen = std::collections::HashSet::new();
    blobs.retain(|b| seen.insert(b.digest.clone()));
    blobs
}
