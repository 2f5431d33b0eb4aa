//! Finding the controller and talking to its API.
//!
//! Order: `--url`/`--token`, then `VESEMIR_URL`/`VESEMIR_TOKEN`, then the
//! file named by `VESEMIR_CONFIG`, then `~/.config/vesemir/cli.toml`.

use anyhow::{anyhow, bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The CLI's config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CliConfig {
    /// Controller API URL.
    pub url: Option<String>,
    /// API token.
    pub token: Option<String>,
    /// File holding the API token.
    pub token_file: Option<PathBuf>,
}

/// Where the controller is and how to authenticate.
#[derive(Clone)]
pub struct Api {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

fn load_file(path: &Path) -> Result<CliConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read CLI config {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid CLI config {}", path.display()))
}

fn read_token_file(path: &Path) -> Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("cannot read token file {}", path.display()))?
        .trim()
        .to_string())
}

impl Api {
    /// Resolves the controller from flags, environment and config files.
    pub fn discover(url: Option<String>, token: Option<String>) -> Result<Api> {
        let mut url = url.or_else(|| std::env::var("VESEMIR_URL").ok());
        let mut token = token.or_else(|| std::env::var("VESEMIR_TOKEN").ok());
        if url.is_none() || token.is_none() {
            let path = std::env::var_os("VESEMIR_CONFIG")
                .map(PathBuf::from)
                .or_else(|| {
                    std::env::var_os("HOME")
                        .map(|h| PathBuf::from(h).join(".config/vesemir/cli.toml"))
                        .filter(|p| p.exists())
                });
            if let Some(path) = path {
                let file = load_file(&path)?;
                url = url.or(file.url);
                if token.is_none() {
                    token = match (file.token, file.token_file) {
                        (Some(t), _) => Some(t),
                        (None, Some(f)) => Some(read_token_file(&f)?),
                        (None, None) => None,
                    };
                }
            }
        }
        let base = url.ok_or_else(|| {
            anyhow!(
                "no controller configured: pass --url, set VESEMIR_URL, or point VESEMIR_CONFIG at the cli.toml written by `vesemir-controller init`"
            )
        })?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .context("cannot build HTTP client")?;
        Ok(Api {
            base: base.trim_end_matches('/').to_string(),
            token,
            http,
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut rb = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = &self.token {
            rb = rb.bearer_auth(t);
        }
        rb
    }

    /// A request with the standard 30 s timeout.
    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.request(method, path).timeout(Duration::from_secs(30))
    }

    /// A request for a long stream: no overall timeout (the server sends
    /// keep-alive lines; a read stall is detected by the caller).
    pub fn stream_req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.request(method, path)
    }

    /// Sends and decodes JSON, turning API errors into readable ones.
    pub async fn json<T: DeserializeOwned>(&self, rb: reqwest::RequestBuilder) -> Result<T> {
        let resp = self.send(rb).await?;
        resp.json::<T>()
            .await
            .context("the controller sent a response that is not the expected JSON")
    }

    /// Sends, failing on non-2xx with the API's error message.
    pub async fn send(&self, rb: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let resp = rb.send().await.map_err(|e| {
            if e.is_timeout() {
                anyhow!("the controller at {} did not answer in time", self.base)
            } else if e.is_connect() {
                anyhow!(
                    "cannot connect to the controller at {}: is `vesemir-controller serve` running? ({e})",
                    self.base
                )
            } else {
                anyhow!("request to {} failed: {e}", self.base)
            }
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        // Not every failure is the API's own (a proxy may answer): show the
        // raw body when it is not an error body.
        let msg = serde_json::from_str::<vesemir_api::ErrorBody>(&body)
            .map(|b| b.error.message)
            .unwrap_or(body);
        bail!("{} ({})", msg.trim(), status)
    }
}
