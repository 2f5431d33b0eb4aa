//! `vesemir rollback`: after v1 and v2, the previous successful changeset
//! (v1) is deployed again through the same rolling path. Real controller,
//! agents, HAProxy and sample apps; systemd is not PID 1 here, so the agents
//! restart apps through the recording `systemctl` stand-in.

use anyhow::{ensure, Result};
use std::time::Duration;
use vesemir_testkit::demo::{HaproxyMode, LocalFleet};

const DEPLOY: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_redeploys_the_previous_successful_changeset() -> Result<()> {
    let f = LocalFleet::builder()
        .app_hosts(3)
        .haproxy(HaproxyMode::Required)
        .start()
        .await?;
    // Nothing to roll back to yet.
    let mut cmd = f.cli_command()?;
    cmd.args(["rollback", "--app", "demo", "--env", "demo", "--detach"]);
    let out = tokio::task::spawn_blocking(move || cmd.output()).await??;
    ensure!(!out.status.success(), "rollback with no history must fail");
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(err.contains("no earlier successful changeset"), "{err}");

    for v in ["1.0.0", "2.0.0"] {
        let cs = f.publish(v)?;
        let id = f.submit(&f.deploy_request(&cs)).await?;
        let d = f.wait_deployment(&id, DEPLOY).await?;
        ensure!(d["status"] == "succeeded", "{v}: {d}\n{}", f.logs(40));
        f.wait_all_in_rotation(Duration::from_secs(10)).await?;
    }
    let versions = f.versions().await;
    ensure!(
        versions.iter().all(|v| v.as_deref() == Some("2.0.0")),
        "{versions:?}"
    );

    let mut cmd = f.cli_command()?;
    cmd.args(["rollback", "--app", "demo", "--env", "demo", "--follow"]);
    let out = tokio::task::spawn_blocking(move || cmd.output()).await??;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success(),
        "rollback failed:\n{text}\n{}",
        f.logs(40)
    );
    ensure!(text.contains("succeeded"), "{text}");
    let versions = f.versions().await;
    ensure!(
        versions.iter().all(|v| v.as_deref() == Some("1.0.0")),
        "after rollback: {versions:?}"
    );
    // The rollback is a deployment of its own, recorded with v1's changeset.
    let list: serde_json::Value = f
        .api()
        .json(f.api().req(
            reqwest::Method::GET,
            "/v1/deployments?application=demo&environment=demo",
        ))
        .await?;
    ensure!(list["total"] == 3, "{list}");
    ensure!(
        list["deployments"][0]["changeset"]["version"] == "1.0.0",
        "{list}"
    );
    Ok(())
}
