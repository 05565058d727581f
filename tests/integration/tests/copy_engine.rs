//! The copy engine against real registries: byte identity, skips and mounts, auth, faults.

use std::collections::HashSet;
use std::time::Duration;

use backup::copy::auth::DockerConfig;
use backup::copy::{ClientOptions, Copier, CopyError, Progress, RegistryClient, RetryPolicy};
use shared::{ErrorClass, Reference};
use testbed::{
    Credentials, FaultProxy, Format, ImageSpec, PushedImage, Pusher, Registry, RegistryOptions,
};
use tokio::sync::watch;

fn quick_retries() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 5,
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
        max_retry_after: Duration::from_secs(5),
    }
}

fn copier(insecure: &[String], credentials: DockerConfig) -> Copier {
    let client = RegistryClient::new(ClientOptions {
        insecure: insecure.iter().cloned().collect(),
        credentials,
        retry: quick_retries(),
        ..Default::default()
    })
    .expect("client");
    Copier::new(client, 4)
}

/// A source registry holding one generated image, and an empty target registry.
async fn source_and_target(
    repo: &str,
    tag: &str,
    spec: &ImageSpec,
) -> (Registry, Registry, Pusher, PushedImage) {
    let (src, dst) = (
        Registry::start().await.expect("src"),
        Registry::start().await.expect("dst"),
    );
    let pusher = Pusher::new(&src.host(), None);
    let image = pusher.push_image(repo, tag, spec).await.expect("push");
    (src, dst, pusher, image)
}

/// `host/path` as a reference.
fn at(host: &str, path: &str) -> Reference {
    reference(&format!("{host}/{path}"))
}

fn reference(s: &str) -> Reference {
    Reference::parse_normalized(s).expect("reference")
}

/// Asserts that every manifest and blob of `image` is at `repo` of `target`, byte for byte.
async fn assert_identical(target: &Pusher, repo: &str, tag: &str, image: &PushedImage) {
    let (mt, top) = target
        .get_manifest(repo, tag)
        .await
        .expect("get")
        .expect("target tag exists");
    assert_eq!(mt, image.media_type);
    assert_eq!(
        testbed::image::sha256_digest(&top),
        image.digest,
        "top digest preserved"
    );
    for (digest, media_type, bytes) in &image.manifests {
        let (mt, got) = target
            .get_manifest(repo, digest)
            .await
            .expect("get")
            .expect("manifest at target");
        assert_eq!(&mt, media_type);
        assert_eq!(&got, bytes, "manifest {digest} byte-identical");
    }
    for blob in &image.blobs {
        let got = target
            .get_blob(repo, &blob.digest)
            .await
            .expect("get")
            .expect("blob at target");
        assert_eq!(testbed::image::sha256_digest(&got), blob.digest);
    }
}

#[tokio::test]
async fn oci_index_with_attestation_is_copied_byte_identical() {
    let (src, dst) = (
        Registry::start().await.expect("src"),
        Registry::start().await.expect("dst"),
    );
    let pusher = Pusher::new(&src.host(), None);
    let mut spec = ImageSpec::multi_arch(Format::Oci, 3, 64 * 1024, 21);
    spec.shared_base = Some(100 * 1024);
    spec.attestation = true;
    let image = pusher
        .push_image("library/app", "1.0", &spec)
        .await
        .expect("push");
    let copier = copier(&[src.host(), dst.host()], DockerConfig::default());
    let (tx, rx) = watch::channel(Progress::default());
    let summary = copier
        .copy(
            &at(&src.host(), "library/app:1.0"),
            &at(&dst.host(), "backup/library_app:1.0"),
            Some(tx),
        )
        .await
        .expect("copy");
    assert_eq!(summary.digest, image.digest);
    assert_eq!(
        summary.platforms,
        vec!["linux/amd64", "linux/arm64/v8", "unknown/unknown"]
    );
    assert_eq!(summary.blobs_total as usize, image.blobs.len());
    assert_eq!(summary.blobs_copied as usize, image.blobs.len());
    assert_eq!(summary.bytes_total, image.blob_bytes());
    assert_eq!(summary.manifests, 4);
    let final_progress = rx.borrow().clone();
    assert_eq!(final_progress.bytes_done, final_progress.bytes_total);
    assert_eq!(final_progress.blobs_copied as usize, image.blobs.len());
    let target = Pusher::new(&dst.host(), None);
    assert_identical(&target, "backup/library_app", "1.0", &image).await;

    // skopeo, an independent client, reads the same raw bytes at both ends.
    let raw = |host: String, repo: &str| {
        let out = std::process::Command::new("skopeo")
            .args([
                "inspect",
                "--raw",
                "--tls-verify=false",
                &format!("docker://{host}/{repo}:1.0"),
            ])
            .output()
            .expect("skopeo runs");
        assert!(
            out.status.success(),
            "skopeo: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    assert_eq!(
        raw(src.host(), "library/app"),
        raw(dst.host(), "backup/library_app")
    );
}

#[tokio::test]
async fn docker_manifest_list_and_single_manifest() {
    let (src, dst, pusher, list) = source_and_target(
        "d/list",
        "v1",
        &ImageSpec::multi_arch(Format::Docker, 2, 10_000, 5),
    )
    .await;
    let single = pusher
        .push_image(
            "d/single",
            "v1",
            &ImageSpec::single(Format::Docker, 2, 10_000, 6),
        )
        .await
        .expect("push");
    let copier = copier(&[src.host(), dst.host()], DockerConfig::default());
    let target = Pusher::new(&dst.host(), None);
    for (repo, image) in [("d/list", &list), ("d/single", &single)] {
        let summary = copier
            .copy(
                &at(&src.host(), &format!("{repo}:v1")),
                &reference(&format!("{}/b/{}:v1", dst.host(), repo.replace('/', "_"))),
                None,
            )
            .await
            .expect("copy");
        assert_eq!(summary.digest, image.digest);
        assert_identical(
            &target,
            &format!("b/{}", repo.replace('/', "_")),
            "v1",
            image,
        )
        .await;
    }
    // By digest, too.
    let by_digest = reference(&format!("{}/d/single@{}", src.host(), single.digest));
    let summary = copier
        .copy(&by_digest, &at(&dst.host(), "b/pinned:v1"), None)
        .await
        .expect("copy by digest");
    assert_eq!(summary.digest, single.digest);
}

#[tokio::test]
async fn warm_copies_skip_and_mount() {
    let (src, dst) = (
        Registry::start().await.expect("src"),
        Registry::start().await.expect("dst"),
    );
    let proxy = FaultProxy::start(&dst.host()).await.expect("proxy");
    let pusher = Pusher::new(&src.host(), None);
    let mut a = ImageSpec::multi_arch(Format::Oci, 2, 50_000, 31);
    a.shared_base = Some(200_000);
    a.base_seed = 99;
    let mut b = a.clone();
    b.seed = 32;
    let image_a = pusher.push_image("x/a", "1", &a).await.expect("push a");
    let image_b = pusher.push_image("x/b", "1", &b).await.expect("push b");
    let copier = copier(&[src.host(), proxy.host()], DockerConfig::default());
    let target_a = at(&proxy.host(), "bk/x_a:1");
    copier
        .copy(&at(&src.host(), "x/a:1"), &target_a, None)
        .await
        .expect("cold copy");

    // Same image again: the target is complete; no upload, about one request to the target.
    proxy.reset_requests();
    let warm = copier
        .copy(&at(&src.host(), "x/a:1"), &target_a, None)
        .await
        .expect("warm copy");
    assert!(warm.already_complete);
    assert_eq!(
        proxy.requests(),
        vec!["HEAD /v2/bk/x_a/manifests/1".to_string()]
    );

    // Same image, new tag in the same repository: every blob skipped after one HEAD.
    let again = copier
        .copy(
            &at(&src.host(), "x/a:1"),
            &at(&proxy.host(), "bk/x_a:other"),
            None,
        )
        .await
        .expect("copy");
    assert_eq!(
        (
            again.blobs_copied,
            again.blobs_mounted,
            again.blobs_skipped as usize
        ),
        (0, 0, image_a.blobs.len())
    );
    assert!(
        !proxy
            .requests()
            .iter()
            .any(|r| r.starts_with("PUT /v2/bk/x_a/blobs") || r.starts_with("PATCH"))
    );

    // Another image sharing the base layer, to another repository: the base is mounted.
    let copied = copier
        .copy(
            &at(&src.host(), "x/b:1"),
            &at(&proxy.host(), "bk/x_b:1"),
            None,
        )
        .await
        .expect("copy b");
    assert_eq!(copied.blobs_mounted, 1);
    assert_eq!(copied.blobs_copied as usize, image_b.blobs.len() - 1);
    assert!(
        proxy
            .requests()
            .iter()
            .any(|r| r == "POST /v2/bk/x_b/blobs/uploads/")
    );
    assert_identical(&Pusher::new(&dst.host(), None), "bk/x_b", "1", &image_b).await;

    // Within one registry (a fresh process, nothing remembered): every blob is mounted from the
    // source repository, nothing is uploaded.
    let fresh = self::copier(&[src.host()], DockerConfig::default());
    let local = fresh
        .copy(
            &at(&src.host(), "x/a:1"),
            &at(&src.host(), "mirror/x_a:1"),
            None,
        )
        .await
        .expect("copy within a registry");
    assert_eq!(
        (local.blobs_mounted as usize, local.blobs_copied),
        (image_a.blobs.len(), 0)
    );
    assert_identical(&pusher, "mirror/x_a", "1", &image_a).await;
}

#[tokio::test]
async fn transient_faults_are_retried_to_success() {
    let (src, dst, _, image) = source_and_target(
        "f/app",
        "1",
        &ImageSpec::multi_arch(Format::Oci, 2, 300_000, 41),
    )
    .await;
    let proxy = FaultProxy::start(&src.host()).await.expect("proxy");
    let copier = copier(&[proxy.host(), dst.host()], DockerConfig::default());
    let source = at(&proxy.host(), "f/app:1");

    // 429 with Retry-After, then a burst of 503s.
    proxy.fail_next(&[(429, Some(1)), (503, None), (503, None), (502, None)]);
    // A connection cut in the middle of a layer.
    let layer = image
        .blobs
        .iter()
        .find(|b| b.size == 300_000)
        .expect("a layer");
    proxy.cut_blob_once(&layer.digest, 100_000);
    let started = std::time::Instant::now();
    let summary = copier
        .copy(&source, &at(&dst.host(), "t/app:1"), None)
        .await
        .expect("copy succeeds after retries");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After honoured"
    );
    assert_eq!(summary.digest, image.digest);
    assert_identical(&Pusher::new(&dst.host(), None), "t/app", "1", &image).await;
}

#[tokio::test]
async fn permanent_faults_fail_with_their_class_and_tag_nothing() {
    let (src, dst, _, image) = source_and_target(
        "p/app",
        "1",
        &ImageSpec::multi_arch(Format::Docker, 2, 50_000, 51),
    )
    .await;
    let proxy = FaultProxy::start(&src.host()).await.expect("proxy");
    let copier = copier(&[proxy.host(), dst.host()], DockerConfig::default());
    let target_pusher = Pusher::new(&dst.host(), None);

    // One flipped byte in one layer: Corrupt, and no tag at the target.
    proxy.corrupt_blob(&image.blobs[1].digest);
    let err = copier
        .copy(
            &at(&proxy.host(), "p/app:1"),
            &at(&dst.host(), "t/app:1"),
            None,
        )
        .await
        .expect_err("corrupt");
    assert_eq!(err.class(), ErrorClass::Corrupt, "{err}");
    assert!(matches!(err, CopyError::Corrupt { .. }));
    assert!(
        target_pusher.tags("t/app").await.expect("tags").is_empty(),
        "nothing tagged after corruption"
    );
    assert!(
        target_pusher
            .get_blob("t/app", &image.blobs[1].digest)
            .await
            .expect("get")
            .is_none(),
        "corrupt blob never committed"
    );

    // A missing manifest.
    let err = copier
        .copy(
            &at(&proxy.host(), "p/app:nope"),
            &at(&dst.host(), "t/app:nope"),
            None,
        )
        .await
        .expect_err("missing");
    assert_eq!(err.class(), ErrorClass::NotFound, "{err}");

    // 503 past the budget, for the manifest (the tag list asked alongside it is not needed).
    proxy.only_paths("/manifests/");
    proxy.fail_next(&[(503, None); 5]);
    let err = copier
        .copy(
            &at(&proxy.host(), "p/app:1"),
            &at(&dst.host(), "t/app:2"),
            None,
        )
        .await
        .expect_err("unavailable");
    assert_eq!(err.class(), ErrorClass::Unavailable, "{err}");
    // 429 with a Retry-After longer than we wait.
    proxy.fail_next(&[(429, Some(3600))]);
    let err = copier
        .copy(
            &at(&proxy.host(), "p/app:1"),
            &at(&dst.host(), "t/app:2"),
            None,
        )
        .await
        .expect_err("rate limited");
    assert_eq!(err.class(), ErrorClass::RateLimited, "{err}");
    assert!(target_pusher.tags("t/app").await.expect("tags").is_empty());
}

fn docker_config(dir: &std::path::Path, host: &str, user: &str, password: &str) -> DockerConfig {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let path = dir.join("config.json");
    std::fs::write(
        &path,
        serde_json::json!({"auths": {format!("http://{host}"): {"auth": auth}}}).to_string(),
    )
    .expect("write");
    DockerConfig::from_file(&path).expect("config")
}

#[tokio::test]
async fn htpasswd_target_from_a_docker_config_and_wrong_credentials() {
    let src = Registry::start().await.expect("src");
    let creds = Credentials {
        username: "backup".into(),
        password: "pa55-word".into(),
    };
    let dst = Registry::start_with(RegistryOptions {
        htpasswd: Some(creds.clone()),
        ..Default::default()
    })
    .await
    .expect("dst");
    let image = Pusher::new(&src.host(), None)
        .push_image("a/b", "1", &ImageSpec::single(Format::Oci, 2, 20_000, 61))
        .await
        .expect("push");
    let dir = tempfile::tempdir().expect("tmp");
    let hosts = [src.host(), dst.host()];

    let wrong = copier(
        &hosts,
        docker_config(dir.path(), &dst.host(), "backup", "wrong-password"),
    );
    let err = wrong
        .copy(&at(&src.host(), "a/b:1"), &at(&dst.host(), "x/a_b:1"), None)
        .await
        .expect_err("refused");
    assert_eq!(err.class(), ErrorClass::Unauthorized, "{err}");
    assert!(
        !err.to_string().contains("wrong-password"),
        "no credential in errors: {err}"
    );
    let anonymous = copier(&hosts, DockerConfig::default());
    let err = anonymous
        .copy(&at(&src.host(), "a/b:1"), &at(&dst.host(), "x/a_b:1"), None)
        .await
        .expect_err("refused");
    assert!(
        err.to_string().contains("no credentials are configured"),
        "{err}"
    );

    let right = copier(
        &hosts,
        docker_config(dir.path(), &dst.host(), "backup", "pa55-word"),
    );
    let summary = right
        .copy(&at(&src.host(), "a/b:1"), &at(&dst.host(), "x/a_b:1"), None)
        .await
        .expect("copy");
    assert_eq!(summary.digest, image.digest);
    assert_identical(
        &Pusher::new(&dst.host(), Some(&creds)),
        "x/a_b",
        "1",
        &image,
    )
    .await;
}

#[tokio::test]
async fn backup_copy_command_prints_one_json_summary() {
    let (src, dst) = (
        Registry::start().await.expect("src"),
        Registry::start().await.expect("dst"),
    );
    let image = Pusher::new(&src.host(), None)
        .push_image(
            "c/app",
            "2",
            &ImageSpec::multi_arch(Format::Oci, 1, 1000, 71),
        )
        .await
        .expect("push");
    let run = |target: &str| {
        std::process::Command::new(testbed::workspace_binary("backup"))
            .args(["copy", &format!("{}/c/app:2", src.host()), target])
            .args([
                "--insecure-registry",
                &format!("{},{}", src.host(), dst.host()),
            ])
            .env_remove("DOCKER_CONFIG_FILE")
            .output()
            .expect("backup binary (built by cargo test --workspace)")
    };
    let out = run(&format!("{}/b/c_app:2", dst.host()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    assert_eq!(stdout.lines().count(), 1);
    let summary: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(summary["digest"], image.digest.as_str());
    assert_eq!(summary["blobsCopied"], image.blobs.len());
    let keys: HashSet<&str> = summary
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    for k in [
        "digest",
        "mediaType",
        "platforms",
        "blobsCopied",
        "blobsSkipped",
        "blobsMounted",
        "bytesUploaded",
        "seconds",
    ] {
        assert!(keys.contains(k), "summary has {k}");
    }
    let out = run("Not A Reference");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Invalid"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn token_auth_registry_with_cached_tokens() {
    let src = Registry::start().await.expect("src");
    let creds = Credentials {
        username: "robot".into(),
        password: "t0ken-pass".into(),
    };
    let (dst, issuer) = testbed::token_auth::start_token_registry(creds.clone())
        .await
        .expect("token registry");
    let image = Pusher::new(&src.host(), None)
        .push_image(
            "t/app",
            "1",
            &ImageSpec::multi_arch(Format::Oci, 3, 20_000, 81),
        )
        .await
        .expect("push");
    let dir = tempfile::tempdir().expect("tmp");
    let hosts = [src.host(), dst.host()];

    let good = copier(
        &hosts,
        docker_config(dir.path(), &dst.host(), "robot", "t0ken-pass"),
    );
    let summary = good
        .copy(
            &at(&src.host(), "t/app:1"),
            &at(&dst.host(), "b/t_app:1"),
            None,
        )
        .await
        .expect("copy");
    assert_eq!(summary.digest, image.digest);
    // One scope (pull,push on the target repository): one token, reused for every request.
    assert_eq!(issuer.issued(), 1, "tokens are cached per scope");
    let warm = good
        .copy(
            &at(&src.host(), "t/app:1"),
            &at(&dst.host(), "b/t_app:1"),
            None,
        )
        .await
        .expect("warm");
    assert!(warm.already_complete);

    let bad = copier(
        &hosts,
        docker_config(dir.path(), &dst.host(), "robot", "nope"),
    );
    let err = bad
        .copy(
            &at(&src.host(), "t/app:1"),
            &at(&dst.host(), "b/t_app:2"),
            None,
        )
        .await
        .expect_err("refused");
    assert_eq!(err.class(), ErrorClass::Unauthorized, "{err}");
    assert!(issuer.refused() >= 1);
}

/// A registry whose certificate a private CA signed: untrusted, one attempt and a permanent
/// class naming the fix, and no log line from inside the TLS stack; trusted with
/// `--registry-ca-file` (or `REGISTRY_CA_FILE`), the copy completes at the same digest.
#[tokio::test]
async fn a_registry_signed_by_a_private_ca_is_trusted_only_through_registry_ca_file() {
    let src = Registry::start().await.expect("src");
    // HTTPS with basic auth (htpasswd), as a small private registry is run.
    let user = Credentials {
        username: "backup".into(),
        password: "ca-Pa55".into(),
    };
    let dst = Registry::start_with(RegistryOptions {
        https: true,
        htpasswd: Some(user.clone()),
        ..Default::default()
    })
    .await
    .expect("HTTPS registry");
    let docker_config = testbed::cluster::docker_config_file(&dst.host(), &user).expect("config");
    assert!(dst.url().starts_with("https://"));
    let image = Pusher::new(&src.host(), None)
        .push_image(
            "c/app",
            "3",
            &ImageSpec::multi_arch(Format::Oci, 2, 800, 83),
        )
        .await
        .expect("push");
    let source = format!("{}/c/app:3", src.host());
    let target = format!("{}/b/c_app:3", dst.host());

    // The library: the untrusted certificate is its own error, not an outage retried.
    let err = copier(&[src.host()], DockerConfig::default())
        .copy(&reference(&source), &reference(&target), None)
        .await
        .expect_err("an unknown CA is not trusted");
    assert!(
        matches!(err, CopyError::UntrustedCertificate { .. }),
        "{err:?}"
    );
    assert_eq!(err.class(), ErrorClass::Unauthorized);

    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, dst.ca_pem().expect("its CA")).expect("write CA");
    let run = |extra: &[&str], env: Option<&std::path::Path>| {
        let mut cmd = std::process::Command::new(testbed::workspace_binary("backup"));
        cmd.args(["copy", &source, &target, "--insecure-registry", &src.host()])
            .args(extra)
            .env("DOCKER_CONFIG_FILE", docker_config.path())
            .env_remove("REGISTRY_CA_FILE")
            .env("LOG_LEVEL", "debug");
        if let Some(path) = env {
            cmd.env("REGISTRY_CA_FILE", path);
        }
        cmd.output().expect("backup binary")
    };
    let untrusted = run(&[], None);
    let stderr = String::from_utf8_lossy(&untrusted.stderr);
    assert_eq!(untrusted.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("Unauthorized"), "{stderr}");
    assert!(stderr.contains("not trusted"), "{stderr}");
    assert!(stderr.contains("--registry-ca-file"), "{stderr}");
    assert!(!stderr.contains("attempts"), "not retried: {stderr}");
    assert!(
        !stderr.contains("failed to verify TLS certificate"),
        "no log line from inside the TLS stack: {stderr}"
    );

    let trusted = run(&["--registry-ca-file", &ca.display().to_string()], None);
    assert!(
        trusted.status.success(),
        "{}",
        String::from_utf8_lossy(&trusted.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&trusted.stdout).expect("JSON");
    assert_eq!(summary["digest"], image.digest.as_str());
    assert_eq!(summary["blobsCopied"], image.blobs.len());

    // The same through the environment, the target now complete.
    let again = run(&[], Some(&ca));
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    // A wrong password over HTTPS: Unauthorized, in no log line even at debug level.
    let wrong = testbed::cluster::docker_config_file(
        &dst.host(),
        &Credentials {
            username: "backup".into(),
            password: "wr0ng-Pa55".into(),
        },
    )
    .expect("config");
    let refused = std::process::Command::new(testbed::workspace_binary("backup"))
        .args(["copy", &source, &target, "--insecure-registry", &src.host()])
        .env("DOCKER_CONFIG_FILE", wrong.path())
        .env("REGISTRY_CA_FILE", &ca)
        .env("LOG_LEVEL", "debug")
        .output()
        .expect("backup binary");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("Unauthorized"), "{stderr}");
    assert!(!stderr.contains("wr0ng-Pa55"), "{stderr}");
    assert!(!String::from_utf8_lossy(&refused.stdout).contains("wr0ng-Pa55"));

    // A file that is not a CA bundle is a usage error naming it.
    let bogus = dir.path().join("not-a-ca.pem");
    std::fs::write(&bogus, "hello").expect("write");
    let bad = run(&["--registry-ca-file", &bogus.display().to_string()], None);
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--registry-ca-file") && stderr.contains("not-a-ca.pem"),
        "{stderr}"
    );
}

/// Over HTTPS the copier speaks HTTP/1.1, though the registry offers HTTP/2 by ALPN as
/// registries on the internet do: blobs moved at once each get their own connection instead of
/// sharing one HTTP/2 connection's frames and flow control (docs/benchmarks.md, "Copies between
/// HTTPS registries": 1.34x the wall time and 1.5x the CPU over HTTP/2). Both directions go
/// through a TLS proxy that records the version of every request.
#[tokio::test]
async fn https_registries_are_spoken_to_over_http1_though_they_offer_http2() {
    let https = RegistryOptions {
        https: true,
        ..Default::default()
    };
    let (src, dst) = (
        Registry::start_with(https.clone()).await.expect("src"),
        Registry::start_with(https).await.expect("dst"),
    );
    let (src_proxy, dst_proxy) = (
        FaultProxy::start_for(&src).await.expect("src proxy"),
        FaultProxy::start_for(&dst).await.expect("dst proxy"),
    );
    let image = Pusher::https(&src.host(), None, src.ca_pem().expect("its CA"))
        .expect("pusher")
        .push_image(
            "h/app",
            "1",
            &ImageSpec::multi_arch(Format::Oci, 2, 3000, 17),
        )
        .await
        .expect("push");
    let client = RegistryClient::new(crate::publish::trusting(
        &[&src, &dst],
        &[],
        DockerConfig::default(),
    ))
    .expect("client");
    let copier = Copier::new(client, 4);
    // From the HTTPS source to the HTTPS target, both through the proxies.
    let copied = copier
        .copy(
            &at(&src_proxy.host(), "h/app:1"),
            &at(&dst_proxy.host(), "b/h_app:1"),
            None,
        )
        .await
        .expect("between the HTTPS registries");
    assert_eq!(copied.digest, image.digest);
    for proxy in [&src_proxy, &dst_proxy] {
        let forwarded = proxy.forwarded();
        assert!(
            forwarded.iter().any(|f| f.path.contains("/blobs/")),
            "blobs went through the proxy: {forwarded:?}"
        );
        let versions: HashSet<_> = forwarded.iter().map(|f| f.version).collect();
        assert_eq!(
            versions,
            HashSet::from([http::Version::HTTP_11]),
            "{forwarded:?}"
        );
    }
}

/// Registries as they are on the internet: HTTPS with a private CA, a token service on HTTPS,
/// anonymous pull tokens at the source, push tokens for the backup user at the target. The copy
/// is byte-identical; a copy to a second repository mounts every blob with one token for both
/// scopes (push on the new repository, pull on the one the blobs are in), uploading nothing.
#[tokio::test]
async fn https_token_registries_anonymous_pull_scoped_push_and_one_token_per_mount_scope() {
    use testbed::token_auth::{TokenOptions, start_token_registry_with};
    let plain = Registry::start().await.expect("plain");
    let https = TokenOptions {
        https: true,
        anonymous_pull: true,
        ..Default::default()
    };
    let publisher = Credentials {
        username: "publisher".into(),
        password: "pub-Pa55".into(),
    };
    let (public, public_issuer) = start_token_registry_with(publisher, https.clone())
        .await
        .expect("public registry");
    let backup_user = Credentials {
        username: "backup".into(),
        password: "bk-Pa55".into(),
    };
    let (backup, backup_issuer) = start_token_registry_with(
        backup_user,
        TokenOptions {
            anonymous_pull: false,
            ..https
        },
    )
    .await
    .expect("backup registry");
    let image = Pusher::new(&plain.host(), None)
        .push_image(
            "lib/app",
            "1",
            &ImageSpec::multi_arch(Format::Oci, 2, 4000, 91),
        )
        .await
        .expect("push");
    let copier_with = |credentials: DockerConfig| {
        let client = RegistryClient::new(ClientOptions {
            retry: quick_retries(),
            ..crate::publish::trusting(&[&public, &backup], &[plain.host()], credentials)
        })
        .expect("client");
        Copier::new(client, 4)
    };
    // The publisher puts the image on the public registry.
    let mut publishing = DockerConfig::default();
    publishing.insert_basic(&public.host(), "publisher", "pub-Pa55");
    copier_with(publishing)
        .copy(
            &at(&plain.host(), "lib/app:1"),
            &at(&public.host(), "lib/app:1"),
            None,
        )
        .await
        .expect("seed the public registry");

    // Anonymous at the public registry: it may pull, never push.
    let anonymous = copier_with(DockerConfig::default());
    let err = anonymous
        .copy(
            &at(&plain.host(), "lib/app:1"),
            &at(&public.host(), "lib/other:1"),
            None,
        )
        .await
        .expect_err("anonymous push");
    assert_eq!(err.class(), ErrorClass::Unauthorized, "{err}");

    let mut backing_up = DockerConfig::default();
    backing_up.insert_basic(&backup.host(), "backup", "bk-Pa55");
    let copier = copier_with(backing_up);
    let refused_before = public_issuer.refused();
    let first = copier
        .copy(
            &at(&public.host(), "lib/app:1"),
            &at(&backup.host(), "b/lib_app:1"),
            None,
        )
        .await
        .expect("anonymous pull, scoped push");
    assert_eq!(first.digest, image.digest);
    assert_eq!(first.blobs_copied as usize, image.blobs.len());
    assert_eq!(
        public_issuer.refused(),
        refused_before,
        "pulls went anonymous"
    );

    let tokens_before = backup_issuer.issued();
    let second = copier
        .copy(
            &at(&public.host(), "lib/app:1"),
            &at(&backup.host(), "b/lib_app_again:1"),
            None,
        )
        .await
        .expect("mount");
    assert_eq!(second.digest, image.digest);
    assert_eq!(second.blobs_mounted as usize, image.blobs.len());
    assert_eq!((second.blobs_copied, second.bytes_uploaded), (0, 0));
    let asked: Vec<String> = backup_issuer.scopes()[tokens_before..].to_vec();
    // Every mount rides one token holding both scopes.
    let mount = "repository:b/lib_app:pull repository:b/lib_app_again:pull,push";
    assert_eq!(
        asked.iter().filter(|s| *s == mount).count(),
        1,
        "one token for {} mounts: {asked:?}",
        image.blobs.len()
    );
    // And a token per scope set, never one per request.
    let distinct: HashSet<&String> = asked.iter().collect();
    assert_eq!(
        distinct.len(),
        asked.len(),
        "a scope asked twice: {asked:?}"
    );

    // Wrong credentials for the target: Unauthorized, and no password in the error.
    let mut wrong = DockerConfig::default();
    wrong.insert_basic(&backup.host(), "backup", "not-the-Pa55");
    let refused = backup_issuer.refused();
    let err = copier_with(wrong)
        .copy(
            &at(&public.host(), "lib/app:1"),
            &at(&backup.host(), "b/lib_app:2"),
            None,
        )
        .await
        .expect_err("wrong password");
    assert_eq!(err.class(), ErrorClass::Unauthorized, "{err}");
    assert!(!err.to_string().contains("not-the-Pa55"));
    assert_eq!(
        backup_issuer.refused(),
        refused + 1,
        "one refused token request ends the copy: a refusal is not retried"
    );
}

/// Issue 28: tokens that live 2 s and a copy that takes longer (every blob download held back
/// 2.5 s, so each upload's body starts after the token its session opened with has expired).
/// The registry really refuses an expired token (checked first); the copy completes, the
/// tokens are renewed as they expire — a bounded number, not one per request.
#[tokio::test(flavor = "multi_thread")]
async fn two_second_tokens_are_renewed_during_a_longer_copy_a_bounded_number_of_times() {
    use testbed::token_auth::{TokenOptions, start_token_registry_with};
    let lifetime = Duration::from_secs(2);
    let plain = Registry::start().await.expect("source");
    let slow = FaultProxy::start(&plain.host()).await.expect("proxy");
    slow.delay_blob_downloads(Duration::from_millis(2_500));
    let (backup, issuer) = start_token_registry_with(
        Credentials {
            username: "backup".into(),
            password: "bk-Pa55".into(),
        },
        TokenOptions {
            https: true,
            anonymous_pull: false,
            lifetime,
        },
    )
    .await
    .expect("token registry");
    let ca =
        reqwest::Certificate::from_pem(backup.ca_pem().expect("HTTPS").as_bytes()).expect("CA");

    // The registry refuses a token once its 2 s have passed (not after a leeway).
    let http = reqwest::Client::builder()
        .add_root_certificate(ca.clone())
        .no_proxy()
        .build()
        .expect("http");
    let base = format!("https://{}/v2/", backup.host());
    let challenge = http.get(&base).send().await.expect("challenge");
    assert_eq!(challenge.status(), 401);
    let header = challenge
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .expect("challenge header")
        .to_string();
    let param = |name: &str| {
        header
            .split(&format!("{name}=\""))
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("challenge parameter")
            .to_string()
    };
    let answer: serde_json::Value = http
        .get(param("realm"))
        .query(&[
            ("service", param("service")),
            ("scope", "repository:probe:pull".into()),
        ])
        .basic_auth("backup", Some("bk-Pa55"))
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("token JSON");
    assert_eq!(answer["expires_in"], 2);
    let token = answer["token"].as_str().expect("token").to_string();
    let with_token = || http.get(&base).bearer_auth(&token).send();
    assert_eq!(with_token().await.expect("fresh").status(), 200);
    tokio::time::sleep(lifetime + Duration::from_millis(1_200)).await;
    assert_eq!(
        with_token().await.expect("expired").status(),
        401,
        "the registry still took a token past its lifetime: the test would prove nothing"
    );

    let image = Pusher::new(&plain.host(), None)
        .push_image(
            "lib/slow",
            "1",
            &ImageSpec::multi_arch(Format::Oci, 2, 3000, 93),
        )
        .await
        .expect("push");
    let mut credentials = DockerConfig::default();
    credentials.insert_basic(&backup.host(), "backup", "bk-Pa55");
    let copier = Copier::new(
        RegistryClient::new(ClientOptions {
            retry: quick_retries(),
            ..crate::publish::trusting(&[&backup], &[slow.host()], credentials)
        })
        .expect("client"),
        4,
    );
    let before = issuer.issued();
    let started = std::time::Instant::now();
    let copied = copier
        .copy(
            &at(&slow.host(), "lib/slow:1"),
            &at(&backup.host(), "b/lib_slow:1"),
            None,
        )
        .await
        .expect("the copy outlives its tokens and completes");
    let elapsed = started.elapsed();
    assert_eq!(copied.digest, image.digest);
    assert_eq!(copied.blobs_copied as usize, image.blobs.len());
    assert!(
        elapsed > 2 * lifetime,
        "the copy took {elapsed:?}: too short to outlive a token"
    );
    let asked: Vec<String> = issuer.scopes()[before..].to_vec();
    let scope_sets: HashSet<&String> = asked.iter().collect();
    assert!(
        asked.len() > scope_sets.len(),
        "no token was renewed in a {elapsed:?} copy: {asked:?}"
    );
    // A token is reused for 1.5 s of its 2 s: per scope set at most one per 1.5 s of copy (and
    // the first), never one per request (each blob alone takes three: HEAD, POST, PUT).
    let bound = scope_sets.len() * (elapsed.as_secs_f64() / 1.5).ceil() as usize + scope_sets.len();
    eprintln!(
        "{} tokens for {} scope sets in a {elapsed:?} copy of {} blobs",
        asked.len(),
        scope_sets.len(),
        image.blobs.len()
    );
    assert!(
        asked.len() <= bound,
        "{} tokens in {elapsed:?} for {} scope sets (bound {bound}): {asked:?}",
        asked.len(),
        scope_sets.len()
    );
    assert!(
        asked.len() < 3 * image.blobs.len(),
        "a token per request: {asked:?}"
    );
    assert_eq!(issuer.refused(), 0);
}

/// A registry that refuses an upload's token when the body starts (it expired or was revoked
/// after the session opened): the token is forgotten and the blob retried in a new session,
/// not failed as a protocol error.
#[tokio::test]
async fn a_token_refused_when_an_upload_body_starts_is_renewed_and_the_blob_retried() {
    let (src, dst, _, image) = source_and_target(
        "t/app",
        "1",
        &ImageSpec::multi_arch(Format::Oci, 1, 2000, 94),
    )
    .await;
    let proxy = FaultProxy::start(&dst.host()).await.expect("proxy");
    proxy.only_paths("/blobs/uploads/");
    proxy.only_method("PUT");
    proxy.fail_next(&[(401, None)]);
    let copier = copier(&[src.host(), proxy.host()], DockerConfig::default());
    let copied = copier
        .copy(
            &at(&src.host(), "t/app:1"),
            &at(&proxy.host(), "t/app:1"),
            None,
        )
        .await
        .expect("the refused upload is retried");
    assert_eq!(copied.digest, image.digest);
    assert_eq!(copied.blobs_copied as usize, image.blobs.len());
    let uploads = proxy
        .requests()
        .iter()
        .filter(|r| r.starts_with("POST ") && r.contains("/blobs/uploads/"))
        .count();
    assert_eq!(
        uploads,
        image.blobs.len() + 1,
        "one blob's session opened again after the refusal"
    );
    assert_identical(&Pusher::new(&dst.host(), None), "t/app", "1", &image).await;
}
