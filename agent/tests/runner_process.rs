//! Process modules: live output, timeouts and cancel kill the whole group.

#[path = "fixtures/common.rs"]
mod common;

use std::time::Duration;

use common::*;
use tokio_util::sync::CancellationToken;
use vesemir_agent::runner::run_playbook_file;
use vesemir_protocol::job::{JobEvent, JobStatus, LogStream, TaskStatus, MAX_LOG_LINE};

fn write_pb(dir: &std::path::Path, text: &str) -> std::path::PathBuf {
    let p = dir.join("pb.yml");
    std::fs::write(&p, text).unwrap();
    p
}

async fn read_pid(path: &std::path::Path) -> i32 {
    eventually("pid file", Duration::from_secs(10), || {
        std::fs::read_to_string(path)
            .map(|s| s.trim().parse::<i32>().is_ok())
            .unwrap_or(false)
    })
    .await;
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn timeout_kills_the_shells_children() {
    let tmp = tempfile::tempdir().unwrap();
    let pidfile = tmp.path().join("sleep.pid");
    let marker = tmp.path().join("after");
    let pb = write_pb(
        tmp.path(),
        &format!(
            "tasks:\n  - name: hang\n    shell: sleep 300 & echo $! > {}; wait\n    timeout: 1s\n  - command: touch {}\n",
            pidfile.display(),
            marker.display()
        ),
    );
    let cfg = config(tmp.path());
    let (o, events) = run_file(&cfg, &pb, &job("pb.yml", &[], None)).await;
    assert_eq!(o.status, JobStatus::Failed);
    let r = events
        .iter()
        .find_map(|e| match e {
            JobEvent::TaskResult(r) => Some(r.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(r.status, TaskStatus::Failed);
    assert!(r.msg.contains("timed out after 1s"), "{}", r.msg);
    let pid = read_pid(&pidfile).await;
    eventually("sleep child gone", Duration::from_secs(10), || {
        pid_gone(pid)
    })
    .await;
    assert!(!marker.exists(), "the play went on after a failure");
}

#[tokio::test]
async fn cancel_kills_the_group_and_ends_cancelled() {
    let tmp = tempfile::tempdir().unwrap();
    let pidfile = tmp.path().join("sleep.pid");
    let pb = write_pb(
        tmp.path(),
        &format!(
            "tasks:\n  - name: first\n    command: echo one\n  - name: hang\n    shell: sleep 300 & echo $! > {}; wait\n  - command: echo never\n",
            pidfile.display()
        ),
    );
    let cfg = config(tmp.path());
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let events = tokio::spawn(collect(rx));
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    let pf = pidfile.clone();
    tokio::spawn(async move {
        read_pid(&pf).await;
        c.cancel();
    });
    let o = run_playbook_file(&cfg, &pb, "j", &job("pb.yml", &[], None), tx, cancel).await;
    assert_eq!(o.status, JobStatus::Cancelled, "{o:?}");
    assert_eq!((o.stats.ok, o.stats.changed, o.stats.failed), (1, 1, 0));
    let pid = read_pid(&pidfile).await;
    eventually("sleep child gone", Duration::from_secs(10), || {
        pid_gone(pid)
    })
    .await;
    let events = events.await.unwrap();
    let started: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            JobEvent::TaskStarted { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(started, ["first", "hang"]);
    assert!(
        matches!(events.last(), Some(JobEvent::Finished(f)) if f.status == JobStatus::Cancelled)
    );
}

#[tokio::test]
async fn output_lines_stream_in_order_and_long_lines_are_cut() {
    let tmp = tempfile::tempdir().unwrap();
    let pb = write_pb(
        tmp.path(),
        &format!(
            "tasks:\n  - shell: for i in 1 2 3; do echo out$i; echo err$i >&2; done; head -c {} /dev/zero | tr '\\\\0' x; echo\n    register: r\n  - command: echo {{{{ r.stdout_lines_missing | default('x') }}}}\n    when: false\n",
            MAX_LOG_LINE * 2
        ),
    );
    let cfg = config(tmp.path());
    // A tiny channel: the runner waits for the consumer (backpressure).
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let run = tokio::spawn({
        let cfg = cfg.clone();
        let pb = pb.clone();
        async move {
            run_playbook_file(
                &cfg,
                &pb,
                "j",
                &job("pb.yml", &[], None),
                tx,
                CancellationToken::new(),
            )
            .await
        }
    });
    let mut out = Vec::new();
    let mut err = Vec::new();
    while let Some(e) = rx.recv().await {
        if let JobEvent::Log { stream, line, .. } = e {
            match stream {
                LogStream::Stdout => out.push(line),
                LogStream::Stderr => err.push(line),
                LogStream::Runner => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let o = run.await.unwrap();
    assert_eq!(o.status, JobStatus::Succeeded, "{o:?}");
    assert_eq!(&out[..3], ["out1", "out2", "out3"]);
    assert_eq!(err, ["err1", "err2", "err3"]);
    assert!(out[3].len() <= MAX_LOG_LINE && out[3].ends_with("[cut]"));
    assert_eq!(o.stats.skipped, 1);
}

#[tokio::test]
async fn retries_changed_when_failed_when_ignore_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let count = tmp.path().join("count");
    let pb = write_pb(
        tmp.path(),
        &format!(
            "tasks:\n  - name: flaky\n    shell: echo x >> {c}; test $(wc -l < {c}) -ge 3\n    register: flaky\n    until: flaky is succeeded\n    retries: 5\n    delay: 10ms\n  - name: quiet\n    command: echo hello\n    register: q\n    changed_when: false\n    failed_when: \"'hello' not in q.stdout\"\n  - name: boom\n    command: 'false'\n    ignore_errors: true\n  - name: uses\n    shell: test \"{{{{ q.stdout }}}}\" = hello\n",
            c = count.display()
        ),
    );
    let cfg = config(tmp.path());
    let (o, events) = run_file(&cfg, &pb, &job("pb.yml", &[], None)).await;
    assert_eq!(o.status, JobStatus::Succeeded, "{o:?} {events:#?}");
    assert_eq!(std::fs::read_to_string(&count).unwrap().lines().count(), 3);
    let statuses: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            JobEvent::TaskResult(r) => Some(r.status),
            _ => None,
        })
        .collect();
    assert_eq!(
        statuses,
        [
            TaskStatus::Changed,
            TaskStatus::Ok,
            TaskStatus::Failed,
            TaskStatus::Changed
        ]
    );
    // As Ansible: the ignored failure of a command that ran counts changed too.
    assert_eq!((o.stats.ok, o.stats.changed, o.stats.failed), (4, 3, 0));
}
