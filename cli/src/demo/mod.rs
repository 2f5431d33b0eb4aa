//! `vesemir demo`: runs `vesemir-demo` (built from the testkit crate, shipped
//! next to `vesemir-controller` in the controller package), so this binary
//! carries none of the demo's process control or test hooks. The demo
//! binary is looked for next to this executable, then on `PATH`.

use anyhow::{Context, Result};
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

/// The binary `vesemir demo` runs.
pub const DEMO_BIN: &str = "vesemir-demo";

/// `vesemir demo` arguments: all of them go to `vesemir-demo`
/// (`vesemir demo -- --help` lists them).
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Arguments for vesemir-demo (e.g. --app-hosts 4, --keep, --no-haproxy).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    pub args: Vec<OsString>,
}

/// Where `vesemir-demo` is: next to the running executable, else on `PATH`.
pub fn find_demo() -> Option<PathBuf> {
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join(DEMO_BIN)))
        .filter(|p| p.is_file());
    sibling.or_else(|| {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join(DEMO_BIN))
                .find(|p| p.is_file())
        })
    })
}

/// Replaces this process with `vesemir-demo ARGS` (so Ctrl-C and the exit
/// code are the demo's own); only returns on error.
pub async fn run(args: DemoArgs) -> Result<ExitCode> {
    let bin = find_demo().with_context(|| {
        format!(
            "{DEMO_BIN} not found next to this executable or on PATH: from a checkout run \
             `cargo build --workspace --bins`; from packages install vesemir-controller, \
             which ships it in /usr/bin"
        )
    })?;
    let err = Command::new(&bin).args(&args.args).exec();
    Err(err).with_context(|| format!("cannot run {}", bin.display()))
}
