//! The job manager's core: a pool of `kakoi __launch` workers, a bounded queue in front of
//! it, and cancellation. The HTTP API and the MCP server both run jobs through
//! [`WorkerPool::run`]; blocking library code (the environment builder) runs them through
//! [`WorkerPool::blocking_backend`]; work that needs no launcher but must count against the
//! same limit (a Docker container) goes through [`WorkerPool::run_external`].
//!
//! - Concurrency: one run per worker, at most `workers` workers (a semaphore's permits).
//! - Queue: at most `queue_capacity` runs wait for a permit, each at most `queue_timeout`;
//!   past that, [`JobError::QueueFull`] / [`JobError::QueueTimeout`] (HTTP 429).
//! - Cancellation: dropping the future returned by [`WorkerPool::run`] cancels the run (a
//!   client that disconnects drops its handler's future). The pool sends the worker a
//!   `cancel` frame; the worker's sandbox watches the worker's stdin (`RunOptions::cancel`),
//!   kills and cleans up the whole sandbox (status `cancelled`) and answers, and the worker
//!   goes back to the pool: no launcher is respawned. The run's permit is held until that
//!   answer, so no other run is admitted without a worker. A worker that does not answer
//!   within 10 s (or that does not take `cancel` frames) is killed instead: its sandbox's
//!   init dies of PDEATHSIG, the pid namespace takes every payload process with it, and the
//!   manager removes the run's cgroup (its launcher is dead, so the stale sweep applies).
//! - Workers are spawned from one dedicated thread that lives as long as the process, because
//!   PDEATHSIG fires when the *thread* that forked the worker exits, and tokio's blocking
//!   threads come and go. Workers arm PDEATHSIG themselves, so a SIGKILLed manager takes its
//!   workers, and with them every sandbox, down; the next start sweeps their cgroups.
//! - Shutdown ([`WorkerPool::shutdown`]): refuse new runs, fail queued ones, let running ones
//!   finish within a grace period, kill the rest (external runs are told to end), close every
//!   worker's stdin, wait for the workers to exit and sweep what killed ones left.
//! - [`LazyPool`]: a pool started on first use (the environment build pool: a cache hit never
//!   needs one).

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::process::{ChildStdin, ChildStdout};
use tokio::sync::{OnceCell, OwnedSemaphorePermit, Semaphore, oneshot, watch};

use super::protocol::{self, FrameReader, FromWorker, ToWorker, WorkerInfo};
use super::worker::{WorkerSettings, error_chain};
use crate::backend::{Backend, BackendError};
use crate::result::RunResult;
use crate::sandbox::RunOptions;
use crate::spec::RunSpec;

/// Settings of a [`WorkerPool`].
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Number of workers, i.e. of concurrent sandboxes.
    pub workers: usize,
    /// Runs that may wait for a worker; more are refused with [`JobError::QueueFull`].
    pub queue_capacity: usize,
    /// How long a run may wait for a worker.
    pub queue_timeout: Duration,
    /// Replace a worker after this many runs (0: never). 1 gives a fresh launcher per run.
    pub max_runs_per_worker: u64,
    /// The `kakoi` executable to spawn as `kakoi __launch`.
    pub program: PathBuf,
    /// How workers create their sandbox (`manager_pid` is filled in by the pool).
    pub settings: WorkerSettings,
    /// Time a new worker has to report `ready`.
    pub spawn_timeout: Duration,
    /// Start all workers at once instead of on first use.
    pub prestart: bool,
}

impl PoolConfig {
    /// Defaults: one worker per core, a queue of 64 waiting at most 30 s, this executable.
    pub fn new(settings: WorkerSettings) -> Result<PoolConfig, PoolError> {
        Ok(PoolConfig {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            queue_capacity: 64,
            queue_timeout: Duration::from_secs(30),
            max_runs_per_worker: 0,
            program: std::env::current_exe().map_err(|source| PoolError::Executable { source })?,
            settings,
            spawn_timeout: Duration::from_secs(30),
            prestart: true,
        })
    }
}

/// Why the pool could not start.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The path of the running executable is unknown.
    #[error("cannot find the kakoi executable to spawn launchers from")]
    Executable {
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The first worker could not be started.
    #[error("cannot start a launcher")]
    Launcher(#[source] JobError),
}

/// Why a job did not produce a [`RunResult`]. (A payload that fails is a result, not this.)
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum JobError {
    /// The queue is full.
    #[error("the queue is full ({capacity} runs waiting); retry later")]
    QueueFull {
        /// Queue capacity.
        capacity: usize,
    },
    /// No worker became free within the queue timeout.
    #[error("no sandbox became free within {waited_ms} ms; retry later")]
    QueueTimeout {
        /// How long the run waited.
        waited_ms: u64,
    },
    /// The manager is shutting down and takes no new runs.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The run was killed because the manager shut down before it finished.
    #[error("the run was cancelled because the server shut down")]
    CancelledByShutdown,
    /// The sandbox refused the request (for example an invalid file name).
    #[error("{message}")]
    InvalidRequest {
        /// What is wrong.
        message: String,
    },
    /// A launcher failed to start, failed a run, or died.
    #[error("launcher failure: {message}")]
    Launcher {
        /// What happened.
        message: String,
    },
}

/// Counters and gauges of a pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct PoolStats {
    /// Maximum concurrent runs.
    pub capacity: usize,
    /// Live worker processes.
    pub workers: usize,
    /// Idle worker processes.
    pub idle: usize,
    /// Runs in progress.
    pub running: usize,
    /// Runs waiting for a worker.
    pub queued: usize,
    /// Maximum waiting runs.
    pub queue_capacity: usize,
    /// Workers spawned since start.
    pub spawned: u64,
    /// Runs cancelled (client gone or shutdown).
    pub cancelled: u64,
    /// The pool refuses new runs.
    pub shutting_down: bool,
}

/// A pool of launcher workers. Cheap to clone (shared state).
#[derive(Clone)]
pub struct WorkerPool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPool")
            .field("stats", &self.stats())
            .finish()
    }
}

struct Inner {
    config: PoolConfig,
    settings_json: String,
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    idle: Mutex<Vec<Worker>>,
    live: AtomicUsize,
    spawned: AtomicU64,
    cancelled: AtomicU64,
    next_id: AtomicU64,
    running: Mutex<HashMap<u64, u32>>,
    /// Runs in progress through [`WorkerPool::run_external`].
    external: AtomicUsize,
    shutting_down: AtomicBool,
    shutdown_tx: watch::Sender<bool>,
    /// Set when the grace period is over: external runs must end now.
    kill_tx: watch::Sender<bool>,
    info: Mutex<Option<WorkerInfo>>,
    spawner: Spawner,
    reaping: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

struct Worker {
    pid: u32,
    child: Child,
    stdin: ChildStdin,
    stdout: FrameReader<ChildStdout>,
    runs: u64,
    cancel_frames: bool,
}

impl WorkerPool {
    /// Create the pool and, with `prestart`, start every worker (the first failure is
    /// returned: a manager whose launchers cannot create a sandbox should not start).
    /// Sweeps cgroups left by launchers of a previous, killed manager.
    pub async fn start(config: PoolConfig) -> Result<WorkerPool, PoolError> {
        let mut settings = config.settings.clone();
        settings.manager_pid = std::process::id();
        let settings_json = serde_json::to_string(&settings).expect("settings serialize");
        let (shutdown_tx, _) = watch::channel(false);
        let (kill_tx, _) = watch::channel(false);
        let pool = WorkerPool {
            inner: Arc::new(Inner {
                permits: Arc::new(Semaphore::new(config.workers.max(1))),
                config,
                settings_json,
                waiting: AtomicUsize::new(0),
                idle: Mutex::new(Vec::new()),
                live: AtomicUsize::new(0),
                spawned: AtomicU64::new(0),
                cancelled: AtomicU64::new(0),
                next_id: AtomicU64::new(1),
                running: Mutex::new(HashMap::new()),
                external: AtomicUsize::new(0),
                shutting_down: AtomicBool::new(false),
                shutdown_tx,
                kill_tx,
                info: Mutex::new(None),
                spawner: Spawner::start(),
                reaping: Mutex::new(Vec::new()),
            }),
        };
        tokio::task::spawn_blocking(sweep_stale_cgroups)
            .await
            .unwrap_or(());
        let first = pool
            .inner
            .spawn_worker()
            .await
            .map_err(PoolError::Launcher)?;
        pool.inner.put_idle(first);
        if pool.inner.config.prestart {
            let more = pool.inner.config.workers.saturating_sub(1);
            let spawns: Vec<_> = (0..more)
                .map(|_| {
                    let inner = pool.inner.clone();
                    tokio::spawn(async move { inner.spawn_worker().await })
                })
                .collect();
            for s in spawns {
                match s.await {
                    Ok(Ok(w)) => pool.inner.put_idle(w),
                    Ok(Err(e)) => return Err(PoolError::Launcher(e)),
                    Err(e) => {
                        return Err(PoolError::Launcher(JobError::Launcher {
                            message: e.to_string(),
                        }));
                    }
                }
            }
        }
        Ok(pool)
    }

    /// Run one request on a worker and wait for its result.
    ///
    /// Dropping the returned future cancels the run and kills its sandbox.
    pub async fn run(&self, spec: RunSpec) -> Result<RunResult, JobError> {
        self.run_holding(spec, Box::new(())).await
    }

    /// [`WorkerPool::run`], keeping `hold` alive until the sandbox is gone: until the result
    /// arrives or, when the run is cancelled, until the worker has killed and cleaned up the
    /// sandbox. Use it for what the run must not outlive (an environment's in-use lock).
    pub async fn run_holding(
        &self,
        spec: RunSpec,
        hold: Box<dyn Any + Send>,
    ) -> Result<RunResult, JobError> {
        let inner = &self.inner;
        if inner.shutting_down.load(Ordering::SeqCst) {
            return Err(JobError::ShuttingDown);
        }
        let permit = inner.admit().await?;
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mut busy = Busy {
            inner: inner.clone(),
            worker: None,
            id,
            permit: Some(permit),
            run_sent: false,
            hold: Some(hold),
        };
        let worker = match inner.take_idle() {
            Some(w) => w,
            None => inner.spawn_worker().await?,
        };
        inner.running.lock().expect("lock").insert(id, worker.pid);
        busy.worker = Some(worker);
        busy.exec(spec).await
    }

    /// A blocking [`Backend`] over this pool, for library code that takes `&dyn Backend`.
    /// Call it only from threads outside the async runtime (e.g. `spawn_blocking`).
    pub fn blocking_backend(&self) -> PoolBackend {
        PoolBackend {
            pool: self.clone(),
            handle: tokio::runtime::Handle::current(),
        }
    }

    /// Run `job`, which needs no launcher (for example a Docker container), under this
    /// pool's admission: it takes one of the `workers` permits (so sandbox runs and external
    /// runs share one concurrency limit), waits in the same queue with the same timeout, and
    /// is refused during shutdown. `job` gets a future that completes when the manager shuts
    /// down and the grace period is over: the job must then end its run and clean up.
    /// Dropping the returned future drops `job`'s future (cancelling it is `job`'s business).
    pub async fn run_external<F, Fut, T>(&self, job: F) -> Result<T, JobError>
    where
        F: FnOnce(Pin<Box<dyn Future<Output = ()> + Send>>) -> Fut,
        Fut: Future<Output = T>,
    {
        let inner = &self.inner;
        if inner.shutting_down.load(Ordering::SeqCst) {
            return Err(JobError::ShuttingDown);
        }
        let permit = inner.admit().await?;
        struct External<'a>(&'a AtomicUsize);
        impl Drop for External<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        inner.external.fetch_add(1, Ordering::SeqCst);
        let _external = External(&inner.external);
        let mut kill = inner.kill_tx.subscribe();
        let killed = Box::pin(async move {
            // An error means the pool is gone: end the run as well.
            let _ = kill.wait_for(|k| *k).await;
        });
        let out = job(killed).await;
        drop(permit);
        Ok(out)
    }

    /// The host uid and gid the workers' sandbox user maps to, from the last `ready` frame
    /// (one fixed pair when the settings fix `host_id`, as the environment build pool does;
    /// otherwise each launcher has its own and this is the newest one's).
    pub fn host_ids(&self) -> Option<(u32, u32)> {
        self.worker_info().map(|i| (i.host_uid, i.host_gid))
    }

    /// The configuration the pool was started with.
    pub fn config(&self) -> &PoolConfig {
        &self.inner.config
    }

    /// Current counters.
    pub fn stats(&self) -> PoolStats {
        let inner = &self.inner;
        let capacity = inner.config.workers.max(1);
        PoolStats {
            capacity,
            workers: inner.live.load(Ordering::SeqCst),
            idle: inner.idle.lock().map(|v| v.len()).unwrap_or(0),
            running: inner.running.lock().map(|m| m.len()).unwrap_or(0)
                + inner.external.load(Ordering::SeqCst),
            queued: inner.waiting.load(Ordering::SeqCst),
            queue_capacity: inner.config.queue_capacity,
            spawned: inner.spawned.load(Ordering::Relaxed),
            cancelled: inner.cancelled.load(Ordering::Relaxed),
            shutting_down: inner.shutting_down.load(Ordering::SeqCst),
        }
    }

    /// What the workers' sandboxes have (from the last `ready` frame).
    pub fn worker_info(&self) -> Option<WorkerInfo> {
        self.inner.info.lock().ok().and_then(|i| i.clone())
    }

    /// pids of the live worker processes (idle and busy).
    pub fn worker_pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self
            .inner
            .idle
            .lock()
            .map(|v| v.iter().map(|w| w.pid).collect())
            .unwrap_or_default();
        if let Ok(m) = self.inner.running.lock() {
            pids.extend(m.values().copied());
        }
        pids
    }

    /// Whether [`WorkerPool::shutdown`] has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::SeqCst)
    }

    /// Stop: refuse new runs and fail queued ones at once, give running ones `grace` to
    /// finish, kill what is left, then stop every worker and wait for it to exit.
    pub async fn shutdown(&self, grace: Duration) {
        let inner = &self.inner;
        inner.shutting_down.store(true, Ordering::SeqCst);
        let _ = inner.shutdown_tx.send(true);
        let deadline = Instant::now() + grace;
        while inner.busy() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = inner.kill_tx.send(true);
        let left: Vec<u32> = inner
            .running
            .lock()
            .expect("lock")
            .values()
            .copied()
            .collect();
        for pid in &left {
            tracing::warn!(worker = pid, "grace period over: killing a running sandbox");
            kill(*pid);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while inner.busy() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let idle: Vec<Worker> = std::mem::take(&mut *inner.idle.lock().expect("lock"));
        for w in idle {
            inner.retire(w);
        }
        let reaping: Vec<_> = std::mem::take(&mut *inner.reaping.lock().expect("lock"));
        for r in reaping {
            let _ = r.await;
        }
        if !left.is_empty() {
            let _ = tokio::task::spawn_blocking(sweep_stale_cgroups).await;
        }
    }
}

impl Inner {
    /// Runs in progress (on workers or external).
    fn busy(&self) -> bool {
        !self.running.lock().expect("lock").is_empty() || self.external.load(Ordering::SeqCst) > 0
    }

    /// Queue admission and the wait for a permit.
    async fn admit(&self) -> Result<OwnedSemaphorePermit, JobError> {
        if let Ok(p) = self.permits.clone().try_acquire_owned() {
            return Ok(p);
        }
        let capacity = self.config.queue_capacity;
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= capacity {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(JobError::QueueFull { capacity });
        }
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let _waiting = Waiting(&self.waiting);
        let started = Instant::now();
        let mut shutdown = self.shutdown_tx.subscribe();
        tokio::select! {
            permit = tokio::time::timeout(self.config.queue_timeout, self.permits.clone().acquire_owned()) => match permit {
                Ok(Ok(p)) => Ok(p),
                Ok(Err(_)) => Err(JobError::ShuttingDown),
                Err(_) => Err(JobError::QueueTimeout { waited_ms: started.elapsed().as_millis() as u64 }),
            },
            _ = shutdown.wait_for(|down| *down) => Err(JobError::ShuttingDown),
        }
    }

    fn take_idle(&self) -> Option<Worker> {
        self.idle.lock().expect("lock").pop()
    }

    fn put_idle(&self, w: Worker) {
        if self.shutting_down.load(Ordering::SeqCst) {
            self.retire(w);
        } else {
            self.idle.lock().expect("lock").push(w);
        }
    }

    async fn spawn_worker(self: &Arc<Self>) -> Result<Worker, JobError> {
        let mut cmd = Command::new(&self.config.program);
        cmd.arg("__launch")
            .arg("--settings")
            .arg(&self.settings_json)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = self
            .spawner
            .spawn(cmd)
            .await
            .map_err(|e| JobError::Launcher {
                message: format!(
                    "cannot spawn {} __launch: {e}",
                    self.config.program.display()
                ),
            })?;
        self.spawned.fetch_add(1, Ordering::Relaxed);
        let pid = child.id();
        let pipes = child
            .stdin
            .take()
            .zip(child.stdout.take())
            .ok_or_else(|| "no pipes".to_owned())
            .and_then(|(i, o)| {
                Ok((
                    ChildStdin::from_std(i).map_err(|e| e.to_string())?,
                    ChildStdout::from_std(o).map_err(|e| e.to_string())?,
                ))
            });
        let (stdin, stdout) = match pipes {
            Ok(p) => p,
            Err(message) => {
                self.reap(child, true);
                return Err(JobError::Launcher { message });
            }
        };
        let mut stdout = FrameReader::new(stdout);
        let ready =
            tokio::time::timeout(self.config.spawn_timeout, stdout.next::<FromWorker>()).await;
        let mut cancel_frames = false;
        let failure = match ready {
            Ok(Ok(Some(FromWorker::Ready { info, .. }))) => {
                cancel_frames = info.cancel_frames;
                *self.info.lock().expect("lock") = Some(info);
                None
            }
            Ok(Ok(Some(FromWorker::Fatal { message }))) => Some(message),
            Ok(Ok(Some(other))) => Some(format!("unexpected first frame {other:?}")),
            Ok(Ok(None)) => Some("the launcher exited before it was ready".to_owned()),
            Ok(Err(e)) => Some(error_chain(&e)),
            Err(_) => Some(format!(
                "the launcher was not ready within {:?}",
                self.config.spawn_timeout
            )),
        };
        if let Some(message) = failure {
            self.reap(child, true);
            return Err(JobError::Launcher { message });
        }
        self.live.fetch_add(1, Ordering::SeqCst);
        Ok(Worker {
            pid,
            child,
            stdin,
            stdout,
            runs: 0,
            cancel_frames,
        })
    }

    /// Close a worker's stdin (it exits on EOF) and reap it.
    fn retire(&self, w: Worker) {
        self.live.fetch_sub(1, Ordering::SeqCst);
        let Worker { child, stdin, .. } = w;
        drop(stdin);
        self.reap(child, false);
    }

    /// Kill a worker (its sandbox dies with it) and reap it; sweep its cgroups.
    /// `hold` is dropped once the worker is reaped (its sandbox dies with it).
    fn kill_worker(&self, w: Worker, hold: Option<Box<dyn Any + Send>>) {
        self.live.fetch_sub(1, Ordering::SeqCst);
        let Worker { child, .. } = w;
        self.reap_holding(child, true, hold);
    }

    fn reap(&self, child: Child, kill_now: bool) {
        self.reap_holding(child, kill_now, None);
    }

    fn reap_holding(&self, mut child: Child, kill_now: bool, hold: Option<Box<dyn Any + Send>>) {
        let pid = child.id();
        let task = move || {
            if kill_now {
                let _ = child.kill();
                let _ = child.wait();
                sweep_stale_cgroups();
                drop(hold);
                return;
            }
            // A retired worker exits when it reads EOF; one that does not within 10 s is
            // killed.
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => return,
                    Ok(None) if Instant::now() >= deadline => {
                        tracing::warn!(worker = pid, "launcher did not exit on EOF; killing it");
                        let _ = child.kill();
                        let _ = child.wait();
                        sweep_stale_cgroups();
                        return;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                let handle = h.spawn_blocking(task);
                let mut reaping = self.reaping.lock().expect("lock");
                reaping.retain(|h| !h.is_finished());
                reaping.push(handle);
            }
            Err(_) => task(),
        }
    }
}

/// One run holding a permit and a worker. Dropped before the result arrived = cancelled.
struct Busy {
    inner: Arc<Inner>,
    worker: Option<Worker>,
    id: u64,
    permit: Option<OwnedSemaphorePermit>,
    /// The whole `run` frame is in the worker's pipe (a partly written frame cannot be
    /// followed by a `cancel`: the worker must be killed).
    run_sent: bool,
    /// Kept until the sandbox is gone (see [`WorkerPool::run_holding`]).
    hold: Option<Box<dyn Any + Send>>,
}

impl Busy {
    async fn exec(&mut self, spec: RunSpec) -> Result<RunResult, JobError> {
        let id = self.id;
        let frame = ToWorker::Run {
            id,
            spec: Box::new(spec),
        };
        let worker = self.worker.as_mut().expect("busy has a worker");
        let answer = match protocol::write_frame_async(&mut worker.stdin, &frame).await {
            Ok(()) => {
                self.run_sent = true;
                worker.stdout.next::<FromWorker>().await
            }
            Err(e) => Err(e),
        };
        match answer {
            Ok(Some(FromWorker::Result { id: got, result })) if got == id => {
                self.release();
                Ok(*result)
            }
            Ok(Some(FromWorker::Error {
                id: got,
                message,
                invalid_request,
            })) if got == id => {
                self.release();
                if invalid_request {
                    Err(JobError::InvalidRequest { message })
                } else {
                    Err(JobError::Launcher { message })
                }
            }
            other => {
                let w = self.worker.take().expect("busy has a worker");
                self.inner.kill_worker(w, self.hold.take());
                if self.inner.shutting_down.load(Ordering::SeqCst) {
                    return Err(JobError::CancelledByShutdown);
                }
                let message = match other {
                    Ok(None) => "the launcher exited during the run".to_owned(),
                    Ok(Some(frame)) => format!("unexpected frame {frame:?}"),
                    Err(e) => error_chain(&e),
                };
                Err(JobError::Launcher { message })
            }
        }
    }

    /// The run finished: give the worker back (or retire it after its quota).
    fn release(&mut self) {
        if let Some(mut w) = self.worker.take() {
            w.runs += 1;
            let quota = self.inner.config.max_runs_per_worker;
            if quota > 0 && w.runs >= quota {
                self.inner.retire(w);
            } else {
                self.inner.put_idle(w);
            }
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let Some(w) = self.worker.take() else {
            self.inner.running.lock().expect("lock").remove(&self.id);
            return;
        };
        // The caller went away before the result: cancel the run.
        self.inner.cancelled.fetch_add(1, Ordering::Relaxed);
        match tokio::runtime::Handle::try_current() {
            Ok(handle) if w.cancel_frames && self.run_sent => {
                // The worker ends the run (status `cancelled`; the launcher kills and cleans
                // up its sandbox) and stays in service. The permit is held until the worker
                // is back, so no other run is admitted without a worker, and the run stays in
                // `running` until then, so a shutdown waits for the cleanup instead of exiting
                // (and PDEATHSIG-killing the worker) while the worker removes the sandbox.
                tracing::info!(
                    run = self.id,
                    worker = w.pid,
                    "run cancelled: sending cancel"
                );
                let inner = self.inner.clone();
                let permit = self.permit.take();
                let hold = self.hold.take();
                let id = self.id;
                handle.spawn(async move {
                    let _permit = permit;
                    match inner.cancel_on(w, id).await {
                        Ok(w) => inner.put_idle(w),
                        Err(w) => inner.kill_worker(w, hold),
                    }
                    inner.running.lock().expect("lock").remove(&id);
                });
            }
            _ => {
                tracing::info!(
                    run = self.id,
                    worker = w.pid,
                    "run cancelled: killing its launcher"
                );
                self.inner.kill_worker(w, self.hold.take());
                self.inner.running.lock().expect("lock").remove(&self.id);
            }
        }
    }
}

impl Inner {
    /// Send `cancel` for run `id` and wait for that run's answer: the worker back, or the
    /// worker to kill when it does not answer within 10 s.
    async fn cancel_on(&self, mut w: Worker, id: u64) -> Result<Worker, Worker> {
        let done = async {
            protocol::write_frame_async(&mut w.stdin, &ToWorker::Cancel { id }).await?;
            loop {
                match w.stdout.next::<FromWorker>().await? {
                    Some(
                        FromWorker::Result { id: got, .. } | FromWorker::Error { id: got, .. },
                    ) if got == id => {
                        return Ok::<(), protocol::FrameError>(());
                    }
                    Some(_) => {}
                    None => return Err(protocol::FrameError::Truncated { got: 0, want: 4 }),
                }
            }
        };
        match tokio::time::timeout(Duration::from_secs(10), done).await {
            Ok(Ok(())) => Ok(w),
            _ => Err(w),
        }
    }
}

fn kill(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Remove cgroups whose launcher is dead (a killed worker's, a previous manager's).
pub fn sweep_stale_cgroups() {
    match crate::sandbox::cgroup::detect(&crate::sandbox::cgroup::DetectOptions::default()) {
        Ok(driver) => match driver.cleanup_stale() {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "removed stale run cgroups"),
            Err(e) => tracing::warn!("cannot sweep stale cgroups: {}", error_chain(&e)),
        },
        Err(e) => tracing::debug!("no cgroup to sweep: {}", error_chain(&e)),
    }
}

/// Spawns processes from one long-lived thread (see the module docs: PDEATHSIG).
struct Spawner {
    tx: Mutex<std::sync::mpsc::Sender<(Command, oneshot::Sender<std::io::Result<Child>>)>>,
}

impl Spawner {
    fn start() -> Spawner {
        let (tx, rx) =
            std::sync::mpsc::channel::<(Command, oneshot::Sender<std::io::Result<Child>>)>();
        std::thread::Builder::new()
            .name("kakoi-spawner".into())
            .spawn(move || {
                // Lives until every sender is gone; while children it spawned run, it must
                // not exit (PDEATHSIG), so it is never joined and parks at the end.
                while let Ok((mut cmd, reply)) = rx.recv() {
                    let _ = reply.send(cmd.spawn());
                }
                loop {
                    std::thread::park();
                }
            })
            .expect("spawn the launcher spawner thread");
        Spawner { tx: Mutex::new(tx) }
    }

    async fn spawn(&self, cmd: Command) -> std::io::Result<Child> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .lock()
            .expect("lock")
            .send((cmd, reply))
            .map_err(|_| std::io::Error::other("spawner thread is gone"))?;
        rx.await
            .map_err(|_| std::io::Error::other("spawner thread is gone"))?
    }
}

/// A blocking [`Backend`] that runs on a [`WorkerPool`] (see [`WorkerPool::blocking_backend`]).
#[derive(Debug, Clone)]
pub struct PoolBackend {
    pool: WorkerPool,
    handle: tokio::runtime::Handle,
}

fn backend_error(e: JobError) -> BackendError {
    BackendError::Other {
        message: e.to_string(),
        source: Some(Box::new(e)),
    }
}

impl Backend for PoolBackend {
    fn name(&self) -> &'static str {
        "native"
    }

    fn run_with(&self, spec: &RunSpec, _options: &RunOptions) -> Result<RunResult, BackendError> {
        self.handle
            .block_on(self.pool.run(spec.clone()))
            .map_err(backend_error)
    }

    fn host_ids(&self) -> Option<(u32, u32)> {
        self.pool.host_ids()
    }
}

/// A [`WorkerPool`] started on first use, and refused after [`LazyPool::shutdown`]. The
/// manager's environment build pool is one: a server whose requests hit the env cache (or
/// send no requirements) never starts a build launcher. Cheap to clone (shared state).
#[derive(Clone)]
pub struct LazyPool {
    config: Arc<PoolConfig>,
    cell: Arc<OnceCell<WorkerPool>>,
    closed: Arc<AtomicBool>,
}

impl std::fmt::Debug for LazyPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyPool")
            .field("started", &self.cell.get())
            .field("closed", &self.closed.load(Ordering::SeqCst))
            .finish()
    }
}

impl LazyPool {
    /// A pool that [`WorkerPool::start`]s with `config` when first needed.
    pub fn new(config: PoolConfig) -> LazyPool {
        LazyPool {
            config: Arc::new(config),
            cell: Arc::new(OnceCell::new()),
            closed: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The pool, started now if it is not running yet.
    pub async fn get(&self) -> Result<&WorkerPool, JobError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(JobError::ShuttingDown);
        }
        let pool = self
            .cell
            .get_or_try_init(|| async {
                WorkerPool::start((*self.config).clone())
                    .await
                    .map_err(|e| JobError::Launcher {
                        message: error_chain(&e),
                    })
            })
            .await?;
        if self.closed.load(Ordering::SeqCst) {
            // Started while the manager began to shut down.
            pool.shutdown(Duration::ZERO).await;
            return Err(JobError::ShuttingDown);
        }
        Ok(pool)
    }

    /// The pool, if it was started.
    pub fn started(&self) -> Option<&WorkerPool> {
        self.cell.get()
    }

    /// Refuse further use and shut the pool down if it was started (see
    /// [`WorkerPool::shutdown`]).
    pub async fn shutdown(&self, grace: Duration) {
        self.closed.store(true, Ordering::SeqCst);
        if let Some(pool) = self.cell.get() {
            pool.shutdown(grace).await;
        }
    }

    /// A blocking [`Backend`] over this pool (call it outside the async runtime's threads,
    /// e.g. from `spawn_blocking`); the pool starts on its first run.
    pub fn blocking_backend(&self) -> LazyPoolBackend {
        LazyPoolBackend {
            pool: self.clone(),
            handle: tokio::runtime::Handle::current(),
        }
    }
}

/// A blocking [`Backend`] over a [`LazyPool`] (see [`LazyPool::blocking_backend`]).
#[derive(Debug, Clone)]
pub struct LazyPoolBackend {
    pool: LazyPool,
    handle: tokio::runtime::Handle,
}

impl Backend for LazyPoolBackend {
    fn name(&self) -> &'static str {
        "native"
    }

    fn run_with(&self, spec: &RunSpec, _options: &RunOptions) -> Result<RunResult, BackendError> {
        self.handle
            .block_on(async { self.pool.get().await?.run(spec.clone()).await })
            .map_err(backend_error)
    }

    /// Starts the pool to learn what its launchers map the sandbox user to.
    fn host_ids(&self) -> Option<(u32, u32)> {
        self.handle
            .block_on(self.pool.get())
            .ok()
            .and_then(WorkerPool::host_ids)
    }
}
