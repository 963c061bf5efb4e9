//! The request-level job API shared by the HTTP and MCP surfaces: a [`Job`] (a Python
//! program or a command, files, stdin, requested limits, format/lint) goes in, a
//! [`RunResult`] or a [`ServiceError`] with an HTTP-style code comes out.
//!
//! Order of a Python job, cheapest refusal first: policy check (limits, network, backend) →
//! `ruff format` (in a sandbox) → `ruff check` (in a sandbox; `lint=error` refuses with 422)
//! → the request's validation (file names, limits) → environment (422 on failure) → the run,
//! on the native launcher pool or in a Docker container. ruff and the
//! native runs share the [`WorkerPool`] (its queue and concurrency limit); Docker runs take
//! permits of the same pool ([`WorkerPool::run_external`]); environment builds run on a
//! separate one-worker build pool ([`LazyPool`], started on the first build) whose launcher
//! maps the sandbox user to [`crate::env::BUILD_HOST_ID`], the id every build must write the
//! shared uv cache as.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::config::{BackendKind, Policy, RequestedLimits};
use super::env::{EnvFailure, EnvProvider, EnvSummary, ResolvedEnv, has_requirements};
use super::metrics::Metrics;
use super::pool::{JobError, LazyPool, PoolConfig, WorkerPool};
use crate::backend::docker::{DockerClient, DockerError};
use crate::lint::{FormatMode, LintError, LintMode, Ruff};
use crate::result::{EnvUse, FormatReport, LintReport, RunResult, Status};
use crate::sandbox::RunOptions;
use crate::spec::{Collect, InputFile, Network, RunSpec, Source, WORKDIR};

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Program {
    /// A Python program, written to `main.py` in the workdir and run with the env's
    /// interpreter.
    Python {
        /// The source.
        code: String,
    },
    /// Any command (only when the operator enables commands).
    Command {
        /// Program and arguments.
        argv: Vec<String>,
    },
}

/// A file placed in the workdir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFile {
    /// Path relative to the workdir.
    pub name: String,
    /// Content.
    pub content: Vec<u8>,
}

/// One request, independent of the surface it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// What to run.
    pub program: Program,
    /// The text of a requirements.txt.
    pub requirements: Option<String>,
    /// Files for the workdir.
    pub files: Vec<JobFile>,
    /// Standard input.
    pub stdin: Option<Vec<u8>>,
    /// Limits asked for (bounded by the operator's policy).
    pub limits: RequestedLimits,
    /// Ask for the network (only when the operator allows it).
    pub network: bool,
    /// `ruff format`.
    pub format: FormatMode,
    /// `ruff check`.
    pub lint: LintMode,
    /// Where the program runs (`None`: the server's default).
    pub backend: Option<BackendKind>,
}

impl Job {
    /// A Python job with defaults.
    pub fn python(code: impl Into<String>) -> Job {
        Job {
            program: Program::Python { code: code.into() },
            requirements: None,
            files: Vec::new(),
            stdin: None,
            limits: RequestedLimits::default(),
            network: false,
            format: FormatMode::Off,
            lint: LintMode::Off,
            backend: None,
        }
    }
}

/// Error classes, each with an HTTP status and a stable `code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// 400: missing or malformed input, or limits over the maximum.
    BadRequest,
    /// 401: missing or wrong bearer token.
    Unauthorized,
    /// 404: no such route.
    NotFound,
    /// 405: wrong method.
    MethodNotAllowed,
    /// 413: the body is over the upload limit.
    PayloadTooLarge,
    /// 415: not JSON and not multipart.
    UnsupportedMediaType,
    /// 422: the environment could not be built.
    EnvFailed,
    /// 422: `lint=error` and ruff reported diagnostics.
    LintFailed,
    /// 422: format/lint asked for but ruff is unavailable or failed.
    LintUnavailable,
    /// 429: the queue is full.
    QueueFull,
    /// 429: no sandbox became free in time.
    QueueTimeout,
    /// 503: the server is shutting down.
    ShuttingDown,
    /// 500: a bug or a broken host.
    Internal,
}

impl ErrorKind {
    /// The HTTP status.
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::BadRequest => 400,
            ErrorKind::Unauthorized => 401,
            ErrorKind::NotFound => 404,
            ErrorKind::MethodNotAllowed => 405,
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::UnsupportedMediaType => 415,
            ErrorKind::EnvFailed | ErrorKind::LintFailed | ErrorKind::LintUnavailable => 422,
            ErrorKind::QueueFull | ErrorKind::QueueTimeout => 429,
            ErrorKind::ShuttingDown => 503,
            ErrorKind::Internal => 500,
        }
    }

    /// The `code` of the error body.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::NotFound => "not_found",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::UnsupportedMediaType => "unsupported_media_type",
            ErrorKind::EnvFailed => "env_failed",
            ErrorKind::LintFailed => "lint_failed",
            ErrorKind::LintUnavailable => "lint_unavailable",
            ErrorKind::QueueFull => "queue_full",
            ErrorKind::QueueTimeout => "queue_timeout",
            ErrorKind::ShuttingDown => "shutting_down",
            ErrorKind::Internal => "internal",
        }
    }
}

/// A request that produced no result.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ServiceError {
    /// Class.
    pub kind: ErrorKind,
    /// One human sentence.
    pub message: String,
    /// Structured detail (uv's output, lint diagnostics, the limit asked for).
    pub detail: Option<serde_json::Value>,
}

impl ServiceError {
    /// An error without detail.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ServiceError {
        ServiceError {
            kind,
            message: message.into(),
            detail: None,
        }
    }

    /// With detail.
    pub fn with_detail(mut self, detail: serde_json::Value) -> ServiceError {
        self.detail = Some(detail);
        self
    }

    /// A 400.
    pub fn bad_request(message: impl Into<String>) -> ServiceError {
        ServiceError::new(ErrorKind::BadRequest, message)
    }
}

impl From<JobError> for ServiceError {
    fn from(e: JobError) -> ServiceError {
        let kind = match &e {
            JobError::QueueFull { .. } => ErrorKind::QueueFull,
            JobError::QueueTimeout { .. } => ErrorKind::QueueTimeout,
            JobError::ShuttingDown | JobError::CancelledByShutdown => ErrorKind::ShuttingDown,
            JobError::InvalidRequest { .. } => ErrorKind::BadRequest,
            JobError::Launcher { .. } => ErrorKind::Internal,
        };
        ServiceError::new(kind, e.to_string())
    }
}

impl From<EnvFailure> for ServiceError {
    /// 422 `env_failed`; `detail` is `{"uv": uv's output or null, "stage", "uv_exit_code",
    /// "hint"}`.
    fn from(e: EnvFailure) -> ServiceError {
        ServiceError::new(ErrorKind::EnvFailed, e.message).with_detail(serde_json::json!({
            "uv": e.detail,
            "stage": e.stage,
            "uv_exit_code": e.uv_exit_code,
            "hint": e.hint,
        }))
    }
}

fn docker_error(e: DockerError) -> ServiceError {
    let kind = match &e {
        DockerError::Spec(_)
        | DockerError::NotUtf8 { .. }
        | DockerError::Unsupported { .. }
        | DockerError::Input(_) => ErrorKind::BadRequest,
        _ => ErrorKind::Internal,
    };
    let mut message = format!("docker backend: {}", super::worker::error_chain(&e));
    if let Some(hint) = e.hint() {
        message.push_str(&format!(" (hint: {hint})"));
    }
    ServiceError::new(kind, message)
}

/// Options of a [`Service`].
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    /// Limits and network policy.
    pub policy: Policy,
    /// Interpreter for programs without requirements.
    pub python: PathBuf,
    /// Configured ruff path (else `KAKOI_RUFF`, else `PATH`; looked up per request so an
    /// operator can install ruff without a restart).
    pub ruff: Option<PathBuf>,
    /// Whether [`Program::Command`] jobs are accepted.
    pub allow_commands: bool,
    /// Caps of the files returned from `out/` (native runs).
    pub files: Collect,
    /// Backend of jobs that do not name one.
    pub backend: BackendKind,
}

/// Runs [`Job`]s: policy, environment, ruff, sandbox. Cheap to share (`Arc` inside).
#[derive(Clone)]
pub struct Service {
    pool: WorkerPool,
    build: LazyPool,
    docker: Option<Arc<DockerClient>>,
    options: Arc<ServiceOptions>,
    envs: Arc<dyn EnvProvider>,
    metrics: Arc<Metrics>,
}

/// Seconds a build step may wait for the build pool's worker by default (builds queue
/// behind each other on one worker; each may take minutes).
pub const BUILD_QUEUE_TIMEOUT: Duration = Duration::from_secs(900);

/// The build pool's configuration derived from the run pool's: `workers` launchers with the
/// same sandbox settings, the sandbox user mapped to [`crate::env::BUILD_HOST_ID`] when
/// running as root (`EnvStore::build_sandbox_config`), and a queue in which a build step may
/// wait `queue_timeout`.
pub fn build_pool_config(run: &PoolConfig, workers: usize, queue_timeout: Duration) -> PoolConfig {
    let mut config = run.clone();
    let base = crate::sandbox::SandboxConfig {
        host_id: run.settings.host_id,
        ..crate::sandbox::SandboxConfig::default()
    };
    config.settings.host_id = crate::env::EnvStore::build_sandbox_config(base).host_id;
    config.workers = workers.max(1);
    config.queue_timeout = queue_timeout;
    config.max_runs_per_worker = 0;
    config.prestart = false;
    config
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("pool", &self.pool)
            .field("options", &self.options)
            .finish()
    }
}

impl Service {
    /// A service over `pool`, with a one-worker build pool derived from it (see
    /// [`build_pool_config`]; started on the first environment build) and no Docker backend.
    pub fn new(
        pool: WorkerPool,
        options: ServiceOptions,
        envs: Arc<dyn EnvProvider>,
        metrics: Arc<Metrics>,
    ) -> Service {
        let build = LazyPool::new(build_pool_config(pool.config(), 1, BUILD_QUEUE_TIMEOUT));
        Service {
            pool,
            build,
            docker: None,
            options: Arc::new(options),
            envs,
            metrics,
        }
    }

    /// Use `build` for environment builds (its launchers must map the sandbox user to the
    /// build id; see [`build_pool_config`]).
    pub fn with_build_pool(mut self, build: LazyPool) -> Service {
        self.build = build;
        self
    }

    /// Accept `backend = docker` jobs, run through `docker`.
    pub fn with_docker(mut self, docker: Arc<DockerClient>) -> Service {
        self.docker = Some(docker);
        self
    }

    /// The pool.
    pub fn pool(&self) -> &WorkerPool {
        &self.pool
    }

    /// The environment build pool.
    pub fn build_pool(&self) -> &LazyPool {
        &self.build
    }

    /// The environment provider.
    pub fn envs(&self) -> &Arc<dyn EnvProvider> {
        &self.envs
    }

    /// Whether `backend = docker` jobs are accepted.
    pub fn docker_enabled(&self) -> bool {
        self.docker.is_some()
    }

    /// Whether a run on `backend` returns the files it wrote under `out/` (native: yes;
    /// docker: not yet, so its `files` is always empty and says nothing about what the
    /// program wrote).
    pub fn returns_files(&self, backend: BackendKind) -> bool {
        backend == BackendKind::Native
    }

    /// Stop: refuse new jobs, give running ones `grace`, stop the run pool, the build pool
    /// and every launcher (see [`WorkerPool::shutdown`]).
    pub async fn shutdown(&self, grace: Duration) {
        tokio::join!(self.pool.shutdown(grace), self.build.shutdown(grace));
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The options.
    pub fn options(&self) -> &ServiceOptions {
        &self.options
    }

    /// Whether format/lint can be served: ruff is found without downloading anything (the
    /// configured path, `KAKOI_RUFF`, the env toolchain's ruff once located, `PATH`).
    pub fn ruff_available(&self) -> bool {
        self.locate_ruff(false).is_ok()
    }

    /// The ruff format/lint would use now, without downloading anything.
    pub fn ruff_path(&self) -> Option<PathBuf> {
        self.locate_ruff(false).ok().map(|r| r.binary().to_owned())
    }

    /// Find ruff: the configured path, `KAKOI_RUFF`, the env toolchain's pinned ruff
    /// (downloaded on first use when `install`), `PATH`. Blocking when `install`.
    fn locate_ruff(&self, install: bool) -> Result<Ruff, LintError> {
        let envs = self.envs.clone();
        Ruff::locate_with(self.options.ruff.as_deref(), &mut || {
            envs.ruff(install).map_err(|e| e.message)
        })
    }

    /// Locate the toolchain's ruff now (downloading it on first use), so the first request
    /// that asks for format/lint does not wait for it. Call it from a blocking thread.
    pub fn prepare_toolchain(&self) {
        match self.envs.ruff(true) {
            Ok(Some(r)) => tracing::info!(ruff = %r.binary().display(), "toolchain ready"),
            Ok(None) => {}
            Err(e) => tracing::warn!(
                "the env toolchain is not available yet (it is retried on use): {}",
                e.message
            ),
        }
    }

    /// Run a job to its result. Dropping the future cancels whatever sandbox it runs.
    pub async fn execute(&self, job: Job) -> Result<RunResult, ServiceError> {
        let started = Instant::now();
        let outcome = self.execute_inner(job).await;
        match &outcome {
            Ok(r) => self
                .metrics
                .record_run(r.status, started.elapsed().as_secs_f64()),
            Err(e) => self.metrics.record_rejected(e.kind.code()),
        }
        outcome
    }

    async fn execute_inner(&self, job: Job) -> Result<RunResult, ServiceError> {
        let limits = self
            .options
            .policy
            .apply(&job.limits)
            .map_err(ServiceError::bad_request)?;
        if job.network && !self.options.policy.allow_network {
            return Err(ServiceError::bad_request(
                "network access is not allowed by this server's operator",
            ));
        }
        let backend = job.backend.unwrap_or(self.options.backend);
        let docker = match backend {
            BackendKind::Native => None,
            BackendKind::Docker => Some(self.docker.clone().ok_or_else(|| {
                ServiceError::bad_request(
                    "the docker backend is not enabled on this server (the operator enables it with [docker] enabled = true or --docker); send backend=native",
                )
            })?),
        };
        let mut files: Vec<InputFile> = Vec::with_capacity(job.files.len() + 1);
        let python_program = matches!(job.program, Program::Python { .. });
        let (argv, format, lint) = match job.program {
            Program::Python { code } => {
                if job.files.iter().any(|f| f.name == "main.py") {
                    return Err(ServiceError::bad_request(
                        "a file named main.py conflicts with the program itself",
                    ));
                }
                let (code, format, lint) = self.ruff_pass(code, job.format, job.lint).await?;
                files.push(InputFile {
                    source: Source::Bytes(code.into_bytes()),
                    dest: "main.py".into(),
                });
                // argv[0] becomes the environment's interpreter when there is one.
                let python = self.options.python.clone();
                let argv = vec![python.into_os_string(), format!("{WORKDIR}/main.py").into()];
                (argv, format, lint)
            }
            Program::Command { argv } => {
                if !self.options.allow_commands {
                    return Err(ServiceError::bad_request(
                        "commands are not enabled on this server; send a Python program",
                    ));
                }
                if job.format != FormatMode::Off || job.lint != LintMode::Off {
                    return Err(ServiceError::bad_request(
                        "format and lint apply to Python programs only",
                    ));
                }
                (argv.into_iter().map(Into::into).collect(), None, None)
            }
        };
        for f in job.files {
            files.push(InputFile {
                source: Source::Bytes(f.content),
                dest: f.name.into(),
            });
        }
        let mut spec = RunSpec {
            argv,
            limits,
            stdin: job.stdin.map(Source::Bytes),
            files,
            network: if job.network {
                Network::Host
            } else {
                Network::None
            },
            // `out/` exists, empty and writable, when the program starts; what it holds at
            // the end comes back in `files`. The Docker backend does not return files yet.
            collect: self
                .returns_files(backend)
                .then(|| self.options.files.clone()),
            ..RunSpec::default()
        };
        // Refuse bad input (file names, limits) before an environment is built for it or it
        // takes a place in the queue.
        if let Err(e) = spec.validate() {
            return Err(ServiceError::bad_request(e.to_string()));
        }
        let env_started = Instant::now();
        let env = match job.requirements.as_deref() {
            Some(r) if has_requirements(r) => Some(self.resolve_env(r.to_owned()).await?),
            _ => None,
        };
        let env_ms = env_started.elapsed().as_secs_f64() * 1000.0;
        if let Some(e) = &env {
            if python_program {
                spec.argv[0] = e.python.clone().into_os_string();
            }
            (e.apply)(&mut spec);
            if let Err(e) = spec.validate() {
                return Err(ServiceError::bad_request(e.to_string()));
            }
        }
        let usage = env.as_ref().map(|e| e.usage.clone());
        let mut result = match docker {
            // The env (its in-use lock) is held until the sandbox is gone, also when the run
            // is cancelled.
            None => self.pool.run_holding(spec, Box::new(env)).await?,
            Some(client) => {
                let result = self.run_docker(client, spec).await;
                drop(env);
                result?
            }
        };
        result.lint = lint;
        result.format = format;
        if let Some(usage) = usage {
            result.timings.env_ms = env_ms;
            result.env = Some(usage);
        }
        Ok(result)
    }

    /// Run `spec` in a container, holding one of the pool's permits.
    async fn run_docker(
        &self,
        client: Arc<DockerClient>,
        spec: RunSpec,
    ) -> Result<RunResult, ServiceError> {
        let outcome = self
            .pool
            .run_external(|killed| async move {
                client
                    .run_cancellable(&spec, RunOptions::default(), killed)
                    .await
            })
            .await?;
        match outcome {
            Ok(r) if r.status == Status::Cancelled && self.pool.is_shutting_down() => {
                Err(JobError::CancelledByShutdown.into())
            }
            Ok(r) => Ok(r),
            Err(e) => Err(docker_error(e)),
        }
    }

    async fn resolve_env(&self, requirements: String) -> Result<ResolvedEnv, ServiceError> {
        let envs = self.envs.clone();
        let backend = self.build.blocking_backend();
        let resolved = tokio::task::spawn_blocking(move || envs.resolve(&requirements, &backend))
            .await
            .map_err(|e| ServiceError::new(ErrorKind::Internal, e.to_string()))?;
        let resolved = match resolved {
            Ok(r) => r,
            // A build cut short by the shutdown is not the requirements' fault.
            Err(_) if self.pool.is_shutting_down() => {
                return Err(JobError::ShuttingDown.into());
            }
            // Nor is a build that found the build pool's queue full (429).
            Err(EnvFailure {
                queue: Some(job), ..
            }) => return Err((*job).into()),
            Err(e) => return Err(e.into()),
        };
        self.metrics.record_env(resolved.usage.cache_hit);
        Ok(resolved)
    }

    /// `ruff format` then `ruff check` on the code that will run.
    async fn ruff_pass(
        &self,
        code: String,
        format_mode: FormatMode,
        lint_mode: LintMode,
    ) -> Result<(String, Option<FormatReport>, Option<LintReport>), ServiceError> {
        if format_mode == FormatMode::Off && lint_mode == LintMode::Off {
            return Ok((code, None, None));
        }
        let service = self.clone();
        let ruff = tokio::task::spawn_blocking(move || service.locate_ruff(true))
            .await
            .map_err(|e| ServiceError::new(ErrorKind::Internal, e.to_string()))?
            .map_err(lint_unavailable)?;
        let mut code = code;
        let mut format = None;
        if format_mode != FormatMode::Off {
            let r = self.pool.run(ruff.format_spec(code.as_bytes())).await?;
            let formatted =
                crate::lint::parse_format(&r, &code, format_mode).map_err(lint_unavailable)?;
            if format_mode == FormatMode::Apply
                && let Some(new_code) = formatted.code
            {
                code = new_code;
            }
            format = Some(formatted.report);
        }
        let mut lint = None;
        if lint_mode != LintMode::Off {
            let r = self.pool.run(ruff.check_spec(code.as_bytes())).await?;
            let report = crate::lint::parse_check(&r, lint_mode).map_err(lint_unavailable)?;
            if lint_mode == LintMode::Error && !report.diagnostics.is_empty() {
                let n = report.diagnostics.len();
                let first = crate::lint::describe(&report);
                let first = first.lines().next().unwrap_or_default().to_owned();
                return Err(ServiceError::new(
                    ErrorKind::LintFailed,
                    format!(
                        "lint=error: ruff reported {n} diagnostic{} (first: {first}); the program was not run",
                        if n == 1 { "" } else { "s" }
                    ),
                )
                .with_detail(serde_json::json!({ "lint": report, "format": format })));
            }
            lint = Some(report);
        }
        Ok((code, format, lint))
    }

    /// Build (or find) the environment for `requirements`.
    pub async fn build_env(&self, requirements: String) -> Result<EnvUse, ServiceError> {
        if !has_requirements(&requirements) {
            return Err(ServiceError::bad_request(
                "requirements are empty (only blank lines and comments)",
            ));
        }
        let r = self.resolve_env(requirements).await;
        if let Err(e) = &r {
            self.metrics.record_rejected(e.kind.code());
        }
        Ok(r?.usage)
    }

    /// The environments in the store.
    pub async fn list_envs(&self) -> Result<Vec<EnvSummary>, ServiceError> {
        let envs = self.envs.clone();
        Ok(tokio::task::spawn_blocking(move || envs.list())
            .await
            .map_err(|e| ServiceError::new(ErrorKind::Internal, e.to_string()))??)
    }
}

fn lint_unavailable(e: LintError) -> ServiceError {
    ServiceError::new(
        ErrorKind::LintUnavailable,
        format!(
            "format/lint cannot be served: {}",
            super::worker::error_chain(&e)
        ),
    )
}
