//! `kakoi bench`: the same workloads through bare python, `kakoi`, bubblewrap and kakoi's
//! Docker mode, interleaved, with the ratios to bare python as a table, JSON and an SVG plot.
//! The measuring and rendering live in [`crate::bench`]; this file builds the commands.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use anyhow::{Context as _, bail};
use clap::Args;

use crate::backend::docker::{DEFAULT_IMAGE, DockerBackend, DockerConfig};
use crate::bench::report::{
    BackendInfo, ColdRow, ConcurrencyRow, Host, Report, Row, RowStatus, Settings,
};
use crate::bench::stats::summarize;
use crate::bench::{self, Job, Outcome, Workload};

/// The backends, in table order. `kakoi-nocg` (`--no-cgroup`, opt-in) shows the cgroup's
/// share of kakoi's time in the same interleaved run.
pub const BACKENDS: [&str; 5] = ["bare", "kakoi", "kakoi-nocg", "bwrap", "docker"];

/// The env workload's requirements unless `-r` says otherwise.
pub const DEFAULT_REQUIREMENTS: &str = "numpy==2.2.6\n";

/// bubblewrap with a flag set comparable to kakoi's layers (every namespace, a new root
/// with the toolchain read-only, new /proc and /dev, tmpfs /tmp); no cgroup, no seccomp.
const BWRAP_FLAGS: &[&str] = &[
    "--unshare-all",
    "--die-with-parent",
    "--new-session",
    "--ro-bind",
    "/usr",
    "/usr",
    "--symlink",
    "usr/lib",
    "/lib",
    "--symlink",
    "usr/lib64",
    "/lib64",
    "--symlink",
    "usr/bin",
    "/bin",
    "--proc",
    "/proc",
    "--dev",
    "/dev",
    "--tmpfs",
    "/tmp",
];

/// Options of `kakoi bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Timed runs per backend and workload.
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
    /// Untimed interleaved iterations after each command's first run.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Workloads: pass, hello, numpy (an import from an env), cpu (1 s loop), alloc (100 MB).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "pass,hello,numpy,cpu,alloc"
    )]
    pub workloads: Vec<String>,
    /// Backends: bare, kakoi, kakoi-nocg (kakoi with --no-cgroup), bwrap, docker (bare must
    /// be included: it is the reference).
    #[arg(long, value_delimiter = ',', default_value = "bare,kakoi,bwrap,docker")]
    pub backends: Vec<String>,
    /// Parallel runs for the throughput test, comma-separated (empty, `--concurrency=`:
    /// skip it).
    #[arg(long, default_value = "1,4,16", value_parser = parse_parallelism)]
    pub concurrency: Parallelism,
    /// Runs per throughput batch, at least (rounded up to a multiple of the parallelism).
    #[arg(long, default_value_t = 32)]
    pub concurrency_runs: usize,
    /// Workload of the throughput test.
    #[arg(long, default_value = "hello")]
    pub concurrency_workload: String,
    /// Cold runs of the env workload per backend (a fresh data dir and uv cache each); 0
    /// skips them.
    #[arg(long, default_value_t = 1)]
    pub cold_runs: usize,
    /// Requirements of the env workload (default: numpy==2.2.6).
    #[arg(short = 'r', long = "requirements", value_name = "FILE")]
    pub requirements: Option<PathBuf>,
    /// The module the env workload imports.
    #[arg(long = "import", value_name = "MODULE", default_value = "numpy")]
    pub import: String,
    /// Where the JSON, Markdown and SVG results go.
    #[arg(long, value_name = "DIR", default_value = "bench-results")]
    pub out: PathBuf,
    /// The env store of the warm runs (the cold runs use fresh ones under --scratch).
    #[arg(long, value_name = "DIR", env = "KAKOI_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Where scratch files and the cold runs' data dirs go (not under /tmp: envs are bound
    /// into sandboxes at their host path).
    #[arg(long, value_name = "DIR", default_value = "/var/tmp")]
    pub scratch: PathBuf,
    /// The host interpreter (bare, bwrap and the sandboxes use the same one).
    #[arg(long, value_name = "PATH", default_value = "/usr/bin/python3.11")]
    pub python: PathBuf,
    /// The kakoi binary to time (default: this one).
    #[arg(long, value_name = "PATH")]
    pub kakoi: Option<PathBuf>,
    /// The bubblewrap binary (looked up in PATH).
    #[arg(long, value_name = "PATH", default_value = "bwrap")]
    pub bwrap: PathBuf,
    /// Worker image of the docker backend.
    #[arg(long, value_name = "IMAGE", env = "KAKOI_DOCKER_IMAGE", default_value = DEFAULT_IMAGE)]
    pub docker_image: String,
    /// Measure nothing: redraw the table and the plot of a saved results JSON into --out.
    #[arg(long, value_name = "JSON")]
    pub replot: Option<PathBuf>,
}

/// What the commands need.
struct Ctx {
    kakoi: PathBuf,
    python: PathBuf,
    bwrap: Option<PathBuf>,
    docker_image: String,
    data_dir: Option<PathBuf>,
    requirements: PathBuf,
    main_py: PathBuf,
    env: Option<EnvInfo>,
    module: String,
}

/// The warm env, from `kakoi env build --json`.
struct EnvInfo {
    python: PathBuf,
    data_dir: PathBuf,
    uv: PathBuf,
}

impl BenchArgs {
    /// Run the bench, print the table, write the results.
    pub fn execute(self) -> anyhow::Result<i32> {
        if let Some(json) = &self.replot {
            return replot(json, &self.out);
        }
        self.validate()?;
        let started = SystemTime::now();
        let load_start = bench::loadavg();
        let wls: Vec<Workload> = self
            .workloads
            .iter()
            .map(|w| *bench::workload(w).expect("validated"))
            .collect();
        let needs_env = wls.iter().any(|w| w.needs_env);

        std::fs::create_dir_all(&self.scratch)
            .with_context(|| format!("cannot create {}", self.scratch.display()))?;
        let work = tempfile::Builder::new()
            .prefix("kakoi-bench-")
            .tempdir_in(&self.scratch)
            .with_context(|| {
                format!("cannot create a scratch dir in {}", self.scratch.display())
            })?;
        std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755))?;
        let requirements = match &self.requirements {
            Some(path) => path.clone(),
            None => {
                let p = work.path().join("requirements.txt");
                std::fs::write(&p, DEFAULT_REQUIREMENTS)?;
                p
            }
        };
        let requirements_text = std::fs::read_to_string(&requirements)
            .with_context(|| format!("cannot read {}", requirements.display()))?;
        let main_py = work.path().join("main.py");
        std::fs::write(&main_py, bench::env_workload_code(&self.import))?;

        // Which backends can run here.
        let mut infos = Vec::new();
        let mut available = Vec::new();
        let kakoi = match &self.kakoi {
            Some(p) => p.clone(),
            None => std::env::current_exe().context("cannot locate the kakoi binary")?,
        };
        let bwrap = which(&self.bwrap);
        for name in BACKENDS {
            if !self.backends.iter().any(|b| b == name) {
                continue;
            }
            let (reason, description) = match name {
                "bare" => (None, format!("`{} -c CODE` on the host", self.python.display())),
                "kakoi" => (
                    None,
                    "`kakoi exec -- python3.11 -c CODE` (`kakoi run -r REQ main.py` with the env): \
                     a fresh kakoi process per run, every layer (namespaces, cgroup, seccomp, \
                     Landlock, rlimits)"
                        .into(),
                ),
                "kakoi-nocg" => (
                    None,
                    "the same with `--no-cgroup` (limits fall back to rlimits): the difference \
                     to `kakoi` is the cgroup's cost"
                        .into(),
                ),
                "bwrap" => (
                    bwrap.is_none().then(|| {
                        format!(
                            "{} is not an executable in PATH (apt-get install bubblewrap, or --bwrap PATH)",
                            self.bwrap.display()
                        )
                    }),
                    format!(
                        "`bwrap {} python3.11 -c CODE` (the env dir bound read-only): \
                         namespaces and a new root, no cgroup, no seccomp",
                        BWRAP_FLAGS.join(" ")
                    ),
                ),
                _ => (
                    docker_unavailable(&self.docker_image),
                    format!(
                        "`kakoi exec --backend docker -- python3.11 -c CODE` (`kakoi run \
                         --backend docker -r REQ main.py` with the env): a container of {} per run",
                        self.docker_image
                    ),
                ),
            };
            if reason.is_none() {
                available.push(name);
            }
            infos.push(BackendInfo {
                name: name.into(),
                available: reason.is_none(),
                reason,
                description,
            });
        }
        for i in &infos {
            if let Some(r) = &i.reason {
                eprintln!("kakoi bench: {} unavailable: {r}", i.name);
            }
        }

        let mut ctx = Ctx {
            kakoi,
            python: self.python.clone(),
            bwrap,
            docker_image: self.docker_image.clone(),
            data_dir: self.data_dir.clone(),
            requirements: requirements.clone(),
            main_py,
            env: None,
            module: self.import.clone(),
        };
        if needs_env {
            eprintln!(
                "kakoi bench: preparing the env of {}",
                requirements.display()
            );
            ctx.env = Some(prepare_env(&ctx)?);
        }

        // Preflight: each backend must really run Python (a stub that exits 0 and prints
        // nothing would pass `pass`); a backend failing it gets FAILED rows, no numbers.
        let mut broken: Vec<(&str, String)> = Vec::new();
        for name in &available {
            if let Some(e) = bench::run_job(&ctx.job(name, &bench::PREFLIGHT)).error {
                eprintln!("kakoi bench: {name} FAILED its preflight run: {e}");
                broken.push((name, format!("preflight run failed: {e}")));
            }
        }
        available.retain(|name| !broken.iter().any(|(b, _)| b == name));
        let broken_reason = |name: &str| {
            broken
                .iter()
                .find(|(b, _)| *b == name)
                .map(|(_, e)| e.clone())
        };

        // Warm: every (workload, available backend), interleaved.
        let mut jobs = Vec::new();
        for wl in &wls {
            for name in &available {
                jobs.push(ctx.job(name, wl));
            }
        }
        eprintln!(
            "kakoi bench: {} commands × ({} first + {} warm-up + {} timed) runs, interleaved",
            jobs.len(),
            1,
            self.warmup,
            self.runs
        );
        let series = bench::measure(&jobs, self.runs, self.warmup, |done, total| {
            eprint!("\rkakoi bench: iteration {done}/{total}   ");
            if done == total {
                eprintln!();
            }
        });
        let mut warm = Vec::new();
        for wl in &wls {
            for info in &infos {
                let found = jobs
                    .iter()
                    .zip(&series)
                    .find(|(j, _)| j.workload == wl.name && j.backend == info.name);
                warm.push(match found {
                    Some((job, s)) => Row {
                        workload: wl.name.into(),
                        backend: info.name.clone(),
                        status: if s.failures == 0 {
                            RowStatus::Ok
                        } else {
                            RowStatus::Failed
                        },
                        summary: if s.failures == 0 {
                            summarize(&s.samples_ms)
                        } else {
                            None
                        },
                        first_ms: s.first_ms,
                        ratio_median: None,
                        ratio_p95: None,
                        failures: s.failures,
                        error: s.error.clone(),
                        command: job.command_line(),
                        samples_ms: round_all(&s.samples_ms),
                    },
                    None => match broken_reason(&info.name) {
                        Some(e) => Row {
                            status: RowStatus::Failed,
                            error: Some(e),
                            ..unavailable_row(wl.name, info)
                        },
                        None => unavailable_row(wl.name, info),
                    },
                });
            }
        }

        // Cold: the env workload from a fresh data dir and an empty uv cache.
        let mut cold = Vec::new();
        if needs_env && self.cold_runs > 0 {
            cold = self.cold(&ctx, &infos, &available, work.path());
            for row in &mut cold {
                if let Some(e) = broken_reason(&row.backend) {
                    row.status = RowStatus::Failed;
                    row.error = Some(e);
                }
            }
        }

        // Throughput.
        let mut concurrency = Vec::new();
        let cwl = wls
            .iter()
            .find(|w| w.name == self.concurrency_workload)
            .copied()
            .unwrap_or(*bench::workload(&self.concurrency_workload).expect("validated"));
        for (k, &parallel) in self.concurrency.0.iter().enumerate() {
            let n = infos.len();
            for i in 0..n {
                let info = &infos[(i + k) % n];
                let runs = batch_runs(parallel, self.concurrency_runs);
                if !available.contains(&info.name.as_str()) {
                    let broken = broken_reason(&info.name);
                    concurrency.push(ConcurrencyRow {
                        backend: info.name.clone(),
                        parallel,
                        status: if broken.is_some() {
                            RowStatus::Failed
                        } else {
                            RowStatus::Unavailable
                        },
                        runs,
                        seconds: None,
                        runs_per_s: None,
                        ratio_to_bare: None,
                        error: broken.or_else(|| info.reason.clone()),
                    });
                    continue;
                }
                eprintln!(
                    "kakoi bench: throughput {} × {parallel} parallel ({runs} runs)",
                    info.name
                );
                let t = bench::throughput(&ctx.job(&info.name, &cwl), parallel, runs);
                concurrency.push(ConcurrencyRow {
                    backend: info.name.clone(),
                    parallel,
                    status: if t.failures == 0 {
                        RowStatus::Ok
                    } else {
                        RowStatus::Failed
                    },
                    runs,
                    seconds: Some(round(t.seconds * 1000.0) / 1000.0),
                    runs_per_s: t.runs_per_second(),
                    ratio_to_bare: None,
                    error: t
                        .error
                        .map(|e| format!("{} of {runs} runs failed: {e}", t.failures)),
                });
            }
        }
        // Table order: by parallelism, then backend order.
        concurrency.sort_by_key(|r| (r.parallel, BACKENDS.iter().position(|b| *b == r.backend)));

        let mut report = Report {
            kakoi_version: env!("CARGO_PKG_VERSION").into(),
            date: humantime::format_rfc3339_seconds(started).to_string(),
            host: Host {
                kernel: kernel_release(),
                cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
                loadavg_start: load_start,
                loadavg_end: bench::loadavg(),
                cgroup: if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
                    "v2".into()
                } else {
                    "v1 (hybrid)".into()
                },
            },
            settings: Settings {
                runs: self.runs,
                warmup: self.warmup,
                workloads: self.workloads.clone(),
                concurrency: self.concurrency.0.clone(),
                concurrency_runs: self.concurrency_runs,
                concurrency_workload: self.concurrency_workload.clone(),
                cold_runs: if needs_env { self.cold_runs } else { 0 },
                requirements: requirements_text.trim().to_string(),
                env_module: self.import.clone(),
            },
            backends: infos,
            warm,
            cold,
            concurrency,
            notes: notes(),
        };
        report.fill_ratios();
        print!("{}", report.markdown());
        let json = report.write_all(&self.out, &stamp_of(&report.date))?;
        eprintln!(
            "kakoi bench: wrote {} (and .md, .svg; also bench-latest.*)",
            json.display()
        );
        if report.any_failed() {
            eprintln!("kakoi bench: some runs FAILED (see the table); their rows have no numbers");
            return Ok(1);
        }
        Ok(0)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.runs == 0 {
            bail!("--runs must be at least 1");
        }
        for w in self.workloads.iter().chain([&self.concurrency_workload]) {
            if bench::workload(w).is_none() {
                bail!(
                    "unknown workload {w:?} (known: {})",
                    bench::WORKLOADS.map(|w| w.name).join(", ")
                );
            }
        }
        if self.workloads.is_empty() {
            bail!("--workloads is empty");
        }
        if bench::workload(&self.concurrency_workload).is_some_and(|w| w.needs_env)
            && !self
                .workloads
                .iter()
                .any(|w| w == &self.concurrency_workload)
        {
            bail!(
                "--concurrency-workload {} needs it in --workloads too",
                self.concurrency_workload
            );
        }
        for b in &self.backends {
            if !BACKENDS.contains(&b.as_str()) {
                bail!("unknown backend {b:?} (known: {})", BACKENDS.join(", "));
            }
        }
        if !self.backends.iter().any(|b| b == "bare") {
            bail!("--backends must include bare: every ratio is relative to it");
        }
        if self.concurrency.0.contains(&0) {
            bail!("--concurrency levels must be at least 1");
        }
        if self.concurrency_runs == 0 {
            bail!("--concurrency-runs must be at least 1");
        }
        if !self
            .import
            .split('.')
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        {
            bail!("--import {:?} is not a module name", self.import);
        }
        if !self.python.is_file() {
            bail!("{} does not exist (--python)", self.python.display());
        }
        Ok(())
    }

    /// The env workload with nothing cached, `cold_runs` times per backend, interleaved.
    fn cold(
        &self,
        ctx: &Ctx,
        infos: &[BackendInfo],
        available: &[&str],
        work: &Path,
    ) -> Vec<ColdRow> {
        let env = ctx.env.as_ref().expect("prepared");
        let mut rows: Vec<ColdRow> = infos
            .iter()
            .map(|info| {
                let (what, status) = match info.name.as_str() {
                    "bare" => (
                        "`uv venv` + `uv pip install -r REQ --compile-bytecode` (empty uv cache) + the import",
                        RowStatus::Ok,
                    ),
                    "kakoi" => (
                        "`kakoi run -r REQ main.py`, fresh data dir (toolchain copied in, no env, empty uv cache)",
                        RowStatus::Ok,
                    ),
                    "docker" => (
                        "`kakoi run --backend docker -r REQ main.py`, fresh data dir (env built natively, then a container)",
                        RowStatus::Ok,
                    ),
                    "kakoi-nocg" => (
                        "not measured cold (the build is the same as kakoi's)",
                        RowStatus::NotApplicable,
                    ),
                    _ => ("no env store: it runs the env built for bare", RowStatus::NotApplicable),
                };
                let status = match (info.available, available.contains(&info.name.as_str())) {
                    (false, _) => RowStatus::Unavailable,
                    // Failed its preflight: marked by the caller.
                    (true, false) => RowStatus::Failed,
                    (true, true) => status,
                };
                ColdRow {
                    backend: info.name.clone(),
                    what: what.into(),
                    status,
                    summary: None,
                    ratio_median: None,
                    error: if status == RowStatus::Unavailable { info.reason.clone() } else { None },
                    samples_ms: vec![],
                }
            })
            .collect();
        for rep in 0..self.cold_runs {
            let n = rows.len();
            for i in 0..n {
                let k = (i + rep) % n;
                if rows[k].status != RowStatus::Ok {
                    continue;
                }
                let backend = rows[k].backend.clone();
                eprintln!(
                    "kakoi bench: cold {backend} ({}/{})",
                    rep + 1,
                    self.cold_runs
                );
                let dir = work.join(format!("cold-{backend}-{rep}"));
                let outcome = cold_once(ctx, env, &backend, &dir);
                let _ = std::fs::remove_dir_all(&dir);
                let row = &mut rows[k];
                match outcome.error {
                    Some(e) => {
                        row.status = RowStatus::Failed;
                        row.error = Some(e);
                    }
                    None => row.samples_ms.push(round(outcome.ms)),
                }
            }
        }
        for row in &mut rows {
            if row.status == RowStatus::Ok {
                row.summary = summarize(&row.samples_ms);
            }
        }
        rows
    }
}

impl Ctx {
    /// The command of one (backend, workload).
    fn job(&self, backend: &str, wl: &Workload) -> Job {
        // The env workload imports `--import`'s module.
        let code = if wl.needs_env {
            bench::env_workload_code(&self.module)
        } else {
            wl.code.to_string()
        };
        let py = |python: &Path| -> Vec<OsString> {
            vec![python.into(), "-c".into(), code.clone().into()]
        };
        let env = self.env.as_ref();
        // The sandboxes size numeric thread pools to their CPU limit (1); so do the others.
        let threads: Vec<(String, String)> = if wl.needs_env {
            ["OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"]
                .iter()
                .map(|k| (k.to_string(), "1".to_string()))
                .collect()
        } else {
            vec![]
        };
        let nocg = backend == "kakoi-nocg";
        let kakoi_run = |docker: bool| -> Vec<OsString> {
            let mut argv: Vec<OsString> = vec![self.kakoi.clone().into(), "run".into()];
            argv.extend(self.backend_flags(docker, nocg));
            argv.extend(["-q".into(), "-r".into(), self.requirements.clone().into()]);
            if let Some(d) = &self.data_dir {
                argv.extend(["--data-dir".into(), d.clone().into()]);
            }
            argv.push(self.main_py.clone().into());
            argv
        };
        let kakoi_exec = |docker: bool| -> Vec<OsString> {
            let mut argv: Vec<OsString> = vec![self.kakoi.clone().into(), "exec".into()];
            argv.extend(self.backend_flags(docker, nocg));
            argv.push("--".into());
            argv.extend(py(&self.python));
            argv
        };
        let argv = match (backend, wl.needs_env) {
            ("bare", false) => py(&self.python),
            ("bare", true) => py(&env.expect("prepared").python),
            ("kakoi" | "kakoi-nocg", false) => kakoi_exec(false),
            ("kakoi" | "kakoi-nocg", true) => kakoi_run(false),
            ("docker", false) => kakoi_exec(true),
            ("docker", true) => kakoi_run(true),
            (_, needs_env) => {
                let mut argv: Vec<OsString> =
                    vec![self.bwrap.clone().unwrap_or_else(|| "bwrap".into()).into()];
                argv.extend(BWRAP_FLAGS.iter().map(OsString::from));
                if needs_env {
                    let env = env.expect("prepared");
                    let d: OsString = env.data_dir.clone().into();
                    argv.extend(["--ro-bind".into(), d.clone(), d]);
                    argv.extend(py(&env.python));
                } else {
                    argv.extend(py(&self.python));
                }
                argv
            }
        };
        Job {
            backend: backend.into(),
            workload: wl.name.into(),
            argv,
            env: threads,
            expect_stdout: wl.expect.as_bytes().to_vec(),
        }
    }

    fn backend_flags(&self, docker: bool, no_cgroup: bool) -> Vec<OsString> {
        let mut flags: Vec<OsString> = if docker {
            vec![
                "--backend".into(),
                "docker".into(),
                "--docker-image".into(),
                self.docker_image.clone().into(),
            ]
        } else {
            vec!["--backend".into(), "native".into()]
        };
        if no_cgroup {
            flags.push("--no-cgroup".into());
        }
        flags
    }
}

/// Runs in a throughput batch: at least `min` and `parallel`, a multiple of `parallel`.
fn batch_runs(parallel: usize, min: usize) -> usize {
    min.max(parallel).div_ceil(parallel) * parallel
}

/// `20261123-194342` from `2026-11-23T19:43:42Z`.
fn stamp_of(date: &str) -> String {
    let digits: String = date.chars().filter(char::is_ascii_digit).collect();
    if digits.len() < 14 {
        return "undated".into();
    }
    format!("{}-{}", &digits[..8], &digits[8..14])
}

/// `--replot`: read a results JSON, write its table and plot again.
fn replot(json: &Path, out: &Path) -> anyhow::Result<i32> {
    let text =
        std::fs::read_to_string(json).with_context(|| format!("cannot read {}", json.display()))?;
    let report: Report = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a kakoi bench results file", json.display()))?;
    print!("{}", report.markdown());
    let written = report.write_all(out, &stamp_of(&report.date))?;
    eprintln!("kakoi bench: wrote {} (and .md, .svg)", written.display());
    Ok(0)
}

/// Build (or reuse) the warm env with `kakoi env build --json` and find the toolchain's uv.
fn prepare_env(ctx: &Ctx) -> anyhow::Result<EnvInfo> {
    let mut build = std::process::Command::new(&ctx.kakoi);
    build
        .args(["env", "build", "--json", "-q", "-r"])
        .arg(&ctx.requirements);
    if let Some(d) = &ctx.data_dir {
        build.arg("--data-dir").arg(d);
    }
    let out = build.output().context("cannot run kakoi env build")?;
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    if !out.status.success() || doc["status"] != "ok" {
        bail!(
            "kakoi env build -r {} failed ({}): {}{}",
            ctx.requirements.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let python = PathBuf::from(doc["info"]["python"].as_str().context("no info.python")?);
    let env_path = PathBuf::from(doc["info"]["path"].as_str().context("no info.path")?);
    // <data>/envs/v1/<digest>
    let data_dir = env_path
        .ancestors()
        .nth(3)
        .context("unexpected env path")?
        .to_path_buf();
    let mut tc = std::process::Command::new(&ctx.kakoi);
    tc.args(["env", "toolchain", "--json"]);
    if let Some(d) = &ctx.data_dir {
        tc.arg("--data-dir").arg(d);
    }
    let out = tc.output().context("cannot run kakoi env toolchain")?;
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "kakoi env toolchain: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let uv = PathBuf::from(
        doc["uv"]["path"]
            .as_str()
            .context("no uv.path from kakoi env toolchain")?,
    );
    eprintln!(
        "kakoi bench: env {} (python {})",
        env_path.display(),
        python.display()
    );
    Ok(EnvInfo {
        python,
        data_dir,
        uv,
    })
}

/// One cold run of the env workload on `backend`, in the fresh directory `dir`.
fn cold_once(ctx: &Ctx, env: &EnvInfo, backend: &str, dir: &Path) -> Outcome {
    let fail = |e: String| Outcome {
        ms: 0.0,
        error: Some(e),
    };
    if let Err(e) = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)))
    {
        return fail(format!("cannot create {}: {e}", dir.display()));
    }
    let expect = b"ok\n".to_vec();
    let code = bench::env_workload_code(&ctx.module);
    if backend == "bare" {
        let venv = dir.join("venv");
        let vpy = venv.join("bin/python");
        let uv_env = vec![
            (
                "UV_CACHE_DIR".to_string(),
                dir.join("uv-cache").display().to_string(),
            ),
            ("UV_NO_CONFIG".to_string(), "1".to_string()),
            ("UV_PYTHON_DOWNLOADS".to_string(), "never".to_string()),
        ];
        let steps: Vec<(Vec<OsString>, Vec<u8>)> = vec![
            (
                vec![
                    env.uv.clone().into(),
                    "venv".into(),
                    "-q".into(),
                    "--python".into(),
                    ctx.python.clone().into(),
                    venv.into(),
                ],
                vec![],
            ),
            (
                vec![
                    env.uv.clone().into(),
                    "pip".into(),
                    "install".into(),
                    "-q".into(),
                    "--compile-bytecode".into(),
                    "--python".into(),
                    vpy.clone().into(),
                    "-r".into(),
                    ctx.requirements.clone().into(),
                ],
                vec![],
            ),
            (vec![vpy.into(), "-c".into(), code.into()], expect),
        ];
        let started = Instant::now();
        for (argv, expect) in steps {
            let mut env_vars = uv_env.clone();
            env_vars.push(("OPENBLAS_NUM_THREADS".into(), "1".into()));
            let job = Job {
                backend: "bare".into(),
                workload: "cold".into(),
                argv,
                env: env_vars,
                expect_stdout: expect,
            };
            if let Some(e) = bench::run_job(&job).error {
                return fail(format!("{}: {e}", job.command_line().join(" ")));
            }
        }
        return Outcome {
            ms: started.elapsed().as_secs_f64() * 1000.0,
            error: None,
        };
    }
    // A fresh data dir with the toolchain copied in (its download is once per machine).
    let Some(tools) = env.uv.parent().and_then(Path::parent) else {
        return fail(format!("unexpected uv path {}", env.uv.display()));
    };
    let target = dir
        .join("toolchain")
        .join(tools.file_name().unwrap_or_default());
    if let Err(e) = copy_toolchain(tools, &target) {
        return fail(format!(
            "cannot copy the toolchain into {}: {e}",
            target.display()
        ));
    }
    let fresh = Ctx {
        kakoi: ctx.kakoi.clone(),
        python: ctx.python.clone(),
        bwrap: None,
        docker_image: ctx.docker_image.clone(),
        data_dir: Some(dir.to_path_buf()),
        requirements: ctx.requirements.clone(),
        main_py: ctx.main_py.clone(),
        env: None,
        module: ctx.module.clone(),
    };
    let wl = bench::workload("numpy").expect("exists");
    bench::run_job(&fresh.job(backend, wl))
}

fn copy_toolchain(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to.join("bin"))?;
    for name in ["bin/uv", "bin/ruff", "manifest.json"] {
        std::fs::copy(from.join(name), to.join(name))?;
    }
    Ok(())
}

/// `None` when Docker mode can run, else why not.
fn docker_unavailable(image: &str) -> Option<String> {
    let config = DockerConfig {
        image: image.into(),
        ..DockerConfig::default()
    };
    match DockerBackend::new(config) {
        Ok(_) => None,
        Err(e) => Some(match e.hint() {
            Some(hint) => format!("{e} ({hint})"),
            None => e.to_string(),
        }),
    }
}

fn unavailable_row(workload: &str, info: &BackendInfo) -> Row {
    Row {
        workload: workload.into(),
        backend: info.name.clone(),
        status: RowStatus::Unavailable,
        summary: None,
        first_ms: None,
        ratio_median: None,
        ratio_p95: None,
        failures: 0,
        error: info.reason.clone(),
        command: vec![],
        samples_ms: vec![],
    }
}

/// Look a program up in PATH (a path with a slash is taken as is).
fn which(program: &Path) -> Option<PathBuf> {
    let is_exec = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.components().count() > 1 {
        return is_exec(program).then(|| program.to_path_buf());
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(program))
        .find(|p| is_exec(p))
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn round(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

fn round_all(xs: &[f64]) -> Vec<f64> {
    xs.iter().map(|&x| round(x)).collect()
}

fn notes() -> Vec<String> {
    vec![
        "every sample is spawn-to-exit of a fresh process started by kakoi bench, checked for \
         exit status 0 and the exact stdout; failed runs are never samples"
            .into(),
        "ratios come from the same interleaved run, so load drift hits every backend alike; \
         absolute times on a busy host are inflated"
            .into(),
        "kakoi and docker rows include the kakoi CLI's own process start; docker rows also \
         include the Engine API round trips and the container's creation and removal"
            .into(),
        "the gap between kakoi and kakoi-nocg is the run cgroup's creation, limits, stats and \
         removal (four v1 hierarchies here); the child enters it without the kernel's global \
         lock (v1: it writes 0 to `tasks`; v2: CLONE_INTO_CGROUP)"
            .into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Ctx {
        Ctx {
            kakoi: "/k".into(),
            python: "/usr/bin/python3.11".into(),
            bwrap: Some("/usr/bin/bwrap".into()),
            docker_image: "img".into(),
            data_dir: Some("/d".into()),
            requirements: "/w/req.txt".into(),
            main_py: "/w/main.py".into(),
            env: Some(EnvInfo {
                python: "/d/envs/v1/x/.venv/bin/python".into(),
                data_dir: "/d".into(),
                uv: "/d/toolchain/t/bin/uv".into(),
            }),
            module: "numpy".into(),
        }
    }

    fn line(job: &Job) -> String {
        job.command_line().join(" ")
    }

    #[test]
    fn concurrency_lists_parse_and_an_empty_one_skips() {
        assert_eq!(parse_parallelism("1,4,16"), Ok(Parallelism(vec![1, 4, 16])));
        assert_eq!(parse_parallelism(""), Ok(Parallelism(vec![])));
        assert!(parse_parallelism("4,x").unwrap_err().contains("\"x\""));
    }

    #[test]
    fn commands_per_backend() {
        let c = ctx();
        let pass = bench::workload("pass").unwrap();
        let numpy = bench::workload("numpy").unwrap();
        assert_eq!(line(&c.job("bare", pass)), "/usr/bin/python3.11 -c pass");
        assert_eq!(
            line(&c.job("kakoi", pass)),
            "/k exec --backend native -- /usr/bin/python3.11 -c pass"
        );
        assert_eq!(
            line(&c.job("kakoi-nocg", pass)),
            "/k exec --backend native --no-cgroup -- /usr/bin/python3.11 -c pass"
        );
        assert_eq!(
            line(&c.job("kakoi-nocg", numpy)),
            "/k run --backend native --no-cgroup -q -r /w/req.txt --data-dir /d /w/main.py"
        );
        assert_eq!(
            line(&c.job("docker", pass)),
            "/k exec --backend docker --docker-image img -- /usr/bin/python3.11 -c pass"
        );
        let bw = line(&c.job("bwrap", pass));
        assert!(bw.starts_with("/usr/bin/bwrap --unshare-all"), "{bw}");
        assert!(
            bw.ends_with("--tmpfs /tmp /usr/bin/python3.11 -c pass"),
            "{bw}"
        );
        assert_eq!(
            line(&c.job("kakoi", numpy)),
            "/k run --backend native -q -r /w/req.txt --data-dir /d /w/main.py"
        );
        let bw = c.job("bwrap", numpy);
        assert!(
            line(&bw).contains("--ro-bind /d /d /d/envs/v1/x/.venv/bin/python -c import numpy")
        );
        assert!(
            bw.env
                .contains(&("OPENBLAS_NUM_THREADS".into(), "1".into()))
        );
        assert_eq!(c.job("bare", numpy).expect_stdout, b"ok\n");
        let six = Ctx {
            module: "six".into(),
            ..ctx()
        };
        assert_eq!(
            line(&six.job("bare", numpy)),
            "/d/envs/v1/x/.venv/bin/python -c import six\nprint(\"ok\")"
        );
    }

    #[test]
    fn throughput_batches_are_whole_rounds() {
        assert_eq!(batch_runs(1, 32), 32);
        assert_eq!(batch_runs(4, 32), 32);
        assert_eq!(batch_runs(16, 32), 32);
        assert_eq!(batch_runs(16, 40), 48);
        assert_eq!(batch_runs(2, 1), 2);
    }

    #[test]
    fn stamps_come_from_the_date() {
        assert_eq!(stamp_of("2026-11-23T19:43:42Z"), "20261123-194342");
        assert_eq!(stamp_of("bad"), "undated");
    }

    #[test]
    fn which_finds_sh_and_refuses_a_missing_program() {
        assert!(which(Path::new("sh")).is_some());
        assert!(which(Path::new("kakoi-no-such-program")).is_none());
        assert!(which(Path::new("/nonexistent/bwrap")).is_none());
    }
}

/// The `--concurrency` list (a single argument, so that an empty one can mean "none").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parallelism(pub Vec<usize>);

fn parse_parallelism(s: &str) -> Result<Parallelism, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<usize>()
                .map_err(|e| format!("{p:?} is not a number of parallel runs: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Parallelism)
}
