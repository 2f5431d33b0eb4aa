//! Two controllers on one PostgreSQL (a throwaway cluster from
//! `vesemir_testkit::postgres`): A is `init --database-url postgres://…`, B is
//! `init --join A's data dir`. The admin API token works on both, an
//! enrollment token made on B is spent on A and B alike (one use count),
//! agents enrolled through either are listed by both, and a revocation made
//! on B closes the agent's live connection on A.

use anyhow::{ensure, Result};
use std::time::{Duration, Instant};
use vesemir_testkit::fleet::{wait_for, Agent, Controller, ControllerOptions};
use vesemir_testkit::postgres::Postgres;

fn names(c: &Controller) -> Result<Vec<String>> {
    let mut v: Vec<String> = c
        .agents()?
        .iter()
        .filter_map(|a| a["name"].as_str().map(str::to_owned))
        .collect();
    v.sort();
    Ok(v)
}

#[test]
fn enrollment_revocation_and_api_tokens_work_on_either_of_two_controllers() -> Result<()> {
    let Some(pg) = Postgres::start()? else {
        return Ok(());
    };
    let url = pg.create_database()?;
    let (a, b) = Controller::joined_pair(&url)?;
    ensure!(
        a.token == b.token,
        "the joined controller has the same admin token"
    );
    ensure!(
        std::fs::read(a.ca())? == std::fs::read(b.ca())?,
        "the joined controller has the same CA"
    );
    let b_toml = std::fs::read_to_string(b.data_dir.join("controller.toml"))?;
    ensure!(
        b_toml.contains(&url),
        "B's controller.toml names the shared database:\n{b_toml}"
    );

    // One token, made on B, two uses: one spent on A, one on B, then none.
    let token = b.enrollment_token(2)?;
    let out = a.enroll("web-1", &token, &[]);
    ensure!(
        out.status.success(),
        "enroll via A: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = b.enroll("web-2", &token, &[]);
    ensure!(
        out.status.success(),
        "enroll via B: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = a.enroll("web-3", &token, &[]);
    ensure!(
        !out.status.success(),
        "a third use of a 2-use token was accepted"
    );
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("no uses left"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A node name taken through A can't be enrolled again through B.
    let again = b.enroll("web-1", &b.enrollment_token(1)?, &[]);
    ensure!(!again.status.success(), "web-1 enrolled twice");

    ensure!(names(&a)? == ["web-1", "web-2"], "A lists {:?}", names(&a)?);
    ensure!(names(&b)? == ["web-1", "web-2"], "B lists {:?}", names(&b)?);

    let agent = Agent::start(a.agent_dir("web-1"), "web-1")?;
    wait_for("web-1 connected to A", Duration::from_secs(10), || {
        (a.agent_state("web-1").as_deref() == Some("connected")).then_some(())
    })?;

    // Revoked on B: A drops the live connection (it re-reads revocations
    // every 2 s) and every controller says revoked.
    let out = b.cli(&["agents", "revoke", "web-1"]);
    ensure!(
        out.status.success(),
        "revoke on B: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let at = Instant::now();
    wait_for(
        "A closes web-1's connection",
        Duration::from_secs(10),
        || agent.proc.log_text().contains("revoked").then_some(()),
    )?;
    eprintln!(
        "a revocation on B closed the connection on A in {:?}",
        at.elapsed()
    );
    ensure!(a.agent_state("web-1").as_deref() == Some("revoked"));
    ensure!(b.agent_state("web-1").as_deref() == Some("revoked"));
    drop(agent);
    drop(b);
    drop(a);
    Ok(())
}

#[test]
fn joining_a_controller_on_sqlite_is_refused_with_what_to_do() -> Result<()> {
    let a = Controller::init(ControllerOptions::default())?;
    let a_dir = a.data_dir.to_string_lossy().into_owned();
    let err = match Controller::init_with_args(ControllerOptions::default(), &["--join", &a_dir]) {
        Ok(_) => anyhow::bail!("joined a SQLite controller"),
        Err(e) => e.to_string(),
    };
    ensure!(
        err.contains("PostgreSQL") && err.contains("--database-url"),
        "{err}"
    );
    Ok(())
}

#[test]
fn init_refuses_a_database_url_it_cannot_use() -> Result<()> {
    let err = match Controller::init_with_args(
        ControllerOptions::default(),
        &["--database-url", "mysql://db/vesemir"],
    ) {
        Ok(_) => anyhow::bail!("mysql:// accepted"),
        Err(e) => e.to_string(),
    };
    ensure!(
        err.contains("postgres://") && err.contains("sqlite://"),
        "{err}"
    );
    Ok(())
}
