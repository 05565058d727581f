//! The copy benchmark: `backup copy` against `skopeo copy --all --preserve-digests`, side by side
//! in one run, on two local registries and four generated image shapes, cold (target storage and
//! skopeo's blob-info cache wiped before every run) and warm (target complete), timed by
//! hyperfine (median wall time and mean CPU of N runs), plus peak RSS from `/usr/bin/time -v`; and `backup copy`'s warm
//! copy with its default `--referrers all` against `--referrers none` (the price of looking for
//! signatures); and, cold, the raw-bytes floor ([`floor`]: the same bytes moved with no checks
//! at all), to tell the copier's own cost from the registries'. Over plain HTTP, or with
//! `https` between two HTTPS registries (each with its own test CA), as registries on the
//! internet are spoken to. Prints Markdown tables for `docs/benchmarks.md`.

pub mod backup;
pub mod floor;
pub mod referrers;
pub mod scale;
pub mod watcher;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::tools::sh_quote;
use crate::{Format, ImageSpec, Pusher, Registry, RegistryOptions};

const MIB: usize = 1024 * 1024;
const SKOPEO_CACHE: &str = "/var/lib/containers/cache/blob-info-cache-v1.boltdb";
/// The row of the raw-bytes floor ([`floor`]).
const FLOOR: &str = "floor (bytes only)";

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

/// What hyperfine measured of one command.
struct Timed {
    /// Median wall seconds.
    median: f64,
    /// Mean user + system CPU seconds of one run.
    cpu: Option<f64>,
}

fn hyperfine(
    command: &str,
    prepare: Option<&str>,
    runs: u32,
    json: &Path,
) -> anyhow::Result<Timed> {
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
    let result = &v["results"][0];
    Ok(Timed {
        median: result["median"]
            .as_f64()
            .context("hyperfine JSON has no median")?,
        cpu: result["user"]
            .as_f64()
            .zip(result["system"].as_f64())
            .map(|(user, system)| user + system),
    })
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

/// Peak RSS (KiB) of one run, from `/usr/bin/time -v`.
fn peak_rss_kib(command: &str, prepare: Option<&str>) -> anyhow::Result<u64> {
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
    field("Maximum resident set size (kbytes):")
        .and_then(|v| v.parse().ok())
        .context("no RSS in /usr/bin/time output")
}

/// How each copier is told to reach the two registries.
struct Trust {
    /// `backup copy`'s arguments.
    ours: Vec<String>,
    /// skopeo's.
    skopeo: String,
    /// `testbed move-bytes`'.
    floor: String,
}

impl Trust {
    /// Plain HTTP to both, or HTTPS trusting both registries' CAs (written into `work`).
    fn for_registries(src: &Registry, dst: &Registry, work: &Path) -> anyhow::Result<Self> {
        let (Some(src_ca), Some(dst_ca)) = (src.ca_pem(), dst.ca_pem()) else {
            return Ok(Self {
                ours: vec![
                    "--insecure-registry".to_string(),
                    format!("{},{}", src.host(), dst.host()),
                ],
                skopeo: "--src-tls-verify=false --dest-tls-verify=false".to_string(),
                floor: String::new(),
            });
        };
        let bundle = work.join("registry-cas.pem");
        std::fs::write(&bundle, format!("{src_ca}{dst_ca}"))?;
        // skopeo reads every `*.crt` of a certificate directory as a CA.
        let certs = work.join("certs");
        std::fs::create_dir_all(&certs)?;
        std::fs::write(certs.join("source.crt"), src_ca)?;
        std::fs::write(certs.join("target.crt"), dst_ca)?;
        let (bundle, certs) = (bundle.display().to_string(), certs.display().to_string());
        Ok(Self {
            ours: vec!["--registry-ca-file".to_string(), bundle.clone()],
            skopeo: format!(
                "--src-cert-dir {} --dest-cert-dir {}",
                sh_quote(&certs),
                sh_quote(&certs)
            ),
            floor: format!("--ca-file {}", sh_quote(&bundle)),
        })
    }
}

/// Runs the benchmark (between HTTPS registries with `https`); returns the Markdown report.
pub async fn run(
    backup_bin: &Path,
    runs: u32,
    only: Option<&str>,
    https: bool,
) -> anyhow::Result<String> {
    let testbed_bin = std::env::current_exe().context("the path of this testbed binary")?;
    let options = RegistryOptions {
        https,
        ..Default::default()
    };
    let src = Registry::start_with(options.clone()).await?;
    let dst = Registry::start_with(options).await?;
    let work = tempfile::tempdir()?;
    let trust = Trust::for_registries(&src, &dst, work.path())?;
    let pusher = Pusher::trusting(&src.host(), None, src.ca_pem())?;
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
        let ours = format!(
            "{} copy {source} {ours_target} {} >/dev/null",
            backup_bin.display(),
            trust
                .ours
                .iter()
                .map(|a| sh_quote(a))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let ours_referrers = |mode: &str| {
            let mut args = vec![backup_bin.display().to_string()];
            args.extend(["copy", &source, &ours_target].map(str::to_string));
            args.extend(trust.ours.iter().cloned());
            args.extend(["--referrers", mode].map(str::to_string));
            args
        };
        let skopeo = format!(
            "skopeo copy -q --all --preserve-digests {} docker://{source} docker://{skopeo_target} >/dev/null",
            trust.skopeo
        );
        let floor = format!(
            "{} move-bytes {source} {}/floor/{}:1 {} >/dev/null",
            testbed_bin.display(),
            dst.host(),
            shape.name,
            trust.floor
        );
        let mut measures = Vec::new();
        for (tool, command) in [("backup copy", &ours), ("skopeo", &skopeo), (FLOOR, &floor)] {
            eprintln!("bench: {} {tool} cold", shape.name);
            let cold = hyperfine(command, Some(&wipe), runs, &work.path().join("cold.json"))?;
            let measure = Measure {
                median: cold.median,
                rss_kib: peak_rss_kib(command, Some(&wipe)).ok(),
                cpu_seconds: cold.cpu,
            };
            if tool == FLOOR {
                // It moves everything every time: there is no warm floor.
                measures.push((tool, measure, None));
                continue;
            }
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
            measures.push((tool, measure, Some(warm.median)));
        }
        rows.push((shape.name, image.blob_bytes(), measures));
    }
    let mut out = String::new();
    out.push_str("| shape | bytes | tool | cold median (s) | warm median (s) | peak RSS (MiB) | cold CPU, mean of the runs (s) |\n|---|---|---|---|---|---|---|\n");
    let mut ratios = String::from(
        "\n| shape | cold speed-up vs skopeo | warm speed-up vs skopeo | cold time ÷ the floor's | cold CPU ÷ the floor's |\n|---|---|---|---|---|\n",
    );
    for (name, bytes, measures) in &rows {
        for (tool, cold, warm) in measures {
            out.push_str(&format!(
                "| {name} | {:.1} MiB | {tool} | {:.3} | {} | {} | {} |\n",
                *bytes as f64 / MIB as f64,
                cold.median,
                warm.map_or("–".to_string(), |w| format!("{w:.3}")),
                cold.rss_kib
                    .map_or("?".to_string(), |k| format!("{:.1}", k as f64 / 1024.0)),
                cold.cpu_seconds
                    .map_or("?".to_string(), |c| format!("{c:.2}"))
            ));
        }
        if let [
            (_, ours_cold, Some(ours_warm)),
            (_, skopeo_cold, Some(skopeo_warm)),
            (_, floor, _),
        ] = measures.as_slice()
        {
            let cpu = match (ours_cold.cpu_seconds, floor.cpu_seconds) {
                (Some(ours), Some(floor)) if floor > 0.0 => format!("{:.2}", ours / floor),
                _ => "?".to_string(),
            };
            ratios.push_str(&format!(
                "| {name} | {:.2}x | {:.2}x | {:.2} | {cpu} |\n",
                skopeo_cold.median / ours_cold.median,
                skopeo_warm / ours_warm,
                ours_cold.median / floor.median.max(f64::EPSILON),
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
        // `peak_rss_kib` waits for the child: off the runtime, so the registry keeps serving.
        let (rss_kib, command) =
            tokio::task::spawn_blocking(move || (peak_rss_kib(&command, None), command)).await?;
        let rss_kib = rss_kib?;
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
            rss_kib as f64 / 1024.0
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
