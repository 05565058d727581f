//! The README's run command, as CI runs it: `testbed demo` must end with both sample workloads
//! on their verified backups, and show what it promises a person.

use std::time::Duration;

#[tokio::test]
async fn the_demo_runs_green_start_to_finish() {
    let run = tokio::process::Command::new(testbed::workspace_binary("testbed"))
        .arg("demo")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .expect("the demo hung")
        .expect("testbed demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    for shown in [
        "==> images before",
        "$ kubectl get imagebackups",
        "Completed",
        "[event] image.completed",
        "[event] workload.rolledout nginx/nginx",
        "[event] workload.rolledout fluentd/fluentd",
        "nginx   verified: true",
        "fluentd verified: true",
        "RolledOut",
        "==> done: both workloads run their backups, pinned by digest",
        // The original design's names, end to end.
        "\nnginx:1.14.0\n",
        "\nfluentd:latest\n",
        "docker.io/library/nginx:1.14.0 ->",
        "/library_nginx:1.14.0@sha256:",
        "/library_fluentd:latest@sha256:",
    ] {
        assert!(stdout.contains(shown), "{shown:?} missing from:\n{stdout}");
    }
    // No backup name derived from the stand-in registry's host (`127.0.0.1__5000_...`).
    assert!(
        !stdout.contains("127.0.0.1__"),
        "a host-derived flat name in:\n{stdout}"
    );
}
