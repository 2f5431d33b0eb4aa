//! One table of (selector, expected nodes) answered by a real goiardi (with
//! `-A`, nodes created through our signed client) and by the static
//! inventory (TOML and YAML): the same selectors mean the same thing.

// `i % n == 0` reads like the fleet's pattern; `is_multiple_of` needs Rust
// 1.87 and the workspace promises 1.85.
#![allow(clippy::manual_is_multiple_of)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use serde_json::json;
use vesemir_controller::inventory::chef::node_document;
use vesemir_controller::inventory::{
    ChefInventory, Host, InventoryError, InventorySource, Selector, StaticInventory,
};
use vesemir_testkit::goiardi::{create_nodes, wait_indexed, Goiardi};

const NODES: usize = 60;
const ENVS: [&str; 3] = ["production", "staging", "prod-eu"];
const APPS: [&str; 4] = ["app:payments", "app:search", "app:ledger", "app:payments"];

/// The fleet, by index. Tests below express expectations as predicates on
/// the index, independently of how either inventory matches.
struct Node {
    name: String,
    env: &'static str,
    tags: Vec<String>,
    roles: Vec<&'static str>,
    recipes: Vec<&'static str>,
    region: &'static str,
    ip: Option<String>,
    fqdn: String,
    hostname: String,
}

fn name(i: usize) -> String {
    format!("node-{i:02}")
}

fn node(i: usize) -> Node {
    let mut tags = vec![APPS[i % 4].to_string()];
    if i % 10 == 0 {
        tags.push("canary".into());
    }
    if i % 5 == 0 {
        tags.push("owner:pay-core.team".into());
    }
    let mut roles = vec![];
    if i % 2 == 0 {
        roles.push("web");
    }
    if i % 3 == 0 {
        roles.push("db");
    }
    let mut recipes = vec![];
    if i % 6 == 1 {
        recipes.push("haproxy");
    }
    if i % 2 == 1 {
        recipes.push("nginx::default");
    }
    Node {
        name: name(i),
        env: ENVS[i % 3],
        tags,
        roles,
        recipes,
        region: if i % 2 == 0 { "eu-west" } else { "us-east" },
        ip: (i % 15 != 7).then(|| format!("10.0.{}.{}", i / 256, i % 256)),
        fqdn: format!("{}.example.com", name(i)),
        hostname: name(i),
    }
}

fn fleet() -> Vec<Node> {
    (0..NODES).map(node).collect()
}

fn sel() -> Selector {
    Selector::default()
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// (description, selector, which indices match, works on static files)
type Row = (&'static str, Selector, fn(usize) -> bool, bool);

fn table() -> Vec<Row> {
    vec![
        (
            "one tag with a colon",
            Selector {
                tags: strs(&["app:payments"]),
                ..sel()
            },
            |i| i % 4 == 0 || i % 4 == 3,
            true,
        ),
        (
            "two tags ANDed",
            Selector {
                tags: strs(&["app:payments", "owner:pay-core.team"]),
                ..sel()
            },
            |i| (i % 4 == 0 || i % 4 == 3) && i % 5 == 0,
            true,
        ),
        (
            "tag AND NOT tag",
            Selector {
                tags: strs(&["app:payments"]),
                not_tags: strs(&["canary"]),
                ..sel()
            },
            |i| (i % 4 == 0 || i % 4 == 3) && i % 10 != 0,
            true,
        ),
        (
            "only a negation",
            Selector {
                not_tags: strs(&["canary"]),
                ..sel()
            },
            |i| i % 10 != 0,
            true,
        ),
        (
            "role",
            Selector {
                roles: strs(&["web"]),
                ..sel()
            },
            |i| i % 2 == 0,
            true,
        ),
        (
            "two roles",
            Selector {
                roles: strs(&["web", "db"]),
                ..sel()
            },
            |i| i % 6 == 0,
            true,
        ),
        (
            "recipe",
            Selector {
                recipes: strs(&["haproxy"]),
                ..sel()
            },
            |i| i % 6 == 1,
            true,
        ),
        (
            "recipe with ::",
            Selector {
                recipes: strs(&["nginx::default"]),
                ..sel()
            },
            |i| i % 2 == 1,
            true,
        ),
        (
            "environment",
            Selector {
                environment: Some("production".into()),
                ..sel()
            },
            |i| i % 3 == 0,
            true,
        ),
        (
            "environment with a hyphen AND tag",
            Selector {
                environment: Some("prod-eu".into()),
                tags: strs(&["app:search"]),
                ..sel()
            },
            |i| i % 3 == 2 && i % 4 == 1,
            true,
        ),
        (
            "nested attribute",
            Selector {
                attributes: BTreeMap::from([("cloud.region".into(), "eu-west".into())]),
                ..sel()
            },
            |i| i % 2 == 0,
            true,
        ),
        (
            "everything at once",
            Selector {
                tags: strs(&["owner:pay-core.team"]),
                not_tags: strs(&["canary"]),
                roles: strs(&["db"]),
                environment: Some("production".into()),
                attributes: BTreeMap::from([("cloud_region".into(), "us-east".into())]),
                ..sel()
            },
            |i| i % 5 == 0 && i % 10 != 0 && i % 3 == 0 && i % 2 == 1,
            true,
        ),
        (
            "matches nothing",
            Selector {
                tags: strs(&["app:unknown"]),
                ..sel()
            },
            |_| false,
            true,
        ),
        (
            "user text cannot widen the query",
            Selector {
                // No whitespace: goiardi's parser rejects an escaped space
                // (`\ `, valid Lucene that a real Chef server accepts).
                tags: strs(&["app:payments||chef_environment:staging"]),
                environment: Some("production)||(tags:canary".into()),
                ..sel()
            },
            |_| false,
            true,
        ),
        (
            "raw query",
            Selector {
                query: Some("role:db OR recipe:haproxy".into()),
                ..sel()
            },
            |i| i % 3 == 0 || i % 6 == 1,
            false,
        ),
        (
            "raw query ANDed with fields",
            Selector {
                query: Some(r"chef_environment:staging OR chef_environment:prod\-eu".into()),
                tags: strs(&["canary"]),
                ..sel()
            },
            |i| i % 3 != 0 && i % 10 == 0,
            false,
        ),
    ]
}

fn expected(pred: fn(usize) -> bool) -> Vec<String> {
    (0..NODES).filter(|&i| pred(i)).map(name).collect()
}

async fn check(inv: &InventorySource, static_file: bool) -> Result<()> {
    for (what, selector, pred, on_static) in table() {
        let got = inv.resolve(&selector).await;
        if static_file && !on_static {
            assert!(
                matches!(got, Err(InventoryError::RawQueryUnsupported)),
                "{what}: {got:?}"
            );
            continue;
        }
        let resolution = got.map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
        let names: Vec<String> = resolution.hosts.iter().map(|h| h.name.clone()).collect();
        assert_eq!(names, expected(pred), "{what}: query {}", resolution.query);
    }
    // Empty selectors are refused by both, and so are wildcards in values
    // (goiardi would honour even an escaped `*`).
    assert!(matches!(
        inv.resolve(&sel()).await,
        Err(InventoryError::EmptySelector)
    ));
    for wild in ["*", "app:*", "app:pay?ents"] {
        let s = Selector {
            tags: strs(&[wild]),
            ..sel()
        };
        let got = inv.resolve(&s).await;
        assert!(
            matches!(got, Err(InventoryError::InvalidSelector(_))),
            "{wild}: {got:?}"
        );
    }
    // Host details travel (partial search on Chef, the file on static).
    let r = inv
        .resolve(&Selector {
            tags: strs(&["owner:pay-core.team"]),
            roles: strs(&["db"]),
            ..sel()
        })
        .await?;
    let n15: &Host = r
        .hosts
        .iter()
        .find(|h| h.name == "node-15")
        .expect("node-15");
    assert_eq!(n15.address, "10.0.0.15");
    assert_eq!(n15.fqdn.as_deref(), Some("node-15.example.com"));
    assert_eq!(n15.hostname.as_deref(), Some("node-15"));
    assert_eq!(n15.environment.as_deref(), Some("production"));
    assert_eq!(n15.tags, strs(&["app:payments", "owner:pay-core.team"]));
    assert_eq!(n15.roles, strs(&["db"]));
    // No ipaddress: the fqdn is the address.
    let r = inv
        .resolve(&Selector {
            tags: strs(&["app:payments"]),
            ..sel()
        })
        .await?;
    let n07 = r
        .hosts
        .iter()
        .find(|h| h.name == "node-07")
        .expect("node-07");
    assert_eq!(n07.address, "node-07.example.com");
    Ok(())
}

#[tokio::test]
async fn chef_answers_the_selector_table() -> Result<()> {
    let g = Goiardi::start().await?;
    let client = g.admin_client()?;
    let docs = fleet()
        .into_iter()
        .map(|n| {
            let mut run_list: Vec<String> = n.roles.iter().map(|r| format!("role[{r}]")).collect();
            run_list.extend(n.recipes.iter().map(|r| format!("recipe[{r}]")));
            let mut automatic = json!({"fqdn": n.fqdn, "hostname": n.hostname});
            if let Some(ip) = &n.ip {
                automatic["ipaddress"] = json!(ip);
            }
            node_document(
                &n.name,
                n.env,
                &run_list,
                json!({"tags": n.tags, "cloud": {"region": n.region}}),
                automatic,
            )
        })
        .collect();
    let took = create_nodes(&client, docs, 8).await?;
    eprintln!("created {NODES} nodes in {took:?}");
    wait_indexed(&client, "*:*", NODES, Duration::from_secs(10)).await?;
    check(
        &InventorySource::Chef(ChefInventory::from_client(client)),
        false,
    )
    .await
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

fn list(v: &[impl AsRef<str>]) -> String {
    let items: Vec<String> = v.iter().map(|s| quote(s.as_ref())).collect();
    format!("[{}]", items.join(", "))
}

fn write_toml(path: &Path) -> Result<()> {
    let mut out = String::new();
    for n in fleet() {
        writeln!(out, "[[hosts]]\nname = {}", quote(&n.name))?;
        if let Some(ip) = &n.ip {
            writeln!(out, "address = {}", quote(ip))?;
        }
        writeln!(
            out,
            "fqdn = {}\nhostname = {}",
            quote(&n.fqdn),
            quote(&n.hostname)
        )?;
        writeln!(out, "environment = {}", quote(n.env))?;
        writeln!(out, "tags = {}\nroles = {}", list(&n.tags), list(&n.roles))?;
        writeln!(out, "recipes = {}", list(&n.recipes))?;
        writeln!(
            out,
            "attributes = {{ \"cloud.region\" = {} }}\n",
            quote(n.region)
        )?;
    }
    std::fs::write(path, out)?;
    Ok(())
}

fn write_yaml(path: &Path) -> Result<()> {
    let mut out = String::from("hosts:\n");
    for n in fleet() {
        writeln!(out, "  - name: {}", quote(&n.name))?;
        if let Some(ip) = &n.ip {
            writeln!(out, "    address: {}", quote(ip))?;
        }
        writeln!(
            out,
            "    fqdn: {}\n    hostname: {}",
            quote(&n.fqdn),
            quote(&n.hostname)
        )?;
        writeln!(out, "    environment: {}", quote(n.env))?;
        writeln!(out, "    tags:")?;
        for t in &n.tags {
            writeln!(out, "      - {}", quote(t))?;
        }
        writeln!(
            out,
            "    roles: {}\n    recipes: {}",
            list(&n.roles),
            list(&n.recipes)
        )?;
        writeln!(
            out,
            "    attributes:\n      cloud_region: {}",
            quote(n.region)
        )?;
    }
    std::fs::write(path, out)?;
    Ok(())
}

#[tokio::test]
async fn static_toml_answers_the_selector_table() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("inventory.toml");
    write_toml(&path)?;
    let inv = StaticInventory::load(&path)?;
    assert_eq!(inv.len(), NODES);
    check(&InventorySource::Static(inv), true).await
}

#[tokio::test]
async fn static_yaml_answers_the_selector_table() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("inventory.yaml");
    write_yaml(&path)?;
    let inv = StaticInventory::load(&path)?;
    assert_eq!(inv.len(), NODES);
    check(&InventorySource::Static(inv), true).await
}

#[test]
fn static_example_files_load_and_agree() -> Result<()> {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/chef");
    let s = Selector {
        tags: strs(&["app:payments"]),
        ..sel()
    };
    let toml = StaticInventory::load(&fixtures.join("inventory.toml"))?.resolve_now(&s)?;
    let yaml = StaticInventory::load(&fixtures.join("inventory.yml"))?.resolve_now(&s)?;
    assert_eq!(toml.hosts, yaml.hosts);
    assert!(!toml.hosts.is_empty());
    // Bad files say which file and what is wrong.
    let dir = tempfile::tempdir()?;
    for (file, text, needle) in [
        (
            "dup.toml",
            "[[hosts]]\nname='a'\n[[hosts]]\nname='a'\n",
            "listed twice",
        ),
        (
            "typo.yaml",
            "hosts:\n  - name: a\n    tag: [x]\n",
            "unknown field",
        ),
        ("inv.json", "{}", ".toml, .yaml or .yml"),
    ] {
        let p = dir.path().join(file);
        std::fs::write(&p, text)?;
        let err = StaticInventory::load(&p).unwrap_err().to_string();
        assert!(err.contains(file) && err.contains(needle), "{err}");
    }
    Ok(())
}
