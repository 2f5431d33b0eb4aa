//! `/metrics` after real work (issue 12.3): a rolling deployment over a real
//! HAProxy (drained through `lb-1`'s agent) to real agents over QUIC, then
//! the exposition is read back, its counts checked against that
//! deployment's hosts, and its format checked by Debian's `promtool check
//! metrics`. systemd is not PID 1 here: agents restart the sample apps
//! through the recording `systemctl` stand-in. The Chef series are checked
//! against a real goiardi, with a refused enrollment alongside.

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;
use vesemir_testkit::demo::{HaproxyMode, LocalFleet};
use vesemir_testkit::fleet::{Controller, ControllerOptions};
use vesemir_testkit::goiardi::Goiardi;

/// Parsed samples: `name{labels}` exactly as written → value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn value(s: &BTreeMap<String, f64>, key: &str) -> Result<f64> {
    s.get(key).copied().with_context(|| {
        let near: Vec<&String> = s
            .keys()
            .filter(|k| k.starts_with(key.split('{').next().unwrap_or(key)))
            .collect();
        format!("no sample {key}; samples of that family: {near:?}")
    })
}

async fn scrape(url: &str) -> Result<String> {
    let r = reqwest::Client::new()
        .get(format!("{url}/metrics"))
        .timeout(Duration::from_secs(10))
        .send()
        .await?;
    ensure!(r.status() == 200, "/metrics answered {}", r.status());
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    ensure!(
        ct.starts_with("text/plain; version=0.0.4"),
        "content type {ct}"
    );
    Ok(r.text().await?)
}

/// `promtool check metrics` (format and naming lint) on `text`.
fn promtool(text: &str) -> Result<()> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("promtool (Debian package prometheus) is needed for this test")?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "promtool check metrics failed ({}):\n{}{}\n--- exposition ---\n{text}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_shows_in_metrics_and_promtool_accepts_the_format() -> Result<()> {
    let hosts = 3;
    let f = LocalFleet::builder()
        .app_hosts(hosts)
        .haproxy(HaproxyMode::Required)
        .start()
        .await?;
    let cs = f.publish("1.0.0")?;
    let body = f.deploy_request(&cs);
    let id = f.submit(&body).await?;
    let d = f.wait_deployment(&id, Duration::from_secs(60)).await?;
    ensure!(d["status"] == "succeeded", "{d:#}\n{}", f.logs(40));
    // A request the router does not know, and one without a token.
    let http = reqwest::Client::new();
    let nope = http
        .get(format!("{}/v1/no/such/{id}", f.url()))
        .bearer_auth(f.token())
        .send()
        .await?;
    assert_eq!(nope.status(), 404);
    let unauth = http.get(format!("{}/v1/agents", f.url())).send().await?;
    assert_eq!(unauth.status(), 401);

    let started = std::time::Instant::now();
    let text = scrape(f.url()).await?;
    println!(
        "/metrics after one deployment: {} bytes, {} lines, scraped in {:?}",
        text.len(),
        text.lines().count(),
        started.elapsed()
    );
    let s = samples(&text);
    let n = hosts as f64;
    // The deployment and each of its hosts.
    assert_eq!(
        value(&s, "vesemir_deployments_total{status=\"succeeded\"}")?,
        1.0
    );
    assert_eq!(
        value(
            &s,
            "vesemir_deployment_duration_seconds_count{status=\"succeeded\"}"
        )?,
        1.0
    );
    assert!(
        value(
            &s,
            "vesemir_deployment_duration_seconds_sum{status=\"succeeded\"}"
        )? > 0.0
    );
    assert_eq!(
        value(&s, "vesemir_host_runs_total{result=\"succeeded\"}")?,
        n
    );
    assert_eq!(
        value(&s, "vesemir_host_runs_total{result=\"failed\"}")?,
        0.0
    );
    assert_eq!(
        value(
            &s,
            "vesemir_host_run_duration_seconds_count{result=\"succeeded\"}"
        )?,
        n
    );
    // Every host drained then put back in rotation on the one HAProxy VM.
    assert_eq!(
        value(
            &s,
            "vesemir_haproxy_actions_total{action=\"drain\",result=\"ok\"}"
        )?,
        n,
        "{:#}",
        d["haproxy_actions"]
    );
    assert!(
        value(
            &s,
            "vesemir_haproxy_actions_total{action=\"ready\",result=\"ok\"}"
        )? + value(
            &s,
            "vesemir_haproxy_actions_total{action=\"weight\",result=\"ok\"}"
        )? >= n
    );
    // Every host's playbook plus the HAProxy jobs went over job streams.
    assert!(value(&s, "vesemir_job_streams_total")? >= 2.0 * n);
    assert_eq!(
        value(&s, "vesemir_job_streams_open")?,
        0.0,
        "every job stream of the finished deployment was closed"
    );
    assert_eq!(value(&s, "vesemir_deployments_running")?, 0.0);
    // The fleet: the app hosts and lb-1, enrolled and connected.
    assert_eq!(value(&s, "vesemir_agents{state=\"connected\"}")?, n + 1.0);
    assert_eq!(
        value(&s, "vesemir_enrollments_total{result=\"enrolled\"}")?,
        n + 1.0
    );
    assert!(value(&s, "vesemir_heartbeats_total")? > 0.0);
    // Store operations the deployment went through.
    for op in [
        "insert_deployment",
        "start_deployment",
        "host_finished",
        "append_logs",
    ] {
        let c = value(
            &s,
            &format!("vesemir_store_query_duration_seconds_count{{op=\"{op}\"}}"),
        )?;
        assert!(c >= 1.0, "{op}: {c}");
    }
    assert!(
        value(
            &s,
            "vesemir_store_query_duration_seconds_count{op=\"host_finished\"}"
        )? >= n
    );
    // API requests by route template and status; never the raw path.
    assert!(
        value(
            &s,
            "vesemir_api_requests_total{method=\"POST\",route=\"/v1/deployments\",status=\"202\"}"
        )? >= 1.0
    );
    assert!(
        value(
            &s,
            "vesemir_api_requests_total{method=\"GET\",route=\"/v1/deployments/{id}\",status=\"200\"}"
        )? >= 1.0
    );
    assert!(
        value(
            &s,
            "vesemir_api_requests_total{method=\"GET\",route=\"unmatched\",status=\"404\"}"
        )? >= 1.0
    );
    assert!(
        value(
            &s,
            "vesemir_api_requests_total{method=\"GET\",route=\"/v1/agents\",status=\"401\"}"
        )? >= 1.0
    );
    assert!(!text.contains(&id), "a deployment id leaked into a label");
    promtool(&text)?;
    Ok(())
}

// A plain test: the harness's Controller::start blocks on its own runtime.
#[test]
fn chef_requests_are_timed_and_their_errors_counted() -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let g = rt.block_on(Goiardi::start())?;
    let mut c = Controller::init(ControllerOptions::default())?;
    let cfg = c.data_dir.join("controller.toml");
    let mut text = std::fs::read_to_string(&cfg)?;
    text.push_str(&format!(
        "\n[chef]\nserver_url = {:?}\nclient_name = \"admin\"\nclient_key = {:?}\nsign_version = \"1.3\"\ntimeout = \"2s\"\n",
        g.url(),
        g.admin_key_path().display().to_string(),
    ));
    std::fs::write(&cfg, text)?;
    c.start()?;
    // An enrollment with a token the controller never issued is refused.
    let made_up = format!("vsm_enr_{}", "0".repeat(48));
    let out = c.enroll("intruder", &made_up, &[]);
    assert!(!out.status.success(), "a made-up token enrolled");
    rt.block_on(chef_checks(&g, &c))
}

async fn chef_checks(g: &Goiardi, c: &Controller) -> Result<()> {
    let http = reqwest::Client::new();
    let resolve = || async {
        http.post(format!("{}/v1/inventory/resolve", c.url))
            .bearer_auth(&c.token)
            .json(&json!({"tags": ["app:none"]}))
            .timeout(Duration::from_secs(20))
            .send()
            .await
    };
    let ok = resolve().await?;
    assert_eq!(ok.status(), 200, "{:?}", ok.text().await);
    // A Chef server that stops answering: the call hits its 2 s deadline.
    g.pause()?;
    let slow = resolve().await?;
    let status = slow.status();
    let body: Value = slow.json().await.unwrap_or_default();
    assert_eq!(status, 502, "{body}");
    g.resume()?;

    let text = scrape(&c.url).await?;
    let s = samples(&text);
    assert!(value(&s, "vesemir_chef_request_duration_seconds_count")? >= 2.0);
    assert!(
        value(&s, "vesemir_chef_request_duration_seconds_sum")? >= 1.9,
        "the timed-out request took its deadline"
    );
    assert_eq!(
        value(&s, "vesemir_chef_request_errors_total{kind=\"timeout\"}")?,
        1.0
    );
    assert_eq!(
        value(&s, "vesemir_enrollments_total{result=\"refused\"}")?,
        1.0
    );
    assert_eq!(
        value(&s, "vesemir_enrollments_total{result=\"enrolled\"}")?,
        0.0
    );
    assert_eq!(
        value(
            &s,
            "vesemir_api_requests_total{method=\"POST\",route=\"/v1/inventory/resolve\",status=\"502\"}"
        )?,
        1.0
    );
    promtool(&text)?;
    Ok(())
}
