//! Rolling deployments: request validation, planning, the orchestrator, and
//! the log stream followers read.
//!
//! - [`request`]: `DeployRequest` and its validation (API boundary).
//! - [`plan`]: resolving hosts and HAProxy VMs; dry runs.
//! - [`orchestrator`]: the sliding window, the capacity guard, one
//!   [`orchestrator::HostRun`] per host (drain → wait → playbook → ready →
//!   ramp, or maint on failure), resumption after a controller restart.
//! - [`logs`]: the batched, ordered log writer.
//!
//! Around the orchestrator, [`Policies`] from `controller.toml`: freeze
//! windows are checked at submission ([`Deployments::submit`], dry runs in
//! [`Deployments::freeze_check`]), webhooks are queued at the start and the
//! end of a deployment ([`Deployments::notify`]) and never waited for.
//!
//! Invariant: every decision the orchestrator makes is written to the store
//! before it acts on it (host started with its job id, rotation state before
//! touching HAProxy), so a controller killed at any point can resume: it asks
//! agents for job outcomes by job id instead of running jobs again, and it
//! finishes the HAProxy steps of hosts that were in flight.

pub mod canary;
pub mod logs;
pub mod orchestrator;
pub mod plan;
pub mod request;
pub mod rollout;

use crate::fleet::Fleet;
use crate::freeze::{FreezeCalendar, Frozen};
use crate::inventory::InventorySource;
use crate::notify::{DeploymentSummary, Notifier, NotifyEvent, WebhookBody};
use crate::store::{Inserted, NewDeployment, Store, StoreError};
use request::{DeployRequest, FieldError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What submitting a deployment gave.
#[derive(Debug)]
pub enum Submitted {
    /// Created and started.
    Created(String),
    /// Idempotency key seen before.
    Existing(String),
}

/// Why a submission was refused.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// A field is invalid.
    #[error("{}: {}", .0.field, .0.message)]
    Invalid(FieldError),
    /// Another deployment of the same application and environment runs.
    #[error("deployment {0} of this application and environment is running; wait for it or cancel it with `vesemir deployments cancel {0}`")]
    Running(String),
    /// Inside a freeze window without an override this token may give.
    #[error(transparent)]
    Frozen(#[from] Frozen),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What `controller.toml` enforces around deployments besides the request.
#[derive(Default)]
pub struct Policies {
    /// `[[freeze]]`: when submissions are refused.
    pub freeze: FreezeCalendar,
    /// `[notify]`: None when the controller sends no webhooks (then a
    /// request's `notify` is refused: nothing could sign it).
    pub webhooks: Option<Webhooks>,
}

/// The webhook side of [`Policies`].
pub struct Webhooks {
    /// The bounded background sender.
    pub notifier: Notifier,
    /// `[notify] webhooks`: told about every deployment.
    pub defaults: Vec<vesemir_api::WebhookSpec>,
}

/// The deployments service: owns the running orchestrators.
pub struct Deployments {
    pub(crate) store: Store,
    pub(crate) fleet: Arc<Fleet>,
    pub(crate) inventory: Option<Arc<InventorySource>>,
    /// Cancel tokens of the orchestrators running in this process.
    running: Mutex<HashMap<String, CancellationToken>>,
    /// Bumped whenever log rows are written, so followers wake up.
    pub(crate) log_version: tokio::sync::watch::Sender<u64>,
    /// How long to wait for an agent to (re)connect before calling it
    /// unreachable when a deployment resumes.
    pub agent_wait: Duration,
    /// Stops every orchestrator (controller shutdown): they stop where they
    /// are, the store says where, and the next start resumes.
    pub(crate) shutdown: CancellationToken,
    /// Freeze windows and webhooks.
    policies: Policies,
}

impl Deployments {
    /// A new service.
    pub fn new(
        store: Store,
        fleet: Arc<Fleet>,
        inventory: Option<Arc<InventorySource>>,
        policies: Policies,
    ) -> Arc<Deployments> {
        Arc::new(Deployments {
            store,
            fleet,
            inventory,
            running: Mutex::new(HashMap::new()),
            log_version: tokio::sync::watch::channel(0).0,
            agent_wait: Duration::from_secs(30),
            shutdown: CancellationToken::new(),
            policies,
        })
    }

    /// Validates the request.
    pub fn validate(&self, req: &DeployRequest) -> Result<(), FieldError> {
        req.validate()?;
        not_acted_on_yet(req)?;
        if !req.notify.is_empty() && self.policies.webhooks.is_none() {
            return Err(FieldError {
                field: "notify".into(),
                message: "this controller sends no webhooks: it has no [notify] section \
                          (the secret webhooks are signed with) in controller.toml; \
                          ask its operator to add one, or remove notify from the request"
                    .into(),
            });
        }
        Ok(())
    }

    /// The freeze verdict for `req` from a token of `role` at `now`:
    /// `Ok(None)` outside any freeze, the override to record, or why not.
    pub fn freeze_check(
        &self,
        req: &DeployRequest,
        by: &str,
        role: &str,
        now: time::OffsetDateTime,
    ) -> Result<Option<vesemir_api::FreezeOverrideView>, Frozen> {
        let verdict = self.policies.freeze.admit(
            &req.environment,
            now,
            req.override_freeze.as_deref(),
            crate::freeze::may_override(role),
        )?;
        Ok(verdict.map(|o| o.record(by, now)))
    }

    /// What a dry run reports about freezes: None outside any.
    pub fn planned_freeze(
        &self,
        req: &DeployRequest,
        by: &str,
        role: &str,
        now: time::OffsetDateTime,
    ) -> Option<vesemir_api::PlannedFreeze> {
        let w = self.policies.freeze.active(&req.environment, now)?;
        let ends_at = w.ends_at(now).and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        });
        let (outcome, message) = match self.freeze_check(req, by, role, now) {
            Ok(Some(o)) => (
                "overridden",
                format!(
                    "{} is overridden by {}: {:?} (recorded with the deployment)",
                    o.window, o.by, o.reason
                ),
            ),
            // Cannot happen (a window is active), but say so plainly.
            Ok(None) => ("overridden", format!("{} is not in force", w.describe())),
            Err(e @ Frozen::Refused { .. }) => ("refused", e.to_string()),
            Err(e @ Frozen::NotAllowed { .. }) => ("forbidden", e.to_string()),
        };
        Some(vesemir_api::PlannedFreeze {
            window: w.describe(),
            ends_at,
            outcome: outcome.into(),
            message,
        })
    }

    /// Refuses a request naming a playbook that hosts of its plan lack
    /// (their agents' facts list the playbooks they have). Hosts whose
    /// agents never reported facts are not judged here: they are reported
    /// unreachable when the deployment runs. Without an inventory, or when
    /// the inventory fails, the orchestrator reports the problem instead.
    pub async fn check_playbook_on_hosts(&self, req: &DeployRequest) -> Result<(), FieldError> {
        if req.changeset.as_ref().is_some_and(|c| c.playbook.is_some()) || self.inventory.is_none()
        {
            return Ok(());
        }
        let Ok(plan) = plan::make_plan(self, req, false).await else {
            return Ok(());
        };
        match plan.playbook {
            Some(c) if !c.missing.is_empty() => Err(FieldError {
                field: "playbook".into(),
                message: c.missing_message(&req.playbook),
            }),
            _ => Ok(()),
        }
    }

    /// Validates, checks the freeze windows, stores and starts a
    /// deployment from the token named `requested_by` of role `role`.
    pub async fn submit(
        self: &Arc<Self>,
        req: &DeployRequest,
        requested_by: &str,
        role: &str,
        idempotency_key: Option<&str>,
    ) -> Result<Submitted, SubmitError> {
        self.validate(req).map_err(SubmitError::Invalid)?;
        let now = time::OffsetDateTime::now_utc();
        let freeze_override = match self.freeze_check(req, requested_by, role, now) {
            Ok(o) => o,
            Err(frozen) => {
                // A retry of a submission accepted before the freeze began
                // still gets its deployment, not a refusal.
                if let Some(key) = idempotency_key {
                    if let Some(existing) = self.store.deployment_by_idempotency_key(key).await? {
                        return Ok(Submitted::Existing(existing));
                    }
                }
                return Err(frozen.into());
            }
        };
        self.check_playbook_on_hosts(req)
            .await
            .map_err(SubmitError::Invalid)?;
        let freeze_json = freeze_override
            .as_ref()
            .map(|o| serde_json::to_string(o).expect("plain data serializes"));
        let id = uuid::Uuid::now_v7().to_string();
        // Version-tagged, so a later change to the request can still read it.
        let request = vesemir_api::StoredRequest::new(req.clone()).to_json();
        let inserted = self
            .store
            .insert_deployment(&NewDeployment {
                id: &id,
                application: &req.application,
                environment: &req.environment,
                team: &req.team,
                requested_by,
                idempotency_key,
                request: &request,
                changeset_version: req.changeset.as_ref().map(|c| c.version.as_str()),
                freeze_override: freeze_json.as_deref(),
            })
            .await?;
        match inserted {
            Inserted::Created => {
                tracing::info!(deployment_id = %id, application = %req.application, environment = %req.environment, by = requested_by, "deployment accepted");
                if let Some(o) = &freeze_override {
                    tracing::warn!(deployment_id = %id, window = %o.window, by = %o.by, reason = %o.reason, "freeze overridden");
                }
                self.spawn(id.clone());
                Ok(Submitted::Created(id))
            }
            Inserted::Existing(existing) => Ok(Submitted::Existing(existing)),
            Inserted::Running(running) => Err(SubmitError::Running(running)),
        }
    }

    /// Runs (or resumes) a deployment in the background. False if its
    /// orchestrator already runs here.
    pub fn spawn(self: &Arc<Self>, id: String) -> bool {
        let token = self.shutdown.child_token();
        {
            let mut running = self.running.lock().expect("running lock");
            if running.contains_key(&id) || self.shutdown.is_cancelled() {
                return false;
            }
            running.insert(id.clone(), token.clone());
        }
        let this = self.clone();
        tokio::spawn(async move {
            let span = tracing::info_span!("deployment", deployment_id = %id);
            let _ = tracing::Instrument::instrument(
                orchestrator::run(this.clone(), id.clone(), token),
                span,
            )
            .await;
            this.running.lock().expect("running lock").remove(&id);
        });
        true
    }

    /// Resumes every deployment that was pending or running when the
    /// controller stopped.
    pub async fn resume_all(self: &Arc<Self>) -> Result<usize, StoreError> {
        let ids = self.store.unfinished_deployments().await?;
        let mut started = 0;
        for id in ids {
            if self.spawn(id.clone()) {
                tracing::info!(deployment_id = %id, "resuming deployment");
                started += 1;
            }
        }
        Ok(started)
    }

    /// Every `every`, resumes unfinished deployments that have no
    /// orchestrator here (one that stopped on a store error, or a submit
    /// whose HTTP request was cut between insert and start). Ends at shutdown.
    pub async fn run_reconciler(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.shutdown.cancelled() => return,
            }
            match self.resume_all().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(count = n, "resumed deployments without an orchestrator"),
                Err(e) => tracing::warn!(error = %e, "cannot list unfinished deployments"),
            }
        }
    }

    /// Waits (bounded) until every orchestrator of this process has stopped
    /// after [`Deployments::stop_all`]. True if they all did.
    pub async fn wait_stopped(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.running.lock().expect("running lock").is_empty() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Requests cancellation. False if the deployment already finished.
    pub async fn cancel(&self, id: &str) -> Result<bool, StoreError> {
        if !self.store.request_cancel(id).await? {
            return Ok(false);
        }
        if let Some(t) = self.running.lock().expect("running lock").get(id) {
            // The orchestrator reads the stored flag; this only wakes it.
            t.cancel();
        }
        Ok(true)
    }

    /// Stops all orchestrators (shutdown). Their progress is in the store.
    pub fn stop_all(&self) {
        self.shutdown.cancel();
    }

    /// A receiver that changes whenever log rows were written.
    pub fn log_updates(&self) -> tokio::sync::watch::Receiver<u64> {
        self.log_version.subscribe()
    }

    /// Queues `event` of deployment `id` for the request's and the
    /// controller's webhooks that want it. Never waits on a receiver (see
    /// [`crate::notify`]); without `[notify]` it does nothing, and a store
    /// error only costs the webhook (logged), never the deployment.
    pub async fn notify(&self, id: &str, event: NotifyEvent, message: Option<&str>) {
        let Some(hooks) = &self.policies.webhooks else {
            return;
        };
        let summary = async {
            let Some(row) = self.store.get_deployment(id).await? else {
                return Ok(None);
            };
            let hosts = self.store.deployment_hosts(id).await?;
            Ok::<_, StoreError>(Some((row, hosts)))
        };
        let (row, hosts) = match summary.await {
            Ok(Some(found)) => found,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(deployment_id = %id, event = event.as_str(), error = %e, "webhook not sent: cannot read the deployment");
                return;
            }
        };
        let request = vesemir_api::StoredRequest::parse(&row.request)
            .map(|r| r.into_request().notify)
            .unwrap_or_default();
        let urls = crate::notify::targets(&request, &hooks.defaults, event);
        if urls.is_empty() {
            return;
        }
        let count = |status: &str| hosts.iter().filter(|h| h.status == status).count() as u32;
        let summary = DeploymentSummary {
            id: row.id.clone(),
            application: row.application.clone(),
            environment: row.environment.clone(),
            team: row.team.clone(),
            requested_by: row.requested_by.clone(),
            changeset_version: row.changeset_version.clone(),
            hosts_total: u32::try_from(row.hosts_total).unwrap_or(0),
            hosts_succeeded: count("succeeded"),
            hosts_failed: count("failed") + count("unreachable"),
        };
        let body = WebhookBody::new(
            event,
            time::OffsetDateTime::now_utc(),
            summary,
            message.map(str::to_string),
        );
        hooks.notifier.notify(&urls, &body);
    }

    /// Number of orchestrators running in this process.
    pub fn running_count(&self) -> usize {
        self.running.lock().expect("running lock").len()
    }

    /// Whether a deployment's orchestrator runs in this process.
    pub fn is_running_here(&self, id: &str) -> bool {
        self.running.lock().expect("running lock").contains_key(id)
    }
}

/// The progressive-delivery fields parse and validate (api crate), but the
/// orchestrator does not act on most of them yet: a request using one is
/// refused, so nobody believes a canary, a rollback or a pause guarded a
/// rollout that ran without it. `notify` and `override_freeze` are acted on.
fn not_acted_on_yet(req: &DeployRequest) -> Result<(), FieldError> {
    let used = [
        ("canary", req.canary.is_some()),
        ("on_failure", req.on_failure != vesemir_api::OnFailure::Stop),
        ("pause_after_canary", req.pause_after_canary),
        ("pause_after_batches", !req.pause_after_batches.is_empty()),
        (
            "progress_deadline_seconds",
            req.progress_deadline_seconds.is_some(),
        ),
    ];
    match used.iter().find(|(_, on)| *on) {
        Some((field, _)) => Err(FieldError {
            field: (*field).to_string(),
            message: format!(
                "{field} is not supported by this controller yet (it would be ignored); remove it from the request"
            ),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod not_yet_tests {
    use super::*;

    fn request(extra: &str) -> DeployRequest {
        let body = format!(
            r#"{{"application":"app","environment":"production","team":"t","selector":{{"tags":["app:x"]}}{extra}}}"#
        );
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{body}: {e}"))
    }

    #[test]
    fn plain_notify_and_override_pass_and_each_unwired_field_is_refused_by_name() {
        assert_eq!(not_acted_on_yet(&request("")), Ok(()));
        // Acted on: webhooks and the freeze override.
        for wired in [
            r#","notify":[{"url":"https://hooks.example.com/x","events":["started"]}]"#,
            r#","override_freeze":"hotfix""#,
        ] {
            assert_eq!(not_acted_on_yet(&request(wired)), Ok(()), "{wired}");
        }
        for (extra, field) in [
            (r#","canary":{"hosts":1}"#, "canary"),
            (r#","on_failure":"rollback""#, "on_failure"),
            (r#","pause_after_canary":true"#, "pause_after_canary"),
            (r#","pause_after_batches":[1]"#, "pause_after_batches"),
            (
                r#","progress_deadline_seconds":60"#,
                "progress_deadline_seconds",
            ),
        ] {
            let e = not_acted_on_yet(&request(extra)).expect_err(field);
            assert_eq!(e.field, field);
            assert!(
                e.message.contains("not supported by this controller yet"),
                "{}",
                e.message
            );
        }
    }
}
