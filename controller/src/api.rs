//! The HTTP API (axum). `/healthz`, `/readyz`, `/metrics` are open; all of
//! `/v1/` needs a bearer token. Errors are JSON `{"error":{"code","message"}}`
//! with a message a user can act on.
//!
//! API boundary: the JSON shapes here are what the CLI and scripts rely on.

use crate::enroll::token_hash;
use crate::fleet::Fleet;
use crate::store::{now_ms, Store};
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
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
            Json(serde_json::json!({"error": {"code": self.code, "message": self.message}})),
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
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", e.body_text())
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
        .route("/v1/agents/{name}", get(show_agent))
        .route("/v1/agents/{name}/revoke", post(revoke_agent))
        .layer(middleware::from_fn_with_state(state.clone(), timeout_layer))
        .layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/openapi.json", get(openapi))
        .merge(v1)
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint; see /v1/openapi.json",
            )
        })
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

async fn readyz(State(state): State<Arc<AppState>>) -> Result<&'static str, ApiError> {
    tokio::time::timeout(Duration::from_secs(2), state.store.ping())
        .await
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", "store timeout"))?
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", e.to_string()))?;
    Ok("ready\n")
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let connected = state.fleet.connected_count();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        format!(
            "# HELP vesemir_agents_connected Agents with a live QUIC connection.\n\
             # TYPE vesemir_agents_connected gauge\n\
             vesemir_agents_connected {connected}\n"
        ),
    )
}

async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
}

/// `POST /v1/tokens` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// Lifetime, humantime ("1h"). Default 1h.
    #[serde(default)]
    pub ttl: Option<String>,
    /// Number of enrollments allowed. Default 1.
    #[serde(default)]
    pub uses: Option<i64>,
}

/// `POST /v1/tokens` answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct CreatedToken {
    /// Token id (not secret).
    pub id: String,
    /// The token itself; shown once, stored hashed.
    pub token: String,
    /// Expiry, RFC 3339.
    pub expires_at: String,
    /// Enrollments allowed.
    pub uses: i64,
}

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

async fn list_agents(
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<crate::fleet::AgentView>>, ApiError> {
    let agents = state.store.list_agents().await?;
    Ok(Json(
        agents.into_iter().map(|a| state.fleet.view(a)).collect(),
    ))
}

fn no_agent(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "agent_not_found",
        format!("no agent named {name:?}; `vesemir agents list` shows the enrolled ones"),
    )
}

async fn show_agent(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<crate::fleet::AgentView>, ApiError> {
    let agent = state
        .store
        .get_agent(&name)
        .await?
        .ok_or_else(|| no_agent(&name))?;
    Ok(Json(state.fleet.view(agent)))
}

async fn revoke_agent(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<crate::fleet::AgentView>, ApiError> {
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
