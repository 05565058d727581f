//! A function binary (watcher, backup, rollout) running as a child process against the test
//! bed, the way a user runs it: command line and environment only. Tests and the demo use it to
//! start, stop (SIGTERM or SIGKILL), read the admin endpoints and the log of each process.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::bail;

use crate::process::{ChildGuard, free_port};

/// A running function process; killed on drop.
pub struct FunctionProcess {
    guard: ChildGuard,
    admin: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl FunctionProcess {
    /// Starts `binary` (a workspace binary name) with `args` and `env`, its admin server on a
    /// free port; stdout and stderr go to a log file.
    pub fn spawn(binary: &str, args: &[String], env: &[(&str, String)]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let log = dir.path().join(format!("{binary}.log"));
        let mut cmd = Command::new(crate::workspace_binary(binary));
        cmd.args(args)
            .env("METRICS_LISTEN", format!("127.0.0.1:{port}"))
            .env("RUST_BACKTRACE", "1");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let guard = ChildGuard::spawn(binary, cmd, &log)?;
        Ok(Self {
            guard,
            admin: format!("http://127.0.0.1:{port}"),
            log,
            _dir: dir,
        })
    }

    /// The admin server's base URL (`http://127.0.0.1:<port>`).
    pub fn admin_url(&self) -> &str {
        &self.admin
    }

    /// `GET <admin><path>`: status and body, or `None` while nothing answers.
    pub async fn admin_get(&self, path: &str) -> Option<(u16, String)> {
        let resp = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .ok()?
            .get(format!("{}{path}", self.admin))
            .send()
            .await
            .ok()?;
        let status = resp.status().as_u16();
        Some((status, resp.text().await.unwrap_or_default()))
    }

    /// Waits up to `limit` for `/readyz` to answer 200; fails with the log if it does not or
    /// the process exits.
    pub async fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            if matches!(self.admin_get("/readyz").await, Some((200, _))) {
                return Ok(());
            }
            if let Err(e) = self.guard.check_running() {
                bail!("{e}; log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("not ready within {limit:?}; log:\n{}", self.log())
    }

    /// SIGTERM, then waits up to `limit` for a graceful exit; the exit status if it exited.
    pub async fn terminate(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        self.guard.terminate().ok()?;
        self.guard.wait_exit(limit).await
    }

    /// Whether the process still runs (false once it exited or crashed).
    pub fn is_running(&mut self) -> bool {
        self.guard.check_running().is_ok()
    }

    /// Peak resident memory so far (`VmHWM` from /proc), in KiB, while the process runs.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.guard.id()?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// CPU seconds used so far (user + system, from /proc/<pid>/stat), while the process runs.
    pub fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds_of(self.guard.id()?)
    }

    /// The process's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// CPU seconds process `pid` has used so far (user + system, from /proc/<pid>/stat).
pub fn cpu_seconds_of(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces:
    // utime and stime are the 14th and 15th fields of the line, in clock ticks.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // Linux's USER_HZ is 100 on every architecture the project runs on.
    Some(ticks as f64 / 100.0)
}
