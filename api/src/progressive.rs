//! Progressive-delivery fields of a deploy request: the canary and its
//! analysis, what to do on failure, pauses, the progress deadline, webhooks
//! and the freeze override.
//!
//! Every field has a serde default that means "as before", and is skipped
//! when serializing at that default, so a request written before these
//! fields existed parses, means and re-serializes the same.
//!
//! The controller parses and validates these fields; it acts on `notify`
//! and `override_freeze`, and refuses the others until it acts on them.

use crate::deploy::{parse_percent, ConcurrencyLimit, FieldError, MAX_CONCURRENCY};
use serde::{Deserialize, Serialize};

/// `canary`: deploy a few hosts first, watch their traffic against the
/// servers not yet deployed, and go on only if they look as healthy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CanarySpec {
    /// How many hosts form the canary: a number or "N%".
    #[serde(default = "default_canary_hosts")]
    pub hosts: CanaryHosts,
    /// How long the canary is watched before a verdict.
    #[serde(default = "default_analysis_seconds")]
    pub analysis_seconds: u64,
    /// Time between two `show stat` samples during the analysis.
    #[serde(default = "default_sample_interval")]
    pub sample_interval_seconds: u64,
    /// Error rate (0.0–1.0) of the canary above which it fails, whatever
    /// the baseline does.
    #[serde(default = "default_max_error_rate")]
    pub max_error_rate: f64,
    /// How much the canary's error rate may exceed the baseline's (absolute,
    /// 0.0–1.0) before it fails.
    #[serde(default = "default_max_error_rate_increase")]
    pub max_error_rate_increase: f64,
    /// Canary mean response time over the baseline's above which it fails.
    #[serde(default = "default_max_latency_ratio")]
    pub max_latency_ratio: f64,
    /// Fewest canary responses in the window to judge at all; fewer is
    /// inconclusive.
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
    /// What an inconclusive analysis leads to.
    #[serde(default)]
    pub inconclusive: InconclusivePolicy,
    /// An extra Prometheus instant query checked at the end of the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusCheck>,
}

fn default_canary_hosts() -> CanaryHosts {
    CanaryHosts::Count(1)
}
fn default_analysis_seconds() -> u64 {
    120
}
fn default_sample_interval() -> u64 {
    10
}
fn default_max_error_rate() -> f64 {
    0.05
}
fn default_max_error_rate_increase() -> f64 {
    0.01
}
fn default_max_latency_ratio() -> f64 {
    1.5
}
fn default_min_requests() -> u64 {
    100
}

/// Canary size as written on the wire: a number or a `"10%"` string, kept
/// loose like [`crate::Concurrency`] so a bad value gets a 422 naming
/// `canary.hosts`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum CanaryHosts {
    /// A number of hosts.
    Count(i64),
    /// A percentage of the hosts, written "10%".
    Percent(String),
}

impl CanaryHosts {
    /// Parses the wire form (the one place its range rules live).
    pub fn limit(&self) -> Result<ConcurrencyLimit, FieldError> {
        match self {
            CanaryHosts::Count(n) if *n < 1 || *n > MAX_CONCURRENCY as i64 => Err(field(
                "canary.hosts",
                "must be a number of hosts from 1 to 1000, or a percentage like \"10%\"",
            )),
            CanaryHosts::Count(n) => Ok(ConcurrencyLimit::Count(*n as u32)),
            CanaryHosts::Percent(p) => match parse_percent(p) {
                Some(100) | None => Err(field(
                    "canary.hosts",
                    "must be a percentage from 1% to 99% (a canary of every host is no canary)",
                )),
                Some(p) => Ok(ConcurrencyLimit::Percent(p)),
            },
        }
    }

    /// Canary host count for `total` hosts, or why there can be no canary
    /// (it would cover every host). An invalid value, which validation
    /// refuses, counts as 1 host.
    pub fn hosts_for(&self, total: usize) -> Result<usize, FieldError> {
        let n = self
            .limit()
            .unwrap_or(ConcurrencyLimit::Count(1))
            .hosts_for(total);
        if n >= total {
            return Err(field(
                "canary.hosts",
                format!(
                    "{n} canary host(s) of {total}: the canary must leave at least one host \
                     undeployed to compare against; use fewer canary hosts or no canary"
                ),
            ));
        }
        Ok(n)
    }
}

/// What an inconclusive canary analysis (too little traffic, a failed
/// Prometheus query) leads to.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum InconclusivePolicy {
    /// Pause the deployment for a person to resume or abort it.
    #[default]
    Pause,
    /// Treat it as a failed canary.
    Fail,
    /// Treat it as a passed canary.
    Pass,
}

/// `canary.prometheus`: an instant query whose value must stay at or below
/// `max`. `{{ host }}` and `{{ server }}` in the query are rendered per
/// canary host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PrometheusCheck {
    /// Prometheus base URL (http or https).
    pub url: String,
    /// PromQL instant query.
    pub query: String,
    /// Highest value that passes.
    pub max: f64,
}

/// `on_failure`: what a failed deployment does to the hosts already done.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Stop where it is (today's behaviour).
    #[default]
    Stop,
    /// Redeploy the previous changeset on the hosts already deployed.
    Rollback,
}

impl OnFailure {
    /// Whether this is the default (skipped when serializing).
    pub fn is_stop(&self) -> bool {
        *self == OnFailure::Stop
    }
}

/// One webhook of `notify`: where to post which events. Event names are
/// kept as strings on the wire so an unknown one is a 422 naming the field.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    /// Where the JSON body is posted (http or https).
    pub url: String,
    /// Which events are posted; empty means all.
    #[serde(default)]
    pub events: Vec<String>,
}

impl WebhookSpec {
    /// The events, parsed; empty means every event.
    pub fn parsed_events(&self) -> Result<Vec<NotifyEvent>, String> {
        let events: Result<Vec<_>, _> = self.events.iter().map(|e| e.parse()).collect();
        let events = events?;
        Ok(if events.is_empty() {
            NotifyEvent::ALL.to_vec()
        } else {
            events
        })
    }
}

/// What a webhook can be told about a deployment.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum NotifyEvent {
    /// The first host started.
    Started,
    /// The deployment paused (after the canary, a batch, or inconclusive).
    Paused,
    /// The canary analysis passed.
    CanaryPassed,
    /// The canary analysis failed.
    CanaryFailed,
    /// Every host is deployed.
    Succeeded,
    /// The deployment failed.
    Failed,
    /// Someone cancelled it.
    Aborted,
    /// The hosts deployed were rolled back.
    RolledBack,
}

impl NotifyEvent {
    /// Every event, in the order above.
    pub const ALL: [NotifyEvent; 8] = [
        NotifyEvent::Started,
        NotifyEvent::Paused,
        NotifyEvent::CanaryPassed,
        NotifyEvent::CanaryFailed,
        NotifyEvent::Succeeded,
        NotifyEvent::Failed,
        NotifyEvent::Aborted,
        NotifyEvent::RolledBack,
    ];

    /// The wire name (`canary_passed`…).
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyEvent::Started => "started",
            NotifyEvent::Paused => "paused",
            NotifyEvent::CanaryPassed => "canary_passed",
            NotifyEvent::CanaryFailed => "canary_failed",
            NotifyEvent::Succeeded => "succeeded",
            NotifyEvent::Failed => "failed",
            NotifyEvent::Aborted => "aborted",
            NotifyEvent::RolledBack => "rolled_back",
        }
    }
}

impl std::fmt::Display for NotifyEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for NotifyEvent {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        NotifyEvent::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<_> = NotifyEvent::ALL.iter().map(|e| e.as_str()).collect();
                format!("unknown event {s:?}: use one of {}", names.join(", "))
            })
    }
}

/// Most webhooks a request may name.
pub const MAX_WEBHOOKS: usize = 10;
/// Longest freeze-override reason.
pub const MAX_OVERRIDE_REASON: usize = 500;

fn field(name: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        field: name.to_string(),
        message: message.into(),
    }
}

/// An http:// or https:// URL with a host, no whitespace or control bytes
/// (it goes into an HTTP client and into logs).
pub fn check_http_url(url: &str) -> Result<(), &'static str> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or("must be an http:// or https:// URL")?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || host.starts_with(':') || host.contains('@') {
        return Err("must name a host, without user:password@");
    }
    if url.len() > 2048
        || url
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err("must be at most 2048 bytes with no spaces or control characters");
    }
    Ok(())
}

fn fraction(name: &str, v: f64) -> Result<(), FieldError> {
    if !(0.0..=1.0).contains(&v) {
        return Err(field(
            name,
            format!("{v} is out of range: give a fraction from 0.0 to 1.0 (0.05 = 5%)"),
        ));
    }
    Ok(())
}

impl CanarySpec {
    /// Checks every field; the first problem is returned.
    pub fn validate(&self) -> Result<(), FieldError> {
        self.hosts.limit()?;
        if !(10..=86_400).contains(&self.analysis_seconds) {
            return Err(field(
                "canary.analysis_seconds",
                "must be between 10 and 86400",
            ));
        }
        if self.sample_interval_seconds < 1 || self.sample_interval_seconds > self.analysis_seconds
        {
            return Err(field(
                "canary.sample_interval_seconds",
                "must be at least 1 and at most analysis_seconds",
            ));
        }
        fraction("canary.max_error_rate", self.max_error_rate)?;
        fraction(
            "canary.max_error_rate_increase",
            self.max_error_rate_increase,
        )?;
        if !(self.max_latency_ratio >= 1.0 && self.max_latency_ratio <= 100.0) {
            return Err(field(
                "canary.max_latency_ratio",
                format!(
                    "{} is out of range: give a ratio from 1.0 to 100.0 (1.5 = canary may be 50% slower)",
                    self.max_latency_ratio
                ),
            ));
        }
        if self.min_requests < 1 {
            return Err(field(
                "canary.min_requests",
                "must be at least 1 (with no traffic there is nothing to judge)",
            ));
        }
        if let Some(p) = &self.prometheus {
            check_http_url(&p.url).map_err(|m| field("canary.prometheus.url", m))?;
            if p.query.trim().is_empty() || p.query.len() > 4096 {
                return Err(field(
                    "canary.prometheus.query",
                    "give a PromQL query of at most 4096 bytes",
                ));
            }
            render_prometheus_query(&p.query, "web-1", "web-1")
                .map_err(|m| field("canary.prometheus.query", m))?;
            if !p.max.is_finite() {
                return Err(field("canary.prometheus.max", "must be a finite number"));
            }
        }
        Ok(())
    }
}

/// The progressive-delivery part of a request, borrowed from it, checked
/// together (see [`crate::DeployRequest::validate`]).
pub(crate) struct Progressive<'a> {
    pub canary: Option<&'a CanarySpec>,
    pub pause_after_batches: &'a [u32],
    pub pause_after_canary: bool,
    pub progress_deadline_seconds: Option<u64>,
    pub notify: &'a [WebhookSpec],
    pub override_freeze: Option<&'a str>,
}

impl Progressive<'_> {
    pub(crate) fn validate(&self) -> Result<(), FieldError> {
        if let Some(c) = self.canary {
            c.validate()?;
        } else if self.pause_after_canary {
            return Err(field(
                "pause_after_canary",
                "there is no canary to pause after: add a canary or drop pause_after_canary",
            ));
        }
        if self.pause_after_batches.len() > 100 {
            return Err(field(
                "pause_after_batches",
                "give at most 100 batch numbers",
            ));
        }
        if self.pause_after_batches.contains(&0) {
            return Err(field(
                "pause_after_batches",
                "batch numbers start at 1 (1 = pause after the first batch)",
            ));
        }
        if self.pause_after_batches.windows(2).any(|w| w[0] >= w[1]) {
            return Err(field(
                "pause_after_batches",
                "must be strictly ascending, e.g. [1, 3]",
            ));
        }
        if let Some(d) = self.progress_deadline_seconds {
            if !(10..=7 * 86_400).contains(&d) {
                return Err(field(
                    "progress_deadline_seconds",
                    "must be between 10 and 604800 (a week)",
                ));
            }
        }
        if self.notify.len() > MAX_WEBHOOKS {
            return Err(field("notify", "give at most 10 webhooks"));
        }
        for (i, w) in self.notify.iter().enumerate() {
            check_http_url(&w.url).map_err(|m| field(&format!("notify[{i}].url"), m))?;
            w.parsed_events()
                .map_err(|m| field(&format!("notify[{i}].events"), m))?;
        }
        if let Some(r) = self.override_freeze {
            if r.trim().is_empty() || r.len() > MAX_OVERRIDE_REASON {
                return Err(field(
                    "override_freeze",
                    "give the reason for deploying during a freeze, 1 to 500 bytes",
                ));
            }
            if r.bytes().any(|b| b.is_ascii_control()) {
                return Err(field(
                    "override_freeze",
                    "must not contain control characters (it is logged and stored)",
                ));
            }
        }
        Ok(())
    }
}

/// Renders a `canary.prometheus.query` for one canary host: `{{ host }}`
/// (node name) and `{{ server }}` (HAProxy server name), escaped for a
/// PromQL string literal; any other variable is an error.
pub fn render_prometheus_query(template: &str, host: &str, server: &str) -> Result<String, String> {
    let escape = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"");
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    let ctx = minijinja::context! { host => escape(host), server => escape(server) };
    env.render_str(template, ctx)
        .map_err(|e| format!("template error: {e}; use {{{{ host }}}} and {{{{ server }}}}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_queries_render_strictly_and_escaped() {
        let q = r#"sum(rate(http_errors{instance="{{ host }}",srv="{{ server }}"}[1m]))"#;
        assert_eq!(
            render_prometheus_query(q, "web-1", "web-1:80").unwrap(),
            r#"sum(rate(http_errors{instance="web-1",srv="web-1:80"}[1m]))"#
        );
        assert_eq!(
            render_prometheus_query(r#"x{a="{{ host }}"}"#, r#"a"b\c"#, "s").unwrap(),
            r#"x{a="a\"b\\c"}"#
        );
        let e = render_prometheus_query("{{ nope }}", "h", "s").unwrap_err();
        assert!(e.contains("{{ host }}"), "{e}");
        assert!(render_prometheus_query("{{ host", "h", "s").is_err());
    }
}
