//! `kakoi serve`: the HTTP manager.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;

use crate::env::ToolchainMode;
use crate::server::config::{BackendKind, LogFormat, RawConfig, RawDocker, RawEnvs, SizeValue};
use crate::server::{self, ServeError};

/// Options of `kakoi serve`. Flags and `KAKOI_*` variables override the file.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, env = "KAKOI_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// `HOST:PORT` or `unix:/path` (default 127.0.0.1:8080).
    #[arg(long, env = "KAKOI_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Bearer token clients must send (prefer the variable over the flag: flags show in ps).
    #[arg(
        long,
        env = "KAKOI_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// File holding the bearer token.
    #[arg(long, env = "KAKOI_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Concurrent sandboxes (default: number of cores).
    #[arg(long, env = "KAKOI_WORKERS")]
    pub workers: Option<usize>,
    /// Runs that may wait for a sandbox (default 64).
    #[arg(long, env = "KAKOI_QUEUE")]
    pub queue: Option<usize>,
    /// Seconds a run may wait in the queue (default 30).
    #[arg(long, env = "KAKOI_QUEUE_TIMEOUT", value_name = "SECONDS")]
    pub queue_timeout: Option<f64>,
    /// Seconds running sandboxes get on SIGTERM before they are killed (default 10).
    #[arg(long, env = "KAKOI_GRACE_PERIOD", value_name = "SECONDS")]
    pub grace_period: Option<f64>,
    /// Request body limit, e.g. 16M (checked while the body streams in).
    #[arg(long, env = "KAKOI_MAX_UPLOAD", value_name = "SIZE")]
    pub max_upload: Option<String>,
    /// Let requests ask for the host's network (`network: true`).
    #[arg(long, env = "KAKOI_ALLOW_NETWORK")]
    pub allow_network: bool,
    /// Log format.
    #[arg(long, env = "KAKOI_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Replace a launcher after this many runs (0: never; 1: a fresh launcher per run).
    #[arg(long, env = "KAKOI_MAX_RUNS_PER_WORKER", value_name = "N")]
    pub max_runs_per_worker: Option<u64>,
    /// ruff binary for `format`/`lint` (default: $KAKOI_RUFF, then the env toolchain's
    /// pinned ruff, then PATH).
    #[arg(long, value_name = "PATH")]
    pub ruff: Option<PathBuf>,
    /// Data directory of environments, toolchain and uv cache (as `kakoi env`). Default:
    /// /var/lib/kakoi as root, $XDG_DATA_HOME/kakoi or ~/.local/share/kakoi otherwise.
    #[arg(long, env = "KAKOI_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Toolchain of environments: nix when `nix` is on PATH, else the host's python3 with
    /// pinned uv and ruff (as `kakoi env --toolchain`).
    #[arg(long, env = "KAKOI_TOOLCHAIN", value_enum)]
    pub toolchain: Option<ToolchainMode>,
    /// Refuse requirements (no environment store).
    #[arg(long)]
    pub no_envs: bool,
    /// Backend of requests that do not name one (docker needs --docker).
    #[arg(long, env = "KAKOI_BACKEND", value_enum)]
    pub backend: Option<BackendKind>,
    /// Accept `backend = docker` requests (runs them in containers of the worker image).
    #[arg(long, env = "KAKOI_DOCKER")]
    pub docker: bool,
    /// Worker image of the docker backend.
    #[arg(long, env = "KAKOI_DOCKER_IMAGE", value_name = "IMAGE")]
    pub docker_image: Option<String>,
    /// Print the OpenAPI document and exit.
    #[arg(long)]
    pub print_openapi: bool,
}

impl ServeArgs {
    fn overlay(&self) -> RawConfig {
        RawConfig {
            listen: self.listen.clone(),
            token: self.token.clone(),
            token_file: self.token_file.clone(),
            workers: self.workers,
            queue: self.queue,
            queue_timeout: self.queue_timeout,
            grace_period: self.grace_period,
            max_upload: self.max_upload.clone().map(SizeValue::Text),
            allow_network: self.allow_network.then_some(true),
            log_format: self.log_format,
            max_runs_per_worker: self.max_runs_per_worker,
            ruff: self.ruff.clone(),
            data_dir: self.data_dir.clone(),
            toolchain: self.toolchain,
            backend: self.backend,
            envs: self.no_envs.then(|| RawEnvs {
                enabled: Some(false),
                ..RawEnvs::default()
            }),
            docker: (self.docker || self.docker_image.is_some()).then(|| RawDocker {
                enabled: self.docker.then_some(true),
                image: self.docker_image.clone(),
            }),
            ..RawConfig::default()
        }
    }

    /// Serve until SIGTERM/SIGINT.
    pub fn execute(self) -> anyhow::Result<i32> {
        if self.print_openapi {
            println!(
                "{}",
                serde_json::to_string_pretty(&server::http::openapi())?
            );
            return Ok(0);
        }
        let file = match &self.config {
            Some(path) => RawConfig::from_file(path)?,
            None => RawConfig::default(),
        };
        let config = file.overlay(self.overlay()).validate()?;
        init_tracing(config.log_format);
        if config.token.is_none()
            && matches!(config.listen, server::Listen::Tcp(a) if !a.ip().is_loopback())
        {
            tracing::warn!(
                "listening on a non-loopback address without a bearer token: anyone who can reach it can run code"
            );
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("kakoi-serve")
            .build()
            .context("cannot start the async runtime")?;
        let envs = match server::environments(&config) {
            Ok(envs) => envs,
            Err(e) => return Ok(report(e)),
        };
        let served = runtime.block_on(async move {
            let shutdown = async {
                use tokio::signal::unix::{SignalKind, signal};
                let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
                let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
                tokio::select! {
                    _ = term.recv() => {},
                    _ = int.recv() => {},
                }
            };
            // MCP: the streamable HTTP transport at /mcp (src/mcp).
            let mcp = crate::mcp::HttpOptions::from_config(&config);
            let on_listening = |addr: &str| {
                eprintln!("kakoi serve: listening on {addr}");
                tracing::info!(%addr, "listening");
            };
            server::serve_with(config, envs, shutdown, on_listening, |s| mcp.routes(s)).await
        });
        match served {
            Ok(()) => Ok(0),
            Err(e) => Ok(report(e)),
        }
    }
}

/// Print a server error with its causes and hint; the exit code.
fn report(e: ServeError) -> i32 {
    // Docker errors' hints are printed with the chain (`print_error_chain`).
    let hint = match &e {
        ServeError::Docker(_) => None,
        other => other.hint(),
    };
    crate::cli::print_error_chain(&anyhow::Error::new(e));
    if let Some(h) = hint {
        eprintln!("  hint: {h}");
    }
    125
}

/// Logs to stderr, `RUST_LOG`-filtered (default `info`), as text or JSON lines.
fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}
