//! The store under concurrent writes: 200 enrollments, 32 in flight, while
//! agents heartbeat (batched last-seen writes every second) and deployments
//! run back to back (plan, host progress and logs written). Before write
//! transactions took SQLite's write lock up front, a third of such
//! enrollments were refused with "controller store unavailable" and the log
//! said `database is locked`. systemd is not PID 1 here: the deploying
//! agents use the recording `systemctl` stand-in.

use anyhow::{bail, Result};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vesemir_testkit::fleet::{free_port, repo, wait_for, Agent, Controller, ControllerOptions};
use vesemir_testkit::haproxy::{systemctl_stand_in, Systemctl};

const HOSTS: usize = 3;
const ENROLLMENTS: usize = 200;
const IN_FLIGHT: usize = 32;

fn api(
    c: &Controller,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<(u16, serde_json::Value)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut rb = reqwest::Client::new()
            .request(method, format!("{}{path}", c.url))
            .timeout(Duration::from_secs(20))
            .bearer_auth(&c.token);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(serde_json::Value::Null)))
    })
}

/// Submits a restart deployment and waits for its end; returns its status.
fn deploy_once(c: &Controller) -> Result<String> {
    let req = serde_json::json!({
        "application": "store", "environment": "test", "team": "qa",
        "selector": {"tags": ["app:store"]},
        "concurrency": 1, "playbook": "restart.yml", "vars": {"service": "app"},
    });
    let (status, v) = api(c, reqwest::Method::POST, "/v1/deployments", Some(req))?;
    if status != 202 {
        bail!("deploy refused with {status}: {v}");
    }
    let id = v["id"].as_str().unwrap_or_default().to_string();
    wait_for("deployment finished", Duration::from_secs(60), || {
        let (_, d) = api(
            c,
            reqwest::Method::GET,
            &format!("/v1/deployments/{id}"),
            None,
        )
        .ok()?;
        let s = d["status"].as_str()?.to_string();
        (!matches!(s.as_str(), "pending" | "running")).then_some(s)
    })
}

#[test]
fn two_hundred_enrollments_32_at_once_while_agents_heartbeat_and_deployments_run() -> Result<()> {
    let mut c = Controller::init(ControllerOptions::default())?;
    let inv = c.root.path().join("inventory.toml");
    let mut text = String::new();
    for i in 1..=HOSTS {
        text.push_str(&format!(
            "[[hosts]]\nname = \"app-{i}\"\naddress = \"127.0.0.1\"\ntags = [\"app:store\"]\nenvironment = \"test\"\n"
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

    // The deploying agents, connected and heartbeating every second.
    let token = c.enrollment_token(HOSTS as u32)?;
    let mut agents: Vec<Agent> = Vec::new();
    let mut systemctls = Vec::new();
    for i in 1..=HOSTS {
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
    for i in 1..=HOSTS {
        let name = format!("app-{i}");
        wait_for("agent connected", Duration::from_secs(10), || {
            (c.agent_state(&name).as_deref() == Some("connected")).then_some(())
        })?;
    }

    let token = c.enrollment_token(ENROLLMENTS as u32)?;
    let next = AtomicUsize::new(0);
    let refusals: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let enrolling = Arc::new(AtomicUsize::new(IN_FLIGHT));
    let mut deployments: Vec<String> = Vec::new();
    let started = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        for _ in 0..IN_FLIGHT {
            let (c, token, next, refusals, enrolling) = (&c, &token, &next, &refusals, &enrolling);
            s.spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= ENROLLMENTS {
                        break;
                    }
                    let name = format!("node-{i:03}");
                    let out = c.enroll(&name, token, &[]);
                    if !out.status.success() {
                        refusals.lock().unwrap().push(format!(
                            "{name}: {}",
                            String::from_utf8_lossy(&out.stderr).trim()
                        ));
                    }
                }
                enrolling.fetch_sub(1, Ordering::SeqCst);
            });
        }
        // Deployments back to back for as long as enrollments are in flight
        // (at least one).
        loop {
            deployments.push(deploy_once(&c)?);
            if enrolling.load(Ordering::SeqCst) == 0 {
                break;
            }
        }
        Ok(())
    })?;
    eprintln!(
        "{ENROLLMENTS} enrollments ({IN_FLIGHT} in flight) and {} deployments in {:?}",
        deployments.len(),
        started.elapsed()
    );

    let refusals = refusals.into_inner().unwrap();
    assert!(
        refusals.is_empty(),
        "{} refused:\n{}",
        refusals.len(),
        refusals.join("\n")
    );
    assert!(
        deployments.iter().all(|s| s == "succeeded"),
        "deployments: {deployments:?}"
    );
    let listed = c.agents()?;
    assert_eq!(
        listed.len(),
        HOSTS + ENROLLMENTS,
        "every enrolled node is listed"
    );
    // Heartbeats kept being recorded through the storm.
    for i in 1..=HOSTS {
        assert_eq!(
            c.agent_state(&format!("app-{i}")).as_deref(),
            Some("connected")
        );
    }
    let log = c.proc.as_ref().unwrap().log_text();
    assert!(
        !log.contains("database is locked"),
        "the controller log says `database is locked`:\n{}",
        log.lines()
            .filter(|l| l.contains("locked"))
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        !log.contains("store unavailable"),
        "store unavailable in the log"
    );
    Ok(())
}
