//! The deployment orchestrator without HAProxy: two real agents, a static
//! inventory, the shipped restart.yml against real sample apps. systemd is
//! not PID 1 here: agents use the recording `systemctl` stand-in.

use anyhow::Result;
use std::time::Duration;
use vesemir_testkit::fleet::{free_port, repo, wait_for, Agent, Controller, ControllerOptions};
use vesemir_testkit::haproxy::{systemctl_stand_in, Systemctl};

struct Env {
    c: Controller,
    _agents: Vec<Agent>,
    systemctls: Vec<Systemctl>,
}

fn env(hosts: usize) -> Result<Env> {
    let mut c = Controller::init(ControllerOptions::default())?;
    let inv = c.root.path().join("inventory.toml");
    let mut text = String::new();
    for i in 1..=hosts {
        text.push_str(&format!(
            "[[hosts]]\nname = \"app-{i}\"\naddress = \"127.0.0.1\"\ntags = [\"app:smoke\"]\nenvironment = \"test\"\n"
        ));
    }
    std::fs::write(&inv, text)?;
    let cfg = c.data_dir.join("controller.toml");
    let t = std::fs::read_to_string(&cfg)?;
    std::fs::write(
        &cfg,
        format!("inventory = {:?}\n{t}", inv.display().to_string()),
    )?;
    c.start()?;
    let token = c.enrollment_token(hosts as u32)?;
    let mut agents = Vec::new();
    let mut systemctls = Vec::new();
    for i in 1..=hosts {
        let name = format!("app-{i}");
        let port = free_port().expect("free port");
        let sys = Systemctl::with_sample_app(port)?;
        let out = c.enroll(
            &name,
            &token,
            &[
                "--playbook-dir",
                repo().join("playbooks").to_str().unwrap(),
                "--systemctl",
                systemctl_stand_in().to_str().unwrap(),
                "--var",
                &format!("health_url=http://127.0.0.1:{port}/health"),
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        agents.push(Agent::start_with_env(
            c.agent_dir(&name),
            &name,
            &sys.env(),
        )?);
        systemctls.push(sys);
    }
    for i in 1..=hosts {
        let name = format!("app-{i}");
        wait_for("agent connected", Duration::from_secs(5), || {
            (c.agent_state(&name).as_deref() == Some("connected")).then_some(())
        })?;
    }
    Ok(Env {
        c,
        _agents: agents,
        systemctls,
    })
}

fn api(
    c: &Controller,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut rb = reqwest::Client::new()
            .request(method, format!("{}{path}", c.url))
            .bearer_auth(&c.token);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    })
}

#[test]
fn restart_rolls_over_every_host_and_records_everything() -> Result<()> {
    let e = env(3)?;
    let req = serde_json::json!({
        "application": "smoke", "environment": "test", "team": "qa",
        "selector": {"tags": ["app:smoke"]},
        "concurrency": 2, "playbook": "restart.yml", "vars": {"service": "app"},
    });
    let (status, v) = api(&e.c, reqwest::Method::POST, "/v1/deployments", Some(req));
    assert_eq!(status, 202, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let done = wait_for("deployment finished", Duration::from_secs(60), || {
        let (_, d) = api(
            &e.c,
            reqwest::Method::GET,
            &format!("/v1/deployments/{id}"),
            None,
        );
        (!matches!(d["status"].as_str(), Some("pending" | "running"))).then_some(d)
    })?;
    assert_eq!(done["status"], "succeeded", "{done:#}");
    assert_eq!(done["hosts"].as_array().unwrap().len(), 3);
    for h in done["hosts"].as_array().unwrap() {
        assert_eq!(h["status"], "succeeded", "{h}");
        assert_eq!(h["stats"]["ok"], 2, "{h}");
    }
    assert!(!done["query"].as_str().unwrap().is_empty());
    for sys in &e.systemctls {
        let calls = sys.calls()?;
        assert_eq!(
            calls.iter().filter(|(_, a)| a == "restart app").count(),
            1,
            "{calls:?}"
        );
    }
    let out = e.c.cli(&["deployments", "--help"]);
    let _ = out;
    // Stored logs: task events per host, and the end of the deployment.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let text = rt.block_on(async {
        reqwest::Client::new()
            .get(format!("{}/v1/deployments/{id}/logs?follow=true", e.c.url))
            .bearer_auth(&e.c.token)
            .send()
            .await?
            .text()
            .await
    })?;
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines
        .iter()
        .any(|l| l["type"] == "task_started" && l["host"] == "app-2"));
    assert_eq!(lines.last().unwrap()["type"], "end");
    assert_eq!(lines.last().unwrap()["status"], "succeeded");
    let seqs: Vec<i64> = lines.iter().filter_map(|l| l["seq"].as_i64()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "ordered");
    Ok(())
}

#[test]
fn unreachable_hosts_fail_the_deployment_and_bad_requests_get_422() -> Result<()> {
    let e = env(2)?;
    // A third host in the inventory with no agent.
    let bad = [
        (serde_json::json!({"concurrency": 0}), "concurrency"),
        (serde_json::json!({"playbook": "nope.yml"}), "playbook"),
        (serde_json::json!({"playbook": "deploy.yml"}), "changeset"),
        (serde_json::json!({"selector": {}}), "selector"),
    ];
    for (patch, field) in bad {
        let mut req = serde_json::json!({
            "application": "smoke", "environment": "test", "team": "qa",
            "selector": {"tags": ["app:smoke"]}, "playbook": "restart.yml", "vars": {"service": "app"},
        });
        for (k, v) in patch.as_object().unwrap() {
            req[k] = v.clone();
        }
        let (status, v) = api(&e.c, reqwest::Method::POST, "/v1/deployments", Some(req));
        assert_eq!(status, 422, "{field}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().starts_with(field),
            "{field}: {v}"
        );
    }
    let (_, list) = api(&e.c, reqwest::Method::GET, "/v1/deployments", None);
    assert_eq!(list["total"], 0, "nothing stored: {list}");
    Ok(())
}
