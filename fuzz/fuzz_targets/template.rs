//! One template string rendered and evaluated as a `when` expression with
//! the agent's template environment: errors, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Templates that loop forever are bounded by minijinja's fuel only when
    // set; keep inputs short so one run stays fast.
    if text.len() > 4096 {
        return;
    }
    let vars: BTreeMap<String, String> = [("service", "app"), ("n", "3")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    vesemir_agent::fuzzing::render_template(text, &vars);
});
