//! Backends: what actually runs a [`RunSpec`] and returns the [`RunResult`] contract.
//!
//! - [`crate::sandbox::Sandbox`] is the native backend (namespaces, cgroups, seccomp,
//!   Landlock). It clones, so it must be driven from a single-threaded process.
//! - The Docker backend (issue 7) runs the same request in a container, only so users can
//!   compare the two modes side by side.
//!
//! Higher layers (environments, the HTTP manager, MCP) take a `&dyn Backend` so they work
//! with either, and with the launcher process a multi-threaded server talks to.

pub mod docker;

use crate::result::RunResult;
use crate::sandbox::{RunOptions, Sandbox};
use crate::spec::RunSpec;

/// Errors of a backend that prevent a run from starting or being accounted. A payload that
/// fails is not an error: it is a [`RunResult`] with a status.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The native sandbox failed.
    #[error(transparent)]
    Native(#[from] crate::sandbox::Error),
    /// The Docker backend failed.
    #[error(transparent)]
    Docker(#[from] docker::DockerError),
    /// Another backend failed.
    #[error("{message}")]
    Other {
        /// What failed, lowercase, naming the thing.
        message: String,
        /// Cause.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

/// Runs one request to completion.
pub trait Backend {
    /// Short name reported in `RunResult::backend` (`native`, `docker`).
    fn name(&self) -> &'static str;

    /// Run one request and wait for it.
    fn run_with(&self, spec: &RunSpec, options: &RunOptions) -> Result<RunResult, BackendError>;

    /// The host uid and gid the sandbox user maps to, when the backend knows them (files
    /// written through a writable bind are owned by these ids). Env builds check it: they
    /// must all write the shared uv cache as one id.
    fn host_ids(&self) -> Option<(u32, u32)> {
        None
    }
}

impl Backend for Sandbox {
    fn name(&self) -> &'static str {
        "native"
    }

    fn run_with(&self, spec: &RunSpec, options: &RunOptions) -> Result<RunResult, BackendError> {
        Ok(Sandbox::run_with(self, spec, *options)?)
    }

    fn host_ids(&self) -> Option<(u32, u32)> {
        Some(Sandbox::host_ids(self))
    }
}
