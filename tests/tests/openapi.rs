//! `/v1/openapi.json` documents the whole HTTP API: a real controller serves
//! it without a token, and every route registered in controller/src/http/mod.rs
//! (read from the source at test time) is in `paths` with its method, and
//! every documented operation is a real route. Adding a route without
//! documenting it fails here.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::collections::BTreeSet;
use vesemir_testkit::fleet::{repo, Controller, ControllerOptions};

/// HTTP method routers axum offers (`axum::routing::{get, post, …}`).
const METHODS: &[&str] = &[
    "get", "post", "put", "delete", "patch", "head", "options", "trace",
];

/// The operations open without a token.
const OPEN: &[&str] = &["/healthz", "/readyz", "/metrics", "/v1/openapi.json"];

/// (path, lowercase method) pairs registered with `.route("PATH", METHOD(…)…)`
/// in Rust source: multi-line calls, chained `.get(…)`/`.post(…)` and
/// path-qualified method routers are understood; the handler arguments are
/// skipped whatever they contain.
fn routes(src: &str) -> Result<BTreeSet<(String, String)>> {
    let src = &strip_line_comments(src);
    let mut out = BTreeSet::new();
    let b = src.as_bytes();
    let mut from = 0;
    while let Some(i) = src[from..].find(".route(") {
        let start = from + i + ".route(".len();
        let mut p = skip_ws(b, start);
        if b.get(p) != Some(&b'"') {
            bail!("`.route(` at byte {start} does not start with a string literal path");
        }
        let (path, after) = string_literal(src, p)?;
        p = skip_ws(b, after);
        if b.get(p) != Some(&b',') {
            bail!("`.route({path:?}` is not followed by a method router");
        }
        let end =
            closing_paren(b, p + 1).with_context(|| format!("unbalanced `.route({path:?}, …`"))?;
        let methods = top_level_methods(&src[p + 1..end]);
        if methods.is_empty() {
            bail!(
                "`.route({path:?}, {})`: no get/post/… method router found; extend this parser",
                src[p + 1..end].trim()
            );
        }
        for m in methods {
            out.insert((path.clone(), m));
        }
        from = end;
    }
    Ok(out)
}

/// The source without `//` comments (doc comments included); string and
/// char literals are kept as they are.
fn strip_line_comments(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut p = 0;
    while p < b.len() {
        match b[p] {
            b'"' => {
                let s = p;
                p += 1;
                while p < b.len() && b[p] != b'"' {
                    p += if b[p] == b'\\' { 2 } else { 1 };
                }
                p += 1;
                out.extend_from_slice(&b[s..p.min(b.len())]);
            }
            b'\'' if b.get(p + 2) == Some(&b'\'') => {
                out.extend_from_slice(&b[p..p + 3]);
                p += 3;
            }
            b'\'' if b.get(p + 1) == Some(&b'\\') => {
                let s = p;
                p += 2;
                while p < b.len() && b[p] != b'\'' {
                    p += 1;
                }
                p += 1;
                out.extend_from_slice(&b[s..p.min(b.len())]);
            }
            b'/' if b.get(p + 1) == Some(&b'/') => {
                while p < b.len() && b[p] != b'\n' {
                    p += 1;
                }
            }
            c => {
                out.push(c);
                p += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn skip_ws(b: &[u8], mut p: usize) -> usize {
    while p < b.len() && b[p].is_ascii_whitespace() {
        p += 1;
    }
    p
}

/// The plain string literal starting at `p` (a `"`) and the index after it.
fn string_literal(src: &str, p: usize) -> Result<(String, usize)> {
    let b = src.as_bytes();
    let mut q = p + 1;
    while q < b.len() {
        match b[q] {
            b'\\' => q += 2,
            b'"' => return Ok((src[p + 1..q].to_string(), q + 1)),
            _ => q += 1,
        }
    }
    Err(anyhow!("unterminated string literal at byte {p}"))
}

/// Index of the `)` closing a `(` opened just before `p`; brackets, braces
/// and string literals in between are skipped.
fn closing_paren(b: &[u8], mut p: usize) -> Option<usize> {
    let mut depth = 0usize;
    while p < b.len() {
        match b[p] {
            b'"' => {
                p += 1;
                while p < b.len() && b[p] != b'"' {
                    p += if b[p] == b'\\' { 2 } else { 1 };
                }
            }
            b'(' | b'[' | b'{' => depth += 1,
            b')' if depth == 0 => return Some(p),
            b')' | b']' | b'}' => depth = depth.checked_sub(1)?,
            _ => {}
        }
        p += 1;
    }
    None
}

/// Method routers called at the top level of a method-router expression
/// (`post(h).get(h2)`, `axum::routing::get(h)`), lowercase.
fn top_level_methods(expr: &str) -> Vec<String> {
    let b = expr.as_bytes();
    let mut found = Vec::new();
    let mut p = 0;
    while p < b.len() {
        let c = b[p];
        if c == b'(' || c == b'[' || c == b'{' || c == b'"' {
            // Skip the whole group: handlers and closures are not methods.
            let end = if c == b'"' {
                string_literal(expr, p).map(|(_, e)| e - 1).ok()
            } else {
                closing_group(b, p)
            };
            p = end.map_or(b.len(), |e| e + 1);
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' {
            let s = p;
            while p < b.len() && (b[p].is_ascii_alphanumeric() || b[p] == b'_') {
                p += 1;
            }
            let ident = &expr[s..p];
            if b.get(p) == Some(&b'(') && METHODS.contains(&ident) {
                found.push(ident.to_string());
            }
            continue;
        }
        p += 1;
    }
    found
}

/// Index of the bracket closing the one at `p`.
fn closing_group(b: &[u8], p: usize) -> Option<usize> {
    let (open, close) = match b[p] {
        b'(' => (b'(', b')'),
        b'[' => (b'[', b']'),
        _ => (b'{', b'}'),
    };
    let mut depth = 0usize;
    let mut q = p;
    while q < b.len() {
        match b[q] {
            b'"' => {
                q += 1;
                while q < b.len() && b[q] != b'"' {
                    q += if b[q] == b'\\' { 2 } else { 1 };
                }
            }
            x if x == open => depth += 1,
            x if x == close => {
                depth -= 1;
                if depth == 0 {
                    return Some(q);
                }
            }
            _ => {}
        }
        q += 1;
    }
    None
}

/// (path, method) pairs documented in an OpenAPI document.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    if let Some(paths) = doc["paths"].as_object() {
        for (path, item) in paths {
            for m in METHODS {
                if item.get(*m).is_some() {
                    out.insert((path.clone(), m.to_string()));
                }
            }
        }
    }
    out
}

/// Every `$ref` in `v` with its JSON location.
fn refs(v: &Value, at: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "$ref" {
                    out.push((at.to_string(), x.as_str().unwrap_or("").to_string()));
                } else {
                    refs(x, &format!("{at}/{k}"), out);
                }
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                refs(x, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

fn fetch_openapi(url: &str) -> Result<(u16, String, String)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let r = reqwest::Client::new()
            .get(format!("{url}/v1/openapi.json"))
            .timeout(std::time::Duration::from_secs(10))
            .send()
            .await?;
        let status = r.status().as_u16();
        let ctype = r
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        Ok((status, ctype, r.text().await?))
    })
}

#[test]
fn openapi_documents_every_route() -> Result<()> {
    let mut c = Controller::init(ControllerOptions::default())?;
    c.start()?;
    // No token: the document is open.
    let (status, ctype, body) = fetch_openapi(&c.url)?;
    assert_eq!(status, 200, "GET /v1/openapi.json without a token: {body}");
    assert!(
        ctype.starts_with("application/json"),
        "content-type {ctype}"
    );
    let doc: Value = serde_json::from_str(&body).context("openapi.json is not JSON")?;
    let version = doc["openapi"].as_str().unwrap_or_default();
    assert!(version.starts_with("3."), "openapi version {version:?}");

    let src = std::fs::read_to_string(repo().join("controller/src/http/mod.rs"))?;
    assert!(
        !src.contains(".nest(") && !src.contains(".route_service("),
        "api.rs nests routers or services: teach this test to see their routes"
    );
    let registered = routes(&src)?;
    assert!(
        registered.len() >= 15,
        "only {} routes parsed from api.rs: {registered:?}",
        registered.len()
    );
    let docs = documented(&doc);
    let missing: Vec<_> = registered.difference(&docs).collect();
    assert!(
        missing.is_empty(),
        "routes in controller/src/http/mod.rs missing from controller/src/openapi.json: {missing:?}"
    );
    let stale: Vec<_> = docs.difference(&registered).collect();
    assert!(
        stale.is_empty(),
        "operations in openapi.json that the router does not have: {stale:?}"
    );

    for (path, method) in &docs {
        let op = &doc["paths"][path][method];
        assert!(
            op["responses"].as_object().is_some_and(|r| !r.is_empty()),
            "{method} {path}: no responses"
        );
        // Every `{param}` of the path is a documented path parameter.
        for seg in path.split('/') {
            if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                let params = op["parameters"].as_array().cloned().unwrap_or_default();
                assert!(
                    params
                        .iter()
                        .any(|p| p["in"] == "path" && p["name"] == name && p["required"] == true),
                    "{method} {path}: path parameter {name} not documented"
                );
            }
        }
        let open = OPEN.contains(&path.as_str());
        let security_is_empty = op["security"].as_array().is_some_and(|s| s.is_empty());
        assert_eq!(
            open, security_is_empty,
            "{method} {path}: `security: []` exactly on the open endpoints"
        );
    }
    assert!(
        doc["security"].as_array().is_some_and(|s| !s.is_empty()),
        "bearer auth is the global default"
    );

    let schemas = doc["components"]["schemas"]
        .as_object()
        .context("components.schemas")?;
    let mut all = Vec::new();
    refs(&doc, "#", &mut all);
    assert!(!all.is_empty());
    for (at, r) in &all {
        let name = r
            .strip_prefix("#/components/schemas/")
            .with_context(|| format!("{at}: $ref {r:?} is not a #/components/schemas/ entry"))?;
        assert!(
            schemas.contains_key(name),
            "{at}: $ref {r:?} names no schema"
        );
    }
    Ok(())
}

/// The parser itself: multi-line and chained routes, closures with braces
/// and strings, and an undocumented route is reported.
#[test]
fn route_parser_sees_every_shape() -> Result<()> {
    let src = r#"
        Router::new()
            .route("/a", post(create))
            .route(
                "/b/{id}",
                post(crate::x::create).get(crate::x::list),
            )
            .route("/c", get(|| async { "ok (\"x\")\n" }))
            // .route("/commented", get(nothing)) is not a route
            .route("/e", get(h)) // trailing comment with ( and "
            .route("/d", axum::routing::delete(h).patch(other(get_thing())))
    "#;
    let got = routes(src)?;
    let want: BTreeSet<(String, String)> = [
        ("/a", "post"),
        ("/b/{id}", "post"),
        ("/b/{id}", "get"),
        ("/c", "get"),
        ("/e", "get"),
        ("/d", "delete"),
        ("/d", "patch"),
    ]
    .into_iter()
    .map(|(p, m)| (p.to_string(), m.to_string()))
    .collect();
    assert_eq!(got, want);
    let doc = serde_json::json!({"paths": {"/a": {"post": {}}, "/b/{id}": {"get": {}}}});
    let docs = documented(&doc);
    let missing: Vec<_> = got.difference(&docs).cloned().collect();
    assert!(missing.contains(&("/b/{id}".to_string(), "post".to_string())));
    assert!(routes(r#".route("/x", any(h))"#).is_err(), "unknown router");
    Ok(())
}
