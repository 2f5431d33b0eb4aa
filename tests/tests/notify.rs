//! Issue 12, point 1: systemd readiness and watchdog. The real controller
//! and agent talk to a notify socket this test owns (what systemd would
//! pass as `NOTIFY_SOCKET`), a socket file for the controller and an
//! abstract-namespace `@name` for the agent; and `systemd-analyze verify`
//! accepts the repository's unit files.

use anyhow::{bail, Context, Result};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use vesemir_testkit::fleet::{
    bin, http_get_status, repo, Agent, Controller, ControllerOptions, Proc,
};

/// The systemd end of the notify protocol: receives datagrams.
struct NotifySocket {
    sock: UnixDatagram,
    seen: Vec<String>,
}

impl NotifySocket {
    fn bind_path(path: &Path) -> Result<NotifySocket> {
        Ok(NotifySocket {
            sock: UnixDatagram::bind(path)?,
            seen: Vec::new(),
        })
    }

    fn bind_abstract(name: &str) -> Result<NotifySocket> {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        Ok(NotifySocket {
            sock: UnixDatagram::bind_addr(&addr)?,
            seen: Vec::new(),
        })
    }

    /// Receives until a message satisfies `want` or `timeout` passes.
    fn until(
        &mut self,
        what: &str,
        timeout: Duration,
        want: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "no notify message {what} within {timeout:?}; got {:#?}",
                    self.seen
                );
            }
            self.sock.set_read_timeout(Some(left))?;
            match self.sock.recv(&mut buf) {
                Ok(n) => {
                    let msg =
                        String::from_utf8(buf[..n].to_vec()).context("notify message is UTF-8")?;
                    self.seen.push(msg.clone());
                    if want(&msg) {
                        return Ok(msg);
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// `KEY=VALUE` lines of one message.
fn field<'m>(msg: &'m str, key: &str) -> Option<&'m str> {
    msg.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

/// `vesemir-controller serve` with `NOTIFY_SOCKET` and `WATCHDOG_USEC`.
fn serve_notifying(c: &mut Controller, socket: &Path, watchdog_usec: u64) -> Result<()> {
    let mut cmd = Command::new(bin("vesemir-controller"));
    cmd.args(["serve", "--config"])
        .arg(c.data_dir.join("controller.toml"))
        .env("NOTIFY_SOCKET", socket)
        .env("WATCHDOG_USEC", watchdog_usec.to_string())
        .env_remove("WATCHDOG_PID")
        .env("RUST_LOG", "info");
    let log = c.root.path().join("controller-notify.log");
    c.pass_sockets(&mut cmd);
    c.proc = Some(Proc::spawn("controller", cmd, log)?);
    Ok(())
}

#[test]
fn controller_reports_ready_only_when_serving_then_status_and_watchdog() -> Result<()> {
    let mut c = Controller::init(ControllerOptions::default())?;
    let socket = c.root.path().join("notify.sock");
    let mut sd = NotifySocket::bind_path(&socket)?;
    // 200 ms watchdog: pings every 100 ms.
    serve_notifying(&mut c, &socket, 200_000)?;

    let ready = sd.until("READY=1", Duration::from_secs(20), |m| {
        field(m, "READY") == Some("1")
    })?;
    // READY=1 comes after the API listens and the database is migrated:
    // /readyz (which pings the database) answers at once.
    assert_eq!(
        http_get_status(&format!("{}/readyz", c.url)),
        Some(200),
        "READY=1 was sent before the controller could serve"
    );
    let status = field(&ready, "STATUS").expect("READY carries a STATUS");
    assert!(
        status.contains("0 agents connected") && status.contains("0 deployments running"),
        "{status}"
    );
    // Several pings, each with the current status.
    let t0 = Instant::now();
    for _ in 0..3 {
        let ping = sd.until("WATCHDOG=1", Duration::from_secs(5), |m| {
            field(m, "WATCHDOG") == Some("1")
        })?;
        assert!(field(&ping, "STATUS").is_some(), "{ping:?}");
    }
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "3 pings at a 100 ms period took {:?}: WATCHDOG_USEC is not honoured",
        t0.elapsed()
    );

    // An agent connects: the status says so.
    let token = c.enrollment_token(1)?;
    let _agent = c.enroll_and_run("web-1", &token)?;
    sd.until("STATUS with 1 agent", Duration::from_secs(20), |m| {
        field(m, "STATUS").is_some_and(|s| s.contains("1 agents connected"))
    })?;

    // SIGTERM: STOPPING=1 before it exits.
    let st = c
        .proc
        .as_mut()
        .expect("started")
        .terminate(Duration::from_secs(15))?;
    assert!(st.success(), "controller exit: {st:?}");
    sd.until("STOPPING=1", Duration::from_secs(1), |m| {
        field(m, "STOPPING") == Some("1")
    })?;
    Ok(())
}

#[test]
fn agent_reports_ready_when_backing_off_and_when_connected_on_an_abstract_socket() -> Result<()> {
    let mut c = Controller::init(ControllerOptions::default())?;
    c.start()?;
    let out = c.enroll("web-1", &c.enrollment_token(1)?, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The controller goes away: the agent starts without it.
    c.proc
        .as_mut()
        .expect("started")
        .terminate(Duration::from_secs(15))?;
    Agent::set_config(&c.agent_dir("web-1"), "reconnect_cap", "\"1s\"")?;

    let name = format!(
        "vesemir-test-notify-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    );
    let mut sd = NotifySocket::bind_abstract(&name)?;
    let mut agent = Agent::start_with_env(
        c.agent_dir("web-1"),
        "web-1",
        &[
            ("NOTIFY_SOCKET", format!("@{name}")),
            ("WATCHDOG_USEC", "400000".to_string()),
        ],
    )?;
    let ready = sd.until("READY=1 while backing off", Duration::from_secs(20), |m| {
        field(m, "READY") == Some("1")
    })?;
    let status = field(&ready, "STATUS").unwrap_or_default();
    assert!(status.contains("not connected"), "{ready:?}");
    sd.until("WATCHDOG=1", Duration::from_secs(5), |m| {
        field(m, "WATCHDOG") == Some("1")
    })?;

    c.start()?;
    // Backoff capped at 1s: connected within a few seconds.
    sd.until("READY=1 connected", Duration::from_secs(20), |m| {
        field(m, "STATUS").is_some_and(|s| s.starts_with("connected to"))
    })?;
    let st = agent.proc.terminate(Duration::from_secs(15))?;
    assert!(st.success(), "agent exit: {st:?}");
    sd.until("STOPPING=1", Duration::from_secs(1), |m| {
        field(m, "STOPPING") == Some("1")
    })?;
    Ok(())
}

/// A temp copy of a unit with `ExecStart=`'s binary pointed at the built
/// one: `systemd-analyze verify` checks that the binary exists, and on a CI
/// machine nothing is in /usr/bin. Everything else is the unit as shipped.
fn unit_copy(dir: &Path, unit: &str, binary: &str) -> Result<PathBuf> {
    let text = std::fs::read_to_string(repo().join("systemd").join(unit))?;
    let from = format!("ExecStart=/usr/bin/{binary} ");
    assert_eq!(
        text.matches(&from).count(),
        1,
        "{unit}: expected one {from:?}"
    );
    let to = format!("ExecStart={} ", bin(binary).display());
    let path = dir.join(unit);
    std::fs::write(&path, text.replace(&from, &to))?;
    Ok(path)
}

/// `systemd-analyze verify` exit status and its complaints. It exits 0 on
/// unknown keys and bad values (it only warns), so both count.
fn verify(unit: &Path) -> Result<(bool, String)> {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(unit)
        .output()
        .context("systemd-analyze (Debian package systemd) must be installed")?;
    Ok((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

#[test]
fn systemd_analyze_verify_accepts_both_units() -> Result<()> {
    let dir = tempfile::tempdir()?;
    for (unit, binary) in [
        ("vesemir-controller.service", "vesemir-controller"),
        ("vesemir-agent.service", "vesemir-agent"),
    ] {
        let path = unit_copy(dir.path(), unit, binary)?;
        let (ok, complaints) = verify(&path)?;
        assert!(ok && complaints.trim().is_empty(), "{unit}:\n{complaints}");
        let text = std::fs::read_to_string(&path)?;
        assert!(
            text.contains("\nType=notify\n"),
            "{unit} is not Type=notify"
        );
        assert!(
            text.contains("\nWatchdogSec="),
            "{unit} has no WatchdogSec="
        );

        // The check can fail: a typo is reported.
        let broken = dir.path().join(format!("broken-{unit}"));
        std::fs::write(&broken, text.replace("Type=notify", "Type=notifyy"))?;
        let (_, complaints) = verify(&broken)?;
        assert!(
            complaints.contains("notifyy"),
            "{unit}: verify missed a bad Type=:\n{complaints}"
        );
    }
    Ok(())
}

#[test]
fn a_bad_notify_socket_is_logged_and_the_controller_serves_anyway() -> Result<()> {
    let mut c = Controller::init(ControllerOptions::default())?;
    let mut cmd = Command::new(bin("vesemir-controller"));
    cmd.args(["serve", "--log-format", "text", "--config"])
        .arg(c.data_dir.join("controller.toml"))
        .env("NOTIFY_SOCKET", "relative/notify.sock")
        .env("RUST_LOG", "info");
    let log = c.root.path().join("controller-bad-notify.log");
    c.pass_sockets(&mut cmd);
    c.proc = Some(Proc::spawn("controller", cmd, log)?);
    let url = format!("{}/readyz", c.url);
    let proc = c.proc.as_mut().expect("started");
    vesemir_testkit::fleet::wait_for("controller /readyz", Duration::from_secs(20), || {
        if !proc.is_running() {
            return Some(Err(anyhow::anyhow!(
                "controller exited:\n{}",
                proc.log_text()
            )));
        }
        (http_get_status(&url) == Some(200)).then_some(Ok(()))
    })??;
    let text = proc.log_text();
    assert!(
        text.contains("not reporting readiness to systemd")
            && text.contains("relative/notify.sock")
            && text.contains("neither an absolute path nor @abstract-name"),
        "the bad NOTIFY_SOCKET is not explained:\n{text}"
    );
    Ok(())
}
