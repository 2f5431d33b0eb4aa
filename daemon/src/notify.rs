//! The systemd notify protocol (`sd_notify(3)`), without libsystemd: one
//! datagram of `KEY=VALUE` lines per message to the unix socket named by
//! `NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace).
//!
//! Why ourselves: the protocol is a `sendto` of a few bytes, and linking
//! libsystemd would tie the build to a C library for that. Why the daemons
//! care: with `Type=notify`, `systemctl start` returns once the daemon says
//! `READY=1` (the controller listens and its database is migrated; the agent
//! has tried its controller once), and with `WatchdogSec=` systemd restarts a
//! daemon whose runtime stopped sending `WATCHDOG=1`.
//!
//! **Invariant:** outside systemd (no `NOTIFY_SOCKET`) every call is a
//! no-op, and no call blocks longer than [`SEND_TIMEOUT`]: a notification
//! is never a reason for a daemon to hang or fail.

use std::ffi::OsStr;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::time::Duration;

/// The longest a send may block (a full socket queue means systemd is busy;
/// a daemon must not wait on it).
pub const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// A notify socket that can't be used.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// `NOTIFY_SOCKET` is neither an absolute path nor `@name`.
    #[error("NOTIFY_SOCKET={0:?} is neither an absolute path nor @abstract-name (vsock is not supported); readiness will not be reported")]
    BadAddress(String),
    /// `WATCHDOG_USEC` is not a positive number of microseconds.
    #[error("WATCHDOG_USEC={0:?} is not a positive number of microseconds; the watchdog is off")]
    BadWatchdog(String),
    /// Creating the socket or sending failed.
    #[error("notify socket {addr}: {source}")]
    Io {
        /// `NOTIFY_SOCKET` as given.
        addr: String,
        /// Cause.
        source: std::io::Error,
    },
}

/// What the environment asks of us, parsed (pure: see [`Settings::parse`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Settings {
    /// Where to send, if systemd listens.
    pub socket: Option<NotifyAddr>,
    /// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, as
    /// `sd_watchdog_enabled(3)` recommends, so one late tick is not a kill.
    pub watchdog_every: Option<Duration>,
}

/// A parsed `NOTIFY_SOCKET`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyAddr {
    /// A socket file.
    Path(std::path::PathBuf),
    /// A Linux abstract-namespace name (given as `@name`; sent with a
    /// leading NUL byte).
    Abstract(Vec<u8>),
}

impl Settings {
    /// Parses `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` as
    /// `sd_notify(3)`/`sd_watchdog_enabled(3)` do: the watchdog is ours
    /// only if `WATCHDOG_PID` is unset or names `my_pid` (a child that
    /// inherited the variables must not ping for us).
    pub fn parse(
        notify_socket: Option<&OsStr>,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
        my_pid: u32,
    ) -> Result<Settings, NotifyError> {
        use std::os::unix::ffi::OsStrExt;
        let socket = match notify_socket.map(OsStr::as_bytes) {
            None | Some(b"") => None,
            Some(b) if b.starts_with(b"/") => Some(NotifyAddr::Path(OsStr::from_bytes(b).into())),
            Some(b) if b.len() > 1 && b.starts_with(b"@") => {
                Some(NotifyAddr::Abstract(b[1..].to_vec()))
            }
            Some(b) => {
                return Err(NotifyError::BadAddress(
                    String::from_utf8_lossy(b).into_owned(),
                ))
            }
        };
        let ours = match watchdog_pid {
            None | Some("") => true,
            Some(p) => p.trim().parse::<u32>().ok() == Some(my_pid),
        };
        let watchdog_every = match watchdog_usec {
            Some(u) if ours && !u.is_empty() => match u.trim().parse::<u64>() {
                Ok(n) if n > 0 => Some(Duration::from_micros(n) / 2),
                _ => return Err(NotifyError::BadWatchdog(u.to_string())),
            },
            _ => None,
        };
        // No socket means nobody listens for the pings either.
        let watchdog_every = watchdog_every.filter(|_| socket.is_some());
        Ok(Settings {
            socket,
            watchdog_every,
        })
    }
}

/// Sends notifications to systemd. Cheap to clone; a no-op when the daemon
/// was not started by systemd with `Type=notify`.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    inner: Option<Arc<Inner>>,
    watchdog_every: Option<Duration>,
}

#[derive(Debug)]
struct Inner {
    socket: UnixDatagram,
    addr: SocketAddr,
    /// For error messages.
    shown: String,
}

impl Notifier {
    /// A notifier that sends nothing (tests, `init`, one-shot commands).
    pub fn disabled() -> Notifier {
        Notifier::default()
    }

    /// Reads the notify variables and removes them from the environment,
    /// so the processes a daemon starts (playbooks, `systemctl`) cannot
    /// speak for it. Call first thing in `main`, before any thread exists
    /// (changing the environment is only sound then).
    pub fn take_from_env() -> Result<Notifier, NotifyError> {
        let socket = std::env::var_os("NOTIFY_SOCKET");
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let pid = std::env::var("WATCHDOG_PID").ok();
        for v in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            std::env::remove_var(v);
        }
        let settings = Settings::parse(
            socket.as_deref(),
            usec.as_deref(),
            pid.as_deref(),
            std::process::id(),
        )?;
        Notifier::open(&settings)
    }

    /// Opens the socket `settings` names (unbound: datagrams need no
    /// connection, and systemd identifies us by our credentials).
    pub fn open(settings: &Settings) -> Result<Notifier, NotifyError> {
        let Some(addr) = &settings.socket else {
            return Ok(Notifier::disabled());
        };
        let shown = match addr {
            NotifyAddr::Path(p) => p.display().to_string(),
            NotifyAddr::Abstract(n) => format!("@{}", String::from_utf8_lossy(n)),
        };
        let io = |source| NotifyError::Io {
            addr: shown.clone(),
            source,
        };
        let sock_addr = match addr {
            NotifyAddr::Path(p) => SocketAddr::from_pathname(p).map_err(io)?,
            NotifyAddr::Abstract(n) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(n).map_err(io)?
            }
        };
        let socket = UnixDatagram::unbound().map_err(io)?;
        socket.set_write_timeout(Some(SEND_TIMEOUT)).map_err(io)?;
        Ok(Notifier {
            inner: Some(Arc::new(Inner {
                socket,
                addr: sock_addr,
                shown,
            })),
            watchdog_every: settings.watchdog_every,
        })
    }

    /// Whether anything listens (`NOTIFY_SOCKET` was set).
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// How often to call [`Notifier::watchdog`], if systemd's watchdog is on.
    pub fn watchdog_every(&self) -> Option<Duration> {
        self.watchdog_every
    }

    /// Sends one message: `KEY=VALUE` lines.
    pub fn notify(&self, state: &str) -> Result<(), NotifyError> {
        let Some(inner) = &self.inner else {
            return Ok(());
        };
        inner
            .socket
            .send_to_addr(state.as_bytes(), &inner.addr)
            .map(|_| ())
            .map_err(|source| NotifyError::Io {
                addr: inner.shown.clone(),
                source,
            })
    }

    /// `READY=1` with a status line. Logged, not returned: failing to tell
    /// systemd must not stop the daemon.
    pub fn ready(&self, status: &str) {
        self.send_logged(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// `STATUS=…`: what `systemctl status` shows under the unit.
    pub fn status(&self, status: &str) {
        self.send_logged(&format!("STATUS={}", one_line(status)));
    }

    /// `WATCHDOG=1`, optionally with a fresh status in the same datagram.
    pub fn watchdog(&self, status: Option<&str>) {
        match status {
            Some(s) => self.send_logged(&format!("WATCHDOG=1\nSTATUS={}", one_line(s))),
            None => self.send_logged("WATCHDOG=1"),
        }
    }

    /// `STOPPING=1`: the daemon is draining.
    pub fn stopping(&self, status: &str) {
        self.send_logged(&format!("STOPPING=1\nSTATUS={}", one_line(status)));
    }

    fn send_logged(&self, msg: &str) {
        if let Err(e) = self.notify(msg) {
            tracing::warn!(error = %e, "cannot notify systemd");
        }
    }
}

/// A status is one line: a newline would start another `KEY=VALUE`.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    fn parse(
        sock: Option<&str>,
        usec: Option<&str>,
        pid: Option<&str>,
    ) -> Result<Settings, NotifyError> {
        Settings::parse(sock.map(OsStr::new), usec, pid, 42)
    }

    #[test]
    fn environment_is_parsed_like_sd_notify() {
        let s = parse(None, None, None).unwrap();
        assert_eq!(s, Settings::default());
        let s = parse(Some(""), Some("1000000"), None).unwrap();
        assert_eq!(s, Settings::default(), "no socket: no watchdog either");
        let s = parse(Some("/run/systemd/notify"), None, None).unwrap();
        assert_eq!(
            s.socket,
            Some(NotifyAddr::Path("/run/systemd/notify".into()))
        );
        assert_eq!(s.watchdog_every, None);
        let s = parse(Some("@sd/x"), Some("30000000"), Some("42")).unwrap();
        assert_eq!(s.socket, Some(NotifyAddr::Abstract(b"sd/x".to_vec())));
        assert_eq!(s.watchdog_every, Some(Duration::from_secs(15)));
        // A watchdog meant for another process (we inherited it) is not ours.
        let s = parse(Some("/n"), Some("30000000"), Some("41")).unwrap();
        assert_eq!(s.watchdog_every, None);
        for bad in ["relative/path", "@", "vsock:2:1234"] {
            let e = parse(Some(bad), None, None).unwrap_err();
            assert!(matches!(e, NotifyError::BadAddress(_)), "{bad}: {e}");
        }
        for bad in ["0", "-5", "soon"] {
            let e = parse(Some("/n"), Some(bad), None).unwrap_err();
            assert!(e.to_string().contains("WATCHDOG_USEC"), "{bad}: {e}");
        }
    }

    #[test]
    fn disabled_sends_nothing_and_never_fails() {
        let n = Notifier::disabled();
        assert!(!n.is_enabled());
        n.notify("READY=1").unwrap();
        n.ready("x");
    }

    fn recv(sock: &UnixDatagram) -> String {
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).expect("a datagram within 5s");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn messages_reach_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::open(&Settings {
            socket: Some(NotifyAddr::Path(path)),
            watchdog_every: None,
        })
        .unwrap();
        n.ready("serving\nFORGED=1");
        assert_eq!(recv(&listener), "READY=1\nSTATUS=serving FORGED=1");
        n.watchdog(None);
        assert_eq!(recv(&listener), "WATCHDOG=1");
    }

    #[test]
    fn messages_reach_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("vesemir-notify-test-{}-{}", std::process::id(), line!());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        let settings = Settings::parse(
            Some(OsStr::new(&format!("@{name}"))),
            Some("2000000"),
            None,
            1,
        )
        .unwrap();
        let n = Notifier::open(&settings).unwrap();
        assert_eq!(n.watchdog_every(), Some(Duration::from_secs(1)));
        n.status("3 agents connected");
        assert_eq!(recv(&listener), "STATUS=3 agents connected");
    }

    #[test]
    fn a_missing_socket_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let n = Notifier::open(&Settings {
            socket: Some(NotifyAddr::Path(dir.path().join("absent"))),
            watchdog_every: None,
        })
        .unwrap();
        let e = n.notify("READY=1").unwrap_err();
        assert!(e.to_string().contains("absent"), "{e}");
        n.ready("logged, not fatal");
    }
}
