//! `backup run` / `backup serve` as processes against the test API server, a real nats-server
//! and real registries: one ImageBackup per image, one copy at a time, every state visible in
//! the CR, in events and in `kubectl get imagebackups`.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::Api;
use kube::api::PostParams;
use serde_json::json;
use shared::crd::{ImageBackup, Phase};
use shared::events::{Payload, WorkloadChanged, WorkloadImage, WorkloadKind, WorkloadRef};
use testbed::function::FunctionProcess;
use testbed::{
    ApiServer, Credentials, FaultProxy, Format, ImageSpec, NatsServer, PushedImage, Pusher,
    Registry, RegistryOptions,
};

/// The bound on anything the tests wait for (a hang, not a timing goal).
const LIMIT: Duration = Duration::from_secs(60);

struct Bed {
    _api: ApiServer,
    _nats: NatsServer,
    nats_url: String,
    client: kube::Client,
    js: jetstream::Context,
    kubeconfig: tempfile::NamedTempFile,
    src: Registry,
    dst: Registry,
    /// In front of `dst`: counts what reaches the backup registry.
    proxy: FaultProxy,
    pusher: Pusher,
}

async fn bed() -> Bed {
    let api = ApiServer::start().await.expect("api server");
    api.install_imagebackup_crd().await.expect("crd");
    let nats = NatsServer::start().await.expect("nats");
    let client = api.client().expect("client");
    let kubeconfig = tempfile::NamedTempFile::new().expect("tmp");
    api.write_kubeconfig(kubeconfig.path()).expect("kubeconfig");
    let js = jetstream::new(
        shared::nats::connect(&nats.url(), "test")
            .await
            .expect("nats"),
    );
    shared::nats::ensure_stream(&js).await.expect("stream");
    let src = Registry::start().await.expect("src");
    let dst = Registry::start().await.expect("dst");
    let proxy = FaultProxy::start(&dst.host()).await.expect("proxy");
    let pusher = Pusher::new(&src.host(), None);
    Bed {
        nats_url: nats.url(),
        _api: api,
        _nats: nats,
        client,
        js,
        kubeconfig,
        src,
        dst,
        proxy,
        pusher,
    }
}

impl Bed {
    fn backup(&self, mode: &[&str], env: &[(&str, String)]) -> FunctionProcess {
        let mut all = vec![
            ("KUBECONFIG", self.kubeconfig.path().display().to_string()),
            ("NATS_URL", self.nats_url.clone()),
            (
                "INSECURE_REGISTRIES",
                format!(
                    "{},{},{}",
                    self.src.host(),
                    self.dst.host(),
                    self.proxy.host()
                ),
            ),
            ("BACKUP_REGISTRY", self.backup_registry()),
            ("ACK_WAIT_SECONDS", "5".into()),
            ("CLAIM_LEASE_SECONDS", "6".into()),
            (
                "LOG_LEVEL",
                "debug,kube=warn,hyper=warn,reqwest=warn,async_nats=warn,tower=warn".into(),
            ),
        ];
        all.extend(env.iter().cloned());
        let args: Vec<String> = mode.iter().map(|s| s.to_string()).collect();
        FunctionProcess::spawn("backup", &args, &all).expect("spawn backup")
    }

    async fn push(&self, repo: &str, seed: u64, layer_size: usize) -> PushedImage {
        self.pusher
            .push_image(
                repo,
                "1",
                &ImageSpec::multi_arch(Format::Oci, 2, layer_size, seed),
            )
            .await
            .expect("push")
    }

    /// The backup registry the functions get: under the proxy, which counts what reaches it.
    fn backup_registry(&self) -> String {
        format!("{}/backup", self.proxy.host())
    }

    /// Where `host/repo:1` is backed up (its repository path at the backup registry), by the
    /// naming the backup applies.
    fn target_path(&self, host: &str, repo: &str) -> String {
        let naming = shared::NamingPolicy::flat(self.backup_registry().parse().unwrap());
        let source = shared::Reference::parse_normalized(&format!("{host}/{repo}:1")).unwrap();
        naming.target(&source).unwrap().path().to_string()
    }

    /// A workload.changed for `images` (source repo in `src`), as the watcher sends it; the
    /// Deployment it names is created (or updated) first, since the backup checks every event
    /// against the cluster.
    async fn event(&self, workload: &str, repos: &[&str], secrets: &[&str]) -> Payload {
        self.event_from(&self.src.host(), workload, repos, secrets)
            .await
    }

    async fn event_from(
        &self,
        host: &str,
        workload: &str,
        repos: &[&str],
        secrets: &[&str],
    ) -> Payload {
        let images: Vec<String> = repos.iter().map(|r| format!("{host}/{r}:1")).collect();
        self.deployment(workload, &images, secrets).await;
        let naming = shared::NamingPolicy::flat(self.backup_registry().parse().unwrap());
        Payload::WorkloadChanged(WorkloadChanged {
            workload: WorkloadRef {
                kind: WorkloadKind::Deployment,
                namespace: "web".into(),
                name: workload.into(),
            },
            uid: format!("uid-{workload}"),
            generation: 1,
            images: repos
                .iter()
                .enumerate()
                .map(|(i, repo)| WorkloadImage {
                    container: format!("c{i}"),
                    init: false,
                    source: format!("{host}/{repo}:1"),
                    target: naming
                        .target(
                            &shared::Reference::parse_normalized(&format!("{host}/{repo}:1"))
                                .unwrap(),
                        )
                        .unwrap()
                        .to_string(),
                })
                .collect(),
            pull_secrets: secrets.iter().map(|s| s.to_string()).collect(),
        })
    }

    /// Creates namespace `web` (there already is fine).
    async fn namespace(&self) {
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "web"}})).unwrap();
        match Api::<Namespace>::all(self.client.clone())
            .create(&PostParams::default(), &ns)
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => panic!("namespace: {e}"),
        }
    }

    /// Creates (or updates) Deployment `name` in namespace `web` running `images`.
    async fn deployment(&self, name: &str, images: &[String], secrets: &[&str]) {
        self.namespace().await;
        let containers: Vec<serde_json::Value> = images
            .iter()
            .enumerate()
            .map(|(i, image)| json!({"name": format!("c{i}"), "image": image}))
            .collect();
        let secrets: Vec<serde_json::Value> = secrets.iter().map(|s| json!({"name": s})).collect();
        let d: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "web"},
            "spec": {"selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": containers,
                                           "imagePullSecrets": secrets}}}
        }))
        .unwrap();
        let api =
            Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(self.client.clone(), "web");
        let patch = kube::api::Patch::Apply(&d);
        api.patch(name, &kube::api::PatchParams::apply("test").force(), &patch)
            .await
            .expect("apply the deployment");
    }

    async fn publish(&self, payload: &Payload) {
        shared::nats::Publisher::new(self.js.clone(), "/test")
            .publish(payload)
            .await
            .expect("publish");
    }

    async fn backups(&self) -> Vec<ImageBackup> {
        Api::<ImageBackup>::all(self.client.clone())
            .list(&Default::default())
            .await
            .expect("list")
            .items
    }

    /// Waits until the ImageBackup of `repo` reaches `phase`.
    async fn wait_phase(
        &self,
        repo: &str,
        phase: Phase,
        procs: &[&FunctionProcess],
    ) -> ImageBackup {
        let source = format!("{}/{repo}:1", self.src.host());
        self.wait_phase_of(&source, phase, procs).await
    }

    async fn wait_phase_of(
        &self,
        source: &str,
        phase: Phase,
        procs: &[&FunctionProcess],
    ) -> ImageBackup {
        let name = shared::naming::image_backup_name(
            &shared::Reference::parse_normalized(source).unwrap(),
        );
        let api = Api::<ImageBackup>::all(self.client.clone());
        let deadline = tokio::time::Instant::now() + LIMIT;
        loop {
            if let Ok(Some(ib)) = api.get_opt(&name).await
                && ib.phase() == phase
            {
                return ib;
            }
            if tokio::time::Instant::now() > deadline {
                let now = api.get_opt(&name).await.ok().flatten();
                let logs: Vec<String> = procs.iter().map(|p| p.log()).collect();
                panic!(
                    "{source} never reached {phase:?} (now {:?}); logs:\n{}",
                    now.map(|i| i.status),
                    logs.join("\n---\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn events(&self) -> Vec<(String, Payload)> {
        testbed::stream::stored(&self.js)
            .await
            .expect("stream decodes")
    }
}

fn completed_for(events: &[(String, Payload)], name: &str) -> usize {
    events
        .iter()
        .filter(|(_, p)| matches!(p, Payload::ImageCompleted(c) if c.name == name))
        .count()
}

#[tokio::test]
async fn one_event_makes_one_completed_backup_byte_identical_and_visible() {
    let bed = bed().await;
    let image = bed.push("library/nginx", 1, 64 * 1024).await;
    let mut backup = bed.backup(&["run"], &[]);
    backup.wait_ready(LIMIT).await.expect("ready");
    bed.publish(&bed.event("nginx", &["library/nginx"], &[]).await)
        .await;
    let ib = bed
        .wait_phase("library/nginx", Phase::Completed, &[&backup])
        .await;
    let s = ib.status.clone().unwrap();
    assert_eq!(s.digest.as_deref(), Some(image.digest.as_str()));
    assert_eq!(s.platforms, ["linux/amd64", "linux/arm64/v8"]);
    assert_eq!(s.blobs_total as usize, image.blobs.len());
    assert_eq!(s.bytes_total, image.blob_bytes());
    assert_eq!(
        s.progress.as_deref(),
        Some(format!("{0}/{0} blobs, 100%", image.blobs.len()).as_str())
    );
    assert_eq!(s.attempts, 1);
    assert!(s.claim.is_none() && s.completed_at.is_some() && s.expires_at.is_some());
    let ready = s
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready");
    assert_eq!(ready.status, "True");
    assert_eq!(
        ib.spec.source,
        format!("{}/library/nginx:1", bed.src.host())
    );

    // The copy is byte-identical at the target.
    let target = Pusher::new(&bed.dst.host(), None);
    let (_, top) = target
        .get_manifest(&bed.target_path(&bed.src.host(), "library/nginx"), "1")
        .await
        .unwrap()
        .expect("tagged at the target");
    assert_eq!(testbed::image::sha256_digest(&top), image.digest);

    // One image.completed, with the digest.
    let name = ib.metadata.name.clone().unwrap();
    let deadline = tokio::time::Instant::now() + LIMIT;
    while completed_for(&bed.events().await, &name) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no image.completed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let events = bed.events().await;
    let Some((subject, Payload::ImageCompleted(c))) = events
        .iter()
        .find(|(_, p)| matches!(p, Payload::ImageCompleted(_)))
    else {
        panic!("no completion: {events:?}")
    };
    assert_eq!(subject, &format!("imagebackup.image.completed.{name}"));
    assert_eq!(c.digest, image.digest);

    // The same event again: nothing to do, nothing published again.
    bed.publish(&bed.event("nginx-again", &["library/nginx"], &[]).await)
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(completed_for(&bed.events().await, &name), 1);

    // kubectl reads it well.
    // Async: the test API server runs on this test's runtime.
    let out = tokio::process::Command::new("kubectl")
        .args(["get", "imagebackups"])
        .env("KUBECONFIG", bed.kubeconfig.path())
        .env(
            "KUBECACHEDIR",
            testbed::process::kubectl_cache_dir(bed.kubeconfig.path()),
        )
        .output()
        .await
        .expect("kubectl");
    let table = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.is_empty(), "kubectl: {stderr}");
    assert!(
        table.contains("SOURCE") && table.contains("PHASE") && table.contains("PROGRESS"),
        "{table}"
    );
    assert!(
        table.contains(&name) && table.contains("Completed"),
        "{table}"
    );
    let (_, metrics) = backup.admin_get("/metrics").await.expect("metrics");
    assert!(
        metrics.contains(
            "imagebackup_backup_copies_total{outcome=\"Completed\",class=\"\",reason=\"\"} 1"
        ),
        "{metrics}"
    );
    assert!(backup.terminate(LIMIT).await.is_some_and(|s| s.success()));
}

#[tokio::test]
async fn two_workers_and_twenty_events_for_five_images_copy_each_image_once() {
    let bed = bed().await;
    let mut images = Vec::new();
    for i in 0..5u64 {
        images.push(bed.push(&format!("team/app{i}"), 100 + i, 128 * 1024).await);
    }
    let mut a = bed.backup(&["run"], &[]);
    let mut b = bed.backup(&["run"], &[]);
    a.wait_ready(LIMIT).await.expect("a");
    b.wait_ready(LIMIT).await.expect("b");
    for n in 0..20usize {
        let repos = [
            format!("team/app{}", n % 5),
            format!("team/app{}", (n + 1) % 5),
        ];
        let repos: Vec<&str> = repos.iter().map(String::as_str).collect();
        bed.publish(&bed.event(&format!("w{n}"), &repos, &[]).await)
            .await;
    }
    let digests: Vec<_> = images
        .iter()
        .flat_map(|i| i.blobs.iter().map(|b| b.digest.clone()))
        .collect();
    let distinct: std::collections::HashSet<_> = digests.iter().collect();
    assert_eq!(
        distinct.len(),
        digests.len(),
        "the five images share no blob"
    );
    for i in 0..5 {
        bed.wait_phase(&format!("team/app{i}"), Phase::Completed, &[&a, &b])
            .await;
    }
    assert_eq!(bed.backups().await.len(), 5);
    // Every blob reached the target once: one upload (PUT with ?digest=) per repository and blob.
    let mut uploads: HashMap<String, usize> = HashMap::new();
    for r in bed.proxy.requests() {
        if r.starts_with("PUT ") && r.contains("/blobs/uploads/") && r.contains("digest=") {
            let repo = r.split("/blobs/").next().unwrap_or("").to_string();
            let digest = r.rsplit("digest=").next().unwrap_or("").to_string();
            *uploads.entry(format!("{repo} {digest}")).or_default() += 1;
        }
    }
    let twice: Vec<_> = uploads.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "uploaded more than once: {twice:?}");
    let expected: usize = images.iter().map(|i| i.blobs.len()).sum();
    assert_eq!(uploads.len(), expected);
    let events = bed.events().await;
    for ib in bed.backups().await {
        assert_eq!(
            completed_for(&events, &ib.metadata.name.clone().unwrap()),
            1
        );
    }
}

#[tokio::test]
async fn a_worker_killed_mid_copy_is_replaced_through_redelivery_and_claim_expiry() {
    let bed = bed().await;
    // Big enough that the copy is still running when the worker dies.
    bed.push("big/image", 7, 24 * 1024 * 1024).await;
    let mut a = bed.backup(&["run"], &[("MAX_CONCURRENT_COPIES", "1".into())]);
    a.wait_ready(LIMIT).await.expect("a");
    bed.publish(&bed.event("big", &["big/image"], &[]).await)
        .await;
    let copying = bed.wait_phase("big/image", Phase::Copying, &[&a]).await;
    let first_holder = copying.status.unwrap().claim.unwrap().holder;
    drop(a); // SIGKILL: no Nak, no status write; only redelivery and the lease remain.
    let mut b = bed.backup(&["run"], &[]);
    b.wait_ready(LIMIT).await.expect("b");
    let done = bed.wait_phase("big/image", Phase::Completed, &[&b]).await;
    let s = done.status.unwrap();
    assert_eq!(s.attempts, 2, "one attempt each");
    assert!(s.claim.is_none());
    assert!(!b.log().contains(&format!("holder={first_holder}")));
}

#[tokio::test]
async fn failures_end_in_a_recorded_state_and_429_storms_are_ridden_out() {
    let bed = bed().await;
    let corrupt = bed.push("bad/corrupt", 11, 32 * 1024).await;
    bed.push("ok/storm", 12, 32 * 1024).await;
    let source_proxy = FaultProxy::start(&bed.src.host())
        .await
        .expect("source proxy");
    source_proxy.corrupt_blob(&corrupt.blobs.last().unwrap().digest);
    let mut backup = bed.backup(
        &["run"],
        &[(
            "INSECURE_REGISTRIES",
            format!(
                "{},{},{}",
                source_proxy.host(),
                bed.dst.host(),
                bed.proxy.host()
            ),
        )],
    );
    backup.wait_ready(LIMIT).await.expect("ready");
    bed.publish(
        &bed.event_from(&source_proxy.host(), "c", &["bad/corrupt"], &[])
            .await,
    )
    .await;
    let failed = bed
        .wait_phase_of(
            &format!("{}/bad/corrupt:1", source_proxy.host()),
            Phase::Failed,
            &[&backup],
        )
        .await;
    let s = failed.status.unwrap();
    assert!(
        s.last_error
            .as_deref()
            .unwrap_or("")
            .starts_with("Corrupt:"),
        "{s:?}"
    );
    let f = s.conditions.iter().find(|c| c.type_ == "Failed").unwrap();
    assert_eq!((f.status.as_str(), f.reason.as_str()), ("True", "Corrupt"));

    bed.publish(
        &bed.event_from(&source_proxy.host(), "n", &["nowhere/missing"], &[])
            .await,
    )
    .await;
    let missing = bed
        .wait_phase_of(
            &format!("{}/nowhere/missing:1", source_proxy.host()),
            Phase::Failed,
            &[&backup],
        )
        .await;
    assert!(
        missing
            .status
            .unwrap()
            .last_error
            .unwrap()
            .starts_with("NotFound:")
    );

    source_proxy.fail_next(&[(429, Some(0)); 8]);
    bed.publish(
        &bed.event_from(&source_proxy.host(), "s", &["ok/storm"], &[])
            .await,
    )
    .await;
    bed.wait_phase_of(
        &format!("{}/ok/storm:1", source_proxy.host()),
        Phase::Completed,
        &[&backup],
    )
    .await;

    let events = bed.events().await;
    let name = failed.metadata.name.unwrap();
    assert!(events.iter().any(|(_, p)| matches!(p, Payload::ImageFailed(f) if f.name == name && f.error_class == shared::ErrorClass::Corrupt)));
    assert_eq!(completed_for(&events, &name), 0);
    assert!(!backup.log().contains("panicked"));
}

#[tokio::test]
async fn a_private_source_is_read_with_the_workload_pull_secret_and_the_password_goes_nowhere() {
    const PASSWORD: &str = "s3cret-Pa55word";
    let bed = bed().await;
    let private = Registry::start_with(RegistryOptions {
        htpasswd: Some(Credentials {
            username: "puller".into(),
            password: PASSWORD.into(),
        }),
        ..Default::default()
    })
    .await
    .expect("private registry");
    let creds = private.credentials();
    Pusher::new(&private.host(), creds)
        .push_image(
            "secret/app",
            "1",
            &ImageSpec::single(Format::Docker, 1, 16 * 1024, 5),
        )
        .await
        .expect("push");
    bed.namespace().await;
    let auth = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("puller:{PASSWORD}"),
    );
    let config = json!({"auths": {private.host(): {"auth": auth}}}).to_string();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "regcred", "namespace": "web"},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, config)}
    }))
    .unwrap();
    Api::<Secret>::namespaced(bed.client.clone(), "web")
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let mut backup = bed.backup(
        &["run"],
        &[(
            "INSECURE_REGISTRIES",
            format!("{},{},{}", private.host(), bed.dst.host(), bed.proxy.host()),
        )],
    );
    backup.wait_ready(LIMIT).await.expect("ready");
    bed.publish(
        &bed.event_from(&private.host(), "p", &["secret/app"], &["regcred"])
            .await,
    )
    .await;
    let ib = bed
        .wait_phase_of(
            &format!("{}/secret/app:1", private.host()),
            Phase::Completed,
            &[&backup],
        )
        .await;
    assert_eq!(ib.spec.pull_secrets[0].name, "regcred");
    // Nowhere: the process log (debug level), the CRs, the Kubernetes Events, the stream.
    assert!(!backup.log().contains(PASSWORD));
    assert!(
        !serde_json::to_string(&bed.backups().await)
            .unwrap()
            .contains(PASSWORD)
    );
    let events: Vec<k8s_openapi::api::events::v1::Event> = Api::all(bed.client.clone())
        .list(&Default::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    assert!(!serde_json::to_string(&events).unwrap().contains(PASSWORD));
    let mut stream = bed.js.get_stream(shared::nats::STREAM_NAME).await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    for seq in 1..=last {
        if let Ok(m) = stream.get_raw_message(seq).await {
            assert!(!String::from_utf8_lossy(&m.payload).contains(PASSWORD));
            assert!(!format!("{:?}", m.headers).contains(PASSWORD));
        }
    }
}

#[tokio::test]
async fn a_malformed_message_is_dead_lettered_and_later_ones_still_processed() {
    let bed = bed().await;
    bed.push("after/garbage", 21, 16 * 1024).await;
    let mut backup = bed.backup(&["run"], &[]);
    backup.wait_ready(LIMIT).await.expect("ready");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "garbage-1");
    bed.js
        .publish_with_headers(
            "imagebackup.workload.changed.web.deployment.junk",
            headers,
            "not a cloudevent".into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    bed.publish(&bed.event("after", &["after/garbage"], &[]).await)
        .await;
    bed.wait_phase("after/garbage", Phase::Completed, &[&backup])
        .await;
    let stream = bed.js.get_stream(shared::nats::STREAM_NAME).await.unwrap();
    let dead = stream
        .get_last_raw_message_by_subject("imagebackup.deadletter.undecodable")
        .await
        .expect("dead letter stored");
    assert_eq!(&dead.payload[..], b"not a cloudevent");
    let original = dead
        .headers
        .get("Imagebackup-Original-Subject")
        .map(|v| v.to_string());
    assert_eq!(
        original.as_deref(),
        Some("imagebackup.workload.changed.web.deployment.junk")
    );
}

#[tokio::test]
async fn completed_backups_expire_and_the_image_stays() {
    let bed = bed().await;
    let image = bed.push("short/lived", 31, 16 * 1024).await;
    let mut backup = bed.backup(&["run"], &[("COMPLETED_TTL_SECONDS", "1".into())]);
    backup.wait_ready(LIMIT).await.expect("ready");
    bed.publish(&bed.event("e", &["short/lived"], &[]).await)
        .await;
    // Completed lasts one second (the TTL), so a poll of the API can miss it on a busy machine:
    // the worker's log says what happened, in order.
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let log = backup.log();
        if let (Some(completed), Some(expired)) = (
            log.find("backup completed"),
            log.find("expired ImageBackup deleted"),
        ) {
            assert!(completed < expired, "completed, then expired:\n{log}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not completed and expired:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(bed.backups().await.is_empty(), "the ImageBackup is gone");
    let (_, top) = Pusher::new(&bed.dst.host(), None)
        .get_manifest(&bed.target_path(&bed.src.host(), "short/lived"), "1")
        .await
        .unwrap()
        .expect("the copy stays");
    assert_eq!(testbed::image::sha256_digest(&top), image.digest);
}

#[tokio::test]
async fn serve_handles_a_cloudevent_over_http_like_run() {
    let bed = bed().await;
    let image = bed.push("http/app", 41, 16 * 1024).await;
    let port = testbed::process::free_port().unwrap();
    let mut serve = bed.backup(&["serve"], &[("LISTEN", format!("127.0.0.1:{port}"))]);
    serve.wait_ready(LIMIT).await.expect("ready");
    let payload = bed.event("h", &["http/app"], &[]).await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    // A binary-mode CloudEvent, as a Knative broker posts it.
    let post = |payload: Payload| {
        let binary = shared::events::to_http_binary(&payload, "/test").unwrap();
        let mut request = http
            .post(format!("http://127.0.0.1:{port}/"))
            .body(binary.body.clone());
        for (k, v) in &binary.headers {
            request = request.header(k.as_str(), v.as_str());
        }
        async move { request.send().await.expect("post") }
    };
    let resp = post(payload).await;
    assert_eq!(resp.status().as_u16(), 200, "{}", serve.log());
    let ce_type = resp
        .headers()
        .get("ce-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert_eq!(ce_type, "io.k8slab.imagebackup.image.completed");
    let data: shared::events::ImageCompleted =
        serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(data.digest, image.digest);
    let ib = bed
        .wait_phase("http/app", Phase::Completed, &[&serve])
        .await;
    assert_eq!(
        ib.status.unwrap().digest.as_deref(),
        Some(image.digest.as_str())
    );
    // Garbage is a 400, not a crash.
    let bad = http
        .post(format!("http://127.0.0.1:{port}/"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);

    // A forged event over HTTP meets the same checks as over NATS: a target outside the
    // naming, for a workload that runs something else. Nothing produced, nothing created.
    let forged = Payload::WorkloadChanged(WorkloadChanged {
        workload: WorkloadRef {
            kind: WorkloadKind::Deployment,
            namespace: "web".into(),
            name: "h".into(),
        },
        uid: "forged".into(),
        generation: 1,
        images: vec![WorkloadImage {
            container: "main".into(),
            init: false,
            source: format!("{}/http/app:1", bed.src.host()),
            target: format!("{}/elsewhere/x:1", bed.proxy.host()),
        }],
        pull_secrets: Vec::new(),
    });
    let resp = post(forged).await;
    assert_eq!(resp.status().as_u16(), 202, "nothing produced");
    assert_eq!(bed.backups().await.len(), 1, "no ImageBackup created");
    let (_, metrics) = serve.admin_get("/metrics").await.expect("metrics");
    assert!(
        metrics.contains("imagebackup_backup_events_rejected_total{reason=\"TargetMismatch\"} 1"),
        "{metrics}"
    );
}
