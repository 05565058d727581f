//! Proof under faults (bounded, in CI): two replicas of each function work through 50 workloads
//! sharing 15 images while processes are SIGKILLed and restarted, nats-server restarts, the
//! source registry answers 503, API watches are cut and the API answers 429. At the end every
//! workload runs the backup of the image it asks for, pinned to that image's source digest;
//! every ImageBackup is Completed; no image was uploaded by two workers at once (the backup
//! registry sits behind a proxy that logs each write with its time and the worker's User-Agent);
//! no process panicked. The seed is printed: `CHAOS_SEED=<n>` replays a run's sequence of faults.
//! The same runs on a 3-node JetStream cluster, where the NATS faults are the stream's leader
//! SIGKILLed, a node back with its store wiped, and once the whole cluster restarted; and with
//! both registries in token mode over HTTPS, tokens living 3 s.

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::json;
use shared::crd::{ImageBackup, Phase};
use testbed::cluster::Cluster;
use testbed::function::FunctionProcess;
use testbed::{FaultProxy, Format, ImageSpec};

const WORKLOADS: usize = 50;
const IMAGES: usize = 15;
const CHAOS_ROUNDS: usize = 12;

fn deployment(ns: &str, name: &str, image: &str) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "main", "image": image}]}}}
    }))
    .unwrap()
}

#[tokio::test]
async fn the_guarantees_hold_under_faults() {
    let c = Cluster::start().await.expect("cluster");
    chaos(c).await;
}

/// The same with both registries as on the internet (issue 28): HTTPS with private CAs (the
/// fault proxies speak HTTPS with the registries' certificates) and token services whose
/// tokens live 3 s, so every worker renews its tokens again and again under the faults; the
/// backup registry is private (a docker config for the backup, a pull secret for the rollout).
#[tokio::test]
async fn the_guarantees_hold_under_faults_over_https_with_tokens() {
    let c = Cluster::start_internet_like(Duration::from_secs(3))
        .await
        .expect("cluster");
    chaos(c).await;
}

/// The same on a 3-node JetStream cluster (`STREAM_REPLICAS=3`): NATS faults are the stream's
/// leader SIGKILLed (restarted a round later, half the time with its store wiped) and, once,
/// the whole cluster restarted.
#[tokio::test]
async fn the_guarantees_hold_under_faults_on_a_nats_cluster() {
    let c = Cluster::start_on_nats_cluster(3).await.expect("cluster");
    chaos(c).await;
}

async fn chaos(mut c: Cluster) {
    let seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("chaos seed: {seed} (replay with CHAOS_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let proxy = FaultProxy::start_for(&c.source).await.expect("proxy");
    // Every write to the backup registry goes through a proxy that logs who wrote when.
    let writes = FaultProxy::start_for(&c.backup)
        .await
        .expect("backup proxy");
    let backup_registry = format!("{}/{}", writes.host(), testbed::cluster::BACKUP_PREFIX);
    let publisher = crate::publish::Publisher::new(&c).await;
    let mut digests = Vec::new();
    for i in 0..IMAGES {
        let image = publisher
            .push_image(
                &format!("chaos/app{i}"),
                "1",
                &ImageSpec::single(Format::Oci, 2, 64 * 1024, 9000 + i as u64),
            )
            .await;
        digests.push(image.digest);
    }
    let source = |i: usize| format!("{}/chaos/app{i}:1", proxy.host());
    let mut extra = vec![("BACKUP_REGISTRY", backup_registry.clone())];
    // Plain registries are named insecure; HTTPS ones are trusted through REGISTRY_CA_FILE.
    if c.registry_ca_file.is_none() {
        extra.push((
            "INSECURE_REGISTRIES",
            format!("{},{},{}", proxy.host(), c.source.host(), writes.host()),
        ));
    }
    // A private backup registry: its user for the backup (at the proxy's address it is
    // written through), a pull secret for the rollout's check that Pods could pull it.
    let docker_config = c
        .backup
        .credentials()
        .map(|user| testbed::cluster::docker_config_file(&writes.host(), user).expect("file"));
    if let (Some(user), Some(file)) = (c.backup.credentials(), &docker_config) {
        extra.push(("DOCKER_CONFIG_FILE", file.path().display().to_string()));
        c.namespace("image-backup").await.expect("namespace");
        c.pull_secret(
            "image-backup",
            "backup-pull",
            &writes.host(),
            &user.username,
            &user.password,
        )
        .await
        .expect("pull secret");
        extra.push(("BACKUP_PULL_SECRET", "image-backup/backup-pull".into()));
        extra.push(("POD_NAMESPACE", "image-backup".into()));
    }
    extra.extend([
        ("ACK_WAIT_SECONDS", "4".to_string()),
        ("CLAIM_LEASE_SECONDS", "4".to_string()),
        ("RESYNC_SECONDS", "5".to_string()),
        // Registry outages come every few seconds here; a retry waits at most 10 s.
        ("MAX_RETRY_DELAY_SECONDS", "10".to_string()),
    ]);
    let kinds = ["watcher", "backup", "rollout"];
    let mut procs: Vec<(usize, FunctionProcess)> = Vec::new();
    for (k, kind) in kinds.iter().enumerate() {
        for _ in 0..2 {
            procs.push((k, c.spawn(kind, &["run"], &extra).await.expect("spawn")));
        }
    }
    c.namespace("chaos").await.unwrap();
    let api: Api<Deployment> = Api::namespaced(c.client.clone(), "chaos");
    let mut wanted: HashMap<String, usize> = HashMap::new();
    for w in 0..WORKLOADS {
        let i = rng.random_range(0..IMAGES);
        let name = format!("w{w}");
        api.create(
            &PostParams::default(),
            &deployment("chaos", &name, &source(i)),
        )
        .await
        .unwrap();
        wanted.insert(name, i);
    }
    // Faults while the work goes on.
    let mut log = Vec::new();
    // A cluster node killed and not yet restarted.
    let mut down: Option<usize> = None;
    for round in 0..CHAOS_ROUNDS {
        if round == CHAOS_ROUNDS / 2
            && let Some(cluster) = c.nats.cluster()
        {
            log.push(format!("round {round}: the whole NATS cluster restarts"));
            cluster.restart_all().await.expect("restart the cluster");
            down = None;
        }
        // On a cluster every third round is a NATS fault, so a leader dies and a node comes
        // back (wiped or not) twice in every run.
        let fault = if c.nats.cluster().is_some() && round % 3 == 1 {
            2
        } else {
            rng.random_range(0..6)
        };
        match fault {
            0 | 1 => {
                let victim = rng.random_range(0..procs.len());
                let (k, old) = procs.remove(victim);
                drop(old); // SIGKILL
                log.push(format!("round {round}: SIGKILL a {}", kinds[k]));
                // Not waited for here: its readiness may hang on a fault this loop heals
                // later (a stream without quorum until the killed node is back); every
                // process must be ready once the faults are over (below).
                procs.push((
                    k,
                    c.start_function(kinds[k], &["run"], &extra)
                        .expect("respawn"),
                ));
            }
            2 => nats_fault(&mut c, &mut down, &mut rng, round, &mut log).await,
            3 => {
                log.push(format!(
                    "round {round}: source registry answers 503 for 2 s"
                ));
                proxy.fail_for(503, Duration::from_secs(2));
            }
            4 => {
                log.push(format!("round {round}: API watches cut, then 429s"));
                c.api.cut_watches_after(Some(3));
                c.api.fail_next(&[429, 429, 429]);
            }
            _ => {
                // A user changes some workloads to another image.
                for _ in 0..3 {
                    let w = format!("w{}", rng.random_range(0..WORKLOADS));
                    let i = rng.random_range(0..IMAGES);
                    let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "main", "image": source(i)}]}}}});
                    if api
                        .patch(&w, &PatchParams::default(), &Patch::Strategic(&patch))
                        .await
                        .is_ok()
                    {
                        wanted.insert(w, i);
                    }
                }
                log.push(format!("round {round}: 3 workloads changed"));
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1500))).await;
        if round % 4 == 3 {
            c.api.cut_watches_after(None);
        }
    }
    c.api.cut_watches_after(None);
    if let (Some(i), Some(cluster)) = (down, c.nats.cluster()) {
        log.push(format!("end: node n{i} restarts"));
        cluster.restart(i).await.expect("restart node");
    }
    println!("{}", log.join("\n"));
    // With the faults over, every function (the respawned ones too) gets ready: none is left
    // waiting on NATS or the API server for good.
    for (k, p) in procs.iter_mut() {
        if let Err(e) = p.wait_ready(Duration::from_secs(120)).await {
            panic!(
                "seed {seed}: a {} not ready after the faults: {e}\n{}\n{}",
                kinds[*k],
                log.join("\n"),
                c.nats.log()
            );
        }
    }

    // Every workload ends on the backup of the image it asks for, pinned to the source digest.
    let flat = |i: usize| {
        format!(
            "{}/{}_chaos_app{i}:1@{}",
            backup_registry,
            proxy.host().replace(':', "__"),
            digests[i]
        )
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let list = api
            .list(&Default::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        let wrong: Vec<String> = list
            .iter()
            .filter_map(|d| {
                let name = d.metadata.name.clone().unwrap_or_default();
                let image = d.spec.as_ref()?.template.spec.as_ref()?.containers[0]
                    .image
                    .clone()?;
                (image != flat(wanted[&name])).then(|| format!("{name}: {image}"))
            })
            .collect();
        if wrong.is_empty() && list.len() == WORKLOADS {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            for (_, p) in &procs {
                eprintln!("{}", p.log());
            }
            panic!(
                "seed {seed}: {} workloads not on their backups: {wrong:?}\n{}",
                wrong.len(),
                log.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Every ImageBackup Completed, one per image used, each at its source digest. An image
    // that no workload asks for any more (a user changed them all away) is still backed up,
    // but nothing waited for it above: its copy may still be retrying a 503 of the last round.
    let ib_api = Api::<ImageBackup>::all(c.client.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let ibs = loop {
        let ibs = ib_api.list(&Default::default()).await.unwrap().items;
        if ibs.iter().all(|ib| ib.phase() == Phase::Completed)
            || tokio::time::Instant::now() > deadline
        {
            break ibs;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for ib in &ibs {
        let status = ib.status.clone().unwrap_or_default();
        assert_eq!(
            ib.phase(),
            Phase::Completed,
            "seed {seed}: {} {:?}",
            ib.spec.source,
            status.last_error
        );
        let i: usize = ib
            .spec
            .source
            .split("app")
            .nth(1)
            .and_then(|s| s.split(':').next())
            .and_then(|s| s.parse().ok())
            .unwrap();
        assert_eq!(status.digest.as_deref(), Some(digests[i].as_str()));
    }
    // No repository was written by two workers at once: per repository, the spans from each
    // worker's first to last write never overlap.
    assert!(
        writes.forwarded().iter().any(|w| w.is_write()),
        "the proxy saw the uploads"
    );
    let overlaps = writes.concurrent_writers();
    assert!(
        overlaps.is_empty(),
        "seed {seed}: written by two workers at once: {overlaps:?}"
    );
    // In token mode: the tokens were renewed throughout (more tokens than scope sets), none
    // refused.
    if let [source_tokens, backup_tokens] = &c.token_issuers[..] {
        let scopes = backup_tokens.scopes();
        let sets: std::collections::HashSet<&String> = scopes.iter().collect();
        println!(
            "tokens: source {}, backup {} for {} scope sets",
            source_tokens.issued(),
            scopes.len(),
            sets.len()
        );
        assert!(scopes.len() > sets.len(), "seed {seed}: no token renewed");
        assert_eq!((source_tokens.refused(), backup_tokens.refused()), (0, 0));
    }
    for (_, p) in &procs {
        assert!(
            !p.log().contains("panicked"),
            "seed {seed}: a function panicked:\n{}",
            p.log()
        );
    }
}

/// One NATS fault: a single server restarts; in a cluster, the stream's leader is SIGKILLed,
/// or the node killed a round before comes back (half the time with its store wiped).
async fn nats_fault(
    c: &mut Cluster,
    down: &mut Option<usize>,
    rng: &mut StdRng,
    round: usize,
    log: &mut Vec<String>,
) {
    let js = c.js.clone();
    let Some(cluster) = c.nats.cluster() else {
        log.push(format!("round {round}: restart nats-server"));
        c.nats.restart().await.expect("restart nats");
        return;
    };
    match down.take() {
        Some(i) if rng.random_bool(0.5) => {
            log.push(format!(
                "round {round}: node n{i} back with its store wiped"
            ));
            cluster.restart_wiped(i).await.expect("wiped restart");
        }
        Some(i) => {
            log.push(format!("round {round}: node n{i} back"));
            cluster.restart(i).await.expect("restart node");
        }
        None => match cluster.stream_leader(&js, shared::nats::STREAM_NAME).await {
            Some(leader) => {
                log.push(format!(
                    "round {round}: SIGKILL n{leader}, the stream's leader"
                ));
                cluster.kill(leader);
                *down = Some(leader);
            }
            None => log.push(format!("round {round}: the stream has no leader to kill")),
        },
    }
}
