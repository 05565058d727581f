//! The test API server as a small cluster a person drives with kubectl (imperative commands in
//! protobuf, rollouts with ReplicaSets and Pods, describe with Events, explain, dry runs,
//! auth can-i, namespace deletion), kube-rs paging through a long list, protobuf requests,
//! answers and watches with k8s-pb, and RBAC with the audit log.

use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{ListParams, PostParams};
use prost::Message;
use serde_json::json;
use testbed::ApiServer;
use testbed::apiserver::auth::User;

struct Kubectl {
    kubeconfig: tempfile::NamedTempFile,
}

impl Kubectl {
    fn new(config: &str) -> Self {
        let kubeconfig = tempfile::NamedTempFile::new().expect("tmp");
        std::fs::write(kubeconfig.path(), config).expect("kubeconfig");
        Self { kubeconfig }
    }

    /// Runs kubectl; returns (success, stdout, stderr).
    fn try_run(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", self.kubeconfig.path())
            .env(
                "KUBECACHEDIR",
                testbed::process::kubectl_cache_dir(self.kubeconfig.path()),
            )
            .output()
            .expect("kubectl runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs kubectl, which must succeed without printing a warning.
    fn run(&self, args: &[&str]) -> String {
        let (ok, stdout, stderr) = self.try_run(args);
        assert!(ok, "kubectl {args:?} failed: {stderr}");
        assert!(
            !stderr.to_lowercase().contains("warning"),
            "kubectl {args:?} warned: {stderr}"
        );
        stdout
    }

    /// `kubectl auth can-i VERB RESOURCE -n NAMESPACE`: "yes" or "no".
    fn can_i(&self, verb: &str, resource: &str, namespace: &str) -> String {
        let (_, out, _) = self.try_run(&["auth", "can-i", verb, resource, "-n", namespace]);
        out.trim().to_string()
    }

    /// Runs kubectl until `check` holds for its output (the simulation settles within ms).
    async fn until(&self, args: &[&str], check: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let out = self.run(args);
            if check(&out) {
                return out;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "kubectl {args:?} never showed what was expected; last:\n{out}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// `kubectl -n demo get OBJECT -o jsonpath=PATH`.
fn demo_get(k: &Kubectl, object: &str, path: &str) -> String {
    k.run(&[
        "-n",
        "demo",
        "get",
        object,
        "-o",
        &format!("jsonpath={path}"),
    ])
}

/// The image of the first container of Deployment demo/web.
fn deployed_image(k: &Kubectl) -> String {
    k.run(&[
        "-n",
        "demo",
        "get",
        "deploy",
        "web",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image}",
    ])
}

fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_drives_the_cluster_with_kubectl() {
    let api = ApiServer::start().await.expect("api");
    let k = Kubectl::new(&api.kubeconfig());

    // Imperative commands send protobuf.
    assert!(
        k.run(&["create", "namespace", "demo"])
            .contains("namespace/demo created")
    );
    k.run(&[
        "-n",
        "demo",
        "create",
        "deployment",
        "web",
        "--image=nginx:1.25",
        "--replicas=2",
    ]);
    k.run(&[
        "-n",
        "demo",
        "create",
        "configmap",
        "settings",
        "--from-literal=mode=fast",
    ]);
    k.run(&[
        "-n",
        "demo",
        "create",
        "secret",
        "generic",
        "creds",
        "--from-literal=password=hunter2",
    ]);
    k.run(&["-n", "demo", "create", "serviceaccount", "bot"]);
    let cm = k.run(&[
        "-n",
        "demo",
        "get",
        "configmap",
        "settings",
        "-o",
        "jsonpath={.data.mode}",
    ]);
    assert_eq!(cm, "fast");
    let secret = k.run(&[
        "-n",
        "demo",
        "get",
        "secret",
        "creds",
        "-o",
        "jsonpath={.data.password}",
    ]);
    assert_eq!(
        secret, "aHVudGVyMg==",
        "bytes arrive base64-encoded as in JSON"
    );

    // Defaults as kube-apiserver fills them in.
    let strategy = k.run(&["-n", "demo", "get", "deploy", "web", "-o",
        "jsonpath={.spec.strategy.type} {.spec.revisionHistoryLimit} {.spec.template.spec.containers[0].imagePullPolicy} {.spec.template.spec.dnsPolicy}"]);
    assert_eq!(strategy, "RollingUpdate 10 IfNotPresent ClusterFirst");

    // ReplicaSets and Pods: two Running pods on the simulated nodes.
    let pods = k
        .until(&["-n", "demo", "get", "pods", "-o", "wide"], |out| {
            rows(out)
                .iter()
                .filter(|r| r.get(2).map(String::as_str) == Some("Running"))
                .count()
                == 2
        })
        .await;
    for row in rows(&pods) {
        assert!(row[0].starts_with("web-"), "{pods}");
        assert_eq!(row[1], "1/1", "{pods}");
        assert!(row[5].starts_with("10.244."), "pod IP column: {pods}");
        assert!(row[6].starts_with("node-"), "node column: {pods}");
    }
    let all = k.run(&["-n", "demo", "get", "all"]);
    for kind in ["pod/web-", "deployment.apps/web", "replicaset.apps/web-"] {
        assert!(all.contains(kind), "get all shows {kind}: {all}");
    }

    // scale, set image, rollout status/history/undo.
    k.run(&["-n", "demo", "scale", "deployment", "web", "--replicas=3"]);
    k.until(&["-n", "demo", "get", "pods", "--no-headers"], |out| {
        out.lines().count() == 3
    })
    .await;
    k.run(&[
        "-n",
        "demo",
        "set",
        "image",
        "deployment/web",
        "nginx=nginx:1.26",
    ]);
    let status = k.run(&[
        "-n",
        "demo",
        "rollout",
        "status",
        "deployment/web",
        "--timeout=30s",
    ]);
    assert!(status.contains("successfully rolled out"), "{status}");
    let history = k.run(&["-n", "demo", "rollout", "history", "deployment/web"]);
    let revisions: Vec<String> = rows(&history)
        .into_iter()
        .skip(1)
        .filter_map(|r| r.first().cloned())
        .collect();
    assert_eq!(revisions, ["1", "2"], "{history}");
    k.run(&["-n", "demo", "rollout", "undo", "deployment/web"]);
    k.until(
        &["-n", "demo", "rollout", "history", "deployment/web"],
        |out| {
            rows(out)
                .into_iter()
                .skip(1)
                .filter_map(|r| r.first().cloned())
                .collect::<Vec<_>>()
                == ["2", "3"]
        },
    )
    .await;
    let image = deployed_image(&k);
    assert_eq!(image, "nginx:1.25", "undo brings the first template back");
    k.until(
        &[
            "-n",
            "demo",
            "get",
            "pods",
            "-o",
            "jsonpath={.items[*].spec.containers[0].image}",
        ],
        |out| out.split_whitespace().collect::<Vec<_>>() == ["nginx:1.25"; 3],
    )
    .await;
    let wide = k.run(&["-n", "demo", "get", "deploy", "web", "-o", "wide"]);
    assert!(
        wide.contains("CONTAINERS") && wide.contains("nginx:1.25") && wide.contains("app=web"),
        "{wide}"
    );

    // describe shows the controllers' Events (core Events found by involvedObject.*).
    let describe = k.run(&["-n", "demo", "describe", "deployment", "web"]);
    assert!(describe.contains("ScalingReplicaSet"), "{describe}");
    // The rolling updates went in steps (maxSurge and maxUnavailable 25% of 3: one Pod more,
    // none fewer), so an old ReplicaSet went down one Pod at a time.
    assert!(describe.contains("from 3 to 2"), "{describe}");
    assert!(describe.contains("from 1 to 2"), "{describe}");
    assert!(describe.contains("NewReplicaSet:"), "{describe}");

    // Discovery has the built-in kinds a cluster has, with their short names.
    let resources = k.run(&["api-resources", "--no-headers"]);
    for kind in [
        "horizontalpodautoscalers",
        "ingresses",
        "storageclasses",
        "endpointslices",
        "priorityclasses",
        "validatingwebhookconfigurations",
        "certificatesigningrequests",
    ] {
        assert!(
            resources.contains(kind),
            "api-resources lists {kind}: {resources}"
        );
    }
    assert!(
        resources.lines().count() >= 45,
        "{} resources",
        resources.lines().count()
    );

    // explain knows every field of the built-in kinds.
    let explain = k.run(&["explain", "deployment.spec.strategy"]);
    assert!(explain.contains("rollingUpdate"), "{explain}");

    // label, annotate, diff, server-side dry run.
    k.run(&["-n", "demo", "label", "deployment", "web", "tier=frontend"]);
    k.run(&[
        "-n",
        "demo",
        "annotate",
        "deployment",
        "web",
        "owner=team-a",
    ]);
    let labels = k.run(&[
        "-n",
        "demo",
        "get",
        "deploy",
        "-l",
        "tier=frontend",
        "-o",
        "name",
    ]);
    assert_eq!(labels.trim(), "deployment.apps/web");
    let manifest = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(
        manifest.path(),
        serde_json::to_string(&json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "demo"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "nginx", "image": "nginx:1.27"}]}}}
        }))
        .expect("json"),
    )
    .expect("write");
    let path = manifest.path().to_str().expect("utf-8 path");
    let (_, diff, diff_err) = k.try_run(&["diff", "-f", path]);
    assert!(
        diff.contains("+          image: nginx:1.27")
            || diff.contains("+        image: nginx:1.27")
            || diff.contains("nginx:1.27"),
        "diff shows the change: {diff}{diff_err}"
    );
    assert!(!diff_err.to_lowercase().contains("warning"), "{diff_err}");
    k.run(&[
        "-n",
        "demo",
        "create",
        "configmap",
        "draft",
        "--from-literal=a=b",
        "--dry-run=server",
    ]);
    let (found, _, _) = k.try_run(&["-n", "demo", "get", "configmap", "draft"]);
    assert!(!found, "a server-side dry run stores nothing");
    let image = deployed_image(&k);
    assert_eq!(image, "nginx:1.25", "diff changed nothing");
    // apply (client-side: created, then the last-applied annotation and a patch), then
    // server-side apply.
    let declared = tempfile::NamedTempFile::new().expect("tmp");
    let declared_path = declared.path().to_str().expect("path");
    for (image, verb) in [("nginx:1.25", "created"), ("nginx:1.27", "configured")] {
        std::fs::write(
            declared.path(),
            serde_json::to_string(&json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "api", "namespace": "demo"},
                "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "api"}},
                         "template": {"metadata": {"labels": {"app": "api"}},
                                      "spec": {"containers": [{"name": "api", "image": image}]}}}
            }))
            .expect("json"),
        )
        .expect("write");
        let applied = k.run(&["apply", "-f", declared_path]);
        assert!(
            applied.contains(&format!("deployment.apps/api {verb}")),
            "{applied}"
        );
    }
    let rolled = k.run(&[
        "-n",
        "demo",
        "rollout",
        "status",
        "deployment/api",
        "--timeout=30s",
    ]);
    assert!(rolled.contains("successfully rolled out"), "{rolled}");
    let last_applied = demo_get(
        &k,
        "deploy/api",
        "{.metadata.annotations.kubectl\\.kubernetes\\.io/last-applied-configuration}",
    );
    assert!(last_applied.contains("nginx:1.27"), "{last_applied}");
    let settings = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(
        settings.path(),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: applied, namespace: demo}\ndata: {mode: ssa}\n",
    )
    .expect("write");
    let ssa = k.run(&[
        "apply",
        "--server-side",
        "-f",
        settings.path().to_str().expect("path"),
    ]);
    assert!(
        ssa.contains("configmap/applied serverside-applied"),
        "{ssa}"
    );
    assert_eq!(
        k.run(&[
            "-n",
            "demo",
            "get",
            "cm",
            "applied",
            "-o",
            "jsonpath={.data.mode}"
        ]),
        "ssa"
    );
    // Field ownership: server-side apply may not change a field client-side apply manages,
    // unless it forces; then it owns it.
    let owned = k.run(&[
        "-n",
        "demo",
        "get",
        "deploy",
        "api",
        "--show-managed-fields",
        "-o",
        "jsonpath={.metadata.managedFields[*].manager}",
    ]);
    assert!(owned.contains("kubectl-client-side-apply"), "{owned}");
    let scaled = declared_path.to_string();
    let manifest = std::fs::read_to_string(&scaled)
        .expect("manifest")
        .replace("\"replicas\":2", "\"replicas\":4");
    std::fs::write(&scaled, manifest).expect("write");
    let (ok, _, err) = k.try_run(&["apply", "--server-side", "-f", &scaled]);
    assert!(
        !ok && err.contains("conflict with \"kubectl-client-side-apply\"")
            && err.contains(".spec.replicas"),
        "{err}"
    );
    let forced = k.run(&["apply", "--server-side", "--force-conflicts", "-f", &scaled]);
    assert!(forced.contains("serverside-applied"), "{forced}");
    assert_eq!(demo_get(&k, "deploy/api", "{.spec.replicas}"), "4");

    // auth can-i (a SelfSubjectAccessReview in protobuf) for the admin, and RBAC made with the
    // imperative commands, checked by impersonation (`--as`).
    assert_eq!(
        k.run(&["auth", "can-i", "create", "deployments", "-n", "demo"])
            .trim(),
        "yes"
    );
    k.run(&[
        "-n",
        "demo",
        "create",
        "role",
        "reader",
        "--verb=get,list",
        "--resource=pods",
    ]);
    k.run(&[
        "-n",
        "demo",
        "create",
        "rolebinding",
        "jane-reads",
        "--role=reader",
        "--user=jane",
    ]);
    let can = |verb: &str| {
        k.try_run(&["-n", "demo", "auth", "can-i", verb, "pods", "--as=jane"])
            .1
    };
    assert_eq!((can("list").trim(), can("delete").trim()), ("yes", "no"));
    let (ok, _, err) = k.try_run(&["-n", "demo", "delete", "pods", "--all", "--as=jane"]);
    assert!(
        !ok && err.contains("cannot delete resource \"pods\""),
        "{err}"
    );

    // A Service gets a cluster IP and node ports, as the allocators give them.
    k.run(&[
        "-n",
        "demo",
        "create",
        "service",
        "nodeport",
        "web",
        "--tcp=443:8443",
    ]);
    let svc = k.run(&["-n", "demo", "get", "service", "web", "--no-headers"]);
    let cells: Vec<&str> = svc.split_whitespace().collect();
    assert!(cells[2].starts_with("10.96."), "{svc}");
    assert!(
        cells[4].starts_with("443:3") && cells[4].ends_with("/TCP"),
        "{svc}"
    );

    // Deleting the namespace deletes what is in it (and the garbage collector what they own).
    k.run(&["delete", "namespace", "demo", "--timeout=30s"]);
    let (found, _, _) = k.try_run(&["get", "namespace", "demo"]);
    assert!(!found, "the namespace is gone");
    let left = k.run(&[
        "get",
        "pods,replicasets,deployments,configmaps,secrets,events",
        "-A",
        "--no-headers",
    ]);
    assert!(!left.contains("demo"), "nothing of demo is left: {left}");
}

#[tokio::test]
async fn kube_rs_pages_through_1200_deployments() {
    let api = ApiServer::start().await.expect("api");
    api.simulate_workloads(false);
    let deployments: Api<Deployment> = Api::namespaced(api.client().expect("client"), "default");
    for i in 0..1200 {
        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": format!("app-{i:04}")},
            "spec": {"selector": {"matchLabels": {"app": "a"}},
                     "template": {"metadata": {"labels": {"app": "a"}},
                                  "spec": {"containers": [{"name": "a", "image": "nginx"}]}}}
        }))
        .expect("deployment");
        deployments
            .create(&PostParams::default(), &d)
            .await
            .expect("create");
    }
    api.reset_requests();
    let mut names = Vec::new();
    let mut pages = 0;
    let mut token: Option<String> = None;
    let mut first_token = None;
    loop {
        let mut params = ListParams::default().limit(100);
        if let Some(t) = &token {
            params = params.continue_token(t);
        }
        let page = deployments.list(&params).await.expect("page");
        pages += 1;
        assert!(page.items.len() <= 100);
        names.extend(page.items.iter().filter_map(|d| d.metadata.name.clone()));
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if first_token.is_none() {
            first_token = token.clone();
            assert_eq!(page.metadata.remaining_item_count, Some(1100));
        }
        if token.is_none() {
            break;
        }
    }
    assert_eq!(pages, 12);
    let mut sorted = names.clone();
    sorted.dedup();
    assert_eq!(sorted.len(), 1200, "every Deployment once");
    assert_eq!(api.requests().len(), 12, "one request per page");

    // A token from before a compaction is too old: 410, as kube-apiserver answers.
    api.compact();
    let err = deployments
        .list(
            &ListParams::default()
                .limit(100)
                .continue_token(&first_token.expect("token")),
        )
        .await
        .expect_err("expired");
    assert!(
        matches!(err, kube::Error::Api(ref e) if e.code == 410),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_creates_every_kind_it_has_a_command_for() {
    let api = ApiServer::start().await.expect("api");
    let k = Kubectl::new(&api.kubeconfig());
    k.run(&["create", "namespace", "more"]);
    // Each command sends its kind in protobuf and reads the answer in protobuf.
    for args in [
        &[
            "create",
            "job",
            "once",
            "--image=busybox",
            "--",
            "echo",
            "hi",
        ][..],
        &[
            "create",
            "cronjob",
            "nightly",
            "--image=busybox",
            "--schedule=0 3 * * *",
            "--",
            "echo",
            "hi",
        ],
        &[
            "create",
            "pdb",
            "web",
            "--selector=app=web",
            "--min-available=50%",
        ],
        &["create", "ingress", "web", "--rule=example.com/*=web:80"],
        &["create", "quota", "q", "--hard=pods=10,requests.cpu=2"],
        &["create", "service", "nodeport", "edge", "--tcp=80:8080"],
        &["create", "service", "clusterip", "inner", "--tcp=80:8080"],
        &[
            "run",
            "one",
            "--image=nginx:1.25",
            "--port=80",
            "--env=MODE=fast",
        ],
    ] {
        let mut all = vec!["-n", "more"];
        all.extend_from_slice(args);
        k.run(&all);
    }
    k.run(&["create", "priorityclass", "high", "--value=1000"]);
    let get = |what: &str, path: &str| {
        k.run(&["-n", "more", "get", what, "-o", &format!("jsonpath={path}")])
    };
    assert_eq!(get("cronjob/nightly", "{.spec.schedule}"), "0 3 * * *");
    assert_eq!(
        get(
            "job/once",
            "{.spec.backoffLimit} {.spec.template.spec.containers[0].command}"
        ),
        "6 [\"echo\",\"hi\"]"
    );
    assert_eq!(get("pdb/web", "{.spec.minAvailable}"), "50%");
    assert_eq!(
        get(
            "ingress/web",
            "{.spec.rules[0].host} {.spec.rules[0].http.paths[0].backend.service.port.number}"
        ),
        "example.com 80"
    );
    assert_eq!(get("quota/q", "{.spec.hard.requests\\.cpu}"), "2");
    assert_eq!(get("pod/one", "{.spec.containers[0].env[0].value}"), "fast");
    assert_eq!(
        k.run(&["get", "priorityclass", "high", "-o", "jsonpath={.value}"]),
        "1000"
    );
    // Services: a node port only where the type has one, target ports from the command.
    let services = k.run(&["-n", "more", "get", "svc", "--no-headers"]);
    let ports: Vec<(String, String)> = rows(&format!("header\n{services}"))
        .into_iter()
        .map(|r| (r[0].clone(), r[4].clone()))
        .collect();
    assert_eq!(ports[1].0, "inner");
    assert_eq!(ports[1].1, "80/TCP", "{services}");
    assert!(
        ports[0].1.starts_with("80:3") && ports[0].1.ends_with("/TCP"),
        "{services}"
    );
    assert_eq!(get("svc/inner", "{.spec.ports[0].targetPort}"), "8080");
    // A Pod nobody owns is scheduled and runs.
    k.until(
        &[
            "-n",
            "more",
            "get",
            "pod",
            "one",
            "-o",
            "jsonpath={.status.phase} {.spec.nodeName}",
        ],
        |out| out.starts_with("Running node-"),
    )
    .await;
    // A StatefulSet: Pods by ordinal, rolled out.
    let sts = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(
        sts.path(),
        "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: db, namespace: more}\nspec:\n  replicas: 2\n  serviceName: db\n  selector: {matchLabels: {app: db}}\n  template:\n    metadata: {labels: {app: db}}\n    spec: {containers: [{name: db, image: \"postgres:16\"}]}\n",
    )
    .expect("write");
    k.run(&["apply", "-f", sts.path().to_str().expect("path")]);
    let rolled = k.run(&["-n", "more", "rollout", "status", "sts/db", "--timeout=30s"]);
    assert!(
        rolled.contains("roll out complete") || rolled.contains("rolling update complete"),
        "{rolled}"
    );
    k.until(
        &["-n", "more", "get", "pods", "-l", "app=db", "-o", "name"],
        |out| out.lines().collect::<Vec<_>>() == ["pod/db-0", "pod/db-1"],
    )
    .await;
    assert_eq!(
        k.run(&["-n", "more", "get", "sts", "db", "--no-headers"])
            .split_whitespace()
            .nth(1),
        Some("2/2")
    );
    // kube-apiserver's columns, and a Job that runs to completion.
    k.until(
        &["-n", "more", "get", "job", "once", "--no-headers"],
        |out| out.contains("Complete") && out.contains("1/1"),
    )
    .await;
    let header = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["-n", "more", "get"];
        all.extend_from_slice(args);
        let out = k.run(&all);
        out.lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        header(&["jobs"]),
        ["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"]
    );
    assert_eq!(
        header(&["cronjobs"]),
        [
            "NAME", "SCHEDULE", "TIMEZONE", "SUSPEND", "ACTIVE", "LAST", "SCHEDULE", "AGE"
        ]
    );
    assert_eq!(
        header(&["ingress"]),
        ["NAME", "CLASS", "HOSTS", "ADDRESS", "PORTS", "AGE"]
    );
    assert_eq!(
        header(&["pdb"]),
        [
            "NAME",
            "MIN",
            "AVAILABLE",
            "MAX",
            "UNAVAILABLE",
            "ALLOWED",
            "DISRUPTIONS",
            "AGE"
        ]
    );
    assert_eq!(
        header(&["priorityclass"]),
        ["NAME", "VALUE", "GLOBAL-DEFAULT", "AGE", "PREEMPTIONPOLICY"]
    );
    let pdb = k.run(&["-n", "more", "get", "pdb", "web", "--no-headers"]);
    assert_eq!(
        pdb.split_whitespace().take(3).collect::<Vec<_>>(),
        ["web", "50%", "N/A"],
        "{pdb}"
    );
    // What kubectl reads back has what kube-apiserver would show, not Go's zero values.
    let yaml = k.run(&["-n", "more", "get", "pod", "one", "-o", "yaml"]);
    for absent in ["stdin:", "tty:", "hostPID:", "generation: 0", ": null"] {
        assert!(!yaml.contains(absent), "{absent} in\n{yaml}");
    }
}

const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";

/// `k8s\0` + `runtime.Unknown` around a k8s-pb message.
fn envelope(api_version: &str, kind: &str, message: &impl Message) -> Vec<u8> {
    use k8s_pb::apimachinery::pkg::runtime::{TypeMeta, Unknown};
    let unknown = Unknown {
        type_meta: Some(TypeMeta {
            api_version: Some(api_version.into()),
            kind: Some(kind.into()),
        }),
        raw: Some(message.encode_to_vec()),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    let mut body = b"k8s\0".to_vec();
    body.extend(unknown.encode_to_vec());
    body
}

/// The kind and the raw message of a protobuf answer.
fn open_envelope(body: &[u8]) -> (String, Vec<u8>) {
    use k8s_pb::apimachinery::pkg::runtime::Unknown;
    let rest = body.strip_prefix(b"k8s\0").expect("the k8s\\0 prefix");
    let unknown = Unknown::decode(rest).expect("an Unknown envelope");
    (
        unknown.type_meta.and_then(|t| t.kind).unwrap_or_default(),
        unknown.raw.unwrap_or_default(),
    )
}

/// Sends a request that prefers protobuf; returns (status, content type, body).
async fn protobuf_request(
    request: reqwest::RequestBuilder,
    accept: &str,
) -> (u16, String, Vec<u8>) {
    let response = request
        .header("accept", accept)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|c| c.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = response.bytes().await.expect("body").to_vec();
    (status, content_type, body)
}

#[tokio::test]
async fn protobuf_requests_and_answers_for_built_in_kinds() {
    use k8s_pb::api::apps::v1 as apps;
    use k8s_pb::api::batch::v1 as batch;
    use k8s_pb::api::core::v1 as core;
    use k8s_pb::api::policy::v1 as policy;
    use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
    use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;
    shared::tls::ensure_crypto_provider();
    let api = ApiServer::start().await.expect("api");
    let http = reqwest::Client::new();
    let accept = format!("{PROTOBUF}, */*");
    let labels: std::collections::BTreeMap<String, String> =
        [("app".to_string(), "db".to_string())].into();
    let template = core::PodTemplateSpec {
        metadata: Some(meta::ObjectMeta {
            labels: labels.clone(),
            ..Default::default()
        }),
        spec: Some(core::PodSpec {
            containers: vec![core::Container {
                name: Some("db".into()),
                image: Some("postgres:16".into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
    };

    // A StatefulSet: created in protobuf, answered in protobuf, with the server's defaults.
    let sts = apps::StatefulSet {
        metadata: Some(meta::ObjectMeta {
            name: Some("db".into()),
            ..Default::default()
        }),
        spec: Some(apps::StatefulSetSpec {
            replicas: Some(0),
            selector: Some(meta::LabelSelector {
                match_labels: labels.clone(),
                ..Default::default()
            }),
            template: Some(template.clone()),
            service_name: Some("db".into()),
            ..Default::default()
        }),
        status: None,
    };
    let url = format!("{}/apis/apps/v1/namespaces/default/statefulsets", api.url());
    let (status, content_type, body) = protobuf_request(
        http.post(&url)
            .header("content-type", PROTOBUF)
            .body(envelope("apps/v1", "StatefulSet", &sts)),
        &accept,
    )
    .await;
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
    assert_eq!(content_type, PROTOBUF);
    let (kind, raw) = open_envelope(&body);
    assert_eq!(kind, "StatefulSet");
    let created = apps::StatefulSet::decode(raw.as_slice()).expect("a StatefulSet");
    let metadata = created.metadata.clone().unwrap_or_default();
    assert!(metadata.uid.is_some_and(|u| !u.is_empty()));
    assert!(metadata.creation_timestamp.is_some());
    let spec = created.spec.clone().unwrap_or_default();
    assert_eq!(spec.replicas, Some(0), "a zero a client set is kept");
    let pod_spec = spec.template.and_then(|t| t.spec).unwrap_or_default();
    assert_eq!(
        pod_spec.restart_policy.as_deref(),
        Some("Always"),
        "defaults"
    );

    // More kinds, each read back in protobuf: a Job, a PodDisruptionBudget (an int-or-string),
    // a ConfigMap with bytes.
    let job = batch::Job {
        metadata: Some(meta::ObjectMeta {
            name: Some("migrate".into()),
            ..Default::default()
        }),
        spec: Some(batch::JobSpec {
            backoff_limit: Some(0),
            template: Some(core::PodTemplateSpec {
                spec: Some(core::PodSpec {
                    restart_policy: Some("Never".into()),
                    ..template.spec.clone().unwrap_or_default()
                }),
                ..template.clone()
            }),
            ..Default::default()
        }),
        status: None,
    };
    let pdb = policy::PodDisruptionBudget {
        metadata: Some(meta::ObjectMeta {
            name: Some("db".into()),
            ..Default::default()
        }),
        spec: Some(policy::PodDisruptionBudgetSpec {
            min_available: Some(IntOrString {
                r#type: Some(1),
                int_val: Some(0),
                str_val: Some("50%".into()),
            }),
            selector: Some(meta::LabelSelector {
                match_labels: labels.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    };
    let cm = core::ConfigMap {
        metadata: Some(meta::ObjectMeta {
            name: Some("blobs".into()),
            ..Default::default()
        }),
        binary_data: [("blob".to_string(), vec![0u8, 1, 2, 255])].into(),
        ..Default::default()
    };
    for (path, api_version, kind, body) in [
        (
            "apis/batch/v1/namespaces/default/jobs",
            "batch/v1",
            "Job",
            envelope("batch/v1", "Job", &job),
        ),
        (
            "apis/policy/v1/namespaces/default/poddisruptionbudgets",
            "policy/v1",
            "PodDisruptionBudget",
            envelope("policy/v1", "PodDisruptionBudget", &pdb),
        ),
        (
            "api/v1/namespaces/default/configmaps",
            "v1",
            "ConfigMap",
            envelope("v1", "ConfigMap", &cm),
        ),
    ] {
        let (status, _, answer) = protobuf_request(
            http.post(format!("{}/{path}", api.url()))
                .header("content-type", PROTOBUF)
                .body(body),
            &accept,
        )
        .await;
        assert_eq!(
            status,
            201,
            "{api_version} {kind}: {}",
            String::from_utf8_lossy(&answer)
        );
        assert_eq!(open_envelope(&answer).0, kind);
    }
    let get = |path: &str| http.get(format!("{}/{path}", api.url()));
    let (_, _, body) = protobuf_request(
        get("apis/batch/v1/namespaces/default/jobs/migrate"),
        &accept,
    )
    .await;
    let job_back = batch::Job::decode(open_envelope(&body).1.as_slice()).expect("a Job");
    assert_eq!(job_back.spec.and_then(|s| s.backoff_limit), Some(0));
    let (_, _, body) = protobuf_request(
        get("apis/policy/v1/namespaces/default/poddisruptionbudgets/db"),
        &accept,
    )
    .await;
    let pdb_back =
        policy::PodDisruptionBudget::decode(open_envelope(&body).1.as_slice()).expect("a PDB");
    let min = pdb_back
        .spec
        .and_then(|s| s.min_available)
        .unwrap_or_default();
    assert_eq!((min.r#type, min.str_val.as_deref()), (Some(1), Some("50%")));
    let stored = Api::<ConfigMap>::namespaced(api.client().expect("client"), "default")
        .get("blobs")
        .await
        .expect("get as JSON");
    assert_eq!(
        stored.binary_data.unwrap_or_default()["blob"].0,
        vec![0u8, 1, 2, 255],
        "bytes read back as JSON"
    );

    // A list, and a 404 as a protobuf Status.
    let (_, _, body) =
        protobuf_request(get("apis/apps/v1/namespaces/default/statefulsets"), &accept).await;
    let (kind, raw) = open_envelope(&body);
    assert_eq!(kind, "StatefulSetList");
    let list = apps::StatefulSetList::decode(raw.as_slice()).expect("a list");
    assert_eq!(list.items.len(), 1);
    assert!(list.metadata.and_then(|m| m.resource_version).is_some());
    let (status, _, body) = protobuf_request(
        get("apis/apps/v1/namespaces/default/statefulsets/nope"),
        &accept,
    )
    .await;
    assert_eq!(status, 404);
    let (kind, raw) = open_envelope(&body);
    assert_eq!(kind, "Status");
    let not_found = meta::Status::decode(raw.as_slice()).expect("a Status");
    assert_eq!(
        (not_found.code, not_found.reason.as_deref()),
        (Some(404), Some("NotFound"))
    );

    // A watch in protobuf: length-prefixed WatchEvents, each object in its own envelope.
    let (status, content_type, body) = protobuf_request(
        get("apis/apps/v1/namespaces/default/statefulsets?watch=true&timeoutSeconds=1"),
        &accept,
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with(PROTOBUF) && content_type.contains("stream=watch"),
        "{content_type}"
    );
    let length = u32::from_be_bytes(body[..4].try_into().expect("a length")) as usize;
    let event = meta::WatchEvent::decode(&body[4..4 + length]).expect("a WatchEvent");
    assert_eq!(event.r#type.as_deref(), Some("ADDED"));
    let (kind, raw) = open_envelope(&event.object.and_then(|o| o.raw).unwrap_or_default());
    assert_eq!(kind, "StatefulSet");
    let watched = apps::StatefulSet::decode(raw.as_slice()).expect("a StatefulSet");
    assert_eq!(watched.metadata.and_then(|m| m.name).as_deref(), Some("db"));

    // JSON stays the default; custom resources have no protobuf form: JSON for a client that
    // also takes JSON, 406 for one that takes only protobuf.
    let (_, content_type, _) = protobuf_request(
        get("apis/apps/v1/namespaces/default/statefulsets"),
        "application/json",
    )
    .await;
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
                 "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                 "versions": [{"name": "v1", "served": true, "storage": true,
                               "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}});
    let created = http
        .post(format!(
            "{}/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            api.url()
        ))
        .json(&crd)
        .send()
        .await
        .expect("post");
    assert_eq!(created.status(), 201);
    let widgets = "apis/example.com/v1/namespaces/default/widgets";
    let (status, content_type, _) = protobuf_request(get(widgets), &accept).await;
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let (status, _, _) = protobuf_request(get(widgets), PROTOBUF).await;
    assert_eq!(status, 406);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_grants_exactly_what_a_role_says_and_the_audit_log_shows_it() {
    let api = ApiServer::start().await.expect("api");
    api.require_authentication(true);
    let admin = Kubectl::new(&api.kubeconfig());
    admin.run(&["create", "namespace", "team-a"]);
    admin.run(&["create", "namespace", "team-b"]);
    for ns in ["team-a", "team-b"] {
        admin.run(&[
            "-n",
            ns,
            "create",
            "deployment",
            "web",
            "--image=nginx:1.25",
        ]);
    }
    let rbac = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(
        rbac.path(),
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: reader, namespace: team-a}\nrules:\n- apiGroups: [apps]\n  resources: [deployments]\n  verbs: [get]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: jane-reads, namespace: team-a}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: reader}\nsubjects: [{kind: User, name: jane}]\n",
    )
    .expect("write");
    admin.run(&["apply", "-f", rbac.path().to_str().expect("path")]);

    let token = api.issue_token(User {
        name: "jane".into(),
        groups: vec!["system:authenticated".into()],
    });
    let jane = Kubectl::new(&api.kubeconfig_with_token(&token));
    api.reset_audit_log();
    assert!(
        jane.run(&["-n", "team-a", "get", "deployment", "web", "-o", "name"])
            .contains("web")
    );
    let (ok, _, err) = jane.try_run(&["-n", "team-b", "get", "deployment", "web"]);
    assert!(
        !ok && err.contains("forbidden")
            && err.contains("User \"jane\" cannot get resource \"deployments\""),
        "{err}"
    );
    let (ok, _, err) = jane.try_run(&["-n", "team-a", "label", "deployment", "web", "x=y"]);
    assert!(!ok && err.contains("cannot patch"), "{err}");
    assert_eq!(jane.can_i("get", "deployments", "team-a"), "yes");
    assert_eq!(jane.can_i("get", "deployments", "team-b"), "no");
    assert_eq!(jane.can_i("patch", "deployments", "team-a"), "no");

    // The cluster's default roles: `view` (aggregated from the aggregate-to-view roles) bound in
    // team-b lets jane read Deployments there, not Secrets, and change nothing; a ClusterRole
    // labelled aggregate-to-view (as a CRD's maintainers ship one) joins `view` at once.
    admin.run(&[
        "apply",
        "-f",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../crds/imagebackup.yaml"),
    ]);
    admin.run(&[
        "-n",
        "team-b",
        "create",
        "rolebinding",
        "jane-views",
        "--clusterrole=view",
        "--user=jane",
    ]);
    assert_eq!(jane.can_i("list", "deployments", "team-b"), "yes");
    assert_eq!(jane.can_i("get", "secrets", "team-b"), "no");
    assert_eq!(jane.can_i("delete", "deployments", "team-b"), "no");
    assert_eq!(jane.can_i("list", "imagebackups.k8slab.io", "team-b"), "no");
    let aggregated = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(
        aggregated.path(),
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: imagebackups-view\n  labels: {rbac.authorization.k8s.io/aggregate-to-view: \"true\"}\nrules:\n- apiGroups: [k8slab.io]\n  resources: [imagebackups]\n  verbs: [get, list, watch]\n",
    )
    .expect("write");
    admin.run(&["apply", "-f", aggregated.path().to_str().expect("path")]);
    assert_eq!(
        jane.can_i("list", "imagebackups.k8slab.io", "team-b"),
        "yes"
    );
    let view = admin.run(&[
        "get",
        "clusterrole",
        "view",
        "-o",
        "jsonpath={.rules[*].resources}",
    ]);
    assert!(
        view.contains("imagebackups") && view.contains("deployments"),
        "{view}"
    );
    // Non-resource URLs: discovery and /version for every authenticated user, nothing else.
    assert!(
        jane.run(&["get", "--raw", "/version"])
            .contains("gitVersion")
    );
    let (ok, _, err) = jane.try_run(&["get", "--raw", "/metrics"]);
    assert!(!ok && err.contains("cannot get path \"/metrics\""), "{err}");

    // An unknown token and no token at all are 401 once authentication is required.
    let stranger = Kubectl::new(&api.kubeconfig_with_token("not-a-token"));
    let (ok, _, err) = stranger.try_run(&["get", "namespaces"]);
    // kubectl words a 401 during discovery as client-go's "provide credentials".
    assert!(
        !ok && (err.contains("Unauthorized") || err.contains("provide credentials")),
        "{err}"
    );
    shared::tls::ensure_crypto_provider();
    let anonymous = reqwest::get(format!("{}/api/v1/namespaces", api.url()))
        .await
        .expect("get");
    assert_eq!(anonymous.status(), 401);

    // The audit log has jane's requests with their answers.
    let audit: Vec<_> = api
        .audit_log()
        .into_iter()
        .filter(|e| e.user == "jane")
        .map(|e| {
            (
                e.attributes.verb,
                e.attributes.namespace,
                e.attributes.resource,
                e.code,
            )
        })
        .collect();
    for want in [
        (
            "get".to_string(),
            "team-a".to_string(),
            "deployments".to_string(),
            200,
        ),
        ("get".into(), "team-b".into(), "deployments".into(), 403),
        ("patch".into(), "team-a".into(), "deployments".into(), 403),
    ] {
        assert!(audit.contains(&want), "audit log has {want:?}: {audit:?}");
    }
}
