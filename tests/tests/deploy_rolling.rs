//! Rolling deployments end to end (issue 5): a real controller, real agents
//! over QUIC, a real HAProxy drained through `lb-1`'s agent, real sample
//! apps restarted by deploy.yml. systemd is not PID 1 here: every agent's
//! service manager is the recording `systemctl` stand-in. Each test builds
//! its own [`LocalFleet`] (own dir, free ports).

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use vesemir_testkit::demo::traffic::{RotationSampler, Traffic};
use vesemir_testkit::demo::{HaproxyMode, LocalFleet};

const DEPLOY: Duration = Duration::from_secs(60);

async fn fleet(hosts: usize) -> Result<LocalFleet> {
    LocalFleet::builder()
        .app_hosts(hosts)
        .haproxy(HaproxyMode::Required)
        .start()
        .await
}

/// Deploys `version` with the fleet's request (adjusted by `tweak`) and
/// waits for the end.
async fn deploy(f: &LocalFleet, version: &str, tweak: impl FnOnce(&mut Value)) -> Result<Value> {
    let cs = f.publish(version)?;
    let mut body = f.deploy_request(&cs);
    tweak(&mut body);
    let id = f.submit(&body).await?;
    f.wait_deployment(&id, DEPLOY).await
}

/// Fails with the deployment and the fleet's logs unless `status` matches.
fn expect_status(f: &LocalFleet, d: &Value, status: &str) -> Result<()> {
    ensure!(
        d["status"] == status,
        "expected {status}, got:\n{}\n{}",
        serde_json::to_string_pretty(d)?,
        f.logs(40)
    );
    Ok(())
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

/// RFC 3339 → Unix seconds.
fn ts(v: &Value) -> Result<f64> {
    let s = v
        .as_str()
        .with_context(|| format!("not a timestamp: {v}"))?;
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)?;
    Ok(t.unix_timestamp_nanos() as f64 / 1e9)
}

fn action<'a>(d: &'a Value, host: &str, name: &str) -> Result<&'a Value> {
    d["haproxy_actions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["host"] == host && a["action"] == name)
        .with_context(|| format!("no `{name}` action for {host} in {}", d["haproxy_actions"]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_deploy_of_five_hosts_loses_no_request() -> Result<()> {
    let f = fleet(5).await?;
    let d1 = deploy(&f, "1.0.0", |_| {}).await?;
    expect_status(&f, &d1, "succeeded")?;
    f.wait_all_in_rotation(Duration::from_secs(10)).await?;

    let h = f.haproxy().expect("haproxy").clone();
    let traffic = Traffic::start(h.frontend, 4, Duration::from_millis(5));
    let sampler = RotationSampler::start(
        h.socket.clone(),
        h.backend.clone(),
        Duration::from_millis(20),
    );
    let d2 = deploy(&f, "2.0.0", |b| {
        b["concurrency"] = json!(2);
        b["max_unavailable"] = json!(2);
    })
    .await;
    let report = traffic.stop().await;
    let rotation = sampler.stop().await;
    let d2 = d2?;
    expect_status(&f, &d2, "succeeded")?;

    assert!(
        d2["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["status"] == "succeeded"),
        "{d2}"
    );
    let versions = f.versions().await;
    assert!(
        versions.iter().all(|v| v.as_deref() == Some("2.0.0")),
        "{versions:?}"
    );
    assert!(
        report.sent > 100,
        "too little traffic to mean anything: {report:?}"
    );
    assert_eq!(report.failed, 0, "failed requests: {report:?}");
    assert!(
        report.versions.contains_key("1.0.0") && report.versions.contains_key("2.0.0"),
        "{report:?}"
    );
    assert!(rotation.samples > 20, "{rotation:?}");
    assert!(
        rotation.max_out >= 1,
        "the sampler never saw a server out: {rotation:?}"
    );
    assert!(
        rotation.max_out <= 2,
        "more than max_unavailable out of rotation: {rotation:?}"
    );
    // Every server back at full weight, nothing left drained.
    let rows = f.servers_state().await?;
    assert!(
        rows.iter().all(|r| r.in_rotation() && r.weight == 100),
        "{rows:?}"
    );
    // One restart per host per deploy.
    for host in f.hosts() {
        assert_eq!(
            host.restarts(),
            2,
            "{}: {:?}",
            host.name,
            host.systemctl_calls()
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_waits_for_a_long_request_until_it_ends_or_the_degradation_time() -> Result<()> {
    // One app host, so the long request surely goes to the drained server.
    let f = fleet(1).await?;
    expect_status(&f, &deploy(&f, "1.0.0", |_| {}).await?, "succeeded")?;
    f.wait_all_in_rotation(Duration::from_secs(10)).await?;
    let url = format!("http://{}/slow", f.haproxy().unwrap().frontend);
    let http = reqwest::Client::new();

    // 1. A 3 s request in flight, degradation 20 s: the drain waits for it.
    let slow = {
        let (http, url) = (http.clone(), url.clone());
        tokio::spawn(async move {
            let r = http.get(format!("{url}?ms=3000")).send().await;
            (r.map(|r| r.status().as_u16()), unix_now())
        })
    };
    // The request is in HAProxy before the deploy starts.
    wait_scur(&f, 1).await?;
    let d = deploy(&f, "2.0.0", |b| {
        b["concurrency"] = json!(1);
        b["haproxy"]["degradation_seconds"] = json!(20);
    })
    .await?;
    expect_status(&f, &d, "succeeded")?;
    let (status, ended) = slow.await?;
    assert_eq!(status?, 200);
    let drain = ts(&action(&d, "app-1", "drain")?["at"])?;
    let drained = ts(&action(&d, "app-1", "wait_drained")?["at"])?;
    assert!(
        drained >= ended - 0.5,
        "the drain ended at {drained} before the request did ({ended}): {}",
        d["haproxy_actions"]
    );
    assert!(
        drained - drain >= 2.0,
        "waited only {:.2}s",
        drained - drain
    );
    assert!(drained - drain < 15.0, "waited {:.2}s", drained - drain);

    // 2. A 10 s request, degradation 2 s: the drain gives up after ~2 s,
    // before the request ends (the app's graceful stop lets it finish).
    let slow = {
        let (http, url) = (http.clone(), url.clone());
        tokio::spawn(async move {
            let r = http.get(format!("{url}?ms=8000")).send().await;
            (r.map(|r| r.status().as_u16()), unix_now())
        })
    };
    wait_scur(&f, 1).await?;
    let d = deploy(&f, "3.0.0", |b| {
        b["concurrency"] = json!(1);
        b["haproxy"]["degradation_seconds"] = json!(2);
    })
    .await?;
    let (status, ended) = slow.await?;
    expect_status(&f, &d, "succeeded")?;
    let drain = ts(&action(&d, "app-1", "drain")?["at"])?;
    let gave_up = ts(&action(&d, "app-1", "wait_drained")?["at"])?;
    assert!(
        (1.5..6.0).contains(&(gave_up - drain)),
        "gave up after {:.2}s: {}",
        gave_up - drain,
        d["haproxy_actions"]
    );
    assert!(
        gave_up < ended,
        "gave up at {gave_up}, after the request ended at {ended}"
    );
    let _ = status;
    Ok(())
}

/// Polls `show stat` until the single server has `n` current sessions.
async fn wait_scur(f: &LocalFleet, n: u64) -> Result<()> {
    let h = f.haproxy().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let csv = vesemir_testkit::demo::haproxy::command(
            &h.socket,
            &format!("show stat {} 4 -1", h.backend),
        )
        .await?;
        let mut lines = csv.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or("")
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let col = header
            .iter()
            .position(|c| *c == "scur")
            .context("no scur column")?;
        let scur: u64 = lines
            .filter(|l| !l.is_empty())
            .filter_map(|l| l.split(',').nth(col)?.parse::<u64>().ok())
            .sum();
        if scur >= n {
            return Ok(());
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "scur never reached {n}: {csv}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_killed_mid_deployment_resumes_without_running_a_job_twice() -> Result<()> {
    let mut f = fleet(5).await?;
    expect_status(&f, &deploy(&f, "1.0.0", |_| {}).await?, "succeeded")?;
    f.wait_all_in_rotation(Duration::from_secs(10)).await?;

    let cs = f.publish("2.0.0")?;
    let id = f.submit(&f.deploy_request(&cs)).await?;
    // Mid-way: one host done, others still to go.
    f.wait_deployment_until(&id, "one host done and one running", DEPLOY, |d| {
        d["summary"]["succeeded"].as_u64() >= Some(1) && d["summary"]["pending"].as_u64() >= Some(1)
    })
    .await?;
    f.kill_controller();
    f.start_controller().await?;
    let d = f.wait_deployment(&id, DEPLOY).await?;
    expect_status(&f, &d, "succeeded")?;

    let versions = f.versions().await;
    assert!(
        versions.iter().all(|v| v.as_deref() == Some("2.0.0")),
        "{versions:?}"
    );
    for host in f.hosts() {
        // Exactly one restart per deploy: the job did not run twice.
        assert_eq!(
            host.restarts(),
            2,
            "{}: {:?}",
            host.name,
            host.systemctl_calls()
        );
        // And the agent's journal holds one record for this deployment's job.
        let records = std::fs::read_dir(host.agent_dir().join("journal"))?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(&id))
            .count();
        assert_eq!(records, 1, "{}: journal records for {id}", host.name);
    }
    // Nothing left drained or in maint, every weight back to 100%.
    f.wait_all_in_rotation(Duration::from_secs(5)).await?;
    let rows = f.servers_state().await?;
    assert!(
        rows.iter()
            .all(|r| r.weight == 100 && !r.is_drain() && !r.is_maint()),
        "{rows:?}"
    );
    Ok(())
}
