//! `get_url`, `http_check` and `wait_for`.
//!
//! `get_url` streams into a temporary file next to `dest`, hashing as it
//! goes; only a verified download is renamed into place, so a checksum
//! mismatch leaves nothing at `dest`. URLs are logged without credentials
//! or query strings (they may carry tokens).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt;
use sha2::{Digest, Sha256};

use super::{GetUrlArgs, HttpCheckArgs, ModuleOutput, TaskEnv, WaitForArgs};

/// The URL without userinfo, query or fragment, for logs.
pub(crate) fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            let had_query = u.query().is_some();
            u.set_query(None);
            u.set_fragment(None);
            let mut s = u.to_string();
            if had_query {
                s.push_str("?…");
            }
            s
        }
        Err(_) => "<invalid url>".into(),
    }
}

fn sha256_file(p: &std::path::Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(p)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

/// The HTTP client could not be built (TLS roots or the resolver failed
/// to initialise on this VM); the task fails with this message.
#[derive(Debug, thiserror::Error)]
#[error("http client: {0}")]
struct ClientError(#[from] reqwest::Error);

fn client(timeout: Duration) -> Result<reqwest::Client, ClientError> {
    Ok(reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .timeout(timeout)
        .build()?)
}

/// `get_url`: download, verify sha256, rename into place.
pub(crate) async fn get_url(a: &GetUrlArgs, env: &TaskEnv<'_>) -> ModuleOutput {
    let shown = redact_url(&a.url);
    let dest: PathBuf = if a.dest.is_dir() {
        let name = reqwest::Url::parse(&a.url)
            .ok()
            .and_then(|u| {
                u.path_segments()
                    .and_then(|mut s| s.next_back().map(str::to_string))
            })
            .filter(|n| !n.is_empty() && n != "." && n != "..");
        match name {
            Some(n) => a.dest.join(n),
            None => return ModuleOutput::failed("dest is a directory and the URL names no file"),
        }
    } else {
        a.dest.clone()
    };
    // As Ansible: an existing `dest` is kept unless `force`; with a
    // checksum, only when it matches.
    if dest.is_file() && !a.force {
        match &a.sha256 {
            None => return ModuleOutput::ok(format!("{} already exists", dest.display())),
            Some(want) if sha256_file(&dest).map(|h| &h == want).unwrap_or(false) => {
                return ModuleOutput::ok(format!("{} already present", dest.display()))
            }
            Some(_) => {}
        }
    }
    let dir = dest
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."))
        .to_path_buf();
    let mut tmp = match tempfile::Builder::new()
        .prefix(".vesemir-download-")
        .tempfile_in(&dir)
    {
        Ok(t) => t,
        Err(e) => return ModuleOutput::failed(format!("temporary file in {}: {e}", dir.display())),
    };
    let http = match client(a.timeout) {
        Ok(c) => c,
        Err(e) => return ModuleOutput::failed(e.to_string()),
    };
    env.log(format!("downloading {shown}")).await;
    let resp = match http.get(&a.url).send().await {
        Ok(r) => r,
        Err(e) => return ModuleOutput::failed(format!("GET {shown}: {}", e.without_url())),
    };
    if !resp.status().is_success() {
        return ModuleOutput::failed(format!("GET {shown}: HTTP {}", resp.status()));
    }
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => return ModuleOutput::failed(format!("GET {shown}: {}", e.without_url())),
        };
        hasher.update(&chunk);
        size += chunk.len() as u64;
        if let Err(e) = tmp.write_all(&chunk) {
            return ModuleOutput::failed(format!("writing {}: {e}", tmp.path().display()));
        }
    }
    let got = hex::encode(hasher.finalize());
    if let Some(want) = &a.sha256 {
        if &got != want {
            // `tmp` is deleted on drop: nothing reaches dest.
            return ModuleOutput::failed(format!(
                "checksum mismatch for {shown}: expected sha256 {want}, got {got}"
            ));
        }
    }
    if let Err(e) = tmp.as_file().sync_all() {
        return ModuleOutput::failed(format!("fsync: {e}"));
    }
    if dest.is_file() && sha256_file(&dest).map(|h| h == got).unwrap_or(false) {
        return ModuleOutput::ok(format!("{} is up to date", dest.display()));
    }
    let mode = a.mode.unwrap_or(0o644);
    if let Err(e) = std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(mode)) {
        return ModuleOutput::failed(format!("chmod: {e}"));
    }
    if let Err(e) = tmp.persist(&dest) {
        return ModuleOutput::failed(format!("renaming into {}: {}", dest.display(), e.error));
    }
    env.log(format!(
        "{size} bytes to {} (sha256 {got}{})",
        dest.display(),
        if a.sha256.is_some() { ", verified" } else { "" }
    ))
    .await;
    ModuleOutput::changed(format!("downloaded {} ({size} bytes)", dest.display()))
}

/// `uri`: one request; fails unless the status is one of `status_code`.
/// Registers `status`, `url`, `json` (for a JSON answer), `content` (with
/// `return_content`), as Ansible does.
pub(crate) async fn uri(a: &super::UriArgs, env: &TaskEnv<'_>) -> ModuleOutput {
    let shown = redact_url(&a.url);
    let http = match client(a.timeout) {
        Ok(c) => c,
        Err(e) => return ModuleOutput::failed(e.to_string()),
    };
    let method = match reqwest::Method::from_bytes(a.method.as_bytes()) {
        Ok(m) => m,
        Err(_) => {
            return ModuleOutput::failed(format!("`method` {} is not an HTTP method", a.method))
        }
    };
    let mut req = http.request(method, &a.url);
    for (k, v) in &a.headers {
        req = req.header(k, v);
    }
    if let Some(b) = &a.body {
        if a.json_body {
            req = req.header("content-type", "application/json");
        }
        req = req.body(b.clone());
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            let mut o = ModuleOutput::failed(format!(
                "Status code was -1 and not {:?}: Request failed: {}",
                a.status_code,
                e.without_url()
            ));
            o.extra.insert("status".into(), serde_json::Value::from(-1));
            return o;
        }
    };
    let status = resp.status().as_u16();
    let is_json = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"));
    // Bounded: a health or API answer, not a download.
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) if body.len() + c.len() <= 4 << 20 => body.extend_from_slice(&c),
            Ok(_) => return ModuleOutput::failed(format!("{shown}: answer larger than 4 MiB")),
            Err(e) => return ModuleOutput::failed(format!("{shown}: {}", e.without_url())),
        }
    }
    let text = String::from_utf8_lossy(&body).into_owned();
    let mut o = if a.status_code.contains(&status) {
        ModuleOutput::ok(format!("OK ({} bytes)", body.len()))
    } else {
        ModuleOutput::failed(format!(
            "Status code was {status} and not {:?}",
            a.status_code
        ))
    };
    env.log(format!("{} {shown}: HTTP {status}", a.method))
        .await;
    o.extra
        .insert("status".into(), serde_json::Value::from(status));
    o.extra
        .insert("url".into(), serde_json::Value::String(a.url.clone()));
    if is_json {
        if let Ok(j) = serde_json::from_str::<serde_json::Value>(&text) {
            o.extra.insert("json".into(), j);
        }
    }
    if a.return_content {
        o.extra
            .insert("content".into(), serde_json::Value::String(text));
    }
    o
}

/// `http_check`: GET until the status (and body) match, or retries run out.
pub(crate) async fn http_check(a: &HttpCheckArgs, env: &TaskEnv<'_>) -> ModuleOutput {
    let shown = redact_url(&a.url);
    let http = match client(a.timeout) {
        Ok(c) => c,
        Err(e) => return ModuleOutput::failed(e.to_string()),
    };
    let attempts = a.retries.max(1);
    let mut last = String::new();
    for attempt in 1..=attempts {
        match http.get(&a.url).send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let body = resp.text().await.unwrap_or_default();
                let body_ok = a
                    .body_contains
                    .as_ref()
                    .is_none_or(|needle| body.contains(needle.as_str()));
                if status == a.status && body_ok {
                    return ModuleOutput::ok(format!("{shown}: HTTP {status}"));
                }
                last = if status != a.status {
                    format!("HTTP {status}, expected {}", a.status)
                } else {
                    "body does not contain the expected text".into()
                };
            }
            Err(e) => last = e.without_url().to_string(),
        }
        env.log(format!("{shown}: attempt {attempt}/{attempts}: {last}"))
            .await;
        if attempt < attempts {
            tokio::time::sleep(a.delay).await;
        }
    }
    ModuleOutput::failed(format!("{shown}: {last} (after {attempts} attempts)"))
}

/// `wait_for`: a TCP port becomes open (or closed) within the timeout.
pub(crate) async fn wait_for(a: &WaitForArgs, env: &TaskEnv<'_>) -> ModuleOutput {
    tokio::time::sleep(a.delay).await;
    let start = Instant::now();
    let addr = format!("{}:{}", a.host, a.port);
    let want = if a.open { "open" } else { "closed" };
    loop {
        let open = matches!(
            tokio::time::timeout(
                Duration::from_secs(1),
                tokio::net::TcpStream::connect(&addr)
            )
            .await,
            Ok(Ok(_))
        );
        if open == a.open {
            return ModuleOutput::ok(format!(
                "{addr} is {want} after {}ms",
                start.elapsed().as_millis()
            ));
        }
        if start.elapsed() >= a.timeout {
            env.log(format!("{addr} still not {want}")).await;
            return ModuleOutput::failed(format!(
                "{addr} not {want} within {}",
                humantime::format_duration(a.timeout)
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("https://u:p@h.example/a.tgz?token=s3cret#x"),
            "https://h.example/a.tgz?…"
        );
        assert_eq!(redact_url("http://h/a"), "http://h/a");
    }
}
