//! Issue 11, point 6: node names are case-folded and canonical. `WEB-1` and
//! `web-1.` are the same node as `web-1`: they cannot enroll as a second
//! node next to it, and the API finds the node by any spelling. Real
//! controller and agent processes.

use anyhow::Result;
use std::time::Duration;
use vesemir_testkit::fleet::{wait_for, Agent, Controller, ControllerOptions};

#[test]
fn spellings_of_an_enrolled_name_are_the_same_node() -> Result<()> {
    let mut c = Controller::init(ControllerOptions::default())?;
    c.start()?;
    let token = c.enrollment_token(5)?;

    let out = c.enroll("web-1", &token, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for other in ["WEB-1", "web-1.", "Web-1."] {
        let out = c.enroll(other, &token, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{other:?} enrolled as a node of its own next to web-1"
        );
        assert!(
            stderr.contains("node web-1 is already enrolled"),
            "{other:?}: {stderr}"
        );
    }
    let names: Vec<String> = c
        .agents()?
        .iter()
        .map(|a| a["name"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(names, ["web-1"]);
    Ok(())
}

#[test]
fn a_name_given_in_capitals_enrolls_canonical_and_connects() -> Result<()> {
    let mut c = Controller::init(ControllerOptions::default())?;
    c.start()?;
    let token = c.enrollment_token(1)?;
    let out = c.enroll("DB-7.", &token, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _agent = Agent::start(c.agent_dir("DB-7."), "db-7")?;
    wait_for("db-7 connected", Duration::from_secs(10), || {
        (c.agent_state("db-7").as_deref() == Some("connected")).then_some(())
    })?;
    // The API finds it by any spelling, and shows the canonical name.
    for spelling in ["db-7", "DB-7", "db-7."] {
        let out = c.cli(&["agents", "show", spelling, "--output", "json"]);
        assert!(
            out.status.success(),
            "agents show {spelling}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        assert_eq!(v["name"], "db-7", "agents show {spelling}");
    }
    // Names that cannot be made canonical are refused, before the token is
    // used: the same token still enrolls a valid name afterwards.
    let token = c.enrollment_token(1)?;
    let out = c.enroll("db..7", &token, &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid node name \"db..7\""), "{stderr}");
    let out = c.enroll("db-8", &token, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
