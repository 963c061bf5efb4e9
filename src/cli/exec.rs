//! `kakoi exec -- CMD [ARGS...]`: run any command in the sandbox.

use std::ffi::OsString;

use clap::Args;

use super::common::RunFlags;

/// Options of `kakoi exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Limits, inputs and output.
    #[command(flatten)]
    pub flags: RunFlags,
    /// The command and its arguments (after `--`).
    #[arg(required = true, trailing_var_arg = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

impl ExecArgs {
    /// Run the command and report.
    pub fn execute(self) -> anyhow::Result<i32> {
        let spec = self.flags.to_spec(self.command)?;
        self.flags.run_and_report(spec)
    }
}
