//! Issue 12, point 5: logs. Started the way systemd starts them
//! (`INVOCATION_ID` set, stderr not a terminal, no `--log-format`), the
//! controller and the agent log JSON; and after a real deployment (one
//! agent, the shipped restart.yml against the sample app, the recording
//! `systemctl` stand-in since systemd is not PID 1 here) every controller
//! line that names the deployment carries `deployment_id`, the host's lines
//! carry `host`, the job's lines `job_id`, on both sides.

use anyhow::{Context, Result};
use serde_json::{Map, Value};
use std::process::Command;
use std::time::Duration;
use vesemir_testkit::fleet::{
    bin, free_port, http_get_status, repo, wait_for, Agent, Controller, ControllerOptions, Proc,
};
use vesemir_testkit::haproxy::{systemctl_stand_in, Systemctl};

/// Every line of a log as JSON (a line that is not JSON fails the test:
/// under systemd the default is JSON).
fn json_lines(who: &str, log: &str) -> Vec<Value> {
    log.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("-----"))
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{who} log line is not JSON ({e}): {l:?}"))
        })
        .collect()
}

/// A line's own fields merged with those of its spans (outermost first),
/// which is how a log query sees them.
fn fields(line: &Value) -> Map<String, Value> {
    let mut out = Map::new();
    for span in line["spans"].as_array().into_iter().flatten() {
        if let Some(o) = span.as_object() {
            out.extend(o.clone());
        }
    }
    if let Some(o) = line.as_object() {
        for (k, v) in o {
            if k != "span" && k != "spans" {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out
}

fn has(f: &Map<String, Value>, key: &str, want: &str) -> bool {
    f.get(key).and_then(Value::as_str) == Some(want)
}

fn api_json(
    c: &Controller,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut rb = reqwest::Client::new()
            .request(method, format!("{}{path}", c.url))
            .bearer_auth(&c.token)
            .timeout(Duration::from_secs(10));
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await.expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    })
}

#[test]
fn a_deployments_log_lines_carry_deployment_host_and_job_ids() -> Result<()> {
    let mut c = Controller::init(ControllerOptions::default())?;
    let inv = c.root.path().join("inventory.toml");
    std::fs::write(
        &inv,
        "[[hosts]]\nname = \"app-1\"\naddress = \"127.0.0.1\"\ntags = [\"app:logs\"]\nenvironment = \"test\"\n",
    )?;
    let cfg = c.data_dir.join("controller.toml");
    let t = std::fs::read_to_string(&cfg)?;
    std::fs::write(
        &cfg,
        format!("inventory = {:?}\n{t}", inv.display().to_string()),
    )?;

    // As systemd would start it: no --log-format.
    let mut cmd = Command::new(bin("vesemir-controller"));
    cmd.args(["serve", "--config"])
        .arg(&cfg)
        .env("INVOCATION_ID", "0123456789abcdef0123456789abcdef")
        .env_remove("JOURNAL_STREAM")
        .env_remove("NOTIFY_SOCKET")
        .env("RUST_LOG", "info");
    let log = c.root.path().join("controller.log");
    c.pass_sockets(&mut cmd);
    c.proc = Some(Proc::spawn("controller", cmd, log)?);
    let url = format!("{}/readyz", c.url);
    wait_for("controller /readyz", Duration::from_secs(20), || {
        (http_get_status(&url) == Some(200)).then_some(())
    })?;

    let port = free_port().expect("free port");
    let sys = Systemctl::with_sample_app(port)?;
    let out = c.enroll(
        "app-1",
        &c.enrollment_token(1)?,
        &[
            "--playbook-dir",
            repo().join("playbooks").to_str().expect("utf-8"),
            "--systemctl",
            systemctl_stand_in().to_str().expect("utf-8"),
            "--var",
            &format!("health_url=http://127.0.0.1:{port}/health"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut env: Vec<(&'static str, std::ffi::OsString)> = sys
        .env()
        .into_iter()
        .map(|(k, v)| (k, v.into_os_string()))
        .collect();
    env.push(("INVOCATION_ID", "fedcba9876543210fedcba9876543210".into()));
    let agent = Agent::start_with_env(c.agent_dir("app-1"), "app-1", &env)?;
    wait_for("agent connected", Duration::from_secs(10), || {
        (c.agent_state("app-1").as_deref() == Some("connected")).then_some(())
    })?;

    let req = serde_json::json!({
        "application": "logs", "environment": "test", "team": "qa",
        "selector": {"tags": ["app:logs"]},
        "concurrency": 1, "playbook": "restart.yml", "vars": {"service": "app"},
    });
    let (status, v) = api_json(&c, reqwest::Method::POST, "/v1/deployments", Some(req));
    assert_eq!(status, 202, "{v}");
    let id = v["id"].as_str().context("deployment id")?.to_string();
    let done = wait_for("deployment finished", Duration::from_secs(60), || {
        let (_, d) = api_json(
            &c,
            reqwest::Method::GET,
            &format!("/v1/deployments/{id}"),
            None,
        );
        (!matches!(d["status"].as_str(), Some("pending" | "running"))).then_some(d)
    })?;
    assert_eq!(done["status"], "succeeded", "{done:#}");

    // The controller: the finish line is written after the host's lines.
    let proc = c.proc.as_ref().expect("started");
    let text = wait_for(
        "deployment finished in the log",
        Duration::from_secs(10),
        || {
            let t = proc.log_text();
            t.contains("deployment finished").then_some(t)
        },
    )?;
    let lines = json_lines("controller", &text);
    let about: Vec<Map<String, Value>> = lines
        .iter()
        .filter(|l| l.to_string().contains(&id))
        .map(fields)
        .collect();
    assert!(about.len() >= 3, "few lines about {id}:\n{text}");
    for f in &about {
        assert!(
            has(f, "deployment_id", &id),
            "a line naming {id} lacks deployment_id: {f:?}"
        );
    }
    let find = |msg: &str| {
        about
            .iter()
            .find(|f| f.get("message").and_then(Value::as_str) == Some(msg))
            .unwrap_or_else(|| panic!("no {msg:?} line about {id} in:\n{text}"))
    };
    let sent = find("playbook job sent");
    assert!(has(sent, "host", "app-1"), "{sent:?}");
    let job_id = sent
        .get("job_id")
        .and_then(Value::as_str)
        .filter(|j| !j.is_empty())
        .unwrap_or_else(|| panic!("playbook job line lacks job_id: {sent:?}"))
        .to_string();
    let ended = find("host run ended");
    assert!(has(ended, "host", "app-1"), "{ended:?}");
    find("deployment finished");

    // The agent: its job's lines carry the same ids.
    let agent_text = agent.proc.log_text();
    let agent_lines: Vec<Map<String, Value>> = json_lines("agent", &agent_text)
        .iter()
        .map(fields)
        .collect();
    let job_lines: Vec<&Map<String, Value>> = agent_lines
        .iter()
        .filter(|f| has(f, "job_id", &job_id))
        .collect();
    assert!(
        !job_lines.is_empty(),
        "no agent line with job_id {job_id}:\n{agent_text}"
    );
    for f in job_lines {
        assert!(
            has(f, "deployment_id", &id) && has(f, "host", "app-1"),
            "{f:?}"
        );
    }
    Ok(())
}
