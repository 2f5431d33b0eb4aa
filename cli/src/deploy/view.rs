//! Deployment views (docs/API.md, the `vesemir-api` types) → text: log
//! event lines, tables, the dry run plan. Pure functions returning strings
//! or rows, so the exact output that scripts and tests grep for is tested
//! here.

use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use vesemir_api::{
    Concurrency, DeploymentList, DeploymentView, Event, HostView, PlanView, StreamLine,
};

fn s(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("-")
}

/// A count, "-" when it is not one (negative: never sent, but not hidden).
fn n(v: impl TryInto<u64>) -> String {
    v.try_into()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "-".into())
}

/// `1234` ms → "1.2s", `125000` → "2m 5s"; none (or negative) → "-".
pub fn duration(ms: Option<i64>) -> String {
    let Some(ms) = ms.and_then(|m| u64::try_from(m).ok()) else {
        return "-".into();
    };
    if ms < 60_000 {
        return format!("{:.1}s", ms as f64 / 1000.0);
    }
    humantime::format_duration(std::time::Duration::from_secs(ms / 1000)).to_string()
}

/// "3m ago" from an RFC 3339 time, relative to `now`.
pub fn since(ts: Option<&str>, now: OffsetDateTime) -> String {
    ts.and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
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

/// A request's concurrency as written ("2", "25%").
fn concurrency(c: &Concurrency) -> String {
    match c {
        Concurrency::Count(n) => self::n(*n),
        Concurrency::Percent(p) => p.clone(),
    }
}

/// One line of a deployment's log stream, as shown to people, or `None`
/// for events that are not shown (keepalive, end).
pub fn event_line(l: &StreamLine) -> Option<String> {
    let host = l.host.as_deref().unwrap_or("");
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    let line = match &l.event {
        Event::Log { stream, line, .. } => {
            let mark = if stream == "stderr" { "!" } else { "|" };
            format!("  {mark} {line}")
        }
        Event::TaskStarted { name, .. } => format!("TASK [{name}]"),
        Event::TaskResult {
            status,
            duration_ms,
            msg,
            ..
        } => {
            let msg = match msg.as_deref() {
                None | Some("") => String::new(),
                Some(m) => format!(": {m}"),
            };
            let ms = duration_ms.and_then(|d| i64::try_from(d).ok());
            format!("  {status} ({}){msg}", duration(ms))
        }
        Event::Step { step, .. } => format!("step {step}"),
        Event::HostFinished { status, error } => match error.as_deref() {
            Some(e) if !e.is_empty() => format!("{status}: {e}"),
            _ => status.clone(),
        },
        Event::Haproxy {
            action,
            haproxy_vm,
            ok,
            detail,
            ..
        } => {
            let ok = if *ok == Some(false) { "FAILED" } else { "ok" };
            let detail = match detail.as_deref() {
                None | Some("") => String::new(),
                Some(d) => format!(" ({d})"),
            };
            format!("haproxy {action} on {}: {ok}{detail}", opt(haproxy_vm))
        }
        Event::Deployment { status, error, .. } => {
            let err = error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default();
            return Some(format!("deployment {status}{err}"));
        }
        Event::Started {
            job_id,
            replay: true,
        } => format!("job {job_id} already ran: reporting its recorded result"),
        Event::Started { job_id, .. } => format!("job {job_id} started"),
        Event::Error { message } => format!("error: {message}"),
        Event::Keepalive | Event::End { .. } => return None,
        Event::Finished {
            job_id,
            status,
            stats,
            error,
            output,
        } => {
            // Never logged as such (a host's outcome is `host_finished`):
            // shown as any kind this CLI has no line for.
            let fields = serde_json::json!({
                "job_id": job_id, "status": status, "stats": stats,
                "error": error, "output": output,
            });
            format!("finished {fields}")
        }
        Event::Other { kind, fields } => {
            // A kind this CLI does not know yet: show its fields, not the envelope.
            format!(
                "{kind} {}",
                serde_json::to_string(fields).unwrap_or_default()
            )
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

/// A deployment's hosts (none outside the detail view).
fn hosts(d: &DeploymentView) -> &[HostView] {
    d.detail
        .as_ref()
        .map(|x| x.hosts.as_slice())
        .unwrap_or_default()
}

/// The rows of the per-host summary.
pub fn host_rows(d: &DeploymentView) -> Vec<Vec<String>> {
    hosts(d)
        .iter()
        .map(|h| {
            let st = &h.stats;
            vec![
                h.name.clone(),
                h.status.clone(),
                n(st.ok),
                n(st.changed),
                n(st.failed),
                n(st.unreachable),
                n(st.skipped),
                duration(h.duration_ms),
                h.error.clone().unwrap_or_default(),
            ]
        })
        .collect()
}

/// The per-host summary table.
pub fn host_table(d: &DeploymentView) -> Table {
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
pub fn status_line(d: &DeploymentView) -> String {
    format!("deployment {} {}", d.id, d.status)
}

/// What ends a followed deployment's output: hosts, error, status line.
pub fn final_report(d: &DeploymentView) -> String {
    let mut out = format!("{}\n", host_table(d));
    if let Some(e) = d.error.as_deref().filter(|e| !e.is_empty()) {
        out.push_str(&format!("error: {e}\n"));
    }
    out.push_str(&status_line(d));
    out
}

fn version(d: &DeploymentView) -> &str {
    d.changeset.as_ref().map_or("-", |c| c.version.as_str())
}

/// The rows of `deployments list`.
pub fn list_rows(list: &DeploymentList, now: OffsetDateTime) -> Vec<Vec<String>> {
    list.deployments
        .iter()
        .map(|d| {
            let dur = if d.duration_ms.is_some_and(|m| m >= 0) {
                duration(d.duration_ms)
            } else if is_final(&d.status) {
                "-".into()
            } else {
                "…".into()
            };
            vec![
                d.id.clone(),
                d.application.clone(),
                d.environment.clone(),
                d.status.clone(),
                version(d).to_string(),
                n(d.hosts_total),
                since(Some(d.started_at.as_deref().unwrap_or(&d.created_at)), now),
                dur,
                d.requested_by.clone(),
            ]
        })
        .collect()
}

/// The `deployments list` table.
pub fn list_table(list: &DeploymentList, now: OffsetDateTime) -> Table {
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
pub fn show(d: &DeploymentView, now: OffsetDateTime) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    let when = |ts: Option<&str>| match ts {
        Some(ts) => format!("{ts} ({})", since(Some(ts), now)),
        None => "-".into(),
    };
    let summary = d
        .detail
        .as_ref()
        .map(|x| x.summary.pairs())
        .unwrap_or_default()
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let rows: Vec<(&str, String)> = vec![
        ("id", d.id.clone()),
        ("status", d.status.clone()),
        ("application", d.application.clone()),
        ("environment", d.environment.clone()),
        ("team", d.team.clone()),
        ("requested by", d.requested_by.clone()),
        (
            "changeset",
            format!(
                "{} {}",
                version(d),
                d.changeset.as_ref().map_or("", |c| c.url.as_str())
            ),
        ),
        ("playbook", s(&d.playbook).into()),
        ("hosts", format!("{} ({summary})", n(d.hosts_total))),
        (
            "pace",
            format!(
                "concurrency {}, max unavailable {}, max fail {}%",
                d.concurrency.as_ref().map_or("-".into(), concurrency),
                match d.max_unavailable {
                    None => "= concurrency".to_string(),
                    Some(m) => n(m),
                },
                d.max_fail_percentage.map_or("-".into(), n)
            ),
        ),
        ("query", s(&d.query).into()),
        ("haproxy query", s(&d.haproxy_query).into()),
        ("created", when(Some(&d.created_at))),
        ("started", when(d.started_at.as_deref())),
        ("finished", when(d.finished_at.as_deref())),
        ("duration", duration(d.duration_ms)),
        ("error", d.error.clone().unwrap_or_default()),
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
    for host in hosts(d) {
        let st = &host.stats;
        h.add_row(vec![
            host.name.clone(),
            host.address.clone(),
            host.server_name.clone(),
            host.status.clone(),
            host.step.clone().unwrap_or_default(),
            n(st.ok),
            n(st.changed),
            n(st.failed),
            n(st.unreachable),
            n(st.skipped),
            duration(host.duration_ms),
            host.error.clone().unwrap_or_default(),
        ]);
    }
    out.push_str(&format!("{h}\n"));

    let actions = d
        .detail
        .as_ref()
        .map(|x| x.haproxy_actions.as_slice())
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
                x.at.clone(),
                x.host.clone(),
                x.haproxy_vm.clone(),
                x.backend.clone(),
                x.server.clone(),
                x.action.clone(),
                if x.ok { "ok".into() } else { "FAILED".into() },
                x.detail.clone().unwrap_or_default(),
            ]);
        }
        out.push_str(&format!("{a}\n"));
    }
    out
}

/// The dry run's plan, readably; the caller exits 1 when `problems` is not empty.
pub fn plan(p: &PlanView) -> String {
    let mut out = format!(
        "dry run: {} host(s), concurrency {}, max unavailable {}\nquery: {}\n",
        p.hosts.len(),
        p.concurrency,
        p.max_unavailable,
        p.query,
    );
    let mut t = table(&["HOST", "ADDRESS", "SERVER NAME", "AGENT"]);
    for h in &p.hosts {
        t.add_row(vec![
            h.name.clone(),
            h.address.clone(),
            h.server_name.clone(),
            h.agent.clone(),
        ]);
    }
    out.push_str(&format!("{t}\n"));
    out.push_str("batches:\n");
    if p.batches.is_empty() {
        out.push_str("  (none)\n");
    }
    for (i, b) in p.batches.iter().enumerate() {
        out.push_str(&format!("  {}: {}\n", i + 1, b.join(", ")));
    }
    // The playbook across the hosts: who lacks it, who has another version.
    if let Some(pb) = &p.playbook {
        out.push_str(&format!(
            "playbook {}: sha256 {}\n",
            pb.name,
            pb.sha256
                .as_deref()
                .map(|h| &h[..h.len().min(12)])
                .unwrap_or("(on no host)")
        ));
        let drift: Vec<String> = pb
            .drift
            .iter()
            .map(|x| {
                let short: String = x.sha256.chars().take(12).collect();
                format!("{} ({short})", x.host)
            })
            .collect();
        for (l, what) in [
            (&pb.missing, "missing on"),
            (&drift, "differs on"),
            (&pb.unknown, "not reported by"),
        ] {
            if !l.is_empty() {
                out.push_str(&format!("  {what}: {}\n", l.join(", ")));
            }
        }
    }
    if let Some(hp) = &p.haproxy {
        out.push_str(&format!(
            "haproxy backend {} (query: {}):\n",
            hp.backend,
            s(&p.haproxy_query)
        ));
        let mut v = table(&["HAPROXY VM", "AGENT", "SERVERS"]);
        for vm in &hp.vms {
            v.add_row(vec![
                vm.name.clone(),
                vm.agent.clone(),
                vm.servers.join(", "),
            ]);
        }
        out.push_str(&format!("{v}\n"));
    } else {
        out.push_str("no HAProxy step (no --haproxy-backend)\n");
    }
    if p.problems.is_empty() {
        out.push_str("no problems found");
    } else {
        out.push_str(&format!("{} problem(s):\n", p.problems.len()));
        let lines: Vec<String> = p.problems.iter().map(|x| format!("  - {x}")).collect();
        out.push_str(&lines.join("\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;
    use vesemir_api::{
        ChangesetBody, DeploymentDetail, HaproxyActionView, HostStats, HostSummary, PlannedHaproxy,
        PlannedHost, PlannedVm, PlaybookCoverage, PlaybookDrift,
    };

    /// A log line as the controller sends it → what is shown.
    fn check_event(line: &str, expected: Option<&str>) {
        let ev: StreamLine = serde_json::from_str(line).unwrap();
        assert_eq!(event_line(&ev).as_deref(), expected, "event {line}");
    }

    #[test]
    fn log_events_are_prefixed_by_host() {
        check_event(
            r#"{"seq":1,"host":"web-1","type":"task_started","name":"Restart"}"#,
            Some("[web-1] TASK [Restart]"),
        );
        check_event(
            r#"{"host":"web-1","type":"log","stream":"stdout","line":"hi"}"#,
            Some("[web-1]   | hi"),
        );
        check_event(
            r#"{"host":"web-1","type":"log","stream":"stderr","line":"oops"}"#,
            Some("[web-1]   ! oops"),
        );
        check_event(
            r#"{"host":"web-1","type":"task_result","name":"x","status":"changed","duration_ms":1234,"msg":"done"}"#,
            Some("[web-1]   changed (1.2s): done"),
        );
        check_event(
            r#"{"host":"web-2","type":"step","step":"draining"}"#,
            Some("[web-2] step draining"),
        );
        check_event(
            r#"{"host":"web-2","type":"host_finished","status":"succeeded","error":null}"#,
            Some("[web-2] succeeded"),
        );
        check_event(
            r#"{"host":"web-2","type":"host_finished","status":"failed","error":"health check failed"}"#,
            Some("[web-2] failed: health check failed"),
        );
        check_event(
            r#"{"host":"web-2","type":"haproxy","action":"drain","haproxy_vm":"lb-1","ok":true,"detail":"scur 0"}"#,
            Some("[web-2] haproxy drain on lb-1: ok (scur 0)"),
        );
        check_event(
            r#"{"type":"deployment","status":"running"}"#,
            Some("deployment running"),
        );
        check_event(
            r#"{"type":"deployment","status":"aborted","error":"2 of 5 failed"}"#,
            Some("deployment aborted: 2 of 5 failed"),
        );
        check_event(
            r#"{"seq":3,"ts":"t","host":"web-1","type":"started","job_id":"d.web-1","replay":false}"#,
            Some("[web-1] job d.web-1 started"),
        );
        check_event(
            r#"{"host":"web-1","type":"started","job_id":"d.web-1","replay":true}"#,
            Some("[web-1] job d.web-1 already ran: reporting its recorded result"),
        );
        check_event(
            r#"{"host":null,"type":"error","message":"store down"}"#,
            Some("error: store down"),
        );
        check_event(
            r#"{"seq":9,"ts":"t","host":"web-1","type":"novel","x":1}"#,
            Some("[web-1] novel {\"x\":1}"),
        );
        check_event(r#"{"type":"keepalive"}"#, None);
        check_event(r#"{"type":"end","status":"succeeded"}"#, None);
    }

    /// A deployment row with nothing optional set.
    fn deployment(id: &str, status: &str, created_at: &str) -> DeploymentView {
        DeploymentView {
            id: id.into(),
            application: "payments".into(),
            environment: "production".into(),
            team: "pay".into(),
            status: status.into(),
            requested_by: "admin".into(),
            created_at: created_at.into(),
            started_at: None,
            finished_at: None,
            duration_ms: None,
            query: None,
            haproxy_query: None,
            haproxy_vms: None,
            hosts_total: 0,
            cancel_requested: false,
            concurrency: None,
            max_unavailable: None,
            max_fail_percentage: None,
            playbook: None,
            freeze_override: None,
            changeset: None,
            error: None,
            detail: None,
        }
    }

    fn changeset(version: &str) -> Option<ChangesetBody> {
        Some(ChangesetBody {
            version: version.into(),
            url: "https://x/p.tgz".into(),
            sha256: "ab".repeat(32),
            playbook: None,
        })
    }

    /// A host with its counts (ok, changed, failed, unreachable, skipped).
    fn host(name: &str, status: &str, c: [i64; 5], ms: i64, error: Option<&str>) -> HostView {
        HostView {
            name: name.into(),
            address: "10.0.0.1".into(),
            server_name: name.into(),
            status: status.into(),
            step: None,
            job_id: None,
            rotation: "in".into(),
            stats: HostStats {
                ok: c[0],
                changed: c[1],
                failed: c[2],
                unreachable: c[3],
                skipped: c[4],
            },
            started_at: None,
            finished_at: None,
            duration_ms: Some(ms),
            error: error.map(str::to_string),
        }
    }

    fn sample() -> DeploymentView {
        let mut d = deployment("d-1", "failed", "2026-01-01T10:00:00Z");
        d.started_at = Some("2026-01-01T10:00:01Z".into());
        d.duration_ms = Some(125000);
        d.hosts_total = 2;
        d.changeset = changeset("2.4.1");
        d.error = Some("1 host failed".into());
        let mut summary = HostSummary::default();
        summary.count("succeeded");
        summary.count("failed");
        d.detail = Some(DeploymentDetail {
            summary,
            hosts: vec![
                host("web-1", "succeeded", [5, 3, 0, 0, 1], 4200, None),
                host(
                    "web-2",
                    "failed",
                    [2, 1, 1, 0, 0],
                    900,
                    Some("health check failed"),
                ),
            ],
            request: None,
            haproxy_actions: vec![HaproxyActionView {
                at: "t".into(),
                host: "web-2".into(),
                haproxy_vm: "lb-1".into(),
                backend: "payments".into(),
                server: "web-2".into(),
                action: "maint".into(),
                ok: true,
                detail: Some(String::new()),
            }],
        });
        d
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
        let mut running = deployment("d-2", "running", "2026-01-01T10:05:00Z");
        running.hosts_total = 5;
        running.changeset = changeset("2.4.2");
        running.requested_by = "ci".into();
        let list = DeploymentList {
            deployments: vec![sample(), running],
            total: 2,
        };
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
        let planned = |name: &str, address: &str, agent: &str| PlannedHost {
            name: name.into(),
            address: address.into(),
            server_name: name.into(),
            agent: agent.into(),
        };
        let p = PlanView {
            dry_run: true,
            application: "payments".into(),
            environment: "production".into(),
            query: "tags:app".into(),
            haproxy_query: Some("recipes:haproxy".into()),
            concurrency: 1,
            max_unavailable: 1,
            freeze: None,
            hosts: vec![
                planned("web-1", "10.0.0.1", "connected"),
                planned("web-2", "10.0.0.2", "none"),
            ],
            batches: vec![vec!["web-1".into()], vec!["web-2".into()]],
            haproxy: Some(PlannedHaproxy {
                backend: "payments".into(),
                vms: vec![PlannedVm {
                    name: "lb-1".into(),
                    agent: "connected".into(),
                    servers: vec!["web-1".into(), "web-2".into()],
                }],
            }),
            problems: vec!["web-2: no agent".into()],
            playbook: None,
        };
        let out = plan(&p);
        for needle in [
            "2 host(s), concurrency 1, max unavailable 1",
            "  1: web-1\n  2: web-2",
            "haproxy backend payments",
            "lb-1",
            "web-1, web-2",
            "1 problem(s):\n  - web-2: no agent",
        ] {
            assert!(out.contains(needle), "{needle:?} missing from\n{out}");
        }
        let mut ok = p.clone();
        ok.problems.clear();
        let mut drift = ok.clone();
        drift.playbook = Some(PlaybookCoverage {
            name: "deploy.yml".into(),
            sha256: Some("ab".repeat(32)),
            missing: vec!["web-3".into()],
            drift: vec![PlaybookDrift {
                host: "web-2".into(),
                sha256: "cd".repeat(32),
            }],
            unknown: vec![],
        });
        let text = plan(&drift);
        assert!(
            text.contains("playbook deploy.yml: sha256 abababababab"),
            "{text}"
        );
        assert!(text.contains("missing on: web-3"), "{text}");
        assert!(text.contains("differs on: web-2 (cdcdcdcdcdcd)"), "{text}");
        assert!(plan(&ok).ends_with("no problems found"));
        let mut empty = ok.clone();
        empty.hosts.clear();
        empty.batches.clear();
        empty.problems = vec!["no hosts match the selector".into()];
        assert!(
            plan(&empty).contains("batches:\n  (none)\n"),
            "{}",
            plan(&empty)
        );
    }

    #[test]
    fn durations() {
        assert_eq!(duration(Some(1234)), "1.2s");
        assert_eq!(duration(Some(3_725_000)), "1h 2m 5s");
        assert_eq!(duration(None), "-");
        assert_eq!(duration(Some(-1)), "-");
    }
}
