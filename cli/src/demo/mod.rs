//! `vesemir demo`: a local fleet and a real rolling deploy.
//! (Being built.)

use anyhow::Result;
use std::process::ExitCode;

/// `vesemir demo` flags.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {}

/// Runs the demo.
pub async fn run(_args: DemoArgs) -> Result<ExitCode> {
    anyhow::bail!("vesemir demo is being built")
}
