//! Fleet foundation, end to end: real controller and agent processes, real
//! QUIC over loopback with real certificates, a real SQLite file.

use anyhow::Result;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vesemir_testkit::fleet::{wait_for, Agent, Controller, ControllerOptions};

fn connected(c: &Controller, names: &[&str]) -> bool {
    c.agents().is_ok_and(|list| {
        names.iter().all(|n| {
            list.iter().any(|a| {
                a["name"] == *n && a["state"] == "connected" && a["facts"]["hostname"].is_string()
            })
        })
    })
}

fn three_agents(c: &Controller) -> Result<Vec<Agent>> {
    let token = c.enrollment_token(3)?;
    ["web-1", "web-2", "web-3"]
        .iter()
        .map(|n| c.enroll_and_run(n, &token))
        .collect()
}

#[test]
fn three_agents_enroll_connect_and_report_facts_a_fourth_is_refused() -> Result<()> {
    let mut c = Controller::init(ControllerOptions::default())?;
    c.start()?;
    let token = c.enrollment_token(3)?;
    let started = Instant::now();
    let _agents: Vec<Agent> = ["web-1", "web-2", "web-3"]
        .iter()
        .map(|n| c.enroll_and_run(n, &token))
        .collect::<Result<_>>()?;
    wait_for(
        "3 connected agents with facts",
        Duration::from_secs(5),
        || connected(&c, &["web-1", "web-2", "web-3"]).then_some(()),
    )?;
    eprintln!("3 agents enrolled and connected in {:?}", started.elapsed());
    let list = c.agents()?;
    for a in &list {
        assert_eq!(a["version"], env!("CARGO_PKG_VERSION"));
        assert!(
            a["last_seen"].as_str().unwrap().contains('T'),
            "RFC 3339: {a}"
        );
        assert!(a["facts"]["kernel"].as_str().is_some_and(|k| !k.is_empty()));
        assert!(a["facts"]["uptime_secs"].as_u64().unwrap() > 0);
        assert!(a["facts"]["disk_free_bytes"].as_u64().unwrap() > 0);
        assert_eq!(a["facts"]["load"].as_array().unwrap().len(), 3);
    }

    let metrics = tokio::runtime::Runtime::new()?.block_on(async {
        reqwest::get(format!("{}/metrics", c.url))
            .await?
            .text()
            .await
    })?;
    assert!(
        metrics.contains("vesemir_agents_connected 3\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("vesemir_deployments_running 0\n"),
        "{metrics}"
    );

    let fourth = c.enroll("web-4", &token, &[]);
    assert!(!fourth.status.success());
    let err = String::from_utf8_lossy(&fourth.stderr);
    assert!(err.contains("no uses left"), "{err}");
    assert!(!c.agent_dir("web-4").join("agent.pem").exists());

    let table = c.cli(&["agents", "list"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("web-2") && text.contains("connected") && text.contains("s ago"),
        "{text}"
    );
    let show = c.cli(&["agents", "show", "web-1"]);
    assert!(String::from_utf8_lossy(&show.stdout).contains("cert sha256"));
    let missing = c.cli(&["agents", "show", "nope"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no agent named"));
    Ok(())
}

#[test]
fn revoking_closes_within_a_second_and_refuses_reconnects() -> Result<()> {
    let mut c = Controller::init(ControllerOptions::default())?;
    c.start()?;
    let token = c.enrollment_token(3)?;
    let mut agents = Vec::new();
    for n in ["web-1", "web-2", "web-3"] {
        let out = c.enroll(n, &token, &[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // A short cap so the test sees the refused reconnect attempts.
        Agent::set_config(&c.agent_dir(n), "reconnect_cap", "\"1s\"")?;
        agents.push(Agent::start(c.agent_dir(n), n)?);
    }
    wait_for("3 connected", Duration::from_secs(5), || {
        connected(&c, &["web-1", "web-2", "web-3"]).then_some(())
    })?;

    let out = c.cli(&["agents", "revoke", "web-2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let revoked_at = Instant::now();
    let agent = &agents[1];
    wait_for("agent logs its revocation", Duration::from_secs(1), || {
        agent.proc.log_text().contains("revoked").then_some(())
    })?;
    eprintln!("revocation reached the agent in {:?}", revoked_at.elapsed());
    assert_eq!(c.agent_state("web-2").as_deref(), Some("revoked"));

    // It tries again and is refused at the handshake, while still running.
    let log_path = agent.proc.log.clone();
    wait_for("a refused reconnect", Duration::from_secs(10), || {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        (log.matches("revoked this agent's certificate").count() >= 2).then_some(())
    })?;
    let ctl_log = c.proc.as_ref().unwrap().log_text();
    assert!(ctl_log.contains("refused revoked certificate"), "{ctl_log}");
    assert!(agents[1].proc.is_running());
    assert_eq!(c.agent_state("web-2").as_deref(), Some("revoked"));
    assert!(connected(&c, &["web-1", "web-3"]));

    let again = c.cli(&["agents", "revoke", "ghost"]);
    assert!(!again.status.success());

    // Nobody takes over a node name with a token: not a live one, not a
    // revoked one, until an admin forgets the revoked agent.
    let token = c.enrollment_token(3)?;
    let dir = c.root.path().join("intruder");
    let intruder = |name: &str| {
        std::process::Command::new(vesemir_testkit::fleet::bin("vesemir-agent"))
            .args([
                "enroll",
                "--controller",
                &c.quic.to_string(),
                "--token",
                &token,
            ])
            .arg("--ca-cert")
            .arg(c.ca())
            .args(["--name", name, "--force", "--data-dir"])
            .arg(&dir)
            .output()
            .unwrap()
    };
    let out = intruder("web-1");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already enrolled"));
    let out = intruder("web-2");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("was revoked"));
    let out = c.cli(&["agents", "forget", "web-1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("revoke it first"));
    let out = c.cli(&["agents", "forget", "web-2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = intruder("web-2");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(connected(&c, &["web-1", "web-3"]));
    Ok(())
}

#[test]
fn kill_9_the_controller_and_every_agent_reconnects_by_itself() -> Result<()> {
    let mut c = Controller::init(ControllerOptions::default())?;
    c.start()?;
    let mut agents = three_agents(&c)?;
    wait_for("3 connected", Duration::from_secs(5), || {
        connected(&c, &["web-1", "web-2", "web-3"]).then_some(())
    })?;
    let pids: Vec<u32> = agents.iter().map(|a| a.proc.pid()).collect();

    c.proc.as_mut().unwrap().kill9();
    c.start()?;
    let t = Instant::now();
    wait_for(
        "3 reconnected after kill -9",
        Duration::from_secs(20),
        || connected(&c, &["web-1", "web-2", "web-3"]).then_some(()),
    )?;
    eprintln!("all agents back {:?} after the restart", t.elapsed());
    for (a, pid) in agents.iter_mut().zip(pids) {
        assert_eq!(a.proc.pid(), pid, "agent {} was not restarted", a.name);
        assert!(a.proc.is_running());
    }
    Ok(())
}

#[test]
fn sigterm_closes_cleanly_and_agents_come_back() -> Result<()> {
    let mut c = Controller::init(ControllerOptions::default())?;
    c.start()?;
    let token = c.enrollment_token(1)?;
    let agent = c.enroll_and_run("web-1", &token)?;
    wait_for("connected", Duration::from_secs(5), || {
        connected(&c, &["web-1"]).then_some(())
    })?;
    let status = c
        .proc
        .as_mut()
        .unwrap()
        .terminate(Duration::from_secs(10))?;
    assert_eq!(status.code(), Some(0));
    wait_for("agent sees the shutdown", Duration::from_secs(5), || {
        agent
            .proc
            .log_text()
            .contains("controller shutting down")
            .then_some(())
    })?;
    c.start()?;
    wait_for("reconnected", Duration::from_secs(10), || {
        connected(&c, &["web-1"]).then_some(())
    })?;
    Ok(())
}

#[test]
fn api_needs_a_valid_token() -> Result<()> {
    let mut c = Controller::init(ControllerOptions::default())?;
    c.start()?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let http = reqwest::Client::new();
        for path in ["/v1/agents", "/v1/agents/web-1"] {
            let r = http.get(format!("{}{path}", c.url)).send().await?;
            assert_eq!(r.status(), 401, "{path} without token");
            let body: serde_json::Value = r.json().await?;
            assert_eq!(body["error"]["code"], "unauthorized");
            assert!(body["error"]["message"].as_str().unwrap().contains("token"));
            let r = http
                .get(format!("{}{path}", c.url))
                .bearer_auth("vsm_adm_wrong")
                .send()
                .await?;
            assert_eq!(r.status(), 401, "{path} with a wrong token");
        }
        let r = http
            .post(format!("{}/v1/tokens", c.url))
            .json(&serde_json::json!({"uses": 1}))
            .send()
            .await?;
        assert_eq!(r.status(), 401);
        for open in ["/healthz", "/readyz", "/metrics", "/v1/openapi.json"] {
            let r = http.get(format!("{}{open}", c.url)).send().await?;
            assert_eq!(r.status(), 200, "{open} is open");
        }
        // Bad input gets a 422 naming the field, not a 500.
        let r = http
            .post(format!("{}/v1/tokens", c.url))
            .bearer_auth(&c.token)
            .json(&serde_json::json!({"uses": 0}))
            .send()
            .await?;
        assert_eq!(r.status(), 422);
        let body: serde_json::Value = r.json().await?;
        assert!(body["error"]["message"].as_str().unwrap().contains("uses"));
        let r = http
            .post(format!("{}/v1/tokens", c.url))
            .bearer_auth(&c.token)
            .header("content-type", "application/json")
            .body(vec![b'x'; 2 * 1024 * 1024])
            .send()
            .await?;
        assert_eq!(r.status(), 413, "body limit");
        anyhow::Ok(())
    })?;
    Ok(())
}

#[test]
fn bad_config_exits_64_naming_the_key_and_init_refuses_to_overwrite() -> Result<()> {
    let c = Controller::init(ControllerOptions::default())?;
    let cfg = c.data_dir.join("controller.toml");
    let good = std::fs::read_to_string(&cfg)?;
    for (bad, key) in [
        (format!("heartbeat_secs = 0\n{good}"), "heartbeat_secs"),
        (format!("no_such_key = 1\n{good}"), "no_such_key"),
        (
            good.replace("api_listen = \"", "api_listen = \"nope"),
            "api_listen",
        ),
    ] {
        std::fs::write(&cfg, &bad)?;
        let out = std::process::Command::new(vesemir_testkit::fleet::bin("vesemir-controller"))
            .args(["serve", "--config"])
            .arg(&cfg)
            .output()?;
        assert_eq!(out.status.code(), Some(64));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{key}: {err}");
    }
    let out = std::process::Command::new(vesemir_testkit::fleet::bin("vesemir-controller"))
        .args(["init", "--data-dir"])
        .arg(&c.data_dir)
        .output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to overwrite"));
    Ok(())
}

/// The first `serve` takes the sockets `init` bound (LISTEN_FDS), so the
/// config's addresses are not bound: here they name ports the test holds,
/// and the controller still serves, enrolls and connects an agent on the
/// inherited ones. An inherited socket it does not know is refused (64).
#[test]
fn serve_uses_inherited_sockets_and_refuses_unknown_ones() -> Result<()> {
    let mut c = Controller::init(ControllerOptions::default())?;
    let held_tcp = std::net::TcpListener::bind("127.0.0.1:0")?;
    let held = held_tcp.local_addr()?;
    let held_udp = std::net::UdpSocket::bind(held)?;
    let cfg = c.data_dir.join("controller.toml");
    let text = std::fs::read_to_string(&cfg)?;
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("api_listen =") || l.starts_with("quic_listen =") {
                format!("{} = \"{held}\"", l.split(' ').next().unwrap_or(""))
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&cfg, text + "\n")?;
    c.start()?;
    let a = three_agents(&c)?;
    wait_for("agents connected", Duration::from_secs(20), || {
        connected(&c, &["web-1", "web-2", "web-3"]).then_some(())
    })?;
    let log = c.proc.as_ref().map(|p| p.log_text()).unwrap_or_default();
    assert!(log.contains("api,enroll,quic"), "{log}");
    drop(a);

    let stray = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let mut cmd = std::process::Command::new(vesemir_testkit::fleet::bin("vesemir-controller"));
    cmd.args(["serve", "--config"]).arg(&cfg);
    vesemir_testkit::procs::pass_sockets(
        &mut cmd,
        vec![("stray", vesemir_testkit::procs::Listen::Udp(stray))],
    );
    let out = cmd.output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("\"stray\"") && err.contains("api, enroll, quic"),
        "{err}"
    );
    drop((held_tcp, held_udp));
    Ok(())
}

// ---- raw QUIC peers: handshakes that must fail, garbage that must not hurt ----

mod raw {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair};
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    pub fn roots(c: &Controller) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        let pem = std::fs::read(c.ca()).unwrap();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            roots.add(cert.unwrap()).unwrap();
        }
        roots
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    pub fn client_tls(
        c: &Controller,
        identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    ) -> rustls::ClientConfig {
        let b = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots(c));
        let mut cfg = match identity {
            Some((chain, key)) => b.with_client_auth_cert(chain, key).unwrap(),
            None => b.with_no_client_auth(),
        };
        cfg.alpn_protocols = vec![vesemir_protocol::ALPN.to_vec()];
        cfg
    }

    /// A certificate for `cn` signed by `issuer` (params + key), valid in [nb, na].
    pub fn cert_signed_by(
        cn: &str,
        issuer_pem: &str,
        issuer_key_pem: &str,
        not_before: time::OffsetDateTime,
        not_after: time::OffsetDateTime,
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let ca_key = KeyPair::from_pem(issuer_key_pem).unwrap();
        let ca = CertificateParams::from_ca_cert_pem(issuer_pem)
            .unwrap()
            .self_signed(&ca_key)
            .unwrap();
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        p.not_before = not_before;
        p.not_after = not_after;
        let cert = p.signed_by(&key, &ca, &ca_key).unwrap();
        (
            vec![cert.der().clone()],
            PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
        )
    }

    pub fn other_ca() -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name
            .push(DnType::CommonName, "vesemir controller CA");
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        (p.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    pub fn enrolled_identity(
        c: &Controller,
        name: &str,
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let dir = c.agent_dir(name);
        let chain = CertificateDer::pem_file_iter(dir.join("agent.pem"))
            .unwrap()
            .map(|c| c.unwrap())
            .collect();
        let key = PrivateKeyDer::from_pem_file(dir.join("agent-key.pem")).unwrap();
        (chain, key)
    }

    pub async fn connect(
        c: &Controller,
        tls: rustls::ClientConfig,
    ) -> Result<quinn::Connection, String> {
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        let conn = tokio::time::timeout(
            Duration::from_secs(5),
            ep.connect(c.quic, "127.0.0.1").unwrap(),
        )
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| e.to_string())?;
        // In TLS 1.3 the server judges the client certificate after the
        // client's handshake completes, so a refusal arrives as a close.
        match tokio::time::timeout(Duration::from_secs(2), conn.closed()).await {
            Ok(e) => Err(e.to_string()),
            Err(_) => Ok(conn),
        }
    }
}

#[test]
fn foreign_expired_and_missing_client_certificates_are_refused_at_the_handshake() -> Result<()> {
    let mut c = Controller::init(ControllerOptions::default())?;
    c.start()?;
    let token = c.enrollment_token(1)?;
    let _good = c.enroll_and_run("web-1", &token)?;
    wait_for("connected", Duration::from_secs(5), || {
        connected(&c, &["web-1"]).then_some(())
    })?;
    let now = time::OffsetDateTime::now_utc();
    let ca_pem = std::fs::read_to_string(c.ca())?;
    let ca_key = std::fs::read_to_string(c.data_dir.join("ca-key.pem"))?;
    let (other_pem, other_key) = raw::other_ca();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let cases = [
            (
                "another CA",
                Some(raw::cert_signed_by(
                    "web-1",
                    &other_pem,
                    &other_key,
                    now - time::Duration::hours(1),
                    now + time::Duration::days(1),
                )),
            ),
            (
                "expired",
                Some(raw::cert_signed_by(
                    "web-1",
                    &ca_pem,
                    &ca_key,
                    now - time::Duration::days(2),
                    now - time::Duration::days(1),
                )),
            ),
            ("no client certificate", None),
        ];
        for (what, identity) in cases {
            let r = raw::connect(&c, raw::client_tls(&c, identity)).await;
            let err = r
                .err()
                .unwrap_or_else(|| panic!("{what}: connection was accepted"));
            eprintln!("{what}: refused: {err}");
            assert!(
                err.contains("certificate") || err.contains("crypto") || err.contains("TLS"),
                "{what}: {err}"
            );
        }
        // A certificate from our CA that is valid works (control case).
        let valid = raw::cert_signed_by(
            "web-1",
            &ca_pem,
            &ca_key,
            now - time::Duration::hours(1),
            now + time::Duration::hours(1),
        );
        assert!(raw::connect(&c, raw::client_tls(&c, Some(valid)))
            .await
            .is_ok());
    });
    assert_eq!(
        vesemir_testkit::fleet::http_get_status(&format!("{}/healthz", c.url)),
        Some(200)
    );
    wait_for("good agent still connected", Duration::from_secs(5), || {
        connected(&c, &["web-1"]).then_some(())
    })?;
    Ok(())
}

#[test]
fn garbage_on_the_wire_closes_only_that_connection() -> Result<()> {
    use vesemir_protocol::control::CloseReason;
    let mut c = Controller::init(ControllerOptions::default())?;
    c.start()?;
    let token = c.enrollment_token(2)?;
    let _good = c.enroll_and_run("web-1", &token)?;
    let rogue = c.enroll("rogue", &token, &[]);
    assert!(rogue.status.success());
    wait_for("connected", Duration::from_secs(5), || {
        connected(&c, &["web-1"]).then_some(())
    })?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        // Random datagrams at the QUIC port.
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let mut seed = 0x2545F4914F6CDD1Du64;
        for i in 0..2000 {
            let len = 1 + (i * 37) % 1400;
            let buf: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            sock.send_to(&buf, c.quic).await?;
        }
        // Garbage on the enrollment TCP port too.
        let mut tcp = tokio::net::TcpStream::connect(c.quic).await?;
        tokio::io::AsyncWriteExt::write_all(&mut tcp, b"GET / HTTP/1.1\r\n\r\n\x00\xff").await?;

        let frames: Vec<(&str, Vec<u8>)> = vec![
            ("oversized header", u32::MAX.to_be_bytes().to_vec()),
            ("malformed payload", {
                let mut f = 16u32.to_be_bytes().to_vec();
                f.extend([0xff; 16]);
                f
            }),
        ];
        for (what, bytes) in frames {
            for after_hello in [false, true] {
                let tls = raw::client_tls(&c, Some(raw::enrolled_identity(&c, "rogue")));
                let conn = raw::connect(&c, tls)
                    .await
                    .expect("rogue has a valid certificate");
                let (mut send, mut recv) = conn.open_bi().await?;
                if after_hello {
                    let hello = vesemir_protocol::Hello {
                        protocol_version: vesemir_protocol::PROTOCOL_VERSION,
                        agent_version: "test".into(),
                        node: "rogue".into(),
                        instance: 1,
                    };
                    send.write_all(&vesemir_protocol::encode(&hello)?).await?;
                    let mut header = [0u8; 4];
                    recv.read_exact(&mut header).await?;
                }
                send.write_all(&bytes).await?;
                let closed = tokio::time::timeout(Duration::from_secs(5), conn.closed())
                    .await
                    .unwrap_or_else(|_| panic!("{what}: connection not closed"));
                match closed {
                    quinn::ConnectionError::ApplicationClosed(a) => assert_eq!(
                        a.error_code.into_inner(),
                        u64::from(CloseReason::ProtocolViolation.code()),
                        "{what}"
                    ),
                    other => panic!("{what} (after hello: {after_hello}): unexpected {other}"),
                }
            }
        }
        anyhow::Ok(())
    })?;
    assert_eq!(
        vesemir_testkit::fleet::http_get_status(&format!("{}/healthz", c.url)),
        Some(200)
    );
    wait_for("good agent unaffected", Duration::from_secs(5), || {
        connected(&c, &["web-1"]).then_some(())
    })?;
    // And a new agent can still enroll and connect.
    let token = c.enrollment_token(1)?;
    let _late = c.enroll_and_run("web-2", &token)?;
    wait_for("late agent connected", Duration::from_secs(5), || {
        connected(&c, &["web-1", "web-2"]).then_some(())
    })?;
    Ok(())
}

#[test]
fn certificates_are_renewed_over_the_live_connection() -> Result<()> {
    let mut c = Controller::init(ControllerOptions {
        heartbeat_secs: 1,
        agent_cert_ttl: "12s".into(),
        extra_config: String::new(),
    })?;
    c.start()?;
    let token = c.enrollment_token(1)?;
    let agent = c.enroll_and_run("web-1", &token)?;
    wait_for("connected", Duration::from_secs(5), || {
        connected(&c, &["web-1"]).then_some(())
    })?;
    let first = c.agents()?[0]["cert_serial"].clone();
    let cert_path = agent.dir.join("agent.pem");
    let before = std::fs::read_to_string(&cert_path)?;
    // 2/3 of 12s (+5 min of backdating) is already past: renewal comes at the first heartbeat.
    wait_for(
        "renewed certificate on disk",
        Duration::from_secs(10),
        || (std::fs::read_to_string(&cert_path).ok()? != before).then_some(()),
    )?;
    wait_for("store has the new serial", Duration::from_secs(10), || {
        (c.agents().ok()?[0]["cert_serial"] != first).then_some(())
    })?;
    assert!(agent.proc.log_text().contains("certificate renewed"));
    // The connection was not dropped for it.
    assert_eq!(
        agent
            .proc
            .log_text()
            .matches("connected controller")
            .count(),
        1
    );
    assert!(connected(&c, &["web-1"]));
    Ok(())
}

#[test]
fn an_agent_that_stops_heartbeating_shows_stale_then_connected_again() -> Result<()> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let mut c = Controller::init(ControllerOptions::default())?;
    c.start()?;
    let token = c.enrollment_token(1)?;
    let agent = c.enroll_and_run("web-1", &token)?;
    wait_for("connected", Duration::from_secs(5), || {
        connected(&c, &["web-1"]).then_some(())
    })?;
    // Frozen, not gone: the QUIC connection is still open (idle timeout 30s),
    // but no heartbeat comes for 3 intervals (heartbeat 1s here).
    let pid = Pid::from_raw(agent.proc.pid() as i32);
    kill(pid, Signal::SIGSTOP)?;
    let stale = wait_for("stale", Duration::from_secs(10), || {
        (c.agent_state("web-1").as_deref() == Some("stale")).then_some(())
    });
    let table = String::from_utf8_lossy(&c.cli(&["agents", "list"]).stdout).to_string();
    kill(pid, Signal::SIGCONT)?;
    stale?;
    wait_for("connected again", Duration::from_secs(10), || {
        connected(&c, &["web-1"]).then_some(())
    })?;
    assert!(table.contains("stale"), "{table}");
    Ok(())
}
