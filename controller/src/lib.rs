//! vesemir controller library.
//!
//! Layout:
//! - [`server`] — `init` and `serve`, what the binary calls.
//! - [`config`] — `controller.toml`.
//! - [`pki`] — the controller's CA; signs agents' CSRs.
//! - [`store`] — sqlx store (the only module that writes SQL).
//! - [`fleet`] — live agent sessions, revocation, batched last-seen, job streams.
//! - [`quic`] — the agents' mutual-TLS QUIC endpoint and control stream.
//! - [`enroll`] — token + CSR enrollment over TLS/TCP.
//! - [`http`] — the HTTP API (handlers in one module tree).
//! - [`inventory`] — Chef server search and static inventories.
//! - [`deploy`] — rolling deployments: validation, plan, orchestrator, logs.
//! - [`freeze`] — freeze windows of `[[freeze]]`: 409 unless an admin overrides.
//! - [`notify`] — signed webhooks, bounded background sender.
//! - [`metrics`] — the Prometheus registry behind `/metrics`.
//! - [`ui`] — the fleet dashboard at `/ui`, compiled in.
pub mod config;
pub mod deploy;
pub mod enroll;
pub mod events;
pub mod fleet;
pub mod freeze;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod inventory;
pub mod metrics;
pub mod notify;
pub mod pki;
pub mod quic;
pub mod server;
pub mod store;
pub mod ui;
