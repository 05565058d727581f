//! The end-to-end scale benchmark (`testbed bench-scale`): Deployments and DaemonSets spread
//! over 50 namespaces referencing 100 distinct small images, with watcher, backup and rollout
//! running as processes; measures the seconds until every workload runs its backup, the copies
//! made (must equal the distinct images), Kubernetes API requests and NATS messages per workload,
//! and the peak RSS of each function.

use std::time::{Duration, Instant};

use anyhow::bail;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use kube::Api;
use kube::api::PostParams;
use serde_json::json;
use shared::crd::ImageBackup;

use crate::cluster::Cluster;
use crate::image::{Format, ImageSpec};

/// The benchmark's shape.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Workloads (every fourth a DaemonSet).
    pub workloads: usize,
    /// Namespaces.
    pub namespaces: usize,
    /// Distinct images.
    pub images: usize,
}

fn workload_images(list: Vec<serde_json::Value>) -> Vec<String> {
    list.into_iter()
        .filter_map(|o| {
            o["spec"]["template"]["spec"]["containers"][0]["image"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

/// Runs one size; returns a Markdown table row.
pub async fn run(shape: Shape) -> anyhow::Result<String> {
    let c = Cluster::start().await?;
    // Statuses only: ReplicaSets and Pods would measure the simulation, not the functions
    // (the API server runs in this process, on the same two cores).
    c.api.simulate_pods(false);
    let pusher = c.source_pusher();
    eprintln!(
        "bench-scale: {} images, {} workloads",
        shape.images, shape.workloads
    );
    for i in 0..shape.images {
        pusher
            .push_image(
                &format!("scale/app{i}"),
                "1",
                &ImageSpec::single(Format::Oci, 1, 4096, 5000 + i as u64),
            )
            .await?;
    }
    for n in 0..shape.namespaces {
        c.namespace(&format!("ns-{n}")).await?;
    }
    let src = c.source.host();
    for i in 0..shape.workloads {
        let ns = format!("ns-{}", i % shape.namespaces);
        let spec = json!({
            "metadata": {"name": format!("w-{i}"), "namespace": ns},
            "spec": {"selector": {"matchLabels": {"app": "w"}},
                     "template": {"metadata": {"labels": {"app": "w"}},
                                  "spec": {"containers": [{"name": "main", "image": format!("{src}/scale/app{}:1", i % shape.images)}]}}}
        });
        if i % 4 == 3 {
            let ds: DaemonSet = serde_json::from_value(spec)?;
            Api::<DaemonSet>::namespaced(c.client.clone(), &ns)
                .create(&PostParams::default(), &ds)
                .await?;
        } else {
            let d: Deployment = serde_json::from_value(spec)?;
            Api::<Deployment>::namespaced(c.client.clone(), &ns)
                .create(&PostParams::default(), &d)
                .await?;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.api.reset_requests();
    let started = Instant::now();
    let quiet = [("LOG_LEVEL", "warn".to_string())];
    let watcher = c.spawn("watcher", &["run"], &quiet).await?;
    let backup = c.spawn("backup", &["run"], &quiet).await?;
    let rollout = c.spawn("rollout", &["run"], &quiet).await?;
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut rss = [0u64; 3];
    loop {
        for (slot, p) in rss.iter_mut().zip([&watcher, &backup, &rollout]) {
            *slot = (*slot).max(p.peak_rss_kib().unwrap_or(0));
        }
        let d: Vec<serde_json::Value> = Api::<Deployment>::all(c.client.clone())
            .list(&Default::default())
            .await?
            .items
            .into_iter()
            .map(|d| serde_json::to_value(d).unwrap_or_default())
            .collect();
        let s: Vec<serde_json::Value> = Api::<DaemonSet>::all(c.client.clone())
            .list(&Default::default())
            .await?
            .items
            .into_iter()
            .map(|d| serde_json::to_value(d).unwrap_or_default())
            .collect();
        let mut images = workload_images(d);
        images.extend(workload_images(s));
        let done = images.iter().filter(|i| i.contains("@sha256:")).count();
        if done == shape.workloads {
            break;
        }
        if Instant::now() > deadline {
            bail!("{done} of {} rolled out after 900 s", shape.workloads);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    for (slot, p) in rss.iter_mut().zip([&watcher, &backup, &rollout]) {
        *slot = (*slot).max(p.peak_rss_kib().unwrap_or(0));
    }
    let copies = Api::<ImageBackup>::all(c.client.clone())
        .list(&Default::default())
        .await?
        .items
        .len();
    // The poller's own lists are excluded: only the functions' requests count.
    let requests = c
        .api
        .requests()
        .iter()
        .filter(|r| {
            !(r.starts_with("GET /apis/apps/v1/deployments")
                || r.starts_with("GET /apis/apps/v1/daemonsets"))
                || r.contains("watch=")
        })
        .count();
    let mut stream = c.js.get_stream(shared::nats::STREAM_NAME).await?;
    let messages = stream.info().await?.state.messages;
    let per = |n: f64| n / shape.workloads as f64;
    let mib = |k: u64| k as f64 / 1024.0;
    Ok(format!(
        "| {} | {} | {seconds:.1} | {copies} | {:.2} | {:.2} | {:.1} / {:.1} / {:.1} |\n",
        shape.workloads,
        shape.images,
        per(requests as f64),
        per(messages as f64),
        mib(rss[0]),
        mib(rss[1]),
        mib(rss[2]),
    ))
}
