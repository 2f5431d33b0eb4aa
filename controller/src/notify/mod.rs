//! Webhooks: a deployment's events posted as signed JSON to the URLs of the
//! request's `notify` and of `[notify]` in `controller.toml`.
//!
//! Wired: `serve` starts the [`Notifier`] from [`NotifyConfig`]; the
//! orchestrator queues `started` when a deployment starts and the event of
//! its end ([`end_event`]) when it ends. `paused`, `canary_passed`,
//! `canary_failed` and `rolled_back` are accepted in requests but never
//! fire yet (they come with the canary and pauses).
//!
//! ```toml
//! [notify]
//! secret_file = "webhook.secret"   # 0600, >= 16 bytes; relative to data_dir
//! queue = 1000                     # deliveries waiting at most (more: dropped)
//! timeout = "5s"                   # one attempt, 100ms-60s
//! attempts = 6                     # per delivery, 1-20
//!
//! [[notify.webhooks]]              # told about every deployment
//! url = "https://chat.example.com/hooks/deploys"
//! events = ["failed", "aborted"]   # empty or absent: every event
//! ```
//!
//! - [`WebhookBody`]: the JSON posted (a boundary: receivers parse it).
//! - [`sign`]: `X-Vesemir-Signature: sha256=HEX`, HMAC-SHA256 of the exact
//!   body bytes with the secret of `[notify] secret_file`.
//! - [`sender`]: the bounded background sender.
//!
//! Invariants:
//! - **A webhook never slows a rollout.** [`Notifier::notify`] only
//!   `try_send`s into a bounded queue: when it is full the delivery is
//!   dropped with a log line and a count, never waited for. Deliveries run
//!   in background tasks, at most [`Settings::in_flight`] at once, each
//!   attempt with its own timeout, retried with the daemons' backoff.
//! - **Secrets stay out of logs.** The signing secret has no `Debug`
//!   output, and log lines name a webhook by scheme and host only (webhook
//!   paths often carry tokens).

pub mod sender;

pub use sender::{Notifier, NotifyStats, Settings};
pub use vesemir_api::NotifyEvent;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::path::PathBuf;
use std::time::Duration;
use vesemir_api::WebhookSpec;

/// `[notify]` in `controller.toml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// File holding the signing secret (mode 0600; relative to the data
    /// dir). Receivers verify `X-Vesemir-Signature` with the same secret.
    pub secret_file: PathBuf,
    /// Webhooks told about every deployment, besides each request's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<WebhookSpec>,
    /// Deliveries waiting at most; more are dropped (and counted).
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// Longest one delivery attempt may take.
    #[serde(default = "default_timeout", with = "vesemir_daemon::duration")]
    pub timeout: Duration,
    /// Attempts per delivery before giving up.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
}

fn default_queue() -> usize {
    1000
}
fn default_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_attempts() -> u32 {
    6
}

/// Shortest secret accepted, bytes.
pub const MIN_SECRET_LEN: usize = 16;

impl NotifyConfig {
    /// Checks the values (not the secret file, see [`read_secret`]).
    pub fn check(&self) -> Result<(), String> {
        if !(1..=100_000).contains(&self.queue) {
            return Err("queue: must be between 1 and 100000".into());
        }
        if self.timeout < Duration::from_millis(100) || self.timeout > Duration::from_secs(60) {
            return Err("timeout: must be between 100ms and 60s".into());
        }
        if !(1..=20).contains(&self.attempts) {
            return Err("attempts: must be between 1 and 20".into());
        }
        for (i, w) in self.webhooks.iter().enumerate() {
            vesemir_api::check_http_url(&w.url).map_err(|m| format!("webhooks[{i}].url: {m}"))?;
            w.parsed_events()
                .map_err(|m| format!("webhooks[{i}].events: {m}"))?;
        }
        Ok(())
    }
}

/// Reads the signing secret: a private file (0600) of at least
/// [`MIN_SECRET_LEN`] bytes, surrounding whitespace trimmed.
pub fn read_secret(path: &std::path::Path) -> Result<Vec<u8>, String> {
    vesemir_daemon::check_private_key(path)?;
    let raw = std::fs::read(path).map_err(|e| {
        format!(
            "cannot read the webhook secret {}: {e}; write one with `head -c 32 /dev/urandom | base64 > FILE; chmod 600 FILE`",
            path.display()
        )
    })?;
    let secret = raw.trim_ascii().to_vec();
    if secret.len() < MIN_SECRET_LEN {
        return Err(format!(
            "the webhook secret {} is shorter than {MIN_SECRET_LEN} bytes; write a longer one",
            path.display()
        ));
    }
    Ok(secret)
}

/// The JSON body of a webhook call.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WebhookBody {
    /// What happened.
    pub event: NotifyEvent,
    /// When, RFC 3339 UTC.
    pub at: String,
    /// Which deployment.
    pub deployment: DeploymentSummary,
    /// A sentence for people (the canary verdict's reason, the error…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Longest `message` posted, bytes (a webhook body stays small).
pub const MAX_MESSAGE: usize = 2000;

impl WebhookBody {
    /// A body for `event` at `now`; the message is cut at
    /// [`MAX_MESSAGE`] bytes (on a character boundary).
    pub fn new(
        event: NotifyEvent,
        now: time::OffsetDateTime,
        deployment: DeploymentSummary,
        message: Option<String>,
    ) -> WebhookBody {
        let at = now
            .to_offset(time::UtcOffset::UTC)
            .replace_nanosecond(0)
            .unwrap_or(now)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let message = message.map(|mut m| {
            if m.len() > MAX_MESSAGE {
                let mut cut = MAX_MESSAGE;
                while !m.is_char_boundary(cut) {
                    cut -= 1;
                }
                m.truncate(cut);
            }
            m
        });
        WebhookBody {
            event,
            at,
            deployment,
            message,
        }
    }
}

/// The deployment as a webhook receiver sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeploymentSummary {
    /// Deployment id (`vesemir deployments show ID`).
    pub id: String,
    /// Application.
    pub application: String,
    /// Environment.
    pub environment: String,
    /// Owning team.
    pub team: String,
    /// Who asked for it (token name).
    pub requested_by: String,
    /// Changeset version, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changeset_version: Option<String>,
    /// Hosts in the plan.
    pub hosts_total: u32,
    /// Hosts deployed so far.
    pub hosts_succeeded: u32,
    /// Hosts failed so far.
    pub hosts_failed: u32,
}

/// `sha256=HEX`: HMAC-SHA256 of `body` keyed with `secret`, the value of
/// `X-Vesemir-Signature`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length: new_from_slice cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Whether `signature` (`sha256=HEX`) is `body`'s under `secret`, compared
/// in constant time. What a receiver does; used by tests.
pub fn verify(secret: &[u8], body: &[u8], signature: &str) -> bool {
    let Some(sig) = signature
        .strip_prefix("sha256=")
        .and_then(|h| hex::decode(h).ok())
    else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

/// `https://host[:port]`: how a webhook is named in logs (paths and queries
/// of webhook URLs often carry tokens).
pub fn redact_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.split(['/', '?', '#']).next().unwrap_or("");
            let host = host.rsplit('@').next().unwrap_or(host);
            format!("{scheme}://{host}/…")
        }
        None => "(not a URL)".into(),
    }
}

/// The event and message a deployment's end status is told as: a
/// cancelled deployment is `aborted` ("cancelled…"); the stored error, if
/// any, is the message.
pub fn end_event(status: &str, error: Option<&str>) -> (NotifyEvent, Option<String>) {
    match status {
        "succeeded" => (NotifyEvent::Succeeded, error.map(str::to_string)),
        "failed" => (NotifyEvent::Failed, error.map(str::to_string)),
        "cancelled" => (
            NotifyEvent::Aborted,
            Some(error.map_or_else(|| "cancelled".to_string(), |e| format!("cancelled: {e}"))),
        ),
        _ => (NotifyEvent::Aborted, error.map(str::to_string)),
    }
}

/// The URLs to post `event` to: the request's webhooks then the
/// controller's, each URL once, those whose events include it.
pub fn targets<'a>(
    request: &'a [WebhookSpec],
    controller: &'a [WebhookSpec],
    event: NotifyEvent,
) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for w in request.iter().chain(controller) {
        // Validated at submit / load; an unparsable list matches nothing.
        let wants = w.parsed_events().is_ok_and(|e| e.contains(&event));
        if wants && !out.contains(&w.url.as_str()) {
            out.push(&w.url);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_known_answers() {
        // RFC 4231, test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // RFC 4231, test case 1: a 20-byte 0x0b key.
        assert_eq!(
            sign(&[0x0b; 20], b"Hi There"),
            "sha256=b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        let s = sign(b"k", b"body");
        assert!(verify(b"k", b"body", &s));
        assert!(!verify(b"k", b"body!", &s));
        assert!(!verify(b"other", b"body", &s));
        assert!(!verify(b"k", b"body", "sha1=00"));
    }

    #[test]
    fn bodies_carry_utc_time_and_bounded_messages() {
        let d = DeploymentSummary {
            id: "d".into(),
            application: "a".into(),
            environment: "e".into(),
            team: "t".into(),
            requested_by: "r".into(),
            changeset_version: None,
            hosts_total: 1,
            hosts_succeeded: 0,
            hosts_failed: 0,
        };
        let now = time::macros::datetime!(2026-12-04 05:00:01.5 +01:00);
        let b = WebhookBody::new(NotifyEvent::Started, now, d.clone(), Some("é".repeat(1500)));
        assert_eq!(b.at, "2026-12-04T04:00:01Z");
        let m = b.message.unwrap();
        assert!(m.len() <= MAX_MESSAGE && m.len() >= MAX_MESSAGE - 1);
        let v =
            serde_json::to_value(WebhookBody::new(NotifyEvent::RolledBack, now, d, None)).unwrap();
        assert_eq!(v["event"], "rolled_back");
        assert!(v.get("message").is_none() && v["deployment"].get("changeset_version").is_none());
    }

    #[test]
    fn targets_filter_and_dedupe() {
        let hook = |url: &str, events: &[&str]| WebhookSpec {
            url: url.into(),
            events: events.iter().map(|e| e.to_string()).collect(),
        };
        let req = [hook("https://a/1", &["failed"]), hook("https://b/2", &[])];
        let ctl = [
            hook("https://a/1", &[]),
            hook("https://c/3", &["succeeded"]),
        ];
        assert_eq!(
            targets(&req, &ctl, NotifyEvent::Failed),
            ["https://a/1", "https://b/2"]
        );
        assert_eq!(
            targets(&req, &ctl, NotifyEvent::Succeeded),
            ["https://b/2", "https://a/1", "https://c/3"]
        );
    }

    #[test]
    fn end_statuses_map_to_events() {
        let check = |status, error, event, message: Option<&str>| {
            assert_eq!(
                end_event(status, error),
                (event, message.map(str::to_string)),
                "{status}"
            );
        };
        check("succeeded", None, NotifyEvent::Succeeded, None);
        check(
            "failed",
            Some("app-2 failed"),
            NotifyEvent::Failed,
            Some("app-2 failed"),
        );
        check(
            "aborted",
            Some("guard"),
            NotifyEvent::Aborted,
            Some("guard"),
        );
        check("cancelled", None, NotifyEvent::Aborted, Some("cancelled"));
        check(
            "cancelled",
            Some("by ci"),
            NotifyEvent::Aborted,
            Some("cancelled: by ci"),
        );
    }

    #[test]
    fn logs_name_the_host_only() {
        assert_eq!(
            redact_url("https://hooks.example.com/services/T0/B0/SECRET?x=1"),
            "https://hooks.example.com/…"
        );
        assert_eq!(redact_url("http://u:pw@h:8080/p"), "http://h:8080/…");
    }

    #[test]
    fn config_values_are_checked() {
        let mut c: NotifyConfig = toml::from_str("secret_file = \"webhook.secret\"").unwrap();
        assert_eq!((c.queue, c.attempts), (1000, 6));
        assert_eq!(c.check(), Ok(()));
        c.webhooks.push(WebhookSpec {
            url: "https://h/x".into(),
            events: vec!["nope".into()],
        });
        assert!(c.check().unwrap_err().starts_with("webhooks[0].events"));
        c.webhooks[0].events.clear();
        c.attempts = 0;
        assert!(c.check().unwrap_err().starts_with("attempts"));
    }

    #[test]
    fn secrets_must_be_private_and_long() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        std::fs::write(&p, "short\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(read_secret(&p).unwrap_err().contains("shorter"));
        std::fs::write(&p, "0123456789abcdef0123\n").unwrap();
        assert_eq!(read_secret(&p).unwrap(), b"0123456789abcdef0123");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(read_secret(&p).unwrap_err().contains("chmod 600"));
        assert!(read_secret(&dir.path().join("missing"))
            .unwrap_err()
            .contains("cannot read"));
    }
}
