//! Real OCI registries: Debian's `docker-registry` (CNCF distribution 2.8) on free loopback
//! ports with filesystem storage in a temp dir, optionally behind htpasswd (basic) auth.

use std::process::Command;

use anyhow::Context as _;

use crate::process::{ChildGuard, free_port, wait_for_port};

/// A user and password for an htpasswd-protected registry.
#[derive(Clone)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// How to start a registry.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Require these credentials (htpasswd, bcrypt).
    pub htpasswd: Option<Credentials>,
    /// Extra `auth:` YAML replacing htpasswd (token auth), with its files already written.
    pub auth_yaml: Option<String>,
    /// Serve HTTPS with a certificate from a test CA made for this registry (its PEM is
    /// [`Registry::ca_pem`]).
    pub https: bool,
}

/// A running registry, stopped and its storage removed on drop.
#[derive(Debug)]
pub struct Registry {
    port: u16,
    /// The user it knows (htpasswd, or its token service's).
    pub(crate) credentials: Option<Credentials>,
    /// The CA of its certificate, when it serves HTTPS.
    ca_pem: Option<String>,
    /// Its TLS server configuration (a certificate for 127.0.0.1 by that CA), for a service
    /// that goes with it (its token service).
    tls_config: Option<std::sync::Arc<rustls::ServerConfig>>,
    dir: tempfile::TempDir,
    _guard: ChildGuard,
}

impl Registry {
    /// An anonymous registry.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(RegistryOptions::default()).await
    }

    /// A registry with options (auth).
    pub async fn start_with(options: RegistryOptions) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let mut auth = String::new();
        if let Some(c) = &options.htpasswd {
            let hash = bcrypt::hash(&c.password, 4).context("bcrypt")?;
            let path = dir.path().join("htpasswd");
            std::fs::write(&path, format!("{}:{hash}\n", c.username))?;
            auth = format!(
                "auth:\n  htpasswd:\n    realm: testbed\n    path: {}\n",
                path.display()
            );
        }
        if let Some(yaml) = &options.auth_yaml {
            auth = yaml.clone();
        }
        let mut tls = String::new();
        let mut ca_pem = None;
        let mut tls_config = None;
        if options.https {
            let test_tls = crate::tls::TestTls::generate()?;
            let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
            std::fs::write(&cert, &test_tls.chain_pem)?;
            std::fs::write(&key, &test_tls.key_pem)?;
            tls = format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            );
            ca_pem = Some(test_tls.ca_pem);
            tls_config = Some(test_tls.server_config);
        }
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  maintenance:\n    uploadpurging:\n      enabled: false\nhttp:\n  addr: 127.0.0.1:{port}\n{tls}{auth}",
            dir.path().join("data").display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config)?;
        let log = dir.path().join("registry.log");
        let mut cmd = Command::new(binary());
        cmd.arg("serve").arg(&config_path);
        let mut guard = ChildGuard::spawn("docker-registry", cmd, &log)?;
        wait_for_port(([127, 0, 0, 1], port).into(), &mut guard, &log).await?;
        Ok(Self {
            port,
            credentials: options.htpasswd,
            ca_pem,
            tls_config,
            dir,
            _guard: guard,
        })
    }

    /// `127.0.0.1:<port>`: the registry host as it appears in references.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:<port>` (`https://` when it serves HTTPS).
    pub fn url(&self) -> String {
        let scheme = if self.ca_pem.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.host())
    }

    /// The TLS server configuration of its certificate (HTTPS registries only).
    pub(crate) fn tls_config(&self) -> Option<std::sync::Arc<rustls::ServerConfig>> {
        self.tls_config.clone()
    }

    /// The PEM of the CA its certificate is signed by, when it serves HTTPS.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// The credentials it requires, if any (for a token registry: its token service's user).
    pub fn credentials(&self) -> Option<&Credentials> {
        self.credentials.as_ref()
    }

    /// Where it stores its data (to wipe a repository between benchmark runs).
    pub fn storage_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }
}

/// The registry binary to run: `$REGISTRY_BIN` or Debian's `docker-registry`.
pub fn binary() -> String {
    std::env::var("REGISTRY_BIN").unwrap_or_else(|_| "docker-registry".to_string())
}
