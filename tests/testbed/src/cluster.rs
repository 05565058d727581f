//! A whole test cluster for end-to-end tests and the demo: the test API server with the
//! ImageBackup CRD, nats-server with the stream, a source ("external") registry and a backup
//! registry, and the function binaries run as processes against them with the environment a
//! user would give them.

use std::time::Duration;

use async_nats::jetstream;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::Api;
use kube::api::PostParams;

use crate::function::FunctionProcess;
use crate::{ApiServer, Nats, NatsCluster, NatsServer, Pusher, Registry};

/// The backup registry's path prefix in the cluster.
pub const BACKUP_PREFIX: &str = "backup";

/// The running cluster; everything stops when it is dropped.
pub struct Cluster {
    /// The test API server.
    pub api: ApiServer,
    /// nats-server (JetStream): one, or a cluster.
    pub nats: Nats,
    /// A JetStream context for reading the stream.
    pub js: jetstream::Context,
    /// A client for the API server.
    pub client: kube::Client,
    /// Where the kubeconfig is.
    pub kubeconfig: tempfile::NamedTempFile,
    /// The registry images come from.
    pub source: Registry,
    /// The backup registry.
    pub backup: Registry,
    /// The docker config the functions get (`DOCKER_CONFIG_FILE`) with the backup registry's
    /// credentials, when it has any.
    pub docker_config: Option<tempfile::NamedTempFile>,
    /// The token services of the registries in token mode (they stop with the cluster).
    pub token_issuers: Vec<crate::token_auth::TokenIssuer>,
    /// The CAs of the HTTPS registries in one PEM file, the functions' `REGISTRY_CA_FILE`
    /// (none when every registry is plain HTTP).
    pub registry_ca_file: Option<tempfile::NamedTempFile>,
}

impl Cluster {
    /// Starts everything.
    pub async fn start() -> anyhow::Result<Self> {
        let nats = NatsServer::start().await?;
        let url = nats.url();
        Self::start_with_nats(nats, &url).await
    }

    /// Starts everything around `nats` (one started with its own configuration), which the
    /// test bed reaches at `url` (credentials in it); the functions get `nats.url()` and their
    /// own credentials from the caller.
    pub async fn start_with_nats(nats: NatsServer, url: &str) -> anyhow::Result<Self> {
        Self::start_with(Nats::Single(nats), url, crate::RegistryOptions::default()).await
    }

    /// Starts everything on a JetStream cluster of `nodes` nodes: the stream has one replica
    /// per node and the functions get `STREAM_REPLICAS` to match and every node's URL.
    pub async fn start_on_nats_cluster(nodes: usize) -> anyhow::Result<Self> {
        let nats = NatsCluster::start(nodes).await?;
        let url = nats.url();
        Self::start_with(Nats::Cluster(nats), &url, crate::RegistryOptions::default()).await
    }

    /// Starts everything with the backup registry private (htpasswd, user `backup`): the
    /// functions get its credentials in a docker config (`DOCKER_CONFIG_FILE`), as the deploy
    /// manifests mount them, and anonymous pulls of backups are refused.
    pub async fn start_private_backup() -> anyhow::Result<Self> {
        let nats = NatsServer::start().await?;
        let url = nats.url();
        let password = format!("pw-{:016x}", rand::random::<u64>());
        let options = crate::RegistryOptions {
            htpasswd: Some(crate::registry::Credentials {
                username: "backup".into(),
                password,
            }),
            ..Default::default()
        };
        Self::start_with(Nats::Single(nats), &url, options).await
    }

    /// Starts everything with both registries as they are on the internet: HTTPS with
    /// certificates from per-run CAs (the functions get them in `REGISTRY_CA_FILE`, the simulated
    /// kubelet trusts them as a node would) and token services ([`crate::token_auth`]). The
    /// source lets anyone pull (a public registry: its publisher, [`Cluster::source_publisher`],
    /// may push); the backup registry is private, its user `backup` in the functions' docker
    /// config. Tokens live `token_lifetime` (Docker Hub's are 300 s; shorter ones make every
    /// client renew them during a test).
    pub async fn start_internet_like(token_lifetime: Duration) -> anyhow::Result<Self> {
        use crate::token_auth::{TokenOptions, start_token_registry_with};
        let nats = NatsServer::start().await?;
        let url = nats.url();
        let user = |name: &str| crate::registry::Credentials {
            username: name.into(),
            password: format!("pw-{:016x}", rand::random::<u64>()),
        };
        let options = TokenOptions {
            https: true,
            anonymous_pull: true,
            lifetime: token_lifetime,
        };
        let (source, source_tokens) =
            start_token_registry_with(user("publisher"), options.clone()).await?;
        let (backup, backup_tokens) = start_token_registry_with(
            user("backup"),
            TokenOptions {
                anonymous_pull: false,
                ..options
            },
        )
        .await?;
        Self::assemble(
            Nats::Single(nats),
            &url,
            source,
            backup,
            vec![source_tokens, backup_tokens],
        )
        .await
    }

    async fn start_with(
        nats: Nats,
        url: &str,
        backup: crate::RegistryOptions,
    ) -> anyhow::Result<Self> {
        let source = Registry::start().await?;
        let backup = Registry::start_with(backup).await?;
        Self::assemble(nats, url, source, backup, Vec::new()).await
    }

    async fn assemble(
        nats: Nats,
        url: &str,
        source: Registry,
        backup: Registry,
        token_issuers: Vec<crate::token_auth::TokenIssuer>,
    ) -> anyhow::Result<Self> {
        let api = ApiServer::start().await?;
        api.install_imagebackup_crd().await?;
        let js = jetstream::new(shared::nats::connect(url, "cluster").await?);
        crate::nats_cluster::ensure_stream(&js, nats.stream_replicas()).await?;
        let kubeconfig = tempfile::NamedTempFile::new()?;
        api.write_kubeconfig(kubeconfig.path())?;
        Self {
            client: api.client()?,
            api,
            nats,
            js,
            kubeconfig,
            source,
            backup,
            docker_config: None,
            token_issuers,
            registry_ca_file: None,
        }
        .with_registry_files()
    }

    /// Writes the files the functions read about the registries: the docker config with the
    /// backup registry's credentials and the CA file of the HTTPS ones.
    fn with_registry_files(mut self) -> anyhow::Result<Self> {
        let cas: Vec<&str> = [&self.source, &self.backup]
            .into_iter()
            .filter_map(Registry::ca_pem)
            .collect();
        if !cas.is_empty() {
            let file = tempfile::NamedTempFile::new()?;
            std::fs::write(file.path(), cas.concat())?;
            self.registry_ca_file = Some(file);
        }
        if let Some(c) = self.backup.credentials() {
            self.docker_config = Some(docker_config_file(&self.backup.host(), c)?);
        }
        Ok(self)
    }

    /// The simulated kubelet pulls from now on (see [`crate::apiserver::PullSettings`]), with
    /// `docker.io` mirrored by the source registry as the functions' `REGISTRY_MIRRORS` do.
    pub fn kubelet_pulls(&self) {
        self.api.simulate_pulls(crate::apiserver::PullSettings {
            enabled: true,
            mirrors: [("docker.io".to_string(), self.source.url())].into(),
            https: [&self.source, &self.backup]
                .into_iter()
                .filter_map(|r| Some((r.host(), r.ca_pem()?.to_string())))
                .collect(),
            ..Default::default()
        });
    }

    /// The source registry's publisher (who may push to it), when it is in token mode.
    pub fn source_publisher(&self) -> Option<&crate::registry::Credentials> {
        self.source.credentials()
    }

    /// `host:port/backup`: the `--backup-registry` of the functions.
    pub fn backup_registry(&self) -> String {
        format!("{}/{BACKUP_PREFIX}", self.backup.host())
    }

    /// A pusher into the source registry.
    pub fn source_pusher(&self) -> Pusher {
        Pusher::new(&self.source.host(), None)
    }

    /// Pushes a small single-platform OCI image (one 8 KiB layer from `seed`) to
    /// `repo:tag` in the source registry.
    pub async fn push_small(
        &self,
        repo: &str,
        tag: &str,
        seed: u64,
    ) -> anyhow::Result<crate::PushedImage> {
        self.source_pusher()
            .push_image(
                repo,
                tag,
                &crate::ImageSpec::single(crate::Format::Oci, 1, 8 * 1024, seed),
            )
            .await
    }

    /// The environment every function gets.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("KUBECONFIG", self.kubeconfig.path().display().to_string()),
            ("NATS_URL", self.nats.url()),
            ("STREAM_REPLICAS", self.nats.stream_replicas().to_string()),
            ("BACKUP_REGISTRY", self.backup_registry()),
            ("LOG_LEVEL", "info,kube=warn,async_nats=warn".to_string()),
        ];
        let plain: Vec<String> = [&self.source, &self.backup]
            .into_iter()
            .filter(|r| r.ca_pem().is_none())
            .map(Registry::host)
            .collect();
        if !plain.is_empty() {
            env.push(("INSECURE_REGISTRIES", plain.join(",")));
        }
        if let Some(file) = &self.registry_ca_file {
            env.push(("REGISTRY_CA_FILE", file.path().display().to_string()));
        }
        if let Some(file) = &self.docker_config {
            env.push(("DOCKER_CONFIG_FILE", file.path().display().to_string()));
        }
        env
    }

    /// Starts `function` (`watcher`, `backup`, `rollout`) with `args` and the cluster's
    /// environment plus `extra`; waits until it is ready.
    pub async fn spawn(
        &self,
        function: &str,
        args: &[&str],
        extra: &[(&'static str, String)],
    ) -> anyhow::Result<FunctionProcess> {
        let mut p = self.start_function(function, args, extra)?;
        p.wait_ready(Duration::from_secs(60)).await?;
        Ok(p)
    }

    /// Starts a function like [`Cluster::spawn`] without waiting for it to be ready (to start
    /// several at once, as a cluster does).
    pub fn start_function(
        &self,
        function: &str,
        args: &[&str],
        extra: &[(&'static str, String)],
    ) -> anyhow::Result<FunctionProcess> {
        let mut env = self.env();
        env.extend(extra.iter().cloned());
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        FunctionProcess::spawn(function, &args, &env)
    }

    /// Creates a namespace (an existing one is fine).
    pub async fn namespace(&self, name: &str) -> anyhow::Result<()> {
        let ns: Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))?;
        match Api::<Namespace>::all(self.client.clone())
            .create(&PostParams::default(), &ns)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Creates Deployment `namespace/name` (and its namespace) with one container, `main`,
    /// running `image`; returns it as created.
    pub async fn deployment(
        &self,
        namespace: &str,
        name: &str,
        image: &str,
    ) -> anyhow::Result<k8s_openapi::api::apps::v1::Deployment> {
        self.namespace(namespace).await?;
        let d: k8s_openapi::api::apps::v1::Deployment =
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"selector": {"matchLabels": {"app": name}},
                         "template": {"metadata": {"labels": {"app": name}},
                                      "spec": {"containers": [{"name": "main", "image": image}]}}}
            }))?;
        Ok(Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(
            self.client.clone(),
            namespace,
        )
        .create(&PostParams::default(), &d)
        .await?)
    }

    /// Creates a `kubernetes.io/dockerconfigjson` pull secret for `registry` (an image pull
    /// secret a workload names).
    pub async fn pull_secret(
        &self,
        namespace: &str,
        name: &str,
        registry: &str,
        username: &str,
        password: &str,
    ) -> anyhow::Result<()> {
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let auth = b64(&format!("{username}:{password}"));
        let config = serde_json::json!({"auths": {registry: {"auth": auth}}}).to_string();
        let secret: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": namespace},
            "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": b64(&config)}
        }))?;
        Api::<Secret>::namespaced(self.client.clone(), namespace)
            .create(&PostParams::default(), &secret)
            .await?;
        Ok(())
    }

    /// A kubeconfig file that authenticates as service account `namespace/name`, and its
    /// token.
    pub fn service_account_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<(String, tempfile::NamedTempFile)> {
        let token = self
            .api
            .issue_token(crate::apiserver::auth::User::service_account(
                namespace, name,
            ));
        let file = tempfile::NamedTempFile::new()?;
        std::fs::write(file.path(), self.api.kubeconfig_with_token(&token))?;
        Ok((token, file))
    }

    /// The first container image of a workload's pod template, read by `get`.
    pub async fn image_of<K>(&self, namespace: &str, name: &str) -> Option<String>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug
            + serde::Serialize,
    {
        let object = Api::<K>::namespaced(self.client.clone(), namespace)
            .get(name)
            .await
            .ok()?;
        let value = serde_json::to_value(object).ok()?;
        value["spec"]["template"]["spec"]["containers"][0]["image"]
            .as_str()
            .map(str::to_string)
    }

    /// Every event stored in the stream so far.
    pub async fn events(&self) -> anyhow::Result<Vec<(String, shared::events::Payload)>> {
        crate::stream::stored(&self.js).await
    }
}

/// A docker config file (`DOCKER_CONFIG_FILE`) with `credentials` for registry `host`.
pub fn docker_config_file(
    host: &str,
    credentials: &crate::registry::Credentials,
) -> anyhow::Result<tempfile::NamedTempFile> {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", credentials.username, credentials.password));
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(
        file.path(),
        serde_json::json!({"auths": {host: {"auth": auth}}}).to_string(),
    )?;
    Ok(file)
}
