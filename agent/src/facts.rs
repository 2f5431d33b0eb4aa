//! Host facts reported with every heartbeat. Read from /proc and statvfs;
//! a fact that can't be read is left empty rather than failing the heartbeat.

use std::path::Path;
use vesemir_protocol::control::Facts;

/// Collects the facts of this host.
pub fn collect(data_dir: &Path, running_jobs: Vec<String>) -> Facts {
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
        let f = super::collect(dir.path(), vec!["j".into()]);
        assert!(!f.hostname.is_empty());
        assert!(!f.kernel.is_empty());
        assert!(f.uptime_secs > 0);
        assert!(f.disk_free_bytes > 0);
        assert_eq!(f.running_jobs, vec!["j".to_string()]);
    }
}
