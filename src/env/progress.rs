//! Progress reporting of toolchain bootstraps and env builds.
//!
//! The library only emits events; the CLI renders them (a spinner on a terminal, plain lines
//! otherwise, nothing with `--quiet`) and a server may count or forward them.
//!
//! A build step runs uv inside the sandbox, and the launcher that runs it must stay
//! single-threaded, so no ticker thread can animate a spinner while it waits. Instead
//! [`Progress::step_started`] may ask for *live output*: the backend then copies uv's stderr
//! to the launcher's stderr as it arrives (`RunOptions::passthrough`), where the CLI has put
//! a pipe to a separate renderer process.

use std::fmt;

/// The sandboxed steps of an env build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildStep {
    /// `uv pip compile`: resolve the requirements into a lock with hashes.
    Resolve,
    /// `uv venv` + `uv pip sync`: download, build (private cache only) and install.
    Install,
    /// The interpreter's `compileall`: bytecode, without the uv cache or the network.
    Compile,
}

impl BuildStep {
    /// Stage name used in results (`env-resolve`, `env-install`).
    pub fn stage(self) -> &'static str {
        match self {
            BuildStep::Resolve => "env-resolve",
            BuildStep::Install => "env-install",
            BuildStep::Compile => "env-compile",
        }
    }

    /// The program whose exit code a failure reports (`uv`, `python`).
    pub fn program(self) -> &'static str {
        match self {
            BuildStep::Resolve | BuildStep::Install => "uv",
            BuildStep::Compile => "python",
        }
    }

    /// The command this step runs.
    pub fn command(self) -> &'static str {
        match self {
            BuildStep::Resolve => "uv pip compile",
            BuildStep::Install => "uv pip sync",
            BuildStep::Compile => "python -m compileall",
        }
    }
}

impl fmt::Display for BuildStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BuildStep::Resolve => "resolving the requirements",
            BuildStep::Install => "installing the environment",
            BuildStep::Compile => "compiling bytecode",
        })
    }
}

/// Receives progress events. Every method has a do-nothing default.
pub trait Progress {
    /// A one-line status message (`installing uv 0.13.9 and ruff 0.17.6 ...`).
    fn message(&mut self, _text: &str) {}

    /// Bytes of a download so far.
    fn download(&mut self, _name: &str, _done: u64, _total: u64) {}

    /// A sandboxed build step starts. Return true to have uv's output streamed through the
    /// launcher's stderr while it runs (see the module docs).
    fn step_started(&mut self, _step: BuildStep, _text: &str) -> bool {
        false
    }

    /// The step ended (successfully or not).
    fn step_finished(&mut self, _step: BuildStep, _ok: bool) {}
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {}

/// Turn one line of uv's (non-terminal) output into a short status, when it says what is
/// happening: `Downloading numpy (16.1MiB)`, ` + numpy==2.4.6`, `Bytecode compiled ...`.
pub fn describe_uv_line(line: &str) -> Option<String> {
    let line = line.trim_end();
    let trimmed = line.trim_start();
    if let Some(rest) = trimmed.strip_prefix("Downloading ") {
        return Some(format!("downloading {rest}"));
    }
    if let Some(rest) = trimmed.strip_prefix("Downloaded ") {
        return Some(format!("downloaded {rest}"));
    }
    if let Some(rest) = trimmed.strip_prefix("Building ") {
        return Some(format!("building {rest}"));
    }
    if let Some(rest) = trimmed.strip_prefix("Built ") {
        return Some(format!("built {rest}"));
    }
    if let Some(rest) = line.strip_prefix(" + ") {
        return Some(format!("installed {rest}"));
    }
    for prefix in [
        "Resolved ",
        "Prepared ",
        "Installed ",
        "Bytecode compiled ",
        "Creating virtual environment",
    ] {
        if trimmed.starts_with(prefix) {
            let mut s = trimmed.to_string();
            if let Some(first) = s.get_mut(0..1) {
                first.make_ascii_lowercase();
            }
            return Some(s);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uv_lines_become_statuses() {
        assert_eq!(
            describe_uv_line("Downloading numpy (16.1MiB)").as_deref(),
            Some("downloading numpy (16.1MiB)")
        );
        assert_eq!(
            describe_uv_line(" Downloaded numpy").as_deref(),
            Some("downloaded numpy")
        );
        assert_eq!(
            describe_uv_line(" + pandas==3.1.1").as_deref(),
            Some("installed pandas==3.1.1")
        );
        assert_eq!(
            describe_uv_line("Bytecode compiled 1970 files in 8.68s").as_deref(),
            Some("bytecode compiled 1970 files in 8.68s")
        );
        assert_eq!(describe_uv_line("  × No solution found"), None);
    }
}
