//! `kakoi run main.py [ARGS...]`: run a Python file with the host's python3.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::Args;

use super::common::RunFlags;
use crate::spec::{InputFile, Source, WORKDIR};

/// The interpreter used by `kakoi run` until environments exist.
pub const HOST_PYTHON: &str = "/usr/bin/python3";

/// Options of `kakoi run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Limits, inputs and output.
    #[command(flatten)]
    pub flags: RunFlags,
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
        if !std::path::Path::new(HOST_PYTHON).exists() {
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
        self.flags.run_and_report(spec)
    }
}
