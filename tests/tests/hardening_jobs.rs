//! Issue 11, point 5: an ad-hoc job's result is never lost. `vesemir agents
//! run` shows the job id before anything else; when the controller dies
//! mid-run the CLI says what happened and how to reattach; `vesemir agents
//! job NAME ID [--follow]` fetches the result from the agent's journal
//! through the (restarted) controller; a frozen agent's timeout says "agent
//! stopped responding". Real controller and agent processes; the playbook
//! runs real `sleep` processes.

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use vesemir_testkit::fleet::{bin, wait_for, Agent, Controller, ControllerOptions};

/// A playbook that takes a while: two tasks, so a follower joining late
/// still sees live events of the second.
const SLOW: &str = "name: slow
tasks:
  - name: First nap
    command: sleep {{ nap }}
  - name: Second nap
    command: sleep {{ nap }}
";

/// A controller (with `quic_idle_timeout` if given) and agent `app-1`
/// whose playbook dir holds `slow.yml`.
fn setup(idle_timeout: Option<&str>) -> Result<(Controller, Agent)> {
    let mut c = Controller::init(ControllerOptions::default())?;
    if let Some(t) = idle_timeout {
        let path = c.data_dir.join("controller.toml");
        let text: String = std::fs::read_to_string(&path)?
            .lines()
            .map(|l| {
                if l.starts_with("quic_idle_timeout") {
                    format!("quic_idle_timeout = \"{t}\"\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        std::fs::write(&path, text)?;
    }
    c.start()?;
    let token = c.enrollment_token(1)?;
    let playbooks = c.root.path().join("playbooks");
    std::fs::create_dir_all(&playbooks)?;
    std::fs::write(playbooks.join("slow.yml"), SLOW)?;
    let out = c.enroll(
        "app-1",
        &token,
        &["--playbook-dir", playbooks.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let agent = Agent::start(c.agent_dir("app-1"), "app-1")?;
    wait_for("agent connected", Duration::from_secs(10), || {
        (c.agent_state("app-1").as_deref() == Some("connected")).then_some(())
    })?;
    Ok((c, agent))
}

/// Starts `vesemir agents run app-1 slow.yml` and returns it with the job
/// id it printed on its first line.
fn start_run(c: &Controller, nap: &str) -> Result<(Child, String, Vec<String>)> {
    let mut child = Command::new(bin("vesemir"))
        .args(["agents", "run", "app-1", "slow.yml", "--var"])
        .arg(format!("nap={nap}"))
        .env("VESEMIR_CONFIG", c.data_dir.join("cli.toml"))
        .env_remove("VESEMIR_URL")
        .env_remove("VESEMIR_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped"));
    let mut seen = Vec::new();
    // The job id comes first; then wait for the first task to start so the
    // job is really running on the agent.
    let mut job_id = None;
    for _ in 0..20 {
        let mut line = String::new();
        if lines.read_line(&mut line)? == 0 {
            break;
        }
        if job_id.is_none() {
            // "[app-1] job <id> started; …"
            job_id = line
                .split_whitespace()
                .skip_while(|w| *w != "job")
                .nth(1)
                .map(str::to_string);
            if job_id.is_none() {
                bail!("the first line of `agents run` has no job id: {line:?}");
            }
        }
        seen.push(line.clone());
        if line.contains("TASK [First nap]") {
            break;
        }
    }
    let job_id = job_id.context("`agents run` printed nothing")?;
    // Keep draining stdout so the CLI never blocks on a full pipe.
    let rest = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = lines.read_to_string(&mut s);
        s
    });
    std::mem::forget(rest);
    Ok((child, job_id, seen))
}

fn wait_exit(child: &mut Child, within: Duration) -> Result<(std::process::ExitStatus, String)> {
    let status = wait_for("the CLI to exit", within, || {
        child.try_wait().ok().flatten()
    })?;
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("piped")
        .read_to_string(&mut err)?;
    Ok((status, err))
}

#[test]
fn a_run_cut_by_a_dying_controller_is_reattached_through_the_journal() -> Result<()> {
    let (mut c, _agent) = setup(None)?;
    let (mut child, job_id, seen) = start_run(&c, "3")?;
    assert!(
        seen[0].contains(&format!("vesemir agents job app-1 {job_id} --follow")),
        "the first line tells how to reattach: {seen:?}"
    );
    c.proc.as_mut().expect("started").kill9();
    let (status, stderr) = wait_exit(&mut child, Duration::from_secs(15))?;
    assert!(!status.success());
    assert!(
        stderr.contains("lost the connection to the controller"),
        "the CLI says what happened: {stderr}"
    );
    assert!(
        stderr.contains(&format!("vesemir agents job app-1 {job_id} --follow")),
        "the CLI says how to reattach: {stderr}"
    );
    assert!(
        !stderr.contains("error decoding response body"),
        "no raw transport error: {stderr}"
    );

    // Restarted controller; the agent reconnects; the job is still running
    // or done on the agent, and its journal answers through the controller.
    c.start()?;
    wait_for("agent reconnected", Duration::from_secs(15), || {
        (c.agent_state("app-1").as_deref() == Some("connected")).then_some(())
    })?;
    let out = c.cli(&["agents", "job", "app-1", &job_id, "--follow"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("app-1 : succeeded ok=2 changed=2 failed=0 skipped=0"),
        "{stdout}"
    );
    let out = c.cli(&["agents", "job", "app-1", &job_id, "--output", "json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(v["job_id"], job_id.as_str());
    assert_eq!(v["status"], "succeeded");
    assert_eq!(v["stats"]["changed"], 2);

    // A job id the journal never saw: a clear 404, not "succeeded".
    let out = c.cli(&[
        "agents",
        "job",
        "app-1",
        "0190c5a8-0000-7000-8000-000000000000",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("has no record of job"), "{stderr}");
    Ok(())
}

#[test]
fn follow_joins_a_running_job_and_streams_its_live_events() -> Result<()> {
    let (c, _agent) = setup(None)?;
    let (mut child, job_id, _) = start_run(&c, "2")?;
    // A second CLI attaches while the first task runs.
    let out = c.cli(&["agents", "job", "app-1", &job_id, "--follow"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("[app-1] TASK [Second nap]"), "{stdout}");
    assert!(
        stdout.contains("app-1 : succeeded ok=2 changed=2"),
        "{stdout}"
    );
    let (status, _) = wait_exit(&mut child, Duration::from_secs(15))?;
    assert!(status.success());
    Ok(())
}

#[test]
fn a_frozen_agent_times_out_as_stopped_responding() -> Result<()> {
    let (c, agent) = setup(Some("3s"))?;
    let (mut child, job_id, _) = start_run(&c, "30")?;
    let pid = nix::unistd::Pid::from_raw(agent.proc.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP)?;
    let result = wait_exit(&mut child, Duration::from_secs(20));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT)?;
    let (status, stderr) = result?;
    assert!(!status.success());
    assert!(stderr.contains("agent stopped responding"), "{stderr}");
    assert!(!stderr.contains("invalid job stream"), "{stderr}");
    assert!(
        stderr.contains(&format!("vesemir agents job app-1 {job_id}")),
        "{stderr}"
    );
    Ok(())
}
