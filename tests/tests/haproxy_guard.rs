//! The capacity guard fails closed (issue 9): a real controller, real
//! agents over QUIC, a real HAProxy read and drained through `lb-1`'s
//! agent. Mid-deploy the HAProxy VM becomes unreadable (its admin socket is
//! moved away, so `lb-1`'s agent answers every HAProxy job with "socket
//! does not exist"): no new host may start after that, the deployment
//! aborts naming the VM, and no server is left drained that the rollout had
//! not already taken. systemd is not PID 1 here: every agent's service
//! manager is the recording `systemctl` stand-in.

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;
use vesemir_testkit::demo::{HaproxyMode, LocalFleet};

const DEPLOY: Duration = Duration::from_secs(90);

fn hosts(d: &Value) -> Vec<&Value> {
    d["hosts"].as_array().into_iter().flatten().collect()
}

fn names_where(d: &Value, pred: impl Fn(&Value) -> bool) -> BTreeSet<String> {
    hosts(d)
        .into_iter()
        .filter(|h| pred(h))
        .filter_map(|h| h["name"].as_str().map(str::to_string))
        .collect()
}

/// Moves a file back where it was when dropped, so a failing assertion
/// does not leave HAProxy without its socket for the fleet's teardown.
struct Moved {
    from: std::path::PathBuf,
    to: std::path::PathBuf,
}

impl Moved {
    fn new(from: &std::path::Path) -> Result<Moved> {
        let to = from.with_extension("hidden");
        std::fs::rename(from, &to).with_context(|| format!("move {}", from.display()))?;
        Ok(Moved {
            from: from.to_path_buf(),
            to,
        })
    }
    fn restore(&self) {
        let _ = std::fs::rename(&self.to, &self.from);
    }
}

impl Drop for Moved {
    fn drop(&mut self) {
        self.restore();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_haproxy_vm_stops_new_hosts_and_aborts_naming_it() -> Result<()> {
    let f = LocalFleet::builder()
        .app_hosts(4)
        .haproxy(HaproxyMode::Required)
        .start()
        .await?;
    // A first deploy so every app runs and every server is up.
    let cs = f.publish("1.0.0")?;
    let id = f.submit(&f.deploy_request(&cs)).await?;
    let d = f.wait_deployment(&id, DEPLOY).await?;
    ensure!(d["status"] == "succeeded", "{d}\n{}", f.logs(40));
    f.wait_all_in_rotation(Duration::from_secs(10)).await?;

    // One host at a time, with a long ramp pause: while the first host
    // ramps, the window is full and nothing else can start, so the cut
    // below falls at a known point.
    let cs = f.publish("2.0.0")?;
    let mut body = f.deploy_request(&cs);
    body["concurrency"] = json!(1);
    body["max_unavailable"] = json!(1);
    body["max_fail_percentage"] = json!(100);
    body["haproxy"]["weights"] = json!([10, 100]);
    body["haproxy"]["sleep_seconds"] = json!(4);
    let id = f.submit(&body).await?;
    let at_cut = f
        .wait_deployment_until(&id, "a host ramping", DEPLOY, |d| {
            hosts(d)
                .iter()
                .any(|h| h["status"] == "running" && h["step"] == "ramping")
        })
        .await?;
    let socket = f.haproxy().context("haproxy")?.socket.clone();
    let moved = Moved::new(&socket)?;
    let started_at_cut = names_where(&at_cut, |h| h["status"] != "pending");
    ensure!(started_at_cut.len() == 1, "{at_cut}");

    let d = f.wait_deployment(&id, DEPLOY).await?;
    moved.restore();

    // Aborted by the guard, naming the VM it could not read.
    ensure!(d["status"] == "aborted", "{d}\n{}", f.logs(40));
    let error = d["error"].as_str().unwrap_or_default();
    ensure!(
        error.contains("lb-1") && error.contains("cannot read the backend"),
        "{error}"
    );
    // No host started after the cut: the others were skipped, never ran.
    let started = names_where(&d, |h| !h["started_at"].is_null());
    ensure!(
        started == started_at_cut,
        "{started:?} vs {started_at_cut:?}"
    );
    let skipped = names_where(&d, |h| h["status"] == "skipped");
    ensure!(skipped.len() == 3, "{d}");
    for name in &skipped {
        let host = f.host(name).context("host")?;
        // Restarted by the first deploy only.
        ensure!(host.restarts() == 1, "{name}: {:?}", host.systemctl_calls());
        let drained = d["haproxy_actions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| a["host"] == name.as_str());
        ensure!(
            !drained,
            "{name} was touched in HAProxy: {}",
            d["haproxy_actions"]
        );
    }
    // The host in flight at the cut finished (its failed ramp step is
    // reported, not fatal): its server is back in rotation at its first
    // weight.
    let ramped = started_at_cut.iter().next().expect("one");
    ensure!(
        names_where(&d, |h| h["status"] == "succeeded").contains(ramped),
        "{d}"
    );
    let failed_weight = d["haproxy_actions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|a| a["host"] == ramped.as_str() && a["action"] == "weight 100%" && a["ok"] == false);
    ensure!(failed_weight, "{}", d["haproxy_actions"]);
    // Nothing is left drained or in maint: the skipped hosts' servers were
    // never taken, the ramped one is ready.
    let rows = f.servers_state().await?;
    ensure!(rows.len() == 4, "{rows:?}");
    for r in &rows {
        ensure!(!r.is_drain() && !r.is_maint(), "{r:?} in {rows:?}");
        if skipped.contains(&r.name) {
            ensure!(r.in_rotation() && r.weight == 100, "{r:?}");
        }
    }
    Ok(())
}
