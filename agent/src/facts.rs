//! Host facts reported with every heartbeat. Read from /proc and statvfs;
//! a fact that can't be read is left empty rather than failing the heartbeat.
//! The playbooks in the playbook directory are reported by name and sha256
//! so the controller can check a request's playbook against every host of a
//! plan (and show drift) before anything runs.

use std::path::Path;
use vesemir_protocol::control::{Facts, PlaybookInfo};

/// At most this many playbooks are reported (a heartbeat stays small).
const MAX_PLAYBOOKS: usize = 256;
/// Playbooks larger than this are reported without reading them whole.
const MAX_PLAYBOOK_BYTES: u64 = 1 << 20;

/// The playbooks (`*.yml`, `*.yaml`, not hidden) directly in `dir`, sorted
/// by name, with the sha256 of each. An unreadable directory reports none.
pub fn playbooks(dir: &Path) -> Vec<PlaybookInfo> {
    use sha2::Digest;
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PlaybookInfo> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let is_pb =
                (name.ends_with(".yml") || name.ends_with(".yaml")) && !name.starts_with('.');
            let meta = std::fs::metadata(e.path()).ok()?;
            if !is_pb || !meta.is_file() {
                return None;
            }
            let sha256 = if meta.len() <= MAX_PLAYBOOK_BYTES {
                hex::encode(sha2::Sha256::digest(std::fs::read(e.path()).ok()?))
            } else {
                String::new()
            };
            Some(PlaybookInfo { name, sha256 })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out.truncate(MAX_PLAYBOOKS);
    out
}

/// Collects the facts of this host.
pub fn collect(data_dir: &Path, playbook_dir: &Path, running_jobs: Vec<String>) -> Facts {
    Facts {
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        hostname: nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default(),
        os: os_name(),
        kernel: read_trim("/proc/sys/kernel/osrelease"),
        uptime_secs: read_trim("/proc/uptime")
            .split_whitespace()
            .next()
            .and_then(|s| s.parse::<f64>().ok())
            .map(|s| s as u64)
            .unwrap_or(0),
        load: load_average(),
        disk_free_bytes: nix::sys::statvfs::statvfs(data_dir)
            .map(|s| s.blocks_available() * s.fragment_size())
            .unwrap_or(0),
        running_jobs,
        playbooks: playbooks(playbook_dir),
    }
}

/// Facts as the JSON value templates see as `facts`.
pub fn to_json(f: &Facts) -> serde_json::Value {
    serde_json::json!({
        "agent_version": f.agent_version,
        "hostname": f.hostname,
        "os": f.os,
        "kernel": f.kernel,
        "uptime_secs": f.uptime_secs,
        "load": f.load,
        "disk_free_bytes": f.disk_free_bytes,
    })
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn os_name() -> String {
    let text = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| std::env::consts::OS.to_string())
}

fn load_average() -> [f64; 3] {
    let text = read_trim("/proc/loadavg");
    let mut it = text.split_whitespace().map(|s| s.parse().unwrap_or(0.0));
    [
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
    ]
}

#[cfg(test)]
mod tests {
    #[test]
    fn collects_something_real() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("deploy.yml"), "tasks: []\n").unwrap();
        std::fs::write(dir.path().join(".hidden.yml"), "x").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
        let f = super::collect(dir.path(), dir.path(), vec!["j".into()]);
        assert_eq!(f.playbooks.len(), 1, "{:?}", f.playbooks);
        assert_eq!(f.playbooks[0].name, "deploy.yml");
        assert_eq!(
            f.playbooks[0].sha256,
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"tasks: []\n"))
        );
        assert!(!f.hostname.is_empty());
        assert!(!f.kernel.is_empty());
        assert!(f.uptime_secs > 0);
        assert!(f.disk_free_bytes > 0);
        assert_eq!(f.running_jobs, vec!["j".to_string()]);
    }
}
