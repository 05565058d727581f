//! `testbed up`: the services a person plays with start, answer, and stop on SIGTERM.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Duration;

#[tokio::test]
async fn testbed_up_starts_everything_and_stops_on_sigterm() {
    // Its stderr goes to a file, so that a start-up that fails says why.
    let stderr = tempfile::NamedTempFile::new().expect("stderr file");
    let mut child = Command::new(testbed::workspace_binary("testbed"))
        .arg("up")
        .stdout(Stdio::piped())
        .stderr(stderr.reopen().expect("stderr file"))
        .spawn()
        .expect("testbed binary (built by cargo test --workspace)");
    let stdout = child.stdout.take().expect("stdout");
    let mut text = String::new();
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.expect("line");
        let end = line == "}";
        text.push_str(&line);
        if end {
            break;
        }
    }
    let endpoints: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "endpoints JSON ({e}): {text:?}; testbed up said: {}",
            std::fs::read_to_string(stderr.path()).unwrap_or_default()
        )
    });
    let nats_url = endpoints["nats"]["url"].as_str().expect("nats url");
    shared::nats::connect(nats_url, "testbed-up-test")
        .await
        .expect("NATS answers");
    shared::tls::ensure_crypto_provider();
    let http = reqwest::Client::new();
    for (name, want) in [("source", 200), ("backup", 200)] {
        let host = endpoints["registries"][name].as_str().expect("host");
        let status = http
            .get(format!("http://{host}/v2/"))
            .send()
            .await
            .expect("registry")
            .status();
        assert_eq!(status.as_u16(), want, "{name}");
    }
    let auth = endpoints["registries"]["auth"]["host"]
        .as_str()
        .expect("auth host");
    assert_eq!(
        http.get(format!("http://{auth}/v2/"))
            .send()
            .await
            .expect("registry")
            .status()
            .as_u16(),
        401
    );
    let api = endpoints["apiserver"]["url"].as_str().expect("api url");
    let crd = http
        .get(format!("{api}/apis/k8slab.io/v1alpha1"))
        .send()
        .await
        .expect("apiserver");
    assert_eq!(
        crd.status().as_u16(),
        200,
        "the ImageBackup CRD is installed"
    );
    assert!(
        std::path::Path::new(endpoints["env"]["KUBECONFIG"].as_str().expect("kubeconfig")).exists()
    );

    // env.sh exports what "env" lists, for the shells where the functions and kubectl run.
    let env_file = endpoints["env_file"].as_str().expect("env_file");
    let env = endpoints["env"].as_object().expect("env");
    assert_eq!(env.len(), 4, "{env:?}");
    for (name, value) in env {
        let sourced = Command::new("sh")
            .args([
                "-c",
                &format!(". \"$1\" && printf %s \"${name}\""),
                "sh",
                env_file,
            ])
            .output()
            .expect("sh");
        assert!(sourced.status.success(), "{sourced:?}");
        assert_eq!(
            Some(String::from_utf8_lossy(&sourced.stdout).as_ref()),
            value.as_str(),
            "{name}"
        );
    }

    // `testbed push-image` puts an image into the source registry with no internet at hand: the
    // digest it prints is the one the registry serves for the tag.
    let source = endpoints["registries"]["source"].as_str().expect("host");
    let push_image = |reference: &str| {
        Command::new(testbed::workspace_binary("testbed"))
            .args(["push-image", reference])
            .output()
            .expect("testbed push-image")
    };
    let push = push_image(&format!("{source}/team/web:1.0"));
    assert!(push.status.success(), "{push:?}");
    let printed = String::from_utf8_lossy(&push.stdout);
    let digest = printed
        .split_once('@')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .expect("REFERENCE@DIGEST printed");
    let served = http
        .head(format!("http://{source}/v2/team/web/manifests/1.0"))
        .header("Accept", testbed::image::MANIFEST_ACCEPT)
        .send()
        .await
        .expect("registry");
    assert_eq!(
        served
            .headers()
            .get("Docker-Content-Digest")
            .and_then(|v| v.to_str().ok()),
        Some(digest),
        "{printed}"
    );
    // A reference it cannot push to is refused before anything is sent, saying what it wants.
    for bad in [
        format!("{source}/Team/Web:1.0"),
        format!("{source}/team/web"),
        "web:1.0".to_string(),
    ] {
        let refused = push_image(&bad);
        assert!(!refused.status.success(), "{bad}");
        let said = String::from_utf8_lossy(&refused.stderr);
        assert!(said.contains("HOST/REPOSITORY:TAG"), "{bad}: {said}");
    }

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = child.try_wait().expect("wait") {
            break exit;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "testbed up did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit}");
    // Its services went with it.
    assert!(
        http.get(format!("http://{source}/v2/"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_err()
    );
}
