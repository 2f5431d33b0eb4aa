//! An agent with two controller addresses (`controllers` in agent.toml) on
//! two controllers sharing one PostgreSQL: it connects to one; that one
//! stops (SIGTERM: it closes agent connections with `shutdown`), and the
//! agent is connected to the other within 10 s.
//!
//! Not covered here: a controller killed with SIGKILL. The agent notices
//! that only at QUIC's idle timeout (30 s, `agent::session::transport_config`),
//! so it moves over after up to 30 s plus the backoff.

use anyhow::{ensure, Result};
use std::time::{Duration, Instant};
use vesemir_testkit::fleet::{wait_for, Agent, Controller};
use vesemir_testkit::postgres::Postgres;

#[test]
fn an_agent_moves_to_the_other_controller_within_10s_when_its_controller_stops() -> Result<()> {
    let Some(pg) = Postgres::start()? else {
        return Ok(());
    };
    let url = pg.create_database()?;
    let (mut a, mut b) = Controller::joined_pair(&url)?;

    let token = a.enrollment_token(1)?;
    let out = a.enroll("web-1", &token, &[]);
    ensure!(
        out.status.success(),
        "enroll: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = a.agent_dir("web-1");
    Agent::set_config(&dir, "controllers", &format!("[\"{}\"]", b.quic))?;
    let agent = Agent::start(dir, "web-1")?;

    let connected = |c: &Controller| c.agent_state("web-1").as_deref() == Some("connected");
    // It starts on a random one of the two.
    let on_a = wait_for("web-1 connected to A or B", Duration::from_secs(10), || {
        if connected(&a) {
            Some(true)
        } else if connected(&b) {
            Some(false)
        } else {
            None
        }
    })?;
    let (from, to) = if on_a { (&mut a, &b) } else { (&mut b, &a) };
    from.proc
        .as_mut()
        .expect("started")
        .terminate(Duration::from_secs(10))?;
    let stopped = Instant::now();
    wait_for(
        "web-1 connected to the other controller",
        Duration::from_secs(10),
        || connected(to).then_some(()),
    )?;
    eprintln!(
        "agent moved from {} to {} in {:?}",
        if on_a { "A" } else { "B" },
        if on_a { "B" } else { "A" },
        stopped.elapsed()
    );
    drop(agent);
    Ok(())
}
