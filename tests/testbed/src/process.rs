//! Child processes and in-process servers of the test bed: guards that stop them when the fixture
//! is dropped, also when a test panics, plus helpers to pick ports and wait for them.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// A running child process, killed on drop.
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    child: Option<Child>,
}

impl ChildGuard {
    /// Spawns `cmd` with stdout/stderr sent to `log` (a file in the fixture's temp dir).
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> anyhow::Result<Self> {
        let out =
            std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .with_context(|| {
                format!("cannot start {name} ({cmd:?}); is it installed? `./dev setup` installs it")
            })?;
        Ok(Self {
            name: name.to_string(),
            child: Some(child),
        })
    }

    /// The process id, while it runs.
    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends SIGTERM (graceful stop) without waiting.
    pub fn terminate(&self) -> anyhow::Result<()> {
        if let Some(id) = self.id() {
            Command::new("kill")
                .args(["-TERM", &id.to_string()])
                .status()
                .context("kill -TERM")?;
        }
        Ok(())
    }

    /// Waits (polling, async) up to `limit` for the process to exit; its status if it did.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Fails if the process has already exited (it crashed on start-up).
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(child) = self.child.as_mut()
            && let Some(status) = child.try_wait()?
        {
            bail!("{} exited early with {status}", self.name);
        }
        Ok(())
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A free TCP port on 127.0.0.1 for a child process to listen on.
///
/// Taken below the kernel's ephemeral range (32768–60999 by default), where outgoing
/// connections never pick their local ports, and handed out in sequence within this process: a
/// port asked of the kernel (`bind :0`) and released could be reused by any of the hundreds of
/// connections a test run opens before the child binds it, and the child would then fail to
/// listen while something else answered on its port.
pub fn free_port() -> anyhow::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 15_000;
    const COUNT: u32 = 17_000;
    static NEXT: std::sync::OnceLock<AtomicU32> = std::sync::OnceLock::new();
    let next = NEXT.get_or_init(|| AtomicU32::new(rand::random_range(0..COUNT)));
    for _ in 0..COUNT {
        let port = (FIRST + next.fetch_add(1, Ordering::Relaxed) % COUNT) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port between {FIRST} and {}", FIRST + COUNT)
}

/// Waits until something accepts connections at `addr`, while `guard` keeps running. Async:
/// it sleeps the task, never the runtime's thread.
pub async fn wait_for_port(
    addr: SocketAddr,
    guard: &mut ChildGuard,
    log: &Path,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let connect = tokio::net::TcpStream::connect(addr);
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(200), connect).await {
            return Ok(());
        }
        if let Err(e) = guard.check_running() {
            let log = tokio::fs::read_to_string(log).await.unwrap_or_default();
            bail!("{e}; its log:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("nothing listened on {addr} within 20 s")
}

/// An HTTP server of the test bed running as a tokio task; dropping it stops the server.
#[derive(Debug)]
pub struct ServerTask(tokio::task::JoinHandle<()>);

impl ServerTask {
    /// Serves `app` on `listener` until dropped.
    pub fn spawn(listener: tokio::net::TcpListener, app: axum::Router) -> Self {
        Self(tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        }))
    }
}

impl ServerTask {
    /// Serves `app` over TLS on `listener` (HTTP/2 or HTTP/1.1 by ALPN) until dropped.
    pub fn spawn_tls(
        listener: tokio::net::TcpListener,
        app: axum::Router,
        config: std::sync::Arc<rustls::ServerConfig>,
    ) -> Self {
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        Self(tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let acceptor = acceptor.clone();
                let app = app.clone();
                tokio::spawn(async move {
                    let Ok(Ok(tls)) =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                            .await
                    else {
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
                });
            }
        }))
    }
}

impl Drop for ServerTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A kubectl cache directory (`KUBECACHEDIR`) of its own for the cluster behind `kubeconfig`.
///
/// kubectl caches discovery for six hours per server `host:port`; test servers come and go on
/// reused ports with different CRDs and kinds, so a shared cache would answer for a server that
/// is gone. Every kubectl a test runs gets this instead (under one directory per test process,
/// removed when the process ends).
pub fn kubectl_cache_dir(kubeconfig: impl AsRef<Path>) -> std::path::PathBuf {
    static ROOT: std::sync::OnceLock<Option<tempfile::TempDir>> = std::sync::OnceLock::new();
    let root = ROOT
        .get_or_init(|| tempfile::tempdir().ok())
        .as_ref()
        .map(|d| d.path().to_path_buf())
        .unwrap_or_else(std::env::temp_dir);
    let name: String = kubeconfig
        .as_ref()
        .display()
        .to_string()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    root.join(name)
}

/// Runs `kubectl ARGS` against `kubeconfig` (with its own discovery cache) and returns its
/// standard output; an error with its standard error when it fails. Blocking: call it from a
/// multi-threaded runtime, or where the API server does not share the thread.
pub fn kubectl(kubeconfig: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("KUBECACHEDIR", kubectl_cache_dir(kubeconfig))
        .output()
        .context("kubectl (apt-get install kubernetes-client)")?;
    if !out.status.success() {
        bail!("kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `kubectl kustomize DIR`: the rendered manifests of a kustomization.
pub fn kustomize(dir: &Path) -> anyhow::Result<String> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .context("kubectl (apt-get install kubernetes-client)")?;
    if !out.status.success() {
        bail!(
            "kubectl kustomize {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}
