//! What the benchmarks and the simulator test start and measure: a real
//! controller with a static inventory that knows the simulator's playbooks,
//! its HTTP API, and process measurements from `/proc`.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vesemir_testkit::fleet::{Controller, ControllerOptions};

/// One host of the static inventory.
#[derive(Debug, Clone)]
pub struct InvHost {
    /// Node name.
    pub name: String,
    /// Tags.
    pub tags: Vec<String>,
}

/// Writes a static inventory file.
pub fn write_inventory(path: &Path, hosts: &[InvHost]) -> Result<()> {
    let mut text = String::with_capacity(hosts.len() * 80);
    for h in hosts {
        let tags: Vec<String> = h.tags.iter().map(|t| format!("{t:?}")).collect();
        text.push_str(&format!(
            "[[hosts]]\nname = {:?}\naddress = \"127.0.0.1\"\ntags = [{}]\nenvironment = \"bench\"\n",
            h.name,
            tags.join(", ")
        ));
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Hosts `prefix-00001`… tagged `tag`.
pub fn hosts(prefix: &str, n: usize, tag: &str) -> Vec<InvHost> {
    (1..=n)
        .map(|i| InvHost {
            name: format!("{prefix}-{i:05}"),
            tags: vec![tag.to_string()],
        })
        .collect()
}

/// Initialises a controller (not started) whose inventory is `hosts` and
/// which accepts `noop.yml` and `sleep.yml`. `data_dir_in` keeps it (and so
/// its CA and the enrolled agents) across runs, for the identity cache.
pub fn init_controller(
    hosts: &[InvHost],
    heartbeat_secs: u32,
    agent_cert_ttl: &str,
) -> Result<Controller> {
    let c = Controller::init(ControllerOptions {
        heartbeat_secs,
        agent_cert_ttl: agent_cert_ttl.into(),
        extra_config: String::new(),
    })?;
    let inv = c.root.path().join("inventory.toml");
    write_inventory(&inv, hosts)?;
    set_top_level(
        &c.data_dir.join("controller.toml"),
        &format!("inventory = {:?}", inv.display().to_string()),
    )?;
    Ok(c)
}

/// Prepends a top-level `key = value` line to a TOML file.
pub fn set_top_level(path: &Path, line: &str) -> Result<()> {
    let text = std::fs::read_to_string(path)?;
    std::fs::write(path, format!("{line}\n{text}"))?;
    Ok(())
}

/// The controller's HTTP API, async.
#[derive(Clone)]
pub struct Api {
    /// Base URL.
    pub url: String,
    /// Admin token.
    pub token: String,
    client: reqwest::Client,
}

impl Api {
    /// A client for `c`.
    pub fn of(c: &Controller) -> Api {
        Api::of_url(&c.url, &c.token)
    }

    /// A client for the controller at `url`.
    pub fn of_url(url: &str, token: &str) -> Api {
        Api {
            url: url.to_string(),
            token: token.to_string(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("reqwest client"),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(u16, serde_json::Value)> {
        let mut rb = self
            .client
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await.with_context(|| format!("calling {path}"))?;
        let status = r.status().as_u16();
        let v = r.json().await.unwrap_or(serde_json::Value::Null);
        Ok((status, v))
    }

    /// GET, expecting 200.
    pub async fn get(&self, path: &str) -> Result<serde_json::Value> {
        let (s, v) = self.call(reqwest::Method::GET, path, None).await?;
        if s != 200 {
            bail!("GET {path}: {s} {v}");
        }
        Ok(v)
    }

    /// An enrollment token for `uses` enrollments.
    pub async fn enrollment_token(&self, uses: usize) -> Result<String> {
        let (s, v) = self
            .call(
                reqwest::Method::POST,
                "/v1/tokens",
                Some(serde_json::json!({"ttl": "2h", "uses": uses})),
            )
            .await?;
        if s != 201 {
            bail!("POST /v1/tokens: {s} {v}");
        }
        Ok(v["token"].as_str().unwrap_or_default().to_string())
    }

    /// Submits a deployment; returns its id.
    pub async fn deploy(&self, body: serde_json::Value) -> Result<String> {
        let (s, v) = self
            .call(reqwest::Method::POST, "/v1/deployments", Some(body))
            .await?;
        if s != 202 {
            bail!("POST /v1/deployments: {s} {v}");
        }
        Ok(v["id"].as_str().unwrap_or_default().to_string())
    }

    /// Polls the (host-less) deployment list every 10 ms until `id` is no
    /// longer pending or running; returns its status.
    pub async fn wait_finished(&self, app: &str, id: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self
                .get(&format!("/v1/deployments?application={app}&limit=5"))
                .await?;
            let status = v
                .as_array()
                .or_else(|| v["deployments"].as_array())
                .and_then(|a| a.iter().find(|d| d["id"] == id))
                .and_then(|d| d["status"].as_str())
                .unwrap_or("pending")
                .to_string();
            if !matches!(status.as_str(), "pending" | "running") {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("deployment {id} still {status} after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Deploys and waits; returns the wall time from the POST to the stored
    /// end, and the final deployment document.
    pub async fn deploy_and_wait(
        &self,
        body: serde_json::Value,
        timeout: Duration,
    ) -> Result<(Duration, serde_json::Value)> {
        let app = body["application"].as_str().unwrap_or_default().to_string();
        let t = Instant::now();
        let id = self.deploy(body).await?;
        let status = self.wait_finished(&app, &id, timeout).await?;
        let took = t.elapsed();
        let d = self.get(&format!("/v1/deployments/{id}")).await?;
        if status != "succeeded" {
            bail!(
                "deployment {id} ended {status}: {} (summary {})",
                d["error"],
                d["summary"]
            );
        }
        Ok((took, d))
    }

    /// Agents listed as `connected`.
    pub async fn connected_agents(&self) -> Result<usize> {
        let v = self.get("/v1/agents").await?;
        let list = v
            .as_array()
            .or_else(|| v["agents"].as_array())
            .cloned()
            .unwrap_or_default();
        Ok(list.iter().filter(|a| a["state"] == "connected").count())
    }

    /// `vesemir_agents_connected` from `/metrics` (no auth, cheap).
    pub async fn metric_connected(&self) -> Result<usize> {
        let text = self
            .client
            .get(format!("{}/metrics", self.url))
            .timeout(Duration::from_secs(5))
            .send()
            .await?
            .text()
            .await?;
        text.lines()
            .find_map(|l| l.strip_prefix("vesemir_agents_connected "))
            .and_then(|v| v.trim().parse().ok())
            .context("no vesemir_agents_connected in /metrics")
    }
}

/// A deployment body for the simulator's playbooks.
pub fn deploy_body(
    app: &str,
    tag: &str,
    concurrency: serde_json::Value,
    playbook: &str,
    vars: serde_json::Value,
) -> serde_json::Value {
    serde_json::json!({
        "application": app, "environment": "bench", "team": "bench",
        "selector": {"tags": [tag]},
        "concurrency": concurrency, "playbook": playbook, "vars": vars,
        "job_timeout_seconds": 600,
    })
}

/// Resident memory of a process, bytes (`VmRSS`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// CPU time (user + system) a process used so far.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) start after ") ".
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let (utime, stime): (u64, u64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64;
    Some(Duration::from_millis((utime + stime) * 1000 / hz))
}

/// Runs blocking harness code (the tests crate's process helpers) from
/// async code.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// The repository's `bench/` dir.
pub fn bench_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}
