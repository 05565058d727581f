//! What a manifest references, read with `oci-client`'s manifest types (Docker schema2 and
//! manifest lists share the OCI JSON shape). The bytes themselves are never re-serialized: the
//! engine pushes exactly what it read.

use oci_client::manifest::{
    IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE, OciImageIndex, OciImageManifest,
};

use super::client::RawManifest;
use super::error::CopyError;

/// A blob a manifest references.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlobRef {
    /// `sha256:…`.
    pub digest: String,
    /// Declared size.
    pub size: u64,
}

/// A child manifest an index references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildRef {
    /// `sha256:…`.
    pub digest: String,
    /// Declared media type.
    pub media_type: String,
    /// `os/arch[/variant]`, `unknown/unknown` for attestations.
    pub platform: String,
}

/// The parsed content of a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// An OCI index or Docker manifest list.
    Index(Vec<ChildRef>),
    /// An image manifest: config and layers to copy.
    Image(Vec<BlobRef>),
}

/// Where a manifest came from, for errors: the registry and what the manifest is.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// The registry host.
    pub registry: &'a str,
    /// `manifest library/nginx:1.14.0`.
    pub what: &'a str,
}

impl Origin<'_> {
    fn malformed(&self, reason: String) -> CopyError {
        CopyError::Malformed {
            registry: self.registry.into(),
            what: self.what.into(),
            reason,
        }
    }

    fn size(&self, s: i64) -> Result<u64, CopyError> {
        u64::try_from(s).map_err(|_| self.malformed(format!("negative size {s}")))
    }

    /// A descriptor's digest, checked against the grammar before it can reach a URL (a digest
    /// like `sha256:x/../../other/blobs/…` would address another repository) and required to
    /// be sha256, the algorithm every blob is verified with.
    fn digest(&self, d: String) -> Result<String, CopyError> {
        let shown: String = d.chars().take(80).collect();
        shared::reference::validate_digest(&d)
            .map_err(|e| self.malformed(format!("descriptor digest {shown:?}: {e}")))?;
        if !d.starts_with("sha256:") {
            return Err(CopyError::Unsupported {
                media_type: shown,
                what: self.what.into(),
                hint: " (only sha256 content digests are copied and verified)",
            });
        }
        Ok(d)
    }
}

/// The media type of a manifest: the served Content-Type, or the JSON's `mediaType` when the
/// registry served a generic type.
pub fn effective_media_type(m: &RawManifest) -> String {
    let served = m.media_type.as_str();
    if served.starts_with("application/vnd.") {
        return served.to_string();
    }
    serde_json::from_slice::<serde_json::Value>(&m.bytes)
        .ok()
        .and_then(|v| v["mediaType"].as_str().map(str::to_string))
        .unwrap_or_else(|| served.to_string())
}

/// Parses a manifest; schema1 and unknown media types are refused, every descriptor's digest
/// and size is validated.
pub fn parse(m: &RawManifest, origin: Origin<'_>) -> Result<Content, CopyError> {
    let what = origin.what;
    let media_type = effective_media_type(m);
    let invalid = |e: serde_json::Error| origin.malformed(format!("not a valid {media_type}: {e}"));
    match media_type.as_str() {
        OCI_IMAGE_INDEX_MEDIA_TYPE | IMAGE_MANIFEST_LIST_MEDIA_TYPE => {
            let index: OciImageIndex = serde_json::from_slice(&m.bytes).map_err(invalid)?;
            Ok(Content::Index(
                index
                    .manifests
                    .into_iter()
                    .map(|e| -> Result<ChildRef, CopyError> {
                        let platform = e.platform.as_ref().map_or_else(
                            || "unknown/unknown".to_string(),
                            |p| {
                                let os = serde_json::to_value(&p.os)
                                    .ok()
                                    .and_then(|v| v.as_str().map(str::to_string))
                                    .unwrap_or_default();
                                let arch = serde_json::to_value(&p.architecture)
                                    .ok()
                                    .and_then(|v| v.as_str().map(str::to_string))
                                    .unwrap_or_default();
                                match &p.variant {
                                    Some(v) if !v.is_empty() => format!("{os}/{arch}/{v}"),
                                    _ => format!("{os}/{arch}"),
                                }
                            },
                        );
                        Ok(ChildRef {
                            digest: origin.digest(e.digest)?,
                            media_type: e.media_type,
                            platform,
                        })
                    })
                    .collect::<Result<_, _>>()?,
            ))
        }
        OCI_IMAGE_MEDIA_TYPE | IMAGE_MANIFEST_MEDIA_TYPE => {
            let manifest: OciImageManifest = serde_json::from_slice(&m.bytes).map_err(invalid)?;
            let mut blobs = vec![BlobRef {
                digest: origin.digest(manifest.config.digest)?,
                size: origin.size(manifest.config.size)?,
            }];
            for layer in manifest.layers {
                // Foreign layers (Windows base images) live at their URLs, not in registries.
                let foreign = layer.urls.as_ref().is_some_and(|u| !u.is_empty())
                    && (layer.media_type.contains("nondistributable")
                        || layer.media_type.contains("foreign"));
                if !foreign {
                    blobs.push(BlobRef {
                        digest: origin.digest(layer.digest)?,
                        size: origin.size(layer.size)?,
                    });
                }
            }
            Ok(Content::Image(blobs))
        }
        t if t.starts_with("application/vnd.docker.distribution.manifest.v1") => {
            Err(CopyError::Unsupported {
                media_type: t.to_string(),
                what: what.into(),
                hint: " (Docker schema1 is deprecated and cannot be copied digest-preserving; rebuild or re-push the image as schema2 or OCI)",
            })
        }
        t => Err(CopyError::Unsupported {
            media_type: t.to_string(),
            what: what.into(),
            hint: "",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGIN: Origin<'static> = Origin {
        registry: "r",
        what: "t",
    };

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn raw(media_type: &str, json: serde_json::Value) -> RawManifest {
        RawManifest {
            media_type: media_type.into(),
            bytes: serde_json::to_vec(&json).unwrap(),
            digest: String::new(),
        }
    }

    #[test]
    fn index_platforms_including_attestations() {
        let m = raw(
            OCI_IMAGE_INDEX_MEDIA_TYPE,
            serde_json::json!({"schemaVersion": 2, "manifests": [
                {"mediaType": OCI_IMAGE_MEDIA_TYPE, "digest": d('a'), "size": 1, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
                {"mediaType": OCI_IMAGE_MEDIA_TYPE, "digest": d('b'), "size": 1, "platform": {"os": "unknown", "architecture": "unknown"}},
                {"mediaType": OCI_IMAGE_MEDIA_TYPE, "digest": d('c'), "size": 1}
            ]}),
        );
        let Content::Index(children) = parse(&m, ORIGIN).unwrap() else {
            panic!("index expected")
        };
        let platforms: Vec<_> = children.iter().map(|c| c.platform.as_str()).collect();
        assert_eq!(
            platforms,
            ["linux/arm64/v8", "unknown/unknown", "unknown/unknown"]
        );
    }

    #[test]
    fn image_blobs_and_foreign_layers() {
        let m = raw(
            "application/json",
            serde_json::json!({"schemaVersion": 2, "mediaType": IMAGE_MANIFEST_MEDIA_TYPE,
            "config": {"mediaType": "c", "digest": d('c'), "size": 2},
            "layers": [{"mediaType": "l", "digest": d('e'), "size": 3},
                       {"mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", "digest": d('f'), "size": 4, "urls": ["https://x"]}]}),
        );
        assert_eq!(
            parse(&m, ORIGIN).unwrap(),
            Content::Image(vec![
                BlobRef {
                    digest: d('c'),
                    size: 2
                },
                BlobRef {
                    digest: d('e'),
                    size: 3
                }
            ])
        );
    }

    #[test]
    fn schema1_unknown_and_garbage_are_refused() {
        let s1 = raw(
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            serde_json::json!({"schemaVersion": 1}),
        );
        assert!(matches!(
            parse(&s1, ORIGIN),
            Err(CopyError::Unsupported { .. })
        ));
        let odd = raw("application/vnd.example+json", serde_json::json!({}));
        assert!(matches!(
            parse(&odd, ORIGIN),
            Err(CopyError::Unsupported { .. })
        ));
        let bad = RawManifest {
            media_type: OCI_IMAGE_MEDIA_TYPE.into(),
            bytes: b"{".to_vec(),
            digest: String::new(),
        };
        assert!(matches!(
            parse(&bad, ORIGIN),
            Err(CopyError::Malformed { .. })
        ));
        let neg = raw(
            OCI_IMAGE_MEDIA_TYPE,
            serde_json::json!({"schemaVersion": 2, "config": {"mediaType": "c", "digest": d('c'), "size": -1}, "layers": []}),
        );
        assert!(matches!(
            parse(&neg, ORIGIN),
            Err(CopyError::Malformed { .. })
        ));
    }

    #[test]
    fn descriptor_digests_are_validated_before_any_url_is_built() {
        let traversal = format!("sha256:x/../../../../v2/other/blobs/{}", d('a'));
        for bad in [traversal.as_str(), "sha256:ABC", "md5:abc", "sha256:"] {
            let m = raw(
                OCI_IMAGE_MEDIA_TYPE,
                serde_json::json!({"schemaVersion": 2, "config": {"mediaType": "c", "digest": bad, "size": 1}, "layers": []}),
            );
            assert!(
                matches!(parse(&m, ORIGIN), Err(CopyError::Malformed { .. })),
                "{bad}"
            );
            let index = raw(
                OCI_IMAGE_INDEX_MEDIA_TYPE,
                serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": OCI_IMAGE_MEDIA_TYPE, "digest": bad, "size": 1}]}),
            );
            assert!(
                matches!(parse(&index, ORIGIN), Err(CopyError::Malformed { .. })),
                "{bad}"
            );
        }
        let sha512 = format!("sha512:{}", "a".repeat(128));
        let m = raw(
            OCI_IMAGE_MEDIA_TYPE,
            serde_json::json!({"schemaVersion": 2, "config": {"mediaType": "c", "digest": sha512, "size": 1}, "layers": []}),
        );
        assert!(matches!(
            parse(&m, ORIGIN),
            Err(CopyError::Unsupported { .. })
        ));
    }

    proptest::proptest! {
        /// A registry may serve anything as a manifest: parsing never panics, whatever the
        /// bytes and the media type.
        #[test]
        fn arbitrary_manifests_never_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048),
            media_type in proptest::sample::select(vec![
                OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE, IMAGE_MANIFEST_LIST_MEDIA_TYPE,
                IMAGE_MANIFEST_MEDIA_TYPE, "application/json", "text/plain", "",
            ]),
        ) {
            let m = RawManifest { media_type: media_type.to_string(), bytes, digest: String::new() };
            let _ = parse(&m, ORIGIN);
        }

        /// Structurally plausible manifests with hostile values: digests, sizes and platforms
        /// of any shape end in `Ok` or a classified error, never a panic.
        #[test]
        fn hostile_descriptor_values_never_panic(
            digest in "\\PC{0,100}",
            size in proptest::prelude::any::<i64>(),
            os in "\\PC{0,20}",
        ) {
            let index = raw(OCI_IMAGE_INDEX_MEDIA_TYPE, serde_json::json!({"schemaVersion": 2, "manifests": [
                {"mediaType": OCI_IMAGE_MEDIA_TYPE, "digest": digest, "size": size, "platform": {"os": os, "architecture": os}}]}));
            let _ = parse(&index, ORIGIN);
            let image = raw(OCI_IMAGE_MEDIA_TYPE, serde_json::json!({"schemaVersion": 2,
                "config": {"mediaType": "c", "digest": digest, "size": size}, "layers": [{"mediaType": "l", "digest": digest, "size": size}]}));
            let _ = parse(&image, ORIGIN);
        }
    }
}
