//! The fleet simulator against a real controller, at 200 agents, so it
//! cannot rot: 200 enrollments 64 at once, 200 QUIC connections from one
//! process, heartbeats with facts seen by the API, a no-op fan-out to all
//! 200 in one deployment, a rolling deployment at concurrency 50 whose
//! window the simulator measures, log lines stored, and every certificate
//! renewed over the live connection. No systemctl stand-in: simulated
//! agents run no processes.

use anyhow::{ensure, Result};
use std::sync::atomic::Ordering;
use std::time::Duration;
use vesemir_bench::harness::{deploy_body, hosts, init_controller, Api};
use vesemir_bench::sim::{enroll_all, IdentityCache, SimFleet, SimOptions};

const N: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_simulated_agents_fan_out_roll_and_renew() -> Result<()> {
    let inv = hosts("sim", N, "app:sim");
    // Certificates live 12 s: renewal (at 2/3) happens within the test.
    let mut c = init_controller(&inv, 1, "12s")?;
    vesemir_bench::harness::blocking(|| c.start())?;
    let api = Api::of(&c);
    let ca_pem = std::fs::read_to_string(c.ca())?;
    let names: Vec<String> = inv.iter().map(|h| h.name.clone()).collect();

    let token = api.enrollment_token(N).await?;
    let cache = IdentityCache::new(c.root.path().join("sim-ids"));
    let (ids, report) = enroll_all(c.quic, &ca_pem, &token, &names, 64, Some(&cache)).await?;
    eprintln!("enrolled {} in {:?}", report.enrolled, report.elapsed);
    ensure!(report.refused.is_empty(), "refused: {:?}", report.refused);
    ensure!(ids.len() == N && report.enrolled == N);
    // A second pass finds them all in the cache and enrolls nothing.
    let (again, report) = enroll_all(c.quic, &ca_pem, "no-token", &names, 64, Some(&cache)).await?;
    ensure!(again.len() == N && report.cached == N && report.enrolled == 0);

    let fleet = SimFleet::start(
        SimOptions {
            controller: c.quic,
            server_name: "127.0.0.1".into(),
            agents_per_endpoint: 100,
            reconnect_base: Duration::from_secs(1),
            reconnect_cap: Duration::from_secs(60),
            cache: Some(cache.clone()),
            ca_pem: ca_pem.clone(),
        },
        ids,
    )?;
    fleet
        .wait_connected(N, Duration::from_secs(30))
        .await
        .map_err(anyhow::Error::msg)?;
    // Heartbeats with facts reach the controller.
    vesemir_testkit::haproxy::poll_until(
        "200 agents connected with facts",
        Duration::from_secs(20),
        || {
            let api = api.clone();
            async move {
                let v = api.get("/v1/agents").await.ok()?;
                let ok = v
                    .as_array()?
                    .iter()
                    .filter(|a| a["state"] == "connected" && a["facts"]["os"] == "simulated")
                    .count();
                (ok == N).then_some(())
            }
        },
    )
    .await?;

    // Fan-out: one deployment to all 200.
    let (took, d) = api
        .deploy_and_wait(
            deploy_body(
                "fanout",
                "app:sim",
                "100%".into(),
                "noop.yml",
                serde_json::json!({}),
            ),
            Duration::from_secs(60),
        )
        .await?;
    eprintln!("fan-out of a no-op to {N}: {took:?}");
    ensure!(d["hosts_total"] == N, "{}", d["hosts_total"]);
    let hosts = d["hosts"].as_array().cloned().unwrap_or_default();
    ensure!(hosts.len() == N && hosts.iter().all(|h| h["status"] == "succeeded"));
    ensure!(fleet.stats.jobs_succeeded.load(Ordering::Relaxed) == N as u64);
    ensure!(
        fleet.stats.max_running_jobs.load(Ordering::Relaxed) >= 2,
        "fan-out ran one at a time"
    );

    // Rolling: concurrency 50, 0.2 s of work and 3 log lines per host.
    fleet.stats.reset_max_running();
    let (took, d) = api
        .deploy_and_wait(
            deploy_body(
                "rolling",
                "app:sim",
                50.into(),
                "sleep.yml",
                serde_json::json!({"seconds": "0.2", "lines": "3"}),
            ),
            Duration::from_secs(60),
        )
        .await?;
    let max = fleet.stats.max_running_jobs.load(Ordering::Relaxed);
    eprintln!("rolling {N} at 50, 0.2 s each: {took:?} (ideal 0.8 s), at most {max} at once");
    ensure!(max <= 50, "{max} jobs at once with concurrency 50");
    ensure!(max >= 25, "the window never filled: at most {max} at once");
    ensure!(
        took >= Duration::from_millis(800),
        "faster than the work allows: {took:?}"
    );
    let id = d["id"].as_str().unwrap_or_default();
    let logs = reqwest::Client::new()
        .get(format!("{}/v1/deployments/{id}/logs", api.url))
        .bearer_auth(&api.token)
        .send()
        .await?
        .text()
        .await?;
    let lines = logs
        .lines()
        .filter(|l| l.contains("\"type\":\"log\"") && l.contains("simulated line"))
        .count();
    ensure!(lines == 3 * N, "{lines} log lines stored, want {}", 3 * N);

    // Renewal over the live connection, written back to the cache.
    vesemir_testkit::haproxy::poll_until(
        "every certificate renewed",
        Duration::from_secs(30),
        || {
            let n = fleet.stats.renewals.load(Ordering::Relaxed);
            async move { (n >= N as u64).then_some(()) }
        },
    )
    .await?;
    ensure!(cache.load("sim-00001").is_some());

    let errors = fleet.stats.errors.lock().unwrap().clone();
    ensure!(errors.is_empty(), "simulator errors: {errors:?}");
    fleet.stop().await;
    let log = c.proc.as_ref().unwrap().log_text();
    ensure!(
        !log.contains("database is locked"),
        "`database is locked` in the controller log"
    );
    Ok(())
}
