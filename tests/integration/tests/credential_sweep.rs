//! Secrets never reach logs, Events, CRs or NATS messages: an authenticated run end to end —
//! a private source (htpasswd, basic auth) read with a workload's pull secret, a private backup
//! registry in token mode over HTTPS written with the backup function's own credentials and
//! read by the rollout's docker config (every bearer token its token service issued is a
//! secret too), NATS with a user and password in its URL, the Kubernetes API with bearer tokens
//! — with every function logging at `debug` for every crate. Then every log line, Event,
//! ImageBackup, NATS message and metrics page is searched for each secret, also
//! base64-encoded.

use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;
use testbed::cluster::Cluster;
use testbed::token_auth::{TokenOptions, start_token_registry_with};
use testbed::{
    ApiServer, Credentials, Format, ImageSpec, NatsServer, Pusher, Registry, RegistryOptions,
};

const SOURCE_PASSWORD: &str = "src-Pa55-7f3a91";
const TARGET_PASSWORD: &str = "dst-Pa55-c01d42";
const NATS_PASSWORD: &str = "nats-Pa55-9b8e77";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authenticated_run_at_debug_level_leaves_no_credential_anywhere() {
    let private = |user: &str, password: &str| RegistryOptions {
        htpasswd: Some(Credentials {
            username: user.into(),
            password: password.into(),
        }),
        ..Default::default()
    };
    let api = ApiServer::start().await.expect("api");
    api.install_imagebackup_crd().await.expect("crd");
    let nats = NatsServer::start_with_user("bus", NATS_PASSWORD)
        .await
        .expect("nats");
    let js = async_nats::jetstream::new(
        shared::nats::connect(&nats.url_with_credentials(), "sweep")
            .await
            .expect("connect"),
    );
    shared::nats::ensure_stream(&js).await.expect("stream");
    let kubeconfig = tempfile::NamedTempFile::new().expect("tmp");
    api.write_kubeconfig(kubeconfig.path()).expect("kubeconfig");
    let (backup, issuer) = start_token_registry_with(
        Credentials {
            username: "pusher".into(),
            password: TARGET_PASSWORD.into(),
        },
        TokenOptions {
            https: true,
            anonymous_pull: false,
            ..Default::default()
        },
    )
    .await
    .expect("backup");
    let ca_file = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(ca_file.path(), backup.ca_pem().expect("HTTPS")).expect("CA file");
    let c = Cluster {
        client: api.client().expect("client"),
        api,
        nats: testbed::Nats::Single(nats),
        js,
        kubeconfig,
        source: Registry::start_with(private("puller", SOURCE_PASSWORD))
            .await
            .expect("source"),
        backup,
        docker_config: None,
        token_issuers: Vec::new(),
        registry_ca_file: Some(ca_file),
    };
    let pushed = Pusher::new(&c.source.host(), c.source.credentials())
        .push_image(
            "private/app",
            "2.0",
            &ImageSpec::multi_arch(Format::Oci, 2, 8 * 1024, 77),
        )
        .await
        .expect("push");

    // The workload and its pull secret.
    c.namespace("shop").await.expect("namespace");
    let source_auth =
        base64::engine::general_purpose::STANDARD.encode(format!("puller:{SOURCE_PASSWORD}"));
    c.pull_secret(
        "shop",
        "regcred",
        &c.source.host(),
        "puller",
        SOURCE_PASSWORD,
    )
    .await
    .expect("secret");
    let deployments: Api<Deployment> = Api::namespaced(c.client.clone(), "shop");
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "app"},
        "spec": {"selector": {"matchLabels": {"app": "app"}},
                 "template": {"metadata": {"labels": {"app": "app"}},
                              "spec": {"imagePullSecrets": [{"name": "regcred"}],
                                       "containers": [{"name": "app", "image": format!("{}/private/app:2.0", c.source.host())}]}}}
    }))
    .expect("deployment");
    deployments
        .create(&PostParams::default(), &d)
        .await
        .expect("create");

    // Credentials of the functions: API tokens, the target password file, the rollout's
    // docker config for the backup registry, NATS user and password in the URL.
    let mut tokens = Vec::new();
    let mut kubeconfigs = Vec::new();
    for function in ["watcher", "backup", "rollout"] {
        let (token, file) = c
            .service_account_kubeconfig("image-backup", function)
            .expect("kubeconfig");
        tokens.push(token);
        kubeconfigs.push(file);
    }
    // The admin binds every function to cluster-admin: this test is about secrets, not RBAC.
    let admin = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(admin.path(), c.api.kubeconfig()).expect("admin kubeconfig");
    let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "functions-admin"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "Group", "name": "system:serviceaccounts:image-backup"}]});
    let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "cluster-admin"},
        "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]});
    let manifests = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(manifests.path(), format!("{}\n---\n{}\n", role, binding)).expect("write");
    let out = std::process::Command::new("kubectl")
        .args(["apply", "-f"])
        .arg(manifests.path())
        .env("KUBECONFIG", admin.path())
        .env(
            "KUBECACHEDIR",
            testbed::process::kubectl_cache_dir(admin.path()),
        )
        .output()
        .expect("kubectl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.api.require_authentication(true);

    let password_file = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(password_file.path(), TARGET_PASSWORD).expect("password file");
    let target_auth =
        base64::engine::general_purpose::STANDARD.encode(format!("pusher:{TARGET_PASSWORD}"));
    let docker_config = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(
        docker_config.path(),
        json!({"auths": {c.backup.host(): {"auth": target_auth}}}).to_string(),
    )
    .expect("docker config");
    let common = |i: usize| {
        vec![
            ("KUBECONFIG", kubeconfigs[i].path().display().to_string()),
            ("NATS_URL", c.nats.url_with_credentials()),
            ("LOG_LEVEL", "debug".to_string()),
        ]
    };
    let watcher = c
        .spawn("watcher", &["run"], &common(0))
        .await
        .expect("watcher");
    let mut backup_env = common(1);
    backup_env.push(("TARGET_USERNAME", "pusher".into()));
    backup_env.push((
        "TARGET_PASSWORD_FILE",
        password_file.path().display().to_string(),
    ));
    let backup = c
        .spawn("backup", &["run"], &backup_env)
        .await
        .expect("backup");
    let mut rollout_env = common(2);
    rollout_env.push((
        "DOCKER_CONFIG_FILE",
        docker_config.path().display().to_string(),
    ));
    // The Pods pull the backup with a pull secret the rollout copies into their namespace.
    c.namespace("image-backup").await.expect("namespace");
    c.pull_secret(
        "image-backup",
        "backup-pull",
        &c.backup.host(),
        "pusher",
        TARGET_PASSWORD,
    )
    .await
    .expect("pull secret");
    rollout_env.push(("BACKUP_PULL_SECRET", "backup-pull".into()));
    rollout_env.push(("POD_NAMESPACE", "image-backup".into()));
    let rollout = c
        .spawn("rollout", &["run"], &rollout_env)
        .await
        .expect("rollout");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let image = c
            .image_of::<Deployment>("shop", "app")
            .await
            .unwrap_or_default();
        if image.ends_with(&pushed.digest) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never rolled out:\n{}\n---\n{}\n---\n{}",
            watcher.log(),
            backup.log(),
            rollout.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Everything that was written, as text.
    let mut haystacks: Vec<(String, String)> = Vec::new();
    for (name, p) in [
        ("watcher", &watcher),
        ("backup", &backup),
        ("rollout", &rollout),
    ] {
        let log = p.log();
        assert!(
            log.contains("DEBUG") || log.contains("\"level\":\"DEBUG\""),
            "{name} logged at debug"
        );
        haystacks.push((format!("{name} log"), log));
        let (code, metrics) = p.admin_get("/metrics").await.unwrap_or_default();
        assert_eq!(code, 200, "{name} serves metrics");
        haystacks.push((format!("{name} metrics"), metrics));
    }
    let ibs = Api::<shared::crd::ImageBackup>::all(c.client.clone())
        .list(&Default::default())
        .await
        .expect("imagebackups");
    assert!(!ibs.items.is_empty());
    haystacks.push((
        "ImageBackups".into(),
        serde_json::to_string(&ibs.items).expect("json"),
    ));
    let events = Api::<k8s_openapi::api::core::v1::Event>::all(c.client.clone())
        .list(&Default::default())
        .await
        .expect("events");
    assert!(!events.items.is_empty(), "the functions recorded Events");
    haystacks.push((
        "Events".into(),
        serde_json::to_string(&events.items).expect("json"),
    ));
    let mut stream =
        c.js.get_stream(shared::nats::STREAM_NAME)
            .await
            .expect("stream");
    let last = stream.info().await.expect("info").state.last_sequence;
    assert!(last > 0);
    for seq in 1..=last {
        if let Ok(m) = stream.get_raw_message(seq).await {
            haystacks.push((
                format!("NATS message {seq}"),
                format!("{:?} {}", m.headers, String::from_utf8_lossy(&m.payload)),
            ));
        }
    }

    // The sweep would see a credential: what surrounds one is there (the pull secret's name,
    // the users, the digest the rollout pinned).
    let all: String = haystacks.iter().map(|(_, t)| t.as_str()).collect();
    for expected in ["regcred", &pushed.digest, "Completed"] {
        assert!(
            all.contains(expected),
            "the sweep reads what was written ({expected})"
        );
    }
    let mut secrets: Vec<String> = vec![
        SOURCE_PASSWORD.into(),
        TARGET_PASSWORD.into(),
        NATS_PASSWORD.into(),
        source_auth,
        target_auth,
    ];
    secrets.extend(tokens);
    // The registry's bearer tokens, whole and their signatures alone (a log that cut a token
    // short would still leak it).
    let bearer = issuer.tokens();
    assert!(
        !bearer.is_empty(),
        "the backup registry was reached with tokens"
    );
    for token in bearer {
        let signature = token.rsplit('.').next().unwrap_or_default().to_string();
        secrets.extend([token, signature]);
    }
    for (what, text) in &haystacks {
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "a credential ({}…) reached the {what}",
                &secret[..4]
            );
        }
    }
}
