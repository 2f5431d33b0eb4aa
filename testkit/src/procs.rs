//! The one process wrapper and the one free-port helper of the testkit,
//! shared by the end-to-end tests, the demo and the benchmarks. Every child
//! has its output in a log file, is stopped (SIGTERM, then SIGKILL) and is
//! always reaped, so no test or demo leaves a process behind.

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::borrow::BorrowMut;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// What dropping a [`Proc`] does.
#[derive(Clone, Copy, Debug)]
enum OnDrop {
    /// SIGKILL, then print the whole log to stderr: nextest shows a test's
    /// output only when it fails, so a failing test always has the logs.
    KillAndPrint,
    /// SIGTERM, up to 5 s, then SIGKILL; print nothing (the demo prints
    /// the logs' tails itself when something failed).
    Stop,
}

/// A process we started; its stdout and stderr go to `log`.
pub struct Proc {
    /// The process (reaped by [`Proc::stop`], [`Proc::kill9`] or drop).
    pub child: Child,
    /// Its combined output.
    pub log: PathBuf,
    /// What it is, for messages (`controller`, `agent app-1`, `haproxy`).
    pub name: String,
    /// Set once reaped, so stopping twice is harmless.
    status: Option<ExitStatus>,
    on_drop: OnDrop,
}

impl Proc {
    /// Spawns `cmd` with stdin closed and output to `log` (truncated):
    /// the tests' way, killed on drop with its log printed.
    pub fn spawn(name: &str, cmd: impl BorrowMut<Command>, log: impl AsRef<Path>) -> Result<Proc> {
        Self::start(name, cmd, log.as_ref(), false, OnDrop::KillAndPrint)
    }

    /// Spawns `cmd` with stdin closed and output appended to `log`: the
    /// demo's way, stopped gracefully on drop and silent.
    pub fn daemon(name: &str, cmd: impl BorrowMut<Command>, log: impl AsRef<Path>) -> Result<Proc> {
        Self::start(name, cmd, log.as_ref(), true, OnDrop::Stop)
    }

    fn start(
        name: &str,
        mut cmd: impl BorrowMut<Command>,
        log: &Path,
        append: bool,
        on_drop: OnDrop,
    ) -> Result<Proc> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        let child = cmd
            .borrow_mut()
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        Ok(Proc {
            child,
            log: log.to_owned(),
            name: name.to_string(),
            status: None,
            on_drop,
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

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        self.exited().is_none()
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        log_tail(&self.log, n)
    }

    /// SIGTERM, then wait up to `timeout` for the exit status; SIGKILL and
    /// an error if it did not exit in time.
    pub fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus> {
        if let Some(st) = self.exited() {
            return Ok(st);
        }
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.exited() {
                return Ok(st);
            }
            if Instant::now() > deadline {
                self.kill9();
                bail!("{} did not exit within {timeout:?} of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL; reaps.
    pub fn stop(&mut self, grace: Duration) {
        let _ = self.terminate(grace);
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

impl Drop for Proc {
    fn drop(&mut self) {
        match self.on_drop {
            OnDrop::KillAndPrint => {
                self.kill9();
                eprintln!("----- log of {} -----\n{}", self.name, self.log_text());
            }
            OnDrop::Stop => self.stop(Duration::from_secs(5)),
        }
    }
}

/// The last `n` lines of a file (empty if unreadable).
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A loopback port free for both TCP and UDP right now (the controller's
/// QUIC listens on UDP and its HTTP on TCP, often the same number). Racy
/// by nature: another process may take it before it is bound again.
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

/// Sockets bound here and handed to a child already bound, at fds 3.. with
/// `LISTEN_FDS`/`LISTEN_FDNAMES` (systemd socket activation's protocol,
/// which the daemons read): the port is ours from the bind on, so nothing
/// races for it between choosing it and the child's start.
pub enum Listen {
    /// A listening TCP socket.
    Tcp(TcpListener),
    /// A UDP socket.
    Udp(UdpSocket),
}

impl Listen {
    fn fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        match self {
            Listen::Tcp(l) => l.as_raw_fd(),
            Listen::Udp(u) => u.as_raw_fd(),
        }
    }
}

/// A controller's three sockets on loopback: the API (TCP), and enrollment
/// (TCP) with QUIC (UDP) on one port number, as the controller's
/// `quic_listen` has them. Named `api`, `enroll`, `quic`.
pub fn bind_controller_sockets() -> Result<Vec<(&'static str, Listen)>> {
    let api = TcpListener::bind("127.0.0.1:0")?;
    for _ in 0..100 {
        let udp = UdpSocket::bind("127.0.0.1:0")?;
        let port = udp.local_addr()?.port();
        if let Ok(tcp) = TcpListener::bind(("127.0.0.1", port)) {
            return Ok(vec![
                ("api", Listen::Tcp(api)),
                ("enroll", Listen::Tcp(tcp)),
                ("quic", Listen::Udp(udp)),
            ]);
        }
    }
    bail!("no loopback port free for both UDP and TCP")
}

/// Makes `cmd` inherit `sockets` at fds 3.. with `LISTEN_FDS` and
/// `LISTEN_FDNAMES`. `cmd` owns them from now on (the caller's copies are
/// gone): they close when `cmd` is dropped, so a daemon started from it is
/// the only holder once the caller drops the `Command`.
pub fn pass_sockets(cmd: &mut Command, sockets: Vec<(&'static str, Listen)>) {
    use std::os::unix::process::CommandExt;
    let names: Vec<&str> = sockets.iter().map(|(n, _)| *n).collect();
    cmd.env("LISTEN_FDS", names.len().to_string())
        .env("LISTEN_FDNAMES", names.join(":"))
        .env_remove("LISTEN_PID");
    let held: Vec<Listen> = sockets.into_iter().map(|(_, l)| l).collect();
    // SAFETY: between fork and exec only fcntl/dup2 run (async-signal-safe).
    // Sources are first copied above the target range so a dup2 never
    // overwrites a source not yet copied.
    unsafe {
        cmd.pre_exec(move || {
            let mut high = [0 as libc::c_int; 16];
            for (i, l) in held.iter().enumerate().take(high.len()) {
                high[i] = libc::fcntl(l.fd(), libc::F_DUPFD_CLOEXEC, 100);
            }
            for (i, fd) in high.iter().take(held.len()).enumerate() {
                if *fd < 0 || libc::dup2(*fd, 3 + i as libc::c_int) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
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
pub fn leads_own_session(pid: i32) -> bool {
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
