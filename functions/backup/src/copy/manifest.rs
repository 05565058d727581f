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

/// Whether a media type is one of the two index kinds.
pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_IMAGE_INDEX_MEDIA_TYPE || media_type == IMAGE_MANIFEST_LIST_MEDIA_TYPE
}

fn size(what: &str, s: i64) -> Result<u64, CopyError> {
    u64::try_from(s).map_err(|_| CopyError::Invalid {
        what: what.into(),
        reason: format!("negative size {s}"),
    })
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

/// Parses a manifest; schema1 and unknown media types are refused.
pub fn parse(m: &RawManifest, what: &str) -> Result<Content, CopyError> {
    let media_type = effective_media_type(m);
    let invalid = |e: serde_json::Error| CopyError::Invalid {
        what: what.into(),
        reason: format!("not a valid {media_type}: {e}"),
    };
    match media_type.as_str() {
        OCI_IMAGE_INDEX_MEDIA_TYPE | IMAGE_MANIFEST_LIST_MEDIA_TYPE => {
            let index: OciImageIndex = serde_json::from_slice(&m.bytes).map_err(invalid)?;
            Ok(Content::Index(
                index
                    .manifests
                    .into_iter()
                    .map(|e| {
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
                        ChildRef {
                            digest: e.digest,
                            media_type: e.media_type,
                            platform,
                        }
                    })
                    .collect(),
            ))
        }
        OCI_IMAGE_MEDIA_TYPE | IMAGE_MANIFEST_MEDIA_TYPE => {
            let manifest: OciImageManifest = serde_json::from_slice(&m.bytes).map_err(invalid)?;
            let mut blobs = vec![BlobRef {
                digest: manifest.config.digest.clone(),
                size: size(what, manifest.config.size)?,
            }];
            for layer in manifest.layers {
                // Foreign layers (Windows base images) live at their URLs, not in registries.
                let foreign = layer.urls.as_ref().is_some_and(|u| !u.is_empty())
                    && (layer.media_type.contains("nondistributable")
                        || layer.media_type.contains("foreign"));
                if !foreign {
                    blobs.push(BlobRef {
                        digest: layer.digest,
                        size: size(what, layer.size)?,
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
                {"mediaType": OCI_IMAGE_MEDIA_TYPE, "digest": "sha256:a", "size": 1, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
                {"mediaType": OCI_IMAGE_MEDIA_TYPE, "digest": "sha256:b", "size": 1, "platform": {"os": "unknown", "architecture": "unknown"}},
                {"mediaType": OCI_IMAGE_MEDIA_TYPE, "digest": "sha256:c", "size": 1}
            ]}),
        );
        let Content::Index(children) = parse(&m, "t").unwrap() else {
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
            "config": {"mediaType": "c", "digest": "sha256:c", "size": 2},
            "layers": [{"mediaType": "l", "digest": "sha256:l", "size": 3},
                       {"mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", "digest": "sha256:f", "size": 4, "urls": ["https://x"]}]}),
        );
        assert_eq!(
            parse(&m, "t").unwrap(),
            Content::Image(vec![
                BlobRef {
                    digest: "sha256:c".into(),
                    size: 2
                },
                BlobRef {
                    digest: "sha256:l".into(),
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
            parse(&s1, "t"),
            Err(CopyError::Unsupported { .. })
        ));
        let odd = raw("application/vnd.example+json", serde_json::json!({}));
        assert!(matches!(
            parse(&odd, "t"),
            Err(CopyError::Unsupported { .. })
        ));
        let bad = RawManifest {
            media_type: OCI_IMAGE_MEDIA_TYPE.into(),
            bytes: b"{".to_vec(),
            digest: String::new(),
        };
        assert!(matches!(parse(&bad, "t"), Err(CopyError::Invalid { .. })));
        let neg = raw(
            OCI_IMAGE_MEDIA_TYPE,
            serde_json::json!({"schemaVersion": 2, "config": {"mediaType": "c", "digest": "sha256:c", "size": -1}, "layers": []}),
        );
        assert!(matches!(parse(&neg, "t"), Err(CopyError::Invalid { .. })));
    }
}
