//! The rollout acts on changes it sees in its own workload cache, not only on events: a
//! workload set back to images it ran before (as `kubectl rollout undo` does) publishes a
//! `workload.changed` the stream drops as a duplicate, and is still moved onto its backup at
//! once, not at the next resync.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use serde_json::json;
use testbed::cluster::Cluster;
use testbed::function::FunctionProcess;

/// The bound on anything the test waits for (a hang, not a timing goal).
const LIMIT: Duration = Duration::from_secs(90);

/// Sets the image of container `main` of Deployment `shop/web`.
async fn set_image(c: &Cluster, image: &str) {
    let patch =
        json!({"spec": {"template": {"spec": {"containers": [{"name": "main", "image": image}]}}}});
    Api::<Deployment>::namespaced(c.client.clone(), "shop")
        .patch(
            "web",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Strategic(&patch),
        )
        .await
        .expect("set image");
}

async fn wait_image_ends_with(c: &Cluster, digest: &str, procs: &[&FunctionProcess]) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let now = c
            .image_of::<Deployment>("shop", "web")
            .await
            .unwrap_or_default();
        if now.ends_with(digest) {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            let logs: Vec<String> = procs.iter().map(|p| p.log()).collect();
            panic!(
                "never on the backup at {digest} (now {now}):\n{}",
                logs.join("\n---\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_change_back_to_images_seen_before_is_rolled_out_without_waiting_for_a_resync() {
    let c = Cluster::start().await.expect("cluster");
    let src = c.source.host();
    let a = c.push_small("team/app", "a", 21).await.expect("push");
    let b = c.push_small("team/app", "b", 22).await.expect("push");
    c.deployment("shop", "web", &format!("{src}/team/app:a"))
        .await
        .expect("deployment");
    // Resyncs far away: only events and the rollout's own watch can act.
    let slow = [("RESYNC_SECONDS", "3600".to_string())];
    let watcher = c.spawn("watcher", &["run"], &slow).await.expect("watcher");
    let backup = c.spawn("backup", &["run"], &[]).await.expect("backup");
    let rollout = c.spawn("rollout", &["run"], &slow).await.expect("rollout");
    let procs = [&watcher, &backup, &rollout];
    wait_image_ends_with(&c, &a.digest, &procs).await;
    set_image(&c, &format!("{src}/team/app:b")).await;
    wait_image_ends_with(&c, &b.digest, &procs).await;
    // Back to A (as `kubectl rollout undo` would): the watcher's workload.changed is a
    // duplicate of the first one within the stream's window and is dropped.
    set_image(&c, &format!("{src}/team/app:a")).await;
    wait_image_ends_with(&c, &a.digest, &procs).await;
}
