//! Jobs: each runs on its own bidirectional stream opened by the controller.
//! The controller writes one [`JobRequest`] and finishes its send side; the
//! agent answers with a stream of [`JobEvent`]s ending with
//! [`JobEvent::Finished`].

use crate::haproxy::{HaproxyOp, HaproxyReply};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRequest {
    /// Unique id; the agent's journal never runs the same id twice.
    pub job_id: String,
    /// The deployment this job belongs to, if any (for logs).
    pub deployment_id: Option<String>,
    /// The work itself.
    pub kind: JobKind,
}

/// The changeset a playbook installs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changeset {
    /// Version label, e.g. `2.4.1`.
    pub version: String,
    /// Where to download the artifact.
    pub url: String,
    /// Expected SHA-256 of the artifact, hex.
    pub sha256: String,
    /// A playbook carried in the artifact (a safe relative path inside it,
    /// like CodeDeploy's appspec): the agent verifies the artifact's
    /// checksum, extracts it into a private temporary directory and runs
    /// this file instead of one from its playbook directory.
    #[serde(default)]
    pub playbook: Option<String>,
}

/// A playbook run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlaybookJob {
    /// Name of a playbook shipped with the agent (`deploy.yml`, …).
    pub playbook: String,
    /// Extra variables.
    pub vars: BTreeMap<String, String>,
    /// The changeset, for playbooks that install one.
    pub changeset: Option<Changeset>,
}

/// The kinds of job an agent runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum JobKind {
    /// Run a playbook.
    Playbook(PlaybookJob),
    /// Run HAProxy runtime API operations in order, stopping at the first
    /// failure; the outcome carries one reply per operation that ran, as
    /// [`JobOutput::Haproxy`]. (Version 3: one op type for both sides.)
    Haproxy(Vec<HaproxyOp>),
    /// Report the journal's record of an earlier job (by `job_id` of the
    /// request) without running anything.
    Outcome,
    /// Cancel the running job with this request's `job_id`.
    Cancel,
    /// Follow the job with this request's `job_id`: while it runs, its live
    /// events from now on, ending with [`JobEvent::Finished`]; once it has
    /// ended (or when the journal has no such job), only the journal's
    /// `Finished` record. Runs nothing. Added in protocol version 2.
    Attach,
}

/// Which output stream a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
    /// A message of the runner itself.
    Runner,
}

/// Outcome of one task, like Ansible's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskStatus {
    /// Ran, changed nothing.
    Ok,
    /// Ran and changed something.
    Changed,
    /// Failed.
    Failed,
    /// Skipped by `when`.
    Skipped,
}

/// Result of one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    /// Position in the playbook.
    pub index: u32,
    /// Task name.
    pub name: String,
    /// Module used.
    pub module: String,
    /// Outcome.
    pub status: TaskStatus,
    /// Wall time, ms.
    pub duration_ms: u64,
    /// Exit code, for process modules.
    pub rc: Option<i32>,
    /// One-line summary or error.
    pub msg: String,
    /// Last lines of stdout.
    pub stdout_tail: String,
    /// Last lines of stderr.
    pub stderr_tail: String,
}

/// Per-run counters, like Ansible's recap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Stats {
    /// Tasks ok.
    pub ok: u32,
    /// Tasks changed.
    pub changed: u32,
    /// Tasks failed.
    pub failed: u32,
    /// Tasks skipped.
    pub skipped: u32,
}

/// Final state of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobStatus {
    /// Everything passed.
    Succeeded,
    /// A task failed (or the job could not start).
    Failed,
    /// Cancelled on request.
    Cancelled,
    /// The agent stopped while the job ran; it is never retried by itself.
    Interrupted,
    /// Still running (answer to an outcome query).
    Running,
    /// The journal has no such job.
    Unknown,
}

impl JobStatus {
    /// Lowercase name, as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
            JobStatus::Interrupted => "interrupted",
            JobStatus::Running => "running",
            JobStatus::Unknown => "unknown",
        }
    }
}

/// Final record of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobOutcome {
    /// The job.
    pub job_id: String,
    /// How it ended.
    pub status: JobStatus,
    /// Task counters.
    pub stats: Stats,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// The job's typed result, for jobs that have one.
    pub output: Option<JobOutput>,
}

/// The typed result of a job (protocol version 3; before it was JSON text).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum JobOutput {
    /// One reply per [`HaproxyOp`] that ran, in order: all of them when the
    /// job succeeded, those before the failing one when it failed.
    Haproxy(Vec<HaproxyReply>),
}

/// Agent → controller on a job stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum JobEvent {
    /// The job was accepted; `replay` is true when the journal answered with
    /// an earlier run's record instead of running it again.
    Started {
        /// The job.
        job_id: String,
        /// Answered from the journal.
        replay: bool,
    },
    /// A task began.
    TaskStarted {
        /// Position.
        index: u32,
        /// Name.
        name: String,
    },
    /// One line of output, as it happens.
    Log {
        /// Task position.
        index: u32,
        /// Which stream.
        stream: LogStream,
        /// The line, without its newline (long lines are cut).
        line: String,
    },
    /// A task ended.
    TaskResult(TaskResult),
    /// The job ended; last event on the stream.
    Finished(JobOutcome),
}

/// Longest log line carried in one event; longer lines are cut with a marker.
pub const MAX_LOG_LINE: usize = 16 * 1024;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{decode, encode};

    #[test]
    fn job_messages_round_trip() {
        let req = JobRequest {
            job_id: "j-1".into(),
            deployment_id: Some("d-1".into()),
            kind: JobKind::Playbook(PlaybookJob {
                playbook: "deploy.yml".into(),
                vars: [("k".to_string(), "v".to_string())].into(),
                changeset: Some(Changeset {
                    version: "2".into(),
                    url: "http://x/a.tgz".into(),
                    sha256: "00".into(),
                    playbook: None,
                }),
            }),
        };
        assert_eq!(decode::<JobRequest>(&encode(&req).unwrap()).unwrap(), req);
        let events = vec![
            JobEvent::Started {
                job_id: "j".into(),
                replay: false,
            },
            JobEvent::Log {
                index: 0,
                stream: LogStream::Stderr,
                line: "boom".into(),
            },
            JobEvent::Finished(JobOutcome {
                job_id: "j".into(),
                status: JobStatus::Interrupted,
                stats: Stats::default(),
                error: None,
                output: Some(JobOutput::Haproxy(vec![HaproxyReply::Done])),
            }),
        ];
        for e in events {
            assert_eq!(decode::<JobEvent>(&encode(&e).unwrap()).unwrap(), e);
        }
    }
}

/// Whether `s` can be one component of a path on a VM (a changeset version
/// becomes `releases/<version>`): 1-128 of letters, digits, `-`, `_`, `.`,
/// `+`, not starting with `.` (so never `.`, `..` or hidden). Controller and
/// agent both check it: the agent trusts no request.
pub fn is_one_path_component(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'+'))
}

/// Whether `p` is a safe relative path inside an archive: 1-256 bytes of
/// `/`-separated [`is_one_path_component`]s (so no `..`, no hidden parts,
/// not absolute), naming a `.yml`/`.yaml` file. Used for a changeset's
/// `playbook`, checked by the controller and again by the agent.
pub fn is_playbook_path(p: &str) -> bool {
    p.len() <= 256
        && (p.ends_with(".yml") || p.ends_with(".yaml"))
        && p.split('/').all(is_one_path_component)
}

/// Whether a request value could climb out of the directory a playbook
/// joins it into: a `..` component (between `/` or `\`), or a NUL byte.
/// Variables may hold paths (`base_dir=/srv/app`), never `..`.
pub fn climbs_out(s: &str) -> bool {
    s.contains('\0') || s.split(['/', '\\']).any(|c| c == "..")
}

#[cfg(test)]
mod path_tests {
    use super::*;

    #[test]
    fn path_components_and_climbing_values() {
        for (s, one, climbs) in [
            ("2.4.1+b7", true, false),
            ("v1_rc-2", true, false),
            ("..", false, true),
            (".", false, false),
            (".hidden", false, false),
            ("a/b", false, false),
            ("", false, false),
            ("/srv/app", false, false),
            ("/srv/../etc", false, true),
            ("x\\..\\y", false, true),
            ("a\0b", false, true),
            ("a..b", true, false),
        ] {
            assert_eq!(is_one_path_component(s), one, "{s:?}");
            assert_eq!(climbs_out(s), climbs, "{s:?}");
        }
    }
}
