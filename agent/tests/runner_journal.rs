//! The job journal: a job id runs once; a job left running is interrupted.

#[path = "fixtures/common.rs"]
mod common;

use common::*;
use tokio_util::sync::CancellationToken;
use vesemir_agent::journal::{Claim, Journal};
use vesemir_agent::runner::run_job;
use vesemir_protocol::job::{JobEvent, JobStatus};

fn setup(tmp: &std::path::Path) -> (vesemir_agent::runner::RunnerConfig, std::path::PathBuf) {
    let books = tmp.join("books");
    std::fs::create_dir_all(&books).unwrap();
    let counter = tmp.join("counter");
    std::fs::write(
        books.join("count.yml"),
        format!("tasks:\n  - shell: echo ran >> {}\n", counter.display()),
    )
    .unwrap();
    let mut cfg = config(tmp);
    cfg.playbook_dir = books;
    (cfg, counter)
}

async fn run(
    cfg: &vesemir_agent::runner::RunnerConfig,
    j: &Journal,
    id: &str,
    playbook: &str,
) -> (vesemir_protocol::job::JobOutcome, Vec<JobEvent>) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let ev = tokio::spawn(collect(rx));
    let o = run_job(
        cfg,
        j,
        id,
        &job(playbook, &[], None),
        tx,
        CancellationToken::new(),
    )
    .await;
    (o, ev.await.unwrap())
}

fn lines(p: &std::path::Path) -> usize {
    std::fs::read_to_string(p)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

#[tokio::test]
async fn same_job_id_runs_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, counter) = setup(tmp.path());
    let j = Journal::open(&tmp.path().join("journal")).unwrap();
    let (first, ev1) = run(&cfg, &j, "job-a", "count.yml").await;
    assert_eq!(first.status, JobStatus::Succeeded);
    assert!(matches!(ev1[0], JobEvent::Started { replay: false, .. }));
    let (second, ev2) = run(&cfg, &j, "job-a", "count.yml").await;
    assert_eq!(second, first);
    assert!(matches!(ev2[0], JobEvent::Started { replay: true, .. }));
    assert_eq!(ev2.len(), 2);
    assert_eq!(lines(&counter), 1);
    // After a restart too.
    drop(j);
    let j = Journal::open(&tmp.path().join("journal")).unwrap();
    let (third, _) = run(&cfg, &j, "job-a", "count.yml").await;
    assert_eq!(third, first);
    assert_eq!(lines(&counter), 1);
    // Another id runs.
    run(&cfg, &j, "job-b", "count.yml").await;
    assert_eq!(lines(&counter), 2);
}

#[tokio::test]
async fn job_left_running_is_interrupted_and_not_rerun() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, counter) = setup(tmp.path());
    let dir = tmp.path().join("journal");
    {
        // The agent accepted the job and died before finishing it.
        let j = Journal::open(&dir).unwrap();
        assert_eq!(
            j.claim("job-x", &job("count.yml", &[], None)).unwrap(),
            Claim::New
        );
    }
    let j = Journal::open(&dir).unwrap();
    let (o, ev) = run(&cfg, &j, "job-x", "count.yml").await;
    assert_eq!(o.status, JobStatus::Interrupted);
    assert!(o.error.unwrap().contains("stopped"));
    assert!(matches!(ev[0], JobEvent::Started { replay: true, .. }));
    assert_eq!(lines(&counter), 0);
}

#[tokio::test]
async fn bad_names_are_refused_and_not_journaled() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, _) = setup(tmp.path());
    let j = Journal::open(&tmp.path().join("journal")).unwrap();
    for name in ["../count.yml", "/etc/passwd", "sub/x.yml", ""] {
        let (o, _) = run(&cfg, &j, "job-bad", name).await;
        assert_eq!(o.status, JobStatus::Failed);
        assert!(o.error.unwrap().contains("invalid playbook name"));
    }
    assert!(j.get("job-bad").is_none());
}
