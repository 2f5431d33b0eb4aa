//! Which log format a daemon uses when `--log-format` is not given: JSON
//! under systemd (one object per line is what journald and log shippers
//! index), text on a terminal or in a test's log file.
//!
//! **Invariant:** an explicit `--log-format` always wins; the environment
//! only decides the default.

use crate::LogFormat;
use std::ffi::OsStr;

/// What the environment says about where stderr goes (pure input of
/// [`LogFormat::choose`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogEnv {
    /// `JOURNAL_STREAM` matches stderr's device and inode: our stderr is
    /// the journal (systemd.exec(5) says to compare, since a child of a
    /// service inherits the variable with a different stderr).
    pub stderr_is_journal: bool,
    /// `INVOCATION_ID` is set: systemd started this process as a unit
    /// (its stderr may be a file or socket systemd set up).
    pub systemd_unit: bool,
    /// stderr is a terminal: a human is watching.
    pub stderr_is_terminal: bool,
}

impl LogEnv {
    /// Reads the environment and stderr.
    pub fn detect() -> LogEnv {
        let stderr_is_terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
        LogEnv {
            stderr_is_journal: std::env::var_os("JOURNAL_STREAM")
                .is_some_and(|v| journal_stream_is_stderr(&v)),
            systemd_unit: std::env::var_os("INVOCATION_ID").is_some_and(|v| !v.is_empty()),
            stderr_is_terminal,
        }
    }
}

/// Whether `JOURNAL_STREAM=DEV:INODE` names the file stderr is.
fn journal_stream_is_stderr(value: &OsStr) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some((dev, ino)) = parse_journal_stream(value) else {
        return false;
    };
    // What fd 2 is, without touching the fd itself.
    let path = std::path::Path::new("/proc/self/fd/2");
    match std::fs::metadata(path) {
        Ok(m) => m.dev() == dev && m.ino() == ino,
        Err(_) => false,
    }
}

/// `DEV:INODE`, both decimal, as systemd writes it.
fn parse_journal_stream(value: &OsStr) -> Option<(u64, u64)> {
    let (dev, ino) = value.to_str()?.split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

impl LogFormat {
    /// The format to use: `explicit` if given, else JSON when stderr is the
    /// journal or systemd runs us with stderr not on a terminal, else text.
    pub fn choose(explicit: Option<LogFormat>, env: &LogEnv) -> LogFormat {
        if let Some(f) = explicit {
            return f;
        }
        if env.stderr_is_journal || (env.systemd_unit && !env.stderr_is_terminal) {
            LogFormat::Json
        } else {
            LogFormat::Text
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(explicit: Option<LogFormat>, journal: bool, unit: bool, tty: bool, want: LogFormat) {
        let env = LogEnv {
            stderr_is_journal: journal,
            systemd_unit: unit,
            stderr_is_terminal: tty,
        };
        assert_eq!(
            LogFormat::choose(explicit, &env),
            want,
            "{explicit:?} {env:?}"
        );
    }

    #[test]
    fn json_under_systemd_text_elsewhere_flag_wins() {
        use LogFormat::{Json, Text};
        check(None, false, false, false, Text); // a test's log file
        check(None, false, false, true, Text); // a terminal
        check(None, true, true, false, Json); // journal
        check(None, true, false, false, Json); // journal, started without INVOCATION_ID
        check(None, false, true, false, Json); // unit with StandardError=file:
        check(None, false, true, true, Text); // systemd-run --pty
        check(Some(Text), true, true, false, Text);
        check(Some(Json), false, false, true, Json);
    }

    #[test]
    fn journal_stream_is_parsed_and_compared_with_stderr() {
        assert_eq!(
            parse_journal_stream(OsStr::new("8:12345")),
            Some((8, 12345))
        );
        for bad in ["", "8", "8:x", ":1"] {
            assert_eq!(parse_journal_stream(OsStr::new(bad)), None, "{bad:?}");
        }
        // A stream that is not our stderr (a child inherited the variable).
        assert!(!journal_stream_is_stderr(OsStr::new("0:1")));
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata("/proc/self/fd/2").unwrap();
        let ours = format!("{}:{}", m.dev(), m.ino());
        assert!(journal_stream_is_stderr(OsStr::new(&ours)));
    }
}
