//! The orchestrator of one deployment: plan once (stored), then a sliding
//! window of `concurrency` hosts under the capacity guard (`max_unavailable`
//! servers out of rotation, counting servers left in maint by failed hosts),
//! stopping new hosts when failures exceed `max_fail_percentage` or a cancel
//! is requested, letting hosts in flight finish.

use super::logs::LogWriter;
use super::plan::{haproxy_job, make_plan};
use super::request::DeployRequest;
use super::rollout::host::{Guard, HostAction, HostMachine, HostPlan, PlaybookResult};
use super::rollout::{
    Action, BackendServer, HostOutcome, HostState, HostStatus, Limits, ParseError, Rollout,
    Unreadable,
};
use super::rollout::{Rotation, Step};
use super::Deployments;
use crate::notify::NotifyEvent;
use crate::store::{HaproxyActionRow, HostRow, NewHost, StoreError};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use vesemir_protocol::haproxy::{DrainOutcome, HaproxyOp, HaproxyReply};
use vesemir_protocol::job::{
    Changeset, JobEvent, JobKind, JobOutcome, JobOutput, JobRequest, JobStatus, PlaybookJob,
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

impl HostEnd {
    /// The `result` label of `vesemir_host_runs_total`.
    fn label(self) -> &'static str {
        match self {
            HostEnd::Succeeded => "succeeded",
            HostEnd::Failed => "failed",
            HostEnd::Interrupted => "interrupted",
        }
    }
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
    let req: DeployRequest = match vesemir_api::StoredRequest::parse(&row.request) {
        Ok(r) => r.into_request(),
        Err(e) => {
            d.store
                .finish_deployment(
                    id,
                    "failed",
                    Some(&format!("stored request unreadable: {e}")),
                )
                .await?;
            crate::metrics::deployment_finished(&d.store, id).await;
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

    let override_record = row.freeze_override.as_deref();
    let result = drive(d, id, &row.status, override_record, req, &log, &wake).await;
    drop(log);
    let _ = writer.await;
    d.log_version.send_modify(|v| *v = v.wrapping_add(1));
    result
}

async fn drive(
    d: &Arc<Deployments>,
    id: &str,
    status: &str,
    freeze_override: Option<&str>,
    req: DeployRequest,
    log: &LogWriter,
    wake: &CancellationToken,
) -> Result<(), StoreError> {
    // 1. Plan once; a resumed deployment uses the stored plan.
    let haproxy_vms: Vec<String> = if status == "pending" {
        let plan = match usable_plan(d, &req).await {
            Ok(p) => p,
            Err(e) => {
                return end_deployment(d, log, id, "failed", Some(&e.to_string())).await;
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
        // Start hook: the `running` event carries the freeze override (the
        // log says who deployed through which freeze), then `started` is
        // queued for the webhooks (never waited for).
        let mut running = json!({"status": "running", "hosts": hosts.len(), "query": plan.query});
        if let Some(o) =
            freeze_override.and_then(|o| serde_json::from_str::<serde_json::Value>(o).ok())
        {
            running["freeze_override"] = o;
        }
        log.push(None, "deployment", running).await;
        d.notify(id, NotifyEvent::Started, None).await;
        for h in hosts.iter().filter(|h| h.status == "unreachable") {
            crate::metrics::host_run("unreachable", None);
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

/// Why a deployment cannot start (stored as its error).
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error(transparent)]
    Plan(#[from] super::plan::PlanError),
    #[error("no hosts match the selector ({0})")]
    NoHosts(String),
    #[error("haproxy.selector matches no VMs: nothing to drain the servers with")]
    NoHaproxyVms,
    #[error("HAProxy VM(s) without a connected agent: {0}; refusing to deploy without draining")]
    HaproxyVmsDown(String),
}

/// The plan, or why the deployment can't start: no hosts, or HAProxy VMs
/// that can't drain anything.
async fn usable_plan(d: &Deployments, req: &DeployRequest) -> Result<super::plan::Plan, Refused> {
    let plan = make_plan(d, req, false).await?;
    if plan.hosts.is_empty() {
        return Err(Refused::NoHosts(plan.query));
    }
    if req.haproxy.is_some() {
        if plan.haproxy_vms.is_empty() {
            return Err(Refused::NoHaproxyVms);
        }
        let down: Vec<&str> = plan
            .haproxy_vms
            .iter()
            .filter(|v| v.agent != "connected")
            .map(|v| v.name.as_str())
            .collect();
        if !down.is_empty() {
            return Err(Refused::HaproxyVmsDown(down.join(", ")));
        }
    }
    Ok(plan)
}

/// Starts a host run in `set`, remembering which task is which host (so a
/// panicked task can be traced back to its host and resumed).
fn spawn_host(
    set: &mut JoinSet<(String, HostEnd)>,
    names: &mut HashMap<tokio::task::Id, String>,
    ctx: &Arc<Ctx>,
    host: HostRow,
    resumed: bool,
    delay: Duration,
) {
    let c = ctx.clone();
    let name = host.name.clone();
    let handle = set.spawn(async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let name = host.name.clone();
        (
            name,
            HostRun {
                ctx: c,
                host,
                resumed,
            }
            .run()
            .await,
        )
    });
    names.insert(handle.id(), name);
}

/// Most re-runs of a host whose run was interrupted by a store error or a
/// panic before it counts as failed.
const MAX_HOST_RERUNS: u32 = 5;

/// How long one read of the HAProxy VMs' server states serves the capacity
/// guard. Reading it before every single host start serialised one job
/// round trip per host on the orchestrator: a 1,000-host rolling deploy at
/// concurrency 100 spent more time asking than deploying (bench/RESULTS.md).
/// Our own servers are counted exactly either way; only servers that others
/// take out are seen up to this much later.
const EXTERNAL_READ_REUSE: Duration = Duration::from_millis(250);

/// The sliding window.
async fn window(ctx: Arc<Ctx>, wake: &CancellationToken) -> Result<(), StoreError> {
    let d = &ctx.d;
    let id = ctx.id.as_str();
    let hosts = d.store.deployment_hosts(id).await?;
    let states: Result<Vec<HostState>, ParseError> = hosts
        .iter()
        .map(|h| {
            Ok(HostState {
                name: h.name.clone(),
                server: h.server_name.clone(),
                status: h.status.parse()?,
                rotation: h.rotation.parse()?,
            })
        })
        .collect();
    let states = match states {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("stored hosts unreadable: {e}");
            return end_deployment(d, &ctx.log, id, "failed", Some(&msg)).await;
        }
    };
    let total = hosts.len();
    let mut machine = Rollout::new(
        Limits {
            concurrency: ctx.req.concurrency_for(total),
            max_unavailable: ctx.req.max_unavailable_for(total),
            max_fail_percentage: ctx.req.max_fail_percentage,
            haproxy_vms: if ctx.req.haproxy.is_some() {
                ctx.haproxy_vms.clone()
            } else {
                Vec::new()
            },
            reread_ms: EXTERNAL_READ_REUSE.as_millis() as u64,
        },
        &states,
    );
    let rows: HashMap<String, HostRow> = hosts.into_iter().map(|h| (h.name.clone(), h)).collect();
    // The machine's clock: ms since the window opened, read only here.
    let opened = Instant::now();
    let now_ms = || opened.elapsed().as_millis() as u64;

    let mut set: JoinSet<(String, HostEnd)> = JoinSet::new();
    let mut names: HashMap<tokio::task::Id, String> = HashMap::new();
    let mut reruns: HashMap<String, u32> = HashMap::new();
    for name in machine.resumed() {
        spawn_host(
            &mut set,
            &mut names,
            &ctx,
            rows[&name].clone(),
            true,
            Duration::ZERO,
        );
    }

    let mut cancelled = d
        .store
        .get_deployment(id)
        .await?
        .is_some_and(|r| r.cancel_requested);
    if cancelled {
        machine.cancel();
    }
    let mut shutting_down = false;
    let mut wait_until: Option<u64> = None;
    let finish = 'window: loop {
        // Act on every action the machine has, feeding results back; each
        // host's decisions are persisted by its run before it acts.
        while !shutting_down && wait_until.is_none() {
            match machine.poll(now_ms()) {
                Some(Action::QueryBackend(vm)) => {
                    let r = read_backend(&ctx, &vm).await;
                    if let Err(e) = &r {
                        tracing::warn!(vm = %vm, error = %e, "cannot read the backend's servers; no new host starts until it can");
                    }
                    machine.servers_state(&vm, now_ms(), r);
                }
                Some(Action::StartHost(name)) => {
                    spawn_host(
                        &mut set,
                        &mut names,
                        &ctx,
                        rows[&name].clone(),
                        false,
                        Duration::ZERO,
                    );
                }
                Some(Action::WaitUntil(t)) => wait_until = Some(t),
                Some(Action::Finish { status, error }) => break 'window Some((status, error)),
                None => break,
            }
        }
        if set.is_empty() && (shutting_down || wait_until.is_none()) {
            break None;
        }
        let watch_wake = !cancelled && !shutting_down;
        let sleep = Duration::from_millis(wait_until.map_or(0, |t| t.saturating_sub(now_ms())));
        tokio::select! {
            joined = set.join_next_with_id(), if !set.is_empty() => {
                let Some(joined) = joined else { continue };
                let (name, end) = match joined {
                    Ok((task, x)) => {
                        names.remove(&task);
                        x
                    }
                    Err(e) => {
                        let name = names.remove(&e.id()).unwrap_or_default();
                        tracing::error!(deployment_id = %id, host = %name, error = %e, "host task panicked");
                        (name, HostEnd::Interrupted)
                    }
                };
                match end {
                    HostEnd::Succeeded => machine.host_ended(&name, HostOutcome::Succeeded),
                    HostEnd::Failed => machine.host_ended(&name, HostOutcome::Failed),
                    HostEnd::Interrupted if shutting_down || d.shutdown.is_cancelled() => {}
                    HostEnd::Interrupted => {
                        let n = reruns.entry(name.clone()).or_insert(0);
                        *n += 1;
                        let row = d.store.deployment_hosts(id).await?.into_iter().find(|h| h.name == name);
                        match row.as_ref().map(|r| r.status.parse::<HostStatus>()) {
                            Some(Ok(HostStatus::Running)) if *n <= MAX_HOST_RERUNS => {
                                tracing::warn!(deployment_id = %id, host = %name, attempt = *n, "host run interrupted; resuming it");
                                let delay = Duration::from_millis(500 * u64::from(*n));
                                spawn_host(&mut set, &mut names, &ctx, row.expect("matched"), true, delay);
                            }
                            Some(Ok(HostStatus::Succeeded)) => machine.host_ended(&name, HostOutcome::Succeeded),
                            Some(Ok(HostStatus::Running)) => {
                                tracing::error!(deployment_id = %id, host = %name, "host run keeps failing; giving up on it");
                                machine.host_abandoned(&name);
                            }
                            _ => machine.host_abandoned(&name),
                        }
                    }
                }
                tracing::debug!(deployment_id = %id, host = %name, ?end, "host done");
            }
            _ = tokio::time::sleep(sleep), if wait_until.is_some() && !shutting_down => {
                wait_until = None;
            }
            _ = wake.cancelled(), if watch_wake => {
                if d.shutdown.is_cancelled() {
                    shutting_down = true;
                } else {
                    cancelled = true;
                    machine.cancel();
                    wait_until = None;
                    ctx.log.push(None, "deployment", json!({"status": "cancelling"})).await;
                }
            }
        }
    };
    if shutting_down || d.shutdown.is_cancelled() {
        tracing::info!(deployment_id = %id, "controller stopping; deployment resumes on the next start");
        return Ok(());
    }
    let stuck: Vec<String> = d
        .store
        .deployment_hosts(id)
        .await?
        .into_iter()
        .filter(|h| h.status == HostStatus::Running.as_str())
        .map(|h| h.name)
        .collect();
    if !stuck.is_empty() {
        tracing::error!(deployment_id = %id, hosts = ?stuck, "hosts still running after the window closed; the deployment resumes later");
        return Ok(());
    }
    let Some((status, error)) = finish else {
        tracing::error!(deployment_id = %id, "the window closed without an end; the deployment resumes later");
        return Ok(());
    };
    let status = status.as_str();
    end_deployment(d, &ctx.log, id, status, error.as_deref()).await?;
    tracing::info!(deployment_id = %id, status, "deployment finished");
    Ok(())
}

/// Ends a deployment: the log line first (followers see why), then the
/// stored status, then the metrics that count finished deployments, then
/// the webhooks (queued, never waited for; a cancelled deployment is told
/// as `aborted`).
async fn end_deployment(
    d: &Deployments,
    log: &LogWriter,
    id: &str,
    status: &str,
    error: Option<&str>,
) -> Result<(), StoreError> {
    log.push(
        None,
        "deployment",
        json!({"status": status, "error": error}),
    )
    .await;
    d.store.finish_deployment(id, status, error).await?;
    crate::metrics::deployment_finished(&d.store, id).await;
    let (event, message) = crate::notify::end_event(status, error);
    d.notify(id, event, message.as_deref()).await;
    Ok(())
}

/// The backend's servers on one HAProxy VM. Anything short of a full,
/// well-formed answer is [`Unreadable`]: the guard fails closed on it.
async fn read_backend(ctx: &Ctx, vm: &str) -> Result<Vec<BackendServer>, Unreadable> {
    let Some(hp) = &ctx.req.haproxy else {
        return Ok(Vec::new());
    };
    if !wait_for_agent(&ctx.d, vm).await {
        return Err(Unreadable(format!(
            "HAProxy VM {vm} has no connected agent"
        )));
    }
    let o = haproxy_job(
        &ctx.d.fleet,
        vm,
        Some(&ctx.id),
        vec![HaproxyOp::ServersState {
            backend: hp.backend.clone(),
        }],
        Duration::from_secs(10),
    )
    .await
    .map_err(|e| Unreadable(e.to_string()))?;
    if o.status != JobStatus::Succeeded {
        return Err(Unreadable(o.error.unwrap_or_else(|| {
            format!("the read ended {}", o.status.as_str())
        })));
    }
    servers_from_reply(o.output.as_ref())
}

/// How often an agent polls `scur` while a server drains.
const DRAIN_POLL_MS: u64 = 100;

/// The servers in an agent's reply to one `ServersState` op; a reply that
/// isn't exactly that (missing, another reply, several) is [`Unreadable`],
/// never "no servers out": the guard fails closed on it.
pub(super) fn servers_from_reply(
    output: Option<&JobOutput>,
) -> Result<Vec<BackendServer>, Unreadable> {
    let servers = match output {
        Some(JobOutput::Haproxy(replies)) => match replies.as_slice() {
            [HaproxyReply::ServersState(servers)] => servers,
            [] => return Err(Unreadable("the agent's reply is empty".into())),
            [_] => return Err(Unreadable("the agent's reply is not a server list".into())),
            _ => {
                return Err(Unreadable(format!(
                    "the agent sent {} replies to one read",
                    replies.len()
                )))
            }
        },
        None => return Err(Unreadable("the agent's reply has no output".into())),
    };
    Ok(servers
        .iter()
        .map(|srv| BackendServer {
            name: srv.name.clone(),
            // Any admin flag (drain, maint, configured disabled, …).
            out: srv.admin_state.0 != 0,
        })
        .collect())
}

/// A successful HAProxy job's replies in words, for the action log.
fn reply_detail(output: Option<&JobOutput>) -> String {
    let Some(JobOutput::Haproxy(replies)) = output else {
        return String::new();
    };
    replies
        .iter()
        .map(|r| match r {
            HaproxyReply::Done => "done".to_string(),
            HaproxyReply::Weight(w) => format!("weight {} (initial {})", w.current, w.initial),
            HaproxyReply::ServersState(s) => format!("{} server(s)", s.len()),
            HaproxyReply::Stat(s) => format!("{} stat row(s)", s.len()),
            HaproxyReply::Drain(DrainOutcome::Drained { after_ms }) => {
                format!("drained after {after_ms} ms")
            }
            HaproxyReply::Drain(DrainOutcome::TimedOut {
                after_ms,
                last_scur,
            }) => format!(
                "degradation time passed after {after_ms} ms with {last_scur} session(s) open"
            ),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

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
        let since = self.host.started_at.unwrap_or_else(crate::store::now_ms);
        let end = tracing::Instrument::instrument(
            async move {
                let end = self.run_inner().await;
                tracing::info!(result = ?end, "host run ended");
                end
            },
            span,
        )
        .await;
        crate::metrics::host_run(end.label(), Some(since));
        end
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

    async fn step(&self, step: Step) -> Result<(), StoreError> {
        let rotation = step.rotation(self.ctx.req.haproxy.is_some());
        let step = step.as_str();
        self.ctx
            .d
            .store
            .host_step(&self.ctx.id, self.name(), step, rotation.as_str())
            .await?;
        self.ctx
            .log
            .push(Some(self.name()), "step", json!({"step": step}))
            .await;
        Ok(())
    }

    /// The request's numbers for this host's [`HostMachine`].
    fn host_plan(&self) -> HostPlan {
        let c = &self.ctx;
        HostPlan {
            host: self.host.name.clone(),
            guard: c.req.haproxy.as_ref().map(|hp| Guard {
                backend: hp.backend.clone(),
                server: self.host.server_name.clone(),
                drain_mode: hp.drain_mode.clone(),
                degradation_ms: hp.degradation_seconds.saturating_mul(1000),
                weights: hp.weights.clone(),
                sleep_ms: hp.sleep_seconds.saturating_mul(1000),
            }),
            job_timeout_secs: c.req.job_timeout_seconds,
            drain_poll_ms: DRAIN_POLL_MS,
        }
    }

    /// The IO shell of the host's [`HostMachine`]: persists the step each
    /// transition moves to *before* performing its action, performs it,
    /// and feeds the result back, until the machine ends the host.
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
        // A fresh run starts at the beginning whatever its row says; a
        // resumed one from its stored step (Step::resume_from).
        let stored = self
            .host
            .step
            .as_deref()
            .map(str::parse::<Step>)
            .transpose()
            .map(|s| s.filter(|_| self.resumed));
        let mut machine = HostMachine::new(self.host_plan(), stored);
        // The machine's clock: ms since this run began, read only here.
        let opened = Instant::now();
        let now_ms = || opened.elapsed().as_millis() as u64;
        let mut act = machine.start();
        loop {
            if let Some(step) = act.record {
                self.step(step).await?;
            }
            act = match act.action {
                HostAction::Haproxy { label, ops, fatal } => {
                    let r = self.on_every_vm(&label, ops).await;
                    if let (Err(e), false) = (&r, fatal) {
                        // In rotation already; reported, not fatal.
                        c.log
                            .push(
                                Some(self.name()),
                                "haproxy",
                                json!({"action": label, "ok": false, "detail": e.to_string()}),
                            )
                            .await;
                    }
                    machine.haproxy_done(r.map_err(|e| e.to_string()), now_ms())
                }
                HostAction::RunPlaybook => match self.run_playbook(&job_id).await? {
                    Some(result) => machine.playbook_done(result),
                    None => return Ok(HostEnd::Interrupted),
                },
                HostAction::WaitUntil(t) => {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(t.saturating_sub(now_ms()))) => {}
                        // Resumes at its stored step on the next start.
                        _ = c.d.shutdown.cancelled() => return Ok(HostEnd::Interrupted),
                    }
                    machine.timer(now_ms())
                }
                HostAction::Succeed => {
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
                    return Ok(HostEnd::Succeeded);
                }
                HostAction::Fail {
                    status,
                    reason,
                    maint,
                } => return self.fail_as(status, &reason, maint).await,
            };
        }
    }

    /// Runs the playbook job within `job_timeout_seconds` and records its
    /// stats; `None` when the controller is shutting down (the host
    /// resumes on the next start).
    async fn run_playbook(&self, job_id: &str) -> Result<Option<PlaybookResult>, StoreError> {
        let c = &self.ctx;
        let limit = Duration::from_secs(c.req.job_timeout_seconds);
        let outcome = match tokio::time::timeout(limit, self.playbook(job_id)).await {
            Ok(Ok(o)) => o,
            Ok(Err(PlaybookEnd::Shutdown)) => return Ok(None),
            Ok(Err(PlaybookEnd::Unreachable(e))) => {
                return Ok(Some(PlaybookResult::Unreachable(e)))
            }
            Err(_) => {
                // Whether the agent is gone or silent at the deadline
                // decides failed (the playbook) or unreachable (the network).
                let agent_silent = !agent_answering(&c.d, self.name());
                self.cancel_job(job_id).await;
                return Ok(Some(PlaybookResult::TimedOut { agent_silent }));
            }
        };
        let s = outcome.stats;
        c.d.store
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
        Ok(Some(PlaybookResult::Ended {
            status: outcome.status,
            error: outcome.error,
        }))
    }

    /// Asks the agent to cancel a job (best effort: it may be gone).
    async fn cancel_job(&self, job_id: &str) {
        let c = &self.ctx;
        let req = JobRequest {
            job_id: job_id.to_string(),
            deployment_id: Some(c.id.clone()),
            kind: JobKind::Cancel,
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), self.stream_job(&req)).await;
    }

    /// Ends the host `status` (failed or unreachable, both count against
    /// `max_fail_percentage`; a job's real outcome stays in the agent's
    /// journal), first running `maint` on every VM (best effort). During a
    /// controller shutdown nothing is written: what looks like a failure is
    /// the shutdown itself, and the host resumes on restart.
    async fn fail_as(
        &self,
        status: HostStatus,
        why: &str,
        maint: Vec<HaproxyOp>,
    ) -> Result<HostEnd, StoreError> {
        let c = &self.ctx;
        if c.d.shutdown.is_cancelled() {
            return Ok(HostEnd::Interrupted);
        }
        let rotation = if maint.is_empty() {
            Rotation::In
        } else {
            if let Err(e) = self.on_every_vm("maint", maint).await {
                tracing::warn!(error = %e, "could not set the failed host's server to maint");
            }
            Rotation::Maint
        };
        let status = status.as_str();
        c.d.store
            .host_finished(&c.id, self.name(), status, rotation.as_str(), Some(why))
            .await?;
        c.log
            .push(
                Some(self.name()),
                "host_finished",
                json!({"status": status, "error": why}),
            )
            .await;
        tracing::warn!(error = why, status, "host failed");
        Ok(HostEnd::Failed)
    }

    /// Runs the actions on every HAProxy VM (concurrently) and records each.
    async fn on_every_vm(&self, label: &str, actions: Vec<HaproxyOp>) -> Result<(), HaproxyFailed> {
        let c = &self.ctx;
        let timeout =
            Duration::from_secs(c.req.haproxy.as_ref().map_or(0, |h| h.degradation_seconds) + 30);
        let mut set = JoinSet::new();
        for vm in c.haproxy_vms.clone() {
            let (d, id, actions) = (c.d.clone(), c.id.clone(), actions.clone());
            // In the host's span, like the rest of its run.
            set.spawn(tracing::Instrument::in_current_span(async move {
                let agent_ok = wait_for_agent(&d, &vm).await;
                let started = Instant::now();
                let res = if agent_ok {
                    tokio::select! {
                        r = haproxy_job(&d.fleet, &vm, Some(&id), actions, timeout) => r.map_err(|e| e.to_string()),
                        _ = d.shutdown.cancelled() => Err("the controller is stopping".to_string()),
                    }
                } else {
                    Err(format!("HAProxy VM {vm} has no connected agent"))
                };
                (vm, started.elapsed(), res)
            }));
        }
        let mut errors = Vec::new();
        while let Some(j) = set.join_next().await {
            let (vm, took, res) = match j {
                Ok(x) => x,
                Err(e) => {
                    errors.push(format!("an HAProxy task failed: {e}"));
                    continue;
                }
            };
            let (ok, detail) = match &res {
                Ok(o) if o.status == JobStatus::Succeeded => {
                    (true, reply_detail(o.output.as_ref()))
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
            crate::metrics::haproxy_action(label, ok);
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
            Err(HaproxyFailed(errors))
        }
    }

    /// Runs the playbook job by its id. After a controller restart the same
    /// id is sent again: the agent's journal answers with the recorded
    /// outcome (or says it is still running) instead of running it twice.
    #[tracing::instrument(name = "job", skip_all, fields(job_id = %job_id))]
    async fn playbook(&self, job_id: &str) -> Result<JobOutcome, PlaybookEnd> {
        let c = &self.ctx;
        let name = self.name();
        if !wait_for_agent(&c.d, name).await {
            return Err(PlaybookEnd::Unreachable(format!(
                "agent {name} is not connected"
            )));
        }
        tracing::info!(playbook = %c.req.playbook, "playbook job sent");
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
                    playbook: cs.playbook.clone(),
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
                        return Err(PlaybookEnd::Unreachable(format!(
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
                        return Err(PlaybookEnd::Unreachable(format!(
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

/// HAProxy actions that failed, one message per VM (joined with "; ").
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.join("; "))]
struct HaproxyFailed(Vec<String>);

enum PlaybookEnd {
    Shutdown,
    /// The agent disconnected or went silent mid-job: the host is
    /// `unreachable`, not `failed` (the playbook may well have succeeded).
    Unreachable(String),
}

enum StreamEnd {
    Shutdown,
    Lost(String),
}

/// Whether the agent has a session with a heartbeat in the last three
/// intervals (what `agents list` calls connected rather than stale).
fn agent_answering(d: &Deployments, name: &str) -> bool {
    d.fleet.session(name).is_some_and(|s| {
        s.live.lock().expect("live lock").last_heartbeat.elapsed() <= d.fleet.heartbeat * 3
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    use vesemir_protocol::haproxy::{AdminState, OpState, ServerState};

    fn server(name: &str, admin: u32) -> ServerState {
        ServerState {
            backend: "app".into(),
            name: name.into(),
            addr: "127.0.0.1".into(),
            port: Some(80),
            op_state: OpState::Running,
            admin_state: AdminState(admin),
            weight: 100,
            initial_weight: 100,
        }
    }

    #[test]
    fn a_servers_state_reply_reads_admin_states() {
        let r = JobOutput::Haproxy(vec![HaproxyReply::ServersState(vec![
            server("web1", 8),
            server("web2", 0),
            server("web3", 0x04),
        ])]);
        let s = servers_from_reply(Some(&r)).unwrap();
        let out: Vec<(&str, bool)> = s.iter().map(|b| (b.name.as_str(), b.out)).collect();
        assert_eq!(out, [("web1", true), ("web2", false), ("web3", true)]);
    }

    #[test]
    fn a_malformed_reply_is_unreadable_not_empty() {
        let list = || HaproxyReply::ServersState(vec![server("web1", 0)]);
        for bad in [
            None,
            Some(JobOutput::Haproxy(vec![])),
            Some(JobOutput::Haproxy(vec![HaproxyReply::Done])),
            Some(JobOutput::Haproxy(vec![HaproxyReply::Stat(vec![])])),
            Some(JobOutput::Haproxy(vec![list(), list()])),
        ] {
            assert!(servers_from_reply(bad.as_ref()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn replies_read_as_words_in_the_action_log() {
        let r = JobOutput::Haproxy(vec![
            HaproxyReply::Done,
            HaproxyReply::Drain(DrainOutcome::TimedOut {
                after_ms: 5,
                last_scur: 2,
            }),
        ]);
        assert_eq!(
            reply_detail(Some(&r)),
            "done, degradation time passed after 5 ms with 2 session(s) open"
        );
        assert_eq!(reply_detail(None), "");
    }
}
