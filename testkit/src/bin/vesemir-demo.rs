//! `vesemir-demo`: a controller, agents, HAProxy and sample apps on this
//! machine, then a real rolling deploy. `vesemir demo` runs this binary, so
//! the `vesemir` users install carries none of the demo's test hooks.

use clap::Parser;
use std::process::ExitCode;
use vesemir_testkit::demo::{self, DemoArgs};

fn main() -> ExitCode {
    let args = DemoArgs::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(demo::run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
