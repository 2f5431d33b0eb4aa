//! Issue 11, point 3: log injection. A node name carrying a newline, sent
//! with a bogus token over the real enrollment TLS/TCP exchange, must not
//! forge a line in the controller's log, in either `--log-format`.

use anyhow::Result;
use std::process::Command;
use std::time::Duration;
use vesemir_testkit::fleet::{bin, http_get_status, wait_for, Controller, ControllerOptions, Proc};

const NAME: &str = "x\nFORGED line: agent enrolled admin=true";

/// Starts `serve` with `--log-format FORMAT` and waits for `/readyz`.
fn start(c: &mut Controller, format: &str) -> Result<()> {
    let mut cmd = Command::new(bin("vesemir-controller"));
    cmd.args(["serve", "--log-format", format, "--config"])
        .arg(c.data_dir.join("controller.toml"))
        .env("RUST_LOG", "info,vesemir_controller=debug");
    let log = c.root.path().join(format!("controller-{format}.log"));
    c.pass_sockets(&mut cmd);
    c.proc = Some(Proc::spawn("controller", cmd, log)?);
    let url = format!("{}/readyz", c.url);
    let proc = c.proc.as_mut().expect("just set");
    wait_for("controller /readyz", Duration::from_secs(20), || {
        if !proc.is_running() {
            return Some(Err(anyhow::anyhow!(
                "controller exited:\n{}",
                proc.log_text()
            )));
        }
        http_get_status(&url).filter(|s| *s == 200).map(|_| Ok(()))
    })?
}

/// Enrolls `NAME` with a bogus token and waits until the refusal is logged.
fn forged_enrollment(c: &Controller) -> Result<String> {
    let out = c.enroll(NAME, "bogus-token", &[]);
    assert!(!out.status.success(), "a bogus token must be refused");
    let proc = c.proc.as_ref().expect("started");
    wait_for(
        "enrollment refused in the log",
        Duration::from_secs(10),
        || {
            let log = proc.log_text();
            log.contains("enrollment refused").then_some(log)
        },
    )
}

#[test]
fn a_newline_in_a_node_name_cannot_forge_a_text_log_line() -> Result<()> {
    let mut c = Controller::init(ControllerOptions::default())?;
    start(&mut c, "text")?;
    let log = forged_enrollment(&c)?;
    for line in log.lines().filter(|l| !l.is_empty()) {
        assert!(
            line.starts_with(|ch: char| ch.is_ascii_digit()),
            "every text log line must begin with a timestamp, got {line:?} in:\n{log}"
        );
        assert!(!line.starts_with("FORGED"), "forged line in:\n{log}");
    }
    assert!(
        log.contains(" WARN vesemir_controller::enroll: enrollment refused "),
        "the message must stay bare, as with the default formatter:\n{log}"
    );
    assert!(
        log.contains(r"node=x\nFORGED line"),
        "the node name must be logged escaped:\n{log}"
    );
    Ok(())
}

#[test]
fn a_newline_in_a_node_name_cannot_forge_a_json_log_line() -> Result<()> {
    let mut c = Controller::init(ControllerOptions::default())?;
    start(&mut c, "json")?;
    let log = forged_enrollment(&c)?;
    let mut seen = false;
    for line in log.lines().filter(|l| !l.is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?} in:\n{log}"));
        if v["node"] == NAME {
            seen = true;
        }
    }
    assert!(
        seen,
        "the node name must be logged intact in a field:\n{log}"
    );
    Ok(())
}
