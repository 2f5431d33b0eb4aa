//! vesemir benchmarks and the fleet simulator.
//!
//! - [`sim`]: N simulated agents in one process over the real protocol.
//! - [`harness`]: what the benchmarks start (controller with a static
//!   inventory, real agents, HAProxy, sshd for Ansible) and measure.
//!
//! The `vesemir-bench` binary runs the figures; `bench/run` is the one
//! command that writes `bench/RESULTS.md`.
pub mod figures;
pub mod harness;
pub mod report;
pub mod sim;
