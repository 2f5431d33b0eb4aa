//! Broken playbooks fail before any task runs, naming file:line:column.

#[path = "fixtures/common.rs"]
mod common;

use common::*;
use vesemir_protocol::job::{JobEvent, JobStatus};

/// Writes `text` as pb.yml, whose first task would create a marker file,
/// runs it and checks nothing ran and the error contains `expected`
/// (with `{}` replaced by the playbook's path).
async fn check(text: &str, expected: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let marker = tmp.path().join("marker");
    let pb = tmp.path().join("pb.yml");
    let text = text.replace("MARKER", &marker.display().to_string());
    std::fs::write(&pb, &text).unwrap();
    let cfg = config(tmp.path());
    let (o, events) = run_file(&cfg, &pb, &job("pb.yml", &[("who", "me")], None)).await;
    assert_eq!(o.status, JobStatus::Failed, "{text}");
    let err = o.error.unwrap();
    let expected = expected.replace("{}", &pb.display().to_string());
    assert!(
        err.contains(&expected),
        "for:\n{text}\n got: {err}\nwant: {expected}"
    );
    assert!(!events
        .iter()
        .any(|e| matches!(e, JobEvent::TaskStarted { .. })));
    assert!(!marker.exists(), "a task ran");
    // The refusal is visible in the live output too.
    assert!(events
        .iter()
        .any(|e| matches!(e, JobEvent::Log { line, .. } if line.contains(&expected))));
    // And `check` says the same without running.
    let e = vesemir_agent::runner::check_playbook(&pb, &vars(&[("who", "me")]), None, &cfg)
        .unwrap_err()
        .to_string();
    assert!(e.contains(&expected), "{e}");
}

#[tokio::test]
async fn broken_yaml() {
    check(
        "tasks:\n  - name: touch\n    command: touch MARKER\n  - name: [broken\n",
        "{}:5:1: invalid YAML",
    )
    .await;
}

#[tokio::test]
async fn unknown_module() {
    check(
        "name: x\ntasks:\n  - name: touch\n    command: touch MARKER\n\n  - name: nope\n    coppy:\n      dest: /tmp/x\n",
        "{}:7:5: task 2 (nope): unknown or unsupported module `coppy`; known modules: command, shell, get_url, unarchive, copy, template, file, lineinfile, stat, systemd, service, wait_for, uri, http_check, debug, set_fact, assert, fail, pause",
    )
    .await;
}

#[tokio::test]
async fn undefined_variable() {
    check(
        "tasks:\n  - name: touch\n    command: touch MARKER\n  - name: greet\n    shell:\n      cmd: echo {{ who }} {{ whom }}\n",
        "{}:6:7: task 2 (greet): shell: undefined variable `whom`",
    )
    .await;
}

#[tokio::test]
async fn undefined_in_when_and_register_used_too_early() {
    check(
        "tasks:\n  - command: touch MARKER\n    when: later.rc == 0\n  - command: 'true'\n    register: later\n",
        "{}:3:5: task 1 (command): when: undefined variable `later.rc`",
    )
    .await;
}

#[tokio::test]
async fn bad_argument_type() {
    check(
        "tasks:\n  - command: touch MARKER\n  - wait_for:\n      port: eighty\n",
        "{}:3:5: task 2 (wait_for): wait_for: `port` must be a number",
    )
    .await;
}

#[tokio::test]
async fn missing_required_var() {
    check(
        "requires: [who, where]\ntasks:\n  - command: touch MARKER\n",
        "{}:1:1: required variable `where` was not given",
    )
    .await;
}
