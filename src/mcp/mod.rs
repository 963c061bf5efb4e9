//! The MCP server: kakoi as a code-execution tool for LLM agents, on the official Rust SDK
//! (rmcp).
//!
//! ```text
//!  kakoi mcp (stdio)            kakoi serve: POST/GET/DELETE /mcp (streamable HTTP)
//!        │ transport::serve_stdio     │ transport::HttpOptions::routes: bearer auth (the
//!        │                            │ server's), Host/Origin checks (DNS rebinding)
//!        └──────────────┬─────────────┘
//!          McpServer (rmcp ServerHandler): tools/list, tools/call
//!                       │ tools.rs: arguments → Job      render.rs: RunResult → content
//!          server::Service::execute(Job) — the same job manager, policy, queue and
//!          launchers as the HTTP API
//! ```
//!
//! A tool call whose request is cancelled (`notifications/cancelled`, or on the 2026
//! streamable HTTP wire, the client closing the request) drops the `execute` future, which
//! kills the sandbox.

pub mod config;
pub mod render;
pub mod tools;
pub mod transport;

use std::sync::Arc;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ProgressNotificationParam, ServerCapabilities,
    ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};

pub use config::{McpConfig, RawMcpConfig};
pub use transport::{HttpOptions, serve_stdio};

use crate::server::Service;
use tools::{
    BUILD_ENV, BuildEnvArgs, LIST_ENVS, ListEnvsArgs, RUN_COMMAND, RUN_PYTHON, RunCommandArgs,
    RunPythonArgs, ToolSet, parse_args,
};

/// What the server tells a client on connection (`instructions`).
const INSTRUCTIONS: &str = "kakoi runs code in disposable Linux sandboxes. Use run_python to \
execute Python and see its stdout, stderr, exit status and any files it writes under out/ \
(plots come back as images). Nothing persists between calls: send every input file with the \
call. Declare third-party packages with `requirements`; build_env prepares them ahead of time.";

/// How often a running call reports progress (when the client sent a progress token).
pub const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(3);

/// Aborts a task when dropped (the progress ticker ends with its call).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The MCP tools over a [`Service`]. Cheap to clone (one per HTTP session).
#[derive(Clone)]
pub struct McpServer {
    service: Service,
    tools: Arc<ToolSet>,
}

impl std::fmt::Debug for McpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpServer")
            .field("tools", &self.tools)
            .finish_non_exhaustive()
    }
}

impl McpServer {
    /// The tools for `service`, following its operator options (limits, network, commands).
    pub fn new(service: Service) -> McpServer {
        let options = service.options();
        let python = options.python.display().to_string();
        let tools = Arc::new(ToolSet::new(options, &python));
        McpServer { service, tools }
    }

    /// The tools listed.
    pub fn tools(&self) -> &[Tool] {
        self.tools.tools()
    }

    /// Call a tool by name. `None` for a name this server does not have.
    pub async fn call(
        &self,
        name: &str,
        arguments: Option<rmcp::model::JsonObject>,
    ) -> Option<CallToolResult> {
        let result = match name {
            RUN_PYTHON => {
                match parse_args::<RunPythonArgs>(name, arguments).and_then(|a| a.into_job()) {
                    Ok(job) => self.execute(job).await,
                    Err(message) => render::invalid_arguments(message),
                }
            }
            RUN_COMMAND if !self.service.options().allow_commands => {
                render::invalid_arguments(
                    "run_command is not enabled on this server (its operator has not set allow_commands); use run_python"
                        .into(),
                )
            }
            RUN_COMMAND => {
                match parse_args::<RunCommandArgs>(name, arguments).and_then(|a| a.into_job()) {
                    Ok(job) => self.execute(job).await,
                    Err(message) => render::invalid_arguments(message),
                }
            }
            BUILD_ENV => {
                match parse_args::<BuildEnvArgs>(name, arguments).and_then(|a| a.into_text()) {
                    Ok(requirements) => match self.service.build_env(requirements).await {
                        Ok(env) => render::env_built(&env),
                        Err(e) => render::service_error(&e),
                    },
                    Err(message) => render::invalid_arguments(message),
                }
            }
            LIST_ENVS => match parse_args::<ListEnvsArgs>(name, arguments) {
                Ok(_) => match self.service.list_envs().await {
                    Ok(envs) => render::env_list(&envs),
                    Err(e) => render::service_error(&e),
                },
                Err(message) => render::invalid_arguments(message),
            },
            _ => return None,
        };
        Some(result)
    }

    async fn execute(&self, job: crate::server::Job) -> CallToolResult {
        match self.service.execute(job).await {
            Ok(result) => render::run_result(&result),
            Err(e) => render::service_error(&e),
        }
    }
}

impl ServerHandler for McpServer {
    fn get_info(&self) -> ServerConfig {
        let mut info = ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_instructions(INSTRUCTIONS);
        info.server_info =
            Implementation::new("kakoi", env!("CARGO_PKG_VERSION")).with_title("kakoi sandbox");
        info
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(self.tools.tools().to_vec()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.tools.get(name).cloned()
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let name = request.name.to_string();
        let id = context.id.clone();
        // Progress while the call runs, for clients that asked for it: many reset their
        // request timeout on progress, and an environment build can take minutes.
        let _progress = context.meta.get_progress_token().map(|token| {
            let peer = context.peer.clone();
            let what = name.clone();
            AbortOnDrop(tokio::spawn(async move {
                let started = tokio::time::Instant::now();
                let mut tick = tokio::time::interval_at(started + PROGRESS_EVERY, PROGRESS_EVERY);
                loop {
                    tick.tick().await;
                    let seconds = started.elapsed().as_secs_f64().round();
                    let note = ProgressNotificationParam::new(token.clone(), seconds)
                        .with_message(format!("{what}: running for {seconds:.0} s"));
                    if peer.notify_progress(note).await.is_err() {
                        return;
                    }
                }
            }))
        });
        // Cancellation (`notifications/cancelled`, a closed 2026 HTTP request, the end of the
        // session) fires `context.ct`; dropping `call` then drops `Service::execute`, which
        // kills the sandbox. rmcp sends no response for a cancelled request.
        let outcome = tokio::select! {
            biased;
            _ = context.ct.cancelled() => None,
            r = self.call(&name, request.arguments) => Some(r),
        };
        match outcome {
            None => {
                tracing::info!(tool = %name, request = %id, "tool call cancelled by the client; its sandbox was killed");
                Ok(CallToolResult::error(vec![ContentBlock::text("cancelled")]).into())
            }
            Some(Some(result)) => Ok(result.into()),
            Some(None) => Err(McpError::invalid_params(
                format!(
                    "unknown tool {name:?}; this server has: {}",
                    self.tools
                        .tools()
                        .iter()
                        .map(|t| t.name.as_ref())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None,
            )),
        }
    }
}
