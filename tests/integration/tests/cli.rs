//! The command line as people use it: a progress display on a terminal (and none in scripts),
//! the plan as a table, completions, examples and exit codes in `--help`.

use std::process::Command;

use testbed::{Format, ImageSpec, Pusher, Registry};

fn bin(name: &str) -> std::path::PathBuf {
    testbed::workspace_binary(name)
}

#[tokio::test]
async fn backup_copy_shows_progress_on_a_terminal_and_only_json_otherwise() {
    let (src, dst) = (
        Registry::start().await.unwrap(),
        Registry::start().await.unwrap(),
    );
    let image = Pusher::new(&src.host(), None)
        .push_image(
            "cli/app",
            "1",
            &ImageSpec::multi_arch(Format::Oci, 3, 2 * 1024 * 1024, 77),
        )
        .await
        .unwrap();
    let insecure = format!("{},{}", src.host(), dst.host());
    let copy = |target: &str| {
        format!(
            "{} copy {}/cli/app:1 {}/{target}:1 --insecure-registry {insecure}",
            bin("backup").display(),
            src.host(),
            dst.host()
        )
    };
    // Under a pseudo-terminal (`script` gives the command one): the display reaches 100 %.
    let out = tokio::process::Command::new("script")
        .args(["-qec", &copy("tty/app"), "/dev/null"])
        .env("TERM", "xterm")
        .output()
        .await
        .expect("script (util-linux)");
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{screen}");
    assert!(
        screen.contains("100%"),
        "no 100 % on the terminal:\n{screen}"
    );
    assert!(
        screen.contains(&format!("blobs {0}/{0}", image.blobs.len())),
        "{screen}"
    );
    // Without a terminal: nothing on stderr, one JSON line on stdout.
    let out = tokio::process::Command::new("sh")
        .args(["-c", &copy("pipe/app")])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(summary["digest"], image.digest.as_str());
    // --quiet on a terminal: no display either.
    let out = tokio::process::Command::new("script")
        .args([
            "-qec",
            &format!("{} --quiet", copy("quiet/app")),
            "/dev/null",
        ])
        .output()
        .await
        .unwrap();
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(!screen.contains("blobs "), "{screen}");
}

#[test]
fn watcher_plan_as_a_table_matches_the_golden_file() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures");
    let out = Command::new(bin("watcher"))
        .args(["plan", "--backup-registry", "docker.io/acme", "-o", "table"])
        .args(["-f", &format!("{fixtures}/nginx-deployment.yaml")])
        .args(["-f", &format!("{fixtures}/fluentd-daemonset.yaml")])
        .args(["-f", &format!("{fixtures}/invalid.yaml")])
        .env_remove("BACKUP_REGISTRY")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "invalid references still exit 1"
    );
    let golden = std::fs::read_to_string(format!("{fixtures}/plan-table.golden")).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), golden);
}

#[test]
fn completions_generate_for_three_shells_and_help_shows_examples_and_exit_codes() {
    for binary in ["watcher", "backup", "rollout"] {
        for shell in ["bash", "zsh", "fish"] {
            let out = Command::new(bin(binary))
                .args(["completions", shell])
                .output()
                .unwrap();
            let script = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && script.contains(binary) && script.len() > 500,
                "{binary} {shell}"
            );
        }
        let help = Command::new(bin(binary)).arg("--help").output().unwrap();
        assert!(
            String::from_utf8_lossy(&help.stdout).contains("Exit codes: 0 done; 1 failed"),
            "{binary}"
        );
        let usage = Command::new(bin(binary))
            .arg("--no-such-flag")
            .output()
            .unwrap();
        assert_eq!(
            usage.status.code(),
            Some(2),
            "{binary}: usage errors exit 2"
        );
    }
    for (binary, sub) in [
        ("watcher", "run"),
        ("watcher", "plan"),
        ("backup", "copy"),
        ("backup", "run"),
        ("rollout", "run"),
    ] {
        let help = Command::new(bin(binary))
            .args([sub, "--help"])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&help.stdout).contains("Example"),
            "{binary} {sub}"
        );
    }
}

#[test]
fn the_rollouts_safety_settings_are_checked_before_anything_connects() {
    for bad in [
        ["--backup-pull-secret", "a/b/c"],
        ["--backup-pull-secret", "Not_A_Name"],
        ["--max-concurrent-rollouts", "many"],
        ["--rollout-timeout-seconds", "0"],
    ] {
        let out = Command::new(bin("rollout"))
            .args(["run", "--backup-registry", "registry.local/backup"])
            .args(bad)
            .env("KUBECONFIG", "/nonexistent")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {err}");
        assert!(err.contains(bad[0]), "{bad:?} named in: {err}");
    }
}
