//! Static inventory: hosts listed in a TOML or YAML file, for users without
//! Chef and for `vesemir demo`. Answers [`Selector`]s with the same semantics
//! as Chef search (see the module docs of [`super`]).
//!
//! ```toml
//! [[hosts]]
//! name = "web-1"                  # required, unique
//! address = "10.0.0.1"            # optional: else fqdn, else hostname, else name
//! tags = ["app:payments"]
//! roles = ["web"]
//! recipes = ["haproxy::default"]
//! environment = "production"
//! attributes = { "cloud.region" = "eu-west" }
//! ```
//!
//! The YAML form is the same document: `hosts:` with a list of mappings.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::{pick_address, Host, Inventory, InventoryError, Resolution, Selector};

/// One host as written in the file.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticHost {
    /// Node name (what the agent's certificate names).
    pub name: String,
    /// Address to reach it.
    #[serde(default)]
    pub address: Option<String>,
    /// Fully qualified domain name.
    #[serde(default)]
    pub fqdn: Option<String>,
    /// Short host name.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Roles.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Recipes.
    #[serde(default)]
    pub recipes: Vec<String>,
    /// Environment.
    #[serde(default)]
    pub environment: Option<String>,
    /// Flat attributes; nested keys written with `.` or `_`.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

/// The file's top level.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticFile {
    /// All hosts.
    #[serde(default)]
    pub hosts: Vec<StaticHost>,
}

/// Why a static inventory's host list is refused (the file is fixed and
/// loaded again).
#[derive(Debug, thiserror::Error)]
pub enum StaticHostsError {
    /// A host without a name: give every host a `name`.
    #[error("a host has an empty name")]
    EmptyName,
    /// An attribute key the selector language cannot address.
    #[error("host {host}: {source}")]
    Attribute {
        /// The host carrying the attribute.
        host: String,
        /// Why the key is refused (boxed: `InventoryError` is large).
        source: Box<InventoryError>,
    },
    /// Two hosts with one name: names identify hosts, so rename one.
    #[error("host {0:?} is listed twice")]
    Duplicate(String),
}

/// Inventory read from a file once, at load.
#[derive(Debug, Clone)]
pub struct StaticInventory {
    /// Hosts by name.
    hosts: BTreeMap<String, StaticHost>,
}

impl StaticInventory {
    /// Load a `.toml`, `.yaml` or `.yml` file.
    pub fn load(path: &Path) -> Result<Self, InventoryError> {
        let err = |message: String| InventoryError::StaticFile {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        let file: StaticFile = match ext.as_deref() {
            Some("toml") => toml::from_str(&text).map_err(|e| err(e.to_string()))?,
            Some("yaml" | "yml") => {
                serde_norway::from_str(&text).map_err(|e| err(e.to_string()))?
            }
            _ => {
                return Err(err(
                    "unknown format: name the file .toml, .yaml or .yml".to_string()
                ))
            }
        };
        Self::from_hosts(file.hosts).map_err(|e| err(e.to_string()))
    }

    /// Build from hosts; names must be unique and non-empty.
    pub fn from_hosts(hosts: Vec<StaticHost>) -> Result<Self, StaticHostsError> {
        let mut by_name = BTreeMap::new();
        for h in hosts {
            if h.name.trim().is_empty() {
                return Err(StaticHostsError::EmptyName);
            }
            for key in h.attributes.keys() {
                super::query::attribute_field(key).map_err(|source| {
                    StaticHostsError::Attribute {
                        host: h.name.clone(),
                        source: Box::new(source),
                    }
                })?;
            }
            if let Some(dup) = by_name.insert(h.name.clone(), h) {
                return Err(StaticHostsError::Duplicate(dup.name));
            }
        }
        Ok(StaticInventory { hosts: by_name })
    }

    /// Number of hosts in the file.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// True when the file lists no host.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Resolve a selector against the file.
    pub async fn resolve(&self, sel: &Selector) -> Result<Resolution, InventoryError> {
        self.resolve_now(sel)
    }

    /// Synchronous form of [`StaticInventory::resolve`].
    pub fn resolve_now(&self, sel: &Selector) -> Result<Resolution, InventoryError> {
        sel.validate()?;
        if sel.query.is_some() {
            return Err(InventoryError::RawQueryUnsupported);
        }
        let hosts = self
            .hosts
            .values()
            .filter(|h| matches(sel, h))
            .map(|h| Host {
                name: h.name.clone(),
                address: pick_address(
                    &h.name,
                    h.address.as_deref(),
                    h.fqdn.as_deref(),
                    h.hostname.as_deref(),
                ),
                fqdn: h.fqdn.clone(),
                hostname: h.hostname.clone(),
                tags: h.tags.clone(),
                roles: h.roles.clone(),
                environment: h.environment.clone(),
            })
            .collect();
        Ok(Resolution {
            query: format!("static: {}", sel.describe()),
            hosts,
        })
    }
}

impl Inventory for StaticInventory {
    fn resolve(
        &self,
        sel: &Selector,
    ) -> impl std::future::Future<Output = Result<Resolution, InventoryError>> + Send {
        StaticInventory::resolve(self, sel)
    }
}

fn all_in(wanted: &[String], have: &[String]) -> bool {
    let have: BTreeSet<&str> = have.iter().map(String::as_str).collect();
    wanted.iter().all(|w| have.contains(w.as_str()))
}

/// The selector semantics, mirrored from the Chef query in [`super::query`].
fn matches(sel: &Selector, h: &StaticHost) -> bool {
    let attrs: BTreeMap<String, &str> = h
        .attributes
        .iter()
        .map(|(k, v)| (k.replace('.', "_"), v.as_str()))
        .collect();
    all_in(&sel.tags, &h.tags)
        && !sel.not_tags.iter().any(|t| h.tags.contains(t))
        && all_in(&sel.roles, &h.roles)
        && all_in(&sel.recipes, &h.recipes)
        && sel
            .environment
            .as_ref()
            .is_none_or(|e| h.environment.as_ref() == Some(e))
        && sel
            .attributes
            .iter()
            .all(|(k, v)| attrs.get(&k.replace('.', "_")) == Some(&v.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, tags: &[&str], env: &str) -> StaticHost {
        StaticHost {
            name: name.into(),
            address: None,
            fqdn: None,
            hostname: None,
            tags: tags.iter().map(|s| s.to_string()).collect(),
            roles: vec![],
            recipes: vec![],
            environment: Some(env.into()),
            attributes: BTreeMap::from([("cloud.region".into(), "eu".into())]),
        }
    }

    #[test]
    fn matches_and_refuses_raw_queries() {
        let inv = StaticInventory::from_hosts(vec![
            host("b", &["app:pay"], "prod"),
            host("a", &["app:pay", "canary"], "prod"),
            host("c", &["app:pay"], "staging"),
        ])
        .unwrap();
        let sel = Selector {
            tags: vec!["app:pay".into()],
            not_tags: vec!["canary".into()],
            attributes: BTreeMap::from([("cloud_region".into(), "eu".into())]),
            environment: Some("prod".into()),
            ..Default::default()
        };
        let names: Vec<_> = inv
            .resolve_now(&sel)
            .unwrap()
            .hosts
            .into_iter()
            .map(|h| h.name)
            .collect();
        assert_eq!(names, ["b"]);
        let raw = Selector {
            query: Some("*:*".into()),
            ..Default::default()
        };
        assert!(matches!(
            inv.resolve_now(&raw),
            Err(InventoryError::RawQueryUnsupported)
        ));
        assert!(matches!(
            inv.resolve_now(&Selector::default()),
            Err(InventoryError::EmptySelector)
        ));
    }

    #[test]
    fn duplicate_names_are_refused() {
        let err = StaticInventory::from_hosts(vec![host("a", &[], "p"), host("a", &[], "p")])
            .unwrap_err();
        assert!(err.to_string().contains("listed twice"), "{err}");
    }
}
