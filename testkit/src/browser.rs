//! A real headless Chromium driven through chromedriver's W3C WebDriver
//! HTTP API (Debian `chromium` + `chromium-driver`), with reqwest: enough
//! of the protocol to load a page, type, click, run a script and take a
//! screenshot. Each [`Browser`] has its own chromedriver on a free port and
//! its own fresh profile dir; both go away on drop.

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// W3C name of the element reference key in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// Every WebDriver call answers within this, or the test fails.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// chromedriver plus one browser session.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
}

/// Where the test artifacts go: `target/test-artifacts/` of the workspace.
pub fn artifacts_dir() -> Result<PathBuf> {
    let dir = crate::fleet::repo().join("target").join("test-artifacts");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

impl Browser {
    /// Starts chromedriver and a headless Chromium window of `width`×`height`.
    pub async fn start(width: u32, height: u32) -> Result<Browser> {
        let port = crate::procs::free_port()?;
        let profile = tempfile::tempdir()?;
        let log = profile.path().join("chromedriver.log");
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("chromedriver (Debian package chromium-driver) is needed for this test")?;
        let http = reqwest::Client::builder().timeout(CALL_TIMEOUT).build()?;
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = http
                .get(format!("{base}/status"))
                .send()
                .await
                .ok()
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ready {
                break;
            }
            if Instant::now() > deadline {
                bail!("chromedriver did not answer on {base} within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let binary = ["/usr/bin/chromium", "/usr/lib/chromium/chromium"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("chromium");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": binary,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--hide-scrollbars",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", profile.path().join("profile").display()),
                ],
            },
        }}});
        let r: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await?
            .json()
            .await?;
        let Some(session) = r["value"]["sessionId"].as_str() else {
            bail!(
                "chromedriver refused the session: {r}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        let b = Browser {
            driver,
            base,
            session: session.to_string(),
            http,
            _profile: profile,
        };
        b.call(
            reqwest::Method::POST,
            "window/rect",
            json!({"width": width, "height": height}),
        )
        .await?;
        Ok(b)
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Result<Value> {
        let url = format!("{}/session/{}/{path}", self.base, self.session);
        let mut rb = self.http.request(method.clone(), &url);
        if method != reqwest::Method::GET {
            rb = rb.json(&body);
        }
        let r = rb
            .send()
            .await
            .with_context(|| format!("WebDriver {path}"))?;
        let status = r.status();
        let v: Value = r.json().await?;
        if !status.is_success() {
            bail!("WebDriver {path} answered {status}: {}", v["value"]);
        }
        Ok(v["value"].clone())
    }

    /// Loads `url`.
    pub async fn goto(&self, url: &str) -> Result<()> {
        self.call(reqwest::Method::POST, "url", json!({"url": url}))
            .await
            .map(drop)
    }

    /// The element matching a CSS selector (an error if none).
    pub async fn find(&self, css: &str) -> Result<String> {
        let v = self
            .call(
                reqwest::Method::POST,
                "element",
                json!({"using": "css selector", "value": css}),
            )
            .await
            .with_context(|| format!("no element {css}"))?;
        v[ELEMENT]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("no element reference in {v}"))
    }

    /// Types `text` into the element matching `css`.
    pub async fn type_into(&self, css: &str, text: &str) -> Result<()> {
        let e = self.find(css).await?;
        self.call(
            reqwest::Method::POST,
            &format!("element/{e}/value"),
            json!({"text": text}),
        )
        .await
        .map(drop)
    }

    /// Clicks the element matching `css`.
    pub async fn click(&self, css: &str) -> Result<()> {
        let e = self.find(css).await?;
        self.call(
            reqwest::Method::POST,
            &format!("element/{e}/click"),
            json!({}),
        )
        .await
        .map(drop)
    }

    /// Runs `script` (a function body; `return` gives the value) in the page.
    pub async fn eval(&self, script: &str) -> Result<Value> {
        self.call(
            reqwest::Method::POST,
            "execute/sync",
            json!({"script": script, "args": []}),
        )
        .await
    }

    /// Polls `script` until it returns something other than null/false.
    pub async fn wait_for(&self, what: &str, timeout: Duration, script: &str) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.eval(script).await?;
            if !(v.is_null() || v == Value::Bool(false)) {
                return Ok(v);
            }
            if Instant::now() > deadline {
                let text = self
                    .eval("return document.body.innerText")
                    .await
                    .unwrap_or_default();
                bail!(
                    "timed out after {timeout:?} waiting for {what}; the page says:\n{}",
                    text.as_str().unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Saves a PNG screenshot of the window to `path`.
    pub async fn screenshot(&self, path: &Path) -> Result<()> {
        let v = self
            .call(reqwest::Method::GET, "screenshot", Value::Null)
            .await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().context("screenshot is not a string")?)?;
        std::fs::write(path, png)?;
        Ok(())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Closing the session ends Chromium; then chromedriver itself.
        delete_session(&format!("/session/{}", self.session), &self.base);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// `DELETE path` with plain std IO: Drop may run outside any async runtime.
fn delete_session(path: &str, base: &str) {
    use std::io::{Read, Write};
    let Some(host) = base.strip_prefix("http://") else {
        return;
    };
    let Ok(mut s) = std::net::TcpStream::connect(host) else {
        return;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = write!(
        s,
        "DELETE {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
}
