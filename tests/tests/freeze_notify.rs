//! Issue 14, points 5 and 6: freeze windows and webhooks, end to end. A real
//! controller (restarted with `[[freeze]]` / `[notify]` added to its
//! controller.toml), real agents, real deployments; the webhook receivers
//! are small HTTP servers in the test.

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use vesemir_controller::notify::{verify, WebhookBody};
use vesemir_testkit::demo::{HaproxyMode, LocalFleet};

const DEPLOY: Duration = Duration::from_secs(60);
const SECRET: &str = "freeze-notify-test-secret-0123456789";
/// A deployer (non-admin) token inserted into the controller's database.
const DEPLOYER_TOKEN: &str = "vsm_dep_freeze_notify_test_token";

/// A fleet of two app hosts (no HAProxy) whose controller runs with `extra`
/// appended to its controller.toml, the webhook secret written, and a
/// deployer token named `ci`.
async fn fleet(extra: &str) -> Result<LocalFleet> {
    let mut f = LocalFleet::builder()
        .app_hosts(2)
        .haproxy(HaproxyMode::Off)
        .start()
        .await?;
    f.stop_controller(Duration::from_secs(10));
    let dd = f.data_dir().to_path_buf();
    let secret = dd.join("webhook.secret");
    std::fs::write(&secret, format!("{SECRET}\n"))?;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600))?;
    let toml = dd.join("controller.toml");
    let mut text = std::fs::read_to_string(&toml)?;
    text.push('\n');
    text.push_str(extra);
    std::fs::write(&toml, text)?;
    let cfg = vesemir_controller::config::ControllerConfig::load(&toml)
        .with_context(|| format!("the test's controller.toml addition:\n{extra}"))?;
    let store = vesemir_controller::store::Store::connect(&cfg.database_url()).await?;
    store
        .insert_api_token(
            "ci",
            &vesemir_controller::enroll::token_hash(DEPLOYER_TOKEN),
            "deployer",
        )
        .await?;
    store.close().await;
    f.start_controller().await?;
    f.wait_agents_connected(Duration::from_secs(30)).await?;
    Ok(f)
}

/// `POST /v1/deployments` with `token`: status and JSON answer.
async fn post(f: &LocalFleet, token: &str, body: &Value) -> Result<(u16, Value)> {
    let r = reqwest::Client::new()
        .post(format!("{}/v1/deployments", f.url()))
        .bearer_auth(token)
        .json(body)
        .send()
        .await?;
    let status = r.status().as_u16();
    let text = r.text().await?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

fn message(v: &Value) -> String {
    v["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_freeze_refuses_with_409_and_admits_a_recorded_admin_override() -> Result<()> {
    let f = fleet(
        "[[freeze]]\nenvironment = \"de*\"\nreason = \"test freeze\"\n\
         start = \"2020-01-01T00:00:00Z\"\nend = \"2099-01-01T00:00:00Z\"\n\
         [[freeze]]\nenvironment = \"elsewhere\"\nreason = \"not ours\"\n\
         days = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\", \"sat\", \"sun\"]\n",
    )
    .await?;
    let cs = f.publish("1.0.0")?;
    let body = f.deploy_request(&cs);
    let window = "freeze window 0 (de*, test freeze)";

    // Refused, naming the window and its end.
    let (status, v) = post(&f, f.token(), &body).await?;
    ensure!(status == 409, "{status} {v}");
    ensure!(v["error"]["code"] == "frozen", "{v}");
    let m = message(&v);
    ensure!(
        m.contains(window)
            && m.contains("until 2099-01-01T00:00:00Z")
            && m.contains("override_freeze"),
        "{m}"
    );

    // An Idempotency-Key nobody used does not get around it.
    let (status, v) = f.post_deployment(&body, Some("freeze-key")).await?;
    ensure!(status == 409, "{status} {v}");
    // Without [notify] a request's webhooks cannot be signed: refused.
    let mut hooked = body.clone();
    hooked["notify"] = json!([{"url": "http://127.0.0.1:9/hook"}]);
    let (status, v) = post(&f, f.token(), &hooked).await?;
    ensure!(
        status == 422 && message(&v).contains("no [notify] section"),
        "{status} {v}"
    );

    // A dry run reports it (200, the freeze a problem).
    let mut dry = body.clone();
    dry["dry_run"] = json!(true);
    let (status, v) = post(&f, f.token(), &dry).await?;
    ensure!(status == 200, "{status} {v}");
    ensure!(
        v["freeze"]["window"] == window && v["freeze"]["outcome"] == "refused",
        "{v}"
    );
    ensure!(
        v["problems"].as_array().is_some_and(|p| p
            .iter()
            .any(|p| p.as_str().is_some_and(|p| p.contains(window)))),
        "{v}"
    );

    // A deployer token may not override: 403 saying who may.
    let mut with_override = body.clone();
    with_override["override_freeze"] = json!("INC-7 hotfix");
    let (status, v) = post(&f, DEPLOYER_TOKEN, &with_override).await?;
    ensure!(status == 403, "{status} {v}");
    ensure!(v["error"]["code"] == "freeze_override_forbidden", "{v}");
    ensure!(message(&v).contains("only admin tokens"), "{v}");
    let mut dry_override = with_override.clone();
    dry_override["dry_run"] = json!(true);
    let (_, v) = post(&f, DEPLOYER_TOKEN, &dry_override).await?;
    ensure!(v["freeze"]["outcome"] == "forbidden", "{v}");
    let (_, v) = post(&f, f.token(), &dry_override).await?;
    ensure!(
        v["freeze"]["outcome"] == "overridden" && v["problems"] == json!([]),
        "{v}"
    );

    // The admin overrides: accepted, and the override is recorded.
    let (status, v) = f
        .post_deployment(&with_override, Some("freeze-key"))
        .await?;
    ensure!(status == 202, "{status} {v}");
    let id = v["id"].as_str().context("202 without an id")?.to_string();
    // A retry with its Idempotency-Key gets that deployment, not a refusal.
    let (status, v) = f.post_deployment(&body, Some("freeze-key")).await?;
    ensure!(status == 200 && v["id"] == id.as_str(), "{status} {v}");
    let d = f.wait_deployment(&id, DEPLOY).await?;
    ensure!(d["status"] == "succeeded", "{d}\n{}", f.logs(40));
    let o = &d["freeze_override"];
    ensure!(
        o["window"] == window
            && o["reason"] == "INC-7 hotfix"
            && o["by"] == "admin"
            && o["window_ends_at"] == "2099-01-01T00:00:00Z"
            && o["at"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{d}"
    );
    // ...in the list too, and in the deployment's log.
    let list: Value = f
        .api()
        .json(f.api().req(reqwest::Method::GET, "/v1/deployments"))
        .await?;
    ensure!(list["deployments"][0]["freeze_override"] == *o, "{list}");
    let logs = reqwest::Client::new()
        .get(format!("{}/v1/deployments/{id}/logs", f.url()))
        .bearer_auth(f.token())
        .send()
        .await?
        .text()
        .await?;
    ensure!(
        logs.lines()
            .any(|l| l.contains("freeze_override") && l.contains("INC-7 hotfix")),
        "{logs}"
    );
    Ok(())
}

/// One request a receiver read.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    signature: String,
    body: Vec<u8>,
}

/// How a test receiver answers.
#[derive(Clone, Copy, PartialEq)]
enum Answer {
    Ok,
    /// Reads the request, then holds the connection open without answering.
    Never,
}

/// A small HTTP/1.1 receiver: records each request; `open` counts the
/// connections it holds unanswered that the client has not closed.
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Received>>>,
    open: Arc<Mutex<usize>>,
}

impl Receiver {
    async fn start(answer: Answer) -> Result<Receiver> {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", l.local_addr()?);
        let got = Arc::new(Mutex::new(Vec::new()));
        let open = Arc::new(Mutex::new(0));
        let (g, o) = (got.clone(), open.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let (g, o) = (g.clone(), o.clone());
                tokio::spawn(async move {
                    let Some(r) = read_request(&mut s).await else {
                        return;
                    };
                    g.lock().unwrap().push(r);
                    match answer {
                        Answer::Ok => {
                            let _ = s
                                .write_all(
                                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                                )
                                .await;
                        }
                        Answer::Never => {
                            *o.lock().unwrap() += 1;
                            // Until the client gives up (EOF or error).
                            let mut buf = [0u8; 64];
                            while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
                            *o.lock().unwrap() -= 1;
                        }
                    }
                });
            }
        });
        Ok(Receiver { url, got, open })
    }

    fn got(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    fn open(&self) -> usize {
        *self.open.lock().unwrap()
    }

    /// Polls until `n` requests arrived at `path`.
    async fn wait_for(&self, path: &str, n: usize, timeout: Duration) -> Result<Vec<Received>> {
        let deadline = Instant::now() + timeout;
        loop {
            let at: Vec<Received> = self.got().into_iter().filter(|r| r.path == path).collect();
            if at.len() >= n {
                return Ok(at);
            }
            if Instant::now() > deadline {
                bail!(
                    "{} got {} of {n} requests at {path}: {at:?}",
                    self.url,
                    at.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn read_request(s: &mut tokio::net::TcpStream) -> Option<Received> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let header = |name: &str| {
        head.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
            .unwrap_or_default()
    };
    let len: usize = header("content-length").parse().ok()?;
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(Received {
        path: head.split_whitespace().nth(1)?.to_string(),
        signature: header("x-vesemir-signature"),
        body: buf[head_end..head_end + len].to_vec(),
    })
}

/// The body, after checking its signature with the configured secret.
fn verified(r: &Received) -> Result<WebhookBody> {
    ensure!(
        verify(SECRET.as_bytes(), &r.body, &r.signature),
        "bad signature {:?} for {}",
        r.signature,
        String::from_utf8_lossy(&r.body)
    );
    Ok(serde_json::from_slice(&r.body)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_get_started_and_succeeded_signed_with_the_secret() -> Result<()> {
    let rx = Receiver::start(Answer::Ok).await?;
    let f = fleet(&format!(
        "[notify]\nsecret_file = \"webhook.secret\"\ntimeout = \"5s\"\nattempts = 2\n\
         [[notify.webhooks]]\nurl = \"{}/default\"\nevents = [\"succeeded\", \"failed\"]\n",
        rx.url
    ))
    .await?;
    let cs = f.publish("1.0.0")?;
    let mut body = f.deploy_request(&cs);
    body["notify"] = json!([{"url": format!("{}/request", rx.url), "events": ["started", "succeeded", "failed", "canary_passed"]}]);
    let id = f.submit(&body).await?;
    let d = f.wait_deployment(&id, DEPLOY).await?;
    ensure!(d["status"] == "succeeded", "{d}\n{}", f.logs(40));

    let got = rx.wait_for("/request", 2, Duration::from_secs(20)).await?;
    let bodies: Vec<WebhookBody> = got.iter().map(verified).collect::<Result<_>>()?;
    let events: Vec<&str> = bodies.iter().map(|b| b.event.as_str()).collect();
    ensure!(events == ["started", "succeeded"], "{events:?}");
    for b in &bodies {
        ensure!(
            b.deployment.id == id
                && b.deployment.application == "demo"
                && b.deployment.requested_by == "admin"
                && b.deployment.changeset_version.as_deref() == Some("1.0.0")
                && b.deployment.hosts_total == 2,
            "{b:?}"
        );
    }
    ensure!(bodies[1].deployment.hosts_succeeded == 2, "{:?}", bodies[1]);
    // The controller's own webhook wants only the end.
    let default = rx.wait_for("/default", 1, Duration::from_secs(20)).await?;
    ensure!(
        verified(&default[0])?.event.as_str() == "succeeded",
        "{default:?}"
    );
    // A tampered body does not verify.
    let mut forged = default[0].clone();
    forged.body.push(b' ');
    ensure!(verified(&forged).is_err());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_that_is_down_or_hangs_delays_nothing() -> Result<()> {
    let hanging = Receiver::start(Answer::Never).await?;
    let ok = Receiver::start(Answer::Ok).await?;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        format!("http://{}", l.local_addr()?)
    };
    // An attempt may take a minute: far longer than the deployment.
    let f = fleet("[notify]\nsecret_file = \"webhook.secret\"\ntimeout = \"60s\"\nattempts = 3\n")
        .await?;
    let cs = f.publish("1.0.0")?;
    let mut body = f.deploy_request(&cs);
    body["notify"] = json!([
        {"url": format!("{closed}/down")},
        {"url": format!("{}/hang", hanging.url)},
        {"url": format!("{}/ok", ok.url)},
    ]);
    let id = f.submit(&body).await?;
    // `started` reaches the hanging receiver, which holds it unanswered.
    hanging
        .wait_for("/hang", 1, Duration::from_secs(20))
        .await?;
    let d = f.wait_deployment(&id, DEPLOY).await?;
    ensure!(d["status"] == "succeeded", "{d}\n{}", f.logs(40));
    // The deployment ended while the hanging receiver still holds a request
    // open (the sender's 60 s attempt has not given up on it).
    ensure!(
        hanging.open() >= 1,
        "the hanging receiver holds no request: the deployment may have waited for it"
    );
    // The receiver that answers got both events meanwhile.
    let got = ok.wait_for("/ok", 2, Duration::from_secs(20)).await?;
    let events: Vec<String> = got
        .iter()
        .map(|r| verified(r).map(|b| b.event.as_str().to_string()))
        .collect::<Result<_>>()?;
    ensure!(events == ["started", "succeeded"], "{events:?}");
    // Nothing about the webhooks' URLs beyond scheme and host in the log.
    let log = std::fs::read_to_string(f.controller_log())?;
    ensure!(!log.contains("/hang") && !log.contains(SECRET), "{log}");
    Ok(())
}
