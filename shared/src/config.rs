//! Command-line and environment settings shared by every function, with the same names
//! everywhere (the design contract). Each binary `#[command(flatten)]`s the ones it needs.

use std::path::PathBuf;

use crate::naming::{BackupRegistry, Layout, NamingPolicy};
use crate::registry::auth::DockerConfig;
use crate::registry::{ClientOptions, MirrorSpec, Mirrors};
use crate::secret::SecretUrl;

/// Where NATS is.
#[derive(Debug, Clone, clap::Args)]
pub struct NatsArgs {
    /// NATS server URL(s), comma-separated (JetStream enabled, nats-server 2.10 or newer).
    /// Credentials go in the URL (`nats://user:password@host`, `nats://token@host`) and are
    /// never shown: `Debug` and logs print `***`.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: SecretUrl,
    /// NATS user (with `--nats-password-file`): each function has its own, allowed only its
    /// subjects.
    #[arg(long, env = "NATS_USER")]
    pub nats_user: Option<String>,
    /// A file holding the NATS user's password (a mounted Secret key).
    #[arg(long, env = "NATS_PASSWORD_FILE", requires = "nats_user")]
    pub nats_password_file: Option<PathBuf>,
    /// Copies of the stream and the consumers kept by a NATS cluster (1 on a single server; 3
    /// on a 3-node cluster survives the loss of one node). An existing stream or consumer with
    /// another count is updated in place, never recreated. Every function must use the same
    /// value.
    #[arg(long, env = "STREAM_REPLICAS", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..=5))]
    pub stream_replicas: u8,
}

/// Why the NATS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum NatsConfigError {
    /// The password file cannot be read.
    #[error("cannot read the NATS password file {path}: {source}")]
    PasswordFile {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl NatsArgs {
    /// The server list to connect to, with `--nats-user` and the password from
    /// `--nats-password-file` in it (percent-encoded) when they are given; otherwise
    /// `--nats-url` as written.
    pub fn url(&self) -> Result<SecretUrl, NatsConfigError> {
        let Some(user) = &self.nats_user else {
            return Ok(self.nats_url.clone());
        };
        let password = match &self.nats_password_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|source| NatsConfigError::PasswordFile {
                        path: path.display().to_string(),
                        source,
                    })?
                    .trim_end_matches(['\r', '\n'])
                    .to_string(),
            ),
            None => None,
        };
        let encode = |s: &str| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        let credentials = match &password {
            Some(p) => format!("{}:{}@", encode(user), encode(p)),
            None => format!("{}@", encode(user)),
        };
        // The first server carries them (they apply to every server of the list).
        let url = self.nats_url.expose();
        let (first, rest) = url.split_once(',').unwrap_or((url, ""));
        let first = first.trim();
        let (scheme, host) = first.split_once("://").unwrap_or(("nats", first));
        let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
        let mut with = format!("{scheme}://{credentials}{host}");
        if !rest.is_empty() {
            with.push(',');
            with.push_str(rest);
        }
        Ok(SecretUrl::from(with.as_str()))
    }
}

/// The backup registry and how images are named in it.
#[derive(Debug, Clone, clap::Args)]
pub struct BackupArgs {
    /// Where backups go: `host[:port][/prefix]`, e.g. docker.io/acme or localhost:5000/backup.
    #[arg(long, env = "BACKUP_REGISTRY")]
    pub backup_registry: BackupRegistry,
    /// How source repositories are laid out under the backup registry.
    #[arg(long, env = "NAMING_LAYOUT", value_enum, default_value_t = Layout::Flat)]
    pub naming_layout: Layout,
}

impl BackupArgs {
    /// The naming policy these settings describe.
    pub fn naming(&self) -> NamingPolicy {
        NamingPolicy {
            registry: self.backup_registry.clone(),
            layout: self.naming_layout,
        }
    }
}

/// How registries are reached.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RegistryArgs {
    /// Registries (host:port) reached over plain HTTP instead of HTTPS; repeat or comma-separate.
    #[arg(
        long = "insecure-registry",
        env = "INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    pub insecure_registries: Vec<String>,
    /// A docker config.json with credentials for the registries (the target's at least).
    #[arg(long, env = "DOCKER_CONFIG_FILE")]
    pub docker_config: Option<PathBuf>,
    /// Read HOST's images from MIRROR first (`HOST=MIRROR`, e.g. `docker.io=mirror.local:5000`;
    /// `http://MIRROR` for plain HTTP); names stay HOST's. Repeat or comma-separate; several
    /// mirrors of one host are tried in order, then HOST itself (containerd `hosts.toml`).
    #[arg(
        long = "registry-mirror",
        env = "REGISTRY_MIRRORS",
        value_delimiter = ',',
        value_name = "HOST=MIRROR"
    )]
    pub registry_mirrors: Vec<MirrorSpec>,
    /// Never fall back from a mirror to the registry it mirrors (for networks that cannot
    /// reach the internet).
    #[arg(long, env = "MIRROR_ONLY")]
    pub mirror_only: bool,
    /// PEM file of CA certificates trusted for registries (a private or corporate CA), on top
    /// of the system's roots; repeat or comma-separate.
    #[arg(
        long = "registry-ca-file",
        env = "REGISTRY_CA_FILE",
        value_delimiter = ',',
        value_name = "PATH"
    )]
    pub registry_ca_files: Vec<PathBuf>,
}

/// Why the registry settings cannot be used together.
#[derive(Debug, thiserror::Error)]
pub enum RegistryConfigError {
    /// A mirror is set for the registry backups go to: a backup must be checked where it
    /// lives, never through a mirror of it.
    #[error(
        "--registry-mirror is set for {0}, where backups go: backups are read and verified at the backup registry itself; remove that mirror"
    )]
    BackupRegistryMirrored(String),
    /// A `--registry-ca-file` cannot be read or holds no PEM certificate.
    #[error("--registry-ca-file {path}: {reason}")]
    CaFile {
        /// The file.
        path: String,
        /// Why it cannot be used.
        reason: String,
    },
}

impl RegistryArgs {
    /// The registry client's options for these settings with `credentials`: insecure
    /// registries (plus the mirrors written `http://…`), mirrors, the CA certificates of
    /// `--registry-ca-file` (read now; an unreadable file or one without a certificate is an
    /// error), and the instance named in the User-Agent.
    pub fn client_options(
        &self,
        credentials: DockerConfig,
        instance: Option<String>,
    ) -> Result<ClientOptions, RegistryConfigError> {
        let mut insecure: std::collections::HashSet<String> =
            self.insecure_registries.iter().cloned().collect();
        insecure.extend(
            self.registry_mirrors
                .iter()
                .filter(|m| m.plain_http)
                .map(|m| m.mirror.clone()),
        );
        Ok(ClientOptions {
            insecure,
            credentials,
            mirrors: Mirrors::new(&self.registry_mirrors, self.mirror_only),
            instance,
            ca_certificates: self.ca_certificates()?,
            ..Default::default()
        })
    }

    /// The certificates in every `--registry-ca-file`.
    fn ca_certificates(&self) -> Result<Vec<reqwest::Certificate>, RegistryConfigError> {
        let mut all = Vec::new();
        for path in &self.registry_ca_files {
            let error = |reason: String| RegistryConfigError::CaFile {
                path: path.display().to_string(),
                reason,
            };
            // A CA bundle is small; anything larger is not one.
            let bytes = std::fs::read(path).map_err(|e| error(format!("cannot read it: {e}")))?;
            if bytes.len() > 4 << 20 {
                return Err(error("larger than 4 MiB: not a CA bundle".into()));
            }
            let certificates = reqwest::Certificate::from_pem_bundle(&bytes)
                .map_err(|e| error(format!("not PEM certificates: {e}")))?;
            if certificates.is_empty() {
                return Err(error("holds no PEM certificate".into()));
            }
            all.extend(certificates);
        }
        Ok(all)
    }

    /// The credentials in `--docker-config` (none without it): [`DockerConfig::from_file`],
    /// read once at start-up (a small file); errors name the file.
    pub fn load_docker_config(&self) -> Result<DockerConfig, crate::registry::auth::ConfigError> {
        match &self.docker_config {
            Some(path) => DockerConfig::from_file(path),
            None => Ok(DockerConfig::default()),
        }
    }

    /// Refuses a mirror of `backup_host`, the registry backups are written to and checked at.
    pub fn check_backup_host(&self, backup_host: &str) -> Result<(), RegistryConfigError> {
        if Mirrors::new(&self.registry_mirrors, false).mirrors(backup_host) {
            return Err(RegistryConfigError::BackupRegistryMirrored(
                backup_host.to_string(),
            ));
        }
        Ok(())
    }
}

/// The admin server (health, readiness, metrics).
#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    #[arg(long, env = "METRICS_LISTEN", default_value = "0.0.0.0:8080")]
    pub metrics_listen: std::net::SocketAddr,
    /// Who may read `/metrics`: `none` (anyone who reaches the port) or `kubernetes` (a bearer
    /// token that passes a TokenReview and a SubjectAccessReview for `get` on `/metrics`).
    /// `/healthz` and `/readyz` stay open.
    #[arg(long, env = "METRICS_AUTH", value_enum, default_value_t = crate::metrics_auth::MetricsAuthMode::None)]
    pub metrics_auth: crate::metrics_auth::MetricsAuthMode,
}

/// How the function's caches get their initial state from the API server.
#[derive(Debug, Clone, clap::Args)]
pub struct WatchArgs {
    /// `auto`: a streaming list (`sendInitialEvents`, kube-apiserver's WatchList) where the API
    /// server serves one, paged lists of 500 where it refuses or does not finish one;
    /// `streaming` or `paged`: only that.
    #[arg(long, env = "INITIAL_LIST", value_enum, default_value_t = crate::initial_list::InitialList::Auto)]
    pub initial_list: crate::initial_list::InitialList,
}

/// Where events go instead of JetStream (Knative).
#[derive(Debug, Clone, clap::Args)]
pub struct SinkArgs {
    /// POST events as binary-mode CloudEvents to this URL instead of publishing to JetStream
    /// (Knative's SinkBinding sets `K_SINK`).
    #[arg(long = "sink", env = "K_SINK")]
    pub sink: Option<url::Url>,
}

/// The `serve` adapter's endpoint (Knative).
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Where to listen for CloudEvents.
    #[arg(long, env = "LISTEN", default_value = "0.0.0.0:8000")]
    pub listen: std::net::SocketAddr,
    /// Seconds a request waits for its result before answering 202 (the result then goes to
    /// K_SINK). Keep it under the Knative request timeout (300 s by default).
    #[arg(long, env = "REPLY_TIMEOUT_SECONDS", default_value_t = 240)]
    pub reply_timeout_seconds: u64,
}

/// How logs are written.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log format: `text` for people, `json` lines for collectors. Default: text when stderr is
    /// a terminal, JSON otherwise (a container's logs go to a collector).
    #[arg(long, env = "LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log filter in `tracing` syntax (`info`, `backup=debug,kube=warn`).
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (`plain` is accepted too).
    #[value(alias = "plain")]
    Text,
    /// One JSON object per line.
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        nats: NatsArgs,
        #[command(flatten)]
        registries: RegistryArgs,
    }

    #[test]
    fn no_config_debug_prints_a_credential() {
        let cli = Cli::parse_from([
            "x",
            "--nats-url",
            "nats://bot:hunter2@nats:4222",
            "--docker-config",
            "/etc/creds/config.json",
        ]);
        let shown = format!("{cli:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("nats://***@nats:4222"), "{shown}");
        assert_eq!(cli.nats.nats_url.expose(), "nats://bot:hunter2@nats:4222");
    }

    #[test]
    fn a_nats_user_and_password_file_go_into_the_url_and_nowhere_else() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, "p@ss:w/rd\n").unwrap();
        let cli = Cli::parse_from([
            "x",
            "--nats-url",
            "nats://old:secret@nats-0:4222,nats://nats-1:4222",
            "--nats-user",
            "watcher",
            "--nats-password-file",
            file.to_str().unwrap(),
        ]);
        let url = cli.nats.url().unwrap();
        assert_eq!(
            url.expose(),
            "nats://watcher:p%40ss%3Aw%2Frd@nats-0:4222,nats://nats-1:4222"
        );
        assert!(!format!("{url:?} {url} {cli:?}").contains("p@ss"));
        let plain = Cli::parse_from(["x", "--nats-url", "nats://nats:4222"]);
        assert_eq!(plain.nats.url().unwrap().expose(), "nats://nats:4222");
        assert_eq!(plain.nats.stream_replicas, 1);
        assert!(Cli::try_parse_from(["x", "--nats-password-file", "/f"]).is_err());
    }

    #[test]
    fn stream_replicas_are_one_to_five() {
        let three = Cli::parse_from(["x", "--stream-replicas", "3"]);
        assert_eq!(three.nats.stream_replicas, 3);
        for bad in ["0", "6", "-1", "three"] {
            assert!(
                Cli::try_parse_from(["x", "--stream-replicas", bad]).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn mirrors_come_from_flags_and_plain_http_mirrors_are_insecure() {
        let cli = Cli::parse_from([
            "x",
            "--registry-mirror",
            "docker.io=http://127.0.0.1:5000,quay.io=q.local",
            "--registry-mirror",
            "ghcr.io=g.local:443",
            "--insecure-registry",
            "other:5000",
        ]);
        let options = cli
            .registries
            .client_options(DockerConfig::default(), None)
            .unwrap();
        assert_eq!(
            options.mirrors.hosts_for("docker.io"),
            ["127.0.0.1:5000", "docker.io"]
        );
        assert_eq!(
            options.mirrors.hosts_for("ghcr.io"),
            ["g.local:443", "ghcr.io"]
        );
        assert!(options.insecure.contains("127.0.0.1:5000"));
        assert!(options.insecure.contains("other:5000"));
        assert!(!options.insecure.contains("q.local"));
        assert!(cli.registries.check_backup_host("registry.local").is_ok());
        assert!(matches!(
            cli.registries.check_backup_host("index.docker.io"),
            Err(RegistryConfigError::BackupRegistryMirrored(_))
        ));
        assert!(Cli::try_parse_from(["x", "--registry-mirror", "docker.io"]).is_err());
    }
}
