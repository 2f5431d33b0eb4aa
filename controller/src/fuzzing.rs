//! Entry points for the fuzz targets in `fuzz/` (not an API: hidden from the
//! docs, may change at any time). They run the same parsing and validation
//! the controller applies to untrusted bytes.

use serde_json::Value;

/// Parses a Chef partial-search answer as `ChefClient::partial_search` reads
/// it (`rows[].data`) and turns every row into a host, as inventory
/// resolution does. Returns how many hosts came out.
pub fn chef_search_answer(bytes: &[u8]) -> Option<usize> {
    let page: Value = serde_json::from_slice(bytes).ok()?;
    let rows = page.get("rows")?.as_array()?;
    let hosts = rows
        .iter()
        .map(|r| r.get("data").cloned().unwrap_or(Value::Null))
        .filter_map(|row| crate::inventory::chef::host_from_row(&row))
        .inspect(|h| {
            // What the plan later relies on: a name and an address.
            assert!(!h.name.is_empty(), "host without a name: {h:?}");
        })
        .count();
    Some(hosts)
}

/// Decodes `bytes` as the body of each API route that takes one and runs the
/// route's validation on what decodes.
pub fn api_bodies(bytes: &[u8]) {
    if let Ok(r) = serde_json::from_slice::<crate::deploy::request::DeployRequest>(bytes) {
        let _ = r.validate();
        let _ = r.concurrency_for(7);
        let _ = r.max_unavailable_for(7);
        // A stored request is read back when a deployment resumes.
        let text = serde_json::to_string(&r).expect("a decoded request serializes");
        let back: crate::deploy::request::DeployRequest =
            serde_json::from_str(&text).expect("a stored request decodes again");
        assert_eq!(back, r, "stored request changed on the round trip");
    }
    if let Ok(r) = serde_json::from_slice::<crate::http::RunPlaybook>(bytes) {
        let _ = crate::http::valid_playbook_name(&r.playbook);
        if let Some(c) = &r.changeset {
            let _ = crate::http::check_changeset(c);
        }
        for v in r.vars.values() {
            let _ = vesemir_protocol::job::climbs_out(v);
        }
    }
    if let Ok(s) = serde_json::from_slice::<crate::inventory::Selector>(bytes) {
        if s.validate().is_ok() {
            let _ = crate::inventory::query::selector_query(&s);
        }
        let _ = s.describe();
    }
    let _ = serde_json::from_slice::<crate::http::CreateToken>(bytes);
    let _ = serde_json::from_slice::<crate::http::deployments::RollbackBody>(bytes);
}
