//! The HAProxy runtime API contract between controller and agent: what
//! the controller asks an HAProxy VM's agent to do ([`HaproxyOp`], carried
//! in [`crate::job::JobKind::Haproxy`]) and the typed answers
//! ([`HaproxyReply`], carried in [`crate::job::JobOutput::Haproxy`]).
//!
//! One request type, one reply type, shared by both sides: the controller
//! never parses text or JSON to learn a server's state. The agent turns an
//! op into a runtime API command (validating every name first) and parses
//! HAProxy's reply into these types.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Administrative state to put a server in (`set server B/S state …`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// In rotation.
    Ready,
    /// No new sessions; running ones finish.
    Drain,
    /// Out of rotation, health checks stopped.
    Maint,
}

impl State {
    /// The word HAProxy's runtime API uses for this state.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Ready => "ready",
            State::Drain => "drain",
            State::Maint => "maint",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A weight to set (`set weight B/S …`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Weight {
    /// Percent of the server's initial (configured) weight, 0–100.
    Percent(u8),
    /// Absolute weight, 0–256.
    Absolute(u16),
}

impl Weight {
    /// The runtime API argument (`50%`, `256`), or `None` when HAProxy
    /// would refuse it (percent above 100, absolute above 256).
    pub fn to_arg(self) -> Option<String> {
        match self {
            Weight::Percent(p) if p <= 100 => Some(format!("{p}%")),
            Weight::Absolute(w) if w <= 256 => Some(w.to_string()),
            _ => None,
        }
    }

    /// As written in messages (`50%`, `300`), valid or not.
    pub fn label(self) -> String {
        match self {
            Weight::Percent(p) => format!("{p}%"),
            Weight::Absolute(w) => w.to_string(),
        }
    }
}

/// Reply of `get weight B/S`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct WeightReading {
    /// Current (user-set) weight.
    pub current: u32,
    /// Weight from the configuration.
    pub initial: u32,
}

/// Operational state (`srv_op_state` of `show servers state`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OpState {
    /// 0: down (failed checks, or in maintenance).
    Stopped,
    /// 1: coming up (slowstart).
    Starting,
    /// 2: up.
    Running,
    /// 3: going down (e.g. failing checks while draining).
    Stopping,
    /// Any other value this client does not know.
    Unknown(u32),
}

impl OpState {
    /// The state for a `srv_op_state` code.
    pub fn from_code(code: u32) -> OpState {
        match code {
            0 => OpState::Stopped,
            1 => OpState::Starting,
            2 => OpState::Running,
            3 => OpState::Stopping,
            other => OpState::Unknown(other),
        }
    }
}

/// Administrative flags (`srv_admin_state` of `show servers state`), a bit set.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdminState(pub u32);

impl AdminState {
    /// Any maintenance flag: forced (`0x01`), inherited (`0x02`) or
    /// resolution failure (`0x20`). Configured `disabled` is `0x04`.
    pub fn is_maint(self) -> bool {
        self.0 & (0x01 | 0x02 | 0x04 | 0x20) != 0
    }
    /// Any drain flag: forced (`0x08`) or inherited (`0x10`).
    pub fn is_drain(self) -> bool {
        self.0 & (0x08 | 0x10) != 0
    }
    /// No administrative flag that takes the server out of rotation.
    pub fn is_ready(self) -> bool {
        !self.is_maint() && !self.is_drain()
    }
}

/// One server row of `show servers state BACKEND`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ServerState {
    /// Backend name (`be_name`).
    pub backend: String,
    /// Server name (`srv_name`).
    pub name: String,
    /// Address (`srv_addr`).
    pub addr: String,
    /// Port (`srv_port`), when HAProxy reports one.
    pub port: Option<u16>,
    /// Operational state (`srv_op_state`).
    pub op_state: OpState,
    /// Administrative flags (`srv_admin_state`).
    pub admin_state: AdminState,
    /// Current weight (`srv_uweight`).
    pub weight: u32,
    /// Configured weight (`srv_iweight`).
    pub initial_weight: u32,
}

impl ServerState {
    /// Whether new requests can go to this server: up, no maint or drain
    /// flag, and a weight above 0.
    pub fn in_rotation(&self) -> bool {
        self.op_state == OpState::Running && self.admin_state.is_ready() && self.weight > 0
    }
}

/// One server row of `show stat BACKEND 4 -1`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ServerStat {
    /// Backend name (`pxname`).
    pub backend: String,
    /// Server name (`svname`).
    pub name: String,
    /// Current sessions (`scur`): what a drain waits to reach 0.
    pub scur: u64,
    /// Requests queued for this server (`qcur`).
    pub qcur: u64,
    /// Status as HAProxy prints it: `UP`, `DOWN`, `DRAIN`, `MAINT`, `UP 1/3`, `no check`…
    pub status: String,
    /// Effective weight (`weight`).
    pub weight: u32,
}

/// How [`RuntimeApi::wait_drained`] ended.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrainOutcome {
    /// `scur` reached 0.
    Drained {
        /// Time from the start of the wait until `scur` was seen at 0.
        after_ms: u64,
    },
    /// The degradation time passed with sessions still open.
    TimedOut {
        /// Time waited.
        after_ms: u64,
        /// `scur` at the last poll.
        last_scur: u64,
    },
}

impl DrainOutcome {
    /// Whether the server reached 0 sessions.
    pub fn is_drained(&self) -> bool {
        matches!(self, DrainOutcome::Drained { .. })
    }
    /// How long the wait took.
    pub fn waited(&self) -> Duration {
        match *self {
            DrainOutcome::Drained { after_ms } | DrainOutcome::TimedOut { after_ms, .. } => {
                Duration::from_millis(after_ms)
            }
        }
    }
    /// Sessions still open at the end (0 when drained).
    pub fn last_scur(&self) -> u64 {
        match *self {
            DrainOutcome::Drained { .. } => 0,
            DrainOutcome::TimedOut { last_scur, .. } => last_scur,
        }
    }
}

/// An operation on one HAProxy, as the controller asks the agent to run it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum HaproxyOp {
    /// `set server BACKEND/SERVER state STATE`.
    SetState {
        /// Backend name.
        backend: String,
        /// Server name.
        server: String,
        /// State to set.
        state: State,
    },
    /// `set weight BACKEND/SERVER WEIGHT`.
    SetWeight {
        /// Backend name.
        backend: String,
        /// Server name.
        server: String,
        /// Weight to set.
        weight: Weight,
    },
    /// `get weight BACKEND/SERVER`.
    GetWeight {
        /// Backend name.
        backend: String,
        /// Server name.
        server: String,
    },
    /// `show servers state BACKEND`.
    ServersState {
        /// Backend name.
        backend: String,
    },
    /// `show stat BACKEND 4 -1`.
    Stat {
        /// Backend name.
        backend: String,
    },
    /// Poll `scur` of the server until 0 or `degradation_ms` passes.
    WaitDrained {
        /// Backend name.
        backend: String,
        /// Server name.
        server: String,
        /// Longest wait, in milliseconds.
        degradation_ms: u64,
        /// Poll interval, in milliseconds (at least 10).
        poll_ms: u64,
    },
}

/// Result of a [`HaproxyOp`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum HaproxyReply {
    /// A `set` command succeeded (HAProxy answered with an empty line).
    Done,
    /// Reply to [`HaproxyOp::GetWeight`].
    Weight(WeightReading),
    /// Reply to [`HaproxyOp::ServersState`].
    ServersState(Vec<ServerState>),
    /// Reply to [`HaproxyOp::Stat`].
    Stat(Vec<ServerStat>),
    /// Reply to [`HaproxyOp::WaitDrained`].
    Drain(DrainOutcome),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{decode, encode};
    use crate::job::{JobKind, JobOutput};

    /// Every op and reply survives the wire codec (bincode), including the
    /// variants with data (`OpState::Unknown`, `Weight::Absolute`).
    #[test]
    fn ops_and_replies_round_trip_the_codec() {
        let ops = vec![
            HaproxyOp::SetState {
                backend: "app".into(),
                server: "web1".into(),
                state: State::Drain,
            },
            HaproxyOp::SetWeight {
                backend: "app".into(),
                server: "web1".into(),
                weight: Weight::Absolute(256),
            },
            HaproxyOp::GetWeight {
                backend: "app".into(),
                server: "web1".into(),
            },
            HaproxyOp::ServersState {
                backend: "app".into(),
            },
            HaproxyOp::Stat {
                backend: "app".into(),
            },
            HaproxyOp::WaitDrained {
                backend: "app".into(),
                server: "web1".into(),
                degradation_ms: 30_000,
                poll_ms: 100,
            },
        ];
        let kind = JobKind::Haproxy(ops);
        assert_eq!(decode::<JobKind>(&encode(&kind).unwrap()).unwrap(), kind);
        let out = JobOutput::Haproxy(vec![
            HaproxyReply::Done,
            HaproxyReply::Weight(WeightReading {
                current: 50,
                initial: 100,
            }),
            HaproxyReply::ServersState(vec![ServerState {
                backend: "app".into(),
                name: "web1".into(),
                addr: "127.0.0.1".into(),
                port: None,
                op_state: OpState::Unknown(9),
                admin_state: AdminState(8),
                weight: 0,
                initial_weight: 100,
            }]),
            HaproxyReply::Stat(vec![ServerStat {
                backend: "app".into(),
                name: "web1".into(),
                scur: 1,
                qcur: 0,
                status: "DRAIN".into(),
                weight: 0,
            }]),
            HaproxyReply::Drain(DrainOutcome::TimedOut {
                after_ms: 5,
                last_scur: 2,
            }),
        ]);
        assert_eq!(decode::<JobOutput>(&encode(&out).unwrap()).unwrap(), out);
    }

    #[test]
    fn weights_outside_what_haproxy_takes_have_no_argument() {
        for (w, arg) in [
            (Weight::Percent(0), Some("0%")),
            (Weight::Percent(100), Some("100%")),
            (Weight::Percent(101), None),
            (Weight::Absolute(256), Some("256")),
            (Weight::Absolute(257), None),
        ] {
            assert_eq!(w.to_arg().as_deref(), arg, "{w:?}");
        }
        assert_eq!(Weight::Absolute(300).label(), "300");
    }

    #[test]
    fn admin_flags_read_as_maint_drain_or_ready() {
        for (bits, maint, drain) in [
            (0, false, false),
            (1, true, false),
            (8, false, true),
            (0x10, false, true),
            (0x20, true, false),
        ] {
            let a = AdminState(bits);
            assert_eq!(
                (a.is_maint(), a.is_drain(), a.is_ready()),
                (maint, drain, !maint && !drain),
                "{bits:#x}"
            );
        }
    }
}
