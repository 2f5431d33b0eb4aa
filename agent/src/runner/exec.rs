//! The task loop.

use std::path::Path;
use std::time::Instant;

use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use vesemir_protocol::job::{
    JobEvent, JobOutcome, JobStatus, LogStream, PlaybookJob, Stats, TaskResult, TaskStatus,
};

use super::modules::{self, ModuleArgs, ModuleOutput, TaskEnv};
use super::playbook::{self, CheckMode, Task};
use super::RunnerConfig;

fn outcome(job_id: &str, status: JobStatus, stats: Stats, error: Option<String>) -> JobOutcome {
    JobOutcome {
        job_id: job_id.to_string(),
        status,
        stats,
        error,
        output: None,
    }
}

async fn log(events: &mpsc::Sender<JobEvent>, index: u32, line: String) {
    let _ = events
        .send(JobEvent::Log {
            index,
            stream: LogStream::Runner,
            line,
        })
        .await;
}

/// The value a task registers.
fn registered(r: &TaskResult, out: &ModuleOutput) -> Value {
    let status = match r.status {
        TaskStatus::Ok => "ok",
        TaskStatus::Changed => "changed",
        TaskStatus::Failed => "failed",
        TaskStatus::Skipped => "skipped",
    };
    serde_json::json!({
        "rc": r.rc,
        "stdout": out.stdout.trim_end_matches('\n'),
        "stderr": out.stderr.trim_end_matches('\n'),
        "changed": r.status == TaskStatus::Changed,
        "failed": r.status == TaskStatus::Failed,
        "skipped": r.status == TaskStatus::Skipped,
        "status": status,
        "msg": r.msg,
    })
}

/// Runs a playbook; events other than `Started`/`Finished` are sent here.
pub(crate) async fn run(
    cfg: &RunnerConfig,
    path: &Path,
    job_id: &str,
    job: &PlaybookJob,
    events: &mpsc::Sender<JobEvent>,
    cancel: &CancellationToken,
) -> JobOutcome {
    let span = tracing::info_span!("job", job_id, playbook = %path.display());
    run_inner(cfg, path, job_id, job, events, cancel)
        .instrument(span)
        .await
}

async fn run_inner(
    cfg: &RunnerConfig,
    path: &Path,
    job_id: &str,
    job: &PlaybookJob,
    events: &mpsc::Sender<JobEvent>,
    cancel: &CancellationToken,
) -> JobOutcome {
    let mut stats = Stats::default();
    let prepared = playbook::load(path).and_then(|pb| {
        playbook::check(
            &pb,
            &job.vars,
            job.changeset.as_ref(),
            &cfg.facts,
            CheckMode::Run,
        )?;
        Ok(pb)
    });
    let pb = match prepared {
        Ok(pb) => pb,
        Err(e) => {
            tracing::warn!(error = %e, "playbook refused");
            log(events, 0, format!("playbook refused: {e}")).await;
            return outcome(job_id, JobStatus::Failed, stats, Some(e.to_string()));
        }
    };
    let templates = playbook::environment();
    let mut ctx = playbook::base_context(&job.vars, job.changeset.as_ref(), &cfg.facts);
    if let Err(e) = playbook::render_vars(&templates, &pb, &mut ctx, &job.vars) {
        log(events, 0, e.to_string()).await;
        return outcome(job_id, JobStatus::Failed, stats, Some(e.to_string()));
    }
    let playbook_dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    tracing::info!(tasks = pb.tasks.len(), "running playbook {}", pb.name);
    for task in &pb.tasks {
        if cancel.is_cancelled() {
            return outcome(
                job_id,
                JobStatus::Cancelled,
                stats,
                Some("cancelled".into()),
            );
        }
        // Names may use variables ("Restart {{ service }}"); show them
        // rendered, or as written if they can't be rendered yet.
        let shown = playbook::render_str(&templates, &task.name, &ctx)
            .unwrap_or_else(|_| task.name.clone());
        let _ = events
            .send(JobEvent::TaskStarted {
                index: task.index,
                name: shown,
            })
            .await;
        let (result, out) = run_task(cfg, task, &templates, &ctx, &playbook_dir, events, cancel)
            .instrument(tracing::info_span!("task", index = task.index, name = %task.name))
            .await;
        if let Some(r) = &task.register {
            ctx.insert(r.clone(), registered(&result, &out));
        }
        let cancelled = out.stopped && cancel.is_cancelled();
        let failed = result.status == TaskStatus::Failed;
        match result.status {
            _ if cancelled => {}
            TaskStatus::Ok => stats.ok += 1,
            TaskStatus::Changed => {
                stats.ok += 1;
                stats.changed += 1;
            }
            TaskStatus::Skipped => stats.skipped += 1,
            TaskStatus::Failed if task.ignore_errors => stats.ok += 1,
            TaskStatus::Failed => stats.failed += 1,
        }
        let msg = result.msg.clone();
        let _ = events.send(JobEvent::TaskResult(result)).await;
        if cancelled {
            return outcome(
                job_id,
                JobStatus::Cancelled,
                stats,
                Some(format!(
                    "cancelled during task {} ({})",
                    task.index + 1,
                    task.name
                )),
            );
        }
        if failed && !task.ignore_errors {
            return outcome(
                job_id,
                JobStatus::Failed,
                stats,
                Some(format!(
                    "task {} ({}) failed: {msg}",
                    task.index + 1,
                    task.name
                )),
            );
        }
    }
    outcome(job_id, JobStatus::Succeeded, stats, None)
}

/// Runs one task with its `when`, retries, timeout and overrides.
async fn run_task(
    cfg: &RunnerConfig,
    task: &Task,
    templates: &minijinja::Environment<'static>,
    ctx: &Map<String, Value>,
    playbook_dir: &Path,
    events: &mpsc::Sender<JobEvent>,
    cancel: &CancellationToken,
) -> (TaskResult, ModuleOutput) {
    let start = Instant::now();
    let finish = |out: ModuleOutput| {
        let r = TaskResult {
            index: task.index,
            name: task.name.clone(),
            module: task.module.clone(),
            status: out.status(),
            duration_ms: start.elapsed().as_millis() as u64,
            rc: out.rc,
            msg: out.msg.clone(),
            stdout_tail: modules_tail(&out.stdout),
            stderr_tail: modules_tail(&out.stderr),
        };
        (r, out)
    };
    if let Some(w) = &task.when {
        match playbook::eval_bool(templates, w, ctx) {
            Ok(true) => {}
            Ok(false) => {
                return finish(ModuleOutput {
                    status: Some(TaskStatus::Skipped),
                    msg: format!("skipped: `{w}` is false"),
                    ..Default::default()
                })
            }
            Err(e) => return finish(ModuleOutput::failed(format!("when: {e}"))),
        }
    }
    let args = match playbook::render_value(templates, &task.args, ctx)
        .and_then(|v| ModuleArgs::parse(&task.module, &v))
    {
        Ok(a) => a,
        Err(e) => return finish(ModuleOutput::failed(e)),
    };
    let timeout = match &task.timeout {
        None => cfg.default_task_timeout,
        Some(t) => match playbook::render_str(templates, t, ctx)
            .and_then(|s| playbook::parse_duration(&s))
        {
            Ok(d) => d,
            Err(e) => return finish(ModuleOutput::failed(format!("timeout: {e}"))),
        },
    };
    let attempts = task.retries + 1;
    let mut attempt = 1;
    loop {
        let stop = cancel.child_token();
        let tenv = TaskEnv {
            cfg,
            index: task.index,
            events,
            stop: &stop,
            playbook_dir,
            templates,
            ctx,
        };
        let handles_stop = args.handles_stop();
        let fut = modules::run(&args, &tenv);
        tokio::pin!(fut);
        let mut out = tokio::select! {
            o = &mut fut => o,
            _ = tokio::time::sleep(timeout) => {
                stop.cancel();
                let mut o = if handles_stop { fut.await } else { ModuleOutput::failed("") };
                o.status = Some(TaskStatus::Failed);
                o.stopped = true;
                o.msg = format!("timed out after {}", humantime::format_duration(timeout));
                o
            }
            _ = cancel.cancelled(), if !handles_stop => {
                let mut o = ModuleOutput::failed("cancelled");
                o.stopped = true;
                o
            }
        };
        if out.stopped && cancel.is_cancelled() {
            out.status = Some(TaskStatus::Failed);
            out.msg = "cancelled".into();
            return finish(out);
        }
        if let Err(e) = apply_overrides(task, templates, ctx, &mut out) {
            out.status = Some(TaskStatus::Failed);
            out.msg = e;
        }
        if out.status() != TaskStatus::Failed || attempt >= attempts {
            return finish(out);
        }
        log(
            events,
            task.index,
            format!(
                "attempt {attempt}/{attempts} failed: {}; retrying in {}",
                out.msg,
                humantime::format_duration(task.delay)
            ),
        )
        .await;
        attempt += 1;
        tokio::select! {
            _ = tokio::time::sleep(task.delay) => {}
            _ = cancel.cancelled() => {
                let mut o = ModuleOutput::failed("cancelled");
                o.stopped = true;
                return finish(o);
            }
        }
    }
}

fn modules_tail(s: &str) -> String {
    modules::tail(s)
}

/// `changed_when` / `failed_when`, evaluated with the task's own result
/// bound to its `register` name.
fn apply_overrides(
    task: &Task,
    templates: &minijinja::Environment<'static>,
    ctx: &Map<String, Value>,
    out: &mut ModuleOutput,
) -> Result<(), String> {
    if task.changed_when.is_none() && task.failed_when.is_none() {
        return Ok(());
    }
    if out.stopped {
        return Ok(());
    }
    let mut local = ctx.clone();
    if let Some(r) = &task.register {
        let tmp = TaskResult {
            index: task.index,
            name: task.name.clone(),
            module: task.module.clone(),
            status: out.status(),
            duration_ms: 0,
            rc: out.rc,
            msg: out.msg.clone(),
            stdout_tail: String::new(),
            stderr_tail: String::new(),
        };
        local.insert(r.clone(), registered(&tmp, out));
    }
    if let Some(f) = &task.failed_when {
        let failed =
            playbook::eval_bool(templates, f, &local).map_err(|e| format!("failed_when: {e}"))?;
        if failed {
            out.status = Some(TaskStatus::Failed);
            out.msg = format!("failed_when `{f}` is true");
            return Ok(());
        } else if out.status() == TaskStatus::Failed {
            out.status = Some(TaskStatus::Changed);
        }
    }
    if let Some(c) = &task.changed_when {
        if out.status() != TaskStatus::Failed {
            let changed = playbook::eval_bool(templates, c, &local)
                .map_err(|e| format!("changed_when: {e}"))?;
            out.status = Some(if changed {
                TaskStatus::Changed
            } else {
                TaskStatus::Ok
            });
        }
    }
    Ok(())
}
