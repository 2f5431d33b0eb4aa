//! Prometheus metrics: a small in-house registry of atomics, rendered as the
//! text exposition format (0.0.4) at `/metrics`. `docs/METRICS.md` lists
//! every series and what to alert on.
//!
//! Why in-house: the whole set is a few counters, gauges and histograms with
//! label sets fixed in code; atomics and a renderer are ~400 lines and add
//! no dependency to a controller that already compiles a lot.
//!
//! Architecture invariants:
//! - **Bounded cardinality.** No label value comes from a request. Labels
//!   are enums fixed here, `&'static str` names from the code (store
//!   operations, route templates from the router, never the raw path), or
//!   HTTP status codes; the API series additionally stop growing at
//!   [`MAX_API_SERIES`] (further combinations count under `route="other"`).
//! - **Call sites are one line** (`crate::metrics::heartbeat();`), so the
//!   instrumentation stays out of the way of the code it measures.
//! - **Process-wide.** One registry per controller process ([`global`]), as
//!   Prometheus scrapes a process; values reset when the process restarts,
//!   which `rate()` handles. Unit tests build their own [`Metrics`].
//! - Gauges that mirror state (agents by state, deployments running) are not
//!   kept here at all: they are read from the fleet and the orchestrators at
//!   scrape time ([`Snapshot`]), so they can never drift from the truth.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Most distinct (method, route, status) API series kept; beyond it they
/// count under `route="other"` so nothing unbounded can come in from outside.
pub const MAX_API_SERIES: usize = 512;

/// The registry of one controller process.
pub fn global() -> &'static Metrics {
    static GLOBAL: OnceLock<Metrics> = OnceLock::new();
    GLOBAL.get_or_init(Metrics::default)
}

/// A monotonically increasing count.
#[derive(Default)]
struct Counter(AtomicU64);

impl Counter {
    fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A distribution over fixed buckets (upper bounds in seconds).
struct Histogram {
    bounds: &'static [f64],
    /// Per-bucket counts (not cumulative); the last one is `+Inf`.
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }

    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.bounds.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    /// Writes `_bucket`, `_sum`, `_count` lines; `labels` is `""` or `k="v",`.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += b.load(Ordering::Relaxed);
            let le = match self.bounds.get(i) {
                Some(bound) => format!("{bound}"),
                None => "+Inf".to_string(),
            };
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{le}\"}} {cumulative}");
        }
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{}}}", labels.trim_end_matches(','))
        };
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        // The count is the +Inf bucket, read once, so the two always agree.
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

const DEPLOYMENT_BOUNDS: &[f64] = &[
    5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0,
];
const HOST_RUN_BOUNDS: &[f64] = &[
    0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];
const CHEF_BOUNDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const STORE_BOUNDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
const API_BOUNDS: &[f64] = &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0];

/// How an enrollment attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enrollment {
    /// A certificate was signed.
    Enrolled,
    /// The controller said no (bad token, name taken, bad CSR…).
    Refused,
    /// The exchange broke (TLS, framing, timeout) before an answer.
    Failed,
}

impl Enrollment {
    const ALL: [Enrollment; 3] = [
        Enrollment::Enrolled,
        Enrollment::Refused,
        Enrollment::Failed,
    ];
    fn label(self) -> &'static str {
        match self {
            Enrollment::Enrolled => "enrolled",
            Enrollment::Refused => "refused",
            Enrollment::Failed => "failed",
        }
    }
}

/// Final deployment statuses (docs/API.md); anything else counts as `other`.
const DEPLOYMENT_STATUSES: [&str; 5] = ["succeeded", "failed", "aborted", "cancelled", "other"];
/// How a host run can end.
const HOST_RESULTS: [&str; 4] = ["succeeded", "failed", "unreachable", "interrupted"];
/// HAProxy actions the orchestrator performs (`ready at 10%` counts as
/// `ready`, every `weight N%` step as `weight`).
const HAPROXY_ACTIONS: [&str; 6] = ["drain", "maint", "wait_drained", "ready", "weight", "other"];
/// Why a Chef request failed.
const CHEF_ERRORS: [&str; 5] = ["timeout", "unreachable", "status", "auth", "other"];
/// Why a store call failed.
const STORE_ERRORS: [&str; 5] = ["pool_timeout", "database", "io", "migrate", "other"];

fn index(set: &[&str], v: &str) -> usize {
    set.iter().position(|s| *s == v).unwrap_or(set.len() - 1)
}

/// One API series key.
type ApiKey = (&'static str, String, u16);

/// Every counter and histogram of the controller.
pub struct Metrics {
    heartbeats: Counter,
    enrollments: [Counter; 3],
    job_streams_open: AtomicI64,
    job_streams: Counter,
    deployments: [Counter; 5],
    deployment_duration: [Histogram; 5],
    host_runs: [Counter; 4],
    host_run_duration: [Histogram; 4],
    /// `[action][ok, failed]`.
    haproxy_actions: [[Counter; 2]; 6],
    chef_duration: Histogram,
    chef_errors: [Counter; 5],
    store_duration: Mutex<BTreeMap<&'static str, Histogram>>,
    store_errors: [Counter; 5],
    api_requests: Mutex<BTreeMap<ApiKey, u64>>,
    api_duration: Mutex<BTreeMap<String, Histogram>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            heartbeats: Counter::default(),
            enrollments: Default::default(),
            job_streams_open: AtomicI64::new(0),
            job_streams: Counter::default(),
            deployments: Default::default(),
            deployment_duration: std::array::from_fn(|_| Histogram::new(DEPLOYMENT_BOUNDS)),
            host_runs: Default::default(),
            host_run_duration: std::array::from_fn(|_| Histogram::new(HOST_RUN_BOUNDS)),
            haproxy_actions: Default::default(),
            chef_duration: Histogram::new(CHEF_BOUNDS),
            chef_errors: Default::default(),
            store_duration: Mutex::new(BTreeMap::new()),
            store_errors: Default::default(),
            api_requests: Mutex::new(BTreeMap::new()),
            api_duration: Mutex::new(BTreeMap::new()),
        }
    }
}

/// What is read from live state at scrape time rather than counted.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Agents per state (`connected`, `disconnected`, `stale`, `revoked`).
    pub agents: BTreeMap<&'static str, u64>,
    /// Deployments whose orchestrator runs in this process.
    pub deployments_running: u64,
}

/// Counts a job stream as open until dropped (held by `fleet::JobStream`).
pub struct OpenJobStream(());

impl Drop for OpenJobStream {
    fn drop(&mut self) {
        global().job_streams_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Times one store operation: created first thing in a `Store` method, it
/// observes the elapsed time when dropped (success, error or cancellation).
pub struct StoreTimer {
    op: &'static str,
    started: Instant,
}

impl Drop for StoreTimer {
    fn drop(&mut self) {
        global().observe_store(self.op, self.started.elapsed());
    }
}

impl Metrics {
    /// A heartbeat arrived.
    pub fn heartbeat(&self) {
        self.heartbeats.inc();
    }

    /// An enrollment ended.
    pub fn enrollment(&self, result: Enrollment) {
        self.enrollments[result as usize].inc();
    }

    /// A deployment reached a final status after `took`.
    pub fn deployment_finished(&self, status: &str, took: Duration) {
        let i = index(&DEPLOYMENT_STATUSES, status);
        self.deployments[i].inc();
        self.deployment_duration[i].observe(took);
    }

    /// A host run ended (`result` one of succeeded/failed/interrupted/unreachable).
    /// `took` is None for hosts that never ran (unreachable at planning).
    pub fn host_run(&self, result: &str, took: Option<Duration>) {
        let i = index(&HOST_RESULTS, result);
        self.host_runs[i].inc();
        if let Some(t) = took {
            self.host_run_duration[i].observe(t);
        }
    }

    /// One HAProxy action on one HAProxy VM ended.
    pub fn haproxy_action(&self, action: &str, ok: bool) {
        let action = if action.starts_with("weight") {
            "weight"
        } else if action.starts_with("ready") {
            "ready"
        } else {
            action
        };
        self.haproxy_actions[index(&HAPROXY_ACTIONS, action)][usize::from(!ok)].inc();
    }

    /// A Chef request (with its retries) ended after `took`; `error` names
    /// the failure kind (one of [`CHEF_ERRORS`]) if it failed.
    pub fn chef_request(&self, took: Duration, error: Option<&str>) {
        self.chef_duration.observe(took);
        if let Some(kind) = error {
            self.chef_errors[index(&CHEF_ERRORS, kind)].inc();
        }
    }

    fn observe_store(&self, op: &'static str, took: Duration) {
        self.store_duration
            .lock()
            .expect("metrics lock")
            .entry(op)
            .or_insert_with(|| Histogram::new(STORE_BOUNDS))
            .observe(took);
    }

    /// A database error surfaced from the store.
    pub fn store_error(&self, e: &sqlx::Error) {
        let kind = match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => "pool_timeout",
            sqlx::Error::Database(_) => "database",
            sqlx::Error::Io(_) | sqlx::Error::Tls(_) => "io",
            sqlx::Error::Migrate(_) => "migrate",
            _ => "other",
        };
        self.store_errors[index(&STORE_ERRORS, kind)].inc();
    }

    /// One HTTP request answered. `route` is the router's matched template
    /// (`/v1/deployments/{id}`), None when no route matched.
    pub fn api_request(&self, method: &str, route: Option<&str>, status: u16, took: Duration) {
        let method = match method {
            "GET" => "GET",
            "POST" => "POST",
            "PUT" => "PUT",
            "DELETE" => "DELETE",
            "PATCH" => "PATCH",
            "HEAD" => "HEAD",
            _ => "other",
        };
        let route = route.unwrap_or("unmatched");
        let route = {
            let mut map = self.api_requests.lock().expect("metrics lock");
            let key = (method, route.to_string(), status);
            let key = if map.contains_key(&key) || map.len() < MAX_API_SERIES {
                key
            } else {
                (method, "other".to_string(), status)
            };
            let route = key.1.clone();
            *map.entry(key).or_insert(0) += 1;
            route
        };
        self.api_duration
            .lock()
            .expect("metrics lock")
            .entry(route)
            .or_insert_with(|| Histogram::new(API_BOUNDS))
            .observe(took);
    }

    /// The text exposition of everything, with `snap` for the state gauges.
    pub fn render(&self, snap: &Snapshot) -> String {
        let mut o = String::with_capacity(16 * 1024);
        header(
            &mut o,
            "vesemir_build_info",
            "gauge",
            "The controller's version (always 1).",
        );
        let _ = writeln!(
            o,
            "vesemir_build_info{{version=\"{}\"}} 1",
            escape(env!("CARGO_PKG_VERSION"))
        );

        header(
            &mut o,
            "vesemir_agents",
            "gauge",
            "Enrolled agents by state (connected, stale, disconnected, revoked).",
        );
        for state in ["connected", "stale", "disconnected", "revoked"] {
            let n = snap.agents.get(state).copied().unwrap_or(0);
            let _ = writeln!(o, "vesemir_agents{{state=\"{state}\"}} {n}");
        }
        // Kept from the first /metrics so existing dashboards keep working.
        header(
            &mut o,
            "vesemir_agents_connected",
            "gauge",
            "Agents with a live QUIC connection (connected or stale).",
        );
        let live = snap.agents.get("connected").copied().unwrap_or(0)
            + snap.agents.get("stale").copied().unwrap_or(0);
        let _ = writeln!(o, "vesemir_agents_connected {live}");

        header(
            &mut o,
            "vesemir_heartbeats_total",
            "counter",
            "Heartbeats received from agents.",
        );
        let _ = writeln!(o, "vesemir_heartbeats_total {}", self.heartbeats.get());

        header(
            &mut o,
            "vesemir_enrollments_total",
            "counter",
            "Enrollment attempts by result (enrolled, refused, failed).",
        );
        for r in Enrollment::ALL {
            let _ = writeln!(
                o,
                "vesemir_enrollments_total{{result=\"{}\"}} {}",
                r.label(),
                self.enrollments[r as usize].get()
            );
        }

        header(
            &mut o,
            "vesemir_job_streams_open",
            "gauge",
            "Job streams to agents open right now.",
        );
        let _ = writeln!(
            o,
            "vesemir_job_streams_open {}",
            self.job_streams_open.load(Ordering::Relaxed).max(0)
        );
        header(
            &mut o,
            "vesemir_job_streams_total",
            "counter",
            "Job streams opened to agents.",
        );
        let _ = writeln!(o, "vesemir_job_streams_total {}", self.job_streams.get());

        header(
            &mut o,
            "vesemir_deployments_running",
            "gauge",
            "Deployments whose orchestrator runs in this controller.",
        );
        let _ = writeln!(
            o,
            "vesemir_deployments_running {}",
            snap.deployments_running
        );
        header(
            &mut o,
            "vesemir_deployments_total",
            "counter",
            "Deployments finished, by final status.",
        );
        for (i, s) in DEPLOYMENT_STATUSES.iter().enumerate() {
            let _ = writeln!(
                o,
                "vesemir_deployments_total{{status=\"{s}\"}} {}",
                self.deployments[i].get()
            );
        }
        header(
            &mut o,
            "vesemir_deployment_duration_seconds",
            "histogram",
            "Time from a deployment's start to its final status, by status.",
        );
        for (i, s) in DEPLOYMENT_STATUSES.iter().enumerate() {
            self.deployment_duration[i].render(
                &mut o,
                "vesemir_deployment_duration_seconds",
                &format!("status=\"{s}\","),
            );
        }

        header(
            &mut o,
            "vesemir_host_runs_total",
            "counter",
            "Host runs ended, by result (succeeded, failed, unreachable, interrupted).",
        );
        for (i, r) in HOST_RESULTS.iter().enumerate() {
            let _ = writeln!(
                o,
                "vesemir_host_runs_total{{result=\"{r}\"}} {}",
                self.host_runs[i].get()
            );
        }
        header(
            &mut o,
            "vesemir_host_run_duration_seconds",
            "histogram",
            "Time from a host's start (drain) to its end, by result.",
        );
        for (i, r) in HOST_RESULTS.iter().enumerate() {
            if r == &"unreachable" {
                continue; // never ran: no duration
            }
            self.host_run_duration[i].render(
                &mut o,
                "vesemir_host_run_duration_seconds",
                &format!("result=\"{r}\","),
            );
        }

        header(
            &mut o,
            "vesemir_haproxy_actions_total",
            "counter",
            "HAProxy runtime-API actions per HAProxy VM, by action and result.",
        );
        for (i, a) in HAPROXY_ACTIONS.iter().enumerate() {
            for (j, r) in ["ok", "failed"].iter().enumerate() {
                let _ = writeln!(
                    o,
                    "vesemir_haproxy_actions_total{{action=\"{a}\",result=\"{r}\"}} {}",
                    self.haproxy_actions[i][j].get()
                );
            }
        }

        header(
            &mut o,
            "vesemir_chef_request_duration_seconds",
            "histogram",
            "Chef server requests, retries included, until answer or deadline.",
        );
        self.chef_duration
            .render(&mut o, "vesemir_chef_request_duration_seconds", "");
        header(
            &mut o,
            "vesemir_chef_request_errors_total",
            "counter",
            "Chef server requests that failed, by kind.",
        );
        for (i, k) in CHEF_ERRORS.iter().enumerate() {
            let _ = writeln!(
                o,
                "vesemir_chef_request_errors_total{{kind=\"{k}\"}} {}",
                self.chef_errors[i].get()
            );
        }

        header(
            &mut o,
            "vesemir_store_query_duration_seconds",
            "histogram",
            "Store operations (one Store method: its queries and transaction), by operation.",
        );
        for (op, h) in self.store_duration.lock().expect("metrics lock").iter() {
            h.render(
                &mut o,
                "vesemir_store_query_duration_seconds",
                &format!("op=\"{}\",", escape(op)),
            );
        }
        header(
            &mut o,
            "vesemir_store_errors_total",
            "counter",
            "Database errors returned by the store, by kind.",
        );
        for (i, k) in STORE_ERRORS.iter().enumerate() {
            let _ = writeln!(
                o,
                "vesemir_store_errors_total{{kind=\"{k}\"}} {}",
                self.store_errors[i].get()
            );
        }

        header(
            &mut o,
            "vesemir_api_requests_total",
            "counter",
            "HTTP requests answered, by method, route template and status.",
        );
        for ((m, route, status), n) in self.api_requests.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                o,
                "vesemir_api_requests_total{{method=\"{m}\",route=\"{}\",status=\"{status}\"}} {n}",
                escape(route)
            );
        }
        header(
            &mut o,
            "vesemir_api_request_duration_seconds",
            "histogram",
            "Time to the response head (streams: until they start), by route template.",
        );
        for (route, h) in self.api_duration.lock().expect("metrics lock").iter() {
            h.render(
                &mut o,
                "vesemir_api_request_duration_seconds",
                &format!("route=\"{}\",", escape(route)),
            );
        }
        o
    }
}

fn header(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Escapes a label value (backslash, quote, newline).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

// ---- one-line call sites ----------------------------------------------

/// A heartbeat arrived.
pub fn heartbeat() {
    global().heartbeat();
}

/// An enrollment ended.
pub fn enrollment(result: Enrollment) {
    global().enrollment(result);
}

/// A job stream was opened; it counts as open until the guard drops.
pub fn job_stream_opened() -> OpenJobStream {
    let m = global();
    m.job_streams.inc();
    m.job_streams_open.fetch_add(1, Ordering::Relaxed);
    OpenJobStream(())
}

/// A deployment reached its final status: reads its start and end from the
/// store so a deployment resumed after a restart is timed from its start.
pub async fn deployment_finished(store: &crate::store::Store, id: &str) {
    if let Ok(Some(row)) = store.get_deployment(id).await {
        let start = row.started_at.unwrap_or(row.created_at);
        let end = row.finished_at.unwrap_or_else(crate::store::now_ms);
        let took = Duration::from_millis((end - start).max(0) as u64);
        global().deployment_finished(&row.status, took);
    }
}

/// A host run ended; `since_ms` is when the host started (Unix ms), `None`
/// for hosts that never ran.
pub fn host_run(result: &str, since_ms: Option<i64>) {
    let took = since_ms.map(|s| Duration::from_millis((crate::store::now_ms() - s).max(0) as u64));
    global().host_run(result, took);
}

/// One HAProxy action on one HAProxy VM ended.
pub fn haproxy_action(action: &str, ok: bool) {
    global().haproxy_action(action, ok);
}

/// A Chef request ended; `outcome` is the retry loop under its deadline.
pub fn chef_request<T>(
    took: Duration,
    outcome: &Result<Result<T, crate::inventory::chef::ChefError>, tokio::time::error::Elapsed>,
) {
    use crate::inventory::chef::ChefError as E;
    let error = match outcome {
        Ok(Ok(_)) => None,
        Err(_) | Ok(Err(E::Timeout { .. })) => Some("timeout"),
        Ok(Err(E::Unreachable { .. })) => Some("unreachable"),
        Ok(Err(
            E::UnknownClient { .. }
            | E::BadSignature { .. }
            | E::ClockSkew { .. }
            | E::Unauthorized { .. }
            | E::Forbidden { .. },
        )) => Some("auth"),
        Ok(Err(E::Status { .. })) => Some("status"),
        Ok(Err(_)) => Some("other"),
    };
    global().chef_request(took, error);
}

/// Starts timing a store operation; keep the guard for the method's body.
pub fn store_op(op: &'static str) -> StoreTimer {
    StoreTimer {
        op,
        started: Instant::now(),
    }
}

/// A database error surfaced from the store.
pub fn store_error(e: &sqlx::Error) {
    global().store_error(e);
}

/// axum middleware: counts every answered request by method, matched route
/// template and status. Added with `Router::layer`, so axum has already
/// matched the route and put its [`axum::extract::MatchedPath`] in the request.
pub async fn track_api(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let started = Instant::now();
    let resp = next.run(req).await;
    global().api_request(
        &method,
        route.as_deref(),
        resp.status().as_u16(),
        started.elapsed(),
    );
    resp
}

/// The state gauges, read from the fleet and the orchestrators.
pub async fn snapshot(state: &crate::http::AppState) -> Result<Snapshot, crate::store::StoreError> {
    let mut agents: BTreeMap<&'static str, u64> = BTreeMap::new();
    for rec in state.store.list_agents().await? {
        let label = match state.fleet.view(rec).state {
            crate::fleet::AgentState::Connected => "connected",
            crate::fleet::AgentState::Stale => "stale",
            crate::fleet::AgentState::Disconnected => "disconnected",
            crate::fleet::AgentState::Revoked => "revoked",
        };
        *agents.entry(label).or_insert(0) += 1;
    }
    Ok(Snapshot {
        agents,
        deployments_running: state.deployments.running_count() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting {prefix:?} in\n{text}"))
    }

    #[test]
    fn histograms_are_cumulative_and_count_matches_inf() {
        let m = Metrics::default();
        for ms in [100, 700, 3_000, 90_000] {
            m.host_run("succeeded", None);
            m.host_run_duration[0].observe(Duration::from_millis(ms));
        }
        let t = m.render(&Snapshot::default());
        let b = |le: &str| {
            let l = line(
                &t,
                &format!(
                    "vesemir_host_run_duration_seconds_bucket{{result=\"succeeded\",le=\"{le}\"}}"
                ),
            );
            l.rsplit(' ').next().unwrap().parse::<u64>().unwrap()
        };
        assert_eq!(b("0.5"), 1);
        assert_eq!(b("1"), 2);
        assert_eq!(b("5"), 3);
        assert_eq!(b("60"), 3);
        assert_eq!(b("120"), 4);
        assert_eq!(b("+Inf"), 4);
        assert_eq!(
            line(
                &t,
                "vesemir_host_run_duration_seconds_count{result=\"succeeded\"}"
            ),
            "vesemir_host_run_duration_seconds_count{result=\"succeeded\"} 4"
        );
        assert_eq!(
            line(
                &t,
                "vesemir_host_run_duration_seconds_sum{result=\"succeeded\"}"
            ),
            "vesemir_host_run_duration_seconds_sum{result=\"succeeded\"} 93.8"
        );
    }

    #[test]
    fn labels_come_from_fixed_sets() {
        let m = Metrics::default();
        m.deployment_finished("succeeded", Duration::from_secs(3));
        m.deployment_finished("something-new", Duration::from_secs(3));
        m.haproxy_action("weight 50%", true);
        m.haproxy_action("ready at 10%", true);
        m.haproxy_action("drain", false);
        m.haproxy_action("$(rm -rf)", true);
        let t = m.render(&Snapshot::default());
        for want in [
            "vesemir_deployments_total{status=\"succeeded\"} 1",
            "vesemir_deployments_total{status=\"other\"} 1",
            "vesemir_haproxy_actions_total{action=\"weight\",result=\"ok\"} 1",
            "vesemir_haproxy_actions_total{action=\"ready\",result=\"ok\"} 1",
            "vesemir_haproxy_actions_total{action=\"drain\",result=\"failed\"} 1",
            "vesemir_haproxy_actions_total{action=\"other\",result=\"ok\"} 1",
        ] {
            assert!(t.lines().any(|l| l == want), "{want} missing in\n{t}");
        }
        assert!(!t.contains("rm -rf"));
    }

    #[test]
    fn api_series_stop_growing_at_the_cap() {
        let m = Metrics::default();
        m.api_request("BREW", Some("/r1"), 200, Duration::from_millis(1));
        for i in 0..MAX_API_SERIES + 50 {
            m.api_request(
                "GET",
                Some(&format!("/r{i}")),
                200,
                Duration::from_millis(1),
            );
        }
        let map = m.api_requests.lock().unwrap();
        assert!(map.len() <= MAX_API_SERIES + 2, "{}", map.len());
        assert_eq!(map[&("GET", "other".to_string(), 200)], 51);
        assert_eq!(map[&("other", "/r1".to_string(), 200)], 1);
    }

    #[test]
    fn store_errors_are_counted_by_kind() {
        let m = Metrics::default();
        m.store_error(&sqlx::Error::PoolTimedOut);
        m.store_error(&sqlx::Error::RowNotFound);
        m.store_error(&sqlx::Error::Io(std::io::Error::other("disk")));
        let t = m.render(&Snapshot::default());
        for want in [
            "vesemir_store_errors_total{kind=\"pool_timeout\"} 1",
            "vesemir_store_errors_total{kind=\"other\"} 1",
            "vesemir_store_errors_total{kind=\"io\"} 1",
            "vesemir_store_errors_total{kind=\"database\"} 0",
        ] {
            assert!(t.lines().any(|l| l == want), "{want} missing in\n{t}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn every_family_has_help_and_type_once() {
        let m = Metrics::default();
        m.api_request("GET", Some("/v1/agents"), 200, Duration::from_millis(2));
        m.observe_store("list_agents", Duration::from_millis(1));
        let t = m.render(&Snapshot::default());
        let types: Vec<&str> = t.lines().filter(|l| l.starts_with("# TYPE ")).collect();
        let mut names: Vec<&str> = types.iter().map(|l| l.split(' ').nth(2).unwrap()).collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n, "duplicate TYPE lines");
        assert!(n >= 18, "{n} families");
    }
}
