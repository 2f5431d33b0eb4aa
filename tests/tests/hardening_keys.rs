//! Key permissions, against the real binaries: a private key readable by
//! group or others stops the daemon with exit 64 and the `chmod` to run, and
//! `vesemir-agent enroll` makes its data dir 0700 whatever the umask.

use anyhow::Result;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use vesemir_testkit::fleet::{bin, Controller, ControllerOptions};

fn chmod(p: &std::path::Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn keys_readable_by_others_are_refused_and_enroll_makes_its_dir_0700() -> Result<()> {
    let mut c = Controller::init(ControllerOptions::default())?;
    c.start()?;
    let token = c.enrollment_token(1)?;

    // Enroll under a permissive umask.
    let dir = c.agent_dir("web-1");
    let out = Command::new("sh")
        .arg("-c")
        .arg("umask 000 && exec \"$0\" \"$@\"")
        .arg(bin("vesemir-agent"))
        .args([
            "enroll",
            "--controller",
            &c.quic.to_string(),
            "--token",
            &token,
        ])
        .arg("--ca-cert")
        .arg(c.ca())
        .args(["--name", "web-1", "--data-dir"])
        .arg(&dir)
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = std::fs::metadata(&dir)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "agent data dir mode {mode:o}");

    // The agent refuses a key others can read.
    let key = dir.join("agent-key.pem");
    assert!(key.is_file());
    chmod(&key, 0o644);
    let out = Command::new(bin("vesemir-agent"))
        .args(["run", "--config"])
        .arg(dir.join("agent.toml"))
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains(&format!("chmod 600 {}", key.display())),
        "{err}"
    );

    // The controller refuses a CA key others can read.
    c.proc
        .take()
        .unwrap()
        .terminate(std::time::Duration::from_secs(10))?;
    let ca_key = c.data_dir.join("ca-key.pem");
    chmod(&ca_key, 0o640);
    let out = Command::new(bin("vesemir-controller"))
        .args(["serve", "--config"])
        .arg(c.data_dir.join("controller.toml"))
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains(&format!("chmod 600 {}", ca_key.display())),
        "{err}"
    );
    // After the chmod it serves again.
    chmod(&ca_key, 0o600);
    c.start()?;
    Ok(())
}
