//! The native sandbox: prepare (before clone), clone, the child checklist, init (pid 1),
//! and the parent that supervises, classifies and cleans up.
//!
//! ```text
//!  launcher (single-threaded)                     child (pid 1 in new namespaces)
//!  ─────────────────────────                      ───────────────────────────────
//!  validate spec, prepare plan, create cgroup
//!  clone3(NEWUSER|NEWNS|NEWPID|NEWNET|NEWIPC|NEWUTS[, INTO_CGROUP]) ──▶ PDEATHSIG,
//!                                                   "0" > tasks (v1 cgroup), wait
//!  write setgroups/uid_map/gid_map
//!  release 1 ─────────────────────────────────────▶ setsid, stdio, build root, pivot_root
//!  [attach by pid (v1 fallback)], release 2 ──────▶ NEWCGROUP, rlimits, close fds,
//!                                                   uid/gid 1000, drop caps, no_new_privs,
//!                                                   Landlock, seccomp
//!  poll: output, timeout, reports ◀── ExecOk ─────── init: fork + exec payload, reap, forward
//!                                  ◀── Exit ──────── payload's wait status, init exits
//!  wait4, cgroup stats, kill + rmdir cgroup
//! ```

pub mod cgroup;
mod child;
pub mod collect;
pub mod landlock;
pub mod netns;
mod parent;
mod prepare;
pub mod protocol;
pub mod seccomp;
mod sys;
mod warm;

use std::path::{Path, PathBuf};
use std::time::Instant;

use nix::errno::Errno;

pub use child::Layers;
pub use parent::{LaunchError, thread_count};
pub use prepare::{PrepareError, SANDBOX_PATH};
/// `fcntl(F_DUPFD_CLOEXEC)`, for other backends that take a [`RunOptions::cancel`] fd.
pub(crate) use sys::dup_cloexec;

use crate::result::{
    CgroupIsolation, Isolation, Outcome, RunResult, SetupFailure, Status, Timings, encode_output,
    signal_name,
};
use crate::spec::{Network, RunSpec, SANDBOX_ID, SpecError, ValidSpec};
use cgroup::{CgroupDriver, CgroupLimits, CgroupStats, DetectOptions, RunCgroup};
use landlock::{LandlockMode, LandlockPlan, LandlockSpec};
use protocol::Stage;

/// Errors that prevent a run from starting or being accounted. A payload that fails is
/// not an error: it is a [`RunResult`] with a status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is invalid.
    #[error("invalid run request")]
    Spec(#[from] SpecError),
    /// Preparing the run failed.
    #[error("cannot prepare the sandbox")]
    Prepare(#[from] PrepareError),
    /// The launcher failed.
    #[error("cannot launch the sandbox")]
    Launch(#[from] LaunchError),
    /// The run's cgroup could not be created.
    #[error("cannot create the run's cgroup")]
    Cgroup(#[from] cgroup::CgroupError),
    /// The seccomp policy could not be loaded.
    #[error("cannot load the seccomp policy")]
    Seccomp(#[from] seccomp::SeccompError),
    /// The Landlock ruleset could not be prepared.
    #[error("cannot prepare the Landlock ruleset")]
    Landlock(#[from] landlock::LandlockError),
    /// The pre-warmed stub that ran the request failed (the message carries the chain).
    #[error("pre-warmed run failed: {message}")]
    Stub {
        /// The stub's error and causes.
        message: String,
    },
    /// The pool of network namespaces failed in a way that is not a fallback.
    #[error("network namespace pool")]
    Netns(#[from] netns::NetnsError),
    /// The runtime directory could not be created.
    #[error("cannot create the runtime directory {path}")]
    RuntimeDir {
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// How cgroups are used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CgroupMode {
    /// Use cgroups when a writable hierarchy exists; otherwise fall back to rlimits and say so.
    #[default]
    Auto,
    /// Fail when no cgroup is usable.
    Required,
    /// Never use cgroups (rlimit fallbacks only).
    Off,
}

/// Host-wide settings shared by every run of a [`Sandbox`].
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Runtime directory (mount point of new roots). Default: `/run/kakoi` as root,
    /// `$XDG_RUNTIME_DIR/kakoi` or `/tmp/kakoi-<uid>` otherwise.
    pub runtime_dir: Option<PathBuf>,
    /// cgroup use.
    pub cgroups: CgroupMode,
    /// cgroup detection settings.
    pub cgroup_detect: DetectOptions,
    /// Host uid/gid the sandbox user maps to when the launcher is root (default: a per-launcher
    /// id in 2_000_000_000.. that no host account uses).
    pub host_id: Option<u32>,
    /// seccomp policy.
    pub seccomp: SeccompSetting,
    /// Landlock enforcement; `None` turns Landlock off.
    pub landlock: Option<LandlockMode>,
    /// Slots of pre-made network namespaces a root launcher may use (`None`: twice the
    /// CPUs, at least 4; `Some(0)`: a fresh namespace per run). See [`netns`].
    pub netns_pool: Option<usize>,
    /// Keep the next run's cgroup ready, with a stub process already moved into it, so a run
    /// does not wait for the cgroup v1 migration (an RCU grace period). For long-lived
    /// single-threaded launchers running many requests; no effect on cgroup v2 (which clones
    /// straight into the cgroup) or without cgroups. See `src/sandbox/warm.rs`.
    pub prewarm: bool,
}

/// Which seccomp policy runs get.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SeccompSetting {
    /// The built-in allowlist (`seccomp/<arch>/default.json`).
    #[default]
    Default,
    /// A policy file in seccompiler JSON (see `seccomp/README.md`).
    File(PathBuf),
    /// No seccomp filter (an operator's explicit choice; reported in `isolation`).
    Disabled,
}

impl SandboxConfig {
    /// The pool size used when [`SandboxConfig::netns_pool`] is `None`: twice the CPUs, at
    /// least 4.
    pub fn default_netns_pool() -> usize {
        // The CPUs this process may run on (one syscall; std's available_parallelism also
        // reads cgroup quota files).
        let cpus = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
            .map(|set| {
                (0..nix::sched::CpuSet::count())
                    .filter(|&c| set.is_set(c).unwrap_or(false))
                    .count()
            })
            .unwrap_or(2);
        (cpus * 2).max(4)
    }
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            runtime_dir: None,
            cgroups: CgroupMode::Auto,
            cgroup_detect: DetectOptions::default(),
            host_id: None,
            seccomp: SeccompSetting::Default,
            landlock: Some(LandlockMode::Strict),
            netns_pool: None,
            prewarm: false,
        }
    }
}

/// A sandbox factory: detects the host once, then runs any number of [`RunSpec`]s.
///
/// ```no_run
/// use kakoi::{RunSpec, Sandbox, SandboxConfig, Status};
///
/// let sandbox = Sandbox::new(SandboxConfig::default())?;
/// let result = sandbox.run(&RunSpec::command(["python3", "-c", "print(6 * 7)"]))?;
/// assert_eq!(result.status, Status::Ok);
/// assert_eq!(result.stdout, "42\n");
/// # Ok::<(), kakoi::sandbox::Error>(())
/// ```
///
/// `run` clones, so it must be called from a single-threaded process (the CLI, or
/// `kakoi __launch` spawned by a server); from a multi-threaded process it returns
/// [`LaunchError::MultiThreaded`].
#[derive(Debug)]
pub struct Sandbox {
    root: PathBuf,
    cgroup: Option<Box<dyn CgroupDriver>>,
    cgroup_reason: Option<String>,
    host_id: (u32, u32),
    clear_groups: bool,
    seccomp: Option<seccomp::SeccompPolicy>,
    landlock: Option<LandlockMode>,
    launcher_areas: [(usize, usize); 2],
    ignored_signals: Vec<libc::c_int>,
    netns: Option<netns::NetnsPool>,
    prewarm: bool,
    warm: std::sync::Mutex<Option<warm::Stub>>,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let stub = self.warm.get_mut().map(Option::take).unwrap_or(None);
        if let Some(stub) = stub {
            stub.discard();
        }
    }
}

/// Per-run options that are not part of the request.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Copy the payload's output to our stdout/stderr while it runs (CLI without `--json`).
    pub passthrough: bool,
    /// Cancel the run from outside: when this fd becomes readable or hangs up (for example the
    /// read end of a pipe whose writer writes a byte or closes, an eventfd, a timerfd, a
    /// signalfd), the whole sandbox is killed, cleaned up as usual, and the result has the
    /// status `cancelled`. The fd is only polled, never read or closed, and must stay open
    /// for the duration of the call (the sandbox works on its own duplicate).
    pub cancel: Option<std::os::fd::RawFd>,
}

const HOST_ID_BASE: u32 = 2_000_000_000;

impl Sandbox {
    /// Detect the host (cgroups, ids), remove state left by dead launchers, and create the
    /// runtime directory.
    pub fn new(config: SandboxConfig) -> Result<Sandbox, Error> {
        let euid = nix::unistd::geteuid().as_raw();
        let egid = nix::unistd::getegid().as_raw();
        let runtime_dir = config
            .runtime_dir
            .clone()
            .unwrap_or_else(|| default_runtime_dir(euid));
        let root = runtime_dir.join("root");
        std::fs::create_dir_all(&root).map_err(|source| Error::RuntimeDir {
            path: root.clone(),
            source,
        })?;
        let (cgroup, cgroup_reason) = match config.cgroups {
            CgroupMode::Off => (None, Some("disabled by configuration".to_owned())),
            mode => match cgroup::detect(&config.cgroup_detect) {
                Ok(driver) => {
                    if let Err(e) = driver.cleanup_stale() {
                        tracing::warn!("cannot clean up stale cgroups: {e}");
                    }
                    (Some(driver), None)
                }
                Err(e) if mode == CgroupMode::Required => return Err(e.into()),
                Err(e) => (None, Some(e.to_string())),
            },
        };
        let host_id = if euid == 0 {
            let id = config
                .host_id
                .unwrap_or(HOST_ID_BASE + std::process::id() % 100_000_000);
            (id, id)
        } else {
            (euid, egid)
        };
        let seccomp = match &config.seccomp {
            SeccompSetting::Default => Some(seccomp::SeccompPolicy::default_policy()?),
            SeccompSetting::File(path) => Some(seccomp::SeccompPolicy::from_file(path)?),
            SeccompSetting::Disabled => None,
        };
        let netns = if euid == 0 {
            let size = config
                .netns_pool
                .unwrap_or_else(SandboxConfig::default_netns_pool);
            netns::NetnsPool::open(&runtime_dir, size).unwrap_or_else(|e| {
                tracing::warn!("no pre-made network namespaces: {e}");
                None
            })
        } else {
            None
        };
        let sandbox = Sandbox {
            prewarm: config.prewarm,
            warm: std::sync::Mutex::new(None),
            netns,
            root,
            cgroup,
            cgroup_reason,
            host_id,
            clear_groups: euid == 0,
            seccomp,
            landlock: config.landlock,
            launcher_areas: prepare::launcher_areas(),
            ignored_signals: sys::ignored_signals(),
        };
        sandbox.prewarm();
        Ok(sandbox)
    }

    /// The host uid and gid the sandbox user (uid/gid 1000 inside) maps to. Files a payload
    /// creates through a writable bind are owned by these ids on the host.
    pub fn host_ids(&self) -> (u32, u32) {
        self.host_id
    }

    /// The pool of pre-made network namespaces, when this launcher uses one (root only).
    pub fn netns_pool(&self) -> Option<&netns::NetnsPool> {
        self.netns.as_ref()
    }

    /// The cgroup driver in use, if any.
    pub fn cgroup_driver(&self) -> Option<&dyn CgroupDriver> {
        self.cgroup.as_deref()
    }

    /// Run one request and wait for it.
    pub fn run(&self, spec: &RunSpec) -> Result<RunResult, Error> {
        self.run_with(spec, RunOptions::default())
    }

    /// Run one request with per-run options.
    pub fn run_with(&self, spec: &RunSpec, options: RunOptions) -> Result<RunResult, Error> {
        let started = Instant::now();
        let valid = spec.validate()?;
        if self.prewarm {
            let outcome = self.run_in_stub(spec, options);
            // The next run's stub starts moving into its cgroup now, off the next request's
            // path.
            if let warm::Outcome::Ran(result) = outcome {
                self.prewarm();
                return *result;
            }
        }
        let result = self.run_valid(&valid, options, started, None);
        self.prewarm();
        result
    }

    /// One run. `warm` is a cgroup this process (a pre-warmed stub) is already in: the
    /// sandbox is born in it, nothing is attached, and it is not removed here.
    fn run_valid(
        &self,
        spec: &ValidSpec,
        options: RunOptions,
        started: Instant,
        warm: Option<&dyn RunCgroup>,
    ) -> Result<RunResult, Error> {
        let ctx = prepare::PrepareContext {
            root: &self.root,
            clear_groups: self.clear_groups,
            fallback_memory: self.cgroup.is_none(),
            fallback_pids: self.cgroup.is_none(),
            launcher_areas: self.launcher_areas,
            ignored_signals: &self.ignored_signals,
        };
        // Our own duplicate, so the poll loop holds an fd it owns (a bad fd fails here).
        let cancel = options
            .cancel
            .map(sys::dup_cloexec)
            .transpose()
            .map_err(|source| LaunchError::Syscall {
                what: "dup of the cancel fd",
                source,
            })?;
        let mut prepared = prepare::prepare(spec, &ctx)?;
        let lease = match (&self.netns, spec.network) {
            (Some(pool), Network::None) => pool.acquire()?,
            _ => netns::NetnsLease::Fresh,
        };
        if lease.namespace().is_some() {
            // The pooled namespace already has `lo` up; clone must not make a new one.
            prepared.network_namespace = false;
        }
        let limits = CgroupLimits {
            memory_bytes: spec.memory,
            pids: spec.pids,
            cpu_millicores: spec.cpu_millicores,
        };
        let owned_cgroup: Option<Box<dyn RunCgroup>> = match (&self.cgroup, warm) {
            (Some(driver), None) => Some(driver.create(&limits)?),
            _ => None,
        };
        if let Some(cgroup) = warm {
            // The stub itself is one task of the run's pids cgroup.
            cgroup.set_limits(&CgroupLimits {
                pids: limits.pids + 1,
                ..limits
            })?;
        }
        let run_cgroup: Option<&dyn RunCgroup> = warm.or(owned_cgroup.as_deref());
        let landlock_plan = match self.landlock {
            Some(mode) => Some(LandlockPlan::prepare_with(&LandlockSpec {
                ro_exec_host_paths: &prepared.ro_host_paths,
                rw_host_paths: &prepared.rw_host_paths,
                ro_sandbox_paths: &["/"],
                rw_sandbox_paths: LANDLOCK_WRITABLE,
                network_off: spec.network == Network::None,
                mode,
            })?),
            None => None,
        };
        let apply_landlock = || match &landlock_plan {
            Some(plan) => plan.apply_in_child(),
            None => Ok(()),
        };
        let install_seccomp = || match &self.seccomp {
            Some(policy) => policy.install(),
            None => Ok(None),
        };
        let on_violation = |fd: std::os::fd::BorrowedFd<'_>| {
            seccomp::receive_violation(fd).ok().map(|v| v.syscall)
        };
        let layers = Layers {
            landlock: landlock_plan.as_ref().map(|_| &apply_landlock as _),
            seccomp: self.seccomp.as_ref().map(|_| &install_seccomp as _),
        };
        let launched = parent::launch(&parent::LaunchParams {
            prepared: &prepared,
            cgroup: run_cgroup,
            cgroup_entered: warm.is_some(),
            layers: &layers,
            keep_fd: landlock_plan
                .as_ref()
                .and_then(|p| p.ruleset_fd())
                .map(|fd| std::os::fd::AsRawFd::as_raw_fd(&fd)),
            host_id: self.host_id,
            timeout: spec.timeout,
            output_limit: spec.output_limit,
            passthrough: options.passthrough,
            on_violation: Some(&on_violation),
            cancel: cancel.as_ref().map(std::os::fd::AsFd::as_fd),
            join_netns: self.netns.as_ref().zip(lease.namespace()),
        });
        // The init has been reaped (or never existed): nothing of the run is left in the
        // namespace, so the slot may go to the next run.
        let net_namespace = (spec.network == Network::None).then(|| lease.kind().to_owned());
        lease.release();
        let cleanup_started = Instant::now();
        let mut launched = launched;
        let files = match (&mut launched, &spec.collect) {
            // Every process of the run is gone (the init was reaped): nothing races the walk.
            // The fd is dropped right after, before the cgroup its pages are charged to goes.
            (Ok(observed), Some(caps)) if observed.exec_at.is_some() => observed
                .workdir
                .take()
                .map(|fd| collect::collect(std::os::fd::AsFd::as_fd(&fd), caps))
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        if let Ok(observed) = &mut launched {
            observed.workdir = None;
        }
        let stats = run_cgroup.map(|c| c.stats()).unwrap_or_default();
        if let Some(c) = owned_cgroup
            && let Err(e) = c.destroy()
        {
            tracing::warn!("cannot remove the run's cgroup: {e}");
        }
        let observed = launched?;
        let cleanup_ms = ms(cleanup_started.elapsed());
        let mut result = self.assemble(spec, &prepared, observed, stats, started, cleanup_ms);
        result.files = files;
        result.isolation.net_namespace = net_namespace;
        if warm.is_some() {
            result.isolation.cgroup.attach = Some("prewarmed".into());
        }
        if let Some(error) = &mut result.error
            && error.stage == Stage::Landlock.name()
            && let Some(plan) = &landlock_plan
        {
            error.detail = Some(plan.describe_failure(error_detail_index(error)));
        }
        result.isolation.seccomp = self
            .seccomp
            .as_ref()
            .and_then(|p| serde_json::to_value(p.summary()).ok());
        result.isolation.landlock = landlock_plan
            .as_ref()
            .and_then(|p| serde_json::to_value(p.summary()).ok());
        Ok(result)
    }

    fn assemble(
        &self,
        spec: &ValidSpec,
        prepared: &prepare::Prepared,
        o: parent::Observed,
        stats: CgroupStats,
        started: Instant,
        cleanup_ms: f64,
    ) -> RunResult {
        if o.exec_at.is_none() && o.setup_failure.is_none() && o.violation.is_none() && !o.cancelled
        {
            // The child died before exec without reporting (for example an operator's seccomp
            // policy refusing the syscalls the init itself needs): still a setup error.
            return self.assemble_silent_failure(spec, prepared, o, started, cleanup_ms);
        }
        let status_word = o.payload_status.unwrap_or(o.init_status);
        let (exit_code, signal) = if o.setup_failure.is_some() {
            (None, None)
        } else if libc::WIFEXITED(status_word) {
            (Some(libc::WEXITSTATUS(status_word)), None)
        } else if libc::WIFSIGNALED(status_word) {
            (None, Some(libc::WTERMSIG(status_word)))
        } else {
            (None, None)
        };
        let oom_killed = stats.oom_kills > 0;
        let status = Status::classify(&Outcome {
            exit_code,
            signal,
            timed_out: o.timed_out,
            oom_killed,
            truncated: o.stdout_truncated || o.stderr_truncated,
            seccomp_violation: o.violation.is_some(),
            setup_failed: o.setup_failure.is_some(),
            cancelled: o.cancelled,
        });
        let error = o
            .setup_failure
            .map(|(stage, detail, errno)| setup_failure(prepared, stage, detail, errno));
        let (stdout, stdout_base64) = encode_output(&o.stdout);
        let (stderr, stderr_base64) = encode_output(&o.stderr);
        let tv_ms = |tv: libc::timeval| tv.tv_sec as f64 * 1000.0 + tv.tv_usec as f64 / 1000.0;
        let cpu_user_ms = stats
            .cpu_user_usec
            .map_or_else(|| tv_ms(o.rusage.ru_utime), |us| us as f64 / 1000.0);
        let cpu_sys_ms = stats
            .cpu_system_usec
            .map_or_else(|| tv_ms(o.rusage.ru_stime), |us| us as f64 / 1000.0);
        let peak_memory_bytes = stats
            .peak_memory_bytes
            .or(Some(o.rusage.ru_maxrss as u64 * 1024));
        let exec_at = o.exec_at.unwrap_or(o.exit_at);
        // The payload's time ends when the init reports its exit; what follows (namespace
        // teardown, collection, cgroup) is kakoi's cleanup.
        let payload_end = o.payload_exit_at.unwrap_or(o.exit_at);
        let teardown_ms = ms(o.exit_at.saturating_duration_since(payload_end));
        RunResult {
            status,
            exit_code,
            signal,
            signal_name: signal.map(signal_name),
            stdout,
            stderr,
            stdout_base64,
            stderr_base64,
            stdout_truncated: o.stdout_truncated,
            stderr_truncated: o.stderr_truncated,
            wall_ms: ms(payload_end.saturating_duration_since(exec_at)),
            cpu_user_ms,
            cpu_sys_ms,
            peak_memory_bytes,
            oom_killed,
            seccomp_syscall: o.violation,
            error,
            timings: Timings {
                env_ms: 0.0,
                setup_ms: ms(exec_at.saturating_duration_since(started)),
                run_ms: ms(payload_end.saturating_duration_since(exec_at)),
                cleanup_ms: teardown_ms + cleanup_ms,
            },
            isolation: {
                let mut isolation = self.isolation(spec, prepared);
                if let Some(entry) = o.cgroup_entry
                    && isolation.cgroup.attach.is_some()
                {
                    isolation.cgroup.attach = Some(entry.into());
                }
                isolation
            },
            backend: "native".into(),
            files: vec![],
            env: None,
            lint: None,
            format: None,
        }
    }

    fn assemble_silent_failure(
        &self,
        spec: &ValidSpec,
        prepared: &prepare::Prepared,
        mut o: parent::Observed,
        started: Instant,
        cleanup_ms: f64,
    ) -> RunResult {
        let status = o.init_status;
        let how = if libc::WIFSIGNALED(status) {
            format!("was killed by {}", signal_name(libc::WTERMSIG(status)))
        } else {
            format!("exited with {}", libc::WEXITSTATUS(status))
        };
        let timed_out = o.timed_out;
        o.setup_failure = Some((Stage::Exec, 0, Errno::UnknownErrno));
        let mut result = self.assemble(
            spec,
            prepared,
            o,
            CgroupStats::default(),
            started,
            cleanup_ms,
        );
        if let Some(error) = &mut result.error {
            error.stage = "init".into();
            error.detail = None;
            error.errno = 0;
            error.errno_name = String::new();
            error.message = if timed_out {
                "sandbox setup did not finish before the timeout".into()
            } else {
                format!("the sandbox init {how} before the payload was exec'd, without a report")
            };
            error.hint = Some(
                "a custom --seccomp policy must allow what the init needs (rt_sigprocmask, fork/clone, wait4, sendmsg, execve); try the built-in policy".into(),
            );
        }
        result
    }

    fn isolation(&self, spec: &ValidSpec, prepared: &prepare::Prepared) -> Isolation {
        let mut namespaces: Vec<String> = ["user", "pid", "mount", "ipc", "uts", "cgroup"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        if spec.network == Network::None {
            namespaces.insert(2, "net".into());
        }
        let cgroup = match &self.cgroup {
            Some(d) => CgroupIsolation {
                version: match d.version() {
                    cgroup::CgroupVersion::V1 => "v1".into(),
                    cgroup::CgroupVersion::V2 => "v2".into(),
                },
                controllers: d.controllers(),
                reason: None,
                attach: Some(
                    match d.version() {
                        cgroup::CgroupVersion::V2 => "clone_into",
                        cgroup::CgroupVersion::V1 => "migrate",
                    }
                    .into(),
                ),
            },
            None => CgroupIsolation {
                version: "none".into(),
                controllers: vec![],
                reason: self.cgroup_reason.clone(),
                attach: None,
            },
        };
        let rlimit_fallbacks = if self.cgroup.is_none() {
            vec!["as (memory)".into(), "nproc (pids)".into()]
        } else {
            vec![]
        };
        Isolation {
            namespaces,
            uid: SANDBOX_ID,
            gid: SANDBOX_ID,
            host_uid: self.host_id.0,
            capabilities: vec![],
            no_new_privs: true,
            network: match spec.network {
                Network::None => "none".into(),
                Network::Host => "host".into(),
            },
            net_namespace: None,
            cgroup,
            rlimits: prepared.rlimit_names.clone(),
            rlimit_fallbacks,
            seccomp: None,
            landlock: None,
        }
    }
}

/// In-sandbox paths Landlock lets the payload write (and execute: compiled programs).
const LANDLOCK_WRITABLE: &[&str] = &[
    "/tmp",
    crate::spec::WORKDIR,
    "/dev/shm",
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
];

fn error_detail_index(error: &SetupFailure) -> u32 {
    error.detail_index.unwrap_or(0)
}

fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

fn default_runtime_dir(euid: u32) -> PathBuf {
    if euid == 0 {
        return PathBuf::from("/run/kakoi");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if Path::new(&dir).is_absolute() => Path::new(&dir).join("kakoi"),
        _ => PathBuf::from(format!("/tmp/kakoi-{euid}")),
    }
}

/// Turn a child's `{stage, detail, errno}` into a message with the step's subject and a hint.
fn setup_failure(p: &prepare::Prepared, stage: Stage, detail: u32, errno: Errno) -> SetupFailure {
    let subject = match stage {
        Stage::Rootfs => p.op_labels.get(detail as usize).cloned(),
        Stage::Rlimit => p
            .rlimit_names
            .get(detail as usize)
            .map(|(n, v)| format!("{n}={v}")),
        Stage::Exec => Some(p.program.to_string_lossy().into_owned()),
        _ => None,
    };
    let errno_name = format!("{errno:?}");
    let message = match &subject {
        Some(s) => format!(
            "sandbox setup failed at {} ({s}): {errno_name} ({})",
            stage.name(),
            errno.desc()
        ),
        None => format!(
            "sandbox setup failed at {}: {errno_name} ({})",
            stage.name(),
            errno.desc()
        ),
    };
    let hint = match (stage, errno) {
        (Stage::Exec, Errno::ENOENT) => Some(
            "the program does not exist inside the sandbox; only /usr, /bin, /lib* and --bind-ro paths are visible".into(),
        ),
        (Stage::Exec, Errno::EACCES) => Some("the program is not executable by uid 1000".into()),
        (Stage::Rootfs, Errno::EPERM) if subject.as_deref() == Some("mount /proc") => Some(
            "a new /proc cannot be mounted because the host's /proc has masked paths; in Docker run with --security-opt systempaths=unconfined".into(),
        ),
        (Stage::Rootfs, Errno::EPERM) => Some(
            "mounting in a user namespace was refused; run `kakoi doctor` (AppArmor or a container seccomp profile may block it)".into(),
        ),
        _ => None,
    };
    SetupFailure {
        stage: stage.name().into(),
        detail: subject,
        detail_index: Some(detail),
        errno: errno as i32,
        errno_name,
        message,
        hint,
    }
}
