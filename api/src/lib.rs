//! The controller's HTTP API wire types: the one place where request and
//! response bodies are defined, with their validation. The controller
//! serializes and checks them; the CLI builds and reads the same types, so
//! the two cannot drift, and the CLI reuses the checks for early errors.
//!
//! Invariant: no IO here (no sockets, files or clocks): everything is plain
//! serde data plus pure checks, testable without a controller.

pub mod changeset;
pub mod deploy;
pub mod error;
pub mod events;
pub mod progressive;
pub mod selector;
pub mod stored;

pub use changeset::{check_changeset, valid_playbook_name, ChangesetBody};
pub use deploy::{
    parse_percent, render_server_name, Concurrency, ConcurrencyLimit, DeployRequest, FieldError,
    HaproxySpec, RollbackRequest, RunPlaybook, ServerNameError, ServerNameInput, MAX_CONCURRENCY,
};
pub use error::{ErrorBody, ErrorDetail};
pub use events::{Event, StreamLine};
pub use progressive::{
    check_http_url, render_prometheus_query, CanaryHosts, CanarySpec, InconclusivePolicy,
    NotifyEvent, OnFailure, PrometheusCheck, WebhookSpec,
};
pub use selector::{check_attribute_key, Selector, SelectorError};
pub use stored::{StoredRequest, StoredRequestError};
pub mod views;

pub use views::{
    AgentForgotten, AgentState, AgentView, CreateToken, CreatedToken, DeploymentAccepted,
    DeploymentDetail, DeploymentList, DeploymentView, DuplicateKeyView, FreezeOverrideView,
    HaproxyActionView, HostStats, HostSummary, HostView, JobOutcome, JobStats, PlanView,
    PlannedFreeze, PlannedHaproxy, PlannedHost, PlannedVm, PlaybookCoverage, PlaybookDrift,
    Resolved, ResolvedHost, StreamEvent,
};
