//! The deployment request (`POST /v1/deployments`) and its validation.
//! Every problem names the field, so the API can answer 422 with something
//! to act on and the CLI can say the same before a round trip.

use crate::changeset::{check_changeset, valid_playbook_name, ChangesetBody};
use crate::progressive::{CanarySpec, OnFailure, Progressive, WebhookSpec};
use crate::selector::Selector;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `POST /v1/deployments` body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// Application name.
    pub application: String,
    /// Environment (production, staging, …).
    pub environment: String,
    /// Team that owns the application.
    pub team: String,
    /// Which VMs run the application.
    pub selector: Selector,
    /// HAProxy choreography; none means no traffic steps.
    #[serde(default)]
    pub haproxy: Option<HaproxySpec>,
    /// Hosts at a time: a number or "N%".
    #[serde(default = "default_concurrency")]
    pub concurrency: Concurrency,
    /// Servers out of rotation at once; default = concurrency.
    #[serde(default)]
    pub max_unavailable: Option<u32>,
    /// Failures tolerated before aborting, percent of hosts.
    #[serde(default)]
    pub max_fail_percentage: u32,
    /// Playbook shipped with the agents.
    #[serde(default = "default_playbook")]
    pub playbook: String,
    /// Variables for the playbook.
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    /// What to install.
    #[serde(default)]
    pub changeset: Option<ChangesetBody>,
    /// Plan only.
    #[serde(default)]
    pub dry_run: bool,
    /// Longest a host's playbook may run before it is cancelled and the
    /// host failed.
    #[serde(default = "default_job_timeout")]
    pub job_timeout_seconds: u64,
    /// Deploy a few hosts first and compare their traffic with the rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanarySpec>,
    /// What a failure does to the hosts already deployed.
    #[serde(default, skip_serializing_if = "OnFailure::is_stop")]
    pub on_failure: OnFailure,
    /// Pause for a person after a passed canary.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pause_after_canary: bool,
    /// Pause after these batches (1 = the first after the canary).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pause_after_batches: Vec<u32>,
    /// Fail the deployment when no host finishes for this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_deadline_seconds: Option<u64>,
    /// Webhooks told about this deployment, besides the controller's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<WebhookSpec>,
    /// Why this deployment may run during a freeze window (recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub override_freeze: Option<String>,
}

fn default_job_timeout() -> u64 {
    3600
}

/// Hosts in flight at most, whatever the request says (each holds a job
/// stream on every HAProxy VM's agent).
pub const MAX_CONCURRENCY: usize = 1000;

fn default_concurrency() -> Concurrency {
    Concurrency::Count(1)
}

fn default_playbook() -> String {
    "deploy.yml".into()
}

/// Hosts at a time, as written on the wire: a number or a `"25%"` string.
/// Kept loose so a bad value gets a 422 naming `concurrency` (from
/// [`Concurrency::limit`]) rather than a generic JSON error.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum Concurrency {
    /// A number of hosts.
    Count(i64),
    /// A percentage of the hosts, written "25%".
    #[cfg_attr(feature = "openapi", schema(example = "25%"))]
    Percent(String),
}

/// Hosts at a time, parsed and in range: what the wire form means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConcurrencyLimit {
    /// That many hosts, 1 to [`MAX_CONCURRENCY`].
    Count(u32),
    /// That percentage of the hosts, 1 to 100 (rounded up, at least 1 host).
    Percent(u32),
}

impl ConcurrencyLimit {
    /// The host count for `total` hosts, never 0, never above
    /// [`MAX_CONCURRENCY`].
    pub fn hosts_for(self, total: usize) -> usize {
        match self {
            ConcurrencyLimit::Count(n) => n as usize,
            ConcurrencyLimit::Percent(p) => (total * p as usize).div_ceil(100),
        }
        .clamp(1, MAX_CONCURRENCY)
    }
}

impl std::str::FromStr for ConcurrencyLimit {
    type Err = FieldError;

    /// `"10"` or `"25%"` (what `--concurrency` takes).
    fn from_str(s: &str) -> Result<Self, FieldError> {
        let s = s.trim();
        if s.ends_with('%') {
            Concurrency::Percent(s.to_string()).limit()
        } else {
            match s.parse::<i64>() {
                Ok(n) => Concurrency::Count(n).limit(),
                Err(_) => Err(err(
                    "concurrency",
                    format!(
                        "{s:?}: expected a number of hosts (at least 1) or a percentage like 25%"
                    ),
                )),
            }
        }
    }
}

impl From<ConcurrencyLimit> for Concurrency {
    fn from(c: ConcurrencyLimit) -> Self {
        match c {
            ConcurrencyLimit::Count(n) => Concurrency::Count(n.into()),
            ConcurrencyLimit::Percent(p) => Concurrency::Percent(format!("{p}%")),
        }
    }
}

impl Concurrency {
    /// Parses the wire form: the one place the range rules live.
    pub fn limit(&self) -> Result<ConcurrencyLimit, FieldError> {
        match self {
            Concurrency::Count(n) if *n < 1 => Err(err(
                "concurrency",
                "must be at least 1 (or a percentage like \"25%\")",
            )),
            Concurrency::Count(n) if *n > MAX_CONCURRENCY as i64 => {
                Err(err("concurrency", "must be at most 1000"))
            }
            Concurrency::Count(n) => Ok(ConcurrencyLimit::Count(*n as u32)),
            Concurrency::Percent(p) => {
                parse_percent(p)
                    .map(ConcurrencyLimit::Percent)
                    .ok_or_else(|| {
                        err(
                            "concurrency",
                            "must be a number or a percentage from 1% to 100%",
                        )
                    })
            }
        }
    }
}

/// HAProxy part of a request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct HaproxySpec {
    /// Backend the app's servers are in.
    pub backend: String,
    /// Which VMs run HAProxy.
    pub selector: Selector,
    /// Longest wait for a drained server's sessions to end.
    #[serde(default = "default_degradation")]
    pub degradation_seconds: u64,
    /// `drain` or `maint`.
    #[serde(default = "default_drain_mode")]
    pub drain_mode: String,
    /// Weight ramp in percent, ending at 100.
    #[serde(default = "default_weights")]
    pub weights: Vec<u32>,
    /// Pause between ramp steps.
    #[serde(default)]
    pub sleep_seconds: u64,
    /// Template of the server name per host.
    #[serde(default = "default_server_name")]
    pub server_name: String,
}

fn default_degradation() -> u64 {
    30
}
fn default_drain_mode() -> String {
    "drain".into()
}
fn default_weights() -> Vec<u32> {
    vec![100]
}
fn default_server_name() -> String {
    "{{ name }}".into()
}

/// A validation failure: which field and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// Dotted field path.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn err(field: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.to_string(),
        message: message.into(),
    }
}

/// Plain names: applications, environments, teams.
fn valid_label(s: &str) -> bool {
    // Labels name directories and files on VMs (`/srv/<app>`): never `.`,
    // `..` or hidden.
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Playbooks that install a changeset and so need one.
fn needs_changeset(playbook: &str) -> bool {
    playbook == "deploy.yml"
}

impl DeployRequest {
    /// Checks every field; the first problem is returned.
    /// Whether the playbook is on the agents is checked against the plan's
    /// hosts (their facts list their playbooks), not here.
    pub fn validate(&self) -> Result<(), FieldError> {
        for (field, v) in [
            ("application", &self.application),
            ("environment", &self.environment),
            ("team", &self.team),
        ] {
            if !valid_label(v) {
                return Err(err(
                    field,
                    "must be 1-64 characters of letters, digits, '-', '_', '.', not starting with '.'",
                ));
            }
        }
        self.selector
            .validate()
            .map_err(|e| err("selector", e.to_string()))?;
        self.concurrency.limit()?;
        if let Some(m) = self.max_unavailable {
            if m < 1 {
                return Err(err("max_unavailable", "must be at least 1"));
            }
        }
        if !(1..=86_400).contains(&self.job_timeout_seconds) {
            return Err(err("job_timeout_seconds", "must be between 1 and 86400"));
        }
        if self.max_fail_percentage > 100 {
            return Err(err("max_fail_percentage", "must be between 0 and 100"));
        }
        if !valid_playbook_name(&self.playbook) {
            return Err(err(
                "playbook",
                format!(
                    "{:?} is not a playbook file name: give the name of a .yml file in the \
                     agents' playbook directory (e.g. deploy.yml), or carry one in the \
                     changeset with changeset.playbook",
                    self.playbook
                ),
            ));
        }
        for (k, v) in &self.vars {
            let ok_key = !k.is_empty()
                && k.len() <= 64
                && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !k.as_bytes()[0].is_ascii_digit();
            if !ok_key {
                return Err(err(
                    &format!("vars.{k}"),
                    "variable names are letters, digits and '_', not starting with a digit",
                ));
            }
            if v.len() > 4096 {
                return Err(err(&format!("vars.{k}"), "value longer than 4096 bytes"));
            }
            if vesemir_protocol::job::climbs_out(v) {
                return Err(err(
                    &format!("vars.{k}"),
                    "must not contain a `..` path component or a NUL byte",
                ));
            }
        }
        match &self.changeset {
            Some(c) => {
                if c.sha256.is_empty() {
                    return Err(err(
                        "changeset.sha256",
                        "missing: give the artifact's SHA-256",
                    ));
                }
                check_changeset(c).map_err(|(f, m)| err(f, m))?;
            }
            None if needs_changeset(&self.playbook) => {
                return Err(err(
                    "changeset",
                    format!(
                        "{} installs a changeset: give version, url and sha256",
                        self.playbook
                    ),
                ))
            }
            None => {}
        }
        if let Some(h) = &self.haproxy {
            h.validate()?;
        }
        if self.canary.is_some() && self.haproxy.is_none() {
            return Err(err(
                "canary",
                "the canary analysis reads HAProxy's counters: add an haproxy section or drop the canary",
            ));
        }
        Progressive {
            canary: self.canary.as_ref(),
            pause_after_batches: &self.pause_after_batches,
            pause_after_canary: self.pause_after_canary,
            progress_deadline_seconds: self.progress_deadline_seconds,
            notify: &self.notify,
            override_freeze: self.override_freeze.as_deref(),
        }
        .validate()
    }

    /// Canary host count for the plan's `total` hosts: none without a
    /// canary, an error when the canary would cover every host (checked
    /// once the plan is known, with the other plan checks).
    pub fn canary_hosts_for(&self, total: usize) -> Result<Option<usize>, FieldError> {
        self.canary
            .as_ref()
            .map(|c| c.hosts.hosts_for(total))
            .transpose()
    }

    /// The concurrency as a host count for `total` hosts (an invalid one,
    /// which [`DeployRequest::validate`] refuses, counts as 100%).
    pub fn concurrency_for(&self, total: usize) -> usize {
        self.concurrency
            .limit()
            .unwrap_or(ConcurrencyLimit::Percent(100))
            .hosts_for(total)
    }

    /// Servers allowed out of rotation at once.
    pub fn max_unavailable_for(&self, total: usize) -> usize {
        self.max_unavailable
            .map(|m| m as usize)
            .unwrap_or_else(|| self.concurrency_for(total))
    }
}

/// "25%" → 25, within 1..=100.
pub fn parse_percent(p: &str) -> Option<u32> {
    let n: u32 = p.trim().strip_suffix('%')?.trim().parse().ok()?;
    (1..=100).contains(&n).then_some(n)
}

impl HaproxySpec {
    fn validate(&self) -> Result<(), FieldError> {
        if vesemir_agent_names::valid(&self.backend).is_err() {
            return Err(err(
                "haproxy.backend",
                "must be an HAProxy backend name: letters, digits, '_', '.', ':', '-'",
            ));
        }
        self.selector
            .validate()
            .map_err(|e| err("haproxy.selector", e.to_string()))?;
        if self.degradation_seconds > 3600 {
            return Err(err("haproxy.degradation_seconds", "must be at most 3600"));
        }
        if self.drain_mode != "drain" && self.drain_mode != "maint" {
            return Err(err("haproxy.drain_mode", "must be \"drain\" or \"maint\""));
        }
        if self.weights.is_empty() || self.weights.len() > 20 {
            return Err(err(
                "haproxy.weights",
                "give 1 to 20 percentages, e.g. [10, 50, 100]",
            ));
        }
        if self.weights.iter().any(|w| !(1..=100).contains(w)) {
            return Err(err(
                "haproxy.weights",
                "each weight must be between 1 and 100 (percent)",
            ));
        }
        if self.weights.windows(2).any(|w| w[0] > w[1]) {
            return Err(err("haproxy.weights", "must be ascending"));
        }
        if self.weights.last() != Some(&100) {
            return Err(err("haproxy.weights", "must end at 100"));
        }
        if self.sleep_seconds > 3600 {
            return Err(err("haproxy.sleep_seconds", "must be at most 3600"));
        }
        render_server_name(&self.server_name, &ServerNameInput::example())
            .map_err(|m| err("haproxy.server_name", m.to_string()))?;
        Ok(())
    }
}

/// What a server-name template can use.
#[derive(Debug, Clone, Serialize)]
pub struct ServerNameInput {
    /// Node name.
    pub name: String,
    /// Address.
    pub address: String,
    /// FQDN, or the name.
    pub fqdn: String,
    /// Short host name, or the name.
    pub hostname: String,
}

impl ServerNameInput {
    fn example() -> Self {
        ServerNameInput {
            name: "web-1".into(),
            address: "10.0.0.1".into(),
            fqdn: "web-1.example.com".into(),
            hostname: "web-1".into(),
        }
    }
}

/// Why a server-name template cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ServerNameError {
    /// The template does not render (syntax, unknown variable).
    #[error("template error: {0}; use name, address, fqdn or hostname")]
    Template(#[from] minijinja::Error),
    /// It renders to something HAProxy refuses as a server name.
    #[error("renders to {0:?}, not an HAProxy server name (letters, digits, '_', '.', ':', '-')")]
    BadName(String),
}

/// Renders a server-name template (strict: unknown variables are errors) and
/// checks the result is a valid HAProxy server name.
pub fn render_server_name(
    template: &str,
    input: &ServerNameInput,
) -> Result<String, ServerNameError> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    let out = env.render_str(template, input)?;
    let out = out.trim().to_string();
    if vesemir_agent_names::valid(&out).is_err() {
        return Err(ServerNameError::BadName(out));
    }
    Ok(out)
}

/// HAProxy name rules (kept in step with the agent's own check, which is
/// authoritative: it refuses bad names before touching the socket).
mod vesemir_agent_names {
    pub fn valid(name: &str) -> Result<(), ()> {
        let ok = !name.is_empty()
            && name.len() <= 255
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
        if ok {
            Ok(())
        } else {
            Err(())
        }
    }
}

/// `POST /v1/deployments/rollback` body: redeploy the last changeset that
/// succeeded before the current one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// Application name.
    pub application: String,
    /// Environment.
    pub environment: String,
}

/// `POST /v1/agents/{name}/run` body: one playbook on one agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RunPlaybook {
    /// A playbook shipped with the agent (`restart.yml`, …).
    pub playbook: String,
    /// Variables.
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    /// Changeset, for playbooks that install one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changeset: Option<ChangesetBody>,
}

impl DeployRequest {
    /// A request with every optional field at the default the controller
    /// applies when the field is left out (so a client filling in only what
    /// its user gave means what leaving the rest out means).
    pub fn new(application: String, environment: String, team: String, selector: Selector) -> Self {
        DeployRequest {
            application,
            environment,
            team,
            selector,
            haproxy: None,
            concurrency: default_concurrency(),
            max_unavailable: None,
            max_fail_percentage: 0,
            playbook: default_playbook(),
            vars: BTreeMap::new(),
            changeset: None,
            dry_run: false,
            job_timeout_seconds: default_job_timeout(),
            canary: None,
            on_failure: OnFailure::default(),
            pause_after_canary: false,
            pause_after_batches: Vec::new(),
            progress_deadline_seconds: None,
            notify: Vec::new(),
            override_freeze: None,
        }
    }
}

impl HaproxySpec {
    /// A spec with every optional field at the controller's default.
    pub fn new(backend: String, selector: Selector) -> Self {
        HaproxySpec {
            backend,
            selector,
            degradation_seconds: default_degradation(),
            drain_mode: default_drain_mode(),
            weights: default_weights(),
            sleep_seconds: 0,
            server_name: default_server_name(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> DeployRequest {
        serde_json::from_value(serde_json::json!({
            "application": "pay", "environment": "prod", "team": "t",
            "selector": {"tags": ["app:pay"]},
            "haproxy": {"backend": "pay", "selector": {"recipes": ["haproxy"]}, "weights": [10, 50, 100]},
            "concurrency": 2,
            "changeset": {"version": "1.0", "url": "http://x/a.tgz", "sha256": "a".repeat(64)}
        }))
        .unwrap()
    }

    fn check(mutate: impl FnOnce(&mut serde_json::Value), field: Option<&str>) {
        let mut v = serde_json::to_value(base()).unwrap();
        mutate(&mut v);
        let r: Result<DeployRequest, _> = serde_json::from_value(v);
        let got = r
            .map_err(|_| "json".to_string())
            .and_then(|r| r.validate().map_err(|e| e.field));
        match field {
            None => assert_eq!(got, Ok(())),
            Some(f) => assert_eq!(got, Err(f.to_string())),
        }
    }

    #[test]
    fn validation_names_the_field() {
        check(|_| {}, None);
        check(|v| v["concurrency"] = 0.into(), Some("concurrency"));
        check(|v| v["concurrency"] = "0%".into(), Some("concurrency"));
        check(|v| v["concurrency"] = "50%".into(), None);
        check(|v| v["playbook"] = "../nope.yml".into(), Some("playbook"));
        check(|v| v["playbook"] = "team-own.yml".into(), None);
        check(
            |v| v["changeset"]["playbook"] = "deploy/vesemir.yml".into(),
            None,
        );
        check(
            |v| v["changeset"]["playbook"] = "../vesemir.yml".into(),
            Some("changeset.playbook"),
        );
        check(
            |v| v["changeset"]["playbook"] = "/abs/vesemir.yml".into(),
            Some("changeset.playbook"),
        );
        check(
            |v| v["changeset"]["sha256"] = "".into(),
            Some("changeset.sha256"),
        );
        check(
            |v| v["changeset"]["sha256"] = "xyz".into(),
            Some("changeset.sha256"),
        );
        check(
            |v| v["changeset"] = serde_json::Value::Null,
            Some("changeset"),
        );
        check(
            |v| v["haproxy"]["weights"] = serde_json::json!([10, 150]),
            Some("haproxy.weights"),
        );
        check(
            |v| v["haproxy"]["weights"] = serde_json::json!([50, 10, 100]),
            Some("haproxy.weights"),
        );
        check(
            |v| v["haproxy"]["weights"] = serde_json::json!([10, 50]),
            Some("haproxy.weights"),
        );
        check(|v| v["selector"] = serde_json::json!({}), Some("selector"));
        check(
            |v| v["haproxy"]["server_name"] = "{{ nope }}".into(),
            Some("haproxy.server_name"),
        );
        check(
            |v| v["haproxy"]["drain_mode"] = "off".into(),
            Some("haproxy.drain_mode"),
        );
        check(|v| v["application"] = "a b".into(), Some("application"));
        check(|v| v["application"] = "..".into(), Some("application"));
        check(|v| v["environment"] = ".".into(), Some("environment"));
        check(
            |v| v["vars"]["base_dir"] = "/srv/../etc".into(),
            Some("vars.base_dir"),
        );
        check(|v| v["vars"]["base_dir"] = "/srv/app".into(), None);
        check(
            |v| v["max_fail_percentage"] = 101.into(),
            Some("max_fail_percentage"),
        );
        check(|v| v["playbook"] = "restart.yml".into(), None);
    }

    #[test]
    fn progressive_fields_are_checked() {
        use serde_json::json;
        let canary = |v: &mut serde_json::Value| v["canary"] = json!({"hosts": 1});
        check(canary, None);
        check(|v| v["canary"] = json!({}), None);
        check(|v| v["canary"] = json!({"hosts": "10%"}), None);
        check(|v| v["canary"] = json!({"hosts": 0}), Some("canary.hosts"));
        check(
            |v| v["canary"] = json!({"hosts": "100%"}),
            Some("canary.hosts"),
        );
        check(
            |v| v["canary"] = json!({"hosts": "x"}),
            Some("canary.hosts"),
        );
        check(
            |v| v["canary"] = json!({"max_error_rate": 1.5}),
            Some("canary.max_error_rate"),
        );
        check(
            |v| v["canary"] = json!({"max_error_rate_increase": -0.1}),
            Some("canary.max_error_rate_increase"),
        );
        check(
            |v| v["canary"] = json!({"max_latency_ratio": 0.5}),
            Some("canary.max_latency_ratio"),
        );
        check(
            |v| v["canary"] = json!({"min_requests": 0}),
            Some("canary.min_requests"),
        );
        check(
            |v| v["canary"] = json!({"analysis_seconds": 60, "sample_interval_seconds": 61}),
            Some("canary.sample_interval_seconds"),
        );
        check(
            |v| v["canary"] = json!({"analysis_seconds": 5}),
            Some("canary.analysis_seconds"),
        );
        check(|v| v["canary"] = json!({"inconclusive": "fail"}), None);
        check(
            |v| v["canary"] = json!({"inconclusive": "maybe"}),
            Some("json"),
        );
        check(
            |v| {
                v["canary"] = json!({"prometheus": {"url": "http://prom:9090",
                    "query": "rate(errors{host=\"{{ host }}\"}[1m])", "max": 0.1}})
            },
            None,
        );
        check(
            |v| {
                v["canary"] = json!({"prometheus": {"url": "file:///etc", "query": "up", "max": 1}})
            },
            Some("canary.prometheus.url"),
        );
        check(
            |v| v["canary"] = json!({"prometheus": {"url": "http://p", "query": " ", "max": 1}}),
            Some("canary.prometheus.query"),
        );
        check(
            |v| v["canary"] = json!({"prometheus": {"url": "http://p", "query": "up{x=\"{{ pod }}\"}", "max": 1}}),
            Some("canary.prometheus.query"),
        );
        check(
            |v| {
                v["canary"] = json!({});
                v["haproxy"] = serde_json::Value::Null;
            },
            Some("canary"),
        );
        check(
            |v| v["pause_after_canary"] = true.into(),
            Some("pause_after_canary"),
        );
        check(
            |v| {
                canary(v);
                v["pause_after_canary"] = true.into();
            },
            None,
        );
        check(|v| v["pause_after_batches"] = json!([1, 3]), None);
        check(
            |v| v["pause_after_batches"] = json!([0]),
            Some("pause_after_batches"),
        );
        check(
            |v| v["pause_after_batches"] = json!([3, 1]),
            Some("pause_after_batches"),
        );
        check(|v| v["on_failure"] = "rollback".into(), None);
        check(|v| v["on_failure"] = "explode".into(), Some("json"));
        check(|v| v["progress_deadline_seconds"] = 600.into(), None);
        check(
            |v| v["progress_deadline_seconds"] = 1.into(),
            Some("progress_deadline_seconds"),
        );
        check(
            |v| {
                v["notify"] = json!([{"url": "https://hooks.example/x", "events": ["started", "rolled_back"]}])
            },
            None,
        );
        check(|v| v["notify"] = json!([{"url": "https://h/x"}]), None);
        check(
            |v| {
                v["notify"] =
                    json!([{"url": "https://h/x"}, {"url": "https://h/y", "events": ["done"]}])
            },
            Some("notify[1].events"),
        );
        check(
            |v| v["notify"] = json!([{"url": "ftp://h/x"}]),
            Some("notify[0].url"),
        );
        check(
            |v| v["notify"] = json!([{"url": "http://user:pw@h/x"}]),
            Some("notify[0].url"),
        );
        check(|v| v["override_freeze"] = "hotfix INC-42".into(), None);
        check(
            |v| v["override_freeze"] = "".into(),
            Some("override_freeze"),
        );
        check(
            |v| v["override_freeze"] = "a\nb".into(),
            Some("override_freeze"),
        );
    }

    #[test]
    fn requests_without_progressive_fields_mean_the_same() {
        let old = serde_json::json!({
            "application": "pay", "environment": "prod", "team": "t",
            "selector": {"tags": ["app:pay"]},
            "changeset": {"version": "1.0", "url": "http://x/a.tgz", "sha256": "a".repeat(64)}
        });
        let r: DeployRequest = serde_json::from_value(old).unwrap();
        assert_eq!(r.canary, None);
        assert_eq!(r.on_failure, OnFailure::Stop);
        assert!(!r.pause_after_canary && r.pause_after_batches.is_empty());
        assert!(r.notify.is_empty() && r.override_freeze.is_none());
        assert_eq!(r.progress_deadline_seconds, None);
        // Serialized without the new keys: stored rows and CLI bodies are
        // byte-for-byte what they were.
        let v = serde_json::to_value(&r).unwrap();
        for k in [
            "canary",
            "on_failure",
            "pause_after_canary",
            "pause_after_batches",
            "progress_deadline_seconds",
            "notify",
            "override_freeze",
        ] {
            assert!(v.get(k).is_none(), "{k} serialized at its default");
        }
    }

    #[test]
    fn canary_defaults_and_host_counts() {
        let mut r = base();
        r.canary = Some(serde_json::from_value(serde_json::json!({})).unwrap());
        let c = r.canary.as_ref().unwrap();
        assert_eq!(c.analysis_seconds, 120);
        assert_eq!(c.inconclusive, crate::InconclusivePolicy::Pause);
        assert_eq!(r.canary_hosts_for(10), Ok(Some(1)));
        // The canary must leave a baseline.
        assert_eq!(r.canary_hosts_for(1).unwrap_err().field, "canary.hosts");
        r.canary.as_mut().unwrap().hosts = crate::CanaryHosts::Percent("10%".into());
        assert_eq!(r.canary_hosts_for(25), Ok(Some(3)));
        assert_eq!(r.canary_hosts_for(2), Ok(Some(1)));
        r.canary.as_mut().unwrap().hosts = crate::CanaryHosts::Count(5);
        assert!(r.canary_hosts_for(5).is_err());
        assert_eq!(r.canary_hosts_for(6), Ok(Some(5)));
        r.canary = None;
        assert_eq!(r.canary_hosts_for(1), Ok(None));
    }

    #[test]
    fn event_names_round_trip() {
        for e in crate::NotifyEvent::ALL {
            assert_eq!(e.as_str().parse::<crate::NotifyEvent>(), Ok(e));
            assert_eq!(
                serde_json::to_value(e).unwrap(),
                serde_json::Value::from(e.as_str())
            );
        }
        let w = crate::WebhookSpec {
            url: "https://h".into(),
            events: vec![],
        };
        assert_eq!(w.parsed_events().unwrap().len(), 8);
    }

    #[test]
    fn concurrency_counts() {
        let mut r = base();
        assert_eq!(r.concurrency_for(5), 2);
        assert_eq!(r.max_unavailable_for(5), 2);
        r.concurrency = Concurrency::Percent("25%".into());
        assert_eq!(r.concurrency_for(5), 2);
        assert_eq!(r.concurrency_for(100), 25);
        assert_eq!(r.concurrency_for(1), 1);
        r.max_unavailable = Some(1);
        assert_eq!(r.max_unavailable_for(5), 1);
    }

    #[test]
    fn concurrency_is_parsed_once() {
        use std::str::FromStr;
        assert_eq!(
            ConcurrencyLimit::from_str("10"),
            Ok(ConcurrencyLimit::Count(10))
        );
        assert_eq!(
            ConcurrencyLimit::from_str(" 25% "),
            Ok(ConcurrencyLimit::Percent(25))
        );
        for bad in ["0", "-1", "1001", "0%", "101%", "x", "%", "2.5"] {
            let e = ConcurrencyLimit::from_str(bad).unwrap_err();
            assert_eq!(e.field, "concurrency", "{bad}");
        }
        assert_eq!(ConcurrencyLimit::Percent(1).hosts_for(0), 1);
        assert_eq!(ConcurrencyLimit::Percent(50).hosts_for(5), 3);
        assert_eq!(ConcurrencyLimit::Count(5000).hosts_for(10), MAX_CONCURRENCY);
        // What the CLI sends is what the controller reads back.
        let wire =
            serde_json::to_string(&Concurrency::from(ConcurrencyLimit::Percent(25))).unwrap();
        assert_eq!(wire, "\"25%\"");
        let back: Concurrency = serde_json::from_str(&wire).unwrap();
        assert_eq!(back.limit(), Ok(ConcurrencyLimit::Percent(25)));
        assert_eq!(
            serde_json::to_string(&Concurrency::from(ConcurrencyLimit::Count(3))).unwrap(),
            "3"
        );
    }

    #[test]
    fn new_means_what_leaving_fields_out_means() {
        let wire: DeployRequest = serde_json::from_value(serde_json::json!({
            "application": "pay", "environment": "prod", "team": "t",
            "selector": {"tags": ["app:pay"]},
            "haproxy": {"backend": "pay", "selector": {"recipes": ["haproxy"]}}
        }))
        .unwrap();
        let sel = |k: &str, v: &str| {
            serde_json::from_value::<Selector>(serde_json::json!({ k: [v] })).unwrap()
        };
        let mut built = DeployRequest::new(
            "pay".into(),
            "prod".into(),
            "t".into(),
            sel("tags", "app:pay"),
        );
        built.haproxy = Some(HaproxySpec::new("pay".into(), sel("recipes", "haproxy")));
        assert_eq!(built, wire);
    }

    #[test]
    fn server_names_render_strictly() {
        let i = ServerNameInput::example();
        assert_eq!(render_server_name("{{ name }}", &i).unwrap(), "web-1");
        assert_eq!(
            render_server_name("{{ hostname }}-srv", &i).unwrap(),
            "web-1-srv"
        );
        assert!(render_server_name("{{ name }} x", &i).is_err());
        assert!(render_server_name("{{ missing }}", &i).is_err());
    }
}
