//! The deploy manifests: both overlays render with `kubectl kustomize`, every object passes
//! `deploy/validate.py` (Kubernetes schemas, strict; Knative's API models), the validator does
//! refuse a broken object, every command, subcommand and environment variable the manifests
//! give a function is one its `--help` documents, and the NATS configurations (the 3-node
//! cluster's and the single server's) are ones nats-server accepts.

use std::collections::BTreeSet;
use std::process::Command;

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn render(overlay: &str) -> String {
    testbed::process::kustomize(&root().join("deploy/overlays").join(overlay)).expect("rendered")
}

fn validate(manifests: &str) -> (bool, String) {
    use std::io::Write as _;
    let python = testbed::tools::python().expect("the project's Python environment");
    let mut child = Command::new(python)
        .arg(root().join("deploy/validate.py"))
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect(".venv/bin/python deploy/validate.py (`./dev setup` creates .venv)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(manifests.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn documents(manifests: &str) -> Vec<serde_json::Value> {
    manifests
        .split("\n---\n")
        .filter_map(|d| serde_yaml::from_str::<serde_json::Value>(d).ok())
        .collect()
}

#[test]
fn both_overlays_render_and_validate() {
    for overlay in ["plain", "plain-single", "knative"] {
        let (ok, report) = validate(&render(overlay));
        assert!(ok, "{overlay}:\n{report}");
        assert!(!report.contains("INVALID"), "{report}");
    }
    let kinds: BTreeSet<String> = documents(&render("knative"))
        .iter()
        .map(|d| d["kind"].as_str().unwrap_or("").to_string())
        .collect();
    for kind in ["Broker", "Trigger", "SinkBinding", "Service", "ClusterRole"] {
        assert!(kinds.contains(kind), "{kind} missing: {kinds:?}");
    }
}

#[test]
fn the_validator_refuses_what_a_cluster_would() {
    let plain = render("plain");
    let broken = plain.replacen("replicas: 2", "replicas: 2\n  replicaz: 3", 1);
    let (ok, report) = validate(&broken);
    assert!(
        !ok && report.contains("INVALID apps/v1 Deployment/backup"),
        "{report}"
    );
    let knative = render("knative");
    let broken = knative.replacen(
        "backoffPolicy: exponential",
        "backoffPolicy: exponential\n    bogus: 1",
        1,
    );
    let (ok, report) = validate(&broken);
    assert!(
        !ok && report.contains("INVALID eventing.knative.dev/v1"),
        "{report}"
    );
}

/// `nats-server -t` (parse and check the configuration, then exit) on each plain overlay's
/// `nats.conf` with the `auth.conf` it includes and the environment the StatefulSet gives it;
/// and on a broken copy, so the check is known to look.
#[test]
fn the_nats_configurations_are_ones_nats_server_accepts() {
    let check = |conf: &str, auth: &str| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("nats.conf"), conf).unwrap();
        std::fs::write(dir.path().join("auth.conf"), auth).unwrap();
        let out = Command::new(testbed::nats_server::binary())
            .current_dir(dir.path())
            .args(["-c", "nats.conf", "-t"])
            .envs([
                ("POD_NAME", "nats-0"),
                ("WATCHER_PASSWORD", "w"),
                ("BACKUP_PASSWORD", "b"),
                ("ROLLOUT_PASSWORD", "r"),
            ])
            .output()
            .expect("nats-server (`./dev setup` installs it)");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    for (overlay, clustered) in [("plain", true), ("plain-single", false)] {
        let docs = documents(&render(overlay));
        let config = docs
            .iter()
            .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "nats")
            .expect("the nats ConfigMap");
        let conf = config["data"]["nats.conf"].as_str().expect("nats.conf");
        let auth = config["data"]["auth.conf"].as_str().expect("auth.conf");
        assert_eq!(conf.contains("cluster {"), clustered, "{overlay}:\n{conf}");
        assert!(conf.contains("sync_interval: always"), "{overlay}:\n{conf}");
        let (ok, report) = check(conf, auth);
        assert!(ok, "{overlay}: {report}");
        let (ok, report) = check(conf, &auth.replacen("users: [", "users: [[", 1));
        assert!(!ok, "{overlay}: a broken auth.conf passed: {report}");
    }
}

#[test]
fn every_setting_the_manifests_give_is_one_the_binaries_document() {
    for overlay in ["plain", "plain-single", "knative"] {
        let docs = documents(&render(overlay));
        let config: Vec<String> = docs
            .iter()
            .filter(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "image-backup")
            .flat_map(|d| {
                d["data"]
                    .as_object()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, _)| k)
            })
            .collect();
        for d in &docs {
            let spec = match d["kind"].as_str() {
                Some("Deployment") | Some("Service") => &d["spec"]["template"]["spec"],
                _ => continue,
            };
            let Some(container) = spec["containers"].get(0) else {
                continue;
            };
            let Some(command) = container["command"][0].as_str() else {
                continue;
            };
            let binary = command.rsplit('/').next().unwrap();
            if !["watcher", "backup", "rollout"].contains(&binary) {
                continue;
            }
            let sub = container["args"][0].as_str().expect("a subcommand");
            // Settings of the subcommand, and the binary's own (logging).
            let mut help = String::new();
            for args in [vec![sub, "--help"], vec!["--help"]] {
                let out = Command::new(testbed::workspace_binary(binary))
                    .args(&args)
                    .output()
                    .expect("binary --help");
                assert!(out.status.success(), "{binary} {args:?}");
                help.push_str(&String::from_utf8_lossy(&out.stdout));
            }
            let env: Vec<String> = container["env"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e["name"].as_str().map(str::to_string))
                .chain(config.iter().cloned())
                .collect();
            for name in env {
                // The watcher has no registry credentials; it ignores DOCKER_CONFIG_FILE.
                if binary == "watcher" && name == "DOCKER_CONFIG_FILE" {
                    continue;
                }
                // Read by the C library, not by the binary: glibc's malloc settings.
                if name == "GLIBC_TUNABLES" {
                    continue;
                }
                assert!(
                    help.contains(&format!("env: {name}=")),
                    "{overlay}: {binary} {sub} does not read {name}"
                );
            }
        }
    }
}

#[tokio::test]
async fn the_plain_overlay_applies_to_the_test_api_server() {
    let api = testbed::ApiServer::start().await.expect("api server");
    let kubeconfig = tempfile::NamedTempFile::new().unwrap();
    api.write_kubeconfig(kubeconfig.path()).unwrap();
    let kubectl = |args: Vec<String>| {
        let path = kubeconfig.path().to_path_buf();
        async move {
            // Async: the test API server runs on this test's runtime.
            tokio::process::Command::new("kubectl")
                .args(&args)
                .env("KUBECACHEDIR", testbed::process::kubectl_cache_dir(&path))
                .env("KUBECONFIG", path)
                .output()
                .await
                .expect("kubectl")
        }
    };
    let overlay = root().join("deploy/overlays/plain").display().to_string();
    let out = kubectl(vec!["apply".into(), "-k".into(), overlay]).await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.trim().is_empty(), "kubectl warned: {stderr}");
    for created in [
        "customresourcedefinition.apiextensions.k8s.io/imagebackups.k8slab.io created",
        "clusterrole.rbac.authorization.k8s.io/image-backup-backup created",
        "deployment.apps/backup created",
        "statefulset.apps/nats created",
        "poddisruptionbudget.policy/backup created",
    ] {
        assert!(stdout.contains(created), "{created:?} missing:\n{stdout}");
    }
    let out = kubectl(
        ["get", "deploy", "-n", "image-backup", "-o", "name"]
            .map(String::from)
            .to_vec(),
    )
    .await;
    let names = String::from_utf8_lossy(&out.stdout);
    assert_eq!(names.lines().count(), 3, "{names}");
}

/// `deploy/components/registry-ca`, as `deploy/examples/registry-ca` adds it to the plain
/// overlay: the backup and the rollout — only they talk to registries — mount the ConfigMap
/// `registry-ca` read-only and read it as `REGISTRY_CA_FILE`; the result validates.
#[test]
fn the_registry_ca_example_mounts_the_ca_into_the_backup_and_the_rollout() {
    let manifests =
        testbed::process::kustomize(&root().join("deploy/examples/registry-ca")).expect("rendered");
    let (ok, report) = validate(&manifests);
    assert!(ok, "{report}");
    let mut given = BTreeSet::new();
    for doc in documents(&manifests) {
        if doc["kind"] != "Deployment" {
            continue;
        }
        let name = doc["metadata"]["name"].as_str().unwrap_or("").to_string();
        let pod = &doc["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        let named = |list: &serde_json::Value, key: &str, value: &str| {
            list.as_array()
                .into_iter()
                .flatten()
                .find(|item| item[key] == value)
                .cloned()
        };
        let Some(env) = named(&container["env"], "name", "REGISTRY_CA_FILE") else {
            continue;
        };
        assert_eq!(env["value"], "/etc/image-backup/ca/ca.pem", "{name}");
        let mount = named(&container["volumeMounts"], "name", "registry-ca").expect("mounted");
        assert_eq!(mount["mountPath"], "/etc/image-backup/ca", "{name}");
        assert_eq!(mount["readOnly"], true, "{name}");
        let volume = named(&pod["volumes"], "name", "registry-ca").expect("volume");
        assert_eq!(volume["configMap"]["name"], "registry-ca", "{name}");
        given.insert(name);
    }
    assert_eq!(
        given,
        BTreeSet::from(["backup".to_string(), "rollout".to_string()])
    );
}
