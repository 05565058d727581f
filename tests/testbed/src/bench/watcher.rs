//! The watcher's start-up benchmark (`testbed bench-watcher`): a cluster of Ready Deployments
//! and DaemonSets in many namespaces referencing a set of distinct images; the watcher binary
//! starts against it and we measure the seconds until every workload's event is stored, the
//! Kubernetes API requests it made (goal: the initial lists and watches only), and its peak RSS.

use std::time::{Duration, Instant};

use anyhow::bail;
use async_nats::jetstream;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;

use crate::function::FunctionProcess;
use crate::{ApiServer, NatsServer};

/// The benchmark's shape.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Workloads in all (every fourth a DaemonSet).
    pub workloads: usize,
    /// Namespaces they spread over.
    pub namespaces: usize,
    /// Distinct images they reference.
    pub images: usize,
}

/// Runs the benchmark; returns a Markdown table row set.
pub async fn run(shape: Shape) -> anyhow::Result<String> {
    let api = ApiServer::start().await?;
    // Statuses only: the benchmark measures the watcher, not the Pod simulation.
    api.simulate_pods(false);
    let nats = NatsServer::start().await?;
    let client = api.client()?;
    let kubeconfig = tempfile::NamedTempFile::new()?;
    api.write_kubeconfig(kubeconfig.path())?;
    let js = jetstream::new(shared::nats::connect(&nats.url(), "bench").await?);
    shared::nats::ensure_stream(&js).await?;

    eprintln!("bench-watcher: creating {} workloads", shape.workloads);
    for n in 0..shape.namespaces {
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": format!("ns-{n}")}}))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await?;
    }
    for i in 0..shape.workloads {
        let ns = format!("ns-{}", i % shape.namespaces);
        let image = format!("registry.example.com/team/app-{}:1.0", i % shape.images);
        let spec = json!({
            "metadata": {"name": format!("w-{i}"), "namespace": ns},
            "spec": {"selector": {"matchLabels": {"app": "w"}},
                     "template": {"metadata": {"labels": {"app": "w"}},
                                  "spec": {"containers": [{"name": "main", "image": image}]}}}
        });
        if i % 4 == 3 {
            let ds: DaemonSet = serde_json::from_value(spec)?;
            Api::<DaemonSet>::namespaced(client.clone(), &ns)
                .create(&PostParams::default(), &ds)
                .await?;
        } else {
            let d: Deployment = serde_json::from_value(spec)?;
            Api::<Deployment>::namespaced(client.clone(), &ns)
                .create(&PostParams::default(), &d)
                .await?;
        }
    }
    // Let the simulation make every workload Ready.
    tokio::time::sleep(Duration::from_secs(2)).await;
    api.reset_requests();

    let started = Instant::now();
    let watcher = FunctionProcess::spawn(
        "watcher",
        &["run".to_string()],
        &[
            ("KUBECONFIG", kubeconfig.path().display().to_string()),
            ("NATS_URL", nats.url()),
            ("BACKUP_REGISTRY", "localhost:5000/backup".to_string()),
            ("LOG_LEVEL", "warn".to_string()),
        ],
    )?;
    let mut stream = js.get_stream(shared::nats::STREAM_NAME).await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let stored = stream.info().await?.state.messages as usize;
        if stored >= shape.workloads {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "{stored} of {} events after 300 s:\n{}",
                shape.workloads,
                watcher.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let rss = watcher.peak_rss_kib().unwrap_or(0);
    let requests = api.requests();
    let lists = requests
        .iter()
        .filter(|r| r.starts_with("GET") && !r.contains("watch="))
        .count();
    let watches = requests
        .iter()
        .filter(|r| r.contains("watch=true") || r.contains("watch=1"))
        .count();
    let writes = requests.iter().filter(|r| !r.starts_with("GET")).count();
    Ok(format!(
        "| {} | {} | {} | {seconds:.2} | {} ({lists} GET, {watches} watch, {writes} write) | {:.1} |\n",
        shape.workloads,
        shape.namespaces,
        shape.images,
        requests.len(),
        rss as f64 / 1024.0
    ))
}
