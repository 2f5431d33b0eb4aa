//! Job events as the API shows them: one JSON object per line with a `type`.
//! API boundary: the CLI's live views read these shapes.

use serde_json::{json, Value};
use vesemir_protocol::job::{JobEvent, LogStream, TaskStatus};

/// Lowercase name of a task status.
pub fn task_status(s: TaskStatus) -> &'static str {
    match s {
        TaskStatus::Ok => "ok",
        TaskStatus::Changed => "changed",
        TaskStatus::Failed => "failed",
        TaskStatus::Skipped => "skipped",
    }
}

/// Lowercase name of a log stream.
pub fn log_stream(s: LogStream) -> &'static str {
    match s {
        LogStream::Stdout => "stdout",
        LogStream::Stderr => "stderr",
        LogStream::Runner => "runner",
    }
}

/// One event as JSON.
pub fn event_json(ev: &JobEvent) -> Value {
    match ev {
        JobEvent::Started { job_id, replay } => {
            json!({"type": "started", "job_id": job_id, "replay": replay})
        }
        JobEvent::TaskStarted { index, name } => {
            json!({"type": "task_started", "index": index, "name": name})
        }
        JobEvent::Log {
            index,
            stream,
            line,
        } => json!({"type": "log", "index": index, "stream": log_stream(*stream), "line": line}),
        JobEvent::TaskResult(r) => json!({
            "type": "task_result", "index": r.index, "name": r.name, "module": r.module,
            "status": task_status(r.status), "duration_ms": r.duration_ms, "rc": r.rc,
            "msg": r.msg, "stdout_tail": r.stdout_tail, "stderr_tail": r.stderr_tail,
        }),
        JobEvent::Finished(o) => json!({
            "type": "finished", "job_id": o.job_id, "status": o.status.as_str(),
            "stats": {"ok": o.stats.ok, "changed": o.stats.changed, "failed": o.stats.failed, "skipped": o.stats.skipped},
            "error": o.error,
            // The replies themselves, as before protocol v3 (a JSON list).
            "output": o.output.as_ref().and_then(|out| match out {
                vesemir_protocol::job::JobOutput::Haproxy(r) => serde_json::to_value(r).ok(),
            }),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vesemir_api::{Event, StreamLine};
    use vesemir_protocol::job::{JobOutcome, JobStatus, Stats, TaskResult};

    /// What this module writes is what `vesemir-api`'s reader (the CLI)
    /// parses into a known variant, never `Event::Other`.
    #[test]
    fn every_event_parses_as_the_shared_type() {
        let events = [
            JobEvent::Started {
                job_id: "j".into(),
                replay: true,
            },
            JobEvent::TaskStarted {
                index: 1,
                name: "Restart".into(),
            },
            JobEvent::Log {
                index: 1,
                stream: LogStream::Stderr,
                line: "boom".into(),
            },
            JobEvent::TaskResult(TaskResult {
                index: 1,
                name: "Restart".into(),
                module: "command".into(),
                status: TaskStatus::Changed,
                duration_ms: 300,
                rc: None,
                msg: String::new(),
                stdout_tail: "ok".into(),
                stderr_tail: String::new(),
            }),
            JobEvent::Finished(JobOutcome {
                job_id: "j".into(),
                status: JobStatus::Failed,
                stats: Stats {
                    ok: 2,
                    changed: 1,
                    failed: 1,
                    skipped: 0,
                },
                error: Some("boom".into()),
                output: None,
            }),
        ];
        for ev in &events {
            let line = event_json(ev);
            let parsed: StreamLine = serde_json::from_value(line.clone()).unwrap();
            assert!(
                !matches!(parsed.event, Event::Other { .. }),
                "{line} is unknown to vesemir-api"
            );
        }
        let fin: StreamLine = serde_json::from_value(event_json(&events[4])).unwrap();
        let Event::Finished { stats, error, .. } = fin.event else {
            panic!("not finished");
        };
        assert_eq!((stats.ok, stats.failed), (2, 1));
        assert_eq!(error.as_deref(), Some("boom"));
    }
}
