//! The plain overlays' NATS configuration (`deploy/overlays/plain/nats.yaml`, rendered by
//! kustomize; the single-server variant) on a real nats-server: every function works under its own user with exactly its
//! permissions, the watcher's user cannot publish a completion, and an anonymous client cannot
//! connect at all.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use testbed::NatsServer;
use testbed::cluster::Cluster;

/// The bound on anything the test waits for (a hang, not a timing goal).
const LIMIT: Duration = Duration::from_secs(90);

/// The `nats.conf` of the single-server plain overlay (`deploy/overlays/plain-single`, the
/// 3-node overlay's users and permissions in its `auth.conf`), as kustomize renders it, with
/// `auth.conf` put where it is included.
fn overlay_nats_conf() -> String {
    let root = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/overlays/plain-single"
    );
    let rendered = testbed::process::kustomize(std::path::Path::new(root)).expect("rendered");
    for doc in rendered.split("\n---\n") {
        let value: serde_yaml::Value = serde_yaml::from_str(doc).expect("yaml");
        if value["kind"] == "ConfigMap" && value["metadata"]["name"] == "nats" {
            let key = |k: &str| value["data"][k].as_str().expect(k).to_string();
            let (conf, auth) = (key("nats.conf"), key("auth.conf"));
            assert!(conf.contains("include ./auth.conf"), "{conf}");
            return conf.replace("include ./auth.conf", &auth);
        }
    }
    panic!("no nats ConfigMap in the plain overlay");
}

#[tokio::test]
async fn each_function_works_under_its_own_nats_user_and_nothing_more() {
    let mut conf = overlay_nats_conf();
    // The test bed's own reader of the stream: a user the manifests do not have.
    let marker = "users: [\n";
    assert!(conf.contains(marker), "{conf}");
    conf = conf.replacen(
        marker,
        &format!("{marker}    {{user: testbed, password: testbed}}\n"),
        1,
    );
    let passwords = [
        ("WATCHER_PASSWORD", "w-0a1b2c"),
        ("BACKUP_PASSWORD", "b-3d4e5f"),
        ("ROLLOUT_PASSWORD", "r-6a7b8c"),
    ];
    let env = [passwords.as_slice(), &[("POD_NAME", "nats-0")]].concat();
    let nats = NatsServer::start_with_config(&conf, &env)
        .await
        .expect("nats-server with the overlay's configuration");
    let admin = format!(
        "nats://testbed:testbed@127.0.0.1:{}",
        nats.url().rsplit(':').next().unwrap()
    );
    let c = Cluster::start_with_nats(nats, &admin)
        .await
        .expect("cluster");

    // Anonymous: refused at connect.
    let anonymous = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(c.nats.url())
        .await;
    assert!(anonymous.is_err(), "an anonymous client connected");

    // Each function with its user and its password file, as the overlay's patches give them.
    let dir = tempfile::tempdir().expect("tmp");
    let user = |function: &'static str, password: &str| {
        let file = dir.path().join(function);
        std::fs::write(&file, format!("{password}\n")).expect("password file");
        vec![
            ("NATS_USER", function.to_string()),
            ("NATS_PASSWORD_FILE", file.display().to_string()),
        ]
    };
    let src = c.source.host();
    let image = c.push_small("team/app", "1", 5).await.expect("push");
    c.deployment("shop", "web", &format!("{src}/team/app:1"))
        .await
        .expect("deployment");
    let watcher = c
        .spawn("watcher", &["run"], &user("watcher", passwords[0].1))
        .await
        .expect("watcher");
    let backup = c
        .spawn("backup", &["run"], &user("backup", passwords[1].1))
        .await
        .expect("backup");
    let rollout = c
        .spawn("rollout", &["run"], &user("rollout", passwords[2].1))
        .await
        .expect("rollout");
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let now = c
            .image_of::<Deployment>("shop", "web")
            .await
            .unwrap_or_default();
        if now.ends_with(&image.digest) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never rolled out (image {now}):\n{}\n---\n{}\n---\n{}\n---\nnats:\n{}",
            watcher.log(),
            backup.log(),
            rollout.log(),
            c.nats.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Everything they did, they were allowed to do.
    let violations: Vec<String> = c
        .nats
        .log()
        .lines()
        .filter(|l| l.contains("Violation"))
        .map(str::to_string)
        .collect();
    assert!(violations.is_empty(), "{violations:?}");

    // The watcher's user cannot publish a completion: refused by the server, not stored.
    let port = c.nats.url().rsplit(':').next().unwrap().to_string();
    let watcher_client =
        async_nats::ConnectOptions::with_user_and_password("watcher".into(), passwords[0].1.into())
            .connect(format!("nats://127.0.0.1:{port}"))
            .await
            .expect("the watcher's user connects");
    let js = async_nats::jetstream::new(watcher_client);
    let forged = tokio::time::timeout(Duration::from_secs(15), async {
        js.publish(
            "imagebackup.image.completed.ib-0000000000000000",
            "{}".into(),
        )
        .await?
        .await
    })
    .await;
    assert!(
        !matches!(forged, Ok(Ok(_))),
        "the watcher's user stored an image.completed"
    );
    let deadline = tokio::time::Instant::now() + LIMIT;
    // nats-server 2.10 words it "Permissions Violation for Publish to ...", 2.15 "Publish
    // Violation - Subject ...".
    let refused = |log: &str| {
        log.lines().any(|l| {
            l.contains("Violation")
                && l.contains("Publish")
                && l.contains("imagebackup.image.completed.ib-0000000000000000")
        })
    };
    while !refused(&c.nats.log()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no violation logged:\n{}",
            c.nats.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stored = c.events().await.expect("stream");
    assert!(
        !stored
            .iter()
            .any(|(subject, _)| subject.ends_with("ib-0000000000000000")),
        "{stored:?}"
    );
}
