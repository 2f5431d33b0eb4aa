//! `vesemir deploy` flags → the `POST /v1/deployments` body (docs/API.md).
//!
//! Pure: no IO, so every flag's mapping is tested without a controller.
//! Validation here only catches what a user can fix before a round trip;
//! the controller is the authority and its 422 message is shown as is.

use anyhow::{bail, Result};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// Hosts at a time: the API's parsed form, so the CLI and the controller
/// apply the same range rules.
pub use vesemir_api::ConcurrencyLimit as Concurrency;

/// Parses `--concurrency`: `N` (1–1000) or `P%` (1–100), with the API's rules.
pub fn parse_concurrency(s: &str) -> Result<Concurrency, String> {
    s.parse::<Concurrency>()
        .map_err(|e| format!("{s:?}: {}", e.message))
}

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

fn kv(flag: &str, list: &[String]) -> Result<BTreeMap<String, String>> {
    list.iter()
        .map(|s| match s.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
            _ => bail!("{flag} {s:?}: expected K=V"),
        })
        .collect()
}

fn put_list(m: &mut Map<String, Value>, key: &str, list: &[String]) {
    if !list.is_empty() {
        m.insert(key.into(), json!(list));
    }
}

fn put_opt<T: serde::Serialize>(m: &mut Map<String, Value>, key: &str, v: &Option<T>) {
    if let Some(v) = v {
        m.insert(key.into(), json!(v));
    }
}

/// Checks a weight ramp the way the API does, naming the flag.
fn check_weights(w: &[u32]) -> Result<()> {
    if let Some(bad) = w.iter().find(|p| !(1..=100).contains(*p)) {
        bail!("--weights: {bad} is out of range (each weight is a percent, 1–100)");
    }
    if w.windows(2).any(|p| p[0] >= p[1]) {
        bail!("--weights: must go up, e.g. 10,50,100");
    }
    if w.last() != Some(&100) {
        bail!("--weights: the last weight must be 100 so the server ends at full weight");
    }
    Ok(())
}

/// Builds the request body; fields not given are left out so the
/// controller's defaults apply.
pub fn build(f: &RequestFlags, dry_run: bool) -> Result<Value> {
    for (flag, v) in [("--app", &f.app), ("--env", &f.env)] {
        if v.trim().is_empty() {
            bail!("{flag}: must not be empty");
        }
    }

    let mut sel = Map::new();
    put_list(&mut sel, "tags", &f.tags);
    put_list(&mut sel, "not_tags", &f.not_tags);
    put_list(&mut sel, "roles", &f.roles);
    put_list(&mut sel, "recipes", &f.recipes);
    put_opt(&mut sel, "environment", &f.chef_env);
    let attrs = kv("--attr", &f.attrs)?;
    if !attrs.is_empty() {
        sel.insert("attributes".into(), json!(attrs));
    }
    put_opt(&mut sel, "query", &f.query);
    if sel.is_empty() {
        bail!(
            "selector: say which hosts run the app with at least one of --tag, --not-tag, --role, --recipe, --chef-env, --attr, --query"
        );
    }

    let mut body = Map::new();
    body.insert("application".into(), json!(f.app));
    body.insert("environment".into(), json!(f.env));
    put_opt(&mut body, "team", &f.team);
    body.insert("selector".into(), Value::Object(sel));

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
                bail!(
                    "{flag} needs --haproxy-backend (without a backend there is no HAProxy step)"
                );
            }
        }
        Some(backend) => {
            let mut hsel = Map::new();
            put_list(&mut hsel, "tags", &f.haproxy_tags);
            put_list(&mut hsel, "roles", &f.haproxy_roles);
            put_list(&mut hsel, "recipes", &f.haproxy_recipes);
            put_opt(&mut hsel, "query", &f.haproxy_query);
            if hsel.is_empty() {
                bail!(
                    "haproxy.selector: say which VMs run HAProxy with --haproxy-recipe, --haproxy-tag, --haproxy-role or --haproxy-query"
                );
            }
            let mut h = Map::new();
            h.insert("backend".into(), json!(backend));
            h.insert("selector".into(), Value::Object(hsel));
            put_opt(&mut h, "degradation_seconds", &f.degradation_seconds);
            put_opt(&mut h, "drain_mode", &f.drain_mode.map(DrainMode::as_str));
            if !f.weights.is_empty() {
                check_weights(&f.weights)?;
                h.insert("weights".into(), json!(f.weights));
            }
            put_opt(&mut h, "sleep_seconds", &f.sleep_seconds);
            put_opt(&mut h, "server_name", &f.server_name);
            body.insert("haproxy".into(), Value::Object(h));
        }
    }

    if let Some(c) = f.concurrency {
        body.insert(
            "concurrency".into(),
            serde_json::to_value(vesemir_api::Concurrency::from(c))?,
        );
    }
    if f.max_unavailable == Some(0) {
        bail!("--max-unavailable: must be at least 1, or no host could ever leave rotation");
    }
    put_opt(&mut body, "max_unavailable", &f.max_unavailable);
    put_opt(&mut body, "max_fail_percentage", &f.max_fail_percentage);
    body.insert("playbook".into(), json!(f.playbook));
    body.insert("vars".into(), json!(crate::agents::parse_vars(&f.vars)?));

    match (&f.changeset_version, &f.changeset_url, &f.changeset_sha256) {
        (None, None, None) => {}
        (Some(v), Some(u), Some(s)) => {
            let s = s.trim();
            if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
                bail!("--changeset-sha256: expected 64 hex digits, got {s:?}");
            }
            let c = vesemir_api::ChangesetBody {
                version: v.clone(),
                url: u.clone(),
                sha256: s.to_ascii_lowercase(),
                playbook: f.changeset_playbook.clone(),
            };
            // The controller's own rule, named by flag, before a round trip.
            if let Err((field, message)) = vesemir_api::check_changeset(&c) {
                let flag = format!("--{}", field.replace('.', "-"));
                bail!("{flag}: {message}");
            }
            body.insert("changeset".into(), serde_json::to_value(c)?);
        }
        _ => bail!(
            "changeset: give all of --changeset-version, --changeset-url and --changeset-sha256, or none"
        ),
    }
    if f.changeset_playbook.is_some() && !body.contains_key("changeset") {
        bail!("--changeset-playbook needs a changeset (--changeset-version, --changeset-url, --changeset-sha256)");
    }
    body.insert("dry_run".into(), json!(dry_run));
    Ok(Value::Object(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

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

    /// Flags → body, compared as JSON.
    fn check(args: &[&str], expected: Value) {
        let f = parse(args).unwrap();
        assert_eq!(build(&f, false).unwrap(), expected, "args: {args:?}");
    }

    /// Flags → an error mentioning `needle` (from clap or from `build`).
    fn check_err(args: &[&str], needle: &str) {
        let err = match parse(args) {
            Err(e) => e,
            Ok(f) => match build(&f, false) {
                Err(e) => e.to_string(),
                Ok(v) => panic!("args {args:?} were accepted: {v}"),
            },
        };
        assert!(
            err.contains(needle),
            "args {args:?}: {err:?} lacks {needle:?}"
        );
    }

    #[test]
    fn minimal_request_leaves_defaults_to_the_controller() {
        check(
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
        let f = parse(&["--app", "a", "--env", "e", "--query", "name:web-*"]).unwrap();
        assert_eq!(build(&f, true).unwrap()["dry_run"], json!(true));
    }
}
