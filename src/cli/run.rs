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
        spec.files.insert(
            0,
            InputFile {
                source: Source::Path(self.main.clone()),
                dest: "main.py".into(),
            },
        );
        let Some(requirements) = &self.requirements else {
            return self.flags.run_and_report(spec);
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
