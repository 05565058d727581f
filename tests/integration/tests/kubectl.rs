//! A real kubectl against the standalone `testbed apiserver` binary: apply, get (JSON and the
//! printer columns), patch, delete and get --watch, as a user would type them.

use std::process::{Command, Stdio};
use std::time::Duration;

struct Standalone {
    child: std::process::Child,
    kubeconfig: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Standalone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> Standalone {
    let dir = tempfile::tempdir().expect("tmp");
    let kubeconfig = dir.path().join("kubeconfig");
    let port = testbed::process::free_port().expect("port");
    let child = Command::new(testbed::workspace_binary("testbed"))
        .args([
            "apiserver",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--kubeconfig",
        ])
        .arg(&kubeconfig)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("testbed binary (built by cargo test --workspace)");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !kubeconfig.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "apiserver did not write its kubeconfig"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Standalone {
        child,
        kubeconfig,
        _dir: dir,
    }
}

fn kubectl(s: &Standalone, args: &[&str]) -> String {
    let out = Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", &s.kubeconfig)
        .env(
            "KUBECACHEDIR",
            testbed::process::kubectl_cache_dir(&s.kubeconfig),
        )
        .output()
        .expect("kubectl runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kubectl {args:?} failed: {stderr}");
    assert!(
        !stderr.to_lowercase().contains("warning"),
        "kubectl {args:?} warned: {stderr}"
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn fixture(name: &str) -> String {
    format!("{}/../fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn kubectl_drives_the_standalone_server() {
    let s = start();
    let crd = format!("{}/../../crds/imagebackup.yaml", env!("CARGO_MANIFEST_DIR"));
    assert!(
        kubectl(&s, &["apply", "-f", &crd]).contains(
            "customresourcedefinition.apiextensions.k8s.io/imagebackups.k8slab.io created"
        )
    );
    assert!(
        kubectl(&s, &["apply", "-f", &fixture("nginx-deployment.yaml")])
            .contains("deployment.apps/nginx created")
    );
    // A second apply of the same file changes nothing.
    assert!(kubectl(&s, &["apply", "-f", &fixture("nginx-deployment.yaml")]).contains("unchanged"));

    let json: serde_json::Value =
        serde_json::from_str(&kubectl(&s, &["get", "deployment", "nginx", "-o", "json"]))
            .expect("json");
    assert_eq!(
        json["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:1.14.0"
    );
    assert_eq!(json["metadata"]["generation"], 1);

    let ib = r#"{"apiVersion":"k8slab.io/v1alpha1","kind":"ImageBackup","metadata":{"name":"ib-demo"},
        "spec":{"source":"docker.io/library/nginx:1.14.0","target":"localhost:5000/library_nginx:1.14.0"}}"#;
    let dir = tempfile::tempdir().expect("tmp");
    let ib_file = dir.path().join("ib.json");
    std::fs::write(&ib_file, ib).expect("write");
    kubectl(&s, &["apply", "-f", ib_file.to_str().expect("path")]);
    kubectl(
        &s,
        &[
            "patch",
            "imagebackup",
            "ib-demo",
            "--type=merge",
            "--subresource=status",
            "-p",
            r#"{"status":{"phase":"Copying","progress":"3/7 blobs, 40%"}}"#,
        ],
    );
    let table = kubectl(&s, &["get", "imagebackups"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().expect("header").split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "SOURCE", "TARGET", "PHASE", "PROGRESS", "AGE"]
    );
    let row = lines.next().expect("row");
    for cell in [
        "ib-demo",
        "docker.io/library/nginx:1.14.0",
        "Copying",
        "3/7 blobs, 40%",
    ] {
        assert!(row.contains(cell), "{row}");
    }
    assert!(
        kubectl(&s, &["get", "ib"]).contains("ib-demo"),
        "short name works"
    );

    // A strategic patch of the pod template, as the rollout will do.
    kubectl(
        &s,
        &[
            "patch",
            "deployment",
            "nginx",
            "-p",
            r#"{"spec":{"template":{"spec":{"containers":[{"name":"nginx","image":"localhost:5000/library_nginx@sha256:0000000000000000000000000000000000000000000000000000000000000000"}]}}}}"#,
        ],
    );
    let image = kubectl(
        &s,
        &[
            "get",
            "deployment",
            "nginx",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image} {.metadata.generation}",
        ],
    );
    assert!(
        image.starts_with("localhost:5000/library_nginx@sha256:") && image.ends_with(" 2"),
        "{image}"
    );

    // get --watch sees the delete. Wait for its first row before deleting, so the watch is open.
    let mut watch = Command::new("kubectl")
        .args([
            "get",
            "imagebackups",
            "--watch",
            "--output-watch-events",
            "--request-timeout=30s",
        ])
        .env("KUBECONFIG", &s.kubeconfig)
        .env(
            "KUBECACHEDIR",
            testbed::process::kubectl_cache_dir(&s.kubeconfig),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl watch");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = watch.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let wait_for = |prefix: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no {prefix} row from kubectl --watch"));
            if line.starts_with(prefix) && line.contains("ib-demo") {
                return;
            }
        }
    };
    wait_for("ADDED");
    assert!(kubectl(&s, &["delete", "imagebackup", "ib-demo"]).contains("deleted"));
    wait_for("DELETED");
    let _ = watch.kill();
    let _ = watch.wait();
    kubectl(&s, &["delete", "deployment", "nginx"]);
    let remaining = kubectl(&s, &["get", "deployments", "-o", "name"]);
    assert!(remaining.trim().is_empty(), "{remaining}");
}
