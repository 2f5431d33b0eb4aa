//! `controller.toml`: loaded and validated before anything binds.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The controller's configuration file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerConfig {
    /// Directory holding the CA, keys, database and tokens. Relative paths
    /// below are resolved against it.
    pub data_dir: PathBuf,
    /// HTTP API listen address.
    #[serde(default = "default_api_listen")]
    pub api_listen: SocketAddr,
    /// QUIC (UDP) listen address for agents; enrollment listens on TCP at the same address.
    #[serde(default = "default_quic_listen")]
    pub quic_listen: SocketAddr,
    /// Database URL; default `sqlite://DATA_DIR/vesemir.db`.
    #[serde(default)]
    pub database_url: Option<String>,
    /// Agent heartbeat interval, seconds.
    #[serde(default = "default_heartbeat_secs")]
    pub heartbeat_secs: u32,
    /// Lifetime of agent certificates (humantime, e.g. "7d").
    #[serde(default = "default_cert_ttl", with = "vesemir_daemon::duration")]
    pub agent_cert_ttl: Duration,
    /// How often buffered last-seen updates are written to the store.
    #[serde(default = "default_flush", with = "vesemir_daemon::duration")]
    pub last_seen_flush: Duration,
    /// QUIC idle timeout: a silent agent is dropped after this.
    #[serde(default = "default_idle", with = "vesemir_daemon::duration")]
    pub quic_idle_timeout: Duration,
    /// Largest HTTP request body accepted, bytes.
    #[serde(default = "default_body_limit")]
    pub api_body_limit: usize,
    /// Per-request timeout of the HTTP API (streams excluded).
    #[serde(default = "default_api_timeout", with = "vesemir_daemon::duration")]
    pub api_timeout: Duration,
    /// Chef server, when the inventory comes from Chef.
    #[serde(default)]
    pub chef: Option<crate::inventory::ChefConfig>,
    /// Static inventory file, when the inventory comes from a file.
    #[serde(default)]
    pub inventory: Option<PathBuf>,
    /// Webhooks (`[notify]`): the signing secret and the webhooks told
    /// about every deployment; without it no webhook is sent and requests
    /// with `notify` are refused. See [`crate::notify`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<crate::notify::NotifyConfig>,
    /// Freeze windows (`[[freeze]]`): when deployments to some environments
    /// are refused (409) unless an admin token overrides. Checked at load;
    /// see [`crate::freeze`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub freeze: Vec<crate::freeze::FreezeSpec>,
}

fn default_api_listen() -> SocketAddr {
    "127.0.0.1:7080".parse().expect("valid")
}
fn default_quic_listen() -> SocketAddr {
    "0.0.0.0:7443".parse().expect("valid")
}
fn default_heartbeat_secs() -> u32 {
    10
}
fn default_cert_ttl() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn default_flush() -> Duration {
    Duration::from_secs(5)
}
fn default_idle() -> Duration {
    Duration::from_secs(30)
}
fn default_body_limit() -> usize {
    1024 * 1024
}
fn default_api_timeout() -> Duration {
    Duration::from_secs(30)
}

pub use vesemir_daemon::ConfigError;

impl ControllerConfig {
    /// A config with defaults for a data dir.
    pub fn new(data_dir: PathBuf) -> Self {
        ControllerConfig {
            data_dir,
            api_listen: default_api_listen(),
            quic_listen: default_quic_listen(),
            database_url: None,
            heartbeat_secs: default_heartbeat_secs(),
            agent_cert_ttl: default_cert_ttl(),
            last_seen_flush: default_flush(),
            quic_idle_timeout: default_idle(),
            api_body_limit: default_body_limit(),
            api_timeout: default_api_timeout(),
            chef: None,
            inventory: None,
            notify: None,
            freeze: Vec::new(),
        }
    }

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut cfg: ControllerConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let invalid = |key, message: &str| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message: message.to_string(),
        };
        if cfg.data_dir.is_relative() {
            let base = path.parent().unwrap_or(Path::new("."));
            cfg.data_dir = base.join(&cfg.data_dir);
        }
        if !cfg.data_dir.is_dir() {
            return Err(invalid(
                "data_dir",
                &format!(
                    "{} is not a directory; run `vesemir-controller init --data-dir DIR` first",
                    cfg.data_dir.display()
                ),
            ));
        }
        if cfg.heartbeat_secs == 0 || cfg.heartbeat_secs > 3600 {
            return Err(invalid("heartbeat_secs", "must be between 1 and 3600"));
        }
        if cfg.agent_cert_ttl < Duration::from_secs(10) {
            return Err(invalid("agent_cert_ttl", "must be at least 10s"));
        }
        if cfg.quic_idle_timeout < Duration::from_secs(2)
            || cfg.quic_idle_timeout.as_secs() <= u64::from(cfg.heartbeat_secs)
        {
            return Err(invalid(
                "quic_idle_timeout",
                "must be at least 2s and longer than heartbeat_secs",
            ));
        }
        if cfg.api_body_limit < 1024 {
            return Err(invalid("api_body_limit", "must be at least 1024 bytes"));
        }
        if let Some(inv) = &cfg.inventory {
            if inv.is_relative() {
                cfg.inventory = Some(cfg.data_dir.join(inv));
            }
        }
        if cfg.chef.is_some() && cfg.inventory.is_some() {
            return Err(invalid(
                "inventory",
                "give either a [chef] section or an inventory file, not both",
            ));
        }
        if let Some(chef) = &cfg.chef {
            if !(chef.server_url.starts_with("http://") || chef.server_url.starts_with("https://"))
            {
                return Err(invalid(
                    "chef.server_url",
                    "must be an http:// or https:// URL",
                ));
            }
            if !chef.client_key.is_file() {
                return Err(invalid(
                    "chef.client_key",
                    &format!("{} is not a readable file", chef.client_key.display()),
                ));
            }
        }
        let dd = DataDir {
            root: cfg.data_dir.clone(),
        };
        for key in [dd.ca_key(), dd.server_key()] {
            vesemir_daemon::check_private_key(&key)
                .map_err(|m| invalid("data_dir", &m.to_string()))?;
        }
        if let Some(url) = &cfg.database_url {
            check_database_url(url).map_err(|m| invalid("database_url", &m.to_string()))?;
        }
        if let Some(n) = &mut cfg.notify {
            if n.secret_file.is_relative() {
                n.secret_file = cfg.data_dir.join(&n.secret_file);
            }
            n.check().map_err(|m| invalid("notify", &m))?;
            crate::notify::read_secret(&n.secret_file)
                .map_err(|m| invalid("notify.secret_file", &m))?;
        }
        crate::freeze::FreezeCalendar::new(&cfg.freeze)
            .map_err(|e| invalid("freeze", &e.to_string()))?;
        Ok(cfg)
    }

    /// Writes the config as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serializes")
    }

    /// The database URL in force.
    pub fn database_url(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("vesemir.db").display()
            )
        })
    }
}

/// A database URL for a backend the store has no migrations for.
#[derive(Debug, thiserror::Error)]
#[error("{url:?} is not a database URL this controller supports: use sqlite://PATH or postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE")]
pub struct UnsupportedDatabaseUrl {
    /// The URL as given.
    pub url: String,
}

/// Checks the shape of a database URL before anything connects: the two
/// backends the store has migrations for. The message says what to write.
pub fn check_database_url(url: &str) -> Result<(), UnsupportedDatabaseUrl> {
    let ok = url.starts_with("sqlite:")
        || ((url.starts_with("postgres://") || url.starts_with("postgresql://"))
            && url
                .split_once("://")
                .is_some_and(|(_, rest)| !rest.is_empty()));
    if ok {
        Ok(())
    } else {
        Err(UnsupportedDatabaseUrl {
            url: url.to_string(),
        })
    }
}

/// Paths of the files `init` writes into the data dir.
#[derive(Debug, Clone)]
pub struct DataDir {
    /// The directory.
    pub root: PathBuf,
}

impl DataDir {
    /// CA certificate (public).
    pub fn ca_cert(&self) -> PathBuf {
        self.root.join("ca.pem")
    }
    /// CA key (secret, 0600).
    pub fn ca_key(&self) -> PathBuf {
        self.root.join("ca-key.pem")
    }
    /// Server certificate.
    pub fn server_cert(&self) -> PathBuf {
        self.root.join("server.pem")
    }
    /// Server key (0600).
    pub fn server_key(&self) -> PathBuf {
        self.root.join("server-key.pem")
    }
    /// Key for QUIC stateless resets, kept across restarts so agents of a
    /// killed controller learn at once that their connection is gone.
    pub fn reset_key(&self) -> PathBuf {
        self.root.join("quic-reset.key")
    }
    /// The admin API token (0600).
    pub fn admin_token(&self) -> PathBuf {
        self.root.join("admin.token")
    }
    /// The CLI config.
    pub fn cli_config(&self) -> PathBuf {
        self.root.join("cli.toml")
    }
    /// The controller config.
    pub fn config(&self) -> PathBuf {
        self.root.join("controller.toml")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(extra: &str) -> Result<ControllerConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("controller.toml");
        std::fs::write(&path, format!("data_dir = \".\"\n{extra}")).unwrap();
        ControllerConfig::load(&path)
    }

    #[test]
    fn freeze_windows_are_checked_at_load() {
        let cfg = load(
            "[[freeze]]\nenvironment = \"prod*\"\nreason = \"weekend\"\nfrom = \"fri 16:00\"\nto = \"mon 08:00\"\n",
        )
        .unwrap();
        assert_eq!(cfg.freeze.len(), 1);
        // Written back and read again the same.
        let again: ControllerConfig = toml::from_str(&cfg.to_toml()).unwrap();
        assert_eq!(again.freeze, cfg.freeze);
        let e = load("[[freeze]]\nenvironment = \"prod\"\nreason = \"r\"\nfrom = \"6pm\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("key `freeze`") && e.contains("not a time"),
            "{e}"
        );
        // No [[freeze]]: none, and none written.
        let cfg = load("").unwrap();
        assert!(cfg.freeze.is_empty() && !cfg.to_toml().contains("freeze"));
        assert!(cfg.notify.is_none() && !cfg.to_toml().contains("notify"));
    }

    #[test]
    fn notify_section_is_checked_at_load() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("controller.toml");
        let secret = dir.path().join("webhook.secret");
        std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let write = |extra: &str| {
            std::fs::write(
                &path,
                format!(
                    "data_dir = \".\"\n[notify]\nsecret_file = \"webhook.secret\"\n{extra}\n\
                     [[notify.webhooks]]\nurl = \"https://chat.example/hook\"\nevents = [\"failed\"]\n\
                     [[freeze]]\nenvironment = \"p\"\nreason = \"r\"\ndays = [\"sun\"]\n"
                ),
            )
            .unwrap();
            ControllerConfig::load(&path)
        };
        let cfg = write("timeout = \"2s\"").unwrap();
        let n = cfg.notify.as_ref().unwrap();
        assert_eq!(n.secret_file, dir.path().join("webhook.secret"));
        assert_eq!(n.timeout, Duration::from_secs(2));
        assert_eq!(n.webhooks.len(), 1);
        let again: ControllerConfig = toml::from_str(&cfg.to_toml()).unwrap();
        assert_eq!(again.notify, cfg.notify);
        assert_eq!(again.freeze, cfg.freeze);
        let e = write("attempts = 0").unwrap_err().to_string();
        assert!(e.contains("key `notify`") && e.contains("attempts"), "{e}");
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = write("").unwrap_err().to_string();
        assert!(
            e.contains("notify.secret_file") && e.contains("chmod 600"),
            "{e}"
        );
    }
}
