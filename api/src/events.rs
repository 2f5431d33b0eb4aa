//! The lines of the controller's NDJSON streams, typed: a job's events
//! (`POST /v1/agents/{name}/run`, `GET …/jobs/{id}/events`) and a
//! deployment's log (`GET /v1/deployments/{id}/logs`).
//!
//! The controller still writes these lines as JSON objects with a `type`
//! (controller/src/events.rs, the orchestrator's log rows,
//! controller/src/http/deployments.rs); [`StreamLine`] is how a reader
//! (the CLI) takes them. A `type` this crate does not know, or a known one
//! whose fields do not fit, becomes [`Event::Other`] with its fields, so a
//! newer controller's new event never breaks an older reader.

use crate::views::JobStats;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

/// One line of a stream: the log-row envelope (`seq`, `ts`, `host`, set on
/// a deployment's log rows only) around the event itself.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamLine {
    /// Position in the deployment's log (resume with `after=seq`).
    pub seq: Option<u64>,
    /// When it was logged, RFC 3339.
    pub ts: Option<String>,
    /// The host it is about; none for deployment-wide events and job streams.
    pub host: Option<String>,
    /// The event.
    pub event: Event,
}

/// What happened, by the line's `type`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A line of a task's output.
    Log {
        /// Task index in the playbook.
        #[serde(default)]
        index: Option<u64>,
        /// `stdout`, `stderr` or `runner`.
        #[serde(default)]
        stream: String,
        /// The line.
        #[serde(default)]
        line: String,
    },
    /// A task began.
    TaskStarted {
        /// Task index in the playbook.
        #[serde(default)]
        index: Option<u64>,
        /// Task name.
        #[serde(default)]
        name: String,
    },
    /// A task ended.
    TaskResult {
        /// Task index in the playbook.
        #[serde(default)]
        index: Option<u64>,
        /// Task name.
        #[serde(default)]
        name: String,
        /// Module that ran.
        #[serde(default)]
        module: Option<String>,
        /// `ok`, `changed`, `failed`, `skipped`.
        #[serde(default)]
        status: String,
        /// How long it took.
        #[serde(default)]
        duration_ms: Option<u64>,
        /// Exit code of a command task.
        #[serde(default)]
        rc: Option<i64>,
        /// Its message.
        #[serde(default)]
        msg: Option<String>,
        /// The end of its stdout.
        #[serde(default)]
        stdout_tail: Option<String>,
        /// The end of its stderr.
        #[serde(default)]
        stderr_tail: Option<String>,
    },
    /// A host entered a step of its choreography (`draining`, `deploying`, …).
    Step {
        /// The step.
        #[serde(default)]
        step: String,
        /// The job it waits on (`resuming`, `awaiting_outcome`).
        #[serde(default)]
        job_id: Option<String>,
        /// Why (`reconnecting`).
        #[serde(default)]
        error: Option<String>,
    },
    /// An HAProxy action on one VM for a host.
    Haproxy {
        /// `drain`, `maint`, `ready`, …
        #[serde(default)]
        action: String,
        /// The VM (absent when the action could not start).
        #[serde(default)]
        haproxy_vm: Option<String>,
        /// Whether it worked (absent counts as ok).
        #[serde(default)]
        ok: Option<bool>,
        /// What HAProxy said, or why it failed.
        #[serde(default)]
        detail: Option<String>,
        /// How long it took.
        #[serde(default)]
        took_ms: Option<u64>,
    },
    /// A host is done.
    HostFinished {
        /// Its final status.
        #[serde(default)]
        status: String,
        /// Why it failed.
        #[serde(default)]
        error: Option<String>,
    },
    /// The deployment changed status.
    Deployment {
        /// `running`, `resumed`, `cancelling`, or a final status.
        #[serde(default)]
        status: String,
        /// Why it failed or was aborted.
        #[serde(default)]
        error: Option<String>,
        /// Hosts in the plan (on `running`).
        #[serde(default)]
        hosts: Option<u64>,
        /// The inventory query (on `running`).
        #[serde(default)]
        query: Option<String>,
    },
    /// A job started (or, `replay`, had already run: its record follows).
    Started {
        /// Job id.
        #[serde(default)]
        job_id: String,
        /// The agent reports a recorded result instead of running again.
        #[serde(default)]
        replay: bool,
    },
    /// A job ended: its outcome (as `GET /v1/agents/{name}/jobs/{id}`).
    Finished {
        /// Job id.
        #[serde(default)]
        job_id: String,
        /// `succeeded`, `failed`, `running`, `unknown`, …
        #[serde(default)]
        status: String,
        /// Task counts.
        #[serde(default)]
        stats: JobStats,
        /// Why it failed.
        #[serde(default)]
        error: Option<String>,
        /// The playbook's structured output: free-form JSON.
        #[serde(default)]
        output: Option<Value>,
    },
    /// The stream failed (the agent or the store); it ends here.
    Error {
        /// What went wrong.
        #[serde(default)]
        message: String,
    },
    /// Nothing new; sent every 10 s so readers can tell a dead stream.
    Keepalive,
    /// A followed deployment's log is complete.
    End {
        /// The deployment's final status.
        #[serde(default)]
        status: String,
    },
    /// A `type` this crate does not know (or whose fields do not fit): its
    /// name and its fields, without the envelope.
    #[serde(skip)]
    Other {
        /// The line's `type` ("" when it has none).
        kind: String,
        /// Its other fields.
        fields: Map<String, Value>,
    },
}

impl Event {
    /// The event of a line's fields (the envelope already taken out).
    pub fn from_fields(mut fields: Map<String, Value>) -> Event {
        let kind = fields
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if let Ok(ev) = serde_json::from_value::<Event>(Value::Object(fields.clone())) {
            return ev;
        }
        fields.remove("type");
        Event::Other { kind, fields }
    }
}

impl<'de> Deserialize<'de> for StreamLine {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut fields = Map::<String, Value>::deserialize(d)?;
        let seq = fields.remove("seq").and_then(|v| v.as_u64());
        let ts = fields
            .remove("ts")
            .and_then(|v| v.as_str().map(str::to_string));
        let host = fields
            .remove("host")
            .and_then(|v| v.as_str().map(str::to_string));
        Ok(StreamLine {
            seq,
            ts,
            host,
            event: Event::from_fields(fields),
        })
    }
}

impl StreamLine {
    /// A line without an envelope (job streams, or a reader's own notices).
    pub fn bare(event: Event) -> StreamLine {
        StreamLine {
            seq: None,
            ts: None,
            host: None,
            event,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(line: &str) -> StreamLine {
        serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"))
    }

    /// Lines as the controller writes them today (controller/src/events.rs,
    /// the orchestrator's log rows through `row_json`, the logs handler).
    #[test]
    fn emitted_shapes_parse_into_their_variant() {
        let cases: Vec<(&str, &str)> = vec![
            (
                r#"{"index":0,"line":"hi","stream":"stdout","type":"log"}"#,
                "log",
            ),
            (
                r#"{"index":1,"name":"Restart","type":"task_started"}"#,
                "task_started",
            ),
            (
                r#"{"duration_ms":12,"index":1,"module":"command","msg":"","name":"x","rc":0,"status":"changed","stderr_tail":"","stdout_tail":"ok","type":"task_result"}"#,
                "task_result",
            ),
            (
                r#"{"duration_ms":12,"index":1,"module":"debug","msg":null,"name":"x","rc":null,"status":"ok","stderr_tail":null,"stdout_tail":null,"type":"task_result"}"#,
                "task_result",
            ),
            (
                r#"{"error":null,"job_id":"j","output":null,"stats":{"changed":1,"failed":0,"ok":2,"skipped":0},"status":"succeeded","type":"finished"}"#,
                "finished",
            ),
            (
                r#"{"job_id":"j","replay":true,"type":"started"}"#,
                "started",
            ),
            (r#"{"message":"agent gone","type":"error"}"#, "error"),
            (r#"{"type":"keepalive"}"#, "keepalive"),
            (r#"{"type":"end","status":"succeeded"}"#, "end"),
            (
                r#"{"host":"web-1","seq":4,"step":"draining","ts":"t","type":"step"}"#,
                "step",
            ),
            (
                r#"{"error":"conn reset","host":"web-1","seq":5,"step":"reconnecting","ts":"t","type":"step"}"#,
                "step",
            ),
            (
                r#"{"action":"drain","detail":"scur 0","haproxy_vm":"lb-1","host":"web-1","ok":true,"seq":6,"took_ms":3,"ts":"t","type":"haproxy"}"#,
                "haproxy",
            ),
            (
                r#"{"action":"drain","detail":"no agent","host":"web-1","ok":false,"seq":6,"ts":"t","type":"haproxy"}"#,
                "haproxy",
            ),
            (
                r#"{"error":null,"host":"web-1","seq":7,"status":"succeeded","ts":"t","type":"host_finished"}"#,
                "host_finished",
            ),
            (
                r#"{"host":null,"hosts":3,"query":"tags:app","seq":1,"status":"running","ts":"t","type":"deployment"}"#,
                "deployment",
            ),
            (
                r#"{"error":"1 of 3 failed","host":null,"seq":9,"status":"failed","ts":"t","type":"deployment"}"#,
                "deployment",
            ),
        ];
        for (line, kind) in cases {
            let l = parse(line);
            let got = match &l.event {
                Event::Log { .. } => "log",
                Event::TaskStarted { .. } => "task_started",
                Event::TaskResult { .. } => "task_result",
                Event::Step { .. } => "step",
                Event::Haproxy { .. } => "haproxy",
                Event::HostFinished { .. } => "host_finished",
                Event::Deployment { .. } => "deployment",
                Event::Started { .. } => "started",
                Event::Finished { .. } => "finished",
                Event::Error { .. } => "error",
                Event::Keepalive => "keepalive",
                Event::End { .. } => "end",
                Event::Other { kind, .. } => panic!("{line} parsed as unknown {kind:?}"),
            };
            assert_eq!(got, kind, "{line}");
        }
    }

    #[test]
    fn the_envelope_is_taken_out() {
        let l = parse(r#"{"host":"web-1","seq":4,"step":"draining","ts":"t","type":"step"}"#);
        assert_eq!(l.seq, Some(4));
        assert_eq!(l.ts.as_deref(), Some("t"));
        assert_eq!(l.host.as_deref(), Some("web-1"));
        assert_eq!(
            l.event,
            Event::Step {
                step: "draining".into(),
                job_id: None,
                error: None
            }
        );
        let fin = parse(
            r#"{"job_id":"j","stats":{"changed":1,"failed":0,"ok":2,"skipped":3},"status":"failed","error":"boom","type":"finished"}"#,
        );
        let Event::Finished { stats, error, .. } = fin.event else {
            panic!("not finished");
        };
        assert_eq!((stats.ok, stats.changed, stats.skipped), (2, 1, 3));
        assert_eq!(error.as_deref(), Some("boom"));
    }

    #[test]
    fn unknown_or_misshapen_events_keep_their_fields() {
        let l = parse(r#"{"seq":9,"ts":"t","host":"web-1","type":"canary","x":1}"#);
        assert_eq!(l.host.as_deref(), Some("web-1"));
        let mut fields = Map::new();
        fields.insert("x".into(), json!(1));
        assert_eq!(
            l.event,
            Event::Other {
                kind: "canary".into(),
                fields: fields.clone()
            }
        );
        // A known type whose fields do not fit is shown, not dropped.
        let l = parse(r#"{"type":"step","step":{"nested":true}}"#);
        assert!(
            matches!(&l.event, Event::Other { kind, .. } if kind == "step"),
            "{l:?}"
        );
        let l = parse(r#"{"x":1}"#);
        assert_eq!(
            l.event,
            Event::Other {
                kind: String::new(),
                fields
            }
        );
    }
}
