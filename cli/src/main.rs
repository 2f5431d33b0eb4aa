//! `vesemir`: the command line for developers and SREs. Parses arguments and
//! calls the controller's HTTP API; every list/show takes `--output json`.

use vesemir_cli::{agents, client, demo, deploy, inventory};

use clap::{Parser, Subcommand};
use client::Api;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "vesemir",
    version,
    about = "Deploy changesets to fleets of VMs"
)]
struct Cli {
    /// Controller API URL (else VESEMIR_URL, VESEMIR_CONFIG, ~/.config/vesemir/cli.toml).
    #[arg(long, global = true)]
    url: Option<String>,
    /// API token (else VESEMIR_TOKEN or the config file).
    #[arg(long, global = true, hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enrollment tokens.
    Tokens {
        #[command(subcommand)]
        cmd: TokensCmd,
    },
    /// The fleet of agents.
    Agents {
        #[command(subcommand)]
        cmd: agents::AgentsCmd,
    },
    /// Which hosts a selector finds (Chef or the static inventory).
    Inventory {
        #[command(subcommand)]
        cmd: inventory::InventoryCmd,
    },
    /// Roll a changeset out (follows the deployment live on a terminal).
    Deploy(Box<deploy::DeployArgs>),
    /// Deployments: list, show, logs, cancel.
    Deployments {
        #[command(subcommand)]
        cmd: deploy::DeploymentsCmd,
    },
    /// Deploy the previous successful changeset of an application again.
    Rollback(deploy::RollbackArgs),
    /// Run the whole thing locally: a controller, agents, HAProxy, a rolling deploy.
    Demo(demo::DemoArgs),
}

#[derive(Subcommand)]
enum TokensCmd {
    /// Create an enrollment token; prints the token alone on stdout.
    Create {
        /// Lifetime (e.g. 1h, 30m).
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Number of enrollments it allows.
        #[arg(long, default_value_t = 1)]
        uses: i64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let api = || Api::discover(cli.url.clone(), cli.token.clone());
    match cli.command {
        Command::Tokens {
            cmd: TokensCmd::Create { ttl, uses },
        } => {
            let api = api()?;
            let body = vesemir_api::CreateToken {
                ttl: Some(ttl),
                uses: Some(uses),
            };
            let v: vesemir_api::CreatedToken = api
                .json(api.req(reqwest::Method::POST, "/v1/tokens").json(&body))
                .await?;
            println!("{}", v.token);
            eprintln!(
                "token {} allows {} enrollment(s), expires {}",
                v.id, v.uses, v.expires_at
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Agents { cmd } => agents::run(&api()?, cmd).await,
        Command::Inventory { cmd } => inventory::run(&api()?, cmd).await,
        Command::Deploy(args) => deploy::deploy(&api()?, *args).await,
        Command::Deployments { cmd } => deploy::deployments(&api()?, cmd).await,
        Command::Rollback(args) => deploy::rollback(&api()?, args).await,
        Command::Demo(args) => demo::run(args).await,
    }
}
