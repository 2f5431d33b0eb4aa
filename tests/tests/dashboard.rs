//! The fleet dashboard (`/ui`, issue 12.4) in a real headless Chromium
//! driven over WebDriver: a real controller, real agents over QUIC, a real
//! HAProxy drained through `lb-1`'s agent and a finished rolling deployment
//! (systemd is not PID 1 here: the agents restart the sample apps through
//! the recording `systemctl` stand-in). One agent is frozen (SIGSTOP) so it
//! goes stale. The test types the token, finds every enrolled agent with
//! the stale one on top, opens the finished deployment and finds its hosts,
//! HAProxy actions and log, runs its dry run again, and saves screenshots
//! to `target/test-artifacts/`.

use anyhow::{ensure, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;
use vesemir_testkit::browser::{artifacts_dir, Browser};
use vesemir_testkit::demo::{HaproxyMode, LocalFleet};

const UI_WAIT: Duration = Duration::from_secs(20);

/// Text of the page's data parts (not the log, whose lines are the agents'),
/// which must never show a JavaScript placeholder.
const NO_PLACEHOLDERS: &str = "return ['#fleet-pills', '#agents', '#deployments', '#detail-facts', '#detail-hosts', '#detail-actions', '#plan-result']
    .map(s => document.querySelector(s)).filter(Boolean).map(e => e.innerText).join('\\n')
    .split('\\n').filter(l => /\\b(null|undefined|NaN)\\b|\\[object /.test(l));";

async fn no_placeholders(b: &Browser) -> Result<()> {
    let bad = b.eval(NO_PLACEHOLDERS).await?;
    ensure!(
        bad == serde_json::json!([]),
        "placeholders on the page: {bad}"
    );
    Ok(())
}

/// Resumes a SIGSTOPped process even when the test fails half-way.
struct Frozen(i32);

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0), Signal::SIGCONT);
    }
}

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_the_fleet_and_a_finished_deployment() -> Result<()> {
    let hosts = 3; // the scripts below say 3 too
    let f = LocalFleet::builder()
        .app_hosts(hosts)
        .haproxy(HaproxyMode::Required)
        .heartbeat_secs(1)
        .start()
        .await?;
    let cs = f.publish("1.0.0")?;
    let id = f.submit(&f.deploy_request(&cs)).await?;
    let d = f.wait_deployment(&id, Duration::from_secs(60)).await?;
    ensure!(d["status"] == "succeeded", "{d:#}\n{}", f.logs(40));
    let deployed: BTreeSet<String> = d["hosts"]
        .as_array()
        .context("hosts")?
        .iter()
        .filter_map(|h| h["name"].as_str().map(str::to_string))
        .collect();
    ensure!(deployed.len() == hosts, "{d:#}");

    // The page and its assets are static and open; the data is not.
    let http = reqwest::Client::new();
    let page = http.get(format!("{}/ui", f.url())).send().await?;
    assert_eq!(page.status(), 200);
    let csp = page
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let html = page.text().await?;
    assert!(!html.contains("__VESEMIR_VERSION__"), "version filled in");
    for external in ["src=\"http", "href=\"http", "src=\"//", "href=\"//"] {
        assert!(
            !html.contains(external),
            "the page loads nothing from elsewhere"
        );
    }
    for asset in ["/ui/app.js", "/ui/app.css"] {
        let r = http.get(format!("{}{asset}", f.url())).send().await?;
        assert_eq!(r.status(), 200, "{asset}");
    }
    let r = http.get(format!("{}/v1/agents", f.url())).send().await?;
    assert_eq!(r.status(), 401, "data calls need the token");

    // Freeze app-3's agent: its connection stays, its heartbeats stop.
    let stale_host = "app-3";
    let pid = f
        .pids()
        .into_iter()
        .find(|(n, _)| n == &format!("agent {stale_host}"))
        .map(|(_, p)| p)
        .with_context(|| format!("no agent process for {stale_host} in {:?}", f.pids()))?;
    kill(Pid::from_raw(pid), Signal::SIGSTOP)?;
    let frozen = Frozen(pid);

    let b = Browser::start(1600, 1100).await?;
    b.goto(&format!("{}/ui", f.url())).await?;
    // Asked for the token once, before any data is shown.
    b.wait_for(
        "the token dialog",
        UI_WAIT,
        "return document.querySelector('#token-dialog').open && document.querySelector('#main').hidden",
    )
    .await?;
    b.type_into("#token-input", f.token()).await?;
    b.click("#token-submit").await?;

    // Every enrolled agent, and the frozen one stale and on top.
    let agents: Vec<String> = f
        .api()
        .json::<Vec<Value>>(f.api().req(reqwest::Method::GET, "/v1/agents"))
        .await?
        .iter()
        .filter_map(|a| a["name"].as_str().map(str::to_string))
        .collect();
    ensure!(agents.len() == hosts + 1, "{agents:?}");
    let shown = b
        .wait_for(
            "every agent in the table, the frozen one stale on top",
            UI_WAIT,
            &format!(
                "const rows = [...document.querySelectorAll('#agents tbody tr[data-name]')];
                 if (rows.length !== {n} || rows[0].dataset.state !== 'stale') return null;
                 return rows.map(r => r.dataset.name);",
                n = agents.len()
            ),
        )
        .await?;
    let shown: Vec<String> = serde_json::from_value(shown)?;
    assert_eq!(shown[0], stale_host, "{shown:?}");
    assert_eq!(
        shown.iter().cloned().collect::<BTreeSet<_>>(),
        agents.iter().cloned().collect::<BTreeSet<_>>()
    );
    // Same version as the controller everywhere: nothing highlighted.
    let off = b
        .eval("return document.querySelectorAll('#agents td.version.off').length")
        .await?;
    assert_eq!(off, 0);
    // Every real agent runs this very build, so the highlight of another
    // version is checked on the page's own rendering: lb-1's reported
    // version is changed in the page's state (not on the wire), then the
    // next refresh puts it back.
    let off = b
        .eval(
            "ui.agents.find(a => a.name === 'lb-1').version = '0.0.1-old'; renderAgents();
             return [...document.querySelectorAll('#agents td.version.off')].map(td => td.closest('tr').dataset.name)
                 .concat([document.querySelector('#fleet-pills .pill.warn').textContent]);",
        )
        .await?;
    assert_eq!(off, serde_json::json!(["lb-1", "1 other version"]));
    b.wait_for(
        "the next refresh to show lb-1's real version",
        UI_WAIT,
        "return document.querySelectorAll('#agents td.version.off').length === 0",
    )
    .await?;
    // Sorting by name, descending: the stale agent stays pinned on top.
    b.click("#agents th[data-key=\"name\"]").await?;
    b.click("#agents th[data-key=\"name\"]").await?;
    let order = b
        .eval("return [...document.querySelectorAll('#agents tbody tr[data-name]')].map(r => r.dataset.name)")
        .await?;
    assert_eq!(
        order,
        serde_json::json!([stale_host, "lb-1", "app-2", "app-1"]),
        "stale first, then by name descending"
    );
    // The filter narrows the table.
    b.type_into("#agent-filter", "lb-").await?;
    b.wait_for(
        "the filter to leave lb-1 alone",
        UI_WAIT,
        "const r = [...document.querySelectorAll('#agents tbody tr[data-name]')];
         return r.length === 1 && r[0].dataset.name === 'lb-1';",
    )
    .await?;
    b.eval("const i = document.querySelector('#agent-filter'); i.value = ''; i.dispatchEvent(new Event('input')); return true")
        .await?;
    // Kept for this tab only: sessionStorage, no cookie, no localStorage.
    let kept = b
        .eval("return [sessionStorage.getItem('vesemir.token'), localStorage.length, document.cookie]")
        .await?;
    assert_eq!(kept[0], f.token());
    assert_eq!(kept[1], 0);
    assert_eq!(kept[2], "");

    // The finished deployment, then its hosts, HAProxy actions and log.
    b.wait_for(
        "the deployment in the list",
        UI_WAIT,
        &format!("return !!document.querySelector('tr.deployment[data-id=\"{id}\"][data-status=\"succeeded\"]')"),
    )
    .await?;
    b.click(&format!("tr.deployment[data-id=\"{id}\"]")).await?;
    let host_rows = b
        .wait_for(
            "the deployment's hosts",
            UI_WAIT,
            "const r = [...document.querySelectorAll('#detail-hosts tbody tr[data-host]')];
             if (!r.length || document.querySelector('#log').innerText.indexOf('deployment succeeded') < 0) return null;
             return r.map(x => x.dataset.host + ' ' + x.dataset.status);",
        )
        .await?;
    let want: BTreeSet<String> = deployed.iter().map(|h| format!("{h} succeeded")).collect();
    assert_eq!(strings(&host_rows), want);
    let actions = b
        .eval("return document.querySelectorAll('#detail-actions tbody tr').length")
        .await?;
    assert!(
        actions.as_u64().unwrap_or(0) >= hosts as u64 * 3,
        "drain, wait and ready for each host: {actions}"
    );
    // Let the "last seen" of the frozen agent age a little, then keep the picture.
    let dir = artifacts_dir()?;
    no_placeholders(&b).await?;
    let shot = dir.join("dashboard.png");
    b.screenshot(&shot).await?;
    println!("dashboard screenshot: {}", shot.display());

    // The plan of the same request, as it would run now (the dry run).
    b.click("#detail-replan").await?;
    b.click("#plan-run").await?;
    let planned = b
        .wait_for(
            "the dry run's plan",
            UI_WAIT,
            "const r = [...document.querySelectorAll('#plan-result tbody tr td.name')];
             return r.length ? r.map(x => x.textContent) : null;",
        )
        .await?;
    let planned = strings(&planned);
    for h in &deployed {
        assert!(planned.contains(h), "{h} missing from the plan {planned:?}");
    }
    assert!(
        planned.contains("lb-1"),
        "the HAProxy VM is in the plan: {planned:?}"
    );
    let problems = b
        .eval("return (document.querySelector('#plan-result .problems') || {innerText: ''}).innerText")
        .await?;
    // The frozen agent is the plan's problem: it would be reported unreachable.
    assert!(
        problems.as_str().unwrap_or_default().contains(stale_host),
        "{problems}"
    );
    no_placeholders(&b).await?;
    let shot = dir.join("dashboard-plan.png");
    b.screenshot(&shot).await?;
    println!("dashboard plan screenshot: {}", shot.display());
    // Nothing was created by the dry run.
    let list: Value = f
        .api()
        .json(f.api().req(reqwest::Method::GET, "/v1/deployments"))
        .await?;
    assert_eq!(list["total"], 1, "{list}");

    // A deployment that runs while the page is open: it shows up running,
    // its log follows live, and it ends succeeded without a reload.
    drop(frozen);
    let deadline = std::time::Instant::now() + UI_WAIT;
    loop {
        let agents: Vec<Value> = f
            .api()
            .json(f.api().req(reqwest::Method::GET, "/v1/agents"))
            .await?;
        if agents.iter().all(|a| a["state"] == "connected") {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "agents not all connected again: {agents:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    b.click("#plan-close").await?;
    let cs = f.publish("2.0.0")?;
    let mut body = f.deploy_request(&cs);
    // Slow ramp steps, so the page sees it running for a while.
    body["haproxy"]["sleep_seconds"] = 3.into();
    let id2 = f.submit(&body).await?;
    b.wait_for(
        "the new deployment in the list",
        UI_WAIT,
        &format!("return !!document.querySelector('tr.deployment[data-id=\"{id2}\"]')"),
    )
    .await?;
    b.click(&format!("tr.deployment[data-id=\"{id2}\"]"))
        .await?;
    b.wait_for(
        "the running deployment's log to follow live",
        UI_WAIT,
        "return document.querySelector('#log-state').textContent === 'live'
             && document.querySelector('#detail-status').textContent === 'running'
             && document.querySelectorAll('#log .ll').length > 0",
    )
    .await?;
    no_placeholders(&b).await?;
    let shot = dir.join("dashboard-live.png");
    b.screenshot(&shot).await?;
    println!("dashboard live screenshot: {}", shot.display());
    b.wait_for(
        "the deployment to end succeeded on the page",
        Duration::from_secs(90),
        "return document.querySelector('#detail-status').textContent === 'succeeded'
             && document.querySelector('#log').innerText.indexOf('end: succeeded') >= 0
             && document.querySelectorAll('#detail-hosts tbody tr[data-status=\"succeeded\"]').length === 3",
    )
    .await?;
    let d2 = f.wait_deployment(&id2, Duration::from_secs(30)).await?;
    ensure!(d2["status"] == "succeeded", "{d2:#}");
    Ok(())
}
