//! SIGTERM to the controller while a host's playbook runs: the controller
//! exits 0 without marking anything failed, and on restart the deployment
//! resumes and completes; no job runs twice, nothing is left drained. Real
//! controller, agents, HAProxy and sample apps; systemd is not PID 1 here,
//! so the agents restart apps through the recording `systemctl` stand-in.

use anyhow::{ensure, Result};
use std::time::Duration;
use vesemir_testkit::demo::{HaproxyMode, LocalFleet};

const DEPLOY: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_playbook_then_restart_completes_the_deployment() -> Result<()> {
    let mut f = LocalFleet::builder()
        .app_hosts(4)
        .haproxy(HaproxyMode::Required)
        .start()
        .await?;
    let cs = f.publish("1.0.0")?;
    let id = f.submit(&f.deploy_request(&cs)).await?;
    let d = f.wait_deployment(&id, DEPLOY).await?;
    ensure!(d["status"] == "succeeded", "v1: {d}\n{}", f.logs(40));
    f.wait_all_in_rotation(Duration::from_secs(10)).await?;

    let cs = f.publish("2.0.0")?;
    let id = f.submit(&f.deploy_request(&cs)).await?;
    f.wait_deployment_until(&id, "a host in its playbook", DEPLOY, |d| {
        d["hosts"]
            .as_array()
            .is_some_and(|hs| hs.iter().any(|h| h["step"] == "deploying"))
    })
    .await?;
    let status = f.stop_controller(Duration::from_secs(15));
    ensure!(
        status.and_then(|s| s.code()) == Some(0),
        "controller exit: {status:?}\n{}",
        f.logs(40)
    );

    f.start_controller().await?;
    // Right after the restart nothing is marked failed by the shutdown.
    let now = f.deployment(&id).await?;
    ensure!(
        now["hosts"]
            .as_array()
            .is_some_and(|hs| hs.iter().all(|h| h["status"] != "failed")),
        "a host was failed by the shutdown: {now:#}"
    );
    let d = f.wait_deployment(&id, DEPLOY).await?;
    ensure!(d["status"] == "succeeded", "{d:#}\n{}", f.logs(60));
    let versions = f.versions().await;
    ensure!(
        versions.iter().all(|v| v.as_deref() == Some("2.0.0")),
        "{versions:?}"
    );
    for host in f.hosts() {
        ensure!(
            host.restarts() == 2,
            "{}: the job ran twice? {:?}",
            host.name,
            host.systemctl_calls()
        );
    }
    f.wait_all_in_rotation(Duration::from_secs(10)).await?;
    let rows = f.servers_state().await?;
    ensure!(
        rows.iter()
            .all(|r| r.weight == 100 && !r.is_drain() && !r.is_maint()),
        "{rows:?}"
    );
    Ok(())
}
