//! The `vesemir` command line as a library: the binary parses arguments and
//! calls into these modules.
//!
//! - [`client`] — finding the controller, HTTP calls, API errors.
//! - [`agents`] — `vesemir agents …`.
//! - [`inventory`] — `vesemir inventory resolve` and the selector flags.
//! - [`live`] — rendering job events live.
//! - [`deploy`] — `vesemir deploy`, `deployments …`, `rollback`.
//! - [`demo`] — `vesemir demo`, which runs `vesemir-demo` (the testkit).
pub mod agents;
pub mod client;
pub mod demo;
pub mod deploy;
pub mod inventory;
pub mod live;

use clap::ValueEnum;

/// Output format of list/show commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    /// Human-readable table.
    #[default]
    Table,
    /// JSON.
    Json,
}

/// `--output json`: an API answer as pretty JSON, keys sorted (as the CLI
/// has always printed them, whatever order the type declares).
pub fn print_json(v: &impl serde::Serialize) {
    let text = serde_json::to_value(v).and_then(|v| serde_json::to_string_pretty(&v));
    println!("{}", text.expect("API types serialize"));
}
