//! `kakoi __launch` (hidden): the single-threaded launcher the HTTP manager spawns. It is not
//! meant to be run by hand; see `kakoi::server::worker`.

use anyhow::Context as _;
use clap::Args;

use crate::server::worker::{self, WorkerSettings};

/// Options of `kakoi __launch`.
#[derive(Debug, Args)]
pub struct LaunchArgs {
    /// The worker settings, as JSON (written by the manager).
    #[arg(long, value_name = "JSON")]
    pub settings: String,
}

impl LaunchArgs {
    /// Serve frames on stdin/stdout until stdin ends.
    pub fn execute(self) -> anyhow::Result<i32> {
        let settings: WorkerSettings =
            serde_json::from_str(&self.settings).context("invalid --settings JSON")?;
        Ok(worker::serve(&settings))
    }
}
