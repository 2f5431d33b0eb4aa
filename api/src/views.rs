//! What the controller answers: deployments (list row and detail), hosts,
//! HAProxy actions, the dry-run plan, agents, tokens, job and log events.
//! The controller builds these and serializes them; the CLI deserializes
//! the same types. Times are RFC 3339 strings, durations milliseconds.
//!
//! Invariant: every field the controller sends is here with its JSON name;
//! an `Option` without `skip_serializing_if` is sent as `null`. Free-form
//! data (agent facts, a job's structured output, a log event's own fields)
//! is a `serde_json` value or map and documented as such.

use crate::{ChangesetBody, Concurrency, DeployRequest};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Playbook result counts of one host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HostStats {
    /// Tasks ok.
    pub ok: i64,
    /// Tasks changed.
    pub changed: i64,
    /// Tasks failed.
    pub failed: i64,
    /// Unreachable.
    pub unreachable: i64,
    /// Tasks skipped.
    pub skipped: i64,
}

/// One host of a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HostView {
    /// Node name.
    pub name: String,
    /// Address the agent was reached at.
    pub address: String,
    /// Its HAProxy server name.
    pub server_name: String,
    /// `pending`, `running`, `succeeded`, `failed`, `unreachable`, `skipped`.
    pub status: String,
    /// Current step (`draining`, `playbook`, …) while running.
    pub step: Option<String>,
    /// Job id on the agent.
    pub job_id: Option<String>,
    /// HAProxy rotation state.
    pub rotation: String,
    /// Playbook counts.
    pub stats: HostStats,
    /// Started, RFC 3339.
    pub started_at: Option<String>,
    /// Finished, RFC 3339.
    pub finished_at: Option<String>,
    /// Finished minus started.
    pub duration_ms: Option<i64>,
    /// Why it failed.
    pub error: Option<String>,
}

/// One HAProxy action of a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HaproxyActionView {
    /// When, RFC 3339.
    pub at: String,
    /// Host whose server was acted on.
    pub host: String,
    /// HAProxy VM.
    pub haproxy_vm: String,
    /// Backend.
    pub backend: String,
    /// Server.
    pub server: String,
    /// `drain`, `maint`, `ready`, …
    pub action: String,
    /// Whether it worked.
    pub ok: bool,
    /// What HAProxy said.
    pub detail: Option<String>,
}

/// Hosts of a deployment by status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HostSummary {
    /// Not started.
    pub pending: u64,
    /// In flight.
    pub running: u64,
    /// Done, ok.
    pub succeeded: u64,
    /// Done, failed.
    pub failed: u64,
    /// Agent not reachable.
    pub unreachable: u64,
    /// Not run (cancel, abort).
    pub skipped: u64,
}

impl HostSummary {
    /// Counts one host of `status`; unknown statuses are not counted.
    pub fn count(&mut self, status: &str) {
        let n = match status {
            "pending" => &mut self.pending,
            "running" => &mut self.running,
            "succeeded" => &mut self.succeeded,
            "failed" => &mut self.failed,
            "unreachable" => &mut self.unreachable,
            "skipped" => &mut self.skipped,
            _ => return,
        };
        *n += 1;
    }

    /// `(status, count)` pairs in display order.
    pub fn pairs(&self) -> [(&'static str, u64); 6] {
        [
            ("pending", self.pending),
            ("running", self.running),
            ("succeeded", self.succeeded),
            ("failed", self.failed),
            ("unreachable", self.unreachable),
            ("skipped", self.skipped),
        ]
    }
}

/// What only `GET /v1/deployments/{id}` adds to a deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeploymentDetail {
    /// Hosts by status.
    pub summary: HostSummary,
    /// The hosts in plan order.
    pub hosts: Vec<HostView>,
    /// The request as submitted (null if the stored one cannot be read).
    pub request: Option<DeployRequest>,
    /// HAProxy actions, oldest first.
    pub haproxy_actions: Vec<HaproxyActionView>,
}

/// A deployment: a row of `GET /v1/deployments`, or with [`detail`]
/// (`GET /v1/deployments/{id}`).
///
/// [`detail`]: DeploymentView::detail
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeploymentView {
    /// Deployment id.
    pub id: String,
    /// Application.
    pub application: String,
    /// Environment.
    pub environment: String,
    /// Team.
    pub team: String,
    /// `pending`, `running`, `succeeded`, `failed`, `aborted`, `cancelled`.
    pub status: String,
    /// Token name that submitted it.
    pub requested_by: String,
    /// Submitted, RFC 3339.
    pub created_at: String,
    /// Started, RFC 3339.
    pub started_at: Option<String>,
    /// Finished, RFC 3339.
    pub finished_at: Option<String>,
    /// Finished minus started.
    pub duration_ms: Option<i64>,
    /// Inventory query the hosts came from.
    pub query: Option<String>,
    /// Inventory query of the HAProxy VMs.
    pub haproxy_query: Option<String>,
    /// HAProxy VM names.
    pub haproxy_vms: Option<Vec<String>>,
    /// Hosts in the plan.
    pub hosts_total: i64,
    /// A cancel was asked for.
    pub cancel_requested: bool,
    /// From the request.
    pub concurrency: Option<Concurrency>,
    /// From the request (null: the concurrency).
    pub max_unavailable: Option<u32>,
    /// From the request.
    pub max_fail_percentage: Option<u32>,
    /// From the request.
    pub playbook: Option<String>,
    /// From the request.
    pub changeset: Option<ChangesetBody>,
    /// Why it failed or was aborted.
    pub error: Option<String>,
    /// Set when it was submitted inside a freeze window with
    /// `override_freeze`: who overrode which window, when and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freeze_override: Option<FreezeOverrideView>,
    /// Only in the detail view.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    // Documented as `DeploymentView` + `DeploymentDetail` on the detail
    // route: a flattened Option has no schema of its own.
    #[cfg_attr(feature = "openapi", schema(ignore))]
    pub detail: Option<DeploymentDetail>,
}

/// `GET /v1/deployments`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeploymentList {
    /// The page, newest first.
    pub deployments: Vec<DeploymentView>,
    /// Matching deployments in all pages.
    pub total: i64,
}

/// `POST /v1/deployments` (202, or 200 for an idempotent replay) and
/// `POST /v1/deployments/{id}/cancel` (202).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeploymentAccepted {
    /// Deployment id.
    pub id: String,
    /// Its status (`pending`, `cancelling`, or a replay's current one).
    pub status: Option<String>,
    /// Where to follow it (not on cancel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Set when an `Idempotency-Key` matched an earlier submission.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotent_replay: Option<bool>,
}

/// A host of a dry run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlannedHost {
    /// Node name.
    pub name: String,
    /// Address.
    pub address: String,
    /// Rendered HAProxy server name.
    pub server_name: String,
    /// Its agent's state (`connected`, …, `none`).
    pub agent: String,
}

/// An HAProxy VM of a dry run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlannedVm {
    /// Node name.
    pub name: String,
    /// Its agent's state.
    pub agent: String,
    /// Servers of the backend on it.
    pub servers: Vec<String>,
}

/// A host carrying another version of the playbook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlaybookDrift {
    /// Node name.
    pub host: String,
    /// Its playbook's sha256.
    pub sha256: String,
}

/// The playbook across a dry run's hosts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlaybookCoverage {
    /// The playbook named by the request.
    pub name: String,
    /// Hosts whose agent reported its playbooks without this one.
    pub missing: Vec<String>,
    /// Hosts whose copy differs from the most common one.
    pub drift: Vec<PlaybookDrift>,
    /// The sha256 most hosts have.
    pub sha256: Option<String>,
    /// Hosts whose agent never reported facts.
    pub unknown: Vec<String>,
}

/// The HAProxy part of a dry run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlannedHaproxy {
    /// Backend.
    pub backend: String,
    /// The VMs found.
    pub vms: Vec<PlannedVm>,
}

/// `POST /v1/deployments` with `dry_run: true`: the plan, nothing started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlanView {
    /// Always true.
    pub dry_run: bool,
    /// Application.
    pub application: String,
    /// Environment.
    pub environment: String,
    /// Inventory query.
    pub query: String,
    /// HAProxy VMs' query.
    pub haproxy_query: Option<String>,
    /// Hosts at once, resolved for this many hosts.
    pub concurrency: usize,
    /// Hosts out of rotation at once.
    pub max_unavailable: usize,
    /// The hosts.
    pub hosts: Vec<PlannedHost>,
    /// Host names by batch.
    pub batches: Vec<Vec<String>>,
    /// Null without an HAProxy spec.
    pub haproxy: Option<PlannedHaproxy>,
    /// What would make the deployment fail; the CLI exits 1 on any.
    pub problems: Vec<String>,
    /// Playbook coverage.
    pub playbook: Option<PlaybookCoverage>,
    /// The freeze window the deployment would fall in, and what a real
    /// submission would get; absent outside any freeze.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freeze: Option<PlannedFreeze>,
}

/// The record of a freeze override, stored with the deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FreezeOverrideView {
    /// The window overridden, described (`freeze window 0 (prod*, year-end)`).
    pub window: String,
    /// When that window's freeze lifted or lifts, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_ends_at: Option<String>,
    /// The request's `override_freeze`.
    pub reason: String,
    /// Token name that overrode.
    pub by: String,
    /// When, RFC 3339 (the submission).
    pub at: String,
}

/// A dry run inside a freeze window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PlannedFreeze {
    /// The window, described.
    pub window: String,
    /// When its freeze lifts, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<String>,
    /// What the real submission would get: `refused` (409: no override),
    /// `forbidden` (403: this token may not override) or `overridden`
    /// (202, the override recorded).
    pub outcome: String,
    /// The sentence the refusal (or the override) would give.
    pub message: String,
}

/// Agent state as users see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum AgentState {
    /// A live connection with recent heartbeats.
    Connected,
    /// No live connection.
    Disconnected,
    /// Connected, but no heartbeat for three intervals.
    Stale,
    /// Revoked: refused at the handshake.
    Revoked,
}

impl AgentState {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Connected => "connected",
            AgentState::Disconnected => "disconnected",
            AgentState::Stale => "stale",
            AgentState::Revoked => "revoked",
        }
    }
}

/// Two processes holding one agent's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DuplicateKeyView {
    /// The two remote addresses of the last takeover (new, replaced).
    pub addresses: [String; 2],
    /// First takeover seen, RFC 3339.
    pub first_seen: String,
    /// Last takeover seen, RFC 3339.
    pub last_seen: String,
    /// Takeovers between the two processes so far.
    pub takeovers: u64,
}

/// An agent (`GET /v1/agents`, `GET /v1/agents/{name}`, revoke).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgentView {
    /// Node name.
    pub name: String,
    /// State.
    pub state: AgentState,
    /// Agent version.
    pub version: String,
    /// Last heartbeat, RFC 3339.
    pub last_seen: Option<String>,
    /// Seconds since the last heartbeat.
    pub last_seen_secs_ago: Option<i64>,
    /// Enrollment time, RFC 3339.
    pub first_seen: String,
    /// Remote address of the live or last connection.
    pub remote_addr: Option<String>,
    /// Facts from the last heartbeat: free-form, as the agent reports them.
    pub facts: Option<Value>,
    /// Current certificate serial.
    pub cert_serial: String,
    /// Current certificate fingerprint (SHA-256).
    pub cert_fingerprint: String,
    /// Current certificate expiry, RFC 3339.
    pub cert_not_after: String,
    /// Revocation time, RFC 3339.
    pub revoked_at: Option<String>,
    /// Set when two processes with this key took turns on its connection.
    pub duplicate_key: Option<DuplicateKeyView>,
}

/// `DELETE /v1/agents/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AgentForgotten {
    /// Node name.
    pub name: String,
    /// Always true.
    pub forgotten: bool,
}

/// `POST /v1/tokens` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// Lifetime (`1h`, `30m`). Default 1h, at most 30d.
    #[serde(default)]
    pub ttl: Option<String>,
    /// Number of enrollments allowed. Default 1.
    #[serde(default)]
    pub uses: Option<i64>,
}

/// `POST /v1/tokens` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

/// An inventory host with its agent's state (`POST /v1/inventory/resolve`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ResolvedHost {
    /// Chef node name.
    pub name: String,
    /// Address.
    pub address: String,
    /// FQDN.
    pub fqdn: Option<String>,
    /// Short host name.
    pub hostname: Option<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Roles.
    pub roles: Vec<String>,
    /// Chef environment.
    pub environment: Option<String>,
    /// Its agent's state, `none` when no agent enrolled under the name.
    pub agent: String,
}

/// `POST /v1/inventory/resolve`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Resolved {
    /// The query sent to the inventory.
    pub query: String,
    /// The hosts found.
    pub hosts: Vec<ResolvedHost>,
}

/// One line of an NDJSON stream: a job's events (`/v1/agents/{name}/run`,
/// `…/jobs/{id}/events`) or a deployment's log (`/v1/deployments/{id}/logs`).
/// `type` says which; the other fields depend on it (docs/API.md: `seq`,
/// `ts`, `host` on log rows, `line` on `log`, …), so they are a free-form map.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StreamEvent {
    /// `log`, `task_started`, `task_result`, `step`, `haproxy`,
    /// `host_finished`, `deployment`, `started`, `finished`, `error`,
    /// `keepalive`, `end`, …
    #[serde(rename = "type", default)]
    pub kind: String,
    /// The event's own fields (free-form by `type`).
    #[serde(flatten)]
    pub fields: Map<String, Value>,
}

impl StreamEvent {
    /// An event of `kind` with `fields`.
    pub fn new(kind: &str, fields: Map<String, Value>) -> Self {
        StreamEvent {
            kind: kind.into(),
            fields,
        }
    }

    /// A field, or null.
    pub fn get(&self, k: &str) -> &Value {
        self.fields.get(k).unwrap_or(&Value::Null)
    }

    /// A string field, or "".
    pub fn str(&self, k: &str) -> &str {
        self.get(k).as_str().unwrap_or("")
    }
}

/// Task counts of one job on an agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobStats {
    /// Tasks ok.
    pub ok: u64,
    /// Tasks changed.
    pub changed: u64,
    /// Tasks failed.
    pub failed: u64,
    /// Tasks skipped.
    pub skipped: u64,
}

/// `GET /v1/agents/{name}/jobs/{id}`: the agent's journal record of a job
/// (the `finished` event of its stream without `type`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobOutcome {
    /// Job id.
    pub job_id: String,
    /// `running`, `succeeded`, `failed`, …
    pub status: String,
    /// Task counts.
    pub stats: JobStats,
    /// Why it failed.
    pub error: Option<String>,
    /// The playbook's structured output: free-form JSON.
    pub output: Option<Value>,
}
