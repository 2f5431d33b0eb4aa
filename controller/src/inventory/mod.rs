//! Inventory: where an application's VMs are found (Chef server search or a static file).
//!
//! Layout:
//! - [`Selector`], [`Host`], [`Resolution`]: the boundary types (API, CLI output).
//! - [`query`]: selector → escaped Lucene query for Chef search.
//! - [`sign`]: Mixlib::Authentication request signing (pure, no IO, no clock).
//! - [`chef`]: the signed Chef server API client and [`ChefInventory`].
//! - [`static_file`]: [`StaticInventory`], hosts listed in a TOML or YAML file.
//!
//! Architecture invariant: user text reaches a Chef query only through
//! [`query::escape`] (values) or [`query::attribute_field`] (validated field
//! names), except [`Selector::query`], the explicit raw-Lucene escape hatch.
//!
//! Both sources answer the same [`Selector`] with the same semantics: every
//! field is ANDed (each listed tag, role and recipe must be present, each
//! `not_tags` entry absent, environment and attributes equal). Values match
//! exactly: wildcards (`*`, `?`) in them are refused. A raw `query`
//! is ANDed with the other fields by Chef; the static inventory rejects it
//! ([`InventoryError::RawQueryUnsupported`]).

use std::collections::BTreeMap;
use std::future::Future;

pub mod chef;
pub mod query;
pub mod sign;
pub mod static_file;

pub use chef::{ChefClient, ChefConfig, ChefError, ChefInventory};
pub use sign::{SignVersion, SigningKey};
pub use static_file::StaticInventory;

/// Which hosts to pick. All fields are optional and ANDed; an empty selector
/// is refused ([`InventoryError::EmptySelector`]) so nobody deploys to the
/// whole fleet by forgetting a flag.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Selector {
    /// Every one of these tags must be on the node (`app:payments`).
    pub tags: Vec<String>,
    /// None of these tags may be on the node.
    pub not_tags: Vec<String>,
    /// Every one of these roles must be in the node's (expanded) run list.
    pub roles: Vec<String>,
    /// Every one of these recipes must be in the node's (expanded) run list.
    pub recipes: Vec<String>,
    /// The node's Chef environment.
    pub environment: Option<String>,
    /// Attribute equality; nested keys with `.` or `_` (`cloud.region`).
    pub attributes: BTreeMap<String, String>,
    /// Raw Lucene query for experts, sent unescaped and ANDed with the other
    /// fields. Chef only.
    pub query: Option<String>,
}

impl Selector {
    /// True when no field is set.
    pub fn is_empty(&self) -> bool {
        self.tags.is_empty()
            && self.not_tags.is_empty()
            && self.roles.is_empty()
            && self.recipes.is_empty()
            && self.environment.is_none()
            && self.attributes.is_empty()
            && self.query.is_none()
    }

    /// Refuse empty selectors, empty values (an empty value would match
    /// nothing in Chef and be a typo in practice) and wildcards in values.
    pub fn validate(&self) -> Result<(), InventoryError> {
        if self.is_empty() {
            return Err(InventoryError::EmptySelector);
        }
        let lists = [
            ("tag", &self.tags),
            ("not-tag", &self.not_tags),
            ("role", &self.roles),
            ("recipe", &self.recipes),
        ];
        let env = self.environment.iter().collect::<Vec<_>>();
        let attr_values = self.attributes.values().collect::<Vec<_>>();
        for (what, values) in lists
            .iter()
            .map(|(w, v)| (*w, v.iter().collect::<Vec<_>>()))
            .chain([("environment", env), ("attribute", attr_values)])
        {
            for v in values {
                if v.trim().is_empty() {
                    return Err(InventoryError::InvalidSelector(format!(
                        "empty {what} value"
                    )));
                }
                // Wildcards are refused, not escaped: goiardi expands `*` even
                // when escaped, and a selector that silently widens is how a
                // deploy reaches the wrong fleet. Raw queries may use them.
                if v.contains(['*', '?']) {
                    return Err(InventoryError::InvalidSelector(format!(
                        "{what} value {v:?} contains a wildcard ('*' or '?'); selector values match exactly, use a raw query for patterns"
                    )));
                }
            }
        }
        if self.query.as_deref().is_some_and(|q| q.trim().is_empty()) {
            return Err(InventoryError::InvalidSelector(
                "empty raw query".to_string(),
            ));
        }
        for key in self.attributes.keys() {
            query::attribute_field(key)?;
        }
        Ok(())
    }

    /// One-line human description, used as [`Resolution::query`] for sources
    /// that have no query language.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(env) = &self.environment {
            parts.push(format!("environment={env}"));
        }
        parts.extend(self.tags.iter().map(|t| format!("tag={t}")));
        parts.extend(self.not_tags.iter().map(|t| format!("not-tag={t}")));
        parts.extend(self.roles.iter().map(|r| format!("role={r}")));
        parts.extend(self.recipes.iter().map(|r| format!("recipe={r}")));
        parts.extend(self.attributes.iter().map(|(k, v)| format!("{k}={v}")));
        if let Some(q) = &self.query {
            parts.push(format!("query=({q})"));
        }
        parts.join(" AND ")
    }
}

/// One VM found by the inventory.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Host {
    /// Chef node name; also the name an agent's certificate carries.
    pub name: String,
    /// Where to reach it: ipaddress, else fqdn, else hostname, else name.
    pub address: String,
    /// Fully qualified domain name, if known.
    pub fqdn: Option<String>,
    /// Short host name, if known.
    pub hostname: Option<String>,
    /// Node tags.
    pub tags: Vec<String>,
    /// Roles from the run list (and the expanded `roles` attribute).
    pub roles: Vec<String>,
    /// Chef environment.
    pub environment: Option<String>,
}

/// The answer to a selector.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Resolution {
    /// Exactly what was sent to Chef, or a description for a static file.
    pub query: String,
    /// Matching hosts, sorted by name, each once.
    pub hosts: Vec<Host>,
}

/// Why an inventory lookup failed.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// Nothing selected at all.
    #[error("empty selector: give at least one of tags, not-tags, roles, recipes, environment, attributes or a raw query")]
    EmptySelector,
    /// A selector value or key that cannot be used.
    #[error("invalid selector: {0}")]
    InvalidSelector(String),
    /// A raw Lucene query against a static inventory.
    #[error("raw queries need a Chef server; the static inventory answers tags, roles, recipes, environment and attributes only")]
    RawQueryUnsupported,
    /// Talking to the Chef server failed.
    #[error(transparent)]
    Chef(#[from] ChefError),
    /// The static inventory file could not be used.
    #[error("static inventory {path}: {message}")]
    StaticFile {
        /// The file.
        path: String,
        /// What is wrong with it.
        message: String,
    },
}

/// Something that resolves selectors to hosts.
pub trait Inventory: Send + Sync {
    /// Resolve a selector to hosts, sorted by name, each once.
    fn resolve(
        &self,
        sel: &Selector,
    ) -> impl Future<Output = Result<Resolution, InventoryError>> + Send;
}

/// The inventory the controller is configured with.
#[derive(Debug)]
pub enum InventorySource {
    /// Chef server search.
    Chef(ChefInventory),
    /// Hosts listed in a file.
    Static(StaticInventory),
}

impl InventorySource {
    /// Resolve a selector to hosts, sorted by name, each once.
    pub async fn resolve(&self, sel: &Selector) -> Result<Resolution, InventoryError> {
        match self {
            InventorySource::Chef(c) => c.resolve(sel).await,
            InventorySource::Static(s) => s.resolve(sel).await,
        }
    }
}

impl Inventory for InventorySource {
    fn resolve(
        &self,
        sel: &Selector,
    ) -> impl Future<Output = Result<Resolution, InventoryError>> + Send {
        InventorySource::resolve(self, sel)
    }
}

/// Address rule shared by both sources: ipaddress, else fqdn, else hostname,
/// else the node name.
pub(crate) fn pick_address(
    name: &str,
    ip: Option<&str>,
    fqdn: Option<&str>,
    hostname: Option<&str>,
) -> String {
    [ip, fqdn, hostname]
        .into_iter()
        .flatten()
        .find(|s| !s.is_empty())
        .unwrap_or(name)
        .to_string()
}
