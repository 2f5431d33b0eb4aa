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
use super::playbook::{self, Body, CheckMode, Task};
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

/// The value a task registers: Ansible's common fields, the module's own
/// (`stat`, `json`, `attempts`…) and vesemir's `status` word.
fn registered(r: &TaskResult, out: &ModuleOutput) -> Value {
    let stdout = out.stdout.trim_end_matches('\n');
    let stderr = out.stderr.trim_end_matches('\n');
    let mut v = serde_json::json!({
        "rc": r.rc,
        "stdout": stdout,
        "stderr": stderr,
        "stdout_lines": stdout.lines().collect::<Vec<_>>(),
        "stderr_lines": stderr.lines().collect::<Vec<_>>(),
        "changed": r.status == TaskStatus::Changed
            || (r.status == TaskStatus::Failed && out.changed_anyway),
        "failed": r.status == TaskStatus::Failed,
        "skipped": r.status == TaskStatus::Skipped,
        "status": status_word(r.status),
        "msg": r.msg,
    });
    if let Value::Object(m) = &mut v {
        for (k, x) in &out.extra {
            m.insert(k.clone(), x.clone());
        }
    }
    v
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

/// How a list of tasks ended.
#[derive(Debug, Clone, PartialEq)]
enum Flow {
    /// Every task ran (or was skipped, or failed with `ignore_errors`).
    Done,
    /// A task failed: the message for the outcome.
    Failed(String),
    /// The job was cancelled.
    Cancelled(String),
}

/// What the task walk shares.
struct Walk<'a> {
    cfg: &'a RunnerConfig,
    events: &'a mpsc::Sender<JobEvent>,
    cancel: &'a CancellationToken,
    templates: &'a minijinja::Environment<'static>,
    playbook_dir: &'a Path,
    stats: Stats,
    /// Handler names (or `listen` topics) notified by a changed task.
    notified: Vec<String>,
}

async fn run_inner(
    cfg: &RunnerConfig,
    path: &Path,
    job_id: &str,
    job: &PlaybookJob,
    events: &mpsc::Sender<JobEvent>,
    cancel: &CancellationToken,
) -> JobOutcome {
    let stats = Stats::default();
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
    let mut walk = Walk {
        cfg,
        events,
        cancel,
        templates: &templates,
        playbook_dir: &playbook_dir,
        stats,
        notified: Vec::new(),
    };
    let mut flow = run_tasks(&mut walk, &pb.tasks, &mut ctx, &[]).await;
    // Handlers run once each, in the order they are defined, after the
    // play's tasks and only if the play did not fail (Ansible's default).
    if flow == Flow::Done {
        for h in &pb.handlers {
            let hit = walk
                .notified
                .iter()
                .any(|n| *n == h.name || h.listen.contains(n));
            if !hit {
                continue;
            }
            flow = run_task(&mut walk, h, &mut ctx, &[]).await;
            if flow != Flow::Done {
                break;
            }
        }
    }
    let stats = walk.stats;
    match flow {
        Flow::Done => outcome(job_id, JobStatus::Succeeded, stats, None),
        Flow::Failed(m) => outcome(job_id, JobStatus::Failed, stats, Some(m)),
        Flow::Cancelled(m) => outcome(job_id, JobStatus::Cancelled, stats, Some(m)),
    }
}

/// Runs tasks in order; `inherited` are the `when`s of enclosing blocks and
/// imports, evaluated for each task (as Ansible does).
fn run_tasks<'a>(
    walk: &'a mut Walk<'_>,
    tasks: &'a [Task],
    ctx: &'a mut Map<String, Value>,
    inherited: &'a [String],
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Flow> + Send + 'a>> {
    Box::pin(async move {
        for t in tasks {
            let f = run_task(walk, t, ctx, inherited).await;
            if f != Flow::Done {
                return f;
            }
        }
        Flow::Done
    })
}

/// A skipped task's result and registered value.
fn skipped_output(cond: &str) -> ModuleOutput {
    ModuleOutput {
        status: Some(TaskStatus::Skipped),
        msg: format!("skipped: `{cond}` is false"),
        ..Default::default()
    }
}

/// Evaluates `when`s; Some(cond) names the first false one.
fn first_false(
    templates: &minijinja::Environment<'static>,
    conds: &[String],
    ctx: &Map<String, Value>,
) -> Result<Option<String>, playbook::TemplateError> {
    for c in conds {
        if !playbook::eval_bool(templates, c, ctx)? {
            return Ok(Some(c.clone()));
        }
    }
    Ok(None)
}

fn run_task<'a>(
    walk: &'a mut Walk<'_>,
    task: &'a Task,
    ctx: &'a mut Map<String, Value>,
    inherited: &'a [String],
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Flow> + Send + 'a>> {
    Box::pin(async move {
        if walk.cancel.is_cancelled() {
            return Flow::Cancelled("cancelled".into());
        }
        let mut local = ctx.clone();
        for (k, v) in &task.vars {
            match playbook::render_value(walk.templates, v, &local) {
                Ok(r) => {
                    local.insert(k.clone(), r);
                }
                Err(e) => {
                    return report_fixed(
                        walk,
                        task,
                        ctx,
                        ModuleOutput::failed(format!("var `{k}`: {e}")),
                    )
                    .await
                }
            }
        }
        match &task.body {
            Body::Block {
                block,
                rescue,
                always,
            } => {
                let mut conds = inherited.to_vec();
                conds.extend(task.when.iter().cloned());
                // Block vars are visible to the block's tasks only.
                let mut inner = local.clone();
                let failed_before = walk.stats.failed;
                let mut flow = run_tasks(walk, block, &mut inner, &conds).await;
                if let Flow::Failed(msg) = &flow {
                    if !rescue.is_empty() {
                        // The failure is rescued: Ansible does not count it.
                        walk.stats.failed = walk.stats.failed.saturating_sub(1).max(failed_before);
                        inner.insert(
                            "ansible_failed_result".into(),
                            serde_json::json!({"msg": msg, "failed": true}),
                        );
                        flow = run_tasks(walk, rescue, &mut inner, &conds).await;
                    }
                }
                if !matches!(flow, Flow::Cancelled(_)) {
                    let f2 = run_tasks(walk, always, &mut inner, &conds).await;
                    if flow == Flow::Done {
                        flow = f2;
                    }
                }
                copy_back(ctx, &local, inner);
                flow
            }
            Body::Include {
                tasks,
                counted: false,
            } => {
                let mut conds = inherited.to_vec();
                conds.extend(task.when.iter().cloned());
                let mut inner = local.clone();
                let flow = run_tasks(walk, tasks, &mut inner, &conds).await;
                copy_back(ctx, &local, inner);
                flow
            }
            Body::Include {
                tasks,
                counted: true,
            } => {
                let mut conds = inherited.to_vec();
                conds.extend(task.when.iter().cloned());
                match first_false(walk.templates, &conds, &local) {
                    Err(e) => {
                        return report_fixed(
                            walk,
                            task,
                            ctx,
                            ModuleOutput::failed(format!("when: {e}")),
                        )
                        .await
                    }
                    Ok(Some(c)) => return report_fixed(walk, task, ctx, skipped_output(&c)).await,
                    Ok(None) => {}
                }
                let f = report_fixed(walk, task, ctx, ModuleOutput::ok("included")).await;
                if f != Flow::Done {
                    return f;
                }
                let mut inner = local.clone();
                let flow = run_tasks(walk, tasks, &mut inner, &[]).await;
                copy_back(ctx, &local, inner);
                flow
            }
            Body::Module { module, args } => {
                run_module_task(walk, task, module, args, ctx, local, inherited).await
            }
        }
    })
}

/// Facts and registered results set inside a block live on after it; the
/// block's own vars do not.
fn copy_back(ctx: &mut Map<String, Value>, before: &Map<String, Value>, after: Map<String, Value>) {
    for (k, v) in after {
        if before.get(&k) != Some(&v) {
            ctx.insert(k, v);
        }
    }
}

/// Sends `TaskStarted` + `TaskResult` for a task decided without running a
/// module (include, skip, a var that does not render) and counts it.
async fn report_fixed(
    walk: &mut Walk<'_>,
    task: &Task,
    ctx: &mut Map<String, Value>,
    out: ModuleOutput,
) -> Flow {
    let shown =
        playbook::render_str(walk.templates, &task.name, ctx).unwrap_or_else(|_| task.name.clone());
    let _ = walk
        .events
        .send(JobEvent::TaskStarted {
            index: task.index,
            name: shown,
        })
        .await;
    finish_task(walk, task, ctx, Instant::now(), out, None).await
}

/// Counts, registers, notifies and reports one task's final output.
async fn finish_task(
    walk: &mut Walk<'_>,
    task: &Task,
    ctx: &mut Map<String, Value>,
    start: Instant,
    out: ModuleOutput,
    registered_value: Option<Value>,
) -> Flow {
    let result = TaskResult {
        index: task.index,
        name: task.name.clone(),
        module: task.kind().to_string(),
        status: out.status(),
        duration_ms: start.elapsed().as_millis() as u64,
        rc: out.rc,
        msg: out.msg.clone(),
        stdout_tail: modules::tail(&out.stdout),
        stderr_tail: modules::tail(&out.stderr),
    };
    if let Some(r) = &task.register {
        let v = registered_value.unwrap_or_else(|| registered(&result, &out));
        ctx.insert(r.clone(), v);
    }
    let cancelled = out.stopped && walk.cancel.is_cancelled();
    let stats = &mut walk.stats;
    match result.status {
        _ if cancelled => {}
        TaskStatus::Ok => stats.ok += 1,
        TaskStatus::Changed => {
            stats.ok += 1;
            stats.changed += 1;
        }
        TaskStatus::Skipped => stats.skipped += 1,
        TaskStatus::Failed if task.ignore_errors => {
            stats.ok += 1;
            if out.changed_anyway {
                stats.changed += 1;
            }
        }
        TaskStatus::Failed => stats.failed += 1,
    }
    if result.status == TaskStatus::Changed {
        for n in &task.notify {
            if !walk.notified.contains(n) {
                walk.notified.push(n.clone());
            }
        }
    }
    let failed = result.status == TaskStatus::Failed;
    let msg = result.msg.clone();
    let _ = walk.events.send(JobEvent::TaskResult(result)).await;
    if cancelled {
        return Flow::Cancelled(format!(
            "cancelled during task {} ({})",
            task.index + 1,
            task.name
        ));
    }
    if failed && !task.ignore_errors {
        return Flow::Failed(format!(
            "task {} ({}) failed: {msg}",
            task.index + 1,
            task.name
        ));
    }
    Flow::Done
}

/// A module task: once, or once per loop item, each with `when`, `until`
/// and the overrides.
async fn run_module_task(
    walk: &mut Walk<'_>,
    task: &Task,
    module: &str,
    args: &Value,
    ctx: &mut Map<String, Value>,
    mut local: Map<String, Value>,
    inherited: &[String],
) -> Flow {
    let start = Instant::now();
    // Names may use variables ("Restart {{ service }}"); show them
    // rendered, or as written if they can't be rendered yet.
    let shown = playbook::render_str(walk.templates, &task.name, &local)
        .unwrap_or_else(|_| task.name.clone());
    let _ = walk
        .events
        .send(JobEvent::TaskStarted {
            index: task.index,
            name: shown,
        })
        .await;
    let mut conds = inherited.to_vec();
    conds.extend(task.when.iter().cloned());
    let Some(items) = &task.loop_items else {
        let out = run_item(walk, task, module, args, &conds, &local).await;
        if out.status() != TaskStatus::Failed && out.status() != TaskStatus::Skipped {
            if let Some(facts) = set_facts(walk, module, args, &local) {
                for (k, v) in facts {
                    ctx.insert(k, v);
                }
            }
        }
        return finish_task(walk, task, ctx, start, out, None).await;
    };
    let items = match playbook::loop_items(walk.templates, items, task.flatten_items, &local) {
        Ok(i) => i,
        Err(e) => {
            return finish_task(
                walk,
                task,
                ctx,
                start,
                ModuleOutput::failed(format!("loop: {e}")),
                None,
            )
            .await
        }
    };
    let mut results = Vec::new();
    let (mut any_changed, mut any_failed, mut all_skipped) = (false, false, true);
    let mut last = ModuleOutput::ok("");
    for item in items {
        if walk.cancel.is_cancelled() {
            break;
        }
        local.insert(task.loop_var.clone(), item.clone());
        if let Some(l) = &task.loop_label {
            if let Ok(label) = playbook::render_str(walk.templates, l, &local) {
                log(walk.events, task.index, format!("item: {label}")).await;
            }
        }
        let out = run_item(walk, task, module, args, &conds, &local).await;
        if out.status() != TaskStatus::Failed && out.status() != TaskStatus::Skipped {
            if let Some(facts) = set_facts(walk, module, args, &local) {
                for (k, v) in facts {
                    ctx.insert(k.clone(), v.clone());
                    local.insert(k, v);
                }
            }
        }
        let r = TaskResult {
            index: task.index,
            name: task.name.clone(),
            module: module.to_string(),
            status: out.status(),
            duration_ms: 0,
            rc: out.rc,
            msg: out.msg.clone(),
            stdout_tail: String::new(),
            stderr_tail: String::new(),
        };
        let mut v = registered(&r, &out);
        if let Value::Object(m) = &mut v {
            m.insert("item".into(), item.clone());
            if task.loop_var != "item" {
                m.insert(task.loop_var.clone(), item);
            }
        }
        results.push(v);
        match out.status() {
            TaskStatus::Changed => any_changed = true,
            TaskStatus::Failed => {
                any_failed = true;
                any_changed |= out.changed_anyway;
            }
            _ => {}
        }
        if out.status() != TaskStatus::Skipped {
            all_skipped = false;
        }
        let stopped = out.stopped;
        last = out;
        if stopped {
            break;
        }
    }
    let status = if last.stopped || any_failed {
        TaskStatus::Failed
    } else if all_skipped && !results.is_empty() {
        TaskStatus::Skipped
    } else if any_changed {
        TaskStatus::Changed
    } else {
        TaskStatus::Ok
    };
    let msg = match status {
        TaskStatus::Failed if last.stopped => last.msg.clone(),
        TaskStatus::Failed => "One or more items failed".to_string(),
        TaskStatus::Skipped => "All items skipped".to_string(),
        _ => "All items completed".to_string(),
    };
    let out = ModuleOutput {
        status: Some(status),
        msg: msg.clone(),
        stopped: last.stopped,
        changed_anyway: any_changed,
        ..Default::default()
    };
    let registered_value = serde_json::json!({
        "results": results,
        "changed": any_changed,
        "failed": status == TaskStatus::Failed,
        "skipped": status == TaskStatus::Skipped,
        "status": status_word(status),
        "msg": msg,
        "rc": null, "stdout": "", "stderr": "", "stdout_lines": [], "stderr_lines": [],
    });
    finish_task(walk, task, ctx, start, out, Some(registered_value)).await
}

/// The facts a successful `set_fact` sets.
fn set_facts(
    walk: &Walk<'_>,
    module: &str,
    args: &Value,
    local: &Map<String, Value>,
) -> Option<Vec<(String, Value)>> {
    if module != "set_fact" {
        return None;
    }
    let rendered = playbook::render_value(walk.templates, args, local).ok()?;
    match ModuleArgs::parse(module, &rendered) {
        Ok(ModuleArgs::SetFact(f)) => Some(f),
        _ => None,
    }
}

fn status_word(s: TaskStatus) -> &'static str {
    match s {
        TaskStatus::Ok => "ok",
        TaskStatus::Changed => "changed",
        TaskStatus::Failed => "failed",
        TaskStatus::Skipped => "skipped",
    }
}

/// One execution of a module task (one loop item): `when`, arguments,
/// timeout, `until` attempts and the `changed_when`/`failed_when` overrides.
async fn run_item(
    walk: &Walk<'_>,
    task: &Task,
    module: &str,
    args: &Value,
    conds: &[String],
    ctx: &Map<String, Value>,
) -> ModuleOutput {
    match first_false(walk.templates, conds, ctx) {
        Err(e) => return ModuleOutput::failed(format!("when: {e}")),
        Ok(Some(c)) => return skipped_output(&c),
        Ok(None) => {}
    }
    let (cfg, templates, events, cancel) = (walk.cfg, walk.templates, walk.events, walk.cancel);
    let playbook_dir = walk.playbook_dir;
    let args = match playbook::render_value(templates, args, ctx) {
        Ok(v) => match ModuleArgs::parse(module, &v) {
            Ok(a) => a,
            Err(e) => return ModuleOutput::failed(e.to_string()),
        },
        Err(e) => return ModuleOutput::failed(e.to_string()),
    };
    let timeout = match &task.timeout {
        None => cfg.default_task_timeout,
        Some(t) => match playbook::render_str(templates, t, ctx) {
            Ok(s) => match playbook::parse_duration(&s) {
                Ok(d) => d,
                Err(e) => return ModuleOutput::failed(format!("timeout: {e}")),
            },
            Err(e) => return ModuleOutput::failed(format!("timeout: {e}")),
        },
    };
    // Without `until` a task runs once; with it, up to `retries` + 1
    // attempts, `delay` apart (Ansible 2.14; it then reports `attempts` as
    // `retries`).
    let attempts = if task.until.is_some() {
        task.retries + 1
    } else {
        1
    };
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
            return out;
        }
        if task.until.is_some() {
            out.extra.insert("attempts".into(), Value::from(attempt));
        }
        if let Err(e) = apply_overrides(task, module, templates, ctx, &mut out) {
            out.status = Some(TaskStatus::Failed);
            out.msg = e.to_string();
        }
        let Some(until) = &task.until else {
            return out;
        };
        if out.stopped {
            return out;
        }
        let mut local = ctx.clone();
        if let Some(r) = &task.register {
            local.insert(r.clone(), registered(&as_result(task, module, &out), &out));
        }
        match playbook::eval_bool(templates, until, &local) {
            Ok(true) => return out,
            Ok(false) => {}
            Err(e) => {
                out.status = Some(TaskStatus::Failed);
                out.msg = format!("until: {e}");
                return out;
            }
        }
        if attempt >= attempts {
            out.status = Some(TaskStatus::Failed);
            out.extra
                .insert("attempts".into(), Value::from(task.retries));
            if out.msg.is_empty() || out.msg.starts_with("rc=") {
                out.msg = format!("`until: {until}` still false after {attempts} attempts");
            }
            return out;
        }
        log(
            events,
            task.index,
            format!(
                "FAILED - RETRYING: attempt {attempt}/{attempts} ({} retries left); next in {}",
                attempts - attempt,
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
                return o;
            }
        }
    }
}

fn as_result(task: &Task, module: &str, out: &ModuleOutput) -> TaskResult {
    TaskResult {
        index: task.index,
        name: task.name.clone(),
        module: module.to_string(),
        status: out.status(),
        duration_ms: 0,
        rc: out.rc,
        msg: out.msg.clone(),
        stdout_tail: String::new(),
        stderr_tail: String::new(),
    }
}

/// A `changed_when` / `failed_when` that could not be evaluated; the task
/// fails with this message.
#[derive(Debug, thiserror::Error)]
#[error("{keyword}: {source}")]
struct ConditionError {
    /// Which keyword's expression failed.
    keyword: &'static str,
    /// Why it failed.
    source: playbook::TemplateError,
}

/// `changed_when` / `failed_when`, evaluated with the task's own result
/// bound to its `register` name.
fn apply_overrides(
    task: &Task,
    module: &str,
    templates: &minijinja::Environment<'static>,
    ctx: &Map<String, Value>,
    out: &mut ModuleOutput,
) -> Result<(), ConditionError> {
    if task.changed_when.is_none() && task.failed_when.is_none() {
        return Ok(());
    }
    if out.stopped {
        return Ok(());
    }
    let mut local = ctx.clone();
    if let Some(r) = &task.register {
        local.insert(r.clone(), registered(&as_result(task, module, out), out));
    }
    if let Some(f) = &task.failed_when {
        let failed =
            playbook::eval_bool(templates, f, &local).map_err(|source| ConditionError {
                keyword: "failed_when",
                source,
            })?;
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
            let changed =
                playbook::eval_bool(templates, c, &local).map_err(|source| ConditionError {
                    keyword: "changed_when",
                    source,
                })?;
            out.status = Some(if changed {
                TaskStatus::Changed
            } else {
                TaskStatus::Ok
            });
        }
    }
    Ok(())
}
