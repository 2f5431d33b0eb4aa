//! The rollout of one deployment as a sans-IO state machine (in the spirit
//! of quinn-proto): it owns the window decisions (which host starts next,
//! the capacity guard, `max_fail_percentage`, cancel, pause) and is fed
//! events and polled for actions. It never reads a clock (the caller passes
//! `now`), never touches the store, the network or HAProxy: the orchestrator
//! is the IO shell that performs each [`Action`] and feeds the result back.
//!
//! Invariants the machine keeps, tested without IO in this module:
//! - the guard fails closed: while any HAProxy VM's backend could not be
//!   read, no new host starts;
//! - servers taken out by others and servers of failed hosts left in maint
//!   count against `max_unavailable`, together with hosts in flight;
//! - once cancelled, or once failures exceed `max_fail_percentage`, no new
//!   host starts; hosts in flight finish;
//! - [`Action::Finish`] comes only when no host is in flight.
//!
//! The status, step and rotation columns of the store are the enums below,
//! stored as the same text as before (`as_str`/`FromStr`, unknown text is a
//! [`ParseError`], never a panic).

pub mod host;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::str::FromStr;

/// Text in a status/step/rotation column that no enum variant spells.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {text:?} in the store (expected one of: {expected})")]
pub struct ParseError {
    what: &'static str,
    text: String,
    expected: &'static str,
}

/// One enum stored as text: `as_str` is what the store and the API carry.
macro_rules! text_enum {
    ($(#[$m:meta])* $name:ident, $what:literal, { $($(#[$vm:meta])* $v:ident => $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($(#[$vm])* $v),+ }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$v),+];

            /// The text stored in the database and shown by the API.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$v => $s),+ }
            }
        }

        impl FromStr for $name {
            type Err = ParseError;
            fn from_str(s: &str) -> Result<Self, ParseError> {
                match s {
                    $($s => Ok($name::$v),)+
                    _ => Err(ParseError {
                        what: $what,
                        text: s.to_string(),
                        expected: concat!($($s, " "),+),
                    }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_enum!(
    /// `deployments.status`.
    DeploymentStatus, "deployment status", {
        Pending => "pending",
        Running => "running",
        Succeeded => "succeeded",
        /// Some hosts failed, fewer than `max_fail_percentage`.
        Failed => "failed",
        /// Stopped early: too many failures, or no capacity to go on.
        Aborted => "aborted",
        Cancelled => "cancelled",
    }
);

text_enum!(
    /// `deployment_hosts.status`.
    HostStatus, "host status", {
        Pending => "pending",
        Running => "running",
        Succeeded => "succeeded",
        Failed => "failed",
        Unreachable => "unreachable",
        /// Never started (cancel, abort).
        Skipped => "skipped",
    }
);

text_enum!(
    /// `deployment_hosts.rotation`: where this deployment left the server.
    Rotation, "rotation", {
        In => "in",
        /// Drained or being deployed; back in when the host succeeds.
        Out => "out",
        /// A failed host's server, kept out until someone looks at it.
        Maint => "maint",
    }
);

text_enum!(
    /// `deployment_hosts.step`: the step a host is in, written before the
    /// step acts.
    Step, "host step", {
        Draining => "draining",
        WaitingDrain => "waiting_drain",
        Deploying => "deploying",
        Enabling => "enabling",
        Ramping => "ramping",
    }
);

impl Step {
    /// The first step of a host's run: with HAProxy the server is drained
    /// first, without it the playbook runs at once.
    pub fn first(guarded: bool) -> Step {
        if guarded {
            Step::Draining
        } else {
            Step::Deploying
        }
    }

    /// The step after this one once it succeeded; `None` when the host is
    /// done. A pure function: the shell persists the next step before
    /// acting on it.
    pub fn next(self, guarded: bool) -> Option<Step> {
        match (self, guarded) {
            (Step::Draining, true) => Some(Step::WaitingDrain),
            (Step::WaitingDrain, true) => Some(Step::Deploying),
            (Step::Deploying, true) => Some(Step::Enabling),
            (Step::Enabling, true) => Some(Step::Ramping),
            (Step::Deploying, false) => None,
            (Step::Ramping, _) => None,
            // A step that needs HAProxy in a run without it: nothing left.
            (_, false) => None,
        }
    }

    /// Where a resumed host starts from, given the step stored when the
    /// controller stopped. Draining is idempotent, so any step before the
    /// playbook ends drains again and then asks the agent for the job's
    /// outcome by job id (never running it twice); a host past its playbook
    /// only puts its server back in rotation. `None` (no step stored yet)
    /// starts from the beginning.
    pub fn resume_from(stored: Option<Step>, guarded: bool) -> Step {
        match stored {
            Some(Step::Enabling | Step::Ramping) if guarded => Step::Enabling,
            Some(Step::Enabling | Step::Ramping) => Step::Deploying,
            _ => Step::first(guarded),
        }
    }

    /// The rotation written together with this step.
    pub fn rotation(self, guarded: bool) -> Rotation {
        match self {
            Step::Ramping => Rotation::In,
            _ if guarded => Rotation::Out,
            _ => Rotation::In,
        }
    }

    /// Whether the playbook still has to run (or its outcome be fetched).
    pub fn before_playbook_end(self) -> bool {
        matches!(self, Step::Draining | Step::WaitingDrain | Step::Deploying)
    }
}

/// How a host's run ended, as the shell reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostOutcome {
    Succeeded,
    /// Failed (or unreachable): its server stays in maint when guarded.
    Failed,
    /// The run stopped without an end (shutdown, store error): the host
    /// stays running and resumes later; it keeps its place out of rotation.
    Interrupted,
}

/// One server of the backend as an HAProxy VM reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendServer {
    pub name: String,
    /// Admin state other than ready (drain or maint).
    pub out: bool,
}

/// Why a backend could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unreadable(pub String);

/// What the machine wants done next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Read the backend's servers on this HAProxy VM and feed them back
    /// with [`Rollout::servers_state`].
    QueryBackend(String),
    /// Start this host (the machine already counts it out of rotation).
    StartHost(String),
    /// Nothing to do before this time (ms) unless an event comes: a
    /// backend read failed and is tried again then.
    WaitUntil(u64),
    /// End the deployment; hosts still pending become skipped.
    Finish {
        status: DeploymentStatus,
        error: Option<String>,
    },
}

/// The plan's numbers the machine decides with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub concurrency: usize,
    pub max_unavailable: usize,
    pub max_fail_percentage: u32,
    /// HAProxy VMs to read the backend on; empty means no HAProxy (no
    /// guard).
    pub haproxy_vms: Vec<String>,
    /// How long a backend read is reused before it is read again (ms).
    pub reread_ms: u64,
}

/// A host as the machine sees it (from the store on start and on resume).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostState {
    pub name: String,
    pub server: String,
    pub status: HostStatus,
    pub rotation: Rotation,
}

/// Reads of a backend tried before an idle window gives up (fail closed:
/// the deployment aborts rather than start a host blind).
pub const UNREADABLE_TRIES: u32 = 3;

/// The window of one deployment.
#[derive(Debug)]
pub struct Rollout {
    limits: Limits,
    total: usize,
    pending: VecDeque<String>,
    in_flight: BTreeSet<String>,
    /// Our servers left in maint by failed hosts.
    maint: usize,
    failures: usize,
    ours: BTreeSet<String>,
    /// Last read per VM: when (ms) and what.
    reads: BTreeMap<String, (u64, Result<BTreeSet<String>, Unreadable>)>,
    /// VMs asked and not answered yet.
    asked: BTreeSet<String>,
    /// Consecutive failed reads per VM.
    read_failures: BTreeMap<String, u32>,
    cancelled: bool,
    paused: bool,
    /// Set when the window stopped for want of capacity.
    blocked: Option<String>,
    finished: bool,
}

impl Rollout {
    /// A machine over `hosts` (in plan order). Hosts stored as running are
    /// resumed: they are in flight, and the shell starts them first with
    /// [`Rollout::resumed`].
    pub fn new(limits: Limits, hosts: &[HostState]) -> Rollout {
        let mut r = Rollout {
            total: hosts.len(),
            pending: hosts
                .iter()
                .filter(|h| h.status == HostStatus::Pending)
                .map(|h| h.name.clone())
                .collect(),
            in_flight: hosts
                .iter()
                .filter(|h| h.status == HostStatus::Running)
                .map(|h| h.name.clone())
                .collect(),
            maint: hosts
                .iter()
                .filter(|h| h.status != HostStatus::Running && h.rotation == Rotation::Maint)
                .count(),
            failures: hosts
                .iter()
                .filter(|h| matches!(h.status, HostStatus::Failed | HostStatus::Unreachable))
                .count(),
            ours: hosts.iter().map(|h| h.server.clone()).collect(),
            reads: BTreeMap::new(),
            asked: BTreeSet::new(),
            read_failures: BTreeMap::new(),
            cancelled: false,
            paused: false,
            blocked: None,
            finished: false,
            limits,
        };
        r.limits.concurrency = r.limits.concurrency.max(1);
        r
    }

    /// Hosts that were running when the controller stopped: the shell
    /// resumes each of them (from its stored step) before polling.
    pub fn resumed(&self) -> Vec<String> {
        self.in_flight.iter().cloned().collect()
    }

    fn guarded(&self) -> bool {
        !self.limits.haproxy_vms.is_empty()
    }

    fn exceeded(&self) -> bool {
        self.failures * 100 > self.limits.max_fail_percentage as usize * self.total
    }

    /// Servers out of rotation that count against `max_unavailable`:
    /// ours in flight, ours left in maint, and others' (union over VMs).
    pub fn out_of_rotation(&self) -> usize {
        self.in_flight.len() + self.maint + self.external_out()
    }

    fn external_out(&self) -> usize {
        let mut out = BTreeSet::new();
        for (_, r) in self.reads.values() {
            if let Ok(s) = r {
                out.extend(s.iter().filter(|n| !self.ours.contains(*n)));
            }
        }
        out.len()
    }

    /// A host's run ended.
    pub fn host_ended(&mut self, host: &str, outcome: HostOutcome) {
        match outcome {
            HostOutcome::Interrupted => {}
            HostOutcome::Succeeded => {
                self.in_flight.remove(host);
            }
            HostOutcome::Failed => {
                if self.in_flight.remove(host) {
                    self.failures += 1;
                    if self.guarded() {
                        self.maint += 1;
                    }
                }
            }
        }
    }

    /// The shell gave up on an interrupted host (it kept failing to resume).
    pub fn host_abandoned(&mut self, host: &str) {
        self.host_ended(host, HostOutcome::Failed);
    }

    /// A backend read on `vm` came back (at `now`, ms).
    pub fn servers_state(
        &mut self,
        vm: &str,
        now: u64,
        servers: Result<Vec<BackendServer>, Unreadable>,
    ) {
        self.asked.remove(vm);
        let n = self.read_failures.entry(vm.to_string()).or_insert(0);
        *n = if servers.is_ok() { 0 } else { *n + 1 };
        let r = servers.map(|s| s.into_iter().filter(|s| s.out).map(|s| s.name).collect());
        self.reads.insert(vm.to_string(), (now, r));
    }

    /// Stop starting hosts; those in flight finish.
    pub fn cancel(&mut self) {
        self.cancelled = true;
    }

    /// Hold new hosts back until [`Rollout::resume`]; hosts in flight go on.
    pub fn pause(&mut self) {
        self.paused = true;
    }

    pub fn resume(&mut self) {
        self.paused = false;
    }

    /// Hosts in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The next action at `now` (ms), or `None` while waiting for an event
    /// (a host ending, a backend read, a cancel, a resume).
    pub fn poll(&mut self, now: u64) -> Option<Action> {
        if self.finished {
            return None;
        }
        let may_start = !self.cancelled && !self.exceeded() && !self.pending.is_empty();
        if may_start && !self.paused && self.in_flight.len() < self.limits.concurrency {
            if self.guarded() {
                // Read every VM whose read is missing or stale.
                let stale = self.limits.haproxy_vms.iter().find(|vm| {
                    !self.asked.contains(*vm)
                        && self
                            .reads
                            .get(*vm)
                            .is_none_or(|(at, _)| now.saturating_sub(*at) >= self.limits.reread_ms)
                });
                if let Some(vm) = stale.cloned() {
                    self.asked.insert(vm.clone());
                    return Some(Action::QueryBackend(vm));
                }
                if !self.asked.is_empty() {
                    return None;
                }
                if let Some((vm, at, why)) = self.reads.iter().find_map(|(vm, (at, r))| match r {
                    Err(e) => Some((vm.clone(), *at, e.clone())),
                    Ok(_) => None,
                }) {
                    let tries = self.read_failures.get(&vm).copied().unwrap_or(0);
                    self.blocked = Some(format!(
                        "cannot read the backend's servers on HAProxy VM {vm} ({tries} tries, last: {why}); no host starts without knowing how many servers are out of rotation"
                    ));
                    if !self.in_flight.is_empty() {
                        return None;
                    }
                    if tries < UNREADABLE_TRIES {
                        return Some(Action::WaitUntil(at.saturating_add(self.limits.reread_ms)));
                    }
                    return self.finish_if_idle();
                }
                let out = self.out_of_rotation();
                if out >= self.limits.max_unavailable {
                    self.blocked = Some(format!(
                        "{out} servers are out of rotation ({} by this deployment, failed hosts stay in maint; {} by others), reaching max_unavailable {}; no further host can start",
                        self.in_flight.len() + self.maint,
                        self.external_out(),
                        self.limits.max_unavailable
                    ));
                    return self.finish_if_idle();
                }
            }
            self.blocked = None;
            let host = self.pending.pop_front().expect("pending checked");
            self.in_flight.insert(host.clone());
            return Some(Action::StartHost(host));
        }
        if self.paused && may_start {
            return None;
        }
        self.finish_if_idle()
    }

    fn finish_if_idle(&mut self) -> Option<Action> {
        if !self.in_flight.is_empty() {
            return None;
        }
        self.finished = true;
        let (status, error) = if self.cancelled {
            (
                DeploymentStatus::Cancelled,
                Some("cancelled on request".to_string()),
            )
        } else if self.exceeded() {
            (
                DeploymentStatus::Aborted,
                Some(format!(
                    "{} of {} hosts failed, more than max_fail_percentage {}%",
                    self.failures, self.total, self.limits.max_fail_percentage
                )),
            )
        } else if !self.pending.is_empty() {
            let why = self
                .blocked
                .clone()
                .unwrap_or_else(|| "hosts left pending with no capacity to start them".to_string());
            (DeploymentStatus::Aborted, Some(why))
        } else if self.failures > 0 {
            (
                DeploymentStatus::Failed,
                Some(format!("{} of {} hosts failed", self.failures, self.total)),
            )
        } else {
            (DeploymentStatus::Succeeded, None)
        };
        Some(Action::Finish { status, error })
    }
}

/// The dry run's batches, from the same machine: every host succeeds, no
/// server is out by others; a batch is the hosts that start before any in
/// flight ends.
pub fn dry_run_batches(
    names: &[String],
    concurrency: usize,
    max_unavailable: Option<usize>,
) -> Vec<Vec<String>> {
    let hosts: Vec<HostState> = names
        .iter()
        .map(|n| HostState {
            name: n.clone(),
            server: n.clone(),
            status: HostStatus::Pending,
            rotation: Rotation::In,
        })
        .collect();
    let vms = max_unavailable
        .map(|_| vec!["dry-run".to_string()])
        .unwrap_or_default();
    let mut r = Rollout::new(
        Limits {
            concurrency,
            max_unavailable: max_unavailable.unwrap_or(usize::MAX),
            max_fail_percentage: 100,
            haproxy_vms: vms,
            reread_ms: u64::MAX,
        },
        &hosts,
    );
    let mut batches: Vec<Vec<String>> = Vec::new();
    let mut batch: Vec<String> = Vec::new();
    loop {
        match r.poll(0) {
            Some(Action::QueryBackend(vm)) => r.servers_state(&vm, 0, Ok(vec![])),
            Some(Action::StartHost(h)) => batch.push(h),
            Some(Action::Finish { .. } | Action::WaitUntil(_)) => break,
            None if batch.is_empty() => break,
            None => {
                for h in &batch {
                    r.host_ended(h, HostOutcome::Succeeded);
                }
                batches.push(std::mem::take(&mut batch));
            }
        }
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    const REREAD: u64 = 250;

    fn hosts(n: usize) -> Vec<HostState> {
        (0..n)
            .map(|i| HostState {
                name: format!("h{i}"),
                server: format!("s{i}"),
                status: HostStatus::Pending,
                rotation: Rotation::In,
            })
            .collect()
    }

    fn limits(concurrency: usize, max_unavailable: usize, fail: u32, vms: &[&str]) -> Limits {
        Limits {
            concurrency,
            max_unavailable,
            max_fail_percentage: fail,
            haproxy_vms: vms.iter().map(|v| v.to_string()).collect(),
            reread_ms: REREAD,
        }
    }

    fn srv(name: &str, out: bool) -> BackendServer {
        BackendServer {
            name: name.into(),
            out,
        }
    }

    /// Polls until the machine waits, answering backend reads with `read`;
    /// returns the hosts started and the final action if any.
    fn drain_polls(
        r: &mut Rollout,
        now: u64,
        read: &dyn Fn(&str) -> Result<Vec<BackendServer>, Unreadable>,
    ) -> (Vec<String>, Option<Action>) {
        let mut started = Vec::new();
        for _ in 0..1000 {
            match r.poll(now) {
                Some(Action::QueryBackend(vm)) => {
                    let res = read(&vm);
                    r.servers_state(&vm, now, res)
                }
                Some(Action::StartHost(h)) => started.push(h),
                other => return (started, other),
            }
        }
        panic!("the machine did not settle");
    }

    fn empty(_: &str) -> Result<Vec<BackendServer>, Unreadable> {
        Ok(vec![])
    }

    fn finish(status: DeploymentStatus) -> Option<Action> {
        Some(Action::Finish {
            status,
            error: None,
        })
    }

    fn finished_status(a: &Option<Action>) -> Option<DeploymentStatus> {
        match a {
            Some(Action::Finish { status, .. }) => Some(*status),
            _ => None,
        }
    }

    /// Runs a whole deployment where `fails(host)` says which hosts fail;
    /// returns the batches started and the final status.
    fn run_all(
        mut r: Rollout,
        fails: &dyn Fn(&str) -> bool,
        read: &dyn Fn(&str) -> Result<Vec<BackendServer>, Unreadable>,
    ) -> (Vec<Vec<String>>, Option<Action>) {
        let mut batches = Vec::new();
        let mut now = 0;
        loop {
            let (started, last) = drain_polls(&mut r, now, read);
            if !started.is_empty() {
                batches.push(started.clone());
            }
            match last {
                Some(Action::Finish { .. }) => return (batches, last),
                Some(Action::WaitUntil(t)) => now = t,
                _ => {
                    // Hosts end one at a time, oldest first.
                    let Some(h) = r.in_flight.iter().next().cloned() else {
                        return (batches, last);
                    };
                    let o = if fails(&h) {
                        HostOutcome::Failed
                    } else {
                        HostOutcome::Succeeded
                    };
                    r.host_ended(&h, o);
                    now += 1;
                }
            }
        }
    }

    #[test]
    fn enums_round_trip_their_stored_text() {
        for s in DeploymentStatus::ALL {
            assert_eq!(s.as_str().parse::<DeploymentStatus>(), Ok(*s));
        }
        for s in HostStatus::ALL {
            assert_eq!(s.as_str().parse::<HostStatus>(), Ok(*s));
        }
        for s in Rotation::ALL {
            assert_eq!(s.as_str().parse::<Rotation>(), Ok(*s));
        }
        for s in Step::ALL {
            assert_eq!(s.as_str().parse::<Step>(), Ok(*s));
        }
        // The text is the one stored before the enums existed.
        assert_eq!(Step::WaitingDrain.as_str(), "waiting_drain");
        assert_eq!(Rotation::Maint.as_str(), "maint");
        assert_eq!(DeploymentStatus::Aborted.as_str(), "aborted");
    }

    #[test]
    fn unknown_text_is_an_error_naming_it() {
        let e = "exploded".parse::<HostStatus>().unwrap_err();
        assert!(e.to_string().contains("\"exploded\""), "{e}");
        assert!(e.to_string().contains("pending"), "{e}");
        assert!("IN".parse::<Rotation>().is_err());
        assert!("".parse::<Step>().is_err());
    }

    #[test]
    fn steps_with_haproxy_run_drain_to_ramp() {
        let mut s = Step::first(true);
        let mut seen = vec![s];
        while let Some(n) = s.next(true) {
            seen.push(n);
            s = n;
        }
        assert_eq!(
            seen,
            [
                Step::Draining,
                Step::WaitingDrain,
                Step::Deploying,
                Step::Enabling,
                Step::Ramping
            ]
        );
        assert_eq!(Step::Draining.rotation(true), Rotation::Out);
        assert_eq!(Step::Ramping.rotation(true), Rotation::In);
    }

    #[test]
    fn steps_without_haproxy_only_deploy() {
        assert_eq!(Step::first(false), Step::Deploying);
        assert_eq!(Step::Deploying.next(false), None);
        assert_eq!(Step::Deploying.rotation(false), Rotation::In);
    }

    #[test]
    fn resume_from_every_step() {
        let table = [
            (None, true, Step::Draining),
            (Some(Step::Draining), true, Step::Draining),
            (Some(Step::WaitingDrain), true, Step::Draining),
            (Some(Step::Deploying), true, Step::Draining),
            (Some(Step::Enabling), true, Step::Enabling),
            (Some(Step::Ramping), true, Step::Enabling),
            (None, false, Step::Deploying),
            (Some(Step::Deploying), false, Step::Deploying),
        ];
        for (stored, guarded, want) in table {
            assert_eq!(
                Step::resume_from(stored, guarded),
                want,
                "{stored:?} guarded={guarded}"
            );
            // A resume before the playbook's end asks for the outcome by job
            // id; after it, the playbook is never run again.
            assert_eq!(
                want.before_playbook_end(),
                stored.is_none_or(|s| s.before_playbook_end())
            );
        }
    }

    #[test]
    fn resumed_running_hosts_are_in_flight_and_out_of_rotation() {
        let mut hs = hosts(4);
        hs[0].status = HostStatus::Running;
        hs[0].rotation = Rotation::Out;
        hs[1].status = HostStatus::Succeeded;
        let mut r = Rollout::new(limits(2, 1, 0, &["lb"]), &hs);
        assert_eq!(r.resumed(), ["h0"]);
        // max_unavailable 1 is taken by the resumed host.
        let (started, last) = drain_polls(&mut r, 0, &empty);
        assert!(started.is_empty(), "{started:?}");
        assert_eq!(last, None);
        r.host_ended("h0", HostOutcome::Succeeded);
        let (started, _) = drain_polls(&mut r, 0, &empty);
        assert_eq!(started, ["h2"]);
    }

    #[test]
    fn resume_counts_stored_failures_and_maint() {
        let mut hs = hosts(4);
        hs[0].status = HostStatus::Failed;
        hs[0].rotation = Rotation::Maint;
        let mut r = Rollout::new(limits(4, 2, 100, &["lb"]), &hs);
        assert_eq!(r.out_of_rotation(), 1);
        let (started, _) = drain_polls(&mut r, 0, &empty);
        assert_eq!(started, ["h1"]);
    }

    #[test]
    fn resume_with_nothing_left_finishes_with_the_stored_failures() {
        let mut hs = hosts(2);
        hs[0].status = HostStatus::Succeeded;
        hs[1].status = HostStatus::Unreachable;
        let mut r = Rollout::new(limits(1, 1, 100, &[]), &hs);
        let (_, last) = drain_polls(&mut r, 0, &empty);
        assert_eq!(finished_status(&last), Some(DeploymentStatus::Failed));
    }

    #[test]
    fn single_host_succeeds() {
        let r = Rollout::new(limits(1, 1, 0, &["lb"]), &hosts(1));
        let (b, last) = run_all(r, &|_| false, &empty);
        assert_eq!(b, [vec!["h0".to_string()]]);
        assert_eq!(last, finish(DeploymentStatus::Succeeded));
    }

    #[test]
    fn no_hosts_finishes_succeeded_at_once() {
        let mut r = Rollout::new(limits(1, 1, 0, &[]), &[]);
        assert_eq!(r.poll(0), finish(DeploymentStatus::Succeeded));
        assert_eq!(r.poll(0), None, "finish comes once");
    }

    #[test]
    fn window_refills_as_hosts_end() {
        let mut r = Rollout::new(limits(2, 2, 0, &[]), &hosts(4));
        let (s, _) = drain_polls(&mut r, 0, &empty);
        assert_eq!(s, ["h0", "h1"]);
        r.host_ended("h1", HostOutcome::Succeeded);
        let (s, _) = drain_polls(&mut r, 1, &empty);
        assert_eq!(s, ["h2"], "one slot freed, one host starts");
        r.host_ended("h0", HostOutcome::Succeeded);
        let (s, _) = drain_polls(&mut r, 2, &empty);
        assert_eq!(s, ["h3"]);
    }

    #[test]
    fn concurrency_bounds_hosts_in_flight_without_haproxy() {
        let r = Rollout::new(limits(3, 1, 0, &[]), &hosts(7));
        let (b, last) = run_all(r, &|_| false, &empty);
        // No HAProxy: max_unavailable has nothing to guard.
        assert_eq!(b[0].len(), 3);
        assert_eq!(last, finish(DeploymentStatus::Succeeded));
    }

    #[test]
    fn max_unavailable_bounds_below_concurrency() {
        let mut r = Rollout::new(limits(5, 2, 0, &["lb"]), &hosts(6));
        let (s, last) = drain_polls(&mut r, 0, &empty);
        assert_eq!(s.len(), 2);
        assert_eq!(last, None);
    }

    #[test]
    fn concurrency_zero_still_starts_one() {
        let mut r = Rollout::new(limits(0, 5, 0, &[]), &hosts(3));
        let (s, _) = drain_polls(&mut r, 0, &empty);
        assert_eq!(s, ["h0"]);
    }

    #[test]
    fn others_servers_out_count_against_max_unavailable() {
        let mut r = Rollout::new(limits(3, 3, 0, &["lb"]), &hosts(3));
        let read = |_: &str| {
            Ok(vec![
                srv("other1", true),
                srv("other2", true),
                srv("other3", false),
            ])
        };
        let (s, _) = drain_polls(&mut r, 0, &read);
        assert_eq!(s, ["h0"], "two out by others leave room for one");
    }

    #[test]
    fn others_out_on_two_vms_count_once_per_server() {
        let mut r = Rollout::new(limits(3, 3, 0, &["lb1", "lb2"]), &hosts(3));
        let read = |_: &str| Ok(vec![srv("other", true)]);
        let (s, _) = drain_polls(&mut r, 0, &read);
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn our_own_servers_in_the_backend_are_not_counted_twice() {
        let mut r = Rollout::new(limits(2, 2, 0, &["lb"]), &hosts(3));
        let read = |_: &str| Ok(vec![srv("s0", true), srv("s1", true)]);
        let (s, _) = drain_polls(&mut r, 0, &read);
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn capacity_taken_by_others_aborts_an_idle_window() {
        let mut r = Rollout::new(limits(1, 1, 0, &["lb"]), &hosts(2));
        let read = |_: &str| Ok(vec![srv("other", true)]);
        let (s, last) = drain_polls(&mut r, 0, &read);
        assert!(s.is_empty());
        let Some(Action::Finish { status, error }) = last else {
            panic!("{last:?}")
        };
        assert_eq!(status, DeploymentStatus::Aborted);
        assert!(error.unwrap().contains("1 by others"));
    }

    #[test]
    fn failed_hosts_left_in_maint_count_against_max_unavailable() {
        let mut r = Rollout::new(limits(2, 2, 100, &["lb"]), &hosts(4));
        let (s, _) = drain_polls(&mut r, 0, &empty);
        assert_eq!(s, ["h0", "h1"]);
        r.host_ended("h0", HostOutcome::Failed);
        let (s, _) = drain_polls(&mut r, 0, &empty);
        assert!(s.is_empty(), "h0's server stays in maint: {s:?}");
        r.host_ended("h1", HostOutcome::Succeeded);
        let (s, _) = drain_polls(&mut r, 0, &empty);
        assert_eq!(s, ["h2"]);
    }

    #[test]
    fn failed_hosts_without_haproxy_free_their_slot() {
        let mut r = Rollout::new(limits(1, 1, 100, &[]), &hosts(2));
        drain_polls(&mut r, 0, &empty);
        r.host_ended("h0", HostOutcome::Failed);
        let (s, _) = drain_polls(&mut r, 0, &empty);
        assert_eq!(s, ["h1"]);
    }

    #[test]
    fn unreadable_haproxy_fails_closed() {
        let mut r = Rollout::new(limits(2, 5, 0, &["lb1", "lb2"]), &hosts(3));
        let read = |vm: &str| {
            if vm == "lb2" {
                Err(Unreadable("connection refused".into()))
            } else {
                Ok(vec![])
            }
        };
        let (s, last) = drain_polls(&mut r, 0, &read);
        assert!(s.is_empty(), "no host starts blind: {s:?}");
        assert_eq!(last, Some(Action::WaitUntil(REREAD)));
    }

    #[test]
    fn unreadable_haproxy_retries_then_aborts_naming_the_vm() {
        let r = Rollout::new(limits(1, 1, 0, &["lb"]), &hosts(2));
        let (b, last) = run_all(r, &|_| false, &|_| Err(Unreadable("timed out".into())));
        assert!(b.is_empty());
        let Some(Action::Finish { status, error }) = last else {
            panic!("{last:?}")
        };
        assert_eq!(status, DeploymentStatus::Aborted);
        let e = error.unwrap();
        assert!(
            e.contains("lb") && e.contains("timed out") && e.contains("3 tries"),
            "{e}"
        );
    }

    #[test]
    fn unreadable_haproxy_recovers_when_read_again() {
        let mut r = Rollout::new(limits(1, 1, 0, &["lb"]), &hosts(1));
        let (_, last) = drain_polls(&mut r, 0, &|_| Err(Unreadable("x".into())));
        assert_eq!(last, Some(Action::WaitUntil(REREAD)));
        let (s, _) = drain_polls(&mut r, REREAD, &empty);
        assert_eq!(s, ["h0"]);
    }

    #[test]
    fn unreadable_haproxy_holds_while_hosts_are_in_flight() {
        let mut r = Rollout::new(limits(2, 5, 0, &["lb"]), &hosts(3));
        assert_eq!(r.poll(0), Some(Action::QueryBackend("lb".into())));
        r.servers_state("lb", 0, Ok(vec![]));
        assert_eq!(r.poll(0), Some(Action::StartHost("h0".into())));
        // Read still fresh: the second host starts without a read.
        assert_eq!(r.poll(1), Some(Action::StartHost("h1".into())));
        r.host_ended("h0", HostOutcome::Succeeded);
        assert_eq!(r.poll(REREAD), Some(Action::QueryBackend("lb".into())));
        r.servers_state("lb", REREAD, Err(Unreadable("down".into())));
        assert_eq!(
            r.poll(REREAD),
            None,
            "h1 in flight: wait for it, start nothing"
        );
    }

    #[test]
    fn a_read_in_flight_is_not_asked_twice() {
        let mut r = Rollout::new(limits(2, 5, 0, &["lb"]), &hosts(3));
        assert_eq!(r.poll(0), Some(Action::QueryBackend("lb".into())));
        assert_eq!(r.poll(0), None);
    }

    #[test]
    fn max_fail_percentage_stops_new_hosts() {
        // 10 hosts, 20%: the third failure exceeds it.
        let r = Rollout::new(limits(1, 1, 20, &[]), &hosts(10));
        let (b, last) = run_all(r, &|h| h != "h0", &empty);
        assert_eq!(
            b.iter().flatten().count(),
            4,
            "h0 ok, h1..h3 fail, then stop"
        );
        let Some(Action::Finish { status, error }) = last else {
            panic!()
        };
        assert_eq!(status, DeploymentStatus::Aborted);
        assert!(error.unwrap().contains("3 of 10 hosts failed"));
    }

    #[test]
    fn failures_within_max_fail_percentage_end_failed() {
        let r = Rollout::new(limits(2, 2, 50, &[]), &hosts(4));
        let (b, last) = run_all(r, &|h| h == "h1", &empty);
        assert_eq!(b.iter().flatten().count(), 4);
        let Some(Action::Finish { status, error }) = last else {
            panic!()
        };
        assert_eq!(status, DeploymentStatus::Failed);
        assert_eq!(error.as_deref(), Some("1 of 4 hosts failed"));
    }

    #[test]
    fn all_hosts_failing_with_zero_tolerance_aborts_after_the_first_batch() {
        let r = Rollout::new(limits(2, 2, 0, &["lb"]), &hosts(6));
        let (b, last) = run_all(r, &|_| true, &empty);
        assert_eq!(b, [vec!["h0".to_string(), "h1".to_string()]]);
        assert_eq!(finished_status(&last), Some(DeploymentStatus::Aborted));
    }

    #[test]
    fn all_hosts_failing_with_full_tolerance_run_and_fail() {
        let r = Rollout::new(limits(1, 10, 100, &[]), &hosts(3));
        let (b, last) = run_all(r, &|_| true, &empty);
        assert_eq!(b.iter().flatten().count(), 3);
        assert_eq!(finished_status(&last), Some(DeploymentStatus::Failed));
    }

    #[test]
    fn cancel_lets_hosts_in_flight_finish_and_starts_none() {
        let mut r = Rollout::new(limits(2, 2, 0, &[]), &hosts(5));
        drain_polls(&mut r, 0, &empty);
        r.cancel();
        r.host_ended("h0", HostOutcome::Succeeded);
        assert_eq!(r.poll(1), None, "h1 still in flight");
        r.host_ended("h1", HostOutcome::Succeeded);
        let Some(Action::Finish { status, .. }) = r.poll(2) else {
            panic!()
        };
        assert_eq!(status, DeploymentStatus::Cancelled);
    }

    #[test]
    fn cancel_before_start_finishes_at_once() {
        let mut r = Rollout::new(limits(2, 2, 0, &["lb"]), &hosts(5));
        r.cancel();
        assert_eq!(
            finished_status(&r.poll(0)),
            Some(DeploymentStatus::Cancelled)
        );
    }

    #[test]
    fn pause_holds_new_hosts_and_resume_goes_on() {
        let mut r = Rollout::new(limits(1, 1, 0, &[]), &hosts(2));
        drain_polls(&mut r, 0, &empty);
        r.pause();
        r.host_ended("h0", HostOutcome::Succeeded);
        assert_eq!(r.poll(1), None, "paused with h1 pending: no finish");
        r.resume();
        assert_eq!(r.poll(1), Some(Action::StartHost("h1".into())));
    }

    #[test]
    fn interrupted_hosts_keep_their_place() {
        let mut r = Rollout::new(limits(1, 1, 0, &[]), &hosts(2));
        drain_polls(&mut r, 0, &empty);
        r.host_ended("h0", HostOutcome::Interrupted);
        assert_eq!(r.in_flight(), 1);
        assert_eq!(r.poll(1), None);
        r.host_abandoned("h0");
        assert_eq!(finished_status(&r.poll(2)), Some(DeploymentStatus::Aborted));
    }

    #[test]
    fn dry_run_batches_respect_max_unavailable() {
        let names: Vec<String> = (0..5).map(|i| format!("h{i}")).collect();
        let b = dry_run_batches(&names, 3, Some(2));
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1]);
        let b = dry_run_batches(&names, 3, None);
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), [3, 2]);
        assert_eq!(b.concat(), names, "plan order kept");
        assert!(dry_run_batches(&[], 3, Some(1)).is_empty());
    }
}
