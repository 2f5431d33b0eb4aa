//! `vesemir inventory resolve`: a dry look at which hosts a selector finds
//! and whether an agent answers for each.

use crate::client::Api;
use crate::{print_json, Output};
use anyhow::Result;
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use std::process::ExitCode;
use vesemir_api::{Resolved, Selector};

/// Selector flags (Chef search or static inventory).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SelectorArgs {
    /// Node tag that must be present (repeatable), e.g. app:payments.
    #[arg(long = "tags", alias = "tag")]
    pub tags: Vec<String>,
    /// Node tag that must be absent (repeatable).
    #[arg(long = "not-tag")]
    pub not_tags: Vec<String>,
    /// Role in the run list (repeatable).
    #[arg(long = "role")]
    pub roles: Vec<String>,
    /// Recipe in the run list (repeatable).
    #[arg(long = "recipe")]
    pub recipes: Vec<String>,
    /// Chef environment of the nodes.
    #[arg(long = "env")]
    pub environment: Option<String>,
    /// Attribute equality K=V (repeatable; nested keys with '.').
    #[arg(long = "attr", value_name = "K=V")]
    pub attributes: Vec<String>,
    /// Raw Lucene query, ANDed with the rest (Chef only).
    #[arg(long = "query")]
    pub query: Option<String>,
}

impl SelectorArgs {
    /// The selector as the API takes it.
    pub fn to_selector(&self) -> Result<Selector> {
        Ok(Selector {
            tags: self.tags.clone(),
            not_tags: self.not_tags.clone(),
            roles: self.roles.clone(),
            recipes: self.recipes.clone(),
            environment: self.environment.clone(),
            attributes: crate::agents::parse_vars(&self.attributes)?,
            query: self.query.clone(),
        })
    }
}

/// `vesemir inventory …`.
#[derive(clap::Subcommand, Debug)]
pub enum InventoryCmd {
    /// Show the hosts a selector matches and their agents' state.
    Resolve {
        #[command(flatten)]
        selector: SelectorArgs,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

/// Runs `vesemir inventory …`.
pub async fn run(api: &Api, cmd: InventoryCmd) -> Result<ExitCode> {
    let InventoryCmd::Resolve { selector, output } = cmd;
    let v: Resolved = api
        .json(
            api.req(reqwest::Method::POST, "/v1/inventory/resolve")
                .json(&selector.to_selector()?),
        )
        .await?;
    if output == Output::Json {
        print_json(&v);
        return Ok(ExitCode::SUCCESS);
    }
    let hosts = &v.hosts;
    println!("query: {}", v.query);
    if hosts.is_empty() {
        println!("no hosts match");
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    t.set_header(vec!["NAME", "ADDRESS", "ENVIRONMENT", "AGENT"]);
    for h in hosts {
        let agent = match h.agent.as_str() {
            "none" => "no agent",
            s => s,
        };
        t.add_row(vec![
            h.name.as_str(),
            h.address.as_str(),
            h.environment.as_deref().unwrap_or("-"),
            agent,
        ]);
    }
    println!("{t}");
    println!("{} host(s)", hosts.len());
    Ok(ExitCode::SUCCESS)
}
