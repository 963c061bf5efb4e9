//! `kakoi mcp`: the MCP server on stdin/stdout, for MCP clients that start their servers as
//! child processes (Claude Desktop, editors, agent frameworks).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;

use crate::mcp::transport::StdioChannel;
use crate::server;
use crate::server::config::{LogFormat, RawConfig};

/// Options of `kakoi mcp`. The configuration file is the one `kakoi serve` reads (its
/// `listen`, `token` and `[mcp]` are for HTTP and are ignored here); flags and `KAKOI_*`
/// variables override it.
#[derive(Debug, Args)]
pub struct McpArgs {
    /// TOML configuration file (the same as `kakoi serve --config`).
    #[arg(long, env = "KAKOI_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Concurrent sandboxes (default: number of cores).
    #[arg(long, env = "KAKOI_WORKERS")]
    pub workers: Option<usize>,
    /// Calls that may wait for a sandbox (default 64).
    #[arg(long, env = "KAKOI_QUEUE")]
    pub queue: Option<usize>,
    /// Seconds a call may wait in the queue (default 30).
    #[arg(long, env = "KAKOI_QUEUE_TIMEOUT", value_name = "SECONDS")]
    pub queue_timeout: Option<f64>,
    /// Seconds running sandboxes get on SIGTERM before they are killed (default 10).
    #[arg(long, env = "KAKOI_GRACE_PERIOD", value_name = "SECONDS")]
    pub grace_period: Option<f64>,
    /// Let tool calls ask for the host's network (`network: true`).
    #[arg(long, env = "KAKOI_ALLOW_NETWORK")]
    pub allow_network: bool,
    /// List the `run_command` tool (any command, not only Python).
    #[arg(long, env = "KAKOI_ALLOW_COMMANDS")]
    pub allow_commands: bool,
    /// Log format (logs go to stderr; stdout carries only MCP messages).
    #[arg(long, env = "KAKOI_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Replace a launcher after this many runs (0: never; 1: a fresh launcher per run).
    #[arg(long, env = "KAKOI_MAX_RUNS_PER_WORKER", value_name = "N")]
    pub max_runs_per_worker: Option<u64>,
    /// ruff binary for `format`/`lint` (default: $KAKOI_RUFF, then PATH).
    #[arg(long, value_name = "PATH")]
    pub ruff: Option<PathBuf>,
}

impl McpArgs {
    fn overlay(&self) -> RawConfig {
        RawConfig {
            workers: self.workers,
            queue: self.queue,
            queue_timeout: self.queue_timeout,
            grace_period: self.grace_period,
            allow_network: self.allow_network.then_some(true),
            allow_commands: self.allow_commands.then_some(true),
            log_format: self.log_format,
            max_runs_per_worker: self.max_runs_per_worker,
            ruff: self.ruff.clone(),
            ..RawConfig::default()
        }
    }

    /// Serve MCP on stdio until the client closes stdin, or SIGTERM/SIGINT.
    pub fn execute(self) -> anyhow::Result<i32> {
        // First, before any thread or child exists: stdout belongs to the protocol.
        let channel = StdioChannel::take()?;
        let file = match &self.config {
            Some(path) => RawConfig::from_file(path)?,
            None => RawConfig::default(),
        };
        let config = file.overlay(self.overlay()).validate()?;
        init_tracing(config.log_format);
        let grace = config.grace_period;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("kakoi-mcp")
            .build()
            .context("cannot start the async runtime")?;
        let outcome = runtime.block_on(async move {
            let envs = server::environments(&config)?;
            let service = server::start_service(&config, envs).await?;
            tracing::info!(
                workers = config.workers,
                allow_commands = config.allow_commands,
                allow_network = config.policy.allow_network,
                "kakoi mcp: serving MCP on stdio"
            );
            let shutdown = async {
                use tokio::signal::unix::{SignalKind, signal};
                let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
                let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
                tokio::select! {
                    _ = term.recv() => {},
                    _ = int.recv() => {},
                }
            };
            crate::mcp::serve_stdio(service, channel, shutdown, grace).await?;
            anyhow::Ok(())
        });
        // A blocking read of stdin cannot be interrupted; do not wait for it.
        runtime.shutdown_background();
        outcome?;
        Ok(0)
    }
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
