//! `kakoi run main.py [ARGS...]`: run a Python file with the host's python3, or with the
//! environment of `-r requirements.txt` (built on first use, then reused from the store).

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context as _, bail};
use clap::Args;

use super::common::RunFlags;
use super::env::{CliProgress, EnvFlags, LazySandbox, read_requirements, report_env_error};
use crate::env::{EnvRequest, EnvStore};
use crate::lint::{FormatMode, LintMode, Ruff};
use crate::sandbox::{Sandbox, SandboxConfig};
use crate::spec::{InputFile, Source, WORKDIR};

/// The interpreter `kakoi run` uses without `-r`.
pub const HOST_PYTHON: &str = "/usr/bin/python3";

/// Options of `kakoi run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Limits, inputs and output.
    #[command(flatten)]
    pub flags: RunFlags,
    /// Run with the environment of this requirements file (built once, then reused;
    /// mounted read-only, no network during the run).
    #[arg(short = 'r', long = "requirements", value_name = "FILE")]
    pub requirements: Option<PathBuf>,
    /// Environment store, toolchain and resolution options (with -r).
    #[command(flatten)]
    pub env: EnvFlags,
    /// Run `ruff format` (in a sandbox) first: `check` reports a diff, `apply` runs the
    /// formatted program. ruff comes from $KAKOI_RUFF, else the env toolchain's pinned ruff
    /// (downloaded on first use into the data directory), else PATH.
    #[arg(long, value_enum, num_args = 0..=1, require_equals = true, default_missing_value = "check")]
    pub format: Option<FormatMode>,
    /// Run `ruff check` (in a sandbox, pinned rules E4,E7,E9,F) first: `warn` reports,
    /// `error` refuses to run a program with diagnostics.
    #[arg(long, value_enum, num_args = 0..=1, require_equals = true, default_missing_value = "warn")]
    pub lint: Option<LintMode>,
    /// The Python file; it is copied into the workdir as main.py.
    #[arg(value_name = "MAIN.PY")]
    pub main: PathBuf,
    /// Arguments passed to the program.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    pub args: Vec<OsString>,
}

impl RunArgs {
    /// Run the file and report.
    pub fn execute(self) -> anyhow::Result<i32> {
        let meta = std::fs::metadata(&self.main)
            .with_context(|| format!("cannot read {}", self.main.display()))?;
        if !meta.is_file() {
            bail!("{} is not a file", self.main.display());
        }
        if self.requirements.is_none() && !std::path::Path::new(HOST_PYTHON).exists() {
            bail!("{HOST_PYTHON} does not exist; install python3 (apt-get install python3)");
        }
        let mut argv: Vec<OsString> = vec![HOST_PYTHON.into(), format!("{WORKDIR}/main.py").into()];
        argv.extend(self.args);
        let mut spec = self.flags.to_spec(argv)?;
        if spec.files.iter().any(|f| f.dest.as_os_str() == "main.py") {
            bail!("--file may not replace main.py");
        }
        let format = self.format.unwrap_or_default();
        let lint = self.lint.unwrap_or_default();
        let (main_source, format_report, lint_report) = if format == FormatMode::Off
            && lint == LintMode::Off
        {
            (Source::Path(self.main.clone()), None, None)
        } else {
            let code = std::fs::read_to_string(&self.main)
                .with_context(|| format!("cannot read {} as UTF-8 text", self.main.display()))?;
            let (code, format_report, lint_report) =
                ruff_pass(code, format, lint, self.flags.json, &self.env)?;
            (Source::Bytes(code.into_bytes()), format_report, lint_report)
        };
        spec.files.insert(
            0,
            InputFile {
                source: main_source,
                dest: "main.py".into(),
            },
        );
        let add_reports = |r: &mut crate::result::RunResult| {
            r.format = format_report;
            r.lint = lint_report;
        };
        let Some(requirements) = &self.requirements else {
            return self.flags.run_then_report(&spec, add_reports);
        };
        let started = Instant::now();
        let bytes = read_requirements(requirements)?;
        let mut progress = CliProgress::new(self.env.quiet);
        let prepared = (|| {
            let store = EnvStore::open(self.env.store_config())?;
            let request = EnvRequest::new(&bytes, self.env.resolve_options())?;
            let builder =
                LazySandbox::new(EnvStore::build_sandbox_config(self.flags.sandbox_config()));
            store.ensure(&request, &builder, &mut progress)
        })();
        let env_ms = ms_since(started);
        let env = match prepared {
            Ok(env) => env,
            Err(e) => return report_env_error(&e, env_ms, self.flags.json, &progress),
        };
        drop(progress);
        env.apply(&mut spec);
        spec.argv[0] = env.python().into();
        // The env stays in use (shared lock) until the run is over.
        let usage = env.usage();
        let code = self.flags.run_then_report(&spec, |result| {
            add_reports(result);
            result.env = Some(usage);
            result.timings.env_ms = env_ms;
        })?;
        drop(env);
        Ok(code)
    }
}

fn ms_since(t: Instant) -> f64 {
    (t.elapsed().as_secs_f64() * 1e6).round() / 1000.0
}

/// `ruff format` then `ruff check`, each in a default sandbox (ruff parses untrusted input).
fn ruff_pass(
    code: String,
    format: FormatMode,
    lint: LintMode,
    json: bool,
    env: &EnvFlags,
) -> anyhow::Result<(
    String,
    Option<crate::result::FormatReport>,
    Option<crate::result::LintReport>,
)> {
    // The same lookup as the server's: KAKOI_RUFF, the toolchain's pinned ruff, PATH.
    let ruff = Ruff::locate_with(None, &mut || {
        let mut progress = CliProgress::new(env.quiet);
        EnvStore::open(env.store_config())
            .and_then(|store| store.toolchain(&mut progress))
            .map(|t| Some(Ruff::from_toolchain(&t)))
            .map_err(|e| crate::env::error_chain(&e))
    })?;
    let sandbox = Sandbox::new(SandboxConfig::default())?;
    let mut code = code;
    let mut format_report = None;
    if format != FormatMode::Off {
        let formatted = ruff.format(&sandbox, &code, format)?;
        if !json {
            if let Some(e) = &formatted.report.error {
                eprintln!("kakoi: format: {e}");
            } else if formatted.report.changed {
                eprint!(
                    "kakoi: format: main.py would be reformatted\n{}",
                    formatted.report.diff
                );
            }
        }
        if format == FormatMode::Apply
            && let Some(new_code) = formatted.code.clone()
        {
            code = new_code;
        }
        format_report = Some(formatted.report);
    }
    let mut lint_report = None;
    if lint != LintMode::Off {
        let report = ruff.check(&sandbox, &code, lint)?;
        if lint == LintMode::Error && !report.diagnostics.is_empty() {
            bail!(
                "lint=error: ruff reported {} diagnostic(s); the program was not run\n{}",
                report.diagnostics.len(),
                crate::lint::describe(&report)
            );
        }
        if !json && !report.diagnostics.is_empty() {
            eprintln!("{}", crate::lint::describe(&report));
        }
        lint_report = Some(report);
    }
    Ok((code, format_report, lint_report))
}
