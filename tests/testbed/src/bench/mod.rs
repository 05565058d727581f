//! The copy benchmark: `backup copy` against `skopeo copy --all --preserve-digests`, side by side
//! in one run, on two local registries and four generated image shapes, cold (target storage and
//! skopeo's blob-info cache wiped before every run) and warm (target complete), timed by
//! hyperfine (median of N runs), plus peak RSS from `/usr/bin/time -v`; and `backup copy`'s warm
//! copy with its default `--referrers all` against `--referrers none` (the price of looking for
//! signatures). Prints Markdown tables for `docs/benchmarks.md`.

pub mod backup;
pub mod referrers;
pub mod scale;
pub mod watcher;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::{Format, ImageSpec, Pusher, Registry};

const MIB: usize = 1024 * 1024;
const SKOPEO_CACHE: &str = "/var/lib/containers/cache/blob-info-cache-v1.boltdb";

/// One image shape of the benchmark.
struct Shape {
    name: &'static str,
    spec: ImageSpec,
}

fn shapes() -> Vec<Shape> {
    let mut medium = ImageSpec::multi_arch(Format::Oci, 5, 20 * MIB, 2);
    medium.shared_base = Some(10 * MIB);
    vec![
        Shape {
            name: "small",
            spec: ImageSpec::multi_arch(Format::Oci, 3, MIB, 1),
        },
        Shape {
            name: "medium",
            spec: medium,
        },
        Shape {
            name: "many",
            spec: ImageSpec::single(Format::Oci, 60, 64 * 1024, 3),
        },
        Shape {
            name: "large",
            spec: ImageSpec::single(Format::Oci, 4, 256 * MIB, 4),
        },
    ]
}

/// One measured line.
#[derive(Debug, Clone)]
struct Measure {
    median: f64,
    rss_kib: Option<u64>,
    cpu_seconds: Option<f64>,
}

/// Peak RSS (KiB) and user+system CPU seconds of one run.
struct Usage {
    rss_kib: u64,
    cpu_seconds: f64,
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn hyperfine(command: &str, prepare: Option<&str>, runs: u32, json: &Path) -> anyhow::Result<f64> {
    let mut cmd = Command::new("hyperfine");
    cmd.args([
        "--runs",
        &runs.to_string(),
        "--warmup",
        "0",
        "--style",
        "none",
        "--export-json",
    ])
    .arg(json);
    if let Some(p) = prepare {
        cmd.args(["--prepare", p]);
    }
    cmd.arg(command);
    let out = cmd
        .output()
        .context("hyperfine (apt-get install hyperfine)")?;
    if !out.status.success() {
        bail!(
            "hyperfine failed for {command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(json)?)?;
    v["results"][0]["median"]
        .as_f64()
        .context("hyperfine JSON has no median")
}

/// Median seconds of `runs` runs of each command (argv, output discarded), run in turn — a, b,
/// a, b, … — so that a machine that slows down or speeds up meanwhile weighs on each alike:
/// for comparisons of a few milliseconds, where hyperfine's one-command-then-the-next lets
/// a shared machine's drift decide.
fn interleaved(commands: &[Vec<String>], runs: u32) -> anyhow::Result<Vec<f64>> {
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); commands.len()];
    for _ in 0..runs.max(1) {
        for (argv, times) in commands.iter().zip(&mut times) {
            let (program, args) = argv.split_first().context("an empty command")?;
            let started = std::time::Instant::now();
            let status = Command::new(program)
                .args(args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .with_context(|| format!("run {program}"))?;
            times.push(started.elapsed().as_secs_f64());
            if !status.success() {
                bail!("{} failed: {status}", argv.join(" "));
            }
        }
    }
    Ok(times.into_iter().map(median).collect())
}

/// The median of some timings (0 for none).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn usage(command: &str, prepare: Option<&str>) -> anyhow::Result<Usage> {
    if let Some(p) = prepare {
        Command::new("sh").args(["-c", p]).status()?;
    }
    let out = Command::new("/usr/bin/time")
        .args(["-v", "sh", "-c", command])
        .output()
        .context("/usr/bin/time (apt-get install time)")?;
    let text = String::from_utf8_lossy(&out.stderr);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_string()))
    };
    let rss_kib = field("Maximum resident set size (kbytes):")
        .and_then(|v| v.parse().ok())
        .context("no RSS in /usr/bin/time output")?;
    let seconds = |name: &str| {
        field(name)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Ok(Usage {
        rss_kib,
        cpu_seconds: seconds("User time (seconds):") + seconds("System time (seconds):"),
    })
}

/// Runs the benchmark; returns the Markdown report.
pub async fn run(backup_bin: &Path, runs: u32, only: Option<&str>) -> anyhow::Result<String> {
    let src = Registry::start().await?;
    let dst = Registry::start().await?;
    let pusher = Pusher::new(&src.host(), None);
    let work = tempfile::tempdir()?;
    let wipe = format!(
        "rm -rf {} {}",
        sh_quote(&dst.storage_dir().join("docker").display().to_string()),
        SKOPEO_CACHE
    );
    let mut rows = Vec::new();
    let mut referrers = Vec::new();
    let warm_runs = runs.saturating_mul(5);
    for shape in shapes()
        .into_iter()
        .filter(|s| only.is_none_or(|o| o == s.name))
    {
        eprintln!("bench: pushing {}", shape.name);
        let image = pusher
            .push_image(&format!("bench/{}", shape.name), "1", &shape.spec)
            .await?;
        let source = format!("{}/bench/{}:1", src.host(), shape.name);
        let ours_target = format!("{}/ours/{}:1", dst.host(), shape.name);
        let skopeo_target = format!("{}/skopeo/{}:1", dst.host(), shape.name);
        let insecure = format!("{},{}", src.host(), dst.host());
        let ours = format!(
            "{} copy {source} {ours_target} --insecure-registry {insecure} >/dev/null",
            backup_bin.display(),
        );
        let ours_referrers = |mode: &str| {
            let mut args = vec![backup_bin.display().to_string()];
            args.extend(
                [
                    "copy",
                    &source,
                    &ours_target,
                    "--insecure-registry",
                    &insecure,
                    "--referrers",
                    mode,
                ]
                .map(str::to_string),
            );
            args
        };
        let skopeo = format!(
            "skopeo copy -q --all --preserve-digests --src-tls-verify=false --dest-tls-verify=false docker://{source} docker://{skopeo_target} >/dev/null"
        );
        let mut measures = Vec::new();
        for (tool, command) in [("backup copy", &ours), ("skopeo", &skopeo)] {
            eprintln!("bench: {} {tool} cold", shape.name);
            let cold = hyperfine(command, Some(&wipe), runs, &work.path().join("cold.json"))?;
            let usage = usage(command, Some(&wipe)).ok();
            eprintln!("bench: {} {tool} warm", shape.name);
            // The RSS run left the target complete. A warm copy takes milliseconds: five
            // times the runs, so that the median is not one noisy run.
            let warm = hyperfine(command, None, warm_runs, &work.path().join("warm.json"))?;
            if tool == "backup copy" {
                eprintln!(
                    "bench: {} {tool} warm, --referrers all and none in turn",
                    shape.name
                );
                if let [all, none] = interleaved(
                    &[ours_referrers("all"), ours_referrers("none")],
                    runs.saturating_mul(20),
                )?[..]
                {
                    referrers.push((shape.name, all, none));
                }
            }
            measures.push((
                tool,
                Measure {
                    median: cold,
                    rss_kib: usage.as_ref().map(|u| u.rss_kib),
                    cpu_seconds: usage.as_ref().map(|u| u.cpu_seconds),
                },
                warm,
            ));
        }
        rows.push((shape.name, image.blob_bytes(), measures));
    }
    let mut out = String::new();
    out.push_str("| shape | bytes | tool | cold median (s) | warm median (s) | peak RSS (MiB) | CPU of one cold run (s) |\n|---|---|---|---|---|---|---|\n");
    let mut ratios = String::from(
        "\n| shape | cold speed-up vs skopeo | warm speed-up vs skopeo |\n|---|---|---|\n",
    );
    for (name, bytes, measures) in &rows {
        for (tool, cold, warm) in measures {
            out.push_str(&format!(
                "| {name} | {:.1} MiB | {tool} | {:.3} | {:.3} | {} | {} |\n",
                *bytes as f64 / MIB as f64,
                cold.median,
                warm,
                cold.rss_kib
                    .map_or("?".to_string(), |k| format!("{:.1}", k as f64 / 1024.0)),
                cold.cpu_seconds
                    .map_or("?".to_string(), |c| format!("{c:.2}"))
            ));
        }
        if let [(_, ours_cold, ours_warm), (_, skopeo_cold, skopeo_warm)] = measures.as_slice() {
            ratios.push_str(&format!(
                "| {name} | {:.2}x | {:.2}x |\n",
                skopeo_cold.median / ours_cold.median,
                skopeo_warm / ours_warm
            ));
        }
    }
    out.push_str(&ratios);
    out.push_str("\n| shape | warm, `--referrers all` (s) | warm, `--referrers none` (s) | all ÷ none |\n|---|---|---|---|\n");
    for (name, all, none) in referrers {
        out.push_str(&format!(
            "| {name} | {all:.4} | {none:.4} | {:.2} |\n",
            all / none.max(f64::EPSILON)
        ));
    }
    Ok(out)
}

/// Peak RSS of `backup copy` against each mode of the hostile registry (the goal is the same
/// bound as for an honest 1 GiB copy); returns the Markdown table.
pub async fn run_hostile(backup_bin: &Path) -> anyhow::Result<String> {
    use crate::hostile_registry::{HostileRegistry, Mode};
    let dst = Registry::start().await?;
    let mut out = String::from(
        "| hostile mode | exit | class | body bytes served | peak RSS (MiB) |\n|---|---|---|---|---|\n",
    );
    for mode in Mode::ALL {
        let hostile = HostileRegistry::start(mode).await?;
        let command = format!(
            "{} copy {}/evil/app:1 {}/bk/{}:1 --insecure-registry {},{} >/dev/null 2>{}",
            backup_bin.display(),
            hostile.host(),
            dst.host(),
            format!("{mode:?}").to_lowercase(),
            hostile.host(),
            dst.host(),
            "/tmp/bench-hostile.err",
        );
        // `usage` waits for the child: off the runtime, so the registry keeps serving.
        let (usage, command) =
            tokio::task::spawn_blocking(move || (usage(&command, None), command)).await?;
        let usage = usage?;
        let err = std::fs::read_to_string("/tmp/bench-hostile.err").unwrap_or_default();
        let class = err
            .split_once("backup copy: ")
            .and_then(|(_, rest)| rest.split(':').next())
            .unwrap_or("-")
            .to_string();
        eprintln!("bench-hostile: {mode:?}: {command}");
        out.push_str(&format!(
            "| {mode:?} | {} | {class} | {} | {:.1} |\n",
            if class == "-" { "0" } else { "1" },
            hostile.bytes_served(),
            usage.rss_kib as f64 / 1024.0
        ));
    }
    Ok(out)
}

/// The `backup` binary next to the running `testbed` binary, if built.
pub fn default_backup_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("backup")))
        .unwrap_or_else(|| PathBuf::from("backup"))
}
