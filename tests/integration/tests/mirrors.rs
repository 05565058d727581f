//! `--registry-mirror HOST=MIRROR` against real registries, through `backup copy` as a user runs
//! it: a mirror serving Docker Hub's names (Docker Hub itself is out of reach here, so a copy
//! that succeeds read from the mirror), a mirror without the image (fall back to HOST), and
//! `--mirror-only` (no fall-back).

use std::process::Output;

use testbed::{Format, ImageSpec, Pusher, Registry};

fn backup_copy(args: &[String]) -> Output {
    std::process::Command::new(testbed::workspace_binary("backup"))
        .arg("copy")
        .args(args)
        .arg("--quiet")
        .env_remove("DOCKER_CONFIG_FILE")
        .env_remove("REGISTRY_MIRRORS")
        .env_remove("MIRROR_ONLY")
        .output()
        .expect("the backup binary")
}

fn summary(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON line")
}

#[tokio::test]
async fn a_mirror_serves_docker_hub_names_and_the_backup_keeps_them() {
    let (mirror, backup) = (
        Registry::start().await.expect("mirror"),
        Registry::start().await.expect("backup"),
    );
    // What a pull-through cache of Docker Hub holds: `library/nginx` for `nginx`.
    let image = Pusher::new(&mirror.host(), None)
        .push_image(
            "library/nginx",
            "1.14.0",
            &ImageSpec::multi_arch(Format::Docker, 2, 2000, 11),
        )
        .await
        .expect("push");
    let target = format!("{}/acme/library_nginx:1.14.0", backup.host());
    let out = backup_copy(&[
        "nginx:1.14.0".into(),
        target.clone(),
        "--registry-mirror".into(),
        format!("docker.io=http://{}", mirror.host()),
        "--insecure-registry".into(),
        backup.host(),
    ]);
    let s = summary(&out);
    assert_eq!(s["digest"], image.digest.as_str());
    let (_, top) = Pusher::new(&backup.host(), None)
        .get_manifest("acme/library_nginx", "1.14.0")
        .await
        .expect("get")
        .expect("the backup is tagged");
    assert_eq!(testbed::image::sha256_digest(&top), image.digest);
    Pusher::new(&backup.host(), None)
        .check_identical("acme/library_nginx", &image)
        .await
        .expect("byte-identical at the backup");
}

#[tokio::test]
async fn a_mirror_without_the_image_falls_back_unless_mirror_only() {
    let (host, mirror, backup) = (
        Registry::start().await.expect("host"),
        Registry::start().await.expect("mirror"),
        Registry::start().await.expect("backup"),
    );
    let image = Pusher::new(&host.host(), None)
        .push_image(
            "c/app",
            "2",
            &ImageSpec::multi_arch(Format::Oci, 1, 1000, 12),
        )
        .await
        .expect("push");
    let args = |target: &str| -> Vec<String> {
        vec![
            format!("{}/c/app:2", host.host()),
            format!("{}/bk/{target}", backup.host()),
            "--registry-mirror".into(),
            format!("{}={}", host.host(), mirror.host()),
            "--insecure-registry".into(),
            format!("{},{},{}", host.host(), mirror.host(), backup.host()),
        ]
    };
    // The mirror answers 404 for everything: every read falls back to the host.
    let s = summary(&backup_copy(&args("fallback:2")));
    assert_eq!(s["digest"], image.digest.as_str());

    let mut only = args("only:2");
    only.push("--mirror-only".into());
    let out = backup_copy(&only);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("NotFound"), "{stderr}");
    assert!(
        stderr.contains(&mirror.host()),
        "names the mirror: {stderr}"
    );
    assert!(
        Pusher::new(&backup.host(), None)
            .get_manifest("bk/only", "2")
            .await
            .expect("get")
            .is_none(),
        "nothing tagged when the mirror is the only way"
    );

    // A mirror of the backup registry itself is refused before anything is copied.
    let mut mirrored_backup = args("refused:2");
    mirrored_backup.extend([
        "--registry-mirror".into(),
        format!("{}={}", backup.host(), mirror.host()),
    ]);
    let out = backup_copy(&mirrored_backup);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("where backups go"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
