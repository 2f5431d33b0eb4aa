//! Local job journal.
//!
//! One JSON file per job id in the journal directory, written as a temporary
//! file, fsynced, then renamed over the record (and the directory fsynced), so
//! a crash leaves either the old or the new record, never half of one.
//!
//! Invariants:
//! - A job id is recorded as `running` *before* its first task runs and gets
//!   its outcome *after*; the same id is never run twice ([`Journal::claim`]).
//! - On [`Journal::open`], a record still `running` belongs to an agent that
//!   died mid-job: it is rewritten to `interrupted` and never re-run by itself.
//! - One process owns a journal directory at a time (an exclusive `flock` on
//!   `.lock`), so a second agent cannot mistake live jobs for interrupted ones.
//! - The directory is bounded: only the newest [`DEFAULT_MAX_RECORDS`]
//!   finished records are kept.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use vesemir_protocol::job::{JobOutcome, JobStatus, Stats};

/// How many records a journal keeps by default.
pub const DEFAULT_MAX_RECORDS: usize = 1000;

/// What went wrong with the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The directory or a record could not be read or written.
    #[error("job journal {path}: {source}")]
    Io {
        /// File or directory concerned.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// Another process holds the journal.
    #[error("job journal {0} is in use by another process")]
    Locked(PathBuf),
    /// A record is not valid JSON.
    #[error("job journal record {path} is corrupt: {source}")]
    Corrupt {
        /// The record file.
        path: PathBuf,
        /// Parse error.
        source: serde_json::Error,
    },
}

/// One job as recorded on disk (a file boundary, hence `Serialize`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalRecord {
    /// The job id.
    pub job_id: String,
    /// The request as received (JSON), kept for post-mortems.
    pub request: serde_json::Value,
    /// Current state: `Running` until the job ends.
    pub status: JobStatus,
    /// When the job was accepted (RFC 3339).
    pub started_at: String,
    /// When it ended (RFC 3339).
    pub finished_at: Option<String>,
    /// The final outcome, once there is one.
    pub outcome: Option<JobOutcome>,
}

impl JournalRecord {
    /// The outcome to report for this record: the recorded one, or one made
    /// from the status (running / interrupted records have no outcome).
    pub fn reported_outcome(&self) -> JobOutcome {
        match &self.outcome {
            Some(o) => o.clone(),
            None => JobOutcome {
                job_id: self.job_id.clone(),
                status: self.status,
                stats: Stats::default(),
                error: match self.status {
                    JobStatus::Interrupted => {
                        Some("the agent stopped while this job was running".into())
                    }
                    _ => None,
                },
                output: None,
            },
        }
    }
}

/// Result of [`Journal::claim`].
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// The id was new; it is now recorded as running and the caller runs it.
    New,
    /// The id is known; the caller reports this record and runs nothing.
    Existing(Box<JournalRecord>),
}

/// The journal of one agent.
#[derive(Debug)]
pub struct Journal {
    /// Directory holding one `<id>.json` per job.
    dir: PathBuf,
    /// Newest records kept.
    max_records: usize,
    /// Serialises claim (check + write) so two streams with the same id
    /// cannot both start it.
    claim_lock: Mutex<HashSet<String>>,
    /// Held for the journal's lifetime: one owner per directory.
    _lock: Flock<File>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// File name for a job id: the id itself when it is plainly safe, else hex.
fn file_name(job_id: &str) -> String {
    let safe = !job_id.is_empty()
        && job_id.len() <= 128
        && !job_id.starts_with('.')
        && job_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if safe {
        format!("{job_id}.json")
    } else {
        use sha2::Digest;
        format!("x-{}.json", hex::encode(sha2::Sha256::digest(job_id)))
    }
}

impl Journal {
    /// Opens (creating) the journal in `dir`, marks jobs left `running` by a
    /// previous process as `interrupted`, and prunes old records.
    pub fn open(dir: &Path) -> Result<Journal, JournalError> {
        Self::open_with_limit(dir, DEFAULT_MAX_RECORDS)
    }

    /// Like [`Journal::open`] with a custom bound on the number of records.
    pub fn open_with_limit(dir: &Path, max_records: usize) -> Result<Journal, JournalError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let lock_path = dir.join(".lock");
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock)
            .map_err(|_| JournalError::Locked(dir.to_path_buf()))?;
        let journal = Journal {
            dir: dir.to_path_buf(),
            max_records: max_records.max(1),
            claim_lock: Mutex::new(HashSet::new()),
            _lock: lock,
        };
        for mut rec in journal.records()? {
            if rec.status == JobStatus::Running {
                tracing::warn!(job_id = %rec.job_id, "job was running when the agent stopped; marking it interrupted");
                rec.status = JobStatus::Interrupted;
                rec.finished_at = Some(now_rfc3339());
                rec.outcome = Some(rec.reported_outcome());
                journal.write(&rec)?;
            }
        }
        journal.prune()?;
        Ok(journal)
    }

    /// The directory of this journal.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The record of `job_id`, if any (unreadable records count as absent).
    pub fn get(&self, job_id: &str) -> Option<JournalRecord> {
        self.read(&self.dir.join(file_name(job_id))).ok().flatten()
    }

    /// Atomically: if `job_id` is unknown, records it as running with its
    /// request (durably, before returning) and answers [`Claim::New`];
    /// otherwise answers the existing record.
    pub fn claim<R: Serialize>(&self, job_id: &str, request: &R) -> Result<Claim, JournalError> {
        let mut guard = self.claim_lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rec) = self.read(&self.dir.join(file_name(job_id)))? {
            return Ok(Claim::Existing(Box::new(rec)));
        }
        let rec = JournalRecord {
            job_id: job_id.to_string(),
            request: serde_json::to_value(request).unwrap_or(serde_json::Value::Null),
            status: JobStatus::Running,
            started_at: now_rfc3339(),
            finished_at: None,
            outcome: None,
        };
        self.write(&rec)?;
        guard.insert(job_id.to_string());
        Ok(Claim::New)
    }

    /// Records the outcome of a job claimed earlier, durably.
    pub fn finish(&self, outcome: &JobOutcome) -> Result<(), JournalError> {
        let path = self.dir.join(file_name(&outcome.job_id));
        let mut rec = match self.read(&path)? {
            Some(r) => r,
            None => JournalRecord {
                job_id: outcome.job_id.clone(),
                request: serde_json::Value::Null,
                status: JobStatus::Running,
                started_at: now_rfc3339(),
                finished_at: None,
                outcome: None,
            },
        };
        rec.status = outcome.status;
        rec.finished_at = Some(now_rfc3339());
        rec.outcome = Some(outcome.clone());
        self.write(&rec)?;
        self.claim_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&outcome.job_id);
        self.prune()
    }

    /// All records, in no particular order (corrupt files are skipped).
    pub fn records(&self) -> Result<Vec<JournalRecord>, JournalError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let entry = entry.map_err(io_err(&self.dir))?;
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            match self.read(&path) {
                Ok(Some(r)) => out.push(r),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "skipping unreadable journal record"),
            }
        }
        Ok(out)
    }

    fn read(&self, path: &Path) -> Result<Option<JournalRecord>, JournalError> {
        match fs::read(path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|source| JournalError::Corrupt {
                        path: path.to_path_buf(),
                        source,
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(path)(e)),
        }
    }

    fn write(&self, rec: &JournalRecord) -> Result<(), JournalError> {
        let path = self.dir.join(file_name(&rec.job_id));
        let bytes = serde_json::to_vec_pretty(rec).expect("journal record serializes");
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(&self.dir)
            .map_err(io_err(&self.dir))?;
        tmp.write_all(&bytes).map_err(io_err(tmp.path()))?;
        tmp.as_file().sync_all().map_err(io_err(&path))?;
        tmp.persist(&path).map_err(|e| io_err(&path)(e.error))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))?;
        Ok(())
    }

    /// Deletes the oldest finished records beyond the bound.
    fn prune(&self) -> Result<(), JournalError> {
        let mut files = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let entry = entry.map_err(io_err(&self.dir))?;
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let mtime = entry
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            files.push((mtime, path));
        }
        if files.len() <= self.max_records {
            return Ok(());
        }
        files.sort();
        let excess = files.len() - self.max_records;
        let mut removed = 0;
        for (_, path) in files {
            if removed == excess {
                break;
            }
            // Never drop a job that is still running.
            if matches!(self.read(&path), Ok(Some(r)) if r.status == JobStatus::Running) {
                continue;
            }
            let _ = fs::remove_file(&path);
            removed += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(id: &str, status: JobStatus) -> JobOutcome {
        JobOutcome {
            job_id: id.into(),
            status,
            stats: Stats::default(),
            error: None,
            output: None,
        }
    }

    #[test]
    fn claim_once_then_existing() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        assert_eq!(j.claim("a", &"req").unwrap(), Claim::New);
        match j.claim("a", &"req").unwrap() {
            Claim::Existing(r) => assert_eq!(r.status, JobStatus::Running),
            c => panic!("{c:?}"),
        }
        j.finish(&outcome("a", JobStatus::Succeeded)).unwrap();
        let r = j.get("a").unwrap();
        assert_eq!(r.status, JobStatus::Succeeded);
        assert_eq!(r.reported_outcome().status, JobStatus::Succeeded);
    }

    #[test]
    fn running_becomes_interrupted_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let j = Journal::open(dir.path()).unwrap();
            j.claim("crashy", &"req").unwrap();
        }
        let j = Journal::open(dir.path()).unwrap();
        let r = j.get("crashy").unwrap();
        assert_eq!(r.status, JobStatus::Interrupted);
        assert_eq!(r.reported_outcome().status, JobStatus::Interrupted);
    }

    #[test]
    fn second_open_is_refused_while_locked() {
        let dir = tempfile::tempdir().unwrap();
        let _j = Journal::open(dir.path()).unwrap();
        assert!(matches!(
            Journal::open(dir.path()),
            Err(JournalError::Locked(_))
        ));
    }

    #[test]
    fn unsafe_ids_are_hashed_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open_with_limit(dir.path(), 3).unwrap();
        for i in 0..6 {
            let id = format!("../id {i}");
            j.claim(&id, &i).unwrap();
            j.finish(&outcome(&id, JobStatus::Failed)).unwrap();
        }
        assert_eq!(j.records().unwrap().len(), 3);
        assert!(j.get("../id 5").is_some());
        assert!(fs::read_dir(dir.path().parent().unwrap())
            .unwrap()
            .all(|e| !e.unwrap().file_name().to_string_lossy().starts_with("id ")));
    }
}
