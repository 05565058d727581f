//! The test bed's registries and image generator: images pushed and read back by digest.

use testbed::{Credentials, Format, ImageSpec, Pusher, Registry, RegistryOptions};

#[tokio::test]
async fn multi_arch_image_is_pushed_and_read_back_by_digest() {
    let registry = Registry::start().await.expect("registry");
    let pusher = Pusher::new(&registry.host(), None);
    let mut spec = ImageSpec::multi_arch(Format::Oci, 2, 4096, 11);
    spec.shared_base = Some(8192);
    spec.attestation = true;
    let image = pusher
        .push_image("demo/app", "v1", &spec)
        .await
        .expect("push");
    assert_eq!(image.media_type, "application/vnd.oci.image.index.v1+json");
    // 1 base + 2x2 layers + 2 configs + attestation statement and config.
    assert_eq!(image.blobs.len(), 9);
    assert_eq!(image.manifests.len(), 4);
    let (mt, bytes) = pusher
        .get_manifest("demo/app", &image.digest)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(mt, image.media_type);
    assert_eq!(testbed::image::sha256_digest(&bytes), image.digest);
    for (digest, _, bytes) in &image.manifests {
        let (_, got) = pusher
            .get_manifest("demo/app", digest)
            .await
            .expect("get")
            .expect("child exists");
        assert_eq!(&got, bytes);
    }
    for blob in &image.blobs {
        let got = pusher
            .get_blob("demo/app", &blob.digest)
            .await
            .expect("get")
            .expect("blob exists");
        assert_eq!(testbed::image::sha256_digest(&got), blob.digest);
        assert_eq!(got.len() as u64, blob.size);
    }
    assert_eq!(
        pusher.tags("demo/app").await.expect("tags"),
        vec!["v1".to_string()]
    );
}

#[tokio::test]
async fn docker_manifest_list_and_single_manifests() {
    let registry = Registry::start().await.expect("registry");
    let pusher = Pusher::new(&registry.host(), None);
    let list = pusher
        .push_image(
            "d/list",
            "1",
            &ImageSpec::multi_arch(Format::Docker, 1, 100, 3),
        )
        .await
        .expect("push");
    assert_eq!(
        list.media_type,
        "application/vnd.docker.distribution.manifest.list.v2+json"
    );
    let single = pusher
        .push_image(
            "d/single",
            "1",
            &ImageSpec::single(Format::Docker, 3, 100, 4),
        )
        .await
        .expect("push");
    assert_eq!(
        single.media_type,
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(single.blobs.len(), 4);
    assert!(
        pusher
            .get_manifest("d/single", "nope")
            .await
            .expect("get")
            .is_none()
    );
}

#[tokio::test]
async fn htpasswd_registry_refuses_anonymous_and_accepts_its_user() {
    let creds = Credentials {
        username: "alice".into(),
        password: "s3cret".into(),
    };
    let registry = Registry::start_with(RegistryOptions {
        htpasswd: Some(creds.clone()),
        ..Default::default()
    })
    .await
    .expect("registry");
    let anonymous = Pusher::new(&registry.host(), None);
    assert!(
        anonymous
            .push_image("a/b", "1", &ImageSpec::single(Format::Oci, 1, 10, 1))
            .await
            .is_err()
    );
    shared::tls::ensure_crypto_provider();
    let status = reqwest::get(format!("{}/v2/", registry.url()))
        .await
        .expect("get")
        .status();
    assert_eq!(status, reqwest::StatusCode::UNAUTHORIZED);
    let authed = Pusher::new(&registry.host(), Some(&creds));
    let image = authed
        .push_image("a/b", "1", &ImageSpec::single(Format::Oci, 1, 10, 1))
        .await
        .expect("push with credentials");
    assert!(
        authed
            .get_manifest("a/b", &image.digest)
            .await
            .expect("get")
            .is_some()
    );
    assert!(
        !format!("{creds:?}").contains("s3cret"),
        "Debug must redact the password"
    );
}
