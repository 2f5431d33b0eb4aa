//! API schema fuzzing (issue 11.9): schemathesis generates requests for
//! every operation in the controller's own `/v1/openapi.json` (examples,
//! coverage, fuzzing and stateful phases) against a real controller
//! process, once with the admin token and once without. Checked: no
//! response >= 500 (`not_a_server_error`, and again here from the log),
//! every error in the JSON error shape (`json_error_shape` in
//! `tests/schema_fuzz/vesemir_checks.py`), enough requests made, and the
//! controller alive and answering afterwards.
//!
//! Needs schemathesis (`pip install schemathesis`; `.ci/run` installs it).
//! Without it the test prints `SKIPPED: …` and returns, except under CI
//! (`CI` set), where that is a failure. `VESEMIR_SCHEMA_FUZZ_EXAMPLES`
//! sets examples per operation and phase (default 10: about a thousand
//! requests per run); the longer run in the report used more.

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Instant;
use vesemir_testkit::fleet::{http_get_status, repo, Controller, ControllerOptions};

fn schemathesis() -> Option<String> {
    let ok = Command::new("st")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    ok.then(|| "st".to_string())
}

/// One schemathesis run; returns the (status, method path) of every
/// response it got.
fn run(
    st: &str,
    c: &Controller,
    label: &str,
    token: Option<&str>,
    examples: u32,
) -> Result<Vec<(u16, String)>> {
    let log = c.root.path().join(format!("schemathesis-{label}.log"));
    let mut cmd = Command::new(st);
    cmd.args(["run", &format!("{}/v1/openapi.json", c.url)])
        .args(["--checks", "not_a_server_error,json_error_shape"])
        .args(["--max-examples", &examples.to_string()])
        .args(["--request-timeout", "10", "--workers", "2", "--no-color"])
        .args(["--report-dir"])
        .arg(c.root.path().join(format!("report-{label}")))
        // Its example database and reports go to the temp dir, not the tree.
        .current_dir(c.root.path())
        .env("SCHEMATHESIS_HOOKS", "vesemir_checks")
        .env("PYTHONPATH", repo().join("tests/schema_fuzz"))
        .env("VESEMIR_SCHEMA_FUZZ_LOG", &log);
    if let Some(t) = token {
        cmd.args(["--header", &format!("Authorization: Bearer {t}")]);
    }
    let started = Instant::now();
    let out = cmd.output().context("run schemathesis")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Vec<(u16, String)> = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (status, what) = l.split_once(' ')?;
            Some((status.parse().ok()?, what.to_string()))
        })
        .collect();
    let summary: String = text
        .lines()
        .skip_while(|l| !l.contains("SUMMARY"))
        .collect::<Vec<_>>()
        .join("\n");
    eprintln!(
        "schemathesis ({label}): {} responses in {:?}\n{summary}",
        seen.len(),
        started.elapsed()
    );
    if !out.status.success() {
        // A failed check is a FAILURES section. An ERRORS section alone is
        // schemathesis failing inside itself (seen: hypothesis' "Inconsistent
        // results" while generating a body for POST /v1/deployments, from a
        // Python AST error): no request or response is involved, the
        // responses it did get are still checked below from the log.
        let tool_error_only = !text.contains(" FAILURES ")
            && text.contains(" ERRORS ")
            && text.contains("Runtime Error");
        if !tool_error_only {
            bail!("schemathesis ({label}) found problems:\n{text}");
        }
        eprintln!("WARNING: schemathesis ({label}) had an internal error (not a response from the controller); its responses are still checked:\n{text}");
    }
    Ok(seen)
}

#[test]
fn generated_requests_get_no_5xx_and_every_error_is_json() -> Result<()> {
    let Some(st) = schemathesis() else {
        if std::env::var_os("CI").is_some() {
            bail!(
                "schemathesis is not installed (pip install schemathesis); CI must run this test"
            );
        }
        eprintln!(
            "SKIPPED: schema fuzzing: schemathesis is not installed (pip install schemathesis)"
        );
        println!("SKIPPED: schema fuzzing: schemathesis is not installed");
        return Ok(());
    };
    let mut c = Controller::init(ControllerOptions::default())?;
    // A static inventory: without one, deployment routes answer 503
    // inventory_unavailable by design, which is not what is tested here.
    let inv = c.root.path().join("inventory.toml");
    std::fs::write(
        &inv,
        "[[hosts]]\nname = \"web-1\"\naddress = \"127.0.0.1\"\ntags = [\"app:web\"]\nenvironment = \"prod\"\n",
    )?;
    let cfg = c.data_dir.join("controller.toml");
    let t = std::fs::read_to_string(&cfg)?;
    std::fs::write(
        &cfg,
        format!("inventory = {:?}\n{t}", inv.display().to_string()),
    )?;
    c.start()?;
    let examples: u32 = std::env::var("VESEMIR_SCHEMA_FUZZ_EXAMPLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);

    let token = c.token.clone();
    let mut all = run(&st, &c, "authenticated", Some(&token), examples)?;
    all.extend(run(&st, &c, "anonymous", None, examples)?);

    let mut by_status: BTreeMap<u16, usize> = BTreeMap::new();
    for (s, _) in &all {
        *by_status.entry(*s).or_default() += 1;
    }
    eprintln!("responses by status: {by_status:?}");
    let server_errors: Vec<&(u16, String)> = all.iter().filter(|(s, _)| *s >= 500).collect();
    assert!(server_errors.is_empty(), "5xx responses: {server_errors:?}");
    let floor = 50 * examples as usize;
    assert!(
        all.len() >= floor,
        "only {} requests were made (expected at least {floor})",
        all.len()
    );
    // Authenticated requests got past authentication somewhere.
    assert!(
        all.iter().any(|(s, _)| (200..300).contains(s)),
        "no request succeeded: {by_status:?}"
    );

    // Alive and answering, with the same token.
    let proc = c.proc.as_mut().expect("started");
    assert!(
        proc.is_running(),
        "the controller died:\n{}",
        proc.log_text()
    );
    assert_eq!(http_get_status(&format!("{}/healthz", c.url)), Some(200));
    assert_eq!(http_get_status(&format!("{}/readyz", c.url)), Some(200));
    let out = c.cli(&["agents", "list", "--output", "json"]);
    assert!(
        out.status.success(),
        "agents list after fuzzing: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
