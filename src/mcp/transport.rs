//! The two transports: stdio for `kakoi mcp`, streamable HTTP at `/mcp` for `kakoi serve`.

use std::os::fd::AsFd as _;
use std::sync::Arc;
use std::time::Duration;

use rmcp::ServiceExt as _;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};

use super::McpServer;
use super::config::McpConfig;
use crate::server::config::ServerConfig;
use crate::server::{Service, http::AppState};

/// Why the stdio server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    /// The standard streams could not be set up.
    #[error("cannot set up stdin/stdout for MCP")]
    Streams(#[source] std::io::Error),
    /// The client's first messages were not a valid MCP start.
    #[error("the MCP client did not start a session")]
    Initialize(#[source] Box<rmcp::service::ServerInitializeError>),
    /// The server task failed.
    #[error("the MCP server task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// The protocol channel of `kakoi mcp`: private copies of stdin and stdout.
///
/// After this, fd 1 is stderr and fd 0 is /dev/null, so nothing else in the process — a stray
/// print, a library, a child that inherits the standard streams — can write into the JSON-RPC
/// stream or read the client's messages. The copies are close-on-exec: no child gets them.
pub struct StdioChannel {
    input: tokio::fs::File,
    output: tokio::fs::File,
}

impl StdioChannel {
    /// Take stdin and stdout for the protocol. Call before anything else starts threads or
    /// children.
    pub fn take() -> Result<StdioChannel, StdioError> {
        // try_clone_to_owned duplicates with F_DUPFD_CLOEXEC.
        let input = std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .map_err(StdioError::Streams)?;
        let output = std::io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .map_err(StdioError::Streams)?;
        let null = std::fs::File::open("/dev/null").map_err(StdioError::Streams)?;
        nix::unistd::dup2_stdin(&null).map_err(|e| StdioError::Streams(e.into()))?;
        nix::unistd::dup2_stdout(std::io::stderr()).map_err(|e| StdioError::Streams(e.into()))?;
        // Blocking reads and writes on tokio's blocking pool: this works whatever the client
        // handed us (pipe, socketpair as Node uses, file, terminal); MCP traffic is small.
        Ok(StdioChannel {
            input: tokio::fs::File::from_std(std::fs::File::from(input)),
            output: tokio::fs::File::from_std(std::fs::File::from(output)),
        })
    }
}

/// Serve MCP over `channel` until the client closes it (then running calls are cancelled:
/// nobody is left to read their results) or `shutdown` resolves (then running calls get
/// `grace` to finish and send their results before the session ends). Stops the launchers
/// either way.
pub async fn serve_stdio(
    service: Service,
    channel: StdioChannel,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> Result<(), StdioError> {
    let server = McpServer::new(service.clone());
    let running = match server.serve((channel.input, channel.output)).await {
        Ok(r) => r,
        Err(rmcp::service::ServerInitializeError::ConnectionClosed(_)) => {
            tracing::info!("the client closed stdin before starting a session");
            service.pool().shutdown(grace).await;
            return Ok(());
        }
        Err(e) => {
            service.pool().shutdown(grace).await;
            return Err(StdioError::Initialize(Box::new(e)));
        }
    };
    tracing::info!("MCP session started on stdio");
    let ct = running.cancellation_token();
    let pool = service.clone();
    let on_signal = tokio::spawn(async move {
        shutdown.await;
        tracing::info!(
            grace_s = grace.as_secs_f64(),
            "shutting down: no new runs, waiting for running ones"
        );
        pool.pool().shutdown(grace).await;
        ct.cancel();
    });
    let quit = running.waiting().await;
    on_signal.abort();
    // Closed stdin: every call's token is cancelled with the session (its sandbox killed);
    // what is left to do is stopping the launchers.
    service.pool().shutdown(grace).await;
    let quit = quit.map_err(StdioError::Task)?;
    tracing::info!(?quit, "MCP session ended");
    Ok(())
}

/// How `kakoi serve` mounts `/mcp`: taken from the configuration before it moves into the
/// server.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// `[mcp]`.
    pub config: McpConfig,
    /// Largest request body (the server's upload limit).
    pub max_body: usize,
}

impl HttpOptions {
    /// The options `config` asks for.
    pub fn from_config(config: &ServerConfig) -> HttpOptions {
        HttpOptions {
            config: config.mcp.clone(),
            max_body: usize::try_from(config.max_upload).unwrap_or(usize::MAX),
        }
    }

    /// The `/mcp` route (none when `[mcp] enabled = false`). The server's bearer auth,
    /// request ids and logs wrap it; the transport itself checks Host and Origin.
    pub fn routes(&self, service: &Service) -> axum::Router<AppState> {
        if !self.config.enabled {
            return axum::Router::new();
        }
        let mut http = StreamableHttpServerConfig::default()
            .with_max_request_body_bytes(self.max_body)
            .with_allowed_origins(self.config.allowed_origins.clone())
            // An empty list refuses every Origin (rmcp's default would accept any).
            .enforce_origin_validation();
        http = if self.config.allowed_hosts.is_empty() {
            http.disable_allowed_hosts()
        } else {
            http.with_allowed_hosts(self.config.allowed_hosts.clone())
        };
        // End the MCP sessions (their open SSE streams) once a shutdown has let the running
        // sandboxes finish, so the HTTP server's graceful stop does not wait on idle streams.
        let sessions = http.cancellation_token.clone();
        let watched = service.clone();
        tokio::spawn(async move {
            loop {
                let stats = watched.pool().stats();
                if stats.shutting_down && stats.running == 0 {
                    sessions.cancel();
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let server = McpServer::new(service.clone());
        let mcp = StreamableHttpService::new(
            move || Ok(server.clone()),
            Arc::new(LocalSessionManager::default()),
            http,
        );
        axum::Router::new().route_service("/mcp", mcp)
    }
}
