//! `GET /v1/openapi.json`, generated from the `vesemir-api` wire types
//! (their `ToSchema` derives) and the `#[utoipa::path]` annotations on the
//! handlers, so the document cannot drift from what is on the wire.
//!
//! What every operation shares (the bearer scheme, the 401/413/422/503 error
//! answers) is added here once instead of on each handler.

use super::{deployments, RunPlaybook};
use serde::Serialize;
use serde_json::{json, Value};
use std::sync::OnceLock;
use utoipa::{OpenApi, ToSchema};
use vesemir_api::{DeploymentAccepted, DeploymentDetail, DeploymentView, PlanView};

/// Endpoints open without a token (`security: []`).
pub const OPEN: &[&str] = &["/healthz", "/readyz", "/metrics", "/v1/openapi.json"];

/// Streaming routes: no overall timeout, so no 503 `timeout`.
const STREAMS: &[&str] = &[
    "/v1/agents/{name}/run",
    "/v1/agents/{name}/jobs/{id}/events",
    "/v1/deployments/{id}/logs",
];

/// `GET /v1/deployments/{id}`: a list row plus what only the detail adds
/// (documentation only: the handler sends [`DeploymentView`] with its
/// flattened `detail`).
#[derive(Serialize, ToSchema)]
#[schema(as = Deployment)]
pub struct DeploymentWithDetail {
    #[serde(flatten)]
    view: DeploymentView,
    #[serde(flatten)]
    detail: DeploymentDetail,
}

/// `POST /v1/deployments` 200: the dry-run plan, or an idempotent replay.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code, clippy::large_enum_variant)] // only its schema is used, never a value
pub enum PlanOrReplay {
    /// `dry_run: true`.
    Plan(PlanView),
    /// A repeated `Idempotency-Key`.
    Replay(DeploymentAccepted),
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "vesemir controller API",
        version = "1",
        description = "Everything under /v1/ needs `Authorization: Bearer TOKEN` except /v1/openapi.json; /healthz, /readyz and /metrics are open. Errors are `{\"error\": {\"code\", \"message\"}}`; invalid fields give 422 with a message that starts with the field. See docs/API.md. Generated from the vesemir-api types.",
    ),
    tags(
        (name = "ops", description = "Health, readiness, metrics and this document."),
        (name = "fleet", description = "Enrollment tokens and agents."),
        (name = "inventory", description = "Selectors resolved against Chef or the static inventory."),
        (name = "deployments", description = "Deployments: start, plan, follow, cancel, roll back."),
    ),
    security(("bearer" = [])),
    paths(
        super::healthz,
        super::readyz,
        super::metrics,
        super::openapi,
        super::create_token,
        super::list_agents,
        super::show_agent,
        super::forget_agent,
        super::revoke_agent,
        super::run_on_agent,
        super::job_outcome,
        super::follow_job,
        super::resolve_inventory,
        deployments::create,
        deployments::list,
        deployments::rollback,
        deployments::show,
        deployments::cancel,
        deployments::logs,
    ),
    components(schemas(RunPlaybook, DeploymentWithDetail, PlanOrReplay)),
)]
struct ApiDoc;

/// The document served at `/v1/openapi.json` (built once).
pub fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = serde_json::to_value(ApiDoc::openapi())
            .expect("an OpenAPI document serializes to JSON");
        add_shared(&mut doc);
        doc
    })
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    })
}

/// The bearer scheme, `security: []` on the open endpoints, and the error
/// answers that every authenticated (or body-taking, or timed) operation
/// shares, unless the operation documents its own.
fn add_shared(doc: &mut Value) {
    doc["components"]["securitySchemes"] = json!({
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "API token (admin.token in the controller's data dir, or a deployer token).",
        }
    });
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for op in item.values_mut() {
            let Some(op) = op.as_object_mut() else {
                continue;
            };
            if OPEN.contains(&path.as_str()) {
                op.insert("security".into(), json!([]));
                continue;
            }
            let takes_body = op.contains_key("requestBody");
            let takes_query = op
                .get("parameters")
                .and_then(Value::as_array)
                .is_some_and(|ps| ps.iter().any(|p| p["in"] == "query"));
            let responses = op
                .entry("responses")
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("responses is an object");
            let mut add = |status: &str, description: &str| {
                responses
                    .entry(status.to_string())
                    .or_insert_with(|| error_response(description));
            };
            add("401", "Missing or invalid bearer token (`unauthorized`).");
            if takes_body {
                add("413", "Request body too large (`payload_too_large`).");
            }
            if takes_body || takes_query {
                add("422", "Invalid request (`invalid_request`); the message starts with the field, e.g. `concurrency: must be at least 1`.");
            }
            if !STREAMS.contains(&path.as_str()) {
                add("503", "The controller did not answer in time (`timeout`).");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_endpoints_have_no_security_and_the_rest_answer_401() {
        let doc = document();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                if OPEN.contains(&path.as_str()) {
                    assert_eq!(op["security"], json!([]), "{method} {path}");
                } else {
                    assert!(op.get("security").is_none(), "{method} {path}");
                    assert_eq!(
                        op["responses"]["401"]["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{method} {path}"
                    );
                }
            }
        }
        assert_eq!(doc["security"], json!([{"bearer": []}]));
    }
}
