//! Registry credentials from the pull secrets a workload's pods use: `kubernetes.io/dockerconfigjson`
//! (`.dockerconfigjson`) and the legacy `kubernetes.io/dockercfg` (`.dockercfg`, the same entries
//! without the `auths` wrapper), read from the workload's namespace when a copy needs them (the
//! backup) or to see whether a workload can already pull its backups (the rollout). Contents stay
//! in memory: never in the CR, an event or a log line.

use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use crate::registry::auth::DockerConfig;

/// Reads the named Secrets of `namespace` into one docker config. A Secret that is missing, of
/// another type or unreadable is skipped with a warning naming it (not its contents): the copy
/// then tries without it and fails as Unauthorized if the registry insists.
pub async fn pull_secrets(
    client: &kube::Client,
    namespace: &str,
    names: &[String],
) -> DockerConfig {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut config = DockerConfig::default();
    for name in names {
        let secret = match api.get_opt(name).await {
            Ok(Some(s)) => s,
            Ok(None) => {
                tracing::warn!(namespace, name = %name, "imagePullSecret not found; copying without it");
                continue;
            }
            Err(e) => {
                tracing::warn!(namespace, name = %name, error = %e, "cannot read imagePullSecret");
                continue;
            }
        };
        match parse(&secret) {
            Some(Ok(c)) => config.merge(c),
            Some(Err(e)) => {
                tracing::warn!(namespace, name = %name, error = %e, "imagePullSecret is not a docker config")
            }
            None => {
                tracing::warn!(namespace, name = %name, "imagePullSecret of another type; skipped")
            }
        }
    }
    config
}

/// The docker config in a Secret, by its type; `None` for other types.
pub fn parse(secret: &Secret) -> Option<Result<DockerConfig, crate::registry::auth::ConfigError>> {
    let data = secret.data.as_ref()?;
    let origin = format!(
        "Secret {}/{}",
        secret.metadata.namespace.as_deref().unwrap_or(""),
        secret.metadata.name.as_deref().unwrap_or("")
    );
    match secret.type_.as_deref() {
        Some("kubernetes.io/dockerconfigjson") => {
            let bytes = data.get(".dockerconfigjson")?;
            Some(DockerConfig::from_json(&bytes.0, &origin))
        }
        Some("kubernetes.io/dockercfg") => {
            let bytes = data.get(".dockercfg")?;
            let mut wrapped = b"{\"auths\":".to_vec();
            wrapped.extend_from_slice(&bytes.0);
            wrapped.push(b'}');
            Some(DockerConfig::from_json(&wrapped, &origin))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn secret(ty: &str, key: &str, value: &str) -> Secret {
        Secret {
            type_: Some(ty.into()),
            data: Some([(key.to_string(), ByteString(value.as_bytes().to_vec()))].into()),
            ..Default::default()
        }
    }

    #[test]
    fn both_secret_types_are_read_and_others_ignored() {
        let json = secret(
            "kubernetes.io/dockerconfigjson",
            ".dockerconfigjson",
            r#"{"auths":{"quay.io":{"username":"u","password":"p"}}}"#,
        );
        let c = parse(&json).unwrap().unwrap();
        assert!(c.credential_for("quay.io").is_some());
        let legacy = secret(
            "kubernetes.io/dockercfg",
            ".dockercfg",
            r#"{"ghcr.io":{"auth":"dTpw"}}"#,
        );
        let c = parse(&legacy).unwrap().unwrap();
        assert!(c.credential_for("ghcr.io").is_some());
        assert!(parse(&secret("Opaque", "x", "y")).is_none());
    }
}
