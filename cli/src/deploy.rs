//! `vesemir deploy`, `vesemir deployments …`, `vesemir rollback`.
//! (Being built: see docs/API.md for the calls it makes.)

use crate::client::Api;
use anyhow::Result;
use std::process::ExitCode;

/// `vesemir deploy` flags.
#[derive(clap::Args, Debug)]
pub struct DeployArgs {}

/// `vesemir rollback` flags.
#[derive(clap::Args, Debug)]
pub struct RollbackArgs {}

/// `vesemir deployments …`.
#[derive(clap::Subcommand, Debug)]
pub enum DeploymentsCmd {}

/// Runs `vesemir deploy`.
pub async fn deploy(_api: &Api, _args: DeployArgs) -> Result<ExitCode> {
    anyhow::bail!("vesemir deploy is being built")
}

/// Runs `vesemir deployments …`.
pub async fn deployments(_api: &Api, cmd: DeploymentsCmd) -> Result<ExitCode> {
    match cmd {}
}

/// Runs `vesemir rollback`.
pub async fn rollback(_api: &Api, _args: RollbackArgs) -> Result<ExitCode> {
    anyhow::bail!("vesemir rollback is being built")
}
