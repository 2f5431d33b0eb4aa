//! `vesemir agents run`: the first end-to-end use of the fleet. A real
//! controller and agent; the agent runs the shipped restart.yml against a
//! real sample app. systemd is not PID 1 here: the agent's service manager
//! is the recording `systemctl` stand-in (tests/fixtures/bin/systemctl).

use anyhow::Result;
use std::time::Duration;
use vesemir_testkit::fleet::{free_port, repo, wait_for, Agent, Controller, ControllerOptions};
use vesemir_testkit::haproxy::{systemctl_stand_in, Systemctl};

fn setup() -> Result<(Controller, Agent, Systemctl, u16)> {
    let mut c = Controller::init(ControllerOptions::default())?;
    c.start()?;
    let token = c.enrollment_token(1)?;
    let playbooks = repo().join("playbooks");
    let out = c.enroll(
        "app-1",
        &token,
        &[
            "--playbook-dir",
            playbooks.to_str().unwrap(),
            "--systemctl",
            systemctl_stand_in().to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = free_port().expect("free port");
    let sys = Systemctl::with_sample_app(port)?;
    let agent = Agent::start_with_env(c.agent_dir("app-1"), "app-1", &sys.env())?;
    wait_for("agent connected", Duration::from_secs(5), || {
        (c.agent_state("app-1").as_deref() == Some("connected")).then_some(())
    })?;
    Ok((c, agent, sys, port))
}

#[test]
fn restart_playbook_through_the_controller_shows_output_and_stats() -> Result<()> {
    let (c, _agent, sys, port) = setup()?;
    let health = format!("health_url=http://127.0.0.1:{port}/health");
    let out = c.cli(&[
        "agents",
        "run",
        "app-1",
        "restart.yml",
        "--var",
        "service=app",
        "--var",
        &health,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("[app-1] TASK [Restart the service]"),
        "{stdout}"
    );
    assert!(stdout.contains("[app-1] TASK [Check health]"), "{stdout}");
    assert!(stdout.contains("PLAY RECAP"), "{stdout}");
    assert!(
        stdout.contains("app-1 : succeeded ok=2 changed=1 failed=0 skipped=0"),
        "{stdout}"
    );
    // The stand-in saw the restart, and the app answers.
    let calls = sys.calls()?;
    assert!(
        calls.iter().any(|(_, args)| args == "restart app"),
        "{calls:?}"
    );
    assert_eq!(
        vesemir_testkit::fleet::http_get_status(&format!("http://127.0.0.1:{port}/health")),
        Some(200)
    );

    // JSON events arrive in order: started, task events, finished last.
    let out = c.cli(&[
        "agents",
        "run",
        "app-1",
        "restart.yml",
        "--var",
        "service=app",
        "--var",
        &health,
        "--output",
        "json",
    ]);
    assert!(out.status.success());
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types.first(), Some(&"started"));
    assert_eq!(types.last(), Some(&"finished"));
    let started = types.iter().position(|t| *t == "task_started").unwrap();
    let result = types.iter().position(|t| *t == "task_result").unwrap();
    assert!(started < result);
    Ok(())
}

#[test]
fn failures_are_reported_with_a_non_zero_exit() -> Result<()> {
    let (c, _agent, _sys, port) = setup()?;
    // A health URL nobody answers: the play fails, the CLI exits non-zero.
    let dead = free_port().expect("free port");
    let out = c.cli(&[
        "agents",
        "run",
        "app-1",
        "restart.yml",
        "--var",
        "service=app",
        "--var",
        &format!("health_url=http://127.0.0.1:{dead}/health"),
        "--var",
        "health_retries=2",
        "--var",
        "health_delay=100ms",
    ]);
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("failed=1"), "{stdout}");
    let _ = port;

    // Unknown playbook: the job fails with a clear message.
    let out = c.cli(&["agents", "run", "app-1", "nope.yml"]);
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("nope.yml"), "{stdout}");

    // Not a playbook name: refused by the API before anything is sent.
    let out = c.cli(&["agents", "run", "app-1", "../etc/passwd"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("playbook"));

    // Unknown agent, disconnected agent.
    let out = c.cli(&["agents", "run", "ghost", "restart.yml"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no agent named"));
    Ok(())
}
