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

/// The schema `doc` gives for the JSON body of `method path` answering
/// `status`, made self-contained: `#/components/...` `$ref`s resolve
/// against the document's own components.
fn response_schema(doc: &Value, path: &str, method: &str, status: u16) -> Result<Value> {
    let responses = &doc["paths"][path][method]["responses"];
    let content = &responses[status.to_string()]["content"];
    let schema = content["application/json"]["schema"]
        .as_object()
        .or_else(|| content["application/x-ndjson"]["schema"].as_object())
        .with_context(|| {
            format!(
                "{method} {path}: status {status} is not documented with a JSON body (documented: {:?})",
                responses.as_object().map(|r| r.keys().collect::<Vec<_>>())
            )
        })?;
    let mut schema = Value::Object(schema.clone());
    schema["components"] = doc["components"].clone();
    Ok(schema)
}

/// Every way `body` breaks `schema`, one line each with where.
fn violations(schema: &Value, body: &Value) -> Result<Vec<String>> {
    let validator = jsonschema::draft202012::new(schema)
        .map_err(|e| anyhow!("the document's schema does not compile: {e}"))?;
    Ok(validator
        .iter_errors(body)
        .map(|e| format!("at {:?}: {e}", e.instance_path().to_string()))
        .collect())
}

/// `body` matches the schema `doc` gives for `method path` and `status`.
fn check_body(doc: &Value, path: &str, method: &str, status: u16, body: &Value) -> Result<()> {
    let schema = response_schema(doc, path, method, status)?;
    let bad = violations(&schema, body)?;
    if !bad.is_empty() {
        bail!(
            "{method} {path} {status}: the body does not match the document:\n  {}\nbody: {body:#}",
            bad.join("\n  ")
        );
    }
    Ok(())
}

/// `value` serialized validates against `components.schemas.NAME`.
fn check_type<T: serde::Serialize>(doc: &Value, name: &str, value: &T) -> Result<()> {
    let mut schema = serde_json::json!({"$ref": format!("#/components/schemas/{name}")});
    schema["components"] = doc["components"].clone();
    let body = serde_json::to_value(value)?;
    let bad = violations(&schema, &body)?;
    if !bad.is_empty() {
        bail!(
            "{name}: serde output does not match its schema:\n  {}\nvalue: {body:#}",
            bad.join("\n  ")
        );
    }
    Ok(())
}

/// The generated document itself, without a controller.
fn generated() -> Value {
    vesemir_controller::http::openapi::document().clone()
}

/// Each api type's serde output for a typical value validates against the
/// schema generated for it, and a value that breaks the schema is caught
/// (so the check can fail).
#[test]
fn api_types_serialize_to_their_own_schemas() -> Result<()> {
    use vesemir_api::*;
    let doc = generated();
    let req: DeployRequest = serde_json::from_value(serde_json::json!({
        "application": "pay", "environment": "prod", "team": "t",
        "selector": {"tags": ["app:pay"], "attributes": {"cloud.region": "eu"}},
        "haproxy": {"backend": "pay", "selector": {"recipes": ["haproxy"]}, "weights": [10, 50, 100]},
        "concurrency": "25%", "vars": {"a": "b"},
        "changeset": {"version": "1.2", "url": "https://x/a.tgz", "sha256": "ab".repeat(32)},
        "canary": {"hosts": 1}, "notify": [{"url": "https://hooks.example.com/x", "events": ["started"]}],
    }))?;
    check_type(&doc, "DeployRequest", &req)?;
    check_type(&doc, "Concurrency", &Concurrency::Count(3))?;
    check_type(&doc, "Concurrency", &Concurrency::Percent("25%".into()))?;
    check_type(
        &doc,
        "RollbackRequest",
        &RollbackRequest {
            application: "pay".into(),
            environment: "prod".into(),
        },
    )?;
    check_type(
        &doc,
        "ErrorBody",
        &ErrorBody::new("not_found", "no such thing"),
    )?;
    check_type(&doc, "Selector", &Selector::default())?;
    check_type(&doc, "CreateToken", &CreateToken::default())?;
    check_type(
        &doc,
        "CreatedToken",
        &CreatedToken {
            id: "t1".into(),
            token: "secret".into(),
            expires_at: "2026-01-01T00:00:00Z".into(),
            uses: 1,
        },
    )?;
    check_type(&doc, "AgentState", &AgentState::Connected)?;
    check_type(
        &doc,
        "JobOutcome",
        &JobOutcome {
            job_id: "j".into(),
            status: "succeeded".into(),
            stats: JobStats::default(),
            error: None,
            output: Some(serde_json::json!({"k": [1, 2]})),
        },
    )?;
    check_type(
        &doc,
        "StreamEvent",
        &StreamEvent::new(
            "log",
            serde_json::json!({"seq": 1, "host": null, "line": "x"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        ),
    )?;
    check_type(
        &doc,
        "Resolved",
        &Resolved {
            query: "tags:app\\:pay".into(),
            hosts: vec![ResolvedHost {
                name: "web-1".into(),
                address: "10.0.0.1".into(),
                fqdn: None,
                hostname: Some("web-1".into()),
                tags: vec!["app:pay".into()],
                roles: vec![],
                environment: None,
                agent: "connected".into(),
            }],
        },
    )?;
    check_type(&doc, "HostSummary", &HostSummary::default())?;
    check_type(&doc, "PlaybookCoverage", &PlaybookCoverage::default())?;

    // The check can fail: a wrong type and a missing required field.
    let mut bad = serde_json::to_value(ErrorBody::new("x", "y"))?;
    bad["error"]["code"] = serde_json::json!(7);
    assert!(check_type(&doc, "ErrorBody", &bad).is_err());
    assert!(check_type(&doc, "JobOutcome", &serde_json::json!({"job_id": "j"})).is_err());
    assert!(check_type(&doc, "DeployRequest", &serde_json::json!({"application": "a", "environment": "e", "team": "t", "selector": {}, "typo": 1})).is_err());
    Ok(())
}

/// One request of [`responses_match_the_document`]: what to send, the
/// documented path it is an instance of, and the statuses it may get.
struct Call {
    method: &'static str,
    /// The path sent (with ids filled in).
    url: String,
    /// The path as documented (`{id}` placeholders).
    doc_path: &'static str,
    body: Option<Value>,
    token: bool,
    expect: &'static [u16],
}

fn call(
    method: &'static str,
    url: impl Into<String>,
    doc_path: &'static str,
    body: Option<Value>,
    expect: &'static [u16],
) -> Call {
    Call {
        method,
        url: url.into(),
        doc_path,
        body,
        token: true,
        expect,
    }
}

/// Sends `c`; checks the status is expected and the body (each line for
/// NDJSON) matches the document. Returns the status and the parsed body.
async fn send(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    doc: &Value,
    c: &Call,
) -> Result<(u16, Value)> {
    let method = reqwest::Method::from_bytes(c.method.to_uppercase().as_bytes())?;
    let mut req = client
        .request(method, format!("{base}{}", c.url))
        .timeout(std::time::Duration::from_secs(20));
    if c.token {
        req = req.bearer_auth(token);
    }
    if let Some(b) = &c.body {
        req = req.json(b);
    }
    let r = req.send().await?;
    let status = r.status().as_u16();
    let ctype = r
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = r.text().await?;
    let what = format!("{} {}", c.method, c.url);
    assert!(
        c.expect.contains(&status),
        "{what}: status {status}, expected one of {:?}: {text}",
        c.expect
    );
    let body = if ctype.starts_with("application/x-ndjson") {
        let lines: Vec<Value> = text
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()
            .with_context(|| format!("{what}: NDJSON line is not JSON: {text}"))?;
        for line in &lines {
            check_body(doc, c.doc_path, c.method, status, line).context(what.clone())?;
        }
        Value::Array(lines)
    } else {
        assert!(
            ctype.starts_with("application/json"),
            "{what}: content-type {ctype:?}: {text}"
        );
        let body: Value =
            serde_json::from_str(&text).with_context(|| format!("{what}: not JSON: {text}"))?;
        check_body(doc, c.doc_path, c.method, status, &body).context(what.clone())?;
        body
    };
    Ok((status, body))
}

/// Real requests to a real controller (with a static inventory and one
/// connected agent): every answer, success or error, has the body shape the
/// served document gives for that operation and status.
#[test]
fn responses_match_the_document() -> Result<()> {
    let mut c = Controller::init(ControllerOptions::default())?;
    let inv = c.root.path().join("inventory.toml");
    std::fs::write(
        &inv,
        "[[hosts]]\nname = \"web-1\"\naddress = \"127.0.0.1\"\ntags = [\"app:web\"]\nenvironment = \"prod\"\n\n\
         [[hosts]]\nname = \"db-1\"\naddress = \"127.0.0.2\"\ntags = [\"app:db\"]\n",
    )?;
    let cfg = c.data_dir.join("controller.toml");
    let t = std::fs::read_to_string(&cfg)?;
    std::fs::write(
        &cfg,
        format!("inventory = {:?}\n{t}", inv.display().to_string()),
    )?;
    c.start()?;
    let enroll = c.enrollment_token(1)?;
    let _agent = c.enroll_and_run("web-1", &enroll)?;
    vesemir_testkit::fleet::wait_for(
        "web-1 connected",
        std::time::Duration::from_secs(30),
        || (c.agent_state("web-1").as_deref() == Some("connected")).then_some(()),
    )?;
    let (_, _, text) = fetch_openapi(&c.url)?;
    let doc: Value = serde_json::from_str(&text)?;
    assert_eq!(doc, generated(), "the served document is the generated one");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = reqwest::Client::new();
        let (base, token) = (c.url.as_str(), c.token.as_str());
        let deploy = |extra: Value| {
            let mut b = serde_json::json!({
                "application": "db", "environment": "prod", "team": "t",
                "selector": {"tags": ["app:db"]},
                "changeset": {"version": "1", "url": "https://example.com/a.tgz", "sha256": "ab".repeat(32)},
            });
            for (k, v) in extra.as_object().cloned().unwrap_or_default() {
                b[k] = v;
            }
            b
        };
        let mut calls = vec![
            call(
                "post",
                "/v1/tokens",
                "/v1/tokens",
                Some(serde_json::json!({})),
                &[201],
            ),
            call(
                "post",
                "/v1/tokens",
                "/v1/tokens",
                Some(serde_json::json!({"uses": "many"})),
                &[422],
            ),
            call("get", "/v1/agents", "/v1/agents", None, &[200]),
            call("get", "/v1/agents/web-1", "/v1/agents/{name}", None, &[200]),
            call(
                "get",
                "/v1/agents/nobody",
                "/v1/agents/{name}",
                None,
                &[404],
            ),
            call(
                "delete",
                "/v1/agents/web-1",
                "/v1/agents/{name}",
                None,
                &[409],
            ),
            call(
                "get",
                "/v1/agents/web-1/jobs/no-such-job",
                "/v1/agents/{name}/jobs/{id}",
                None,
                &[404],
            ),
            call(
                "post",
                "/v1/inventory/resolve",
                "/v1/inventory/resolve",
                Some(serde_json::json!({"tags": ["app:web"]})),
                &[200],
            ),
            call(
                "post",
                "/v1/inventory/resolve",
                "/v1/inventory/resolve",
                Some(serde_json::json!({})),
                &[422],
            ),
            call(
                "post",
                "/v1/deployments",
                "/v1/deployments",
                Some(deploy(
                    serde_json::json!({"selector": {"tags": ["app:web"]}, "dry_run": true}),
                )),
                &[200],
            ),
            call(
                "post",
                "/v1/deployments",
                "/v1/deployments",
                Some(deploy(serde_json::json!({"concurrency": 0}))),
                &[422],
            ),
            call(
                "post",
                "/v1/deployments",
                "/v1/deployments",
                Some(deploy(serde_json::json!({"canary": {"hosts": 1}}))),
                &[422],
            ),
            call(
                "get",
                "/v1/deployments?limit=0",
                "/v1/deployments",
                None,
                &[422],
            ),
            call(
                "get",
                "/v1/deployments/no-such-id",
                "/v1/deployments/{id}",
                None,
                &[404],
            ),
            call(
                "post",
                "/v1/deployments/no-such-id/cancel",
                "/v1/deployments/{id}/cancel",
                None,
                &[404],
            ),
            call(
                "get",
                "/v1/deployments/no-such-id/logs",
                "/v1/deployments/{id}/logs",
                None,
                &[404],
            ),
            call(
                "post",
                "/v1/deployments/rollback",
                "/v1/deployments/rollback",
                Some(serde_json::json!({"application": "db", "environment": "prod"})),
                &[404],
            ),
        ];
        let mut anonymous = call("get", "/v1/agents", "/v1/agents", None, &[401]);
        anonymous.token = false;
        calls.push(anonymous);
        for c in &calls {
            send(&client, base, token, &doc, c).await?;
        }

        // A real deployment (db-1 has no agent, so it fails quickly): the
        // accepted answer, the list, the detail, its log and a cancel.
        let (_, accepted) = send(
            &client,
            base,
            token,
            &doc,
            &call(
                "post",
                "/v1/deployments",
                "/v1/deployments",
                Some(deploy(serde_json::json!({}))),
                &[202],
            ),
        )
        .await?;
        let id = accepted["id"]
            .as_str()
            .context("deployment id")?
            .to_string();
        let (_, list) = send(
            &client,
            base,
            token,
            &doc,
            &call("get", "/v1/deployments", "/v1/deployments", None, &[200]),
        )
        .await?;
        assert_eq!(list["deployments"][0]["id"], id.as_str(), "{list:#}");
        send(
            &client,
            base,
            token,
            &doc,
            &call(
                "post",
                format!("/v1/deployments/{id}/cancel"),
                "/v1/deployments/{id}/cancel",
                None,
                &[202, 409],
            ),
        )
        .await?;
        let (_, logs) = send(
            &client,
            base,
            token,
            &doc,
            &call(
                "get",
                format!("/v1/deployments/{id}/logs?follow=true"),
                "/v1/deployments/{id}/logs",
                None,
                &[200],
            ),
        )
        .await?;
        assert!(
            logs.as_array().is_some_and(|l| !l.is_empty()),
            "a followed log ends with a line: {logs:#}"
        );
        let (_, detail) = send(
            &client,
            base,
            token,
            &doc,
            &call(
                "get",
                format!("/v1/deployments/{id}"),
                "/v1/deployments/{id}",
                None,
                &[200],
            ),
        )
        .await?;
        assert!(
            detail["hosts"].is_array() && detail["request"].is_object(),
            "{detail:#}"
        );

        // Last, as it ends the agent: revoke, then forget.
        send(
            &client,
            base,
            token,
            &doc,
            &call(
                "post",
                "/v1/agents/web-1/revoke",
                "/v1/agents/{name}/revoke",
                None,
                &[200],
            ),
        )
        .await?;
        send(
            &client,
            base,
            token,
            &doc,
            &call(
                "delete",
                "/v1/agents/web-1",
                "/v1/agents/{name}",
                None,
                &[200],
            ),
        )
        .await?;
        anyhow::Ok(())
    })
}
