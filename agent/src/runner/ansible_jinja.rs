//! The parts of Ansible's Jinja2 that playbooks lean on, on top of
//! minijinja: tests on registered results (`is succeeded`, `is changed`…),
//! the common filters (`bool`, `basename`, `regex_replace`, `to_json`…) and
//! Python's way of printing values (`True`, `None`, `['a', 'b']`), so a
//! rendered file holds what `ansible-playbook` would write.
//!
//! Invariant: nothing here does IO except the path tests (`is file`,
//! `is directory`, `is link`, `is exists`), which only stat.

use minijinja::value::{Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind, Output, State};

fn field_true(v: &Value, name: &str) -> bool {
    v.get_attr(name).map(|x| x.is_true()).unwrap_or(false)
}

fn regex(pattern: &str) -> Result<regex::Regex, Error> {
    regex::Regex::new(pattern).map_err(|e| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("invalid regular expression `{pattern}`: {e}"),
        )
    })
}

/// Python's `repr`/`str` of a value, as Jinja2 in Ansible prints it.
pub(crate) fn python_str(v: &Value, top: bool) -> String {
    match v.kind() {
        ValueKind::Undefined => String::new(),
        ValueKind::None => "None".into(),
        ValueKind::Bool => if v.is_true() { "True" } else { "False" }.into(),
        ValueKind::String if top => v.as_str().unwrap_or_default().to_string(),
        ValueKind::String => {
            let s = v.as_str().unwrap_or_default();
            if s.contains('\'') && !s.contains('"') {
                format!("\"{s}\"")
            } else {
                format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
            }
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<String> = v
                .try_iter()
                .map(|it| it.map(|x| python_str(&x, false)).collect())
                .unwrap_or_default();
            format!("[{}]", items.join(", "))
        }
        ValueKind::Map => {
            let items: Vec<String> = v
                .try_iter()
                .map(|it| {
                    it.map(|k| {
                        let val = v.get_item(&k).unwrap_or_default();
                        format!("{}: {}", python_str(&k, false), python_str(&val, false))
                    })
                    .collect()
                })
                .unwrap_or_default();
            format!("{{{}}}", items.join(", "))
        }
        _ => v.to_string(),
    }
}

/// JSON as Python's `json.dumps` writes it (`, ` and `: ` separators).
fn python_json(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Array(a) => {
            format!(
                "[{}]",
                a.iter().map(python_json).collect::<Vec<_>>().join(", ")
            )
        }
        serde_json::Value::Object(m) => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, x)| format!(
                    "{}: {}",
                    serde_json::Value::String(k.clone()),
                    python_json(x)
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string(),
    }
}

fn to_bool(v: Value) -> bool {
    match v.kind() {
        ValueKind::Bool => v.is_true(),
        ValueKind::Number => v.to_string() == "1",
        ValueKind::String => matches!(
            v.as_str().unwrap_or_default().to_ascii_lowercase().trim(),
            "yes" | "on" | "1" | "true" | "y" | "t"
        ),
        _ => false,
    }
}

fn json_of(v: &Value) -> Result<serde_json::Value, Error> {
    serde_json::to_value(v).map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))
}

/// Registers the Ansible tests, filters and formatter.
pub(crate) fn register(env: &mut Environment<'static>) {
    env.set_formatter(|out: &mut Output, _state: &State, value: &Value| {
        if value.kind() == ValueKind::String || value.kind() == ValueKind::Number {
            write!(out, "{value}").map_err(Error::from)
        } else {
            write!(out, "{}", python_str(value, true)).map_err(Error::from)
        }
    });
    for name in ["succeeded", "success"] {
        env.add_test(name, |v: Value| !field_true(&v, "failed"));
    }
    for name in ["failed", "failure"] {
        env.add_test(name, |v: Value| field_true(&v, "failed"));
    }
    for name in ["changed", "change"] {
        env.add_test(name, |v: Value| field_true(&v, "changed"));
    }
    for name in ["skipped", "skip"] {
        env.add_test(name, |v: Value| field_true(&v, "skipped"));
    }
    env.add_test("file", |p: String| std::path::Path::new(&p).is_file());
    env.add_test("directory", |p: String| std::path::Path::new(&p).is_dir());
    env.add_test("link", |p: String| std::path::Path::new(&p).is_symlink());
    env.add_test("exists", |p: String| std::path::Path::new(&p).exists());
    env.add_test("abs", |p: String| std::path::Path::new(&p).is_absolute());
    env.add_test("match", |s: String, p: String| -> Result<bool, Error> {
        Ok(regex(&format!("^(?:{p})"))?.is_match(&s))
    });
    env.add_test("search", |s: String, p: String| -> Result<bool, Error> {
        Ok(regex(&p)?.is_match(&s))
    });
    env.add_filter("bool", to_bool);
    env.add_filter("basename", |p: String| {
        p.rsplit('/').next().unwrap_or_default().to_string()
    });
    env.add_filter("dirname", |p: String| match p.rfind('/') {
        Some(0) => "/".to_string(),
        Some(i) => p[..i].to_string(),
        None => String::new(),
    });
    env.add_filter(
        "regex_replace",
        |s: String, p: String, r: Option<String>| -> Result<String, Error> {
            // Python's `\1` back-references are `${1}` in the regex crate.
            let r = r.unwrap_or_default();
            let mut rep = String::new();
            let mut chars = r.chars().peekable();
            while let Some(c) = chars.next() {
                match (c, chars.peek()) {
                    ('\\', Some(d)) if d.is_ascii_digit() => {
                        rep.push_str(&format!("${{{d}}}"));
                        chars.next();
                    }
                    ('$', _) => rep.push_str("$$"),
                    (c, _) => rep.push(c),
                }
            }
            Ok(regex(&p)?.replace_all(&s, rep.as_str()).into_owned())
        },
    );
    env.add_filter(
        "regex_search",
        |s: String, p: String| -> Result<Value, Error> {
            Ok(match regex(&p)?.find(&s) {
                Some(m) => Value::from(m.as_str()),
                None => Value::from(()),
            })
        },
    );
    env.add_filter("to_json", |v: Value| -> Result<String, Error> {
        Ok(python_json(&json_of(&v)?))
    });
    env.add_filter("to_nice_json", |v: Value| -> Result<String, Error> {
        let j = json_of(&v)?;
        let mut buf = Vec::new();
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
        let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
        serde::Serialize::serialize(&j, &mut ser)
            .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    });
    env.add_filter("from_json", |s: String| -> Result<Value, Error> {
        let j: serde_json::Value = serde_json::from_str(&s)
            .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("from_json: {e}")))?;
        Ok(Value::from_serialize(&j))
    });
    env.add_filter("b64encode", |s: String| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
    });
    env.add_filter("b64decode", |s: String| -> Result<String, Error> {
        use base64::Engine;
        let b = base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("b64decode: {e}")))?;
        Ok(String::from_utf8_lossy(&b).into_owned())
    });
    env.add_filter("quote", |s: String| {
        if !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "@%+=:,./-_".contains(c))
        {
            s
        } else {
            format!("'{}'", s.replace('\'', "'\"'\"'"))
        }
    });
    env.add_filter(
        "ternary",
        |v: Value, a: Value, b: Value| if v.is_true() { a } else { b },
    );
    env.add_filter("combine", |a: Value, b: Value| -> Result<Value, Error> {
        let (mut a, b) = (json_of(&a)?, json_of(&b)?);
        if let (Some(am), serde_json::Value::Object(bm)) = (a.as_object_mut(), b) {
            for (k, v) in bm {
                am.insert(k, v);
            }
        }
        Ok(Value::from_serialize(&a))
    });
    env.add_filter("dict2items", |v: Value| -> Result<Value, Error> {
        let j = json_of(&v)?;
        let items: Vec<serde_json::Value> = j
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| serde_json::json!({"key": k, "value": v}))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Value::from_serialize(&items))
    });
    env.add_filter(
        "hash",
        |s: String, alg: Option<String>| -> Result<String, Error> {
            use sha2::Digest;
            match alg.as_deref().unwrap_or("sha1") {
                "sha1" => Ok(hex::encode(sha1::Sha1::digest(s.as_bytes()))),
                "sha256" => Ok(hex::encode(sha2::Sha256::digest(s.as_bytes()))),
                other => Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("hash `{other}` is not supported by vesemir (sha1, sha256)"),
                )),
            }
        },
    );
    env.add_filter("mandatory", |v: Value| -> Result<Value, Error> {
        if v.is_undefined() {
            Err(Error::new(
                ErrorKind::UndefinedError,
                "mandatory variable not defined",
            ))
        } else {
            Ok(v)
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(src: &str) -> String {
        let mut env = Environment::new();
        register(&mut env);
        env.render_str(
            src,
            minijinja::context! { r => serde_json::json!({"failed": false, "changed": true}) },
        )
        .unwrap()
    }

    #[test]
    fn python_printing_and_filters() {
        let cases = [
            ("{{ true }}", "True"),
            ("{{ none }}", "None"),
            ("{{ ['a', 1] }}", "['a', 1]"),
            ("{{ {'k': 'v'} }}", "{'k': 'v'}"),
            ("{{ 'yes' | bool }}", "True"),
            ("{{ 'off' | bool }}", "False"),
            ("{{ '/a/b.txt' | basename }}", "b.txt"),
            ("{{ '/a/b.txt' | dirname }}", "/a"),
            (
                "{{ 'v1.2' | regex_replace('^v(\\\\d)', 'x\\\\1') }}",
                "x1.2",
            ),
            (
                "{{ r is succeeded }} {{ r is changed }} {{ r is skipped }}",
                "True True False",
            ),
            ("{{ {'a': 1} | to_json }}", "{\"a\": 1}"),
            ("{{ 'a b' | quote }}", "'a b'"),
        ];
        for (src, want) in cases {
            assert_eq!(render(src), want, "{src}");
        }
    }
}
