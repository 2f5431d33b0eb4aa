//! One host's run as a sans-IO transition function: the steps of drain,
//! wait for the drain, deploy, enable and ramp, fed the outcome of each
//! action and answering with the next one. Like [`super::Rollout`] it
//! reads no clock (the caller passes `now`, in ms on any monotonic scale),
//! touches no store, network or HAProxy; `HostRun` in the orchestrator is
//! its IO shell.
//!
//! Invariants, tested without IO below:
//! - every [`Act`] that moves the host to a new [`Step`] carries it in
//!   `record`: the shell persists it before performing the action, so a
//!   restarted controller knows whether the server may be out of rotation;
//! - a resumed host goes through [`Step::resume_from`]: before its
//!   playbook ended it drains again (idempotent) and asks for the job's
//!   outcome by id; past it, it only puts its server back;
//! - any failure before the server is back in rotation ends the host
//!   failed with its server left in maint on every HAProxy VM; a failed
//!   ramp step (the server already serves) is reported, not fatal;
//! - the ramp's weights and the sleeps between them are decided here.

use super::{HostStatus, ParseError, Step};
use vesemir_protocol::haproxy::{HaproxyOp, State, Weight};
use vesemir_protocol::job::JobStatus;

/// What a host run needs to know about the HAProxy side of the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guard {
    /// The backend the host's server is in.
    pub backend: String,
    /// The host's server name in that backend.
    pub server: String,
    /// `drain` (running sessions finish) or `maint`, as requested; also the
    /// action's label.
    pub drain_mode: String,
    /// Longest wait for the drained server's sessions to reach 0 (ms).
    pub degradation_ms: u64,
    /// Weight ramp in percent; the first is set with `ready`.
    pub weights: Vec<u32>,
    /// Pause between two ramp weights (ms).
    pub sleep_ms: u64,
}

/// The request's numbers one host run decides with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPlan {
    /// The host (for messages).
    pub host: String,
    /// `None`: no HAProxy, only the playbook runs.
    pub guard: Option<Guard>,
    /// `job_timeout_seconds` (for the timeout message).
    pub job_timeout_secs: u64,
    /// How often the agent polls `scur` while the server drains (ms).
    pub drain_poll_ms: u64,
}

/// How the playbook job ended, as the shell saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlaybookResult {
    /// The job's final outcome from the agent (or its journal).
    Ended {
        /// How it ended.
        status: JobStatus,
        /// The agent's reason, when it failed.
        error: Option<String>,
    },
    /// The agent could not be reached, or went away mid-job.
    Unreachable(String),
    /// `job_timeout_seconds` passed; the shell cancelled the job.
    TimedOut {
        /// The agent was gone or silent at the deadline: the network or
        /// the VM failed it, not the playbook.
        agent_silent: bool,
    },
}

/// What the shell does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostAction {
    /// Run these ops on every HAProxy VM and feed the result to
    /// [`HostMachine::haproxy_done`]. `fatal: false` means a failure is
    /// only reported (the machine goes on either way).
    Haproxy {
        /// The action's name in the log and the action table.
        label: String,
        /// The ops, in order.
        ops: Vec<HaproxyOp>,
        /// Whether a failure fails the host.
        fatal: bool,
    },
    /// Run the playbook job (by the host's job id) and feed the result to
    /// [`HostMachine::playbook_done`].
    RunPlaybook,
    /// Call [`HostMachine::timer`] at this time (ms).
    WaitUntil(u64),
    /// The host succeeded; its server is in rotation.
    Succeed,
    /// The host ended `status` (failed or unreachable) for `reason`; the
    /// shell runs `maint` on every HAProxy VM (best effort) and records it.
    Fail {
        /// `Failed` or `Unreachable`.
        status: HostStatus,
        /// Stored as the host's error.
        reason: String,
        /// Ops that leave the server in maint (empty without HAProxy).
        maint: Vec<HaproxyOp>,
    },
}

/// One transition's output: the step to persist first (if the host moves
/// to a new one), then the action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Act {
    /// Persist this step (and its rotation) before acting.
    pub record: Option<Step>,
    /// What to do.
    pub action: HostAction,
}

/// Where the machine is: which input it waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Not started.
    Start,
    /// The drain ops run.
    Draining,
    /// The wait for `scur` 0 runs.
    WaitingDrain,
    /// The playbook job runs.
    Deploying,
    /// The first weight and `ready` are set.
    Enabling,
    /// Waiting to set weight `next` of the ramp at time `at`.
    RampWait { next: usize, at: u64 },
    /// Weight `next` of the ramp is being set.
    RampSet { next: usize },
    /// Ended (a further input is a bug in the shell; it gets the end again).
    Ended(HostAction),
}

/// The run of one host.
#[derive(Debug, Clone)]
pub struct HostMachine {
    plan: HostPlan,
    /// Where the run starts (after [`Step::resume_from`]), or why it cannot.
    from: Result<Step, String>,
    phase: Phase,
}

impl HostMachine {
    /// A host run from `stored`, the step read from the store (`Ok(None)`
    /// for a host never started; a resumed host passes its row's step).
    pub fn new(plan: HostPlan, stored: Result<Option<Step>, ParseError>) -> HostMachine {
        let guarded = plan.guard.is_some();
        HostMachine {
            from: stored
                .map(|s| Step::resume_from(s, guarded))
                .map_err(|e| format!("cannot resume: {e}")),
            plan,
            phase: Phase::Start,
        }
    }

    /// The first action.
    pub fn start(&mut self) -> Act {
        if self.phase != Phase::Start {
            return self.unexpected();
        }
        match self.from.clone() {
            Err(why) => self.fail(HostStatus::Failed, why),
            Ok(Step::Draining | Step::WaitingDrain) => self.drain(),
            // Without HAProxy, or resumed before the playbook ended.
            Ok(Step::Deploying) => self.deploy(Some(Step::Deploying)),
            // Past the playbook: the job id's outcome comes from the
            // agent's journal; the host keeps its step (a second restart
            // must not drain it again).
            Ok(Step::Enabling | Step::Ramping) => self.deploy(None),
        }
    }

    /// The HAProxy ops of the last [`HostAction::Haproxy`] ran on every VM
    /// (`Err` names the VMs that failed and why).
    pub fn haproxy_done(&mut self, result: Result<(), String>, now: u64) -> Act {
        let Some(g) = self.plan.guard.clone() else {
            return self.unexpected();
        };
        match (self.phase.clone(), result) {
            (Phase::Draining, Ok(())) => {
                self.phase = Phase::WaitingDrain;
                act(
                    Some(Step::WaitingDrain),
                    HostAction::Haproxy {
                        label: "wait_drained".into(),
                        ops: vec![HaproxyOp::WaitDrained {
                            backend: g.backend.clone(),
                            server: g.server.clone(),
                            degradation_ms: g.degradation_ms,
                            poll_ms: self.plan.drain_poll_ms,
                        }],
                        fatal: true,
                    },
                )
            }
            (Phase::Draining, Err(e)) => self.fail(
                HostStatus::Failed,
                format!("could not take the server out of rotation: {e}"),
            ),
            (Phase::WaitingDrain, Ok(())) => self.deploy(Some(Step::Deploying)),
            (Phase::WaitingDrain, Err(e)) => self.fail(
                HostStatus::Failed,
                format!("waiting for the server to drain failed: {e}"),
            ),
            (Phase::Enabling, Ok(())) => {
                let a = self.ramp_from(1, now);
                Act {
                    record: Some(Step::Ramping),
                    action: a.action,
                }
            }
            (Phase::Enabling, Err(e)) => self.fail(
                HostStatus::Failed,
                format!("could not put the server back in rotation: {e}"),
            ),
            // In rotation already: a failed ramp step was reported by the
            // shell and does not fail the host.
            (Phase::RampSet { next }, _) => self.ramp_from(next + 1, now),
            _ => self.unexpected(),
        }
    }

    /// The playbook job ended.
    pub fn playbook_done(&mut self, result: PlaybookResult) -> Act {
        if self.phase != Phase::Deploying {
            return self.unexpected();
        }
        let limit = self.plan.job_timeout_secs;
        let why = match result {
            PlaybookResult::Ended {
                status: JobStatus::Succeeded,
                ..
            } => return self.enable(),
            PlaybookResult::Ended { status, error } => {
                error.unwrap_or_else(|| format!("playbook ended {}", status.as_str()))
            }
            PlaybookResult::Unreachable(e) => return self.fail(HostStatus::Unreachable, e),
            PlaybookResult::TimedOut { agent_silent: true } => {
                return self.fail(
                    HostStatus::Unreachable,
                    format!(
                        "agent {} stopped answering and the playbook did not finish within \
                         job_timeout_seconds ({limit}s); the agent's journal keeps its outcome",
                        self.plan.host
                    ),
                )
            }
            PlaybookResult::TimedOut {
                agent_silent: false,
            } => format!(
                "the playbook did not finish within job_timeout_seconds ({limit}s); it was cancelled"
            ),
        };
        self.fail(HostStatus::Failed, why)
    }

    /// The time asked for by [`HostAction::WaitUntil`] may have come.
    pub fn timer(&mut self, now: u64) -> Act {
        match self.phase {
            Phase::RampWait { next, at } if now >= at => self.set_weight(next),
            Phase::RampWait { at, .. } => act(None, HostAction::WaitUntil(at)),
            _ => self.unexpected(),
        }
    }

    fn drain(&mut self) -> Act {
        let g = self.plan.guard.clone().expect("a drain step is guarded");
        let state = if g.drain_mode == "maint" {
            State::Maint
        } else {
            State::Drain
        };
        self.phase = Phase::Draining;
        // Recorded as out of rotation before HAProxy is touched.
        act(
            Some(Step::Draining),
            HostAction::Haproxy {
                label: g.drain_mode.clone(),
                ops: vec![HaproxyOp::SetState {
                    backend: g.backend,
                    server: g.server,
                    state,
                }],
                fatal: true,
            },
        )
    }

    fn deploy(&mut self, record: Option<Step>) -> Act {
        self.phase = Phase::Deploying;
        act(record, HostAction::RunPlaybook)
    }

    fn enable(&mut self) -> Act {
        let Some(g) = self.plan.guard.clone() else {
            return self.end(HostAction::Succeed);
        };
        let first = weight(&g, 0);
        self.phase = Phase::Enabling;
        act(
            Some(Step::Enabling),
            HostAction::Haproxy {
                label: format!("ready at {first}%"),
                ops: vec![
                    HaproxyOp::SetWeight {
                        backend: g.backend.clone(),
                        server: g.server.clone(),
                        weight: Weight::Percent(first),
                    },
                    HaproxyOp::SetState {
                        backend: g.backend,
                        server: g.server,
                        state: State::Ready,
                    },
                ],
                fatal: true,
            },
        )
    }

    /// Weight `next` of the ramp after the pause, or done past the last.
    fn ramp_from(&mut self, next: usize, now: u64) -> Act {
        let g = self.plan.guard.as_ref().expect("ramping is guarded");
        if next >= g.weights.len() {
            return self.end(HostAction::Succeed);
        }
        let at = now.saturating_add(g.sleep_ms);
        self.phase = Phase::RampWait { next, at };
        act(None, HostAction::WaitUntil(at))
    }

    fn set_weight(&mut self, next: usize) -> Act {
        let g = self.plan.guard.clone().expect("ramping is guarded");
        let w = weight(&g, next);
        self.phase = Phase::RampSet { next };
        act(
            None,
            HostAction::Haproxy {
                label: format!("weight {w}%"),
                ops: vec![HaproxyOp::SetWeight {
                    backend: g.backend,
                    server: g.server,
                    weight: Weight::Percent(w),
                }],
                fatal: false,
            },
        )
    }

    fn fail(&mut self, status: HostStatus, reason: String) -> Act {
        let maint = match &self.plan.guard {
            Some(g) => vec![HaproxyOp::SetState {
                backend: g.backend.clone(),
                server: g.server.clone(),
                state: State::Maint,
            }],
            None => Vec::new(),
        };
        self.end(HostAction::Fail {
            status,
            reason,
            maint,
        })
    }

    fn end(&mut self, action: HostAction) -> Act {
        self.phase = Phase::Ended(action.clone());
        act(None, action)
    }

    /// An input the current phase does not wait for: a bug in the shell.
    /// Fails the host (never leaves it looking healthy) unless it already
    /// ended, in which case the end is repeated.
    fn unexpected(&mut self) -> Act {
        if let Phase::Ended(a) = &self.phase {
            return act(None, a.clone());
        }
        let why = format!("internal error: unexpected input in {:?}", self.phase);
        self.fail(HostStatus::Failed, why)
    }
}

fn act(record: Option<Step>, action: HostAction) -> Act {
    Act { record, action }
}

/// Ramp weight `i` as a percent (a request without weights goes to 100).
fn weight(g: &Guard, i: usize) -> u8 {
    g.weights.get(i).copied().unwrap_or(100).min(100) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An input fed to the machine.
    #[derive(Debug, Clone)]
    enum In {
        Start,
        Hp(Result<(), &'static str>),
        Book(PlaybookResult),
        Timer,
    }

    /// What the shell saw: the step persisted, then the action in short.
    type Seen = (Option<Step>, String);

    fn guard(weights: &[u32]) -> Guard {
        Guard {
            backend: "app".into(),
            server: "web1".into(),
            drain_mode: "drain".into(),
            degradation_ms: 5_000,
            weights: weights.to_vec(),
            sleep_ms: 1_000,
        }
    }

    fn plan(guard: Option<Guard>) -> HostPlan {
        HostPlan {
            host: "web1".into(),
            guard,
            job_timeout_secs: 60,
            drain_poll_ms: 100,
        }
    }

    fn short(a: &HostAction) -> String {
        match a {
            HostAction::Haproxy { label, fatal, .. } => {
                format!("hp {label}{}", if *fatal { "" } else { " (report)" })
            }
            HostAction::RunPlaybook => "playbook".into(),
            HostAction::WaitUntil(t) => format!("wait {t}"),
            HostAction::Succeed => "succeed".into(),
            HostAction::Fail {
                status,
                reason,
                maint,
            } => format!("{status} maint={}: {reason}", maint.len()),
        }
    }

    /// Feeds `inputs` (the clock advances 1,000 ms per timer, starting at
    /// 0) and compares every transition with `expected`.
    fn check(
        plan: HostPlan,
        stored: Result<Option<Step>, ParseError>,
        inputs: &[In],
        expected: &[(Option<Step>, &str)],
    ) {
        let mut m = HostMachine::new(plan, stored);
        let mut now = 0;
        let seen: Vec<Seen> = inputs
            .iter()
            .map(|i| {
                let a = match i.clone() {
                    In::Start => m.start(),
                    In::Hp(r) => m.haproxy_done(r.map_err(str::to_string), now),
                    In::Book(r) => m.playbook_done(r),
                    In::Timer => {
                        now += 1_000;
                        m.timer(now)
                    }
                };
                (a.record, short(&a.action))
            })
            .collect();
        let expected: Vec<Seen> = expected.iter().map(|(s, a)| (*s, a.to_string())).collect();
        assert_eq!(seen, expected);
    }

    fn ok_book() -> In {
        In::Book(PlaybookResult::Ended {
            status: JobStatus::Succeeded,
            error: None,
        })
    }

    const OK: In = In::Hp(Ok(()));
    use Step::*;

    #[test]
    fn a_guarded_host_drains_deploys_enables_and_ramps_three_weights() {
        check(
            plan(Some(guard(&[10, 50, 100]))),
            Ok(None),
            &[
                In::Start,
                OK,
                OK,
                ok_book(),
                OK,
                In::Timer,
                OK,
                In::Timer,
                OK,
            ],
            &[
                (Some(Draining), "hp drain"),
                (Some(WaitingDrain), "hp wait_drained"),
                (Some(Deploying), "playbook"),
                (Some(Enabling), "hp ready at 10%"),
                (Some(Ramping), "wait 1000"),
                (None, "hp weight 50% (report)"),
                (None, "wait 2000"),
                (None, "hp weight 100% (report)"),
                (None, "succeed"),
            ],
        );
    }

    /// A full run records exactly the chain `Step::first` / `Step::next`
    /// describes, with and without HAProxy.
    #[test]
    fn recorded_steps_follow_step_next() {
        for guarded in [true, false] {
            let mut m = HostMachine::new(plan(guarded.then(|| guard(&[10, 50, 100]))), Ok(None));
            let mut recorded = Vec::new();
            let mut a = m.start();
            for now in 1.. {
                recorded.extend(a.record);
                a = match a.action {
                    HostAction::Haproxy { .. } => m.haproxy_done(Ok(()), now * 1_000),
                    HostAction::RunPlaybook => m.playbook_done(PlaybookResult::Ended {
                        status: JobStatus::Succeeded,
                        error: None,
                    }),
                    HostAction::WaitUntil(t) => m.timer(t),
                    end => {
                        assert_eq!(end, HostAction::Succeed);
                        break;
                    }
                };
            }
            let chain: Vec<Step> =
                std::iter::successors(Some(Step::first(guarded)), |s| s.next(guarded)).collect();
            assert_eq!(recorded, chain, "guarded={guarded}");
        }
    }

    #[test]
    fn a_ramp_step_fails_without_failing_the_host() {
        check(
            plan(Some(guard(&[10, 100]))),
            Ok(None),
            &[
                In::Start,
                OK,
                OK,
                ok_book(),
                OK,
                In::Timer,
                In::Hp(Err("lb-2: refused")),
            ],
            &[
                (Some(Draining), "hp drain"),
                (Some(WaitingDrain), "hp wait_drained"),
                (Some(Deploying), "playbook"),
                (Some(Enabling), "hp ready at 10%"),
                (Some(Ramping), "wait 1000"),
                (None, "hp weight 100% (report)"),
                (None, "succeed"),
            ],
        );
    }

    #[test]
    fn one_weight_needs_no_ramp() {
        check(
            plan(Some(guard(&[100]))),
            Ok(None),
            &[In::Start, OK, OK, ok_book(), OK],
            &[
                (Some(Draining), "hp drain"),
                (Some(WaitingDrain), "hp wait_drained"),
                (Some(Deploying), "playbook"),
                (Some(Enabling), "hp ready at 100%"),
                (Some(Ramping), "succeed"),
            ],
        );
    }

    #[test]
    fn a_timer_before_its_time_waits_again() {
        let mut g = guard(&[10, 100]);
        g.sleep_ms = 1_500;
        // The 1st timer comes at 1,000 < 1,500; the 2nd at 2,000.
        check(
            plan(Some(g)),
            Ok(Some(Enabling)),
            &[In::Start, ok_book(), OK, In::Timer, In::Timer, OK],
            &[
                (None, "playbook"),
                (Some(Enabling), "hp ready at 10%"),
                (Some(Ramping), "wait 1500"),
                (None, "wait 1500"),
                (None, "hp weight 100% (report)"),
                (None, "succeed"),
            ],
        );
    }

    #[test]
    fn maint_mode_drains_with_maint() {
        let mut g = guard(&[100]);
        g.drain_mode = "maint".into();
        let mut m = HostMachine::new(plan(Some(g)), Ok(None));
        let a = m.start();
        let HostAction::Haproxy { label, ops, .. } = a.action else {
            panic!("{a:?}")
        };
        assert_eq!(label, "maint");
        assert!(matches!(
            ops[..],
            [HaproxyOp::SetState {
                state: State::Maint,
                ..
            }]
        ));
    }

    #[test]
    fn without_haproxy_only_the_playbook_runs() {
        check(
            plan(None),
            Ok(None),
            &[In::Start, ok_book()],
            &[(Some(Deploying), "playbook"), (None, "succeed")],
        );
        check(
            plan(None),
            Ok(None),
            &[
                In::Start,
                In::Book(PlaybookResult::Unreachable("gone".into())),
            ],
            &[
                (Some(Deploying), "playbook"),
                (None, "unreachable maint=0: gone"),
            ],
        );
    }

    #[test]
    fn every_stored_step_resumes_where_resume_from_says() {
        for (stored, guarded, first) in [
            (None, true, (Some(Draining), "hp drain")),
            (Some(Draining), true, (Some(Draining), "hp drain")),
            (Some(WaitingDrain), true, (Some(Draining), "hp drain")),
            (Some(Deploying), true, (Some(Draining), "hp drain")),
            // Past the playbook: its step is kept, the journal replays it.
            (Some(Enabling), true, (None, "playbook")),
            (Some(Ramping), true, (None, "playbook")),
            (None, false, (Some(Deploying), "playbook")),
            (Some(Deploying), false, (Some(Deploying), "playbook")),
            // (Steps a run without HAProxy never stores: deploy again.)
            (Some(Enabling), false, (Some(Deploying), "playbook")),
            (Some(Ramping), false, (Some(Deploying), "playbook")),
        ] {
            let g = guarded.then(|| guard(&[10, 100]));
            let mut m = HostMachine::new(plan(g), Ok(stored));
            let a = m.start();
            assert_eq!(
                (a.record, short(&a.action)),
                (first.0, first.1.to_string()),
                "{stored:?} guarded={guarded}"
            );
        }
    }

    #[test]
    fn a_host_resumed_past_its_playbook_enables_without_draining() {
        check(
            plan(Some(guard(&[10, 100]))),
            Ok(Some(Ramping)),
            &[In::Start, ok_book(), OK, In::Timer, OK],
            &[
                (None, "playbook"),
                (Some(Enabling), "hp ready at 10%"),
                (Some(Ramping), "wait 1000"),
                (None, "hp weight 100% (report)"),
                (None, "succeed"),
            ],
        );
    }

    #[test]
    fn unreadable_stored_step_fails_and_leaves_the_server_in_maint() {
        let e = "bogus".parse::<Step>().unwrap_err();
        check(
            plan(Some(guard(&[100]))),
            Err(e),
            &[In::Start],
            &[(
                None,
                "failed maint=1: cannot resume: unknown host step \"bogus\" in the store \
                 (expected one of: draining waiting_drain deploying enabling ramping )",
            )],
        );
    }

    #[test]
    fn drain_failure_fails_the_host_before_the_playbook() {
        check(
            plan(Some(guard(&[100]))),
            Ok(None),
            &[In::Start, In::Hp(Err("lb-1: No such server."))],
            &[
                (Some(Draining), "hp drain"),
                (
                    None,
                    "failed maint=1: could not take the server out of rotation: lb-1: No such server.",
                ),
            ],
        );
    }

    #[test]
    fn drain_wait_failure_fails_the_host() {
        check(
            plan(Some(guard(&[100]))),
            Ok(None),
            &[In::Start, OK, In::Hp(Err("lb-1: timed out"))],
            &[
                (Some(Draining), "hp drain"),
                (Some(WaitingDrain), "hp wait_drained"),
                (
                    None,
                    "failed maint=1: waiting for the server to drain failed: lb-1: timed out",
                ),
            ],
        );
    }

    #[test]
    fn playbook_failures_unreachable_and_timeouts() {
        for (result, end) in [
            (
                PlaybookResult::Ended {
                    status: JobStatus::Failed,
                    error: Some("task 3 failed".into()),
                },
                "failed maint=1: task 3 failed",
            ),
            (
                PlaybookResult::Ended {
                    status: JobStatus::Interrupted,
                    error: None,
                },
                "failed maint=1: playbook ended interrupted",
            ),
            (
                PlaybookResult::Unreachable("agent web1 is not connected".into()),
                "unreachable maint=1: agent web1 is not connected",
            ),
            (
                PlaybookResult::TimedOut {
                    agent_silent: false,
                },
                "failed maint=1: the playbook did not finish within job_timeout_seconds (60s); \
                 it was cancelled",
            ),
            (
                PlaybookResult::TimedOut { agent_silent: true },
                "unreachable maint=1: agent web1 stopped answering and the playbook did not \
                 finish within job_timeout_seconds (60s); the agent's journal keeps its outcome",
            ),
        ] {
            check(
                plan(Some(guard(&[100]))),
                Ok(None),
                &[In::Start, OK, OK, In::Book(result)],
                &[
                    (Some(Draining), "hp drain"),
                    (Some(WaitingDrain), "hp wait_drained"),
                    (Some(Deploying), "playbook"),
                    (None, end),
                ],
            );
        }
    }

    #[test]
    fn enable_failure_fails_the_host_in_maint() {
        check(
            plan(Some(guard(&[10, 100]))),
            Ok(None),
            &[In::Start, OK, OK, ok_book(), In::Hp(Err("lb-1: refused"))],
            &[
                (Some(Draining), "hp drain"),
                (Some(WaitingDrain), "hp wait_drained"),
                (Some(Deploying), "playbook"),
                (Some(Enabling), "hp ready at 10%"),
                (
                    None,
                    "failed maint=1: could not put the server back in rotation: lb-1: refused",
                ),
            ],
        );
    }

    #[test]
    fn an_input_out_of_turn_fails_closed_and_an_end_stays_an_end() {
        // A playbook result while draining: the shell is wrong; the host
        // fails with its server in maint rather than look healthy.
        let mut m = HostMachine::new(plan(Some(guard(&[100]))), Ok(None));
        m.start();
        let a = m.playbook_done(PlaybookResult::Ended {
            status: JobStatus::Succeeded,
            error: None,
        });
        assert!(
            short(&a.action).starts_with("failed maint=1: internal error"),
            "{a:?}"
        );
        assert_eq!(m.timer(0), a);
        // HAProxy input without HAProxy.
        let mut m = HostMachine::new(plan(None), Ok(None));
        m.start();
        assert!(short(&m.haproxy_done(Ok(()), 0).action).contains("internal error"));
    }

    #[test]
    fn drain_ops_carry_the_degradation_time_and_poll() {
        let mut m = HostMachine::new(plan(Some(guard(&[100]))), Ok(None));
        m.start();
        let a = m.haproxy_done(Ok(()), 0);
        assert_eq!(
            a.action,
            HostAction::Haproxy {
                label: "wait_drained".into(),
                ops: vec![HaproxyOp::WaitDrained {
                    backend: "app".into(),
                    server: "web1".into(),
                    degradation_ms: 5_000,
                    poll_ms: 100,
                }],
                fatal: true,
            }
        );
    }
}
