//! The deployment request and its validation now live in the `vesemir-api`
//! crate (the one place wire types are defined); re-exported here so
//! `crate::deploy::request::…` paths keep working.

pub use vesemir_api::deploy::*;
