//! The Docker backend: the same [`RunSpec`] run in a container through the Engine API
//! (bollard), returning the same [`RunResult`] contract with `backend: "docker"`. It exists
//! so users can compare the two modes side by side; the native sandbox is the product.
//!
//! One run, in order:
//!
//! ```text
//!  validate spec, build the stdin prefix (input files as a tar)       entry.rs
//!  create container  (labels kakoi.owner/kakoi.run; see container_body for every setting)
//!  attach stdin+stdout+stderr, start            ── timer starts at start ──
//!  feed header + tar + stdin, half-close ────────▶ kakoi-entry unpacks into /work,
//!                                                 prints its status line, execs the payload
//!  read frames: status line, stdout/stderr with caps (drain and drop the rest)
//!  wait ─ exit code; deadline ─ kill (timeout); SIGINT/TERM/HUP, cancel fd or future ─ kill
//!  (cancelled)    [collecting: end markers + listing ─ tar exec ─ files; kill]   collect.rs
//!  inspect (OOMKilled, cgroupns), remove the container (force)
//!  read the per-run parent cgroup (peak memory, CPU), remove it      accounting.rs
//! ```
//!
//! The container is removed on every path: errors after creation still remove it, a future
//! dropped mid-run removes it from a spawned task, and containers of kakoi processes that
//! died (SIGKILL) are removed when the next [`DockerClient`] connects (owner.rs).
//!
//! Returned files (`RunSpec::collect`): `/work` is a tmpfs inside the container's mount
//! namespace, gone when the container stops, and the archive API cannot read it even while
//! the container runs (`GET /containers/{id}/archive?path=/work/out` is "could not find the
//! file" on Docker 20.10: the daemon looks at the layers, not the container's mounts). So with
//! collection asked for, the container runs without docker-init and the entry is its pid 1:
//! it runs the payload as its child, then kills every other process, prints an end marker and
//! a listing of the output directory, and waits; `drive` splits the markers off the streams,
//! applies the native walker's rules to the listing, reads the chosen files with one `tar`
//! exec, then kills and removes the container as on every path. At the deadline (or on a
//! cancel) an exec kills every process but the entry, so a timed-out run returns its files
//! too, as in native mode. See collect.rs and `docker/worker/kakoi-entry`.

mod accounting;
pub mod collect;
pub mod entry;
pub mod image;
mod owner;

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as ApiError;
use bollard::models::{
    ContainerCreateBody, HostConfig, HostConfigCgroupnsModeEnum, HostConfigLogConfig, Mount,
    MountBindOptions, MountBindOptionsPropagationEnum, MountTypeEnum, ResourcesUlimits,
};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, KillContainerOptions, ListContainersOptions,
    RemoveContainerOptions, WaitContainerOptions,
};
use futures_util::StreamExt as _;
use tokio::io::AsyncWriteExt as _;

use crate::backend::{Backend, BackendError};
use crate::result::{
    CgroupIsolation, Isolation, Outcome, OutputFile, RunResult, SetupFailure, Status, Timings,
    encode_output, signal_name,
};
use crate::sandbox::{RunOptions, SANDBOX_PATH};
use crate::spec::{
    COLLECT_MAX_DEPTH, Collect, Network, RunSpec, SANDBOX_ID, Source, SpecError, ValidSpec, WORKDIR,
};
use entry::{EntryStatus, StatusLine};
use owner::Owner;

/// The worker image a run uses unless told otherwise (built by `kakoi docker build-image`):
/// `kakoi-worker:<version>-<recipe digest>`, so builds of kakoi with different worker recipes
/// (entry protocols) each have their own image on a shared engine.
pub const DEFAULT_IMAGE: &str = concat!(
    "kakoi-worker:",
    env!("CARGO_PKG_VERSION"),
    "-",
    env!("KAKOI_WORKER_RECIPE")
);
/// Container label: the kakoi process that owns it (`<pid>.<start>@<boot id>`).
pub const LABEL_OWNER: &str = "kakoi.owner";
/// Container label: the run's name.
pub const LABEL_RUN: &str = "kakoi.run";
/// Image label: the entry protocol version of a worker image.
pub const LABEL_WORKER: &str = "kakoi.worker";
/// Image label: digest of the recipe (Dockerfile + entry script) it was built from.
pub const LABEL_RECIPE: &str = "kakoi.recipe";

/// How long output may keep arriving after the container exited before kakoi stops reading
/// (the streams close when the container's processes are gone; this only guards a stuck
/// connection).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);
/// Collecting: how long the entry may take to list the files after kakoi killed the
/// payload at its deadline (or on a cancel) before the container is killed instead.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Collecting: how long reading the chosen files may take.
const READ_FILES_TIMEOUT: Duration = Duration::from_secs(30);

/// Settings of a [`DockerClient`].
#[derive(Debug, Clone)]
pub struct DockerConfig {
    /// Worker image (must carry the `kakoi.worker` label).
    pub image: String,
    /// On SIGINT, SIGTERM or SIGHUP during a run, kill and remove the container and return
    /// status `cancelled` (the CLI sets this; a library embedder decides for itself, since
    /// tokio keeps its signal handlers installed for the rest of the process).
    pub cancel_on_signals: bool,
    /// Host cgroup root, for the per-run parent cgroups (a parameter for tests).
    pub cgroup_root: PathBuf,
}

impl Default for DockerConfig {
    fn default() -> Self {
        DockerConfig {
            image: DEFAULT_IMAGE.into(),
            cancel_on_signals: false,
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
        }
    }
}

/// Errors of the Docker backend. A payload that fails is not an error: it is a
/// [`RunResult`] with a status.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// The engine does not answer.
    #[error("cannot reach the Docker engine at {endpoint}")]
    Unreachable {
        /// `DOCKER_HOST` or the default socket.
        endpoint: String,
        /// Cause.
        #[source]
        source: ApiError,
    },
    /// The worker image does not exist in the engine.
    #[error("docker image {image} does not exist")]
    ImageMissing {
        /// The image.
        image: String,
    },
    /// The image exists but was not built by `kakoi docker build-image`.
    #[error(
        "docker image {image} is not a kakoi worker image (label {LABEL_WORKER}={} missing)",
        entry::PROTOCOL
    )]
    NotWorker {
        /// The image.
        image: String,
    },
    /// The image was built from another version of the worker recipe.
    #[error(
        "docker image {image} was built from another worker recipe ({found}, this kakoi has {expected})"
    )]
    StaleWorker {
        /// The image.
        image: String,
        /// Its recipe label.
        found: String,
        /// This build's recipe digest.
        expected: String,
    },
    /// The request is invalid.
    #[error("invalid run request")]
    Spec(#[from] SpecError),
    /// The Engine API takes JSON strings.
    #[error("the docker backend needs UTF-8 {what}: {value:?}")]
    NotUtf8 {
        /// Which field.
        what: &'static str,
        /// The value.
        value: OsString,
    },
    /// The request asks for something this backend does not do yet.
    #[error("the docker backend does not support {what} yet")]
    Unsupported {
        /// The feature.
        what: &'static str,
    },
    /// An input file or stdin could not be read.
    #[error(transparent)]
    Input(#[from] entry::InputError),
    /// An Engine API call failed.
    #[error("docker engine: cannot {what}")]
    Api {
        /// What kakoi was doing.
        what: String,
        /// Cause.
        #[source]
        source: ApiError,
    },
    /// The async runtime could not be created.
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    /// [`RunOptions::cancel`] is not an open fd.
    #[error("cannot use cancel fd {fd}")]
    CancelFd {
        /// The fd.
        fd: i32,
        /// Cause.
        #[source]
        source: nix::errno::Errno,
    },
    /// The synchronous API was called from inside an async runtime.
    #[error("DockerBackend::run_with was called inside an async runtime; use DockerClient::run")]
    InsideRuntime,
    /// Building the worker image failed.
    #[error(transparent)]
    Image(#[from] image::ImageError),
}

impl DockerError {
    /// A remedy, where one is known.
    pub fn hint(&self) -> Option<String> {
        match self {
            DockerError::Unreachable { .. } => Some(
                "start the engine (as root: dockerd --bridge=none --iptables=false, or systemctl start docker; docker/start-engine.sh does it idempotently) or set DOCKER_HOST".into(),
            ),
            DockerError::ImageMissing { image }
            | DockerError::NotWorker { image }
            | DockerError::StaleWorker { image, .. } => {
                Some(format!("build it: kakoi docker build-image --tag {image}"))
            }
            DockerError::Image(e) => e.hint(),
            _ => None,
        }
    }
}

fn api(what: impl Into<String>) -> impl FnOnce(ApiError) -> DockerError {
    let what = what.into();
    move |source| DockerError::Api { what, source }
}

/// Facts about the engine, read once when connecting.
#[derive(Debug, Clone)]
pub struct Engine {
    /// Where it was reached.
    pub endpoint: String,
    /// Server version.
    pub version: String,
    /// API version in use.
    pub api_version: String,
    /// `cgroupfs` or `systemd`.
    pub cgroup_driver: String,
    /// `1` or `2`.
    pub cgroup_version: String,
    /// The daemon remaps container ids (userns-remap).
    pub userns_remap: bool,
}

/// A connection to the engine that runs requests asynchronously. Use it from async code
/// (the HTTP manager); [`DockerBackend`] wraps it for synchronous callers.
#[derive(Debug)]
pub struct DockerClient {
    docker: Docker,
    config: DockerConfig,
    engine: Engine,
    owner: Owner,
    counter: AtomicU64,
}

/// The endpoint bollard connects to, for messages.
fn endpoint() -> String {
    std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into())
}

/// Connect to the engine (`DOCKER_HOST` or the default socket) and negotiate the API
/// version.
pub async fn connect_engine() -> Result<(Docker, Engine), DockerError> {
    let endpoint = endpoint();
    let unreachable = |source| DockerError::Unreachable {
        endpoint: endpoint.clone(),
        source,
    };
    let docker = Docker::connect_with_defaults()
        .map_err(unreachable)?
        // Runs enforce their own deadlines; the client's timeout only covers requests.
        .with_timeout(Duration::from_secs(3600))
        .negotiate_version()
        .await
        .map_err(unreachable)?;
    let info = docker.info().await.map_err(unreachable)?;
    let engine = Engine {
        endpoint: endpoint.clone(),
        version: info.server_version.clone().unwrap_or_default(),
        api_version: docker.client_version().to_string(),
        cgroup_driver: info
            .cgroup_driver
            .map(|d| d.to_string())
            .unwrap_or_default(),
        cgroup_version: info
            .cgroup_version
            .map(|v| v.to_string())
            .unwrap_or_default(),
        userns_remap: info
            .security_options
            .unwrap_or_default()
            .iter()
            .any(|o| o.contains("name=userns")),
    };
    Ok((docker, engine))
}

/// Check that `image` exists and is a worker image of this kakoi's recipe.
pub async fn check_worker_image(docker: &Docker, image: &str) -> Result<(), DockerError> {
    match docker.inspect_image(image).await {
        Ok(inspect) => {
            let labels = inspect.config.and_then(|c| c.labels).unwrap_or_default();
            if labels.get(LABEL_WORKER).map(String::as_str) != Some(entry::PROTOCOL) {
                return Err(DockerError::NotWorker {
                    image: image.into(),
                });
            }
            let expected = entry::recipe_digest();
            match labels.get(LABEL_RECIPE) {
                Some(found) if *found == expected => Ok(()),
                found => Err(DockerError::StaleWorker {
                    image: image.into(),
                    found: found.cloned().unwrap_or_else(|| "none".into()),
                    expected,
                }),
            }
        }
        Err(ApiError::DockerResponseServerError {
            status_code: 404, ..
        }) => Err(DockerError::ImageMissing {
            image: image.into(),
        }),
        Err(e) => Err(api(format!("inspect image {image}"))(e)),
    }
}

/// What the output loop observed.
#[derive(Debug, Default)]
struct Observed {
    stdout: Capture,
    stderr: Capture,
    status_line: StatusLine,
    exec_at: Option<Instant>,
    /// When the payload ended: the container's exit, or (collecting) the end marker.
    exit_at: Option<Instant>,
    /// The container's exit code.
    exit_code: Option<i64>,
    /// Collecting: the payload's exit status, from the end marker.
    payload_status: Option<i64>,
    timed_out: bool,
    cancelled: bool,
    /// The signal that cancelled the run.
    cancel_signal: Option<i32>,
    /// Collect mode: the end markers and the listing.
    collecting: Option<Collecting>,
    /// Returned files.
    files: Vec<OutputFile>,
}

/// Collect mode's view of the output streams (see collect.rs).
#[derive(Debug)]
struct Collecting {
    stdout: collect::Marker,
    stderr: collect::Marker,
    listing: collect::ListingStream,
}

impl Collecting {
    fn new(nonce: &str) -> Collecting {
        Collecting {
            stdout: collect::Marker::new(nonce),
            stderr: collect::Marker::new(nonce),
            listing: collect::ListingStream::default(),
        }
    }

    /// Both streams are past their markers and the listing is complete.
    fn listed(&self) -> bool {
        self.stdout.found() && self.stderr.found() && self.listing.complete()
    }
}

impl Observed {
    /// The payload has not ended as far as the streams tell.
    fn payload_running(&self) -> bool {
        !self.collecting.as_ref().is_some_and(|c| c.stdout.found())
    }

    fn stdout_frame(&mut self, message: &[u8]) {
        let had_status = self.status_line.status().is_some();
        let payload = self.status_line.feed(message);
        if !had_status && self.status_line.status().is_some() {
            self.exec_at = Some(Instant::now());
        }
        match &mut self.collecting {
            None => self.stdout.push(payload.as_slice()),
            Some(c) => {
                let was_found = c.stdout.found();
                let (before, after) = c.stdout.feed(payload.as_slice());
                self.stdout.push(&before);
                if c.stdout.found() {
                    if !was_found {
                        self.exit_at = Some(Instant::now());
                    }
                    c.listing.push(&after);
                }
            }
        }
    }

    fn stderr_frame(&mut self, message: &[u8]) {
        match &mut self.collecting {
            None => self.stderr.push(message),
            Some(c) => {
                // What the entry writes after its marker is not the payload's.
                let (before, _after) = c.stderr.feed(message);
                self.stderr.push(&before);
            }
        }
    }
}

/// One output stream with its cap.
#[derive(Debug, Default)]
struct Capture {
    kept: Vec<u8>,
    limit: usize,
    truncated: bool,
    passthrough: Option<Stream>,
}

#[derive(Debug, Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

impl Capture {
    fn new(limit: u64, passthrough: Option<Stream>) -> Capture {
        Capture {
            kept: Vec::new(),
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            truncated: false,
            passthrough,
        }
    }

    /// Keep what fits under the cap, drop (and flag) the rest.
    fn push(&mut self, bytes: &[u8]) {
        let room = self.limit.saturating_sub(self.kept.len());
        let take = room.min(bytes.len());
        self.kept.extend_from_slice(&bytes[..take]);
        if take < bytes.len() {
            self.truncated = true;
        }
        if take > 0 {
            // Passthrough is best effort: a closed terminal must not fail the run.
            let _ = match self.passthrough {
                Some(Stream::Stdout) => std::io::stdout().write_all(&bytes[..take]),
                Some(Stream::Stderr) => std::io::stderr().write_all(&bytes[..take]),
                None => Ok(()),
            };
        }
    }
}

/// Removes the container if the run's future is dropped before it did (a server cancelled
/// the request): the removal runs as a task on the current runtime.
struct RemoveOnDrop {
    docker: Docker,
    id: Option<String>,
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else {
            return;
        };
        let docker = self.docker.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    let _ = remove_container(&docker, &id).await;
                });
            }
            Err(_) => tracing::warn!("container {id} left for the next stale-container cleanup"),
        }
    }
}

async fn remove_container(docker: &Docker, id: &str) -> Result<(), ApiError> {
    let options = RemoveContainerOptions {
        force: true,
        v: true,
        link: false,
    };
    match docker.remove_container(id, Some(options)).await {
        Err(ApiError::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(()),
        other => other,
    }
}

impl DockerClient {
    /// Connect, check the worker image, and remove containers and parent cgroups left by
    /// kakoi processes that died.
    pub async fn connect(config: DockerConfig) -> Result<DockerClient, DockerError> {
        let client = DockerClient::connect_unchecked(config).await?;
        check_worker_image(&client.docker, &client.config.image).await?;
        Ok(client)
    }

    /// Connect and clean up like [`DockerClient::connect`], without checking the image
    /// (for housekeeping).
    pub async fn connect_unchecked(config: DockerConfig) -> Result<DockerClient, DockerError> {
        let (docker, engine) = connect_engine().await?;
        let client = DockerClient {
            docker,
            config,
            engine,
            owner: Owner::current(),
            counter: AtomicU64::new(0),
        };
        if let Err(e) = client.clean_stale().await {
            tracing::warn!("cannot clean up stale containers: {e}");
        }
        Ok(client)
    }

    /// Facts about the engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The image runs use.
    pub fn image(&self) -> &str {
        &self.config.image
    }

    /// Remove every container labelled with an owner that is gone (see
    /// [`owner::Owner::is_stale`]) and the stale per-run parent cgroups. Returns how many
    /// containers were removed.
    pub async fn clean_stale(&self) -> Result<usize, DockerError> {
        let filters = HashMap::from([("label".to_string(), vec![LABEL_OWNER.to_string()])]);
        let list = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(api("list kakoi's containers"))?;
        let proc = Path::new("/proc");
        let mut removed = 0;
        for container in list {
            let (Some(id), Some(labels)) = (container.id, container.labels) else {
                continue;
            };
            let Some(owner) = labels.get(LABEL_OWNER).and_then(|l| Owner::parse(l)) else {
                continue;
            };
            let running = container.state.map(|s| s.to_string()) == Some("running".into());
            if owner.is_stale(&self.owner, proc, running) {
                tracing::info!("removing stale container {id} of {}", owner.label());
                remove_container(&self.docker, &id)
                    .await
                    .map_err(api(format!("remove stale container {id}")))?;
                removed += 1;
            }
        }
        accounting::cleanup_stale(&self.config.cgroup_root, proc, &self.owner);
        Ok(removed)
    }

    /// Run one request and wait for it.
    pub async fn run(&self, spec: &RunSpec, options: RunOptions) -> Result<RunResult, DockerError> {
        Ok(self.run_reporting_signal(spec, options).await?.0)
    }

    /// [`DockerClient::run`], also returning the signal that cancelled the run (with
    /// [`DockerConfig::cancel_on_signals`]), so a CLI can exit with 128 + it.
    pub async fn run_reporting_signal(
        &self,
        spec: &RunSpec,
        options: RunOptions,
    ) -> Result<(RunResult, Option<i32>), DockerError> {
        self.run_until(spec, options, std::future::pending()).await
    }

    /// [`DockerClient::run`] that is cancelled when `cancel` completes (for example a
    /// cancellation token of a server whose client went away): the container is killed and
    /// removed as on every path, and the result has the status `cancelled`.
    pub async fn run_cancellable(
        &self,
        spec: &RunSpec,
        options: RunOptions,
        cancel: impl std::future::Future<Output = ()>,
    ) -> Result<RunResult, DockerError> {
        Ok(self.run_until(spec, options, cancel).await?.0)
    }

    async fn run_until(
        &self,
        spec: &RunSpec,
        options: RunOptions,
        cancel: impl std::future::Future<Output = ()>,
    ) -> Result<(RunResult, Option<i32>), DockerError> {
        let started = Instant::now();
        let spec = spec.validate()?;
        let collect_dir = match &spec.collect {
            None => None,
            Some(c) => match c.dir.to_str() {
                Some(dir) if !dir.contains('\n') => Some(dir.to_owned()),
                _ => {
                    return Err(DockerError::NotUtf8 {
                        what: "collect directory (without a newline)",
                        value: c.dir.clone().into_os_string(),
                    });
                }
            },
        };
        let argv = spec
            .argv
            .iter()
            .map(|a| {
                a.to_str()
                    .map(str::to_owned)
                    .ok_or_else(|| DockerError::NotUtf8 {
                        what: "argument",
                        value: a.clone(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let nonce = collect_dir
            .as_ref()
            .map(|_| uuid::Uuid::new_v4().simple().to_string());
        let header = collect_dir
            .as_deref()
            .zip(nonce.as_deref())
            .map(|(dir, nonce)| entry::CollectHeader {
                nonce,
                // find's depth counts the output directory as 0: list one level below the
                // deepest directory the walker enters, so it can report `depth`.
                max_depth: COLLECT_MAX_DEPTH + 1,
                dir,
            });
        let prefix = entry::input_stream_prefix(&spec.files, header.as_ref())?;
        let stdin = match &spec.stdin {
            None => Vec::new(),
            Some(Source::Bytes(bytes)) => bytes.clone(),
            Some(Source::Path(path)) => {
                std::fs::read(path).map_err(|source| entry::InputError {
                    path: path.display().to_string(),
                    source,
                })?
            }
        };
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let name = format!("kakoi-{}.{}-{n}", self.owner.pid, self.owner.start);
        let parent = (self.engine.cgroup_driver == "cgroupfs")
            .then(|| accounting::RunParent::new(&self.config.cgroup_root, &self.owner, n));
        let body = self.container_body(&spec, argv, &name, parent.as_ref());
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.clone()),
                    platform: String::new(),
                }),
                body,
            )
            .await
            .map_err(api("create the container"))?;
        let id = created.id;
        let mut guard = RemoveOnDrop {
            docker: self.docker.clone(),
            id: Some(id.clone()),
        };

        let observed = self
            .drive(
                &id,
                &spec,
                Input {
                    prefix,
                    stdin,
                    nonce,
                },
                options,
                cancel,
            )
            .await;
        let inspected = self
            .docker
            .inspect_container(
                &id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await;
        let cleanup_started = Instant::now();
        let removed = remove_container(&self.docker, &id).await;
        guard.id = None;
        let stats = parent.as_ref().and_then(|p| {
            let stats = p.stats();
            p.remove();
            stats
        });
        let observed = observed?;
        removed.map_err(api(format!("remove container {id}")))?;
        let inspected = inspected.map_err(api(format!("inspect container {id}")))?;
        let state = inspected.state.unwrap_or_default();
        let cgroupns_private = inspected
            .host_config
            .and_then(|h| h.cgroupns_mode)
            .is_some_and(|m| m == HostConfigCgroupnsModeEnum::PRIVATE);
        let facts = Facts {
            oom_killed: state.oom_killed.unwrap_or(false),
            exit_code: observed
                .payload_status
                .or(observed.exit_code)
                .or(state.exit_code),
            stats,
            cgroupns_private,
        };
        let cleanup_ms = ms(cleanup_started.elapsed());
        let cancel_signal = observed.cancel_signal;
        Ok((
            self.assemble(&spec, observed, facts, started, cleanup_ms),
            cancel_signal,
        ))
    }

    /// Every setting of the container, in one place.
    fn container_body(
        &self,
        spec: &ValidSpec,
        argv: Vec<String>,
        name: &str,
        parent: Option<&accounting::RunParent>,
    ) -> ContainerCreateBody {
        let tmp = spec.tmp_size;
        let tmpfs = HashMap::from([
            // exec: the native sandbox lets payloads run what they compile in /tmp and /work.
            (
                "/tmp".to_string(),
                format!("rw,exec,nosuid,nodev,size={tmp},mode=1777"),
            ),
            (
                WORKDIR.to_string(),
                format!(
                    "rw,exec,nosuid,nodev,size={tmp},mode=0755,uid={SANDBOX_ID},gid={SANDBOX_ID}"
                ),
            ),
        ]);
        let ulimit = |name: &str, soft: u64, hard: u64| ResourcesUlimits {
            name: Some(name.into()),
            soft: Some(i64::try_from(soft).unwrap_or(i64::MAX)),
            hard: Some(i64::try_from(hard).unwrap_or(i64::MAX)),
        };
        let mut ulimits = vec![
            ulimit("core", 0, 0),
            ulimit("nofile", spec.nofile, spec.nofile),
            ulimit("fsize", spec.tmp_size, spec.tmp_size),
        ];
        if let Some(cpu) = spec.cpu_time {
            let secs = cpu.as_secs_f64().ceil() as u64;
            ulimits.push(ulimit("cpu", secs, secs + 1));
        }
        let bind = |b: &crate::spec::Bind, read_only: bool| Mount {
            target: Some(b.sandbox.display().to_string()),
            source: Some(b.host.display().to_string()),
            typ: Some(MountTypeEnum::BIND),
            read_only: Some(read_only),
            bind_options: Some(MountBindOptions {
                propagation: Some(MountBindOptionsPropagationEnum::RPRIVATE),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mounts: Vec<Mount> = spec
            .binds_ro
            .iter()
            .map(|b| bind(b, true))
            .chain(spec.binds_rw.iter().map(|b| bind(b, false)))
            .collect();
        let memory = i64::try_from(spec.memory).unwrap_or(i64::MAX);
        let host_config = HostConfig {
            network_mode: Some(match spec.network {
                Network::None => "none".into(),
                Network::Host => "host".into(),
            }),
            readonly_rootfs: Some(true),
            tmpfs: Some(tmpfs),
            shm_size: Some(i64::try_from(spec.tmp_size).unwrap_or(i64::MAX)),
            memory: Some(memory),
            // Swap 0: memory+swap equals memory.
            memory_swap: Some(memory),
            pids_limit: Some(i64::try_from(spec.pids).unwrap_or(i64::MAX)),
            nano_cpus: Some(i64::try_from(spec.cpu_millicores * 1_000_000).unwrap_or(i64::MAX)),
            ulimits: Some(ulimits),
            cap_drop: Some(vec!["ALL".into()]),
            // No seccomp option: Docker's default profile applies.
            security_opt: Some(vec!["no-new-privileges:true".into()]),
            // docker-init (tini) as pid 1 reaps orphans and forwards signals, like kakoi's init.
            // Collecting, the entry is pid 1 instead (it outlives the payload, see entry.rs).
            init: Some(spec.collect.is_none()),
            // Output is taken from the attached streams only; nothing is kept on disk.
            log_config: Some(HostConfigLogConfig {
                typ: Some("none".into()),
                config: None,
            }),
            mounts: (!mounts.is_empty()).then_some(mounts),
            cgroup_parent: parent.map(|p| p.cgroup_parent()),
            ..Default::default()
        };
        let env = environment(spec);
        ContainerCreateBody {
            image: Some(self.config.image.clone()),
            entrypoint: Some(vec![entry::ENTRY_PATH.into()]),
            cmd: Some(argv),
            env: Some(env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()),
            user: Some(format!("{SANDBOX_ID}:{SANDBOX_ID}")),
            working_dir: Some(WORKDIR.into()),
            hostname: (spec.network == Network::None).then(|| "sandbox".into()),
            labels: Some(HashMap::from([
                (LABEL_OWNER.to_string(), self.owner.label()),
                (LABEL_RUN.to_string(), name.to_string()),
            ])),
            attach_stdin: Some(true),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            open_stdin: Some(true),
            // The engine closes the payload's stdin when our side half-closes.
            stdin_once: Some(true),
            tty: Some(false),
            host_config: Some(host_config),
            ..Default::default()
        }
    }

    /// Attach, start, feed stdin, read output, enforce the deadline, wait for the exit (or,
    /// collecting, for the entry's listing; then read the files and kill the container).
    async fn drive(
        &self,
        id: &str,
        spec: &ValidSpec,
        input: Input,
        options: RunOptions,
        cancel: impl std::future::Future<Output = ()>,
    ) -> Result<Observed, DockerError> {
        let Input {
            prefix,
            stdin,
            nonce,
        } = input;
        let mut cancel = std::pin::pin!(cancel);
        let attached = self
            .docker
            .attach_container(
                id,
                Some(AttachContainerOptions {
                    stdin: true,
                    stdout: true,
                    stderr: true,
                    stream: true,
                    logs: false,
                    detach_keys: None,
                }),
            )
            .await
            .map_err(api("attach to the container"))?;
        let mut output = attached.output;
        let mut input = attached.input;
        self.docker
            .start_container(id, None::<bollard::query_parameters::StartContainerOptions>)
            .await
            .map_err(api("start the container"))?;
        let deadline = tokio::time::Instant::now() + spec.timeout;
        let feeder = tokio::spawn(async move {
            // A payload that exits without reading its stdin closes the pipe: not an error.
            let _ = async {
                input.write_all(&prefix).await?;
                input.write_all(&stdin).await?;
                input.shutdown().await
            }
            .await;
        });
        let mut signals = if self.config.cancel_on_signals {
            Some(Signals::new().map_err(DockerError::Runtime)?)
        } else {
            None
        };
        let passthrough = options.passthrough;
        let mut o = Observed {
            stdout: Capture::new(spec.output_limit, passthrough.then_some(Stream::Stdout)),
            stderr: Capture::new(spec.output_limit, passthrough.then_some(Stream::Stderr)),
            collecting: nonce.as_deref().map(Collecting::new),
            ..Observed::default()
        };
        let mut wait = self.docker.wait_container(
            id,
            Some(WaitContainerOptions {
                condition: "not-running".into(),
            }),
        );
        let mut output_done = false;
        let mut drain_until: Option<tokio::time::Instant> = None;
        // Collecting, after the deadline or a cancel: how long the entry may take to list.
        let mut stop_until: Option<tokio::time::Instant> = None;
        while !(output_done && o.exit_code.is_some()) {
            if o.collecting.as_ref().is_some_and(Collecting::listed) {
                break;
            }
            let running = !o.timed_out && !o.cancelled && o.exit_code.is_none();
            tokio::select! {
                frame = output.next(), if !output_done => match frame {
                    Some(Ok(LogOutput::StdOut { message })) => o.stdout_frame(&message),
                    Some(Ok(LogOutput::StdErr { message })) => o.stderr_frame(&message),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::warn!("container output stream failed: {e}");
                        output_done = true;
                    }
                    None => output_done = true,
                },
                exit = wait.next(), if o.exit_code.is_none() => {
                    o.exit_at.get_or_insert_with(Instant::now);
                    o.exit_code = Some(match exit {
                        Some(Ok(response)) => response.status_code,
                        Some(Err(ApiError::DockerContainerWaitError { code, .. })) => code,
                        Some(Err(e)) => return Err(api("wait for the container")(e)),
                        None => -1,
                    });
                    drain_until = Some(tokio::time::Instant::now() + DRAIN_AFTER_EXIT);
                }
                () = tokio::time::sleep_until(deadline), if running && o.payload_running() => {
                    o.timed_out = true;
                    stop_until = self.stop(id, spec, &o).await?;
                }
                () = sleep_until_opt(drain_until), if drain_until.is_some() && !output_done => {
                    tracing::warn!("output still open {DRAIN_AFTER_EXIT:?} after the container exited; stopped reading");
                    output_done = true;
                }
                () = sleep_until_opt(stop_until), if stop_until.is_some() && o.exit_code.is_none() => {
                    tracing::warn!("the entry did not list the returned files within {STOP_GRACE:?}; killing the container");
                    stop_until = None;
                    self.kill(id).await?;
                }
                signal = wait_signal(&mut signals), if running && o.payload_running() => {
                    o.cancelled = true;
                    o.cancel_signal = Some(signal);
                    stop_until = self.stop(id, spec, &o).await?;
                }
                () = &mut cancel, if running && o.payload_running() => {
                    o.cancelled = true;
                    stop_until = self.stop(id, spec, &o).await?;
                }
            }
        }
        feeder.abort();
        if o.status_line.status().is_none() {
            // The stream ended inside a status line: the bytes belong to whoever wrote them.
            let partial = o.status_line.take_partial();
            o.stdout.push(&partial);
        }
        if let Some(c) = &mut o.collecting {
            let (out, err) = (c.stdout.finish(), c.stderr.finish());
            o.stdout.push(&out);
            o.stderr.push(&err);
        }
        let _ = std::io::stdout().flush();
        if let (Some(c), Some(caps)) = (&o.collecting, &spec.collect)
            && c.listed()
        {
            o.payload_status = c.listing.status();
            o.files = self.read_files(id, caps, c).await;
            // Done with the container: kill it and wait for the engine to see it stop, so
            // `inspect` has its final state (OOMKilled).
            self.kill(id).await?;
            if o.exit_code.is_none() {
                let _ = tokio::time::timeout(DRAIN_AFTER_EXIT, wait.next()).await;
            }
        }
        Ok(o)
    }

    /// End the payload at its deadline or on a cancel. Without collection, or before the
    /// payload started, the container is killed. Collecting, every process but the entry
    /// (pid 1) is killed by an exec, so the entry lists the files as after a normal end;
    /// returns how long it may take. The pids limit is raised first by a few, so a payload
    /// that used up its limit cannot stop the exec (it dies right after).
    async fn stop(
        &self,
        id: &str,
        spec: &ValidSpec,
        o: &Observed,
    ) -> Result<Option<tokio::time::Instant>, DockerError> {
        if o.collecting.is_none() || o.exec_at.is_none() {
            self.kill(id).await?;
            return Ok(None);
        }
        let pids = i64::try_from(spec.pids).unwrap_or(i64::MAX - 8);
        let update = bollard::models::ContainerUpdateBody {
            pids_limit: Some(pids + 8),
            ..Default::default()
        };
        if let Err(e) = self.docker.update_container(id, update).await {
            tracing::warn!("cannot raise the pids limit of {id} to stop its payload: {e}");
        }
        let killed = async {
            let exec = self
                .docker
                .create_exec(
                    id,
                    bollard::models::ExecConfig {
                        cmd: Some(vec!["sh".into(), "-c".into(), "kill -KILL -1".into()]),
                        user: Some(format!("{SANDBOX_ID}:{SANDBOX_ID}")),
                        attach_stdout: Some(false),
                        attach_stderr: Some(false),
                        ..Default::default()
                    },
                )
                .await?;
            self.docker
                .start_exec(
                    &exec.id,
                    Some(bollard::exec::StartExecOptions {
                        detach: true,
                        ..Default::default()
                    }),
                )
                .await
                .map(|_| ())
        }
        .await;
        match killed {
            Ok(()) => Ok(Some(tokio::time::Instant::now() + STOP_GRACE)),
            Err(e) => {
                tracing::warn!(
                    "cannot stop the payload of {id} through an exec ({e}); killing the container"
                );
                self.kill(id).await?;
                Ok(None)
            }
        }
    }

    /// Apply the returned-files rules to the entry's listing and read the chosen files with
    /// one `tar` exec (see collect.rs). Never fails: what cannot be read is `unreadable`.
    async fn read_files(&self, id: &str, caps: &Collect, c: &Collecting) -> Vec<OutputFile> {
        let mut collected = c.listing.listing().walk(caps);
        if collected.deferred.is_empty() {
            return collected.files;
        }
        let cap = collect::archive_cap(&collected.files, &collected.deferred);
        let names = collect::tar_names(&collected.deferred);
        let dir = format!("{WORKDIR}/{}", caps.dir.display());
        match tokio::time::timeout(READ_FILES_TIMEOUT, self.read_archive(id, &dir, names, cap))
            .await
        {
            Ok(Ok(archive)) => collect::fill(&mut collected, &archive),
            Ok(Err(e)) => {
                tracing::warn!("cannot read the returned files of {id}: {e}");
                collect::give_up(&mut collected);
            }
            Err(_) => {
                tracing::warn!(
                    "reading the returned files of {id} took more than {READ_FILES_TIMEOUT:?}"
                );
                collect::give_up(&mut collected);
            }
        }
        collected.files
    }

    /// `tar -c` of `names` (NUL-separated, relative to `dir`) in the container, as uid 1000;
    /// at most `cap` bytes of it.
    async fn read_archive(
        &self,
        id: &str,
        dir: &str,
        names: Vec<u8>,
        cap: usize,
    ) -> Result<Vec<u8>, ApiError> {
        let cmd = [
            "tar",
            "-c",
            "-f",
            "-",
            "--no-recursion",
            "--hard-dereference",
            "--null",
            "--verbatim-files-from",
            "--no-unquote",
            "-C",
            dir,
            "-T",
            "-",
        ];
        let exec = self
            .docker
            .create_exec(
                id,
                bollard::models::ExecConfig {
                    cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
                    user: Some(format!("{SANDBOX_ID}:{SANDBOX_ID}")),
                    working_dir: Some(WORKDIR.into()),
                    attach_stdin: Some(true),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await?;
        let started = self.docker.start_exec(&exec.id, None).await?;
        let bollard::exec::StartExecResults::Attached {
            mut output,
            mut input,
        } = started
        else {
            return Ok(Vec::new());
        };
        let writer = tokio::spawn(async move {
            let _ = async {
                input.write_all(&names).await?;
                input.shutdown().await
            }
            .await;
        });
        let mut archive = Vec::new();
        while let Some(frame) = output.next().await {
            if let LogOutput::StdOut { message } = frame? {
                let room = cap.saturating_sub(archive.len());
                archive.extend_from_slice(&message[..message.len().min(room)]);
                if message.len() > room {
                    tracing::warn!("the archive of returned files went over {cap} bytes; cut");
                    break;
                }
            }
        }
        writer.abort();
        Ok(archive)
    }

    async fn kill(&self, id: &str) -> Result<(), DockerError> {
        match self
            .docker
            .kill_container(
                id,
                Some(KillContainerOptions {
                    signal: "SIGKILL".into(),
                }),
            )
            .await
        {
            // 409: not running any more (it exited meanwhile).
            Ok(())
            | Err(ApiError::DockerResponseServerError {
                status_code: 404 | 409,
                ..
            }) => Ok(()),
            Err(e) => Err(api(format!("kill container {id}"))(e)),
        }
    }

    fn assemble(
        &self,
        spec: &ValidSpec,
        o: Observed,
        facts: Facts,
        started: Instant,
        cleanup_ms: f64,
    ) -> RunResult {
        let exit_at = o.exit_at.unwrap_or_else(Instant::now);
        let exec_at = o.exec_at.unwrap_or(exit_at);
        let error = match o.status_line.status() {
            Some(EntryStatus::Ok) => None,
            Some(EntryStatus::Error {
                stage,
                errno,
                detail,
            }) => Some(entry_failure(stage, errno, detail, &self.config.image)),
            None if o.cancelled => None,
            None if o.timed_out => Some(SetupFailure {
                stage: "entry".into(),
                detail: None,
                detail_index: None,
                errno: 0,
                errno_name: String::new(),
                message: "container setup did not finish before the timeout".into(),
                hint: None,
            }),
            None => Some(SetupFailure {
                stage: "entry".into(),
                detail: None,
                detail_index: None,
                errno: 0,
                errno_name: String::new(),
                message: format!(
                    "the container exited with code {} before kakoi-entry reported",
                    facts.exit_code.unwrap_or(-1)
                ),
                hint: Some(format!(
                    "is {} a kakoi worker image? rebuild it with kakoi docker build-image",
                    self.config.image
                )),
            }),
        };
        // Docker reports a payload killed by signal N as exit code 128+N (docker-init does
        // the same for its child), exactly like a payload that exits with 128+N: the two
        // cannot be told apart through the Engine API. kakoi reads 129..=192 as signals.
        let (exit_code, signal) = match (error.is_some(), facts.exit_code) {
            (true, _) | (_, None) => (None, None),
            (false, Some(code)) if (129..=192).contains(&code) => (None, Some((code - 128) as i32)),
            (false, Some(code)) if code >= 0 => (Some(code as i32), None),
            (false, Some(_)) => (None, None),
        };
        let status = Status::classify(&Outcome {
            exit_code,
            signal,
            timed_out: o.timed_out,
            oom_killed: facts.oom_killed,
            truncated: o.stdout.truncated || o.stderr.truncated,
            seccomp_violation: false,
            setup_failed: error.is_some(),
            cancelled: o.cancelled,
        });
        let (stdout, stdout_base64) = encode_output(&o.stdout.kept);
        let (stderr, stderr_base64) = encode_output(&o.stderr.kept);
        let stats = facts.stats.unwrap_or_default();
        let usec_ms = |us: Option<u64>| us.map_or(0.0, |us| us as f64 / 1000.0);
        RunResult {
            status,
            exit_code,
            signal,
            signal_name: signal.map(signal_name),
            stdout,
            stderr,
            stdout_base64,
            stderr_base64,
            stdout_truncated: o.stdout.truncated,
            stderr_truncated: o.stderr.truncated,
            wall_ms: ms(exit_at.saturating_duration_since(exec_at)),
            cpu_user_ms: usec_ms(stats.cpu_user_usec),
            cpu_sys_ms: usec_ms(stats.cpu_system_usec),
            peak_memory_bytes: stats.peak_memory_bytes,
            oom_killed: facts.oom_killed,
            seccomp_syscall: None,
            error,
            timings: Timings {
                env_ms: 0.0,
                setup_ms: ms(exec_at.saturating_duration_since(started)),
                run_ms: ms(exit_at.saturating_duration_since(exec_at)),
                cleanup_ms,
            },
            isolation: self.isolation(spec, facts.cgroupns_private, facts.stats.is_some()),
            backend: "docker".into(),
            files: o.files,
            env: None,
            lint: None,
            format: None,
        }
    }

    /// What Docker applied, from the settings kakoi asked for and the engine's facts.
    fn isolation(&self, spec: &ValidSpec, cgroupns_private: bool, accounted: bool) -> Isolation {
        let mut namespaces: Vec<String> = Vec::new();
        if self.engine.userns_remap {
            namespaces.push("user".into());
        }
        namespaces.push("pid".into());
        if spec.network == Network::None {
            namespaces.push("net".into());
        }
        namespaces.extend(["mount".into(), "ipc".into(), "uts".into()]);
        if cgroupns_private {
            namespaces.push("cgroup".into());
        }
        let mut rlimits = vec![
            ("core".to_string(), 0),
            ("nofile".to_string(), spec.nofile),
            ("fsize".to_string(), spec.tmp_size),
        ];
        if let Some(cpu) = spec.cpu_time {
            rlimits.push(("cpu".into(), cpu.as_secs_f64().ceil() as u64));
        }
        Isolation {
            namespaces,
            uid: SANDBOX_ID,
            gid: SANDBOX_ID,
            // Without userns-remap the container's uid 1000 is the host's uid 1000.
            host_uid: SANDBOX_ID,
            capabilities: vec![],
            no_new_privs: true,
            network: match spec.network {
                Network::None => "none".into(),
                Network::Host => "host".into(),
            },
            // Docker creates a network namespace per container (`--network none`).
            net_namespace: (spec.network == Network::None).then(|| "fresh".into()),
            cgroup: CgroupIsolation {
                // The container runtime put the container in its cgroup.
                attach: Some("engine".into()),
                version: format!("v{}", self.engine.cgroup_version),
                controllers: vec!["memory".into(), "pids".into(), "cpu".into()],
                reason: (!accounted).then(|| {
                    format!(
                        "limits are the engine's; peak memory and CPU time are not available (needs a local engine with the cgroupfs driver, this one uses {})",
                        self.engine.cgroup_driver
                    )
                }),
            },
            rlimits,
            rlimit_fallbacks: vec![],
            seccomp: Some(serde_json::json!({
                "profile": "docker-default",
                "action": "errno (EPERM) for calls outside the profile",
            })),
            landlock: None,
        }
    }
}

/// What is fed to the container's stdin.
struct Input {
    /// The header line and the tar of the input files.
    prefix: Vec<u8>,
    /// The request's stdin.
    stdin: Vec<u8>,
    /// Collecting: the end marker's nonce.
    nonce: Option<String>,
}

/// Engine facts about one finished container.
#[derive(Debug)]
struct Facts {
    oom_killed: bool,
    exit_code: Option<i64>,
    stats: Option<accounting::Stats>,
    cgroupns_private: bool,
}

fn entry_failure(stage: &str, errno: &str, detail: &str, image: &str) -> SetupFailure {
    let hint = match (stage, errno) {
        ("exec", "ENOENT") => Some(format!(
            "the command must exist in the worker image {image} (or in a bind)"
        )),
        ("files", "ENOSPC") => Some("the input files do not fit in /work; raise --tmp-size".into()),
        _ => None,
    };
    SetupFailure {
        stage: stage.into(),
        detail: Some(detail.into()),
        detail_index: None,
        errno: entry::errno_value(errno),
        errno_name: errno.into(),
        message: format!("container setup failed at {stage} ({detail}): {errno}"),
        hint,
    }
}

/// The payload's environment: the native sandbox's base, then the request's variables.
fn environment(spec: &ValidSpec) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("PATH", SANDBOX_PATH),
        ("HOME", WORKDIR),
        ("TMPDIR", "/tmp"),
        ("LANG", "C.UTF-8"),
        ("USER", "sandbox"),
        ("LOGNAME", "sandbox"),
        ("HOSTNAME", "sandbox"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in &spec.env {
        match env.iter_mut().find(|(key, _)| key == k) {
            Some(slot) => slot.1 = v.clone(),
            None => env.push((k.clone(), v.clone())),
        }
    }
    env
}

/// SIGINT, SIGTERM and SIGHUP as one source.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

async fn wait_signal(signals: &mut Option<Signals>) -> i32 {
    match signals {
        Some(s) => {
            tokio::select! {
                _ = s.int.recv() => libc::SIGINT,
                _ = s.term.recv() => libc::SIGTERM,
                _ = s.hup.recv() => libc::SIGHUP,
            }
        }
        None => std::future::pending().await,
    }
}

/// Watches a [`RunOptions::cancel`] fd from a blocking thread with poll(2), as the native
/// sandbox does: readable, hung up or in error means cancel. Dropping the watch (its wake
/// pipe's write end) ends the thread.
struct CancelWatch {
    fired: tokio::task::JoinHandle<bool>,
    _wake: std::os::fd::OwnedFd,
}

impl CancelWatch {
    fn new(fd: std::os::fd::OwnedFd) -> Result<CancelWatch, DockerError> {
        let (wake_read, wake) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|source| DockerError::CancelFd { fd: -1, source })?;
        let fired = tokio::task::spawn_blocking(move || {
            use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
            use std::os::fd::AsFd as _;
            loop {
                let mut fds = [
                    PollFd::new(fd.as_fd(), PollFlags::POLLIN),
                    PollFd::new(wake_read.as_fd(), PollFlags::POLLIN),
                ];
                match poll(&mut fds, PollTimeout::NONE) {
                    Ok(_) => {
                        if fds[0].revents().is_some_and(|r| !r.is_empty()) {
                            return true;
                        }
                        if fds[1].revents().is_some_and(|r| !r.is_empty()) {
                            return false;
                        }
                    }
                    Err(nix::errno::Errno::EINTR) => {}
                    Err(_) => return false,
                }
            }
        });
        Ok(CancelWatch { fired, _wake: wake })
    }

    /// Completes when the fd fired; never if the watch ended otherwise.
    async fn fired(&mut self) {
        if matches!((&mut self.fired).await, Ok(true)) {
            return;
        }
        std::future::pending::<()>().await
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The Docker backend for synchronous callers (the CLI): a [`DockerClient`] with its own
/// single-threaded tokio runtime. Do not call [`Backend::run_with`] from inside an async
/// runtime; use [`DockerClient::run`] there.
#[derive(Debug)]
pub struct DockerBackend {
    runtime: tokio::runtime::Runtime,
    client: DockerClient,
}

/// A current-thread runtime with I/O and timers (no worker threads).
pub fn runtime() -> Result<tokio::runtime::Runtime, DockerError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(DockerError::Runtime)
}

impl DockerBackend {
    /// Connect to the engine and check the image (see [`DockerClient::connect`]).
    pub fn new(config: DockerConfig) -> Result<DockerBackend, DockerError> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(DockerError::InsideRuntime);
        }
        let runtime = runtime()?;
        let client = runtime.block_on(DockerClient::connect(config))?;
        Ok(DockerBackend { runtime, client })
    }

    /// The async client.
    pub fn client(&self) -> &DockerClient {
        &self.client
    }

    /// Run one request (the synchronous form of [`DockerClient::run`]).
    pub fn run(&self, spec: &RunSpec, options: RunOptions) -> Result<RunResult, DockerError> {
        Ok(self.run_reporting_signal(spec, options)?.0)
    }

    /// [`DockerBackend::run`], also returning the signal that cancelled the run.
    pub fn run_reporting_signal(
        &self,
        spec: &RunSpec,
        options: RunOptions,
    ) -> Result<(RunResult, Option<i32>), DockerError> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(DockerError::InsideRuntime);
        }
        // Our own duplicate, so the wait holds an fd it owns (a bad fd fails here).
        let cancel = options
            .cancel
            .map(|fd| {
                crate::sandbox::dup_cloexec(fd)
                    .map_err(|source| DockerError::CancelFd { fd, source })
            })
            .transpose()?;
        self.runtime.block_on(async {
            match cancel {
                None => self.client.run_reporting_signal(spec, options).await,
                Some(fd) => {
                    let mut watch = CancelWatch::new(fd)?;
                    self.client.run_until(spec, options, watch.fired()).await
                }
            }
        })
    }
}

impl Backend for DockerBackend {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn run_with(&self, spec: &RunSpec, options: &RunOptions) -> Result<RunResult, BackendError> {
        Ok(self.run(spec, *options)?)
    }
}
