//! Enrollment: one request and one response over TLS/TCP (the agent has no
//! certificate yet, so it can't use the mutual-TLS QUIC endpoint). The agent
//! verifies the controller against the CA it was given.

use serde::{Deserialize, Serialize};

/// Agent → controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollRequest {
    /// Protocol version the agent speaks.
    pub protocol_version: u32,
    /// The enrollment token (secret; never logged).
    pub token: String,
    /// The node name to be certified (the Chef node name).
    pub node: String,
    /// PEM PKCS#10 request for a key generated on the VM.
    pub csr_pem: String,
}

/// Controller → agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EnrollResponse {
    /// Enrolled.
    Accepted {
        /// The agent's certificate, PEM.
        cert_pem: String,
        /// The CA certificate, PEM.
        ca_pem: String,
        /// Expiry of the certificate, Unix seconds.
        not_after_unix: i64,
    },
    /// Refused, with a reason the operator can act on.
    Refused {
        /// Why.
        reason: String,
    },
}
