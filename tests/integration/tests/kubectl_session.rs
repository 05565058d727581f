//! The test API server as a small cluster a person drives with kubectl (imperative commands in
//! protobuf, rollouts with ReplicaSets and Pods, describe with Events, explain, dry runs,
//! auth can-i, namespace deletion), kube-rs paging through a long list, a protobuf round trip
//! with k8s-pb, and RBAC with the audit log.

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

#[tokio::test]
async fn a_protobuf_body_from_k8s_pb_round_trips() {
    use k8s_pb::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use k8s_pb::apimachinery::pkg::runtime::{TypeMeta, Unknown};
    shared::tls::ensure_crypto_provider();
    let api = ApiServer::start().await.expect("api");
    let cm = k8s_pb::api::core::v1::ConfigMap {
        metadata: Some(ObjectMeta {
            name: Some("from-protobuf".into()),
            labels: [("app".to_string(), "web".to_string())].into(),
            ..Default::default()
        }),
        data: [("key".to_string(), "value".to_string())].into(),
        binary_data: [("blob".to_string(), vec![0u8, 1, 2, 255])].into(),
        ..Default::default()
    };
    let envelope = Unknown {
        type_meta: Some(TypeMeta {
            api_version: Some("v1".into()),
            kind: Some("ConfigMap".into()),
        }),
        raw: Some(cm.encode_to_vec()),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    let mut body = b"k8s\0".to_vec();
    body.extend(envelope.encode_to_vec());
    let response = reqwest::Client::new()
        .post(format!(
            "{}/api/v1/namespaces/default/configmaps",
            api.url()
        ))
        .header("content-type", "application/vnd.kubernetes.protobuf")
        .body(body)
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 201);
    let stored = Api::<ConfigMap>::namespaced(api.client().expect("client"), "default")
        .get("from-protobuf")
        .await
        .expect("get as JSON");
    assert_eq!(stored.metadata.labels.unwrap_or_default()["app"], "web");
    assert_eq!(stored.data.unwrap_or_default()["key"], "value");
    assert_eq!(
        stored.binary_data.unwrap_or_default()["blob"].0,
        vec![0u8, 1, 2, 255]
    );
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
    assert_eq!(
        jane.try_run(&["auth", "can-i", "get", "deployments", "-n", "team-a"])
            .1
            .trim(),
        "yes"
    );
    assert_eq!(
        jane.try_run(&["auth", "can-i", "get", "deployments", "-n", "team-b"])
            .1
            .trim(),
        "no"
    );
    assert_eq!(
        jane.try_run(&["auth", "can-i", "patch", "deployments", "-n", "team-a"])
            .1
            .trim(),
        "no"
    );

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
