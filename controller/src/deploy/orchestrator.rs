//! The orchestrator of one deployment: plan once (stored), then a sliding
//! window of `concurrency` hosts under the capacity guard (`max_unavailable`
//! servers out of rotation, counting servers left in maint by failed hosts),
//! stopping new hosts when failures exceed `max_fail_percentage` or a cancel
//! is requested, letting hosts in flight finish.

use super::logs::LogWriter;
use super::plan::{haproxy_job, make_plan};
use super::request::DeployRequest;
use super::Deployments;
use crate::store::{HaproxyActionRow, HostRow, NewHost, StoreError};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use vesemir_protocol::job::{
    Changeset, HaproxyAction, JobEvent, JobKind, JobOutcome, JobRequest, JobStatus, PlaybookJob,
    ServerAdminState,
};

/// Everything a host run needs.
struct Ctx {
    d: Arc<Deployments>,
    id: String,
    req: DeployRequest,
    haproxy_vms: Vec<String>,
    log: LogWriter,
}

/// How a host ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostEnd {
    Succeeded,
    Failed,
    /// The controller is shutting down; the host resumes on the next start.
    Interrupted,
}

/// Runs (or resumes) deployment `id` to its end, or until shutdown.
pub async fn run(d: Arc<Deployments>, id: String, wake: CancellationToken) {
    if let Err(e) = run_inner(&d, &id, wake).await {
        tracing::error!(deployment_id = %id, error = %e, "deployment orchestrator failed on the store; it resumes on the next start");
    }
}

async fn run_inner(
    d: &Arc<Deployments>,
    id: &str,
    wake: CancellationToken,
) -> Result<(), StoreError> {
    let Some(row) = d.store.get_deployment(id).await? else {
        return Ok(());
    };
    let req: DeployRequest = match serde_json::from_str(&row.request) {
        Ok(r) => r,
        Err(e) => {
            d.store
                .finish_deployment(
                    id,
                    "failed",
                    Some(&format!("stored request unreadable: {e}")),
                )
                .await?;
            return Ok(());
        }
    };
    let last_seq = d.store.max_log_seq(id).await?;
    let (log, writer) = LogWriter::start(
        d.store.clone(),
        id.to_string(),
        last_seq,
        d.log_version.clone(),
    );

    let result = drive(d, id, &row.status, req, &log, &wake).await;
    drop(log);
    let _ = writer.await;
    d.log_version.send_modify(|v| *v = v.wrapping_add(1));
    result
}

async fn drive(
    d: &Arc<Deployments>,
    id: &str,
    status: &str,
    req: DeployRequest,
    log: &LogWriter,
    wake: &CancellationToken,
) -> Result<(), StoreError> {
    // 1. Plan once; a resumed deployment uses the stored plan.
    let haproxy_vms: Vec<String> = if status == "pending" {
        let plan = match usable_plan(d, &req).await {
            Ok(p) => p,
            Err(msg) => {
                log.push(
                    None,
                    "deployment",
                    json!({"status": "failed", "error": msg}),
                )
                .await;
                d.store.finish_deployment(id, "failed", Some(&msg)).await?;
                return Ok(());
            }
        };
        let hosts: Vec<NewHost> = plan
            .hosts
            .iter()
            .map(|h| {
                let reachable = h.agent == "connected";
                NewHost {
                    name: h.name.clone(),
                    address: h.address.clone(),
                    server_name: h.server_name.clone(),
                    status: if reachable { "pending" } else { "unreachable" }.into(),
                    error: (!reachable).then(|| format!("no connected agent (agent: {})", h.agent)),
                }
            })
            .collect();
        let vms: Vec<String> = plan.haproxy_vms.iter().map(|v| v.name.clone()).collect();
        d.store
            .start_deployment(
                id,
                &plan.query,
                plan.haproxy_query.as_deref(),
                &serde_json::to_string(&vms).expect("names serialize"),
                &hosts,
            )
            .await?;
        log.push(
            None,
            "deployment",
            json!({"status": "running", "hosts": hosts.len(), "query": plan.query}),
        )
        .await;
        for h in hosts.iter().filter(|h| h.status == "unreachable") {
            log.push(
                Some(&h.name),
                "host_finished",
                json!({"status": "unreachable", "error": h.error}),
            )
            .await;
        }
        vms
    } else {
        let row = d.store.get_deployment(id).await?.expect("exists");
        log.push(None, "deployment", json!({"status": "resumed"}))
            .await;
        row.haproxy_vms
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default()
    };

    let ctx = Arc::new(Ctx {
        d: d.clone(),
        id: id.to_string(),
        req,
        haproxy_vms,
        log: log.clone(),
    });
    window(ctx, wake).await
}

/// The plan, or why the deployment can't start: no hosts, or HAProxy VMs
/// that can't drain anything.
async fn usable_plan(d: &Deployments, req: &DeployRequest) -> Result<super::plan::Plan, String> {
    let plan = make_plan(d, req, false).await.map_err(|e| e.to_string())?;
    if plan.hosts.is_empty() {
        return Err(format!("no hosts match the selector ({})", plan.query));
    }
    if req.haproxy.is_some() {
        if plan.haproxy_vms.is_empty() {
            return Err(
                "haproxy.selector matches no VMs: nothing to drain the servers with".into(),
            );
        }
        let down: Vec<&str> = plan
            .haproxy_vms
            .iter()
            .filter(|v| v.agent != "connected")
            .map(|v| v.name.as_str())
            .collect();
        if !down.is_empty() {
            return Err(format!(
                "HAProxy VM(s) without a connected agent: {}; refusing to deploy without draining",
                down.join(", ")
            ));
        }
    }
    Ok(plan)
}

/// The sliding window.
async fn window(ctx: Arc<Ctx>, wake: &CancellationToken) -> Result<(), StoreError> {
    let d = &ctx.d;
    let id = ctx.id.as_str();
    let hosts = d.store.deployment_hosts(id).await?;
    let total = hosts.len();
    let concurrency = ctx.req.concurrency_for(total);
    let max_unavailable = ctx.req.max_unavailable_for(total);
    let guarded = ctx.req.haproxy.is_some();
    let mut failures = hosts
        .iter()
        .filter(|h| matches!(h.status.as_str(), "failed" | "unreachable"))
        .count();
    // Servers out of rotation because of this deployment: in flight, or
    // left in maint by a failed host.
    let mut out_of_rotation = hosts.iter().filter(|h| h.rotation == "maint").count();
    let mut pending: std::collections::VecDeque<HostRow> = hosts
        .iter()
        .filter(|h| h.status == "pending")
        .cloned()
        .collect();

    let mut set: JoinSet<(String, HostEnd)> = JoinSet::new();
    // Hosts that were in flight when the controller stopped come first.
    for h in hosts.iter().filter(|h| h.status == "running").cloned() {
        out_of_rotation += 1;
        let c = ctx.clone();
        set.spawn(async move {
            (
                h.name.clone(),
                HostRun {
                    ctx: c,
                    host: h,
                    resumed: true,
                }
                .run()
                .await,
            )
        });
    }

    let exceeded = |failures: usize| failures * 100 > ctx.req.max_fail_percentage as usize * total;
    let mut cancelled = d
        .store
        .get_deployment(id)
        .await?
        .is_some_and(|r| r.cancel_requested);
    let mut capacity_blocked;
    let mut shutting_down = false;
    loop {
        capacity_blocked = false;
        if !cancelled && !exceeded(failures) && !shutting_down {
            while set.len() < concurrency {
                if guarded && out_of_rotation >= max_unavailable {
                    capacity_blocked = !pending.is_empty();
                    break;
                }
                let Some(h) = pending.pop_front() else { break };
                if guarded {
                    out_of_rotation += 1;
                }
                let c = ctx.clone();
                set.spawn(async move {
                    (
                        h.name.clone(),
                        HostRun {
                            ctx: c,
                            host: h,
                            resumed: false,
                        }
                        .run()
                        .await,
                    )
                });
            }
        }
        if set.is_empty() {
            break;
        }
        let watch_wake = !cancelled && !shutting_down;
        tokio::select! {
            joined = set.join_next() => {
                let Some(joined) = joined else { continue };
                let (name, end) = match joined {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::error!(deployment_id = %id, error = %e, "host task panicked");
                        failures += 1;
                        continue;
                    }
                };
                match end {
                    HostEnd::Succeeded => {
                        if guarded { out_of_rotation -= 1; }
                    }
                    HostEnd::Failed => {
                        failures += 1;
                        // Left in maint: still out of rotation.
                    }
                    HostEnd::Interrupted => {}
                }
                tracing::debug!(deployment_id = %id, host = %name, ?end, "host done");
            }
            _ = wake.cancelled(), if watch_wake => {
                if d.shutdown.is_cancelled() {
                    shutting_down = true;
                } else {
                    cancelled = true;
                    ctx.log.push(None, "deployment", json!({"status": "cancelling"})).await;
                }
            }
        }
    }
    if shutting_down || d.shutdown.is_cancelled() {
        tracing::info!(deployment_id = %id, "controller stopping; deployment resumes on the next start");
        return Ok(());
    }
    let (status, error) = if cancelled {
        ("cancelled", Some("cancelled on request".to_string()))
    } else if exceeded(failures) {
        (
            "aborted",
            Some(format!(
                "{failures} of {total} hosts failed, more than max_fail_percentage {}%",
                ctx.req.max_fail_percentage
            )),
        )
    } else if capacity_blocked || !pending.is_empty() {
        (
            "aborted",
            Some(format!(
                "{out_of_rotation} servers are out of rotation (failed hosts stay in maint), reaching max_unavailable {max_unavailable}; no further host can start"
            )),
        )
    } else if failures > 0 {
        (
            "failed",
            Some(format!("{failures} of {total} hosts failed")),
        )
    } else {
        ("succeeded", None)
    };
    ctx.log
        .push(
            None,
            "deployment",
            json!({"status": status, "error": error}),
        )
        .await;
    d.store
        .finish_deployment(id, status, error.as_deref())
        .await?;
    tracing::info!(deployment_id = %id, status, "deployment finished");
    Ok(())
}

/// One host's run: drain on every HAProxy VM, wait for sessions to end,
/// run the playbook, then ready + weight ramp, or maint on failure.
struct HostRun {
    ctx: Arc<Ctx>,
    host: HostRow,
    resumed: bool,
}

impl HostRun {
    fn name(&self) -> &str {
        &self.host.name
    }

    async fn run(self) -> HostEnd {
        let span =
            tracing::info_span!("host", deployment_id = %self.ctx.id, host = %self.host.name);
        tracing::Instrument::instrument(self.run_inner(), span).await
    }

    async fn run_inner(self) -> HostEnd {
        match self.steps().await {
            Ok(end) => end,
            Err(e) => {
                tracing::error!(error = %e, "store failed during host run");
                HostEnd::Interrupted
            }
        }
    }

    async fn step(&self, step: &str, rotation: &str) -> Result<(), StoreError> {
        self.ctx
            .d
            .store
            .host_step(&self.ctx.id, self.name(), step, rotation)
            .await?;
        self.ctx
            .log
            .push(Some(self.name()), "step", json!({"step": step}))
            .await;
        Ok(())
    }

    async fn steps(&self) -> Result<HostEnd, StoreError> {
        let c = &self.ctx;
        let store = &c.d.store;
        let job_id = self
            .host
            .job_id
            .clone()
            .unwrap_or_else(|| format!("{}.{}", c.id, self.host.name));
        // Job id first: a restarted controller asks the agent about this id.
        store.host_started(&c.id, self.name(), &job_id).await?;
        if self.resumed {
            c.log
                .push(
                    Some(self.name()),
                    "step",
                    json!({"step": "resuming", "job_id": job_id}),
                )
                .await;
        }

        // A host resumed after its playbook succeeded (enabling/ramping)
        // needs no second drain: the journal replays the playbook's outcome.
        let past_playbook =
            self.resumed && matches!(self.host.step.as_deref(), Some("enabling" | "ramping"));
        if let (Some(hp), false) = (&c.req.haproxy, past_playbook) {
            // Recorded as out of rotation before HAProxy is touched.
            self.step("draining", "out").await?;
            let state = if hp.drain_mode == "maint" {
                ServerAdminState::Maint
            } else {
                ServerAdminState::Drain
            };
            if let Err(e) = self
                .on_every_vm(
                    &hp.drain_mode,
                    vec![HaproxyAction::SetState {
                        backend: hp.backend.clone(),
                        server: self.host.server_name.clone(),
                        state,
                    }],
                )
                .await
            {
                return self
                    .fail(&format!("could not take the server out of rotation: {e}"))
                    .await;
            }
            self.step("waiting_drain", "out").await?;
            let wait = Duration::from_secs(hp.degradation_seconds);
            if let Err(e) = self
                .on_every_vm(
                    "wait_drained",
                    vec![HaproxyAction::WaitDrained {
                        backend: hp.backend.clone(),
                        server: self.host.server_name.clone(),
                        degradation_ms: wait.as_millis() as u64,
                    }],
                )
                .await
            {
                return self
                    .fail(&format!("waiting for the server to drain failed: {e}"))
                    .await;
            }
        }

        self.step(
            "deploying",
            if c.req.haproxy.is_some() { "out" } else { "in" },
        )
        .await?;
        let outcome = match self.playbook(&job_id).await {
            Ok(o) => o,
            Err(PlaybookEnd::Shutdown) => return Ok(HostEnd::Interrupted),
            Err(PlaybookEnd::Failed(e)) => return self.fail(&e).await,
        };
        let s = outcome.stats;
        store
            .host_stats(
                &c.id,
                self.name(),
                [
                    s.ok.into(),
                    s.changed.into(),
                    s.failed.into(),
                    0,
                    s.skipped.into(),
                ],
            )
            .await?;
        if outcome.status != JobStatus::Succeeded {
            let why = outcome
                .error
                .clone()
                .unwrap_or_else(|| format!("playbook ended {}", outcome.status.as_str()));
            return self.fail(&why).await;
        }

        if let Some(hp) = &c.req.haproxy {
            self.step("enabling", "out").await?;
            let first = hp.weights[0] as u8;
            let enable = vec![
                HaproxyAction::SetWeight {
                    backend: hp.backend.clone(),
                    server: self.host.server_name.clone(),
                    percent: first,
                },
                HaproxyAction::SetState {
                    backend: hp.backend.clone(),
                    server: self.host.server_name.clone(),
                    state: ServerAdminState::Ready,
                },
            ];
            if let Err(e) = self
                .on_every_vm(&format!("ready at {first}%"), enable)
                .await
            {
                return self
                    .fail(&format!("could not put the server back in rotation: {e}"))
                    .await;
            }
            self.step("ramping", "in").await?;
            for w in hp.weights.iter().skip(1) {
                tokio::time::sleep(Duration::from_secs(hp.sleep_seconds)).await;
                if let Err(e) = self
                    .on_every_vm(
                        &format!("weight {w}%"),
                        vec![HaproxyAction::SetWeight {
                            backend: hp.backend.clone(),
                            server: self.host.server_name.clone(),
                            percent: *w as u8,
                        }],
                    )
                    .await
                {
                    // In rotation already; a failed ramp step is reported, not fatal.
                    c.log
                        .push(
                            Some(self.name()),
                            "haproxy",
                            json!({"action": format!("weight {w}%"), "ok": false, "detail": e}),
                        )
                        .await;
                }
            }
        }
        store
            .host_finished(&c.id, self.name(), "succeeded", "in", None)
            .await?;
        c.log
            .push(
                Some(self.name()),
                "host_finished",
                json!({"status": "succeeded"}),
            )
            .await;
        Ok(HostEnd::Succeeded)
    }

    /// Marks the host failed, leaving its server in maint on every VM.
    async fn fail(&self, why: &str) -> Result<HostEnd, StoreError> {
        let c = &self.ctx;
        let mut rotation = "in";
        if let Some(hp) = &c.req.haproxy {
            rotation = "maint";
            if let Err(e) = self
                .on_every_vm(
                    "maint",
                    vec![HaproxyAction::SetState {
                        backend: hp.backend.clone(),
                        server: self.host.server_name.clone(),
                        state: ServerAdminState::Maint,
                    }],
                )
                .await
            {
                tracing::warn!(error = %e, "could not set the failed host's server to maint");
            }
        }
        c.d.store
            .host_finished(&c.id, self.name(), "failed", rotation, Some(why))
            .await?;
        c.log
            .push(
                Some(self.name()),
                "host_finished",
                json!({"status": "failed", "error": why}),
            )
            .await;
        tracing::warn!(error = why, "host failed");
        Ok(HostEnd::Failed)
    }

    /// Runs the actions on every HAProxy VM (concurrently) and records each.
    async fn on_every_vm(&self, label: &str, actions: Vec<HaproxyAction>) -> Result<(), String> {
        let c = &self.ctx;
        let timeout =
            Duration::from_secs(c.req.haproxy.as_ref().map_or(0, |h| h.degradation_seconds) + 30);
        let mut set = JoinSet::new();
        for vm in c.haproxy_vms.clone() {
            let (d, id, actions) = (c.d.clone(), c.id.clone(), actions.clone());
            set.spawn(async move {
                let agent_ok = wait_for_agent(&d, &vm).await;
                let started = Instant::now();
                let res = if agent_ok {
                    haproxy_job(&d.fleet, &vm, Some(&id), actions, timeout).await
                } else {
                    Err(format!("HAProxy VM {vm} has no connected agent"))
                };
                (vm, started.elapsed(), res)
            });
        }
        let mut errors = Vec::new();
        while let Some(j) = set.join_next().await {
            let Ok((vm, took, res)) = j else { continue };
            let (ok, detail) = match &res {
                Ok(o) if o.status == JobStatus::Succeeded => {
                    (true, o.output.clone().unwrap_or_default())
                }
                Ok(o) => (
                    false,
                    o.error
                        .clone()
                        .unwrap_or_else(|| o.status.as_str().to_string()),
                ),
                Err(e) => (false, e.clone()),
            };
            let hp = c.req.haproxy.as_ref().expect("haproxy spec");
            let row = HaproxyActionRow {
                at: crate::store::now_ms(),
                host: self.host.name.clone(),
                haproxy_vm: vm.clone(),
                backend: hp.backend.clone(),
                server: self.host.server_name.clone(),
                action: label.to_string(),
                ok,
                detail: Some(detail.clone()),
            };
            if let Err(e) = c.d.store.insert_haproxy_action(&c.id, &row).await {
                tracing::warn!(error = %e, "could not record HAProxy action");
            }
            c.log
                .push(Some(self.name()), "haproxy", json!({"action": label, "haproxy_vm": vm, "ok": ok, "detail": detail, "took_ms": took.as_millis() as u64}))
                .await;
            if !ok {
                errors.push(format!("{vm}: {detail}"));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// Runs the playbook job by its id. After a controller restart the same
    /// id is sent again: the agent's journal answers with the recorded
    /// outcome (or says it is still running) instead of running it twice.
    async fn playbook(&self, job_id: &str) -> Result<JobOutcome, PlaybookEnd> {
        let c = &self.ctx;
        let name = self.name();
        if !wait_for_agent(&c.d, name).await {
            return Err(PlaybookEnd::Failed(format!(
                "agent {name} is not connected"
            )));
        }
        let req = JobRequest {
            job_id: job_id.to_string(),
            deployment_id: Some(c.id.clone()),
            kind: JobKind::Playbook(PlaybookJob {
                playbook: c.req.playbook.clone(),
                vars: c.req.vars.clone(),
                changeset: c.req.changeset.as_ref().map(|cs| Changeset {
                    version: cs.version.clone(),
                    url: cs.url.clone(),
                    sha256: cs.sha256.clone(),
                }),
            }),
        };
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.stream_job(&req).await {
                Ok(o) if o.status == JobStatus::Running => {
                    // Running in another stream (we restarted): poll its outcome.
                    return self.poll_outcome(job_id).await;
                }
                Ok(o) => return Ok(o),
                Err(StreamEnd::Shutdown) => return Err(PlaybookEnd::Shutdown),
                Err(StreamEnd::Lost(e)) => {
                    // The connection dropped mid-job: the job goes on on the
                    // agent; ask for its outcome once the agent is back.
                    c.log
                        .push(
                            Some(name),
                            "step",
                            json!({"step": "reconnecting", "error": e}),
                        )
                        .await;
                    if attempts >= 3 || !wait_for_agent(&c.d, name).await {
                        return Err(PlaybookEnd::Failed(format!(
                            "lost the agent during the playbook: {e}"
                        )));
                    }
                }
            }
        }
    }

    async fn stream_job(&self, req: &JobRequest) -> Result<JobOutcome, StreamEnd> {
        let c = &self.ctx;
        let name = self.name();
        let mut stream =
            c.d.fleet
                .start_job(name, req)
                .await
                .map_err(|e| StreamEnd::Lost(e.to_string()))?;
        loop {
            let ev = tokio::select! {
                ev = stream.next() => ev,
                _ = c.d.shutdown.cancelled() => return Err(StreamEnd::Shutdown),
            };
            match ev {
                Ok(Some(JobEvent::Finished(o))) => return Ok(o),
                Ok(Some(ev)) => {
                    let v = crate::events::event_json(&ev);
                    let kind = v["type"].as_str().unwrap_or("log").to_string();
                    c.log.push(Some(name), &kind, v).await;
                }
                Ok(None) => return Err(StreamEnd::Lost("the agent closed the job stream".into())),
                Err(e) => return Err(StreamEnd::Lost(e.to_string())),
            }
        }
    }

    async fn poll_outcome(&self, job_id: &str) -> Result<JobOutcome, PlaybookEnd> {
        let c = &self.ctx;
        let name = self.name();
        c.log
            .push(
                Some(name),
                "step",
                json!({"step": "awaiting_outcome", "job_id": job_id}),
            )
            .await;
        loop {
            if c.d.shutdown.is_cancelled() {
                return Err(PlaybookEnd::Shutdown);
            }
            let req = JobRequest {
                job_id: job_id.to_string(),
                deployment_id: Some(c.id.clone()),
                kind: JobKind::Outcome,
            };
            match self.stream_job(&req).await {
                Ok(o) if o.status == JobStatus::Running => {}
                Ok(o) => return Ok(o),
                Err(StreamEnd::Shutdown) => return Err(PlaybookEnd::Shutdown),
                Err(StreamEnd::Lost(_)) => {
                    if !wait_for_agent(&c.d, name).await {
                        return Err(PlaybookEnd::Failed(format!(
                            "agent {name} went away while its job ran"
                        )));
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = c.d.shutdown.cancelled() => return Err(PlaybookEnd::Shutdown),
            }
        }
    }
}

enum PlaybookEnd {
    Shutdown,
    Failed(String),
}

enum StreamEnd {
    Shutdown,
    Lost(String),
}

/// Waits (bounded) for an agent to have a live session.
async fn wait_for_agent(d: &Deployments, name: &str) -> bool {
    let deadline = Instant::now() + d.agent_wait;
    loop {
        if d.fleet.session(name).is_some() {
            return true;
        }
        if Instant::now() >= deadline || d.shutdown.is_cancelled() {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
