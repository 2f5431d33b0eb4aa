//! Authentication against a real goiardi with `-A`: every signing version
//! works, and each way of getting it wrong gives its own actionable error.

use std::time::Duration;

use anyhow::Result;
use vesemir_controller::inventory::{ChefClient, ChefError, SignVersion, SigningKey};
use vesemir_testkit::goiardi::{Goiardi, GoiardiOptions};

const FIXED_KEY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/chef/fixed-key.pem");

#[tokio::test]
async fn every_sign_version_is_accepted() -> Result<()> {
    let g = Goiardi::start().await?;
    for version in [SignVersion::V1_0, SignVersion::V1_1, SignVersion::V1_3] {
        let client = ChefClient::new(&g.admin_config(version))?;
        let name = format!("v{}", version.as_str().replace('.', "-"));
        let node = vesemir_controller::inventory::chef::node_document(
            &name,
            "_default",
            &[],
            serde_json::json!({"tags": ["signed"]}),
            serde_json::json!({}),
        );
        // POST with a body, GET without: both hash paths of the signature.
        client.upsert_node(&node).await?;
        let got = client.get(&format!("/nodes/{name}")).await?;
        assert_eq!(got["name"], name.as_str(), "{version}");
    }
    Ok(())
}

#[tokio::test]
async fn wrong_key_is_a_bad_signature() -> Result<()> {
    let g = Goiardi::start().await?;
    for version in [SignVersion::V1_0, SignVersion::V1_1, SignVersion::V1_3] {
        let mut cfg = g.admin_config(version);
        cfg.client_key = FIXED_KEY.into();
        let err = ChefClient::new(&cfg)?.get("/nodes").await.unwrap_err();
        assert!(
            matches!(err, ChefError::BadSignature { .. }),
            "{version}: {err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("client_key"), "{msg}");
    }
    Ok(())
}

#[tokio::test]
async fn unknown_client_is_named() -> Result<()> {
    let g = Goiardi::start().await?;
    let mut cfg = g.admin_config(SignVersion::V1_3);
    cfg.client_name = "nobody-here".into();
    let err = ChefClient::new(&cfg)?.get("/nodes").await.unwrap_err();
    assert!(matches!(err, ChefError::UnknownClient { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("nobody-here") && msg.contains("client_name"),
        "{msg}"
    );
    Ok(())
}

#[tokio::test]
async fn clock_skew_beyond_slew_shows_local_time() -> Result<()> {
    let g = Goiardi::start_with(GoiardiOptions {
        time_slew: Some(Duration::from_secs(10)),
    })
    .await?;
    let skewed = time::OffsetDateTime::now_utc() + time::Duration::minutes(3);
    let client = g
        .admin_client()?
        .with_clock(move || time::OffsetDateTime::now_utc() + time::Duration::minutes(3));
    let err = client.get("/nodes").await.unwrap_err();
    let ChefError::ClockSkew { local_time, .. } = &err else {
        panic!("expected ClockSkew, got {err:?}");
    };
    let local =
        time::OffsetDateTime::parse(local_time, &time::format_description::well_known::Rfc3339)?;
    assert!(
        (local - skewed).abs() < time::Duration::seconds(30),
        "{local_time}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(local_time.as_str()) && msg.contains("clock"),
        "{msg}"
    );

    // Within the slew it is fine.
    let client = g
        .admin_client()?
        .with_clock(|| time::OffsetDateTime::now_utc() + time::Duration::seconds(3));
    client.get("/nodes").await?;
    Ok(())
}

#[tokio::test]
async fn api_client_with_pkcs8_key_can_search() -> Result<()> {
    let g = Goiardi::start().await?;
    let admin = g.admin_client()?;
    let created = admin
        .post(
            "/clients",
            &serde_json::json!({"name": "vesemir", "admin": false}),
        )
        .await?;
    let pem = created["private_key"]
        .as_str()
        .expect("goiardi returns the new client's key");
    let pkcs1 = g.dir().join("vesemir.pem");
    std::fs::write(&pkcs1, pem)?;
    let pkcs8 = g.dir().join("vesemir-pkcs8.pem");
    let status = std::process::Command::new("openssl")
        .args(["pkcs8", "-topk8", "-nocrypt", "-in"])
        .arg(&pkcs1)
        .arg("-out")
        .arg(&pkcs8)
        .status()?;
    assert!(status.success());
    for key in [&pkcs1, &pkcs8] {
        let mut cfg = g.admin_config(SignVersion::V1_3);
        cfg.client_name = "vesemir".into();
        cfg.client_key = key.clone();
        let client = ChefClient::new(&cfg)?;
        let found = client
            .request(reqwest::Method::GET, "/search/node", &[("q", "*:*")], None)
            .await?;
        assert!(found["rows"].is_array(), "{found}");
    }
    // And a key file that is not a key says so.
    let mut cfg = g.admin_config(SignVersion::V1_3);
    cfg.client_key = g.dir().join("goiardi.log");
    let err = ChefClient::new(&cfg).unwrap_err();
    assert!(err.to_string().contains("not an RSA private key"), "{err}");
    let _ = SigningKey::from_file(std::path::Path::new(FIXED_KEY))?;
    Ok(())
}
