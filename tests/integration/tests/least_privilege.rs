//! The deploy manifests' RBAC grants exactly what each function uses: the three functions run
//! end to end as their own service accounts (bearer tokens, authentication required) under the
//! ClusterRoles of `deploy/base/rbac.yaml`, and the test API server's audit log is compared with
//! the grants — nothing refused, nothing granted that went unused (but for a verb only a repeat
//! needs, named below).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use kube::Api;
use kube::api::PostParams;
use serde_json::json;
use shared::crd::ImageBackup;
use testbed::cluster::Cluster;
use testbed::{Format, ImageSpec};

/// (verb, apiGroup, resource or resource/subresource).
type Grant = (String, String, String);

fn rbac_yaml() -> String {
    format!("{}/../../deploy/base/rbac.yaml", env!("CARGO_MANIFEST_DIR"))
}

/// What each ClusterRole and Role of the manifests grants, by role name (a function's Role in
/// its own namespace joins its ClusterRole).
fn grants() -> BTreeMap<String, BTreeSet<Grant>> {
    let text = std::fs::read_to_string(rbac_yaml()).expect("rbac.yaml");
    let mut out = BTreeMap::new();
    for doc in text.split("\n---") {
        let v: serde_json::Value = serde_yaml::from_str(doc).expect("yaml");
        if v["kind"] != "ClusterRole" && v["kind"] != "Role" {
            continue;
        }
        let mut set = BTreeSet::new();
        for rule in v["rules"].as_array().into_iter().flatten() {
            for g in rule["apiGroups"].as_array().into_iter().flatten() {
                for r in rule["resources"].as_array().into_iter().flatten() {
                    for verb in rule["verbs"].as_array().into_iter().flatten() {
                        set.insert((
                            verb.as_str().unwrap_or_default().to_string(),
                            g.as_str().unwrap_or_default().to_string(),
                            r.as_str().unwrap_or_default().to_string(),
                        ));
                    }
                }
            }
        }
        out.entry(
            v["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
        .or_insert_with(BTreeSet::new)
        .extend(set);
    }
    out
}

fn kubectl(kubeconfig: &std::path::Path, args: &[&str]) -> String {
    testbed::process::kubectl(kubeconfig, args).expect("kubectl")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_function_uses_exactly_what_its_cluster_role_grants() {
    let c = Cluster::start().await.expect("cluster");
    // Streaming lists refused (kube-apiserver with WatchList off): each watch then asks for
    // one (a `watch`) and falls back to paged lists (the `list` it is granted for), so every
    // verb a function may need on some cluster is used here. Where streaming lists are served,
    // `list` goes unused, but a role without it breaks on every cluster that refuses them.
    c.api.watch_list(false);
    c.namespace("image-backup").await.expect("namespace");
    kubectl(
        c.kubeconfig.path(),
        &["-n", "image-backup", "apply", "-f", &rbac_yaml()],
    );

    // Workloads that make every function use all it may: an external image read with a pull
    // secret (backup reads the Secret; every workload names it, whichever is copied first),
    // used twice (the second request finds the ImageBackup there and reads it), an invalid
    // image (the watcher records an Event).
    let pushed = c
        .source_pusher()
        .push_image(
            "team/app",
            "1.0",
            &ImageSpec::multi_arch(Format::Oci, 2, 8 * 1024, 1),
        )
        .await
        .expect("push");
    c.namespace("shop").await.expect("namespace");
    let src = c.source.host();
    // The source registry is anonymous and ignores credentials; the backup function reads the
    // secret all the same.
    c.pull_secret("shop", "regcred", &src, "bot", "s4ssw")
        .await
        .expect("secret");
    let deployments: Api<Deployment> = Api::namespaced(c.client.clone(), "shop");
    for (name, image) in [
        ("app", format!("{src}/team/app:1.0")),
        ("app-two", format!("{src}/team/app:1.0")),
        ("broken", "Not/A Valid:Ref".to_string()),
    ] {
        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"imagePullSecrets": [{"name": "regcred"}],
                                           "containers": [{"name": name, "image": image}]}}}
        }))
        .expect("deployment");
        deployments
            .create(&PostParams::default(), &d)
            .await
            .expect("create");
    }

    let ds: DaemonSet = serde_json::from_value(json!({
        "metadata": {"name": "agent"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}},
                 "template": {"metadata": {"labels": {"app": "agent"}},
                              "spec": {"imagePullSecrets": [{"name": "regcred"}],
                                       "containers": [{"name": "agent", "image": format!("{src}/team/app:1.0")}]}}}
    }))
    .expect("daemonset");
    let daemonsets: Api<DaemonSet> = Api::namespaced(c.client.clone(), "shop");
    daemonsets
        .create(&PostParams::default(), &ds)
        .await
        .expect("create");

    // Each function as its service account; anonymous requests refused from now on.
    let mut kubeconfigs = Vec::new();
    for function in ["watcher", "backup", "rollout"] {
        let (_, file) = c
            .service_account_kubeconfig("image-backup", function)
            .expect("kubeconfig");
        kubeconfigs.push(file);
    }
    c.api.require_authentication(true);
    c.api.reset_audit_log();
    let own = |i: usize| ("KUBECONFIG", kubeconfigs[i].path().display().to_string());
    let watcher = c
        .spawn("watcher", &["run"], &[own(0)])
        .await
        .expect("watcher");
    let backup = c
        .spawn(
            "backup",
            &["run"],
            &[own(1), ("COMPLETED_TTL_SECONDS", "3".into())],
        )
        .await
        .expect("backup");
    // The rollout copies its pull secret into the workloads' namespace.
    c.pull_secret(
        "image-backup",
        "backup-pull",
        &c.backup.host(),
        "puller",
        "pw",
    )
    .await
    .expect("pull secret");
    let rollout = c
        .spawn(
            "rollout",
            &["run"],
            &[
                own(2),
                ("BACKUP_PULL_SECRET", "backup-pull".into()),
                ("POD_NAMESPACE", "image-backup".into()),
            ],
        )
        .await
        .expect("rollout");

    // The external image is backed up and rolled out; the Completed ImageBackup then expires.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let logs = || {
        format!(
            "{}\n---\n{}\n---\n{}",
            watcher.log(),
            backup.log(),
            rollout.log()
        )
    };
    loop {
        let image = c
            .image_of::<Deployment>("shop", "app")
            .await
            .unwrap_or_default();
        let agent = c
            .image_of::<DaemonSet>("shop", "agent")
            .await
            .unwrap_or_default();
        let left = Api::<ImageBackup>::all(c.client.clone())
            .list(&Default::default())
            .await
            .map(|l| l.items.len())
            .unwrap_or(usize::MAX);
        if image.ends_with(&pushed.digest) && agent.ends_with(&pushed.digest) && left == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never rolled out and expired:\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The watcher's InvalidImage Event for the broken workload.
    let events = kubectl(
        c.kubeconfig.path(),
        &[
            "-n",
            "shop",
            "get",
            "events",
            "-o",
            "jsonpath={.items[*].reason}",
        ],
    );
    assert!(events.contains("InvalidImage"), "{events}");
    drop((watcher, backup, rollout));

    // Compare the audit log with the grants.
    let roles = grants();
    let mut used: BTreeMap<String, BTreeSet<Grant>> = BTreeMap::new();
    for entry in c.api.audit_log() {
        let Some(function) = entry
            .user
            .strip_prefix("system:serviceaccount:image-backup:")
        else {
            continue;
        };
        assert!(
            entry.code != 401 && entry.code != 403,
            "{function} was refused {:?} ({})",
            entry.attributes,
            entry.code
        );
        let a = entry.attributes;
        let resource = if a.subresource.is_empty() {
            a.resource
        } else {
            format!("{}/{}", a.resource, a.subresource)
        };
        used.entry(function.to_string())
            .or_default()
            .insert((a.verb, a.group, resource));
    }
    // A repeated Event is patched (a series); one run records each Event once. A pull secret
    // copy is updated only when its source changes; the Pods of a workload are listed only when
    // it is slow to become Ready.
    let only_on_repeat: [Grant; 3] = [
        ("patch".into(), "events.k8s.io".into(), "events".into()),
        ("update".into(), "".into(), "secrets".into()),
        ("list".into(), "".into(), "pods".into()),
    ];
    for function in ["watcher", "backup", "rollout"] {
        let granted = &roles[&format!("image-backup-{function}")];
        let used = used.get(function).cloned().unwrap_or_default();
        let beyond: Vec<_> = used.difference(granted).collect();
        assert!(
            beyond.is_empty(),
            "{function} used what it is not granted: {beyond:?}"
        );
        let unused: Vec<_> = granted
            .difference(&used)
            .filter(|g| !only_on_repeat.contains(g))
            .collect();
        assert!(
            unused.is_empty(),
            "{function} is granted what it never used: {unused:?}; used {used:?}"
        );
    }
}

/// A grant missing from the backup's role (here `imagebackups/status` update) is a refusal no
/// retry heals: the backup records it once — `api_refused_total{code="403"}`, a Warning Event
/// `ApiRefused` on the workload saying what it could not do — and acks the event instead of
/// asking for it again every few seconds forever.
#[tokio::test(flavor = "multi_thread")]
async fn a_refusal_no_retry_heals_is_recorded_once_not_retried() {
    let c = Cluster::start().await.expect("cluster");
    c.namespace("image-backup").await.expect("namespace");
    let rbac = std::fs::read_to_string(rbac_yaml()).expect("rbac.yaml");
    let status_rule = "  - apiGroups: [\"k8slab.io\"]\n    resources: [\"imagebackups/status\"]\n    verbs: [\"update\"]\n";
    assert!(rbac.contains(status_rule), "the backup's status grant");
    let without = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(without.path(), rbac.replacen(status_rule, "", 1)).expect("write");
    kubectl(
        c.kubeconfig.path(),
        &[
            "-n",
            "image-backup",
            "apply",
            "-f",
            without.path().to_str().unwrap(),
        ],
    );
    c.push_small("team/app", "1.0", 41).await.expect("push");
    let src = c.source.host();
    c.deployment("shop", "app", &format!("{src}/team/app:1.0"))
        .await
        .expect("deployment");
    let (_, kubeconfig) = c
        .service_account_kubeconfig("image-backup", "backup")
        .expect("kubeconfig");
    let backup = c
        .spawn(
            "backup",
            &["run"],
            &[("KUBECONFIG", kubeconfig.path().display().to_string())],
        )
        .await
        .expect("backup");
    let _watcher = c
        .spawn("watcher", &["run"], &[("RESYNC_SECONDS", "3600".into())])
        .await
        .expect("watcher");
    let metric = |text: &str, name: &str| -> Option<u64> {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .map(|v| v as u64)
    };
    let refused = "imagebackup_backup_api_refused_total{code=\"403\"}";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let text = backup.admin_get("/metrics").await.unwrap_or_default().1;
        if metric(&text, refused).unwrap_or(0) >= 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no refusal recorded:\n{}",
            backup.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The Event is recorded after the counter moves (one more API call): wait for it, bounded.
    let event = loop {
        let events: Vec<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(c.client.clone(), "shop")
                .list(&Default::default())
                .await
                .expect("events")
                .items;
        if let Some(e) = events
            .iter()
            .find(|e| e.reason.as_deref() == Some("ApiRefused"))
        {
            break e.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "an ApiRefused Event on the workload: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        event.regarding.as_ref().and_then(|r| r.name.as_deref()),
        Some("app")
    );
    let note = event.note.clone().unwrap_or_default();
    assert!(note.contains("403") && note.contains("team/app"), "{note}");
    // Not asked for again: a retry used to come every 5 s.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let text = backup.admin_get("/metrics").await.unwrap_or_default().1;
    assert_eq!(
        metric(&text, "imagebackup_backup_redeliveries_total"),
        Some(0),
        "{text}"
    );
}
