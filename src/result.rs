//! The result contract every surface (library, CLI `--json`, HTTP, MCP) returns.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// How a run ended. Exactly one applies; see [`Status::classify`] for the precedence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Exit code 0.
    Ok,
    /// A non-zero exit code.
    RuntimeError,
    /// Killed by a signal that none of the other statuses explains.
    Signaled,
    /// The wall-clock timeout expired; the whole process tree was killed.
    Timeout,
    /// The CPU time limit (RLIMIT_CPU) was reached.
    CpuTimeout,
    /// The cgroup's OOM killer fired.
    Oom,
    /// Output went over the cap on a stream (the rest was dropped).
    OutputLimit,
    /// A syscall the policy reserves for attacks was attempted; the sandbox was killed.
    SeccompViolation,
    /// The sandbox could not be set up; nothing of the payload ran.
    SetupError,
    /// The Python environment could not be built (uv's message is in `error`); nothing ran.
    EnvError,
    /// The run was cancelled by its caller (a client disconnected, the server shut down);
    /// the whole process tree was killed.
    Cancelled,
}

/// Facts a classification needs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Outcome {
    /// Exit code, if the payload exited.
    pub exit_code: Option<i32>,
    /// Signal, if the payload was killed by one.
    pub signal: Option<i32>,
    /// The wall clock expired.
    pub timed_out: bool,
    /// The cgroup OOM-killed something.
    pub oom_killed: bool,
    /// A stream was truncated.
    pub truncated: bool,
    /// A seccomp violation was reported.
    pub seccomp_violation: bool,
    /// Setup failed.
    pub setup_failed: bool,
    /// The caller cancelled the run.
    pub cancelled: bool,
}

impl Status {
    /// Classify an outcome. Precedence: setup error, cancelled, seccomp violation, OOM,
    /// timeout, CPU timeout, output limit, signal, exit code. (`env_error` is decided before
    /// any sandbox exists, so it never reaches this function.)
    pub fn classify(o: &Outcome) -> Status {
        if o.setup_failed {
            Status::SetupError
        } else if o.cancelled {
            Status::Cancelled
        } else if o.seccomp_violation || o.signal == Some(libc::SIGSYS) {
            Status::SeccompViolation
        } else if o.oom_killed {
            Status::Oom
        } else if o.timed_out {
            Status::Timeout
        } else if o.signal == Some(libc::SIGXCPU) {
            Status::CpuTimeout
        } else if o.truncated {
            Status::OutputLimit
        } else if o.signal.is_some() {
            Status::Signaled
        } else if o.exit_code == Some(0) {
            Status::Ok
        } else {
            Status::RuntimeError
        }
    }
}

/// Where time went, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Timings {
    /// Environment lookup or build.
    pub env_ms: f64,
    /// From the start of `run` to the payload's exec (prepare, clone, child setup).
    pub setup_ms: f64,
    /// From exec to the payload's exit (as the sandbox's init reports it).
    pub run_ms: f64,
    /// From the payload's exit to the end of the run: tearing down the namespaces (the
    /// sandbox's mounts), collecting returned files, reading accounting, removing the cgroup.
    pub cleanup_ms: f64,
}

/// A setup failure reported by the sandbox child: the stage and the errno, never guessed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SetupFailure {
    /// The checklist step that failed, e.g. `mount-proc`.
    pub stage: String,
    /// What the step was working on, e.g. a path.
    pub detail: Option<String>,
    /// Index of that subject in the step's list (internal).
    #[serde(skip)]
    pub detail_index: Option<u32>,
    /// The errno.
    pub errno: i32,
    /// The errno's symbolic name, e.g. `EPERM`.
    pub errno_name: String,
    /// A human sentence.
    pub message: String,
    /// A remedy where one is known.
    pub hint: Option<String>,
}

/// cgroup part of [`Isolation`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CgroupIsolation {
    /// `v1`, `v2` or `none`.
    pub version: String,
    /// Controllers applied.
    pub controllers: Vec<String>,
    /// Why there is no cgroup, when there is none.
    pub reason: Option<String>,
    /// How the sandbox entered its cgroup: `clone_into` (born in it, cgroup v2
    /// `CLONE_INTO_CGROUP`), `move_self` (v1: the single-threaded child wrote `0` to each
    /// hierarchy's `tasks` right after clone, the migration without the global lock),
    /// `migrate` (v1 fallback: the launcher moved it in by pid before releasing it to exec) or
    /// `prewarmed` (born in a cgroup a pre-warmed stub had already entered).
    #[serde(default)]
    pub attach: Option<String>,
}

/// Which layers the run actually got.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Isolation {
    /// Namespaces the sandbox was created in.
    pub namespaces: Vec<String>,
    /// uid inside the sandbox.
    pub uid: u32,
    /// gid inside the sandbox.
    pub gid: u32,
    /// Host uid the sandbox uid maps to.
    pub host_uid: u32,
    /// Capabilities left (always empty).
    pub capabilities: Vec<String>,
    /// PR_SET_NO_NEW_PRIVS was set.
    pub no_new_privs: bool,
    /// `none` (namespace with lo only) or `host`.
    pub network: String,
    /// With `network: none`, which network namespace the run got: `pooled` (a pre-made one
    /// with only `lo`, held by this run alone; see `src/sandbox/netns.rs`) or `fresh` (created
    /// for this run). Absent with the host's network.
    #[serde(default)]
    pub net_namespace: Option<String>,
    /// cgroup limits.
    pub cgroup: CgroupIsolation,
    /// rlimits set, name → value.
    pub rlimits: Vec<(String, u64)>,
    /// rlimits that stand in for missing cgroup controllers.
    pub rlimit_fallbacks: Vec<String>,
    /// seccomp layer, when applied.
    pub seccomp: Option<serde_json::Value>,
    /// Landlock layer, when applied.
    pub landlock: Option<serde_json::Value>,
}

/// A file the program wrote under the output directory (`out/` in the workdir), returned
/// with the result. Collection never follows symlinks and is capped in count and bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OutputFile {
    /// Path relative to the output directory, `/`-separated (e.g. `plot.png`, `sub/a.txt`).
    pub path: String,
    /// Size of the file in the sandbox, in bytes.
    pub size: u64,
    /// The content, base64 (standard alphabet, padded); absent when `skipped` is set.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub base64: Option<String>,
    /// Why the content was not returned (`too_large`, `symlink`, `not_regular`, `limit`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub skipped: Option<String>,
}

/// The Python environment a run used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EnvUse {
    /// Content digest of the environment (`<data>/envs/v1/<digest>`).
    pub digest: String,
    /// The environment already existed; nothing was built or downloaded.
    pub cache_hit: bool,
    /// Time spent building it (0 on a cache hit).
    pub build_ms: f64,
}

/// One ruff diagnostic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LintDiagnostic {
    /// Rule code, e.g. `F821`.
    pub code: String,
    /// The message.
    pub message: String,
    /// 1-based line.
    pub line: u32,
    /// 1-based column.
    pub column: u32,
    /// Whether ruff has a fix for it.
    pub fix_available: bool,
}

/// Result of `ruff check` on the program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LintReport {
    /// `warn` or `error`.
    pub mode: String,
    /// Diagnostics, in file order.
    pub diagnostics: Vec<LintDiagnostic>,
}

/// Result of `ruff format` on the program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FormatReport {
    /// `check` or `apply`.
    pub mode: String,
    /// Formatting would change (or, with `apply`, changed) the program.
    pub changed: bool,
    /// Unified diff from the submitted to the formatted program (empty when unchanged).
    pub diff: String,
    /// Why the program could not be formatted (ruff could not parse it); it ran unchanged.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
}

/// The result of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunResult {
    /// How the run ended.
    pub status: Status,
    /// Exit code of the payload, when it exited.
    pub exit_code: Option<i32>,
    /// Signal that killed the payload, when one did.
    pub signal: Option<i32>,
    /// Name of that signal (`SIGKILL`).
    pub signal_name: Option<String>,
    /// Standard output, as UTF-8 (invalid sequences replaced; see `stdout_base64`).
    pub stdout: String,
    /// Standard error, as UTF-8 (invalid sequences replaced; see `stderr_base64`).
    pub stderr: String,
    /// The exact stdout bytes in base64, present only when they are not valid UTF-8.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub stdout_base64: Option<String>,
    /// The exact stderr bytes in base64, present only when they are not valid UTF-8.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub stderr_base64: Option<String>,
    /// stdout went over the cap; the rest was dropped.
    pub stdout_truncated: bool,
    /// stderr went over the cap; the rest was dropped.
    pub stderr_truncated: bool,
    /// Wall-clock time of the payload, exec to exit.
    pub wall_ms: f64,
    /// User CPU time of every process of the run.
    pub cpu_user_ms: f64,
    /// System CPU time of every process of the run.
    pub cpu_sys_ms: f64,
    /// Peak memory of the cgroup (or max RSS without a cgroup).
    pub peak_memory_bytes: Option<u64>,
    /// The cgroup's OOM killer fired.
    pub oom_killed: bool,
    /// The syscall that caused a `seccomp_violation`, when known.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub seccomp_syscall: Option<String>,
    /// Set when `status` is `setup_error`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<SetupFailure>,
    /// Where time went.
    pub timings: Timings,
    /// Which layers were applied.
    pub isolation: Isolation,
    /// Which backend ran it: `native` (namespaces) or `docker`.
    #[serde(default = "native_backend")]
    pub backend: String,
    /// Files the program wrote under the output directory, when collection was requested.
    #[serde(default)]
    pub files: Vec<OutputFile>,
    /// The Python environment, when the run used one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub env: Option<EnvUse>,
    /// ruff diagnostics, when linting was requested.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub lint: Option<LintReport>,
    /// ruff formatting, when requested.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub format: Option<FormatReport>,
}

fn native_backend() -> String {
    "native".into()
}

/// Split captured bytes into the lossy string and, when needed, the exact base64.
pub fn encode_output(bytes: &[u8]) -> (String, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (s.to_owned(), None),
        Err(_) => (
            String::from_utf8_lossy(bytes).into_owned(),
            Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
        ),
    }
}

impl RunResult {
    /// The exact stdout bytes (decoding `stdout_base64` when present).
    pub fn stdout_bytes(&self) -> Vec<u8> {
        decode(&self.stdout, self.stdout_base64.as_deref())
    }

    /// The exact stderr bytes (decoding `stderr_base64` when present).
    pub fn stderr_bytes(&self) -> Vec<u8> {
        decode(&self.stderr, self.stderr_base64.as_deref())
    }

    /// The exit code the CLI uses without `--json`: the payload's code, 128+signal, 124 on
    /// timeout, 125 on setup error.
    pub fn cli_exit_code(&self) -> i32 {
        match self.status {
            Status::SetupError | Status::EnvError => 125,
            Status::Timeout => 124,
            _ => match (self.exit_code, self.signal) {
                (Some(code), _) => code,
                (None, Some(sig)) => 128 + sig,
                (None, None) => 125,
            },
        }
    }
}

fn decode(text: &str, b64: Option<&str>) -> Vec<u8> {
    match b64 {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap_or_else(|_| text.as_bytes().to_vec()),
        None => text.as_bytes().to_vec(),
    }
}

/// Symbolic name of a signal number, e.g. `SIGKILL`.
pub fn signal_name(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| s.as_str().to_owned())
        .unwrap_or_else(|_| format!("SIG{sig}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_precedence() {
        let base = Outcome::default();
        assert_eq!(
            Status::classify(&Outcome {
                exit_code: Some(0),
                ..base
            }),
            Status::Ok
        );
        assert_eq!(
            Status::classify(&Outcome {
                exit_code: Some(3),
                ..base
            }),
            Status::RuntimeError
        );
        assert_eq!(
            Status::classify(&Outcome {
                signal: Some(9),
                ..base
            }),
            Status::Signaled
        );
        assert_eq!(
            Status::classify(&Outcome {
                signal: Some(9),
                timed_out: true,
                ..base
            }),
            Status::Timeout
        );
        assert_eq!(
            Status::classify(&Outcome {
                signal: Some(9),
                timed_out: true,
                oom_killed: true,
                ..base
            }),
            Status::Oom
        );
        assert_eq!(
            Status::classify(&Outcome {
                signal: Some(libc::SIGXCPU),
                ..base
            }),
            Status::CpuTimeout
        );
        assert_eq!(
            Status::classify(&Outcome {
                signal: Some(libc::SIGSYS),
                ..base
            }),
            Status::SeccompViolation
        );
        assert_eq!(
            Status::classify(&Outcome {
                exit_code: Some(0),
                truncated: true,
                ..base
            }),
            Status::OutputLimit
        );
        assert_eq!(
            Status::classify(&Outcome {
                setup_failed: true,
                timed_out: true,
                ..base
            }),
            Status::SetupError
        );
        assert_eq!(
            Status::classify(&Outcome {
                cancelled: true,
                signal: Some(9),
                oom_killed: true,
                ..base
            }),
            Status::Cancelled
        );
    }

    #[test]
    fn non_utf8_output_is_kept_exactly() {
        let bytes = b"ok \xff\xfe end".to_vec();
        let (text, b64) = encode_output(&bytes);
        assert!(text.contains('\u{fffd}'));
        let r = RunResult {
            status: Status::Ok,
            exit_code: Some(0),
            signal: None,
            signal_name: None,
            stdout: text,
            stderr: String::new(),
            stdout_base64: b64,
            stderr_base64: None,
            stdout_truncated: false,
            stderr_truncated: false,
            wall_ms: 0.0,
            cpu_user_ms: 0.0,
            cpu_sys_ms: 0.0,
            peak_memory_bytes: None,
            oom_killed: false,
            seccomp_syscall: None,
            error: None,
            timings: Timings::default(),
            isolation: Isolation::default(),
            backend: "native".into(),
            files: vec![],
            env: None,
            lint: None,
            format: None,
        };
        let json = serde_json::to_string(&r).unwrap();
        let back: RunResult = serde_json::from_str(&json).unwrap();
        assert_eq!(back.stdout_bytes(), bytes);
        assert_eq!(encode_output(b"plain").1, None);
    }
}
