//! Selector → Chef search (Lucene) query. Every user value is escaped; field
//! names are validated, never escaped into something else.

use super::{InventoryError, Selector};

/// Characters with a meaning in Lucene query syntax, escaped with `\`.
/// Whitespace is escaped too so a value stays one term.
const SPECIALS: &[char] = &[
    '+', '-', '&', '|', '!', '(', ')', '{', '}', '[', ']', '^', '"', '~', '*', '?', ':', '\\', '/',
    ' ', '\t',
];

/// Escape a value for use as one Lucene term: `app:payments` → `app\:payments`.
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 4);
    for c in value.chars() {
        if SPECIALS.contains(&c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Turn an attribute path into a Chef search field: nested keys are joined
/// with `_` (`cloud.public_ipv4` → `cloud_public_ipv4`). Only ASCII letters,
/// digits, `_` and `.` are accepted, so a key can never smuggle in syntax.
pub fn attribute_field(key: &str) -> Result<String, InventoryError> {
    vesemir_api::check_attribute_key(key)?;
    Ok(key.replace('.', "_"))
}

/// Build the Chef search query for a selector.
///
/// Every field is ANDed: each tag, role and recipe must be present, each
/// `not_tags` entry absent. A raw `query` is wrapped in parentheses and ANDed
/// with the rest. A selector with only negations matches "all nodes except":
/// it is sent as `*:* AND NOT …`.
pub fn selector_query(sel: &Selector) -> Result<String, InventoryError> {
    sel.validate()?;
    let mut positive: Vec<String> = Vec::new();
    if let Some(raw) = &sel.query {
        positive.push(format!("({})", raw.trim()));
    }
    if let Some(env) = &sel.environment {
        positive.push(format!("chef_environment:{}", escape(env)));
    }
    positive.extend(sel.tags.iter().map(|t| format!("tags:{}", escape(t))));
    positive.extend(sel.roles.iter().map(|r| format!("role:{}", escape(r))));
    positive.extend(sel.recipes.iter().map(|r| format!("recipe:{}", escape(r))));
    for (k, v) in &sel.attributes {
        positive.push(format!("{}:{}", attribute_field(k)?, escape(v)));
    }
    if positive.is_empty() {
        positive.push("*:*".to_string());
    }
    let mut q = positive.join(" AND ");
    for t in &sel.not_tags {
        q.push_str(" AND NOT tags:");
        q.push_str(&escape(t));
    }
    Ok(q)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn escapes_lucene_specials() {
        for (input, want) in [
            ("web", "web"),
            ("app:payments", r"app\:payments"),
            ("prod-eu", r"prod\-eu"),
            ("a.b_c", "a.b_c"),
            ("haproxy::default", r"haproxy\:\:default"),
            ("x y", r"x\ y"),
            (r#"a"b\c"#, r#"a\"b\\c"#),
            ("(a OR b)", r"\(a\ OR\ b\)"),
            ("*", r"\*"),
            ("a&&b||!c", r"a\&\&b\|\|\!c"),
            ("role[web]", r"role\[web\]"),
            ("{^~?+/}", r"\{\^\~\?\+\/\}"),
        ] {
            assert_eq!(escape(input), want, "{input}");
        }
    }

    fn check(sel: Selector, want: &str) {
        assert_eq!(selector_query(&sel).unwrap(), want);
    }

    #[test]
    fn selector_to_query() {
        check(
            Selector {
                tags: vec!["app:payments".into()],
                environment: Some("production".into()),
                ..Default::default()
            },
            r"chef_environment:production AND tags:app\:payments",
        );
        check(
            Selector {
                roles: vec!["web".into(), "db".into()],
                recipes: vec!["haproxy::default".into()],
                not_tags: vec!["canary".into(), "x:y".into()],
                ..Default::default()
            },
            r"role:web AND role:db AND recipe:haproxy\:\:default AND NOT tags:canary AND NOT tags:x\:y",
        );
        check(
            Selector {
                not_tags: vec!["drained".into()],
                ..Default::default()
            },
            "*:* AND NOT tags:drained",
        );
        check(
            Selector {
                attributes: BTreeMap::from([("cloud.public_ipv4".into(), "1.2.3.4".into())]),
                ..Default::default()
            },
            "cloud_public_ipv4:1.2.3.4",
        );
        check(
            Selector {
                query: Some(" role:web OR role:db ".into()),
                tags: vec!["a".into()],
                ..Default::default()
            },
            "(role:web OR role:db) AND tags:a",
        );
    }

    #[test]
    fn invalid_selectors_are_rejected() {
        for sel in [
            Selector::default(),
            Selector {
                tags: vec!["".into()],
                ..Default::default()
            },
            Selector {
                query: Some("  ".into()),
                ..Default::default()
            },
            Selector {
                attributes: BTreeMap::from([("a:b".into(), "x".into())]),
                ..Default::default()
            },
            Selector {
                attributes: BTreeMap::from([("a b".into(), "x".into())]),
                ..Default::default()
            },
            Selector {
                environment: Some("".into()),
                ..Default::default()
            },
            Selector {
                tags: vec!["app:*".into()],
                ..Default::default()
            },
            Selector {
                attributes: BTreeMap::from([("a".into(), "x?".into())]),
                ..Default::default()
            },
        ] {
            assert!(selector_query(&sel).is_err(), "{sel:?}");
        }
    }
}
