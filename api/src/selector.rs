//! Which hosts to pick: the selector of deploy requests and inventory
//! look-ups, and its validation (the inventory sources rely on it having
//! passed [`Selector::validate`]).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Which hosts to pick. All fields are optional and ANDed; an empty selector
/// is refused ([`SelectorError::Empty`]) so nobody deploys to the whole fleet
/// by forgetting a flag.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

/// Why a selector cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// Nothing selected at all.
    #[error("empty selector: give at least one of tags, not-tags, roles, recipes, environment, attributes or a raw query")]
    Empty,
    /// A selector value or key that cannot be used.
    #[error("invalid selector: {0}")]
    Invalid(String),
}

/// Checks an attribute path: ASCII letters, digits, `_` and `.` for
/// nesting, so a key can never smuggle query syntax into a Chef search.
pub fn check_attribute_key(key: &str) -> Result<(), SelectorError> {
    if key.is_empty()
        || !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        || key.starts_with('.')
        || key.ends_with('.')
    {
        return Err(SelectorError::Invalid(format!(
            "attribute name {key:?} is not valid: use letters, digits, '_' and '.' for nesting (e.g. cloud.public_ipv4)"
        )));
    }
    Ok(())
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
    pub fn validate(&self) -> Result<(), SelectorError> {
        if self.is_empty() {
            return Err(SelectorError::Empty);
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
                    return Err(SelectorError::Invalid(format!("empty {what} value")));
                }
                // Wildcards are refused, not escaped: goiardi expands `*` even
                // when escaped, and a selector that silently widens is how a
                // deploy reaches the wrong fleet. Raw queries may use them.
                if v.contains(['*', '?']) {
                    return Err(SelectorError::Invalid(format!(
                        "{what} value {v:?} contains a wildcard ('*' or '?'); selector values match exactly, use a raw query for patterns"
                    )));
                }
            }
        }
        if self.query.as_deref().is_some_and(|q| q.trim().is_empty()) {
            return Err(SelectorError::Invalid("empty raw query".to_string()));
        }
        for key in self.attributes.keys() {
            check_attribute_key(key)?;
        }
        Ok(())
    }

    /// One-line human description, for sources that have no query language.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(v: serde_json::Value) -> Result<(), SelectorError> {
        serde_json::from_value::<Selector>(v).unwrap().validate()
    }

    #[test]
    fn selector_validation() {
        assert_eq!(sel(serde_json::json!({})), Err(SelectorError::Empty));
        assert!(sel(serde_json::json!({"tags": ["app:pay"]})).is_ok());
        assert!(sel(serde_json::json!({"tags": [" "]})).is_err());
        let wild = sel(serde_json::json!({"roles": ["web*"]})).unwrap_err();
        assert!(wild.to_string().contains("wildcard"), "{wild}");
        assert!(sel(serde_json::json!({"query": "  "})).is_err());
        assert!(sel(serde_json::json!({"attributes": {"cloud.region": "eu"}})).is_ok());
        assert!(sel(serde_json::json!({"attributes": {"a:b": "x"}})).is_err());
        assert!(sel(serde_json::json!({"attributes": {".a": "x"}})).is_err());
    }

    #[test]
    fn missing_fields_default() {
        let s: Selector = serde_json::from_str(r#"{"tags":["app:pay"]}"#).unwrap();
        assert!(s.roles.is_empty() && s.query.is_none());
        assert_eq!(s.describe(), "tag=app:pay");
    }
}
