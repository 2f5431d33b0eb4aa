//! Start a real HAProxy with an admin socket, and real sample apps behind it.
//!
//! - [`Haproxy::start`] writes a `haproxy.cfg` into its own temp dir (admin
//!   socket `DIR/haproxy.sock`, a frontend on a free loopback port, one
//!   backend with health checks on `GET /health` every 200 ms, `option
//!   redispatch` and `retry-on conn-failure empty-response` so a request to a
//!   server going away is retried elsewhere), validates it with `haproxy -c`,
//!   runs `haproxy -db` in the foreground and waits until the admin socket
//!   answers and the frontend accepts. Dropping it stops HAProxy (SIGTERM,
//!   then SIGKILL).
//! - [`SampleApp::start`] runs `vesemir-sample-app` on a free port.
//!   Integration tests pass the binary as
//!   `env!("CARGO_BIN_EXE_vesemir-sample-app")`.
//! - [`systemctl_stand_in`]: path of the recording `systemctl` stand-in.
//!
//! Every server gets `weight 100`, so percent weights map to round numbers
//! (HAProxy's default weight is 1, where 50% would round to 0).

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::Instant;
use vesemir_agent::haproxy::{RuntimeApi, ServerState};

/// How long [`Haproxy::start`] and [`SampleApp::start`] wait for readiness.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Poll interval for readiness and state checks.
const POLL: Duration = Duration::from_millis(20);

pub use crate::procs::free_port;

/// Path of the `vesemir-sample-app` binary (built by `cargo build
/// --workspace --bins`, which the README's test command runs first).
pub fn sample_app() -> String {
    crate::fleet::bin("vesemir-sample-app")
        .display()
        .to_string()
}

/// The recording `systemctl` stand-in (`tests/fixtures/bin/systemctl`), for
/// tests that need a service manager: systemd is not PID 1 here. See the
/// comment at the top of the script for its environment variables.
pub fn systemctl_stand_in() -> PathBuf {
    crate::fleet::repo().join("tests/fixtures/bin/systemctl")
}

/// Poll `probe` every 20 ms until it returns `Some`, or fail after `timeout`
/// saying what was awaited.
pub async fn poll_until<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A running HAProxy with one frontend, one backend and an admin socket.
pub struct Haproxy {
    /// The `haproxy -db` process; stopped on drop.
    child: Child,
    /// Holds `haproxy.cfg`, `haproxy.sock` and `haproxy.log`; removed on drop.
    dir: TempDir,
    /// Where the frontend listens.
    frontend: SocketAddr,
    /// The admin socket.
    socket: PathBuf,
    /// The one backend's name.
    backend: String,
}

impl Haproxy {
    /// Start HAProxy in front of `servers` (`(name, address)`), in backend
    /// `backend`. Returns once the admin socket answers and the frontend
    /// accepts connections; servers may still be going through their first
    /// health checks (see [`Haproxy::wait_all_up`]).
    pub async fn start(backend: &str, servers: &[(&str, SocketAddr)]) -> Result<Haproxy> {
        // The free port may be taken between probing and HAProxy's bind: retry.
        let mut last_err = None;
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("vesemir-haproxy-")
                .tempdir()?;
            let frontend = SocketAddr::from(([127, 0, 0, 1], free_port()?));
            let cfg_path = dir.path().join("haproxy.cfg");
            std::fs::write(&cfg_path, config(dir.path(), frontend, backend, servers))?;
            validate(&cfg_path)?;
            let log = std::fs::File::create(dir.path().join("haproxy.log"))?;
            let child = Command::new("haproxy")
                .arg("-db")
                .arg("-f")
                .arg(&cfg_path)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("running haproxy")?;
            let mut haproxy = Haproxy {
                child,
                socket: dir.path().join("haproxy.sock"),
                dir,
                frontend,
                backend: backend.to_owned(),
            };
            match haproxy.wait_ready().await {
                Ok(()) => return Ok(haproxy),
                // Dropping `haproxy` stops the process.
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.expect("at least one attempt"))
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let api = self.api();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("haproxy exited at start ({status}):\n{}", self.log());
            }
            if api.servers_state(&self.backend).await.is_ok()
                && TcpStream::connect(self.frontend).is_ok()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "haproxy not ready after {START_TIMEOUT:?} (admin socket {}, frontend {}):\n{}",
                    self.socket.display(),
                    self.frontend,
                    self.log()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Where clients send requests.
    pub fn frontend_addr(&self) -> SocketAddr {
        self.frontend
    }

    /// The admin socket (`level admin`).
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// The backend's name.
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// The temp dir holding the config, socket and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// HAProxy's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A runtime API client for the admin socket.
    pub fn api(&self) -> RuntimeApi {
        RuntimeApi::new(&self.socket)
    }

    /// HAProxy's stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }

    /// `show servers state BACKEND`, parsed.
    pub async fn show_servers_state(&self) -> Result<Vec<ServerState>> {
        Ok(self.api().servers_state(&self.backend).await?)
    }

    /// The state of one server.
    pub async fn server_state(&self, server: &str) -> Result<ServerState> {
        self.show_servers_state()
            .await?
            .into_iter()
            .find(|s| s.name == server)
            .with_context(|| format!("no server {server} in backend {}", self.backend))
    }

    /// Poll `show servers state` until `done` holds, or fail after `timeout`.
    pub async fn wait_for_states(
        &self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&[ServerState]) -> bool,
    ) -> Result<Vec<ServerState>> {
        let deadline = Instant::now() + timeout;
        loop {
            let states = self.show_servers_state().await?;
            if done(&states) {
                return Ok(states);
            }
            if Instant::now() >= deadline {
                bail!("timed out after {timeout:?} waiting for {what}; last servers state: {states:#?}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Wait until every server is up, passing health checks and in rotation.
    pub async fn wait_all_up(&self, timeout: Duration) -> Result<()> {
        self.wait_for_states("all servers in rotation", timeout, |s| {
            s.iter().all(ServerState::in_rotation)
        })
        .await
        .map(drop)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(5));
    }
}

/// SIGTERM, wait up to `grace`, then SIGKILL; always reaps.
fn stop_child(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn validate(cfg: &Path) -> Result<()> {
    let out = match Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(cfg)
        .output()
    {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("haproxy is not installed: apt-get install -y haproxy")
        }
        other => other.context("running haproxy -c")?,
    };
    if !out.status.success() {
        bail!(
            "haproxy -c refused {}:\n{}{}",
            cfg.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn config(
    dir: &Path,
    frontend: SocketAddr,
    backend: &str,
    servers: &[(&str, SocketAddr)],
) -> String {
    let mut cfg = format!(
        "global
    stats socket {sock} mode 600 level admin
    stats timeout 30s
    nbthread 1

defaults
    mode http
    timeout connect 1s
    timeout client 60s
    timeout server 60s
    timeout http-request 10s
    timeout http-keep-alive 2s
    timeout check 1s
    # A request to a server that is going away is retried, on another server.
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response

frontend fe
    bind {frontend}
    default_backend {backend}

backend {backend}
    balance roundrobin
    option httpchk GET /health
    default-server check inter 200ms rise 1 fall 2 weight 100
",
        sock = dir.join("haproxy.sock").display(),
    );
    for (name, addr) in servers {
        cfg.push_str(&format!("    server {name} {addr}\n"));
    }
    cfg
}

/// A running `vesemir-sample-app` on a free loopback port.
pub struct SampleApp {
    /// The app process; killed on drop.
    child: tokio::process::Child,
    /// Where it listens.
    addr: SocketAddr,
    /// Holds `version` and, when unhealthy, `unhealthy`.
    dir: PathBuf,
}

impl SampleApp {
    /// Write `version` into `dir/version` and start `bin` (the
    /// `vesemir-sample-app` binary) on a free port with that version file.
    /// Returns once it listens.
    pub async fn start(bin: &Path, dir: &Path, version: &str) -> Result<SampleApp> {
        std::fs::create_dir_all(dir)?;
        let version_file = dir.join("version");
        std::fs::write(&version_file, format!("{version}\n"))?;
        let mut child = tokio::process::Command::new(bin)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--version-file")
            .arg(&version_file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("running {}", bin.display()))?;
        let stdout = child.stdout.take().context("sample app stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(START_TIMEOUT, lines.next_line())
            .await
            .context("sample app did not report its address")??
            .context("sample app exited before listening")?;
        let addr = line
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("unexpected first line from sample app: {line:?}"))?;
        Ok(SampleApp {
            child,
            addr,
            dir: dir.to_owned(),
        })
    }

    /// Where the app listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The app's process id.
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Make `/health` answer 500 (or 200 again).
    pub fn set_unhealthy(&self, unhealthy: bool) -> Result<()> {
        let f = self.dir.join("unhealthy");
        if unhealthy {
            std::fs::write(f, "")?;
        } else if f.exists() {
            std::fs::remove_file(f)?;
        }
        Ok(())
    }

    /// Send SIGTERM (graceful stop: in-flight requests finish).
    pub fn terminate(&self) -> Result<()> {
        let pid = self.child.id().context("sample app already reaped")?;
        kill(Pid::from_raw(pid as i32), Signal::SIGTERM)?;
        Ok(())
    }

    /// Wait for the app to exit, at most `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .with_context(|| format!("sample app still running after {timeout:?}"))?
            .map_err(Into::into)
    }
}

/// Sample apps `web1`…`webN` behind one HAProxy backend, all in rotation.
pub struct Fleet {
    /// The load balancer (dropped first).
    pub haproxy: Haproxy,
    /// The apps, in server-name order.
    pub apps: Vec<SampleApp>,
    /// Holds each app's directory (`DIR/webN/version`).
    dir: TempDir,
}

impl Fleet {
    /// Start `n` sample apps (`bin` is the `vesemir-sample-app` binary)
    /// serving `version`, named `web1`…`webN`, behind HAProxy backend
    /// `backend`; waits until all are in rotation.
    pub async fn start(bin: &Path, backend: &str, n: usize, version: &str) -> Result<Fleet> {
        let dir = tempfile::Builder::new()
            .prefix("vesemir-fleet-")
            .tempdir()?;
        let mut apps = Vec::new();
        for i in 1..=n {
            apps.push(SampleApp::start(bin, &dir.path().join(format!("web{i}")), version).await?);
        }
        let names = Fleet::names(n);
        let servers: Vec<(&str, SocketAddr)> = names
            .iter()
            .zip(&apps)
            .map(|(name, app)| (name.as_str(), app.addr()))
            .collect();
        let haproxy = Haproxy::start(backend, &servers).await?;
        haproxy.wait_all_up(START_TIMEOUT).await?;
        Ok(Fleet { haproxy, apps, dir })
    }

    /// Server names `web1`…`webN`.
    pub fn names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("web{i}")).collect()
    }

    /// The temp dir holding the apps' directories.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// The recording `systemctl` stand-in set up in a temp dir: a units
/// directory and a call log, passed to the script through
/// `VESEMIR_SYSTEMCTL_UNITS` and `VESEMIR_SYSTEMCTL_LOG`.
pub struct Systemctl {
    /// Holds `units/` and `systemctl.log`.
    dir: TempDir,
}

impl Systemctl {
    /// A fresh, empty stand-in environment.
    pub fn new() -> Result<Systemctl> {
        let dir = tempfile::Builder::new()
            .prefix("vesemir-systemctl-")
            .tempdir()?;
        std::fs::create_dir(dir.path().join("units"))?;
        Ok(Systemctl { dir })
    }

    /// A stand-in with one unit, `app`: the sample app on
    /// `127.0.0.1:port`, serving version 1.0 from a `VERSION` file in the
    /// units directory.
    pub fn with_sample_app(port: u16) -> Result<Systemctl> {
        let sys = Systemctl::new()?;
        let version = sys.units_dir().join("VERSION");
        std::fs::write(&version, "1.0\n")?;
        sys.add_unit(
            "app",
            &format!(
                "{} --listen 127.0.0.1:{port} --version-file {}",
                crate::fleet::bin("vesemir-sample-app").display(),
                version.display()
            ),
            None,
        )?;
        Ok(sys)
    }

    /// The units directory (`VESEMIR_SYSTEMCTL_UNITS`).
    pub fn units_dir(&self) -> PathBuf {
        self.dir.path().join("units")
    }

    /// The call log (`VESEMIR_SYSTEMCTL_LOG`).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("systemctl.log")
    }

    /// The environment an agent (or anything else) needs to use this stand-in.
    pub fn env(&self) -> Vec<(&'static str, PathBuf)> {
        vec![
            ("VESEMIR_SYSTEMCTL_UNITS", self.units_dir()),
            ("VESEMIR_SYSTEMCTL_LOG", self.log_path()),
        ]
    }

    /// Define unit `name` running `exec_start` (a shell command line), with
    /// an optional readiness command a start waits for.
    pub fn add_unit(&self, name: &str, exec_start: &str, ready_check: Option<&str>) -> Result<()> {
        let mut unit = format!("[Service]\nExecStart={exec_start}\n");
        if let Some(check) = ready_check {
            unit.push_str(&format!("X-Vesemir-ReadyCheck={check}\n"));
        }
        std::fs::write(self.units_dir().join(format!("{name}.service")), unit)?;
        Ok(())
    }

    /// Run the stand-in with `args`; returns its output (any exit code).
    pub async fn run(&self, args: &[&str]) -> Result<std::process::Output> {
        let out = tokio::process::Command::new(systemctl_stand_in())
            .args(args)
            .envs(self.env())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .await?;
        Ok(out)
    }

    /// Pid of a running unit, from its pidfile.
    pub fn main_pid(&self, name: &str) -> Option<u32> {
        std::fs::read_to_string(self.units_dir().join(format!("{name}.pid")))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Recorded calls: `(unix time in seconds, arguments)`.
    pub fn calls(&self) -> Result<Vec<(f64, String)>> {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        log.lines()
            .map(|l| {
                let (t, args) = l.split_once(' ').unwrap_or((l, ""));
                Ok((
                    t.parse().with_context(|| format!("bad log line {l:?}"))?,
                    args.to_owned(),
                ))
            })
            .collect()
    }
}

impl Drop for Systemctl {
    fn drop(&mut self) {
        // Stop whatever the units still run: they are not our children.
        let Ok(entries) = std::fs::read_dir(self.units_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "pid") {
                let pid = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|p| p.trim().parse::<i32>().ok());
                // Only a live session leader with that pid is still ours; the
                // unit leads its own process group.
                if let Some(pid) = pid.filter(|&p| leads_own_session(p)) {
                    let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
                }
            }
        }
    }
}

/// Whether `pid` is alive (not a zombie) and the leader of its own session,
/// as the stand-in starts units.
fn leads_own_session(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some((_, rest)) = stat.rsplit_once(") ") else {
        return false;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields.first().is_some_and(|s| *s != "Z" && *s != "X")
        && fields.get(3) == Some(&pid.to_string().as_str())
}
