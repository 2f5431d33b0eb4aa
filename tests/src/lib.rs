//! Test harness: starts real processes and real servers on loopback, each in
//! its own temp dir with free ports, so tests can run in parallel.
pub mod browser;
pub mod fleet;
pub mod goiardi;
pub mod haproxy;
pub mod postgres;
