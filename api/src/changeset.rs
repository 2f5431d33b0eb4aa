//! A changeset in API requests (what to install) and its checks.

use serde::{Deserialize, Serialize};

/// A changeset in API requests.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ChangesetBody {
    /// Version label.
    pub version: String,
    /// Artifact URL.
    pub url: String,
    /// SHA-256 of the artifact, hex.
    pub sha256: String,
    /// A playbook inside the artifact to run instead of a named one
    /// (`deploy/vesemir.yml`): one safe relative path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub playbook: Option<String>,
}

/// Checks a playbook name: a plain file name of a shipped playbook.
pub fn valid_playbook_name(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 128
        && (p.ends_with(".yml") || p.ends_with(".yaml"))
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !p.starts_with('.')
}

/// Checks a changeset: version, http(s) URL, 64 hex digits. The error is the
/// dotted field and what is wrong with it.
pub fn check_changeset(c: &ChangesetBody) -> Result<(), (&'static str, String)> {
    // The version becomes a directory name (releases/VERSION) on the agent:
    // one component, never "." or ".." or hidden. The agent checks again.
    if !vesemir_protocol::job::is_one_path_component(&c.version) {
        return Err((
            "changeset.version",
            "must be 1-128 characters of letters, digits, '-', '_', '.', '+', not starting with '.'".into(),
        ));
    }
    if !(c.url.starts_with("http://") || c.url.starts_with("https://")) {
        return Err(("changeset.url", "must be an http:// or https:// URL".into()));
    }
    if c.sha256.len() != 64 || !c.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err((
            "changeset.sha256",
            "must be the artifact's SHA-256 as 64 hex digits".into(),
        ));
    }
    if let Some(p) = &c.playbook {
        if !vesemir_protocol::job::is_playbook_path(p) {
            return Err((
                "changeset.playbook",
                "must be a relative path inside the archive to a .yml/.yaml file, like                  deploy/vesemir.yml (parts of letters, digits, '-', '_', '.', '+', none                  starting with '.', no '..')"
                    .into(),
            ));
        }
    }
    Ok(())
}
