//! A real 3-node (or N-node) JetStream cluster on loopback: each node a `nats-server` with its
//! own client port, route port and store, routes to every peer, `sync_interval: always` as the
//! deploy manifests set it. Nodes can be SIGKILLed, restarted with their store or with it wiped
//! (a node replaced by an empty one), and the whole cluster restarted; the stream's leader is
//! read from the stream's info, so a test can kill exactly the node that leads.
//!
//! [`Nats`] is what a [`crate::cluster::Cluster`] holds: one server or a cluster, with the same
//! `url`, `restart` and `log`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail};
use async_nats::jetstream;

use crate::NatsServer;
use crate::process::{ChildGuard, free_port, wait_for_port};

/// One node of a [`NatsCluster`].
#[derive(Debug)]
struct Node {
    port: u16,
    config: PathBuf,
    store: PathBuf,
    /// One log per life of the node (a restart starts a new one).
    logs: Vec<PathBuf>,
    guard: Option<ChildGuard>,
}

/// A running JetStream cluster, stopped on drop.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts `size` clustered nodes (server names `n0`, `n1`, …) and waits until JetStream
    /// has a meta leader (the cluster can create streams).
    pub async fn start(size: usize) -> anyhow::Result<Self> {
        let version = crate::nats_server::installed_version()?;
        if let Err(e) = shared::nats::check_server_version(&version) {
            bail!("{e} (binary: {})", crate::nats_server::binary());
        }
        let dir = tempfile::tempdir()?;
        let ports: Vec<(u16, u16)> = (0..size)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<anyhow::Result<_>>()?;
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, route)| format!("\"nats-route://127.0.0.1:{route}\""))
            .collect();
        let mut nodes = Vec::new();
        for (i, (port, route)) in ports.iter().enumerate() {
            let store = dir.path().join(format!("n{i}"));
            let config = dir.path().join(format!("n{i}.conf"));
            std::fs::write(
                &config,
                format!(
                    "server_name: n{i}\nlisten: \"127.0.0.1:{port}\"\n\
                     jetstream {{ store_dir: {store:?}, sync_interval: always }}\n\
                     cluster {{\n  name: testbed\n  listen: \"127.0.0.1:{route}\"\n  \
                     routes: [{}]\n}}\n",
                    routes.join(", "),
                    store = store.display().to_string(),
                ),
            )?;
            nodes.push(Node {
                port: *port,
                config,
                store,
                logs: Vec::new(),
                guard: None,
            });
        }
        let mut cluster = Self { nodes, _dir: dir };
        for i in 0..size {
            cluster.spawn(i)?;
        }
        for i in 0..size {
            cluster.wait_listening(i).await?;
        }
        cluster.wait_for_meta_leader().await?;
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let node = &mut self.nodes[i];
        let mut cmd = Command::new(crate::nats_server::binary());
        cmd.arg("-c").arg(&node.config);
        let log = node
            .config
            .with_extension(format!("{}.log", node.logs.len()));
        node.guard = Some(ChildGuard::spawn(&format!("nats-server n{i}"), cmd, &log)?);
        node.logs.push(log);
        Ok(())
    }

    async fn wait_listening(&mut self, i: usize) -> anyhow::Result<()> {
        let node = &mut self.nodes[i];
        let guard = node.guard.as_mut().context("node not running")?;
        let log = node.logs.last().context("node never started")?;
        wait_for_port(([127, 0, 0, 1], node.port).into(), guard, log).await
    }

    /// Waits (up to 30 s) until the cluster answers JetStream API calls.
    async fn wait_for_meta_leader(&self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let client = shared::nats::connect(&self.url(), "testbed-cluster").await?;
        let js = jetstream::new(client);
        loop {
            match tokio::time::timeout(Duration::from_secs(2), js.query_account()).await {
                Ok(Ok(_)) => return Ok(()),
                other => {
                    if tokio::time::Instant::now() > deadline {
                        bail!("the NATS cluster elected no JetStream leader in 30 s: {other:?}");
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// How many nodes it has.
    pub fn size(&self) -> usize {
        self.nodes.len()
    }

    /// Every node's URL, comma-separated (what `NATS_URL` takes).
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// SIGKILLs node `i` (its store stays).
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].guard = None;
    }

    /// Starts node `i` again (killing it first if it runs) with the store it had.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill(i);
        self.spawn(i)?;
        self.wait_listening(i).await
    }

    /// Kills node `i`, deletes its store and starts it empty: it must catch up from its peers.
    pub async fn restart_wiped(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill(i);
        remove_dir(&self.nodes[i].store)?;
        self.spawn(i)?;
        self.wait_listening(i).await
    }

    /// Kills every node, then starts them all again with their stores.
    pub async fn restart_all(&mut self) -> anyhow::Result<()> {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        for i in 0..self.nodes.len() {
            self.spawn(i)?;
        }
        for i in 0..self.nodes.len() {
            self.wait_listening(i).await?;
        }
        self.wait_for_meta_leader().await
    }

    /// The index of the node leading stream `name`, from the stream's info (`None` while it
    /// has no leader or cannot be asked).
    pub async fn stream_leader(&self, js: &jetstream::Context, name: &str) -> Option<usize> {
        let mut stream = js.get_stream(name).await.ok()?;
        let info = tokio::time::timeout(Duration::from_secs(5), stream.info())
            .await
            .ok()?
            .ok()?;
        let leader = info.cluster.as_ref()?.leader.as_deref()?;
        leader.strip_prefix('n')?.parse().ok()
    }

    /// Every node's log, each under a header.
    pub fn log(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .flat_map(|(i, n)| {
                n.logs.iter().enumerate().map(move |(life, log)| {
                    format!(
                        "--- n{i} (start {}) ---\n{}",
                        life + 1,
                        std::fs::read_to_string(log).unwrap_or_default()
                    )
                })
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Creates or updates the stream with `replicas` copies, retrying for up to 30 s: a cluster that
/// just elected its JetStream leader may still refuse the first attempts.
pub async fn ensure_stream(js: &jetstream::Context, replicas: usize) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match shared::nats::ensure_stream_with(js, replicas).await {
            Ok(_) => return Ok(()),
            Err(e) if tokio::time::Instant::now() > deadline => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

fn remove_dir(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("remove {}", path.display())),
    }
}

/// The NATS a test cluster runs on: one server, or a JetStream cluster.
#[derive(Debug)]
pub enum Nats {
    /// One `nats-server -js`.
    Single(NatsServer),
    /// A JetStream cluster; the stream gets one replica per node.
    Cluster(NatsCluster),
}

impl Nats {
    /// The URL (a comma-separated list for a cluster) the functions get as `NATS_URL`.
    pub fn url(&self) -> String {
        match self {
            Nats::Single(s) => s.url(),
            Nats::Cluster(c) => c.url(),
        }
    }

    /// [`Nats::url`] with the single server's user and password in it.
    pub fn url_with_credentials(&self) -> String {
        match self {
            Nats::Single(s) => s.url_with_credentials(),
            Nats::Cluster(c) => c.url(),
        }
    }

    /// The stream replicas the functions are given (`STREAM_REPLICAS`): 1, or the cluster's
    /// size.
    pub fn stream_replicas(&self) -> usize {
        match self {
            Nats::Single(_) => 1,
            Nats::Cluster(c) => c.size(),
        }
    }

    /// Restarts the server, or every node of the cluster, with their stores.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        match self {
            Nats::Single(s) => s.restart().await,
            Nats::Cluster(c) => c.restart_all().await,
        }
    }

    /// The log(s) so far.
    pub fn log(&self) -> String {
        match self {
            Nats::Single(s) => s.log(),
            Nats::Cluster(c) => c.log(),
        }
    }

    /// The cluster, when it is one.
    pub fn cluster(&mut self) -> Option<&mut NatsCluster> {
        match self {
            Nats::Single(_) => None,
            Nats::Cluster(c) => Some(c),
        }
    }
}
