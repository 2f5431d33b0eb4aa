//! Playbook runner: Ansible-flavoured YAML playbooks run on this machine.
//!
//! Layout:
//! - [`playbook`]: parsing, typing and checking (templates, names, types),
//!   with `file:line:column` in every error — all before the first task runs.
//! - `modules`: the task modules (`command`, `shell`, `get_url`, `unarchive`,
//!   `copy`, `template`, `file`, `systemd`, `wait_for`, `http_check`, `pause`).
//! - `exec`: the task loop: `when`, retries, timeouts, cancel, register,
//!   `changed_when`/`failed_when`, events and stats.
//! - [`cli`]: `vesemir-agent playbook check|run`.
//!
//! Architecture invariants:
//! - Events are the wire types of `vesemir-protocol` ([`JobEvent`]); the
//!   runner awaits each send, so a slow consumer slows the job down rather
//!   than growing a buffer. A consumer that goes away does not stop the job.
//! - A process started by a task lives in its own process group and never
//!   outlives the task's timeout or a cancel.
//! - [`run_job`] consults and updates the [`Journal`](crate::journal::Journal):
//!   a job id runs at most once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use vesemir_protocol::job::{Changeset, JobEvent, JobOutcome, JobStatus, PlaybookJob, Stats};

use crate::journal::{Claim, Journal};

mod ansible_jinja;
pub mod cli;
mod exec;
pub(crate) mod modules;
pub mod playbook;

pub use playbook::Location;

/// How the runner runs playbooks on this host.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Where named playbooks (`deploy.yml`, …) live, for [`run_job`].
    pub playbook_dir: PathBuf,
    /// The `systemctl` the `systemd` module calls (a stand-in in tests).
    pub systemctl: PathBuf,
    /// Host facts, exposed to templates as `facts`.
    pub facts: serde_json::Value,
    /// Timeout of a task that sets none.
    pub default_task_timeout: Duration,
    /// Between SIGTERM and SIGKILL when a task's process group is stopped.
    pub kill_grace: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            playbook_dir: PathBuf::from("/usr/share/vesemir/playbooks"),
            systemctl: PathBuf::from("systemctl"),
            facts: serde_json::Value::Object(Default::default()),
            default_task_timeout: Duration::from_secs(3600),
            kill_grace: Duration::from_secs(5),
        }
    }
}

/// Why a playbook cannot run.
#[derive(Debug, thiserror::Error)]
pub enum PlaybookError {
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The playbook file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The playbook is invalid; `location` is `file:line:column`.
    #[error("{location}: {message}")]
    Invalid {
        /// Where.
        location: Location,
        /// What is wrong, in words a user can act on.
        message: String,
    },
    /// A request value would become an unsafe path: a changeset version that
    /// is not one path component, or a variable with a `..` component.
    #[error("refused: {0} (the controller checks this too; a request that gets here did not come through it)")]
    UnsafeValue(String),
    /// A job named a playbook outside the playbook directory.
    #[error("invalid playbook name `{0}`: give the file name of a playbook in the playbook directory (no `/`, no `..`)")]
    BadName(String),
}

/// Parses, types and template-checks the playbook at `path` for this request
/// (vars, changeset and facts as the run would see them), without running
/// anything. Errors carry `file:line:column`.
pub fn check_playbook(
    path: &Path,
    vars: &BTreeMap<String, String>,
    changeset: Option<&Changeset>,
    cfg: &RunnerConfig,
) -> Result<(), PlaybookError> {
    let pb = playbook::load(path)?;
    playbook::check(&pb, vars, changeset, &cfg.facts, playbook::CheckMode::Run)
}

/// Like [`check_playbook`] for the playbook alone: variables listed under
/// `requires:` and the changeset are assumed to be given (placeholders).
/// This is `vesemir-agent playbook check`.
pub fn lint_playbook(
    path: &Path,
    vars: &BTreeMap<String, String>,
    cfg: &RunnerConfig,
) -> Result<(), PlaybookError> {
    let pb = playbook::load(path)?;
    playbook::check(&pb, vars, None, &cfg.facts, playbook::CheckMode::Lint)
}

/// Resolves a playbook name from a job inside `cfg.playbook_dir`.
pub fn resolve_playbook(cfg: &RunnerConfig, name: &str) -> Result<PathBuf, PlaybookError> {
    let bad = name.is_empty()
        || name.contains('/')
        || name.contains('\\')
        || name.contains('\0')
        || name.contains("..")
        || name.starts_with('.');
    if bad {
        return Err(PlaybookError::BadName(name.to_string()));
    }
    Ok(cfg.playbook_dir.join(name))
}

/// Runs the playbook file at `path` (no journal). Sends `Started`, then per
/// task `TaskStarted`, `Log` lines as they happen and `TaskResult`, and last
/// `Finished` with the returned outcome. Cancelling `cancel` stops the
/// running task (killing its process group) and ends the job `Cancelled`.
pub async fn run_playbook_file(
    cfg: &RunnerConfig,
    path: &Path,
    job_id: &str,
    job: &PlaybookJob,
    events: mpsc::Sender<JobEvent>,
    cancel: CancellationToken,
) -> JobOutcome {
    let _ = events
        .send(JobEvent::Started {
            job_id: job_id.to_string(),
            replay: false,
        })
        .await;
    let outcome = exec::run(cfg, path, job_id, job, &events, &cancel).await;
    let _ = events.send(JobEvent::Finished(outcome.clone())).await;
    outcome
}

fn failed_outcome(job_id: &str, error: String) -> JobOutcome {
    JobOutcome {
        job_id: job_id.to_string(),
        status: JobStatus::Failed,
        stats: Stats::default(),
        error: Some(error),
        output: None,
    }
}

async fn replay(events: &mpsc::Sender<JobEvent>, job_id: &str, outcome: JobOutcome) -> JobOutcome {
    let _ = events
        .send(JobEvent::Started {
            job_id: job_id.to_string(),
            replay: true,
        })
        .await;
    let _ = events.send(JobEvent::Finished(outcome.clone())).await;
    outcome
}

/// Runs a job through the journal: a job id already known is answered from
/// its record (`Started { replay: true }`, then `Finished` with the recorded
/// outcome, or status `Running` / `Interrupted`) and nothing runs. Otherwise
/// the request is recorded durably, the named playbook from
/// `cfg.playbook_dir` runs as in [`run_playbook_file`], and the outcome is
/// recorded. If the journal cannot record the request, nothing runs.
pub async fn run_job(
    cfg: &RunnerConfig,
    journal: &Journal,
    job_id: &str,
    job: &PlaybookJob,
    events: mpsc::Sender<JobEvent>,
    cancel: CancellationToken,
) -> JobOutcome {
    if let Some(rec) = journal.get(job_id) {
        return replay(&events, job_id, rec.reported_outcome()).await;
    }
    let carried = job.changeset.as_ref().and_then(|c| c.playbook.as_ref());
    let path = match carried.map_or_else(
        || resolve_playbook(cfg, &job.playbook),
        |p| {
            if vesemir_protocol::job::is_playbook_path(p) {
                Ok(PathBuf::new())
            } else {
                Err(PlaybookError::BadName(p.clone()))
            }
        },
    ) {
        Ok(p) => p,
        Err(e) => {
            let _ = events
                .send(JobEvent::Started {
                    job_id: job_id.to_string(),
                    replay: false,
                })
                .await;
            let o = failed_outcome(job_id, e.to_string());
            let _ = events.send(JobEvent::Finished(o.clone())).await;
            return o;
        }
    };
    match journal.claim(job_id, job) {
        Ok(Claim::Existing(rec)) => return replay(&events, job_id, rec.reported_outcome()).await,
        Ok(Claim::New) => {}
        Err(e) => {
            let _ = events
                .send(JobEvent::Started {
                    job_id: job_id.to_string(),
                    replay: false,
                })
                .await;
            let o = failed_outcome(job_id, format!("not run: {e}"));
            let _ = events.send(JobEvent::Finished(o.clone())).await;
            return o;
        }
    }
    // A changeset-carried playbook: verify the artifact, extract it into a
    // private temporary directory (removed when the job ends), run it there.
    let mut _unpacked = None;
    let path = match job.changeset.as_ref().filter(|c| c.playbook.is_some()) {
        None => path,
        Some(cs) => match changeset_playbook(cs).await {
            Ok((dir, p)) => {
                _unpacked = Some(dir);
                p
            }
            Err(e) => {
                let _ = events
                    .send(JobEvent::Started {
                        job_id: job_id.to_string(),
                        replay: false,
                    })
                    .await;
                let o = failed_outcome(job_id, e.to_string());
                let _ = events.send(JobEvent::Finished(o.clone())).await;
                if let Err(e) = journal.finish(&o) {
                    tracing::error!(job_id, error = %e, "could not record the job's outcome");
                }
                return o;
            }
        },
    };
    let outcome = run_playbook_file(cfg, &path, job_id, job, events, cancel).await;
    if let Err(e) = journal.finish(&outcome) {
        tracing::error!(job_id, error = %e, "could not record the job's outcome");
    }
    outcome
}

/// Largest changeset artifact the agent downloads to read its playbook.
const MAX_ARTIFACT_BYTES: u64 = 4 << 30;

/// Why a changeset-carried playbook could not be made ready; the job fails
/// with this message and nothing is run.
#[derive(Debug, thiserror::Error)]
enum ChangesetError {
    /// `changeset.playbook` escapes the archive or is not a `.yml` file.
    #[error("changeset playbook {0:?} is not a safe relative path to a .yml file")]
    UnsafePath(String),
    /// A local file operation failed; `doing` names it and its path.
    #[error("{doing}: {source}")]
    Io {
        doing: String,
        source: std::io::Error,
    },
    /// The HTTP client could not be built.
    #[error("http client: {0}")]
    Client(reqwest::Error),
    /// The download failed (`url` is redacted; `why` has no URL).
    #[error("downloading the changeset {url}: {why}")]
    Download { url: String, why: String },
    /// The artifact is over [`MAX_ARTIFACT_BYTES`].
    #[error("the changeset {url} is larger than {MAX_ARTIFACT_BYTES} bytes")]
    TooLarge { url: String },
    /// The artifact is not the one the deployment named.
    #[error("checksum mismatch for the changeset {url}: expected sha256 {expected}, got {got}; nothing was run")]
    Checksum {
        url: String,
        expected: String,
        got: String,
    },
    /// The unpacking task panicked or was cancelled.
    #[error("unpacking: {0}")]
    Unpacking(tokio::task::JoinError),
    /// The archive has an entry `unarchive` refuses.
    #[error("the changeset archive was refused: {0}")]
    Refused(modules::unarchive::Refusal),
    /// `changeset.playbook` is not in the archive.
    #[error("the changeset archive has no playbook `{0}` (changeset.playbook names a file inside the archive)")]
    NoPlaybook(String),
    /// `changeset.playbook` is a directory, link or device in the archive.
    #[error("`{0}` in the changeset archive is not a regular file")]
    NotAFile(String),
}

/// Wraps an IO error with what was being done.
fn io(doing: String) -> impl FnOnce(std::io::Error) -> ChangesetError {
    move |source| ChangesetError::Io { doing, source }
}

/// Downloads the changeset's artifact into a private temporary directory,
/// verifies its sha256 *before* reading anything from it, extracts it there
/// (with `unarchive`'s refusals) and returns the directory with the path of
/// the playbook it carries.
async fn changeset_playbook(
    cs: &Changeset,
) -> Result<(tempfile::TempDir, PathBuf), ChangesetError> {
    use futures::StreamExt;
    use sha2::Digest;
    use std::io::Write;
    let rel = cs.playbook.as_deref().unwrap_or_default();
    if !vesemir_protocol::job::is_playbook_path(rel) {
        return Err(ChangesetError::UnsafePath(rel.to_string()));
    }
    let dir = tempfile::Builder::new()
        .prefix("vesemir-changeset-")
        .tempdir()
        .map_err(io("private temporary directory".to_string()))?;
    let shown = modules::redact_url(&cs.url);
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .timeout(Duration::from_secs(600))
        .build()
        .map_err(ChangesetError::Client)?;
    let resp = http
        .get(&cs.url)
        .send()
        .await
        .map_err(|e| ChangesetError::Download {
            url: shown.clone(),
            why: e.without_url().to_string(),
        })?;
    if !resp.status().is_success() {
        return Err(ChangesetError::Download {
            url: shown,
            why: format!("HTTP {}", resp.status()),
        });
    }
    let archive = dir.path().join("artifact.tar.gz");
    let mut file = std::fs::File::create(&archive).map_err(io(archive.display().to_string()))?;
    let mut hasher = sha2::Sha256::new();
    let mut size = 0u64;
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| ChangesetError::Download {
            url: shown.clone(),
            why: e.without_url().to_string(),
        })?;
        size += chunk.len() as u64;
        if size > MAX_ARTIFACT_BYTES {
            return Err(ChangesetError::TooLarge { url: shown });
        }
        hasher.update(&chunk);
        file.write_all(&chunk)
            .map_err(io(archive.display().to_string()))?;
    }
    let got = hex::encode(hasher.finalize());
    if !got.eq_ignore_ascii_case(&cs.sha256) {
        return Err(ChangesetError::Checksum {
            url: shown,
            expected: cs.sha256.clone(),
            got,
        });
    }
    let tree = dir.path().join("tree");
    std::fs::create_dir(&tree).map_err(io(tree.display().to_string()))?;
    let (a, t) = (archive.clone(), tree.clone());
    tokio::task::spawn_blocking(move || modules::unpack_into(&a, &t, 0))
        .await
        .map_err(ChangesetError::Unpacking)?
        .map_err(ChangesetError::Refused)?;
    let pb = tree.join(rel);
    let meta =
        std::fs::symlink_metadata(&pb).map_err(|_| ChangesetError::NoPlaybook(rel.to_string()))?;
    if !meta.is_file() {
        return Err(ChangesetError::NotAFile(rel.to_string()));
    }
    Ok((dir, pb))
}

/// Basic facts about this host (hostname, OS, architecture), for `facts`.
pub fn local_facts() -> serde_json::Value {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates
    // or truncates within it, and we stop at the first NUL.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let hostname = if rc == 0 {
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        String::new()
    };
    serde_json::json!({
        "hostname": hostname,
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
    })
}
