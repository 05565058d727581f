//! The test API server refuses what kube-apiserver refuses (issue table: each row's status code
//! and reason, measured against a real kube-apiserver v1.36), prunes what it prunes, and warns
//! where it warns; the product's own writes pass (every end-to-end test runs through this
//! admission).

use reqwest::StatusCode;
use serde_json::{Value, json};
use testbed::ApiServer;

struct Server {
    api: ApiServer,
    http: reqwest::Client,
}

impl Server {
    async fn start() -> Self {
        let api = ApiServer::start().await.expect("api server");
        api.install_imagebackup_crd().await.expect("crd");
        Self {
            api,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: &str,
        body: Value,
    ) -> (StatusCode, Value, Vec<String>) {
        let resp = self
            .http
            .request(method, format!("{}{path}", self.api.url()))
            .header("content-type", content_type)
            .body(body.to_string())
            .send()
            .await
            .expect("request");
        let status = resp.status();
        let warnings = resp
            .headers()
            .get_all("warning")
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect();
        let body = resp.json().await.unwrap_or(Value::Null);
        (status, body, warnings)
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value, Vec<String>) {
        self.send(reqwest::Method::POST, path, "application/json", body)
            .await
    }

    async fn merge(&self, path: &str, body: Value) -> (StatusCode, Value, Vec<String>) {
        self.send(
            reqwest::Method::PATCH,
            path,
            "application/merge-patch+json",
            body,
        )
        .await
    }
}

const IBS: &str = "/apis/k8slab.io/v1alpha1/imagebackups";

fn ib(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "k8slab.io/v1alpha1", "kind": "ImageBackup", "metadata": {"name": name}, "spec": spec})
}

fn deployment(name: &str, template_labels: Value, containers: Value) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
           "spec": {"selector": {"matchLabels": {"app": name}},
                    "template": {"metadata": {"labels": template_labels}, "spec": {"containers": containers}}}})
}

#[tokio::test]
async fn the_writes_kube_apiserver_refuses_are_refused_here() {
    let s = Server::start().await;
    // spec.source: 123 → 422 Invalid on spec.source.
    let (code, body, _) = s
        .post(IBS, ib("bad-type", json!({"source": 123, "target": "t"})))
        .await;
    assert_eq!(
        (code.as_u16(), body["reason"].as_str()),
        (422, Some("Invalid")),
        "{body}"
    );
    assert_eq!(body["details"]["causes"][0]["field"], "spec.source");
    // An unknown spec field under kubectl's default strict validation → 400 BadRequest.
    let (code, body, _) = s
        .post(
            &format!("{IBS}?fieldValidation=Strict"),
            ib("unknown", json!({"source": "s", "target": "t", "bogus": 1})),
        )
        .await;
    assert_eq!(
        (code.as_u16(), body["reason"].as_str()),
        (400, Some("BadRequest")),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("unknown field \"spec.bogus\""),
        "{body}"
    );
    // Without Strict the field is dropped with a warning.
    let (code, body, warnings) = s
        .post(
            IBS,
            ib("warned", json!({"source": "s", "target": "t", "bogus": 1})),
        )
        .await;
    assert_eq!(code.as_u16(), 201, "{body}");
    assert!(body["spec"].get("bogus").is_none());
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("unknown field \\\"spec.bogus\\\"")),
        "{warnings:?}"
    );

    let (code, created, _) = s
        .post(IBS, ib("good", json!({"source": "s", "target": "t"})))
        .await;
    assert_eq!(code.as_u16(), 201, "{created}");
    // A status phase outside the enum → 422 Unsupported value.
    let (code, body, _) = s
        .merge(
            &format!("{IBS}/good/status"),
            json!({"status": {"phase": "Sleeping"}}),
        )
        .await;
    assert_eq!(code.as_u16(), 422, "{body}");
    assert_eq!(
        body["details"]["causes"][0]["reason"],
        "FieldValueNotSupported"
    );
    // A status field the schema lacks → accepted, pruned.
    let (code, body, _) = s
        .merge(
            &format!("{IBS}/good/status"),
            json!({"status": {"phase": "Pending", "mood": "happy"}}),
        )
        .await;
    assert_eq!(code.as_u16(), 200, "{body}");
    assert!(
        body["status"].get("mood").is_none() && body["status"]["phase"] == "Pending",
        "{body}"
    );
    // A status write with a stale resourceVersion → 409 Conflict.
    let stale = created["metadata"]["resourceVersion"].clone();
    let (code, _, _) = s
        .merge(
            &format!("{IBS}/good/status"),
            json!({"metadata": {"resourceVersion": stale}, "status": {"phase": "Copying"}}),
        )
        .await;
    assert_eq!(code.as_u16(), 409);

    // events.k8s.io/v1 Event without eventTime, reportingController, … → 422 Required value.
    let (code, body, _) = s
        .post("/apis/events.k8s.io/v1/namespaces/default/events", json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"}, "type": "Normal"}))
        .await;
    assert_eq!(code.as_u16(), 422, "{body}");
    let fields: Vec<&str> = body["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["field"].as_str())
        .collect();
    for f in [
        "eventTime",
        "reportingController",
        "reportingInstance",
        "action",
        "reason",
    ] {
        assert!(fields.contains(&f), "{f} not reported: {body}");
    }
    // Deployment with no containers, and with a selector that misses the template's labels.
    let deploys = "/apis/apps/v1/namespaces/default/deployments";
    let (code, body, _) = s
        .post(
            deploys,
            deployment("empty", json!({"app": "empty"}), json!([])),
        )
        .await;
    assert_eq!(code.as_u16(), 422, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("spec.template.spec.containers: Required value"),
        "{body}"
    );
    let (code, body, _) = s
        .post(
            deploys,
            deployment(
                "mismatch",
                json!({"app": "other"}),
                json!([{"name": "c", "image": "nginx"}]),
            ),
        )
        .await;
    assert_eq!(code.as_u16(), 422, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("`selector` does not match template `labels`"),
        "{body}"
    );
    // A Deployment's selector is immutable.
    let (code, _, _) = s
        .post(
            deploys,
            deployment(
                "fixed",
                json!({"app": "fixed"}),
                json!([{"name": "c", "image": "nginx"}]),
            ),
        )
        .await;
    assert_eq!(code.as_u16(), 201);
    let (code, body, _) = s
        .merge(&format!("{deploys}/fixed"), json!({"spec": {"selector": {"matchLabels": {"app": "fixed", "tier": "x"}}, "template": {"metadata": {"labels": {"app": "fixed", "tier": "x"}}}}}))
        .await;
    assert_eq!(code.as_u16(), 422, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("field is immutable"),
        "{body}"
    );
}

#[tokio::test]
async fn built_in_kinds_follow_their_rules() {
    let s = Server::start().await;
    let (code, body, _) = s
        .post(
            "/api/v1/namespaces",
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "Not_A_Label"}}),
        )
        .await;
    assert_eq!(code.as_u16(), 422, "{body}");
    let (code, body, _) = s
        .post("/api/v1/namespaces/default/configmaps", json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"bad key!": "v"}}))
        .await;
    assert_eq!(code.as_u16(), 422, "{body}");
    let (code, body, _) = s
        .post("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "b"}, "subjects": [{"kind": "ServiceAccount", "name": "x"}]}))
        .await;
    assert_eq!(code.as_u16(), 422, "{body}");
    let fields: Vec<&str> = body["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["field"].as_str())
        .collect();
    assert!(
        fields.contains(&"roleRef.name") && fields.contains(&"subjects[0].namespace"),
        "{body}"
    );
    let (code, body, _) = s
        .post("/apis/rbac.authorization.k8s.io/v1/clusterroles", json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "r"}, "rules": [{"apiGroups": [""], "resources": ["pods"]}]}))
        .await;
    assert_eq!(code.as_u16(), 422, "{body}");
    // dryRun=All admits and answers without storing.
    let (code, _, _) = s
        .post(
            "/api/v1/namespaces/default/configmaps?dryRun=All",
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "dry"}}),
        )
        .await;
    assert_eq!(code.as_u16(), 201);
    let resp = s
        .http
        .get(format!(
            "{}/api/v1/namespaces/default/configmaps/dry",
            s.api.url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
}

#[tokio::test]
async fn a_crd_with_formats_kube_apiserver_does_not_know_draws_its_warning_and_ours_does_not() {
    let s = Server::start().await;
    let mut crd = serde_json::to_value(shared::crd::crd()).unwrap();
    crd["metadata"]["name"] = json!("others.example.com");
    crd["spec"]["group"] = json!("example.com");
    crd["spec"]["names"] = json!({"plural": "others", "singular": "other", "kind": "Other"});
    let mut text = crd.to_string();
    text = text.replacen("\"format\":\"int64\"", "\"format\":\"uint32\"", 1);
    let crd: Value = serde_json::from_str(&text).unwrap();
    let (code, body, warnings) = s
        .post(
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            crd,
        )
        .await;
    assert_eq!(code.as_u16(), 201, "{body}");
    assert_eq!(warnings, ["299 - \"unrecognized format \\\"uint32\\\"\""]);
    // Ours, as a user first applies it (`kubectl apply -f crds/imagebackup.yaml`): no warning.
    let fresh = ApiServer::start().await.expect("api server");
    let kubeconfig = tempfile::NamedTempFile::new().unwrap();
    fresh.write_kubeconfig(kubeconfig.path()).unwrap();
    let out = tokio::process::Command::new("kubectl")
        .args([
            "apply",
            "-f",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../crds/imagebackup.yaml"),
        ])
        .env("KUBECONFIG", kubeconfig.path())
        .env(
            "KUBECACHEDIR",
            testbed::process::kubectl_cache_dir(kubeconfig.path()),
        )
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).trim().is_empty(),
        "kubectl warned: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn kubectl_prints_the_columns_kube_apiserver_prints_for_built_in_kinds() {
    let s = Server::start().await;
    let (code, _, _) = s
        .post(
            "/apis/apps/v1/namespaces/default/deployments",
            deployment(
                "web",
                json!({"app": "web"}),
                json!([{"name": "nginx", "image": "nginx:1.14.0"}]),
            ),
        )
        .await;
    assert_eq!(code.as_u16(), 201);
    let kubeconfig = tempfile::NamedTempFile::new().unwrap();
    s.api.write_kubeconfig(kubeconfig.path()).unwrap();
    let get = |args: &'static [&'static str]| {
        let path = kubeconfig.path().to_path_buf();
        async move {
            let out = tokio::process::Command::new("kubectl")
                .args(args)
                .env("KUBECACHEDIR", testbed::process::kubectl_cache_dir(&path))
                .env("KUBECONFIG", path)
                .output()
                .await
                .unwrap();
            String::from_utf8_lossy(&out.stdout).to_string()
        }
    };
    let wide = get(&["get", "deploy", "-o", "wide"]).await;
    let header: Vec<&str> = wide
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "READY",
            "UP-TO-DATE",
            "AVAILABLE",
            "AGE",
            "CONTAINERS",
            "IMAGES",
            "SELECTOR"
        ],
        "{wide}"
    );
    assert!(
        wide.contains("nginx:1.14.0") && wide.contains("app=web"),
        "{wide}"
    );
    let narrow = get(&["get", "deploy"]).await;
    assert!(
        !narrow.contains("IMAGES"),
        "wide columns only with -o wide:\n{narrow}"
    );
    let namespaces = get(&["get", "ns"]).await;
    assert!(
        namespaces.lines().next().unwrap_or("").contains("STATUS") && namespaces.contains("Active"),
        "{namespaces}"
    );
}
