//! HTTP handlers of the deployments API (docs/API.md). API boundary: the
//! JSON built here is what the CLI reads.

use super::{json_rejection, query_rejection, ApiError, AppState, Caller};
use crate::deploy::plan::{batches, make_plan, PlanError};
use crate::deploy::request::DeployRequest;
use crate::deploy::{SubmitError, Submitted};
use crate::fleet::rfc3339;
use crate::freeze::Frozen;
use crate::store::{DeploymentRow, HaproxyActionRow, HostRow};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

fn host_view(h: &HostRow) -> vesemir_api::HostView {
    vesemir_api::HostView {
        name: h.name.clone(),
        address: h.address.clone(),
        server_name: h.server_name.clone(),
        status: h.status.clone(),
        step: h.step.clone(),
        job_id: h.job_id.clone(),
        rotation: h.rotation.clone(),
        stats: vesemir_api::HostStats {
            ok: h.stats[0],
            changed: h.stats[1],
            failed: h.stats[2],
            unreachable: h.stats[3],
            skipped: h.stats[4],
        },
        started_at: h.started_at.map(rfc3339),
        finished_at: h.finished_at.map(rfc3339),
        duration_ms: h.started_at.zip(h.finished_at).map(|(s, f)| f - s),
        error: h.error.clone(),
    }
}

fn action_view(a: &HaproxyActionRow) -> vesemir_api::HaproxyActionView {
    vesemir_api::HaproxyActionView {
        at: rfc3339(a.at),
        host: a.host.clone(),
        haproxy_vm: a.haproxy_vm.clone(),
        backend: a.backend.clone(),
        server: a.server.clone(),
        action: a.action.clone(),
        ok: a.ok,
        detail: a.detail.clone(),
    }
}

/// A deployment as the API shows it; with hosts and HAProxy actions for
/// the detail view.
pub fn deployment_view(
    d: &DeploymentRow,
    detail: Option<(&[HostRow], &[HaproxyActionRow])>,
) -> vesemir_api::DeploymentView {
    // Versioned or raw, the view shows the request itself (no envelope).
    let request: Option<DeployRequest> = vesemir_api::StoredRequest::parse(&d.request)
        .ok()
        .map(|r| r.into_request());
    let detail = detail.map(|(hosts, actions)| {
        let mut summary = vesemir_api::HostSummary::default();
        for h in hosts {
            summary.count(&h.status);
        }
        vesemir_api::DeploymentDetail {
            summary,
            hosts: hosts.iter().map(host_view).collect(),
            request: request.clone(),
            haproxy_actions: actions.iter().map(action_view).collect(),
        }
    });
    let r = request.as_ref();
    vesemir_api::DeploymentView {
        id: d.id.clone(),
        application: d.application.clone(),
        environment: d.environment.clone(),
        team: d.team.clone(),
        status: d.status.clone(),
        requested_by: d.requested_by.clone(),
        created_at: rfc3339(d.created_at),
        started_at: d.started_at.map(rfc3339),
        finished_at: d.finished_at.map(rfc3339),
        duration_ms: d.started_at.zip(d.finished_at).map(|(s, f)| f - s),
        query: d.query.clone(),
        haproxy_query: d.haproxy_query.clone(),
        haproxy_vms: d
            .haproxy_vms
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok()),
        hosts_total: d.hosts_total,
        cancel_requested: d.cancel_requested,
        concurrency: r.map(|r| r.concurrency.clone()),
        max_unavailable: r.and_then(|r| r.max_unavailable),
        max_fail_percentage: r.map(|r| r.max_fail_percentage),
        playbook: r.map(|r| r.playbook.clone()),
        changeset: r.and_then(|r| r.changeset.clone()),
        error: d.error.clone(),
        freeze_override: d
            .freeze_override
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok()),
        detail,
    }
}

fn invalid(field_and_message: String) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
        field_and_message,
    )
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(v) => {
            let k = v
                .to_str()
                .map_err(|_| invalid("Idempotency-Key: must be printable ASCII".into()))?;
            if k.is_empty() || k.len() > 200 {
                return Err(invalid("Idempotency-Key: must be 1-200 characters".into()));
            }
            Ok(Some(k.to_string()))
        }
    }
}

async fn submit(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    req: DeployRequest,
) -> Result<Response, ApiError> {
    let deployments = &state.deployments;
    if req.dry_run {
        deployments
            .validate(&req)
            .map_err(|e| invalid(format!("{}: {}", e.field, e.message)))?;
        let plan = make_plan(deployments, &req, true)
            .await
            .map_err(plan_error)?;
        let names: Vec<String> = plan.hosts.iter().map(|h| h.name.clone()).collect();
        let concurrency = req.concurrency_for(names.len());
        let mut view = plan_view(&req, plan, batches(&req, &names), concurrency);
        // A dry run answers 200 with what a submission would meet: the
        // freeze is a problem unless this token's override would pass.
        view.freeze = deployments.planned_freeze(
            &req,
            &caller.name,
            &caller.role,
            time::OffsetDateTime::now_utc(),
        );
        if let Some(f) = view.freeze.as_ref().filter(|f| f.outcome != "overridden") {
            view.problems.push(f.message.clone());
        }
        return Ok(Json(view).into_response());
    }
    let key = idempotency_key(headers)?;
    match deployments
        .submit(&req, &caller.name, &caller.role, key.as_deref())
        .await
    {
        Ok(Submitted::Created(id)) => Ok((
            StatusCode::ACCEPTED,
            Json(vesemir_api::DeploymentAccepted {
                url: Some(format!("/v1/deployments/{id}")),
                id,
                status: Some("pending".into()),
                idempotent_replay: None,
            }),
        )
            .into_response()),
        Ok(Submitted::Existing(id)) => {
            let row = state.store.get_deployment(&id).await?;
            Ok((
                StatusCode::OK,
                Json(vesemir_api::DeploymentAccepted {
                    url: Some(format!("/v1/deployments/{id}")),
                    id,
                    status: row.map(|r| r.status),
                    idempotent_replay: Some(true),
                }),
            )
                .into_response())
        }
        Err(SubmitError::Invalid(e)) => Err(invalid(format!("{}: {}", e.field, e.message))),
        Err(e @ SubmitError::Running(_)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "deployment_running",
            e.to_string(),
        )),
        Err(SubmitError::Frozen(e @ Frozen::Refused { .. })) => {
            Err(ApiError::new(StatusCode::CONFLICT, "frozen", e.to_string()))
        }
        Err(SubmitError::Frozen(e @ Frozen::NotAllowed { .. })) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "freeze_override_forbidden",
            e.to_string(),
        )),
        Err(SubmitError::Store(e)) => Err(e.into()),
    }
}

/// The dry run's answer, from the plan.
fn plan_view(
    req: &DeployRequest,
    plan: crate::deploy::plan::Plan,
    batches: Vec<Vec<String>>,
    concurrency: usize,
) -> vesemir_api::PlanView {
    let total = plan.hosts.len();
    vesemir_api::PlanView {
        dry_run: true,
        application: req.application.clone(),
        environment: req.environment.clone(),
        query: plan.query,
        haproxy_query: plan.haproxy_query,
        concurrency,
        max_unavailable: req.max_unavailable_for(total),
        hosts: plan
            .hosts
            .into_iter()
            .map(|h| vesemir_api::PlannedHost {
                name: h.name,
                address: h.address,
                server_name: h.server_name,
                agent: h.agent,
            })
            .collect(),
        batches,
        haproxy: req.haproxy.as_ref().map(|h| vesemir_api::PlannedHaproxy {
            backend: h.backend.clone(),
            vms: plan
                .haproxy_vms
                .into_iter()
                .map(|v| vesemir_api::PlannedVm {
                    name: v.name,
                    agent: v.agent,
                    servers: v.servers,
                })
                .collect(),
        }),
        problems: plan.problems,
        playbook: plan.playbook.map(|p| vesemir_api::PlaybookCoverage {
            name: p.name,
            missing: p.missing,
            drift: p
                .drift
                .into_iter()
                .map(|d| vesemir_api::PlaybookDrift {
                    host: d.host,
                    sha256: d.sha256,
                })
                .collect(),
            sha256: p.sha256,
            unknown: p.unknown,
        }),
        freeze: None,
    }
}

fn plan_error(e: PlanError) -> ApiError {
    match e {
        PlanError::Selector { .. } | PlanError::ServerName(_) => invalid(e.to_string()),
        PlanError::NoInventory => {
            ApiError::new(StatusCode::CONFLICT, "no_inventory", e.to_string())
        }
        PlanError::Inventory(_) => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "inventory_unavailable",
            e.to_string(),
        ),
    }
}

/// `POST /v1/deployments`.
#[utoipa::path(
    post, path = "/v1/deployments", tag = "deployments",
    summary = "Start a deployment (or plan it with dry_run)",
    description = "Answers at once; the work runs in the background. Follow it with GET /v1/deployments/{id}/logs?follow=true.",
    params(("Idempotency-Key" = Option<String>, Header, max_length = 200, min_length = 1, description = "Same key again returns the same deployment (200, `idempotent_replay: true`) instead of creating a new one. 1-200 printable ASCII characters.")),
    request_body = DeployRequest,
    responses(
        (status = 202, description = "Accepted; status `pending`.", body = vesemir_api::DeploymentAccepted),
        (status = 200, description = "Dry run: the plan. Or, with a repeated Idempotency-Key, the existing deployment (`idempotent_replay: true`).", body = super::openapi::PlanOrReplay),
        (status = 409, description = "A deployment of the same application and environment is running (`deployment_running`), or no inventory is configured (`no_inventory`).", body = vesemir_api::ErrorBody),
        (status = 502, description = "Inventory unavailable during a dry run (`inventory_unavailable`).", body = vesemir_api::ErrorBody),
    ),
)]
pub async fn create(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): axum::Extension<Caller>,
    headers: HeaderMap,
    body: Result<Json<DeployRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body.map_err(json_rejection)?;
    submit(&state, &caller, &headers, req).await
}

/// `GET /v1/deployments` filters.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    application: Option<String>,
    environment: Option<String>,
    status: Option<String>,
    limit: Option<i64>,
    offset: Option<i64>,
}

/// `GET /v1/deployments`.
#[utoipa::path(
    get, path = "/v1/deployments", tag = "deployments",
    summary = "List deployments, newest first",
    params(
        ("application" = Option<String>, Query, description = "Only this application."),
        ("environment" = Option<String>, Query, description = "Only this environment."),
        ("status" = Option<String>, Query, description = "Only this status: pending, running, succeeded, failed, aborted or cancelled."),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "Page size (default 50)."),
        ("offset" = Option<i64>, Query, minimum = 0, description = "Skip this many (default 0)."),
    ),
    responses((status = 200, description = "A page of deployment summaries.", body = vesemir_api::DeploymentList)),
)]
pub async fn list(
    State(state): State<Arc<AppState>>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<vesemir_api::DeploymentList>, ApiError> {
    let Query(q) = q.map_err(query_rejection)?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(invalid("limit: must be between 1 and 1000".into()));
    }
    let offset = q.offset.unwrap_or(0);
    if offset < 0 {
        return Err(invalid("offset: must be 0 or more".into()));
    }
    let (rows, total) = state
        .store
        .list_deployments(
            q.application.as_deref(),
            q.environment.as_deref(),
            q.status.as_deref(),
            limit,
            offset,
        )
        .await?;
    Ok(Json(vesemir_api::DeploymentList {
        deployments: rows.iter().map(|r| deployment_view(r, None)).collect(),
        total,
    }))
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "deployment_not_found",
        format!("no deployment {id:?}; `vesemir deployments list` shows them"),
    )
}

/// `GET /v1/deployments/{id}`.
#[utoipa::path(
    get, path = "/v1/deployments/{id}", tag = "deployments",
    summary = "One deployment with hosts, HAProxy actions and the request",
    params(("id" = String, Path, description = "Deployment id.")),
    responses(
        (status = 200, description = "The deployment.", body = super::openapi::DeploymentWithDetail),
        (status = 404, description = "No such deployment (`deployment_not_found`).", body = vesemir_api::ErrorBody),
    ),
)]
pub async fn show(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<vesemir_api::DeploymentView>, ApiError> {
    let row = state
        .store
        .get_deployment(&id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    let hosts = state.store.deployment_hosts(&id).await?;
    let actions = state.store.haproxy_actions(&id).await?;
    Ok(Json(deployment_view(&row, Some((&hosts, &actions)))))
}

/// `POST /v1/deployments/{id}/cancel`.
#[utoipa::path(
    post, path = "/v1/deployments/{id}/cancel", tag = "deployments",
    summary = "Cancel: no new host starts, hosts in flight finish, ends `cancelled`",
    params(("id" = String, Path, description = "Deployment id.")),
    responses(
        (status = 202, description = "Cancelling (`status: cancelling`).", body = vesemir_api::DeploymentAccepted),
        (status = 404, description = "No such deployment (`deployment_not_found`).", body = vesemir_api::ErrorBody),
        (status = 409, description = "Already finished (`deployment_finished`).", body = vesemir_api::ErrorBody),
    ),
)]
pub async fn cancel(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let row = state
        .store
        .get_deployment(&id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    if !state.deployments.cancel(&id).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "deployment_finished",
            format!("deployment {id} already ended {}", row.status),
        ));
    }
    tracing::info!(deployment_id = %id, by = %caller.name, "cancel requested");
    Ok((
        StatusCode::ACCEPTED,
        Json(vesemir_api::DeploymentAccepted {
            id,
            status: Some("cancelling".into()),
            url: None,
            idempotent_replay: None,
        }),
    )
        .into_response())
}

/// `POST /v1/deployments/rollback` body (a wire type of `vesemir-api`).
pub use vesemir_api::RollbackRequest as RollbackBody;

/// `POST /v1/deployments/rollback`.
#[utoipa::path(
    post, path = "/v1/deployments/rollback", tag = "deployments",
    summary = "Deploy again the previous successful changeset",
    description = "Takes the latest succeeded deployment of the application and environment whose changeset version differs from the current one, and submits its request again.",
    params(("Idempotency-Key" = Option<String>, Header, max_length = 200, min_length = 1, description = "Same key again returns the same deployment (200, `idempotent_replay: true`) instead of creating a new one. 1-200 printable ASCII characters.")),
    request_body = RollbackBody,
    responses(
        (status = 202, description = "Accepted, as for a deploy.", body = vesemir_api::DeploymentAccepted),
        (status = 200, description = "Replay of an earlier Idempotency-Key.", body = vesemir_api::DeploymentAccepted),
        (status = 404, description = "No earlier successful changeset to roll back to (`no_previous_release`).", body = vesemir_api::ErrorBody),
        (status = 409, description = "A deployment of the same application and environment is running (`deployment_running`).", body = vesemir_api::ErrorBody),
    ),
)]
pub async fn rollback(
    State(state): State<Arc<AppState>>,
    axum::Extension(caller): axum::Extension<Caller>,
    headers: HeaderMap,
    body: Result<Json<RollbackBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(json_rejection)?;
    let done = state
        .store
        .succeeded_deployments(&body.application, &body.environment, 100)
        .await?;
    let current = done.first().and_then(|d| d.changeset_version.clone());
    let previous = done
        .iter()
        .find(|d| d.changeset_version.is_some() && d.changeset_version != current);
    let Some(previous) = previous else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_previous_release",
            format!(
                "no earlier successful changeset of {} in {} to roll back to",
                body.application, body.environment
            ),
        ));
    };
    let mut req: DeployRequest = vesemir_api::StoredRequest::parse(&previous.request)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .into_request();
    req.dry_run = false;
    // An override was given for that deployment, at that time: it does not
    // carry over. A rollback inside a freeze is refused like any deploy
    // (docs/API.md says how to redeploy the previous changeset with one).
    req.override_freeze = None;
    tracing::info!(application = %body.application, environment = %body.environment, to = ?previous.changeset_version, "rollback requested");
    submit(&state, &caller, &headers, req).await
}

/// `GET /v1/deployments/{id}/logs` parameters.
#[derive(Debug, Deserialize)]
pub struct LogsQuery {
    #[serde(default)]
    after: i64,
    #[serde(default)]
    follow: bool,
}

/// One NDJSON line of a stream.
fn event_line<const N: usize>(kind: &str, fields: [(&str, Value); N]) -> String {
    let ev = vesemir_api::StreamEvent::new(
        kind,
        fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    );
    format!("{}\n", serde_json::to_string(&ev).unwrap_or_default())
}

/// `GET /v1/deployments/{id}/logs`: NDJSON, optionally followed to the end.
#[utoipa::path(
    get, path = "/v1/deployments/{id}/logs", tag = "deployments",
    summary = "A deployment's ordered event log, optionally followed to the end",
    params(
        ("id" = String, Path, description = "Deployment id."),
        ("after" = Option<i64>, Query, description = "Only events with seq greater than this (default 0)."),
        ("follow" = Option<bool>, Query, description = "Keep the stream open until the deployment ends (last line `{\"type\":\"end\",\"status\":…}`); keepalive lines every 10 s of silence."),
    ),
    responses(
        (status = 200, description = "NDJSON: one LogEvent (`StreamEvent`) per line, in seq order. Without follow, what is stored, then the stream closes. Stored events carry seq, ts, host (null for deployment-wide) and type: `log` (stream, line), `task_started` (name), `task_result` (name, status, duration_ms, msg), `step` (step), `host_finished` (status, error), `haproxy` (action, haproxy_vm, ok, detail), `deployment` (status, error). Control lines: `end` (status; last line of a followed stream), `keepalive` (every 10 s of silence when following), `error` (message).", body = vesemir_api::StreamEvent, content_type = "application/x-ndjson"),
        (status = 404, description = "No such deployment (`deployment_not_found`).", body = vesemir_api::ErrorBody),
    ),
)]
pub async fn logs(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    q: Result<Query<LogsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(query_rejection)?;
    state
        .store
        .get_deployment(&id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(16);
    let st = state.clone();
    tokio::spawn(async move {
        let mut after = q.after;
        let mut updates = st.deployments.log_updates();
        let mut idle = tokio::time::Instant::now();
        loop {
            let rows = match st.store.logs_after(&id, after, 500).await {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx
                        .send(Ok(event_line("error", [("message", e.to_string().into())])))
                        .await;
                    return;
                }
            };
            if !rows.is_empty() {
                let mut chunk = String::new();
                for r in &rows {
                    chunk.push_str(&crate::deploy::logs::row_json(r).to_string());
                    chunk.push('\n');
                }
                after = rows.last().map_or(after, |r| r.seq);
                if tx.send(Ok(chunk)).await.is_err() {
                    return;
                }
                idle = tokio::time::Instant::now();
                continue;
            }
            if !q.follow {
                return;
            }
            // Caught up: finished deployments end the stream.
            let status = match st.store.get_deployment(&id).await {
                Ok(Some(r)) => r.status,
                _ => return,
            };
            let finished = !matches!(status.as_str(), "pending" | "running");
            if finished && !st.deployments.is_running_here(&id) {
                // One last read: the writer may have flushed after our read.
                if let Ok(rows) = st.store.logs_after(&id, after, 1).await {
                    if !rows.is_empty() {
                        continue;
                    }
                }
                let _ = tx
                    .send(Ok(event_line("end", [("status", status.into())])))
                    .await;
                return;
            }
            if idle.elapsed() >= Duration::from_secs(10) {
                if tx.send(Ok(event_line("keepalive", []))).await.is_err() {
                    return;
                }
                idle = tokio::time::Instant::now();
            }
            // Woken by new rows; the timeout also covers other controllers
            // writing to the same database.
            let _ = tokio::time::timeout(Duration::from_millis(500), updates.changed()).await;
        }
    });
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|i| (i, rx)) });
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(stream),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stream's own lines parse as `vesemir-api`'s typed events.
    #[test]
    fn stream_lines_parse_as_the_shared_type() {
        use vesemir_api::{Event, StreamLine};
        let parse = |l: String| serde_json::from_str::<StreamLine>(l.trim()).unwrap().event;
        assert_eq!(
            parse(event_line("end", [("status", "failed".into())])),
            Event::End {
                status: "failed".into()
            }
        );
        assert_eq!(parse(event_line("keepalive", [])), Event::Keepalive);
        assert_eq!(
            parse(event_line("error", [("message", "store down".into())])),
            Event::Error {
                message: "store down".into()
            }
        );
    }

    fn row(request: String) -> DeploymentRow {
        DeploymentRow {
            id: "d1".into(),
            application: "pay".into(),
            environment: "prod".into(),
            team: "t".into(),
            status: "succeeded".into(),
            requested_by: "admin".into(),
            request,
            changeset_version: Some("1.0".into()),
            query: None,
            haproxy_query: None,
            haproxy_vms: None,
            hosts_total: 0,
            cancel_requested: false,
            created_at: 0,
            started_at: None,
            finished_at: None,
            error: None,
            freeze_override: None,
        }
    }

    /// A row written before requests were version-tagged (the raw body) and
    /// one written now show the same request, without the envelope.
    #[test]
    fn raw_and_versioned_rows_show_the_same_request() {
        let raw = serde_json::json!({
            "application": "pay", "environment": "prod", "team": "t",
            "selector": {"tags": ["app:pay"]}, "concurrency": "50%",
            "changeset": {"version": "1.0", "url": "http://x/a.tgz", "sha256": "a".repeat(64)}
        })
        .to_string();
        let req = vesemir_api::StoredRequest::parse(&raw)
            .unwrap()
            .into_request();
        let versioned = vesemir_api::StoredRequest::new(req).to_json();
        assert!(versioned.contains("\"version\":1"), "{versioned}");
        let old = serde_json::to_value(deployment_view(&row(raw), Some((&[], &[])))).unwrap();
        let new = serde_json::to_value(deployment_view(&row(versioned), Some((&[], &[])))).unwrap();
        assert_eq!(old["request"], new["request"]);
        assert_eq!(new["concurrency"], "50%");
        assert_eq!(new["request"]["application"], "pay");
        assert!(new["request"].get("version").is_none());
        // A list row has no detail fields.
        let row = serde_json::to_value(deployment_view(&row(String::new()), None)).unwrap();
        assert!(
            row.get("hosts").is_none() && row.get("summary").is_none(),
            "{row}"
        );
        assert!(row["concurrency"].is_null(), "{row}");
    }
}
