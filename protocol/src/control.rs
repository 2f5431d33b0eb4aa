//! The control stream: the first bidirectional stream an agent opens on its
//! connection. After the [`crate::Hello`]/[`crate::Welcome`] exchange the
//! agent sends [`AgentMessage`]s and the controller sends
//! [`ControllerMessage`]s until the connection closes.

use serde::{Deserialize, Serialize};

/// What the agent reports about its VM with every heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Facts {
    /// The agent's release.
    pub agent_version: String,
    /// The VM's hostname.
    pub hostname: String,
    /// OS name and version (`PRETTY_NAME` of os-release).
    pub os: String,
    /// Kernel release.
    pub kernel: String,
    /// Seconds since boot.
    pub uptime_secs: u64,
    /// 1, 5 and 15 minute load averages.
    pub load: [f64; 3],
    /// Free bytes on the filesystem of the agent's data dir.
    pub disk_free_bytes: u64,
    /// Ids of the jobs running now.
    pub running_jobs: Vec<String>,
    /// The playbooks in the agent's playbook directory, by name, so the
    /// controller can check a request's `playbook` against the hosts of a
    /// plan and show drift (the same name with different contents).
    pub playbooks: Vec<PlaybookInfo>,
}

/// One playbook an agent has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PlaybookInfo {
    /// File name in the playbook directory, e.g. `deploy.yml`.
    pub name: String,
    /// SHA-256 of its contents, hex.
    pub sha256: String,
}

/// Agent → controller on the control stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AgentMessage {
    /// Liveness plus current facts; sent every `heartbeat_secs`.
    Heartbeat(Facts),
    /// Certificate renewal: a CSR for a key generated on the VM.
    RenewRequest {
        /// PEM-encoded PKCS#10 request.
        csr_pem: String,
    },
}

/// Controller → agent on the control stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ControllerMessage {
    /// The renewed certificate for the last [`AgentMessage::RenewRequest`].
    Renewed {
        /// PEM-encoded certificate.
        cert_pem: String,
    },
    /// The renewal was refused; the agent keeps its current certificate.
    RenewRefused {
        /// Why, for the agent's log.
        reason: String,
    },
}

/// Why a connection was closed, sent as the QUIC application close code so
/// the peer can log it and choose its backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CloseReason {
    /// Orderly shutdown (controller stopping); reconnect later.
    Shutdown,
    /// The agent's certificate was revoked; do not hammer, back off to the cap.
    Revoked,
    /// The peers speak different protocol versions.
    VersionMismatch,
    /// The peer sent something that is not our protocol.
    ProtocolViolation,
    /// The node name in the hello does not match the certificate.
    IdentityMismatch,
    /// A newer connection for the same node replaced this one.
    Superseded,
}

impl CloseReason {
    /// The QUIC application error code for this reason.
    pub fn code(self) -> u32 {
        match self {
            CloseReason::Shutdown => 0,
            CloseReason::Revoked => 1,
            CloseReason::VersionMismatch => 2,
            CloseReason::ProtocolViolation => 3,
            CloseReason::IdentityMismatch => 4,
            CloseReason::Superseded => 5,
        }
    }

    /// The reason for a QUIC application error code, if it is one of ours.
    pub fn from_code(code: u64) -> Option<Self> {
        Some(match code {
            0 => CloseReason::Shutdown,
            1 => CloseReason::Revoked,
            2 => CloseReason::VersionMismatch,
            3 => CloseReason::ProtocolViolation,
            4 => CloseReason::IdentityMismatch,
            5 => CloseReason::Superseded,
            _ => return None,
        })
    }

    /// Short human text, also sent as the close reason bytes.
    pub fn text(self) -> &'static str {
        match self {
            CloseReason::Shutdown => "controller shutting down",
            CloseReason::Revoked => "agent certificate revoked",
            CloseReason::VersionMismatch => "protocol version mismatch",
            CloseReason::ProtocolViolation => "protocol violation",
            CloseReason::IdentityMismatch => "node name does not match certificate",
            CloseReason::Superseded => "replaced by a newer connection of the same agent",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_round_trip() {
        for r in [
            CloseReason::Shutdown,
            CloseReason::Revoked,
            CloseReason::VersionMismatch,
            CloseReason::ProtocolViolation,
            CloseReason::IdentityMismatch,
            CloseReason::Superseded,
        ] {
            assert_eq!(CloseReason::from_code(r.code() as u64), Some(r));
        }
        assert_eq!(CloseReason::from_code(99), None);
    }
}
