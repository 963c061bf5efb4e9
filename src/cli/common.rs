//! Flags shared by `kakoi exec` and `kakoi run`, and the code that prints a result.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::Args;

use crate::result::{RunResult, Status};
use crate::sandbox::landlock::LandlockMode;
use crate::sandbox::{CgroupMode, RunOptions, Sandbox, SandboxConfig, SeccompSetting};
use crate::spec::{Bind, InputFile, Limits, Network, RunSpec, Source};

/// Limits, inputs and output options of a run.
#[derive(Debug, Args)]
pub struct RunFlags {
    /// Wall-clock timeout in seconds (the whole process tree is killed).
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<f64>,
    /// CPU time limit per process in seconds.
    #[arg(long, value_name = "SECONDS")]
    pub cpu_time: Option<f64>,
    /// Memory limit, e.g. 256M, 1G (swap is always 0).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub memory: Option<u64>,
    /// Maximum number of processes and threads.
    #[arg(long)]
    pub pids: Option<u64>,
    /// CPU bandwidth in cores, e.g. 0.5.
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Cap per output stream, e.g. 1M; the rest is dropped and flagged.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub output_limit: Option<u64>,
    /// Size of /tmp, the workdir and /dev/shm, e.g. 64M.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub tmp_size: Option<u64>,
    /// Set an environment variable inside the sandbox.
    #[arg(long = "env", value_name = "KEY=VAL")]
    pub env: Vec<String>,
    /// File to use as standard input (default: /dev/null).
    #[arg(long, value_name = "FILE")]
    pub stdin: Option<PathBuf>,
    /// Copy a file into the workdir (/work), optionally under another relative name.
    #[arg(long = "file", value_name = "SRC[:DEST]")]
    pub files: Vec<String>,
    /// Bind a host path read-only into the sandbox.
    #[arg(long = "bind-ro", value_name = "HOST:SANDBOX")]
    pub binds_ro: Vec<String>,
    /// Bind a host path writable into the sandbox (the payload writes there as uid 1000's
    /// host id; Landlock allows writes beneath it).
    #[arg(long = "bind-rw", value_name = "HOST:SANDBOX")]
    pub binds_rw: Vec<String>,
    /// Network: `none` (a namespace with only lo) or `host` (needs --i-understand-host-network).
    #[arg(long, value_enum, default_value = "none")]
    pub network: NetworkArg,
    /// Confirm that --network host gives the payload the host's network.
    #[arg(long)]
    pub i_understand_host_network: bool,
    /// Do not use cgroups (limits fall back to rlimits).
    #[arg(long)]
    pub no_cgroup: bool,
    /// Use this seccomp policy (seccompiler JSON) instead of the built-in allowlist.
    #[arg(long, value_name = "PATH", conflicts_with = "no_seccomp")]
    pub seccomp: Option<PathBuf>,
    /// Run without a seccomp filter (reported in `isolation`).
    #[arg(long)]
    pub no_seccomp: bool,
    /// Landlock enforcement: `strict` fails the run if a supported layer cannot be enforced.
    #[arg(long, value_enum, default_value = "strict")]
    pub landlock: LandlockArg,
    /// Print exactly one JSON result object instead of passing output through.
    #[arg(long)]
    pub json: bool,
}

/// `--landlock` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LandlockArg {
    /// Every Landlock feature the kernel supports is required.
    Strict,
    /// Apply what the kernel supports, report the rest.
    BestEffort,
    /// No Landlock.
    Off,
}

/// `--network` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum NetworkArg {
    /// New network namespace with only loopback.
    None,
    /// The host's network (no isolation).
    Host,
}

/// Parse `123`, `64K`, `256M`, `1G`, `1.5G` (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M') => (&s[..s.len() - 1], 1 << 20),
        Some('G') => (&s[..s.len() - 1], 1 << 30),
        Some('T') => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    let value: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size (examples: 1048576, 64K, 256M, 1G)"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!("{s:?} is not a size"));
    }
    Ok((value * mult as f64) as u64)
}

impl RunFlags {
    /// Build the request for `argv` from these flags.
    pub fn to_spec(&self, argv: Vec<std::ffi::OsString>) -> anyhow::Result<RunSpec> {
        let mut env = Vec::new();
        for kv in &self.env {
            let (k, v) = kv
                .split_once('=')
                .with_context(|| format!("--env {kv:?}: expected KEY=VAL"))?;
            env.push((k.to_owned(), v.to_owned()));
        }
        let mut files = Vec::new();
        for f in &self.files {
            let (src, dest) = match f.split_once(':') {
                Some((s, d)) => (PathBuf::from(s), PathBuf::from(d)),
                None => {
                    let src = PathBuf::from(f);
                    let name = src
                        .file_name()
                        .with_context(|| format!("--file {f:?}: no file name"))?
                        .into();
                    (src, name)
                }
            };
            files.push(InputFile {
                source: Source::Path(src),
                dest,
            });
        }
        let parse_binds = |flag: &str, list: &[String]| -> anyhow::Result<Vec<Bind>> {
            list.iter()
                .map(|b| {
                    let (host, sandbox) = b
                        .split_once(':')
                        .with_context(|| format!("--{flag} {b:?}: expected HOST:SANDBOX"))?;
                    Ok(Bind {
                        host: host.into(),
                        sandbox: sandbox.into(),
                    })
                })
                .collect()
        };
        let binds_ro = parse_binds("bind-ro", &self.binds_ro)?;
        let binds_rw = parse_binds("bind-rw", &self.binds_rw)?;
        let network = match self.network {
            NetworkArg::None => Network::None,
            NetworkArg::Host => {
                if !self.i_understand_host_network {
                    bail!(
                        "--network host gives the payload the host's network (loopback services, metadata endpoints, the internet); add --i-understand-host-network to confirm"
                    );
                }
                eprintln!("kakoi: WARNING: --network host: the payload shares the host's network");
                Network::Host
            }
        };
        Ok(RunSpec {
            argv,
            env,
            limits: Limits {
                timeout: self.timeout,
                cpu_time: self.cpu_time,
                memory: self.memory,
                pids: self.pids,
                cpus: self.cpus,
                output_limit: self.output_limit,
                tmp_size: self.tmp_size,
                nofile: None,
            },
            stdin: self.stdin.clone().map(Source::Path),
            files,
            binds_ro,
            binds_rw,
            network,
        })
    }

    /// Create a sandbox, run the request, print the result; returns the exit code.
    pub fn run_and_report(&self, spec: RunSpec) -> anyhow::Result<i32> {
        self.run_and_report_with(spec, |_| {})
    }

    /// [`RunFlags::run_and_report`], letting the caller add to the result before it is
    /// printed (lint and format reports).
    pub fn run_and_report_with(
        &self,
        spec: RunSpec,
        decorate: impl FnOnce(&mut RunResult),
    ) -> anyhow::Result<i32> {
        let config = SandboxConfig {
            cgroups: if self.no_cgroup {
                CgroupMode::Off
            } else {
                CgroupMode::Auto
            },
            seccomp: match (&self.seccomp, self.no_seccomp) {
                (_, true) => SeccompSetting::Disabled,
                (Some(path), false) => SeccompSetting::File(path.clone()),
                (None, false) => SeccompSetting::Default,
            },
            landlock: match self.landlock {
                LandlockArg::Strict => Some(LandlockMode::Strict),
                LandlockArg::BestEffort => Some(LandlockMode::BestEffort),
                LandlockArg::Off => None,
            },
            ..SandboxConfig::default()
        };
        let sandbox = Sandbox::new(config)?;
        let mut result = sandbox.run_with(
            &spec,
            RunOptions {
                passthrough: !self.json,
            },
        )?;
        decorate(&mut result);
        report(&result, self.json)
    }
}

/// Print a result: one JSON object, or a short line on stderr for what the output does not
/// say (setup errors, timeouts, limits). Returns the CLI exit code.
pub fn report(result: &RunResult, json: bool) -> anyhow::Result<i32> {
    if json {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer(&mut out, result)?;
        writeln!(out)?;
        return Ok(if result.status == Status::SetupError {
            125
        } else {
            0
        });
    }
    if result.isolation.cgroup.version == "none" && result.status != Status::SetupError {
        eprintln!(
            "kakoi: note: no cgroup ({}); memory and pids are limited by rlimits only",
            result
                .isolation
                .cgroup
                .reason
                .as_deref()
                .unwrap_or("unavailable")
        );
    }
    match result.status {
        Status::SetupError => {
            if let Some(e) = &result.error {
                eprintln!("kakoi: error: {}", e.message);
                if let Some(hint) = &e.hint {
                    eprintln!("  hint: {hint}");
                }
            }
        }
        Status::Ok | Status::RuntimeError => {}
        other => {
            let what = serde_json::to_value(other)?;
            eprintln!(
                "kakoi: {} (wall {:.0} ms{})",
                what.as_str().unwrap_or("?"),
                result.wall_ms,
                result
                    .signal_name
                    .as_deref()
                    .map(|s| format!(", {s}"))
                    .unwrap_or_default()
            );
        }
    }
    if result.stdout_truncated || result.stderr_truncated {
        eprintln!("kakoi: output over the limit was dropped");
    }
    Ok(result.cli_exit_code())
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("256m"), Ok(256 << 20));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("-1M").is_err());
    }
}
