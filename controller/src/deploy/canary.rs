//! Canary analysis, pure: from cumulative HAProxy `show stat` counters
//! sampled over the analysis window, the canary servers' traffic is compared
//! with the baseline (the servers not deployed yet) and a [`Verdict`] given.
//!
//! Built, not wired yet: the orchestrator will drive an [`Analyzer`] (polled
//! with `now` for [`Action`]s: read `show stat` on every HAProxy VM, run the
//! Prometheus query, wait, done), store every sample and the [`Analysis`],
//! and act on [`decide`].
//!
//! How the numbers are made:
//! - A *series* is one server on one HAProxy VM. Its counters are cumulative;
//!   the window's traffic is the sum of the positive steps between
//!   consecutive samples. A step where any counter went down is a counter
//!   reset (HAProxy reloaded): the new values are the traffic since the
//!   reset, so the step counts the new values, never a negative delta.
//! - A group's traffic is the sum over its series (several HAProxy VMs and
//!   servers add up).
//! - `requests` = HTTP responses (`hrsp_1xx`…`hrsp_other`) + `eresp` +
//!   `econ`: failed responses and failed connections got no HTTP response
//!   from the server, so they count as requests and as errors.
//!   `errors` = `hrsp_5xx` + `eresp` + `econ`.
//! - `rtime`/`ttime` are HAProxy's averages over the last 1024 requests, not
//!   counters: a group's latency is their mean over the window's steps,
//!   weighted by the responses of each step.
//!
//! Rules, in order (the first that applies decides):
//! 1. canary requests < `min_requests` → inconclusive (too little to judge);
//! 2. canary error rate > `max_error_rate` → fail;
//! 3. baseline requests < `min_requests` → inconclusive (nothing to compare);
//! 4. canary error rate > baseline's + `max_error_rate_increase` → fail;
//! 5. canary `rtime` > baseline's × `max_latency_ratio` → fail (the
//!    baseline's counts as at least 1 ms, so a 0 ms baseline does not fail
//!    every canary);
//! 6. the Prometheus value, when asked for: above `max` → fail, a query
//!    error → inconclusive;
//! 7. pass.
//!
//! Invariant: no IO and no clock here; sample times are passed in.

use std::collections::{BTreeMap, BTreeSet};
use vesemir_api::{CanarySpec, InconclusivePolicy};

/// The cumulative counters of one server row of `show stat`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerCounters {
    /// `hrsp_5xx`: responses with a 5xx status.
    pub hrsp_5xx: u64,
    /// `hrsp_1xx` + … + `hrsp_5xx` + `hrsp_other`: every HTTP response.
    pub responses: u64,
    /// `eresp`: responses that failed (server aborted, bad reply).
    pub eresp: u64,
    /// `econ`: connections to the server that failed.
    pub econ: u64,
    /// `rtime`: mean response time of the last 1024 requests, ms.
    pub rtime_ms: u64,
    /// `ttime`: mean total session time of the last 1024 requests, ms.
    pub ttime_ms: u64,
}

/// One `show stat` row at one time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// When it was read, ms since the analysis began (any monotonic origin).
    pub at_ms: u64,
    /// Which HAProxy VM it came from (node name).
    pub lb: String,
    /// The HAProxy server name.
    pub server: String,
    /// Its counters.
    pub counters: ServerCounters,
}

/// The thresholds of a canary analysis (from the request's `canary`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// Highest canary error rate, absolute (0.0–1.0).
    pub max_error_rate: f64,
    /// Highest canary error rate above the baseline's, absolute.
    pub max_error_rate_increase: f64,
    /// Highest canary/baseline `rtime` ratio.
    pub max_latency_ratio: f64,
    /// Fewest requests of a group to judge it.
    pub min_requests: u64,
}

impl From<&CanarySpec> for Thresholds {
    fn from(c: &CanarySpec) -> Self {
        Thresholds {
            max_error_rate: c.max_error_rate,
            max_error_rate_increase: c.max_error_rate_increase,
            max_latency_ratio: c.max_latency_ratio,
            min_requests: c.min_requests,
        }
    }
}

/// One group's traffic over the window: the numbers shown with a verdict.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupStats {
    /// Series (server × HAProxy VM) with at least one sample.
    pub series: usize,
    /// Requests (responses + `eresp` + `econ`).
    pub requests: u64,
    /// `hrsp_5xx` in the window.
    pub hrsp_5xx: u64,
    /// `eresp` in the window.
    pub eresp: u64,
    /// `econ` in the window.
    pub econ: u64,
    /// Counter resets seen (HAProxy reloads).
    pub resets: u32,
    /// Response-weighted mean `rtime`, ms; none without responses.
    pub rtime_ms: Option<f64>,
    /// Response-weighted mean `ttime`, ms; none without responses.
    pub ttime_ms: Option<f64>,
}

impl GroupStats {
    /// 5xx + failed responses + failed connections.
    pub fn errors(&self) -> u64 {
        self.hrsp_5xx + self.eresp + self.econ
    }

    /// Errors over requests; 0 without requests.
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors() as f64 / self.requests as f64
        }
    }
}

/// What the analysis concluded.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// The canary is as healthy as the baseline.
    Pass,
    /// The canary is worse; the reason carries the numbers.
    Fail {
        /// E.g. "canary error rate 30.00% (300 of 1000) above max 5.00%".
        reason: String,
    },
    /// Too little to judge; the request's policy decides.
    Inconclusive {
        /// E.g. "canary had 12 requests, fewer than min_requests 100".
        reason: String,
    },
}

/// The Prometheus check's result, when the request asks for one.
#[derive(Debug, Clone, PartialEq)]
pub enum PrometheusResult {
    /// The instant query's value.
    Value(f64),
    /// The query failed (unreachable, bad query, no single value).
    Error(String),
}

/// What the driver of an [`Analyzer`] does next.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Read `show stat` of the backend on every HAProxy VM, then
    /// [`Analyzer::handle_stats`] (and [`Analyzer::handle_read_error`] for
    /// a VM that could not be read).
    ReadStats,
    /// Run the Prometheus query, then [`Analyzer::handle_prometheus`].
    QueryPrometheus,
    /// Nothing to do before this time (ms, the caller's monotonic clock).
    WaitUntil(u64),
    /// The analysis is over.
    Done(Analysis),
}

/// One canary analysis as a state machine: fed samples, polled with `now`
/// (ms of any monotonic clock, the same as [`Sample::at_ms`]) for the next
/// [`Action`]. Samples are taken at the start and every interval until one
/// at or after the end of the window; then the Prometheus query, if any;
/// then the verdict. Holds at most (window / interval + 1) samples per
/// series, a bound the request's validation sets.
#[derive(Debug, Clone)]
pub struct Analyzer {
    thresholds: Thresholds,
    /// `max` of the Prometheus check, when the request has one.
    prometheus_max: Option<f64>,
    interval_ms: u64,
    end_ms: u64,
    next_sample_ms: u64,
    sampling_done: bool,
    canary: BTreeSet<String>,
    baseline: BTreeSet<String>,
    samples: Vec<Sample>,
    /// HAProxy VMs that could not be read, with why (shown with the verdict).
    read_errors: Vec<String>,
    prometheus: Option<PrometheusResult>,
}

impl Analyzer {
    /// An analysis of `canary` against `baseline` servers starting at
    /// `now_ms`, per the request's `canary`.
    pub fn new(
        spec: &CanarySpec,
        canary: BTreeSet<String>,
        baseline: BTreeSet<String>,
        now_ms: u64,
    ) -> Analyzer {
        Analyzer {
            thresholds: Thresholds::from(spec),
            prometheus_max: spec.prometheus.as_ref().map(|p| p.max),
            interval_ms: spec.sample_interval_seconds.max(1) * 1000,
            end_ms: now_ms + spec.analysis_seconds * 1000,
            next_sample_ms: now_ms,
            sampling_done: false,
            canary,
            baseline,
            samples: Vec::new(),
            read_errors: Vec::new(),
            prometheus: None,
        }
    }

    /// The next thing to do at `now_ms`.
    pub fn poll(&self, now_ms: u64) -> Action {
        if !self.sampling_done {
            return if now_ms >= self.next_sample_ms {
                Action::ReadStats
            } else {
                Action::WaitUntil(self.next_sample_ms)
            };
        }
        if self.prometheus_max.is_some() && self.prometheus.is_none() {
            return Action::QueryPrometheus;
        }
        let prometheus = self.prometheus.as_ref().zip(self.prometheus_max);
        Action::Done(analyse(
            &self.samples,
            &self.canary,
            &self.baseline,
            &self.thresholds,
            prometheus,
        ))
    }

    /// The rows of one round of `show stat` reads made at `now_ms` (rows of
    /// servers in neither group are ignored).
    pub fn handle_stats(&mut self, now_ms: u64, rows: impl IntoIterator<Item = Sample>) {
        let (canary, baseline) = (&self.canary, &self.baseline);
        self.samples.extend(
            rows.into_iter()
                .filter(|r| canary.contains(&r.server) || baseline.contains(&r.server)),
        );
        if now_ms >= self.end_ms {
            self.sampling_done = true;
        } else {
            // Never later than the end, so the window is covered exactly.
            self.next_sample_ms = (now_ms + self.interval_ms).min(self.end_ms);
        }
    }

    /// An HAProxy VM whose `show stat` could not be read this round: its
    /// series miss a point (the next step spans two intervals).
    pub fn handle_read_error(&mut self, lb: &str, error: &str) {
        if self.read_errors.len() < 100 {
            self.read_errors.push(format!("{lb}: {error}"));
        }
    }

    /// The Prometheus query's result.
    pub fn handle_prometheus(&mut self, result: PrometheusResult) {
        self.prometheus = Some(result);
    }

    /// Every sample so far (to store and show).
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// The read errors so far (at most 100 kept).
    pub fn read_errors(&self) -> &[String] {
        &self.read_errors
    }
}

/// Prometheus' `/api/v1/query` reply, the parts read.
#[derive(serde::Deserialize)]
struct PromReply {
    status: String,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    data: Option<PromData>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromData {
    result_type: String,
    result: serde_json::Value,
}

/// Reads the reply of an instant query (`GET /api/v1/query`): it must be
/// one number, a scalar or a vector of exactly one sample. Anything else
/// is a [`PrometheusResult::Error`] saying what came instead (which the
/// analysis counts as inconclusive).
pub fn parse_instant_query(body: &[u8]) -> PrometheusResult {
    let err = |m: String| PrometheusResult::Error(m);
    let reply: PromReply = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return err(format!("reply is not a Prometheus API answer: {e}")),
    };
    if reply.status != "success" {
        return err(format!(
            "Prometheus answered {}: {}",
            reply.status,
            reply.error.unwrap_or_default()
        ));
    }
    let Some(data) = reply.data else {
        return err("reply has no data".into());
    };
    // A sample is `[unix_time, "value"]`.
    let value_of = |v: &serde_json::Value| -> Option<f64> {
        let v = v.get(1)?.as_str()?.parse::<f64>().ok()?;
        v.is_finite().then_some(v)
    };
    let sample = match data.result_type.as_str() {
        "scalar" => Some(data.result.clone()),
        "vector" => match data.result.as_array().map(Vec::as_slice) {
            Some([one]) => one.get("value").cloned(),
            Some(many) => {
                return err(format!(
                    "the query gave {} series; write it to give exactly one (e.g. wrap it in sum(...))",
                    many.len()
                ))
            }
            None => None,
        },
        other => {
            return err(format!(
                "the query gave a {other}, not one number: use an instant query giving a scalar or one series"
            ))
        }
    };
    match sample.as_ref().and_then(value_of) {
        Some(v) => PrometheusResult::Value(v),
        None => err("the query's value is not a finite number".into()),
    }
}

/// A finished analysis: both groups' numbers and the verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct Analysis {
    /// The canary servers' traffic.
    pub canary: GroupStats,
    /// The not-yet-deployed servers' traffic.
    pub baseline: GroupStats,
    /// The verdict.
    pub verdict: Verdict,
}

/// What the deployment does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Go on with the rest of the hosts.
    Proceed,
    /// Wait for a person to resume or abort.
    Pause,
    /// The canary failed: `on_failure` applies.
    Fail,
}

/// The verdict under the request's inconclusive policy.
pub fn decide(verdict: &Verdict, policy: InconclusivePolicy) -> Decision {
    match (verdict, policy) {
        (Verdict::Pass, _) => Decision::Proceed,
        (Verdict::Fail { .. }, _) => Decision::Fail,
        (Verdict::Inconclusive { .. }, InconclusivePolicy::Pause) => Decision::Pause,
        (Verdict::Inconclusive { .. }, InconclusivePolicy::Fail) => Decision::Fail,
        (Verdict::Inconclusive { .. }, InconclusivePolicy::Pass) => Decision::Proceed,
    }
}

/// Sums the window's traffic of the series whose server is in `servers`.
pub fn group_stats(samples: &[Sample], servers: &BTreeSet<String>) -> GroupStats {
    let mut series: BTreeMap<(&str, &str), Vec<(u64, ServerCounters)>> = BTreeMap::new();
    for s in samples.iter().filter(|s| servers.contains(&s.server)) {
        series
            .entry((s.lb.as_str(), s.server.as_str()))
            .or_default()
            .push((s.at_ms, s.counters));
    }
    let mut g = GroupStats {
        series: series.len(),
        ..GroupStats::default()
    };
    let (mut weight, mut rtime, mut ttime) = (0u64, 0f64, 0f64);
    for points in series.values_mut() {
        points.sort_by_key(|(at, _)| *at);
        for pair in points.windows(2) {
            let (prev, cur) = (pair[0].1, pair[1].1);
            let reset = cur.hrsp_5xx < prev.hrsp_5xx
                || cur.responses < prev.responses
                || cur.eresp < prev.eresp
                || cur.econ < prev.econ;
            let step = if reset {
                g.resets += 1;
                cur
            } else {
                ServerCounters {
                    hrsp_5xx: cur.hrsp_5xx - prev.hrsp_5xx,
                    responses: cur.responses - prev.responses,
                    eresp: cur.eresp - prev.eresp,
                    econ: cur.econ - prev.econ,
                    ..cur
                }
            };
            g.hrsp_5xx += step.hrsp_5xx;
            g.eresp += step.eresp;
            g.econ += step.econ;
            g.requests += step.responses + step.eresp + step.econ;
            weight += step.responses;
            rtime += step.responses as f64 * cur.rtime_ms as f64;
            ttime += step.responses as f64 * cur.ttime_ms as f64;
        }
    }
    if weight > 0 {
        g.rtime_ms = Some(rtime / weight as f64);
        g.ttime_ms = Some(ttime / weight as f64);
    }
    g
}

fn pct(r: f64) -> String {
    format!("{:.2}%", r * 100.0)
}

/// Judges the canary against the baseline (rules in the module docs).
pub fn analyse(
    samples: &[Sample],
    canary_servers: &BTreeSet<String>,
    baseline_servers: &BTreeSet<String>,
    t: &Thresholds,
    prometheus: Option<(&PrometheusResult, f64)>,
) -> Analysis {
    let canary = group_stats(samples, canary_servers);
    let baseline = group_stats(samples, baseline_servers);
    let verdict = judge(&canary, &baseline, t, prometheus);
    Analysis {
        canary,
        baseline,
        verdict,
    }
}

fn judge(
    c: &GroupStats,
    b: &GroupStats,
    t: &Thresholds,
    prometheus: Option<(&PrometheusResult, f64)>,
) -> Verdict {
    let fail = |reason: String| Verdict::Fail { reason };
    let inconclusive = |reason: String| Verdict::Inconclusive { reason };
    if c.requests < t.min_requests {
        return inconclusive(format!(
            "canary had {} requests, fewer than min_requests {}",
            c.requests, t.min_requests
        ));
    }
    let (cr, br) = (c.error_rate(), b.error_rate());
    if cr > t.max_error_rate {
        return fail(format!(
            "canary error rate {} ({} of {}) above max_error_rate {}",
            pct(cr),
            c.errors(),
            c.requests,
            pct(t.max_error_rate)
        ));
    }
    if b.requests < t.min_requests {
        return inconclusive(format!(
            "baseline had {} requests, fewer than min_requests {}: nothing to compare the canary with",
            b.requests, t.min_requests
        ));
    }
    if cr > br + t.max_error_rate_increase {
        return fail(format!(
            "canary error rate {} ({} of {}) above baseline {} ({} of {}) + max_error_rate_increase {}",
            pct(cr),
            c.errors(),
            c.requests,
            pct(br),
            b.errors(),
            b.requests,
            pct(t.max_error_rate_increase)
        ));
    }
    if let (Some(cl), Some(bl)) = (c.rtime_ms, b.rtime_ms) {
        let limit = bl.max(1.0) * t.max_latency_ratio;
        if cl > limit {
            return fail(format!(
                "canary response time {cl:.0} ms above baseline {bl:.0} ms × max_latency_ratio {} = {limit:.0} ms",
                t.max_latency_ratio
            ));
        }
    }
    match prometheus {
        Some((PrometheusResult::Value(v), max)) if *v > max => {
            return fail(format!("Prometheus query value {v} above max {max}"));
        }
        Some((PrometheusResult::Error(e), _)) => {
            return inconclusive(format!("Prometheus query failed: {e}"));
        }
        _ => {}
    }
    Verdict::Pass
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counters of one series at one time: (at_ms, lb, server, responses,
    /// 5xx, eresp, econ, rtime).
    type Row = (u64, &'static str, &'static str, u64, u64, u64, u64, u64);

    fn samples(rows: &[Row]) -> Vec<Sample> {
        rows.iter()
            .map(
                |&(at_ms, lb, server, responses, hrsp_5xx, eresp, econ, rtime_ms)| Sample {
                    at_ms,
                    lb: lb.into(),
                    server: server.into(),
                    counters: ServerCounters {
                        hrsp_5xx,
                        responses,
                        eresp,
                        econ,
                        rtime_ms,
                        ttime_ms: rtime_ms * 2,
                    },
                },
            )
            .collect()
    }

    const T: Thresholds = Thresholds {
        max_error_rate: 0.05,
        max_error_rate_increase: 0.01,
        max_latency_ratio: 1.5,
        min_requests: 100,
    };

    /// Expected verdict kind and a piece of its reason.
    #[derive(Debug)]
    enum Want {
        Pass,
        Fail(&'static str),
        Inconclusive(&'static str),
    }

    /// Canary servers are `c*`, baseline servers `b*`.
    fn check(rows: &[Row], t: Thresholds, prom: Option<(PrometheusResult, f64)>, want: Want) {
        let s = samples(rows);
        let names = |p: char| -> BTreeSet<String> {
            s.iter()
                .filter(|x| x.server.starts_with(p))
                .map(|x| x.server.clone())
                .collect()
        };
        let a = analyse(
            &s,
            &names('c'),
            &names('b'),
            &t,
            prom.as_ref().map(|(r, m)| (r, *m)),
        );
        let ok = match (&want, &a.verdict) {
            (Want::Pass, Verdict::Pass) => true,
            (Want::Fail(w), Verdict::Fail { reason }) => reason.contains(w),
            (Want::Inconclusive(w), Verdict::Inconclusive { reason }) => reason.contains(w),
            _ => false,
        };
        assert!(ok, "want {want:?}, got {:?}", a);
    }

    /// Healthy baseline: 1000 responses, 0.5% 5xx, 20 ms.
    const B: [Row; 2] = [
        (0, "lb1", "b1", 0, 0, 0, 0, 20),
        (60_000, "lb1", "b1", 1000, 5, 0, 0, 20),
    ];

    fn with_baseline(canary: &[Row]) -> Vec<Row> {
        let mut v = B.to_vec();
        v.extend_from_slice(canary);
        v
    }

    #[test]
    fn verdicts() {
        use Want::*;
        // Healthy canary.
        check(
            &with_baseline(&[
                (0, "lb1", "c1", 0, 0, 0, 0, 20),
                (60_000, "lb1", "c1", 500, 2, 0, 0, 22),
            ]),
            T,
            None,
            Pass,
        );
        // 30% 5xx: above the absolute maximum, with the numbers.
        check(
            &with_baseline(&[
                (0, "lb1", "c1", 0, 0, 0, 0, 20),
                (60_000, "lb1", "c1", 1000, 300, 0, 0, 20),
            ]),
            T,
            None,
            Fail("canary error rate 30.00% (300 of 1000) above max_error_rate 5.00%"),
        );
        // 3× latency.
        check(
            &with_baseline(&[
                (0, "lb1", "c1", 0, 0, 0, 0, 60),
                (60_000, "lb1", "c1", 1000, 0, 0, 0, 60),
            ]),
            T,
            None,
            Fail("canary response time 60 ms above baseline 20 ms × max_latency_ratio 1.5 = 30 ms"),
        );
        // Just under the latency ratio.
        check(
            &with_baseline(&[
                (0, "lb1", "c1", 0, 0, 0, 0, 29),
                (60_000, "lb1", "c1", 1000, 0, 0, 0, 29),
            ]),
            T,
            None,
            Pass,
        );
        // No traffic to the canary at all.
        check(
            &with_baseline(&[
                (0, "lb1", "c1", 0, 0, 0, 0, 0),
                (60_000, "lb1", "c1", 0, 0, 0, 0, 0),
            ]),
            T,
            None,
            Inconclusive("canary had 0 requests, fewer than min_requests 100"),
        );
        // Canary never seen in show stat.
        check(&B, T, None, Inconclusive("canary had 0 requests"));
        // One sample only: no window.
        check(
            &with_baseline(&[(0, "lb1", "c1", 5000, 0, 0, 0, 20)]),
            T,
            None,
            Inconclusive("canary had 0 requests"),
        );
        // min_requests boundary: 99 is too few, 100 is enough.
        check(
            &with_baseline(&[
                (0, "lb1", "c1", 0, 0, 0, 0, 20),
                (1, "lb1", "c1", 99, 0, 0, 0, 20),
            ]),
            T,
            None,
            Inconclusive("canary had 99 requests"),
        );
        check(
            &with_baseline(&[
                (0, "lb1", "c1", 0, 0, 0, 0, 20),
                (1, "lb1", "c1", 100, 0, 0, 0, 20),
            ]),
            T,
            None,
            Pass,
        );
        // Too few requests even when they are all errors: inconclusive, the
        // policy decides (rule 1 before rule 2).
        check(
            &with_baseline(&[
                (0, "lb1", "c1", 0, 0, 0, 0, 20),
                (1, "lb1", "c1", 50, 50, 0, 0, 20),
            ]),
            T,
            None,
            Inconclusive("canary had 50 requests"),
        );
        // Counter reset (HAProxy reload) mid-window: 400 before, 300 after
        // the reload, 15 of them 5xx → 700 requests, 2.14% > 0.5% + 1%.
        check(
            &with_baseline(&[
                (0, "lb1", "c1", 1000, 0, 0, 0, 20),
                (20_000, "lb1", "c1", 1400, 0, 0, 0, 20),
                (40_000, "lb1", "c1", 300, 15, 0, 0, 20),
                (60_000, "lb1", "c1", 300, 15, 0, 0, 20),
            ]),
            T,
            None,
            Fail("canary error rate 2.14% (15 of 700) above baseline 0.50% (5 of 1000)"),
        );
        // Baseline also bad: 30% 5xx both sides. The absolute maximum fails
        // the canary by default…
        let both_bad = [
            (0, "lb1", "b1", 0, 0, 0, 0, 20),
            (60_000, "lb1", "b1", 1000, 300, 0, 0, 20),
            (0, "lb1", "c1", 0, 0, 0, 0, 20),
            (60_000, "lb1", "c1", 1000, 305, 0, 0, 20),
        ];
        check(&both_bad, T, None, Fail("above max_error_rate"));
        // …and with the absolute maximum off, the canary is no worse.
        let relative_only = Thresholds {
            max_error_rate: 1.0,
            ..T
        };
        check(&both_bad, relative_only, None, Pass);
        // Baseline without traffic: nothing to compare with.
        check(
            &[
                (0, "lb1", "c1", 0, 0, 0, 0, 20),
                (60_000, "lb1", "c1", 1000, 0, 0, 0, 20),
            ],
            T,
            None,
            Inconclusive("baseline had 0 requests"),
        );
        // Several HAProxy VMs add up: 40 of 500 on lb1, 0 of 500 on lb2 →
        // 4% total (under 5%), but above baseline 0.5% + 1%.
        check(
            &with_baseline(&[
                (0, "lb1", "c1", 0, 0, 0, 0, 20),
                (60_000, "lb1", "c1", 500, 40, 0, 0, 20),
                (0, "lb2", "c1", 0, 0, 0, 0, 20),
                (60_000, "lb2", "c1", 500, 0, 0, 0, 20),
            ]),
            T,
            None,
            Fail("canary error rate 4.00% (40 of 1000) above baseline"),
        );
        // Failed connections and responses count as requests and errors.
        check(
            &with_baseline(&[
                (0, "lb1", "c1", 0, 0, 0, 0, 20),
                (60_000, "lb1", "c1", 900, 0, 50, 50, 20),
            ]),
            T,
            None,
            Fail("canary error rate 10.00% (100 of 1000)"),
        );
        // Prometheus: value above max fails, a query error is inconclusive,
        // under max passes.
        let healthy = with_baseline(&[
            (0, "lb1", "c1", 0, 0, 0, 0, 20),
            (60_000, "lb1", "c1", 500, 0, 0, 0, 20),
        ]);
        check(
            &healthy,
            T,
            Some((PrometheusResult::Value(0.3), 0.1)),
            Fail("Prometheus query value 0.3 above max 0.1"),
        );
        check(
            &healthy,
            T,
            Some((PrometheusResult::Error("connection refused".into()), 0.1)),
            Inconclusive("Prometheus query failed: connection refused"),
        );
        check(
            &healthy,
            T,
            Some((PrometheusResult::Value(0.05), 0.1)),
            Pass,
        );
        // A 0 ms baseline counts as 1 ms: a 1 ms canary passes.
        check(
            &[
                (0, "lb1", "b1", 0, 0, 0, 0, 0),
                (60_000, "lb1", "b1", 1000, 0, 0, 0, 0),
                (0, "lb1", "c1", 0, 0, 0, 0, 1),
                (60_000, "lb1", "c1", 1000, 0, 0, 0, 1),
            ],
            T,
            None,
            Pass,
        );
    }

    #[test]
    fn stats_keep_the_numbers() {
        let s = samples(&[
            (20_000, "lb1", "c1", 400, 4, 0, 0, 30),
            (0, "lb1", "c1", 100, 0, 0, 0, 10),
            (0, "lb2", "c1", 0, 0, 0, 0, 10),
            (20_000, "lb2", "c1", 100, 0, 1, 2, 60),
            (20_000, "lb2", "other", 100, 100, 0, 0, 60),
        ]);
        let g = group_stats(&s, &BTreeSet::from(["c1".to_string()]));
        // Samples out of order are sorted; "other" is in neither group.
        assert_eq!(g.series, 2);
        assert_eq!(g.requests, 300 + 103);
        assert_eq!((g.hrsp_5xx, g.eresp, g.econ, g.resets), (4, 1, 2, 0));
        // Weighted by responses: (300×30 + 100×60) / 400.
        assert_eq!(g.rtime_ms, Some(37.5));
        assert_eq!(g.ttime_ms, Some(75.0));
        assert!((g.error_rate() - 7.0 / 403.0).abs() < 1e-12);
    }

    #[test]
    fn policies_decide_inconclusive() {
        let inc = Verdict::Inconclusive { reason: "x".into() };
        let fail = Verdict::Fail { reason: "x".into() };
        for (v, p, want) in [
            (&inc, InconclusivePolicy::Pause, Decision::Pause),
            (&inc, InconclusivePolicy::Fail, Decision::Fail),
            (&inc, InconclusivePolicy::Pass, Decision::Proceed),
            (&fail, InconclusivePolicy::Pass, Decision::Fail),
            (&Verdict::Pass, InconclusivePolicy::Fail, Decision::Proceed),
        ] {
            assert_eq!(decide(v, p), want, "{v:?} {p:?}");
        }
    }

    fn row(at_ms: u64, lb: &str, server: &str, responses: u64, hrsp_5xx: u64) -> Sample {
        Sample {
            at_ms,
            lb: lb.into(),
            server: server.into(),
            counters: ServerCounters {
                responses,
                hrsp_5xx,
                rtime_ms: 20,
                ..ServerCounters::default()
            },
        }
    }

    #[test]
    fn analyzer_samples_the_window_then_judges() {
        let spec: CanarySpec = serde_json::from_value(serde_json::json!({
            "analysis_seconds": 25, "sample_interval_seconds": 10, "min_requests": 10,
            "prometheus": {"url": "http://p", "query": "up", "max": 1.0}
        }))
        .unwrap();
        let set = |s: &str| BTreeSet::from([s.to_string()]);
        let t0 = 1_000_000;
        let mut a = Analyzer::new(&spec, set("c1"), set("b1"), t0);
        let mut reads = Vec::new();
        let mut now = t0;
        // Drive it as the orchestrator will, jumping the clock to each wait.
        let done = loop {
            match a.poll(now) {
                Action::ReadStats => {
                    reads.push(now - t0);
                    let k = (now - t0) / 1000;
                    a.handle_stats(
                        now,
                        [
                            row(now, "lb1", "c1", 10 * k, k / 10),
                            row(now, "lb1", "b1", 10 * k, 0),
                            row(now, "lb1", "other", 5, 5),
                        ],
                    );
                    if now == t0 + 10_000 {
                        a.handle_read_error("lb2", "agent unreachable");
                    }
                }
                Action::WaitUntil(t) => {
                    assert!(t > now, "waits forward");
                    now = t;
                }
                Action::QueryPrometheus => a.handle_prometheus(PrometheusResult::Value(0.5)),
                Action::Done(analysis) => break analysis,
            }
        };
        // Samples at 0, 10 and 20 s, and one at the end (25 s), no later.
        assert_eq!(reads, [0, 10_000, 20_000, 25_000]);
        assert_eq!(a.samples().len(), 8, "rows of other servers are not kept");
        assert_eq!(a.read_errors(), ["lb2: agent unreachable"]);
        assert_eq!(done.canary.requests, 250);
        assert_eq!(done.canary.hrsp_5xx, 2);
        // 0.8% canary vs 0% baseline + 1%: pass; Prometheus 0.5 ≤ 1.
        assert_eq!(done.verdict, Verdict::Pass);
        // Polling again gives the same verdict (nothing else to do).
        assert!(matches!(a.poll(now + 1), Action::Done(_)));
    }

    #[test]
    fn prometheus_replies() {
        for (reply, want) in [
            (
                r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1733284800.1,"0.25"]}]}}"#,
                Ok(0.25),
            ),
            (
                r#"{"status":"success","data":{"resultType":"scalar","result":[1733284800,"3"]}}"#,
                Ok(3.0),
            ),
            (
                r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#,
                Err("0 series"),
            ),
            (
                r#"{"status":"success","data":{"resultType":"vector","result":[{"value":[1,"1"]},{"value":[1,"2"]}]}}"#,
                Err("2 series"),
            ),
            (
                r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#,
                Err("gave a matrix"),
            ),
            (
                r#"{"status":"success","data":{"resultType":"vector","result":[{"value":[1,"NaN"]}]}}"#,
                Err("not a finite number"),
            ),
            (
                r#"{"status":"error","errorType":"bad_data","error":"parse error at char 4"}"#,
                Err("parse error at char 4"),
            ),
            (
                "<html>502 Bad Gateway</html>",
                Err("not a Prometheus API answer"),
            ),
        ] {
            match (parse_instant_query(reply.as_bytes()), want) {
                (PrometheusResult::Value(v), Ok(w)) => assert_eq!(v, w, "{reply}"),
                (PrometheusResult::Error(e), Err(w)) => assert!(e.contains(w), "{reply}: {e}"),
                (got, want) => panic!("{reply}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn thresholds_come_from_the_request() {
        let c: CanarySpec = serde_json::from_value(serde_json::json!({"min_requests": 7})).unwrap();
        let t = Thresholds::from(&c);
        assert_eq!(t.min_requests, 7);
        assert_eq!(t.max_error_rate, 0.05);
    }
}
