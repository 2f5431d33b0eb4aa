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

/// Why a node name can't be made canonical.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid node name {name:?}: use 1-253 letters, digits, '-', '_', '.', ':', \
     not starting with '.' or '-', without empty labels ('..')"
)]
pub struct NodeNameError {
    /// The name as given.
    pub name: String,
}

/// The canonical spelling of a node name: ASCII lower case, without the
/// trailing dot of a fully qualified name. `WEB-1`, `web-1.` and `web-1`
/// are one node (DNS and Chef users write all three); the certificate, the
/// store and the fleet only ever see the canonical one. The agent
/// canonicalizes before it enrolls and the controller refuses a name that
/// isn't canonical, so a certificate never names a second spelling.
pub fn canonical_node_name(name: &str) -> Result<String, NodeNameError> {
    let refuse = || NodeNameError {
        name: name.to_string(),
    };
    let folded = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let ok = !folded.is_empty()
        && folded.len() <= 253
        && folded
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        && !folded.starts_with(['.', '-'])
        && !folded.ends_with('.')
        && !folded.contains("..");
    if ok {
        Ok(folded)
    } else {
        Err(refuse())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fold_to_one_spelling_or_are_refused() {
        for (given, canonical) in [
            ("web-1", Some("web-1")),
            ("WEB-1", Some("web-1")),
            ("web-1.", Some("web-1")),
            ("Web-1.Example.COM.", Some("web-1.example.com")),
            ("node_3:a", Some("node_3:a")),
            ("", None),
            (".", None),
            ("web-1..", None),
            ("db..7", None),
            (".web", None),
            ("-web", None),
            ("wéb", None),
            ("web 1", None),
            ("web\n1", None),
        ] {
            assert_eq!(
                canonical_node_name(given).ok().as_deref(),
                canonical,
                "{given:?}"
            );
        }
        assert_eq!(canonical_node_name(&"a".repeat(253)).unwrap().len(), 253);
        assert!(canonical_node_name(&"a".repeat(254)).is_err());
        assert!(canonical_node_name("db..7")
            .unwrap_err()
            .to_string()
            .contains("\"db..7\""));
    }
}
