//! vesemir agent library.
pub mod haproxy;
pub mod journal;
pub mod runner;
