//! `agent.toml`, written by `vesemir-agent enroll` and read by `run`.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The agent's configuration file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// This node's name (its certificate CN, its Chef node name).
    pub name: String,
    /// Controller `HOST:PORT` (UDP for QUIC).
    pub controller: String,
    /// More controllers sharing the first one's database and CA (`init
    /// --join`), `HOST:PORT` each. The agent starts on a random one of
    /// `controller` + these and moves to the next when a session ends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub controllers: Vec<String>,
    /// Name to verify the controller's certificate against; default: HOST.
    #[serde(default)]
    pub server_name: Option<String>,
    /// State directory: key, certificates, journal. Relative paths below
    /// resolve against it.
    pub data_dir: PathBuf,
    /// CA certificate that signs the controller.
    #[serde(default = "default_ca")]
    pub ca_cert: PathBuf,
    /// This agent's certificate.
    #[serde(default = "default_cert")]
    pub cert: PathBuf,
    /// This agent's private key (0600; never leaves the VM).
    #[serde(default = "default_key")]
    pub key: PathBuf,
    /// Where the named playbooks live.
    #[serde(default = "default_playbooks")]
    pub playbook_dir: PathBuf,
    /// The service manager command (`systemctl`; tests point it at a stand-in).
    #[serde(default = "default_systemctl")]
    pub systemctl: PathBuf,
    /// HAProxy admin socket on this VM, if it runs HAProxy.
    #[serde(default)]
    pub haproxy_socket: Option<PathBuf>,
    /// First reconnect backoff step.
    #[serde(default = "default_base", with = "vesemir_daemon::duration")]
    pub reconnect_base: Duration,
    /// Largest reconnect backoff.
    #[serde(default = "default_cap", with = "vesemir_daemon::duration")]
    pub reconnect_cap: Duration,
    /// Default timeout of a playbook task without its own.
    #[serde(default = "default_task_timeout", with = "vesemir_daemon::duration")]
    pub task_timeout: Duration,
    /// Host variables (like Ansible's host_vars): given to every playbook
    /// this agent runs; a request's own vars override them.
    #[serde(default)]
    pub vars: std::collections::BTreeMap<String, String>,
}

fn default_ca() -> PathBuf {
    "ca.pem".into()
}
fn default_cert() -> PathBuf {
    "agent.pem".into()
}
fn default_key() -> PathBuf {
    "agent-key.pem".into()
}
fn default_playbooks() -> PathBuf {
    "/usr/share/vesemir/playbooks".into()
}
fn default_systemctl() -> PathBuf {
    "systemctl".into()
}
fn default_base() -> Duration {
    Duration::from_secs(1)
}
fn default_cap() -> Duration {
    Duration::from_secs(60)
}
fn default_task_timeout() -> Duration {
    Duration::from_secs(600)
}

pub use vesemir_daemon::ConfigError;

impl AgentConfig {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let cfg: AgentConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let invalid = |key, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message,
        };
        if cfg.controller_host_port().is_none() {
            return Err(invalid(
                "controller",
                format!("{:?} is not HOST:PORT", cfg.controller),
            ));
        }
        if let Some(bad) = cfg
            .controllers
            .iter()
            .find(|c| split_host_port(c).is_none())
        {
            return Err(invalid(
                "controllers",
                format!("{bad:?} is not HOST:PORT (a list of \"HOST:PORT\" strings)"),
            ));
        }
        if cfg.name.is_empty() {
            return Err(invalid("name", "must not be empty".into()));
        }
        if cfg.reconnect_base.is_zero() || cfg.reconnect_cap < cfg.reconnect_base {
            return Err(invalid(
                "reconnect_cap",
                "reconnect_base must be > 0 and reconnect_cap >= reconnect_base".into(),
            ));
        }
        if !cfg.data_dir.is_dir() {
            return Err(invalid(
                "data_dir",
                format!("{} is not a directory", cfg.data_dir.display()),
            ));
        }
        vesemir_daemon::check_private_key(&cfg.path(&cfg.key))
            .map_err(|m| invalid("key", m.to_string()))?;
        Ok(cfg)
    }

    /// Splits `controller` into host and port.
    pub fn controller_host_port(&self) -> Option<(String, u16)> {
        split_host_port(&self.controller)
    }

    /// Every controller address, `controller` first, without repeats.
    pub fn controller_addresses(&self) -> Vec<String> {
        let mut all = vec![self.controller.clone()];
        for c in &self.controllers {
            if !all.contains(c) {
                all.push(c.clone());
            }
        }
        all
    }

    /// Resolves a path relative to the data dir.
    pub fn path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.data_dir.join(p)
        }
    }

    /// The job journal's directory.
    pub fn journal_dir(&self) -> PathBuf {
        self.data_dir.join("journal")
    }

    /// A config with defaults.
    pub fn new(name: String, controller: String, data_dir: PathBuf) -> AgentConfig {
        AgentConfig {
            name,
            controller,
            controllers: Vec::new(),
            server_name: None,
            data_dir,
            ca_cert: default_ca(),
            cert: default_cert(),
            key: default_key(),
            playbook_dir: default_playbooks(),
            systemctl: default_systemctl(),
            haproxy_socket: None,
            reconnect_base: default_base(),
            reconnect_cap: default_cap(),
            task_timeout: default_task_timeout(),
            vars: Default::default(),
        }
    }
}

/// `host:port`, `[v6]:port` → (host, port).
pub fn split_host_port(s: &str) -> Option<(String, u16)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, port) = rest.split_once("]:")?;
        return Some((host.to_string(), port.parse().ok()?));
    }
    let (host, port) = s.rsplit_once(':')?;
    if host.is_empty() || host.contains(':') {
        return None;
    }
    Some((host.to_string(), port.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::{split_host_port, AgentConfig};

    #[test]
    fn one_controller_or_several() {
        let one: AgentConfig =
            toml::from_str("name = \"n\"\ncontroller = \"a:1\"\ndata_dir = \"/d\"\n").unwrap();
        assert_eq!(one.controller_addresses(), ["a:1"]);
        assert!(
            !toml::to_string(&one).unwrap().contains("controllers"),
            "the single form is written as before"
        );
        let several: AgentConfig = toml::from_str(
            "name = \"n\"\ncontroller = \"a:1\"\ncontrollers = [\"b:1\", \"a:1\", \"c:1\"]\ndata_dir = \"/d\"\n",
        )
        .unwrap();
        assert_eq!(several.controller_addresses(), ["a:1", "b:1", "c:1"]);
    }

    #[test]
    fn host_port() {
        assert_eq!(
            split_host_port("127.0.0.1:7443"),
            Some(("127.0.0.1".into(), 7443))
        );
        assert_eq!(split_host_port("[::1]:7443"), Some(("::1".into(), 7443)));
        assert_eq!(
            split_host_port("ctl.example:1"),
            Some(("ctl.example".into(), 1))
        );
        assert_eq!(split_host_port("nope"), None);
        assert_eq!(split_host_port(":1"), None);
        assert_eq!(split_host_port("h:99999"), None);
    }
}
