//! `kakoi doctor` (placeholder until the host checks land).

use clap::Args;

/// Options of `kakoi doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

impl DoctorArgs {
    /// Run the checks and print them.
    pub fn execute(self) -> anyhow::Result<i32> {
        anyhow::bail!("doctor is not implemented yet")
    }
}
