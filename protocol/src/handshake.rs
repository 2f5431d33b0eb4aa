//! The version handshake: the first frame on every connection.
//!
//! The agent sends [`Hello`]; the controller answers [`Welcome`] or closes
//! with [`crate::control::CloseReason::VersionMismatch`]. Both sides run
//! [`check_version`] so each can log a clear reason.

use serde::{Deserialize, Serialize};

/// The protocol version this build speaks. Bump on any incompatible change.
///
/// - 2: `JobKind::Attach` (follow a running job by id), `Hello::instance`,
///   `Facts::playbooks`, `Changeset::playbook`.
/// - 3: HAProxy jobs carry [`crate::haproxy::HaproxyOp`] (one op type for
///   both sides) and answer with typed [`crate::job::JobOutput::Haproxy`]
///   replies instead of JSON text in `JobOutcome::output`.
pub const PROTOCOL_VERSION: u32 = 3;

/// Agent → controller, first frame on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol version the agent speaks.
    pub protocol_version: u32,
    /// The agent's release, for the fleet view.
    pub agent_version: String,
    /// The node name the agent believes it is (must match its certificate).
    pub node: String,
    /// Random, chosen once per agent process: a reconnect keeps it, a
    /// second process with the same key (a cloned VM) has another, so the
    /// controller can tell "two processes take turns" from "one process
    /// reconnected". Added in version 2.
    pub instance: u64,
}

/// Controller → agent, answer to a valid [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// Protocol version the controller speaks.
    pub protocol_version: u32,
    /// The controller's release.
    pub controller_version: String,
    /// How often the agent must send a heartbeat, in seconds.
    pub heartbeat_secs: u32,
}

/// A peer speaks a protocol version we don't.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "protocol version mismatch: we speak v{ours}, the peer speaks v{theirs}; \
     upgrade the {older} so both run the same vesemir release"
)]
pub struct VersionError {
    /// Our version.
    pub ours: u32,
    /// The peer's version.
    pub theirs: u32,
    /// Which side should be upgraded ("agent" or "controller").
    pub older: &'static str,
}

/// Checks a peer's version. `we_are_controller` decides which side the
/// message tells the operator to upgrade.
pub fn check_version(theirs: u32, we_are_controller: bool) -> Result<(), VersionError> {
    if theirs == PROTOCOL_VERSION {
        return Ok(());
    }
    let peer_older = theirs < PROTOCOL_VERSION;
    let older = match (we_are_controller, peer_older) {
        (true, true) | (false, false) => "agent",
        _ => "controller",
    };
    Err(VersionError {
        ours: PROTOCOL_VERSION,
        theirs,
        older,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_version_passes() {
        assert!(check_version(PROTOCOL_VERSION, true).is_ok());
    }

    #[test]
    fn mismatch_names_the_side_to_upgrade() {
        let e = check_version(PROTOCOL_VERSION + 1, true).unwrap_err();
        assert_eq!(e.older, "controller");
        assert!(e.to_string().contains("upgrade the controller"));
        let e = check_version(PROTOCOL_VERSION + 1, false).unwrap_err();
        assert_eq!(e.older, "agent");
        let e = check_version(0, true).unwrap_err();
        assert_eq!(e.older, "agent");
    }

    /// A v2 peer (before typed HAProxy replies) is refused with a message
    /// naming both versions and the side to upgrade, on either side.
    #[test]
    fn a_v2_peer_is_told_both_versions_and_what_to_upgrade() {
        assert_eq!(PROTOCOL_VERSION, 3);
        let e = check_version(2, true).unwrap_err();
        assert_eq!(
            e.to_string(),
            "protocol version mismatch: we speak v3, the peer speaks v2; \
             upgrade the agent so both run the same vesemir release"
        );
        let e = check_version(2, false).unwrap_err();
        assert!(
            e.to_string()
                .contains("we speak v3, the peer speaks v2; upgrade the controller"),
            "{e}"
        );
    }
}
