//! `testbed demo`: the whole flow, start to finish, as a person would watch it. It starts the
//! test API server, nats-server and two registries, generates Docker Hub's `library/nginx:1.14.0`
//! and `library/fluentd:latest` in the "external" registry, which stands in for Docker Hub as a
//! registry mirror (`--registry-mirror docker.io=…`: nothing here reaches the internet), applies
//! the original design's samples with kubectl, images as written (`nginx:1.14.0`,
//! `fluentd:latest`), runs watcher, backup and rollout as separate processes, and shows the images
//! before, `kubectl get imagebackups` while it works and after, the completion events as a
//! subscriber receives them, the images after, and the Events. It succeeds only if both
//! workloads run their backups pinned to the sources' digests, and stops everything it started
//! (unless `--keep`).

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt;
use shared::events::{Payload, from_nats_message};

use crate::cluster::Cluster;
use crate::image::{Format, ImageSpec};

const SAMPLES: &str = include_str!("../samples/original-design.yaml");

fn say(s: &str) {
    println!("\n==> {s}");
}

async fn kubectl(cluster: &Cluster, args: &[&str]) -> anyhow::Result<String> {
    println!("$ kubectl {}", args.join(" "));
    let out = tokio::process::Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", cluster.kubeconfig.path())
        .env(
            "KUBECACHEDIR",
            crate::process::kubectl_cache_dir(cluster.kubeconfig.path()),
        )
        .output()
        .await
        .context("kubectl (apt-get install kubernetes-client)")?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    print!("{text}");
    if !text.ends_with('\n') {
        println!();
    }
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("kubectl {} failed: {err}", args.join(" "));
    }
    Ok(text)
}

async fn images(cluster: &Cluster) -> anyhow::Result<(String, String)> {
    let jsonpath = "jsonpath={.spec.template.spec.containers[*].image}";
    let nginx = kubectl(
        cluster,
        &["get", "deploy", "nginx", "-n", "nginx", "-o", jsonpath],
    )
    .await?;
    let fluentd = kubectl(
        cluster,
        &["get", "ds", "fluentd", "-n", "fluentd", "-o", jsonpath],
    )
    .await?;
    Ok((nginx.trim().to_string(), fluentd.trim().to_string()))
}

/// The images now, without printing (for polling).
async fn current_images(cluster: &Cluster) -> (String, String) {
    // The samples name each workload after its namespace.
    let get = |kind: &'static str, ns: &'static str| {
        let kubeconfig = cluster.kubeconfig.path().to_path_buf();
        async move {
            tokio::process::Command::new("kubectl")
                .args([
                    "get",
                    kind,
                    ns,
                    "-n",
                    ns,
                    "-o",
                    "jsonpath={.spec.template.spec.containers[*].image}",
                ])
                .env(
                    "KUBECACHEDIR",
                    crate::process::kubectl_cache_dir(&kubeconfig),
                )
                .env("KUBECONFIG", kubeconfig)
                .output()
                .await
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default()
        }
    };
    (get("deploy", "nginx").await, get("ds", "fluentd").await)
}

/// Runs the demo; `Ok(())` only if both workloads ended on their verified backups.
pub async fn run(keep: bool) -> anyhow::Result<()> {
    say(
        "starting the test cluster: Kubernetes API server, nats-server (JetStream), two registries",
    );
    let cluster = Cluster::start().await?;
    let source = cluster.source.host();
    println!(
        "external registry: {source} (a mirror of docker.io: Docker Hub is out of reach here)\nbackup registry:   {}",
        cluster.backup_registry()
    );
    println!(
        "KUBECONFIG={}\nNATS_URL={}",
        cluster.kubeconfig.path().display(),
        cluster.nats.url()
    );

    say(
        "generating Docker Hub's library/nginx:1.14.0 and library/fluentd:latest (multi-arch) in the mirror",
    );
    let pusher = cluster.source_pusher();
    let nginx = pusher
        .push_image(
            "library/nginx",
            "1.14.0",
            &ImageSpec::multi_arch(Format::Docker, 3, 256 * 1024, 1),
        )
        .await?;
    let fluentd = pusher
        .push_image(
            "library/fluentd",
            "latest",
            &ImageSpec::multi_arch(Format::Oci, 3, 256 * 1024, 2),
        )
        .await?;
    println!("{source}/library/nginx:1.14.0   {}", nginx.digest);
    println!("{source}/library/fluentd:latest {}", fluentd.digest);

    say("applying the original design's samples, images as written");
    let samples = tempfile::NamedTempFile::new()?;
    std::fs::write(samples.path(), SAMPLES)?;
    kubectl(
        &cluster,
        &["apply", "-f", &samples.path().display().to_string()],
    )
    .await?;
    kubectl(&cluster, &["get", "crd", "imagebackups.k8slab.io"]).await?;

    say("images before");
    images(&cluster).await?;

    say(
        "subscribing to imagebackup.image.> and imagebackup.workload.rolledout.> (as any NATS client can)",
    );
    let nc = async_nats::connect(cluster.nats.url()).await?;
    let mut completed = nc.subscribe("imagebackup.image.>").await?;
    let mut rolled = nc.subscribe("imagebackup.workload.rolledout.>").await?;
    let printer = tokio::spawn(async move {
        let mut both = futures::stream::select(completed.by_ref(), rolled.by_ref());
        while let Some(m) = both.next().await {
            let line = match from_nats_message(m.headers.as_ref(), &m.payload)
                .and_then(|e| Payload::from_cloudevent(&e))
            {
                Ok(Payload::ImageCompleted(c)) => format!(
                    "image.completed   {} -> {} ({}, {} bytes)",
                    c.source, c.target, c.digest, c.bytes
                ),
                Ok(Payload::ImageFailed(f)) => format!(
                    "image.failed      {}: {}: {}",
                    f.source, f.error_class, f.message
                ),
                Ok(Payload::WorkloadRolledOut(r)) => format!(
                    "workload.rolledout {}/{} {}",
                    r.workload.namespace,
                    r.workload.name,
                    r.changes
                        .iter()
                        .map(|c| format!("{}: {} -> {}", c.container, c.from, c.to))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Ok(other) => other.event_type().to_string(),
                Err(e) => format!("undecodable event on {}: {e}", m.subject),
            };
            println!("  [event] {line}");
        }
    });

    say("starting watcher, backup and rollout as separate processes");
    let mirror = [("REGISTRY_MIRRORS", format!("docker.io=http://{source}"))];
    println!(
        "every function gets BACKUP_REGISTRY={} REGISTRY_MIRRORS={}",
        cluster.backup_registry(),
        mirror[0].1
    );
    let watcher = cluster.spawn("watcher", &["run"], &[]).await?;
    let backup = cluster.spawn("backup", &["run"], &mirror).await?;
    let rollout = cluster.spawn("rollout", &["run"], &mirror).await?;
    println!("all three ready (/readyz)");

    say("kubectl get imagebackups, while it works");
    tokio::time::sleep(Duration::from_millis(300)).await;
    kubectl(&cluster, &["get", "imagebackups"]).await?;

    // The original design's naming: Docker Hub's host is dropped, the path joins with `_`.
    let want_nginx = format!(
        "{}/library_nginx:1.14.0@{}",
        cluster.backup_registry(),
        nginx.digest
    );
    let want_fluentd = format!(
        "{}/library_fluentd:latest@{}",
        cluster.backup_registry(),
        fluentd.digest
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (n, f) = current_images(&cluster).await;
        if n == want_nginx && f == want_fluentd {
            break;
        }
        if Instant::now() > deadline {
            for p in [&watcher, &backup, &rollout] {
                eprintln!("{}", p.log());
            }
            bail!("the workloads were not rolled out within 120 s (nginx: {n}, fluentd: {f})");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    say("kubectl get imagebackups, after");
    kubectl(&cluster, &["get", "imagebackups", "-o", "wide"]).await?;

    say("images after: the backup registry, pinned to the sources' digests");
    let (n, f) = images(&cluster).await?;
    let verified = n == want_nginx && f == want_fluentd;
    println!("nginx   verified: {}", n.ends_with(&nginx.digest));
    println!("fluentd verified: {}", f.ends_with(&fluentd.digest));
    println!(
        "where the names come from: nginx:1.14.0 is docker.io/library/nginx:1.14.0 (read from the \
         mirror {source}); the backup registry {} plus the naming rule (path with / as _) gives \
         library_nginx:1.14.0; the digest is the one read from the source",
        cluster.backup_registry()
    );

    say("what the functions recorded (Events)");
    kubectl(&cluster, &["get", "events.events.k8s.io", "-A", "-o", "custom-columns=NAMESPACE:.metadata.namespace,OBJECT:.regarding.name,REASON:.reason,NOTE:.note"]).await?;

    printer.abort();
    if !verified {
        bail!("the workloads do not run their verified backups");
    }
    say("done: both workloads run their backups, pinned by digest");
    if keep {
        println!(
            "--keep: everything stays up; KUBECONFIG={} NATS_URL={}; Ctrl-C stops it",
            cluster.kubeconfig.path().display(),
            cluster.nats.url()
        );
        let _ = tokio::signal::ctrl_c().await;
    } else {
        println!(
            "next: `./dev demo --keep` leaves all of it running for kubectl; the README's \"Five \
             minutes with it\" starts each piece by hand (target/debug/testbed up)"
        );
    }
    drop((watcher, backup, rollout));
    Ok(())
}
