//! `vesemir inventory resolve` against a real goiardi (authentication on)
//! through a real controller configured for Chef: the hosts a selector
//! finds and the agent state of each, for a mixed set (one agent connected,
//! one enrolled but not running, two without an agent).

use std::time::Duration;

use anyhow::{ensure, Result};
use serde_json::{json, Value};
use vesemir_controller::inventory::chef::node_document;
use vesemir_testkit::fleet::{wait_for, Controller, ControllerOptions};
use vesemir_testkit::goiardi::{create_nodes, wait_indexed, Goiardi};

/// (name, environment, tag, address)
const NODES: [(&str, &str, &str, &str); 6] = [
    ("pay-1", "production", "app:payments", "10.0.0.1"),
    ("pay-2", "production", "app:payments", "10.0.0.2"),
    ("pay-3", "production", "app:payments", "10.0.0.3"),
    ("pay-4", "production", "app:payments", "10.0.0.4"),
    // Same tag, other environment; same environment, other tag.
    ("pay-stg-1", "staging", "app:payments", "10.0.9.1"),
    ("shop-1", "production", "app:shop", "10.0.1.1"),
];

/// Starts goiardi and creates the nodes; returns once all are searchable.
async fn chef_with_nodes() -> Result<Goiardi> {
    let g = Goiardi::start().await?;
    let client = g.admin_client()?;
    let docs = NODES
        .iter()
        .map(|(name, env, tag, ip)| {
            node_document(
                name,
                env,
                &["role[web]".to_string()],
                json!({ "tags": [tag] }),
                json!({ "ipaddress": ip, "fqdn": format!("{name}.example.com") }),
            )
        })
        .collect();
    create_nodes(&client, docs, 4).await?;
    wait_indexed(&client, "name:*", NODES.len(), Duration::from_secs(20)).await?;
    Ok(g)
}

/// Runs `vesemir ARGS…`, which must succeed; returns stdout.
fn cli_ok(c: &Controller, args: &[&str]) -> Result<String> {
    let out = c.cli(args);
    ensure!(
        out.status.success(),
        "vesemir {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// (name, address, agent) of each host in a JSON answer.
fn hosts(v: &Value) -> Vec<(String, String, String)> {
    v["hosts"]
        .as_array()
        .expect("hosts array")
        .iter()
        .map(|h| {
            let s = |k: &str| h[k].as_str().unwrap_or_default().to_string();
            (s("name"), s("address"), s("agent"))
        })
        .collect()
}

fn owned(rows: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
    rows.iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect()
}

#[test]
fn resolve_on_chef_prints_hosts_and_their_agent_state() -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let g = rt.block_on(chef_with_nodes())?;

    let mut c = Controller::init(ControllerOptions::default())?;
    // Tables go at the end of the file: anything after `[chef]` belongs to it.
    let cfg = c.data_dir.join("controller.toml");
    let mut text = std::fs::read_to_string(&cfg)?;
    text.push_str(&format!(
        "\n[chef]\nserver_url = {:?}\nclient_name = \"admin\"\nclient_key = {:?}\nsign_version = \"1.3\"\ntimeout = \"10s\"\n",
        g.url(),
        g.admin_key_path().display().to_string(),
    ));
    std::fs::write(&cfg, text)?;
    c.start()?;

    let token = c.enrollment_token(2)?;
    let _pay1 = c.enroll_and_run("pay-1", &token)?;
    // pay-2 enrolled but never started: disconnected. pay-3/pay-4: no agent.
    let out = c.enroll("pay-2", &token, &[]);
    ensure!(
        out.status.success(),
        "enroll pay-2: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("pay-1 connected", Duration::from_secs(10), || {
        (c.agent_state("pay-1").as_deref() == Some("connected")).then_some(())
    })?;

    let selector = ["--env", "production", "--tags", "app:payments"];
    let json_args = [
        &["inventory", "resolve"][..],
        &selector,
        &["--output", "json"],
    ]
    .concat();
    let v: Value = serde_json::from_str(&cli_ok(&c, &json_args)?)?;
    assert_eq!(
        hosts(&v),
        owned(&[
            ("pay-1", "10.0.0.1", "connected"),
            ("pay-2", "10.0.0.2", "disconnected"),
            ("pay-3", "10.0.0.3", "none"),
            ("pay-4", "10.0.0.4", "none"),
        ]),
        "{v:#}"
    );
    // The query sent to Chef, with the tag's colon escaped for Lucene.
    assert_eq!(
        v["query"], r"chef_environment:production AND tags:app\:payments",
        "{v:#}"
    );
    assert!(v["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .all(|h| h["environment"] == "production"));

    // The table says the same in words.
    let table = cli_ok(&c, &[&["inventory", "resolve"][..], &selector].concat())?;
    assert!(
        table.contains(r"tags:app\:payments")
            && table.contains("no agent")
            && table.contains("disconnected")
            && table.contains("connected")
            && table.contains("4 host(s)")
            && !table.contains("shop-1")
            && !table.contains("pay-stg-1"),
        "{table}"
    );

    // A raw query works on Chef and is ANDed with the rest.
    let v: Value = serde_json::from_str(&cli_ok(
        &c,
        &[
            "inventory",
            "resolve",
            "--query",
            "name:pay-1",
            "--tags",
            "app:payments",
            "--output",
            "json",
        ],
    )?)?;
    assert_eq!(
        hosts(&v),
        owned(&[("pay-1", "10.0.0.1", "connected")]),
        "{v:#}"
    );
    assert_eq!(v["query"], r"(name:pay-1) AND tags:app\:payments", "{v:#}");

    // A selector nothing matches is an empty answer, not an error.
    let v: Value = serde_json::from_str(&cli_ok(
        &c,
        &[
            "inventory",
            "resolve",
            "--env",
            "staging",
            "--tags",
            "app:shop",
            "--output",
            "json",
        ],
    )?)?;
    assert_eq!(hosts(&v), vec![], "{v:#}");
    Ok(())
}
