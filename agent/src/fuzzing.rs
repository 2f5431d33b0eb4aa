//! Entry points for the fuzz targets in `fuzz/` (not an API: hidden from the
//! docs, may change at any time). They call the same functions the agent
//! runs on untrusted input, so a crash found through them is a crash of the
//! agent.

use std::collections::BTreeMap;
use std::path::Path;

use vesemir_protocol::job::Changeset;

use crate::runner::playbook;

/// Parses playbook text and, if it parses, type- and template-checks it as
/// the agent does before running it (lint mode, and run mode with `vars`).
pub fn check_playbook(
    text: &str,
    vars: &BTreeMap<String, String>,
    changeset: Option<&Changeset>,
) -> Result<(), crate::runner::PlaybookError> {
    let pb = playbook::parse(Path::new("fuzz.yml"), text)?;
    let facts = serde_json::json!({"hostname": "fuzz", "os": "linux", "arch": "x86_64"});
    let lint = playbook::check(&pb, vars, None, &facts, playbook::CheckMode::Lint);
    let run = playbook::check(&pb, vars, changeset, &facts, playbook::CheckMode::Run);
    lint.and(run)
}

/// Renders one template string and evaluates it as a `when` expression over
/// a context built from `vars`, with the agent's template environment.
pub fn render_template(src: &str, vars: &BTreeMap<String, String>) {
    let env = playbook::environment();
    let ctx = playbook::base_context(vars, None, &serde_json::json!({"hostname": "fuzz"}));
    let _ = playbook::render_str(&env, src, &ctx);
    let _ = playbook::eval_bool(&env, src, &ctx);
}

/// Unpacks the tar.gz `src` into `dest` the way the `unarchive` module does
/// (`dest` must exist, as in Ansible; staged next to it, moved in only if
/// every entry passed).
/// Returns the number of entries unpacked, or the refusal.
pub fn unarchive(src: &Path, dest: &Path, strip: usize) -> Result<Option<usize>, String> {
    crate::runner::modules::unarchive::extract(src, dest, strip).map_err(|e| e.to_string())
}
