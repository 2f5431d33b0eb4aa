//! The HTTP API (axum). `/healthz`, `/readyz`, `/metrics` are open; all of
//! `/v1/` needs a bearer token. Errors are JSON `{"error":{"code","message"}}`
//! with a message a user can act on.
//!
//! API boundary: the JSON shapes here are what the CLI and scripts rely on.

pub mod deployments;
pub mod openapi;

use crate::enroll::token_hash;
use crate::fleet::Fleet;
use crate::store::{now_ms, Store};
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::sync::Arc;
use std::time::Duration;

/// Shared state of the handlers.
pub struct AppState {
    /// The store.
    pub store: Store,
    /// The live fleet.
    pub fleet: Arc<Fleet>,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Where hosts are found (None: neither Chef nor a file configured).
    pub inventory: Option<Arc<crate::inventory::InventorySource>>,
    /// Deployments and their orchestrators.
    pub deployments: Arc<crate::deploy::Deployments>,
}

/// An API error.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// What went wrong and what to do.
    pub message: String,
}

impl ApiError {
    /// A new error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("internal error: {e}; see the controller log"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(vesemir_api::ErrorBody::new(self.code, self.message)),
        )
            .into_response()
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError::internal(e)
    }
}

/// Who made a request (from the token).
#[derive(Debug, Clone)]
pub struct Caller {
    /// Token name.
    pub name: String,
    /// Role: `admin` or `deployer`.
    pub role: String,
}

async fn auth(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing bearer token: pass --token, set VESEMIR_TOKEN, or use the cli.toml written by `vesemir-controller init`",
        )
        .into_response();
    };
    match state.store.find_api_token(&token_hash(token)).await {
        Ok(Some((name, role))) => {
            req.extensions_mut().insert(Caller { name, role });
            next.run(req).await
        }
        Ok(None) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "invalid token: check the token you pass (admin.token in the controller's data dir)",
        )
        .into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}

/// Maps a query-string rejection (`?limit=abc`) to the JSON error shape:
/// a 422 whose message says which parameter serde could not accept.
pub fn query_rejection(e: axum::extract::rejection::QueryRejection) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
        format!("query string: {}", e.body_text()),
    )
}

/// Maps a JSON body rejection: 413 stays 413, everything else is a 422
/// whose message names what serde could not accept.
pub fn json_rejection(e: axum::extract::rejection::JsonRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "request body too large",
        );
    }
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
        field_first(&e.body_text()),
    )
}

/// Rewrites serde's "PATH: missing field `X` at line …" (as axum wraps it)
/// into "PATH.X: required", so every 422 message starts with the field.
pub fn field_first(body_text: &str) -> String {
    let text = body_text
        .strip_prefix("Failed to deserialize the JSON body into the target type: ")
        .unwrap_or(body_text);
    let text = match text.rfind(" at line ") {
        Some(i) => &text[..i],
        None => text,
    };
    let Some((path, inner)) = text.split_once(": ") else {
        return text.to_string();
    };
    if path.contains(' ') {
        // Not a field path (e.g. a content-type complaint).
        return text.to_string();
    }
    let path = if path == "." { "" } else { path };
    if let Some(rest) = inner.strip_prefix("missing field `") {
        let field = rest.split('`').next().unwrap_or(rest);
        let full = if path.is_empty() {
            field.to_string()
        } else {
            format!("{path}.{field}")
        };
        return format!("{full}: required");
    }
    if path.is_empty() {
        format!("request: {inner}")
    } else {
        format!("{path}: {inner}")
    }
}

fn require_admin(caller: &Caller) -> Result<(), ApiError> {
    if caller.role == "admin" {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this call needs an admin token",
        ))
    }
}

async fn timeout_layer(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(state.timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "the controller did not answer in time; retry, and check its log if it persists",
        )
        .into_response(),
    }
}

/// Builds the router.
pub fn router(state: Arc<AppState>, body_limit: usize) -> Router {
    let v1 = Router::new()
        .route("/v1/tokens", post(create_token))
        .route("/v1/agents", get(list_agents))
        .route("/v1/agents/{name}", get(show_agent).delete(forget_agent))
        .route("/v1/agents/{name}/revoke", post(revoke_agent))
        .route("/v1/agents/{name}/jobs/{id}", get(job_outcome))
        .route("/v1/inventory/resolve", post(resolve_inventory))
        .route(
            "/v1/deployments",
            post(deployments::create).get(deployments::list),
        )
        .route("/v1/deployments/rollback", post(deployments::rollback))
        .route("/v1/deployments/{id}", get(deployments::show))
        .route("/v1/deployments/{id}/cancel", post(deployments::cancel))
        .layer(middleware::from_fn_with_state(state.clone(), timeout_layer))
        .layer(middleware::from_fn_with_state(state.clone(), auth));
    // Streams: no overall timeout (they last as long as the work does).
    let streams = Router::new()
        .route("/v1/agents/{name}/run", post(run_on_agent))
        .route("/v1/agents/{name}/jobs/{id}/events", get(follow_job))
        .route("/v1/deployments/{id}/logs", get(deployments::logs))
        .layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/openapi.json", get(openapi))
        .merge(crate::ui::routes())
        .merge(v1)
        .merge(streams)
        // Unknown paths answer 404 only after authentication: without a
        // token nobody learns which paths exist.
        .merge(
            Router::new()
                .fallback(unknown_path)
                .layer(middleware::from_fn_with_state(state.clone(), auth)),
        )
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn(crate::metrics::track_api))
        .layer(middleware::map_response(json_method_not_allowed))
        .with_state(state)
}

/// axum answers a wrong method with an empty 405; scripts parse every
/// error as `{"error": {...}}` (found by the schema fuzzing), so it gets the
/// JSON error shape too, keeping the `Allow` header.
async fn json_method_not_allowed(res: Response) -> Response {
    if res.status() != StatusCode::METHOD_NOT_ALLOWED
        || res.headers().contains_key(header::CONTENT_TYPE)
    {
        return res;
    }
    let (mut parts, _) = res.into_parts();
    let (json, body) = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method; the Allow header lists those it takes (see /v1/openapi.json)",
    )
    .into_response()
    .into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.extend(json.headers);
    Response::from_parts(parts, body)
}

async fn unknown_path() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; see /v1/openapi.json",
    )
}

#[utoipa::path(
    get, path = "/healthz", tag = "ops",
    summary = "Liveness",
    responses((status = 200, description = "`ok`", body = String, content_type = "text/plain")),
)]
async fn healthz() -> &'static str {
    "ok\n"
}

#[utoipa::path(
    get, path = "/readyz", tag = "ops",
    summary = "Readiness: the store answers within 2 s",
    responses(
        (status = 200, description = "`ready`", body = String, content_type = "text/plain"),
        (status = 503, description = "Not ready (`not_ready`).", body = vesemir_api::ErrorBody),
    ),
)]
async fn readyz(State(state): State<Arc<AppState>>) -> Result<&'static str, ApiError> {
    tokio::time::timeout(Duration::from_secs(2), state.store.ping())
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "store timeout",
            )
        })?
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", e.to_string()))?;
    Ok("ready\n")
}

#[utoipa::path(
    get, path = "/metrics", tag = "ops",
    summary = "Prometheus metrics",
    responses((status = 200, description = "Text exposition format 0.0.4.", body = String, content_type = "text/plain")),
)]
async fn metrics(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let snap = crate::metrics::snapshot(&state).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::global().render(&snap),
    )
        .into_response())
}

#[utoipa::path(
    get, path = "/v1/openapi.json", tag = "ops",
    summary = "This document",
    responses((status = 200, description = "OpenAPI 3.1 document, generated from the vesemir-api types.", body = Object)),
)]
async fn openapi() -> Json<&'static serde_json::Value> {
    Json(openapi::document())
}

pub use vesemir_api::{CreateToken, CreatedToken};

#[utoipa::path(
    post, path = "/v1/tokens", tag = "fleet",
    summary = "Create an enrollment token (admin)",
    request_body(content = CreateToken, description = "`{}` for the defaults."),
    responses(
        (status = 201, description = "Created; the token is shown once.", body = CreatedToken),
        (status = 403, description = "The token is not an admin token (`forbidden`).", body = vesemir_api::ErrorBody),
    ),
)]
async fn create_token(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): axum::Extension<Caller>,
    body: Result<Json<CreateToken>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    require_admin(&caller)?;
    let Json(body) = body.map_err(json_rejection)?;
    let ttl = match body.ttl.as_deref() {
        None => Duration::from_secs(3600),
        Some(s) => humantime::parse_duration(s).map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
                format!("ttl: {e}; use a duration like 1h or 30m"),
            )
        })?,
    };
    if ttl < Duration::from_secs(1) || ttl > Duration::from_secs(30 * 24 * 3600) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            "ttl: must be between 1s and 30d",
        ));
    }
    let uses = body.uses.unwrap_or(1);
    if !(1..=100_000).contains(&uses) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            "uses: must be between 1 and 100000",
        ));
    }
    let token = format!("vsm_enr_{}", hex::encode(rand::random::<[u8; 24]>()));
    let expires = now_ms() + ttl.as_millis() as i64;
    let id = state
        .store
        .insert_enrollment_token(&token_hash(&token), expires, uses, &caller.name)
        .await?;
    tracing::info!(token_id = %id, uses, by = %caller.name, "enrollment token created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            id,
            token,
            expires_at: crate::fleet::rfc3339(expires),
            uses,
        }),
    ))
}

#[utoipa::path(
    get, path = "/v1/agents", tag = "fleet",
    summary = "List enrolled agents",
    responses((status = 200, description = "Agents.", body = Vec<vesemir_api::AgentView>)),
)]
async fn list_agents(
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<crate::fleet::AgentView>>, ApiError> {
    let agents = state.store.list_agents().await?;
    Ok(Json(
        agents.into_iter().map(|a| state.fleet.view(a)).collect(),
    ))
}

/// The canonical spelling of a node name in a path (`WEB-1.` is `web-1`), so
/// every spelling finds the one node; a name that has none stays as given
/// and is simply not found.
fn agent_name(raw: String) -> String {
    vesemir_protocol::enroll::canonical_node_name(&raw).unwrap_or(raw)
}

fn no_agent(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "agent_not_found",
        format!("no agent named {name:?}; `vesemir agents list` shows the enrolled ones"),
    )
}

#[utoipa::path(
    get, path = "/v1/agents/{name}", tag = "fleet",
    summary = "One agent",
    params(("name" = String, Path, description = "Agent (node) name.")),
    responses(
        (status = 200, description = "The agent.", body = vesemir_api::AgentView),
        (status = 404, description = "No such agent (`agent_not_found`).", body = vesemir_api::ErrorBody),
    ),
)]
async fn show_agent(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<crate::fleet::AgentView>, ApiError> {
    let name = agent_name(name);
    let agent = state
        .store
        .get_agent(&name)
        .await?
        .ok_or_else(|| no_agent(&name))?;
    Ok(Json(state.fleet.view(agent)))
}

#[utoipa::path(
    delete, path = "/v1/agents/{name}", tag = "fleet",
    summary = "Forget a revoked agent (admin) so its node name can enroll again; its certificates stay revoked",
    params(("name" = String, Path, description = "Agent (node) name.")),
    responses(
        (status = 200, description = "Forgotten.", body = vesemir_api::AgentForgotten),
        (status = 403, description = "Not an admin token (`forbidden`).", body = vesemir_api::ErrorBody),
        (status = 404, description = "No such agent (`agent_not_found`).", body = vesemir_api::ErrorBody),
        (status = 409, description = "The agent is not revoked; revoke it first (`agent_not_revoked`).", body = vesemir_api::ErrorBody),
    ),
)]
async fn forget_agent(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<vesemir_api::AgentForgotten>, ApiError> {
    let name = agent_name(name);
    require_admin(&caller)?;
    match state.store.forget_agent(&name).await? {
        crate::store::Forget::Forgotten => {
            tracing::info!(agent = %name, by = %caller.name, "revoked agent forgotten; its name may enroll again");
            Ok(Json(vesemir_api::AgentForgotten {
                name,
                forgotten: true,
            }))
        }
        crate::store::Forget::NotRevoked => Err(ApiError::new(
            StatusCode::CONFLICT,
            "agent_not_revoked",
            format!(
                "agent {name} is not revoked; revoke it first (`vesemir agents revoke {name}`)"
            ),
        )),
        crate::store::Forget::NotFound => Err(no_agent(&name)),
    }
}

#[utoipa::path(
    post, path = "/v1/agents/{name}/revoke", tag = "fleet",
    summary = "Revoke an agent (admin): closes its connection and refuses reconnects",
    params(("name" = String, Path, description = "Agent (node) name.")),
    responses(
        (status = 200, description = "The revoked agent.", body = vesemir_api::AgentView),
        (status = 403, description = "The token is not an admin token (`forbidden`).", body = vesemir_api::ErrorBody),
        (status = 404, description = "No such agent (`agent_not_found`).", body = vesemir_api::ErrorBody),
    ),
)]
async fn revoke_agent(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<crate::fleet::AgentView>, ApiError> {
    let name = agent_name(name);
    require_admin(&caller)?;
    if !state.fleet.revoke(&name).await? {
        return Err(no_agent(&name));
    }
    tracing::info!(agent = %name, by = %caller.name, "agent revoked");
    let agent = state
        .store
        .get_agent(&name)
        .await?
        .ok_or_else(|| no_agent(&name))?;
    Ok(Json(state.fleet.view(agent)))
}

/// `POST /v1/agents/{name}/run` body (a wire type of `vesemir-api`).
pub use vesemir_api::RunPlaybook;

pub use vesemir_api::{check_changeset, valid_playbook_name, ChangesetBody};

fn unprocessable(field: &str, message: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
        format!("{field}: {message}"),
    )
}

#[utoipa::path(
    post, path = "/v1/agents/{name}/run", tag = "fleet",
    summary = "Run a shipped playbook on one agent (admin); streams its events",
    description = "No overall timeout: the stream lasts as long as the job.",
    params(("name" = String, Path, description = "Agent (node) name.")),
    request_body = RunPlaybook,
    responses(
        (status = 200, description = "NDJSON: one JobEvent (`StreamEvent`) per line until `finished` (or `error`). `type`: `started` (job_id, replay), `task_started` (index, name), `log` (index, stream: stdout|stderr|runner, line), `task_result` (index, name, module, status: ok|changed|failed|skipped, duration_ms, rc, msg, stdout_tail, stderr_tail), `finished` (job_id, status: succeeded|failed|cancelled|interrupted|running|unknown, stats {ok, changed, failed, skipped}, error, output), `error` (message; last line).",
            body = vesemir_api::StreamEvent, content_type = "application/x-ndjson",
            headers(("vesemir-job-id" = String, description = "The job's id, sent before any event: `GET /v1/agents/{name}/jobs/{id}` fetches its result if the stream is cut."))),
        (status = 403, description = "The token is not an admin token (`forbidden`).", body = vesemir_api::ErrorBody),
        (status = 404, description = "No such agent (`agent_not_found`).", body = vesemir_api::ErrorBody),
        (status = 409, description = "The agent is not connected (`agent_not_connected`).", body = vesemir_api::ErrorBody),
        (status = 502, description = "The agent connection failed (`agent_error`).", body = vesemir_api::ErrorBody),
    ),
)]
async fn run_on_agent(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(name): Path<String>,
    body: Result<Json<RunPlaybook>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let name = agent_name(name);
    require_admin(&caller)?;
    let Json(body) = body.map_err(json_rejection)?;
    if !valid_playbook_name(&body.playbook) {
        return Err(unprocessable(
            "playbook",
            "must be the file name of a playbook shipped with the agent, e.g. restart.yml",
        ));
    }
    if let Some(c) = &body.changeset {
        check_changeset(c).map_err(|(f, m)| unprocessable(f, m))?;
    }
    if let Some((k, _)) = body
        .vars
        .iter()
        .find(|(_, v)| vesemir_protocol::job::climbs_out(v))
    {
        return Err(unprocessable(
            &format!("vars.{k}"),
            "must not contain a `..` path component or a NUL byte",
        ));
    }
    if state.store.get_agent(&name).await?.is_none() {
        return Err(no_agent(&name));
    }
    let req = vesemir_protocol::job::JobRequest {
        job_id: uuid::Uuid::now_v7().to_string(),
        deployment_id: None,
        kind: vesemir_protocol::job::JobKind::Playbook(vesemir_protocol::job::PlaybookJob {
            playbook: body.playbook.clone(),
            vars: body.vars,
            changeset: body.changeset.map(|c| vesemir_protocol::job::Changeset {
                version: c.version,
                url: c.url,
                sha256: c.sha256,
                playbook: c.playbook,
            }),
        }),
    };
    let job = state
        .fleet
        .start_job(&name, &req)
        .await
        .map_err(dispatch_error)?;
    tracing::info!(agent = %name, job_id = %req.job_id, playbook = %body.playbook, by = %caller.name, "playbook run started");
    let mut resp = stream_job(job);
    // The job id before any event: a client cut off later still knows
    // which job to ask the agent's journal about.
    if let Ok(v) = header::HeaderValue::from_str(&req.job_id) {
        resp.headers_mut().insert(JOB_ID_HEADER, v);
    }
    Ok(resp)
}

/// Response header of `POST /v1/agents/{name}/run` carrying the job id.
pub const JOB_ID_HEADER: &str = "vesemir-job-id";

fn dispatch_error(e: crate::fleet::DispatchError) -> ApiError {
    match e {
        crate::fleet::DispatchError::NotConnected(_) => {
            ApiError::new(StatusCode::CONFLICT, "agent_not_connected", e.to_string())
        }
        other => ApiError::new(StatusCode::BAD_GATEWAY, "agent_error", other.to_string()),
    }
}

/// A job's events as an NDJSON response, an `error` line last if the
/// stream to the agent broke.
fn stream_job(mut job: crate::fleet::JobStream) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(64);
    tokio::spawn(async move {
        loop {
            let line = match job.next().await {
                Ok(Some(ev)) => crate::events::event_json(&ev),
                Ok(None) => break,
                Err(e) => serde_json::json!({"type": "error", "message": e.to_string()}),
            };
            let stop = line["type"] == "error";
            if tx.send(Ok(format!("{line}\n"))).await.is_err() || stop {
                break;
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

/// Checks a job id from a path and opens a journal query for it on the
/// agent (`kind` is `Outcome` or `Attach`: neither runs anything).
async fn query_job(
    state: &AppState,
    name: &str,
    id: &str,
    kind: vesemir_protocol::job::JobKind,
) -> Result<crate::fleet::JobStream, ApiError> {
    if !vesemir_protocol::job::is_one_path_component(id) {
        return Err(unprocessable(
            "id",
            "must be a job id as `vesemir agents run` printed it",
        ));
    }
    if state.store.get_agent(name).await?.is_none() {
        return Err(no_agent(name));
    }
    let req = vesemir_protocol::job::JobRequest {
        job_id: id.to_string(),
        deployment_id: None,
        kind,
    };
    state
        .fleet
        .start_job(name, &req)
        .await
        .map_err(dispatch_error)
}

fn no_job(name: &str, id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "job_not_found",
        format!(
            "agent {name} has no record of job {id}: check the id (its journal keeps the newest 1000 jobs)"
        ),
    )
}

/// `GET /v1/agents/{name}/jobs/{id}`: the agent's journal record of a job
/// (`status` `running` while it runs).
#[utoipa::path(
    get, path = "/v1/agents/{name}/jobs/{id}", tag = "fleet",
    summary = "A job's record in the agent's journal (runs nothing)",
    description = "Asks the agent over its connection; `status` is `running` while the job runs. Use it to fetch the result of an `agents run` whose stream was cut (controller restart).",
    params(("name" = String, Path, description = "Agent (node) name; any spelling (`WEB-1.` is `web-1`)."), ("id" = String, Path, description = "Job id, as `POST /v1/agents/{name}/run` gave it (header `vesemir-job-id`, first `started` event).")),
    responses(
        (status = 200, description = "The journal's outcome: job_id, status (succeeded|failed|cancelled|interrupted|running), stats {ok, changed, failed, skipped}, error, output.", body = vesemir_api::JobOutcome),
        (status = 404, description = "No such agent (`agent_not_found`), or the agent's journal has no such job (`job_not_found`).", body = vesemir_api::ErrorBody),
        (status = 409, description = "The agent is not connected (`agent_not_connected`).", body = vesemir_api::ErrorBody),
        (status = 422, description = "Not a job id (`invalid_request`, message starts with `id:`).", body = vesemir_api::ErrorBody),
        (status = 502, description = "The agent connection failed or the agent stopped responding (`agent_error`).", body = vesemir_api::ErrorBody),
    ),
)]
async fn job_outcome(
    State(state): State<Arc<AppState>>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Json<vesemir_api::JobOutcome>, ApiError> {
    let name = agent_name(name);
    let mut job = query_job(&state, &name, &id, vesemir_protocol::job::JobKind::Outcome).await?;
    // The route's timeout layer bounds this wait.
    loop {
        match job.next().await.map_err(dispatch_error)? {
            Some(vesemir_protocol::job::JobEvent::Finished(o)) => {
                if o.status == vesemir_protocol::job::JobStatus::Unknown {
                    return Err(no_job(&name, &id));
                }
                return Ok(Json(vesemir_api::JobOutcome {
                    status: o.status.as_str().to_string(),
                    stats: vesemir_api::JobStats {
                        ok: o.stats.ok.into(),
                        changed: o.stats.changed.into(),
                        failed: o.stats.failed.into(),
                        skipped: o.stats.skipped.into(),
                    },
                    error: o.error,
                    // The replies themselves, as before protocol v3 (a JSON list).
                    output: o.output.as_ref().and_then(|out| match out {
                        vesemir_protocol::job::JobOutput::Haproxy(r) => {
                            serde_json::to_value(r).ok()
                        }
                    }),
                    job_id: o.job_id,
                }));
            }
            Some(_) => continue,
            None => {
                return Err(ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "agent_error",
                    format!("agent {name} closed the stream without answering; retry"),
                ))
            }
        }
    }
}

/// `GET /v1/agents/{name}/jobs/{id}/events`: follow a job (NDJSON, like
/// `run`): its live events while it runs, then its journal record.
#[utoipa::path(
    get, path = "/v1/agents/{name}/jobs/{id}/events", tag = "fleet",
    summary = "Follow a job: its live events while it runs, then its journal record",
    description = "NDJSON like `POST /v1/agents/{name}/run`, joined where the job is now; ends with `finished` (from the journal if the job already ended; `status: running` if it is between its live events and its record: ask again) or `error`. No overall timeout.",
    params(("name" = String, Path, description = "Agent (node) name; any spelling (`WEB-1.` is `web-1`)."), ("id" = String, Path, description = "Job id, as `POST /v1/agents/{name}/run` gave it (header `vesemir-job-id`, first `started` event).")),
    responses(
        (status = 200, description = "NDJSON: one JobEvent (`StreamEvent`) per line until `finished` (or `error`).", body = vesemir_api::StreamEvent, content_type = "application/x-ndjson"),
        (status = 404, description = "No such agent (`agent_not_found`), or the agent's journal has no such job (`job_not_found`).", body = vesemir_api::ErrorBody),
        (status = 409, description = "The agent is not connected (`agent_not_connected`).", body = vesemir_api::ErrorBody),
        (status = 422, description = "Not a job id (`invalid_request`, message starts with `id:`).", body = vesemir_api::ErrorBody),
        (status = 502, description = "The agent connection failed or the agent stopped responding (`agent_error`).", body = vesemir_api::ErrorBody),
    ),
)]
async fn follow_job(
    State(state): State<Arc<AppState>>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let name = agent_name(name);
    let job = query_job(&state, &name, &id, vesemir_protocol::job::JobKind::Attach).await?;
    Ok(stream_job(job))
}

/// The configured inventory, or a 409 saying how to configure one.
pub fn inventory(state: &AppState) -> Result<Arc<crate::inventory::InventorySource>, ApiError> {
    state.inventory.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "no_inventory",
            "no inventory configured: init the controller with --chef-url/--chef-client/--chef-key or --inventory FILE",
        )
    })
}

/// Maps an inventory error: bad selectors are the caller's (422), the rest 502.
pub fn inventory_error(field: &str, e: crate::inventory::InventoryError) -> ApiError {
    use crate::inventory::InventoryError as E;
    match e {
        E::EmptySelector | E::InvalidSelector(_) | E::RawQueryUnsupported => {
            unprocessable(field, e)
        }
        other => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "inventory_unavailable",
            other.to_string(),
        ),
    }
}

#[utoipa::path(
    post, path = "/v1/inventory/resolve", tag = "inventory",
    summary = "Resolve a selector to hosts (Chef search or static inventory)",
    request_body = vesemir_api::Selector,
    responses(
        (status = 200, description = "Matching hosts, sorted by name, with their agent state.", body = vesemir_api::Resolved),
        (status = 409, description = "No inventory configured (`no_inventory`).", body = vesemir_api::ErrorBody),
        (status = 502, description = "Inventory unreachable or failing (`inventory_unavailable`).", body = vesemir_api::ErrorBody),
    ),
)]
async fn resolve_inventory(
    State(state): State<Arc<AppState>>,
    body: Result<Json<crate::inventory::Selector>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<vesemir_api::Resolved>, ApiError> {
    let Json(sel) = body.map_err(json_rejection)?;
    let inv = inventory(&state)?;
    let res = inv
        .resolve(&sel)
        .await
        .map_err(|e| inventory_error("selector", e))?;
    let mut hosts = Vec::with_capacity(res.hosts.len());
    for h in res.hosts {
        // Chef may spell a node `WEB-1`; its agent enrolled as `web-1`.
        let agent = match state.store.get_agent(&agent_name(h.name.clone())).await? {
            Some(rec) => state.fleet.view(rec).state.as_str(),
            None => "none",
        };
        hosts.push(vesemir_api::ResolvedHost {
            name: h.name,
            address: h.address,
            fqdn: h.fqdn,
            hostname: h.hostname,
            tags: h.tags,
            roles: h.roles,
            environment: h.environment,
            agent: agent.to_string(),
        });
    }
    Ok(Json(vesemir_api::Resolved {
        query: res.query,
        hosts,
    }))
}

#[cfg(test)]
mod tests {
    use super::field_first;

    #[test]
    fn changeset_versions_are_one_safe_path_component() {
        let c = |v: &str| super::ChangesetBody {
            version: v.into(),
            url: "http://x/a.tgz".into(),
            sha256: "a".repeat(64),
            playbook: None,
        };
        for bad in ["..", ".", ".hidden", "a/b", ""] {
            let e = super::check_changeset(&c(bad)).unwrap_err();
            assert_eq!(e.0, "changeset.version", "{bad:?}");
        }
        for good in ["1.0", "2.4.1+build.7", "v1_rc-2"] {
            assert!(super::check_changeset(&c(good)).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn json_errors_start_with_the_field() {
        let pre = "Failed to deserialize the JSON body into the target type: ";
        for (input, want) in [
            (
                "changeset: missing field `sha256` at line 1 column 112",
                "changeset.sha256: required",
            ),
            (
                ".: missing field `team` at line 1 column 3",
                "team: required",
            ),
            (
                "concurrency: invalid type: map, expected i64 at line 1 column 9",
                "concurrency: invalid type: map, expected i64",
            ),
            (
                ".: unknown field `nope`, expected `a` or `b` at line 1 column 7",
                "request: unknown field `nope`, expected `a` or `b`",
            ),
        ] {
            assert_eq!(field_first(&format!("{pre}{input}")), want);
        }
        let other = "Expected request with `Content-Type: application/json`";
        assert_eq!(field_first(other), other);
    }
}
