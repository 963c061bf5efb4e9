//! The HTTP manager (`kakoi serve`) and the job manager it shares with the MCP server.
//!
//! ```text
//!  HTTP (axum, tokio)         MCP (rmcp)
//!        │ http.rs: parse, auth, ids │
//!        └────────────┬──────────────┘
//!          service.rs: Job → policy → ruff → env → run  (ServiceError → HTTP code)
//!            │ env.rs: EnvProvider               │                        │ backend = docker
//!            │ (StoreEnvironments: EnvStore)     │                        ▼
//!            ▼                                   ▼              DockerClient (a permit of
//!   build pool (LazyPool, 1 worker,     pool.rs: WorkerPool —   the run pool, run_external)
//!   sandbox user → BUILD_HOST_ID)       queue, permits, cancel, shutdown
//!            │                                   │  protocol.rs frames over stdin/stdout
//!          kakoi __launch × N  (worker.rs: single-threaded, one Sandbox each; a run ends
//!                               early on a `cancel` frame)
//! ```
//!
//! The tokio process never clones a sandbox: it only fork+execs launchers.

pub mod config;
pub mod env;
pub mod http;
pub mod metrics;
pub mod pool;
pub mod protocol;
pub mod request;
pub mod service;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

pub use config::{
    BackendKind, DockerSettings, EnvSettings, Listen, Policy, RawConfig, RequestedLimits,
    ServerConfig,
};
pub use env::{
    EnvFailure, EnvProvider, EnvSummary, NoEnvironments, ResolvedEnv, StoreEnvironments,
};
pub use pool::{JobError, LazyPool, PoolBackend, PoolConfig, PoolStats, WorkerPool};
pub use service::{ErrorKind, Job, JobFile, Program, Service, ServiceError, ServiceOptions};

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The launcher pool could not start.
    #[error("cannot start the sandbox launchers")]
    Pool(#[from] pool::PoolError),
    /// The listener could not be created.
    #[error("cannot listen on {listen}")]
    Listen {
        /// Where.
        listen: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Another server owns the unix socket.
    #[error("another server is listening on {path}")]
    SocketInUse {
        /// The socket.
        path: std::path::PathBuf,
    },
    /// Serving failed.
    #[error("the server failed")]
    Serve(#[source] std::io::Error),
    /// The environment store could not be opened.
    #[error("cannot open the environment store")]
    Envs(#[source] crate::env::EnvError),
    /// The Docker backend is enabled but cannot be used.
    #[error("the docker backend is enabled but cannot be used")]
    Docker(#[source] crate::backend::docker::DockerError),
}

impl ServeError {
    /// A remedy, where one is known.
    pub fn hint(&self) -> Option<String> {
        match self {
            ServeError::Envs(e) => e.hint(),
            ServeError::Docker(e) => e.hint(),
            _ => None,
        }
    }
}

/// The environment provider `config` asks for: the env store of its data directory
/// ([`StoreEnvironments`]), or [`NoEnvironments`] when `[envs] enabled = false`. Opening the
/// store creates its directories; nothing is downloaded until the first build.
pub fn environments(config: &ServerConfig) -> Result<Arc<dyn EnvProvider>, ServeError> {
    if !config.envs.enabled {
        return Ok(Arc::new(NoEnvironments));
    }
    let store = StoreEnvironments::open(
        crate::env::StoreConfig {
            data_dir: config.envs.data_dir.clone(),
            toolchain: config.envs.toolchain,
            build_limits: config.envs.build_limits.clone(),
        },
        crate::env::ResolveOptions::default(),
    )
    .map_err(ServeError::Envs)?;
    tracing::info!(data_dir = %store.data_dir().display(), "environment store");
    Ok(Arc::new(store))
}

/// Start the pools and build the service for `config` (the part the MCP server reuses):
/// the launcher pool, the environment build pool (started on the first build), the Docker
/// client when `[docker] enabled`, and, in the background, the env toolchain (so the first
/// format/lint request does not wait for its download). Get `envs` from [`environments`].
/// Stop it with [`Service::shutdown`].
pub async fn start_service(
    config: &ServerConfig,
    envs: Arc<dyn EnvProvider>,
) -> Result<Service, ServeError> {
    let docker = if config.docker.enabled {
        let client =
            crate::backend::docker::DockerClient::connect(crate::backend::docker::DockerConfig {
                image: config.docker.image.clone(),
                ..crate::backend::docker::DockerConfig::default()
            })
            .await
            .map_err(ServeError::Docker)?;
        tracing::info!(
            image = %client.image(),
            engine = %client.engine().version,
            "docker backend enabled"
        );
        Some(Arc::new(client))
    } else {
        None
    };
    let mut pool_config = PoolConfig::new(config.worker.clone())?;
    pool_config.workers = config.workers;
    pool_config.queue_capacity = config.queue;
    pool_config.queue_timeout = config.queue_timeout;
    pool_config.max_runs_per_worker = config.max_runs_per_worker;
    let build = LazyPool::new(service::build_pool_config(
        &pool_config,
        config.envs.build_workers,
        Duration::from_secs_f64(config.envs.build_limits.timeout_secs),
    ));
    let pool = WorkerPool::start(pool_config).await?;
    let mut service = Service::new(
        pool,
        ServiceOptions {
            policy: config.policy.clone(),
            python: config.python.clone(),
            ruff: config.ruff.clone(),
            allow_commands: config.allow_commands,
            files: config.files.clone(),
            backend: config.backend,
        },
        envs,
        Arc::new(metrics::Metrics::new()),
    )
    .with_build_pool(build);
    if let Some(docker) = docker {
        service = service.with_docker(docker);
    }
    let warm = service.clone();
    tokio::task::spawn_blocking(move || warm.prepare_toolchain());
    Ok(service)
}

/// Serve HTTP until `shutdown` resolves, then shut down gracefully: stop accepting, give
/// running sandboxes the grace period, kill the rest, stop every launcher, remove the unix
/// socket. `on_listening` gets the bound address (`http://127.0.0.1:PORT`, `unix:/path`).
pub async fn serve(
    config: ServerConfig,
    envs: Arc<dyn EnvProvider>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    on_listening: impl FnOnce(&str),
) -> Result<(), ServeError> {
    serve_with(config, envs, shutdown, on_listening, |_| {
        axum::Router::new()
    })
    .await
}

/// [`serve`] with extra routes built from the running [`Service`] (the MCP server mounts its
/// streamable HTTP transport this way); they share auth, request ids, logs and shutdown.
pub async fn serve_with(
    config: ServerConfig,
    envs: Arc<dyn EnvProvider>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    on_listening: impl FnOnce(&str),
    extra_routes: impl FnOnce(&Service) -> axum::Router<http::AppState>,
) -> Result<(), ServeError> {
    let service = start_service(&config, envs).await?;
    let state = http::AppState {
        service: service.clone(),
        token: config.token.as_deref().map(Arc::from),
        max_upload: config.max_upload,
        settings: Arc::new(config.worker.clone()),
        openapi_json: Arc::from(
            serde_json::to_string(&http::openapi()).expect("the OpenAPI document serializes"),
        ),
    };
    let extra = extra_routes(&service);
    let app = http::router_with(state, extra);
    let (down_tx, down_rx) = tokio::sync::watch::channel(false);
    let stop_accepting = {
        let mut rx = down_rx.clone();
        async move {
            let _ = rx.wait_for(|d| *d).await;
        }
    };
    let served: tokio::task::JoinHandle<Result<(), std::io::Error>> = match &config.listen {
        Listen::Tcp(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Listen {
                    listen: addr.to_string(),
                    source,
                })?;
            let local = listener.local_addr().map_err(ServeError::Serve)?;
            on_listening(&format!("http://{local}"));
            tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(stop_accepting)
                    .await
            })
        }
        Listen::Unix(path) => {
            let listener = bind_unix(path).await?;
            on_listening(&format!("unix:{}", path.display()));
            tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(stop_accepting)
                    .await
            })
        }
    };
    shutdown.await;
    tracing::info!(
        grace_s = config.grace_period.as_secs_f64(),
        "shutting down: no new runs, waiting for running ones"
    );
    let _ = down_tx.send(true);
    service.shutdown(config.grace_period).await;
    match tokio::time::timeout(Duration::from_secs(10), served).await {
        Ok(Ok(Err(e))) => tracing::warn!("server error during shutdown: {e}"),
        Ok(_) => {}
        Err(_) => tracing::warn!("connections still open 10 s after the runs ended; closing"),
    }
    if let Listen::Unix(path) = &config.listen {
        let _ = std::fs::remove_file(path);
    }
    tracing::info!("stopped");
    Ok(())
}

/// Bind a unix socket, removing a stale socket file a killed server left (but never one a
/// live server answers on).
async fn bind_unix(path: &std::path::Path) -> Result<tokio::net::UnixListener, ServeError> {
    use std::os::unix::fs::FileTypeExt as _;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(ServeError::Listen {
                listen: path.display().to_string(),
                source: std::io::Error::other("the path exists and is not a socket"),
            });
        }
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(ServeError::SocketInUse {
                path: path.to_owned(),
            });
        }
        tracing::info!(path = %path.display(), "removing a stale socket");
        let _ = std::fs::remove_file(path);
    }
    tokio::net::UnixListener::bind(path).map_err(|source| ServeError::Listen {
        listen: path.display().to_string(),
        source,
    })
}
