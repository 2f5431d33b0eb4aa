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

use std::future::Future;

pub mod chef;
pub mod query;
pub mod sign;
pub mod static_file;

pub use chef::{ChefClient, ChefConfig, ChefError, ChefInventory};
pub use sign::{SignVersion, SigningKey};
pub use static_file::StaticInventory;

/// Which hosts to pick: defined with its validation in `vesemir-api` (a wire
/// type); its errors become [`InventoryError::EmptySelector`] and
/// [`InventoryError::InvalidSelector`].
pub use vesemir_api::Selector;

impl From<vesemir_api::SelectorError> for InventoryError {
    fn from(e: vesemir_api::SelectorError) -> Self {
        match e {
            vesemir_api::SelectorError::Empty => InventoryError::EmptySelector,
            vesemir_api::SelectorError::Invalid(m) => InventoryError::InvalidSelector(m),
        }
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
