//! vesemir agent library.
//!
//! Layout:
//! - [`enroll`] — `vesemir-agent enroll` (key generated here, CSR + token).
//! - [`identity`] — key/cert/CA on disk, TLS client configs, renewal install.
//! - [`session`] — the QUIC connection to the controller: reconnect with
//!   backoff and jitter, heartbeats with [`facts`], renewal, job streams.
//! - [`jobs`] — serves job streams: playbooks ([`runner`]), HAProxy actions
//!   ([`haproxy`]), outcome queries against the [`journal`].
//! - [`runner`] — the playbook runner and its modules.
//! - [`journal`] — the local job journal (never run a job id twice).
//!
//! Architecture invariant: only the agent runs processes on a VM, and only
//! through [`runner`].
pub mod config;
pub mod enroll;
pub mod facts;
pub mod footprint;
#[doc(hidden)]
pub mod fuzzing;
pub mod haproxy;
pub mod identity;
pub mod jobs;
pub mod journal;
pub mod runner;
pub mod session;
