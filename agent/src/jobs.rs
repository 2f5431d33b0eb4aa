//! Job streams: each job arrives on its own bidirectional stream opened by
//! the controller; its events go back on the same stream as they happen.
//!
//! A job keeps running if the controller goes away mid-way (its result is in
//! the journal for the controller to ask for by job id later).

use crate::config::AgentConfig;
use crate::haproxy::{self, HaproxyOp};
use crate::journal::Journal;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use vesemir_protocol::job::{
    JobEvent, JobKind, JobOutcome, JobOutput, JobRequest, JobStatus, Stats,
};
use vesemir_wire::{read_frame, write_frame};

/// Events buffered between a running job and its stream; the runner waits
/// when the stream is slow (backpressure instead of unbounded memory).
const EVENT_BUFFER: usize = 256;

/// The agent's job dispatcher.
pub struct Jobs {
    cfg: AgentConfig,
    journal: Journal,
    running: Mutex<HashMap<String, CancellationToken>>,
    /// Live events of running playbook jobs, for [`JobKind::Attach`]
    /// followers (a CLI reattaching after its controller died).
    followers: Mutex<HashMap<String, broadcast::Sender<JobEvent>>>,
    welcomed: AtomicBool,
}

impl Jobs {
    /// Opens the journal (marking jobs left running by a crash interrupted).
    pub fn new(cfg: &AgentConfig) -> Result<Jobs, crate::journal::JournalError> {
        Ok(Jobs {
            cfg: cfg.clone(),
            journal: Journal::open(&cfg.journal_dir())?,
            running: Mutex::new(HashMap::new()),
            followers: Mutex::new(HashMap::new()),
            welcomed: AtomicBool::new(false),
        })
    }

    /// Ids of running jobs, for heartbeats.
    pub fn running(&self) -> Vec<String> {
        self.running
            .lock()
            .expect("running lock")
            .keys()
            .cloned()
            .collect()
    }

    pub(crate) fn set_welcomed(&self) {
        self.welcomed.store(true, Ordering::Relaxed);
    }

    pub(crate) fn take_welcomed(&self) -> bool {
        self.welcomed.swap(false, Ordering::Relaxed)
    }

    /// Serves one job stream to its end.
    pub async fn serve_stream(&self, mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
        let req: JobRequest =
            match tokio::time::timeout(Duration::from_secs(10), read_frame(&mut recv)).await {
                Ok(Ok(Some(r))) => r,
                Ok(Ok(None)) => return,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "bad job request; resetting the stream");
                    let _ = send.reset(3u32.into());
                    return;
                }
                Err(_) => {
                    let _ = send.reset(3u32.into());
                    return;
                }
            };
        // Every line about this job, from the stream and from the runner,
        // carries its ids (the span was entered and dropped before, so the
        // job's own lines had none).
        let span = tracing::info_span!("job", job_id = %req.job_id, deployment_id = req.deployment_id.as_deref().unwrap_or(""), host = %self.cfg.name);
        let (tx, mut rx) = mpsc::channel::<JobEvent>(EVENT_BUFFER);
        let forward = async {
            // Keep draining after the stream breaks so the job never blocks
            // on a controller that went away.
            let mut broken = false;
            while let Some(ev) = rx.recv().await {
                if !broken && write_frame(&mut send, &ev).await.is_err() {
                    broken = true;
                    tracing::info!("controller stopped listening to this job; it continues, its result goes to the journal");
                }
            }
            if !broken {
                let _ = send.finish();
                // Wait until the controller has read everything.
                let _ = tokio::time::timeout(Duration::from_secs(10), send.stopped()).await;
            }
        };
        let work = self.run(req, tx);
        tracing::Instrument::instrument(async { tokio::join!(forward, work) }, span).await;
    }

    async fn run(&self, req: JobRequest, tx: mpsc::Sender<JobEvent>) {
        let job_id = req.job_id.clone();
        match req.kind {
            JobKind::Outcome => {
                let outcome = match self.journal.get(&job_id) {
                    Some(rec) => rec.reported_outcome(),
                    None => outcome(&job_id, JobStatus::Unknown, None, None),
                };
                let _ = tx.send(JobEvent::Finished(outcome)).await;
            }
            JobKind::Attach => self.attach(&job_id, tx).await,
            JobKind::Cancel => {
                let token = self
                    .running
                    .lock()
                    .expect("running lock")
                    .get(&job_id)
                    .cloned();
                let found = token.map(|t| t.cancel()).is_some();
                let status = if found {
                    JobStatus::Cancelled
                } else {
                    JobStatus::Unknown
                };
                let _ = tx
                    .send(JobEvent::Finished(outcome(&job_id, status, None, None)))
                    .await;
            }
            JobKind::Haproxy(actions) => {
                let _ = tx
                    .send(JobEvent::Started {
                        job_id: job_id.clone(),
                        replay: false,
                    })
                    .await;
                let out = self.haproxy(&job_id, &actions).await;
                let _ = tx.send(JobEvent::Finished(out)).await;
            }
            JobKind::Playbook(mut job) => {
                for (k, v) in &self.cfg.vars {
                    job.vars.entry(k.clone()).or_insert_with(|| v.clone());
                }
                // The same id on a second stream (a restarted controller
                // asking again) is answered from the journal; it must not
                // take over the running job's entry (heartbeats, cancel).
                let cancel = CancellationToken::new();
                let owner = {
                    let mut running = self.running.lock().expect("running lock");
                    if running.contains_key(&job_id) {
                        false
                    } else {
                        running.insert(job_id.clone(), cancel.clone());
                        true
                    }
                };
                let cfg = self.runner_config();
                if owner {
                    let (job_tx, tee) = self.tee(&job_id, tx);
                    let run =
                        crate::runner::run_job(&cfg, &self.journal, &job_id, &job, job_tx, cancel);
                    let _ = tokio::join!(run, tee);
                } else {
                    let _ = crate::runner::run_job(&cfg, &self.journal, &job_id, &job, tx, cancel)
                        .await;
                }
                if owner {
                    self.running.lock().expect("running lock").remove(&job_id);
                }
            }
        }
    }

    /// Puts a broadcast between a running job and its stream so
    /// [`JobKind::Attach`] followers see the same events. The stream keeps
    /// its backpressure; followers never slow the job (a lagging one is told
    /// how many events it missed).
    fn tee(
        &self,
        job_id: &str,
        out: mpsc::Sender<JobEvent>,
    ) -> (
        mpsc::Sender<JobEvent>,
        impl std::future::Future<Output = ()> + '_,
    ) {
        let (tx, mut rx) = mpsc::channel::<JobEvent>(EVENT_BUFFER);
        let (followers, _) = broadcast::channel::<JobEvent>(EVENT_BUFFER);
        self.followers
            .lock()
            .expect("followers lock")
            .insert(job_id.to_string(), followers.clone());
        let job_id = job_id.to_string();
        let tee = async move {
            while let Some(ev) = rx.recv().await {
                // No follower is the usual case: nothing to do.
                let _ = followers.send(ev.clone());
                let _ = out.send(ev).await;
            }
            // The job is over and journaled: later followers read the journal.
            self.followers
                .lock()
                .expect("followers lock")
                .remove(&job_id);
        };
        (tx, tee)
    }

    /// Answers [`JobKind::Attach`]: the live events of a running job, else
    /// the journal's record.
    async fn attach(&self, job_id: &str, tx: mpsc::Sender<JobEvent>) {
        let live = self
            .followers
            .lock()
            .expect("followers lock")
            .get(job_id)
            .map(broadcast::Sender::subscribe);
        if let Some(mut rx) = live {
            loop {
                match rx.recv().await {
                    Ok(ev) => {
                        let last = matches!(ev, JobEvent::Finished(_));
                        if tx.send(ev).await.is_err() || last {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        let line = format!("({n} events skipped: this follower fell behind)");
                        let _ = tx
                            .send(JobEvent::Log {
                                index: 0,
                                stream: vesemir_protocol::job::LogStream::Runner,
                                line,
                            })
                            .await;
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        }
        let outcome = match self.journal.get(job_id) {
            Some(rec) => rec.reported_outcome(),
            None => outcome(job_id, JobStatus::Unknown, None, None),
        };
        let _ = tx.send(JobEvent::Finished(outcome)).await;
    }

    fn runner_config(&self) -> crate::runner::RunnerConfig {
        let facts = crate::facts::collect(&self.cfg.data_dir, &self.cfg.playbook_dir, Vec::new());
        crate::runner::RunnerConfig {
            playbook_dir: self.cfg.playbook_dir.clone(),
            systemctl: self.cfg.systemctl.clone(),
            facts: crate::facts::to_json(&facts),
            default_task_timeout: self.cfg.task_timeout,
            ..Default::default()
        }
    }

    async fn haproxy(&self, job_id: &str, ops: &[HaproxyOp]) -> JobOutcome {
        let Some(socket) = &self.cfg.haproxy_socket else {
            return outcome(
                job_id,
                JobStatus::Failed,
                Some(format!(
                    "agent {} has no haproxy_socket in its agent.toml; set it to HAProxy's admin socket",
                    self.cfg.name
                )),
                None,
            );
        };
        let mut replies = Vec::new();
        for op in ops {
            match haproxy::execute(socket, op, haproxy::DEFAULT_TIMEOUT).await {
                Ok(reply) => replies.push(reply),
                Err(e) => {
                    return outcome(
                        job_id,
                        JobStatus::Failed,
                        Some(e.to_string()),
                        Some(JobOutput::Haproxy(replies)),
                    )
                }
            }
        }
        outcome(
            job_id,
            JobStatus::Succeeded,
            None,
            Some(JobOutput::Haproxy(replies)),
        )
    }
}

fn outcome(
    job_id: &str,
    status: JobStatus,
    error: Option<String>,
    output: Option<JobOutput>,
) -> JobOutcome {
    JobOutcome {
        job_id: job_id.to_string(),
        status,
        stats: Stats::default(),
        error,
        output,
    }
}
