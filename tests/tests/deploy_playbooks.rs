//! Playbooks teams own, end to end: a real controller and real agents over
//! QUIC (no HAProxy step; the sample apps' service manager is the recording
//! `systemctl` stand-in, unused by these playbooks).
//!
//! - a team's own playbook, dropped into the agents' playbook directory, is
//!   reported by the agents and deploys;
//! - a playbook some hosts lack is refused with 422 naming them, and the dry
//!   run shows the same (plus drift: a host whose copy differs);
//! - a changeset carrying its own playbook (`changeset.playbook`) deploys:
//!   the agent verifies the archive, extracts it privately, runs it.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};
use vesemir_testkit::demo::artifacts::{sha256_hex, tar_gz};
use vesemir_testkit::demo::{HaproxyMode, LocalFleet};

const DEPLOY: Duration = Duration::from_secs(60);

async fn fleet() -> Result<LocalFleet> {
    LocalFleet::builder()
        .app_hosts(2)
        .haproxy(HaproxyMode::Off)
        .heartbeat_secs(1)
        .playbooks_per_host(true)
        .start()
        .await
}

/// The playbooks agent `name` last reported: name → sha256.
async fn reported(f: &LocalFleet, name: &str) -> Result<Vec<(String, String)>> {
    let v: Value = f
        .api()
        .json(f.api().req(reqwest::Method::GET, "/v1/agents"))
        .await?;
    let list = v
        .as_array()
        .or_else(|| v["agents"].as_array())
        .context("agents list")?;
    let a = list
        .iter()
        .find(|a| a["name"] == name)
        .with_context(|| format!("no agent {name} in {v}"))?;
    Ok(a["facts"]["playbooks"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default().to_string(),
                p["sha256"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect())
}

/// Polls until every host reports `playbook` with the sha256 of its file.
async fn wait_reported(f: &LocalFleet, playbook: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    for h in f.hosts() {
        let want = match std::fs::read(h.dir.join("playbooks").join(playbook)) {
            Ok(b) => Some(sha256_hex(&b)),
            Err(_) => None,
        };
        loop {
            let got = reported(f, &h.name).await?;
            let have = got
                .iter()
                .find(|(n, _)| n == playbook)
                .map(|(_, s)| s.clone());
            if have == want {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "{}: reports {got:?}, expected {playbook} = {want:?}",
                    h.name
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

const TEAM_PLAYBOOK: &str = r#"# A team's own rolling-update playbook, the Ansible way.
- hosts: all
  gather_facts: false
  tasks:
    - name: Create the marker directory
      file:
        path: "{{ base_dir }}/team"
        state: directory
    - name: Record the deploy
      copy:
        content: "team playbook ran for {{ app }}\n"
        dest: "{{ base_dir }}/team/marker.txt"
      notify: done
  handlers:
    - name: done
      lineinfile:
        path: "{{ base_dir }}/team/handlers.log"
        line: handler ran
        create: true
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn team_playbooks_missing_ones_and_drift() -> Result<()> {
    let f = fleet().await?;
    let cs = f.publish("1.0.0")?;
    for h in f.hosts() {
        std::fs::write(h.dir.join("playbooks/team-deploy.yml"), TEAM_PLAYBOOK)?;
    }
    wait_reported(&f, "team-deploy.yml").await?;

    // 1. A team's playbook in the agents' directory deploys.
    let mut body = f.deploy_request(&cs);
    body["playbook"] = json!("team-deploy.yml");
    let id = f.submit(&body).await?;
    let d = f.wait_deployment(&id, DEPLOY).await?;
    assert_eq!(d["status"], "succeeded", "{d:#}\n{}", f.logs(40));
    for h in f.hosts() {
        let marker = std::fs::read_to_string(h.base_dir().join("team/marker.txt"))?;
        assert_eq!(marker, "team playbook ran for demo\n");
        let log = std::fs::read_to_string(h.base_dir().join("team/handlers.log"))?;
        assert_eq!(log, "handler ran\n");
    }

    // 2. A playbook only app-1 has: 422 naming app-2; the dry run agrees.
    let hosts = f.hosts().to_vec();
    std::fs::write(hosts[0].dir.join("playbooks/partial.yml"), TEAM_PLAYBOOK)?;
    wait_reported(&f, "partial.yml").await?;
    let mut body = f.deploy_request(&cs);
    body["playbook"] = json!("partial.yml");
    let (status, answer) = f.post_deployment(&body, None).await?;
    assert_eq!(status, 422, "{answer}");
    let msg = answer.to_string();
    assert!(
        msg.contains("partial.yml")
            && msg.contains(&hosts[1].name)
            && !msg.contains(&format!("{},", hosts[0].name)),
        "{msg}"
    );
    body["dry_run"] = json!(true);
    let (status, plan) = f.post_deployment(&body, None).await?;
    assert_eq!(status, 200, "{plan}");
    assert_eq!(
        plan["playbook"]["missing"],
        json!([hosts[1].name]),
        "{plan:#}"
    );
    assert!(
        plan["problems"].to_string().contains(&hosts[1].name),
        "{plan:#}"
    );

    // 3. Drift: app-2's copy of team-deploy.yml differs.
    std::fs::write(
        hosts[1].dir.join("playbooks/team-deploy.yml"),
        format!("{TEAM_PLAYBOOK}# edited by hand\n"),
    )?;
    wait_reported(&f, "team-deploy.yml").await?;
    let mut body = f.deploy_request(&cs);
    body["playbook"] = json!("team-deploy.yml");
    body["dry_run"] = json!(true);
    let (status, plan) = f.post_deployment(&body, None).await?;
    assert_eq!(status, 200, "{plan}");
    assert_eq!(plan["playbook"]["missing"], json!([]), "{plan:#}");
    let drift = plan["playbook"]["drift"].as_array().context("drift")?;
    assert_eq!(drift.len(), 1, "{plan:#}");
    // Two hosts, two versions: the reference is the smaller sha256; the
    // other host is the drifted one.
    let shas: Vec<String> = hosts
        .iter()
        .map(|h| sha256_hex(&std::fs::read(h.dir.join("playbooks/team-deploy.yml")).unwrap()))
        .collect();
    let drifted = if shas[0] < shas[1] { 1 } else { 0 };
    assert_eq!(drift[0]["host"], json!(hosts[drifted].name), "{plan:#}");
    assert_eq!(drift[0]["sha256"], json!(shas[drifted]), "{plan:#}");
    Ok(())
}

/// Serves one file on a free loopback port (`Connection: close`).
fn serve_once_forever(body: Vec<u8>) -> Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}/carried.tar.gz", listener.local_addr()?);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let body = body.clone();
            std::thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
                let mut r = BufReader::new(match conn.try_clone() {
                    Ok(c) => c,
                    Err(_) => return,
                });
                loop {
                    let mut l = String::new();
                    if r.read_line(&mut l).is_err() || l.trim().is_empty() {
                        break;
                    }
                }
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(&body);
            });
        }
    });
    Ok(url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changeset_carried_playbook_deploys() -> Result<()> {
    let f = fleet().await?;
    let playbook = br#"- hosts: all
  gather_facts: false
  tasks:
    - name: Install the release the changeset carries
      template:
        src: release.j2
        dest: "{{ base_dir }}/carried.txt"
"#;
    let tgz = tar_gz(&[
        ("deploy/vesemir.yml", playbook.as_slice()),
        (
            "deploy/templates/release.j2",
            b"carried playbook installed {{ changeset.version }}\n".as_slice(),
        ),
        ("bin/app", b"#!/bin/sh\n".as_slice()),
    ])?;
    let url = serve_once_forever(tgz.clone())?;
    let cs = json!({
        "version": "3.0.0",
        "url": url,
        "sha256": sha256_hex(&tgz),
        "playbook": "deploy/vesemir.yml",
    });
    let mut body = f.deploy_request(&f.publish("3.0.0")?);
    body["changeset"] = cs.clone();
    let id = f.submit(&body).await?;
    let d = f.wait_deployment(&id, DEPLOY).await?;
    assert_eq!(d["status"], "succeeded", "{d:#}\n{}", f.logs(40));
    for h in f.hosts() {
        let text = std::fs::read_to_string(h.base_dir().join("carried.txt"))?;
        assert_eq!(text, "carried playbook installed 3.0.0\n");
    }

    // A wrong checksum: the agent runs nothing from the archive.
    let mut body = f.deploy_request(&f.publish("3.0.1")?);
    let mut bad = cs.clone();
    bad["version"] = json!("3.0.1");
    bad["sha256"] = json!("0".repeat(64));
    body["changeset"] = bad;
    let id = f.submit(&body).await?;
    let d = f.wait_deployment(&id, DEPLOY).await?;
    assert_ne!(d["status"], "succeeded", "{d:#}");
    assert!(d.to_string().contains("checksum mismatch"), "{d:#}");
    for h in f.hosts() {
        let text = std::fs::read_to_string(h.base_dir().join("carried.txt"))?;
        assert_eq!(text, "carried playbook installed 3.0.0\n", "nothing ran");
    }

    // A playbook path climbing out of the archive is refused up front.
    let mut body = f.deploy_request(&f.publish("3.0.2")?);
    let mut evil = cs;
    evil["playbook"] = json!("../etc/x.yml");
    body["changeset"] = evil;
    let (status, answer) = f.post_deployment(&body, None).await?;
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer.to_string().contains("changeset.playbook"),
        "{answer}"
    );
    Ok(())
}
