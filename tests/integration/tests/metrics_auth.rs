//! `--metrics-auth kubernetes` with the manifests' RBAC (`deploy/base/rbac.yaml`,
//! `deploy/base/metrics-auth.yaml`) on the test API server, which answers TokenReview and
//! SubjectAccessReview from its identities and RBAC: `/metrics` is 401 without a token, 403 for
//! a ServiceAccount without `image-backup-metrics-reader`, 200 with it; the probes stay open.

use std::time::Duration;

use testbed::cluster::Cluster;

fn kubectl(kubeconfig: &std::path::Path, args: &[&str]) -> String {
    testbed::process::kubectl(kubeconfig, args).expect("kubectl")
}

async fn get(url: &str, token: Option<&str>) -> (u16, String) {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let mut request = client.get(url);
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    let resp = request.send().await.expect("admin server answers");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_only_to_a_service_account_bound_to_the_reader_role() {
    let c = Cluster::start().await.expect("cluster");
    c.namespace("image-backup").await.expect("namespace");
    c.namespace("monitoring").await.expect("namespace");
    let base = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/base");
    for file in ["rbac.yaml", "metrics-auth.yaml"] {
        kubectl(
            c.kubeconfig.path(),
            &[
                "-n",
                "image-backup",
                "apply",
                "-f",
                &format!("{base}/{file}"),
            ],
        );
    }
    kubectl(
        c.kubeconfig.path(),
        &[
            "create",
            "clusterrolebinding",
            "prometheus-reads-metrics",
            "--clusterrole=image-backup-metrics-reader",
            "--serviceaccount=monitoring:prometheus",
        ],
    );
    // The watcher as its own ServiceAccount: its role and the metrics-auth role, nothing else.
    let (_, watcher_kubeconfig) = c
        .service_account_kubeconfig("image-backup", "watcher")
        .expect("kubeconfig");
    let (prometheus, _) = c
        .service_account_kubeconfig("monitoring", "prometheus")
        .expect("token");
    let (nobody, _) = c
        .service_account_kubeconfig("monitoring", "nobody")
        .expect("token");
    let watcher = c
        .spawn(
            "watcher",
            &["run"],
            &[
                (
                    "KUBECONFIG",
                    watcher_kubeconfig.path().display().to_string(),
                ),
                ("METRICS_AUTH", "kubernetes".into()),
            ],
        )
        .await
        .expect("watcher");
    let url = |path: &str| format!("{}{path}", watcher.admin_url());

    let (status, body) = get(&url("/metrics"), None).await;
    assert_eq!(status, 401, "{body}");
    let (status, _) = get(&url("/metrics"), Some("not-a-token")).await;
    assert_eq!(status, 401);
    let (status, body) = get(&url("/metrics"), Some(&nobody)).await;
    assert_eq!(status, 403, "{body}");
    assert!(!body.contains("imagebackup_"), "{body}");
    let (status, body) = get(&url("/metrics"), Some(&prometheus)).await;
    assert_eq!(status, 200, "{body}\n{}", watcher.log());
    assert!(body.contains("imagebackup_watcher_"), "{body}");
    // Again: answered from the cache, the same.
    assert_eq!(get(&url("/metrics"), Some(&prometheus)).await.0, 200);
    assert_eq!(get(&url("/metrics"), Some(&nobody)).await.0, 403);
    // The probes carry no token and stay open.
    assert_eq!(get(&url("/healthz"), None).await.0, 200);
    assert_eq!(get(&url("/readyz"), None).await.0, 200);
    // The reviews were made by the watcher's ServiceAccount, which the role allows.
    let reviews: Vec<_> = c
        .api
        .audit_log()
        .into_iter()
        .filter(|e| {
            e.user == "system:serviceaccount:image-backup:watcher"
                && (e.attributes.resource == "tokenreviews"
                    || e.attributes.resource == "subjectaccessreviews")
        })
        .collect();
    assert!(
        reviews.iter().all(|e| e.code == 201),
        "{:?}",
        reviews.iter().map(|e| e.code).collect::<Vec<_>>()
    );
    assert_eq!(
        reviews.len(),
        5,
        "two tokens reviewed twice (both known), one unknown token once; cached afterwards"
    );
}
