//! The backup function's benchmark (`testbed bench-backup`): 100 `workload.changed` events for
//! 20 distinct images handled by 2 `backup run` processes, against the sum of one-shot
//! `backup copy` times for the same images. Reports the seconds until every ImageBackup is
//! Completed, the Kubernetes API writes per image and the peak RSS of each process. With
//! `nats_nodes` 3 the stream lives on a 3-node JetStream cluster with three replicas (every
//! write synced on a quorum), so the cost of replication is measured against one server.

use std::time::{Duration, Instant};

use anyhow::bail;
use async_nats::jetstream;
use kube::Api;
use shared::crd::{ImageBackup, Phase};
use shared::events::{Payload, WorkloadChanged, WorkloadImage, WorkloadKind, WorkloadRef};

use crate::function::FunctionProcess;
use crate::image::{Format, ImageSpec};
use crate::{ApiServer, NatsCluster, NatsServer, Pusher, Registry};

const MIB: usize = 1024 * 1024;

/// What to run: how many images and events, how big the layers, on how many NATS nodes.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Distinct images.
    pub images: usize,
    /// Events, spread over the images.
    pub events: usize,
    /// The size of each image's per-platform layers, KiB (3 platforms × 3 layers).
    pub layer_kib: usize,
    /// 1: one nats-server; 3: a JetStream cluster, the stream with 3 replicas.
    pub nats_nodes: usize,
}

/// Runs the benchmark; returns a Markdown table row.
pub async fn run(shape: Shape) -> anyhow::Result<String> {
    let Shape {
        images,
        events,
        layer_kib,
        nats_nodes,
    } = shape;
    let api = ApiServer::start().await?;
    api.install_imagebackup_crd().await?;
    // Kept alive to the end.
    let (_single, _cluster, nats_url) = if nats_nodes > 1 {
        let cluster = NatsCluster::start(nats_nodes).await?;
        let url = cluster.url();
        (None, Some(cluster), url)
    } else {
        let server = NatsServer::start().await?;
        let url = server.url();
        (Some(server), None, url)
    };
    let js = jetstream::new(shared::nats::connect(&nats_url, "bench").await?);
    crate::nats_cluster::ensure_stream(&js, nats_nodes).await?;
    let kubeconfig = tempfile::NamedTempFile::new()?;
    api.write_kubeconfig(kubeconfig.path())?;
    let (src, dst) = (Registry::start().await?, Registry::start().await?);
    let pusher = Pusher::new(&src.host(), None);
    let mut bytes = 0;
    for i in 0..images {
        let mut spec = ImageSpec::multi_arch(Format::Oci, 3, layer_kib * 1024, 1000 + i as u64);
        spec.shared_base = Some(layer_kib * 512);
        bytes += pusher
            .push_image(&format!("bench/app{i}"), "1", &spec)
            .await?
            .blob_bytes();
    }
    let insecure = format!("{},{}", src.host(), dst.host());

    // The baseline: one `backup copy` per image, one after the other.
    let bin = crate::workspace_binary("backup");
    let started = Instant::now();
    for i in 0..images {
        let out = tokio::process::Command::new(&bin)
            .args([
                "copy",
                &format!("{}/bench/app{i}:1", src.host()),
                &format!("{}/baseline/bench_app{i}:1", dst.host()),
                "--insecure-registry",
                &insecure,
            ])
            .output()
            .await?;
        if !out.status.success() {
            bail!(
                "backup copy failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let baseline = started.elapsed().as_secs_f64();

    let env = [
        ("KUBECONFIG", kubeconfig.path().display().to_string()),
        ("NATS_URL", nats_url.clone()),
        ("STREAM_REPLICAS", nats_nodes.to_string()),
        ("INSECURE_REGISTRIES", insecure.clone()),
        ("BACKUP_REGISTRY", format!("{}/backup", dst.host())),
        ("LOG_LEVEL", "warn".to_string()),
    ];
    // The workloads the events name: the backup checks each event against the cluster.
    let client = api.client()?;
    let namespace: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "bench"}}))?;
    Api::all(client.clone())
        .create(&kube::api::PostParams::default(), &namespace)
        .await?;
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(client, "bench");
    for n in 0..events {
        let i = n % images;
        let d = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("w{n}")},
            "spec": {"selector": {"matchLabels": {"app": format!("w{n}")}},
                     "template": {"metadata": {"labels": {"app": format!("w{n}")}},
                                  "spec": {"containers": [{"name": "main",
                                      "image": format!("{}/bench/app{i}:1", src.host())}]}}}
        }))?;
        deployments
            .create(&kube::api::PostParams::default(), &d)
            .await?;
    }
    let naming = shared::NamingPolicy::flat(format!("{}/backup", dst.host()).parse()?);
    let mut workers = Vec::new();
    for _ in 0..2 {
        let mut w = FunctionProcess::spawn("backup", &["run".to_string()], &env)?;
        w.wait_ready(Duration::from_secs(60)).await?;
        workers.push(w);
    }
    api.reset_requests();
    let publisher = shared::nats::Publisher::new(js.clone(), "/bench");
    let started = Instant::now();
    for n in 0..events {
        let i = n % images;
        publisher
            .publish(&Payload::WorkloadChanged(WorkloadChanged {
                workload: WorkloadRef {
                    kind: WorkloadKind::Deployment,
                    namespace: "bench".into(),
                    name: format!("w{n}"),
                },
                uid: format!("u{n}"),
                generation: 1,
                images: vec![{
                    let source = shared::Reference::parse_normalized(&format!(
                        "{}/bench/app{i}:1",
                        src.host()
                    ))?;
                    WorkloadImage {
                        container: "main".into(),
                        init: false,
                        target: naming.target(&source)?.to_string(),
                        source: source.to_string(),
                    }
                }],
                pull_secrets: Vec::new(),
            }))
            .await?;
    }
    let ibs: Api<ImageBackup> = Api::all(api.client()?);
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let list = ibs.list(&Default::default()).await?.items;
        let done = list
            .iter()
            .filter(|ib| ib.phase() == Phase::Completed)
            .count();
        if done == images {
            break;
        }
        if Instant::now() > deadline {
            bail!("{done} of {images} completed after 600 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let machinery = started.elapsed().as_secs_f64();
    let requests = api.requests();
    let writes = requests
        .iter()
        .filter(|r| !r.starts_with("GET") && r.contains("imagebackups"))
        .count();
    let rss: Vec<String> = workers
        .iter()
        .map(|w| format!("{:.1}", w.peak_rss_kib().unwrap_or(0) as f64 / 1024.0))
        .collect();
    let nats = match nats_nodes {
        1 => "1 NATS server".to_string(),
        n => format!("{n}-node NATS, R{n}"),
    };
    Ok(format!(
        "| {images} images ({:.0} MiB), {events} events, 2 workers, {nats} | {baseline:.2} | {machinery:.2} | {:+.0} % | {:.1} | {} |\n",
        bytes as f64 / MIB as f64,
        (machinery / baseline - 1.0) * 100.0,
        writes as f64 / images as f64,
        rss.join(" / "),
    ))
}
