//! [`LocalFleet`]: a whole vesemir installation on loopback, in one
//! directory — a controller (SQLite) with a static inventory, `N` app hosts
//! `app-1…app-N` and one HAProxy host `lb-1`, each a real `vesemir-agent`
//! process enrolled over QUIC, the sample app behind a real HAProxy, and an
//! artifact server for changesets. `vesemir demo` and the end-to-end tests
//! of deployments build on it.
//!
//! systemd is not PID 1 on the machines this runs on: every agent's service
//! manager is the recording `systemctl` stand-in (written into the dir from
//! `tests/fixtures/bin/systemctl`), with one units directory per host holding
//! `app.service`. The stand-in logs every call in the host's
//! `systemctl.log`.
//!
//! All app hosts share one machine, so what differs per host (the app's
//! port, its `base_dir`) cannot come from the request's vars, which are the
//! same for every host. Each app host's agent carries its own `health_url`
//! and `base_dir` as host variables (`vesemir-agent enroll --var`, kept in
//! agent.toml `[vars]`, like Ansible's host_vars). The request still passes `app`
//! and `service`, and may override anything else.
//!
//! Dropping a `LocalFleet` (or [`LocalFleet::shutdown`]) stops everything it
//! started: agents, controller, the apps started through the stand-in, and
//! HAProxy.

use super::artifacts::{sha256_hex, tar_gz, ArtifactServer, Changeset};
use super::haproxy::{self, HaproxyInfo, ServerRow};
use super::procs::Binaries;
use crate::procs::{free_port, leads_own_session, log_tail, pid_alive, Proc};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use vesemir_cli::client::Api;

/// The application the fleet runs.
pub const APP: &str = "demo";
/// Its environment (inventory and request).
pub const ENV: &str = "demo";
/// Tag of the app hosts in the inventory.
pub const APP_TAG: &str = "app:demo";
/// HAProxy backend holding the app servers.
pub const BACKEND: &str = "demo";
/// Name of the HAProxy host.
pub const LB_HOST: &str = "lb-1";
/// The systemd unit of the app on every host.
pub const SERVICE: &str = "app.service";

const DEPLOY_YML: &str = include_str!("../../../playbooks/deploy.yml");
const ROLLBACK_YML: &str = include_str!("../../../playbooks/rollback.yml");
const RESTART_YML: &str = include_str!("../../../playbooks/restart.yml");
const APP_ENV_J2: &str = include_str!("../../../playbooks/templates/app.env.j2");
const SYSTEMCTL: &str = include_str!("../../../tests/fixtures/bin/systemctl");

/// How long agents get to connect, the controller to become ready.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether the fleet runs HAProxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HaproxyMode {
    /// If `haproxy` is on PATH.
    Auto,
    /// Fail if `haproxy` is not installed.
    Required,
    /// Never.
    Off,
}

/// Builds a [`LocalFleet`].
#[derive(Clone, Debug)]
pub struct LocalFleetBuilder {
    /// Number of app hosts.
    app_hosts: usize,
    /// Use this directory instead of a temp dir (kept afterwards).
    dir: Option<PathBuf>,
    /// Keep the temp dir after shutdown.
    keep: bool,
    /// HAProxy or not.
    haproxy: HaproxyMode,
    /// Where the binaries are, if not found automatically.
    bin_dir: Option<PathBuf>,
    /// Agents' heartbeat interval.
    heartbeat_secs: u32,
    /// Print each step on stderr.
    verbose: bool,
    /// Give each app host its own playbook directory (`<host>/playbooks`).
    playbooks_per_host: bool,
}

impl Default for LocalFleetBuilder {
    fn default() -> Self {
        LocalFleetBuilder {
            app_hosts: 4,
            dir: None,
            keep: false,
            haproxy: HaproxyMode::Auto,
            bin_dir: None,
            heartbeat_secs: 2,
            verbose: false,
            playbooks_per_host: false,
        }
    }
}

impl LocalFleetBuilder {
    /// Number of app hosts (default 4).
    pub fn app_hosts(mut self, n: usize) -> Self {
        self.app_hosts = n;
        self
    }
    /// Build in `dir` (created if missing, must be empty); it is kept.
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }
    /// Keep the directory after shutdown.
    pub fn keep(mut self, keep: bool) -> Self {
        self.keep = keep;
        self
    }
    /// HAProxy: auto (default), required, off.
    pub fn haproxy(mut self, mode: HaproxyMode) -> Self {
        self.haproxy = mode;
        self
    }
    /// Directory of the workspace binaries.
    pub fn bin_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.bin_dir = Some(dir.into());
        self
    }
    /// Agents' heartbeat interval in seconds (default 2).
    pub fn heartbeat_secs(mut self, secs: u32) -> Self {
        self.heartbeat_secs = secs;
        self
    }
    /// Print each step on stderr.
    pub fn verbose(mut self, verbose: bool) -> Self {
        self.verbose = verbose;
        self
    }

    /// Each app host gets its own playbook directory, `<host dir>/playbooks`
    /// (with the shipped playbooks), instead of one shared by all, so tests
    /// can give hosts different playbooks.
    pub fn playbooks_per_host(mut self, yes: bool) -> Self {
        self.playbooks_per_host = yes;
        self
    }

    /// Starts everything; returns once every agent is connected and HAProxy
    /// answers. The apps are not running yet: there is no release until the
    /// first deploy.
    pub async fn start(self) -> Result<LocalFleet> {
        if self.app_hosts == 0 {
            bail!("a local fleet needs at least one app host");
        }
        let bins = Binaries::find(self.bin_dir.as_deref())?;
        let want_haproxy = match self.haproxy {
            HaproxyMode::Off => false,
            HaproxyMode::Auto => haproxy::installed(),
            HaproxyMode::Required => {
                if !haproxy::installed() {
                    bail!("haproxy is not installed: apt-get install -y haproxy");
                }
                true
            }
        };
        let (tmp, dir) = match &self.dir {
            Some(d) => {
                std::fs::create_dir_all(d)
                    .with_context(|| format!("cannot create {}", d.display()))?;
                if std::fs::read_dir(d)?.next().is_some() {
                    bail!(
                        "{} is not empty: pick an empty or new directory",
                        d.display()
                    );
                }
                (None, d.canonicalize()?)
            }
            None => {
                let t = tempfile::Builder::new().prefix("vesemir-demo-").tempdir()?;
                let p = t.path().to_owned();
                (Some(t), p)
            }
        };
        let mut fleet = LocalFleet {
            agents: Vec::new(),
            controller: None,
            haproxy_proc: None,
            haproxy: None,
            artifacts: ArtifactServer::start().await?,
            hosts: Vec::new(),
            lb_dir: dir.join("hosts").join(LB_HOST),
            data_dir: dir.join("controller"),
            api: Api::discover(Some("http://127.0.0.1:1".into()), Some(String::new()))?,
            api_url: String::new(),
            token: String::new(),
            quic: String::new(),
            controller_starts: 0,
            bins,
            keep: self.keep || self.dir.is_some(),
            tmp,
            dir,
            verbose: self.verbose,
            stopped: false,
            playbooks_per_host: self.playbooks_per_host,
        };
        fleet
            .build(self.app_hosts, self.heartbeat_secs, want_haproxy)
            .await?;
        Ok(fleet)
    }
}

/// One app host of the fleet.
#[derive(Clone, Debug)]
pub struct AppHost {
    /// Node name, `app-i`; also its HAProxy server name.
    pub name: String,
    /// Port its app listens on (127.0.0.1).
    pub port: u16,
    /// Its directory: `agent/`, `agent.log`, `playbooks/`, `units/`,
    /// `systemctl.log`, `srv/demo/`.
    pub dir: PathBuf,
}

impl AppHost {
    /// The stand-in's units directory (`app.service`, `app.pid`, `app.log`).
    pub fn units_dir(&self) -> PathBuf {
        self.dir.join("units")
    }
    /// The stand-in's call log.
    pub fn systemctl_log(&self) -> PathBuf {
        self.dir.join("systemctl.log")
    }
    /// The deploy playbook's `base_dir` on this host.
    pub fn base_dir(&self) -> PathBuf {
        self.dir.join("srv").join(APP)
    }
    /// The agent's data dir (journal under `journal/`).
    pub fn agent_dir(&self) -> PathBuf {
        self.dir.join("agent")
    }
    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
    /// Pid of the running app, per the stand-in's pidfile.
    pub fn app_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.units_dir().join("app.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
            .filter(|&p| leads_own_session(p))
    }
    /// Every recorded `systemctl` call's arguments, in order.
    pub fn systemctl_calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.systemctl_log())
            .unwrap_or_default()
            .lines()
            .map(|l| l.split_once(' ').map(|x| x.1).unwrap_or("").to_string())
            .collect()
    }
    /// How many times the app was restarted through the stand-in.
    pub fn restarts(&self) -> usize {
        self.systemctl_calls()
            .iter()
            .filter(|args| args.split_whitespace().any(|w| w == "restart"))
            .count()
    }
    /// Makes release `version` fail its health check on this host only:
    /// creates the release directory with an `unhealthy` file in it (the
    /// sample app answers 500 on `/health` while `unhealthy` exists next to
    /// its version file; the unpack step leaves an existing release alone).
    pub fn break_release(&self, version: &str) -> Result<()> {
        let rel = self.base_dir().join("releases").join(version);
        std::fs::create_dir_all(&rel)?;
        std::fs::write(rel.join("unhealthy"), "made unhealthy on purpose\n")?;
        Ok(())
    }
}

/// A running local fleet. See the module docs.
pub struct LocalFleet {
    /// Agent processes (stopped first).
    agents: Vec<Proc>,
    /// The controller process.
    controller: Option<Proc>,
    /// HAProxy process (stopped last, after the apps).
    haproxy_proc: Option<Proc>,
    /// Where HAProxy is.
    haproxy: Option<HaproxyInfo>,
    /// Serves the changesets.
    artifacts: ArtifactServer,
    /// The app hosts.
    hosts: Vec<AppHost>,
    /// `lb-1`'s directory.
    lb_dir: PathBuf,
    /// Controller data dir.
    data_dir: PathBuf,
    /// Client for the controller's API (admin token).
    api: Api,
    /// API base URL.
    api_url: String,
    /// Admin token.
    token: String,
    /// QUIC / enrollment address.
    quic: String,
    /// How many times the controller was started (log file names).
    controller_starts: u32,
    /// The binaries.
    bins: Binaries,
    /// Keep the directory on shutdown.
    keep: bool,
    /// The temp dir, if we made one (removed on drop unless kept).
    tmp: Option<tempfile::TempDir>,
    /// The fleet's directory.
    dir: PathBuf,
    /// Print steps.
    verbose: bool,
    /// Set by shutdown so it runs once.
    stopped: bool,
    /// App hosts have their own playbook directories (`<host>/playbooks`).
    playbooks_per_host: bool,
}

impl LocalFleet {
    /// A builder with defaults: 4 app hosts, HAProxy if installed, temp dir.
    pub fn builder() -> LocalFleetBuilder {
        LocalFleetBuilder::default()
    }

    fn say(&self, msg: impl AsRef<str>) {
        if self.verbose {
            println!("  {}", msg.as_ref());
        }
    }

    async fn build(&mut self, n: usize, heartbeat_secs: u32, want_haproxy: bool) -> Result<()> {
        let dir = self.dir.clone();
        // The shared pieces: playbooks, the systemctl stand-in.
        write_playbooks(&dir.join("playbooks"))?;
        let systemctl = dir.join("bin").join("systemctl");
        std::fs::create_dir_all(systemctl.parent().expect("bin dir"))?;
        std::fs::write(&systemctl, SYSTEMCTL)?;
        std::fs::set_permissions(&systemctl, std::fs::Permissions::from_mode(0o755))?;

        // Hosts and ports.
        for i in 1..=n {
            let name = format!("app-{i}");
            self.hosts.push(AppHost {
                dir: dir.join("hosts").join(&name),
                name,
                port: free_port()?,
            });
        }
        let inventory = dir.join("inventory.toml");
        std::fs::write(&inventory, inventory_toml(&self.hosts))?;

        // Controller.
        let (api_port, quic_port) = (free_port()?, free_port()?);
        self.api_url = format!("http://127.0.0.1:{api_port}");
        self.quic = format!("127.0.0.1:{quic_port}");
        let out = Command::new(&self.bins.controller)
            .arg("init")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--api-listen", &format!("127.0.0.1:{api_port}")])
            .args(["--quic-listen", &self.quic])
            .args(["--heartbeat-secs", &heartbeat_secs.to_string()])
            .arg("--inventory")
            .arg(&inventory)
            .output()
            .context("running vesemir-controller init")?;
        if !out.status.success() {
            bail!(
                "vesemir-controller init failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        self.token = std::fs::read_to_string(self.data_dir.join("admin.token"))
            .context("reading the admin token")?
            .trim()
            .to_string();
        self.api = Api::discover(Some(self.api_url.clone()), Some(self.token.clone()))?;
        self.start_controller().await?;
        self.say(format!(
            "controller: API {}, QUIC {}, data {} (SQLite)",
            self.api_url,
            self.quic,
            self.data_dir.display()
        ));

        // HAProxy, in front of apps that do not run yet.
        if want_haproxy {
            let servers: Vec<(String, u16)> = self
                .hosts
                .iter()
                .map(|h| (h.name.clone(), h.port))
                .collect();
            let (d, info) = haproxy::start(&dir.join("haproxy"), BACKEND, &servers).await?;
            self.say(format!(
                "haproxy: frontend http://{}, admin socket {}",
                info.frontend,
                info.socket.display()
            ));
            self.haproxy_proc = Some(d);
            self.haproxy = Some(info);
        }

        // Agents: enroll each, then run.
        let v: Value = self
            .api
            .json(
                self.api
                    .req(reqwest::Method::POST, "/v1/tokens")
                    .json(&json!({"ttl": "1h", "uses": n + 1})),
            )
            .await
            .context("creating an enrollment token")?;
        let token = v["token"]
            .as_str()
            .context("POST /v1/tokens answered without a token")?
            .to_string();
        for host in self.hosts.clone() {
            std::fs::create_dir_all(host.units_dir())?;
            std::fs::create_dir_all(host.base_dir())?;
            write_unit(&host, &self.bins.sample_app)?;
            if self.playbooks_per_host {
                write_playbooks(&host.dir.join("playbooks"))?;
            }
            let host_vars = [
                ("health_url", host.url("/health")),
                ("base_dir", host.base_dir().display().to_string()),
                ("health_delay", "200ms".to_string()),
            ];
            self.enroll(&host.name, &token, &host.dir, None, &host_vars)
                .await?;
            self.spawn_agent(&host.name, &host.dir)?;
        }
        let socket = self.haproxy.as_ref().map(|h| h.socket.clone());
        let lb_dir = self.lb_dir.clone();
        std::fs::create_dir_all(lb_dir.join("units"))?;
        self.enroll(LB_HOST, &token, &lb_dir, socket.as_deref(), &[])
            .await?;
        self.spawn_agent(LB_HOST, &lb_dir)?;
        self.wait_agents_connected(START_TIMEOUT).await?;
        self.say(format!(
            "agents: {} app hosts and {LB_HOST} enrolled and connected over QUIC (mutual TLS)",
            n
        ));
        self.say(format!(
            "systemd is not PID 1 here: the agents restart the app through the recording systemctl stand-in {}",
            systemctl.display()
        ));
        Ok(())
    }

    async fn enroll(
        &self,
        name: &str,
        token: &str,
        host_dir: &Path,
        haproxy_socket: Option<&Path>,
        host_vars: &[(&str, String)],
    ) -> Result<()> {
        // Written by `start`: the shipped playbooks and the systemctl stand-in.
        let own = host_dir.join("playbooks");
        let playbooks = if self.playbooks_per_host && own.is_dir() {
            own
        } else {
            self.dir.join("playbooks")
        };
        let systemctl = self.dir.join("bin").join("systemctl");
        let mut cmd = tokio::process::Command::new(&self.bins.agent);
        cmd.args(["enroll", "--controller", &self.quic, "--token", token])
            .arg("--ca-cert")
            .arg(self.data_dir.join("ca.pem"))
            .args(["--name", name])
            .arg("--data-dir")
            .arg(host_dir.join("agent"))
            .arg("--playbook-dir")
            .arg(&playbooks)
            .arg("--systemctl")
            .arg(&systemctl);
        if let Some(s) = haproxy_socket {
            cmd.arg("--haproxy-socket").arg(s);
        }
        // Host variables (agent.toml [vars]): this host's own port and
        // directories, under the request's vars, like Ansible's host_vars.
        for (k, v) in host_vars {
            cmd.arg("--var").arg(format!("{k}={v}"));
        }
        let out = cmd
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .context("running vesemir-agent enroll")?;
        if !out.status.success() {
            bail!(
                "enrolling {name} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    fn spawn_agent(&mut self, name: &str, host_dir: &Path) -> Result<()> {
        let mut cmd = Command::new(&self.bins.agent);
        cmd.arg("run")
            .arg("--config")
            .arg(host_dir.join("agent").join("agent.toml"))
            .current_dir(host_dir)
            .env("RUST_LOG", "info")
            .env("VESEMIR_SYSTEMCTL_UNITS", host_dir.join("units"))
            .env("VESEMIR_SYSTEMCTL_LOG", host_dir.join("systemctl.log"));
        let d = Proc::daemon(
            &format!("agent {name}"),
            &mut cmd,
            host_dir.join("agent.log"),
        )?;
        self.agents.push(d);
        Ok(())
    }

    /// Starts `vesemir-controller serve` (again, after
    /// [`LocalFleet::kill_controller`]) and waits for `/readyz`.
    pub async fn start_controller(&mut self) -> Result<()> {
        if let Some(c) = self.controller.as_mut() {
            if c.exited().is_none() {
                bail!("the controller is already running");
            }
        }
        self.controller_starts += 1;
        let log = self
            .dir
            .join(format!("controller-{}.log", self.controller_starts));
        let mut cmd = Command::new(&self.bins.controller);
        cmd.arg("serve")
            .arg("--config")
            .arg(self.data_dir.join("controller.toml"))
            .env("RUST_LOG", "info,vesemir_controller=debug");
        self.controller = Some(Proc::daemon("controller", &mut cmd, &log)?);
        let http = reqwest::Client::new();
        let url = format!("{}/readyz", self.api_url);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let c = self.controller.as_mut().expect("just set");
            if let Some(st) = c.exited() {
                bail!("the controller exited at start ({st}):\n{}", c.log_tail(30));
            }
            if let Ok(r) = http.get(&url).timeout(Duration::from_secs(2)).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "the controller is not ready after {START_TIMEOUT:?}:\n{}",
                    c.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `kill -9` the controller.
    /// SIGTERMs the controller (SIGKILL after `grace`) and returns how it
    /// exited.
    pub fn stop_controller(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        let c = self.controller.as_mut()?;
        c.stop(grace);
        c.exited()
    }

    /// SIGKILLs the controller (for crash tests).
    pub fn kill_controller(&mut self) {
        if let Some(c) = self.controller.as_mut() {
            c.kill9();
        }
    }

    /// Polls `GET /v1/agents` until every host of the fleet is `connected`.
    pub async fn wait_agents_connected(&mut self, timeout: Duration) -> Result<()> {
        let mut names: Vec<String> = self.hosts.iter().map(|h| h.name.clone()).collect();
        names.push(LB_HOST.to_string());
        let deadline = Instant::now() + timeout;
        loop {
            let mut last = String::new();
            match self
                .api
                .json::<Vec<Value>>(self.api.req(reqwest::Method::GET, "/v1/agents"))
                .await
            {
                Ok(agents) => {
                    let missing: Vec<&String> = names
                        .iter()
                        .filter(|n| {
                            !agents
                                .iter()
                                .any(|a| a["name"] == n.as_str() && a["state"] == "connected")
                        })
                        .collect();
                    if missing.is_empty() {
                        return Ok(());
                    }
                    last = format!("not connected yet: {missing:?}");
                }
                Err(e) => last.push_str(&e.to_string()),
            }
            for a in &mut self.agents {
                if let Some(st) = a.exited() {
                    bail!("{} exited ({st}):\n{}", a.name, a.log_tail(30));
                }
            }
            if Instant::now() > deadline {
                bail!("agents did not connect within {timeout:?}: {last}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Builds changeset `version` (a small tar.gz in `artifacts/`) and
    /// serves it.
    pub fn publish(&self, version: &str) -> Result<Changeset> {
        let readme = format!("vesemir demo application, release {version}\n");
        let tgz = tar_gz(&[
            ("README.txt", readme.as_bytes()),
            ("release.txt", format!("{version}\n").as_bytes()),
        ])?;
        let name = format!("{APP}-{version}.tar.gz");
        let dir = self.dir.join("artifacts");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(&name), &tgz)?;
        let sha256 = sha256_hex(&tgz);
        let url = self.artifacts.put(&format!("/artifacts/{name}"), tgz);
        Ok(Changeset {
            version: version.to_string(),
            url,
            sha256,
        })
    }

    /// The demo's deployment request for `changeset`: every app host, at
    /// concurrency 2, drained in HAProxy (when it runs) with a 10/50/100 %
    /// weight ramp. Tests adjust the JSON before posting it.
    pub fn deploy_request(&self, changeset: &Changeset) -> Value {
        let mut body = json!({
            "application": APP,
            "environment": ENV,
            "team": "demo",
            "selector": {"tags": [APP_TAG], "environment": ENV},
            "concurrency": 2,
            "max_unavailable": 2,
            "max_fail_percentage": 0,
            "playbook": "deploy.yml",
            "vars": {"app": APP, "service": SERVICE},
            "changeset": changeset,
        });
        if self.haproxy.is_some() {
            body["haproxy"] = json!({
                "backend": BACKEND,
                "selector": {"recipes": ["haproxy"]},
                "degradation_seconds": 10,
                "drain_mode": "drain",
                "weights": [10, 50, 100],
                "sleep_seconds": 1,
            });
        }
        body
    }

    /// The same request as `vesemir deploy` flags.
    pub fn deploy_flags(&self, changeset: &Changeset) -> Vec<String> {
        let mut f: Vec<String> = [
            "--app",
            APP,
            "--env",
            ENV,
            "--team",
            "demo",
            "--tag",
            APP_TAG,
            "--chef-env",
            ENV,
            "--concurrency",
            "2",
            "--max-unavailable",
            "2",
            "--max-fail-percentage",
            "0",
            "--playbook",
            "deploy.yml",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        f.extend([
            "--var".into(),
            format!("app={APP}"),
            "--var".into(),
            format!("service={SERVICE}"),
            "--changeset-version".into(),
            changeset.version.clone(),
            "--changeset-url".into(),
            changeset.url.clone(),
            "--changeset-sha256".into(),
            changeset.sha256.clone(),
        ]);
        if self.haproxy.is_some() {
            f.extend(
                [
                    "--haproxy-backend",
                    BACKEND,
                    "--haproxy-recipe",
                    "haproxy",
                    "--degradation-seconds",
                    "10",
                    "--drain-mode",
                    "drain",
                    "--weights",
                    "10,50,100",
                    "--sleep-seconds",
                    "1",
                ]
                .iter()
                .map(|s| s.to_string()),
            );
        }
        f
    }

    /// `POST /v1/deployments`: the HTTP status and the JSON answer, whatever
    /// they are.
    pub async fn post_deployment(
        &self,
        body: &Value,
        idempotency_key: Option<&str>,
    ) -> Result<(u16, Value)> {
        let mut rb = self
            .api
            .req(reqwest::Method::POST, "/v1/deployments")
            .json(body);
        if let Some(k) = idempotency_key {
            rb = rb.header("Idempotency-Key", k);
        }
        let resp = rb.send().await.context("POST /v1/deployments")?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, v))
    }

    /// Submits a deployment (expects 202) and returns its id.
    pub async fn submit(&self, body: &Value) -> Result<String> {
        let (status, v) = self.post_deployment(body, None).await?;
        if status != 202 {
            bail!("POST /v1/deployments answered {status}: {v}");
        }
        v["id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("202 without an id: {v}"))
    }

    /// `GET /v1/deployments/{id}`.
    pub async fn deployment(&self, id: &str) -> Result<Value> {
        self.api
            .json(
                self.api
                    .req(reqwest::Method::GET, &format!("/v1/deployments/{id}")),
            )
            .await
    }

    /// Polls the deployment until `done` holds for it.
    pub async fn wait_deployment_until(
        &self,
        id: &str,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        loop {
            match self.deployment(id).await {
                Ok(v) if done(&v) => return Ok(v),
                Ok(v) => last = v,
                // The controller may be restarting: keep polling.
                Err(_) => {}
            }
            if Instant::now() > deadline {
                bail!(
                    "timed out after {timeout:?} waiting for deployment {id}: {what}; last seen:\n{}",
                    serde_json::to_string_pretty(&last).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls the deployment until it has finished (any final status).
    pub async fn wait_deployment(&self, id: &str, timeout: Duration) -> Result<Value> {
        self.wait_deployment_until(id, "a final status", timeout, |v| {
            is_final(v["status"].as_str().unwrap_or(""))
        })
        .await
    }

    /// `GET /` on each app host: the version it serves (None if down).
    pub async fn versions(&self) -> Vec<Option<String>> {
        let http = reqwest::Client::new();
        let mut out = Vec::new();
        for h in &self.hosts {
            let v = match http
                .get(h.url("/"))
                .timeout(Duration::from_secs(2))
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => {
                    r.text().await.ok().map(|t| t.trim().to_string())
                }
                _ => None,
            };
            out.push(v);
        }
        out
    }

    /// `show servers state` of the backend (HAProxy must run).
    pub async fn servers_state(&self) -> Result<Vec<ServerRow>> {
        let h = self
            .haproxy
            .as_ref()
            .context("this fleet runs no HAProxy")?;
        haproxy::servers_state(&h.socket, &h.backend).await
    }

    /// Waits until every server is in rotation in HAProxy.
    pub async fn wait_all_in_rotation(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let rows = self.servers_state().await?;
            if rows.iter().all(ServerRow::in_rotation) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("servers not all in rotation after {timeout:?}: {rows:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The API client (admin token).
    pub fn api(&self) -> &Api {
        &self.api
    }
    /// The controller's API URL.
    pub fn url(&self) -> &str {
        &self.api_url
    }
    /// The admin token.
    pub fn token(&self) -> &str {
        &self.token
    }
    /// The fleet's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// The controller's data dir.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
    /// The app hosts, in order.
    pub fn hosts(&self) -> &[AppHost] {
        &self.hosts
    }
    /// One app host by name.
    pub fn host(&self, name: &str) -> Option<&AppHost> {
        self.hosts.iter().find(|h| h.name == name)
    }
    /// HAProxy, if it runs.
    pub fn haproxy(&self) -> Option<&HaproxyInfo> {
        self.haproxy.as_ref()
    }
    /// The binaries in use.
    pub fn binaries(&self) -> &Binaries {
        &self.bins
    }
    /// Log files of the current controller process.
    pub fn controller_log(&self) -> PathBuf {
        self.dir
            .join(format!("controller-{}.log", self.controller_starts))
    }
    /// A `vesemir` CLI command pointed at this controller.
    pub fn cli_command(&self) -> Result<Command> {
        let bin = self
            .bins
            .cli
            .as_ref()
            .context("the vesemir binary was not found: run `cargo build --workspace`")?;
        let mut cmd = Command::new(bin);
        cmd.env("VESEMIR_URL", &self.api_url)
            .env("VESEMIR_TOKEN", &self.token)
            .env_remove("VESEMIR_CONFIG");
        Ok(cmd)
    }

    /// Pids of everything running that this fleet started: controller,
    /// agents, HAProxy and the apps (started through the stand-in).
    pub fn pids(&self) -> Vec<(String, i32)> {
        let mut out = Vec::new();
        if let Some(c) = &self.controller {
            out.push((c.name.clone(), c.pid() as i32));
        }
        for a in &self.agents {
            out.push((a.name.clone(), a.pid() as i32));
        }
        if let Some(h) = &self.haproxy_proc {
            out.push((h.name.clone(), h.pid() as i32));
        }
        for h in &self.hosts {
            if let Some(p) = h.app_pid() {
                out.push((format!("app on {}", h.name), p));
            }
        }
        out
    }

    /// Logs of the controller and agents (tails), for a failing test.
    pub fn logs(&self, lines: usize) -> String {
        let mut s = String::new();
        if let Some(c) = &self.controller {
            s.push_str(&format!(
                "----- {} ({}) -----\n{}\n",
                c.name,
                c.log.display(),
                c.log_tail(lines)
            ));
        }
        for a in &self.agents {
            s.push_str(&format!("----- {} -----\n{}\n", a.name, a.log_tail(lines)));
        }
        for h in &self.hosts {
            s.push_str(&format!(
                "----- systemctl.log of {} -----\n{}\n",
                h.name,
                log_tail(&h.systemctl_log(), lines)
            ));
        }
        s
    }

    /// Stops everything: agents (so nothing restarts an app), controller,
    /// the apps (waiting for a stand-in command in progress to finish
    /// first), HAProxy. Keeps the directory only if asked to.
    pub fn shutdown(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        for a in &mut self.agents {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(a.pid() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        for a in &mut self.agents {
            a.stop(Duration::from_secs(5));
        }
        if let Some(c) = self.controller.as_mut() {
            c.stop(Duration::from_secs(5));
        }
        for h in &self.hosts {
            stop_app(h);
        }
        if let Some(h) = self.haproxy_proc.as_mut() {
            h.stop(Duration::from_secs(5));
        }
        if let Some(t) = self.tmp.take() {
            if self.keep {
                let _ = t.keep();
            }
        }
    }

    /// Keep the directory after shutdown (it is printed by the demo).
    pub fn set_keep(&mut self, keep: bool) {
        self.keep = keep;
    }
}

impl Drop for LocalFleet {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Whether a deployment status is final.
pub fn is_final(status: &str) -> bool {
    matches!(status, "succeeded" | "failed" | "cancelled" | "aborted")
}

/// Stops the app a host's stand-in started: waits until no stand-in command
/// holds the unit lock (one may be mid-restart), then SIGTERM to the app's
/// process group, SIGKILL after 3 s.
fn stop_app(host: &AppHost) {
    let lock_path = host.units_dir().join("app.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&lock_path)
        .ok();
    let deadline = Instant::now() + Duration::from_secs(15);
    if let Some(f) = &lock {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a file descriptor we own; released when `lock` drops.
        while unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    if let Some(pid) = host.app_pid() {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        let _ = kill(Pid::from_raw(-pid), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while pid_alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if pid_alive(pid) {
            let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
        }
        let _ = std::fs::remove_file(host.units_dir().join("app.pid"));
    }
    drop(lock);
}

fn inventory_toml(hosts: &[AppHost]) -> String {
    let mut s = String::from("# Static inventory written by vesemir demo.\n");
    for h in hosts {
        s.push_str(&format!(
            "\n[[hosts]]\nname = \"{}\"\naddress = \"127.0.0.1\"\ntags = [\"{APP_TAG}\"]\nroles = [\"{APP}\"]\nrecipes = [\"{APP}::default\"]\nenvironment = \"{ENV}\"\n",
            h.name
        ));
    }
    s.push_str(&format!(
        "\n[[hosts]]\nname = \"{LB_HOST}\"\naddress = \"127.0.0.1\"\ntags = [\"lb\"]\nroles = [\"lb\"]\nrecipes = [\"haproxy\"]\nenvironment = \"{ENV}\"\n"
    ));
    s
}

/// The host's `app.service` for the stand-in: the sample app on the host's
/// port, serving the `VERSION` of the current release.
fn write_unit(host: &AppHost, sample_app: &Path) -> Result<()> {
    let version = host.base_dir().join("current").join("VERSION");
    let unit = format!(
        "# vesemir demo: the sample app of {name}, run by the systemctl stand-in.\n[Service]\nExecStart={bin} --listen 127.0.0.1:{port} --version-file {version}\nX-Vesemir-ReadyCheck=exec 3<>/dev/tcp/127.0.0.1/{port}\n",
        name = host.name,
        bin = sample_app.display(),
        port = host.port,
        version = version.display(),
    );
    std::fs::write(host.units_dir().join("app.service"), unit)?;
    Ok(())
}

/// Writes the shipped playbooks into `dir`.
fn write_playbooks(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir.join("templates"))?;
    for (name, text) in [
        ("deploy.yml", DEPLOY_YML),
        ("rollback.yml", ROLLBACK_YML),
        ("restart.yml", RESTART_YML),
    ] {
        std::fs::write(dir.join(name), text)?;
    }
    std::fs::write(dir.join("templates").join("app.env.j2"), APP_ENV_J2)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inventory_lists_app_hosts_and_the_load_balancer() {
        let hosts = vec![AppHost {
            name: "app-1".into(),
            port: 1,
            dir: "/d".into(),
        }];
        let inv = inventory_toml(&hosts);
        assert!(inv.contains("name = \"app-1\""));
        assert!(inv.contains("tags = [\"app:demo\"]"));
        assert!(inv.contains("recipes = [\"haproxy\"]"));
    }
}
