//! Deployment JSON (docs/API.md) → text: log event lines, tables, the dry
//! run plan. Pure functions returning strings or rows, so the exact output
//! that scripts and tests grep for is tested here.

use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

fn n(v: &Value) -> String {
    v.as_u64()
        .map(|n| n.to_string())
        .unwrap_or_else(|| "-".into())
}

/// `1234` ms → "1.2s", `125000` → "2m 5s".
pub fn duration(ms: &Value) -> String {
    let Some(ms) = ms.as_u64() else {
        return "-".into();
    };
    if ms < 60_000 {
        return format!("{:.1}s", ms as f64 / 1000.0);
    }
    humantime::format_duration(std::time::Duration::from_secs(ms / 1000)).to_string()
}

/// "3m ago" from an RFC 3339 time, relative to `now`.
pub fn since(ts: &Value, now: OffsetDateTime) -> String {
    ts.as_str()
        .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
        .map(|t| crate::agents::ago((now - t).whole_seconds().max(0)))
        .unwrap_or_else(|| "-".into())
}

/// Whether a deployment status is final.
pub fn is_final(status: &str) -> bool {
    matches!(status, "succeeded" | "failed" | "aborted" | "cancelled")
}

/// Whether a host status is final.
pub fn host_done(status: &str) -> bool {
    !matches!(status, "pending" | "running" | "")
}

/// One line of a deployment's log stream, as shown to people, or `None`
/// for events that are not shown (keepalive, end).
pub fn event_line(ev: &Value) -> Option<String> {
    let host = ev["host"].as_str().unwrap_or("");
    let field = |k: &str| ev[k].as_str().unwrap_or("").to_string();
    let line = match ev["type"].as_str().unwrap_or("") {
        "log" => {
            let mark = if ev["stream"] == "stderr" { "!" } else { "|" };
            format!("  {mark} {}", field("line"))
        }
        "task_started" => format!("TASK [{}]", field("name")),
        "task_result" => {
            let msg = field("msg");
            let msg = if msg.is_empty() {
                msg
            } else {
                format!(": {msg}")
            };
            format!(
                "  {} ({}){msg}",
                field("status"),
                duration(&ev["duration_ms"])
            )
        }
        "step" => format!("step {}", field("step")),
        "host_finished" => match ev["error"].as_str() {
            Some(e) if !e.is_empty() => format!("{}: {e}", field("status")),
            _ => field("status"),
        },
        "haproxy" => {
            let ok = if ev["ok"] == false { "FAILED" } else { "ok" };
            let detail = field("detail");
            let detail = if detail.is_empty() {
                detail
            } else {
                format!(" ({detail})")
            };
            format!(
                "haproxy {} on {}: {ok}{detail}",
                field("action"),
                field("haproxy_vm")
            )
        }
        "deployment" => {
            let err = ev["error"]
                .as_str()
                .map(|e| format!(": {e}"))
                .unwrap_or_default();
            return Some(format!("deployment {}{err}", field("status")));
        }
        "started" if ev["replay"] == true => {
            format!(
                "job {} already ran: reporting its recorded result",
                field("job_id")
            )
        }
        "started" => format!("job {} started", field("job_id")),
        "error" => format!("error: {}", field("message")),
        "keepalive" | "end" => return None,
        other => {
            // A kind this CLI does not know yet: show its fields, not the envelope.
            let mut rest = ev.as_object().cloned().unwrap_or_default();
            for k in ["seq", "ts", "host", "type"] {
                rest.remove(k);
            }
            format!("{other} {}", Value::Object(rest))
        }
    };
    Some(if host.is_empty() {
        line
    } else {
        format!("[{host}] {line}")
    })
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    t.set_header(header.to_vec());
    t
}

/// The rows of the per-host summary.
pub fn host_rows(d: &Value) -> Vec<Vec<String>> {
    d["hosts"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|h| {
            let st = &h["stats"];
            vec![
                s(&h["name"]).to_string(),
                s(&h["status"]).to_string(),
                n(&st["ok"]),
                n(&st["changed"]),
                n(&st["failed"]),
                n(&st["unreachable"]),
                n(&st["skipped"]),
                duration(&h["duration_ms"]),
                h["error"].as_str().unwrap_or("").to_string(),
            ]
        })
        .collect()
}

/// The per-host summary table.
pub fn host_table(d: &Value) -> Table {
    let mut t = table(&[
        "HOST",
        "STATUS",
        "OK",
        "CHANGED",
        "FAILED",
        "UNREACHABLE",
        "SKIPPED",
        "DURATION",
        "ERROR",
    ]);
    for r in host_rows(d) {
        t.add_row(r);
    }
    t
}

/// The last line of a followed deployment; scripts grep for it.
pub fn status_line(d: &Value) -> String {
    format!("deployment {} {}", s(&d["id"]), s(&d["status"]))
}

/// What ends a followed deployment's output: hosts, error, status line.
pub fn final_report(d: &Value) -> String {
    let mut out = format!("{}\n", host_table(d));
    if let Some(e) = d["error"].as_str().filter(|e| !e.is_empty()) {
        out.push_str(&format!("error: {e}\n"));
    }
    out.push_str(&status_line(d));
    out
}

/// The rows of `deployments list`.
pub fn list_rows(list: &Value, now: OffsetDateTime) -> Vec<Vec<String>> {
    list["deployments"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|d| {
            let dur = if d["duration_ms"].is_u64() {
                duration(&d["duration_ms"])
            } else if is_final(s(&d["status"])) {
                "-".into()
            } else {
                "…".into()
            };
            vec![
                s(&d["id"]).to_string(),
                s(&d["application"]).to_string(),
                s(&d["environment"]).to_string(),
                s(&d["status"]).to_string(),
                s(&d["changeset"]["version"]).to_string(),
                n(&d["hosts_total"]),
                since(
                    if d["started_at"].is_string() {
                        &d["started_at"]
                    } else {
                        &d["created_at"]
                    },
                    now,
                ),
                dur,
                s(&d["requested_by"]).to_string(),
            ]
        })
        .collect()
}

/// The `deployments list` table.
pub fn list_table(list: &Value, now: OffsetDateTime) -> Table {
    let mut t = table(&[
        "ID",
        "APP",
        "ENV",
        "STATUS",
        "VERSION",
        "HOSTS",
        "STARTED",
        "DURATION",
        "REQUESTED BY",
    ]);
    for r in list_rows(list, now) {
        t.add_row(r);
    }
    t
}

/// `deployments show`: details, hosts, HAProxy actions.
pub fn show(d: &Value, now: OffsetDateTime) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    let when = |k: &str| match d[k].as_str() {
        Some(ts) => format!("{ts} ({})", since(&d[k], now)),
        None => "-".into(),
    };
    let sum = &d["summary"];
    let summary = [
        "pending",
        "running",
        "succeeded",
        "failed",
        "unreachable",
        "skipped",
    ]
    .iter()
    .filter_map(|k| {
        sum[*k]
            .as_u64()
            .filter(|n| *n > 0)
            .map(|n| format!("{k} {n}"))
    })
    .collect::<Vec<_>>()
    .join(", ");
    let rows: Vec<(&str, String)> = vec![
        ("id", s(&d["id"]).into()),
        ("status", s(&d["status"]).into()),
        ("application", s(&d["application"]).into()),
        ("environment", s(&d["environment"]).into()),
        ("team", s(&d["team"]).into()),
        ("requested by", s(&d["requested_by"]).into()),
        (
            "changeset",
            format!(
                "{} {}",
                s(&d["changeset"]["version"]),
                d["changeset"]["url"].as_str().unwrap_or("")
            ),
        ),
        ("playbook", s(&d["playbook"]).into()),
        ("hosts", format!("{} ({summary})", n(&d["hosts_total"]))),
        (
            "pace",
            format!(
                "concurrency {}, max unavailable {}, max fail {}%",
                match &d["concurrency"] {
                    Value::String(c) => c.clone(),
                    c => n(c),
                },
                match &d["max_unavailable"] {
                    Value::Null => "= concurrency".to_string(),
                    m => n(m),
                },
                n(&d["max_fail_percentage"])
            ),
        ),
        ("query", s(&d["query"]).into()),
        ("haproxy query", s(&d["haproxy_query"]).into()),
        ("created", when("created_at")),
        ("started", when("started_at")),
        ("finished", when("finished_at")),
        ("duration", duration(&d["duration_ms"])),
        ("error", d["error"].as_str().unwrap_or("").into()),
    ];
    for (k, v) in rows {
        t.add_row(vec![k.to_string(), v]);
    }
    let mut out = format!("{t}\n");

    let mut h = table(&[
        "HOST",
        "ADDRESS",
        "SERVER",
        "STATUS",
        "STEP",
        "OK",
        "CHANGED",
        "FAILED",
        "UNREACHABLE",
        "SKIPPED",
        "DURATION",
        "ERROR",
    ]);
    for host in d["hosts"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let st = &host["stats"];
        h.add_row(vec![
            s(&host["name"]).to_string(),
            s(&host["address"]).to_string(),
            s(&host["server_name"]).to_string(),
            s(&host["status"]).to_string(),
            host["step"].as_str().unwrap_or("").to_string(),
            n(&st["ok"]),
            n(&st["changed"]),
            n(&st["failed"]),
            n(&st["unreachable"]),
            n(&st["skipped"]),
            duration(&host["duration_ms"]),
            host["error"].as_str().unwrap_or("").to_string(),
        ]);
    }
    out.push_str(&format!("{h}\n"));

    let actions = d["haproxy_actions"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if actions.is_empty() {
        out.push_str("no HAProxy actions\n");
    } else {
        let mut a = table(&[
            "AT",
            "HOST",
            "HAPROXY VM",
            "BACKEND",
            "SERVER",
            "ACTION",
            "OK",
            "DETAIL",
        ]);
        for x in actions {
            a.add_row(vec![
                s(&x["at"]).to_string(),
                s(&x["host"]).to_string(),
                s(&x["haproxy_vm"]).to_string(),
                s(&x["backend"]).to_string(),
                s(&x["server"]).to_string(),
                s(&x["action"]).to_string(),
                if x["ok"] == false {
                    "FAILED".into()
                } else {
                    "ok".into()
                },
                x["detail"].as_str().unwrap_or("").to_string(),
            ]);
        }
        out.push_str(&format!("{a}\n"));
    }
    out
}

/// The dry run's plan, readably; the caller exits 1 when `problems` is not empty.
pub fn plan(p: &Value) -> String {
    let hosts = p["hosts"].as_array().map(Vec::as_slice).unwrap_or_default();
    let mut out = format!(
        "dry run: {} host(s), concurrency {}, max unavailable {}\nquery: {}\n",
        hosts.len(),
        match &p["concurrency"] {
            Value::String(c) => c.clone(),
            c => n(c),
        },
        n(&p["max_unavailable"]),
        s(&p["query"]),
    );
    let mut t = table(&["HOST", "ADDRESS", "SERVER NAME", "AGENT"]);
    for h in hosts {
        t.add_row(vec![
            s(&h["name"]).to_string(),
            s(&h["address"]).to_string(),
            s(&h["server_name"]).to_string(),
            s(&h["agent"]).to_string(),
        ]);
    }
    out.push_str(&format!("{t}\n"));
    out.push_str("batches:\n");
    if p["batches"].as_array().is_none_or(Vec::is_empty) {
        out.push_str("  (none)\n");
    }
    for (i, b) in p["batches"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let names: Vec<&str> = b
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(s)
            .collect();
        out.push_str(&format!("  {}: {}\n", i + 1, names.join(", ")));
    }
    // The playbook across the hosts: who lacks it, who has another version.
    let pb = &p["playbook"];
    if pb.is_object() {
        let list = |k: &str| -> Vec<String> {
            pb[k]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|x| match x {
                    Value::Object(_) => format!(
                        "{} ({})",
                        s(&x["host"]),
                        s(&x["sha256"]).chars().take(12).collect::<String>()
                    ),
                    other => s(other).to_string(),
                })
                .collect()
        };
        out.push_str(&format!(
            "playbook {}: sha256 {}\n",
            s(&pb["name"]),
            pb["sha256"]
                .as_str()
                .map(|h| &h[..h.len().min(12)])
                .unwrap_or("(on no host)")
        ));
        for (k, what) in [
            ("missing", "missing on"),
            ("drift", "differs on"),
            ("unknown", "not reported by"),
        ] {
            let l = list(k);
            if !l.is_empty() {
                out.push_str(&format!("  {what}: {}\n", l.join(", ")));
            }
        }
    }
    let hp = &p["haproxy"];
    if hp.is_object() {
        out.push_str(&format!(
            "haproxy backend {} (query: {}):\n",
            s(&hp["backend"]),
            s(&p["haproxy_query"])
        ));
        let mut v = table(&["HAPROXY VM", "AGENT", "SERVERS"]);
        for vm in hp["vms"].as_array().map(Vec::as_slice).unwrap_or_default() {
            let servers: Vec<&str> = vm["servers"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(s)
                .collect();
            v.add_row(vec![
                s(&vm["name"]).to_string(),
                s(&vm["agent"]).to_string(),
                servers.join(", "),
            ]);
        }
        out.push_str(&format!("{v}\n"));
    } else {
        out.push_str("no HAProxy step (no --haproxy-backend)\n");
    }
    let problems = p["problems"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if problems.is_empty() {
        out.push_str("no problems found");
    } else {
        out.push_str(&format!("{} problem(s):\n", problems.len()));
        let lines: Vec<String> = problems
            .iter()
            .map(|x| {
                format!(
                    "  - {}",
                    x.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| x.to_string())
                )
            })
            .collect();
        out.push_str(&lines.join("\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use time::macros::datetime;

    fn check_event(ev: Value, expected: Option<&str>) {
        assert_eq!(event_line(&ev).as_deref(), expected, "event {ev}");
    }

    #[test]
    fn log_events_are_prefixed_by_host() {
        check_event(
            json!({"seq":1,"host":"web-1","type":"task_started","name":"Restart"}),
            Some("[web-1] TASK [Restart]"),
        );
        check_event(
            json!({"host":"web-1","type":"log","stream":"stdout","line":"hi"}),
            Some("[web-1]   | hi"),
        );
        check_event(
            json!({"host":"web-1","type":"log","stream":"stderr","line":"oops"}),
            Some("[web-1]   ! oops"),
        );
        check_event(
            json!({"host":"web-1","type":"task_result","name":"x","status":"changed","duration_ms":1234,"msg":"done"}),
            Some("[web-1]   changed (1.2s): done"),
        );
        check_event(
            json!({"host":"web-2","type":"step","step":"draining"}),
            Some("[web-2] step draining"),
        );
        check_event(
            json!({"host":"web-2","type":"host_finished","status":"succeeded","error":null}),
            Some("[web-2] succeeded"),
        );
        check_event(
            json!({"host":"web-2","type":"host_finished","status":"failed","error":"health check failed"}),
            Some("[web-2] failed: health check failed"),
        );
        check_event(
            json!({"host":"web-2","type":"haproxy","action":"drain","haproxy_vm":"lb-1","ok":true,"detail":"scur 0"}),
            Some("[web-2] haproxy drain on lb-1: ok (scur 0)"),
        );
        check_event(
            json!({"type":"deployment","status":"running"}),
            Some("deployment running"),
        );
        check_event(
            json!({"type":"deployment","status":"aborted","error":"2 of 5 failed"}),
            Some("deployment aborted: 2 of 5 failed"),
        );
        check_event(
            json!({"seq":3,"ts":"t","host":"web-1","type":"started","job_id":"d.web-1","replay":false}),
            Some("[web-1] job d.web-1 started"),
        );
        check_event(
            json!({"host":"web-1","type":"started","job_id":"d.web-1","replay":true}),
            Some("[web-1] job d.web-1 already ran: reporting its recorded result"),
        );
        check_event(
            json!({"host":null,"type":"error","message":"store down"}),
            Some("error: store down"),
        );
        check_event(
            json!({"seq":9,"ts":"t","host":"web-1","type":"novel","x":1}),
            Some("[web-1] novel {\"x\":1}"),
        );
        check_event(json!({"type":"keepalive"}), None);
        check_event(json!({"type":"end","status":"succeeded"}), None);
    }

    fn sample() -> Value {
        json!({
            "id": "d-1", "application": "payments", "environment": "production", "status": "failed",
            "requested_by": "admin", "created_at": "2026-01-01T10:00:00Z", "started_at": "2026-01-01T10:00:01Z",
            "duration_ms": 125000, "hosts_total": 2, "changeset": {"version": "2.4.1"},
            "error": "1 host failed",
            "hosts": [
                {"name":"web-1","status":"succeeded","stats":{"ok":5,"changed":3,"failed":0,"unreachable":0,"skipped":1},"duration_ms":4200,"error":null},
                {"name":"web-2","status":"failed","stats":{"ok":2,"changed":1,"failed":1,"unreachable":0,"skipped":0},"duration_ms":900,"error":"health check failed"}
            ],
            "haproxy_actions": [{"at":"t","host":"web-2","haproxy_vm":"lb-1","backend":"payments","server":"web-2","action":"maint","ok":true,"detail":""}]
        })
    }

    #[test]
    fn summary_rows_and_final_line() {
        assert_eq!(
            host_rows(&sample()),
            vec![
                vec!["web-1", "succeeded", "5", "3", "0", "0", "1", "4.2s", ""],
                vec![
                    "web-2",
                    "failed",
                    "2",
                    "1",
                    "1",
                    "0",
                    "0",
                    "0.9s",
                    "health check failed"
                ],
            ]
        );
        let report = final_report(&sample());
        assert!(
            report.ends_with("error: 1 host failed\ndeployment d-1 failed"),
            "{report}"
        );
        assert!(report.contains("web-2") && report.contains("health check failed"));
    }

    #[test]
    fn list_rows_read_naturally() {
        let now = datetime!(2026-01-01 10:05:01 UTC);
        let list = json!({"deployments": [
            sample(),
            {"id":"d-2","application":"payments","environment":"production","status":"running",
             "created_at":"2026-01-01T10:05:00Z","hosts_total":5,"changeset":{"version":"2.4.2"},"requested_by":"ci"}
        ], "total": 2});
        assert_eq!(
            list_rows(&list, now),
            vec![
                vec![
                    "d-1",
                    "payments",
                    "production",
                    "failed",
                    "2.4.1",
                    "2",
                    "5m ago",
                    "2m 5s",
                    "admin"
                ],
                vec![
                    "d-2",
                    "payments",
                    "production",
                    "running",
                    "2.4.2",
                    "5",
                    "1s ago",
                    "…",
                    "ci"
                ],
            ]
        );
    }

    #[test]
    fn show_has_hosts_and_haproxy_actions() {
        let out = show(&sample(), datetime!(2026-01-01 10:05:01 UTC));
        for needle in [
            "d-1",
            "payments",
            "health check failed",
            "lb-1",
            "maint",
            "5m ago",
        ] {
            assert!(out.contains(needle), "{needle:?} missing from\n{out}");
        }
    }

    #[test]
    fn plan_lists_hosts_batches_haproxy_and_problems() {
        let p = json!({
            "dry_run": true, "query": "tags:app", "haproxy_query": "recipes:haproxy", "concurrency": "50%",
            "max_unavailable": 1,
            "hosts": [{"name":"web-1","address":"10.0.0.1","server_name":"web-1","agent":"connected"},
                      {"name":"web-2","address":"10.0.0.2","server_name":"web-2","agent":"none"}],
            "batches": [["web-1"],["web-2"]],
            "haproxy": {"backend":"payments","vms":[{"name":"lb-1","agent":"connected","servers":["web-1","web-2"]}]},
            "problems": ["web-2: no agent"]
        });
        let out = plan(&p);
        for needle in [
            "2 host(s), concurrency 50%",
            "  1: web-1\n  2: web-2",
            "haproxy backend payments",
            "lb-1",
            "web-1, web-2",
            "1 problem(s):\n  - web-2: no agent",
        ] {
            assert!(out.contains(needle), "{needle:?} missing from\n{out}");
        }
        let mut ok = p.clone();
        ok["problems"] = json!([]);
        let mut drift = ok.clone();
        drift["playbook"] = json!({
            "name": "deploy.yml", "sha256": "ab".repeat(32),
            "missing": ["web-3"], "drift": [{"host": "web-2", "sha256": "cd".repeat(32)}],
            "unknown": []
        });
        let text = plan(&drift);
        assert!(
            text.contains("playbook deploy.yml: sha256 abababababab"),
            "{text}"
        );
        assert!(text.contains("missing on: web-3"), "{text}");
        assert!(text.contains("differs on: web-2 (cdcdcdcdcdcd)"), "{text}");
        assert!(plan(&ok).ends_with("no problems found"));
        let empty =
            json!({"hosts": [], "batches": [], "problems": ["no hosts match the selector"]});
        assert!(
            plan(&empty).contains("batches:\n  (none)\n"),
            "{}",
            plan(&empty)
        );
    }

    #[test]
    fn durations() {
        assert_eq!(duration(&json!(1234)), "1.2s");
        assert_eq!(duration(&json!(3_725_000)), "1h 2m 5s");
        assert_eq!(duration(&Value::Null), "-");
    }
}
