//! `kakoi env build|list|gc|rm|toolchain`: content-addressed Python environments.
//!
//! Also the pieces `kakoi run -r` shares: [`EnvFlags`], the terminal progress renderer
//! ([`CliProgress`]) and a sandbox backend created only when a build needs one
//! ([`LazySandbox`]).

use std::cell::RefCell;
use std::io::{IsTerminal as _, Write as _};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use super::common::parse_size;
use crate::backend::{Backend, BackendError};
use crate::env::progress::describe_uv_line;
use crate::env::{
    BuildLimits, BuildStep, EnvError, EnvInfo, EnvRequest, EnvStore, GcPolicy, Progress,
    ResolveOptions, StoreConfig, ToolchainMode, toolchain,
};
use crate::result::RunResult;
use crate::sandbox::{RunOptions, Sandbox, SandboxConfig};
use crate::spec::RunSpec;

/// Exit code of the CLI when an environment cannot be built (same as a setup error: nothing
/// of the program ran).
pub const ENV_ERROR_EXIT: i32 = 125;

/// Options shared by `kakoi env` and `kakoi run -r`.
#[derive(Debug, Clone, Args)]
pub struct EnvFlags {
    /// Data directory (toolchain, uv cache, envs). Default: /var/lib/kakoi as root,
    /// $XDG_DATA_HOME/kakoi or ~/.local/share/kakoi otherwise.
    #[arg(long, value_name = "DIR", env = "KAKOI_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Toolchain: nix when `nix` is on PATH, else the host's python3 with pinned uv and ruff.
    #[arg(long, value_enum, default_value = "auto", env = "KAKOI_TOOLCHAIN")]
    pub toolchain: ToolchainMode,
    /// Python for the environment: a version (3.11) or an absolute path under /usr.
    #[arg(long, value_name = "VERSION|PATH")]
    pub python: Option<String>,
    /// Ignore distributions uploaded after this date or RFC 3339 time (part of the digest).
    #[arg(long, value_name = "TIME")]
    pub exclude_newer: Option<String>,
    /// Package index to use instead of PyPI (part of the digest).
    #[arg(long, value_name = "URL")]
    pub index_url: Option<String>,
    /// Additional package index (part of the digest; repeatable).
    #[arg(long = "extra-index-url", value_name = "URL")]
    pub extra_index_urls: Vec<String>,
    /// No progress output.
    #[arg(short, long)]
    pub quiet: bool,
    /// Wall-clock limit of each build step, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 900.0)]
    pub build_timeout: f64,
    /// Memory limit of the build sandbox.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "4G")]
    pub build_memory: u64,
    /// Task limit (processes and threads) of the build sandbox; uv is multi-threaded.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub build_pids: u64,
    /// CPU limit of the build sandbox, in cores (default: all).
    #[arg(long, value_name = "CORES")]
    pub build_cpus: Option<f64>,
}

impl EnvFlags {
    /// The store configuration these flags describe.
    pub fn store_config(&self) -> StoreConfig {
        let defaults = BuildLimits::default();
        StoreConfig {
            data_dir: self.data_dir.clone(),
            toolchain: self.toolchain,
            build_limits: BuildLimits {
                timeout_secs: self.build_timeout,
                memory: self.build_memory,
                pids: self.build_pids,
                cpus: self.build_cpus.unwrap_or(defaults.cpus),
                tmp_size: defaults.tmp_size,
            },
        }
    }

    /// The resolution options these flags describe.
    pub fn resolve_options(&self) -> ResolveOptions {
        ResolveOptions {
            python: self.python.clone(),
            index_url: self.index_url.clone(),
            extra_index_urls: self.extra_index_urls.clone(),
            exclude_newer: self.exclude_newer.clone(),
        }
    }
}

/// `kakoi env`.
#[derive(Debug, Args)]
pub struct EnvArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: EnvCommand,
}

/// `kakoi env` subcommands.
#[derive(Debug, Subcommand)]
pub enum EnvCommand {
    /// Build (or find) the environment of a requirements file.
    Build(BuildArgs),
    /// List the environments of the store.
    List(ListArgs),
    /// Remove environments by age or total size (never one in use) and dead builds.
    Gc(GcArgs),
    /// Remove environments by digest (or unique prefix).
    Rm(RmArgs),
    /// Show the toolchain (installing uv and ruff on first use); prints where ruff is.
    Toolchain(ToolchainArgs),
}

/// `kakoi env build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The requirements file.
    #[arg(short = 'r', long = "requirements", value_name = "FILE")]
    pub requirements: PathBuf,
    /// Store, toolchain and resolution options.
    #[command(flatten)]
    pub env: EnvFlags,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `kakoi env list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Store options.
    #[command(flatten)]
    pub env: EnvFlags,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `kakoi env gc`.
#[derive(Debug, Args)]
pub struct GcArgs {
    /// Remove envs not used for this long (e.g. 30d, 12h).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub older_than: Option<Duration>,
    /// Then remove least recently used envs until the store is at most this large (e.g. 10G).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_size: Option<u64>,
    /// Also empty the uv cache (envs do not need it; the next build downloads again).
    #[arg(long)]
    pub uv_cache: bool,
    /// Only report what would be removed.
    #[arg(long)]
    pub dry_run: bool,
    /// Store options.
    #[command(flatten)]
    pub env: EnvFlags,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `kakoi env rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// Digests or unique prefixes.
    #[arg(required = true, value_name = "DIGEST")]
    pub digests: Vec<String>,
    /// Store options.
    #[command(flatten)]
    pub env: EnvFlags,
}

/// `kakoi env toolchain`.
#[derive(Debug, Args)]
pub struct ToolchainArgs {
    /// Store options.
    #[command(flatten)]
    pub env: EnvFlags,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

impl EnvArgs {
    /// Run the subcommand.
    pub fn execute(self) -> anyhow::Result<i32> {
        match self.command {
            EnvCommand::Build(a) => a.execute(),
            EnvCommand::List(a) => a.execute(),
            EnvCommand::Gc(a) => a.execute(),
            EnvCommand::Rm(a) => a.execute(),
            EnvCommand::Toolchain(a) => a.execute(),
        }
    }
}

/// Read a requirements file (the CLI's bad-input errors name the path).
pub fn read_requirements(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read the requirements file {}", path.display()))?;
    if !meta.is_file() {
        bail!("requirements file {} is not a file", path.display());
    }
    std::fs::read(path)
        .with_context(|| format!("cannot read the requirements file {}", path.display()))
}

/// Print an env error: a JSON result with status `env_error`, or the message, uv's output
/// and a hint on stderr (uv's output is not repeated when it was just streamed there).
/// Returns the exit code.
pub fn report_env_error(
    err: &EnvError,
    env_ms: f64,
    json: bool,
    progress: &CliProgress,
) -> anyhow::Result<i32> {
    if json {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer(&mut out, &err.to_result(env_ms))?;
        writeln!(out)?;
    } else if let (
        EnvError::Uv {
            step, exit_code, ..
        },
        true,
    ) = (err, progress.streamed_uv_output())
    {
        eprintln!(
            "kakoi: error: {step} failed: {} exited with {exit_code} (its output is above)",
            step.program()
        );
        if let Some(hint) = err.hint() {
            eprintln!("  hint: {hint}");
        }
    } else {
        eprintln!("kakoi: error: {}", crate::env::error_chain(err));
        if let Some(hint) = err.hint() {
            eprintln!("  hint: {hint}");
        }
    }
    Ok(ENV_ERROR_EXIT)
}

impl BuildArgs {
    fn execute(self) -> anyhow::Result<i32> {
        let started = Instant::now();
        let bytes = read_requirements(&self.requirements)?;
        let mut progress = CliProgress::new(self.env.quiet);
        let outcome = (|| {
            let store = EnvStore::open(self.env.store_config())?;
            let request = EnvRequest::new(&bytes, self.env.resolve_options())?;
            let backend =
                LazySandbox::new(EnvStore::build_sandbox_config(SandboxConfig::default()));
            let env = store.ensure(&request, &backend, &mut progress)?;
            let info = store.info(env.digest())?;
            Ok::<_, EnvError>((env.usage(), info))
        })();
        let env_ms = started.elapsed().as_secs_f64() * 1000.0;
        let (usage, info) = match outcome {
            Ok(v) => v,
            Err(e) => return report_env_error(&e, env_ms, self.json, &progress),
        };
        if self.json {
            let doc = serde_json::json!({
                "status": "ok",
                "env": usage,
                "env_ms": (env_ms * 1000.0).round() / 1000.0,
                "info": info,
            });
            println!("{doc}");
        } else {
            print_info(&info);
            println!(
                "{:<10}{}",
                "build",
                if usage.cache_hit {
                    "cache hit (already built)".to_string()
                } else {
                    format!("built in {:.1} s", usage.build_ms / 1000.0)
                }
            );
        }
        Ok(0)
    }
}

fn print_info(info: &EnvInfo) {
    println!("{:<10}{}", "digest", info.digest);
    println!("{:<10}{}", "path", info.path.display());
    println!(
        "{:<10}{} (python {})",
        "python",
        info.python.display(),
        info.interpreter.version
    );
    println!("{:<10}{}", "toolchain", info.toolchain);
    println!("{:<10}{}", "packages", info.packages.join(" "));
    println!("{:<10}{}", "size", human_bytes(info.size_bytes));
}

fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

fn ago(secs: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    match now.saturating_sub(secs) {
        d if d < 120 => format!("{d} s ago"),
        d if d < 7200 => format!("{} min ago", d / 60),
        d if d < 172_800 => format!("{} h ago", d / 3600),
        d => format!("{} d ago", d / 86_400),
    }
}

impl ListArgs {
    fn execute(self) -> anyhow::Result<i32> {
        let store = match EnvStore::open(self.env.store_config()) {
            Ok(s) => s,
            Err(e) => return fail(e, self.json),
        };
        let status = toolchain::status(&store.toolchain_dir(), self.env.toolchain);
        let envs = match store.list() {
            Ok(v) => v,
            Err(e) => return fail(e, self.json),
        };
        if self.json {
            let doc = serde_json::json!({
                "store": store.envs_dir(),
                "toolchain": status,
                "envs": envs,
            });
            println!("{doc}");
            return Ok(0);
        }
        println!("store      {}", store.envs_dir().display());
        println!("toolchain  {}", describe_status(&status));
        if envs.is_empty() {
            println!("no environments (build one with `kakoi env build -r requirements.txt`)");
            return Ok(0);
        }
        println!();
        println!(
            "{:<32}  {:>9}  {:<7}  {:<12}  {:<6}  PACKAGES",
            "DIGEST", "SIZE", "PYTHON", "LAST USED", "IN USE"
        );
        for e in &envs {
            println!(
                "{:<32}  {:>9}  {:<7}  {:<12}  {:<6}  {}",
                e.digest,
                human_bytes(e.size_bytes),
                e.interpreter.minor_version(),
                ago(e.last_used),
                if e.in_use { "yes" } else { "no" },
                e.packages.join(" ")
            );
        }
        Ok(0)
    }
}

/// One line describing the toolchain for `env list` and `doctor`.
pub fn describe_status(status: &toolchain::ToolchainStatus) -> String {
    let python = status
        .python
        .as_ref()
        .map(|p| format!("python {} ({})", p.version, p.path.display()))
        .or_else(|| status.problem.clone())
        .unwrap_or_else(|| "python from the nix closure".into());
    match (&status.identity, status.ready) {
        (Some(identity), true) => format!("{identity}; {python}"),
        _ => match status.kind {
            toolchain::ToolchainKind::Host => format!(
                "host; {python}; uv {} and ruff {} not installed yet (the first env build downloads them from PyPI)",
                crate::env::PINNED_UV,
                crate::env::PINNED_RUFF
            ),
            toolchain::ToolchainKind::Nix => {
                "nix; not realised yet (the first env build runs `nix build` on nix-env/)".into()
            }
        },
    }
}

/// Report an env error of a store command (message, causes and hint, or the `env_error`
/// JSON result) and return exit code 125.
fn fail(e: EnvError, json: bool) -> anyhow::Result<i32> {
    report_env_error(&e, 0.0, json, &CliProgress::new(true))
}

impl GcArgs {
    fn execute(self) -> anyhow::Result<i32> {
        let store = match EnvStore::open(self.env.store_config()) {
            Ok(s) => s,
            Err(e) => return fail(e, self.json),
        };
        let policy = GcPolicy {
            older_than: self.older_than,
            max_total_bytes: self.max_size,
            uv_cache: self.uv_cache,
            dry_run: self.dry_run,
        };
        let report = match store.gc(&policy) {
            Ok(r) => r,
            Err(e) => return fail(e, self.json),
        };
        if self.json {
            println!("{}", serde_json::to_string(&report)?);
            return Ok(0);
        }
        let verb = if self.dry_run {
            "would remove"
        } else {
            "removed"
        };
        for digest in &report.removed {
            println!("{verb} {digest}");
        }
        for digest in &report.kept_in_use {
            println!("kept {digest} (in use)");
        }
        println!(
            "{verb} {} environment(s), {}; {} left; {} dead build(s) swept",
            report.removed.len(),
            human_bytes(report.freed_bytes),
            human_bytes(report.remaining_bytes),
            report.swept_staging
        );
        if self.uv_cache {
            if report.uv_cache_busy {
                println!("kept the uv cache (a build is using it)");
            } else {
                println!(
                    "{verb} the uv cache, {}",
                    human_bytes(report.uv_cache_freed_bytes)
                );
            }
        }
        if self.older_than.is_none() && self.max_size.is_none() {
            println!("(no --older-than or --max-size given: only dead builds were swept)");
        }
        Ok(0)
    }
}

impl RmArgs {
    fn execute(self) -> anyhow::Result<i32> {
        let store = match EnvStore::open(self.env.store_config()) {
            Ok(s) => s,
            Err(e) => return fail(e, false),
        };
        let mut code = 0;
        for digest in &self.digests {
            match store.remove(digest) {
                Ok(size) => println!("removed {digest} ({})", human_bytes(size)),
                Err(e) => {
                    eprintln!("kakoi: error: {}", crate::env::error_chain(&e));
                    if let Some(hint) = e.hint() {
                        eprintln!("  hint: {hint}");
                    }
                    code = 1;
                }
            }
        }
        Ok(code)
    }
}

impl ToolchainArgs {
    fn execute(self) -> anyhow::Result<i32> {
        let mut progress = CliProgress::new(self.env.quiet);
        let located = EnvStore::open(self.env.store_config()).and_then(|store| {
            let toolchain = store.toolchain(&mut progress)?;
            let interpreter = toolchain.interpreter(self.env.python.as_deref())?;
            Ok((toolchain, interpreter))
        });
        let (toolchain, interpreter) = match located {
            Ok(v) => v,
            Err(e) => return fail(e, self.json),
        };
        if self.json {
            let doc = serde_json::json!({
                "kind": toolchain.kind,
                "identity": toolchain.identity,
                "python": interpreter,
                "uv": { "path": toolchain.uv, "version": toolchain.uv_version },
                "ruff": { "path": toolchain.ruff, "version": toolchain.ruff_version },
                "binds": toolchain.binds,
            });
            println!("{doc}");
        } else {
            println!("{:<10}{}", "identity", toolchain.identity);
            println!(
                "{:<10}{} (python {}, {})",
                "python",
                interpreter.path.display(),
                interpreter.version,
                interpreter.platform
            );
            println!(
                "{:<10}{} ({})",
                "uv",
                toolchain.uv.display(),
                toolchain.uv_version
            );
            println!(
                "{:<10}{} ({})",
                "ruff",
                toolchain.ruff.display(),
                toolchain.ruff_version
            );
        }
        Ok(0)
    }
}

/// A native sandbox created on first use: a cache hit never pays for one.
pub struct LazySandbox {
    config: SandboxConfig,
    sandbox: RefCell<Option<Sandbox>>,
}

impl LazySandbox {
    /// A backend that will create `Sandbox::new(config)` when first needed.
    pub fn new(config: SandboxConfig) -> Self {
        LazySandbox {
            config,
            sandbox: RefCell::new(None),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&Sandbox) -> T) -> Result<T, BackendError> {
        let mut slot = self.sandbox.borrow_mut();
        if slot.is_none() {
            *slot = Some(Sandbox::new(self.config.clone())?);
        }
        Ok(f(slot.as_ref().expect("just created")))
    }
}

impl Backend for LazySandbox {
    fn name(&self) -> &'static str {
        "native"
    }

    fn run_with(&self, spec: &RunSpec, options: &RunOptions) -> Result<RunResult, BackendError> {
        self.with(|s| Sandbox::run_with(s, spec, *options))?
            .map_err(BackendError::from)
    }

    fn host_ids(&self) -> Option<(u32, u32)> {
        self.with(Sandbox::host_ids).ok()
    }
}

/// Progress on stderr: nothing (`--quiet`), plain lines (stderr is not a terminal), or a
/// spinner/bar (terminal). During a sandboxed build step the spinner is drawn by a separate
/// `kakoi __progress` process reading uv's streamed output from a pipe that temporarily
/// replaces our stderr: the launcher itself must stay single-threaded.
pub struct CliProgress {
    mode: Mode,
    bar: Option<ProgressBar>,
    renderer: Option<Renderer>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Quiet,
    Plain,
    Terminal,
}

struct Renderer {
    child: Child,
    saved_stderr: OwnedFd,
}

impl CliProgress {
    /// Pick the mode from `--quiet` and whether stderr is a terminal.
    pub fn new(quiet: bool) -> Self {
        let mode = if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            Mode::Terminal
        } else {
            Mode::Plain
        };
        CliProgress {
            mode,
            bar: None,
            renderer: None,
        }
    }

    fn start_renderer(&mut self, text: &str) -> anyhow::Result<()> {
        let exe = std::env::current_exe().context("cannot find the kakoi executable")?;
        let saved_stderr = nix::unistd::dup(std::io::stderr()).context("dup stderr")?;
        let child = Command::new(exe)
            .args(["__progress", "--title", text])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start the progress renderer")?;
        let pipe = child.stdin.as_ref().expect("piped");
        std::io::stderr().flush().ok();
        nix::unistd::dup2_stderr(pipe).context("redirect stderr")?;
        self.renderer = Some(Renderer {
            child,
            saved_stderr,
        });
        Ok(())
    }

    /// Whether uv's own output went to stderr as it ran (plain mode).
    pub fn streamed_uv_output(&self) -> bool {
        self.mode == Mode::Plain
    }

    fn stop_renderer(&mut self, ok: bool) {
        if let Some(mut r) = self.renderer.take() {
            std::io::stderr().flush().ok();
            let _ = nix::unistd::dup2_stderr(&r.saved_stderr);
            if let Some(mut stdin) = r.child.stdin.take() {
                let _ = writeln!(stdin, "{END_MARKER}{}", if ok { "ok" } else { "failed" });
            }
            let _ = r.child.wait();
        }
    }
}

impl Drop for CliProgress {
    fn drop(&mut self) {
        self.stop_renderer(false);
    }
}

/// Last line the launcher sends the renderer: `<marker>ok` or `<marker>failed`.
const END_MARKER: &str = "\u{1e}kakoi-progress-end:";

impl Progress for CliProgress {
    fn message(&mut self, text: &str) {
        if self.mode != Mode::Quiet {
            eprintln!("kakoi: {text}");
        }
    }

    fn download(&mut self, name: &str, done: u64, total: u64) {
        match self.mode {
            Mode::Quiet => {}
            Mode::Plain => {
                if done == 0 {
                    eprintln!("kakoi: downloading {name} ({})", human_bytes(total));
                } else if done >= total {
                    eprintln!("kakoi: downloaded {name}");
                }
            }
            Mode::Terminal => {
                let bar = self.bar.get_or_insert_with(|| {
                    let bar = ProgressBar::new(total);
                    bar.set_style(
                        ProgressStyle::with_template(
                            "kakoi: {msg:<14} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                        )
                        .expect("valid template")
                        .progress_chars("=> "),
                    );
                    bar
                });
                bar.set_length(total);
                bar.set_message(name.to_string());
                bar.set_position(done);
                if done >= total {
                    bar.finish_and_clear();
                    eprintln!("kakoi: downloaded {name}");
                    self.bar = None;
                }
            }
        }
    }

    fn step_started(&mut self, _step: BuildStep, text: &str) -> bool {
        match self.mode {
            Mode::Quiet => false,
            Mode::Plain => {
                eprintln!("kakoi: {text}");
                true
            }
            Mode::Terminal => match self.start_renderer(text) {
                Ok(()) => true,
                Err(e) => {
                    eprintln!("kakoi: {text} (no progress display: {e:#})");
                    false
                }
            },
        }
    }

    fn step_finished(&mut self, _step: BuildStep, ok: bool) {
        self.stop_renderer(ok);
    }
}

/// `kakoi __progress --title TEXT`: draw a spinner on stderr from uv's output on stdin.
#[derive(Debug, Args)]
pub struct ProgressArgs {
    /// What the step does.
    #[arg(long)]
    pub title: String,
}

impl ProgressArgs {
    /// Render until stdin closes.
    pub fn execute(self) -> anyhow::Result<i32> {
        use std::io::BufRead as _;
        let started = Instant::now();
        let spinner = ProgressBar::new_spinner();
        spinner.set_style(
            ProgressStyle::with_template("kakoi: {spinner} {prefix} {wide_msg} {elapsed}")
                .expect("valid template"),
        );
        spinner.set_prefix(self.title.clone());
        spinner.enable_steady_tick(Duration::from_millis(100));
        let mut outcome = None;
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if let Some(end) = line.strip_prefix(END_MARKER) {
                outcome = Some(end == "ok");
                break;
            }
            if let Some(status) = describe_uv_line(&line) {
                spinner.set_message(status);
            }
        }
        spinner.finish_and_clear();
        let secs = started.elapsed().as_secs_f64();
        match outcome {
            Some(true) => eprintln!("kakoi: {} (done in {secs:.1} s)", self.title),
            _ => eprintln!("kakoi: {} (failed after {secs:.1} s)", self.title),
        }
        Ok(0)
    }
}
