//! `watcher plan` end to end: the real binary on the sample workloads in `tests/fixtures`.

use std::process::Command;

fn fixture(name: &str) -> String {
    format!("{}/../../tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn plan(files: &[&str], registry: &str) -> (i32, Vec<serde_json::Value>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_watcher"));
    cmd.arg("plan").args(["--backup-registry", registry]);
    for f in files {
        cmd.args(["-f", &fixture(f)]);
    }
    let out = cmd
        .env_remove("BACKUP_REGISTRY")
        .output()
        .expect("run watcher");
    let lines = String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("every stdout line is JSON"))
        .collect();
    (
        out.status.code().unwrap_or(-1),
        lines,
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn nginx_deployment_and_fluentd_daemonset() {
    let (code, lines, _) = plan(
        &["nginx-deployment.yaml", "fluentd-daemonset.yaml"],
        "docker.io/acme",
    );
    assert_eq!(code, 0);
    assert_eq!(lines.len(), 2);
    let nginx = &lines[0];
    assert_eq!(nginx["type"], "io.k8slab.imagebackup.workload.changed");
    assert_eq!(
        nginx["subject"],
        "imagebackup.workload.changed.default.deployment.nginx"
    );
    assert_eq!(
        nginx["data"]["workload"],
        serde_json::json!({"kind": "Deployment", "namespace": "default", "name": "nginx"})
    );
    assert_eq!(
        nginx["data"]["images"],
        serde_json::json!([{"container": "nginx", "init": false,
            "source": "docker.io/library/nginx:1.14.0", "target": "docker.io/acme/library_nginx:1.14.0"}])
    );
    let fluentd = &lines[1]["data"]["images"];
    assert_eq!(fluentd[0]["container"], "config");
    assert_eq!(fluentd[0]["init"], true);
    assert_eq!(fluentd[0]["target"], "docker.io/acme/library_busybox:1.36");
    // An underscore in the source path would make the flat name ambiguous: hashed form.
    let t = fluentd[1]["target"].as_str().unwrap();
    assert!(
        t.starts_with("docker.io/acme/quay.io_fluentd_elasticsearch_fluentd-")
            && t.ends_with(":v2.5.2"),
        "{t}"
    );
}

#[test]
fn list_with_digests_and_other_kinds() {
    let (code, lines, stderr) = plan(&["list.yaml"], "localhost:5000/backup");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(lines.len(), 1);
    assert!(
        stderr.contains("skipping ConfigMap not-a-workload"),
        "{stderr}"
    );
    let images = &lines[0]["data"]["images"];
    assert_eq!(
        images[0]["source"],
        "docker.io/library/redis:7.2@sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"
    );
    assert_eq!(
        images[0]["target"],
        "localhost:5000/backup/library_redis:7.2"
    );
}

#[test]
fn invalid_references_are_reported_and_valid_ones_still_printed() {
    let (code, lines, stderr) = plan(&["invalid.yaml"], "docker.io/acme");
    assert_eq!(code, 1);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["data"]["images"].as_array().unwrap().len(), 1);
    let invalid = lines[0]["invalid"].as_array().unwrap();
    assert_eq!(invalid.len(), 2);
    assert_eq!(invalid[0]["container"], "upper");
    assert!(invalid[0]["error"].as_str().unwrap().contains("lowercase"));
    assert_eq!(invalid[1]["container"], "badtag");
    assert!(stderr.contains("container \"upper\""), "{stderr}");
    assert!(stderr.contains("invalid image \"nginx:-1\""), "{stderr}");
}

#[test]
fn backup_registry_is_required_and_checked() {
    let (code, _, stderr) = plan(&["nginx-deployment.yaml"], "acme");
    assert_eq!(code, 2);
    assert!(
        stderr.contains("must start with a registry host"),
        "{stderr}"
    );
}
