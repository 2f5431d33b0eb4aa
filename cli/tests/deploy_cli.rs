//! `vesemir deploy` / `deployments` / `rollback` as a real process against a
//! scripted stand-in for the controller's HTTP API (docs/API.md), so retries,
//! Idempotency-Key reuse, log stream reconnects, the plain (no terminal)
//! output and the exit codes are checked without a fleet. The end-to-end
//! tests in `tests/` run the same binary against a real controller.

use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

/// One request the stand-in received.
#[derive(Clone, Debug)]
struct Req {
    method: String,
    /// Path with query.
    path: String,
    headers: HashMap<String, String>,
    body: Value,
}

/// What the stand-in answers.
enum Reply {
    /// Status and JSON body.
    Json(u16, Value),
    /// NDJSON lines, then the connection closes (the stream "breaks" unless
    /// the last line is `end`).
    Ndjson(Vec<Value>),
    /// NDJSON lines, then the connection stays open this long.
    NdjsonHold(Vec<Value>, std::time::Duration),
    /// Close the connection without answering.
    Hangup,
}

type Route = Box<dyn Fn(&Req, usize) -> Reply + Send + Sync>;

/// A scripted controller: `routes` maps "METHOD path-without-query" to a
/// function of the request and how many times that route was hit before.
struct Stand {
    url: String,
    seen: Arc<Mutex<Vec<Req>>>,
}

fn read_req(stream: &mut TcpStream) -> Option<Req> {
    let mut r = BufReader::new(stream.try_clone().ok()?);
    let mut first = String::new();
    r.read_line(&mut first).ok()?;
    let mut parts = first.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = HashMap::new();
    loop {
        let mut l = String::new();
        r.read_line(&mut l).ok()?;
        let l = l.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(Req {
        method,
        path,
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    })
}

impl Stand {
    fn start(routes: Vec<(&'static str, Route)>) -> Stand {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::<Req>::new()));
        let routes: Arc<HashMap<&'static str, Route>> = Arc::new(routes.into_iter().collect());
        let counts = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
        let s2 = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let (routes, seen, counts) = (routes.clone(), s2.clone(), counts.clone());
                std::thread::spawn(move || {
                    let Some(req) = read_req(&mut stream) else {
                        return;
                    };
                    seen.lock().unwrap().push(req.clone());
                    let key = format!("{} {}", req.method, req.path.split('?').next().unwrap());
                    let n = {
                        let mut c = counts.lock().unwrap();
                        let n = c.entry(key.clone()).or_default();
                        *n += 1;
                        *n - 1
                    };
                    let reply = match routes.get(key.as_str()) {
                        Some(f) => f(&req, n),
                        None => Reply::Json(
                            404,
                            json!({"error": {"code": "not_found", "message": format!("no route {key}")}}),
                        ),
                    };
                    let _ = match reply {
                        Reply::Hangup => Ok(()),
                        Reply::Json(code, v) => {
                            let body = v.to_string();
                            write!(
                                stream,
                                "HTTP/1.1 {code} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                                body.len()
                            )
                        }
                        Reply::NdjsonHold(lines, hold) => {
                            let mut out = String::from(
                                "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\nconnection: close\r\n\r\n",
                            );
                            for l in lines {
                                out.push_str(&l.to_string());
                                out.push('\n');
                            }
                            let r = stream.write_all(out.as_bytes());
                            std::thread::sleep(hold);
                            r
                        }
                        Reply::Ndjson(lines) => {
                            let mut out = String::from(
                                "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\nconnection: close\r\n\r\n",
                            );
                            for l in lines {
                                out.push_str(&l.to_string());
                                out.push('\n');
                            }
                            stream.write_all(out.as_bytes())
                        }
                    };
                });
            }
        });
        Stand { url, seen }
    }

    fn cli(&self, args: &[&str]) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_vesemir"))
            .args(["--url", &self.url, "--token", "t0k"])
            .args(args)
            .env_remove("VESEMIR_CONFIG")
            .output()
            .unwrap();
        eprintln!(
            "--- vesemir {args:?}: {}\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn seen(&self, method: &str, path_prefix: &str) -> Vec<Req> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.method == method && r.path.starts_with(path_prefix))
            .cloned()
            .collect()
    }
}

/// `GET /v1/deployments/d-1` as the controller answers it (every field
/// of `vesemir_api::DeploymentView` with its detail).
fn deployment(status: &str, host_status: &str) -> Value {
    json!({
        "id": "d-1", "application": "payments", "environment": "production", "team": "pay",
        "status": status, "requested_by": "admin", "created_at": "2026-01-01T10:00:00Z",
        "started_at": "2026-01-01T10:00:01Z", "finished_at": null, "duration_ms": null,
        "query": "tags:app\\:payments", "haproxy_query": null, "haproxy_vms": null,
        "hosts_total": 1, "cancel_requested": false, "concurrency": 1, "max_unavailable": null,
        "max_fail_percentage": 0, "playbook": "deploy.yml", "changeset": null, "error": null,
        "summary": {"pending": 0, "running": 1, "succeeded": 0, "failed": 0, "unreachable": 0, "skipped": 0},
        "hosts": [{"name": "web-1", "address": "10.0.0.1", "server_name": "web-1",
                   "status": host_status, "step": "deploying", "job_id": null, "rotation": "in",
                   "stats": {"ok": 4, "changed": 2, "failed": 0, "unreachable": 0, "skipped": 1},
                   "started_at": null, "finished_at": null, "duration_ms": 2100, "error": null}],
        "request": null, "haproxy_actions": []
    })
}

const DEPLOY: &[&str] = &[
    "deploy",
    "--app",
    "payments",
    "--env",
    "production",
    "--tag",
    "app:payments",
];

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn deploy_retries_with_one_key_and_follows_through_a_broken_stream() {
    let stand = Stand::start(vec![
        (
            "POST /v1/deployments",
            Box::new(|_, n| match n {
                0 => Reply::Hangup,
                _ => Reply::Json(202, json!({"id": "d-1", "status": "pending"})),
            }),
        ),
        (
            "GET /v1/deployments/d-1",
            Box::new(|_, n| match n {
                0..=2 => Reply::Json(200, deployment("running", "running")),
                _ => Reply::Json(200, deployment("succeeded", "succeeded")),
            }),
        ),
        (
            "GET /v1/deployments/d-1/logs",
            Box::new(|req, _| {
                if !req.path.contains("after=") {
                    Reply::Ndjson(vec![
                        json!({"seq": 1, "host": "web-1", "type": "step", "step": "deploying"}),
                        json!({"seq": 2, "host": "web-1", "type": "task_started", "name": "Restart"}),
                    ])
                } else {
                    Reply::Ndjson(vec![
                        json!({"type": "keepalive"}),
                        json!({"seq": 3, "host": "web-1", "type": "task_result", "name": "Restart", "status": "changed", "duration_ms": 300, "msg": ""}),
                        json!({"seq": 4, "host": "web-1", "type": "host_finished", "status": "succeeded", "error": null}),
                        json!({"seq": 5, "type": "deployment", "status": "succeeded", "error": null}),
                        json!({"type": "end", "status": "succeeded"}),
                    ])
                }
            }),
        ),
    ]);
    let out = stand.cli(&[DEPLOY, &["--follow"]].concat());
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    for needle in [
        "deployment d-1 started\n",
        "[web-1] step deploying\n",
        "[web-1] TASK [Restart]\n",
        "[web-1]   changed (0.3s)\n",
        "[web-1] succeeded\n",
        "lost the log stream",
    ] {
        assert!(text.contains(needle), "{needle:?} missing");
    }
    assert!(text.trim_end().ends_with("deployment d-1 succeeded"));
    let summary = text
        .lines()
        .find(|l| l.contains("web-1") && l.contains("succeeded") && l.contains("2.1s"));
    assert!(summary.is_some(), "no summary row for web-1");

    let posts = stand.seen("POST", "/v1/deployments");
    assert_eq!(posts.len(), 2, "one retry after the hangup");
    let keys: Vec<_> = posts
        .iter()
        .map(|r| r.headers.get("idempotency-key").cloned())
        .collect();
    assert!(
        keys[0].is_some() && keys[0] == keys[1],
        "same key on the retry: {keys:?}"
    );
    assert_eq!(
        posts[0].headers.get("authorization").map(String::as_str),
        Some("Bearer t0k")
    );
    assert_eq!(posts[1].body["selector"], json!({"tags": ["app:payments"]}));
    let logs = stand.seen("GET", "/v1/deployments/d-1/logs");
    assert_eq!(logs[0].path, "/v1/deployments/d-1/logs?follow=true");
    assert_eq!(logs[1].path, "/v1/deployments/d-1/logs?follow=true&after=2");
}

#[test]
fn failed_deployment_exits_2_and_without_a_terminal_deploy_prints_the_id() {
    let stand = Stand::start(vec![
        (
            "POST /v1/deployments",
            Box::new(|_, _| Reply::Json(202, json!({"id": "d-1", "status": "pending"}))),
        ),
        (
            "GET /v1/deployments/d-1",
            Box::new(|_, _| {
                let mut d = deployment("aborted", "failed");
                d["error"] = json!("1 of 1 hosts failed");
                d["hosts"][0]["error"] = json!("health check failed");
                Reply::Json(200, d)
            }),
        ),
        (
            "GET /v1/deployments/d-1/logs",
            Box::new(|_, _| {
                Reply::Ndjson(vec![
                    json!({"seq": 1, "host": "web-1", "type": "host_finished", "status": "failed", "error": "health check failed"}),
                    json!({"type": "end", "status": "aborted"}),
                ])
            }),
        ),
    ]);
    // Not a terminal, no --follow: the id alone on stdout, exit 0.
    let out = stand.cli(&[DEPLOY, &["--idempotency-key", "k-42"]].concat());
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stdout(&out), "d-1\n");
    assert!(stderr(&out).contains("vesemir deployments logs d-1 --follow"));
    assert_eq!(
        stand.seen("POST", "/v1/deployments")[0]
            .headers
            .get("idempotency-key")
            .map(String::as_str),
        Some("k-42")
    );

    let out = stand.cli(&["deployments", "logs", "d-1", "--follow"]);
    assert_eq!(out.status.code(), Some(2));
    let text = stdout(&out);
    assert!(text.contains("[web-1] failed: health check failed"));
    assert!(text.contains("error: 1 of 1 hosts failed"));
    assert!(text.trim_end().ends_with("deployment d-1 aborted"));

    let out = stand.cli(&["deployments", "show", "d-1", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"], "aborted");
}

#[test]
fn server_refusals_are_shown_and_exit_1() {
    let stand = Stand::start(vec![
        (
            "POST /v1/deployments",
            Box::new(|_, _| {
                Reply::Json(
                    422,
                    json!({"error": {"code": "invalid", "message": "concurrency: must be at least 1"}}),
                )
            }),
        ),
        (
            "POST /v1/deployments/rollback",
            Box::new(|_, _| {
                Reply::Json(
                    404,
                    json!({"error": {"code": "no_previous_release", "message": "no previous release of payments in production"}}),
                )
            }),
        ),
        (
            "POST /v1/deployments/d-9/cancel",
            Box::new(|_, _| {
                Reply::Json(
                    409,
                    json!({"error": {"code": "finished", "message": "deployment d-9 already finished"}}),
                )
            }),
        ),
    ]);
    let out = stand.cli(DEPLOY);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("concurrency: must be at least 1"));
    assert_eq!(
        stand.seen("POST", "/v1/deployments").len(),
        1,
        "a 422 is not retried"
    );

    let out = stand.cli(&["rollback", "--app", "payments", "--env", "production"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no previous release"));
    assert_eq!(
        stand.seen("POST", "/v1/deployments/rollback")[0].body,
        json!({"application": "payments", "environment": "production"})
    );

    let out = stand.cli(&["deployments", "cancel", "d-9"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("already finished"));

    // Client-side: named before any request.
    let out = stand.cli(&["deploy", "--app", "a", "--env", "e"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("selector"));
}

#[test]
fn dry_run_prints_the_plan_and_fails_on_problems() {
    let stand = Stand::start(vec![(
        "POST /v1/deployments",
        Box::new(|req: &Req, _| {
            assert_eq!(req.body["dry_run"], true);
            let problems = if req.body["haproxy"].is_object() {
                json!([])
            } else {
                json!(["web-2: no agent"])
            };
            Reply::Json(
                200,
                json!({
                    "dry_run": true, "application": "payments", "environment": "production",
                    "query": "tags:app\\:payments", "haproxy_query": null, "concurrency": 1, "max_unavailable": 1,
                    "hosts": [{"name": "web-1", "address": "10.0.0.1", "server_name": "web-1", "agent": "connected"},
                              {"name": "web-2", "address": "10.0.0.2", "server_name": "web-2", "agent": "none"}],
                    "batches": [["web-1"], ["web-2"]], "haproxy": null, "problems": problems, "playbook": null
                }),
            )
        }),
    )]);
    let out = stand.cli(&[DEPLOY, &["--dry-run"]].concat());
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(text.contains("  1: web-1\n  2: web-2"));
    assert!(text.contains("- web-2: no agent"));

    let out = stand.cli(
        &[
            DEPLOY,
            &[
                "--dry-run",
                "--haproxy-backend",
                "b",
                "--haproxy-recipe",
                "haproxy",
                "--output",
                "json",
            ],
        ]
        .concat(),
    );
    assert_eq!(out.status.code(), Some(0));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["batches"], json!([["web-1"], ["web-2"]]));
}

#[test]
fn list_shows_a_table_and_json() {
    let stand = Stand::start(vec![(
        "GET /v1/deployments",
        Box::new(|_, _| {
            Reply::Json(
                200,
                json!({"deployments": [{"id": "d-1", "application": "payments", "environment": "production",
                    "team": "pay", "status": "succeeded", "requested_by": "admin",
                    "created_at": "2026-01-01T09:59:59Z", "started_at": "2026-01-01T10:00:00Z",
                    "finished_at": "2026-01-01T10:01:01Z", "duration_ms": 61000, "query": null,
                    "haproxy_query": null, "haproxy_vms": null, "hosts_total": 5,
                    "cancel_requested": false, "concurrency": 1, "max_unavailable": null,
                    "max_fail_percentage": 0, "playbook": "deploy.yml",
                    "changeset": {"version": "2.4.1", "url": "https://x/p.tgz", "sha256": "ab"},
                    "error": null}], "total": 1}),
            )
        }),
    )]);
    let out = stand.cli(&[
        "deployments",
        "list",
        "--app",
        "payments",
        "--status",
        "succeeded",
        "--limit",
        "5",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let row = stdout(&out)
        .lines()
        .find(|l| l.contains("d-1"))
        .map(str::to_string)
        .unwrap();
    for needle in [
        "payments",
        "production",
        "succeeded",
        "2.4.1",
        "1m 1s",
        "admin",
    ] {
        assert!(row.contains(needle), "{needle:?} not in {row:?}");
    }
    assert_eq!(
        stand.seen("GET", "/v1/deployments")[0].path,
        "/v1/deployments?application=payments&status=succeeded&limit=5"
    );
    let out = stand.cli(&["deployments", "list", "--output", "json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["total"], 1);
}

#[test]
fn ctrl_c_stops_following_but_does_not_cancel() {
    let stand = Stand::start(vec![
        (
            "GET /v1/deployments/d-1",
            Box::new(|_, _| Reply::Json(200, deployment("running", "running"))),
        ),
        (
            "GET /v1/deployments/d-1/logs",
            Box::new(|_, _| {
                Reply::NdjsonHold(
                    vec![
                        json!({"seq": 1, "host": "web-1", "type": "task_started", "name": "Restart"}),
                    ],
                    std::time::Duration::from_secs(20),
                )
            }),
        ),
    ]);
    let child = Command::new(env!("CARGO_BIN_EXE_vesemir"))
        .args(["--url", &stand.url, "--token", "t"])
        .args(["deployments", "logs", "d-1", "--follow"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until it is following (the log stream was opened and polled).
    let t0 = std::time::Instant::now();
    while stand.seen("GET", "/v1/deployments/d-1").len() < 3 {
        assert!(t0.elapsed().as_secs() < 10, "the CLI never followed");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    assert!(stdout(&out).contains("[web-1] TASK [Restart]"));
    let err = stderr(&out);
    assert!(
        err.contains("vesemir deployments logs d-1 --follow"),
        "{err}"
    );
    assert!(err.contains("vesemir deployments cancel d-1"), "{err}");
    assert!(stand.seen("POST", "/").is_empty(), "Ctrl-C must not cancel");
}
