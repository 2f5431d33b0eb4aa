//! `vesemir-demo` (what `vesemir demo` runs): a local fleet and a real
//! rolling deploy, in one command.
//!
//! - [`fleet`]: [`LocalFleet`], the controller + agents + HAProxy + sample
//!   apps on loopback that the demo and the end-to-end tests build on.
//! - [`traffic`]: the client that sends requests through HAProxy during a
//!   deploy, and the sampler of servers out of rotation.
//! - [`haproxy`]: the demo's HAProxy config and its admin socket.
//! - [`artifacts`]: changeset tarballs and the HTTP server that serves them.
//!
//! The demo deploys v1 (which starts the apps: before it there is no
//! release), then v2 rolling at concurrency 2 while the traffic client
//! runs, and reports how many requests failed. Everything it starts, it
//! stops, also on error and Ctrl-C.

pub mod artifacts;
pub mod fleet;
pub mod haproxy;
mod procs;
pub mod traffic;

pub use crate::procs::{free_port, pid_alive};
pub use artifacts::Changeset;
pub use fleet::{AppHost, HaproxyMode, LocalFleet, LocalFleetBuilder};
pub use procs::Binaries;

use anyhow::{bail, Result};
use serde_json::Value;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use traffic::{RotationSampler, Traffic};

/// `vesemir-demo` flags (`vesemir demo` passes its arguments on).
#[derive(clap::Parser, Debug)]
#[command(
    name = "vesemir-demo",
    version,
    about = "Run the whole thing locally: a controller, agents, HAProxy, a rolling deploy"
)]
pub struct DemoArgs {
    /// Number of app hosts.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=20))]
    pub app_hosts: u16,
    /// Build everything in DIR (must be empty or new; kept afterwards)
    /// instead of a temporary directory.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Keep the directory (logs, database, releases) and print where it is.
    #[arg(long)]
    pub keep: bool,
    /// Run without HAProxy even if it is installed.
    #[arg(long)]
    pub no_haproxy: bool,
    /// Where the vesemir binaries are (default: next to this one).
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
}

/// How long one deploy of the demo may take.
const DEPLOY_TIMEOUT: Duration = Duration::from_secs(180);

/// Runs the demo.
pub async fn run(args: DemoArgs) -> Result<ExitCode> {
    println!("vesemir demo: a controller, {} app hosts and a load balancer on this machine, then a rolling deploy.", args.app_hosts);
    let haproxy_mode = if args.no_haproxy {
        HaproxyMode::Off
    } else if haproxy::installed() {
        HaproxyMode::Required
    } else {
        println!("haproxy is not installed, so the demo runs without the traffic steps.");
        println!(
            "  To see zero failed requests during a rolling deploy: apt-get install -y haproxy"
        );
        HaproxyMode::Off
    };
    let mut builder = LocalFleet::builder()
        .app_hosts(args.app_hosts as usize)
        .haproxy(haproxy_mode)
        .keep(args.keep)
        .verbose(true);
    if let Some(d) = &args.dir {
        builder = builder.dir(d);
    }
    if let Some(d) = &args.bin_dir {
        builder = builder.bin_dir(d);
    }
    let keep = args.keep || args.dir.is_some();
    let started = Instant::now();

    // Ctrl-C at any point drops the fleet, which stops everything.
    let outcome = tokio::select! {
        r = async {
            println!("\n==> starting the fleet");
            let mut fleet = builder.start().await?;
            let r = demo(&fleet).await;
            if r.is_err() {
                eprintln!("{}", fleet.logs(15));
            }
            println!("\n==> stopping everything the demo started");
            fleet.shutdown();
            if keep {
                println!("kept: {}", fleet.dir().display());
            }
            r
        } => r,
        _ = tokio::signal::ctrl_c() => {
            println!("\ninterrupted: stopped everything the demo started");
            return Ok(ExitCode::from(130));
        }
    };
    let ok = outcome?;
    println!("demo took {:.1}s", started.elapsed().as_secs_f64());
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The demo itself, on a started fleet. True if both deploys succeeded and
/// no request failed.
async fn demo(fleet: &LocalFleet) -> Result<bool> {
    let v1 = fleet.publish("1.0.0")?;
    let v2 = fleet.publish("2.0.0")?;
    println!(
        "changesets: {} and {} served from {}",
        v1.version,
        v2.version,
        v1.url.rsplit_once('/').map(|x| x.0).unwrap_or("")
    );

    println!(
        "\n==> deploy {} (first release: starts the apps)",
        v1.version
    );
    let (d1, t1) = deploy_live(fleet, &v1).await?;
    let s1 = d1["status"].as_str().unwrap_or("").to_string();
    if s1 != "succeeded" {
        print_summary(fleet).await;
        println!("deploy {} ended {s1}: {}", v1.version, d1["error"]);
        return Ok(false);
    }
    let haproxy = fleet.haproxy().cloned();
    if haproxy.is_some() {
        fleet.wait_all_in_rotation(Duration::from_secs(20)).await?;
        println!("all {} servers in rotation in HAProxy", fleet.hosts().len());
    }

    println!(
        "\n==> rolling deploy of {} at concurrency 2{}",
        v2.version,
        if haproxy.is_some() {
            ", while a client sends requests through HAProxy"
        } else {
            ""
        }
    );
    let watchers = haproxy.as_ref().map(|h| {
        (
            Traffic::start(h.frontend, 4, Duration::from_millis(5)),
            RotationSampler::start(
                h.socket.clone(),
                h.backend.clone(),
                Duration::from_millis(50),
            ),
        )
    });
    let r = deploy_live(fleet, &v2).await;
    let watched = match watchers {
        Some((t, s)) => Some((t.stop().await, s.stop().await)),
        None => None,
    };
    let (d2, t2) = r?;
    print_summary(fleet).await;
    let s2 = d2["status"].as_str().unwrap_or("");
    println!(
        "\n{}: {s1} in {:.1}s; {}: {s2} in {:.1}s (rolling, concurrency 2)",
        v1.version,
        t1.as_secs_f64(),
        v2.version,
        t2.as_secs_f64()
    );
    let mut ok = s2 == "succeeded";
    match watched {
        Some((traffic, rotation)) => {
            println!("requests: {} sent, {} failed", traffic.sent, traffic.failed);
            let versions: Vec<String> = traffic
                .versions
                .iter()
                .map(|(v, n)| format!("{v}: {n}"))
                .collect();
            println!("  answers by version: {}", versions.join(", "));
            for e in &traffic.errors {
                println!("  failure: {e}");
            }
            println!(
                "max servers out of rotation: {} (max_unavailable 2; {} samples of `show servers state`)",
                rotation.max_out, rotation.samples
            );
            ok &= traffic.failed == 0;
        }
        None => println!("requests: none sent (no HAProxy)"),
    }
    Ok(ok)
}

/// `vesemir deploy … --follow` for `changeset`: the CLI's own live view.
/// Returns the deployment as stored once it ended, and how long it took.
async fn deploy_live(fleet: &LocalFleet, changeset: &Changeset) -> Result<(Value, Duration)> {
    #[derive(clap::Parser)]
    #[command(name = "vesemir deploy")]
    struct DeployCommand {
        #[command(flatten)]
        args: vesemir_cli::deploy::DeployArgs,
    }
    let started = Instant::now();
    let mut argv = vec!["deploy".to_string()];
    argv.extend(fleet.deploy_flags(changeset));
    argv.push("--follow".into());
    println!("$ vesemir {}", argv.join(" "));
    let cmd = <DeployCommand as clap::Parser>::try_parse_from(&argv)?;
    let code = tokio::time::timeout(
        DEPLOY_TIMEOUT,
        vesemir_cli::deploy::deploy(fleet.api(), cmd.args),
    )
    .await
    .map_err(|_| anyhow::anyhow!("the deploy did not finish within {DEPLOY_TIMEOUT:?}"))??;
    let took = started.elapsed();
    let list: Value = fleet
        .api()
        .json(fleet.api().req(
            reqwest::Method::GET,
            &format!(
                "/v1/deployments?application={}&environment={}&limit=1",
                fleet::APP,
                fleet::ENV
            ),
        ))
        .await?;
    let id = list["deployments"][0]["id"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no deployment listed after the deploy: {list}"))?;
    let d = fleet.wait_deployment(id, Duration::from_secs(30)).await?;
    if (code == ExitCode::SUCCESS) != (d["status"] == "succeeded") {
        bail!(
            "`vesemir deploy` exited {code:?} but deployment {id} is {}",
            d["status"]
        );
    }
    Ok((d, took))
}

/// What each app host serves now (`GET /` on its port).
async fn print_summary(fleet: &LocalFleet) {
    let versions = fleet.versions().await;
    let serving: Vec<String> = fleet
        .hosts()
        .iter()
        .zip(versions)
        .map(|(h, v)| format!("{} {}", h.name, v.unwrap_or_else(|| "down".into())))
        .collect();
    println!("serving now (GET / on each app): {}", serving.join(" · "));
}
