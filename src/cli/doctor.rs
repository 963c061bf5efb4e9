//! `kakoi doctor`: what this host supports and which isolation layers a run gets here.
//!
//! The detection lives in [`crate::host`]; this module only renders it.

use std::io::Write;

use anyhow::Context;
use clap::Args;

use crate::host::{Check, HostReport, Layer, Status};

/// Options of `kakoi doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Opt in to `favordynmods` (as root): mount kakoi's own named cgroup v1 hierarchy with
    /// it, so attaching runs to v1 cgroups stops waiting for an RCU grace period. Host-wide,
    /// and on 6.18 permanent until reboot; see the `cgroup v1 attach latency` check.
    #[arg(long)]
    pub enable_favordynmods: bool,
}

impl DoctorArgs {
    /// Run the checks and print them; exit code 0 if a run can start here, 1 otherwise.
    pub fn execute(self) -> anyhow::Result<i32> {
        if self.enable_favordynmods {
            use crate::sandbox::cgroup::{FavorDynmods, enable_favordynmods};
            let runtime = std::path::Path::new("/run/kakoi");
            match enable_favordynmods(runtime).context("cannot enable favordynmods")? {
                FavorDynmods::AlreadyOn(at) => eprintln!(
                    "kakoi: favordynmods is already on ({} has it); nothing done",
                    at.display()
                ),
                FavorDynmods::Enabled(at) => eprintln!(
                    "kakoi: mounted {} with favordynmods: cgroup migrations no longer wait for an RCU grace period, host-wide, until reboot",
                    at.display()
                ),
            }
        }
        let report = HostReport::detect_host();
        let mut out = std::io::stdout().lock();
        if self.json {
            serde_json::to_writer(&mut out, &report).context("cannot serialize the host report")?;
            writeln!(out)?;
        } else {
            out.write_all(render(&report).as_bytes())?;
        }
        out.flush()?;
        Ok(if report.run_can_start { 0 } else { 1 })
    }
}

/// The label printed in front of a check.
fn label(status: Status) -> &'static str {
    match status {
        Status::Ok => "ok",
        Status::Warn => "warn",
        Status::Fail => "FAIL",
        Status::Info => "info",
    }
}

fn render_check(check: &Check, text: &mut String) {
    text.push_str(&format!(
        "{:<4}  {}: {}\n",
        label(check.status),
        check.name,
        check.detail
    ));
    if let Some(remedy) = &check.remedy {
        let mut lines = remedy.lines();
        if let Some(first) = lines.next() {
            text.push_str(&format!("  remedy: {first}\n"));
        }
        for line in lines {
            text.push_str(&format!("          {line}\n"));
        }
    }
}

fn render_layer(layer: &Layer, text: &mut String) {
    let mark = if layer.available { "yes" } else { "no" };
    text.push_str(&format!("  {mark:<3}  {}: {}\n", layer.name, layer.detail));
}

/// The human-readable report: one line per check, remedies, then the layer summary.
fn render(report: &HostReport) -> String {
    let mut text = String::new();
    for check in &report.checks {
        render_check(check, &mut text);
    }
    text.push_str("\nisolation layers a run gets here:\n");
    for layer in &report.layers {
        render_layer(layer, &mut text);
    }
    text.push('\n');
    text.push_str(if report.run_can_start {
        "a run can start here\n"
    } else {
        "a run cannot start here: user namespaces are not usable (see FAIL lines above)\n"
    });
    text
}
