//! Signatures, attestations and SBOMs travel with the image (real registries, distribution 2.8,
//! which has no referrers API): cosign's `.sig`/`.att` tags, an SBOM with a `subject` listed in
//! the referrers tag schema, and a signature on that SBOM all arrive byte-identical, found the
//! way a verifier finds them; what the target already lists stays; `--referrers none` copies
//! none and `signatures` only signatures; and all of it through a registry in token mode over
//! HTTPS.

use backup::copy::{ClientOptions, Copier, ReferrersMode, RegistryClient};
use serde_json::Value;
use shared::Reference;
use testbed::referrers::{
    add_to_tag_schema, listed_in_tag_schema, push_artifact, push_cosign_tag, tag_schema,
};
use testbed::{FaultProxy, Format, ImageSpec, PushedImage, Pusher, Registry};

const SBOM_TYPE: &str = "application/spdx+json";

struct Signed {
    src: Registry,
    dst: Registry,
    image: PushedImage,
    sig: testbed::referrers::Artifact,
    att: testbed::referrers::Artifact,
    sbom: testbed::referrers::Artifact,
    sbom_sig: testbed::referrers::Artifact,
}

/// A source and a target registry, and a two-platform image `team/app:1` at the source.
async fn registries_and_image(seed: u64) -> (Registry, Registry, Pusher, PushedImage) {
    let src = Registry::start().await.expect("src");
    let dst = Registry::start().await.expect("dst");
    let pusher = Pusher::new(&src.host(), None);
    let image = pusher
        .push_image(
            "team/app",
            "1",
            &ImageSpec::multi_arch(Format::Oci, 1, 4096, seed),
        )
        .await
        .expect("image");
    (src, dst, pusher, image)
}

/// An SBOM of `image` (a referrer with a subject), pushed by digest: no tag points at it.
async fn push_sbom(pusher: &Pusher, image: &PushedImage) -> testbed::referrers::Artifact {
    push_artifact(
        pusher,
        "team/app",
        None,
        SBOM_TYPE,
        SBOM_TYPE,
        b"{\"spdxVersion\":\"SPDX-2.3\"}",
        Some((&image.digest, &image.media_type, image_size(image))),
    )
    .await
    .expect("sbom")
}

/// An image signed as cosign signs it, attested, with an SBOM (a referrer with a subject, in
/// the tag schema) that is itself signed.
async fn signed_image() -> Signed {
    let (src, dst, pusher, image) = registries_and_image(5).await;
    let sig = push_cosign_tag(
        &pusher,
        "team/app",
        &image.digest,
        "sig",
        b"{\"critical\":{}}",
    )
    .await
    .expect("sig");
    let att = push_cosign_tag(
        &pusher,
        "team/app",
        &image.digest,
        "att",
        b"{\"payloadType\":\"x\"}",
    )
    .await
    .expect("att");
    let sbom = push_sbom(&pusher, &image).await;
    add_to_tag_schema(&pusher, "team/app", &image.digest, &sbom.descriptor)
        .await
        .expect("tag schema");
    let sbom_sig = push_artifact(
        &pusher,
        "team/app",
        None,
        "application/vnd.dev.cosign.artifact.sig.v1+json",
        "application/vnd.dev.cosign.simplesigning.v1+json",
        b"{\"signs\":\"the sbom\"}",
        Some((
            &sbom.digest,
            testbed::referrers::OCI_MANIFEST,
            sbom.bytes.len() as u64,
        )),
    )
    .await
    .expect("sbom signature");
    add_to_tag_schema(&pusher, "team/app", &sbom.digest, &sbom_sig.descriptor)
        .await
        .expect("tag schema of the sbom");
    Signed {
        src,
        dst,
        image,
        sig,
        att,
        sbom,
        sbom_sig,
    }
}

fn image_size(image: &PushedImage) -> u64 {
    image
        .manifests
        .iter()
        .find(|(d, _, _)| *d == image.digest)
        .map_or(0, |(_, _, b)| b.len() as u64)
}

fn copier(insecure: &[String], mode: ReferrersMode) -> Copier {
    let client = RegistryClient::new(ClientOptions {
        insecure: insecure.iter().cloned().collect(),
        ..Default::default()
    })
    .expect("client");
    Copier::new(client, 4).with_referrers(mode)
}

fn at(host: &str, path: &str) -> Reference {
    Reference::parse_normalized(&format!("{host}/{path}")).expect("reference")
}

fn digests(list: &[Value]) -> Vec<String> {
    let mut d: Vec<String> = list
        .iter()
        .filter_map(|v| v["digest"].as_str().map(str::to_string))
        .collect();
    d.sort();
    d
}

/// The cosign tags (`.sig`, `.att`) of the image, the SBOM and its signature by digest, and the
/// SBOM's signature in the SBOM's tag-schema index: all at `repo` of `target`, byte-identical.
async fn assert_referrers_at(target: &Pusher, repo: &str, s: &Signed) {
    for (suffix, artifact) in [("sig", &s.sig), ("att", &s.att)] {
        let tag = format!("{}.{suffix}", tag_schema(&s.image.digest));
        let (_, bytes) = target
            .get_manifest(repo, &tag)
            .await
            .expect("get")
            .unwrap_or_else(|| panic!("{tag} at the target"));
        assert_eq!(bytes, artifact.bytes, "{tag} byte-identical");
    }
    for artifact in [&s.sbom, &s.sbom_sig] {
        let (_, bytes) = target
            .get_manifest(repo, &artifact.digest)
            .await
            .expect("get")
            .expect("referrer by digest");
        assert_eq!(bytes, artifact.bytes);
    }
    let sbom_referrers = listed_in_tag_schema(target, repo, &s.sbom.digest)
        .await
        .expect("index of the sbom");
    assert_eq!(digests(&sbom_referrers), vec![s.sbom_sig.digest.clone()]);
}

#[tokio::test]
async fn signatures_attestations_and_sboms_arrive_byte_identical() {
    let s = signed_image().await;
    let target = Pusher::new(&s.dst.host(), None);
    // The target already lists another referrer of the image: it must stay.
    let other = push_artifact(
        &target,
        "bk/app",
        None,
        "application/vnd.example.other",
        "application/vnd.example.other",
        b"kept",
        None,
    )
    .await
    .expect("other");
    add_to_tag_schema(&target, "bk/app", &s.image.digest, &other.descriptor)
        .await
        .expect("existing index");

    let summary = copier(&[s.src.host(), s.dst.host()], ReferrersMode::All)
        .copy(
            &at(&s.src.host(), "team/app:1"),
            &at(&s.dst.host(), "bk/app:1"),
            None,
        )
        .await
        .expect("copy");
    assert_eq!(
        summary.referrers_copied, 4,
        "sig, att, sbom, the sbom's signature"
    );
    assert!(
        summary.referrers_skipped.is_empty(),
        "{:?}",
        summary.referrers_skipped
    );

    // Found the way a verifier finds them: cosign's tags, the tag-schema index.
    assert_referrers_at(&target, "bk/app", &s).await;
    let listed = listed_in_tag_schema(&target, "bk/app", &s.image.digest)
        .await
        .expect("index");
    let mut want = vec![other.digest.clone(), s.sbom.digest.clone()];
    want.sort();
    assert_eq!(
        digests(&listed),
        want,
        "the SBOM added, the existing entry kept"
    );
    for artifact in [&s.sbom, &s.sbom_sig] {
        let (_, bytes) = target
            .get_manifest("bk/app", &artifact.digest)
            .await
            .expect("get")
            .expect("referrer by digest");
        let manifest: Value = serde_json::from_slice(&bytes).expect("json");
        for layer in manifest["layers"].as_array().expect("layers") {
            let digest = layer["digest"].as_str().expect("digest");
            assert!(
                target
                    .get_blob("bk/app", digest)
                    .await
                    .expect("blob")
                    .is_some()
            );
        }
    }
    // The image itself, by tag, with the source's digest.
    let (_, top) = target
        .get_manifest("bk/app", "1")
        .await
        .expect("get")
        .expect("tag");
    assert_eq!(testbed::image::sha256_digest(&top), s.image.digest);
}

#[tokio::test]
async fn none_copies_no_referrer_and_signatures_only_signatures() {
    let s = signed_image().await;
    let proxy = FaultProxy::start(&s.dst.host()).await.expect("proxy");
    let target = Pusher::new(&s.dst.host(), None);
    let none = copier(&[s.src.host(), proxy.host()], ReferrersMode::None);
    let summary = none
        .copy(
            &at(&s.src.host(), "team/app:1"),
            &at(&proxy.host(), "bk/app:1"),
            None,
        )
        .await
        .expect("copy");
    assert_eq!(
        (summary.referrers_copied, summary.referrers_present),
        (0, 0)
    );
    assert!(target.tags("bk/app").await.expect("tags") == vec!["1".to_string()]);
    // Warm, with none: one request.
    proxy.reset_requests();
    let warm = none
        .copy(
            &at(&s.src.host(), "team/app:1"),
            &at(&proxy.host(), "bk/app:1"),
            None,
        )
        .await
        .expect("warm");
    assert!(warm.already_complete);
    assert_eq!(proxy.requests().len(), 1, "{:?}", proxy.requests());

    // Signatures only: cosign's .sig and the SBOM's signature would need the SBOM first, which
    // is not a signature; so exactly the image's signature.
    let signatures = copier(&[s.src.host(), proxy.host()], ReferrersMode::Signatures)
        .copy(
            &at(&s.src.host(), "team/app:1"),
            &at(&proxy.host(), "bk/app:1"),
            None,
        )
        .await
        .expect("signatures");
    assert_eq!(signatures.referrers_copied, 1);
    let tags = target.tags("bk/app").await.expect("tags");
    assert!(
        tags.contains(&format!("{}.sig", tag_schema(&s.image.digest))),
        "{tags:?}"
    );
    assert!(
        !tags.contains(&format!("{}.att", tag_schema(&s.image.digest))),
        "{tags:?}"
    );
}

/// The signed image copied once (cold, `--referrers all`) through a counting proxy in front
/// of each registry, the proxies' counts then cleared: ready for a warm copy to be watched.
async fn copied_through_proxies(
    s: &Signed,
) -> (FaultProxy, FaultProxy, Copier, Reference, Reference) {
    let src_proxy = FaultProxy::start(&s.src.host()).await.expect("proxy");
    let dst_proxy = FaultProxy::start(&s.dst.host()).await.expect("proxy");
    let all = copier(&[src_proxy.host(), dst_proxy.host()], ReferrersMode::All);
    let source = at(&src_proxy.host(), "team/app:1");
    let target = at(&dst_proxy.host(), "bk/app:1");
    all.copy(&source, &target, None).await.expect("cold");
    src_proxy.reset_requests();
    dst_proxy.reset_requests();
    (src_proxy, dst_proxy, all, source, target)
}

#[tokio::test]
async fn a_warm_copy_checks_each_referrer_source_in_a_few_requests() {
    let s = signed_image().await;
    let (src_proxy, dst_proxy, all, source, target) = copied_through_proxies(&s).await;
    let warm = all.copy(&source, &target, None).await.expect("warm");
    assert!(warm.already_complete);
    assert_eq!((warm.referrers_copied, warm.referrers_present), (0, 4));
    // Sources checked: per manifest (the index, each platform's, the SBOM) the referrers API
    // and the tag schema, and cosign's three tags for each of the image's own manifests.
    let own = s.image.manifests.len();
    let sources_checked = (own + 1) * 2 + own * 3;
    let requests = src_proxy.requests().len() + dst_proxy.requests().len();
    assert!(
        requests < 3 * sources_checked,
        "{requests} requests for {sources_checked} sources:\n{:?}\n{:?}",
        src_proxy.requests(),
        dst_proxy.requests()
    );
    // The source's tag list said which tags exist: none that does not is asked for (the image
    // has no `.sbom` tag, its platform manifests no tag-schema index and no cosign tags).
    let asked: Vec<String> = src_proxy.requests();
    assert_eq!(
        asked.iter().filter(|r| r.ends_with("/tags/list")).count(),
        1,
        "{asked:#?}"
    );
    let existing = [
        tag_schema(&s.image.digest),
        format!("{}.sig", tag_schema(&s.image.digest)),
        format!("{}.att", tag_schema(&s.image.digest)),
        tag_schema(&s.sbom.digest),
    ];
    let tags_asked: Vec<&String> = asked
        .iter()
        .filter(|r| r.contains("/manifests/sha256-"))
        .collect();
    assert!(
        tags_asked.iter().all(|r| existing
            .iter()
            .any(|t| r.ends_with(&format!("/manifests/{t}")))),
        "only tags that exist are asked for: {tags_asked:#?}"
    );
    assert_eq!(tags_asked.len(), existing.len(), "{tags_asked:#?}");
    // The registry has no referrers API (distribution 2.8): once the ping said so, no manifest
    // is looked up there.
    let api: Vec<&String> = asked.iter().filter(|r| r.contains("/referrers/")).collect();
    assert_eq!(api.len(), 1, "only the ping: {api:#?}");
    assert!(api[0].ends_with(&format!("/referrers/sha256:{}", "0".repeat(64))));
    assert!(
        !dst_proxy
            .requests()
            .iter()
            .any(|r| r.starts_with("PUT") || r.starts_with("POST")),
        "a warm copy writes nothing"
    );
}

/// Round trips of a warm copy against registries far away: every request is held back
/// `ROUND` by the proxies, so a request that needs an earlier answer arrives at least `ROUND`
/// after it, while requests sent together arrive together. The requests are grouped into rounds
/// by the gaps between their arrivals.
#[tokio::test]
async fn a_warm_copy_asks_what_it_can_at_once() {
    const ROUND: std::time::Duration = std::time::Duration::from_millis(500);
    let s = signed_image().await;
    let (src_proxy, dst_proxy, all, source, target) = copied_through_proxies(&s).await;
    src_proxy.delay_requests(ROUND);
    dst_proxy.delay_requests(ROUND);
    let warm = all.copy(&source, &target, None).await.expect("warm");
    assert_eq!((warm.referrers_copied, warm.referrers_present), (0, 4));
    let mut arrivals: Vec<_> = src_proxy
        .forwarded()
        .into_iter()
        .map(|f| (f.at, format!("source {} {}", f.method, f.path)))
        .chain(
            dst_proxy
                .forwarded()
                .into_iter()
                .map(|f| (f.at, format!("target {} {}", f.method, f.path))),
        )
        .collect();
    arrivals.sort_by_key(|(at, _)| *at);
    let mut rounds: Vec<Vec<String>> = Vec::new();
    let mut last = None;
    for (at, request) in arrivals {
        if last.is_none_or(|l| at.duration_since(l) > ROUND / 2) {
            rounds.push(Vec::new());
        }
        if let Some(round) = rounds.last_mut() {
            round.push(request);
        }
        last = Some(at);
    }
    // 1: the source's manifest, its tag list, the referrers API ping and the target's tag; 2:
    // what refers to the index and each platform manifest; 3: whether the target holds each
    // referrer found, the target's indexes, and what refers to the referrers; 4: whether it
    // holds the SBOM's signature, and the SBOM's index. One request after another, it was 9
    // rounds.
    assert_eq!(rounds.len(), 4, "{rounds:#?}");
    assert_eq!(rounds[0].len(), 4, "{rounds:#?}");
    assert!(
        rounds[0].iter().any(|r| r.ends_with("/tags/list"))
            && rounds[0].iter().any(|r| r.contains("/referrers/")),
        "{rounds:#?}"
    );
}

/// A source that will not give its whole tag list in one answer — it refuses the list, or
/// answers it in pages — still gives every referrer: each tag is then asked for.
#[tokio::test]
async fn a_source_that_will_not_list_its_tags_whole_still_gives_every_referrer() {
    let s = signed_image().await;
    let target = Pusher::new(&s.dst.host(), None);
    for (repo, refuse) in [("bk/refused", true), ("bk/paged", false)] {
        let proxy = FaultProxy::start(&s.src.host()).await.expect("proxy");
        if refuse {
            proxy.only_paths("/tags/list");
            proxy.fail_for(403, std::time::Duration::from_secs(600));
        } else {
            proxy.page_tag_lists(2);
        }
        let summary = copier(&[proxy.host(), s.dst.host()], ReferrersMode::All)
            .copy(
                &at(&proxy.host(), "team/app:1"),
                &at(&s.dst.host(), &format!("{repo}:1")),
                None,
            )
            .await
            .expect("copy");
        assert_eq!(summary.referrers_copied, 4, "{repo}: {summary:?}");
        assert_referrers_at(&target, repo, &s).await;
        // The tags that do not exist were asked for: nothing said they do not.
        let absent = format!("{}.sbom", tag_schema(&s.image.digest));
        assert!(
            proxy.requests().iter().any(|r| r.ends_with(&absent)),
            "{repo}: {:#?}",
            proxy.requests()
        );
    }
}

/// A source with the referrers API (the proxy offers it, as zot, Harbor or ECR do): an SBOM
/// that only the API lists — no tag points at it — is found, copied and listed at a target
/// without the API; the ping said there is an API, so every manifest was looked up there.
#[tokio::test]
async fn a_referrer_only_the_referrers_api_lists_is_copied() {
    let (src, dst, pusher, image) = registries_and_image(9).await;
    let sbom = push_sbom(&pusher, &image).await;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": testbed::referrers::OCI_INDEX,
        "manifests": [sbom.descriptor.clone()],
    });
    let proxy = FaultProxy::start(&src.host()).await.expect("proxy");
    proxy.serve_referrers(
        [(image.digest.clone(), index.to_string().into_bytes())]
            .into_iter()
            .collect(),
    );
    let summary = copier(&[proxy.host(), dst.host()], ReferrersMode::All)
        .copy(
            &at(&proxy.host(), "team/app:1"),
            &at(&dst.host(), "bk/app:1"),
            None,
        )
        .await
        .expect("copy");
    assert_eq!(summary.referrers_copied, 1, "{summary:?}");
    let target = Pusher::new(&dst.host(), None);
    let (_, bytes) = target
        .get_manifest("bk/app", &sbom.digest)
        .await
        .expect("get")
        .expect("the SBOM at the target");
    assert_eq!(bytes, sbom.bytes);
    let listed = listed_in_tag_schema(&target, "bk/app", &image.digest)
        .await
        .expect("index");
    assert_eq!(digests(&listed), vec![sbom.digest.clone()]);
    // The ping, then each of the image's manifests and the SBOM itself, at the API.
    let api = proxy
        .requests()
        .into_iter()
        .filter(|r| r.contains("/referrers/"))
        .count();
    assert_eq!(
        api,
        1 + image.manifests.len() + 1,
        "{:#?}",
        proxy.requests()
    );
}

#[tokio::test]
async fn a_broken_signature_fails_the_copy_and_a_broken_attestation_is_skipped() {
    let s = signed_image().await;
    let proxy = FaultProxy::start(&s.src.host()).await.expect("proxy");
    let layer_of = |artifact: &testbed::referrers::Artifact| {
        let m: Value = serde_json::from_slice(&artifact.bytes).expect("json");
        m["layers"][0]["digest"]
            .as_str()
            .expect("layer")
            .to_string()
    };
    // The attestation's payload arrives corrupt: reported and skipped, the image still copied.
    proxy.corrupt_blob(&layer_of(&s.att));
    let c = copier(&[proxy.host(), s.dst.host()], ReferrersMode::All);
    let summary = c
        .copy(
            &at(&proxy.host(), "team/app:1"),
            &at(&s.dst.host(), "bk/app:1"),
            None,
        )
        .await
        .expect("copied without the attestation");
    assert_eq!(
        summary.referrers_skipped.len(),
        1,
        "{:?}",
        summary.referrers_skipped
    );
    assert!(summary.referrers_skipped[0].starts_with(&s.att.digest));
    assert_eq!(summary.referrers_copied, 3);

    // The signature's payload arrives corrupt (to a fresh target): the copy fails, Corrupt,
    // and the image's tag is not written.
    proxy.corrupt_blob(&layer_of(&s.sig));
    let fresh = Registry::start().await.expect("fresh target");
    let err = copier(&[proxy.host(), fresh.host()], ReferrersMode::Signatures)
        .copy(
            &at(&proxy.host(), "team/app:1"),
            &at(&fresh.host(), "bk/app:1"),
            None,
        )
        .await
        .expect_err("a signature is required");
    assert_eq!(err.class(), shared::ErrorClass::Corrupt, "{err}");
    let tags = Pusher::new(&fresh.host(), None)
        .tags("bk/app")
        .await
        .expect("tags");
    assert!(!tags.contains(&"1".to_string()), "{tags:?}");
}

/// Issue 28: the referrers travel through a registry in token mode over HTTPS (a private CA,
/// push and pull tokens for the backup user): copied there and back to a plain registry, the
/// signature, attestation, SBOM and the SBOM's signature are byte-identical and found the way a
/// verifier finds them.
#[tokio::test]
async fn referrers_travel_through_an_https_token_registry_byte_identical() {
    use backup::copy::auth::DockerConfig;
    use testbed::token_auth::{TokenOptions, start_token_registry_with};
    let s = signed_image().await;
    let (tokens, issuer) = start_token_registry_with(
        testbed::Credentials {
            username: "backup".into(),
            password: "ref-Pa55".into(),
        },
        TokenOptions {
            https: true,
            anonymous_pull: false,
            ..Default::default()
        },
    )
    .await
    .expect("token registry");
    let mut credentials = DockerConfig::default();
    credentials.insert_basic(&tokens.host(), "backup", "ref-Pa55");
    let copier = Copier::new(
        RegistryClient::new(crate::publish::trusting(
            &[&tokens],
            &[s.src.host(), s.dst.host()],
            credentials,
        ))
        .expect("client"),
        4,
    )
    .with_referrers(ReferrersMode::All);
    let there = copier
        .copy(
            &at(&s.src.host(), "team/app:1"),
            &at(&tokens.host(), "bk/app:1"),
            None,
        )
        .await
        .expect("to the token registry");
    let back = copier
        .copy(
            &at(&tokens.host(), "bk/app:1"),
            &at(&s.dst.host(), "back/app:1"),
            None,
        )
        .await
        .expect("back from it");
    for summary in [&there, &back] {
        assert_eq!(summary.digest, s.image.digest);
        assert_eq!(summary.referrers_copied, 4, "sig, att, sbom, its signature");
        assert!(summary.referrers_skipped.is_empty());
    }
    let target = Pusher::new(&s.dst.host(), None);
    assert_referrers_at(&target, "back/app", &s).await;
    let listed = listed_in_tag_schema(&target, "back/app", &s.image.digest)
        .await
        .expect("index");
    assert_eq!(digests(&listed), vec![s.sbom.digest.clone()]);
    assert!(issuer.issued() > 0 && issuer.refused() == 0);
}
