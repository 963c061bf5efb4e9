//! Flags shared by `kakoi exec` and `kakoi run`, and the code that prints a result.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::Args;

use crate::backend::docker::{DockerBackend, DockerConfig};
use crate::result::{RunResult, Status};
use crate::sandbox::landlock::LandlockMode;
use crate::sandbox::{CgroupMode, RunOptions, Sandbox, SandboxConfig, SeccompSetting};
use crate::spec::{Bind, Collect, InputFile, Limits, Network, RunSpec, Source};

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
    /// Size of the writable space (/tmp, the workdir and /dev/shm together, one tmpfs), e.g. 64M.
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
    /// Slots of pre-made network namespaces a root launcher may use (0: create a fresh one
    /// per run; default: twice the CPUs, at least 4).
    #[arg(long, value_name = "N")]
    pub netns_pool: Option<usize>,
    /// Use this seccomp policy (seccompiler JSON) instead of the built-in allowlist.
    #[arg(long, value_name = "PATH", conflicts_with = "no_seccomp")]
    pub seccomp: Option<PathBuf>,
    /// Run without a seccomp filter (reported in `isolation`).
    #[arg(long)]
    pub no_seccomp: bool,
    /// Landlock enforcement: `strict` fails the run if a supported layer cannot be enforced.
    #[arg(long, value_enum, default_value = "strict")]
    pub landlock: LandlockArg,
    /// Return the files the payload leaves under DIR (relative to the workdir, e.g. `out`)
    /// in the result's `files` (base64; 64 entries and 10 MiB at most; symlinks and special
    /// files are listed as skipped, never followed).
    #[arg(long, value_name = "DIR")]
    pub collect: Option<PathBuf>,
    /// Print exactly one JSON result object instead of passing output through.
    #[arg(long)]
    pub json: bool,
    /// Where the request runs: `native` (kakoi's sandbox) or `docker` (a container, for
    /// comparison; see `kakoi docker build-image`).
    #[arg(long, value_enum, default_value = "native", env = "KAKOI_BACKEND")]
    pub backend: BackendArg,
    /// Worker image of `--backend docker`.
    #[arg(long, value_name = "IMAGE", env = "KAKOI_DOCKER_IMAGE", default_value = crate::backend::docker::DEFAULT_IMAGE)]
    pub docker_image: String,
}

/// `--backend` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendArg {
    /// kakoi's own sandbox (namespaces, cgroups, seccomp, Landlock).
    Native,
    /// A Docker container through the Engine API.
    Docker,
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
            collect: self.collect.as_ref().map(|dir| Collect {
                dir: dir.clone(),
                ..Collect::default()
            }),
        })
    }

    /// Create a sandbox, run the request, print the result; returns the exit code.
    pub fn run_and_report(&self, spec: RunSpec) -> anyhow::Result<i32> {
        self.run_then_report(&spec, |_| {})
    }

    /// Create a sandbox, run the request, let the caller complete the result (for example
    /// with the environment it used), print it; returns the exit code. SIGINT/SIGTERM/SIGHUP
    /// cancel the run (the sandbox is killed and cleaned up like any other run) instead of
    /// killing kakoi with the sandbox still being torn down; the CLI then exits 128 + signal.
    pub fn run_then_report(
        &self,
        spec: &RunSpec,
        complete: impl FnOnce(&mut RunResult),
    ) -> anyhow::Result<i32> {
        let (mut result, cancelled_by) = match self.backend {
            BackendArg::Docker => self.run_docker(spec)?,
            BackendArg::Native => {
                let signals = TerminationSignals::block()?;
                let sandbox = Sandbox::new(self.sandbox_config())?;
                let result = sandbox.run_with(
                    spec,
                    RunOptions {
                        passthrough: !self.json,
                        cancel: Some(signals.as_raw_fd()),
                    },
                )?;
                (result, signals.received())
            }
        };
        complete(&mut result);
        let code = report(&result, self.json)?;
        // Cancelled by SIGINT/SIGTERM/SIGHUP: exit 128 + the signal, like a killed program.
        Ok(cancelled_by.map_or(code, |signal| 128 + signal))
    }

    /// The sandbox settings these flags describe.
    pub fn sandbox_config(&self) -> SandboxConfig {
        SandboxConfig {
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
            netns_pool: self.netns_pool,
            ..SandboxConfig::default()
        }
    }
}

/// SIGINT, SIGTERM and SIGHUP, blocked and read from a signalfd, so a run in progress is
/// cancelled cleanly; the CLI then exits with 128 + the signal (130, 143, 129).
pub struct TerminationSignals {
    fd: nix::sys::signalfd::SignalFd,
}

impl TerminationSignals {
    const SIGNALS: [nix::sys::signal::Signal; 3] = [
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGHUP,
    ];

    /// Block the signals in this (single-threaded) process and open a signalfd for them.
    pub fn block() -> anyhow::Result<Self> {
        use nix::sys::signalfd::{SfdFlags, SignalFd};
        let mut mask = nix::sys::signal::SigSet::empty();
        for signal in Self::SIGNALS {
            mask.add(signal);
        }
        mask.thread_block()
            .context("cannot block termination signals")?;
        let fd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            .context("cannot create a signalfd")?;
        Ok(TerminationSignals { fd })
    }

    /// The fd to pass as [`RunOptions::cancel`].
    pub fn as_raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.fd)
    }

    /// The first signal received so far, if any.
    pub fn received(&self) -> Option<i32> {
        match self.fd.read_signal() {
            Ok(Some(info)) => Some(info.ssi_signo as i32),
            _ => None,
        }
    }
}

impl RunFlags {
    /// `--backend docker`: refuse native-only flags, run in a container, print the result.
    fn run_docker(&self, spec: &RunSpec) -> anyhow::Result<(RunResult, Option<i32>)> {
        let native_only = [
            ("--no-cgroup", self.no_cgroup),
            ("--seccomp", self.seccomp.is_some()),
            ("--no-seccomp", self.no_seccomp),
            ("--landlock", !matches!(self.landlock, LandlockArg::Strict)),
        ];
        if let Some((flag, _)) = native_only.iter().find(|(_, given)| *given) {
            bail!(
                "{flag} applies to the native sandbox only; --backend docker always uses Docker's default seccomp profile and no Landlock"
            );
        }
        let backend = DockerBackend::new(DockerConfig {
            image: self.docker_image.clone(),
            cancel_on_signals: true,
            ..DockerConfig::default()
        })?;
        let options = RunOptions {
            passthrough: !self.json,
            ..RunOptions::default()
        };
        Ok(backend.run_reporting_signal(spec, options)?)
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
    if !result.files.is_empty() {
        let returned = result.files.iter().filter(|f| f.skipped.is_none()).count();
        eprintln!(
            "kakoi: {returned} of {} collected files returned (their content is in --json output)",
            result.files.len()
        );
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
