//! `vesemir inventory resolve` against a real controller with a static
//! inventory: hosts, addresses and the agent state of each (a mixed set).

use anyhow::Result;
use std::time::Duration;
use vesemir_testkit::fleet::{wait_for, Controller, ControllerOptions};

#[test]
fn resolve_prints_hosts_and_their_agent_state() -> Result<()> {
    let mut c = Controller::init(ControllerOptions::default())?;
    let inv = c.root.path().join("inventory.toml");
    std::fs::write(
        &inv,
        r#"
[[hosts]]
name = "pay-1"
address = "10.0.0.1"
tags = ["app:payments"]
environment = "production"
[[hosts]]
name = "pay-2"
address = "10.0.0.2"
tags = ["app:payments"]
environment = "production"
[[hosts]]
name = "pay-3"
address = "10.0.0.3"
tags = ["app:payments"]
environment = "production"
[[hosts]]
name = "shop-1"
address = "10.0.1.1"
tags = ["app:shop"]
environment = "production"
"#,
    )?;
    let cfg = c.data_dir.join("controller.toml");
    let text = std::fs::read_to_string(&cfg)?;
    std::fs::write(
        &cfg,
        format!("inventory = {:?}\n{text}", inv.display().to_string()),
    )?;
    c.start()?;
    let token = c.enrollment_token(2)?;
    let _a1 = c.enroll_and_run("pay-1", &token)?;
    // pay-2 enrolled but never started: disconnected. pay-3: no agent.
    assert!(c.enroll("pay-2", &token, &[]).status.success());
    wait_for("pay-1 connected", Duration::from_secs(5), || {
        (c.agent_state("pay-1").as_deref() == Some("connected")).then_some(())
    })?;

    let out = c.cli(&[
        "inventory",
        "resolve",
        "--env",
        "production",
        "--tags",
        "app:payments",
        "--output",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let got: Vec<(String, String, String)> = v["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["name"].as_str().unwrap().to_string(),
                h["address"].as_str().unwrap().to_string(),
                h["agent"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("pay-1".into(), "10.0.0.1".into(), "connected".into()),
            ("pay-2".into(), "10.0.0.2".into(), "disconnected".into()),
            ("pay-3".into(), "10.0.0.3".into(), "none".into()),
        ]
    );
    let table = c.cli(&["inventory", "resolve", "--tags", "app:payments"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("no agent") && text.contains("disconnected") && text.contains("3 host(s)"),
        "{text}"
    );

    // An empty selector is refused with a message naming what to give.
    let out = c.cli(&["inventory", "resolve"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty selector"));
    // A raw query needs Chef.
    let out = c.cli(&["inventory", "resolve", "--query", "name:*"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("Chef"));
    Ok(())
}
