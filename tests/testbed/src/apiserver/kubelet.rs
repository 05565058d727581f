//! The simulated kubelet's image pulls. When on ([`PullSettings::enabled`]), a container may run
//! only once its image can be pulled: the kubelet resolves the manifest at its registry (a
//! `HEAD` of the manifest, as containerd resolves a reference) with the credentials a kubelet
//! would use — the Pod's `imagePullSecrets`, then its ServiceAccount's, anonymous otherwise —
//! answering bearer-token challenges as a registry client does. A refused, missing or
//! unreachable image leaves the container Waiting (`ErrImagePull`, then `ImagePullBackOff`), an
//! unparsable one `InvalidImageName`, and the Pod not Ready, so a rollout stalls as on a cluster.
//!
//! Results are cached per (image, credentials) for [`PullSettings::ttl`] (stale results keep
//! serving while a fresh check runs), so large simulations stay fast. A container already
//! running is never pulled again. Off by default: the test bed's other tests run images that
//! exist nowhere, as if every node had them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;
use sha2::Digest as _;

use super::resources;
use super::store::{Key, Store};

/// How the simulated kubelet pulls.
#[derive(Debug, Clone)]
pub struct PullSettings {
    /// Whether images are checked at their registries before a container runs.
    pub enabled: bool,
    /// `registry host` → base URL pulled from instead (`http://127.0.0.1:5000`), as a node's
    /// containerd `hosts.toml` mirrors a registry.
    pub mirrors: HashMap<String, String>,
    /// Registry hosts served over HTTPS, with the PEM of the CA a node trusts for each (as
    /// containerd's `hosts.toml` names a `ca`). Other loopback hosts are plain HTTP.
    pub https: HashMap<String, String>,
    /// How long a result is reused.
    pub ttl: Duration,
}

impl Default for PullSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            mirrors: HashMap::new(),
            https: HashMap::new(),
            ttl: Duration::from_secs(3),
        }
    }
}

/// What pulling one image with one set of credentials gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The manifest resolved: the container can run.
    Pulled,
    /// The reference does not parse (`InvalidImageName`).
    Invalid(String),
    /// Refused, missing or unreachable (`ErrImagePull`), with the kubelet's message.
    Failed(String),
}

/// A username and password from a pull secret.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct Login {
    username: String,
    password: String,
}

/// The key a result is cached under: the image and who pulls it (a hash of the password).
pub(crate) type PullKey = (String, String);

/// Results for the images of the pods one settle touches.
pub(crate) type Verdicts = HashMap<PullKey, Verdict>;

/// The kubelet's pull state, shared by every settle.
#[derive(Default)]
pub(crate) struct Kubelet {
    pub(crate) settings: Mutex<PullSettings>,
    cache: Mutex<HashMap<PullKey, (Instant, Verdict)>>,
}

/// What the registry part of `image` is, with the repository and the reference to resolve.
fn locate(image: &str) -> Result<(String, String, String), String> {
    let r = shared::reference::Reference::parse_normalized(image).map_err(|e| {
        format!(
            "Failed to apply default image tag \"{image}\": couldn't parse image name \"{image}\": {e}"
        )
    })?;
    let r = r.with_default_tag();
    Ok((
        r.domain().to_string(),
        r.path().to_string(),
        r.pull_reference().to_string(),
    ))
}

/// The login a pull secret's `.dockerconfigjson` has for `host`.
fn login_in(secret: &Value, host: &str) -> Option<Login> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let config = secret["data"][".dockerconfigjson"].as_str()?;
    let config: Value = serde_json::from_slice(&b64.decode(config).ok()?).ok()?;
    let auths = config["auths"].as_object()?;
    let entry = auths.iter().find_map(|(k, v)| {
        let k = k
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        let k = k.split('/').next().unwrap_or(k);
        (k == host).then_some(v)
    })?;
    if let (Some(u), Some(p)) = (entry["username"].as_str(), entry["password"].as_str()) {
        return Some(Login {
            username: u.into(),
            password: p.into(),
        });
    }
    let auth = String::from_utf8(b64.decode(entry["auth"].as_str()?).ok()?).ok()?;
    let (u, p) = auth.split_once(':')?;
    Some(Login {
        username: u.into(),
        password: p.into(),
    })
}

/// The login a Pod with `spec` in `namespace` pulls from `host` with: the first of its
/// `imagePullSecrets`, then its ServiceAccount's, that has one.
fn login_for(store: &Store, namespace: &str, spec: &Value, host: &str) -> Option<Login> {
    let secrets = resources::find_builtin("", "secrets")?;
    let accounts = resources::find_builtin("", "serviceaccounts")?;
    let account = spec["serviceAccountName"].as_str().unwrap_or("default");
    let from_account = store
        .get(&Key::new(&accounts, namespace, account))
        .map(|sa| sa["imagePullSecrets"].clone())
        .unwrap_or(Value::Null);
    spec["imagePullSecrets"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(from_account.as_array().into_iter().flatten())
        .filter_map(|r| r["name"].as_str())
        .filter_map(|name| store.get(&Key::new(&secrets, namespace, name)))
        .find_map(|s| login_in(s, host))
}

/// The cache key of pulling `image` for a Pod with `spec` in `namespace`.
pub(crate) fn pull_key(store: &Store, namespace: &str, spec: &Value, image: &str) -> PullKey {
    let who = match locate(image) {
        Ok((host, _, _)) => match login_for(store, namespace, spec, &host) {
            Some(l) => {
                let hash = sha2::Sha256::digest(l.password.as_bytes());
                format!("{}:{}", l.username, hex::encode(&hash[..8]))
            }
            None => String::new(),
        },
        Err(_) => String::new(),
    };
    (image.to_string(), who)
}

/// Every container image of a pod spec.
fn images(spec: &Value) -> impl Iterator<Item = &str> {
    ["initContainers", "containers"]
        .into_iter()
        .flat_map(move |f| spec[f].as_array().into_iter().flatten())
        .filter_map(|c| c["image"].as_str())
}

impl Kubelet {
    /// Checks every image of `specs` (pod specs in `namespace`), from the cache when fresh.
    /// `None` when pulls are not simulated.
    pub(crate) async fn verdicts(
        self: &Arc<Self>,
        store: &Mutex<Store>,
        namespace: &str,
        specs: &[Value],
    ) -> Option<Verdicts> {
        let settings = self.settings.lock().ok()?.clone();
        if !settings.enabled {
            return None;
        }
        let wanted: Vec<(PullKey, Option<Login>)> = {
            let store = store.lock().ok()?;
            specs
                .iter()
                .flat_map(|spec| {
                    let store = &store;
                    images(spec).map(move |image| {
                        let login = locate(image)
                            .ok()
                            .and_then(|(host, _, _)| login_for(store, namespace, spec, &host));
                        (pull_key(store, namespace, spec, image), login)
                    })
                })
                .collect()
        };
        let mut verdicts = Verdicts::new();
        let mut checks = Vec::new();
        for (key, login) in wanted {
            if verdicts.contains_key(&key) {
                continue;
            }
            let cached = self.cache.lock().ok()?.get(&key).cloned();
            match cached {
                Some((at, v)) if at.elapsed() < settings.ttl => {
                    verdicts.insert(key, v);
                }
                Some((_, v)) => {
                    // Stale: serve it, refresh behind.
                    verdicts.insert(key.clone(), v);
                    let (me, settings) = (self.clone(), settings.clone());
                    tokio::spawn(async move {
                        let v = pull(&settings, &key.0, login.as_ref()).await;
                        me.remember(key, v);
                    });
                }
                None => checks.push((key, login)),
            }
        }
        let results = futures::future::join_all(checks.into_iter().map(|(key, login)| {
            let settings = settings.clone();
            async move {
                let v = pull(&settings, &key.0, login.as_ref()).await;
                (key, v)
            }
        }))
        .await;
        for (key, v) in results {
            self.remember(key.clone(), v.clone());
            verdicts.insert(key, v);
        }
        Some(verdicts)
    }

    fn remember(&self, key: PullKey, v: Verdict) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(key, (Instant::now(), v));
        }
    }
}

/// Resolves `image` as containerd would before a pull, with `login` (basic, or for a bearer
/// challenge the token it buys).
async fn pull(settings: &PullSettings, image: &str, login: Option<&Login>) -> Verdict {
    let (host, repo, reference) = match locate(image) {
        Ok(l) => l,
        Err(e) => return Verdict::Invalid(e),
    };
    let base = settings.mirrors.get(&host).cloned().unwrap_or_else(|| {
        let plain = (host.starts_with("127.") || host.starts_with("localhost"))
            && !settings.https.contains_key(&host);
        format!("{}://{host}", if plain { "http" } else { "https" })
    });
    let url = format!("{base}/v2/{repo}/manifests/{reference}");
    let fail = |why: String| {
        Verdict::Failed(format!(
            "failed to pull and unpack image \"{image}\": failed to resolve reference \"{image}\": {why}"
        ))
    };
    let trusted = settings
        .https
        .values()
        .flat_map(|pem| reqwest::Certificate::from_pem_bundle(pem.as_bytes()).unwrap_or_default());
    let Ok(http) = trusted
        .fold(reqwest::Client::builder(), |b, ca| {
            b.add_root_certificate(ca)
        })
        .timeout(Duration::from_secs(5))
        .build()
    else {
        return fail("no HTTP client".into());
    };
    let head = |auth: Option<String>| {
        let mut r = http
            .head(&url)
            .header("Accept", crate::image::MANIFEST_ACCEPT);
        if let Some(a) = auth {
            r = r.header("Authorization", a);
        }
        r.send()
    };
    let basic = login.map(|l| {
        let b64 = base64::engine::general_purpose::STANDARD;
        format!(
            "Basic {}",
            b64.encode(format!("{}:{}", l.username, l.password))
        )
    });
    let mut answer = match head(basic.clone()).await {
        Ok(a) => a,
        Err(e) => {
            return fail(format!(
                "failed to do request: Head \"{url}\": dial tcp {host}: {}",
                if e.is_timeout() {
                    "i/o timeout"
                } else {
                    "connect: connection refused"
                }
            ));
        }
    };
    // A token service: buy a pull token with the login, as a registry client does.
    let challenge = answer
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if answer.status() == 401
        && let Some(params) = challenge.strip_prefix("Bearer ")
    {
        let param = |name: &str| {
            params.split(',').find_map(|p| {
                let (k, v) = p.trim().split_once('=')?;
                (k == name).then(|| v.trim_matches('"').to_string())
            })
        };
        if let Some(realm) = param("realm") {
            let mut r = http.get(&realm).query(&[
                ("service", param("service").unwrap_or_default()),
                ("scope", format!("repository:{repo}:pull")),
            ]);
            if let Some(b) = &basic {
                r = r.header("Authorization", b);
            }
            let token = match r.send().await {
                Ok(t) if t.status().is_success() => t.json::<Value>().await.ok().and_then(|v| {
                    v["token"]
                        .as_str()
                        .or(v["access_token"].as_str())
                        .map(str::to_string)
                }),
                _ => None,
            };
            if let Some(token) = token
                && let Ok(a) = head(Some(format!("Bearer {token}"))).await
            {
                answer = a;
            }
        }
    }
    match answer.status().as_u16() {
        200..=299 => Verdict::Pulled,
        401 | 403 => fail(
            "pull access denied, repository does not exist or may require authorization: authorization failed: 401 Unauthorized".into(),
        ),
        404 => fail(format!("{image}: not found")),
        code => fail(format!("unexpected status from HEAD request to {url}: {code}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pull_secret_names_the_login_for_its_registry_only() {
        let b64 = base64::engine::general_purpose::STANDARD;
        let config = serde_json::json!({"auths": {
            "https://registry.example:5000": {"auth": b64.encode("alice:pw")},
            "other.example": {"username": "bob", "password": "pw2"},
        }});
        let secret =
            serde_json::json!({"data": {".dockerconfigjson": b64.encode(config.to_string())}});
        let alice = login_in(&secret, "registry.example:5000").expect("alice");
        assert_eq!(alice.username, "alice");
        assert_eq!(
            login_in(&secret, "other.example").map(|l| l.username),
            Some("bob".into())
        );
        assert!(login_in(&secret, "third.example").is_none());
    }

    #[test]
    fn an_unparsable_image_is_invalid_and_a_bare_name_is_docker_hub() {
        assert!(locate("Bad Image").is_err());
        let (host, repo, reference) = locate("nginx").expect("nginx");
        assert_eq!(
            (host.as_str(), repo.as_str(), reference.as_str()),
            ("docker.io", "library/nginx", "latest")
        );
    }
}
