//! The seam between the manager and Python environments. The manager asks an
//! [`EnvProvider`] to turn `requirements.txt` into an environment (built once, cached by
//! digest) and gets back what to add to the run: read-only binds, environment variables and
//! the interpreter to start.
//!
//! [`StoreEnvironments`] is the provider of `kakoi serve`: the content-addressed
//! [`EnvStore`] of `src/env` (the same store, digests and toolchain as `kakoi env` and
//! `kakoi run -r`). Builds run in sandboxes through the backend the manager passes in (its
//! one-worker build pool, whose launcher maps the sandbox user to
//! [`crate::env::BUILD_HOST_ID`]); concurrent requests for one digest build it once (the
//! store's file lock), and the [`ResolvedEnv`] holds the env's in-use lock until the run is
//! over. [`NoEnvironments`] is for servers whose operator turned environments off.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::backend::Backend;
use crate::env::{
    BuildStep, EnvError, EnvInfo, EnvRequest, EnvStore, Progress, ResolveOptions, StoreConfig,
};
use crate::lint::Ruff;
use crate::result::EnvUse;
use crate::spec::RunSpec;

/// An environment ready to be used by a run. Dropping it releases the environment (a store
/// may hold it "in use" until then), so keep it until the run has ended.
pub struct ResolvedEnv {
    /// The interpreter inside the sandbox (e.g. `<env>/venv/bin/python`).
    pub python: PathBuf,
    /// What the result reports in `env`.
    pub usage: EnvUse,
    /// Adds the environment to a run: read-only binds, variables (it may size thread pools
    /// from the run's limits, so call it after the limits are set).
    pub apply: Box<dyn Fn(&mut RunSpec) + Send + Sync>,
}

impl std::fmt::Debug for ResolvedEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolvedEnv")
            .field("python", &self.python)
            .field("usage", &self.usage)
            .finish_non_exhaustive()
    }
}

/// Why an environment could not be provided: HTTP 422 `env_failed`, with `message`, and
/// uv's own output (`detail`) when uv ran. The CLI and library report the same failure as a
/// result with status `env_error`; HTTP never answers 200 for a program that did not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct EnvFailure {
    /// One line, e.g. `resolving the requirements failed: uv exited with 1`.
    pub message: String,
    /// uv's message, when it ran.
    pub detail: Option<String>,
    /// Where it failed (`env-requirements`, `env-toolchain`, `env-resolve`, `env-install`,
    /// `env-store`), when known.
    pub stage: Option<String>,
    /// uv's exit code, when uv itself failed.
    pub uv_exit_code: Option<i32>,
    /// A remedy, where one is known.
    pub hint: Option<String>,
    /// The build could not get a build sandbox (the build pool's queue was full or timed
    /// out, or the manager is shutting down): the manager's error, answered as such (429,
    /// 503) rather than as a failed build.
    pub queue: Option<Box<super::pool::JobError>>,
}

impl EnvFailure {
    /// A failure with only a message.
    pub fn new(message: impl Into<String>) -> EnvFailure {
        EnvFailure {
            message: message.into(),
            detail: None,
            stage: None,
            uv_exit_code: None,
            hint: None,
            queue: None,
        }
    }
}

/// The manager's queue error behind a build step that could not start, if that is why.
fn queue_error(e: &EnvError) -> Option<Box<super::pool::JobError>> {
    use super::pool::JobError;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(job) = c.downcast_ref::<JobError>() {
            return match job {
                JobError::QueueFull { .. }
                | JobError::QueueTimeout { .. }
                | JobError::ShuttingDown => Some(Box::new(job.clone())),
                _ => None,
            };
        }
        cause = c.source();
    }
    None
}

impl From<&EnvError> for EnvFailure {
    fn from(e: &EnvError) -> EnvFailure {
        let (message, detail) = match e {
            // uv's own output goes into `detail`, not the one-line message.
            EnvError::Uv {
                step,
                exit_code,
                message,
            } => (
                format!("{step} failed: {} exited with {exit_code}", step.program()),
                Some(message.clone()),
            ),
            other => (crate::env::error_chain(other), None),
        };
        EnvFailure {
            message,
            detail,
            stage: Some(e.stage().to_owned()),
            uv_exit_code: e.uv_exit_code(),
            hint: e.hint(),
            queue: queue_error(e),
        }
    }
}

/// An environment in the store, as listed by `GET /envs`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct EnvSummary {
    /// Content digest.
    pub digest: String,
    /// The normalized requirements it was built from.
    pub requirements: String,
    /// Size on disk, when known.
    pub size_bytes: Option<u64>,
    /// The pinned packages it holds (`name==version`, from its lock).
    pub packages: Vec<String>,
    /// Python version it was built for.
    pub python: String,
    /// Last use (seconds since the epoch).
    pub last_used: u64,
    /// A run holds it right now.
    pub in_use: bool,
}

impl From<EnvInfo> for EnvSummary {
    fn from(i: EnvInfo) -> EnvSummary {
        EnvSummary {
            digest: i.digest,
            requirements: i.requirements.iter().map(|l| format!("{l}\n")).collect(),
            size_bytes: Some(i.size_bytes),
            packages: i.packages,
            python: i.interpreter.version,
            last_used: i.last_used,
            in_use: i.in_use,
        }
    }
}

/// Builds or finds environments. Called from blocking threads (`spawn_blocking`); builds run
/// in sandboxes through `backend`.
pub trait EnvProvider: Send + Sync {
    /// The environment for `requirements` (the text of a requirements.txt).
    fn resolve(&self, requirements: &str, backend: &dyn Backend)
    -> Result<ResolvedEnv, EnvFailure>;

    /// The environments in the store.
    fn list(&self) -> Result<Vec<EnvSummary>, EnvFailure>;

    /// Whether this provider builds environments at all (`false`: every `resolve` fails).
    fn enabled(&self) -> bool {
        true
    }

    /// The pinned ruff of the provider's toolchain: `Ok(None)` when it has none, or (with
    /// `install` false) when it is not installed yet; with `install`, it is downloaded or
    /// realised on first use. Blocking.
    fn ruff(&self, _install: bool) -> Result<Option<Ruff>, EnvFailure> {
        Ok(None)
    }
}

/// The provider of a server whose operator turned environments off (`[envs] enabled =
/// false`, `--no-envs`): requirements are refused (HTTP 422) instead of running the program
/// without its packages.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoEnvironments;

/// The message [`NoEnvironments`] answers with.
pub const NO_ENVIRONMENTS: &str = "this server does not build environments (the operator turned them off); send the request without requirements";

impl EnvProvider for NoEnvironments {
    fn resolve(
        &self,
        _requirements: &str,
        _backend: &dyn Backend,
    ) -> Result<ResolvedEnv, EnvFailure> {
        Err(EnvFailure::new(NO_ENVIRONMENTS))
    }

    fn list(&self) -> Result<Vec<EnvSummary>, EnvFailure> {
        Ok(Vec::new())
    }

    fn enabled(&self) -> bool {
        false
    }
}

/// The [`EnvProvider`] over the environment store of a data directory.
#[derive(Debug)]
pub struct StoreEnvironments {
    store: EnvStore,
    options: ResolveOptions,
    /// The toolchain's ruff, once located.
    ruff: std::sync::OnceLock<Ruff>,
}

impl StoreEnvironments {
    /// Open (creating) the store; cheap: nothing is downloaded until the first build or
    /// [`EnvProvider::ruff`] with `install`.
    pub fn open(
        config: StoreConfig,
        options: ResolveOptions,
    ) -> Result<StoreEnvironments, EnvError> {
        Ok(StoreEnvironments {
            store: EnvStore::open(config)?,
            options,
            ruff: std::sync::OnceLock::new(),
        })
    }

    /// The store.
    pub fn store(&self) -> &EnvStore {
        &self.store
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        self.store.data_dir()
    }
}

impl EnvProvider for StoreEnvironments {
    fn resolve(
        &self,
        requirements: &str,
        backend: &dyn Backend,
    ) -> Result<ResolvedEnv, EnvFailure> {
        let outcome = EnvRequest::new(requirements.as_bytes(), self.options.clone())
            .and_then(|request| self.store.ensure(&request, backend, &mut LogProgress));
        let env = outcome.map_err(|e| {
            tracing::info!(
                stage = e.stage(),
                "environment failed: {}",
                crate::env::error_chain(&e)
            );
            EnvFailure::from(&e)
        })?;
        let python = env.python();
        let usage = env.usage();
        if !usage.cache_hit {
            tracing::info!(digest = %usage.digest, build_ms = usage.build_ms, "environment built");
        }
        Ok(ResolvedEnv {
            python,
            usage,
            // The closure owns the `Env`: its in-use lock lives as long as the ResolvedEnv.
            apply: Box::new(move |spec: &mut RunSpec| env.apply(spec)),
        })
    }

    fn list(&self) -> Result<Vec<EnvSummary>, EnvFailure> {
        let envs = self.store.list().map_err(|e| EnvFailure::from(&e))?;
        Ok(envs.into_iter().map(EnvSummary::from).collect())
    }

    fn ruff(&self, install: bool) -> Result<Option<Ruff>, EnvFailure> {
        if let Some(r) = self.ruff.get() {
            return Ok(Some(r.clone()));
        }
        if !install {
            // No side effects (no download, no probe): not located yet.
            return Ok(None);
        }
        let toolchain = self
            .store
            .toolchain(&mut LogProgress)
            .map_err(|e| EnvFailure::from(&e))?;
        Ok(Some(
            self.ruff
                .get_or_init(|| Ruff::from_toolchain(&toolchain))
                .clone(),
        ))
    }
}

/// Progress of builds and toolchain downloads, as log lines.
struct LogProgress;

impl Progress for LogProgress {
    fn message(&mut self, text: &str) {
        tracing::info!("{text}");
    }

    fn step_started(&mut self, step: BuildStep, text: &str) -> bool {
        tracing::info!(stage = step.stage(), "{text}");
        false
    }
}

/// Whether a requirements text asks for anything (not only blank lines and comments).
pub fn has_requirements(text: &str) -> bool {
    text.lines().any(|l| {
        let l = l.trim();
        !l.is_empty() && !l.starts_with('#')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_errors_keep_uvs_message_apart_from_the_summary() {
        let uv = EnvError::Uv {
            step: BuildStep::Resolve,
            exit_code: 1,
            message: "error: No solution found when resolving dependencies".into(),
        };
        let f = EnvFailure::from(&uv);
        assert_eq!(
            f.message,
            "resolving the requirements failed: uv exited with 1"
        );
        assert_eq!(
            f.detail.as_deref(),
            Some("error: No solution found when resolving dependencies")
        );
        assert_eq!(f.stage.as_deref(), Some("env-resolve"));
        assert_eq!(f.uv_exit_code, Some(1));
        assert!(f.hint.is_some());
        let other = EnvError::InUse {
            digest: "abc".into(),
        };
        let f = EnvFailure::from(&other);
        assert!(f.message.contains("abc"), "{}", f.message);
        assert_eq!((f.detail, f.uv_exit_code), (None, None));
        assert_eq!(f.stage.as_deref(), Some("env-store"));
        assert_eq!(f.queue, None);
        // A build step that found the build pool's queue full is the manager's 429.
        let full = super::super::pool::JobError::QueueFull { capacity: 3 };
        let e = EnvError::Backend {
            step: BuildStep::Install,
            source: crate::backend::BackendError::Other {
                message: full.to_string(),
                source: Some(Box::new(full.clone())),
            },
        };
        assert_eq!(EnvFailure::from(&e).queue, Some(Box::new(full)));
    }

    #[test]
    fn no_environments_refuses_and_lists_nothing() {
        let backend = crate::cli::env::LazySandbox::new(Default::default());
        let e = NoEnvironments.resolve("six\n", &backend).unwrap_err();
        assert_eq!(e.message, NO_ENVIRONMENTS);
        assert!(NoEnvironments.list().unwrap().is_empty());
        assert!(!NoEnvironments.enabled());
        assert_eq!(NoEnvironments.ruff(true).unwrap(), None);
    }

    #[test]
    fn blank_and_comment_only_requirements_ask_for_nothing() {
        assert!(!has_requirements(""));
        assert!(!has_requirements("\n  \n# just a comment\n"));
        assert!(has_requirements("# plots\nmatplotlib==3.9.2\n"));
    }
}
