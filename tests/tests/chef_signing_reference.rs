//! Our Mixlib::Authentication signatures, header for header, against the
//! reference Ruby gem (Debian `ruby-mixlib-authentication`), at fixed keys,
//! timestamps and bodies, for protocol 1.0, 1.1 and 1.3.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::{Command, Stdio};

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use vesemir_controller::inventory::sign::{self, SignRequest, SERVER_API_VERSION};
use vesemir_controller::inventory::{SignVersion, SigningKey};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/chef");

struct Case {
    method: &'static str,
    path: &'static str,
    body: &'static str,
    user_id: &'static str,
    timestamp: &'static str,
}

const CASES: &[Case] = &[
    Case {
        method: "GET",
        path: "/nodes",
        body: "",
        user_id: "admin",
        timestamp: "2009-01-01T12:00:00Z",
    },
    Case {
        method: "POST",
        path: "/organizations/acme//search/node/",
        body: r#"{"name":["name"],"ip":["ipaddress"]}"#,
        user_id: "vesemir",
        timestamp: "2026-11-26T16:30:29Z",
    },
    Case {
        method: "PUT",
        path: "/nodes/web-1.example.com",
        body: "{\"normal\":{\"tags\":[\"app:payments\",\"caf\u{e9}\"]}}",
        user_id: "spec-user.with.dots",
        timestamp: "2013-03-12T17:13:28Z",
    },
    Case {
        method: "DELETE",
        path: "/",
        body: "",
        user_id: "a",
        timestamp: "1999-12-31T23:59:59Z",
    },
];

/// Sign every case with the gem; one header map per case.
fn ruby_sign(key: &str, version: SignVersion) -> Result<Vec<BTreeMap<String, String>>> {
    let cases: Vec<Value> = CASES
        .iter()
        .map(|c| {
            json!({
                "method": c.method, "path": c.path, "body": c.body, "user_id": c.user_id,
                "timestamp": c.timestamp, "version": version.as_str(),
                "server_api_version": SERVER_API_VERSION,
            })
        })
        .collect();
    let mut child = Command::new("ruby")
        .arg(format!("{FIXTURES}/sign.rb"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running ruby (apt-get install -y ruby ruby-mixlib-authentication)")?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(json!({"key": key, "cases": cases}).to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "sign.rb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn ours(key: &SigningKey, version: SignVersion, c: &Case) -> Result<BTreeMap<String, String>> {
    let headers = sign::sign(
        key,
        version,
        &SignRequest {
            method: c.method,
            path: c.path,
            body: c.body.as_bytes(),
            user_id: c.user_id,
            timestamp: OffsetDateTime::parse(c.timestamp, &Rfc3339)?,
        },
    )?;
    Ok(headers.into_iter().collect())
}

fn check(version: SignVersion) -> Result<()> {
    let pkcs1 = format!("{FIXTURES}/fixed-key.pem");
    let reference = ruby_sign(&pkcs1, version)?;
    ensure!(reference.len() == CASES.len());
    for key_file in ["fixed-key.pem", "fixed-key-pkcs8.pem"] {
        let key = SigningKey::from_file(format!("{FIXTURES}/{key_file}").as_ref())?;
        for (case, want) in CASES.iter().zip(&reference) {
            let mut got = ours(&key, version, case)?;
            // We also send the server API version the gem takes as input.
            if version == SignVersion::V1_3 {
                assert_eq!(
                    got.remove("X-Ops-Server-API-Version").as_deref(),
                    Some(SERVER_API_VERSION)
                );
            }
            assert!(
                want.keys().any(|k| k == "X-Ops-Authorization-6"),
                "a 2048-bit signature spans 6 header lines"
            );
            assert_eq!(
                &got, want,
                "{version} {} {} ({key_file})",
                case.method, case.path
            );
        }
    }
    Ok(())
}

#[test]
fn matches_ruby_gem_v1_0() -> Result<()> {
    check(SignVersion::V1_0)
}

#[test]
fn matches_ruby_gem_v1_1() -> Result<()> {
    check(SignVersion::V1_1)
}

#[test]
fn matches_ruby_gem_v1_3() -> Result<()> {
    check(SignVersion::V1_3)
}
