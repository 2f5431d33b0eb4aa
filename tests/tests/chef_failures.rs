//! What a resolve does when the Chef server misbehaves: every failure is an
//! error that says what to check, within the configured timeout, never a hang.
//! Retries happen only for connection errors and 5xx.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use vesemir_controller::inventory::chef::node_document;
use vesemir_controller::inventory::{
    ChefClient, ChefConfig, ChefError, ChefInventory, InventoryError, Selector, SignVersion,
    SigningKey,
};
use vesemir_testkit::goiardi::{wait_indexed, Goiardi};

const FIXED_KEY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/chef/fixed-key.pem");

fn web() -> Selector {
    Selector {
        roles: vec!["web".into()],
        ..Default::default()
    }
}

fn chef_err(r: Result<impl std::fmt::Debug, InventoryError>) -> ChefError {
    match r {
        Err(InventoryError::Chef(e)) => e,
        other => panic!("expected a Chef error, got {other:?}"),
    }
}

#[tokio::test]
async fn goiardi_stopped_midway_fails_within_timeout() -> Result<()> {
    let mut g = Goiardi::start().await?;
    let mut cfg = g.admin_config(SignVersion::V1_3);
    cfg.timeout = Duration::from_millis(1500);
    cfg.retries = 3;
    let client = ChefClient::new(&cfg)?;
    let node = node_document(
        "web-1",
        "_default",
        &["role[web]".into()],
        json!({}),
        json!({}),
    );
    client.upsert_node(&node).await?;
    wait_indexed(&client, "role:web", 1, Duration::from_secs(10)).await?;
    let inv = ChefInventory::from_client(client);
    assert_eq!(inv.resolve(&web()).await?.hosts.len(), 1);

    // Frozen (SIGSTOP): the kernel accepts connections, nobody answers.
    g.pause()?;
    let started = Instant::now();
    let err = chef_err(inv.resolve(&web()).await);
    let took = started.elapsed();
    assert!(matches!(err, ChefError::Timeout { .. }), "{err:?}");
    assert!(took < cfg.timeout + Duration::from_millis(500), "{took:?}");
    assert!(err.to_string().contains("did not answer within"), "{err}");

    // Gone (SIGTERM): connection refused, retried, then a clear error.
    g.stop();
    let started = Instant::now();
    let err = chef_err(inv.resolve(&web()).await);
    let took = started.elapsed();
    assert!(took < cfg.timeout + Duration::from_millis(500), "{took:?}");
    match &err {
        ChefError::Unreachable { attempts, .. } => assert_eq!(*attempts, 4, "{err}"),
        // Backoff may eat the budget before the last attempt: still bounded.
        ChefError::Timeout { .. } => {}
        other => panic!("expected Unreachable, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn organizations_prefix_on_goiardi_is_not_json() -> Result<()> {
    let g = Goiardi::start().await?;
    let mut cfg = g.admin_config(SignVersion::V1_3);
    cfg.server_url = format!("{}/organizations/acme", g.url());
    let inv = ChefInventory::new(&cfg)?;
    let err = chef_err(inv.resolve(&web()).await);
    let ChefError::NotJson { url, status, .. } = &err else {
        panic!("expected NotJson, got {err:?}");
    };
    assert_eq!(*status, 200);
    // The prefix was kept (and signed: goiardi accepted the signature).
    assert!(url.contains("/organizations/acme/search/node"), "{url}");
    assert!(err.to_string().contains("server_url"), "{err}");
    Ok(())
}

/// A tiny HTTP server answering every request with `status` and `body`,
/// counting requests.
async fn canned(status: u16, body: &'static str) -> Result<(String, Arc<AtomicUsize>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                // Read the head and whatever body fits; we answer regardless.
                let mut buf = vec![0u8; 64 * 1024];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let reply = format!(
                    "HTTP/1.1 {status} Canned\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(reply.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    Ok((url, hits))
}

fn client_for(url: &str, retries: u32) -> Result<ChefClient> {
    let mut cfg = ChefConfig::new(url, "vesemir", FIXED_KEY);
    cfg.retries = retries;
    cfg.timeout = Duration::from_secs(5);
    Ok(ChefClient::with_key(
        &cfg,
        SigningKey::from_file(FIXED_KEY.as_ref())?,
    )?)
}

#[tokio::test]
async fn retries_only_connection_errors_and_5xx() -> Result<()> {
    for (status, body, want_hits) in [
        (503, r#"{"error":["busy"]}"#, 3),
        (500, "oops", 3),
        (404, r#"{"error":["no such thing"]}"#, 1),
        (400, r#"{"error":["bad query"]}"#, 1),
        (403, r#"{"error":["forbidden"]}"#, 1),
        (
            401,
            r#"{"error":["Failed to authenticate as 'vesemir'."]}"#,
            1,
        ),
        (200, "<html>not json</html>", 1),
    ] {
        let (url, hits) = canned(status, body).await?;
        let err = client_for(&url, 2)?.get("/nodes").await.unwrap_err();
        assert_eq!(hits.load(Ordering::SeqCst), want_hits, "{status}: {err}");
        match status {
            200 => assert!(matches!(err, ChefError::NotJson { .. }), "{err:?}"),
            401 => assert!(matches!(err, ChefError::UnknownClient { .. }), "{err:?}"),
            403 => assert!(matches!(err, ChefError::Forbidden { .. }), "{err:?}"),
            s => assert!(
                matches!(err, ChefError::Status { status, .. } if status == s),
                "{err:?}"
            ),
        }
    }
    // Nothing listening: connection refused on every attempt.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let err = client_for(&format!("http://127.0.0.1:{port}"), 2)?
        .get("/nodes")
        .await
        .unwrap_err();
    assert!(
        matches!(err, ChefError::Unreachable { attempts: 3, .. }),
        "{err:?}"
    );
    Ok(())
}

#[tokio::test]
async fn errors_never_show_the_key() -> Result<()> {
    let pem = std::fs::read_to_string(FIXED_KEY)?;
    let secret_line = pem.lines().nth(5).expect("a PEM body line").to_string();
    let (url, _) = canned(503, "{}").await?;
    let client = client_for(&url, 0)?;
    let err = client.get("/nodes").await.unwrap_err();
    for text in [format!("{client:?}"), format!("{err:?}"), err.to_string()] {
        assert!(!text.contains(&secret_line), "{text}");
    }
    assert!(format!("{client:?}").contains("<redacted>"));
    Ok(())
}
