//! Child processes of a local fleet: spawned with their output in a log
//! file, stopped with SIGTERM then SIGKILL, always reaped. Plus the helpers
//! to find the sibling binaries and free loopback ports.

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A process we started; its stdout and stderr go to `log`.
pub(crate) struct Daemon {
    /// What it is, for messages (`controller`, `agent app-1`, `haproxy`).
    pub name: String,
    /// The process (reaped by [`Daemon::stop`]).
    child: Child,
    /// Its combined output.
    pub log: PathBuf,
    /// Set once reaped, so stopping twice is harmless.
    status: Option<ExitStatus>,
}

impl Daemon {
    /// Spawns `cmd` with stdin closed and output appended to `log`.
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Result<Daemon> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        Ok(Daemon {
            name: name.to_string(),
            child,
            log: log.to_owned(),
            status: None,
        })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Exit status if it has exited (reaps it).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        log_tail(&self.log, n)
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL; reaps.
    pub fn stop(&mut self, grace: Duration) {
        if self.exited().is_some() {
            return;
        }
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill9();
    }

    /// SIGKILL; reaps.
    pub fn kill9(&mut self) {
        if self.exited().is_some() {
            return;
        }
        let _ = self.child.kill();
        self.status = self.child.wait().ok();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// The last `n` lines of a file (empty if unreadable).
pub(crate) fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A loopback port free for both TCP and UDP right now (QUIC listens on
/// UDP, enrollment on TCP, same number).
pub fn free_port() -> Result<u16> {
    for _ in 0..100 {
        let tcp = TcpListener::bind("127.0.0.1:0")?;
        let port = tcp.local_addr()?.port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free loopback port found")
}

/// Whether `pid` names a live process (a zombie counts as gone).
pub fn pid_alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some((_, rest)) = stat.rsplit_once(") ") else {
        return false;
    };
    !matches!(rest.split_whitespace().next(), Some("Z") | Some("X") | None)
}

/// Whether `pid` is alive and leads its own session, as the systemctl
/// stand-in starts units (guards against a reused pid).
pub(crate) fn leads_own_session(pid: i32) -> bool {
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

/// The workspace binaries a local fleet runs.
#[derive(Clone, Debug)]
pub struct Binaries {
    /// `vesemir-controller`.
    pub controller: PathBuf,
    /// `vesemir-agent`.
    pub agent: PathBuf,
    /// `vesemir-sample-app`, the app the demo deploys.
    pub sample_app: PathBuf,
    /// `vesemir`, the CLI itself (absent when only the library is used).
    pub cli: Option<PathBuf>,
}

impl Binaries {
    /// Looks in `dir` if given, else `$VESEMIR_BIN_DIR`, else next to the
    /// running executable (and, from a test binary in `target/*/deps`, in
    /// its parent).
    pub fn find(dir: Option<&Path>) -> Result<Binaries> {
        let mut dirs = Vec::new();
        if let Some(d) = dir {
            dirs.push(d.to_owned());
        } else if let Some(d) = std::env::var_os("VESEMIR_BIN_DIR") {
            dirs.push(PathBuf::from(d));
        } else {
            let exe = std::env::current_exe().context("cannot find the running executable")?;
            if let Some(d) = exe.parent() {
                dirs.push(d.to_owned());
                if d.ends_with("deps") {
                    if let Some(p) = d.parent() {
                        dirs.push(p.to_owned());
                    }
                }
            }
        }
        let find = |name: &str| dirs.iter().map(|d| d.join(name)).find(|p| p.is_file());
        let need = |name: &str| {
            find(name).with_context(|| {
                format!(
                    "{name} not found in {}: run `cargo build --workspace` first (or set VESEMIR_BIN_DIR)",
                    dirs.iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
        };
        Ok(Binaries {
            controller: need("vesemir-controller")?,
            agent: need("vesemir-agent")?,
            sample_app: need("vesemir-sample-app")?,
            cli: find("vesemir"),
        })
    }
}
