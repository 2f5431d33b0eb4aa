//! Playbook text → parse → type- and template-check (lint and run modes):
//! errors, never a panic or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use vesemir_protocol::job::Changeset;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let vars: BTreeMap<String, String> = [
        ("service", "app"),
        ("health_url", "http://127.0.0.1:1/health"),
        ("base_dir", "/srv/app"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let cs = Changeset {
        version: "1.2.3".into(),
        url: "http://127.0.0.1:1/app.tar.gz".into(),
        sha256: "0".repeat(64),
        playbook: None,
    };
    let _ = vesemir_agent::fuzzing::check_playbook(text, &vars, Some(&cs));
});
