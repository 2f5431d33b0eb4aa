//! Wire types and framing shared by the vesemir controller and agent.
//!
//! Layout:
//! - [`frame`]: length-prefixed bincode frames with a hard size limit, checked
//!   before anything is allocated.
//! - [`handshake`]: the first message on a connection, version negotiation.
//! - [`control`]: the long-lived control stream (heartbeats with facts,
//!   certificate renewal, close reasons).
//! - [`job`]: one job per bidirectional stream: a request in, events out.
//! - [`haproxy`]: the HAProxy runtime API operations and their typed
//!   replies, carried by HAProxy jobs.
//! - [`enroll`]: the one-shot enrollment exchange (token + CSR → certificate).
//!
//! Architecture invariant: this crate does no IO and reads no clock. Callers
//! pass bytes in and get values out, so everything here is testable with
//! plain unit tests.
#![warn(missing_docs)]

pub mod control;
pub mod enroll;
pub mod frame;
pub mod handshake;
pub mod haproxy;
pub mod job;

pub use frame::{decode, encode, FrameDecoder, FrameError, MAX_FRAME_LEN};
pub use handshake::{check_version, Hello, VersionError, Welcome, PROTOCOL_VERSION};

/// ALPN for the agent ↔ controller QUIC connection.
pub const ALPN: &[u8] = b"vesemir/1";
/// ALPN for the TLS-over-TCP enrollment exchange (same port number as QUIC, TCP).
pub const ENROLL_ALPN: &[u8] = b"vesemir-enroll/1";
