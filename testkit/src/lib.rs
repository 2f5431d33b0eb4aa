//! vesemir's testkit: everything that starts real processes and real servers
//! on loopback for the end-to-end tests, the benchmarks and `vesemir-demo`.
//! Nothing here ships in the `vesemir` binary users install.
//!
//! - [`procs`]: the one process wrapper ([`procs::Proc`]) and the one
//!   [`procs::free_port`]; every child is logged to a file and reaped.
//! - [`fleet`]: a test controller and agents as separate processes, each in
//!   its own temp dir ([`fleet::Controller`], [`fleet::Agent`]).
//! - [`demo`]: [`demo::LocalFleet`], a whole local fleet (controller,
//!   agents, HAProxy, sample apps behind the recording `systemctl`
//!   stand-in), and the demo that `vesemir-demo` runs on it.
//! - [`haproxy`]: a real HAProxy, sample apps and the `systemctl` stand-in
//!   for the agent's HAProxy and service steps.
//! - [`goiardi`]: a real goiardi Chef server.
//! - [`browser`]: headless Chromium through chromedriver.
//! - [`postgres`]: a throwaway PostgreSQL 15 cluster (initdb + pg_ctl).
//!
//! Each helper uses its own temp dir and free ports, so tests run in
//! parallel.
pub mod browser;
pub mod demo;
pub mod fleet;
pub mod goiardi;
pub mod haproxy;
pub mod postgres;
pub mod procs;
