//! Start a real goiardi (Chef server) with authentication on.
//!
//! Each [`Goiardi`] has its own free port and temp dir, so tests run in
//! parallel. Ready means: `admin.pem` exists and `GET /nodes` answers 401
//! (authentication is on and the HTTP server is up). Dropping it sends
//! SIGTERM, then SIGKILL if goiardi has not exited after 2 s.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use vesemir_controller::inventory::{ChefClient, ChefConfig, SignVersion};

/// How to start goiardi.
#[derive(Debug, Clone, Default)]
pub struct GoiardiOptions {
    /// `--time-slew`: how far a request timestamp may be from server time.
    pub time_slew: Option<Duration>,
}

/// A running goiardi.
#[derive(Debug)]
pub struct Goiardi {
    /// The process; `None` once stopped.
    child: Option<Child>,
    /// Port on 127.0.0.1.
    port: u16,
    /// `--conf-root`: keys and logs live here.
    dir: tempfile::TempDir,
}

use crate::procs::free_port;

impl Goiardi {
    /// Start with defaults.
    pub async fn start() -> Result<Self> {
        Self::start_with(GoiardiOptions::default()).await
    }

    /// Start and wait until ready (10 s deadline). Retries on another port
    /// if the chosen one was taken meanwhile.
    pub async fn start_with(opts: GoiardiOptions) -> Result<Self> {
        let mut last_err = None;
        for _ in 0..3 {
            match Self::try_start(&opts).await {
                Ok(g) => return Ok(g),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.expect("tried at least once"))
    }

    async fn try_start(opts: &GoiardiOptions) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("goiardi-").tempdir()?;
        let port = free_port()?;
        let log = std::fs::File::create(dir.path().join("goiardi.log"))?;
        let mut cmd = Command::new("goiardi");
        cmd.arg("-I")
            .arg("127.0.0.1")
            .arg("-P")
            .arg(port.to_string())
            .arg("-H")
            .arg("127.0.0.1")
            .arg("-A")
            .arg(format!("--conf-root={}", dir.path().display()))
            .arg("--log-level=error");
        if let Some(slew) = opts.time_slew {
            cmd.arg(format!("--time-slew={}s", slew.as_secs().max(1)));
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning goiardi (apt-get install -y goiardi)")?;
        let mut g = Goiardi {
            child: Some(child),
            port,
            dir,
        };
        g.wait_ready(Duration::from_secs(10)).await?;
        Ok(g)
    }

    async fn wait_ready(&mut self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(500))
            .build()?;
        let url = format!("{}/nodes", self.url());
        let mut poll = tokio::time::interval(Duration::from_millis(25));
        loop {
            poll.tick().await;
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("goiardi exited early ({status}); log:\n{}", self.log());
            }
            if self.admin_key_path().exists() {
                if let Ok(resp) = http.get(&url).send().await {
                    if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
                        return Ok(());
                    }
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "goiardi on port {} not ready after {within:?}; log:\n{}",
                    self.port,
                    self.log()
                );
            }
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The conf root (temp dir).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Key of the `admin` user goiardi created at first start.
    pub fn admin_key_path(&self) -> PathBuf {
        self.dir.path().join("admin.pem")
    }

    /// goiardi's own log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("goiardi.log")).unwrap_or_default()
    }

    /// A `[chef]` config for the admin user, signing with `version`.
    pub fn admin_config(&self, version: SignVersion) -> ChefConfig {
        let mut cfg = ChefConfig::new(self.url(), "admin", self.admin_key_path());
        cfg.sign_version = version;
        cfg
    }

    /// A client signed as admin with protocol 1.3.
    pub fn admin_client(&self) -> Result<ChefClient> {
        Ok(ChefClient::new(&self.admin_config(SignVersion::V1_3))?)
    }

    fn pid(&self) -> Option<Pid> {
        self.child.as_ref().map(|c| Pid::from_raw(c.id() as i32))
    }

    /// Freeze the process (SIGSTOP): connections are accepted by the kernel
    /// but never answered. The hardest case for client timeouts.
    pub fn pause(&self) -> Result<()> {
        if let Some(pid) = self.pid() {
            kill(pid, Signal::SIGSTOP)?;
        }
        Ok(())
    }

    /// Undo [`Goiardi::pause`].
    pub fn resume(&self) -> Result<()> {
        if let Some(pid) = self.pid() {
            kill(pid, Signal::SIGCONT)?;
        }
        Ok(())
    }

    /// Stop: SIGTERM, then SIGKILL if still running after 2 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = Pid::from_raw(child.id() as i32);
        // A paused process cannot act on SIGTERM.
        let _ = kill(pid, Signal::SIGCONT);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => break,
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Goiardi {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Create (or replace) nodes through `client`, at most `parallel` requests
/// in flight. Returns how long it took.
pub async fn create_nodes(
    client: &ChefClient,
    nodes: Vec<serde_json::Value>,
    parallel: usize,
) -> Result<Duration> {
    let started = Instant::now();
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for node in nodes {
        let permit = permits.clone().acquire_owned().await?;
        let client = client.clone();
        tasks.spawn(async move {
            let _permit = permit;
            client
                .upsert_node(&node)
                .await
                .with_context(|| format!("creating node {}", node["name"].as_str().unwrap_or("?")))
        });
        // Surface the first failure early instead of after all spawns.
        while let Some(done) = tasks.try_join_next() {
            done??;
        }
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(started.elapsed())
}

/// goiardi indexes asynchronously (like a real Chef server's Solr): a node is
/// searchable a moment after its create returned. Poll `query` until it
/// matches `count` nodes, or fail after `within`.
pub async fn wait_indexed(
    client: &ChefClient,
    query: &str,
    count: usize,
    within: Duration,
) -> Result<()> {
    let inventory = vesemir_controller::inventory::ChefInventory::from_client(client.clone());
    let deadline = Instant::now() + within;
    let mut poll = tokio::time::interval(Duration::from_millis(20));
    loop {
        poll.tick().await;
        let found = inventory
            .resolve_query(query.to_string())
            .await?
            .hosts
            .len();
        if found >= count {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("search {query:?} found {found} of {count} nodes after {within:?}");
        }
    }
}
