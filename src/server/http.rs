//! The HTTP API (axum): routes, extraction with streaming upload limits, the error body,
//! bearer auth, request ids, and the OpenAPI document generated from the handlers.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use tracing::Instrument as _;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::config::{BackendKind, Policy};
use super::env::EnvSummary;
use super::pool::PoolStats;
use super::request::{self, RunForm, RunRequest};
use super::service::{ErrorKind, Service, ServiceError};
use super::worker::{LandlockChoice, SeccompChoice, WorkerSettings};
use crate::result::{EnvUse, RunResult};

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// The job service.
    pub service: Service,
    /// Bearer token; `None` disables auth.
    pub token: Option<Arc<str>>,
    /// Request body limit in bytes.
    pub max_upload: u64,
    /// The launchers' sandbox settings (reported by `/health`).
    pub settings: Arc<WorkerSettings>,
    /// The OpenAPI document, serialized once.
    pub openapi_json: Arc<str>,
}

/// The error body: `{"error": {"code", "message", "detail"}}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Inside [`ErrorBody`].
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code (`bad_request`, `payload_too_large`, `env_failed`,
    /// `lint_failed`, `queue_full`, `shutting_down`, ...).
    pub code: String,
    /// One human sentence.
    pub message: String,
    /// Structured detail (uv's output, lint diagnostics), or null.
    #[schema(value_type = Option<Object>)]
    pub detail: Option<serde_json::Value>,
}

/// A [`ServiceError`] as an HTTP response.
#[derive(Debug)]
pub struct ApiError(pub ServiceError);

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> ApiError {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let e = self.0;
        let status =
            StatusCode::from_u16(e.kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if e.kind == ErrorKind::Internal {
            tracing::error!(message = %e.message, "internal error");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: e.kind.code().into(),
                message: e.message,
                detail: e.detail,
            },
        };
        let mut resp = (status, Json(body)).into_response();
        match e.kind {
            ErrorKind::Unauthorized => {
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ErrorKind::QueueFull | ErrorKind::QueueTimeout | ErrorKind::ShuttingDown => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        resp
    }
}

/// `GET /health`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok` or `shutting_down`.
    pub status: String,
    /// Accepting runs.
    pub ready: bool,
    /// Queue and workers.
    pub pool: HealthPool,
    /// The isolation layers runs get.
    pub isolation: HealthIsolation,
    /// Whether `format`/`lint` can be served (ruff found).
    pub lint: bool,
    /// The ruff binary format/lint use, when found (the env toolchain's pinned ruff unless the
    /// operator configured another).
    pub ruff: Option<String>,
    /// Whether `requirements` are served (the environment store is on).
    pub envs: bool,
    /// The backends requests may ask for.
    pub backends: Vec<HealthBackend>,
    /// Limits and network policy.
    pub policy: serde_json::Value,
    /// kakoi version.
    pub version: String,
}

/// Pool part of [`Health`].
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HealthPool {
    /// Maximum concurrent runs.
    pub capacity: usize,
    /// Live launchers.
    pub workers: usize,
    /// Runs in progress.
    pub running: usize,
    /// Runs waiting (the queue depth).
    pub queued: usize,
    /// Maximum waiting runs.
    pub queue_capacity: usize,
}

/// A backend in [`Health`].
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HealthBackend {
    /// `native` or `docker`.
    pub name: String,
    /// Requests that do not name a backend run here.
    pub default: bool,
    /// Runs return the files written under `out/`.
    pub files: bool,
}

/// Isolation part of [`Health`].
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HealthIsolation {
    /// `v1`, `v2` or `none` (rlimit fallbacks).
    pub cgroup: String,
    /// cgroup controllers.
    pub cgroup_controllers: Vec<String>,
    /// `default`, `off` or `file`.
    pub seccomp: String,
    /// `strict`, `best-effort` or `off`.
    pub landlock: String,
    /// Namespaces every run gets.
    pub namespaces: Vec<String>,
}

/// `GET /envs`.
#[derive(Debug, Serialize, ToSchema)]
pub struct EnvList {
    /// Environments in the store.
    pub envs: Vec<EnvSummary>,
}

/// `POST /envs`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BuildEnvRequest {
    /// The text of a requirements.txt.
    pub requirements: String,
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "kakoi",
        description = "Run untrusted Python in Linux sandboxes (namespaces, cgroups, seccomp, Landlock). A program that fails, times out or runs out of memory is a 200 with that `status`; HTTP errors are for requests that could not run."
    ),
    components(schemas(ErrorBody, RunResult, RunRequest, RunForm, PoolStats, Policy)),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
struct ApiDoc;

fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(post_run))
        .routes(routes!(health))
        .routes(routes!(metrics))
        .routes(routes!(openapi_json))
        .routes(routes!(list_envs, build_env))
}

/// The OpenAPI document of the routes [`router`] serves (generated from the same list).
pub fn openapi() -> utoipa::openapi::OpenApi {
    api().split_for_parts().1
}

/// The application: routes, fallbacks, auth and request ids.
pub fn router(state: AppState) -> axum::Router {
    router_with(state, axum::Router::new())
}

/// [`router`] plus `extra` routes (for example the MCP transport at `/mcp`), which get the
/// same bearer auth, request ids, logs and metrics as the API's own routes.
pub fn router_with(state: AppState, extra: axum::Router<AppState>) -> axum::Router {
    let (routes, _) = api().split_for_parts();
    routes
        .merge(extra)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            request_context,
        ))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError(ServiceError::new(ErrorKind::NotFound, "no such route"))
}

async fn method_not_allowed() -> ApiError {
    ApiError(ServiceError::new(
        ErrorKind::MethodNotAllowed,
        "method not allowed on this route",
    ))
}

/// Compare in time that depends only on the expected token's length.
fn token_matches(given: &[u8], expected: &[u8]) -> bool {
    use subtle::ConstantTimeEq as _;
    let mut same = subtle::Choice::from(u8::from(given.len() == expected.len()));
    for (i, e) in expected.iter().enumerate() {
        same &= given.get(i).copied().unwrap_or(0).ct_eq(e);
    }
    same.into()
}

async fn auth(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let Some(token) = &app.token else {
        return next.run(req).await;
    };
    if req.uri().path() == "/health" {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(g) if token_matches(g.as_bytes(), token.as_bytes()) => next.run(req).await,
        Some(_) => ApiError(ServiceError::new(
            ErrorKind::Unauthorized,
            "the bearer token is not valid",
        ))
        .into_response(),
        None => ApiError(ServiceError::new(
            ErrorKind::Unauthorized,
            "this server requires `Authorization: Bearer <token>`",
        ))
        .into_response(),
    }
}

fn valid_request_id(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Request id (the client's `x-request-id` when sane, else a new UUID), a tracing span
/// carrying it, one log line per response, the HTTP metrics.
async fn request_context(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid_request_id(v))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %req.method(),
        path = %req.uri().path()
    );
    let started = Instant::now();
    let mut resp = next.run(req).instrument(span.clone()).await;
    let status = resp.status().as_u16();
    span.in_scope(|| {
        tracing::info!(
            status,
            ms = started.elapsed().as_secs_f64() * 1000.0,
            "response"
        )
    });
    app.service.metrics().record_http(status);
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    if status >= 400 {
        // An error may be answered before the request body was read (auth, the MCP
        // transport's Host/Origin/session checks, size and type limits). hyper then closes the
        // connection after the response without saying so, and a client that reuses it for
        // its next request sees "server disconnected". Say it on every error (they are rare),
        // so the client opens a new connection instead.
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// Read a body, failing with 413 as soon as it goes over `limit` bytes.
async fn read_limited(body: Body, limit: u64) -> Result<Vec<u8>, ServiceError> {
    let mut stream = body.into_data_stream();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|e| ServiceError::bad_request(format!("cannot read the request body: {e}")))?;
        if (out.len() + chunk.len()) as u64 > limit {
            return Err(too_large(limit));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

fn too_large(limit: u64) -> ServiceError {
    ServiceError::new(
        ErrorKind::PayloadTooLarge,
        format!("the request body is over the upload limit of {limit} bytes"),
    )
}

/// Run a Python program.
///
/// JSON (`application/json`, [`RunRequest`]) or a form (`multipart/form-data`: a `main.py`
/// part, optional `requirements.txt`, other files for the workdir, and the option fields).
#[utoipa::path(
    post,
    path = "/run",
    request_body(
        description = "The program, its files and options",
        content(
            (RunRequest = "application/json"),
            (RunForm = "multipart/form-data")
        )
    ),
    responses(
        (status = 200, description = "The run's result, whatever the program did (see `status`)", body = RunResult,
            headers(("x-kakoi-files" = String, description = "`not-collected` when the run's backend does not return files (docker): `files` is then empty whatever the program wrote"))),
        (status = 400, description = "Missing or malformed input, limits over the maximum, network or the docker backend when the operator does not allow them", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 413, description = "Body over the upload limit", body = ErrorBody),
        (status = 415, description = "Neither JSON nor multipart", body = ErrorBody),
        (status = 422, description = "Environment build failed (`env_failed`: uv's output, stage, uv's exit code and a hint in `detail`), lint=error found diagnostics (`lint_failed`), or format/lint without ruff (`lint_unavailable`)", body = ErrorBody),
        (status = 429, description = "Queue full or no sandbox free in time", body = ErrorBody),
        (status = 503, description = "Shutting down", body = ErrorBody),
        (status = 500, description = "A bug, or a broken host (a launcher that died, an unreachable Docker engine)", body = ErrorBody),
    )
)]
async fn post_run(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > app.max_upload) {
        return Err(too_large(app.max_upload).into());
    }
    let job = match essence.as_str() {
        "application/json" => request::job_from_json(&read_limited(body, app.max_upload).await?)?,
        "multipart/form-data" => {
            let boundary = request::multipart_boundary(content_type)?;
            request::job_from_multipart(body.into_data_stream(), &boundary, app.max_upload).await?
        }
        "" => {
            return Err(ServiceError::new(
                ErrorKind::UnsupportedMediaType,
                "no Content-Type; send application/json or multipart/form-data",
            )
            .into());
        }
        other => {
            return Err(ServiceError::new(
                ErrorKind::UnsupportedMediaType,
                format!("{other} is not supported; send application/json or multipart/form-data"),
            )
            .into());
        }
    };
    let backend = job.backend.unwrap_or(app.service.options().backend);
    let mut resp = Json(app.service.execute(job).await?).into_response();
    if !app.service.returns_files(backend) {
        // `files` is empty whatever the program wrote: say so where a client can see it.
        resp.headers_mut()
            .insert(FILES_HEADER, HeaderValue::from_static("not-collected"));
    }
    Ok(resp)
}

/// Response header of a run whose backend does not return files (`not-collected`): its
/// `files` is empty whatever the program wrote under `out/`.
pub const FILES_HEADER: &str = "x-kakoi-files";

/// Readiness, isolation layers and queue depth. Never needs the token.
#[utoipa::path(
    get,
    path = "/health",
    security(()),
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 503, description = "Shutting down", body = Health),
    )
)]
async fn health(State(app): State<AppState>) -> (StatusCode, Json<Health>) {
    let pool = app.service.pool();
    let stats = pool.stats();
    let info = pool.worker_info().unwrap_or_default();
    let ready = !stats.shutting_down;
    let health = Health {
        status: if ready { "ok" } else { "shutting_down" }.into(),
        ready,
        pool: HealthPool {
            capacity: stats.capacity,
            workers: stats.workers,
            running: stats.running,
            queued: stats.queued,
            queue_capacity: stats.queue_capacity,
        },
        isolation: HealthIsolation {
            cgroup: info.cgroup,
            cgroup_controllers: info.cgroup_controllers,
            seccomp: match app.settings.seccomp {
                SeccompChoice::Default => "default",
                SeccompChoice::Off => "off",
                SeccompChoice::File(_) => "file",
            }
            .into(),
            landlock: match app.settings.landlock {
                LandlockChoice::Strict => "strict",
                LandlockChoice::BestEffort => "best-effort",
                LandlockChoice::Off => "off",
            }
            .into(),
            namespaces: ["user", "pid", "net", "mount", "ipc", "uts", "cgroup"]
                .map(String::from)
                .to_vec(),
        },
        lint: app.service.ruff_available(),
        ruff: app.service.ruff_path().map(|p| p.display().to_string()),
        envs: app.service.envs().enabled(),
        backends: [BackendKind::Native, BackendKind::Docker]
            .into_iter()
            .filter(|b| *b == BackendKind::Native || app.service.docker_enabled())
            .map(|b| HealthBackend {
                name: b.name().into(),
                default: b == app.service.options().backend,
                files: app.service.returns_files(b),
            })
            .collect(),
        policy: serde_json::to_value(&app.service.options().policy).unwrap_or_default(),
        version: env!("CARGO_PKG_VERSION").into(),
    };
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(health))
}

/// Prometheus metrics (OpenMetrics text).
#[utoipa::path(
    get,
    path = "/metrics",
    responses((status = 200, description = "OpenMetrics text", body = String, content_type = "application/openmetrics-text"))
)]
async fn metrics(State(app): State<AppState>) -> Response {
    let text = app.service.metrics().encode(&app.service.pool().stats());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    responses((status = 200, description = "The OpenAPI document", body = Object))
)]
async fn openapi_json(State(app): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        app.openapi_json.to_string(),
    )
        .into_response()
}

/// Environments in the store.
#[utoipa::path(
    get,
    path = "/envs",
    responses(
        (status = 200, description = "Environments", body = EnvList),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
    )
)]
async fn list_envs(State(app): State<AppState>) -> Result<Json<EnvList>, ApiError> {
    Ok(Json(EnvList {
        envs: app.service.list_envs().await?,
    }))
}

/// Build (or find) the environment for a requirements.txt ahead of runs.
#[utoipa::path(
    post,
    path = "/envs",
    request_body = BuildEnvRequest,
    responses(
        (status = 200, description = "The environment exists", body = EnvUse),
        (status = 400, description = "Malformed body", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 413, description = "Body over the upload limit", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "The environment could not be built (uv's message in detail)", body = ErrorBody),
        (status = 429, description = "Queue full", body = ErrorBody),
        (status = 503, description = "Shutting down", body = ErrorBody),
    )
)]
async fn build_env(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<EnvUse>, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type
        .to_ascii_lowercase()
        .starts_with("application/json")
    {
        return Err(ServiceError::new(
            ErrorKind::UnsupportedMediaType,
            "send application/json: {\"requirements\": \"...\"}",
        )
        .into());
    }
    let bytes = read_limited(body, app.max_upload).await?;
    let req: BuildEnvRequest = serde_json::from_slice(&bytes)
        .map_err(|e| ServiceError::bad_request(format!("invalid JSON body: {e}")))?;
    Ok(Json(app.service.build_env(req.requirements).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(token_matches(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!token_matches(b"0123456789abcdeX", b"0123456789abcdef"));
        assert!(!token_matches(b"0123456789abcde", b"0123456789abcdef"));
        assert!(!token_matches(b"0123456789abcdef0", b"0123456789abcdef"));
        assert!(!token_matches(b"", b"0123456789abcdef"));
    }

    #[test]
    fn request_ids_are_bounded_and_plain() {
        assert!(valid_request_id("abc-123_x.y"));
        assert!(!valid_request_id(""));
        assert!(!valid_request_id("a b"));
        assert!(!valid_request_id(&"a".repeat(65)));
        assert!(!valid_request_id("x\u{e9}"));
    }

    #[test]
    fn the_document_lists_every_route_with_its_methods() {
        let doc = serde_json::to_value(openapi()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        let mut listed: Vec<String> = paths
            .iter()
            .flat_map(|(p, item)| {
                item.as_object()
                    .unwrap()
                    .keys()
                    .map(move |m| format!("{} {p}", m.to_uppercase()))
            })
            .collect();
        listed.sort();
        assert_eq!(
            listed,
            [
                "GET /envs",
                "GET /health",
                "GET /metrics",
                "GET /openapi.json",
                "POST /envs",
                "POST /run"
            ]
        );
        let run = &doc["paths"]["/run"]["post"];
        let content = run["requestBody"]["content"].as_object().unwrap();
        assert!(content.contains_key("application/json"));
        assert!(content.contains_key("multipart/form-data"));
        for code in ["200", "400", "413", "415", "422", "429", "503", "500"] {
            assert!(run["responses"][code].is_object(), "POST /run lacks {code}");
        }
        assert!(doc["components"]["schemas"]["RunResult"].is_object());
        assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    }
}
