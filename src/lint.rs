//! ruff on submitted programs: `ruff format` and `ruff check --output-format json`, each run
//! *inside the sandbox* (ruff parses untrusted input), with a pinned configuration so results
//! do not depend on a config file or on ruff's changing defaults:
//!
//! - `--isolated`: no configuration discovery (no pyproject.toml/ruff.toml is read);
//! - `--select E4,E7,E9,F`: pyflakes and the pycodestyle errors (ruff's default selection
//!   written out, so a ruff upgrade that changes the default does not change results);
//! - `--target-version py311`, `--no-cache`.
//!
//! The program is passed on stdin (`--stdin-filename main.py -`); the ruff binary is bound
//! read-only at [`RUFF_SANDBOX_PATH`] (with the Nix toolchain's closure, when ruff comes from
//! it). Where ruff comes from ([`Ruff::locate_with`]): an explicit path (the server's `ruff`
//! setting), else `KAKOI_RUFF`, else the env toolchain's pinned ruff (`ruff` of
//! [`crate::env::Toolchain`], downloaded from PyPI on first use or part of the Nix closure),
//! else `ruff` on `PATH`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backend::{Backend, BackendError};
use crate::result::{FormatReport, LintDiagnostic, LintReport, RunResult, Status};
use crate::sandbox::RunOptions;
use crate::spec::{Bind, RunSpec, Source};

/// The pinned rule selection.
pub const RUFF_SELECT: &str = "E4,E7,E9,F";
/// The pinned Python target.
pub const RUFF_TARGET: &str = "py311";
/// Where the ruff binary is bound inside the sandbox.
pub const RUFF_SANDBOX_PATH: &str = "/opt/kakoi/ruff";

/// `format` option: whether to run `ruff format` and what to do with its output.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    clap::ValueEnum,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum FormatMode {
    /// No formatting.
    #[default]
    Off,
    /// Report whether formatting would change the program, with a diff; run it unchanged.
    Check,
    /// Format the program and run the formatted version.
    Apply,
}

/// `lint` option: whether to run `ruff check` and whether diagnostics block the run.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    clap::ValueEnum,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum LintMode {
    /// No linting.
    #[default]
    Off,
    /// Report diagnostics, run anyway.
    Warn,
    /// Refuse to run a program with any diagnostic of the pinned selection.
    Error,
}

impl FormatMode {
    fn name(self) -> &'static str {
        match self {
            FormatMode::Off => "off",
            FormatMode::Check => "check",
            FormatMode::Apply => "apply",
        }
    }
}

impl LintMode {
    fn name(self) -> &'static str {
        match self {
            LintMode::Off => "off",
            LintMode::Warn => "warn",
            LintMode::Error => "error",
        }
    }
}

/// Why ruff could not give an answer.
#[derive(Debug, thiserror::Error)]
pub enum LintError {
    /// No ruff binary was found.
    #[error("ruff was not found ({looked})")]
    NotFound {
        /// Where we looked.
        looked: String,
    },
    /// The sandbox could not run ruff.
    #[error("cannot run ruff in the sandbox")]
    Run(#[source] BackendError),
    /// ruff ran but failed.
    #[error("ruff {command} failed ({status}): {stderr}")]
    Failed {
        /// `format` or `check`.
        command: &'static str,
        /// The run's status and exit code.
        status: String,
        /// ruff's stderr (trimmed).
        stderr: String,
    },
    /// `ruff check` printed something that is not its JSON.
    #[error("cannot parse ruff check's JSON output")]
    Output(#[source] serde_json::Error),
}

/// The formatted program and the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Formatted {
    /// What to put in the result.
    pub report: FormatReport,
    /// The formatted program (`None` when ruff could not parse it).
    pub code: Option<String>,
}

/// A located ruff binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruff {
    binary: PathBuf,
    /// Host paths ruff needs at run time (a Nix closure), bound read-only at the same path.
    binds: Vec<PathBuf>,
}

impl Ruff {
    /// Use this binary.
    pub fn at(binary: impl Into<PathBuf>) -> Ruff {
        Ruff {
            binary: binary.into(),
            binds: Vec::new(),
        }
    }

    /// The env toolchain's pinned ruff, with what it needs bound into the sandbox.
    pub fn from_toolchain(toolchain: &crate::env::Toolchain) -> Ruff {
        Ruff {
            binary: toolchain.ruff.clone(),
            binds: match toolchain.kind {
                crate::env::ToolchainKind::Nix => toolchain.binds.clone(),
                // The PyPI wheel's ruff is one static binary.
                crate::env::ToolchainKind::Host => Vec::new(),
            },
        }
    }

    /// The binary's host path.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// Find ruff: `explicit`, else `$KAKOI_RUFF`, else `ruff` on `PATH`.
    pub fn locate(explicit: Option<&Path>) -> Result<Ruff, LintError> {
        Ruff::locate_with(explicit, &mut || Ok(None))
    }

    /// Find ruff: `explicit`, else `$KAKOI_RUFF`, else what `toolchain` gives (the env
    /// toolchain's pinned ruff; `Ok(None)`: no toolchain), else `ruff` on `PATH`. A toolchain
    /// that fails (no network for the first download) falls through to `PATH`, and its error
    /// is part of the message when nothing is found there either.
    pub fn locate_with(
        explicit: Option<&Path>,
        toolchain: &mut dyn FnMut() -> Result<Option<Ruff>, String>,
    ) -> Result<Ruff, LintError> {
        if let Some(p) = explicit {
            return if p.is_file() {
                Ok(Ruff::at(p))
            } else {
                Err(LintError::NotFound {
                    looked: format!("the configured path {} is not a file", p.display()),
                })
            };
        }
        if let Some(p) = std::env::var_os("KAKOI_RUFF") {
            let p = PathBuf::from(p);
            return if p.is_file() {
                Ok(Ruff::at(p))
            } else {
                Err(LintError::NotFound {
                    looked: format!("KAKOI_RUFF={} is not a file", p.display()),
                })
            };
        }
        let toolchain = match toolchain() {
            Ok(Some(ruff)) => return Ok(ruff),
            Ok(None) => None,
            Err(e) => Some(e),
        };
        let path = std::env::var_os("PATH").unwrap_or_default();
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("ruff");
            if candidate.is_file() {
                return Ok(Ruff::at(candidate));
            }
        }
        Err(LintError::NotFound {
            looked: match toolchain {
                Some(e) => format!(
                    "KAKOI_RUFF is unset, the env toolchain has no ruff ({e}) and there is no ruff on PATH"
                ),
                None => "KAKOI_RUFF is unset and there is no ruff on PATH; set KAKOI_RUFF or install it (pip install ruff)".into(),
            },
        })
    }

    fn spec(&self, args: &[&str], code: &[u8]) -> RunSpec {
        let mut argv = vec![RUFF_SANDBOX_PATH.to_owned()];
        argv.extend(args.iter().map(|s| s.to_string()));
        let mut spec = RunSpec::command(argv);
        spec.stdin = Some(Source::Bytes(code.to_vec()));
        spec.binds_ro.push(Bind {
            host: self.binary.clone(),
            sandbox: RUFF_SANDBOX_PATH.into(),
        });
        for path in &self.binds {
            spec.binds_ro.push(Bind {
                host: path.clone(),
                sandbox: path.clone(),
            });
        }
        spec.limits.timeout = Some(10.0);
        spec
    }

    /// The request that runs `ruff format` on `code` (formatted program on stdout).
    pub fn format_spec(&self, code: &[u8]) -> RunSpec {
        self.spec(
            &[
                "format",
                "--isolated",
                "--no-cache",
                "--target-version",
                RUFF_TARGET,
                "--stdin-filename",
                "main.py",
                "-",
            ],
            code,
        )
    }

    /// The request that runs `ruff check` on `code` (JSON diagnostics on stdout).
    pub fn check_spec(&self, code: &[u8]) -> RunSpec {
        self.spec(
            &[
                "check",
                "--isolated",
                "--no-cache",
                "--select",
                RUFF_SELECT,
                "--target-version",
                RUFF_TARGET,
                "--output-format",
                "json",
                "--stdin-filename",
                "main.py",
                "-",
            ],
            code,
        )
    }

    /// Run `ruff format` on `code` through `backend`.
    pub fn format(
        &self,
        backend: &dyn Backend,
        code: &str,
        mode: FormatMode,
    ) -> Result<Formatted, LintError> {
        let result = backend
            .run_with(&self.format_spec(code.as_bytes()), &RunOptions::default())
            .map_err(LintError::Run)?;
        parse_format(&result, code, mode)
    }

    /// Run `ruff check` on `code` through `backend`.
    pub fn check(
        &self,
        backend: &dyn Backend,
        code: &str,
        mode: LintMode,
    ) -> Result<LintReport, LintError> {
        let result = backend
            .run_with(&self.check_spec(code.as_bytes()), &RunOptions::default())
            .map_err(LintError::Run)?;
        parse_check(&result, mode)
    }
}

fn failed(command: &'static str, r: &RunResult) -> LintError {
    let status = serde_json::to_value(r.status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let stderr = match &r.error {
        Some(e) => e.message.clone(),
        None => r.stderr.trim().to_owned(),
    };
    LintError::Failed {
        command,
        status: match r.exit_code {
            Some(c) => format!("{status}, exit code {c}"),
            None => status,
        },
        stderr,
    }
}

/// Turn a `ruff format` run into a report. Exit code 2 with a parse error is not a failure:
/// the program cannot be formatted, the report says why, and the program runs as given.
pub fn parse_format(
    result: &RunResult,
    original: &str,
    mode: FormatMode,
) -> Result<Formatted, LintError> {
    match (result.status, result.exit_code) {
        (Status::Ok, _) => {
            let formatted = result.stdout.clone();
            let changed = formatted != original;
            let diff = if changed {
                unified_diff(original, &formatted)
            } else {
                String::new()
            };
            Ok(Formatted {
                report: FormatReport {
                    mode: mode.name().into(),
                    changed,
                    diff,
                    error: None,
                },
                code: Some(formatted),
            })
        }
        (Status::RuntimeError, Some(2)) if result.stderr.contains("Failed to parse") => {
            Ok(Formatted {
                report: FormatReport {
                    mode: mode.name().into(),
                    changed: false,
                    diff: String::new(),
                    error: Some(
                        result
                            .stderr
                            .trim()
                            .trim_start_matches("error: ")
                            .to_owned(),
                    ),
                },
                code: None,
            })
        }
        _ => Err(failed("format", result)),
    }
}

#[derive(Deserialize)]
struct RuffLocation {
    row: u32,
    column: u32,
}

#[derive(Deserialize)]
struct RuffDiagnostic {
    code: Option<String>,
    message: String,
    location: RuffLocation,
    fix: Option<serde_json::Value>,
}

/// Turn a `ruff check` run into a report (exit 0: clean, 1: diagnostics).
pub fn parse_check(result: &RunResult, mode: LintMode) -> Result<LintReport, LintError> {
    let clean = matches!(
        (result.status, result.exit_code),
        (Status::Ok, _) | (Status::RuntimeError, Some(1))
    );
    if !clean {
        return Err(failed("check", result));
    }
    let raw: Vec<RuffDiagnostic> =
        serde_json::from_str(&result.stdout).map_err(LintError::Output)?;
    let diagnostics = raw
        .into_iter()
        .map(|d| LintDiagnostic {
            // ruff reports syntax errors without a rule code (older) or as `invalid-syntax`.
            code: d.code.unwrap_or_else(|| "invalid-syntax".into()),
            message: d.message,
            line: d.location.row,
            column: d.location.column,
            fix_available: d.fix.is_some_and(|f| !f.is_null()),
        })
        .collect();
    Ok(LintReport {
        mode: mode.name().into(),
        diagnostics,
    })
}

/// A unified diff (`--- main.py` / `+++ main.py (formatted)`, 3 lines of context).
pub fn unified_diff(original: &str, formatted: &str) -> String {
    similar::TextDiff::from_lines(original, formatted)
        .unified_diff()
        .context_radius(3)
        .header("main.py", "main.py (formatted)")
        .to_string()
}

/// One line per diagnostic: `main.py:3:7: F821 Undefined name `y``.
pub fn describe(report: &LintReport) -> String {
    report
        .diagnostics
        .iter()
        .map(|d| format!("main.py:{}:{}: {} {}", d.line, d.column, d.code, d.message))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::result::{Isolation, Timings};

    fn result(status: Status, exit: Option<i32>, stdout: &str, stderr: &str) -> RunResult {
        RunResult {
            status,
            exit_code: exit,
            signal: None,
            signal_name: None,
            stdout: stdout.into(),
            stderr: stderr.into(),
            stdout_base64: None,
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
        }
    }

    #[test]
    fn check_json_becomes_diagnostics() {
        let out = r#"[{"cell":null,"code":"F821","end_location":{"column":9,"row":3},
            "filename":"/work/main.py","fix":null,"location":{"column":8,"row":3},
            "message":"Undefined name `y`","name":"undefined-name","noqa_row":3},
           {"code":"F401","fix":{"applicability":"safe","edits":[],"message":"Remove"},
            "location":{"column":8,"row":1},"message":"`os` imported but unused"},
           {"code":null,"fix":null,"location":{"column":5,"row":1},"message":"Expected an identifier"}]"#;
        let r = parse_check(
            &result(Status::RuntimeError, Some(1), out, ""),
            LintMode::Warn,
        )
        .unwrap();
        assert_eq!(r.mode, "warn");
        assert_eq!(
            r.diagnostics,
            vec![
                LintDiagnostic {
                    code: "F821".into(),
                    message: "Undefined name `y`".into(),
                    line: 3,
                    column: 8,
                    fix_available: false
                },
                LintDiagnostic {
                    code: "F401".into(),
                    message: "`os` imported but unused".into(),
                    line: 1,
                    column: 8,
                    fix_available: true
                },
                LintDiagnostic {
                    code: "invalid-syntax".into(),
                    message: "Expected an identifier".into(),
                    line: 1,
                    column: 5,
                    fix_available: false
                },
            ]
        );
        assert!(describe(&r).starts_with("main.py:3:8: F821 Undefined name"));
        let clean = parse_check(&result(Status::Ok, Some(0), "[]", ""), LintMode::Error).unwrap();
        assert!(clean.diagnostics.is_empty());
    }

    #[test]
    fn check_failures_are_errors_not_empty_reports() {
        let crashed = parse_check(
            &result(Status::RuntimeError, Some(2), "", "error: boom"),
            LintMode::Warn,
        );
        assert!(
            matches!(crashed, Err(LintError::Failed { .. })),
            "{crashed:?}"
        );
        let garbage = parse_check(&result(Status::Ok, Some(0), "not json", ""), LintMode::Warn);
        assert!(matches!(garbage, Err(LintError::Output(_))), "{garbage:?}");
        let timeout = parse_check(&result(Status::Timeout, None, "", ""), LintMode::Warn);
        assert!(matches!(timeout, Err(LintError::Failed { .. })));
    }

    #[test]
    fn format_reports_a_diff_or_a_parse_error() {
        let f = parse_format(
            &result(Status::Ok, Some(0), "x = 1\n", ""),
            "x=1\n",
            FormatMode::Check,
        )
        .unwrap();
        assert!(f.report.changed);
        assert!(
            f.report.diff.contains("-x=1\n+x = 1\n"),
            "{}",
            f.report.diff
        );
        assert!(
            f.report
                .diff
                .starts_with("--- main.py\n+++ main.py (formatted)\n")
        );
        assert_eq!(f.code.as_deref(), Some("x = 1\n"));
        let same = parse_format(
            &result(Status::Ok, Some(0), "x = 1\n", ""),
            "x = 1\n",
            FormatMode::Apply,
        )
        .unwrap();
        assert!(!same.report.changed && same.report.diff.is_empty());
        let bad = parse_format(
            &result(
                Status::RuntimeError,
                Some(2),
                "",
                "error: Failed to parse main.py:1:5: Expected an identifier\n",
            ),
            "def (:\n",
            FormatMode::Apply,
        )
        .unwrap();
        assert_eq!(bad.code, None);
        assert_eq!(
            bad.report.error.as_deref(),
            Some("Failed to parse main.py:1:5: Expected an identifier")
        );
    }

    #[test]
    fn an_explicit_ruff_wins_and_the_toolchain_comes_before_path() {
        let dir = tempfile::tempdir().unwrap();
        let explicit = dir.path().join("ruff");
        std::fs::write(&explicit, b"").unwrap();
        let mut asked = 0;
        let found = Ruff::locate_with(Some(&explicit), &mut || {
            asked += 1;
            Ok(Some(Ruff::at("/toolchain/ruff")))
        })
        .unwrap();
        assert_eq!(found.binary(), explicit);
        assert_eq!(asked, 0, "the toolchain is not even asked");
        let missing = Ruff::locate_with(Some(&dir.path().join("nope")), &mut || {
            Ok(Some(Ruff::at("/toolchain/ruff")))
        })
        .unwrap_err();
        assert!(missing.to_string().contains("nope"), "{missing}");
        if std::env::var_os("KAKOI_RUFF").is_none() {
            let found =
                Ruff::locate_with(None, &mut || Ok(Some(Ruff::at("/toolchain/ruff")))).unwrap();
            assert_eq!(found.binary(), Path::new("/toolchain/ruff"));
        }
    }

    #[test]
    fn a_nix_toolchain_ruff_gets_its_closure_bound() {
        let ruff = Ruff {
            binary: "/nix/store/aaa-ruff/bin/ruff".into(),
            binds: vec!["/nix/store/aaa-ruff".into(), "/nix/store/bbb-glibc".into()],
        };
        let spec = ruff.format_spec(b"x=1\n");
        let binds: Vec<(&Path, &Path)> = spec
            .binds_ro
            .iter()
            .map(|b| (b.host.as_path(), b.sandbox.as_path()))
            .collect();
        assert_eq!(
            binds,
            [
                (
                    Path::new("/nix/store/aaa-ruff/bin/ruff"),
                    Path::new(RUFF_SANDBOX_PATH)
                ),
                (
                    Path::new("/nix/store/aaa-ruff"),
                    Path::new("/nix/store/aaa-ruff")
                ),
                (
                    Path::new("/nix/store/bbb-glibc"),
                    Path::new("/nix/store/bbb-glibc")
                ),
            ]
        );
    }

    #[test]
    fn specs_pin_the_configuration_and_bind_ruff_read_only() {
        let ruff = Ruff::at("/opt/ruff/bin/ruff");
        let spec = ruff.check_spec(b"print(1)\n");
        let argv: Vec<String> = spec
            .argv
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(argv[0], RUFF_SANDBOX_PATH);
        for pinned in ["--isolated", "--no-cache", RUFF_SELECT, RUFF_TARGET, "json"] {
            assert!(
                argv.iter().any(|a| a == pinned),
                "{pinned} missing: {argv:?}"
            );
        }
        assert_eq!(spec.binds_ro[0].host, Path::new("/opt/ruff/bin/ruff"));
        assert!(spec.binds_rw.is_empty());
        assert_eq!(spec.stdin, Some(Source::Bytes(b"print(1)\n".to_vec())));
        assert_eq!(spec.network, crate::spec::Network::None);
    }
}
