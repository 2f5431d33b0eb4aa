//! Deployments that do not simply succeed (issue 5): a host failing its
//! health check (continue within `max_fail_percentage`, abort beyond it),
//! cancel, idempotent retries, one deployment per application and
//! environment at a time, and bad requests. Real controller, agents, HAProxy
//! and sample apps; systemd is not PID 1 here, so the agents restart apps
//! through the recording `systemctl` stand-in. Each test has its own
//! [`LocalFleet`].

use anyhow::{ensure, Result};
use serde_json::{json, Value};
use std::time::Duration;
use vesemir_testkit::demo::{HaproxyMode, LocalFleet};

const DEPLOY: Duration = Duration::from_secs(60);

async fn fleet(hosts: usize, haproxy: HaproxyMode) -> Result<LocalFleet> {
    LocalFleet::builder()
        .app_hosts(hosts)
        .haproxy(haproxy)
        .start()
        .await
}

async fn deploy_v1(f: &LocalFleet) -> Result<()> {
    let cs = f.publish("1.0.0")?;
    let id = f.submit(&f.deploy_request(&cs)).await?;
    let d = f.wait_deployment(&id, DEPLOY).await?;
    ensure!(d["status"] == "succeeded", "v1: {d}\n{}", f.logs(40));
    if f.haproxy().is_some() {
        f.wait_all_in_rotation(Duration::from_secs(10)).await?;
    }
    Ok(())
}

fn host<'a>(d: &'a Value, name: &str) -> &'a Value {
    d["hosts"]
        .as_array()
        .and_then(|a| a.iter().find(|h| h["name"] == name))
        .unwrap_or(&Value::Null)
}

/// Replaces the value following `flag` in a flag list.
fn set_flag(flags: &mut [String], flag: &str, value: &str) {
    let i = flags.iter().position(|f| f == flag).expect("flag present");
    flags[i + 1] = value.to_string();
}

/// `vesemir deploy` as a process: exit code and the deployment it made.
async fn cli_deploy(f: &LocalFleet, flags: &[String]) -> Result<(Option<i32>, Value, String)> {
    let mut cmd = f.cli_command()?;
    cmd.arg("deploy").args(flags).arg("--follow");
    let out = tokio::task::spawn_blocking(move || cmd.output()).await??;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Value = f
        .api()
        .json(f.api().req(
            reqwest::Method::GET,
            "/v1/deployments?application=demo&environment=demo&limit=1",
        ))
        .await?;
    let id = list["deployments"][0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let d = f.wait_deployment(&id, DEPLOY).await?;
    Ok((out.status.code(), d, text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unhealthy_host_stays_in_maint_and_the_deployment_continues_to_failed() -> Result<()> {
    let f = fleet(5, HaproxyMode::Required).await?;
    deploy_v1(&f).await?;
    f.host("app-3").unwrap().break_release("2.0.0")?;
    let cs = f.publish("2.0.0")?;
    let mut flags = f.deploy_flags(&cs);
    set_flag(&mut flags, "--max-fail-percentage", "50");
    flags.extend(["--var".into(), "health_retries=3".into()]);
    let (code, d, out) = cli_deploy(&f, &flags).await?;

    assert_eq!(d["status"], "failed", "{d}\n{out}");
    assert_ne!(code, Some(0), "the CLI must exit non-zero:\n{out}");
    assert_eq!(host(&d, "app-3")["status"], "failed", "{d}");
    assert!(!host(&d, "app-3")["error"].is_null(), "{d}");
    for name in ["app-1", "app-2", "app-4", "app-5"] {
        assert_eq!(host(&d, name)["status"], "succeeded", "{name}: {d}");
    }
    let rows = f.servers_state().await?;
    for r in &rows {
        if r.name == "app-3" {
            assert!(
                r.is_maint(),
                "the failed server must stay in maint: {rows:?}"
            );
        } else {
            assert!(r.in_rotation() && r.weight == 100, "{rows:?}");
        }
    }
    let stored = f.deployment(d["id"].as_str().unwrap()).await?;
    assert_eq!(stored["status"], "failed");
    assert_eq!(stored["summary"]["failed"], 1, "{stored}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unhealthy_host_aborts_the_deployment_at_max_fail_percentage_0() -> Result<()> {
    let f = fleet(5, HaproxyMode::Required).await?;
    deploy_v1(&f).await?;
    f.host("app-1").unwrap().break_release("2.0.0")?;
    let cs = f.publish("2.0.0")?;
    let mut flags = f.deploy_flags(&cs);
    flags.extend(["--var".into(), "health_retries=3".into()]);
    let (code, d, out) = cli_deploy(&f, &flags).await?;

    assert_eq!(d["status"], "aborted", "{d}\n{out}");
    assert_ne!(code, Some(0), "the CLI must exit non-zero:\n{out}");
    assert_eq!(host(&d, "app-1")["status"], "failed", "{d}");
    let skipped: Vec<&Value> = d["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["status"] == "skipped")
        .collect();
    assert!(
        !skipped.is_empty(),
        "hosts after the failure must be skipped: {d}"
    );
    for h in &skipped {
        let name = h["name"].as_str().unwrap();
        assert!(h["started_at"].is_null(), "{name} was started: {d}");
        // Never touched: only v1's restart.
        assert_eq!(f.host(name).unwrap().restarts(), 1, "{name}");
    }
    let rows = f.servers_state().await?;
    for r in &rows {
        if r.name == "app-1" {
            assert!(r.is_maint(), "{rows:?}");
        } else {
            assert!(r.in_rotation(), "{rows:?}");
        }
    }
    assert_eq!(
        f.deployment(d["id"].as_str().unwrap()).await?["status"],
        "aborted"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_mid_way_lets_hosts_in_flight_finish_and_starts_no_new_one() -> Result<()> {
    let f = fleet(5, HaproxyMode::Required).await?;
    deploy_v1(&f).await?;
    let cs = f.publish("2.0.0")?;
    let mut body = f.deploy_request(&cs);
    body["concurrency"] = json!(1);
    body["max_unavailable"] = json!(1);
    body["haproxy"]["sleep_seconds"] = json!(2);
    let id = f.submit(&body).await?;
    let at_cancel = f
        .wait_deployment_until(&id, "the second host running", DEPLOY, |d| {
            d["summary"]["succeeded"] == 1 && d["summary"]["running"] == 1
        })
        .await?;
    let (status, v) = {
        let resp = f
            .api()
            .req(
                reqwest::Method::POST,
                &format!("/v1/deployments/{id}/cancel"),
            )
            .send()
            .await?;
        (resp.status().as_u16(), resp.json::<Value>().await?)
    };
    assert_eq!(status, 202, "{v}");
    let d = f.wait_deployment(&id, DEPLOY).await?;
    assert_eq!(d["status"], "cancelled", "{d}\n{}", f.logs(30));

    let in_flight: Vec<&str> = at_cancel["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["status"] == "running")
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    for h in d["hosts"].as_array().unwrap() {
        let name = h["name"].as_str().unwrap();
        let was = &host(&at_cancel, name)["status"];
        if in_flight.contains(&name) || *was == "succeeded" {
            assert_eq!(h["status"], "succeeded", "{name} was in flight: {d}");
        } else {
            assert_eq!(h["status"], "skipped", "{name} started after cancel: {d}");
            assert_eq!(f.host(name).unwrap().restarts(), 1, "{name}");
        }
    }
    assert!(d["summary"]["skipped"].as_u64() >= Some(2), "{d}");
    f.wait_all_in_rotation(Duration::from_secs(5)).await?;
    // Cancelling a finished deployment: 409.
    let resp = f
        .api()
        .req(
            reqwest::Method::POST,
            &format!("/v1/deployments/{id}/cancel"),
        )
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 409);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_returns_the_same_deployment_and_a_second_deploy_gets_409() -> Result<()> {
    let f = fleet(3, HaproxyMode::Required).await?;
    let cs = f.publish("1.0.0")?;
    let mut body = f.deploy_request(&cs);
    body["concurrency"] = json!(1);
    body["haproxy"]["sleep_seconds"] = json!(2);

    let (s1, v1) = f.post_deployment(&body, Some("retry-me")).await?;
    let (s2, v2) = f.post_deployment(&body, Some("retry-me")).await?;
    assert_eq!(s1, 202, "{v1}");
    assert_eq!(s2, 200, "{v2}");
    assert_eq!(v1["id"], v2["id"]);
    let id = v1["id"].as_str().unwrap();

    // Another deploy of the same app and environment while it runs: 409
    // naming the running one.
    let (s3, v3) = f.post_deployment(&body, None).await?;
    assert_eq!(s3, 409, "{v3}");
    assert_eq!(v3["error"]["code"], "deployment_running", "{v3}");
    assert!(v3.to_string().contains(id), "{v3}");
    assert!(
        f.deployment(id).await?["status"] != "succeeded",
        "the race was lost: the deployment ended too soon"
    );

    let d = f.wait_deployment(id, DEPLOY).await?;
    assert_eq!(d["status"], "succeeded", "{d}");
    let list: Value = f
        .api()
        .json(
            f.api()
                .req(reqwest::Method::GET, "/v1/deployments?application=demo"),
        )
        .await?;
    assert_eq!(list["total"], 1, "{list}");
    for h in f.hosts() {
        assert_eq!(h.restarts(), 1, "{}", h.name);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_422_naming_the_field_and_nothing_is_stored() -> Result<()> {
    let f = fleet(1, HaproxyMode::Required).await?;
    let cs = f.publish("1.0.0")?;
    let good = f.deploy_request(&cs);
    type Edit = fn(&mut Value);
    let cases: [(&str, Edit); 6] = [
        ("concurrency", |b| b["concurrency"] = json!(0)),
        ("playbook", |b| b["playbook"] = json!("nope.yml")),
        ("changeset.sha256", |b| {
            b["changeset"].as_object_mut().unwrap().remove("sha256");
        }),
        ("haproxy.weights", |b| {
            b["haproxy"]["weights"] = json!([10, 150])
        }),
        ("haproxy.weights", |b| {
            b["haproxy"]["weights"] = json!([0, 100])
        }),
        ("selector", |b| b["selector"] = json!({})),
    ];
    let mut wrong = Vec::new();
    for (field, edit) in cases {
        let mut body = good.clone();
        edit(&mut body);
        let (status, v) = f.post_deployment(&body, None).await?;
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        if status != 422 || !msg.starts_with(field) {
            wrong.push(format!("{field}: {status} {v}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "want 422 with a message starting with the field name:\n{}",
        wrong.join("\n")
    );
    let list: Value = f
        .api()
        .json(f.api().req(reqwest::Method::GET, "/v1/deployments"))
        .await?;
    assert_eq!(list["total"], 0, "nothing may be stored: {list}");
    // The good one still goes through.
    let id = f.submit(&good).await?;
    assert_eq!(f.wait_deployment(&id, DEPLOY).await?["status"], "succeeded");
    Ok(())
}
