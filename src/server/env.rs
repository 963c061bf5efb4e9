//! The seam between the manager and Python environments. The manager asks an
//! [`EnvProvider`] to turn `requirements.txt` into an environment (built once, cached by
//! digest) and gets back what to add to the run: read-only binds, environment variables and
//! the interpreter to start.

use std::path::PathBuf;

use serde::Serialize;

use crate::backend::Backend;
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

/// Why an environment could not be provided; HTTP 422 with `message` and `detail`
/// (uv's own output).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct EnvFailure {
    /// One line, e.g. `cannot resolve requirements`.
    pub message: String,
    /// uv's message, when it ran.
    pub detail: Option<String>,
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
}

/// Builds or finds environments. Called from blocking threads (`spawn_blocking`); builds run
/// in sandboxes through `backend`.
pub trait EnvProvider: Send + Sync {
    /// The environment for `requirements` (the text of a requirements.txt).
    fn resolve(&self, requirements: &str, backend: &dyn Backend)
    -> Result<ResolvedEnv, EnvFailure>;

    /// The environments in the store.
    fn list(&self) -> Result<Vec<EnvSummary>, EnvFailure>;
}

/// TEMPORARY, until the environment store (`src/env`) is on main: this build cannot build
/// environments, and says so (HTTP 422) instead of running the program without its
/// packages. To be replaced by the adapter over `EnvStore`.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoEnvironments;

/// The message [`NoEnvironments`] answers with.
pub const NO_ENVIRONMENTS: &str = "requirements are not supported by this build yet (the environment store is not part of this build); send the request without requirements";

impl EnvProvider for NoEnvironments {
    fn resolve(
        &self,
        _requirements: &str,
        _backend: &dyn Backend,
    ) -> Result<ResolvedEnv, EnvFailure> {
        Err(EnvFailure {
            message: NO_ENVIRONMENTS.into(),
            detail: None,
        })
    }

    fn list(&self) -> Result<Vec<EnvSummary>, EnvFailure> {
        Ok(Vec::new())
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
    fn blank_and_comment_only_requirements_ask_for_nothing() {
        assert!(!has_requirements(""));
        assert!(!has_requirements("\n  \n# just a comment\n"));
        assert!(has_requirements("# plots\nmatplotlib==3.9.2\n"));
    }
}
