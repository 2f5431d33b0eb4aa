//! A fleet of 2,500 nodes with 1,200 matching: every match comes back, once,
//! despite goiardi's random row order in partial search.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;
use vesemir_controller::inventory::chef::node_document;
use vesemir_controller::inventory::{ChefInventory, Selector};
use vesemir_testkit::goiardi::{create_nodes, wait_indexed, Goiardi};

const TOTAL: usize = 2_500;
const PARALLEL: usize = 16;

fn name(i: usize) -> String {
    format!("vm-{i:05}")
}

/// 12 of every 25 nodes match: 1,200 of 2,500, interleaved.
fn matches(i: usize) -> bool {
    i % 25 < 12
}

#[tokio::test]
async fn all_1200_of_2500_come_back_once() -> Result<()> {
    let g = Goiardi::start().await?;
    let client = g.admin_client()?;
    let docs = (0..TOTAL)
        .map(|i| {
            let app = if matches(i) { "app:big" } else { "app:other" };
            node_document(
                &name(i),
                "production",
                &["role[web]".to_string()],
                json!({"tags": [app]}),
                json!({"ipaddress": format!("10.1.{}.{}", i / 256, i % 256)}),
            )
        })
        .collect();
    let took = create_nodes(&client, docs, PARALLEL).await?;
    eprintln!(
        "created {TOTAL} nodes in {took:?} ({:.0}/s, {PARALLEL} in flight)",
        TOTAL as f64 / took.as_secs_f64()
    );
    wait_indexed(
        &client,
        "tags:app\\:other",
        TOTAL - 1_200,
        Duration::from_secs(60),
    )
    .await?;
    wait_indexed(&client, "tags:app\\:big", 1_200, Duration::from_secs(60)).await?;

    let want: Vec<String> = (0..TOTAL).filter(|&i| matches(i)).map(name).collect();
    assert_eq!(want.len(), 1_200);
    let selector = Selector {
        tags: vec!["app:big".into()],
        environment: Some("production".into()),
        ..Default::default()
    };
    // Default: one big page. Small first page: the page comes back full
    // (500, then 1,000), is fetched again bigger, never paged with `start`.
    for first_page in [None, Some(500)] {
        let c = match first_page {
            Some(rows) => client.clone().with_first_page_rows(rows),
            None => client.clone(),
        };
        let started = Instant::now();
        let r = ChefInventory::from_client(c).resolve(&selector).await?;
        eprintln!(
            "resolved {} hosts in {:?} (first page {first_page:?})",
            r.hosts.len(),
            started.elapsed()
        );
        let names: Vec<String> = r.hosts.iter().map(|h| h.name.clone()).collect();
        assert_eq!(
            names.iter().collect::<BTreeSet<_>>().len(),
            names.len(),
            "duplicates"
        );
        assert_eq!(names, want);
        assert!(r.hosts.iter().all(|h| h.address.starts_with("10.1.")));
    }
    // The server itself returned each row once, too.
    let rows = client
        .partial_search(
            "node",
            "tags:app\\:big",
            &[("name".to_string(), vec!["name".to_string()])].into(),
        )
        .await?;
    assert_eq!(rows.len(), 1_200);
    Ok(())
}
