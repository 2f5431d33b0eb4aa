//! What `vesemir-controller` and `vesemir-agent` share as processes: the
//! `--log-format` tracing setup, the shutdown signal, configuration errors
//! (which exit 64, EX_USAGE, so systemd's `RestartPreventExitStatus=64`
//! stops a restart loop), and duration fields in config files.
#![warn(missing_docs)]

use std::path::PathBuf;
use tracing_subscriber::EnvFilter;

pub mod listen;
mod log_default;
pub mod notify;
pub use log_default::LogEnv;

/// Exit status for bad usage or configuration.
pub const EX_USAGE: u8 = 64;

/// Prints `error: …` on stderr and gives the exit code: the one way both
/// daemons end on an error (`EX_USAGE` for usage/config, 1 otherwise).
pub fn exit_error(code: u8, err: &dyn std::fmt::Display) -> std::process::ExitCode {
    eprintln!("error: {err}");
    std::process::ExitCode::from(code)
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (colours only on a terminal).
    #[default]
    Text,
    /// One JSON object per line, for central logging.
    Json,
}

/// Installs the global subscriber: logs go to stderr, level from `RUST_LOG`
/// (default info).
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.fmt_fields(escaping_fields()).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// The text format's field formatter: like the default one (`message`
/// bare, other fields `name=value`, space-separated), but with control
/// characters (`\n`, `\r`, ESC, ...) in messages and values written as
/// escapes, so a value from outside (a node name, a header) cannot forge a
/// log line or send terminal escapes. JSON escapes on its own.
fn escaping_fields(
) -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + Send + Sync + 'static {
    use tracing_subscriber::field::MakeExt;
    tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
        let name = field.name();
        if name != "message" {
            write!(w, "{}=", name.strip_prefix("r#").unwrap_or(name))?;
        }
        write_escaped(w, &format!("{value:?}"))
    })
    .delimited(" ")
}

/// Writes `text` with every control character as its Rust escape.
fn write_escaped(w: &mut impl std::fmt::Write, text: &str) -> std::fmt::Result {
    for c in text.chars() {
        if c.is_control() {
            write!(w, "{}", c.escape_default())?;
        } else {
            w.write_char(c)?;
        }
    }
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

/// A configuration file that can't be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file can't be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Broken TOML, or an unknown or mistyped key (the message names it).
    #[error("invalid config {path}: {message}")]
    Parse {
        /// File.
        path: PathBuf,
        /// The parser's message, naming the key and line.
        message: String,
    },
    /// A key with a value that can't be used.
    #[error("invalid config {path}: key `{key}`: {message}")]
    Invalid {
        /// File.
        path: PathBuf,
        /// The offending key.
        key: &'static str,
        /// What is wrong and what would be right.
        message: String,
    },
}

/// A private key that group or others can access ([`check_private_key`]).
#[derive(Debug, thiserror::Error)]
#[error(
    "private key {} is accessible by group or others (mode {mode:04o}); \
     run `chmod 600 {}` and start again",
    .path.display(),
    .path.display()
)]
pub struct ExposedKey {
    /// The key file.
    pub path: std::path::PathBuf,
    /// Its permission bits.
    pub mode: u32,
}

/// For callers that still report errors as strings.
impl From<ExposedKey> for String {
    fn from(e: ExposedKey) -> String {
        e.to_string()
    }
}

/// Refuses a private key that group or others can read or write, like ssh
/// does: a key anyone on the VM can read is anyone's identity. A missing
/// file is not this check's business (the caller reports it where it is
/// used). The error says the `chmod` to run.
pub fn check_private_key(path: &std::path::Path) -> Result<(), ExposedKey> {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(());
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(ExposedKey {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Full-jitter exponential backoff: uniform in [0, min(cap, base·2^attempt)].
/// The one backoff of the daemons (agent reconnects, Chef retries, the
/// fleet simulator), so a retry storm is spread the same way everywhere.
pub fn backoff(
    base: std::time::Duration,
    cap: std::time::Duration,
    attempt: u32,
) -> std::time::Duration {
    let ceiling = base
        .checked_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
        .unwrap_or(cap)
        .min(cap);
    let ms = ceiling.as_millis() as u64;
    std::time::Duration::from_millis(if ms == 0 {
        0
    } else {
        rand::random::<u64>() % (ms + 1)
    })
}

/// A duration that [`parse_duration`] could not read.
#[derive(Debug, thiserror::Error)]
#[error("`{input}` is not a duration ({reason}): expected seconds like `30` or `1.5`, or `30s`, `2m 30s`, `7d`")]
pub struct BadDuration {
    /// What was given.
    pub input: String,
    /// Why humantime refused it.
    pub reason: String,
}

/// The one duration parser: a bare number is seconds (`30`, `1.5`, as
/// Ansible reads them), anything else a humantime duration (`5s`, `2m 30s`).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, BadDuration> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Ok(std::time::Duration::from_secs_f64(secs));
        }
    }
    humantime::parse_duration(s).map_err(|e| BadDuration {
        input: s.to_string(),
        reason: e.to_string(),
    })
}

/// A `K=V` argument without a name or without `=`.
#[derive(Debug, thiserror::Error)]
#[error("`{0}`: expected name=value")]
pub struct BadKeyValue(pub String);

/// The one `K=V` parser (`--var`, host vars): splits at the first `=`;
/// the name must not be empty, the value may be.
pub fn parse_key_value(kv: &str) -> Result<(&str, &str), BadKeyValue> {
    match kv.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k, v)),
        _ => Err(BadKeyValue(kv.to_string())),
    }
}

/// Durations in config files as humantime strings ("30s", "7d"):
/// `#[serde(with = "vesemir_daemon::duration")]`.
pub mod duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    /// Writes a humantime string.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    /// Reads a humantime string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "{e}; in a config file write it like \"30s\" or \"7d\""
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn durations_are_seconds_or_humantime() {
        assert_eq!(super::parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(
            super::parse_duration("1.5").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(
            super::parse_duration("2m 30s").unwrap(),
            Duration::from_secs(150)
        );
        let e = super::parse_duration("soon").unwrap_err().to_string();
        assert!(e.contains("`soon`") && e.contains("30s"), "{e}");
        assert!(super::parse_duration("-1").is_err());
    }

    #[test]
    fn key_values_need_a_name_and_an_equals_sign() {
        assert_eq!(super::parse_key_value("a=b=c").unwrap(), ("a", "b=c"));
        assert_eq!(super::parse_key_value("a=").unwrap(), ("a", ""));
        assert!(super::parse_key_value("=v").is_err());
        assert!(super::parse_key_value("novalue").is_err());
    }

    #[test]
    fn backoff_is_jittered_and_capped() {
        let (base, cap) = (Duration::from_millis(100), Duration::from_secs(2));
        for attempt in 0..40 {
            let ceiling = (base * 2u32.pow(attempt.min(20))).min(cap);
            assert!(super::backoff(base, cap, attempt) <= ceiling);
        }
        let spread: std::collections::HashSet<_> =
            (0..50).map(|_| super::backoff(base, cap, 10)).collect();
        assert!(spread.len() > 1, "not jittered: {spread:?}");
    }
    #[test]
    fn private_keys_readable_by_others_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.pem");
        assert!(
            super::check_private_key(&key).is_ok(),
            "missing is not refused here"
        );
        std::fs::write(&key, "k").unwrap();
        for (mode, ok) in [
            (0o600, true),
            (0o400, true),
            (0o640, false),
            (0o604, false),
            (0o660, false),
        ] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
            let r = super::check_private_key(&key);
            assert_eq!(r.is_ok(), ok, "{mode:o}: {r:?}");
            if let Err(e) = r {
                assert!(
                    e.to_string()
                        .contains(&format!("chmod 600 {}", key.display())),
                    "{e}"
                );
            }
        }
    }

    #[test]
    fn control_characters_are_escaped() {
        let mut out = String::new();
        super::write_escaped(&mut out, "x\nFORGED\r\u{1b}[31m ok").unwrap();
        assert_eq!(out, "x\\nFORGED\\r\\u{1b}[31m ok");
    }

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct T {
        #[serde(with = "super::duration")]
        d: Duration,
    }

    #[test]
    fn durations_read_and_write_as_text() {
        let t: T = serde_json::from_str(r#"{"d":"1m 30s"}"#).unwrap();
        assert_eq!(t.d, Duration::from_secs(90));
        assert_eq!(serde_json::to_string(&t).unwrap(), r#"{"d":"1m 30s"}"#);
        let err = serde_json::from_str::<T>(r#"{"d":"soon"}"#).unwrap_err();
        assert!(err.to_string().contains("like \"30s\""), "{err}");
    }
}
