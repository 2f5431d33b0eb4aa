//! Sockets handed to a daemon already bound (systemd socket activation's
//! protocol): `LISTEN_FDS=N` open sockets start at fd 3, `LISTEN_FDNAMES`
//! names them (`api:enroll:quic`), and `LISTEN_PID`, when set, must be this
//! process (otherwise they were meant for a parent and are ignored). A
//! systemd `.socket` unit or a test harness binds the ports, so nothing
//! races for them between choosing a port and the daemon's bind.
//!
//! Invariant: a named socket is taken at most once, and every inherited
//! socket must be taken by someone ([`Inherited::finish`]): a socket the
//! daemon does not know is a configuration error, not silently ignored.

use std::net::{TcpListener, UdpSocket};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// The first inherited fd (`SD_LISTEN_FDS_START`).
const FIRST_FD: RawFd = 3;
/// More than any of our daemons takes; a bigger count is a mistake.
const MAX_FDS: usize = 16;

/// Why the inherited sockets cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ListenError {
    /// `LISTEN_FDS` or `LISTEN_PID` is not a number, or too large.
    #[error("{var}={value:?} is not valid: expected a count of sockets from fd 3 (systemd socket activation)")]
    BadVar {
        /// The variable.
        var: &'static str,
        /// What it held.
        value: String,
    },
    /// `LISTEN_FDNAMES` does not name each socket.
    #[error("LISTEN_FDNAMES={names:?} names {got} sockets but LISTEN_FDS={count}: give one name per socket, `:`-separated")]
    Names {
        /// What it held.
        names: String,
        /// How many names.
        got: usize,
        /// LISTEN_FDS.
        count: usize,
    },
    /// An inherited fd is not a socket of the kind its name needs.
    #[error("inherited socket {name:?} (fd {fd}) is not a {want} socket")]
    WrongKind {
        /// Its name.
        name: String,
        /// Its fd.
        fd: RawFd,
        /// `TCP listening` or `UDP`.
        want: &'static str,
    },
    /// A socket nobody takes.
    #[error("inherited socket {name:?} (fd {fd}) is not one this daemon uses (it takes: {known})")]
    Unused {
        /// Its name.
        name: String,
        /// Its fd.
        fd: RawFd,
        /// The names the daemon knows.
        known: String,
    },
}

/// The sockets this process inherited, by name, until taken.
#[derive(Debug, Default)]
pub struct Inherited {
    fds: Vec<(String, RawFd, Option<OwnedFd>)>,
}

impl Inherited {
    /// Reads `LISTEN_FDS`/`LISTEN_FDNAMES`/`LISTEN_PID` from the
    /// environment and takes ownership of fds 3.. (each marked
    /// close-on-exec). None inherited: an empty set.
    pub fn from_env() -> Result<Inherited, ListenError> {
        let var = |k| std::env::var(k).ok();
        let inherited = Inherited::parse(
            var("LISTEN_FDS").as_deref(),
            var("LISTEN_FDNAMES").as_deref(),
            var("LISTEN_PID").as_deref(),
            std::process::id(),
        )?;
        let mut fds = Vec::with_capacity(inherited.len());
        for (name, fd) in inherited {
            // SAFETY: LISTEN_FDS says fds 3..3+N are open and ours, and
            // nothing else in this process owns them (they are read once, at
            // start, before anything opens files).
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: a plain fcntl on an fd we own.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            fds.push((name, fd, Some(owned)));
        }
        Ok(Inherited { fds })
    }

    /// The pure part of [`Inherited::from_env`]: (name, fd) of each
    /// inherited socket. Unnamed sockets are called `unknown`, as systemd
    /// does.
    pub fn parse(
        count: Option<&str>,
        names: Option<&str>,
        pid: Option<&str>,
        my_pid: u32,
    ) -> Result<Vec<(String, RawFd)>, ListenError> {
        let Some(count) = count else {
            return Ok(Vec::new());
        };
        if let Some(pid) = pid {
            let p: u32 = pid.trim().parse().map_err(|_| ListenError::BadVar {
                var: "LISTEN_PID",
                value: pid.into(),
            })?;
            if p != my_pid {
                return Ok(Vec::new());
            }
        }
        let n: usize = count
            .trim()
            .parse()
            .ok()
            .filter(|n| *n <= MAX_FDS)
            .ok_or_else(|| ListenError::BadVar {
                var: "LISTEN_FDS",
                value: count.into(),
            })?;
        let names: Vec<String> = match names {
            Some(s) => s.split(':').map(str::to_string).collect(),
            None => vec!["unknown".to_string(); n],
        };
        if names.len() != n {
            return Err(ListenError::Names {
                names: names.join(":"),
                got: names.len(),
                count: n,
            });
        }
        Ok(names.into_iter().zip(FIRST_FD..).collect())
    }

    fn take(&mut self, name: &str) -> Option<(RawFd, OwnedFd)> {
        self.fds
            .iter_mut()
            .find(|(n, _, fd)| n == name && fd.is_some())
            .and_then(|(_, raw, fd)| fd.take().map(|fd| (*raw, fd)))
    }

    /// The TCP listening socket called `name`, if one was inherited.
    pub fn tcp(&mut self, name: &str) -> Result<Option<TcpListener>, ListenError> {
        let Some((raw, fd)) = self.take(name) else {
            return Ok(None);
        };
        if sock_type(raw) != Some(libc::SOCK_STREAM) || !listening(raw) {
            return Err(ListenError::WrongKind {
                name: name.into(),
                fd: raw,
                want: "TCP listening",
            });
        }
        let l = TcpListener::from(fd);
        l.set_nonblocking(true).ok();
        Ok(Some(l))
    }

    /// The UDP socket called `name`, if one was inherited.
    pub fn udp(&mut self, name: &str) -> Result<Option<UdpSocket>, ListenError> {
        let Some((raw, fd)) = self.take(name) else {
            return Ok(None);
        };
        if sock_type(raw) != Some(libc::SOCK_DGRAM) {
            return Err(ListenError::WrongKind {
                name: name.into(),
                fd: raw,
                want: "UDP",
            });
        }
        Ok(Some(UdpSocket::from(fd)))
    }

    /// Fails if a socket was inherited that nobody took; `known` lists
    /// the names the daemon takes, for the message.
    pub fn finish(self, known: &[&str]) -> Result<(), ListenError> {
        match self.fds.into_iter().find(|(_, _, fd)| fd.is_some()) {
            Some((name, fd, _)) => Err(ListenError::Unused {
                name,
                fd,
                known: known.join(", "),
            }),
            None => Ok(()),
        }
    }
}

fn sock_type(fd: RawFd) -> Option<libc::c_int> {
    sockopt(fd, libc::SO_TYPE)
}

fn listening(fd: RawFd) -> bool {
    sockopt(fd, libc::SO_ACCEPTCONN) == Some(1)
}

fn sockopt(fd: RawFd, opt: libc::c_int) -> Option<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `v`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_reads_the_protocol() {
        let p = |c, n, pid| Inherited::parse(c, n, pid, 42);
        assert_eq!(p(None, None, None), Ok(vec![]));
        assert_eq!(
            p(Some("2"), Some("api:quic"), Some("42")),
            Ok(vec![("api".into(), 3), ("quic".into(), 4)])
        );
        assert_eq!(p(Some("1"), None, None), Ok(vec![("unknown".into(), 3)]));
        // Meant for another process (a parent that did not clear them).
        assert_eq!(p(Some("2"), Some("a:b"), Some("7")), Ok(vec![]));
        assert!(matches!(
            p(Some("2"), Some("api"), None),
            Err(ListenError::Names {
                got: 1,
                count: 2,
                ..
            })
        ));
        assert!(matches!(
            p(Some("x"), None, None),
            Err(ListenError::BadVar {
                var: "LISTEN_FDS",
                ..
            })
        ));
        assert!(matches!(
            p(Some("999"), None, None),
            Err(ListenError::BadVar {
                var: "LISTEN_FDS",
                ..
            })
        ));
        assert!(matches!(
            p(Some("1"), None, Some("me")),
            Err(ListenError::BadVar {
                var: "LISTEN_PID",
                ..
            })
        ));
    }

    /// Real sockets: kinds are checked, each is taken once, and one
    /// nobody takes is an error naming it.
    #[test]
    fn sockets_are_taken_by_name_and_kind() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let not_tcp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let spare = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let (t, u) = (tcp.local_addr().unwrap(), udp.local_addr().unwrap());
        let fds: Vec<(&str, OwnedFd)> = vec![
            ("api", tcp.into()),
            ("quic", udp.into()),
            ("enroll", not_tcp.into()),
            ("spare", spare.into()),
        ];
        let mut set = Inherited {
            fds: fds
                .into_iter()
                .map(|(n, fd)| {
                    (
                        n.to_string(),
                        std::os::fd::AsRawFd::as_raw_fd(&fd),
                        Some(fd),
                    )
                })
                .collect(),
        };
        assert_eq!(set.tcp("api").unwrap().unwrap().local_addr().unwrap(), t);
        assert!(set.tcp("api").unwrap().is_none(), "taken once");
        assert_eq!(set.udp("quic").unwrap().unwrap().local_addr().unwrap(), u);
        let err = set.tcp("enroll").unwrap_err();
        assert!(
            matches!(
                err,
                ListenError::WrongKind {
                    want: "TCP listening",
                    ..
                }
            ),
            "{err}"
        );
        assert!(set.tcp("nope").unwrap().is_none());
        let err = set.finish(&["api", "enroll", "quic"]).unwrap_err();
        assert!(err.to_string().contains("\"spare\""), "{err}");
    }
}
