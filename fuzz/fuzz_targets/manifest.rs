//! Whatever a registry serves as a manifest, under any media type: the parsed content or a
//! classified error, never a panic; every digest that parsing accepts is one it validated.
#![no_main]

use arbitrary::Arbitrary;
use backup::copy::manifest::{Content, Origin, parse};
use libfuzzer_sys::fuzz_target;
use shared::registry::client::RawManifest;

const MEDIA_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/json",
    "",
];

#[derive(Arbitrary, Debug)]
struct Served {
    media_type: u8,
    bytes: Vec<u8>,
}

fuzz_target!(|s: Served| {
    let m = RawManifest {
        media_type: MEDIA_TYPES[usize::from(s.media_type) % MEDIA_TYPES.len()].to_string(),
        bytes: s.bytes,
        digest: String::new(),
    };
    let origin = Origin {
        registry: "registry.example",
        what: "manifest fuzz/target:1",
    };
    let _: Option<Content> = parse(&m, origin).ok();
});
