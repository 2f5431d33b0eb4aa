//! vesemir benchmarks.
//!
//! `run`: every figure of `bench/RESULTS.md` (see `bench/README.md`);
//! `bench/run` is the documented way to call it.
//!
//! `chef-resolve`: start a real goiardi (authentication on), create N nodes
//! through the controller's signed Chef client, then time resolving a
//! selector that matches all of them (and one that matches half), as the
//! controller does before a deployment.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use serde_json::json;
use vesemir_controller::inventory::chef::node_document;
use vesemir_controller::inventory::{ChefInventory, Selector};
use vesemir_testkit::goiardi::{create_nodes, wait_indexed, Goiardi};

const USAGE: &str = "usage: vesemir-bench chef-resolve [--nodes N (10000)] [--parallel P (32)] [--runs R (5)]
       vesemir-bench run [--quick] [--runs R (5)] [--only GROUP] [--fresh] [--report-only] [--out FILE (bench/RESULTS.md)]";

/// `--name value` pairs after the subcommand (no parser crate: keeps the
/// lock file untouched and the bench small).
fn flag(args: &[String], name: &str, default: usize) -> Result<usize> {
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => {
            let v = args
                .get(i + 1)
                .ok_or_else(|| anyhow::anyhow!("{name} needs a value\n{USAGE}"))?;
            v.parse()
                .map_err(|_| anyhow::anyhow!("{name} {v:?} is not a number\n{USAGE}"))
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("chef-resolve") => {
            let rest = &args[1..];
            for a in rest.iter().step_by(2) {
                ensure!(
                    ["--nodes", "--parallel", "--runs"].contains(&a.as_str()),
                    "unknown flag {a}\n{USAGE}"
                );
            }
            chef_resolve(
                flag(rest, "--nodes", 10_000)?,
                flag(rest, "--parallel", 32)?,
                flag(rest, "--runs", 5)?.max(1),
            )
            .await
        }
        Some("run") => run(&args[1..]).await,
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(64);
        }
    }
}

fn stats(mut v: Vec<Duration>) -> (Duration, Duration, Duration) {
    v.sort();
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

async fn chef_resolve(nodes: usize, parallel: usize, runs: usize) -> Result<()> {
    let started = Instant::now();
    let g = Goiardi::start().await?;
    println!("goiardi ready on {} in {:?}", g.url(), started.elapsed());
    let mut cfg = g.admin_config(Default::default());
    cfg.timeout = Duration::from_secs(120);
    let client = vesemir_controller::inventory::ChefClient::new(&cfg)?;

    let docs = (0..nodes)
        .map(|i| {
            let half = if i % 2 == 0 { "even" } else { "odd" };
            node_document(
                &format!("bench-{i:06}.example.com"),
                "production",
                &["role[web]".to_string(), "recipe[app::deploy]".to_string()],
                json!({"tags": ["app:bench", format!("half:{half}")]}),
                json!({
                    "ipaddress": format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256),
                    "fqdn": format!("bench-{i:06}.example.com"),
                    "hostname": format!("bench-{i:06}"),
                }),
            )
        })
        .collect();
    let took = create_nodes(&client, docs, parallel).await?;
    println!(
        "created {nodes} nodes in {took:.2?} ({:.0} nodes/s, {parallel} in flight)",
        nodes as f64 / took.as_secs_f64()
    );
    let t = Instant::now();
    wait_indexed(&client, "tags:app\\:bench", nodes, Duration::from_secs(300)).await?;
    println!("all {nodes} searchable after a further {:.2?}", t.elapsed());

    let inventory = ChefInventory::from_client(client);
    let mut report = serde_json::Map::new();
    for (label, selector, want) in [
        (
            "all",
            Selector {
                tags: vec!["app:bench".into()],
                environment: Some("production".into()),
                ..Default::default()
            },
            nodes,
        ),
        (
            "half",
            Selector {
                tags: vec!["app:bench".into(), "half:even".into()],
                roles: vec!["web".into()],
                ..Default::default()
            },
            nodes.div_ceil(2),
        ),
    ] {
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs {
            let t = Instant::now();
            let r = inventory.resolve(&selector).await?;
            times.push(t.elapsed());
            ensure!(
                r.hosts.len() == want,
                "{label}: got {} hosts, want {want}",
                r.hosts.len()
            );
        }
        let (min, median, max) = stats(times);
        println!(
            "resolve {label:>4} ({want} hosts): min {min:.2?}  median {median:.2?}  max {max:.2?}  over {runs} runs"
        );
        report.insert(
            label.to_string(),
            json!({"hosts": want, "min_ms": min.as_millis(), "median_ms": median.as_millis(), "max_ms": max.as_millis()}),
        );
    }
    report.insert("nodes".into(), json!(nodes));
    report.insert("runs".into(), json!(runs));
    report.insert("create_ms".into(), json!(took.as_millis()));
    println!("{}", serde_json::Value::Object(report));
    Ok(())
}

/// `run`: the groups (all, or `--only`), skipping those already measured
/// in this mode unless `--fresh`, then the report.
async fn run(args: &[String]) -> Result<()> {
    use vesemir_bench::figures::{result_path, run_group, Plan, GROUPS};
    let mut quick = false;
    let mut fresh = false;
    let mut report_only = false;
    let mut only: Option<String> = None;
    let mut out = vesemir_bench::harness::bench_dir().join("RESULTS.md");
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--quick" => quick = true,
            "--fresh" => fresh = true,
            "--report-only" => report_only = true,
            "--runs" => i += 1,
            "--only" => {
                i += 1;
                only = args.get(i).cloned();
                ensure!(
                    only.as_deref().is_some_and(|g| GROUPS.contains(&g)),
                    "--only takes one of: {}",
                    GROUPS.join(", ")
                );
            }
            "--out" => {
                i += 1;
                out = args
                    .get(i)
                    .map(Into::into)
                    .ok_or_else(|| anyhow::anyhow!("--out needs a file\n{USAGE}"))?;
            }
            other => anyhow::bail!("unknown flag {other}\n{USAGE}"),
        }
        i += 1;
    }
    let plan = if quick {
        Plan::quick()
    } else {
        Plan::full(flag(args, "--runs", 5)?.max(1))
    };
    let target = vesemir_testkit::fleet::repo().join("target").join("bench");
    let machine_path = target.join(plan.mode).join("machine.json");
    std::fs::create_dir_all(machine_path.parent().expect("dir"))?;
    if (only.is_none() && !report_only) || !machine_path.exists() {
        std::fs::write(
            &machine_path,
            serde_json::to_string_pretty(&vesemir_bench::report::machine())?,
        )?;
    }
    let groups: Vec<&str> = match &only {
        _ if report_only => vec![],
        Some(g) => vec![g.as_str()],
        None => GROUPS.to_vec(),
    };
    let mut failed = Vec::new();
    for g in groups {
        let path = result_path(&target, &plan, g);
        if path.exists() && !fresh && only.is_none() {
            println!(
                "== {g}: measured already ({}); --fresh to redo",
                path.display()
            );
            continue;
        }
        println!("== {g} (load {})", vesemir_bench::figures::load_average());
        let t = Instant::now();
        match run_group(g, &plan, &target).await {
            Ok(v) => println!("== {g} done in {:.0?}: {v}", t.elapsed()),
            Err(e) => {
                println!("== {g} FAILED after {:.0?}: {e:#}", t.elapsed());
                failed.push(g);
            }
        }
    }
    let machine: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&machine_path)?)?;
    let command = if quick {
        "bench/run --quick"
    } else {
        "bench/run"
    };
    std::fs::write(
        &out,
        vesemir_bench::report::render(&target, &plan, &machine, command),
    )?;
    println!("wrote {}", out.display());
    ensure!(failed.is_empty(), "groups failed: {}", failed.join(", "));
    Ok(())
}
