//! Issue 11, point 6: a second process holding the same key (a cloned VM, a
//! copied data dir) used to take turns with the first silently. The
//! controller now logs a warning naming both addresses and `agents show`
//! exposes it; an agent that merely restarted (kill -9, then up again) is
//! not reported. Real controller and agent processes.

use anyhow::Result;
use std::time::Duration;
use vesemir_testkit::fleet::{wait_for, Agent, Controller, ControllerOptions};

fn show(c: &Controller, name: &str) -> Result<serde_json::Value> {
    let out = c.cli(&["agents", "show", name, "--output", "json"]);
    anyhow::ensure!(
        out.status.success(),
        "agents show: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

#[test]
fn two_processes_with_one_key_are_reported_with_both_addresses() -> Result<()> {
    let mut c = Controller::init(ControllerOptions::default())?;
    c.start()?;
    let token = c.enrollment_token(1)?;
    let mut first = c.enroll_and_run("web-1", &token)?;
    wait_for("web-1 connected", Duration::from_secs(10), || {
        (c.agent_state("web-1").as_deref() == Some("connected")).then_some(())
    })?;

    // A restart of the one process (its old connection still open on the
    // controller) is not a duplicate.
    let old_addr = show(&c, "web-1")?["remote_addr"].clone();
    first.proc.kill9();
    let first = Agent::start(c.agent_dir("web-1"), "web-1")?;
    wait_for("web-1 reconnected", Duration::from_secs(10), || {
        let v = show(&c, "web-1").ok()?;
        (v["state"] == "connected" && v["remote_addr"] != old_addr).then_some(())
    })?;
    // It stays unreported for longer than a displaced process needs to
    // come back (its reconnect backoff is at most 1 s).
    let window = std::time::Instant::now() + Duration::from_secs(2);
    while std::time::Instant::now() < window {
        let v = show(&c, "web-1")?;
        assert!(
            v["duplicate_key"].is_null(),
            "a restart is not a duplicate: {v}"
        );
    }

    // A clone: the same key and certificate in another data dir.
    let clone_dir = c.root.path().join("clone");
    std::fs::create_dir_all(&clone_dir)?;
    for f in std::fs::read_dir(&first.dir)? {
        let f = f?;
        if f.file_type()?.is_file() && f.file_name() != "agent.log" {
            std::fs::copy(f.path(), clone_dir.join(f.file_name()))?;
        }
    }
    Agent::set_config(&clone_dir, "data_dir", &format!("{:?}", clone_dir))?;
    let _clone = Agent::start(clone_dir, "web-1")?;

    let dup = wait_for("duplicate key reported", Duration::from_secs(15), || {
        let v = show(&c, "web-1").ok()?;
        (!v["duplicate_key"].is_null()).then(|| v["duplicate_key"].clone())
    })?;
    let addrs: Vec<&str> = dup["addresses"]
        .as_array()
        .expect("addresses")
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert_eq!(addrs.len(), 2, "{dup}");
    assert_ne!(addrs[0], addrs[1], "{dup}");
    assert!(dup["takeovers"].as_u64().unwrap_or(0) >= 1, "{dup}");

    let log = c.proc.as_ref().expect("started").log_text();
    let warning = log
        .lines()
        .find(|l| l.contains("WARN") && l.contains("two processes hold the key"))
        .unwrap_or_else(|| panic!("no warning in:\n{log}"));
    // Both addresses (each process reconnects from a new port, so these are
    // the pair at the first detection).
    let in_warning: std::collections::BTreeSet<&str> = warning
        .split(|ch: char| ch.is_whitespace() || ch == '=' || ch == ',')
        .filter(|w| w.starts_with("127.0.0.1:"))
        .collect();
    assert_eq!(in_warning.len(), 2, "{warning}");
    // The table view says it too.
    let out = c.cli(&["agents", "show", "web-1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("duplicate key"), "{text}");
    Ok(())
}
