//! The launcher side of [`super::protocol`]: `kakoi __launch`, a long-lived single-threaded
//! process that owns one [`Sandbox`] and runs one [`RunSpec`](crate::spec::RunSpec) at a time.
//!
//! Why a separate process: `Sandbox::run` clones, and a multi-threaded (tokio) process must
//! never fork and continue running Rust code in the child. The manager only fork+execs this
//! program; every clone happens here, in a process with exactly one thread.

use std::io::BufWriter;
use std::os::fd::{AsFd as _, AsRawFd as _};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::protocol::{self, FromWorker, ToWorker, WorkerInfo};
use crate::sandbox::landlock::LandlockMode;
use crate::sandbox::{CgroupMode, RunOptions, Sandbox, SandboxConfig, SeccompSetting};

/// How workers create their sandbox; the manager passes it as one JSON argument.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    /// cgroup use: `auto`, `required` or `off`.
    pub cgroups: CgroupSetting,
    /// seccomp policy: `default`, `off`, or a policy file.
    pub seccomp: SeccompChoice,
    /// Landlock: `strict`, `best-effort` or `off`.
    pub landlock: LandlockChoice,
    /// Runtime directory (default: the sandbox's default).
    pub runtime_dir: Option<PathBuf>,
    /// Host uid/gid the sandbox user maps to when root (default: per launcher). Environment
    /// builds use one fixed id so every build can write the shared uv cache.
    #[serde(default)]
    pub host_id: Option<u32>,
    /// pid of the manager; a worker whose parent is another process exits at once.
    pub manager_pid: u32,
}

/// cgroup setting of [`WorkerSettings`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CgroupSetting {
    /// cgroups when writable, rlimits otherwise (reported in every result).
    #[default]
    Auto,
    /// Fail when no cgroup is usable.
    Required,
    /// rlimits only.
    Off,
}

/// seccomp setting of [`WorkerSettings`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SeccompChoice {
    /// The built-in allowlist.
    #[default]
    Default,
    /// No filter.
    Off,
    /// A seccompiler JSON policy file.
    File(PathBuf),
}

/// Landlock setting of [`WorkerSettings`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LandlockChoice {
    /// Every supported feature is required.
    #[default]
    Strict,
    /// Apply what the kernel supports.
    BestEffort,
    /// No Landlock.
    Off,
}

impl WorkerSettings {
    /// The sandbox configuration these settings describe.
    pub fn sandbox_config(&self) -> SandboxConfig {
        SandboxConfig {
            runtime_dir: self.runtime_dir.clone(),
            cgroups: match self.cgroups {
                CgroupSetting::Auto => CgroupMode::Auto,
                CgroupSetting::Required => CgroupMode::Required,
                CgroupSetting::Off => CgroupMode::Off,
            },
            seccomp: match &self.seccomp {
                SeccompChoice::Default => SeccompSetting::Default,
                SeccompChoice::Off => SeccompSetting::Disabled,
                SeccompChoice::File(p) => SeccompSetting::File(p.clone()),
            },
            landlock: match self.landlock {
                LandlockChoice::Strict => Some(LandlockMode::Strict),
                LandlockChoice::BestEffort => Some(LandlockMode::BestEffort),
                LandlockChoice::Off => None,
            },
            host_id: self.host_id,
            ..SandboxConfig::default()
        }
    }
}

/// `error: cause: cause` on one line.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// Serve frames on stdin/stdout until stdin ends. Returns the process exit code.
///
/// Must run in a single-threaded process (it clones sandboxes).
pub fn serve(settings: &WorkerSettings) -> i32 {
    // Die with the manager. The kernel sends PDEATHSIG when the thread that forked us exits;
    // the manager spawns workers from one thread that lives as long as the process.
    if let Err(e) = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL) {
        eprintln!("kakoi __launch: cannot set PDEATHSIG: {e}");
        return 1;
    }
    // The manager may have died before PDEATHSIG was armed.
    if nix::unistd::getppid().as_raw() as u32 != settings.manager_pid {
        return 1;
    }
    // Frames are read unbuffered, exactly one at a time: bytes after a `run` frame (a
    // `cancel`) must stay in the pipe, where the sandbox can see them arrive.
    let mut input = match std::io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => std::fs::File::from(fd),
        Err(e) => {
            eprintln!("kakoi __launch: cannot use stdin: {e}");
            return 1;
        }
    };
    let stdout = std::io::stdout().lock();
    let mut output = BufWriter::new(stdout);

    let sandbox = match Sandbox::new(settings.sandbox_config()) {
        Ok(s) => s,
        Err(e) => {
            let message = error_chain(&e);
            let _ = protocol::write_frame(&mut output, &FromWorker::Fatal { message });
            return 1;
        }
    };
    let info = WorkerInfo {
        cgroup: sandbox
            .cgroup_driver()
            .map(|d| match d.version() {
                crate::sandbox::cgroup::CgroupVersion::V1 => "v1".to_owned(),
                crate::sandbox::cgroup::CgroupVersion::V2 => "v2".to_owned(),
            })
            .unwrap_or_else(|| "none".to_owned()),
        cgroup_controllers: sandbox
            .cgroup_driver()
            .map(|d| d.controllers())
            .unwrap_or_default(),
        host_uid: sandbox.host_ids().0,
        host_gid: sandbox.host_ids().1,
        // Every run watches stdin (`RunOptions::cancel`): a `cancel` frame arriving, or EOF
        // from a dead manager, ends the run, and this launcher stays in service.
        cancel_frames: true,
    };
    let ready = FromWorker::Ready {
        pid: std::process::id(),
        info,
    };
    if protocol::write_frame(&mut output, &ready).is_err() {
        return 1;
    }
    loop {
        let frame = match protocol::read_frame::<_, ToWorker>(&mut input) {
            Ok(Some(frame)) => frame,
            Ok(None) => return 0,
            Err(e) => {
                eprintln!("kakoi __launch: {}", error_chain(&e));
                return 1;
            }
        };
        let answer = match frame {
            // The sandbox polls stdin while the payload runs: the next frame the manager
            // can send during a run is a `cancel` (it sends `run` frames only to an idle
            // launcher), so "stdin readable" means "cancel", and so does EOF. It is read
            // (and skipped) by the loop once the result is written.
            ToWorker::Run { id, spec } => match sandbox.run_with(
                &spec,
                RunOptions {
                    cancel: Some(input.as_raw_fd()),
                    ..RunOptions::default()
                },
            ) {
                Ok(result) => FromWorker::Result {
                    id,
                    result: Box::new(result),
                },
                Err(e) => FromWorker::Error {
                    id,
                    message: error_chain(&e),
                    invalid_request: matches!(e, crate::sandbox::Error::Spec(_)),
                },
            },
            // A cancel that arrives between runs is for a run that already ended.
            ToWorker::Cancel { .. } => continue,
        };
        if let Err(e) = protocol::write_frame(&mut output, &answer) {
            eprintln!("kakoi __launch: {}", error_chain(&e));
            return 1;
        }
    }
}
