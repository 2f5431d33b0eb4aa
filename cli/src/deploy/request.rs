//! `vesemir deploy` flags → the `POST /v1/deployments` body (docs/API.md).
//!
//! Pure: no IO, so every flag's mapping is tested without a controller.
//! Validation here only catches what a user can fix before a round trip;
//! the controller is the authority and its 422 message is shown as is.

use serde::ser::{Serialize, SerializeMap, Serializer};
use std::collections::BTreeMap;
use vesemir_api::{DeployRequest, HaproxySpec, Selector};

/// Hosts at a time: the API's parsed form, so the CLI and the controller
/// apply the same range rules.
pub use vesemir_api::ConcurrencyLimit as Concurrency;

/// `--drain-mode`: how a server leaves rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DrainMode {
    /// Stop new connections, let current ones finish.
    Drain,
    /// Out of rotation at once (health checks stop too).
    Maint,
}

impl DrainMode {
    fn as_str(self) -> &'static str {
        match self {
            DrainMode::Drain => "drain",
            DrainMode::Maint => "maint",
        }
    }
}

/// The request fields, as flags (one per field of the API's request).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RequestFlags {
    /// Application (e.g. payments).
    #[arg(long)]
    pub app: String,
    /// Environment (e.g. production).
    #[arg(long)]
    pub env: String,
    /// Team that owns the application.
    #[arg(long)]
    pub team: Option<String>,

    /// App hosts: Chef tag they carry (repeatable; all must match).
    #[arg(
        long = "tag",
        alias = "tags",
        value_name = "TAG",
        help_heading = "Hosts"
    )]
    pub tags: Vec<String>,
    /// App hosts: Chef tag they must not carry (repeatable).
    #[arg(long = "not-tag", value_name = "TAG", help_heading = "Hosts")]
    pub not_tags: Vec<String>,
    /// App hosts: Chef role (repeatable).
    #[arg(long = "role", value_name = "ROLE", help_heading = "Hosts")]
    pub roles: Vec<String>,
    /// App hosts: recipe in their run list (repeatable).
    #[arg(long = "recipe", value_name = "RECIPE", help_heading = "Hosts")]
    pub recipes: Vec<String>,
    /// App hosts: Chef environment.
    #[arg(long = "chef-env", value_name = "ENV", help_heading = "Hosts")]
    pub chef_env: Option<String>,
    /// App hosts: node attribute K=V (repeatable).
    #[arg(long = "attr", value_name = "K=V", help_heading = "Hosts")]
    pub attrs: Vec<String>,
    /// App hosts: raw Chef search query (ANDed with the other host flags).
    #[arg(long = "query", value_name = "RAW", help_heading = "Hosts")]
    pub query: Option<String>,

    /// HAProxy backend of the app; without it there is no traffic choreography.
    #[arg(long, value_name = "NAME", help_heading = "HAProxy")]
    pub haproxy_backend: Option<String>,
    /// HAProxy VMs: Chef tag (repeatable).
    #[arg(long = "haproxy-tag", value_name = "TAG", help_heading = "HAProxy")]
    pub haproxy_tags: Vec<String>,
    /// HAProxy VMs: Chef role (repeatable).
    #[arg(long = "haproxy-role", value_name = "ROLE", help_heading = "HAProxy")]
    pub haproxy_roles: Vec<String>,
    /// HAProxy VMs: recipe / cookbook in their run list (repeatable).
    #[arg(
        long = "haproxy-recipe",
        value_name = "RECIPE",
        help_heading = "HAProxy"
    )]
    pub haproxy_recipes: Vec<String>,
    /// HAProxy VMs: raw Chef search query.
    #[arg(long = "haproxy-query", value_name = "RAW", help_heading = "HAProxy")]
    pub haproxy_query: Option<String>,
    /// Longest wait for a drained server's connections to finish.
    #[arg(long, value_name = "SECS", help_heading = "HAProxy")]
    pub degradation_seconds: Option<u64>,
    /// How a server leaves rotation.
    #[arg(long, value_enum, help_heading = "HAProxy")]
    pub drain_mode: Option<DrainMode>,
    /// Weight ramp in percent once a host is back, e.g. 10,50,100.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "P,P,…",
        help_heading = "HAProxy"
    )]
    pub weights: Vec<u32>,
    /// Seconds between ramp steps.
    #[arg(long, value_name = "SECS", help_heading = "HAProxy")]
    pub sleep_seconds: Option<u64>,
    /// Server name in the backend, a template over name/address/fqdn/hostname (default {{ name }}).
    #[arg(long, value_name = "TEMPLATE", help_heading = "HAProxy")]
    pub server_name: Option<String>,

    /// Hosts at a time: N or P% of the hosts.
    #[arg(long, value_parser = parse_concurrency, value_name = "N|P%", help_heading = "Pace")]
    pub concurrency: Option<Concurrency>,
    /// Servers of the backend out of rotation at once (default: the concurrency).
    #[arg(long, value_name = "N", help_heading = "Pace")]
    pub max_unavailable: Option<u32>,
    /// Failed hosts tolerated, in percent, before the deployment aborts (default 0).
    #[arg(long, value_name = "P", value_parser = clap::value_parser!(u32).range(0..=100), help_heading = "Pace")]
    pub max_fail_percentage: Option<u32>,

    /// Playbook shipped with the agents.
    #[arg(long, default_value = "deploy.yml", help_heading = "What")]
    pub playbook: String,
    /// Playbook variable K=V (repeatable).
    #[arg(long = "var", value_name = "K=V", help_heading = "What")]
    pub vars: Vec<String>,
    /// Changeset version.
    #[arg(long, value_name = "VERSION", help_heading = "What")]
    pub changeset_version: Option<String>,
    /// Changeset URL (a tarball).
    #[arg(long, value_name = "URL", help_heading = "What")]
    pub changeset_url: Option<String>,
    /// Changeset SHA-256 (64 hex digits).
    #[arg(long, value_name = "HEX", help_heading = "What")]
    pub changeset_sha256: Option<String>,
    /// Run the playbook carried in the changeset at this path inside the
    /// archive (e.g. deploy/vesemir.yml) instead of --playbook.
    #[arg(long, value_name = "PATH", help_heading = "What")]
    pub changeset_playbook: Option<String>,
}

/// Why the flags do not make a request; each names the flag to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// `--app` or `--env` is blank.
    #[error("{0}: must not be empty")]
    Empty(&'static str),
    /// A `K=V` flag without `=` (or, for `--attr`, without a key).
    #[error("{flag} {input:?}: expected K=V")]
    KeyValue {
        /// The flag.
        flag: &'static str,
        /// What was given.
        input: String,
    },
    /// No host flag at all: nobody deploys to the whole fleet by accident.
    #[error("selector: say which hosts run the app with at least one of --tag, --not-tag, --role, --recipe, --chef-env, --attr, --query")]
    NoSelector,
    /// An HAProxy flag without `--haproxy-backend`.
    #[error("{0} needs --haproxy-backend (without a backend there is no HAProxy step)")]
    NeedsBackend(&'static str),
    /// `--haproxy-backend` without a way to find the HAProxy VMs.
    #[error("haproxy.selector: say which VMs run HAProxy with --haproxy-recipe, --haproxy-tag, --haproxy-role or --haproxy-query")]
    NoHaproxySelector,
    /// A weight outside 1–100.
    #[error("--weights: {0} is out of range (each weight is a percent, 1–100)")]
    WeightRange(u32),
    /// Weights that do not go up.
    #[error("--weights: must go up, e.g. 10,50,100")]
    WeightOrder,
    /// A ramp that does not end at full weight.
    #[error("--weights: the last weight must be 100 so the server ends at full weight")]
    WeightEnd,
    /// `--max-unavailable 0`.
    #[error("--max-unavailable: must be at least 1, or no host could ever leave rotation")]
    MaxUnavailableZero,
    /// A SHA-256 that is not 64 hex digits.
    #[error("--changeset-sha256: expected 64 hex digits, got {0:?}")]
    Sha256(String),
    /// The API's changeset rule, named by flag.
    #[error("{flag}: {message}")]
    Changeset {
        /// The flag of the field.
        flag: String,
        /// The API's message.
        message: String,
    },
    /// Some but not all of the changeset flags.
    #[error("changeset: give all of --changeset-version, --changeset-url and --changeset-sha256, or none")]
    PartialChangeset,
    /// `--changeset-playbook` without a changeset.
    #[error("--changeset-playbook needs a changeset (--changeset-version, --changeset-url, --changeset-sha256)")]
    PlaybookWithoutChangeset,
}

/// `--concurrency` that the API's rules refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?}: {}", .source.message)]
pub struct ConcurrencyError {
    /// What was given.
    input: String,
    /// The API's reason.
    source: vesemir_api::FieldError,
}

/// Parses `--concurrency`: `N` (1–1000) or `P%` (1–100), with the API's rules.
pub fn parse_concurrency(s: &str) -> Result<Concurrency, ConcurrencyError> {
    s.parse::<Concurrency>().map_err(|source| ConcurrencyError {
        input: s.to_string(),
        source,
    })
}

/// `K=V` flags into a map; `trim` trims keys and refuses empty ones.
fn kv(
    flag: &'static str,
    list: &[String],
    trim: bool,
) -> Result<BTreeMap<String, String>, RequestError> {
    list.iter()
        .map(|s| match s.split_once('=') {
            Some((k, v)) if !trim => Ok((k.to_string(), v.to_string())),
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
            _ => Err(RequestError::KeyValue {
                flag,
                input: s.clone(),
            }),
        })
        .collect()
}

/// Checks a weight ramp the way the API does, naming the flag.
fn check_weights(w: &[u32]) -> Result<(), RequestError> {
    if let Some(bad) = w.iter().find(|p| !(1..=100).contains(*p)) {
        return Err(RequestError::WeightRange(*bad));
    }
    if w.windows(2).any(|p| p[0] >= p[1]) {
        return Err(RequestError::WeightOrder);
    }
    if w.last() != Some(&100) {
        return Err(RequestError::WeightEnd);
    }
    Ok(())
}

/// Builds the request; fields not given keep the controller's defaults
/// ([`DeployRequest::new`]).
pub fn build(f: &RequestFlags, dry_run: bool) -> Result<DeployRequest, RequestError> {
    for (flag, v) in [("--app", &f.app), ("--env", &f.env)] {
        if v.trim().is_empty() {
            return Err(RequestError::Empty(flag));
        }
    }

    let selector = Selector {
        tags: f.tags.clone(),
        not_tags: f.not_tags.clone(),
        roles: f.roles.clone(),
        recipes: f.recipes.clone(),
        environment: f.chef_env.clone(),
        attributes: kv("--attr", &f.attrs, true)?,
        query: f.query.clone(),
    };
    if selector.is_empty() {
        return Err(RequestError::NoSelector);
    }
    // No --team: left out of the body (see [`Body`]), so the controller
    // names the missing field as it always has.
    let team = f.team.clone().unwrap_or_default();
    let mut req = DeployRequest::new(f.app.clone(), f.env.clone(), team, selector);

    let haproxy_extras: [(&str, bool); 9] = [
        ("--haproxy-tag", !f.haproxy_tags.is_empty()),
        ("--haproxy-role", !f.haproxy_roles.is_empty()),
        ("--haproxy-recipe", !f.haproxy_recipes.is_empty()),
        ("--haproxy-query", f.haproxy_query.is_some()),
        ("--degradation-seconds", f.degradation_seconds.is_some()),
        ("--drain-mode", f.drain_mode.is_some()),
        ("--weights", !f.weights.is_empty()),
        ("--sleep-seconds", f.sleep_seconds.is_some()),
        ("--server-name", f.server_name.is_some()),
    ];
    match &f.haproxy_backend {
        None => {
            if let Some((flag, _)) = haproxy_extras.iter().find(|(_, given)| *given) {
                return Err(RequestError::NeedsBackend(flag));
            }
        }
        Some(backend) => {
            let hsel = Selector {
                tags: f.haproxy_tags.clone(),
                roles: f.haproxy_roles.clone(),
                recipes: f.haproxy_recipes.clone(),
                query: f.haproxy_query.clone(),
                ..Selector::default()
            };
            if hsel.is_empty() {
                return Err(RequestError::NoHaproxySelector);
            }
            let mut h = HaproxySpec::new(backend.clone(), hsel);
            if let Some(d) = f.degradation_seconds {
                h.degradation_seconds = d;
            }
            if let Some(m) = f.drain_mode {
                h.drain_mode = m.as_str().into();
            }
            if !f.weights.is_empty() {
                check_weights(&f.weights)?;
                h.weights = f.weights.clone();
            }
            if let Some(s) = f.sleep_seconds {
                h.sleep_seconds = s;
            }
            if let Some(n) = &f.server_name {
                h.server_name = n.clone();
            }
            req.haproxy = Some(h);
        }
    }

    if let Some(c) = f.concurrency {
        req.concurrency = c.into();
    }
    if f.max_unavailable == Some(0) {
        return Err(RequestError::MaxUnavailableZero);
    }
    req.max_unavailable = f.max_unavailable;
    if let Some(p) = f.max_fail_percentage {
        req.max_fail_percentage = p;
    }
    req.playbook = f.playbook.clone();
    req.vars = kv("--var", &f.vars, false)?;

    match (&f.changeset_version, &f.changeset_url, &f.changeset_sha256) {
        (None, None, None) => {}
        (Some(v), Some(u), Some(s)) => {
            let s = s.trim();
            if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(RequestError::Sha256(s.to_string()));
            }
            let c = vesemir_api::ChangesetBody {
                version: v.clone(),
                url: u.clone(),
                sha256: s.to_ascii_lowercase(),
                playbook: f.changeset_playbook.clone(),
            };
            // The controller's own rule, named by flag, before a round trip.
            if let Err((field, message)) = vesemir_api::check_changeset(&c) {
                return Err(RequestError::Changeset {
                    flag: format!("--{}", field.replace('.', "-")),
                    message: message.to_string(),
                });
            }
            req.changeset = Some(c);
        }
        _ => return Err(RequestError::PartialChangeset),
    }
    if f.changeset_playbook.is_some() && req.changeset.is_none() {
        return Err(RequestError::PlaybookWithoutChangeset);
    }
    req.dry_run = dry_run;
    Ok(req)
}

/// The request as the CLI sends it: the fields a user gave, the rest left
/// out so the controller applies its own defaults (the body stays what
/// it was before the CLI built typed requests; an empty team is left out
/// so the controller's "team: required" is what the user reads).
pub struct Body<'a>(pub &'a DeployRequest);

/// A selector without its empty fields.
struct SelectorBody<'a>(&'a Selector);

/// An HAProxy spec without the fields at their defaults.
struct HaproxyBody<'a>(&'a HaproxySpec);

impl Serialize for SelectorBody<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let x = self.0;
        let mut m = s.serialize_map(None)?;
        for (k, list) in [
            ("tags", &x.tags),
            ("not_tags", &x.not_tags),
            ("roles", &x.roles),
            ("recipes", &x.recipes),
        ] {
            if !list.is_empty() {
                m.serialize_entry(k, list)?;
            }
        }
        if let Some(e) = &x.environment {
            m.serialize_entry("environment", e)?;
        }
        if !x.attributes.is_empty() {
            m.serialize_entry("attributes", &x.attributes)?;
        }
        if let Some(q) = &x.query {
            m.serialize_entry("query", q)?;
        }
        m.end()
    }
}

impl Serialize for HaproxyBody<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (h, d) = (self.0, HaproxySpec::new(String::new(), Selector::default()));
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("backend", &h.backend)?;
        m.serialize_entry("selector", &SelectorBody(&h.selector))?;
        if h.degradation_seconds != d.degradation_seconds {
            m.serialize_entry("degradation_seconds", &h.degradation_seconds)?;
        }
        if h.drain_mode != d.drain_mode {
            m.serialize_entry("drain_mode", &h.drain_mode)?;
        }
        if h.weights != d.weights {
            m.serialize_entry("weights", &h.weights)?;
        }
        if h.sleep_seconds != d.sleep_seconds {
            m.serialize_entry("sleep_seconds", &h.sleep_seconds)?;
        }
        if h.server_name != d.server_name {
            m.serialize_entry("server_name", &h.server_name)?;
        }
        m.end()
    }
}

impl Serialize for Body<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.0;
        let d = DeployRequest::new(
            String::new(),
            String::new(),
            String::new(),
            Selector::default(),
        );
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("application", &r.application)?;
        m.serialize_entry("environment", &r.environment)?;
        if !r.team.is_empty() {
            m.serialize_entry("team", &r.team)?;
        }
        m.serialize_entry("selector", &SelectorBody(&r.selector))?;
        if let Some(h) = &r.haproxy {
            m.serialize_entry("haproxy", &HaproxyBody(h))?;
        }
        if r.concurrency != d.concurrency {
            m.serialize_entry("concurrency", &r.concurrency)?;
        }
        if let Some(u) = r.max_unavailable {
            m.serialize_entry("max_unavailable", &u)?;
        }
        if r.max_fail_percentage != d.max_fail_percentage {
            m.serialize_entry("max_fail_percentage", &r.max_fail_percentage)?;
        }
        m.serialize_entry("playbook", &r.playbook)?;
        m.serialize_entry("vars", &r.vars)?;
        if let Some(c) = &r.changeset {
            m.serialize_entry("changeset", c)?;
        }
        m.serialize_entry("dry_run", &r.dry_run)?;
        if r.job_timeout_seconds != d.job_timeout_seconds {
            m.serialize_entry("job_timeout_seconds", &r.job_timeout_seconds)?;
        }
        // Progressive delivery: no flags yet, but never dropped if set.
        if let Some(c) = &r.canary {
            m.serialize_entry("canary", c)?;
        }
        if !r.on_failure.is_stop() {
            m.serialize_entry("on_failure", &r.on_failure)?;
        }
        if r.pause_after_canary {
            m.serialize_entry("pause_after_canary", &true)?;
        }
        if !r.pause_after_batches.is_empty() {
            m.serialize_entry("pause_after_batches", &r.pause_after_batches)?;
        }
        if let Some(p) = r.progress_deadline_seconds {
            m.serialize_entry("progress_deadline_seconds", &p)?;
        }
        if !r.notify.is_empty() {
            m.serialize_entry("notify", &r.notify)?;
        }
        if let Some(o) = &r.override_freeze {
            m.serialize_entry("override_freeze", o)?;
        }
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use serde_json::{json, Value};

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        f: RequestFlags,
    }

    const SHA: &str = "a3f1c0ffee00000000000000000000000000000000000000000000000000beef";

    fn parse(args: &[&str]) -> std::result::Result<RequestFlags, String> {
        let argv = std::iter::once("deploy").chain(args.iter().copied());
        T::try_parse_from(argv)
            .map(|t| t.f)
            .map_err(|e| e.to_string())
    }

    /// Flags → request, compared with what the controller reads from
    /// `expected` (a body as the CLI sends it: only given fields); the body
    /// the CLI sends reads back as the same request.
    fn check(args: &[&str], expected: Value) {
        let f = parse(args).unwrap();
        let built = build(&f, false).unwrap();
        let sent = serde_json::to_value(Body(&built)).unwrap();
        let want: DeployRequest = serde_json::from_value(expected).unwrap();
        let back: DeployRequest = serde_json::from_value(sent).unwrap();
        assert_eq!(built, want, "args: {args:?}");
        assert_eq!(back, built, "args: {args:?}");
    }

    /// Flags → the exact body sent.
    fn check_wire(args: &[&str], expected: Value) {
        let f = parse(args).unwrap();
        let sent = serde_json::to_value(Body(&build(&f, false).unwrap())).unwrap();
        assert_eq!(sent, expected, "args: {args:?}");
    }

    /// Flags → an error mentioning `needle` (from clap or from `build`).
    fn check_err(args: &[&str], needle: &str) {
        let err = match parse(args) {
            Err(e) => e,
            Ok(f) => match build(&f, false) {
                Err(e) => e.to_string(),
                Ok(v) => panic!("args {args:?} were accepted: {v:?}"),
            },
        };
        assert!(
            err.contains(needle),
            "args {args:?}: {err:?} lacks {needle:?}"
        );
    }

    #[test]
    fn minimal_request_leaves_defaults_to_the_controller() {
        check_wire(
            &[
                "--app",
                "payments",
                "--env",
                "production",
                "--tag",
                "app:payments",
            ],
            json!({
                "application": "payments", "environment": "production",
                "selector": {"tags": ["app:payments"]},
                "playbook": "deploy.yml", "vars": {}, "dry_run": false
            }),
        );
    }

    #[test]
    fn every_flag_lands_in_its_field() {
        check(
            &[
                "--app",
                "payments",
                "--env",
                "production",
                "--team",
                "pay",
                "--tag",
                "app:payments",
                "--tag",
                "tier:web",
                "--not-tag",
                "canary",
                "--role",
                "web",
                "--recipe",
                "payments::default",
                "--chef-env",
                "production",
                "--attr",
                "dc=par1",
                "--query",
                "platform:debian",
                "--haproxy-backend",
                "payments",
                "--haproxy-recipe",
                "haproxy",
                "--haproxy-tag",
                "lb",
                "--haproxy-role",
                "edge",
                "--haproxy-query",
                "dc:par1",
                "--degradation-seconds",
                "30",
                "--drain-mode",
                "maint",
                "--weights",
                "10,50,100",
                "--sleep-seconds",
                "5",
                "--server-name",
                "{{ hostname }}",
                "--concurrency",
                "25%",
                "--max-unavailable",
                "2",
                "--max-fail-percentage",
                "10",
                "--playbook",
                "rollback.yml",
                "--var",
                "service=payments.service",
                "--var",
                "a=b=c",
                "--changeset-version",
                "2.4.1",
                "--changeset-url",
                "https://x/p.tgz",
                "--changeset-sha256",
                SHA,
            ],
            json!({
                "application": "payments", "environment": "production", "team": "pay",
                "selector": {
                    "tags": ["app:payments", "tier:web"], "not_tags": ["canary"],
                    "roles": ["web"], "recipes": ["payments::default"],
                    "environment": "production", "attributes": {"dc": "par1"},
                    "query": "platform:debian"
                },
                "haproxy": {
                    "backend": "payments",
                    "selector": {"tags": ["lb"], "roles": ["edge"], "recipes": ["haproxy"], "query": "dc:par1"},
                    "degradation_seconds": 30, "drain_mode": "maint", "weights": [10, 50, 100],
                    "sleep_seconds": 5, "server_name": "{{ hostname }}"
                },
                "concurrency": "25%", "max_unavailable": 2, "max_fail_percentage": 10,
                "playbook": "rollback.yml",
                "vars": {"service": "payments.service", "a": "b=c"},
                "changeset": {"version": "2.4.1", "url": "https://x/p.tgz", "sha256": SHA},
                "dry_run": false
            }),
        );
    }

    #[test]
    fn given_flags_are_sent_as_before() {
        check_wire(
            &[
                "--app",
                "pay",
                "--env",
                "prod",
                "--team",
                "t",
                "--role",
                "web",
                "--haproxy-backend",
                "pay",
                "--haproxy-recipe",
                "haproxy",
                "--drain-mode",
                "maint",
                "--weights",
                "50,100",
                "--concurrency",
                "2",
                "--max-unavailable",
                "1",
                "--max-fail-percentage",
                "5",
            ],
            json!({
                "application": "pay", "environment": "prod", "team": "t",
                "selector": {"roles": ["web"]},
                "haproxy": {
                    "backend": "pay", "selector": {"recipes": ["haproxy"]},
                    "drain_mode": "maint", "weights": [50, 100]
                },
                "concurrency": 2, "max_unavailable": 1, "max_fail_percentage": 5,
                "playbook": "deploy.yml", "vars": {}, "dry_run": false
            }),
        );
    }

    #[test]
    fn changesets_are_checked_by_the_api_rules_before_sending() {
        let cs = |version: &str, url: &str, playbook: &str| {
            let mut a = vec![
                "--app",
                "pay",
                "--env",
                "prod",
                "--tag",
                "app:pay",
                "--changeset-sha256",
                SHA,
            ];
            a.extend(["--changeset-version", version, "--changeset-url", url]);
            if !playbook.is_empty() {
                a.extend(["--changeset-playbook", playbook]);
            }
            a.into_iter().map(String::from).collect::<Vec<_>>()
        };
        let run = |a: Vec<String>, needle: &str| {
            check_err(&a.iter().map(String::as_str).collect::<Vec<_>>(), needle)
        };
        run(cs("../x", "https://x/p.tgz", ""), "--changeset-version");
        run(
            cs("1.0", "ftp://x/p.tgz", ""),
            "--changeset-url: must be an http:// or https:// URL",
        );
        run(
            cs("1.0", "https://x/p.tgz", "../up.yml"),
            "--changeset-playbook",
        );
    }

    #[test]
    fn concurrency_is_a_number_or_a_percentage() {
        assert_eq!(parse_concurrency("3"), Ok(Concurrency::Count(3)));
        assert_eq!(parse_concurrency("25%"), Ok(Concurrency::Percent(25)));
        assert_eq!(parse_concurrency(" 100% "), Ok(Concurrency::Percent(100)));
        let wire = |c| serde_json::to_value(vesemir_api::Concurrency::from(c)).unwrap();
        assert_eq!(wire(Concurrency::Count(2)), json!(2));
        assert_eq!(wire(Concurrency::Percent(25)), json!("25%"));
        for bad in ["0", "0%", "101%", "-1", "two", "", "%", "2.5"] {
            assert!(parse_concurrency(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn obvious_mistakes_are_named_before_a_round_trip() {
        let base = ["--app", "a", "--env", "e"];
        let with = |extra: &[&'static str]| -> Vec<&'static str> {
            base.iter().chain(extra).copied().collect()
        };
        check_err(&with(&[]), "selector");
        check_err(&["--env", "e", "--tag", "t"], "--app");
        check_err(
            &with(&["--tag", "t", "--concurrency", "0"]),
            "--concurrency",
        );
        check_err(
            &with(&["--tag", "t", "--max-fail-percentage", "101"]),
            "--max-fail-percentage",
        );
        check_err(
            &with(&["--tag", "t", "--max-unavailable", "0"]),
            "--max-unavailable",
        );
        check_err(&with(&["--tag", "t", "--weights", "10,50"]), "--weights");
        check_err(
            &with(&[
                "--tag",
                "t",
                "--haproxy-backend",
                "b",
                "--haproxy-recipe",
                "h",
                "--weights",
                "50,10,100",
            ]),
            "must go up",
        );
        check_err(
            &with(&[
                "--tag",
                "t",
                "--haproxy-backend",
                "b",
                "--haproxy-recipe",
                "h",
                "--weights",
                "0,100",
            ]),
            "out of range",
        );
        check_err(
            &with(&[
                "--tag",
                "t",
                "--haproxy-backend",
                "b",
                "--haproxy-recipe",
                "h",
                "--weights",
                "10,50",
            ]),
            "last weight",
        );
        check_err(
            &with(&["--tag", "t", "--weights", "100"]),
            "needs --haproxy-backend",
        );
        check_err(
            &with(&["--tag", "t", "--haproxy-backend", "b"]),
            "haproxy.selector",
        );
        check_err(
            &with(&["--tag", "t", "--drain-mode", "off"]),
            "--drain-mode",
        );
        check_err(&with(&["--tag", "t", "--var", "novalue"]), "--var");
        check_err(&with(&["--tag", "t", "--attr", "=v"]), "--attr");
        check_err(
            &with(&["--tag", "t", "--changeset-version", "1"]),
            "changeset",
        );
        check_err(
            &with(&[
                "--tag",
                "t",
                "--changeset-version",
                "1",
                "--changeset-url",
                "u",
                "--changeset-sha256",
                "abc",
            ]),
            "--changeset-sha256",
        );
    }

    #[test]
    fn dry_run_is_a_field() {
        let f = parse(&[
            "--app",
            "a",
            "--env",
            "e",
            "--team",
            "t",
            "--query",
            "name:web-*",
        ])
        .unwrap();
        assert!(build(&f, true).unwrap().dry_run);
        assert!(!build(&f, false).unwrap().dry_run);
    }
}
