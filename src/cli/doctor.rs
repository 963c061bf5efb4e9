//! `kakoi doctor`: what this host supports and which isolation layers a run gets here.
//!
//! The detection lives in [`crate::host`]; this module only renders it.

use std::io::Write;

use anyhow::Context;
use clap::Args;

use crate::env::{EnvStore, StoreConfig, ToolchainMode, toolchain};
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
    /// Data directory whose toolchain and envs to report (as for `kakoi env`).
    #[arg(long, value_name = "DIR", env = "KAKOI_DATA_DIR")]
    pub data_dir: Option<std::path::PathBuf>,
    /// Toolchain to report (as for `kakoi env`).
    #[arg(long, value_enum, default_value = "auto", env = "KAKOI_TOOLCHAIN")]
    pub toolchain: ToolchainMode,
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
        let mut report = HostReport::detect_host();
        report
            .checks
            .extend(toolchain_checks(self.data_dir.clone(), self.toolchain));
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

fn check(name: &str, status: Status, detail: String, remedy: Option<String>) -> Check {
    Check {
        name: name.into(),
        status,
        detail,
        remedy,
    }
}

/// The environment lines: toolchain identity (what every env digest includes), whether
/// uv/ruff are installed yet, and the env store. Nothing is downloaded or built.
fn toolchain_checks(data_dir: Option<std::path::PathBuf>, mode: ToolchainMode) -> Vec<Check> {
    // Doctor changes nothing: a data directory that does not exist yet is reported as such.
    let resolved = crate::env::datadir::resolve(data_dir.as_deref());
    if let Ok(path) = &resolved
        && !path.exists()
    {
        let status = toolchain::status(&path.join("toolchain"), mode);
        return vec![
            check(
                "toolchain",
                if status.problem.is_some() {
                    Status::Warn
                } else {
                    Status::Info
                },
                super::env::describe_status(&status),
                status
                    .problem
                    .as_ref()
                    .map(|_| "install python3 (apt-get install python3)".to_string()),
            ),
            check(
                "env store",
                Status::Info,
                format!("{} (not created yet)", path.display()),
                None,
            ),
        ];
    }
    let store = match EnvStore::open(StoreConfig {
        data_dir,
        toolchain: mode,
        ..StoreConfig::default()
    }) {
        Ok(store) => store,
        Err(e) => {
            return vec![check(
                "env store",
                Status::Warn,
                crate::env::error_chain(&e),
                e.hint(),
            )];
        }
    };
    let status = toolchain::status(&store.toolchain_dir(), mode);
    let mut checks = Vec::new();
    let nix = crate::env::nix::find_in_path("nix");
    checks.push(check(
        "nix",
        Status::Info,
        match (&nix, status.kind) {
            (Some(path), toolchain::ToolchainKind::Nix) => {
                format!("{} (envs use the nix-env/ closure)", path.display())
            }
            (Some(path), _) => format!("{} (not used: --toolchain host)", path.display()),
            (None, _) => "not on PATH; envs use the host's python3 with pinned uv and ruff".into(),
        },
        None,
    ));
    let (state, remedy) = if status.problem.is_some() {
        (
            Status::Warn,
            Some("install python3 (apt-get install python3)".to_string()),
        )
    } else if status.ready {
        (Status::Ok, None)
    } else {
        (Status::Info, None)
    };
    checks.push(check(
        "toolchain",
        state,
        super::env::describe_status(&status),
        remedy,
    ));
    if let Some(ruff) = &status.ruff {
        checks.push(check(
            "ruff",
            Status::Info,
            ruff.display().to_string(),
            None,
        ));
    }
    let envs = store.list().unwrap_or_default();
    let bytes: u64 = envs.iter().map(|e| e.size_bytes).sum();
    checks.push(check(
        "env store",
        Status::Info,
        format!(
            "{}: {} environment(s), {:.1} MiB",
            store.envs_dir().display(),
            envs.len(),
            bytes as f64 / (1u64 << 20) as f64
        ),
        None,
    ));
    checks
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
