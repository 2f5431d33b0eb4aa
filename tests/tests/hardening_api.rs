//! API edges from the red-team pass, against a real controller: query-string
//! errors in the JSON error shape, a negative offset refused, and unknown
//! paths authenticated before they are answered 404.

use anyhow::Result;
use vesemir_testkit::fleet::{Controller, ControllerOptions};

fn get(c: &Controller, path: &str, token: Option<&str>) -> Result<(u16, String, String)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut rb = reqwest::Client::new()
            .get(format!("{}{path}", c.url))
            .timeout(std::time::Duration::from_secs(10));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        let r = rb.send().await?;
        let status = r.status().as_u16();
        let ctype = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        Ok((status, ctype, r.text().await?))
    })
}

fn error_code(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("not the JSON error shape: {body}"))
}

#[test]
fn query_errors_negative_offsets_and_unknown_paths() -> Result<()> {
    let mut c = Controller::init(ControllerOptions::default())?;
    c.start()?;
    let token = c.token.clone();

    for path in [
        "/v1/deployments?limit=abc",
        "/v1/deployments?offset=x",
        "/v1/deployments?offset=-5",
    ] {
        let (status, ctype, body) = get(&c, path, Some(&token))?;
        assert_eq!(status, 422, "{path}: {body}");
        assert!(ctype.starts_with("application/json"), "{path}: {ctype}");
        assert_eq!(error_code(&body), "invalid_request", "{path}");
    }
    let (status, _, body) = get(&c, "/v1/deployments?offset=-5", Some(&token))?;
    assert!(body.contains("offset"), "{status} {body}");
    let (status, _, body) = get(&c, "/v1/deployments?offset=0", Some(&token))?;
    assert_eq!(status, 200, "{body}");

    for path in ["/v1/nope", "/v1/agents/x/nope", "/nope"] {
        let (status, _, body) = get(&c, path, None)?;
        assert_eq!(status, 401, "{path} without a token: {body}");
        assert_eq!(error_code(&body), "unauthorized");
        let (status, _, body) = get(&c, path, Some("wrong"))?;
        assert_eq!(status, 401, "{path} with a bad token: {body}");
        let (status, _, body) = get(&c, path, Some(&token))?;
        assert_eq!(status, 404, "{path} with the token: {body}");
        assert_eq!(error_code(&body), "not_found");
    }
    // Still open without a token.
    for path in ["/healthz", "/readyz", "/metrics", "/v1/openapi.json"] {
        let (status, _, _) = get(&c, path, None)?;
        assert_eq!(status, 200, "{path}");
    }
    Ok(())
}
