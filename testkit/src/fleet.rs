//! Real controller and agent processes for end-to-end tests: each in its own
//! temp dir, on free loopback ports, killed on drop. Their logs go to files
//! in the temp dir and are printed when a test fails.

use anyhow::{anyhow, bail, Result};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::procs::{bind_controller_sockets, pass_sockets, Listen};
pub use crate::procs::{free_port, Proc};
use std::time::{Duration, Instant};

/// Path of a workspace binary (built by `cargo build --workspace`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/debug/deps/test-xxxx → target/debug/NAME
    let dir = exe
        .parent()
        .and_then(|d| {
            if d.ends_with("deps") {
                d.parent()
            } else {
                Some(d)
            }
        })
        .expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace` first (the README's test command does)",
        p.display()
    );
    p
}

/// Polls `f` until it returns Some or the deadline passes.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A test runner started by systemd (a CI service) must not make the
/// daemons it starts log JSON or talk to its notify socket: tests that want
/// those set them explicitly.
pub fn without_systemd_env(cmd: &mut Command) {
    for v in [
        "INVOCATION_ID",
        "JOURNAL_STREAM",
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
    ] {
        cmd.env_remove(v);
    }
}

/// Options of a test controller.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    /// Heartbeat interval, seconds.
    pub heartbeat_secs: u32,
    /// Agent certificate lifetime (humantime).
    pub agent_cert_ttl: String,
    /// Lines appended to controller.toml.
    pub extra_config: String,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        ControllerOptions {
            heartbeat_secs: 1,
            agent_cert_ttl: "7d".into(),
            extra_config: String::new(),
        }
    }
}

/// A controller data dir and, when started, its process.
pub struct Controller {
    /// The serve process (first, so it is dropped before the temp dir).
    pub proc: Option<Proc>,
    /// The temp dir holding everything of this test.
    pub root: tempfile::TempDir,
    /// The data dir.
    pub data_dir: PathBuf,
    /// API base URL.
    pub url: String,
    /// QUIC/enrollment address.
    pub quic: SocketAddr,
    /// Admin token.
    pub token: String,
    starts: u32,
    /// The API, enrollment and QUIC sockets, bound by `init` and handed to
    /// the first `serve` already bound (so no other test can take the
    /// ports in between); dropped once it started. A restart binds the
    /// same ports again, as a restarted daemon would.
    sockets: Option<Vec<(&'static str, Listen)>>,
}

impl Controller {
    /// Runs `vesemir-controller init` in a fresh temp dir.
    pub fn init(opts: ControllerOptions) -> Result<Controller> {
        Controller::init_with_args(opts, &[])
    }

    /// Two started controllers on one PostgreSQL database: the first made
    /// with `init --database-url URL`, the second with `init --join` from
    /// the first's data dir (same CA, tokens and database).
    pub fn joined_pair(database_url: &str) -> Result<(Controller, Controller)> {
        let mut a = Controller::init_with_args(
            ControllerOptions::default(),
            &["--database-url", database_url],
        )?;
        a.start()?;
        let a_dir = a.data_dir.to_string_lossy().into_owned();
        let mut b = Controller::init_with_args(ControllerOptions::default(), &["--join", &a_dir])?;
        b.start()?;
        Ok((a, b))
    }

    /// Like [`Controller::init`], with more `init` arguments
    /// (`--database-url URL`, `--join DIR`).
    pub fn init_with_args(opts: ControllerOptions, init_args: &[&str]) -> Result<Controller> {
        let root = tempfile::tempdir()?;
        let data_dir = root.path().join("controller");
        let sockets = bind_controller_sockets()?;
        let port = |name: &str| -> Result<u16> {
            let (_, l) = sockets.iter().find(|(n, _)| *n == name).expect("bound");
            Ok(match l {
                Listen::Tcp(t) => t.local_addr()?.port(),
                Listen::Udp(u) => u.local_addr()?.port(),
            })
        };
        let (api_port, quic_port) = (port("api")?, port("quic")?);
        let out = Command::new(bin("vesemir-controller"))
            .args(["init", "--data-dir"])
            .arg(&data_dir)
            .args(["--api-listen", &format!("127.0.0.1:{api_port}")])
            .args(["--quic-listen", &format!("127.0.0.1:{quic_port}")])
            .args(["--heartbeat-secs", &opts.heartbeat_secs.to_string()])
            .args(["--agent-cert-ttl", &opts.agent_cert_ttl])
            .args(init_args)
            .output()?;
        if !out.status.success() {
            bail!(
                "init failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if !opts.extra_config.is_empty() {
            let cfg = data_dir.join("controller.toml");
            let mut text = std::fs::read_to_string(&cfg)?;
            // Top-level keys must come before any table.
            text = format!("{}\n{}", opts.extra_config, text);
            std::fs::write(&cfg, text)?;
        }
        let token = std::fs::read_to_string(data_dir.join("admin.token"))?
            .trim()
            .to_string();
        Ok(Controller {
            root,
            data_dir,
            url: format!("http://127.0.0.1:{api_port}"),
            quic: format!("127.0.0.1:{quic_port}").parse()?,
            token,
            proc: None,
            starts: 0,
            sockets: Some(sockets),
        })
    }

    /// Makes `cmd` (a `serve` a test starts itself) inherit the sockets
    /// `init` bound, the first time; later starts bind the configured
    /// ports themselves, as a restarted daemon would.
    pub fn pass_sockets(&mut self, cmd: &mut Command) {
        if let Some(s) = self.sockets.take() {
            pass_sockets(cmd, s);
        }
    }

    /// Drops the sockets `init` bound, so `serve` binds the addresses in
    /// controller.toml itself (for a test that changes them, e.g. to
    /// 0.0.0.0).
    pub fn release_sockets(&mut self) {
        self.sockets = None;
    }

    /// Starts `serve` and waits for `/readyz`.
    pub fn start(&mut self) -> Result<()> {
        self.starts += 1;
        let mut cmd = Command::new(bin("vesemir-controller"));
        cmd.args(["serve", "--config"])
            .arg(self.data_dir.join("controller.toml"))
            .env("RUST_LOG", "info,vesemir_controller=debug");
        without_systemd_env(&mut cmd);
        self.pass_sockets(&mut cmd);
        let log = self
            .root
            .path()
            .join(format!("controller-{}.log", self.starts));
        self.proc = Some(Proc::spawn("controller", cmd, log)?);
        let url = format!("{}/readyz", self.url);
        let proc = self.proc.as_mut().expect("just set");
        wait_for("controller /readyz", Duration::from_secs(20), || {
            if !proc.is_running() {
                return Some(Err(anyhow!("controller exited:\n{}", proc.log_text())));
            }
            http_get_status(&url).filter(|s| *s == 200).map(|_| Ok(()))
        })?
    }

    /// Runs the `vesemir` CLI against this controller.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin("vesemir"))
            .args(args)
            .env("VESEMIR_CONFIG", self.data_dir.join("cli.toml"))
            .env_remove("VESEMIR_URL")
            .env_remove("VESEMIR_TOKEN")
            .output()
            .expect("run vesemir")
    }

    /// `vesemir agents list --output json`, parsed.
    pub fn agents(&self) -> Result<Vec<serde_json::Value>> {
        let out = self.cli(&["agents", "list", "--output", "json"]);
        if !out.status.success() {
            bail!(
                "agents list failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// The state of one agent per `agents list`.
    pub fn agent_state(&self, name: &str) -> Option<String> {
        self.agents().ok()?.iter().find_map(|a| {
            (a["name"] == name).then(|| a["state"].as_str().unwrap_or("").to_string())
        })
    }

    /// Creates an enrollment token with `uses`.
    pub fn enrollment_token(&self, uses: u32) -> Result<String> {
        let out = self.cli(&[
            "tokens",
            "create",
            "--ttl",
            "1h",
            "--uses",
            &uses.to_string(),
        ]);
        if !out.status.success() {
            bail!(
                "tokens create failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?.trim().to_string())
    }

    /// The controller's CA file.
    pub fn ca(&self) -> PathBuf {
        self.data_dir.join("ca.pem")
    }

    /// A fresh agent dir under this test's temp dir.
    pub fn agent_dir(&self, name: &str) -> PathBuf {
        self.root.path().join("agents").join(name)
    }

    /// Enrolls a node with the agent binary; returns the command's output.
    pub fn enroll(&self, name: &str, token: &str, extra: &[&str]) -> Output {
        Command::new(bin("vesemir-agent"))
            .args([
                "enroll",
                "--controller",
                &self.quic.to_string(),
                "--token",
                token,
            ])
            .arg("--ca-cert")
            .arg(self.ca())
            .args(["--name", name, "--data-dir"])
            .arg(self.agent_dir(name))
            .args(extra)
            .output()
            .expect("run vesemir-agent enroll")
    }

    /// Enrolls (must succeed) and starts an agent.
    pub fn enroll_and_run(&self, name: &str, token: &str) -> Result<Agent> {
        let out = self.enroll(name, token, &[]);
        if !out.status.success() {
            bail!(
                "enroll {name} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Agent::start(self.agent_dir(name), name)
    }
}

/// A running agent.
pub struct Agent {
    /// Node name.
    pub name: String,
    /// Its data dir (agent.toml inside).
    pub dir: PathBuf,
    /// The process.
    pub proc: Proc,
}

impl Agent {
    /// Starts `vesemir-agent run` on an enrolled dir.
    pub fn start(dir: PathBuf, name: &str) -> Result<Agent> {
        Agent::start_with_env::<&str>(dir, name, &[])
    }

    /// Starts an agent with extra environment (e.g. for the systemctl stand-in).
    pub fn start_with_env<V: AsRef<std::ffi::OsStr>>(
        dir: PathBuf,
        name: &str,
        env: &[(&'static str, V)],
    ) -> Result<Agent> {
        let mut cmd = Command::new(bin("vesemir-agent"));
        cmd.args(["run", "--config"])
            .arg(dir.join("agent.toml"))
            .env("RUST_LOG", "info");
        without_systemd_env(&mut cmd);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let log = dir.join("agent.log");
        Ok(Agent {
            name: name.to_string(),
            proc: Proc::spawn(&format!("agent {name}"), cmd, log)?,
            dir,
        })
    }

    /// Rewrites a top-level key of agent.toml (before starting it).
    pub fn set_config(dir: &Path, key: &str, toml_value: &str) -> Result<()> {
        let path = dir.join("agent.toml");
        let text = std::fs::read_to_string(&path)?;
        let mut out: Vec<String> = text
            .lines()
            .filter(|l| !l.starts_with(&format!("{key} =")))
            .map(str::to_string)
            .collect();
        out.insert(0, format!("{key} = {toml_value}"));
        std::fs::write(&path, out.join("\n") + "\n")?;
        Ok(())
    }
}

/// Blocking GET returning the status, None on connection failure.
pub fn http_get_status(url: &str) -> Option<u16> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    rt.block_on(async {
        reqwest::Client::new()
            .get(url)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16())
    })
}

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}
